// selftest.cu: self-test of the CPU CUDA harness in dev/cuda_emu.
//
// Ordinary CUDA source: small kernels with known answers, cuBLAS/cuBLASLt GEMMs
// against naive loops, and (under the harness only) kernels with planted bugs
// that the harness must report, each run in a child process.
//
//   make dev/cuda_emu/selftest && ./dev/cuda_emu/selftest     # under the harness
//   make dev/cuda_emu/selftest_race && ./dev/cuda_emu/selftest_race   # its race-check build:
//                                                              # also the planted shared-memory races
//   ./dev/cuda_emu/selftest --bench                            # harness speed
//   nvcc -arch=sm_90 -o selftest dev/cuda_emu/selftest.cu -lcublas -lcublasLt -lcusolver   # on a GPU
//
// Prints one PASS/FAIL line per check and a last line "N passed, N failed";
// exits non-zero on any failure.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cusolverDn.h>
#include <mma.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

static int g_passed = 0, g_failed = 0;

static void check(bool ok, const char* name, const char* fmt = "", ...) {
  if (ok) {
    printf("PASS %s\n", name);
    g_passed++;
  } else {
    printf("FAIL %s", name);
    if (fmt[0]) {
      va_list ap;
      va_start(ap, fmt);
      printf(": ");
      vprintf(fmt, ap);
      va_end(ap);
    }
    printf("\n");
    g_failed++;
  }
  fflush(stdout);
}

#define CUDA_CHECK(call)                                                                              \
  do {                                                                                                \
    cudaError_t err_ = (call);                                                                        \
    if (err_ != cudaSuccess) {                                                                        \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      exit(1);                                                                                        \
    }                                                                                                 \
  } while (0)
#define CUBLAS_CHECK(call)                                                            \
  do {                                                                                \
    cublasStatus_t st_ = (call);                                                      \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                               \
      fprintf(stderr, "%s:%d: %s failed: status %d\n", __FILE__, __LINE__, #call, (int)st_); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

static const unsigned FULL_MASK = 0xffffffffu;

// deterministic test values: small multiples of 1/8 in [-1, 1], exact in fp32 and bf16
static float test_value(int i, int salt) {
  unsigned h = (unsigned)i * 2654435761u + (unsigned)salt * 40503u;
  h ^= h >> 13;
  return (float)((int)(h % 17u) - 8) / 8.0f;
}

template <class T>
static T* to_device(const std::vector<T>& host) {
  T* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, host.size() * sizeof(T)));
  CUDA_CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <class T>
static std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> host(n);
  CUDA_CHECK(cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// ---------------------------------------------------------------------------
// kernels with known answers

static const int REDUCE_THREADS = 256;

// per-block sum with a shared-memory tree and __syncthreads
__global__ void block_sum_kernel(float* partial, const float* x, int n) {
  __shared__ float buf[REDUCE_THREADS];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  buf[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if ((int)threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// the same reduction with the first barrier missing: threads read slots that
// later threads have not written yet (a race on a GPU, garbage here)
__global__ void block_sum_missing_barrier_kernel(float* partial, const float* x, int n) {
  __shared__ float buf[REDUCE_THREADS];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  buf[threadIdx.x] = i < n ? x[i] : 0.0f;
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if ((int)threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// every lane gets the warp's sum (butterfly with __shfl_xor_sync)
__global__ void warp_sum_xor_kernel(float* out, const float* x) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[i];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
  out[i] = v;
}

// lane 0 gets the warp's sum (__shfl_down_sync), then broadcasts it with __shfl_sync
__global__ void warp_sum_down_kernel(float* out, const float* x) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[i];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(FULL_MASK, v, offset);
  out[i] = __shfl_sync(FULL_MASK, v, 0);
}

// inclusive prefix sum within each warp (__shfl_up_sync), and votes
__global__ void warp_scan_vote_kernel(int* scan, unsigned* ballot, int* any_all, const int* x) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int lane = threadIdx.x % 32;
  int v = x[i];
  for (int offset = 1; offset < 32; offset *= 2) {
    int up = __shfl_up_sync(FULL_MASK, v, offset);
    if (lane >= offset) v += up;
  }
  scan[i] = v;
  unsigned b = __ballot_sync(FULL_MASK, x[i] > 0);
  int any = __any_sync(FULL_MASK, x[i] > 2);
  int all = __all_sync(FULL_MASK, x[i] >= 0);
  if (lane == 0) {
    ballot[i / 32] = b;
    any_all[i / 32] = any * 2 + all;
  }
}

// atomics on float, int, bf16; atomicMax; a float max built from atomicCAS
__global__ void atomics_kernel(float* fsum, int* count, __nv_bfloat16* bsum, int* imax, float* fmax_out,
                               int* claim, int* winners, const float* x, const int* keys, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  // exactly one thread claims the slot; it must hold that thread's index
  if (atomicCAS(claim, -1, i) == -1) {
    atomicAdd(&winners[0], 1);
    winners[1] = i;
  }
  atomicAdd(fsum, x[i]);
  atomicAdd(count, 1);
  atomicAdd(bsum, __float2bfloat16(1.0f));
  atomicMax(imax, keys[i]);
  int* address = (int*)fmax_out;
  int old = *address, assumed;
  do {
    assumed = old;
    if (__int_as_float(assumed) >= x[i]) break;
    old = atomicCAS(address, assumed, __float_as_int(x[i]));
  } while (old != assumed);
}

static const int TILE = 16;

// C (M, N) = A (M, K) @ B (K, N), row-major, with 2D shared tiles and a 2D grid
__global__ void tiled_matmul_kernel(float* c, const float* a, const float* b, int M, int N, int K) {
  __shared__ float a_tile[TILE][TILE];
  __shared__ float b_tile[TILE][TILE + 1];
  int row = blockIdx.y * TILE + threadIdx.y;
  int col = blockIdx.x * TILE + threadIdx.x;
  float acc = 0.0f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    int ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    a_tile[threadIdx.y][threadIdx.x] = (row < M && ka < K) ? a[row * K + ka] : 0.0f;
    b_tile[threadIdx.y][threadIdx.x] = (kb < K && col < N) ? b[kb * N + col] : 0.0f;
    __syncthreads();
    for (int kk = 0; kk < TILE; kk++) acc += a_tile[threadIdx.y][kk] * b_tile[kk][threadIdx.x];
    __syncthreads();
  }
  if (row < M && col < N) c[row * N + col] = acc;
}

// each thread of a 3D grid of 3D blocks writes its global linear index once
__global__ void index_3d_kernel(int* hits, int* owner) {
  int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int id = block * (blockDim.x * blockDim.y * blockDim.z) + thread;
  atomicAdd(&hits[id], 1);
  owner[id] = (int)(blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z + 1000 * threadIdx.x + 10000 * threadIdx.y +
                    100000 * threadIdx.z);
}

// dynamic shared memory (opted in above 48 KiB) next to a static array
__global__ void dynamic_shared_kernel(float* out, int floats_per_thread) {
  extern __shared__ float dyn[];
  __shared__ int marker[32];
  if (threadIdx.x < 32) marker[threadIdx.x] = (int)threadIdx.x;
  for (int j = 0; j < floats_per_thread; j++) dyn[threadIdx.x * floats_per_thread + j] = (float)(threadIdx.x + j);
  __syncthreads();
  // read a neighbour's slots so a missing barrier or overlap would show
  int other = (threadIdx.x + 1) % blockDim.x;
  float s = 0.0f;
  for (int j = 0; j < floats_per_thread; j++) s += dyn[other * floats_per_thread + j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s + (float)marker[threadIdx.x % 32];
}

__global__ void syncthreads_count_kernel(int* out) {
  int c = __syncthreads_count(threadIdx.x % 3 == 0);
  int a = __syncthreads_and(threadIdx.x < 1000);
  int o = __syncthreads_or(threadIdx.x == 5);
  if (threadIdx.x == 0) {
    out[0] = c;
    out[1] = a;
    out[2] = o;
  }
}

// integer and float intrinsics, and the rarer warp operations, with known answers
__global__ void intrinsics_kernel(int* out) {
  int lane = threadIdx.x % 32;
  int up = __shfl_up_sync(FULL_MASK, lane, 1, 8);       // width 8: lanes 0, 8, ... keep their own
  int up_at_8 = __shfl_sync(FULL_MASK, up, 8);
  int xr = __shfl_xor_sync(FULL_MASK, lane, 4, 8);      // stays inside each group of 8
  unsigned group = __match_any_sync(FULL_MASK, lane / 8);
  int sum = __reduce_add_sync(FULL_MASK, lane);
  int mx = __reduce_max_sync(FULL_MASK, lane - 16);
  if (lane == 9) {
    out[0] = up + 100 * up_at_8;                        // 8 from lane 8, 800 for lane 8's own
    out[1] = xr;                                        // 13
    out[2] = (int)group;                                // lanes 8..15
    out[3] = sum;                                       // 0 + ... + 31 = 496
    out[4] = mx;                                        // 15
    out[5] = __popc(0xf0f0u) + 100 * __clz(1 << 20) + 10000 * __ffs(0x80);  // 8 + 1100 + 80000
    out[6] = (int)__brev(1u);                           // 0x80000000
    out[7] = __mul24(-3, 5) + __float2int_rn(2.5f) + __float2int_rn(3.5f);  // -15 + 2 + 4
    out[8] = (int)(1000.0f * __saturatef(1.5f) + 100.0f * __saturatef(-2.0f) + 10.0f * __saturatef(0.25f));
    out[9] = (int)(__umulhi(0x80000000u, 6u) + 10u * (unsigned)max(3, -4) + 100u * (unsigned)min(7u, 9u));
  }
}

__global__ void scale_kernel(float* y, const float* x, float s, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = s * x[i];
}

__global__ void empty_kernel() {}

// forms the rewrite step must handle: template kernels (explicit and deduced
// arguments) and the __shared__ declaration forms used in practice
template <typename T, int SCALE>
__global__ void template_scale_kernel(T* y, const T* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] * (T)SCALE;
}

template <typename T>
__global__ void deduced_add_kernel(T* y, const T* x, T add, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] + add;
}

template <int N>
__global__ void shared_forms_kernel(int* out) {
  __shared__ float first[N], second[N / 2];  // two declarators
  __shared__ int count;                      // a scalar
  __shared__ __align__(16) float4 quad[2];   // over-aligned
  volatile __shared__ int flag;
  __shared__ float tile[4][N + 1];
  int t = threadIdx.x;
  if (t == 0) {
    count = 0;
    flag = 7;
  }
  first[t] = (float)t;
  if (t < N / 2) second[t] = 2.0f * t;
  tile[t % 4][t] = 1.0f;
  __syncthreads();
  atomicAdd(&count, 1);
  __syncthreads();
  if (t == 0) {
    quad[0] = make_float4(first[N - 1], second[N / 2 - 1], tile[1][1], 0.0f);
    out[0] = count;
    out[1] = flag;
    out[2] = (int)(sizeof(first) + sizeof(second) + sizeof(tile));
    out[3] = (int)(((size_t)&quad[0]) % 16);
    out[4] = (int)(quad[0].x + quad[0].y + quad[0].z);
  }
}

// ---------------------------------------------------------------------------
// kernels with planted bugs (the harness must report each)

__global__ void oob_write_kernel(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;  // off by one: writes out[n]
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();  // only half of the block gets here
    out[threadIdx.x] = 1.0f;
  } else {
    out[threadIdx.x] = 2.0f;
  }
}

__global__ void early_exit_barrier_kernel(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;  // threads past n never reach the barrier below
  out[i] = 1.0f;
  __syncthreads();
  out[i] += 1.0f;
}

__global__ void divergent_shuffle_kernel(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(FULL_MASK, v, 1);  // lanes 16..31 never join
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void big_block_kernel(float* out) { out[threadIdx.x] = 1.0f; }

__global__ void big_dynamic_shared_kernel(float* out) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x] = 1.0f;
  out[threadIdx.x] = dyn[threadIdx.x];
}

__global__ void static_plus_dynamic_kernel(float* out) {
  extern __shared__ float dyn[];
  __shared__ float table[256];  // 1 KiB static on top of the dynamic request
  table[threadIdx.x] = 1.0f;
  dyn[threadIdx.x] = table[threadIdx.x];
  out[threadIdx.x] = dyn[threadIdx.x];
}

struct buffer_ref {
  float* data;
};
__global__ void read_through_struct_kernel(float* out, buffer_ref in) { out[threadIdx.x] = in.data[threadIdx.x]; }

// ---------------------------------------------------------------------------
// shared-memory races: each kernel with its barrier (correct) and without it
// (a race that the race-check build, selftest_race, must report)

// a block sum broadcast through shared memory: thread 0 writes the total, every
// thread reads it; without the last barrier the reads race with that write
__global__ void broadcast_sum_kernel(float* out, const float* x, int barrier) {
  __shared__ float buf[REDUCE_THREADS];
  __shared__ float total;
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  buf[t] = x[i];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) buf[t] += buf[t + stride];
    __syncthreads();
  }
  if (t == 0) total = buf[0];
  if (barrier) __syncthreads();
  out[i] = x[i] - total;
}

// each thread reads its right neighbour's slot, then overwrites its own:
// without the barrier between, the neighbour may overwrite a slot before it is read
__global__ void shift_left_kernel(float* out, const float* x, int barrier) {
  __shared__ float buf[REDUCE_THREADS];
  int t = threadIdx.x;
  buf[t] = x[t];
  __syncthreads();
  float next = buf[(t + 1) % blockDim.x];
  if (barrier) __syncthreads();
  buf[t] = 2.0f * next;
  __syncthreads();
  out[t] = buf[t];
}

// one slot per warp for the warp's sum: only lane 0 should write it
__global__ void warp_slot_kernel(float* out, const float* x, int lane0_only) {
  __shared__ float slot[REDUCE_THREADS / 32];
  int t = threadIdx.x, lane = t % 32;
  float v = x[t];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
  if (lane == 0 || !lane0_only) slot[t / 32] = v;
  __syncthreads();
  out[t] = slot[t / 32];
}

// lanes exchange values through shared memory, ordered by __syncwarp alone
__global__ void warp_exchange_kernel(float* out, const float* x, int sync) {
  __shared__ float buf[REDUCE_THREADS];
  int t = threadIdx.x, lane = t % 32, base = t - lane;
  buf[t] = x[t];
  if (sync) __syncwarp();
  float v = buf[base + (lane + 1) % 32];
  if (sync) __syncwarp();
  buf[t] = 2.0f * v;
  if (sync) __syncwarp();
  out[t] = buf[base + (lane + 31) % 32];
}

// two half warps, each ordered by its own __syncwarp(mask): reading within the
// own half is ordered, reading the other half is not
__global__ void half_warp_exchange_kernel(float* out, const float* x, int cross) {
  __shared__ float buf[32];
  int lane = threadIdx.x;
  unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  buf[lane] = x[lane];
  __syncwarp(mask);
  int src = cross ? (lane + 16) % 32 : (lane & 16) | ((lane + 1) & 15);
  out[lane] = buf[src];
}

// lane 0 writes, lanes 0 and 1 __syncwarp, then lanes 1 and 2: lane 2's read is
// ordered after lane 0's write through lane 1 (happens-before is transitive)
__global__ void warp_chain_kernel(float* out) {
  __shared__ float value;
  int lane = threadIdx.x;
  if (lane == 0) value = 42.0f;
  if (lane <= 1) __syncwarp(0x3u);
  if (lane >= 1) __syncwarp(0x6u);
  if (lane == 2) out[0] = value;
}

// 2-byte elements: neighbours write the two halves of one 4-byte word (not a
// race: the detector is exact to the byte), then read each other's
__global__ void bf16_halves_kernel(float* out, const float* x, int barrier) {
  __shared__ __nv_bfloat16 halves[REDUCE_THREADS];
  int t = threadIdx.x;
  halves[t] = __float2bfloat16(x[t]);
  if (barrier) __syncthreads();
  out[t] = __bfloat162float(halves[t ^ 1]);
}

// every thread counts itself with a shared atomicAdd (atomics do not race with
// each other); thread 0 must wait at a barrier before it reads the count
__global__ void shared_atomic_count_kernel(int* out, int barrier) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  atomicAdd(&count, 1);
  if (barrier) __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = count;
}

// ---------------------------------------------------------------------------
// launch resources: a kernel that keeps REGISTER_HEAVY values live through a
// loop, so ptxas gives it about 100 registers per thread on sm_90: 256 threads
// a block fit the 64K registers of a multiprocessor, 1024 do not (a GPU
// refuses the launch: "too many resources requested for launch")
static const int REGISTER_HEAVY = 96;

__global__ void register_heavy_kernel(float* out, const float* x, int rounds) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  float v[REGISTER_HEAVY];
#pragma unroll
  for (int i = 0; i < REGISTER_HEAVY; i++) v[i] = x[(t + i) % 1024];
  for (int r = 0; r < rounds; r++) {
#pragma unroll
    for (int i = 0; i < REGISTER_HEAVY; i++) v[i] = v[i] * v[(i + 1) % REGISTER_HEAVY] + v[(i + 7) % REGISTER_HEAVY];
  }
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < REGISTER_HEAVY; i++) sum += v[i];
  out[t] = sum;
}

// __launch_bounds__(128): ptxas may assume at most 128 threads a block
__global__ void __launch_bounds__(128) bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }

// ---------------------------------------------------------------------------
// tests with known answers

static void test_block_sum() {
  const int n = 1000;  // not a multiple of the block: the tail block is partial
  std::vector<float> x(n);
  double expect = 0;
  for (int i = 0; i < n; i++) {
    x[i] = test_value(i, 1);
    expect += x[i];
  }
  int blocks = (n + REDUCE_THREADS - 1) / REDUCE_THREADS;
  float* d_x = to_device(x);
  float* d_partial = nullptr;
  CUDA_CHECK(cudaMalloc(&d_partial, blocks * sizeof(float)));
  block_sum_kernel<<<blocks, REDUCE_THREADS>>>(d_partial, d_x, n);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> partial = to_host(d_partial, blocks);
  double got = 0;
  for (float p : partial) got += p;
  // multiples of 1/8 with small sums: every partial sum is exact in fp32
  check(got == expect, "shared-memory block reduction with __syncthreads", "got %g, expected %g", got, expect);
#if defined(CUDA_EMU) && !defined(CUDA_EMU_RACECHECK)
  // without the first barrier, thread 0 reads slots of threads that have not
  // run yet: the harness fills shared memory with NaN bytes, so the sum is NaN.
  // In reverse thread order the later threads run first and the race hides,
  // as a race hides in some interleavings on a GPU: checked in thread order only.
  const char* order = getenv("CUDA_EMU_THREAD_ORDER");
  if (!(order && strcmp(order, "reverse") == 0)) {
    block_sum_missing_barrier_kernel<<<blocks, REDUCE_THREADS>>>(d_partial, d_x, n);
    partial = to_host(d_partial, blocks);
    check(isnan(partial[0]), "a missing __syncthreads shows up as NaN (shared memory starts as garbage)",
          "partial[0] = %g", partial[0]);
  }
#endif
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_partial));
}

