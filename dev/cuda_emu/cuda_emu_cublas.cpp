// cuda_emu_cublas.cpp: cuBLAS and cuBLASLt GEMMs on the CPU, for the CPU CUDA
// harness (see cuda_emu.h). Written from NVIDIA's documented semantics:
// column-major matrices, C = alpha * op(A) op(B) + beta * C with op(A) m x k,
// op(B) k x n, C m x n; element (i, j) of a column-major matrix with leading
// dimension ld lies at i + j * ld. cuBLASLt adds D (may differ from C),
// row-major layouts, strided batches and epilogues.
//
// Numerics: products are accumulated in double and alpha/beta applied in
// double, then rounded once to the output type (bf16 and fp16 round to nearest
// even). The reduced-precision input modes round A and B first, as tensor cores
// do: CUBLAS_COMPUTE_32F_FAST_TF32 (or CUBLAS_COMPUTE_32F on a handle in
// CUBLAS_TF32_TENSOR_OP_MATH) to TF32, 10 mantissa bits, to nearest with ties
// away from zero (PTX cvt.rna.tf32.f32; a GPU may truncate instead, so tests
// bound the error by TF32's 2^-10 spacing either way), and
// CUBLAS_COMPUTE_32F_FAST_16BF to bf16, to nearest even. The accumulation stays
// in double, more accurate than a GPU's fp32; tests should use tolerances that
// hold on a GPU too. When beta == 0, C is not read (NaN in C does not propagate),
// as cuBLAS documents.
#include "cuda_emu.h"

#include <set>
#include <string>
#include <vector>

namespace cuda_emu {
void set_library_call(const char* name);
bool is_device_range(const void* p, size_t n);
std::string describe_pointer(const void* p, size_t n);
const char* current_kernel_name();
}  // namespace cuda_emu

using cuda_emu::describe_pointer;
using cuda_emu::is_device_range;

static const int HANDLE_MAGIC = 0xb1a5;

// live handles and descriptors stay reachable from here, so that programs that
// never destroy them (as many do) do not fail LeakSanitizer at exit
static std::set<const void*>& g_live_objects = *new std::set<const void*>();
template <class T>
static T* keep(T* p) {
  g_live_objects.insert(p);
  return p;
}
template <class T>
static void release(T* p) {
  g_live_objects.erase(p);
  delete p;
}
static const uint32_t LT_MAGIC = 0x17de5c;

struct cublasContext {
  int magic;
  cudaStream_t stream;
  cublasMath_t math_mode;
  cublasPointerMode_t pointer_mode;
};
struct cublasLtContext {
  int magic;
};

// sets the "in <call>" context for error and AddressSanitizer messages
struct library_call_scope {
  explicit library_call_scope(const char* name) {
    if (cuda_emu::current_kernel_name()) {
      fprintf(stderr, "cuda_emu: error: %s called from inside kernel '%s'\n", name, cuda_emu::current_kernel_name());
      abort();
    }
    cuda_emu::set_library_call(name);
  }
  ~library_call_scope() { cuda_emu::set_library_call(nullptr); }
};

// ---------------------------------------------------------------------------
// element access by cudaDataType

static size_t type_size(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    case CUDA_R_16BF: return 2;
    case CUDA_R_16F: return 2;
    default: return 0;
  }
}
static const char* type_name(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_64F: return "CUDA_R_64F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_16F: return "CUDA_R_16F";
    default: return "an unsupported cudaDataType";
  }
}
static double load_element(cudaDataType t, const void* base, long long idx) {
  switch (t) {
    case CUDA_R_32F: return ((const float*)base)[idx];
    case CUDA_R_64F: return ((const double*)base)[idx];
    case CUDA_R_16BF: return __bfloat162float(((const __nv_bfloat16*)base)[idx]);
    default: return __half2float(((const __half*)base)[idx]);
  }
}
static void store_element(cudaDataType t, void* base, long long idx, double v) {
  switch (t) {
    case CUDA_R_32F: ((float*)base)[idx] = (float)v; break;
    case CUDA_R_64F: ((double*)base)[idx] = v; break;
    // via float: double -> float -> bf16 can differ from a direct rounding only
    // in ties that a GPU (fp32 epilogue) rounds the same way
    case CUDA_R_16BF: ((__nv_bfloat16*)base)[idx] = __float2bfloat16((float)v); break;
    default: ((__half*)base)[idx] = __float2half((float)v); break;
  }
}

// one matrix operand: rows x cols as stored, column- or row-major, batched
struct matrix_view {
  const char* what;  // "A", "B", ... for messages
  const void* ptr;
  cudaDataType type;
  long long rows, cols, ld;
  bool row_major;
  long long batch_stride;  // in elements
  int batch;
  long long index(long long i, long long j) const { return row_major ? i * ld + j : i + j * ld; }
  // bytes spanned by all batches
  size_t footprint() const {
    if (rows == 0 || cols == 0 || batch == 0) return 0;
    long long last = index(rows - 1, cols - 1) + (long long)(batch - 1) * (batch_stride > 0 ? batch_stride : 0);
    return (size_t)(last + 1) * type_size(type);
  }
};

// the memory a matrix spans must be one device allocation: a GPU faults on
// anything else, so this is fatal here too
static void check_matrix_memory(const char* api, const matrix_view& v) {
  size_t bytes = v.footprint();
  if (bytes == 0) return;
  if (!is_device_range(v.ptr, bytes)) {
    fprintf(stderr,
            "cuda_emu: error: %s: matrix %s (%lld x %lld %s, ld %lld, %s, batch %d, stride %lld) spans %zu bytes, "
            "but its pointer is %s\n",
            api, v.what, v.rows, v.cols, type_name(v.type), v.ld, v.row_major ? "row-major" : "column-major", v.batch,
            v.batch_stride, bytes, describe_pointer(v.ptr, bytes).c_str());
    abort();
  }
}

enum epilogue_kind { EPI_NONE, EPI_RELU, EPI_GELU };

struct gemm_problem {
  long long m, n, k;
  int batch;
  bool trans_a, trans_b;
  matrix_view a, b, c, d;  // a, b as stored; c, d m x n
  double alpha, beta;
  // epilogue (cuBLASLt)
  bool add_bias = false;
  int activation = EPI_NONE;
  const void* bias = nullptr;
  cudaDataType bias_type = CUDA_R_32F;
  long long bias_batch_stride = 0;
  void* aux = nullptr;  // pre-activation output (GELU_AUX)
  cudaDataType aux_type = CUDA_R_32F;
  long long aux_ld = 0, aux_batch_stride = 0;
  int bias_grad = 0;  // 1: BGRADA, 2: BGRADB
  int input_rounding = 0;  // INPUT_* below: A and B rounded before the products
};

