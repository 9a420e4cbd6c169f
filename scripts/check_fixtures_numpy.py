#!/usr/bin/env python3
"""Independent check of the fixture references: a float64 numpy forward pass written from the
Gemma-2/3 spec (not from transformers' code), compared with reference.safetensors.

usage: check_fixtures_numpy.py [--ablate WHAT] [FIXTURE_DIR ...]
       (default dirs: tests/fixtures/tiny-gemma2 tests/fixtures/tiny-gemma3)

Prints the max relative error (max|diff| / max|ref|) per tensor and exits 1 if any is above
1e-4. --ablate window|rope_scaling|norm_offset|softcap drops one feature of the spec, to show
that the fixtures exercise it (the error must then jump far above the tolerance).
Needs numpy, safetensors and torch (to read BF16).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

TOL = 1e-4


def load(path: str) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {k: (v.double().numpy() if v.is_floating_point() else v.numpy()) for k, v in load_file(path).items()}


def forward(d: str, ablate: str | None) -> dict[str, float]:
    with open(f"{d}/config.json") as f:
        cfg = json.load(f)
    W = load(f"{d}/model.safetensors")
    R = load(f"{d}/reference.safetensors")
    ids = R["input_ids"].astype(np.int64)
    B, T = ids.shape
    H, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    gemma3 = cfg["model_type"] == "gemma3_text"
    norm_offset = 0.0 if ablate == "norm_offset" else 1.0

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (norm_offset + w)

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def inv_freq(layer_type):
        rp = cfg["rope_parameters"]
        p = rp[layer_type] if layer_type in rp else rp  # gemma3: per layer type; gemma2: flat
        inv = 1.0 / (p["rope_theta"] ** (np.arange(0, hd, 2) / hd))
        if p.get("rope_type") == "linear" and ablate != "rope_scaling":
            inv = inv / p["factor"]
        return inv

    def rotate_half(z):
        return np.concatenate([-z[..., hd // 2:], z[..., :hd // 2]], -1)

    err: dict[str, float] = {}

    def compare(name, x):
        err[name] = float(np.abs(x - R[name]).max() / np.abs(R[name]).max())

    pos = np.arange(T)
    E = W["model.embed_tokens.weight"]
    h = E[ids] * np.sqrt(H)
    compare("embeds", h)
    scale = cfg["query_pre_attn_scalar"] ** -0.5
    cap = None if ablate == "softcap" else cfg.get("attn_logit_softcapping")
    for l, layer_type in enumerate(cfg["layer_types"]):
        p = f"model.layers.{l}."
        x = rms(h, W[p + "input_layernorm.weight"])
        q = (x @ W[p + "self_attn.q_proj.weight"].T).reshape(B, T, nh, hd)
        k = (x @ W[p + "self_attn.k_proj.weight"].T).reshape(B, T, nkv, hd)
        v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(B, T, nkv, hd)
        if gemma3:
            q = rms(q, W[p + "self_attn.q_norm.weight"])
            k = rms(k, W[p + "self_attn.k_norm.weight"])
        freqs = np.outer(pos, inv_freq(layer_type))
        emb = np.concatenate([freqs, freqs], -1)
        cos, sin = np.cos(emb)[None, :, None], np.sin(emb)[None, :, None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, nh // nkv, axis=2)  # query head j uses kv head j // (nh/nkv)
        v = np.repeat(v, nh // nkv, axis=2)
        s = np.einsum("bihd,bjhd->bhij", q, k) * scale
        if cap:
            s = np.tanh(s / cap) * cap
        i, j = pos[:, None], pos[None, :]
        visible = j <= i
        if layer_type == "sliding_attention" and ablate != "window":
            visible &= (i - j) < cfg["sliding_window"]
        s = np.where(visible, s, -np.inf)
        prob = np.exp(s - s.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        o = np.einsum("bhij,bjhd->bihd", prob, v).reshape(B, T, nh * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = h + rms(o, W[p + "post_attention_layernorm.weight"])
        x = rms(h, W[p + "pre_feedforward_layernorm.weight"])
        act = gelu_tanh(x @ W[p + "mlp.gate_proj.weight"].T) * (x @ W[p + "mlp.up_proj.weight"].T)
        compare(f"mlp_act.{l}", act)
        h = h + rms(act @ W[p + "mlp.down_proj.weight"].T, W[p + "post_feedforward_layernorm.weight"])
        compare(f"layer.{l}", h)
    h = rms(h, W["model.norm.weight"])
    compare("final_norm", h)
    logits = h @ E.T
    final_cap = None if ablate == "softcap" else cfg.get("final_logit_softcapping")
    if final_cap:
        logits = np.tanh(logits / final_cap) * final_cap
    compare("logits", logits)
    return err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", default=["tests/fixtures/tiny-gemma2", "tests/fixtures/tiny-gemma3"])
    ap.add_argument("--ablate", choices=["window", "rope_scaling", "norm_offset", "softcap"])
    args = ap.parse_args()
    ok = True
    for d in args.dirs:
        err = forward(d, args.ablate)
        worst = max(err.values())
        ok &= worst <= TOL
        print(f"{d}: max rel err {worst:.2e} ({'ok' if worst <= TOL else 'ABOVE ' + str(TOL)})")
        print("   " + "  ".join(f"{k} {v:.1e}" for k, v in err.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
