// rope.cu — rotate-half (NeoX) rotary embedding, in place on q [N, nh, d] and k [N, nkv, d] bf16.
//
// Position of row n is n % seq_len (sequences laid out back to back). The host passes the layer's
// inverse frequencies inv_freq [d/2] (f32, transformers' rope scaling applied: default, linear,
// llama3, yarn; src/cuda/rope.rs computes them with the CPU's `cpu::rope::inv_freq`) and the
// factor cos and sin are scaled by (yarn's attention_factor, else 1). As the CPU tables
// (`cpu::rope::tables_from_inv`): angle = f32(pos) · inv_freq[i] in f32, then accurate cosf / sinf
// (full argument reduction; no __sinf), each times the scale in f32. The rotation is done in f32
// and rounded to bf16 once:
//   x[i]       = x[i]·cos − x[i+d/2]·sin
//   x[i+d/2]   = x[i+d/2]·cos + x[i]·sin          (i < d/2)
// One thread per (row, i): it computes the angle once and rotates that pair in every q and k head.
#include "common.cuh"

// Grid CEIL_DIV(N·d/2, 256), block 256. k may be null (nkv ignored then). inv_freq [d/2] f32.
extern "C" __global__ void rope_qk_bf16(bf16* __restrict__ q, bf16* __restrict__ k,
                                        const float* __restrict__ inv_freq, int n_rows, int nh, int nkv, int d,
                                        int seq_len, float scale) {
  const int half = d / 2;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)n_rows * half) return;
  const int row = (int)(idx / half), i = (int)(idx % half);
  const int pos = row % seq_len;
  float c, s;
  rope_cos_sin(inv_freq, i, pos, scale, c, s);
  bf16* qr = q + (size_t)row * nh * d;
  for (int hh = 0; hh < nh; ++hh) {
    bf16* x = qr + (size_t)hh * d;
    const float a = bf2f(x[i]), b = bf2f(x[i + half]);
    x[i] = f2bf(a * c - b * s);
    x[i + half] = f2bf(b * c + a * s);
  }
  if (k) {
    bf16* kr = k + (size_t)row * nkv * d;
    for (int hh = 0; hh < nkv; ++hh) {
      bf16* x = kr + (size_t)hh * d;
      const float a = bf2f(x[i]), b = bf2f(x[i + half]);
      x[i] = f2bf(a * c - b * s);
      x[i + half] = f2bf(b * c + a * s);
    }
  }
}
