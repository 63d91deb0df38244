// cuda_emu.h: run CUDA source on the CPU, for testing on machines without a GPU.
//
// This header is passed to g++ with `-include` ahead of a .cu file whose
// kernel launches were rewritten by cuda_emu_rewrite.py (see README.md and
// emu.mk). It gives the CUDA qualifiers host meanings before the real CUDA
// headers are read, then provides what a host compiler lacks: the built-in
// variables (threadIdx, blockIdx, blockDim, gridDim, warpSize), barriers, warp
// intrinsics, atomics, math intrinsics and the launch function. The CUDA
// runtime, cuBLAS and cuBLASLt are defined in cuda_emu_runtime.cpp and
// cuda_emu_cublas.cpp with the real headers' signatures.
//
// How a launch runs: every CUDA thread of a block is its own fiber (own stack),
// so __syncthreads() is a real barrier and warp shuffles exchange values between
// the lanes' fibers. A thread runs until it finishes or waits at a barrier /
// warp operation; a fiber whose thread finished takes the next thread of the
// block, so a kernel without barriers costs no context switch per thread.
// Blocks run one after another on the calling OS thread.
//
// Shared memory: cuda_emu_rewrite.py turns every `__shared__` declaration into a
// reference into a per-block arena (static ones allocated on first use in the
// block, `extern __shared__` ones at the arena start). The arena is refilled
// with 0xff bytes (NaN for float/bf16, -1 for ints) for every block, and under
// AddressSanitizer the gaps between variables and the bytes past the dynamic
// size are poisoned, so stale or out-of-bounds shared reads show up.
//
// What it reports (each message names the kernel): a bad launch configuration
// (block over 1024 threads, empty grid/block, grid too large), shared memory
// over the device limit (dynamic smem above 48 KiB without the
// cudaFuncSetAttribute opt-in, or above the opt-in maximum), a __syncthreads()
// that only part of the block reaches or threads waiting at different
// __syncthreads() (deadlock), warp operations with mismatched masks, a host or
// freed pointer passed to a kernel or to cudaMemcpy/cuBLAS, and, when built
// with -fsanitize=address, out-of-bounds and use-after-cudaFree accesses inside
// kernels. With nvcc at build time (emu.mk), a launch a GPU would refuse for
// its registers or __launch_bounds__ ("too many resources requested for
// launch"). In the race-check build (X_race, -DCUDA_EMU_RACECHECK), races on
// shared memory (cuda_emu_racecheck.cpp).
//
// LIMITS: what it cannot find.
// - Data races on global memory (and on shared memory outside the race-check
//   build): here threads of a block run one at a time, in thread order,
//   switching only at barriers and warp operations; blocks run one after
//   another. A race that needs a particular interleaving may pass here and
//   fail on a GPU. (Setting CUDA_EMU_THREAD_ORDER=reverse runs threads in
//   reverse order, which exposes some order dependences.)
// - Memory-model subtleties: fences, volatile, atomics' ordering, asynchronous
//   copies (cp.async, TMA), streams running concurrently. Every operation here
//   is sequentially consistent and synchronous.
// - Anything about performance: occupancy, coalescing, bank conflicts,
//   register spills. Timings are CPU timings. The launch-resource check needs
//   nvcc at build time.
// - Floating-point details of the GPU: fast-math intrinsics (__expf, ...) are
//   computed with the precise libm function; cuBLAS accumulates in double and
//   ignores TF32 modes.
// Real GPU runs remain the final word.
#ifndef CUDA_EMU_H
#define CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h: compile the rewritten CUDA source as C++ (g++ -x c++)"
#endif
#if defined(__CUDACC__)
#error "cuda_emu.h is for host compilers; under nvcc build the real CUDA program"
#endif
#if __cplusplus < 201703L
#error "cuda_emu.h needs C++17 (-std=c++17)"
#endif

#define CUDA_EMU 1
#if defined(__SANITIZE_THREAD__) && !defined(CUDA_EMU_RACECHECK)
#error "cuda_emu: a -fsanitize=thread build is the race-check flavour: build it as X_race (emu.mk), which adds -DCUDA_EMU_RACECHECK and links the detector instead of ThreadSanitizer's runtime"
#endif

