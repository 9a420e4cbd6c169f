#!/usr/bin/env python3
"""The torch peer of whittle's kernel benchmark (tests/cuda_bench.rs), on the GPU machine.

  python3 scripts/device/bench_torch.py --json OUT.json            # every shape, CUDA
  python3 scripts/device/bench_torch.py --dry-run                  # plan only: no torch, no GPU
  python3 scripts/device/bench_torch.py --device cpu --smoke       # shrunken shapes on the CPU:
                                                                   # exercises the code paths only

Shapes come from scripts/device/bench_shapes.json, the same file whittle's benchmark compiles in,
and every record carries its `key`, so scripts/device/ratios.py can join the two outputs.

What the peer is, per op (each written as a torch user would, eager, bf16):
  gemm       torch.mm(x, w.t(), out=y): the cuBLAS call F.linear / nn.Linear makes, with whittle's
             gemm_nt convention (x [M, K], w [N, K] as HF stores Linear weights, y [M, N] bf16).
  gram       G += Aᵀ·A with bf16 operands and an f32 result: torch.addmm(G, a.t(), a,
             out_dtype=float32) where this torch has it, else G += torch.mm(a.t(), a,
             out_dtype=float32), else TF32 on the f32 upcast (exact products of bf16 values); the
             record's impl says which ran. cuBLAS computes the full square; whittle the upper
             block triangle only.
  attention  F.scaled_dot_product_attention on q [B, nh, T, d], k/v [B, nkv, T, d] (the
             transposed views HF passes), scale 1/16, with enable_gqa=True where the backend
             accepts it, else k and v repeat_interleave'd to nh heads before timing (the record
             says which). Backends tried in order FLASH, CUDNN, EFFICIENT, MATH; the first that
             runs is timed and named. Causal without a window that binds (T <= W): is_causal=True.
             A window that binds (T = 8192 > W = 4096) needs a boolean mask, which flash does not
             take, so another backend runs and computes every (query, key) tile. No softcap: SDPA
             has none, so whittle's softcap=50 rows have no peer here (FlexAttention could; not
             measured: it needs torch.compile time this check does not have).
  rmsnorm    HF Gemma2RMSNorm: x.float() · rsqrt(mean(x²) + eps) · (1 + w.float()), back to bf16.
  rope       HF apply_rotary_pos_emb: q·cos + rotate_half(q)·sin for q and k ([1, h, T, d] views),
             cos/sin precomputed outside the timing (HF computes them once per forward).
  gelu_mul_stats  a = gelu_tanh(gate)·up (bf16, as Gemma2MLP), then Σa and Σa² per column in f32
             (a.float().sum(0), a.float().square().sum(0)); whittle keeps f64 sums.
  nll        F.cross_entropy(logits, targets, reduction="none") and logits.argmax(-1) on f32 logits.
  copy       dst.copy_(src), 1 GiB: the memory ceiling (bytes read + written).

Timing: CUDA events, the loop and constants of bench_shapes.json's `method` (identical to the
Rust side): rotate through enough input/output copies that a pass moves >= 256 MiB (L2 is 50 MB),
max(3, sets) warm-up calls, samples of `inner` back-to-back calls (>= 0.5 ms), 10 to 50 samples in
about 300 ms; median, p10, p90 of the per-call time. Inputs are random (never zeros).
"""
import argparse
import json
import math
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = os.path.join(HERE, "bench_shapes.json")
OPS = ["gemm", "gram", "attention", "rmsnorm", "rope", "gelu_mul_stats", "nll", "copy"]
NOMINAL = {"tflops": 800.0, "gbps": 3000.0}  # H100 cuBLAS bf16 8192³ and copy, HOPPER notes


def load_shapes(path=SHAPES):
    with open(path) as f:
        return json.load(f)


def attention_pairs(t, window):
    """Visible (query, key) pairs of one causal sequence: Σ_i min(i + 1, W)."""
    if window is None or window >= t:
        return t * (t + 1) / 2
    return window * (window + 1) / 2 + (t - window) * window


