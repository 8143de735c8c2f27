"""The Llama 2 chat template, used alike by `qllama run -m chat` and the server.

A conversation is laid out as `qllama run -m chat` builds it in its KV cache: every user
turn is BOS + "[INST] ... [/INST]" (the system prompt inside the first), followed by the
assistant's reply tokens; the EOS that ended a reply was sampled, never fed, so it is not
in the context.
"""
from __future__ import annotations

from .errors import UsageError

ROLES = ("system", "user", "assistant")


def chat_prompt(user: str, system: str = "") -> str:
    """Llama 2 chat template for one user turn (the system prompt goes in the first)."""
    if system:
        return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
    return f"[INST] {user} [/INST]"


def turn_ids(model, user: str, system: str = "") -> list[int]:
    """Token ids of one user turn: BOS, then the template."""
    return model.encode(chat_prompt(user, system), bos=True)


def reply_text(text: str) -> str:
    """A reply as the client sees it: without the word-start space of its first piece
    (SentencePiece drops it at the start of a text), so encoding it with the dummy
    prefix gives back the tokens that made it."""
    return text[1:] if text.startswith(" ") else text


def conversation_ids(model, messages) -> list[int]:
    """Token ids of a conversation, messages (role, content) in order: system messages
    first (joined by a blank line), then user and assistant turns alternating, from a
    user turn to a user turn, as Meta's reference chat does."""
    messages = list(messages)
    system = []
    while messages and messages[0][0] == "system":
        system.append(messages.pop(0)[1])
    ids: list[int] = []
    for i, (role, content) in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise UsageError(f"messages[{i + len(system)}] is {role!r}, expected {want!r}: "
                             "system messages first, then user and assistant turns "
                             "alternating, ending with a user turn")
        if role == "user":
            ids += turn_ids(model, content, "\n\n".join(system) if i == 0 else "")
        else:
            ids += model.encode(content, bos=False)
    if not messages or messages[-1][0] != "user":
        raise UsageError("the messages must end with a user turn")
    return ids
