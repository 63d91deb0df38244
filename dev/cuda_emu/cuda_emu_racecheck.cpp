// cuda_emu_racecheck.cpp: the shared-memory race detector of the CPU CUDA
// harness, like compute-sanitizer's racecheck. It is part of the race-check
// build of an emulated program (emu.mk's X_race, compiled with
// -DCUDA_EMU_RACECHECK); in the ordinary build (X_emu) this file is empty.
//
// How it sees the accesses: the program's own code is compiled with g++'s
// -fsanitize=thread instrumentation, which calls __tsan_read4(addr),
// __tsan_write8(addr), ... before every load and store that the optimizer
// keeps (also through pointers handed to __device__ functions). This file
// defines those functions itself: ThreadSanitizer's runtime is not linked.
// An access outside the running block's shared memory returns after one
// compare; one inside it is checked against a shadow record per byte.
//
// What a race is: in one block, between two __syncthreads (one "interval"),
// a byte written by one thread and read or written by another thread, in
// either order. Within one warp, a warp operation (__syncwarp or a warp
// intrinsic: shuffle, vote, match, reduce) that both lanes took part in after
// the first access orders the two (also through other lanes: warp time is a
// vector clock over the lanes of a warp), as racecheck does on Volta and
// later (no implicit warp-synchronous execution). Atomics do not race with
// atomics; an atomic and a plain access do.
//
// Hazard kinds, named by the order the emulator ran the two accesses in (on a
// GPU either may come first): read-after-write (RAW), write-after-read (WAR),
// write-after-write (WAW). The first hazard stops the program with a report
// naming the kernel, the block, both threads, the __shared__ variable and byte
// offset, and both source lines (from addr2line).
//
// Limits: only shared memory (global memory races are not checked); accesses
// made by library calls (memcpy/memset of shared memory in a kernel) are not
// seen; with several readers of a byte in one warp, a write is checked against
// the latest reader's warp time for all of them (exact for full-warp masks,
// may over-report with unusual partial masks); of several atomic writers of
// a byte, the last two are remembered.
#if defined(CUDA_EMU_RACECHECK)

#include "cuda_emu.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

