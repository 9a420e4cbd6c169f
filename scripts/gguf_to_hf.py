#!/usr/bin/env python3
"""Convert a GGUF file (Gemma 3 text, Llama or Qwen2 architecture) into a Hugging Face model folder.

usage: gguf_to_hf.py GGUF OUT_DIR [--dtype bf16|f32] [--force]

Writes OUT_DIR/{config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json}.

`general.architecture` picks the target class:
  gemma3 -> Gemma3ForCausalLM (model_type gemma3_text)
  llama  -> LlamaForCausalLM  (model_type llama; e.g. SmolLM2)
  qwen2  -> Qwen2ForCausalLM  (model_type qwen2; q/k/v biases)

What it does, tensor by tensor:
  * dequantize with the `gguf` package (Q4_K, Q5_0, Q6_K, Q8_0, F16, BF16, F32, ...);
  * reverse the GGUF shape (ggml lists dims fastest-first, so [640, 1024] is the
    HF [1024, 640] with the same memory layout: no transpose);
  * gemma3: no q/k permutation (llama.cpp uses NeoX rope for Gemma, just like HF);
    subtract 1 from every `*norm.weight` (llama.cpp's converter stores Gemma's
    RMSNorm weights as 1 + w; HF stores w and multiplies by (1 + w));
  * llama: undo the Q/K row permutation of llama.cpp's converter. convert_hf_to_gguf.py
    (LlamaModel.permute, undo_permute = True) reorders the rows of every head of q_proj
    and k_proj from HF's half-split rotary layout (pairs i, i + d/2) to ggml's interleaved
    one (pairs 2i, 2i + 1): W.reshape(n_head, 2, d/2, in).swapaxes(1, 2). We apply the
    inverse, W.reshape(n_head, d/2, 2, in).swapaxes(1, 2), with n_head = head_count for
    q and head_count_kv for k. Norm weights are plain (no "- 1");
  * qwen2: no permutation (Qwen2Model is not a LlamaModel subclass in the converter: it
    writes q/k as HF has them); plain norm weights; q/k/v biases kept;
  * rename to HF names (`ffn_norm` is the *pre-feedforward* norm for Gemma, the
    post-attention norm for llama / qwen2);
  * a GGUF `output.weight` becomes an untied `lm_head.weight` (tie_word_embeddings false);
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

# Llama / Qwen2: two norms per layer; ffn_norm is the norm before the MLP, which HF calls
# post_attention_layernorm. No post-attention / post-feedforward norms, no q/k norms.
_PER_LAYER_LLAMA = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")

SUPPORTED_ARCHS = ("gemma3", "llama", "qwen2")


def hf_name(gguf_name: str, arch: str = "gemma3") -> str:
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    per_layer = _PER_LAYER if arch == "gemma3" else _PER_LAYER_LLAMA
    m = _BLOCK_RE.match(gguf_name)
    if not m or m.group(2) not in per_layer:
        raise ValueError(f"unknown GGUF tensor name {gguf_name!r} for architecture {arch!r}")
    if m.group(3) == "bias" and not (arch == "qwen2" and m.group(2) in ("attn_q", "attn_k", "attn_v")):
        raise ValueError(f"unexpected bias tensor {gguf_name!r} for architecture {arch!r}")
    return f"model.layers.{int(m.group(1))}.{per_layer[m.group(2)]}.{m.group(3)}"


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


def _rope_parameters(md, theta: float, max_pos: int) -> dict:
    """rope_parameters from the GGUF rope keys (llama / qwen2). llama.cpp stores linear and yarn
    scaling as keys; llama3-style scaling only as a `rope_freqs.weight` tensor (refused in main)."""
    kind = md("rope.scaling.type")
    factor = md("rope.scaling.factor")
    if kind in (None, "none") or factor in (None, 1.0):
        return {"rope_type": "default", "rope_theta": theta}
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    if kind == "yarn":
        out = {"rope_type": "yarn", "factor": factor, "rope_theta": theta,
               "original_max_position_embeddings": md("rope.scaling.original_context_length", max_pos)}
        for key, name in (("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow", "beta_slow")):
            v = md(key)
            if v is not None:
                out[name] = v
        return out
    raise ValueError(f"unsupported rope scaling type {kind!r} in the GGUF (supported: none, linear, yarn)")


def build_config_llama(reader: GGUFReader, vocab_size: int, arch: str, tied: bool) -> dict:
    """config.json for LlamaForCausalLM (arch llama) or Qwen2ForCausalLM (arch qwen2)."""
    def md(key, default=None):
        return field_value(reader, f"{arch}.{key}", default)

    hidden = md("embedding_length")
    n_layers = md("block_count")
    n_heads = md("attention.head_count")
    n_kv = md("attention.head_count_kv", n_heads)
    head_dim = md("attention.key_length", hidden // n_heads)
    if head_dim != md("attention.value_length", head_dim):
        raise ValueError("key_length != value_length is not a Llama / Qwen2 layout")
    rope_dim = md("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise ValueError(f"partial rotary embeddings (rope.dimension_count {rope_dim} != head_dim {head_dim}) "
                         "are not supported")
    max_pos = md("context_length", 4096)
    theta = md("rope.freq_base", 10000.0)
    rope = _rope_parameters(md, theta, max_pos)

    tok = lambda key, default: field_value(reader, f"tokenizer.ggml.{key}", default)  # noqa: E731
    cfg = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "attention_dropout": 0.0,
        "bos_token_id": tok("bos_token_id", None),
        "eos_token_id": tok("eos_token_id", None),
        "pad_token_id": tok("padding_token_id", None),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": md("feed_forward_length"),
        "max_position_embeddings": max_pos,
        "num_attention_heads": n_heads,
        "num_hidden_layers": n_layers,
        "num_key_value_heads": n_kv,
        "rms_norm_eps": md("attention.layer_norm_rms_epsilon", 1e-6),
        # Legacy (transformers 4.x) spelling ...
        "rope_theta": theta,
        "rope_scaling": None if rope["rope_type"] == "default" else {k: v for k, v in rope.items() if k != "rope_theta"},
        # ... and the transformers 5.x spelling; both say the same.
        "rope_parameters": rope,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if arch == "llama":
        cfg.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    else:
        # Qwen2 always has q/k/v biases (no config switch). llama.cpp's qwen2 graph windows no
        # layer, so neither does this config.
        cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": n_layers,
                    "layer_types": ["full_attention"] * n_layers})
    return dict(sorted(cfg.items()))


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


def unpermute_qk(x: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py) on a q_proj / k_proj
    weight [n_head * d, in] or bias [n_head * d]: ggml's interleaved rotary pairs (2i, 2i + 1)
    back to HF's half-split pairs (i, i + d/2), head by head."""
    rows = x.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot unpermute {rows} rows into {n_head} heads")
    return (x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:])
            .swapaxes(1, 2)
            .reshape(x.shape))


