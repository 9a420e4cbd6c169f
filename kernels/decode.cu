// decode.cu — the single-token (decode) path over a device KV cache: a memory-bound GEMV for the
// Linear layers and the LM head, the GEMV fused with act·up for the MLP (gelu_tanh or SiLU),
// split-K decode attention over the cache (flash-decoding), RoPE of the step's q/k fused with the
// cache write, and the batched cache write that fills the cache after a prefill.
//
// Cache layout (src/cuda/decode.rs, the same as the CPU decoder's `KvCache` in src/decode.rs):
// per layer, K and V are bf16 [n_kv, slots, d] (one contiguous run of slots per KV head), K after
// the q/k norm and RoPE. A global layer has slots = max_len and position j lives in slot j. A
// sliding layer whose window W is below max_len is a ring of slots = W: position j lives in slot
// j % W. A query at position p sees positions lo..=p, lo = max(0, p+1-W) (W keys including its
// own, the transformers window i - j < W), which are exactly the last W positions written, so
// the step that writes position p overwrites the one that just left the window. The host passes
// (lo, n_keys = p+1-lo, slots, ring) and the kernel maps key t < n_keys to position lo + t and
// to slot (lo + t) % slots on a ring, lo + t otherwise.
//
// decode_gemv_bf16_m{1,8}: Y[M,N] = X[M,K] · W[N,K]ᵀ for M <= 8 rows of X (decode runs M = 1).
//   Memory-bound: W is streamed once (16-byte loads, evict-first), X (a few KB) stays in L1.
//   One warp per output row n (8 rows per 256-thread block, grid CEIL_DIV(N, 8): 32768 blocks for
//   Gemma-3's 262144-row LM head). Lane l reads chunks l, l+32, … (8 bf16 each) of the row, so a
//   warp reads 512 contiguous bytes per iteration; f32 FMAs per lane, then a butterfly. Outputs
//   bf16 (rounded once: a Linear output) and/or f32; softcap > 0 applies tanh(v/cap)·cap to the
//   value first (the final logit softcap, fused into the LM head). Needs K % 8 == 0 (16-byte
//   aligned rows of 256-byte aligned allocations); decode_gemv_bf16_unaligned takes any K with
//   scalar loads (same mapping, element per lane).
// decode_gemv_act_bf16_m{1,8}: act = bf16(bf16(f(bf16(x·Wgᵀ))) · bf16(x·Wuᵀ)), f = gelu_tanh or
//   SiLU by the `act` argument (common.cuh's ACT_*; ignored by the plain GEMVs): the gate and up
//   rows n are read by the same warp, and the activation is rounded exactly as mlp.cu's
//   act_mul_stats_bf16 rounds it (gate and up are Linear outputs, rounded first). Removes two
//   launches and the gate/up round trip through memory.
// decode_attention_d{32,64,128,256}: one query token per head over the cache. Grid
//   (n_splits, nh), block 128 (4 warps); split s covers keys [s·chunk, min(n_keys, (s+1)·chunk)).
//   A group of L = D/8 lanes handles one key (lane `sub` owns the 16-byte chunk sub of q, k, v
//   and of the output accumulator, so every lane holds 8 q values and 8 accumulators whatever d
//   is), 32/L keys per warp in flight; any d <= D with d % 8 == 0 runs on the instantiation for
//   D (chunks >= d/8 are idle lanes). Scores follow transformers' eager order and the CPU:
//   s = (q·k)·scale → softcap tanh(s/cap)·cap (cap > 0) → online softmax in f32 (accurate expf,
//   running max m, sum l, accumulator acc per group). Groups merge by shuffles within a warp,
//   warps through shared memory. One split writes bf16 out directly; several write f32 partials
//   (acc [nh, S, d], (m, l) [nh, S, 2]) that decode_attention_combine merges (grid nh, block 256).
//   Merging: M = max m_i, weights e^(m_i − M) (a group that saw no key has m = −inf and weight 0;
//   −inf − −inf is avoided by using 0 as the base then). Every split has at least one key (the
//   host plans them so), so l > 0 at the end.
// decode_rope_kv_bf16: RoPE of the step's q (in place, nh heads) and k (nkv heads) at position
//   pos with the exact formula of rope.cu (the layer's inv_freq and scale, common.cuh's
//   rope_cos_sin, one rounding), k written rotated into cache slot `slot`, v copied there. One
//   thread per rotation pair.
// decode_kv_write_bf16: copies the rows of a prefill's K and V ([T, nkv, d], after norm and RoPE)
//   for positions pos0 + r into their slots, skipping rows r < first (rows a ring would overwrite
//   within the same write, first = T − slots on a ring, as the CPU cache's write does), so no two
//   rows of one launch share a slot. One block per row, 16-byte copies (d % 8 == 0).
//
// kernels/tools/simulate_decode.py executes the attention, merge, cache-write and GEMV index math
// above lane by lane on the CPU; run it after changing any of it.
#include "common.cuh"

