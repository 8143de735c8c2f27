"""Hugging Face Llama checkpoints: a folder with `config.json` and safetensors weights.

Described once, here, for the importer, the exporter and their tests:
- `parse_config`: config.json (transformers 4.x and 5.x styles) → a llama2.c `Config`,
  refusing, with one line naming the field, what llama2.c files cannot carry;
- `NAMES` / `hf_name`: tensor names ↔ llama2.c names (shapes are the same: (out, in));
- `weight_files`: which safetensors file holds each tensor (one file, or shards
  and `model.safetensors.index.json`);
- `to_meta` / `to_hf`: the rotary permutation of q_proj and k_proj rows;
- `config_json`: what the exporter writes (the safetensors layout itself is
  `formats.safetensors`).

Rotary embeddings: Meta's checkpoints (and llama2.c) rotate interleaved pairs
(x[2i], x[2i+1]) of each head; transformers rotates halves (x[i], x[i + hs/2]).
Its converter (convert_llama_weights_to_hf) permutes the rows of q_proj and k_proj
within each head so the halves convention computes the same thing; the inverse
permutation brings them back. q_proj has n_heads heads, k_proj n_kv_heads.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import FormatError
from ..io.inputs import load_json
from ..spec import RMS_NORM_EPS, ROPE_THETA  # what run.c computes with
from .llama2c import Config, validate

# llama2.c name -> Hugging Face name ("{}" is the layer).
NAMES = {
    "tok_embeddings": "model.embed_tokens.weight",
    "attention_norm": "model.layers.{}.input_layernorm.weight",
    "ffn_norm": "model.layers.{}.post_attention_layernorm.weight",
    "wq": "model.layers.{}.self_attn.q_proj.weight",
    "wk": "model.layers.{}.self_attn.k_proj.weight",
    "wv": "model.layers.{}.self_attn.v_proj.weight",
    "wo": "model.layers.{}.self_attn.o_proj.weight",
    "w1": "model.layers.{}.mlp.gate_proj.weight",
    "w2": "model.layers.{}.mlp.down_proj.weight",
    "w3": "model.layers.{}.mlp.up_proj.weight",
    "norm": "model.norm.weight",
    "output": "lm_head.weight",
}
PERMUTED = ("wq", "wk")  # rows permuted per head for the rotate-half convention

# Buffers some checkpoints store that the model recomputes (theta is checked in config.json).
DERIVED_SUFFIXES = (".rotary_emb.inv_freq",)

# safetensors dtype codes the importer reads (values are converted to float32 exactly).
DTYPES = ("F32", "F16", "BF16")

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def hf_name(name: str, layer: int | None) -> str:
    return NAMES[name].format(layer) if layer is not None else NAMES[name]


def meta_order_view(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face rows (heads * head_size, cols) as a (heads, head_size / 2, 2, cols)
    view in Meta/llama2.c's order: reshaped to (rows, cols), that is to_meta(w)."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).transpose(0, 2, 1, 3)


def to_meta(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face rows → Meta/llama2.c rows: (heads * head_size, cols), whole heads."""
    return meta_order_view(w, heads).reshape(w.shape)


