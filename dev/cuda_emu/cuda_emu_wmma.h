// cuda_emu_wmma.h: nvcuda::wmma (the CUDA C++ "warp matrix functions") for the
// CPU harness. A program that includes <mma.h> gets this header through
// stubs/mma.h; it needs cuda_emu.h (passed with -include) first.
//
// What is implemented: the 16x16x16 shape with __nv_bfloat16 inputs and float
// accumulators (what dev/cuda/flash_attention.cu uses), and the 16x16x8 shape
// with TF32 inputs (what the low-rank step's kernels in train_llama_subtrack.cu use):
//
//   fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major | col_major>
//   fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major | col_major>
//   fragment<accumulator, 16, 16, 16, float>
//   fragment<matrix_a, 16, 16, 8, precision::tf32, row_major | col_major>   (16 x 8)
//   fragment<matrix_b, 16, 16, 8, precision::tf32, row_major | col_major>   (8 x 16)
//   fragment<accumulator, 16, 16, 8, float>
//   fill_fragment, load_matrix_sync (the accumulator overload takes a layout_t),
//   store_matrix_sync, mma_sync (bf16 x bf16 + fp32 -> fp32, tf32 x tf32 + fp32
//   -> fp32), num_elements, x[i], __float_to_tf32
//
// Any other fragment is a compile-time error (static_assert below).
//
// Semantics, from the CUDA C++ Programming Guide, "Warp Matrix Functions":
// - load_matrix_sync, store_matrix_sync and mma_sync are warp-collective: all
//   32 lanes call them, converged (the same call), with the same pointer, ldm
//   and layout. Here each lane records its call and waits at a warp-level
//   barrier (the harness's warp machinery, kind WARP_WMMA); the last lane to
//   arrive checks that the 32 calls agree, then performs the operation for the
//   whole warp, reading and writing every lane's fragment (the other lanes are
//   suspended at the barrier, so their fragments are stable), and releases
//   them. Aborts, with the kernel, block and thread: a lane that has exited or
//   does not exist (partial warp), lanes at different calls (call sites) or
//   with different pointer/ldm/layout, a lane calling another warp intrinsic
//   under the same mask (reported by the harness), a lane that exits while the
//   others wait.
// - the pointer must be 256-bit (32-byte) aligned, and ldm a multiple of 16
//   bytes: 8 elements for __nv_bfloat16, 4 for float and tf32. Checked in every lane.
// - tf32 (the CUDA C++ Programming Guide, "Alternate Floating Point"): a tf32
//   fragment's elements are floats in memory and in x[i] (storage_element_type
//   float, element_type precision::tf32); load_matrix_sync loads the floats as
//   they are, and mma_sync uses only the top 19 bits of each (sign, 8 exponent
//   bits, 10 mantissa bits): the low 13 mantissa bits are ignored, so an input
//   not converted is truncated toward zero. __float_to_tf32 (PTX
//   cvt.rna.tf32.f32) rounds to nearest, ties away from zero, and leaves the
//   low 13 bits zero; kernels convert x[i] after a load (or before staging).
// - fill_fragment is not a _sync function: each lane fills its own elements.
// - the mapping of matrix elements to lanes is unspecified by CUDA. Here it is
//   fixed, 8 elements per lane for every fragment (as on sm_80+ hardware), each
//   element held by exactly one lane: with g = lane / 4 and t = lane % 4,
//     matrix_a, accumulator: x[i] is element (row g + 8*((i>>1)&1),
//                                             col 2t + (i&1) + 8*(i>>2))
//     matrix_b (k x n):      x[i] is element (k 2t + (i&1) + 8*((i>>1)&1),
//                                             n g + 8*(i>>2))
//   and 4 elements per lane for the tf32 inputs (as the m16n8k8 tf32 mma of sm_80+):
//     matrix_a (16 x 8):     x[i] is element (row g + 8*(i&1), col t + 4*(i>>1))
//     matrix_b (8 x 16):     x[i] is element (k t + 4*(i&1), n g + 8*(i>>1))
//   so element-wise work on x[i] (scaling, activation) behaves as on a GPU.
//   CUDA_EMU_WMMA_MAPPING=scrambled composes it with a fixed pseudo-random
//   permutation of the 256 elements (a different one per fragment kind): code
//   that assumes a particular mapping gives wrong numbers under it, code that
//   does not is unaffected. The index of an element can be found portably by
//   loading a table of indices (e.g. row*16 + col as floats) into a fragment.
// - mma_sync: D = A B + C. Each element is computed in double and rounded once
//   to float: the products of two bf16 are exact in double (8 + 8 significant
//   bits), the sum of 16 of them and C is exact in double unless their
//   magnitudes span more than ~29 binades, so D is the correctly rounded fp32
//   result in practice (|error| <= 2^-24 |D|), independent of lane mapping and
//   summation order, like the harness's cuBLAS (which also accumulates in
//   double). A GPU accumulates in fp32 in an unspecified order and with
//   unspecified internal rounding; tests must use the fp32-accumulation bound
//   |D - exact| <= k u (|C| + sum |a b|) with u = 2^-24 and k = 16 + 1, which
//   the harness's result also satisfies.
// - mma_sync on tf32 (16x16x8): each input cut to its top 19 bits (above), then
//   as for bf16: products of two 11-bit significands are exact in double, the
//   8-term sum plus C is rounded once to float. tests bound a GPU's result by
//   the same fp32-accumulation rule with k = 8 + 1, after the inputs' own
//   rounding to tf32 (u_tf32 = 2^-11 per converted input).
#ifndef CUDA_EMU_WMMA_H
#define CUDA_EMU_WMMA_H

