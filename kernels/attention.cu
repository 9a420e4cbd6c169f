// attention.cu — fused causal grouped-query attention forward (flash-attention-2 style), bf16 in
// and out, f32 scores and online softmax, no T×T matrix anywhere.
//
//   q [N, nh, d], k/v [N, nkv, d], o [N, nh, d]; N = n_seq · seq_len, sequences back to back.
//   Query head h reads kv head h / (nh / nkv). Key j is visible to query i (same sequence) iff
//   j <= i and, with a sliding window W > 0, i - j < W.
//   Scores follow transformers' eager order: s = (q·kᵀ)·scale → softcap tanh(s/cap)·cap (when
//   cap > 0) → mask → softmax (f32) → p·v.
//
// Design:
// - One CTA per (query tile, query head, sequence); 16 query rows per warp. head_dim is a
//   template parameter (32, 64, 128 or 256: attention_fwd_d{32,64,128,256}), and so is the warp
//   count: 4 warps (64 query rows) everywhere, or 8 warps (128 rows: `_w8`, d = 128 and 256)
//   where a block may have 128 KB of shared memory (sm_80, sm_90: the host chooses). Shared
//   memory holds Q (rows×d), one K tile and one V tile (64×d each): 96 KB at d = 256 with 4 warps
//   (fits the 99 KB per-block limit of sm_86/sm_89), 128 KB with 8. The 8-warp tile reads each
//   K/V tile once for twice the queries: half the L2 → shared-memory traffic per FLOP, which at
//   d = 256 is what the 4-warp tile is short of on an H100 (FA2's d = 256 tile is 128 × 64 too).
// - Load overlap without double buffers (as FA2): V_t is fetched (cp.async) while S = Q·K_tᵀ is
//   computed, and K_{t+1} while O += P·V_t is computed.
// - Both products run on tensor cores (mma.sync m16n8k16 bf16, f32 accumulators). Q and K
//   fragments come from ldmatrix.x4; V fragments from ldmatrix.x4.trans (V is key-major, the MMA
//   wants each B register to hold two consecutive keys). P never leaves registers: the S
//   accumulator layout of two adjacent n8 tiles is exactly the A-fragment layout of one k16 step
//   (rounded to bf16 there, as transformers rounds p to bf16 before p·v).
// - Shared memory rows are d·2 bytes; 16-byte chunks are XOR-swizzled with (row & 7) (d >= 64) or,
//   for 64-byte rows (d = 32), with ((row >> 1) & 3), so the 8 rows of each ldmatrix phase fall
//   in distinct bank groups.
// - Key tiles outside [max(0, i0-W+1), min(T, i0+64)) are skipped. The mask itself is evaluated on
//   every element of the visited tiles (a compare per score; cheap next to the MMAs).
// - Softmax: running row max m and row sum l per query row (f32). A row whose keys so far are all
//   masked keeps m = -inf and uses 0 as the exponent base, so exp(-inf) = 0 and no NaN appears.
//   Exponentials and tanh are the accurate expf / tanhf (no fast-math).
//
// attention_fwd_generic: the same contract for any head_dim <= 512, one warp per query row,
// scalar f32 dot products and an online softmax over the visible keys. It is the fallback for
// head dims the tensor-core kernel is not instantiated for (and a second opinion in tests);
// slow, but simple.
#include "common.cuh"

namespace attn {
constexpr int BC = 64;  // keys per tile; the query tile is 16 rows per warp

template <int D>
__device__ __forceinline__ int off(int r, int c) {
  static_assert(D == 32 || (D >= 64 && D % 64 == 0), "head_dim instantiations: 32, 64, 128, 256");
  if constexpr (D >= 64) {
    return r * D + ((c ^ (r & 7)) << 3);
  } else {
    return r * D + ((c ^ ((r >> 1) & 3)) << 3);  // 4 chunks per 64-byte row
  }
}

// Rows [r0, r0+ROWS) of a [T, stride] matrix (the head's columns start at `g`) into a swizzled
// [ROWS][D] tile by THREADS threads; rows at or past T are zero-filled.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, size_t stride, int r0, int T, int tid) {
  constexpr int CH = D / 8;
#pragma unroll 4
  for (int id = tid; id < ROWS * CH; id += THREADS) {
    const int r = id / CH, c = id % CH;
    const bool ok = r0 + r < T;
    const bf16* src = ok ? g + (size_t)(r0 + r) * stride + c * 8 : g;
    cp_async_16(smem_u32(s + off<D>(r, c)), src, ok ? 16 : 0);
  }
}

