"""Small input files made here: Hugging Face folders (safetensors + numpy) in
transformers' own layout, and llama2.c tokenizer.bin files."""
import json
import math
import struct

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from qllama.formats import hf
from qllama.formats.llama2c import Config, layout, read_config

NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def _override(d: dict, changes: dict) -> dict:
    """`d` with `changes` applied: a value replaces a key's, None deletes the key."""
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def config_dict(c: Config, style: int = 5, dtype: str = "float32", **changes) -> dict:
    """config.json for `c` as transformers `style` (4 or 5) writes it; `changes`
    override keys (None deletes one)."""
    d = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
         "hidden_size": c.dim, "intermediate_size": c.hidden_dim,
         "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
         "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_size,
         "vocab_size": c.vocab_size, "max_position_embeddings": c.seq_len,
         "hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": False,
         "mlp_bias": False, "tie_word_embeddings": c.shared_classifier,
         "bos_token_id": 1, "eos_token_id": 2}
    if style == 4:
        d.update(rope_theta=10000.0, rope_scaling=None, torch_dtype=dtype,
                 transformers_version="4.46.0")
    else:
        d.update(rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, dtype=dtype,
                 transformers_version="5.24.0")
    return _override(d, changes)


def random_tensors(c: Config, seed: int = 0, dtype: str = "F32") -> dict:
    """{hf name: array} of a random model: N(0, 0.1) matrices, norms in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    out = {}
    for e in layout(c.as_version(1)):
        if len(e.shape) == 1:
            w = rng.uniform(0.5, 1.5, e.shape)
        else:
            w = rng.normal(0, 0.1, e.shape)
        out[hf.hf_name(e.name, e.layer)] = w.astype(np.float32).astype(NP_DTYPES[dtype])
    return out


def write_folder(folder, cfg: dict, tensors: dict, shards: int = 1) -> None:
    """config.json plus one model.safetensors, or `shards` files and the index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / hf.SINGLE), metadata={"format": "pt"})
        return
    weight_map = {}
    per = math.ceil(len(names) / shards)
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (folder / hf.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


SMALL = Config(1, dim=32, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2,
               vocab_size=48, seq_len=16, shared_classifier=False)


def small_folder(folder, style=5, dtype="F32", **changes) -> None:
    write_folder(folder, config_dict(SMALL, style, **changes), random_tensors(SMALL, 1, dtype))


def write_tokenizer_bin(path, vocab_size: int) -> None:
    """A llama2.c tokenizer.bin: unknown, BOS, EOS, 256 byte pieces, then lower-case
    letter pairs and triples as mergeable pieces."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    letters = "etaoinshrdlu"
    words = [" "] + [a + b for a in letters for b in letters] + [" " + a for a in letters]
    words += [a + b + c for a in letters for b in letters for c in letters]
    pieces += [w.encode() for w in words[:vocab_size - len(pieces)]]
    out = [struct.pack("<i", max(len(p) for p in pieces))]
    for i, p in enumerate(pieces):
        out.append(struct.pack("<fi", -float(i), len(p)) + p)
    path.write_bytes(b"".join(out))


def gguf_metadata(c: Config, tokens: list | None = None, **changes) -> dict:
    """{key: value} a llama GGUF file of shape `c` holds, as llama.cpp's converters write
    them; `changes` override keys ("." spelled "__"; None deletes one)."""
    d = {"general.architecture": "llama", "llama.context_length": c.seq_len,
         "llama.embedding_length": c.dim, "llama.block_count": c.n_layers,
         "llama.feed_forward_length": c.hidden_dim, "llama.attention.head_count": c.n_heads,
         "llama.attention.head_count_kv": c.n_kv_heads,
         "llama.rope.dimension_count": c.head_size, "llama.rope.freq_base": 10000.0,
         "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": c.vocab_size,
         "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    if tokens is not None:
        d["tokenizer.ggml.model"] = "llama"
        d["tokenizer.ggml.tokens"] = tokens
        d["tokenizer.ggml.scores"] = [-float(i) for i in range(len(tokens))]
        d["tokenizer.ggml.token_type"] = [1] * len(tokens)
    return _override(d, {k.replace("__", "."): v for k, v in changes.items()})


def write_gguf(path, c: Config, qtype: str = "F32", seed: int = 0, meta: dict | None = None,
               types: dict | None = None, drop=(), extra: dict | None = None) -> dict:
    """A llama GGUF file written by gguf.GGUFWriter: random weights (1-D tensors F32,
    matrices of `qtype` or `types[llama2.c name]`: quantized by gguf.quants where it can,
    else by qllama's quantizers (llama.cpp's bytes), else random blocks), metadata `meta`
    (default gguf_metadata(c)); tensors in `drop` left out, `extra` ({name: array})
    added. Returns {GGUF name: (type, array written)}."""
    import gguf

    from qllama.formats import gguf as names
    from qllama.quant.types import BY_GGUF

    rng = np.random.default_rng(seed)
    meta = gguf_metadata(c) if meta is None else meta
    w = gguf.GGUFWriter(str(path), meta["general.architecture"])
    V = gguf.GGUFValueType
    for key, value in meta.items():
        if key == "general.architecture":
            continue
        if key == "general.alignment":  # the writer pads to it
            w.add_custom_alignment(value)
        elif isinstance(value, list):
            sub = (V.STRING if isinstance(value[0], str) else V.FLOAT32
                   if isinstance(value[0], float) else V.INT32)
            w.add_key_value(key, value, V.ARRAY, sub)
        else:
            vtype = (V.BOOL if isinstance(value, bool) else
                     (V.UINT32 if value >= 0 else V.INT32) if isinstance(value, int) else
                     V.FLOAT64 if isinstance(value, np.float64) else
                     V.FLOAT32 if isinstance(value, float) else V.STRING)
            w.add_key_value(key, value, vtype)
    written = {}
    for e in layout(c.as_version(1)):
        name = names.tensor_name(e.name, e.layer)
        if name in drop:
            continue
        t = gguf.GGMLQuantizationType[(types or {}).get(e.name, qtype if len(e.shape) == 2
                                                        else "F32")]
        x = rng.normal(0, 0.1, e.shape).astype(np.float32)
        if t == t.F32:
            w.add_tensor(name, x)
        else:
            try:
                x = gguf.quants.quantize(x, t)
            except NotImplementedError:  # qllama's quantizers, else random blocks
                if t in BY_GGUF:
                    x = BY_GGUF[t].quantize(x)
                else:
                    block, size = gguf.GGML_QUANT_SIZES[t]
                    x = rng.integers(0, 256, (e.shape[0], e.shape[1] // block * size), np.uint8)
            w.add_tensor(name, x, raw_dtype=t)
        written[name] = (t, x)
    for name, x in (extra or {}).items():
        w.add_tensor(name, x)
        written[name] = (gguf.GGMLQuantizationType.F32, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def with_value(src, dst, name: str, layer, value: float, scale: bool = False):
    """A copy of llama2.c file `src` at `dst` whose tensor `name` (of `layer`) has `value`
    as its first float32 (with `scale`, a Q8_0 tensor's first scale). Returns dst."""
    e = next(e for e in layout(read_config(src)) if (e.name, e.layer) == (name, layer))
    at = e.scales_offset if scale else e.offset
    raw = bytearray(open(src, "rb").read())
    raw[at:at + 4] = np.float32(value).tobytes()
    with open(dst, "wb") as f:
        f.write(raw)
    return dst
