// gemm.cu — bf16 tensor-core GEMMs with f32 accumulation.
//
//   gemm_nt_bf16:        Y[M,N] = X[M,K] · W[N,K]ᵀ   (HF Linear: W is [out, in], K-contiguous)
//   gram_tn_bf16:        G[I,I] += Aᵀ·A, A = [T, I]  (Gram matrix of MLP activations, f32)
//   gram_symmetrize_f32: copies the computed upper block triangle of G onto the lower one
//   gemm_nt_bf16_sm90:   gemm_nt_bf16 on Hopper's wgmma (sm_90a; design note at the kernel)
//   gram_nt_bf16_sm90:   the Gram matrix on the same wgmma tiles, from transposed activations
//   gemm_nt_bf16_sm90_tma: the same on wgmma fed by TMA copies, warp-specialized and persistent
//   transpose_bf16:      [rows, cols] -> [cols, rows] (for gram_nt_bf16_sm90)
//
// Design (sm_80 recipe; runs unchanged on sm_86/89/90):
// - CTA tile 128x128, BK = 32, 8 warps as 2 (M) x 4 (N), warp tile 64x32 = 4x4 mma tiles of
//   m16n8k16 (`mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`): 64 f32 accumulators per
//   thread. __launch_bounds__(256, 2) caps registers at 128 so two CTAs share an SM.
// - 4-stage cp.async pipeline (16 KB per stage, 64 KB dynamic shared memory): tile kt+3 is in
//   flight while tile kt is multiplied. One __syncthreads per k-tile.
// - Shared memory is XOR-swizzled in 16-byte chunks so every ldmatrix phase (8 rows at one
//   logical chunk) hits 8 distinct bank groups:
//     NT tiles [rows][32]: 4 chunks per 64-byte row, chunk' = chunk ^ ((row >> 1) & 3)
//     TN tiles [32][128]:  16 chunks per 256-byte row, chunk' = chunk ^ (row & 7)
// - Fragments come from ldmatrix.x4 (NT: plain, both operands are K-contiguous, exactly the
//   row.col layout the MMA wants) or ldmatrix.x4.trans (TN/Gram: both operands are M/N-contiguous).
// - Ragged edges: rows past M or N and k past K are zero-filled by cp.async's src-size operand,
//   so the MMAs see zeros and the epilogue simply skips out-of-range stores. The cp.async path
//   needs 16-byte chunks that are either fully inside or fully outside the matrix and 16-byte
//   aligned rows: K % 8 == 0 (NT), I % 8 == 0 (Gram), leading dimensions % 8 == 0 and 16-byte
//   aligned base pointers. The `_unaligned` entry points drop that precondition: they gather the
//   same tiles element by element with ordinary loads (correct for any shape, slower); the host
//   launcher picks the variant.
// - Grid: blockIdx.x walks M tiles fastest, so consecutive CTAs reuse one W tile from L2.
// - Epilogue modes: bf16 output (round to nearest even), f32 output, f32 accumulate (C += AB),
//   any combination of the first two; Gram always accumulates in f32 and only computes tiles on
//   or above the block diagonal (gram_symmetrize_f32 fills the rest once, at the end).
#include "common.cuh"

namespace gemm {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 4, THREADS = 256;
constexpr int WM = 64, WN = 32;           // warp tile
constexpr int MT = WM / 16, NT = WN / 8;  // mma tiles per warp: 4 x 4
constexpr int A_STAGE = BM * BK;          // elements per stage and operand (both layouts)
constexpr int B_STAGE = BN * BK;
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 2;  // 65536
static_assert(A_STAGE == 4096 && B_STAGE == 4096, "tile sizes");

// NT tile [128 rows][32 k]: element offset of (row r, 16-byte chunk c).
__device__ __forceinline__ int nt_off(int r, int c) { return r * BK + ((c ^ ((r >> 1) & 3)) << 3); }
// TN tile [32 k][128 cols]: element offset of (k row r, chunk c).
__device__ __forceinline__ int tn_off(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 3); }

// Gathers 8 consecutive elements (row r, columns col..col+7) with bounds checks into one chunk.
__device__ __forceinline__ void gather8(bf16* dst, const bf16* row_ptr, bool row_ok, int col, int ncols) {
  union {
    uint4 v;
    unsigned short h[8];
  } u;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    u.h[j] = (row_ok && col + j < ncols) ? __bfloat16_as_ushort(row_ptr[col + j]) : (unsigned short)0;
  *reinterpret_cast<uint4*>(dst) = u.v;
}