namespace dec {
constexpr int GEMV_WARPS = 8, GEMV_THREADS = GEMV_WARPS * 32;
constexpr int ATT_WARPS = 4, ATT_THREADS = ATT_WARPS * 32;

// The 8 bf16 of a 16-byte chunk as f32 (exact: a bf16 is the high half of an f32). Element 2i is
// the low half of word i (little-endian, lower address).
__device__ __forceinline__ void unpack8(const uint4 u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// Stores output (row m, column n) of a GEMV: y/yf [M, N] (either may be null). ACT: act(a)·b
// with the activation `act` (ACT_*), else a with the optional softcap.
template <bool ACT>
__device__ __forceinline__ void gemv_store(float a, float b, bf16* __restrict__ y, float* __restrict__ yf,
                                           size_t o, float softcap, int act) {
  if constexpr (ACT) {
    const float v = act_mul_bf16(act, a, b);
    if (y) y[o] = f2bf(v);
    if (yf) yf[o] = v;
  } else {
    if (softcap > 0.0f) a = tanhf(a / softcap) * softcap;
    if (y) y[o] = f2bf(a);
    if (yf) yf[o] = a;
  }
}

// One warp per output row n (see the header). x [M, K], w/w2 [N, K] with K % 8 == 0; M <= MAXM.
template <int MAXM, bool ACT>
__device__ __forceinline__ void gemv(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                     const bf16* __restrict__ w2, bf16* __restrict__ y, float* __restrict__ yf,
                                     int M, int N, int K, float softcap, int act) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
  if (n >= N) return;  // uniform per warp
  const int kc = K >> 3;
  const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)n * K);
  const uint4* wr2 = ACT ? reinterpret_cast<const uint4*>(w2 + (size_t)n * K) : nullptr;
  const uint4* xr = reinterpret_cast<const uint4*>(x);
  float acc[MAXM], acc2[MAXM];
