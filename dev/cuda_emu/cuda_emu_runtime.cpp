// cuda_emu_runtime.cpp: the execution engine and CUDA runtime of the CPU
// CUDA harness (see cuda_emu.h for what it does and what it cannot find).
//
// Execution: a launch runs its blocks one after another. In a block, each
// CUDA thread runs on a fiber (its own small stack). A fiber runs its thread
// until the thread finishes or waits at __syncthreads / a warp operation
// (after a barrier the threads go on in the order they started); a
// fiber whose thread finished takes the next thread not yet started, so
// kernels without barriers cost no context switch per thread, and a block
// needs only as many fibers (stacks) as threads waiting at once. Fibers and
// stacks are allocated once and reused. On x86-64 the switch is a few
// instructions of assembly (no signal-mask syscall as with swapcontext); other
// machines use ucontext.
#include "cuda_emu.h"

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <cxxabi.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#define CUDA_EMU_UCONTEXT 1
#endif
#if defined(CUDA_EMU_UCONTEXT)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMU_ASAN 1
#endif
#endif
// the race-check build (X_race): the detector in cuda_emu_racecheck.cpp hears
// of every block, barrier, warp operation, thread switch and shared variable
#if defined(CUDA_EMU_RACECHECK)
#define CUDA_EMU_RACE(call) ::cuda_emu::call
#else
#define CUDA_EMU_RACE(call) ((void)0)
#endif

#if defined(CUDA_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_POISON(p, n) __asan_poison_memory_region((p), (n))
#define CUDA_EMU_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define CUDA_EMU_POISON(p, n) ((void)(p), (void)(n))
#define CUDA_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

// the emulated device: an H100-like shape, so launch checks match the real target
static const int EMU_MAX_THREADS_PER_BLOCK = 1024;
static const int EMU_MAX_BLOCK_DIM_XY = 1024;
static const int EMU_MAX_BLOCK_DIM_Z = 64;
static const unsigned EMU_MAX_GRID_DIM_X = 2147483647u;
static const unsigned EMU_MAX_GRID_DIM_YZ = 65535u;
static const size_t EMU_SHARED_PER_BLOCK = 48 * 1024;           // without opt-in
static const size_t EMU_SHARED_PER_BLOCK_OPTIN = 227 * 1024;    // cudaFuncSetAttribute maximum
static const size_t EMU_SHARED_PER_SM = 228 * 1024;
static const int EMU_DEFAULT_SM_COUNT = 132;
static const int EMU_WARP = 32;
static const int EMU_REGISTERS_PER_SM = 65536;       // also the most one block may use
static const int EMU_REGISTER_ALLOCATION_UNIT = 256;  // per warp: a warp holds 32 x regs, rounded up to this
static const unsigned char EMU_GARBAGE_BYTE = 0xff;  // NaN in float/bf16, -1 in ints
static const size_t EMU_SHARED_REDZONE = 64;         // poisoned gap between shared variables
static const size_t EMU_ARENA_BYTES = 1024 * 1024;   // dynamic + static + redzones
static const size_t EMU_DEFAULT_STACK_KIB = 64;
static const size_t EMU_FREED_RANGES_KEPT = 4096;    // for "freed by cudaFree" messages