// qualifiers with host meanings, defined before the CUDA headers so that
// crt/host_defines.h keeps them
#define __global__
#define __device__
#define __host__
#define __constant__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__
// the rewrite step replaces every __shared__ declaration; one left over means
// the file was not rewritten (or the declaration is outside a function)
#define __shared__ _Pragma("GCC error \"cuda_emu: __shared__ declaration not rewritten: build through cuda_emu_rewrite.py (emu.mk); file-scope __shared__ is not supported\"")
#define __managed__ _Pragma("GCC error \"cuda_emu: __managed__ variables are not supported\"")

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <cublasLt.h>

// nvcc's device headers pull these in implicitly
#include <math.h>
#include <cmath>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <assert.h>
#include <stdint.h>
#include <limits.h>
#include <float.h>
#include <time.h>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------
// harness state visible to kernels (defined in cuda_emu_runtime.cpp)

namespace cuda_emu {

struct thread_state;  // one CUDA thread of the running block

// the thread whose fiber runs now; its first member is its threadIdx
extern thread_state* g_current_thread;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;
extern unsigned long long g_block_serial;  // changes for every block run

inline const uint3& builtin_thread_idx() { return *reinterpret_cast<const uint3*>(g_current_thread); }

// barriers and warp operations (the calling site is for error messages)
void syncthreads_at(const char* file, int line);
int syncthreads_reduce_at(int kind, int predicate, const char* file, int line);
enum warp_op_kind {
  WARP_SYNC, WARP_SHFL, WARP_SHFL_UP, WARP_SHFL_DOWN, WARP_SHFL_XOR,
  WARP_BALLOT, WARP_ANY, WARP_ALL, WARP_MATCH_ANY, WARP_MATCH_ALL,
  WARP_REDUCE_ADD, WARP_REDUCE_MIN, WARP_REDUCE_MAX, WARP_REDUCE_UMIN, WARP_REDUCE_UMAX,
  WARP_REDUCE_AND, WARP_REDUCE_OR, WARP_REDUCE_XOR, WARP_WMMA, WARP_OP_COUNT
};
// value: up to 8 bytes in, 8 bytes out (shuffled value or vote result)
unsigned long long warp_op_at(int kind, unsigned mask, unsigned long long value, int value_size,
                              int param, int width, const char* file, int line);
unsigned active_mask();
[[noreturn]] void device_trap(const char* what, const char* file, int line);

// shared memory
struct shared_site {
  unsigned long long block_serial;  // block that placed the variable
  void* address;
};
void shared_site_place(shared_site* site, size_t size, size_t align, const char* name);
void* dynamic_shared_memory(const char* name);

// one static site per declaration (the lambda tag type is unique per site)
template <class T, class Tag>
inline T& shared_variable(Tag, const char* name, size_t align = 0) {
  static shared_site site;
  if (site.block_serial != g_block_serial)
    shared_site_place(&site, sizeof(T), alignof(T) > align ? alignof(T) : align, name);
  return *static_cast<T*>(site.address);
}
template <class T>
inline T* dynamic_shared(const char* name = nullptr) { return static_cast<T*>(dynamic_shared_memory(name)); }

// the race detector of the race-check build (X_race; cuda_emu_racecheck.cpp):
// the harness reports blocks, barriers, warp operations and thread switches;
// the emulated atomics mark their accesses (atomics do not race with atomics)
#if defined(CUDA_EMU_RACECHECK)
void race_block_begin(const char* kernel, unsigned char* arena, size_t arena_bytes, size_t dynamic_bytes);
void race_launch_end();
void race_set_thread(int linear);
void race_shared_variable(size_t offset, size_t size, const char* name);
void race_dynamic_shared_name(const char* name);
void race_barrier();
void race_warp_sync(int warp, unsigned participants);
extern int g_race_atomic;
struct race_atomic_section {
  race_atomic_section() { g_race_atomic++; }
  ~race_atomic_section() { g_race_atomic--; }
};
#define CUDA_EMU_ATOMIC_SECTION ::cuda_emu::race_atomic_section cuda_emu_atomic_section_;
#else
#define CUDA_EMU_ATOMIC_SECTION
#endif

// launches
struct launch_config {
  dim3 grid;
  dim3 block;
  size_t shared_bytes;
  cudaStream_t stream;
};
inline launch_config config(dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t stream = 0) {
  return launch_config{grid, block, shared_bytes, stream};
}
template <class F>
inline const void* kernel_address(F* kernel) { return reinterpret_cast<const void*>(kernel); }

void run_grid(const char* kernel_name, const void* kernel, const launch_config& cfg,
              void (*run_thread)(void*), void* closure);
void check_kernel_pointer_argument(const char* kernel_name, int index, const void* p);

template <class Params, size_t... I>
inline void check_pointer_arguments(const char* kernel_name, const Params& params, std::index_sequence<I...>) {
  (void)kernel_name;
  (void)params;
  auto check_one = [&](int index, const auto& value) {
    if constexpr (std::is_pointer<std::decay_t<decltype(value)>>::value)
      check_kernel_pointer_argument(kernel_name, index, (const void*)value);
  };
  (void)check_one;  // unused for kernels without arguments
  (check_one((int)I, std::get<I>(params)), ...);
}

// cuda_emu_rewrite.py turns `kernel<<<cfg>>>(args)` into
// launch("kernel", kernel_address(kernel) or nullptr, config(cfg), [&](auto&... a){ kernel(a...); }, args)
// the arguments are evaluated once; every CUDA thread calls the kernel with
// copies of them, so template kernels deduce their parameters as usual
template <class Call, class... Args>
inline void launch(const char* kernel_name, const void* kernel, const launch_config& cfg, Call call, Args&&... args) {
  using Params = std::tuple<std::decay_t<Args>...>;
  struct closure_type {
    Call call;
    Params params;
  };
  closure_type closure{call, Params(std::forward<Args>(args)...)};
  check_pointer_arguments(kernel_name, closure.params, std::index_sequence_for<Args...>{});
  run_grid(kernel_name, kernel, cfg,
           [](void* c) {
             closure_type* cl = static_cast<closure_type*>(c);
             std::apply(cl->call, cl->params);
           },
           &closure);
}

template <class T>
inline unsigned long long to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "cuda_emu: warp shuffles move values of at most 8 bytes");
  unsigned long long b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace cuda_emu