#pragma unroll
  for (int m = 0; m < MAXM; ++m) acc[m] = acc2[m] = 0.0f;
  // U chunks per lane per iteration, all loads issued before the FMAs (bytes in flight).
  constexpr int U = MAXM == 1 ? 4 : 2;
  for (int c0 = lane; c0 < kc; c0 += 32 * U) {
    uint4 wv[U], wv2[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + 32 * u;
      wv[u] = c < kc ? __ldcs(wr + c) : make_uint4(0, 0, 0, 0);
      if constexpr (ACT) wv2[u] = c < kc ? __ldcs(wr2 + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + 32 * u;
      if (c >= kc) break;
      float wf[8], w2f[8];
      unpack8(wv[u], wf);
      if constexpr (ACT) unpack8(wv2[u], w2f);
#pragma unroll
      for (int m = 0; m < MAXM; ++m) {
        if (m < M) {
          float xf[8];
          unpack8(__ldg(xr + (size_t)m * kc + c), xf);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            acc[m] = fmaf(xf[e], wf[e], acc[m]);
            if constexpr (ACT) acc2[m] = fmaf(xf[e], w2f[e], acc2[m]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MAXM; ++m) {
    acc[m] = warp_sum(acc[m]);
    if constexpr (ACT) acc2[m] = warp_sum(acc2[m]);
  }
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < MAXM; ++m)
      if (m < M) gemv_store<ACT>(acc[m], acc2[m], y, yf, (size_t)m * N + n, softcap, act);
  }
}

// Online-softmax state of one lane: running max m, running sum l, 8 output accumulators.
struct Soft {
  float m, l, acc[8];
};

// s ⊕ (m2, l2, acc2): the merge of two partial softmax states.
__device__ __forceinline__ void soft_merge(Soft& s, float m2, float l2, const float (&acc2)[8]) {
  const float mx = fmaxf(s.m, m2);
  const float base = mx == -INFINITY ? 0.0f : mx;
  const float a = expf(s.m - base), b = expf(m2 - base);
  s.l = s.l * a + l2 * b;
#pragma unroll
  for (int e = 0; e < 8; ++e) s.acc[e] = s.acc[e] * a + acc2[e] * b;
  s.m = mx;
}

// Decode attention for one (split, head); L lanes per key, head_dim d <= 8·L, d % 8 == 0.
template <int L>
__device__ __forceinline__ void attend(const bf16* __restrict__ q, const bf16* __restrict__ kc,
                                       const bf16* __restrict__ vc, bf16* __restrict__ out,
                                       float* __restrict__ part_o, float* __restrict__ part_ml, int nh, int nkv,
                                       int d, int slots, int ring, int lo, int n_keys, int chunk, float scale,
                                       float softcap) {
  static_assert(L == 4 || L == 8 || L == 16 || L == 32, "lanes per key");
  constexpr int KP = 32 / L;            // keys per warp in flight
  constexpr int G = ATT_WARPS * KP;     // keys per block in flight
  __shared__ float s_acc[ATT_WARPS][8 * L];
  __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane % L, grp = lane / L;
  const int split = blockIdx.x, n_splits = gridDim.x, h = blockIdx.y;
  const int kvh = h / (nh / nkv);
  const int t_begin = split * chunk, t_end = min(n_keys, t_begin + chunk);
  const bool has_chunk = sub * 8 < d;  // lanes past d/8 chunks hold zeros

  float qf[8];
  if (has_chunk) {
    unpack8(*reinterpret_cast<const uint4*>(q + (size_t)h * d + sub * 8), qf);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) qf[e] = 0.0f;
  }
  Soft st;
  st.m = -INFINITY;
  st.l = 0.0f;
#pragma unroll
  for (int e = 0; e < 8; ++e) st.acc[e] = 0.0f;

  const bf16* kh = kc + (size_t)kvh * slots * d + sub * 8;  // this lane's chunk of slot 0
  const bf16* vh = vc + (size_t)kvh * slots * d + sub * 8;
  // Warp-uniform trip count (every lane takes part in the shuffles); group grp takes key t0+grp.
  for (int t0 = t_begin + warp * KP; t0 < t_end; t0 += G) {
    const int t = t0 + grp;
    const bool valid = t < t_end;
    const int j = lo + t;
    const size_t slot_off = (size_t)(ring ? j % slots : j) * d;
    float dot = 0.0f;
    if (valid && has_chunk) {
      float kf[8];
      unpack8(__ldg(reinterpret_cast<const uint4*>(kh + slot_off)), kf);
#pragma unroll
      for (int e = 0; e < 8; ++e) dot = fmaf(qf[e], kf[e], dot);
    }
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (valid) {
      float x = dot * scale;
      if (softcap > 0.0f) x = tanhf(x / softcap) * softcap;
      const float m_new = fmaxf(st.m, x);
      const float corr = expf(st.m - m_new);  // 0 for the group's first key (m = -inf)
      const float p = expf(x - m_new);
      st.l = st.l * corr + p;
      float vf[8];
      if (has_chunk) {
        unpack8(__ldg(reinterpret_cast<const uint4*>(vh + slot_off)), vf);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) vf[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) st.acc[e] = st.acc[e] * corr + p * vf[e];
      st.m = m_new;
    }
  }

  // Merge the KP groups of the warp: partners lane ^ o (o a multiple of L) own the same chunk.
#pragma unroll
  for (int o = L; o < 32; o <<= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, st.m, o);
    const float l2 = __shfl_xor_sync(0xffffffffu, st.l, o);
    float a2[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) a2[e] = __shfl_xor_sync(0xffffffffu, st.acc[e], o);
    soft_merge(st, m2, l2, a2);
  }
  if (grp == 0 && has_chunk) {
#pragma unroll
    for (int e = 0; e < 8; ++e) s_acc[warp][sub * 8 + e] = st.acc[e];
  }
  if (lane == 0) {
    s_m[warp] = st.m;
    s_l[warp] = st.l;
  }
  __syncthreads();

  // Merge the warps (every thread recomputes the weights; 4 values).
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < ATT_WARPS; ++w) mx = fmaxf(mx, s_m[w]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  float wgt[ATT_WARPS], lsum = 0.0f;
#pragma unroll
  for (int w = 0; w < ATT_WARPS; ++w) {
    wgt[w] = expf(s_m[w] - base);
    lsum += s_l[w] * wgt[w];
  }
  for (int c = threadIdx.x; c < d; c += ATT_THREADS) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; ++w) o += s_acc[w][c] * wgt[w];
    if (n_splits == 1) {
      out[(size_t)h * d + c] = f2bf(o / lsum);
    } else {
      part_o[((size_t)h * n_splits + split) * d + c] = o;
    }
  }
  if (n_splits > 1 && threadIdx.x == 0) {
    part_ml[((size_t)h * n_splits + split) * 2] = mx;
    part_ml[((size_t)h * n_splits + split) * 2 + 1] = lsum;
  }
}
}  // namespace dec