namespace cuda_emu {

// ---------------------------------------------------------------------------
// state of the running block

enum thread_status { T_NOT_STARTED, T_RUNNING, T_WAIT_BLOCK, T_WAIT_WARP, T_DONE };

struct fiber;

struct thread_state {
  uint3 thread_idx;  // must stay first: builtin_thread_idx() reads it
  int linear;
  int lane;
  int warp;
  int status;
  fiber* fib;
  const char* wait_file;
  int wait_line;
  int wait_kind;
  unsigned wait_mask;
  unsigned long long op_in;
  unsigned long long op_out;
  int op_param;
  int op_width;
  int op_size;
};

struct warp_pending_op {  // one warp operation waiting for its lanes
  unsigned mask;
  unsigned arrived;
  int kind;
  const char* file;
  int line;
};

struct warp_state {
  unsigned existing;  // lanes that exist in this block
  unsigned exited;
  std::vector<warp_pending_op> pending;  // disjoint masks
};

struct block_state {
  int nthreads = 0;
  int nwarps = 0;
  int next_unstarted = 0;
  int done = 0;
  int exited = 0;
  std::vector<thread_state> threads;
  std::vector<int> start_order;
  std::vector<int> runq;  // ring buffer of thread indices
  int runq_head = 0;
  int runq_count = 0;
  // __syncthreads
  int barrier_arrived = 0;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  int barrier_kind = -1;
  int barrier_acc = 0;
  std::vector<int> barrier_waiters;
  std::vector<warp_state> warps;
};

thread_state* g_current_thread = nullptr;
uint3 g_block_idx;
dim3 g_block_dim;
dim3 g_grid_dim;
unsigned long long g_block_serial = 1;

static block_state& g_block = *new block_state();
static const char* g_kernel_name = nullptr;  // non-null while a kernel runs
static const char* g_library_call = nullptr; // non-null inside an emulated cuBLAS call
static void (*g_run_thread)(void*) = nullptr;
static void* g_closure = nullptr;

// ---------------------------------------------------------------------------
// error reporting

static void print_context() {
  if (g_kernel_name) {
    fprintf(stderr, "cuda_emu: in kernel '%s', block (%u,%u,%u) of grid (%u,%u,%u), block size (%u,%u,%u)",
            g_kernel_name, g_block_idx.x, g_block_idx.y, g_block_idx.z, g_grid_dim.x, g_grid_dim.y, g_grid_dim.z,
            g_block_dim.x, g_block_dim.y, g_block_dim.z);
    if (g_current_thread && g_current_thread->status == T_RUNNING)
      fprintf(stderr, ", thread (%u,%u,%u)", g_current_thread->thread_idx.x, g_current_thread->thread_idx.y,
              g_current_thread->thread_idx.z);
    fprintf(stderr, "\n");
  } else if (g_library_call) {
    fprintf(stderr, "cuda_emu: in %s\n", g_library_call);
  }
}

[[noreturn]] static void fatal(const char* fmt, ...) {
  fflush(stdout);
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "cuda_emu: error: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  print_context();
  fflush(stderr);
  abort();
}

static void warn(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "cuda_emu: warning: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

static size_t fiber_stack_bytes();

#if defined(CUDA_EMU_ASAN)
static void asan_death_callback() {
  if (!g_kernel_name && !g_library_call) return;  // host code: the report's stack says where
  fprintf(stderr, "cuda_emu: the AddressSanitizer report above happened here:\n");
  print_context();
  if (g_kernel_name)
    fprintf(stderr, "cuda_emu: (each CUDA thread has a %zu KiB stack; for a stack-overflow, raise CUDA_EMU_STACK_KIB)\n",
            fiber_stack_bytes() / 1024);
}
#endif

void set_library_call(const char* name) { g_library_call = name; }

[[noreturn]] void device_trap(const char* what, const char* file, int line) {
  fatal("%s called at %s:%d", what, file, line);
}

static size_t env_size(const char* name, size_t fallback) {
  const char* v = getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end != 0 || x == 0) {
    fprintf(stderr, "cuda_emu: ignoring %s=%s (expected a positive integer)\n", name, v);
    return fallback;
  }
  return (size_t)x;
}

static size_t fiber_stack_bytes() {
  static const size_t bytes = env_size("CUDA_EMU_STACK_KIB", EMU_DEFAULT_STACK_KIB) * 1024;
  return bytes;
}

static int emu_sm_count() {
  static int n = (int)env_size("CUDA_EMU_SM_COUNT", EMU_DEFAULT_SM_COUNT);
  return n;
}

// ---------------------------------------------------------------------------
// fibers

struct fiber {
#if defined(CUDA_EMU_UCONTEXT)
  ucontext_t context;
#else
  void* sp = nullptr;  // saved stack pointer while switched out
#endif
  char* stack_lo = nullptr;  // usable stack, above the guard page
  size_t stack_size = 0;
  thread_state* thread = nullptr;  // thread to run, or null when idle
};

static fiber g_main_fiber;
static const void* g_main_stack_bottom = nullptr;
static size_t g_main_stack_size = 0;
// registries are never destroyed: LeakSanitizer runs after static destructors
// and must still see the fibers and device allocations as reachable
static std::vector<fiber*>& g_idle_fibers = *new std::vector<fiber*>();
static size_t g_fiber_count = 0;

#if !defined(CUDA_EMU_UCONTEXT)
// cuda_emu_switch_stack(save_sp, load_sp): push the callee-saved registers,
// save rsp, load the other fiber's rsp, pop, return into it. A new fiber's
// stack is prepared so that the return lands in the trampoline, which calls
// r13(r12). The SSE/x87 control words are not switched: all fibers share one
// floating-point environment (kernels do not change rounding modes).
extern "C" void cuda_emu_switch_stack(void** save_sp, void* load_sp);
extern "C" void cuda_emu_fiber_trampoline();
asm(R"(
  .text
  .globl cuda_emu_switch_stack
  .type cuda_emu_switch_stack, @function
cuda_emu_switch_stack:
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
  .size cuda_emu_switch_stack, .-cuda_emu_switch_stack

  .globl cuda_emu_fiber_trampoline
  .type cuda_emu_fiber_trampoline, @function
cuda_emu_fiber_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size cuda_emu_fiber_trampoline, .-cuda_emu_fiber_trampoline
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

static void fiber_entry(fiber* self);

#if defined(CUDA_EMU_UCONTEXT)
static void fiber_entry_ucontext(unsigned lo, unsigned hi) {
  fiber_entry((fiber*)(((uintptr_t)hi << 32) | (uintptr_t)lo));
}
#endif

static fiber* new_fiber() {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t usable = (fiber_stack_bytes() + page - 1) / page * page;
  char* mem = (char*)mmap(nullptr, usable + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) fatal("cannot allocate a %zu-byte fiber stack (%zu fibers so far)", usable, g_fiber_count);
  mprotect(mem, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting memory
  fiber* f = new fiber();
  f->stack_lo = mem + page;
  f->stack_size = usable;
  g_fiber_count++;
#if defined(CUDA_EMU_UCONTEXT)
  getcontext(&f->context);
  f->context.uc_stack.ss_sp = f->stack_lo;
  f->context.uc_stack.ss_size = f->stack_size;
  f->context.uc_link = nullptr;
  uintptr_t p = (uintptr_t)f;
  makecontext(&f->context, (void (*)())fiber_entry_ucontext, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
#else
  uint64_t* top = (uint64_t*)(((uintptr_t)(f->stack_lo + f->stack_size)) & ~(uintptr_t)15);
  uint64_t* sp = top - 1;  // return address slot, 8 mod 16 so the trampoline's call is 16-aligned
  *sp = (uint64_t)(uintptr_t)&cuda_emu_fiber_trampoline;
  *--sp = 0;                               // rbp: ends frame-pointer unwinding
  *--sp = 0;                               // rbx
  *--sp = (uint64_t)(uintptr_t)f;          // r12: argument
  *--sp = (uint64_t)(uintptr_t)&fiber_entry;  // r13: entry
  *--sp = 0;                               // r14
  *--sp = 0;                               // r15
  f->sp = sp;
#endif
  return f;
}

static void switch_fiber(fiber* from, fiber* to) {
#if defined(CUDA_EMU_ASAN)
  void* fake_stack = nullptr;
  if (to == &g_main_fiber)
    __sanitizer_start_switch_fiber(&fake_stack, g_main_stack_bottom, g_main_stack_size);
  else
    __sanitizer_start_switch_fiber(&fake_stack, to->stack_lo, to->stack_size);
#endif
#if defined(CUDA_EMU_UCONTEXT)
  swapcontext(&from->context, &to->context);
#else
  cuda_emu_switch_stack(&from->sp, to->sp);
#endif
#if defined(CUDA_EMU_ASAN)
  const void* old_bottom = nullptr;
  size_t old_size = 0;
  __sanitizer_finish_switch_fiber(fake_stack, &old_bottom, &old_size);
#endif
}

// ---------------------------------------------------------------------------
// scheduling within a block

static void runq_push(int t) {
  block_state& b = g_block;
  int at = b.runq_head + b.runq_count;
  b.runq[(size_t)(at >= b.nthreads ? at - b.nthreads : at)] = t;
  b.runq_count++;
}

static thread_state* start_next_thread(fiber* f) {
  block_state& b = g_block;
  thread_state* t = &b.threads[b.start_order[b.next_unstarted++]];
  t->status = T_RUNNING;
  t->fib = f;
  return t;
}

// the fiber to run next: a thread released from a barrier, a fresh thread on
// an idle (or new) fiber, or the main context when nothing can run
static fiber* pick_next_fiber() {
  block_state& b = g_block;
  if (b.runq_count > 0) {
    thread_state* t = &b.threads[(size_t)b.runq[(size_t)b.runq_head]];
    b.runq_head = b.runq_head + 1 == b.nthreads ? 0 : b.runq_head + 1;
    b.runq_count--;
    t->status = T_RUNNING;
    return t->fib;
  }
  if (b.next_unstarted < b.nthreads) {
    fiber* f;
    if (!g_idle_fibers.empty()) {
      f = g_idle_fibers.back();
      g_idle_fibers.pop_back();
    } else {
      f = new_fiber();
    }
    f->thread = start_next_thread(f);
    return f;
  }
  return &g_main_fiber;
}

static void thread_finished(thread_state* t);

static void fiber_loop(fiber* self) {
  for (;;) {
    while (thread_state* t = self->thread) {
      g_current_thread = t;
      CUDA_EMU_RACE(race_set_thread(t->linear));
      g_run_thread(g_closure);
      thread_finished(t);
      block_state& b = g_block;
      self->thread = b.next_unstarted < b.nthreads ? start_next_thread(self) : nullptr;
    }
    fiber* next = pick_next_fiber();  // never self: self has no thread and is not idle yet
    g_idle_fibers.push_back(self);
    switch_fiber(self, next);
  }
}

static void fiber_entry(fiber* self) {
#if defined(CUDA_EMU_ASAN)
  const void* old_bottom = nullptr;
  size_t old_size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &old_bottom, &old_size);
  if (!g_main_stack_bottom) {  // the first fiber ever is entered from the main stack
    g_main_stack_bottom = old_bottom;
    g_main_stack_size = old_size;
  }
#endif
  fiber_loop(self);
}

// the running thread waits; returns when it was released
static void wait_here(thread_state* t) {
  fiber* next = pick_next_fiber();
  switch_fiber(t->fib, next);
  g_current_thread = t;
  CUDA_EMU_RACE(race_set_thread(t->linear));
}

// ---------------------------------------------------------------------------
// __syncthreads

static const char* barrier_name(int kind) {
  switch (kind) {
    case 0: return "__syncthreads_count";
    case 1: return "__syncthreads_and";
    case 2: return "__syncthreads_or";
    default: return "__syncthreads";
  }
}

static void describe_thread(char* buf, size_t n, const thread_state& t) {
  snprintf(buf, n, "(%u,%u,%u)", t.thread_idx.x, t.thread_idx.y, t.thread_idx.z);
}

[[noreturn]] static void barrier_deadlock(const char* why) {
  block_state& b = g_block;
  int first_exited = -1, first_waiting = -1;
  for (int i = 0; i < b.nthreads; i++) {
    if (b.threads[i].status == T_DONE && first_exited < 0) first_exited = i;
    if (b.threads[i].status == T_WAIT_BLOCK && first_waiting < 0) first_waiting = i;
  }
  char ex[64] = "", wt[64] = "";
  if (first_exited >= 0) describe_thread(ex, sizeof ex, b.threads[first_exited]);
  if (first_waiting >= 0) describe_thread(wt, sizeof wt, b.threads[first_waiting]);
  fatal("deadlock in kernel '%s': %s. %d of %d threads wait at %s (%s:%d)%s%s; %d threads exited%s%s. "
        "Every thread of a block must reach the same __syncthreads() (no barrier inside a divergent branch, "
        "no early return before a barrier).",
        g_kernel_name, why, b.barrier_arrived, b.nthreads, barrier_name(b.barrier_kind),
        b.barrier_file ? b.barrier_file : "?", b.barrier_line, first_waiting >= 0 ? ", e.g. thread " : "", wt,
        b.exited, first_exited >= 0 ? ", e.g. thread " : "", ex);
}

static int block_barrier(int kind, int predicate, const char* file, int line) {
  block_state& b = g_block;
  thread_state* t = g_current_thread;
  if (!g_kernel_name) fatal("%s called outside a kernel (%s:%d)", barrier_name(kind), file, line);
  if (b.barrier_arrived == 0) {
    b.barrier_file = file;
    b.barrier_line = line;
    b.barrier_kind = kind;
    b.barrier_acc = kind == 1 ? 1 : 0;
  } else if (b.barrier_line != line || b.barrier_kind != kind ||
             (b.barrier_file != file && strcmp(b.barrier_file, file) != 0)) {
    char me[64];
    describe_thread(me, sizeof me, *t);
    fatal("deadlock in kernel '%s': thread %s reached %s at %s:%d while %d threads wait at %s at %s:%d. "
          "All threads of a block must reach the same __syncthreads() (this one is in a divergent branch).",
          g_kernel_name, me, barrier_name(kind), file, line, b.barrier_arrived, barrier_name(b.barrier_kind),
          b.barrier_file, b.barrier_line);
  }
  if (b.exited > 0) {
    b.barrier_arrived++;
    t->status = T_WAIT_BLOCK;
    barrier_deadlock("a thread reached a barrier after other threads of its block had exited");
  }
  if (kind == 0) b.barrier_acc += predicate != 0;
  if (kind == 1) b.barrier_acc &= predicate != 0;
  if (kind == 2) b.barrier_acc |= predicate != 0;
  b.barrier_arrived++;
  if (b.barrier_arrived == b.nthreads) {
    // the last one releases the others and queues behind them, so that the
    // threads go on in the order they started (thread order, or its reverse)
    CUDA_EMU_RACE(race_barrier());
    int result = b.barrier_acc;
    for (int w : b.barrier_waiters) {
      b.threads[w].op_out = (unsigned long long)result;
      runq_push(w);
    }
    b.barrier_waiters.clear();
    b.barrier_arrived = 0;
    if (b.nthreads == 1) return result;
    t->op_out = (unsigned long long)result;
    t->status = T_WAIT_BLOCK;
    t->wait_file = file;
    t->wait_line = line;
    runq_push(t->linear);
    wait_here(t);
    return (int)t->op_out;
  }
  t->status = T_WAIT_BLOCK;
  t->wait_file = file;
  t->wait_line = line;
  b.barrier_waiters.push_back(t->linear);
  wait_here(t);
  return (int)t->op_out;
}

void syncthreads_at(const char* file, int line) { block_barrier(-1, 0, file, line); }
int syncthreads_reduce_at(int kind, int predicate, const char* file, int line) {
  return block_barrier(kind, predicate, file, line);
}

// ---------------------------------------------------------------------------
// warp operations

static const char* warp_op_name(int kind) {
  static const char* names[WARP_OP_COUNT] = {
      "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
      "__ballot_sync", "__any_sync", "__all_sync", "__match_any_sync", "__match_all_sync",
      "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync",
      "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync", "nvcuda::wmma"};
  return kind >= 0 && kind < WARP_OP_COUNT ? names[kind] : "warp operation";
}

static bool g_warned_inactive_source = false;

static void complete_warp_op(int warp, size_t op_index) {
  block_state& b = g_block;
  warp_state& w = b.warps[warp];
  warp_pending_op op = w.pending[op_index];
  w.pending.erase(w.pending.begin() + (long)op_index);
  thread_state* lanes = &b.threads[(size_t)warp * EMU_WARP];
  unsigned part = op.arrived;
  CUDA_EMU_RACE(race_warp_sync(warp, part));
  // votes and reductions over the participating lanes
  unsigned ballot = 0;
  unsigned long long red = 0;
  bool first = true;
  for (int l = 0; l < EMU_WARP; l++) {
    if (!(part >> l & 1u)) continue;
    unsigned long long v = lanes[l].op_in;
    if (v & 0xffffffffull) ballot |= 1u << l;
    unsigned u = (unsigned)v;
    int s = (int)u;
    switch (op.kind) {
      case WARP_REDUCE_ADD: red = (unsigned)((unsigned)red + u); break;
      case WARP_REDUCE_MIN: red = first ? u : (unsigned)std::min((int)(unsigned)red, s); break;
      case WARP_REDUCE_MAX: red = first ? u : (unsigned)std::max((int)(unsigned)red, s); break;
      case WARP_REDUCE_UMIN: red = first ? u : std::min((unsigned)red, u); break;
      case WARP_REDUCE_UMAX: red = first ? u : std::max((unsigned)red, u); break;
      case WARP_REDUCE_AND: red = first ? u : ((unsigned)red & u); break;
      case WARP_REDUCE_OR: red = first ? u : ((unsigned)red | u); break;
      case WARP_REDUCE_XOR: red = first ? u : ((unsigned)red ^ u); break;
      default: break;
    }
    first = false;
  }
  bool all_equal = true;
  for (int l = 0; l < EMU_WARP; l++) {
    if (!(part >> l & 1u)) continue;
    for (int m = 0; m < EMU_WARP; m++)
      if ((part >> m & 1u) && lanes[m].op_in != lanes[l].op_in) all_equal = false;
    break;
  }
  for (int l = 0; l < EMU_WARP; l++) {
    if (!(part >> l & 1u)) continue;
    thread_state& t = lanes[l];
    int width = t.op_width;
    int seg = l & ~(width - 1);
    int src = l;
    switch (op.kind) {
      case WARP_SHFL: src = seg + (t.op_param & (width - 1)); break;
      case WARP_SHFL_UP: src = (l - seg) >= t.op_param ? l - t.op_param : l; break;
      case WARP_SHFL_DOWN: src = (l - seg) + t.op_param < width ? l + t.op_param : l; break;
      case WARP_SHFL_XOR: {
        int x = l ^ t.op_param;
        src = (x >= seg + width || x >= EMU_WARP || x < 0) ? l : x;  // later groups: own value
        break;
      }
      default: break;
    }
    switch (op.kind) {
      case WARP_SHFL: case WARP_SHFL_UP: case WARP_SHFL_DOWN: case WARP_SHFL_XOR:
        if (src != l && !(part >> src & 1u)) {
          // reading a lane that is not taking part is undefined on a GPU
          if (!g_warned_inactive_source) {
            warn("kernel '%s': %s at %s:%d: lane %d of warp %d reads lane %d, which %s; the value is undefined on a "
                 "GPU, so it reads 0xff bytes here (warned once)",
                 g_kernel_name, warp_op_name(op.kind), op.file, op.line, l, warp, src,
                 (w.existing >> src & 1u) ? (w.exited >> src & 1u ? "has exited" : "is not in the mask")
                                          : "does not exist (partial warp)");
            g_warned_inactive_source = true;
          }
          t.op_out = ~0ull;
        } else {
          t.op_out = lanes[src].op_in;
        }
        break;
      case WARP_BALLOT: t.op_out = ballot; break;
      case WARP_ANY: t.op_out = ballot != 0; break;
      case WARP_ALL: t.op_out = ballot == part; break;
      case WARP_MATCH_ANY: {
        unsigned m = 0;
        for (int k = 0; k < EMU_WARP; k++)
          if ((part >> k & 1u) && lanes[k].op_in == t.op_in) m |= 1u << k;
        t.op_out = m;
        break;
      }
      case WARP_MATCH_ALL: t.op_out = all_equal ? part : 0; break;
      case WARP_SYNC: t.op_out = 0; break;
      default: t.op_out = red; break;
    }
    if (t.status == T_WAIT_WARP) runq_push(t.linear);
  }
}

static unsigned warp_live_lanes(const warp_state& w) { return w.existing & ~w.exited; }

// complete every pending op of the warp whose live lanes have all arrived
static void try_complete_warp(int warp) {
  warp_state& w = g_block.warps[warp];
  for (size_t i = 0; i < w.pending.size();) {
    unsigned needed = w.pending[i].mask & warp_live_lanes(w);
    if ((w.pending[i].arrived & needed) == needed)
      complete_warp_op(warp, i);  // erases entry i
    else
      i++;
  }
}

unsigned long long warp_op_at(int kind, unsigned mask, unsigned long long value, int value_size, int param, int width,
                              const char* file, int line) {
  if (!g_kernel_name) fatal("%s called outside a kernel (%s:%d)", warp_op_name(kind), file, line);
  block_state& b = g_block;
  thread_state* t = g_current_thread;
  warp_state& w = b.warps[t->warp];
  unsigned bit = 1u << t->lane;
  if (!(mask & bit))
    fatal("kernel '%s': %s at %s:%d called by lane %d with mask 0x%08x that does not contain the lane itself",
          g_kernel_name, warp_op_name(kind), file, line, t->lane, mask);
  if (width < 1 || width > EMU_WARP || (width & (width - 1)) != 0)
    fatal("kernel '%s': %s at %s:%d: width %d is not a power of two in [1, 32]", g_kernel_name, warp_op_name(kind),
          file, line, width);
  t->op_in = value;
  t->op_size = value_size;
  t->op_param = param;
  t->op_width = width;
  size_t idx = w.pending.size();
  for (size_t i = 0; i < w.pending.size(); i++) {
    warp_pending_op& op = w.pending[i];
    if (op.mask == mask) {
      if (op.kind != kind)
        fatal("kernel '%s', warp %d: lane %d calls %s at %s:%d while lanes 0x%08x wait in %s at %s:%d with the same "
              "mask; all lanes in a mask must call the same warp intrinsic",
              g_kernel_name, t->warp, t->lane, warp_op_name(kind), file, line, op.arrived, warp_op_name(op.kind),
              op.file, op.line);
      idx = i;
    } else if (op.mask & mask) {
      fatal("kernel '%s', warp %d: lane %d calls %s at %s:%d with mask 0x%08x while lanes 0x%08x wait in %s at %s:%d "
            "with the overlapping mask 0x%08x; all lanes named in a mask must use the same mask",
            g_kernel_name, t->warp, t->lane, warp_op_name(kind), file, line, mask, op.arrived, warp_op_name(op.kind),
            op.file, op.line, op.mask);
    }
  }
  if (idx == w.pending.size()) w.pending.push_back(warp_pending_op{mask, 0u, kind, file, line});
  w.pending[idx].arrived |= bit;
  unsigned needed = mask & warp_live_lanes(w);
  if ((w.pending[idx].arrived & needed) == needed) {
    complete_warp_op(t->warp, idx);
    return t->op_out;
  }
  t->status = T_WAIT_WARP;
  t->wait_file = file;
  t->wait_line = line;
  t->wait_kind = kind;
  t->wait_mask = mask;
  wait_here(t);
  return t->op_out;
}

unsigned active_mask() {
  if (!g_kernel_name) return 0;
  return warp_live_lanes(g_block.warps[g_current_thread->warp]);
}

static void thread_finished(thread_state* t) {
  block_state& b = g_block;
  t->status = T_DONE;
  b.done++;
  b.exited++;
  warp_state& w = b.warps[t->warp];
  w.exited |= 1u << t->lane;
  if (b.barrier_arrived > 0) barrier_deadlock("a thread exited while other threads of its block wait at a barrier");
  if (!w.pending.empty()) try_complete_warp(t->warp);
}

[[noreturn]] static void report_block_deadlock() {
  block_state& b = g_block;
  std::string lines;
  char buf[512];
  // group the waiting threads by what they wait for
  std::map<std::string, std::pair<int, int>> groups;  // description -> (count, first thread)
  for (int i = 0; i < b.nthreads; i++) {
    const thread_state& t = b.threads[i];
    if (t.status == T_WAIT_BLOCK)
      snprintf(buf, sizeof buf, "%s at %s:%d", barrier_name(b.barrier_kind), t.wait_file, t.wait_line);
    else if (t.status == T_WAIT_WARP)
      snprintf(buf, sizeof buf, "%s at %s:%d (warp %d, mask 0x%08x)", warp_op_name(t.wait_kind), t.wait_file,
               t.wait_line, t.warp, t.wait_mask);
    else
      continue;
    auto it = groups.find(buf);
    if (it == groups.end())
      groups[buf] = std::make_pair(1, i);
    else
      it->second.first++;
  }
  for (auto& g : groups) {
    char th[64];
    describe_thread(th, sizeof th, b.threads[g.second.second]);
    snprintf(buf, sizeof buf, "\n  %d threads wait in %s, e.g. thread %s", g.second.first, g.first.c_str(), th);
    lines += buf;
  }
  snprintf(buf, sizeof buf, "\n  %d threads exited", b.exited);
  lines += buf;
  g_current_thread = nullptr;
  fatal("deadlock in kernel '%s': no thread of the block can go on:%s\n"
        "  (a barrier or warp operation that not every required thread reaches)",
        g_kernel_name, lines.c_str());
}

// ---------------------------------------------------------------------------
// shared memory arena

static unsigned char* g_arena = nullptr;
static size_t g_arena_high_water = 0;  // bytes touched since the last re-poison
static size_t g_arena_cursor = 0;
static size_t g_dynamic_shared = 0;
static size_t g_static_shared = 0;
static size_t g_shared_limit = 0;  // static + dynamic allowed for this launch
static bool g_opted_in = false;

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static void arena_begin_block() {
  if (!g_arena) {
    g_arena = (unsigned char*)aligned_alloc(4096, EMU_ARENA_BYTES);
    if (!g_arena) fatal("cannot allocate the shared memory arena");
    g_arena_high_water = EMU_ARENA_BYTES;
  }
  CUDA_EMU_POISON(g_arena, g_arena_high_water);
  CUDA_EMU_UNPOISON(g_arena, g_dynamic_shared);
  memset(g_arena, EMU_GARBAGE_BYTE, g_dynamic_shared);
  g_arena_cursor = round_up(g_dynamic_shared + EMU_SHARED_REDZONE, 128);
  g_arena_high_water = g_arena_cursor;
  g_static_shared = 0;
  CUDA_EMU_RACE(race_block_begin(g_kernel_name, g_arena, EMU_ARENA_BYTES, g_dynamic_shared));
}

void shared_site_place(shared_site* site, size_t size, size_t align, const char* name) {
  if (!g_kernel_name) fatal("__shared__ variable '%s' used outside a kernel", name);
  g_static_shared += size;
  if (g_static_shared > EMU_SHARED_PER_BLOCK)
    fatal("kernel '%s': static __shared__ memory reaches %zu bytes with '%s' (%zu bytes); the limit for static "
          "shared memory is %zu bytes (use dynamic shared memory with the cudaFuncSetAttribute opt-in)",
          g_kernel_name, g_static_shared, name, size, EMU_SHARED_PER_BLOCK);
  if (g_static_shared + g_dynamic_shared > g_shared_limit)
    fatal("kernel '%s': shared memory %zu bytes static (reached with '%s') + %zu bytes dynamic exceeds the %zu-byte "
          "limit%s",
          g_kernel_name, g_static_shared, name, g_dynamic_shared, g_shared_limit,
          g_opted_in ? " (the opt-in maximum)"
                     : "; raise it with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n)");
  if (align < 16) align = 16;
  size_t offset = round_up(g_arena_cursor, align);
  if (offset + size + EMU_SHARED_REDZONE > EMU_ARENA_BYTES)
    fatal("kernel '%s': too many __shared__ variables for the emulator's arena", g_kernel_name);
  CUDA_EMU_UNPOISON(g_arena + offset, size);
  memset(g_arena + offset, EMU_GARBAGE_BYTE, size);
  g_arena_cursor = offset + size + EMU_SHARED_REDZONE;
  if (g_arena_cursor > g_arena_high_water) g_arena_high_water = g_arena_cursor;
  site->address = g_arena + offset;
  site->block_serial = g_block_serial;
  CUDA_EMU_RACE(race_shared_variable(offset, size, name));
}

void* dynamic_shared_memory(const char* name) {
  if (!g_kernel_name) fatal("extern __shared__ memory used outside a kernel");
  (void)name;
  CUDA_EMU_RACE(race_dynamic_shared_name(name));
  return g_arena;
}

// ---------------------------------------------------------------------------
// device memory registry: what cudaMalloc handed out, and what cudaFree took back

enum alloc_kind { ALLOC_DEVICE, ALLOC_PINNED, ALLOC_MANAGED };
struct allocation {
  size_t size;
  int kind;
};
static std::map<uintptr_t, allocation>& g_allocations = *new std::map<uintptr_t, allocation>();
static std::map<uintptr_t, size_t>& g_freed = *new std::map<uintptr_t, size_t>();  // recently freed device ranges
static std::deque<uintptr_t>& g_freed_order = *new std::deque<uintptr_t>();

// device memory accounting: the bytes requested by live cudaMalloc and
// cudaMallocManaged allocations (pinned host memory is not device memory),
// their high-water mark, and how many there are
static size_t g_device_live_bytes = 0;
static size_t g_device_peak_bytes = 0;
static size_t g_device_live_allocations = 0;
static bool counts_as_device_memory(int kind) { return kind != ALLOC_PINNED; }

// the host-side calls a training step should not make (cuda_emu.h,
// cuda_emu_api_counts): allocations and frees of any kind, and the calls that
// make the host wait for the device, as the CUDA runtime API's "API
// synchronization behavior" describes them: cudaDeviceSynchronize,
// cudaStreamSynchronize, cudaMemcpy between host and device (device to device
// does not wait), cudaMemcpyAsync from the device into pageable host memory,
// cudaMemcpyTo/FromSymbol. cudaEventSynchronize is counted apart: it waits
// for one earlier point of a stream, not for all work. each count also by the
// call's name, for the message of a test that finds one
static CudaEmuApiCounts g_api_counts;
static std::map<std::string, long long>& g_api_count_names = *new std::map<std::string, long long>();
static void count_api(long long* counter, const char* api) {
  (*counter)++;
  g_api_count_names[api]++;
}

// CUDA_EMU_DEVICE_MEMORY=<bytes>[K|M|G]: the emulated device's memory size;
// 0 when unset (then cudaMemGetInfo reports the host's memory and cudaMalloc
// has no limit but the host's)
static size_t emu_device_memory_total() {
  static const size_t total = [] {
    const char* v = getenv("CUDA_EMU_DEVICE_MEMORY");
    if (!v || !*v) return (size_t)0;
    char* end = nullptr;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    unsigned long long scale = 1;
    if (end != v && *end && !end[1]) {
      switch (*end) {
        case 'K': case 'k': scale = 1ull << 10; end++; break;
        case 'M': case 'm': scale = 1ull << 20; end++; break;
        case 'G': case 'g': scale = 1ull << 30; end++; break;
        default: break;
      }
    }
    if (end == v || *end != 0 || errno != 0 || v[0] < '0' || v[0] > '9' || x == 0 || x > SIZE_MAX / scale) {
      fprintf(stderr, "cuda_emu: ignoring CUDA_EMU_DEVICE_MEMORY=%s (expected a positive number of bytes, "
              "optionally with K, M or G)\n", v);
      return (size_t)0;
    }
    return (size_t)(x * scale);
  }();
  return total;
}

static void print_device_memory() {
  fprintf(stderr, "cuda_emu: device memory: peak %zu bytes, live at exit %zu bytes in %zu allocations\n",
          g_device_peak_bytes, g_device_live_bytes, g_device_live_allocations);
}

// CUDA_EMU_MEMORY=1 prints the line above at exit; checked at startup, so that
// a program that never launches a kernel (or never allocates) prints it too
__attribute__((constructor)) static void device_memory_report_init() {
  const char* m = getenv("CUDA_EMU_MEMORY");
  if (m && *m && strcmp(m, "0") != 0) atexit(print_device_memory);
}

// the allocation that contains p (one past the end counts), or null
static const allocation* find_allocation(const void* p, uintptr_t* base) {
  uintptr_t a = (uintptr_t)p;
  auto it = g_allocations.upper_bound(a);
  if (it == g_allocations.begin()) return nullptr;
  --it;
  if (a > it->first + it->second.size) return nullptr;
  if (base) *base = it->first;
  return &it->second;
}

static bool in_freed_range(const void* p) {
  uintptr_t a = (uintptr_t)p;
  auto it = g_freed.upper_bound(a);
  if (it == g_freed.begin()) return false;
  --it;
  return a < it->first + it->second;
}

static const char* kind_name(int kind) {
  switch (kind) {
    case ALLOC_DEVICE: return "device memory (cudaMalloc)";
    case ALLOC_PINNED: return "pinned host memory (cudaMallocHost)";
    default: return "managed memory (cudaMallocManaged)";
  }
}

void check_kernel_pointer_argument(const char* kernel_name, int index, const void* p) {
  if (!p) return;
  if (find_allocation(p, nullptr)) return;
  if (in_freed_range(p))
    fatal("kernel '%s': argument %d (%p) points into device memory that was freed by cudaFree", kernel_name, index,
          p);
  fatal("kernel '%s': argument %d (%p) is not device memory (a host pointer?); a GPU would fault on it", kernel_name,
        index, p);
}

// ---------------------------------------------------------------------------
// launches

static std::unordered_map<const void*, int>& g_max_dynamic_shared =
    *new std::unordered_map<const void*, int>();  // cudaFuncSetAttribute opt-ins
static cudaError_t g_last_error = cudaSuccess;

// ---------------------------------------------------------------------------
// registers per kernel, from ptxas: the launch-resource check. With nvcc
// present, emu.mk compiles X.cu's device code for sm_90 as well and links a
// table of each kernel's registers and __launch_bounds__ into X_emu
// (cuda_emu_regs.py), which registers itself here before main. A launch is
// matched to its kernel by the mangled name of the function it names (g++ and
// nvcc mangle a kernel alike; dladdr finds the name, the program is linked
// with -rdynamic); a launch that deduces a template kernel's arguments
// names no function, and gets the largest count over the kernel's
// instantiations (the same for a kernel whose name dladdr cannot see).

struct kernel_resources {
  int registers = 0;    // per thread
  int max_threads = 0;  // __launch_bounds__ (ptx .maxntid), 0: none
  bool exact = true;    // false: the largest over several instantiations
};
struct resource_tables {
  std::string source, arch;
  std::unordered_map<std::string, kernel_resources> by_mangled;
  std::unordered_map<std::string, kernel_resources> by_name;  // by unqualified name, over instantiations
  std::unordered_map<const void*, const kernel_resources*> by_address;  // lookups so far
  std::unordered_map<const char*, const kernel_resources*> by_launch_name;
};
static resource_tables& resources() {  // a function static: tables register from static constructors
  static resource_tables& t = *new resource_tables();
  return t;
}

// "kernel" from "void ns::kernel<float, 4>(float*, int)" or "ns::kernel<T>" or "kernel"
static std::string unqualified_kernel_name(std::string s) {
  for (size_t at; (at = s.find("(anonymous namespace)::")) != std::string::npos;) s.erase(at, 23);
  if (s.compare(0, 5, "void ") == 0) s.erase(0, 5);
  size_t end = s.find_first_of("<(");
  if (end != std::string::npos) s.erase(end);
  size_t colon = s.rfind("::");
  if (colon != std::string::npos) s.erase(0, colon + 2);
  size_t a = s.find_first_not_of(" \t*&"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

}  // namespace cuda_emu

extern "C" void cuda_emu_register_kernel_resources(const char* source, const char* arch, int n,
                                                   const char* const* mangled, const int* registers,
                                                   const int* max_threads) {
  cuda_emu::resource_tables& t = cuda_emu::resources();
  t.source = source;
  t.arch = arch;
  for (int i = 0; i < n; i++) {
    cuda_emu::kernel_resources r;
    r.registers = registers[i];
    r.max_threads = max_threads[i];
    t.by_mangled[mangled[i]] = r;
    int status = 0;
    char* d = abi::__cxa_demangle(mangled[i], nullptr, nullptr, &status);
    std::string name = cuda_emu::unqualified_kernel_name(status == 0 && d ? d : mangled[i]);
    free(d);
    auto it = t.by_name.find(name);
    if (it == t.by_name.end()) {
      t.by_name[name] = r;
    } else {  // another instantiation: the largest count, the smallest bound
      cuda_emu::kernel_resources& m = it->second;
      if (m.registers != r.registers || m.max_threads != r.max_threads) m.exact = false;
      m.registers = std::max(m.registers, r.registers);
      if (r.max_threads && (!m.max_threads || r.max_threads < m.max_threads)) m.max_threads = r.max_threads;
    }
  }
}

namespace cuda_emu {

// the resources of the kernel a launch names, or null when there is no table
// or the kernel is not in it
static const kernel_resources* find_kernel_resources(const char* launch_name, const void* kernel) {
  resource_tables& t = resources();
  if (t.by_mangled.empty()) return nullptr;
  if (kernel) {
    auto cached = t.by_address.find(kernel);
    if (cached != t.by_address.end()) return cached->second;
  } else {
    auto cached = t.by_launch_name.find(launch_name);
    if (cached != t.by_launch_name.end()) return cached->second;
  }
  const kernel_resources* r = nullptr;
  Dl_info info;
  if (kernel && dladdr(kernel, &info) && info.dli_sname && info.dli_saddr == kernel) {
    auto it = t.by_mangled.find(info.dli_sname);
    if (it != t.by_mangled.end()) r = &it->second;
  }
  if (!r && launch_name) {
    auto it = t.by_name.find(unqualified_kernel_name(launch_name));
    if (it != t.by_name.end()) r = &it->second;
  }
  if (kernel)
    t.by_address[kernel] = r;
  else
    t.by_launch_name[launch_name] = r;
  return r;
}

// registers a block of `threads` threads takes: whole warps, each holding
// 32 x regs rounded up to the allocation unit
static long long block_registers(int registers, long long threads) {
  long long per_warp = ((long long)registers * EMU_WARP + EMU_REGISTER_ALLOCATION_UNIT - 1) /
                       EMU_REGISTER_ALLOCATION_UNIT * EMU_REGISTER_ALLOCATION_UNIT;
  return (threads + EMU_WARP - 1) / EMU_WARP * per_warp;
}

// the largest block the kernel can be launched with
static int max_block_threads(const kernel_resources& r) {
  int limit = EMU_MAX_THREADS_PER_BLOCK;
  if (r.max_threads) limit = std::min(limit, r.max_threads);
  while (limit > 0 && block_registers(r.registers, limit) > EMU_REGISTERS_PER_SM) limit -= EMU_WARP;
  return limit;
}

// a launch a GPU would refuse with cudaErrorLaunchOutOfResources
static void check_launch_resources(const char* kernel_name, const void* kernel, const dim3& block) {
  const kernel_resources* r = find_kernel_resources(kernel_name, kernel);
  if (!r) return;
  const resource_tables& t = resources();
  long long threads = (long long)block.x * block.y * block.z;
  std::string how = r->exact ? "" : " (the largest over the instantiations of '" + unqualified_kernel_name(kernel_name) +
                                        "': the emulator cannot tell which one this launch runs, as it deduces the "
                                        "template arguments or names a function the program does not export)";
  if (r->max_threads && threads > r->max_threads)
    fatal("kernel '%s' launched with block (%u,%u,%u) = %lld threads, above its __launch_bounds__ of %d threads%s "
          "(ptxas for %s, %s). A GPU refuses this launch with cudaErrorLaunchOutOfResources (\"too many resources "
          "requested for launch\"): launch at most %d threads per block, or raise the bound.",
          kernel_name, block.x, block.y, block.z, threads, r->max_threads, how.c_str(), t.arch.c_str(),
          t.source.c_str(), r->max_threads);
  long long need = block_registers(r->registers, threads);
  if (need > EMU_REGISTERS_PER_SM)
    fatal("kernel '%s' launched with block (%u,%u,%u) = %lld threads, but it uses %d registers per thread%s "
          "(ptxas for %s, %s): %lld warps x %lld registers = %lld registers, above the %d registers of a "
          "multiprocessor. A GPU refuses this launch with cudaErrorLaunchOutOfResources (\"too many resources "
          "requested for launch\"): launch at most %d threads per block, or cap the registers with "
          "__launch_bounds__(%lld).",
          kernel_name, block.x, block.y, block.z, threads, r->registers, how.c_str(), t.arch.c_str(),
          t.source.c_str(), (threads + EMU_WARP - 1) / EMU_WARP, need / ((threads + EMU_WARP - 1) / EMU_WARP), need,
          EMU_REGISTERS_PER_SM, max_block_threads(*r), threads);
}

struct kernel_stats {
  unsigned long long launches = 0, blocks = 0, threads = 0;
  double seconds = 0;
};
static std::map<std::string, kernel_stats>* g_stats = nullptr;

static void print_stats() {
  if (!g_stats) return;
  fprintf(stderr, "cuda_emu: kernel statistics (CUDA_EMU_STATS=1)\n");
  fprintf(stderr, "  %-48s %10s %12s %14s %10s\n", "kernel", "launches", "blocks", "threads", "seconds");
  double total = 0;
  for (auto& s : *g_stats) {
    fprintf(stderr, "  %-48s %10llu %12llu %14llu %10.3f\n", s.first.c_str(), s.second.launches, s.second.blocks,
            s.second.threads, s.second.seconds);
    total += s.second.seconds;
  }
  fprintf(stderr, "  total kernel time %.3f s\n", total);
}

static bool is_valid_stream(cudaStream_t s);

static void init_once() {
  static bool done = false;
  if (done) return;
  done = true;
#if defined(CUDA_EMU_ASAN)
  __sanitizer_set_death_callback(asan_death_callback);
#endif
  const char* st = getenv("CUDA_EMU_STATS");
  if (st && *st && strcmp(st, "0") != 0) {
    g_stats = new std::map<std::string, kernel_stats>();
    atexit(print_stats);
  }
}

void run_grid(const char* kernel_name, const void* kernel, const launch_config& cfg, void (*run_thread)(void*),
              void* closure) {
  init_once();
  if (g_kernel_name)
    fatal("kernel '%s' launched from inside kernel '%s': dynamic parallelism is not supported", kernel_name,
          g_kernel_name);
  const dim3 grid = cfg.grid, block = cfg.block;
  unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    fatal("kernel '%s' launched with an empty configuration: grid (%u,%u,%u), block (%u,%u,%u) (a GPU returns "
          "cudaErrorInvalidConfiguration)",
          kernel_name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
  if (nthreads > (unsigned long long)EMU_MAX_THREADS_PER_BLOCK || block.x > (unsigned)EMU_MAX_BLOCK_DIM_XY ||
      block.y > (unsigned)EMU_MAX_BLOCK_DIM_XY || block.z > (unsigned)EMU_MAX_BLOCK_DIM_Z)
    fatal("kernel '%s' launched with block (%u,%u,%u) = %llu threads; the limit is %d threads per block, at most "
          "(%d,%d,%d) (a GPU returns cudaErrorInvalidConfiguration)",
          kernel_name, block.x, block.y, block.z, nthreads, EMU_MAX_THREADS_PER_BLOCK, EMU_MAX_BLOCK_DIM_XY,
          EMU_MAX_BLOCK_DIM_XY, EMU_MAX_BLOCK_DIM_Z);
  if (grid.x > EMU_MAX_GRID_DIM_X || grid.y > EMU_MAX_GRID_DIM_YZ || grid.z > EMU_MAX_GRID_DIM_YZ)
    fatal("kernel '%s' launched with grid (%u,%u,%u); the limits are (%u,%u,%u)", kernel_name, grid.x, grid.y, grid.z,
          EMU_MAX_GRID_DIM_X, EMU_MAX_GRID_DIM_YZ, EMU_MAX_GRID_DIM_YZ);
  if (!is_valid_stream(cfg.stream))
    fatal("kernel '%s' launched on stream %p, which is not a live stream", kernel_name, (void*)cfg.stream);
  check_launch_resources(kernel_name, kernel, block);
  // shared memory: 48 KiB unless the kernel opted in with cudaFuncSetAttribute
  size_t dyn_limit = EMU_SHARED_PER_BLOCK;
  g_opted_in = false;
  if (kernel) {
    auto it = g_max_dynamic_shared.find(kernel);
    if (it != g_max_dynamic_shared.end() && (size_t)it->second > EMU_SHARED_PER_BLOCK) {
      dyn_limit = (size_t)it->second;
      g_opted_in = true;
    }
  }
  if (cfg.shared_bytes > dyn_limit) {
    if (g_opted_in)
      fatal("kernel '%s' launched with %zu bytes of dynamic shared memory, above its opt-in of %zu bytes set with "
            "cudaFuncSetAttribute",
            kernel_name, cfg.shared_bytes, dyn_limit);
    else if (kernel)
      fatal("kernel '%s' launched with %zu bytes of dynamic shared memory; above %zu bytes it needs "
            "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first (maximum %zu)",
            kernel_name, cfg.shared_bytes, EMU_SHARED_PER_BLOCK, EMU_SHARED_PER_BLOCK_OPTIN);
    else
      fatal("kernel '%s' launched with %zu bytes of dynamic shared memory, above %zu bytes; the emulator cannot see "
            "the cudaFuncSetAttribute opt-in of a template kernel whose arguments are deduced: launch it with "
            "explicit template arguments",
            kernel_name, cfg.shared_bytes, EMU_SHARED_PER_BLOCK);
  }
  g_dynamic_shared = cfg.shared_bytes;
  g_shared_limit = g_opted_in ? EMU_SHARED_PER_BLOCK_OPTIN : EMU_SHARED_PER_BLOCK;

  auto t0 = std::chrono::steady_clock::now();
  g_kernel_name = kernel_name;
  g_run_thread = run_thread;
  g_closure = closure;
  g_grid_dim = grid;
  g_block_dim = block;

  // per-thread bookkeeping, reused by every block of the launch
  block_state& b = g_block;
  int n = (int)nthreads;
  b.nthreads = n;
  b.nwarps = (n + EMU_WARP - 1) / EMU_WARP;
  b.threads.assign((size_t)n, thread_state());
  b.start_order.resize((size_t)n);
  b.runq.assign((size_t)n, 0);
  b.warps.assign((size_t)b.nwarps, warp_state());
  b.barrier_waiters.clear();
  b.barrier_waiters.reserve((size_t)n);
  static const bool reverse = [] {
    const char* o = getenv("CUDA_EMU_THREAD_ORDER");
    if (o && strcmp(o, "reverse") == 0) return true;
    if (o && *o && strcmp(o, "forward") != 0)
      fprintf(stderr, "cuda_emu: ignoring CUDA_EMU_THREAD_ORDER=%s (expected forward or reverse)\n", o);
    return false;
  }();
  for (int i = 0; i < n; i++) b.start_order[(size_t)i] = reverse ? n - 1 - i : i;
  for (int w = 0; w < b.nwarps; w++) {
    int lanes = std::min(EMU_WARP, n - w * EMU_WARP);
    b.warps[(size_t)w].existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }

  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        g_block_idx = make_uint3(bx, by, bz);
        g_block_serial++;
        arena_begin_block();
        int i = 0;
        for (unsigned tz = 0; tz < block.z; tz++)
          for (unsigned ty = 0; ty < block.y; ty++)
            for (unsigned tx = 0; tx < block.x; tx++, i++) {
              thread_state& t = b.threads[(size_t)i];
              t.thread_idx = make_uint3(tx, ty, tz);
              t.linear = i;
              t.lane = i % EMU_WARP;
              t.warp = i / EMU_WARP;
              t.status = T_NOT_STARTED;
              t.fib = nullptr;
            }
        for (auto& w : b.warps) {
          w.exited = 0;
          w.pending.clear();
        }
        b.next_unstarted = 0;
        b.done = 0;
        b.exited = 0;
        b.runq_head = 0;
        b.runq_count = 0;
        b.barrier_arrived = 0;
        fiber* first = pick_next_fiber();
        switch_fiber(&g_main_fiber, first);
        if (b.done != b.nthreads) report_block_deadlock();
      }
  g_kernel_name = nullptr;
  g_current_thread = nullptr;
  CUDA_EMU_RACE(race_launch_end());
  if (g_stats) {
    kernel_stats& s = (*g_stats)[kernel_name];
    s.launches++;
    s.blocks += (unsigned long long)grid.x * grid.y * grid.z;
    s.threads += (unsigned long long)grid.x * grid.y * grid.z * nthreads;
    s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
}

}  // namespace cuda_emu

// ---------------------------------------------------------------------------
// CUDA runtime API, with the real headers' signatures

using namespace cuda_emu;

struct CUstream_st {
  int magic;
};
struct CUevent_st {
  int magic;
  unsigned flags;
  bool recorded;
  double time_ms;
};
static const int STREAM_MAGIC = 0x57ea3;
static const int EVENT_MAGIC = 0xe7e47;
static std::set<cudaStream_t>& g_streams = *new std::set<cudaStream_t>();
static std::set<cudaEvent_t>& g_events = *new std::set<cudaEvent_t>();

namespace cuda_emu {
static bool is_valid_stream(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread || g_streams.count(s) > 0;
}
bool is_device_range(const void* p, size_t n) {
  uintptr_t base = 0;
  const allocation* a = find_allocation(p, &base);
  return a && a->kind != ALLOC_PINNED && (uintptr_t)p + n <= base + a->size;
}
// a short description of what p is, for error messages
std::string describe_pointer(const void* p, size_t n) {
  char buf[256];
  uintptr_t base = 0;
  const allocation* a = find_allocation(p, &base);
  if (!p) return "a null pointer";
  if (a) {
    if ((uintptr_t)p + n > base + a->size)
      snprintf(buf, sizeof buf, "%p, %zu bytes into %s of %zu bytes, so %zu bytes run past its end", p,
               (size_t)((uintptr_t)p - base), kind_name(a->kind), a->size, (size_t)((uintptr_t)p + n - base - a->size));
    else
      snprintf(buf, sizeof buf, "%p in %s", p, kind_name(a->kind));
  } else if (in_freed_range(p)) {
    snprintf(buf, sizeof buf, "%p in device memory freed by cudaFree", p);
  } else {
    snprintf(buf, sizeof buf, "%p, host memory (not from cudaMalloc)", p);
  }
  return buf;
}
const char* current_kernel_name() { return g_kernel_name; }
}  // namespace cuda_emu

static cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}

static double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static void register_allocation(void* p, size_t size, int kind) {
  g_allocations[(uintptr_t)p] = allocation{size, kind};
  g_freed.erase((uintptr_t)p);
  if (counts_as_device_memory(kind)) {
    g_device_live_bytes += size;
    g_device_live_allocations++;
    if (g_device_live_bytes > g_device_peak_bytes) g_device_peak_bytes = g_device_live_bytes;
  }
}

static cudaError_t emu_alloc(void** ptr, size_t size, int kind, const char* api) {
  init_once();
  if (!ptr) {
    fprintf(stderr, "cuda_emu: %s called with a null result pointer\n", api);
    return set_error(cudaErrorInvalidValue);
  }
  if (size == 0) {
    *ptr = nullptr;
    return cudaSuccess;
  }
  // with CUDA_EMU_DEVICE_MEMORY set, cudaMalloc fails as on a full GPU
  size_t total = emu_device_memory_total();
  if (total && kind == ALLOC_DEVICE && (g_device_live_bytes > total || size > total - g_device_live_bytes)) {
    fprintf(stderr, "cuda_emu: %s(%zu bytes): out of memory: %zu of the %zu bytes of CUDA_EMU_DEVICE_MEMORY "
            "are in use\n", api, size, g_device_live_bytes, total);
    *ptr = nullptr;
    return set_error(cudaErrorMemoryAllocation);
  }
  // 256-byte alignment like cudaMalloc, and exactly `size` bytes, so that
  // AddressSanitizer's redzone starts right after the last element; fresh
  // memory holds garbage (0xff bytes, NaN as float) so that code relying on
  // zeroed allocations fails here too
  void* p = nullptr;
  if (posix_memalign(&p, 256, size) != 0 || !p) return set_error(cudaErrorMemoryAllocation);
  memset(p, EMU_GARBAGE_BYTE, size);
  register_allocation(p, size, kind);
  count_api(&g_api_counts.allocations, api);
  *ptr = p;
  return cudaSuccess;
}

static cudaError_t emu_free(void* p, int expected_kind, const char* api) {
  if (!p) return cudaSuccess;
  if (g_kernel_name) fatal("%s called from inside a kernel", api);
  auto it = g_allocations.find((uintptr_t)p);
  if (it == g_allocations.end()) {
    fprintf(stderr, "cuda_emu: %s(%s): not the start of a live allocation%s\n", api, describe_pointer(p, 0).c_str(),
            in_freed_range(p) ? " (double free?)" : "");
    return set_error(cudaErrorInvalidValue);
  }
  if ((expected_kind == ALLOC_PINNED) != (it->second.kind == ALLOC_PINNED)) {
    fprintf(stderr, "cuda_emu: %s(%p): the pointer is %s\n", api, p, kind_name(it->second.kind));
    return set_error(cudaErrorInvalidValue);
  }
  size_t size = it->second.size;
  if (counts_as_device_memory(it->second.kind)) {
    g_device_live_bytes -= size;
    g_device_live_allocations--;
  }
  g_allocations.erase(it);
  count_api(&g_api_counts.frees, api);
  g_freed[(uintptr_t)p] = size;
  g_freed_order.push_back((uintptr_t)p);
  if (g_freed_order.size() > EMU_FREED_RANGES_KEPT) {
    g_freed.erase(g_freed_order.front());
    g_freed_order.pop_front();
  }
  // AddressSanitizer's quarantine keeps the freed block poisoned for a while,
  // so a kernel that still uses it gets a heap-use-after-free report
  free(p);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** devPtr, size_t size) { return emu_alloc(devPtr, size, ALLOC_DEVICE, "cudaMalloc"); }
cudaError_t cudaMallocManaged(void** devPtr, size_t size, unsigned int flags) {
  (void)flags;
  return emu_alloc(devPtr, size, ALLOC_MANAGED, "cudaMallocManaged");
}
cudaError_t cudaMallocHost(void** ptr, size_t size) { return emu_alloc(ptr, size, ALLOC_PINNED, "cudaMallocHost"); }
cudaError_t cudaHostAlloc(void** pHost, size_t size, unsigned int flags) {
  (void)flags;
  return emu_alloc(pHost, size, ALLOC_PINNED, "cudaHostAlloc");
}
cudaError_t cudaHostGetDevicePointer(void** pDevice, void* pHost, unsigned int flags) {
  (void)flags;
  *pDevice = pHost;
  return cudaSuccess;
}
cudaError_t cudaFree(void* devPtr) { return emu_free(devPtr, ALLOC_DEVICE, "cudaFree"); }
cudaError_t cudaFreeHost(void* ptr) { return emu_free(ptr, ALLOC_PINNED, "cudaFreeHost"); }

// device memory accounting, for tests (declared in cuda_emu.h)
extern "C" void cuda_emu_device_memory(size_t* live_bytes, size_t* peak_bytes, size_t* live_allocations) {
  if (live_bytes) *live_bytes = g_device_live_bytes;
  if (peak_bytes) *peak_bytes = g_device_peak_bytes;
  if (live_allocations) *live_allocations = g_device_live_allocations;
}
extern "C" void cuda_emu_device_memory_reset_peak(void) { g_device_peak_bytes = g_device_live_bytes; }

extern "C" void cuda_emu_api_counts(CudaEmuApiCounts* out) { *out = g_api_counts; }
extern "C" void cuda_emu_api_counts_reset(void) {
  g_api_counts = CudaEmuApiCounts{};
  g_api_count_names.clear();
}
extern "C" void cuda_emu_api_counts_print(FILE* f, const char* indent) {
  for (const auto& kv : g_api_count_names) fprintf(f, "%s%s: %lld\n", indent, kv.first.c_str(), kv.second);
}

static const char* memcpy_kind_name(cudaMemcpyKind kind) {
  switch (kind) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
    default: return "an invalid cudaMemcpyKind";
  }
}

// one side of a copy: device (or managed) memory when want_device, else host
// memory (pageable, pinned or managed). Freed device ranges are not held
// against host pointers: malloc may hand that memory out again.
enum copy_side { SIDE_DEVICE, SIDE_HOST, SIDE_ANY };
static bool check_copy_side(const char* api, cudaMemcpyKind kind, const char* side, const void* p, size_t n,
                            copy_side want) {
  uintptr_t base = 0;
  const allocation* a = find_allocation(p, &base);
  bool fits = a && (uintptr_t)p + n <= base + a->size;
  bool ok;
  if (!p)
    ok = false;
  else if (want == SIDE_DEVICE)
    ok = a && a->kind != ALLOC_PINNED && fits;
  else if (want == SIDE_HOST)
    ok = !a || (a->kind != ALLOC_DEVICE && fits);
  else
    ok = !a || fits;
  if (!ok)
    fprintf(stderr, "cuda_emu: %s(%s, %zu bytes): the %s should be %s but is %s\n", api, memcpy_kind_name(kind), n,
            side, want == SIDE_DEVICE ? "a device range" : want == SIDE_HOST ? "host memory" : "a valid range",
            describe_pointer(p, n).c_str());
  return ok;
}

static cudaError_t emu_memcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* api) {
  if (g_kernel_name) fatal("%s called from inside a kernel", api);
  if (count == 0) return cudaSuccess;
  copy_side to, from;
  switch (kind) {
    case cudaMemcpyHostToDevice: to = SIDE_DEVICE; from = SIDE_HOST; break;
    case cudaMemcpyDeviceToHost: to = SIDE_HOST; from = SIDE_DEVICE; break;
    case cudaMemcpyDeviceToDevice: to = SIDE_DEVICE; from = SIDE_DEVICE; break;
    case cudaMemcpyHostToHost: to = SIDE_HOST; from = SIDE_HOST; break;
    case cudaMemcpyDefault: to = SIDE_ANY; from = SIDE_ANY; break;
    default:
      fprintf(stderr, "cuda_emu: %s: invalid cudaMemcpyKind %d\n", api, (int)kind);
      return set_error(cudaErrorInvalidMemcpyDirection);
  }
  if (!check_copy_side(api, kind, "destination", dst, count, to) ||
      !check_copy_side(api, kind, "source", src, count, from))
    return set_error(cudaErrorInvalidValue);
  memmove(dst, src, count);
  return cudaSuccess;
}

// true when p is device or managed memory (a copy's device side)
static bool is_device_side(const void* p) {
  uintptr_t base = 0;
  const allocation* a = find_allocation(p, &base);
  return a && a->kind != ALLOC_PINNED;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  bool dst_dev = is_device_side(dst), src_dev = is_device_side(src);
  if (count > 0 && dst_dev != src_dev) count_api(&g_api_counts.host_waits, "cudaMemcpy");
  return emu_memcpy(dst, src, count, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind, cudaStream_t stream) {
  if (!is_valid_stream(stream)) return set_error(cudaErrorInvalidResourceHandle);
  uintptr_t base = 0;
  if (count > 0 && is_device_side(src) && !is_device_side(dst) && !find_allocation(dst, &base))
    count_api(&g_api_counts.host_waits, "cudaMemcpyAsync into pageable host memory");
  return emu_memcpy(dst, src, count, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemcpyToSymbol(const void* symbol, const void* src, size_t count, size_t offset,
                               enum cudaMemcpyKind kind) {
  (void)kind;
  count_api(&g_api_counts.host_waits, "cudaMemcpyToSymbol");
  memmove((char*)symbol + offset, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyFromSymbol(void* dst, const void* symbol, size_t count, size_t offset,
                                 enum cudaMemcpyKind kind) {
  (void)kind;
  count_api(&g_api_counts.host_waits, "cudaMemcpyFromSymbol");
  memmove(dst, (const char*)symbol + offset, count);
  return cudaSuccess;
}
cudaError_t cudaGetSymbolAddress(void** devPtr, const void* symbol) {
  *devPtr = (void*)symbol;
  return cudaSuccess;
}

static cudaError_t emu_memset(void* devPtr, int value, size_t count, const char* api) {
  if (g_kernel_name) fatal("%s called from inside a kernel", api);
  if (count == 0) return cudaSuccess;
  if (!is_device_range(devPtr, count)) {
    fprintf(stderr, "cuda_emu: %s(%zu bytes): the destination should be a device range but is %s\n", api, count,
            describe_pointer(devPtr, count).c_str());
    return set_error(cudaErrorInvalidValue);
  }
  memset(devPtr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* devPtr, int value, size_t count) { return emu_memset(devPtr, value, count, "cudaMemset"); }
cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  if (!is_valid_stream(stream)) return set_error(cudaErrorInvalidResourceHandle);
  return emu_memset(devPtr, value, count, "cudaMemsetAsync");
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (size_t total = emu_device_memory_total()) {  // CUDA_EMU_DEVICE_MEMORY
    *free_bytes = g_device_live_bytes < total ? total - g_device_live_bytes : 0;
    *total_bytes = total;
    return cudaSuccess;
  }
  struct sysinfo si;
  sysinfo(&si);
  *free_bytes = (size_t)si.freeram * si.mem_unit;
  *total_bytes = (size_t)si.totalram * si.mem_unit;
  return cudaSuccess;
}

// streams and events: everything is synchronous, events take a host timestamp
cudaError_t cudaStreamCreate(cudaStream_t* pStream) {
  cudaStream_t s = new CUstream_st{STREAM_MAGIC};
  g_streams.insert(s);
  *pStream = s;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  (void)flags;
  return cudaStreamCreate(pStream);
}
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* pStream, unsigned int flags, int priority) {
  (void)flags;
  (void)priority;
  return cudaStreamCreate(pStream);
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* leastPriority, int* greatestPriority) {
  if (leastPriority) *leastPriority = 0;
  if (greatestPriority) *greatestPriority = -5;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!g_streams.erase(stream)) {
    fprintf(stderr, "cuda_emu: cudaStreamDestroy(%p): not a live stream\n", (void*)stream);
    return set_error(cudaErrorInvalidResourceHandle);
  }
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  count_api(&g_api_counts.host_waits, "cudaStreamSynchronize");
  return is_valid_stream(stream) ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return is_valid_stream(stream) ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  (void)flags;
  if (!is_valid_stream(stream) || !g_events.count(event)) return set_error(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  cudaEvent_t e = new CUevent_st{EVENT_MAGIC, flags, false, 0.0};
  g_events.insert(e);
  *event = e;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!g_events.count(event) || !is_valid_stream(stream)) return set_error(cudaErrorInvalidResourceHandle);
  event->recorded = true;
  event->time_ms = now_ms();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  count_api(&g_api_counts.event_waits, "cudaEventSynchronize");
  return g_events.count(event) ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  return g_events.count(event) ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!g_events.count(start) || !g_events.count(end)) return set_error(cudaErrorInvalidResourceHandle);
  if ((start->flags | end->flags) & cudaEventDisableTiming) return set_error(cudaErrorInvalidResourceHandle);
  if (!start->recorded || !end->recorded) return set_error(cudaErrorInvalidResourceHandle);
  *ms = (float)(end->time_ms - start->time_ms);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!g_events.erase(event)) return set_error(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}

// device
cudaError_t cudaDeviceSynchronize(void) {
  count_api(&g_api_counts.host_waits, "cudaDeviceSynchronize");
  return cudaSuccess;
}
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }
// the machine a program sees can be varied, to test its error paths:
// CUDA_EMU_DEVICES=0 has no GPU (cudaErrorNoDevice, as the real runtime);
// CUDA_EMU_DEVICES=K (1..64) has K devices, as a node of K GPUs for a
// data-parallel launcher's LOCAL_RANK (they are all this CPU and its memory:
// the device number changes nothing else); CUDA_EMU_DRIVER_VERSION=N below
// this build's CUDART_VERSION is a driver too old for it (cudaErrorInsufficientDriver)
static int emu_driver_version(void) {
  const char* v = getenv("CUDA_EMU_DRIVER_VERSION");
  return v && *v ? atoi(v) : CUDART_VERSION;
}
static int emu_device_count(void) {
  const char* devices = getenv("CUDA_EMU_DEVICES");
  if (devices == NULL || *devices == '\0') return 1;
  int k = atoi(devices);
  return k < 0 ? 0 : k > 64 ? 64 : k;
}
static int g_current_device = 0;
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 0;
  if (emu_driver_version() < CUDART_VERSION) return set_error(cudaErrorInsufficientDriver);
  if (emu_device_count() == 0) return set_error(cudaErrorNoDevice);
  *count = emu_device_count();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= emu_device_count()) {
    fprintf(stderr, "cuda_emu: cudaSetDevice(%d): the emulator has %d device(s) (CUDA_EMU_DEVICES)\n", device,
            emu_device_count());
    return set_error(cudaErrorInvalidDevice);
  }
  g_current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = g_current_device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= emu_device_count()) return set_error(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "cuda_emu CPU emulator (H100-like limits, not a GPU)");
  struct sysinfo si;
  sysinfo(&si);
  size_t emulated_total = emu_device_memory_total();  // CUDA_EMU_DEVICE_MEMORY, as cudaMemGetInfo
  prop->totalGlobalMem = emulated_total ? emulated_total : (size_t)si.totalram * si.mem_unit;
  prop->sharedMemPerBlock = EMU_SHARED_PER_BLOCK;
  prop->sharedMemPerBlockOptin = EMU_SHARED_PER_BLOCK_OPTIN;
  prop->sharedMemPerMultiprocessor = EMU_SHARED_PER_SM;
  prop->reservedSharedMemPerBlock = 1024;
  prop->regsPerBlock = 65536;
  prop->regsPerMultiprocessor = 65536;
  prop->warpSize = EMU_WARP;
  prop->memPitch = 2147483647;
  prop->maxThreadsPerBlock = EMU_MAX_THREADS_PER_BLOCK;
  prop->maxThreadsDim[0] = EMU_MAX_BLOCK_DIM_XY;
  prop->maxThreadsDim[1] = EMU_MAX_BLOCK_DIM_XY;
  prop->maxThreadsDim[2] = EMU_MAX_BLOCK_DIM_Z;
  prop->maxGridSize[0] = (int)EMU_MAX_GRID_DIM_X;
  prop->maxGridSize[1] = (int)EMU_MAX_GRID_DIM_YZ;
  prop->maxGridSize[2] = (int)EMU_MAX_GRID_DIM_YZ;
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = emu_sm_count();
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->l2CacheSize = 50 * 1024 * 1024;
  prop->memoryBusWidth = 5120;
  prop->concurrentKernels = 1;
  prop->unifiedAddressing = 1;
  prop->managedMemory = 1;
  prop->canMapHostMemory = 1;
  prop->cooperativeLaunch = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= emu_device_count()) return set_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = EMU_MAX_THREADS_PER_BLOCK; break;
    case cudaDevAttrMaxBlockDimX: *value = EMU_MAX_BLOCK_DIM_XY; break;
    case cudaDevAttrMaxBlockDimY: *value = EMU_MAX_BLOCK_DIM_XY; break;
    case cudaDevAttrMaxBlockDimZ: *value = EMU_MAX_BLOCK_DIM_Z; break;
    case cudaDevAttrMaxGridDimX: *value = (int)EMU_MAX_GRID_DIM_X; break;
    case cudaDevAttrMaxGridDimY: *value = (int)EMU_MAX_GRID_DIM_YZ; break;
    case cudaDevAttrMaxGridDimZ: *value = (int)EMU_MAX_GRID_DIM_YZ; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)EMU_SHARED_PER_BLOCK; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)EMU_SHARED_PER_BLOCK_OPTIN; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = (int)EMU_SHARED_PER_SM; break;
    case cudaDevAttrWarpSize: *value = EMU_WARP; break;
    case cudaDevAttrMultiProcessorCount: *value = emu_sm_count(); break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    default:
      fprintf(stderr, "cuda_emu: cudaDeviceGetAttribute: attribute %d is not emulated\n", (int)attr);
      return set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || (size_t)value > EMU_SHARED_PER_BLOCK_OPTIN) {
      fprintf(stderr, "cuda_emu: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %d): above the %zu-byte maximum\n",
              value, EMU_SHARED_PER_BLOCK_OPTIN);
      return set_error(cudaErrorInvalidValue);
    }
    g_max_dynamic_shared[func] = value;
  }
  return cudaSuccess;
}
cudaError_t cudaFuncSetCacheConfig(const void* func, enum cudaFuncCache cacheConfig) {
  (void)func;
  (void)cacheConfig;
  return cudaSuccess;
}
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
  memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = EMU_MAX_THREADS_PER_BLOCK;
  attr->numRegs = 32;  // without a ptxas table (no nvcc at build time)
  if (const kernel_resources* r = find_kernel_resources(nullptr, func)) {
    attr->numRegs = r->registers;
    attr->maxThreadsPerBlock = max_block_threads(*r);
  }
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  auto it = g_max_dynamic_shared.find(func);
  attr->maxDynamicSharedSizeBytes = it != g_max_dynamic_shared.end() ? it->second : (int)EMU_SHARED_PER_BLOCK;
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, const void* func, int blockSize,
                                                          size_t dynamicSMemSize) {
  int by_threads = blockSize > 0 ? 2048 / blockSize : 0;
  int by_smem = dynamicSMemSize > 0 ? (int)(EMU_SHARED_PER_SM / (dynamicSMemSize + 1024)) : 32;
  if (const kernel_resources* r = find_kernel_resources(nullptr, func))
    if (blockSize > 0) by_threads = std::min(by_threads, (int)(EMU_REGISTERS_PER_SM / block_registers(r->registers, blockSize)));
  *numBlocks = std::max(0, std::min(std::min(by_threads, by_smem), 32));
  return cudaSuccess;
}
cudaError_t cudaDeviceSetLimit(enum cudaLimit limit, size_t value) {
  (void)limit;
  (void)value;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* driverVersion) {
  *driverVersion = emu_driver_version();
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* runtimeVersion) {
  *runtimeVersion = CUDART_VERSION;
  return cudaSuccess;
}

