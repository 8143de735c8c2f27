"""A GGUF file of llama.cpp's "llama" architecture, validated, then mapped read-only:
its ModelSpec from the metadata and its tensors by llama2.c names (formats.gguf's
NAMES, the table the exporter writes with).

q/k rows: llama.cpp's "llama" files keep Meta's interleaved order (its HF converter,
convert_hf_to_gguf.py's LlamaModel.permute, turns transformers' half-split rows back
into adjacent pairs), which is llama2.c's RoPE: the matrices are used as they are.

What qllama cannot run is refused, one line naming the key or tensor: another
architecture, rope scaling, a rope dimension or key/value length other than the head
size, experts, and any tensor besides the llama ones for block_count layers (llama.cpp
refuses unused tensors too; rope_freqs.weight, Llama 3.1's scaled RoPE, included).
Norms are F32 (llama.cpp's converters and llama-quantize keep 1-D tensors F32);
matrices F32 or one of gguf_types' block types.
"""
from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
from gguf import GGMLQuantizationType as G

from ..errors import FormatError
from ..io.inputs import HeadReads, Mapped, map_readonly, open_regular
from ..spec import RMS_NORM_EPS, ROPE_THETA, ModelSpec
from . import gguf as names
from .gguf_file import parse, show
from .gguf_types import BY_GGUF, BlockTensor
from .llama2c import INT32_MAX, PER_LAYER, SHAPES

ARCH = names.ARCH
F32_TINY, F32_MAX = 2.0**-149, 3.4028234663852886e38  # float32's least and greatest above 0
_NORMS = ("attention_norm", "ffn_norm", "norm")


