#!/usr/bin/env python3
"""Convert a Gemma 3 (text) GGUF file into a Hugging Face model folder.

usage: gguf_to_hf.py GGUF OUT_DIR [--dtype bf16|f32] [--force]

Writes OUT_DIR/{config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json}.

What it does, tensor by tensor:
  * dequantize with the `gguf` package (Q4_K, Q5_0, Q6_K, Q8_0, F16, BF16, F32, ...);
  * reverse the GGUF shape (ggml lists dims fastest-first, so [640, 1024] is the
    HF [1024, 640] with the same memory layout: no transpose), and no q/k
    permutation (llama.cpp uses NeoX rope for Gemma, just like HF);
  * subtract 1 from every `*norm.weight` (llama.cpp's converter stores Gemma's
    RMSNorm weights as 1 + w; HF stores w and multiplies by (1 + w));
  * rename to HF names (`ffn_norm` is the *pre-feedforward* norm for Gemma);
  * round to bf16 (round to nearest even) and write one safetensors file.

Needs numpy, gguf, tokenizers and transformers (only for its GGUF tokenizer
converter; torch is NOT needed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

import numpy as np

try:
    from gguf import GGUFReader, GGUFValueType
    from gguf.quants import dequantize
except ImportError as e:  # pragma: no cover
    sys.exit(f"gguf_to_hf.py: needs the `gguf` package ({e}); run scripts/setup-python.sh")


# ---------------------------------------------------------------- names

_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    # Gemma: ffn_norm is FFN_PRE_NORM, i.e. pre_feedforward_layernorm (for Llama it
    # would be post_attention_layernorm -- not here).
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str:
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if not m or m.group(2) not in _PER_LAYER:
        raise ValueError(f"unknown GGUF tensor name {gguf_name!r}")
    return f"model.layers.{int(m.group(1))}.{_PER_LAYER[m.group(2)]}.{m.group(3)}"


# ---------------------------------------------------------------- metadata

def field_value(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    if f.types and f.types[0] == GGUFValueType.ARRAY:
        sub = f.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types and f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    v = f.parts[f.data[0]]
    if f.types and f.types[0] == GGUFValueType.BOOL:
        return bool(v[0])
    if f.types and f.types[0] in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        # Shortest decimal that round-trips in the stored precision: 1e-06, not 9.99999997e-07.
        return float(str(v[0]))
    return int(v[0])


def build_config(reader: GGUFReader, vocab_size: int, arch: str) -> dict:
    def md(key, default=None):
        return field_value(reader, f"{arch}.{key}", default)

    hidden = md("embedding_length")
    n_layers = md("block_count")
    n_heads = md("attention.head_count")
    n_kv = md("attention.head_count_kv", n_heads)
    head_dim = md("attention.key_length", hidden // n_heads)
    if head_dim != md("attention.value_length", head_dim):
        raise ValueError("key_length != value_length is not a Gemma 3 layout")
    # Not stored in GGUF; llama.cpp hard-codes these for Gemma 3.
    pattern = 6
    local_base = 10000.0
    # llama.cpp: 27B scales by 1/sqrt(n_embd/n_head), every other size by 1/sqrt(head_dim).
    query_pre_attn_scalar = hidden // n_heads if n_layers == 62 else head_dim
    layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]

    global_theta = md("rope.freq_base", 1_000_000.0)
    rope_scaling = None
    scaling_type = md("rope.scaling.type")
    scaling_factor = md("rope.scaling.factor")
    if scaling_type not in (None, "none") and scaling_factor not in (None, 1.0):
        rope_scaling = {"rope_type": scaling_type, "factor": scaling_factor}
    full_rope = {"rope_type": "default", "rope_theta": global_theta}
    if rope_scaling is not None:
        full_rope = dict(rope_scaling, rope_theta=global_theta)

    tok = lambda key, default: field_value(reader, f"tokenizer.ggml.{key}", default)  # noqa: E731
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "bos_token_id": tok("bos_token_id", 2),
        "eos_token_id": tok("eos_token_id", 1),
        "pad_token_id": tok("padding_token_id", 0),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": md("feed_forward_length"),
        "layer_types": layer_types,
        "max_position_embeddings": md("context_length", 32768),
        "num_attention_heads": n_heads,
        "num_hidden_layers": n_layers,
        "num_key_value_heads": n_kv,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "rms_norm_eps": md("attention.layer_norm_rms_epsilon", 1e-6),
        # Legacy (transformers 4.x) spelling of the two RoPEs ...
        "rope_theta": global_theta,
        "rope_local_base_freq": local_base,
        "rope_scaling": rope_scaling,
        # ... and the transformers 5.x spelling (per layer type); both say the same.
        "rope_parameters": {
            "full_attention": full_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": local_base},
        },
        "sliding_window": md("attention.sliding_window", 512),
        "_sliding_window_pattern": pattern,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_bidirectional_attention": False,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


# ---------------------------------------------------------------- tensors

def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def write_safetensors(path: str, tensors: dict[str, tuple[str, tuple[int, ...], np.ndarray]]) -> None:
    """Write {name: (dtype_tag, shape, raw little-endian array)} as one safetensors file."""
    names = sorted(tensors)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        dtype, shape, arr = tensors[name]
        n = arr.nbytes
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((-len(blob)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in names:
            arr = tensors[name][2]
            if arr.dtype.byteorder == ">":
                arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
            f.write(np.ascontiguousarray(arr).tobytes(order="C"))
    os.replace(tmp, path)


def convert_tensors(reader: GGUFReader, out_dtype: str) -> dict:
    out = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        x = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if name.endswith("norm.weight"):
            x = x - np.float32(1.0)
        if name == "lm_head.weight":
            # Gemma ties lm_head to the embedding; a separate output tensor would be a surprise.
            print(f"gguf_to_hf.py: note: GGUF has an untied {t.name}; writing it as lm_head.weight", file=sys.stderr)
        if out_dtype == "bf16":
            out[name] = ("BF16", shape, to_bf16_bits(x).reshape(shape))
        else:
            out[name] = ("F32", shape, x.astype("<f4"))
    return out


# ---------------------------------------------------------------- tokenizer

def write_tokenizer(reader: GGUFReader, arch: str, out_dir: str) -> None:
    # Import the converter module directly: transformers.integrations.gguf's reader
    # imports torch, this module does not.
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    tokenizer_dict = {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        v = field_value(reader, f"tokenizer.{key}")
        if v is not None:
            tokenizer_dict[name] = v
    if tokenizer_dict.get("tokenizer_type") != "llama":
        raise ValueError(f"expected a sentencepiece ('llama') vocabulary, got {tokenizer_dict.get('tokenizer_type')!r}")
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)

    tokens = tokenizer_dict["tokens"]

    def special(key, default):
        i = field_value(reader, f"tokenizer.ggml.{key}", default)
        return tokens[i]

    add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", True)
    add_eos = field_value(reader, "tokenizer.ggml.add_eos_token", False)
    bos, eos, unk, pad = (special("bos_token_id", 2), special("eos_token_id", 1),
                          special("unknown_token_id", 3), special("padding_token_id", 0))

    # Wrap in GemmaTokenizer so that transformers writes a tokenizer.json whose
    # post-processor adds BOS (add_bos_token) and a matching tokenizer_config.json.
    from transformers import GemmaTokenizer

    tok = GemmaTokenizer(
        tokenizer_object=backend,
        bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        add_bos_token=add_bos, add_eos_token=add_eos,
        model_max_length=field_value(reader, f"{arch}.context_length", 32768),
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        for fname in ("tokenizer.json", "tokenizer_config.json"):
            os.replace(os.path.join(tmp, fname), os.path.join(out_dir, fname))
    # Make the two flags explicit in tokenizer_config.json whatever the transformers version writes.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update({"add_bos_token": add_bos, "add_eos_token": add_eos, "bos_token": bos, "eos_token": eos,
                "unk_token": unk, "pad_token": pad})
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")

    # Sanity: BOS is prepended and the pieces round-trip.
    ids = tok("Hello world")["input_ids"]
    if add_bos and ids[:1] != [tokens.index(bos)]:
        raise RuntimeError(f"tokenizer does not prepend BOS: {ids}")


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16", help="stored weight dtype (default bf16)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing model.safetensors")
    args = ap.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "model.safetensors")
    if os.path.exists(st_path) and not args.force:
        sys.exit(f"gguf_to_hf.py: {st_path} exists (use --force to overwrite)")

    reader = GGUFReader(args.gguf)
    arch = field_value(reader, "general.architecture")
    if arch != "gemma3":
        sys.exit(f"gguf_to_hf.py: only Gemma 3 text GGUFs are supported (general.architecture = {arch!r})")

    tensors = convert_tensors(reader, args.dtype)
    vocab_size = tensors["model.embed_tokens.weight"][1][0]
    n_tok = len(field_value(reader, "tokenizer.ggml.tokens") or [])
    if n_tok and n_tok != vocab_size:
        print(f"gguf_to_hf.py: note: tokenizer has {n_tok} tokens, embedding has {vocab_size} rows", file=sys.stderr)

    config = build_config(reader, vocab_size, arch)
    if args.dtype == "f32":
        config["torch_dtype"] = "float32"

    # Shape checks against the config.
    H, I, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    want = {"q_proj": (nh * d, H), "k_proj": (nkv * d, H), "v_proj": (nkv * d, H), "o_proj": (H, nh * d),
            "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I), "q_norm": (d,), "k_norm": (d,)}
    for name, (_, shape, _) in tensors.items():
        leaf = name.split(".")[-2]
        if leaf in want and tuple(shape) != want[leaf]:
            raise ValueError(f"{name}: shape {shape}, expected {want[leaf]}")
    n_expected = 2 + 13 * config["num_hidden_layers"]
    if len([n for n in tensors if n != "lm_head.weight"]) != n_expected:
        raise ValueError(f"expected {n_expected} tensors, got {len(tensors)}")

    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                   "pad_token_id": config["pad_token_id"], "cache_implementation": "hybrid"}, f, indent=2)
        f.write("\n")
    write_tokenizer(reader, arch, args.out_dir)
    write_safetensors(st_path, tensors)  # last, so its presence means "complete"

    total = sum(a.nbytes for _, _, a in tensors.values())
    print(f"gguf_to_hf.py: wrote {len(tensors)} tensors ({total / 2**20:.1f} MiB, {args.dtype}) + config + tokenizer "
          f"to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