// One NT operand tile: rows [r0, r0+128) of a [rows, K] matrix, k in [k0, k0+32).
template <bool ALIGNED>
__device__ __forceinline__ void load_nt(bf16* s, const bf16* g, int ld, int r0, int rows, int k0, int K, int tid) {
#pragma unroll
  for (int i = 0; i < (128 * 4) / THREADS; ++i) {
    const int id = tid + i * THREADS;
    const int r = id >> 2, c = id & 3;
    const int k = k0 + c * 8;
    const bool row_ok = r0 + r < rows;
    bf16* dst = s + nt_off(r, c);
    if constexpr (ALIGNED) {
      const bool ok = row_ok && k < K;  // K % 8 == 0: a chunk is entirely in or out
      const bf16* src = ok ? g + (size_t)(r0 + r) * ld + k : g;
      cp_async_16(smem_u32(dst), src, ok ? 16 : 0);
    } else {
      gather8(dst, g + (size_t)(row_ok ? r0 + r : 0) * ld, row_ok, k, K);
    }
  }
}

// One TN operand tile: k rows [k0, k0+32) of a [K, cols] matrix, columns [c0, c0+128).
template <bool ALIGNED>
__device__ __forceinline__ void load_tn(bf16* s, const bf16* g, int ld, int k0, int K, int c0, int cols, int tid) {
#pragma unroll
  for (int i = 0; i < (32 * 16) / THREADS; ++i) {
    const int id = tid + i * THREADS;
    const int r = id >> 4, c = id & 15;
    const int col = c0 + c * 8;
    const bool row_ok = k0 + r < K;
    bf16* dst = s + tn_off(r, c);
    if constexpr (ALIGNED) {
      const bool ok = row_ok && col < cols;  // cols % 8 == 0
      const bf16* src = ok ? g + (size_t)(k0 + r) * ld + col : g;
      cp_async_16(smem_u32(dst), src, ok ? 16 : 0);
    } else {
      gather8(dst, g + (size_t)(row_ok ? k0 + r : 0) * ld, row_ok, col, cols);
    }
  }
}

// The main loop shared by both layouts: accumulates this CTA's 128x128 tile into acc.
//   TN == false: A = X [M, K] (lda), B = W [N, K] (ldb)
//   TN == true:  A = [K, M] (lda), B = [K, N] (ldb)   (Gram: both the same [T, I] matrix)
template <bool TN, bool ALIGNED>
__device__ __forceinline__ void mainloop(float (&acc)[MT][NT][4], const bf16* __restrict__ A,
                                         const bf16* __restrict__ B, int lda, int ldb, int m0, int n0,
                                         int M, int N, int K, bf16* smem) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm0 = (warp >> 2) * WM;  // warp row offset in the CTA tile
  const int wn0 = (warp & 3) * WN;   // warp column offset
  bf16* sA = smem;
  bf16* sB = smem + STAGES * A_STAGE;
  const int ktiles = CEIL_DIV(K, BK);

#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * BK;
    if constexpr (TN) {
      load_tn<ALIGNED>(sA + stage * A_STAGE, A, lda, k0, K, m0, M, tid);
      load_tn<ALIGNED>(sB + stage * B_STAGE, B, ldb, k0, K, n0, N, tid);
    } else {
      load_nt<ALIGNED>(sA + stage * A_STAGE, A, lda, m0, M, k0, K, tid);
      load_nt<ALIGNED>(sB + stage * B_STAGE, B, ldb, n0, N, k0, K, tid);
    }
  };

  // Prologue: STAGES-1 tiles in flight (empty groups keep the group count uniform).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    // Groups committed so far: kt + STAGES - 1; allowing STAGES - 2 pending means tile kt landed.
    cp_async_wait<STAGES - 2>();
    // Also: every warp has finished tile kt-1, whose stage is refilled next.
    __syncthreads();
    {
      const int pf = kt + STAGES - 1;
      if (pf < ktiles) load_stage(pf % STAGES, pf);
      cp_async_commit();
    }
    const bf16* a_s = sA + (kt % STAGES) * A_STAGE;
    const bf16* b_s = sB + (kt % STAGES) * B_STAGE;

