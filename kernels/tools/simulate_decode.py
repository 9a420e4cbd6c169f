#!/usr/bin/env python3
"""CPU simulation of the index math in kernels/decode.cu (pure Python, no numpy).

Written for a machine without a GPU: it executes the decode kernels thread by thread and lane by
lane (warp shuffles exchange values simultaneously, as the hardware does) and compares with plain
references:

- decode_attention_d{32,64,128,256} + decode_attention_combine: lane groups of L = D/8 lanes per
  key, 32/L keys per warp, the warp-uniform key loop, the in-group butterfly, the xor merges of the
  groups, the shared-memory merge of the 4 warps, the split partials and the combine; against a
  softmax over the visible positions, with the K/V rows fetched through a cache filled the way
  the decoder fills it (prefill rows through decode_kv_write_bf16, then one decode_rope_kv_bf16
  slot write per step), ring or not. Covers every instantiation, head dims that leave lanes idle,
  GQA, softcap, windows shorter and longer than the cache, one and many splits.
- the GEMV lane/chunk mapping (aligned U-chunk batches and the unaligned element loop) for
  M = 1..8 and ragged K, N.
- the split planning of src/cuda/ops/decode.rs (`plan_decode_splits`, copied below): every key in
  exactly one split, none empty.

Values are float64; bf16 rounding is not modelled (the kernels' arithmetic order is, roughly).

  python3 kernels/tools/simulate_decode.py      # exits non-zero on any mismatch

Every formula marked `# decode.cu` / `# ops.rs` is copied from there; keep them in step.
"""
import math
import random
import sys

NEG_INF = -math.inf
ATT_WARPS = 4  # decode.cu
ATT_THREADS = ATT_WARPS * 32
MAX_SPLITS = 64  # ops.rs DECODE_MAX_SPLITS
MIN_CHUNK = 32  # ops.rs DECODE_MIN_CHUNK


# --- host planning (ops.rs) --------------------------------------------------------------------

