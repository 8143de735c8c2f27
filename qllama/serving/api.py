"""The OpenAI API's request checks and response objects, without HTTP.

Requests are checked strictly, so a client's mistake gets a 4xx naming the field rather
than a guess: numbers must be JSON numbers (not strings, not booleans, finite), integers
whole, and options this server cannot honour (penalties, logit_bias, tools, ...) are
refused rather than ignored.
"""
from __future__ import annotations

import json
import math
import struct
import time
import uuid
from dataclasses import dataclass

from ..chat import ROLES, reply_text

MAX_STOPS = 4  # OpenAI's limit on stop sequences
MAX_N = 128  # OpenAI's limit on choices a request


class ApiError(Exception):
    """An error answered with OpenAI's error object and `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object: strict UTF-8, no NaN or Infinity."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _zero(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v == 0


# Options this server does not implement, and what each may be when not asked for.
UNSUPPORTED = {
    "suffix": lambda v: v == "", "logit_bias": lambda v: v == {},
    "presence_penalty": _zero, "frequency_penalty": _zero, "tools": lambda v: v == [],
    "functions": lambda v: v == [], "tool_choice": lambda v: v == "none",
    "response_format": lambda v: v == {"type": "text"},
}


@dataclass
class Params:
    """The sampling and output options of one request, checked."""

    n: int  # choices for each prompt
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple
    logprobs: int | None  # top tokens to report with each token's logprob; None: none
    echo: bool  # a completion's text (and logprobs) starts with its prompt's


def _shown(v) -> str:
    """A value as a message quotes it: JSON, cut at 40 characters (5000-digit numbers)."""
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(400, f"{key} must be a number, got {_shown(v)}", param=key)
    try:
        f = float(v)
    except OverflowError:  # an integer past float's range
        f = math.inf
    if not math.isfinite(f):
        raise ApiError(400, f"{key} must be a finite number, got {_shown(v)}", param=key)
    if not lo <= f <= hi:
        raise ApiError(400, f"{key} must be in [{lo:g}, {hi:g}], got {_shown(v)}", param=key)
    return f


def _integer(body: dict, key: str, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"{key} must be an integer, got {_shown(v)}", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be in {lo}..{hi}, got {_shown(v)}", param=key)
    return v


def _flag(body: dict, key: str, where: str = "") -> bool:
    v = body.get(key)
    if v is not None and not isinstance(v, bool):
        raise ApiError(400, f"{where}{key} must be true or false, got {_shown(v)}",
                       param=where + key)
    return bool(v)


def parse_params(body: dict, model_name: str, chat: bool = False) -> Params:
    """Check what both endpoints share: model, n, stream, sampling, stop, logprobs,
    unsupported options."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model")
    if model is not None and model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves "
                            f"{model_name!r}", param="model", code="model_not_found")
    for key, not_asked in UNSUPPORTED.items():
        if body.get(key) is not None and not not_asked(body[key]):
            raise ApiError(400, f"{key} is not supported by this server", param=key)
    n = _integer(body, "n", 1, MAX_N) or 1
    best_of = _integer(body, "best_of", 1, MAX_N)
    if best_of is not None and best_of != n:  # more than n would be ranked, fewer is wrong
        raise ApiError(400, f"best_of must equal n ({n}): this server returns every choice "
                            "it makes", param="best_of")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    stream = _flag(body, "stream")
    include_usage = _flag(options or {}, "include_usage", "stream_options.")
    echo = _flag(body, "echo")
    # an echo may ask for no answer at all: its prompt scored, as scorers ask
    max_tokens = _integer(body, "max_completion_tokens" if chat else "max_tokens",
                          0 if echo and not chat else 1, 1 << 31)
    if chat and max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 1 << 31)
    temperature = _number(body, "temperature", 1.0, 0.0, math.inf)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if struct.unpack("f", struct.pack("f", top_p))[0] == 0:
        # OpenAI's and llama.cpp's nucleus keeps at least the likeliest token; run.c's
        # sampler (a float) reads 0 as "no nucleus", the whole vocabulary
        temperature = 0.0
    seed = _generator_seed(_integer(body, "seed", -2**63, 2**64 - 1))
    if echo and chat:
        raise ApiError(400, "echo is not supported by chat completions", param="echo")
    return Params(n, stream, include_usage, max_tokens, temperature, top_p, seed, _stops(body),
                  _logprobs(body, chat), echo)


def _logprobs(body: dict, chat: bool) -> int | None:
    """The top count asked for: a chat's logprobs (true/false) and top_logprobs
    (0..20), a completion's logprobs (0..5), as OpenAI takes them."""
    if not chat:
        return _integer(body, "logprobs", 0, 5)
    top = _integer(body, "top_logprobs", 0, 20)
    if not _flag(body, "logprobs"):
        if top:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return None
    return top or 0


def _generator_seed(seed: int | None) -> int | None:
    """run.c's generator state for OpenAI's seed (any 64-bit integer): a positive seed is
    itself (as `qllama run -s`), -1 none (random, as llama-server), another its 64-bit
    two's complement; 0, which the generator cannot hold, takes -1's."""
    if seed is None or seed == -1:
        return None
    return seed % 2**64 or 2**64 - 1


def _stops(body: dict) -> tuple:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings, got {len(stops)}",
                       param="stop")
    return tuple(stops)


