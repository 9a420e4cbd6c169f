#!/usr/bin/env python3
"""CPU simulation of the tensor-core index math in kernels/gemm.cu and kernels/attention.cu.

Written for a machine without a GPU: it executes, lane by lane (numpy over the 32 lanes), the
same shared-memory swizzles, ldmatrix address formulas, mma.sync fragment layouts and epilogue
index maps as the kernels, with ldmatrix and mma.sync modelled from the PTX ISA's fragment
definitions. It proves the layouts, not the hardware: cp.async is a plain copy, barriers are
implicit (the simulation is sequential), values are float64 (bf16 rounding is not modelled).

  python3 kernels/tools/simulate_fragments.py        # exits non-zero on any mismatch

Every formula marked `# gemm.cu` / `# attention.cu` is copied from the kernel; keep them in step.
"""
import sys

import numpy as np

LANES = np.arange(32)
G = LANES >> 2  # groupID
T4 = LANES & 3  # thread in group


# --- PTX models -------------------------------------------------------------------------------

def ldmatrix_x4(smem, addr, trans=False):
    """addr[lane] = element offset of the row lane supplies (matrix lane//8, row lane%8).
    Returns regs[j] = array [32, 2]: the two b16 values register j of each lane receives."""
    regs = []
    for j in range(4):
        rows = addr[8 * j:8 * j + 8]
        if not trans:
            # lane gets row lane//4, columns 2*(lane%4) + {0,1}
            v0 = smem[rows[G] + 2 * T4]
            v1 = smem[rows[G] + 2 * T4 + 1]
        else:
            # lane gets column lane//4 of rows 2*(lane%4) and +1
            v0 = smem[rows[2 * T4] + G]
            v1 = smem[rows[2 * T4 + 1] + G]
        regs.append(np.stack([v0, v1], axis=1))
    return regs


