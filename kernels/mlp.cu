// mlp.cu — the MLP activation a = act(gate) · up (act gelu_tanh for Gemma, SiLU for the Llama
// family: common.cuh's ACT_*), fused with the per-neuron statistics that calibration needs (Σa
// and Σa² per column, f64), optionally also writing a in f32.
//
// Rounding follows transformers' bf16 path: the activation is computed in f32 from the bf16 gate
// and rounded to bf16 (F.gelu / F.silu on a bf16 tensor), then multiplied by up in f32 and
// rounded to bf16 (a bf16 tensor product). The statistics are taken on that bf16 value, as a
// forward hook that casts the bf16 activation to f32 would see it.
//
// Design: block (32, 8) covers 64 columns × 128 rows; lane x owns 2 adjacent columns (a warp
// reads 128 contiguous bytes per row), thread-row y walks rows y, y+8, … Each thread keeps f32
// partial sums over its 16 rows, the 8 thread-rows are combined through shared memory, and one
// f64 atomicAdd per column per block lands in the output (atomics on distinct addresses; f64 keeps
// millions of tokens exact enough). Statistics pointers may be null.
#include "common.cuh"

namespace mlp {
constexpr int COLS = 64, ROWS = 128, TY = 8;

// Adds a block's per-thread partial sums (2 columns per lane, see the design note) into the f64
// column statistics: the 8 thread-rows combine through shared memory, then one f64 atomicAdd
// per column and statistic. Called by all threads of the block (it synchronises).
__device__ __forceinline__ void flush_col_stats(const float s1[2], const float s2[2], double* col_sum,
                                                double* col_sumsq, int cols) {
  __shared__ float red[2][TY][COLS];
  if (!col_sum && !col_sumsq) return;
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    red[0][ty][2 * tx + e] = s1[e];
    red[1][ty][2 * tx + e] = s2[e];
  }
  __syncthreads();
  // 64 columns × 2 statistics = 128 results; the first 128 threads finish one each.
  const int id = ty * 32 + tx;
  if (id < 2 * COLS) {
    const int which = id / COLS, col = id % COLS;
    const int c = blockIdx.x * COLS + col;
    if (c < cols) {
      double acc = 0.0;
#pragma unroll
      for (int y = 0; y < TY; ++y) acc += (double)red[which][y][col];
      double* dst = which == 0 ? col_sum : col_sumsq;
      if (dst) atomicAdd(dst + c, acc);
    }
  }
}
}  // namespace mlp

// Grid (CEIL_DIV(cols, 64), CEIL_DIV(rows, 128)), block (32, 8).
// gate, up, act [rows, cols] bf16; act_f32 [rows, cols] or null; col_sum, col_sumsq [cols] f64 or
// null (accumulated into, not overwritten). fn: ACT_GELU_TANH or ACT_SILU.
extern "C" __global__ void act_mul_stats_bf16(const bf16* __restrict__ gate, const bf16* __restrict__ up,
                                              bf16* __restrict__ act, float* __restrict__ act_f32,
                                              double* __restrict__ col_sum, double* __restrict__ col_sumsq,
                                              int rows, int cols, int fn) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c0 = blockIdx.x * mlp::COLS + 2 * tx;
  const int r0 = blockIdx.y * mlp::ROWS;
  float s1[2] = {0.0f, 0.0f}, s2[2] = {0.0f, 0.0f};
  for (int r = r0 + ty; r < min(rows, r0 + mlp::ROWS); r += mlp::TY) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = c0 + e;
      if (c >= cols) continue;
      const size_t o = (size_t)r * cols + c;
      const float a = act_mul_bf16(fn, bf2f(gate[o]), bf2f(up[o]));
      act[o] = f2bf(a);
      if (act_f32) act_f32[o] = a;
      s1[e] += a;
      s2[e] += a * a;
    }
  }
  mlp::flush_col_stats(s1, s2, col_sum, col_sumsq, cols);
}

// ---------------------------------------------------------------------------------------------
// Token-weighted statistics (calib::TokenWeight, whose `weights` these modes mirror). The
// post-FFN RMSNorm divides each token's MLP output y by its RMS, so calibration weighs token t by
// w_t = 1/(ms(y_t)+eps) (TW_OUT); TW_OUT_RESID also divides by ms(x_t)+eps of the residual x
// entering the MLP; without a post-FFN norm (the Llama family) the next layer's input norm divides
// the sum x_t + y_t by its RMS, so TW_NEXT_NORM weighs by 1/(ms(x_t + y_t)+eps) (the sum in f32,
// unrounded, as the CPU forms it). The statistics are then those of the rows a_t·sqrt(w_t): Σ,
// Σ², and the Gram matrix of the scaled rows.
namespace mlp {
constexpr int TW_OUT = 0, TW_OUT_RESID = 1, TW_NEXT_NORM = 2;
}

// Grid (CEIL_DIV(rows, 8)), block (32, 8): one warp per row, f32 sums of squares.
// y, resid [rows, cols] bf16 (resid null for TW_OUT, required by the other modes); w [rows] f32
// (overwritten); mode one of mlp::TW_*.
extern "C" __global__ void token_weights_bf16(const bf16* __restrict__ y, const bf16* __restrict__ resid,
                                              float* __restrict__ w, int rows, int cols, float eps, int mode) {
  const int r = blockIdx.x * blockDim.y + threadIdx.y;
  if (r >= rows) return;
  const size_t base = (size_t)r * cols;
  float sy = 0.0f, sx = 0.0f;
  for (int c = threadIdx.x; c < cols; c += 32) {
    const float v = bf2f(y[base + c]);
    const float u = mode == mlp::TW_OUT ? 0.0f : bf2f(resid[base + c]);
    if (mode == mlp::TW_NEXT_NORM) {
      const float s = u + v;
      sy += s * s;
    } else {
      sy += v * v;
      sx += u * u;
    }
  }
  sy = warp_sum(sy);
  sx = warp_sum(sx);
  if (threadIdx.x == 0) {
    float wt = 1.0f / (sy / (float)cols + eps);
    if (mode == mlp::TW_OUT_RESID) wt /= sx / (float)cols + eps;
    w[r] = wt;
  }
}

// Grid (CEIL_DIV(cols, 64), CEIL_DIV(rows, 128)), block (32, 8) — gelu_mul_stats_bf16's layout.
// out = bf16(act · sqrt(w[row])); Σout, Σout² per column added into col_sum, col_sumsq (f64,
// may be null). act, out [rows, cols] bf16 (distinct); w [rows] f32.
extern "C" __global__ void scale_rows_stats_bf16(const bf16* __restrict__ act, const float* __restrict__ w,
                                                 bf16* __restrict__ out, double* __restrict__ col_sum,
                                                 double* __restrict__ col_sumsq, int rows, int cols) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c0 = blockIdx.x * mlp::COLS + 2 * tx;
  const int r0 = blockIdx.y * mlp::ROWS;
  float s1[2] = {0.0f, 0.0f}, s2[2] = {0.0f, 0.0f};
  for (int r = r0 + ty; r < min(rows, r0 + mlp::ROWS); r += mlp::TY) {
    const float f = sqrtf(w[r]);
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = c0 + e;
      if (c >= cols) continue;
      const size_t o = (size_t)r * cols + c;
      const float a = round_bf(bf2f(act[o]) * f);
      out[o] = f2bf(a);
      s1[e] += a;
      s2[e] += a * a;
    }
  }
  mlp::flush_col_stats(s1, s2, col_sum, col_sumsq, cols);
}
