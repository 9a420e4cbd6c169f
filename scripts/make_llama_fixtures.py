#!/usr/bin/env python3
"""Build the Llama-family test fixtures: tiny random-init Llama / Mistral / Qwen2 / Qwen3 models
made by transformers, with reference activations computed by transformers fp32 eager.

usage: make_llama_fixtures.py [OUTDIR]    (default: tests/fixtures)

A sibling of make_fixtures.py (the Gemma fixtures): it reuses that script's tokenizer, texts,
noise, save, capture and reference helpers, so the files have the same layout and the same
tokenizer. It touches only its own four folders; the Gemma fixtures are not rewritten.

Writes, under OUTDIR (eval-text.txt must already be there: make_fixtures.py writes it):
  tiny-llama/     LlamaForCausalLM,   BF16, untied head, rope llama3 (factor 4, original 32)
  tiny-mistral/   MistralForCausalLM, F32,  tied head,   sliding window 16 < 40 positions
  tiny-qwen2/     Qwen2ForCausalLM,   F32,  tied head,   q/k/v biases, rope yarn (factor 4, original 64)
  tiny-qwen3/     Qwen3ForCausalLM,   BF16, untied head, q/k norms, head_dim 32 != hidden/heads
each with config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
reference.safetensors and eval-reference.json (see tests/fixtures/README.md).

Each model draws its noise and its input ids from its own generator (seeded from the
make_fixtures.py seed and the folder name), so adding or changing one fixture leaves the others'
bytes alone. The script also checks that each specific feature bites: the logits move by a
clear margin when the sliding window, the rope scaling, the biases or the q/k norms are
ablated (printed as "ablation ... max |d logits|").

Deterministic: rerunning with the same torch / transformers / tokenizers versions reproduces
every file byte for byte.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys

import torch

import hfref
import make_fixtures as mf

H, I, LAYERS, HEADS, KV_HEADS = 64, 96, 4, 4, 2
WINDOW = 16  # tiny-mistral; < mf.SEQ (40) so the window bites


def _common(**kw) -> dict:
    d = dict(
        vocab_size=mf.VOCAB, hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-6,
        max_position_embeddings=256, hidden_act="silu",
        pad_token_id=mf.PAD, eos_token_id=mf.EOS, bos_token_id=mf.BOS,
    )
    d.update(kw)
    return d


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(**_common(
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32},
    ))


def mistral_config():
    from transformers import MistralConfig

    return MistralConfig(**_common(
        tie_word_embeddings=True, sliding_window=WINDOW,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ))


def qwen2_config():
    from transformers import Qwen2Config

    return Qwen2Config(**_common(
        tie_word_embeddings=True, use_sliding_window=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 64},
    ))


def qwen3_config():
    from transformers import Qwen3Config

    return Qwen3Config(**_common(
        head_dim=32, tie_word_embeddings=False, attention_bias=False, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    ))


# folder, config factory, bf16 weights (else f32)
SPECS = [
    ("tiny-llama", llama_config, True),
    ("tiny-mistral", mistral_config, False),
    ("tiny-qwen2", qwen2_config, False),
    ("tiny-qwen3", qwen3_config, True),
]


def generator_for(name: str) -> torch.Generator:
    seed = mf.SEED + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- ablations

def _rebuilt(model, cfg):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    m.load_state_dict(model.state_dict())
    return m.eval()


def ablations(name: str, model) -> list[tuple[str, object]]:
    """(label, model with one feature removed) for the features this fixture must exercise."""
    out = []
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and name == "tiny-mistral":
        c = copy.deepcopy(cfg)
        c.sliding_window = None
        out.append(("no sliding window", _rebuilt(model, c)))
    if cfg.rope_parameters.get("rope_type", "default") != "default":
        c = copy.deepcopy(cfg)
        c.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}
        out.append((f"default rope instead of {cfg.rope_parameters['rope_type']}", _rebuilt(model, c)))
    sd = model.state_dict()
    if any(k.endswith("_proj.bias") for k in sd):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in m.named_parameters():
                if k.endswith("_proj.bias"):
                    p.zero_()
        out.append(("q/k/v biases zeroed", m))
    if any(".q_norm." in k for k in sd):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in m.named_parameters():
                if ".q_norm." in k or ".k_norm." in k:
                    p.fill_(1.0)
        out.append(("q/k norm weights set to 1", m))
    if not cfg.tie_word_embeddings:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.lm_head.weight.copy_(m.model.embed_tokens.weight)
        out.append(("lm_head replaced by the embedding (tied)", m))
    return out


def check_ablations(name: str, model, ids: torch.Tensor, logits: torch.Tensor) -> None:
    for label, m in ablations(name, model):
        with torch.no_grad():
            other = m(input_ids=ids, use_cache=False).logits
        d = float((other - logits).abs().max())
        rel = d / float(logits.abs().max())
        print(f"  {name}: ablation {label}: max |d logits| {d:.3f} ({100 * rel:.1f}% of max |logit|)")
        if rel < 0.05:
            raise SystemExit(f"{name}: {label} barely changes the logits; the fixture does not exercise it")


# ----------------------------------------------------------------------------- main

def build_one(outdir: str, tok, name: str, cfg, bf16: bool) -> None:
    gen = generator_for(name)
    d = mf.fresh_dir(outdir, name)
    model = mf.build_model(cfg, gen, bf16)
    mf.save_model(model, d, bf16)
    mf.save_tokenizer(tok, d)
    mf.check_tokenizer(d)
    loaded = mf.reload_and_check(model, d, bf16)
    ids = mf.make_input_ids(gen)
    acts = mf.capture(loaded, ids)
    mf.report_stats(name, loaded.config, acts)
    check_ablations(name, loaded, ids, acts["logits"])
    mf.save_reference(os.path.join(d, "reference.safetensors"), ids, acts, loaded.config)
    mf.write_json(os.path.join(d, "eval-reference.json"), mf.run_hf_eval(outdir, name))


def main() -> int:
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    if len(sys.argv) > 2 or outdir in ("-h", "--help"):
        print(__doc__)
        return 0 if outdir in ("-h", "--help") else 2
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # reproducible reductions
    torch.use_deterministic_algorithms(True)
    if not os.path.exists(os.path.join(outdir, "eval-text.txt")):
        sys.exit(f"{outdir}/eval-text.txt missing: run scripts/make_fixtures.py {outdir} first")
    print(f"make_llama_fixtures.py: torch {torch.__version__}, transformers "
          f"{hfref.versions()['transformers']} -> {outdir}")
    tok = mf.build_tokenizer()
    for name, make_cfg, bf16 in SPECS:
        build_one(outdir, tok, name, make_cfg(), bf16)

    print("make_llama_fixtures.py: files")
    for name, _, _ in SPECS:
        root = os.path.join(outdir, name)
        total = 0
        for fn in sorted(os.listdir(root)):
            p = os.path.join(root, fn)
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:12]
            total += os.path.getsize(p)
            print(f"  {os.path.join(name, fn):45s} {os.path.getsize(p):9d} B  sha256 {digest}")
        names = mf.saved_tensor_names(os.path.join(root, "model.safetensors"))
        dtypes = sorted({v[0] for v in names.values()})
        ev = json.load(open(os.path.join(root, "eval-reference.json")))
        print(f"  {name}/ total {total} B; {len(names)} tensors, dtypes {dtypes}, lm_head.weight "
              f"{'present (untied)' if 'lm_head.weight' in names else 'absent (tied)'}; "
              f"eval ppl {ev['ppl']:.4f} over {ev['tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