#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[MT][4];
      uint32_t bfr[NT][2];
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        if constexpr (TN) {
          // Matrices: 0 = (m 0-7, k 0-7), 1 = (m 8-15, k 0-7), 2 = (m 0-7, k 8-15), 3 = (m 8-15, k 8-15),
          // each stored k-major; .trans hands lane (m g, k 2t..2t+1).
          const int idx = lane >> 3;
          const int r = ks * 16 + ((idx >> 1) << 3) + (lane & 7);
          const int m = wm0 + mi * 16 + ((idx & 1) << 3);
          ldmatrix_x4_trans(af[mi][0], af[mi][1], af[mi][2], af[mi][3], smem_u32(a_s + tn_off(r, m >> 3)));
        } else {
          const int r = wm0 + mi * 16 + (lane & 15);
          const int c = ks * 2 + (lane >> 4);
          ldmatrix_x4(af[mi][0], af[mi][1], af[mi][2], af[mi][3], smem_u32(a_s + nt_off(r, c)));
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        if constexpr (TN) {
          // Matrices: 0 = (n 0-7, k 0-7), 1 = (n 0-7, k 8-15), 2 = (n 8-15, k 0-7), 3 = (n 8-15, k 8-15).
          const int idx = lane >> 3;
          const int r = ks * 16 + ((idx & 1) << 3) + (lane & 7);
          const int n = wn0 + np * 16 + ((idx >> 1) << 3);
          ldmatrix_x4_trans(bfr[2 * np][0], bfr[2 * np][1], bfr[2 * np + 1][0], bfr[2 * np + 1][1],
                            smem_u32(b_s + tn_off(r, n >> 3)));
        } else {
          // Same four matrices, stored n-major (K-contiguous rows): no transpose needed.
          const int r = wn0 + np * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int c = ks * 2 + ((lane >> 3) & 1);
          ldmatrix_x4(bfr[2 * np][0], bfr[2 * np][1], bfr[2 * np + 1][0], bfr[2 * np + 1][1],
                      smem_u32(b_s + nt_off(r, c)));
        }
      }
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int ni = 0; ni < NT; ++ni) mma_bf16_16816(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
    }
  }
  // Drain (only empty groups can be pending here) so the CTA exits with no copies in flight.
  cp_async_wait<0>();
}

// Stores the outputs (row, col) and (row, col+1) of a tile: bf16 to Yb and/or f32 to Yf
// (accumulating when `accumulate`), skipping what lies past M or N. Pair stores need an even
// row stride (4-byte alignment; the column is always even).
__device__ __forceinline__ void store_pair(bf16* __restrict__ Yb, float* __restrict__ Yf, int ldc, int accumulate,
                                           int row, int col, int M, int N, float v0, float v1) {
  if (row >= M || col >= N) return;
  const bool two = col + 1 < N, pair_ok = (ldc & 1) == 0;
  const size_t o = (size_t)row * ldc + col;
  if (Yf) {
    if (accumulate) {
      Yf[o] += v0;
      if (two) Yf[o + 1] += v1;
    } else if (two && pair_ok) {
      *reinterpret_cast<float2*>(Yf + o) = make_float2(v0, v1);
    } else {
      Yf[o] = v0;
      if (two) Yf[o + 1] = v1;
    }
  }
  if (Yb) {
    if (two && pair_ok) {
      *reinterpret_cast<bf162*>(Yb + o) = __floats2bfloat162_rn(v0, v1);
    } else {
      Yb[o] = f2bf(v0);
      if (two) Yb[o + 1] = f2bf(v1);
    }
  }
}

// Writes acc (the mma.sync layout: 2 x 4 warps of 64 x 32) through store_pair.
__device__ __forceinline__ void epilogue(const float (&acc)[MT][NT][4], bf16* __restrict__ Yb,
                                         float* __restrict__ Yf, int ldc, int accumulate, int m0, int n0,
                                         int M, int N) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm0 = (warp >> 2) * WM, wn0 = (warp & 3) * WN;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        store_pair(Yb, Yf, ldc, accumulate, m0 + wm0 + mi * 16 + g + half * 8, n0 + wn0 + ni * 8 + 2 * t, M, N,
                   acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
}

