// nccl_selftest.cu: self-test of the harness's NCCL emulation (cuda_emu_nccl.cpp).
//
// Each scenario runs its ranks as separate processes (fork), as real NCCL
// ranks are; the parent makes the ncclUniqueId, waits for the ranks with a
// deadline (a rank still running then counts as hung and is killed), and
// adds up the checks the ranks made. Results are compared with a serial
// reference bit for bit: the emulation reduces in rank order in the buffer
// type's arithmetic (bf16: summed in float, rounded once).
//
//   make dev/cuda_emu/nccl_selftest_emu && ./dev/cuda_emu/nccl_selftest_emu
//
// CUDA_EMU_NCCL_SELFTEST_VERBOSE=1 shows each rank's stderr (the emulation's
// messages for the planted failures); it is shown anyway for a failed scenario.
// Prints one PASS/FAIL line per scenario and a last line "N passed, N failed"
// (N counts the single checks); exits non-zero on any failure.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <nccl.h>

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <string>
#include <type_traits>
#include <vector>

#define MAX_PROCS 8

// the checks' counts, shared between the parent and the rank processes
struct check_counts {
  int passed[MAX_PROCS], failed[MAX_PROCS];
};
static check_counts* g_counts;
static int g_rank = -1;  // the rank this process plays; -1 in the parent
static const char* g_scenario = "";
static char g_stderr_path[MAX_PROCS][64];
static int g_total_passed = 0, g_total_failed = 0;

static double now_seconds() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
static void sleep_seconds(double s) {
  timespec t = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
  nanosleep(&t, nullptr);
}

// a check in a rank process: only failures are printed (the parent prints a line per scenario)
static void check(bool ok, const char* fmt, ...) {
  if (ok) {
    g_counts->passed[g_rank]++;
    return;
  }
  g_counts->failed[g_rank]++;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  printf("FAIL %s, rank %d: %s\n", g_scenario, g_rank, buf);
  fflush(stdout);
}

// what this rank's stderr (a file, see run_ranks) holds so far
static std::string stderr_so_far() {
  fflush(stderr);
  std::string s;
  FILE* f = fopen(g_stderr_path[g_rank], "r");
  if (!f) return s;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  fclose(f);
  return s;
}
static bool stderr_has(const char* text) { return stderr_so_far().find(text) != std::string::npos; }

#define CHECK_NCCL(call) check((call) == ncclSuccess, "%s failed: %s", #call, ncclGetLastError(nullptr))

static ncclComm_t init_comm(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRank(&comm, nranks, id, rank);
  check(r == ncclSuccess && comm, "ncclCommInitRank returned %d: %s", (int)r, ncclGetLastError(nullptr));
  return comm;
}

// ---------------------------------------------------------------------------
// the serial reference: element i is x_0 op x_1 op ... op x_{n-1}, left to right,
// in the type's arithmetic (bf16: in float, rounded once), avg divides the sum once

template <class T> struct traits;
template <> struct traits<float> {
  using acc = float;
  static constexpr ncclDataType_t type = ncclFloat32;
  static acc widen(float x) { return x; }
  static float narrow(acc a) { return a; }
};
template <> struct traits<double> {
  using acc = double;
  static constexpr ncclDataType_t type = ncclFloat64;
  static acc widen(double x) { return x; }
  static double narrow(acc a) { return a; }
};
template <> struct traits<__nv_bfloat16> {
  using acc = float;
  static constexpr ncclDataType_t type = ncclBfloat16;
  static acc widen(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __nv_bfloat16 narrow(acc a) { return __float2bfloat16(a); }
};
template <class I, ncclDataType_t TYPE> struct int_traits {
  using acc = I;
  static constexpr ncclDataType_t type = TYPE;
  static acc widen(I x) { return x; }
  static I narrow(acc a) { return a; }
};
template <> struct traits<int32_t> : int_traits<int32_t, ncclInt32> {};
template <> struct traits<int64_t> : int_traits<int64_t, ncclInt64> {};
template <> struct traits<uint8_t> : int_traits<uint8_t, ncclUint8> {};
template <> struct traits<int8_t> : int_traits<int8_t, ncclInt8> {};

template <class A>
static A combine_ref(A a, A b, ncclRedOp_t op) {
  if constexpr (std::is_integral<A>::value) {
    using U = typename std::make_unsigned<A>::type;  // sums and products wrap around
    if (op == ncclSum || op == ncclAvg) return (A)(U)((U)a + (U)b);
    if (op == ncclProd) return (A)(U)((U)a * (U)b);
  } else {
    if (op == ncclSum || op == ncclAvg) return a + b;
    if (op == ncclProd) return a * b;
  }
  if (op == ncclMax) return b > a ? b : a;
  return b < a ? b : a;
}

template <class T>
static T reduce_ref(const std::vector<std::vector<T>>& in, size_t i, ncclRedOp_t op) {
  using A = typename traits<T>::acc;
  A a = traits<T>::widen(in[0][i]);
  for (size_t p = 1; p < in.size(); p++) a = combine_ref<A>(a, traits<T>::widen(in[p][i]), op);
  if (op == ncclAvg) a = (A)(a / (A)in.size());
  return traits<T>::narrow(a);
}

// rank p's input element i: mixed signs and magnitudes, so that float sums
// depend on the order; in [0.5, 1.5) for products, which would overflow otherwise
template <class T>
static T gen(int p, size_t i, ncclRedOp_t op, int salt = 0) {
  uint64_t h = (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull + (uint64_t)(p + 1) * 0xBF58476D1CE4E5B9ull +
               (uint64_t)salt * 0x94D049BB133111EBull;
  h ^= h >> 31;
  if constexpr (std::is_integral<T>::value) {
    return (T)h;
  } else {
    double u = (double)(h >> 11) / 9007199254740992.0;  // [0, 1)
    double v = op == ncclProd ? 0.5 + u : (u - 0.5) * pow(10.0, (double)((h >> 3) % 7) - 3.0);
    if constexpr (std::is_same<T, __nv_bfloat16>::value) return __float2bfloat16((float)v);
    else return (T)v;
  }
}

template <class T>
static T* device_copy(const std::vector<T>& h) {
  T* d = nullptr;
  cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T));
  if (!h.empty()) cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
template <class T>
static std::vector<T> host_copy(const T* d, size_t n) {
  std::vector<T> h(n);
  if (n) cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}
template <class T>
static bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}
// every rank's inputs (each rank can make all of them: the reference needs them)
template <class T>
static std::vector<std::vector<T>> all_inputs(int nranks, size_t n, ncclRedOp_t op, int salt) {
  std::vector<std::vector<T>> in(nranks, std::vector<T>(n));
  for (int p = 0; p < nranks; p++)
    for (size_t i = 0; i < n; i++) in[p][i] = gen<T>(p, i, op, salt);
  return in;
}