template <int D, int WARPS>
__device__ __forceinline__ void forward(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                        const bf16* __restrict__ v, bf16* __restrict__ o, int T, int nh,
                                        int nkv, float scale, float softcap, int window) {
  constexpr int BR = 16 * WARPS, THREADS = 32 * WARPS;
  DYNAMIC_SMEM(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + BR * D;
  bf16* sV = sK + BC * D;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int i0 = blockIdx.x * BR, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (nh / nkv);
  const size_t seq0 = (size_t)b * T;
  const size_t q_stride = (size_t)nh * D, kv_stride = (size_t)nkv * D;
  const bf16* qg = q + seq0 * q_stride + (size_t)h * D;
  const bf16* kg = k + seq0 * kv_stride + (size_t)kvh * D;
  const bf16* vg = v + seq0 * kv_stride + (size_t)kvh * D;

  // Key tiles any query of this tile may see.
  const int j_hi = min(T, i0 + BR);
  const int j_lo = window > 0 ? max(0, i0 - window + 1) : 0;
  const int t_lo = j_lo / BC, t_hi = CEIL_DIV(j_hi, BC);

  load_tile<D, BR, THREADS>(sQ, qg, q_stride, i0, T, tid);
  load_tile<D, BC, THREADS>(sK, kg, kv_stride, t_lo * BC, T, tid);
  cp_async_commit();

  float oacc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) oacc[n][e] = 0.0f;
  float mrow[2] = {-INFINITY, -INFINITY};  // rows g and g+8 of this warp
  float lrow[2] = {0.0f, 0.0f};            // this thread's partial row sums
  const int qrow[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};

  for (int tile = t_lo; tile < t_hi; ++tile) {
    // Q and K_tile have landed; every warp is done with V_{tile-1}.
    cp_async_wait<0>();
    __syncthreads();
    load_tile<D, BC, THREADS>(sV, vg, kv_stride, tile * BC, T, tid);
    cp_async_commit();

    // --- S = Q · K_tileᵀ (16 × 64 per warp)
    float s[BC / 8][4];
#pragma unroll
    for (int n = 0; n < BC / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[4];
      {
        const int r = warp * 16 + (lane & 15);
        const int c = ks * 2 + (lane >> 4);
        ldmatrix_x4(a[0], a[1], a[2], a[3], smem_u32(sQ + off<D>(r, c)));
      }
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        uint32_t b0, b1, b2, b3;
        const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int c = ks * 2 + ((lane >> 3) & 1);
        ldmatrix_x4(b0, b1, b2, b3, smem_u32(sK + off<D>(r, c)));
        mma_bf16_16816(s[2 * np], a, b0, b1);
        mma_bf16_16816(s[2 * np + 1], a, b2, b3);
      }
    }

    // --- scale → softcap → mask, then the online-softmax update
    const int j0 = tile * BC;
#pragma unroll
    for (int n = 0; n < BC / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = qrow[e >> 1];
        const int j = j0 + n * 8 + 2 * t4 + (e & 1);
        float x = s[n][e] * scale;
        if (softcap > 0.0f) x = tanhf(x / softcap) * softcap;
        const bool visible = j <= i && j < T && (window <= 0 || i - j < window);
        s[n][e] = visible ? x : -INFINITY;
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      // The 4 lanes of a quad share the row.
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(mrow[r], mx);
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = expf(mrow[r] - base);  // 0 when the row had nothing visible yet
      mrow[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < BC / 8; ++n) {
        const float p0 = expf(s[n][2 * r] - base), p1 = expf(s[n][2 * r + 1] - base);
        s[n][2 * r] = p0;
        s[n][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      lrow[r] = lrow[r] * corr + sum;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        oacc[n][2 * r] *= corr;
        oacc[n][2 * r + 1] *= corr;
      }
    }

    // V_tile has landed; every warp is done reading K_tile, so K_{tile+1} may overwrite it.
    cp_async_wait<0>();
    __syncthreads();
    if (tile + 1 < t_hi) load_tile<D, BC, THREADS>(sK, kg, kv_stride, (tile + 1) * BC, T, tid);
    cp_async_commit();

    // --- O += P · V_tile
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        // Matrices: 0 = (keys 0-7, d 0-7), 1 = (keys 8-15, d 0-7), 2 = (keys 0-7, d 8-15),
        // 3 = (keys 8-15, d 8-15); .trans hands lane (key 2t..2t+1, d g).
        uint32_t b0, b1, b2, b3;
        const int r = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        const int c = dp * 2 + (lane >> 4);
        ldmatrix_x4_trans(b0, b1, b2, b3, smem_u32(sV + off<D>(r, c)));
        mma_bf16_16816(oacc[2 * dp], a, b0, b1);
        mma_bf16_16816(oacc[2 * dp + 1], a, b2, b3);
      }
    }
  }
  cp_async_wait<0>();

  // --- normalise and store
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = lrow[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int i = qrow[r];
    if (i >= T) continue;
    bf16* orow = o + (seq0 + i) * q_stride + (size_t)h * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int d = n * 8 + 2 * t4;
      *reinterpret_cast<bf162*>(orow + d) = __floats2bfloat162_rn(oacc[n][2 * r] * inv, oacc[n][2 * r + 1] * inv);
    }
  }
}
}  // namespace attn

