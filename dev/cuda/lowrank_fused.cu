/*
lowrank_fused.cu: the tiled kernels of the SubTrack++ step in bf16 mode (the
projection, and recovery scaling without the residual in memory), standalone,
with a CPU reference, kernel versions, validation and a benchmark.

build and run on a GPU:
    nvcc -O3 -arch=sm_90 -o dev/cuda/lowrank_fused dev/cuda/lowrank_fused.cu
    ./dev/cuda/lowrank_fused 3        # kernel version 1, 2 or 3 (default 3)
under the CPU harness (no GPU; small sizes, validation only, timings are CPU's):
    make dev/cuda/lowrank_fused_emu && ./dev/cuda/lowrank_fused_emu

what the three kernels do, for W, G (m, n), S (p, R) orthonormal columns, Gt the
projection (left m <= n: S^T G, (R, q); right: G S, (q, R)), in the left frame
(element (i, j), i < p, j < q; right: W and G transposed, by index):
    projection:     Gt_kj = sum_i S_ik G_ij                   (reduced over p)
    residual norms: norm2_j = ||G_j - (S Gt)_j||^2           (never forming G - S Gt)
    update:         W_ij = (1 - decay) (W_ij - step ((S N')_ij + f_j G_ij))
with N' = alpha N - Gt diag(f), f_j = scale phi_j: that is
W -= step (alpha S N + (G - S Gt) diag(f)), step 6 with step 5's Lambda. the
trainer (train_llama_subtrack.cu: lowrank_project_kernel,
lowrank_residual_norms_kernel, lowrank_fused_update_kernel) runs them batched
over matrices, and sums the norms' per-tile partials in
lowrank_adam_norms_kernel; here one matrix, and versions 2 and 3 sum its
tiles in a small kernel.

versions:
    1: one thread per element (projection, update) or per column (norms),
       fp32 dot products from global memory: the naive port, exact fp32.
    2: 64 x 64 tiles on tensor cores (nvcuda::wmma 16x16x8 TF32, fp32
       accumulation), 4 warps a block of 32 x 32 quarters, the reduction
       dimension (R; p for the projection) in chunks of 32 staged in shared
       memory as TF32 and zero-padded (any shape); the finished tile in shared
       memory for a coalesced epilogue; norms as per-tile partial sums in
       double, added in tile order (deterministic).
    3: the trainer's (bf16 mode): version 2's code with bf16 inputs (wmma
       16x16x16), rounded to nearest even as they are staged, chunks of 64
       (the same 18 KiB of shared memory): the full bf16 tensor-core rate.

the tolerance, against the CPU's double: the tiles round each input to the
tensor cores' precision, u = 2^-11 of it for TF32 (to nearest, 10 stored
mantissa bits), 2^-8 for bf16 (to nearest even, 7 stored bits), u = 0 for
version 1, so a product term errs by 2u + u^2 and fp32 accumulation over K
terms adds (K + 2) 2^-24:
    |(S X)_ij - exact| <= c1 P_ij,  c1 = 2u + u^2 + (R + 2) 2^-24,  P_ij = sum_k |S_ik| |X_kj|
    projection: the same with K = p: c1p = 2u + u^2 + (p + 2) 2^-24, P_kj = sum_i |S_ik| |G_ij|
    norms: |norm2_j - exact| <= 2 c1 ||P_j|| ||res_j|| + (c1 ||P_j||)^2 + p 2^-23 ||res_j||^2 (the
           squares and their sum in double from fp32 residuals)
    update: |W_ij - exact| <= step (c1 P'_ij) + 8 2^-24 (|W_ij| + step (P'_ij + |f_j G_ij|)),
            P'_ij = sum_k |S_ik| |N'_kj|
a second run must give the same bits.
*/
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <type_traits>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <mma.h>

static void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: CUDA %s at %s:%d\n", cudaGetErrorString(err), file, line);
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)

// ---- CPU reference, in double

// (S X)_ij and sum_k |S_ik| |X_kj| in the left frame; X (R, q) left or (q, R) right
static void product_cpu(double* y, double* mag, const float* S, const float* X, int r, int i, int j, int q,
                        int right) {
    double s = 0.0, a = 0.0;
    for (int k = 0; k < r; k++) {
        double x = right ? X[(size_t)j * r + k] : X[(size_t)k * q + j];
        s += (double)S[(size_t)i * r + k] * x;
        a += fabs((double)S[(size_t)i * r + k] * x);
    }
    *y = s;
    *mag = a;
}

