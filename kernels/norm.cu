// norm.cu — Gemma RMSNorm over the rows of a bf16 matrix, with an optional fused residual add.
//
//   rmsnorm_bf16:          out[r,:] = bf16( x·rsqrt(mean(x²)+eps)·(1+w) )          (in place ok)
//   rmsnorm_residual_bf16: h[r,:]   = bf16( h + bf16( y·rsqrt(mean(y²)+eps)·(1+w) ) )
//
// transformers' Gemma RMSNorm computes in f32 and multiplies by (1 + w) BEFORE the single
// downcast; the residual add is a bf16 tensor add (f32 sum of two bf16 values, rounded once). Both
// rounding points are reproduced here. The per-head q/k norm of Gemma-3 is the same kernel over
// rows of head_dim ([N·heads, d]).
//
// Design: one warp per row (8 rows per 256-thread block), two passes over the row: sum of squares
// (f32 per lane, then a butterfly), then normalise. Rows are read as bf16 pairs when the width is
// even. Weights are f32 (the checkpoint's norm weights widened exactly). 1/sqrtf, not rsqrtf, to
// match the CPU reference's rounding.
#include "common.cuh"

namespace rmsn {
constexpr int WARPS = 8;

__device__ __forceinline__ float row_inv_rms(const bf16* x, int cols, float eps, int lane) {
  float ss = 0.0f;
  if ((cols & 1) == 0) {
    const bf162* x2 = reinterpret_cast<const bf162*>(x);
    for (int c = lane; c < cols / 2; c += 32) {
      const float2 f = __bfloat1622float2(x2[c]);
      ss += f.x * f.x + f.y * f.y;
    }
  } else {
    for (int c = lane; c < cols; c += 32) {
      const float f = bf2f(x[c]);
      ss += f * f;
    }
  }
  ss = warp_sum(ss);
  return 1.0f / sqrtf(ss / (float)cols + eps);
}
}  // namespace rmsn

// Grid CEIL_DIV(rows, 8), block 256. x and out [rows, cols] bf16, w [cols] f32.
extern "C" __global__ void rmsnorm_bf16(const bf16* x, const float* __restrict__ w, bf16* out, int rows,
                                        int cols, float eps) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * rmsn::WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  const bf16* xr = x + (size_t)row * cols;
  bf16* orow = out + (size_t)row * cols;
  const float r = rmsn::row_inv_rms(xr, cols, eps, lane);
  if ((cols & 1) == 0) {
    const bf162* x2 = reinterpret_cast<const bf162*>(xr);
    bf162* o2 = reinterpret_cast<bf162*>(orow);
    for (int c = lane; c < cols / 2; c += 32) {
      const float2 f = __bfloat1622float2(x2[c]);
      o2[c] = __floats2bfloat162_rn((f.x * r) * (1.0f + w[2 * c]), (f.y * r) * (1.0f + w[2 * c + 1]));
    }
  } else {
    for (int c = lane; c < cols; c += 32) orow[c] = f2bf((bf2f(xr[c]) * r) * (1.0f + w[c]));
  }
}

// Grid CEIL_DIV(rows, 8), block 256. h (residual stream) and y [rows, cols] bf16, w [cols] f32.
extern "C" __global__ void rmsnorm_residual_bf16(bf16* __restrict__ h, const bf16* __restrict__ y,
                                                 const float* __restrict__ w, int rows, int cols, float eps) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * rmsn::WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  const bf16* yr = y + (size_t)row * cols;
  bf16* hr = h + (size_t)row * cols;
  const float r = rmsn::row_inv_rms(yr, cols, eps, lane);
  for (int c = lane; c < cols; c += 32) {
    const float n = round_bf((bf2f(yr[c]) * r) * (1.0f + w[c]));
    hr[c] = f2bf(bf2f(hr[c]) + n);
  }
}
