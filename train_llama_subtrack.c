/*
train_llama_subtrack.c: a LLaMA trained with SubTrack++, in plain C.

This is the CPU reference of the project and a complete CPU trainer. Every
CUDA kernel in train_llama_subtrack.cu has a twin here with the same name and
argument order; test_subtrack.c checks this file against Hugging Face
transformers and a PyTorch implementation of the paper, and the CUDA file
against this one.

build and run:
    make train_cpu && OMP_NUM_THREADS=2 ./train_llama_subtrack_cpu --help

the file reads top to bottom:
    1. utilities and the matrix product (gemm)
    2. the layers, each an X_forward / X_backward pair
    3. the model: config, parameter table, activations, forward, backward
    4. main

letter legend for shape comments:
    B batch, T sequence, C channels, NH heads, HS head size (C / NH),
    F intermediate (MLP), V vocab, L layers, R rank
*/
// 64-bit file offsets even on 32-bit systems: shards may exceed 2 GB
#define _FILE_OFFSET_BITS 64
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdarg.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <errno.h>
#include <glob.h>
#include <sys/types.h>
#ifdef _OPENMP
#include <omp.h>
#endif

// ----------------------------------------------------------------------------
// utilities

// every user-facing failure goes through here: stderr, a hint, exit 1
static void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

void* malloc_check(size_t n, const char* what) {
    void* p = malloc(n > 0 ? n : 1);
    if (p == NULL) {
        fatal("out of memory allocating %zu bytes for %s; try a smaller --batch_size or preset", n, what);
    }
    return p;
}

void* calloc_check(size_t n, const char* what) {
    void* p = malloc_check(n, what);
    memset(p, 0, n);
    return p;
}

double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// exp for float that the compiler can vectorize (glibc's expf only gets a
// vector version under -ffast-math, which would break our NaN checks).
// exp(x) = 2^n exp(r), n = round(x / ln2), r = x - n ln2 with ln2 split in two
// parts (cephes) so r is exact enough; exp(r) by a degree-7 polynomial.
// relative error within 2 ulp of expf on [-87, 88]; NaN stays NaN.
static inline float expf_simd(float x) {
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    y *= scale;
    y = x < -87.0f ? 0.0f : y;
    return x != x ? x : y;
}

// ----------------------------------------------------------------------------
// the matrix product: row-major, BLAS-like, cache-blocked, OpenMP-parallel
//
//   Cm[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * Cm
//   op(A) = A (M x K, row stride lda)  or  A^T with A stored K x M (transA)
//   op(B) = B (K x N, row stride ldb)  or  B^T with B stored N x K (transB)
//   beta == 0 overwrites Cm without reading it (so NaN garbage cannot leak).
//
// the structure is the classic one (Goto / BLIS): pack a KC x NC block of B
// into panels of NR columns, pack an MC x KC block of A into panels of MR
// rows, and let a register-blocked micro kernel compute MR x NR tiles. The
// micro kernel is plain C with constant trip counts, so the compiler unrolls
// the i loop and vectorizes the j loop into FMA registers (check with
// -fopt-info-vec). each output element is summed by one thread in a fixed k
// order, so results do not depend on the thread count.

#define GEMM_MR 8
#define GEMM_NR 32
#define GEMM_MC 128
#define GEMM_KC 256
#define GEMM_NC 2048

static void gemm_micro_kernel(int kc, const float* restrict Ap, const float* restrict Bp,
                              float* restrict Cm, int ldc, int mr, int nr,
                              float alpha, float beta) {
    // Ap: (kc, MR) packed, Bp: (kc, NR) packed, Cm: (mr, nr) valid part of the tile
    float acc[GEMM_MR][GEMM_NR];
    for (int i = 0; i < GEMM_MR; i++) {
        for (int j = 0; j < GEMM_NR; j++) { acc[i][j] = 0.0f; }
    }
    for (int k = 0; k < kc; k++) {
        const float* restrict a = Ap + (size_t)k * GEMM_MR;
        const float* restrict b = Bp + (size_t)k * GEMM_NR;
        for (int i = 0; i < GEMM_MR; i++) {
            for (int j = 0; j < GEMM_NR; j++) {
                acc[i][j] += a[i] * b[j];
            }
        }
    }
    for (int i = 0; i < mr; i++) {
        float* c = Cm + (size_t)i * ldc;
        if (beta == 0.0f) {
            for (int j = 0; j < nr; j++) { c[j] = alpha * acc[i][j]; }
        } else if (beta == 1.0f) {
            for (int j = 0; j < nr; j++) { c[j] += alpha * acc[i][j]; }
        } else {
            for (int j = 0; j < nr; j++) { c[j] = beta * c[j] + alpha * acc[i][j]; }
        }
    }
}

// pack op(A)[i0:i0+mc, p0:p0+kc] into panels of MR rows: Ap[panel][k][MR], zero-padded
static void gemm_pack_a(float* restrict Ap, const float* A, int lda, int transA,
                        int i0, int mc, int p0, int kc) {
    for (int ip = 0; ip < mc; ip += GEMM_MR) {
        int mr = mc - ip < GEMM_MR ? mc - ip : GEMM_MR;
        float* dst = Ap + (size_t)ip * kc;
        for (int k = 0; k < kc; k++) {
            for (int i = 0; i < GEMM_MR; i++) {
                float v = 0.0f;
                if (i < mr) {
                    size_t row = (size_t)(i0 + ip + i), col = (size_t)(p0 + k);
                    v = transA ? A[col * lda + row] : A[row * lda + col];
                }
                dst[(size_t)k * GEMM_MR + i] = v;
            }
        }
    }
}

// pack op(B)[p0:p0+kc, j0:j0+nc] into panels of NR columns: Bp[panel][k][NR], zero-padded
static void gemm_pack_b(float* restrict Bp, const float* B, int ldb, int transB,
                        int p0, int kc, int j0, int nc) {
    int npanels = (nc + GEMM_NR - 1) / GEMM_NR;
    #pragma omp parallel for schedule(static)
    for (int jp = 0; jp < npanels; jp++) {
        int jj = jp * GEMM_NR;
        int nr = nc - jj < GEMM_NR ? nc - jj : GEMM_NR;
        float* dst = Bp + (size_t)jj * kc;
        for (int k = 0; k < kc; k++) {
            for (int j = 0; j < GEMM_NR; j++) {
                float v = 0.0f;
                if (j < nr) {
                    size_t row = (size_t)(p0 + k), col = (size_t)(j0 + jj + j);
                    v = transB ? B[col * ldb + row] : B[row * ldb + col];
                }
                dst[(size_t)k * GEMM_NR + j] = v;
            }
        }
    }
}

void gemm(int transA, int transB, int M, int N, int K, float alpha,
          const float* A, int lda, const float* B, int ldb,
          float beta, float* Cm, int ldc) {
    if (M <= 0 || N <= 0) { return; }
    if (K <= 0) {
        // nothing to multiply: Cm = beta * Cm
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
                Cm[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * Cm[(size_t)i * ldc + j];
            }
        }
        return;
    }
    int nc_max = N < GEMM_NC ? N : GEMM_NC;
    int kc_max = K < GEMM_KC ? K : GEMM_KC;
    size_t bp_floats = (size_t)((nc_max + GEMM_NR - 1) / GEMM_NR) * GEMM_NR * kc_max;
    float* Bp = (float*)malloc_check(bp_floats * sizeof(float), "gemm packed B");
    int nthreads = num_threads();
    size_t ap_floats = (size_t)GEMM_MC * kc_max;
    float* Ap_all = (float*)malloc_check(ap_floats * nthreads * sizeof(float), "gemm packed A");
    for (int j0 = 0; j0 < N; j0 += GEMM_NC) {
        int nc = N - j0 < GEMM_NC ? N - j0 : GEMM_NC;
        for (int p0 = 0; p0 < K; p0 += GEMM_KC) {
            int kc = K - p0 < GEMM_KC ? K - p0 : GEMM_KC;
            float beta_eff = p0 == 0 ? beta : 1.0f;
            gemm_pack_b(Bp, B, ldb, transB, p0, kc, j0, nc);
            int mblocks = (M + GEMM_MC - 1) / GEMM_MC;
            #pragma omp parallel for schedule(static)
            for (int ib = 0; ib < mblocks; ib++) {
                int tid = 0;
#ifdef _OPENMP
                tid = omp_get_thread_num();
#endif
                float* Ap = Ap_all + ap_floats * tid;
                int i0 = ib * GEMM_MC;
                int mc = M - i0 < GEMM_MC ? M - i0 : GEMM_MC;
                gemm_pack_a(Ap, A, lda, transA, i0, mc, p0, kc);
                for (int jj = 0; jj < nc; jj += GEMM_NR) {
                    int nr = nc - jj < GEMM_NR ? nc - jj : GEMM_NR;
                    for (int ii = 0; ii < mc; ii += GEMM_MR) {
                        int mr = mc - ii < GEMM_MR ? mc - ii : GEMM_MR;
                        gemm_micro_kernel(kc, Ap + (size_t)ii * kc, Bp + (size_t)jj * kc,
                                          Cm + (size_t)(i0 + ii) * ldc + j0 + jj, ldc,
                                          mr, nr, alpha, beta_eff);
                    }
                }
            }
        }
    }
    free(Ap_all);
    free(Bp);
}

// ----------------------------------------------------------------------------
// the layers. forward: outputs first, sizes last. backward: accumulates (+=)
// into parameter gradients; input gradients are written (=) unless noted.

// token embedding: out[b,t,:] = wte[inp[b,t], :]
void encoder_forward(float* out, const int* inp, const float* wte, int BT, int C) {
    // out (B,T,C), inp (B,T), wte (V,C)
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < BT; i++) {
        memcpy(out + (size_t)i * C, wte + (size_t)inp[i] * C, C * sizeof(float));
    }
}

void encoder_backward(float* dwte, const float* dout, const int* inp, int BT, int C) {
    // dwte (V,C), dout (B,T,C). serial: two positions can share a token, and
    // a fixed order keeps the sum deterministic
    for (int i = 0; i < BT; i++) {
        float* d = dwte + (size_t)inp[i] * C;
        const float* g = dout + (size_t)i * C;
        for (int c = 0; c < C; c++) { d[c] += g[c]; }
    }
}