static void test_warp_shuffles() {
  const int threads = 64, blocks = 3, n = threads * blocks;
  std::vector<float> x(n);
  std::vector<int> xi(n);
  for (int i = 0; i < n; i++) {
    x[i] = test_value(i, 2);
    xi[i] = (i * 7) % 5 - 1;  // -1 .. 3
  }
  float* d_x = to_device(x);
  float* d_out = nullptr;
  CUDA_CHECK(cudaMalloc(&d_out, n * sizeof(float)));
  std::vector<double> warp_sum(n / 32, 0.0);
  for (int i = 0; i < n; i++) warp_sum[i / 32] += x[i];

  warp_sum_xor_kernel<<<blocks, threads>>>(d_out, d_x);
  std::vector<float> out = to_host(d_out, n);
  int bad = 0;
  for (int i = 0; i < n; i++) bad += out[i] != (float)warp_sum[i / 32];
  check(bad == 0, "warp reduction with __shfl_xor_sync (every lane)", "%d lanes wrong", bad);

  warp_sum_down_kernel<<<blocks, threads>>>(d_out, d_x);
  out = to_host(d_out, n);
  bad = 0;
  for (int i = 0; i < n; i++) bad += out[i] != (float)warp_sum[i / 32];
  check(bad == 0, "warp reduction with __shfl_down_sync + __shfl_sync broadcast", "%d lanes wrong", bad);

  int* d_xi = to_device(xi);
  int *d_scan = nullptr, *d_anyall = nullptr;
  unsigned* d_ballot = nullptr;
  CUDA_CHECK(cudaMalloc(&d_scan, n * sizeof(int)));
  CUDA_CHECK(cudaMalloc(&d_ballot, n / 32 * sizeof(unsigned)));
  CUDA_CHECK(cudaMalloc(&d_anyall, n / 32 * sizeof(int)));
  warp_scan_vote_kernel<<<blocks, threads>>>(d_scan, d_ballot, d_anyall, d_xi);
  std::vector<int> scan = to_host(d_scan, n), anyall = to_host(d_anyall, n / 32);
  std::vector<unsigned> ballot = to_host(d_ballot, n / 32);
  bad = 0;
  for (int w = 0; w < n / 32; w++) {
    int run = 0, any = 0, all = 1;
    unsigned b = 0;
    for (int l = 0; l < 32; l++) {
      int v = xi[w * 32 + l];
      run += v;
      bad += scan[w * 32 + l] != run;
      if (v > 0) b |= 1u << l;
      any |= v > 2;
      all &= v >= 0;
    }
    bad += ballot[w] != b;
    bad += anyall[w] != any * 2 + all;
  }
  check(bad == 0, "warp scan with __shfl_up_sync, __ballot_sync, __any_sync, __all_sync", "%d values wrong", bad);
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_out));
  CUDA_CHECK(cudaFree(d_xi));
  CUDA_CHECK(cudaFree(d_scan));
  CUDA_CHECK(cudaFree(d_ballot));
  CUDA_CHECK(cudaFree(d_anyall));
}

static void test_atomics() {
  const int n = 200;  // bf16 counts integers exactly up to 256
  std::vector<float> x(n);
  std::vector<int> keys(n);
  double fsum = 0;
  int kmax = -1000;
  float fmax_expect = -2.0f;
  for (int i = 0; i < n; i++) {
    x[i] = test_value(i, 3);
    keys[i] = (i * 37) % 101 - 50;
    fsum += x[i];
    kmax = keys[i] > kmax ? keys[i] : kmax;
    fmax_expect = x[i] > fmax_expect ? x[i] : fmax_expect;
  }
  float* d_x = to_device(x);
  int* d_keys = to_device(keys);
  std::vector<float> zero_f(1, 0.0f), start_max(1, -2.0f);
  std::vector<int> zero_i(1, 0), low_i(1, -1000), unclaimed(1, -1);
  std::vector<__nv_bfloat16> zero_b(1, __float2bfloat16(0.0f));
  float* d_fsum = to_device(zero_f);
  float* d_fmax = to_device(start_max);
  int* d_count = to_device(zero_i);
  int* d_imax = to_device(low_i);
  int* d_claim = to_device(unclaimed);
  int* d_winners = to_device(std::vector<int>(2, 0));
  __nv_bfloat16* d_bsum = to_device(zero_b);
  atomics_kernel<<<(n + 63) / 64, 64>>>(d_fsum, d_count, d_bsum, d_imax, d_fmax, d_claim, d_winners, d_x, d_keys,
                                        n);
  float got_fsum = to_host(d_fsum, 1)[0], got_fmax = to_host(d_fmax, 1)[0];
  int got_count = to_host(d_count, 1)[0], got_imax = to_host(d_imax, 1)[0];
  float got_bsum = __bfloat162float(to_host(d_bsum, 1)[0]);
  check(got_fsum == (float)fsum, "atomicAdd float", "got %g, expected %g", got_fsum, fsum);
  check(got_count == n, "atomicAdd int", "got %d, expected %d", got_count, n);
  check(got_bsum == (float)n, "atomicAdd __nv_bfloat16", "got %g, expected %d", got_bsum, n);
  check(got_imax == kmax, "atomicMax int", "got %d, expected %d", got_imax, kmax);
  check(got_fmax == fmax_expect, "atomicCAS loop (float max)", "got %g, expected %g", got_fmax, fmax_expect);
  int got_claim = to_host(d_claim, 1)[0];
  std::vector<int> got_winners = to_host(d_winners, 2);
  check(got_winners[0] == 1 && got_claim == got_winners[1], "atomicCAS: exactly one thread claims a slot",
        "%d winners, slot holds %d, winner %d", got_winners[0], got_claim, got_winners[1]);
  CUDA_CHECK(cudaFree(d_claim));
  CUDA_CHECK(cudaFree(d_winners));
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_keys));
  CUDA_CHECK(cudaFree(d_fsum));
  CUDA_CHECK(cudaFree(d_fmax));
  CUDA_CHECK(cudaFree(d_count));
  CUDA_CHECK(cudaFree(d_imax));
  CUDA_CHECK(cudaFree(d_bsum));
}

// fp32 accumulation of k products: the rounding error is at most about
// k * 2^-24 * sum|a||b|; 1e-5 of that sum leaves room for any summation order
static const double FP32_GEMM_TOL = 1e-5;

static void test_tiled_matmul() {
  const int M = 37, N = 45, K = 29;  // no multiple of the 16 x 16 tile: partial tiles everywhere
  std::vector<float> a(M * K), b(K * N);
  for (int i = 0; i < M * K; i++) a[i] = test_value(i, 4);
  for (int i = 0; i < K * N; i++) b[i] = test_value(i, 5);
  float *d_a = to_device(a), *d_b = to_device(b), *d_c = nullptr;
  CUDA_CHECK(cudaMalloc(&d_c, M * N * sizeof(float)));
  dim3 grid((N + TILE - 1) / TILE, (M + TILE - 1) / TILE), block(TILE, TILE);
  tiled_matmul_kernel<<<grid, block>>>(d_c, d_a, d_b, M, N, K);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> c = to_host(d_c, M * N);
  double worst = 0;
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double ref = 0, scale = 0;
      for (int k = 0; k < K; k++) {
        ref += (double)a[i * K + k] * b[k * N + j];
        scale += fabs((double)a[i * K + k] * b[k * N + j]);
      }
      double err = fabs(c[i * N + j] - ref) / (scale > 1 ? scale : 1);
      worst = err > worst ? err : worst;
    }
  check(worst <= FP32_GEMM_TOL, "tiled matmul, 2D shared tiles, 2D grid with tails (37x45x29)",
        "worst relative error %g", worst);
  CUDA_CHECK(cudaFree(d_a));
  CUDA_CHECK(cudaFree(d_b));
  CUDA_CHECK(cudaFree(d_c));
}

static void test_3d_indexing() {
  dim3 grid(3, 2, 2), block(4, 3, 2);
  int n = 3 * 2 * 2 * 4 * 3 * 2;
  int *d_hits = nullptr, *d_owner = nullptr;
  CUDA_CHECK(cudaMalloc(&d_hits, n * sizeof(int)));
  CUDA_CHECK(cudaMalloc(&d_owner, n * sizeof(int)));
  CUDA_CHECK(cudaMemset(d_hits, 0, n * sizeof(int)));
  index_3d_kernel<<<grid, block>>>(d_hits, d_owner);
  std::vector<int> hits = to_host(d_hits, n), owner = to_host(d_owner, n);
  int bad = 0;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++)
        for (unsigned tz = 0; tz < block.z; tz++)
          for (unsigned ty = 0; ty < block.y; ty++)
            for (unsigned tx = 0; tx < block.x; tx++) {
              int blk = (bz * grid.y + by) * grid.x + bx;
              int id = blk * 24 + (tz * block.y + ty) * block.x + tx;
              int expect = (int)(bx + 10 * by + 100 * bz + 1000 * tx + 10000 * ty + 100000 * tz);
              bad += hits[id] != 1 || owner[id] != expect;
            }
  check(bad == 0, "3D grid of 3D blocks: each thread once, right indices", "%d threads wrong", bad);
  CUDA_CHECK(cudaFree(d_hits));
  CUDA_CHECK(cudaFree(d_owner));
}

static void test_dynamic_shared() {
  const int threads = 128, floats_per_thread = 200;  // 100 KiB: needs the opt-in
  size_t bytes = (size_t)threads * floats_per_thread * sizeof(float);
  CUDA_CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  float* d_out = nullptr;
  CUDA_CHECK(cudaMalloc(&d_out, 2 * threads * sizeof(float)));
  dynamic_shared_kernel<<<2, threads, bytes>>>(d_out, floats_per_thread);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> out = to_host(d_out, 2 * threads);
  int bad = 0;
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < threads; t++) {
      int other = (t + 1) % threads;
      double s = 0;
      for (int j = 0; j < floats_per_thread; j++) s += other + j;
      bad += out[b * threads + t] != (float)(s + t % 32);
    }
  check(bad == 0, "100 KiB dynamic shared memory (opt-in) next to static shared", "%d threads wrong", bad);
  CUDA_CHECK(cudaFree(d_out));

  int* d_counts = nullptr;
  CUDA_CHECK(cudaMalloc(&d_counts, 3 * sizeof(int)));
  syncthreads_count_kernel<<<1, 100>>>(d_counts);
  std::vector<int> counts = to_host(d_counts, 3);
  check(counts[0] == 34 && counts[1] == 1 && counts[2] == 1, "__syncthreads_count / _and / _or",
        "got %d %d %d, expected 34 1 1", counts[0], counts[1], counts[2]);
  CUDA_CHECK(cudaFree(d_counts));
}

static void test_intrinsics() {
  int* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 10 * sizeof(int)));
  intrinsics_kernel<<<1, 32>>>(d);
  std::vector<int> got = to_host(d, 10);
  const int expect[10] = {808, 13, 0xff00, 496, 15, 81108, (int)0x80000000u, -9, 1002, 3 + 30 + 700};
  int bad = 0;
  for (int i = 0; i < 10; i++)
    if (got[i] != expect[i]) {
      printf("    intrinsics value %d: got %d, expected %d\n", i, got[i], expect[i]);
      bad++;
    }
  check(bad == 0, "intrinsics: shuffles with width, __match_any_sync, __reduce_*_sync, bit and float ops",
        "%d values wrong", bad);
  CUDA_CHECK(cudaFree(d));
}

static void test_rewrite_forms() {
  const int n = 300;
  std::vector<float> x(n);
  for (int i = 0; i < n; i++) x[i] = test_value(i, 6);
  float* d_x = to_device(x);
  float* d_y = nullptr;
  CUDA_CHECK(cudaMalloc(&d_y, n * sizeof(float)));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  // explicit template arguments, a 3-argument configuration and >> in it
  template_scale_kernel<float, 3><<<(n + 255) >> 8, 256, 0>>>(d_y, d_x, n);
  std::vector<float> y = to_host(d_y, n);
  int bad = 0;
  for (int i = 0; i < n; i++) bad += y[i] != 3.0f * x[i];
  check(bad == 0, "launch of a template kernel with explicit arguments, 3-argument config", "%d wrong", bad);
  // deduced template arguments, spread over several lines, on a stream;
  // __LINE__ must still count the original lines
  int line_before = __LINE__;
  deduced_add_kernel<<<dim3((n + 63) / 64, 1, 1),
                       dim3(64),
                       0, stream>>>
      (d_y, d_x,
       0.5f, n);
  int line_after = __LINE__;
  y = to_host(d_y, n);
  bad = 0;
  for (int i = 0; i < n; i++) bad += y[i] != x[i] + 0.5f;
  check(bad == 0 && line_after - line_before == 6,
        "multi-line launch of a template kernel with deduced arguments; line numbers kept",
        "%d wrong, line difference %d (expected 6)", bad, line_after - line_before);
  CUDA_CHECK(cudaStreamDestroy(stream));
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_y));

  int* d_out = nullptr;
  CUDA_CHECK(cudaMalloc(&d_out, 5 * sizeof(int)));
  shared_forms_kernel<32><<<1, 32>>>(d_out);
  std::vector<int> out = to_host(d_out, 5);
  int expect_bytes = (32 + 16 + 4 * 33) * (int)sizeof(float);
  check(out[0] == 32 && out[1] == 7 && out[2] == expect_bytes && out[3] == 0 && out[4] == 31 + 30 + 1,
        "__shared__ forms: two declarators, scalar, __align__, volatile, 2D array in a template kernel",
        "count %d, flag %d, bytes %d (expected %d), quad misalignment %d, sum %d (expected 62)", out[0], out[1],
        out[2], expect_bytes, out[3], out[4]);
  CUDA_CHECK(cudaFree(d_out));
}

// ---------------------------------------------------------------------------
// cuBLAS and cuBLASLt against naive column-major loops

// C(i, j) = alpha * sum_k op(A)(i, k) op(B)(k, j) + beta * C(i, j), column-major
static void naive_gemm(bool ta, bool tb, int m, int n, int k, double alpha, const std::vector<double>& A, int lda,
                       const std::vector<double>& B, int ldb, double beta, std::vector<double>& C, int ldc,
                       std::vector<double>* scale) {
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0, s = 0;
      for (int q = 0; q < k; q++) {
        double av = ta ? A[q + (size_t)i * lda] : A[i + (size_t)q * lda];
        double bv = tb ? B[j + (size_t)q * ldb] : B[q + (size_t)j * ldb];
        acc += av * bv;
        s += fabs(av * bv);
      }
      double c0 = C[i + (size_t)j * ldc];
      C[i + (size_t)j * ldc] = alpha * acc + (beta != 0 ? beta * c0 : 0.0);
      if (scale) (*scale)[i + (size_t)j * ldc] = fabs(alpha) * s + fabs(beta * c0);
    }
}

enum class elem { f32, bf16 };

static std::vector<double> make_matrix(size_t count, int salt, elem type) {
  std::vector<double> v(count);
  for (size_t i = 0; i < count; i++) {
    float f = test_value((int)i, salt) * 1.375f;  // still exact in bf16 (few mantissa bits)
    v[i] = type == elem::bf16 ? (double)__bfloat162float(__float2bfloat16(f)) : (double)f;
  }
  return v;
}

static void* device_copy(const std::vector<double>& v, elem type) {
  void* d = nullptr;
  if (type == elem::f32) {
    std::vector<float> f(v.begin(), v.end());
    d = to_device(f);
  } else {
    std::vector<__nv_bfloat16> b(v.size());
    for (size_t i = 0; i < v.size(); i++) b[i] = __float2bfloat16((float)v[i]);
    d = to_device(b);
  }
  return d;
}

static std::vector<double> host_copy(const void* d, size_t count, elem type) {
  std::vector<double> v(count);
  if (type == elem::f32) {
    std::vector<float> f = to_host((const float*)d, count);
    for (size_t i = 0; i < count; i++) v[i] = f[i];
  } else {
    std::vector<__nv_bfloat16> b = to_host((const __nv_bfloat16*)d, count);
    for (size_t i = 0; i < count; i++) v[i] = __bfloat162float(b[i]);
  }
  return v;
}

// worst error relative to the scale of each element; bf16 outputs are rounded
// to 8 significant bits (relative error up to 2^-9, allow 2^-8)
static double worst_error(const std::vector<double>& got, const std::vector<double>& ref,
                          const std::vector<double>& scale, int m, int n, int ld) {
  double worst = 0;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      size_t at = i + (size_t)j * ld;
      double denom = scale[at] > 1e-30 ? scale[at] : 1.0;
      double e = fabs(got[at] - ref[at]) / denom;
      if (!(e <= worst)) worst = e;  // NaN propagates
    }
  return worst;
}
static const double BF16_OUTPUT_TOL = 1.0 / 256;

