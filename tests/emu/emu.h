// emu.h — CUDA C++ kernels as plain C++ on the CPU (force-included before kernels/*.cu).
//
// Why: no task so far has had a GPU, and a kernel bug found on the device machine costs minutes
// of a 15-minute budget. With this header the unchanged kernel sources compile with g++; the
// mock driver (runtime.cpp, built as a fake libcuda.so by tests/emu/build.sh) runs every
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
#define __grid_constant__

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
// The calling fiber polls something another fiber must change (an mbarrier): run the others.
void emu_spin();
// An mbarrier changed state: spinning fibers may get further (deadlock detection).
void emu_progress();
}

[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "whittle-emu: __trap() in block (%u,%u,%u) thread %u\n", blockIdx.x, blockIdx.y, blockIdx.z,
               threadIdx.x);
  std::abort();
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

// D[64, N] (+)= A[64, 16] · B[N, 16]ᵀ for this thread's accumulators (layout of common.cuh).
template <int N>
inline void emu_wgmma(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
  const int tid = threadIdx.x % 128, w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  float a[2][16];
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) a[h][k] = emu_wgmma_elem(da, 16 * w + g + 8 * h, k);
  for (int j = 0; j < N / 8; ++j)
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
// wgmma is asynchronous: an MMA reads its shared-memory operands at some point before the
// wgmma.wait_group that retires its group. The emulator runs each MMA at the latest such point —
// in wgmma_wait, after the warp re-converges (.sync.aligned) — so a kernel that releases a stage
// to the copy engine before waiting for the MMAs reading it computes with the overwritten tile
// here, as it could on the hardware. Queues are per CUDA thread (fibers share an OS thread).
struct EmuWgmma {
  float* d;
  int n;  // N of the instruction: 128 or 256
  uint64_t da, db;
  int scale_d;
  int group;  // 0 until committed
};
struct EmuWgmmaQueue {
  EmuWgmma op[64];
  int len = 0, committed = 0;
};
inline EmuWgmmaQueue& emu_wgmma_queue() {
  static thread_local EmuWgmmaQueue q[1024];
  return q[threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)];
}
inline void emu_wgmma_issue(float* d, int n, uint64_t da, uint64_t db, int scale_d) {
  EmuWgmmaQueue& q = emu_wgmma_queue();
  if (q.len == 64) {
    std::fprintf(stderr, "whittle-emu: more than 64 wgmmas in flight without a wgmma.wait_group\n");
    std::abort();
  }
  q.op[q.len++] = EmuWgmma{d, n, da, db, scale_d, 0};
}
inline void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  emu_wgmma_issue(d, 128, da, db, scale_d);
}
inline void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db, int scale_d) {
  emu_wgmma_issue(d, 256, da, db, scale_d);
}
inline void wgmma_commit() {
  EmuWgmmaQueue& q = emu_wgmma_queue();
  ++q.committed;
  for (int i = 0; i < q.len; ++i)
    if (q.op[i].group == 0) q.op[i].group = q.committed;
}
// Retires every committed group but the newest N, oldest first. The MMAs of a warp complete
// together on the hardware: no lane leaves the wait before every lane's retired MMAs have read
// their operands (a lane that then signals "stage free" speaks for the whole warp).
template <int N>
inline void wgmma_wait() {
  struct Rejoin {
    ~Rejoin() { emu_warp_barrier(); }
  } rejoin;
  emu_warp_barrier();
  EmuWgmmaQueue& q = emu_wgmma_queue();
  int keep = 0;
  for (int i = 0; i < q.len; ++i) {
    EmuWgmma& o = q.op[i];
    if (o.group != 0 && o.group <= q.committed - N) {
      if (o.n == 128) emu_wgmma<128>(*reinterpret_cast<float(*)[64]>(o.d), o.da, o.db, o.scale_d);
      else emu_wgmma<256>(*reinterpret_cast<float(*)[128]>(o.d), o.da, o.db, o.scale_d);
    } else {
      q.op[keep++] = o;
    }
  }
  q.len = keep;
}
// At a thread's exit (runtime.cpp): wgmmas never waited for wrote registers nobody can read.
inline bool emu_wgmma_idle_at_exit() {
  EmuWgmmaQueue& q = emu_wgmma_queue();
  const bool idle = q.len == 0;
  q.len = 0;
  q.committed = 0;
  return idle;
}

// ---------------------------------------------------------------------------------------------
// mbarriers and TMA (common.cuh). An emulated mbarrier is 8 bytes of shared memory: pending
// arrivals, the arrival count with the phase in bit 15, and the outstanding transaction bytes
// (signed: a copy may complete before its expect_tx, as on the hardware). A TMA copy runs at
// issue and then completes its bytes on the barrier. Waits yield to the other fibers; a round in
// which nothing changes while fibers wait is reported as a deadlock.
struct EmuMbar {
  uint16_t pending;
  uint16_t count_phase;
  int32_t tx;
};
static_assert(sizeof(EmuMbar) == 8, "an mbarrier is 8 bytes");

