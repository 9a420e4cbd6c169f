// runtime.cpp — a fake libcuda.so: the subset of the CUDA driver API that cudarc and whittle
// call, backed by host memory and a fiber scheduler that runs the kernels of kernels.cpp.
//
// Only for tests: tests/emu/build.sh builds it into target/emu/libcuda.so(.1), and
// `make test-emu` points LD_LIBRARY_PATH there so cudarc's dlopen finds it instead of a real
// driver. Device pointers are host pointers; every call is synchronous (streams and events are
// tokens; events record the wall clock). The checks a real driver makes and a host bug would trip
// are made here too: copies must stay inside one allocation, a launch's block must have ≤ 1024
// threads, its dynamic shared memory must fit the limit the function was opted into.
#include <cuda.h>
#include <stdint.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "emu.h"

struct EmuKernel {
  const char* name;
  void (*thunk)(void** params);
};
extern "C" const EmuKernel emu_kernels[];
extern "C" const int emu_kernel_count;

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

// Fiber switch: saves the callee-saved registers on the current stack, stores the stack pointer
// in *save, loads `next` and pops its registers. ucontext's swapcontext would also make two
// sigprocmask system calls per switch, and a launch switches at every barrier of every thread.
extern "C" void emu_switch(void** save, void* next);
#if defined(__x86_64__)
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#else
#error "tests/emu: the fiber switch is written for x86-64 only"
#endif

namespace {

constexpr int MAX_THREADS = 1024;
constexpr size_t STACK_BYTES = 256 * 1024;
constexpr int SMEM_DEFAULT = 49152;  // without cuFuncSetAttribute
constexpr int SLOT_BYTES = 16, SLOTS_PER_WARP = 64;

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, SPINNING, DONE };

// One worker (OS thread) running blocks one after another.
struct Worker {
  void* sched = nullptr;                                  // the scheduler's saved stack pointer
  std::vector<void*> sp = std::vector<void*>(MAX_THREADS);  // each fiber's saved stack pointer
  std::vector<int> state = std::vector<int>(MAX_THREADS);
  unsigned char* stacks = nullptr;
  int cur = 0, nthreads = 0;
  bool progress = false;  // an mbarrier changed state during this round
  uint64_t rng = 0;       // WHITTLE_EMU_ORDER=random's shuffle state
  // AddressSanitizer's fiber bookkeeping (EMU_ASAN builds): the scheduler's stack and each
  // fiber's fake-stack handle across switches.
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  void* sched_fake = nullptr;
  std::vector<void*> fake = std::vector<void*>(MAX_THREADS);
  void (*thunk)(void**) = nullptr;
  void** params = nullptr;
  alignas(16) unsigned char slots[MAX_THREADS / 32][SLOTS_PER_WARP][SLOT_BYTES];
  // This launch's dynamic shared memory: exactly the launch's byte count, 1024-byte aligned, a
  // heap block of its own so AddressSanitizer reports a kernel reading or writing past it.
  unsigned char* smem = nullptr;
  unsigned smem_bytes = 0;
};

thread_local Worker* W = nullptr;

