"""Serving many users at once: `generation` (one sequence's sampling, stop strings and
text), `batch` (the engine for many sequences and its KV page pool), `scheduler`
(continuous batching on one engine thread), `server` (the OpenAI-compatible HTTP API)."""
