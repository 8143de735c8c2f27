"""`qllama serve`: an OpenAI-compatible HTTP server (starlette on uvicorn) over one
mapped model, many requests at once through the continuous-batching scheduler."""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import sys
import warnings
from pathlib import Path

from ..errors import QllamaWarning, UsageError
from ..threads import add_threads_argument
from .console import fmt_bytes
from .run import add_kv_argument, add_tokenizer_argument

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of a size such as 512M, 2G, 1.5G or 1048576 (binary units; B/iB optional)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return size


def _size(text: str) -> int:
    import argparse
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (e.g. 512M, 2G)") from None


def _size_or_0(text: str) -> int:
    return 0 if text.strip() == "0" else _size(text)


def _port(text: str) -> int:
    import argparse
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0: any free port), got {text!r}")
    return int(text)


def _origin(text: str) -> str:
    import argparse
    # a browser sends scheme://host[:port] and nothing after it: "http://x:3000/" never matches
    if text != "*" and not re.fullmatch(r"https?://[^/\s?#]+", text):
        raise argparse.ArgumentTypeError(f"an origin is scheme://host[:port] with no path "
                                         f"(e.g. http://localhost:3000) or *, got {text!r}")
    return text


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over HTTP with OpenAI's API (/v1/completions, "
                    "/v1/chat/completions, /v1/models), plus /health and /metrics; many "
                    "requests run at once, batched on one engine thread.")
    p.add_argument("model", help="checkpoint: llama2.c version 0, 1 (fp32) or 2 (Q8_0), or "
                                 "a GGUF file")
    add_tokenizer_argument(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000,
                   help="port (default 8000; 0 picks a free one, printed when ready)")
    p.add_argument("--api-key", default=os.environ.get("QLLAMA_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1/ requests (default: "
                        "$QLLAMA_API_KEY, which keeps the key out of the process list)")
    p.add_argument("--max-sessions", type=int, default=8, metavar="N",
                   help="requests generating at once (default 8)")
    p.add_argument("--queue", type=int, default=16, metavar="N",
                   help="requests that may wait for a session; past that: 503 (default 16)")
    p.add_argument("--kv-memory", type=_size, default=None, metavar="SIZE",
                   help="KV cache pool for all sessions, e.g. 512M, 2G (default: enough for every "
                        "session to reach the model's context; resident only as used)")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN", type=_origin,
                   help="let web pages from ORIGIN (e.g. http://localhost:3000; * for any) "
                        "call the API from a browser; repeatable (default: none)")
    p.add_argument("--prefix-cache", type=_size_or_0, default=None, metavar="SIZE",
                   help="KV memory beyond what sessions need that ended sequences' pages may "
                        "keep for later prompts that start alike, e.g. 1G (default: a quarter "
                        "of the pool); 0 runs every prompt whole (then no client's timing can "
                        "tell what others sent)")
    p.add_argument("--special", action="store_true",
                   help="read control pieces written in a /v1/completions prompt (<s>, </s>) "
                        "as their ids, as llama-server does (chat messages stay text)")
    add_kv_argument(p)
    add_threads_argument(p)
    p.set_defaults(func=serve_command)


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket (so that port 0 gets its real port before the ready line)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise UsageError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_command(args) -> int:
    import uvicorn

    from ..model import Model
    from ..serving.scheduler import Scheduler
    from ..serving.server import create_app

    if not _is_loopback(args.host) and not args.api_key:
        warnings.warn(f"listening on {args.host} without --api-key: anyone who can reach "
                      "it may use the model", QllamaWarning, stacklevel=1)
    if "*" in args.cors and not args.api_key:
        warnings.warn("--cors '*' without --api-key: any web page this machine's browser "
                      "opens may use the model", QllamaWarning, stacklevel=1)
    model = Model(args.model, tokenizer=args.tokenizer, threads=args.threads, kv=args.kv)
    _ = model.tokenizer  # load and check it before listening
    scheduler = Scheduler(model, max_sessions=args.max_sessions, queue=args.queue,
                          kv_memory=args.kv_memory, prefix_cache=args.prefix_cache)
    if scheduler.max_positions < scheduler.seq_len:
        warnings.warn(f"the KV pool holds {scheduler.max_positions} positions, fewer than the "
                      f"model's seq_len {scheduler.seq_len}: a request (prompt and answer) is "
                      "held to that; --kv-memory sets the pool", QllamaWarning, stacklevel=1)
    name = Path(args.model).stem
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    pool = scheduler.engine.pool

    def ready():
        print(f"qllama: serving {name} at {url}/v1 ({args.max_sessions} sessions, queue "
              f"{args.queue}, KV pool {pool.pages} pages, {fmt_bytes(pool.page_bytes * pool.pages)}"
              f", kernels {model.variant}, {model.threads} threads)", flush=True)

    config = uvicorn.Config(create_app(scheduler, model, name, api_key=args.api_key,
                                       special=args.special, cors=tuple(args.cors)),
                            log_level="warning", access_log=False, lifespan="off")
    server = _make_server(config, ready)
    scheduler.start()
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; with
    # this handler underneath, that ends here and the command exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        # the model stays mapped: an engine thread still busy after the timeout may read it
        scheduler.shutdown(timeout=30)
        sock.close()
    print("qllama: server stopped", file=sys.stderr)
    return 0


def _make_server(config, ready):
    """uvicorn's server, calling `ready` once it accepts connections."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                ready()

    return Server(config)
