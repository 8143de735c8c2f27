"""`qllama run`: text generation and chat, with llama2.c's run.c flags."""
from __future__ import annotations

import os
import sys

from ..chat import turn_ids
from ..errors import UsageError
from ..model import KV_TYPES, Model, Stats
from ..sampling import check_sampling, default_seed
from ..threads import add_threads_argument
from ..tokenizer.base import utf8_decode


def add_kv_argument(p) -> None:
    p.add_argument("--kv", choices=KV_TYPES, default="f16",
                   help="KV cache type: f16 (default, half the memory) or f32 (run.c's, "
                        "for its exact numbers)")


def add_tokenizer_argument(p) -> None:
    p.add_argument("-z", "--tokenizer", default=None,
                   help="tokenizer.model or tokenizer.bin (default: beside the model, then "
                        "in the working directory)")


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="generate text or chat with a model (v0/v1 fp32 or v2 int8)",
        description="Generate text from a llama2.c checkpoint, as llama2.c's run.c/runq.c do "
                    "(same flags, same sampler: the same seed gives the same story).")
    p.add_argument("model", help="checkpoint: llama2.c version 0, 1 (fp32) or 2 (Q8_0), or "
                                 "a GGUF file")
    p.add_argument("-t", "--temperature", type=float, default=1.0,
                   help="sampling temperature; 0 = greedy (default 1.0)")
    p.add_argument("-p", "--top-p", type=float, default=0.9,
                   help="nucleus sampling threshold; 0 or 1 turn it off (default 0.9)")
    p.add_argument("-s", "--seed", type=int, default=None,
                   help="random seed (default: from the clock, printed on stderr)")
    p.add_argument("-n", "--steps", type=int, default=256,
                   help="positions to run, prompt included; 0 = seq_len (default 256)")
    p.add_argument("-i", "--prompt", default="", help="input prompt")
    p.add_argument("--special", action="store_true",
                   help="read control pieces written in the prompt (<s>, </s>) as their ids, "
                        "as llama.cpp does (generate mode)")
    add_tokenizer_argument(p)
    p.add_argument("-m", "--mode", choices=("generate", "chat"), default="generate")
    p.add_argument("-y", "--system", default="", help="system prompt in chat mode")
    add_kv_argument(p)
    add_threads_argument(p)
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    # run.c: a seed <= 0 means "from the clock"
    seed = args.seed if args.seed is not None and args.seed > 0 else default_seed()
    check_sampling(args.temperature, args.top_p, args.steps, seed)
    with Model(args.model, tokenizer=args.tokenizer, threads=args.threads, kv=args.kv) as model:
        _ = model.tokenizer  # load and check it before any output
        stats = Stats()
        if args.special and args.mode == "chat":
            raise UsageError("--special reads generate mode's prompt; chat mode writes Llama 2's "
                             "template itself")
        if args.mode == "chat":
            chat(model, args, seed, stats)
        else:
            generate(model, args, seed, stats)
        print(f"seed {seed}: {stats.line()}, kernels {model.variant}, {model.kv} KV cache",
              file=sys.stderr)
    return 0


def as_read(text: str) -> str:
    """Text from argv or stdin as the tokenizer reads bytes: a byte that is not UTF-8 is
    one U+FFFD (Python hands it over as a lone surrogate, which would encode as three)."""
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate no byte made (a caller of cli.main)
        raw = text.encode("utf-8", "surrogatepass")
    return utf8_decode(raw)[0]


def generate(model: Model, args, seed: int, stats: Stats) -> None:
    prompt = as_read(args.prompt)
    ids = model.encode(prompt, bos=True, special=args.special)
    if 0 < args.steps < len(ids):  # run.c would stop inside the prompt, generating nothing
        raise UsageError(f"--steps {args.steps} is fewer than the prompt's {len(ids)} tokens "
                         "(BOS included): nothing to generate; steps count the prompt, "
                         "0 means the model's seq_len")
    tokens = model.generate_ids(ids, args.steps, args.temperature, args.top_p, seed, stats)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    stream = model.text_stream(ids)
    for token in tokens:
        out.write(stream.feed(token))
        out.flush()
    out.write(stream.flush() + "\n")


def chat(model: Model, args, seed: int, stats: Stats) -> None:
    """Multi-turn chat; user turns come from stdin (a terminal or a pipe)."""
    interactive = sys.stdin.isatty()
    session = model.session(args.steps or model.spec.seq_len)
    sampler = model.sampler(args.temperature, args.top_p, seed)
    first = True
    while True:
        if interactive:
            print("User: ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        user = as_read(line.rstrip("\n"))
        if not user.strip():
            continue
        ids = turn_ids(model, user, as_read(args.system) if first else "")
        first = False
        if session.pos + len(ids) >= session.capacity:
            print("\n[context full: raise --steps to chat longer]", file=sys.stderr)
            break
        print("Assistant: ", end="", flush=True)
        stream = model.text_stream(ids)
        for token in model.generate_ids(ids, stats=stats, session=session, sampler=sampler,
                                        stop=model.stop_ids, temperature=args.temperature,
                                        top_p=args.top_p):
            sys.stdout.write(stream.feed(token))
            sys.stdout.flush()
        print(stream.flush(), flush=True)
        if session.pos >= session.capacity:
            print("[context full: raise --steps to chat longer]", file=sys.stderr)
            break
