// embed.cu — embedding gather: out[n,:] = bf16( table[ids[n],:] · scale ).
//
// transformers multiplies the bf16 embedding by sqrt(H) rounded to the compute dtype (25.25 for
// H = 640 in bf16), as a bf16 tensor product: f32 multiply, one rounding. The host passes that
// already-rounded scale. Ids are validated on the host; an id >= vocab still never reads out of
// bounds here (its row is written as zeros).
#include "common.cuh"

// Grid n, block 256. table [vocab, H] bf16, ids [n] u32, out [n, H] bf16.
extern "C" __global__ void embed_bf16(const bf16* __restrict__ table, const unsigned int* __restrict__ ids,
                                      bf16* __restrict__ out, int n, int H, int vocab, float scale) {
  const int row = blockIdx.x;
  if (row >= n) return;
  const unsigned int id = ids[row];
  bf16* o = out + (size_t)row * H;
  if (id >= (unsigned int)vocab) {
    for (int c = threadIdx.x; c < H; c += blockDim.x) o[c] = f2bf(0.0f);
    return;
  }
  const bf16* src = table + (size_t)id * H;
  for (int c = threadIdx.x; c < H; c += blockDim.x) o[c] = f2bf(bf2f(src[c]) * scale);
}
