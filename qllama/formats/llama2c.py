"""llama2.c checkpoint layouts: version 0 (legacy fp32), 1 (fp32) and 2 (Q8_0).

Each version is described once, here: its header struct and the order of its
tensors. The reader (`ModelFile`), the writers (quantize, convert) and the
validator (`parse_header` + the size check) all walk the same `layout()`.

All values are little-endian; every matrix is (out, in), row-major.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from ..errors import FormatError
from ..io.inputs import Mapped, advise, map_readonly, open_regular, pread_head
from ..spec import ModelSpec

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
HEADER_SIZE = 256  # v1 and v2 headers are zero-padded to this many bytes
V0_HEADER = struct.Struct("<7i")  # dim hidden n_layers n_heads n_kv vocab seq
V1_HEADER = struct.Struct("<Ii7iB")  # magic version <7 ints> shared
V2_HEADER = struct.Struct("<Ii7iBi")  # magic version <7 ints> shared group_size
INT32_MAX = 2**31 - 1

F32 = "f32"  # float32 values
Q80 = "q80"  # int8 values of the whole tensor, then one float32 scale per group

# name -> (one per layer?, shape as a function of the config)
SHAPES = {
    "tok_embeddings": (False, lambda c: (c.vocab_size, c.dim)),
    "attention_norm": (True, lambda c: (c.dim,)),
    "ffn_norm": (True, lambda c: (c.dim,)),
    "wq": (True, lambda c: (c.n_heads * c.head_size, c.dim)),
    "wk": (True, lambda c: (c.kv_dim, c.dim)),
    "wv": (True, lambda c: (c.kv_dim, c.dim)),
    "wo": (True, lambda c: (c.dim, c.n_heads * c.head_size)),
    "w1": (True, lambda c: (c.hidden_dim, c.dim)),
    "w2": (True, lambda c: (c.dim, c.hidden_dim)),
    "w3": (True, lambda c: (c.hidden_dim, c.dim)),
    "norm": (False, lambda c: (c.dim,)),
    "freqs_cos": (False, lambda c: (c.seq_len, c.head_size // 2)),
    "freqs_sin": (False, lambda c: (c.seq_len, c.head_size // 2)),
    "output": (False, lambda c: (c.vocab_size, c.dim)),
}
# The kinds each layer has one of: a file holds n_layers times as many tensors.
PER_LAYER = frozenset(name for name, (per_layer, _) in SHAPES.items() if per_layer)

# The matrices version 2 stores as Q8_0, in file order.
QUANTIZED = ("tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")

# File order per version. "output" is present only without a shared classifier.
ORDER = {
    0: ("tok_embeddings", "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm",
        "w1", "w2", "w3", "norm", "freqs_cos", "freqs_sin", "output"),
    1: ("attention_norm", "ffn_norm", "norm", "tok_embeddings",
        "wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"),
    2: ("attention_norm", "ffn_norm", "norm") + QUANTIZED,
}
DATA_START = {0: V0_HEADER.size, 1: HEADER_SIZE, 2: HEADER_SIZE}


@dataclass(frozen=True)
class Config:
    """The header of a checkpoint: hyperparameters plus format details."""

    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    group_size: int = 0  # version 2 only

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    @property
    def straddles(self) -> bool:
        """True when Q8_0 groups cross row boundaries (legal, but runq.c misreads it)."""
        return self.version == 2 and bool(
            self.dim % self.group_size or self.hidden_dim % self.group_size)

    @property
    def spec(self) -> ModelSpec:
        """The model this header describes, with llama2.c's constants."""
        return ModelSpec(self.dim, self.hidden_dim, self.n_layers, self.n_heads,
                         self.n_kv_heads, self.vocab_size, self.seq_len,
                         self.shared_classifier)

    def as_version(self, version: int, group_size: int = 0) -> "Config":
        return replace(self, version=version, group_size=group_size if version == 2 else 0)

    def n_params(self) -> int:
        """Weights the model computes with (not counting v0's freqs tables)."""
        return sum(int(np.prod(e.shape)) for e in layout(self.as_version(1)))


class Entry(NamedTuple):
    """One tensor (for per-layer kinds: one layer's tensor) in a file."""

    name: str
    layer: int | None
    shape: tuple
    encoding: str  # F32 or Q80
    offset: int  # first byte (Q80: first int8 value)
    nbytes: int  # all bytes (Q80: values and scales)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def scales_offset(self) -> int:  # Q80 only
        return self.offset + self.numel


