// cuda_emu_nccl.cpp: the NCCL calls a data-parallel trainer needs, on the CPU,
// for the CPU CUDA harness (see README.md, "NCCL"). Written from NVIDIA's
// documented semantics (nccl.h and the NCCL API docs), with the real nccl.h
// signatures; anything not here is a link error, as with the rest of the harness.
//
// Implemented: ncclGetVersion, ncclGetUniqueId, ncclCommInitRank,
// ncclCommInitRankConfig, ncclCommFinalize, ncclCommDestroy, ncclCommAbort,
// ncclCommGetAsyncError, ncclCommCount, ncclCommUserRank, ncclCommCuDevice,
// ncclGetErrorString, ncclGetLastError, ncclGroupStart/End, ncclAllReduce,
// ncclReduceScatter, ncclAllGather, ncclBroadcast, ncclBcast, ncclReduce.
// Types: int8 (= char), uint8, int32, int64, float32, float64, bfloat16; the
// others return ncclInvalidArgument. Ops: sum, prod, max, min, avg.
// Not here: ncclSend/ncclRecv (point-to-point needs matching that is not a
// whole-communicator step), ncclCommSplit, user-defined reduction ops.
//
// Ranks are separate processes, as with real NCCL. ncclGetUniqueId creates a
// file in /dev/shm (or $TMPDIR, or /tmp), sparse and of a fixed size: a header
// with one control block per rank, then one data slot of SLOT_BYTES per rank.
// The id carries its path. ncclCommInitRank maps it, claims its rank, and
// waits until all nranks have arrived; rank 0 then unlinks the path (the
// mappings stay valid), so nothing is left behind after a normal run.
//
// A collective is cut into steps of at most one slot per rank. In step s,
// every rank (1) waits until all ranks have finished reading step s-1 (so its
// slot may be reused), (2) copies its piece of the send buffer and a
// description of the call (collective, count, type, op, root, sequence number)
// into its slot and publishes s, (3) waits until all ranks have published s,
// (4) checks that all descriptions agree (else every rank reports the
// mismatch and returns ncclInvalidUsage), (5) computes its own result from
// the slots, reducing in rank order: rank 0's value, then rank 1's, ... in the
// buffer type's arithmetic (float in float, double in double, integers with
// wraparound; bf16 is summed in float and rounded to bf16 once per element:
// the result type is the buffer's, and one rounding is what an exact
// reduction would give; a GPU's ring rounds at every hop, so it may differ in
// the last bf16 bits). avg is that sum divided by nranks once (integers:
// truncated). Every rank sees the same slots and computes in the same order,
// so all ranks get identical bits, whatever the timing. (6) It marks step s
// done. Reading only from slots makes in-place calls (sendbuff == recvbuff,
// and the documented in-place forms of AllGather and ReduceScatter) work.
//
// Waits: every wait (the rendezvous, each barrier) is bounded by
// CUDA_EMU_NCCL_TIMEOUT seconds (default 60, read at init). While waiting, a
// rank checks every few milliseconds that the ranks it waits for are alive
// (kill(pid, 0) and, where /proc exists, that the pid is not a zombie nor
// reused), and whether they aborted or failed their communicator. A failure
// prints "cuda_emu: NCCL: rank R: <call> #seq: rank P <exited|did not arrive
// within T s|...>" on stderr and returns ncclRemoteError (NCCL's code for "a
// remote process exiting prematurely"); ncclCommGetAsyncError then reports
// it, and later calls on that communicator return it at once. The failing
// rank marks itself failed in the header, so its peers stop waiting at once.
//
// Streams: everything is synchronous, as in the rest of the harness; a
// collective has completed when the call returns (also inside a group, when
// ncclGroupEnd returns). Grouped calls run at the outermost ncclGroupEnd, in
// the order they were made.
#include "cuda_emu.h"

// without nccl.h (or with CUDA_EMU_NO_NCCL defined) this file is empty, and
// emu.mk skips the NCCL self-test
#if __has_include(<nccl.h>) && !defined(CUDA_EMU_NO_NCCL)
#include <nccl.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

namespace cuda_emu {
bool is_device_range(const void* p, size_t n);
std::string describe_pointer(const void* p, size_t n);
const char* current_kernel_name();
}  // namespace cuda_emu

// ---------------------------------------------------------------------------
// the shared segment

#define NCCL_EMU_MAX_RANKS 64
#define NCCL_EMU_SLOT_BYTES ((size_t)1 << 20)  // per rank and step; a collective is cut into such steps
#define NCCL_EMU_MAGIC 0x4e43434c454d5531ull    // "NCCLEMU1"
#define NCCL_EMU_ID_PREFIX "cuda_emu_nccl:"
#define NCCL_EMU_COMM_MAGIC 0xc033u

