// selftest.cpp — checks that the emulator itself catches what it claims to (run by
// tests/emu/build.sh after building; exit status 0 only if every check holds):
// a correct shared-memory reduction gives the right answer in both scheduling orders, a missing
// barrier gives a wrong one in at least one order, threads waiting at different barriers (or on an
// mbarrier nobody arrives on) are a launch failure, an mbarrier hand-off works in both orders, and the driver-style checks (copy bounds, shared-memory opt-in, block size)
// refuse what a real driver refuses.
#include <cuda.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "emu.h"

// out[blockIdx.x] = Σ in[block*256 .. +256] through shared memory; `barrier` = 0 drops the
// barrier between the writes and the reads (the bug the emulator must expose).
extern "C" __global__ void selftest_sum(const float* in, float* out, int barrier) {
  __shared__ float s[256];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * 256 + t];
  if (barrier) __syncthreads();
  if (t == 0) {
    float acc = 0;
    for (int i = 255; i >= 0; --i) acc += s[i];
    out[blockIdx.x] = acc;
  }
}

// Odd lanes wait at __syncthreads while the even lanes of the same warps wait in a shuffle that
// needs all 32 lanes: neither barrier can complete (a hang on a GPU), a deadlock report here.
extern "C" __global__ void selftest_divergent(float* out) {
  float v = 1.0f;
  if (threadIdx.x & 1) __syncthreads();
  else v = __shfl_xor_sync(0xffffffffu, v, 2);
  out[threadIdx.x] = v;
}

// Thread 0 writes 32 values and arrives on an mbarrier; the other lanes poll it, then read.
// `arrive` = 0: nobody arrives, the pollers spin forever (a hang on a GPU, a deadlock report here).
extern "C" __global__ void selftest_mbar(float* out, int arrive) {
  unsigned char* sm = emu_dynamic_smem();
  float* data = reinterpret_cast<float*>(sm + 64);
  const uint32_t bar = 0;
  if (threadIdx.x == 0) mbar_init(bar, 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 0; i < 32; ++i) data[i] = (float)(3 * i);
    if (arrive) mbar_arrive(bar);
  } else {
    while (!mbar_try_wait(bar, 0)) {
    }
    out[threadIdx.x] = data[threadIdx.x];
  }
}

struct EmuKernel {
  const char* name;
  void (*thunk)(void** params);
};
extern "C" const EmuKernel emu_kernels[] = {
    {"selftest_sum",
     [](void** p) { selftest_sum(*(const float**)p[0], *(float**)p[1], *(int*)p[2]); }},
    {"selftest_divergent", [](void** p) { selftest_divergent(*(float**)p[0]); }},
    {"selftest_mbar", [](void** p) { selftest_mbar(*(float**)p[0], *(int*)p[1]); }},
};
extern "C" const int emu_kernel_count = 3;

static int failures = 0;
static void expect(bool ok, const char* what) {
  std::printf("  %-70s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

// Runs selftest_sum over 4 blocks; true when every block's sum is exact.
static bool sum_is_right(CUfunction f, int barrier) {
  const int n = 4 * 256;
  float host[n], got[4];
  for (int i = 0; i < n; ++i) host[i] = (float)(i % 7);
  CUdeviceptr in, out;
  cuMemAlloc(&in, sizeof host);
  cuMemAlloc(&out, sizeof got);
  cuMemcpyHtoD(in, host, sizeof host);
  void* args[] = {&in, &out, &barrier};
  const bool launched = cuLaunchKernel(f, 4, 1, 1, 256, 1, 1, 0, nullptr, args, nullptr) == CUDA_SUCCESS;
  cuMemcpyDtoH(got, out, sizeof got);
  cuMemFree(in);
  cuMemFree(out);
  bool ok = launched;
  for (int b = 0; b < 4; ++b) {
    float want = 0;
    for (int i = 0; i < 256; ++i) want += host[b * 256 + i];
    ok = ok && got[b] == want;
  }
  return ok;
}

int main(int argc, char** argv) {
  const bool reverse = argc > 1 && std::strcmp(argv[1], "reverse") == 0;
  if (reverse) setenv("WHITTLE_EMU_ORDER", "reverse", 1);  // read at the first launch
  std::printf("whittle-emu self-test (%s order)\n", reverse ? "reverse" : "forward");
  cuInit(0);
  CUmodule m;
  cuModuleLoadData(&m, nullptr);
  CUfunction sum, div;
  expect(cuModuleGetFunction(&sum, m, "selftest_sum") == CUDA_SUCCESS, "kernel found by name");
  cuModuleGetFunction(&div, m, "selftest_divergent");
  CUfunction none;
  expect(cuModuleGetFunction(&none, m, "no_such_kernel") == CUDA_ERROR_NOT_FOUND, "unknown kernel refused");

  expect(sum_is_right(sum, 1), "shared-memory reduction with its barrier is exact");
  // Forward order: thread 0 reads before threads 1..255 wrote (their slots hold the previous
  // launch's values or garbage); reverse order: thread 0 runs last and sees everything, so
  // only one order can catch this direction — the caller runs both and ORs the outcomes.
  const bool missing_caught = !sum_is_right(sum, 0);
  if (!reverse) expect(missing_caught, "missing barrier gives a wrong sum (forward order)");

  CUdeviceptr out;
  cuMemAlloc(&out, 256 * sizeof(float));
  void* args[] = {&out};
  std::fprintf(stderr, "(a deadlock report is expected next)\n");
  expect(cuLaunchKernel(div, 1, 1, 1, 256, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_LAUNCH_FAILED,
         "threads at different barriers: launch failure");
  expect(cuLaunchKernel(div, 1, 1, 1, 1025, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_INVALID_VALUE,
         "block of 1025 threads refused");
  expect(cuLaunchKernel(div, 1, 1, 1, 32, 1, 1, 60000, nullptr, args, nullptr) == CUDA_ERROR_INVALID_VALUE,
         "60000 B of dynamic shared memory without the opt-in refused");
  CUfunction mbar;
  cuModuleGetFunction(&mbar, m, "selftest_mbar");
  {
    int arrive = 1;
    void* margs[] = {&out, &arrive};
    float got[32];
    bool ok = cuLaunchKernel(mbar, 1, 1, 1, 32, 1, 1, 256, nullptr, margs, nullptr) == CUDA_SUCCESS;
    cuMemcpyDtoH(got, out, sizeof got);
    for (int i = 1; i < 32; ++i) ok = ok && got[i] == (float)(3 * i);
    expect(ok, "mbarrier hand-off: pollers read what the arriving thread wrote");
    arrive = 0;
    std::fprintf(stderr, "(a deadlock report is expected next)\n");
    expect(cuLaunchKernel(mbar, 1, 1, 1, 32, 1, 1, 256, nullptr, margs, nullptr) == CUDA_ERROR_LAUNCH_FAILED,
           "mbarrier nobody arrives on: launch failure");
  }
  float big[300];
  expect(cuMemcpyHtoD(out, big, sizeof big) == CUDA_ERROR_INVALID_VALUE, "copy past the allocation refused");
  expect(cuMemcpyHtoD(out + 4, big, 256 * sizeof(float)) == CUDA_ERROR_INVALID_VALUE,
         "copy starting inside, ending outside refused");
  cuMemFree(out);
  std::printf("%s\n", failures ? "self-test FAILED" : "self-test ok");
  return failures ? 1 : 0;
}