static void test_cublas(cublasHandle_t handle) {
  const int m = 5, n = 7, k = 3;
  const double alpha = 0.5, beta = 2.0;
  for (int variant = 0; variant < 4; variant++) {
    // 0: cublasSgemm, 1: cublasGemmEx fp32, 2: GemmEx bf16 -> bf16, 3: GemmEx bf16 -> fp32
    elem in_type = variant >= 2 ? elem::bf16 : elem::f32;
    elem out_type = variant == 2 ? elem::bf16 : elem::f32;
    const char* label = variant == 0 ? "cublasSgemm" : variant == 1 ? "cublasGemmEx fp32"
                        : variant == 2 ? "cublasGemmEx bf16->bf16" : "cublasGemmEx bf16->fp32";
    for (int t = 0; t < 4; t++) {
      bool ta = t & 1, tb = t & 2;
      // leading dimensions larger than the rows: padding must be skipped
      int lda = (ta ? k : m) + 2, ldb = (tb ? n : k) + 1, ldc = m + 3;
      std::vector<double> A = make_matrix((size_t)lda * (ta ? m : k), 10 + t, in_type);
      std::vector<double> B = make_matrix((size_t)ldb * (tb ? k : n), 20 + t, in_type);
      std::vector<double> C = make_matrix((size_t)ldc * n, 30 + t, out_type);
      void *dA = device_copy(A, in_type), *dB = device_copy(B, in_type), *dC = device_copy(C, out_type);
      std::vector<double> ref = C, scale(C.size(), 0.0);
      naive_gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, ref, ldc, &scale);
      float fa = (float)alpha, fb = (float)beta;
      cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      cudaDataType it = in_type == elem::f32 ? CUDA_R_32F : CUDA_R_16BF;
      cudaDataType ot = out_type == elem::f32 ? CUDA_R_32F : CUDA_R_16BF;
      if (variant == 0)
        CUBLAS_CHECK(cublasSgemm(handle, opa, opb, m, n, k, &fa, (float*)dA, lda, (float*)dB, ldb, &fb, (float*)dC,
                                 ldc));
      else
        CUBLAS_CHECK(cublasGemmEx(handle, opa, opb, m, n, k, &fa, dA, it, lda, dB, it, ldb, &fb, dC, ot, ldc,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      std::vector<double> got = host_copy(dC, C.size(), out_type);
      // the padding rows of C must be untouched
      int pad_bad = 0;
      for (int j = 0; j < n; j++)
        for (int i = m; i < ldc; i++) pad_bad += got[i + (size_t)j * ldc] != C[i + (size_t)j * ldc];
      double worst = worst_error(got, ref, scale, m, n, ldc);
      double tol = out_type == elem::bf16 ? BF16_OUTPUT_TOL : FP32_GEMM_TOL;
      char name[128];
      snprintf(name, sizeof name, "%s op(A)=%s op(B)=%s (5x7x3, padded ld, alpha 0.5, beta 2)", label,
               ta ? "T" : "N", tb ? "T" : "N");
      check(worst <= tol && pad_bad == 0, name, "worst relative error %g (tolerance %g), %d padding values changed",
            worst, tol, pad_bad);
      CUDA_CHECK(cudaFree(dA));
      CUDA_CHECK(cudaFree(dB));
      CUDA_CHECK(cudaFree(dC));
    }
  }

  // strided batched: 3 batches, matrices spaced by strides larger than needed
  for (int variant = 0; variant < 2; variant++) {
    const int batch = 3;
    bool ta = variant == 0, tb = variant == 1;
    int lda = ta ? k : m, ldb = tb ? n : k, ldc = m;
    long long sa = (long long)lda * (ta ? m : k) + 4, sb = (long long)ldb * (tb ? k : n) + 3, sc = (long long)ldc * n + 5;
    std::vector<double> A = make_matrix((size_t)sa * batch, 40, elem::f32);
    std::vector<double> B = make_matrix((size_t)sb * batch, 41, elem::f32);
    std::vector<double> C = make_matrix((size_t)sc * batch, 42, elem::f32);
    void *dA = device_copy(A, elem::f32), *dB = device_copy(B, elem::f32), *dC = device_copy(C, elem::f32);
    float fa = 1.5f, fb = -1.0f;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (variant == 0)
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle, opa, opb, m, n, k, &fa, dA, CUDA_R_32F, lda, sa, dB, CUDA_R_32F,
                                              ldb, sb, &fb, dC, CUDA_R_32F, ldc, sc, batch, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
    else
      CUBLAS_CHECK(cublasSgemmStridedBatched(handle, opa, opb, m, n, k, &fa, (float*)dA, lda, sa, (float*)dB, ldb, sb,
                                             &fb, (float*)dC, ldc, sc, batch));
    std::vector<double> got = host_copy(dC, C.size(), elem::f32);
    double worst = 0;
    int gap_bad = 0;
    for (int b = 0; b < batch; b++) {
      std::vector<double> Ab(A.begin() + b * sa, A.begin() + b * sa + sa);
      std::vector<double> Bb(B.begin() + b * sb, B.begin() + b * sb + sb);
      std::vector<double> ref(C.begin() + b * sc, C.begin() + b * sc + sc), scale(ref.size(), 0.0);
      naive_gemm(ta, tb, m, n, k, fa, Ab, lda, Bb, ldb, fb, ref, ldc, &scale);
      std::vector<double> gb(got.begin() + b * sc, got.begin() + b * sc + sc);
      double w = worst_error(gb, ref, scale, m, n, ldc);
      if (!(w <= worst)) worst = w;
      for (long long g = (long long)ldc * n; g < sc; g++) gap_bad += gb[g] != C[b * sc + g];
    }
    check(worst <= FP32_GEMM_TOL && gap_bad == 0,
          variant == 0 ? "cublasGemmStridedBatchedEx fp32 op(A)=T, 3 batches with gaps"
                       : "cublasSgemmStridedBatched op(B)=T, 3 batches with gaps",
          "worst relative error %g, %d gap values changed", worst, gap_bad);
    CUDA_CHECK(cudaFree(dA));
    CUDA_CHECK(cudaFree(dB));
    CUDA_CHECK(cudaFree(dC));
  }

  // pointer-array batched (cublasGemmBatchedEx, cublasSgemmBatched): 3 problems,
  // each matrix its own allocation, the arrays in device memory and not in
  // allocation order (entry i is problem 2 - i). cuBLAS documents entry i as
  // the GEMM on Aarray[i], Barray[i], Carray[i]: each must equal, bit for bit,
  // the single call on the same matrices (cublasGemmEx / cublasSgemm; fp32,
  // and TF32 for GemmBatchedEx), and the naive product within tolerance. the
  // inputs have few mantissa bits, so every product and sum is exact in fp32
  // and TF32 alike: the same bits on a GPU too, in any summation order
  for (int variant = 0; variant < 3; variant++) {
    const int batch = 3;
    bool ta = variant != 1, tb = variant != 0;
    int lda = (ta ? k : m) + 1, ldb = (tb ? n : k) + 2, ldc = m + 3;
    cublasComputeType_t compute = variant == 2 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    float fa = -0.75f, fb = 0.5f;
    std::vector<double> A[batch], B[batch], C[batch];
    void *dA[batch], *dB[batch], *dC[batch], *dC1[batch];
    for (int b = 0; b < batch; b++) {
      A[b] = make_matrix((size_t)lda * (ta ? m : k), 50 + b, elem::f32);
      B[b] = make_matrix((size_t)ldb * (tb ? k : n), 60 + b, elem::f32);
      C[b] = make_matrix((size_t)ldc * n, 70 + b, elem::f32);
      dA[b] = device_copy(A[b], elem::f32);
      dB[b] = device_copy(B[b], elem::f32);
      dC[b] = device_copy(C[b], elem::f32);
      dC1[b] = device_copy(C[b], elem::f32);
    }
    std::vector<void*> pa(batch), pb(batch), pc(batch);
    for (int i = 0; i < batch; i++) {
      pa[i] = dA[batch - 1 - i];
      pb[i] = dB[batch - 1 - i];
      pc[i] = dC[batch - 1 - i];
    }
    void** arrays = to_device(pa);
    void** barrays = to_device(pb);
    void** carrays = to_device(pc);
    if (variant == 1)
      CUBLAS_CHECK(cublasSgemmBatched(handle, opa, opb, m, n, k, &fa, (const float* const*)arrays, lda,
                                      (const float* const*)barrays, ldb, &fb, (float* const*)carrays, ldc, batch));
    else
      CUBLAS_CHECK(cublasGemmBatchedEx(handle, opa, opb, m, n, k, &fa, (const void* const*)arrays, CUDA_R_32F, lda,
                                       (const void* const*)barrays, CUDA_R_32F, ldb, &fb, (void* const*)carrays,
                                       CUDA_R_32F, ldc, batch, compute, CUBLAS_GEMM_DEFAULT));
    double worst = 0;
    int differ = 0;
    for (int b = 0; b < batch; b++) {
      if (variant == 1)
        CUBLAS_CHECK(cublasSgemm(handle, opa, opb, m, n, k, &fa, (float*)dA[b], lda, (float*)dB[b], ldb, &fb,
                                 (float*)dC1[b], ldc));
      else
        CUBLAS_CHECK(cublasGemmEx(handle, opa, opb, m, n, k, &fa, dA[b], CUDA_R_32F, lda, dB[b], CUDA_R_32F, ldb, &fb,
                                  dC1[b], CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
      std::vector<float> got = to_host((const float*)dC[b], C[b].size());
      std::vector<float> one = to_host((const float*)dC1[b], C[b].size());
      differ += memcmp(got.data(), one.data(), got.size() * sizeof(float)) != 0;
      std::vector<double> ref = C[b], scale(ref.size(), 0.0);
      naive_gemm(ta, tb, m, n, k, fa, A[b], lda, B[b], ldb, fb, ref, ldc, &scale);
      double w = worst_error(std::vector<double>(got.begin(), got.end()), ref, scale, m, n, ldc);
      if (!(w <= worst)) worst = w;
    }
    check(differ == 0 && worst <= FP32_GEMM_TOL,
          variant == 0   ? "cublasGemmBatchedEx fp32 op(A)=T op(B)=T, 3 pointer-array entries"
          : variant == 1 ? "cublasSgemmBatched op(B)=T, 3 pointer-array entries"
                         : "cublasGemmBatchedEx TF32 op(A)=T op(B)=T, 3 pointer-array entries",
          "%d entries differ from their single call (want 0), worst relative error %g (tolerance %g)", differ, worst,
          FP32_GEMM_TOL);
    for (int b = 0; b < batch; b++) {
      CUDA_CHECK(cudaFree(dA[b]));
      CUDA_CHECK(cudaFree(dB[b]));
      CUDA_CHECK(cudaFree(dC[b]));
      CUDA_CHECK(cudaFree(dC1[b]));
    }
    CUDA_CHECK(cudaFree(arrays));
    CUDA_CHECK(cudaFree(barrays));
    CUDA_CHECK(cudaFree(carrays));
  }
}

// D = op(A) op(B) + beta C + bias through cuBLASLt, llm.c style: A transposed
// the reduced-precision input modes: one product a * 1 over k = 1, where a sits
// between two TF32 values. a = 1 + 3 * 2^-12 is 0.75 of TF32's spacing 2^-10
// above 1: TF32 to nearest gives 1 + 2^-10 (a GPU that truncates gives 1); in
// bf16 (spacing 2^-7) it is 1. a = 1 + 2^-11 is a tie, which cvt.rna rounds away
// from zero. fp32 compute, and TF32 math with the pedantic compute type, keep a.
static void test_cublas_reduced_precision(cublasHandle_t handle) {
  const float above = 1.0f + 3.0f * ldexpf(1.0f, -12), tie = 1.0f + ldexpf(1.0f, -11);
  const float tf32_up = 1.0f + ldexpf(1.0f, -10);
  std::vector<float> a = {above, tie, -above}, one = {1.0f};
  float* dA = to_device(a);
  float* dB = to_device(one);
  std::vector<float> c0(3, 0.0f);
  float* dC = to_device(c0);
  const float fa = 1.0f, fb = 0.0f;
  struct Mode {
    const char* name;
    cublasComputeType_t compute;
    cublasMath_t math;
    float expect[3];  // under the harness (round to nearest, ties away)
    bool tf32;        // a GPU may truncate to TF32 instead
  } modes[] = {
      {"COMPUTE_32F, default math", CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH, {above, tie, -above}, false},
      {"COMPUTE_32F_FAST_TF32", CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_DEFAULT_MATH, {tf32_up, tf32_up, -tf32_up}, true},
      {"COMPUTE_32F, TF32 math mode", CUBLAS_COMPUTE_32F, CUBLAS_TF32_TENSOR_OP_MATH,
       {tf32_up, tf32_up, -tf32_up}, true},
      {"COMPUTE_32F_PEDANTIC, TF32 math mode", CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_TF32_TENSOR_OP_MATH,
       {above, tie, -above}, false},
      {"COMPUTE_32F_FAST_16BF", CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_DEFAULT_MATH, {1.0f, 1.0f, -1.0f}, false},
  };
  for (const Mode& md : modes) {
    CUBLAS_CHECK(cublasSetMathMode(handle, md.math));
    // C (3, 1) = A (3, 1) B (1, 1), column-major
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 1, &fa, dA, CUDA_R_32F, 3, dB, CUDA_R_32F, 1,
                              &fb, dC, CUDA_R_32F, 3, md.compute, CUBLAS_GEMM_DEFAULT));
    std::vector<float> c = to_host(dC, 3);
    bool ok = true;
    for (int i = 0; i < 3; i++) {
      bool truncated = md.tf32 && fabsf(c[i]) == 1.0f && (c[i] > 0) == (a[i] > 0);
#ifdef CUDA_EMU
      truncated = false;  // the harness rounds to nearest
#endif
      ok = ok && (c[i] == md.expect[i] || truncated);
    }
    check(ok, "cuBLAS input rounding", "%s: %.9g %.9g %.9g (expected %.9g %.9g %.9g)", md.name, c[0], c[1], c[2],
          md.expect[0], md.expect[1], md.expect[2]);
  }
  // cublasSgemm follows the handle's math mode
  CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH));
  CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 1, &fa, dA, 3, dB, 1, &fb, dC, 3));
  std::vector<float> c = to_host(dC, 3);
  check(c[0] == tf32_up || c[0] == 1.0f, "cuBLAS input rounding", "cublasSgemm in TF32 math mode: %.9g", c[0]);
  CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 1, &fa, dA, 3, dB, 1, &fb, dC, 3));
  c = to_host(dC, 3);
  check(c[0] == above, "cuBLAS input rounding", "cublasSgemm in default math: %.9g", c[0]);
  CUDA_CHECK(cudaFree(dA));
  CUDA_CHECK(cudaFree(dB));
  CUDA_CHECK(cudaFree(dC));
}

#ifdef CUDA_EMU
// the harness's cuBLASLt alignment rules (cuda_emu_cublas.cpp): the heuristic's
// algorithm needs min(declared, 16) bytes of alignment per operand, less when
// ld in bytes is not a multiple of it; cublasLtMatmul refuses a pointer or a
// layout below that with CUBLAS_STATUS_NOT_SUPPORTED. only under the harness:
// on a GPU a misaligned call may instead fault and end the context
static cublasStatus_t lt_bf16_matmul(cublasLtHandle_t lt, int m, int n, int k, int ld_heur, int ld_call,
                                     uint32_t declared_a, const void* A, const void* B, void* D) {
  cublasLtMatmulDesc_t desc;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasLtMatrixLayout_t la, la_call, lb, ld;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, m, k, ld_heur));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la_call, CUDA_R_16BF, m, k, ld_call));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, m));
  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  if (declared_a)
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &declared_a,
                                                      sizeof declared_a));
  cublasLtMatmulHeuristicResult_t h;
  int found = 0;
  CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 1, &h, &found));
  float alpha = 1.0f, beta = 0.0f;
  cublasStatus_t st = found == 1 ? cublasLtMatmul(lt, desc, &alpha, A, la_call, B, lb, &beta, D, ld, D, ld, &h.algo,
                                                  nullptr, 0, 0)
                                 : CUBLAS_STATUS_INTERNAL_ERROR;
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(la_call);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatmulDescDestroy(desc);
  return st;
}

static void test_cublaslt_alignment(cublasLtHandle_t lt) {
  const int m = 16, n = 8, k = 16;
  std::vector<__nv_bfloat16> a((size_t)(m + 1) * k + 8, __float2bfloat16(0.5f)), b((size_t)k * n, __float2bfloat16(1.0f));
  __nv_bfloat16* dA = to_device(a);
  __nv_bfloat16* dB = to_device(b);
  std::vector<float> d0((size_t)m * n, 0.0f);
  float* dD = to_device(d0);
  // aligned pointer, ld 16 (32 bytes): runs, and the product is right (16 x 0.5)
  cublasStatus_t st = lt_bf16_matmul(lt, m, n, k, m, m, 0, dA, dB, dD);
  std::vector<float> d = to_host(dD, (size_t)m * n);
  check(st == CUBLAS_STATUS_SUCCESS && d[0] == 8.0f && d[(size_t)m * n - 1] == 8.0f, "cuBLASLt alignment",
        "aligned bf16 operands run (status %d, D[0] %g)", (int)st, d[0]);
  // A one element (2 bytes) off: the default declaration (256) gives an algorithm that needs 16
  st = lt_bf16_matmul(lt, m, n, k, m, m, 0, dA + 1, dB, dD);
  check(st == CUBLAS_STATUS_NOT_SUPPORTED, "cuBLASLt alignment",
        "a 2-byte-aligned A under the default MIN_ALIGNMENT_A_BYTES is refused (status %d)", (int)st);
  // the same pointer, declared: an algorithm that needs 2 bytes, which runs
  st = lt_bf16_matmul(lt, m, n, k, m, m, 2, dA + 1, dB, dD);
  check(st == CUBLAS_STATUS_SUCCESS, "cuBLASLt alignment",
        "the same A with MIN_ALIGNMENT_A_BYTES 2 declared runs (status %d)", (int)st);
  // an odd leading dimension (17 bf16, 34 bytes): the heuristic picks a 2-byte algorithm, which runs
  st = lt_bf16_matmul(lt, m, n, k, m + 1, m + 1, 0, dA, dB, dD);
  check(st == CUBLAS_STATUS_SUCCESS, "cuBLASLt alignment", "ld 17 (bf16) gets an algorithm that runs (status %d)",
        (int)st);
  // an algorithm chosen for ld 16 reused on ld 17: refused
  st = lt_bf16_matmul(lt, m, n, k, m, m + 1, 0, dA, dB, dD);
  check(st == CUBLAS_STATUS_NOT_SUPPORTED, "cuBLASLt alignment",
        "an algorithm chosen for ld 16 and called with ld 17 is refused (status %d)", (int)st);
  CUDA_CHECK(cudaFree(dA));
  CUDA_CHECK(cudaFree(dB));
  CUDA_CHECK(cudaFree(dD));
}
#endif