// device memory accounting (the harness only: test `#ifdef CUDA_EMU`): bytes
// requested by live cudaMalloc/cudaMallocManaged allocations (not pinned host
// memory), their high-water mark since the start or the last reset, and the
// number of live allocations. Any pointer may be NULL.
extern "C" void cuda_emu_device_memory(size_t* live_bytes, size_t* peak_bytes, size_t* live_allocations);
extern "C" void cuda_emu_device_memory_reset_peak(void);  // peak := live

// what a training step must not do, counted since the start or the last
// cuda_emu_api_counts_reset (the harness only;
// cuda_emu_runtime.cpp says which calls count): allocations and frees (device,
// managed, pinned), calls that make the host wait for the device, and waits
// for one event. cuda_emu_api_counts_print lists each call's count by name,
// one a line after indent, for a test's failure message
typedef struct {
  long long allocations, frees, host_waits, event_waits;
} CudaEmuApiCounts;
extern "C" void cuda_emu_api_counts(CudaEmuApiCounts* out);
extern "C" void cuda_emu_api_counts_print(FILE* f, const char* indent);
extern "C" void cuda_emu_api_counts_reset(void);

// the C++ overloads that cuda_runtime.h declares only under nvcc
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, enum cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}
template <class T>
inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, T* entry) {
  return ::cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(entry));
}
template <class T>
inline cudaError_t cudaMemcpyToSymbol(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                      enum cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
  return ::cudaMemcpyToSymbol((const void*)&symbol, src, count, offset, kind);
}
template <class T>
inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t count, size_t offset = 0,
                                        enum cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
  return ::cudaMemcpyFromSymbol(dst, (const void*)&symbol, count, offset, kind);
}
template <class T>
inline cudaError_t cudaGetSymbolAddress(void** devPtr, const T& symbol) {
  return ::cudaGetSymbolAddress(devPtr, (const void*)&symbol);
}

