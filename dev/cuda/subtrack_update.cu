/*
subtrack_update.cu: the fused kernel of the SubTrack++ step (Adam in the
subspace + the per-column norms for recovery scaling), standalone, with a CPU
reference, kernel versions, validation and a benchmark.

build and run on a GPU:
    nvcc -O3 -arch=sm_90 -o dev/cuda/subtrack_update dev/cuda/subtrack_update.cu
    ./dev/cuda/subtrack_update 2        # kernel version 1 or 2 (default 2)
under the CPU harness (no GPU; small sizes, validation only, timings are CPU's):
    make dev/cuda/subtrack_update_emu && ./dev/cuda/subtrack_update_emu 2

what the kernel does, for every column j of the non-projected dimension (q of them):
    M = b1 M + (1-b1) Gt ; V = b2 V + (1-b2) Gt^2 ; N = M / (sqrt(V) + eps)      (R entries)
    phi_j   = ||N_j|| / (||Gt_j|| + 1e-8)
    norm2_j = ||D_j||^2, D = G - S Gt the residual (p entries)
left (m <= n): the moments are (R, q) and D is (p, q): column j is strided.
right (m > n): the moments are (q, R) and D is (q, p): row j is contiguous.
the limiter and the W update need the sum over all columns, so they follow in
other kernels (lowrank_recovery_scaling and lowrank_apply_update in
train_llama_subtrack.cu; this kernel is its lowrank_adam_norms_kernel).

versions:
    1: one thread per column, loops over R and p. coalesced in the left layout
       (neighbouring threads read neighbouring columns), strided in the right.
    2: a (32, 8) block; left: lane = column, 8 warps split the rows, partials
       meet in shared memory; right: warp = row, lanes split it, butterfly
       shuffles sum. coalesced both ways, fixed summation order (deterministic).
*/
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <cuda_runtime.h>

#define RECOVERY_PHI_EPS 1e-8f
#define WARP 32
#define COLS 32
#define ROWS 8

static void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: CUDA %s at %s:%d\n", cudaGetErrorString(err), file, line);
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)

// ---- CPU reference (lowrank_adam_in_subspace and the norms of lowrank_recovery_scaling
// in train_llama_subtrack.c, in one loop)

void adam_norms_cpu(float* M, float* V, float* N, float* phi, double* norm2, const float* Gt, const float* D,
                    int r, int p, int q, int right, float b1, float b2, float eps) {
    size_t sr = right ? 1 : (size_t)q, sq = right ? (size_t)r : 1;
    for (int j = 0; j < q; j++) {
        double nn = 0.0, gg = 0.0, dd = 0.0;
        for (int i = 0; i < r; i++) {
            size_t idx = i * sr + j * sq;
            float g = Gt[idx];
            float mi = b1 * M[idx] + (1.0f - b1) * g;
            float vi = b2 * V[idx] + (1.0f - b2) * g * g;
            M[idx] = mi;
            V[idx] = vi;
            N[idx] = mi / (sqrtf(vi) + eps);
            nn += (double)N[idx] * N[idx];
            gg += (double)g * g;
        }
        for (int i = 0; i < p; i++) {
            double d = D[right ? (size_t)j * p + i : (size_t)i * q + j];
            dd += d * d;
        }
        phi[j] = (float)sqrt(nn) / ((float)sqrt(gg) + RECOVERY_PHI_EPS);
        norm2[j] = dd;
    }
}

// ---- kernels

__global__ void adam_norms_kernel1(float* M, float* V, float* N, float* phi, double* norm2, const float* Gt,
                                   const float* D, int r, int p, int q, int right, float b1, float b2, float eps) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= q) { return; }
    size_t sr = right ? 1 : (size_t)q, sq = right ? (size_t)r : 1;
    double nn = 0.0, gg = 0.0, dd = 0.0;
    for (int i = 0; i < r; i++) {
        size_t idx = i * sr + j * sq;
        float g = Gt[idx];
        float mi = b1 * M[idx] + (1.0f - b1) * g;
        float vi = b2 * V[idx] + (1.0f - b2) * g * g;
        float ni = mi / (sqrtf(vi) + eps);
        M[idx] = mi;
        V[idx] = vi;
        N[idx] = ni;
        nn += (double)ni * ni;
        gg += (double)g * g;
    }
    for (int i = 0; i < p; i++) {
        double d = D[right ? (size_t)j * p + i : (size_t)i * q + j];
        dd += d * d;
    }
    phi[j] = (float)sqrt(nn) / ((float)sqrt(gg) + RECOVERY_PHI_EPS);
    norm2[j] = dd;
}