inline EmuMbar* emu_mbar(uint32_t bar) {
  if (bar % 8 != 0) {
    std::fprintf(stderr, "whittle-emu: mbarrier at shared address %u is not 8-byte aligned\n", bar);
    std::abort();
  }
  return static_cast<EmuMbar*>(emu_smem_ptr(bar));
}
inline void emu_mbar_maybe_complete(EmuMbar* m) {
  if (m->pending == 0 && m->tx == 0) {
    m->count_phase ^= 0x8000;
    m->pending = m->count_phase & 0x7fff;
  }
  emu_progress();
}
inline void mbar_init(uint32_t bar, uint32_t count) {
  if (count == 0 || count > 0x7fff) {
    std::fprintf(stderr, "whittle-emu: mbarrier count %u outside what the emulator models\n", count);
    std::abort();
  }
  EmuMbar* m = emu_mbar(bar);
  m->pending = (uint16_t)count;
  m->count_phase = (uint16_t)count;
  m->tx = 0;
}
inline void fence_mbar_init() {}
inline void emu_mbar_arrive(uint32_t bar, int32_t tx) {
  EmuMbar* m = emu_mbar(bar);
  if (m->pending == 0 || m->pending > (m->count_phase & 0x7fff)) {
    std::fprintf(stderr, "whittle-emu: arrival on an mbarrier (shared %u) with no arrival pending\n", bar);
    std::abort();
  }
  m->tx += tx;
  --m->pending;
  emu_mbar_maybe_complete(m);
}
inline void mbar_arrive(uint32_t bar) { emu_mbar_arrive(bar, 0); }
inline void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) { emu_mbar_arrive(bar, (int32_t)bytes); }
inline bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  if (((emu_mbar(bar)->count_phase >> 15) & 1) != (parity & 1)) return true;
  emu_spin();
  return false;
}
template <int N>
inline void setmaxnreg_inc() {}
template <int N>
inline void setmaxnreg_dec() {}

// The fake driver's cuTensorMapEncodeTiled (runtime.cpp) fills TmaMap::opaque with these.
enum EmuTmaField { TMA_MAGIC, TMA_ADDR, TMA_DIM0, TMA_DIM1, TMA_STRIDE1, TMA_BOX0, TMA_BOX1, TMA_ESIZE, TMA_SWIZZLE };
constexpr unsigned long long EMU_TMA_MAGIC = 0x776869746c746d61ull;  // "whitltma"

// A template: TmaMap is declared by common.cuh, which comes after this header.
template <typename Map>
inline void tma_load_2d(uint32_t dst, const Map* map, int c0, int c1, uint32_t bar) {
  const unsigned long long* f = map->opaque;
  if (f[TMA_MAGIC] != EMU_TMA_MAGIC) {
    std::fprintf(stderr, "whittle-emu: TMA copy with a map cuTensorMapEncodeTiled did not make\n");
    std::abort();
  }
  if (dst % 128 != 0) {
    std::fprintf(stderr, "whittle-emu: TMA destination (shared %u) is not 128-byte aligned\n", dst);
    std::abort();
  }
  const long long dim0 = (long long)f[TMA_DIM0], dim1 = (long long)f[TMA_DIM1];
  const int box0 = (int)f[TMA_BOX0], box1 = (int)f[TMA_BOX1], es = (int)f[TMA_ESIZE];
  const unsigned char* g = reinterpret_cast<const unsigned char*>(f[TMA_ADDR]);
  for (int r = 0; r < box1; ++r)
    for (int e = 0; e < box0; ++e) {
      const long long x = (long long)c0 + e, y = (long long)c1 + r;
      uint32_t addr = dst + (uint32_t)((r * box0 + e) * es);
      if (f[TMA_SWIZZLE] == 128) addr ^= ((addr >> 7) & 7) << 4;
      unsigned char* d = static_cast<unsigned char*>(emu_smem_ptr(addr));
      if (x >= 0 && x < dim0 && y >= 0 && y < dim1)
        std::memcpy(d, g + (size_t)y * f[TMA_STRIDE1] + (size_t)x * es, es);
      else
        std::memset(d, 0, es);  // out of bounds: zero fill (FLOAT_OOB_FILL_NONE)
    }
  EmuMbar* m = emu_mbar(bar);
  m->tx -= box0 * box1 * es;
  emu_mbar_maybe_complete(m);
}