static void test_cublaslt(cublasLtHandle_t lt) {
  const int m = 6, n = 5, k = 4;
  for (int variant = 0; variant < 4; variant++) {
    // 0: fp32 BIAS with C != D and beta 1; 1: bf16 BIAS, beta 0; 2: fp32 BGRADB; 3: fp32 DEFAULT batched
    elem type = variant == 1 ? elem::bf16 : elem::f32;
    cudaDataType dt = type == elem::f32 ? CUDA_R_32F : CUDA_R_16BF;
    int batch = variant == 3 ? 2 : 1;
    bool ta = variant != 2, tb = variant == 2;
    int lda = ta ? k : m, ldb = tb ? n : k, ldc = m;
    long long sa = (long long)lda * (ta ? m : k), sb = (long long)ldb * (tb ? k : n), sc = (long long)ldc * n;
    std::vector<double> A = make_matrix((size_t)sa * batch, 50, type);
    std::vector<double> B = make_matrix((size_t)sb * batch, 51, type);
    std::vector<double> C = make_matrix((size_t)sc * batch, 52, type);
    std::vector<double> bias = make_matrix(variant == 2 ? n : m, 53, type);
    std::vector<double> D0(C.size(), 0.0);
    void *dA = device_copy(A, type), *dB = device_copy(B, type), *dC = device_copy(C, type);
    void *dD = device_copy(D0, type), *dbias = device_copy(bias, type);
    float alpha = 1.0f, beta = variant == 0 ? 1.0f : 0.0f;

    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    cublasLtEpilogue_t epi = variant <= 1 ? CUBLASLT_EPILOGUE_BIAS
                             : variant == 2 ? CUBLASLT_EPILOGUE_BGRADB : CUBLASLT_EPILOGUE_DEFAULT;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (variant <= 2)
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &dbias, sizeof dbias));
    cublasLtMatrixLayout_t la, lb, lc, ld;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, dt, ta ? k : m, ta ? m : k, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, dt, tb ? n : k, tb ? k : n, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, dt, m, n, ldc));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, dt, m, n, ldc));
    if (batch > 1) {
      cublasLtMatrixLayout_t layouts[4] = {la, lb, lc, ld};
      long long strides[4] = {sa, sb, sc, sc};
      for (int q = 0; q < 4; q++) {
        int32_t bc = batch;
        int64_t st = strides[q];
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layouts[q], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layouts[q], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st,
                                                      sizeof st));
      }
    }
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t workspace = 0;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                      sizeof workspace));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, ld, pref, 1, &heuristic, &found));
    bool ok = found == 1;
    if (ok)
      CUBLAS_CHECK(cublasLtMatmul(lt, desc, &alpha, dA, la, dB, lb, &beta, dC, lc, dD, ld, &heuristic.algo, nullptr,
                                  0, 0));
    std::vector<double> got = host_copy(dD, D0.size(), type), c_after = host_copy(dC, C.size(), type);
    double worst = 0;
    for (int b = 0; b < batch; b++) {
      std::vector<double> Ab(A.begin() + b * sa, A.begin() + (b + 1) * sa);
      std::vector<double> Bb(B.begin() + b * sb, B.begin() + (b + 1) * sb);
      std::vector<double> ref(C.begin() + b * sc, C.begin() + (b + 1) * sc), scale(ref.size(), 0.0);
      naive_gemm(ta, tb, m, n, k, alpha, Ab, lda, Bb, ldb, beta, ref, ldc, &scale);
      if (variant <= 1)
        for (int j = 0; j < n; j++)
          for (int i = 0; i < m; i++) {
            ref[i + (size_t)j * ldc] += bias[i];  // bias broadcast along the columns of D
            scale[i + (size_t)j * ldc] += fabs(bias[i]);
          }
      std::vector<double> gb(got.begin() + b * sc, got.begin() + (b + 1) * sc);
      double w = worst_error(gb, ref, scale, m, n, ldc);
      if (!(w <= worst)) worst = w;
    }
    double tol = type == elem::bf16 ? BF16_OUTPUT_TOL : FP32_GEMM_TOL;
    bool c_untouched = c_after == C;
    const char* name = variant == 0 ? "cublasLtMatmul fp32, A transposed, BIAS epilogue, C != D, beta 1"
                       : variant == 1 ? "cublasLtMatmul bf16 in/out, A transposed, BIAS epilogue, beta 0"
                       : variant == 2 ? "cublasLtMatmul fp32, B transposed, BGRADB epilogue (D and bias gradient)"
                                      : "cublasLtMatmul fp32, 2 strided batches, DEFAULT epilogue";
    if (variant == 2) {
      // BGRADB: bias gradient j = sum over k of op(B)(k, j)
      std::vector<double> gbias = host_copy(dbias, n, type);
      for (int j = 0; j < n; j++) {
        double s = 0, sc_ = 0;
        for (int q = 0; q < k; q++) {
          double v = tb ? B[j + (size_t)q * ldb] : B[q + (size_t)j * ldb];
          s += v;
          sc_ += fabs(v);
        }
        double e = fabs(gbias[j] - s) / (sc_ > 0 ? sc_ : 1);
        if (!(e <= worst)) worst = e;
      }
    }
    check(ok && worst <= tol && c_untouched, name, "algos %d, worst relative error %g, C %s", found, worst,
          c_untouched ? "untouched" : "modified");
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
    for (void* p : {dA, dB, dC, dD, dbias}) CUDA_CHECK(cudaFree(p));
  }
}

static double wall_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void test_events_and_device() {
  const int n = 1 << 16;
  std::vector<float> x(n, 1.0f);
  float* d_x = to_device(x);
  float* d_y = nullptr;
  CUDA_CHECK(cudaMalloc(&d_y, n * sizeof(float)));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  double t0 = wall_ms();
  CUDA_CHECK(cudaEventRecord(start, stream));
  scale_kernel<<<n / 256, 256, 0, stream>>>(d_y, d_x, 3.0f, n);
  CUDA_CHECK(cudaEventRecord(stop, stream));
  CUDA_CHECK(cudaEventSynchronize(stop));
  double t1 = wall_ms();
  float ms = -1;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  std::vector<float> y = to_host(d_y, n);
  bool y_ok = y[0] == 3.0f && y[n - 1] == 3.0f;
  check(ms >= 0 && ms <= t1 - t0 + 1.0 && y_ok, "events time a kernel on a stream (4-argument launch)",
        "elapsed %g ms, host saw %g ms, y %s", ms, t1 - t0, y_ok ? "ok" : "wrong");
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  CUDA_CHECK(cudaStreamDestroy(stream));
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_y));

  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  bool props_ok = count >= 1 && prop.warpSize == 32 && prop.maxThreadsPerBlock == 1024 &&
                  prop.sharedMemPerBlock == 48 * 1024 && prop.multiProcessorCount > 0;
#ifdef CUDA_EMU
  props_ok = props_ok && count == 1 && strstr(prop.name, "emulator") && prop.major == 9 &&
             prop.sharedMemPerBlockOptin == 227 * 1024;
#endif
  check(props_ok, "device count and properties", "count %d, name '%s', warp %d, max threads %d, smem %zu",
        count, prop.name, prop.warpSize, prop.maxThreadsPerBlock, prop.sharedMemPerBlock);
}

// ---------------------------------------------------------------------------
// warp matrix functions (nvcuda::wmma): 16x16x16, bf16 inputs, fp32
// accumulators. On the harness these run through cuda_emu_wmma.h.

static const int WMMA_TILE = 16;

// d = a b + c, one 16x16x16 problem per warp (warp w reads and writes at
// w * stride elements); a, b bf16 in the layouts chosen by the template, with
// leading dimensions lda, ldb; c and d row-major with ldc
template <class LayoutA, class LayoutB>
__global__ void wmma_mma_kernel(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c,
                                unsigned lda, unsigned ldb, unsigned ldc, int stride) {
  int linear = threadIdx.x + threadIdx.y * blockDim.x;
  int warp = linear / 32;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  nvcuda::wmma::load_matrix_sync(fa, a + warp * stride, lda);
  nvcuda::wmma::load_matrix_sync(fb, b + warp * stride, ldb);
  nvcuda::wmma::load_matrix_sync(acc, c + warp * stride, ldc, nvcuda::wmma::mem_row_major);
  nvcuda::wmma::mma_sync(acc, fa, fb, acc);  // in place, C = A B + C
  nvcuda::wmma::store_matrix_sync(d + warp * stride, acc, ldc, nvcuda::wmma::mem_row_major);
}

// each lane writes what it holds: out[kind][lane * 8 + i] = x[i] of a fragment
// loaded from m (16x16, row-major, element e = e as a number), kinds: matrix_a,
// matrix_b, accumulator. Then element-wise work on the accumulator (x * 2 + 1)
// and a store: twice m plus one, if every element is held by exactly one lane
__global__ void wmma_mapping_kernel(float* out, float* twice_plus_one, const __nv_bfloat16* m_bf16,
                                    const float* m) {
  int lane = threadIdx.x % 32;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> fb;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  nvcuda::wmma::load_matrix_sync(fa, m_bf16, 16);
  nvcuda::wmma::load_matrix_sync(fb, m_bf16, 16);
  nvcuda::wmma::load_matrix_sync(acc, m, 16, nvcuda::wmma::mem_row_major);
  for (int i = 0; i < fa.num_elements; i++) out[0 * 256 + lane * fa.num_elements + i] = __bfloat162float(fa.x[i]);
  for (int i = 0; i < fb.num_elements; i++) out[1 * 256 + lane * fb.num_elements + i] = __bfloat162float(fb.x[i]);
  for (int i = 0; i < acc.num_elements; i++) out[2 * 256 + lane * acc.num_elements + i] = acc.x[i];
  for (int i = 0; i < acc.num_elements; i++) acc.x[i] = acc.x[i] * 2.0f + 1.0f;
  nvcuda::wmma::store_matrix_sync(twice_plus_one, acc, 16, nvcuda::wmma::mem_row_major);
}

// accumulator load and store in both memory layouts, and fill_fragment:
// out0 = m^T (row-major load, column-major store), out1 = m^T (column-major
// load, row-major store), out2 = 3 everywhere (fill, ldm 20)
__global__ void wmma_layout_kernel(float* out0, float* out1, float* out2, const float* m) {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  nvcuda::wmma::load_matrix_sync(acc, m, 16, nvcuda::wmma::mem_row_major);
  nvcuda::wmma::store_matrix_sync(out0, acc, 16, nvcuda::wmma::mem_col_major);
  nvcuda::wmma::load_matrix_sync(acc, m, 16, nvcuda::wmma::mem_col_major);
  nvcuda::wmma::store_matrix_sync(out1, acc, 16, nvcuda::wmma::mem_row_major);
  nvcuda::wmma::fill_fragment(acc, 3);
  nvcuda::wmma::store_matrix_sync(out2, acc, 20, nvcuda::wmma::mem_row_major);
}

// logical 16x16 matrix x (row-major, 256 values) into memory with leading
// dimension ld, row- or column-major; padding elements get `pad`
template <class T>
static std::vector<T> wmma_lay_out(const std::vector<float>& x, bool col_major, unsigned ld, float pad) {
  std::vector<T> mem((size_t)WMMA_TILE * ld, (T)pad);
  for (int r = 0; r < WMMA_TILE; r++)
    for (int c = 0; c < WMMA_TILE; c++) mem[col_major ? (size_t)c * ld + r : (size_t)r * ld + c] = (T)x[r * 16 + c];
  return mem;
}

// two warps (block (32, 2): the warp index comes from threadIdx.y) each do
// their own 16x16x16 product; a and b in the given layouts
template <class LayoutA, class LayoutB>
static void test_wmma_mma_case(const char* name, bool integers) {
  const bool a_col = std::is_same<LayoutA, nvcuda::wmma::col_major>::value;
  const bool b_col = std::is_same<LayoutB, nvcuda::wmma::col_major>::value;
  const unsigned lda = 24, ldb = 16, ldc = 20;  // padded a and c, dense b
  const int warps = 2, stride = 16 * 24;       // elements between the warps' problems (>= every matrix)
  std::vector<__nv_bfloat16> a_mem((size_t)warps * stride), b_mem((size_t)warps * stride);
  std::vector<float> c_mem((size_t)warps * stride), d_init((size_t)warps * stride, -7.0f);
  std::vector<std::vector<float>> A(warps), B(warps), C(warps);
  unsigned seed = 11;
  auto next = [&seed]() {
    seed = seed * 1664525u + 1013904223u;
    return seed >> 8;
  };
  for (int w = 0; w < warps; w++) {
    A[w].resize(256);
    B[w].resize(256);
    C[w].resize(256);
    for (int i = 0; i < 256; i++) {
      if (integers) {  // small integers: every product and sum is exact in fp32
        A[w][i] = (float)((int)(next() % 17u) - 8);
        B[w][i] = (float)((int)(next() % 17u) - 8);
        C[w][i] = (float)((int)(next() % 129u) - 64);
      } else {  // bf16 values in [-1, 1), c in fp32
        A[w][i] = __bfloat162float(__float2bfloat16((float)next() / 8388608.0f - 1.0f));
        B[w][i] = __bfloat162float(__float2bfloat16((float)next() / 8388608.0f - 1.0f));
        C[w][i] = (float)next() / 8388608.0f - 1.0f;
      }
    }
    float nan = NAN;  // padding: reading it makes the result NaN
    std::vector<__nv_bfloat16> am = wmma_lay_out<__nv_bfloat16>(A[w], a_col, lda, nan);
    std::vector<__nv_bfloat16> bm = wmma_lay_out<__nv_bfloat16>(B[w], b_col, ldb, nan);
    std::vector<float> cm = wmma_lay_out<float>(C[w], false, ldc, nan);
    std::copy(am.begin(), am.end(), a_mem.begin() + (size_t)w * stride);
    std::copy(bm.begin(), bm.end(), b_mem.begin() + (size_t)w * stride);
    std::copy(cm.begin(), cm.end(), c_mem.begin() + (size_t)w * stride);
  }
  __nv_bfloat16* d_a = to_device(a_mem);
  __nv_bfloat16* d_b = to_device(b_mem);
  float* d_c = to_device(c_mem);
  float* d_d = to_device(d_init);
  wmma_mma_kernel<LayoutA, LayoutB><<<1, dim3(32, warps)>>>(d_d, d_a, d_b, d_c, lda, ldb, ldc, stride);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> got = to_host(d_d, d_init.size());
  // integers: exact. otherwise the fp32-accumulation bound that a GPU meets,
  // |d - exact| <= 17 u (|c| + sum |a b|), u = 2^-24; the harness computes in
  // double and rounds once, so there d is the exact result rounded to fp32
  double worst = 0.0;
  bool ok = true, padding_kept = true;
  for (int w = 0; w < warps; w++) {
    for (int r = 0; r < 16; r++) {
      for (int col = 0; col < 16; col++) {
        double exact = C[w][r * 16 + col], mag = fabs(exact);
        for (int k = 0; k < 16; k++) {
          exact += (double)A[w][r * 16 + k] * B[w][k * 16 + col];
          mag += fabs((double)A[w][r * 16 + k] * B[w][k * 16 + col]);
        }
        float g = got[(size_t)w * stride + (size_t)r * ldc + col];
        double err = fabs((double)g - exact);
        bool good = integers ? (double)g == exact : err <= 17.0 * ldexp(1.0, -24) * mag;
#ifdef CUDA_EMU
        good = good && g == (float)exact;
#endif
        if (!good || g != g) ok = false;
        worst = fmax(worst, err);
      }
      for (unsigned col = 16; col < ldc; col++)
        if (got[(size_t)w * stride + (size_t)r * ldc + col] != -7.0f) padding_kept = false;
    }
  }
  check(ok && padding_kept, name, "max |error| %.3g%s", worst, padding_kept ? "" : "; the store wrote padding");
  CUDA_CHECK(cudaFree(d_a));
  CUDA_CHECK(cudaFree(d_b));
  CUDA_CHECK(cudaFree(d_c));
  CUDA_CHECK(cudaFree(d_d));
}

static void test_wmma() {
  using nvcuda::wmma::col_major;
  using nvcuda::wmma::row_major;
  test_wmma_mma_case<row_major, row_major>("wmma mma_sync 16x16x16, a row-major, b row-major (integers, exact)", true);
  test_wmma_mma_case<row_major, col_major>("wmma mma_sync 16x16x16, a row-major, b col-major (integers, exact)", true);
  test_wmma_mma_case<col_major, row_major>("wmma mma_sync 16x16x16, a col-major, b row-major (integers, exact)", true);
  test_wmma_mma_case<col_major, col_major>("wmma mma_sync 16x16x16, a col-major, b col-major (integers, exact)", true);
  test_wmma_mma_case<row_major, col_major>("wmma mma_sync 16x16x16 on bf16 values within the fp32 bound", false);

  // the element-to-lane mapping: every element held by exactly one lane
  std::vector<float> m(256);
  for (int e = 0; e < 256; e++) m[e] = (float)e;  // integers to 255: exact in bf16
  std::vector<__nv_bfloat16> m_bf16(256);
  for (int e = 0; e < 256; e++) m_bf16[e] = __float2bfloat16(m[e]);
  float* d_m = to_device(m);
  __nv_bfloat16* d_mb = to_device(m_bf16);
  std::vector<float> init(3 * 256, -1.0f);
  float* d_out = to_device(init);
  float* d_twice = to_device(init);
  wmma_mapping_kernel<<<1, 32>>>(d_out, d_twice, d_mb, d_m);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> held = to_host(d_out, 3 * 256), twice = to_host(d_twice, 256);
  const char* kinds[3] = {"matrix_a", "matrix_b", "accumulator"};
  for (int kind = 0; kind < 3; kind++) {
    std::vector<int> count(256, 0);
    bool in_range = true;
    for (int s = 0; s < 256; s++) {
      int e = (int)held[kind * 256 + s];
      if (e < 0 || e > 255 || (float)e != held[kind * 256 + s]) in_range = false;
      else count[e]++;
    }
    int once = 0;
    for (int e = 0; e < 256; e++) once += count[e] == 1;
    char name[128];
    snprintf(name, sizeof name, "wmma %s fragment: 8 elements per lane, each element held by exactly one lane",
             kinds[kind]);
    check(in_range && once == 256, name, "%d of 256 elements held once", once);
  }
  bool twice_ok = true;
  for (int e = 0; e < 256; e++) twice_ok = twice_ok && twice[e] == 2.0f * e + 1.0f;
  check(twice_ok, "wmma element-wise work on accumulator x[i] then store_matrix_sync");
#ifdef CUDA_EMU
  // the documented fixed mapping (g = lane / 4, t = lane % 4), or a
  // permutation of it under CUDA_EMU_WMMA_MAPPING=scrambled
  const char* mapping = getenv("CUDA_EMU_WMMA_MAPPING");
  bool scrambled = mapping && strcmp(mapping, "scrambled") == 0;
  int as_documented = 0;
  for (int lane = 0; lane < 32; lane++) {
    int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 8; i++) {
      int row = g + 8 * ((i >> 1) & 1), col = 2 * t + (i & 1) + 8 * (i >> 2);
      int kk = 2 * t + (i & 1) + 8 * ((i >> 1) & 1), nn = g + 8 * (i >> 2);
      as_documented += held[0 * 256 + lane * 8 + i] == (float)(row * 16 + col);
      as_documented += held[1 * 256 + lane * 8 + i] == (float)(kk * 16 + nn);
      as_documented += held[2 * 256 + lane * 8 + i] == (float)(row * 16 + col);
    }
  }
  if (scrambled)
    check(as_documented < 3 * 256 / 8, "CUDA_EMU_WMMA_MAPPING=scrambled: lanes hold other elements",
          "%d of 768 as in the fixed mapping", as_documented);
  else
    check(as_documented == 3 * 256, "wmma lanes hold the elements of the documented fixed mapping",
          "%d of 768", as_documented);
