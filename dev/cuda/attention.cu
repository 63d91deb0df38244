/*
attention.cu: causal multi-head attention forward, standalone, with a CPU
reference (attention_forward of train_llama_subtrack.c), two GPU versions,
validation and a benchmark.

build and run on a GPU:
    nvcc -O3 -arch=sm_90 -o dev/cuda/attention dev/cuda/attention.cu -lcublas
    ./dev/cuda/attention 1              # version 1 or 2 (default 1)
under the CPU harness (no GPU; small sizes, validation only, timings are CPU's):
    make dev/cuda/attention_emu && ./dev/cuda/attention_emu 1

shapes: q, k, v, out (B, T, NH, HS) (row stride C = NH * HS, heads side by
side as the QKV matmuls write them), att (B, NH, T, T) the softmax
probabilities kept for the backward pass, zero above the diagonal.
    att = softmax_causal(q k^T / sqrt(HS)),  out = att v

versions:
    1: cuBLAS strided-batched products over the heads of one sequence (the
       heads are HS floats apart, so one batch stride covers them and no
       permute copy is needed), with a causal softmax kernel between: one warp
       per row of att, max and sum by warp shuffles. keeps att for backward.
    2: a simple fused kernel: one warp per query; its scores live in shared
       memory, never in global memory. O(T) shared floats per warp, no tensor
       cores: a readable baseline, not a flash-attention.
*/
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#define WARP 32
#define SOFTMAX_BLOCK 256
#define FUSED_WARPS 4

static void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: CUDA %s at %s:%d\n", cudaGetErrorString(err), file, line);
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)
static void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS status %d at %s:%d\n", (int)status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define cublasCheck(status) cublas_check((status), __FILE__, __LINE__)

// ---- CPU reference

void attention_forward_cpu(float* out, float* att, const float* q, const float* k, const float* v,
                           int B, int T, int NH, int HS) {
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float* qh = q + (size_t)b * T * C + h * HS;
            const float* kh = k + (size_t)b * T * C + h * HS;
            const float* vh = v + (size_t)b * T * C + h * HS;
            float* a = att + ((size_t)b * NH + h) * T * T;
            for (int t = 0; t < T; t++) {
                float* row = a + (size_t)t * T;
                float maxv = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    float s = 0.0f;
                    for (int d = 0; d < HS; d++) { s += qh[(size_t)t * C + d] * kh[(size_t)t2 * C + d]; }
                    row[t2] = s * scale;
                    maxv = fmaxf(maxv, row[t2]);
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) { row[t2] = expf(row[t2] - maxv); sum += row[t2]; }
                for (int t2 = 0; t2 <= t; t2++) { row[t2] /= sum; }
                for (int t2 = t + 1; t2 < T; t2++) { row[t2] = 0.0f; }
                float* o = out + (size_t)b * T * C + (size_t)t * C + h * HS;
                for (int d = 0; d < HS; d++) {
                    float acc = 0.0f;
                    for (int t2 = 0; t2 <= t; t2++) { acc += row[t2] * vh[(size_t)t2 * C + d]; }
                    o[d] = acc;
                }
            }
        }
    }
}

// ---- version 1: cuBLAS + causal softmax

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) { x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset)); }
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) { x += __shfl_xor_sync(0xffffffffu, x, offset); }
    return x;
}

// att (B*NH*T rows of T): in place, the scaled scores become causal softmax rows
__global__ void causal_softmax_kernel(float* att, int rows, int T) {
    int lane = threadIdx.x % WARP;
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) { return; }  // whole warps leave together
    int t = row % T;
    float* a = att + (size_t)row * T;
    float maxv = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += WARP) { maxv = fmaxf(maxv, a[t2]); }
    maxv = warp_max(maxv);
    float sum = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += WARP) {
        float e = expf(a[t2] - maxv);
        a[t2] = e;
        sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
    for (int t2 = lane; t2 < T; t2 += WARP) { a[t2] = t2 <= t ? a[t2] * inv : 0.0f; }
}