def _kinds(config: Config):
    """(name, per_layer, shape, encoding, nbytes of one tensor) of each kind the file
    holds, in file order: the one description layout and expected_size both walk."""
    for name in ORDER[config.version]:
        if name == "output" and config.shared_classifier:
            continue
        per_layer, shape_of = SHAPES[name]
        shape = shape_of(config)
        numel = math.prod(shape)
        encoding = Q80 if (config.version == 2 and name in QUANTIZED) else F32
        nbytes = numel + 4 * (numel // config.group_size) if encoding == Q80 else 4 * numel
        yield name, per_layer, shape, encoding, nbytes


def layout(config: Config) -> list[Entry]:
    """Every tensor of the file in order, with its byte offset and size."""
    entries = []
    offset = DATA_START[config.version]
    for name, per_layer, shape, encoding, nbytes in _kinds(config):
        for layer in (range(config.n_layers) if per_layer else (None,)):
            entries.append(Entry(name, layer, shape, encoding, offset, nbytes))
            offset += nbytes
    return entries


def expected_size(config: Config) -> int:
    """File size the header implies (arithmetic: a damaged header may claim 10**9 layers)."""
    return DATA_START[config.version] + sum(
        nbytes * (config.n_layers if per_layer else 1)
        for _, per_layer, _, _, nbytes in _kinds(config))


def header_bytes(config: Config) -> bytes:
    """The header as llama2.c's exporters write it for this version."""
    c = config
    dims = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads)
    if c.version == 0:
        # Legacy format: a negative vocab_size marks a separate classifier.
        vocab = c.vocab_size if c.shared_classifier else -c.vocab_size
        return V0_HEADER.pack(*dims, vocab, c.seq_len)
    if c.version == 1:
        head = V1_HEADER.pack(MAGIC, 1, *dims, c.vocab_size, c.seq_len, int(c.shared_classifier))
    else:
        head = V2_HEADER.pack(MAGIC, 2, *dims, c.vocab_size, c.seq_len,
                              int(c.shared_classifier), c.group_size)
    return head + bytes(HEADER_SIZE - len(head))


def parse_header(head: bytes, file_size: int, name: str = "model") -> Config:
    """Decode and validate a header; `head` is the file's first (up to) 256 bytes.

    Raises FormatError naming the file and the first field that is wrong,
    including a file size that differs from what the header implies.
    """
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == MAGIC:
        if len(head) < 8:
            raise FormatError(f"{name}: truncated header ({file_size} bytes)")
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise FormatError(f"{name}: unsupported llama2.c format version {version} "
                              "(qllama reads versions 0, 1 and 2)")
        if file_size < HEADER_SIZE:
            raise FormatError(f"{name}: truncated header: {file_size} bytes, "
                              f"a version {version} header has {HEADER_SIZE}")
        fmt = V1_HEADER if version == 1 else V2_HEADER
        fields = fmt.unpack_from(head)
        dims, shared = fields[2:9], fields[9]
        group_size = fields[10] if version == 2 else 0
        if shared not in (0, 1):
            raise FormatError(f"{name}: shared-classifier flag is {shared}, must be 0 or 1")
        vocab = dims[5]
    else:
        if file_size < V0_HEADER.size:
            raise FormatError(f"{name}: too short to be a llama2.c checkpoint "
                              f"({file_size} bytes)")
        version, group_size = 0, 0
        dims = V0_HEADER.unpack_from(head)
        vocab = abs(dims[5])
        shared = dims[5] > 0
    config = Config(version, dims[0], dims[1], dims[2], dims[3], dims[4], vocab, dims[6],
                    bool(shared), group_size)
    try:
        validate(config, name)
        want = expected_size(config)
        if file_size != want:
            what = "truncated" if file_size < want else "trailing bytes after the last tensor"
            raise FormatError(f"{name}: file is {file_size} bytes but its version {version} "
                              f"header implies {want} ({what})")
    except FormatError as e:
        if version:
            raise
        # version 0 has no magic: any file is read as one, so say what else it may be
        raise FormatError(f"{e}; read as a llama2.c version 0 header, which has no magic "
                          "(not a llama2.c checkpoint, or a damaged one)") from None
    return config


