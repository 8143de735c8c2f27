"""Which group size a Q8_0 file gets: one that divides every row, so that no group
straddles two rows (llama2.c's exporter only checks dim, and its runq.c then
misreads files whose groups cross the rows of hidden_dim-wide matrices)."""
from __future__ import annotations

from ..errors import UsageError
from ..formats.llama2c import Config

DEFAULT_GROUP_SIZE = 64


def choose_group_size(config: Config, requested: int | None = None) -> tuple[int, str | None]:
    """The group size to quantize with, and a note when the default had to back off.

    Default (requested None): the largest power of two <= 64 that divides both dim
    and hidden_dim, so no group straddles two rows. An explicit size must divide
    them itself: it is used as given or refused.
    """
    rows = (("dim", config.dim), ("hidden_dim", config.hidden_dim))
    if requested is not None:
        if requested <= 0:
            raise UsageError(f"--group-size must be positive, got {requested}")
        for what, n in rows:
            if n % requested:
                best = _largest_pow2_dividing(config, requested)
                raise UsageError(
                    f"--group-size {requested} does not divide {what} {n}, so its groups "
                    f"would straddle rows (llama2.c's runq.c misreads such files); the "
                    f"largest power of two <= {requested} that divides dim {config.dim} and "
                    f"hidden_dim {config.hidden_dim} is {best}")
        return requested, None
    gs = _largest_pow2_dividing(config, DEFAULT_GROUP_SIZE)
    note = None
    if gs != DEFAULT_GROUP_SIZE:
        note = (f"group size {DEFAULT_GROUP_SIZE} does not divide both dim {config.dim} and "
                f"hidden_dim {config.hidden_dim}; using {gs}")
    return gs, note


def _largest_pow2_dividing(config: Config, limit: int) -> int:
    gs = 1 << (limit.bit_length() - 1)  # largest power of two <= limit
    while config.dim % gs or config.hidden_dim % gs:
        gs //= 2
    return gs
