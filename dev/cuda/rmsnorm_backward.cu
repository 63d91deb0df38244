/*
rmsnorm_backward.cu: the RMSNorm backward pass, standalone, with a CPU
reference (rmsnorm_backward of train_llama_subtrack.c), kernel versions,
validation and a benchmark.

build and run on a GPU:
    nvcc -O3 -arch=sm_90 -o dev/cuda/rmsnorm_backward dev/cuda/rmsnorm_backward.cu
    ./dev/cuda/rmsnorm_backward 2       # kernel version 1 or 2 (default 2)
under the CPU harness (no GPU; small sizes, validation only, timings are CPU's):
    make dev/cuda/rmsnorm_backward_emu && ./dev/cuda/rmsnorm_backward_emu 2

in the forward pass o = w * x * s with s = (mean(x^2) + eps)^-1/2, so
    dx += s * (w * do) - x * s^3 / C * sum(w * do * x)     (per row)
    dw += sum over rows of do * x * s                        (per channel)
dinp and dweight accumulate (+=). dweight is a sum over all B*T rows: it is
summed per channel in a fixed order (no atomics), so it is deterministic.

versions:
    1: naive: one thread per row (loops over C) for dinp, one thread per
       channel (loops over rows) for dweight
    2: one block per row, the dot product by warp shuffles and shared memory,
       then coalesced dinp; dweight by a (32, 8) block per 32 channels: lanes
       read neighbouring channels, 8 warps split the rows, partials meet in
       shared memory in a fixed order
*/
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <cuda_runtime.h>

#define WARP 32
#define ROW_BLOCK 256
#define COLS 32
#define ROWS 8

static void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: CUDA %s at %s:%d\n", cudaGetErrorString(err), file, line);
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)

// ---- CPU reference

void rmsnorm_backward_cpu(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                          const float* rstd, int BT, int C) {
    // dinp (B,T,C) +=, dweight (C) +=, dout (B,T,C), inp (B,T,C), weight (C), rstd (B,T)
    for (int i = 0; i < BT; i++) {
        const float* x = inp + (size_t)i * C;
        const float* g = dout + (size_t)i * C;
        float* dx = dinp + (size_t)i * C;
        float s = rstd[i];
        double dot = 0.0;
        for (int c = 0; c < C; c++) { dot += (double)weight[c] * g[c] * x[c]; }
        float k = (float)(dot * s * s * s / C);
        for (int c = 0; c < C; c++) { dx[c] += s * weight[c] * g[c] - k * x[c]; }
    }
    for (int c = 0; c < C; c++) {
        double acc = 0.0;
        for (int i = 0; i < BT; i++) { acc += (double)dout[(size_t)i * C + c] * inp[(size_t)i * C + c] * rstd[i]; }
        dweight[c] += (float)acc;
    }
}

// ---- version 1

__global__ void rmsnorm_backward_dinp_kernel1(float* dinp, const float* dout, const float* inp, const float* weight,
                                              const float* rstd, int BT, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= BT) { return; }
    const float* x = inp + (size_t)i * C;
    const float* g = dout + (size_t)i * C;
    float* dx = dinp + (size_t)i * C;
    float s = rstd[i];
    double dot = 0.0;
    for (int c = 0; c < C; c++) { dot += (double)weight[c] * g[c] * x[c]; }
    float k = (float)(dot * s * s * s / C);
    for (int c = 0; c < C; c++) { dx[c] += s * weight[c] * g[c] - k * x[c]; }
}

__global__ void rmsnorm_backward_dweight_kernel1(float* dweight, const float* dout, const float* inp,
                                                 const float* rstd, int BT, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) { return; }
    double acc = 0.0;
    for (int i = 0; i < BT; i++) { acc += (double)dout[(size_t)i * C + c] * inp[(size_t)i * C + c] * rstd[i]; }
    dweight[c] += (float)acc;
}

// ---- version 2

__device__ __forceinline__ double warp_sum(double x) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) { x += __shfl_xor_sync(0xffffffffu, x, offset); }
    return x;
}

__global__ void __launch_bounds__(ROW_BLOCK)
rmsnorm_backward_dinp_kernel2(float* dinp, const float* dout, const float* inp, const float* weight,
                              const float* rstd, int BT, int C) {
    __shared__ double warp_part[ROW_BLOCK / WARP];
    int i = blockIdx.x;
    const float* x = inp + (size_t)i * C;
    const float* g = dout + (size_t)i * C;
    float* dx = dinp + (size_t)i * C;
    float s = rstd[i];
    double dot = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) { dot += (double)weight[c] * g[c] * x[c]; }
    dot = warp_sum(dot);
    if (threadIdx.x % WARP == 0) { warp_part[threadIdx.x / WARP] = dot; }
    __syncthreads();
    dot = 0.0;
    for (int w = 0; w < (int)(blockDim.x / WARP); w++) { dot += warp_part[w]; }  // same order in every thread
    float k = (float)(dot * s * s * s / C);
    for (int c = threadIdx.x; c < C; c += blockDim.x) { dx[c] += s * weight[c] * g[c] - k * x[c]; }
}

