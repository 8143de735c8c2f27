#!/usr/bin/env python3
"""`qllama serve` under N concurrent streaming clients, against llama.cpp's server in the
same run when one is given.

    python tools/bench_serve.py MODEL -z TOKENIZER [--clients 1,4,8,16] [--prompt 32]
                                [--tokens 32] [--threads 2] [--rounds 1] [--turns 1]
                                [--llama-server PATH [--gguf MODEL.gguf]] [--json OUT]

For each client count, each engine in turn (alternating, so both see the same machine)
gets a fresh server on 127.0.0.1 with as many sessions as clients (llama-server: `-np N
-cb`, a context of N times the model's, the same weights as GGUF Q8_0 made by `qllama
export --to gguf --type q8_0` unless --gguf names one, the same threads). After a
warm-up (the N clients, 8 tokens each), N clients each stream one /v1/completions
request at once: a prompt of --prompt tokens (different words per client, so no engine
can reuse another's prompt) and --tokens output tokens, greedy. Measured per engine and N:
  tok/s     completion tokens of all clients / wall time from the first request to the
            last token
  TTFT      time to first token (first non-empty text chunk), p50 and p95 over clients
  ITL       inter-token latency (gaps between text chunks), p50 and p95 over all gaps
  RSS       the server process's peak resident set (VmHWM in /proc/PID/status)
Requests that fail are counted, not hidden. A story may end (EOS) before --tokens: the
rates count the tokens actually made (usage, else text chunks).

--turns K (a conversation): each client then sends K - 1 more requests, each its last
prompt, the answer it got and 12 new words, at once with the others;
`next TTFT` is the time to first token of those later turns (p50 and p95), where an
engine that kept the conversation's KV runs only what is new.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import qllama  # noqa: E402

WORDS = ("the cat dog sun tree little big happy sad girl boy park ball red blue run jump "
         "play friend home mom dad bird fish sky rain day night toy book cake smile").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(model, n: int, length: int) -> list[str]:
    """n different texts of about `length` tokens each (BOS included)."""
    out = []
    for i in range(n):
        rng = random.Random(i)
        words = []
        while len(model.encode(" ".join(words))) < length:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words))
    return out


class Engine:
    """A server process; `start` waits until it answers, `stop` ends it."""

    name = ""

    def command(self, clients: int, port: int) -> list[str]:
        raise NotImplementedError

    def start(self, clients: int, log) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(self.command(clients, self.port), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /health within 120 s")

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Qllama(Engine):
    name = "qllama"

    def __init__(self, model, tokenizer, threads):
        self.model, self.tokenizer, self.threads = model, tokenizer, threads

    def command(self, clients, port):
        return [sys.executable, "-m", "qllama", "serve", str(self.model), "-z",
                str(self.tokenizer), "--port", str(port), "--threads", str(self.threads),
                "--max-sessions", str(clients), "--queue", str(clients)]


class LlamaServer(Engine):
    name = "llama-server"

    def __init__(self, binary, gguf, threads, seq_len):
        self.binary, self.gguf, self.threads, self.seq_len = binary, gguf, threads, seq_len

    def command(self, clients, port):
        # its context is split between the slots: give each slot the model's whole context
        return [str(self.binary), "-m", str(self.gguf), "-t", str(self.threads), "-np",
                str(clients), "-cb", "-c", str(clients * self.seq_len), "--host", "127.0.0.1",
                "--port", str(port)]


async def one_request(client, url, prompt, tokens) -> dict:
    """Stream one completion; the times of its text chunks and its token count."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    t0 = time.perf_counter()
    times, usage, text = [], None, []
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": f"{r.status_code} {r.text[:200]}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": str(chunk["error"])[:200]}
            usage = chunk.get("usage") or usage
            pieces = [c.get("text") or "" for c in chunk.get("choices") or ()]
            if any(pieces):
                times.append(time.perf_counter())
                text += pieces
    made = usage["completion_tokens"] if usage else len(times)
    return {"start": t0, "times": times, "tokens": made, "text": "".join(text)}


async def crowd(url, texts, tokens) -> tuple[list, float]:
    limits = httpx.Limits(max_connections=len(texts) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, url, p, tokens) for p in texts),
                                       return_exceptions=True)
        return results, time.perf_counter() - t0