// rmsnorm: out = x / sqrt(mean(x^2) + eps) * weight
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                     int BT, int C, float eps) {
    // out (B,T,C), rstd (B,T), inp (B,T,C), weight (C)
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < BT; i++) {
        const float* x = inp + (size_t)i * C;
        float* o = out + (size_t)i * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) { ss += (double)x[c] * x[c]; }
        float s = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) { o[c] = (x[c] * s) * weight[c]; }
        rstd[i] = s;
    }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int BT, int C) {
    // dinp (B,T,C) accumulated (+=), because it is the residual stream's gradient
    // dweight (C), dout (B,T,C), inp (B,T,C), weight (C), rstd (B,T)
    // in the forward pass o = w * x * s with s = (mean(x^2)+eps)^-1/2, so
    // dx = s * (w*do) - x * s^3 / C * sum(w*do*x)
    #pragma omp parallel for schedule(static)
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
    // the weight gradient sums over all rows: split over channels, not rows,
    // so every sum has one owner and one order
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double acc = 0.0;
        for (int i = 0; i < BT; i++) {
            acc += (double)dout[(size_t)i * C + c] * inp[(size_t)i * C + c] * rstd[i];
        }
        dweight[c] += (float)acc;
    }
}

// linear layer in nn.Linear layout: out = inp @ weight^T
void matmul_forward(float* out, const float* inp, const float* weight, int BT, int C, int OC) {
    // out (B,T,OC), inp (B,T,C), weight (OC,C)
    gemm(0, 1, BT, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
}

void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, int BT, int C, int OC) {
    // dinp (B,T,C) written (=), dweight (OC,C) accumulated, dout (B,T,OC)
    // forward was out = inp @ W^T, so dinp = dout @ W and dW += dout^T @ inp
    gemm(0, 0, BT, C, OC, 1.0f, dout, OC, weight, C, 0.0f, dinp, C);
    gemm(1, 0, OC, C, BT, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
}

// rope, rotate-half layout (as Hugging Face LLaMA): within each head, channel
// i pairs with i + HS/2, rotated by angle pos * theta^(-2i/HS)
void rope_precompute(float* cos_table, float* sin_table, int T, int HS, float theta) {
    // cos_table, sin_table (T, HS/2)
    int half = HS / 2;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            // float inverse frequency then float angle, as transformers computes them
            float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / HS));
            float angle = (float)t * inv_freq;
            cos_table[t * half + i] = cosf(angle);
            sin_table[t * half + i] = sinf(angle);
        }
    }
}

void rope_forward(float* out, const float* inp, const float* cos_table, const float* sin_table,
                  int B, int T, int NH, int HS) {
    // out, inp (B,T,NH,HS) may alias; tables (T, HS/2)
    int half = HS / 2;
    #pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        const float* cs = cos_table + (size_t)t * half;
        const float* sn = sin_table + (size_t)t * half;
        for (int h = 0; h < NH; h++) {
            const float* x = inp + ((size_t)bt * NH + h) * HS;
            float* o = out + ((size_t)bt * NH + h) * HS;
            for (int i = 0; i < half; i++) {
                float x1 = x[i], x2 = x[i + half];
                o[i] = x1 * cs[i] - x2 * sn[i];
                o[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
}

void rope_backward(float* dinp, const float* dout, const float* cos_table, const float* sin_table,
                   int B, int T, int NH, int HS) {
    // dinp, dout (B,T,NH,HS) may alias. the rotation is orthogonal, so its
    // backward is the rotation by the negative angle
    int half = HS / 2;
    #pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        const float* cs = cos_table + (size_t)t * half;
        const float* sn = sin_table + (size_t)t * half;
        for (int h = 0; h < NH; h++) {
            const float* g = dout + ((size_t)bt * NH + h) * HS;
            float* d = dinp + ((size_t)bt * NH + h) * HS;
            for (int i = 0; i < half; i++) {
                float g1 = g[i], g2 = g[i + half];
                d[i] = g1 * cs[i] + g2 * sn[i];
                d[i + half] = g2 * cs[i] - g1 * sn[i];
            }
        }
    }
}

// causal multi-head softmax attention, scaled by 1/sqrt(HS). each (b, h)
// pair is two small matrix products around a row softmax; heads are read in
// place through the row stride C, so nothing is transposed or copied. the
// products also fill the masked upper triangle, which the softmax then zeroes:
// that wastes half their flops but keeps them on the fast gemm path.
void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       int B, int T, int NH, int HS) {
    // out (B,T,NH,HS), att (B,NH,T,T) softmax probabilities, saved for backward
    // (zero above the diagonal); q, k, v (B,T,NH,HS)
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        size_t off = (size_t)b * T * C + (size_t)h * HS;
        float* a = att + (size_t)bh * T * T;
        // scores: (T, T) = q_h @ k_h^T * scale
        gemm(0, 1, T, T, HS, scale, q + off, C, k + off, C, 0.0f, a, T);
        for (int t = 0; t < T; t++) {
            float* row = a + (size_t)t * T;
            float maxv = -INFINITY;
            for (int t2 = 0; t2 <= t; t2++) { maxv = row[t2] > maxv ? row[t2] : maxv; }
            float sum = 0.0f;
            #pragma omp simd reduction(+:sum)
            for (int t2 = 0; t2 <= t; t2++) {
                float e = expf_simd(row[t2] - maxv);
                row[t2] = e;
                sum += e;
            }
            float inv = 1.0f / sum;
            for (int t2 = 0; t2 <= t; t2++) { row[t2] *= inv; }
            for (int t2 = t + 1; t2 < T; t2++) { row[t2] = 0.0f; }
        }
        // out_h: (T, HS) = att @ v_h
        gemm(0, 0, T, HS, T, 1.0f, a, T, v + off, C, 0.0f, out + off, C);
    }
}

void attention_backward(float* dq, float* dk, float* dv, float* datt, const float* dout,
                        const float* q, const float* k, const float* v, const float* att,
                        int B, int T, int NH, int HS) {
    // dq, dk, dv (B,T,NH,HS) written (=); datt (B,NH,T,T) scratch
    // dout (B,T,NH,HS); q, k, v (B,T,NH,HS); att (B,NH,T,T) from the forward pass
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        size_t off = (size_t)b * T * C + (size_t)h * HS;
        const float* a = att + (size_t)bh * T * T;
        float* da = datt + (size_t)bh * T * T;
        // forward was out = att @ v: datt = dout @ v^T, dv = att^T @ dout
        gemm(0, 1, T, T, HS, 1.0f, dout + off, C, v + off, C, 0.0f, da, T);
        gemm(1, 0, T, HS, T, 1.0f, a, T, dout + off, C, 0.0f, dv + off, C);
        // softmax backward, in place: ds = att * (datt - sum(att * datt)).
        // above the diagonal att is 0, so ds is 0 there too
        for (int t = 0; t < T; t++) {
            const float* arow = a + (size_t)t * T;
            float* drow = da + (size_t)t * T;
            float dot = 0.0f;
            #pragma omp simd reduction(+:dot)
            for (int t2 = 0; t2 <= t; t2++) { dot += arow[t2] * drow[t2]; }
            for (int t2 = 0; t2 < T; t2++) { drow[t2] = arow[t2] * (drow[t2] - dot); }
        }
        // scores were q @ k^T * scale: dq = ds @ k * scale, dk = ds^T @ q * scale
        gemm(0, 0, T, HS, T, scale, da, T, k + off, C, 0.0f, dq + off, C);
        gemm(1, 0, T, HS, T, scale, da, T, q + off, C, 0.0f, dk + off, C);
    }
}

// swiglu: out = silu(gate) * up, with silu(x) = x * sigmoid(x)
void swiglu_forward(float* out, const float* gate, const float* up, size_t N) {
    // out, gate, up (B,T,F)
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf_simd(-g));
        out[i] = g * sig * up[i];
    }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, size_t N) {
    // dgate, dup (B,T,F) written (=); dout, gate, up (B,T,F); dup may alias dout
    // d silu(g)/dg = sig * (1 + g * (1 - sig))
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        // read everything first: dup may alias dout
        float g = gate[i], u = up[i], go = dout[i];
        float sig = 1.0f / (1.0f + expf_simd(-g));
        dup[i] = go * g * sig;
        dgate[i] = go * u * sig * (1.0f + g * (1.0f - sig));
    }
}

void residual_forward(float* out, const float* inp1, const float* inp2, size_t N) {
    // out, inp1, inp2 (B,T,C); out may alias inp1
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) { out[i] = inp1[i] + inp2[i]; }
}

void residual_backward(float* dinp, const float* dout, size_t N) {
    // the residual branch's gradient adds into the stream's (+=)
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) { dinp[i] += dout[i]; }
}

#define IGNORE_INDEX (-100)

// mean cross-entropy over the targets that are not IGNORE_INDEX. the logits
// are kept; crossentropy_softmax_backward later overwrites them in place with
// their gradient, so no (B,T,V) probability buffer exists. the forward saves
// each row's log-sum-exp, so the backward needs one exp per logit.
float crossentropy_forward(float* losses, float* lse, const float* logits, const int* targets,
                           int BT, int V) {
    // losses (B,T), lse (B,T), logits (B,T,V), targets (B,T); returns the mean loss
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < BT; i++) {
        const float* x = logits + (size_t)i * V;
        float maxv = -INFINITY;
        #pragma omp simd reduction(max:maxv)
        for (int j = 0; j < V; j++) { maxv = x[j] > maxv ? x[j] : maxv; }
        // a NaN logit is skipped by the max but poisons the sum, so it reaches the loss
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int j = 0; j < V; j++) { sum += expf_simd(x[j] - maxv); }
        lse[i] = maxv + logf(sum);
        losses[i] = targets[i] == IGNORE_INDEX ? 0.0f : lse[i] - x[targets[i]];
    }
    double total = 0.0;
    int count = 0;
    for (int i = 0; i < BT; i++) {
        if (targets[i] != IGNORE_INDEX) { total += losses[i]; count++; }
    }
    return count > 0 ? (float)(total / count) : 0.0f;
}