def work(op, e):
    """(useful FLOPs, fewest bytes moved) of one call, the formulas tests/cuda_bench.rs uses."""
    if op == "gemm":
        m, n, k = e["m"], e["n"], e["k"]
        return 2.0 * m * n * k, 2.0 * (m * k + n * k + m * n)
    if op == "gram":
        t, i = e["t"], e["i"]
        return 2.0 * t * i * i, 2.0 * t * i + 8.0 * i * i
    if op == "attention":
        b, t, nh, nkv, d = e["b"], e["t"], e["nh"], e["nkv"], e["d"]
        return 4.0 * d * nh * b * attention_pairs(t, e.get("window")), 2.0 * b * t * (2 * nh + 2 * nkv) * d
    if op == "rmsnorm":
        return 0.0, 4.0 * e["rows"] * e["cols"]
    if op == "rope":
        return 0.0, 4.0 * e["rows"] * (e["nh"] + e["nkv"]) * e["d"]
    if op == "gelu_mul_stats":
        return 0.0, 6.0 * e["rows"] * e["cols"]
    if op == "nll":
        return 0.0, 4.0 * e["rows"] * e["vocab"]
    if op == "copy":
        return 0.0, 2.0 * e["bytes"]
    raise ValueError(f"unknown op {op}")


def n_sets(method, nbytes):
    return max(1, min(method["max_sets"], math.ceil(method["rotate_bytes"] / nbytes)))


def plan(shapes, ops=None, only=None):
    """[(op, entry)] in benchmark order, filtered by op names and a key regex."""
    rx = re.compile(only) if only else None
    out = []
    for op in OPS:
        if ops and op not in ops:
            continue
        for e in shapes[op]:
            if rx and not rx.search(e["key"]):
                continue
            out.append((op, e))
    return out


def no_peer_reason(op, e):
    """None, or why torch has no peer for this record."""
    if op == "attention" and e.get("softcap") is not None:
        return "SDPA has no logit softcap"
    return None


