"""GGUF, llama.cpp's format, as qllama writes it for a llama2.c model: architecture
"llama", the tensor names, types and metadata of llama.cpp's own converters.

Names, keys and block sizes come from the `gguf` package (maintained with
llama.cpp), not from copies here. q/k rows keep Meta's interleaved order, as in
llama.cpp's llama2.c converter (examples/convert-llama2c-to-ggml): llama.cpp's
"llama" RoPE rotates adjacent pairs, as llama2.c does.

Types (llama.cpp's convert_hf_to_gguf): 1-D tensors (the norms) stay F32; matrices
are F32, F16 or Q8_0 (blocks of 32 int8 values with an fp16 scale, quantized by
`gguf.quants`). A matrix whose rows are not a whole number of blocks (stories260K's
w2: rows of hidden_dim 172) falls back to F16, as those converters do.
"""
from __future__ import annotations

import gguf
from gguf import GGMLQuantizationType as T

from .llama2c import Config

ARCH = "llama"

# llama2.c name -> GGUF tensor name ("{bid}" is the layer).
_N = gguf.MODEL_TENSOR
NAMES = {
    "tok_embeddings": gguf.TENSOR_NAMES[_N.TOKEN_EMBD] + ".weight",
    "attention_norm": gguf.TENSOR_NAMES[_N.ATTN_NORM] + ".weight",
    "wq": gguf.TENSOR_NAMES[_N.ATTN_Q] + ".weight",
    "wk": gguf.TENSOR_NAMES[_N.ATTN_K] + ".weight",
    "wv": gguf.TENSOR_NAMES[_N.ATTN_V] + ".weight",
    "wo": gguf.TENSOR_NAMES[_N.ATTN_OUT] + ".weight",
    "ffn_norm": gguf.TENSOR_NAMES[_N.FFN_NORM] + ".weight",
    "w1": gguf.TENSOR_NAMES[_N.FFN_GATE] + ".weight",
    "w2": gguf.TENSOR_NAMES[_N.FFN_DOWN] + ".weight",
    "w3": gguf.TENSOR_NAMES[_N.FFN_UP] + ".weight",
    "norm": gguf.TENSOR_NAMES[_N.OUTPUT_NORM] + ".weight",
    "output": gguf.TENSOR_NAMES[_N.OUTPUT] + ".weight",  # absent when shared: llama.cpp
}                                                        # then uses token_embd

# --type value -> (type of matrices, general.file_type)
TYPES = {
    "f32": (T.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (T.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
FALLBACK = T.F16  # for rows that are not whole Q8_0 blocks

ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5


def tensor_name(name: str, layer: int | None) -> str:
    return NAMES[name].format(bid=layer) if layer is not None else NAMES[name]


def tensor_type(shape: tuple, kind: str) -> T:
    """The GGUF type of a tensor of `shape` in a file of --type `kind`."""
    if len(shape) == 1:
        return T.F32
    qtype = TYPES[kind][0]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else FALLBACK


def nbytes(shape: tuple, qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * (shape[-1] // block) * size


def add_metadata(writer: gguf.GGUFWriter, config: Config, kind: str, name: str) -> None:
    """The hyperparameters llama.cpp's "llama" architecture reads."""
    c = config
    writer.add_name(name)
    writer.add_file_type(TYPES[kind][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(c.seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_rope_dimension_count(c.head_size)
    writer.add_vocab_size(c.vocab_size)


def add_vocabulary(writer: gguf.GGUFWriter, tok) -> None:
    """A SentencePiece vocabulary (qllama.tokenizer: from tokenizer.model or
    tokenizer.bin): pieces, scores and types as llama.cpp's converters write them."""
    n = tok.vocab_size
    writer.add_tokenizer_model("llama")
    writer.add_token_list([tok.piece(i) for i in range(n)])
    writer.add_token_scores([float(tok.score(i)) for i in range(n)])
    # qllama's piece kinds are SentencePiece's type numbers, which GGUF uses too
    # (normal 1, unknown 2, control 3, user-defined 4, unused 5, byte 6).
    writer.add_token_types([int(gguf.TokenType(k)) for k in tok.kinds])
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_unk_token_id(tok.unk_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