def measure(engine: Engine, clients: int, texts, tokens, log, turns: int = 1) -> dict:
    engine.start(clients, log)
    try:
        # warm-up, all clients, a few tokens: weights paged in, threads and buffers made;
        # on other prompts, or llama-server would answer the measured ones from the
        # prompts cached in its slots
        asyncio.run(crowd(engine.url, texts[-clients:], 8))
        results, _ = asyncio.run(crowd(engine.url, texts[:clients], tokens))
        later, said, last = [], texts[:clients], results
        for t in range(1, turns):
            if not all(isinstance(r, dict) and "text" in r for r in last):
                break
            rng = random.Random(1000 + t)
            said = [f"{p}{r['text']} " + " ".join(rng.choice(WORDS) for _ in range(12))
                    for p, r in zip(said, last)]
            last, _ = asyncio.run(crowd(engine.url, said, tokens))
            later += last
        rss = engine.peak_rss_mb()
    finally:
        engine.stop()
    ok = [r for r in results if isinstance(r, dict) and "error" not in r and r["times"]]
    errors = [str(r.get("error") if isinstance(r, dict) else r) for r in results
              if r not in ok]
    row = {"engine": engine.name, "clients": clients, "ok": len(ok), "errors": errors,
           "peak_rss_mb": round(rss, 1)}
    if ok:
        start = min(r["start"] for r in ok)
        end = max(r["times"][-1] for r in ok)
        ttft = [r["times"][0] - r["start"] for r in ok]
        gaps = np.concatenate([np.diff(r["times"]) for r in ok])
        row.update(tok_s=sum(r["tokens"] for r in ok) / (end - start),
                   ttft_p50_ms=1000 * float(np.percentile(ttft, 50)),
                   ttft_p95_ms=1000 * float(np.percentile(ttft, 95)),
                   itl_p50_ms=1000 * float(np.percentile(gaps, 50)) if gaps.size else None,
                   itl_p95_ms=1000 * float(np.percentile(gaps, 95)) if gaps.size else None)
    good = [r for r in later if isinstance(r, dict) and "error" not in r and r["times"]]
    errors += [str(r.get("error") if isinstance(r, dict) else r) for r in later
               if r not in good]
    row["errors"] = errors
    if good:
        ttft = [r["times"][0] - r["start"] for r in good]
        row.update(next_ttft_p50_ms=1000 * float(np.percentile(ttft, 50)),
                   next_ttft_p95_ms=1000 * float(np.percentile(ttft, 95)))
    return row


def make_gguf(model, tokenizer, folder) -> Path:
    out = Path(folder) / (Path(model).stem + ".q8_0.gguf")
    subprocess.run([sys.executable, "-m", "qllama", "export", str(model), str(out), "--to",
                    "gguf", "--type", "q8_0", "-z", str(tokenizer), "--force"], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-z", "--tokenizer", required=True)
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per client")
    ap.add_argument("--tokens", type=int, default=32, help="output tokens per client")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--turns", type=int, default=1, help="requests of each client's conversation")
    ap.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary")
    ap.add_argument("--gguf", default=None, help="the GGUF for llama-server (default: export)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    if args.turns < 1:
        ap.error("--turns takes 1 or more")
    counts = [int(c) for c in args.clients.split(",")]
    model = qllama.load(args.model, tokenizer=args.tokenizer, threads=1)
    texts = prompts(model, 2 * max(counts), args.prompt)  # the second half warms up
    engines: list[Engine] = [Qllama(args.model, args.tokenizer, args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.llama_server:
            gguf = args.gguf or make_gguf(args.model, args.tokenizer, tmp)
            engines.append(LlamaServer(args.llama_server, gguf, args.threads,
                                       model.config.seq_len))
        rows = []
        print(f"{Path(args.model).name}: prompt ~{args.prompt} tok, {args.tokens} tok out, "
              f"{args.threads} threads, {os.cpu_count()} cores")
        print(f"{'engine':>12} {'clients':>7} {'ok':>3} {'tok/s':>8} {'TTFT p50':>9} "
              f"{'p95 ms':>7} {'ITL p50':>8} {'p95 ms':>7} {'RSS MB':>7}"
              + (f" {'next TTFT p50':>13} {'p95 ms':>7}" if args.turns > 1 else ""))
        with open(Path(tmp) / "servers.log", "w+") as log:
            for _ in range(args.rounds):
                for n in counts:
                    for engine in engines:  # alternating: each count, every engine in turn
                        try:
                            row = measure(engine, n, texts, args.tokens, log, args.turns)
                        except RuntimeError as e:
                            log.seek(0)
                            print(f"{engine.name}: {e}\n{log.read()[-1500:]}", file=sys.stderr)
                            return 1
                        rows.append(row)
                        print(f"{row['engine']:>12} {n:>7} {row['ok']:>3} "
                              f"{fmt(row.get('tok_s')):>8} {fmt(row.get('ttft_p50_ms')):>9} "
                              f"{fmt(row.get('ttft_p95_ms')):>7} "
                              f"{fmt(row.get('itl_p50_ms'), '.2f'):>8} "
                              f"{fmt(row.get('itl_p95_ms'), '.2f'):>7} "
                              f"{row['peak_rss_mb']:>7.0f}"
                              + (f" {fmt(row.get('next_ttft_p50_ms')):>13} "
                                 f"{fmt(row.get('next_ttft_p95_ms')):>7}"
                                 if args.turns > 1 else "")
                              + (f"  errors: {row['errors'][:2]}" if row["errors"] else ""),
                              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
