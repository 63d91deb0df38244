/*
train_llama_subtrack.cu: a LLaMA trained with SubTrack++, on one NVIDIA GPU.

This is the CUDA twin of train_llama_subtrack.c. It includes that file inside
`namespace cpu`, so the flags, presets, parameter table, shard loader,
decoder, learning-rate schedule and checkpoint format are the very same code
(cpu::...), and every launcher below has a CPU twin of the same name and
argument order there. dev/test_gpu/test_subtrack_gpu.cu compares the two.

build and run (needs a GPU; without one, use ./train_llama_subtrack_cpu):
    make train && ./train_llama_subtrack --help

the file reads top to bottom:
    1. utilities: error checks, the row-major cuBLAS gemm
    2. the layers: kernels, then their launchers (X_forward / X_backward)
    3. the model on the device: parameters, activations, forward, backward
    4. the optimizers on the device
    5. training: the loop, evaluation, sampling, checkpoints, main

precision (--dtype):
    bfloat16 (the default here) keeps the activations and their gradients
        (B,T,*) in bf16 and feeds cuBLAS bf16 matrices with fp32 accumulation
        (CUBLAS_COMPUTE_32F). the weights stay fp32 masters; a bf16 copy of
        them, refreshed after every optimizer step, feeds the products. the
        weight gradients, the optimizer states and S are fp32, and every
        kernel loads bf16, computes in fp32 registers and rounds once on the
        store. the small per-row tensors (rstd, losses, log-sum-exp) and the
        rope tables stay fp32.
    float32 runs everything in fp32 (cuBLAS with CUBLAS_COMPUTE_32F, no
        TF32), for comparison with the CPU at fp32 accuracy.
the kernels of the layers are templates on the activation type X (float or
__nv_bfloat16), so both are compiled from one source; llama_forward and
llama_backward pick the instance once, from the model's dtype.

letter legend for shape comments:
    B batch, T sequence, C channels, NH heads, HS head size (C / NH),
    F intermediate (MLP), V vocab, L layers, R rank
*/
// every system header the C file uses comes first, at global scope, so their
// include guards keep them out of `namespace cpu` below
#define _FILE_OFFSET_BITS 64
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <errno.h>
#include <float.h>
#include <glob.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <ctype.h>
#include <unistd.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>  // the rendezvous of the ranks (in the C file, included below in a namespace)
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>     // the collectives' watchdog
#ifdef _OPENMP
#include <omp.h>
#endif
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cusolverDn.h>
#include "flash_attention.cuh"  // causal attention (flash): kernels and launchers
// NCCL for data parallel: where its header is, the build links it (make
// train); without it the trainer runs one process and says so to a launcher
#if __has_include(<nccl.h>) && !defined(SUBTRACK_NO_NCCL)
#include <nccl.h>
#define HAVE_NCCL 1
#else
#define HAVE_NCCL 0
#endif

// the CPU reference and trainer, as a library: its main() is left out
#ifndef TESTING
#define TESTING
#define TRAIN_CU_DEFINED_TESTING
#endif
// the few C functions that kernels call too (the stochastic rounding's
// integer arithmetic) are marked HOST_DEVICE there: compiled for both sides
#define HOST_DEVICE __host__ __device__
namespace cpu {
#include "train_llama_subtrack.c"
}
#ifdef TRAIN_CU_DEFINED_TESTING
#undef TESTING
#undef TRAIN_CU_DEFINED_TESTING
#endif

// ----------------------------------------------------------------------------
// utilities

static void cuda_check_at(cudaError_t err, const char* what, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: CUDA %s failed at %s:%d: %s\n", what, file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}
#define cuda_check(call) cuda_check_at((call), #call, __FILE__, __LINE__)

static void cublas_check_at(cublasStatus_t st, const char* what, const char* file, int line) {
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS %s failed at %s:%d: status %d\n", what, file, line, (int)st);
        exit(EXIT_FAILURE);
    }
}
#define cublas_check(call) cublas_check_at((call), #call, __FILE__, __LINE__)

// a launch error (bad configuration, too much shared memory) shows at once
#define launch_check() cuda_check(cudaGetLastError())

static int ceil_div(size_t a, size_t b) {
    return (int)((a + b - 1) / b);
}

// set by the trainer's build: what an out-of-memory message explains
static void (*g_oom_explain)(FILE* out);

static void* device_malloc(size_t bytes, const char* what) {
    void* p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes > 0 ? bytes : 1);
    if (err != cudaSuccess) {
        fprintf(stderr, "error: out of GPU memory allocating %zu bytes for %s (%s); %s\n", bytes, what,
                cudaGetErrorString(err), cpu::memory_hint(what));
        if (g_oom_explain != NULL) { g_oom_explain(stderr); }
        exit(EXIT_FAILURE);
    }
    return p;
}

// one cuBLASLt handle for the model's products (gemm_lt below), with
// CUBLAS_COMPUTE_32F: fp32 products stay fp32 (no TF32). its workspace is
// ours, CUBLAS_WORKSPACE_BYTES (the size NVIDIA recommends for Hopper; 4 MiB
// elsewhere), passed to every call, so that the memory plan holds it and no
// call allocates. the optimizer's cuBLAS handle has a workspace of its own
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
static cublasLtHandle_t g_cublaslt;
static void* g_cublas_workspace;

// one cached cuBLASLt plan: the descriptor, the four layouts and the algorithm
// the heuristic chose for one problem, found by its key
#define LT_PLAN_KEY_INTS 18
typedef struct {
    long long key[LT_PLAN_KEY_INTS];
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c, d;
    cublasLtMatmulAlgo_t algo;
} LtPlan;
static LtPlan* g_lt_plans;  // (g_lt_capacity) host; a training run has a few dozen
static int g_lt_num_plans, g_lt_capacity;

static void cublas_init(void) {
    if (g_cublaslt == NULL) {
        g_cublas_workspace = device_malloc(CUBLAS_WORKSPACE_BYTES, "cuBLAS workspace");
        cublas_check(cublasLtCreate(&g_cublaslt));
        g_lt_plans = NULL;
        g_lt_num_plans = g_lt_capacity = 0;
    }
}

static void cublas_free(void) {
    if (g_cublaslt == NULL) { return; }
    for (int i = 0; i < g_lt_num_plans; i++) {
        LtPlan* pl = &g_lt_plans[i];
        cublas_check(cublasLtMatrixLayoutDestroy(pl->a));
        cublas_check(cublasLtMatrixLayoutDestroy(pl->b));
        cublas_check(cublasLtMatrixLayoutDestroy(pl->c));
        cublas_check(cublasLtMatrixLayoutDestroy(pl->d));
        cublas_check(cublasLtMatmulDescDestroy(pl->desc));
    }
    free(g_lt_plans);
    g_lt_plans = NULL;
    g_lt_num_plans = g_lt_capacity = 0;
    cublas_check(cublasLtDestroy(g_cublaslt));
    g_cublaslt = NULL;
    cuda_check(cudaFree(g_cublas_workspace));
    g_cublas_workspace = NULL;
}

// the element type of the activations (--dtype). the weights, their
// gradients and the optimizer are fp32 in both
typedef enum { DTYPE_FLOAT32, DTYPE_BFLOAT16 } Dtype;
typedef __nv_bfloat16 bf16;

static Dtype dtype_from_name(const char* name) {
    return strcmp(name, "bfloat16") == 0 ? DTYPE_BFLOAT16 : DTYPE_FLOAT32;
}

static size_t dtype_bytes(Dtype dt) {
    return dt == DTYPE_BFLOAT16 ? sizeof(bf16) : sizeof(float);
}

// the cuBLAS type tag of an element type, for the templated launchers
template <typename X> struct CudaType;
template <> struct CudaType<float> { static constexpr cudaDataType_t value = CUDA_R_32F; };
template <> struct CudaType<bf16> { static constexpr cudaDataType_t value = CUDA_R_16BF; };

// the alignment a pointer is known to have, up to 16 bytes (what cuBLASLt's
// tensor-core kernels load at once); it is declared to the heuristic, which
// then only picks algorithms that need no more
static uint32_t pointer_alignment(const void* p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t align = 16;
    while (align > 1 && a % align != 0) { align /= 2; }
    return align;
}

static cublasLtMatrixLayout_t lt_layout(cudaDataType_t type, int rows, int cols, int ld, int batch,
                                        long long stride) {
    cublasLtMatrixLayout_t l;
    cublas_check(cublasLtMatrixLayoutCreate(&l, type, rows, cols, ld));
    if (batch > 1) {
        int32_t count = batch;
        int64_t offset = stride;
        cublas_check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
        cublas_check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset,
                                                      sizeof offset));
    }
    return l;
}

// the matrix product, row-major, with the CPU gemm's arguments (see
// cpu::gemm), batched over `batch` matrices spaced by the given strides:
// Dm = alpha op(A) op(B) + beta Cm. Cm and Dm are the same matrix except
// where an epilogue adds another one (matmul_forward_residual).
// cuBLAS is column-major: a row-major (M, N) matrix is a column-major (N, M)
// one, so C = op(A) op(B) becomes C^T = op(B)^T op(A)^T, i.e. the same call
// with A and B swapped and M and N swapped; the transpose flags carry over.
// ab_type is the type of A and B, c_type that of C and D; the accumulation is
// fp32 whatever they are (CUBLAS_COMPUTE_32F, no TF32), and with bf16 inputs
// C may be fp32 (the weight gradients) or bf16 (activations).
// every model product goes through cuBLASLt: the first call of each problem
// (shapes, strides, types and the alignment of the four pointers) asks the
// heuristic for an algorithm within the fixed workspace and caches it; later
// calls reuse it, so a step makes no heuristic query and allocates nothing
static void gemm_lt(int transA, int transB, int M, int N, int K, float alpha,
                    const void* A, int lda, long long strideA, const void* B, int ldb, long long strideB,
                    float beta, const void* Cm, void* Dm, int ldc, long long strideC, int batch,
                    cudaDataType_t ab_type, cudaDataType_t c_type) {
    // in cuBLAS's column-major terms: first operand B (N x K, or K x N stored), second A
    uint32_t align[4] = {pointer_alignment(B), pointer_alignment(A), pointer_alignment(Cm), pointer_alignment(Dm)};
    long long key[LT_PLAN_KEY_INTS] = {transA, transB, M, N, K, lda, ldb, ldc, batch, strideA, strideB, strideC,
                                       (long long)ab_type, (long long)c_type, align[0], align[1], align[2], align[3]};
    LtPlan* plan = NULL;
    for (int i = 0; i < g_lt_num_plans && plan == NULL; i++) {
        if (memcmp(g_lt_plans[i].key, key, sizeof key) == 0) { plan = &g_lt_plans[i]; }
    }
    if (plan == NULL) {
        if (g_lt_num_plans == g_lt_capacity) {
            g_lt_capacity = g_lt_capacity > 0 ? 2 * g_lt_capacity : 64;
            g_lt_plans = (LtPlan*)realloc(g_lt_plans, (size_t)g_lt_capacity * sizeof(LtPlan));
            if (g_lt_plans == NULL) { cpu::fatal("out of host memory for %d cuBLASLt plans", g_lt_capacity); }
        }
        plan = &g_lt_plans[g_lt_num_plans];
        memcpy(plan->key, key, sizeof key);
        cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublas_check(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublas_check(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opB, sizeof opB));
        cublas_check(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opA, sizeof opA));
        plan->a = lt_layout(ab_type, transB ? K : N, transB ? N : K, ldb, batch, strideB);
        plan->b = lt_layout(ab_type, transA ? M : K, transA ? K : M, lda, batch, strideA);
        plan->c = lt_layout(c_type, N, M, ldc, batch, strideC);
        plan->d = lt_layout(c_type, N, M, ldc, batch, strideC);
        cublasLtMatmulPreference_t pref;
        cublas_check(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t workspace = CUBLAS_WORKSPACE_BYTES;
        cublas_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                          sizeof workspace));
        const cublasLtMatmulPreferenceAttributes_t which[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++) {
            cublas_check(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &align[i], sizeof align[i]));
        }
        cublasLtMatmulHeuristicResult_t found;
        int count = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_cublaslt, plan->desc, plan->a, plan->b, plan->c,
                                                           plan->d, pref, 1, &found, &count);
        cublas_check(cublasLtMatmulPreferenceDestroy(pref));
        if (st != CUBLAS_STATUS_SUCCESS || count == 0) {
            fprintf(stderr, "error: cuBLASLt has no algorithm for the product (%d x %d) = op(%d x %d) op(%d x %d), "
                    "batch %d, lda %d, ldb %d, ldc %d (status %d)\nhint: this is a bug in train_llama_subtrack.cu; "
                    "please report the model config\n", M, N, transA ? K : M, transA ? M : K, transB ? N : K,
                    transB ? K : N, batch, lda, ldb, ldc, (int)st);
            exit(EXIT_FAILURE);
        }
        plan->algo = found.algo;
        g_lt_num_plans++;
    }
    cublas_check(cublasLtMatmul(g_cublaslt, plan->desc, &alpha, B, plan->a, A, plan->b, &beta, Cm, plan->c, Dm,
                                plan->d, &plan->algo, g_cublas_workspace, CUBLAS_WORKSPACE_BYTES, 0));
}

static void gemm_batched_typed(int transA, int transB, int M, int N, int K, float alpha,
                               const void* A, int lda, long long strideA,
                               const void* B, int ldb, long long strideB,
                               float beta, void* Cm, int ldc, long long strideC, int batch,
                               cudaDataType_t ab_type, cudaDataType_t c_type) {
    gemm_lt(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, Cm, Cm, ldc, strideC, batch,
            ab_type, c_type);
}

// the same, typed: A, B of type X, C of type Y
template <typename X, typename Y>
static void gemm_batched(int transA, int transB, int M, int N, int K, float alpha,
                         const X* A, int lda, long long strideA, const X* B, int ldb, long long strideB,
                         float beta, Y* Cm, int ldc, long long strideC, int batch) {
    gemm_batched_typed(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, Cm, ldc, strideC,
                       batch, CudaType<X>::value, CudaType<Y>::value);
}

template <typename X, typename Y>
static void gemm(int transA, int transB, int M, int N, int K, float alpha,
                 const X* A, int lda, const X* B, int ldb, float beta, Y* Cm, int ldc) {
    gemm_batched(transA, transB, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, Cm, ldc, 0, 1);
}

// ----------------------------------------------------------------------------
// reductions inside a kernel. every sum has a fixed order for a given launch
// shape (no atomics anywhere), so runs repeat bit for bit on the same device.

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) { x += __shfl_xor_sync(FULL_MASK, x, o); }
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) { x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, o)); }
    return x;
}

// sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
// every thread gets the result. shared: 32 floats of scratch
__device__ float block_sum(float x, float* shared) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    int nwarps = blockDim.x / WARP_SIZE;
    x = warp_sum(x);
    __syncthreads();  // shared may still be read by a previous call
    if (lane == 0) { shared[warp] = x; }
    __syncthreads();
    x = lane < nwarps ? shared[lane] : 0.0f;
    return warp_sum(x);
}

__device__ float block_max(float x, float* shared) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    int nwarps = blockDim.x / WARP_SIZE;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) { shared[warp] = x; }
    __syncthreads();
    x = lane < nwarps ? shared[lane] : -INFINITY;
    return warp_max(x);
}

// ----------------------------------------------------------------------------
// the layers: kernels. each launcher below has the CPU twin's name and arguments.
//
// the kernels are templates on X, the element type of the activations and
// their gradients (float or bf16). every value is loaded with to_float,
// computed on in fp32 registers and rounded once, by from_float, on the
// store; with X = float both are the identity, so the fp32 build does the
// very arithmetic of a float-only kernel. weights read by a kernel (norm
// weights, the embedding table) are the fp32 masters, or the bf16 weights
// when there are none (WT, below).

#define BLOCK_ELEMENTWISE 256
#define BLOCK_ROWS 256      // rmsnorm and softmax: one warp per row, 8 rows per block
#define BLOCK_CE 512        // cross-entropy: one block per row of V logits
#define BLOCK_COLUMNS 256   // per-channel sums over rows (weight gradients)

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

// round to nearest even (the bf16 conversion); fp32 is stored as is
template <typename X> __device__ __forceinline__ X from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16(x); }

// 128-bit loads and stores: a pack of 16 bytes of X (8 bf16 or 4 floats)
// moves with one int4 access instead of 8 or 4 narrow ones. the launchers use
// the packed kernels when N (or a row's length) is a multiple of the pack and
// every pointer is 16-byte aligned (the activations are), and the one-element
// kernels otherwise; both do the same arithmetic per element (the same inline
// functions), and the packed row kernels add up their sums in the one-element
// kernels' order (see rmsnorm_forward_packed_kernel), so the results are the
// same bits
template <typename X>
struct Pack128 {
    static constexpr int size = 16 / sizeof(X);
    alignas(16) X x[16 / sizeof(X)];
};

template <typename X>
__device__ __forceinline__ Pack128<X> load128(const X* p) {
    int4 bits = *reinterpret_cast<const int4*>(p);
    Pack128<X> out;
    memcpy(&out, &bits, sizeof bits);
    return out;
}

template <typename X>
__device__ __forceinline__ void store128(X* p, const Pack128<X>& v) {
    int4 bits;
    memcpy(&bits, &v, sizeof bits);
    *reinterpret_cast<int4*>(p) = bits;
}

static int aligned128(const void* p) { return ((uintptr_t)p & 15) == 0; }

// the Pack128<X>::size elements of T at p (16-byte aligned) as floats, in
// 128-bit loads: the fp32 weights or rope tables beside a pack of bf16
// activations take two
template <typename X, typename T>
__device__ __forceinline__ void load128_floats(float* out, const T* p) {
    static_assert(sizeof(T) >= sizeof(X), "a pack of X must span whole packs of T");
    for (int i = 0; i < Pack128<X>::size; i += Pack128<T>::size) {
        Pack128<T> v = load128(p + i);
        for (int k = 0; k < Pack128<T>::size; k++) { out[i + k] = to_float(v.x[k]); }
    }
}

// the other way: Pack128<X>::size floats from v to p (16-byte aligned), in
// 128-bit stores (a pack of bf16 widened takes two)
template <typename X>
__device__ __forceinline__ void store128_floats(float* p, const float* v) {
    for (int i = 0; i < Pack128<X>::size; i += Pack128<float>::size) {
        Pack128<float> o;
        for (int k = 0; k < Pack128<float>::size; k++) { o.x[k] = v[i + k]; }
        store128(p + i, o);
    }
}

// the step's and the optimizer's elementwise kernels (gradient norm and
// clipping, AdamW, the bf16 copies, the low-rank step's elementwise passes)
// are one kernel each, a pack a thread: 4 floats, or 8 elements where bf16
// meets fp32 (one 128-bit bf16 access, two fp32 ones). vec is the launcher's
// verdict that every pointer is 16-byte aligned (aligned128_all); a whole
// pack then moves with 128-bit accesses, and the tail (a pack past n), or
// every pack when vec is 0, goes element by element. both paths call the
// same inline function per element, in the same order, so the results are
// the same bits either way, and the same as the one-element kernels' before
// them (but for the gradient norm, which now sums in pack order: see
// squared_norm_chunks_kernel). NULL (an absent operand) counts as aligned
static int aligned128_all(const void* a, const void* b = NULL, const void* c = NULL, const void* d = NULL) {
    return aligned128(a) && aligned128(b) && aligned128(c) && aligned128(d);
}

// WT: the type of the weights a kernel reads, fp32 (the masters) or bf16
// (--master_weights 0 with bf16 activations: the weights themselves)
template <typename X, typename WT>
__global__ void encoder_forward_kernel(X* out, const int* inp, const WT* wte, int BT, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)BT * C) { return; }
    size_t i = idx / C, c = idx % C;
    out[idx] = from_float<X>(to_float(wte[(size_t)inp[i] * C + c]));
}

// one block per (token that occurs, slice of channels); the rows of a token
// are added in row order straight into its dwte row, the CPU's order, so the
// result is the CPU loop's bits and the same every run (no atomics).
// rows (BT) are the positions grouped by token, bucket b's at
// rows[starts[b] .. starts[b+1]), of token tokens[b] (encoder_backward_buckets)
template <typename X>
__global__ void encoder_backward_kernel(float* dwte, const X* dout, const int* rows, const int* starts,
                                        const int* tokens, int C) {
    int b = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) { return; }
    float* w = dwte + (size_t)tokens[b] * C + c;
    float acc = *w;
    for (int j = starts[b]; j < starts[b + 1]; j++) { acc += to_float(dout[(size_t)rows[j] * C + c]); }
    *w = acc;
}

// rmsnorm's output element, and its input gradient's (below): shared by the
// one-element and the packed kernels, so that both compute and round alike
__device__ __forceinline__ float rmsnorm_value(float x, float s, float w) { return (x * s) * w; }

// one warp per row
template <typename X, typename WT>
__global__ void rmsnorm_forward_kernel(X* out, float* rstd, const X* inp, const WT* weight,
                                       int BT, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= BT) { return; }  // whole warps leave together: the shuffles stay full
    const X* x = inp + (size_t)row * C;
    X* o = out + (size_t)row * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) {
        float xc = to_float(x[c]);
        ss += xc * xc;
    }
    ss = warp_sum(ss);
    float s = rsqrtf(ss / C + eps);
    for (int c = lane; c < C; c += WARP_SIZE) {
        o[c] = from_float<X>(rmsnorm_value(to_float(x[c]), s, to_float(weight[c])));
    }
    if (lane == 0) { rstd[row] = s; }
}

// the same with 128-bit accesses (C a multiple of the pack). for the same
// rstd, each lane must add the same elements in the same order as above
// (c = lane, lane + 32, ...), but a lane's load brings a pack of neighbours.
// so the warp loads a chunk of the row, 32 packs, into shared memory, and
// each lane then adds its elements of the chunk from there. the second pass
// is elementwise and works on packs straight from memory
template <typename X, typename WT>
__global__ void __launch_bounds__(BLOCK_ROWS)
rmsnorm_forward_packed_kernel(X* out, float* rstd, const X* inp, const WT* weight, int BT, int C, float eps) {
    constexpr int P = Pack128<X>::size, CHUNK = WARP_SIZE * P;
    __shared__ alignas(16) X chunks[BLOCK_ROWS / WARP_SIZE][CHUNK];
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    int row = blockIdx.x * (BLOCK_ROWS / WARP_SIZE) + warp;
    if (row >= BT) { return; }
    const X* x = inp + (size_t)row * C;
    X* o = out + (size_t)row * C;
    X* chunk = chunks[warp];
    float ss = 0.0f;
    for (int base = 0; base < C; base += CHUNK) {
        if (base + lane * P < C) { store128(chunk + lane * P, load128(x + base + lane * P)); }
        __syncwarp();
        for (int c = lane; c < CHUNK && base + c < C; c += WARP_SIZE) {
            float xc = to_float(chunk[c]);
            ss += xc * xc;
        }
        __syncwarp();  // every lane has read the chunk before the next one overwrites it
    }
    ss = warp_sum(ss);
    float s = rsqrtf(ss / C + eps);
    for (int c = lane * P; c < C; c += CHUNK) {
        Pack128<X> xv = load128(x + c), ov;
        float w[P];
        load128_floats<X>(w, weight + c);
        for (int k = 0; k < P; k++) { ov.x[k] = from_float<X>(rmsnorm_value(to_float(xv.x[k]), s, w[k])); }
        store128(o + c, ov);
    }
    if (lane == 0) { rstd[row] = s; }
}

// in the forward pass o = w * x * s with s = (mean(x^2)+eps)^-1/2, so
// dx = s * (w*do) - x * s^3 / C * sum(w*do*x), added to dx
__device__ __forceinline__ float rmsnorm_dinp_value(float dx, float s, float w, float g, float k, float x) {
    return dx + (s * w * g - k * x);
}

// the norm's output gradient at element i: dout, or, when two branches read
// the norm's output, dout + dout2 rounded to X: the value residual_backward
// would have stored in dout, computed where it is read instead
// (rmsnorm_backward_residual)
template <typename X>
__device__ __forceinline__ X rmsnorm_dout(const X* dout, const X* dout2, size_t i) {
    return dout2 == NULL ? dout[i] : from_float<X>(to_float(dout[i]) + to_float(dout2[i]));
}

template <typename X>
__device__ __forceinline__ Pack128<X> rmsnorm_dout_pack(const X* dout, const X* dout2, size_t i) {
    Pack128<X> g = load128(dout + i);
    if (dout2 != NULL) {
        Pack128<X> g2 = load128(dout2 + i);
        for (int k = 0; k < Pack128<X>::size; k++) { g.x[k] = from_float<X>(to_float(g.x[k]) + to_float(g2.x[k])); }
    }
    return g;
}

// one warp per row, += into dinp; dout2 may be NULL
template <typename X, typename WT>
__global__ void rmsnorm_backward_dinp_kernel(X* dinp, const X* dout, const X* dout2, const X* inp,
                                             const WT* weight, const float* rstd, int BT, int C) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= BT) { return; }
    size_t r = (size_t)row * C;
    float s = rstd[row];
    float dot = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) {
        dot += to_float(weight[c]) * to_float(rmsnorm_dout(dout, dout2, r + c)) * to_float(inp[r + c]);
    }
    dot = warp_sum(dot);
    float k = dot * s * s * s / C;
    for (int c = lane; c < C; c += WARP_SIZE) {
        dinp[r + c] = from_float<X>(rmsnorm_dinp_value(to_float(dinp[r + c]), s, to_float(weight[c]),
                                                       to_float(rmsnorm_dout(dout, dout2, r + c)), k,
                                                       to_float(inp[r + c])));
    }
}

// the same with 128-bit accesses, the dot product's terms added in the
// order above through shared memory as in rmsnorm_forward_packed_kernel (the
// weights, the same for every row, are read one by one from cache there)
template <typename X, typename WT>
__global__ void __launch_bounds__(BLOCK_ROWS)
rmsnorm_backward_dinp_packed_kernel(X* dinp, const X* dout, const X* dout2, const X* inp,
                                    const WT* weight, const float* rstd, int BT, int C) {
    constexpr int P = Pack128<X>::size, CHUNK = WARP_SIZE * P;
    __shared__ alignas(16) X gchunks[BLOCK_ROWS / WARP_SIZE][CHUNK];
    __shared__ alignas(16) X xchunks[BLOCK_ROWS / WARP_SIZE][CHUNK];
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    int row = blockIdx.x * (BLOCK_ROWS / WARP_SIZE) + warp;
    if (row >= BT) { return; }
    size_t r = (size_t)row * C;
    X* gchunk = gchunks[warp];
    X* xchunk = xchunks[warp];
    float s = rstd[row];
    float dot = 0.0f;
    for (int base = 0; base < C; base += CHUNK) {
        if (base + lane * P < C) {
            store128(gchunk + lane * P, rmsnorm_dout_pack(dout, dout2, r + base + lane * P));
            store128(xchunk + lane * P, load128(inp + r + base + lane * P));
        }
        __syncwarp();
        for (int c = lane; c < CHUNK && base + c < C; c += WARP_SIZE) {
            dot += to_float(weight[base + c]) * to_float(gchunk[c]) * to_float(xchunk[c]);
        }
        __syncwarp();
    }
    dot = warp_sum(dot);
    float k = dot * s * s * s / C;
    for (int c = lane * P; c < C; c += CHUNK) {
        Pack128<X> d = load128(dinp + r + c), g = rmsnorm_dout_pack(dout, dout2, r + c), xv = load128(inp + r + c);
        float w[P];
        load128_floats<X>(w, weight + c);
        for (int j = 0; j < P; j++) {
            d.x[j] = from_float<X>(rmsnorm_dinp_value(to_float(d.x[j]), s, w[j], to_float(g.x[j]), k,
                                                      to_float(xv.x[j])));
        }
        store128(dinp + r + c, d);
    }
}

// dweight[c] += sum over rows of dout * inp * rstd (dout: rmsnorm_dout, so
// with dout2 the sum of both, rounded as the row kernel rounds it).
// the weight gradient is a sum over all B*T rows per channel: two passes, so
// that the rows spread over many blocks and the order stays fixed. pass 1:
// block (x, y) sums rows y*COLUMN_CHUNK_ROWS .. of COLUMN_TILE channels, each
// of its COLUMN_ROW_LANES rows of threads walking every COLUMN_ROW_LANES-th row,
// the lanes then added in lane order; pass 2 (column_partials_sum_kernel) adds
// the chunks in chunk order. at 1B (BT 2048, C 2048) that is 512 blocks
#define COLUMN_CHUNK_ROWS 256
#define COLUMN_TILE 32
#define COLUMN_ROW_LANES 8
template <typename X>
__global__ void __launch_bounds__(COLUMN_TILE * COLUMN_ROW_LANES)
rmsnorm_backward_dweight_kernel(float* partial, const X* dout, const X* dout2, const X* inp, const float* rstd,
                                int BT, int C) {
    __shared__ float lanes[COLUMN_ROW_LANES][COLUMN_TILE];
    int c = blockIdx.x * COLUMN_TILE + threadIdx.x, chunk = blockIdx.y;
    int end = (chunk + 1) * COLUMN_CHUNK_ROWS < BT ? (chunk + 1) * COLUMN_CHUNK_ROWS : BT;
    float acc = 0.0f;
    if (c < C) {
        for (int i = chunk * COLUMN_CHUNK_ROWS + threadIdx.y; i < end; i += COLUMN_ROW_LANES) {
            acc += to_float(rmsnorm_dout(dout, dout2, (size_t)i * C + c)) * to_float(inp[(size_t)i * C + c]) * rstd[i];
        }
    }
    lanes[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float sum = 0.0f;
        for (int y = 0; y < COLUMN_ROW_LANES; y++) { sum += lanes[y][threadIdx.x]; }
        partial[(size_t)chunk * C + c] = sum;
    }
}

// pass 2 of a column sum: out[c] += the chunks' partial sums, in chunk order
__global__ void column_partials_sum_kernel(float* out, const float* partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) { return; }
    float sum = 0.0f;
    for (int k = 0; k < chunks; k++) { sum += partial[(size_t)k * C + c]; }
    out[c] += sum;
}

// one rotated pair of rotate-half rope (sn carries the direction's sign);
// shared by the one-element and the packed kernels
__device__ __forceinline__ void rope_rotate(float* o1, float* o2, float x1, float x2, float cs, float sn) {
    *o1 = x1 * cs - x2 * sn;
    *o2 = x2 * cs + x1 * sn;
}

// rotate-half rope: channel i pairs with i + HS/2 in each head. one thread
// per pair; in and out may alias (each thread reads its pair before writing)
template <typename X>
__global__ void rope_kernel(X* out, const X* inp, const float* cos_table, const float* sin_table,
                            int B, int T, int NH, int HS, float direction, int ld) {
    int half = HS / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * NH * half) { return; }
    int i = (int)(idx % half);
    size_t bth = idx / half;               // (b, t, h) flattened
    int t = (int)((bth / NH) % T);
    float cs = cos_table[(size_t)t * half + i];
    float sn = direction * sin_table[(size_t)t * half + i];
    size_t at = bth / NH * ld + bth % NH * HS;  // rows of the heads ld apart
    const X* x = inp + at;
    X* o = out + at;
    float o1, o2;
    rope_rotate(&o1, &o2, to_float(x[i]), to_float(x[i + half]), cs, sn);
    o[i] = from_float<X>(o1);
    o[i + half] = from_float<X>(o2);
}

// the same with 128-bit accesses (HS/2 a multiple of the pack): one thread
// per pack of pairs, channels i .. i+P-1 and their partners i+HS/2 ..
template <typename X>
__global__ void rope_packed_kernel(X* out, const X* inp, const float* cos_table, const float* sin_table,
                                   int B, int T, int NH, int HS, float direction, int ld) {
    constexpr int P = Pack128<X>::size;
    int half = HS / 2, packs = half / P;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * NH * packs) { return; }
    int i = (int)(idx % packs) * P;
    size_t bth = idx / packs;
    int t = (int)((bth / NH) % T);
    float cs[P], sn[P];
    load128_floats<X>(cs, cos_table + (size_t)t * half + i);
    load128_floats<X>(sn, sin_table + (size_t)t * half + i);
    size_t at = bth / NH * ld + bth % NH * HS;  // rows of the heads ld apart
    const X* x = inp + at;
    X* o = out + at;
    Pack128<X> x1 = load128(x + i), x2 = load128(x + i + half), o1, o2;
    for (int k = 0; k < P; k++) {
        float a, b;
        rope_rotate(&a, &b, to_float(x1.x[k]), to_float(x2.x[k]), cs[k], direction * sn[k]);
        o1.x[k] = from_float<X>(a);
        o2.x[k] = from_float<X>(b);
    }
    store128(o + i, o1);
    store128(o + i + half, o2);
}

// out = silu(gate) * up, per element
__device__ __forceinline__ float swiglu_value(float g, float u) {
    float sig = 1.0f / (1.0f + expf(-g));
    return g * sig * u;
}

template <typename X>
__global__ void swiglu_forward_kernel(X* out, const X* gate, const X* up, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) { return; }
    out[i] = from_float<X>(swiglu_value(to_float(gate[i]), to_float(up[i])));
}

// one pack of Pack128<X>::size elements per thread
template <typename X>
__global__ void swiglu_forward_packed_kernel(X* out, const X* gate, const X* up, size_t N) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * Pack128<X>::size;
    if (i >= N) { return; }
    Pack128<X> g = load128(gate + i), u = load128(up + i), o;
    for (int k = 0; k < Pack128<X>::size; k++) { o.x[k] = from_float<X>(swiglu_value(to_float(g.x[k]), to_float(u.x[k]))); }
    store128(out + i, o);
}

// d silu(g)/dg = sig * (1 + g * (1 - sig)); dup may alias dout
__device__ __forceinline__ void swiglu_gradients(float* dg, float* du, float g, float u, float go) {
    float sig = 1.0f / (1.0f + expf(-g));
    *du = go * g * sig;
    *dg = go * u * sig * (1.0f + g * (1.0f - sig));
}

template <typename X>
__global__ void swiglu_backward_kernel(X* dgate, X* dup, const X* dout, const X* gate, const X* up, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) { return; }
    float dg, du;
    swiglu_gradients(&dg, &du, to_float(gate[i]), to_float(up[i]), to_float(dout[i]));
    dup[i] = from_float<X>(du);
    dgate[i] = from_float<X>(dg);
}

template <typename X>
__global__ void swiglu_backward_packed_kernel(X* dgate, X* dup, const X* dout, const X* gate, const X* up, size_t N) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * Pack128<X>::size;
    if (i >= N) { return; }
    Pack128<X> g = load128(gate + i), u = load128(up + i), go = load128(dout + i), dg, du;
    for (int k = 0; k < Pack128<X>::size; k++) {
        float a, b;
        swiglu_gradients(&a, &b, to_float(g.x[k]), to_float(u.x[k]), to_float(go.x[k]));
        dg.x[k] = from_float<X>(a);
        du.x[k] = from_float<X>(b);
    }
    store128(dup + i, du);  // after every read of dout (they may alias)
    store128(dgate + i, dg);
}

// SwiGLU in the fused layout (layer_forward): gu (rows, 2 cols) holds the
// rows [gate | up] of the one product, out and dout (rows, cols). P elements
// a thread: one 128-bit pack (cols a multiple of it, rows aligned) or one;
// the same arithmetic per element as above, so the same bits
template <typename X, int P>
__global__ void swiglu_forward_fused_kernel(X* out, const X* gu, size_t rows, int cols) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= rows * cols) { return; }
    size_t r = i / cols, j = i - r * cols;
    const X* g = gu + r * 2 * cols + j;
    if constexpr (P == 1) {
        out[i] = from_float<X>(swiglu_value(to_float(g[0]), to_float(g[cols])));
    } else {
        Pack128<X> a = load128(g), b = load128(g + cols), o;
        for (int k = 0; k < P; k++) { o.x[k] = from_float<X>(swiglu_value(to_float(a.x[k]), to_float(b.x[k]))); }
        store128(out + i, o);
    }
}

// dgu (rows, 2 cols) = [dgate | dup] rows from dout (rows, cols) and gu
template <typename X, int P>
__global__ void swiglu_backward_fused_kernel(X* dgu, const X* dout, const X* gu, size_t rows, int cols) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= rows * cols) { return; }
    size_t r = i / cols, j = i - r * cols, at = r * 2 * cols + j;
    if constexpr (P == 1) {
        float dg, du;
        swiglu_gradients(&dg, &du, to_float(gu[at]), to_float(gu[at + cols]), to_float(dout[i]));
        dgu[at] = from_float<X>(dg);
        dgu[at + cols] = from_float<X>(du);
    } else {
        Pack128<X> g = load128(gu + at), u = load128(gu + at + cols), go = load128(dout + i), dg, du;
        for (int k = 0; k < P; k++) {
            float a, b;
            swiglu_gradients(&a, &b, to_float(g.x[k]), to_float(u.x[k]), to_float(go.x[k]));
            dg.x[k] = from_float<X>(a);
            du.x[k] = from_float<X>(b);
        }
        store128(dgu + at, dg);
        store128(dgu + at + cols, du);
    }
}

template <typename X>
__global__ void residual_forward_kernel(X* out, const X* inp1, const X* inp2, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) { out[i] = from_float<X>(to_float(inp1[i]) + to_float(inp2[i])); }
}

template <typename X>
__global__ void residual_forward_packed_kernel(X* out, const X* inp1, const X* inp2, size_t N) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * Pack128<X>::size;
    if (i >= N) { return; }
    Pack128<X> a = load128(inp1 + i), b = load128(inp2 + i), o;
    for (int k = 0; k < Pack128<X>::size; k++) { o.x[k] = from_float<X>(to_float(a.x[k]) + to_float(b.x[k])); }
    store128(out + i, o);
}

template <typename X>
__global__ void residual_backward_kernel(X* dinp, const X* dout, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) { dinp[i] = from_float<X>(to_float(dinp[i]) + to_float(dout[i])); }
}

template <typename X>
__global__ void residual_backward_packed_kernel(X* dinp, const X* dout, size_t N) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * Pack128<X>::size;
    if (i >= N) { return; }
    Pack128<X> a = load128(dinp + i), b = load128(dout + i);
    for (int k = 0; k < Pack128<X>::size; k++) { a.x[k] = from_float<X>(to_float(a.x[k]) + to_float(b.x[k])); }
    store128(dinp + i, a);
}

// a row's log-sum-exp and loss from its max and sum of exponentials (both
// cross-entropy kernels; one thread)
template <typename X>
__device__ __forceinline__ void crossentropy_row_loss(float* losses, float* lse, const X* x, const int* targets,
                                                      int row, float maxv, float sum) {
    float l = maxv + logf(sum);
    lse[row] = l;
    int tgt = targets[row];
    losses[row] = tgt == IGNORE_INDEX ? 0.0f : l - to_float(x[tgt]);
}

// one block per row of V logits: the log-sum-exp and the row's loss, in fp32
// whatever X is. the logits stay; the backward later overwrites them with their gradient
template <typename X>
__global__ void crossentropy_forward_kernel(float* losses, float* lse, const X* logits, const int* targets,
                                            int BT, int V, int ld) {
    __shared__ float scratch[WARP_SIZE];
    int row = blockIdx.x;
    if (row >= BT) { return; } // the whole block leaves, before any barrier
    const X* x = logits + (size_t)row * ld;
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) { maxv = fmaxf(maxv, to_float(x[j])); }
    maxv = block_max(maxv, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) { sum += expf(to_float(x[j]) - maxv); }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) { crossentropy_row_loss(losses, lse, x, targets, row, maxv, sum); }
}

// the same with 128-bit loads (rows ld apart, ld a multiple of the pack; the
// last pack of a padded row reads pads, which are left out), BLOCK_CE
// threads. the max is the same in any order; the sum of exponentials adds
// each thread's elements j = thread, thread + BLOCK_CE, ... in the order
// above, through a chunk of BLOCK_CE packs in shared memory (as
// rmsnorm_forward_packed_kernel)
template <typename X>
__global__ void __launch_bounds__(BLOCK_CE)
crossentropy_forward_packed_kernel(float* losses, float* lse, const X* logits, const int* targets, int BT, int V,
                                   int ld) {
    constexpr int P = Pack128<X>::size, CHUNK = BLOCK_CE * P;
    __shared__ float scratch[WARP_SIZE];
    __shared__ alignas(16) X chunk[CHUNK];
    int row = blockIdx.x;
    if (row >= BT) { return; }
    const X* x = logits + (size_t)row * ld;
    float maxv = -INFINITY;
    for (int j = threadIdx.x * P; j < V; j += CHUNK) {
        Pack128<X> v = load128(x + j);
        for (int k = 0; k < P && j + k < V; k++) { maxv = fmaxf(maxv, to_float(v.x[k])); }
    }
    maxv = block_max(maxv, scratch);
    float sum = 0.0f;
    for (int base = 0; base < V; base += CHUNK) {
        if (base + (int)threadIdx.x * P < V) { store128(chunk + threadIdx.x * P, load128(x + base + threadIdx.x * P)); }
        __syncthreads();
        for (int j = threadIdx.x; j < CHUNK && base + j < V; j += BLOCK_CE) { sum += expf(to_float(chunk[j]) - maxv); }
        __syncthreads();  // every thread has read the chunk before the next one overwrites it
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) { crossentropy_row_loss(losses, lse, x, targets, row, maxv, sum); }
}

// one logit's gradient, (softmax - onehot) * dloss, 0 on a row whose target
// is ignored; shared by the one-element and the packed kernels
__device__ __forceinline__ float crossentropy_dlogit(float x, float lse, float dloss, int is_target, int ignored) {
    float g = ignored ? 0.0f : expf(x - lse) * dloss;
    return is_target ? g - dloss : g;
}

// dlogits written over the logits in place, one block per row
template <typename X>
__global__ void crossentropy_softmax_backward_kernel(X* dlogits, const X* logits, const float* lse,
                                                     const int* targets, float dloss, int BT, int V, int ld) {
    int row = blockIdx.x;
    if (row >= BT) { return; }
    const X* x = logits + (size_t)row * ld;
    X* d = dlogits + (size_t)row * ld;
    int tgt = targets[row];
    float m = lse[row];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        d[j] = from_float<X>(crossentropy_dlogit(to_float(x[j]), m, dloss, j == tgt, tgt == IGNORE_INDEX));
    }
}

// the same with 128-bit accesses (ld a multiple of the pack): a pack per
// thread; a padded row's pads in its last pack stay zero
template <typename X>
__global__ void crossentropy_softmax_backward_packed_kernel(X* dlogits, const X* logits, const float* lse,
                                                            const int* targets, float dloss, int BT, int V, int ld) {
    constexpr int P = Pack128<X>::size;
    int row = blockIdx.x;
    if (row >= BT) { return; }
    const X* x = logits + (size_t)row * ld;
    X* d = dlogits + (size_t)row * ld;
    int tgt = targets[row];
    float m = lse[row];
    for (int j = threadIdx.x * P; j < V; j += blockDim.x * P) {
        Pack128<X> v = load128(x + j), g;
        for (int k = 0; k < P; k++) {
            g.x[k] = j + k < V ? from_float<X>(crossentropy_dlogit(to_float(v.x[k]), m, dloss, j + k == tgt,
                                                                   tgt == IGNORE_INDEX))
                               : from_float<X>(0.0f);
        }
        store128(d + j, g);
    }
}

// the bf16 copy of the fp32 masters that the matrix products read (the
// benchmark's stand-in for llama_refresh_param_copy); 8 elements a thread
// (see aligned128_all)
__global__ void float_to_bf16_kernel(bf16* out, const float* inp, size_t n, int vec) {
    constexpr int P = Pack128<bf16>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= n) { return; }
    if (vec && i + P <= n) {
        float x[P];
        Pack128<bf16> o;
        load128_floats<bf16>(x, inp + i);
        for (int k = 0; k < P; k++) { o.x[k] = __float2bfloat16(x[k]); }
        store128(out + i, o);
    } else {
        for (int k = 0; k < P && i + k < n; k++) { out[i + k] = __float2bfloat16(inp[i + k]); }
    }
}

// squared norm of fixed chunks of the gradient, in double; the host adds the
// chunks in order, so the norm does not depend on scheduling. within a chunk
// thread t adds the packs of 4 at 4 t, 4 t + 4 blockDim, ... (each pack's
// elements in order), then the block adds the threads' sums in a fixed tree:
// one fixed order whether a pack is loaded whole or element by element (the
// tail, an unaligned x), so both give the same bits. (the CPU twin,
// grad_global_norm, adds each chunk serially: the two agree to rounding in
// double, which the tests allow for)
#define NORM_CHUNK 65536
__device__ __forceinline__ double square_add(double acc, float x) { return acc + (double)x * x; }

__global__ void squared_norm_chunks_kernel(double* partial, const float* x, size_t n, int vec) {
    constexpr int P = Pack128<float>::size;
    static_assert(NORM_CHUNK % P == 0, "a chunk must hold whole packs, so that its packs stay aligned");
    __shared__ double scratch[1024];
    size_t start = (size_t)blockIdx.x * NORM_CHUNK;
    size_t end = start + NORM_CHUNK < n ? start + NORM_CHUNK : n;
    double acc = 0.0;
    for (size_t i = start + threadIdx.x * P; i < end; i += (size_t)blockDim.x * P) {
        if (vec && i + P <= end) {
            Pack128<float> v = load128(x + i);
            for (int k = 0; k < P; k++) { acc = square_add(acc, v.x[k]); }
        } else {
            for (int k = 0; k < P && i + k < end; k++) { acc = square_add(acc, x[i + k]); }
        }
    }
    scratch[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if ((int)threadIdx.x < s) { scratch[threadIdx.x] += scratch[threadIdx.x + s]; }
        __syncthreads();
    }
    if (threadIdx.x == 0) { partial[blockIdx.x] = scratch[0]; }
}

// the step's statistics, on the device so that a step reads the device once
// (llama_step_stats): STAT_LOSS the step's loss (the micro-batches' mean
// losses over accum, added as the loop adds them), STAT_NORM2 the squared
// gradient norm, STAT_MEAN the last forward's mean loss, STAT_SCRATCH a sum
// for grad_squared_norm. they sit before the norm partials, in one buffer
enum { STAT_LOSS, STAT_NORM2, STAT_MEAN, STAT_SCRATCH, NUM_STATS };

// *out (or *out +) = the chunks' squared norms, added in chunk order in double
__global__ void norm_partials_sum_kernel(double* out, const double* partial, int nchunks, int accumulate) {
    double total = 0.0;
    for (int c = 0; c < nchunks; c++) { total += partial[c]; }
    *out = accumulate ? *out + total : total;
}

// the mean loss over the rows whose target counts (count of them, known on the
// host), summed in double in a fixed tree, rounded to float as the CPU's mean;
// with accum > 0 it also adds mean / accum (in float, as the loop's
// forward() / accum) to the step's loss. one block of MEAN_LOSS_THREADS
#define MEAN_LOSS_THREADS 256
__global__ void __launch_bounds__(MEAN_LOSS_THREADS)
mean_loss_kernel(double* stats, const float* losses, const int* targets, int BT, int count, int accum) {
    __shared__ double part[MEAN_LOSS_THREADS];
    double sum = 0.0;
    for (int i = threadIdx.x; i < BT; i += MEAN_LOSS_THREADS) {
        if (targets[i] != IGNORE_INDEX) { sum += losses[i]; }
    }
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = MEAN_LOSS_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) { part[threadIdx.x] += part[threadIdx.x + stride]; }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float mean = count > 0 ? (float)(part[0] / count) : 0.0f;
        stats[STAT_MEAN] = mean;
        if (accum > 0) { stats[STAT_LOSS] += (double)(mean / (float)accum); }
    }
}

// gradient clipping: x *= s, 4 elements a thread (see aligned128_all)
__global__ void scale_kernel(float* x, size_t n, float s, int vec) {
    constexpr int P = Pack128<float>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= n) { return; }
    if (vec && i + P <= n) {
        Pack128<float> v = load128(x + i);
        for (int k = 0; k < P; k++) { v.x[k] *= s; }
        store128(x + i, v);
    } else {
        for (int k = 0; k < P && i + k < n; k++) { x[i + k] *= s; }
    }
}

// ----------------------------------------------------------------------------
// the layers: launchers, with the CPU twins' names and arguments. every
// pointer is a device pointer. the launchers are templates on X like their
// kernels: the activation pointers are X* (float or bf16), so the element
// type rides on the pointers and no dtype argument is needed; weights and
// weight gradients, per-row statistics and the rope tables are fp32 always.

template <typename X, typename WT>
void encoder_forward(X* out, const int* inp, const WT* wte, int BT, int C) {
    // out (B,T,C), inp (B,T), wte (V,C): the fp32 masters, or the bf16 weights
    encoder_forward_kernel<<<ceil_div((size_t)BT * C, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, inp, wte, BT, C);
    launch_check();
}

// host-to-device copies of each micro-batch's data (tokens, targets, token
// buckets) that do not make the host wait for the device: two pinned host
// buffers used in turn, each copied with cudaMemcpyAsync. a buffer is refilled
// only after the copy that last read it has run (its event), which holds the
// host at most two micro-batches ahead of the device and never stalls a device
// that keeps up. (a plain cudaMemcpy from pageable memory waits for all
// earlier work: one full sync per call.)
typedef struct {
    void* host[2];
    cudaEvent_t sent[2];
    size_t bytes;            // each buffer's size
    int next;
} PinnedStaging;

static void staging_reserve(PinnedStaging* st, size_t bytes) {
    if (bytes <= st->bytes) { return; }
    for (int i = 0; i < 2; i++) {
        if (st->host[i] != NULL) { cuda_check(cudaFreeHost(st->host[i])); }
        cuda_check(cudaMallocHost(&st->host[i], bytes));
        if (st->sent[i] == NULL) { cuda_check(cudaEventCreateWithFlags(&st->sent[i], cudaEventDisableTiming)); }
        cuda_check(cudaEventRecord(st->sent[i], 0));
    }
    st->bytes = bytes;
}

static void staging_release(PinnedStaging* st) {
    for (int i = 0; i < 2; i++) {
        if (st->host[i] != NULL) { cuda_check(cudaFreeHost(st->host[i])); }
        if (st->sent[i] != NULL) { cuda_check(cudaEventDestroy(st->sent[i])); }
    }
    memset(st, 0, sizeof *st);
}

// the next host buffer to fill, once its last copy has run
static void* staging_take(PinnedStaging* st) {
    cuda_check(cudaEventSynchronize(st->sent[st->next]));
    return st->host[st->next];
}

// copies the buffer staging_take gave (bytes of it) to dst, in stream order
static void staging_send(PinnedStaging* st, void* dst, size_t bytes) {
    cuda_check(cudaMemcpyAsync(dst, st->host[st->next], bytes, cudaMemcpyHostToDevice, 0));
    cuda_check(cudaEventRecord(st->sent[st->next], 0));
    st->next ^= 1;
}

static PinnedStaging g_batch_staging;    // inputs and targets, (2 B T) ints
static PinnedStaging g_bucket_staging;   // token buckets, (3 B T + 1) ints
static PinnedStaging g_rope_staging;     // the rope tables, (2 T HS/2) floats

// the positions of a batch grouped by token, for encoder_backward: sorted on
// the host, which has the batch anyway (the loader's), by a counting sort,
// and copied once per micro-batch into device buffers reserved with the
// activations. rows, starts, tokens as in encoder_backward_kernel
typedef struct {
    int BT, buckets, V;       // prepared for BT positions: `buckets` distinct tokens
    int* device;              // (3 BT + 1): rows, starts (buckets + 1), tokens (buckets)
    int* counts;              // (V + 1) host scratch of the sort
    int capacity;             // BT the buffers hold
} EncoderBuckets;
static EncoderBuckets g_encoder_buckets;

static void encoder_buckets_reserve(int BT, int V) {
    EncoderBuckets* e = &g_encoder_buckets;
    if (BT <= e->capacity && V <= e->V) { return; }
    if (e->device != NULL) { cuda_check(cudaFree(e->device)); free(e->counts); }
    size_t n = 3 * (size_t)BT + 1;
    staging_reserve(&g_bucket_staging, n * sizeof(int));
    e->device = (int*)device_malloc(n * sizeof(int), "embedding gradient buckets");
    e->counts = (int*)cpu::malloc_check(((size_t)V + 1) * sizeof(int), "token counts");
    e->capacity = BT;
    e->V = V;
    e->BT = -1;
}

static void encoder_buckets_release(void) {
    EncoderBuckets* e = &g_encoder_buckets;
    if (e->device != NULL) { cuda_check(cudaFree(e->device)); free(e->counts); }
    staging_release(&g_bucket_staging);
    memset(e, 0, sizeof *e);
}

// groups the positions of inputs (host, BT token ids < V) by token, in
// position order within a token, and sends them to the device (async, in
// stream order before the backward's kernel)
void encoder_backward_buckets(const int* inputs, int BT, int V) {
    encoder_buckets_reserve(BT, V);
    EncoderBuckets* e = &g_encoder_buckets;
    int* rows = (int*)staging_take(&g_bucket_staging);
    int* starts = rows + BT;
    memset(e->counts, 0, ((size_t)V + 1) * sizeof(int));
    for (int i = 0; i < BT; i++) { e->counts[inputs[i] + 1]++; }
    int buckets = 0;
    for (int v = 0; v < V; v++) { buckets += e->counts[v + 1] > 0; }
    int* tokens = starts + buckets + 1;
    // counts -> where each token's rows begin, then the buckets of tokens that occur
    for (int v = 0; v < V; v++) { e->counts[v + 1] += e->counts[v]; }
    int b = 0;
    for (int v = 0; v < V; v++) {
        if (e->counts[v + 1] > e->counts[v]) { starts[b] = e->counts[v]; tokens[b] = v; b++; }
    }
    starts[buckets] = BT;
    for (int i = 0; i < BT; i++) { rows[e->counts[inputs[i]]++] = i; }
    e->BT = BT;
    e->buckets = buckets;
    staging_send(&g_bucket_staging, e->device, ((size_t)BT + 2 * buckets + 1) * sizeof(int));
}

// inp is the device copy of the batch; the kernel reads the buckets that
// encoder_backward_buckets made of the host copy (llama_backward calls it)
template <typename X>
void encoder_backward(float* dwte, const X* dout, const int* inp, int BT, int C) {
    // dwte (V,C) accumulated, dout (B,T,C)
    (void)inp;
    const EncoderBuckets* e = &g_encoder_buckets;
    if (e->BT != BT) {
        cpu::fatal("encoder_backward: the batch of %d positions was not grouped by token "
                   "(encoder_backward_buckets must run on the host copy first)", BT);
    }
    if (e->buckets == 0) { return; }
    const int* rows = e->device;
    const int* starts = rows + BT;
    const int* tokens = starts + e->buckets + 1;
    encoder_backward_kernel<<<dim3(e->buckets, ceil_div(C, BLOCK_COLUMNS)), BLOCK_COLUMNS>>>(dwte, dout, rows, starts,
                                                                                             tokens, C);
    launch_check();
}

// the packed kernels when N (for the row kernels: a row's length) and the
// pointers allow (see Pack128)
template <typename X>
static int use_packed(size_t N, const void* a, const void* b, const void* c, const void* d = NULL) {
    return N % Pack128<X>::size == 0 && aligned128(a) && aligned128(b) && aligned128(c) && (d == NULL || aligned128(d));
}

template <typename X, typename WT>
void rmsnorm_forward(X* out, float* rstd, const X* inp, const WT* weight, int BT, int C, float eps) {
    // out (B,T,C), rstd (B,T), inp (B,T,C), weight (C)
    int rows_per_block = BLOCK_ROWS / WARP_SIZE;
    if (use_packed<X>(C, out, inp, weight)) {
        rmsnorm_forward_packed_kernel<<<ceil_div(BT, rows_per_block), BLOCK_ROWS>>>(out, rstd, inp, weight, BT, C, eps);
    } else {
        rmsnorm_forward_kernel<<<ceil_div(BT, rows_per_block), BLOCK_ROWS>>>(out, rstd, inp, weight, BT, C, eps);
    }
    launch_check();
}

// the first pass's partial sums live in one device buffer, reserved with the
// activations (column_partials_reserve), so that a step allocates nothing
static float* g_column_partials;
static size_t g_column_partials_count;

static size_t column_partials_floats(int BT, int C) { return (size_t)ceil_div(BT, COLUMN_CHUNK_ROWS) * C; }

static void column_partials_reserve(size_t n) {
    if (n <= g_column_partials_count) { return; }
    if (g_column_partials != NULL) { cuda_check(cudaFree(g_column_partials)); }
    g_column_partials = (float*)device_malloc(n * sizeof(float), "column-sum partials");
    g_column_partials_count = n;
}

static void column_partials_release(void) {
    if (g_column_partials != NULL) { cuda_check(cudaFree(g_column_partials)); }
    g_column_partials = NULL;
    g_column_partials_count = 0;
}

// dweight (C) += sum over rows of dout * inp * rstd (the norm weight's
// gradient); with dout2 != NULL the output gradient is dout + dout2
template <typename X>
void rmsnorm_backward_dweight(float* dweight, const X* dout, const X* dout2, const X* inp, const float* rstd,
                              int BT, int C) {
    int chunks = ceil_div(BT, COLUMN_CHUNK_ROWS);
    column_partials_reserve(column_partials_floats(BT, C));
    rmsnorm_backward_dweight_kernel<<<dim3(ceil_div(C, COLUMN_TILE), chunks), dim3(COLUMN_TILE, COLUMN_ROW_LANES)>>>(
        g_column_partials, dout, dout2, inp, rstd, BT, C);
    launch_check();
    column_partials_sum_kernel<<<ceil_div(C, BLOCK_COLUMNS), BLOCK_COLUMNS>>>(dweight, g_column_partials, chunks, C);
    launch_check();
}

// dinp (B,T,C) += the input gradient; with dout2 != NULL the output gradient is dout + dout2
template <typename X, typename WT>
void rmsnorm_backward_dinp(X* dinp, const X* dout, const X* dout2, const X* inp, const WT* weight, const float* rstd,
                           int BT, int C) {
    int rows_per_block = BLOCK_ROWS / WARP_SIZE;
    if (use_packed<X>(C, dinp, dout, inp, weight) && (dout2 == NULL || aligned128(dout2))) {
        rmsnorm_backward_dinp_packed_kernel<<<ceil_div(BT, rows_per_block), BLOCK_ROWS>>>(dinp, dout, dout2, inp,
                                                                                          weight, rstd, BT, C);
    } else {
        rmsnorm_backward_dinp_kernel<<<ceil_div(BT, rows_per_block), BLOCK_ROWS>>>(dinp, dout, dout2, inp, weight,
                                                                                   rstd, BT, C);
    }
    launch_check();
}

template <typename X, typename WT>
void rmsnorm_backward(X* dinp, float* dweight, const X* dout, const X* inp,
                      const WT* weight, const float* rstd, int BT, int C) {
    // dinp (B,T,C) accumulated (+=), dweight (C) accumulated, dout, inp (B,T,C), rstd (B,T)
    rmsnorm_backward_dinp(dinp, dout, (const X*)NULL, inp, weight, rstd, BT, C);
    rmsnorm_backward_dweight(dweight, dout, (const X*)NULL, inp, rstd, BT, C);
}

// rmsnorm_backward of the output gradient dout + dout2, where two branches
// read the norm's output (the MLP's gate and up, the attention's q, k and v):
// the CPU twin's residual_backward(dout, dout2) fused in. both kernels add
// the two as they read them, rounded as residual_backward rounds, so the
// results are the same bits with one pass over (B,T,C) less: the sum is
// never written, nor read back. dout is left as it was (the CPU twin leaves
// the sum there; nothing reads it after)
template <typename X, typename WT>
void rmsnorm_backward_residual(X* dinp, float* dweight, const X* dout, const X* dout2, const X* inp,
                               const WT* weight, const float* rstd, int BT, int C) {
    // dinp (B,T,C) accumulated (+=), dweight (C) accumulated, dout, dout2, inp (B,T,C), rstd (B,T)
    rmsnorm_backward_dinp(dinp, dout, dout2, inp, weight, rstd, BT, C);
    rmsnorm_backward_dweight(dweight, dout, dout2, inp, rstd, BT, C);
}

// weight: the X copy of the masters (the masters themselves in fp32)
template <typename X>
void matmul_forward(X* out, const X* inp, const X* weight, int BT, int C, int OC) {
    // out (B,T,OC), inp (B,T,C), weight (OC,C): out = inp @ weight^T
    gemm(0, 1, BT, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
}

// out = inp @ weight^T + resid in one product: cuBLASLt adds resid (as its C,
// beta 1) to the accumulator before the one rounding to X, so the residual
// stream is rounded once instead of twice in bf16. out and resid are two
// buffers, as on the CPU
template <typename X>
void matmul_forward_residual(X* out, const X* inp, const X* weight, const X* resid, int BT, int C, int OC) {
    // out (B,T,OC), inp (B,T,C), weight (OC,C), resid (B,T,OC)
    gemm_lt(0, 1, BT, OC, C, 1.0f, inp, C, 0, weight, C, 0, 1.0f, resid, out, OC, 0, 1, CudaType<X>::value,
            CudaType<X>::value);
}

// matmul_backward's two products apart, for the device layout of the MLP
// (layer_forward): dinp (B,T,C) = dout (B,T,OC) @ weight (OC,C), written (=)
template <typename X>
void matmul_backward_input(X* dinp, const X* dout, const X* weight, int BT, int C, int OC) {
    gemm(0, 0, BT, C, OC, 1.0f, dout, OC, weight, C, 0.0f, dinp, C);
}

// dweight (OC,C) += dout^T @ inp, with dout's rows ld_dout apart and inp's
// ld_inp apart (a half of a fused row, a padded row). the weight gradient is
// fp32 whatever X is: cuBLAS reads X, accumulates in fp32 and adds into the
// fp32 dweight, so accumulation over micro-batches never rounds to bf16
template <typename X>
void matmul_backward_weight(float* dweight, const X* dout, int ld_dout, const X* inp, int ld_inp, int BT, int C,
                            int OC) {
    gemm(1, 0, OC, C, BT, 1.0f, dout, ld_dout, inp, ld_inp, 1.0f, dweight, C);
}

template <typename X>
void matmul_backward(X* dinp, float* dweight, const X* dout, const X* inp,
                     const X* weight, int BT, int C, int OC) {
    // dinp (B,T,C) written (=), dweight (OC,C) accumulated, dout (B,T,OC)
    matmul_backward_input(dinp, dout, weight, BT, C, OC);
    matmul_backward_weight(dweight, dout, OC, inp, C, BT, C, OC);
}

// rope_forward (direction 1) and rope_backward (-1): the packed kernel when
// a head's half, the row stride and the pointers allow
template <typename X>
static void rope_rotate_all(X* out, const X* inp, const float* cos_table, const float* sin_table,
                            int B, int T, int NH, int HS, float direction, int ld) {
    size_t pairs = (size_t)B * T * NH * (HS / 2);
    ld = ld > 0 ? ld : NH * HS;
    if (use_packed<X>(HS / 2, out, inp, cos_table, sin_table) && ld % Pack128<X>::size == 0) {
        size_t packs = pairs / Pack128<X>::size;
        rope_packed_kernel<<<ceil_div(packs, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, inp, cos_table, sin_table,
                                                                                     B, T, NH, HS, direction, ld);
    } else {
        rope_kernel<<<ceil_div(pairs, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, inp, cos_table, sin_table,
                                                                              B, T, NH, HS, direction, ld);
    }
    launch_check();
}

// ld: the row stride of out and inp, NH * HS by default (0); 3 NH HS for q
// or k as a third of the fused product's rows [q | k | v]. the last
// argument, which the CPU twin does not have
template <typename X>
void rope_forward(X* out, const X* inp, const float* cos_table, const float* sin_table,
                  int B, int T, int NH, int HS, int ld = 0) {
    // out, inp (B,T,NH,HS) may alias; tables (T, HS/2)
    rope_rotate_all(out, inp, cos_table, sin_table, B, T, NH, HS, 1.0f, ld);
}

template <typename X>
void rope_backward(X* dinp, const X* dout, const float* cos_table, const float* sin_table,
                   int B, int T, int NH, int HS, int ld = 0) {
    // the rotation is orthogonal, so its backward is the rotation by the negative angle
    rope_rotate_all(dinp, dout, cos_table, sin_table, B, T, NH, HS, -1.0f, ld);
}

// causal attention: flash attention (flash_attention.cuh, included above),
// which keeps only each row's log-sum-exp, like its CPU twin. fp32 takes the
// exact kernels (one warp per row, every sum in fp32); bf16 takes the tensor
// core kernels at the head sizes they are built for and the fp32 kernels with
// bf16 storage at the others (flash_attention_wmma). the backward is
// deterministic (no atomics), so resume stays bit-exact
template <typename X>
void attention_forward(X* out, float* lse, const X* q, const X* k, const X* v, int B, int T, int NH, int HS,
                       int ldq = 0) {
    // out (B,T,NH,HS); lse (B,NH,T), saved for backward; q, k, v (B,T,NH,HS),
    // rows ldq apart (NH * HS by default; 3 NH HS in the fused layout)
    flash_attention_forward(out, lse, q, k, v, B, T, NH, HS, ldq);
}

template <typename X>
void attention_backward(X* dq, X* dk, X* dv, const X* dout, const X* out, const float* lse, const X* q,
                        const X* k, const X* v, float* scratch_D, int B, int T, int NH, int HS, int ldq = 0) {
    // dq, dk, dv (B,T,NH,HS) written (=); dout, out (B,T,NH,HS); lse (B,NH,T)
    // from the forward pass; q, k, v (B,T,NH,HS); scratch_D (B,NH,T); q, k, v,
    // dq, dk, dv rows ldq apart
    flash_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, scratch_D, B, T, NH, HS, ldq);
}

template <typename X>
void swiglu_forward(X* out, const X* gate, const X* up, size_t N) {
    // out, gate, up (B,T,F)
    if (use_packed<X>(N, out, gate, up)) {
        size_t packs = N / Pack128<X>::size;
        swiglu_forward_packed_kernel<<<ceil_div(packs, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, gate, up, N);
    } else {
        swiglu_forward_kernel<<<ceil_div(N, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, gate, up, N);
    }
    launch_check();
}

template <typename X>
void swiglu_backward(X* dgate, X* dup, const X* dout, const X* gate, const X* up, size_t N) {
    // dgate, dup (B,T,F) written (=); dup may alias dout
    if (use_packed<X>(N, dgate, dup, dout, gate) && aligned128(up)) {
        size_t packs = N / Pack128<X>::size;
        swiglu_backward_packed_kernel<<<ceil_div(packs, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(dgate, dup, dout,
                                                                                                 gate, up, N);
    } else {
        swiglu_backward_kernel<<<ceil_div(N, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(dgate, dup, dout, gate, up, N);
    }
    launch_check();
}

// SwiGLU in the fused layout (layer_forward): out (B,T,F) from gu (B,T,2F),
// whose rows are [gate | up]. no CPU twin of its own: it is swiglu_forward
// on the two halves (test_subtrack_gpu compares them)
template <typename X>
void swiglu_forward_fused(X* out, const X* gu, int BT, int F) {
    constexpr int P = Pack128<X>::size;
    size_t n = (size_t)BT * F;
    if (F % P == 0 && aligned128(out) && aligned128(gu)) {
        swiglu_forward_fused_kernel<X, P><<<ceil_div(n / P, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, gu, BT, F);
    } else {
        swiglu_forward_fused_kernel<X, 1><<<ceil_div(n, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, gu, BT, F);
    }
    launch_check();
}

// dgu (B,T,2F) written (=), rows [dgate | dup], from dout (B,T,F) and gu:
// swiglu_backward on the two halves
template <typename X>
void swiglu_backward_fused(X* dgu, const X* dout, const X* gu, int BT, int F) {
    constexpr int P = Pack128<X>::size;
    size_t n = (size_t)BT * F;
    if (F % P == 0 && aligned128(dgu) && aligned128(dout) && aligned128(gu)) {
        swiglu_backward_fused_kernel<X, P><<<ceil_div(n / P, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(dgu, dout, gu,
                                                                                                   BT, F);
    } else {
        swiglu_backward_fused_kernel<X, 1><<<ceil_div(n, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(dgu, dout, gu, BT, F);
    }
    launch_check();
}

template <typename X>
void residual_forward(X* out, const X* inp1, const X* inp2, size_t N) {
    if (use_packed<X>(N, out, inp1, inp2)) {
        size_t packs = N / Pack128<X>::size;
        residual_forward_packed_kernel<<<ceil_div(packs, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, inp1, inp2, N);
    } else {
        residual_forward_kernel<<<ceil_div(N, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(out, inp1, inp2, N);
    }
    launch_check();
}

template <typename X>
void residual_backward(X* dinp, const X* dout, size_t N) {
    if (use_packed<X>(N, dinp, dout, dout)) {
        size_t packs = N / Pack128<X>::size;
        residual_backward_packed_kernel<<<ceil_div(packs, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(dinp, dout, N);
    } else {
        residual_backward_kernel<<<ceil_div(N, BLOCK_ELEMENTWISE), BLOCK_ELEMENTWISE>>>(dinp, dout, N);
    }
    launch_check();
}

// the per-row losses, their mean on the device (mean_loss_kernel into the
// step statistics) and, with accum > 0, the step's loss: nothing comes back to
// the host, so the forward of a training step does not wait for the device.
// count: the rows whose target is not IGNORE_INDEX (the host has the targets)
static double* step_stats_device(void);

// ld: the logits' row stride on the device (Vp, device_V), V by default, the
// CPU twin's; the last argument, which the twin does not have
template <typename X>
void crossentropy_forward_async(float* losses, float* lse, const X* logits, const int* targets, int count, int accum,
                                int BT, int V, int ld = 0) {
    ld = ld > 0 ? ld : V;
    if (use_packed<X>(ld, logits, logits, logits)) {
        crossentropy_forward_packed_kernel<<<BT, BLOCK_CE>>>(losses, lse, logits, targets, BT, V, ld);
    } else {
        crossentropy_forward_kernel<<<BT, BLOCK_CE>>>(losses, lse, logits, targets, BT, V, ld);
    }
    launch_check();
    mean_loss_kernel<<<1, MEAN_LOSS_THREADS>>>(step_stats_device(), losses, targets, BT, count, accum);
    launch_check();
}

// the CPU twin's launcher: the same, and the mean loss read back (a sync)
template <typename X>
float crossentropy_forward(float* losses, float* lse, const X* logits, const int* targets, int BT, int V,
                           int ld = 0) {
    // losses (B,T), lse (B,T), logits (B,T,V) rows ld apart, targets (B,T); returns the mean loss
    int* targets_host = (int*)cpu::malloc_check((size_t)BT * sizeof(int), "targets copy");
    cuda_check(cudaMemcpy(targets_host, targets, (size_t)BT * sizeof(int), cudaMemcpyDeviceToHost));
    int count = cpu::count_targets(targets_host, BT);
    free(targets_host);
    crossentropy_forward_async(losses, lse, logits, targets, count, 0, BT, V, ld);
    double mean = 0.0;
    cuda_check(cudaMemcpy(&mean, step_stats_device() + STAT_MEAN, sizeof mean, cudaMemcpyDeviceToHost));
    return (float)mean;
}

template <typename X>
void crossentropy_softmax_backward(X* dlogits, const X* logits, const float* lse,
                                   const int* targets, float dloss, int BT, int V, int ld = 0) {
    // dlogits (B,T,V) written (=), may alias logits; rows ld apart (V by default)
    ld = ld > 0 ? ld : V;
    if (use_packed<X>(ld, dlogits, logits, logits)) {
        crossentropy_softmax_backward_packed_kernel<<<BT, BLOCK_CE>>>(dlogits, logits, lse, targets, dloss, BT, V,
                                                                      ld);
    } else {
        crossentropy_softmax_backward_kernel<<<BT, BLOCK_CE>>>(dlogits, logits, lse, targets, dloss, BT, V, ld);
    }
    launch_check();
}

// the per-chunk partial sums live in one device buffer, reserved when the
// model is built (grad_norm_reserve), so that a step allocates nothing and the
// memory plan is the peak. a call on more floats (tests) grows it
static double* g_norm_partials;
static size_t g_norm_partials_count;

// the chunks of n floats, after the NUM_STATS step statistics
static size_t grad_norm_partials_count(size_t n) { return NUM_STATS + (n > 0 ? (size_t)ceil_div(n, NORM_CHUNK) : 1); }

static void grad_norm_reserve(size_t n) {
    size_t need = grad_norm_partials_count(n);
    if (need <= g_norm_partials_count) { return; }
    double stats[NUM_STATS] = {0.0, 0.0, 0.0, 0.0};
    if (g_norm_partials != NULL) {  // a test's larger call: the statistics move along
        cuda_check(cudaMemcpy(stats, g_norm_partials, sizeof stats, cudaMemcpyDeviceToHost));
        cuda_check(cudaFree(g_norm_partials));
    }
    g_norm_partials = (double*)device_malloc(need * sizeof(double), "norm partials");
    cuda_check(cudaMemcpy(g_norm_partials, stats, sizeof stats, cudaMemcpyHostToDevice));
    g_norm_partials_count = need;
}

static double* step_stats_device(void) {
    grad_norm_reserve(1);
    return g_norm_partials;
}

// *out (device; or *out +) = the squared norm of grads (n), in double, in a fixed order
static void grad_squared_norm_on_device(double* out, const float* grads, size_t n, int accumulate) {
    int nchunks = ceil_div(n, NORM_CHUNK);
    grad_norm_reserve(n);
    double* partial = g_norm_partials + NUM_STATS;
    squared_norm_chunks_kernel<<<nchunks, 1024>>>(partial, grads, n, aligned128(grads));
    launch_check();
    norm_partials_sum_kernel<<<1, 1>>>(out, partial, nchunks, accumulate);
    launch_check();
}

static void grad_norm_release(void) {
    if (g_norm_partials != NULL) { cuda_check(cudaFree(g_norm_partials)); }
    g_norm_partials = NULL;
    g_norm_partials_count = 0;
}

// the squared norm, summed in double in a fixed order, read back (a sync)
double grad_squared_norm(const float* grads, size_t n) {
    grad_norm_reserve(n);
    grad_squared_norm_on_device(g_norm_partials + STAT_SCRATCH, grads, n, 0);
    double total = 0.0;
    cuda_check(cudaMemcpy(&total, g_norm_partials + STAT_SCRATCH, sizeof total, cudaMemcpyDeviceToHost));
    return total;
}

double grad_global_norm(const float* grads, size_t n) { return sqrt(grad_squared_norm(grads, n)); }

void grad_scale(float* grads, size_t n, float s) {
    scale_kernel<<<ceil_div(n, (size_t)BLOCK_ELEMENTWISE * Pack128<float>::size), BLOCK_ELEMENTWISE>>>(
        grads, n, s, aligned128(grads));
    launch_check();
}

// out (n) bf16 = inp (n) rounded to nearest even (the benchmark's refresh)
void float_to_bf16(bf16* out, const float* inp, size_t n) {
    if (n == 0) { return; }
    float_to_bf16_kernel<<<ceil_div(n, (size_t)BLOCK_ELEMENTWISE * Pack128<bf16>::size), BLOCK_ELEMENTWISE>>>(
        out, inp, n, aligned128_all(out, inp));
    launch_check();
}

// ----------------------------------------------------------------------------
// the model on the device. the same parameter table, activation table and
// gradient scratch as the CPU model (cpu::parameter_table, activation_sizes,
// grad_scratch_sizes), so the pointer structs are the CPU ones, pointing into
// device memory.
//
// with --dtype bfloat16 the activations and the gradient scratch are bf16,
// except the fp32 ones listed in activation_stays_fp32 below. their pointers
// still sit in the CPU structs' float* fields, so they are read through
// act<X>(), which gives the field its real type; in fp32 act<float> is a no-op.

// ----------------------------------------------------------------------------
// the device layout, in bf16: the CPU's parameter table on the device,
// except in params_bf16 (the bf16 weights the products read) and in the
// activations, where
//   - each layer's wq, wk and wv are one (3C, C) block, so that one product
//     gives the rows [q | k | v] (the activation q holds them, k and v have
//     no memory of their own; RoPE and flash attention read q, k and v rows
//     3C apart), and one product with K = 3C gives their input gradient;
//   - each layer's w_gate and w_up are one (2 Fp, C) block, [w_gate; zeros;
//     w_up; zeros], so that one product gives both: the activation gate holds
//     (B, T, 2 Fp) rows [gate | up], and up has no memory of its own;
//   - F is padded to Fp, a multiple of DEVICE_F_MULTIPLE, in w_down (C, Fp)
//     and in every (B, T, F) activation, so that every row starts 16-byte
//     aligned (F = 5461 at 1B is odd, and cuBLASLt then has only its slow
//     unaligned kernels);
//   - V is padded to Vp, a multiple of DEVICE_V_MULTIPLE, in lm_head (Vp, C)
//     and the logits (B, T, Vp), as llm.c pads V (V = 32100 in the 100M
//     config is not a multiple of 8).
// the pads are zero and stay zero: the zero rows of the gate/up block and of
// lm_head make zero columns, SwiGLU maps zeros to zeros, w_down's zero
// columns meet them, and the cross-entropy reads V columns and writes zeros
// to the rest; no pad ever reaches a loss or a gradient (test_device_layout
// shows the losses, gradients and weights bit-identical to Fp = F, Vp = V).
// the fp32 masters, the gradients, the optimizer states and checkpoints keep
// the table's layout. fp32 (--dtype float32, the exact path the tests
// compare) reads the fp32 masters and stays unfused and unpadded.
#define DEVICE_F_MULTIPLE 64
#define DEVICE_V_MULTIPLE 128
// a tensor's index in the parameter table
#define PARAM_INDEX(field) ((int)(offsetof(cpu::ParameterTensors, field) / sizeof(float*)))
// the tests switch these off to compare the layouts (dev/test_gpu)
static int g_device_fuse = 1;  // both fusions
static int g_device_pad = 1;

static int device_fused_mlp(Dtype dt) { return dt == DTYPE_BFLOAT16 && g_device_fuse; }

// q, k, v in one product: in bf16, when C keeps each third of a row 16-byte
// aligned (C a multiple of 8; every preset's is)
static int device_fused_qkv(const cpu::LlamaConfig* c, Dtype dt) {
    return dt == DTYPE_BFLOAT16 && g_device_fuse && c->C % 8 == 0;
}

static int device_F(const cpu::LlamaConfig* c, Dtype dt) {
    if (!device_fused_mlp(dt) || !g_device_pad) { return c->F; }
    return (c->F + DEVICE_F_MULTIPLE - 1) / DEVICE_F_MULTIPLE * DEVICE_F_MULTIPLE;
}

static int device_V(const cpu::LlamaConfig* c, Dtype dt) {
    if (dt != DTYPE_BFLOAT16 || !g_device_pad) { return c->V; }
    return (c->V + DEVICE_V_MULTIPLE - 1) / DEVICE_V_MULTIPLE * DEVICE_V_MULTIPLE;
}

// where a tensor of the table lies in params_bf16: element (l, r, c) of its
// (layers, rows, cols) at base + l * layer_stride + r * row_stride + c
typedef struct {
    size_t base, layer_stride, row_stride;
} DeviceBlock;

// the blocks of every tensor and the bf16 elements they span, pads included
static size_t device_layout(DeviceBlock blocks[NUM_PARAMETER_TENSORS], const cpu::LlamaConfig* c, int Fp,
                            int fused, int Vp, int fused_qkv) {
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, c);
    size_t at = 0, C = c->C;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        DeviceBlock b = {at, (size_t)spec[i].rows * spec[i].cols, (size_t)spec[i].cols};
        if (fused_qkv && (i == PARAM_INDEX(wq) || i == PARAM_INDEX(wk) || i == PARAM_INDEX(wv))) {
            // [wq; wk; wv] a layer: wk's and wv's rows C and 2C rows in
            int third = i - PARAM_INDEX(wq);
            b.base = (third == 0 ? at : blocks[PARAM_INDEX(wq)].base) + (size_t)third * C * C;
            b.layer_stride = 3 * C * C;
            blocks[i] = b;
            if (third == 2) { at += (size_t)spec[i].layers * 3 * C * C; }
            continue;
        }
        if (fused && i == PARAM_INDEX(w_gate)) {
            b.layer_stride = 2 * (size_t)Fp * C;  // and w_up's rows start Fp rows in (below)
        } else if (fused && i == PARAM_INDEX(w_up)) {
            b = blocks[PARAM_INDEX(w_gate)];
            b.base += (size_t)Fp * C;
            blocks[i] = b;
            at += (size_t)spec[i].layers * 2 * Fp * C;  // the whole gate/up block, after w_gate
            continue;
        } else if (i == PARAM_INDEX(w_down)) {
            b.layer_stride = C * Fp;
            b.row_stride = Fp;
        } else if (i == PARAM_INDEX(lm_head)) {
            b.layer_stride = (size_t)Vp * C;  // rows V .. Vp - 1 are the pads
        }
        blocks[i] = b;
        at += i == PARAM_INDEX(w_gate) && fused ? 0 : (size_t)spec[i].layers * b.layer_stride;
    }
    return at;
}

// the moves between fp32 and a tensor's elements in params_bf16: element j
// of the tensor (of per = rows * cols a layer) is at base + block offsets.
// the stochastic rounding draws its bits from the element's index in the
// table's layout (offset + i), so the layout never changes a rounding
enum { PARAMS_BF16_FROM_FLOAT, PARAMS_BF16_WIDEN, PARAMS_BF16_STORE_STOCHASTIC };

// x rounded to bf16 stochastically with the CPU's own integer functions
// (cpu::bf16_round_stochastic on cpu::sr_random_bits of (seed, step, index in
// the parameter buffer)), so the same fp32 value rounds to the same bf16 on
// both sides; the result is a bf16 value, so storing it as bf16 is exact
__device__ __forceinline__ float bf16_stochastic_value(float x, uint64_t seed, uint64_t step, uint64_t index) {
    return cpu::bf16_round_stochastic(x, cpu::sr_random_bits(seed, step, index));
}

// one element of params_bf16_kernel: d its place in params_bf16, x its fp32
// value, index its index in the table's layout
__device__ __forceinline__ void params_bf16_element(int op, bf16* d, float* x, uint64_t index, uint64_t seed,
                                                    uint64_t step) {
    if (op == PARAMS_BF16_FROM_FLOAT) {
        *d = __float2bfloat16(*x);
    } else if (op == PARAMS_BF16_WIDEN) {
        *x = __bfloat162float(*d);
    } else {
        *d = __float2bfloat16(bf16_stochastic_value(*x, seed, step, index));
    }
}

// 8 elements a thread (see aligned128_all). the map from j to the device
// layout costs two divisions; within a row it is affine, so with vec (the
// launcher saw cols, j0 and both strides multiples of 8 and both pointers
// 16-byte aligned) a whole pack lies in one row, 16-byte aligned, and maps
// once. the per-element path maps every element, as the pack may cross rows
__global__ void params_bf16_kernel(int op, bf16* base, size_t j0, size_t per, size_t cols, size_t layer_stride,
                                   size_t row_stride, float* x, size_t n, int vec, uint64_t seed, uint64_t step,
                                   uint64_t offset) {
    constexpr int P = Pack128<bf16>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= n) { return; }
    if (vec && i + P <= n) {
        size_t j = j0 + i, l = j / per, w = j - l * per, r = w / cols;
        bf16* d = base + l * layer_stride + r * row_stride + (w - r * cols);
        Pack128<bf16> b;
        float f[P];
        if (op == PARAMS_BF16_WIDEN) {
            b = load128(d);
        } else {
            load128_floats<bf16>(f, x + i);
        }
        for (int k = 0; k < P; k++) { params_bf16_element(op, &b.x[k], &f[k], offset + i + k, seed, step); }
        if (op == PARAMS_BF16_WIDEN) {
            store128_floats<bf16>(x + i, f);
        } else {
            store128(d, b);
        }
    } else {
        for (int k = 0; k < P && i + k < n; k++) {
            size_t j = j0 + i + k, l = j / per, w = j - l * per, r = w / cols;
            bf16* d = base + l * layer_stride + r * row_stride + (w - r * cols);
            params_bf16_element(op, d, x + i + k, offset + i + k, seed, step);
        }
    }
}

// op on elements [j0, j0 + n) of one tensor whose layer l, row r, column c is
// at base[l layer_stride + r row_stride + c] (rows of cols, per elements a
// layer), with x (n) fp32; offset: element j0's index in the table's layout
static void params_bf16_block(int op, bf16* base, size_t j0, size_t per, size_t cols, size_t layer_stride,
                              size_t row_stride, float* x, size_t n, uint64_t seed, uint64_t step, uint64_t offset) {
    if (n == 0) { return; }
    const size_t P = Pack128<bf16>::size;
    int vec = cols % P == 0 && j0 % P == 0 && layer_stride % P == 0 && row_stride % P == 0 &&
              aligned128_all(base, x);
    params_bf16_kernel<<<ceil_div(n, BLOCK_ELEMENTWISE * P), BLOCK_ELEMENTWISE>>>(
        op, base, j0, per, cols, layer_stride, row_stride, x, n, vec, seed, step, offset);
    launch_check();
}

typedef struct {
    cpu::LlamaConfig config;
    Dtype dtype;                   // of the activations (--dtype)
    int recompute;                 // --activation_checkpointing: one layer's activations, recomputed
    int B, T;                      // the batch shape the activations are laid out for now
    int B_cap, T_cap;              // the shape they were allocated for; smaller ones reuse the memory
    int master_weights;            // 0: --master_weights 0 (see llama_build)
    cpu::ParameterTensors params;  // device pointers into params_memory, or offsets from param_base
    float* params_memory;          // (num_parameters) fp32 masters; NULL with bf16 weights only
    bf16* params_bf16;             // (params_bf16_count) bf16 copy the products read, or the bf16 weights, in
                                   // the device layout (DeviceBlock); NULL in fp32
    size_t params_bf16_count;
    DeviceBlock device_blocks[NUM_PARAMETER_TENSORS];  // where each tensor of the table lies in params_bf16
    int Fp;                        // the MLP's row length on the device: F, or F padded (device_F)
    int Vp;                        // the logits' row length on the device: V, or V padded (device_V)
    int fused_mlp;                 // gate and up in one product (device_fused_mlp)
    int fused_qkv;                 // q, k and v in one product (device_fused_qkv)
    const float* param_base;       // what params point into: params_memory, or PARAMS_OFFSET_BASE
    cpu::ParameterTensors grads;
    float* grads_memory;           // (grads_floats) fp32 in both dtypes
    size_t grads_floats;           // num_parameters, or with per-layer updates the largest unit's
    size_t num_parameters;
    // per-layer updates (--optimizer *_per_layer): the backward hands each
    // unit (a tensor's layer) to on_unit as soon as its gradient is complete,
    // in the one-unit gradient buffer, and sums the units' squared norms
    int per_layer;
    void (*on_unit)(void* ctx, int tensor, int layer, const float* grad);
    void* on_unit_ctx;
    cpu::ActivationTensors acts;   // dtype, or fp32 (activation_stays_fp32)
    void* acts_memory;
    size_t acts_bytes;             // allocated, at (B_cap, T_cap)
    cpu::GradScratch scratch;      // dtype, all of it
    void* scratch_memory;
    size_t scratch_bytes;          // allocated, at (B_cap, T_cap)
    int* inputs;                   // (B,T) device copy of the batch
    int* targets;                  // (B,T)
    float* logits_host;            // (B,T,V) host copy for sampling, on demand
    float mean_loss;
} Llama;

// an activation or scratch field, as the type it really has
template <typename X> static X* act(float* p) { return reinterpret_cast<X*>(p); }

// the activations that are fp32 whatever the dtype: per-row statistics that
// the backward divides by, the losses and log-sum-exps the loss is summed
// from, the attention's log-sum-exps (all (B,T), (L,B,T) or (L,B,NH,T): small),
// and the rope tables
static int activation_stays_fp32(int i) {
    static const size_t fp32_fields[] = {
        offsetof(cpu::ActivationTensors, attn_rstd), offsetof(cpu::ActivationTensors, mlp_rstd),
        offsetof(cpu::ActivationTensors, final_rstd), offsetof(cpu::ActivationTensors, losses),
        offsetof(cpu::ActivationTensors, lse), offsetof(cpu::ActivationTensors, rope_cs),
        offsetof(cpu::ActivationTensors, att_lse),
    };
    for (size_t k = 0; k < sizeof fp32_fields / sizeof fp32_fields[0]; k++) {
        if (fp32_fields[k] == (size_t)i * sizeof(float*)) { return 1; }
    }
    return 0;
}

// the activations one layer writes and the backward reads, which
// --activation_checkpointing keeps for one layer only (slot 0) and recomputes
// from the layer's input. the layer inputs (resid) stay, one per layer, and so
// do the norms' rstd (B*T floats a layer): the recomputation rewrites them with
// the same values
static int activation_recomputed(int i) {
    static const size_t fields[] = {
        offsetof(cpu::ActivationTensors, attn_xn), offsetof(cpu::ActivationTensors, q),
        offsetof(cpu::ActivationTensors, k), offsetof(cpu::ActivationTensors, v),
        offsetof(cpu::ActivationTensors, att_lse), offsetof(cpu::ActivationTensors, atty),
        offsetof(cpu::ActivationTensors, resid_mid), offsetof(cpu::ActivationTensors, mlp_xn),
        offsetof(cpu::ActivationTensors, gate), offsetof(cpu::ActivationTensors, up),
        offsetof(cpu::ActivationTensors, hidden),
    };
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        if (fields[k] == (size_t)i * sizeof(float*)) { return 1; }
    }
    return 0;
}

// cpu::point_into with an element size per tensor (bytes[i]); every tensor
// starts 16-byte aligned. returns the total bytes
#define TENSOR_ALIGN 16
static size_t point_into_bytes(float** ptrs, const size_t* sizes, const size_t* bytes, int n, void* memory) {
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (memory != NULL) { ptrs[i] = (float*)((char*)memory + total); }
        total += (sizes[i] * bytes[i] + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
    }
    return total;
}

// the device elements and element bytes of the activations and the gradient
// scratch at (B, T): the CPU's tables, with recompute the per-layer fields of
// activation_recomputed for one layer, and the MLP's device layout (row
// length Fp; fused: gate holds [gate | up] rows and up nothing, and so do
// the scratch's dgate and dup)
static void activation_layout(size_t asz[NUM_ACTIVATION_TENSORS], size_t abytes[NUM_ACTIVATION_TENSORS],
                              size_t gsz[NUM_GRAD_SCRATCH_TENSORS], size_t gbytes[NUM_GRAD_SCRATCH_TENSORS],
                              const cpu::LlamaConfig* c, int B, int T, Dtype dt, int recompute, int Fp, int fused,
                              int Vp, int fused_qkv) {
    cpu::activation_sizes(asz, c, B, T);
    cpu::grad_scratch_sizes(gsz, c, B, T);
    size_t btf = (size_t)B * T * Fp, L = c->L, btc = (size_t)B * T * c->C;
    // fused q, k, v: q holds the rows [q | k | v], and so does the scratch's dq
    asz[offsetof(cpu::ActivationTensors, q) / sizeof(float*)] = L * btc * (fused_qkv ? 3 : 1);
    asz[offsetof(cpu::ActivationTensors, k) / sizeof(float*)] = fused_qkv ? 0 : L * btc;
    asz[offsetof(cpu::ActivationTensors, v) / sizeof(float*)] = fused_qkv ? 0 : L * btc;
    gsz[offsetof(cpu::GradScratch, dq) / sizeof(float*)] = btc * (fused_qkv ? 3 : 1);
    gsz[offsetof(cpu::GradScratch, dk) / sizeof(float*)] = fused_qkv ? 0 : btc;
    gsz[offsetof(cpu::GradScratch, dv) / sizeof(float*)] = fused_qkv ? 0 : btc;
    asz[offsetof(cpu::ActivationTensors, logits) / sizeof(float*)] = (size_t)B * T * Vp;
    asz[offsetof(cpu::ActivationTensors, gate) / sizeof(float*)] = L * btf * (fused ? 2 : 1);
    asz[offsetof(cpu::ActivationTensors, up) / sizeof(float*)] = fused ? 0 : L * btf;
    asz[offsetof(cpu::ActivationTensors, hidden) / sizeof(float*)] = L * btf;
    gsz[offsetof(cpu::GradScratch, dgate) / sizeof(float*)] = btf * (fused ? 2 : 1);
    gsz[offsetof(cpu::GradScratch, dup) / sizeof(float*)] = btf;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        abytes[i] = activation_stays_fp32(i) ? sizeof(float) : dtype_bytes(dt);
        if (recompute && activation_recomputed(i)) { asz[i] /= (size_t)c->L; }
    }
    // the attention's row sums D stay fp32, like the lse they pair with
    size_t att_D = offsetof(cpu::GradScratch, att_D) / sizeof(float*);
    for (int i = 0; i < NUM_GRAD_SCRATCH_TENSORS; i++) { gbytes[i] = (size_t)i == att_D ? sizeof(float) : dtype_bytes(dt); }
}

size_t llama_activation_bytes(const cpu::LlamaConfig* c, int B, int T, Dtype dt, int recompute) {
    size_t asz[NUM_ACTIVATION_TENSORS], ab[NUM_ACTIVATION_TENSORS], gsz[NUM_GRAD_SCRATCH_TENSORS],
           gb[NUM_GRAD_SCRATCH_TENSORS];
    activation_layout(asz, ab, gsz, gb, c, B, T, dt, recompute, device_F(c, dt), device_fused_mlp(dt), device_V(c, dt),
                      device_fused_qkv(c, dt));
    return point_into_bytes(NULL, asz, ab, NUM_ACTIVATION_TENSORS, NULL) +
           point_into_bytes(NULL, gsz, gb, NUM_GRAD_SCRATCH_TENSORS, NULL);
}

// the weights' storage. with fp32 masters (the default): the masters, plus
// in bf16 a copy that the products read, refreshed after each update. with
// --master_weights 0 and bf16 activations: the bf16 weights alone, and
// params holds no memory: its pointers are offsets from PARAMS_OFFSET_BASE,
// an address no allocation has, so that a read that misses the bf16
// accessors below faults (or the harness stops) instead of reading wrong
// data. with --master_weights 0 in fp32: fp32 weights holding bf16 values
// (as on the CPU)
#define PARAMS_OFFSET_BASE ((const float*)(uintptr_t)((uint64_t)1 << 44))

static int llama_weights_bf16_only(Dtype dtype, int master_weights) {
    return !master_weights && dtype == DTYPE_BFLOAT16;
}

// the floats of the largest unit of a per-layer update: one layer of a tensor
size_t llama_largest_unit(const cpu::LlamaConfig* c) {
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, c);
    size_t most = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t per = (size_t)spec[i].rows * spec[i].cols;
        if (per > most) { most = per; }
    }
    return most;
}

// dtype, master_weights and per_layer: arguments the CPU twin does not have
// (it is fp32, with masters and whole gradients, only), last
void llama_build(Llama* model, const cpu::LlamaConfig* c, Dtype dtype, int master_weights = 1, int per_layer = 0) {
    const char* problem = cpu::llama_config_problem(c);
    if (problem != NULL) { cpu::fatal("invalid model config: %s", problem); }
    memset(model, 0, sizeof *model);
    model->config = *c;
    model->dtype = dtype;
    model->master_weights = master_weights;
    model->per_layer = per_layer;
    model->num_parameters = cpu::parameter_count(c);
    size_t n = model->num_parameters;
    model->grads_floats = per_layer ? llama_largest_unit(c) : n;
    if (!llama_weights_bf16_only(dtype, master_weights)) {
        model->params_memory = (float*)device_malloc(n * sizeof(float), master_weights ? "parameters"
                                                     : "parameters (bf16 values in fp32)");
    }
    model->grads_memory = (float*)device_malloc(model->grads_floats * sizeof(float), per_layer
                                                ? "gradient of one unit" : "gradients");
    cuda_check(cudaMemset(model->grads_memory, 0, model->grads_floats * sizeof(float)));
    model->fused_mlp = device_fused_mlp(dtype);
    model->fused_qkv = device_fused_qkv(c, dtype);
    model->Fp = device_F(c, dtype);
    model->Vp = device_V(c, dtype);
    model->params_bf16_count = device_layout(model->device_blocks, c, model->Fp, model->fused_mlp, model->Vp,
                                             model->fused_qkv);
    if (dtype == DTYPE_BFLOAT16) {
        // zeroed: the layout's pads are never written again
        size_t nb = model->params_bf16_count;
        model->params_bf16 = (bf16*)device_malloc(nb * sizeof(bf16), master_weights ? "bf16 parameter copy"
                                                  : "parameters (bf16)");
        cuda_check(cudaMemset(model->params_bf16, 0, nb * sizeof(bf16)));
    }
    model->param_base = model->params_memory != NULL ? model->params_memory : PARAMS_OFFSET_BASE;
    cpu::parameter_point_into(&model->params, (float*)model->param_base, c);
    // with per-layer updates grads is not used: grad_unit gives the one buffer
    if (!per_layer) { cpu::parameter_point_into(&model->grads, model->grads_memory, c); }
    grad_norm_reserve(model->grads_floats);
}

// the index of a parameter pointer in the parameter buffer
static size_t param_index(const Llama* model, const float* p) { return (size_t)(p - model->param_base); }

// the tensor of the table that holds parameter index `index`, with its first index
static int param_tensor_of(const Llama* model, size_t index, size_t* first, cpu::TensorSpec* spec_out) {
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &model->config);
    size_t at = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = cpu::tensor_numel(&spec[i]);
        if (index < at + n) {
            *first = at;
            *spec_out = spec[i];
            return i;
        }
        at += n;
    }
    cpu::fatal("parameter index %zu is past the %zu parameters (a bug)", index, at);
    return -1;
}

// where parameter index `index` (the table's layout) lies in params_bf16
static size_t param_device_index(const Llama* model, size_t index) {
    size_t first;
    cpu::TensorSpec sp;
    const DeviceBlock* b = &model->device_blocks[param_tensor_of(model, index, &first, &sp)];
    size_t j = index - first, per = (size_t)sp.rows * sp.cols, l = j / per, r = (j - l * per) / sp.cols;
    return b->base + l * b->layer_stride + r * b->row_stride + (j - l * per - r * sp.cols);
}

// op (PARAMS_BF16_*) on parameters [first, first + n) of the table's layout
// and x (n) fp32 on the device; n may span tensors. offset of the stochastic
// rounding: first
static void params_bf16_apply(const Llama* model, int op, size_t first, size_t n, float* x, uint64_t seed = 0,
                              uint64_t step = 0) {
    while (n > 0) {
        size_t start;
        cpu::TensorSpec sp;
        int i = param_tensor_of(model, first, &start, &sp);
        size_t len = start + cpu::tensor_numel(&sp) - first;
        len = len < n ? len : n;
        const DeviceBlock* b = &model->device_blocks[i];
        params_bf16_block(op, model->params_bf16 + b->base, first - start, (size_t)sp.rows * sp.cols,
                          (size_t)sp.cols, b->layer_stride, b->row_stride, x, len, seed, step, first);
        first += len;
        x += len;
        n -= len;
    }
}

// the bf16 copy from the masters: after every change of the masters (an
// optimizer step, an upload). a no-op in fp32 and without masters (the
// optimizer writes the bf16 weights themselves)
void llama_refresh_param_copy(Llama* model) {
    if (model->params_bf16 == NULL || model->params_memory == NULL) { return; }
    params_bf16_apply(model, PARAMS_BF16_FROM_FLOAT, 0, model->num_parameters, model->params_memory);
}

// the bf16 weights [first, first + n) (the table's layout) widened into out (n);
// with --master_weights 0 the optimizer steps on these
void params_bf16_widen(const Llama* model, float* out, size_t first, size_t n) {
    params_bf16_apply(model, PARAMS_BF16_WIDEN, first, n, out);
}

// x (n) rounded stochastically into the bf16 weights [first, first + n), with
// the bits of bf16_store_stochastic_array at offset first
void params_bf16_store_stochastic(const Llama* model, const float* x, size_t first, size_t n, uint64_t seed,
                                  uint64_t step) {
    params_bf16_apply(model, PARAMS_BF16_STORE_STOCHASTIC, first, n, (float*)x, seed, step);
}

// the host's side of the layout: params (table layout, fp32) to or from the
// bf16 weights' whole device image (params_bf16_count, pads zero)
static void params_bf16_host_image(const Llama* model, bf16* image, float* params, int to_image) {
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &model->config);
    size_t at = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        const DeviceBlock* b = &model->device_blocks[i];
        for (int l = 0; l < spec[i].layers; l++) {
            for (int r = 0; r < spec[i].rows; r++) {
                bf16* d = image + b->base + l * b->layer_stride + r * b->row_stride;
                float* x = params + at + ((size_t)l * spec[i].rows + r) * spec[i].cols;
                for (int c = 0; c < spec[i].cols; c++) {
                    if (to_image) { d[c] = __float2bfloat16(x[c]); } else { x[c] = __bfloat162float(d[c]); }
                }
            }
        }
        at += cpu::tensor_numel(&spec[i]);
    }
}

// the weights a matrix product reads, for the parameter `master`: the fp32
// weights themselves in fp32, their place in the bf16 copy (or the bf16
// weights) in bf16
template <typename X> static const X* matmul_weight(const Llama* model, const float* master);
template <> const float* matmul_weight<float>(const Llama* model, const float* master) {
    (void)model;
    return master;
}
template <> const bf16* matmul_weight<bf16>(const Llama* model, const float* master) {
    return model->params_bf16 + param_device_index(model, param_index(model, master));
}

// the weights a kernel reads (norms, the embedding table), as WT: fp32
// wherever there are fp32 weights, else the bf16 weights
template <typename WT> static const WT* kernel_weight(const Llama* model, const float* master);
template <> const float* kernel_weight<float>(const Llama* model, const float* master) {
    (void)model;
    return master;
}
template <> const bf16* kernel_weight<bf16>(const Llama* model, const float* master) {
    return model->params_bf16 + param_device_index(model, param_index(model, master));
}

// the weights from fp32 on the host (initialisation, checkpoints, tests).
// into bf16 weights alone they are rounded to nearest, which keeps the bf16
// values that --master_weights 0 runs hold (and checkpoint) exactly
void llama_upload_params(Llama* model, const float* params_host) {
    size_t n = model->num_parameters;
    if (model->params_memory != NULL) {
        cuda_check(cudaMemcpy(model->params_memory, params_host, n * sizeof(float), cudaMemcpyHostToDevice));
        llama_refresh_param_copy(model);
        return;
    }
    size_t nb = model->params_bf16_count;
    bf16* tmp = (bf16*)cpu::calloc_check(nb * sizeof(bf16), "bf16 weights upload");  // the pads zero
    params_bf16_host_image(model, tmp, (float*)params_host, 1);
    cuda_check(cudaMemcpy(model->params_bf16, tmp, nb * sizeof(bf16), cudaMemcpyHostToDevice));
    free(tmp);
}

// the weights to fp32 on the host (bf16 weights widened, exactly)
void llama_download_params(const Llama* model, float* params_host) {
    size_t n = model->num_parameters;
    if (model->params_memory != NULL) {
        cuda_check(cudaMemcpy(params_host, model->params_memory, n * sizeof(float), cudaMemcpyDeviceToHost));
        return;
    }
    size_t nb = model->params_bf16_count;
    bf16* tmp = (bf16*)cpu::malloc_check(nb * sizeof(bf16), "bf16 weights download");
    cuda_check(cudaMemcpy(tmp, model->params_bf16, nb * sizeof(bf16), cudaMemcpyDeviceToHost));
    params_bf16_host_image(model, tmp, params_host, 0);
    free(tmp);
}

// n elements of type dt on the device to fp32 on the host (logits for sampling, tests)
void device_to_host_float(float* host, const void* device, size_t n, Dtype dt) {
    if (dt == DTYPE_FLOAT32) {
        cuda_check(cudaMemcpy(host, device, n * sizeof(float), cudaMemcpyDeviceToHost));
        return;
    }
    bf16* tmp = (bf16*)cpu::malloc_check(n * sizeof(bf16), "bf16 copy");
    cuda_check(cudaMemcpy(tmp, device, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) { host[i] = __bfloat162float(tmp[i]); }
    free(tmp);
}

// lays the activations out for (B, T) in their memory. the first call
// allocates for its shape (the trainer's build, at the training batch); a
// later smaller shape (sampling at B=1, evaluation) reuses that memory, since
// every tensor is then smaller, so a run allocates activations exactly once
void llama_alloc_activations(Llama* model, int B, int T) {
    const cpu::LlamaConfig* c = &model->config;
    if (model->acts_memory != NULL && model->B == B && model->T == T) { return; }
    if (T > c->max_seq_len) {
        cpu::fatal("sequence length T=%d is above the model's max_seq_len=%d; lower --max_length", T, c->max_seq_len);
    }
    size_t asz[NUM_ACTIVATION_TENSORS], abytes[NUM_ACTIVATION_TENSORS];
    size_t gsz[NUM_GRAD_SCRATCH_TENSORS], gbytes[NUM_GRAD_SCRATCH_TENSORS];
    activation_layout(asz, abytes, gsz, gbytes, c, B, T, model->dtype, model->recompute, model->Fp, model->fused_mlp,
                      model->Vp, model->fused_qkv);
    size_t acts_bytes = point_into_bytes(NULL, asz, abytes, NUM_ACTIVATION_TENSORS, NULL);
    size_t scratch_bytes = point_into_bytes(NULL, gsz, gbytes, NUM_GRAD_SCRATCH_TENSORS, NULL);
    int fits = model->acts_memory != NULL && B <= model->B_cap && T <= model->T_cap;
    if (model->acts_memory != NULL && !fits) {
        cuda_check(cudaFree(model->acts_memory));
        cuda_check(cudaFree(model->scratch_memory));
        cuda_check(cudaFree(model->inputs));  // targets with them
        free(model->logits_host);
        model->logits_host = NULL;
        model->acts_memory = NULL;
    }
    if (model->acts_memory == NULL) {
        model->acts_bytes = acts_bytes;
        model->scratch_bytes = scratch_bytes;
        model->acts_memory = device_malloc(acts_bytes, "activations");
        model->scratch_memory = device_malloc(scratch_bytes, "gradient scratch");
        // zeroed like the CPU's calloc: the masked triangle of att is written
        // anyway, but nothing should ever read uninitialised memory
        cuda_check(cudaMemset(model->acts_memory, 0, acts_bytes));
        cuda_check(cudaMemset(model->scratch_memory, 0, scratch_bytes));
        // one allocation, so that one copy sends both (llama_forward_async)
        model->inputs = (int*)device_malloc(2 * (size_t)B * T * sizeof(int), "inputs and targets");
        model->targets = model->inputs + (size_t)B * T;
        // the backward's column sums and token buckets, so a step allocates nothing
        column_partials_reserve(column_partials_floats(B * T, c->C));
        encoder_buckets_reserve(B * T, c->V);
        staging_reserve(&g_batch_staging, 2 * (size_t)B * T * sizeof(int));
        staging_reserve(&g_rope_staging, 2 * (size_t)T * (c->C / c->NH / 2) * sizeof(float));
        model->B_cap = B;
        model->T_cap = T;
    }
    point_into_bytes((float**)&model->acts, asz, abytes, NUM_ACTIVATION_TENSORS, model->acts_memory);
    point_into_bytes((float**)&model->scratch, gsz, gbytes, NUM_GRAD_SCRATCH_TENSORS, model->scratch_memory);
    free(model->logits_host);  // its size follows (B, T)
    model->logits_host = NULL;
    model->B = B;
    model->T = T;
    // the rope tables for this T, where this layout puts them: computed by
    // the CPU code, so both sides use the same floats, and sent through
    // pinned staging, so that a change of shape (a sample at B=1 between
    // training steps) does not make the host wait for the device
    int HS = c->C / c->NH;
    size_t half_table = (size_t)T * (HS / 2);
    float* tables = (float*)staging_take(&g_rope_staging);
    cpu::rope_precompute(tables, tables + half_table, T, HS, c->rope_theta);
    staging_send(&g_rope_staging, model->acts.rope_cs, 2 * half_table * sizeof(float));
}

void llama_free(Llama* model) {
    cuda_check(cudaFree(model->params_memory));
    cuda_check(cudaFree(model->grads_memory));
    if (model->params_bf16 != NULL) { cuda_check(cudaFree(model->params_bf16)); }
    if (model->acts_memory != NULL) {
        cuda_check(cudaFree(model->acts_memory));
        cuda_check(cudaFree(model->scratch_memory));
        cuda_check(cudaFree(model->inputs));  // targets with them
    }
    free(model->logits_host);
    memset(model, 0, sizeof *model);
}

// where layer l's activations are: their own slot per layer, or with
// --activation_checkpointing slot 0 for every layer (activation_recomputed)
// except the layer input x and the rstd of both norms
template <typename X>
struct LayerActivations {
    X *x, *xn, *q, *k, *v, *atty, *mid, *mxn, *gate, *up, *hidden;  // (B,T,C) or (B,T,F)
    float *attn_rstd, *mlp_rstd;                                    // (B,T)
    float* att_lse;                                                 // (B,NH,T)
};

template <typename X>
static LayerActivations<X> layer_activations(const Llama* model, int l) {
    const cpu::LlamaConfig* c = &model->config;
    size_t BT = (size_t)model->B * model->T, btc = BT * c->C, btf = BT * model->Fp;
    size_t s = model->recompute ? 0 : (size_t)l;  // the slot of the recomputed fields
    const cpu::ActivationTensors* a = &model->acts;
    LayerActivations<X> la;
    la.x = act<X>(a->resid) + l * btc;
    la.xn = act<X>(a->attn_xn) + s * btc;
    // fused: q holds the rows [q | k | v] of the one product
    la.q = act<X>(a->q) + s * btc * (model->fused_qkv ? 3 : 1);
    la.k = model->fused_qkv ? la.q + c->C : act<X>(a->k) + s * btc;
    la.v = model->fused_qkv ? la.q + 2 * c->C : act<X>(a->v) + s * btc;
    la.att_lse = a->att_lse + s * model->B * c->NH * (size_t)model->T;
    la.atty = act<X>(a->atty) + s * btc;
    la.mid = act<X>(a->resid_mid) + s * btc;
    la.mxn = act<X>(a->mlp_xn) + s * btc;
    // fused: gate holds the rows [gate | up] of the one product, up is in them
    la.gate = act<X>(a->gate) + s * btf * (model->fused_mlp ? 2 : 1);
    la.up = model->fused_mlp ? la.gate + model->Fp : act<X>(a->up) + s * btf;
    la.hidden = act<X>(a->hidden) + s * btf;
    la.attn_rstd = a->attn_rstd + l * BT;
    la.mlp_rstd = a->mlp_rstd + l * BT;
    return la;
}

// layer l's forward from its input x: everything the backward reads, and
// with out != NULL the layer's output (B,T,C), the next layer's input. the
// backward's recomputation passes out = NULL: the same kernels on the same
// input give the same bits, and the output is already kept as the next input
template <typename X, typename WT>
static void layer_forward(Llama* model, int l, X* out) {
    const cpu::LlamaConfig* c = &model->config;
    int B = model->B, T = model->T, C = c->C, F = c->F, NH = c->NH, HS = C / NH, BT = B * T;
    cpu::ParameterTensors p = model->params;
    const float* cos_t = model->acts.rope_cs;
    const float* sin_t = model->acts.rope_cs + (size_t)T * (HS / 2);
    size_t btf = (size_t)BT * F, cc = (size_t)C * C, fc = (size_t)F * C;
    LayerActivations<X> la = layer_activations<X>(model, l);

    rmsnorm_forward(la.xn, la.attn_rstd, la.x, kernel_weight<WT>(model, p.attn_norm + (size_t)l * C), BT, C,
                    c->norm_eps);
    int ldq = model->fused_qkv ? 3 * C : C;  // the row stride of q, k, v
    if (model->fused_qkv) {
        // one product for q, k and v (their (3C, C) block): rows [q | k | v]
        matmul_forward(la.q, la.xn, matmul_weight<X>(model, p.wq + l * cc), BT, C, 3 * C);
    } else {
        matmul_forward(la.q, la.xn, matmul_weight<X>(model, p.wq + l * cc), BT, C, C);
        matmul_forward(la.k, la.xn, matmul_weight<X>(model, p.wk + l * cc), BT, C, C);
        matmul_forward(la.v, la.xn, matmul_weight<X>(model, p.wv + l * cc), BT, C, C);
    }
    rope_forward(la.q, la.q, cos_t, sin_t, B, T, NH, HS, ldq);
    rope_forward(la.k, la.k, cos_t, sin_t, B, T, NH, HS, ldq);
    attention_forward(la.atty, la.att_lse, la.q, la.k, la.v, B, T, NH, HS, ldq);
    matmul_forward_residual(la.mid, la.atty, matmul_weight<X>(model, p.wo + l * cc), la.x, BT, C, C);

    rmsnorm_forward(la.mxn, la.mlp_rstd, la.mid, kernel_weight<WT>(model, p.mlp_norm + (size_t)l * C), BT, C,
                    c->norm_eps);
    int Fp = model->Fp;
    if (model->fused_mlp) {
        // one product for gate and up (their (2 Fp, C) block), then SwiGLU
        // across the two halves of each row
        matmul_forward(la.gate, la.mxn, matmul_weight<X>(model, p.w_gate + l * fc), BT, C, 2 * Fp);
        swiglu_forward_fused(la.hidden, la.gate, BT, Fp);
    } else {
        matmul_forward(la.gate, la.mxn, matmul_weight<X>(model, p.w_gate + l * fc), BT, C, F);
        matmul_forward(la.up, la.mxn, matmul_weight<X>(model, p.w_up + l * fc), BT, C, F);
        swiglu_forward(la.hidden, la.gate, la.up, btf);
    }
    if (out == NULL) { return; }
    // over all Fp columns: hidden's pads and w_down's are zeros (Fp = F unfused)
    matmul_forward_residual(out, la.hidden, matmul_weight<X>(model, p.w_down + l * fc), la.mid, BT, Fp, C);
}

// the forward for one activation type X and kernel-weight type WT;
// llama_forward below picks them
template <typename X, typename WT>
static void llama_forward_typed(Llama* model, int B, int T) {
    const cpu::LlamaConfig* c = &model->config;
    int L = c->L, C = c->C, BT = B * T;
    cpu::ParameterTensors p = model->params;
    cpu::ActivationTensors a = model->acts;
    size_t btc = (size_t)BT * C;

    encoder_forward(act<X>(a.resid), model->inputs, kernel_weight<WT>(model, p.tok_embeddings), BT, C);
    for (int l = 0; l < L; l++) {
        layer_forward<X, WT>(model, l, l + 1 < L ? act<X>(a.resid) + (l + 1) * btc : act<X>(a.resid_out));
    }
    rmsnorm_forward(act<X>(a.final_xn), a.final_rstd, act<X>(a.resid_out), kernel_weight<WT>(model, p.final_norm),
                    BT, C, c->norm_eps);
    // all Vp rows: lm_head's pad rows are zeros, and so are the pads of the logits
    matmul_forward(act<X>(a.logits), act<X>(a.final_xn), matmul_weight<X>(model, p.lm_head), BT, C, model->Vp);
}

// inputs, targets: HOST arrays (B,T), as the loader gives them; targets may
// be NULL. returns the mean loss (0 without targets); the logits stay on the
// device in acts.logits (of the model's dtype)
// the forward of a training micro-batch: the mean loss stays on the device
// (with accum > 0, mean / accum is added to the step's loss; llama_step_stats
// reads it), and the batch goes up through pinned staging: the host does not
// wait for the device
void llama_forward_async(Llama* model, const int* inputs, const int* targets, int B, int T, int accum) {
    llama_alloc_activations(model, B, T);
    int BT = B * T, V = model->config.V;
    int* up = (int*)staging_take(&g_batch_staging);
    memcpy(up, inputs, (size_t)BT * sizeof(int));
    if (targets != NULL) { memcpy(up + BT, targets, (size_t)BT * sizeof(int)); }
    // inputs and targets are adjacent on the device (llama_alloc_activations)
    staging_send(&g_batch_staging, model->inputs, (targets != NULL ? 2 : 1) * (size_t)BT * sizeof(int));
    cpu::ActivationTensors a = model->acts;
    if (model->dtype == DTYPE_FLOAT32) { llama_forward_typed<float, float>(model, B, T); }
    else if (model->params_memory != NULL) { llama_forward_typed<bf16, float>(model, B, T); }
    else { llama_forward_typed<bf16, bf16>(model, B, T); }
    if (targets != NULL) {
        int count = cpu::count_targets(targets, BT);
        if (model->dtype == DTYPE_BFLOAT16) {
            crossentropy_forward_async(a.losses, a.lse, act<bf16>(a.logits), model->targets, count, accum, BT, V,
                                       model->Vp);
        } else {
            crossentropy_forward_async(a.losses, a.lse, act<float>(a.logits), model->targets, count, accum, BT, V,
                                       model->Vp);
        }
    }
}

// inputs, targets: HOST arrays (B,T), as the loader gives them; targets may
// be NULL. returns the mean loss (0 without targets), read from the device;
// the logits stay on the device in acts.logits (of the model's dtype)
float llama_forward(Llama* model, const int* inputs, const int* targets, int B, int T) {
    llama_forward_async(model, inputs, targets, B, T, 0);
    model->mean_loss = 0.0f;
    if (targets != NULL) {
        double mean = 0.0;
        cuda_check(cudaMemcpy(&mean, step_stats_device() + STAT_MEAN, sizeof mean, cudaMemcpyDeviceToHost));
        model->mean_loss = (float)mean;
    }
    return model->mean_loss;
}

// the squared norm the per-layer backward has summed since llama_zero_grad
// (a read of the device, for tests; llama_step_stats reads it in a step)
double llama_unit_norm2(void) {
    double norm2 = 0.0;
    cuda_check(cudaMemcpy(&norm2, step_stats_device() + STAT_NORM2, sizeof norm2, cudaMemcpyDeviceToHost));
    return norm2;
}

// the step's loss and gradient norm, in one read of the device; the step's
// loss starts again at 0. with per-layer updates the backward has summed the
// squared norm unit by unit (the same squares, in another order than the
// whole buffer's chunks)
// the step's loss and gradient norm as they stand on the device, in one
// read; both start again at 0 (llama_step_stats; ZeRO-1 sums its own norm)
static void step_stats_take(double* loss, double* norm) {
    double* stats = step_stats_device();
    double host[2];
    cuda_check(cudaMemcpy(host, stats, sizeof host, cudaMemcpyDeviceToHost));
    cuda_check(cudaMemsetAsync(stats, 0, sizeof host, 0));
    *loss = host[STAT_LOSS];
    *norm = sqrt(host[STAT_NORM2]);
}

void llama_step_stats(Llama* model, double* loss, double* norm) {
    double* stats = step_stats_device();
    if (!model->per_layer) { grad_squared_norm_on_device(stats + STAT_NORM2, model->grads_memory, model->num_parameters, 0); }
    step_stats_take(loss, norm);
}

void llama_zero_grad(Llama* model) {
    cuda_check(cudaMemsetAsync(model->grads_memory, 0, model->grads_floats * sizeof(float), 0));
    if (model->per_layer) { cuda_check(cudaMemsetAsync(step_stats_device() + STAT_NORM2, 0, sizeof(double), 0)); }
}

// where a unit's weight gradient accumulates in the backward: its place in
// the gradient buffer (g.field + off), or with per-layer updates the one-unit
// buffer (grads then points nowhere)
#define GRAD_AT(field, off) (model->per_layer ? model->grads_memory : g.field + (off))

// data parallel (NULL in one process). g_unit_grad_sum: sums a unit's
// gradient over the ranks, now (per-layer updates: before its norm and its
// update). g_unit_grad_ready: the unit's gradient in the whole buffer is
// final (the last micro step's backward has written it), so its sum can
// start behind the rest of the backward
static void (*g_unit_grad_sum)(float* grad, size_t n) = NULL;
static void (*g_unit_grad_ready)(int tensor, int layer, float* grad, size_t n) = NULL;

// the unit (tensor, layer) of n floats has its whole gradient: with
// per-layer updates, its norm is added up and the optimizer updates it; the
// buffer is then zeroed for the next unit. nothing later in the backward
// reads this unit's weights, so updating them now is the whole-step update.
// nor does anything later write this unit's gradient, so with data parallel
// its sum over the ranks can start here
static void unit_done(Llama* model, int tensor, int layer, size_t n) {
    if (!model->per_layer) {
        if (g_unit_grad_ready != NULL) {
            g_unit_grad_ready(tensor, layer, cpu::parameter_pointers(&model->grads)[tensor] + (size_t)layer * n, n);
        }
        return;
    }
    if (g_unit_grad_sum != NULL) { g_unit_grad_sum(model->grads_memory, n); }
    grad_squared_norm_on_device(step_stats_device() + STAT_NORM2, model->grads_memory, n, 1);
    model->on_unit(model->on_unit_ctx, tensor, layer, model->grads_memory);
    cuda_check(cudaMemsetAsync(model->grads_memory, 0, n * sizeof(float), 0));
}

// the backward for one activation type X and kernel-weight type WT;
// llama_backward below picks them
template <typename X, typename WT>
static void llama_backward_typed(Llama* model, float dloss) {
    const cpu::LlamaConfig* c = &model->config;
    int B = model->B, T = model->T;
    int L = c->L, C = c->C, F = c->F, NH = c->NH, V = c->V, HS = C / NH, BT = B * T;
    cpu::ParameterTensors p = model->params, g = model->grads;
    cpu::ActivationTensors a = model->acts;
    cpu::GradScratch s = model->scratch;
    const float* cos_t = a.rope_cs;
    const float* sin_t = a.rope_cs + (size_t)T * (HS / 2);
    size_t btc = (size_t)BT * C, btf = (size_t)BT * F;
    X* dresid = act<X>(s.dresid);
    X* dxn = act<X>(s.dxn);
    X* dq = act<X>(s.dq);
    // fused: dq holds the rows [dq | dk | dv], as q does [q | k | v]
    X* dk = model->fused_qkv ? dq + C : act<X>(s.dk);
    X* dv = model->fused_qkv ? dq + 2 * C : act<X>(s.dv);
    int ldq = model->fused_qkv ? 3 * C : C;
    X* dgate = act<X>(s.dgate);
    X* dup = act<X>(s.dup);
    X* logits = act<X>(a.logits);

    // logits become dlogits in place: no (B,T,V) probability buffer
    int Vp = model->Vp;
    crossentropy_softmax_backward(logits, logits, a.lse, model->targets, dloss, BT, V, Vp);
    size_t vc = (size_t)V * C, cc = (size_t)C * C, fc = (size_t)F * C;
    // dxn over all Vp columns (the pads are zeros on both sides), dlm_head from the V real ones
    matmul_backward_input(dxn, logits, matmul_weight<X>(model, p.lm_head), BT, C, Vp);
    matmul_backward_weight(GRAD_AT(lm_head, 0), logits, Vp, act<X>(a.final_xn), C, BT, C, V);
    unit_done(model, PARAM_INDEX(lm_head), 0, vc);
    cuda_check(cudaMemset(dresid, 0, btc * sizeof(X)));
    rmsnorm_backward(dresid, GRAD_AT(final_norm, 0), dxn, act<X>(a.resid_out), kernel_weight<WT>(model, p.final_norm),
                     a.final_rstd, BT, C);
    unit_done(model, PARAM_INDEX(final_norm), 0, C);

    for (int l = L - 1; l >= 0; l--) {
        // with recomputation, the slot holds the last layer's activations
        // from the forward; every other layer is recomputed from its input
        if (model->recompute && l < L - 1) { layer_forward<X, WT>(model, l, (X*)NULL); }
        LayerActivations<X> la = layer_activations<X>(model, l);
        X *x = la.x, *xn = la.xn, *q = la.q, *k = la.k, *v = la.v, *atty = la.atty, *mid = la.mid;
        X *mxn = la.mxn, *gate = la.gate, *up = la.up, *hidden = la.hidden;
        size_t lc = (size_t)l * C;

        // mlp block (see the CPU twin for the derivation). with per-layer
        // updates each weight is updated right after the product that gives
        // its gradient, which is also the last to read it
        if (model->fused_mlp) {
            // the device layout: d(hidden) over Fp columns (w_down's zero
            // columns give zeros), SwiGLU's backward into [dgate | dup] rows,
            // one product for dxn through the whole gate/up block (one sum
            // where the CPU adds two), and each weight gradient from its half
            int Fp = model->Fp;
            X* dgu = dgate;  // (B,T,2Fp)
            X* dh = dup;     // (B,T,Fp)
            matmul_backward_input(dh, dresid, matmul_weight<X>(model, p.w_down + l * fc), BT, Fp, C);
            matmul_backward_weight(GRAD_AT(w_down, l * fc), dresid, C, hidden, Fp, BT, F, C);
            unit_done(model, PARAM_INDEX(w_down), l, fc);
            swiglu_backward_fused(dgu, dh, gate, BT, Fp);
            matmul_backward_input(dxn, dgu, matmul_weight<X>(model, p.w_gate + l * fc), BT, C, 2 * Fp);
            matmul_backward_weight(GRAD_AT(w_gate, l * fc), dgu, 2 * Fp, mxn, C, BT, C, F);
            unit_done(model, PARAM_INDEX(w_gate), l, fc);
            matmul_backward_weight(GRAD_AT(w_up, l * fc), dgu + Fp, 2 * Fp, mxn, C, BT, C, F);
            unit_done(model, PARAM_INDEX(w_up), l, fc);
            rmsnorm_backward(dresid, GRAD_AT(mlp_norm, lc), dxn, mid, kernel_weight<WT>(model, p.mlp_norm + lc),
                             la.mlp_rstd, BT, C);
        } else {
            matmul_backward(dup, GRAD_AT(w_down, l * fc), dresid, hidden, matmul_weight<X>(model, p.w_down + l * fc),
                            BT, F, C);
            unit_done(model, PARAM_INDEX(w_down), l, fc);
            swiglu_backward(dgate, dup, dup, gate, up, btf);
            matmul_backward(dxn, GRAD_AT(w_gate, l * fc), dgate, mxn, matmul_weight<X>(model, p.w_gate + l * fc),
                            BT, C, F);
            unit_done(model, PARAM_INDEX(w_gate), l, fc);
            matmul_backward(dq, GRAD_AT(w_up, l * fc), dup, mxn, matmul_weight<X>(model, p.w_up + l * fc), BT, C, F);
            unit_done(model, PARAM_INDEX(w_up), l, fc);
            // dxn + dq, the two parts, added as the norm's backward reads them
            rmsnorm_backward_residual(dresid, GRAD_AT(mlp_norm, lc), dxn, dq, mid,
                                      kernel_weight<WT>(model, p.mlp_norm + lc), la.mlp_rstd, BT, C);
        }
        unit_done(model, PARAM_INDEX(mlp_norm), l, C);

        // attention block
        matmul_backward(dxn, GRAD_AT(wo, l * cc), dresid, atty, matmul_weight<X>(model, p.wo + l * cc), BT, C, C);
        unit_done(model, PARAM_INDEX(wo), l, cc);
        attention_backward(dq, dk, dv, dxn, atty, la.att_lse, q, k, v, s.att_D, B, T, NH, HS, ldq);
        rope_backward(dq, dq, cos_t, sin_t, B, T, NH, HS, ldq);
        rope_backward(dk, dk, cos_t, sin_t, B, T, NH, HS, ldq);
        if (model->fused_qkv) {
            // one product for dxn through the whole (3C, C) block (one sum
            // where the CPU adds three), each weight gradient from its third
            matmul_backward_input(dxn, dq, matmul_weight<X>(model, p.wq + l * cc), BT, C, 3 * C);
            matmul_backward_weight(GRAD_AT(wq, l * cc), dq, 3 * C, xn, C, BT, C, C);
            unit_done(model, PARAM_INDEX(wq), l, cc);
            matmul_backward_weight(GRAD_AT(wk, l * cc), dk, 3 * C, xn, C, BT, C, C);
            unit_done(model, PARAM_INDEX(wk), l, cc);
            matmul_backward_weight(GRAD_AT(wv, l * cc), dv, 3 * C, xn, C, BT, C, C);
            unit_done(model, PARAM_INDEX(wv), l, cc);
            rmsnorm_backward(dresid, GRAD_AT(attn_norm, lc), dxn, x, kernel_weight<WT>(model, p.attn_norm + lc),
                             la.attn_rstd, BT, C);
            unit_done(model, PARAM_INDEX(attn_norm), l, C);
            continue;
        }
        matmul_backward(dxn, GRAD_AT(wq, l * cc), dq, xn, matmul_weight<X>(model, p.wq + l * cc), BT, C, C);
        unit_done(model, PARAM_INDEX(wq), l, cc);
        matmul_backward(dq, GRAD_AT(wk, l * cc), dk, xn, matmul_weight<X>(model, p.wk + l * cc), BT, C, C);
        unit_done(model, PARAM_INDEX(wk), l, cc);
        residual_backward(dxn, dq, btc);
        matmul_backward(dq, GRAD_AT(wv, l * cc), dv, xn, matmul_weight<X>(model, p.wv + l * cc), BT, C, C);
        unit_done(model, PARAM_INDEX(wv), l, cc);
        rmsnorm_backward_residual(dresid, GRAD_AT(attn_norm, lc), dxn, dq, x,
                                  kernel_weight<WT>(model, p.attn_norm + lc), la.attn_rstd, BT, C);
        unit_done(model, PARAM_INDEX(attn_norm), l, C);
    }
    encoder_backward(GRAD_AT(tok_embeddings, 0), dresid, model->inputs, BT, C);
    unit_done(model, PARAM_INDEX(tok_embeddings), 0, vc);
}

// backward of the mean loss times loss_scale, accumulated (+=) into
// model->grads (fp32 in both dtypes); targets is the HOST array given to the
// forward just before
void llama_backward(Llama* model, const int* inputs, const int* targets, float loss_scale) {
    // the forward's device copy of inputs is used; the host copy is grouped by token for encoder_backward
    encoder_backward_buckets(inputs, model->B * model->T, model->config.V);
    int count = cpu::count_targets(targets, model->B * model->T);
    float dloss = count > 0 ? loss_scale / count : 0.0f;
    if (model->dtype == DTYPE_FLOAT32) { llama_backward_typed<float, float>(model, dloss); }
    else if (model->params_memory != NULL) { llama_backward_typed<bf16, float>(model, dloss); }
    else { llama_backward_typed<bf16, bf16>(model, dloss); }
}

// the logits of the last forward on the host (B,T,V) in fp32, for sampling and tests
// (the device rows are Vp long: the pads are left out)
const float* llama_logits_to_host(Llama* model) {
    size_t BT = (size_t)model->B * model->T, V = model->config.V, Vp = model->Vp;
    if (model->logits_host == NULL) {
        model->logits_host = (float*)cpu::malloc_check(BT * Vp * sizeof(float), "logits copy");
    }
    device_to_host_float(model->logits_host, model->acts.logits, BT * Vp, model->dtype);
    for (size_t r = 1; r < BT && Vp != V; r++) {
        memmove(model->logits_host + r * V, model->logits_host + r * Vp, V * sizeof(float));
    }
    return model->logits_host;
}

// ----------------------------------------------------------------------------
// the optimizers on the device
//
// the same layout as the CPU Optimizer, whose struct (cpu::Optimizer) is kept
// here as `host`: its settings, its per-matrix LowRankState table (the
// offsets of each state in lowrank_memory) and host buffers that checkpoints
// are written from and read into. the device holds the working copies:
//   adam_m, adam_v  (num_adam) each, AdamW tensors in table order
//   lowrank_memory  (lowrank_floats): each matrix's S | M | V | prev | prev_set,
//                   in table then layer order, exactly as on the CPU
// so a checkpoint is the same bytes whichever side wrote it.

// the optimizers check errors through the two macros below, which point at
// the trainer's own checks
#define cudaCheck(err) cuda_check(err)
#define cublasCheck(status) cublas_check(status)

// ----------------------------------------------------------------------------
// the optimizers on the GPU: AdamW for plain tensors, and low-rank AdamW whose
// subspace is refreshed by an SVD (GaLore) or tracked along a Grassmannian
// geodesic (SubTrack++). each launcher mirrors its CPU twin in
// train_llama_subtrack.c (visible here as namespace cpu) in name and argument
// order; the equations and step numbers are those of ../shared/SUBTRACK.md.
//
// orientation, as on the CPU: W (m, n); right = cpu::lowrank_right(m, n,
// --proj_type), p the projected side's length (m left, n right), q the other's.
//   left:  S (p, R), Gt = S^T G (R, q)
//   right: S (p, R), Gt = G S   (q, R)
// the state lives in ONE device float array in the CPU layout
//   S (p, R) | M | V | prev | prev_set
// (cpu::lowrank_state_num_floats floats), so a checkpoint copies it verbatim.
//
// use, one low-rank matrix at a time (the reference path, and per-layer updates):
//   lowrank_gpu_reserve(&ctx, m, n, right, R)     for every shape, then lowrank_gpu_alloc(&ctx)
//   lowrank_state_init(&state, m, n, right, R, memory)   memory: device, cpu::lowrank_state_num_floats floats
//   lowrank_adamw_step(&state, W, G, t, &cfg, lr, &ctx)
// or every matrix of a model at once, grouped by shape (the trainer's step):
//   lowrank_gpu_reserve_group(&ctx, m, n, right, R, count) as well, for each shape, before lowrank_gpu_alloc
//   lowrank_groups_build(&groups, states, count, &ctx, 0)   batches and their pointer tables, once
//   lowrank_groups_bind(&groups, W, G)            each matrix's weight and gradient, once
//   lowrank_groups_step(&groups, t, &cfg, lr, &ctx)
// and adamw_update() for embeddings, lm_head and norms.
//
// why groups: a LLaMA has 7 matrices per layer in 3 shapes ((C, C) for wq wk
// wv wo, (F, C) for w_gate w_up, (C, F) for w_down), and one at a time a step
// issues ~15 launches per matrix, most of them far too small to fill a GPU
// (R x R products, one-block reductions), and on SVD steps a sync per matrix
// for cuSOLVER's devInfo. a batch of matrices of one shape runs each product
// as one batched cuBLAS call over device tables of pointers, and each small
// kernel as one launch whose blockIdx.y picks the matrix (PerMatrix below); the
// SVD's status is read back once per step, for every matrix together.
//
// the step runs on a LowRankBatchGPU: one matrix (lowrank_adamw_step), or a
// batch of matrices of one shape and orientation. its pieces are the CPU's
// step functions, by the same names (see the list at the top of the CPU's
// optimizer section), taking the batch, which holds the state, the arrays and
// the scratch the CPU passes one by one. the kernel launchers below keep the
// CPU's names and argument order, with the number of matrices last. a batch
// computes each of its matrices exactly as a step on that matrix alone does:
// the same kernels, the same products. two places differ from the CPU, for
// speed: step 4's kernel also takes step 5's column norms in the same pass
// over the moments, which leaves step 5 the limiter alone; and Lambda is never
// formed: step 6 scales the residual as it subtracts it.
//
// matrix products go through gemm_gpu, which takes the CPU gemm's row-major
// arguments unchanged and hands cuBLAS (column-major) the transposed problem:
// row-major C (M, N) is column-major C^T (N, M) = op(B)^T op(A)^T, so A and B
// swap places and keep their own transpose flags. every gemm below is thus
// the CPU twin's gemm call, flag for flag; no matrix is ever transposed in memory.
//
// determinism: every reduction has a fixed order (shared memory trees and
// butterfly warp shuffles, no float atomics), cuBLAS GEMMs are run-to-run
// deterministic on one device with one stream, so resume is bit-exact.
// accuracy: the GEMMs stay in fp32 (the optimizer's handle keeps
// CUBLAS_DEFAULT_MATH: no TF32), reductions that the CPU does in double are
// done in double here.
//
// needs: <cublas_v2.h>, <cusolverDn.h> (link -lcublas -lcusolver) and the CPU
// file included as namespace cpu (for LowRankConfig, SUBSPACE_*, the sizes).

// ---- cuSOLVER's error check (cudaCheck and cublasCheck are defined above)

static void cusolver_check_at(cusolverStatus_t status, const char* file, int line) {
    if (status != CUSOLVER_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuSOLVER status %d at %s:%d\n", (int)status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define cusolverCheck(status) cusolver_check_at((status), __FILE__, __LINE__)

#define OPTIM_WARP 32
#define OPTIM_BLOCK 256                 // threads of 1D elementwise / row kernels
#define OPTIM_COLS 32                   // columns per block in the left (R, q) layout: one per lane
#define OPTIM_ROWS 8                    // warps per block; rows of a column summed per warp
#define OPTIM_REDUCE_BLOCK 1024         // single-block reductions (power iteration, limiter)
#define GRAM_TILE 32                    // K = X X^T tile edge

static unsigned optim_blocks(size_t n, int per_block) {
    return (unsigned)((n + per_block - 1) / per_block);
}

// ---- one array per matrix: the low-rank kernels' pointer arguments
//
// a launch for one matrix passes its pointer (converted implicitly: `one`); a
// launch for a batch of matrices of one shape passes a device table with an
// entry per matrix, and block (x, e) works on matrix e (blockIdx.y). the table's
// host copy serves what the host does per matrix (the SVD, zeroing a state).
// the same kernel either way, so each matrix of a batch gets the bits it gets
// alone
template <typename T> struct PerMatrix {
    T* one;
    T* const* table;    // device (batch), or NULL
    T* const* host;     // host copy of table
    PerMatrix(T* p = NULL) : one(p), table(NULL), host(NULL) {}
    // a PerMatrix<float> is a PerMatrix<const float>, as float* is const float*
    template <typename U> PerMatrix(const PerMatrix<U>& x)
        : one(x.one), table((T* const*)x.table), host((T* const*)x.host) {}
    __device__ T* at(int e) const { return table != NULL ? table[e] : one; }
    T* on_host(int e) const { return table != NULL ? host[e] : one; }
};

// the same memory as another element type (scratch that holds doubles in a float slot)
template <typename T, typename U> static PerMatrix<T> per_matrix_cast(const PerMatrix<U>& x) {
    PerMatrix<T> y((T*)x.one);
    y.table = (T* const*)x.table;
    y.host = (T* const*)x.host;
    return y;
}

// every matrix's array 16-byte aligned (from the host copy of a table): the
// per-matrix elementwise kernels' vec (see aligned128_all); NULL counts as aligned
template <typename T> static int per_matrix_aligned128(const PerMatrix<T>& x, int count) {
    for (int e = 0; e < count; e++) {
        if (!aligned128(x.on_host(e))) { return 0; }
    }
    return 1;
}

// ---- reduction building blocks: fixed order, so the result is the same every run

__device__ __forceinline__ double optim_warp_sum(double x) {
    for (int offset = OPTIM_WARP / 2; offset > 0; offset /= 2) {
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
    return x;  // every lane holds the total
}

// sum over a 1D block whose size is a multiple of 32; buf: 33 shared doubles.
// every thread gets the total; buf can be reused as soon as this returns
__device__ double optim_block_sum(double x, double* buf) {
    int lane = threadIdx.x % OPTIM_WARP, warp = threadIdx.x / OPTIM_WARP;
    int num_warps = blockDim.x / OPTIM_WARP;
    x = optim_warp_sum(x);
    if (lane == 0) { buf[warp] = x; }
    __syncthreads();
    if (warp == 0) {
        double y = lane < num_warps ? buf[lane] : 0.0;
        y = optim_warp_sum(y);
        if (lane == 0) { buf[OPTIM_WARP] = y; }
    }
    __syncthreads();
    double total = buf[OPTIM_WARP];
    __syncthreads();
    return total;
}

// ---- AdamW

// one element, the CPU loop's arithmetic (adamw_update in train_llama_subtrack.c)
__device__ __forceinline__ void adamw_element(float* W, float* M, float* V, float g, float step, float decay,
                                              float l2_decay, float beta1, float beta2, float eps) {
    g = g + l2_decay * *W;
    float m = beta1 * *M + (1.0f - beta1) * g;
    float v = beta2 * *V + (1.0f - beta2) * g * g;
    *M = m;
    *V = v;
    float w = *W - step * (m / (sqrtf(v) + eps));
    *W = w - decay * w;
}

// W, M, V, G: (numel,). 4 elements a thread (see aligned128_all): 28 bytes an
// element, the step's largest pass over memory at full rank
__global__ void adamw_kernel(float* W, float* M, float* V, const float* G, size_t numel, int vec,
                             float step, float decay, float l2_decay, float beta1, float beta2, float eps) {
    constexpr int P = Pack128<float>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= numel) { return; }
    if (vec && i + P <= numel) {
        Pack128<float> w = load128(W + i), m = load128(M + i), v = load128(V + i), g = load128(G + i);
        for (int k = 0; k < P; k++) {
            adamw_element(&w.x[k], &m.x[k], &v.x[k], g.x[k], step, decay, l2_decay, beta1, beta2, eps);
        }
        store128(M + i, m);
        store128(V + i, v);
        store128(W + i, w);
    } else {
        for (int k = 0; k < P && i + k < numel; k++) {
            adamw_element(W + i + k, M + i + k, V + i + k, G[i + k], step, decay, l2_decay, beta1, beta2, eps);
        }
    }
}

// ---- SGD (--optimizer sgd): the CPU's sgd_update (train_llama_subtrack.c), an element a thread
__global__ void sgd_kernel(float* W, float* B, const float* G, size_t numel, float lr, float momentum,
                           float weight_decay) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= numel) { return; }
    float d = G[i] + weight_decay * W[i];
    if (momentum != 0.0f) {
        d = momentum * B[i] + d;
        B[i] = d;
    }
    W[i] = W[i] - lr * d;
}

// ---- low-rank AdamW: the per-column kernels
//
// the moments are q vectors of length R ("columns" j of the non-projected
// dimension): element (i, j) is at i * q + j in the left (R, q) layout and at
// j * R + i in the right (q, R) layout. kernels that reduce over a column use
// a (32, 8) block laid out to keep loads coalesced:
//   left:  lane x owns column j = 32 blockIdx.x + x, the 8 warps split its rows
//          i = y, y + 8, ...; partial sums meet in shared memory, summed in y order
//   right: warp y owns row j = 8 blockIdx.x + y, its lanes split i = x, x + 32, ...;
//          a butterfly shuffle sums them
// so each column's reduction has one fixed order. in a batch, blockIdx.y is the matrix.

// per-column sums for the left layout: adds 8 partials per column in order;
// part: [which sums][OPTIM_ROWS][OPTIM_COLS] shared, `which` picks this sum's
// slice. returns the sum for this thread's column
__device__ __forceinline__ double column_sum_left(double x, double* part, int which) {
    part[(which * OPTIM_ROWS + threadIdx.y) * OPTIM_COLS + threadIdx.x] = x;
    __syncthreads();
    double s = 0.0;
    for (int y = 0; y < OPTIM_ROWS; y++) { s += part[(which * OPTIM_ROWS + y) * OPTIM_COLS + threadIdx.x]; }
    return s;
}

// step 4 and the start of step 5 fused, one pass over each column j of the moments
// (launched by lowrank_adam_in_subspace; on the CPU, that function and the first
// loops of lowrank_recovery_scaling):
//   M = b1 M + (1-b1) Gt ; V = b2 V + (1-b2) Gt^2 ; N = M / (sqrt(V) + eps)
// and with recovery scaling, the column's three squared norms:
//   phi_j = ||N_j|| / (||Gt_j|| + 1e-8)   and   norm2_j = ||Dres_j||^2
// where Dres = G - S Gt (m, n) is the residual (left: its column j, length p;
// right: its row j, length p). M, V, N, Gt: the moments' shape; phi (q,); norm2 (q,) double.
// with tiles > 0 (bf16 mode), Dres is not there: norm2_j is the sum of the
// residual's per-tile partial sums parts (tiles, q) (lowrank_residual_norms_kernel), in tile order
__global__ void __launch_bounds__(OPTIM_COLS * OPTIM_ROWS)
lowrank_adam_norms_kernel(PerMatrix<float> M_of, PerMatrix<float> V_of, PerMatrix<float> N_of,
                          PerMatrix<float> phi_of, PerMatrix<double> norm2_of, PerMatrix<const float> Gt_of,
                          PerMatrix<const float> Dres_of, PerMatrix<const double> parts_of, int tiles, int r, int p,
                          int q, int right, int recovery, float beta1, float beta2, float eps) {
    __shared__ double part[3 * OPTIM_ROWS * OPTIM_COLS];
    int e = blockIdx.y;
    float *M = M_of.at(e), *V = V_of.at(e), *N = N_of.at(e), *phi = phi_of.at(e);
    double* norm2 = norm2_of.at(e);
    const float *Gt = Gt_of.at(e), *Dres = Dres_of.at(e);
    const double* parts = parts_of.at(e);
    int lane = threadIdx.x, row = threadIdx.y;
    int j = right ? blockIdx.x * OPTIM_ROWS + row : blockIdx.x * OPTIM_COLS + lane;
    int first = right ? lane : row, stride = right ? OPTIM_COLS : OPTIM_ROWS;
    size_t along_r = right ? 1 : (size_t)q, along_q = right ? (size_t)r : 1;
    double nn = 0.0, gg = 0.0, dd = 0.0;
    if (j < q) {
        for (int i = first; i < r; i += stride) {
            size_t idx = i * along_r + j * along_q;
            float g = Gt[idx];
            float mi = beta1 * M[idx] + (1.0f - beta1) * g;
            float vi = beta2 * V[idx] + (1.0f - beta2) * g * g;
            float ni = mi / (sqrtf(vi) + eps);
            M[idx] = mi;
            V[idx] = vi;
            N[idx] = ni;
            nn += (double)ni * ni;
            gg += (double)g * g;
        }
        if (recovery && tiles > 0) {
            // the residual's partial sums of column j, tile t at t q + j
            for (int t = first; t < tiles; t += stride) { dd += parts[(size_t)t * q + j]; }
        } else if (recovery) {
            // residual column j (left: D[i, j], stride q = n) or row j (right: D[j, i], contiguous)
            for (int i = first; i < p; i += stride) {
                double d = Dres[right ? (size_t)j * p + i : (size_t)i * q + j];
                dd += d * d;
            }
        }
    }
    if (!recovery) { return; }  // block-uniform: no barrier below is skipped by part of the block
    if (right) {
        nn = optim_warp_sum(nn);
        gg = optim_warp_sum(gg);
        dd = optim_warp_sum(dd);
    } else {
        nn = column_sum_left(nn, part, 0);
        gg = column_sum_left(gg, part, 1);
        dd = column_sum_left(dd, part, 2);
    }
    if (j < q && (right ? lane == 0 : row == 0)) {
        phi[j] = (float)sqrt(nn) / ((float)sqrt(gg) + RECOVERY_PHI_EPS);
        norm2[j] = dd;
    }
}

// the norm-growth limiter (the rest of step 5, launched by lowrank_recovery_scaling),
// one block per matrix: ||Lambda||^2 = sum_j phi_j^2 ||Dres_j||^2,
// then the same decisions as the CPU on limiter = [prev, prev_set]; writes the
// factor Lambda is scaled by to *scale
__global__ void lowrank_limiter_kernel(PerMatrix<float> scale_of, PerMatrix<float> limiter_of,
                                       PerMatrix<const float> phi_of, PerMatrix<const double> norm2_of,
                                       int q, int use_limiter, float zeta) {
    __shared__ double buf[OPTIM_WARP + 1];
    int e = blockIdx.y;
    float *scale = scale_of.at(e), *limiter = limiter_of.at(e);
    const float* phi = phi_of.at(e);
    const double* norm2 = norm2_of.at(e);
    double acc = 0.0;
    for (int j = threadIdx.x; j < q; j += blockDim.x) { acc += (double)phi[j] * phi[j] * norm2[j]; }
    double lambda_norm = sqrt(optim_block_sum(acc, buf));
    if (threadIdx.x != 0) { return; }
    float s = 1.0f;
    if (use_limiter) {
        if (limiter[1] == 0.0f) {
            limiter[0] = (float)lambda_norm;
            limiter[1] = 1.0f;
        } else {
            double cap = (double)zeta * limiter[0];
            if (lambda_norm > cap) {
                s = (float)(cap / lambda_norm);
                limiter[0] = (float)cap;
            } else {
                limiter[0] = (float)lambda_norm;
            }
        }
    }
    *scale = s;
}

// step 6 for the recovery part, after W already took -lr c alpha S N (launched
// by lowrank_apply_update):
//   W -= lr c (Dres diag(phi scale)) ;  W -= lr wd W
// W, Dres: (m, n); phi (q,) scales columns (left) or rows (right). one
// element idx (the CPU twin: the last loop of lowrank_apply_update)
__device__ __forceinline__ float recovery_apply_element(float w, float d, size_t idx, const float* phi, float scale,
                                                        int n, int right, float step, float decay) {
    int j = right ? (int)(idx / n) : (int)(idx % n);
    float f = phi[j] * scale;
    float x = w - step * (d * f);
    return x - decay * x;
}

// 4 elements a thread (see aligned128_all)
__global__ void lowrank_recovery_apply_kernel(PerMatrix<float> W_of, PerMatrix<const float> Dres_of,
                                              PerMatrix<const float> phi_of, PerMatrix<const float> scale_of,
                                              int m, int n, int right, float step, float decay, int vec) {
    constexpr int P = Pack128<float>::size;
    size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P, mn = (size_t)m * n;
    if (idx >= mn) { return; }
    int e = blockIdx.y;
    float* W = W_of.at(e);
    const float *Dres = Dres_of.at(e), *phi = phi_of.at(e);
    float scale = *scale_of.at(e);
    if (vec && idx + P <= mn) {
        Pack128<float> w = load128(W + idx), d = load128(Dres + idx);
        for (int k = 0; k < P; k++) {
            w.x[k] = recovery_apply_element(w.x[k], d.x[k], idx + k, phi, scale, n, right, step, decay);
        }
        store128(W + idx, w);
    } else {
        for (size_t i = idx; i < idx + P && i < mn; i++) {
            W[i] = recovery_apply_element(W[i], Dres[i], i, phi, scale, n, right, step, decay);
        }
    }
}

// ---- bf16 mode: the projection, the residual's norms and the update as tiled
// tensor-core products (bf16 inputs by default, TF32 kept for the tests)
//
// with recovery scaling, today's unfused step passes over (m, n) five times
// after the projection: D = G, D -= S Gt, ||D_j||^2, W -= a S N, W -= f D.
// in bf16 mode two kernels do it in two passes, never forming D:
//   lowrank_residual_norms_kernel: parts[t][j] = sum over the rows i of tile t
//       of (G - S Gt)_ij^2 (left frame), from one tile of the product S Gt
//       held in shared memory: it reads G once;
//   lowrank_fused_update_kernel: W = (1 - wd lr) (W - lr c (S N' + G diag(f)))
//       with N' = alpha N - Gt diag(f), f = scale phi (lowrank_update_moments_kernel),
//       which is alpha S N + (G - S Gt) diag(f): step 6 with step 5's Lambda,
//       from one tile of S N': it reads G and W and writes W.
// a third, lowrank_project_kernel, is the projection Gt = S^T G itself (every
// method, every step), in place of cuBLAS: the same tiles, reduced over p.
// all in the left frame: element (i, j), i < p (rows of S), j < q. left: G,
// W (m, n) = (p, q) at i q + j, the moments (R, q) at k q + j; right: G, W (m,
// n) = (q, p) at j p + i, the moments (q, R) at j R + k. S (p, R) at i R + k.
// a block of LOWRANK_TILE_THREADS (4 warps) computes a LOWRANK_TILE x
// LOWRANK_TILE tile of a product, each warp a 32 x 32 quarter of 2 x 2 wmma
// tiles with fp32 accumulators. the reduction dimension goes through in
// chunks, each staged in shared memory already rounded to the tensor cores'
// input precision and zero-padded past p, q and R, so any shape and rank work:
// G and W are read once as fp32 from global memory and converted on the way,
// with no extra pass. the two precisions (LowRankTF32, LowRankBF16):
//   tf32: wmma 16x16x8, inputs rounded to nearest with 10 stored mantissa
//         bits (wmma::__float_to_tf32), u = 2^-11; 8x the fp32 rate, half bf16's;
//   bf16: wmma 16x16x16, inputs rounded to nearest even with 7 stored bits
//         (__float2bfloat16_rn), u = 2^-8; the full tensor-core rate.
// the bf16 chunk is 64 deep, the tf32 one 32: the same 18 KiB of shared memory.
// the staged chunks are laid out so the global loads are coalesced in both
// orientations (the moments chunk as (k, j) rows on the left, (j, k) rows on
// the right, read as a row- or column-major matrix_b). the finished tile goes
// to shared memory (over the chunks: the same bytes) with its rows along the
// contiguous dimension of G and W, so the epilogue's loads and stores are
// coalesced too
#include "lowrank_tiles.cuh"  // the 64 x 64 tile product of these kernels (also the ladder's)

// step 4's projection in bf16 mode (launched by lowrank_project), the cuBLAS
// product's twin: Gt = S^T G (left, (R, q)) or G S (right, (q, R)); in the
// left frame Gt_kj = sum_i S_ik G_ij. a block per 64 x 64 tile (k0.., j0..)
// of Gt, p in chunks, reduced in order within the block (no split of p, no
// atomics: the same bits every run). the chunk of S is staged as rows i,
// contiguous along k (a column-major matrix_a of S^T); the chunk of G as rows
// i along j (left) or rows j along i (right, a column-major matrix_b). blocks
// of one j0 are neighbours in launch order, so the R / 64 of them that read a
// slab of G find it in L2. grid (tiles of R, tiles of q, matrices)
template <typename P>
__global__ void __launch_bounds__(LOWRANK_TILE_THREADS)
lowrank_project_kernel(PerMatrix<float> Gt_of, PerMatrix<const float> G_of, PerMatrix<const float> S_of, int r,
                       int p, int q, int right) {
    typedef LowRankChunk<P> Ch;
    __shared__ __align__(32) float tile[LOWRANK_TILE_SMEM_FLOATS];
    int e = blockIdx.z;
    float* Gt = Gt_of.at(e);
    const float *G = G_of.at(e), *S = S_of.at(e);
    int k0 = blockIdx.x * LOWRANK_TILE, j0 = blockIdx.y * LOWRANK_TILE;
    typename P::staged* As = reinterpret_cast<typename P::staged*>(tile);
    typename P::staged* Bs = As + Ch::PART;
    int tid = threadIdx.x, warp = tid / OPTIM_WARP;
    int wk = (warp / 2) * 32, wj = (warp % 2) * 32;  // this warp's quarter
    wmma::fragment<wmma::accumulator, 16, 16, P::K, float> acc[2][2];
    #pragma unroll
    for (int a = 0; a < 2; a++) {
        #pragma unroll
        for (int b = 0; b < 2; b++) { wmma::fill_fragment(acc[a][b], 0.0f); }
    }
    for (int i0 = 0; i0 < p; i0 += P::CHUNK) {
        // stage S (i0.., k0..) as rows ii, and G's (i0.., j0..) at P's precision, zeros outside
        for (int x = tid; x < LOWRANK_TILE * P::CHUNK; x += LOWRANK_TILE_THREADS) {
            int ii = x / LOWRANK_TILE, kk = x % LOWRANK_TILE;
            int i = i0 + ii, k = k0 + kk;
            float s = i < p && k < r ? S[(size_t)i * r + k] : 0.0f;
            As[ii * Ch::LD_WIDE + kk] = P::convert(s);
        }
        for (int x = tid; x < LOWRANK_TILE * P::CHUNK; x += LOWRANK_TILE_THREADS) {
            if (!right) {   // G (p, q): rows i, contiguous along j
                int ii = x / LOWRANK_TILE, jj = x % LOWRANK_TILE;
                int i = i0 + ii, j = j0 + jj;
                float g = i < p && j < q ? G[(size_t)i * q + j] : 0.0f;
                Bs[ii * Ch::LD_WIDE + jj] = P::convert(g);
            } else {        // G (q, p): rows j, contiguous along i
                int jj = x / P::CHUNK, ii = x % P::CHUNK;
                int i = i0 + ii, j = j0 + jj;
                float g = i < p && j < q ? G[(size_t)j * p + i] : 0.0f;
                Bs[jj * Ch::LD_DEEP + ii] = P::convert(g);
            }
        }
        __syncthreads();
        if (!right) {
            lowrank_chunk_mma<P, true, false>(acc, As, Ch::LD_WIDE, Bs, Ch::LD_WIDE, wk, wj);
        } else {
            lowrank_chunk_mma<P, true, true>(acc, As, Ch::LD_WIDE, Bs, Ch::LD_DEEP, wk, wj);
        }
        __syncthreads();
    }
    // the tile with rows along Gt's contiguous dimension: left (k, j) rows k, right rows j
    if (!right) {
        lowrank_tile_store<P, false>(tile, acc, wk, wj);
    } else {
        lowrank_tile_store<P, true>(tile, acc, wk, wj);
    }
    for (int x = tid; x < LOWRANK_TILE * LOWRANK_TILE; x += LOWRANK_TILE_THREADS) {
        int outer = x / LOWRANK_TILE, inner = x % LOWRANK_TILE;
        int k = k0 + (right ? inner : outer), j = j0 + (right ? outer : inner);
        if (k < r && j < q) { Gt[right ? (size_t)j * r + k : (size_t)k * q + j] = tile[outer * LOWRANK_TILE_LDC + inner]; }
    }
}

// step 5's residual norms in bf16 mode (launched by lowrank_residual_norms):
//   parts[t * q + j] = sum over i in [64 t, 64 t + 64) of (G - S Gt)_ij^2   (left frame)
// in double, rows summed in order; lowrank_adam_norms_kernel adds the tiles
// of each column in order. grid (tiles of p, tiles of q, matrices)
template <typename P>
__global__ void __launch_bounds__(LOWRANK_TILE_THREADS)
lowrank_residual_norms_kernel(PerMatrix<double> parts_of, PerMatrix<const float> G_of, PerMatrix<const float> S_of,
                              PerMatrix<const float> Gt_of, int r, int p, int q, int right) {
    __shared__ __align__(32) float tile[LOWRANK_TILE_SMEM_FLOATS];
    int e = blockIdx.z;
    double* parts = parts_of.at(e);
    const float *G = G_of.at(e), *S = S_of.at(e), *Gt = Gt_of.at(e);
    int i0 = blockIdx.x * LOWRANK_TILE, j0 = blockIdx.y * LOWRANK_TILE;
    lowrank_tile_product<P>(tile, S, Gt, r, p, q, right, i0, j0);
    // the residual in place of the product, walking G along its contiguous dimension
    for (int x = threadIdx.x; x < LOWRANK_TILE * LOWRANK_TILE; x += LOWRANK_TILE_THREADS) {
        int outer = x / LOWRANK_TILE, inner = x % LOWRANK_TILE;
        int i = i0 + (right ? inner : outer), j = j0 + (right ? outer : inner);
        float* c = &tile[outer * LOWRANK_TILE_LDC + inner];
        float d = 0.0f;
        if (i < p && j < q) { d = G[right ? (size_t)j * p + i : (size_t)i * q + j] - *c; }
        *c = d;
    }
    __syncthreads();
    int jj = threadIdx.x, j = j0 + jj;
    if (jj < LOWRANK_TILE && j < q) {
        double s = 0.0;
        for (int ii = 0; ii < LOWRANK_TILE; ii++) {
            double d = tile[right ? jj * LOWRANK_TILE_LDC + ii : ii * LOWRANK_TILE_LDC + jj];
            s += d * d;
        }
        parts[(size_t)blockIdx.x * q + j] = s;
    }
}

// N' = alpha N - Gt diag(f), f_j = scale phi_j, over the moments' shape
// (launched by lowrank_fused_update, after the limiter wrote scale). one
// element idx; no CPU twin of its own (the CPU forms Lambda instead: see
// lowrank_fused_update)
__device__ __forceinline__ float update_moment_element(float nv, float gt, size_t idx, const float* phi, float scale,
                                                       int r, int q, int right, float alpha) {
    int j = right ? (int)(idx / r) : (int)(idx % q);
    float f = phi[j] * scale;
    return alpha * nv - f * gt;
}

// 4 elements a thread (see aligned128_all)
__global__ void lowrank_update_moments_kernel(PerMatrix<float> N_of, PerMatrix<const float> Gt_of,
                                              PerMatrix<const float> phi_of, PerMatrix<const float> scale_of,
                                              int r, int q, int right, float alpha, int vec) {
    constexpr int P = Pack128<float>::size;
    size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P, rq = (size_t)r * q;
    if (idx >= rq) { return; }
    int e = blockIdx.y;
    float* N = N_of.at(e);
    const float *Gt = Gt_of.at(e), *phi = phi_of.at(e);
    float scale = *scale_of.at(e);
    if (vec && idx + P <= rq) {
        Pack128<float> nv = load128(N + idx), g = load128(Gt + idx);
        for (int k = 0; k < P; k++) {
            nv.x[k] = update_moment_element(nv.x[k], g.x[k], idx + k, phi, scale, r, q, right, alpha);
        }
        store128(N + idx, nv);
    } else {
        for (size_t i = idx; i < idx + P && i < rq; i++) {
            N[i] = update_moment_element(N[i], Gt[i], i, phi, scale, r, q, right, alpha);
        }
    }
}

// step 6 with step 5's Lambda in bf16 mode (launched by lowrank_fused_update):
//   w = W - step (S N' + f_j G)_ij ;  W = w - decay w
// with N' from lowrank_update_moments_kernel. grid (tiles of p, tiles of q, matrices)
template <typename P>
__global__ void __launch_bounds__(LOWRANK_TILE_THREADS)
lowrank_fused_update_kernel(PerMatrix<float> W_of, PerMatrix<const float> G_of, PerMatrix<const float> S_of,
                            PerMatrix<const float> Nf_of, PerMatrix<const float> phi_of,
                            PerMatrix<const float> scale_of, int r, int p, int q, int right, float step,
                            float decay) {
    __shared__ __align__(32) float tile[LOWRANK_TILE_SMEM_FLOATS];
    int e = blockIdx.z;
    float* W = W_of.at(e);
    const float *G = G_of.at(e), *S = S_of.at(e), *Nf = Nf_of.at(e), *phi = phi_of.at(e);
    float scale = *scale_of.at(e);
    int i0 = blockIdx.x * LOWRANK_TILE, j0 = blockIdx.y * LOWRANK_TILE;
    lowrank_tile_product<P>(tile, S, Nf, r, p, q, right, i0, j0);
    for (int x = threadIdx.x; x < LOWRANK_TILE * LOWRANK_TILE; x += LOWRANK_TILE_THREADS) {
        int outer = x / LOWRANK_TILE, inner = x % LOWRANK_TILE;
        int i = i0 + (right ? inner : outer), j = j0 + (right ? outer : inner);
        if (i >= p || j >= q) { continue; }
        size_t idx = right ? (size_t)j * p + i : (size_t)i * q + j;
        float f = phi[j] * scale;
        float w = W[idx] - step * (tile[outer * LOWRANK_TILE_LDC + inner] + f * G[idx]);
        W[idx] = w - decay * w;
    }
}

// W -= lr wd W, (numel,); 4 elements a thread (see aligned128_all). the
// same expression as adamw_element's and recovery_apply_element's decay
__device__ __forceinline__ float decayed(float w, float decay) { return w - decay * w; }

__global__ void weight_decay_kernel(PerMatrix<float> W_of, size_t numel, float decay, int vec) {
    constexpr int P = Pack128<float>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    float* W = W_of.at(blockIdx.y);
    if (i >= numel) { return; }
    if (vec && i + P <= numel) {
        Pack128<float> w = load128(W + i);
        for (int k = 0; k < P; k++) { w.x[k] = decayed(w.x[k], decay); }
        store128(W + i, w);
    } else {
        for (int k = 0; k < P && i + k < numel; k++) { W[i + k] = decayed(W[i + k], decay); }
    }
}

// dst = src, or 0 with src NULL, (numel,): a batch's copies and zeroings as one
// launch (one matrix's go through cudaMemcpyAsync / cudaMemsetAsync); 4
// elements a thread (see aligned128_all)
__global__ void copy_kernel(PerMatrix<float> dst_of, PerMatrix<const float> src_of, size_t numel, int vec) {
    constexpr int P = Pack128<float>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    int e = blockIdx.y;
    float* dst = dst_of.at(e);
    const float* src = src_of.at(e);
    if (i >= numel) { return; }
    if (vec && i + P <= numel) {
        Pack128<float> v = {};
        if (src != NULL) { v = load128(src + i); }
        store128(dst + i, v);
    } else {
        for (int k = 0; k < P && i + k < numel; k++) { dst[i + k] = src != NULL ? src[i + k] : 0.0f; }
    }
}

// ---- --master_weights 0: the updated weights rounded to bf16 stochastically
// (bf16_stochastic_value: the CPU's own integer functions, with the bits of
// the element's index in the parameter buffer, offset + i, whichever path
// moves it); 4 floats a thread in place, 8 elements where bf16 meets fp32
// (see aligned128_all)

__global__ void bf16_round_stochastic_kernel(float* x, size_t n, uint64_t seed, uint64_t step, uint64_t offset,
                                             int vec) {
    constexpr int P = Pack128<float>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= n) { return; }
    if (vec && i + P <= n) {
        Pack128<float> v = load128(x + i);
        for (int k = 0; k < P; k++) { v.x[k] = bf16_stochastic_value(v.x[k], seed, step, offset + i + k); }
        store128(x + i, v);
    } else {
        for (int k = 0; k < P && i + k < n; k++) { x[i + k] = bf16_stochastic_value(x[i + k], seed, step, offset + i + k); }
    }
}

__global__ void bf16_store_stochastic_kernel(bf16* out, const float* x, size_t n, uint64_t seed, uint64_t step,
                                             uint64_t offset, int vec) {
    constexpr int P = Pack128<bf16>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= n) { return; }
    if (vec && i + P <= n) {
        float f[P];
        Pack128<bf16> o;
        load128_floats<bf16>(f, x + i);
        for (int k = 0; k < P; k++) { o.x[k] = __float2bfloat16(bf16_stochastic_value(f[k], seed, step, offset + i + k)); }
        store128(out + i, o);
    } else {
        for (int k = 0; k < P && i + k < n; k++) {
            out[i + k] = __float2bfloat16(bf16_stochastic_value(x[i + k], seed, step, offset + i + k));
        }
    }
}

__global__ void bf16_widen_kernel(float* out, const bf16* x, size_t n, int vec) {
    constexpr int P = Pack128<bf16>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= n) { return; }
    if (vec && i + P <= n) {
        Pack128<bf16> v = load128(x + i);
        float f[P];
        for (int k = 0; k < P; k++) { f[k] = __bfloat162float(v.x[k]); }
        store128_floats<bf16>(out + i, f);
    } else {
        for (int k = 0; k < P && i + k < n; k++) { out[i + k] = __bfloat162float(x[i + k]); }
    }
}

// the CPU's twin: x (n) in place; offset is x's index in the parameter buffer
void bf16_round_stochastic_array(float* x, size_t n, uint64_t seed, uint64_t step, uint64_t offset) {
    if (n == 0) { return; }
    bf16_round_stochastic_kernel<<<optim_blocks(n, OPTIM_BLOCK * Pack128<float>::size), OPTIM_BLOCK>>>(
        x, n, seed, step, offset, aligned128(x));
    cudaCheck(cudaGetLastError());
}

// out (n) bf16 = x (n) fp32 rounded stochastically, as above
void bf16_store_stochastic_array(bf16* out, const float* x, size_t n, uint64_t seed, uint64_t step, uint64_t offset) {
    if (n == 0) { return; }
    bf16_store_stochastic_kernel<<<optim_blocks(n, OPTIM_BLOCK * Pack128<bf16>::size), OPTIM_BLOCK>>>(
        out, x, n, seed, step, offset, aligned128_all(out, x));
    cudaCheck(cudaGetLastError());
}

void bf16_widen_array(float* out, const bf16* x, size_t n) {
    if (n == 0) { return; }
    bf16_widen_kernel<<<optim_blocks(n, OPTIM_BLOCK * Pack128<bf16>::size), OPTIM_BLOCK>>>(out, x, n,
                                                                                         aligned128_all(out, x));
    cudaCheck(cudaGetLastError());
}

// ---- 8-bit optimizer states: the CPU's blockwise quantization, one CUDA
// block per quantization block. absmax is the largest bit pattern of |x|
// (order-free, so the parallel reduction gives the CPU's bits), and each
// code is the CPU's own cpu::quant8_code, on the map copied to shared memory

#define QUANT8_THREADS 256

__global__ void __launch_bounds__(QUANT8_THREADS)
quantize_blockwise_kernel(uint8_t* codes, float* absmax, const float* x, size_t n, const float* map, size_t block) {
    __shared__ float smap[QUANT8_MAP_SIZE];
    __shared__ uint32_t smax[QUANT8_THREADS / WARP_SIZE];
    size_t start = (size_t)blockIdx.x * block;
    size_t end = start + block < n ? start + block : n;
    for (int i = threadIdx.x; i < QUANT8_MAP_SIZE; i += blockDim.x) { smap[i] = map[i]; }
    uint32_t mbits = 0;
    for (size_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        uint32_t a = cpu::fp32_to_bits(x[i]) & 0x7FFFFFFFu;
        mbits = a > mbits ? a : mbits;
    }
    for (int off = WARP_SIZE / 2; off > 0; off /= 2) {
        uint32_t other = __shfl_down_sync(0xffffffffu, mbits, off);
        mbits = other > mbits ? other : mbits;
    }
    if (threadIdx.x % WARP_SIZE == 0) { smax[threadIdx.x / WARP_SIZE] = mbits; }
    __syncthreads();
    mbits = 0;
    for (int w = 0; w < QUANT8_THREADS / WARP_SIZE; w++) { mbits = smax[w] > mbits ? smax[w] : mbits; }
    float m = cpu::fp32_from_bits(mbits);
    if (threadIdx.x == 0) { absmax[blockIdx.x] = m; }
    for (size_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        codes[i] = m == 0.0f ? 0 : cpu::quant8_code(smap, x[i], m);
    }
}

__global__ void dequantize_blockwise_kernel(float* x, const uint8_t* codes, const float* absmax, size_t n,
                                            const float* map, size_t block) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { x[i] = map[codes[i]] * absmax[i / block]; }
}

// the CPU's twins: codes (n), absmax (ceil(n / block)), x (n), map (256), all device memory
void quantize_blockwise_sized(uint8_t* codes, float* absmax, const float* x, size_t n, const float* map,
                              size_t block) {
    if (n == 0) { return; }
    unsigned blocks = (unsigned)(n / block + (n % block != 0));
    quantize_blockwise_kernel<<<blocks, QUANT8_THREADS>>>(codes, absmax, x, n, map, block);
    cudaCheck(cudaGetLastError());
}

void quantize_blockwise(uint8_t* codes, float* absmax, const float* x, size_t n, const float* map) {
    quantize_blockwise_sized(codes, absmax, x, n, map, QUANT8_BLOCK);
}

void dequantize_blockwise_sized(float* x, const uint8_t* codes, const float* absmax, size_t n, const float* map,
                                size_t block) {
    if (n == 0) { return; }
    dequantize_blockwise_kernel<<<optim_blocks(n, OPTIM_BLOCK), OPTIM_BLOCK>>>(x, codes, absmax, n, map, block);
    cudaCheck(cudaGetLastError());
}

void dequantize_blockwise(float* x, const uint8_t* codes, const float* absmax, size_t n, const float* map) {
    dequantize_blockwise_sized(x, codes, absmax, n, map, QUANT8_BLOCK);
}

// ---- --optimizer adam8bit: the CPU's adam8bit_update and adam8bit_update_q8 on device

__global__ void adam8bit_kernel(float* W, float* M, float* V, const float* G, size_t n, cpu::Adam8bitStep c) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { W[i] = cpu::adam8bit_element(W[i], M + i, V + i, G[i], &c); }
}

void adam8bit_update(float* W, float* M, float* V, const float* G, size_t n, int t, float lr, float beta1,
                     float beta2, float eps, float weight_decay) {
    if (n == 0) { return; }
    cpu::Adam8bitStep c = cpu::adam8bit_constants(t, lr, beta1, beta2, eps, weight_decay);
    adam8bit_kernel<<<optim_blocks(n, OPTIM_BLOCK), OPTIM_BLOCK>>>(W, M, V, G, n, c);
    cudaCheck(cudaGetLastError());
}

// maps: device (2, 256), signed then unsigned; scratch: device (2 chunk)
void adam8bit_update_q8(float* W, uint8_t* codes_m, float* absmax_m, uint8_t* codes_v, float* absmax_v,
                        const float* G, size_t n, int t, float lr, float beta1, float beta2, float eps,
                        float weight_decay, const float* maps, float* scratch, size_t chunk) {
    float* Mq = scratch;
    float* Vq = scratch + chunk;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk, b = off / ADAM8BIT_BLOCK;
        dequantize_blockwise_sized(Mq, codes_m + off, absmax_m + b, len, maps, ADAM8BIT_BLOCK);
        dequantize_blockwise_sized(Vq, codes_v + off, absmax_v + b, len, maps + QUANT8_MAP_SIZE, ADAM8BIT_BLOCK);
        adam8bit_update(W + off, Mq, Vq, G + off, len, t, lr, beta1, beta2, eps, weight_decay);
        quantize_blockwise_sized(codes_m + off, absmax_m + b, Mq, len, maps, ADAM8BIT_BLOCK);
        quantize_blockwise_sized(codes_v + off, absmax_v + b, Vq, len, maps + QUANT8_MAP_SIZE, ADAM8BIT_BLOCK);
    }
}

// ---- SubTrack++: the geodesic step's small kernels
//
// each X_kernel here is launched by a host function X below, the twin of the
// CPU piece X of subtrack_track_subspace. in a batch, blockIdx.y is the matrix.
//
// the CPU's TrackScalars, kept on the device: the tracking kernels pass them to
// each other so that the host never waits. where the CPU returns early, a
// kernel that finds dF == 0 (or u lost in span(S)) sets skip, and every later
// kernel of the step returns at once. the same fields in a type of its own: with
// cpu::TrackScalars, argument-dependent lookup would find the CPU piece of the
// same name as each launcher below, and the calls would be ambiguous
typedef struct {
    int iterations;     // power iterations taken; 0 if dF == 0
    int skip;           // 1: S stays, the step ends
    double sigma;       // top singular value of dF
    double unorm;       // ||u|| after re-orthogonalisation
    double cs, sn;      // cos, sin of eta sigma
} TrackScalars;

// top eigenvector of H = dF^T dF (R, R) by power iteration in double, started
// from the CPU's dense w (cpu::power_start_entry, the same function; why dense
// and not a unit vector: see there), normalised. one block of 32 R threads (at
// most 1024; a multiple of 32) per matrix; v (R,) double out. dynamic shared
// memory: 2 R doubles. it starts the step's TrackScalars: every field is written
// here or, when skip stays 0, by a later kernel before it is read
__global__ void power_iteration_kernel(PerMatrix<double> v_of, PerMatrix<TrackScalars> ts_of,
                                       PerMatrix<const float> H_of, int r) {
    extern __shared__ double power_shared[];
    __shared__ double buf[OPTIM_WARP + 1];
    int e = blockIdx.y;
    double* v_out = v_of.at(e);
    TrackScalars* ts = ts_of.at(e);
    const float* H = H_of.at(e);
    double* v = power_shared;           // (R,)
    double* v_next = power_shared + r;  // (R,)
    int lane = threadIdx.x % OPTIM_WARP, warp = threadIdx.x / OPTIM_WARP;
    int num_warps = blockDim.x / OPTIM_WARP;
    // H == 0 (dF == 0) unless some diagonal entry is positive (H is PSD), as the CPU
    // tests with its max; a count needs no argmax, and NaN counts as not positive there too
    double positive = 0.0;
    for (int j = threadIdx.x; j < r; j += blockDim.x) { positive += H[(size_t)j * r + j] > 0.0f ? 1.0 : 0.0; }
    if (!(optim_block_sum(positive, buf) > 0.0)) {
        if (threadIdx.x == 0) { *ts = {0, 1, 0.0, 0.0, 0.0, 0.0}; }
        return;  // block-uniform
    }
    double start2 = 0.0;
    for (int i = threadIdx.x; i < r; i += blockDim.x) {
        v[i] = cpu::power_start_entry(i);
        start2 += v[i] * v[i];
    }
    double start_inv = 1.0 / sqrt(optim_block_sum(start2, buf));  // its __syncthreads also publishes v
    for (int i = threadIdx.x; i < r; i += blockDim.x) { v[i] *= start_inv; }
    __syncthreads();
    int it = 0;
    int stopped = 0;
    while (it < POWER_ITER_MAX) {
        it++;
        // v_next = H v: one warp per row, lanes along the row (coalesced)
        for (int i = warp; i < r; i += num_warps) {
            const float* Hi = H + (size_t)i * r;
            double s = 0.0;
            for (int k = lane; k < r; k += OPTIM_WARP) { s += (double)Hi[k] * v[k]; }
            s = optim_warp_sum(s);
            if (lane == 0) { v_next[i] = s; }
        }
        __syncthreads();
        double part = 0.0;
        for (int i = threadIdx.x; i < r; i += blockDim.x) { part += v_next[i] * v_next[i]; }
        double norm2 = optim_block_sum(part, buf);
        if (!(norm2 > 0.0)) { stopped = 1; break; }
        double inv = 1.0 / sqrt(norm2);
        part = 0.0;
        for (int i = threadIdx.x; i < r; i += blockDim.x) {
            double x = v_next[i] * inv;
            part += (x - v[i]) * (x - v[i]);
        }
        double change2 = optim_block_sum(part, buf);
        for (int i = threadIdx.x; i < r; i += blockDim.x) { v[i] = v_next[i] * inv; }
        __syncthreads();
        if (change2 < POWER_ITER_TOL * POWER_ITER_TOL) { break; }
    }
    for (int i = threadIdx.x; i < r; i += blockDim.x) { v_out[i] = v[i]; }
    if (threadIdx.x == 0) { *ts = {stopped ? 0 : it, stopped, 0.0, 0.0, 0.0, 0.0}; }
}

// u = dF v (p,) double: one warp per row of dF (p, R)
__global__ void track_u_kernel(PerMatrix<double> u_of, PerMatrix<const float> dF_of, PerMatrix<const double> v_of,
                               PerMatrix<const TrackScalars> ts_of, int p, int r) {
    int e = blockIdx.y;
    const TrackScalars* ts = ts_of.at(e);
    if (ts->skip) { return; }
    double* u = u_of.at(e);
    const float* dF = dF_of.at(e);
    const double* v = v_of.at(e);
    int lane = threadIdx.x % OPTIM_WARP;
    int i = blockIdx.x * (blockDim.x / OPTIM_WARP) + threadIdx.x / OPTIM_WARP;
    if (i >= p) { return; }  // whole warps leave together
    double s = 0.0;
    for (int k = lane; k < r; k += OPTIM_WARP) { s += (double)dF[(size_t)i * r + k] * v[k]; }
    s = optim_warp_sum(s);
    if (lane == 0) { u[i] = s; }
}

// sigma = ||u||, one block per matrix. sigma == 0 ends the step
__global__ void track_sigma_kernel(PerMatrix<TrackScalars> ts_of, PerMatrix<const double> u_of, int p) {
    __shared__ double buf[OPTIM_WARP + 1];
    TrackScalars* ts = ts_of.at(blockIdx.y);
    if (ts->skip) { return; }
    const double* u = u_of.at(blockIdx.y);
    double part = 0.0;
    for (int i = threadIdx.x; i < p; i += blockDim.x) { part += u[i] * u[i]; }
    double sigma = sqrt(optim_block_sum(part, buf));
    if (threadIdx.x == 0) {
        ts->sigma = sigma;
        if (sigma == 0.0) { ts->skip = 1; }
    }
}

// y = S^T (u / sigma) (R,): column sums of S (p, R), in the left-layout pattern
// (lane = column k, warps split the rows)
__global__ void __launch_bounds__(OPTIM_COLS * OPTIM_ROWS)
track_project_u_kernel(PerMatrix<double> y_of, PerMatrix<const float> S_of, PerMatrix<const double> u_of,
                       PerMatrix<const TrackScalars> ts_of, int p, int r) {
    __shared__ double part[OPTIM_ROWS * OPTIM_COLS];
    int e = blockIdx.y;
    const TrackScalars* ts = ts_of.at(e);
    if (ts->skip) { return; }
    double* y = y_of.at(e);
    const float* S = S_of.at(e);
    const double* u = u_of.at(e);
    int k = blockIdx.x * OPTIM_COLS + threadIdx.x;
    double sigma = ts->sigma;
    double s = 0.0;
    if (k < r) {
        for (int i = threadIdx.y; i < p; i += OPTIM_ROWS) { s += (double)S[(size_t)i * r + k] * (u[i] / sigma); }
    }
    s = column_sum_left(s, part, 0);
    if (k < r && threadIdx.y == 0) { y[k] = s; }
}

// u <- u / sigma - S y: u made exactly orthogonal to span(S). one warp per row
__global__ void track_orthogonalize_u_kernel(PerMatrix<double> u_of, PerMatrix<const float> S_of,
                                             PerMatrix<const double> y_of, PerMatrix<const TrackScalars> ts_of,
                                             int p, int r) {
    int e = blockIdx.y;
    const TrackScalars* ts = ts_of.at(e);
    if (ts->skip) { return; }
    double* u = u_of.at(e);
    const float* S = S_of.at(e);
    const double* y = y_of.at(e);
    int lane = threadIdx.x % OPTIM_WARP;
    int i = blockIdx.x * (blockDim.x / OPTIM_WARP) + threadIdx.x / OPTIM_WARP;
    if (i >= p) { return; }
    double s = 0.0;
    for (int k = lane; k < r; k += OPTIM_WARP) { s += (double)S[(size_t)i * r + k] * y[k]; }
    s = optim_warp_sum(s);
    if (lane == 0) { u[i] = u[i] / ts->sigma - s; }
}

// ||u||; a u that lost more than half its norm was rounding noise inside span(S):
// no step. otherwise cos and sin of eta sigma for the geodesic
__global__ void track_angle_kernel(PerMatrix<TrackScalars> ts_of, PerMatrix<const double> u_of, int p, float eta) {
    __shared__ double buf[OPTIM_WARP + 1];
    TrackScalars* ts = ts_of.at(blockIdx.y);
    if (ts->skip) { return; }
    const double* u = u_of.at(blockIdx.y);
    double part = 0.0;
    for (int i = threadIdx.x; i < p; i += blockDim.x) { part += u[i] * u[i]; }
    double unorm = sqrt(optim_block_sum(part, buf));
    if (threadIdx.x != 0) { return; }
    if (!(unorm >= REORTH_MIN_NORM)) {
        ts->skip = 1;
        return;
    }
    double theta = (double)eta * ts->sigma;
    ts->unorm = unorm;
    ts->cs = cos(theta);
    ts->sn = sin(theta);
}

// the geodesic step, one warp per row i of S (p, R):
//   a_i = (cos - 1) (S v)_i - sin u_i / ||u||,   S[i, :] += a_i v^T
__global__ void track_geodesic_kernel(PerMatrix<float> S_of, PerMatrix<float> a_of, PerMatrix<const double> v_of,
                                      PerMatrix<const double> u_of, PerMatrix<const TrackScalars> ts_of, int p, int r) {
    int e = blockIdx.y;
    const TrackScalars* ts = ts_of.at(e);
    if (ts->skip) { return; }
    float *S = S_of.at(e), *a = a_of.at(e);
    const double *v = v_of.at(e), *u = u_of.at(e);
    int lane = threadIdx.x % OPTIM_WARP;
    int i = blockIdx.x * (blockDim.x / OPTIM_WARP) + threadIdx.x / OPTIM_WARP;
    if (i >= p) { return; }
    float* Si = S + (size_t)i * r;
    double sv = 0.0;
    for (int k = lane; k < r; k += OPTIM_WARP) { sv += (double)Si[k] * v[k]; }
    sv = optim_warp_sum(sv);  // every lane has read its entries of the old row before any writes
    float ai = (float)((ts->cs - 1.0) * sv - ts->sn * u[i] / ts->unorm);
    for (int k = lane; k < r; k += OPTIM_WARP) { Si[k] += ai * (float)v[k]; }
    if (lane == 0) { a[i] = ai; }
}

// the projection with the new S, from the old one by a rank-1 correction:
//   left:  Gt (R, q) += v (a^T G), column j: (a^T G)_j = sum_i a_i G[i, j] (left-layout pattern)
//   right: Gt (q, R) += (G a) v^T, row j: (G a)_j = sum_i G[j, i] a_i (one warp per row)
__global__ void __launch_bounds__(OPTIM_COLS * OPTIM_ROWS)
track_update_projection_kernel(PerMatrix<float> Gt_of, PerMatrix<const float> G_of, PerMatrix<const float> a_of,
                               PerMatrix<const double> v_of, PerMatrix<const TrackScalars> ts_of,
                               int r, int p, int q, int right) {
    __shared__ double part[OPTIM_ROWS * OPTIM_COLS];
    int e = blockIdx.y;
    const TrackScalars* ts = ts_of.at(e);
    if (ts->skip) { return; }
    float* Gt = Gt_of.at(e);
    const float *G = G_of.at(e), *a = a_of.at(e);
    const double* v = v_of.at(e);
    int lane = threadIdx.x, row = threadIdx.y;
    int j = right ? blockIdx.x * OPTIM_ROWS + row : blockIdx.x * OPTIM_COLS + lane;
    int first = right ? lane : row, stride = right ? OPTIM_COLS : OPTIM_ROWS;
    double s = 0.0;
    if (j < q) {
        for (int i = first; i < p; i += stride) {
            float g = right ? G[(size_t)j * p + i] : G[(size_t)i * q + j];
            s += (double)a[i] * g;
        }
    }
    s = right ? optim_warp_sum(s) : column_sum_left(s, part, 0);
    if (j >= q) { return; }
    float aG = (float)s;
    for (int i = first; i < r; i += stride) {
        size_t idx = right ? (size_t)j * r + i : (size_t)i * q + j;
        Gt[idx] += aG * (float)v[i];
    }
}

// step 3, rank-1 form: C = I - c v v^T, one column j of the moments per lane/warp
//   M_rot = M - c v (v^T M) ;  V_rot = |(C o C)(V - M o M) + M_rot o M_rot|
//   (C o C) X = X - 2c diag(v o v) X + c^2 (v o v) ((v o v)^T X)
__global__ void __launch_bounds__(OPTIM_COLS * OPTIM_ROWS)
moments_rotate_rank1_kernel(PerMatrix<float> M_of, PerMatrix<float> V_of, PerMatrix<const double> v_of,
                            PerMatrix<const TrackScalars> ts_of, int r, int q, int right) {
    __shared__ double part[2 * OPTIM_ROWS * OPTIM_COLS];
    int e = blockIdx.y;
    const TrackScalars* ts = ts_of.at(e);
    if (ts->skip) { return; }
    float *M = M_of.at(e), *V = V_of.at(e);
    const double* v = v_of.at(e);
    double c = 1.0 - ts->cs;
    int lane = threadIdx.x, row = threadIdx.y;
    int j = right ? blockIdx.x * OPTIM_ROWS + row : blockIdx.x * OPTIM_COLS + lane;
    int first = right ? lane : row, stride = right ? OPTIM_COLS : OPTIM_ROWS;
    size_t along_r = right ? 1 : (size_t)q, along_q = right ? (size_t)r : 1;
    double vm = 0.0, vx = 0.0;
    if (j < q) {
        for (int i = first; i < r; i += stride) {
            size_t idx = i * along_r + j * along_q;
            double mij = M[idx];
            vm += v[i] * mij;
            vx += v[i] * v[i] * (V[idx] - mij * mij);
        }
    }
    if (right) {
        vm = optim_warp_sum(vm);
        vx = optim_warp_sum(vx);
    } else {
        vm = column_sum_left(vm, part, 0);
        vx = column_sum_left(vx, part, 1);
    }
    if (j >= q) { return; }
    for (int i = first; i < r; i += stride) {
        size_t idx = i * along_r + j * along_q;
        double vv = v[i] * v[i];
        double mij = M[idx];
        double x = V[idx] - mij * mij;
        double cx = x - 2.0 * c * vv * x + c * c * vv * vx;
        double mrot = mij - c * v[i] * vm;
        M[idx] = (float)mrot;
        V[idx] = (float)fabs(cx + mrot * mrot);
    }
}

// ---- the SVD (GaLore, and every method's first step)

// K (p, p) = X X^T in double, X = op(G) (p, q): X = G (left) or G^T (right), G (m, n).
// 32x32 output tiles, only those on or below the diagonal are computed, each
// written to both triangles; every entry is a plain in-order sum over q. a
// batch: blockIdx.z is the matrix, its K at K + z k_stride
__global__ void __launch_bounds__(GRAM_TILE * OPTIM_ROWS)
gram_double_kernel(double* K, size_t k_stride, PerMatrix<const float> G_of, int n, int right, int p, int q) {
    __shared__ double tile_a[GRAM_TILE][GRAM_TILE + 1];   // rows a0.., columns k0..
    __shared__ double tile_b[GRAM_TILE][GRAM_TILE + 1];   // rows b0.., columns k0..
    const float* G = G_of.at(blockIdx.z);
    K += blockIdx.z * k_stride;
    int a0 = blockIdx.y * GRAM_TILE, b0 = blockIdx.x * GRAM_TILE;
    if (b0 > a0) { return; }  // upper tiles come from the mirror; block-uniform
    int tx = threadIdx.x, ty = threadIdx.y;
    double acc[GRAM_TILE / OPTIM_ROWS];
    for (int e = 0; e < GRAM_TILE / OPTIM_ROWS; e++) { acc[e] = 0.0; }
    for (int k0 = 0; k0 < q; k0 += GRAM_TILE) {
        // X[a, k] is G[a, k] (left, row stride n) or G[k, a] (right); lanes walk G's contiguous index
        for (int e = ty; e < GRAM_TILE; e += OPTIM_ROWS) {
            int row_a = a0 + (right ? tx : e), row_b = b0 + (right ? tx : e), k = k0 + (right ? e : tx);
            double xa = 0.0, xb = 0.0;
            if (k < q && row_a < p) { xa = right ? G[(size_t)k * n + row_a] : G[(size_t)row_a * n + k]; }
            if (k < q && row_b < p) { xb = right ? G[(size_t)k * n + row_b] : G[(size_t)row_b * n + k]; }
            if (right) {
                tile_a[tx][e] = xa;
                tile_b[tx][e] = xb;
            } else {
                tile_a[e][tx] = xa;
                tile_b[e][tx] = xb;
            }
        }
        __syncthreads();
        for (int e = 0; e < GRAM_TILE / OPTIM_ROWS; e++) {
            int ra = ty + e * OPTIM_ROWS;
            double s = acc[e];
            for (int kk = 0; kk < GRAM_TILE; kk++) { s += tile_a[ra][kk] * tile_b[tx][kk]; }
            acc[e] = s;
        }
        __syncthreads();
    }
    for (int e = 0; e < GRAM_TILE / OPTIM_ROWS; e++) {
        int a = a0 + ty + e * OPTIM_ROWS, b = b0 + tx;
        if (a < p && b < p) {
            K[(size_t)a * p + b] = acc[e];
            K[(size_t)b * p + a] = acc[e];
        }
    }
}

// S (p, R) from the top R eigenvectors Z of K (column-major, leading dimension p:
// eigenvector e in column e, eigenvalues ascending as cuSOLVER returns them, the
// largest in column R - 1): S[:, k] = Z[:, R - 1 - k]
__global__ void top_eigenvectors_kernel(float* S, const double* Z, int p, int r) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)p * r) { return; }
    int i = (int)(idx / r), k = (int)(idx % r);
    S[idx] = (float)Z[(size_t)(r - 1 - k) * p + i];
}

// --svd randomized (svd_randomized_top_left_singular_vectors below). every
// launch covers a batch of count matrices, blockIdx.y the matrix, whose arrays
// lie one after another (RsvdArraysGPU); bases are column-major (p, l), the
// CPU's Qt (l, p).

// Omega (p, l) of each matrix into Y, entry at = j p + i drawn by the CPU's own
// svd_sketch_normal, so that both draw the same Omega; matrix e's stream is
// streams[e] (device), or stream0 for a batch of one (streams NULL)
__global__ void svd_sketch_kernel(double* Y, size_t numel, uint64_t seed, uint64_t step, uint64_t stream0,
                                  const uint64_t* streams) {
    size_t at = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= numel) { return; }
    uint64_t stream = streams != NULL ? streams[blockIdx.y] : stream0;
    Y[blockIdx.y * numel + at] = cpu::svd_sketch_normal(seed, step, stream, at);
}

// A = K + mu I in place, mu = cpu::rsvd_shift(trace K), trace summed in a fixed
// order (no host sync: the shift stays on the device). one block per matrix
__global__ void rsvd_shift_kernel(double* A, int p) {
    __shared__ double buf[OPTIM_WARP + 1];
    A += (size_t)blockIdx.x * p * p;
    double t = 0.0;
    for (int i = threadIdx.x; i < p; i += blockDim.x) { t += A[(size_t)i * p + i]; }
    double mu = cpu::rsvd_shift(optim_block_sum(t, buf));
    for (int i = threadIdx.x; i < p; i += blockDim.x) { A[(size_t)i * p + i] += mu; }
}

// Q (p, p) = I for each matrix (l == p: the sketch spans everything)
__global__ void rsvd_identity_kernel(double* Q, int p) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t numel = (size_t)p * p;
    if (idx >= numel) { return; }
    Q[blockIdx.y * numel + idx] = idx / p == idx % p ? 1.0 : 0.0;
}

// orth's scaling: column j of V (l, l) times Lambda_j^-1/2, Lambda (l,) ascending
// as cuSOLVER returns it (the largest last), raised to ORTH_EIG_FLOOR times the
// largest, as the CPU's orthonormalize_rows_pass
__global__ void orth_scale_kernel(double* V, const double* lambda, int l) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t numel = (size_t)l * l;
    if (idx >= numel) { return; }
    V += blockIdx.y * numel;
    lambda += (size_t)blockIdx.y * l;
    double lowest = fmax(lambda[l - 1] * ORTH_EIG_FLOOR, DBL_MIN);
    V[idx] *= 1.0 / sqrt(fmax(lambda[idx / l], lowest));
}

// the verdicts: acc[e] keeps the first nonzero devInfo of matrix e's calls
__global__ void info_fold_kernel(int* acc, const int* call, int count) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < count && acc[e] == 0) { acc[e] = call[e]; }
}

// S (p, R) fp32 row-major from QU (p, R) column-major, whose columns hold the
// top R Ritz vectors ascending: S[:, k] = QU[:, R - 1 - k]; QU of matrix e at
// QU + e qu_stride
__global__ void rsvd_top_vectors_kernel(float* S, const double* QU, size_t qu_stride, int p, int r) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)p * r) { return; }
    int i = (int)(idx / r), k = (int)(idx % r);
    S[blockIdx.y * (size_t)p * r + idx] = (float)QU[blockIdx.y * qu_stride + (size_t)(r - 1 - k) * p + i];
}

// GoLore's bases: S (p, R) row-major of each matrix from Y (p, R) column-major
// (stride y_stride between matrices); no reordering, no canonical sign
__global__ void golore_store_kernel(float* S, const double* Y, size_t y_stride, int p, int r) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)p * r) { return; }
    int i = (int)(idx / r), k = (int)(idx % r);
    S[blockIdx.y * (size_t)p * r + idx] = (float)Y[blockIdx.y * y_stride + (size_t)k * p + i];
}

// S of each matrix of a batch = its row of src (numel each, one after another)
__global__ void svd_result_copy_kernel(PerMatrix<float> S_of, const float* src, size_t numel) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < numel) { S_of.at(blockIdx.y)[i] = src[blockIdx.y * numel + i]; }
}

// flip each column of S (p, R) so its largest-magnitude entry is positive (first
// one on ties), as canonical_sign on the CPU. one block per column; a batch:
// blockIdx.y is the matrix, its S at S + y stride
__global__ void canonical_sign_kernel(float* S, int p, int r, size_t stride) {
    __shared__ float best_val[OPTIM_REDUCE_BLOCK / OPTIM_WARP];
    __shared__ int best_idx[OPTIM_REDUCE_BLOCK / OPTIM_WARP];
    S += blockIdx.y * stride;
    int k = blockIdx.x;
    int lane = threadIdx.x % OPTIM_WARP, warp = threadIdx.x / OPTIM_WARP;
    float bv = -1.0f;
    int bi = p;
    for (int i = threadIdx.x; i < p; i += blockDim.x) {
        float x = fabsf(S[(size_t)i * r + k]);
        if (x > bv) { bv = x; bi = i; }
    }
    for (int offset = OPTIM_WARP / 2; offset > 0; offset /= 2) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, offset);
        int oi = __shfl_xor_sync(0xffffffffu, bi, offset);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { best_val[warp] = bv; best_idx[warp] = bi; }
    __syncthreads();
    int imax = p;
    float vmax = -1.0f;
    for (int w = 0; w < (int)(blockDim.x / OPTIM_WARP); w++) {
        if (best_val[w] > vmax || (best_val[w] == vmax && best_idx[w] < imax)) {
            vmax = best_val[w];
            imax = best_idx[w];
        }
    }
    int flip = imax < p && S[(size_t)imax * r + k] < 0.0f;
    __syncthreads();  // every thread has read the sign before any thread flips it
    if (!flip) { return; }  // block-uniform
    for (int i = threadIdx.x; i < p; i += blockDim.x) { S[(size_t)i * r + k] = -S[(size_t)i * r + k]; }
}

// step 3 for a general C (GaLore): the elementwise pieces around two gemms
// X = V - M o M and CC = C o C  (X, M, V: (numel,); C, CC: (R*R,))
__global__ void moments_rotate_prepare_kernel(PerMatrix<float> X_of, PerMatrix<float> CC_of,
                                              PerMatrix<const float> M_of, PerMatrix<const float> V_of,
                                              PerMatrix<const float> C_of, size_t numel, int rr) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int e = blockIdx.y;
    float *X = X_of.at(e), *CC = CC_of.at(e);
    const float *M = M_of.at(e), *V = V_of.at(e), *C = C_of.at(e);
    if (i < numel) { X[i] = V[i] - M[i] * M[i]; }
    if (i < (size_t)rr) { CC[i] = C[i] * C[i]; }
}

// V = |Vrot + Mrot o Mrot| (Vrot already in V), M = Mrot
__global__ void moments_rotate_finish_kernel(PerMatrix<float> M_of, PerMatrix<float> V_of,
                                             PerMatrix<const float> Mrot_of, size_t numel) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int e = blockIdx.y;
    float *M = M_of.at(e), *V = V_of.at(e);
    const float* Mrot = Mrot_of.at(e);
    if (i >= numel) { return; }
    V[i] = fabsf(V[i] + Mrot[i] * Mrot[i]);
    M[i] = Mrot[i];
}

// ----------------------------------------------------------------------------
// launchers

// full-rank AdamW, the CPU's adamw_update on device pointers. W, M, V, G: (numel,)
void adamw_update(float* W, float* M, float* V, const float* G, size_t numel, int t,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int l2) {
    double c = sqrt(1.0 - pow((double)beta2, t + 1)) / (1.0 - pow((double)beta1, t + 1));
    float step = (float)(lr * c);
    float decay = l2 ? 0.0f : (float)((double)lr * weight_decay);
    float l2_decay = l2 ? weight_decay : 0.0f;
    if (numel == 0) { return; }
    adamw_kernel<<<optim_blocks(numel, OPTIM_BLOCK * Pack128<float>::size), OPTIM_BLOCK>>>(
        W, M, V, G, numel, aligned128_all(W, M, V, G), step, decay, l2_decay, beta1, beta2, eps);
    cudaCheck(cudaGetLastError());
}

// SGD with momentum, the CPU's sgd_update on device pointers. W, B, G: (numel,)
void sgd_update(float* W, float* B, const float* G, size_t numel, float lr, float momentum, float weight_decay) {
    if (numel == 0) { return; }
    sgd_kernel<<<optim_blocks(numel, OPTIM_BLOCK), OPTIM_BLOCK>>>(W, B, G, numel, lr, momentum, weight_decay);
    cudaCheck(cudaGetLastError());
}

// ---- Adafactor (--optimizer adafactor), the CPU's adafactor_update on device
// pointers, one weight at a time: the row statistics (one block per row), the
// column ones (one thread per column), mean(R) (one block), the squares of U
// summed by ADAFACTOR_PARTIALS blocks and then in order by one (the clipping
// scale), and the elementwise step. sums: ADAFACTOR_SUMS doubles of device
// scratch: the partial sums, then mean(R) and the scale (fp32 values)
#define ADAFACTOR_PARTIALS 256
#define ADAFACTOR_SUMS (ADAFACTOR_PARTIALS + 2)

__global__ void adafactor_rows_kernel(float* R, const float* G, int cols, float b, float a) {
    __shared__ double buf[OPTIM_WARP + 1];
    const float* g = G + (size_t)blockIdx.x * cols;
    double s = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) { s += (double)(g[j] * g[j] + ADAFACTOR_EPS1); }
    s = optim_block_sum(s, buf);
    if (threadIdx.x == 0) { R[blockIdx.x] = R[blockIdx.x] * b + (float)(s / cols) * a; }
}

__global__ void adafactor_cols_kernel(float* C, const float* G, int rows, int cols, float b, float a) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) { return; }
    double s = 0.0;
    for (int i = 0; i < rows; i++) {
        float g = G[(size_t)i * cols + j];
        s += (double)(g * g + ADAFACTOR_EPS1);
    }
    C[j] = C[j] * b + (float)(s / rows) * a;
}

// a vector's statistics: V = V b + (G^2 + eps1) a
__global__ void adafactor_vector_kernel(float* V, const float* G, size_t n, float b, float a) {
    size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k < n) { V[k] = V[k] * b + (G[k] * G[k] + ADAFACTOR_EPS1) * a; }
}

// one block: sums[ADAFACTOR_PARTIALS] = mean(R), rounded to fp32
__global__ void adafactor_mean_kernel(double* sums, const float* R, int rows) {
    __shared__ double buf[OPTIM_WARP + 1];
    double s = 0.0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) { s += R[i]; }
    s = optim_block_sum(s, buf);
    if (threadIdx.x == 0) { sums[ADAFACTOR_PARTIALS] = (double)(float)(s / rows); }
}

// element k of U before the scale: r_i c_j G (factored; V NULL) or G / sqrt(V_k)
__device__ __forceinline__ float adafactor_u(const float* G, const float* R, const float* C, const float* V,
                                             float mean_r, int cols, size_t k) {
    if (V != NULL) { return (1.0f / sqrtf(V[k])) * G[k]; }
    int i = (int)(k / cols), j = (int)(k % cols);
    return (1.0f / sqrtf(R[i] / mean_r)) * (1.0f / sqrtf(C[j])) * G[k];
}

__global__ void adafactor_sumsq_kernel(double* sums, const float* G, const float* R, const float* C, const float* V,
                                       int cols, size_t n) {
    __shared__ double buf[OPTIM_WARP + 1];
    float mean_r = V != NULL ? 1.0f : (float)sums[ADAFACTOR_PARTIALS];
    double s = 0.0;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        float u = adafactor_u(G, R, C, V, mean_r, cols, k);
        s += (double)u * u;
    }
    s = optim_block_sum(s, buf);
    if (threadIdx.x == 0) { sums[blockIdx.x] = s; }
}

// one block: the partial sums in order, then sums[ADAFACTOR_PARTIALS + 1] = the scale
__global__ void adafactor_scale_kernel(double* sums, int parts, size_t n) {
    __shared__ double buf[OPTIM_WARP + 1];
    double s = threadIdx.x < parts ? sums[threadIdx.x] : 0.0;
    s = optim_block_sum(s, buf);
    if (threadIdx.x == 0) { sums[ADAFACTOR_PARTIALS + 1] = (double)cpu::adafactor_clip_scale(s, n); }
}

__global__ void adafactor_apply_kernel(float* W, float* M, const float* G, const float* R, const float* C,
                                       const float* V, const double* sums, int cols, size_t n, float lr, float beta1,
                                       float weight_decay) {
    size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) { return; }
    float mean_r = V != NULL ? 1.0f : (float)sums[ADAFACTOR_PARTIALS];
    float u = adafactor_u(G, R, C, V, mean_r, cols, k);
    W[k] = cpu::adafactor_apply(W[k], M != NULL ? M + k : NULL, u, (float)sums[ADAFACTOR_PARTIALS + 1], lr, beta1,
                                weight_decay);
}

// W, M (NULL without a first moment), G: (rows, cols) on the device; stats: R | C or V; sums: ADAFACTOR_SUMS doubles
void adafactor_update(float* W, float* M, float* stats, const float* G, int rows, int cols, int t, float lr,
                      float beta1, float weight_decay, double* sums) {
    size_t n = (size_t)rows * cols;
    float b, a;
    cpu::adafactor_decay(t, &b, &a);
    const float *R = NULL, *C = NULL, *V = NULL;
    if (cpu::adafactor_factored(rows, cols)) {
        float* Rw = stats;
        float* Cw = stats + rows;
        adafactor_rows_kernel<<<rows, OPTIM_BLOCK>>>(Rw, G, cols, b, a);
        adafactor_cols_kernel<<<optim_blocks((size_t)cols, OPTIM_BLOCK), OPTIM_BLOCK>>>(Cw, G, rows, cols, b, a);
        adafactor_mean_kernel<<<1, OPTIM_BLOCK>>>(sums, Rw, rows);
        R = Rw;
        C = Cw;
    } else {
        adafactor_vector_kernel<<<optim_blocks(n, OPTIM_BLOCK), OPTIM_BLOCK>>>(stats, G, n, b, a);
        V = stats;
    }
    size_t blocks = optim_blocks(n, OPTIM_BLOCK);
    int parts = blocks < ADAFACTOR_PARTIALS ? (int)blocks : ADAFACTOR_PARTIALS;
    adafactor_sumsq_kernel<<<parts, OPTIM_BLOCK>>>(sums, G, R, C, V, cols, n);
    adafactor_scale_kernel<<<1, ADAFACTOR_PARTIALS>>>(sums, parts, n);
    adafactor_apply_kernel<<<blocks, OPTIM_BLOCK>>>(W, M, G, R, C, V, sums, cols, n, lr, beta1, weight_decay);
    cudaCheck(cudaGetLastError());
}

// the update of an AdamW tensor (or its chunk) under h: AdamW's, or with
// --optimizer sgd SGD's with M the momentum buffer (V is NULL)
static void optimizer_moments_update(const cpu::Optimizer* h, float* W, float* M, float* V, const float* G, size_t n,
                                     float lr) {
    if (h->sgd) {
        sgd_update(W, M, G, n, lr, h->beta1, h->weight_decay);
    } else {
        adamw_update(W, M, V, G, n, h->step, lr, h->beta1, h->beta2, h->eps, h->weight_decay, h->l2);
    }
}

// the row-major gemm of the CPU file, on cuBLAS (see the section comment):
// Cm (M, N) = alpha op(A) (M, K) op(B) (K, N) + beta Cm, all row-major
static void gemm_gpu(cublasHandle_t handle, int transA, int transB, int M, int N, int K, float alpha,
                     const float* A, int lda, const float* B, int ldb, float beta, float* Cm, int ldc) {
    cublasCheck(cublasSgemm(handle, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                            N, M, K, &alpha, B, ldb, A, lda, &beta, Cm, ldc));
}

// GPU time in subspace updates (cudaEvents, collected lazily), of one matrix
// (lowrank_adamw_step) or of one batch (the grouped step); not checkpointed
typedef struct {
    double seconds;
    int updates;
    cudaEvent_t start, stop;
    int pending;                // stop recorded, elapsed time not yet added
} SubspaceTiming;

static void subspace_timing_init(SubspaceTiming* st) {
    st->seconds = 0.0;
    st->updates = 0;
    cudaCheck(cudaEventCreate(&st->start));
    cudaCheck(cudaEventCreate(&st->stop));
    st->pending = 0;
}

static void subspace_timing_free(SubspaceTiming* st) {
    cudaCheck(cudaEventDestroy(st->start));
    cudaCheck(cudaEventDestroy(st->stop));
}

// adds the last subspace update's time; waits for it only if it is still
// running (the previous update was k steps ago, so in training it has run:
// cudaEventQuery says so without a wait)
static void subspace_timing_collect(SubspaceTiming* st) {
    if (!st->pending) { return; }
    float ms = 0.0f;
    cudaError_t done = cudaEventQuery(st->stop);
    if (done == cudaErrorNotReady) {
        done = cudaEventSynchronize(st->stop);
    }
    cudaCheck(done);
    cudaCheck(cudaEventElapsedTime(&ms, st->start, st->stop));
    st->seconds += 1e-3 * ms;
    st->pending = 0;
}

static void lowrank_timing_begin(SubspaceTiming* st) {
    subspace_timing_collect(st);
    cudaCheck(cudaEventRecord(st->start, 0));
}

static void lowrank_timing_end(SubspaceTiming* st) {
    cudaCheck(cudaEventRecord(st->stop, 0));
    st->pending = 1;
}

// per-matrix state on the device; the checkpointed part is memory (one array)
typedef struct {
    int m, n;                   // the weight's shape, (out, in)
    int r;                      // R
    int right;                  // 0: left, 1: right (cpu::lowrank_right)
    int p, q;                   // p rows of S (m left, n right), q the other side
    float* memory;              // device, cpu::lowrank_state_num_floats(m, n, right, R) floats (less S's p R with S16)
    float* S;                   // (p, R); with S16, a widened copy of it during a step, else NULL
    bf16* S16;                  // (p, R) --subspace_dtype bfloat16: S as it is kept; else NULL
    float* M;                   // (R, q) left or (q, R) right
    float* V;                   // same as M; with Adafactor its statistics (cpu::lowrank_state_layout)
    float* limiter;             // [0] prev, [1] prev_set
    SubspaceTiming timing;      // its subspace updates when it steps alone
    uint64_t svd_stream;        // which matrix this is, for --svd randomized's Omega (as cpu::LowRankState's)
} LowRankStateGPU;

// points the state into device memory and zeroes it, in the CPU's layout
// (cpu::lowrank_state_layout): S | M | V | prev | prev_set, or with q8
// (8-bit states) S | prev | prev_set, M and V pointing at dequantized copies
// only during a step, or with Adafactor S | M (if any) | statistics | prev |
// prev_set. with S16 (--subspace_dtype bfloat16) S lives there, in bf16, and
// memory holds the rest
static void lowrank_state_layout(LowRankStateGPU* s, int m, int n, int right, int r, float* memory,
                                 cpu::LowRankStates kind, bf16* S16) {
    s->m = m;
    s->n = n;
    s->r = r;
    s->right = right;
    s->p = right ? n : m;
    s->q = right ? m : n;
    s->memory = memory;
    s->S16 = S16;
    s->S = S16 != NULL ? NULL : memory;
    float* after_S = S16 != NULL ? memory : memory + (size_t)s->p * r;
    cpu::LowRankOffsets at = cpu::lowrank_state_offsets(m, n, right, r, kind);
    s->M = at.M != LOWRANK_NONE ? after_S + at.M : NULL;
    s->V = at.V != LOWRANK_NONE ? after_S + at.V : NULL;
    s->limiter = after_S + at.limiter;
    size_t floats = cpu::lowrank_state_floats_of(m, n, right, r, kind);
    if (S16 != NULL) {
        floats -= (size_t)s->p * r;
        cudaCheck(cudaMemset(S16, 0, (size_t)s->p * r * sizeof(bf16)));
    }
    cudaCheck(cudaMemset(memory, 0, floats * sizeof(float)));
    subspace_timing_init(&s->timing);
    s->svd_stream = 0;
}

void lowrank_state_init(LowRankStateGPU* s, int m, int n, int right, int r, float* memory) {
    lowrank_state_layout(s, m, n, right, r, memory, cpu::STATES_ADAM, NULL);
}

void lowrank_state_init_q8(LowRankStateGPU* s, int m, int n, int right, int r, float* memory) {
    lowrank_state_layout(s, m, n, right, r, memory, cpu::STATES_Q8, NULL);
}

void lowrank_state_init_adafactor(LowRankStateGPU* s, int m, int n, int right, int r, int first_moment,
                                  float* memory) {
    lowrank_state_layout(s, m, n, right, r, memory, first_moment ? cpu::STATES_ADAFACTOR_M : cpu::STATES_ADAFACTOR,
                         NULL);
}

void lowrank_state_free(LowRankStateGPU* s) { subspace_timing_free(&s->timing); }

// seconds this matrix spent in subspace updates so far, stepping alone
double lowrank_subspace_seconds(LowRankStateGPU* s) {
    subspace_timing_collect(&s->timing);
    return s->timing.seconds;
}

// the precision of the optimizer's three bulk products (projection, residual,
// back-projection), which cost 2 p q R each: see gemm_bulk_compute
typedef enum {
    LOWRANK_FP32 = 0,           // --dtype float32: cuBLAS, exact fp32
    LOWRANK_BF16 = 1,           // bf16 mode: our WMMA kernels on bf16 inputs, fp32 accumulation
    LOWRANK_TF32 = 2,           // bf16 mode before: cuBLAS's projection and the WMMA kernels on TF32 (kept for tests)
} LowRankProducts;

// the handles and the device scratch every low-rank step borrows from. sized for
// the largest matrix by lowrank_gpu_reserve over every (m, n, R), and for the
// largest batch by lowrank_gpu_reserve_group, then lowrank_gpu_alloc
typedef struct {
    cublasHandle_t blas;        // its own handle: default math (no TF32), the default stream
    LowRankProducts products;   // the bulk products' precision: LOWRANK_BF16 in bf16 mode, LOWRANK_FP32 in float32
    int unfused;                // 1: bf16 mode without the fused residual norms and update (tests compare the two)
    cusolverDnHandle_t solver;
    cusolverDnParams_t params;  // the 64-bit API's options (cusolverDnXsyevBatched), defaults
    size_t scratch_floats;      // device floats needed
    int svd_oversample;         // -1: the exact SVD; else --svd randomized's oversampling (set before reserving)
    int eig_lwork;              // doubles of eigensolver workspace (cusolverDnDsyevdx, or --svd randomized's
                                //   cusolverDnXsyevBatched): the plan's, or cuSOLVER's if larger
    int eig_lwork_over_plan;    // how many doubles cuSOLVER asked for above the plan (0: none)
    float* scratch;             // device
    double* eig_work;           // device (eig_lwork,)
    size_t eig_host_bytes;      // host workspace of cusolverDnXsyevBatched
    void* eig_host_work;        // host (eig_host_bytes)
    int* eig_info;              // device, 1 int: devInfo of lowrank_adamw_step's SVD
    void* blas_workspace;       // device, CUBLAS_WORKSPACE_BYTES, blas's
    double* adafactor_sums;     // device (ADAFACTOR_SUMS) with Adafactor in the subspace (--optimizer
                                //   low_rank_adafactor): adafactor_update's sums, the optimizer's; else NULL
} LowRankGPU;

// --svd randomized's arrays for a batch of count matrices (m, n) at rank r, l =
// cpu::svd_sketch_cols: each array holds count matrices' one after another,
// so that every product is one strided-batched DGEMM and every eigenproblem
// one batched call
typedef struct {
    int count;
    double* A;              // (count, p, p) the Gram matrix K, then A = K + mu I
    double* Q;              // (count, p, l) column-major: a basis (the CPU's Qt (l, p))
    double* Y;              // (count, p, l) the other basis buffer (the CPU's Yt)
    double* W;              // (count, l, l) Y^T Y or Q^T A Q, then its eigenvectors
    double* lambda;         // (count, l) their eigenvalues, ascending
    int* call_info;         // (count) devInfo of the last eigensolver call
    float* S;               // (count, p, R) the result, fp32, canonical sign
} RsvdArraysGPU;

// the step's device work arrays, carved out of ctx->scratch like the CPU's Scratch
// (64-byte units; a NULL base only counts)
typedef struct {
    float* Gt;              // moments' shape
    float* N;               // moments' shape
    float* phi;             // (q,)
    double* norm2;          // (q,)
    float* scale;           // 1: the limiter's factor
    float* D;               // (m, n) the residual G - S Gt; bf16 mode: (tiles of p, q) doubles, its partial norms
    float* X;               // (p, R) G A^T, then dF
    float* AAt;             // (R, R)
    float* H;               // (R, R) dF^T dF
    float* a;               // (p,)
    double* v;              // (R,)
    double* u;              // (p,)
    double* y;              // (R,)
    TrackScalars* track;    // 1
    float* S_old;           // (p, R)
    float* C;               // (R, R)
    float* CC;              // (R, R)
    float* Mrot;            // moments' shape
    float* Xm;              // moments' shape
    double* K;              // (p, p) Gram matrix, then its eigenvectors (the exact SVD; else NULL)
    double* eig;            // (p,) its eigenvalues
    RsvdArraysGPU rsvd;     // --svd randomized's arrays, for this one matrix (else all NULL)
} StepScratchGPU;

static float* scratch_take(float* base, size_t* used, size_t count) {
    float* p = base != NULL ? base + *used : NULL;
    *used += (count + SCRATCH_ALIGN_FLOATS - 1) / SCRATCH_ALIGN_FLOATS * SCRATCH_ALIGN_FLOATS;
    return p;
}

// one matrix's own arrays: all of StepScratchGPU but K and eig, which a batch's
// SVDs share (they run one matrix at a time); those are left NULL
static StepScratchGPU step_scratch_matrix_layout(float* base, size_t* used, int m, int n, int right, int r) {
    size_t p = right ? n : m, q = right ? m : n;
    StepScratchGPU w;
    w.Gt = scratch_take(base, used, q * r);
    w.N = scratch_take(base, used, q * r);
    w.phi = scratch_take(base, used, q);
    w.norm2 = (double*)scratch_take(base, used, 2 * q);
    w.scale = scratch_take(base, used, 1);
    // bf16 mode keeps the residual's per-tile norms there, (tiles, q) doubles: as
    // large as (m, n) only for p = 1
    size_t parts = 2 * (size_t)((p + LOWRANK_TILE - 1) / LOWRANK_TILE) * q;
    w.D = scratch_take(base, used, (size_t)m * n > parts ? (size_t)m * n : parts);
    w.X = scratch_take(base, used, p * r);
    w.AAt = scratch_take(base, used, (size_t)r * r);
    w.H = scratch_take(base, used, (size_t)r * r);
    w.a = scratch_take(base, used, p);
    w.v = (double*)scratch_take(base, used, 2 * (size_t)r);
    w.u = (double*)scratch_take(base, used, 2 * p);
    w.y = (double*)scratch_take(base, used, 2 * (size_t)r);
    w.track = (TrackScalars*)scratch_take(base, used, (sizeof(TrackScalars) + sizeof(float) - 1) / sizeof(float));
    w.S_old = scratch_take(base, used, p * r);
    w.C = scratch_take(base, used, (size_t)r * r);
    w.CC = scratch_take(base, used, (size_t)r * r);
    w.Mrot = scratch_take(base, used, q * r);
    w.Xm = scratch_take(base, used, q * r);
    w.K = NULL;
    w.eig = NULL;
    memset(&w.rsvd, 0, sizeof w.rsvd);
    return w;
}

// --svd randomized's arrays for count matrices (m, n) at rank r
static RsvdArraysGPU rsvd_arrays_layout(float* base, size_t* used, int m, int n, int right, int r, int oversample,
                                        int count) {
    size_t p = right ? n : m, l = (size_t)cpu::svd_sketch_cols(m, n, right, r, oversample), c = (size_t)count;
    RsvdArraysGPU w;
    w.count = count;
    w.A = (double*)scratch_take(base, used, 2 * c * p * p);
    w.Q = (double*)scratch_take(base, used, 2 * c * p * l);
    w.Y = (double*)scratch_take(base, used, 2 * c * p * l);
    w.W = (double*)scratch_take(base, used, 2 * c * l * l);
    w.lambda = (double*)scratch_take(base, used, 2 * c * l);
    w.call_info = (int*)scratch_take(base, used, c);
    w.S = scratch_take(base, used, c * p * r);
    return w;
}

static size_t rsvd_scratch_floats(int m, int n, int right, int r, int oversample, int count) {
    size_t used = 0;
    rsvd_arrays_layout(NULL, &used, m, n, right, r, oversample, count);
    return used;
}

// doubles of GoLore's arrays for one matrix (p, R) carved from the exact SVD's
// K (golore_random_basis_one): A (R, R), Q and Y (p, R), W (R, R), lambda (R), a devInfo
static size_t golore_one_doubles(int p, int r) {
    return 2 * (size_t)p * r + 2 * (size_t)r * r + (size_t)r + 1;
}

// the SVD's arrays, for an (m, n) gradient at rank r: the exact SVD's (p, p)
// Gram matrix (oversample -1), or the randomized one's (--svd randomized) for
// svd_count matrices
static void step_scratch_svd_layout(StepScratchGPU* w, float* base, size_t* used, int m, int n, int right, int r,
                                    int oversample = -1, int svd_count = 1) {
    size_t p = right ? n : m;
    w->K = w->eig = NULL;
    memset(&w->rsvd, 0, sizeof w->rsvd);
    if (oversample < 0) {
        // GoLore's arrays (golore_random_basis_one) take K's place when larger
        size_t k = p * p, golore = golore_one_doubles((int)p, r);
        w->K = (double*)scratch_take(base, used, 2 * (k > golore ? k : golore));
        w->eig = (double*)scratch_take(base, used, 2 * p);
        return;
    }
    w->rsvd = rsvd_arrays_layout(base, used, m, n, right, r, oversample, svd_count);
}

// the whole scratch of one matrix stepping alone
static StepScratchGPU step_scratch_gpu_layout(float* base, size_t* used, int m, int n, int right, int r,
                                              int oversample = -1) {
    StepScratchGPU w = step_scratch_matrix_layout(base, used, m, n, right, r);
    step_scratch_svd_layout(&w, base, used, m, n, right, r, oversample);
    return w;
}

// the scratch floats of a batch of b matrices (m, n) at rank r: b matrices' own
// arrays, then one exact SVD's (shared: they run one matrix at a time), or
// the randomized SVD's arrays for svd_count matrices (b = 1: one matrix
// stepping alone)
static size_t lowrank_batch_scratch_floats(int m, int n, int right, int r, int b, int oversample = -1,
                                           int svd_count = 1) {
    size_t one = 0, svd = 0;
    StepScratchGPU w = step_scratch_matrix_layout(NULL, &one, m, n, right, r);
    step_scratch_svd_layout(&w, NULL, &svd, m, n, right, r, oversample, svd_count);
    return (size_t)b * one + svd;
}

// the grouped step's batches take as many matrices of one shape as fit in
// LOWRANK_BATCH_SCRATCH_BYTES of scratch (or in one matrix's, if that is more):
// every matrix of a shape at once up to the authors' 60M recipe (about 100 MiB
// per shape), 15 to 30 at 130M and 350M, 5 (C, C) matrices at 1B, where each
// product alone is large enough to fill a GPU. the scratch is allocated once
// (lowrank_gpu_reserve_group), and the memory plan counts it
#define LOWRANK_BATCH_SCRATCH_BYTES ((size_t)256 << 20)

// how many of count matrices (m, n) at rank r one batch holds. with --svd
// randomized the SVD's arrays are sized apart (lowrank_svd_chunk), so the
// batch counts its matrices' own arrays only
static int lowrank_batch_size(int m, int n, int right, int r, int count, int oversample = -1) {
    size_t exact_svd = lowrank_batch_scratch_floats(m, n, right, r, 0, -1);
    size_t own = lowrank_batch_scratch_floats(m, n, right, r, 1, -1) - exact_svd;   // one matrix's own arrays
    size_t svd = oversample < 0 ? exact_svd : 0;
    size_t room = LOWRANK_BATCH_SCRATCH_BYTES / sizeof(float);
    if (room < own + svd) { room = own + svd; }
    size_t b = (room - svd) / own;
    return b >= (size_t)count ? count : (int)b;
}

// --svd randomized batches its SVDs wider than the step: the matrices of one
// shape go through it in chunks of whole batches (of per matrices), as many
// as fit in LOWRANK_SVD_BATCH_BYTES of arrays (at least one batch). each
// chunk's eigenproblems are one cusolverDnXsyevBatched call each, whose
// dependent steps are paid once per call, not per matrix: at 1B a chunk holds
// 35 (C, C) or 36 (F, C) matrices (about 57 MiB each, mostly the (p, p) double
// Gram matrix), against 5 and 2 in a step's batch, so a pass over the model is
// 5 chunks (dev/perf_model.h models this, PERF_SVD_CHUNK_FLOATS)
#define LOWRANK_SVD_BATCH_BYTES ((size_t)2 << 30)

static int lowrank_svd_chunk(int m, int n, int right, int r, int oversample, int per, int count) {
    size_t one = rsvd_scratch_floats(m, n, right, r, oversample, 1);
    size_t most = LOWRANK_SVD_BATCH_BYTES / sizeof(float) / one;
    size_t batches = most / (size_t)per;
    size_t c = (batches > 0 ? batches : 1) * (size_t)per;
    return c >= (size_t)count ? count : (int)c;
}

// the scratch floats the grouped step needs for count matrices (m, n) at rank
// r: its largest batch's own arrays, then the exact SVD's (p, p), or the
// randomized SVD's arrays for a chunk
static size_t lowrank_group_scratch_floats(int m, int n, int right, int r, int count, int oversample = -1) {
    int per = lowrank_batch_size(m, n, right, r, count, oversample);
    int chunk = oversample < 0 ? 1 : lowrank_svd_chunk(m, n, right, r, oversample, per, count);
    return lowrank_batch_scratch_floats(m, n, right, r, per, oversample, chunk);
}

void lowrank_gpu_create(LowRankGPU* ctx) {
    memset(ctx, 0, sizeof *ctx);
    cublasCheck(cublasCreate(&ctx->blas));
    cublasCheck(cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH));
    cusolverCheck(cusolverDnCreate(&ctx->solver));
    cusolverCheck(cusolverDnCreateParams(&ctx->params));
    ctx->svd_oversample = -1;
}

// doubles of eigendecomposition workspace planned for a (p, p) Gram matrix:
// LAPACK's dsyevd bound with eigenvectors, 1 + 6p + 2p^2. the memory plan
// needs a number without a GPU; at build cuSOLVER is asked too, and a larger
// answer wins (and is reported by the plan at start)
static size_t eig_workspace_doubles(int p) { return 1 + 6 * (size_t)p + 2 * (size_t)p * p; }

// the scratch floats and eigen workspace doubles of the SVDs of svd_count
// matrices (m, n) at rank r: the exact SVD's syevdx on (p, p) (svd_count 1),
// or --svd randomized's (oversample >= 0) cusolverDnXsyevBatched on svd_count
// (l, l) matrices at once, planned as svd_count times the (l, l) bound
static void lowrank_gpu_need(size_t* scratch_floats, size_t* eig_doubles, int m, int n, int right, int r,
                             int oversample = -1) {
    *scratch_floats = lowrank_batch_scratch_floats(m, n, right, r, 1, oversample, 1);
    *eig_doubles = eig_workspace_doubles(oversample < 0 ? (right ? n : m)
                                                        : cpu::svd_sketch_cols(m, n, right, r, oversample));
}

// the same for the grouped step of count matrices (m, n) at rank r
static void lowrank_gpu_need_group(size_t* scratch_floats, size_t* eig_doubles, int m, int n, int right, int r,
                                   int count, int oversample = -1) {
    *scratch_floats = lowrank_group_scratch_floats(m, n, right, r, count, oversample);
    if (oversample < 0) {
        *eig_doubles = eig_workspace_doubles(right ? n : m);
        return;
    }
    int chunk = lowrank_svd_chunk(m, n, right, r, oversample, lowrank_batch_size(m, n, right, r, count, oversample),
                                  count);
    *eig_doubles = (size_t)chunk * eig_workspace_doubles(cpu::svd_sketch_cols(m, n, right, r, oversample));
}

// grows the eigensolver workspace to the plan's `planned` doubles, or cuSOLVER's
// `lwork` if larger (noted as over the plan)
static void lowrank_gpu_reserve_eig(LowRankGPU* ctx, size_t planned, size_t lwork, int m, int n) {
    if (planned > (size_t)INT_MAX || lwork > (size_t)INT_MAX) {
        cpu::fatal("a %d x %d matrix needs %zu doubles of eigendecomposition workspace, above cuSOLVER's int range",
                   m, n, planned > lwork ? planned : lwork);
    }
    int need = lwork > planned ? (int)lwork : (int)planned;
    if (lwork > planned && (int)(lwork - planned) > ctx->eig_lwork_over_plan) {
        ctx->eig_lwork_over_plan = (int)(lwork - planned);
    }
    if (need > ctx->eig_lwork) { ctx->eig_lwork = need; }
}

// cuSOLVER's workspace for --svd randomized's batched eigensolver on count
// (l, l) matrices: device doubles (rounded up), and the host bytes (grown in ctx)
static size_t rsvd_eig_lwork(LowRankGPU* ctx, int l, int count) {
    size_t dev = 0, host = 0;
    cusolverCheck(cusolverDnXsyevBatched_bufferSize(ctx->solver, ctx->params, CUSOLVER_EIG_MODE_VECTOR,
                                                    CUBLAS_FILL_MODE_LOWER, l, CUDA_R_64F, NULL, l, CUDA_R_64F, NULL,
                                                    CUDA_R_64F, &dev, &host, count));
    if (host > ctx->eig_host_bytes) { ctx->eig_host_bytes = host; }
    return (dev + sizeof(double) - 1) / sizeof(double);
}

// grows the sizes for one (m, n) matrix at rank r
void lowrank_gpu_reserve(LowRankGPU* ctx, int m, int n, int right, int r) {
    size_t used = 0, planned = 0;
    lowrank_gpu_need(&used, &planned, m, n, right, r, ctx->svd_oversample);
    if (used > ctx->scratch_floats) { ctx->scratch_floats = used; }
    int p = right ? n : m, lwork = 0, meig = 0;
    lowrank_gpu_reserve_eig(ctx, planned, rsvd_eig_lwork(ctx, r, 1), m, n);   // GoLore's (R, R) (--rand_proj)
    if (ctx->svd_oversample >= 0) {
        int l = cpu::svd_sketch_cols(m, n, right, r, ctx->svd_oversample);
        lowrank_gpu_reserve_eig(ctx, planned, rsvd_eig_lwork(ctx, l, 1), m, n);
        return;
    }
    cusolverCheck(cusolverDnDsyevdx_bufferSize(ctx->solver, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I,
                                               CUBLAS_FILL_MODE_LOWER, p, NULL, p, 0.0, 0.0, p - r + 1, p, &meig,
                                               NULL, &lwork));
    lowrank_gpu_reserve_eig(ctx, planned, (size_t)lwork, m, n);
}

// grows the sizes for the grouped step of count matrices (m, n) at rank r
void lowrank_gpu_reserve_group(LowRankGPU* ctx, int m, int n, int right, int r, int count) {
    lowrank_gpu_reserve(ctx, m, n, right, r);
    size_t floats = 0, planned = 0;
    lowrank_gpu_need_group(&floats, &planned, m, n, right, r, count, ctx->svd_oversample);
    if (floats > ctx->scratch_floats) { ctx->scratch_floats = floats; }
    if (ctx->svd_oversample >= 0) {
        int chunk = lowrank_svd_chunk(m, n, right, r, ctx->svd_oversample,
                                      lowrank_batch_size(m, n, right, r, count, ctx->svd_oversample), count);
        int l = cpu::svd_sketch_cols(m, n, right, r, ctx->svd_oversample);
        lowrank_gpu_reserve_eig(ctx, planned, rsvd_eig_lwork(ctx, l, chunk), m, n);
        lowrank_gpu_reserve_eig(ctx, planned, rsvd_eig_lwork(ctx, r, chunk), m, n);   // GoLore's
    }
}

void lowrank_gpu_alloc(LowRankGPU* ctx) {
    ctx->scratch = (float*)device_malloc((ctx->scratch_floats > 0 ? ctx->scratch_floats : 1) * sizeof(float),
                                         "low-rank step scratch");
    ctx->eig_work = (double*)device_malloc((ctx->eig_lwork > 0 ? ctx->eig_lwork : 1) * sizeof(double),
                                           "eigendecomposition workspace");
    ctx->eig_info = (int*)device_malloc(sizeof(int), "cuSOLVER info");
    ctx->blas_workspace = device_malloc(CUBLAS_WORKSPACE_BYTES, "cuBLAS workspace");
    cublasCheck(cublasSetWorkspace(ctx->blas, ctx->blas_workspace, CUBLAS_WORKSPACE_BYTES));
    free(ctx->eig_host_work);   // (a test's context may be allocated again, larger)
    ctx->eig_host_work = cpu::malloc_check(ctx->eig_host_bytes > 0 ? ctx->eig_host_bytes : 1,
                                           "eigensolver host workspace");
}

void lowrank_gpu_destroy(LowRankGPU* ctx) {
    cudaCheck(cudaFree(ctx->scratch));
    cudaCheck(cudaFree(ctx->eig_work));
    cudaCheck(cudaFree(ctx->eig_info));
    free(ctx->eig_host_work);
    ctx->eig_host_work = NULL;
    cublasCheck(cublasDestroy(ctx->blas));
    cusolverCheck(cusolverDnDestroyParams(ctx->params));
    cusolverCheck(cusolverDnDestroy(ctx->solver));
    cudaCheck(cudaFree(ctx->blas_workspace));  // after the handle that used it
}

// the three products of every step that cost 2 p q R each (projection,
// back-projection, residual) are the optimizer's bulk: at 1B about 11% of the
// model's FLOPs. in bf16 mode (ctx->products LOWRANK_BF16) they run on bf16
// tensor cores (16x the fp32 rate on an H100) in our own WMMA kernels, which
// round S, G and the moments to bf16 (to nearest even, 7 stored mantissa bits)
// as they stage them and accumulate in fp32: the projection
// (lowrank_project_kernel) and, with recovery scaling, the residual's norms
// and the update (lowrank_fused). LOWRANK_TF32, bf16 mode's earlier path, has
// cuBLAS round them to TF32 (10 bits, 8x the fp32 rate) instead, and runs the
// same WMMA kernels on TF32. the error either adds is bounded in
// test_gpu_optim.cu (test_lowrank_fast_products, test_lowrank_fused,
// test_lowrank_project); --dtype float32 keeps them exact fp32. the products
// the fused path leaves to cuBLAS (without recovery scaling, the
// back-projection; ctx->unfused, the residual too) run on TF32 in both bf16
// mode's precisions. the tracking step's and the rotations' small products
// stay fp32 either way
static cublasComputeType_t gemm_bulk_compute(const LowRankGPU* ctx) {
    return ctx->products != LOWRANK_FP32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

static void gemm_gpu_bulk(LowRankGPU* ctx, int transA, int transB, int M, int N, int K, float alpha, const float* A,
                          int lda, const float* B, int ldb, float beta, float* Cm, int ldc) {
    cublasCheck(cublasGemmEx(ctx->blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                             N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, Cm, CUDA_R_32F, ldc,
                             gemm_bulk_compute(ctx), CUBLAS_GEMM_DEFAULT));
}

// gemm_gpu (bulk 0) or gemm_gpu_bulk (bulk 1) on each of count matrices: for
// one matrix the single call; for a batch one cublasSgemmBatched or
// cublasGemmBatchedEx over the device tables, the same product per matrix
// with the same compute type
static void gemm_each(LowRankGPU* ctx, int bulk, int transA, int transB, int M, int N, int K, float alpha,
                      PerMatrix<const float> A, int lda, PerMatrix<const float> B, int ldb, float beta,
                      PerMatrix<float> Cm, int ldc, int count) {
    if (Cm.table == NULL) {
        if (bulk) {
            gemm_gpu_bulk(ctx, transA, transB, M, N, K, alpha, A.one, lda, B.one, ldb, beta, Cm.one, ldc);
        } else {
            gemm_gpu(ctx->blas, transA, transB, M, N, K, alpha, A.one, lda, B.one, ldb, beta, Cm.one, ldc);
        }
        return;
    }
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N, opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (bulk) {
        cublasCheck(cublasGemmBatchedEx(ctx->blas, opB, opA, N, M, K, &alpha,
                                        reinterpret_cast<const void* const*>(B.table), CUDA_R_32F, ldb,
                                        reinterpret_cast<const void* const*>(A.table), CUDA_R_32F, lda, &beta,
                                        reinterpret_cast<void* const*>(Cm.table), CUDA_R_32F, ldc, count,
                                        gemm_bulk_compute(ctx), CUBLAS_GEMM_DEFAULT));
    } else {
        cublasCheck(cublasSgemmBatched(ctx->blas, opB, opA, N, M, K, &alpha, B.table, ldb, A.table, lda, &beta,
                                       Cm.table, ldc, count));
    }
}

// dst = src (or 0 for src NULL), (numel,) floats of each of count matrices
static void copy_each(PerMatrix<float> dst, PerMatrix<const float> src, size_t numel, int count) {
    if (dst.table == NULL) {
        if (src.one != NULL) {
            cudaCheck(cudaMemcpyAsync(dst.one, src.one, numel * sizeof(float), cudaMemcpyDeviceToDevice, 0));
        } else {
            cudaCheck(cudaMemsetAsync(dst.one, 0, numel * sizeof(float), 0));
        }
        return;
    }
    int vec = per_matrix_aligned128(dst, count) && per_matrix_aligned128(src, count);
    copy_kernel<<<dim3(optim_blocks(numel, OPTIM_BLOCK * Pack128<float>::size), count), OPTIM_BLOCK>>>(dst, src,
                                                                                                    numel, vec);
    cudaCheck(cudaGetLastError());
}

// cuSOLVER's verdict on one matrix's SVD as the host gets it; with its devInfo
// (device memory) it is checked after the step (lowrank_svd_check)
typedef struct {
    cusolverStatus_t status;
    int found;                  // eigenpairs syevdx found; R wanted
    const char* call;           // the cuSOLVER call whose status or devInfo failed (NULL: syevdx)
    int order;                  // the order of the matrices it factorized (0: the Gram matrix's, p)
} SvdOutcome;

// what a step works on: one matrix (lowrank_batch_of_one, plain pointers), or
// a batch of count matrices of one shape and orientation (lowrank_groups_build:
// every field a device table, the same scratch layout per matrix)
typedef struct {
    int m, n, r, right, p, q;   // the shape they share, as in LowRankStateGPU
    int count;
    PerMatrix<float> S, M, V, limiter;  // the states, as in LowRankStateGPU
    PerMatrix<float> W;                 // (m, n) the weights
    PerMatrix<const float> G;           // (m, n) their gradients
    // each matrix's scratch, as in StepScratchGPU
    PerMatrix<float> Gt, N, phi, scale, D, X, AAt, H, a, S_old, C, CC, Mrot, Xm;
    PerMatrix<double> norm2, v, u, y;
    PerMatrix<TrackScalars> track;
    double* K;                  // the SVD's (p, p) and (p,): one matrix at a time, so shared
    double* eig;
    int* info;                  // device (count): cuSOLVER's devInfo, one per matrix
    SvdOutcome* svd;            // host (count)
    SubspaceTiming* timing;     // the batch's subspace updates
    RsvdArraysGPU rsvd;         // --svd randomized's arrays for these count matrices, if they compute it (or
                                //   none: count 0)
    const float* svd_result;    // --svd randomized: (count, p, R) the S this step's chunk computed
                                //   (lowrank_groups_step), or NULL: computed in rsvd
    const uint64_t* svd_stream; // host (count): each matrix's stream for --svd randomized's Omega
    const uint64_t* svd_stream_dev;  // device copy (count), or NULL for one matrix (svd_stream[0] then)
} LowRankBatchGPU;

#define LOWRANK_BATCH_FIELDS 25 // PerMatrix fields of LowRankBatchGPU

// one matrix as a batch of one: its state s, W and G, its scratch w (NULL: no
// scratch), devInfo at info, the host's verdict in *svd
static LowRankBatchGPU lowrank_batch_of_one(LowRankStateGPU* s, float* W, const float* G, const StepScratchGPU* w,
                                            int* info, SvdOutcome* svd) {
    LowRankBatchGPU b;
    b.m = s->m; b.n = s->n; b.r = s->r; b.right = s->right; b.p = s->p; b.q = s->q;
    b.count = 1;
    b.S = s->S; b.M = s->M; b.V = s->V; b.limiter = s->limiter;
    b.W = W;
    b.G = G;
    StepScratchGPU none;
    memset(&none, 0, sizeof none);
    if (w == NULL) { w = &none; }
    b.Gt = w->Gt; b.N = w->N; b.phi = w->phi; b.scale = w->scale; b.D = w->D; b.X = w->X; b.AAt = w->AAt;
    b.H = w->H; b.a = w->a; b.S_old = w->S_old; b.C = w->C; b.CC = w->CC; b.Mrot = w->Mrot; b.Xm = w->Xm;
    b.norm2 = w->norm2; b.v = w->v; b.u = w->u; b.y = w->y;
    b.track = w->track;
    b.K = w->K;
    b.eig = w->eig;
    b.info = info;
    b.svd = svd;
    b.timing = &s->timing;
    b.rsvd = w->rsvd;
    b.svd_result = NULL;
    b.svd_stream = &s->svd_stream;
    b.svd_stream_dev = NULL;
    return b;
}

// the orientation-hiding products, as on the CPU:
//   left:  Gt (R, q) = S^T G          D (m, n) = alpha S X + beta D
//   right: Gt (q, R) = G S            D (m, n) = alpha X S^T + beta D
// in bf16 mode the projection is our bf16 WMMA kernel (lowrank_project_kernel)
static void lowrank_project(LowRankBatchGPU* b, LowRankGPU* ctx) {
    int m = b->m, n = b->n, r = b->r;
    if (ctx->products == LOWRANK_BF16) {
        dim3 grid((r + LOWRANK_TILE - 1) / LOWRANK_TILE, (b->q + LOWRANK_TILE - 1) / LOWRANK_TILE, b->count);
        lowrank_project_kernel<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(b->Gt, b->G, b->S, r, b->p, b->q,
                                                                             b->right);
        cudaCheck(cudaGetLastError());
    } else if (!b->right) {
        gemm_each(ctx, 1, 1, 0, r, n, m, 1.0f, b->S, r, b->G, n, 0.0f, b->Gt, n, b->count);
    } else {
        gemm_each(ctx, 1, 0, 0, m, r, n, 1.0f, b->G, n, b->S, r, 0.0f, b->Gt, r, b->count);
    }
}

// Gt (the moments' shape) = the projection of one matrix's G with S
void lowrank_project(float* Gt, LowRankStateGPU* s, const float* G, LowRankGPU* ctx) {
    LowRankBatchGPU b = lowrank_batch_of_one(s, NULL, G, NULL, NULL, NULL);
    b.Gt = Gt;
    lowrank_project(&b, ctx);
}

static void lowrank_back_project(PerMatrix<float> D, const LowRankBatchGPU* b, PerMatrix<const float> X, float alpha,
                                 float beta, LowRankGPU* ctx) {
    int m = b->m, n = b->n, r = b->r;
    if (!b->right) {
        gemm_each(ctx, 1, 0, 0, m, n, r, alpha, b->S, r, X, n, beta, D, n, b->count);
    } else {
        gemm_each(ctx, 1, 0, 1, m, n, r, alpha, X, r, b->S, r, beta, D, n, b->count);
    }
}

// D (m, n) = G - S Gt (left) or G - Gt S^T (right), explicitly: the part of G
// that the projection discards, which recovery scaling (step 5) adds back.
// from norms alone, ||G_j||^2 - ||Gt_j||^2 would cancel in fp32
static void lowrank_residual(LowRankBatchGPU* b, LowRankGPU* ctx) {
    copy_each(b->D, b->G, (size_t)b->m * b->n, b->count);
    lowrank_back_project(b->D, b, b->Gt, -1.0f, 1.0f, ctx);
}

// ---- the SVD (GaLore, and every method's first step)

// K (p, p) = X X^T in double, X = op(G) (p, q), G (m, n). the CPU's gram_double
// packs X into its panel scratch; here tiles of X go through shared memory
// a batch: count matrices' G (a table), their K at K + e k_stride, one launch
static void gram_double(double* K, PerMatrix<const float> G, int n, int right, int p, int q, size_t k_stride = 0,
                        int count = 1) {
    dim3 tiles(optim_blocks(p, GRAM_TILE), optim_blocks(p, GRAM_TILE), count);
    gram_double_kernel<<<tiles, dim3(GRAM_TILE, OPTIM_ROWS)>>>(K, k_stride, G, n, right, p, q);
    cudaCheck(cudaGetLastError());
}

// flip each column of S (p, R) so its largest-magnitude entry is positive (first
// one on ties); a batch: count of them, one after another
static void canonical_sign(float* S, int p, int r, int count = 1) {
    canonical_sign_kernel<<<dim3(r, count), OPTIM_BLOCK>>>(S, p, r, (size_t)p * r);
    cudaCheck(cudaGetLastError());
}

// cuSOLVER reports a failed factorization in devInfo, an int in device memory,
// and not always in its status: 0 is success, -i an invalid argument i, i > 0
// that it did not converge (syevd: i off-diagonal elements of its tridiagonal
// form stayed nonzero; a NaN or Inf in the gradient does that, or a status of
// CUSOLVER_STATUS_EXECUTION_FAILED). so both are checked: a failure stops the
// run, naming the call, the shapes and, in a batch, the matrix (which, or
// NULL): an S from a failed eigensolver would train on garbage without a
// word. call: the cuSOLVER function; (p, p) the Gram matrix it factorized, of a
// gradient (m, n); info: devInfo, read back (meaningless unless status is success)
static void cusolver_factorization_report(cusolverStatus_t status, int info, const char* call, int p, int m, int n,
                                          const char* which) {
    if (status == CUSOLVER_STATUS_SUCCESS && info == 0) { return; }
    fprintf(stderr, "error: %s failed on the %d x %d %sGram matrix of a %d x %d gradient (%s%sthe SVD for the "
            "subspace): ", call, p, p, p == m || p == n ? "" : "projected ", m, n, which != NULL ? which : "",
            which != NULL ? "; " : "");
    if (status != CUSOLVER_STATUS_SUCCESS) {
        fprintf(stderr, "cuSOLVER status %d\n", (int)status);
    } else if (info < 0) {
        fprintf(stderr, "devInfo %d: argument %d is invalid\n", info, -info);
    } else {
        fprintf(stderr, "devInfo %d: %d off-diagonal elements did not converge\n", info, info);
    }
    fprintf(stderr, "hint: a NaN or Inf in the gradient causes this\n");
    exit(EXIT_FAILURE);
}

// the check of one cuSOLVER call at once: reads devInfo, which waits for the GPU
void cusolver_factorization_check(cusolverStatus_t status, const int* dev_info, const char* call, int p,
                                         int m, int n) {
    int info = 0;
    if (status == CUSOLVER_STATUS_SUCCESS) {
        cudaCheck(cudaMemcpy(&info, dev_info, sizeof(int), cudaMemcpyDeviceToHost));
    }
    cusolver_factorization_report(status, info, call, p, m, n, NULL);
}

// one matrix's SVD as svd_top_left_singular_vectors left it: its status and
// devInfo, then the eigenpairs syevdx found (R wanted)
static void svd_outcome_check(const SvdOutcome* outcome, int info, int m, int n, int right, int r, const char* which) {
    int p = outcome->order > 0 ? outcome->order : right ? n : m;
    cusolver_factorization_report(outcome->status, info, outcome->call != NULL ? outcome->call : "cusolverDnDsyevdx",
                                  p, m, n, which);
    if (outcome->found != r) {
        fprintf(stderr, "error: cusolverDnDsyevdx found %d of the top %d eigenpairs of the %d x %d Gram matrix of a "
                "%d x %d gradient (%s%sthe SVD for the subspace)\nhint: a NaN or Inf in the gradient causes this\n",
                outcome->found, r, p, p, m, n, which != NULL ? which : "", which != NULL ? "; " : "");
        exit(EXIT_FAILURE);
    }
}

// S (p, R) = the top-r left singular vectors of op(G), descending, canonical sign:
// eigenvectors of the Gram matrix K (p, p) = X X^T formed in double (as the CPU
// does; fp32 would square the condition number into fp32 rounding), by
// cusolverDnDsyevdx for the top R only (the R largest: 1-based indices p-R+1..p):
// it still reduces K to tridiagonal form, (4/3) p^3, but computes and
// back-transforms R eigenvectors instead of p. eig (p,) takes the eigenvalues.
// the verdict is left in *outcome and dev_info, not read here: reading devInfo
// waits for the GPU, so a step reads every matrix's at once, after all of them
// (lowrank_svd_check); until then a failed S is garbage that the step goes on with
void svd_top_left_singular_vectors(float* S, const float* G, int m, int n, int right, int r, LowRankGPU* ctx, double* K,
                                   double* eig, int* dev_info, SvdOutcome* outcome) {
    int p = right ? n : m, q = right ? m : n;
    gram_double(K, G, n, right, p, q);
    outcome->found = 0;
    outcome->call = NULL;
    outcome->order = 0;
    outcome->status = cusolverDnDsyevdx(ctx->solver, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I,
                                        CUBLAS_FILL_MODE_LOWER, p, K, p, 0.0, 0.0, p - r + 1, p, &outcome->found,
                                        eig, ctx->eig_work, ctx->eig_lwork, dev_info);
    top_eigenvectors_kernel<<<optim_blocks((size_t)p * r, OPTIM_BLOCK), OPTIM_BLOCK>>>(S, K, p, r);
    cudaCheck(cudaGetLastError());
    canonical_sign(S, p, r);
}

// 1 when step t takes an SVD of every matrix (the first step, GaLore's refreshes)
static int lowrank_svd_step(const cpu::LowRankConfig* cfg, int t) {
    return t == 0 || (cfg->method == cpu::SUBSPACE_GALORE && cfg->update_interval > 0 && t % cfg->update_interval == 0);
}

// the SVD verdicts of one matrix stepping alone: one read of its devInfo
static void lowrank_svd_check(const LowRankBatchGPU* b) {
    int info = 0;
    cudaCheck(cudaMemcpy(&info, b->info, sizeof(int), cudaMemcpyDeviceToHost));
    svd_outcome_check(&b->svd[0], info, b->m, b->n, b->right, b->r, NULL);
}

// ---- the randomized top-R SVD (--svd randomized), the CPU's twin (see
// svd_randomized_top_left_singular_vectors there for the algorithm and its
// accuracy): the same Omega (svd_sketch_kernel), the same steps, every array
// in double. differences, for speed: a batch of count matrices of one shape
// goes through together, each product one cublasDgemmStridedBatched and each
// eigenproblem one cusolverDnXsyevBatched call (2 (it + 2) + 1 of them), so
// the eigensolver's dependent steps are paid once per batch, not per matrix,
// and nothing waits for the host. the Gram matrix stays the exact path's
// gram_double_kernel (FP64 CUDA cores, batched over blockIdx.z) and is not a
// DGEMM on tensor cores: that would need G widened to double, (p, q) doubles
// per matrix of the batch (45 MiB each for a 1B (F, C) matrix), for a product
// done once per SVD; the p^2 l products A Q, done it + 2 times, are DGEMMs.
// cusolverDnXsyevBatched (cuSOLVER >= 11.7, CUDA 12.6.2) documents no limit on
// n (unlike syevjBatched's n <= 32): it takes l = R + o directly (520 at 1B).
// its eigenvalues come ascending: orth's scaling and the Ritz vectors' order
// follow that (the CPU's eigensolver returns them descending; the spans and
// S are the same). verdicts: every call's devInfo is folded into the batch's
// info (the first nonzero per matrix), read by the caller once per step.

// one batch of the randomized SVD: count matrices (m, n) at rank r, projected on the right side or not
typedef struct {
    int count, m, n, right, r;
    PerMatrix<const float> G;       // (m, n) each: one pointer, or a table of count
    uint64_t stream0;               // Omega's stream for a batch of one
    const uint64_t* streams;        // device (count), or NULL (stream0)
    RsvdArraysGPU w;                // arrays for at least count matrices; S the result
    int* info;                      // device (count): the verdicts
    SvdOutcome* outcome;            // host (count)
} RsvdBatchGPU;

static void cusolver_note(SvdOutcome* outcome, cusolverStatus_t status, const char* call) {
    if (status != CUSOLVER_STATUS_SUCCESS && outcome->status == CUSOLVER_STATUS_SUCCESS) {
        outcome->status = status;
        outcome->call = call;
    }
}

// C_e = alpha op(A_e) op(B_e) + beta C_e for the count matrices, column-major
// (cuBLAS's own convention: the bases here are column-major (p, l) already)
static void dgemm_each(LowRankGPU* ctx, int transA, int transB, int M, int N, int K, const double* A, int lda,
                       size_t sa, const double* B, int ldb, size_t sb, double* Cm, int ldc, size_t sc, int count) {
    const double one = 1.0, zero = 0.0;
    cublasCheck(cublasDgemmStridedBatched(ctx->blas, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          transB ? CUBLAS_OP_T : CUBLAS_OP_N, M, N, K, &one, A, lda, (long long)sa,
                                          B, ldb, (long long)sb, &zero, Cm, ldc, (long long)sc, count));
}

// the eigenpairs of every W (l, l) of the batch, in place (vectors in the
// columns, lambda ascending), one call; its devInfo folded into c->info
static void rsvd_eigen(RsvdBatchGPU* c, int l, LowRankGPU* ctx) {
    cusolverStatus_t st = cusolverDnXsyevBatched(ctx->solver, ctx->params, CUSOLVER_EIG_MODE_VECTOR,
                                                 CUBLAS_FILL_MODE_LOWER, l, CUDA_R_64F, c->w.W, l, CUDA_R_64F,
                                                 c->w.lambda, CUDA_R_64F, ctx->eig_work,
                                                 (size_t)ctx->eig_lwork * sizeof(double), ctx->eig_host_work,
                                                 ctx->eig_host_bytes, c->w.call_info, c->count);
    for (int e = 0; e < c->count; e++) { cusolver_note(&c->outcome[e], st, "cusolverDnXsyevBatched"); }
    if (st == CUSOLVER_STATUS_SUCCESS) {
        info_fold_kernel<<<optim_blocks(c->count, OPTIM_BLOCK), OPTIM_BLOCK>>>(c->info, c->w.call_info, c->count);
        cudaCheck(cudaGetLastError());
    }
}

// one orth pass: Out (p, l) = In V Lambda^-1/2, V Lambda V^T = In^T In (l, l)
static void orthonormalize_rows_pass(double* Out, const double* In, RsvdBatchGPU* c, int p, int l, LowRankGPU* ctx) {
    size_t pl = (size_t)p * l, ll = (size_t)l * l;
    dgemm_each(ctx, 1, 0, l, l, p, In, p, pl, In, p, pl, c->w.W, l, ll, c->count);
    rsvd_eigen(c, l, ctx);
    orth_scale_kernel<<<dim3(optim_blocks(ll, OPTIM_BLOCK), c->count), OPTIM_BLOCK>>>(c->w.W, c->w.lambda, l);
    cudaCheck(cudaGetLastError());
    dgemm_each(ctx, 0, 0, p, l, l, In, p, pl, c->w.W, l, ll, Out, p, pl, c->count);
}

// Y <- an orthonormal basis of its columns (two passes); Q is scratch
void orthonormalize_rows(double* Y, double* Q, RsvdBatchGPU* c, int p, int l, LowRankGPU* ctx) {
    orthonormalize_rows_pass(Q, Y, c, p, l, ctx);
    orthonormalize_rows_pass(Y, Q, c, p, l, ctx);
}

// c->w.S (count, p, R) = approximately the top-r left singular vectors of each
// op(G), canonical sign; sk gives (oversample, power_iters, seed, step), each
// matrix's stream from c. the verdicts in c->info and c->outcome, not read here
void svd_randomized_top_left_singular_vectors(RsvdBatchGPU* c, const cpu::SvdSketch* sk, LowRankGPU* ctx) {
    int m = c->m, n = c->n, r = c->r, count = c->count, right = c->right;
    int p = right ? n : m, q = right ? m : n;
    int l = cpu::svd_sketch_cols(m, n, right, r, sk->oversample);
    size_t pl = (size_t)p * l, ll = (size_t)l * l, pp = (size_t)p * p;
    for (int e = 0; e < count; e++) {
        c->outcome[e].status = CUSOLVER_STATUS_SUCCESS;
        c->outcome[e].call = "cusolverDnXsyevBatched";   // the only solver call; devInfo is its
        c->outcome[e].found = r;
        c->outcome[e].order = l;
    }
    cudaCheck(cudaMemsetAsync(c->info, 0, (size_t)count * sizeof(int), 0));
    // steps 1-2: A = X X^T + mu I
    double* A = c->w.A;
    gram_double(A, c->G, n, right, p, q, pp, count);
    rsvd_shift_kernel<<<count, OPTIM_BLOCK>>>(A, p);
    cudaCheck(cudaGetLastError());
    // step 3: the basis Q; Y the other buffer, and the two swap
    double* Q = c->w.Q;
    double* Y = c->w.Y;
    if (l == p) {
        rsvd_identity_kernel<<<dim3(optim_blocks(pp, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(Q, p);
        cudaCheck(cudaGetLastError());
    } else {
        svd_sketch_kernel<<<dim3(optim_blocks(pl, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(Q, pl, sk->seed, sk->step,
                                                                                       c->stream0, c->streams);
        cudaCheck(cudaGetLastError());
        orthonormalize_rows(Q, Y, c, p, l, ctx);                            // Q = orth(Omega)
        for (int it = 0; it <= sk->power_iters; it++) {
            dgemm_each(ctx, 0, 0, p, l, p, A, p, pp, Q, p, pl, Y, p, pl, count);   // Y = A Q
            orthonormalize_rows(Y, Q, c, p, l, ctx);                        // Q = orth(Y)
            double* t = Q; Q = Y; Y = t;
        }
    }
    // step 4: B = Q^T A Q, its top r eigenvectors (the last r columns), S = Q U
    dgemm_each(ctx, 0, 0, p, l, p, A, p, pp, Q, p, pl, Y, p, pl, count);
    dgemm_each(ctx, 1, 0, l, l, p, Q, p, pl, Y, p, pl, c->w.W, l, ll, count);
    rsvd_eigen(c, l, ctx);
    dgemm_each(ctx, 0, 0, p, r, l, Q, p, pl, c->w.W + (size_t)(l - r) * l, l, ll, Y, p, pl, count);
    rsvd_top_vectors_kernel<<<dim3(optim_blocks((size_t)p * r, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(c->w.S, Y, pl, p,
                                                                                                    r);
    cudaCheck(cudaGetLastError());
    canonical_sign(c->w.S, p, r, count);
}

// GoLore (--rand_proj), the twin of cpu::golore_random_basis: c->w.S (count, p,
// R) = the polar factor Z (Z^T Z)^-1/2 of each matrix's Gaussian Z, the
// sketch's first R columns (the draws of svd_sketch_kernel: the CPU's Z).
// the arrays are the randomized SVD's (l >= R, p >= R), used at R: Z in Q,
// Z^T Z = V Lambda V^T in W (cusolverDnXsyevBatched), a copy of V in Y, then
// (Z^T Z)^-1/2 = (V Lambda^-1/2) V^T in A, and Z (Z^T Z)^-1/2 in Y. the
// verdicts go to c->info and c->outcome, as the SVD's
void golore_random_basis(RsvdBatchGPU* c, const cpu::SvdSketch* sk, LowRankGPU* ctx) {
    int r = c->r, count = c->count, p = c->right ? c->n : c->m;
    size_t pr = (size_t)p * r, rr = (size_t)r * r;
    for (int e = 0; e < count; e++) {
        c->outcome[e].status = CUSOLVER_STATUS_SUCCESS;
        c->outcome[e].call = "cusolverDnXsyevBatched";
        c->outcome[e].found = r;
        c->outcome[e].order = r;
    }
    cudaCheck(cudaMemsetAsync(c->info, 0, (size_t)count * sizeof(int), 0));
    svd_sketch_kernel<<<dim3(optim_blocks(pr, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(c->w.Q, pr, sk->seed, sk->step,
                                                                                   c->stream0, c->streams);
    cudaCheck(cudaGetLastError());
    dgemm_each(ctx, 1, 0, r, r, p, c->w.Q, p, pr, c->w.Q, p, pr, c->w.W, r, rr, count);     // W = Z^T Z
    rsvd_eigen(c, r, ctx);                                                                 // W = V
    cudaCheck(cudaMemcpyAsync(c->w.Y, c->w.W, (size_t)count * rr * sizeof(double), cudaMemcpyDeviceToDevice, 0));
    orth_scale_kernel<<<dim3(optim_blocks(rr, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(c->w.W, c->w.lambda, r);
    cudaCheck(cudaGetLastError());
    dgemm_each(ctx, 0, 1, r, r, r, c->w.W, r, rr, c->w.Y, r, rr, c->w.A, r, rr, count);     // A = (Z^T Z)^-1/2
    dgemm_each(ctx, 0, 0, p, r, r, c->w.Q, p, pr, c->w.A, r, rr, c->w.Y, p, pr, count);     // Y = Z A
    golore_store_kernel<<<dim3(optim_blocks(pr, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(c->w.S, c->w.Y, pr, p, r);
    cudaCheck(cudaGetLastError());
}

// GoLore for matrix e of b alone, with the exact SVD's K as its arrays
// (golore_one_doubles; step_scratch_svd_layout sizes K for it), into b->S
static void golore_random_basis_one(LowRankBatchGPU* b, int e, const cpu::LowRankConfig* cfg, LowRankGPU* ctx) {
    size_t pr = (size_t)b->p * b->r, rr = (size_t)b->r * b->r;
    RsvdArraysGPU w;
    memset(&w, 0, sizeof w);
    w.count = 1;
    w.A = b->K;
    w.Q = w.A + rr;
    w.Y = w.Q + pr;
    w.W = w.Y + pr;
    w.lambda = w.W + rr;
    w.call_info = (int*)(w.lambda + b->r);
    w.S = b->S.on_host(e);
    RsvdBatchGPU c = {1, b->m, b->n, b->right, b->r, b->G, b->svd_stream[e], NULL, w, b->info + e, &b->svd[e]};
    cpu::SvdSketch sk = {0, 0, cfg->svd_seed, (uint64_t)cfg->svd_step, b->svd_stream[e]};
    golore_random_basis(&c, &sk, ctx);
}

// the subspace SVD that cfg asks for (--svd) of every matrix of b, at step cfg->svd_step, into b->S:
// the exact path one matrix at a time; --svd randomized as a batch, or copied
// from the chunk lowrank_groups_step ran (b->svd_result)
static void lowrank_subspace_svd(LowRankBatchGPU* b, const cpu::LowRankConfig* cfg, LowRankGPU* ctx) {
    int golore = cpu::lowrank_golore_at(cfg, cfg->svd_step);   // --rand_proj: a random S instead
    if (!cfg->svd_randomized) {
        for (int e = 0; e < b->count; e++) {
            if (golore) {
                golore_random_basis_one(b, e, cfg, ctx);
                continue;
            }
            svd_top_left_singular_vectors(b->S.on_host(e), b->G.on_host(e), b->m, b->n, b->right, b->r, ctx, b->K,
                                          b->eig, b->info + e, &b->svd[e]);
        }
        return;
    }
    const float* result = b->svd_result;
    if (result == NULL) {
        if (ctx->svd_oversample != cfg->svd_oversample || b->rsvd.count < b->count || b->rsvd.A == NULL ||
            (b->count > 1 && b->svd_stream_dev == NULL)) {
            cpu::fatal("lowrank_subspace_svd: the scratch was not reserved for --svd randomized with oversampling %d "
                       "(reserved: %d); hint: set ctx.svd_oversample before lowrank_gpu_reserve", cfg->svd_oversample,
                       ctx->svd_oversample);
        }
        RsvdBatchGPU c = {b->count, b->m, b->n, b->right, b->r, b->G, b->svd_stream[0], b->svd_stream_dev, b->rsvd,
                          b->info, b->svd};
        cpu::SvdSketch sk = {cfg->svd_oversample, cfg->svd_power_iters, cfg->svd_seed, (uint64_t)cfg->svd_step, 0};
        if (golore) {
            golore_random_basis(&c, &sk, ctx);
        } else {
            svd_randomized_top_left_singular_vectors(&c, &sk, ctx);
        }
        result = c.w.S;
    }
    size_t numel = (size_t)b->p * b->r;
    svd_result_copy_kernel<<<dim3(optim_blocks(numel, OPTIM_BLOCK), b->count), OPTIM_BLOCK>>>(b->S, result, numel);
    cudaCheck(cudaGetLastError());
}

// ---- step 1: the first subspace

// step 1 (t == 0): S = the top-r left singular vectors of G (canonical sign), M = V = 0
void lowrank_init_subspace(LowRankBatchGPU* b, const cpu::LowRankConfig* cfg, LowRankGPU* ctx) {
    lowrank_subspace_svd(b, cfg, ctx);
    size_t numel = (size_t)b->q * b->r;
    if (b->M.on_host(0) != NULL) { copy_each(b->M, PerMatrix<const float>(), numel, b->count); }
    if (cfg->adafactor) {   // Adafactor's statistics, as on the CPU
        int rows, cols;
        cpu::lowrank_moment_shape(b->m, b->n, b->right, b->r, &rows, &cols);
        numel = cpu::adafactor_stats_floats(rows, cols);
    }
    copy_each(b->V, PerMatrix<const float>(), numel, b->count);
}

// ---- GaLore: S = top-r singular vectors of the current gradient (+ moment rotation)

// step 3 for a general change of basis C (R, R) = S_new^T S_old (GaLore's SVD refresh):
//   left:  M_rot = C M,   V_rot = |(C o C)(V - M o M) + M_rot o M_rot|
//   right: the same on the transposes, M_rot = M C^T
// from b's C, with its CC (R, R), Mrot and Xm (the moments' shape) as scratch
static void moments_rotate_general(LowRankBatchGPU* b, LowRankGPU* ctx) {
    int r = b->r, q = b->q, count = b->count;
    size_t numel = (size_t)r * q;
    size_t launch = numel > (size_t)r * r ? numel : (size_t)r * r;
    moments_rotate_prepare_kernel<<<dim3(optim_blocks(launch, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(
        b->Xm, b->CC, b->M, b->V, b->C, numel, r * r);
    cudaCheck(cudaGetLastError());
    PerMatrix<float> Vrot = b->V;  // V is no longer needed once Xm holds V - M o M
    if (!b->right) {
        gemm_each(ctx, 0, 0, 0, r, q, r, 1.0f, b->C, r, b->M, q, 0.0f, b->Mrot, q, count);
        gemm_each(ctx, 0, 0, 0, r, q, r, 1.0f, b->CC, r, b->Xm, q, 0.0f, Vrot, q, count);
    } else {
        gemm_each(ctx, 0, 0, 1, q, r, r, 1.0f, b->M, r, b->C, r, 0.0f, b->Mrot, r, count);
        gemm_each(ctx, 0, 0, 1, q, r, r, 1.0f, b->Xm, r, b->CC, r, 0.0f, Vrot, r, count);
    }
    moments_rotate_finish_kernel<<<dim3(optim_blocks(numel, OPTIM_BLOCK), count), OPTIM_BLOCK>>>(b->M, b->V, b->Mrot,
                                                                                                 numel);
    cudaCheck(cudaGetLastError());
}

// step 2 (GaLore) and 3: new S from an SVD of G; with --adaptive_optimizer the
// moments follow the change of basis
void galore_refresh_subspace(LowRankBatchGPU* b, const cpu::LowRankConfig* cfg, LowRankGPU* ctx) {
    int p = b->p, r = b->r;
    copy_each(b->S_old, b->S, (size_t)p * r, b->count);
    lowrank_subspace_svd(b, cfg, ctx);
    if (cfg->adaptive_optimizer) {
        gemm_each(ctx, 0, 1, 0, r, r, p, 1.0f, b->S, r, b->S_old, r, 0.0f, b->C, r, b->count);
        moments_rotate_general(b, ctx);
    }
}

// the same for one matrix, its SVD checked at once
void galore_refresh_subspace(LowRankStateGPU* s, const float* G, const cpu::LowRankConfig* cfg, LowRankGPU* ctx,
                             const StepScratchGPU* w) {
    SvdOutcome outcome;
    LowRankBatchGPU b = lowrank_batch_of_one(s, NULL, G, w, ctx->eig_info, &outcome);
    galore_refresh_subspace(&b, cfg, ctx);
    lowrank_svd_check(&b);
}

// ---- SubTrack++: one geodesic step on the Grassmannian
//
// the launchers of the tracking kernels, each the CPU piece of the same name,
// for count matrices (1 by default: plain pointers). they take ts (device)
// where the CPU returns early: a skipped step turns the later kernels into no-ops

// top eigenvector v (R,) of H = dF^T dF (R, R); starts ts, and sets ts->skip if H == 0.
// one warp per row of H (more would idle, and every iteration syncs the block a
// few times): 32 R threads, at most OPTIM_REDUCE_BLOCK, per matrix
static void power_iteration(PerMatrix<double> v, PerMatrix<TrackScalars> ts, PerMatrix<const float> H, int r,
                            int count = 1) {
    int threads = r < OPTIM_REDUCE_BLOCK / OPTIM_WARP ? OPTIM_WARP * r : OPTIM_REDUCE_BLOCK;
    power_iteration_kernel<<<dim3(1, count), threads, 2 * (size_t)r * sizeof(double)>>>(v, ts, H, r);
    cudaCheck(cudaGetLastError());
}

// grid of the one-warp-per-row kernels over p rows
static unsigned track_row_blocks(int p) {
    return optim_blocks(p, OPTIM_BLOCK / OPTIM_WARP);
}

// u (p,) = dF v, dF (p, R)
static void track_u(PerMatrix<double> u, PerMatrix<const float> dF, PerMatrix<const double> v,
                    PerMatrix<const TrackScalars> ts, int p, int r, int count = 1) {
    track_u_kernel<<<dim3(track_row_blocks(p), count), OPTIM_BLOCK>>>(u, dF, v, ts, p, r);
    cudaCheck(cudaGetLastError());
}

// sigma = ||u||; sigma == 0 ends the step
static void track_sigma(PerMatrix<TrackScalars> ts, PerMatrix<const double> u, int p, int count = 1) {
    track_sigma_kernel<<<dim3(1, count), OPTIM_REDUCE_BLOCK>>>(ts, u, p);
    cudaCheck(cudaGetLastError());
}

// y (R,) = S^T (u / sigma), S (p, R)
static void track_project_u(PerMatrix<double> y, PerMatrix<const float> S, PerMatrix<const double> u,
                            PerMatrix<const TrackScalars> ts, int p, int r, int count = 1) {
    track_project_u_kernel<<<dim3(optim_blocks(r, OPTIM_COLS), count), dim3(OPTIM_COLS, OPTIM_ROWS)>>>(y, S, u, ts,
                                                                                                     p, r);
    cudaCheck(cudaGetLastError());
}

// u <- u / sigma - S y: u made exactly orthogonal to span(S)
static void track_orthogonalize_u(PerMatrix<double> u, PerMatrix<const float> S, PerMatrix<const double> y,
                                  PerMatrix<const TrackScalars> ts, int p, int r, int count = 1) {
    track_orthogonalize_u_kernel<<<dim3(track_row_blocks(p), count), OPTIM_BLOCK>>>(u, S, y, ts, p, r);
    cudaCheck(cudaGetLastError());
}

// ||u||, the skip test, cos and sin of eta sigma
static void track_angle(PerMatrix<TrackScalars> ts, PerMatrix<const double> u, int p, float eta, int count = 1) {
    track_angle_kernel<<<dim3(1, count), OPTIM_REDUCE_BLOCK>>>(ts, u, p, eta);
    cudaCheck(cudaGetLastError());
}

// a = (cos - 1) S v - sin u / ||u|| (p,), S <- S + a v^T
static void track_geodesic(PerMatrix<float> S, PerMatrix<float> a, PerMatrix<const double> v,
                           PerMatrix<const double> u, PerMatrix<const TrackScalars> ts, int p, int r, int count = 1) {
    track_geodesic_kernel<<<dim3(track_row_blocks(p), count), OPTIM_BLOCK>>>(S, a, v, u, ts, p, r);
    cudaCheck(cudaGetLastError());
}

// grid of the per-column kernels over the q columns of the moments' shape
static unsigned moment_column_blocks(int q, int right) {
    return optim_blocks(q, right ? OPTIM_ROWS : OPTIM_COLS);
}

// the projection with the new S: left Gt (R, q) += v (a^T G), right Gt (q, R) += (G a) v^T
static void track_update_projection(PerMatrix<float> Gt, PerMatrix<const float> G, PerMatrix<const float> a,
                                    PerMatrix<const double> v, PerMatrix<const TrackScalars> ts, int r, int p, int q,
                                    int right, int count = 1) {
    track_update_projection_kernel<<<dim3(moment_column_blocks(q, right), count), dim3(OPTIM_COLS, OPTIM_ROWS)>>>(
        Gt, G, a, v, ts, r, p, q, right);
    cudaCheck(cudaGetLastError());
}

// step 3, rank-1 form, C = I - c v v^T with c = 1 - cos(eta sigma) read from b's track
static void moments_rotate_rank1(LowRankBatchGPU* b) {
    moments_rotate_rank1_kernel<<<dim3(moment_column_blocks(b->q, b->right), b->count),
                                  dim3(OPTIM_COLS, OPTIM_ROWS)>>>(b->M, b->V, b->v, b->track, b->r, b->q, b->right);
    cudaCheck(cudaGetLastError());
}

// steps 2 (SubTrack) and 3, the CPU's efficient form, piece by piece as there
// (see subtrack_track_subspace in train_llama_subtrack.c). on entry Gt = A, the
// projection with the current S; on return S took one geodesic step, Gt is the
// projection with the new S, and with --adaptive_optimizer the moments are
// rotated. the host never waits: when dF is 0 or u is lost in span(S),
// the matrix's track->skip turns the later kernels into no-ops for it
void subtrack_track_subspace(LowRankBatchGPU* b, const cpu::LowRankConfig* cfg, LowRankGPU* ctx) {
    int n = b->n, r = b->r, p = b->p, q = b->q, count = b->count;
    // X = G A^T (p, R); in the right case A^T = Gt (q, R) and op(G) = G^T
    if (!b->right) {
        gemm_each(ctx, 0, 0, 1, p, r, q, 1.0f, b->G, n, b->Gt, q, 0.0f, b->X, r, count);
    } else {
        gemm_each(ctx, 0, 1, 0, p, r, q, 1.0f, b->G, n, b->Gt, r, 0.0f, b->X, r, count);
    }
    // dF = -2 (X - S AAt), AAt = S^T X
    gemm_each(ctx, 0, 1, 0, r, r, p, 1.0f, b->S, r, b->X, r, 0.0f, b->AAt, r, count);
    gemm_each(ctx, 0, 0, 0, p, r, r, 2.0f, b->S, r, b->AAt, r, -2.0f, b->X, r, count);
    PerMatrix<float> dF = b->X;
    gemm_each(ctx, 0, 1, 0, r, r, p, 1.0f, dF, r, dF, r, 0.0f, b->H, r, count);
    power_iteration(b->v, b->track, b->H, r, count);
    // u = dF v / sigma, then made exactly orthogonal to S
    track_u(b->u, dF, b->v, b->track, p, r, count);
    track_sigma(b->track, b->u, p, count);
    track_project_u(b->y, b->S, b->u, b->track, p, r, count);
    track_orthogonalize_u(b->u, b->S, b->y, b->track, p, r, count);
    track_angle(b->track, b->u, p, cpu::lowrank_track_eta(cfg), count);
    track_geodesic(b->S, b->a, b->v, b->u, b->track, p, r, count);
    track_update_projection(b->Gt, b->G, b->a, b->v, b->track, r, p, q, b->right, count);
    // step 3, with C = I - c v v^T, c = 1 - cos(eta sigma)
    if (cfg->adaptive_optimizer) {
        moments_rotate_rank1(b);
    }
}

// the same for one matrix, with Gt (the moments' shape) for w's
void subtrack_track_subspace(LowRankStateGPU* s, float* Gt, const float* G, const cpu::LowRankConfig* cfg,
                             LowRankGPU* ctx, const StepScratchGPU* w) {
    LowRankBatchGPU b = lowrank_batch_of_one(s, NULL, G, w, NULL, NULL);
    b.Gt = Gt;
    subtrack_track_subspace(&b, cfg, ctx);
}

// ---- steps 4-6: Adam in the subspace, recovery scaling, the update

// step 4: Adam in the subspace over the moments' shape (M, V, N, Gt):
//   M = b1 M + (1 - b1) Gt ;  V = b2 V + (1 - b2) Gt o Gt ;  N = M / (sqrt(V) + eps)
// fused with step 5's per-column norms, which need the same pass over N and Gt
// (lowrank_adam_norms_kernel): with recovery scaling it also writes
//   phi (q,) = ||N_j|| / (||Gt_j|| + 1e-8),   norm2 (q,) = ||residual_j||^2
// from the residual in D (lowrank_residual). on the CPU, step 5 computes these
// (the fused path: the residual's per-tile norms in D's memory, residual_tiles
// of them per column, from lowrank_residual_norms)
void lowrank_adam_in_subspace(LowRankBatchGPU* b, const cpu::LowRankConfig* cfg, int residual_tiles = 0) {
    lowrank_adam_norms_kernel<<<dim3(moment_column_blocks(b->q, b->right), b->count), dim3(OPTIM_COLS, OPTIM_ROWS)>>>(
        b->M, b->V, b->N, b->phi, b->norm2, b->Gt, b->D, per_matrix_cast<const double>(b->D), residual_tiles,
        b->r, b->p, b->q, b->right, cfg->recovery_scaling, cfg->beta1, cfg->beta2, cfg->eps);
    cudaCheck(cudaGetLastError());
}

// step 5: recovery scaling, Lambda = (G - S Gt) diag(phi), then the norm-growth
// limiter on ||Lambda||. step 4's kernel already computed phi and the residual's
// norms from N and Gt, so what is left is one block per matrix: ||Lambda||, the
// limiter's decision on limiter = [prev, prev_set], and its factor in scale.
// Lambda (m, n) is the residual D and stays it: step 6 scales it by phi and
// scale as it subtracts it, which saves a pass over (m, n)
void lowrank_recovery_scaling(LowRankBatchGPU* b, const cpu::LowRankConfig* cfg) {
    lowrank_limiter_kernel<<<dim3(1, b->count), OPTIM_REDUCE_BLOCK>>>(b->scale, b->limiter, b->phi, b->norm2, b->q,
                                                                      cfg->norm_growth_limiter,
                                                                      cfg->norm_growth_limit);
    cudaCheck(cudaGetLastError());
}

// the elementwise passes of steps 5-6 on count matrices (lowrank_apply_update,
// lowrank_fused_update): 4 floats a thread, vectorized when every matrix's
// arrays are 16-byte aligned (see aligned128_all)
static void recovery_apply_each(PerMatrix<float> W, PerMatrix<const float> D, PerMatrix<const float> phi,
                                PerMatrix<const float> scale, int m, int n, int right, float step, float decay,
                                int count) {
    size_t mn = (size_t)m * n;
    int vec = per_matrix_aligned128(W, count) && per_matrix_aligned128(D, count);
    lowrank_recovery_apply_kernel<<<dim3(optim_blocks(mn, OPTIM_BLOCK * Pack128<float>::size), count), OPTIM_BLOCK>>>(
        W, D, phi, scale, m, n, right, step, decay, vec);
    cudaCheck(cudaGetLastError());
}

static void weight_decay_each(PerMatrix<float> W, size_t numel, float decay, int count) {
    int vec = per_matrix_aligned128(W, count);
    weight_decay_kernel<<<dim3(optim_blocks(numel, OPTIM_BLOCK * Pack128<float>::size), count), OPTIM_BLOCK>>>(
        W, numel, decay, vec);
    cudaCheck(cudaGetLastError());
}

static void update_moments_each(PerMatrix<float> N, PerMatrix<const float> Gt, PerMatrix<const float> phi,
                                PerMatrix<const float> scale, int r, int q, int right, float alpha, int count) {
    size_t rq = (size_t)r * q;
    int vec = per_matrix_aligned128(N, count) && per_matrix_aligned128(Gt, count);
    lowrank_update_moments_kernel<<<dim3(optim_blocks(rq, OPTIM_BLOCK * Pack128<float>::size), count),
                                    OPTIM_BLOCK>>>(N, Gt, phi, scale, r, q, right, alpha, vec);
    cudaCheck(cudaGetLastError());
}

// step 6: the update, W (m, n), with the bias correction c = sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)):
//   D = alpha S N (+ Lambda) ;  W -= lr c D ;  W -= lr wd W
// in two passes: W -= lr c alpha S N straight into W (a gemm), then, with
// recovery scaling (Lambda: the residual, see step 5), one elementwise kernel
// subtracts lr c Lambda diag(phi scale) and applies the decay
void lowrank_apply_update(LowRankBatchGPU* b, int t, const cpu::LowRankConfig* cfg, float lr, LowRankGPU* ctx) {
    size_t mn = (size_t)b->m * b->n;
    double c = sqrt(1.0 - pow((double)cfg->beta2, t + 1)) / (1.0 - pow((double)cfg->beta1, t + 1));
    float step = (float)(lr * c);
    float decay = (float)((double)lr * cfg->weight_decay);
    lowrank_back_project(b->W, b, b->N, -step * cfg->low_rank_scale, 1.0f, ctx);
    if (cfg->recovery_scaling) {
        recovery_apply_each(b->W, b->D, b->phi, b->scale, b->m, b->n, b->right, step,
                            cfg->weight_decay > 0.0f ? decay : 0.0f, b->count);
    } else if (cfg->weight_decay > 0.0f) {
        weight_decay_each(b->W, mn, decay, b->count);
    }
}

// steps 4 and 6 with Adafactor in the subspace (--optimizer low_rank_adafactor), the CPU's
// lowrank_adafactor_in_subspace: adafactor_update of each matrix in turn (they share ctx's
// sums), leaving -U in N, then the decay and W += alpha S N for the whole batch
void lowrank_adafactor_in_subspace(LowRankBatchGPU* b, int t, const cpu::LowRankConfig* cfg, float lr,
                                   LowRankGPU* ctx) {
    if (ctx->adafactor_sums == NULL) {
        cpu::fatal("lowrank_adafactor_in_subspace: no Adafactor sums (set LowRankGPU.adafactor_sums)");
    }
    int rows, cols;
    cpu::lowrank_moment_shape(b->m, b->n, b->right, b->r, &rows, &cols);
    copy_each(b->N, PerMatrix<const float>(), (size_t)rows * cols, b->count);
    for (int e = 0; e < b->count; e++) {
        adafactor_update(b->N.on_host(e), b->M.on_host(e), b->V.on_host(e), b->Gt.on_host(e), rows, cols, t, lr,
                         cfg->beta1, 0.0f, ctx->adafactor_sums);
    }
    if (cfg->weight_decay > 0.0f) {
        weight_decay_each(b->W, (size_t)b->m * b->n, (float)((double)lr * cfg->weight_decay), b->count);
    }
    lowrank_back_project(b->W, b, b->N, cfg->low_rank_scale, 1.0f, ctx);
}

// ---- steps 5-6 fused (bf16 mode with recovery scaling): no residual in memory
//
// the unfused path above costs, per element of (m, n), 44 bytes after the
// projection: D = G (8), D -= S Gt (8), its norms (4), W -= a S N (8), W -= f D
// (12, with the decay). in bf16 mode, where the products are on tensor cores
// anyway (bf16 inputs; TF32 with LOWRANK_TF32), two tiled kernels
// (lowrank_residual_norms_kernel, lowrank_fused_update_kernel) do the same in 4 + 12 bytes: the residual's column norms from tiles of S Gt
// that never leave shared memory, and the update as one product S N' whose
// epilogue adds f_j G_ij and the decay, with
//   alpha S N + (G - S Gt) diag(f) = S (alpha N - Gt diag(f)) + G diag(f) = S N' + G diag(f)
// f = scale phi: Lambda = (G - S Gt) diag(phi) scaled by the limiter's factor.
// the CPU twins are lowrank_recovery_scaling and lowrank_apply_update of
// train_llama_subtrack.c, which form Lambda (they stay the reference); the
// limiter (lowrank_limiter_kernel), the bias correction and the decay are
// the unfused path's. --dtype float32 keeps the unfused path: exact fp32
// products that the fp32 twin tests hold to fp32 accuracy

// the fused path runs for this step: bf16 mode's products (bf16 or TF32),
// recovery scaling, and not turned off
static int lowrank_fused(const LowRankGPU* ctx, const cpu::LowRankConfig* cfg) {
    return ctx->products != LOWRANK_FP32 && !ctx->unfused && cfg->recovery_scaling;
}

// parts (in D's memory, (tiles of p, q) doubles) = the residual's per-tile
// column norms; returns the tiles per column, for lowrank_adam_in_subspace
static int lowrank_residual_norms(LowRankBatchGPU* b, const LowRankGPU* ctx) {
    int tiles = lowrank_residual_tiles(b->p);
    dim3 grid(tiles, (b->q + LOWRANK_TILE - 1) / LOWRANK_TILE, b->count);
    PerMatrix<double> parts = per_matrix_cast<double>(b->D);
    if (ctx->products == LOWRANK_BF16) {
        lowrank_residual_norms_kernel<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(parts, b->G, b->S, b->Gt, b->r,
                                                                                    b->p, b->q, b->right);
    } else {
        lowrank_residual_norms_kernel<LowRankTF32><<<grid, LOWRANK_TILE_THREADS>>>(parts, b->G, b->S, b->Gt, b->r,
                                                                                    b->p, b->q, b->right);
    }
    cudaCheck(cudaGetLastError());
    return tiles;
}

// step 6 with Lambda, after the limiter: N = alpha N - Gt diag(scale phi) in
// place (N is scratch, used up here), then W -= lr c (S N + G diag(scale phi)), W -= lr wd W
static void lowrank_fused_update(LowRankBatchGPU* b, int t, const cpu::LowRankConfig* cfg, float lr,
                                 const LowRankGPU* ctx) {
    double c = sqrt(1.0 - pow((double)cfg->beta2, t + 1)) / (1.0 - pow((double)cfg->beta1, t + 1));
    float step = (float)(lr * c);
    float decay = (float)((double)lr * cfg->weight_decay);
    update_moments_each(b->N, b->Gt, b->phi, b->scale, b->r, b->q, b->right, cfg->low_rank_scale, b->count);
    dim3 grid(lowrank_residual_tiles(b->p), (b->q + LOWRANK_TILE - 1) / LOWRANK_TILE, b->count);
    float dec = cfg->weight_decay > 0.0f ? decay : 0.0f;
    if (ctx->products == LOWRANK_BF16) {
        lowrank_fused_update_kernel<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(b->W, b->G, b->S, b->N, b->phi,
                                                                                  b->scale, b->r, b->p, b->q,
                                                                                  b->right, step, dec);
    } else {
        lowrank_fused_update_kernel<LowRankTF32><<<grid, LOWRANK_TILE_THREADS>>>(b->W, b->G, b->S, b->N, b->phi,
                                                                                  b->scale, b->r, b->p, b->q,
                                                                                  b->right, step, dec);
    }
    cudaCheck(cudaGetLastError());
}

// ---- the whole step

// one optimizer step for the matrices of b, the CPU's lowrank_adamw_step on
// device pointers: steps 1-6 in turn. t counts the steps already taken (0 on
// the first). lr is this step's learning rate (after the schedule). the SVD's
// verdicts (lowrank_svd_step) are left in b->info and b->svd for the caller
void lowrank_adamw_step(LowRankBatchGPU* b, int t, const cpu::LowRankConfig* cfg, float lr, LowRankGPU* ctx) {
    cpu::LowRankConfig at_t = *cfg;     // the SVD's Omega is drawn for this step
    at_t.svd_step = t;
    cfg = &at_t;
    // steps 1-3: the subspace, then Gt = S^T G (left) or G S (right) with the S of this step
    if (t == 0) {
        lowrank_timing_begin(b->timing);
        lowrank_init_subspace(b, cfg, ctx);                                // step 1
        lowrank_timing_end(b->timing);
        b->timing->updates++;
        lowrank_project(b, ctx);
    } else if (cfg->update_interval > 0 && t % cfg->update_interval == 0) {
        if (cfg->method == cpu::SUBSPACE_GALORE) {
            lowrank_timing_begin(b->timing);
            galore_refresh_subspace(b, cfg, ctx);                          // steps 2 and 3
            lowrank_timing_end(b->timing);
            lowrank_project(b, ctx);
        } else {
            lowrank_project(b, ctx);  // A, reused by the tracking step
            lowrank_timing_begin(b->timing);
            subtrack_track_subspace(b, cfg, ctx);                          // steps 2 and 3, Gt updated
            lowrank_timing_end(b->timing);
        }
        b->timing->updates++;
    } else {
        lowrank_project(b, ctx);
    }
    if (cfg->adafactor) {
        lowrank_adafactor_in_subspace(b, t, cfg, lr, ctx);                 // steps 4 and 6, Adafactor's
        return;
    }
    if (lowrank_fused(ctx, cfg)) {
        // bf16 mode: the residual's norms from tiles of S Gt, the update in one product
        int tiles = lowrank_residual_norms(b, ctx);
        lowrank_adam_in_subspace(b, cfg, tiles);                           // step 4 (+ step 5's norms)
        lowrank_recovery_scaling(b, cfg);                                  // step 5: the limiter
        lowrank_fused_update(b, t, cfg, lr, ctx);                          // step 6 with Lambda
        return;
    }
    // step 5's residual G - S Gt comes before step 4, whose kernel also takes its norms
    if (cfg->recovery_scaling) { lowrank_residual(b, ctx); }
    lowrank_adam_in_subspace(b, cfg);                                      // step 4 (+ step 5's norms)
    if (cfg->recovery_scaling) { lowrank_recovery_scaling(b, cfg); }       // step 5: the limiter
    lowrank_apply_update(b, t, cfg, lr, ctx);                              // step 6
}

// one optimizer step for one matrix: W, G (m, n), its SVD checked at once
void lowrank_adamw_step(LowRankStateGPU* s, float* W, const float* G, int t, const cpu::LowRankConfig* cfg,
                        float lr, LowRankGPU* ctx) {
    size_t used = 0;
    StepScratchGPU w = step_scratch_gpu_layout(ctx->scratch, &used, s->m, s->n, s->right, s->r, ctx->svd_oversample);
    if (used > ctx->scratch_floats) {
        fprintf(stderr, "error: lowrank_adamw_step: scratch for a %d x %d matrix at rank %d was not reserved; "
                "hint: call lowrank_gpu_reserve for every low-rank shape before lowrank_gpu_alloc\n",
                s->m, s->n, s->r);
        exit(EXIT_FAILURE);
    }
    SvdOutcome outcome;
    LowRankBatchGPU b = lowrank_batch_of_one(s, W, G, &w, ctx->eig_info, &outcome);
    lowrank_adamw_step(&b, t, cfg, lr, ctx);
    if (lowrank_svd_step(cfg, t)) { lowrank_svd_check(&b); }
}

// ---- the grouped step: every low-rank matrix of a model, in batches of one shape

#define LOWRANK_NAME_BYTES 64

// --svd randomized's SVD chunk: consecutive batches of one shape, whose SVDs
// run as one batch at the start of the first's step
typedef struct {
    int first_batch;            // its first batch
    int offset, count;          // its entries
    RsvdArraysGPU w;            // its arrays (after its shape's batch arrays in the scratch)
    SubspaceTiming timing;      // its SVDs (the batches' own timings hold the rest of their updates)
} RsvdChunkGPU;

typedef struct {
    int count;                  // matrices
    int num_batches;
    LowRankBatchGPU* batch;     // (num_batches) host
    int* matrix;                // (count) host: the matrix of each entry (batch by batch, in order)
    void** tables;              // device (LOWRANK_BATCH_FIELDS, count): each field's pointer per entry
    void** tables_host;         // host copy
    int* info;                  // device (count): each entry's devInfo
    SvdOutcome* svd;            // host (count)
    uint64_t* svd_stream;       // host (count): each entry's stream for --svd randomized's Omega
    uint64_t* svd_stream_dev;   // device copy
    int num_chunks;             // --svd randomized: the SVD's chunks (lowrank_svd_chunk), else 0
    RsvdChunkGPU* chunks;       // (num_chunks) host
    int* batch_chunk;           // (num_batches) host: each batch's chunk, or -1
    SubspaceTiming* timing;     // (num_batches)
    char (*names)[LOWRANK_NAME_BYTES];  // (count) host: what errors call each matrix
    int bound;                  // lowrank_groups_bind done
} LowRankGroupsGPU;

// points field f of entries offset.. at the next field's row of g's tables
template <typename T> static void batch_field(PerMatrix<T>* f, LowRankGroupsGPU* g, int* field, int offset) {
    size_t at = (size_t)(*field)++ * g->count + offset;
    f->one = NULL;
    f->table = (T* const*)(g->tables + at);
    f->host = (T* const*)(g->tables_host + at);
}

// entry e of a field is p (on the host: lowrank_groups_bind sends the tables)
template <typename T> static void batch_set(PerMatrix<T>* f, int e, T* p) { ((T**)f->host)[e] = p; }

// groups matrices 0..count-1 (states[k]) by shape (m, n, R), in order of first
// appearance, into batches of lowrank_batch_size of them (at most
// most_per_batch; 0: no limit), and fills the tables with the states and the
// scratch; every batch's matrices lay their arrays out one after another
// from ctx->scratch (the batches run one after another), then one SVD's
void lowrank_groups_build(LowRankGroupsGPU* g, LowRankStateGPU* states, int count, LowRankGPU* ctx,
                          int most_per_batch) {
    memset(g, 0, sizeof *g);
    g->count = count;
    g->matrix = (int*)cpu::malloc_check((size_t)count * sizeof(int), "low-rank batch entries");
    g->batch = (LowRankBatchGPU*)cpu::malloc_check((size_t)count * sizeof(LowRankBatchGPU), "low-rank batches");
    g->timing = (SubspaceTiming*)cpu::malloc_check((size_t)count * sizeof(SubspaceTiming), "batch timings");
    g->names = (char (*)[LOWRANK_NAME_BYTES])cpu::malloc_check((size_t)count * LOWRANK_NAME_BYTES, "matrix names");
    g->svd = (SvdOutcome*)cpu::calloc_check((size_t)count * sizeof(SvdOutcome), "SVD outcomes");
    g->svd_stream = (uint64_t*)cpu::calloc_check((size_t)count * sizeof(uint64_t), "SVD sketch streams");
    size_t table_bytes = (size_t)LOWRANK_BATCH_FIELDS * count * sizeof(void*);
    g->tables = (void**)device_malloc(table_bytes, "low-rank pointer tables");
    g->tables_host = (void**)cpu::calloc_check(table_bytes, "low-rank pointer tables");
    g->info = (int*)device_malloc((size_t)count * sizeof(int), "cuSOLVER info per matrix");
    g->svd_stream_dev = (uint64_t*)device_malloc((size_t)count * sizeof(uint64_t), "SVD sketch streams");
    g->chunks = (RsvdChunkGPU*)cpu::calloc_check((size_t)count * sizeof(RsvdChunkGPU), "SVD chunks");
    g->batch_chunk = (int*)cpu::malloc_check((size_t)count * sizeof(int), "SVD chunk of each batch");
    int* taken = (int*)cpu::calloc_check((size_t)count * sizeof(int), "grouped matrices");
    int entries = 0;
    for (int k = 0; k < count; k++) {
        snprintf(g->names[k], LOWRANK_NAME_BYTES, "low-rank matrix %d", k);
        if (taken[k]) { continue; }
        const LowRankStateGPU* s = &states[k];
        if (s->S == NULL || s->V == NULL) {   // (M is NULL with Adafactor's states and no first moment)
            cpu::fatal("lowrank_groups_build: matrix %d has no fp32 S or moments (8-bit states or bf16 subspaces "
                       "step one matrix at a time)", k);
        }
        int first = entries;
        for (int k2 = k; k2 < count; k2++) {
            const LowRankStateGPU* s2 = &states[k2];
            if (!taken[k2] && s2->m == s->m && s2->n == s->n && s2->r == s->r) {
                taken[k2] = 1;
                g->matrix[entries++] = k2;
            }
        }
        int per = lowrank_batch_size(s->m, s->n, s->right, s->r, entries - first, ctx->svd_oversample);
        if (most_per_batch > 0 && per > most_per_batch) { per = most_per_batch; }
        int first_batch = g->num_batches;
        for (int offset = first; offset < entries; offset += per) {
            int j = g->num_batches++;
            g->batch_chunk[j] = -1;
            LowRankBatchGPU* b = &g->batch[j];
            b->m = s->m; b->n = s->n; b->r = s->r; b->right = s->right; b->p = s->p; b->q = s->q;
            b->count = entries - offset < per ? entries - offset : per;
            size_t need = lowrank_batch_scratch_floats(b->m, b->n, b->right, b->r, b->count, ctx->svd_oversample);
            if (need > ctx->scratch_floats || ctx->scratch == NULL) {
                cpu::fatal("lowrank_groups_build: scratch for %d matrices %d x %d at rank %d was not reserved; "
                           "hint: call lowrank_gpu_reserve_group for every shape before lowrank_gpu_alloc",
                           b->count, b->m, b->n, b->r);
            }
            int field = 0;
            PerMatrix<float>* floats[] = {&b->S, &b->M, &b->V, &b->limiter, &b->W, &b->Gt, &b->N, &b->phi,
                                          &b->scale, &b->D, &b->X, &b->AAt, &b->H, &b->a, &b->S_old, &b->C,
                                          &b->CC, &b->Mrot, &b->Xm};
            for (size_t f = 0; f < sizeof floats / sizeof floats[0]; f++) {
                batch_field(floats[f], g, &field, offset);
            }
            batch_field(&b->G, g, &field, offset);
            PerMatrix<double>* doubles[] = {&b->norm2, &b->v, &b->u, &b->y};
            for (size_t f = 0; f < sizeof doubles / sizeof doubles[0]; f++) {
                batch_field(doubles[f], g, &field, offset);
            }
            batch_field(&b->track, g, &field, offset);
            if (field != LOWRANK_BATCH_FIELDS) {
                cpu::fatal("LOWRANK_BATCH_FIELDS is %d, but a batch has %d tables", LOWRANK_BATCH_FIELDS, field);
            }
            size_t used = 0;
            for (int e = 0; e < b->count; e++) {
                const LowRankStateGPU* se = &states[g->matrix[offset + e]];
                StepScratchGPU w = step_scratch_matrix_layout(ctx->scratch, &used, b->m, b->n, b->right, b->r);
                batch_set(&b->S, e, se->S); batch_set(&b->M, e, se->M); batch_set(&b->V, e, se->V);
                batch_set(&b->limiter, e, se->limiter);
                batch_set(&b->Gt, e, w.Gt); batch_set(&b->N, e, w.N); batch_set(&b->phi, e, w.phi);
                batch_set(&b->scale, e, w.scale); batch_set(&b->D, e, w.D); batch_set(&b->X, e, w.X);
                batch_set(&b->AAt, e, w.AAt); batch_set(&b->H, e, w.H); batch_set(&b->a, e, w.a);
                batch_set(&b->S_old, e, w.S_old); batch_set(&b->C, e, w.C); batch_set(&b->CC, e, w.CC);
                batch_set(&b->Mrot, e, w.Mrot); batch_set(&b->Xm, e, w.Xm);
                batch_set(&b->norm2, e, w.norm2); batch_set(&b->v, e, w.v); batch_set(&b->u, e, w.u);
                batch_set(&b->y, e, w.y); batch_set(&b->track, e, w.track);
                g->svd_stream[offset + e] = se->svd_stream;
            }
            StepScratchGPU svd;
            if (ctx->svd_oversample < 0) {
                step_scratch_svd_layout(&svd, ctx->scratch, &used, b->m, b->n, b->right, b->r, -1);
            } else {
                memset(&svd, 0, sizeof svd);  // the SVD's arrays are its chunk's (below)
            }
            b->K = svd.K;
            b->eig = svd.eig;
            b->rsvd = svd.rsvd;
            b->svd_result = NULL;
            b->svd_stream = g->svd_stream + offset;
            b->svd_stream_dev = g->svd_stream_dev + offset;
            b->info = g->info + offset;
            b->svd = g->svd + offset;
            subspace_timing_init(&g->timing[j]);
            b->timing = &g->timing[j];
        }
        if (ctx->svd_oversample < 0) { continue; }
        // --svd randomized: chunks of whole batches, their arrays after the batch arrays of this shape
        // (at most the reserved chunk: a smaller per could round to a larger multiple)
        int chunk = lowrank_svd_chunk(s->m, s->n, s->right, s->r, ctx->svd_oversample, per, entries - first);
        int most = lowrank_batch_size(s->m, s->n, s->right, s->r, entries - first, ctx->svd_oversample);
        int reserved = lowrank_svd_chunk(s->m, s->n, s->right, s->r, ctx->svd_oversample, most, entries - first);
        if (chunk > reserved) { chunk = reserved; }
        size_t base = lowrank_batch_scratch_floats(s->m, s->n, s->right, s->r, per, -1) -
                      lowrank_batch_scratch_floats(s->m, s->n, s->right, s->r, 0, -1);
        for (int j = first_batch; j < g->num_batches;) {
            RsvdChunkGPU* c = &g->chunks[g->num_chunks];
            c->first_batch = j;
            c->offset = (int)(g->batch[j].info - g->info);
            c->count = 0;
            while (j < g->num_batches && (c->count == 0 || c->count + g->batch[j].count <= chunk)) {
                c->count += g->batch[j].count;
                g->batch_chunk[j++] = g->num_chunks;
            }
            size_t used = base;
            c->w = rsvd_arrays_layout(ctx->scratch, &used, s->m, s->n, s->right, s->r, ctx->svd_oversample, c->count);
            if (used > ctx->scratch_floats) {
                cpu::fatal("lowrank_groups_build: scratch for the SVDs of %d matrices %d x %d at rank %d was not "
                           "reserved; hint: call lowrank_gpu_reserve_group for every shape before lowrank_gpu_alloc",
                           c->count, s->m, s->n, s->r);
            }
            subspace_timing_init(&c->timing);
            g->num_chunks++;
        }
    }
    free(taken);
    cudaCheck(cudaMemcpy(g->svd_stream_dev, g->svd_stream, (size_t)count * sizeof(uint64_t), cudaMemcpyHostToDevice));
}

// each matrix k's weight W[k] and gradient G[k] (device, (m, n)); then the
// tables go to the device, whole, once: nothing in them moves after this
void lowrank_groups_bind(LowRankGroupsGPU* g, float* const* W, const float* const* G) {
    for (int j = 0; j < g->num_batches; j++) {
        LowRankBatchGPU* b = &g->batch[j];
        int offset = (int)(b->info - g->info);
        for (int e = 0; e < b->count; e++) {
            int k = g->matrix[offset + e];
            batch_set(&b->W, e, W[k]);
            batch_set(&b->G, e, G[k]);
        }
    }
    // in stream order, without a wait: the first step binds, and tables_host
    // lives as long as the tables (a pageable source is staged at the call)
    cudaCheck(cudaMemcpyAsync(g->tables, g->tables_host, (size_t)LOWRANK_BATCH_FIELDS * g->count * sizeof(void*),
                              cudaMemcpyHostToDevice, 0));
    g->bound = 1;
}

// one step of every matrix (the per-matrix step's results, bit for bit), batch
// by batch; with pr, a progress line's count after each batch (a sync each: the
// SVD phases, where a line every few seconds is worth it). on an SVD step every
// matrix's devInfo comes back in one read, after all of them, and the first
// failure stops the run, naming the matrix (g->names)
void lowrank_groups_step(LowRankGroupsGPU* g, int t, const cpu::LowRankConfig* cfg, float lr, LowRankGPU* ctx,
                         cpu::Progress* pr) {
    if (!g->bound) {
        cpu::fatal("lowrank_groups_step: the weights and gradients were not bound (lowrank_groups_bind)");
    }
    int done = 0;
    for (int j = 0; j < g->num_batches; j++) {
        LowRankBatchGPU* b = &g->batch[j];
        b->svd_result = NULL;
        if (cfg->svd_randomized && lowrank_svd_step(cfg, t) && g->batch_chunk[j] >= 0) {
            // the SVDs of this batch's chunk, as one batch, when its first batch comes; each
            // batch's step then takes its S from there (lowrank_subspace_svd)
            RsvdChunkGPU* c = &g->chunks[g->batch_chunk[j]];
            if (c->first_batch == j) {
                RsvdBatchGPU rb = {c->count, b->m, b->n, b->right, b->r, b->G, 0, g->svd_stream_dev + c->offset, c->w,
                                   g->info + c->offset, g->svd + c->offset};
                cpu::SvdSketch sk = {cfg->svd_oversample, cfg->svd_power_iters, cfg->svd_seed, (uint64_t)t, 0};
                lowrank_timing_begin(&c->timing);
                if (cpu::lowrank_golore_at(cfg, t)) {
                    golore_random_basis(&rb, &sk, ctx);        // --rand_proj: random subspaces instead
                } else {
                    svd_randomized_top_left_singular_vectors(&rb, &sk, ctx);
                }
                lowrank_timing_end(&c->timing);
            }
            int offset = (int)(b->info - g->info);
            b->svd_result = c->w.S + (size_t)(offset - c->offset) * b->p * b->r;
        }
        lowrank_adamw_step(b, t, cfg, lr, ctx);
        done += g->batch[j].count;
        if (pr != NULL) {
            cudaCheck(cudaDeviceSynchronize());
            cpu::progress_update(pr, done);
        }
    }
    if (!lowrank_svd_step(cfg, t)) { return; }
    int* info = (int*)cpu::malloc_check((size_t)g->count * sizeof(int), "cuSOLVER info");
    cudaCheck(cudaMemcpy(info, g->info, (size_t)g->count * sizeof(int), cudaMemcpyDeviceToHost));
    for (int j = 0; j < g->num_batches; j++) {
        const LowRankBatchGPU* b = &g->batch[j];
        int offset = (int)(b->info - g->info);
        for (int e = 0; e < b->count; e++) {
            svd_outcome_check(&b->svd[e], info[offset + e], b->m, b->n, b->right, b->r,
                              g->names[g->matrix[offset + e]]);
        }
    }
    free(info);
}

// seconds the batches spent in subspace updates so far
double lowrank_groups_subspace_seconds(LowRankGroupsGPU* g) {
    double s = 0.0;
    for (int j = 0; j < g->num_batches; j++) {
        subspace_timing_collect(&g->timing[j]);
        s += g->timing[j].seconds;
    }
    for (int c = 0; c < g->num_chunks; c++) {
        subspace_timing_collect(&g->chunks[c].timing);
        s += g->chunks[c].timing.seconds;
    }
    return s;
}

void lowrank_groups_free(LowRankGroupsGPU* g) {
    for (int j = 0; j < g->num_batches; j++) { subspace_timing_free(&g->timing[j]); }
    for (int c = 0; c < g->num_chunks; c++) { subspace_timing_free(&g->chunks[c].timing); }
    cudaCheck(cudaFree(g->tables));
    cudaCheck(cudaFree(g->info));
    cudaCheck(cudaFree(g->svd_stream_dev));
    free(g->chunks);
    free(g->batch_chunk);
    free(g->tables_host);
    free(g->matrix);
    free(g->batch);
    free(g->timing);
    free(g->names);
    free(g->svd);
    free(g->svd_stream);
    memset(g, 0, sizeof *g);
}

typedef struct {
    cpu::Optimizer host;      // settings, state layout, and host copies for checkpoints
    float* adam_m;            // (num_adam) device; NULL when there is none (adafactor without a first moment)
    float* adam_v;            // (num_adam, or adafactor's num_adam_v) device
    float* lowrank_memory;    // (lowrank_floats) device, the CPU's layout; with bf16 subspaces, less every S
    LowRankStateGPU* lowrank; // (host.num_lowrank) pointing into lowrank_memory
    bf16* subspaces;          // (host.subspace_floats) device, --subspace_dtype bfloat16: every S, in state order
    float* subspace_work;     // (host.subspace_most) device: the S of the matrix being updated, widened
    uint16_t* subspace_host;  // (host.subspace_most) host: one S's bf16 bits, for download and upload
    LowRankGPU ctx;           // handles and device scratch of the low-rank steps
    float* staging;           // (staging_floats) device: bf16 weights widened for their update; or NULL
    size_t staging_floats;
    uint8_t* q8_codes;        // 8-bit states (host.q8): device copies of the host layout's codes,
    float* q8_absmax;         // scales,
    float* q8_maps;           // (2, 256) the signed and unsigned maps,
    float* q8_scratch;        // (2 host.q8_chunk) and the dequantized M and V of one unit
    size_t adam_offset[NUM_PARAMETER_TENSORS];  // where each AdamW tensor's moments start
    size_t stats_offset[NUM_PARAMETER_TENSORS]; // --optimizer adafactor: where each tensor's statistics start
    double* adafactor_sums;   // (ADAFACTOR_SUMS) device, adafactor_update's sums; else NULL
    int lowrank_first[NUM_PARAMETER_TENSORS];   // the low-rank state of each layer matrix's layer 0
    int grouped;              // 1: whole steps update the low-rank matrices in batches of one shape (groups)
    LowRankGroupsGPU groups;
    const float* bound_params;  // the model buffers the groups' tables point into (bound at a step)
    const float* bound_grads;
    Llama* model;             // per-layer updates: the model whose units arrive (optimizer_attach_per_layer)
    float lr;                 // per-layer updates: this step's learning rate
    // ZeRO-1 (--zero_stage 1 over zero_ranks > 1 ranks): this rank keeps and
    // updates only the pieces of cpu::shard_plan_build it owns; after a step
    // each owner broadcasts its pieces' weights. the host copies stay whole
    // (each rank writes its pieces to a checkpoint shard of its own, and a
    // resume reads every shard). otherwise every state is here
    int zero_rank, zero_ranks;
    cpu::ShardPlan shards;
    int num_owned;            // the low-rank states on this device: lowrank[0..num_owned)
    int* matrix_slot;         // (host.num_lowrank) matrix k's place in lowrank, or -1: another rank's
    size_t* slot_at;          // (num_owned) where each sits in lowrank_memory
    size_t* piece_adam;       // (shards.num_pieces) an owned AdamW piece's offset in adam_m and adam_v
    size_t adam_floats;       // floats of adam_m and adam_v on this device
    size_t lowrank_device_floats;  // floats of lowrank_memory on this device
    // ZeRO-1 in bf16 with masters: the fp32 masters are sharded too. the model
    // keeps bf16 weights only; this rank's pieces' masters live here, and a
    // step rounds them to the bf16 weights (to nearest, as the copy of whole
    // masters is) before the owners broadcast those bf16 weights
    float* masters;           // (masters_floats) device, or NULL: the model's fp32 weights are the masters
    size_t masters_floats;
    size_t* piece_master;     // (shards.num_pieces) an owned piece's offset in masters
    int* slot_piece;          // (num_owned) the piece of each low-rank slot
    float* host_params;       // the host's fp32 masters (whole, table layout): checkpoints go through them
    size_t tensor_at[NUM_PARAMETER_TENSORS];  // each tensor's offset in the table layout
} Optimizer;

static void dp_broadcast_bf16(bf16* x, size_t count, int root);

// data parallel (defined with the trainer's ranks below): a group of
// collectives, and count floats from rank root to every rank, in place
static void dp_group_start(void);
static void dp_group_end(void);
static void dp_broadcast_floats(float* x, size_t count, int root);
static int dp_rank(void);

// the device floats of the low-rank states: the CPU's, less every S when
// those are kept in bf16 apart (--subspace_dtype bfloat16)
static size_t optimizer_device_lowrank_floats(const cpu::Optimizer* h) {
    return h->lowrank_floats - (h->subspace_bf16 ? h->subspace_floats : 0);
}

// fp32 floats to update bf16-only weights in (--master_weights 0 with bf16):
// the largest layer matrix, whole, as a low-rank step needs it; AdamW
// tensors, which are elementwise, go through it in chunks of this size
size_t optimizer_staging_floats(const cpu::LlamaConfig* c, const cpu::TrainConfig* t) {
    if (!llama_weights_bf16_only(dtype_from_name(t->dtype), t->master_weights)) { return 0; }
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, c);
    size_t most = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t per = (size_t)spec[i].rows * spec[i].cols;
        if (spec[i].is_layer_matrix && per > most) { most = per; }
    }
    // 8-bit AdamW tensors go through it in chunks of whole quantization blocks
    cpu::Optimizer o;
    if (cpu::optimizer_plan(&o, c, t) == NULL && o.q8 && o.q8_chunk > most) { most = o.q8_chunk; }
    return most;
}

// whether whole steps update the low-rank matrices of h in batches of one shape
// (lowrank_groups_step). not with per-layer updates, whose matrices arrive one
// by one in the backward, nor when a step stages each matrix through a buffer
// of one (8-bit moments, bf16 subspaces, bf16-only weights): those flags exist
// to save memory, which batches of staged matrices would spend
static int optimizer_grouped(const cpu::Optimizer* h, int bf16_only) {
    return h->num_lowrank > 0 && !h->per_layer && !h->q8 && !h->subspace_bf16 && !bf16_only;
}

#define MAX_LOWRANK_SHAPES NUM_PARAMETER_TENSORS

// the distinct shapes (m, n) of the low-rank matrices of model c under h, in
// table order, with how many matrices have each: shapes[i] = {m, n, count}
static int optimizer_lowrank_shapes(int shapes[MAX_LOWRANK_SHAPES][3], const cpu::Optimizer* h,
                                    const cpu::LlamaConfig* c) {
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, c);
    int num = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (!cpu::optimizer_uses_lowrank(h, &spec[i])) { continue; }
        int s = 0;
        while (s < num && !(shapes[s][0] == spec[i].rows && shapes[s][1] == spec[i].cols)) { s++; }
        if (s == num) { shapes[num][0] = spec[i].rows; shapes[num][1] = spec[i].cols; shapes[num++][2] = 0; }
        shapes[s][2] += spec[i].layers;
    }
    return num;
}

// ZeRO-1: the sizes of what rank keeps of plan sp (model c under t): its
// AdamW floats (each of M and V), its low-rank states' floats, how many
// low-rank matrices of each of the shapes (optimizer_lowrank_shapes)
typedef struct {
    size_t adam_floats, lowrank_floats;
    size_t masters_floats;    // the fp32 masters of its pieces (when they are sharded)
    int owned;
    int per_shape[MAX_LOWRANK_SHAPES];
} ZeroShare;

static size_t zero_piece_floats(const cpu::ShardPiece* pc, const cpu::TensorSpec* spec, const cpu::TrainConfig* t) {
    int m = spec[pc->tensor].rows, n = spec[pc->tensor].cols;
    int right = cpu::lowrank_right(m, n, (cpu::ProjType)cpu::proj_type_parse(t->proj_type));
    return pc->low_rank ? cpu::lowrank_state_num_floats(m, n, right, t->rank) : 2 * pc->count;  // M then V
}

static void zero_share(ZeroShare* z, const cpu::ShardPlan* sp, const cpu::LlamaConfig* c, const cpu::TrainConfig* t,
                       int rank, const int shapes[][3], int num_shapes) {
    memset(z, 0, sizeof *z);
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, c);
    for (int p = 0; p < sp->num_pieces; p++) {
        const cpu::ShardPiece* pc = &sp->pieces[p];
        size_t floats = zero_piece_floats(pc, spec, t);
        if (pc->owner != rank) { continue; }
        z->masters_floats += pc->count;
        if (!pc->low_rank) { z->adam_floats += pc->count; continue; }
        z->lowrank_floats += floats;
        z->owned++;
        for (int s = 0; s < num_shapes; s++) {
            z->per_shape[s] += shapes[s][0] == spec[pc->tensor].rows && shapes[s][1] == spec[pc->tensor].cols;
        }
    }
}

// the states this device keeps: all of them, or with ZeRO-1 the low-rank
// matrices and AdamW pieces that rank owns (whole steps in batches only:
// train_config_problem refuses --zero_stage 1 with the lean modes)
static const char* optimizer_place_states(Optimizer* o, const cpu::LlamaConfig* c, const cpu::TrainConfig* t,
                                          int rank, int ranks, int shard_masters) {
    cpu::Optimizer* h = &o->host;
    int nl = h->num_lowrank;
    o->zero_rank = rank;
    o->zero_ranks = ranks > 1 ? ranks : 0;
    o->matrix_slot = (int*)cpu::malloc_check((size_t)(nl > 0 ? nl : 1) * sizeof(int), "matrix slots");
    o->slot_at = (size_t*)cpu::malloc_check((size_t)(nl > 0 ? nl : 1) * sizeof(size_t), "slot offsets");
    o->lowrank_device_floats = optimizer_device_lowrank_floats(h);
    o->adam_floats = h->num_adam;
    if (o->zero_ranks == 0) {
        for (int k = 0; k < nl; k++) { o->matrix_slot[k] = k; }
        o->num_owned = nl;
        return NULL;
    }
    if (h->q8 || h->subspace_bf16 || h->per_layer) { return "--zero_stage 1 shards whole-step fp32 states only"; }
    const char* problem = cpu::shard_plan_build(&o->shards, c, t, ranks);
    if (problem != NULL) { return problem; }
    o->piece_adam = (size_t*)cpu::malloc_check((size_t)o->shards.num_pieces * sizeof(size_t), "piece offsets");
    o->piece_master = (size_t*)cpu::malloc_check((size_t)o->shards.num_pieces * sizeof(size_t), "master offsets");
    o->slot_piece = (int*)cpu::malloc_check((size_t)(nl > 0 ? nl : 1) * sizeof(int), "slot pieces");
    for (int k = 0; k < nl; k++) { o->matrix_slot[k] = -1; }
    int first[NUM_PARAMETER_TENSORS], k = 0;
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, c);
    size_t at = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        first[i] = k;
        if (cpu::optimizer_uses_lowrank(h, &spec[i])) { k += spec[i].layers; }
        o->tensor_at[i] = at;
        at += cpu::tensor_numel(&spec[i]);
    }
    o->num_owned = 0;
    o->adam_floats = 0;
    o->lowrank_device_floats = 0;
    for (int p = 0; p < o->shards.num_pieces; p++) {
        const cpu::ShardPiece* pc = &o->shards.pieces[p];
        size_t floats = zero_piece_floats(pc, spec, t);
        o->piece_adam[p] = SIZE_MAX;
        o->piece_master[p] = SIZE_MAX;
        if (pc->owner != rank) { continue; }
        if (shard_masters) {
            o->piece_master[p] = o->masters_floats;
            o->masters_floats += pc->count;
        }
        if (pc->low_rank) {
            int matrix = first[pc->tensor] + pc->layer;
            o->matrix_slot[matrix] = o->num_owned;
            o->slot_piece[o->num_owned] = p;
            o->slot_at[o->num_owned++] = o->lowrank_device_floats;
            o->lowrank_device_floats += floats;
        } else {
            o->piece_adam[p] = o->adam_floats;
            o->adam_floats += pc->count;
        }
    }
    if (shard_masters) {
        o->masters = (float*)device_malloc(o->masters_floats * sizeof(float), "fp32 masters, this rank's pieces");
    }
    return NULL;
}

const char* optimizer_build_sharded(Optimizer* o, const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int rank,
                                    int ranks, int shard_masters);

// returns NULL, or a message naming the matrix whose shape cannot take the rank
const char* optimizer_build(Optimizer* o, const cpu::LlamaConfig* c, const cpu::TrainConfig* t) {
    return optimizer_build_sharded(o, c, t, 0, 0, 0);
}

// the fp32 masters are sharded with the states (ZeRO-1 over ranks > 1, bf16
// weights with masters): the model is then built with bf16 weights only
static int zero_shards_masters(const cpu::TrainConfig* t, int ranks) {
    return t->zero_stage == 1 && ranks > 1 && t->master_weights && dtype_from_name(t->dtype) == DTYPE_BFLOAT16;
}

// optimizer_build for rank of ranks: with ranks > 1 (ZeRO-1), only the states
// rank owns, and with shard_masters (zero_shards_masters) their fp32 masters
const char* optimizer_build_sharded(Optimizer* o, const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int rank,
                                    int ranks, int shard_masters) {
    memset(o, 0, sizeof *o);
    const char* problem = cpu::optimizer_build(&o->host, c, t);
    if (problem == NULL) { problem = optimizer_place_states(o, c, t, rank, ranks, shard_masters); }
    if (problem != NULL) { return problem; }
    // none without moments (adafactor with beta1 0); V none with --optimizer sgd, adafactor's statistics
    o->adam_m = o->adam_floats > 0 ? (float*)device_malloc(o->adam_floats * sizeof(float), "AdamW first moments")
                                   : NULL;
    size_t v_floats = o->host.adafactor ? o->host.num_adam_v : o->host.num_adam_v > 0 ? o->adam_floats : 0;
    o->adam_v = v_floats > 0 ? (float*)device_malloc(v_floats * sizeof(float), "AdamW second moments") : NULL;
    if (o->host.adafactor) {
        o->adafactor_sums = (double*)device_malloc(ADAFACTOR_SUMS * sizeof(double), "Adafactor sums");
    }
    size_t device_floats = o->lowrank_device_floats;
    o->lowrank_memory = (float*)device_malloc(device_floats * sizeof(float), "low-rank state memory");
    if (o->adam_m != NULL) { cuda_check(cudaMemset(o->adam_m, 0, o->adam_floats * sizeof(float))); }
    if (o->adam_v != NULL) { cuda_check(cudaMemset(o->adam_v, 0, v_floats * sizeof(float))); }
    cuda_check(cudaMemset(o->lowrank_memory, 0, device_floats * sizeof(float)));
    if (o->host.subspace_bf16) {
        o->subspaces = (bf16*)device_malloc(o->host.subspace_floats * sizeof(bf16), "subspaces S, bf16");
        o->subspace_work = (float*)device_malloc(o->host.subspace_most * sizeof(float), "subspace S widened");
        o->subspace_host = (uint16_t*)cpu::malloc_check(o->host.subspace_most * sizeof(uint16_t), "subspace bits");
    }
    // each device state sits at the offset its CPU twin has in host.lowrank_memory
    // (with bf16 subspaces, less the S before it, which sit in o->subspaces)
    int nl = o->host.num_lowrank;
    int owned = o->num_owned;
    o->lowrank = (LowRankStateGPU*)cpu::calloc_check((size_t)(owned > 0 ? owned : 1) * sizeof(LowRankStateGPU),
                                                     "low-rank states");
    lowrank_gpu_create(&o->ctx);
    o->ctx.adafactor_sums = o->adafactor_sums;   // low_rank_adafactor's steps in the subspace
    o->ctx.products = dtype_from_name(t->dtype) == DTYPE_BFLOAT16 ? LOWRANK_BF16 : LOWRANK_FP32;
    o->ctx.svd_oversample = o->host.cfg.svd_randomized ? o->host.cfg.svd_oversample : -1;
    for (int k = 0; k < nl; k++) {
        const cpu::LowRankState* hs = &o->host.lowrank[k];
        if (o->matrix_slot[k] >= 0) { lowrank_gpu_reserve(&o->ctx, hs->m, hs->n, hs->right, hs->r); }
    }
    o->grouped = optimizer_grouped(&o->host, llama_weights_bf16_only(dtype_from_name(t->dtype), t->master_weights));
    int shapes[MAX_LOWRANK_SHAPES][3];
    int num_shapes = o->grouped ? optimizer_lowrank_shapes(shapes, &o->host, c) : 0;
    for (int s = 0; s < num_shapes; s++) {
        int here = 0;  // the matrices of this shape on this device
        for (int k = 0; k < nl; k++) {
            const cpu::LowRankState* hs = &o->host.lowrank[k];
            here += o->matrix_slot[k] >= 0 && hs->m == shapes[s][0] && hs->n == shapes[s][1];
        }
        if (here > 0) {
            int m = shapes[s][0], n = shapes[s][1];
            lowrank_gpu_reserve_group(&o->ctx, m, n, cpu::lowrank_right(m, n, o->host.cfg.proj_type), t->rank, here);
        }
    }
    if (owned > 0) { lowrank_gpu_alloc(&o->ctx); }  // AdamW alone needs no scratch
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, c);
    size_t adam = 0, stats = 0;
    int k = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        o->adam_offset[i] = adam;
        o->stats_offset[i] = stats;
        o->lowrank_first[i] = k;
        if (cpu::optimizer_uses_lowrank(&o->host, &spec[i])) {
            k += spec[i].layers;
        } else if (o->host.adafactor) {   // the CPU's layout (cpu::optimizer_step)
            adam += o->host.num_adam > 0 ? cpu::tensor_numel(&spec[i]) : 0;
            stats += (size_t)spec[i].layers * cpu::adafactor_stats_floats(spec[i].rows, spec[i].cols);
        } else if (o->host.adam8bit) {   // the CPU's layout: fp32 moments for the small ones only
            adam += cpu::adam8bit_q8(&spec[i]) ? 0 : cpu::tensor_numel(&spec[i]);
        } else if (!cpu::optimizer_adamw_q8(&o->host, &spec[i])) {
            adam += cpu::tensor_numel(&spec[i]);
        }
    }
    if (cpu::optimizer_has_q8(&o->host)) {
        cpu::Optimizer* h = &o->host;
        o->q8_codes = (uint8_t*)device_malloc(h->q8_bytes, "8-bit optimizer states");
        o->q8_absmax = (float*)device_malloc(h->q8_blocks * sizeof(float), "8-bit state scales");
        o->q8_maps = (float*)device_malloc(2 * QUANT8_MAP_SIZE * sizeof(float), "8-bit maps");
        o->q8_scratch = (float*)device_malloc(2 * h->q8_chunk * sizeof(float), "8-bit state scratch");
        cuda_check(cudaMemset(o->q8_codes, 0, h->q8_bytes));
        cuda_check(cudaMemset(o->q8_absmax, 0, h->q8_blocks * sizeof(float)));
        cuda_check(cudaMemcpy(o->q8_maps, h->q8_map, 2 * QUANT8_MAP_SIZE * sizeof(float), cudaMemcpyHostToDevice));
    }
    o->staging_floats = optimizer_staging_floats(c, t);
    if (o->staging_floats > 0) {
        o->staging = (float*)device_malloc(o->staging_floats * sizeof(float), "bf16 weights' update staging");
    }
    size_t S_before = 0;
    for (int k = 0; k < nl; k++) {
        const cpu::LowRankState* hs = &o->host.lowrank[k];
        if (o->zero_ranks > 0) {  // ZeRO-1: fp32 states, packed
            int slot = o->matrix_slot[k];
            if (slot < 0) { continue; }
            lowrank_state_layout(&o->lowrank[slot], hs->m, hs->n, hs->right, hs->r,
                                 o->lowrank_memory + o->slot_at[slot], cpu::STATES_ADAM, NULL);
            o->lowrank[slot].svd_stream = hs->svd_stream;
            continue;
        }
        if (o->host.subspace_bf16) {
            float* memory = o->lowrank_memory + (hs->memory - o->host.lowrank_memory) - S_before;
            lowrank_state_layout(&o->lowrank[k], hs->m, hs->n, hs->right, hs->r, memory,
                                 cpu::optimizer_lowrank_states(&o->host), o->subspaces + S_before);
            S_before += (size_t)hs->p * hs->r;
        } else {
            float* memory = o->lowrank_memory + (hs->memory - o->host.lowrank_memory);
            lowrank_state_layout(&o->lowrank[k], hs->m, hs->n, hs->right, hs->r, memory,
                                 cpu::optimizer_lowrank_states(&o->host), NULL);
        }
        o->lowrank[k].svd_stream = hs->svd_stream;
    }
    if (o->grouped && owned > 0) {
        lowrank_groups_build(&o->groups, o->lowrank, owned, &o->ctx, 0);
        for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
            if (!cpu::optimizer_uses_lowrank(&o->host, &spec[i])) { continue; }
            for (int l = 0; l < spec[i].layers; l++) {
                int matrix = o->lowrank_first[i] + l;
                if (o->matrix_slot[matrix] < 0) { continue; }
                snprintf(o->groups.names[o->matrix_slot[matrix]], LOWRANK_NAME_BYTES, "low-rank matrix %d: %s, "
                         "layer %d", matrix, spec[i].name, l);
            }
        }
    }
    return NULL;
}

void optimizer_free(Optimizer* o) {
    if (o->grouped && o->num_owned > 0) { lowrank_groups_free(&o->groups); }
    for (int k = 0; k < o->num_owned; k++) { lowrank_state_free(&o->lowrank[k]); }
    free(o->lowrank);
    free(o->matrix_slot);
    free(o->slot_at);
    free(o->piece_adam);
    free(o->piece_master);
    free(o->slot_piece);
    if (o->masters != NULL) { cuda_check(cudaFree(o->masters)); }
    cpu::shard_plan_free(&o->shards);
    lowrank_gpu_destroy(&o->ctx);
    if (o->adam_m != NULL) { cuda_check(cudaFree(o->adam_m)); }
    if (o->adam_v != NULL) { cuda_check(cudaFree(o->adam_v)); }
    if (o->adafactor_sums != NULL) { cuda_check(cudaFree(o->adafactor_sums)); }
    cuda_check(cudaFree(o->lowrank_memory));
    if (o->subspaces != NULL) {
        cuda_check(cudaFree(o->subspaces));
        cuda_check(cudaFree(o->subspace_work));
        free(o->subspace_host);
    }
    if (o->staging != NULL) { cuda_check(cudaFree(o->staging)); }
    if (cpu::optimizer_has_q8(&o->host)) {
        cuda_check(cudaFree(o->q8_codes));
        cuda_check(cudaFree(o->q8_absmax));
        cuda_check(cudaFree(o->q8_maps));
        cuda_check(cudaFree(o->q8_scratch));
    }
    cpu::optimizer_free(&o->host);
    memset(o, 0, sizeof *o);
}

// the low-rank states between the device and their host copies, in the CPU's
// layout. with bf16 subspaces each state is two pieces: S (bf16 on the
// device, fp32 on the host: widening is exact, and so is the narrowing of a
// bf16 value; the host's S are rounded to bf16 as a checkpoint is read,
// cpu::optimizer_round_subspaces_nearest) and the rest
static void optimizer_lowrank_copy(Optimizer* o, int to_host) {
    cpu::Optimizer* h = &o->host;
    if (!h->subspace_bf16) {
        if (to_host) {
            cuda_check(cudaMemcpy(h->lowrank_memory, o->lowrank_memory, h->lowrank_floats * sizeof(float),
                                  cudaMemcpyDeviceToHost));
        } else {
            cuda_check(cudaMemcpy(o->lowrank_memory, h->lowrank_memory, h->lowrank_floats * sizeof(float),
                                  cudaMemcpyHostToDevice));
        }
        return;
    }
    for (int k = 0; k < h->num_lowrank; k++) {
        cpu::LowRankState* hs = &h->lowrank[k];
        LowRankStateGPU* ds = &o->lowrank[k];
        size_t pr = (size_t)hs->p * hs->r;
        size_t rest = hs->num_floats - pr;
        if (to_host) {
            cuda_check(cudaMemcpy(o->subspace_host, ds->S16, pr * sizeof(bf16), cudaMemcpyDeviceToHost));
            for (size_t j = 0; j < pr; j++) { hs->S[j] = cpu::fp32_from_bits((uint32_t)o->subspace_host[j] << 16); }
            cuda_check(cudaMemcpy(hs->memory + pr, ds->memory, rest * sizeof(float), cudaMemcpyDeviceToHost));
        } else {
            for (size_t j = 0; j < pr; j++) {
                o->subspace_host[j] = (uint16_t)(cpu::fp32_to_bits(cpu::bf16_round_nearest(hs->S[j])) >> 16);
            }
            cuda_check(cudaMemcpy(ds->S16, o->subspace_host, pr * sizeof(bf16), cudaMemcpyHostToDevice));
            cuda_check(cudaMemcpy(ds->memory, hs->memory + pr, rest * sizeof(float), cudaMemcpyHostToDevice));
        }
    }
}

// where piece p's states are on the host (whole layout) and on this device;
// floats: how many (an AdamW piece: M, then V as many again)
static void optimizer_piece_places(Optimizer* o, int p, float** host_m, float** host_v, float** dev_m,
                                   float** dev_v, size_t* floats) {
    const cpu::ShardPiece* pc = &o->shards.pieces[p];
    cpu::Optimizer* h = &o->host;
    if (pc->low_rank) {
        int matrix = o->lowrank_first[pc->tensor] + pc->layer;
        const cpu::LowRankState* hs = &h->lowrank[matrix];
        *floats = cpu::lowrank_state_num_floats(hs->m, hs->n, hs->right, hs->r);
        *host_m = hs->memory;
        *host_v = NULL;
        int slot = o->matrix_slot[matrix];
        *dev_m = slot >= 0 ? o->lowrank_memory + o->slot_at[slot] : NULL;
        *dev_v = NULL;
        return;
    }
    size_t at = o->adam_offset[pc->tensor] + pc->layer * pc->per_layer + pc->first;
    *floats = pc->count;
    *host_m = h->adam_m + at;
    *host_v = h->adam_v + at;
    *dev_m = o->piece_adam[p] != SIZE_MAX ? o->adam_m + o->piece_adam[p] : NULL;
    *dev_v = o->piece_adam[p] != SIZE_MAX ? o->adam_v + o->piece_adam[p] : NULL;
}

// ZeRO-1: this rank's pieces' states (and sharded masters) between its
// device and their places in the host's whole-layout copies, which hold the
// other ranks' pieces too only after a checkpoint is read. no collective: a
// checkpoint's shard is written from them (cpu::checkpoint_save_shard)
static void optimizer_zero_copy(Optimizer* o, int to_host) {
    cudaMemcpyKind kind = to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
    for (int p = 0; p < o->shards.num_pieces; p++) {
        const cpu::ShardPiece* pc = &o->shards.pieces[p];
        if (pc->owner != o->zero_rank) { continue; }
        if (o->masters != NULL) {
            float* host = o->host_params + o->tensor_at[pc->tensor] + pc->layer * pc->per_layer + pc->first;
            float* mine = o->masters + o->piece_master[p];
            cuda_check(cudaMemcpy(to_host ? host : mine, to_host ? mine : host, pc->count * sizeof(float), kind));
        }
        float *hm, *hv, *dm, *dv;
        size_t n;
        optimizer_piece_places(o, p, &hm, &hv, &dm, &dv, &n);
        cuda_check(cudaMemcpy(to_host ? hm : dm, to_host ? dm : hm, n * sizeof(float), kind));
        if (dv != NULL) { cuda_check(cudaMemcpy(to_host ? hv : dv, to_host ? dv : hv, n * sizeof(float), kind)); }
    }
}

// device <-> the host copies (for checkpoints and tests); with ZeRO-1 only
// this rank's pieces
void optimizer_download(Optimizer* o) {
    cpu::Optimizer* h = &o->host;
    if (o->zero_ranks > 0) { optimizer_zero_copy(o, 1); return; }
    if (h->num_adam > 0) {
        cuda_check(cudaMemcpy(h->adam_m, o->adam_m, h->num_adam * sizeof(float), cudaMemcpyDeviceToHost));
    }
    if (h->num_adam_v > 0) {
        cuda_check(cudaMemcpy(h->adam_v, o->adam_v, h->num_adam_v * sizeof(float), cudaMemcpyDeviceToHost));
    }
    optimizer_lowrank_copy(o, 1);
    if (cpu::optimizer_has_q8(h)) {
        cuda_check(cudaMemcpy(h->q8_codes, o->q8_codes, h->q8_bytes, cudaMemcpyDeviceToHost));
        cuda_check(cudaMemcpy(h->q8_absmax, o->q8_absmax, h->q8_blocks * sizeof(float), cudaMemcpyDeviceToHost));
    }
}

void optimizer_upload(Optimizer* o) {
    cpu::Optimizer* h = &o->host;
    if (o->zero_ranks > 0) { optimizer_zero_copy(o, 0); return; }
    if (h->num_adam > 0) {
        cuda_check(cudaMemcpy(o->adam_m, h->adam_m, h->num_adam * sizeof(float), cudaMemcpyHostToDevice));
    }
    if (h->num_adam_v > 0) {
        cuda_check(cudaMemcpy(o->adam_v, h->adam_v, h->num_adam_v * sizeof(float), cudaMemcpyHostToDevice));
    }
    optimizer_lowrank_copy(o, 0);
    if (cpu::optimizer_has_q8(h)) {
        cuda_check(cudaMemcpy(o->q8_codes, h->q8_codes, h->q8_bytes, cudaMemcpyHostToDevice));
        cuda_check(cudaMemcpy(o->q8_absmax, h->q8_absmax, h->q8_blocks * sizeof(float), cudaMemcpyHostToDevice));
    }
}

// the update of one unit: tensor i whole (layer -1), or its layer l, with
// gradient G (the unit's floats), at learning rate lr. without masters the
// updated weights are rounded to bf16 stochastically, as on the CPU;
// bf16-only weights are widened into o->staging for the update, the same fp32
// arithmetic, and stored back rounded (AdamW tensors in chunks of it)
static void optimizer_update_unit(Optimizer* o, Llama* model, int i, int l, const float* G, float step_lr) {
    cpu::Optimizer* h = &o->host;
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &model->config);
    float lr = cpu::optimizer_tensor_lr(h, &spec[i], step_lr);   // --lr_non_matrix
    float** params = cpu::parameter_pointers(&model->params);
    size_t per = (size_t)spec[i].rows * spec[i].cols;
    size_t n = l < 0 ? cpu::tensor_numel(&spec[i]) : per;
    size_t within = l < 0 ? 0 : (size_t)l * per;
    size_t first = param_index(model, params[i]) + within;
    float* Wp = params[i] + within;
    int bf16_only = model->params_memory == NULL;
    uint64_t seed = h->seed, t = (uint64_t)h->step;
    if (!cpu::optimizer_uses_lowrank(h, &spec[i])) {
        if (h->adam8bit) {
            // each layer a bnb parameter, as on the CPU (bf16-only weights are refused with it)
            for (int ll = l < 0 ? 0 : l; ll < (l < 0 ? spec[i].layers : l + 1); ll++) {
                float* W = params[i] + (size_t)ll * per;
                const float* Gl = G + (size_t)(ll - (l < 0 ? 0 : l)) * per;
                if (cpu::adam8bit_q8(&spec[i])) {
                    size_t code, block, nb = cpu::adam8bit_blocks(per);
                    cpu::optimizer_q8_slot(h, i, ll, per, nb, &code, &block);
                    adam8bit_update_q8(W, o->q8_codes + code, o->q8_absmax + block, o->q8_codes + code + per,
                                       o->q8_absmax + block + nb, Gl, per, h->step, lr,
                                       h->beta1, h->beta2, h->eps, h->weight_decay, o->q8_maps, o->q8_scratch,
                                       h->q8_chunk);
                } else {
                    size_t a = o->adam_offset[i] + (size_t)ll * per;
                    adam8bit_update(W, o->adam_m + a, o->adam_v + a, Gl, per, h->step, lr, h->beta1, h->beta2,
                                    h->eps, h->weight_decay);
                }
            }
            if (!h->master_weights) { bf16_round_stochastic_array(Wp, n, seed, t, first); }
            return;
        }
        if (h->q8 && cpu::optimizer_adamw_q8(h, &spec[i])) {
            // 8-bit moments, a chunk of whole blocks at a time, as on the CPU;
            // a unit is a whole tensor or its layer l (per-layer updates)
            size_t code, block, whole = cpu::tensor_numel(&spec[i]), nb = cpu::quant8_num_blocks(whole);
            cpu::optimizer_q8_slot(h, i, 0, whole, nb, &code, &block);
            float* Mq = o->q8_scratch;
            float* Vq = o->q8_scratch + h->q8_chunk;
            for (size_t off = 0; off < n; off += h->q8_chunk) {
                size_t len = n - off < h->q8_chunk ? n - off : h->q8_chunk;
                size_t at = within + off, b = at / QUANT8_BLOCK;
                dequantize_blockwise(Mq, o->q8_codes + code + at, o->q8_absmax + block + b, len, o->q8_maps);
                dequantize_blockwise(Vq, o->q8_codes + code + whole + at, o->q8_absmax + block + nb + b, len,
                                     o->q8_maps + QUANT8_MAP_SIZE);
                float* W = Wp + off;
                if (bf16_only) { W = o->staging; params_bf16_widen(model, W, first + off, len); }
                adamw_update(W, Mq, Vq, G + off, len, h->step, lr, h->beta1, h->beta2, h->eps, h->weight_decay,
                             h->l2);
                if (bf16_only) { params_bf16_store_stochastic(model, W, first + off, len, seed, t); }
                else if (!h->master_weights) { bf16_round_stochastic_array(W, len, seed, t, first + off); }
                quantize_blockwise(o->q8_codes + code + at, o->q8_absmax + block + b, Mq, len, o->q8_maps);
                quantize_blockwise(o->q8_codes + code + whole + at, o->q8_absmax + block + nb + b, Vq, len,
                                   o->q8_maps + QUANT8_MAP_SIZE);
            }
            return;
        }
        if (h->adafactor) {
            // each layer's weight whole (a unit is a whole tensor: adafactor has no per-layer updates)
            size_t stats = cpu::adafactor_stats_floats(spec[i].rows, spec[i].cols);
            for (int ll = 0; ll < spec[i].layers; ll++) {
                float* M = o->adam_m != NULL ? o->adam_m + o->adam_offset[i] + ll * per : NULL;
                adafactor_update(Wp + ll * per, M, o->adam_v + o->stats_offset[i] + ll * stats, G + ll * per,
                                 spec[i].rows, spec[i].cols, h->step, lr, h->beta1, h->weight_decay,
                                 o->adafactor_sums);
            }
            if (!h->master_weights) { bf16_round_stochastic_array(Wp, n, seed, t, first); }
            return;
        }
        size_t a = o->adam_offset[i] + within;
        if (bf16_only) {
            for (size_t off = 0; off < n; off += o->staging_floats) {
                size_t len = n - off < o->staging_floats ? n - off : o->staging_floats;
                params_bf16_widen(model, o->staging, first + off, len);
                optimizer_moments_update(h, o->staging, o->adam_m + a + off, o->adam_v ? o->adam_v + a + off : NULL,
                                         G + off, len, lr);
                params_bf16_store_stochastic(model, o->staging, first + off, len, seed, t);
            }
        } else {
            optimizer_moments_update(h, Wp, o->adam_m + a, o->adam_v ? o->adam_v + a : NULL, G, n, lr);
            if (!h->master_weights) { bf16_round_stochastic_array(Wp, n, seed, t, first); }
        }
        return;
    }
    float* W = bf16_only ? o->staging : Wp;
    if (bf16_only) { params_bf16_widen(model, W, first, per); }
    LowRankStateGPU* st = &o->lowrank[o->matrix_slot[o->lowrank_first[i] + l]];
    size_t mn = (size_t)st->r * st->q, code = 0, block = 0, nb = cpu::quant8_num_blocks(mn);
    if (h->q8) {
        // the step on dequantized moments (the rotation included), requantized after
        cpu::optimizer_q8_slot(h, i, l, mn, nb, &code, &block);
        st->M = o->q8_scratch;
        st->V = o->q8_scratch + h->q8_chunk;
        dequantize_blockwise(st->M, o->q8_codes + code, o->q8_absmax + block, mn, o->q8_maps);
        dequantize_blockwise(st->V, o->q8_codes + code + mn, o->q8_absmax + block + nb, mn,
                             o->q8_maps + QUANT8_MAP_SIZE);
    }
    if (st->S16 != NULL) {
        // the step runs on S widened to fp32; a moved S is kept rounded to bf16
        // stochastically, with the CPU's random bits
        st->S = o->subspace_work;
        bf16_widen_array(st->S, st->S16, (size_t)st->p * st->r);
    }
    lowrank_adamw_step(st, W, G, h->step, &h->cfg, lr, &o->ctx);
    if (st->S16 != NULL) {
        if (cpu::lowrank_subspace_moves(&h->cfg, h->step)) {
            const cpu::LowRankState* hs = &h->lowrank[o->lowrank_first[i] + l];
            bf16_store_stochastic_array(st->S16, st->S, (size_t)st->p * st->r, seed, t,
                                        cpu::optimizer_subspace_stream(h, hs));
        }
        st->S = NULL;
    }
    if (h->q8) {
        quantize_blockwise(o->q8_codes + code, o->q8_absmax + block, st->M, mn, o->q8_maps);
        quantize_blockwise(o->q8_codes + code + mn, o->q8_absmax + block + nb, st->V, mn, o->q8_maps + QUANT8_MAP_SIZE);
        st->M = st->V = NULL;
    }
    if (bf16_only) { params_bf16_store_stochastic(model, W, first, per, seed, t); }
    else if (!h->master_weights) { bf16_round_stochastic_array(W, per, seed, t, first); }
}

// the low-rank matrices of a whole step, in batches of one shape
// (lowrank_groups_step). the groups' tables point at the model's weights and
// gradients, which stay where llama_build put them: they are bound at the
// first step, and again only for another model's buffers
static void optimizer_step_groups(Optimizer* o, Llama* model, float lr, cpu::Progress* pr) {
    cpu::Optimizer* h = &o->host;
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &model->config);
    float** params = cpu::parameter_pointers(&model->params);
    float** grads = cpu::parameter_pointers(&model->grads);
    if (o->bound_params != model->params_memory || o->bound_grads != model->grads_memory) {
        int owned = o->num_owned;
        float** W = (float**)cpu::malloc_check((size_t)owned * sizeof(float*), "weight pointers");
        const float** G = (const float**)cpu::malloc_check((size_t)owned * sizeof(float*), "gradient pointers");
        for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
            if (!cpu::optimizer_uses_lowrank(h, &spec[i])) { continue; }
            size_t per = (size_t)spec[i].rows * spec[i].cols;
            for (int l = 0; l < spec[i].layers; l++) {
                int slot = o->matrix_slot[o->lowrank_first[i] + l];
                if (slot < 0) { continue; }  // another rank's (ZeRO-1)
                W[slot] = o->masters != NULL ? o->masters + o->piece_master[o->slot_piece[slot]] : params[i] + l * per;
                G[slot] = grads[i] + l * per;
            }
        }
        lowrank_groups_bind(&o->groups, W, G);
        free(W);
        free(G);
        o->bound_params = model->params_memory;
        o->bound_grads = model->grads_memory;
    }
    lowrank_groups_step(&o->groups, h->step, &h->cfg, lr, &o->ctx, pr);
    if (h->master_weights) { return; }
    // without masters, each updated matrix rounded to bf16, as optimizer_update_unit does
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (!cpu::optimizer_uses_lowrank(h, &spec[i])) { continue; }
        size_t per = (size_t)spec[i].rows * spec[i].cols;
        for (int l = 0; l < spec[i].layers; l++) {
            if (o->matrix_slot[o->lowrank_first[i] + l] < 0) { continue; }
            float* W = params[i] + l * per;
            bf16_round_stochastic_array(W, per, h->seed, (uint64_t)h->step, param_index(model, W));
        }
    }
}

// one step over every tensor, at learning rate lr, in the CPU's order (the
// grouped low-rank matrices after the rest: no update depends on another). with
// per-layer updates the backward has done every unit already (through
// optimizer_on_unit): only the step count and the bf16 copy are left
// ZeRO-1: this rank's pieces (its AdamW pieces, then its low-rank matrices in
// batches), then every piece's weights from its owner to every rank
static void optimizer_step_owned(Optimizer* o, Llama* model, float lr) {
    cpu::Optimizer* h = &o->host;
    float** params = cpu::parameter_pointers(&model->params);
    float** grads = cpu::parameter_pointers(&model->grads);
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &model->config);
    for (int p = 0; p < o->shards.num_pieces; p++) {
        const cpu::ShardPiece* pc = &o->shards.pieces[p];
        if (pc->low_rank || pc->owner != o->zero_rank) { continue; }
        size_t at = pc->layer * pc->per_layer + pc->first;
        float* W = o->masters != NULL ? o->masters + o->piece_master[p] : params[pc->tensor] + at;
        adamw_update(W, o->adam_m + o->piece_adam[p], o->adam_v + o->piece_adam[p], grads[pc->tensor] + at, pc->count,
                     h->step, cpu::optimizer_tensor_lr(h, &spec[pc->tensor], lr), h->beta1, h->beta2, h->eps,
                     h->weight_decay, h->l2);
        if (!h->master_weights) {
            bf16_round_stochastic_array(W, pc->count, h->seed, (uint64_t)h->step, param_index(model, W));
        }
    }
    if (o->num_owned > 0) { optimizer_step_groups(o, model, lr, NULL); }
    if (o->masters != NULL) {
        // the owned pieces' bf16 weights from their masters, to nearest (as
        // llama_refresh_param_copy makes the copy of whole masters); then the
        // owners send those bf16 weights, each piece's contiguous block (a
        // padded matrix's block with its pads, zero everywhere)
        cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
        cpu::parameter_table(spec, &model->config);
        for (int p = 0; p < o->shards.num_pieces; p++) {
            const cpu::ShardPiece* pc = &o->shards.pieces[p];
            if (pc->owner != o->zero_rank) { continue; }
            params_bf16_apply(model, PARAMS_BF16_FROM_FLOAT, param_index(model, params[pc->tensor]) + pc->layer *
                              pc->per_layer + pc->first, pc->count, o->masters + o->piece_master[p]);
        }
        dp_group_start();
        for (int p = 0; p < o->shards.num_pieces; p++) {
            const cpu::ShardPiece* pc = &o->shards.pieces[p];
            const DeviceBlock* b = &model->device_blocks[pc->tensor];
            size_t cols = (size_t)spec[pc->tensor].cols, rows = (size_t)spec[pc->tensor].rows;
            bf16* block = model->params_bf16 + b->base + pc->layer * b->layer_stride;
            if (b->row_stride == cols) {
                dp_broadcast_bf16(block + pc->first, pc->count, pc->owner);
            } else if (pc->first == 0 && pc->count == rows * cols) {
                dp_broadcast_bf16(block, (rows - 1) * b->row_stride + cols, pc->owner);
            } else {
                cpu::fatal("internal: a ZeRO-1 piece of part of a padded matrix (%s); please report this",
                           spec[pc->tensor].name);
            }
        }
        dp_group_end();
        return;
    }
    dp_group_start();
    for (int p = 0; p < o->shards.num_pieces; p++) {
        const cpu::ShardPiece* pc = &o->shards.pieces[p];
        dp_broadcast_floats(params[pc->tensor] + pc->layer * pc->per_layer + pc->first, pc->count, pc->owner);
    }
    dp_group_end();
}

void optimizer_step(Optimizer* o, Llama* model, float lr) {
    cpu::Optimizer* h = &o->host;
    if (o->zero_ranks > 0) {
        optimizer_step_owned(o, model, lr);
    } else if (!model->per_layer) {
        cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
        cpu::parameter_table(spec, &model->config);
        float** grads = cpu::parameter_pointers(&model->grads);
        // the first step's SVDs (and GaLore's refreshes) can take a while:
        // progress lines, with a sync per matrix (per batch, grouped) so that
        // their times are real
        const char* svd_phase = cpu::optimizer_svd_phase(h);
        int show_progress = svd_phase != NULL && cpu::g_progress_interval >= 0;
        cpu::Progress pr;
        cpu::progress_begin(&pr, svd_phase, show_progress ? h->num_lowrank : 0);
        int k = 0;
        for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
            if (!cpu::optimizer_uses_lowrank(h, &spec[i])) {
                optimizer_update_unit(o, model, i, -1, grads[i], lr);
                continue;
            }
            if (o->grouped) { continue; }
            size_t per = (size_t)spec[i].rows * spec[i].cols;
            for (int l = 0; l < spec[i].layers; l++) {
                optimizer_update_unit(o, model, i, l, grads[i] + l * per, lr);
                k++;
                if (show_progress) {
                    cuda_check(cudaDeviceSynchronize());
                    cpu::progress_update(&pr, k);
                }
            }
        }
        if (o->grouped) { optimizer_step_groups(o, model, lr, show_progress ? &pr : NULL); }
    }
    h->step++;
    llama_refresh_param_copy(model);  // the next forward's bf16 weights (a no-op in fp32)
}

// the model's per-layer hook (Llama.on_unit): ctx is the Optimizer, whose
// lr was set for this step (optimizer_begin_step)
static void optimizer_on_unit(void* ctx, int tensor, int layer, const float* grad) {
    Optimizer* o = (Optimizer*)ctx;
    optimizer_update_unit(o, o->model, tensor, layer, grad, o->lr);
}

// per-layer updates: the model hands its units to this optimizer from now on
void optimizer_attach_per_layer(Optimizer* o, Llama* model) {
    o->model = model;
    model->on_unit = optimizer_on_unit;
    model->on_unit_ctx = o;
}

void optimizer_begin_step(Optimizer* o, float lr) { o->lr = lr; }

double optimizer_subspace_seconds(Optimizer* o) {
    double s = o->grouped ? lowrank_groups_subspace_seconds(&o->groups) : 0.0;
    for (int k = 0; k < o->num_owned; k++) { s += lowrank_subspace_seconds(&o->lowrank[k]); }
    return s;
}

// ----------------------------------------------------------------------------
// the device-memory plan: every buffer this trainer allocates on the device,
// computed from the model and the flags alone, so that --memory_plan needs no
// GPU. the build allocates each of them once, at start, from the same size
// functions (the parameter count, activation_layout, cpu::optimizer_plan,
// lowrank_gpu_need, grad_norm_partials_count), and nothing later: the plan's
// sum is the peak of cudaMalloc, which the harness measures and the tests
// compare. not in it: the CUDA context and cuSOLVER's handle, which the
// driver and the library hold themselves (about 0.5 GiB on a Hopper GPU).

#define PLAN_MAX_ENTRIES 48
typedef struct {
    char name[48];      // the buffer
    char shape[40];     // its shape, in the legend of the file
    size_t bytes;       // as cudaMalloc is asked for them
    const char* holds;  // "whole run", "all L layers" or "one layer"
} PlanEntry;

typedef struct {
    PlanEntry e[PLAN_MAX_ENTRIES];
    int n;
    size_t total;       // bytes, the peak
    int buffers;        // cudaMalloc calls
    int zero_rank, zero_ranks;  // ZeRO-1: the plan of this rank of zero_ranks (else -1, 0)
} MemoryPlan;

// device_malloc turns a request of 0 bytes into 1
static size_t plan_alloc_bytes(size_t bytes) { return bytes > 0 ? bytes : 1; }

static void plan_add(MemoryPlan* p, const char* name, const char* shape, size_t bytes, const char* holds) {
    if (p->n >= PLAN_MAX_ENTRIES) { cpu::fatal("memory plan: more than %d entries", PLAN_MAX_ENTRIES); }
    PlanEntry* e = &p->e[p->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->shape, sizeof e->shape, "%s", shape);
    e->bytes = bytes;
    e->holds = holds;
    p->total += bytes;
}

// one allocation (its bytes as device_malloc asks cudaMalloc for them)
static void plan_buffer(MemoryPlan* p, const char* name, const char* shape, size_t bytes, const char* holds) {
    plan_add(p, name, shape, plan_alloc_bytes(bytes), holds);
    p->buffers++;
}

// the activation fields, in ActivationTensors order, for the plan's rows
static const char* const ACTIVATION_PLAN_NAMES[NUM_ACTIVATION_TENSORS][2] = {
    {"act: layer inputs (resid)", "(L,B,T,C)"}, {"act: attn_norm out", "(L,B,T,C)"},
    {"act: attn_norm rstd", "(L,B,T) f32"}, {"act: q after rope", "(L,B,T,C)"}, {"act: k after rope", "(L,B,T,C)"},
    {"act: v", "(L,B,T,C)"}, {"act: attention log-sum-exp", "(L,B,NH,T) f32"}, {"act: attention out", "(L,B,T,C)"},
    {"act: resid_mid", "(L,B,T,C)"}, {"act: mlp_norm out", "(L,B,T,C)"}, {"act: mlp_norm rstd", "(L,B,T) f32"},
    {"act: gate", "(L,B,T,F)"}, {"act: up", "(L,B,T,F)"}, {"act: silu(gate)*up", "(L,B,T,F)"},
    {"act: last layer out", "(B,T,C)"}, {"act: final_norm out", "(B,T,C)"}, {"act: final_norm rstd", "(B,T) f32"},
    {"act: logits / dlogits", "(B,T,V)"}, {"act: losses", "(B,T) f32"}, {"act: log-sum-exp", "(B,T) f32"},
    {"act: rope tables", "(2,T,HS/2) f32"},
};

// the plan of model c trained under t at (B, T); NULL, or the optimizer's
// message when the rank does not fit a matrix
const char* memory_plan_build(MemoryPlan* p, const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int B, int T) {
    if (t->zero_stage == 1 && t->ranks <= 1 && t->num_processes > 1) {
        // --memory_plan of ZeRO-1: each rank's plan (their states and scratch
        // differ); the largest is the one that must fit
        static MemoryPlan one;
        cpu::TrainConfig u = *t;
        u.ranks = t->num_processes;
        for (int r = 0; r < u.ranks; r++) {
            u.this_rank = r;
            const char* problem = memory_plan_build(&one, c, &u, B, T);
            if (problem != NULL) { return problem; }
            if (r == 0 || one.total > p->total) { *p = one; }
        }
        return NULL;
    }
    memset(p, 0, sizeof *p);
    Dtype dt = dtype_from_name(t->dtype);
    int recompute = t->activation_checkpointing;
    size_t N = cpu::parameter_count(c);
    // the model (llama_build, grad_norm_reserve); ZeRO-1 in bf16 keeps bf16
    // weights only there, and this rank's masters in the optimizer (below)
    int shard_masters = zero_shards_masters(t, t->ranks);
    int bf16_only = llama_weights_bf16_only(dt, t->master_weights) || shard_masters;
    if (!bf16_only) {
        plan_buffer(p, t->master_weights ? "weights, fp32 masters" : "weights, bf16 values in fp32", "(N)",
                    N * sizeof(float), "whole run");
    }
    if (cpu::optimizer_name_per_layer(t->optimizer)) {
        plan_buffer(p, "gradient of one unit, fp32", "largest layer tensor", llama_largest_unit(c) * sizeof(float),
                    "one matrix");
        plan_buffer(p, "gradient norm partials", "(unit/65536) f64",
                    grad_norm_partials_count(llama_largest_unit(c)) * sizeof(double), "whole run");
    } else {
        plan_buffer(p, "gradients, fp32", "(N)", N * sizeof(float), "whole run");
        plan_buffer(p, "gradient norm partials", "(N/65536) f64", grad_norm_partials_count(N) * sizeof(double),
                    "whole run");
    }
    if (dt == DTYPE_BFLOAT16) {
        // in the device layout: the MLP's pads included (device_layout)
        DeviceBlock blocks[NUM_PARAMETER_TENSORS];
        size_t nb = device_layout(blocks, c, device_F(c, dt), device_fused_mlp(dt), device_V(c, dt),
                                  device_fused_qkv(c, dt));
        plan_buffer(p, bf16_only ? "weights, bf16" : "weights, bf16 copy", nb > N ? "(N + pads)" : "(N)",
                    nb * sizeof(bf16), "whole run");
    }
    // activations and the gradient scratch (llama_alloc_activations): one
    // allocation each, a row per tensor of the first
    size_t asz[NUM_ACTIVATION_TENSORS], ab[NUM_ACTIVATION_TENSORS], gsz[NUM_GRAD_SCRATCH_TENSORS],
           gb[NUM_GRAD_SCRATCH_TENSORS];
    int fused = device_fused_mlp(dt), padded = device_F(c, dt) != c->F, padded_v = device_V(c, dt) != c->V;
    int fused_qkv = device_fused_qkv(c, dt);
    activation_layout(asz, ab, gsz, gb, c, B, T, dt, recompute, device_F(c, dt), fused, device_V(c, dt), fused_qkv);
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        if (asz[i] == 0) { continue; }  // up, when gate holds it (fused)
        size_t one = point_into_bytes(NULL, &asz[i], &ab[i], 1, NULL);
        int per_layer = i <= (int)(offsetof(cpu::ActivationTensors, hidden) / sizeof(float*));
        const char* holds = per_layer ? (recompute && activation_recomputed(i) ? "one layer" : "all L layers")
                                   : "one step";
        const char* name = ACTIVATION_PLAN_NAMES[i][0];
        const char* shape = ACTIVATION_PLAN_NAMES[i][1];
        if (fused_qkv && i == (int)(offsetof(cpu::ActivationTensors, q) / sizeof(float*))) {
            name = "act: q | k | v (one product; q, k after rope)";
            shape = "(L,B,T,3C)";
        } else if (fused && i == (int)(offsetof(cpu::ActivationTensors, gate) / sizeof(float*))) {
            name = "act: gate | up (one product)";
            shape = padded ? "(L,B,T,2Fp)" : "(L,B,T,2F)";
        } else if (padded && i == (int)(offsetof(cpu::ActivationTensors, hidden) / sizeof(float*))) {
            shape = "(L,B,T,Fp)";
        } else if (padded_v && i == (int)(offsetof(cpu::ActivationTensors, logits) / sizeof(float*))) {
            shape = "(B,T,Vp)";
        }
        plan_add(p, name, shape, one, holds);
    }
    p->buffers++;
    plan_buffer(p, "gradient scratch", "(B,T,*), (B,NH,T) f32", point_into_bytes(NULL, gsz, gb, NUM_GRAD_SCRATCH_TENSORS,
                NULL), "one layer");
    plan_buffer(p, "inputs", "(B,T) int", (size_t)B * T * sizeof(int), "one step");
    plan_buffer(p, "targets", "(B,T) int", (size_t)B * T * sizeof(int), "one step");
    plan_buffer(p, "column-sum partials", "(BT/256, C)", column_partials_floats(B * T, c->C) * sizeof(float),
                "one kernel");
    plan_buffer(p, "embedding gradient buckets", "(3BT+1) int", (3 * (size_t)B * T + 1) * sizeof(int), "one step");
    plan_buffer(p, "cuBLAS workspace, model", "", CUBLAS_WORKSPACE_BYTES, "whole run");
    // the optimizer (optimizer_build, lowrank_gpu_alloc)
    cpu::Optimizer o;
    const char* problem = cpu::optimizer_plan(&o, c, t);
    if (problem != NULL) { return problem; }
    // ZeRO-1: this rank's share
    int shapes[MAX_LOWRANK_SHAPES][3];
    int grouped = o.num_lowrank > 0 && optimizer_grouped(&o, llama_weights_bf16_only(dt, t->master_weights));
    int num_shapes = grouped ? optimizer_lowrank_shapes(shapes, &o, c) : 0;
    int zero_ranks = t->zero_stage == 1 && t->ranks > 1 ? t->ranks : 0;
    ZeroShare z;
    p->zero_rank = -1;
    if (zero_ranks > 1) {
        cpu::ShardPlan sp;
        problem = cpu::shard_plan_build(&sp, c, t, zero_ranks);
        if (problem != NULL) { return problem; }
        zero_share(&z, &sp, c, t, t->this_rank, shapes, num_shapes);
        p->zero_rank = t->this_rank;
        p->zero_ranks = zero_ranks;
        cpu::shard_plan_free(&sp);
        o.num_adam = z.adam_floats;
        o.lowrank_floats = z.lowrank_floats;
        o.num_lowrank = z.owned;
        for (int s = 0; s < num_shapes; s++) { shapes[s][2] = z.per_shape[s]; }
        if (shard_masters) {
            plan_buffer(p, "fp32 masters, this rank's pieces", "(this rank's pieces)",
                        z.masters_floats * sizeof(float), "whole run");
        }
    }
    if (t->ranks > 1 || t->num_processes > 1) {
        plan_buffer(p, "sum over the ranks", "1 f64", sizeof(double), "whole run");  // gpu_join's
    }
    if (o.adafactor) {
        if (o.num_adam > 0) {
            plan_buffer(p, "AdamW first moments", "(adafactor's, every weight)", o.num_adam * sizeof(float),
                        "whole run");
        }
        plan_buffer(p, "AdamW second moments", "(adafactor's statistics)", o.num_adam_v * sizeof(float),
                    "whole run");
        plan_buffer(p, "Adafactor sums", "f64", ADAFACTOR_SUMS * sizeof(double), "whole run");
    } else {
        plan_buffer(p, o.sgd ? "SGD momentum" : "AdamW first moments",
                    zero_ranks > 1 ? "(this rank's pieces)" : "(adamw tensors)", o.num_adam * sizeof(float),
                    "whole run");
    }
    if (!o.sgd && !o.adafactor) {
        plan_buffer(p, "AdamW second moments", zero_ranks > 1 ? "(this rank's pieces)" : "(adamw tensors)",
                    o.num_adam * sizeof(float), "whole run");
    }
    // the low-rank states besides S: Adam's M and V, with 8-bit states the limiter alone, with Adafactor
    // in the subspace its first moment (if any) and its statistics
    int af = o.cfg.adafactor, af_m = af && o.beta1 != 0.0f;
    const char* rest = o.q8 ? "low-rank limiter state" : !af ? "low-rank states M|V" : af_m ? "low-rank states M|stats"
                     : "low-rank states stats";
    const char* rest_shape = o.q8 ? "per matrix 2" : !af ? "per matrix 2(R,q)" : af_m ? "per matrix (R,q)+R+q"
                           : "per matrix R+q";
    if (o.subspace_bf16) {
        plan_buffer(p, rest, rest_shape, optimizer_device_lowrank_floats(&o) * sizeof(float), "whole run");
        plan_buffer(p, "subspaces S, bf16", "per matrix (p,R)", o.subspace_floats * sizeof(bf16), "whole run");
        plan_buffer(p, "subspace S widened, fp32", "largest (p,R)", o.subspace_most * sizeof(float), "one matrix");
    } else {
        char name[64], shape[64];
        const char* kept = o.q8 ? "" : rest + strlen("low-rank states ");
        snprintf(name, sizeof name, "low-rank states S%s%s", o.q8 ? "" : "|", kept);
        snprintf(shape, sizeof shape, "per matrix (p,R)+%s", rest_shape + strlen("per matrix "));
        plan_buffer(p, name, shape, o.lowrank_floats * sizeof(float), "whole run");
    }
    if (o.num_lowrank > 0) {
        cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
        cpu::parameter_table(spec, c);
        size_t scratch = 0, eig = 0;
        int oversample = o.cfg.svd_randomized ? o.cfg.svd_oversample : -1;   // as optimizer_build's ctx
        for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
            if (!cpu::optimizer_uses_lowrank(&o, &spec[i])) { continue; }
            int here = 1;  // ZeRO-1: only the shapes this rank has a matrix of
            for (int s = 0; s < num_shapes && zero_ranks > 1; s++) {
                if (shapes[s][0] == spec[i].rows && shapes[s][1] == spec[i].cols) { here = shapes[s][2] > 0; }
            }
            if (!here) { continue; }
            size_t s = 0, e = 0;
            int m = spec[i].rows, n = spec[i].cols;
            lowrank_gpu_need(&s, &e, m, n, cpu::lowrank_right(m, n, o.cfg.proj_type), t->rank, oversample);
            if (s > scratch) { scratch = s; }
            if (e > eig) { eig = e; }
        }
        // the grouped step's batches (optimizer_build: lowrank_gpu_reserve_group)
        for (int s = 0; s < num_shapes; s++) {
            if (shapes[s][2] == 0) { continue; }  // ZeRO-1: none of this shape here
            size_t need = 0, need_eig = 0;
            int m = shapes[s][0], n = shapes[s][1];
            lowrank_gpu_need_group(&need, &need_eig, m, n, cpu::lowrank_right(m, n, o.cfg.proj_type), t->rank,
                                   shapes[s][2], oversample);
            if (need > scratch) { scratch = need; }
            if (need_eig > eig) { eig = need_eig; }
        }
        plan_buffer(p, "low-rank step scratch", grouped ? "largest batch of one shape" : "largest matrix",
                    scratch * sizeof(float), grouped ? "one batch" : "one matrix");
        plan_buffer(p, "eigendecomposition workspace", oversample < 0 ? "1+6p+2p^2 f64"
                    : grouped ? "chunk x (1+6l+2l^2) f64, l = R+o" : "1+6l+2l^2 f64, l = R+o",
                    eig * sizeof(double), oversample >= 0 && grouped ? "one SVD chunk" : "one matrix");
        plan_buffer(p, "cuSOLVER info", "1 int", sizeof(int), "whole run");
        plan_buffer(p, "cuBLAS workspace, optimizer", "", CUBLAS_WORKSPACE_BYTES, "whole run");
        if (grouped) {
            plan_buffer(p, "low-rank pointer tables", "(fields, matrices) ptr",
                        (size_t)LOWRANK_BATCH_FIELDS * o.num_lowrank * sizeof(void*), "whole run");
            plan_buffer(p, "cuSOLVER info per matrix", "per matrix int", (size_t)o.num_lowrank * sizeof(int),
                        "whole run");
            plan_buffer(p, "SVD sketch streams per matrix", "per matrix u64",
                        (size_t)o.num_lowrank * sizeof(uint64_t), "whole run");
        }
    }
    if (cpu::optimizer_has_q8(&o)) {
        plan_buffer(p, "8-bit states: codes", "M, V: 1 byte each", o.q8_bytes, "whole run");
        plan_buffer(p, "8-bit states: block scales", o.adam8bit ? "per 256 codes f32" : "per 2048 codes f32",
                    o.q8_blocks * sizeof(float), "whole run");
        plan_buffer(p, "8-bit maps", "(2, 256) f32", 2 * QUANT8_MAP_SIZE * sizeof(float), "whole run");
        plan_buffer(p, "8-bit states: dequantized M, V", o.adam8bit ? "2 x chunk of 65536" : "2 x largest moment",
                    2 * o.q8_chunk * sizeof(float), "one matrix");
    }
    size_t staging = optimizer_staging_floats(c, t);
    if (staging > 0) { plan_buffer(p, "bf16 weights' update staging", "largest matrix", staging * sizeof(float), "one matrix"); }
    return NULL;
}

static double gib(size_t bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

// the plan as a table; its last line is "peak device memory: X GiB"
static void memory_plan_print(const MemoryPlan* p, const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int B, int T,
                              FILE* out) {
    fprintf(out, "device memory plan: %s (%zu parameters), B=%d T=%d, %s activations%s, %s", t->model_config,
            cpu::parameter_count(c), B, T, t->dtype, t->activation_checkpointing ? " recomputed per layer" : "",
            t->optimizer);
    if (cpu::optimizer_name_low_rank(t->optimizer)) { fprintf(out, " (%s, R=%d)", t->subspace_update_method, t->rank); }
    fprintf(out, "\n");
    if (p->zero_ranks > 1) {
        fprintf(out, "  ZeRO-1 over %d ranks: the plan of rank %d (%s); NCCL's own buffers are not counted\n",
                p->zero_ranks, p->zero_rank, t->ranks > 1 ? "this process" : "the largest plan of them");
    }
    fprintf(out, "  %-32s %-26s %16s %11s  %s\n", "buffer", "shape", "bytes", "MiB", "holds");
    for (int i = 0; i < p->n; i++) {
        const PlanEntry* e = &p->e[i];
        fprintf(out, "  %-32s %-26s %16zu %11.2f  %s\n", e->name, e->shape, e->bytes, e->bytes / 1048576.0, e->holds);
    }
    fprintf(out, "total: %zu bytes in %d cudaMalloc buffers, all allocated at start; not counted: the CUDA context "
            "and cuSOLVER's handle (about 0.5 GiB), and up to 2 MiB of rounding per buffer\n", p->total, p->buffers);
    fprintf(out, "peak device memory: %.2f GiB\n", gib(p->total));
}

// 1 when the plan of model c under t at (B, T) fits limit bytes; its peak in *need
static int memory_plan_fits(const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int B, int T, size_t limit,
                            size_t* need) {
    MemoryPlan p;
    if (memory_plan_build(&p, c, t, B, T) != NULL) { return 0; }
    *need = p.total;
    return p.total <= limit;
}

// writes which flags would fit in `limit` bytes into out: the first of
// --activation_checkpointing, --dtype bfloat16, --master_weights 0 and
// halving --batch_size (the same total batch, with more accumulation),
// each on top of the ones before, that fits, with its peak
// appends flag to flags (u already has it) and says, into out, whether the
// plan of u now fits limit
static int memory_plan_try(const cpu::LlamaConfig* c, const cpu::TrainConfig* u, int B, int T, size_t limit,
                           char* flags, size_t fcap, const char* flag, size_t* need, char* out, size_t cap) {
    snprintf(flags + strlen(flags), fcap - strlen(flags), " %s", flag);
    if (!memory_plan_fits(c, u, B, T, limit, need)) { return 0; }
    snprintf(out, cap, "add%s (peak %.2f GiB)", flags, gib(*need));
    return 1;
}

static void memory_plan_suggest(const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int B, int T, size_t limit,
                                char* out, size_t cap) {
    cpu::TrainConfig u = *t;
    char flags[256] = "";
    size_t need = 0;
    out[0] = '\0';
    if (!u.activation_checkpointing) {
        u.activation_checkpointing = 1;
        if (memory_plan_try(c, &u, B, T, limit, flags, sizeof flags, "--activation_checkpointing", &need, out, cap)) {
            return;
        }
    }
    if (strcmp(u.dtype, "bfloat16") != 0) {
        snprintf(u.dtype, sizeof u.dtype, "%s", "bfloat16");
        if (memory_plan_try(c, &u, B, T, limit, flags, sizeof flags, "--dtype bfloat16", &need, out, cap)) { return; }
    }
    if (u.master_weights) {
        u.master_weights = 0;
        if (memory_plan_try(c, &u, B, T, limit, flags, sizeof flags, "--master_weights 0", &need, out, cap)) { return; }
    }
    for (int b = B / 2; b >= 1; b /= 2) {
        if (memory_plan_fits(c, &u, b, T, limit, &need)) {
            snprintf(out, cap, "add%s --batch_size %d, with --total_batch_size unchanged (peak %.2f GiB)", flags, b,
                     gib(need));
            return;
        }
    }
    snprintf(out, cap, "no flag of this build fits it (with%s --batch_size 1 it needs %.2f GiB): use a smaller "
             "--model_config or --rank, or a larger GPU", flags, gib(need));
}

// --memory_plan: the plan, and exit status 0, without a device
static int gpu_memory_plan(const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int B, int T) {
    MemoryPlan p;
    const char* problem = memory_plan_build(&p, c, t, B, T);
    if (problem != NULL) { cpu::fatal("%s", problem); }
    memory_plan_print(&p, c, t, B, T, stdout);
    return 0;
}

// ----------------------------------------------------------------------------
// training: checkpoints. the CPU writer and reader, on host copies of the
// device state; host_model is a cpu::Llama whose params_memory is the host copy

static double gpu_sum_over_ranks(double x);

// with several ranks every rank calls it. without ZeRO-1 rank 0 alone writes
// (the ranks' weights and states are equal); with it each rank writes the
// shard of its pieces, and once all have, rank 0 the manifest that completes
// the checkpoint (cpu::checkpoint_save_shard, the format above it)
int checkpoint_save(Llama* model, Optimizer* opt, cpu::Llama* host_model, const cpu::TrainConfig* t,
                    cpu::ShardLoader* loader, cpu::Rng* rng, const char* dir, char* err, size_t errlen) {
    cpu::TrainState s = {host_model, &opt->host, loader, rng, t};
    if (opt->zero_ranks > 0) {
        if (opt->masters == NULL) { llama_download_params(model, host_model->params_memory); }
        optimizer_download(opt);
        // the save's id, drawn by rank 0 (exact in a double: 48 bits)
        int64_t id = (int64_t)gpu_sum_over_ranks(dp_rank() == 0 ? (double)cpu::checkpoint_new_id() : 0.0);
        int failed = cpu::checkpoint_save_shard(&s, &opt->shards, opt->zero_rank, id, dir, err, errlen) != 0;
        if (failed && dp_rank() != 0) { fprintf(stderr, "error: rank %d of %d: %s\n", dp_rank(), opt->zero_ranks, err); }
        int failures = (int)gpu_sum_over_ranks(failed);
        if (failures > 0) {
            if (!failed) {
                snprintf(err, errlen, "%d of the %d ranks could not write their shard of the checkpoint of step %d "
                         "(each says why above); the previous checkpoint in %s is kept", failures, opt->zero_ranks,
                         opt->host.step, dir);
            }
            return 1;
        }
        return dp_rank() == 0 ? cpu::checkpoint_save_manifest(&s, &opt->shards, id, dir, err, errlen) : 0;
    }
    if (dp_rank() != 0) { return 0; }
    if (opt->masters == NULL) { llama_download_params(model, host_model->params_memory); }
    optimizer_download(opt);
    return cpu::checkpoint_save(&s, dir, err, errlen);
}

int checkpoint_load(Llama* model, Optimizer* opt, cpu::Llama* host_model, const cpu::TrainConfig* t,
                    cpu::ShardLoader* loader, cpu::Rng* rng, const char* dir, char* err, size_t errlen) {
    cpu::TrainState s = {host_model, &opt->host, loader, rng, t};
    if (cpu::checkpoint_load(&s, dir, err, errlen) != 0) { return 1; }
    llama_upload_params(model, host_model->params_memory);
    optimizer_upload(opt);
    return 0;
}

// ----------------------------------------------------------------------------
// main: the GPU backend of the training loop. the loop itself (flags, data,
// schedule, accumulation, clipping, the NaN stop, evaluation, sampling, logs,
// checkpoints) is the CPU trainer's cpu::train_run, so the two cannot drift

// no device, or a driver older than this build: say which, and where the CPU trainer is
static void require_gpu_or_exit(void) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    int driver = 0;
    cudaDriverGetVersion(&driver);
    if (err == cudaErrorInsufficientDriver && driver == 0) {
        // no driver at all: a machine without an NVIDIA GPU (or without its driver)
        fprintf(stderr, "error: no NVIDIA driver found, so no CUDA GPU can be used. ./train_llama_subtrack needs an "
                "NVIDIA GPU and its driver; on this machine use the CPU trainer: make train_cpu && "
                "./train_llama_subtrack_cpu (same flags, data and checkpoints; it computes in float32 only). "
                "--memory_plan works here without a GPU\n");
        exit(EXIT_FAILURE);
    }
    if (err == cudaErrorInsufficientDriver) {
        int runtime = 0;
        cudaRuntimeGetVersion(&runtime);
        fprintf(stderr, "error: the NVIDIA driver is too old for this build: it supports CUDA %d.%d, and "
                "./train_llama_subtrack was built with CUDA %d.%d. Update the driver, or build with a CUDA "
                "toolkit the driver supports; the CPU trainer needs neither (make train_cpu && "
                "./train_llama_subtrack_cpu)\n", driver / 1000, (driver % 1000) / 10, runtime / 1000,
                (runtime % 1000) / 10);
        exit(EXIT_FAILURE);
    }
    if (err != cudaSuccess || count == 0) {
        fprintf(stderr, "error: no CUDA GPU found (%s). ./train_llama_subtrack needs an NVIDIA GPU; "
                "on this machine use the CPU trainer: make train_cpu && ./train_llama_subtrack_cpu "
                "(same flags, data and checkpoints; it computes in float32 only)\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
        exit(EXIT_FAILURE);
    }
}

// the CPU trainer's defaults, but bf16 activations: what a GPU is fast at
// (and the authors' default wherever the device supports bf16)
void train_config_defaults_gpu(cpu::TrainConfig* t) {
    cpu::train_config_defaults(t);
    snprintf(t->dtype, sizeof t->dtype, "%s", "bfloat16");
}

static struct {
    Llama model;
    Optimizer opt;
    cpu::Llama host_model;  // the fp32 masters on the host: initialisation and checkpoints
    float* logits_row;      // (V) host copy of one row of logits, for sampling
} gpu_trainer;

// ---- data parallel over NCCL: one process per GPU
//
// the design (README, "Many GPUs"): every rank holds the whole model and the
// whole optimizer state, as PyTorch's DDP does. a rank's micro-batches are
// its B windows of the step's N B (the loader), its backward scales the
// gradient by 1 / N, and before the step's statistics one all-reduce sums the
// gradients (fp32) and the loss over the ranks. every rank then has the same
// gradient bits, computes the same norm, clips alike, and runs the same
// optimizer step (same seeds for the stochastic roundings), so the ranks'
// weights and states stay equal without being sent. with per-layer updates
// each unit's gradient is summed in the backward, before its update.
// with --zero_stage 1 (ZeRO-1) each optimizer state lives on one rank (the
// Optimizer's zero_ranks; pieces of cpu::shard_plan_build): each gradient
// piece is reduced to its owner, the owner steps its pieces and broadcasts
// their weights (optimizer_step_owned), and a checkpoint gathers the states
// to rank 0 (optimizer_zero_copy). with bf16 weights the fp32 masters are
// sharded too (Optimizer.masters; the model keeps bf16 weights only).
//
// the sums overlap the backward: as the last micro step's backward finishes a
// unit's gradient (unit_done), the unit's all-reduce is queued on a stream of
// its own behind an event, so the messages of the last layers travel while
// the first layers' backward runs. the loss's sum follows on that stream, and
// the step's statistics wait for it. every gradient float is summed once: the
// step checks that the units add up to the whole buffer
//
// a dead or hung rank must not hang the others: every wait on the others (the
// meeting, a step's sums) is timed by a watchdog thread, which stops the
// process with a message after --collective_timeout seconds

static struct {
    int rank = 0, size = 1;
    int timeout = 900;           // seconds
#if HAVE_NCCL
    ncclComm_t comm = NULL;
#endif
    double* sum = NULL;          // (1) device: sum_over_ranks's value
    pthread_t watchdog;
    int watchdog_running = 0;
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    double wait_since = 0.0;     // wall_seconds() when the wait began; guarded by lock
    const char* waiting_for = NULL;  // NULL: not waiting
    int step = 0;                // for messages
    // the overlapped sums (whole-step updates)
    cudaStream_t stream = NULL;  // the stream of the gradient messages
    cudaEvent_t ready = NULL;    // recorded on stream 0 when a unit's gradient is final
    cudaEvent_t done = NULL;     // recorded on comm after the step's last message
    int micro = 0, accum = 1;    // the micro step of the step, and how many it has
    size_t queued = 0;           // floats of gradient queued for summing in this step
} g_dp;

// the watchdog: wakes a few times a second; a wait past the timeout ends the
// process (its state on disk is the last checkpoint, written whole or not at all)
static void* dp_watchdog(void* arg) {
    (void)arg;
    for (;;) {
        usleep(200 * 1000);
        pthread_mutex_lock(&g_dp.lock);
        const char* what = g_dp.waiting_for;
        double waited = what != NULL ? cpu::wall_seconds() - g_dp.wait_since : 0.0;
        int step = g_dp.step;
        pthread_mutex_unlock(&g_dp.lock);
        if (what != NULL && waited > g_dp.timeout) {
            fprintf(stderr, "error: rank %d of %d waited %d s (--collective_timeout) for the other ranks in %s of "
                    "step %d; a rank has stopped or hangs (see its messages above). stopping this rank too; the "
                    "last checkpoint written whole is kept\n", g_dp.rank, g_dp.size, g_dp.timeout, what, step);
            fflush(stderr);
            _exit(EXIT_FAILURE);
        }
    }
    return NULL;
}

static void dp_wait_begin(const char* what) {
    if (g_dp.size == 1) { return; }
    pthread_mutex_lock(&g_dp.lock);
    g_dp.waiting_for = what;
    g_dp.wait_since = cpu::wall_seconds();
    pthread_mutex_unlock(&g_dp.lock);
}

static void dp_wait_end(void) {
    if (g_dp.size == 1) { return; }
    pthread_mutex_lock(&g_dp.lock);
    g_dp.waiting_for = NULL;
    pthread_mutex_unlock(&g_dp.lock);
}

#if HAVE_NCCL
// an NCCL call that failed: most often another rank is gone
static void nccl_check_at(ncclResult_t r, const char* what, const char* file, int line) {
    if (r == ncclSuccess) { return; }
    const char* last = ncclGetLastError(g_dp.comm);
    fprintf(stderr, "error: rank %d of %d: NCCL %s failed at %s:%d: %s%s%s. %s\n", g_dp.rank, g_dp.size, what, file,
            line, ncclGetErrorString(r), last != NULL && last[0] ? ": " : "", last != NULL ? last : "",
            r == ncclRemoteError || r == ncclSystemError
                ? "another rank has stopped or cannot be reached (see its messages); stopping this rank too"
                : "stopping");
    exit(EXIT_FAILURE);
}
#define nccl_check(call) nccl_check_at((call), #call, __FILE__, __LINE__)

// the sum over the ranks, in place, of n floats on the device
static void dp_sum_floats(float* x, size_t n) {
    nccl_check(ncclAllReduce(x, x, n, ncclFloat, ncclSum, g_dp.comm, 0));
}

// a unit's gradient is final (on stream 0): its sum, queued on the comm
// stream behind it, on the last micro step only (the earlier ones keep adding)
// with ZeRO-1 each piece of the unit goes to its owner only (ncclReduce: the
// volume of a reduce-scatter, half an all-reduce's); the other ranks' copy
// of that piece keeps their own part, which nothing reads
static void dp_sum_when_ready(int tensor, int layer, float* grad, size_t n) {
    if (g_dp.micro != g_dp.accum) { return; }
    cuda_check(cudaEventRecord(g_dp.ready, 0));
    cuda_check(cudaStreamWaitEvent(g_dp.stream, g_dp.ready, 0));
    const Optimizer* o = &gpu_trainer.opt;
    if (o->zero_ranks == 0) {
        nccl_check(ncclAllReduce(grad, grad, n, ncclFloat, ncclSum, g_dp.comm, g_dp.stream));
        g_dp.queued += n;
        return;
    }
    nccl_check(ncclGroupStart());
    for (int p = 0; p < o->shards.num_pieces; p++) {
        const cpu::ShardPiece* pc = &o->shards.pieces[p];
        if (pc->tensor != tensor || pc->layer != layer) { continue; }
        nccl_check(ncclReduce(grad + pc->first, grad + pc->first, pc->count, ncclFloat, ncclSum, pc->owner, g_dp.comm,
                              g_dp.stream));
        g_dp.queued += pc->count;
    }
    nccl_check(ncclGroupEnd());
}
#endif

static const char* gpu_join(const cpu::ProcessGroup* pg, const cpu::TrainConfig* t) {
    static char msg[1024];
    (void)t;
#if !HAVE_NCCL
    snprintf(msg, sizeof msg, "this ./train_llama_subtrack was built without NCCL (nccl.h was not found), so it "
             "trains in one process; install NCCL (libnccl-dev, or NVIDIA's nccl packages) and rebuild with make "
             "train, or run one process");
    (void)pg;
    return msg;
#else
    int count = 0;
    cuda_check(cudaGetDeviceCount(&count));
    int device = pg->local_rank >= 0 ? pg->local_rank : pg->rank % count;
    if (device >= count) {
        const char* visible = getenv("CUDA_VISIBLE_DEVICES");
        snprintf(msg, sizeof msg, "local rank %d (%s) would use GPU %d, but this process sees %d GPU%s%s%s; start at "
                 "most %d processes a node, or give --gpus_per_node", device, pg->source, device, count,
                 count == 1 ? "" : "s", visible ? " (CUDA_VISIBLE_DEVICES=" : "", visible ? visible : "", count);
        if (visible) { strncat(msg, ")", sizeof msg - strlen(msg) - 1); }
        return msg;
    }
    cuda_check(cudaSetDevice(device));
    g_dp.rank = pg->rank;
    g_dp.size = pg->size;
    g_dp.timeout = pg->timeout;
    if (pthread_create(&g_dp.watchdog, NULL, dp_watchdog, NULL) != 0) {
        snprintf(msg, sizeof msg, "cannot start the collectives' watchdog thread (%s)", strerror(errno));
        return msg;
    }
    g_dp.watchdog_running = 1;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (pg->rank == 0) { nccl_check(ncclGetUniqueId(&id)); }
    char err[1024];
    if (cpu::rendezvous_share(pg, &id, sizeof id, err, sizeof err) != 0) {
        snprintf(msg, sizeof msg, "%s", err);
        return msg;
    }
    dp_wait_begin("the meeting (ncclCommInitRank)");
    nccl_check(ncclCommInitRank(&g_dp.comm, pg->size, id, pg->rank));
    dp_wait_end();
    cpu::rendezvous_finish(pg);
    cuda_check(cudaMalloc((void**)&g_dp.sum, sizeof(double)));
    cuda_check(cudaStreamCreateWithFlags(&g_dp.stream, cudaStreamNonBlocking));
    cuda_check(cudaEventCreateWithFlags(&g_dp.ready, cudaEventDisableTiming));
    cuda_check(cudaEventCreateWithFlags(&g_dp.done, cudaEventDisableTiming));
    g_unit_grad_sum = dp_sum_floats;
    g_unit_grad_ready = dp_sum_when_ready;
    return NULL;
#endif
}

// the optimizer's collectives (ZeRO-1), on stream 0 after its step
static void dp_group_start(void) {
#if HAVE_NCCL
    if (g_dp.size > 1) { nccl_check(ncclGroupStart()); }
#endif
}
static void dp_group_end(void) {
#if HAVE_NCCL
    if (g_dp.size > 1) { nccl_check(ncclGroupEnd()); }
#endif
}
static void dp_broadcast_floats(float* x, size_t count, int root) {
#if HAVE_NCCL
    if (g_dp.size > 1) { nccl_check(ncclBroadcast(x, x, count, ncclFloat, root, g_dp.comm, 0)); }
#else
    (void)x; (void)count; (void)root;
#endif
}
static void dp_broadcast_bf16(bf16* x, size_t count, int root) {
#if HAVE_NCCL
    if (g_dp.size > 1) { nccl_check(ncclBroadcast(x, x, count, ncclBfloat16, root, g_dp.comm, 0)); }
#else
    (void)x; (void)count; (void)root;
#endif
}
static int dp_rank(void) { return g_dp.rank; }

// x summed over the ranks: for evaluation, the saved-state check and agreement
static double gpu_sum_over_ranks(double x) {
    if (g_dp.size == 1) { return x; }
#if HAVE_NCCL
    dp_wait_begin("a sum over the ranks");
    cuda_check(cudaMemcpy(g_dp.sum, &x, sizeof x, cudaMemcpyHostToDevice));
    nccl_check(ncclAllReduce(g_dp.sum, g_dp.sum, 1, ncclDouble, ncclSum, g_dp.comm, 0));
    cuda_check(cudaMemcpy(&x, g_dp.sum, sizeof x, cudaMemcpyDeviceToHost));
    dp_wait_end();
#endif
    return x;
}

static void gpu_leave(void) {
    if (g_dp.size == 1) { return; }
#if HAVE_NCCL
    g_unit_grad_sum = NULL;
    g_unit_grad_ready = NULL;
    cuda_check(cudaEventDestroy(g_dp.ready));
    cuda_check(cudaEventDestroy(g_dp.done));
    cuda_check(cudaStreamDestroy(g_dp.stream));
    cuda_check(cudaFree(g_dp.sum));
    g_dp.sum = NULL;
    nccl_check(ncclCommDestroy(g_dp.comm));
#endif
    if (g_dp.watchdog_running) {
        pthread_cancel(g_dp.watchdog);
        pthread_join(g_dp.watchdog, NULL);
        g_dp.watchdog_running = 0;
    }
    g_dp.size = 1;
    g_dp.rank = 0;
}

static const char* gpu_check(const cpu::TrainConfig* t) {
    (void)t;
    require_gpu_or_exit();
    return NULL;
}

// the device memory of the run: its plan, and the free memory the build saw
static struct {
    cpu::LlamaConfig config;
    cpu::TrainConfig train;
    int B, T;
    MemoryPlan plan;
    size_t free_at_start, device_total;
    size_t least_free;      // cudaMemGetInfo's free bytes, the least seen after a step
    int steps_sampled;
} gpu_memory;

// the planned need, the free memory, and the flags that would fit
static void gpu_oom_explain(FILE* out) {
    char fits[512];
    memory_plan_suggest(&gpu_memory.config, &gpu_memory.train, gpu_memory.B, gpu_memory.T, gpu_memory.free_at_start,
                        fits, sizeof fits);
    fprintf(out, "this run plans %.2f GiB of device memory (--memory_plan lists it); the GPU had %.2f GiB free of "
            "%.2f GiB when it started. to fit: %s\n", gib(gpu_memory.plan.total), gib(gpu_memory.free_at_start),
            gib(gpu_memory.device_total), fits);
}

static const char* gpu_build(const cpu::LlamaConfig* c, const cpu::TrainConfig* t, int B, int T) {
    // the plan against the free memory, before anything is allocated: a run
    // that cannot fit stops here, saying what would
    const char* problem = memory_plan_build(&gpu_memory.plan, c, t, B, T);
    if (problem != NULL) { return problem; }
    gpu_memory.config = *c;
    gpu_memory.train = *t;
    gpu_memory.B = B;
    gpu_memory.T = T;
    cuda_check(cudaMemGetInfo(&gpu_memory.free_at_start, &gpu_memory.device_total));
    g_oom_explain = gpu_oom_explain;
    if (gpu_memory.plan.total > gpu_memory.free_at_start) {
        fprintf(stderr, "error: out of GPU memory: ");
        gpu_oom_explain(stderr);
        exit(EXIT_FAILURE);
    }
    cublas_init();
    cpu::llama_build(&gpu_trainer.host_model, c);
    cpu::llama_init_weights(&gpu_trainer.host_model, (uint64_t)t->seed);
    if (!t->master_weights) { cpu::llama_round_weights_bf16(&gpu_trainer.host_model); }
    int per_layer = cpu::optimizer_name_per_layer(t->optimizer);
    // ZeRO-1 in bf16 shards the fp32 masters too: the model keeps bf16 weights only
    int shard_masters = zero_shards_masters(t, g_dp.size);
    llama_build(&gpu_trainer.model, c, dtype_from_name(t->dtype), t->master_weights && !shard_masters, per_layer);
    gpu_trainer.model.recompute = t->activation_checkpointing;
    llama_alloc_activations(&gpu_trainer.model, B, T);  // once: later batches reuse it
    llama_upload_params(&gpu_trainer.model, gpu_trainer.host_model.params_memory);
    gpu_trainer.logits_row = (float*)cpu::malloc_check((size_t)c->V * sizeof(float), "sample logits");
    // ZeRO-1 over the ranks (--zero_stage 1), else every state here
    problem = optimizer_build_sharded(&gpu_trainer.opt, c, t, g_dp.rank, t->zero_stage == 1 ? g_dp.size : 0,
                                      shard_masters);
    gpu_trainer.opt.host_params = gpu_trainer.host_model.params_memory;
    if (problem == NULL && shard_masters) { optimizer_zero_copy(&gpu_trainer.opt, 0); }  // the initial masters
    if (problem == NULL && per_layer) { optimizer_attach_per_layer(&gpu_trainer.opt, &gpu_trainer.model); }
    return problem;
}

static void gpu_report(const cpu::TrainConfig* t, int B, int T) {
    cudaDeviceProp prop;
    int device = 0;
    cuda_check(cudaGetDevice(&device));
    cuda_check(cudaGetDeviceProperties(&prop, device));
    printf("device:       %s (compute %d.%d, %d SMs), dtype %s\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, t->dtype);
    memory_plan_print(&gpu_memory.plan, &gpu_memory.config, t, B, T, stdout);
    const Optimizer* o = &gpu_trainer.opt;
    if (o->zero_ranks > 0) {
        double mine = (2.0 * o->adam_floats + o->lowrank_device_floats) * 4 / 1048576.0;
        double all = ((double)o->host.num_adam + o->host.num_adam_v + o->host.lowrank_floats) * 4 / 1048576.0;
        printf("ZeRO-1:       rank %d keeps %.2f MiB of the %.2f MiB of optimizer states (%d of %d low-rank "
               "matrices, %zu of %zu AdamW floats); the plan above counts them all\n", o->zero_rank, mine, all,
               o->num_owned, o->host.num_lowrank, o->adam_floats, o->host.num_adam);
    }
    if (gpu_trainer.opt.ctx.eig_lwork_over_plan > 0) {
        printf("note:         cuSOLVER asked for %d doubles of eigendecomposition workspace above the plan's "
               "bound; the peak is that much higher\n", gpu_trainer.opt.ctx.eig_lwork_over_plan);
    }
    printf("device free:  %.2f GiB of %.2f GiB before the build\n", gib(gpu_memory.free_at_start),
           gib(gpu_memory.device_total));
}

static void gpu_zero_grad(void) {
    llama_zero_grad(&gpu_trainer.model);
    g_dp.micro = 0;
    g_dp.queued = 0;
    // the backward sums the gradients over the ranks (per unit, or queued
    // behind it): the watchdog times the step's work from here (a step is
    // far shorter than --collective_timeout)
    dp_wait_begin("the backward's gradient sums");
}
static void gpu_begin_step(float lr) { optimizer_begin_step(&gpu_trainer.opt, lr); }
static float gpu_forward(const int* inputs, const int* targets, int B, int T) {
    return llama_forward(&gpu_trainer.model, inputs, targets, B, T);
}
// a training micro-batch: nothing is read back (llama_forward_async)
static void gpu_micro_step(const int* inputs, const int* targets, int B, int T, int accum) {
    llama_forward_async(&gpu_trainer.model, inputs, targets, B, T, accum);
    g_dp.micro++;  // the last one's backward queues the gradient sums (dp_sum_when_ready)
    g_dp.accum = accum;
    // each rank's share of the step's mean: 1 / (accum N)
    llama_backward(&gpu_trainer.model, inputs, targets, 1.0f / ((float)accum * g_dp.size));
}
static const float* gpu_logits_row(int row) {
    Llama* m = &gpu_trainer.model;
    size_t V = (size_t)m->config.V;
    const char* logits = (const char*)m->acts.logits;
    device_to_host_float(gpu_trainer.logits_row, logits + (size_t)row * m->Vp * dtype_bytes(m->dtype), V, m->dtype);
    return gpu_trainer.logits_row;
}
static void gpu_step_stats(double* loss, double* norm) {
    Llama* m = &gpu_trainer.model;
    g_dp.step = gpu_trainer.opt.host.step + 1;
    if (g_dp.size > 1) {
#if HAVE_NCCL
        if (m->per_layer) {
            // the gradients were summed unit by unit in the backward: the loss
            nccl_check(ncclAllReduce(step_stats_device() + STAT_LOSS, step_stats_device() + STAT_LOSS, 1, ncclDouble,
                                     ncclSum, g_dp.comm, 0));
        } else {
            dp_wait_begin("the gradient sum");
            if (g_dp.queued != m->num_parameters) {
                fprintf(stderr, "error: internal: the backward queued %zu gradient floats for summing over the ranks, "
                        "of %zu; please report this\n", g_dp.queued, m->num_parameters);
                exit(EXIT_FAILURE);
            }
            const Optimizer* o = &gpu_trainer.opt;
            if (o->zero_ranks > 0) {
                // ZeRO-1: each rank has the whole sum of its own pieces only:
                // their squares, summed over the ranks with the loss
                cuda_check(cudaEventRecord(g_dp.done, g_dp.stream));
                cuda_check(cudaStreamWaitEvent(0, g_dp.done, 0));
                double* stats = step_stats_device();
                cuda_check(cudaMemsetAsync(stats + STAT_NORM2, 0, sizeof(double), 0));
                float** grads = cpu::parameter_pointers(&m->grads);
                for (int p = 0; p < o->shards.num_pieces; p++) {
                    const cpu::ShardPiece* pc = &o->shards.pieces[p];
                    if (pc->owner != g_dp.rank) { continue; }
                    grad_squared_norm_on_device(stats + STAT_NORM2, grads[pc->tensor] + pc->layer * pc->per_layer +
                                                pc->first, pc->count, 1);
                }
                static_assert(STAT_NORM2 == STAT_LOSS + 1, "the loss and the squared norm side by side");
                nccl_check(ncclAllReduce(stats + STAT_LOSS, stats + STAT_LOSS, 2, ncclDouble, ncclSum, g_dp.comm, 0));
                step_stats_take(loss, norm);
                dp_wait_end();
                *loss /= g_dp.size;
                return;
            }
            // the loss behind the gradients on their stream, then stream 0 waits for both
            cuda_check(cudaEventRecord(g_dp.ready, 0));
            cuda_check(cudaStreamWaitEvent(g_dp.stream, g_dp.ready, 0));
            nccl_check(ncclAllReduce(step_stats_device() + STAT_LOSS, step_stats_device() + STAT_LOSS, 1, ncclDouble,
                                     ncclSum, g_dp.comm, g_dp.stream));
            cuda_check(cudaEventRecord(g_dp.done, g_dp.stream));
            cuda_check(cudaStreamWaitEvent(0, g_dp.done, 0));
        }
#endif
    }
    llama_step_stats(m, loss, norm);  // the one read of the device: the sums have arrived
    dp_wait_end();
    *loss /= g_dp.size;  // the mean of the ranks' means
}
static void gpu_grad_scale(float s) { grad_scale(gpu_trainer.model.grads_memory, gpu_trainer.model.grads_floats, s); }
static void gpu_optimizer_step(float lr) {
    // no wait for the device here: the step's one wait is the read of its loss
    // and norm (gpu_step_stats), which the next step's makes after this
    // update, so a step's wall time (train_run) still counts one step of
    // device work in the steady state
    optimizer_step(&gpu_trainer.opt, &gpu_trainer.model, lr);
    // the real use beside the plan: what the run took from the device's free
    // memory, the CUDA libraries' own buffers included
    size_t free_now = 0, total = 0;
    cuda_check(cudaMemGetInfo(&free_now, &total));
    if (gpu_memory.steps_sampled++ == 0 || free_now < gpu_memory.least_free) { gpu_memory.least_free = free_now; }
}
static int gpu_steps_taken(void) { return gpu_trainer.opt.host.step; }
static const cpu::Optimizer* gpu_optimizer(void) { return &gpu_trainer.opt.host; }
static double gpu_subspace_seconds(void) { return optimizer_subspace_seconds(&gpu_trainer.opt); }
static int gpu_save(const cpu::TrainConfig* t, cpu::ShardLoader* loader, cpu::Rng* rng, const char* dir, char* err,
                    size_t errlen) {
    return checkpoint_save(&gpu_trainer.model, &gpu_trainer.opt, &gpu_trainer.host_model, t, loader, rng, dir, err,
                           errlen);
}
static int gpu_load(const cpu::TrainConfig* t, cpu::ShardLoader* loader, cpu::Rng* rng, const char* dir, char* err,
                    size_t errlen) {
    return checkpoint_load(&gpu_trainer.model, &gpu_trainer.opt, &gpu_trainer.host_model, t, loader, rng, dir, err,
                           errlen);
}
static void gpu_free(void) {
    if (gpu_memory.steps_sampled > 0) {
        size_t used = gpu_memory.free_at_start > gpu_memory.least_free ? gpu_memory.free_at_start - gpu_memory.least_free
                                                                        : 0;
        printf("device memory: planned %.3f GiB; used %.3f GiB by cudaMemGetInfo (free before the build minus the "
               "least free after any of %d steps; cuBLAS's and cuSOLVER's own buffers included)\n",
               gib(gpu_memory.plan.total), gib(used), gpu_memory.steps_sampled);
        gpu_memory.steps_sampled = 0;  // a later build in the same process starts its own count
    }
    optimizer_free(&gpu_trainer.opt);
    llama_free(&gpu_trainer.model);
    cpu::llama_free(&gpu_trainer.host_model);
    free(gpu_trainer.logits_row);
    gpu_trainer.logits_row = NULL;
    grad_norm_release();
    column_partials_release();
    encoder_buckets_release();
    staging_release(&g_batch_staging);
    staging_release(&g_rope_staging);
    cublas_free();
    g_oom_explain = NULL;
    gpu_leave();
}

const cpu::TrainBackend gpu_backend = {
    "./train_llama_subtrack", "bfloat16", gpu_check, gpu_build, gpu_report, gpu_memory_plan, gpu_zero_grad,
    gpu_begin_step, gpu_forward,
    gpu_micro_step, gpu_logits_row, gpu_step_stats, gpu_grad_scale, gpu_optimizer_step, gpu_steps_taken,
    gpu_optimizer, gpu_subspace_seconds, gpu_save, gpu_load, gpu_free, gpu_join, gpu_sum_over_ranks,
};

#ifndef TESTING
int main(int argc, char** argv) {
    return cpu::train_run(&gpu_backend, argc, argv);
}
#endif