__global__ void __launch_bounds__(COLS * ROWS)
rmsnorm_backward_dweight_kernel2(float* dweight, const float* dout, const float* inp, const float* rstd,
                                 int BT, int C) {
    __shared__ double part[ROWS][COLS];
    int c = blockIdx.x * COLS + threadIdx.x;
    double acc = 0.0;
    if (c < C) {
        for (int i = threadIdx.y; i < BT; i += ROWS) {
            acc += (double)dout[(size_t)i * C + c] * inp[(size_t)i * C + c] * rstd[i];
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        double s = 0.0;
        for (int y = 0; y < ROWS; y++) { s += part[y][threadIdx.x]; }
        dweight[c] += (float)s;
    }
}

// ---- launcher

void rmsnorm_backward(int version, float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int BT, int C) {
    if (version == 1) {
        rmsnorm_backward_dinp_kernel1<<<(BT + 127) / 128, 128>>>(dinp, dout, inp, weight, rstd, BT, C);
        rmsnorm_backward_dweight_kernel1<<<(C + 127) / 128, 128>>>(dweight, dout, inp, rstd, BT, C);
    } else {
        rmsnorm_backward_dinp_kernel2<<<BT, ROW_BLOCK>>>(dinp, dout, inp, weight, rstd, BT, C);
        rmsnorm_backward_dweight_kernel2<<<(C + COLS - 1) / COLS, dim3(COLS, ROWS)>>>(dweight, dout, inp, rstd,
                                                                                     BT, C);
    }
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

// both sides: double dot / sum, then the same fp32 expressions; fused
// multiply-adds and the summation order leave a few ulp: 1e-6 of the scale
#define TOL 1e-6

int main(int argc, char** argv) {
    int version = argc > 1 ? atoi(argv[1]) : 2;
    if (version < 1 || version > 2) {
        fprintf(stderr, "error: unknown kernel version %d; hint: use 1 (naive) or 2 (block per row)\n", version);
        return 1;
    }
#ifdef CUDA_EMU
    const int B = 2, T = 13, C = 416, reps = 1;  // 40m's C: not a power of two
    printf("under the CPU harness (dev/cuda_emu): timings are CPU timings\n");
#else
    const int B = 8, T = 1024, C = 2048, reps = 50;  // 1B's C
#endif
    int BT = B * T;
    size_t n = (size_t)BT * C;
    unsigned seed = 1;
    float* dinp = random_floats(n, &seed, -1.0f, 1.0f);
    float* dweight = random_floats(C, &seed, -1.0f, 1.0f);
    float* dout = random_floats(n, &seed, -1.0f, 1.0f);
    float* inp = random_floats(n, &seed, -1.0f, 1.0f);
    float* weight = random_floats(C, &seed, 0.5f, 1.5f);
    float* rstd = random_floats(BT, &seed, 0.5f, 2.0f);
    float* d_dinp = to_device(dinp, n);
    float* d_dweight = to_device(dweight, C);
    float* d_dout = to_device(dout, n);
    float* d_inp = to_device(inp, n);
    float* d_weight = to_device(weight, C);
    float* d_rstd = to_device(rstd, BT);
    rmsnorm_backward_cpu(dinp, dweight, dout, inp, weight, rstd, BT, C);
    rmsnorm_backward(version, d_dinp, d_dweight, d_dout, d_inp, d_weight, d_rstd, BT, C);
    float* out = (float*)malloc(n * sizeof(float));
    cudaCheck(cudaMemcpy(out, d_dinp, n * sizeof(float), cudaMemcpyDeviceToHost));
    double e_dinp = rel_err(out, dinp, n);
    cudaCheck(cudaMemcpy(out, d_dweight, C * sizeof(float), cudaMemcpyDeviceToHost));
    double e_dweight = rel_err(out, dweight, C);
    int failures = !(e_dinp <= TOL) + !(e_dweight <= TOL);
    printf("%s version %d, B %d T %d C %d: dinp err %.1e (tol %.0e)\n", e_dinp <= TOL ? "PASS" : "FAIL", version,
           B, T, C, e_dinp, TOL);
    printf("%s version %d, B %d T %d C %d: dweight err %.1e (tol %.0e)\n", e_dweight <= TOL ? "PASS" : "FAIL",
           version, B, T, C, e_dweight, TOL);
    // determinism: a second run from the same inputs gives the same bits
    float* again = (float*)malloc(C * sizeof(float));
    cudaCheck(cudaMemcpy(d_dweight, weight, C * sizeof(float), cudaMemcpyHostToDevice));
    rmsnorm_backward(version, d_dinp, d_dweight, d_dout, d_inp, d_weight, d_rstd, BT, C);
    cudaCheck(cudaMemcpy(out, d_dweight, C * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(d_dweight, weight, C * sizeof(float), cudaMemcpyHostToDevice));
    rmsnorm_backward(version, d_dinp, d_dweight, d_dout, d_inp, d_weight, d_rstd, BT, C);
    cudaCheck(cudaMemcpy(again, d_dweight, C * sizeof(float), cudaMemcpyDeviceToHost));
    int same = memcmp(out, again, C * sizeof(float)) == 0;
    failures += !same;
    printf("%s version %d: dweight bit-identical over two runs\n", same ? "PASS" : "FAIL", version);
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    cudaCheck(cudaEventRecord(start));
    for (int it = 0; it < reps; it++) {
        rmsnorm_backward(version, d_dinp, d_dweight, d_dout, d_inp, d_weight, d_rstd, BT, C);
    }
    cudaCheck(cudaEventRecord(stop));
    cudaCheck(cudaEventSynchronize(stop));
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    ms /= reps;
    // bytes: dinp read + write, dout and inp read twice (two kernels)
    double bytes = 6.0 * n * sizeof(float);
    printf("version %d: %.4f ms, %.1f GB/s\n", version, ms, bytes / (ms * 1e-3) / 1e9);
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    free(dinp); free(dweight); free(dout); free(inp); free(weight); free(rstd); free(out); free(again);
    cudaCheck(cudaFree(d_dinp)); cudaCheck(cudaFree(d_dweight)); cudaCheck(cudaFree(d_dout));
    cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_weight)); cudaCheck(cudaFree(d_rstd));
    printf("%s\n", failures ? "FAILED" : "all correct");
    return failures ? 1 : 0;
}