int count_targets(const int* targets, int BT) {
    int count = 0;
    for (int i = 0; i < BT; i++) { count += targets[i] != IGNORE_INDEX; }
    return count;
}

void crossentropy_softmax_backward(float* dlogits, const float* logits, const float* lse,
                                   const int* targets, float dloss, int BT, int V) {
    // dlogits (B,T,V) written (=), may alias logits; lse (B,T) from the forward.
    // dloss is d(loss)/d(each counted row's loss), i.e. 1/count for a mean
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < BT; i++) {
        const float* x = logits + (size_t)i * V;
        float* d = dlogits + (size_t)i * V;
        if (targets[i] == IGNORE_INDEX) {
            for (int j = 0; j < V; j++) { d[j] = 0.0f; }
            continue;
        }
        float m = lse[i];
        #pragma omp simd
        for (int j = 0; j < V; j++) { d[j] = expf_simd(x[j] - m) * dloss; }
        d[targets[i]] -= dloss;
    }
}

// ----------------------------------------------------------------------------
// the model: config

typedef struct {
    int V;            // vocab size
    int C;            // hidden size
    int F;            // MLP intermediate size
    int NH;           // attention heads
    int L;            // layers
    int max_seq_len;  // longest sequence the model supports
    float norm_eps;   // rmsnorm epsilon
    float rope_theta; // rope base
} LlamaConfig;

typedef struct {
    const char* name;
    LlamaConfig cfg;
} LlamaPreset;

// the authors' configs/llama_*.json (vocab 32000, or 32100 for 100m), and
// tiny presets for tests and the CPU default
static const LlamaPreset LLAMA_PRESETS[] = {
    {"llama_9m",   {32000,  128,   352,  4,  4, 1024, 1e-6f, 10000.0f}},
    {"llama_20m",  {32000,  256,   688,  4,  4, 1024, 1e-6f, 10000.0f}},
    {"llama_35m",  {32000,  384,  1024,  8,  6, 1024, 1e-6f, 10000.0f}},
    {"llama_40m",  {32000,  416,  1024,  8,  8, 1024, 1e-6f, 10000.0f}},
    {"llama_60m",  {32000,  512,  1376,  8,  8, 1024, 1e-6f, 10000.0f}},
    {"llama_71m",  {32000,  512,  1368,  8, 12, 1024, 1e-6f, 10000.0f}},
    {"llama_100m", {32100,  640,  1708, 10, 12, 1024, 1e-6f, 10000.0f}},
    {"llama_130m", {32000,  768,  2048, 12, 12, 1024, 1e-6f, 10000.0f}},
    {"llama_250m", {32000,  768,  2560, 16, 24, 1024, 1e-6f, 10000.0f}},
    {"llama_350m", {32000, 1024,  2736, 16, 24, 1024, 1e-6f, 10000.0f}},
    {"llama_1b",   {32000, 2048,  5461, 32, 24, 1024, 1e-6f, 10000.0f}},
    {"llama_3b",   {32000, 2560,  6848, 32, 32, 1024, 1e-6f, 10000.0f}},
    {"llama_7b",   {32000, 4096, 11008, 32, 32, 2048, 1e-6f, 10000.0f}},
    // tiny presets (tests and the CPU default); match dev/reference/model_reference.py
    {"tiny",       {  256,   64,   176,  4,  2,   64, 1e-6f, 10000.0f}},
    {"awkward",    {  300,   72,   200,  3,  2,   32, 1e-6f, 10000.0f}},
};
#define NUM_LLAMA_PRESETS ((int)(sizeof(LLAMA_PRESETS) / sizeof(LLAMA_PRESETS[0])))

// returns NULL when cfg is valid, else a message saying what is wrong
const char* llama_config_problem(const LlamaConfig* c) {
    static char msg[256];
    if (c->V <= 0 || c->C <= 0 || c->F <= 0 || c->NH <= 0 || c->L <= 0 || c->max_seq_len <= 0) {
        snprintf(msg, sizeof msg, "every size must be positive (V=%d C=%d F=%d NH=%d L=%d max_seq_len=%d)",
                 c->V, c->C, c->F, c->NH, c->L, c->max_seq_len);
        return msg;
    }
    if (c->C % c->NH != 0) {
        snprintf(msg, sizeof msg, "hidden size C=%d is not divisible by the head count NH=%d", c->C, c->NH);
        return msg;
    }
    if ((c->C / c->NH) % 2 != 0) {
        snprintf(msg, sizeof msg, "head size C/NH=%d is odd; rope rotates channel pairs, so it must be even",
                 c->C / c->NH);
        return msg;
    }
    if (!(c->norm_eps > 0.0f) || !(c->rope_theta > 0.0f)) {
        snprintf(msg, sizeof msg, "rms_norm_eps (%g) and rope_theta (%g) must be positive",
                 c->norm_eps, c->rope_theta);
        return msg;
    }
    return NULL;
}