// Gt (the moments' layout) = the projection in double, and each entry's bound c1 P_kj (see the top)
void project_cpu(double* Gt, double* bound, const float* G, const float* S, int r, int p, int q, int right,
                 double c1) {
    for (int k = 0; k < r; k++) {
        for (int j = 0; j < q; j++) {
            double y = 0.0, a = 0.0;
            for (int i = 0; i < p; i++) {
                double t = (double)S[(size_t)i * r + k] * G[right ? (size_t)j * p + i : (size_t)i * q + j];
                y += t;
                a += fabs(t);
            }
            size_t idx = right ? (size_t)j * r + k : (size_t)k * q + j;
            Gt[idx] = y;
            bound[idx] = c1 * a;
        }
    }
}

// norm2 (q,) = the residual's column norms, and each column's bound (see the top)
void residual_norms_cpu(double* norm2, double* bound, const float* G, const float* S, const float* Gt, int r, int p,
                        int q, int right, double c1) {
    for (int j = 0; j < q; j++) {
        double rr = 0.0, pp = 0.0;
        for (int i = 0; i < p; i++) {
            double y, a;
            product_cpu(&y, &a, S, Gt, r, i, j, q, right);
            double d = G[right ? (size_t)j * p + i : (size_t)i * q + j] - y;
            rr += d * d;
            pp += a * a;
        }
        norm2[j] = rr;
        bound[j] = 2.0 * c1 * sqrt(pp * rr) + c1 * c1 * pp + p * ldexp(1.0, -23) * rr;
    }
}

// W (in place) as the update kernel leaves it, and each element's bound
void fused_update_cpu(double* W, double* bound, const float* G, const float* S, const float* Nf, const float* phi,
                      float scale, int r, int p, int q, int right, double step, double decay, double c1) {
    for (int j = 0; j < q; j++) {
        for (int i = 0; i < p; i++) {
            size_t idx = right ? (size_t)j * p + i : (size_t)i * q + j;
            double y, a;
            product_cpu(&y, &a, S, Nf, r, i, j, q, right);
            double fg = (double)phi[j] * scale * G[idx];
            double w = W[idx] - step * (y + fg);
            bound[idx] = step * c1 * a + 8.0 * ldexp(1.0, -24) * (fabs(W[idx]) + step * (a + fabs(fg)));
            W[idx] = w - decay * w;
        }
    }
}

// ---- version 1: one thread per element or column, fp32

// Gt (left (R, q) at k q + j, right (q, R) at j R + k), one thread per element
__global__ void project_kernel1(float* Gt, const float* G, const float* S, int r, int p, int q, int right) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (size_t)r * q) { return; }
    int k = right ? (int)(x % r) : (int)(x / q), j = right ? (int)(x / r) : (int)(x % q);
    float y = 0.0f;
    for (int i = 0; i < p; i++) { y += S[(size_t)i * r + k] * G[right ? (size_t)j * p + i : (size_t)i * q + j]; }
    Gt[x] = y;
}

__global__ void residual_norms_kernel1(double* norm2, const float* G, const float* S, const float* Gt, int r, int p,
                                       int q, int right) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= q) { return; }
    double acc = 0.0;
    for (int i = 0; i < p; i++) {
        float y = 0.0f;
        for (int k = 0; k < r; k++) { y += S[(size_t)i * r + k] * (right ? Gt[(size_t)j * r + k] : Gt[(size_t)k * q + j]); }
        double d = G[right ? (size_t)j * p + i : (size_t)i * q + j] - y;
        acc += d * d;
    }
    norm2[j] = acc;
}

__global__ void fused_update_kernel1(float* W, const float* G, const float* S, const float* Nf, const float* phi,
                                     const float* scale, int r, int p, int q, int right, float step, float decay) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (size_t)p * q) { return; }
    // x runs along W's contiguous dimension
    int i = right ? (int)(x % p) : (int)(x / q), j = right ? (int)(x / p) : (int)(x % q);
    float y = 0.0f;
    for (int k = 0; k < r; k++) { y += S[(size_t)i * r + k] * (right ? Nf[(size_t)j * r + k] : Nf[(size_t)k * q + j]); }
    float f = phi[j] * *scale;
    float w = W[x] - step * (y + f * G[x]);
    W[x] = w - decay * w;
}

