// norm.cu — RMSNorm over the rows of a bf16 matrix in either weight convention, with an optional
// fused residual add, and the plain residual add of layers without a post-norm.
//
//   rmsnorm_bf16:          out[r,:] = norm(x[r,:])                                    (in place ok)
//   rmsnorm_residual_bf16: h[r,:]   = bf16( h + norm(y[r,:]) )
//   residual_add_bf16:     h        = bf16( h + y )
//
// with x̂ = x·rsqrt(mean(x²)+eps) and, by `plain` (config::NormWeight):
//   Gemma (plain = 0):      norm(x) = bf16( x̂·(1+w) )    — GemmaRMSNorm multiplies by (1 + w) in
//                                                           f32 BEFORE its single downcast;
//   Llama family (plain=1): norm(x) = bf16( w·bf16(x̂) )  — LlamaRMSNorm downcasts x̂ first, then
//                                                           the bf16 weight times the bf16 tensor.
// The residual add is a bf16 tensor add (f32 sum of two bf16 values, rounded once). All these
// rounding points are reproduced here. The per-head q/k norms (Gemma-3, Qwen3) are the same
// kernel over rows of head_dim ([N·heads, d]).
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

// norm(x) of one element (before the output's rounding): xr = x·rsqrt(…), g the weight.
__device__ __forceinline__ float apply(float xr, float g, int plain) {
  return plain ? round_bf(xr) * g : xr * (1.0f + g);
}
}  // namespace rmsn

// Grid CEIL_DIV(rows, 8), block 256. x and out [rows, cols] bf16, w [cols] f32; plain: see the header.
extern "C" __global__ void rmsnorm_bf16(const bf16* x, const float* __restrict__ w, bf16* out, int rows,
                                        int cols, float eps, int plain) {
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
      o2[c] = __floats2bfloat162_rn(rmsn::apply(f.x * r, w[2 * c], plain), rmsn::apply(f.y * r, w[2 * c + 1], plain));
    }
  } else {
    for (int c = lane; c < cols; c += 32) orow[c] = f2bf(rmsn::apply(bf2f(xr[c]) * r, w[c], plain));
  }
}

// Grid CEIL_DIV(rows, 8), block 256. h (residual stream) and y [rows, cols] bf16, w [cols] f32.
extern "C" __global__ void rmsnorm_residual_bf16(bf16* __restrict__ h, const bf16* __restrict__ y,
                                                 const float* __restrict__ w, int rows, int cols, float eps,
                                                 int plain) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * rmsn::WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  const bf16* yr = y + (size_t)row * cols;
  bf16* hr = h + (size_t)row * cols;
  const float r = rmsn::row_inv_rms(yr, cols, eps, lane);
  for (int c = lane; c < cols; c += 32) {
    const float n = round_bf(rmsn::apply(bf2f(yr[c]) * r, w[c], plain));
    hr[c] = f2bf(bf2f(hr[c]) + n);
  }
}

// Grid-stride over n elements, block 256. h (residual stream) and y [n] bf16: h = bf16(h + y).
extern "C" __global__ void residual_add_bf16(bf16* __restrict__ h, const bf16* __restrict__ y, int n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)n; i += (size_t)gridDim.x * blockDim.x)
    h[i] = f2bf(bf2f(h[i]) + bf2f(y[i]));
}