// looks a preset up by name, with or without the "llama_" prefix; 0 if unknown
int llama_preset_find(const char* name, LlamaConfig* out) {
    for (int i = 0; i < NUM_LLAMA_PRESETS; i++) {
        const char* p = LLAMA_PRESETS[i].name;
        if (strcmp(name, p) == 0 || (strncmp(p, "llama_", 6) == 0 && strcmp(name, p + 6) == 0)) {
            *out = LLAMA_PRESETS[i].cfg;
            return 1;
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// the model: one parameter table, in one contiguous buffer
//
// this table is the single description of the layout. gradients, AdamW
// moments, the checkpoint body and the reference files all follow it. every
// matrix is in nn.Linear layout (out_features, in_features); layer tensors
// are stacked on L.

#define NUM_PARAMETER_TENSORS 12
typedef struct {
    float* tok_embeddings; // (V, C)
    float* attn_norm;      // (L, C)
    float* wq;             // (L, C, C)
    float* wk;             // (L, C, C)
    float* wv;             // (L, C, C)
    float* wo;             // (L, C, C)
    float* mlp_norm;       // (L, C)
    float* w_gate;         // (L, F, C)
    float* w_up;           // (L, F, C)
    float* w_down;         // (L, C, F)
    float* final_norm;     // (C)
    float* lm_head;        // (V, C)
} ParameterTensors;

typedef struct {
    const char* name;
    int layers;   // how many stacked copies (L, or 1)
    int rows;     // per copy; 1 for a vector
    int cols;
    int is_norm;  // initialised to 1 instead of N(0, 0.02)
    int is_layer_matrix; // one of the 7 per-layer matrices the low-rank optimizer handles
} TensorSpec;

void parameter_table(TensorSpec spec[NUM_PARAMETER_TENSORS], const LlamaConfig* c) {
    int V = c->V, C = c->C, F = c->F, L = c->L;
    const TensorSpec table[NUM_PARAMETER_TENSORS] = {
        {"tok_embeddings", 1, V, C, 0, 0},
        {"attn_norm",      L, 1, C, 1, 0},
        {"wq",             L, C, C, 0, 1},
        {"wk",             L, C, C, 0, 1},
        {"wv",             L, C, C, 0, 1},
        {"wo",             L, C, C, 0, 1},
        {"mlp_norm",       L, 1, C, 1, 0},
        {"w_gate",         L, F, C, 0, 1},
        {"w_up",           L, F, C, 0, 1},
        {"w_down",         L, C, F, 0, 1},
        {"final_norm",     1, 1, C, 1, 0},
        {"lm_head",        1, V, C, 0, 0},
    };
    memcpy(spec, table, sizeof table);
}

static size_t tensor_numel(const TensorSpec* s) {
    return (size_t)s->layers * s->rows * s->cols;
}

static float** parameter_pointers(ParameterTensors* p) {
    // the struct is NUM_PARAMETER_TENSORS float pointers in table order
    _Static_assert(sizeof(ParameterTensors) == NUM_PARAMETER_TENSORS * sizeof(float*),
                   "ParameterTensors must hold exactly the table's pointers");
    return (float**)p;
}

size_t parameter_count(const LlamaConfig* c) {
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    size_t n = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) { n += tensor_numel(&spec[i]); }
    return n;
}

// points the struct's fields into memory (numel floats, laid out by the table)
void parameter_point_into(ParameterTensors* p, float* memory, const LlamaConfig* c) {
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    float** ptrs = parameter_pointers(p);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        ptrs[i] = memory;
        memory += tensor_numel(&spec[i]);
    }
}

// a small deterministic rng (splitmix64 seeding xorshift64*), so runs repeat
// exactly across machines and can be checkpointed as one integer
typedef struct { uint64_t state; } Rng;

void rng_seed(Rng* r, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    r->state = (z ^ (z >> 31)) | 1ull;
}

uint64_t rng_u64(Rng* r) {
    r->state ^= r->state >> 12;
    r->state ^= r->state << 25;
    r->state ^= r->state >> 27;
    return r->state * 0x2545F4914F6CDD1Dull;
}

float rng_uniform(Rng* r) {
    // in (0, 1): 24 random bits, offset by half a step so log() is finite
    return ((float)(rng_u64(r) >> 40) + 0.5f) / 16777216.0f;
}

float rng_normal(Rng* r) {
    // box-muller
    float u1 = rng_uniform(r), u2 = rng_uniform(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

// N(0, 0.02) for matrices and embeddings, 1 for norm weights
void parameter_init(float* memory, const LlamaConfig* c, uint64_t seed) {
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = tensor_numel(&spec[i]);
        for (size_t j = 0; j < n; j++) {
            memory[j] = spec[i].is_norm ? 1.0f : 0.02f * rng_normal(&rng);
        }
        memory += n;
    }
}

// ----------------------------------------------------------------------------
// the model: activations, one contiguous buffer described by one table

#define NUM_ACTIVATION_TENSORS 21
typedef struct {
    float* resid;      // (L, B, T, C) input of each layer (the residual stream)
    float* attn_xn;    // (L, B, T, C) attn_norm output
    float* attn_rstd;  // (L, B, T)
    float* q;          // (L, B, T, C) after rope
    float* k;          // (L, B, T, C) after rope
    float* v;          // (L, B, T, C)
    float* att;        // (L, B, NH, T, T) softmax probabilities
    float* atty;       // (L, B, T, C) attention output, before wo
    float* resid_mid;  // (L, B, T, C) stream after the attention block
    float* mlp_xn;     // (L, B, T, C) mlp_norm output
    float* mlp_rstd;   // (L, B, T)
    float* gate;       // (L, B, T, F) w_gate output
    float* up;         // (L, B, T, F) w_up output
    float* hidden;     // (L, B, T, F) silu(gate) * up
    float* resid_out;  // (B, T, C) stream after the last layer
    float* final_xn;   // (B, T, C)
    float* final_rstd; // (B, T)
    float* logits;     // (B, T, V); overwritten by its gradient in backward
    float* losses;     // (B, T)
    float* lse;        // (B, T) log-sum-exp of each logits row
    float* rope_cs;    // (2, T, HS/2) cos then sin tables
} ActivationTensors;

void activation_sizes(size_t sizes[NUM_ACTIVATION_TENSORS], const LlamaConfig* c, int B, int T) {
    size_t L = c->L, C = c->C, F = c->F, NH = c->NH, V = c->V, BT = (size_t)B * T;
    size_t HS = C / NH;
    size_t s[NUM_ACTIVATION_TENSORS] = {
        L * BT * C, L * BT * C, L * BT, L * BT * C, L * BT * C, L * BT * C,
        L * B * NH * T * T, L * BT * C, L * BT * C, L * BT * C, L * BT,
        L * BT * F, L * BT * F, L * BT * F,
        BT * C, BT * C, BT, BT * V, BT, BT, 2 * T * (HS / 2),
    };
    memcpy(sizes, s, sizeof s);
}

// gradient scratch for the backward pass, reused by every layer
#define NUM_GRAD_SCRATCH_TENSORS 8
typedef struct {
    float* dresid; // (B, T, C) gradient of the residual stream
    float* dxn;    // (B, T, C) gradient of a norm's output
    float* dq;     // (B, T, C)
    float* dk;     // (B, T, C)
    float* dv;     // (B, T, C)
    float* datt;   // (B, NH, T, T)
    float* dgate;  // (B, T, F)
    float* dup;    // (B, T, F); also holds d(hidden)
} GradScratch;

void grad_scratch_sizes(size_t sizes[NUM_GRAD_SCRATCH_TENSORS], const LlamaConfig* c, int B, int T) {
    size_t C = c->C, F = c->F, NH = c->NH, BT = (size_t)B * T;
    size_t s[NUM_GRAD_SCRATCH_TENSORS] = {BT * C, BT * C, BT * C, BT * C, BT * C,
                                          (size_t)B * NH * T * T, BT * F, BT * F};
    memcpy(sizes, s, sizeof s);
}

static size_t point_into(float** ptrs, const size_t* sizes, int n, float* memory) {
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (memory != NULL) { ptrs[i] = memory + total; }
        total += sizes[i];
    }
    return total;
}

typedef struct {
    LlamaConfig config;
    int B, T;                 // the batch shape the activations are sized for
    ParameterTensors params;
    float* params_memory;
    ParameterTensors grads;
    float* grads_memory;
    size_t num_parameters;
    ActivationTensors acts;
    float* acts_memory;
    size_t num_activations;
    GradScratch scratch;
    float* scratch_memory;
    size_t num_scratch;
    float mean_loss;          // of the last forward with targets
} Llama;

// allocates parameters and gradients; activations come with the first forward
void llama_build(Llama* model, const LlamaConfig* c) {
    const char* problem = llama_config_problem(c);
    if (problem != NULL) {
        fatal("invalid model config: %s", problem);
    }
    memset(model, 0, sizeof *model);
    model->config = *c;
    model->num_parameters = parameter_count(c);
    model->params_memory = (float*)malloc_check(model->num_parameters * sizeof(float), "parameters");
    model->grads_memory = (float*)calloc_check(model->num_parameters * sizeof(float), "gradients");
    parameter_point_into(&model->params, model->params_memory, c);
    parameter_point_into(&model->grads, model->grads_memory, c);
}

void llama_init_weights(Llama* model, uint64_t seed) {
    parameter_init(model->params_memory, &model->config, seed);
}

void llama_alloc_activations(Llama* model, int B, int T) {
    const LlamaConfig* c = &model->config;
    if (model->acts_memory != NULL && model->B == B && model->T == T) { return; }
    if (T > c->max_seq_len) {
        fatal("sequence length T=%d is above the model's max_seq_len=%d; lower --max_length", T, c->max_seq_len);
    }
    free(model->acts_memory);
    free(model->scratch_memory);
    size_t asz[NUM_ACTIVATION_TENSORS], gsz[NUM_GRAD_SCRATCH_TENSORS];
    activation_sizes(asz, c, B, T);
    grad_scratch_sizes(gsz, c, B, T);
    model->num_activations = point_into(NULL, asz, NUM_ACTIVATION_TENSORS, NULL);
    model->num_scratch = point_into(NULL, gsz, NUM_GRAD_SCRATCH_TENSORS, NULL);
    model->acts_memory = (float*)calloc_check(model->num_activations * sizeof(float), "activations");
    model->scratch_memory = (float*)calloc_check(model->num_scratch * sizeof(float), "gradient scratch");
    point_into((float**)&model->acts, asz, NUM_ACTIVATION_TENSORS, model->acts_memory);
    point_into((float**)&model->scratch, gsz, NUM_GRAD_SCRATCH_TENSORS, model->scratch_memory);
    model->B = B;
    model->T = T;
    int HS = c->C / c->NH;
    rope_precompute(model->acts.rope_cs, model->acts.rope_cs + (size_t)T * (HS / 2), T, HS, c->rope_theta);
}

void llama_free(Llama* model) {
    free(model->params_memory);
    free(model->grads_memory);
    free(model->acts_memory);
    free(model->scratch_memory);
    memset(model, 0, sizeof *model);
}

// inputs (B,T) token ids; targets (B,T) or NULL. returns the mean loss over
// counted targets (0 without targets), and leaves the logits in acts.logits
float llama_forward(Llama* model, const int* inputs, const int* targets, int B, int T) {
    llama_alloc_activations(model, B, T);
    const LlamaConfig* c = &model->config;
    int L = c->L, C = c->C, F = c->F, NH = c->NH, V = c->V, HS = C / NH, BT = B * T;
    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    const float* cos_t = a.rope_cs;
    const float* sin_t = a.rope_cs + (size_t)T * (HS / 2);
    size_t btc = (size_t)BT * C, btf = (size_t)BT * F;

    encoder_forward(a.resid, inputs, p.tok_embeddings, BT, C);
    for (int l = 0; l < L; l++) {
        float* x = a.resid + l * btc;
        float* xn = a.attn_xn + l * btc;
        float* q = a.q + l * btc;
        float* k = a.k + l * btc;
        float* v = a.v + l * btc;
        float* atty = a.atty + l * btc;
        float* mid = a.resid_mid + l * btc;
        float* mxn = a.mlp_xn + l * btc;
        float* gate = a.gate + l * btf;
        float* up = a.up + l * btf;
        float* hidden = a.hidden + l * btf;
        float* out = l + 1 < L ? a.resid + (l + 1) * btc : a.resid_out;
        size_t cc = (size_t)C * C, fc = (size_t)F * C;

        rmsnorm_forward(xn, a.attn_rstd + (size_t)l * BT, x, p.attn_norm + (size_t)l * C, BT, C, c->norm_eps);
        matmul_forward(q, xn, p.wq + l * cc, BT, C, C);
        matmul_forward(k, xn, p.wk + l * cc, BT, C, C);
        matmul_forward(v, xn, p.wv + l * cc, BT, C, C);
        rope_forward(q, q, cos_t, sin_t, B, T, NH, HS);
        rope_forward(k, k, cos_t, sin_t, B, T, NH, HS);
        attention_forward(atty, a.att + (size_t)l * B * NH * T * T, q, k, v, B, T, NH, HS);
        matmul_forward(mid, atty, p.wo + l * cc, BT, C, C);
        residual_forward(mid, mid, x, btc);

        rmsnorm_forward(mxn, a.mlp_rstd + (size_t)l * BT, mid, p.mlp_norm + (size_t)l * C, BT, C, c->norm_eps);
        matmul_forward(gate, mxn, p.w_gate + l * fc, BT, C, F);
        matmul_forward(up, mxn, p.w_up + l * fc, BT, C, F);
        swiglu_forward(hidden, gate, up, btf);
        matmul_forward(out, hidden, p.w_down + l * fc, BT, F, C);
        residual_forward(out, out, mid, btc);
    }
    rmsnorm_forward(a.final_xn, a.final_rstd, a.resid_out, p.final_norm, BT, C, c->norm_eps);
    matmul_forward(a.logits, a.final_xn, p.lm_head, BT, C, V);
    model->mean_loss = 0.0f;
    if (targets != NULL) {
        model->mean_loss = crossentropy_forward(a.losses, a.lse, a.logits, targets, BT, V);
    }
    return model->mean_loss;
}

void llama_zero_grad(Llama* model) {
    memset(model->grads_memory, 0, model->num_parameters * sizeof(float));
}

// backward of the mean loss times loss_scale, accumulated (+=) into
// model->grads. loss_scale lets gradient accumulation average micro-batches
// (pass 1/num_micro_steps). needs the forward with targets just before.
void llama_backward(Llama* model, const int* inputs, const int* targets, float loss_scale) {
    const LlamaConfig* c = &model->config;
    int B = model->B, T = model->T;
    int L = c->L, C = c->C, F = c->F, NH = c->NH, V = c->V, HS = C / NH, BT = B * T;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts;
    GradScratch s = model->scratch;
    const float* cos_t = a.rope_cs;
    const float* sin_t = a.rope_cs + (size_t)T * (HS / 2);
    size_t btc = (size_t)BT * C, btf = (size_t)BT * F;
    int count = count_targets(targets, BT);
    float dloss = count > 0 ? loss_scale / count : 0.0f;

    // logits become dlogits in place
    crossentropy_softmax_backward(a.logits, a.logits, a.lse, targets, dloss, BT, V);
    matmul_backward(s.dxn, g.lm_head, a.logits, a.final_xn, p.lm_head, BT, C, V);
    memset(s.dresid, 0, btc * sizeof(float));
    rmsnorm_backward(s.dresid, g.final_norm, s.dxn, a.resid_out, p.final_norm, a.final_rstd, BT, C);

    for (int l = L - 1; l >= 0; l--) {
        float* x = a.resid + l * btc;
        float* xn = a.attn_xn + l * btc;
        float* q = a.q + l * btc;
        float* k = a.k + l * btc;
        float* v = a.v + l * btc;
        float* atty = a.atty + l * btc;
        float* mid = a.resid_mid + l * btc;
        float* mxn = a.mlp_xn + l * btc;
        float* gate = a.gate + l * btf;
        float* up = a.up + l * btf;
        float* hidden = a.hidden + l * btf;
        size_t cc = (size_t)C * C, fc = (size_t)F * C;

        // mlp block: out = mid + w_down(swiglu(w_gate(xn), w_up(xn))), xn = norm(mid)
        // s.dresid holds d(out); it flows into d(mid) unchanged (residual)
        matmul_backward(s.dup, g.w_down + l * fc, s.dresid, hidden, p.w_down + l * fc, BT, F, C);
        swiglu_backward(s.dgate, s.dup, s.dup, gate, up, btf);
        matmul_backward(s.dxn, g.w_gate + l * fc, s.dgate, mxn, p.w_gate + l * fc, BT, C, F);
        // the up branch's input gradient adds to the gate branch's: use q's
        // scratch for it, then sum
        matmul_backward(s.dq, g.w_up + l * fc, s.dup, mxn, p.w_up + l * fc, BT, C, F);
        residual_backward(s.dxn, s.dq, btc);
        rmsnorm_backward(s.dresid, g.mlp_norm + (size_t)l * C, s.dxn, mid, p.mlp_norm + (size_t)l * C,
                         a.mlp_rstd + (size_t)l * BT, BT, C);

        // attention block: mid = x + wo(attn(rope(wq xn), rope(wk xn), wv xn)), xn = norm(x)
        matmul_backward(s.dxn, g.wo + l * cc, s.dresid, atty, p.wo + l * cc, BT, C, C);
        attention_backward(s.dq, s.dk, s.dv, s.datt, s.dxn, q, k, v,
                           a.att + (size_t)l * B * NH * T * T, B, T, NH, HS);
        rope_backward(s.dq, s.dq, cos_t, sin_t, B, T, NH, HS);
        rope_backward(s.dk, s.dk, cos_t, sin_t, B, T, NH, HS);
        // three projections read the same xn: sum their input gradients in dxn
        matmul_backward(s.dxn, g.wq + l * cc, s.dq, xn, p.wq + l * cc, BT, C, C);
        matmul_backward(s.dq, g.wk + l * cc, s.dk, xn, p.wk + l * cc, BT, C, C);
        residual_backward(s.dxn, s.dq, btc);
        matmul_backward(s.dq, g.wv + l * cc, s.dv, xn, p.wv + l * cc, BT, C, C);
        residual_backward(s.dxn, s.dq, btc);
        rmsnorm_backward(s.dresid, g.attn_norm + (size_t)l * C, s.dxn, x, p.attn_norm + (size_t)l * C,
                         a.attn_rstd + (size_t)l * BT, BT, C);
    }
    encoder_backward(g.tok_embeddings, s.dresid, inputs, BT, C);
}

// bytes of parameters, and of activations + backward scratch at (B, T)
void llama_memory_report(const LlamaConfig* c, int B, int T, FILE* out) {
    size_t asz[NUM_ACTIVATION_TENSORS], gsz[NUM_GRAD_SCRATCH_TENSORS];
    activation_sizes(asz, c, B, T);
    grad_scratch_sizes(gsz, c, B, T);
    size_t np = parameter_count(c);
    size_t na = point_into(NULL, asz, NUM_ACTIVATION_TENSORS, NULL);
    size_t ns = point_into(NULL, gsz, NUM_GRAD_SCRATCH_TENSORS, NULL);
    fprintf(out, "parameters:   %zu (%.2f M)\n", np, np / 1e6);
    fprintf(out, "memory:       parameters %.1f MiB, gradients %.1f MiB, activations %.1f MiB (B=%d, T=%d)\n",
            np * 4.0 / 1048576, np * 4.0 / 1048576, (na + ns) * 4.0 / 1048576, B, T);
}

// ----------------------------------------------------------------------------
// data: token shards, the shard loader and the decoder file
//
//
// A shard is llm.c's token file, little-endian:
//     int32[256] header: [0] SHARD_MAGIC, [1] SHARD_VERSION, [2] token count N
//     uint16[N]  token ids
// dev/data/kjv.py and dev/data/c4.py write them, with BOS before each document.
//
// Windows. Shard s with N_s tokens is cut into W_s = (N_s - 1) / T windows;
// window w is tokens [w*T, w*T + T + 1): inputs are its first T tokens, targets
// its last T. Windows step by T, so consecutive windows share one token (the
// last target of one is the first input of the next), as in llm.c. A window
// never crosses a shard boundary; the last (N_s - 1) % T tokens of a shard are
// never read.
//
// Order. An epoch is every window of every shard exactly once, W = sum W_s in
// all. The epoch's order is the shards in glob order and each shard's windows
// in order (sequential), or, when shuffling, a Fisher-Yates permutation of the
// shards and one of each shard's windows, drawn from (seed, epoch[, shard]).
// Shuffled epochs still visit one shard after another, so windows mix within a
// shard and not across shards (as in llm.c); it costs one int64 per window of
// the largest shard (3 MB for a 100M-token shard at T=256). Epochs follow each
// other as one endless stream of windows.
//
// Ranks. With P processes, every step consumes P*B consecutive windows of that
// stream: rank r reads the r-th block of B. So ranks never read the same window
// within an epoch, together they read each window exactly once per epoch, and
// P ranks with batch B see exactly what one rank with batch P*B would. A batch
// that runs past the end of an epoch wraps into the next epoch's order.
//
// Position. All ranks hold the same position, (epoch, index in the epoch's
// stream of the next step's first window); ShardPosition stores it with what it
// depends on, so a checkpoint can restore it exactly and refuse other data.


#define SHARD_MAGIC 20240520       // llm.c's token shard magic
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256
#define SHARD_HEADER_BYTES ((int64_t)SHARD_HEADER_INTS * 4)
#define SHARD_TOKEN_BYTES 2        // uint16 ids
#define SHARD_MAX_VOCAB 65536      // what uint16 ids can address
#define SHARD_SCAN_TOKENS (1 << 16) // tokens read at a time when checking ids
#define SHARD_MSG_CAP 1024         // room for one error message
#define DEFAULT_TRAIN_DATA "data/kjv_train*.bin"
#define DEFAULT_VAL_DATA "data/kjv_val*.bin"
#define DEFAULT_DECODER "data/decoder.bin"
#define DATA_HINT "regenerate it with `python dev/data/kjv.py` (data/) or `python dev/data/c4.py` (C4)"

// every non-exiting data function returns one of these, and fills msg with the file, the problem and a fix
enum {
    SHARD_OK = 0,
    SHARD_ERR_ARGS,           // B, T, vocab, rank or ranks out of range
    SHARD_ERR_GLOB_EMPTY,     // the pattern matches no file
    SHARD_ERR_GLOB,           // glob() itself failed
    SHARD_ERR_OPEN,           // fopen failed
    SHARD_ERR_HEADER,         // file shorter than its header
    SHARD_ERR_MAGIC,          // not a shard (or not a decoder file)
    SHARD_ERR_VERSION,        // a format version this code does not read
    SHARD_ERR_SIZE,           // file size does not match the header
    SHARD_ERR_TOO_FEW_TOKENS, // fewer than B*T+1 tokens: not one batch
    SHARD_ERR_TOKEN_RANGE,    // a token id >= vocab size
    SHARD_ERR_READ,           // fseeko/fread failed
    SHARD_ERR_ALLOC,          // out of memory
    SHARD_ERR_POSITION,       // a saved position that does not fit this data
};

// little-endian decoding, so the files read the same on any host
static int32_t read_le_i32(const unsigned char* p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}
static int read_le_u16(const unsigned char* p) {
    return (int)p[0] | (int)p[1] << 8;
}

// validates one shard: magic, version, size against the header, at least
// min_tokens tokens and every id below vocab_size (0 or SHARD_MAX_VOCAB skip
// the id scan: no uint16 can be out of range then).
// writes the token count to *num_tokens. never exits.
int shard_validate(const char* path, int64_t min_tokens, int vocab_size, int64_t* num_tokens,
                   char* msg, size_t msg_cap) {
    *num_tokens = 0;
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(msg, msg_cap, "cannot open shard %s: %s; hint: check the path and permissions, or %s",
                 path, strerror(errno), DATA_HINT);
        return SHARD_ERR_OPEN;
    }
    int rc = SHARD_OK;
    unsigned char* chunk = NULL;
    unsigned char header[SHARD_HEADER_BYTES];
    int64_t file_bytes = -1;
    if (fseeko(f, 0, SEEK_END) == 0) { file_bytes = (int64_t)ftello(f); }
    if (file_bytes < 0 || fseeko(f, 0, SEEK_SET) != 0) {
        snprintf(msg, msg_cap, "cannot seek in shard %s: %s; hint: shards must be regular files", path, strerror(errno));
        rc = SHARD_ERR_READ; goto done;
    }
    if (file_bytes < SHARD_HEADER_BYTES || fread(header, 1, SHARD_HEADER_BYTES, f) != SHARD_HEADER_BYTES) {
        snprintf(msg, msg_cap, "shard %s is %lld bytes, shorter than its %lld-byte header; "
                 "hint: the file is truncated or not a token shard; %s",
                 path, (long long)file_bytes, (long long)SHARD_HEADER_BYTES, DATA_HINT);
        rc = SHARD_ERR_HEADER; goto done;
    }
    int32_t magic = read_le_i32(header), version = read_le_i32(header + 4), count = read_le_i32(header + 8);
    if (magic != SHARD_MAGIC) {
        snprintf(msg, msg_cap, "shard %s has magic %d, expected %d (an llm.c token shard); "
                 "hint: this is not a token shard (a checkpoint? a raw text file?); %s",
                 path, (int)magic, SHARD_MAGIC, DATA_HINT);
        rc = SHARD_ERR_MAGIC; goto done;
    }
    if (version != SHARD_VERSION) {
        snprintf(msg, msg_cap, "shard %s has version %d, this code reads version %d; "
                 "hint: %s", path, (int)version, SHARD_VERSION, DATA_HINT);
        rc = SHARD_ERR_VERSION; goto done;
    }
    int64_t expected_bytes = SHARD_HEADER_BYTES + (int64_t)count * SHARD_TOKEN_BYTES;
    if (count < 0 || file_bytes != expected_bytes) {
        snprintf(msg, msg_cap, "shard %s is %lld bytes, but its header says %d tokens, which is %lld bytes; "
                 "hint: the file is truncated or was not finished writing; %s",
                 path, (long long)file_bytes, (int)count, (long long)expected_bytes, DATA_HINT);
        rc = SHARD_ERR_SIZE; goto done;
    }
    if ((int64_t)count < min_tokens) {
        snprintf(msg, msg_cap, "shard %s has %d tokens, fewer than the B*T+1 = %lld one batch needs; "
                 "hint: lower the batch size B or the sequence length T, or merge it into bigger shards",
                 path, (int)count, (long long)min_tokens);
        rc = SHARD_ERR_TOO_FEW_TOKENS; goto done;
    }
    if (vocab_size > 0 && vocab_size < SHARD_MAX_VOCAB) {
        chunk = (unsigned char*)malloc((size_t)SHARD_SCAN_TOKENS * SHARD_TOKEN_BYTES);
        if (chunk == NULL) {
            snprintf(msg, msg_cap, "out of memory checking shard %s", path);
            rc = SHARD_ERR_ALLOC; goto done;
        }
        for (int64_t start = 0; start < count; start += SHARD_SCAN_TOKENS) {
            int64_t n = count - start < SHARD_SCAN_TOKENS ? count - start : SHARD_SCAN_TOKENS;
            if (fread(chunk, SHARD_TOKEN_BYTES, (size_t)n, f) != (size_t)n) {
                snprintf(msg, msg_cap, "cannot read tokens %lld.. of shard %s: %s; hint: the file changed "
                         "while being read, or the disk failed", (long long)start, path, strerror(errno));
                rc = SHARD_ERR_READ; goto done;
            }
            for (int64_t i = 0; i < n; i++) {
                int id = read_le_u16(chunk + i * SHARD_TOKEN_BYTES);
                if (id >= vocab_size) {
                    snprintf(msg, msg_cap, "shard %s has token id %d at index %lld, not below the model's "
                             "vocab size %d; hint: the shard was made with another tokenizer; use data made "
                             "for this vocab, or a model whose vocab covers it",
                             path, id, (long long)(start + i), vocab_size);
                    rc = SHARD_ERR_TOKEN_RANGE; goto done;
                }
            }
        }
    }
    *num_tokens = count;
done:
    free(chunk);
    fclose(f);
    return rc;
}