Worker* worker() {
  if (!W) {
    W = new Worker();
    void* s = mmap(nullptr, MAX_THREADS * STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (s == MAP_FAILED) {
      std::fprintf(stderr, "whittle-emu: cannot map fiber stacks\n");
      std::abort();
    }
    W->stacks = static_cast<unsigned char*>(s);
  }
  return W;
}

void set_thread_index(int t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

// Called on a fiber right after it gains control (EMU_ASAN: completes the switch).
void arrived_on_fiber() {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(W->fake[W->cur], &W->sched_bottom, &W->sched_size);
#endif
}

// Called on a fiber just before it hands control back; `dying`: it will never run again.
void leaving_fiber(bool dying) {
#if EMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &W->fake[W->cur], W->sched_bottom, W->sched_size);
#else
  (void)dying;
#endif
}

[[noreturn]] void fiber_main() {
  arrived_on_fiber();
  W->thunk(W->params);
  if (!emu_wgmma_idle_at_exit()) {
    std::fprintf(stderr, "whittle-emu: thread %u of block (%u,%u,%u) exited with wgmmas it never waited for\n",
                 threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z);
    std::abort();
  }
  W->state[W->cur] = DONE;
  leaving_fiber(true);
  void* dead;
  emu_switch(&dead, W->sched);
  __builtin_unreachable();
}

// A fresh fiber's stack: six zero registers for emu_switch to pop, then fiber_main as the return
// address, entered with the stack 8 bytes off 16-byte alignment like any called function.
void* fresh_stack(unsigned char* base) {
#if EMU_ASAN
  // The previous fiber on this stack left its frames' redzones poisoned.
  __asan_unpoison_memory_region(base, STACK_BYTES);
#endif
  auto* top = reinterpret_cast<uintptr_t*>(base + STACK_BYTES);
  *--top = 0;  // fiber_main's own (never used) return address
  *--top = reinterpret_cast<uintptr_t>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--top = 0;
  return top;
}

void yield(State s) {
  W->state[W->cur] = s;
  leaving_fiber(false);
  emu_switch(&W->sp[W->cur], W->sched);
  arrived_on_fiber();
}

const char* state_name(int s) {
  switch (s) {
    case RUNNABLE: return "running";
    case AT_BLOCK_BARRIER: return "__syncthreads";
    case AT_WARP_BARRIER: return "warp collective";
    case SPINNING: return "mbarrier wait";
    default: return "exited";
  }
}

// Runs one block to completion. False (after a report on stderr) on a barrier deadlock.
bool run_block(const char* name) {
  Worker* w = W;
  const int n = w->nthreads;
  for (int t = 0; t < n; ++t) {
    w->sp[t] = fresh_stack(w->stacks + (size_t)t * STACK_BYTES);
    w->state[t] = RUNNABLE;
  }
  // WHITTLE_EMU_ORDER=reverse runs each round's fibers last thread first: a read of shared
  // memory that a missing barrier leaves unordered sees the other thread's value in one order
  // and the stale one in the other, so running both orders exposes it in either direction.
  // WHITTLE_EMU_ORDER=random[:SEED] shuffles every round (a seeded xorshift, so a failure
  // repeats with the same seed): dependencies among three or more threads, or between two in
  // the middle of a block, meet orders neither fixed one gives.
  static const int order = [] {
    const char* o = std::getenv("WHITTLE_EMU_ORDER");
    if (!o) return 0;
    if (std::strcmp(o, "reverse") == 0) return 1;
    return std::strncmp(o, "random", 6) == 0 ? 2 : 0;
  }();
  if (order == 2 && w->rng == 0) {
    const char* o = std::getenv("WHITTLE_EMU_ORDER");
    const char* colon = std::strchr(o, ':');
    w->rng = colon ? std::strtoull(colon + 1, nullptr, 10) * 0x9E3779B97F4A7C15ull + 1 : 0x2545F4914F6CDD1Dull;
  }
  std::vector<int> perm(n);
  for (int t = 0; t < n; ++t) perm[t] = t;
  for (;;) {
    w->progress = false;
    if (order == 2)
      for (int i = n - 1; i > 0; --i) {
        w->rng ^= w->rng << 13;
        w->rng ^= w->rng >> 7;
        w->rng ^= w->rng << 17;
        std::swap(perm[i], perm[w->rng % (uint64_t)(i + 1)]);
      }
    for (int i = 0; i < n; ++i) {
      const int t = order == 1 ? n - 1 - i : order == 2 ? perm[i] : i;
      if (w->state[t] != RUNNABLE) continue;
      w->cur = t;
      set_thread_index(t);
#if EMU_ASAN
      __sanitizer_start_switch_fiber(&w->sched_fake, w->stacks + (size_t)t * STACK_BYTES, STACK_BYTES);
#endif
      emu_switch(&w->sched, w->sp[t]);
#if EMU_ASAN
      __sanitizer_finish_switch_fiber(w->sched_fake, nullptr, nullptr);
#endif
    }
    bool released = false, live = false;
    for (int w0 = 0; w0 < n; w0 += 32) {
      const int w1 = w0 + 32 < n ? w0 + 32 : n;
      bool any = false, all = true;
      for (int t = w0; t < w1; ++t) {
        if (w->state[t] == DONE) continue;
        any = true;
        all = all && w->state[t] == AT_WARP_BARRIER;
      }
      if (any && all) {
        for (int t = w0; t < w1; ++t)
          if (w->state[t] != DONE) w->state[t] = RUNNABLE;
        released = true;
      }
      live = live || any;
    }
    // Fibers polling an mbarrier run again while anything moved; when nothing did, nothing will.
    bool spinning = false;
    for (int t = 0; t < n; ++t) spinning = spinning || w->state[t] == SPINNING;
    if (spinning && (released || w->progress)) {
      for (int t = 0; t < n; ++t)
        if (w->state[t] == SPINNING) w->state[t] = RUNNABLE;
      continue;
    }
    if (released) continue;
    if (!live) return true;
    bool all_block = true;
    for (int t = 0; t < n; ++t) all_block = all_block && (w->state[t] == DONE || w->state[t] == AT_BLOCK_BARRIER);
    if (all_block) {
      for (int t = 0; t < n; ++t)
        if (w->state[t] != DONE) w->state[t] = RUNNABLE;
      continue;
    }
    std::fprintf(stderr, "whittle-emu: %s block (%u,%u,%u) deadlocked: threads wait at different barriers:\n", name,
                 blockIdx.x, blockIdx.y, blockIdx.z);
    for (int t = 0; t < n; t += 32) {
      std::fprintf(stderr, "  warp %d:", t / 32);
      for (int u = t; u < t + 32 && u < n; ++u) std::fprintf(stderr, " %s", state_name(w->state[u]));
      std::fprintf(stderr, "\n");
    }
    return false;
  }
}

// --- driver objects ---------------------------------------------------------------------------

struct Func {
  const EmuKernel* k;
  int max_dynamic_smem = SMEM_DEFAULT;
};
struct Event {
  double ms = 0;
};

std::mutex mu;
std::map<uintptr_t, size_t> allocs;  // base -> bytes
std::map<std::string, Func*> funcs;
int fake_ctx, fake_module, fake_stream;
bool initialised = false;

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// Is [p, p+n) inside one allocation?
bool in_alloc(uintptr_t p, size_t n) {
  std::lock_guard<std::mutex> g(mu);
  auto it = allocs.upper_bound(p);
  if (it == allocs.begin()) return false;
  --it;
  return p >= it->first && p + n <= it->first + it->second;
}

CUresult bad(const char* what) {
  std::fprintf(stderr, "whittle-emu: %s\n", what);
  return CUDA_ERROR_INVALID_VALUE;
}

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}

// Shared memory a block may opt into, per emulated part (WHITTLE_EMU_SM): 227 KB on sm_90,
// 163 KB on sm_80, 99 KB on sm_86/sm_89 — so the host's tile choices see the real limits.
int smem_optin() {
  const int sm = env_int("WHITTLE_EMU_SM", 90);
  return sm >= 90 ? 232448 : sm == 80 ? 166912 : 101376;
}

}  // namespace

