#!/usr/bin/env python3
"""Joins whittle's and torch's benchmark records into one table (scripts/device-check.sh's
`ratios` step; the table is printed in the device check's summary).

  ratios.py --whittle bench.json --torch bench_torch.json [--calib-whittle calib_whittle.json]
            [--calib-hf calib_hf.json] [--compile compile_2b.json] [--json perf.json] [--md perf.md]
  ratios.py --plan      # the "not measured yet" table of docs/perf-notes.md (every planned row)
  ratios.py --dry-run   # joins synthetic records made from the plan (no GPU, no torch)

Rows are joined on `key` (scripts/device/bench_shapes.json). Columns:
  whittle ms, torch ms   median per-call time (CUDA events), each measured in the same device run
  speed                  torch ms ÷ whittle ms: above 1, whittle is faster
  rate                   TFLOP/s (gemm, gram, attention: useful FLOPs) or GB/s (the rest: fewest
                         bytes, each input read once and each output written once)
  % ceil                 rate ÷ the ceiling measured in the same run: torch's cuBLAS bf16 8192³
                         for FLOPs, torch's 1 GiB device-to-device copy for bytes (whittle's own
                         copy, then the nominal H100 800 TFLOP/s / 3000 GB/s, when missing)
  floor ms               max(FLOPs ÷ FLOP ceiling, bytes ÷ copy ceiling): no version runs much faster
Any input may be missing (that step failed): its columns show "-". Exit 0 when a table was made.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_torch import NOMINAL, OPS, floor_ms, no_peer_reason, load_shapes, plan, work  # noqa: E402

COMPUTE_OPS = {"gemm", "gram", "attention"}
CEIL_GEMM_KEY = "gemm M=8192 N=8192 K=8192"


def load(path):
    if not path:
        return None, None
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as err:
        return None, f"{path}: {err}"


def ceilings(wh, th):
    """(TFLOP/s, GB/s, where each came from)."""
    def rec(doc, key=None, op=None):
        for r in (doc or {}).get("records", []):
            if (key and r["key"] == key) or (op and r["op"] == op):
                return r
        return None
    src = {}
    r = rec(th, key=CEIL_GEMM_KEY)
    if r:
        tf, src["flop"] = r["tflops"], "torch cuBLAS bf16 8192³, this run"
    else:
        tf, src["flop"] = NOMINAL["tflops"], "nominal H100 cuBLAS bf16 8192³ (not measured this run)"
    r = rec(th, op="copy")
    if r:
        gb, src["bytes"] = r["gbps"], "torch 1 GiB device-to-device copy, this run"
    else:
        r = rec(wh, op="copy")
        if r:
            gb, src["bytes"] = r["gbps"], "whittle cuMemcpyDtoD 1 GiB, this run"
        else:
            gb, src["bytes"] = NOMINAL["gbps"], "nominal H100 copy (not measured this run)"
    return tf, gb, src


def fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}f}"


def join(shapes, wh, th):
    tf, gb, src = ceilings(wh, th)
    wmap = {r["key"]: r for r in (wh or {}).get("records", [])}
    tmap = {r["key"]: r for r in (th or {}).get("records", [])}
    terr = {r["key"]: r["error"] for r in (th or {}).get("errors", [])}
    rows = []
    for op, e in plan(shapes):
        w, t = wmap.get(e["key"]), tmap.get(e["key"])
        compute = op in COMPUTE_OPS
        unit = "TFLOP/s" if compute else "GB/s"
        ceil = tf if compute else gb

        def rate(r):
            return None if r is None else (r["tflops"] if compute else r["gbps"])
        wr, tr = rate(w), rate(t)
        why = no_peer_reason(op, e) or terr.get(e["key"])
        rows.append({
            "key": e["key"], "op": op, "label": e["label"], "unit": unit,
            "whittle_ms": w and w["ms"], "whittle_p10": w and w["ms_p10"], "whittle_p90": w and w["ms_p90"],
            "torch_ms": t and t["ms"], "torch_p10": t and t["ms_p10"], "torch_p90": t and t["ms_p90"],
            "speed": (t["ms"] / w["ms"]) if (w and t) else None,
            "whittle_rate": wr, "torch_rate": tr,
            "whittle_pct_ceiling": (100 * wr / ceil) if wr is not None else None,
            "torch_pct_ceiling": (100 * tr / ceil) if tr is not None else None,
            "floor_ms": floor_ms(op, e, tf, gb),
            "torch_impl": t and t["impl"], "no_peer": None if t else why,
        })
    return rows, {"tflops": tf, "gbps": gb, "source": src}


def table(rows, ceil):
    out = [f"Ceilings: {ceil['tflops']:.0f} TFLOP/s ({ceil['source']['flop']}); "
           f"{ceil['gbps']:.0f} GB/s ({ceil['source']['bytes']}). speed = torch ms / whittle ms (>1: whittle faster).",
           "",
           "| op | shape | whittle ms | torch ms | speed | whittle rate | torch rate | whittle % ceil | torch % ceil | floor ms |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        shape = r["key"].split(" ", 1)[1]
        tms = fmt(r["torch_ms"], 4) if r["torch_ms"] is not None else ("n/a" if r["no_peer"] else "-")
        out.append(
            f"| {r['op']} | {shape} ({r['label']}) | {fmt(r['whittle_ms'], 4)} | {tms} | "
            f"{fmt(r['speed'], 2)} | {fmt(r['whittle_rate'], 1)} | {fmt(r['torch_rate'], 1)} | "
            f"{fmt(r['whittle_pct_ceiling'], 1)} | {fmt(r['torch_pct_ceiling'], 1)} | {fmt(r['floor_ms'], 4)} |")
    notes = sorted({f"{r['key']}: {r['no_peer']}" for r in rows if r["no_peer"]})
    if notes:
        out.append("")
        out += [f"- no torch figure for {n}" for n in notes]
    out.append("- rates: TFLOP/s for gemm, gram, attention (useful FLOPs: the full Gram; visible causal/window "
               "pairs); GB/s for the rest (fewest bytes)")
    return out


def calib_section(cw, ch, comp, comp_report):
    out = ["", "| calibration (gemma-2-2b shape) | whittle | transformers | whittle ÷ transformers |",
           "|---|---:|---:|---:|"]

    def g(d, k):
        return None if d is None else d.get(k)
    tw, th = g(cw, "tokens_per_s"), g(ch, "tokens_per_s")
    out.append(f"| tokens/s, all layers, capture Σa Σa² Gram, no LM head | {fmt(tw, 0)} | {fmt(th, 0)} | "
               f"{fmt(tw / th if tw and th else None, 2)} |")
    out.append(f"| seconds | {fmt(g(cw, 'seconds'))} | {fmt(g(ch, 'seconds'))} | |")
    desc = lambda d: "-" if d is None else f"{d.get('layers')} layers, {d.get('n_seq')}×{d.get('seq_len')}, batch {d.get('batch_seqs')}"  # noqa: E731
    out.append(f"| run | {desc(cw)} | {desc(ch)} | |")
    out.append(f"| Gram | f32 on device, bf16 operands (upper block triangle) | {g(ch, 'gram_impl') or '-'} | |")
    if comp is not None:
        st = "ok" if comp.get("rc") == 0 else ("timed out" if comp.get("rc") in (124, 137) else f"failed (rc {comp.get('rc')})")
        tim = (comp_report or {}).get("timings_s")
        extra = ", ".join(f"{k} {v:.1f}s" for k, v in tim.items()) if tim else "no report"
        out.append("")
        out.append(f"`whittle compile --device cuda` ({comp.get('layers', '?')} layers, {comp.get('tokens', '?')} "
                   f"calibration tokens): {st}, wall {fmt(comp.get('wall_s'), 1)} s "
                   f"(limit {comp.get('timeout_s', '?')} s); {extra}")
    return out


def synthetic(shapes):
    """Made-up records (time = 2× / 3× the nominal floor) for --dry-run."""
    wh = {"tool": "whittle", "records": []}
    th = {"tool": "torch", "records": [], "errors": []}
    for op, e in plan(shapes):
        flop, nbytes = work(op, e)
        for doc, f in ((wh, 2.0), (th, 3.0)):
            if doc is th and no_peer_reason(op, e):
                continue
            ms = f * floor_ms(op, e)
            doc["records"].append({"key": e["key"], "op": op, "label": e["label"], "impl": doc["tool"],
                                   "ms": ms, "ms_p10": ms, "ms_p90": ms, "flop": flop, "bytes": nbytes,
                                   "tflops": flop / ms / 1e9, "gbps": nbytes / ms / 1e6})
    cw = {"tokens_per_s": 2.0e5, "seconds": 1.3, "layers": 4, "n_seq": 128, "seq_len": 2048, "batch_seqs": 8}
    ch = dict(cw, tokens_per_s=1.0e5, seconds=2.6, gram_impl="synthetic")
    comp = {"rc": 124, "wall_s": 150.0, "timeout_s": 150, "layers": 4, "tokens": 262144}
    return wh, th, cw, ch, comp


def plan_table(shapes):
    out = ["| op | shape | whittle ms | torch ms | speed | whittle % ceil | torch % ceil | nominal floor ms |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for op, e in plan(shapes):
        peer = "n/a (no softcap in SDPA)" if no_peer_reason(op, e) else "not measured yet"
        out.append(f"| {op} | {e['key'].split(' ', 1)[1]} ({e['label']}) | not measured yet | {peer} | - | - | - | "
                   f"{floor_ms(op, e):.4f} |")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--whittle", help="tests/cuda_bench.rs bench_kernels JSON")
    p.add_argument("--torch", help="bench_torch.py JSON")
    p.add_argument("--calib-whittle", help="tests/cuda_bench.rs bench_calib JSON")
    p.add_argument("--calib-hf", help="calib_hf.py run JSON")
    p.add_argument("--compile", help="device-check's compile_2b JSON")
    p.add_argument("--shapes", default=os.path.join(HERE, "bench_shapes.json"))
    p.add_argument("--json", help="write every row, the ceilings and the inputs here")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--plan", action="store_true", help="print the not-measured-yet table and exit")
    p.add_argument("--dry-run", action="store_true", help="join synthetic records (no inputs read)")
    p.add_argument("--quiet", action="store_true", help="print one line instead of the table")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    shapes = load_shapes(a.shapes)
    if a.plan:
        print("\n".join(plan_table(shapes)))
        return 0
    problems = []
    comp_report = None
    if a.dry_run:
        wh, th, cw, ch, comp = synthetic(shapes)
    else:
        docs = {}
        for name in ("whittle", "torch", "calib_whittle", "calib_hf", "compile"):
            d, err = load(getattr(a, name))
            docs[name] = d
            if err:
                problems.append(err)
            elif getattr(a, name) is None:
                problems.append(f"--{name.replace('_', '-')} not given")
        wh, th, cw, ch, comp = (docs[k] for k in ("whittle", "torch", "calib_whittle", "calib_hf", "compile"))
        if comp and comp.get("output"):
            comp_report, _ = load(os.path.join(comp["output"], "whittle_report.json"))
    if wh is None and th is None and cw is None and ch is None:
        print("ratios: no benchmark input could be read: " + "; ".join(problems), file=sys.stderr)
        return 1
    rows, ceil = join(shapes, wh, th)
    dev = (wh or th or {}).get("device", "?")
    lines = [f"## Kernels: whittle vs torch on {dev}" + (" (SYNTHETIC dry run)" if a.dry_run else ""), ""]
    lines += table(rows, ceil)
    lines += calib_section(cw, ch, comp, comp_report)
    if problems:
        lines += ["", "Missing inputs: " + "; ".join(problems)]
    md = "\n".join(lines)
    if a.quiet:
        print(f"ratios: {len(rows)} rows -> {a.md or '-'}, {a.json or '-'}"
              + (f"; missing: {'; '.join(problems)}" if problems else ""))
    else:
        print(md)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md + "\n")
    if a.json:
        doc = {"device": dev, "ceilings": ceil, "rows": rows,
               "calibration": {"whittle": cw, "transformers": ch,
                               "ratio": (cw["tokens_per_s"] / ch["tokens_per_s"]) if cw and ch else None},
               "compile": dict(comp or {}, report_timings_s=(comp_report or {}).get("timings_s")),
               "inputs": {"whittle": wh, "torch": th}, "problems": problems, "synthetic": a.dry_run}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    if a.dry_run:
        print(f"ratios (dry run): joined {len(rows)} rows of {len(OPS)} ops", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