// what a checkpoint saves of a loader: plain int64 fields, no padding, written as is.
// epoch and window_in_epoch are the position; the rest guard against restoring
// it onto different data, a different T or a different order.
typedef struct {
    int64_t epoch;           // epochs completed (the stream index div W)
    int64_t window_in_epoch; // stream index, within the epoch, of the next step's first window (rank 0's)
    int64_t num_windows;     // W: windows in one epoch of this data at this T
    int64_t T;               // sequence length the windows were cut for
    int64_t shuffle;         // 1 shuffled order, 0 sequential
    int64_t seed;            // shuffle seed (as int64 bits)
} ShardPosition;

typedef struct {
    const char* pattern; // glob of shard files, e.g. DEFAULT_TRAIN_DATA
    const char* flag;    // the option that gave the pattern, for messages, e.g. "--train_data"
    int B;               // windows per batch, per rank
    int T;               // tokens per window, plus one for the shifted target
    int vocab_size;      // every token id must be below this
    int rank;            // this process, 0..num_ranks-1
    int num_ranks;       // data-parallel processes
    int shuffle;         // 0 sequential, 1 reshuffled every epoch
    uint64_t seed;       // shuffle seed
} ShardLoaderConfig;

typedef struct {
    ShardLoaderConfig cfg;
    // the shards
    int num_shards;
    char** paths;            // (num_shards) file names, sorted by glob
    int64_t* shard_windows;  // (num_shards) W_s = (N_s - 1) / T
    int64_t num_windows;     // W = sum of W_s
    // the position
    int64_t epoch;
    int64_t window_in_epoch;
    // the order of the epoch order_epoch: shards in visiting order, and where each starts in the stream
    int64_t order_epoch;
    int* shard_order;        // (num_shards)
    int64_t* order_start;    // (num_shards + 1) stream index of each visited shard's first window
    // one shard's window permutation, cached because batches mostly stay in one shard
    int64_t perm_epoch;
    int perm_shard;
    int64_t* window_perm;    // (max W_s)
    // the open shard
    int open_shard;
    FILE* file;
    unsigned char* window_bytes; // (T + 1) * SHARD_TOKEN_BYTES
} ShardLoader;