static const char* op_names[] = {"sum", "prod", "max", "min", "avg"};

// ---------------------------------------------------------------------------
// the scenarios (each runs in every rank process)

static void scenario_basics(int rank, int nranks, const ncclUniqueId& id) {
  int v = 0;
  CHECK_NCCL(ncclGetVersion(&v));
  check(v == NCCL_VERSION_CODE, "ncclGetVersion: %d, nccl.h says %d", v, NCCL_VERSION_CODE);
  ncclUniqueId bad;
  memset(&bad, 0x41, sizeof bad);
  ncclComm_t c0 = nullptr;
  check(ncclCommInitRank(&c0, nranks, bad, rank) == ncclInvalidArgument && !c0,
        "an id not from ncclGetUniqueId is refused at once");
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  int n = -1, r = -1, dev = -1, cdev = -2;
  CHECK_NCCL(ncclCommCount(comm, &n));
  CHECK_NCCL(ncclCommUserRank(comm, &r));
  CHECK_NCCL(ncclCommCuDevice(comm, &dev));
  cudaGetDevice(&cdev);
  check(n == nranks && r == rank && dev == cdev, "count %d rank %d device %d (want %d %d %d)", n, r, dev, nranks, rank,
        cdev);
  ncclResult_t ae = ncclInProgress;
  CHECK_NCCL(ncclCommGetAsyncError(comm, &ae));
  check(ae == ncclSuccess, "async error %d on a fresh communicator", (int)ae);
  check(strstr(ncclGetErrorString(ncclRemoteError), "remote") != nullptr, "ncclGetErrorString(ncclRemoteError)");
  CHECK_NCCL(ncclCommFinalize(comm));
  CHECK_NCCL(ncclCommDestroy(comm));
}

// AllReduce of every type with every op, out of place and in place
template <class T>
static void allreduce_all_ops(ncclComm_t comm, int rank, int nranks) {
  const size_t n = 37;
  for (int o = 0; o < 5; o++) {
    ncclRedOp_t op = (ncclRedOp_t)o;
    for (int inplace = 0; inplace < 2; inplace++) {
      std::vector<std::vector<T>> in = all_inputs<T>(nranks, n, op, o * 2 + inplace);
      std::vector<T> ref(n);
      for (size_t i = 0; i < n; i++) ref[i] = reduce_ref(in, i, op);
      T* send = device_copy(in[rank]);
      T* recv = inplace ? send : device_copy(std::vector<T>(n));
      ncclResult_t r = ncclAllReduce(send, recv, n, traits<T>::type, op, comm, 0);
      check(r == ncclSuccess, "ncclAllReduce type %d %s: %d", (int)traits<T>::type, op_names[o], (int)r);
      check(same_bits(host_copy(recv, n), ref), "ncclAllReduce type %d %s%s: not the rank-order result",
            (int)traits<T>::type, op_names[o], inplace ? " in place" : "");
      cudaFree(send);
      if (!inplace) cudaFree(recv);
    }
  }
}

static void scenario_allreduce(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  allreduce_all_ops<float>(comm, rank, nranks);
  allreduce_all_ops<__nv_bfloat16>(comm, rank, nranks);
  allreduce_all_ops<double>(comm, rank, nranks);
  allreduce_all_ops<int32_t>(comm, rank, nranks);
  allreduce_all_ops<int64_t>(comm, rank, nranks);
  allreduce_all_ops<uint8_t>(comm, rank, nranks);
  allreduce_all_ops<int8_t>(comm, rank, nranks);
  CHECK_NCCL(ncclCommDestroy(comm));
}