// ---------------------------------------------------------------------------
// built-in variables

#define threadIdx (::cuda_emu::builtin_thread_idx())
#define blockIdx (static_cast<const uint3&>(::cuda_emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::cuda_emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::cuda_emu::g_grid_dim))
static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// barriers and warp intrinsics (the __builtin_FILE/LINE defaults name the call site)

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_emu::syncthreads_at(file, line);
}
inline int __syncthreads_count(int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::cuda_emu::syncthreads_reduce_at(0, predicate, file, line);
}
inline int __syncthreads_and(int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::cuda_emu::syncthreads_reduce_at(1, predicate, file, line);
}
inline int __syncthreads_or(int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::cuda_emu::syncthreads_reduce_at(2, predicate, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_emu::warp_op_at(::cuda_emu::WARP_SYNC, mask, 0, 0, 0, 32, file, line);
}
inline unsigned __activemask() { return ::cuda_emu::active_mask(); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op_at(::cuda_emu::WARP_SHFL, mask, ::cuda_emu::to_bits(var),
                                                         (int)sizeof(T), src_lane, width, file, line));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op_at(::cuda_emu::WARP_SHFL_UP, mask, ::cuda_emu::to_bits(var),
                                                         (int)sizeof(T), (int)delta, width, file, line));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op_at(::cuda_emu::WARP_SHFL_DOWN, mask, ::cuda_emu::to_bits(var),
                                                         (int)sizeof(T), (int)delta, width, file, line));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op_at(::cuda_emu::WARP_SHFL_XOR, mask, ::cuda_emu::to_bits(var),
                                                         (int)sizeof(T), lane_mask, width, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return (unsigned)::cuda_emu::warp_op_at(::cuda_emu::WARP_BALLOT, mask, predicate != 0, 4, 0, 32, file, line);
}
inline int __any_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return (int)::cuda_emu::warp_op_at(::cuda_emu::WARP_ANY, mask, predicate != 0, 4, 0, 32, file, line);
}
inline int __all_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return (int)::cuda_emu::warp_op_at(::cuda_emu::WARP_ALL, mask, predicate != 0, 4, 0, 32, file, line);
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  return (unsigned)::cuda_emu::warp_op_at(::cuda_emu::WARP_MATCH_ANY, mask, ::cuda_emu::to_bits(value),
                                          (int)sizeof(T), 0, 32, file, line);
}
template <class T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  unsigned r = (unsigned)::cuda_emu::warp_op_at(::cuda_emu::WARP_MATCH_ALL, mask, ::cuda_emu::to_bits(value),
                                                (int)sizeof(T), 0, 32, file, line);
  *pred = r != 0;
  return r;
}
#define CUDA_EMU_WARP_REDUCE(name, kind, type)                                                             \
  inline type name(unsigned mask, type value, const char* file = __builtin_FILE(),                        \
                   int line = __builtin_LINE()) {                                                         \
    return (type)::cuda_emu::warp_op_at(::cuda_emu::kind, mask, (unsigned)value, 4, 0, 32, file, line); \
  }
CUDA_EMU_WARP_REDUCE(__reduce_add_sync, WARP_REDUCE_ADD, unsigned)
CUDA_EMU_WARP_REDUCE(__reduce_add_sync, WARP_REDUCE_ADD, int)
CUDA_EMU_WARP_REDUCE(__reduce_min_sync, WARP_REDUCE_UMIN, unsigned)
CUDA_EMU_WARP_REDUCE(__reduce_min_sync, WARP_REDUCE_MIN, int)
CUDA_EMU_WARP_REDUCE(__reduce_max_sync, WARP_REDUCE_UMAX, unsigned)
CUDA_EMU_WARP_REDUCE(__reduce_max_sync, WARP_REDUCE_MAX, int)
CUDA_EMU_WARP_REDUCE(__reduce_and_sync, WARP_REDUCE_AND, unsigned)
CUDA_EMU_WARP_REDUCE(__reduce_or_sync, WARP_REDUCE_OR, unsigned)
CUDA_EMU_WARP_REDUCE(__reduce_xor_sync, WARP_REDUCE_XOR, unsigned)
#undef CUDA_EMU_WARP_REDUCE