__device__ __forceinline__ double warp_sum(double x) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) { x += __shfl_xor_sync(0xffffffffu, x, offset); }
    return x;
}

__global__ void __launch_bounds__(COLS * ROWS)
adam_norms_kernel2(float* M, float* V, float* N, float* phi, double* norm2, const float* Gt, const float* D,
                   int r, int p, int q, int right, float b1, float b2, float eps) {
    __shared__ double part[3][ROWS][COLS];
    int lane = threadIdx.x, row = threadIdx.y;
    int j = right ? blockIdx.x * ROWS + row : blockIdx.x * COLS + lane;
    int first = right ? lane : row, stride = right ? COLS : ROWS;
    size_t sr = right ? 1 : (size_t)q, sq = right ? (size_t)r : 1;
    double s[3] = {0.0, 0.0, 0.0};  // ||N_j||^2, ||Gt_j||^2, ||D_j||^2
    if (j < q) {
        for (int i = first; i < r; i += stride) {
            size_t idx = i * sr + j * sq;
            float g = Gt[idx];
            float mi = b1 * M[idx] + (1.0f - b1) * g;
            float vi = b2 * V[idx] + (1.0f - b2) * g * g;
            float ni = mi / (sqrtf(vi) + eps);
            M[idx] = mi;
            V[idx] = vi;
            N[idx] = ni;
            s[0] += (double)ni * ni;
            s[1] += (double)g * g;
        }
        for (int i = first; i < p; i += stride) {
            double d = D[right ? (size_t)j * p + i : (size_t)i * q + j];
            s[2] += d * d;
        }
    }
    if (right) {
        for (int k = 0; k < 3; k++) { s[k] = warp_sum(s[k]); }
    } else {
        for (int k = 0; k < 3; k++) { part[k][row][lane] = s[k]; }
        __syncthreads();
        for (int k = 0; k < 3; k++) {
            s[k] = 0.0;
            for (int y = 0; y < ROWS; y++) { s[k] += part[k][y][lane]; }
        }
    }
    if (j < q && (right ? lane == 0 : row == 0)) {
        phi[j] = (float)sqrt(s[0]) / ((float)sqrt(s[1]) + RECOVERY_PHI_EPS);
        norm2[j] = s[2];
    }
}

// ---- launchers

void adam_norms(int version, float* M, float* V, float* N, float* phi, double* norm2, const float* Gt,
                const float* D, int r, int p, int q, int right, float b1, float b2, float eps) {
    if (version == 1) {
        int block = 256;
        adam_norms_kernel1<<<(q + block - 1) / block, block>>>(M, V, N, phi, norm2, Gt, D, r, p, q, right, b1, b2, eps);
    } else {
        int per = right ? ROWS : COLS;
        adam_norms_kernel2<<<(q + per - 1) / per, dim3(COLS, ROWS)>>>(M, V, N, phi, norm2, Gt, D, r, p, q, right,
                                                                      b1, b2, eps);
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

static float* to_device(const void* x, size_t bytes) {
    float* d;
    cudaCheck(cudaMalloc((void**)&d, bytes));
    cudaCheck(cudaMemcpy(d, x, bytes, cudaMemcpyHostToDevice));
    return d;
}

// max |a - b| / max |b|
static double rel_err_f(const float* a, const float* b, size_t n) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) { e = d; }
        s = fmax(s, fabs((double)b[i]));
    }
    return e / fmax(s, 1e-30);
}

static double rel_err_d(const double* a, const double* b, size_t n) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= e)) { e = d; }
        s = fmax(s, fabs(b[i]));
    }
    return e / fmax(s, 1e-30);
}

// M, V, N: the same fp32 expressions (only fused multiply-adds may differ): 1e-6.
// phi, norm2: double sums in another order, then one fp32 rounding: 1e-6
#define TOL 1e-6