// splitmix64 (Vigna): a tiny, well-mixed 64-bit generator; the constants are the published ones
static uint64_t splitmix64_next(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// uniform in [0, n) without modulo bias: reject the top partial block of 2^64
static uint64_t splitmix64_below(uint64_t* state, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do { r = splitmix64_next(state); } while (r >= limit);
    return r % n;
}

// one independent stream per (seed, epoch, which): which = -1 for the shard order, s for shard s's windows
static uint64_t shard_rng_state(uint64_t seed, int64_t epoch, int64_t which) {
    uint64_t s = seed;
    s = splitmix64_next(&s) ^ (uint64_t)epoch;
    s = splitmix64_next(&s) ^ (uint64_t)(which + 1);
    return splitmix64_next(&s);
}

static void fisher_yates_int64(int64_t* a, int64_t n, uint64_t* state) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)splitmix64_below(state, (uint64_t)(i + 1));
        int64_t t = a[i]; a[i] = a[j]; a[j] = t;
    }
}

static void shard_loader_build_order(ShardLoader* L, int64_t epoch) {
    if (L->order_epoch == epoch) { return; }
    for (int i = 0; i < L->num_shards; i++) { L->shard_order[i] = i; }
    if (L->cfg.shuffle) {
        uint64_t state = shard_rng_state(L->cfg.seed, epoch, -1);
        for (int i = L->num_shards - 1; i > 0; i--) {
            int j = (int)splitmix64_below(&state, (uint64_t)(i + 1));
            int t = L->shard_order[i]; L->shard_order[i] = L->shard_order[j]; L->shard_order[j] = t;
        }
    }
    L->order_start[0] = 0;
    for (int i = 0; i < L->num_shards; i++) {
        L->order_start[i + 1] = L->order_start[i] + L->shard_windows[L->shard_order[i]];
    }
    L->order_epoch = epoch;
}

// maps the stream index (epoch, index in epoch) to a shard and a window in it
static void shard_loader_locate(ShardLoader* L, int64_t epoch, int64_t index, int* shard, int64_t* window) {
    shard_loader_build_order(L, epoch);
    // binary search: the last visited shard whose start is <= index
    int lo = 0, hi = L->num_shards - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (L->order_start[mid] <= index) { lo = mid; } else { hi = mid - 1; }
    }
    int s = L->shard_order[lo];
    int64_t j = index - L->order_start[lo];
    if (L->cfg.shuffle) {
        if (L->perm_epoch != epoch || L->perm_shard != s) {
            for (int64_t w = 0; w < L->shard_windows[s]; w++) { L->window_perm[w] = w; }
            uint64_t state = shard_rng_state(L->cfg.seed, epoch, s);
            fisher_yates_int64(L->window_perm, L->shard_windows[s], &state);
            L->perm_epoch = epoch;
            L->perm_shard = s;
        }
        j = L->window_perm[j];
    }
    *shard = s;
    *window = j;
}

void shard_loader_free(ShardLoader* L) {
    if (L->paths != NULL) {
        for (int i = 0; i < L->num_shards; i++) { free(L->paths[i]); }
    }
    free(L->paths);
    free(L->shard_windows);
    free(L->shard_order);
    free(L->order_start);
    free(L->window_perm);
    free(L->window_bytes);
    if (L->file != NULL) { fclose(L->file); }
    memset(L, 0, sizeof(*L));
}