enum rank_state { RANK_EMPTY = 0, RANK_ACTIVE, RANK_DESTROYED, RANK_ABORTED, RANK_FAILED };
enum rendezvous_outcome { RENDEZVOUS_PENDING = 0, RENDEZVOUS_COMPLETE, RENDEZVOUS_FAILED };
enum coll_kind { COLL_NONE = 0, COLL_ALLREDUCE, COLL_REDUCESCATTER, COLL_ALLGATHER, COLL_BROADCAST, COLL_REDUCE };

// what a rank called at a step: all ranks must agree
struct call_desc {
  int32_t kind, type, op, root;
  uint64_t count;  // the call's count argument (not the step's)
  uint64_t seq;    // the collective's number on this communicator, from 1
};

// one rank's control block; the step counters are only written by their rank
struct alignas(128) rank_ctl {
  int64_t published;  // the last step whose data and description are in the slot
  int64_t done;       // the last step this rank has finished reading
  int32_t pid;        // claimed at init (0: not arrived)
  int32_t state;      // rank_state
  int32_t device;
  int32_t pad;
  uint64_t start_time;  // the process's start time (/proc/pid/stat), to tell a reused pid
  int64_t failed_step;  // the step at which this rank failed (0: it has not)
  call_desc desc;
};

struct segment_header {
  uint64_t magic;
  int32_t nranks;   // set by the first rank to arrive
  int32_t arrived;  // ranks that completed their claim
  int32_t outcome;  // rendezvous_outcome
  rank_ctl ranks[NCCL_EMU_MAX_RANKS];
};

static const size_t DATA_OFFSET = (sizeof(segment_header) + 4095) & ~(size_t)4095;
static const size_t SEGMENT_BYTES = DATA_OFFSET + (size_t)NCCL_EMU_MAX_RANKS * NCCL_EMU_SLOT_BYTES;

struct ncclComm {
  unsigned magic;
  int rank, nranks, device;
  double timeout;  // seconds
  segment_header* seg;
  int64_t step;   // steps completed, the same on every rank
  uint64_t seq;   // collectives started
  ncclResult_t async_error;
  char path[NCCL_UNIQUE_ID_BYTES];
};

// the last error's message (ncclGetLastError)
static char g_last_error[1024];

static void report(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
  va_end(ap);
  fprintf(stderr, "cuda_emu: NCCL: %s\n", g_last_error);
  fflush(stderr);
}

static double now_seconds() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double timeout_from_env() {
  const char* v = getenv("CUDA_EMU_NCCL_TIMEOUT");
  if (!v || !*v) return 60.0;
  char* end = nullptr;
  double t = strtod(v, &end);
  if (end == v || *end || !(t > 0)) {
    fprintf(stderr, "cuda_emu: NCCL: ignoring CUDA_EMU_NCCL_TIMEOUT=%s (expected a positive number of seconds)\n", v);
    return 60.0;
  }
  return t;
}

// the state and start time of a process from /proc/pid/stat (false: unreadable)
static bool proc_stat(int pid, char* state, uint64_t* start_time) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  const char* p = strrchr(buf, ')');  // the command name may hold spaces and parentheses
  if (!p || p[1] != ' ') return false;
  *state = p[2];
  // fields after the name: 3 state, 4 ppid, ... 22 starttime
  p += 2;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (!p) return false;
    p++;
  }
  *start_time = strtoull(p, nullptr, 10);
  return true;
}

// false once the process is gone: no such pid, a zombie, or the pid now
// belongs to a process started at another time
static bool peer_alive(int pid, uint64_t start_time) {
  if (pid <= 0) return true;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  char state;
  uint64_t st;
  if (!proc_stat(pid, &state, &st)) return kill(pid, 0) == 0 || errno != ESRCH;
  if (state == 'Z' || state == 'X') return false;
  return start_time == 0 || st == start_time;
}

