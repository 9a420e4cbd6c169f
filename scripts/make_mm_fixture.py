#!/usr/bin/env python3
"""Make tests/fixtures/tiny-gemma3-mm: a multimodal Gemma-3 checkpoint (model_type "gemma3",
Gemma3ForConditionalGeneration) whose language model is exactly tests/fixtures/tiny-gemma3.

Gemma 3 4B/12B/27B ship in this layout: the text model's config nested in `text_config`, its
tensors under `language_model.model.*`, plus a SigLIP vision tower and a projector. whittle
prunes the language model and copies the rest. Reusing tiny-gemma3's weights makes the
multimodal fixture's text logits comparable with tiny-gemma3's references; this script checks in
transformers that they are (text-only input through Gemma3ForConditionalGeneration ==
Gemma3ForCausalLM with the same weights), and writes eval-reference.json through the
multimodal class itself (scripts/hf_eval.py loads it with AutoModelForCausalLM).

The vision tower is tiny and random (bf16). `image_token_index` is 3 (`<unk>`), which no
reference input contains (they draw ids from [4, 512) after BOS), so text-only inputs never hit
the image path.

Also writes tests/fixtures/gemma3-hub-config/: config.json spelled as the hub's Gemma 3 4B
checkpoint spells it (a sparse `text_config`: transformers fills the rest from
Gemma3TextConfig's defaults) and expected.json, the text model's fields as transformers parses
them (tests/config.rs checks whittle's parse against it).

usage: make_mm_fixture.py [FIXTURES_DIR]     (default tests/fixtures; tiny-gemma3 must exist)
"""
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (tokenizer, eval and JSON helpers)

NAME = "tiny-gemma3-mm"
VISION_STD = 0.2


# Gemma 3 4B's config.json as published (transformers 4.50 wrote it): only what differs from
# the defaults.
HUB_CONFIG = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
}


def write_hub_config(outdir: str) -> None:
    from transformers import Gemma3Config

    d = os.path.join(outdir, "gemma3-hub-config")
    os.makedirs(d, exist_ok=True)
    mf.write_json(os.path.join(d, "config.json"), HUB_CONFIG)
    t = Gemma3Config.from_dict(HUB_CONFIG).text_config
    rp = t.rope_parameters

    def rope(kind):
        p = rp[kind]
        return {"theta": p["rope_theta"], "linear_factor": p.get("factor", 1.0) if p["rope_type"] == "linear" else 1.0}

    expected = {
        "source": "transformers " + transformers_version() + ": Gemma3Config.from_dict(config.json).text_config",
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.head_dim, "query_pre_attn_scalar": t.query_pre_attn_scalar,
        "sliding_window": t.sliding_window, "layer_types": t.layer_types,
        "rms_norm_eps": t.rms_norm_eps, "attn_logit_softcapping": t.attn_logit_softcapping,
        "final_logit_softcapping": t.final_logit_softcapping,
        "tie_word_embeddings": t.tie_word_embeddings, "bos_token_id": t.bos_token_id,
        "rope_full": rope("full_attention"), "rope_sliding": rope("sliding_attention"),
        "hidden_activation": t.hidden_activation,
    }
    mf.write_json(os.path.join(d, "expected.json"), expected)
    print(f"gemma3-hub-config: {t.num_hidden_layers} layers, {t.num_attention_heads}/{t.num_key_value_heads} heads, "
          f"vocab {t.vocab_size}, rope {rp}")


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def main() -> int:
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    import transformers
    from safetensors import safe_open
    from transformers import (AutoModelForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration,
                              SiglipVisionConfig)

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    text_dir = os.path.join(outdir, "tiny-gemma3")
    text = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32, attn_implementation="eager")
    text.eval()

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=text.config, vision_config=vision, mm_tokens_per_image=4,
                       image_token_index=3, boi_token_index=3, eoi_token_index=3)
    torch.manual_seed(mf.SEED)
    mm = Gemma3ForConditionalGeneration(cfg)
    mm.eval()
    gen = torch.Generator().manual_seed(mf.SEED + 3)
    with torch.no_grad():
        lm = mm.model.language_model
        lm.load_state_dict(text.model.state_dict(), strict=True)
        for pname, p in mm.named_parameters():
            if "language_model" in pname:
                continue
            p.add_(torch.randn(p.shape, generator=gen) * VISION_STD)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))

    d = mf.fresh_dir(outdir, NAME)
    mf.save_model(mm, d, True)
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(text_dir, fn), os.path.join(d, fn))

    # The saved names are the ones Gemma 3 checkpoints on the hub use.
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert "language_model.model.embed_tokens.weight" in names, names[:5]
    assert any(n.startswith("vision_tower.") for n in names)

    # Ground truth: text-only logits of the multimodal class equal the text model's.
    loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    loaded.eval()
    assert type(loaded).__name__ == "Gemma3ForConditionalGeneration", type(loaded)
    from safetensors.torch import load_file

    ref = load_file(os.path.join(text_dir, "reference.safetensors"))
    with torch.no_grad():
        for row in range(ref["input_ids"].shape[0]):
            ids = ref["input_ids"][row:row + 1]
            a = loaded(ids).logits[0]
            b = text(ids).logits[0]
            err = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
            assert err <= 1e-6, f"row {row}: multimodal text logits differ from the text model ({err:.2e})"
            print(f"{NAME}: row {row}: text-only logits vs Gemma3ForCausalLM max rel {err:.2e}")

    mf.write_json(os.path.join(d, "eval-reference.json"), mf.run_hf_eval(outdir, NAME))
    write_hub_config(outdir)
    total = sum(os.path.getsize(os.path.join(d, fn)) for fn in os.listdir(d))
    print(f"{NAME}: {len(names)} tensors, {total} bytes in {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