def permute_qk(x: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute itself (HF -> GGUF layout); used to test unpermute_qk."""
    rows = x.shape[0]
    return (x.reshape(n_head, 2, rows // n_head // 2, *x.shape[1:])
            .swapaxes(1, 2)
            .reshape(x.shape))


def convert_tensors(reader: GGUFReader, out_dtype: str, arch: str = "gemma3") -> dict:
    out = {}
    if arch == "llama":
        n_head = field_value(reader, "llama.attention.head_count")
        n_kv = field_value(reader, "llama.attention.head_count_kv", n_head)
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise ValueError("the GGUF has rope_freqs.weight (llama3-style rope scaling as per-frequency factors); "
                             "recovering rope_parameters from it is not supported")
        name = hf_name(t.name, arch)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        x = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if arch == "gemma3" and name.endswith("norm.weight"):
            x = x - np.float32(1.0)
        if arch == "llama" and ".self_attn.q_proj." in name:
            x = unpermute_qk(x, n_head)
        if arch == "llama" and ".self_attn.k_proj." in name:
            x = unpermute_qk(x, n_kv)
        if name == "lm_head.weight" and arch == "gemma3":
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
    if arch != "gemma3":
        return write_bpe_tokenizer(reader, arch, out_dir, tokenizer_dict)
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


def write_bpe_tokenizer(reader: GGUFReader, arch: str, out_dir: str, tokenizer_dict: dict) -> None:
    """Byte-level BPE ('gpt2' GGUF vocabulary: SmolLM2, Qwen2.5) via transformers' GGUF converter."""
    from tokenizers import pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    if tokenizer_dict.get("tokenizer_type") != "gpt2":
        raise ValueError(f"expected a byte-level BPE ('gpt2') vocabulary, got {tokenizer_dict.get('tokenizer_type')!r}")
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    pre = tokenizer_dict.get("pre_tokenizer_type")
    if pre == "smollm":
        # transformers' converter has no split for llama.cpp's "smollm" pre-tokenizer and falls back to
        # GPT-2's; SmolLM's own tokenizer.json splits every digit first (Digits(individual_digits)),
        # and llama.cpp's smollm regexes do the same ("\p{N}", then GPT-2's).
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif pre not in ("qwen2",):
        print(f"gguf_to_hf.py: note: pre-tokenizer {pre!r} not checked by this script", file=sys.stderr)

    tokens = tokenizer_dict["tokens"]

    def special(key):
        i = field_value(reader, f"tokenizer.ggml.{key}")
        return None if i is None else tokens[i]

    add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", False)
    add_eos = field_value(reader, "tokenizer.ggml.add_eos_token", False)
    bos, eos, unk, pad = (special("bos_token_id"), special("eos_token_id"), special("unknown_token_id"),
                          special("padding_token_id"))
    if add_bos or add_eos:
        single = " ".join(([bos] if add_bos else []) + ["$A"] + ([eos] if add_eos else []))
        backend.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(t, tokens.index(t)) for t in {bos if add_bos else None,
                                                                        eos if add_eos else None} - {None}])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        model_max_length=field_value(reader, f"{arch}.context_length", 32768),
    )
    chat = field_value(reader, "tokenizer.chat_template")
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        for fname in ("tokenizer.json", "tokenizer_config.json"):
            os.replace(os.path.join(tmp, fname), os.path.join(out_dir, fname))
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update({"add_bos_token": add_bos, "add_eos_token": add_eos, "bos_token": bos, "eos_token": eos,
                "unk_token": unk, "pad_token": pad, "tokenizer_class": "PreTrainedTokenizerFast"})
    if chat:
        cfg["chat_template"] = chat
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    if len(backend.get_vocab()) > len(tokens):
        raise RuntimeError(f"tokenizer has {len(backend.get_vocab())} entries, the GGUF lists {len(tokens)}")


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
    if arch not in SUPPORTED_ARCHS:
        sys.exit(f"gguf_to_hf.py: supported GGUF architectures: {', '.join(SUPPORTED_ARCHS)} "
                 f"(general.architecture = {arch!r})")

    tensors = convert_tensors(reader, args.dtype, arch)
    vocab_size = tensors["model.embed_tokens.weight"][1][0]
    n_tok = len(field_value(reader, "tokenizer.ggml.tokens") or [])
    if n_tok and n_tok != vocab_size:
        print(f"gguf_to_hf.py: note: tokenizer has {n_tok} tokens, embedding has {vocab_size} rows", file=sys.stderr)

    tied = "lm_head.weight" not in tensors
    if arch == "gemma3":
        config = build_config(reader, vocab_size, arch)
    else:
        config = build_config_llama(reader, vocab_size, arch, tied)
    if args.dtype == "f32":
        config["torch_dtype"] = "float32"

    # Shape checks against the config.
    H, I, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    want = {"q_proj": (nh * d, H), "k_proj": (nkv * d, H), "v_proj": (nkv * d, H), "o_proj": (H, nh * d),
            "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I), "q_norm": (d,), "k_norm": (d,)}
    want_bias = {"q_proj": (nh * d,), "k_proj": (nkv * d,), "v_proj": (nkv * d,)}
    for name, (_, shape, _) in tensors.items():
        leaf = name.split(".")[-2]
        w = want_bias if name.endswith(".bias") else want
        if leaf in w and tuple(shape) != w[leaf]:
            raise ValueError(f"{name}: shape {shape}, expected {w[leaf]}")
    per_layer = {"gemma3": 13, "llama": 9, "qwen2": 12}[arch]
    n_expected = 2 + per_layer * config["num_hidden_layers"]
    if len([n for n in tensors if n != "lm_head.weight"]) != n_expected:
        raise ValueError(f"expected {n_expected} tensors, got {len(tensors)}")
    if arch == "qwen2":
        for i in range(config["num_hidden_layers"]):
            for p in ("q_proj", "k_proj", "v_proj"):
                if f"model.layers.{i}.self_attn.{p}.bias" not in tensors:
                    raise ValueError(f"qwen2 GGUF without model.layers.{i}.self_attn.{p}.bias")

    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    gen_cfg = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
               "pad_token_id": config["pad_token_id"]}
    if arch == "gemma3":
        gen_cfg["cache_implementation"] = "hybrid"
    with open(os.path.join(args.out_dir, "generation_config.json"), "w") as f:
        json.dump(gen_cfg, f, indent=2)
        f.write("\n")
    write_tokenizer(reader, arch, args.out_dir)
    write_safetensors(st_path, tensors)  # last, so its presence means "complete"

    total = sum(a.nbytes for _, _, a in tensors.values())
    print(f"gguf_to_hf.py: wrote {len(tensors)} tensors ({total / 2**20:.1f} MiB, {args.dtype}) + config + tokenizer "
          f"to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