// sums whose value depends on the order: ranks 0, 1, 2 hold a, -a, c with c
// below a's half-ulp: (a + -a) + c = c, but (c + -a) + a = 0. The ranks arrive
// in reverse order (rank 2 first), so a reduction in arrival order shows.
template <class T>
static void order_case(ncclComm_t comm, int rank, const char* name, T a, T c) {
  const size_t n = 5;
  std::vector<std::vector<T>> in(3, std::vector<T>(n));
  for (size_t i = 0; i < n; i++) {
    T scale = (T)(1 + i);
    in[0][i] = a * scale;
    in[1][i] = -a * scale;
    in[2][i] = c * scale;
  }
  bool meaningful = true;
  std::vector<T> ref(n);
  for (size_t i = 0; i < n; i++) {
    ref[i] = (in[0][i] + in[1][i]) + in[2][i];
    T reversed = (in[2][i] + in[1][i]) + in[0][i];
    T other = (in[0][i] + in[2][i]) + in[1][i];
    meaningful = meaningful && reversed != ref[i] && other != ref[i];
  }
  check(meaningful, "%s: the test values do not depend on the order", name);
  T* send = device_copy(in[rank]);
  T* recv = device_copy(std::vector<T>(n));
  sleep_seconds(0.03 * (2 - rank));  // rank 2 arrives first, rank 0 last
  check(ncclAllReduce(send, recv, n, traits<T>::type, ncclSum, comm, 0) == ncclSuccess, "%s: ncclAllReduce", name);
  std::vector<T> got = host_copy(recv, n);
  check(same_bits(got, ref), "%s: got %g, want the rank-order sum %g (reversed order: %g)", name, (double)got[0],
        (double)ref[0], (double)((in[2][0] + in[1][0]) + in[0][0]));
  cudaFree(send);
  cudaFree(recv);
}

static void scenario_rank_order(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  order_case<float>(comm, rank, "float32", 1e8f, 3.0f);
  order_case<double>(comm, rank, "float64", 1e17, 3.0);
  // bf16 1 + 2^-8 + 2^-8: in float then rounded once 1 + 2^-7; rounding at
  // every step would give 1 (1 + 2^-8 is a tie, to even: 1)
  std::vector<__nv_bfloat16> mine(4, __float2bfloat16(rank == 0 ? 1.0f : ldexpf(1.0f, -8)));
  __nv_bfloat16* buf = device_copy(mine);
  check(ncclAllReduce(buf, buf, 4, ncclBfloat16, ncclSum, comm, 0) == ncclSuccess, "bf16 ncclAllReduce");
  float got = __bfloat162float(host_copy(buf, 4)[0]);
  check(got == 1.0f + ldexpf(1.0f, -7), "bf16 sum 1 + 2^-8 + 2^-8 = %.9g, want 1 + 2^-7 (rounded once)", got);
  cudaFree(buf);
  CHECK_NCCL(ncclCommDestroy(comm));
}