// globs cfg->pattern, validates every shard, and sets up the loader at the start
// of epoch 0. on error returns a SHARD_ERR_* code with msg filled, and L holds
// nothing to free. never exits.
int shard_loader_init(ShardLoader* L, const ShardLoaderConfig* cfg, char* msg, size_t msg_cap) {
    memset(L, 0, sizeof(*L));
    L->cfg = *cfg;
    const char* flag = cfg->flag != NULL ? cfg->flag : "the data option";
    const char* pattern = cfg->pattern != NULL ? cfg->pattern : "";
    L->cfg.pattern = NULL; // cfg's strings belong to the caller; keep no pointer to them
    L->cfg.flag = NULL;
    if (cfg->B < 1 || cfg->T < 1 || cfg->vocab_size < 1 || cfg->vocab_size > SHARD_MAX_VOCAB ||
        cfg->num_ranks < 1 || cfg->rank < 0 || cfg->rank >= cfg->num_ranks) {
        snprintf(msg, msg_cap, "bad loader settings for %s %s: B=%d T=%d vocab=%d rank=%d of %d; "
                 "hint: B and T must be >= 1, vocab in 1..%d, 0 <= rank < ranks",
                 flag, pattern, cfg->B, cfg->T, cfg->vocab_size, cfg->rank, cfg->num_ranks, SHARD_MAX_VOCAB);
        return SHARD_ERR_ARGS;
    }
    glob_t g;
    int grc = glob(pattern, 0, NULL, &g);
    if (grc == GLOB_NOMATCH || (grc == 0 && g.gl_pathc == 0)) {
        if (grc == 0) { globfree(&g); }
        snprintf(msg, msg_cap, "no file matches %s '%s'; hint: check the path (quote the pattern so the "
                 "shell does not expand it), or make the data: %s", flag, pattern, DATA_HINT);
        return SHARD_ERR_GLOB_EMPTY;
    }
    if (grc != 0) {
        snprintf(msg, msg_cap, "glob failed for %s '%s' (glob error %d); hint: check that the directories "
                 "are readable", flag, pattern, grc);
        return SHARD_ERR_GLOB;
    }
    int rc = SHARD_OK;
    L->num_shards = (int)g.gl_pathc;
    L->paths = (char**)calloc((size_t)L->num_shards, sizeof(char*));
    L->shard_windows = (int64_t*)calloc((size_t)L->num_shards, sizeof(int64_t));
    L->shard_order = (int*)calloc((size_t)L->num_shards, sizeof(int));
    L->order_start = (int64_t*)calloc((size_t)L->num_shards + 1, sizeof(int64_t));
    L->window_bytes = (unsigned char*)malloc(((size_t)cfg->T + 1) * SHARD_TOKEN_BYTES);
    if (!L->paths || !L->shard_windows || !L->shard_order || !L->order_start || !L->window_bytes) {
        snprintf(msg, msg_cap, "out of memory setting up %s '%s'", flag, pattern);
        rc = SHARD_ERR_ALLOC; goto fail;
    }
    int64_t min_tokens = (int64_t)cfg->B * cfg->T + 1;
    int64_t max_windows = 0;
    for (int i = 0; i < L->num_shards; i++) {
        L->paths[i] = strdup(g.gl_pathv[i]);
        if (L->paths[i] == NULL) {
            snprintf(msg, msg_cap, "out of memory setting up %s '%s'", flag, pattern);
            rc = SHARD_ERR_ALLOC; goto fail;
        }
        int64_t n;
        rc = shard_validate(L->paths[i], min_tokens, cfg->vocab_size, &n, msg, msg_cap);
        if (rc != SHARD_OK) { goto fail; }
        L->shard_windows[i] = (n - 1) / cfg->T;
        L->num_windows += L->shard_windows[i];
        if (L->shard_windows[i] > max_windows) { max_windows = L->shard_windows[i]; }
    }
    if (cfg->shuffle) {
        L->window_perm = (int64_t*)malloc((size_t)max_windows * sizeof(int64_t));
        if (L->window_perm == NULL) {
            snprintf(msg, msg_cap, "out of memory for the window order of %s '%s' (%lld windows); "
                     "hint: split it into smaller shards", flag, pattern, (long long)max_windows);
            rc = SHARD_ERR_ALLOC; goto fail;
        }
    }
    globfree(&g);
    L->order_epoch = -1;
    L->perm_epoch = -1;
    L->perm_shard = -1;
    L->open_shard = -1;
    return SHARD_OK;
fail:
    globfree(&g);
    shard_loader_free(L);
    return rc;
}

// reads the next batch of this rank: inputs and targets, each (B, T), targets
// shifted by one. advances every rank's shared position by num_ranks * B windows.
int shard_loader_next_batch(ShardLoader* L, int* inputs, int* targets, char* msg, size_t msg_cap) {
    const int B = L->cfg.B, T = L->cfg.T;
    const int64_t W = L->num_windows;
    // this rank's first window, then wrap it into its epoch (it can pass several when W < ranks * B)
    int64_t epoch = L->epoch;
    int64_t index = L->window_in_epoch + (int64_t)L->cfg.rank * B;
    for (int b = 0; b < B; b++, index++) {
        while (index >= W) { index -= W; epoch++; }
        int s;
        int64_t w;
        shard_loader_locate(L, epoch, index, &s, &w);
        if (L->open_shard != s) {
            if (L->file != NULL) { fclose(L->file); }
            L->file = fopen(L->paths[s], "rb");
            L->open_shard = L->file != NULL ? s : -1;
            if (L->file == NULL) {
                snprintf(msg, msg_cap, "cannot reopen shard %s: %s; hint: it was there at start-up; "
                         "do not move data while training", L->paths[s], strerror(errno));
                return SHARD_ERR_OPEN;
            }
        }
        // 64-bit offset: shards over 2 GB are fine
        off_t offset = (off_t)(SHARD_HEADER_BYTES + w * T * SHARD_TOKEN_BYTES);
        size_t want = (size_t)T + 1;
        if (fseeko(L->file, offset, SEEK_SET) != 0 ||
            fread(L->window_bytes, SHARD_TOKEN_BYTES, want, L->file) != want) {
            snprintf(msg, msg_cap, "cannot read window %lld of shard %s; hint: the file changed or was "
                     "truncated after it was validated; %s", (long long)w, L->paths[s], DATA_HINT);
            return SHARD_ERR_READ;
        }
        for (int t = 0; t <= T; t++) {
            int id = read_le_u16(L->window_bytes + t * SHARD_TOKEN_BYTES);
            if (id >= L->cfg.vocab_size) { // validated at start-up, so only if the file changed since
                snprintf(msg, msg_cap, "shard %s has token id %d in window %lld, not below the vocab size %d; "
                         "hint: the file changed after it was validated; %s",
                         L->paths[s], id, (long long)w, L->cfg.vocab_size, DATA_HINT);
                return SHARD_ERR_TOKEN_RANGE;
            }
            if (t < T) { inputs[b * T + t] = id; }
            if (t > 0) { targets[b * T + t - 1] = id; }
        }
    }
    // every rank advances past the whole step
    L->window_in_epoch += (int64_t)L->cfg.num_ranks * B;
    while (L->window_in_epoch >= W) { L->window_in_epoch -= W; L->epoch++; }
    return SHARD_OK;
}

ShardPosition shard_loader_get_position(const ShardLoader* L) {
    ShardPosition p;
    p.epoch = L->epoch;
    p.window_in_epoch = L->window_in_epoch;
    p.num_windows = L->num_windows;
    p.T = L->cfg.T;
    p.shuffle = L->cfg.shuffle ? 1 : 0;
    p.seed = (int64_t)L->cfg.seed;
    return p;
}

// restores a saved position; refuses one saved on other data, T, order or seed
int shard_loader_set_position(ShardLoader* L, const ShardPosition* p, char* msg, size_t msg_cap) {
    ShardPosition here = shard_loader_get_position(L);
    if (p->num_windows != here.num_windows || p->T != here.T || p->shuffle != here.shuffle || p->seed != here.seed) {
        snprintf(msg, msg_cap, "the saved data position (W=%lld windows, T=%lld, shuffle=%lld, seed=%lld) does not "
                 "fit this data (%s..., W=%lld, T=%lld, shuffle=%lld, seed=%lld); hint: resume with the same "
                 "shards, sequence length, order and seed as the run that saved it",
                 (long long)p->num_windows, (long long)p->T, (long long)p->shuffle, (long long)p->seed,
                 L->paths[0], (long long)here.num_windows, (long long)here.T, (long long)here.shuffle,
                 (long long)here.seed);
        return SHARD_ERR_POSITION;
    }
    if (p->epoch < 0 || p->window_in_epoch < 0 || p->window_in_epoch >= here.num_windows) {
        snprintf(msg, msg_cap, "the saved data position (epoch %lld, window %lld) is out of range for %s... "
                 "(%lld windows); hint: the checkpoint is corrupt", (long long)p->epoch,
                 (long long)p->window_in_epoch, L->paths[0], (long long)here.num_windows);
        return SHARD_ERR_POSITION;
    }
    L->epoch = p->epoch;
    L->window_in_epoch = p->window_in_epoch;
    return SHARD_OK;
}

// back to the start of epoch 0 (e.g. before every evaluation pass over val)
void shard_loader_reset(ShardLoader* L) {
    L->epoch = 0;
    L->window_in_epoch = 0;
}

// the trainer's wrappers: print the message to stderr and exit
void shard_loader_init_or_exit(ShardLoader* L, const ShardLoaderConfig* cfg) {
    char msg[SHARD_MSG_CAP];
    if (shard_loader_init(L, cfg, msg, sizeof(msg)) != SHARD_OK) {
        fprintf(stderr, "error: %s\n", msg);
        exit(EXIT_FAILURE);
    }
}