template <bool ALIGNED>
__device__ __forceinline__ void gemm_nt(const bf16* X, const bf16* W, bf16* Yb, float* Yf, int M, int N, int K,
                                        int lda, int ldb, int ldc, int accumulate) {
  DYNAMIC_SMEM(smem_raw);
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  float acc[MT][NT][4];
  mainloop<false, ALIGNED>(acc, X, W, lda, ldb, m0, n0, M, N, K, smem);
  epilogue(acc, Yb, Yf, ldc, accumulate, m0, n0, M, N);
}

template <bool ALIGNED>
__device__ __forceinline__ void gram_tn(const bf16* A, float* G, int T, int I, int lda) {
  // Only tiles on or above the block diagonal; the grid is square, so half the CTAs leave at once.
  if (blockIdx.y < blockIdx.x) return;
  DYNAMIC_SMEM(smem_raw);
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  float acc[MT][NT][4];
  mainloop<true, ALIGNED>(acc, A, A, lda, lda, m0, n0, I, I, T, smem);
  epilogue(acc, nullptr, G, I, 1, m0, n0, I, I);
}
}  // namespace gemm

// ---------------------------------------------------------------------------------------------
// Entry points. Grid (CEIL_DIV(M,128), CEIL_DIV(N,128)), block 256, dynamic smem 65536 bytes.

// Y = X · Wᵀ. X [M, K] row stride lda, W [N, K] row stride ldb, Y [M, N] row stride ldc.
// Yb (bf16) and/or Yf (f32) may be null; accumulate != 0 adds into Yf instead of overwriting.
// Requires K % 8 == 0, lda % 8 == 0, ldb % 8 == 0 and 16-byte aligned X and W.
extern "C" __global__ void __launch_bounds__(gemm::THREADS, 2)
    gemm_nt_bf16(const bf16* __restrict__ X, const bf16* __restrict__ W, bf16* __restrict__ Yb,
                 float* __restrict__ Yf, int M, int N, int K, int lda, int ldb, int ldc, int accumulate) {
  gemm::gemm_nt<true>(X, W, Yb, Yf, M, N, K, lda, ldb, ldc, accumulate);
}

// Same contract without the alignment preconditions.
extern "C" __global__ void __launch_bounds__(gemm::THREADS, 2)
    gemm_nt_bf16_unaligned(const bf16* __restrict__ X, const bf16* __restrict__ W, bf16* __restrict__ Yb,
                           float* __restrict__ Yf, int M, int N, int K, int lda, int ldb, int ldc,
                           int accumulate) {
  gemm::gemm_nt<false>(X, W, Yb, Yf, M, N, K, lda, ldb, ldc, accumulate);
}

// G[I, I] += Aᵀ A for A [T, I] with row stride lda; only block-upper tiles (128x128 blocks with
// block column >= block row) are updated. Grid (CEIL_DIV(I,128), CEIL_DIV(I,128)).
// Requires I % 8 == 0, lda % 8 == 0, 16-byte aligned A.
extern "C" __global__ void __launch_bounds__(gemm::THREADS, 2)
    gram_tn_bf16(const bf16* __restrict__ A, float* __restrict__ G, int T, int I, int lda) {
  gemm::gram_tn<true>(A, G, T, I, lda);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 2)
    gram_tn_bf16_unaligned(const bf16* __restrict__ A, float* __restrict__ G, int T, int I, int lda) {
  gemm::gram_tn<false>(A, G, T, I, lda);
}