class GGUFModel(Mapped):
    """A validated llama GGUF file, memory-mapped read-only; tensors are views of the map
    (`buffer`), F32 ones as float32 ndarrays, the others as BlockTensors."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        fd, size = open_regular(self.path)
        try:
            with HeadReads(fd) as head:
                c = parse(fd, size, self.path)
                head.end = c.read_end
            self.version, self.metadata, self.alignment = c.version, c.metadata, c.alignment
            self.infos, self.data_start = c.tensors, c.data_start
            self.spec = _spec(self.path, self.metadata, self.infos)
            self._entries = _entries(self.path, self.spec, self.infos)
            self._map = map_readonly(fd)
        finally:
            os.close(fd)
        if len(self._map) != size:
            self._map.close()
            raise FormatError(f"{self.path}: file changed size while opening")
        self.file_size = size
        self.buffer = np.frombuffer(self._map, dtype=np.uint8)

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self._entries)

    def info(self, name: str, layer: int | None = None):
        """The gguf_file.TensorInfo of a tensor by its llama2.c name."""
        return self.infos[self._entries[(name, layer)]]

    def tensor(self, name: str, layer: int | None = None):
        """One tensor by its llama2.c name: (rows, cols) or (n,) float32 for F32, else a
        BlockTensor of shape (rows, cols)."""
        t = self.info(name, layer)
        start = self.data_start + t.offset
        raw = self.buffer[start:start + t.nbytes]
        if t.type == G.F32:
            return raw.view(np.float32).reshape(t.shape)
        return BlockTensor(BY_GGUF[t.type], t.shape, raw)

    def tensor_types(self) -> dict:
        """{GGUF type name: number of tensors}, most common first."""
        return dict(Counter(t.type_name for t in self.infos.values()).most_common())

    def n_params(self) -> int:
        return sum(math.prod(t.dims) for t in self.infos.values())

    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.infos.values())


def _key(arch_key: str) -> str:
    return arch_key.format(arch=ARCH)


class _Meta:
    """Typed reads of metadata values, each error one line naming the key."""

    def __init__(self, path: str, metadata: dict):
        self.path, self.m = path, metadata

    def fail(self, key: str, why: str):
        raise FormatError(f"{self.path}: {key} {why}")

    def int(self, key: str, default=None, low: int = 1) -> int:
        v = self.m.get(key, default)
        if v is None:
            self.fail(key, "is missing")
        if type(v) is not int or not low <= v <= INT32_MAX:
            self.fail(key, f"is {show(v)}, must be an integer from {low} to {INT32_MAX}")
        return v

    def float(self, key: str, default: float) -> float:
        v = self.m.get(key, default)
        # llama.cpp reads these keys as float32: a FLOAT64 one must be one of those too
        if type(v) not in (int, float) or not F32_TINY <= v <= F32_MAX:
            self.fail(key, f"is {show(v)}, must be a positive number a float32 holds")
        return float(v)

    def str(self, key: str, default=None):
        v = self.m.get(key, default)
        if v is not None and type(v) is not str:
            self.fail(key, f"is {show(v)}, must be a string")
        return v


def _spec(path: str, metadata: dict, infos: dict) -> ModelSpec:
    m = _Meta(path, metadata)
    arch = m.str("general.architecture")
    if arch is None:
        m.fail("general.architecture", "is missing")
    if arch != ARCH:
        m.fail("general.architecture", f"is {show(arch)}; qllama reads {ARCH!r}")
    k = _key
    dim = m.int(k("{arch}.embedding_length"))
    n_heads = m.int(k("{arch}.attention.head_count"))
    n_kv_heads = m.int(k("{arch}.attention.head_count_kv"), n_heads)
    if dim % n_heads or (dim // n_heads) % 2:
        m.fail(k("{arch}.attention.head_count"), f"{n_heads} does not divide embedding_length "
               f"{dim} into heads of an even size")
    if n_heads % n_kv_heads:
        m.fail(k("{arch}.attention.head_count_kv"), f"{n_kv_heads} does not divide head_count "
               f"{n_heads}")
    head = dim // n_heads
    for key in ("{arch}.rope.dimension_count", "{arch}.attention.key_length",
                "{arch}.attention.value_length"):
        if k(key) in metadata and m.int(k(key)) != head:
            m.fail(k(key), f"is {metadata[k(key)]}, not the head size {head}; qllama "
                   "rotates and attends over whole heads")
    scaling = m.str(k("{arch}.rope.scaling.type"), "none")
    if scaling != "none":
        m.fail(k("{arch}.rope.scaling.type"), f"is {show(scaling)}; qllama has no rope scaling")
    if m.int(k("{arch}.expert_count"), 0, low=0):
        m.fail(k("{arch}.expert_count"), f"is {metadata[k('{arch}.expert_count')]}; qllama "
               "runs dense models, not mixtures of experts")
    vocab = _vocab_size(m, infos)
    spec = ModelSpec(
        dim=dim, hidden_dim=m.int(k("{arch}.feed_forward_length")),
        n_layers=m.int(k("{arch}.block_count")), n_heads=n_heads, n_kv_heads=n_kv_heads,
        vocab_size=vocab, seq_len=m.int(k("{arch}.context_length")),
        shared_classifier=names.NAMES["output"] not in infos,
        rope_theta=m.float(k("{arch}.rope.freq_base"), ROPE_THETA),
        norm_eps=m.float(k("{arch}.attention.layer_norm_rms_epsilon"), RMS_NORM_EPS),
        bos_id=m.int("tokenizer.ggml.bos_token_id", 1, low=0),
        eos_id=m.int("tokenizer.ggml.eos_token_id", 2, low=0),
        chat_template=m.str("tokenizer.chat_template"))
    # before anything is made per layer: a small file may claim 2**31 - 1 layers
    if spec.n_layers * len(PER_LAYER) > len(infos):
        m.fail(k("{arch}.block_count"), f"is {spec.n_layers}, {len(PER_LAYER)} tensors a "
               f"layer, but the file holds {len(infos)} tensors in all")
    for key, value in (("tokenizer.ggml.bos_token_id", spec.bos_id),
                       ("tokenizer.ggml.eos_token_id", spec.eos_id)):
        if value >= vocab:
            m.fail(key, f"is {value}, outside the vocabulary of {vocab}")
    return spec


def _vocab_size(m: _Meta, infos: dict) -> int:
    tokens = m.m.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, list):
        m.fail("tokenizer.ggml.tokens", "is not an array of strings")
    key = _key("{arch}.vocab_size")
    if tokens is None and key not in m.m:
        m.fail("tokenizer.ggml.tokens", f"and {key} are both missing: no vocabulary size")
    vocab = len(tokens) if tokens is not None else m.int(key)
    if tokens is not None and key in m.m and m.int(key) != vocab:
        m.fail(key, f"is {m.m[key]}, but tokenizer.ggml.tokens has {vocab} tokens")
    embd = infos.get(names.NAMES["tok_embeddings"])
    if embd is not None and len(embd.dims) == 2 and embd.dims[1] != vocab:
        raise FormatError(f"{m.path}: {embd.name} has {embd.dims[1]} rows, the vocabulary "
                          f"{vocab} tokens")
    if not 3 <= vocab <= INT32_MAX:
        m.fail("tokenizer.ggml.tokens", f"has {vocab} tokens; a llama model needs at least 3")
    return vocab


def _entries(path: str, spec: ModelSpec, infos: dict) -> dict:
    """{(llama2.c name, layer): GGUF name} for every tensor, each checked for its shape and
    type; a missing, unknown or extra tensor is an error."""
    want = {}
    for name in names.NAMES:
        for layer in (range(spec.n_layers) if name in PER_LAYER else (None,)):
            want[names.tensor_name(name, layer)] = (name, layer)
    extra = [n for n in infos if n not in want]
    if extra:
        raise FormatError(f"{path}: tensor {extra[0]} is not one of the llama model's for "
                          f"{spec.n_layers} layers (block_count); qllama refuses tensors it "
                          "would not use")
    entries = {}
    for gname, (name, layer) in want.items():
        t = infos.get(gname)
        if t is None:
            if name == "output":
                continue  # absent: the classifier is the token table
            raise FormatError(f"{path}: tensor {gname} is missing")
        shape = SHAPES[name][1](spec)
        if t.shape != shape:
            raise FormatError(f"{path}: tensor {gname} has shape {list(t.shape)} (rows, "
                              f"columns), the metadata implies {list(shape)}")
        if name in _NORMS and t.type != G.F32:
            raise FormatError(f"{path}: tensor {gname} has type {t.type_name}; qllama reads "
                              "norms as F32 only (llama.cpp's converters write them so)")
        entries[(name, layer)] = gname
    return entries
