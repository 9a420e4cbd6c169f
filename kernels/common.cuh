// common.cuh — helpers shared by every kernel file: bf16 <-> f32, warp and block reductions,
// CEIL_DIV, and the PTX wrappers (cp.async, ldmatrix, mma.sync) used by gemm.cu and attention.cu.
//
// Conventions for all kernels in kernels/*.cu:
// - storage is bf16 (__nv_bfloat16), arithmetic and accumulation f32 (f64 for long-running
//   statistics); rounding to bf16 happens where transformers' bf16 path rounds (documented per
//   kernel), never with fast-math intrinsics (__expf, __sinf, tanh.approx).
// - entry points are extern "C" so the host finds them by plain name; templates live in
//   __device__ bodies that thin extern "C" kernels instantiate.
// - every kernel writes every element of its output range (tests poison outputs with NaN first).
// - shapes are int (row counts and widths < 2^31); element offsets are computed in size_t.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

// Dynamic shared memory, 128-byte aligned (a macro so the CPU emulator can supply its buffer).
#ifdef WHITTLE_EMU
#define DYNAMIC_SMEM(name) EMU_DYNAMIC_SMEM(name)
#else
#define DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif
#define WARP_SIZE 32

// A TmaMap is the driver's CUtensorMap (128 opaque bytes), built on the host by
// cuTensorMapEncodeTiled and passed by value as a `const __grid_constant__` kernel parameter (its
// address is then a param-space address the copy engine may read).
struct alignas(64) TmaMap {
  unsigned long long opaque[16];
};

__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
// Round to nearest even, as torch's .to(bfloat16) does.
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16_rn(x); }
// f32 -> bf16 -> f32: the value a bf16 tensor would hold.
__device__ __forceinline__ float round_bf(float x) { return bf2f(f2bf(x)); }

// ---------------------------------------------------------------------------------------------
// The MLP activations (Gemma's gelu_pytorch_tanh, the Llama family's SiLU) in transformers'
// bf16 rounding order: gate and up are Linear outputs (bf16), the activation of the bf16 gate is
// rounded to bf16, then the product of two bf16 tensors is rounded. `gate` and `up` are the f32
// values before the Linear's rounding (rounding an already-bf16 value again changes nothing).
// mlp.cu, decode.cu and the fused gate/up GEMM (gemm.cu) all call act_mul_bf16.