namespace cuda_emu {

int g_race_atomic = 0;  // > 0 inside an emulated atomic (cuda_emu.h)

static const int RACE_WARP = 32;
static const int RACE_MAX_THREADS = 1024;
static const uint16_t RACE_MANY_WARPS = 0xffff;

struct race_shadow {   // one byte of shared memory
  uint32_t epoch;      // the interval this record belongs to; older records are empty
  uint32_t wstamp;     // warp time of the last write
  uint32_t rstamp;     // latest warp time among the reads
  uint32_t rmask;      // lanes that read it, in warp rwarp
  uint32_t wstamp2;    // warp time of writer2's write
  uint16_t writer;     // linear thread index + 1 of the last write, 0: none
  uint16_t writer2;    // after atomics by several threads: the latest other atomic writer + 1
  uint16_t reader_a;   // first reader + 1, 0: none
  uint16_t reader_b;   // + 1: the latest reader in another warp than reader_a when there is one, else the
                       // latest other reader
  uint16_t rwarp;      // the readers' warp, RACE_MANY_WARPS: more than one
  uint8_t watomic;     // the last write was an atomic
  uint8_t split;       // (word records) the bytes have records of their own in g_byte_shadow
  const void* wpc;     // where the accesses were made (return addresses)
  const void* wpc2;
  const void* rpc_a;
  const void* rpc_b;
};

// the running block's shared memory: [g_base, g_base + g_size); g_size is 0
// outside kernels, so host code pays one compare per access
static uintptr_t g_base = 0;
static size_t g_size = 0;
static unsigned char* g_arena = nullptr;
static size_t g_arena_bytes = 0;
static race_shadow* g_word_shadow = nullptr;  // per 4-byte word (g_arena_bytes / 4), mapped lazily
static race_shadow* g_byte_shadow = nullptr;  // per byte, for words accessed in parts
static size_t g_shadow_touched = 0;           // arena bytes whose records may be set since the last clear
static uint32_t g_epoch = 1;
static int g_tid = 0;  // linear index of the running CUDA thread
static const char* g_kernel = "?";

// warp time: per warp of the block, a counter that each completed warp
// operation advances; g_vc[t][l] is the latest warp time of lane l whose
// accesses are ordered before thread t's current point. Never reset between
// blocks: old values are below every new access's time.
static uint32_t g_warp_time[RACE_MAX_THREADS / RACE_WARP];
static uint32_t g_vc[RACE_MAX_THREADS][RACE_WARP];

struct race_variable {
  size_t offset, size;
  const char* name;
};
static std::vector<race_variable>& g_variables = *new std::vector<race_variable>();
static size_t g_dynamic_bytes = 0;
static const char* g_dynamic_name = nullptr;

static void reset_clocks() {
  memset(g_vc, 0, sizeof g_vc);
  for (uint32_t& t : g_warp_time) t = 1;
}

static void clear_shadow() {
  if (g_word_shadow && g_shadow_touched) {
    memset(g_word_shadow, 0, (g_shadow_touched + 3) / 4 * sizeof(race_shadow));
    memset(g_byte_shadow, 0, g_shadow_touched * sizeof(race_shadow));
  }
  g_shadow_touched = 0;
  g_epoch = 1;
}

// a new interval: every record from before is stale
static void next_epoch() {
  if (++g_epoch == 0xffffffffu) clear_shadow();
}

void race_block_begin(const char* kernel, unsigned char* arena, size_t arena_bytes, size_t dynamic_bytes) {
  if (!g_word_shadow || arena != g_arena || arena_bytes != g_arena_bytes) {
    size_t words = (arena_bytes + 3) / 4;
    if (g_word_shadow) {
      munmap(g_word_shadow, (g_arena_bytes + 3) / 4 * sizeof(race_shadow));
      munmap(g_byte_shadow, g_arena_bytes * sizeof(race_shadow));
    }
    void* m = mmap(nullptr, words * sizeof(race_shadow), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void* mb = mmap(nullptr, arena_bytes * sizeof(race_shadow), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED || mb == MAP_FAILED) {
      fprintf(stderr, "cuda_emu: error: race detector: cannot map %zu bytes of shadow memory\n",
              (words + arena_bytes) * sizeof(race_shadow));
      abort();
    }
    g_word_shadow = (race_shadow*)m;
    g_byte_shadow = (race_shadow*)mb;
    g_shadow_touched = 0;
    g_arena = arena;
    g_arena_bytes = arena_bytes;
    reset_clocks();
  }
  for (uint32_t t : g_warp_time)
    if (t > 0xf0000000u) {
      reset_clocks();
      clear_shadow();
      break;
    }
  g_kernel = kernel;
  g_variables.clear();
  g_dynamic_bytes = dynamic_bytes;
  g_dynamic_name = nullptr;
  next_epoch();
  g_base = (uintptr_t)arena;
  g_size = arena_bytes;
}

void race_launch_end() { g_size = 0; }

void race_set_thread(int linear) { g_tid = linear; }

void race_shared_variable(size_t offset, size_t size, const char* name) {
  g_variables.push_back(race_variable{offset, size, name});
}

void race_dynamic_shared_name(const char* name) {
  if (!g_dynamic_name) g_dynamic_name = name;
}

void race_barrier() { next_epoch(); }

// a warp operation completed for the lanes in `participants`: each of them now
// sees what every other had seen, and its own accesses so far
void race_warp_sync(int warp, unsigned participants) {
  uint32_t joined[RACE_WARP] = {0};
  uint32_t (*lanes)[RACE_WARP] = &g_vc[warp * RACE_WARP];
  for (int p = 0; p < RACE_WARP; p++)
    if (participants >> p & 1u)
      for (int k = 0; k < RACE_WARP; k++) joined[k] = std::max(joined[k], lanes[p][k]);
  uint32_t now = g_warp_time[warp];
  for (int p = 0; p < RACE_WARP; p++)
    if (participants >> p & 1u) joined[p] = std::max(joined[p], now);
  g_warp_time[warp] = now + 1;
  for (int p = 0; p < RACE_WARP; p++)
    if (participants >> p & 1u) memcpy(lanes[p], joined, sizeof joined);
}

// ---------------------------------------------------------------------------
// reports

// "file:line (function)" for a return address into the program, with the
// functions it was inlined into, from addr2line; the raw address without it
static std::string source_of(const void* pc) {
  char buf[512];
  Dl_info info;
  if (!pc || !dladdr(pc, &info) || !info.dli_fbase) {
    snprintf(buf, sizeof buf, "pc %p", pc);
    return buf;
  }
  uintptr_t addr = (uintptr_t)pc - 1;  // inside the call instruction
  const ElfW(Ehdr)* eh = (const ElfW(Ehdr)*)info.dli_fbase;
  if (eh->e_type == ET_DYN) addr -= (uintptr_t)info.dli_fbase;  // position-independent: file offsets
  Dl_info self;
  bool main_program = dladdr((const void*)&source_of, &self) && self.dli_fbase == info.dli_fbase;
  std::string file = info.dli_fname ? info.dli_fname : "";
  if (main_program) {  // this process's executable, by a path addr2line (another process) can open
    char exe[4096];
    ssize_t got = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (got > 0) file.assign(exe, (size_t)got);
  }
  snprintf(buf, sizeof buf, "addr2line -f -C -i -e '%s' 0x%lx 2>/dev/null", file.c_str(), (unsigned long)addr);
  std::string out;
  if (FILE* p = popen(buf, "r")) {
    std::vector<std::string> lines;
    while (fgets(buf, sizeof buf, p)) {
      std::string l(buf);
      while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
      lines.push_back(l);
    }
    pclose(p);
    // pairs of lines: function, file:line; innermost first
    for (size_t i = 0; i + 1 < lines.size(); i += 2) {
      if (lines[i + 1].rfind("??", 0) == 0) continue;
      size_t disc = lines[i + 1].find(" (discriminator");
      if (disc != std::string::npos) lines[i + 1].erase(disc);
      std::string fn = lines[i];
      size_t paren = fn.find('(');
      if (paren != std::string::npos && paren > 0) fn = fn.substr(0, paren);  // drop the parameter list
      if (!out.empty()) out += ", inlined into ";
      out += lines[i + 1] + " (" + fn + ")";
    }
  }
  if (out.empty()) {
    snprintf(buf, sizeof buf, "pc %p (no source line: addr2line from binutils is needed for one)", pc);
    out = buf;
  }
  return out;
}

static std::string thread_name(int linear) {
  unsigned bx = g_block_dim.x, by = g_block_dim.y;
  char buf[64];
  snprintf(buf, sizeof buf, "(%u,%u,%u)", (unsigned)linear % bx, (unsigned)linear / bx % by,
           (unsigned)linear / (bx * by));
  return buf;
}

static std::string describe_location(size_t offset) {
  char buf[256];
  for (const race_variable& v : g_variables)
    if (offset >= v.offset && offset < v.offset + v.size) {
      snprintf(buf, sizeof buf, "__shared__ '%s' (%zu bytes), byte offset %zu", v.name, v.size, offset - v.offset);
      return buf;
    }
  if (offset < g_dynamic_bytes) {
    snprintf(buf, sizeof buf, "dynamic shared memory%s%s%s (%zu bytes), byte offset %zu",
             g_dynamic_name ? " (extern __shared__ '" : "", g_dynamic_name ? g_dynamic_name : "",
             g_dynamic_name ? "')" : "", g_dynamic_bytes, offset);
    return buf;
  }
  snprintf(buf, sizeof buf, "shared memory byte %zu, outside every __shared__ variable (out of bounds)", offset);
  return buf;
}

enum { ACCESS_READ, ACCESS_WRITE };

[[noreturn]] static void report(const char* kind, size_t offset, int first, bool first_write, bool first_atomic,
                                const void* first_pc, int second, bool second_write, bool second_atomic,
                                const void* second_pc) {
  fflush(stdout);
  g_size = 0;  // nothing below is a kernel access
  const char* what = !strcmp(kind, "RAW") ? "read-after-write" : !strcmp(kind, "WAR") ? "write-after-read"
                                                                                      : "write-after-write";
  bool same_warp = first / RACE_WARP == second / RACE_WARP;
  fprintf(stderr,
          "cuda_emu: error: race on shared memory: %s hazard (%s) in kernel '%s', block (%u,%u,%u) of grid "
          "(%u,%u,%u), block size (%u,%u,%u)\n"
          "  location: %s\n"
          "  %s by thread %s (warp %d, lane %d) at %s%s\n"
          "  %s by thread %s (warp %d, lane %d) at %s%s\n"
          "  nothing orders the two: no __syncthreads() between them%s. Put a __syncthreads() between the two "
          "accesses%s. (The order above is the emulator's; on a GPU either may come first.)\n",
          what, kind, g_kernel, g_block_idx.x, g_block_idx.y, g_block_idx.z, g_grid_dim.x, g_grid_dim.y,
          g_grid_dim.z, g_block_dim.x, g_block_dim.y, g_block_dim.z, describe_location(offset).c_str(),
          first_write ? "write" : "read ", thread_name(first).c_str(), first / RACE_WARP, first % RACE_WARP,
          source_of(first_pc).c_str(), first_atomic ? " (atomic)" : "", second_write ? "write" : "read ",
          thread_name(second).c_str(), second / RACE_WARP, second % RACE_WARP, source_of(second_pc).c_str(),
          second_atomic ? " (atomic)" : "",
          same_warp ? ", and no __syncwarp() or warp intrinsic that both lanes took part in after the first" : "",
          same_warp ? " (both threads are in one warp: a __syncwarp() is enough)" : "");
  fflush(stderr);
  abort();
}

static inline bool ordered(int first, uint32_t stamp, int second) {
  return first / RACE_WARP == second / RACE_WARP && g_vc[second][first % RACE_WARP] >= stamp;
}

// a write by `me` at byte offset `off`: any reader that is not ordered before it
static void check_readers(const race_shadow& s, size_t off, int me, const void* pc, bool atomic) {
  int warp = me / RACE_WARP, lane = me % RACE_WARP;
  int hazard = -1;
  const void* hazard_pc = nullptr;
  if (s.rwarp != warp) {
    // a reader in another warp (reader_a's, or reader_b's when they read in
    // different warps): only a __syncthreads would have ordered it
    int a = s.reader_a - 1;
    hazard = a / RACE_WARP != warp ? a : s.reader_b - 1;
  } else {
    unsigned others = s.rmask & ~(1u << lane);
    if (!others) return;
    // the named readers first, so the report can show where they read
    for (int r : {s.reader_a - 1, s.reader_b - 1})
      if (r >= 0 && r != me && !ordered(r, s.rstamp, me)) {
        hazard = r;
        break;
      }
    for (int l = 0; hazard < 0 && l < RACE_WARP; l++)
      if ((others >> l & 1u) && g_vc[me][l] < s.rstamp) hazard = warp * RACE_WARP + l;
    if (hazard < 0) return;
  }
  hazard_pc = hazard == s.reader_a - 1 ? s.rpc_a : hazard == s.reader_b - 1 ? s.rpc_b : nullptr;
  report("WAR", off, hazard, false, false, hazard_pc, me, true, atomic, pc);
}

// one access by the running thread to the byte(s) that record `s` stands for
// (`off`: the first of them, for a report)
static inline void check_record(race_shadow& s, size_t off, int kind, const void* pc) {
  const int me = g_tid;
  const int warp = me / RACE_WARP, lane = me % RACE_WARP;
  const uint32_t now = g_warp_time[warp];
  const bool atomic = g_race_atomic > 0;
  if (s.epoch != g_epoch) {
    s = race_shadow();
    s.epoch = g_epoch;
  }
  // the last write, or one of the last atomic writes, by another thread and
  // not ordered before this access (atomics do not race with atomics)
  int writer = -1;
  const void* writer_pc = nullptr;
  if (!(atomic && s.watomic)) {
    if (s.writer && s.writer - 1 != me && !ordered(s.writer - 1, s.wstamp, me)) {
      writer = s.writer - 1;
      writer_pc = s.wpc;
    } else if (s.writer2 && s.writer2 - 1 != me && !ordered(s.writer2 - 1, s.wstamp2, me)) {
      writer = s.writer2 - 1;
      writer_pc = s.wpc2;
    }
  }
  if (kind == ACCESS_READ) {
    if (writer >= 0) report("RAW", off, writer, true, s.watomic, writer_pc, me, false, atomic, pc);
    if (atomic) return;  // the read half of an atomic: its write half is recorded
    if (!s.reader_a) {
      s.reader_a = (uint16_t)(me + 1);
      s.rpc_a = pc;
      s.rwarp = (uint16_t)warp;
      s.rmask = 1u << lane;
      s.rstamp = now;
    } else {
      bool other_warp = (s.reader_a - 1) / RACE_WARP != warp;
      if (other_warp || (s.reader_a != me + 1 && s.rwarp != RACE_MANY_WARPS)) {
        s.reader_b = (uint16_t)(me + 1);
        s.rpc_b = pc;
      }
      if (other_warp) {
        s.rwarp = RACE_MANY_WARPS;
      } else if (s.rwarp != RACE_MANY_WARPS) {
        s.rmask |= 1u << lane;
        if (now > s.rstamp) s.rstamp = now;
      }
    }
  } else {
    if (writer >= 0) report("WAW", off, writer, true, s.watomic, writer_pc, me, true, atomic, pc);
    if (s.reader_a) check_readers(s, off, me, pc, atomic);
    if (atomic && s.watomic && s.writer && s.writer != me + 1) {  // keep one other atomic writer
      s.writer2 = s.writer;
      s.wstamp2 = s.wstamp;
      s.wpc2 = s.wpc;
    } else if (!atomic) {
      s.writer2 = 0;
    }
    s.writer = (uint16_t)(me + 1);
    s.wstamp = now;
    s.watomic = atomic;
    s.wpc = pc;
    s.reader_a = s.reader_b = 0;
    s.rwarp = 0;
    s.rmask = 0;
  }
}

// the shadow is kept per 4-byte word while every access to the word covers it
// whole (its 4 bytes then share one history); the first access to part of a
// word splits it into 4 byte records, copies of the word's, for the rest of
// the interval. Exact at byte granularity, and 4 to 8 times fewer records to
// check for the usual float, int and double accesses.
static void access_slow(size_t off, size_t n, int kind, const void* pc) {
  if (off + n > g_size) n = g_size - off;
  size_t end = off + n;
  if (end > g_shadow_touched) g_shadow_touched = end;
  for (size_t w = off / 4; w * 4 < end; w++) {
    size_t lo = std::max(off, w * 4), hi = std::min(end, w * 4 + 4);
    race_shadow& word = g_word_shadow[w];
    if (word.epoch != g_epoch) {
      word = race_shadow();
      word.epoch = g_epoch;
    }
    if (!word.split) {
      if (lo == w * 4 && hi == w * 4 + 4) {
        check_record(word, lo, kind, pc);
        continue;
      }
      for (int b = 0; b < 4; b++) g_byte_shadow[w * 4 + b] = word;
      word.split = 1;
    }
    for (size_t b = lo; b < hi; b++) check_record(g_byte_shadow[b], b, kind, pc);
  }
}

}  // namespace cuda_emu

// ---------------------------------------------------------------------------
// the -fsanitize=thread instrumentation interface (the calls g++ inserts)

using cuda_emu::ACCESS_READ;
using cuda_emu::ACCESS_WRITE;

#define CUDA_EMU_RACE_ACCESS(p, n, kind)                                                 \
  do {                                                                                   \
    uintptr_t off_ = (uintptr_t)(p) - cuda_emu::g_base;                                  \
    if (__builtin_expect(off_ < cuda_emu::g_size, 0))                                    \
      cuda_emu::access_slow(off_, (n), (kind), __builtin_return_address(0));            \
  } while (0)

extern "C" {
void __tsan_init(void) {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_read_range(void* p, unsigned long n) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_READ); }
void __tsan_write_range(void* p, unsigned long n) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_WRITE); }
#define CUDA_EMU_RACE_SIZED(n)                                                                          \
  void __tsan_read##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_READ); }                             \
  void __tsan_write##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_WRITE); }                           \
  void __tsan_unaligned_read##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_READ); }                   \
  void __tsan_unaligned_write##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_WRITE); }                 \
  void __tsan_volatile_read##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_READ); }                    \
  void __tsan_volatile_write##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_WRITE); }                  \
  void __tsan_unaligned_volatile_read##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_READ); }          \
  void __tsan_unaligned_volatile_write##n(void* p) { CUDA_EMU_RACE_ACCESS(p, n, ACCESS_WRITE); }