def completion_prompts(body: dict, vocab_size: int) -> list:
    """The prompts, each a string or token ids taken as they are, with no BOS added (as
    llama-server takes them): OpenAI's string, list of strings, list of token ids, or
    list of lists of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids "
                            "or a list of lists of token ids, and not empty", param="prompt")
    if isinstance(prompt[0], str):
        for i, p in enumerate(prompt):
            if not isinstance(p, str):
                raise ApiError(400, f"prompt[{i}] must be a string, as prompt[0] is, got "
                                    f"{_shown(p)}", param="prompt")
        return prompt
    if isinstance(prompt[0], list):
        return [_token_ids(p, f"prompt[{i}]", vocab_size) for i, p in enumerate(prompt)]
    return [_token_ids(prompt, "prompt", vocab_size)]


def _token_ids(ids, where: str, vocab_size: int) -> list[int]:
    if not isinstance(ids, list) or not ids:
        raise ApiError(400, f"{where} must be a non-empty list of token ids, got "
                            f"{_shown(ids)}", param="prompt")
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise ApiError(400, f"{where}[{i}] must be a token id in 0..{vocab_size - 1}, got "
                                f"{_shown(t)}", param="prompt")
    return ids


def chat_messages(body: dict) -> list[tuple[str, str]]:
    """(role, content) of each message; "developer" is OpenAI's newer name for system."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = {"developer": "system"}.get(m.get("role"), m.get("role"))
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be system, user or assistant, got "
                                f"{json.dumps(m.get('role'))[:40]}", param=f"{where}.role")
        out.append((role, _content(m.get("content"), f"{where}.content")))
    return out


def _content(content, where: str) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


# -- responses ---------------------------------------------------------------------
def usage_body(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


class Choice:
    """What a completion's choice carries between its chunks: `echoed`, the prompt its
    text starts with, and `text`, a StreamDecoder that gives the echoed prompt tokens'
    text_offset (the answer's tokens carry theirs)."""

    def __init__(self, echoed: str = "", text=None):
        self.prefix = echoed  # until the choice's first text goes out
        self.echoed = len(echoed)
        self.text = text
        self.offset = 0  # characters of the echoed prompt's tokens so far


class Reply:
    """The response objects of one request, whole or as stream chunks, in the shapes of
    OpenAI's text_completion and chat.completion(.chunk), for its `choices` (Choice
    each). `tokenizer` names the tokens of logprobs."""

    def __init__(self, chat: bool, model_name: str, choices: list, tokenizer=None):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model_name
        self.choices = choices
        self.tokenizer = tokenizer

    def _head(self, object: str) -> dict:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model}

    def whole(self, ends: list, usage) -> dict:
        """The answer of every choice, `ends[i]` = (text, finish_reason, logprobs)."""
        choices = []
        for i, (text, finish_reason, logprobs) in enumerate(ends):
            c = self.choices[i]
            text, c.prefix = c.prefix + text, ""
            lp = self.logprobs(i, logprobs)
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "logprobs": lp, "finish_reason": finish_reason})
            else:
                choices.append({"index": i, "text": text, "logprobs": lp,
                                "finish_reason": finish_reason})
        obj = self._head("chat.completion" if self.chat else "text_completion")
        return {**obj, "choices": choices, "usage": usage_body(usage)}

    def chunk(self, i: int, text: str | None, finish_reason: str | None = None,
              role: bool = False, logprobs=None) -> dict:
        c = self.choices[i]
        if c.prefix:
            text, c.prefix = c.prefix + (text or ""), ""
        lp = self.logprobs(i, logprobs)
        if self.chat:
            delta = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": i, "delta": delta, "logprobs": lp,
                      "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": i, "text": text or "", "logprobs": lp,
                  "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    # -- logprobs --------------------------------------------------------------------
    def _token(self, token: int) -> tuple[str, bytes]:
        """A token as OpenAI shows it: its text, "bytes:\\xNN..." for bytes that are not
        UTF-8 on their own, a control piece by its name ("</s>"); and its bytes."""
        raw = self.tokenizer.surfaces[token]
        if not raw:
            return self.tokenizer.piece(token), b""
        try:
            return raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw

    def logprobs(self, i: int, entries: list | None) -> dict | None:
        """OpenAI's logprobs object of choice i's generation.TokenLogprobs: a chat's
        {"content": [...]}, a completion's tokens, token_logprobs, top_logprobs and
        text_offset."""
        if entries is None:
            return None
        if self.chat:
            def item(token, logprob):
                text, raw = self._token(token)
                return {"token": text, "logprob": logprob, "bytes": list(raw)}
            content = []  # no echo in a chat: every entry is the reply's
            for e in entries:
                d = {**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                if e.offset == 0:  # the reply's first word, as its content shows it
                    shown = reply_text(d["token"])
                    d["bytes"] = d["bytes"][len(d["token"]) - len(shown):]  # a space: 1 byte
                    d["token"] = shown
                content.append(d)
            return {"content": content, "refusal": None}
        tokens, offsets, tops = [], [], []
        c = self.choices[i]
        for e in entries:
            tokens.append(self._token(e.token)[0])
            if e.offset is None:  # an echoed prompt's token
                offsets.append(c.offset)
                c.offset += len(c.text.feed(e.token))
            else:
                offsets.append(c.echoed + e.offset)
            if e.top is None:  # an echoed prompt's first token
                tops.append(None)
                continue
            top = {}
            for t, lp in e.top:
                top.setdefault(self._token(t)[0], lp)  # two ids of one text: the likelier
            top.setdefault(tokens[-1], e.logprob)  # OpenAI's: the sampled token's always
            tops.append(top)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": tops, "text_offset": offsets}

    def usage_chunk(self, usage) -> dict:
        object = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(object), "choices": [], "usage": usage_body(usage)}
