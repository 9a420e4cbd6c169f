// convert.cu — dtype conversion and elementwise helpers: bf16 <-> f32 (round to nearest even).
// Grid-stride loops: any grid covers any n.
#include "common.cuh"

extern "C" __global__ void bf16_to_f32(const bf16* __restrict__ x, float* __restrict__ y, unsigned long long n) {
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x)
    y[i] = bf2f(x[i]);
}

extern "C" __global__ void f32_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, unsigned long long n) {
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x)
    y[i] = f2bf(x[i]);
}