static void scenario_collectives(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  const size_t n = 29;
  // ReduceScatter: rank r gets block r of the reduction; in place: recvbuff = sendbuff + r * recvcount
  for (int inplace = 0; inplace < 2; inplace++) {
    auto in = all_inputs<float>(nranks, n * nranks, ncclSum, 10 + inplace);
    float* send = device_copy(in[rank]);
    float* recv = inplace ? send + rank * n : device_copy(std::vector<float>(n));
    check(ncclReduceScatter(send, recv, n, ncclFloat32, ncclSum, comm, 0) == ncclSuccess, "ncclReduceScatter");
    std::vector<float> ref(n);
    for (size_t i = 0; i < n; i++) ref[i] = reduce_ref(in, rank * n + i, ncclSum);
    check(same_bits(host_copy(recv, n), ref), "ncclReduceScatter float32 sum%s", inplace ? " in place" : "");
    cudaFree(send);
    if (!inplace) cudaFree(recv);
  }
  {
    auto in = all_inputs<__nv_bfloat16>(nranks, n * nranks, ncclAvg, 12);
    __nv_bfloat16* send = device_copy(in[rank]);
    __nv_bfloat16* recv = device_copy(std::vector<__nv_bfloat16>(n));
    check(ncclReduceScatter(send, recv, n, ncclBfloat16, ncclAvg, comm, 0) == ncclSuccess, "ncclReduceScatter bf16");
    std::vector<__nv_bfloat16> ref(n);
    for (size_t i = 0; i < n; i++) ref[i] = reduce_ref(in, rank * n + i, ncclAvg);
    check(same_bits(host_copy(recv, n), ref), "ncclReduceScatter bf16 avg");
    cudaFree(send);
    cudaFree(recv);
  }
  // AllGather: rank p's data at offset p * sendcount; in place: sendbuff = recvbuff + r * sendcount
  for (int inplace = 0; inplace < 2; inplace++) {
    auto in = all_inputs<int32_t>(nranks, n, ncclSum, 20 + inplace);
    std::vector<int32_t> ref;
    for (int p = 0; p < nranks; p++) ref.insert(ref.end(), in[p].begin(), in[p].end());
    std::vector<int32_t> start(n * nranks, -7);
    if (inplace) std::copy(in[rank].begin(), in[rank].end(), start.begin() + rank * n);
    int32_t* recv = device_copy(start);
    int32_t* send = inplace ? recv + rank * n : device_copy(in[rank]);
    check(ncclAllGather(send, recv, n, ncclInt32, comm, 0) == ncclSuccess, "ncclAllGather");
    check(same_bits(host_copy(recv, n * nranks), ref), "ncclAllGather int32%s", inplace ? " in place" : "");
    cudaFree(recv);
    if (!inplace) cudaFree(send);
  }
  // Broadcast from the last rank: out of place, in place, and ncclBcast
  const int root = nranks - 1;
  for (int form = 0; form < 3; form++) {
    auto in = all_inputs<double>(nranks, n, ncclSum, 30 + form);
    double* send = device_copy(in[rank]);
    double* recv = form == 0 ? device_copy(std::vector<double>(n)) : send;
    ncclResult_t r = form == 2 ? ncclBcast(send, n, ncclFloat64, root, comm, 0)
                               : ncclBroadcast(send, recv, n, ncclFloat64, root, comm, 0);
    check(r == ncclSuccess, "broadcast form %d", form);
    check(same_bits(host_copy(recv, n), in[root]), "%s from rank %d",
          form == 0 ? "ncclBroadcast" : form == 1 ? "ncclBroadcast in place" : "ncclBcast", root);
    cudaFree(send);
    if (form == 0) cudaFree(recv);
  }
  // Reduce to rank 1 (mod nranks): only the root's recvbuff is written, the others pass NULL
  const int rroot = 1 % nranks;
  for (int inplace = 0; inplace < 2; inplace++) {
    ncclRedOp_t op = inplace ? ncclMax : ncclSum;
    auto in = all_inputs<int64_t>(nranks, n, op, 40 + inplace);
    int64_t* send = device_copy(in[rank]);
    int64_t* recv = rank != rroot ? nullptr : inplace ? send : device_copy(std::vector<int64_t>(n));
    check(ncclReduce(send, recv, n, ncclInt64, op, rroot, comm, 0) == ncclSuccess, "ncclReduce");
    if (rank == rroot) {
      std::vector<int64_t> ref(n);
      for (size_t i = 0; i < n; i++) ref[i] = reduce_ref(in, i, op);
      check(same_bits(host_copy(recv, n), ref), "ncclReduce int64 %s%s at the root", op_names[op],
            inplace ? " in place" : "");
      if (!inplace) cudaFree(recv);
    } else {
      check(same_bits(host_copy(send, n), in[rank]), "ncclReduce: a non-root's sendbuff is not written");
    }
    cudaFree(send);
  }
  CHECK_NCCL(ncclCommDestroy(comm));
}