// ---------------------------------------------------------------------------------------------
// gemm_nt_bf16_sm90: the same Y = X·Wᵀ contract as gemm_nt_bf16 on Hopper's warpgroup MMA.
//
// - CTA tile 128x128, BK = 64, 256 threads = 2 warpgroups, each owning 64 rows x 128 columns:
//   wgmma.mma_async m64n128k16 (bf16 in, f32 accumulate), A and B straight from shared memory
//   through matrix descriptors, 64 f32 accumulators per thread.
// - Tiles are K-major rows of 64 elements (128 B) with the 128-byte swizzle (16-byte chunk c of
//   row r stored at chunk c ^ (r & 7), 1024-byte aligned 8-row atoms): the layout the descriptor
//   names, and conflict-free for the cp.async stores. The k16 steps advance the descriptors'
//   start address by 32 bytes inside the 128-byte rows.
// - 4-stage cp.async pipeline (32 KB per stage, 129 KB of dynamic shared memory with the
//   alignment slack); the copies are ordered before the tensor cores' reads by
//   fence.proxy.async + __syncthreads. The MMAs of a k-tile are waited for before the next
//   k-tile's barrier, so refilling the stage read one step earlier is safe.
// - Same preconditions as gemm_nt_bf16 (K % 8 == 0, lda/ldb % 8 == 0, 16-byte aligned bases);
//   ragged M/N/K are zero-filled by cp.async and skipped by store_pair.
// - Built as real code only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); the host launches it only on
//   compute capability 9.0, after a one-time self-check against gemm_nt_bf16 (src/cuda/ops.rs).
// Not yet: TMA loads, a producer warpgroup with setmaxnreg, MMAs overlapping the next k-tile,
// persistent tiles (docs/perf-notes.md).
namespace gemm90 {
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 4, THREADS = 256;
constexpr int TILE_BYTES = BM * BK * 2;  // one operand's stage: 16 KB (BM == BN)
constexpr int SMEM_BYTES = STAGES * 2 * TILE_BYTES + 1024;

// Byte offset of (row r, 16-byte chunk c) in a swizzled [rows][64] tile.
__device__ __forceinline__ uint32_t sw128(int r, int c) { return (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4)); }

// Writes a warpgroup's wgmma accumulators (the m64nN layout of common.cuh, N = 2·A) for output
// rows m0 .. m0+63 and columns n0 .. n0+N-1 through gemm::store_pair (bounds, modes).
template <int A>
__device__ __forceinline__ void store_acc(const float (&acc)[A], bf16* __restrict__ Yb, float* __restrict__ Yf,
                                          int ldc, int accumulate, int m0, int n0, int M, int N) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < A / 4; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      gemm::store_pair(Yb, Yf, ldc, accumulate, m0 + w * 16 + g + 8 * h, n0 + 8 * j + 2 * t, M, N, acc[4 * j + 2 * h],
                       acc[4 * j + 2 * h + 1]);
}

// Rows [r0, r0+128) x k [k0, k0+64) of a [rows, K] matrix (row stride ld) into the tile at s.
__device__ __forceinline__ void load_tile(uint32_t s, const bf16* g, int ld, int r0, int rows, int k0, int K,
                                          int tid) {
#pragma unroll
  for (int i = 0; i < (BM * 8) / THREADS; ++i) {
    const int id = tid + i * THREADS;
    const int r = id >> 3, c = id & 7;
    const int k = k0 + c * 8;
    const bool ok = r0 + r < rows && k < K;  // K % 8 == 0: a chunk is entirely in or out
    const bf16* src = ok ? g + (size_t)(r0 + r) * ld + k : g;
    cp_async_16(s + sw128(r, c), src, ok ? 16 : 0);
  }
}
}  // namespace gemm90

namespace gemm90 {
// The CTA body of both sm90 entry points. TRIANGLE: only tiles on or above the block diagonal
// (the Gram matrix, X == W).
template <bool TRIANGLE>
__device__ __forceinline__ void nt_tile(const bf16* __restrict__ X, const bf16* __restrict__ W,
                                        bf16* __restrict__ Yb, float* __restrict__ Yf, int M, int N, int K, int lda,
                                        int ldb, int ldc, int accumulate) {
#if defined(WHITTLE_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (TRIANGLE && blockIdx.y < blockIdx.x) return;
  DYNAMIC_SMEM(smem_raw);
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // swizzle atoms need 1024-byte alignment
  const int tid = threadIdx.x, wg = tid >> 7;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int ktiles = CEIL_DIV(K, BK);
  auto a_tile = [&](int stage) { return base + (uint32_t)(stage * 2 * TILE_BYTES); };
  auto b_tile = [&](int stage) { return base + (uint32_t)(stage * 2 * TILE_BYTES + TILE_BYTES); };
  auto load_stage = [&](int stage, int kt) {
    load_tile(a_tile(stage), X, lda, m0, M, kt * BK, K, tid);
    load_tile(b_tile(stage), W, ldb, n0, N, kt * BK, K, tid);
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    fence_proxy_async();
    __syncthreads();
    {
      const int pf = kt + STAGES - 1;
      if (pf < ktiles) load_stage(pf % STAGES, pf);
      cp_async_commit();
    }
    // This warpgroup's 64 rows of A: 64 rows x 128 B further in (still 1024-aligned).
    const uint32_t a = a_tile(kt % STAGES) + (uint32_t)(wg * 64 * 128), b = b_tile(kt % STAGES);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks)
      wgmma_m64n128k16(acc, wgmma_desc_sw128(a + ks * 32), wgmma_desc_sw128(b + ks * 32), 1);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_acc(acc);
  }
  cp_async_wait<0>();