// ---------------------------------------------------------------------------------------------
// GEMV. Grid CEIL_DIV(N, 8), block 256. x [M, K], w (and w2) [N, K] bf16 with K % 8 == 0 (the
// _unaligned entry: any K); y [M, N] bf16 and/or yf [M, N] f32 (null: not written); act: the
// activation of the fused act·up entries (ACT_*), ignored by the others.
#define GEMV_ENTRY(NAME, MAXM, ACT)                                                                    \
  extern "C" __global__ void __launch_bounds__(dec::GEMV_THREADS)                                      \
      NAME(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ w2,        \
           bf16* __restrict__ y, float* __restrict__ yf, int M, int N, int K, float softcap, int act) { \
    dec::gemv<MAXM, ACT>(x, w, w2, y, yf, M, N, K, softcap, act);                                      \
  }
GEMV_ENTRY(decode_gemv_bf16_m1, 1, false)
GEMV_ENTRY(decode_gemv_bf16_m8, 8, false)
GEMV_ENTRY(decode_gemv_act_bf16_m1, 1, true)
GEMV_ENTRY(decode_gemv_act_bf16_m8, 8, true)

// Any K (rows need not be 16-byte aligned): lane l reads elements l, l+32, … with scalar loads.
// w2 non-null selects the fused act·up output (softcap ignored then), as the ACT entries.
extern "C" __global__ void __launch_bounds__(dec::GEMV_THREADS)
    decode_gemv_bf16_unaligned(const bf16* __restrict__ x, const bf16* __restrict__ w,
                               const bf16* __restrict__ w2, bf16* __restrict__ y, float* __restrict__ yf, int M,
                               int N, int K, float softcap, int act) {
  constexpr int MAXM = 8;
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * dec::GEMV_WARPS + (threadIdx.x >> 5);
  if (n >= N) return;
  const bf16* wr = w + (size_t)n * K;
  const bf16* wr2 = w2 ? w2 + (size_t)n * K : nullptr;
  float acc[MAXM], acc2[MAXM];
#pragma unroll
  for (int m = 0; m < MAXM; ++m) acc[m] = acc2[m] = 0.0f;
  for (int c = lane; c < K; c += 32) {
    const float wv = bf2f(wr[c]);
    const float wv2 = wr2 ? bf2f(wr2[c]) : 0.0f;
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
      if (m < M) {
        const float xv = bf2f(x[(size_t)m * K + c]);
        acc[m] = fmaf(xv, wv, acc[m]);
        acc2[m] = fmaf(xv, wv2, acc2[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MAXM; ++m) {
    acc[m] = warp_sum(acc[m]);
    acc2[m] = warp_sum(acc2[m]);
  }
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
      if (m >= M) continue;
      const size_t o = (size_t)m * N + n;
      if (wr2) {
        dec::gemv_store<true>(acc[m], acc2[m], y, yf, o, softcap, act);
      } else {
        dec::gemv_store<false>(acc[m], 0.0f, y, yf, o, softcap, act);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decode attention. Grid (n_splits, nh), block 128. q, out [nh, d] bf16; kc, vc [nkv, slots, d]
// bf16 (one layer); part_o [nh, n_splits, d] f32 and part_ml [nh, n_splits, 2] f32 (only written
// when n_splits > 1; out only when n_splits == 1). Keys t < n_keys are positions lo + t; split s
// takes t in [s·chunk, min(n_keys, (s+1)·chunk)), never empty. softcap <= 0: off.
#define DECODE_ATTN_ENTRY(D)                                                                           \
  extern "C" __global__ void __launch_bounds__(dec::ATT_THREADS)                                       \
      decode_attention_d##D(const bf16* __restrict__ q, const bf16* __restrict__ kc,                   \
                            const bf16* __restrict__ vc, bf16* __restrict__ out, float* __restrict__ part_o, \
                            float* __restrict__ part_ml, int nh, int nkv, int d, int slots, int ring, int lo, \
                            int n_keys, int chunk, float scale, float softcap) {                       \
    dec::attend<D / 8>(q, kc, vc, out, part_o, part_ml, nh, nkv, d, slots, ring, lo, n_keys, chunk, scale, \
                       softcap);                                                                       \
  }
DECODE_ATTN_ENTRY(32)
DECODE_ATTN_ENTRY(64)
DECODE_ATTN_ENTRY(128)
DECODE_ATTN_ENTRY(256)

// Grid nh, block 256. Merges the n_splits partial states of each head into out [nh, d] bf16.
extern "C" __global__ void __launch_bounds__(256)
    decode_attention_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                             bf16* __restrict__ out, int d, int n_splits) {
  const int h = blockIdx.x;
  const float* ml = part_ml + (size_t)h * n_splits * 2;
  float mx = -INFINITY;
  for (int s = 0; s < n_splits; ++s) mx = fmaxf(mx, ml[2 * s]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  float lsum = 0.0f;
  for (int s = 0; s < n_splits; ++s) lsum += ml[2 * s + 1] * expf(ml[2 * s] - base);
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < n_splits; ++s) o += part_o[((size_t)h * n_splits + s) * d + c] * expf(ml[2 * s] - base);
    out[(size_t)h * d + c] = f2bf(o / lsum);
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE of one token at position `pos` + cache write. Grid CEIL_DIV(d/2, 128), block 128.
// q [nh, d] rotated in place; k, v [nkv, d] read; kc, vc [nkv, slots, d]: slot `slot` of every KV
// head receives rotated k and v. inv_freq [d/2] f32 and scale: the layer's, as rope_qk_bf16's.
extern "C" __global__ void __launch_bounds__(128)
    decode_rope_kv_bf16(bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                        bf16* __restrict__ kc, bf16* __restrict__ vc, const float* __restrict__ inv_freq, int nh,
                        int nkv, int d, int pos, int slot, int slots, float scale) {
  const int half = d / 2;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= half) return;
  // The angle exactly as rope.cu computes it (prefill and step rotate position p identically).
  float c, s;
  rope_cos_sin(inv_freq, i, pos, scale, c, s);
  for (int hh = 0; hh < nh; ++hh) {
    bf16* x = q + (size_t)hh * d;
    const float a = bf2f(x[i]), b = bf2f(x[i + half]);
    x[i] = f2bf(a * c - b * s);
    x[i + half] = f2bf(b * c + a * s);
  }
  for (int g = 0; g < nkv; ++g) {
    const bf16* kr = k + (size_t)g * d;
    const bf16* vr = v + (size_t)g * d;
    const size_t o = ((size_t)g * slots + slot) * d;
    const float a = bf2f(kr[i]), b = bf2f(kr[i + half]);
    kc[o + i] = f2bf(a * c - b * s);
    kc[o + i + half] = f2bf(b * c + a * s);
    vc[o + i] = vr[i];
    vc[o + i + half] = vr[i + half];
  }
}

// Prefill cache write. Grid T - first, block 128. k, v [T, nkv, d] bf16 (d % 8 == 0); row
// r = first + blockIdx.x holds position pos0 + r, stored in slot (pos0 + r) % slots on a ring,
// pos0 + r otherwise, of kc, vc [nkv, slots, d].
extern "C" __global__ void __launch_bounds__(128)
    decode_kv_write_bf16(const bf16* __restrict__ k, const bf16* __restrict__ v, bf16* __restrict__ kc,
                         bf16* __restrict__ vc, int nkv, int d, int pos0, int first, int slots, int ring) {
  const int r = first + blockIdx.x;
  const int pos = pos0 + r;
  const int slot = ring ? pos % slots : pos;
  const int cpr = d >> 3;  // 16-byte chunks per head row
  const uint4* ks = reinterpret_cast<const uint4*>(k + (size_t)r * nkv * d);
  const uint4* vs = reinterpret_cast<const uint4*>(v + (size_t)r * nkv * d);
  for (int e = threadIdx.x; e < nkv * cpr; e += blockDim.x) {
    const int g = e / cpr, c = e % cpr;
    const size_t o = ((size_t)g * slots + slot) * cpr + c;  // in chunks
    reinterpret_cast<uint4*>(kc)[o] = ks[e];
    reinterpret_cast<uint4*>(vc)[o] = vs[e];
  }
}