// several collectives in a row (a ZeRO-1 step: ReduceScatter the gradients,
// update this rank's shard, AllGather the parameters), a group, nested groups,
// and counts larger than a slot (a collective in several steps)
static void scenario_sequence(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  const size_t shard = 50, n = shard * nranks;
  std::vector<float> params(n);
  for (size_t i = 0; i < n; i++) params[i] = 0.01f * (float)i;
  float* d_params = device_copy(params);
  float* d_shard = device_copy(std::vector<float>(shard));
  for (int it = 0; it < 4; it++) {
    auto grads = all_inputs<float>(nranks, n, ncclAvg, 100 + it);
    float* d_grads = device_copy(grads[rank]);
    check(ncclReduceScatter(d_grads, d_shard, shard, ncclFloat32, ncclAvg, comm, 0) == ncclSuccess,
          "step %d: ncclReduceScatter", it);
    std::vector<float> g = host_copy(d_shard, shard);
    for (size_t i = 0; i < shard; i++) g[i] = params[rank * shard + i] - 0.1f * g[i];
    cudaMemcpy(d_params + rank * shard, g.data(), shard * sizeof(float), cudaMemcpyHostToDevice);
    check(ncclAllGather(d_params + rank * shard, d_params, shard, ncclFloat32, comm, 0) == ncclSuccess,
          "step %d: ncclAllGather", it);
    for (size_t i = 0; i < n; i++) params[i] = params[i] - 0.1f * reduce_ref(grads, i, ncclAvg);
    check(same_bits(host_copy(d_params, n), params), "step %d: parameters after ReduceScatter + AllGather", it);
    cudaFree(d_grads);
  }
  cudaFree(d_params);
  cudaFree(d_shard);

  // a group (nested once): the calls run at the outer ncclGroupEnd, in order
  auto a_in = all_inputs<float>(nranks, 40, ncclSum, 200);
  auto b_in = all_inputs<__nv_bfloat16>(nranks, 8 * nranks, ncclSum, 201);
  auto c_in = all_inputs<uint8_t>(nranks, 16, ncclSum, 202);
  auto e_in = all_inputs<double>(nranks, 9, ncclMin, 203);
  float* a = device_copy(a_in[rank]);
  __nv_bfloat16* b = device_copy(b_in[rank]);
  __nv_bfloat16* b_out = device_copy(std::vector<__nv_bfloat16>(8));
  uint8_t* c_out = device_copy(std::vector<uint8_t>(16 * nranks));
  uint8_t* c = device_copy(c_in[rank]);
  double* e = device_copy(e_in[rank]);
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclAllReduce(a, a, 40, ncclFloat32, ncclSum, comm, 0));
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclReduceScatter(b, b_out, 8, ncclBfloat16, ncclSum, comm, 0));
  CHECK_NCCL(ncclAllGather(c, c_out, 16, ncclUint8, comm, 0));
  CHECK_NCCL(ncclGroupEnd());
  check(same_bits(host_copy(a, 40), a_in[rank]), "inside a group, nothing has run before the outer ncclGroupEnd");
  CHECK_NCCL(ncclAllReduce(e, e, 9, ncclFloat64, ncclMin, comm, 0));
  CHECK_NCCL(ncclGroupEnd());
  std::vector<float> a_ref(40);
  for (size_t i = 0; i < 40; i++) a_ref[i] = reduce_ref(a_in, i, ncclSum);
  std::vector<__nv_bfloat16> b_ref(8);
  for (size_t i = 0; i < 8; i++) b_ref[i] = reduce_ref(b_in, rank * 8 + i, ncclSum);
  std::vector<uint8_t> c_ref;
  for (int p = 0; p < nranks; p++) c_ref.insert(c_ref.end(), c_in[p].begin(), c_in[p].end());
  std::vector<double> e_ref(9);
  for (size_t i = 0; i < 9; i++) e_ref[i] = reduce_ref(e_in, i, ncclMin);
  check(same_bits(host_copy(a, 40), a_ref), "group: ncclAllReduce float32 sum in place");
  check(same_bits(host_copy(b_out, 8), b_ref), "group: ncclReduceScatter bf16 sum");
  check(same_bits(host_copy(c_out, 16 * nranks), c_ref), "group: ncclAllGather uint8");
  check(same_bits(host_copy(e, 9), e_ref), "group: ncclAllReduce float64 min");
  cudaFree(a);
  cudaFree(b);
  cudaFree(b_out);
  cudaFree(c);
  cudaFree(c_out);
  cudaFree(e);

  // larger than a slot (1 MiB a rank): 700000 floats in 3 steps; a
  // ReduceScatter of 300000 a rank, and an AllGather of as many
  {
    const size_t big = 700000;
    auto in = all_inputs<float>(nranks, big, ncclSum, 300);
    float* d = device_copy(in[rank]);
    check(ncclAllReduce(d, d, big, ncclFloat32, ncclSum, comm, 0) == ncclSuccess, "large ncclAllReduce");
    std::vector<float> ref(big);
    for (size_t i = 0; i < big; i++) ref[i] = reduce_ref(in, i, ncclSum);
    check(same_bits(host_copy(d, big), ref), "ncclAllReduce of %zu floats (several steps)", big);
    cudaFree(d);
  }
  {
    const size_t rc = 300000;
    auto in = all_inputs<float>(nranks, rc * nranks, ncclMax, 301);
    float* send = device_copy(in[rank]);
    float* recv = device_copy(std::vector<float>(rc));
    check(ncclReduceScatter(send, recv, rc, ncclFloat32, ncclMax, comm, 0) == ncclSuccess, "large ncclReduceScatter");
    std::vector<float> ref(rc);
    for (size_t i = 0; i < rc; i++) ref[i] = reduce_ref(in, rank * rc + i, ncclMax);
    check(same_bits(host_copy(recv, rc), ref), "ncclReduceScatter of %zu floats a rank (several steps)", rc);
    check(ncclAllGather(recv, send, rc, ncclFloat32, comm, 0) == ncclSuccess, "large ncclAllGather");
    std::vector<float> all;
    for (int p = 0; p < nranks; p++)
      for (size_t i = 0; i < rc; i++) all.push_back(reduce_ref(in, p * rc + i, ncclMax));
    check(same_bits(host_copy(send, rc * nranks), all), "ncclAllGather of %zu floats a rank (several steps)", rc);
    cudaFree(send);
    cudaFree(recv);
  }
  CHECK_NCCL(ncclCommDestroy(comm));
}

// the ranks' calls differ: every rank reports it and returns ncclInvalidUsage
static void mismatch_case(ncclComm_t comm, int rank, ncclResult_t r, const char* want1, const char* want2) {
  check(r == ncclInvalidUsage, "a mismatched call returned %d, want ncclInvalidUsage", (int)r);
  check(stderr_has("the ranks' calls differ") && stderr_has(want1) && stderr_has(want2),
        "the mismatch message on stderr names both calls (%s, %s)", want1, want2);
  ncclResult_t ae = ncclSuccess;
  CHECK_NCCL(ncclCommGetAsyncError(comm, &ae));
  check(ae == ncclInvalidUsage, "ncclCommGetAsyncError after a mismatch: %d", (int)ae);
  check(strstr(ncclGetLastError(comm), "differ") != nullptr, "ncclGetLastError: %s", ncclGetLastError(comm));
  // the communicator stays failed: the next call returns at once
  float* x = device_copy(std::vector<float>(4, 1.0f));
  double t0 = now_seconds();
  check(ncclAllReduce(x, x, 4, ncclFloat32, ncclSum, comm, 0) == ncclInvalidUsage && now_seconds() - t0 < 0.5,
        "a call on the failed communicator returns its error at once");
  cudaFree(x);
  check(ncclCommAbort(comm) == ncclSuccess, "ncclCommAbort");
  (void)rank;
}