enum input_rounding_kind { INPUT_EXACT, INPUT_TF32, INPUT_BF16 };

// x rounded to TF32 (8 exponent bits, 10 mantissa bits), to nearest, ties away
// from zero: add half a TF32 unit to the magnitude bits and cut the 13 low bits
// (a carry into the exponent is the right rounding up); Inf and NaN stay
static float round_to_tf32(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  u = (u + 0x1000u) & 0xffffe000u;
  memcpy(&x, &u, 4);
  return x;
}

static double round_input(int kind, double v) {
  if (kind == INPUT_TF32) return round_to_tf32((float)v);
  if (kind == INPUT_BF16) return __bfloat162float(__float2bfloat16((float)v));
  return v;
}

// which rounding a compute type (and the handle's math mode) asks for, with fp32 inputs
static int input_rounding_for(cublasComputeType_t compute, cublasMath_t math_mode, cudaDataType at) {
  if (at != CUDA_R_32F) return INPUT_EXACT;
  if (compute == CUBLAS_COMPUTE_32F_FAST_TF32) return INPUT_TF32;
  if (compute == CUBLAS_COMPUTE_32F_FAST_16BF) return INPUT_BF16;
  if (compute == CUBLAS_COMPUTE_32F && (math_mode & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH) return INPUT_TF32;
  return INPUT_EXACT;
}

static double gelu_tanh(double x) {
  // cuBLASLt's GELU is the tanh approximation
  const double s = 0.7978845608028654;  // sqrt(2/pi)
  return 0.5 * x * (1.0 + tanh(s * (x + 0.044715 * x * x * x)));
}

// dot product in double over our own packed buffers (bounds are known, so
// the sanitizer's checks are skipped in this hot loop)
#if defined(__GNUC__)
__attribute__((no_sanitize("address", "undefined")))
#endif
static double dot(const double* a, const double* b, long long k) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  long long q = 0;
  for (; q + 4 <= k; q += 4) {
    s0 += a[q] * b[q];
    s1 += a[q + 1] * b[q + 1];
    s2 += a[q + 2] * b[q + 2];
    s3 += a[q + 3] * b[q + 3];
  }
  for (; q < k; q++) s0 += a[q] * b[q];
  return (s0 + s1) + (s2 + s3);
}

