// linalg.cu — f64 dense linear algebra for scoring and repair: GEMM, the SPD inverse by blocked
// Gauss-Jordan sweeps, and the steps of greedy structured OBS (src/prune.rs is the reference).
//
//   dgemm_nn_f64:          C = alpha·A·B + beta·C, row-major with leading dimensions (any shape)
//   copy_scaled_f64:       dst = scale·src over a [rows, cols] window (strided both sides)
//   gram_gather_f64:       out = G[rows, cols]/div + diag_add·[row == col] from the f32 Gram
//                          matrix the calibration left on the device (index lists optional)
//   gram_diag_f64:         diag(G) as f64 (for the damping's mean)
//   sweep_block_f64:       in-place inverse of one ≤64×64 diagonal block (one CTA), flags a
//                          non-positive pivot
//   obs_pick_f64:          argmin over live neurons of ‖W[:,j]‖²/[H⁻¹]_jj (one CTA)
//   obs_column_f64:        the removed neuron's current H⁻¹ row and W column, from the stored
//                          matrices minus the pending rank-1 updates
//   obs_pend_f64:          ⟨v_b, v⟩/d_b for the pending updates, and ⟨v, v⟩
//   obs_update_f64:        O(I·H) update of every neuron's column norm and H⁻¹ diagonal
//   obs_fold_prep_f64:     [u_b/d_b] as an [I, nb] matrix for the fold GEMMs
//   obs_exact_f64:         diag(H⁻¹) and ‖W[:,j]‖² recomputed after a fold
//
// Design:
// - Why f64 on the GPU: at I = 9216 one layer's OBS and repair are ≈ 3 TFLOP (inverses of
//   [I, I] and [K, K], 84 folds, the repair products) plus 2688 passes over Wᵀ [I, H] (170 MB
//   each); the host does that in minutes per model, a GPU in seconds. f32 would lose the small
//   differences the greedy choice is made of (H is damped by only 0.001·mean diag).
// - GEMM: SIMT f64 FMA, 64×64 CTA tile, BK = 16, 256 threads each owning a 4×4 strided
//   sub-tile (rows ty+16i, columns tx+16j, so a warp reads 16 consecutive doubles of the B tile
//   and broadcasts the A values). Tensor-core DMMA (mma.sync m8n8k4 f64) would double the peak;
//   this is the simple correct version first.
// - Inverse: the block sweep (Gauss-Jordan without pivoting, valid for SPD matrices, whose pivot
//   blocks are Schur complements and stay SPD): for each 64-wide block k,
//     P⁻¹ = inv(A_kk); R = P⁻¹·A_k:; A -= A_:k·R; A_k: = R; A_:k = −A_:k·P⁻¹; A_kk = P⁻¹
//   — one rank-64 GEMM over the whole matrix per block (2n³ flops in all), no triangular solves.
// - OBS: the lazy blocked form of src/prune.rs. Pending updates (u_b, v_b, d_b) live in
//   US [32, I], VS [32, H], DS [32]; the removed index travels in device memory (`removed`), so the
//   host launches the four kernels of a step without waiting for the GPU.
// - Every reduction has a fixed order (warp trees over fixed strides): results repeat bit for bit
//   run to run, and differ from the host's only by rounding.
#include "common.cuh"

namespace la {
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;
constexpr int SWEEP = 64;  // block size of the inverse
constexpr int MAX_PENDING = 32;
}  // namespace la

// C[M,N] (row stride ldc) = alpha·A[M,K]·B[K,N] + beta·C; A row stride lda, B row stride ldb.
// beta == 0 never reads C. Grid (CEIL_DIV(N,64), CEIL_DIV(M,64)), block 256.
extern "C" __global__ void __launch_bounds__(la::THREADS)
    dgemm_nn_f64(const double* __restrict__ A, const double* __restrict__ B, double* __restrict__ C, int M, int N,
                 int K, int lda, int ldb, int ldc, double alpha, double beta) {
  using namespace la;
  __shared__ double sA[BK][BM];  // transposed: sA[k][m]
  __shared__ double sB[BK][BN];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  double acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0;
  for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int e = 0; e < (BM * BK) / THREADS; ++e) {
      const int id = tid + e * THREADS;
      const int r = id / BK, c = id % BK;  // A tile: 16 consecutive k per row
      const int gm = m0 + r, gk = k0 + c;
      sA[c][r] = (gm < M && gk < K) ? A[(size_t)gm * lda + gk] : 0.0;
    }
