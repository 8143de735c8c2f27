"""GGUF, llama.cpp's format, as qllama writes it for a llama2.c model: architecture
"llama", the tensor names, types and metadata of llama.cpp's own converters.

Names, keys and block sizes come from the `gguf` package (maintained with
llama.cpp), not from copies here. q/k rows keep Meta's interleaved order, as in
llama.cpp's llama2.c converter (examples/convert-llama2c-to-ggml): llama.cpp's
"llama" RoPE rotates adjacent pairs, as llama2.c does.

Types: 1-D tensors (the norms) stay F32. f32, f16 and q8_0 files (llama.cpp's
convert_hf_to_gguf) make every matrix that type; q4_0, q4_k_m, q5_k_m and q6_k
(llama-quantize) mix types as llama.cpp's llama_tensor_get_type does for "llama"
(`planned_type`). A matrix whose rows are not whole blocks of its type falls back:
to F16 where the converters do (stories260K's w2: rows of hidden_dim 172); a k-quant
to Q8_0 where llama-quantize's Q5_0/Q5_1 (types qllama does not write) would be
used, F16 when rows are not whole blocks of 32 either.
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

# --type value -> (the matrices' default type, general.file_type)
_F = gguf.LlamaFileType
TYPES = {
    "f32": (T.F32, _F.ALL_F32),
    "f16": (T.F16, _F.MOSTLY_F16),
    "q8_0": (T.Q8_0, _F.MOSTLY_Q8_0),
    "q4_0": (T.Q4_0, _F.MOSTLY_Q4_0),
    "q4_k_m": (T.Q4_K, _F.MOSTLY_Q4_K_M),
    "q5_k_m": (T.Q5_K, _F.MOSTLY_Q5_K_M),
    "q6_k": (T.Q6_K, _F.MOSTLY_Q6_K),
}
# what a k-quant falls back to when rows are not whole blocks of 256 (llama.cpp: Q5_0,
# Q5_1, Q8_0; qllama writes Q8_0 for the first two: more bits, the same block of 32)
_K_FALLBACK = {T.Q4_K: T.Q8_0, T.Q5_K: T.Q8_0, T.Q6_K: T.Q8_0}


def tensor_name(name: str, layer: int | None) -> str:
    return NAMES[name].format(bid=layer) if layer is not None else NAMES[name]


def _whole(cols: int, qtype: T) -> bool:
    return cols % gguf.GGML_QUANT_SIZES[qtype][0] == 0


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's layers that get more bits in *_M files: the first and last eighth,
    and every third between."""
    return (layer < n_layers // 8 or layer >= 7 * n_layers // 8
            or (layer - n_layers // 8) % 3 == 2)


def planned_type(name: str, layer: int | None, cols: int, kind: str, n_layers: int,
                 has_output: bool) -> T:
    """The type llama.cpp gives llama2.c tensor `name` (of `layer`; rows of `cols`) in a
    file of --type `kind`, before any fall-back for rows that are not whole blocks.
    The output matrix (token_embd when the classifier is shared) gets Q6_K in every
    quantized file but Q8_0 (Q8_0 also where its rows are not whole blocks); in
    q4_k_m / q5_k_m, attn_v and ffn_down get Q6_K on use_more_bits layers."""
    qtype = TYPES[kind][0]
    if qtype in (T.F32, T.F16):
        return qtype
    if name == "output" or (name == "tok_embeddings" and not has_output):
        if not _whole(cols, qtype):
            return T.Q8_0
        return qtype if qtype == T.Q8_0 else T.Q6_K
    if (name in ("wv", "w2") and kind in ("q4_k_m", "q5_k_m")
            and use_more_bits(layer, n_layers)):
        return T.Q6_K
    return qtype


def tensor_type(planned: T, shape: tuple) -> T:
    """The type a tensor of `shape` is written in: F32 for 1-D ones, else `planned` if
    its rows are whole blocks of it, else the fall-back (module doc)."""
    if len(shape) == 1:
        return T.F32
    cols = shape[-1]
    if _whole(cols, planned):
        return planned
    fallback = _K_FALLBACK.get(planned, T.F16)
    return fallback if _whole(cols, fallback) else T.F16


def nbytes(shape: tuple, qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * (shape[-1] // block) * size


def add_metadata(writer: gguf.GGUFWriter, config: Config, kind: str, name: str,
                 spec=None) -> None:
    """The hyperparameters llama.cpp's "llama" architecture reads: RoPE base and norm
    epsilon from `spec` (a GGUF input's ModelSpec), else llama2.c's."""
    c = config
    spec = spec or config.spec
    writer.add_name(name)
    writer.add_file_type(TYPES[kind][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(c.seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_layer_norm_rms_eps(spec.norm_eps)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_rope_dimension_count(c.head_size)
    writer.add_vocab_size(c.vocab_size)


def add_vocabulary(writer: gguf.GGUFWriter, tok, add_bos: bool = True, add_eos: bool = False,
                   chat_template: str | None = None) -> None:
    """A SentencePiece vocabulary (qllama.tokenizer: from tokenizer.model, tokenizer.bin
    or a GGUF file): pieces, scores and types as llama.cpp's converters write them."""
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
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if not tok.add_dummy_prefix:  # llama.cpp's default is true; Llama 2's files leave it out
        writer.add_add_space_prefix(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
