// bias.cu — the bias of an nn.Linear (Qwen2's q/k/v projections, Llama's with attention_bias),
// added to the GEMM's f32 output before its one rounding:
//
//   bias_add_bf16: out[r, c] = bf16( y[r, c] + b[c] )
//
// transformers' Linear with a bias is one addmm whose bias joins the f32 accumulator before the
// output is rounded to bf16, so the projection is run with an f32 output (gemm_nt / gemv `y_f32`)
// and rounded here, once. b is f32 (the checkpoint's bias widened exactly, as the norm weights).
#include "common.cuh"

// Grid-stride over rows·cols elements, block 256. y [rows, cols] f32, b [cols] f32,
// out [rows, cols] bf16.
extern "C" __global__ void bias_add_bf16(const float* __restrict__ y, const float* __restrict__ b,
                                         bf16* __restrict__ out, int rows, int cols) {
  const size_t n = (size_t)rows * cols;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = f2bf(y[i] + b[i % cols]);
}