extern "C" {

void emu_block_barrier() { yield(AT_BLOCK_BARRIER); }
void emu_warp_barrier() { yield(AT_WARP_BARRIER); }
void emu_spin() { yield(SPINNING); }
void emu_progress() { W->progress = true; }
void* emu_warp_slot(int lane) { return W->slots[W->cur / 32][lane]; }
unsigned char* emu_dynamic_smem() { return W->smem; }
unsigned emu_smem_offset(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(W->smem);
  if (!W->smem || a < b || a >= b + W->smem_bytes) {
    std::fprintf(stderr, "whittle-emu: shared-window address of a pointer outside this launch's %u bytes of "
                 "dynamic shared memory\n", W->smem_bytes);
    std::abort();
  }
  return static_cast<unsigned>(a - b);
}
void* emu_smem_ptr(unsigned off) {
  if (off >= W->smem_bytes) {
    std::fprintf(stderr, "whittle-emu: shared address %u past this launch's %u bytes of dynamic shared memory\n",
                 off, W->smem_bytes);
    std::abort();
  }
  return W->smem + off;
}

// --- initialisation and device queries ---------------------------------------------------------

CUresult CUDAAPI cuInit(unsigned int) {
  initialised = true;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDriverGetVersion(int* v) {
  *v = env_int("WHITTLE_EMU_DRIVER", 13000);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetCount(int* n) {
  *n = 1;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGet(CUdevice* d, int ordinal) {
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetName(char* name, int len, CUdevice) {
  std::snprintf(name, len, "whittle-emu (CPU emulation of CUDA kernels)");
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceTotalMem(size_t* bytes, CUdevice) {
  *bytes = size_t(16) << 30;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemGetInfo(size_t* free, size_t* total) {
  *total = size_t(16) << 30;
  size_t used = 0;
  {
    std::lock_guard<std::mutex> g(mu);
    for (auto& a : allocs) used += a.second;
  }
  *free = *total > used ? *total - used : 0;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice) {
  const int sm = env_int("WHITTLE_EMU_SM", 90);
  switch (a) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = sm / 10; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = sm % 10; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 132; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = smem_optin(); break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = SMEM_DEFAULT; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = MAX_THREADS; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *v = 50 << 20; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 0x7fffffff; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *v = 1755000; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
    default: *v = 0;
  }
  return CUDA_SUCCESS;
}

// --- contexts, streams, events (tokens: everything is synchronous) -----------------------------

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) {
  *c = reinterpret_cast<CUcontext>(&fake_ctx);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxGetCurrent(CUcontext* c) {
  *c = reinterpret_cast<CUcontext>(&fake_ctx);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxPushCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxPopCurrent(CUcontext* c) {
  if (c) *c = reinterpret_cast<CUcontext>(&fake_ctx);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetDevice(CUdevice* d) {
  *d = 0;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxSynchronize(void) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamCreate(CUstream* s, unsigned int) {
  *s = reinterpret_cast<CUstream>(&fake_stream);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamCreateWithPriority(CUstream* s, unsigned int, int) {
  *s = reinterpret_cast<CUstream>(&fake_stream);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamDestroy(CUstream) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamQuery(CUstream) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventCreate(CUevent* e, unsigned int) {
  *e = reinterpret_cast<CUevent>(new Event());
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventDestroy(CUevent e) {
  delete reinterpret_cast<Event*>(e);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventRecord(CUevent e, CUstream) {
  reinterpret_cast<Event*>(e)->ms = now_ms();
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventRecordWithFlags(CUevent e, CUstream s, unsigned int) { return cuEventRecord(e, s); }
CUresult CUDAAPI cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventQuery(CUevent) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
  *ms = static_cast<float>(reinterpret_cast<Event*>(b)->ms - reinterpret_cast<Event*>(a)->ms);
  return CUDA_SUCCESS;
}

// --- memory -------------------------------------------------------------------------------------

CUresult CUDAAPI cuMemAlloc(CUdeviceptr* p, size_t n) {
  // 256-byte aligned like the driver's. With AddressSanitizer the block is exactly n bytes, so a
  // kernel reading or writing past its buffer is reported with the kernel's stack.
  const size_t bytes = EMU_ASAN ? (n ? n : 1) : (n + 255) / 256 * 256 + (n ? 0 : 256);
  void* m = nullptr;
  if (posix_memalign(&m, 256, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  // Fresh device memory holds garbage: NaN-ish bytes make a read of unwritten memory visible.
  std::memset(m, 0xff, bytes);
  std::lock_guard<std::mutex> g(mu);
  allocs[reinterpret_cast<uintptr_t>(m)] = n;
  *p = reinterpret_cast<CUdeviceptr>(m);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream) { return cuMemAlloc(p, n); }
CUresult CUDAAPI cuMemFree(CUdeviceptr p) {
  {
    std::lock_guard<std::mutex> g(mu);
    auto it = allocs.find(static_cast<uintptr_t>(p));
    if (it == allocs.end()) return bad("cuMemFree of a pointer that is not an allocation");
    allocs.erase(it);
  }
  std::free(reinterpret_cast<void*>(p));
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree(p); }

CUresult CUDAAPI cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t n) {
  if (!in_alloc(dst, n)) return bad("host-to-device copy outside a device allocation");
  std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream) {
  return cuMemcpyHtoD(dst, src, n);
}
CUresult CUDAAPI cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
  if (!in_alloc(src, n)) return bad("device-to-host copy outside a device allocation");
  std::memcpy(dst, reinterpret_cast<void*>(src), n);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoH(dst, src, n); }
CUresult CUDAAPI cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  if (!in_alloc(src, n) || !in_alloc(dst, n)) return bad("device-to-device copy outside a device allocation");
  std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
  return cuMemcpyDtoD(dst, src, n);
}
CUresult CUDAAPI cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) {
  if (!in_alloc(dst, n)) return bad("memset outside a device allocation");
  std::memset(reinterpret_cast<void*>(dst), v, n);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) { return cuMemsetD8(dst, v, n); }
CUresult CUDAAPI cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream) {
  if (!in_alloc(dst, n * 4)) return bad("memset outside a device allocation");
  auto* p = reinterpret_cast<unsigned int*>(dst);
  for (size_t i = 0; i < n; ++i) p[i] = v;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemHostAlloc(void** p, size_t n, unsigned int) {
  *p = std::malloc(n ? n : 1);
  return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult CUDAAPI cuMemAllocHost(void** p, size_t n) { return cuMemHostAlloc(p, n, 0); }
CUresult CUDAAPI cuMemFreeHost(void* p) {
  std::free(p);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemHostRegister(void*, size_t, unsigned int) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuMemHostUnregister(void*) { return CUDA_SUCCESS; }

// --- modules and launches -----------------------------------------------------------------------

CUresult CUDAAPI cuModuleLoadData(CUmodule* m, const void*) {
  *m = reinterpret_cast<CUmodule>(&fake_module);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuModuleUnload(CUmodule) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
  std::lock_guard<std::mutex> g(mu);
  auto it = funcs.find(name);
  if (it == funcs.end()) {
    for (int i = 0; i < emu_kernel_count; ++i)
      if (std::strcmp(emu_kernels[i].name, name) == 0) it = funcs.emplace(name, new Func{&emu_kernels[i]}).first;
  }
  if (it == funcs.end()) return CUDA_ERROR_NOT_FOUND;
  *f = reinterpret_cast<CUfunction>(it->second);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
  if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
    if (v > smem_optin()) return bad("dynamic shared memory opt-in above the device limit");
    reinterpret_cast<Func*>(f)->max_dynamic_smem = v;
  }
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
  switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = reinterpret_cast<Func*>(f)->max_dynamic_smem; break;
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = MAX_THREADS; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *v = 64; break;
    default: *v = 0;
  }
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                unsigned int by, unsigned int bz, unsigned int smem, CUstream, void** params,
                                void** extra) {
  Func* fn = reinterpret_cast<Func*>(f);
  const char* name = fn->k->name;
  char msg[256];
  if (extra) return bad("cuLaunchKernel: `extra` is not supported");
  if (!gx || !gy || !gz || !bx || !by || !bz || gy > 65535 || gz > 65535 || bz > 64 ||
      (size_t)bx * by * bz > MAX_THREADS) {
    std::snprintf(msg, sizeof msg, "%s: invalid launch grid (%u,%u,%u) block (%u,%u,%u)", name, gx, gy, gz, bx, by,
                  bz);
    return bad(msg);
  }
  if ((int)smem > fn->max_dynamic_smem) {
    std::snprintf(msg, sizeof msg, "%s: %u bytes of dynamic shared memory but the function allows %d", name, smem,
                  fn->max_dynamic_smem);
    return bad(msg);
  }
  Worker* w = worker();
  w->thunk = fn->k->thunk;
  w->params = params;
  w->nthreads = (int)(bx * by * bz);
  blockDim = dim3(bx, by, bz);
  gridDim = dim3(gx, gy, gz);
  // Shared memory starts as garbage on a GPU too.
  void* sm = nullptr;
  if (posix_memalign(&sm, 1024, smem ? smem : 1) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  std::memset(sm, 0xa5, smem ? smem : 1);
  w->smem = static_cast<unsigned char*>(sm);
  w->smem_bytes = smem;
  struct Free {
    Worker* w;
    ~Free() {
      std::free(w->smem);
      w->smem = nullptr;
      w->smem_bytes = 0;
    }
  } free_smem{w};
  for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
      for (unsigned x = 0; x < gx; ++x) {
        blockIdx.x = x, blockIdx.y = y, blockIdx.z = z;
        if (!run_block(name)) return CUDA_ERROR_LAUNCH_FAILED;
      }
  return CUDA_SUCCESS;
}

// --- TMA tensor maps -------------------------------------------------------------------------------

// Checks what the driver documents for a tiled map (the subset whittle uses: bf16/f16/f32, rank
// 2, no interleave) and records the fields tma_load_2d (emu.h) reads.
CUresult CUDAAPI cuTensorMapEncodeTiled(CUtensorMap* map, CUtensorMapDataType dtype, cuuint32_t rank, void* addr,
                                        const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                                        const cuuint32_t* estrides, CUtensorMapInterleave interleave,
                                        CUtensorMapSwizzle swizzle, CUtensorMapL2promotion,
                                        CUtensorMapFloatOOBfill oob) {
  int es = 0;
  switch (dtype) {
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16: es = 2; break;
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32: es = 4; break;
    default: return bad("cuTensorMapEncodeTiled: data type not modelled");
  }
  if (reinterpret_cast<uintptr_t>(map) % 64 != 0) return bad("cuTensorMapEncodeTiled: map not 64-byte aligned");
  if (rank != 2) return bad("cuTensorMapEncodeTiled: only rank 2 is modelled");
  if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return bad("cuTensorMapEncodeTiled: interleave not modelled");
  if (oob != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) return bad("cuTensorMapEncodeTiled: NaN fill not modelled");
  if (reinterpret_cast<uintptr_t>(addr) % 16 != 0) return bad("cuTensorMapEncodeTiled: address not 16-byte aligned");
  for (int i = 0; i < 2; ++i)
    if (dims[i] == 0 || dims[i] > (1ull << 32)) return bad("cuTensorMapEncodeTiled: dimension outside 1..2^32");
  if (strides[0] % 16 != 0 || strides[0] >= (1ull << 40) || strides[0] < dims[0] * es)
    return bad("cuTensorMapEncodeTiled: stride not a multiple of 16 bytes, or shorter than a row");
  for (int i = 0; i < 2; ++i)
    if (box[i] == 0 || box[i] > 256 || estrides[i] != 1) return bad("cuTensorMapEncodeTiled: box outside 1..256");
  if ((box[0] * es) % 16 != 0) return bad("cuTensorMapEncodeTiled: inner box not a multiple of 16 bytes");
  int sw = 0;
  switch (swizzle) {
    case CU_TENSOR_MAP_SWIZZLE_NONE: sw = 0; break;
    case CU_TENSOR_MAP_SWIZZLE_128B: sw = 128; break;
    default: return bad("cuTensorMapEncodeTiled: swizzle mode not modelled");
  }
  if (sw && box[0] * es > (unsigned)sw) return bad("cuTensorMapEncodeTiled: inner box wider than the swizzle span");
  if (!in_alloc(reinterpret_cast<uintptr_t>(addr), (size_t)strides[0] * (dims[1] - 1) + dims[0] * es))
    return bad("cuTensorMapEncodeTiled: the described matrix is not inside one device allocation");
  unsigned long long* f = reinterpret_cast<unsigned long long*>(map->opaque);
  std::memset(f, 0, sizeof(CUtensorMap));
  f[TMA_MAGIC] = EMU_TMA_MAGIC;
  f[TMA_ADDR] = reinterpret_cast<uintptr_t>(addr);
  f[TMA_DIM0] = dims[0];
  f[TMA_DIM1] = dims[1];
  f[TMA_STRIDE1] = strides[0];
  f[TMA_BOX0] = box[0];
  f[TMA_BOX1] = box[1];
  f[TMA_ESIZE] = (unsigned long long)es;
  f[TMA_SWIZZLE] = (unsigned long long)sw;
  return CUDA_SUCCESS;
}

// --- errors ---------------------------------------------------------------------------------------

CUresult CUDAAPI cuGetErrorString(CUresult e, const char** s) {
  switch (e) {
    case CUDA_SUCCESS: *s = "no error"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument (whittle-emu printed why on stderr)"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "named symbol not found"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *s = "unspecified launch failure (whittle-emu: barrier deadlock)"; break;
    default: *s = "whittle-emu error";
  }
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuGetErrorName(CUresult e, const char** s) {
  switch (e) {
    case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
    default: *s = "CUDA_ERROR_UNKNOWN";
  }
  return CUDA_SUCCESS;
}

}  // extern "C"