__device__ __forceinline__ float gelu_tanh(float x) {
  const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + tanhf(k0 * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float gelu_mul_bf16(float gate, float up) {
  return round_bf(round_bf(gelu_tanh(round_bf(gate))) * round_bf(up));
}

// The Llama family's SiLU, as torch spells it (`x / (1 + exp(-x))`, accurate expf: exp(-x)
// overflows to +inf for x < -88 and the quotient is -0), and silu·up with the rounding of
// gelu_mul_bf16 (F.silu of a bf16 tensor is rounded to bf16, then the bf16 product).
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float silu_mul_bf16(float gate, float up) {
  return round_bf(round_bf(silu(round_bf(gate))) * round_bf(up));
}

// The MLP's gate activation as the kernels take it (an `int act` argument; the host maps
// `config::Activation` onto these in src/cuda/ops/mlp.rs).
constexpr int ACT_GELU_TANH = 0, ACT_SILU = 1;

// act(gate)·up in bf16 with transformers' rounding, for the activation `act` (uniform per launch).
__device__ __forceinline__ float act_mul_bf16(int act, float gate, float up) {
  return act == ACT_SILU ? silu_mul_bf16(gate, up) : gelu_mul_bf16(gate, up);
}

// ---------------------------------------------------------------------------------------------
// RoPE: cos and sin of position `pos` for frequency i of a layer's inverse frequencies
// inv_freq [d/2], scaled by `scale` (rope.cu's header). rope.cu's batched rotation and decode.cu's
// step both call this, so prefill and step rotate a position identically.
__device__ __forceinline__ void rope_cos_sin(const float* __restrict__ inv_freq, int i, int pos, float scale,
                                             float& c, float& s) {
  const float ang = (float)pos * inv_freq[i];
  c = cosf(ang) * scale;
  s = sinf(ang) * scale;
}

// ---------------------------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds >= 32 floats and may be
// reused right after the call returns (the trailing barrier protects it).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = CEIL_DIV((int)blockDim.x, 32);
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : 0.0f;
  r = warp_sum(r);
  __syncthreads();
  return r;
}

__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = CEIL_DIV((int)blockDim.x, 32);
  v = warp_sum_d(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double r = lane < nwarps ? scratch[lane] : 0.0;
  r = warp_sum_d(r);
  __syncthreads();
  return r;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = CEIL_DIV((int)blockDim.x, 32);
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : -INFINITY;
  r = warp_max(r);
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------------------------------------
// PTX wrappers (sm_80+): asynchronous copies, ldmatrix, bf16 tensor-core MMA.

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#ifndef WHITTLE_EMU  // tests/emu/emu.h supplies warp-collective CPU versions of these
// 16-byte global->shared copy that bypasses L1. `src_bytes` < 16 zero-fills the rest
// (src_bytes == 0: pure zero fill, `src` is not read but must be a valid address expression).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane i supplies the row address for matrix i/8, row i%8; register j of
// every lane receives matrix j, row lane/4, columns 2*(lane%4) and +1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                            uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
// Same, transposed: register j receives matrix j, column lane/4, rows 2*(lane%4) and +1.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// D = A·B + D for one 16x8x16 tile. Fragment layouts (g = lane/4, t = lane%4):
//   A (16x16, row): a0 = (row g,   k 2t..2t+1)  a1 = (row g+8, k 2t..2t+1)
//                   a2 = (row g,   k 2t+8..9)   a3 = (row g+8, k 2t+8..9)
//   B (16x8, col):  b0 = (k 2t..2t+1, col g)    b1 = (k 2t+8..9, col g)
//   C/D (16x8 f32): d0,d1 = (row g, cols 2t, 2t+1)   d2,d3 = (row g+8, cols 2t, 2t+1)
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}


// ---------------------------------------------------------------------------------------------
// wgmma (sm_90a only: the asm exists only where __CUDA_ARCH_FEAT_SM90_ALL is defined; elsewhere
// these trap, and the host never launches their callers on anything but compute capability 9.0).

// Shared-memory matrix descriptor of a K-major bf16 tile stored with the 128-byte swizzle: rows of
// 64 elements (128 B), 8-row atoms of 1024 B (the stride byte offset), 1024-byte aligned atoms.
// Fields (PTX ISA, "matrix descriptor"): [0,14) start address >> 4, [16,30) leading byte offset
// >> 4 (unused for swizzled K-major; 1 by convention), [32,46) stride byte offset >> 4,
// [62,64) swizzle mode (1 = 128B).
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_addr) {
  return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Orders this thread's earlier generic-proxy shared-memory writes (cp.async included) before
// later async-proxy reads (wgmma); each writing thread runs it before the barrier.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// D[64, 128] (+)= A[64, 16] · B[128, 16]ᵀ for the warpgroup, A and B K-major in shared memory.
// d layout (g = lane/4, t = lane%4, w = warp within the warpgroup): d[4j + 2h + e] is
// (row 16w + g + 8h, column 8j + 2t + e), j < 16 — the m16n8 C layout repeated over N.
// scale_d == 0 ignores d's old value.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
#else
  __trap();
#endif
}

// D[64, 256] (+)= A[64, 16] · B[256, 16]ᵀ: wgmma_m64n128k16 with N = 256 (128 accumulators;
// d[4j + 2h + e] is (row 16w + g + 8h, column 8j + 2t + e), j < 32).
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(da), "l"(db), "r"(scale_d));
#else
  __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// TMA (bulk tensor copies) and mbarriers (sm_90); TmaMap and mbar_wait are after this block.

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (the copy engine) before use.
__device__ __forceinline__ void fence_mbar_init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives and announces `bytes` more bytes of transactions (the TMA copies that complete on it).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}
// Box (c0 = innermost coordinate, c1) of `map` into shared memory at dst; completes `bytes` of
// transactions on `bar`. Out-of-bounds elements arrive as zeros.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const TmaMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// Hands registers between warpgroups (sm_90a; all threads of the warpgroup execute it).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
#endif  // WHITTLE_EMU

// An mbarrier's wait gives up after this many failed polls and traps: a protocol bug in a
// kernel written without a GPU at hand must end in a launch error, not a hung device.
#define MBAR_MAX_POLLS (1u << 26)

// Pins accumulator registers at this point of the program: the compiler does not know that
// in-flight wgmmas write them, so reads after a wgmma_wait and writes before a wgmma_fence must
// not be moved across (CUTLASS's warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void wgmma_fence_acc(float (&d)[N]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// Waits for the completion of the barrier's phase with parity `parity` (a fresh barrier is in
// phase 0; waiting on parity 1 returns at once).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  for (uint32_t polls = 0; !mbar_try_wait(bar, parity); ++polls)
    if (polls > MBAR_MAX_POLLS) __trap();
}

// Two f32 -> one register of two bf16 (lo in the low half), as an A fragment register expects.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  bf162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