#pragma unroll
    for (int e = 0; e < (BK * BN) / THREADS; ++e) {
      const int id = tid + e * THREADS;
      const int r = id / BN, c = id % BN;
      const int gk = k0 + r, gn = n0 + c;
      sB[r][c] = (gk < K && gn < N) ? B[(size_t)gk * ldb + gn] : 0.0;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      double a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = sA[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = sB[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int gn = n0 + tx + 16 * j;
      if (gn >= N) continue;
      double* c = C + (size_t)gm * ldc + gn;
      *c = beta == 0.0 ? alpha * acc[i][j] : fma(alpha, acc[i][j], beta * *c);
    }
  }
}

// dst[r, c] = scale·src[r, c] for r < rows, c < cols (row strides lds, ldd; distinct buffers).
// Grid (CEIL_DIV(cols, 32), CEIL_DIV(rows, 8)), block (32, 8).
extern "C" __global__ void copy_scaled_f64(const double* __restrict__ src, double* __restrict__ dst, int rows,
                                           int cols, int lds, int ldd, double scale) {
  const int c = blockIdx.x * 32 + threadIdx.x, r = blockIdx.y * 8 + threadIdx.y;
  if (r < rows && c < cols) dst[(size_t)r * ldd + c] = scale * src[(size_t)r * lds + c];
}

// out[r, c] = G[ri, ci]/div + (ri == ci ? diag_add : 0), ri = rows ? rows[r] : r,
// ci = cols ? cols[c] : c; G [n, n] f32 (row stride ldg), out [R, C] f64 dense. A division, not
// a reciprocal product, so H equals the host's f64(G)/count bit for bit.
// Grid (CEIL_DIV(C, 32), CEIL_DIV(R, 8)), block (32, 8).
extern "C" __global__ void gram_gather_f64(const float* __restrict__ G, int ldg, const int* __restrict__ rows,
                                           const int* __restrict__ cols, double* __restrict__ out, int R, int C,
                                           double div, double diag_add) {
  const int c = blockIdx.x * 32 + threadIdx.x, r = blockIdx.y * 8 + threadIdx.y;
  if (r >= R || c >= C) return;
  const int ri = rows ? rows[r] : r, ci = cols ? cols[c] : c;
  double v = (double)G[(size_t)ri * ldg + ci] / div;
  if (ri == ci) v += diag_add;
  out[(size_t)r * C + c] = v;
}

// d[j] = G[j, j] (f32 -> f64). Grid CEIL_DIV(n, 256), block 256.
extern "C" __global__ void gram_diag_f64(const float* __restrict__ G, int n, double* __restrict__ d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < n) d[j] = (double)G[(size_t)j * n + j];
}