def validate(config: Config, name: str = "model") -> None:
    """Check the hyperparameters are consistent; raise FormatError if not."""
    c = config
    for field in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                  "vocab_size", "seq_len"):
        value = getattr(c, field)
        if not 0 < value <= INT32_MAX:
            raise FormatError(f"{name}: header says {field}={value}, must be > 0")
    if c.vocab_size < 3:
        raise FormatError(f"{name}: vocab_size {c.vocab_size}; llama2.c models need at least 3 "
                          "(ids 0, 1, 2 are unknown, BOS and EOS)")
    if c.dim % c.n_heads:
        raise FormatError(f"{name}: dim {c.dim} is not a multiple of n_heads {c.n_heads}")
    if c.n_heads % c.n_kv_heads:
        raise FormatError(f"{name}: n_heads {c.n_heads} is not a multiple of "
                          f"n_kv_heads {c.n_kv_heads}")
    if c.head_size % 2:
        raise FormatError(f"{name}: head size {c.head_size} is odd; rotary embeddings "
                          "need pairs")
    if c.version == 2:
        if c.group_size <= 0:
            raise FormatError(f"{name}: group size {c.group_size}, must be > 0")
        for kind in QUANTIZED:
            numel = int(np.prod(SHAPES[kind][1](c)))
            if numel % c.group_size:
                raise FormatError(f"{name}: group size {c.group_size} does not divide the "
                                  f"{numel} values of {kind}")


def open_checkpoint(path: str) -> tuple[int, Config]:
    """(fd, config) of a regular file whose header was validated against its size,
    both from the one descriptor; the caller closes fd."""
    fd, size = open_regular(path)
    try:
        return fd, parse_header(pread_head(fd, min(size, HEADER_SIZE), path), size, path)
    except BaseException:
        os.close(fd)
        raise


def open_input(path: str) -> tuple[int, Config]:
    """open_checkpoint for a converter's one pass front to back: the kernel reads ahead."""
    fd, config = open_checkpoint(path)
    advise(fd, 0, 0, "POSIX_FADV_SEQUENTIAL")
    return fd, config


def read_config(path: str | os.PathLike) -> Config:
    """Validate a file's header against its size without mapping it."""
    fd, config = open_checkpoint(os.fspath(path))
    os.close(fd)
    return config


class QTensor(NamedTuple):
    """A Q8_0 tensor as stored: int8 values (flat) and one scale per group."""

    q: np.ndarray  # (numel,) int8
    s: np.ndarray  # (numel // group_size,) float32
    shape: tuple
    group_size: int

    def dequantize(self) -> np.ndarray:
        return dequantize_q80(self.q, self.s, self.group_size).reshape(self.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start:stop as float32 (stop - start, cols)."""
        cols = self.q.size // self.shape[0]
        return dequantize_q80(self.q, self.s, self.group_size,
                              start * cols, stop * cols).reshape(stop - start, cols)


def dequantize_q80(q: np.ndarray, s: np.ndarray, group_size: int, start: int = 0,
                   stop: int | None = None) -> np.ndarray:
    """Values start:stop (flat, float32) of Q8_0 values `q` (int8) with one scale in `s`
    per `group_size` of them: q · s. Groups run over the flattened tensor, so a range
    of rows may begin or end inside one: the groups covering it are dequantized, then
    cut."""
    stop = q.size if stop is None else stop
    g0, g1 = start // group_size, -(-stop // group_size)
    w = q[g0 * group_size:g1 * group_size].reshape(-1, group_size).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # 0 · Inf is NaN; the callers say so
        w = (w * s[g0:g1, None]).reshape(-1)
    return w[start - g0 * group_size:stop - g0 * group_size]


class ModelFile(Mapped):
    """A validated checkpoint, memory-mapped read-only; tensors are views of the map."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        fd, self.config = open_checkpoint(self.path)
        self.entries = {(e.name, e.layer): e for e in layout(self.config)}
        try:
            self._map = map_readonly(fd)
        finally:
            os.close(fd)
        # Mapped bytes are checked again in case the file changed since validation.
        if len(self._map) != expected_size(self.config):
            self._map.close()
            raise FormatError(f"{self.path}: file changed size while opening")
        self.buffer = np.frombuffer(self._map, dtype=np.uint8)

    @property
    def spec(self) -> ModelSpec:
        return self.config.spec

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self.entries)

    def tensor(self, name: str, layer: int | None = None):
        """An ndarray view (F32) or a QTensor of views (Q80) of one tensor."""
        e = self.entries[(name, layer)]
        if e.encoding == F32:
            return self.buffer[e.offset:e.offset + e.nbytes].view(np.float32).reshape(e.shape)
        gs = self.config.group_size
        q = self.buffer[e.offset:e.offset + e.numel].view(np.int8)
        s = self.buffer[e.scales_offset:e.offset + e.nbytes].view(np.float32)
        return QTensor(q, s, e.shape, gs)