// memory fences: every access here is sequentially consistent already
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline void __nanosleep(unsigned) {}
inline long long clock64() {  // nanoseconds, not GPU cycles
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
[[noreturn]] inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_emu::device_trap("__trap()", file, line);
}
[[noreturn]] inline void __brkpt(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_emu::device_trap("__brkpt()", file, line);
}

// cache-hinted loads and stores are plain accesses
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------
// atomics: blocks and threads never run at the same time, so a plain
// read-modify-write is atomic here

#define CUDA_EMU_ATOMIC_RMW(name, type, expr)        \
  inline type name(type* address, type val) {        \
    CUDA_EMU_ATOMIC_SECTION                          \
    type old = *address;                             \
    *address = (expr);                               \
    return old;                                      \
  }                                                  \
  inline type name##_block(type* address, type val) { return name(address, val); } \
  inline type name##_system(type* address, type val) { return name(address, val); }
CUDA_EMU_ATOMIC_RMW(atomicAdd, int, old + val)
CUDA_EMU_ATOMIC_RMW(atomicAdd, unsigned int, old + val)
CUDA_EMU_ATOMIC_RMW(atomicAdd, unsigned long long, old + val)
CUDA_EMU_ATOMIC_RMW(atomicAdd, float, old + val)
CUDA_EMU_ATOMIC_RMW(atomicAdd, double, old + val)
CUDA_EMU_ATOMIC_RMW(atomicAdd, __nv_bfloat16, __float2bfloat16(__bfloat162float(old) + __bfloat162float(val)))
CUDA_EMU_ATOMIC_RMW(atomicAdd, __half, __float2half(__half2float(old) + __half2float(val)))
CUDA_EMU_ATOMIC_RMW(atomicSub, int, old - val)
CUDA_EMU_ATOMIC_RMW(atomicSub, unsigned int, old - val)
CUDA_EMU_ATOMIC_RMW(atomicExch, int, val)
CUDA_EMU_ATOMIC_RMW(atomicExch, unsigned int, val)
CUDA_EMU_ATOMIC_RMW(atomicExch, unsigned long long, val)
CUDA_EMU_ATOMIC_RMW(atomicExch, float, val)
CUDA_EMU_ATOMIC_RMW(atomicMin, int, val < old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicMin, unsigned int, val < old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicMin, long long, val < old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicMin, unsigned long long, val < old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicMax, int, val > old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicMax, unsigned int, val > old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicMax, long long, val > old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicMax, unsigned long long, val > old ? val : old)
CUDA_EMU_ATOMIC_RMW(atomicAnd, int, old & val)
CUDA_EMU_ATOMIC_RMW(atomicAnd, unsigned int, old & val)
CUDA_EMU_ATOMIC_RMW(atomicAnd, unsigned long long, old & val)
CUDA_EMU_ATOMIC_RMW(atomicOr, int, old | val)
CUDA_EMU_ATOMIC_RMW(atomicOr, unsigned int, old | val)
CUDA_EMU_ATOMIC_RMW(atomicOr, unsigned long long, old | val)
CUDA_EMU_ATOMIC_RMW(atomicXor, int, old ^ val)
CUDA_EMU_ATOMIC_RMW(atomicXor, unsigned int, old ^ val)
CUDA_EMU_ATOMIC_RMW(atomicXor, unsigned long long, old ^ val)
CUDA_EMU_ATOMIC_RMW(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
CUDA_EMU_ATOMIC_RMW(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)
#undef CUDA_EMU_ATOMIC_RMW
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* address, __nv_bfloat162 val) {
  CUDA_EMU_ATOMIC_SECTION
  __nv_bfloat162 old = *address;
  *address = __floats2bfloat162_rn(__low2float(old) + __low2float(val), __high2float(old) + __high2float(val));
  return old;
}
inline __half2 atomicAdd(__half2* address, __half2 val) {
  CUDA_EMU_ATOMIC_SECTION
  __half2 old = *address;
  *address = __floats2half2_rn(__low2float(old) + __low2float(val), __high2float(old) + __high2float(val));
  return old;
}
#define CUDA_EMU_ATOMIC_CAS(type)                                        \
  inline type atomicCAS(type* address, type compare, type val) {         \
    CUDA_EMU_ATOMIC_SECTION                                              \
    type old = *address;                                                 \
    if (old == compare) *address = val;                                  \
    return old;                                                          \
  }                                                                      \
  inline type atomicCAS_block(type* a, type c, type v) { return atomicCAS(a, c, v); } \
  inline type atomicCAS_system(type* a, type c, type v) { return atomicCAS(a, c, v); }