def floor_ms(op, e, tflops=NOMINAL["tflops"], gbps=NOMINAL["gbps"]):
    flop, nbytes = work(op, e)
    return max(flop / (tflops * 1e9), nbytes / (gbps * 1e6))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the records here")
    p.add_argument("--shapes", default=SHAPES, help="shape list (default scripts/device/bench_shapes.json)")
    p.add_argument("--ops", help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--only", help="regex on record keys")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (needs --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="shrink every shape (CPU smoke test of the code paths; numbers meaningless)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; no torch, no GPU")
    a = p.parse_args(argv)
    a.op_list = None
    if a.ops:
        a.op_list = [o.strip() for o in a.ops.split(",") if o.strip()]
        bad = [o for o in a.op_list if o not in OPS]
        if bad:
            p.error(f"--ops: unknown {bad}; known: {OPS}")
    if a.only:
        try:
            re.compile(a.only)
        except re.error as err:
            p.error(f"--only: {err}")
    if a.device not in ("cuda", "cpu") and not a.device.startswith("cuda:"):
        p.error("--device is cuda, cuda:N or cpu")
    if a.device == "cpu" and not a.smoke and not a.dry_run:
        p.error("--device cpu is only for --smoke (CUDA events time the real run)")
    return a


def shrink(op, e):
    """A small copy of an entry for the CPU smoke test (same code paths, tiny sizes)."""
    e = dict(e)
    for f in ("m", "n", "k", "i", "rows", "cols"):
        if f in e:
            e[f] = max(16, e[f] // 64)
    if op == "attention":
        e["t"], e["b"] = max(32, e["t"] // 128), 1
        if e.get("window") is not None:
            e["window"] = max(16, e["window"] // 128)
    if op == "gram":
        e["t"] = max(16, e["t"] // 64)
    if op == "nll":
        e["vocab"] = max(64, e["vocab"] // 1000)
    if op == "copy":
        e["bytes"] = 1 << 20
    return e


# ---------------------------------------------------------------------------------------------
# torch side (imported lazily: --dry-run and ratios.py need none of it)

def gram_accumulator(torch, dev, prefer="auto"):
    """A function acc(G, a) -> G adding aᵀa (a bf16 [T, I], G f32 [I, I]) and its name.

    Probes, in order: addmm with out_dtype (one cuBLAS call, bf16 operands, f32 result and
    accumulate), mm with out_dtype then add_, TF32 on the f32 upcast, plain f32. Each candidate
    must match an f64 reference on a small input before it is used."""
    a = (torch.rand(256, 192, device=dev) * 2 - 1).to(torch.bfloat16)
    g0 = torch.rand(192, 192, device=dev, dtype=torch.float32)
    ref = g0.double() + a.double().t() @ a.double()

    def addmm(g, x):
        return torch.addmm(g, x.t(), x, out_dtype=torch.float32)

    def mm_add(g, x):
        return g.add_(torch.mm(x.t(), x, out_dtype=torch.float32))

    def tf32(g, x):
        xf = x.float()
        return g.addmm_(xf.t(), xf)

    def f32(g, x):
        xf = x.float()
        return g.addmm_(xf.t(), xf)

    cands = [
        ("addmm(G, aᵀ, a, out_dtype=f32)", addmm, None),
        ("G += mm(aᵀ, a, out_dtype=f32)", mm_add, None),
        ("G.addmm_(aᵀ.float(), a.float()) TF32", tf32, "high"),
        ("G.addmm_(aᵀ.float(), a.float()) f32", f32, "highest"),
    ]
    if prefer != "auto":
        keep = {"addmm": 0, "mm_add": 1, "tf32": 2, "f32": 3}[prefer]
        cands = cands[keep:keep + 1]
    errors = []
    for name, fn, prec in cands:

        def acc(g, x, fn=fn, prec=prec):
            if prec is None:
                return fn(g, x)
            old = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(prec)
            try:
                return fn(g, x)
            finally:
                torch.set_float32_matmul_precision(old)

        try:
            got = acc(g0.clone(), a)
            if dev != "cpu":
                torch.cuda.synchronize()
            rel = ((got.double() - ref).norm() / ref.norm()).item()
            if not rel < 1e-5:
                raise RuntimeError(f"relative error {rel:.2e}")
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:
            errors.append(f"{name}: {str(err).splitlines()[0][:120]}")
            continue
        return acc, name, errors
    raise RuntimeError("no Gram accumulation works here: " + "; ".join(errors))


class Timer:
    """CUDA events on a GPU; perf_counter on the CPU (smoke test only)."""

    def __init__(self, torch, dev):
        self.torch, self.cuda = torch, dev != "cpu"
        if self.cuda:
            self.a = torch.cuda.Event(enable_timing=True)
            self.b = torch.cuda.Event(enable_timing=True)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self):
        if self.cuda:
            self.a.record()
        else:
            self.t0 = time.perf_counter()

    def stop_ms(self):
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            return self.a.elapsed_time(self.b)
        return (time.perf_counter() - self.t0) * 1e3


def time_op(timer, method, sets, fn, smoke=False):
    nxt = 0
    for _ in range(max(method["warmup_calls"], sets) if not smoke else 1):
        fn(nxt % sets)
        nxt += 1
    timer.sync()
    timer.start()
    for _ in range(sets):
        fn(nxt % sets)
        nxt += 1
    est = max(timer.stop_ms() / sets, 1e-4)
    if smoke:
        inner, samples = 1, 2
    else:
        inner = max(1, min(method["max_inner"], math.ceil(method["target_sample_ms"] / est)))
        samples = max(method["min_samples"], min(method["max_samples"], int(method["budget_ms"] / (est * inner))))
    v = []
    for _ in range(samples):
        timer.start()
        for _ in range(inner):
            fn(nxt % sets)
            nxt += 1
        v.append(timer.stop_ms() / inner)
    v.sort()
    n = len(v)
    return {"ms": v[n // 2], "ms_p10": v[n // 10], "ms_p90": v[min(n * 9 // 10, n - 1)],
            "samples": samples, "inner": inner}


def make_runner(torch, F, op, e, sets, dev, gen, state):
    """(fn(set), impl, note) for one record; allocations happen here, outside the timing."""
    bf = torch.bfloat16

    def rnd(shape, scale, dtype=bf):
        return ((torch.rand(shape, device=dev, generator=gen) * 2 - 1) * scale).to(dtype)

    if op == "gemm":
        m, n, k = e["m"], e["n"], e["k"]
        xs = [rnd((m, k), 1.0) for _ in range(sets)]
        ws = [rnd((n, k), 0.05) for _ in range(sets)]
        ys = [torch.empty((m, n), device=dev, dtype=bf) for _ in range(sets)]

        def fn(i):
            torch.mm(xs[i], ws[i].t(), out=ys[i])
        return fn, "torch.mm(x, w.t(), out=y) bf16 (cuBLAS, = F.linear)", "Y = X·Wᵀ, bf16 out"

    if op == "gram":
        t, i_ = e["t"], e["i"]
        if "gram" not in state:
            state["gram"] = gram_accumulator(torch, dev)
        acc, name, _ = state["gram"]
        as_ = [rnd((t, i_), 1.0) for _ in range(sets)]
        gs = [torch.zeros((i_, i_), device=dev, dtype=torch.float32) for _ in range(sets)]

        def fn(s):
            gs[s] = acc(gs[s], as_[s])
        return fn, name, "full square (whittle: upper block triangle); rate counts the full Gram"

    if op == "attention":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        b, t, nh, nkv, d, w = e["b"], e["t"], e["nh"], e["nkv"], e["d"], e.get("window")
        scale = 1.0 / math.sqrt(d)
        qs = [rnd((b, t, nh, d), 1.0).transpose(1, 2) for _ in range(sets)]
        ks = [rnd((b, t, nkv, d), 1.0).transpose(1, 2) for _ in range(sets)]
        vs = [rnd((b, t, nkv, d), 1.0).transpose(1, 2) for _ in range(sets)]
        masked = w is not None and w < t
        mask = None
        if masked:
            idx = torch.arange(t, device=dev)
            rel = idx[:, None] - idx[None, :]
            mask = (rel >= 0) & (rel < w)  # True = attend; key j visible from i when i - j < W
        reps = {}

        def kv(s, gqa):
            if gqa == "enable_gqa":
                return ks[s], vs[s]
            if s not in reps:
                reps[s] = (ks[s].repeat_interleave(nh // nkv, dim=1), vs[s].repeat_interleave(nh // nkv, dim=1))
            return reps[s]

        def call(s, gqa):
            k, v = kv(s, gqa)
            if masked:
                return F.scaled_dot_product_attention(qs[s], k, v, attn_mask=mask, scale=scale,
                                                      enable_gqa=gqa == "enable_gqa")
            return F.scaled_dot_product_attention(qs[s], k, v, is_causal=True, scale=scale,
                                                  enable_gqa=gqa == "enable_gqa")

        tried = []
        chosen = None
        backends = [("FLASH_ATTENTION", "flash"), ("CUDNN_ATTENTION", "cudnn"),
                    ("EFFICIENT_ATTENTION", "efficient"), ("MATH", "math")]
        for bname, short in backends:
            be = getattr(SDPBackend, bname, None)
            if be is None:
                continue
            for gqa in ("enable_gqa", "repeat_interleave"):
                try:
                    with sdpa_kernel([be]):
                        out = call(0, gqa)
                    if dev != "cpu":
                        torch.cuda.synchronize()
                    if not torch.isfinite(out).all():
                        raise RuntimeError("non-finite output")
                    chosen = (be, short, gqa)
                    break
                except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:
                    tried.append(f"{short}/{gqa}: {str(err).splitlines()[0][:100]}")
            if chosen:
                break
        if not chosen:
            raise RuntimeError("no SDPA backend ran: " + "; ".join(tried))
        be, short, gqa = chosen
        # Sanity: the chosen backend against the math backend on set 0 (bf16, same inputs).
        check = None
        if short != "math":
            try:
                with sdpa_kernel([SDPBackend.MATH]):
                    ref = call(0, "repeat_interleave").float()
                with sdpa_kernel([be]):
                    got = call(0, gqa).float()
                check = ((got - ref).norm() / ref.norm()).item()
                del ref, got
            except (RuntimeError, ValueError) as err:
                check = f"not checked: {str(err).splitlines()[0][:80]}"
        state.setdefault("sdpa", {})[e["key"]] = {"backend": short, "gqa": gqa, "rejected": tried,
                                                   "rel_err_vs_math": check}
        ctx = sdpa_kernel([be])

        def fn(s):
            call(s, gqa)
        fn.ctx = ctx
        how = "boolean sliding-window mask" if masked else "is_causal=True"
        gq = "enable_gqa=True" if gqa == "enable_gqa" else "k/v repeat_interleave'd before timing"
        return fn, f"F.scaled_dot_product_attention [{short}] bf16, {how}, {gq}", \
            f"no softcap; flop = visible pairs only{'; the mask computes every tile' if masked else ''}; " \
            f"rel. err vs math backend {check if isinstance(check, str) else f'{check:.1e}' if check is not None else '-'}"

    if op == "rmsnorm":
        rows, cols = e["rows"], e["cols"]
        xs = [rnd((rows, cols), 3.0) for _ in range(sets)]
        w = rnd((cols,), 0.1)

        def fn(i):
            x = xs[i]
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
            return (y * (1.0 + w.float())).type_as(x)
        return fn, "torch eager Gemma2RMSNorm (f32 math, bf16 out)", "bf16 in, bf16 out"

    if op == "rope":
        rows, nh, nkv, d = e["rows"], e["nh"], e["nkv"], e["d"]
        qs = [rnd((1, rows, nh, d), 1.0).transpose(1, 2) for _ in range(sets)]
        ks = [rnd((1, rows, nkv, d), 1.0).transpose(1, 2) for _ in range(sets)]
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
        ang = torch.arange(rows, device=dev, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        cos, sin = emb.cos().to(bf)[None, None], emb.sin().to(bf)[None, None]

        def rotate_half(x):
            x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
            return torch.cat((-x2, x1), dim=-1)

        def fn(i):
            q, k = qs[i], ks[i]
            return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        return fn, "torch eager HF apply_rotary_pos_emb (new q, k tensors)", "cos/sin precomputed"

    if op == "gelu_mul_stats":
        rows, cols = e["rows"], e["cols"]
        gates = [rnd((rows, cols), 3.0) for _ in range(sets)]
        ups = [rnd((rows, cols), 3.0) for _ in range(sets)]
        s1 = torch.zeros(cols, device=dev, dtype=torch.float32)
        s2 = torch.zeros(cols, device=dev, dtype=torch.float32)

        def fn(i):
            a = F.gelu(gates[i], approximate="tanh") * ups[i]
            af = a.float()
            s1.add_(af.sum(0))
            s2.add_(af.square().sum(0))
            return a
        return fn, "torch eager gelu_tanh(gate)·up, then f32 column sums", "Σa, Σa² in f32"

    if op == "nll":
        rows, v = e["rows"], e["vocab"]
        ls = [rnd((rows, v), 20.0, torch.float32) for _ in range(sets)]
        tg = torch.randint(0, v, (rows,), device=dev, generator=gen)

        def fn(i):
            return F.cross_entropy(ls[i], tg, reduction="none"), ls[i].argmax(-1)
        return fn, "F.cross_entropy(reduction='none') + argmax(-1), f32 logits", "bytes = one read of the logits"

    if op == "copy":
        n = e["bytes"] // 2
        src = [rnd((n,), 1.0) for _ in range(sets)]
        dst = [torch.empty_like(src[0]) for _ in range(sets)]

        def fn(i):
            dst[i].copy_(src[i])
        return fn, "dst.copy_(src) (device-to-device)", "bytes = read + written"

    raise ValueError(op)


def run(a, shapes):
    import torch
    import torch.nn.functional as F

    dev = a.device
    if dev != "cpu" and not torch.cuda.is_available():
        sys.exit("bench_torch: torch sees no CUDA device (use --dry-run, or --device cpu --smoke)")
    method = shapes["method"]
    gen = torch.Generator(device=dev).manual_seed(0)
    timer = Timer(torch, dev)
    devname = torch.cuda.get_device_name(dev) if dev != "cpu" else "cpu"
    info = {
        "tool": "torch",
        "device": devname,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "smoke": a.smoke,
        "method": method,
        "matmul_allow_bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
    }
    if dev != "cpu":
        p = torch.cuda.get_device_properties(dev)
        info["multiprocessors"] = p.multi_processor_count
        info["l2_bytes"] = getattr(p, "L2_cache_size", None)
    print(f"bench_torch: {devname}, torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)
    records, skipped, errors, state = [], [], [], {}
    for op, e in plan(shapes, a.op_list, a.only):
        why = no_peer_reason(op, e)
        if why:
            skipped.append({"key": e["key"], "reason": why})
            continue
        ee = shrink(op, e) if a.smoke else e
        flop, nbytes = work(op, ee)
        sets = 1 if a.smoke else n_sets(method, nbytes)
        try:
            fn, impl, note = make_runner(torch, F, op, ee, sets, dev, gen, state)
            ctx = getattr(fn, "ctx", None)
            if ctx is not None:
                with ctx:
                    t = time_op(timer, method, sets, fn, a.smoke)
            else:
                t = time_op(timer, method, sets, fn, a.smoke)
        except Exception as err:  # one op failing must not lose the others
            msg = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            print(f"{e['key']:<66} FAILED {msg}", flush=True)
            errors.append({"key": e["key"], "error": msg})
            fn = None
            if dev != "cpu":
                torch.cuda.empty_cache()
            continue
        del fn
        rec = {"key": e["key"], "label": e["label"], "op": op, "impl": "torch " + impl, **t, "sets": sets,
               "flop": flop, "bytes": nbytes, "tflops": flop / t["ms"] / 1e9, "gbps": nbytes / t["ms"] / 1e6,
               "note": note}
        records.append(rec)
        print(f"{e['key']:<66} {t['ms']:>9.4f} ms  [{t['ms_p10']:>9.4f} {t['ms_p90']:>9.4f}] "
              f"{rec['tflops']:>7.1f} TFLOP/s {rec['gbps']:>7.0f} GB/s  {impl}", flush=True)
        if dev != "cpu":
            torch.cuda.empty_cache()
    doc = {**info, "records": records, "skipped": skipped, "errors": errors,
           "sdpa": state.get("sdpa", {}), "gram_impl": state["gram"][1] if "gram" in state else None,
           "gram_rejected": state["gram"][2] if "gram" in state else None}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    print(f"bench_torch: {len(records)} records, {len(skipped)} without a torch peer, {len(errors)} failed")
    return 1 if errors else 0


def main(argv=None):
    a = parse_args(argv)
    shapes = load_shapes(a.shapes)
    p = plan(shapes, a.op_list, a.only)
    if a.dry_run:
        method = shapes["method"]
        print(f"bench_torch (dry run): {len(p)} shapes from {os.path.relpath(a.shapes)}, device {a.device}, "
              f"json {a.json or '-'}; rotate >= {method['rotate_bytes'] >> 20} MiB per pass")
        total = 0.0
        for op, e in p:
            flop, nbytes = work(op, e)
            why = no_peer_reason(op, e)
            fl = floor_ms(op, e)
            total += 0 if why else max(method["budget_ms"], method["min_samples"] * max(fl, method["target_sample_ms"]))
            print(f"  {e['key']:<66} sets {n_sets(method, nbytes):>2}  floor {fl:8.4f} ms"
                  f"{'  (no peer: ' + why + ')' if why else ''}")
        print(f"bench_torch (dry run): timed work at most ~{total / 1e3:.1f} s plus setup")
        return 0
    if not p:
        sys.exit("bench_torch: nothing selected")
    return run(a, shapes)


if __name__ == "__main__":
    sys.exit(main())