#include <stdarg.h>

#ifndef CUDA_EMU
#error "cuda_emu_wmma.h is part of the CPU harness: build through dev/cuda_emu/emu.mk (cuda_emu.h first)"
#endif

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}

// x rounded to tf32 (8 exponent bits, 10 mantissa bits) to nearest, ties away
// from zero, as PTX cvt.rna.tf32.f32: add half a tf32 unit to the magnitude
// bits and cut the low 13 bits (a carry into the exponent is the right
// result; the largest floats round to infinity). NaN and infinity pass
__device__ inline float __float_to_tf32(float in) {
  unsigned bits;
  memcpy(&bits, &in, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  float out;
  memcpy(&out, &bits, sizeof out);
  return out;
}

template <class T, int size>
struct cuda_emu_fragment_base {
  enum { num_elements = size };
  enum { num_storage_elements = size };
  typedef T element_type;
  typedef T storage_element_type;
  T x[size];
};

// a tf32 input fragment: floats, 4 per lane
struct cuda_emu_tf32_fragment_base {
  enum { num_elements = 4 };
  enum { num_storage_elements = 4 };
  typedef precision::tf32 element_type;
  typedef float storage_element_type;
  float x[4];
};

template <class>
struct cuda_emu_unsupported : std::false_type {};

template <class Use, int m, int n, int k, class T, class Layout = void>
class fragment {
  static_assert(cuda_emu_unsupported<Use>::value,
                "cuda_emu: this nvcuda::wmma fragment is not implemented by the CPU harness; implemented: "
                "fragment<matrix_a|matrix_b, 16, 16, 16, __nv_bfloat16, row_major|col_major> and "
                "fragment<accumulator, 16, 16, 16, float>, fragment<matrix_a|matrix_b, 16, 16, 8, precision::tf32, "
                "row_major|col_major> and fragment<accumulator, 16, 16, 8, float> (dev/cuda_emu/cuda_emu_wmma.h)");
};
template <>
class fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major> : public cuda_emu_fragment_base<__nv_bfloat16, 8> {};
template <>
class fragment<matrix_a, 16, 16, 16, __nv_bfloat16, col_major> : public cuda_emu_fragment_base<__nv_bfloat16, 8> {};
template <>
class fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major> : public cuda_emu_fragment_base<__nv_bfloat16, 8> {};
template <>
class fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major> : public cuda_emu_fragment_base<__nv_bfloat16, 8> {};
template <>
class fragment<accumulator, 16, 16, 16, float> : public cuda_emu_fragment_base<float, 8> {};
template <>
class fragment<matrix_a, 16, 16, 8, precision::tf32, row_major> : public cuda_emu_tf32_fragment_base {};
template <>
class fragment<matrix_a, 16, 16, 8, precision::tf32, col_major> : public cuda_emu_tf32_fragment_base {};
template <>
class fragment<matrix_b, 16, 16, 8, precision::tf32, row_major> : public cuda_emu_tf32_fragment_base {};
template <>
class fragment<matrix_b, 16, 16, 8, precision::tf32, col_major> : public cuda_emu_tf32_fragment_base {};
template <>
class fragment<accumulator, 16, 16, 8, float> : public cuda_emu_fragment_base<float, 8> {};

}  // namespace wmma
}  // namespace nvcuda