#endif
  CUDA_CHECK(cudaFree(d_out));
  CUDA_CHECK(cudaFree(d_twice));

  // accumulator load/store in both memory layouts, fill_fragment
  float* d_o0 = to_device(init);
  float* d_o1 = to_device(init);
  float* d_o2 = to_device(init);
  wmma_layout_kernel<<<1, 32>>>(d_o0, d_o1, d_o2, d_m);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> o0 = to_host(d_o0, 256), o1 = to_host(d_o1, 256), o2 = to_host(d_o2, 16 * 20);
  bool t0 = true, t1 = true, t2 = true;
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) {
      t0 = t0 && o0[r * 16 + c] == m[c * 16 + r];
      t1 = t1 && o1[r * 16 + c] == m[c * 16 + r];
    }
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 20; c++) t2 = t2 && o2[r * 20 + c] == (c < 16 ? 3.0f : -1.0f);
  check(t0, "wmma accumulator: row-major load, column-major store gives the transpose");
  check(t1, "wmma accumulator: column-major load, row-major store gives the transpose");
  check(t2, "wmma fill_fragment, store with ldm 20 leaves the padding alone");
  CUDA_CHECK(cudaFree(d_o0));
  CUDA_CHECK(cudaFree(d_o1));
  CUDA_CHECK(cudaFree(d_o2));
  CUDA_CHECK(cudaFree(d_m));
  CUDA_CHECK(cudaFree(d_mb));
}

// ---------------------------------------------------------------------------
// warp matrix functions on TF32 (16x16x8): float storage, 10 mantissa bits in
// the product. a (16 x 8) and b (8 x 16) in the layouts chosen by the
// template; convert: the kernel rounds every loaded element with
// __float_to_tf32 first (as the guide asks), else the raw floats go in (the
// tensor cores then ignore their low 13 bits)
template <class LayoutA, class LayoutB>
__global__ void wmma_tf32_kernel(float* d, const float* a, const float* b, const float* c, unsigned lda,
                                 unsigned ldb, unsigned ldc, int convert) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32, LayoutA> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32, LayoutB> fb;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> acc;
  nvcuda::wmma::load_matrix_sync(fa, a, lda);
  nvcuda::wmma::load_matrix_sync(fb, b, ldb);
  nvcuda::wmma::load_matrix_sync(acc, c, ldc, nvcuda::wmma::mem_row_major);
  if (convert) {
    for (int i = 0; i < fa.num_elements; i++) fa.x[i] = nvcuda::wmma::__float_to_tf32(fa.x[i]);
    for (int i = 0; i < fb.num_elements; i++) fb.x[i] = nvcuda::wmma::__float_to_tf32(fb.x[i]);
  }
  nvcuda::wmma::mma_sync(acc, fa, fb, acc);
  nvcuda::wmma::store_matrix_sync(d, acc, ldc, nvcuda::wmma::mem_row_major);
}

// out[i] = __float_to_tf32(x[i])
__global__ void float_to_tf32_kernel(float* out, const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = nvcuda::wmma::__float_to_tf32(x[i]);
}

// what each lane holds of a tf32 a (16 x 8, element e = e) and b (8 x 16);
// out[kind][lane * 4 + i] = x[i], then a product with the accumulator
__global__ void wmma_tf32_mapping_kernel(float* out, const float* m) {
  int lane = threadIdx.x % 32;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major> fb;
  nvcuda::wmma::load_matrix_sync(fa, m, 8);
  nvcuda::wmma::load_matrix_sync(fb, m, 16);
  for (int i = 0; i < fa.num_elements; i++) out[0 * 128 + lane * fa.num_elements + i] = fa.x[i];
  for (int i = 0; i < fb.num_elements; i++) out[1 * 128 + lane * fb.num_elements + i] = fb.x[i];
}

// the exact product of the logical matrices A (16 x 8) and B (8 x 16), row-major, plus C
static void tf32_reference(double* exact, double* mag, const std::vector<float>& A, const std::vector<float>& B,
                           const std::vector<float>& C) {
  for (int r = 0; r < 16; r++)
    for (int col = 0; col < 16; col++) {
      double e = C[r * 16 + col], g = fabs(e);
      for (int k = 0; k < 8; k++) {
        e += (double)A[r * 8 + k] * B[k * 16 + col];
        g += fabs((double)A[r * 8 + k] * B[k * 16 + col]);
      }
      exact[r * 16 + col] = e;
      mag[r * 16 + col] = g;
    }
}

// host twins of the tf32 conversions, for the references: to nearest, ties
// away (cvt.rna), and the truncation the tensor cores apply to raw floats
static float host_tf32_round(float x) {
  unsigned bits;
  memcpy(&bits, &x, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  memcpy(&x, &bits, 4);
  return x;
}
static float host_tf32_truncate(float x) {
  unsigned bits;
  memcpy(&bits, &x, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits &= 0xffffe000u;
  memcpy(&x, &bits, 4);
  return x;
}

// one 16x16x8 tf32 product with padded lda and ldc, inputs random floats in
// [-1, 1) (all 23 mantissa bits), converted in the kernel: the result must be
// within the fp32-accumulation bound 9 u (|c| + sum |a b|), u = 2^-24, of the
// exact product of the rounded inputs (the harness: that product rounded once)
template <class LayoutA, class LayoutB>
static void test_wmma_tf32_case(const char* name) {
  const bool a_col = std::is_same<LayoutA, nvcuda::wmma::col_major>::value;
  const bool b_col = std::is_same<LayoutB, nvcuda::wmma::col_major>::value;
  const unsigned lda = a_col ? 20 : 12, ldb = b_col ? 12 : 20, ldc = 20;  // every one padded
  std::vector<float> A(128), B(128), C(256);
  unsigned seed = 29;
  auto next = [&seed]() {
    seed = seed * 1664525u + 1013904223u;
    return (float)(seed >> 8) / 8388608.0f - 1.0f;
  };
  for (float& v : A) v = next();
  for (float& v : B) v = next();
  for (float& v : C) v = next();
  float nan = NAN;
  std::vector<float> am(a_col ? 8 * lda : 16 * lda, nan), bm(b_col ? 16 * ldb : 8 * ldb, nan), cm(16 * ldc, nan);
  for (int r = 0; r < 16; r++)
    for (int k = 0; k < 8; k++) am[a_col ? k * lda + r : r * lda + k] = A[r * 8 + k];
  for (int k = 0; k < 8; k++)
    for (int col = 0; col < 16; col++) bm[b_col ? col * ldb + k : k * ldb + col] = B[k * 16 + col];
  for (int r = 0; r < 16; r++)
    for (int col = 0; col < 16; col++) cm[r * ldc + col] = C[r * 16 + col];
  float *d_a = to_device(am), *d_b = to_device(bm), *d_c = to_device(cm);
  float* d_d = to_device(std::vector<float>(16 * ldc, -7.0f));
  wmma_tf32_kernel<LayoutA, LayoutB><<<1, 32>>>(d_d, d_a, d_b, d_c, lda, ldb, ldc, 1);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> got = to_host(d_d, 16 * ldc);
  std::vector<float> Ar(128), Br(128);
  for (int i = 0; i < 128; i++) {
    Ar[i] = host_tf32_round(A[i]);
    Br[i] = host_tf32_round(B[i]);
  }
  double exact[256], mag[256], exact_raw[256], mag_raw[256];
  tf32_reference(exact, mag, Ar, Br, C);
  tf32_reference(exact_raw, mag_raw, A, B, C);
  double worst = 0.0, worst_raw = 0.0;
  bool ok = true, padding_kept = true;
  for (int r = 0; r < 16; r++) {
    for (int col = 0; col < 16; col++) {
      float g = got[r * ldc + col];
      double err = fabs((double)g - exact[r * 16 + col]);
      bool good = err <= 9.0 * ldexp(1.0, -24) * mag[r * 16 + col];
#ifdef CUDA_EMU
      good = good && g == (float)exact[r * 16 + col];
#endif
      if (!good || g != g) ok = false;
      worst = fmax(worst, err);
      worst_raw = fmax(worst_raw, fabs((double)g - exact_raw[r * 16 + col]));
    }
    for (unsigned col = 16; col < ldc; col++) padding_kept = padding_kept && got[r * ldc + col] == -7.0f;
  }
  // and tf32 is really in use: against the unrounded inputs the error is
  // far above fp32's (8 products of 2^-11-rounded values: ~1e-3)
  check(ok && padding_kept && worst_raw > 1e-5, name, "max |error| %.3g against the rounded inputs, %.3g against "
        "the fp32 inputs%s", worst, worst_raw, padding_kept ? "" : "; the store wrote padding");
  CUDA_CHECK(cudaFree(d_a));
  CUDA_CHECK(cudaFree(d_b));
  CUDA_CHECK(cudaFree(d_c));
  CUDA_CHECK(cudaFree(d_d));
}

static void test_wmma_tf32() {
  using nvcuda::wmma::col_major;
  using nvcuda::wmma::row_major;
  test_wmma_tf32_case<row_major, row_major>("wmma tf32 mma_sync 16x16x8, a row-major, b row-major, padded ldm");
  test_wmma_tf32_case<row_major, col_major>("wmma tf32 mma_sync 16x16x8, a row-major, b col-major, padded ldm");
  test_wmma_tf32_case<col_major, row_major>("wmma tf32 mma_sync 16x16x8, a col-major, b row-major, padded ldm");
  test_wmma_tf32_case<col_major, col_major>("wmma tf32 mma_sync 16x16x8, a col-major, b col-major, padded ldm");

  // __float_to_tf32: to nearest, ties away from zero (cvt.rna); 10 mantissa
  // bits kept; infinity and NaN pass
  const float u10 = ldexpf(1.0f, -10), u11 = ldexpf(1.0f, -11), u12 = ldexpf(1.0f, -12);
  std::vector<float> x = {1.0f + u11, -(1.0f + u11), 1.0f + u12, 1.0f + 3 * u12, 1.0f + u10 + u11,
                          3.0f, INFINITY, NAN};
  std::vector<float> want = {1.0f + u10, -(1.0f + u10), 1.0f, 1.0f + u10, 1.0f + 2 * u10, 3.0f, INFINITY, NAN};
  float* d_x = to_device(x);
  float* d_out = to_device(std::vector<float>(x.size(), 0.0f));
  float_to_tf32_kernel<<<1, 32>>>(d_out, d_x, (int)x.size());
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> got = to_host(d_out, x.size());
  bool conv_ok = true;
  for (size_t i = 0; i < x.size(); i++)
    conv_ok = conv_ok && (want[i] != want[i] ? got[i] != got[i] : got[i] == want[i]);
  check(conv_ok, "wmma __float_to_tf32 rounds to nearest, ties away from zero (1 + 2^-11 -> 1 + 2^-10)",
        "1 + 2^-11 -> 1 + %.6g 2^-10, -(1 + 2^-11) -> %.9g", (got[0] - 1.0f) / u10, got[1]);
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_out));

  // an unconverted input: the tensor cores ignore its low 13 mantissa bits
  // (truncation toward zero), as documented. a = x e_0 e_0^T, b = ones: row 0
  // of d is x as the hardware reads it, once raw (1 + 3 2^-12 -> 1, -(...) -> -1)
  // and once converted (-> 1 + 2^-10)
  std::vector<float> a(16 * 8, 0.0f), b(8 * 16, 1.0f), c(256, 0.0f);
  a[0] = 1.0f + 3 * u12;
  a[1 * 8] = -(1.0f + 3 * u12);  // row 1
  float *d_a = to_device(a), *d_b = to_device(b), *d_c = to_device(c);
  float* d_d = to_device(std::vector<float>(256, -7.0f));
  float raw[2], converted[2];
  for (int conv = 0; conv < 2; conv++) {
    wmma_tf32_kernel<row_major, row_major><<<1, 32>>>(d_d, d_a, d_b, d_c, 8, 16, 16, conv);
    CUDA_CHECK(cudaGetLastError());
    std::vector<float> d = to_host(d_d, 256);
    (conv ? converted : raw)[0] = d[0];
    (conv ? converted : raw)[1] = d[16];
  }
  check(raw[0] == 1.0f && raw[1] == -1.0f && host_tf32_truncate(a[0]) == 1.0f,
        "wmma tf32: an input not converted is truncated toward zero (1 + 3 2^-12 reads as 1)",
        "got %.9g and %.9g", raw[0], raw[1]);
  check(converted[0] == 1.0f + u10 && converted[1] == -(1.0f + u10),
        "wmma tf32: the same input after __float_to_tf32 reads as 1 + 2^-10", "got %.9g and %.9g", converted[0],
        converted[1]);
  CUDA_CHECK(cudaFree(d_a));
  CUDA_CHECK(cudaFree(d_b));
  CUDA_CHECK(cudaFree(d_c));
  CUDA_CHECK(cudaFree(d_d));

  // the mapping of the tf32 inputs: 4 elements per lane, each held once
  std::vector<float> m(128);
  for (int e = 0; e < 128; e++) m[e] = (float)e;
  float* d_m = to_device(m);
  float* d_held = to_device(std::vector<float>(256, -1.0f));
  wmma_tf32_mapping_kernel<<<1, 32>>>(d_held, d_m);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> held = to_host(d_held, 256);
  const char* kinds[2] = {"matrix_a (16 x 8)", "matrix_b (8 x 16)"};
  for (int kind = 0; kind < 2; kind++) {
    std::vector<int> count(128, 0);
    for (int s = 0; s < 128; s++) {
      int e = (int)held[kind * 128 + s];
      if (e >= 0 && e < 128 && (float)e == held[kind * 128 + s]) count[e]++;
    }
    int once = 0;
    for (int e = 0; e < 128; e++) once += count[e] == 1;
    char name[128];
    snprintf(name, sizeof name, "wmma tf32 %s fragment: 4 elements per lane, each held by exactly one lane",
             kinds[kind]);
    check(once == 128, name, "%d of 128 elements held once", once);
  }
#ifdef CUDA_EMU
  const char* mapping = getenv("CUDA_EMU_WMMA_MAPPING");
  bool scrambled = mapping && strcmp(mapping, "scrambled") == 0;
  int as_documented = 0;
  for (int lane = 0; lane < 32; lane++) {
    int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) {
      as_documented += held[0 * 128 + lane * 4 + i] == (float)((g + 8 * (i & 1)) * 8 + t + 4 * (i >> 1));
      as_documented += held[1 * 128 + lane * 4 + i] == (float)((t + 4 * (i & 1)) * 16 + g + 8 * (i >> 1));
    }
  }
  if (scrambled)
    check(as_documented < 256 / 8, "CUDA_EMU_WMMA_MAPPING=scrambled: lanes hold other tf32 elements",
          "%d of 256 as in the fixed mapping", as_documented);
  else
    check(as_documented == 256, "wmma tf32 lanes hold the elements of the documented fixed mapping", "%d of 256",
          as_documented);
#endif
  CUDA_CHECK(cudaFree(d_m));
  CUDA_CHECK(cudaFree(d_held));
}

// the race-free variants of the race kernels give the right answers (and, in
// the race-check build, no report)
static void test_race_free_kernels() {
  const int n = REDUCE_THREADS, blocks = 2;
  std::vector<float> x(n * blocks);
  for (int i = 0; i < n * blocks; i++) x[i] = test_value(i, 7);
  float* d_x = to_device(x);
  float* d_out = nullptr;
  CUDA_CHECK(cudaMalloc(&d_out, n * blocks * sizeof(float)));
  int* d_count = nullptr;
  CUDA_CHECK(cudaMalloc(&d_count, blocks * sizeof(int)));

  broadcast_sum_kernel<<<blocks, n>>>(d_out, d_x, 1);
  std::vector<float> out = to_host(d_out, n * blocks);
  int bad = 0;
  for (int b = 0; b < blocks; b++) {
    float total = 0.0f;  // multiples of 1/8: exact in any order
    for (int t = 0; t < n; t++) total += x[b * n + t];
    for (int t = 0; t < n; t++) bad += out[b * n + t] != x[b * n + t] - total;
  }
  check(bad == 0, "block sum broadcast through shared memory (with the barrier)", "%d wrong", bad);

  shift_left_kernel<<<1, n>>>(d_out, d_x, 1);
  out = to_host(d_out, n);
  bad = 0;
  for (int t = 0; t < n; t++) bad += out[t] != 2.0f * x[(t + 1) % n];
  check(bad == 0, "read neighbour, barrier, overwrite own slot", "%d wrong", bad);

  warp_slot_kernel<<<1, n>>>(d_out, d_x, 1);
  out = to_host(d_out, n);
  bad = 0;
  for (int t = 0; t < n; t++) {
    float sum = 0.0f;
    for (int l = 0; l < 32; l++) sum += x[t / 32 * 32 + l];
    bad += out[t] != sum;
  }
  check(bad == 0, "per-warp slot written by lane 0 after a shuffle reduction", "%d wrong", bad);

  warp_exchange_kernel<<<1, n>>>(d_out, d_x, 1);
  out = to_host(d_out, n);
  bad = 0;
  for (int t = 0; t < n; t++) bad += out[t] != 2.0f * x[t];  // the left neighbour's copy of my right-hand read
  check(bad == 0, "lanes exchange through shared memory ordered by __syncwarp", "%d wrong", bad);

  half_warp_exchange_kernel<<<1, 32>>>(d_out, d_x, 0);
  out = to_host(d_out, 32);
  bad = 0;
  for (int l = 0; l < 32; l++) bad += out[l] != x[(l & 16) | ((l + 1) & 15)];
  check(bad == 0, "half warps exchange within themselves after __syncwarp(half mask)", "%d wrong", bad);

#ifdef CUDA_EMU
  // lanes 1 and 2 may only wait at the second __syncwarp after lanes 0 and 1
  // left the first: in reverse order lane 2 would wait first, with a mask
  // that overlaps the other one (an error here, as masks must not overlap)
  const char* order = getenv("CUDA_EMU_THREAD_ORDER");
  if (!(order && strcmp(order, "reverse") == 0))
#endif
  {
    warp_chain_kernel<<<1, 3>>>(d_out);
    out = to_host(d_out, 1);
    check(out[0] == 42.0f, "__syncwarp orders accesses transitively (lane 0 -> 1 -> 2)", "got %g", out[0]);
  }

  bf16_halves_kernel<<<1, n>>>(d_out, d_x, 1);
  out = to_host(d_out, n);
  bad = 0;
  for (int t = 0; t < n; t++) bad += out[t] != x[t ^ 1];  // multiples of 1/8: exact in bf16
  check(bad == 0, "neighbours write the two bf16 halves of a word, barrier, read each other's", "%d wrong", bad);

  shared_atomic_count_kernel<<<blocks, n>>>(d_count, 1);
  std::vector<int> counts = to_host(d_count, blocks);
  check(counts[0] == n && counts[1] == n, "shared-memory atomicAdd from every thread, barrier, read",
        "counts %d %d", counts[0], counts[1]);
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_out));
  CUDA_CHECK(cudaFree(d_count));
}