  store_acc(acc, Yb, Yf, ldc, accumulate, m0 + wg * 64, n0, M, N);
#else
  __trap();
#endif
}
}  // namespace gemm90

// Grid (CEIL_DIV(M,128), CEIL_DIV(N,128)), block 256, dynamic smem gemm90::SMEM_BYTES.
extern "C" __global__ void __launch_bounds__(gemm90::THREADS, 1)
    gemm_nt_bf16_sm90(const bf16* __restrict__ X, const bf16* __restrict__ W, bf16* __restrict__ Yb,
                      float* __restrict__ Yf, int M, int N, int K, int lda, int ldb, int ldc, int accumulate) {
  gemm90::nt_tile<false>(X, W, Yb, Yf, M, N, K, lda, ldb, ldc, accumulate);
}

// G[I, I] += At·Atᵀ for At = Aᵀ [I, T] (row stride lda): the Gram matrix Aᵀ·A from the transposed
// activations (transpose_bf16), K-major as wgmma wants both operands. Only block-upper tiles, as
// gram_tn_bf16 (gram_symmetrize_f32 mirrors them). Grid (CEIL_DIV(I,128), CEIL_DIV(I,128)),
// block 256, dynamic smem gemm90::SMEM_BYTES. Requires T % 8 == 0, lda % 8 == 0.
extern "C" __global__ void __launch_bounds__(gemm90::THREADS, 1)
    gram_nt_bf16_sm90(const bf16* __restrict__ At, float* __restrict__ G, int I, int T, int lda) {
  gemm90::nt_tile<true>(At, At, nullptr, G, I, I, T, lda, lda, I, 1);
}