namespace cuda_emu {
namespace wmma_impl {

static const int TILE = 16;         // 16x16 matrices
static const int PER_LANE = 8;      // elements per lane: 256 / 32
static const int WARPS_MAX = 32;    // 1024 threads per block
static const int TF32_K = 8;        // tf32: a is 16 x 8, b is 8 x 16
static const int TF32_PER_LANE = 4; // 128 / 32
enum use_kind { USE_A, USE_B, USE_ACC, USE_A_TF32, USE_B_TF32, USE_KINDS };
enum op_kind { OP_LOAD_A, OP_LOAD_B, OP_LOAD_ACC, OP_STORE, OP_MMA };

inline const char* op_name(int op) {
  switch (op) {
    case OP_LOAD_A: case OP_LOAD_B: case OP_LOAD_ACC: return "nvcuda::wmma::load_matrix_sync";
    case OP_STORE: return "nvcuda::wmma::store_matrix_sync";
    default: return "nvcuda::wmma::mma_sync";
  }
}

// element (row, col) of the matrix held by x[i] of a lane, per fragment kind:
// row = index / cols, col = index % cols, cols = use_cols(kind)
struct lane_mapping {
  unsigned char index[USE_KINDS][32][PER_LANE];
};

// columns and elements per lane of each kind's matrix
inline int use_cols(int use) { return use == USE_A_TF32 ? TF32_K : TILE; }
inline int use_per_lane(int use) { return use == USE_A_TF32 || use == USE_B_TF32 ? TF32_PER_LANE : PER_LANE; }

inline lane_mapping make_mapping() {
  lane_mapping m;
  for (int lane = 0; lane < 32; lane++) {
    int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < PER_LANE; i++) {
      int b0 = i & 1, b1 = (i >> 1) & 1, b2 = i >> 2;
      int row = g + 8 * b1, col = 2 * t + b0 + 8 * b2;  // matrix_a and accumulator
      m.index[USE_A][lane][i] = (unsigned char)(row * TILE + col);
      m.index[USE_ACC][lane][i] = (unsigned char)(row * TILE + col);
      int kk = 2 * t + b0 + 8 * b1, nn = g + 8 * b2;  // matrix_b is k x n
      m.index[USE_B][lane][i] = (unsigned char)(kk * TILE + nn);
    }
    for (int i = 0; i < TF32_PER_LANE; i++) {
      int b0 = i & 1, b1 = i >> 1;
      m.index[USE_A_TF32][lane][i] = (unsigned char)((g + 8 * b0) * TF32_K + t + 4 * b1);  // a is 16 x 8
      m.index[USE_B_TF32][lane][i] = (unsigned char)((t + 4 * b0) * TILE + g + 8 * b1);    // b is 8 x 16
    }
  }
  const char* v = getenv("CUDA_EMU_WMMA_MAPPING");
  if (v && strcmp(v, "scrambled") == 0) {
    for (int u = 0; u < USE_KINDS; u++) {
      // a fixed permutation of the elements (256, or 128 for tf32 inputs) per
      // kind (Fisher-Yates, LCG)
      int count = 32 * use_per_lane(u);
      unsigned char perm[256];
      for (int e = 0; e < count; e++) perm[e] = (unsigned char)e;
      unsigned s = 12345u + 777u * (unsigned)u;
      for (int e = count - 1; e > 0; e--) {
        s = s * 1664525u + 1013904223u;
        int j = (int)((s >> 8) % (unsigned)(e + 1));
        unsigned char tmp = perm[e];
        perm[e] = perm[j];
        perm[j] = tmp;
      }
      for (int lane = 0; lane < 32; lane++)
        for (int i = 0; i < use_per_lane(u); i++) m.index[u][lane][i] = perm[m.index[u][lane][i]];
    }
  } else if (v && *v && strcmp(v, "hardware") != 0) {
    fprintf(stderr, "cuda_emu: ignoring CUDA_EMU_WMMA_MAPPING=%s (expected hardware or scrambled)\n", v);
  }
  return m;
}

inline const lane_mapping& mapping() {
  static const lane_mapping m = make_mapping();
  return m;
}

// one lane's call, recorded until the last lane of the warp arrives
struct lane_call {
  int op;
  const char* file;
  int line;
  const void* mem;  // load/store pointer
  unsigned ldm;
  int layout;       // row-major (0) or column-major (1) memory
  void* frag;       // the fragment written (load, mma d) or read (store)
  const void* a;    // mma operands
  const void* b;
  const void* c;
  unsigned long long generation;
};

struct warp_calls {
  unsigned long long block_serial;
  unsigned arrived;
  unsigned long long generation;  // operations performed in this block
  lane_call calls[32];
};

inline warp_calls g_warps[WARPS_MAX];

[[noreturn]] inline void fail(const char* file, int line, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
[[noreturn]] inline void fail(const char* file, int line, const char* fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  device_trap(msg, file, line);  // "cuda_emu: error: <msg> called at file:line", then kernel, block, thread
}

inline void check_memory(const lane_call& c, size_t element_bytes) {
  const char* name = op_name(c.op);
  if ((uintptr_t)c.mem % 32 != 0)
    fail(c.file, c.line, "pointer %p is not 256-bit (32-byte) aligned as CUDA requires: %s", c.mem, name);
  unsigned multiple = (unsigned)(16 / element_bytes);
  if (c.ldm % multiple != 0)
    fail(c.file, c.line, "ldm %u: CUDA requires a multiple of %u for %u-byte elements (16 bytes): %s", c.ldm,
         multiple, (unsigned)element_bytes, name);
}

// the last lane to arrive: are the 32 calls one call?
inline void check_uniform(const warp_calls& w) {
  const lane_call& c0 = w.calls[0];
  for (int l = 1; l < 32; l++) {
    const lane_call& c = w.calls[l];
    if (c.op != c0.op || c.line != c0.line || strcmp(c.file, c0.file) != 0)
      fail(c.file, c.line,
           "lane %d is at another call than lane 0 (%s at %s:%d); the warp matrix functions must be called by "
           "all 32 lanes of a warp at the same call (converged): lane %d's %s",
           l, op_name(c0.op), c0.file, c0.line, l, op_name(c.op));
    if (c.op == OP_MMA) continue;
    if (c.mem != c0.mem)
      fail(c.file, c.line, "lane %d passes pointer %p but lane 0 passes %p (pointer, ldm and layout must be the same "
           "in all 32 lanes of the warp): %s", l, c.mem, c0.mem, op_name(c.op));
    if (c.ldm != c0.ldm)
      fail(c.file, c.line, "lane %d passes ldm %u but lane 0 passes ldm %u (pointer, ldm and layout must be the "
           "same in all 32 lanes of the warp): %s", l, c.ldm, c0.ldm, op_name(c.op));
    if (c.layout != c0.layout)
      fail(c.file, c.line, "lane %d passes layout %s but lane 0 passes %s (pointer, ldm and layout must be the same "
           "in all 32 lanes of the warp): %s", l, c.layout ? "mem_col_major" : "mem_row_major",
           c0.layout ? "mem_col_major" : "mem_row_major", op_name(c.op));
  }
}

// element (r, c) of a 16x16 matrix in memory
inline size_t memory_offset(int r, int c, unsigned ldm, int col_major) {
  return col_major ? (size_t)c * ldm + (size_t)r : (size_t)r * ldm + (size_t)c;
}

template <class T>
inline double to_double(T v) { return (double)v; }
template <>
inline double to_double<__nv_bfloat16>(__nv_bfloat16 v) { return (double)__bfloat162float(v); }

// the whole warp's load: every lane's elements from memory
template <class T>
inline void perform_load(warp_calls& w, int use) {
  const lane_mapping& m = mapping();
  const lane_call& c0 = w.calls[0];
  const T* mem = static_cast<const T*>(c0.mem);
  int cols = use_cols(use), per_lane = use_per_lane(use);
  for (int l = 0; l < 32; l++) {
    T* x = static_cast<T*>(w.calls[l].frag);
    for (int i = 0; i < per_lane; i++) {
      int e = m.index[use][l][i];
      x[i] = mem[memory_offset(e / cols, e % cols, c0.ldm, c0.layout)];
    }
  }
}

inline void perform_store(warp_calls& w) {
  const lane_mapping& m = mapping();
  const lane_call& c0 = w.calls[0];
  float* mem = static_cast<float*>(const_cast<void*>(c0.mem));
  for (int l = 0; l < 32; l++) {
    const float* x = static_cast<const float*>(w.calls[l].frag);
    for (int i = 0; i < PER_LANE; i++) {
      int e = m.index[USE_ACC][l][i];
      mem[memory_offset(e / TILE, e % TILE, c0.ldm, c0.layout)] = x[i];
    }
  }
}

// D = A B + C for the warp, each element in double, rounded once to float
template <class AB>
inline void perform_mma(warp_calls& w) {
  const lane_mapping& m = mapping();
  double A[TILE][TILE], B[TILE][TILE], C[TILE][TILE];
  for (int l = 0; l < 32; l++) {
    const AB* a = static_cast<const AB*>(w.calls[l].a);
    const AB* b = static_cast<const AB*>(w.calls[l].b);
    const float* c = static_cast<const float*>(w.calls[l].c);
    for (int i = 0; i < PER_LANE; i++) {
      int ea = m.index[USE_A][l][i], eb = m.index[USE_B][l][i], ec = m.index[USE_ACC][l][i];
      A[ea / TILE][ea % TILE] = to_double(a[i]);
      B[eb / TILE][eb % TILE] = to_double(b[i]);
      C[ec / TILE][ec % TILE] = (double)c[i];
    }
  }
  // every operand is read before any d is written: d may be c
  for (int l = 0; l < 32; l++) {
    float* d = static_cast<float*>(w.calls[l].frag);
    for (int i = 0; i < PER_LANE; i++) {
      int e = m.index[USE_ACC][l][i], r = e / TILE, c = e % TILE;
      double acc = C[r][c];
      for (int k = 0; k < TILE; k++) acc += A[r][k] * B[k][c];
      d[i] = (float)acc;
    }
  }
}

// a float as a tf32 input is read by the tensor cores: its low 13 mantissa
// bits ignored (truncation toward zero of an unconverted value)
inline double tf32_input(float v) {
  unsigned bits;
  memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits &= 0xffffe000u;  // NaN keeps its payload
  float f;
  memcpy(&f, &bits, sizeof f);
  return (double)f;
}

// D = A B + C for a tf32 16x16x8 product: inputs cut to tf32, each element in
// double, rounded once to float
inline void perform_mma_tf32(warp_calls& w) {
  const lane_mapping& m = mapping();
  double A[TILE][TF32_K], B[TF32_K][TILE], C[TILE][TILE];
  for (int l = 0; l < 32; l++) {
    const float* a = static_cast<const float*>(w.calls[l].a);
    const float* b = static_cast<const float*>(w.calls[l].b);
    const float* c = static_cast<const float*>(w.calls[l].c);
    for (int i = 0; i < TF32_PER_LANE; i++) {
      int ea = m.index[USE_A_TF32][l][i], eb = m.index[USE_B_TF32][l][i];
      A[ea / TF32_K][ea % TF32_K] = tf32_input(a[i]);
      B[eb / TILE][eb % TILE] = tf32_input(b[i]);
    }
    for (int i = 0; i < PER_LANE; i++) {
      int ec = m.index[USE_ACC][l][i];
      C[ec / TILE][ec % TILE] = (double)c[i];
    }
  }
  for (int l = 0; l < 32; l++) {
    float* d = static_cast<float*>(w.calls[l].frag);
    for (int i = 0; i < PER_LANE; i++) {
      int e = m.index[USE_ACC][l][i], r = e / TILE, c = e % TILE;
      double acc = C[r][c];
      for (int k = 0; k < TF32_K; k++) acc += A[r][k] * B[k][c];
      d[i] = (float)acc;
    }
  }
}

// record this lane's call; the last lane to arrive checks and performs it for
// the warp; everyone leaves through one warp-level barrier
template <class Perform>
inline void collective(lane_call call, Perform perform) {
  if (!g_current_thread) fail(call.file, call.line, "outside a kernel: %s", op_name(call.op));
  const uint3& tid = builtin_thread_idx();
  int linear = (int)(tid.x + tid.y * g_block_dim.x + tid.z * g_block_dim.x * g_block_dim.y);
  int warp = linear / 32, lane = linear % 32;
  warp_calls& w = g_warps[warp];
  if (w.block_serial != g_block_serial) {  // first call in this block
    w.block_serial = g_block_serial;
    w.arrived = 0;
    w.generation = 0;
  }
  unsigned live = active_mask();
  if (live != 0xffffffffu)
    fail(call.file, call.line,
         "warp %d has live lanes 0x%08x, but the warp matrix functions need all 32 lanes of the warp (lanes have "
         "exited, or the block size is not a multiple of 32): %s", warp, live, op_name(call.op));
  call.generation = w.generation;
  w.calls[lane] = call;
  w.arrived |= 1u << lane;
  if (w.arrived == 0xffffffffu) {
    check_uniform(w);
    perform(w);
    w.arrived = 0;
    w.generation++;
  }
  warp_op_at(WARP_WMMA, 0xffffffffu, 0, 0, 0, 32, call.file, call.line);
  if (w.generation == call.generation)  // the barrier let us go without the 32nd lane
    fail(call.file, call.line,
         "a lane of warp %d exited while the others waited (the warp matrix functions need all 32 lanes): %s",
         warp, op_name(call.op));
}

inline lane_call make_call(int op, const char* file, int line) {
  lane_call c;
  memset(&c, 0, sizeof c);
  c.op = op;
  c.file = file;
  c.line = line;
  return c;
}

template <class T, class Frag>
inline void load_input(int use, int op, Frag& a, const T* p, unsigned ldm, int col_major, const char* file, int line) {
  lane_call c = make_call(op, file, line);
  c.mem = p;
  c.ldm = ldm;
  c.layout = col_major;
  c.frag = a.x;
  check_memory(c, sizeof(T));
  collective(c, [use](warp_calls& w) { perform_load<T>(w, use); });
}

}  // namespace wmma_impl
}  // namespace cuda_emu

