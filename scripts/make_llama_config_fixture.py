#!/usr/bin/env python3
"""Write tests/fixtures/llama-config/expected.json: how transformers reads Llama-family configs,
for tests/config.rs and tests/rope.rs to check whittle's config layer and src/cpu/rope.rs against.

- "fixtures": for each of tests/fixtures/tiny-{llama,mistral,qwen2,qwen3}, what the loaded
  transformers model *does* (read off its modules, not its config object): sizes, head_dim,
  attention scaling, each layer's window, which projections have a bias, q/k norms, the MLP
  activation, the norms of a layer in order, tied head, and the rotary embedding's inv_freq,
  attention_scaling and cos/sin for positions 0..POSITIONS.
- "ops": torch's F.silu on a grid (with extremes) and LlamaRMSNorm on fixed rows, for
  tests/llama_ops.rs.
- "rope_cases": synthetic configs covering each RoPE spelling and default transformers resolves
  (legacy `rope_scaling`, `type`, top-level `rope_theta` / `original_max_position_embeddings`,
  llama3 and yarn with real models' parameters, yarn's mscale / truncate / null factor), each
  with the inv_freq and attention_scaling its rotary embedding computes.

usage: make_llama_config_fixture.py [FIXTURES_DIR]   (default tests/fixtures)
Deterministic: no randomness is involved (weights are read, not made).
"""
import importlib
import json
import os
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

FIXTURES = ("tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3")
POSITIONS = 40  # the fixtures' sequence length
CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def floats(t) -> list:
    # f32 -> Python float is exact and json writes the shortest repr that round-trips.
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def rotary(model_type: str, cfg):
    mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    return getattr(mod, f"{CLASSES[model_type]}RotaryEmbedding")(cfg)


def rope_record(rot, head_dim: int) -> dict:
    pos = torch.arange(POSITIONS)[None, :]
    cos, sin = rot(torch.zeros(1, dtype=torch.float32), pos)
    half = head_dim // 2
    return {
        "inv_freq": floats(rot.inv_freq),
        "attention_scaling": float(rot.attention_scaling),
        "cos": floats(cos[0, :, :half]),  # [POSITIONS, head_dim/2]
        "sin": floats(sin[0, :, :half]),
    }


def fixture_record(path: str) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    cfg = model.config
    layer = model.model.layers[0]
    attn = layer.self_attn
    windows = []
    for lyr in model.model.layers:
        # MistralAttention passes config.sliding_window to every layer; Qwen2/3 store their own.
        a = lyr.self_attn
        windows.append(getattr(a, "sliding_window", None) if hasattr(a, "sliding_window")
                       else getattr(cfg, "sliding_window", None))
    norms = [n for n, m in layer.named_children() if "RMSNorm" in type(m).__name__]
    return {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": layer.mlp.gate_proj.out_features,
        "num_hidden_layers": len(model.model.layers),
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": attn.head_dim,
        "vocab_size": model.model.embed_tokens.num_embeddings,
        "rms_norm_eps": layer.input_layernorm.variance_epsilon,
        "bos_token_id": cfg.bos_token_id,
        "max_position_embeddings": cfg.max_position_embeddings,
        "scaling": attn.scaling,
        "windows": windows,
        "bias": {p: getattr(attn, f"{p}_proj").bias is not None for p in ("q", "k", "v", "o")},
        "mlp_bias": layer.mlp.gate_proj.bias is not None,
        "qk_norm": hasattr(attn, "q_norm"),
        "act": type(layer.mlp.act_fn).__name__,
        "layer_norms": norms,  # in module order = the order the layer applies them
        "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        "embed_scale": float(getattr(model.model.embed_tokens, "embed_scale", 1.0)),
        "rope_type": cfg.rope_parameters["rope_type"],
        "rope": rope_record(model.model.rotary_emb, attn.head_dim),
    }


BASE = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "bos_token_id": 2}