template <class T>
static T load_acquire(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <class T>
static void store_release(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static unsigned char* slot(ncclComm* c, int r) { return (unsigned char*)c->seg + DATA_OFFSET + (size_t)r * NCCL_EMU_SLOT_BYTES; }

// ---------------------------------------------------------------------------
// waiting, bounded by the timeout and by the peers' liveness

// a short pause that grows while the wait goes on: spin first, then sleep
static void pause_a_little(int iteration) {
  if (iteration < 50) {
    sched_yield();
    return;
  }
  long ns = iteration < 200 ? 20000 : iteration < 1000 ? 100000 : 500000;
  timespec t = {0, ns};
  nanosleep(&t, nullptr);
}

// waits until done(); on failure prints why, naming the first rank at fault,
// and returns ncclRemoteError. ready(p): rank p has done its part (the ranks
// not ready are the ones checked); watch_ready: check the ready ones too (the
// rendezvous, where a rank that arrived and died would otherwise be taken for
// one still on its way). what: "ncclAllReduce #3".
template <class Ready, class Done>
static ncclResult_t wait_for(ncclComm* c, const char* what, Ready ready, Done done, bool watch_ready) {
  double start = now_seconds(), last_check = start;
  for (int it = 0;; it++) {
    if (done()) return ncclSuccess;
    pause_a_little(it);
    double t = now_seconds();
    if (t - last_check < 0.005 && t - start < c->timeout) continue;
    last_check = t;
    // the ranks still missing: gone, given up, or too slow. The cause comes
    // first: a dead or late rank over a peer that failed because of it
    int culprit = -1, culprit_rank = 99, others = 0;
    const char* culprit_why = nullptr;
    char others_buf[256] = "", late_buf[96];
    for (int p = 0; p < c->nranks; p++) {
      bool is_ready = ready(p);
      if (is_ready && !watch_ready) continue;
      rank_ctl* r = &c->seg->ranks[p];
      int state = load_acquire(&r->state);
      const char* why = nullptr;
      int rank_of_why = 99;  // lower: more likely the cause
      if (state == RANK_ABORTED) why = "aborted its communicator (ncclCommAbort)", rank_of_why = 1;
      else if (state == RANK_DESTROYED) why = "destroyed its communicator (ncclCommDestroy)", rank_of_why = 1;
      else if (state == RANK_FAILED) why = "failed (see its own message)", rank_of_why = 3;
      else if (!peer_alive(load_acquire(&r->pid), r->start_time)) why = "exited", rank_of_why = 0;
      else if (t - start >= c->timeout && !is_ready) {
        snprintf(late_buf, sizeof late_buf, "did not arrive within %g s (CUDA_EMU_NCCL_TIMEOUT)", c->timeout);
        why = late_buf, rank_of_why = 2;
      }
      if (why && rank_of_why < culprit_rank) culprit = p, culprit_rank = rank_of_why, culprit_why = why;
      if (!why && !is_ready && others < 8) {
        size_t len = strlen(others_buf);
        snprintf(others_buf + len, sizeof others_buf - len, "%s%d", others ? ", " : "", p);
        others++;
      }
    }
    if (culprit < 0) continue;
    if (done()) return ncclSuccess;  // everyone got there just before one went
    if (others && culprit_rank == 3)  // a peer gave up: say who else is missing, perhaps the cause
      report("rank %d: %s: rank %d %s; rank%s %s had not arrived after %.2f s either", c->rank, what, culprit,
             culprit_why, others > 1 ? "s" : "", others_buf, t - start);
    else
      report("rank %d: %s: rank %d %s", c->rank, what, culprit, culprit_why);
    return ncclRemoteError;
  }
}

// waits until ready(p) for every rank p (the step barriers)
template <class Ready>
static ncclResult_t wait_for_ranks(ncclComm* c, const char* what, Ready ready) {
  auto all = [c, &ready]() {
    for (int p = 0; p < c->nranks; p++)
      if (!ready(p)) return false;
    return true;
  };
  return wait_for(c, what, ready, all, false);
}

// ---------------------------------------------------------------------------
// reductions in rank order

static float bf16_to_float(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint16_t float_to_bf16(float f) {  // to nearest even, as __float2bfloat16
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

template <class A>
static A combine(A acc, A v, ncclRedOp_t op) {
  switch (op) {
    case ncclProd: return acc * v;
    case ncclMax: return v > acc ? v : acc;
    case ncclMin: return v < acc ? v : acc;
    default: return acc + v;  // sum, avg
  }
}
// integers wrap around on sum and product (the unsigned twin does the arithmetic)
template <class I, class U>
static I combine_int(I acc, I v, ncclRedOp_t op) {
  switch (op) {
    case ncclProd: return (I)(U)((U)acc * (U)v);
    case ncclMax: return v > acc ? v : acc;
    case ncclMin: return v < acc ? v : acc;
    default: return (I)(U)((U)acc + (U)v);
  }
}

template <class T>
static void reduce_float(void* dst, const unsigned char* const* src, int nranks, size_t n, ncclRedOp_t op) {
  for (size_t i = 0; i < n; i++) {
    T acc;
    memcpy(&acc, src[0] + i * sizeof(T), sizeof(T));
    for (int p = 1; p < nranks; p++) {
      T v;
      memcpy(&v, src[p] + i * sizeof(T), sizeof(T));
      acc = combine<T>(acc, v, op);
    }
    if (op == ncclAvg) acc = acc / (T)nranks;
    memcpy((unsigned char*)dst + i * sizeof(T), &acc, sizeof(T));
  }
}
template <class I, class U>
static void reduce_int(void* dst, const unsigned char* const* src, int nranks, size_t n, ncclRedOp_t op) {
  for (size_t i = 0; i < n; i++) {
    I acc;
    memcpy(&acc, src[0] + i * sizeof(I), sizeof(I));
    for (int p = 1; p < nranks; p++) {
      I v;
      memcpy(&v, src[p] + i * sizeof(I), sizeof(I));
      acc = combine_int<I, U>(acc, v, op);
    }
    if (op == ncclAvg) acc = (I)(acc / (I)nranks);
    memcpy((unsigned char*)dst + i * sizeof(I), &acc, sizeof(I));
  }
}
static void reduce_bf16(void* dst, const unsigned char* const* src, int nranks, size_t n, ncclRedOp_t op) {
  for (size_t i = 0; i < n; i++) {
    uint16_t b;
    memcpy(&b, src[0] + 2 * i, 2);
    float acc = bf16_to_float(b);
    for (int p = 1; p < nranks; p++) {
      memcpy(&b, src[p] + 2 * i, 2);
      acc = combine<float>(acc, bf16_to_float(b), op);
    }
    if (op == ncclAvg) acc = acc / (float)nranks;
    b = float_to_bf16(acc);
    memcpy((unsigned char*)dst + 2 * i, &b, 2);
  }
}

// dst[i] = src[0][i] op src[1][i] op ... (rank order), n elements
static void reduce_in_rank_order(void* dst, const unsigned char* const* src, int nranks, size_t n,
                                 ncclDataType_t type, ncclRedOp_t op) {
  switch (type) {
    case ncclFloat32: reduce_float<float>(dst, src, nranks, n, op); break;
    case ncclFloat64: reduce_float<double>(dst, src, nranks, n, op); break;
    case ncclBfloat16: reduce_bf16(dst, src, nranks, n, op); break;
    case ncclInt8: reduce_int<int8_t, uint8_t>(dst, src, nranks, n, op); break;
    case ncclUint8: reduce_int<uint8_t, uint8_t>(dst, src, nranks, n, op); break;
    case ncclInt32: reduce_int<int32_t, uint32_t>(dst, src, nranks, n, op); break;
    case ncclInt64: reduce_int<int64_t, uint64_t>(dst, src, nranks, n, op); break;
    default: break;  // rejected before
  }
}

// ---------------------------------------------------------------------------
// names, for messages

static size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclBfloat16: return 2;
    case ncclInt32: case ncclFloat32: return 4;
    case ncclInt64: case ncclFloat64: return 8;
    default: return 0;  // not emulated
  }
}
static const char* type_name(int t) {
  switch (t) {
    case ncclInt8: return "int8";
    case ncclUint8: return "uint8";
    case ncclInt32: return "int32";
    case ncclUint32: return "uint32";
    case ncclInt64: return "int64";
    case ncclUint64: return "uint64";
    case ncclFloat16: return "float16";
    case ncclFloat32: return "float32";
    case ncclFloat64: return "float64";
    case ncclBfloat16: return "bfloat16";
    default: return "an unknown type";
  }
}
static const char* op_name(int op) {
  switch (op) {
    case ncclSum: return "sum";
    case ncclProd: return "prod";
    case ncclMax: return "max";
    case ncclMin: return "min";
    case ncclAvg: return "avg";
    default: return "an unknown op";
  }
}
static const char* coll_name(int kind) {
  switch (kind) {
    case COLL_ALLREDUCE: return "ncclAllReduce";
    case COLL_REDUCESCATTER: return "ncclReduceScatter";
    case COLL_ALLGATHER: return "ncclAllGather";
    case COLL_BROADCAST: return "ncclBroadcast";
    case COLL_REDUCE: return "ncclReduce";
    default: return "nothing";
  }
}
static bool has_op(int kind) { return kind == COLL_ALLREDUCE || kind == COLL_REDUCESCATTER || kind == COLL_REDUCE; }
static bool has_root(int kind) { return kind == COLL_BROADCAST || kind == COLL_REDUCE; }

static std::string describe_call(const call_desc& d) {
  char buf[200];
  int n = snprintf(buf, sizeof buf, "#%llu %s(%s %llu, %s", (unsigned long long)d.seq, coll_name(d.kind),
                   d.kind == COLL_REDUCESCATTER ? "recvcount" : d.kind == COLL_ALLGATHER ? "sendcount" : "count",
                   (unsigned long long)d.count, type_name(d.type));
  if (has_op(d.kind)) n += snprintf(buf + n, sizeof buf - n, ", %s", op_name(d.op));
  if (has_root(d.kind)) n += snprintf(buf + n, sizeof buf - n, ", root %d", d.root);
  snprintf(buf + n, sizeof buf - n, ")");
  return buf;
}

// ---------------------------------------------------------------------------
// communicators

static ncclResult_t check_comm(const ncclComm* c, const char* api) {
  if (!c || c->magic != NCCL_EMU_COMM_MAGIC) {
    report("%s: comm %p is not a live communicator", api, (const void*)c);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

// a communicator that failed stays failed: its peers are out of step
static ncclResult_t fail(ncclComm* c, ncclResult_t e) {
  c->async_error = e;
  store_release(&c->seg->ranks[c->rank].failed_step, c->step);
  store_release(&c->seg->ranks[c->rank].state, (int32_t)RANK_FAILED);
  return e;
}

static void release_comm(ncclComm* c, int state) {
  store_release(&c->seg->ranks[c->rank].state, (int32_t)state);
  munmap(c->seg, SEGMENT_BYTES);
  c->magic = 0;
  delete c;
}

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (!version) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  (void)comm;
  return g_last_error;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (!uniqueId) {
    report("ncclGetUniqueId: uniqueId is NULL");
    return ncclInvalidArgument;
  }
  static unsigned counter = 0;
  const char* dirs[3] = {"/dev/shm", getenv("TMPDIR"), "/tmp"};
  char path[NCCL_UNIQUE_ID_BYTES];
  int fd = -1;
  for (const char* dir : dirs) {
    struct stat st;
    if (!dir || !*dir || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    int n = snprintf(path, sizeof path, "%s/cuda_emu_nccl.%d.%u.%lx", dir, (int)getpid(), counter++,
                     (unsigned long)(now_seconds() * 1e6) & 0xffffff);
    if (n < 0 || n + sizeof NCCL_EMU_ID_PREFIX >= sizeof uniqueId->internal) continue;
    fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) break;
  }
  if (fd < 0) {
    report("ncclGetUniqueId: cannot create the rendezvous file (/dev/shm, $TMPDIR, /tmp): %s", strerror(errno));
    return ncclSystemError;
  }
  // sparse: only the header and the slots that are used take memory
  if (ftruncate(fd, (off_t)SEGMENT_BYTES) != 0) {
    report("ncclGetUniqueId: cannot size %s: %s", path, strerror(errno));
    close(fd);
    unlink(path);
    return ncclSystemError;
  }
  segment_header h;
  memset(&h, 0, sizeof h);
  h.magic = NCCL_EMU_MAGIC;
  if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
    report("ncclGetUniqueId: cannot write %s: %s", path, strerror(errno));
    close(fd);
    unlink(path);
    return ncclSystemError;
  }
  close(fd);
  memset(uniqueId->internal, 0, sizeof uniqueId->internal);
  snprintf(uniqueId->internal, sizeof uniqueId->internal, "%s%s", NCCL_EMU_ID_PREFIX, path);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  const char* api = "ncclCommInitRank";
  if (!comm) {
    report("%s: comm is NULL", api);
    return ncclInvalidArgument;
  }
  *comm = nullptr;
  if (nranks < 1 || nranks > NCCL_EMU_MAX_RANKS || rank < 0 || rank >= nranks) {
    report("rank %d: %s: rank %d of %d ranks is invalid (the emulation allows 1 to %d ranks)", rank, api, rank, nranks,
           NCCL_EMU_MAX_RANKS);
    return ncclInvalidArgument;
  }
  size_t plen = strlen(NCCL_EMU_ID_PREFIX);
  if (memchr(commId.internal, 0, sizeof commId.internal) == nullptr ||
      strncmp(commId.internal, NCCL_EMU_ID_PREFIX, plen) != 0) {
    report("rank %d: %s: the ncclUniqueId does not come from ncclGetUniqueId", rank, api);
    return ncclInvalidArgument;
  }
  ncclComm* c = new ncclComm();
  c->magic = NCCL_EMU_COMM_MAGIC;
  c->rank = rank;
  c->nranks = nranks;
  c->device = 0;
  cudaGetDevice(&c->device);
  c->timeout = timeout_from_env();
  snprintf(c->path, sizeof c->path, "%s", commId.internal + plen);
  int fd = open(c->path, O_RDWR);
  if (fd < 0) {
    report("rank %d: %s: cannot open the rendezvous file %s: %s (the other ranks have already joined or given up, "
           "or the id's process removed it)", rank, api, c->path, strerror(errno));
    delete c;
    return errno == ENOENT ? ncclRemoteError : ncclSystemError;
  }
  void* m = mmap(nullptr, SEGMENT_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) {
    report("rank %d: %s: cannot map %s: %s", rank, api, c->path, strerror(errno));
    delete c;
    return ncclSystemError;
  }
  c->seg = (segment_header*)m;
  segment_header* h = c->seg;
  if (h->magic != NCCL_EMU_MAGIC) {
    report("rank %d: %s: %s is not a rendezvous file of this emulation", rank, api, c->path);
    munmap(m, SEGMENT_BYTES);
    delete c;
    return ncclInvalidArgument;
  }
  int32_t expected = 0;
  if (!__atomic_compare_exchange_n(&h->nranks, &expected, nranks, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
      expected != nranks) {
    report("rank %d: %s: called with nranks %d, another rank with %d", rank, api, nranks, expected);
    munmap(m, SEGMENT_BYTES);
    delete c;
    return ncclInvalidUsage;
  }
  rank_ctl* me = &h->ranks[rank];
  int32_t nobody = 0;
  if (!__atomic_compare_exchange_n(&me->pid, &nobody, (int32_t)getpid(), false, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    report("rank %d: %s: rank %d was already claimed by process %d", rank, api, rank, nobody);
    munmap(m, SEGMENT_BYTES);
    delete c;
    return ncclInvalidUsage;
  }
  char state;
  uint64_t st = 0;
  if (!proc_stat(getpid(), &state, &st)) st = 0;
  me->start_time = st;
  me->device = c->device;
  me->published = 0;
  me->done = 0;
  me->failed_step = 0;
  store_release(&me->state, (int32_t)RANK_ACTIVE);
  // the rendezvous ends once, for everyone: the last rank to arrive marks it
  // complete, a rank that gives up marks it failed, whichever comes first
  if (__atomic_add_fetch(&h->arrived, 1, __ATOMIC_ACQ_REL) == nranks) {
    int32_t pending = RENDEZVOUS_PENDING;
    __atomic_compare_exchange_n(&h->outcome, &pending, (int32_t)RENDEZVOUS_COMPLETE, false, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
  }
  ncclResult_t r = wait_for(
      c, api, [h](int p) { return load_acquire(&h->ranks[p].state) == RANK_ACTIVE; },
      [h]() { return load_acquire(&h->outcome) == RENDEZVOUS_COMPLETE; }, true);
  if (r != ncclSuccess) {
    int32_t pending = RENDEZVOUS_PENDING;
    if (__atomic_compare_exchange_n(&h->outcome, &pending, (int32_t)RENDEZVOUS_FAILED, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE) ||
        pending == RENDEZVOUS_FAILED) {
      // the late ones find no file and fail at once
      store_release(&me->state, (int32_t)RANK_FAILED);
      unlink(c->path);
      munmap(m, SEGMENT_BYTES);
      delete c;
      return r;
    }
    r = ncclSuccess;  // it completed just as this rank gave up: the failure shows at the first collective
  }
  if (rank == 0) unlink(c->path);  // every rank has it mapped: nothing to clean up later
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank,
                                    ncclConfig_t* config) {
  // the settings tune a GPU's kernels; a non-blocking communicator may return
  // before init completes, which returning after is compatible with
  if (config && config->magic != 0xcafebeef) {
    report("ncclCommInitRankConfig: config was not initialized with NCCL_CONFIG_INITIALIZER");
    return ncclInvalidArgument;
  }
  return ncclCommInitRank(comm, nranks, commId, rank);
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  // collectives complete inside their calls: nothing is outstanding
  return check_comm(comm, "ncclCommFinalize");
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;  // as NCCL: destroying NULL is a no-op
  ncclResult_t r = check_comm(comm, "ncclCommDestroy");
  if (r != ncclSuccess) return r;
  release_comm(comm, comm->async_error == ncclSuccess ? RANK_DESTROYED : RANK_FAILED);
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  ncclResult_t r = check_comm(comm, "ncclCommAbort");
  if (r != ncclSuccess) return r;
  release_comm(comm, RANK_ABORTED);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  ncclResult_t r = check_comm(comm, "ncclCommGetAsyncError");
  if (r != ncclSuccess) return r;
  if (!asyncError) return ncclInvalidArgument;
  *asyncError = comm->async_error;
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  ncclResult_t r = check_comm(comm, "ncclCommCount");
  if (r != ncclSuccess) return r;
  if (!count) return ncclInvalidArgument;
  *count = comm->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  ncclResult_t r = check_comm(comm, "ncclCommUserRank");
  if (r != ncclSuccess) return r;
  if (!rank) return ncclInvalidArgument;
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  ncclResult_t r = check_comm(comm, "ncclCommCuDevice");
  if (r != ncclSuccess) return r;
  if (!device) return ncclInvalidArgument;
  *device = comm->device;
  return ncclSuccess;
}

}  // extern "C"

// ---------------------------------------------------------------------------
// collectives

struct coll_call {
  int kind;
  const void* send;
  void* recv;
  size_t count;
  ncclDataType_t type;
  ncclRedOp_t op;
  int root;
  ncclComm* comm;
};

// the argument checks NCCL makes when a call is made (before any communication)
static ncclResult_t check_call(const coll_call& a) {
  const char* api = coll_name(a.kind);
  ncclResult_t r = check_comm(a.comm, api);
  if (r != ncclSuccess) return r;
  ncclComm* c = a.comm;
  if (cuda_emu::current_kernel_name()) {
    report("rank %d: %s called from inside a kernel", c->rank, api);
    return ncclInvalidUsage;
  }
  if (c->async_error != ncclSuccess) {
    report("rank %d: %s: the communicator failed earlier (%s); abort it with ncclCommAbort", c->rank, api,
           ncclGetErrorString(c->async_error));
    return c->async_error;
  }
  size_t es = type_size(a.type);
  if (es == 0) {
    report("rank %d: %s: datatype %d (%s) is not emulated (int8, uint8, int32, int64, float32, float64, bfloat16 are)",
           c->rank, api, (int)a.type, type_name(a.type));
    return ncclInvalidArgument;
  }
  if (has_op(a.kind) && (a.op < ncclSum || a.op > ncclAvg)) {
    report("rank %d: %s: reduction op %d is not emulated (sum, prod, max, min, avg are)", c->rank, api, (int)a.op);
    return ncclInvalidArgument;
  }
  if (has_root(a.kind) && (a.root < 0 || a.root >= c->nranks)) {
    report("rank %d: %s: root %d is not a rank of this %d-rank communicator", c->rank, api, a.root, c->nranks);
    return ncclInvalidArgument;
  }
  if (a.count > ((size_t)1 << 48) / es) {
    report("rank %d: %s: count %zu is too large", c->rank, api, a.count);
    return ncclInvalidArgument;
  }
  // the buffers each rank reads and writes, in elements
  size_t send_n = a.count, recv_n = a.count;
  bool uses_send = true, uses_recv = true;
  if (a.kind == COLL_REDUCESCATTER) send_n = a.count * c->nranks;
  if (a.kind == COLL_ALLGATHER) recv_n = a.count * c->nranks;
  if (a.kind == COLL_BROADCAST) uses_send = c->rank == a.root;
  if (a.kind == COLL_REDUCE) uses_recv = c->rank == a.root;
  if (a.count == 0) return ncclSuccess;
  struct {
    bool used;
    const void* p;
    size_t bytes;
    const char* name;
  } bufs[2] = {{uses_send, a.send, send_n * es, "sendbuff"}, {uses_recv, a.recv, recv_n * es, "recvbuff"}};
  for (auto& b : bufs) {
    if (b.used && !cuda_emu::is_device_range(b.p, b.bytes)) {
      report("rank %d: %s: %s (%zu bytes) should be device memory but is %s", c->rank, api, b.name, b.bytes,
             cuda_emu::describe_pointer(b.p, b.bytes).c_str());
      return ncclInvalidArgument;
    }
  }
  return ncclSuccess;
}

// runs one collective; every rank of the communicator must make the same call
static ncclResult_t run_call(const coll_call& a) {
  ncclComm* c = a.comm;
  segment_header* h = c->seg;
  rank_ctl* me = &h->ranks[c->rank];
  const int nr = c->nranks;
  const size_t es = type_size(a.type);
  call_desc d = {a.kind, (int32_t)a.type, has_op(a.kind) ? (int32_t)a.op : -1, has_root(a.kind) ? a.root : -1,
                 (uint64_t)a.count, ++c->seq};
  char what[64];
  snprintf(what, sizeof what, "%s #%llu", coll_name(a.kind), (unsigned long long)d.seq);
  // elements per step: a ReduceScatter step carries one piece of every rank's block
  size_t per_step = NCCL_EMU_SLOT_BYTES / es / (a.kind == COLL_REDUCESCATTER ? nr : 1);
  size_t steps = a.count == 0 ? 1 : (a.count + per_step - 1) / per_step;  // one step at least: the calls are compared
  const unsigned char* send = (const unsigned char*)a.send;
  unsigned char* recv = (unsigned char*)a.recv;
  std::vector<const unsigned char*> src(nr);
  for (size_t k = 0; k < steps; k++) {
    size_t off = k * per_step, n = std::min(per_step, a.count - off);
    if (a.count == 0) n = 0;
    int64_t s = ++c->step;
    // (1) the previous step's slots have been read by everyone
    ncclResult_t r = wait_for_ranks(c, what, [h, s](int p) { return load_acquire(&h->ranks[p].done) >= s - 1; });
    if (r != ncclSuccess) return fail(c, r);
    // (2) publish this rank's piece and call
    unsigned char* mine = slot(c, c->rank);
    if (n == 0) {
      // count 0: buffers may be NULL; the step only compares the calls
    } else if (a.kind == COLL_REDUCESCATTER) {
      for (int b = 0; b < nr; b++) memcpy(mine + (size_t)b * n * es, send + ((size_t)b * a.count + off) * es, n * es);
    } else if (a.kind != COLL_BROADCAST || c->rank == a.root) {
      memcpy(mine, send + off * es, n * es);
    }
    me->desc = d;
    store_release(&me->published, s);
    // (3) everyone has published
    r = wait_for_ranks(c, what, [h, s](int p) { return load_acquire(&h->ranks[p].published) >= s; });
    if (r != ncclSuccess) return fail(c, r);
    // (4) the same call on every rank
    bool same = true;
    for (int p = 0; p < nr; p++) same = same && memcmp(&h->ranks[p].desc, &d, sizeof d) == 0;
    if (!same) {
      std::string calls;
      for (int p = 0; p < nr && p < 8; p++)
        calls += std::string(p ? "; " : "") + "rank " + std::to_string(p) + " " + describe_call(h->ranks[p].desc);
      report("rank %d: %s: the ranks' calls differ: %s%s", c->rank, what, calls.c_str(), nr > 8 ? "; ..." : "");
      store_release(&me->done, s);
      return fail(c, ncclInvalidUsage);
    }
    // a rank that gave up in this step (after it published) fails it for all
    for (int p = 0; p < nr; p++) {
      int64_t f = load_acquire(&h->ranks[p].failed_step);
      if (f != 0 && f <= s) {
        report("rank %d: %s: rank %d failed (see its own message)", c->rank, what, p);
        store_release(&me->done, s);
        return fail(c, ncclRemoteError);
      }
    }
    // (5) this rank's result, from the slots, in rank order
    for (int p = 0; p < nr; p++) src[p] = slot(c, p);
    switch (n == 0 ? COLL_NONE : a.kind) {
      case COLL_ALLREDUCE:
        reduce_in_rank_order(recv + off * es, src.data(), nr, n, a.type, a.op);
        break;
      case COLL_REDUCE:
        if (c->rank == a.root) reduce_in_rank_order(recv + off * es, src.data(), nr, n, a.type, a.op);
        break;
      case COLL_REDUCESCATTER:
        for (int p = 0; p < nr; p++) src[p] += (size_t)c->rank * n * es;
        reduce_in_rank_order(recv + off * es, src.data(), nr, n, a.type, a.op);
        break;
      case COLL_ALLGATHER:
        for (int p = 0; p < nr; p++) memcpy(recv + ((size_t)p * a.count + off) * es, src[p], n * es);
        break;
      case COLL_BROADCAST:
        memcpy(recv + off * es, src[a.root], n * es);
        break;
      default:
        break;
    }
    // (6) done reading
    store_release(&me->done, s);
  }
  return ncclSuccess;
}

// ncclGroupStart/End: calls in a group run at the outermost ncclGroupEnd, in order
static thread_local int g_group_depth = 0;
static thread_local std::vector<coll_call>* g_group_calls = nullptr;

static ncclResult_t enqueue(const coll_call& a) {
  ncclResult_t r = check_call(a);
  if (r != ncclSuccess) return r;
  if (g_group_depth > 0) {
    if (!g_group_calls) g_group_calls = new std::vector<coll_call>();
    g_group_calls->push_back(a);
    return ncclSuccess;
  }
  return run_call(a);
}

extern "C" {

ncclResult_t ncclGroupStart() {
  g_group_depth++;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) {
    report("ncclGroupEnd without ncclGroupStart");
    return ncclInvalidUsage;
  }
  if (--g_group_depth > 0 || !g_group_calls) return ncclSuccess;
  std::vector<coll_call>* calls = g_group_calls;
  g_group_calls = nullptr;
  ncclResult_t first = ncclSuccess;
  for (const coll_call& a : *calls) {
    // a call after a failure on its communicator returns that failure at once
    ncclResult_t r = a.comm->async_error != ncclSuccess ? a.comm->async_error : run_call(a);
    if (first == ncclSuccess) first = r;
  }
  delete calls;
  return first;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  (void)stream;
  return enqueue({COLL_ALLREDUCE, sendbuff, recvbuff, count, datatype, op, 0, comm});
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  (void)stream;
  return enqueue({COLL_REDUCESCATTER, sendbuff, recvbuff, recvcount, datatype, op, 0, comm});
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  (void)stream;
  return enqueue({COLL_ALLGATHER, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0, comm});
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  (void)stream;
  return enqueue({COLL_BROADCAST, sendbuff, recvbuff, count, datatype, ncclSum, root, comm});
}

ncclResult_t ncclBcast(void* buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                       cudaStream_t stream) {
  return ncclBroadcast(buff, buff, count, datatype, root, comm, stream);
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t stream) {
  (void)stream;
  return enqueue({COLL_REDUCE, sendbuff, recvbuff, count, datatype, op, root, comm});
}

}  // extern "C"

#endif  // __has_include(<nccl.h>) && !defined(CUDA_EMU_NO_NCCL)
