"""What a model is, apart from the file that holds it: its shape, its RoPE and norm
constants, its special tokens and chat template. A llama2.c header gives the shape
and leaves the rest at llama2.c's values (run.c's literals); a GGUF file gives all of
it. The engine reads its constants from here."""
from __future__ import annotations

from dataclasses import dataclass

# run.c's literals, which a llama2.c file leaves implicit (also llama.cpp's defaults
# for a llama GGUF file that does not say)
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5

# the fields that give a model's shape (a llama2.c header's seven ints, in its order)
SHAPE_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                "seq_len")


@dataclass(frozen=True)
class ModelSpec:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool  # the classifier is the token table
    rope_theta: float = ROPE_THETA
    norm_eps: float = RMS_NORM_EPS
    bos_id: int = 1
    eos_id: int = 2
    chat_template: str | None = None

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size