// errors
cudaError_t cudaGetLastError(void) {
  cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last_error; }

#define CUDA_EMU_ERRORS(X)                                                        \
  X(cudaSuccess, "no error")                                                      \
  X(cudaErrorInvalidValue, "invalid argument")                                    \
  X(cudaErrorMemoryAllocation, "out of memory")                                   \
  X(cudaErrorInitializationError, "initialization error")                         \
  X(cudaErrorInvalidConfiguration, "invalid configuration argument")              \
  X(cudaErrorInvalidPitchValue, "invalid pitch argument")                         \
  X(cudaErrorInvalidSymbol, "invalid device symbol")                              \
  X(cudaErrorInvalidHostPointer, "invalid host pointer")                          \
  X(cudaErrorInvalidDevicePointer, "invalid device pointer")                      \
  X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")         \
  X(cudaErrorMissingConfiguration, "__global__ function call is not configured") \
  X(cudaErrorInvalidDeviceFunction, "invalid device function")                    \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                      \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                             \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                    \
  X(cudaErrorNotReady, "device not ready")                                        \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")          \
  X(cudaErrorLaunchOutOfResources, "too many resources requested for launch")     \
  X(cudaErrorLaunchTimeout, "the launch timed out and was terminated")            \
  X(cudaErrorAssert, "device-side assert triggered")                              \
  X(cudaErrorMisalignedAddress, "misaligned address")                             \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                         \
  X(cudaErrorNotSupported, "operation not supported")                             \
  X(cudaErrorUnknown, "unknown error")

const char* cudaGetErrorString(cudaError_t error) {
#define X(name, text) \
  if (error == name) return text;
  CUDA_EMU_ERRORS(X)
#undef X
  return "unrecognized error code (cuda_emu)";
}
const char* cudaGetErrorName(cudaError_t error) {
#define X(name, text) \
  if (error == name) return #name;
  CUDA_EMU_ERRORS(X)
#undef X
  return "cudaErrorUnrecognized(cuda_emu)";
}