// D = epilogue(alpha * op(A) op(B) + beta * C) for every batch
static void run_gemm(const gemm_problem& p) {
  const long long m = p.m, n = p.n, k = p.k;
  std::vector<double> opa((size_t)(m * k)), opb((size_t)(n * k));  // op(A) rows, op(B) columns, contiguous in k
  for (int bt = 0; bt < p.batch; bt++) {
    const char* abase = (const char*)p.a.ptr + (size_t)(bt * p.a.batch_stride) * type_size(p.a.type);
    const char* bbase = (const char*)p.b.ptr + (size_t)(bt * p.b.batch_stride) * type_size(p.b.type);
    const char* cbase = p.c.ptr ? (const char*)p.c.ptr + (size_t)(bt * p.c.batch_stride) * type_size(p.c.type) : nullptr;
    char* dbase = (char*)p.d.ptr + (size_t)(bt * p.d.batch_stride) * type_size(p.d.type);
    // op(A)(i, q) is A(i, q) or A(q, i); op(B)(q, j) is B(q, j) or B(j, q)
    for (long long i = 0; i < m; i++)
      for (long long q = 0; q < k; q++)
        opa[(size_t)(i * k + q)] =
            round_input(p.input_rounding, load_element(p.a.type, abase, p.trans_a ? p.a.index(q, i) : p.a.index(i, q)));
    for (long long j = 0; j < n; j++)
      for (long long q = 0; q < k; q++)
        opb[(size_t)(j * k + q)] =
            round_input(p.input_rounding, load_element(p.b.type, bbase, p.trans_b ? p.b.index(j, q) : p.b.index(q, j)));
    for (long long j = 0; j < n; j++) {
      const double* bj = opb.data() + j * k;
      for (long long i = 0; i < m; i++) {
        double v = p.alpha * dot(opa.data() + i * k, bj, k);
        if (p.beta != 0.0) v += p.beta * load_element(p.c.type, cbase, p.c.index(i, j));
        if (p.add_bias) {
          const char* bb = (const char*)p.bias + (size_t)(bt * p.bias_batch_stride) * type_size(p.bias_type);
          v += load_element(p.bias_type, bb, i);
        }
        if (p.aux) {
          char* xb = (char*)p.aux + (size_t)(bt * p.aux_batch_stride) * type_size(p.aux_type);
          store_element(p.aux_type, xb, i + j * p.aux_ld, v);
        }
        if (p.activation == EPI_RELU) v = v > 0.0 ? v : 0.0;
        if (p.activation == EPI_GELU) v = gelu_tanh(v);
        store_element(p.d.type, dbase, p.d.index(i, j), v);
      }
    }
    if (p.bias_grad) {
      // BGRADA: sum of op(A) over k per row i; BGRADB: sum of op(B) over k per column j
      char* gb = (char*)p.bias + (size_t)(bt * p.bias_batch_stride) * type_size(p.bias_type);
      long long len = p.bias_grad == 1 ? m : n;
      const std::vector<double>& src = p.bias_grad == 1 ? opa : opb;
      for (long long r = 0; r < len; r++) {
        double s = 0.0;
        for (long long q = 0; q < k; q++) s += src[(size_t)(r * k + q)];
        store_element(p.bias_type, gb, r, s);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// cuBLAS

static bool valid_handle(cublasHandle_t h) { return h && h->magic == HANDLE_MAGIC; }

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = keep(new cublasContext{HANDLE_MAGIC, nullptr, CUBLAS_DEFAULT_MATH, CUBLAS_POINTER_MODE_HOST});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!valid_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->magic = 0;
  release(handle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
  if (!valid_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = streamId;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* streamId) {
  if (!valid_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  *streamId = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!valid_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math_mode = mode;  // CUBLAS_TF32_TENSOR_OP_MATH rounds fp32 inputs to TF32 (gemm_entry)
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (!valid_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  *mode = handle->math_mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!valid_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->pointer_mode = mode;  // host and device memory are both addressable here
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t* mode) {
  if (!valid_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  *mode = handle->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t workspaceSizeInBytes) {
  (void)workspace;
  (void)workspaceSizeInBytes;
  return valid_handle(handle) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    default: return cublasGetStatusName(status);
  }
}
const char* cublasLtGetStatusName(cublasStatus_t status) { return cublasGetStatusName(status); }
const char* cublasLtGetStatusString(cublasStatus_t status) { return cublasGetStatusString(status); }
size_t cublasLtGetVersion(void) { return CUBLAS_VERSION; }

static bool valid_stream_for(const char* api, cudaStream_t s) {
  cudaError_t e = cudaStreamQuery(s);
  if (e != cudaSuccess) {
    fprintf(stderr, "cuda_emu: %s: stream %p is not a live stream\n", api, (void*)s);
    return false;
  }
  return true;
}

// the scalar type that alpha and beta point to for a compute type, or -1
static int scalar_type_for(cublasComputeType_t compute) {
  switch ((int)compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case (int)CUDA_R_32F:  // legacy cudaDataType passed as compute type
      return CUDA_R_32F;
    case CUBLAS_COMPUTE_64F:
    case CUBLAS_COMPUTE_64F_PEDANTIC:
      return CUDA_R_64F;
    default:
      return -1;
  }
}

// the type combinations cuBLAS supports for these compute types (A and B alike;
// C like them or fp32 when they are 16-bit; fast modes need all fp32)
static bool supported_types(cublasComputeType_t compute, cudaDataType at, cudaDataType bt, cudaDataType ct) {
  int s = scalar_type_for(compute);
  if (s == CUDA_R_64F) return at == CUDA_R_64F && bt == CUDA_R_64F && ct == CUDA_R_64F;
  if (s != CUDA_R_32F || at != bt) return false;
  bool fast = compute == CUBLAS_COMPUTE_32F_FAST_16F || compute == CUBLAS_COMPUTE_32F_FAST_16BF ||
              compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  if (at == CUDA_R_32F) return ct == CUDA_R_32F;
  if (fast) return false;
  if (at == CUDA_R_16BF || at == CUDA_R_16F) return ct == at || ct == CUDA_R_32F;
  return false;
}

static double load_scalar(int scalar_type, const void* p) {
  return scalar_type == CUDA_R_64F ? *(const double*)p : (double)*(const float*)p;
}

// the common path of every cuBLAS GEMM entry point
static cublasStatus_t gemm_entry(const char* api, cublasHandle_t handle, cublasOperation_t transa,
                                 cublasOperation_t transb, int m, int n, int k, const void* alpha, const void* A,
                                 cudaDataType at, int lda, long long stride_a, const void* B, cudaDataType bt, int ldb,
                                 long long stride_b, const void* beta, void* C, cudaDataType ct, int ldc,
                                 long long stride_c, int batch, cublasComputeType_t compute) {
  library_call_scope scope(api);
  if (!valid_handle(handle)) {
    fprintf(stderr, "cuda_emu: %s: invalid cublasHandle_t (not created by cublasCreate, or destroyed)\n", api);
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  if (!valid_stream_for(api, handle->stream)) return CUBLAS_STATUS_EXECUTION_FAILED;
  bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  // the same argument checks as cuBLAS, which logs the parameter number
  int bad = 0;
  if (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T && transa != CUBLAS_OP_C) bad = 2;
  else if (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T && transb != CUBLAS_OP_C) bad = 3;
  else if (m < 0) bad = 4;
  else if (n < 0) bad = 5;
  else if (k < 0) bad = 6;
  else if (lda < std::max(1, ta ? k : m)) bad = 9;
  else if (ldb < std::max(1, tb ? n : k)) bad = 11;
  else if (ldc < std::max(1, m)) bad = 14;
  else if (batch < 0) bad = 15;
  if (bad) {
    fprintf(stderr,
            "cuda_emu: %s: parameter number %d had an illegal value (transa %s, transb %s, m %d, n %d, k %d, lda %d, "
            "ldb %d, ldc %d, batch %d; column-major: lda >= rows of A as stored = %s)\n",
            api, bad, ta ? "T" : "N", tb ? "T" : "N", m, n, k, lda, ldb, ldc, batch, ta ? "k" : "m");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (!supported_types(compute, at, bt, ct)) {
    fprintf(stderr, "cuda_emu: %s: unsupported combination A %s, B %s, C %s with compute type %d\n", api,
            type_name(at), type_name(bt), type_name(ct), (int)compute);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  int st = scalar_type_for(compute);
  gemm_problem p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.batch = batch;
  p.trans_a = ta;
  p.trans_b = tb;
  p.alpha = load_scalar(st, alpha);
  p.beta = load_scalar(st, beta);
  p.a = matrix_view{"A", A, at, ta ? k : m, ta ? m : k, lda, false, stride_a, batch};
  p.b = matrix_view{"B", B, bt, tb ? n : k, tb ? k : n, ldb, false, stride_b, batch};
  p.c = matrix_view{"C", C, ct, m, n, ldc, false, stride_c, batch};
  p.d = p.c;
  p.input_rounding = input_rounding_for(compute, handle->math_mode, at);
  if (k > 0 && p.alpha != 0.0) {
    check_matrix_memory(api, p.a);
    check_matrix_memory(api, p.b);
  } else {
    p.k = 0;  // C = beta * C, A and B not read
  }
  check_matrix_memory(api, p.c);
  run_gemm(p);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                              const float* beta, float* C, int ldc) {
  return gemm_entry("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb,
                    0, beta, C, CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  (void)algo;
  return gemm_entry("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta,
                    C, Ctype, ldc, 0, 1, computeType);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long int strideA, const float* B, int ldb, long long int strideB,
                                         const float* beta, float* C, int ldc, long long int strideC,
                                         int batchCount) {
  return gemm_entry("cublasSgemmStridedBatched", handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, strideA,
                    B, CUDA_R_32F, ldb, strideB, beta, C, CUDA_R_32F, ldc, strideC, batchCount, CUBLAS_COMPUTE_32F);
}

// C_k = alpha op(A_k) op(B_k) + beta C_k in double, A_k at A + k strideA (elements), likewise B, C
cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const double* alpha, const double* A, int lda,
                                         long long int strideA, const double* B, int ldb, long long int strideB,
                                         const double* beta, double* C, int ldc, long long int strideC,
                                         int batchCount) {
  return gemm_entry("cublasDgemmStridedBatched", handle, transa, transb, m, n, k, alpha, A, CUDA_R_64F, lda, strideA,
                    B, CUDA_R_64F, ldb, strideB, beta, C, CUDA_R_64F, ldc, strideC, batchCount, CUBLAS_COMPUTE_64F);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  (void)algo;
  return gemm_entry("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B,
                    Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType);
}

// the pointer-array entry points: cuBLAS reads Aarray, Barray and Carray on the
// device (a host array of device pointers is a classic mistake, which a GPU
// answers with an illegal address), so each must be device memory of
// batchCount pointers; then entry i is the single GEMM on Aarray[i], Barray[i],
// Carray[i], each checked as one
static void check_pointer_arrays(const char* api, const void* a, const void* b, const void* c, int batch) {
  if (batch <= 0) return;
  size_t bytes = (size_t)batch * sizeof(void*);
  const void* arrays[3] = {a, b, c};
  for (int i = 0; i < 3; i++) {
    if (!is_device_range(arrays[i], bytes)) {
      fprintf(stderr, "cuda_emu: error: %s: the pointer array %s (%d pointers, %zu bytes) must be device memory, but "
              "its pointer is %s\n", api, i == 0 ? "Aarray" : i == 1 ? "Barray" : "Carray", batch, bytes,
              describe_pointer(arrays[i], bytes).c_str());
      abort();
    }
  }
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                   int n, int k, const void* alpha, const void* const Aarray[], cudaDataType Atype,
                                   int lda, const void* const Barray[], cudaDataType Btype, int ldb, const void* beta,
                                   void* const Carray[], cudaDataType Ctype, int ldc, int batchCount,
                                   cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  (void)algo;
  check_pointer_arrays("cublasGemmBatchedEx", Aarray, Barray, Carray, batchCount);
  for (int i = 0; i < batchCount; i++) {
    cublasStatus_t s = gemm_entry("cublasGemmBatchedEx", handle, transa, transb, m, n, k, alpha, Aarray[i], Atype, lda,
                                  0, Barray[i], Btype, ldb, 0, beta, Carray[i], Ctype, ldc, 0, 1, computeType);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                  int n, int k, const float* alpha, const float* const Aarray[], int lda,
                                  const float* const Barray[], int ldb, const float* beta, float* const Carray[],
                                  int ldc, int batchCount) {
  check_pointer_arrays("cublasSgemmBatched", Aarray, Barray, Carray, batchCount);
  for (int i = 0; i < batchCount; i++) {
    cublasStatus_t s = gemm_entry("cublasSgemmBatched", handle, transa, transb, m, n, k, alpha, Aarray[i], CUDA_R_32F,
                                  lda, 0, Barray[i], CUDA_R_32F, ldb, 0, beta, Carray[i], CUDA_R_32F, ldc, 0, 1,
                                  CUBLAS_COMPUTE_32F);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------
// cuBLASLt: descriptors live inside the headers' opaque structs, so both the
// Create functions and the Init helpers on caller memory work

struct lt_matmul_desc {
  uint32_t magic;
  int32_t compute_type;
  int32_t scale_type;
  int32_t pointer_mode;
  int32_t trans_a, trans_b, trans_c;
  int32_t fill_mode;
  uint32_t epilogue;
  int32_t bias_type;  // -1: like D
  int32_t aux_type;   // -1: like D
  int8_t fast_accum;
  const void* bias;
  int64_t bias_batch_stride;
  void* aux;
  int64_t aux_ld;
  int64_t aux_batch_stride;
};
struct lt_layout {
  uint32_t magic;
  uint32_t type;
  int32_t order;
  int32_t batch_count;
  uint64_t rows, cols;
  int64_t ld;
  int64_t batch_stride;
  int64_t plane_offset;
  uint32_t batch_mode;
};
struct lt_preference {
  uint32_t magic;
  uint32_t search_mode;
  uint64_t max_workspace;
  uint32_t min_alignment[4];  // MIN_ALIGNMENT_{A,B,C,D}_BYTES; 0: unset, the library's default 256
};
static_assert(sizeof(lt_matmul_desc) <= sizeof(cublasLtMatmulDescOpaque_t), "matmul desc does not fit");
static_assert(sizeof(lt_layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout does not fit");
static_assert(sizeof(lt_preference) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "preference does not fit");

static lt_matmul_desc* desc_of(cublasLtMatmulDesc_t d) {
  lt_matmul_desc* p = reinterpret_cast<lt_matmul_desc*>(d);
  return p && p->magic == LT_MAGIC ? p : nullptr;
}
static lt_layout* layout_of(cublasLtMatrixLayout_t l) {
  lt_layout* p = reinterpret_cast<lt_layout*>(l);
  return p && p->magic == LT_MAGIC ? p : nullptr;
}
static lt_preference* pref_of(cublasLtMatmulPreference_t l) {
  lt_preference* p = reinterpret_cast<lt_preference*>(l);
  return p && p->magic == LT_MAGIC ? p : nullptr;
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle) {
  *lightHandle = keep(new cublasLtContext{HANDLE_MAGIC});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
  if (!lightHandle || lightHandle->magic != HANDLE_MAGIC) return CUBLAS_STATUS_NOT_INITIALIZED;
  lightHandle->magic = 0;
  release(lightHandle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescInit_internal(cublasLtMatmulDesc_t matmulDesc, size_t size,
                                               cublasComputeType_t computeType, cudaDataType_t scaleType) {
  if (size < sizeof(lt_matmul_desc)) return CUBLAS_STATUS_ALLOC_FAILED;
  lt_matmul_desc* d = reinterpret_cast<lt_matmul_desc*>(matmulDesc);
  memset(matmulDesc, 0, size);
  d->magic = LT_MAGIC;
  d->compute_type = computeType;
  d->scale_type = scaleType;
  d->pointer_mode = CUBLASLT_POINTER_MODE_HOST;
  d->trans_a = d->trans_b = d->trans_c = CUBLAS_OP_N;
  d->fill_mode = CUBLAS_FILL_MODE_FULL;
  d->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  d->bias_type = -1;
  d->aux_type = -1;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
  cublasLtMatmulDescOpaque_t* d = keep(new cublasLtMatmulDescOpaque_t());
  cublasStatus_t s = cublasLtMatmulDescInit_internal(d, sizeof *d, computeType, scaleType);
  *matmulDesc = d;
  return s;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  if (!desc_of(matmulDesc)) return CUBLAS_STATUS_INVALID_VALUE;
  desc_of(matmulDesc)->magic = 0;
  release(matmulDesc);
  return CUBLAS_STATUS_SUCCESS;
}

// attribute table: where each attribute lives and how big it must be
#define LT_DESC_ATTRS(X)                                             \
  X(CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, compute_type)                 \
  X(CUBLASLT_MATMUL_DESC_SCALE_TYPE, scale_type)                     \
  X(CUBLASLT_MATMUL_DESC_POINTER_MODE, pointer_mode)                 \
  X(CUBLASLT_MATMUL_DESC_TRANSA, trans_a)                            \
  X(CUBLASLT_MATMUL_DESC_TRANSB, trans_b)                            \
  X(CUBLASLT_MATMUL_DESC_TRANSC, trans_c)                            \
  X(CUBLASLT_MATMUL_DESC_FILL_MODE, fill_mode)                       \
  X(CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue)                         \
  X(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias)                         \
  X(CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, bias_batch_stride)       \
  X(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux)                  \
  X(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld)                    \
  X(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, aux_batch_stride) \
  X(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type)                  \
  X(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, aux_type)           \
  X(CUBLASLT_MATMUL_DESC_FAST_ACCUM, fast_accum)

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t sizeInBytes) {
  lt_matmul_desc* d = desc_of(matmulDesc);
  if (!d || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
#define X(name, field)                                                                                     \
  case name:                                                                                               \
    if (sizeInBytes != sizeof d->field) {                                                                  \
      fprintf(stderr, "cuda_emu: cublasLtMatmulDescSetAttribute(" #name "): size %zu, expected %zu\n",     \
              sizeInBytes, sizeof d->field);                                                               \
      return CUBLAS_STATUS_INVALID_VALUE;                                                                  \
    }                                                                                                      \
    memcpy(&d->field, buf, sizeof d->field);                                                               \
    return CUBLAS_STATUS_SUCCESS;
    LT_DESC_ATTRS(X)
#undef X
    default:
      fprintf(stderr, "cuda_emu: cublasLtMatmulDescSetAttribute: attribute %d is not emulated\n", (int)attr);
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}
cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              void* buf, size_t sizeInBytes, size_t* sizeWritten) {
  lt_matmul_desc* d = desc_of(matmulDesc);
  if (!d) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
#define X(name, field)                                                        \
  case name:                                                                  \
    if (sizeInBytes == 0 && sizeWritten) {                                    \
      *sizeWritten = sizeof d->field;                                         \
      return CUBLAS_STATUS_SUCCESS;                                           \
    }                                                                         \
    if (sizeInBytes != sizeof d->field || !buf) return CUBLAS_STATUS_INVALID_VALUE; \
    memcpy(buf, &d->field, sizeof d->field);                                  \
    if (sizeWritten) *sizeWritten = sizeof d->field;                          \
    return CUBLAS_STATUS_SUCCESS;
    LT_DESC_ATTRS(X)
#undef X
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatrixLayoutInit_internal(cublasLtMatrixLayout_t matLayout, size_t size, cudaDataType type,
                                                 uint64_t rows, uint64_t cols, int64_t ld) {
  if (size < sizeof(lt_layout)) return CUBLAS_STATUS_ALLOC_FAILED;
  memset(matLayout, 0, size);
  lt_layout* l = reinterpret_cast<lt_layout*>(matLayout);
  l->magic = LT_MAGIC;
  l->type = (uint32_t)type;
  l->order = CUBLASLT_ORDER_COL;
  l->batch_count = 1;
  l->rows = rows;
  l->cols = cols;
  l->ld = ld;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  cublasLtMatrixLayoutOpaque_t* l = keep(new cublasLtMatrixLayoutOpaque_t());
  cublasStatus_t s = cublasLtMatrixLayoutInit_internal(l, sizeof *l, type, rows, cols, ld);
  *matLayout = l;
  return s;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  if (!layout_of(matLayout)) return CUBLAS_STATUS_INVALID_VALUE;
  layout_of(matLayout)->magic = 0;
  release(matLayout);
  return CUBLAS_STATUS_SUCCESS;
}

#define LT_LAYOUT_ATTRS(X)                                    \
  X(CUBLASLT_MATRIX_LAYOUT_TYPE, type)                        \
  X(CUBLASLT_MATRIX_LAYOUT_ORDER, order)                      \
  X(CUBLASLT_MATRIX_LAYOUT_ROWS, rows)                        \
  X(CUBLASLT_MATRIX_LAYOUT_COLS, cols)                        \
  X(CUBLASLT_MATRIX_LAYOUT_LD, ld)                            \
  X(CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, batch_count)          \
  X(CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, batch_stride) \
  X(CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET, plane_offset)        \
  X(CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, batch_mode)

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t sizeInBytes) {
  lt_layout* l = layout_of(matLayout);
  if (!l || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
#define X(name, field)                                                                                   \
  case name:                                                                                             \
    if (sizeInBytes != sizeof l->field) {                                                                \
      fprintf(stderr, "cuda_emu: cublasLtMatrixLayoutSetAttribute(" #name "): size %zu, expected %zu\n", \
              sizeInBytes, sizeof l->field);                                                             \
      return CUBLAS_STATUS_INVALID_VALUE;                                                                \
    }                                                                                                    \
    memcpy(&l->field, buf, sizeof l->field);                                                             \
    return CUBLAS_STATUS_SUCCESS;
    LT_LAYOUT_ATTRS(X)
#undef X
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}
cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                void* buf, size_t sizeInBytes, size_t* sizeWritten) {
  lt_layout* l = layout_of(matLayout);
  if (!l) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
#define X(name, field)                                                        \
  case name:                                                                  \
    if (sizeInBytes == 0 && sizeWritten) {                                    \
      *sizeWritten = sizeof l->field;                                         \
      return CUBLAS_STATUS_SUCCESS;                                           \
    }                                                                         \
    if (sizeInBytes != sizeof l->field || !buf) return CUBLAS_STATUS_INVALID_VALUE; \
    memcpy(buf, &l->field, sizeof l->field);                                  \
    if (sizeWritten) *sizeWritten = sizeof l->field;                          \
    return CUBLAS_STATUS_SUCCESS;
    LT_LAYOUT_ATTRS(X)
#undef X
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmulPreferenceInit_internal(cublasLtMatmulPreference_t pref, size_t size) {
  if (size < sizeof(lt_preference)) return CUBLAS_STATUS_ALLOC_FAILED;
  memset(pref, 0, size);
  reinterpret_cast<lt_preference*>(pref)->magic = LT_MAGIC;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  cublasLtMatmulPreferenceOpaque_t* p = keep(new cublasLtMatmulPreferenceOpaque_t());
  cublasStatus_t s = cublasLtMatmulPreferenceInit_internal(p, sizeof *p);
  *pref = p;
  return s;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  if (!pref_of(pref)) return CUBLAS_STATUS_INVALID_VALUE;
  pref_of(pref)->magic = 0;
  release(pref);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t sizeInBytes) {
  lt_preference* p = pref_of(pref);
  if (!p || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
    if (sizeInBytes != sizeof p->max_workspace) {
      fprintf(stderr, "cuda_emu: cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES): size %zu, expected %zu\n",
              sizeInBytes, sizeof p->max_workspace);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    memcpy(&p->max_workspace, buf, sizeof p->max_workspace);
  } else if (attr == CUBLASLT_MATMUL_PREF_SEARCH_MODE) {
    if (sizeInBytes != sizeof p->search_mode) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&p->search_mode, buf, sizeof p->search_mode);
  } else if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES && attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
    if (sizeInBytes != sizeof(uint32_t)) {
      fprintf(stderr, "cuda_emu: cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_*_BYTES): size %zu, expected 4\n",
              sizeInBytes);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    memcpy(&p->min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, sizeof(uint32_t));
  }
  return CUBLAS_STATUS_SUCCESS;  // other preferences only steer the (absent) heuristic
}
cublasStatus_t cublasLtMatmulPreferenceGetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, void* buf,
                                                    size_t sizeInBytes, size_t* sizeWritten) {
  lt_preference* p = pref_of(pref);
  if (!p) return CUBLAS_STATUS_INVALID_VALUE;
  if (attr != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (sizeInBytes == 0 && sizeWritten) {
    *sizeWritten = sizeof p->max_workspace;
    return CUBLAS_STATUS_SUCCESS;
  }
  if (sizeInBytes != sizeof p->max_workspace || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  memcpy(buf, &p->max_workspace, sizeof p->max_workspace);
  if (sizeWritten) *sizeWritten = sizeof p->max_workspace;
  return CUBLAS_STATUS_SUCCESS;
}

static matrix_view view_of(const char* what, const void* ptr, const lt_layout& l) {
  return matrix_view{what, ptr, (cudaDataType)l.type, (long long)l.rows, (long long)l.cols, l.ld,
                     l.order == CUBLASLT_ORDER_ROW, l.batch_stride, l.batch_count};
}

// ---------------------------------------------------------------------------
// cuBLASLt's alignment rules. the caller declares how aligned its pointers are
// (preference MIN_ALIGNMENT_{A,B,C,D}_BYTES, default 256), and the heuristic
// only returns algorithms that need no more than that; an algorithm that
// loads 16-byte vectors needs every column (row, for row-major) to start on
// 16 bytes too, i.e. the leading dimension (and the batch stride) in bytes a
// multiple of it. so the alignment an algorithm here needs, per operand, is
// the declared one, capped at 16 (the tensor-core kernels' vector width), and
// halved until ld and the batch stride in bytes are multiples of it (never
// below the element size: a declared alignment below it has no algorithm).
// cublasLtMatmul then refuses, with CUBLAS_STATUS_NOT_SUPPORTED as the
// library does, a pointer that is less aligned than its algorithm needs, or
// layouts whose leading dimensions no longer allow it (an algorithm cached
// for one shape and reused for another): on a GPU such a call fails too, or
// faults with a misaligned address.
static const uint32_t LT_VECTOR_BYTES = 16;

static uint32_t layout_alignment_limit(const lt_layout& l, uint32_t want) {
  uint32_t elem = (uint32_t)type_size((cudaDataType)l.type);
  uint32_t a = want;
  auto fits = [&](int64_t units) { return units == 0 || ((uint64_t)units * elem) % a == 0; };
  while (a > elem && !(fits(l.ld) && (l.batch_count <= 1 || fits(l.batch_stride)))) a /= 2;
  return a;
}

static uint32_t log2_of(uint32_t x) {
  uint32_t k = 0;
  while ((1u << k) < x) k++;
  return k;
}

// checks a cublasLtMatmul problem and fills p; prints why when it is invalid
static cublasStatus_t lt_prepare(const char* api, cublasLtMatmulDesc_t computeDesc, cublasLtMatrixLayout_t Adesc,
                                 cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc,
                                 cublasLtMatrixLayout_t Ddesc, gemm_problem* p) {
  lt_matmul_desc* d = desc_of(computeDesc);
  lt_layout *la = layout_of(Adesc), *lb = layout_of(Bdesc), *lc = layout_of(Cdesc), *ld = layout_of(Ddesc);
  if (!d || !la || !lb || !lc || !ld) {
    fprintf(stderr, "cuda_emu: %s: a descriptor or layout is not initialized (or was destroyed)\n", api);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  for (lt_layout* l : {la, lb, lc, ld}) {
    if (l->order != CUBLASLT_ORDER_COL && l->order != CUBLASLT_ORDER_ROW) {
      fprintf(stderr, "cuda_emu: %s: only CUBLASLT_ORDER_COL and CUBLASLT_ORDER_ROW layouts are emulated\n", api);
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (l->plane_offset != 0 || l->batch_mode != 0) {
      fprintf(stderr, "cuda_emu: %s: planar and pointer-array batches are not emulated\n", api);
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    long long minor = l->order == CUBLASLT_ORDER_COL ? (long long)l->rows : (long long)l->cols;
    if (l->ld < std::max(1LL, minor)) {
      fprintf(stderr, "cuda_emu: %s: layout %llu x %llu (%s) has ld %lld, below %lld\n", api,
              (unsigned long long)l->rows, (unsigned long long)l->cols,
              l->order == CUBLASLT_ORDER_COL ? "column-major" : "row-major", (long long)l->ld, minor);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  if (d->trans_c != CUBLAS_OP_N || d->fill_mode != CUBLAS_FILL_MODE_FULL) {
    fprintf(stderr, "cuda_emu: %s: TRANSC must be CUBLAS_OP_N and FILL_MODE full\n", api);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (d->pointer_mode != CUBLASLT_POINTER_MODE_HOST && d->pointer_mode != CUBLASLT_POINTER_MODE_DEVICE) {
    fprintf(stderr, "cuda_emu: %s: alpha/beta vector pointer modes are not emulated\n", api);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  bool ta = d->trans_a != CUBLAS_OP_N, tb = d->trans_b != CUBLAS_OP_N;
  long long m = (long long)ld->rows, n = (long long)ld->cols;
  long long ka = ta ? (long long)la->rows : (long long)la->cols;
  long long ma = ta ? (long long)la->cols : (long long)la->rows;
  long long kb = tb ? (long long)lb->cols : (long long)lb->rows;
  long long nb = tb ? (long long)lb->rows : (long long)lb->cols;
  if (ma != m || nb != n || ka != kb || (long long)lc->rows != m || (long long)lc->cols != n) {
    fprintf(stderr,
            "cuda_emu: %s: shapes do not match: op(A) is %lld x %lld (A %llu x %llu, trans %d), op(B) %lld x %lld "
            "(B %llu x %llu, trans %d), C %llu x %llu, D %lld x %lld\n",
            api, ma, ka, (unsigned long long)la->rows, (unsigned long long)la->cols, (int)ta, kb, nb,
            (unsigned long long)lb->rows, (unsigned long long)lb->cols, (int)tb, (unsigned long long)lc->rows,
            (unsigned long long)lc->cols, m, n);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  int batch = ld->batch_count;
  if (la->batch_count != batch || lb->batch_count != batch || lc->batch_count != batch || batch < 0) {
    fprintf(stderr, "cuda_emu: %s: batch counts differ: A %d, B %d, C %d, D %d\n", api, la->batch_count,
            lb->batch_count, lc->batch_count, ld->batch_count);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  cudaDataType at = (cudaDataType)la->type, bt = (cudaDataType)lb->type, ct = (cudaDataType)lc->type,
               dt = (cudaDataType)ld->type;
  if (ct != dt || !supported_types((cublasComputeType_t)d->compute_type, at, bt, ct) ||
      d->scale_type != scalar_type_for((cublasComputeType_t)d->compute_type)) {
    fprintf(stderr,
            "cuda_emu: %s: unsupported types: A %s, B %s, C %s, D %s, compute type %d, scale type %d (C and D must "
            "match; A and B alike; 16-bit inputs may have fp32 outputs; fp32 scale for fp32 compute)\n",
            api, type_name(at), type_name(bt), type_name(ct), type_name(dt), d->compute_type, d->scale_type);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  p->m = m;
  p->n = n;
  p->k = ka;
  p->batch = batch;
  p->trans_a = ta;
  p->trans_b = tb;
  p->input_rounding = input_rounding_for((cublasComputeType_t)d->compute_type, CUBLAS_DEFAULT_MATH, at);
  // epilogue
  uint32_t e = d->epilogue;
  p->add_bias = false;
  p->activation = EPI_NONE;
  p->bias_grad = 0;
  p->aux = nullptr;
  cudaDataType bias_type = d->bias_type < 0 ? dt : (cudaDataType)d->bias_type;
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT: break;
    case CUBLASLT_EPILOGUE_RELU: p->activation = EPI_RELU; break;
    case CUBLASLT_EPILOGUE_BIAS: p->add_bias = true; break;
    case CUBLASLT_EPILOGUE_RELU_BIAS: p->add_bias = true; p->activation = EPI_RELU; break;
    case CUBLASLT_EPILOGUE_GELU: p->activation = EPI_GELU; break;
    case CUBLASLT_EPILOGUE_GELU_BIAS: p->add_bias = true; p->activation = EPI_GELU; break;
    case CUBLASLT_EPILOGUE_GELU_AUX: p->activation = EPI_GELU; p->aux = d->aux; break;
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: p->add_bias = true; p->activation = EPI_GELU; p->aux = d->aux; break;
    case CUBLASLT_EPILOGUE_BGRADA: p->bias_grad = 1; break;
    case CUBLASLT_EPILOGUE_BGRADB: p->bias_grad = 2; break;
    default:
      fprintf(stderr, "cuda_emu: %s: epilogue %u is not emulated (supported: DEFAULT, RELU, BIAS, RELU_BIAS, GELU, "
              "GELU_BIAS, GELU_AUX, GELU_AUX_BIAS, BGRADA, BGRADB)\n", api, e);
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (p->add_bias || p->bias_grad) {
    if (!d->bias) {
      fprintf(stderr, "cuda_emu: %s: the epilogue needs CUBLASLT_MATMUL_DESC_BIAS_POINTER\n", api);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (type_size(bias_type) == 0 || (p->bias_grad && bias_type != dt)) {
      fprintf(stderr, "cuda_emu: %s: bias type %s is not supported here\n", api, type_name(bias_type));
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    p->bias = d->bias;
    p->bias_type = bias_type;
    p->bias_batch_stride = d->bias_batch_stride;
  }
  if ((e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS)) {
    if (!d->aux || d->aux_ld < m) {
      fprintf(stderr, "cuda_emu: %s: GELU_AUX needs EPILOGUE_AUX_POINTER and EPILOGUE_AUX_LD >= %lld\n", api, m);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    p->aux_type = d->aux_type < 0 ? dt : (cudaDataType)d->aux_type;
    p->aux_ld = d->aux_ld;
    p->aux_batch_stride = d->aux_batch_stride;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int* returnAlgoCount) {
  *returnAlgoCount = 0;
  if (!lightHandle || lightHandle->magic != HANDLE_MAGIC) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (requestedAlgoCount <= 0) return CUBLAS_STATUS_INVALID_VALUE;
  gemm_problem p;
  cublasStatus_t s = lt_prepare("cublasLtMatmulAlgoGetHeuristic", operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &p);
  if (s != CUBLAS_STATUS_SUCCESS) return s == CUBLAS_STATUS_INVALID_VALUE ? s : CUBLAS_STATUS_NOT_SUPPORTED;
  // the alignment the one algorithm needs, per operand (see above)
  lt_preference* pref = pref_of(preference);
  const lt_layout* layouts[4] = {layout_of(Adesc), layout_of(Bdesc), layout_of(Cdesc), layout_of(Ddesc)};
  uint64_t packed = 0;
  for (int i = 0; i < 4; i++) {
    uint32_t declared = pref && pref->min_alignment[i] ? pref->min_alignment[i] : 256;
    uint32_t elem = (uint32_t)type_size((cudaDataType)layouts[i]->type);
    if (declared < elem || (declared & (declared - 1)) != 0) {
      fprintf(stderr, "cuda_emu: cublasLtMatmulAlgoGetHeuristic: MIN_ALIGNMENT_%c_BYTES %u is not a power of two "
              "of at least the element size %u: no algorithm\n", "ABCD"[i], declared, elem);
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    uint32_t need = layout_alignment_limit(*layouts[i], declared < LT_VECTOR_BYTES ? declared : LT_VECTOR_BYTES);
    packed |= (uint64_t)log2_of(need) << (8 * i);
  }
  memset(&heuristicResultsArray[0], 0, sizeof heuristicResultsArray[0]);
  heuristicResultsArray[0].algo.data[0] = LT_MAGIC;  // the one "algorithm": the CPU loop
  heuristicResultsArray[0].algo.data[1] = packed;    // with the alignments it needs
  heuristicResultsArray[0].workspaceSize = 0;
  heuristicResultsArray[0].state = CUBLAS_STATUS_SUCCESS;
  heuristicResultsArray[0].wavesCount = 1.0f;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream) {
  (void)workspace;
  (void)workspaceSizeInBytes;
  const char* api = "cublasLtMatmul";
  library_call_scope scope(api);
  if (!lightHandle || lightHandle->magic != HANDLE_MAGIC) {
    fprintf(stderr, "cuda_emu: %s: invalid cublasLtHandle_t\n", api);
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  if (algo && algo->data[0] != LT_MAGIC) {
    fprintf(stderr, "cuda_emu: %s: the algo did not come from cublasLtMatmulAlgoGetHeuristic\n", api);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (!valid_stream_for(api, stream)) return CUBLAS_STATUS_EXECUTION_FAILED;
  gemm_problem p;
  cublasStatus_t s = lt_prepare(api, computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &p);
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  lt_matmul_desc* d = desc_of(computeDesc);
  int st = scalar_type_for((cublasComputeType_t)d->compute_type);
  p.alpha = load_scalar(st, alpha);
  p.beta = load_scalar(st, beta);
  p.a = view_of("A", A, *layout_of(Adesc));
  p.b = view_of("B", B, *layout_of(Bdesc));
  p.c = view_of("C", C, *layout_of(Cdesc));
  p.d = view_of("D", D, *layout_of(Ddesc));
  if (p.m == 0 || p.n == 0 || p.batch == 0) return CUBLAS_STATUS_SUCCESS;
  if (p.k > 0 && (p.alpha != 0.0 || p.bias_grad)) {
    check_matrix_memory(api, p.a);
    check_matrix_memory(api, p.b);
  } else {
    p.k = 0;
  }
  if (p.beta != 0.0) check_matrix_memory(api, p.c);
  check_matrix_memory(api, p.d);
  if (algo) {
    // the algorithm's alignments against these pointers and these layouts
    const void* ptrs[4] = {A, B, C, D};
    const lt_layout* layouts[4] = {layout_of(Adesc), layout_of(Bdesc), layout_of(Cdesc), layout_of(Ddesc)};
    for (int i = 0; i < 4; i++) {
      if (i == 2 && p.beta == 0.0) continue;  // C is not read
      if ((i == 0 || i == 1) && p.k == 0) continue;
      uint32_t need = 1u << ((algo->data[1] >> (8 * i)) & 0xff);
      uint32_t allowed = layout_alignment_limit(*layouts[i], need);
      if ((uintptr_t)ptrs[i] % need != 0 || allowed < need) {
        fprintf(stderr,
                "cuda_emu: error: %s: matrix %c at %p (ld %lld, batch stride %lld, %zu-byte elements): the algorithm "
                "from cublasLtMatmulAlgoGetHeuristic needs %u-byte alignment of the pointer and of ld and the stride "
                "in bytes (from the preference's MIN_ALIGNMENT_%c_BYTES and the layout it was chosen for); a GPU "
                "refuses this call or faults with a misaligned address. hint: align the buffer, pad the leading "
                "dimension, or declare the real alignment in the preference\n",
                api, "ABCD"[i], ptrs[i], (long long)layouts[i]->ld, (long long)layouts[i]->batch_stride,
                type_size((cudaDataType)layouts[i]->type), need, "ABCD"[i]);
        return CUBLAS_STATUS_NOT_SUPPORTED;
      }
    }
  }
  if (p.add_bias || p.bias_grad) {
    matrix_view bv{"bias", p.bias, p.bias_type, p.bias_grad == 2 ? p.n : p.m, 1, p.bias_grad == 2 ? p.n : p.m, false,
                   p.bias_batch_stride, p.batch};
    check_matrix_memory(api, bv);
  }
  if (p.aux) {
    matrix_view xv{"aux", p.aux, p.aux_type, p.m, p.n, p.aux_ld, false, p.aux_batch_stride, p.batch};
    check_matrix_memory(api, xv);
  }
  if (p.beta != 0.0 && p.c.ptr != p.d.ptr) {
    // C is read while D is written: they must not overlap partially
    size_t cb = p.c.footprint(), db = p.d.footprint();
    const char *c0 = (const char*)p.c.ptr, *d0 = (const char*)p.d.ptr;
    if (c0 < d0 + db && d0 < c0 + cb) {
      fprintf(stderr, "cuda_emu: %s: C and D overlap without being the same matrix\n", api);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  if (p.c.ptr == p.d.ptr && p.beta != 0.0) {
    lt_layout *lc = layout_of(Cdesc), *ldd = layout_of(Ddesc);
    if (lc->ld != ldd->ld || lc->order != ldd->order || lc->batch_stride != ldd->batch_stride) {
      fprintf(stderr, "cuda_emu: %s: in-place C == D needs identical C and D layouts\n", api);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  run_gemm(p);
  return CUBLAS_STATUS_SUCCESS;
}