void shard_loader_next_batch_or_exit(ShardLoader* L, int* inputs, int* targets) {
    char msg[SHARD_MSG_CAP];
    if (shard_loader_next_batch(L, inputs, targets, msg, sizeof(msg)) != SHARD_OK) {
        fprintf(stderr, "error: %s\n", msg);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// the decoder file: token id -> the bytes it adds to the text (written by
// dev/data/shard_format.py write_decoder, format in data/README.md), little-endian:
//     int32[8] header: [0] DECODER_MAGIC, [1] DECODER_VERSION, [2] V, [3] BOS id,
//                      [4] EOS id, [5] unk id, [6] longest entry, [7] sum of entry lengths
//     then for id 0..V-1: uint16 length n, n raw bytes

#define DECODER_MAGIC 20261103
#define DECODER_VERSION 1
#define DECODER_HEADER_INTS 8
#define DECODER_HEADER_BYTES (DECODER_HEADER_INTS * 4)
#define DECODER_MAX_VOCAB (1 << 24) // far above any tokenizer; bounds what a corrupt header can allocate
#define DECODER_MAX_ENTRY 65535     // the length field is uint16

typedef struct {
    int vocab_size;         // V
    int bos_id, eos_id, unk_id; // -1 when the tokenizer has none
    int64_t* offsets;       // (V + 1) where each id's bytes start in bytes
    unsigned char* bytes;   // (sum of entry lengths) every id's bytes, back to back
} Decoder;

void decoder_free(Decoder* d) {
    free(d->offsets);
    free(d->bytes);
    memset(d, 0, sizeof(*d));
}

// reads and checks the whole decoder file. never exits.
int decoder_load(Decoder* d, const char* path, char* msg, size_t msg_cap) {
    memset(d, 0, sizeof(*d));
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(msg, msg_cap, "cannot open decoder file %s: %s; hint: check the path, or %s",
                 path, strerror(errno), DATA_HINT);
        return SHARD_ERR_OPEN;
    }
    int rc = SHARD_OK;
    unsigned char* raw = NULL;
    int64_t file_bytes = -1;
    if (fseeko(f, 0, SEEK_END) == 0) { file_bytes = (int64_t)ftello(f); }
    if (file_bytes < 0 || fseeko(f, 0, SEEK_SET) != 0) {
        snprintf(msg, msg_cap, "cannot seek in decoder file %s: %s", path, strerror(errno));
        rc = SHARD_ERR_READ; goto fail;
    }
    if (file_bytes < DECODER_HEADER_BYTES) {
        snprintf(msg, msg_cap, "decoder file %s is %lld bytes, shorter than its %d-byte header; hint: %s",
                 path, (long long)file_bytes, DECODER_HEADER_BYTES, DATA_HINT);
        rc = SHARD_ERR_HEADER; goto fail;
    }
    raw = (unsigned char*)malloc((size_t)file_bytes);
    if (raw == NULL) {
        snprintf(msg, msg_cap, "out of memory reading decoder file %s (%lld bytes)", path, (long long)file_bytes);
        rc = SHARD_ERR_ALLOC; goto fail;
    }
    if (fread(raw, 1, (size_t)file_bytes, f) != (size_t)file_bytes) {
        snprintf(msg, msg_cap, "cannot read decoder file %s: %s", path, strerror(errno));
        rc = SHARD_ERR_READ; goto fail;
    }
    int32_t h[DECODER_HEADER_INTS];
    for (int i = 0; i < DECODER_HEADER_INTS; i++) { h[i] = read_le_i32(raw + 4 * i); }
    if (h[0] != DECODER_MAGIC) {
        snprintf(msg, msg_cap, "decoder file %s has magic %d, expected %d; hint: pass the decoder.bin "
                 "written next to the shards, not a shard or tokenizer.model; %s", path, (int)h[0],
                 DECODER_MAGIC, DATA_HINT);
        rc = SHARD_ERR_MAGIC; goto fail;
    }
    if (h[1] != DECODER_VERSION) {
        snprintf(msg, msg_cap, "decoder file %s has version %d, this code reads version %d; hint: %s",
                 path, (int)h[1], DECODER_VERSION, DATA_HINT);
        rc = SHARD_ERR_VERSION; goto fail;
    }
    int V = h[2];
    int64_t expected = (int64_t)DECODER_HEADER_BYTES + 2 * (int64_t)V + (int64_t)h[7];
    if (V < 1 || V > DECODER_MAX_VOCAB || h[3] < -1 || h[3] >= V || h[4] < -1 || h[4] >= V ||
        h[5] < -1 || h[5] >= V || h[6] < 0 || h[6] > DECODER_MAX_ENTRY || h[7] < 0 || expected != file_bytes) {
        snprintf(msg, msg_cap, "decoder file %s has a bad header (V=%d, bos=%d, eos=%d, unk=%d, longest=%d, "
                 "total=%d) for its %lld bytes; hint: the file is corrupt or truncated; %s",
                 path, V, (int)h[3], (int)h[4], (int)h[5], (int)h[6], (int)h[7], (long long)file_bytes, DATA_HINT);
        rc = SHARD_ERR_SIZE; goto fail;
    }
    d->vocab_size = V;
    d->bos_id = h[3];
    d->eos_id = h[4];
    d->unk_id = h[5];
    d->offsets = (int64_t*)malloc(((size_t)V + 1) * sizeof(int64_t));
    d->bytes = (unsigned char*)malloc((size_t)h[7] + 1); // +1: never malloc(0)
    if (d->offsets == NULL || d->bytes == NULL) {
        snprintf(msg, msg_cap, "out of memory for decoder file %s (V=%d)", path, V);
        rc = SHARD_ERR_ALLOC; goto fail;
    }
    // walk the entries; every length is checked against what is left before it is used
    int64_t pos = DECODER_HEADER_BYTES, out = 0;
    for (int i = 0; i < V; i++) {
        if (pos + 2 > file_bytes) {
            snprintf(msg, msg_cap, "decoder file %s ends inside entry %d of %d; hint: the file is truncated; %s",
                     path, i, V, DATA_HINT);
            rc = SHARD_ERR_SIZE; goto fail;
        }
        int n = read_le_u16(raw + pos);
        pos += 2;
        if (n > h[6] || pos + n > file_bytes || out + n > h[7]) {
            snprintf(msg, msg_cap, "decoder file %s: entry %d has length %d, past the longest (%d) or the end "
                     "of the file; hint: the file is corrupt; %s", path, i, n, (int)h[6], DATA_HINT);
            rc = SHARD_ERR_SIZE; goto fail;
        }
        d->offsets[i] = out;
        memcpy(d->bytes + out, raw + pos, (size_t)n);
        pos += n;
        out += n;
        d->offsets[i + 1] = out;
    }
    if (pos != file_bytes || out != h[7]) {
        snprintf(msg, msg_cap, "decoder file %s: its %d entries take %lld bytes, the header says %d; "
                 "hint: the file is corrupt; %s", path, V, (long long)out, (int)h[7], DATA_HINT);
        rc = SHARD_ERR_SIZE; goto fail;
    }
    free(raw);
    fclose(f);
    return SHARD_OK;
fail:
    free(raw);
    fclose(f);
    decoder_free(d);
    return rc;
}

void decoder_load_or_exit(Decoder* d, const char* path) {
    char msg[SHARD_MSG_CAP];
    if (decoder_load(d, path, msg, sizeof(msg)) != SHARD_OK) {
        fprintf(stderr, "error: %s\n", msg);
        exit(EXIT_FAILURE);
    }
}

// the bytes of one id (not NUL-terminated); an id outside the vocab has none
const unsigned char* decoder_token_bytes(const Decoder* d, int id, size_t* len) {
    if (id < 0 || id >= d->vocab_size) { *len = 0; return (const unsigned char*)""; }
    *len = (size_t)(d->offsets[id + 1] - d->offsets[id]);
    return d->bytes + d->offsets[id];
}

// decodes n ids into out (always NUL-terminated when cap > 0, truncated to fit);
// returns the full decoded length, like snprintf, so a caller can see truncation
size_t decoder_decode(const Decoder* d, const int* ids, int n, char* out, size_t cap) {
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t len;
        const unsigned char* p = decoder_token_bytes(d, ids[i], &len);
        for (size_t k = 0; k < len; k++, total++) {
            if (total + 1 < cap) { out[total] = (char)p[k]; }
        }
    }
    if (cap > 0) { out[total < cap ? total : cap - 1] = '\0'; }
    return total;
}

// prints one token of a sample. ascii control bytes other than newline and tab
// are shown as \xNN, so a badly trained model cannot drive the terminal;
// bytes >= 0x80 pass through, so utf-8 split over byte tokens prints whole
void decoder_print_token(const Decoder* d, int id, FILE* out) {
    size_t len;
    const unsigned char* p = decoder_token_bytes(d, id, &len);
    for (size_t k = 0; k < len; k++) {
        unsigned char c = p[k];
        if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7F) {
            fprintf(out, "\\x%02X", c);
        } else {
            fputc(c, out);
        }
    }
}

// ----------------------------------------------------------------------------
// main

#ifndef TESTING
static void usage(void) {
    fprintf(stderr,
        "usage: ./train_llama_subtrack_cpu [flags]\n"
        "  --model_config NAME  preset (llama_9m .. llama_7b, tiny, awkward); default tiny\n"
        "  --batch_size B       sequences per step (default 4)\n"
        "  --max_length T       tokens per sequence (default 64)\n"
        "  --steps N            forward+backward steps to time (default 3)\n"
        "  --seed S             weight init seed (default 42)\n"
        "  --help               this text\n");
}

int main(int argc, char** argv) {
    const char* preset = "tiny";
    int B = 4, T = 64, steps = 3;
    uint64_t seed = 42;
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(); return 0; }
        if (i + 1 >= argc) { usage(); fatal("flag %s needs a value", f); }
        const char* val = argv[++i];
        if (strcmp(f, "--model_config") == 0) { preset = val; }
        else if (strcmp(f, "--batch_size") == 0) { B = atoi(val); }
        else if (strcmp(f, "--max_length") == 0) { T = atoi(val); }
        else if (strcmp(f, "--steps") == 0) { steps = atoi(val); }
        else if (strcmp(f, "--seed") == 0) { seed = strtoull(val, NULL, 10); }
        else { usage(); fatal("unknown flag %s", f); }
    }
    LlamaConfig cfg;
    if (!llama_preset_find(preset, &cfg)) { fatal("unknown --model_config %s; see --help for presets", preset); }
    Llama model;
    llama_build(&model, &cfg);
    llama_init_weights(&model, seed);
    printf("model:        %s (V=%d C=%d F=%d NH=%d L=%d)\n", preset, cfg.V, cfg.C, cfg.F, cfg.NH, cfg.L);
    printf("threads:      %d\n", num_threads());
    llama_memory_report(&cfg, B, T, stdout);
    int* tokens = (int*)malloc_check((size_t)B * (T + 1) * sizeof(int), "tokens");
    Rng rng;
    rng_seed(&rng, seed + 1);
    for (int i = 0; i < B * (T + 1); i++) { tokens[i] = (int)(rng_u64(&rng) % cfg.V); }
    int* inputs = (int*)malloc_check((size_t)B * T * sizeof(int), "inputs");
    int* targets = (int*)malloc_check((size_t)B * T * sizeof(int), "targets");
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            inputs[b * T + t] = tokens[b * (T + 1) + t];
            targets[b * T + t] = tokens[b * (T + 1) + t + 1];
        }
    }
    for (int s = 0; s < steps; s++) {
        double t0 = wall_seconds();
        llama_zero_grad(&model);
        float loss = llama_forward(&model, inputs, targets, B, T);
        llama_backward(&model, inputs, targets, 1.0f);
        printf("step %d: loss %.4f, %.1f ms\n", s, loss, 1e3 * (wall_seconds() - t0));
    }
    free(tokens); free(inputs); free(targets);
    llama_free(&model);
    return 0;
}
#endif