int main(int argc, char** argv) {
    int version = argc > 1 ? atoi(argv[1]) : 2;
    if (version < 1 || version > 2) {
        fprintf(stderr, "error: unknown kernel version %d; hint: use 1 (naive) or 2 (block per 32 columns)\n", version);
        return 1;
    }
#ifdef CUDA_EMU
    // the harness runs kernels on the CPU: small odd shapes, validation only
    const int r = 12, p = 40, q = 301, reps = 1;
    printf("under the CPU harness (dev/cuda_emu): timings are CPU timings\n");
#else
    // 1B's w_up at rank 512: p = 2048, q = 5461
    const int r = 512, p = 2048, q = 5461, reps = 20;
#endif
    int failures = 0;
    for (int right = 0; right < 2; right++) {
        size_t nm = (size_t)r * q, nd = (size_t)p * q;
        unsigned seed = 42 + right;
        float* M = random_floats(nm, &seed, -0.1f, 0.1f);
        float* V = random_floats(nm, &seed, 0.0f, 0.01f);
        float* Gt = random_floats(nm, &seed, -1.0f, 1.0f);
        float* D = random_floats(nd, &seed, -1.0f, 1.0f);
        float* d_M = to_device(M, nm * 4);
        float* d_V = to_device(V, nm * 4);
        float* d_Gt = to_device(Gt, nm * 4);
        float* d_D = to_device(D, nd * 4);
        float *d_N, *d_phi;
        double* d_norm2;
        cudaCheck(cudaMalloc((void**)&d_N, nm * 4));
        cudaCheck(cudaMalloc((void**)&d_phi, q * 4));
        cudaCheck(cudaMalloc((void**)&d_norm2, q * 8));
        float* N = (float*)malloc(nm * 4);
        float* phi = (float*)malloc(q * 4);
        double* norm2 = (double*)malloc(q * 8);
        adam_norms_cpu(M, V, N, phi, norm2, Gt, D, r, p, q, right, 0.9f, 0.999f, 1e-6f);
        adam_norms(version, d_M, d_V, d_N, d_phi, d_norm2, d_Gt, d_D, r, p, q, right, 0.9f, 0.999f, 1e-6f);
        float* out = (float*)malloc(nm * 4);
        double* outd = (double*)malloc(q * 8);
        const char* names[5] = {"M", "V", "N", "phi", "norm2"};
        double err[5];
        cudaCheck(cudaMemcpy(out, d_M, nm * 4, cudaMemcpyDeviceToHost)); err[0] = rel_err_f(out, M, nm);
        cudaCheck(cudaMemcpy(out, d_V, nm * 4, cudaMemcpyDeviceToHost)); err[1] = rel_err_f(out, V, nm);
        cudaCheck(cudaMemcpy(out, d_N, nm * 4, cudaMemcpyDeviceToHost)); err[2] = rel_err_f(out, N, nm);
        cudaCheck(cudaMemcpy(out, d_phi, q * 4, cudaMemcpyDeviceToHost)); err[3] = rel_err_f(out, phi, q);
        cudaCheck(cudaMemcpy(outd, d_norm2, q * 8, cudaMemcpyDeviceToHost)); err[4] = rel_err_d(outd, norm2, q);
        for (int k = 0; k < 5; k++) {
            int ok = err[k] <= TOL;
            failures += !ok;
            printf("%s %s layout (R %d, p %d, q %d), version %d: %-5s err %.1e (tol %.0e)\n", ok ? "PASS" : "FAIL",
                   right ? "right" : "left", r, p, q, version, names[k], err[k], TOL);
        }
        // benchmark: the kernel rewrites M and V each call, which only changes their values
        cudaEvent_t start, stop;
        cudaCheck(cudaEventCreate(&start));
        cudaCheck(cudaEventCreate(&stop));
        cudaCheck(cudaEventRecord(start));
        for (int it = 0; it < reps; it++) {
            adam_norms(version, d_M, d_V, d_N, d_phi, d_norm2, d_Gt, d_D, r, p, q, right, 0.9f, 0.999f, 1e-6f);
        }
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        ms /= reps;
        // bytes: read M, V, Gt, D; write M, V, N
        double bytes = (6.0 * nm + nd) * 4.0;
        printf("version %d, %s layout: %.4f ms, %.1f GB/s\n", version, right ? "right" : "left", ms,
               bytes / (ms * 1e-3) / 1e9);
        cudaCheck(cudaEventDestroy(start));
        cudaCheck(cudaEventDestroy(stop));
        free(M); free(V); free(Gt); free(D); free(N); free(phi); free(norm2); free(out); free(outd);
        cudaCheck(cudaFree(d_M)); cudaCheck(cudaFree(d_V)); cudaCheck(cudaFree(d_Gt)); cudaCheck(cudaFree(d_D));
        cudaCheck(cudaFree(d_N)); cudaCheck(cudaFree(d_phi)); cudaCheck(cudaFree(d_norm2));
    }
    printf("%s\n", failures ? "FAILED" : "all correct");
    return failures ? 1 : 0;
}