static void scenario_mismatch_count(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  float* x = device_copy(std::vector<float>(18, 1.0f));
  CHECK_NCCL(ncclAllReduce(x, x, 18, ncclFloat32, ncclSum, comm, 0));  // #1 matches
  ncclResult_t r = ncclAllReduce(x, x, 17 + (rank == 1), ncclFloat32, ncclSum, comm, 0);  // #2: rank 1 sends 18
  cudaFree(x);
  mismatch_case(comm, rank, r, "rank 0 #2 ncclAllReduce(count 17, float32, sum)",
                "rank 1 #2 ncclAllReduce(count 18, float32, sum)");
}

static void scenario_mismatch_call(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  float* x = device_copy(std::vector<float>(16 * nranks, 1.0f));
  // rank 2 uses max, the last rank gathers instead
  ncclResult_t r = rank == nranks - 1 ? ncclAllGather(x, x, 16, ncclFloat32, comm, 0)
                                      : ncclAllReduce(x, x, 16, ncclFloat32, rank == 1 ? ncclMax : ncclSum, comm, 0);
  cudaFree(x);
  mismatch_case(comm, rank, r, "rank 1 #1 ncclAllReduce(count 16, float32, max)",
                "rank 2 #1 ncclAllGather(sendcount 16, float32)");
}

// rank 2 is killed after one collective: the others' next call fails at once
// (the parent leaves rank 2 a zombie meanwhile: a zombie's pid still answers kill(pid, 0))
static void scenario_dead_rank(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  float* x = device_copy(std::vector<float>(1000, 1.0f));
  CHECK_NCCL(ncclAllReduce(x, x, 1000, ncclFloat32, ncclSum, comm, 0));
  if (rank == 2) kill(getpid(), SIGKILL);
  double t0 = now_seconds();
  ncclResult_t r = ncclAllReduce(x, x, 1000, ncclFloat32, ncclSum, comm, 0);
  double dt = now_seconds() - t0;
  check(r == ncclRemoteError, "a call with a dead peer returned %d, want ncclRemoteError", (int)r);
  check(dt < 2.0, "the dead peer was noticed after %.2f s (the timeout is 5 s: it should be at once)", dt);
  check(stderr_has("ncclAllReduce #2: rank 2 exited"), "stderr names the call and the dead rank");
  ncclResult_t ae = ncclSuccess;
  CHECK_NCCL(ncclCommGetAsyncError(comm, &ae));
  check(ae == ncclRemoteError, "ncclCommGetAsyncError: %d", (int)ae);
  t0 = now_seconds();
  check(ncclAllReduce(x, x, 1000, ncclFloat32, ncclSum, comm, 0) == ncclRemoteError && now_seconds() - t0 < 0.5,
        "the next call returns the error at once");
  cudaFree(x);
  check(ncclCommAbort(comm) == ncclSuccess, "ncclCommAbort");
  (void)nranks;
}

// rank 1 is alive but late (2.2 s, the timeout is 1 s): rank 0 gives up after
// the timeout; rank 1, when it comes, finds rank 0 failed and returns at once
static void scenario_slow_rank(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  float* x = device_copy(std::vector<float>(10, 1.0f));
  if (rank == 1) sleep_seconds(2.2);
  double t0 = now_seconds();
  ncclResult_t r = ncclAllReduce(x, x, 10, ncclFloat32, ncclSum, comm, 0);
  double dt = now_seconds() - t0;
  check(r == ncclRemoteError, "returned %d, want ncclRemoteError", (int)r);
  if (rank == 0) {
    check(dt >= 0.95 && dt < 2.0, "gave up after %.2f s, want the 1 s timeout", dt);
    check(stderr_has("rank 0: ncclAllReduce #1: rank 1 did not arrive within 1 s"), "stderr names the late rank");
  } else {
    check(dt < 0.5, "the late rank returned after %.2f s, want at once (its peer had failed)", dt);
    check(stderr_has("rank 1: ncclAllReduce #1: rank 0 failed"), "stderr says the peer failed");
  }
  cudaFree(x);
  check(ncclCommAbort(comm) == ncclSuccess, "ncclCommAbort");
  (void)nranks;
}

// 3 ranks, rank 2 comes to init 2.2 s late (timeout 1 s): ranks 0 and 1 give
// up after the timeout, rank 2 finds the rendezvous gone and fails at once
static void scenario_missing_at_init(int rank, int nranks, const ncclUniqueId& id) {
  if (rank == 2) sleep_seconds(2.2);
  ncclComm_t comm = nullptr;
  double t0 = now_seconds();
  ncclResult_t r = ncclCommInitRank(&comm, nranks, id, rank);
  double dt = now_seconds() - t0;
  check(r == ncclRemoteError && comm == nullptr, "ncclCommInitRank returned %d, want ncclRemoteError", (int)r);
  if (rank < 2) {
    check(dt >= 0.95 && dt < 2.0, "gave up after %.2f s, want the 1 s timeout", dt);
    // the first rank to give up names rank 2; the other may see that first, and names both
    check(stderr_has("ncclCommInitRank: rank 2 did not arrive within 1 s") ||
              stderr_has("failed (see its own message); rank 2 had not arrived after"),
          "stderr names the missing rank");
  } else {
    check(dt < 0.5, "the late rank returned after %.2f s, want at once", dt);
  }
  if (comm) ncclCommAbort(comm);
}