# (name, config.json dict). Real models' parameters where a model is named.
ROPE_CASES = [
    ("legacy_rope_scaling_linear_top_level_theta",
     {"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.5}}),
    ("llama31_8b_legacy_spelling",  # Llama 3.1 8B's config.json (4.x spelling), head_dim 128
     {"model_type": "llama", "hidden_size": 512, "num_attention_heads": 4, "rope_theta": 500000.0,
      "max_position_embeddings": 131072,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}}),
    ("llama3_rope_parameters_default_original_max",
     {"model_type": "llama", "head_dim": 32, "max_position_embeddings": 64,
      "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 3.0,
                          "low_freq_factor": 1.5, "high_freq_factor": 3.5}}),
    ("qwen25_yarn_128k",  # Qwen2.5's documented yarn setting, head_dim 128
     {"model_type": "qwen2", "hidden_size": 512, "num_attention_heads": 4, "max_position_embeddings": 131072,
      "rope_theta": 1000000.0,
      "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}),
    ("yarn_mscale_no_truncate_betas",
     {"model_type": "qwen3", "head_dim": 64, "rope_parameters": {
         "rope_type": "yarn", "rope_theta": 50000.0, "factor": 6.0, "original_max_position_embeddings": 2048,
         "beta_fast": 16, "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False}}),
    ("yarn_null_factor_explicit_attention_factor",
     {"model_type": "mistral", "head_dim": 32, "max_position_embeddings": 4096, "rope_parameters": {
         "rope_type": "yarn", "rope_theta": 10000.0, "factor": None, "attention_factor": 1.3,
         "original_max_position_embeddings": 1024}}),
    ("yarn_top_level_original_max_wins",
     {"model_type": "llama", "head_dim": 32, "max_position_embeddings": 8192,
      "original_max_position_embeddings": 512, "rope_parameters": {
          "rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 2048}}),
    ("yarn_zero_betas_mean_defaults",
     {"model_type": "qwen2", "head_dim": 32, "rope_parameters": {
         "rope_type": "yarn", "rope_theta": 20000.0, "factor": 2.0, "original_max_position_embeddings": 256,
         "beta_fast": 0, "beta_slow": 0}}),
    ("mistral_top_level_theta_only",
     {"model_type": "mistral", "rope_theta": 1000000.0}),
    ("qwen3_type_key_linear_theta_in_object_wins",
     {"model_type": "qwen3", "head_dim": 16, "rope_theta": 1.0e5,
      "rope_parameters": {"type": "linear", "factor": 3.0, "rope_theta": 20000.0}}),
    ("no_rope_keys_default_theta",
     {"model_type": "qwen2"}),
    ("gemma3_270m_shape_default",  # Gemma 3 270M's global-layer shape: d=256, θ=1e6
     {"model_type": "llama", "head_dim": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    ("gemma3_270m_shape_local",
     {"model_type": "llama", "head_dim": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}),
]


def rope_case(name: str, overrides: dict) -> dict:
    cfg_dict = dict(BASE)
    cfg_dict.update(overrides)
    cfg = AutoConfig.for_model(**json.loads(json.dumps(cfg_dict)))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rot = rotary(cfg.model_type, cfg)
    rec = rope_record(rot, head_dim)
    return {"name": name, "config": cfg_dict, "head_dim": head_dim, "inv_freq": rec["inv_freq"],
            "attention_scaling": rec["attention_scaling"]}


def ops_record() -> dict:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    x = torch.cat([torch.linspace(-12, 12, 97), torch.tensor([-100.0, -88.5, -30.0, -1e-6, 0.0, 1e-6, 30.0, 100.0])])
    g = torch.Generator().manual_seed(16)
    rows = torch.randn(3, 64, generator=g) * torch.tensor([[0.01], [1.0], [40.0]])
    norm = LlamaRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.3 * torch.randn(64, generator=g))
        y = norm(rows)
    return {"silu_x": floats(x), "silu_y": floats(torch.nn.functional.silu(x)),
            "norm_x": floats(rows), "norm_w": floats(norm.weight), "norm_eps": 1e-6, "norm_y": floats(y)}


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    torch.set_num_threads(1)
    out = {
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "positions": POSITIONS,
        "fixtures": {name: fixture_record(os.path.join(root, name)) for name in FIXTURES},
        "ops": ops_record(),
        "rope_cases": [rope_case(n, c) for n, c in ROPE_CASES],
    }
    os.makedirs(os.path.join(root, "llama-config"), exist_ok=True)
    path = os.path.join(root, "llama-config", "expected.json")
    with open(path, "w") as f:
        # One fixture or case per line: small, and a regeneration diffs by record.
        f.write("{\n")
        items = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in out.items()
                 if k not in ("fixtures", "rope_cases")]
        items.append('"fixtures": {\n' + ",\n".join(
            f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in out["fixtures"].items()) + "\n}")
        items.append('"rope_cases": [\n' + ",\n".join(
            f"  {json.dumps(c, separators=(',', ':'))}" for c in out["rope_cases"]) + "\n]")
        f.write(",\n".join(items) + "\n}\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