// registers per thread: a block that fits runs; cudaFuncGetAttributes reports
// ptxas's count. Under the harness this needs the table from nvcc
// (CUDA_EMU_REGISTER_TABLE, set by emu.mk when nvcc is there)
static void test_register_limit() {
#if defined(CUDA_EMU) && !defined(CUDA_EMU_REGISTER_TABLE)
  printf("(register limit checks skipped: built without nvcc, so there are no ptxas register counts)\n");
#else
  cudaFuncAttributes attr;
  CUDA_CHECK(cudaFuncGetAttributes(&attr, register_heavy_kernel));
  check(attr.numRegs > 64 && attr.numRegs <= 255 && attr.maxThreadsPerBlock < 1024 &&
            attr.maxThreadsPerBlock >= 256 && attr.maxThreadsPerBlock % 32 == 0,
        "cudaFuncGetAttributes: registers of a register-heavy kernel (ptxas)", "numRegs %d, maxThreadsPerBlock %d",
        attr.numRegs, attr.maxThreadsPerBlock);
  CUDA_CHECK(cudaFuncGetAttributes(&attr, bounded_kernel));
  check(attr.maxThreadsPerBlock == 128, "cudaFuncGetAttributes: __launch_bounds__(128)", "maxThreadsPerBlock %d",
        attr.maxThreadsPerBlock);
  const int threads = 256;
  std::vector<float> x(1024);
  for (int i = 0; i < 1024; i++) x[i] = test_value(i, 9) * 0.5f;
  float* d_x = to_device(x);
  float* d_out = nullptr;
  CUDA_CHECK(cudaMalloc(&d_out, threads * sizeof(float)));
  register_heavy_kernel<<<1, threads>>>(d_out, d_x, 1);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> out = to_host(d_out, threads);
  int bad = 0;
  for (int t = 0; t < threads; t++) {
    float v[REGISTER_HEAVY];
    for (int i = 0; i < REGISTER_HEAVY; i++) v[i] = x[(t + i) % 1024];
    for (int i = 0; i < REGISTER_HEAVY; i++) v[i] = v[i] * v[(i + 1) % REGISTER_HEAVY] + v[(i + 7) % REGISTER_HEAVY];
    float sum = 0.0f;
    for (int i = 0; i < REGISTER_HEAVY; i++) sum += v[i];
    bad += !(fabsf(out[t] - sum) <= 1e-4f * (1.0f + fabsf(sum)));  // a GPU contracts to fma
  }
  check(bad == 0, "register-heavy kernel at 256 threads a block runs", "%d wrong", bad);
#ifndef CUDA_EMU
  // on a GPU, the launches the harness refuses fail here
  register_heavy_kernel<<<1, 1024>>>(d_out, d_x, 1);
  cudaError_t e = cudaGetLastError();
  check(e == cudaErrorLaunchOutOfResources, "register-heavy kernel at 1024 threads: too many resources",
        "got %s", cudaGetErrorString(e));
  bounded_kernel<<<1, 256>>>(d_out);
  e = cudaGetLastError();
  check(e == cudaErrorLaunchOutOfResources, "__launch_bounds__(128) kernel at 256 threads: too many resources",
        "got %s", cudaGetErrorString(e));
#endif
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_out));
#endif
}

#ifdef CUDA_EMU
// errors that the real runtime returns (not fatal)
static void test_runtime_errors() {
  float host[4] = {0, 0, 0, 0};
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, sizeof host));
  // swapped direction: device pointer as the host side
  cudaError_t e = cudaMemcpy(d, host, sizeof host, cudaMemcpyDeviceToHost);
  cudaError_t last = cudaGetLastError();
  cudaError_t after = cudaGetLastError();
  check(e == cudaErrorInvalidValue && last == cudaErrorInvalidValue && after == cudaSuccess,
        "cudaMemcpy with the wrong direction fails; cudaGetLastError reports and clears it",
        "returned %d, last %d, then %d", (int)e, (int)last, (int)after);
  e = cudaMemcpy(d, host, 2 * sizeof host, cudaMemcpyHostToDevice);
  check(e == cudaErrorInvalidValue, "cudaMemcpy past the end of a device allocation fails", "returned %d", (int)e);
  (void)cudaGetLastError();
  CUDA_CHECK(cudaFree(d));
}

// the counts of what a training step must not do (cuda_emu_api_counts): each
// call moves exactly its own counter, and the asynchronous calls move none
__global__ void api_counts_fill_kernel(float* x, int n, float v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = v;
}

static void test_api_counts() {
  CudaEmuApiCounts a, b;
  float *d = nullptr, *d2 = nullptr, *pinned = nullptr, pageable[4] = {1, 2, 3, 4};
  cudaStream_t s;
  cudaEvent_t ev;
  CUDA_CHECK(cudaStreamCreate(&s));
  CUDA_CHECK(cudaEventCreate(&ev));
  cuda_emu_api_counts(&a);
  CUDA_CHECK(cudaMalloc(&d, sizeof pageable));
  CUDA_CHECK(cudaMalloc(&d2, sizeof pageable));
  CUDA_CHECK(cudaMallocHost(&pinned, sizeof pageable));
  cuda_emu_api_counts(&b);
  check(b.allocations - a.allocations == 3 && b.frees == a.frees && b.host_waits == a.host_waits,
        "api counts: cudaMalloc and cudaMallocHost count as allocations, nothing else", "%lld allocations",
        b.allocations - a.allocations);
  a = b;
  // none of these waits: async copies from pinned memory, to pinned memory,
  // device to device, memsets, event records, a kernel launch
  CUDA_CHECK(cudaMemcpyAsync(d, pinned, sizeof pageable, cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(pinned, d, sizeof pageable, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaMemcpyAsync(d2, d, sizeof pageable, cudaMemcpyDeviceToDevice, s));
  CUDA_CHECK(cudaMemcpy(d2, d, sizeof pageable, cudaMemcpyDeviceToDevice));
  CUDA_CHECK(cudaMemcpyAsync(d, pageable, sizeof pageable, cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof pageable, s));
  CUDA_CHECK(cudaEventRecord(ev, s));
  api_counts_fill_kernel<<<1, 4>>>(d, 4, 1.0f);
  CUDA_CHECK(cudaGetLastError());
  cuda_emu_api_counts(&b);
  check(b.host_waits == a.host_waits && b.event_waits == a.event_waits && b.allocations == a.allocations,
        "api counts: asynchronous copies, device-to-device copies, memsets and launches do not wait", "%lld waits",
        b.host_waits - a.host_waits);
  // each of these waits for the device, once
  struct { const char* name; int which; } waits[] = {
      {"cudaMemcpy device to host", 0}, {"cudaMemcpy host to device", 1}, {"cudaMemcpyAsync to pageable memory", 2},
      {"cudaDeviceSynchronize", 3}, {"cudaStreamSynchronize", 4}};
  for (const auto& w : waits) {
    cuda_emu_api_counts(&a);
    switch (w.which) {
      case 0: CUDA_CHECK(cudaMemcpy(pageable, d, sizeof pageable, cudaMemcpyDeviceToHost)); break;
      case 1: CUDA_CHECK(cudaMemcpy(d, pageable, sizeof pageable, cudaMemcpyHostToDevice)); break;
      case 2: CUDA_CHECK(cudaMemcpyAsync(pageable, d, sizeof pageable, cudaMemcpyDeviceToHost, s)); break;
      case 3: CUDA_CHECK(cudaDeviceSynchronize()); break;
      default: CUDA_CHECK(cudaStreamSynchronize(s)); break;
    }
    cuda_emu_api_counts(&b);
    char name[128];
    snprintf(name, sizeof name, "api counts: %s is one host wait", w.name);
    check(b.host_waits - a.host_waits == 1 && b.event_waits == a.event_waits, name, "%lld", b.host_waits - a.host_waits);
  }
  cuda_emu_api_counts(&a);
  CUDA_CHECK(cudaEventSynchronize(ev));
  cuda_emu_api_counts(&b);
  check(b.event_waits - a.event_waits == 1 && b.host_waits == a.host_waits,
        "api counts: cudaEventSynchronize is an event wait, not a host wait");
  a = b;
  CUDA_CHECK(cudaFree(d));
  CUDA_CHECK(cudaFree(d2));
  CUDA_CHECK(cudaFreeHost(pinned));
  cuda_emu_api_counts(&b);
  check(b.frees - a.frees == 3 && b.allocations == a.allocations, "api counts: cudaFree and cudaFreeHost count as frees",
        "%lld", b.frees - a.frees);
  CUDA_CHECK(cudaEventDestroy(ev));
  CUDA_CHECK(cudaStreamDestroy(s));
}

// device memory accounting: cuda_emu_device_memory counts the bytes of live
// cudaMalloc and cudaMallocManaged allocations (not pinned host memory), and
// their peak since the last cuda_emu_device_memory_reset_peak
static void test_device_memory_accounting() {
  size_t live0 = 0, n0 = 0, live = 0, peak = 0, n = 0;
  cuda_emu_device_memory_reset_peak();
  cuda_emu_device_memory(&live0, &peak, &n0);
  check(peak == live0, "cuda_emu_device_memory_reset_peak sets the peak to the live bytes", "live %zu, peak %zu",
        live0, peak);
  void *a = nullptr, *b = nullptr, *c = nullptr, *m = nullptr, *h = nullptr;
  CUDA_CHECK(cudaMalloc(&a, 1000));
  CUDA_CHECK(cudaMalloc(&b, 3000));
  CUDA_CHECK(cudaMallocManaged(&m, 500));
  CUDA_CHECK(cudaMallocHost(&h, 7000));
  cuda_emu_device_memory(&live, &peak, &n);
  check(live == live0 + 4500 && peak == live0 + 4500 && n == n0 + 3,
        "cudaMalloc and cudaMallocManaged count as device memory, cudaMallocHost does not",
        "live %zu (expected %zu), peak %zu, allocations %zu (expected %zu)", live, live0 + 4500, peak, n, n0 + 3);
  CUDA_CHECK(cudaFree(a));
  CUDA_CHECK(cudaFree(m));
  CUDA_CHECK(cudaFreeHost(h));
  cuda_emu_device_memory(&live, &peak, &n);
  check(live == live0 + 3000 && peak == live0 + 4500 && n == n0 + 1, "cudaFree lowers the live bytes but not the peak",
        "live %zu (expected %zu), peak %zu (expected %zu), allocations %zu", live, live0 + 3000, peak, live0 + 4500, n);
  cuda_emu_device_memory_reset_peak();
  CUDA_CHECK(cudaMalloc(&c, 200));
  CUDA_CHECK(cudaFree(c));
  cuda_emu_device_memory(&live, &peak, &n);
  check(live == live0 + 3000 && peak == live0 + 3200 && n == n0 + 1,
        "after cuda_emu_device_memory_reset_peak the peak counts from the live bytes",
        "live %zu, peak %zu (expected %zu), allocations %zu", live, peak, live0 + 3200, n);
  CUDA_CHECK(cudaFree(b));
  cudaError_t e = cudaFree(b);  // a double free fails and must not count twice
  (void)cudaGetLastError();
  cuda_emu_device_memory(&live, nullptr, &n);
  check(e == cudaErrorInvalidValue && live == live0 && n == n0, "freeing everything returns to the starting count",
        "double free returned %d; live %zu (expected %zu), allocations %zu (expected %zu)", (int)e, live, live0, n,
        n0);
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  check(total_bytes == prop.totalGlobalMem && free_bytes <= total_bytes,
        "cudaMemGetInfo's total is cudaGetDeviceProperties' totalGlobalMem", "free %zu, total %zu, totalGlobalMem %zu",
        free_bytes, total_bytes, prop.totalGlobalMem);
}

// the child of test_device_memory_limit, run as `selftest --device-memory-child`
// with CUDA_EMU_DEVICE_MEMORY=1M: its PASS/FAIL lines are repeated by the parent
static const size_t CHILD_DEVICE_MEMORY = 1 << 20;
static int device_memory_child() {
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  check(total_bytes == CHILD_DEVICE_MEMORY && free_bytes == total_bytes && prop.totalGlobalMem == total_bytes,
        "CUDA_EMU_DEVICE_MEMORY=1M: cudaMemGetInfo and totalGlobalMem report 1 MiB, all free",
        "free %zu, total %zu, totalGlobalMem %zu", free_bytes, total_bytes, prop.totalGlobalMem);
  void *a = nullptr, *b = nullptr, *c = nullptr, *h = nullptr;
  CUDA_CHECK(cudaMalloc(&a, 400000));
  CUDA_CHECK(cudaMallocHost(&h, 2 * CHILD_DEVICE_MEMORY));  // pinned host memory: neither limited nor counted
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  check(free_bytes == CHILD_DEVICE_MEMORY - 400000 && total_bytes == CHILD_DEVICE_MEMORY,
        "CUDA_EMU_DEVICE_MEMORY: cudaMemGetInfo's free is the total less the live device bytes",
        "free %zu (expected %zu), total %zu", free_bytes, CHILD_DEVICE_MEMORY - 400000, total_bytes);
  cudaError_t e1 = cudaMalloc(&b, 700000);
  cudaError_t last = cudaGetLastError();
  cudaError_t e2 = cudaMalloc(&b, (size_t)-1);  // no overflow in the comparison
  (void)cudaGetLastError();
  size_t live = 0, n = 0;
  cuda_emu_device_memory(&live, nullptr, &n);
  check(e1 == cudaErrorMemoryAllocation && last == cudaErrorMemoryAllocation && e2 == cudaErrorMemoryAllocation &&
            live == 400000 && n == 1,
        "CUDA_EMU_DEVICE_MEMORY: a cudaMalloc above the free bytes fails with cudaErrorMemoryAllocation",
        "returned %d, last error %d, SIZE_MAX returned %d; live %zu, allocations %zu", (int)e1, (int)last, (int)e2,
        live, n);
  cudaError_t e3 = cudaMalloc(&c, CHILD_DEVICE_MEMORY - 400000);
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  check(e3 == cudaSuccess && free_bytes == 0, "CUDA_EMU_DEVICE_MEMORY: a cudaMalloc of exactly the free bytes succeeds",
        "returned %d, then free %zu", (int)e3, free_bytes);
  if (e3 == cudaSuccess) CUDA_CHECK(cudaFree(c));
  CUDA_CHECK(cudaFreeHost(h));
  // exits with `a` live and no kernel launched: CUDA_EMU_MEMORY=1 must still
  // print "peak 1048576 bytes, live at exit 400000 bytes in 1 allocations"
  return g_failed ? 1 : 0;
}

// runs device_memory_child in a fresh process (the environment variables are
// read at startup); returns its stdout and stderr together
static std::string run_device_memory_child(const char* memory_env, int* status) {
  fflush(stdout);
  fflush(stderr);
  *status = -1;
  char path[] = "/tmp/cuda_emu_selftest_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return "cannot create a temporary file";
  unlink(path);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    setenv("CUDA_EMU_MEMORY", memory_env, 1);
    setenv("CUDA_EMU_DEVICE_MEMORY", "1M", 1);
    execl("/proc/self/exe", "selftest", "--device-memory-child", (char*)nullptr);
    fprintf(stderr, "cannot re-run /proc/self/exe\n");
    _exit(127);
  }
  waitpid(pid, status, 0);
  std::string log;
  char buf[4096];
  lseek(fd, 0, SEEK_SET);
  for (ssize_t got; (got = read(fd, buf, sizeof buf)) > 0;) log.append(buf, (size_t)got);
  close(fd);
  return log;
}

static void test_device_memory_limit() {
  int status = 0;
  std::string log = run_device_memory_child("1", &status);
  int child_checks = 0;
  for (size_t at = 0; at < log.size();) {
    size_t e = log.find('\n', at);
    if (e == std::string::npos) e = log.size();
    std::string line = log.substr(at, e - at);
    if (line.compare(0, 5, "PASS ") == 0 || line.compare(0, 5, "FAIL ") == 0) {
      check(line[0] == 'P', ("(child) " + line.substr(5)).c_str());
      child_checks++;
    }
    at = e + 1;
  }
  const char* expected = "cuda_emu: device memory: peak 1048576 bytes, live at exit 400000 bytes in 1 allocations\n";
  bool exited0 = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  bool ok = exited0 && child_checks == 4 && log.find(expected) != std::string::npos;
  check(ok, "CUDA_EMU_MEMORY=1 prints the device memory peak and what is live at exit (no kernel launched)",
        "child %s, %d checks; expected the line %s", exited0 ? "exited 0" : "failed", child_checks, expected);
  for (size_t at = 0; !ok && at < log.size();) {  // what the child said, indented
    size_t e = log.find('\n', at);
    if (e == std::string::npos) e = log.size();
    printf("    | %s\n", log.substr(at, e - at).c_str());
    at = e + 1;
  }
  std::string quiet = run_device_memory_child("0", &status);
  check(quiet.find("device memory:") == std::string::npos, "CUDA_EMU_MEMORY=0 prints no device memory line");
}

// ---------------------------------------------------------------------------
// planted bugs, each in a child process: the child must die, and its stderr
// must name the kernel and the problem

static void bug_oob_write() {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 100 * sizeof(float)));
  oob_write_kernel<<<1, 128>>>(d, 100);
  cudaDeviceSynchronize();
}
static void bug_divergent_barrier() {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 32 * sizeof(float)));
  divergent_barrier_kernel<<<1, 32>>>(d);
  cudaDeviceSynchronize();
}
static void bug_early_exit_barrier() {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 100 * sizeof(float)));
  early_exit_barrier_kernel<<<2, 64>>>(d, 100);
  cudaDeviceSynchronize();
}
static void bug_divergent_shuffle() {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 32 * sizeof(float)));
  divergent_shuffle_kernel<<<1, 32>>>(d);
  cudaDeviceSynchronize();
}
static void bug_block_too_big() {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 1025 * sizeof(float)));
  big_block_kernel<<<1, 1025>>>(d);
  CUDA_CHECK(cudaGetLastError());
}
static void bug_dynamic_shared_no_optin() {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 64 * sizeof(float)));
  big_dynamic_shared_kernel<<<1, 64, 64 * 1024>>>(d);
  CUDA_CHECK(cudaGetLastError());
}
static void bug_shared_over_optin() {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 256 * sizeof(float)));
  int optin = 227 * 1024;
  CUDA_CHECK(cudaFuncSetAttribute(static_plus_dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  static_plus_dynamic_kernel<<<1, 256, optin>>>(d);  // + 1 KiB static: over the total
  CUDA_CHECK(cudaGetLastError());
}
static void bug_freed_argument() {
  float *in = nullptr, *out = nullptr;
  CUDA_CHECK(cudaMalloc(&in, 32 * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&out, 32 * sizeof(float)));
  CUDA_CHECK(cudaFree(in));
  scale_kernel<<<1, 32>>>(out, in, 2.0f, 32);
  cudaDeviceSynchronize();
}
static void bug_freed_in_struct() {
  float *in = nullptr, *out = nullptr;
  CUDA_CHECK(cudaMalloc(&in, 32 * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&out, 32 * sizeof(float)));
  CUDA_CHECK(cudaFree(in));
  buffer_ref ref = {in};  // the launch cannot see this pointer: AddressSanitizer must
  read_through_struct_kernel<<<1, 32>>>(out, ref);
  cudaDeviceSynchronize();
}
static void bug_host_pointer() {
  static float host[32];
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, 32 * sizeof(float)));
  scale_kernel<<<1, 32>>>(out, host, 2.0f, 32);
  cudaDeviceSynchronize();
}
static void bug_cublas_host_pointer(cublasHandle_t handle) {
  static float a[16], b[16];
  float* c = nullptr;
  CUDA_CHECK(cudaMalloc(&c, 16 * sizeof(float)));
  float one = 1.0f, zero = 0.0f;
  cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, a, 4, b, 4, &zero, c, 4);
}
// device matrices, but the array of their pointers in host memory
static void bug_cublas_host_pointer_array(cublasHandle_t handle) {
  float* m = nullptr;
  CUDA_CHECK(cudaMalloc(&m, 3 * 16 * sizeof(float)));
  const float* a[1] = {m};
  const float* b[1] = {m + 16};
  float* c[1] = {m + 32};
  float one = 1.0f, zero = 0.0f;
  cublasSgemmBatched(handle, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, a, 4, b, 4, &zero, c, 4, 1);
}