// out[nb, nb] = inv(a[nb, nb]) (row stride lda; out is dense, distinct) by scalar sweeps.
// A pivot that is not > 0 (or NaN) means the matrix is not positive definite: the first such
// global index (base + p) is stored in *fail if *fail is still −1. One CTA of 256 threads; nb ≤ 64.
extern "C" __global__ void __launch_bounds__(256)
    sweep_block_f64(const double* __restrict__ a, double* __restrict__ out, int nb, int lda, int base,
                    int* __restrict__ fail) {
  __shared__ double s[la::SWEEP][la::SWEEP + 1];
  __shared__ double rowp[la::SWEEP], colp[la::SWEEP];
  const int tid = threadIdx.x;
  for (int e = tid; e < nb * nb; e += blockDim.x) s[e / nb][e % nb] = a[(size_t)(e / nb) * lda + e % nb];
  __syncthreads();
  for (int p = 0; p < nb; ++p) {
    const double piv = s[p][p];
    if (tid == 0 && !(piv > 0.0) && *fail < 0) *fail = base + p;
    if (tid < nb) {
      rowp[tid] = s[p][tid];
      colp[tid] = s[tid][p];
    }
    __syncthreads();
    const double inv = 1.0 / piv;
    for (int e = tid; e < nb * nb; e += blockDim.x) {
      const int i = e / nb, j = e % nb;
      double x;
      if (i == p && j == p) x = inv;
      else if (i == p) x = rowp[j] * inv;
      else if (j == p) x = -colp[i] * inv;
      else x = s[i][j] - colp[i] * rowp[j] * inv;
      s[i][j] = x;
    }
    __syncthreads();
  }
  for (int e = tid; e < nb * nb; e += blockDim.x) out[e] = s[e / nb][e % nb];
}

// ---------------------------------------------------------------------------------------------
// Greedy OBS steps. Shapes: hinv [n, n], wt [n, hidden] (Wᵀ: row j = column j of W_down),
// norm, diag [n], alive [n] (1 = kept so far), US [32, n], VS [32, hidden], DS [32],
// pend [33] (pend[b'] for b' < b, pend[32] = ⟨v, v⟩), removed [steps].

__device__ __forceinline__ bool obs_better(double s, int j, double bs, int bj) {
  return s < bs || (s == bs && j < bj);
}

// removed[step] = argmin over alive j of norm[j]/diag[j] (ties: lowest j); alive[q] = 0.
// One CTA of 1024 threads.
extern "C" __global__ void __launch_bounds__(1024)
    obs_pick_f64(const double* __restrict__ norm, const double* __restrict__ diag, int* __restrict__ alive,
                 int* __restrict__ removed, int step, int n) {
  __shared__ double ss[32];
  __shared__ int sj[32];
  double best = INFINITY;
  int bj = 0x7fffffff;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    if (!alive[j]) continue;
    const double s = norm[j] / diag[j];
    if (obs_better(s, j, best, bj)) best = s, bj = j;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double s = __shfl_xor_sync(0xffffffffu, best, o);
    const int j = __shfl_xor_sync(0xffffffffu, bj, o);
    if (obs_better(s, j, best, bj)) best = s, bj = j;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) ss[warp] = best, sj[warp] = bj;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x / 32;
    best = lane < nw ? ss[lane] : INFINITY;
    bj = lane < nw ? sj[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const double s = __shfl_xor_sync(0xffffffffu, best, o);
      const int j = __shfl_xor_sync(0xffffffffu, bj, o);
      if (obs_better(s, j, best, bj)) best = s, bj = j;
    }
    if (lane == 0) {
      // Every live score is finite; an all-dead or NaN input leaves bj unset: take the first live.
      if (bj == 0x7fffffff)
        for (int j = 0; j < n; ++j)
          if (alive[j]) {
            bj = j;
            break;
          }
      removed[step] = bj;
      alive[bj] = 0;
    }
  }
}

// With q = removed[step] and b pending updates: US[b] = H⁻¹[q, :] − Σ_{b'<b} (US[b'][q]/DS[b'])·US[b'],
// VS[b] = W[:, q] − Σ_{b'<b} (US[b'][q]/DS[b'])·VS[b'], DS[b] = US[b][q].
// Grid CEIL_DIV(n + hidden, 256), block 256.
extern "C" __global__ void obs_column_f64(const double* __restrict__ hinv, const double* __restrict__ wt,
                                          double* __restrict__ US, double* __restrict__ VS, double* __restrict__ DS,
                                          const int* __restrict__ removed, int step, int b, int n, int hidden) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n + hidden) return;
  const int q = removed[step];
  if (e < n) {
    double u = hinv[(size_t)q * n + e];
    for (int p = 0; p < b; ++p) u -= (US[(size_t)p * n + q] / DS[p]) * US[(size_t)p * n + e];
    US[(size_t)b * n + e] = u;
    if (e == q) DS[b] = u;
  } else {
    const int r = e - n;
    double v = wt[(size_t)q * hidden + r];
    for (int p = 0; p < b; ++p) v -= (US[(size_t)p * n + q] / DS[p]) * VS[(size_t)p * hidden + r];
    VS[(size_t)b * hidden + r] = v;
  }
}