def plan_decode_splits(n_keys, n_heads, sms, forced=None):  # ops.rs
    if forced is not None:
        want = max(1, min(forced, MAX_SPLITS, n_keys))
    else:
        target = max(1, (2 * sms) // max(1, n_heads))
        want = max(1, min(target, -(-n_keys // MIN_CHUNK), MAX_SPLITS))
    chunk = -(-n_keys // want)
    splits = -(-n_keys // chunk)
    return chunk, splits


def visible(pos, window):  # src/cpu/decode.rs visible_range
    lo = max(0, pos + 1 - window) if window is not None else 0
    return lo, pos + 1 - lo


def layer_slots(window, max_len):  # src/cpu/decode.rs layer_slots
    if window is not None and window < max_len:
        return window, True
    return max_len, False


# --- cache fill (decode_kv_write_bf16, decode_rope_kv_bf16) -----------------------------------------

def kv_write(kc, vc, k_rows, v_rows, nkv, d, pos0, slots, ring):
    """decode_kv_write_bf16 over T rows [T][nkv*d]; kc/vc flat [nkv*slots*d]."""
    T = len(k_rows)
    first = max(0, T - slots) if ring else 0  # ops.rs
    cpr = d // 8
    for bx in range(T - first):  # grid T - first
        r = first + bx  # decode.cu
        pos = pos0 + r
        slot = pos % slots if ring else pos
        for e in range(nkv * cpr):  # threads stride the chunks
            g, c = e // cpr, e % cpr
            o = (g * slots + slot) * cpr + c  # in chunks
            for i in range(8):
                kc[o * 8 + i] = k_rows[r][e * 8 + i]
                vc[o * 8 + i] = v_rows[r][e * 8 + i]


def rope_kv_write(kc, vc, k_row, v_row, nkv, d, slot, slots):
    """The cache half of decode_rope_kv_bf16 (rotation left out: identity angle)."""
    half = d // 2
    for i in range(half):  # one thread per pair
        for g in range(nkv):
            o = (g * slots + slot) * d  # decode.cu
            kc[o + i] = k_row[g * d + i]
            kc[o + i + half] = k_row[g * d + i + half]
            vc[o + i] = v_row[g * d + i]
            vc[o + i + half] = v_row[g * d + i + half]


# --- decode attention ----------------------------------------------------------------------------

def soft_merge(m, l, acc, m2, l2, acc2):  # decode.cu dec::soft_merge
    mx = max(m, m2)
    base = 0.0 if mx == NEG_INF else mx
    a, b = math.exp(m - base), math.exp(m2 - base)
    return mx, l * a + l2 * b, [x * a + y * b for x, y in zip(acc, acc2)]


def attend_block(L, q, kc, vc, out, part_o, part_ml, nh, nkv, d, slots, ring, lo, n_keys, chunk,
                 scale, softcap, split, n_splits, h):
    KP = 32 // L
    G = ATT_WARPS * KP
    s_acc = [[None] * (8 * L) for _ in range(ATT_WARPS)]
    s_m, s_l = [None] * ATT_WARPS, [None] * ATT_WARPS
    kvh = h // (nh // nkv)
    t_begin = split * chunk
    t_end = min(n_keys, t_begin + chunk)
    for warp in range(ATT_WARPS):
        lanes = range(32)
        sub = [lane % L for lane in lanes]
        grp = [lane // L for lane in lanes]
        has = [sub[l] * 8 < d for l in lanes]
        qf = [[q[h * d + sub[l] * 8 + e] if has[l] else 0.0 for e in range(8)] for l in lanes]
        m = [NEG_INF] * 32
        lsum = [0.0] * 32
        acc = [[0.0] * 8 for _ in lanes]
        kbase = kvh * slots * d
        t0 = t_begin + warp * KP
        while t0 < t_end:  # warp-uniform
            dot = [0.0] * 32
            slot_off = [0] * 32
            valid = [False] * 32
            for l in lanes:
                t = t0 + grp[l]
                valid[l] = t < t_end
                j = lo + t
                slot_off[l] = (j % slots if ring else j) * d
                if valid[l] and has[l]:
                    base = kbase + slot_off[l] + sub[l] * 8
                    for e in range(8):
                        dot[l] += qf[l][e] * kc[base + e]
            o = L // 2
            while o > 0:  # butterfly: simultaneous exchange
                dot = [dot[l] + dot[l ^ o] for l in lanes]
                o >>= 1
            for l in lanes:
                if not valid[l]:
                    continue
                x = dot[l] * scale
                if softcap > 0:
                    x = math.tanh(x / softcap) * softcap
                m_new = max(m[l], x)
                corr = math.exp(m[l] - m_new)
                p = math.exp(x - m_new)
                lsum[l] = lsum[l] * corr + p
                base = kbase + slot_off[l] + sub[l] * 8
                vf = [vc[base + e] if has[l] else 0.0 for e in range(8)]
                acc[l] = [acc[l][e] * corr + p * vf[e] for e in range(8)]
                m[l] = m_new
            t0 += G
        o = L
        while o < 32:  # xor merges of the groups
            new = [soft_merge(m[l], lsum[l], acc[l], m[l ^ o], lsum[l ^ o], acc[l ^ o]) for l in lanes]
            m = [x[0] for x in new]
            lsum = [x[1] for x in new]
            acc = [x[2] for x in new]
            o <<= 1
        for l in lanes:
            if grp[l] == 0 and has[l]:
                for e in range(8):
                    s_acc[warp][sub[l] * 8 + e] = acc[l][e]
        s_m[warp], s_l[warp] = m[0], lsum[0]
    # __syncthreads; every thread merges the warps
    mx = max(s_m)
    base = 0.0 if mx == NEG_INF else mx
    wgt = [math.exp(s_m[w] - base) for w in range(ATT_WARPS)]
    lt = sum(s_l[w] * wgt[w] for w in range(ATT_WARPS))
    for tid in range(ATT_THREADS):
        c = tid
        while c < d:
            o = 0.0
            for w in range(ATT_WARPS):
                assert s_acc[w][c] is not None, f"s_acc[{w}][{c}] read before written"
                o += s_acc[w][c] * wgt[w]
            if n_splits == 1:
                out[h * d + c] = o / lt
            else:
                part_o[(h * n_splits + split) * d + c] = o
            c += ATT_THREADS
    if n_splits > 1:
        part_ml[(h * n_splits + split) * 2] = mx
        part_ml[(h * n_splits + split) * 2 + 1] = lt


def combine(part_o, part_ml, out, nh, d, n_splits):  # decode_attention_combine
    for h in range(nh):
        ml = part_ml[h * n_splits * 2:]
        mx = max(ml[2 * s] for s in range(n_splits))
        base = 0.0 if mx == NEG_INF else mx
        lt = sum(ml[2 * s + 1] * math.exp(ml[2 * s] - base) for s in range(n_splits))
        for c in range(d):
            o = sum(part_o[(h * n_splits + s) * d + c] * math.exp(ml[2 * s] - base) for s in range(n_splits))
            out[h * d + c] = o / lt


def instantiation(d):  # ops.rs decode_attention_kernel
    for D in (32, 64, 128, 256):
        if d <= D:
            return D
    raise ValueError(d)


def check_attention(rng, nh, nkv, d, window, max_len, pos, softcap, forced):
    slots, ring = layer_slots(window, max_len)
    scale = 1.0 / math.sqrt(d)
    n_total = pos + 1
    keys = [[rng.uniform(-1, 1) for _ in range(nkv * d)] for _ in range(n_total)]
    vals = [[rng.uniform(-1, 1) for _ in range(nkv * d)] for _ in range(n_total)]
    q = [rng.uniform(-2, 2) for _ in range(nh * d)]
    kc = [math.nan] * (nkv * slots * d)
    vc = [math.nan] * (nkv * slots * d)
    # prefill positions 0..P-1, then steps P..pos (each writes its own slot)
    P = max(1, min(n_total, rng.randint(1, n_total)))
    kv_write(kc, vc, keys[:P], vals[:P], nkv, d, 0, slots, ring)
    for p in range(P, n_total):
        slot = p % slots if ring else p  # decode.rs slot_of
        rope_kv_write(kc, vc, keys[p], vals[p], nkv, d, slot, slots)
    lo, n_keys = visible(pos, window)
    chunk, n_splits = plan_decode_splits(n_keys, nh, 132, forced)
    assert 1 <= n_splits <= MAX_SPLITS and (n_splits - 1) * chunk < n_keys <= n_splits * chunk
    D = instantiation(d)
    L = D // 8
    out = [math.nan] * (nh * d)
    part_o = [math.nan] * (nh * n_splits * d)
    part_ml = [math.nan] * (nh * n_splits * 2)
    for h in range(nh):  # grid (n_splits, nh)
        for split in range(n_splits):
            attend_block(L, q, kc, vc, out, part_o, part_ml, nh, nkv, d, slots, ring, lo, n_keys,
                         chunk, scale, softcap, split, n_splits, h)
    if n_splits > 1:
        combine(part_o, part_ml, out, nh, d, n_splits)
    # reference: softmax over positions lo..pos straight from the unrotated rows
    group = nh // nkv
    worst = 0.0
    for h in range(nh):
        g = h // group
        s = []
        for j in range(lo, pos + 1):
            x = sum(q[h * d + c] * keys[j][g * d + c] for c in range(d)) * scale
            if softcap > 0:
                x = math.tanh(x / softcap) * softcap
            s.append(x)
        mx = max(s)
        e = [math.exp(x - mx) for x in s]
        z = sum(e)
        for c in range(d):
            want = sum(e[i] * vals[lo + i][g * d + c] for i in range(len(e))) / z
            got = out[h * d + c]
            err = abs(got - want)
            worst = max(worst, err if got == got else math.inf)
    what = (f"attention D={D} d={d} nh={nh} nkv={nkv} W={window} max_len={max_len} pos={pos} "
            f"cap={softcap} splits={n_splits}x{chunk} ring={ring}")
    if not worst <= 1e-9:
        print(f"FAIL {what}: max |Δ| {worst:.3e}")
        return False
    return True


# --- GEMV ------------------------------------------------------------------------------------------

def gemv_sim(x, w, M, N, K, aligned):
    """Returns y [M][N] as the kernels' lanes would sum it (which elements each lane reads)."""
    y = [[None] * N for _ in range(M)]
    for n in range(N):  # one warp per row (blockIdx.x * 8 + warp)
        part = [[0.0] * 32 for _ in range(M)]
        seen = [0] * K
        if aligned:
            kc = K >> 3
            U = 4 if M == 1 else 2
            for lane in range(32):
                c0 = lane
                while c0 < kc:
                    for u in range(U):
                        c = c0 + 32 * u
                        if c >= kc:
                            break
                        for m in range(M):
                            for e in range(8):
                                part[m][lane] += x[m][c * 8 + e] * w[n][c * 8 + e]
                        for e in range(8):
                            seen[c * 8 + e] += 1
                    c0 += 32 * U
        else:
            for lane in range(32):
                for c in range(lane, K, 32):
                    for m in range(M):
                        part[m][lane] += x[m][c] * w[n][c]
                    seen[c] += 1
        if any(s != 1 for s in seen):
            return None
        for m in range(M):
            y[m][n] = sum(part[m])
    return y


def check_gemv(rng):
    ok = True
    for (M, N, K, aligned) in [(1, 9, 64, True), (1, 3, 8, True), (1, 5, 1288, True), (8, 7, 520, True),
                               (3, 4, 2056, True), (5, 6, 13, False), (1, 2, 77, False), (8, 3, 8, False)]:
        x = [[rng.uniform(-1, 1) for _ in range(K)] for _ in range(M)]
        w = [[rng.uniform(-1, 1) for _ in range(K)] for _ in range(N)]
        y = gemv_sim(x, w, M, N, K, aligned)
        if y is None:
            print(f"FAIL gemv M={M} N={N} K={K}: an element is read twice or never")
            ok = False
            continue
        for m in range(M):
            for n in range(N):
                want = sum(a * b for a, b in zip(x[m], w[n]))
                if abs(y[m][n] - want) > 1e-9:
                    print(f"FAIL gemv M={M} N={N} K={K} aligned={aligned}: y[{m}][{n}]")
                    ok = False
    return ok


def main():
    rng = random.Random(7)
    ok = check_gemv(rng)
    # splits invariants
    for n in range(1, 3000, 7):
        for nh in (1, 4, 8, 32):
            for forced in (None, 1, 2, 3, 7, 64, 1000):
                chunk, s = plan_decode_splits(n, nh, 132, forced)
                if not (1 <= s <= MAX_SPLITS and chunk >= 1 and (s - 1) * chunk < n <= s * chunk):
                    print(f"FAIL plan n={n} nh={nh} forced={forced}: chunk {chunk} splits {s}")
                    ok = False
    cases = [
        # nh, nkv, d, window, max_len, pos, softcap, forced splits
        (2, 1, 256, None, 40, 39, 0.0, None),
        (2, 1, 256, 16, 60, 50, 50.0, 3),
        (4, 2, 128, 16, 60, 15, 0.0, 2),
        (4, 2, 128, 16, 60, 16, 5.0, 1),
        (2, 2, 64, 10, 80, 79, 0.0, 5),
        (4, 1, 32, 16, 64, 63, 5.0, 4),
        (4, 2, 32, 16, 64, 5, 0.0, None),
        (2, 1, 48, 7, 30, 29, 3.0, 2),    # d=48 on the d64 kernel: 2 idle lanes per group
        (2, 1, 8, None, 20, 19, 0.0, 3),  # d=8 on d32: one chunk per group
        (2, 1, 160, 9, 40, 33, 0.0, 4),   # d=160 on d256
        (1, 1, 200, 50, 40, 39, 0.0, 2),  # window >= max_len: no ring
        (3, 1, 24, None, 150, 149, 0.0, None),
        (2, 1, 256, None, 300, 299, 0.0, None),  # auto splits
    ]
    for c in cases:
        ok &= check_attention(rng, *c)
    if not ok:
        sys.exit(1)
    print(f"simulate_decode: ok ({len(cases)} attention cases, GEMV mappings, split planning)")


if __name__ == "__main__":
    main()
