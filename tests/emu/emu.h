// emu.h — CUDA C++ kernels as plain C++ on the CPU (force-included before kernels/*.cu).
//
// Why: no task so far has had a GPU, and a kernel bug found on the device machine costs minutes
// of a 15-minute budget. With this header the unchanged kernel sources compile with g++; the
// mock driver (runtime.cpp, built as a fake libcuda.so by scripts/build-emu.sh) runs every
// launch block by block, one fiber per CUDA thread, so the ignored GPU tests (tests/cuda_*.rs)
// run here through the real cudarc host code: launchers, argument order, grid shapes, shared
// memory sizes and the kernels' index arithmetic are all exercised against the CPU oracle.
//
// What it models:
// - __syncthreads: a block barrier; warp collectives (__shfl_xor_sync, ldmatrix, mma.sync) are a
//   barrier over the warp's live lanes with an exchange slot per lane. A kernel that relies on
//   threads being in lockstep without a barrier fails (deadlock report) or computes garbage here.
// - __shared__ variables are per-block (thread_local statics: blocks run one after another on one
//   OS thread per worker); dynamic shared memory is one 228 KB buffer per worker.
// - cp.async is a synchronous copy (zero-filled past src_bytes); commit/wait are no-ops.
// - mma.sync m16n8k16 accumulates in f32 in k order: results equal the tensor cores' up to f32
//   summation order, so tests keep their tolerances.
// What it does not model: timing, memory coalescing, bank conflicts, races between threads that
// a barrier does not separate (the fibers run in a fixed order), register limits.
#pragma once

#include <cuda_bf16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

// Per-thread launch coordinates, set by the scheduler before it resumes a fiber.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

extern "C" {
void emu_block_barrier();
void emu_warp_barrier();
// 16-byte exchange slot of lane `lane` in the calling thread's warp.
void* emu_warp_slot(int lane);
unsigned char* emu_dynamic_smem();
unsigned emu_smem_offset(const void* p);
void* emu_smem_ptr(unsigned offset);
}

inline void __syncthreads() { emu_block_barrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 16, "shuffle of a wide type");
  const int lane = threadIdx.x & 31;
  std::memcpy(emu_warp_slot(lane), &v, sizeof(T));
  emu_warp_barrier();
  T r;
  const int src = ((lane ^ lane_mask) & (width - 1)) | (lane & ~(width - 1));
  std::memcpy(&r, emu_warp_slot(src), sizeof(T));
  emu_warp_barrier();
  return r;
}

template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
  const int lane = threadIdx.x & 31;
  std::memcpy(emu_warp_slot(lane), &v, sizeof(T));
  emu_warp_barrier();
  T r;
  std::memcpy(&r, emu_warp_slot((src_lane & (width - 1)) | (lane & ~(width - 1))), sizeof(T));
  emu_warp_barrier();
  return r;
}

template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcs(const T* p) { return *p; }

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
// CUDA's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

// Blocks may run on several worker threads at once: atomics are real.
template <typename F>
inline F emu_atomic_add_float(F* p, F v) {
  F old = *p, want;
  do {
    want = old + v;
  } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}
inline float atomicAdd(float* p, float v) { return emu_atomic_add_float(p, v); }
inline double atomicAdd(double* p, double v) { return emu_atomic_add_float(p, v); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

inline size_t __cvta_generic_to_shared(const void* p) { return emu_smem_offset(p); }

// Dynamic shared memory (kernels declare it with DYNAMIC_SMEM from common.cuh).
#define EMU_DYNAMIC_SMEM(name) unsigned char* name = emu_dynamic_smem()

// ---------------------------------------------------------------------------------------------
// The PTX wrappers of common.cuh (cp.async, ldmatrix, mma.sync), as warp collectives.

inline void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  unsigned char* d = static_cast<unsigned char*>(emu_smem_ptr(dst));
  const int n = src_bytes < 16 ? src_bytes : 16;
  if (n > 0) std::memcpy(d, src, n);
  if (n < 16) std::memset(d + n, 0, 16 - n);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

// Lane i publishes the row address for matrix i/8, row i%8; register j of every lane receives
// matrix j, row lane/4, columns 2*(lane%4) and +1 (trans: column lane/4, rows 2*(lane%4), +1).
template <bool TRANS>
inline void emu_ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  const int lane = threadIdx.x & 31;
  std::memcpy(emu_warp_slot(lane), &addr, 4);
  emu_warp_barrier();
  for (int j = 0; j < 4; ++j) {
    uint16_t h[2];
    for (int e = 0; e < 2; ++e) {
      uint32_t a;
      int col;
      if (!TRANS) {
        std::memcpy(&a, emu_warp_slot(j * 8 + lane / 4), 4);
        col = 2 * (lane % 4) + e;
      } else {
        std::memcpy(&a, emu_warp_slot(j * 8 + 2 * (lane % 4) + e), 4);
        col = lane / 4;
      }
      std::memcpy(&h[e], static_cast<unsigned char*>(emu_smem_ptr(a)) + 2 * col, 2);
    }
    r[j] = (uint32_t)h[0] | ((uint32_t)h[1] << 16);
  }
  emu_warp_barrier();
}
inline void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
  uint32_t r[4];
  emu_ldmatrix_x4<false>(r, addr);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