// ---------------------------------------------------------------------------------------------
// gemm_nt_bf16_sm90_tma: Y = X·Wᵀ on Hopper with the copy engine feeding the tensor cores.
//
// - Warp-specialized, 384 threads = 3 warpgroups. Warpgroup 0 is the producer: one thread issues
//   the TMA box copies (X 128 × 64 and W 256 × 64 per k-tile, 128-byte swizzle done by the copy
//   engine, ragged edges zero-filled by it) and hands its registers to the consumers
//   (setmaxnreg). Warpgroups 1 and 2 are consumers: each owns 64 rows × 256 columns of the
//   128 × 256 CTA tile, wgmma m64n256k16 straight from shared memory, 128 f32 accumulators per
//   thread.
// - 4 stages of 48 KB (X + W tiles, 1024-byte aligned swizzle atoms), each with two mbarriers:
//   `full` (1 arrival: the producer's arrive.expect_tx, plus 48 KB of copy transactions) and
//   `empty` (8 arrivals: lane 0 of each consumer warp once the MMAs that read the stage are
//   done). Consumers keep one k-tile of MMAs in flight (wgmma.wait_group 1) and release the
//   stage before it, so the copy engine, the tensor cores and the barrier waits overlap.
// - Persistent: gridDim.x = min(tiles, SMs) CTAs walk the tiles (M tiles fastest, so concurrent
//   CTAs share W tiles in L2); the stage ring and its phases run on across tiles, so the producer
//   loads the next tile's first k-tiles while the consumers store the previous one.
// - Epilogue straight from registers (store_pair: bf16 and/or f32, accumulate, bounds).
// - `mode` MODE_GRAM makes it the Gram matrix's kernel too: X == W == Aᵀ [I, T] (transpose_bf16),
//   f32 accumulate, only tiles that touch the block-upper triangle (skip_tile).
// - `mode` MODE_GATE_UP fuses the MLP's input side: the W stage is W_gate rows [n0, n0+128) over
//   W_up rows [n0, n0+128) (two 128-row boxes, maps tw and tw2), so each consumer holds gate and
//   up for the same 128 output columns (accumulators j < 16 and j + 16) and writes
//   act = f(gate)·up in bf16, f gelu_tanh or SiLU by the mode (act_mul_bf16: transformers'
//   rounding). Gate and up never
//   reach memory: the separate path writes and re-reads both [M, I] (4 passes of M·I·2 bytes).
// - Preconditions (host): compute capability 9.0, K % 8 == 0 and 16-byte aligned bases (TMA
//   strides are multiples of 16 bytes). The host checks it once against gemm_nt_bf16 before use.
namespace gemm90t {
constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4, THREADS = 384;
constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;  // 16 KB, 32 KB
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int EMPTY_ARRIVALS = 8;  // 2 consumer warpgroups × 4 warps
// Tiles, alignment slack for the 1024-byte atoms, then 2 × STAGES mbarriers of 8 bytes.
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024 + 2 * STAGES * 8;

// MODE_GATE_UP + ACT_* (common.cuh) selects the gate activation: 2 gelu_tanh, 3 SiLU.
constexpr int MODE_PLAIN = 0, MODE_GRAM = 1, MODE_GATE_UP = 2;

// Gram mode: G is symmetric and gram_symmetrize_f32 mirrors every 128 × 128 block below the
// diagonal at the end, so a 128 × 256 tile is needed only if one of its two 128-column blocks is
// on or above the row block's diagonal. Producer and consumers skip the same tiles.
__device__ __forceinline__ bool skip_tile(int tile, int gm, int mode) {
  return mode == MODE_GRAM && (tile % gm) > 2 * (tile / gm) + 1;
}

// MODE_GATE_UP's epilogue: accumulator columns j < 16 are gate, j + 16 the up of the same output
// columns n0 + 8j + 2t + e; act rows m0 + 16w + g (+8); fn the activation (ACT_*).
__device__ __forceinline__ void store_gate_up(const float (&acc)[128], bf16* __restrict__ act, int ldc, int m0,
                                              int n0, int M, int N, int fn) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = 4 * j + 2 * h;
      gemm::store_pair(act, nullptr, ldc, 0, m0 + w * 16 + g + 8 * h, n0 + 8 * j + 2 * t, M, N,
                       act_mul_bf16(fn, acc[i], acc[i + 64]), act_mul_bf16(fn, acc[i + 1], acc[i + 65]));
    }
}
}  // namespace gemm90t