// rank 1 dies while it waits in init (SIGALRM, default action), rank 2 never
// comes: rank 0 notices the death at once instead of waiting for the timeout
static void scenario_dead_at_init(int rank, int nranks, const ncclUniqueId& id) {
  if (rank == 2) return;
  if (rank == 1) {
    itimerval t = {{0, 0}, {0, 200000}};
    signal(SIGALRM, SIG_DFL);
    setitimer(ITIMER_REAL, &t, nullptr);
  }
  ncclComm_t comm = nullptr;
  double t0 = now_seconds();
  ncclResult_t r = ncclCommInitRank(&comm, nranks, id, rank);
  double dt = now_seconds() - t0;
  check(r == ncclRemoteError, "ncclCommInitRank returned %d, want ncclRemoteError", (int)r);
  check(dt < 2.0, "gave up after %.2f s (timeout 5 s), want at once after rank 1 died", dt);
  check(stderr_has("ncclCommInitRank: rank 1 exited"), "stderr names the dead rank");
  if (comm) ncclCommAbort(comm);
}

// invalid arguments fail locally, at once, and leave the communicator usable
static void scenario_bad_arguments(int rank, int nranks, const ncclUniqueId& id) {
  ncclComm_t comm = init_comm(rank, nranks, id);
  if (!comm) return;
  std::vector<float> host(16, 1.0f);
  float* d = device_copy(host);
  float* small = device_copy(std::vector<float>(10));
  check(ncclAllReduce(host.data(), d, 16, ncclFloat32, ncclSum, comm, 0) == ncclInvalidArgument &&
            stderr_has("sendbuff (64 bytes) should be device memory but is") && stderr_has("host memory"),
        "a host sendbuff is refused with a message");
  check(ncclAllReduce(d, small, 16, ncclFloat32, ncclSum, comm, 0) == ncclInvalidArgument &&
            stderr_has("run past its end"),
        "a recvbuff too small is refused with a message");
  check(ncclAllReduce(d, d, 16, ncclFloat16, ncclSum, comm, 0) == ncclInvalidArgument &&
            stderr_has("float16) is not emulated"),
        "float16 is refused");
  check(ncclAllReduce(d, d, 16, ncclFloat32, (ncclRedOp_t)5, comm, 0) == ncclInvalidArgument,
        "an unknown op is refused");
  check(ncclBroadcast(d, d, 16, ncclFloat32, nranks, comm, 0) == ncclInvalidArgument, "a root out of range is refused");
  check(ncclGroupEnd() == ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  // count 0 with NULL buffers is a valid call (it still takes part in the sequence)
  check(ncclAllReduce(nullptr, nullptr, 0, ncclFloat32, ncclSum, comm, 0) == ncclSuccess, "ncclAllReduce of 0 elements");
  check(ncclAllGather(nullptr, nullptr, 0, ncclBfloat16, comm, 0) == ncclSuccess, "ncclAllGather of 0 elements");
  ncclResult_t ae = ncclInternalError;
  CHECK_NCCL(ncclCommGetAsyncError(comm, &ae));
  check(ae == ncclSuccess, "argument errors leave no asynchronous error (%d)", (int)ae);
  check(ncclAllReduce(d, d, 16, ncclFloat32, ncclSum, comm, 0) == ncclSuccess &&
            host_copy(d, 16)[5] == (float)nranks,
        "the communicator works after refused calls");
  cudaFree(d);
  cudaFree(small);
  CHECK_NCCL(ncclCommDestroy(comm));
}

// ---------------------------------------------------------------------------
// the parent: runs a scenario's ranks as processes and collects their checks

typedef void (*scenario_fn)(int rank, int nranks, const ncclUniqueId& id);

// dying: the rank that is meant to die by a signal (-1: none); it is reaped
// only after the others finished, so it stays a zombie while they wait
static void run_ranks(const char* name, scenario_fn fn, int nranks, double timeout, double deadline, int dying = -1,
                      int dying_signal = SIGKILL) {
  double t0 = now_seconds();
  memset(g_counts, 0, sizeof *g_counts);
  ncclUniqueId id;
  int parent_failed = 0, parent_passed = 0;
  if (ncclGetUniqueId(&id) != ncclSuccess) {
    printf("FAIL %s: ncclGetUniqueId\n", name);
    g_total_failed++;
    return;
  }
  char tbuf[32];
  snprintf(tbuf, sizeof tbuf, "%g", timeout);
  pid_t pids[MAX_PROCS];
  fflush(stdout);
  fflush(stderr);
  for (int r = 0; r < nranks; r++) {
    snprintf(g_stderr_path[r], sizeof g_stderr_path[r], "/tmp/nccl_selftest.%d.%d.err", (int)getpid(), r);
    pids[r] = fork();
    if (pids[r] == 0) {
      g_rank = r;
      g_scenario = name;
      setenv("CUDA_EMU_NCCL_TIMEOUT", tbuf, 1);
      int fd = open(g_stderr_path[r], O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(fd, 2);
      close(fd);
      fn(r, nranks, id);
      fflush(stdout);
      fflush(stderr);
      exit(0);
    }
  }
  // wait for the ranks, the dying one last; kill whoever is still there at the deadline
  int status[MAX_PROCS];
  bool reaped[MAX_PROCS] = {false};
  int left = nranks;
  while (left > 0) {
    bool others_done = true;
    for (int r = 0; r < nranks; r++) others_done = others_done && (reaped[r] || r == dying);
    for (int r = 0; r < nranks; r++) {
      if (reaped[r] || (r == dying && !others_done)) continue;
      if (waitpid(pids[r], &status[r], WNOHANG) == pids[r]) {
        reaped[r] = true;
        left--;
      }
    }
    if (left > 0 && now_seconds() - t0 > deadline) {
      for (int r = 0; r < nranks; r++) {
        if (reaped[r]) continue;
        bool hung = !(r == dying && !others_done);
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &status[r], 0);
        reaped[r] = true;
        left--;
        if (hung) {
          printf("FAIL %s: rank %d still running after %.0f s: hung (killed)\n", name, r, deadline);
          parent_failed++;
        }
      }
    }
    if (left > 0) sleep_seconds(0.002);
  }
  for (int r = 0; r < nranks; r++) {
    bool ok = r == dying ? WIFSIGNALED(status[r]) && WTERMSIG(status[r]) == dying_signal
                         : WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == 0;
    if (ok) {
      parent_passed++;
    } else {
      parent_failed++;
      printf("FAIL %s: rank %d ended with %s %d\n", name, r, WIFSIGNALED(status[r]) ? "signal" : "status",
             WIFSIGNALED(status[r]) ? WTERMSIG(status[r]) : WEXITSTATUS(status[r]));
    }
  }
  // nothing left behind in /dev/shm
  const char* path = id.internal + strlen("cuda_emu_nccl:");
  if (access(path, F_OK) == 0) {
    printf("FAIL %s: the rendezvous file %s is still there\n", name, path);
    unlink(path);
    parent_failed++;
  } else {
    parent_passed++;
  }
  int passed = parent_passed, failed = parent_failed;
  for (int r = 0; r < nranks; r++) {
    passed += g_counts->passed[r];
    failed += g_counts->failed[r];
  }
  printf("%s %s: %d ranks, %d checks, %d failed (%.2f s)\n", failed ? "FAIL" : "PASS", name, nranks, passed + failed,
         failed, now_seconds() - t0);
  const char* verbose = getenv("CUDA_EMU_NCCL_SELFTEST_VERBOSE");
  for (int r = 0; r < nranks; r++) {
    if (failed || (verbose && *verbose && strcmp(verbose, "0") != 0)) {
      FILE* f = fopen(g_stderr_path[r], "r");
      if (f) {
        char line[1024];
        while (fgets(line, sizeof line, f)) printf("  rank %d stderr: %s", r, line);
        fclose(f);
      }
    }
    unlink(g_stderr_path[r]);
  }
  fflush(stdout);
  g_total_passed += passed;
  g_total_failed += failed;
}

int main() {
  double t0 = now_seconds();
  g_counts = (check_counts*)mmap(nullptr, sizeof(check_counts), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                                 -1, 0);
  if (g_counts == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  for (int nranks = 2; nranks <= 3; nranks++) {
    run_ranks("basics", scenario_basics, nranks, 10, 30);
    run_ranks("ncclAllReduce, every type and op, out of place and in place", scenario_allreduce, nranks, 10, 30);
    run_ranks("ReduceScatter, AllGather, Broadcast, Reduce (and in place)", scenario_collectives, nranks, 10, 30);
    run_ranks("a ZeRO-1 sequence, groups, several-step collectives", scenario_sequence, nranks, 10, 60);
  }
  run_ranks("float sums in rank order, not arrival order; bf16 rounded once", scenario_rank_order, 3, 10, 30);
  run_ranks("mismatch: rank 1 sends another count", scenario_mismatch_count, 2, 5, 20);
  run_ranks("mismatch: another op, another collective", scenario_mismatch_call, 3, 5, 20);
  run_ranks("a rank killed after one collective (timeout 5 s)", scenario_dead_rank, 3, 5, 20, 2);
  run_ranks("a rank late past the timeout (1 s)", scenario_slow_rank, 2, 1, 20);
  run_ranks("a rank missing at init (timeout 1 s)", scenario_missing_at_init, 3, 1, 20);
  run_ranks("a rank dies in init (timeout 5 s)", scenario_dead_at_init, 3, 5, 20, 1, SIGALRM);
  run_ranks("invalid arguments", scenario_bad_arguments, 2, 5, 20);
  printf("nccl self-test: %.1f s\n", now_seconds() - t0);
  printf("%d passed, %d failed\n", g_total_passed, g_total_failed);
  munmap(g_counts, sizeof(check_counts));
  return g_total_failed ? 1 : 0;
}
