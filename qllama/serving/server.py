"""The OpenAI-compatible HTTP API over a Scheduler (starlette, served by uvicorn).

Handlers never call the engine: they check the request (api.py), encode the prompt in a
worker thread, `submit` it, and read its events from an asyncio.Queue that the engine
thread fills through `loop.call_soon_threadsafe`. A client that goes away (its
connection's http.disconnect) has its request cancelled, which frees its KV pages at
the engine's next step.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..chat import conversation_ids, reply_text
from ..errors import UsageError
from ..generation import Usage
from ..sampling import default_seed
from .api import (
    ApiError,
    Choice,
    Reply,
    chat_messages,
    completion_prompts,
    error_body,
    parse_json,
    parse_params,
)
from .scheduler import Busy, Event

MAX_BODY = 1 << 20  # bytes; a prompt longer than any context fits well within it
BODY_SECONDS = 30  # to receive a request's whole body
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_CLOSE = {"Connection": "close"}  # the rest of a refused body is not read: end the connection
_GONE = Event(finish_reason="disconnected")  # what the queue gets when the client leaves


def create_app(scheduler, model, model_name: str, api_key: str | None = None,
               max_body: int = MAX_BODY, body_seconds: float = BODY_SECONDS,
               special: bool = False, cors: tuple = ()) -> Starlette:
    """The ASGI app serving `model` (under `model_name`) through `scheduler` (started by
    the caller). With `api_key`, /v1/ requires `Authorization: Bearer <api_key>`; with
    `special`, control pieces written in a completion's prompt are their ids; `cors`:
    the web origins whose pages may call it ("*": any)."""
    api = _Api(scheduler, model, model_name, api_key, max_body, body_seconds, special)
    routes = [
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model_info, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, _Gone: _gone,
                Exception: _internal_error}
    # a browser asks first (OPTIONS) whether a page of another origin may send JSON
    # and an Authorization header; without `cors` it is told nothing, and refuses
    middleware = [Middleware(CORSMiddleware, allow_origins=list(cors),
                             allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if cors else []
    app = Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)
    app.state.api = api
    return app


def _error_response(status: int, body: dict, headers=None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request, exc: ApiError) -> JSONResponse:
    return _error_response(exc.status, exc.body(), exc.headers)


class _Gone(Exception):
    """The client went away before its request's body had all arrived."""


async def _gone(request, exc: _Gone) -> Response:
    return Response(status_code=499)  # nobody reads this (not a server error to log)


async def _http_error(request, exc: HTTPException) -> JSONResponse:
    # starlette's own 404 and 405, in OpenAI's shape
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error_response(exc.status_code,
                           error_body(f"{request.method} {request.url.path}: {exc.detail}",
                                      code=kind), exc.headers)


async def _internal_error(request, exc: Exception) -> JSONResponse:
    return _error_response(500, error_body(f"internal error: {type(exc).__name__}",
                                           "server_error"))