def to_hf(w: np.ndarray, heads: int) -> np.ndarray:
    """Meta/llama2.c rows → Hugging Face rows (the inverse of to_meta)."""
    rows, cols = w.shape
    half = rows // heads // 2
    return w.reshape(heads, half, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _err(where: str, msg: str) -> FormatError:
    return FormatError(f"{where}: {msg}")


def _int(cfg: dict, key: str, where: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise _err(where, f"{key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise _err(where, f"{key} is {value!r}, must be a positive integer")
    return value


def _number(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(where, f"{key} is {value!r}, must be a number")
    return float(value)


def _rope_theta(cfg: dict, where: str) -> float:
    """Theta from 4.x's top-level `rope_theta` (and `rope_scaling`) or 5.x's
    `rope_parameters`; refuse any scaling."""
    params = cfg.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise _err(where, f"rope_parameters is {params!r}, must be an object")
        kind = params.get("rope_type", "default")
        if kind != "default":
            raise _err(where, f"rope_parameters.rope_type is {kind!r}: llama2.c files carry "
                              "only the default rotary embedding (no scaling)")
        extra = sorted(set(params) - {"rope_type", "rope_theta"})
        if extra:
            raise _err(where, f"rope_parameters.{extra[0]} is set: llama2.c files carry "
                              "no rotary scaling")
    if cfg.get("rope_scaling") is not None:
        raise _err(where, f"rope_scaling is {cfg['rope_scaling']!r}: llama2.c files carry no "
                          "rotary scaling")
    if params is not None and "rope_theta" in params:
        return _number(params["rope_theta"], "rope_parameters.rope_theta", where)
    return _number(cfg.get("rope_theta", ROPE_THETA), "rope_theta", where)


def parse_config(cfg, where: str = "config.json") -> Config:
    """A llama2.c version 1 Config from a config.json's contents (a dict).

    Raises FormatError, naming the field, for anything a llama2.c file cannot
    carry: another model_type or activation, rope theta other than 10000, rope
    scaling, rms_norm_eps other than 1e-5, biases, a head_dim other than
    hidden_size / num_attention_heads, quantized weights."""
    if not isinstance(cfg, dict):
        raise _err(where, "is not a JSON object")
    model_type = cfg.get("model_type")
    if model_type != "llama":
        raise _err(where, f"model_type is {model_type!r}; qllama imports Llama models "
                          "(model_type \"llama\")")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise _err(where, f"hidden_act is {act!r}; llama2.c computes SwiGLU with silu")
    if cfg.get("quantization_config") is not None:
        raise _err(where, "quantization_config is set: quantized checkpoints (GPTQ, AWQ, "
                          "bitsandbytes, ...) are not imported; use the fp32/fp16/bf16 weights")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key, False) is not False:
            raise _err(where, f"{key} is {cfg[key]!r}: llama2.c files have no biases")
    theta = _rope_theta(cfg, where)
    if theta != ROPE_THETA:
        raise _err(where, f"rope_theta is {theta:g}: llama2.c files carry only "
                          f"{ROPE_THETA:g} (run.c computes rotary embeddings with it)")
    if "rms_norm_eps" not in cfg:
        raise _err(where, f"rms_norm_eps is missing (transformers would use 1e-6): llama2.c "
                          f"files carry only {RMS_NORM_EPS:g}")
    eps = _number(cfg["rms_norm_eps"], "rms_norm_eps", where)
    if eps != RMS_NORM_EPS:
        raise _err(where, f"rms_norm_eps is {eps:g}: llama2.c files carry only {RMS_NORM_EPS:g} "
                          "(run.c's RMSNorm uses it)")
    dim = _int(cfg, "hidden_size", where)
    n_heads = _int(cfg, "num_attention_heads", where)
    n_kv = _int(cfg, "num_key_value_heads", where, default=n_heads)
    if "head_dim" in cfg and cfg["head_dim"] is not None:
        head_dim = _int(cfg, "head_dim", where)
        if head_dim * n_heads != dim:
            raise _err(where, f"head_dim is {head_dim}, not hidden_size / num_attention_heads "
                              f"= {dim / n_heads:g}: llama2.c files derive it from those")
    tied = cfg.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise _err(where, f"tie_word_embeddings is {tied!r}, must be true or false")
    config = Config(1, dim=dim, hidden_dim=_int(cfg, "intermediate_size", where),
                    n_layers=_int(cfg, "num_hidden_layers", where), n_heads=n_heads,
                    n_kv_heads=n_kv, vocab_size=_int(cfg, "vocab_size", where),
                    seq_len=_int(cfg, "max_position_embeddings", where),
                    shared_classifier=tied)
    validate(config, where)
    return config


def config_json(config: Config, dtype_name: str, bos: int = 1, eos: int = 2) -> dict:
    """A transformers 4.x-style config.json (5.x reads it too) for `config`."""
    c = config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_size,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": ROPE_THETA,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": c.shared_classifier,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype_name,
        "use_cache": True,
    }


def read_config(folder: str) -> Config:
    path = os.path.join(folder, "config.json")
    if not os.path.lexists(path):
        raise FormatError(f"{path}: missing (a Hugging Face model folder has config.json "
                          "and safetensors weights)")
    return parse_config(load_json(path, "a config.json"), path)


def weight_files(folder: str) -> dict | None:
    """{tensor name: file} from model.safetensors.index.json, or None for a single
    model.safetensors. Every shard the index names must be in the folder."""
    index = os.path.join(folder, INDEX)
    if not os.path.lexists(index):
        if os.path.lexists(os.path.join(folder, SINGLE)):
            return None
        other = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")
                 if os.path.lexists(os.path.join(folder, n))]
        hint = (f" (it has {other[0]}: PyTorch pickles are not read; the hub's safetensors "
                "weights are)") if other else ""
        raise FormatError(f"{folder}: no {SINGLE} or {INDEX}{hint}")
    data = load_json(index, "an index")
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise FormatError(f"{index}: has no weight_map")
    for name, file in wmap.items():
        if not isinstance(file, str) or os.path.basename(file) != file or file in ("", ".", ".."):
            shown = repr(file)[:60]
            raise FormatError(f"{index}: {name[:80]} is in {shown}, not a file in the folder")
    for file in sorted(set(wmap.values())):
        if not os.path.lexists(os.path.join(folder, file)):
            raise FormatError(f"{index}: names shard {file}, which is not in {folder}")
    return wmap