void attention_forward1(cublasHandle_t handle, float* out, float* att, const float* q, const float* k,
                        const float* v, int B, int T, int NH, int HS) {
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS), one = 1.0f, zero = 0.0f;
    for (int b = 0; b < B; b++) {
        size_t off = (size_t)b * T * C;
        float* a = att + (size_t)b * NH * T * T;
        // row-major att_h (T, T) = scale q_h k_h^T is column-major att_h^T = scale k_h q_h^T:
        // k_h^T is column-major (HS, T) with ld C, so op T gives k_h (T, HS); q_h^T (HS, T) as is
        cublasCheck(cublasSgemmStridedBatched(handle, CUBLAS_OP_T, CUBLAS_OP_N, T, T, HS, &scale,
                                              k + off, C, HS, q + off, C, HS, &zero, a, T, (long long)T * T, NH));
        causal_softmax_kernel<<<(NH * T + SOFTMAX_BLOCK / WARP - 1) / (SOFTMAX_BLOCK / WARP), SOFTMAX_BLOCK>>>(
            a, NH * T, T);
        cudaCheck(cudaGetLastError());
        // row-major out_h (T, HS) = att_h v_h is column-major out_h^T = v_h^T att_h^T
        cublasCheck(cublasSgemmStridedBatched(handle, CUBLAS_OP_N, CUBLAS_OP_N, HS, T, T, &one,
                                              v + off, C, HS, a, T, (long long)T * T, &zero, out + off, C, HS, NH));
    }
}

// ---- version 2: fused, one warp per query

__global__ void attention_fused_kernel(float* out, const float* q, const float* k, const float* v,
                                       int B, int T, int NH, int HS) {
    extern __shared__ float scores[];  // (FUSED_WARPS, T)
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int query = blockIdx.x * FUSED_WARPS + warp;  // over (B, NH, T)
    if (query >= B * NH * T) { return; }
    int t = query % T, h = (query / T) % NH, b = query / (T * NH);
    int C = NH * HS;
    const float* qt = q + (size_t)b * T * C + (size_t)t * C + h * HS;
    const float* kh = k + (size_t)b * T * C + h * HS;
    const float* vh = v + (size_t)b * T * C + h * HS;
    float* s = scores + (size_t)warp * T;
    float scale = 1.0f / sqrtf((float)HS);
    float maxv = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += WARP) {
        float acc = 0.0f;
        for (int d = 0; d < HS; d++) { acc += qt[d] * kh[(size_t)t2 * C + d]; }
        s[t2] = acc * scale;
        maxv = fmaxf(maxv, s[t2]);
    }
    maxv = warp_max(maxv);
    float sum = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += WARP) {
        float e = expf(s[t2] - maxv);
        s[t2] = e;
        sum += e;
    }
    float inv = 1.0f / warp_sum(sum);  // the shuffle also orders the writes to s before the reads below
    float* o = out + (size_t)b * T * C + (size_t)t * C + h * HS;
    for (int d = lane; d < HS; d += WARP) {
        float acc = 0.0f;
        for (int t2 = 0; t2 <= t; t2++) { acc += s[t2] * vh[(size_t)t2 * C + d]; }
        o[d] = acc * inv;
    }
}