// pend[p] = ⟨VS[p], VS[b]⟩ / DS[p] for p < b; pend[32] = ⟨VS[b], VS[b]⟩. One CTA of 256 threads,
// one warp per dot product.
extern "C" __global__ void __launch_bounds__(256)
    obs_pend_f64(const double* __restrict__ VS, const double* __restrict__ DS, double* __restrict__ pend, int b,
                 int hidden) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x / 32;
  const double* v = VS + (size_t)b * hidden;
  for (int p = warp; p <= b; p += nw) {
    const double* x = VS + (size_t)p * hidden;
    double s = 0.0;
    for (int r = lane; r < hidden; r += 32) s = fma(x[r], v[r], s);
    s = warp_sum_d(s);
    if (lane == 0) {
      if (p < b) pend[p] = s / DS[p];
      else pend[la::MAX_PENDING] = s;
    }
  }
}

// For every neuron j: g = ⟨wt[j, :], v⟩ − Σ_{p<b} US[p][j]·pend[p]; f = u_j/d;
// norm[j] += f·(f·⟨v,v⟩ − 2g); diag[j] −= f·u_j (u = US[b], v = VS[b], d = DS[b]).
// Grid CEIL_DIV(n, 8), block (32, 8): one warp per neuron.
extern "C" __global__ void obs_update_f64(const double* __restrict__ wt, const double* __restrict__ US,
                                          const double* __restrict__ VS, const double* __restrict__ DS,
                                          const double* __restrict__ pend, double* __restrict__ norm,
                                          double* __restrict__ diag, int b, int n, int hidden) {
  const int j = blockIdx.x * blockDim.y + threadIdx.y;
  if (j >= n) return;
  const double* row = wt + (size_t)j * hidden;
  const double* v = VS + (size_t)b * hidden;
  double g = 0.0;
  for (int r = threadIdx.x; r < hidden; r += 32) g = fma(row[r], v[r], g);
  g = warp_sum_d(g);
  if (threadIdx.x == 0) {
    for (int p = 0; p < b; ++p) g -= US[(size_t)p * n + j] * pend[p];
    const double u = US[(size_t)b * n + j], f = u / DS[b];
    norm[j] += f * (f * pend[la::MAX_PENDING] - 2.0 * g);
    diag[j] -= f * u;
  }
}

// at[j, p] = US[p][j] / DS[p] for p < nb: the left factor of the fold GEMMs, [n, nb].
// Grid CEIL_DIV(n, 256), block 256.
extern "C" __global__ void obs_fold_prep_f64(const double* __restrict__ US, const double* __restrict__ DS,
                                             double* __restrict__ at, int nb, int n) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  for (int p = 0; p < nb; ++p) at[(size_t)j * nb + p] = US[(size_t)p * n + j] / DS[p];
}

// diag[j] = hinv[j, j]; norm[j] = ‖wt[j, :]‖². Grid CEIL_DIV(n, 8), block (32, 8).
extern "C" __global__ void obs_exact_f64(const double* __restrict__ hinv, const double* __restrict__ wt,
                                         double* __restrict__ diag, double* __restrict__ norm, int n, int hidden) {
  const int j = blockIdx.x * blockDim.y + threadIdx.y;
  if (j >= n) return;
  const double* row = wt + (size_t)j * hidden;
  double s = 0.0;
  for (int r = threadIdx.x; r < hidden; r += 32) s = fma(row[r], row[r], s);
  s = warp_sum_d(s);
  if (threadIdx.x == 0) {
    norm[j] = s;
    diag[j] = hinv[(size_t)j * n + j];
  }
}
