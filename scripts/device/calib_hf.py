#!/usr/bin/env python3
"""Calibration throughput of HF transformers, the peer of whittle's (tests/cuda_bench.rs
bench_calib), on the GPU machine.

  calib_hf.py ids --out IDS.safetensors [--samples 128] [--seq 2048] [--vocab V | --model DIR]
      writes pre-tokenized calibration ids: safetensors, one int64 tensor input_ids [samples, seq],
      BOS (2) then uniform random ids in [3, vocab) — the format `whittle compile --calib-ids` and
      `CalibSet::from_ids_file` read, so whittle's compile, whittle's calibration benchmark and
      this script all see the same tokens
  calib_hf.py run --model DIR --ids IDS.safetensors [--batch 8] [--json OUT]
      transformers bf16, attn_implementation="eager", on the GPU. A forward hook on every
      layer's mlp.down_proj takes its input a [tokens, I] (bf16, = gelu(gate)·up) and adds, on the
      GPU: Σa and Σa² per neuron (f32, from a.float()) and the Gram Σ a aᵀ (f32 [I, I]) through
      torch.addmm(G, aᵀ, a, out_dtype=float32) — bf16 operands, f32 result, one cuBLAS call —
      where this torch has it (else mm(..., out_dtype) + add_, else TF32 on the f32 upcast; the
      JSON's gram_impl says which). The base model runs (model.model: embeddings, all layers,
      final norm; no LM head, no KV cache). One untimed warm-up batch, statistics reset, then
      every batch timed between CUDA events: tokens/s.

Both accept --dry-run (parse arguments, print the plan; no torch). `run --device cpu` is a local
smoke test of the hooks (tests/fixtures/tiny-gemma2), its numbers mean nothing.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("ids", help="write random pre-tokenized calibration ids")
    pi.add_argument("--out", required=True)
    pi.add_argument("--samples", type=int, default=128)
    pi.add_argument("--seq", type=int, default=2048)
    pi.add_argument("--vocab", type=int, help="vocabulary size (default: the model's config)")
    pi.add_argument("--model", help="model folder whose config.json gives the vocabulary")
    pi.add_argument("--bos", type=int, default=2)
    pi.add_argument("--seed", type=int, default=0)
    pi.add_argument("--dry-run", action="store_true")
    pr = sub.add_parser("run", help="time transformers calibration with hooks")
    pr.add_argument("--model", required=True)
    pr.add_argument("--ids", required=True)
    pr.add_argument("--batch", type=int, default=8, help="sequences per forward (whittle compile's default: 8)")
    pr.add_argument("--json", help="write the result here")
    pr.add_argument("--gram", default="auto", choices=["auto", "addmm", "mm_add", "tf32", "f32", "none"],
                    help="Gram accumulation (auto: the first of addmm, mm_add, tf32, f32 that works)")
    pr.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    pr.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "ids":
        if a.samples < 1 or a.seq < 2:
            p.error("--samples >= 1 and --seq >= 2")
        if a.vocab is None and a.model is None and not a.dry_run:
            p.error("give --vocab or --model")
    if a.cmd == "run" and a.batch < 1:
        p.error("--batch >= 1")
    return a


def vocab_of(a):
    if a.vocab is not None:
        return a.vocab
    with open(os.path.join(a.model, "config.json")) as f:
        return json.load(f)["vocab_size"]


def write_ids(a):
    if a.dry_run:
        print(f"calib_hf ids (dry run): {a.samples} x {a.seq} ids (BOS {a.bos} + uniform ids >= 3) -> {a.out}")
        return 0
    import numpy as np
    from safetensors.numpy import save_file

    v = vocab_of(a)
    if v <= 3:
        sys.exit(f"calib_hf ids: vocabulary {v} is too small")
    rng = np.random.default_rng(a.seed)
    ids = rng.integers(3, v, size=(a.samples, a.seq), dtype=np.int64)
    ids[:, 0] = a.bos
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_file({"input_ids": ids}, a.out)
    print(f"calib_hf ids: {a.out}: input_ids {list(ids.shape)} int64, vocabulary {v}")
    return 0


def run(a):
    if a.dry_run:
        print(f"calib_hf run (dry run): transformers bf16 eager on {a.device}, model {a.model}, ids {a.ids}, "
              f"{a.batch} sequences per forward, hooks on every mlp.down_proj input (Σa, Σa² f32; Gram "
              f"f32 via {a.gram}), no LM head -> {a.json or '-'}")
        return 0
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    import transformers

    sys.path.insert(0, HERE)
    from bench_torch import gram_accumulator

    dev = a.device
    if dev != "cpu" and not torch.cuda.is_available():
        sys.exit("calib_hf: torch sees no CUDA device")
    ids = load_file(a.ids)["input_ids"].to(torch.long)
    n_seq, seq = ids.shape
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="eager")
    model = model.to(dev).eval()
    if dev != "cpu":
        torch.cuda.synchronize()
    load_s = time.time() - t0
    base = model.model
    layers = base.layers
    inter = model.config.intermediate_size
    if a.gram == "none":
        acc, gram_impl = None, "none"
    else:
        acc, gram_impl, _ = gram_accumulator(torch, dev, a.gram)

    class Stats:
        def __init__(self):
            self.reset()

        def reset(self):
            self.s1 = torch.zeros(inter, device=dev, dtype=torch.float32)
            self.s2 = torch.zeros(inter, device=dev, dtype=torch.float32)
            self.g = torch.zeros(inter, inter, device=dev, dtype=torch.float32) if acc else None
            self.count = 0

    stats = [Stats() for _ in layers]

    def hook(layer):
        st = stats[layer]

        def h(module, inputs, output):
            x = inputs[0]
            x = x.reshape(-1, x.shape[-1])
            xf = x.float()
            st.s1.add_(xf.sum(0))
            st.s2.add_(xf.square().sum(0))
            if acc is not None:
                st.g = acc(st.g, x)
            st.count += x.shape[0]
        return h

    handles = [layer.mlp.down_proj.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    ids = ids.to(dev)
    batches = [ids[s:s + a.batch] for s in range(0, n_seq, a.batch)]

    def fwd(b):
        return base(input_ids=b, use_cache=False).last_hidden_state

    with torch.inference_mode():
        fwd(batches[0])  # warm-up: kernels, cuBLAS handles, allocator
        if dev != "cpu":
            torch.cuda.synchronize()
        for st in stats:
            st.reset()
        if dev != "cpu":
            torch.cuda.synchronize()
            ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            peak0 = torch.cuda.max_memory_allocated()
            wall = time.time()
            ev0.record()
            for b in batches:
                fwd(b)
            ev1.record()
            ev1.synchronize()
            secs = ev0.elapsed_time(ev1) / 1e3
            wall_s = time.time() - wall
        else:
            peak0 = 0
            wall = time.time()
            for b in batches:
                fwd(b)
            secs = wall_s = time.time() - wall
    for h in handles:
        h.remove()
    tokens = n_seq * seq
    bad = []
    for i, st in enumerate(stats):
        if st.count != tokens:
            bad.append(f"layer {i}: {st.count} tokens captured, {tokens} expected")
        if not bool(torch.isfinite(st.s2).all()) or (st.g is not None and not bool(torch.isfinite(st.g).all())):
            bad.append(f"layer {i}: non-finite statistics")
    tok_s = tokens / secs
    res = {
        "tool": "transformers",
        "device": torch.cuda.get_device_name(dev) if dev != "cpu" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": a.model,
        "layers": len(layers),
        "n_seq": int(n_seq),
        "seq_len": int(seq),
        "batch_seqs": a.batch,
        "tokens": int(tokens),
        "seconds": secs,
        "wall_seconds": wall_s,
        "tokens_per_s": tok_s,
        "load_seconds": load_s,
        "attn_implementation": "eager",
        "gram_impl": gram_impl,
        "capture": "forward hooks on mlp.down_proj input: Σa, Σa² (f32), Gram (f32) on the GPU; base model, no LM head",
        "peak_gib": (torch.cuda.max_memory_allocated() / 2**30) if dev != "cpu" else None,
        "peak_gib_before_timing": peak0 / 2**30,
        "problems": bad,
    }
    print(f"calibration (transformers {transformers.__version__}, {res['device']}): {len(layers)} layers, "
          f"{n_seq}x{seq} tokens in batches of {a.batch}: {secs:.3f} s (events; wall {wall_s:.3f} s) = "
          f"{tok_s:.0f} tokens/s ({tok_s * len(layers):.0f} token-layers/s); Gram {gram_impl}; load {load_s:.1f} s")
    for b in bad:
        print("calib_hf: " + b)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if bad else 0


def main(argv=None):
    a = parse_args(argv)
    return write_ids(a) if a.cmd == "ids" else run(a)


if __name__ == "__main__":
    sys.exit(main())