void attention_forward2(float* out, const float* q, const float* k, const float* v, int B, int T, int NH, int HS) {
    size_t smem = (size_t)FUSED_WARPS * T * sizeof(float);
    if (smem > 48 * 1024) {
        cudaCheck(cudaFuncSetAttribute(attention_fused_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    }
    int queries = B * NH * T;
    attention_fused_kernel<<<(queries + FUSED_WARPS - 1) / FUSED_WARPS, FUSED_WARPS * WARP, smem>>>(out, q, k, v,
                                                                                                  B, T, NH, HS);
    cudaCheck(cudaGetLastError());
}

// ---- validation and benchmark

static float* random_floats(size_t n, unsigned* seed, float lo, float hi) {
    float* x = (float*)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        x[i] = lo + (hi - lo) * (float)(*seed >> 8) / 16777216.0f;
    }
    return x;
}

static float* to_device(const float* x, size_t n) {
    float* d;
    cudaCheck(cudaMalloc((void**)&d, n * sizeof(float)));
    cudaCheck(cudaMemcpy(d, x, n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

static double rel_err(const float* a, const float* b, size_t n) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) { e = d; }
        s = fmax(s, fabs((double)b[i]));
    }
    return e / fmax(s, 1e-30);
}

// fp32 dot products of length HS and T in other orders (cuBLAS, warps) and
// expf: a few ulp times sqrt(T): 1e-5 of the scale
#define TOL 1e-5

int main(int argc, char** argv) {
    int version = argc > 1 ? atoi(argv[1]) : 1;
    if (version < 1 || version > 2) {
        fprintf(stderr, "error: unknown version %d; hint: use 1 (cuBLAS + softmax) or 2 (fused)\n", version);
        return 1;
    }
#ifdef CUDA_EMU
    const int B = 2, T = 37, NH = 3, HS = 52, reps = 1;  // 40m's head size 52, T not a multiple of 32
    printf("under the CPU harness (dev/cuda_emu): timings are CPU timings\n");
#else
    const int B = 8, T = 256, NH = 16, HS = 64, reps = 20;  // 350M at the paper's T
#endif
    int C = NH * HS;
    size_t n = (size_t)B * T * C, na = (size_t)B * NH * T * T;
    unsigned seed = 3;
    float* q = random_floats(n, &seed, -1.0f, 1.0f);
    float* k = random_floats(n, &seed, -1.0f, 1.0f);
    float* v = random_floats(n, &seed, -1.0f, 1.0f);
    float* out = (float*)malloc(n * sizeof(float));
    float* att = (float*)malloc(na * sizeof(float));
    attention_forward_cpu(out, att, q, k, v, B, T, NH, HS);
    float* d_q = to_device(q, n);
    float* d_k = to_device(k, n);
    float* d_v = to_device(v, n);
    float *d_out, *d_att;
    cudaCheck(cudaMalloc((void**)&d_out, n * sizeof(float)));
    cudaCheck(cudaMalloc((void**)&d_att, na * sizeof(float)));
    cublasHandle_t handle;
    cublasCheck(cublasCreate(&handle));
    float* got = (float*)malloc((na > n ? na : n) * sizeof(float));
    int failures = 0;
    if (version == 1) {
        attention_forward1(handle, d_out, d_att, d_q, d_k, d_v, B, T, NH, HS);
        cudaCheck(cudaMemcpy(got, d_att, na * sizeof(float), cudaMemcpyDeviceToHost));
        double e = rel_err(got, att, na);
        failures += !(e <= TOL);
        printf("%s version 1, B %d T %d NH %d HS %d: att err %.1e (tol %.0e)\n", e <= TOL ? "PASS" : "FAIL",
               B, T, NH, HS, e, TOL);
    } else {
        attention_forward2(d_out, d_q, d_k, d_v, B, T, NH, HS);
    }
    cudaCheck(cudaMemcpy(got, d_out, n * sizeof(float), cudaMemcpyDeviceToHost));
    double e = rel_err(got, out, n);
    failures += !(e <= TOL);
    printf("%s version %d, B %d T %d NH %d HS %d: out err %.1e (tol %.0e)\n", e <= TOL ? "PASS" : "FAIL", version,
           B, T, NH, HS, e, TOL);
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    cudaCheck(cudaEventRecord(start));
    for (int it = 0; it < reps; it++) {
        if (version == 1) {
            attention_forward1(handle, d_out, d_att, d_q, d_k, d_v, B, T, NH, HS);
        } else {
            attention_forward2(d_out, d_q, d_k, d_v, B, T, NH, HS);
        }
    }
    cudaCheck(cudaEventRecord(stop));
    cudaCheck(cudaEventSynchronize(stop));
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    ms /= reps;
    double flops = 4.0 * B * NH * (double)T * T * HS / 2.0;  // two products, causal half
    printf("version %d: %.4f ms, %.1f GFLOP/s (causal flops)\n", version, ms, flops / (ms * 1e-3) / 1e9);
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    cublasCheck(cublasDestroy(handle));
    free(q); free(k); free(v); free(out); free(att); free(got);
    cudaCheck(cudaFree(d_q)); cudaCheck(cudaFree(d_k)); cudaCheck(cudaFree(d_v));
    cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_att));
    printf("%s\n", failures ? "FAILED" : "all correct");
    return failures ? 1 : 0;
}