inline void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
  uint32_t r[4];
  emu_ldmatrix_x4<true>(r, addr);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

inline float emu_bf16_bits(uint32_t reg, int half) {
  const uint32_t bits = (half ? reg >> 16 : reg & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// D = A·B + D for one m16n8k16 tile, fragment layouts as in common.cuh (g = lane/4, t = lane%4).
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int lane = threadIdx.x & 31;
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  static_assert(sizeof(mine) > 16, "two slots per lane");
  // 24 bytes per lane: the A registers in this lane's slot, the B registers in slot lane+32's.
  std::memcpy(emu_warp_slot(lane), mine, 16);
  std::memcpy(emu_warp_slot(lane + 32), mine + 4, 8);
  emu_warp_barrier();
  // This lane's outputs need rows g, g+8 of A and columns 2t, 2t+1 of B.
  const int g = lane / 4, t = lane % 4;
  float ar[2][16], bc[2][16];
  for (int h = 0; h < 2; ++h)
    for (int q = 0; q < 4; ++q) {  // the 4 lanes holding row g (+8h): k = 2q, 2q+1 and +8
      uint32_t v[4];
      std::memcpy(v, emu_warp_slot(g * 4 + q), 16);
      for (int e = 0; e < 2; ++e) {
        ar[h][2 * q + e] = emu_bf16_bits(v[h], e);
        ar[h][2 * q + 8 + e] = emu_bf16_bits(v[h + 2], e);
      }
    }
  for (int c = 0; c < 2; ++c)
    for (int q = 0; q < 4; ++q) {  // the 4 lanes holding column 2t+c
      uint32_t v[2];
      std::memcpy(v, emu_warp_slot((2 * t + c) * 4 + q + 32), 8);
      for (int e = 0; e < 2; ++e) {
        bc[c][2 * q + e] = emu_bf16_bits(v[0], e);
        bc[c][2 * q + 8 + e] = emu_bf16_bits(v[1], e);
      }
    }
  for (int i = 0; i < 4; ++i) {
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += ar[i / 2][k] * bc[i % 2][k];
    d[i] = acc;
  }
  emu_warp_barrier();
}

// ---------------------------------------------------------------------------------------------
// wgmma (sm_90a) of common.cuh. A and B come from shared memory, so each thread computes its own
// accumulator elements straight from the descriptors; the async fences and waits are no-ops.

inline uint64_t wgmma_desc_sw128(uint32_t smem_addr) {
  return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}
inline void wgmma_fence() {}
inline void wgmma_commit() {}
template <int N>
inline void wgmma_wait() {}
inline void fence_proxy_async() {}

// Element (row, k) of a K-major bf16 operand: 8-row atoms `sbo` bytes apart, 128-byte rows, the
// 128-byte swizzle applied to the absolute shared address (16-byte chunk bits 4-6 XOR row bits 7-9).
inline float emu_wgmma_elem(uint64_t desc, int row, int k) {
  if ((desc >> 62) != 1) {
    std::fprintf(stderr, "whittle-emu: only the 128-byte-swizzle K-major wgmma layout is modelled\n");
    std::abort();
  }
  const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4, sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
  uint32_t addr = start + (uint32_t)(row / 8) * sbo + (uint32_t)(row % 8) * 128 + (uint32_t)k * 2;
  addr ^= ((addr >> 7) & 7) << 4;
  uint16_t h;
  std::memcpy(&h, emu_smem_ptr(addr), 2);
  const uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  const int tid = threadIdx.x % 128, w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  float a[2][16];
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) a[h][k] = emu_wgmma_elem(da, 16 * w + g + 8 * h, k);
  for (int j = 0; j < 16; ++j)
    for (int e = 0; e < 2; ++e) {
      float b[16];
      for (int k = 0; k < 16; ++k) b[k] = emu_wgmma_elem(db, 8 * j + 2 * t + e, k);
      for (int h = 0; h < 2; ++h) {
        float acc = scale_d ? d[4 * j + 2 * h + e] : 0.0f;
        for (int k = 0; k < 16; ++k) acc += a[h][k] * b[k];
        d[4 * j + 2 * h + e] = acc;
      }
    }
}