namespace nvcuda {
namespace wmma {

// the value converts to the element type, as with CUDA's (non-deduced) argument
template <class T, int size>
inline void fill_fragment(cuda_emu_fragment_base<T, size>& f, const typename std::enable_if<true, T>::type& v) {
  for (int i = 0; i < f.num_elements; i++) f.x[i] = v;
}

inline void fill_fragment(cuda_emu_tf32_fragment_base& f, const float& v) {
  for (int i = 0; i < f.num_elements; i++) f.x[i] = v;
}

#define CUDA_EMU_WMMA_LOAD_INPUT(use_tag, use, op, layout_tag, col_major)                                      \
  inline void load_matrix_sync(fragment<use_tag, 16, 16, 16, __nv_bfloat16, layout_tag>& a,                    \
                               const __nv_bfloat16* p, unsigned ldm, const char* file = __builtin_FILE(),     \
                               int line = __builtin_LINE()) {                                                 \
    ::cuda_emu::wmma_impl::load_input<__nv_bfloat16>(::cuda_emu::wmma_impl::use, ::cuda_emu::wmma_impl::op, a, \
                                                     p, ldm, col_major, file, line);                           \
  }
CUDA_EMU_WMMA_LOAD_INPUT(matrix_a, USE_A, OP_LOAD_A, row_major, 0)
CUDA_EMU_WMMA_LOAD_INPUT(matrix_a, USE_A, OP_LOAD_A, col_major, 1)
CUDA_EMU_WMMA_LOAD_INPUT(matrix_b, USE_B, OP_LOAD_B, row_major, 0)
CUDA_EMU_WMMA_LOAD_INPUT(matrix_b, USE_B, OP_LOAD_B, col_major, 1)
#undef CUDA_EMU_WMMA_LOAD_INPUT

#define CUDA_EMU_WMMA_LOAD_TF32(use_tag, use, op, layout_tag, col_major)                                        \
  inline void load_matrix_sync(fragment<use_tag, 16, 16, 8, precision::tf32, layout_tag>& a, const float* p,    \
                               unsigned ldm, const char* file = __builtin_FILE(), int line = __builtin_LINE()) { \
    ::cuda_emu::wmma_impl::load_input<float>(::cuda_emu::wmma_impl::use, ::cuda_emu::wmma_impl::op, a, p, ldm,  \
                                             col_major, file, line);                                           \
  }
CUDA_EMU_WMMA_LOAD_TF32(matrix_a, USE_A_TF32, OP_LOAD_A, row_major, 0)
CUDA_EMU_WMMA_LOAD_TF32(matrix_a, USE_A_TF32, OP_LOAD_A, col_major, 1)
CUDA_EMU_WMMA_LOAD_TF32(matrix_b, USE_B_TF32, OP_LOAD_B, row_major, 0)
CUDA_EMU_WMMA_LOAD_TF32(matrix_b, USE_B_TF32, OP_LOAD_B, col_major, 1)
#undef CUDA_EMU_WMMA_LOAD_TF32

inline void load_matrix_sync(fragment<accumulator, 16, 16, 8, float>& a, const float* p, unsigned ldm,
                             layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_emu::wmma_impl::load_input<float>(::cuda_emu::wmma_impl::USE_ACC, ::cuda_emu::wmma_impl::OP_LOAD_ACC, a, p,
                                           ldm, layout == mem_col_major, file, line);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& a, const float* p, unsigned ldm,
                             layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_emu::wmma_impl::load_input<float>(::cuda_emu::wmma_impl::USE_ACC, ::cuda_emu::wmma_impl::OP_LOAD_ACC, a, p,
                                           ldm, layout == mem_col_major, file, line);
}

// the accumulators of both shapes (16x16x16 and 16x16x8) are 16x16 floats
template <int K>
inline typename std::enable_if<K == 16 || K == 8>::type
store_matrix_sync(float* p, const fragment<accumulator, 16, 16, K, float>& a, unsigned ldm, layout_t layout,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::cuda_emu::wmma_impl;
  lane_call c = make_call(OP_STORE, file, line);
  c.mem = p;
  c.ldm = ldm;
  c.layout = layout == mem_col_major;
  c.frag = const_cast<float*>(a.x);
  check_memory(c, sizeof(float));
  collective(c, [](warp_calls& w) { perform_store(w); });
}

template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  using namespace ::cuda_emu::wmma_impl;
  lane_call call = make_call(OP_MMA, file, line);
  call.frag = d.x;
  call.a = a.x;
  call.b = b.x;
  call.c = c.x;
  collective(call, [](warp_calls& w) { perform_mma<__nv_bfloat16>(w); });
}

template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                     const fragment<matrix_a, 16, 16, 8, precision::tf32, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 8, precision::tf32, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 8, float>& c, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  using namespace ::cuda_emu::wmma_impl;
  lane_call call = make_call(OP_MMA, file, line);
  call.frag = d.x;
  call.a = a.x;
  call.b = b.x;
  call.c = c.x;
  collective(call, [](warp_calls& w) { perform_mma_tf32(w); });
}

}  // namespace wmma
}  // namespace nvcuda

#endif  // CUDA_EMU_WMMA_H
