"""Serving many users at once (each sequence's generation is qllama.generation's):
`batch` (the engine for many sequences and its KV page pool), `scheduler`
(continuous batching on one engine thread), `server` (the OpenAI-compatible HTTP API)."""