CUDA_EMU_RACE_SIZED(1)
CUDA_EMU_RACE_SIZED(2)
CUDA_EMU_RACE_SIZED(4)
CUDA_EMU_RACE_SIZED(8)
CUDA_EMU_RACE_SIZED(16)
#undef CUDA_EMU_RACE_SIZED

// C++ atomics in the program (host code: std::atomic, static guards) are
// rewritten by the instrumentation into these; they do the operation, always
// sequentially consistent. (CUDA atomics in kernels are cuda_emu.h's.)
#define CUDA_EMU_RACE_ATOMICS(bits, type)                                                                    \
  type __tsan_atomic##bits##_load(const volatile type* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  void __tsan_atomic##bits##_store(volatile type* a, type v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  type __tsan_atomic##bits##_exchange(volatile type* a, type v, int) {                                       \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                      \
  }                                                                                                          \
  type __tsan_atomic##bits##_fetch_add(volatile type* a, type v, int) {                                      \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  type __tsan_atomic##bits##_fetch_sub(volatile type* a, type v, int) {                                      \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  type __tsan_atomic##bits##_fetch_and(volatile type* a, type v, int) {                                      \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  type __tsan_atomic##bits##_fetch_or(volatile type* a, type v, int) {                                       \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                        \
  }                                                                                                          \
  type __tsan_atomic##bits##_fetch_xor(volatile type* a, type v, int) {                                      \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  type __tsan_atomic##bits##_fetch_nand(volatile type* a, type v, int) {                                     \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                      \
  }                                                                                                          \
  bool __tsan_atomic##bits##_compare_exchange_strong(volatile type* a, type* c, type v, int, int) {          \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
  }                                                                                                          \
  bool __tsan_atomic##bits##_compare_exchange_weak(volatile type* a, type* c, type v, int, int) {            \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                   \
  }                                                                                                          \
  type __tsan_atomic##bits##_compare_exchange_val(volatile type* a, type c, type v, int, int) {              \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
    return c;                                                                                                \
  }
CUDA_EMU_RACE_ATOMICS(8, uint8_t)
CUDA_EMU_RACE_ATOMICS(16, uint16_t)
CUDA_EMU_RACE_ATOMICS(32, uint32_t)
CUDA_EMU_RACE_ATOMICS(64, uint64_t)
#undef CUDA_EMU_RACE_ATOMICS
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
}  // extern "C"

#endif  // CUDA_EMU_RACECHECK