// ---- versions 2 and 3: tiled tensor-core products (the trainer's kernels, one
// matrix), on TF32 (2) or bf16 (3) inputs: the tile product is the trainer's
// own, from lowrank_tiles.cuh (templated on LowRankTF32, LowRankBF16)

#include "../../lowrank_tiles.cuh"

// the projection Gt = S^T G (left, (R, q)) or G S (right, (q, R)), in the left
// frame Gt_kj = sum_i S_ik G_ij: a block per 64 x 64 tile of Gt, p in chunks
// reduced in order (no split, no atomics: the same bits every run); S staged as
// rows i along k (a column-major matrix_a of S^T), G as rows i along j (left)
// or rows j along i (right, a column-major matrix_b)
template <typename P>
__global__ void __launch_bounds__(LOWRANK_TILE_THREADS)
project_tiled(float* Gt, const float* G, const float* S, int r, int p, int q, int right) {
    typedef LowRankChunk<P> Ch;
    __shared__ __align__(32) float tile[LOWRANK_TILE_SMEM_FLOATS];
    int k0 = blockIdx.x * LOWRANK_TILE, j0 = blockIdx.y * LOWRANK_TILE;
    typename P::staged* As = reinterpret_cast<typename P::staged*>(tile);
    typename P::staged* Bs = As + Ch::PART;
    int tid = threadIdx.x, warp = tid / 32;
    int wk = (warp / 2) * 32, wj = (warp % 2) * 32;  // this warp's quarter
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, P::K, float> acc[2][2];
    #pragma unroll
    for (int a = 0; a < 2; a++) {
        #pragma unroll
        for (int b = 0; b < 2; b++) { nvcuda::wmma::fill_fragment(acc[a][b], 0.0f); }
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

template <typename P>
__global__ void __launch_bounds__(LOWRANK_TILE_THREADS)
residual_norms_tiled(double* parts, const float* G, const float* S, const float* Gt, int r, int p, int q,
                       int right) {
    __shared__ __align__(32) float tile[LOWRANK_TILE_SMEM_FLOATS];
    int i0 = blockIdx.x * LOWRANK_TILE, j0 = blockIdx.y * LOWRANK_TILE;
    lowrank_tile_product<P>(tile, S, Gt, r, p, q, right, i0, j0);
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

// the tiles of each column in order (the trainer does this in lowrank_adam_norms_kernel)
__global__ void residual_norms_sum_kernel(double* norm2, const double* parts, int tiles, int q) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= q) { return; }
    double s = 0.0;
    for (int t = 0; t < tiles; t++) { s += parts[(size_t)t * q + j]; }
    norm2[j] = s;
}

template <typename P>
__global__ void __launch_bounds__(LOWRANK_TILE_THREADS)
fused_update_tiled(float* W, const float* G, const float* S, const float* Nf, const float* phi,
                     const float* scale_p, int r, int p, int q, int right, float step, float decay) {
    __shared__ __align__(32) float tile[LOWRANK_TILE_SMEM_FLOATS];
    float scale = *scale_p;
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

// ---- launchers

static void project(int version, float* Gt, const float* G, const float* S, int r, int p, int q, int right) {
    dim3 grid((r + LOWRANK_TILE - 1) / LOWRANK_TILE, (q + LOWRANK_TILE - 1) / LOWRANK_TILE);
    if (version == 1) {
        size_t n = (size_t)r * q;
        project_kernel1<<<(unsigned)((n + 255) / 256), 256>>>(Gt, G, S, r, p, q, right);
    } else if (version == 2) {
        project_tiled<LowRankTF32><<<grid, LOWRANK_TILE_THREADS>>>(Gt, G, S, r, p, q, right);
    } else {
        project_tiled<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(Gt, G, S, r, p, q, right);
    }
    cudaCheck(cudaGetLastError());
}

static void residual_norms(int version, double* norm2, double* parts, const float* G, const float* S,
                           const float* Gt, int r, int p, int q, int right) {
    if (version == 1) {
        residual_norms_kernel1<<<(q + 127) / 128, 128>>>(norm2, G, S, Gt, r, p, q, right);
    } else {
        int tiles = (p + LOWRANK_TILE - 1) / LOWRANK_TILE;
        dim3 grid(tiles, (q + LOWRANK_TILE - 1) / LOWRANK_TILE);
        if (version == 2) {
            residual_norms_tiled<LowRankTF32><<<grid, LOWRANK_TILE_THREADS>>>(parts, G, S, Gt, r, p, q, right);
        } else {
            residual_norms_tiled<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(parts, G, S, Gt, r, p, q, right);
        }
        cudaCheck(cudaGetLastError());
        residual_norms_sum_kernel<<<(q + 127) / 128, 128>>>(norm2, parts, tiles, q);
    }
    cudaCheck(cudaGetLastError());
}

static void fused_update(int version, float* W, const float* G, const float* S, const float* Nf, const float* phi,
                         const float* scale, int r, int p, int q, int right, float step, float decay) {
    if (version == 1) {
        size_t n = (size_t)p * q;
        fused_update_kernel1<<<(unsigned)((n + 255) / 256), 256>>>(W, G, S, Nf, phi, scale, r, p, q, right, step, decay);
    } else {
        dim3 grid((p + LOWRANK_TILE - 1) / LOWRANK_TILE, (q + LOWRANK_TILE - 1) / LOWRANK_TILE);
        if (version == 2) {
            fused_update_tiled<LowRankTF32><<<grid, LOWRANK_TILE_THREADS>>>(W, G, S, Nf, phi, scale, r, p, q, right,
                                                                           step, decay);
        } else {
            fused_update_tiled<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(W, G, S, Nf, phi, scale, r, p, q, right,
                                                                           step, decay);
        }
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

static double elapsed_ms(cudaEvent_t start, cudaEvent_t stop) {
    float ms = 0.0f;
    cudaCheck(cudaEventSynchronize(stop));
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    return ms;
}

int main(int argc, char** argv) {
    int version = argc > 1 ? atoi(argv[1]) : 3;
    if (version < 1 || version > 3) {
        fprintf(stderr, "error: unknown kernel version %d; hint: use 1 (naive fp32), 2 (TF32 WMMA tiles) or 3 (bf16 "
                "WMMA tiles)\n", version);
        return 1;
    }
#ifdef CUDA_EMU
    // the harness runs kernels on the CPU: small odd shapes (R not a multiple of 8, p and q of no tile), validation
    const int shapes[][3] = {{70, 150, 13}, {40, 97, 40}, {90, 130, 72}}, nshapes = 3, reps = 1;
    printf("under the CPU harness (dev/cuda_emu): timings are CPU timings\n");
#else
    // 1B's w_up at rank 512: p = 2048, q = 5461, and an odd one
    const int shapes[][3] = {{2048, 5461, 512}, {70, 150, 13}}, nshapes = 2, reps = 20;
#endif
    int failures = 0;
    // the inputs' unit roundoff: fp32 products (0: the accumulation term covers them), TF32, bf16
    const double u = version == 1 ? 0.0 : version == 2 ? ldexp(1.0, -11) : ldexp(1.0, -8);
    for (int si = 0; si < nshapes; si++) {
        for (int right = 0; right < 2; right++) {
            int p = shapes[si][0], q = shapes[si][1], r = shapes[si][2];
            size_t pq = (size_t)p * q, pr = (size_t)p * r, rq = (size_t)r * q;
            double c1 = 2.0 * u + u * u + (r + 2) * ldexp(1.0, -24);
            double c1p = 2.0 * u + u * u + (p + 2) * ldexp(1.0, -24);   // the projection reduces over p
            unsigned seed = 7 + 10 * si + right;
            float* G = random_floats(pq, &seed, -1.0f, 1.0f);
            float* W = random_floats(pq, &seed, -0.1f, 0.1f);
            float* S = random_floats(pr, &seed, -1.0f, 1.0f);
            for (size_t i = 0; i < pr; i++) { S[i] /= sqrtf((float)p); }   // columns of about unit norm
            float* Gt = random_floats(rq, &seed, -1.0f, 1.0f);
            float* Nf = random_floats(rq, &seed, -0.5f, 0.5f);
            float* phi = random_floats(q, &seed, 0.0f, 2.0f);
            float scale = 0.75f, step = 1e-3f, decay = 1e-5f;
            double* norm2 = (double*)malloc(q * sizeof(double));
            double* nbound = (double*)malloc(q * sizeof(double));
            double* Wref = (double*)malloc(pq * sizeof(double));
            double* wbound = (double*)malloc(pq * sizeof(double));
            for (size_t i = 0; i < pq; i++) { Wref[i] = W[i]; }
            double* Gtref = (double*)malloc(rq * sizeof(double));
            double* pbound = (double*)malloc(rq * sizeof(double));
            project_cpu(Gtref, pbound, G, S, r, p, q, right, c1p);
            residual_norms_cpu(norm2, nbound, G, S, Gt, r, p, q, right, c1);
            fused_update_cpu(Wref, wbound, G, S, Nf, phi, scale, r, p, q, right, step, decay, c1);
            float *d_G = to_device(G, pq * 4), *d_W = to_device(W, pq * 4), *d_S = to_device(S, pr * 4);
            float *d_Gt = to_device(Gt, rq * 4), *d_Nf = to_device(Nf, rq * 4), *d_phi = to_device(phi, q * 4);
            float* d_scale = to_device(&scale, 4);
            double *d_norm2, *d_parts;
            cudaCheck(cudaMalloc((void**)&d_norm2, q * sizeof(double)));
            cudaCheck(cudaMalloc((void**)&d_parts, (size_t)((p + 63) / 64) * q * sizeof(double)));
            float* d_Gtp;
            cudaCheck(cudaMalloc((void**)&d_Gtp, rq * 4));
            float* got_p = (float*)malloc(rq * 4);
            float* got_p2 = (float*)malloc(rq * 4);
            project(version, d_Gtp, d_G, d_S, r, p, q, right);
            cudaCheck(cudaMemcpy(got_p, d_Gtp, rq * 4, cudaMemcpyDeviceToHost));
            project(version, d_Gtp, d_G, d_S, r, p, q, right);
            cudaCheck(cudaMemcpy(got_p2, d_Gtp, rq * 4, cudaMemcpyDeviceToHost));
            double* got_n = (double*)malloc(q * sizeof(double));
            double* got_n2 = (double*)malloc(q * sizeof(double));
            float* got_w = (float*)malloc(pq * 4);
            float* got_w2 = (float*)malloc(pq * 4);
            residual_norms(version, d_norm2, d_parts, d_G, d_S, d_Gt, r, p, q, right);
            cudaCheck(cudaMemcpy(got_n, d_norm2, q * 8, cudaMemcpyDeviceToHost));
            residual_norms(version, d_norm2, d_parts, d_G, d_S, d_Gt, r, p, q, right);
            cudaCheck(cudaMemcpy(got_n2, d_norm2, q * 8, cudaMemcpyDeviceToHost));
            fused_update(version, d_W, d_G, d_S, d_Nf, d_phi, d_scale, r, p, q, right, step, decay);
            cudaCheck(cudaMemcpy(got_w, d_W, pq * 4, cudaMemcpyDeviceToHost));
            cudaCheck(cudaMemcpy(d_W, W, pq * 4, cudaMemcpyHostToDevice));
            fused_update(version, d_W, d_G, d_S, d_Nf, d_phi, d_scale, r, p, q, right, step, decay);
            cudaCheck(cudaMemcpy(got_w2, d_W, pq * 4, cudaMemcpyDeviceToHost));
            double rn = 0.0, rw = 0.0, rp = 0.0;
            for (size_t i = 0; i < rq; i++) {
                double x = fabs((double)got_p[i] - Gtref[i]) / pbound[i];
                if (!(x <= rp)) { rp = x; }
            }
            for (int j = 0; j < q; j++) {
                double x = fabs(got_n[j] - norm2[j]) / nbound[j];
                if (!(x <= rn)) { rn = x; }
            }
            for (size_t i = 0; i < pq; i++) {
                double x = fabs((double)got_w[i] - Wref[i]) / wbound[i];
                if (!(x <= rw)) { rw = x; }
            }
            int same = memcmp(got_n, got_n2, q * 8) == 0 && memcmp(got_w, got_w2, pq * 4) == 0 &&
                       memcmp(got_p, got_p2, rq * 4) == 0;
            int ok_n = rn <= 1.0, ok_w = rw <= 1.0, ok_p = rp <= 1.0;
            failures += !ok_n + !ok_w + !same + !ok_p;
            printf("%s %s (p %d, q %d, R %d), version %d: projection at %.2f of its bound\n",
                   ok_p ? "PASS" : "FAIL", right ? "right" : "left ", p, q, r, version, rp);
            printf("%s %s (p %d, q %d, R %d), version %d: residual norms at %.2f of their bound\n",
                   ok_n ? "PASS" : "FAIL", right ? "right" : "left ", p, q, r, version, rn);
            printf("%s %s (p %d, q %d, R %d), version %d: update at %.2f of its bound\n", ok_w ? "PASS" : "FAIL",
                   right ? "right" : "left ", p, q, r, version, rw);
            printf("%s %s (p %d, q %d, R %d), version %d: a rerun gives the same bits\n", same ? "PASS" : "FAIL",
                   right ? "right" : "left ", p, q, r, version);
            // benchmark: 2 p q R FLOPs each; bytes read G (norms), G, W and write W (update)
            cudaEvent_t start, stop;
            cudaCheck(cudaEventCreate(&start));
            cudaCheck(cudaEventCreate(&stop));
            cudaCheck(cudaEventRecord(start));
            for (int it = 0; it < reps; it++) { project(version, d_Gtp, d_G, d_S, r, p, q, right); }
            cudaCheck(cudaEventRecord(stop));
            double ms_p = elapsed_ms(start, stop) / reps;
            cudaCheck(cudaEventRecord(start));
            for (int it = 0; it < reps; it++) { residual_norms(version, d_norm2, d_parts, d_G, d_S, d_Gt, r, p, q, right); }
            cudaCheck(cudaEventRecord(stop));
            double ms_n = elapsed_ms(start, stop) / reps;
            cudaCheck(cudaEventRecord(start));
            for (int it = 0; it < reps; it++) {
                fused_update(version, d_W, d_G, d_S, d_Nf, d_phi, d_scale, r, p, q, right, step, decay);
            }
            cudaCheck(cudaEventRecord(stop));
            double ms_w = elapsed_ms(start, stop) / reps;
            double flops = 2.0 * pq * r;
            printf("version %d, %s: projection %.4f ms (%.1f TFLOP/s, %.0f GB/s of G)\n", version,
                   right ? "right" : "left", ms_p, flops / (ms_p * 1e-3) / 1e12, 4.0 * pq / (ms_p * 1e-3) / 1e9);
            printf("version %d, %s: residual norms %.4f ms (%.1f TFLOP/s, %.0f GB/s of G), update %.4f ms "
                   "(%.1f TFLOP/s, %.0f GB/s of G, W)\n", version, right ? "right" : "left", ms_n,
                   flops / (ms_n * 1e-3) / 1e12, 4.0 * pq / (ms_n * 1e-3) / 1e9, ms_w, flops / (ms_w * 1e-3) / 1e12,
                   12.0 * pq / (ms_w * 1e-3) / 1e9);
            cudaCheck(cudaEventDestroy(start));
            cudaCheck(cudaEventDestroy(stop));
            free(G); free(W); free(S); free(Gt); free(Nf); free(phi); free(norm2); free(nbound); free(Wref);
            free(wbound); free(Gtref); free(pbound); free(got_p); free(got_p2); cudaCheck(cudaFree(d_Gtp));
            free(got_n); free(got_n2); free(got_w); free(got_w2);
            cudaCheck(cudaFree(d_G)); cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_S)); cudaCheck(cudaFree(d_Gt));
            cudaCheck(cudaFree(d_Nf)); cudaCheck(cudaFree(d_phi)); cudaCheck(cudaFree(d_scale));
            cudaCheck(cudaFree(d_norm2)); cudaCheck(cudaFree(d_parts));
        }
    }
    printf("%s\n", failures ? "FAILED" : "all correct");
    return failures ? 1 : 0;
}