// races (the race-check build): a barrier missing from each correct kernel above
static float* race_input(int n) {
  std::vector<float> x(n);
  for (int i = 0; i < n; i++) x[i] = test_value(i, 8);
  return to_device(x);
}
static void bug_race_broadcast() {
  float* x = race_input(REDUCE_THREADS);
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, REDUCE_THREADS * sizeof(float)));
  broadcast_sum_kernel<<<1, REDUCE_THREADS>>>(out, x, 0);
  cudaDeviceSynchronize();
}
static void bug_race_tree() {
  float* x = race_input(REDUCE_THREADS);
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, sizeof(float)));
  block_sum_missing_barrier_kernel<<<1, REDUCE_THREADS>>>(out, x, REDUCE_THREADS);
  cudaDeviceSynchronize();
}
static void bug_race_shift() {
  float* x = race_input(REDUCE_THREADS);
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, REDUCE_THREADS * sizeof(float)));
  shift_left_kernel<<<1, REDUCE_THREADS>>>(out, x, 0);
  cudaDeviceSynchronize();
}
static void bug_race_warp_slot() {
  float* x = race_input(REDUCE_THREADS);
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, REDUCE_THREADS * sizeof(float)));
  warp_slot_kernel<<<1, REDUCE_THREADS>>>(out, x, 0);
  cudaDeviceSynchronize();
}
static void bug_race_warp_exchange() {
  float* x = race_input(REDUCE_THREADS);
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, REDUCE_THREADS * sizeof(float)));
  warp_exchange_kernel<<<1, REDUCE_THREADS>>>(out, x, 0);
  cudaDeviceSynchronize();
}
static void bug_race_half_warp() {
  float* x = race_input(32);
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, 32 * sizeof(float)));
  half_warp_exchange_kernel<<<1, 32>>>(out, x, 1);
  cudaDeviceSynchronize();
}
static void bug_race_bf16() {
  float* x = race_input(REDUCE_THREADS);
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, REDUCE_THREADS * sizeof(float)));
  bf16_halves_kernel<<<1, REDUCE_THREADS>>>(out, x, 0);
  cudaDeviceSynchronize();
}
static void bug_race_atomic() {
  int* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, sizeof(int)));
  shared_atomic_count_kernel<<<1, 64>>>(out, 0);
  cudaDeviceSynchronize();
}
// launch resources (with the ptxas table)
static void bug_too_many_registers() {
  float *x = race_input(1024), *out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, 1024 * sizeof(float)));
  register_heavy_kernel<<<1, 1024>>>(out, x, 1);
  cudaDeviceSynchronize();
}
static void bug_over_launch_bounds() {
  float* out = nullptr;
  CUDA_CHECK(cudaMalloc(&out, 256 * sizeof(float)));
  bounded_kernel<<<1, 256>>>(out);
  cudaDeviceSynchronize();
}

static void expect_failure(const char* name, void (*bug)(), std::vector<const char*> must_contain) {
  fflush(stdout);
  fflush(stderr);
  char path[] = "/tmp/cuda_emu_selftest_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) {
    check(false, name, "cannot create a temporary file");
    return;
  }
  unlink(path);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fd, 2);
    bug();
    fprintf(stderr, "the planted bug was not caught\n");
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::string log;
  char buf[4096];
  lseek(fd, 0, SEEK_SET);
  for (ssize_t got; (got = read(fd, buf, sizeof buf)) > 0;) log.append(buf, (size_t)got);
  close(fd);
  bool died = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::string missing;
  for (const char* s : must_contain)
    if (log.find(s) == std::string::npos) missing += std::string(" '") + s + "'";
  bool ok = died && missing.empty();
  check(ok, name, "child %s; stderr lacks%s", died ? "died" : "exited 0", missing.c_str());
  const char* verbose = getenv("CUDA_EMU_SELFTEST_VERBOSE");
  if (!ok || (verbose && *verbose && strcmp(verbose, "0") != 0)) {
    // show what the child said, indented, first lines only
    size_t shown = 0, lines = 0;
    while (shown < log.size() && lines < 12) {
      size_t e = log.find('\n', shown);
      if (e == std::string::npos) e = log.size();
      printf("    | %s\n", log.substr(shown, e - shown).c_str());
      shown = e + 1;
      lines++;
    }
  }
}

static cublasHandle_t g_handle_for_bug;
static void bug_cublas_host_pointer_wrapper() { bug_cublas_host_pointer(g_handle_for_bug); }
static void bug_cublas_host_pointer_array_wrapper() { bug_cublas_host_pointer_array(g_handle_for_bug); }

static void test_planted_bugs(cublasHandle_t handle) {
#ifndef CUDA_EMU_RACECHECK  // AddressSanitizer is in the ordinary build only
  expect_failure("planted out-of-bounds write is caught by AddressSanitizer", bug_oob_write,
                 {"AddressSanitizer", "heap-buffer-overflow", "oob_write_kernel"});
#endif
  expect_failure("__syncthreads in a divergent branch is reported as a deadlock", bug_divergent_barrier,
                 {"deadlock", "divergent_barrier_kernel", "__syncthreads"});
  expect_failure("early return before __syncthreads is reported as a deadlock", bug_early_exit_barrier,
                 {"deadlock", "early_exit_barrier_kernel", "exited"});
  expect_failure("warp shuffle in a divergent branch is reported as a deadlock", bug_divergent_shuffle,
                 {"deadlock", "divergent_shuffle_kernel", "__shfl_xor_sync"});
  expect_failure("block of 1025 threads is reported", bug_block_too_big, {"big_block_kernel", "1025 threads"});
  expect_failure("64 KiB dynamic shared memory without opt-in is reported", bug_dynamic_shared_no_optin,
                 {"big_dynamic_shared_kernel", "cudaFuncSetAttribute"});
  expect_failure("static + dynamic shared memory over the opt-in maximum is reported", bug_shared_over_optin,
                 {"static_plus_dynamic_kernel", "exceeds"});
  expect_failure("freed device memory as a kernel argument is reported", bug_freed_argument,
                 {"scale_kernel", "freed by cudaFree"});
#ifndef CUDA_EMU_RACECHECK
  expect_failure("use after cudaFree inside a kernel is caught by AddressSanitizer", bug_freed_in_struct,
                 {"AddressSanitizer", "heap-use-after-free", "read_through_struct_kernel"});
#endif
  expect_failure("host pointer as a kernel argument is reported", bug_host_pointer,
                 {"scale_kernel", "not device memory"});
  g_handle_for_bug = handle;
  expect_failure("host pointer passed to cublasSgemm is reported", bug_cublas_host_pointer_wrapper,
                 {"cublasSgemm", "matrix A", "host memory"});
  expect_failure("host array of pointers passed to cublasSgemmBatched is reported",
                 bug_cublas_host_pointer_array_wrapper, {"cublasSgemmBatched", "pointer array Aarray", "host memory"});
#ifdef CUDA_EMU_REGISTER_TABLE
  expect_failure("launch over the register limit is refused (too many resources)", bug_too_many_registers,
                 {"register_heavy_kernel", "1024 threads", "registers per thread", "too many resources requested"});
  expect_failure("launch over __launch_bounds__ is refused (too many resources)", bug_over_launch_bounds,
                 {"bounded_kernel", "256 threads", "__launch_bounds__ of 128", "too many resources requested"});
#endif
#ifdef CUDA_EMU_RACECHECK
  // the hazard's kind is named by the order the emulator ran the two
  // accesses in: some swap with CUDA_EMU_THREAD_ORDER=reverse
  const char* order = getenv("CUDA_EMU_THREAD_ORDER");
  bool reverse = order && strcmp(order, "reverse") == 0;
  expect_failure("race: block sum broadcast without its barrier (RAW)", bug_race_broadcast,
                 {"race on shared memory", reverse ? "write-after-read hazard (WAR)" : "read-after-write hazard (RAW)",
                  "broadcast_sum_kernel", "'total'", "write by thread (0,0,0)", "read  by thread (", "selftest.cu:"});
  expect_failure("race: tree reduction without its first barrier", bug_race_tree,
                 {"race on shared memory", reverse ? "(RAW)" : "(WAR)", "block_sum_missing_barrier_kernel", "'buf'"});
  expect_failure("race: read neighbour, overwrite own slot without a barrier", bug_race_shift,
                 {"race on shared memory", reverse ? "read-after-write hazard (RAW)" : "write-after-read hazard (WAR)",
                  "shift_left_kernel", "'buf'"});
  expect_failure("race: every lane writes the warp's slot (WAW)", bug_race_warp_slot,
                 {"race on shared memory", "write-after-write hazard (WAW)", "warp_slot_kernel", "'slot'",
                  "a __syncwarp() is enough"});
  expect_failure("race: lanes exchange through shared memory without __syncwarp", bug_race_warp_exchange,
                 {"race on shared memory", "warp_exchange_kernel", "both threads are in one warp"});
  expect_failure("race: half warp reads the other half after __syncwarp(own half)", bug_race_half_warp,
                 {"race on shared memory", "half_warp_exchange_kernel", "'buf'"});
  expect_failure("race: a bf16 read without the barrier, in half of a word", bug_race_bf16,
                 {"race on shared memory", "bf16_halves_kernel", "'halves'", reverse ? "byte offset 508" : "byte offset 2"});
  expect_failure("race: plain read of a shared counter while others atomicAdd", bug_race_atomic,
                 {"race on shared memory", "shared_atomic_count_kernel", "(atomic)", "'count'"});
#endif
}

// ---------------------------------------------------------------------------
// nvcuda::wmma misuse: each in a child process, the harness must refuse it

__global__ void wmma_bad_ldm_kernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::load_matrix_sync(fa, a, 12);  // 24 bytes: not a multiple of 16 bytes
}
__global__ void wmma_bad_float_ldm_kernel(float* c) {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  nvcuda::wmma::fill_fragment(acc, 0.0f);
  nvcuda::wmma::store_matrix_sync(c, acc, 18, nvcuda::wmma::mem_row_major);  // 72 bytes
}
__global__ void wmma_misaligned_kernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::col_major> fb;
  nvcuda::wmma::load_matrix_sync(fb, a + 8, 16);  // 16 bytes past a 256-byte boundary
}
__global__ void wmma_lane_pointer_kernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> fa;
  int lane = threadIdx.x % 32;
  nvcuda::wmma::load_matrix_sync(fa, a + (lane / 16) * 256, 16);  // lanes 16..31 point elsewhere
}
__global__ void wmma_lane_ldm_kernel(const float* c) {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  int lane = threadIdx.x % 32;
  nvcuda::wmma::load_matrix_sync(acc, c, lane < 16 ? 16 : 20, nvcuda::wmma::mem_row_major);
}
__global__ void wmma_divergent_kernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> fa;
  if (threadIdx.x % 32 < 16) {
    nvcuda::wmma::load_matrix_sync(fa, a, 16);
  } else {
    nvcuda::wmma::load_matrix_sync(fa, a, 16);  // same arguments, another call: not converged
  }
}
__global__ void wmma_partial_warp_kernel(const float* c) {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  nvcuda::wmma::load_matrix_sync(acc, c, 16, nvcuda::wmma::mem_row_major);  // warp 1 has 16 lanes
}
__global__ void wmma_exited_lane_kernel(const float* c) {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  if (threadIdx.x == 3) return;
  nvcuda::wmma::load_matrix_sync(acc, c, 16, nvcuda::wmma::mem_row_major);
}
__global__ void wmma_with_syncwarp_kernel(const float* c) {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  if (threadIdx.x < 16) {
    __syncwarp();  // half the warp at another warp intrinsic under the same (full) mask
  } else {
    nvcuda::wmma::load_matrix_sync(acc, c, 16, nvcuda::wmma::mem_row_major);
  }
}

__global__ void wmma_tf32_bad_ldm_kernel(const float* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::load_matrix_sync(fa, a, 10);  // 40 bytes: not a multiple of 16 bytes
}
__global__ void wmma_tf32_misaligned_kernel(const float* b) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::col_major> fb;
  nvcuda::wmma::load_matrix_sync(fb, b + 4, 8);  // 16 bytes past a 256-byte boundary
}