def mma_16816(d, a, b0, b1):
    """d: [32, 4] f32 accumulators, a: 4 regs [32, 2], b0/b1: [32, 2]. Returns new d."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    C = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        A[g, 2 * t:2 * t + 2] = a[0][lane]
        A[g + 8, 2 * t:2 * t + 2] = a[1][lane]
        A[g, 2 * t + 8:2 * t + 10] = a[2][lane]
        A[g + 8, 2 * t + 8:2 * t + 10] = a[3][lane]
        B[2 * t:2 * t + 2, g] = b0[lane]
        B[2 * t + 8:2 * t + 10, g] = b1[lane]
        C[g, 2 * t:2 * t + 2] = d[lane, 0:2]
        C[g + 8, 2 * t:2 * t + 2] = d[lane, 2:4]
    D = A @ B + C
    out = np.zeros((32, 4))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        out[lane, 0:2] = D[g, 2 * t:2 * t + 2]
        out[lane, 2:4] = D[g + 8, 2 * t:2 * t + 2]
    return out


def pack(lo, hi):
    return np.stack([lo, hi], axis=1)


# --- gemm.cu ----------------------------------------------------------------------------------

BM, BN, BK, THREADS, WM, WN = 128, 128, 32, 256, 64, 32
MT, NT = WM // 16, WN // 8


def nt_off(r, c):  # gemm.cu
    return r * BK + ((c ^ ((r >> 1) & 3)) << 3)


def tn_off(r, c):  # gemm.cu
    return r * 128 + ((c ^ (r & 7)) << 3)


def load_nt(s, g, ld, r0, rows, k0, K):  # gemm.cu load_nt (cp.async with zero fill)
    written = np.zeros(s.size, bool)
    for tid in range(THREADS):
        for i in range(128 * 4 // THREADS):
            idx = tid + i * THREADS
            r, c = idx >> 2, idx & 3
            k = k0 + c * 8
            ok = r0 + r < rows and k < K
            dst = nt_off(r, c)
            assert not written[dst:dst + 8].any(), "two chunks land on one address"
            written[dst:dst + 8] = True
            s[dst:dst + 8] = g[(r0 + r) * ld + k:(r0 + r) * ld + k + 8] if ok else 0
    assert written.all()


def load_tn(s, g, ld, k0, K, c0, cols):  # gemm.cu load_tn
    written = np.zeros(s.size, bool)
    for tid in range(THREADS):
        for i in range(32 * 16 // THREADS):
            idx = tid + i * THREADS
            r, c = idx >> 4, idx & 15
            col = c0 + c * 8
            ok = k0 + r < K and col < cols
            dst = tn_off(r, c)
            assert not written[dst:dst + 8].any()
            written[dst:dst + 8] = True
            s[dst:dst + 8] = g[(k0 + r) * ld + col:(k0 + r) * ld + col + 8] if ok else 0
    assert written.all()


def bank_conflict_free(addr_elems):
    """Each 8-lane phase of ldmatrix reads 8 x 16 bytes; they must cover 8 distinct bank groups."""
    for j in range(4):
        groups = {((a * 2) // 16) % 8 for a in addr_elems[8 * j:8 * j + 8]}
        if len(groups) != 8:
            return False
    return True


def sim_cta(tn, A, B, lda, ldb, m0, n0, M, N, K, Y):
    """One CTA of gemm_nt (tn=False) or gram_tn (tn=True), all 8 warps; writes into Y."""
    sA = np.zeros(BM * BK)
    sB = np.zeros(BN * BK)
    acc = np.zeros((8, MT, NT, 32, 4))
    for kt in range((K + BK - 1) // BK):
        k0 = kt * BK
        if tn:
            load_tn(sA, A, lda, k0, K, m0, M)
            load_tn(sB, B, ldb, k0, K, n0, N)
        else:
            load_nt(sA, A, lda, m0, M, k0, K)
            load_nt(sB, B, ldb, n0, N, k0, K)
        for warp in range(8):
            wm0, wn0 = (warp >> 2) * WM, (warp & 3) * WN
            lane = LANES
            for ks in range(BK // 16):
                af, bf = [], [None] * NT
                for mi in range(MT):
                    if tn:
                        idx = lane >> 3
                        r = ks * 16 + ((idx >> 1) << 3) + (lane & 7)
                        m = wm0 + mi * 16 + ((idx & 1) << 3)
                        addr = tn_off(r, m >> 3)
                        af.append(ldmatrix_x4(sA, addr, trans=True))
                    else:
                        r = wm0 + mi * 16 + (lane & 15)
                        c = ks * 2 + (lane >> 4)
                        addr = nt_off(r, c)
                        af.append(ldmatrix_x4(sA, addr))
                    assert bank_conflict_free(addr), "A ldmatrix bank conflict"
                for np_ in range(NT // 2):
                    if tn:
                        idx = lane >> 3
                        r = ks * 16 + ((idx & 1) << 3) + (lane & 7)
                        n = wn0 + np_ * 16 + ((idx >> 1) << 3)
                        addr = tn_off(r, n >> 3)
                        regs = ldmatrix_x4(sB, addr, trans=True)
                    else:
                        r = wn0 + np_ * 16 + (lane & 7) + ((lane >> 4) << 3)
                        c = ks * 2 + ((lane >> 3) & 1)
                        addr = nt_off(r, c)
                        regs = ldmatrix_x4(sB, addr)
                    assert bank_conflict_free(addr), "B ldmatrix bank conflict"
                    bf[2 * np_] = (regs[0], regs[1])
                    bf[2 * np_ + 1] = (regs[2], regs[3])
                for mi in range(MT):
                    for ni in range(NT):
                        acc[warp, mi, ni] = mma_16816(acc[warp, mi, ni], af[mi], *bf[ni])
    # epilogue (gemm.cu)
    for warp in range(8):
        wm0, wn0 = (warp >> 2) * WM, (warp & 3) * WN
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for mi in range(MT):
                for ni in range(NT):
                    for half in range(2):
                        row = m0 + wm0 + mi * 16 + g + half * 8
                        col = n0 + wn0 + ni * 8 + 2 * t
                        if row >= M or col >= N:
                            continue
                        Y[row, col] += acc[warp, mi, ni, lane, 2 * half]
                        if col + 1 < N:
                            Y[row, col + 1] += acc[warp, mi, ni, lane, 2 * half + 1]


def check_gemm(rng, M, N, K):
    X = rng.standard_normal((M, K))
    W = rng.standard_normal((N, K))
    Y = np.zeros((M, N))
    for bm in range((M + BM - 1) // BM):
        for bn in range((N + BN - 1) // BN):
            sim_cta(False, X.ravel(), W.ravel(), K, K, bm * BM, bn * BN, M, N, K, Y)
    err = np.abs(Y - X @ W.T).max()
    assert err < 1e-9, f"gemm_nt {M}x{N}x{K}: max err {err}"
    print(f"gemm_nt  M={M:4d} N={N:4d} K={K:4d}  ok (max err {err:.1e})")


def check_gram(rng, T, I):
    A = rng.standard_normal((T, I))
    Gm = np.zeros((I, I))
    nb = (I + BM - 1) // BM
    for bm in range(nb):
        for bn in range(nb):
            if bn < bm:
                continue  # gemm.cu gram_tn: only block-upper tiles
            sim_cta(True, A.ravel(), A.ravel(), I, I, bm * BM, bn * BN, I, I, T, Gm)
    # gram_symmetrize_f32
    for r in range(I):
        for c in range(I):
            if r // BM > c // BN:
                Gm[r, c] = Gm[c, r]
    err = np.abs(Gm - A.T @ A).max()
    assert err < 1e-9, f"gram T={T} I={I}: max err {err}"
    print(f"gram_tn  T={T:4d} I={I:4d}         ok (max err {err:.1e})")


# --- attention.cu -----------------------------------------------------------------------------

BR = BC = 64


def a_off(D, r, c):  # attention.cu off<D>
    if D >= 64:
        return r * D + ((c ^ (r & 7)) << 3)
    return r * D + ((c ^ ((r >> 1) & 3)) << 3)


def load_tile(D, s, g, stride, r0, T):  # attention.cu load_tile
    CH = D // 8
    written = np.zeros(s.size, bool)
    for idx in range(64 * CH):
        r, c = idx // CH, idx % CH
        ok = r0 + r < T
        dst = a_off(D, r, c)
        assert not written[dst:dst + 8].any()
        written[dst:dst + 8] = True
        s[dst:dst + 8] = g[(r0 + r) * stride + c * 8:(r0 + r) * stride + c * 8 + 8] if ok else 0
    assert written.all()


def sim_attention(q, k, v, n_seq, T, nh, nkv, D, scale, softcap, window):
    """Runs every CTA of attention_fwd_d{D}; returns o [N, nh, D]."""
    o = np.full((n_seq * T, nh, D), np.nan)
    qf, kf, vf = q.ravel(), k.ravel(), v.ravel()
    sQ, sK, sV = np.zeros(BR * D), np.zeros(BC * D), np.zeros(BC * D)
    q_stride, kv_stride = nh * D, nkv * D
    for b in range(n_seq):
        for h in range(nh):
            for qt in range((T + BR - 1) // BR):
                i0 = qt * BR
                kvh = h // (nh // nkv)
                seq0 = b * T
                qg = seq0 * q_stride + h * D
                kg = seq0 * kv_stride + kvh * D
                j_hi = min(T, i0 + BR)
                j_lo = max(0, i0 - window + 1) if window > 0 else 0
                t_lo, t_hi = j_lo // BC, (j_hi + BC - 1) // BC
                load_tile(D, sQ, qf[qg:], q_stride, i0, T)
                for warp in range(4):
                    lane = LANES
                    oacc = np.zeros((D // 8, 32, 4))
                    mrow = np.full((2, 32), -np.inf)
                    lrow = np.zeros((2, 32))
                    qrow = [i0 + warp * 16 + G, i0 + warp * 16 + G + 8]
                    for tile in range(t_lo, t_hi):
                        load_tile(D, sK, kf[kg:], kv_stride, tile * BC, T)
                        load_tile(D, sV, vf[kg:], kv_stride, tile * BC, T)
                        s = np.zeros((BC // 8, 32, 4))
                        for ks in range(D // 16):
                            r = warp * 16 + (lane & 15)
                            c = ks * 2 + (lane >> 4)
                            addr = a_off(D, r, c)
                            assert bank_conflict_free(addr)
                            a = ldmatrix_x4(sQ, addr)
                            for np_ in range(BC // 16):
                                r = np_ * 16 + (lane & 7) + ((lane >> 4) << 3)
                                c = ks * 2 + ((lane >> 3) & 1)
                                addr = a_off(D, r, c)
                                assert bank_conflict_free(addr)
                                kb = ldmatrix_x4(sK, addr)
                                s[2 * np_] = mma_16816(s[2 * np_], a, kb[0], kb[1])
                                s[2 * np_ + 1] = mma_16816(s[2 * np_ + 1], a, kb[2], kb[3])
                        j0 = tile * BC
                        for n in range(BC // 8):
                            for e in range(4):
                                i = qrow[e >> 1]
                                j = j0 + n * 8 + 2 * T4 + (e & 1)
                                x = s[n, :, e] * scale
                                if softcap > 0:
                                    x = np.tanh(x / softcap) * softcap
                                vis = (j <= i) & (j < T)
                                if window > 0:
                                    vis &= i - j < window
                                s[n, :, e] = np.where(vis, x, -np.inf)
                        for r in range(2):
                            mx = np.max(np.maximum(s[:, :, 2 * r], s[:, :, 2 * r + 1]), axis=0)
                            mx = np.maximum(mx, mx[LANES ^ 1])
                            mx = np.maximum(mx, mx[LANES ^ 2])
                            m_new = np.maximum(mrow[r], mx)
                            base = np.where(m_new == -np.inf, 0.0, m_new)
                            corr = np.exp(mrow[r] - base)
                            mrow[r] = m_new
                            p = np.exp(s[:, :, 2 * r:2 * r + 2] - base[None, :, None])
                            s[:, :, 2 * r:2 * r + 2] = p
                            lrow[r] = lrow[r] * corr + p.sum(axis=(0, 2))
                            oacc[:, :, 2 * r:2 * r + 2] *= corr[None, :, None]
                        for kk in range(BC // 16):
                            a = [pack(s[2 * kk, :, 0], s[2 * kk, :, 1]), pack(s[2 * kk, :, 2], s[2 * kk, :, 3]),
                                 pack(s[2 * kk + 1, :, 0], s[2 * kk + 1, :, 1]),
                                 pack(s[2 * kk + 1, :, 2], s[2 * kk + 1, :, 3])]
                            for dp in range(D // 16):
                                r = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3)
                                c = dp * 2 + (lane >> 4)
                                addr = a_off(D, r, c)
                                assert bank_conflict_free(addr)
                                vb = ldmatrix_x4(sV, addr, trans=True)
                                oacc[2 * dp] = mma_16816(oacc[2 * dp], a, vb[0], vb[1])
                                oacc[2 * dp + 1] = mma_16816(oacc[2 * dp + 1], a, vb[2], vb[3])
                    for r in range(2):
                        l = lrow[r] + lrow[r][LANES ^ 1]
                        l = l + l[LANES ^ 2]
                        inv = np.where(l > 0, 1.0 / np.where(l > 0, l, 1), 0.0)
                        for lane_ in range(32):
                            i = qrow[r][lane_]
                            if i >= T:
                                continue
                            for n in range(D // 8):
                                d = n * 8 + 2 * (lane_ & 3)
                                o[seq0 + i, h, d] = oacc[n, lane_, 2 * r] * inv[lane_]
                                o[seq0 + i, h, d + 1] = oacc[n, lane_, 2 * r + 1] * inv[lane_]
    return o


def ref_attention(q, k, v, n_seq, T, nh, nkv, D, scale, softcap, window):
    o = np.zeros_like(q)
    grp = nh // nkv
    for b in range(n_seq):
        for h in range(nh):
            Q = q[b * T:(b + 1) * T, h]
            K = k[b * T:(b + 1) * T, h // grp]
            V = v[b * T:(b + 1) * T, h // grp]
            s = Q @ K.T * scale
            if softcap > 0:
                s = np.tanh(s / softcap) * softcap
            i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
            vis = j <= i
            if window > 0:
                vis &= i - j < window
            s = np.where(vis, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            o[b * T:(b + 1) * T, h] = p @ V
    return o


def check_attention(rng, n_seq, T, nh, nkv, D, softcap, window):
    q = rng.standard_normal((n_seq * T, nh, D))
    k = rng.standard_normal((n_seq * T, nkv, D))
    v = rng.standard_normal((n_seq * T, nkv, D))
    scale = 1.0 / np.sqrt(D)
    got = sim_attention(q, k, v, n_seq, T, nh, nkv, D, scale, softcap, window)
    want = ref_attention(q, k, v, n_seq, T, nh, nkv, D, scale, softcap, window)
    assert not np.isnan(got).any(), "unwritten output"
    err = np.abs(got - want).max()
    assert err < 1e-9, f"attention T={T} D={D}: max err {err}"
    print(f"attention n_seq={n_seq} T={T:3d} nh={nh} nkv={nkv} d={D} cap={softcap} W={window}  ok ({err:.1e})")


def main():
    rng = np.random.default_rng(0)
    check_gemm(rng, 128, 128, 64)
    check_gemm(rng, 77, 200, 40)     # ragged M, N, K (K % 8 == 0)
    check_gemm(rng, 130, 260, 96)
    check_gram(rng, 45, 136)         # ragged T, I
    check_gram(rng, 70, 256)
    check_attention(rng, 1, 64, 2, 1, 128, 0.0, 0)
    check_attention(rng, 2, 40, 4, 2, 32, 5.0, 16)     # the tiny fixtures' shape
    check_attention(rng, 1, 100, 2, 1, 64, 0.0, 30)
    check_attention(rng, 2, 150, 4, 2, 128, 5.0, 70)   # ragged T, GQA, softcap, window
    check_attention(rng, 1, 130, 2, 2, 256, 0.0, 0)
    check_attention(rng, 1, 200, 2, 1, 256, 3.0, 40)   # window smaller than a tile
    print("all fragment simulations passed")


if __name__ == "__main__":
    sys.exit(main())