// Grid (min(tiles, SMs)), block 384, dynamic smem gemm90t::SMEM_BYTES. tx: X [M, K] as a 2-D map
// (dims {K, M}, box {64, 128}); tw: W [N, K] (dims {K, N}, box {64, 256}); both bf16, 128B swizzle.
// mode: MODE_PLAIN (Y = X·Wᵀ), MODE_GRAM (see skip_tile), MODE_GATE_UP + ACT_* (tw = W_gate,
// tw2 = W_up, both [N = I, K] with boxes {64, 128}; Yb = act [M, N]; tw2 is ignored by the other
// modes).
extern "C" __global__ void __launch_bounds__(gemm90t::THREADS, 1)
    gemm_nt_bf16_sm90_tma(const __grid_constant__ TmaMap tx, const __grid_constant__ TmaMap tw,
                          const __grid_constant__ TmaMap tw2, bf16* __restrict__ Yb, float* __restrict__ Yf,
                          int M, int N, int K, int ldc, int accumulate, int mode) {
#if defined(WHITTLE_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace gemm90t;
  DYNAMIC_SMEM(smem_raw);
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t full0 = base + STAGES * STAGE_BYTES, empty0 = full0 + STAGES * 8;
  const int tid = threadIdx.x, wg = tid >> 7;
  const bool gate_up = mode >= MODE_GATE_UP;
  const int bn = gate_up ? BN / 2 : BN;  // output columns per tile
  const int gm = CEIL_DIV(M, BM), tiles = gm * CEIL_DIV(N, bn), ktiles = CEIL_DIV(K, BK);
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, EMPTY_ARRIVALS);
    }
    fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      int stage = 0;
      uint32_t phase = 0;
      for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        if (skip_tile(tile, gm, mode)) continue;
        const int m0 = (tile % gm) * BM, n0 = (tile / gm) * bn;
        for (int kt = 0; kt < ktiles; ++kt) {
          mbar_wait(empty0 + 8 * stage, phase ^ 1);  // first pass: a fresh barrier, returns at once
          const uint32_t full = full0 + 8 * stage, a = base + stage * STAGE_BYTES;
          mbar_arrive_expect_tx(full, STAGE_BYTES);  // gate/up: two 16 KB boxes, the same bytes
          tma_load_2d(a, &tx, kt * BK, m0, full);
          tma_load_2d(a + A_BYTES, &tw, kt * BK, n0, full);
          if (gate_up) tma_load_2d(a + A_BYTES + B_BYTES / 2, &tw2, kt * BK, n0, full);
          if (++stage == STAGES) stage = 0, phase ^= 1;
        }
      }
    }
  } else {  // consumers
    setmaxnreg_inc<232>();
    const int c = wg - 1, lane = tid & 31;
    int stage = 0;
    uint32_t phase = 0;
    float acc[128];
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      if (skip_tile(tile, gm, mode)) continue;
      const int m0 = (tile % gm) * BM, n0 = (tile / gm) * bn;
#pragma unroll
      for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
      wgmma_fence_acc(acc);
      int held = -1;  // the stage whose MMAs may still be reading it
      for (int kt = 0; kt < ktiles; ++kt) {
        mbar_wait(full0 + 8 * stage, phase);
        // This consumer's 64 rows of the X tile: 64 rows × 128 B further in (1024-aligned).
        const uint32_t a = base + stage * STAGE_BYTES + (uint32_t)(c * 64 * 128), b = base + stage * STAGE_BYTES + A_BYTES;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks)
          wgmma_m64n256k16(acc, wgmma_desc_sw128(a + ks * 32), wgmma_desc_sw128(b + ks * 32), 1);
        wgmma_commit();
        wgmma_wait<1>();  // the previous k-tile's MMAs are done: its stage can be refilled
        if (held >= 0 && lane == 0) mbar_arrive(empty0 + 8 * held);
        held = stage;
        if (++stage == STAGES) stage = 0, phase ^= 1;
      }
      wgmma_wait<0>();
      wgmma_fence_acc(acc);
      if (held >= 0 && lane == 0) mbar_arrive(empty0 + 8 * held);
      if (gate_up) {
        store_gate_up(acc, Yb, ldc, m0 + c * 64, n0, M, N, mode - MODE_GATE_UP);
      } else {
        gemm90::store_acc(acc, Yb, Yf, ldc, accumulate, m0 + c * 64, n0, M, N);
      }
    }
  }
#else
  __trap();
#endif
}

// out[c, r] = in[r, c] for in [rows, cols] (bf16, row strides = cols and rows). 32×32 tiles
// through shared memory (padded: no bank conflicts). Grid (CEIL_DIV(cols,32), CEIL_DIV(rows,32)),
// block (32, 8).
extern "C" __global__ void transpose_bf16(const bf16* __restrict__ in, bf16* __restrict__ out, int rows, int cols) {
  __shared__ unsigned short tile[32][33];
  const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
  for (int dy = threadIdx.y; dy < 32; dy += 8) {
    const int r = r0 + dy, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[dy][threadIdx.x] = __bfloat16_as_ushort(in[(size_t)r * cols + c]);
  }
  __syncthreads();
  for (int dy = threadIdx.y; dy < 32; dy += 8) {
    const int c = c0 + dy, r = r0 + threadIdx.x;  // output row c, column r
    if (c < cols && r < rows) out[(size_t)c * rows + r] = __ushort_as_bfloat16(tile[threadIdx.x][dy]);
  }
}

// For every (r, c) whose 128-block row is below its 128-block column's diagonal
// (r / 128 > c / 128): G[r, c] = G[c, r]. Grid (CEIL_DIV(I,32), CEIL_DIV(I,32)), block (32, 8).
extern "C" __global__ void gram_symmetrize_f32(float* __restrict__ G, int I) {
  const int c = blockIdx.x * 32 + threadIdx.x;
  for (int r = blockIdx.y * 32 + threadIdx.y; r < blockIdx.y * 32 + 32; r += 8) {
    if (r < I && c < I && (r / gemm::BM) > (c / gemm::BN)) G[(size_t)r * I + c] = G[(size_t)c * I + r];
  }
}
