// head.cu — what follows the LM head: the final logit softcap, and per-row reductions over a
// vocabulary of up to 256k f32 logits (one block per row, two passes over an L2-resident row).
//
//   softcap_f32:   x = tanh(x / cap) · cap, in place
//   row_stats_f32: per row: max, first argmax (ties -> smallest index, like the CPU), the
//                  log-sum-exp in f64 (exp in f32 of x - max, summed in f64: the CPU's order), and
//                  the target logit when targets are given
//   kl_rows_f32:   KL(base ‖ model) per row from two logit rows and their log-sum-exps, all f64,
//                  exactly the CPU's formula Σ p_b · (log p_b − log p_m)
//
// Losses and KL are then finished on the host (a few numbers per row).
#include "common.cuh"

namespace head {
constexpr int THREADS = 512;

// (value, index) max with the smaller index winning ties.
__device__ __forceinline__ void argmax_merge(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}
}  // namespace head

// Grid-stride, any grid.
extern "C" __global__ void softcap_f32(float* __restrict__ x, unsigned long long n, float cap) {
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x)
    x[i] = tanhf(x[i] / cap) * cap;
}

// Grid rows, block 512. logits [rows, V] f32. Outputs [rows]: row_max (f32), lse (f64), and,
// when non-null, argmax (i32) and target_logit (f32, needs targets [rows] u32 < V).
extern "C" __global__ void __launch_bounds__(head::THREADS)
    row_stats_f32(const float* __restrict__ logits, int rows, int V, const unsigned int* __restrict__ targets,
                  float* __restrict__ row_max, double* __restrict__ lse, int* __restrict__ argmax,
                  float* __restrict__ target_logit) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ double sd[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const float* x = logits + (size_t)row * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // Pass 1: max and first argmax. A thread's indices increase, so strict > keeps its first max.
  float best = -INFINITY;
  int bi = V;  // sentinel above every index
  for (int c = threadIdx.x; c < V; c += blockDim.x) {
    const float v = x[c];
    if (v > best || bi == V) {  // the first element is taken even when it is -inf
      best = v;
      bi = c;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
    head::argmax_merge(best, bi, v2, i2);
  }
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x / 32;
    best = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : V;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
      const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
      head::argmax_merge(best, bi, v2, i2);
    }
    if (lane == 0) {
      sv[0] = best;
      si[0] = bi;
    }
  }
  __syncthreads();
  const float m = sv[0];
  const int am = si[0];

  // Pass 2: Σ exp(x - max) in f64.
  double acc = 0.0;
  for (int c = threadIdx.x; c < V; c += blockDim.x) acc += (double)expf(x[c] - m);
  acc = block_sum_d(acc, sd);
  if (threadIdx.x == 0) {
    row_max[row] = m;
    lse[row] = (double)m + log(acc);
    if (argmax) argmax[row] = am < V ? am : 0;
    if (target_logit && targets) target_logit[row] = x[targets[row]];
  }
}

// Grid rows, block 512. base, model [rows, V] f32; lse_base, lse_model [rows] f64; kl [rows] f64.
extern "C" __global__ void __launch_bounds__(head::THREADS)
    kl_rows_f32(const float* __restrict__ base, const float* __restrict__ model, const double* __restrict__ lse_base,
                const double* __restrict__ lse_model, int rows, int V, double* __restrict__ kl) {
  __shared__ double sd[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const float* xb = base + (size_t)row * V;
  const float* xm = model + (size_t)row * V;
  const double lb = lse_base[row], lm = lse_model[row];
  double acc = 0.0;
  for (int c = threadIdx.x; c < V; c += blockDim.x) {
    const double lpb = (double)xb[c] - lb;
    const double lpm = (double)xm[c] - lm;
    acc += exp(lpb) * (lpb - lpm);
  }
  acc = block_sum_d(acc, sd);
  if (threadIdx.x == 0) kl[row] = acc;
}