CUDA_EMU_ATOMIC_CAS(int)
CUDA_EMU_ATOMIC_CAS(unsigned int)
CUDA_EMU_ATOMIC_CAS(unsigned long long)
CUDA_EMU_ATOMIC_CAS(unsigned short)
#undef CUDA_EMU_ATOMIC_CAS

// ---------------------------------------------------------------------------
// math and bit intrinsics. The fast-math ones (__expf, ...) use the precise
// function: results can differ from a GPU in the last bits.

inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }

inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
inline double __longlong_as_double(long long x) { double d; memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
inline unsigned __float2uint_rz(float x) { return (unsigned)x; }
inline long long __float2ll_rn(float x) { return (long long)nearbyintf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline int __double2int_rn(double x) { return (int)nearbyint(x); }
inline float __double2float_rn(double x) { return (float)x; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline int __mul24(int x, int y) {  // the low 32 bits of the product of the sign-extended low 24 bits
  long long a = (int)((unsigned)x << 8) >> 8, b = (int)((unsigned)y << 8) >> 8;
  return (int)(unsigned)(a * b);
}
inline unsigned __umul24(unsigned x, unsigned y) { return (x & 0xffffffu) * (y & 0xffffffu); }
inline int __mulhi(int x, int y) { return (int)(((long long)x * (long long)y) >> 32); }
inline unsigned __umulhi(unsigned x, unsigned y) {
  return (unsigned)(((unsigned long long)x * (unsigned long long)y) >> 32);
}
inline long long __mul64hi(long long x, long long y) { return (long long)(((__int128)x * (__int128)y) >> 64); }
inline unsigned long long __umul64hi(unsigned long long x, unsigned long long y) {
  return (unsigned long long)(((unsigned __int128)x * (unsigned __int128)y) >> 64);
}
inline unsigned __sad(int x, int y, unsigned z) { return z + (unsigned)(x > y ? x - y : y - x); }
inline unsigned __usad(unsigned x, unsigned y, unsigned z) { return z + (x > y ? x - y : y - x); }
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  unsigned long long v = ((unsigned long long)hi << 32) | lo;
  return (unsigned)((v << (shift & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  unsigned long long v = ((unsigned long long)hi << 32) | lo;
  return (unsigned)(v >> (shift & 31));
}

// CUDA's global min/max overloads (crt/math_functions.hpp declares the same set)
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long min(long a, unsigned long b) { return min((unsigned long)a, b); }
inline unsigned long min(unsigned long a, long b) { return min(a, (unsigned long)b); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long min(long long a, unsigned long long b) { return min((unsigned long long)a, b); }
inline unsigned long long min(unsigned long long a, long long b) { return min(a, (unsigned long long)b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double min(float a, double b) { return fmin((double)a, b); }
inline double min(double a, float b) { return fmin(a, (double)b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long max(long a, unsigned long b) { return max((unsigned long)a, b); }
inline unsigned long max(unsigned long a, long b) { return max(a, (unsigned long)b); }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned long long max(long long a, unsigned long long b) { return max((unsigned long long)a, b); }
inline unsigned long long max(unsigned long long a, long long b) { return max(a, (unsigned long long)b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double max(float a, double b) { return fmax((double)a, b); }
inline double max(double a, float b) { return fmax(a, (double)b); }
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

// bf16 device-only arithmetic that cuda_bf16.hpp leaves out on the host
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __float2bfloat16(fmaf(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c)));
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return __floats2bfloat162_rn(fmaf(__low2float(a), __low2float(b), __low2float(c)),
                               fmaf(__high2float(a), __high2float(b), __high2float(c)));
}

#endif  // CUDA_EMU_H