class _Api:
    """The handlers, and the counters /metrics adds to the scheduler's."""

    def __init__(self, scheduler, model, model_name, api_key, max_body, body_seconds,
                 special):
        self.scheduler = scheduler
        self.special = special
        self.model = model
        self.model_name = model_name
        self.key = api_key.encode() if api_key else None
        self.max_body, self.body_seconds = max_body, body_seconds
        self.seq_len = model.config.seq_len
        self.created = int(os.stat(model.path).st_mtime)
        self.rejected_busy = 0
        self.cancelled = 0  # requests whose client went away before their end

    # -- checks ------------------------------------------------------------------
    def _authorize(self, request) -> None:
        if self.key is None:
            return
        # header values arrive as latin-1 text: back to the bytes the client sent
        given = request.headers.get("authorization", "").encode("latin-1")
        scheme, _, token = given.partition(b" ")
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
            raise ApiError(401, "missing or incorrect API key (Authorization: Bearer KEY)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _body(self, request) -> dict:
        """The JSON body, refused past max_body bytes by Content-Length and while reading."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, f"bad Content-Length {length[:40]!r}")
            if int(length) > self.max_body:
                raise ApiError(413, f"the request body is {length} bytes; the limit is "
                                    f"{self.max_body}", code="request_too_large",
                               headers=_CLOSE)
        data = bytearray()

        async def read() -> None:
            async for chunk in request.stream():
                data.extend(chunk)
                if len(data) > self.max_body:
                    raise ApiError(413, f"the request body exceeds the limit of "
                                        f"{self.max_body} bytes", code="request_too_large",
                                   headers=_CLOSE)

        try:
            # a client that stops mid-body would hold a handler, and a SIGTERM's
            # graceful shutdown that waits for it, for ever
            await asyncio.wait_for(read(), self.body_seconds)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.body_seconds:g} s",
                           code="request_timeout", headers=_CLOSE) from None
        except ClientDisconnect:
            raise _Gone from None
        return parse_json(bytes(data))

    # -- generation ----------------------------------------------------------------
    async def completions(self, request):
        self._authorize(request)
        body = await self._body(request)
        params = parse_params(body, self.model_name)
        prompts = completion_prompts(body, self.model.spec.vocab_size)
        self._check_places(len(prompts), params.n)
        ids, echoes = [], []
        for prompt in prompts:
            ids.append(prompt if isinstance(prompt, list) else await asyncio.to_thread(
                self.model.encode, prompt, True, special=self.special))
            if params.echo and isinstance(prompt, list):
                # unflushed: bytes of a character the ids leave unfinished come out with
                # the answer, whose decoder continues from these ids, as decode(prompt +
                # answer)
                echoes.append(await asyncio.to_thread(self.model.text_stream([]).feed_all,
                                                      prompt))
            else:
                echoes.append(prompt if params.echo else "")
        max_tokens = COMPLETION_MAX_TOKENS if params.max_tokens is None else params.max_tokens
        return await self._generate(request, ids, params, "prompt", max_tokens, chat=False,
                                    echoes=echoes)

    async def chat_completions(self, request):
        self._authorize(request)
        body = await self._body(request)
        params = parse_params(body, self.model_name, chat=True)
        messages = chat_messages(body)
        self._check_places(1, params.n)
        try:
            ids = await asyncio.to_thread(conversation_ids, self.model, messages)
        except UsageError as e:
            raise ApiError(400, str(e), param="messages") from None
        # by default a reply may run to the end of the context, or of what the KV pool holds
        default = max(1, self.scheduler.max_positions - len(ids) + 1)
        return await self._generate(request, [ids], params, "messages",
                                    params.max_tokens or default, chat=True)

    def _check_places(self, prompts: int, n: int) -> None:
        """Choices that could never all get places at once are a 400, not a 503."""
        places = self.scheduler.places
        if prompts * n > places:
            asked = f"n {n}" if prompts == 1 else f"{prompts} prompts, n {n} each,"
            raise ApiError(400, f"{asked} ask for {prompts * n} choices; this server holds "
                                f"{places} at once (--max-sessions and --queue)",
                           param="n" if n > 1 else "prompt")

    async def _generate(self, request, prompts: list, params, prompt_param, max_tokens,
                        chat: bool, echoes: list | None = None):
        answer = max_tokens > 0  # an echo's prompt alone may fill the context
        more = ", and the answer needs at least one more" if answer else ""
        for i, ids in enumerate(prompts):
            the = "the prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if len(ids) + answer > self.seq_len:
                raise ApiError(400, f"{the} is {len(ids)} tokens; this model's context is "
                                    f"{self.seq_len} tokens{more}", param=prompt_param,
                               code="context_length_exceeded")
            if len(ids) + answer > self.scheduler.max_positions:
                raise ApiError(400, f"{the} is {len(ids)} tokens; the KV pool (--kv-memory) "
                                    f"holds {self.scheduler.max_positions} positions{more}",
                               param=prompt_param, code="context_length_exceeded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_event(i):
            def put(event):  # on the engine thread: must not raise
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, (i, event))
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    pass
            return put

        # choice j of each prompt samples as a request of that prompt alone would with
        # seed + j: a seeded request's choices differ, and each is reproducible
        base = default_seed() if params.seed is None else params.seed
        n = params.n
        try:
            reqs = [self.scheduler.request(
                ids, max_tokens, on_event(i * n + j), params.temperature, params.top_p,
                (base - 1 + j) % (2**64 - 1) + 1, params.stop, params.logprobs, params.echo)
                for i, ids in enumerate(prompts) for j in range(n)]
            self.scheduler.submit_all(reqs)
        except Busy as e:
            self.rejected_busy += 1
            raise ApiError(503, str(e), "server_error", code="server_busy",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except UsageError as e:
            raise ApiError(400, str(e)) from None
        events = _Events(self, reqs, queue, request.receive, chat)
        logprobs = params.logprobs is not None
        choices = [Choice(echoed, self.model.text_stream([]) if logprobs and params.echo
                          else None)
                   for echoed in (echoes or [""] * len(prompts)) for _ in range(n)]
        reply = Reply(chat, self.model_name, choices,
                      self.model.tokenizer if logprobs else None)
        if params.stream:
            return _EventStream(events, reply, params.include_usage, n)
        return await _whole(events, reply, n)

    # -- the rest ------------------------------------------------------------------
    def _model_object(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created,
                "owned_by": "qllama"}

    async def models(self, request):
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_object()]})

    async def model_info(self, request):
        self._authorize(request)
        name = request.path_params["model_id"]
        if name != self.model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves "
                                f"{self.model_name!r}", param="model", code="model_not_found")
        return JSONResponse(self._model_object())

    async def health(self, request):
        if not self.scheduler.alive:
            return JSONResponse({"status": "engine stopped", "model": self.model_name,
                                 "error": self.scheduler.failure}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.model_name})

    async def metrics(self, request):
        m = self.scheduler.snapshot()
        lines = []
        for name, kind, help, value in (
                ("running_sessions", "gauge", "Sequences running on the engine.", m.running),
                ("queued_sessions", "gauge", "Requests waiting for a session.", m.queued),
                ("kv_pages_used", "gauge", "KV cache pages held by sequences.", m.kv_pages_used),
                ("kv_pages_cached", "gauge",
                 "KV cache pages named by their tokens, for prompts that start with them.",
                 m.kv_pages_cached),
                ("kv_pages_total", "gauge", "KV cache pages in the pool.", m.kv_pages_total),
                ("tokens_generated_total", "counter", "Tokens generated.", m.tokens_generated),
                ("prompt_tokens_total", "counter", "Prompt tokens run.", m.prompt_tokens),
                ("prompt_tokens_cached_total", "counter",
                 "Prompt tokens whose KV was found cached, not run.", m.prompt_tokens_cached),
                ("requests_finished_total", "counter", "Requests finished (any reason).",
                 m.requests_finished),
                ("requests_rejected_total", "counter", "Requests refused as busy (503).",
                 self.rejected_busy),
                ("requests_cancelled_total", "counter",
                 "Requests cancelled: their client went away, or another choice failed.",
                 self.cancelled),
                ("engine_steps_total", "counter", "Engine steps (batches) run.", m.steps),
                ("engine_step_seconds_total", "counter", "Time spent in engine steps.",
                 m.step_seconds),
                ("engine_last_step_seconds", "gauge", "Duration of the last engine step.",
                 m.last_step_seconds)):
            lines += [f"# HELP qllama_{name} {help}", f"# TYPE qllama_{name} {kind}",
                      f"qllama_{name} {value}"]
        return Response("\n".join(lines) + "\n",
                        media_type="text/plain; version=0.0.4; charset=utf-8")


class _Events:
    """A request's choices' events, iterated as (choice, event) until each choice's
    final one. A watcher on the connection stops the iteration (before that) when the
    client disconnects; `close`, which every response calls however it ends, cancels the
    choices that have not finished. A chat reply's first text loses its word-start
    space (chat.reply_text)."""

    def __init__(self, api: _Api, reqs: list, queue: asyncio.Queue, receive, chat: bool):
        self.api, self.reqs, self.queue = api, reqs, queue
        self.started = [not chat] * len(reqs)
        self.left = set(range(len(reqs)))  # choices not finished
        self.closed = False
        self.watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.queue.put_nowait(_GONE)

    @property
    def finished(self) -> bool:
        return not self.left

    async def __aiter__(self):
        while self.left:
            item = await self.queue.get()
            if item is _GONE:
                return
            i, event = item
            if not self.started[i] and event.text:
                event.text, self.started[i] = reply_text(event.text), True
            if event.finish_reason is not None or event.error is not None:
                self.left.discard(i)
            yield i, event

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.watcher.cancel()
        for i in self.left:  # the client went away, or another choice failed
            self.api.cancelled += 1
            self.api.scheduler.cancel(self.reqs[i])


def _usage(usages: list, n: int) -> Usage:
    """A request's usage: each prompt counted once, however many choices it has."""
    return Usage(sum(u.prompt_tokens for u in usages[::n]),
                 sum(u.completion_tokens for u in usages),
                 sum(u.cached_tokens for u in usages[::n]))


async def _whole(events: _Events, reply: Reply, n: int) -> Response:
    """A non-streamed answer: every piece of every choice, then one JSON object."""
    k = len(reply.choices)
    pieces, logprobs = [[] for _ in range(k)], [None] * k
    ends, usages = [None] * k, [None] * k
    try:
        async for i, event in events:
            pieces[i].append(event.text)
            if event.logprobs is not None:
                logprobs[i] = logprobs[i] or []
                logprobs[i] += event.logprobs  # in place: one copy of each, however long
            if event.error:
                return _error_response(500, error_body(event.error, "server_error"))
            if event.finish_reason:
                ends[i] = ("".join(pieces[i]), event.finish_reason, logprobs[i])
                usages[i] = event.usage
        if events.finished:
            return JSONResponse(reply.whole(ends, _usage(usages, n)))
    finally:
        events.close()
    return Response(status_code=499)  # the client went away; nobody reads this


# SSE ends lines at CR and LF only, but some clients (httpx's iter_lines) also at NEL, LS
# and PS: in JSON they may be escapes.
_LINE_ENDS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _data(obj) -> bytes:
    return (b"data: " + json.dumps(obj, ensure_ascii=False).translate(_LINE_ENDS).encode()
            + b"\n\n")


async def _sse(events: _Events, reply: Reply, include_usage: bool, n: int):
    """Server-sent events in OpenAI's chunk shapes, each choice's by its index, ending
    with `data: [DONE]` once every choice has finished."""
    if reply.chat:
        for i in range(len(reply.choices)):
            yield _data(reply.chunk(i, "", role=True))
    usages = [None] * len(reply.choices)
    async for i, event in events:
        if event.error:
            yield _data(error_body(event.error, "server_error"))
            break
        if event.finish_reason:
            usages[i] = event.usage
            yield _data(reply.chunk(i, event.text or None, event.finish_reason,
                                    logprobs=event.logprobs))
        elif event.text:
            yield _data(reply.chunk(i, event.text, logprobs=event.logprobs))
    else:
        if not events.finished:
            return  # the client went away: nothing more to send
        if include_usage:
            yield _data(reply.usage_chunk(_usage(usages, n)))
    yield b"data: [DONE]\n\n"


class _EventStream:
    """A text/event-stream response of `events` as server-sent events; the events are
    closed (which cancels an unfinished request) however the response ends."""

    def __init__(self, events: _Events, reply: Reply, include_usage: bool, n: int):
        self.events = events
        self.chunks = _sse(events, reply, include_usage, n)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # Let the loop run before the next chunk: events already queued are taken
                # without waiting, and a write that found the connection gone only marks
                # it lost, so without this the next writes go to a dead socket (asyncio
                # logs "socket.send() raised exception." from the fifth).
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we wrote
            pass
        finally:
            await self.chunks.aclose()
            self.events.close()