// Grid (CEIL_DIV(seq_len, 16·WARPS), nh, n_seq), block 32·WARPS, dynamic smem
// (16·WARPS + 2·64)·d·2 bytes. softcap <= 0: off. window <= 0: global attention. Requires
// nh % nkv == 0, 16-byte aligned q/k/v. `_w8` entries: 8 warps, 128 query rows per CTA.
#define ATTENTION_ENTRY(D, WARPS, SUFFIX)                                                             \
  extern "C" __global__ void __launch_bounds__(32 * WARPS, 1)                                         \
      attention_fwd_d##D##SUFFIX(const bf16* __restrict__ q, const bf16* __restrict__ k,              \
                                 const bf16* __restrict__ v, bf16* __restrict__ o, int seq_len, int nh, \
                                 int nkv, float scale, float softcap, int window) {                   \
    attn::forward<D, WARPS>(q, k, v, o, seq_len, nh, nkv, scale, softcap, window);                    \
  }
ATTENTION_ENTRY(32, 4, )
ATTENTION_ENTRY(64, 4, )
ATTENTION_ENTRY(128, 4, )
ATTENTION_ENTRY(256, 4, )
ATTENTION_ENTRY(128, 8, _w8)
ATTENTION_ENTRY(256, 8, _w8)

// Any head_dim d <= 512. Grid (CEIL_DIV(seq_len, 4), nh, n_seq), block 128 (one warp per query).
extern "C" __global__ void __launch_bounds__(128)
    attention_fwd_generic(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                          bf16* __restrict__ o, int T, int nh, int nkv, int d, float scale, float softcap,
                          int window) {
  constexpr int MAXE = 16;  // elements per lane: d <= 32 * 16
  const int lane = threadIdx.x & 31;
  const int i = blockIdx.x * 4 + (threadIdx.x >> 5);
  const int h = blockIdx.y, b = blockIdx.z;
  if (i >= T) return;
  const int kvh = h / (nh / nkv);
  const size_t seq0 = (size_t)b * T;
  const bf16* qr = q + ((seq0 + i) * nh + h) * d;
  float qv[MAXE], acc[MAXE];
#pragma unroll
  for (int e = 0; e < MAXE; ++e) {
    const int c = lane + 32 * e;
    qv[e] = c < d ? bf2f(qr[c]) : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int j_lo = window > 0 ? max(0, i - window + 1) : 0;
  for (int j = j_lo; j <= i; ++j) {
    const bf16* kr = k + ((seq0 + j) * nkv + kvh) * d;
    const bf16* vr = v + ((seq0 + j) * nkv + kvh) * d;
    float sdot = 0.0f;
#pragma unroll
    for (int e = 0; e < MAXE; ++e) {
      const int c = lane + 32 * e;
      if (c < d) sdot += qv[e] * bf2f(kr[c]);
    }
    float x = warp_sum(sdot) * scale;
    if (softcap > 0.0f) x = tanhf(x / softcap) * softcap;
    const float m_new = fmaxf(m, x);
    const float corr = expf(m - m_new);  // m = -inf on the first key: 0
    const float p = expf(x - m_new);
    l = l * corr + p;
#pragma unroll
    for (int e = 0; e < MAXE; ++e) {
      const int c = lane + 32 * e;
      acc[e] = acc[e] * corr + (c < d ? p * bf2f(vr[c]) : 0.0f);
    }
    m = m_new;
  }
  bf16* orow = o + ((seq0 + i) * nh + h) * d;
  const float inv = 1.0f / l;  // key i itself is always visible: l >= 1
#pragma unroll
  for (int e = 0; e < MAXE; ++e) {
    const int c = lane + 32 * e;
    if (c < d) orow[c] = f2bf(acc[e] * inv);
  }
}