static void* g_wmma_buffer;  // 4 KiB of device memory for the bugs below
static void wmma_bug_buffer() {
  CUDA_CHECK(cudaMalloc(&g_wmma_buffer, 4096));
  CUDA_CHECK(cudaMemset(g_wmma_buffer, 0, 4096));
}
static void bug_wmma_ldm() {
  wmma_bug_buffer();
  wmma_bad_ldm_kernel<<<1, 32>>>((const __nv_bfloat16*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_float_ldm() {
  wmma_bug_buffer();
  wmma_bad_float_ldm_kernel<<<1, 32>>>((float*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_misaligned() {
  wmma_bug_buffer();
  wmma_misaligned_kernel<<<1, 32>>>((const __nv_bfloat16*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_lane_pointer() {
  wmma_bug_buffer();
  wmma_lane_pointer_kernel<<<1, 32>>>((const __nv_bfloat16*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_lane_ldm() {
  wmma_bug_buffer();
  wmma_lane_ldm_kernel<<<1, 32>>>((const float*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_divergent() {
  wmma_bug_buffer();
  wmma_divergent_kernel<<<1, 32>>>((const __nv_bfloat16*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_partial_warp() {
  wmma_bug_buffer();
  wmma_partial_warp_kernel<<<1, 48>>>((const float*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_exited_lane() {
  wmma_bug_buffer();
  wmma_exited_lane_kernel<<<1, 32>>>((const float*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_with_syncwarp() {
  wmma_bug_buffer();
  wmma_with_syncwarp_kernel<<<1, 32>>>((const float*)g_wmma_buffer);
  cudaDeviceSynchronize();
}

static void bug_wmma_tf32_ldm() {
  wmma_bug_buffer();
  wmma_tf32_bad_ldm_kernel<<<1, 32>>>((const float*)g_wmma_buffer);
  cudaDeviceSynchronize();
}
static void bug_wmma_tf32_misaligned() {
  wmma_bug_buffer();
  wmma_tf32_misaligned_kernel<<<1, 32>>>((const float*)g_wmma_buffer);
  cudaDeviceSynchronize();
}

static void test_wmma_refusals() {
  expect_failure("wmma: bf16 ldm not a multiple of 8 is refused", bug_wmma_ldm,
                 {"wmma_bad_ldm_kernel", "load_matrix_sync", "ldm 12", "multiple of 8"});
  expect_failure("wmma: float ldm not a multiple of 4 is refused", bug_wmma_float_ldm,
                 {"wmma_bad_float_ldm_kernel", "store_matrix_sync", "ldm 18", "multiple of 4"});
  expect_failure("wmma: a pointer not 256-bit aligned is refused", bug_wmma_misaligned,
                 {"wmma_misaligned_kernel", "load_matrix_sync", "256-bit"});
  expect_failure("wmma: tf32 ldm not a multiple of 4 is refused", bug_wmma_tf32_ldm,
                 {"wmma_tf32_bad_ldm_kernel", "load_matrix_sync", "ldm 10", "multiple of 4"});
  expect_failure("wmma: a tf32 pointer not 256-bit aligned is refused", bug_wmma_tf32_misaligned,
                 {"wmma_tf32_misaligned_kernel", "load_matrix_sync", "256-bit"});
  expect_failure("wmma: lanes passing different pointers are refused", bug_wmma_lane_pointer,
                 {"wmma_lane_pointer_kernel", "lane 16 passes pointer"});
  expect_failure("wmma: lanes passing different ldm are refused", bug_wmma_lane_ldm,
                 {"wmma_lane_ldm_kernel", "lane 16 passes ldm 20"});
  expect_failure("wmma: lanes at different calls (divergent) are refused", bug_wmma_divergent,
                 {"wmma_divergent_kernel", "lane 16 is at another call", "converged"});
  expect_failure("wmma: a partial warp is refused", bug_wmma_partial_warp,
                 {"wmma_partial_warp_kernel", "0x0000ffff", "all 32 lanes"});
  expect_failure("wmma: a warp with an exited lane is refused", bug_wmma_exited_lane,
                 {"wmma_exited_lane_kernel", "0xfffffff7", "all 32 lanes"});
  expect_failure("wmma: lanes at __syncwarp while others are in wmma are refused", bug_wmma_with_syncwarp,
                 {"wmma_with_syncwarp_kernel", "nvcuda::wmma", "__syncwarp", "same warp intrinsic"});
}

// the wmma tests again in a child under CUDA_EMU_WMMA_MAPPING=scrambled: code
// that does not depend on the element-to-lane mapping must give the same results
static void test_wmma_scrambled() {
  fflush(stdout);
  fflush(stderr);
  char path[] = "/tmp/cuda_emu_selftest_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) {
    check(false, "wmma tests under CUDA_EMU_WMMA_MAPPING=scrambled", "cannot create a temporary file");
    return;
  }
  unlink(path);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    setenv("CUDA_EMU_WMMA_MAPPING", "scrambled", 1);
    execl("/proc/self/exe", "selftest", "--wmma-child", (char*)nullptr);
    fprintf(stderr, "cannot re-run /proc/self/exe\n");
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::string log;
  char buf[4096];
  lseek(fd, 0, SEEK_SET);
  for (ssize_t got; (got = read(fd, buf, sizeof buf)) > 0;) log.append(buf, (size_t)got);
  close(fd);
  int child_checks = 0;
  for (size_t at = 0; at < log.size();) {
    size_t e = log.find('\n', at);
    if (e == std::string::npos) e = log.size();
    std::string line = log.substr(at, e - at);
    if (line.compare(0, 5, "PASS ") == 0 || line.compare(0, 5, "FAIL ") == 0) {
      check(line[0] == 'P', ("(scrambled mapping) " + line.substr(5)).c_str());
      child_checks++;
    }
    at = e + 1;
  }
  bool exited0 = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  check(exited0 && child_checks > 0, "wmma tests under CUDA_EMU_WMMA_MAPPING=scrambled ran",
        "child %s, %d checks", exited0 ? "exited 0" : "failed", child_checks);
}

// ---------------------------------------------------------------------------
// harness speed (not a test): launch overhead and threads per second

__global__ void barrier_heavy_kernel(float* out, const float* x) {
  __shared__ float buf[REDUCE_THREADS];
  buf[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if ((int)threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

static void bench() {
  const int launches = 20000;
  double t0 = wall_ms();
  for (int i = 0; i < launches; i++) empty_kernel<<<1, 1>>>();
  double t1 = wall_ms();
  printf("launch overhead (1 block of 1 thread): %.2f us per launch\n", (t1 - t0) * 1e3 / launches);

  const int n = 1 << 22;
  std::vector<float> x(n, 1.0f);
  float* d_x = to_device(x);
  float* d_y = nullptr;
  CUDA_CHECK(cudaMalloc(&d_y, n * sizeof(float)));
  t0 = wall_ms();
  scale_kernel<<<n / 256, 256>>>(d_y, d_x, 2.0f, n);
  t1 = wall_ms();
  printf("elementwise kernel, no barriers: %.1f M threads/s (%d threads in %.1f ms)\n", n / (t1 - t0) / 1e3, n,
         t1 - t0);
  const int nb = 1 << 20;
  t0 = wall_ms();
  barrier_heavy_kernel<<<nb / REDUCE_THREADS, REDUCE_THREADS>>>(d_y, d_x);
  t1 = wall_ms();
  printf("block reduction, 9 __syncthreads per thread: %.2f M threads/s (%d threads in %.1f ms)\n",
         nb / (t1 - t0) / 1e3, nb, t1 - t0);
  t0 = wall_ms();
  warp_sum_xor_kernel<<<nb / 256, 256>>>(d_y, d_x);
  t1 = wall_ms();
  printf("warp reduction, 5 __shfl_xor_sync per thread: %.2f M threads/s (%d threads in %.1f ms)\n",
         nb / (t1 - t0) / 1e3, nb, t1 - t0);
  CUDA_CHECK(cudaFree(d_x));
  CUDA_CHECK(cudaFree(d_y));
}
#endif  // CUDA_EMU

// cusolverDnDgeqrf + cusolverDnDorgqr, as documented: a (9, 5) column-major A
// (lda 11) with a zero column and a repeated one (rank 3) gives Q (9, 5) with
// orthonormal columns (to 1e-14) and Q R = A (R from geqrf's upper triangle, to
// 1e-13 of ||A||), tau in [1, 2] or 0 (LAPACK's dlarfg), rows past m untouched
// (lda > m), devInfo 0; an lda below m is parameter 5 (-5, INVALID_VALUE)
static void test_cusolver_qr(void) {
  const int m = 9, n = 5, lda = 11;
  std::vector<double> a((size_t)lda * n, 7.0);
  unsigned x = 12345;
  for (int j = 0; j < n; j++) {
    for (int i = 0; i < m; i++) {
      x = x * 1664525u + 1013904223u;
      a[(size_t)j * lda + i] = j == 2 ? 0.0 : (double)(x >> 8) / 16777216.0 - 0.5;
    }
  }
  for (int i = 0; i < m; i++) a[(size_t)4 * lda + i] = a[(size_t)1 * lda + i];  // column 4 = column 1
  cusolverDnHandle_t h;
  bool ok = cusolverDnCreate(&h) == CUSOLVER_STATUS_SUCCESS;
  int lq = 0, lo = 0;
  ok = ok && cusolverDnDgeqrf_bufferSize(h, m, n, NULL, lda, &lq) == CUSOLVER_STATUS_SUCCESS;
  ok = ok && cusolverDnDorgqr_bufferSize(h, m, n, n, NULL, lda, NULL, &lo) == CUSOLVER_STATUS_SUCCESS;
  int lwork = std::max(lq, lo);
  double *dA, *dtau, *dwork;
  int* dinfo;
  cudaMalloc((void**)&dA, a.size() * sizeof(double));
  cudaMalloc((void**)&dtau, n * sizeof(double));
  cudaMalloc((void**)&dwork, (size_t)lwork * sizeof(double));
  cudaMalloc((void**)&dinfo, sizeof(int));
  cudaMemcpy(dA, a.data(), a.size() * sizeof(double), cudaMemcpyHostToDevice);
  int info1 = -99, info2 = -99;
  ok = ok && cusolverDnDgeqrf(h, m, n, dA, lda, dtau, dwork, lwork, dinfo) == CUSOLVER_STATUS_SUCCESS;
  cudaMemcpy(&info1, dinfo, sizeof(int), cudaMemcpyDeviceToHost);
  std::vector<double> r((size_t)lda * n), tau(n), q((size_t)lda * n);
  cudaMemcpy(r.data(), dA, r.size() * sizeof(double), cudaMemcpyDeviceToHost);
  cudaMemcpy(tau.data(), dtau, n * sizeof(double), cudaMemcpyDeviceToHost);
  ok = ok && cusolverDnDorgqr(h, m, n, n, dA, lda, dtau, dwork, lwork, dinfo) == CUSOLVER_STATUS_SUCCESS;
  cudaMemcpy(&info2, dinfo, sizeof(int), cudaMemcpyDeviceToHost);
  cudaMemcpy(q.data(), dA, q.size() * sizeof(double), cudaMemcpyDeviceToHost);
  double orth = 0.0, recon = 0.0, norm = 0.0;
  bool tau_ok = true, pad_ok = true;
  for (int j = 0; j < n; j++) {
    tau_ok = tau_ok && (tau[j] == 0.0 || (tau[j] >= 1.0 && tau[j] <= 2.0));
    for (int i = m; i < lda; i++) pad_ok = pad_ok && q[(size_t)j * lda + i] == 7.0;
    for (int k = 0; k < n; k++) {
      double d = 0.0;
      for (int i = 0; i < m; i++) d += q[(size_t)j * lda + i] * q[(size_t)k * lda + i];
      orth = std::max(orth, fabs(d - (j == k ? 1.0 : 0.0)));
    }
    for (int i = 0; i < m; i++) {
      double s = 0.0;
      for (int k = 0; k <= j; k++) s += q[(size_t)k * lda + i] * r[(size_t)j * lda + k];
      recon = std::max(recon, fabs(s - a[(size_t)j * lda + i]));
      norm = std::max(norm, fabs(a[(size_t)j * lda + i]));
    }
  }
  check(ok && info1 == 0 && info2 == 0 && orth <= 1e-14 && recon <= 1e-13 * norm && tau_ok && pad_ok,
        "cusolverDnDgeqrf + cusolverDnDorgqr: Q R = A, Q^T Q = I on a rank-3 (9, 5) matrix",
        "status ok %d, devInfo %d %d, |Q^T Q - I| %.1e, |Q R - A| %.1e, tau ok %d, padding kept %d", ok, info1,
        info2, orth, recon, tau_ok, pad_ok);
  int bad_info = 0;
  cusolverStatus_t st = cusolverDnDgeqrf(h, m, n, dA, m - 1, dtau, dwork, lwork, dinfo);
  cudaMemcpy(&bad_info, dinfo, sizeof(int), cudaMemcpyDeviceToHost);
  check(st == CUSOLVER_STATUS_INVALID_VALUE && bad_info == -5, "cusolverDnDgeqrf: lda < m is parameter 5",
        "status %d, devInfo %d", (int)st, bad_info);
  cudaFree(dA); cudaFree(dtau); cudaFree(dwork); cudaFree(dinfo);
  cusolverDnDestroy(h);
}

// cublasDgemmStridedBatched, as documented (column-major, C_k = alpha op(A_k)
// op(B_k) + beta C_k, operand k at base + k stride): 3 batches of
// C (5, 4) = 0.5 A^T (5 x 6, stored 6 x 5 with lda 7) B (6, 4) (ldb 6) + 2 C
// (ldc 6), strides with gaps, against a loop in double: products of small
// integers and halves, exact; the padding row of C untouched; ldc < m is
// parameter 14 (CUBLAS_STATUS_INVALID_VALUE)
static void test_cublas_dgemm_batched(cublasHandle_t handle) {
  const int m = 5, n = 4, k = 6, lda = 7, ldb = 6, ldc = 6, batch = 3;
  const long long sa = (long long)lda * m + 3, sb = (long long)ldb * n + 1, sc = (long long)ldc * n + 2;
  std::vector<double> a((size_t)(sa * batch)), b((size_t)(sb * batch)), c((size_t)(sc * batch)), want;
  for (size_t i = 0; i < a.size(); i++) a[i] = (double)((int)(i * 7 % 11) - 5);
  for (size_t i = 0; i < b.size(); i++) b[i] = (double)((int)(i * 5 % 9) - 4) * 0.5;
  for (size_t i = 0; i < c.size(); i++) c[i] = (double)((int)(i % 5) - 2);
  want = c;
  for (int t = 0; t < batch; t++) {
    for (int j = 0; j < n; j++) {
      for (int i = 0; i < m; i++) {
        double s = 0.0;
        for (int q = 0; q < k; q++) s += a[(size_t)(t * sa + q + i * lda)] * b[(size_t)(t * sb + q + j * ldb)];
        want[(size_t)(t * sc + i + j * ldc)] = 0.5 * s + 2.0 * c[(size_t)(t * sc + i + j * ldc)];
      }
    }
  }
  double *dA, *dB, *dC;
  CUDA_CHECK(cudaMalloc((void**)&dA, a.size() * sizeof(double)));
  CUDA_CHECK(cudaMalloc((void**)&dB, b.size() * sizeof(double)));
  CUDA_CHECK(cudaMalloc((void**)&dC, c.size() * sizeof(double)));
  CUDA_CHECK(cudaMemcpy(dA, a.data(), a.size() * sizeof(double), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dB, b.data(), b.size() * sizeof(double), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dC, c.data(), c.size() * sizeof(double), cudaMemcpyHostToDevice));
  const double alpha = 0.5, beta = 2.0;
  cublasStatus_t st = cublasDgemmStridedBatched(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, lda, sa, dB,
                                                ldb, sb, &beta, dC, ldc, sc, batch);
  std::vector<double> got(c.size());
  CUDA_CHECK(cudaMemcpy(got.data(), dC, got.size() * sizeof(double), cudaMemcpyDeviceToHost));
  size_t wrong = 0;
  for (size_t i = 0; i < got.size(); i++) wrong += got[i] != want[i];
  check(st == CUBLAS_STATUS_SUCCESS && wrong == 0, "cublasDgemmStridedBatched op(A)=T, 3 batches with gaps",
        "status %d, %zu of %zu doubles differ from the loop (padding included)", (int)st, wrong, got.size());
  st = cublasDgemmStridedBatched(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, lda, sa, dB, ldb, sb, &beta,
                                 dC, m - 1, sc, batch);
  check(st == CUBLAS_STATUS_INVALID_VALUE, "cublasDgemmStridedBatched: ldc < m is refused", "status %d", (int)st);
  CUDA_CHECK(cudaFree(dA));
  CUDA_CHECK(cudaFree(dB));
  CUDA_CHECK(cudaFree(dC));
}

// cusolverDnXsyevBatched, as documented: 3 symmetric 4 x 4 matrices packed one
// after another with lda 5 (matrix k's (i, j) at i + 5 j + 20 k), only the
// lower triangle filled (the upper holds garbage, which must not be read):
// the eigenvalues ascending in W[j + 4 k] and unit eigenvectors in the
// columns, A_k V_k = V_k diag(W_k) and V_k^T V_k = I to 1e-13; matrix 1 is
// diag(4, 1, 3, 2) (eigenvalues 1 2 3 4 exactly, to 1e-14), matrix 2 has a NaN
// and reports info[2] > 0 while info[0] = info[1] = 0; under the harness, a
// too small device workspace is parameter 13 (info[0] = -13, INVALID_VALUE)
static void test_cusolver_syev_batched(void) {
  const int n = 4, lda = 5, batch = 3;
  static const double diag1[4] = {4.0, 1.0, 3.0, 2.0};
  std::vector<double> a((size_t)lda * n * batch, 1e30), full((size_t)n * n * batch);
  unsigned x = 777;
  for (int t = 0; t < batch; t++) {
    for (int j = 0; j < n; j++) {
      for (int i = j; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        double v = (double)(x >> 8) / 16777216.0 - 0.5;
        if (t == 1) v = i == j ? diag1[i] : 0.0;
        a[(size_t)(i + j * lda + lda * n * t)] = v;
        full[(size_t)(i + j * n + n * n * t)] = v;
        full[(size_t)(j + i * n + n * n * t)] = v;
      }
    }
  }
  a[(size_t)(3 + 1 * lda + lda * n * 2)] = NAN;
  cusolverDnHandle_t h;
  cusolverDnParams_t params;
  bool ok = cusolverDnCreate(&h) == CUSOLVER_STATUS_SUCCESS && cusolverDnCreateParams(&params) == CUSOLVER_STATUS_SUCCESS;
  size_t dev_bytes = 0, host_bytes = 0;
  ok = ok && cusolverDnXsyevBatched_bufferSize(h, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                               CUDA_R_64F, NULL, lda, CUDA_R_64F, NULL, CUDA_R_64F, &dev_bytes,
                                               &host_bytes, batch) == CUSOLVER_STATUS_SUCCESS;
  double *dA, *dW;
  void* dwork;
  int* dinfo;
  CUDA_CHECK(cudaMalloc((void**)&dA, a.size() * sizeof(double)));
  CUDA_CHECK(cudaMalloc((void**)&dW, (size_t)n * batch * sizeof(double)));
  CUDA_CHECK(cudaMalloc(&dwork, dev_bytes > 0 ? dev_bytes : 1));
  CUDA_CHECK(cudaMalloc((void**)&dinfo, batch * sizeof(int)));
  std::vector<char> hwork(host_bytes > 0 ? host_bytes : 1);
  CUDA_CHECK(cudaMemcpy(dA, a.data(), a.size() * sizeof(double), cudaMemcpyHostToDevice));
  ok = ok && cusolverDnXsyevBatched(h, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, dA,
                                    lda, CUDA_R_64F, dW, CUDA_R_64F, dwork, dev_bytes, hwork.data(), host_bytes, dinfo,
                                    batch) == CUSOLVER_STATUS_SUCCESS;
  std::vector<double> v(a.size()), w((size_t)n * batch);
  int info[3] = {-9, -9, -9};
  CUDA_CHECK(cudaMemcpy(v.data(), dA, v.size() * sizeof(double), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(w.data(), dW, w.size() * sizeof(double), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(info, dinfo, sizeof info, cudaMemcpyDeviceToHost));
  double resid = 0.0, orth = 0.0, diag_err = 0.0;
  bool ascending = true;
  for (int t = 0; t < 2; t++) {
    for (int j = 0; j < n; j++) {
      if (j > 0) ascending = ascending && w[(size_t)(j - 1 + n * t)] <= w[(size_t)(j + n * t)];
      for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int q = 0; q < n; q++) s += full[(size_t)(i + q * n + n * n * t)] * v[(size_t)(q + j * lda + lda * n * t)];
        resid = std::max(resid, fabs(s - w[(size_t)(j + n * t)] * v[(size_t)(i + j * lda + lda * n * t)]));
      }
      for (int k2 = 0; k2 < n; k2++) {
        double d = 0.0;
        for (int i = 0; i < n; i++) d += v[(size_t)(i + j * lda + lda * n * t)] * v[(size_t)(i + k2 * lda + lda * n * t)];
        orth = std::max(orth, fabs(d - (j == k2 ? 1.0 : 0.0)));
      }
    }
  }
  for (int j = 0; j < n; j++) diag_err = std::max(diag_err, fabs(w[(size_t)(j + n)] - (j + 1)));
  check(ok && info[0] == 0 && info[1] == 0 && info[2] > 0 && ascending && resid <= 1e-13 && orth <= 1e-13 &&
            diag_err <= 1e-14,
        "cusolverDnXsyevBatched: 3 packed 4x4 (lda 5, lower), eigenpairs ascending, a NaN matrix's info alone",
        "status ok %d, info %d %d %d, ascending %d, |A V - V W| %.1e, |V^T V - I| %.1e, diag(4,1,3,2) %.1e", ok,
        info[0], info[1], info[2], ascending, resid, orth, diag_err);
#ifdef CUDA_EMU
  // (the harness's refusal; NVIDIA documents the sizes, not whether a smaller one is refused)
  cusolverStatus_t st = cusolverDnXsyevBatched(h, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                               CUDA_R_64F, dA, lda, CUDA_R_64F, dW, CUDA_R_64F, dwork, 0, hwork.data(),
                                               host_bytes, dinfo, batch);
  int bad = 0;
  CUDA_CHECK(cudaMemcpy(&bad, dinfo, sizeof(int), cudaMemcpyDeviceToHost));
  check(st == CUSOLVER_STATUS_INVALID_VALUE && bad == -13,
        "cusolverDnXsyevBatched: a device workspace below bufferSize's is parameter 13", "status %d, info[0] %d",
        (int)st, bad);
#endif
  CUDA_CHECK(cudaFree(dA));
  CUDA_CHECK(cudaFree(dW));
  CUDA_CHECK(cudaFree(dwork));
  CUDA_CHECK(cudaFree(dinfo));
  cusolverDnDestroyParams(params);
  cusolverDnDestroy(h);
}

int main(int argc, char** argv) {
#ifdef CUDA_EMU
  if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
    bench();
    return 0;
  }
  if (argc > 1 && strcmp(argv[1], "--device-memory-child") == 0) return device_memory_child();
  if (argc > 1 && strcmp(argv[1], "--wmma-child") == 0) {
    test_wmma();
    test_wmma_tf32();
    return g_failed ? 1 : 0;
  }
#else
  (void)argc;
  (void)argv;
#endif
  test_block_sum();
  test_warp_shuffles();
  test_atomics();
  test_tiled_matmul();
  test_3d_indexing();
  test_dynamic_shared();
  test_rewrite_forms();
  test_intrinsics();
  cublasHandle_t handle;
  CUBLAS_CHECK(cublasCreate(&handle));
  test_cublas(handle);
  test_cublas_reduced_precision(handle);
  cublasLtHandle_t lt;
  CUBLAS_CHECK(cublasLtCreate(&lt));
  test_cublaslt(lt);
#ifdef CUDA_EMU
  test_cublaslt_alignment(lt);
#endif
  test_events_and_device();
  test_cusolver_qr();
  test_cublas_dgemm_batched(handle);
  test_cusolver_syev_batched();
  test_wmma();
  test_wmma_tf32();
  test_race_free_kernels();
  test_register_limit();
#ifdef CUDA_EMU
  test_wmma_scrambled();
  test_wmma_refusals();
  test_runtime_errors();
  test_device_memory_accounting();
  test_api_counts();
  test_device_memory_limit();
  test_planted_bugs(handle);
#endif
  CUBLAS_CHECK(cublasLtDestroy(lt));
  CUBLAS_CHECK(cublasDestroy(handle));
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
