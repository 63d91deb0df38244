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
    4. the data: token shards, the shard loader, the decoder file
    5. the optimizers: AdamW, and low-rank AdamW with GaLore or SubTrack++
    6. training: flags, schedule, evaluation, sampling, checkpoints, main

letter legend for shape comments:
    B batch, T sequence, C channels, NH heads, HS head size (C / NH),
    F intermediate (MLP), V vocab, L layers, R rank
*/
// 64-bit file offsets even on 32-bit systems: shards may exceed 2 GB
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
#include <limits.h>
#include <glob.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <ctype.h>
#include <unistd.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __cplusplus
// train_llama_subtrack.cu includes this file as C++, which spells these differently
#define restrict __restrict__
#define _Static_assert static_assert
#endif

// ----------------------------------------------------------------------------
// utilities

// every user-facing failure goes through here: stderr, a hint, exit 1
// with several ranks, "rank R of N: " before each fatal message (train_run sets it)
static char g_fatal_prefix[48] = "";

static void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s", g_fatal_prefix);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

// what to change when an allocation fails: the buffers that grow with the
// batch (activations, their gradients, the token batches) can shrink with
// --batch_size; the rest (parameters, gradients, optimizer states) only with
// a smaller model or rank
const char* memory_hint(const char* what) {
    static const char* const per_batch[] = {"activations", "gradient scratch", "inputs", "targets"};
    for (size_t i = 0; i < sizeof per_batch / sizeof per_batch[0]; i++) {
        if (strcmp(what, per_batch[i]) == 0) { return "try a smaller --batch_size or --max_length"; }
    }
    return "the model itself does not fit: try a smaller --model_config (or a lower --rank)";
}

void* malloc_check(size_t n, const char* what) {
    void* p = malloc(n > 0 ? n : 1);
    if (p == NULL) {
        fatal("out of memory allocating %zu bytes for %s; %s", n, what, memory_hint(what));
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

// ---- progress lines for phases that can take a while (building a large
// model, the initial SVDs, a GaLore refresh, evaluation). a phase that ends
// within g_progress_interval seconds prints nothing; a longer one prints
// "what done/total, elapsed, eta" at most every g_progress_interval seconds,
// and a last line when it ends. the trainer sets the interval from
// --progress_interval; below 0 (tests, benchmarks) nothing is printed.

static double g_progress_interval = -1.0;

static void format_duration(double seconds, char* out, size_t cap) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) { snprintf(out, cap, "%ldh%02ldm", s / 3600, (s % 3600) / 60); }
    else if (s >= 60) { snprintf(out, cap, "%ldm%02lds", s / 60, s % 60); }
    else { snprintf(out, cap, "%lds", s); }
}

typedef struct {
    const char* what;
    long total;
    double start, last_print;
    int printed;
} Progress;

void progress_begin(Progress* p, const char* what, long total) {
    p->what = what;
    p->total = total;
    p->start = p->last_print = wall_seconds();
    p->printed = 0;
}

void progress_update(Progress* p, long done) {
    if (g_progress_interval < 0 || p->total <= 0) { return; }
    double now = wall_seconds();
    if (done < p->total && now - p->last_print < g_progress_interval) { return; }
    if (done >= p->total && !p->printed && now - p->start < g_progress_interval) { return; }
    char elapsed[32], eta[32];
    format_duration(now - p->start, elapsed, sizeof elapsed);
    format_duration(done > 0 ? (now - p->start) / done * (p->total - done) : 0.0, eta, sizeof eta);
    if (done >= p->total) { printf("%s %ld/%ld, done in %s\n", p->what, done, p->total, elapsed); }
    else { printf("%s %ld/%ld, %s so far, eta %s\n", p->what, done, p->total, elapsed, eta); }
    fflush(stdout);
    p->printed = 1;
    p->last_print = now;
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
    // the clamp is written so that NaN fails both tests and becomes -87: n
    // then stays a small integer (converting NaN to int is undefined); the
    // last line returns the NaN itself. every other x clamps as before
    float xc = x > -87.0f ? x : -87.0f;
    xc = xc < 88.0f ? xc : 88.0f;
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    // n is in [-126, 127], so n + 127 is a valid exponent field in [1, 254];
    // shifted as unsigned, which is defined for every value
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
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

// causal multi-head softmax attention, scaled by 1/sqrt(HS), which keeps
// only each row's log-sum-exp for the backward pass: the GPU twin is flash
// attention (flash_attention.cuh), and the two save the same tensors. each
// (b, h) pair is two small matrix products around a row softmax, in a (T, T)
// block of scratch per thread that lives for one call; heads are read in
// place through the row stride C, so nothing is transposed or copied. the
// products also fill the masked upper triangle, which the softmax then
// zeroes: that wastes half their flops but keeps them on the fast gemm path.
// the backward recomputes the probabilities from the scores and the lse.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       int B, int T, int NH, int HS) {
    // out (B,T,NH,HS); lse (B,NH,T), saved for backward; q, k, v (B,T,NH,HS)
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    float* scratch = (float*)malloc_check((size_t)num_threads() * T * T * sizeof(float), "attention scores");
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        size_t off = (size_t)b * T * C + (size_t)h * HS;
        float* a = scratch + (size_t)tid * T * T;
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
            lse[(size_t)bh * T + t] = maxv + logf(sum);
        }
        // out_h: (T, HS) = att @ v_h
        gemm(0, 0, T, HS, T, 1.0f, a, T, v + off, C, 0.0f, out + off, C);
    }
    free(scratch);
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, float* scratch_D,
                        int B, int T, int NH, int HS) {
    // dq, dk, dv (B,T,NH,HS) written (=); dout, out (B,T,NH,HS); lse (B,NH,T)
    // from the forward pass; q, k, v (B,T,NH,HS); scratch_D (B,NH,T)
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    float* scratch = (float*)malloc_check((size_t)num_threads() * 2 * T * T * sizeof(float), "attention scores");
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        size_t off = (size_t)b * T * C + (size_t)h * HS;
        float* a = scratch + (size_t)tid * 2 * T * T;
        float* da = a + (size_t)T * T;
        float* D = scratch_D + (size_t)bh * T;
        // the probabilities again: att = exp(q_h @ k_h^T * scale - lse), 0 above the diagonal
        gemm(0, 1, T, T, HS, scale, q + off, C, k + off, C, 0.0f, a, T);
        for (int t = 0; t < T; t++) {
            float* row = a + (size_t)t * T;
            float m = lse[(size_t)bh * T + t];
            #pragma omp simd
            for (int t2 = 0; t2 <= t; t2++) { row[t2] = expf_simd(row[t2] - m); }
            for (int t2 = t + 1; t2 < T; t2++) { row[t2] = 0.0f; }
            // D_t = sum(att * datt) over the row = dout_t . out_t (as out = att @ v)
            const float* g = dout + off + (size_t)t * C;
            const float* o = out + off + (size_t)t * C;
            float dot = 0.0f;
            for (int d = 0; d < HS; d++) { dot += g[d] * o[d]; }
            D[t] = dot;
        }
        // forward was out = att @ v: datt = dout @ v^T, dv = att^T @ dout
        gemm(0, 1, T, T, HS, 1.0f, dout + off, C, v + off, C, 0.0f, da, T);
        gemm(1, 0, T, HS, T, 1.0f, a, T, dout + off, C, 0.0f, dv + off, C);
        // softmax backward, in place: ds = att * (datt - D). above the
        // diagonal att is 0, so ds is 0 there too
        for (int t = 0; t < T; t++) {
            const float* arow = a + (size_t)t * T;
            float* drow = da + (size_t)t * T;
            for (int t2 = 0; t2 < T; t2++) { drow[t2] = arow[t2] * (drow[t2] - D[t]); }
        }
        // scores were q @ k^T * scale: dq = ds @ k * scale, dk = ds^T @ q * scale
        gemm(0, 0, T, HS, T, scale, da, T, k + off, C, 0.0f, dq + off, C);
        gemm(1, 0, T, HS, T, scale, da, T, q + off, C, 0.0f, dk + off, C);
    }
    free(scratch);
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

// out = inp @ W^T + resid: the attention and MLP outputs joining the residual
// stream. the GPU twin does it in one product (the addition in cuBLASLt's
// epilogue); here it is the two steps. out and resid are two buffers
void matmul_forward_residual(float* out, const float* inp, const float* weight, const float* resid,
                             int BT, int C, int OC) {
    // out (B,T,OC), inp (B,T,C), weight (OC,C), resid (B,T,OC)
    matmul_forward(out, inp, weight, BT, C, OC);
    residual_forward(out, out, resid, (size_t)BT * OC);
}

// rmsnorm_backward of the output gradient dout + dout2, where two branches
// read the norm's output (the MLP's gate and up, the attention's q, k and v).
// the GPU twin adds the two as it reads them, saving a pass over (B,T,C);
// here it is the two steps, so dout is left holding the sum
void rmsnorm_backward_residual(float* dinp, float* dweight, float* dout, const float* dout2, const float* inp,
                               const float* weight, const float* rstd, int BT, int C) {
    // dinp (B,T,C) accumulated (+=), dweight (C) accumulated, dout, dout2, inp (B,T,C), rstd (B,T)
    residual_backward(dout, dout2, (size_t)BT * C);
    rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, BT, C);
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
    // the CPU default: sized for the embedded corpus (data/, vocab 4096) on 2 cores
    {"kjv_small",  { 4096,  128,   352,  4,  4,  256, 1e-6f, 10000.0f}},
    // tiny presets for tests; kjv_test reads data/, the others match
    // dev/reference/model_reference.py
    {"kjv_test",   { 4096,   32,    64,  2,  2,   64, 1e-6f, 10000.0f}},
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
    if (!(c->norm_eps > 0.0f) || !(c->rope_theta > 0.0f) || !isfinite(c->norm_eps) || !isfinite(c->rope_theta)) {
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
    // progress in millions of parameters: one normal draw after another, so
    // a 7B model takes minutes
    Progress pr;
    progress_begin(&pr, "initialising weights (millions of parameters)", (long)((parameter_count(c) + 999999) / 1000000));
    size_t done = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = tensor_numel(&spec[i]);
        for (size_t j = 0; j < n; j++) {
            memory[j] = spec[i].is_norm ? 1.0f : 0.02f * rng_normal(&rng);
            if (++done % 1000000 == 0) { progress_update(&pr, (long)(done / 1000000)); }
        }
        memory += n;
    }
    progress_update(&pr, pr.total);
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
    float* att_lse;    // (L, B, NH, T) log-sum-exp of each attention row
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
        L * B * NH * T, L * BT * C, L * BT * C, L * BT * C, L * BT,
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
    float* att_D;  // (B, NH, T) dout . out of each attention row
    float* dgate;  // (B, T, F)
    float* dup;    // (B, T, F); also holds d(hidden)
} GradScratch;

void grad_scratch_sizes(size_t sizes[NUM_GRAD_SCRATCH_TENSORS], const LlamaConfig* c, int B, int T) {
    size_t C = c->C, F = c->F, NH = c->NH, BT = (size_t)B * T;
    size_t s[NUM_GRAD_SCRATCH_TENSORS] = {BT * C, BT * C, BT * C, BT * C, BT * C,
                                          (size_t)B * NH * T, BT * F, BT * F};
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
        attention_forward(atty, a.att_lse + (size_t)l * B * NH * T, q, k, v, B, T, NH, HS);
        matmul_forward_residual(mid, atty, p.wo + l * cc, x, BT, C, C);

        rmsnorm_forward(mxn, a.mlp_rstd + (size_t)l * BT, mid, p.mlp_norm + (size_t)l * C, BT, C, c->norm_eps);
        matmul_forward(gate, mxn, p.w_gate + l * fc, BT, C, F);
        matmul_forward(up, mxn, p.w_up + l * fc, BT, C, F);
        swiglu_forward(hidden, gate, up, btf);
        matmul_forward_residual(out, hidden, p.w_down + l * fc, mid, BT, F, C);
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
        // scratch for it, summed by the norm's backward
        matmul_backward(s.dq, g.w_up + l * fc, s.dup, mxn, p.w_up + l * fc, BT, C, F);
        rmsnorm_backward_residual(s.dresid, g.mlp_norm + (size_t)l * C, s.dxn, s.dq, mid, p.mlp_norm + (size_t)l * C,
                                  a.mlp_rstd + (size_t)l * BT, BT, C);

        // attention block: mid = x + wo(attn(rope(wq xn), rope(wk xn), wv xn)), xn = norm(x)
        matmul_backward(s.dxn, g.wo + l * cc, s.dresid, atty, p.wo + l * cc, BT, C, C);
        attention_backward(s.dq, s.dk, s.dv, s.dxn, atty, a.att_lse + (size_t)l * B * NH * T, q, k, v, s.att_D,
                           B, T, NH, HS);
        rope_backward(s.dq, s.dq, cos_t, sin_t, B, T, NH, HS);
        rope_backward(s.dk, s.dk, cos_t, sin_t, B, T, NH, HS);
        // three projections read the same xn: sum their input gradients in dxn,
        // the last one in the norm's backward
        matmul_backward(s.dxn, g.wq + l * cc, s.dq, xn, p.wq + l * cc, BT, C, C);
        matmul_backward(s.dq, g.wk + l * cc, s.dk, xn, p.wk + l * cc, BT, C, C);
        residual_backward(s.dxn, s.dq, btc);
        matmul_backward(s.dq, g.wv + l * cc, s.dv, xn, p.wv + l * cc, BT, C, C);
        rmsnorm_backward_residual(s.dresid, g.attn_norm + (size_t)l * C, s.dxn, s.dq, x, p.attn_norm + (size_t)l * C,
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
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(msg, msg_cap, "shard %s is a directory, not a token shard; hint: give a glob of the shard files "
                 "in it, e.g. '%s/*.bin'", path, path);
        return SHARD_ERR_OPEN;
    }
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
    // declared apart from their values: C++ (the .cu includes this file) forbids a goto past an initialization
    int32_t magic, version, count;
    magic = read_le_i32(header), version = read_le_i32(header + 4), count = read_le_i32(header + 8);
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
    int64_t expected_bytes;
    expected_bytes = SHARD_HEADER_BYTES + (int64_t)count * SHARD_TOKEN_BYTES;
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
    int64_t min_tokens, max_windows;  // assigned apart: C++ forbids a goto past an initialization
    min_tokens = (int64_t)cfg->B * cfg->T + 1;
    max_windows = 0;
    Progress pr;
    progress_begin(&pr, cfg->flag != NULL ? cfg->flag : "shards", L->num_shards);
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
        progress_update(&pr, i + 1);
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
    int V;  // assigned apart: C++ forbids a goto past an initialization
    int64_t expected;
    V = h[2];
    expected = (int64_t)DECODER_HEADER_BYTES + 2 * (int64_t)V + (int64_t)h[7];
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
    int64_t pos, out;
    pos = DECODER_HEADER_BYTES, out = 0;
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
// the optimizers: AdamW for plain tensors, and low-rank AdamW whose subspace is
// refreshed by an SVD (GaLore) or tracked along a Grassmannian geodesic
// (SubTrack++). the equations and their step numbers follow ../shared/SUBTRACK.md.
//
// orientation: a weight W is (m, n) in nn.Linear layout. S spans R directions
// of one side of it, the projected side, of p rows; q is the other side:
//   left:  S (m, R), the projected gradient Gt = S^T G is (R, n); p = m, q = n
//   right: S (n, R), Gt = G S is (m, R);                          p = n, q = m
// --proj_type picks the side (lowrank_right): std (the default) the smaller
// one, left if m <= n; reverse_std the other one; left or right always.
// M, V and N have Gt's shape. the right case is the left case on G^T, done with
// gemm's transpose flags; G is never copied or transposed in memory.
//
// use, per low-rank matrix:
//   lowrank_check_rank(msg, size, name, m, n, R)   at startup; non-NULL is the error to print
//   right = lowrank_right(m, n, proj_type)          the projected side
//   lowrank_state_num_floats(m, n, right, R)       its checkpointed state, in one float array;
//   lowrank_state_init(&state, m, n, right, R, memory)  point a LowRankState into it
//   lowrank_scratch_num_floats(m, n, right, R)     scratch; one buffer of the max over matrices
//   lowrank_adamw_step(&state, W, G, t, &cfg, lr, scratch)
// and adamw_update() for embeddings, lm_head and norms.
//
// lowrank_adamw_step is the spec's "one step for one matrix", one function per step:
//   1. lowrank_init_subspace       t == 0: SVD, canonical sign, M = V = 0
//   2. galore_refresh_subspace     every k steps: an SVD (GaLore) ...
//      subtrack_track_subspace     ... or one geodesic step (SubTrack++)
//   3. moments_rotate_general      with --adaptive_optimizer, called by step 2's
//      moments_rotate_rank1        function: the general and the rank-1 C
//   4. lowrank_adam_in_subspace    M, V and N = M / (sqrt(V) + eps)
//   5. lowrank_recovery_scaling    phi, Lambda and the norm-growth limiter
//   6. lowrank_apply_update        W -= lr c (alpha S N + Lambda), weight decay
// the CUDA trainer has the same functions, name for name and argument for argument.

// full-rank AdamW with the spec's bias correction and decoupled weight decay:
//   M = b1 M + (1-b1) G ; V = b2 V + (1-b2) G^2
//   W -= lr c M / (sqrt(V) + eps),  c = sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))
//   W -= lr wd W
// t counts the steps already taken (0 on the first step). with l2 (--optimizer
// adam, as torch.optim.Adam) the decay is L2 instead: G + wd W (the W before
// the step) goes into the moments, and W is not decayed directly
void adamw_update(float* W, float* M, float* V, const float* G, size_t numel, int t,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int l2) {
    // W, M, V, G: (numel,)
    double c = sqrt(1.0 - pow((double)beta2, t + 1)) / (1.0 - pow((double)beta1, t + 1));
    float step = (float)(lr * c);
    float decay = l2 ? 0.0f : (float)((double)lr * weight_decay);
    float l2_decay = l2 ? weight_decay : 0.0f;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < numel; i++) {
        float g = G[i] + l2_decay * W[i];
        float m = beta1 * M[i] + (1.0f - beta1) * g;
        float v = beta2 * V[i] + (1.0f - beta2) * g * g;
        M[i] = m;
        V[i] = v;
        float w = W[i] - step * (m / (sqrtf(v) + eps));
        W[i] = w - decay * w;
    }
}

// SGD with momentum, as torch.optim.SGD (dampening 0, not Nesterov): the
// weight decay is L2 (D = G + wd W), the buffer B = momentum B + D (B starts
// at 0, so the first step's B is D, as torch's clone), then W -= lr B. with
// momentum 0 the step is W -= lr D and B is left as it is
void sgd_update(float* W, float* B, const float* G, size_t numel, float lr, float momentum, float weight_decay) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < numel; i++) {
        float d = G[i] + weight_decay * W[i];
        if (momentum != 0.0f) {
            d = momentum * B[i] + d;
            B[i] = d;
        }
        W[i] = W[i] - lr * d;
    }
}

// Adafactor (--optimizer adafactor): transformers.optimization.Adafactor with
// the authors' settings (lr external: relative_step, scale_parameter and
// warmup_init off; eps (1e-30, 1e-3), whose 1e-3 only scale_parameter reads;
// clip_threshold 1; decay_rate -0.8), one weight at a time. a matrix (rows,
// cols > 1) keeps factored statistics, R (rows) and C (cols): running means of
// the rows and the columns of G^2 + eps1; a vector (rows 1) keeps V (cols), a
// running mean of G^2 + eps1. with t the steps already taken:
//   b = 1 - (t + 1)^-0.8
//   R = b R + (1 - b) rowmean(G^2 + eps1);  C = b C + (1 - b) colmean(G^2 + eps1)
//   U = (r_i c_j) G,  r_i = 1 / sqrt(R_i / mean(R)),  c_j = 1 / sqrt(C_j)
//   (a vector: V = b V + (1 - b) (G^2 + eps1); U = (1 / sqrt(V)) G)
//   U = U / max(1, rms(U) / clip) * lr
//   M = b1 M + (1 - b1) U; U = M                      (a first moment: beta1 > 0)
//   W = W - lr wd W;  W = W - U
// in the fp32 operations of transformers' code, in its order; the sums in
// double (the means of R's rows and columns, rms(U)), each row's in
// parallel, then the rows' in order, so that a run resumes bit for bit.
// sums: rows doubles of scratch at least
#ifndef HOST_DEVICE
#define HOST_DEVICE
#endif
#define ADAFACTOR_EPS1 1e-30f
#define ADAFACTOR_DECAY_RATE -0.8
#define ADAFACTOR_CLIP 1.0

// 1 when a weight of rows x cols keeps factored statistics (transformers: two or more dimensions)
static inline int adafactor_factored(int rows, int cols) { return rows > 1 && cols > 1; }

// floats of statistics of one rows x cols weight: R and C, or V
static inline size_t adafactor_stats_floats(int rows, int cols) {
    return adafactor_factored(rows, cols) ? (size_t)rows + cols : (size_t)rows * cols;
}

// the decay of step t (0 on the first): b, and 1 - b, each rounded once to fp32 as torch's scalars
static inline void adafactor_decay(int t, float* b, float* one_minus_b) {
    double beta2t = 1.0 - pow((double)(t + 1), ADAFACTOR_DECAY_RATE);
    *b = (float)beta2t;
    *one_minus_b = (float)(1.0 - beta2t);
}

// the scale of U (before lr), from its sum of squares over numel elements: max(1, rms / clip), in fp32 as torch's
HOST_DEVICE static inline float adafactor_clip_scale(double sum_squares, size_t numel) {
    float rms = (float)sqrt(sum_squares) / (float)sqrt((double)numel);
    float s = rms / (float)ADAFACTOR_CLIP;
    return s > 1.0f ? s : 1.0f;
}

// the last part, on element i: U = u / scale * lr through M (or not), then the decay and the step
HOST_DEVICE static inline float adafactor_apply(float w, float* m, float u, float scale, float lr, float beta1,
                                                float weight_decay) {
    u = u / scale * lr;
    if (m != NULL) {
        *m = *m * beta1 + u * (1.0f - beta1);
        u = *m;
    }
    if (weight_decay != 0.0f) { w = w + w * (float)(-(double)weight_decay * lr); }
    return w - u;
}

void adafactor_update(float* W, float* M, float* stats, const float* G, int rows, int cols, int t, float lr,
                      float beta1, float weight_decay, double* sums) {
    // W, M, G: (rows, cols); M NULL without a first moment; stats: R (rows) | C (cols), or V (rows cols)
    size_t numel = (size_t)rows * cols;
    float b, a;
    adafactor_decay(t, &b, &a);
    double total = 0.0;
    if (adafactor_factored(rows, cols)) {
        float* R = stats;
        float* C = stats + rows;
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < rows; i++) {
            double s = 0.0;
            for (int j = 0; j < cols; j++) {
                float g = G[(size_t)i * cols + j];
                s += (double)(g * g + ADAFACTOR_EPS1);
            }
            R[i] = R[i] * b + (float)(s / cols) * a;
        }
        #pragma omp parallel for schedule(static)
        for (int j = 0; j < cols; j++) {
            double s = 0.0;
            for (int i = 0; i < rows; i++) {
                float g = G[(size_t)i * cols + j];
                s += (double)(g * g + ADAFACTOR_EPS1);
            }
            C[j] = C[j] * b + (float)(s / rows) * a;
        }
        double rs = 0.0;
        for (int i = 0; i < rows; i++) { rs += R[i]; }
        float mean_r = (float)(rs / rows);
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < rows; i++) {
            float ri = 1.0f / sqrtf(R[i] / mean_r);
            double s = 0.0;
            for (int j = 0; j < cols; j++) {
                float u = ri * (1.0f / sqrtf(C[j])) * G[(size_t)i * cols + j];
                s += (double)u * u;
            }
            sums[i] = s;
        }
        for (int i = 0; i < rows; i++) { total += sums[i]; }
        float scale = adafactor_clip_scale(total, numel);
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < rows; i++) {
            float ri = 1.0f / sqrtf(R[i] / mean_r);
            for (int j = 0; j < cols; j++) {
                size_t k = (size_t)i * cols + j;
                float u = ri * (1.0f / sqrtf(C[j])) * G[k];
                W[k] = adafactor_apply(W[k], M != NULL ? M + k : NULL, u, scale, lr, beta1, weight_decay);
            }
        }
        return;
    }
    float* V = stats;
    for (size_t k = 0; k < numel; k++) {
        float g = G[k];
        V[k] = V[k] * b + (g * g + ADAFACTOR_EPS1) * a;
        float u = (1.0f / sqrtf(V[k])) * g;
        total += (double)u * u;
    }
    float scale = adafactor_clip_scale(total, numel);
    for (size_t k = 0; k < numel; k++) {
        float u = (1.0f / sqrtf(V[k])) * G[k];
        W[k] = adafactor_apply(W[k], M != NULL ? M + k : NULL, u, scale, lr, beta1, weight_decay);
    }
}

typedef enum { SUBSPACE_GALORE = 0, SUBSPACE_SUBTRACK = 1 } SubspaceMethod;

// --proj_type: which side of each matrix is projected (the authors' names)
typedef enum { PROJ_STD = 0, PROJ_REVERSE_STD = 1, PROJ_LEFT = 2, PROJ_RIGHT = 3 } ProjType;

// 1 when the (m, n) matrix is projected on its right side (S (n, R) spans
// directions of W's rows), 0 on its left (S (m, R), of its columns). std
// takes the smaller side, and the left one of a square matrix; reverse_std takes the other side of
// every matrix, so the right one of a square matrix. (the authors' std
// projects a square matrix on its right and their reverse_std on its left:
// both the other way round from ours, for square matrices only)
static inline int lowrank_right(int m, int n, ProjType proj) {
    switch (proj) {
        case PROJ_REVERSE_STD: return m <= n;
        case PROJ_LEFT: return 0;
        case PROJ_RIGHT: return 1;
        default: return m > n;
    }
}

// the ProjType of a --proj_type name, or -1 for a name that is not one
static int proj_type_parse(const char* name) {
    static const char* const names[] = {"std", "reverse_std", "left", "right"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) { return i; }
    }
    return -1;
}

// the low-rank optimizer's settings; the flag names are the authors' torchrun_main.py
typedef struct {
    SubspaceMethod method;      // --subspace_update_method galore|subtrack
    int rank;                   // --rank, R
    float low_rank_scale;       // --low_rank_scale, alpha
    int update_interval;        // --subspace_update_interval, k
    float st_init_step_size;    // --st_init_step_size, eta (geodesic step size)
    int adaptive_optimizer;     // --adaptive_optimizer: rotate M, V when S changes
    int recovery_scaling;       // --recovery_scaling: add back the scaled discarded gradient
    int norm_growth_limiter;    // 1 unless --norm_growth_limiter_off
    float norm_growth_limit;    // --norm_growth_limit, zeta
    float beta1, beta2, eps;    // --beta1 --beta2 --eps
    float weight_decay;         // --weight_decay (decoupled)
    // the subspace SVD (the first step, GaLore's refreshes): 0 exact, 1 randomized (--svd)
    int svd_randomized;
    int svd_power_iters;        // --svd_power_iters q: subspace iterations of the randomized SVD
    int svd_oversample;         // --svd_oversample o: the sketch has R + o columns (at most p)
    uint64_t svd_seed;          // --seed: the sketch's Gaussian Omega is drawn from (seed, step, matrix)
    int svd_step;               // the step being taken (lowrank_adamw_step sets it on its copy)
    int st_step_size_iterative; // --st_step_size_scheduler iterative_decrease: the tracking step at step t uses eta / t
    ProjType proj_type;         // --proj_type: the side each matrix projects (lowrank_right)
    int golore;                 // --rand_proj: GoLore's random subspaces ...
    int golore_from_step;       // ... at the SVD steps from this step on: ceil(rand_ratio x num_training_steps)
    int adafactor;              // --optimizer low_rank_adafactor: Adafactor in the subspace instead of Adam
} LowRankConfig;

// the geodesic step size of a tracking step at step cfg->svd_step: eta, or
// with iterative_decrease eta / t (the authors' projector divides
// st_init_step_size by the step count at each tracking step: k, 2k, ...)
static float lowrank_track_eta(const LowRankConfig* cfg) {
    if (cfg->st_step_size_iterative && cfg->svd_step > 0) { return cfg->st_init_step_size / (float)cfg->svd_step; }
    return cfg->st_init_step_size;
}

// per-matrix state. everything a checkpoint must keep lives in ONE float array,
// in this order (P the projected side's length, Q the other's: P = min(m, n)
// and Q = max(m, n) with --proj_type std):
//   S       (P, R)                   orthonormal basis of the subspace
//   M       (R, Q) left, (Q, R) right    first moment, in the subspace
//   V       same shape as M          second moment, in the subspace
//   prev    1 float                  norm of the last Lambda used (norm-growth limiter)
//   prev_set 1 float                 1.0f once prev holds a value, else 0.0f
// lowrank_state_num_floats() gives its length, so checkpoints save it verbatim.
#define LOWRANK_STATE_SCALARS 2

typedef struct {
    int m, n;                   // the weight's shape, (out, in)
    int r;                      // R
    int right;                  // 0: left, 1: right (lowrank_right)
    int p, q;                   // p rows of S (m left, n right), q the other side
    float* memory;              // the checkpointed array described above
    float* S;                   // (p, R)
    float* M;                   // (R, q) left or (q, R) right
    float* V;                   // same as M; with Adafactor its statistics (lowrank_state_init_adafactor)
    float* limiter;             // [0] prev, [1] prev_set
    size_t num_floats;          // of memory
    // run statistics, not checkpointed
    double subspace_seconds;    // wall time in subspace updates (SVD, or tracking + moment rotation)
    int subspace_updates;       // how many of them
    int power_iterations;       // iterations the last tracking step's power iteration took
    uint64_t svd_stream;        // which matrix this is, for the randomized SVD's Omega (optimizer_build sets it)
} LowRankState;

size_t lowrank_state_num_floats(int m, int n, int right, int r) {
    size_t p = (size_t)(right ? n : m), q = (size_t)(right ? m : n);
    return p * r + 2 * q * r + LOWRANK_STATE_SCALARS;
}

// with 8-bit states (--optimizer low_rank_adamw8bit) M and V live quantized
// elsewhere: the float memory holds S (p, R) | prev | prev_set, and M and V
// point at dequantized copies only during a step
size_t lowrank_state_num_floats_q8(int m, int n, int right, int r) {
    size_t p = (size_t)(right ? n : m);
    return p * r + LOWRANK_STATE_SCALARS;
}

// with Adafactor in the subspace (--optimizer low_rank_adafactor) its states
// take the place of M and V: S (p, R) | M (the moments' shape, only with a
// first moment: --beta1 above 0) | the statistics of an Adafactor weight of the
// moments' shape (adafactor_stats_floats: R + q floats) | prev | prev_set
static inline void lowrank_moment_shape(int m, int n, int right, int r, int* rows, int* cols) {
    *rows = right ? m : r;      // left (R, q), right (q, R): q the side that is not projected
    *cols = right ? r : n;
}

size_t lowrank_state_num_floats_adafactor(int m, int n, int right, int r, int first_moment) {
    int rows, cols;
    lowrank_moment_shape(m, n, right, r, &rows, &cols);
    size_t p = (size_t)(right ? n : m);
    return p * r + (first_moment ? (size_t)rows * cols : 0) + adafactor_stats_floats(rows, cols) +
           LOWRANK_STATE_SCALARS;
}

// the states' layouts: Adam's fp32 moments, 8-bit moments elsewhere, Adafactor without and with a first moment
typedef enum { STATES_ADAM = 0, STATES_Q8 = 1, STATES_ADAFACTOR = 2, STATES_ADAFACTOR_M = 3 } LowRankStates;

static size_t lowrank_state_floats_of(int m, int n, int right, int r, LowRankStates kind) {
    switch (kind) {
        case STATES_Q8: return lowrank_state_num_floats_q8(m, n, right, r);
        case STATES_ADAFACTOR: return lowrank_state_num_floats_adafactor(m, n, right, r, 0);
        case STATES_ADAFACTOR_M: return lowrank_state_num_floats_adafactor(m, n, right, r, 1);
        default: return lowrank_state_num_floats(m, n, right, r);
    }
}

// where M, V and the limiter start in a state's memory, in floats after S's p R
// (LOWRANK_NONE: no such array there): S | M | V | prev | prev_set
// (lowrank_state_num_floats), with q8 S | prev | prev_set, with Adafactor as above
#define LOWRANK_NONE ((size_t)-1)
typedef struct { size_t M, V, limiter; } LowRankOffsets;

static LowRankOffsets lowrank_state_offsets(int m, int n, int right, int r, LowRankStates kind) {
    size_t moment = (size_t)(right ? m : n) * r;
    LowRankOffsets o = {LOWRANK_NONE, LOWRANK_NONE, 0};
    if (kind == STATES_ADAM) {
        o.M = 0;
        o.V = moment;
        o.limiter = 2 * moment;
    } else if (kind != STATES_Q8) {
        int rows, cols;
        lowrank_moment_shape(m, n, right, r, &rows, &cols);
        o.M = kind == STATES_ADAFACTOR_M ? 0 : LOWRANK_NONE;
        o.V = kind == STATES_ADAFACTOR_M ? moment : 0;
        o.limiter = o.V + adafactor_stats_floats(rows, cols);
    }
    return o;
}

// points the state into memory and zeroes it (lowrank_state_offsets)
static void lowrank_state_layout(LowRankState* s, int m, int n, int right, int r, float* memory, LowRankStates kind) {
    s->m = m;
    s->n = n;
    s->r = r;
    s->right = right;
    s->p = right ? n : m;
    s->q = right ? m : n;
    s->memory = memory;
    s->S = memory;
    float* after_s = s->S + (size_t)s->p * r;
    LowRankOffsets at = lowrank_state_offsets(m, n, right, r, kind);
    s->M = at.M != LOWRANK_NONE ? after_s + at.M : NULL;
    s->V = at.V != LOWRANK_NONE ? after_s + at.V : NULL;
    s->limiter = after_s + at.limiter;
    s->num_floats = lowrank_state_floats_of(m, n, right, r, kind);
    memset(memory, 0, s->num_floats * sizeof(float));
    s->subspace_seconds = 0.0;
    s->subspace_updates = 0;
    s->power_iterations = 0;
    s->svd_stream = 0;
}

void lowrank_state_init(LowRankState* s, int m, int n, int right, int r, float* memory) {
    lowrank_state_layout(s, m, n, right, r, memory, STATES_ADAM);
}

void lowrank_state_init_q8(LowRankState* s, int m, int n, int right, int r, float* memory) {
    lowrank_state_layout(s, m, n, right, r, memory, STATES_Q8);
}

void lowrank_state_init_adafactor(LowRankState* s, int m, int n, int right, int r, int first_moment, float* memory) {
    lowrank_state_layout(s, m, n, right, r, memory, first_moment ? STATES_ADAFACTOR_M : STATES_ADAFACTOR);
}

// NULL if the low-rank optimizer can take the (m, n) matrix `name` at rank r;
// otherwise an error message (written into msg) that names the matrix and its shape
const char* lowrank_check_rank(char* msg, size_t msg_size, const char* name, int m, int n, int r) {
    int p = m <= n ? m : n;
    if (r < 1) {
        snprintf(msg, msg_size, "--rank %d is invalid for matrix %s (%d x %d); hint: use a rank >= 1",
                 r, name, m, n);
        return msg;
    }
    if (r > p) {
        snprintf(msg, msg_size, "--rank %d is larger than min(m, n) = %d for matrix %s of shape %d x %d; "
                 "hint: use --rank <= %d or a larger model", r, p, name, m, n, p);
        return msg;
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// scratch: every step borrows its work arrays from one caller-owned float
// buffer of lowrank_scratch_num_floats(m, n, r) floats (use the maximum over
// all matrices; it only needs malloc's alignment). arrays are carved out in
// 64-byte units so double arrays stay aligned. the size functions below run
// the same carving with a NULL base, so sizes and layout cannot drift apart.

#define SCRATCH_ALIGN_FLOATS 16

typedef struct {
    float* base;    // NULL: only count
    size_t used;    // floats handed out so far
} Scratch;

static float* scratch_floats(Scratch* sc, size_t count) {
    float* p = sc->base != NULL ? sc->base + sc->used : NULL;
    sc->used += (count + SCRATCH_ALIGN_FLOATS - 1) / SCRATCH_ALIGN_FLOATS * SCRATCH_ALIGN_FLOATS;
    return p;
}

static double* scratch_doubles(Scratch* sc, size_t count) {
    return (double*)scratch_floats(sc, 2 * count);
}

// ----------------------------------------------------------------------------
// linear algebra for the SVD: top-r eigenvectors of the Gram matrix K = X X^T,
// X = op(G) (p, q), in double. the left singular vectors of X are the
// eigenvectors of K, and forming K in double keeps them accurate to fp32 even
// though K squares the condition number. then:
//   1. K = Q T Q^T, T tridiagonal, by Householder reflections   O(p^3)
//   2. the top r eigenvalues of T by bisection (Sturm counts)    O(p r)
//   3. their eigenvectors of T by inverse iteration               O(p r)
//   4. back to K's eigenvectors with the reflections              O(p^2 r)
// this is the LAPACK recipe (dsytrd, dstebz, dstein, dormtr), written plainly.

#define GRAM_NR 16                  // rows of X per packed panel (two zmm registers of doubles)
#define GRAM_MR 8                   // rows per micro tile: the tile is GRAM_MR x GRAM_NR
#define GRAM_KC 256                 // columns of X per packed chunk
// inverse iteration's vector for an eigenvalue with gap g is off by ~ p eps ||T|| / g, so
// vectors whose eigenvalues are closer than this * ||T|| are orthogonalised against each
// other; 1e-6 keeps the rest orthogonal to ~1e-7 (fp32 level) at p = 2048 without the
// O(p k^2) cost of LAPACK's 1e-3 when a decaying spectrum packs many small eigenvalues
#define EIG_CLUSTER_TOL 1e-6
#define EIG_INVERSE_ITERS 3         // inverse iteration sweeps; one converges for an accurate eigenvalue
#define EIG_BISECT_MAX_ITERS 200

typedef struct {
    double* K;      // (p, p) Gram matrix; its upper triangle later holds the reflectors
    double* panel;  // (npanels, GRAM_KC, GRAM_NR) packed chunk of X
    double* d;      // (p,) diagonal of T
    double* e;      // (p,) off-diagonal of T, e[i] couples i and i+1
    double* tau;    // (p,) reflector scales
    double* work;   // (p,) reflector work vector
    double* eig;    // (R,) top eigenvalues, descending
    double* Z;      // (R, p) eigenvectors, one per row
    double* lu;     // (5, p) tridiagonal LU factors of T - lambda I, and the right-hand side
    int* pivot;     // (p,) row swaps of that LU
} SvdScratch;

static int gram_num_panels(int p) {
    return (p + GRAM_NR - 1) / GRAM_NR;
}

static SvdScratch svd_scratch_layout(Scratch* sc, int p, int r) {
    SvdScratch w;
    w.K = scratch_doubles(sc, (size_t)p * p);
    w.panel = scratch_doubles(sc, (size_t)gram_num_panels(p) * GRAM_KC * GRAM_NR);
    w.d = scratch_doubles(sc, p);
    w.e = scratch_doubles(sc, p);
    w.tau = scratch_doubles(sc, p);
    w.work = scratch_doubles(sc, p);
    w.eig = scratch_doubles(sc, r);
    w.Z = scratch_doubles(sc, (size_t)r * p);
    w.lu = scratch_doubles(sc, 5 * (size_t)p);
    w.pivot = (int*)scratch_floats(sc, p);
    return w;
}

// pack X[:, k0:k0+kc] into panels of GRAM_NR rows: panel[pi][kk][ii] = X[pi*NR+ii, k0+kk],
// zero-padded. X = G (left) or G^T (right); G is (m, n) with row stride n
static void gram_pack(double* panel, const float* G, int n, int right, int p, int k0, int kc) {
    int npanels = gram_num_panels(p);
    #pragma omp parallel for schedule(static)
    for (int pi = 0; pi < npanels; pi++) {
        double* dst = panel + (size_t)pi * GRAM_KC * GRAM_NR;
        for (int kk = 0; kk < kc; kk++) {
            for (int ii = 0; ii < GRAM_NR; ii++) {
                int i = pi * GRAM_NR + ii;
                double v = 0.0;
                if (i < p) {
                    v = right ? G[(size_t)(k0 + kk) * n + i] : G[(size_t)i * n + k0 + kk];
                }
                dst[(size_t)kk * GRAM_NR + ii] = v;
            }
        }
    }
}

// out (MR, NR) = a b^T over kc: a is GRAM_MR rows of a packed panel (stride
// GRAM_NR per k), b a whole panel. acc is local and the j loop is marked simd,
// so acc lives in 16 vector registers; without the pragma gcc 12 vectorizes
// along k with shuffles and runs 9x slower. each element is a plain in-order
// sum (no reassociation, so no -ffast-math needed)
static void gram_micro_kernel(double* restrict out, int kc, const double* restrict a,
                              const double* restrict b) {
    double acc[GRAM_MR][GRAM_NR];
    for (int i = 0; i < GRAM_MR; i++) {
        for (int j = 0; j < GRAM_NR; j++) { acc[i][j] = 0.0; }
    }
    for (int kk = 0; kk < kc; kk++) {
        const double* ak = a + (size_t)kk * GRAM_NR;
        const double* bk = b + (size_t)kk * GRAM_NR;
        for (int i = 0; i < GRAM_MR; i++) {
            #pragma omp simd
            for (int j = 0; j < GRAM_NR; j++) { acc[i][j] += ak[i] * bk[j]; }
        }
    }
    for (int i = 0; i < GRAM_MR; i++) {
        for (int j = 0; j < GRAM_NR; j++) { out[i * GRAM_NR + j] = acc[i][j]; }
    }
}

// K (p, p) = X X^T in double, X = op(G) (p, q)
static void gram_double(double* K, double* panel, const float* G, int n, int right, int p, int q) {
    int ntiles = (p + GRAM_MR - 1) / GRAM_MR;
    memset(K, 0, (size_t)p * p * sizeof(double));
    for (int k0 = 0; k0 < q; k0 += GRAM_KC) {
        int kc = q - k0 < GRAM_KC ? q - k0 : GRAM_KC;
        gram_pack(panel, G, n, right, p, k0, kc);
        // lower triangle by tiles of GRAM_MR rows x GRAM_NR columns; rows are owned by one thread
        #pragma omp parallel for schedule(dynamic, 1)
        for (int ti = 0; ti < ntiles; ti++) {
            int i0 = ti * GRAM_MR;
            const double* a = panel + (size_t)(i0 / GRAM_NR) * GRAM_KC * GRAM_NR + i0 % GRAM_NR;
            double out[GRAM_MR * GRAM_NR];
            for (int j0 = 0; j0 <= i0 + GRAM_MR - 1 && j0 < p; j0 += GRAM_NR) {
                gram_micro_kernel(out, kc, a, panel + (size_t)(j0 / GRAM_NR) * GRAM_KC * GRAM_NR);
                for (int i = 0; i < GRAM_MR && i0 + i < p; i++) {
                    for (int j = 0; j < GRAM_NR && j0 + j <= i0 + i; j++) {
                        K[(size_t)(i0 + i) * p + j0 + j] += out[i * GRAM_NR + j];
                    }
                }
            }
        }
    }
    for (int i = 0; i < p; i++) {
        for (int j = i + 1; j < p; j++) { K[(size_t)i * p + j] = K[(size_t)j * p + i]; }
    }
}

// reduce symmetric K (p, p) to tridiagonal T = Q^T K Q, Q = H_0 H_1 ... H_{p-3}.
// step j reflects row j right of the diagonal (= column j below it) onto its
// first entry: H_j = I - tau_j v_j v_j^T acts on indices j+1..p-1, and v_j
// (with v_j[0] = 1) is left in K[j, j+1:]. the trailing block is updated as a
// full square (both triangles) so that rows stay contiguous for the next step.
static void tridiagonalize(double* K, double* d, double* e, double* tau, double* w, int p) {
    for (int j = 0; j + 2 < p; j++) {
        int len = p - 1 - j;
        double* x = K + (size_t)j * p + j + 1;     // (len,)
        double alpha = x[0];
        double xnorm2 = 0.0;
        for (int i = 1; i < len; i++) { xnorm2 += x[i] * x[i]; }
        d[j] = K[(size_t)j * p + j];
        if (xnorm2 == 0.0) {
            // already tridiagonal in this row: H_j = I
            e[j] = alpha;
            tau[j] = 0.0;
            x[0] = 1.0;
            continue;
        }
        double beta = -copysign(sqrt(alpha * alpha + xnorm2), alpha);
        double t = (beta - alpha) / beta;
        double scale = 1.0 / (alpha - beta);
        x[0] = 1.0;
        for (int i = 1; i < len; i++) { x[i] *= scale; }
        e[j] = beta;
        tau[j] = t;
        // A <- H A H for the trailing A (len, len): w = t A v, w -= (t/2)(w.v) v, A -= v w^T + w v^T
        double* A = K + (size_t)(j + 1) * p + j + 1;
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < len; i++) {
            const double* Ai = A + (size_t)i * p;
            double s = 0.0;
            #pragma omp simd reduction(+:s)
            for (int k = 0; k < len; k++) { s += Ai[k] * x[k]; }
            w[i] = t * s;
        }
        double wv = 0.0;
        for (int i = 0; i < len; i++) { wv += w[i] * x[i]; }
        double shift = -0.5 * t * wv;
        for (int i = 0; i < len; i++) { w[i] += shift * x[i]; }
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < len; i++) {
            double* Ai = A + (size_t)i * p;
            double xi = x[i], wi = w[i];
            for (int k = 0; k < len; k++) { Ai[k] -= xi * w[k] + wi * x[k]; }
        }
    }
    if (p >= 2) {
        d[p - 2] = K[(size_t)(p - 2) * p + p - 2];
        e[p - 2] = K[(size_t)(p - 2) * p + p - 1];
        tau[p - 2] = 0.0;
    }
    d[p - 1] = K[(size_t)(p - 1) * p + p - 1];
    e[p - 1] = 0.0;
}

// number of eigenvalues of T that are < x (Sturm count from the LDL^T pivots)
static int tridiagonal_count_below(const double* d, const double* e, int p, double x, double pivmin) {
    int count = 0;
    double piv = d[0] - x;
    if (fabs(piv) < pivmin) { piv = -pivmin; }
    if (piv < 0.0) { count++; }
    for (int i = 1; i < p; i++) {
        piv = d[i] - x - e[i - 1] * e[i - 1] / piv;
        if (fabs(piv) < pivmin) { piv = -pivmin; }
        if (piv < 0.0) { count++; }
    }
    return count;
}

// LU with partial pivoting of T - lambda I (p, p). on return, lu rows hold
// U's diagonal, first and second superdiagonal and L's multipliers; pivot[i]
// says whether rows i and i+1 were swapped. tiny pivots become +-tiny: the
// matrix is singular to working precision by design, that is what inverse
// iteration exploits.
static void tridiagonal_lu(double* lu, int* pivot, const double* d, const double* e, int p,
                           double lambda, double tiny) {
    double* u0 = lu;            // (p,) diagonal of U
    double* u1 = lu + p;        // (p,) first superdiagonal
    double* u2 = lu + 2 * p;    // (p,) second superdiagonal (from swaps)
    double* mult = lu + 3 * p;  // (p,) multipliers of L
    double diag = d[0] - lambda;
    double sup = p > 1 ? e[0] : 0.0;
    for (int i = 0; i + 1 < p; i++) {
        double sub = e[i];                          // row i+1, column i
        double next_diag = d[i + 1] - lambda;       // row i+1, column i+1
        double next_sup = i + 2 < p ? e[i + 1] : 0.0;
        if (fabs(diag) >= fabs(sub)) {
            if (fabs(diag) < tiny) { diag = diag < 0.0 ? -tiny : tiny; }
            double l = sub / diag;
            pivot[i] = 0;
            u0[i] = diag; u1[i] = sup; u2[i] = 0.0; mult[i] = l;
            diag = next_diag - l * sup;
            sup = next_sup;
        } else {
            double l = diag / sub;
            pivot[i] = 1;
            u0[i] = sub; u1[i] = next_diag; u2[i] = next_sup; mult[i] = l;
            diag = sup - l * next_diag;
            sup = -l * next_sup;
        }
    }
    if (fabs(diag) < tiny) { diag = diag < 0.0 ? -tiny : tiny; }
    u0[p - 1] = diag;
    u1[p - 1] = 0.0;
    u2[p - 1] = 0.0;
}

// solve (T - lambda I) x = b in place with the factors above
static void tridiagonal_solve(double* b, const double* lu, const int* pivot, int p) {
    const double* u0 = lu;
    const double* u1 = lu + p;
    const double* u2 = lu + 2 * p;
    const double* mult = lu + 3 * p;
    for (int i = 0; i + 1 < p; i++) {
        if (pivot[i]) { double tmp = b[i]; b[i] = b[i + 1]; b[i + 1] = tmp; }
        b[i + 1] -= mult[i] * b[i];
    }
    for (int i = p - 1; i >= 0; i--) {
        double s = b[i];
        if (i + 1 < p) { s -= u1[i] * b[i + 1]; }
        if (i + 2 < p) { s -= u2[i] * b[i + 2]; }
        b[i] = s / u0[i];
    }
}

// top r eigenpairs of the tridiagonal T: eig (R,) descending, Z (R, p) rows
static void tridiagonal_top_eigenpairs(double* eig, double* Z, double* lu, int* pivot,
                                       const double* d, const double* e, int p, int r) {
    // gershgorin interval and the scale of T
    double lo = d[0], hi = d[0], emax2 = 0.0;
    for (int i = 0; i < p; i++) {
        double radius = (i > 0 ? fabs(e[i - 1]) : 0.0) + (i + 1 < p ? fabs(e[i]) : 0.0);
        if (d[i] - radius < lo) { lo = d[i] - radius; }
        if (d[i] + radius > hi) { hi = d[i] + radius; }
        if (i + 1 < p && e[i] * e[i] > emax2) { emax2 = e[i] * e[i]; }
    }
    double tnorm = fmax(fabs(lo), fabs(hi));
    if (tnorm == 0.0) {
        // T == 0 (G == 0): every vector is an eigenvector; take the first r unit vectors
        memset(Z, 0, (size_t)r * p * sizeof(double));
        for (int k = 0; k < r; k++) { eig[k] = 0.0; Z[(size_t)k * p + k] = 1.0; }
        return;
    }
    double pivmin = DBL_MIN * fmax(1.0, emax2);
    // bisection for the k-th largest eigenvalue: the one with exactly p-1-k below it
    #pragma omp parallel for schedule(dynamic, 4)
    for (int k = 0; k < r; k++) {
        // eigenvalues of T (and of K, which is only known to ~eps ||K||) are only
        // defined to ~eps ||T||: bisect down to that
        double a = lo - DBL_EPSILON * tnorm - pivmin, b = hi + DBL_EPSILON * tnorm + pivmin;
        int target = p - 1 - k;
        for (int it = 0; it < EIG_BISECT_MAX_ITERS; it++) {
            double mid = 0.5 * (a + b);
            if (b - a <= DBL_EPSILON * (fmax(fabs(a), fabs(b)) + tnorm) || mid <= a || mid >= b) { break; }
            if (tridiagonal_count_below(d, e, p, mid, pivmin) <= target) { a = mid; } else { b = mid; }
        }
        eig[k] = 0.5 * (a + b);
    }
    // inverse iteration; vectors of close eigenvalues are orthogonalised against each other
    double tiny = DBL_EPSILON * fmax(tnorm, DBL_MIN);
    double separation = 10.0 * DBL_EPSILON * tnorm;
    int cluster_start = 0;
    double prev_shift = 0.0;
    for (int k = 0; k < r; k++) {
        double shift = eig[k];
        if (k > 0 && eig[k - 1] - eig[k] > EIG_CLUSTER_TOL * tnorm) { cluster_start = k; }
        // equal eigenvalues would give equal vectors: nudge the shift apart
        if (k > cluster_start && shift > prev_shift - separation) { shift = prev_shift - separation; }
        prev_shift = shift;
        tridiagonal_lu(lu, pivot, d, e, p, shift, tiny);
        double* z = Z + (size_t)k * p;
        uint64_t h = 0x9E3779B97F4A7C15ull * (uint64_t)(k + 1);
        for (int i = 0; i < p; i++) {
            // deterministic start vector in [-1, 1)
            h ^= h >> 33; h *= 0xFF51AFD7ED558CCDull; h ^= h >> 33;
            z[i] = (double)(h >> 11) / 4503599627370496.0 - 1.0;
        }
        for (int it = 0; it < EIG_INVERSE_ITERS; it++) {
            // scale b to ~tiny so that one near-zero pivot brings the solution to ~1, not to overflow
            double bmax = 0.0;
            for (int i = 0; i < p; i++) { bmax = fmax(bmax, fabs(z[i])); }
            for (int i = 0; i < p; i++) { z[i] *= tiny / bmax; }
            tridiagonal_solve(z, lu, pivot, p);
            for (int c = cluster_start; c < k; c++) {
                const double* zc = Z + (size_t)c * p;
                double dot = 0.0;
                for (int i = 0; i < p; i++) { dot += zc[i] * z[i]; }
                for (int i = 0; i < p; i++) { z[i] -= dot * zc[i]; }
            }
            double norm = 0.0;
            for (int i = 0; i < p; i++) { norm += z[i] * z[i]; }
            norm = sqrt(norm);
            if (!(norm > 0.0) || !isfinite(norm)) {
                // cannot happen for a finite T; restart from a unit vector rather than spread NaN
                memset(z, 0, (size_t)p * sizeof(double));
                z[k] = 1.0;
                norm = 1.0;
            }
            for (int i = 0; i < p; i++) { z[i] /= norm; }
        }
    }
}

// Z (R, p): eigenvectors of T -> eigenvectors of K, z <- H_0 H_1 ... H_{p-3} z.
// vectors go in groups so each reflector is read once per group
#define BACKTRANSFORM_GROUP 8
static void tridiagonal_backtransform(double* Z, const double* K, const double* tau, int p, int r) {
    int ngroups = (r + BACKTRANSFORM_GROUP - 1) / BACKTRANSFORM_GROUP;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int g = 0; g < ngroups; g++) {
        int k0 = g * BACKTRANSFORM_GROUP;
        int k1 = k0 + BACKTRANSFORM_GROUP < r ? k0 + BACKTRANSFORM_GROUP : r;
        for (int j = p - 3; j >= 0; j--) {
            if (tau[j] == 0.0) { continue; }
            const double* v = K + (size_t)j * p + j + 1;
            int len = p - 1 - j;
            for (int k = k0; k < k1; k++) {
                double* z = Z + (size_t)k * p + j + 1;
                double s = 0.0;
                #pragma omp simd reduction(+:s)
                for (int i = 0; i < len; i++) { s += v[i] * z[i]; }
                s *= tau[j];
                for (int i = 0; i < len; i++) { z[i] -= s * v[i]; }
            }
        }
    }
}

// flip each column of S (p, R) so its largest-magnitude entry is positive (first one on ties):
// singular vectors are only defined up to sign, and this makes C, CUDA and torch agree
void canonical_sign(float* S, int p, int r) {
    for (int j = 0; j < r; j++) {
        int imax = 0;
        float amax = fabsf(S[j]);
        for (int i = 1; i < p; i++) {
            float a = fabsf(S[(size_t)i * r + j]);
            if (a > amax) { amax = a; imax = i; }
        }
        if (S[(size_t)imax * r + j] < 0.0f) {
            for (int i = 0; i < p; i++) { S[(size_t)i * r + j] = -S[(size_t)i * r + j]; }
        }
    }
}

// S (p, R) = the top-r left singular vectors of X = op(G) (p, q), descending,
// canonical sign. G is (m, n); X = G if !right, else G^T.
void svd_top_left_singular_vectors(float* S, const float* G, int m, int n, int right, int r, float* scratch) {
    int p = right ? n : m, q = right ? m : n;
    Scratch sc = {scratch, 0};
    SvdScratch w = svd_scratch_layout(&sc, p, r);
    gram_double(w.K, w.panel, G, n, right, p, q);
    tridiagonalize(w.K, w.d, w.e, w.tau, w.work, p);
    tridiagonal_top_eigenpairs(w.eig, w.Z, w.lu, w.pivot, w.d, w.e, p, r);
    tridiagonal_backtransform(w.Z, w.K, w.tau, p, r);
    for (int i = 0; i < p; i++) {
        for (int j = 0; j < r; j++) { S[(size_t)i * r + j] = (float)w.Z[(size_t)j * p + i]; }
    }
    canonical_sign(S, p, r);
}

size_t svd_scratch_num_floats(int m, int n, int right, int r) {
    Scratch sc = {NULL, 0};
    svd_scratch_layout(&sc, right ? n : m, r);
    return sc.used;
}

// ---- the randomized top-R SVD (--svd randomized)
//
// the exact path above pays for the whole eigendecomposition of the (p, p)
// Gram matrix, whose tridiagonal reduction is p column steps one after the
// other. this one finds only the top-R subspace, by randomized subspace
// iteration (Halko, Martinsson and Tropp, "Finding structure with
// randomness", SIAM Review 2011: algorithm 4.4, the randomized subspace
// iteration, and 5.1, the SVD by Rayleigh-Ritz), run on the Gram matrix, so
// that everything but a few small (l, l) eigenproblems is a matrix product,
// and the eigenproblems of many matrices can be solved in one batched call on
// a GPU. on X = op(G) (p, q), p <= q, l = min(R + o, p) columns:
//
//   1. K = X X^T (p, p) in double (the exact path's gram_double). its
//      eigenvectors are X's left singular vectors, its eigenvalues s_i^2.
//   2. A = K + mu I, mu > 0 from trace(K) (below). A has K's eigenvectors, and
//      every A Q with orthonormal Q has full rank, even when G has rank < l.
//   3. Omega (p, l) Gaussian; Q = orth(Omega); then (power_iters + 1) times
//      Q = orth(A Q). span(Q) = span(A^(it+1) Omega): the range finder, whose
//      powers of A push span(Q) towards the top eigenvectors.
//   4. Rayleigh-Ritz: B = Q^T A Q (l, l), its top R eigenvectors U, S = Q U
//      (p, R), narrowed to fp32, canonical sign. B's eigenvectors are those of
//      Q^T K Q, as Q^T Q = I: the shift only adds mu to every eigenvalue.
//
// orth(Y), Y (p, l): W = Y^T Y (l, l) = V Lambda V^T, Q = Y V Lambda^-1/2, so
// that Q^T Q = I; done twice. this is CholeskyQR2 (Fukaya, Nakatsukasa,
// Yanagisawa, Yamamoto 2014) with an eigendecomposition in place of the
// Cholesky factor: forming W squares the condition number, so one pass leaves
// ||Q^T Q - I|| ~ u kappa(Y)^2 (u = 2^-53; the proven bound has a factor
// polynomial in p and l, which in practice does not show); the second pass
// starts from kappa(Q) ~ 1 + u kappa(Y)^2 and leaves ~u, as long as the first
// one's error stays below 1. eigenvalues below ORTH_EIG_FLOOR Lambda_max
// (roundoff) are raised to it, so a rounding error cannot divide by zero.
//
// the shift. for orthonormal Q, the singular values of A Q lie between A's
// smallest and largest eigenvalues, so
//     kappa(A Q) <= (s_1^2 + mu) / mu <= (trace(K) + mu) / mu = 1 + 2^20
// with mu = RSVD_SHIFT trace(K), RSVD_SHIFT = 2^-20: u kappa^2 <= 1.2e-4, well
// inside CholeskyQR2's range. the first orth sees Omega itself, a Gaussian
// (p, l) matrix, whose kappa is ~ (sqrt p + sqrt l) / (sqrt p - sqrt l) and
// exceeds t (sqrt p + sqrt l) / (sqrt p - sqrt(l - 1)) with probability below
// (C / t)^(p - l + 1) (Rudelson and Vershynin 2009): for l < p it stays far
// below u^-1/2 ~ 1e8. for l == p there is nothing to find (any basis spans
// everything): Q = I and step 4 is the exact eigenproblem of K.
// the shift does not move the eigenvectors; it only slows the iteration, whose
// ratio per application of A becomes (s_(R+1)^2 + mu) / (s_R^2 + mu). mu is
// 16 times the fp32 noise of K (G in fp32 moves K by up to ~2 u32 trace(K),
// u32 = 2^-24), so it only matters where s_R^2 is itself near that noise and
// the top-R subspace of G is not defined to fp32 anyway. K == 0 (G == 0): mu
// = 1, A = I, and any orthonormal basis is a correct answer.
//
// accuracy: for the Omega drawn, with Omega_1 = U_R^T Omega (R, l) and Omega_2
// = U_perp^T Omega, U the eigenvectors of K (HMT 2011, theorem 9.1; Gu 2015):
//     tan theta_max(span Q, U_R) <= ((s_(R+1)^2 + mu) / (s_R^2 + mu))^(it + 1)
//                                   ||Omega_2 Omega_1^+||
// i.e. the singular value ratio to the power 2 (it + 1); Rayleigh-Ritz then
// adds at most a factor sqrt(1 + (||P_Q A P_perp|| / gap)^2) (Knyazev).
// test_subtrack.c (test_svd_randomized) checks this bound.
// cost: the Gram p^2 q, (it + 2) products A Q of 2 p^2 l, 2 (it + 2) orth
// passes of 2 x 2 p l^2 and one (l, l) eigenproblem each, one for step 4.
// every basis is kept transposed, one vector per row (Qt (l, p)), which is
// cuBLAS's column-major (p, l): the GPU twin uses the same arrays.

#ifndef HOST_DEVICE
#define HOST_DEVICE
#endif
HOST_DEVICE void philox4x32_10(uint32_t ctr[4], uint32_t key0, uint32_t key1);

#define SVD_OVERSAMPLE_DEFAULT 8
#define SVD_OVERSAMPLE_MAX 256
#define SVD_POWER_ITERS_DEFAULT 2
#define SVD_POWER_ITERS_MAX 10
#define RSVD_SHIFT 9.5367431640625e-07      // 2^-20: mu = RSVD_SHIFT trace(K) (above)
#define ORTH_EIG_FLOOR 1e-15                // orth's eigenvalues below this x the largest are roundoff
// Omega's draws: Philox counter (SVD_SKETCH_STREAM + matrix << 40 + entry, step),
// key the seed. bit 62 keeps them apart from the stochastic rounding's streams
// (weights below 2^40, subspaces at bit 63); an entry index is below 2^40
#define SVD_SKETCH_STREAM ((uint64_t)1 << 62)
#define SVD_SKETCH_MATRIX_SHIFT 40

// entry index of the sketch of matrix `stream` at step `step`: a standard
// normal by Box-Muller in double on two 53-bit uniforms in (0, 1), then fp32.
// Omega (p, l) has entry (i, j) at index j p + i (column j is row j of
// Omega^T, the layout of every basis here). the GPU's kernel calls this very
// function, so both draw the same Omega
HOST_DEVICE static inline float svd_sketch_normal(uint64_t seed, uint64_t step, uint64_t stream, uint64_t index) {
    uint64_t at = SVD_SKETCH_STREAM + (stream << SVD_SKETCH_MATRIX_SHIFT) + index;
    uint32_t ctr[4] = {(uint32_t)at, (uint32_t)(at >> 32), (uint32_t)step, (uint32_t)(step >> 32)};
    philox4x32_10(ctr, (uint32_t)seed, (uint32_t)(seed >> 32));
    uint64_t a = ((uint64_t)(ctr[0] >> 5) << 26) | (ctr[1] >> 6);
    uint64_t b = ((uint64_t)(ctr[2] >> 5) << 26) | (ctr[3] >> 6);
    double u1 = ((double)a + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = ((double)b + 0.5) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// the shift of step 2 for a Gram matrix of trace `trace` (the GPU's kernel calls it too)
HOST_DEVICE static inline double rsvd_shift(double trace) {
    return trace > 0.0 ? RSVD_SHIFT * trace : 1.0;
}

// what the randomized SVD of one matrix needs beyond (S, G, m, n, r)
typedef struct {
    int oversample;     // o: the sketch has l = min(R + o, p) columns
    int power_iters;    // it
    uint64_t seed, step, stream;  // Omega's draws (svd_sketch_normal)
} SvdSketch;

// the sketch's width for a (m, n) matrix at rank r, projected on the right side or not
int svd_sketch_cols(int m, int n, int right, int r, int oversample) {
    int p = right ? n : m;
    return r + oversample < p ? r + oversample : p;
}

typedef struct {
    double* Qt;     // (l, p) the basis Q, one vector per row
    double* Yt;     // (l, p) Omega or A Q, then the other pass's basis
    SvdScratch eig; // K (p, p) as A, the Gram panel, and the eigensolver's arrays for (l, l)
    double* W;      // (l, l) Y^T Y, then B = Q^T A Q
} RsvdScratch;

static RsvdScratch rsvd_scratch_layout(Scratch* sc, int p, int l) {
    RsvdScratch w;
    w.Qt = scratch_doubles(sc, (size_t)l * p);
    w.Yt = scratch_doubles(sc, (size_t)l * p);
    w.eig = svd_scratch_layout(sc, p, l);   // K (p, p) and X's panel; the rest is used at size l
    w.W = scratch_doubles(sc, (size_t)l * l);
    return w;
}

size_t svd_randomized_scratch_num_floats(int m, int n, int right, int r, int oversample) {
    Scratch sc = {NULL, 0};
    rsvd_scratch_layout(&sc, right ? n : m, svd_sketch_cols(m, n, right, r, oversample));
    return sc.used;
}

// Yt (l, p) = Qt (l, p) A, A (p, p) symmetric: row a of Yt is (A q_a)^T
static void rsvd_times_a(double* Yt, const double* Qt, const double* A, int p, int l) {
    #pragma omp parallel for schedule(static)
    for (int a = 0; a < l; a++) {
        const double* q = Qt + (size_t)a * p;
        double* y = Yt + (size_t)a * p;
        for (int j = 0; j < p; j++) { y[j] = 0.0; }
        for (int i = 0; i < p; i++) {
            double qi = q[i];
            const double* Ai = A + (size_t)i * p;
            #pragma omp simd
            for (int j = 0; j < p; j++) { y[j] += qi * Ai[j]; }
        }
    }
}

// W (l, l) = Xt Yt^T: W[a][b] = x_a . y_b, rows of length p
static void rsvd_cross(double* W, const double* Xt, const double* Yt, int p, int l) {
    #pragma omp parallel for schedule(static)
    for (int a = 0; a < l; a++) {
        for (int b = 0; b < l; b++) {
            double s = 0.0;
            #pragma omp simd reduction(+:s)
            for (int i = 0; i < p; i++) { s += Xt[(size_t)a * p + i] * Yt[(size_t)b * p + i]; }
            W[(size_t)a * l + b] = s;
        }
    }
}

// Out (k, p) = Z (k, l) Yt (l, p): row a of Out = sum_b Z[a][b] y_b
static void rsvd_combine(double* Out, const double* Z, const double* Yt, int p, int l, int k) {
    #pragma omp parallel for schedule(static)
    for (int a = 0; a < k; a++) {
        double* o = Out + (size_t)a * p;
        for (int i = 0; i < p; i++) { o[i] = 0.0; }
        for (int b = 0; b < l; b++) {
            double z = Z[(size_t)a * l + b];
            const double* y = Yt + (size_t)b * p;
            #pragma omp simd
            for (int i = 0; i < p; i++) { o[i] += z * y[i]; }
        }
    }
}

// the eigenpairs of W (l, l) symmetric, the k largest: w.eig.eig (k,) descending,
// w.eig.Z (k, l) one vector per row (the exact path's eigensolver; W is overwritten)
static void rsvd_eigen(RsvdScratch* w, int l, int k) {
    SvdScratch* e = &w->eig;
    tridiagonalize(w->W, e->d, e->e, e->tau, e->work, l);
    tridiagonal_top_eigenpairs(e->eig, e->Z, e->lu, e->pivot, e->d, e->e, l, k);
    tridiagonal_backtransform(e->Z, w->W, e->tau, l, k);
}

// one orth pass: Out (l, p) = an orthonormal basis of the rows of In (l, p),
// In^T V Lambda^-1/2 with Lambda, V the eigenpairs of In In^T (l, l)
static void orthonormalize_rows_pass(double* Out, const double* In, RsvdScratch* w, int p, int l) {
    rsvd_cross(w->W, In, In, p, l);
    rsvd_eigen(w, l, l);
    double* lambda = w->eig.eig;
    double lowest = fmax(lambda[0] * ORTH_EIG_FLOOR, DBL_MIN);   // lambda[0] is the largest
    for (int k = 0; k < l; k++) {
        double inv = 1.0 / sqrt(fmax(lambda[k], lowest));
        for (int b = 0; b < l; b++) { w->eig.Z[(size_t)k * l + b] *= inv; }
    }
    rsvd_combine(Out, w->eig.Z, In, p, l, l);
}

// the l rows of Yt (l, p) <- an orthonormal basis of their span (two passes,
// CholeskyQR2-like, above); Qt (l, p) is scratch
void orthonormalize_rows(double* Yt, double* Qt, RsvdScratch* w, int p, int l) {
    orthonormalize_rows_pass(Qt, Yt, w, p, l);
    orthonormalize_rows_pass(Yt, Qt, w, p, l);
}

// S (p, R) = the top-r left singular vectors of X = op(G), approximately (above),
// canonical sign. the twin of svd_top_left_singular_vectors
void svd_randomized_top_left_singular_vectors(float* S, const float* G, int m, int n, int right, int r,
                                              const SvdSketch* sk, float* scratch) {
    int p = right ? n : m, q = right ? m : n;
    int l = svd_sketch_cols(m, n, right, r, sk->oversample);
    Scratch sc = {scratch, 0};
    RsvdScratch w = rsvd_scratch_layout(&sc, p, l);
    double* A = w.eig.K;
    // steps 1-2: A = X X^T + mu I
    gram_double(A, w.eig.panel, G, n, right, p, q);
    double trace = 0.0;
    for (int i = 0; i < p; i++) { trace += A[(size_t)i * p + i]; }
    double mu = rsvd_shift(trace);
    for (int i = 0; i < p; i++) { A[(size_t)i * p + i] += mu; }
    // step 3: the basis Q (rows of Qt); Yt is the other buffer, and the two swap
    double* Qt = w.Qt;
    double* Yt = w.Yt;
    if (l == p) {
        memset(Qt, 0, (size_t)l * p * sizeof(double));
        for (int i = 0; i < p; i++) { Qt[(size_t)i * p + i] = 1.0; }
    } else {
        #pragma omp parallel for schedule(static)
        for (int j = 0; j < l; j++) {
            for (int i = 0; i < p; i++) {
                size_t at = (size_t)j * p + i;
                Qt[at] = svd_sketch_normal(sk->seed, sk->step, sk->stream, at);
            }
        }
        orthonormalize_rows(Qt, Yt, &w, p, l);                  // Q = orth(Omega)
        for (int it = 0; it <= sk->power_iters; it++) {
            rsvd_times_a(Yt, Qt, A, p, l);                      // Y = A Q
            orthonormalize_rows(Yt, Qt, &w, p, l);              // Q = orth(Y)
            double* t = Qt; Qt = Yt; Yt = t;
        }
    }
    // step 4: B = Q^T A Q, its top r eigenvectors U (r, l), S = Q U
    rsvd_times_a(Yt, Qt, A, p, l);
    rsvd_cross(w.W, Qt, Yt, p, l);
    rsvd_eigen(&w, l, r);
    rsvd_combine(Yt, w.eig.Z, Qt, p, l, r);                     // S^T (r, p)
    for (int i = 0; i < p; i++) {
        for (int k = 0; k < r; k++) { S[(size_t)i * r + k] = (float)Yt[(size_t)k * p + i]; }
    }
    canonical_sign(S, p, r);
}

// ---- GoLore (--rand_proj): a random subspace in place of the SVD's
//
// from step golore_from_step on, every step that would take an SVD (the
// first, and GaLore's refreshes) takes S = Z (Z^T Z)^-1/2 instead: the polar
// factor of a Gaussian Z (p, R), an orthonormal basis drawn uniformly from
// the Stiefel manifold, whose span is a uniformly random R-dimensional
// subspace. this is the authors' get_random_orthogonal_matrix (their Z
// (Z^T Z)^-1/2 by an SVD of Z^T Z), with our draws: Z is the randomized SVD's
// sketch Omega (svd_sketch_normal) of this matrix and step, its first R
// columns, so the GPU draws the same Z. Z^T Z is formed and inverted in
// double; no canonical sign (the polar factor is unique)

static RsvdScratch golore_scratch_layout(Scratch* sc, int p, int r) {
    RsvdScratch w;
    w.Qt = scratch_doubles(sc, (size_t)r * p);    // Z^T, one column of Z per row
    w.Yt = scratch_doubles(sc, (size_t)r * p);    // S^T
    w.eig = svd_scratch_layout(sc, r, r);         // the (R, R) eigenproblem's arrays
    w.W = scratch_doubles(sc, (size_t)r * r);     // Z^T Z, then (Z^T Z)^-1/2
    return w;
}

size_t golore_scratch_num_floats(int m, int n, int right, int r) {
    Scratch sc = {NULL, 0};
    golore_scratch_layout(&sc, right ? n : m, r);
    return sc.used;
}

// S (p, R) = the polar factor of Z (p, R), Z drawn as the sketch of sk (above)
void golore_random_basis(float* S, int p, int r, const SvdSketch* sk, float* scratch) {
    Scratch sc = {scratch, 0};
    RsvdScratch w = golore_scratch_layout(&sc, p, r);
    for (int j = 0; j < r; j++) {
        for (int i = 0; i < p; i++) {
            size_t at = (size_t)j * p + i;
            w.Qt[at] = svd_sketch_normal(sk->seed, sk->step, sk->stream, at);
        }
    }
    // H = Z^T Z = V Lambda V^T; H^-1/2 = V Lambda^-1/2 V^T (rows of eig.Z are the v_k)
    rsvd_cross(w.W, w.Qt, w.Qt, p, r);
    rsvd_eigen(&w, r, r);
    const double* lambda = w.eig.eig;
    const double* V = w.eig.Z;
    for (int a = 0; a < r; a++) {
        for (int b = 0; b < r; b++) {
            double h = 0.0;
            for (int k = 0; k < r; k++) {
                h += V[(size_t)k * r + a] * V[(size_t)k * r + b] / sqrt(fmax(lambda[k], DBL_MIN));
            }
            w.W[(size_t)a * r + b] = h;
        }
    }
    rsvd_combine(w.Yt, w.W, w.Qt, p, r, r);      // S^T = H^-1/2 Z^T (H^-1/2 is symmetric)
    for (int i = 0; i < p; i++) {
        for (int k = 0; k < r; k++) { S[(size_t)i * r + k] = (float)w.Yt[(size_t)k * p + i]; }
    }
}

// 1 when step t takes GoLore's random subspace instead of an SVD
int lowrank_golore_at(const LowRankConfig* cfg, int t) {
    return cfg->golore && t >= cfg->golore_from_step;
}

// the subspace SVD that cfg asks for (--svd), of matrix s at step cfg->svd_step
// (or, with --rand_proj from its step on, GoLore's random subspace)
static void lowrank_subspace_svd(LowRankState* s, const float* G, const LowRankConfig* cfg, float* scratch) {
    if (lowrank_golore_at(cfg, cfg->svd_step)) {
        SvdSketch sk = {cfg->svd_oversample, cfg->svd_power_iters, cfg->svd_seed, (uint64_t)cfg->svd_step,
                        s->svd_stream};
        golore_random_basis(s->S, s->p, s->r, &sk, scratch);
        return;
    }
    if (!cfg->svd_randomized) {
        svd_top_left_singular_vectors(s->S, G, s->m, s->n, s->right, s->r, scratch);
        return;
    }
    SvdSketch sk = {cfg->svd_oversample, cfg->svd_power_iters, cfg->svd_seed, (uint64_t)cfg->svd_step, s->svd_stream};
    svd_randomized_top_left_singular_vectors(s->S, G, s->m, s->n, s->right, s->r, &sk, scratch);
}

// floats of scratch of the SVD that cfg asks for (the larger of the two: a
// randomized one of l = p can outgrow the exact one), or of GoLore's basis
static size_t svd_any_scratch_num_floats(int m, int n, int right, int r, int sketch_oversample) {
    size_t exact = svd_scratch_num_floats(m, n, right, r);
    size_t golore = golore_scratch_num_floats(m, n, right, r);
    exact = golore > exact ? golore : exact;
    if (sketch_oversample < 0) { return exact; }
    size_t rnd = svd_randomized_scratch_num_floats(m, n, right, r, sketch_oversample);
    return rnd > exact ? rnd : exact;
}

// ----------------------------------------------------------------------------
// the low-rank step, in pieces. "project" and "back-project" hide the orientation:
//   left:  Gt (R, q) = S^T G          D (m, n) = alpha S X + beta D
//   right: Gt (q, R) = G S            D (m, n) = alpha X S^T + beta D

static void lowrank_project(float* Gt, const LowRankState* s, const float* G) {
    int m = s->m, n = s->n, r = s->r;
    if (!s->right) {
        gemm(1, 0, r, n, m, 1.0f, s->S, r, G, n, 0.0f, Gt, n);
    } else {
        gemm(0, 0, m, r, n, 1.0f, G, n, s->S, r, 0.0f, Gt, r);
    }
}

static void lowrank_back_project(float* D, const LowRankState* s, const float* X, float alpha, float beta) {
    int m = s->m, n = s->n, r = s->r;
    if (!s->right) {
        gemm(0, 0, m, n, r, alpha, s->S, r, X, n, beta, D, n);
    } else {
        gemm(0, 1, m, n, r, alpha, X, r, s->S, r, beta, D, n);
    }
}

// D (m, n) = G - S Gt (left) or G - Gt S^T (right): the part of G that the
// projection discards, which recovery scaling (step 5) adds back
static void lowrank_residual(float* D, const LowRankState* s, const float* G, const float* Gt) {
    memcpy(D, G, (size_t)s->m * s->n * sizeof(float));
    lowrank_back_project(D, s, Gt, -1.0f, 1.0f);
}

// the moments as q vectors of length R: element (i, j) of the left (R, q)
// layout, or (j, i) of the right (q, R) layout. these two strides say where
static void moment_strides(const LowRankState* s, size_t* along_r, size_t* along_q) {
    *along_r = s->right ? 1 : (size_t)s->q;
    *along_q = s->right ? (size_t)s->r : 1;
}

// step 3, efficient form for a rank-1 geodesic step, where C = S_new^T S_old = I - c v v^T:
//   M_rot = M - c v (v^T M)
//   V_rot = | (C o C)(V - M o M) + M_rot o M_rot |,
//   (C o C) X = X - 2c diag(v o v) X + c^2 (v o v) ((v o v)^T X)
// O(R q) work; vm and vx are (q,) double scratch
#define ROTATE_BLOCK 256    // columns per thread chunk in the left layout
static void moments_rotate_rank1(LowRankState* s, const double* v, double c, double* vm, double* vx) {
    int r = s->r, q = s->q;
    size_t sr, sq;
    moment_strides(s, &sr, &sq);
    float* M = s->M;
    float* V = s->V;
    // vm = v^T M and vx = (v o v)^T (V - M o M), one value per vector j; walked
    // in memory order (left: row by row within a block of columns; right: row j)
    int nblocks = (q + ROTATE_BLOCK - 1) / ROTATE_BLOCK;
    #pragma omp parallel for schedule(static)
    for (int bj = 0; bj < nblocks; bj++) {
        int j0 = bj * ROTATE_BLOCK, j1 = j0 + ROTATE_BLOCK < q ? j0 + ROTATE_BLOCK : q;
        for (int j = j0; j < j1; j++) { vm[j] = 0.0; vx[j] = 0.0; }
        for (int i = 0; i < r; i++) {
            for (int j = j0; j < j1; j++) {
                size_t idx = i * sr + j * sq;
                double mij = M[idx];
                vm[j] += v[i] * mij;
                vx[j] += v[i] * v[i] * (V[idx] - mij * mij);
            }
        }
    }
    #pragma omp parallel for schedule(static)
    for (int bj = 0; bj < nblocks; bj++) {
        int j0 = bj * ROTATE_BLOCK, j1 = j0 + ROTATE_BLOCK < q ? j0 + ROTATE_BLOCK : q;
        for (int i = 0; i < r; i++) {
            double vv = v[i] * v[i];
            for (int j = j0; j < j1; j++) {
                size_t idx = i * sr + j * sq;
                double mij = M[idx];
                double x = V[idx] - mij * mij;
                double cx = x - 2.0 * c * vv * x + c * c * vv * vx[j];
                double mrot = mij - c * v[i] * vm[j];
                M[idx] = (float)mrot;
                V[idx] = (float)fabs(cx + mrot * mrot);
            }
        }
    }
}

// step 3 for a general change of basis C (R, R) = S_new^T S_old (GaLore's SVD refresh):
//   left:  M_rot = C M,   V_rot = |(C o C)(V - M o M) + M_rot o M_rot|
//   right: the same on the transposes, M_rot = M C^T
// CC (R, R), Mrot and X (the moments' shape) are scratch
static void moments_rotate_general(LowRankState* s, const float* C, float* CC, float* Mrot, float* X) {
    int r = s->r, q = s->q;
    size_t numel = (size_t)r * q;
    for (int i = 0; i < r * r; i++) { CC[i] = C[i] * C[i]; }
    for (size_t i = 0; i < numel; i++) { X[i] = s->V[i] - s->M[i] * s->M[i]; }
    float* Vrot = s->V;  // V is no longer needed once X holds V - M o M
    if (!s->right) {
        gemm(0, 0, r, q, r, 1.0f, C, r, s->M, q, 0.0f, Mrot, q);
        gemm(0, 0, r, q, r, 1.0f, CC, r, X, q, 0.0f, Vrot, q);
    } else {
        gemm(0, 1, q, r, r, 1.0f, s->M, r, C, r, 0.0f, Mrot, r);
        gemm(0, 1, q, r, r, 1.0f, X, r, CC, r, 0.0f, Vrot, r);
    }
    for (size_t i = 0; i < numel; i++) {
        Vrot[i] = fabsf(Vrot[i] + Mrot[i] * Mrot[i]);
        s->M[i] = Mrot[i];
    }
}

// ---- step 1: the first subspace

// step 1 (t == 0): S = the top-r left singular vectors of G (canonical sign), M = V = 0
// (with Adafactor: its first moment, if any, and its statistics)
void lowrank_init_subspace(LowRankState* s, const float* G, const LowRankConfig* cfg, float* scratch) {
    size_t numel = (size_t)s->q * s->r;
    lowrank_subspace_svd(s, G, cfg, scratch);
    if (s->M != NULL) { memset(s->M, 0, numel * sizeof(float)); }
    if (cfg->adafactor) {
        int rows, cols;
        lowrank_moment_shape(s->m, s->n, s->right, s->r, &rows, &cols);
        numel = adafactor_stats_floats(rows, cols);
    }
    memset(s->V, 0, numel * sizeof(float));
}

// ---- GaLore: S = top-r singular vectors of the current gradient (+ moment rotation)

typedef struct {
    float* S_old;   // (p, R)
    float* C;       // (R, R)
    float* CC;      // (R, R)
    float* Mrot;    // moments' shape
    float* X;       // moments' shape
    float* svd;     // svd_scratch_num_floats
} GaloreScratch;

// sketch_oversample: --svd_oversample with --svd randomized, -1 with exact (the
// SVD's scratch is last, so the carving does not depend on it, only the size)
static GaloreScratch galore_scratch_layout(Scratch* sc, int m, int n, int right, int r, int sketch_oversample) {
    int p = right ? n : m, q = right ? m : n;
    GaloreScratch w;
    w.S_old = scratch_floats(sc, (size_t)p * r);
    w.C = scratch_floats(sc, (size_t)r * r);
    w.CC = scratch_floats(sc, (size_t)r * r);
    w.Mrot = scratch_floats(sc, (size_t)q * r);
    w.X = scratch_floats(sc, (size_t)q * r);
    w.svd = scratch_floats(sc, svd_any_scratch_num_floats(m, n, right, r, sketch_oversample));
    return w;
}

// step 2 (GaLore) and 3: new S from an SVD of G; with --adaptive_optimizer the
// moments follow the change of basis, otherwise they are left as they are
void galore_refresh_subspace(LowRankState* s, const float* G, const LowRankConfig* cfg, float* scratch) {
    Scratch sc = {scratch, 0};
    GaloreScratch w = galore_scratch_layout(&sc, s->m, s->n, s->right, s->r, -1);
    int p = s->p, r = s->r;
    memcpy(w.S_old, s->S, (size_t)p * r * sizeof(float));
    lowrank_subspace_svd(s, G, cfg, w.svd);
    if (cfg->adaptive_optimizer) {
        gemm(1, 0, r, r, p, 1.0f, s->S, r, w.S_old, r, 0.0f, w.C, r);
        moments_rotate_general(s, w.C, w.CC, w.Mrot, w.X);
    }
}

// ---- SubTrack++: one geodesic step on the Grassmannian

#define POWER_ITER_MAX 300
#define POWER_ITER_TOL 1e-10        // change of the unit vector between iterations
#define REORTH_MIN_NORM 0.5         // u this far inside span(S) means dF is rounding noise: no step

typedef struct {
    float* X;       // (p, R): G A^T, then dF
    float* AAt;     // (R, R) A A^T, computed as S^T X
    float* H;       // (R, R) dF^T dF
    float* a;       // (p,) the rank-1 step direction
    float* aG;      // (q,) a^T G (left) or G a (right)
    double* Hd;     // (R, R)
    double* v;      // (R,)
    double* v_next; // (R,)
    double* u;      // (p,)
    double* acc1;   // (q,) moment rotation
    double* acc2;   // (q,)
} TrackScratch;

static TrackScratch track_scratch_layout(Scratch* sc, int m, int n, int right, int r) {
    int p = right ? n : m, q = right ? m : n;
    TrackScratch w;
    w.X = scratch_floats(sc, (size_t)p * r);
    w.AAt = scratch_floats(sc, (size_t)r * r);
    w.H = scratch_floats(sc, (size_t)r * r);
    w.a = scratch_floats(sc, p);
    w.aG = scratch_floats(sc, q);
    w.Hd = scratch_doubles(sc, (size_t)r * r);
    w.v = scratch_doubles(sc, r);
    w.v_next = scratch_doubles(sc, r);
    w.u = scratch_doubles(sc, p);
    w.acc1 = scratch_doubles(sc, q);
    w.acc2 = scratch_doubles(sc, q);
    return w;
}

// the scalars that the pieces of one tracking step hand on to each other. the
// GPU keeps the same struct on the device, so that its host never waits for them
typedef struct {
    int iterations;     // power iterations taken; 0 if dF == 0
    int skip;           // 1: S stays, the step ends
    double sigma;       // top singular value of dF
    double unorm;       // ||u|| after re-orthogonalisation
    double cs, sn;      // cos, sin of eta sigma
} TrackScalars;

// the start of the power iteration, entry i of a fixed dense vector w (R,), before
// normalisation: a pseudo-random sign and a magnitude in [0.5, 1.5) with 23
// pseudo-random bits, from an integer hash of i (murmur3's finaliser), so the
// CPU and the GPU (which calls this very function from its kernel) start from
// the same w, and every run from the same one.
// why not a unit vector e_j (as this code once did, from the largest diagonal):
// power iteration finds the top eigenvector u1 only if the start has a component
// along it, and e_j has none whenever u1_j = 0. structured H do that: with
// H = [[2,0,0],[0,1.5,1.4],[0,1.4,1.5]], e_1 is itself an eigenvector (of 2), so
// the iteration stays there and misses u1 = (0,1,1)/sqrt(2) (eigenvalue 2.9).
// why w cannot be orthogonal to u1 for generic H: w^T u1 = 0 puts u1 on one
// fixed hyperplane, a set of measure zero among unit vectors. the u1 that
// structured matrices have (sparse, block-wise, entries equal up to sign such as
// (1,1)/sqrt(2) or (1,-1), second differences (1,-2,1)) are orthogonal to w only
// if a few of w's entries satisfy a small-integer relation, and pseudo-random
// signs with 23-bit magnitudes (a dense start, never a progression such as i or
// frac(i phi), which is orthogonal to (1,-2,1)) do not. a start with a small
// component c along u1 still converges, with log(1/c) / log(lambda1/lambda2) more
// iterations; a fixed-seed pseudo-random start is what LAPACK and ARPACK use too
#ifdef __CUDACC__
__host__ __device__
#endif
static inline double power_start_entry(int i) {
    uint32_t x = (uint32_t)i * 0x9E3779B9u + 0x7F4A7C15u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    double magnitude = 0.5 + (double)(x >> 9) * (1.0 / 8388608.0);  // x >> 9 < 2^23
    return (x & 1u) ? -magnitude : magnitude;
}

// top eigenvector v (R,) of the symmetric PSD H (R, R) by power iteration, started
// from the dense w of power_start_entry, normalised. sets ts->iterations, and
// ts->skip if H == 0 (then dF == 0: G lies in span(S); a PSD H with no positive
// diagonal entry is 0). v_next (R,) is scratch
static void power_iteration(double* v, TrackScalars* ts, const double* H, int r, double* v_next) {
    ts->iterations = 0;
    ts->skip = 1;
    double hmax = 0.0;
    for (int j = 0; j < r; j++) { hmax = fmax(hmax, H[(size_t)j * r + j]); }
    if (!(hmax > 0.0)) { return; }
    double start2 = 0.0;  // serial sum, in index order (the GPU sums in another order: ~1e-16 apart)
    for (int i = 0; i < r; i++) {
        v[i] = power_start_entry(i);
        start2 += v[i] * v[i];
    }
    double start_inv = 1.0 / sqrt(start2);
    for (int i = 0; i < r; i++) { v[i] *= start_inv; }
    int it = 0;
    while (it < POWER_ITER_MAX) {
        it++;
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < r; i++) {
            const double* Hi = H + (size_t)i * r;
            double s = 0.0;
            for (int k = 0; k < r; k++) { s += Hi[k] * v[k]; }
            v_next[i] = s;
        }
        double norm2 = 0.0;  // serial sum: the result must not depend on the thread count
        for (int i = 0; i < r; i++) { norm2 += v_next[i] * v_next[i]; }
        if (!(norm2 > 0.0)) { return; }
        double inv = 1.0 / sqrt(norm2), change2 = 0.0;
        for (int i = 0; i < r; i++) {
            double x = v_next[i] * inv;
            change2 += (x - v[i]) * (x - v[i]);
            v[i] = x;
        }
        if (change2 < POWER_ITER_TOL * POWER_ITER_TOL) { break; }
    }
    ts->iterations = it;
    ts->skip = 0;
}

// u (p,) = dF v, dF (p, R): sigma u, the top left singular vector of dF, unnormalised
static void track_u(double* u, const float* dF, const double* v, int p, int r) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < p; i++) {
        double x = 0.0;
        for (int k = 0; k < r; k++) { x += (double)dF[(size_t)i * r + k] * v[k]; }
        u[i] = x;
    }
}

// sigma = ||u||, the top singular value of dF. sigma == 0 ends the step
static void track_sigma(TrackScalars* ts, const double* u, int p) {
    double sigma2 = 0.0;
    for (int i = 0; i < p; i++) { sigma2 += u[i] * u[i]; }
    ts->sigma = sqrt(sigma2);
    if (ts->sigma == 0.0) { ts->skip = 1; }
}

// y (R,) = S^T (u / sigma), S (p, R). a serial sum over i, in a fixed order
static void track_project_u(double* y, const float* S, const double* u, const TrackScalars* ts, int p, int r) {
    for (int k = 0; k < r; k++) { y[k] = 0.0; }
    for (int i = 0; i < p; i++) {
        double ui = u[i] / ts->sigma;
        for (int k = 0; k < r; k++) { y[k] += (double)S[(size_t)i * r + k] * ui; }
    }
}

// u <- u / sigma - S y: the unit u made exactly orthogonal to span(S), so that
// the geodesic keeps S orthonormal in fp32
static void track_orthogonalize_u(double* u, const float* S, const double* y, const TrackScalars* ts, int p, int r) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < p; i++) {
        double x = u[i] / ts->sigma;
        for (int k = 0; k < r; k++) { x -= (double)S[(size_t)i * r + k] * y[k]; }
        u[i] = x;
    }
}

// ||u||; a u that lost more than half its norm was rounding noise inside span(S):
// no step. otherwise cos and sin of eta sigma for the geodesic
static void track_angle(TrackScalars* ts, const double* u, int p, float eta) {
    double unorm2 = 0.0;
    for (int i = 0; i < p; i++) { unorm2 += u[i] * u[i]; }
    if (!(sqrt(unorm2) >= REORTH_MIN_NORM)) {
        ts->skip = 1;
        return;
    }
    double theta = (double)eta * ts->sigma;
    ts->unorm = sqrt(unorm2);
    ts->cs = cos(theta);
    ts->sn = sin(theta);
}

// the geodesic step on S (p, R), rank 1:
//   a = (cos - 1) S v - sin u / ||u||   (p,),   S <- S + a v^T
// every a_i is formed from the old S before S changes
static void track_geodesic(float* S, float* a, const double* v, const double* u, const TrackScalars* ts, int p, int r) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < p; i++) {
        double sv = 0.0;
        for (int k = 0; k < r; k++) { sv += (double)S[(size_t)i * r + k] * v[k]; }
        a[i] = (float)((ts->cs - 1.0) * sv - ts->sn * u[i] / ts->unorm);
    }
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < p; i++) {
        for (int k = 0; k < r; k++) { S[(size_t)i * r + k] += a[i] * (float)v[k]; }
    }
}

// the projection with the new S, from the old one by a rank-1 correction:
//   left:  G (p, q), Gt (R, q) += v (a^T G)
//   right: G (q, p), Gt (q, R) += (G a) v^T
// a gemv, O(m n): a direct loop, since gemm with one row would repack all of G
// first. aG (q,) is scratch
static void track_update_projection(float* Gt, const float* G, const float* a, const double* v, int r, int p, int q,
                                    int right, float* aG) {
    if (!right) {
        int nblocks = (q + ROTATE_BLOCK - 1) / ROTATE_BLOCK;
        #pragma omp parallel for schedule(static)
        for (int bj = 0; bj < nblocks; bj++) {
            int j0 = bj * ROTATE_BLOCK, j1 = j0 + ROTATE_BLOCK < q ? j0 + ROTATE_BLOCK : q;
            for (int j = j0; j < j1; j++) { aG[j] = 0.0f; }
            for (int i = 0; i < p; i++) {
                const float* row = G + (size_t)i * q;
                float ai = a[i];
                for (int j = j0; j < j1; j++) { aG[j] += ai * row[j]; }
            }
        }
        for (int k = 0; k < r; k++) {
            float vk = (float)v[k];
            float* row = Gt + (size_t)k * q;
            for (int j = 0; j < q; j++) { row[j] += vk * aG[j]; }
        }
    } else {
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < q; i++) {
            const float* row = G + (size_t)i * p;
            float acc = 0.0f;
            #pragma omp simd reduction(+:acc)
            for (int j = 0; j < p; j++) { acc += row[j] * a[j]; }
            aG[i] = acc;
        }
        for (int i = 0; i < q; i++) {
            float* row = Gt + (size_t)i * r;
            for (int k = 0; k < r; k++) { row[k] += aG[i] * (float)v[k]; }
        }
    }
}

// steps 2 (SubTrack) and 3. on entry Gt holds the projection A = S^T G (left)
// or G S (right) with the current S, which every step computes anyway; on
// return S has taken one geodesic step, Gt is the projection with the new S,
// and with --adaptive_optimizer the moments are rotated. efficient form, and
// the piece that does each line (the GPU twin calls the same pieces):
//   X = G A^T                             one (p, q, R) gemm, no residual matrix
//   dF = -2 (X - S (S^T X))               S^T X = S^T G A^T = A A^T, but costs 2 p R^2
//                                         instead of 2 q R^2, and dF is then orthogonal to S by construction
//   dF ~ sigma u v^T                      power_iteration on dF^T dF (R, R), track_u, track_sigma
//   u <- u - S (S^T u), normalised        track_project_u, track_orthogonalize_u, track_angle:
//                                         keeps S orthonormal in fp32
//   a = (cos(eta sigma) - 1) S v - sin(eta sigma) u,   S <- S + a v^T         track_geodesic
//   Gt <- A + v (a^T G)                   track_update_projection: one gemv, not a second gemm
//   step 3 with C = I - c v v^T, c = 1 - cos(eta sigma)                      moments_rotate_rank1
void subtrack_track_subspace(LowRankState* s, float* Gt, const float* G, const LowRankConfig* cfg,
                             float* scratch) {
    Scratch sc = {scratch, 0};
    TrackScratch w = track_scratch_layout(&sc, s->m, s->n, s->right, s->r);
    int n = s->n, r = s->r, p = s->p, q = s->q;
    float* S = s->S;
    // X = G A^T (p, R); in the right case A^T = Gt (q, R) and op(G) = G^T
    if (!s->right) {
        gemm(0, 1, p, r, q, 1.0f, G, n, Gt, q, 0.0f, w.X, r);
    } else {
        gemm(1, 0, p, r, q, 1.0f, G, n, Gt, r, 0.0f, w.X, r);
    }
    // dF = -2 (X - S AAt), AAt = S^T X
    gemm(1, 0, r, r, p, 1.0f, S, r, w.X, r, 0.0f, w.AAt, r);
    gemm(0, 0, p, r, r, 2.0f, S, r, w.AAt, r, -2.0f, w.X, r);
    float* dF = w.X;
    gemm(1, 0, r, r, p, 1.0f, dF, r, dF, r, 0.0f, w.H, r);
    for (int i = 0; i < r * r; i++) { w.Hd[i] = w.H[i]; }
    TrackScalars ts = {0, 0, 0.0, 0.0, 0.0, 0.0};
    power_iteration(w.v, &ts, w.Hd, r, w.v_next);
    s->power_iterations = ts.iterations;
    if (ts.skip) { return; }  // dF == 0: G lies in span(S), S stays
    // u = dF v / sigma, then made exactly orthogonal to S
    track_u(w.u, dF, w.v, p, r);
    track_sigma(&ts, w.u, p);
    if (ts.skip) { return; }
    double* y = w.v_next;  // (R,) S^T u, reusing power iteration scratch
    track_project_u(y, S, w.u, &ts, p, r);
    track_orthogonalize_u(w.u, S, y, &ts, p, r);
    track_angle(&ts, w.u, p, lowrank_track_eta(cfg));
    if (ts.skip) { return; }
    track_geodesic(S, w.a, w.v, w.u, &ts, p, r);
    track_update_projection(Gt, G, w.a, w.v, r, p, q, s->right, w.aG);
    // step 3, with C = I - c v v^T, c = 1 - cos(eta sigma)
    if (cfg->adaptive_optimizer) {
        moments_rotate_rank1(s, w.v, 1.0 - ts.cs, w.acc1, w.acc2);
    }
}

// ---- steps 4-6: Adam in the subspace, recovery scaling, the update

#define RECOVERY_PHI_EPS 1e-8f      // the 1e-8 in phi_j = ||N_j|| / (||Gt_j|| + 1e-8)

// step 4: Adam in the subspace, elementwise over the moments' shape (M, V, N, Gt):
//   M = b1 M + (1 - b1) Gt ;  V = b2 V + (1 - b2) Gt o Gt ;  N = M / (sqrt(V) + eps)
// the GPU fuses this with step 5's column norms in one kernel (lowrank_adam_norms_kernel)
void lowrank_adam_in_subspace(LowRankState* s, float* N, const float* Gt, const LowRankConfig* cfg) {
    size_t numel = (size_t)s->q * s->r;
    float b1 = cfg->beta1, b2 = cfg->beta2, eps = cfg->eps;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < numel; i++) {
        float g = Gt[i];
        float mi = b1 * s->M[i] + (1.0f - b1) * g;
        float vi = b2 * s->V[i] + (1.0f - b2) * g * g;
        s->M[i] = mi;
        s->V[i] = vi;
        N[i] = mi / (sqrtf(vi) + eps);
    }
}

// step 5: recovery scaling. on entry Lambda (m, n) holds the residual G - S Gt
// (lowrank_residual); on return it is
//   Lambda = (G - S Gt) diag(phi),   phi_j = ||N_j|| / (||Gt_j|| + 1e-8)
// for each j of the non-projected dimension (left: columns, right: rows), then
// the norm-growth limiter: ||Lambda|| may grow by at most zeta per step, and
// s->limiter = [prev, prev_set] keeps the norm used. phi, norm2 (q,) are scratch.
// the GPU computes phi and the residual's norms in step 4's kernel
// (lowrank_adam_norms_kernel), and scales the residual in step 6's
void lowrank_recovery_scaling(LowRankState* s, float* Lambda, const float* N, const float* Gt,
                              const LowRankConfig* cfg, float* phi, double* norm2) {
    int m = s->m, n = s->n, r = s->r, q = s->q;
    size_t sr, sq;
    moment_strides(s, &sr, &sq);
    #pragma omp parallel for schedule(static)
    for (int j = 0; j < q; j++) {
        double nn = 0.0, gg = 0.0;
        for (int i = 0; i < r; i++) {
            double x = N[i * sr + j * sq], g = Gt[i * sr + j * sq];
            nn += x * x;
            gg += g * g;
        }
        phi[j] = (float)sqrt(nn) / ((float)sqrt(gg) + RECOVERY_PHI_EPS);
    }
    // ||Lambda||^2 = sum_j phi_j^2 ||residual_j||^2, from the residual's column (left) or row (right) norms
    if (!s->right) {
        int nblocks = (n + ROTATE_BLOCK - 1) / ROTATE_BLOCK;
        #pragma omp parallel for schedule(static)
        for (int bj = 0; bj < nblocks; bj++) {
            int j0 = bj * ROTATE_BLOCK, j1 = j0 + ROTATE_BLOCK < n ? j0 + ROTATE_BLOCK : n;
            for (int j = j0; j < j1; j++) { norm2[j] = 0.0; }
            for (int i = 0; i < m; i++) {
                const float* row = Lambda + (size_t)i * n;
                for (int j = j0; j < j1; j++) { norm2[j] += (double)row[j] * row[j]; }
            }
        }
    } else {
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < m; i++) {
            const float* row = Lambda + (size_t)i * n;
            double acc = 0.0;
            for (int j = 0; j < n; j++) { acc += (double)row[j] * row[j]; }
            norm2[i] = acc;
        }
    }
    double lambda2 = 0.0;
    for (int j = 0; j < q; j++) { lambda2 += (double)phi[j] * phi[j] * norm2[j]; }
    double lambda_norm = sqrt(lambda2);
    // norm-growth limiter: Lambda may grow by at most zeta per step
    float scale = 1.0f;
    if (cfg->norm_growth_limiter) {
        float* prev = &s->limiter[0];
        float* prev_set = &s->limiter[1];
        if (*prev_set == 0.0f) {
            *prev = (float)lambda_norm;
            *prev_set = 1.0f;
        } else {
            double cap = (double)cfg->norm_growth_limit * *prev;
            if (lambda_norm > cap) {
                scale = (float)(cap / lambda_norm);
                *prev = (float)cap;
            } else {
                *prev = (float)lambda_norm;
            }
        }
    }
    for (int j = 0; j < q; j++) { phi[j] *= scale; }
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < m; i++) {
        float* row = Lambda + (size_t)i * n;
        if (!s->right) {
            for (int j = 0; j < n; j++) { row[j] *= phi[j]; }
        } else {
            float f = phi[i];
            for (int j = 0; j < n; j++) { row[j] *= f; }
        }
    }
}

// step 6: the update, W (m, n), with the bias correction c = sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)):
//   D = alpha S N (+ Lambda) ;  W -= lr c D ;  W -= lr wd W
// Lambda (m, n) is step 5's, and D is formed in its memory; NULL without
// recovery scaling, and then the back-projection goes straight into W
void lowrank_apply_update(float* W, const LowRankState* s, const float* N, float* Lambda, int t,
                          const LowRankConfig* cfg, float lr) {
    size_t mn = (size_t)s->m * s->n;
    double c = sqrt(1.0 - pow((double)cfg->beta2, t + 1)) / (1.0 - pow((double)cfg->beta1, t + 1));
    float step = (float)(lr * c);
    float decay = (float)((double)lr * cfg->weight_decay);
    if (Lambda == NULL) {
        // W -= lr c alpha S N
        lowrank_back_project(W, s, N, -step * cfg->low_rank_scale, 1.0f);
    } else {
        float* D = Lambda;
        lowrank_back_project(D, s, N, cfg->low_rank_scale, 1.0f);
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < mn; i++) { W[i] -= step * D[i]; }
    }
    if (cfg->weight_decay > 0.0f) {
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < mn; i++) { W[i] -= decay * W[i]; }
    }
}

// steps 4 and 6 with Adafactor in the subspace (--optimizer low_rank_adafactor;
// the authors' LowRankAdafactor as its code reads, which stops with an error at its
// first step): transformers' Adafactor step (adafactor_update) on Gt, for a weight of the
// moments' shape that is 0 before the step, leaves -U in N, U the update with lr and
// clipping in it (through the first moment when there is one). then, in the order of
// the authors' class (the decay, then the update):
//   W = W - lr wd W ;  W = W - alpha S U
// (the decay as low-rank AdamW's, lowrank_apply_update). there is no recovery
// scaling and no moment rotation (their class has neither, and the trainers
// refuse them with it). sums: rows doubles (R left, q right; R <= q)
void lowrank_adafactor_in_subspace(float* W, LowRankState* s, float* N, const float* Gt, int t,
                                   const LowRankConfig* cfg, float lr, double* sums) {
    int rows, cols;
    lowrank_moment_shape(s->m, s->n, s->right, s->r, &rows, &cols);
    memset(N, 0, (size_t)rows * cols * sizeof(float));
    adafactor_update(N, s->M, s->V, Gt, rows, cols, t, lr, cfg->beta1, 0.0f, sums);
    if (cfg->weight_decay > 0.0f) {
        size_t mn = (size_t)s->m * s->n;
        float decay = (float)((double)lr * cfg->weight_decay);
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < mn; i++) { W[i] -= decay * W[i]; }
    }
    lowrank_back_project(W, s, N, cfg->low_rank_scale, 1.0f);
}

// ---- the whole step

typedef struct {
    float* Gt;      // moments' shape
    float* N;       // moments' shape
    float* phi;     // (q,)
    double* norm2;  // (q,) per column (left) or row (right) squared norms
    float* rest;    // the subspace update's scratch (SVD, GaLore or tracking) ...
    float* D;       // (m, n) ... and, later in the step, the residual, Lambda and then the update D
} StepScratch;

static StepScratch step_scratch_layout(Scratch* sc, int m, int n, int right, int r, int sketch_oversample) {
    int q = right ? m : n;
    StepScratch w;
    w.Gt = scratch_floats(sc, (size_t)q * r);
    w.N = scratch_floats(sc, (size_t)q * r);
    w.phi = scratch_floats(sc, q);
    w.norm2 = scratch_doubles(sc, q);
    Scratch galore = {NULL, 0}, track = {NULL, 0};
    galore_scratch_layout(&galore, m, n, right, r, sketch_oversample);
    track_scratch_layout(&track, m, n, right, r);
    size_t rest = galore.used > track.used ? galore.used : track.used;
    size_t first_svd = svd_any_scratch_num_floats(m, n, right, r, sketch_oversample);  // step 1's, at w.rest
    rest = first_svd > rest ? first_svd : rest;
    size_t mn = (size_t)m * n;
    // the subspace update is done before D is first written: they share memory
    w.rest = scratch_floats(sc, rest > mn ? rest : mn);
    w.D = w.rest;
    return w;
}

// floats of scratch that lowrank_adamw_step needs for an (m, n) matrix at rank r
size_t lowrank_scratch_num_floats(int m, int n, int right, int r) {
    Scratch sc = {NULL, 0};
    step_scratch_layout(&sc, m, n, right, r, -1);
    return sc.used;
}

// the same with the SVD that cfg asks for (--svd)
size_t lowrank_scratch_num_floats_cfg(int m, int n, int right, int r, const LowRankConfig* cfg) {
    Scratch sc = {NULL, 0};
    step_scratch_layout(&sc, m, n, right, r, cfg->svd_randomized ? cfg->svd_oversample : -1);
    return sc.used;
}

// 1 when step t (0 on the first) moves the subspace S: the first SVD, then
// every update_interval steps (a GaLore refresh or a tracking step)
int lowrank_subspace_moves(const LowRankConfig* cfg, int t) {
    return t == 0 || (cfg->update_interval > 0 && t % cfg->update_interval == 0);
}

// one optimizer step for one matrix: steps 1-6 of ../shared/SUBTRACK.md in turn.
// W, G: (m, n). t counts the steps already taken (0 on the first). lr is this
// step's learning rate (after the schedule).
void lowrank_adamw_step(LowRankState* s, float* W, const float* G, int t, const LowRankConfig* cfg,
                        float lr, float* scratch) {
    Scratch sc = {scratch, 0};
    StepScratch w = step_scratch_layout(&sc, s->m, s->n, s->right, s->r, -1);
    LowRankConfig at_t = *cfg;      // the SVD's Omega is drawn for this step
    at_t.svd_step = t;
    cfg = &at_t;
    // steps 1-3: the subspace, then Gt = S^T G (left) or G S (right) with the S of this step
    if (t == 0) {
        double t0 = wall_seconds();
        lowrank_init_subspace(s, G, cfg, w.rest);                       // step 1
        s->subspace_seconds += wall_seconds() - t0;
        s->subspace_updates++;
        lowrank_project(w.Gt, s, G);
    } else if (cfg->update_interval > 0 && t % cfg->update_interval == 0) {
        if (cfg->method == SUBSPACE_GALORE) {
            double t0 = wall_seconds();
            galore_refresh_subspace(s, G, cfg, w.rest);                 // steps 2 and 3
            s->subspace_seconds += wall_seconds() - t0;
            lowrank_project(w.Gt, s, G);
        } else {
            lowrank_project(w.Gt, s, G);  // A, reused by the tracking step
            double t0 = wall_seconds();
            subtrack_track_subspace(s, w.Gt, G, cfg, w.rest);           // steps 2 and 3, Gt updated
            s->subspace_seconds += wall_seconds() - t0;
        }
        s->subspace_updates++;
    } else {
        lowrank_project(w.Gt, s, G);
    }
    if (cfg->adafactor) {
        lowrank_adafactor_in_subspace(W, s, w.N, w.Gt, t, cfg, lr, w.norm2);   // steps 4 and 6, Adafactor's
        return;
    }
    // step 5's residual G - S Gt comes before step 4, as on the GPU, whose step 4
    // kernel also takes the residual's norms
    if (cfg->recovery_scaling) { lowrank_residual(w.D, s, G, w.Gt); }
    lowrank_adam_in_subspace(s, w.N, w.Gt, cfg);                        // step 4
    if (cfg->recovery_scaling) {
        lowrank_recovery_scaling(s, w.D, w.N, w.Gt, cfg, w.phi, w.norm2);   // step 5
    }
    lowrank_apply_update(W, s, w.N, cfg->recovery_scaling ? w.D : NULL, t, cfg, lr);   // step 6
}

// ----------------------------------------------------------------------------
// training: settings and flags
//
// flag names follow the authors' torchrun_main.py, so their scripts run as
// written. there are two sets of defaults, chosen by --model_config:
//   - our presets (kjv_small, kjv_test, tiny, awkward) get ours: tuned for the
//     embedded corpus, with the SubTrack++ switches on. the no-argument run is
//     the tuned SubTrack++ demo.
//   - the authors' configs (a llama_* preset or a .json file) get the
//     defaults of torchrun_main.py for every flag the command line does not
//     give, with the switches off as their store_true flags are, so that
//     their scripts mean here what they mean there.
// switches may be given bare, as there, or followed by 0/1/true/false.

#define DEFAULT_MAX_LENGTH 128
#define TRAIN_MAX_FLAGS 96

typedef struct {
    // model and data
    char model_config[512];
    char train_data[512];
    char val_data[512];
    char decoder_path[512];
    int batch_size;          // B, sequences per micro step
    int total_batch_size;    // sequences per optimizer step; a multiple of B (0: B x gradient_accumulation)
    int gradient_accumulation; // micro steps per optimizer step (0: total_batch_size / B)
    int max_length;          // T; 0 = min(DEFAULT_MAX_LENGTH, the model's max_seq_len)
    int seed;
    int shuffle;
    // schedule
    int num_training_steps;
    char max_train_tokens[32]; // a token budget (N, NM, NB): sets num_training_steps (train_config_token_budget)
    int warmup_steps;
    char scheduler[24];      // cosine | linear | cosine_restarts
    int cycle_length;        // cosine_restarts: steps between restarts (the authors' restart_every); 0 not given
    int restart_warmup_steps; // cosine_restarts: the warmup after each restart
    float min_lr_ratio;
    float lr;
    float lr_non_matrix;     // ours: the peak lr of the embeddings, lm_head and norms; 0: lr
    float grad_clipping;     // max global grad norm; 0 = off
    // optimizer
    char optimizer[40];      // adamw | low_rank_adamw | adam (= adamw when weight_decay is 0)
    char subspace_update_method[16]; // galore | subtrack
    int rank;
    float low_rank_scale;
    int subspace_update_interval;
    char proj_type[16];      // std: project the smaller side
    float st_init_step_size;
    char st_step_size_scheduler[24]; // constant | iterative_decrease
    float st_step_size_coef;
    float st_noise_sigma2;
    float st_subspace_coef;
    int adaptive_optimizer;
    int recovery_scaling;
    float norm_growth_limit;
    int norm_growth_limiter_off;
    int rand_proj;
    float rand_ratio;
    float weight_decay;
    float beta1, beta2, eps;
    // evaluation, sampling, logging, checkpoints
    int eval_every;
    int eval_batches;
    int sample_every;
    int gen_tokens;
    int top_k;
    float temperature;
    char log_file[512];
    int save_every;
    char save_dir[512];
    char continue_from[512];
    char allow_changed[512]; // settings a resume may change: comma-separated names
    int print_every;
    float progress_interval; // seconds between progress lines of a long phase
    int stop_at_step;        // stop after this step as if interrupted (0 = run to the end)
    char dtype[16];          // float32 | bfloat16 (the CUDA trainer only)
    int activation_checkpointing; // the CUDA trainer recomputes each layer in the backward; a no-op on the CPU
    int memory_plan;         // print the CUDA trainer's device-memory plan and exit
    int master_weights;      // 1: fp32 master weights; 0: bf16 weights, updated with stochastic rounding
    char subspace_dtype[16]; // float32 | bfloat16: how the low-rank subspaces S are kept
    char svd[16];            // exact | randomized: the subspace SVD (first step, GaLore refresh)
    int svd_power_iters;     // --svd randomized: subspace (power) iterations
    int svd_oversample;      // --svd randomized: extra sketch columns beyond R
    // data parallel: which process this is, of how many (process_group_resolve);
    // 0, -1 and "" take them from the launcher's environment
    int num_processes;       // ranks in all
    int process_rank;        // this one, 0..num_processes-1
    int gpus_per_node;       // GPUs a node gives its ranks
    char init_method[256];   // how the ranks find each other: fs:DIR | tcp:HOST:PORT
    int collective_timeout;  // seconds a rank waits for the others (meeting, collectives) before it stops
    int zero_stage;          // 1: the optimizer states sharded over the ranks (ZeRO-1); 0: on every rank
    // the authors' flags that mean nothing in one process here
    int single_gpu, use_hf_model, workers;
    char tags[256], name[256];
    // set by train_config_from_args
    int authors_defaults;    // 1: the model is one of the authors' configs, and so are the defaults
    int ranks;               // set by train_run: the data-parallel processes (train_config_for_ranks)
    int this_rank;           // set by train_run: this process's place among them
    unsigned char given[TRAIN_MAX_FLAGS]; // given[i]: TRAIN_FLAGS[i] was on the command line
} TrainConfig;

void train_config_defaults(TrainConfig* t) {
    memset(t, 0, sizeof *t);
    snprintf(t->model_config, sizeof t->model_config, "%s", "kjv_small");
    snprintf(t->train_data, sizeof t->train_data, "%s", DEFAULT_TRAIN_DATA);
    snprintf(t->val_data, sizeof t->val_data, "%s", DEFAULT_VAL_DATA);
    snprintf(t->decoder_path, sizeof t->decoder_path, "%s", DEFAULT_DECODER);
    t->batch_size = 8;
    t->total_batch_size = 8;
    t->process_rank = -1;
    t->collective_timeout = 900;
    t->ranks = 1;
    t->gradient_accumulation = 0;
    t->max_length = 0;
    t->seed = 0;
    t->shuffle = 1;
    t->num_training_steps = 600;
    t->warmup_steps = 60;
    snprintf(t->scheduler, sizeof t->scheduler, "%s", "cosine");
    t->min_lr_ratio = 0.1f;
    t->lr = 3e-3f;
    t->lr_non_matrix = 0.0f;
    t->grad_clipping = 1.0f;
    snprintf(t->optimizer, sizeof t->optimizer, "%s", "low_rank_adamw");
    snprintf(t->subspace_update_method, sizeof t->subspace_update_method, "%s", "subtrack");
    t->rank = 32;
    t->low_rank_scale = 0.25f;
    t->subspace_update_interval = 50;
    snprintf(t->proj_type, sizeof t->proj_type, "%s", "std");
    t->st_init_step_size = 10.0f;
    snprintf(t->st_step_size_scheduler, sizeof t->st_step_size_scheduler, "%s", "constant");
    t->st_step_size_coef = 1.0f;
    t->st_noise_sigma2 = 0.0f;
    t->st_subspace_coef = 1.0f;
    t->adaptive_optimizer = 1;
    t->recovery_scaling = 1;
    t->norm_growth_limit = 1.01f;
    t->norm_growth_limiter_off = 0;
    t->rand_proj = 0;
    t->rand_ratio = 2.0f;
    t->weight_decay = 0.0f;
    t->beta1 = 0.9f;
    t->beta2 = 0.999f;
    t->eps = 1e-6f;
    t->eval_every = 100;
    t->eval_batches = 20;
    t->sample_every = 200;
    t->gen_tokens = 64;
    t->top_k = 40;
    t->temperature = 1.0f;
    t->save_every = 0;
    t->print_every = 10;
    t->progress_interval = 2.0f;
    snprintf(t->dtype, sizeof t->dtype, "%s", "float32");
    t->master_weights = 1;
    snprintf(t->subspace_dtype, sizeof t->subspace_dtype, "%s", "float32");
    snprintf(t->svd, sizeof t->svd, "%s", "exact");
    t->svd_power_iters = SVD_POWER_ITERS_DEFAULT;
    t->svd_oversample = SVD_OVERSAMPLE_DEFAULT;
    t->workers = 8;
    snprintf(t->name, sizeof t->name, "%s", "test");
}

// the defaults of the authors' torchrun_main.py, for a run on one of their
// configs. flags they do not have (data paths, sampling, printing) keep ours.
// their --save_dir default, checkpoints/<config>-<date>, is set in
// train_config_from_args, which knows the config's name
static void train_config_authors_defaults(TrainConfig* t) {
    t->total_batch_size = 0;          // theirs: None, then batch_size x gradient_accumulation
    t->max_length = 256;
    snprintf(t->optimizer, sizeof t->optimizer, "%s", "adam");  // theirs: "Adam"
    t->lr = 1e-4f;
    snprintf(t->scheduler, sizeof t->scheduler, "%s", "cosine");
    t->min_lr_ratio = 0.1f;
    t->weight_decay = 0.0f;
    t->warmup_steps = 1000;
    t->eval_every = 5000;
    t->num_training_steps = 10000;
    t->save_every = 10000;
    t->seed = 0;
    t->grad_clipping = 0.0f;
    t->rank = 128;
    t->subspace_update_interval = 50;
    t->low_rank_scale = 1.0f;
    t->st_init_step_size = 1e-3f;
    t->adaptive_optimizer = 0;
    t->recovery_scaling = 0;
    t->norm_growth_limiter_off = 0;
    t->norm_growth_limit = 1.01f;
}

typedef enum { FLAG_INT, FLAG_FLOAT, FLAG_STRING, FLAG_SWITCH } FlagKind;

typedef struct {
    const char* name;
    FlagKind kind;
    size_t offset;  // of the field in TrainConfig
    size_t size;    // of a string field
    const char* help;
    const char* note; // NULL, or what the flag does not do here (shown in the settings table)
} FlagSpec;

#define FLAG(name, kind, help) {"--" #name, kind, offsetof(TrainConfig, name), sizeof(((TrainConfig*)0)->name), help, NULL}
#define FLAG_NOTE(name, kind, help, note) \
    {"--" #name, kind, offsetof(TrainConfig, name), sizeof(((TrainConfig*)0)->name), help, note}

static const FlagSpec TRAIN_FLAGS[] = {
    FLAG(model_config, FLAG_STRING, "preset name (see below) or a Hugging Face LlamaConfig .json"),
    FLAG(train_data, FLAG_STRING, "glob of training shards (llm.c format)"),
    FLAG(val_data, FLAG_STRING, "glob of validation shards"),
    FLAG(decoder_path, FLAG_STRING, "token decoder file, for printing samples"),
    FLAG(batch_size, FLAG_INT, "B: sequences per micro step"),
    FLAG(total_batch_size, FLAG_INT, "sequences per optimizer step, a multiple of B; 0 = B x gradient_accumulation"),
    FLAG(gradient_accumulation, FLAG_INT, "micro steps per optimizer step; 0 = total_batch_size / B"),
    FLAG(max_length, FLAG_INT, "T: tokens per sequence; 0 = min(128, the model's max_seq_len)"),
    FLAG(seed, FLAG_INT, "seed of weights, data order and sampling"),
    FLAG(shuffle, FLAG_SWITCH, "shuffle training windows (0: sequential)"),
    FLAG(num_training_steps, FLAG_INT, "optimizer steps; the schedule ends here"),
    FLAG(max_train_tokens, FLAG_STRING, "a token budget, N or with M or B (100M, 1B): sets --num_training_steps to "
         "N / (total_batch_size x max_length)"),
    FLAG(warmup_steps, FLAG_INT, "linear warmup steps"),
    FLAG(scheduler, FLAG_STRING, "after warmup: cosine (to min_lr_ratio x lr) | linear (to 0) | cosine_restarts "
         "(the cosine, restarted every --cycle_length steps)"),
    FLAG(cycle_length, FLAG_INT, "cosine_restarts: steps between restarts, a divisor of --num_training_steps"),
    FLAG(restart_warmup_steps, FLAG_INT, "cosine_restarts: the linear warmup after each restart"),
    FLAG(min_lr_ratio, FLAG_FLOAT, "final lr as a fraction of --lr"),
    FLAG(lr, FLAG_FLOAT, "peak learning rate"),
    FLAG(lr_non_matrix, FLAG_FLOAT, "ours (experiments): the peak lr of the embeddings, lm_head and norms, "
         "scheduled as --lr, with any optimizer; 0 = --lr"),
    FLAG(grad_clipping, FLAG_FLOAT, "clip the global gradient norm to this; 0 = off"),
    FLAG(optimizer, FLAG_STRING, "adamw | low_rank_adamw | adam (weight decay as L2 on the gradient, as "
         "torch.optim.Adam) | sgd (momentum --beta1, L2 decay, as torch.optim.SGD) | adafactor "
         "(transformers' Adafactor as the authors set it; a first moment only with --beta1 above 0) | "
         "low_rank_adafactor (that Adafactor in the subspace; no moment rotation or recovery scaling) | adam8bit "
         "(bitsandbytes' Adam8bit: 8-bit moments in blocks of 256, fp32 below 4096 values)"),
    FLAG(subspace_update_method, FLAG_STRING, "galore (SVD) | subtrack (geodesic tracking)"),
    FLAG(rank, FLAG_INT, "R: rank of the gradient subspace"),
    FLAG(low_rank_scale, FLAG_FLOAT, "alpha: scale of the low-rank update"),
    FLAG(subspace_update_interval, FLAG_INT, "k: steps between subspace updates"),
    FLAG(proj_type, FLAG_STRING, "the side of each matrix that is projected: std (the smaller one; the left of a "
         "square one), reverse_std (the other one), left or right"),
    FLAG(st_init_step_size, FLAG_FLOAT, "eta: geodesic step size"),
    FLAG(st_step_size_scheduler, FLAG_STRING, "constant (eta) | iterative_decrease (eta / t at the tracking step "
         "of step t, as the authors' projector)"),
    FLAG_NOTE(st_step_size_coef, FLAG_FLOAT, "the authors' step-size coefficient",
              "no-op: their code stores it and never uses it"),
    FLAG_NOTE(st_noise_sigma2, FLAG_FLOAT, "the authors' tracking noise; only 0",
              "no-op: their code stores it and never uses it"),
    FLAG_NOTE(st_subspace_coef, FLAG_FLOAT, "the authors' subspace coefficient; only 1",
              "no-op: their code stores it and never uses it"),
    FLAG(adaptive_optimizer, FLAG_SWITCH, "rotate Adam's moments when the subspace moves"),
    FLAG(recovery_scaling, FLAG_SWITCH, "add back the scaled out-of-subspace gradient"),
    FLAG(norm_growth_limit, FLAG_FLOAT, "zeta: max growth of the recovery term's norm per step"),
    FLAG(norm_growth_limiter_off, FLAG_SWITCH, "turn the norm-growth limiter off"),
    FLAG(rand_proj, FLAG_SWITCH, "GoLore: random subspaces in place of the SVD's from step rand_ratio x "
         "num_training_steps on (GaLore's refreshes; SubTrack++ takes an SVD only at its first step)"),
    FLAG(rand_ratio, FLAG_FLOAT, "GoLore: its random subspaces start at step rand_ratio x num_training_steps "
         "(with --rand_proj)"),
    FLAG(weight_decay, FLAG_FLOAT, "decoupled weight decay"),
    FLAG(beta1, FLAG_FLOAT, "Adam beta1 (refused on the authors' configs: theirs reaches only SGD and Adafactor)"),
    FLAG(beta2, FLAG_FLOAT, "Adam beta2"),
    FLAG(eps, FLAG_FLOAT, "Adam epsilon (on the authors' configs 1e-8 for adam and adamw, torch's default)"),
    FLAG(eval_every, FLAG_INT, "validate every N steps; 0 = only at the end"),
    FLAG(eval_batches, FLAG_INT, "validation batches (a fixed set)"),
    FLAG(sample_every, FLAG_INT, "print generated text every N steps; 0 = only at the end"),
    FLAG(gen_tokens, FLAG_INT, "tokens to generate per sample"),
    FLAG(top_k, FLAG_INT, "sample among the k most likely tokens; 0 = all"),
    FLAG(temperature, FLAG_FLOAT, "sampling temperature"),
    FLAG(log_file, FLAG_STRING, "write a CSV log: step,train_loss,val_loss,lr,grad_norm,ms,tokens_per_s"),
    FLAG(save_every, FLAG_INT, "save a checkpoint every N steps (needs --save_dir); 0 = only at the end"),
    FLAG(save_dir, FLAG_STRING, "checkpoint directory (created if missing)"),
    FLAG(continue_from, FLAG_STRING, "resume exactly from the checkpoint in this directory"),
    FLAG(allow_changed, FLAG_STRING, "settings a resume may change from the checkpoint's, e.g. lr,num_training_steps"),
    FLAG(print_every, FLAG_INT, "print a progress line every N steps"),
    FLAG(progress_interval, FLAG_FLOAT, "seconds between progress lines of a long phase (building, SVD, evaluation)"),
    FLAG(stop_at_step, FLAG_INT, "stop after this step (saving if --save_dir), as if interrupted; 0 = run to the end"),
    FLAG(dtype, FLAG_STRING, "float32 | bfloat16 (bf16) (bfloat16: the CUDA trainer only)"),
    FLAG(activation_checkpointing, FLAG_SWITCH, "keep only each layer's input and recompute the layer in the "
         "backward (the CUDA trainer; a no-op on the CPU, which keeps everything)"),
    FLAG(master_weights, FLAG_SWITCH, "1: fp32 master weights; 0: the weights are bf16 (on the CPU and with "
         "--dtype float32: bf16 values in fp32), each update rounded to bf16 stochastically (seeded, resumable)"),
    FLAG(subspace_dtype, FLAG_STRING, "float32 | bfloat16 (bf16): the low-rank subspaces S; bfloat16 halves "
         "them (on the CPU: bf16 values in fp32), each change of S rounded to bf16 stochastically (seeded, "
         "resumable)"),
    FLAG(svd, FLAG_STRING, "exact | randomized: the subspace SVD (every low-rank method's first step, GaLore's "
         "refreshes); randomized: a Gaussian sketch of R + svd_oversample columns, svd_power_iters subspace "
         "iterations and Rayleigh-Ritz (Halko-Martinsson-Tropp), seeded, resumable"),
    FLAG(svd_power_iters, FLAG_INT, "--svd randomized: subspace (power) iterations, 0..10"),
    FLAG(svd_oversample, FLAG_INT, "--svd randomized: sketch columns beyond R (capped at min(m, n)), 0..256"),
    FLAG(memory_plan, FLAG_SWITCH, "print every device buffer the CUDA trainer would allocate for these flags, "
         "and the peak, then exit (needs no GPU)"),
    FLAG(num_processes, FLAG_INT, "data-parallel processes (0: from the launcher: WORLD_SIZE of torchrun, "
         "OMPI_COMM_WORLD_SIZE of mpirun, SLURM_NTASKS of srun; else 1)"),
    FLAG(process_rank, FLAG_INT, "this process's rank (-1: RANK, OMPI_COMM_WORLD_RANK or SLURM_PROCID; else 0)"),
    FLAG(gpus_per_node, FLAG_INT, "GPUs each node gives its ranks (0: every GPU the process sees); a rank uses "
         "GPU LOCAL_RANK (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID), else its rank modulo the GPUs"),
    FLAG(init_method, FLAG_STRING, "how the ranks meet: fs:DIR (a directory every rank sees) or tcp:HOST:PORT "
         "(default with more than one process: tcp:MASTER_ADDR:MASTER_PORT; under torchrun, whose agent "
         "holds MASTER_PORT, MASTER_PORT + 1)"),
    FLAG(zero_stage, FLAG_INT, "with several processes: 1 = each optimizer state (and with bf16 weights its fp32 "
         "master) lives on one rank, its owner, which alone updates those weights and sends them to the others "
         "(ZeRO stage 1: about 1/N of the states a rank); 0 = every rank holds every state (as DDP)"),
    FLAG(collective_timeout, FLAG_INT, "seconds a rank waits for the others (to meet, in a collective) before it "
         "stops with a message: a dead or hung rank ends the run instead of hanging it; >= 10"),
    FLAG_NOTE(single_gpu, FLAG_SWITCH, "the authors' switch to skip DDP", "no-op: one process"),
    FLAG_NOTE(use_hf_model, FLAG_SWITCH, "the authors' switch for transformers' LlamaForCausalLM",
              "no-op: the same LLaMA either way"),
    FLAG_NOTE(workers, FLAG_INT, "the authors' data loader workers", "no-op: shards are read directly"),
    FLAG_NOTE(tags, FLAG_STRING, "the authors' wandb tags", "no-op: no wandb"),
    FLAG_NOTE(name, FLAG_STRING, "the authors' wandb run name", "no-op: no wandb"),
};
#define NUM_TRAIN_FLAGS ((int)(sizeof(TRAIN_FLAGS) / sizeof(TRAIN_FLAGS[0])))

// low-rank AdamW, whole-step or per layer (the same arithmetic: each matrix
// updated as soon as its gradient is complete, in the CUDA trainer)
static int optimizer_name_low_rank(const char* name) {
    return strcmp(name, "low_rank_adamw") == 0 || strcmp(name, "low_rank_adamw_per_layer") == 0 ||
           strcmp(name, "low_rank_adafactor") == 0 ||
           strcmp(name, "low_rank_adamw8bit") == 0 || strcmp(name, "low_rank_adamw8bit_per_layer") == 0;
}

// 8-bit states: M and V of the low-rank matrices, and the AdamW moments of
// the embeddings and lm_head, blockwise quantized (see quantize_blockwise)
static int optimizer_name_8bit(const char* name) { return strstr(name, "adamw8bit") != NULL; }

static int optimizer_name_per_layer(const char* name) {
    size_t n = strlen(name), k = strlen("_per_layer");
    return n > k && strcmp(name + n - k, "_per_layer") == 0;
}

static void flag_value_string(const FlagSpec* f, const TrainConfig* t, char* out, size_t cap) {
    const char* base = (const char*)t + f->offset;
    switch (f->kind) {
        case FLAG_INT: snprintf(out, cap, "%d", *(const int*)base); break;
        case FLAG_SWITCH: snprintf(out, cap, "%s", *(const int*)base ? "on" : "off"); break;
        case FLAG_FLOAT: snprintf(out, cap, "%g", *(const float*)base); break;
        case FLAG_STRING: snprintf(out, cap, "%s", base[0] ? base : "(none)"); break;
    }
}

static int flag_index(const char* name) {
    for (int j = 0; j < NUM_TRAIN_FLAGS; j++) {
        if (strcmp(name, TRAIN_FLAGS[j].name) == 0) { return j; }
    }
    return -1;
}

// was --name on the command line (name with its dashes)
int train_flag_given(const TrainConfig* t, const char* name) {
    int j = flag_index(name);
    return j >= 0 && t->given[j];
}

#define AUTHORS_DEFAULTS_RULE \
    "defaults: our presets (kjv_small, kjv_test, tiny, awkward) get the defaults below, tuned for the embedded\n" \
    "corpus with the SubTrack++ switches on; the authors' configs (a llama_* preset or a .json file) get the\n" \
    "defaults of the authors' torchrun_main.py for every flag not given, with the switches off, so their\n" \
    "scripts mean the same here.\n"

void train_usage(FILE* out, const char* program, const char* default_dtype) {
    TrainConfig d, a;
    train_config_defaults(&d);
    snprintf(d.dtype, sizeof d.dtype, "%s", default_dtype);
    a = d;
    train_config_authors_defaults(&a);
    fprintf(out, "usage: %s [flags]\n"
                 "trains a LLaMA with SubTrack++ (or a baseline) on llm.c-format token shards.\n\n"
                 AUTHORS_DEFAULTS_RULE "\n", program);
    for (int i = 0; i < NUM_TRAIN_FLAGS; i++) {
        char v[64], va[64], theirs[96] = "";
        flag_value_string(&TRAIN_FLAGS[i], &d, v, sizeof v);
        flag_value_string(&TRAIN_FLAGS[i], &a, va, sizeof va);
        if (strcmp(TRAIN_FLAGS[i].name, "--save_dir") == 0) { snprintf(va, sizeof va, "%s", "checkpoints/<config>-<date>"); }
        if (strcmp(v, va) != 0) { snprintf(theirs, sizeof theirs, "; authors' %s", va); }
        fprintf(out, "  %-28s %s%s%s (default %s%s)\n", TRAIN_FLAGS[i].name, TRAIN_FLAGS[i].help,
                TRAIN_FLAGS[i].note ? "; " : "", TRAIN_FLAGS[i].note ? TRAIN_FLAGS[i].note : "", v, theirs);
    }
    fprintf(out, "  %-28s this text\n\npresets:", "--help");
    for (int i = 0; i < NUM_LLAMA_PRESETS; i++) { fprintf(out, " %s", LLAMA_PRESETS[i].name); }
    fprintf(out, "\n");
}

static int parse_int(const char* s, int* out) {
    char* end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < INT32_MIN || v > INT32_MAX) { return 0; }
    *out = (int)v;
    return 1;
}

// a finite float32. strtof flags a subnormal result (1e-45) as a range error
// too: that one is a valid float32 and is taken; an overflow, or an underflow
// to 0 of a nonzero number, is not
static int parse_float(const char* s, float* out) {
    char* end;
    errno = 0;
    float v = strtof(s, &end);
    if (end == s || *end != '\0' || !isfinite(v)) { return 0; }
    if (errno == ERANGE && v == 0.0f) { return 0; }
    if (errno != 0 && errno != ERANGE) { return 0; }
    *out = v;
    return 1;
}

static int parse_switch_value(const char* s, int* out) {
    if (strcmp(s, "1") == 0 || strcmp(s, "true") == 0 || strcmp(s, "on") == 0) { *out = 1; return 1; }
    if (strcmp(s, "0") == 0 || strcmp(s, "false") == 0 || strcmp(s, "off") == 0) { *out = 0; return 1; }
    return 0;
}

// parses argv into t (which holds the defaults) and marks each flag given.
// returns 0 on success, 1 if --help was asked, -1 on a bad flag (message in err)
int train_parse_flags(TrainConfig* t, int argc, char** argv, char* err, size_t errlen) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) { return 1; }
        // --flag value, or --flag=value as argparse also takes it
        char name[128];
        const char* eq = strchr(argv[i], '=');
        const char* inline_value = NULL;
        if (eq != NULL && strncmp(argv[i], "--", 2) == 0 && (size_t)(eq - argv[i]) < sizeof name) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - argv[i]), argv[i]);
            inline_value = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", argv[i]);
        }
        int j = flag_index(name);
        if (j < 0) {
            snprintf(err, errlen, "unknown flag '%s'; run with --help for the list", argv[i]);
            return -1;
        }
        const FlagSpec* f = &TRAIN_FLAGS[j];
        t->given[j] = 1;
        char* base = (char*)t + f->offset;
        if (f->kind == FLAG_SWITCH) {
            // bare, as in torchrun_main.py, or followed by 0/1/true/false
            int v = 1;
            if (inline_value != NULL) {
                if (!parse_switch_value(inline_value, &v)) {
                    snprintf(err, errlen, "flag %s: cannot use '%s' (expected 0/1/true/false/on/off)", name, inline_value);
                    return -1;
                }
            } else if (i + 1 < argc && parse_switch_value(argv[i + 1], &v)) { i++; }
            *(int*)base = v;
            continue;
        }
        if (inline_value == NULL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
            snprintf(err, errlen, "flag %s needs a value (%s)", name, f->help);
            return -1;
        }
        const char* val = inline_value != NULL ? inline_value : argv[++i];
        int ok = 1;
        if (f->kind == FLAG_INT) { ok = parse_int(val, (int*)base); }
        else if (f->kind == FLAG_FLOAT) { ok = parse_float(val, (float*)base); }
        else {
            if (strlen(val) >= f->size) { ok = 0; }
            else { snprintf(base, f->size, "%s", val); }
        }
        if (!ok) {
            snprintf(err, errlen, "flag %s: cannot use '%s' (%s)", name, val,
                     f->kind == FLAG_INT ? "expected an integer" :
                     f->kind == FLAG_FLOAT ? "expected a finite number within float32's range" : "too long");
            return -1;
        }
    }
    return 0;
}

// the model config's name without a directory and a .json ending:
// configs/llama_60m.json -> llama_60m
static void model_config_stem(const char* model_config, char* out, size_t cap) {
    const char* slash = strrchr(model_config, '/');
    snprintf(out, cap, "%s", slash != NULL ? slash + 1 : model_config);
    size_t n = strlen(out);
    if (n > 5 && strcmp(out + n - 5, ".json") == 0) { out[n - 5] = '\0'; }
}

// 1 when the model is one of the authors' configs: a llama_* preset, or a
// .json file (theirs, or any Hugging Face LlamaConfig)
int model_config_is_authors(const char* model_config) {
    size_t n = strlen(model_config);
    if (n > 5 && strcmp(model_config + n - 5, ".json") == 0) { return 1; }
    for (int i = 0; i < NUM_LLAMA_PRESETS; i++) {
        const char* p = LLAMA_PRESETS[i].name;
        if (strncmp(p, "llama_", 6) == 0 && (strcmp(model_config, p) == 0 || strcmp(model_config, p + 6) == 0)) {
            return 1;
        }
    }
    return 0;
}

// the whole command line: picks the defaults by --model_config (see the top of
// this section), parses, and resolves what depends on other flags. program
// and default_dtype come from the trainer (float32 on the CPU, bfloat16 on the
// GPU, as the authors' default is bfloat16 where the device supports it).
// returns 0, 1 for --help, or -1 with a message in err
int train_config_from_args(TrainConfig* t, int argc, char** argv, const char* default_dtype,
                           char* err, size_t errlen) {
    train_config_defaults(t);
    snprintf(t->dtype, sizeof t->dtype, "%s", default_dtype);
    // the last --model_config wins, as everywhere on the command line
    const char* model = t->model_config;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--model_config") == 0) { model = argv[i + 1]; }
    }
    if (model_config_is_authors(model)) {
        train_config_authors_defaults(t);
        t->authors_defaults = 1;
        // theirs: checkpoints/<config>-<date and time>
        char stem[600], when[32];
        model_config_stem(model, stem, sizeof stem);
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        strftime(when, sizeof when, "%Y-%m-%d-%H-%M-%S", &tmv);
        snprintf(t->save_dir, sizeof t->save_dir, "checkpoints/%s-%s", stem, when);
    }
    int rc = train_parse_flags(t, argc, argv, err, errlen);
    if (rc != 0) { return rc; }
    // names as torchrun_main.py compares them: lower case; bf16 is bfloat16
    for (char* p = t->optimizer; *p; p++) { *p = (char)tolower((unsigned char)*p); }
    if (strcmp(t->dtype, "bf16") == 0) { snprintf(t->dtype, sizeof t->dtype, "%s", "bfloat16"); }
    if (strcmp(t->subspace_dtype, "bf16") == 0) { snprintf(t->subspace_dtype, sizeof t->subspace_dtype, "%s", "bfloat16"); }
    // batch sizes, as torchrun_main.py resolves them on one process
    int total_given = train_flag_given(t, "--total_batch_size") || (!t->authors_defaults && t->gradient_accumulation == 0);
    if (t->batch_size > 0 && t->gradient_accumulation >= 0) {
        if (!total_given || t->total_batch_size == 0) {
            t->total_batch_size = t->batch_size * (t->gradient_accumulation > 0 ? t->gradient_accumulation : 1);
        }
        if (t->gradient_accumulation == 0) { t->gradient_accumulation = t->total_batch_size / t->batch_size; }
    }
    // SGD's momentum and Adafactor's first moment are their --beta1, whose default is 0 (ours: 0.9, Adam's)
    if (t->authors_defaults && (strcmp(t->optimizer, "sgd") == 0 || strstr(t->optimizer, "adafactor") != NULL) &&
        !train_flag_given(t, "--beta1")) {
        t->beta1 = 0.0f;
    }
    // Adafactor in the subspace has no moment rotation and no recovery scaling (the
    // authors' LowRankAdafactor has neither): our presets' SubTrack++ switches go off
    // with it, unless they are given (then train_config_problem refuses them)
    if (strcmp(t->optimizer, "low_rank_adafactor") == 0) {
        if (!train_flag_given(t, "--adaptive_optimizer")) { t->adaptive_optimizer = 0; }
        if (!train_flag_given(t, "--recovery_scaling")) { t->recovery_scaling = 0; }
    }
    // Adam's eps: torch.optim.Adam/AdamW's default for adam and adamw, the
    // authors' LowRankAdamW's (the same as ours) for low_rank_adamw
    if (t->authors_defaults && !train_flag_given(t, "--eps") &&
        (strcmp(t->optimizer, "adam") == 0 || strcmp(t->optimizer, "adamw") == 0 ||
         strcmp(t->optimizer, "adam8bit") == 0)) {
        t->eps = 1e-8f;
    }
    return 0;
}

// the tokens of a --max_train_tokens value: digits, then optionally M (10^6)
// or B (10^9), as the authors' max_train_tokens_to_number reads it; -1 when
// it is not one, or above 2^62
int64_t token_budget_parse(const char* s) {
    int64_t n = 0;
    const char* p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > ((int64_t)1 << 62) / 10) { return -1; }
        n = n * 10 + (*p - '0');
    }
    if (p == s) { return -1; }
    int64_t unit = *p == 'M' ? 1000000 : *p == 'B' ? 1000000000 : 1;
    if (unit > 1) { p++; }
    if (*p != '\0' || n > ((int64_t)1 << 62) / unit) { return -1; }
    return n * unit;
}

// the schedule's settings against num_training_steps. returns NULL or what is wrong (in msg)
static const char* schedule_problem(const TrainConfig* t, char* msg, size_t cap) {
    int restarts = strcmp(t->scheduler, "cosine_restarts") == 0;
    if (strcmp(t->scheduler, "cosine") != 0 && strcmp(t->scheduler, "linear") != 0 && !restarts) {
        snprintf(msg, cap, "--scheduler '%s' is not cosine, linear or cosine_restarts", t->scheduler);
        return msg;
    }
    if (!restarts) {
        if (t->cycle_length != 0 || train_flag_given(t, "--restart_warmup_steps")) {
            snprintf(msg, cap, "--cycle_length and --restart_warmup_steps belong to --scheduler cosine_restarts; "
                     "add it, or drop them");
            return msg;
        }
        return NULL;
    }
    // the authors' get_cosine_schedule_with_multiple_warmups asserts the same
    // (their torchrun_main.py passes neither value, so there it always stops)
    if (t->cycle_length <= 0 || !train_flag_given(t, "--restart_warmup_steps") || t->restart_warmup_steps < 0) {
        snprintf(msg, cap, "--scheduler cosine_restarts needs --cycle_length N (steps between restarts, > 0) and "
                 "--restart_warmup_steps M (the warmup after each restart, >= 0)");
        return msg;
    }
    if (t->num_training_steps % t->cycle_length != 0) {
        snprintf(msg, cap, "--num_training_steps %d is not a multiple of --cycle_length %d; cosine_restarts "
                 "restarts whole cycles", t->num_training_steps, t->cycle_length);
        return msg;
    }
    if (t->warmup_steps >= t->cycle_length || t->warmup_steps >= t->num_training_steps) {
        snprintf(msg, cap, "--warmup_steps %d must be below --cycle_length %d (the first restart must come after "
                 "the warmup) and below --num_training_steps %d", t->warmup_steps, t->cycle_length,
                 t->num_training_steps);
        return msg;
    }
    return NULL;
}

// --max_train_tokens: num_training_steps = tokens / (total_batch_size x T),
// once T is known; then the schedule's checks. (the authors' args_utils
// divides by total_batch_size alone, counting sequences as tokens.) returns
// NULL or what is wrong (in msg)
const char* train_config_token_budget(TrainConfig* t, int T, char* msg, size_t cap) {
    if (t->max_train_tokens[0] == '\0') { return NULL; }
    int64_t tokens = token_budget_parse(t->max_train_tokens);
    int64_t per_step = (int64_t)t->total_batch_size * T;
    int64_t steps = tokens / per_step;
    if (steps < 1 || steps > INT32_MAX) {
        snprintf(msg, cap, "--max_train_tokens %s is %s of %d sequences x %d tokens (%lld tokens a step)",
                 t->max_train_tokens, steps < 1 ? "less than one step" : "more than 2^31 steps", t->total_batch_size,
                 T, (long long)per_step);
        return msg;
    }
    t->num_training_steps = (int)steps;
    return schedule_problem(t, msg, cap);
}

// checks the settings that do not need the model or data. returns NULL or a message
// ---- the process group: which rank this process is, of how many
//
// a data-parallel run is one process per GPU, started by a launcher that
// tells each process its place in environment variables. the first launcher
// found, innermost first, gives the rank and the world size; the flags
// override either:
//   torchrun (--no-python):  RANK, WORLD_SIZE, LOCAL_RANK
//   mpirun (Open MPI):       OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK
//   srun (Slurm):            SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
// torchrun and mpirun come first because they often run inside a Slurm
// allocation, whose variables then describe the launcher's own processes.
// Slurm counts only under srun: an sbatch script has SLURM_NTASKS but no
// SLURM_PROCID, and is one process. with more than one process the ranks meet
// through --init_method (fs:DIR, or tcp:HOST:PORT, by default torchrun's
// MASTER_ADDR and MASTER_PORT)

typedef const char* (*EnvLookup)(const char* name);

typedef struct {
    int rank, size;
    int local_rank;          // the GPU among the node's; -1 not given (then rank modulo the GPUs seen)
    int gpus_per_node;       // 0 not given
    char init_method[300];   // "" for one process
    char source[96];         // where rank and size came from, for messages
    int timeout;             // --collective_timeout, seconds
} ProcessGroup;

typedef struct {
    const char* launcher;
    const char* rank, *size, *local;
} LauncherEnv;

static const LauncherEnv LAUNCHER_ENVS[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

// a whole decimal integer in 0..max, else -1
static long env_int(const char* v, long max) {
    if (v == NULL || *v == '\0') { return -1; }
    long x = 0;
    for (const char* c = v; *c; c++) {
        if (*c < '0' || *c > '9' || x > max / 10) { return -1; }
        x = x * 10 + (*c - '0');
    }
    return x <= max ? x : -1;
}

// the process's environment, as an EnvLookup
static const char* env_process(const char* name) { return getenv(name); }

// pg from the flags of t and the environment env (getenv in the trainers; a
// table in the tests). returns NULL, or what is wrong, in msg
const char* process_group_resolve(ProcessGroup* pg, const TrainConfig* t, EnvLookup env, char* msg, size_t cap) {
    memset(pg, 0, sizeof *pg);
    pg->size = 1;
    pg->local_rank = -1;
    snprintf(pg->source, sizeof pg->source, "one process (no launcher's variables)");
    const LauncherEnv* found = NULL;
    for (size_t i = 0; i < sizeof LAUNCHER_ENVS / sizeof LAUNCHER_ENVS[0] && found == NULL; i++) {
        const LauncherEnv* l = &LAUNCHER_ENVS[i];
        const char* r = env(l->rank);
        const char* n = env(l->size);
        int is_slurm = strcmp(l->launcher, "srun") == 0;
        if (is_slurm ? r == NULL : (r == NULL && n == NULL)) { continue; }
        if (r == NULL || n == NULL) {
            snprintf(msg, cap, "%s sets %s but not %s: both are needed to know this process's place; run under "
                     "%s as documented, or give --num_processes and --process_rank", l->launcher,
                     r != NULL ? l->rank : l->size, r != NULL ? l->size : l->rank, l->launcher);
            return msg;
        }
        long rv = env_int(r, 1L << 30), nv = env_int(n, 1L << 30);
        if (rv < 0 || nv < 1) {
            snprintf(msg, cap, "%s=%s, %s=%s (%s): expected whole numbers, rank >= 0 and size >= 1", l->rank, r,
                     l->size, n, l->launcher);
            return msg;
        }
        pg->rank = (int)rv;
        pg->size = (int)nv;
        const char* lr = env(l->local);
        if (lr != NULL) {
            long lv = env_int(lr, 1L << 30);
            if (lv < 0) {
                snprintf(msg, cap, "%s=%s (%s): expected a whole number >= 0", l->local, lr, l->launcher);
                return msg;
            }
            pg->local_rank = (int)lv;
        }
        snprintf(pg->source, sizeof pg->source, "%s (%s=%s, %s=%s)", l->launcher, l->rank, r, l->size, n);
        found = l;
    }
    pg->timeout = t->collective_timeout;
    if (t->collective_timeout < 10) {
        snprintf(msg, cap, "--collective_timeout %d: expected >= 10 seconds (a rank waits that long for the others "
                 "before it stops)", t->collective_timeout);
        return msg;
    }
    if (t->num_processes < 0 || t->process_rank < -1 || t->gpus_per_node < 0) {
        snprintf(msg, cap, "--num_processes %d, --process_rank %d, --gpus_per_node %d: expected >= 0 (0 or -1: "
                 "from the launcher)", t->num_processes, t->process_rank, t->gpus_per_node);
        return msg;
    }
    if (found == NULL && (t->num_processes > 1) != (t->process_rank >= 0)) {
        snprintf(msg, cap, "--num_processes %d with --process_rank %d and no launcher's variables: give both, or "
                 "start the processes with torchrun, mpirun or srun", t->num_processes, t->process_rank);
        return msg;
    }
    if (t->num_processes > 0) { pg->size = t->num_processes; }
    if (t->process_rank >= 0) { pg->rank = t->process_rank; }
    if (t->num_processes > 0 || t->process_rank >= 0) {
        snprintf(pg->source, sizeof pg->source, "--num_processes %d --process_rank %d%s%s", pg->size, pg->rank,
                 found != NULL ? " over " : "", found != NULL ? found->launcher : "");
    }
    if (pg->rank >= pg->size) {
        snprintf(msg, cap, "rank %d of %d processes (%s): a rank is 0..size-1", pg->rank, pg->size, pg->source);
        return msg;
    }
    pg->gpus_per_node = t->gpus_per_node;
    if (pg->gpus_per_node > 0 && pg->local_rank >= pg->gpus_per_node) {
        snprintf(msg, cap, "local rank %d with --gpus_per_node %d: a node's ranks use GPUs 0..%d; start at most %d "
                 "processes a node", pg->local_rank, pg->gpus_per_node, pg->gpus_per_node - 1, pg->gpus_per_node);
        return msg;
    }
    if (pg->size == 1) { return NULL; }
    const char* im = t->init_method;
    if (im[0] == '\0') {
        const char* addr = env("MASTER_ADDR");
        const char* port = env("MASTER_PORT");
        if (addr == NULL || port == NULL) {
            snprintf(msg, cap, "%d processes (%s) need a place to meet: give --init_method fs:DIR (a directory "
                     "every rank sees) or tcp:HOST:PORT, or set MASTER_ADDR and MASTER_PORT", pg->size, pg->source);
            return msg;
        }
        // torchrun's agent hosts its own store on MASTER_PORT (and says so in
        // TORCHELASTIC_USE_AGENT_STORE), so the ranks meet one port above it
        long pv = env_int(port, 65535);
        const char* agent = env("TORCHELASTIC_USE_AGENT_STORE");
        if (agent != NULL && strcmp(agent, "True") == 0 && pv >= 1 && pv < 65535) {
            snprintf(pg->init_method, sizeof pg->init_method, "tcp:%s:%ld", addr, pv + 1);
        } else {
            snprintf(pg->init_method, sizeof pg->init_method, "tcp:%s:%s", addr, port);
        }
    } else {
        snprintf(pg->init_method, sizeof pg->init_method, "%s", im);
    }
    im = pg->init_method;
    if (strncmp(im, "fs:", 3) == 0 && im[3] != '\0') { return NULL; }
    const char* colon = strncmp(im, "tcp:", 4) == 0 ? strrchr(im + 4, ':') : NULL;
    if (colon != NULL && colon > im + 4 && env_int(colon + 1, 65535) >= 1) { return NULL; }
    snprintf(msg, cap, "--init_method %s: expected fs:DIR or tcp:HOST:PORT (a port 1..65535)", im);
    return msg;
}

// ---- the batch across ranks
//
// --total_batch_size counts the sequences of a step over all ranks, as the
// authors' torchrun_main.py does: with N processes of --batch_size B each,
// a step is total / (B N) micro steps. where the total was not given (the
// authors' defaults with --gradient_accumulation), each rank keeps its micro
// steps and the total is B x accumulation x N. rank r's micro-batch is the
// r-th B windows of the step's N B (shard_loader_next_batch), so N ranks of B
// see the same windows as one of N B, or one of B with N times the micro steps

// sets t's gradient_accumulation (and total_batch_size) for num_ranks ranks;
// NULL or what is wrong
const char* train_config_for_ranks(TrainConfig* t, int num_ranks, char* msg, size_t cap) {
    t->ranks = num_ranks > 1 ? num_ranks : 1;
    if (num_ranks <= 1 || t->batch_size <= 0 || t->total_batch_size <= 0 || t->gradient_accumulation < 0) {
        return NULL;  // one rank, or train_config_problem's to report
    }
    int accum_given = train_flag_given(t, "--gradient_accumulation");
    int total_given = train_flag_given(t, "--total_batch_size") || (!t->authors_defaults && !accum_given);
    if (!total_given) {
        t->total_batch_size = t->batch_size * t->gradient_accumulation * num_ranks;
        return NULL;
    }
    long per_step = (long)t->batch_size * num_ranks;
    if (t->total_batch_size % per_step != 0) {
        snprintf(msg, cap, "--total_batch_size %d is not a multiple of --batch_size %d x %d processes; every rank "
                 "takes --batch_size sequences a micro step: give a total that is a multiple of %ld",
                 t->total_batch_size, t->batch_size, num_ranks, per_step);
        return msg;
    }
    int accum = (int)(t->total_batch_size / per_step);
    if (accum_given && t->gradient_accumulation != accum) {
        snprintf(msg, cap, "--gradient_accumulation %d x --batch_size %d x %d processes is not --total_batch_size "
                 "%d; give two of the three (the total counts every rank's sequences)", t->gradient_accumulation,
                 t->batch_size, num_ranks, t->total_batch_size);
        return msg;
    }
    t->gradient_accumulation = accum;
    return NULL;
}

// ---- the rendezvous: rank 0's bytes (NCCL's unique id) to every other rank
//
// fs:DIR: rank 0 writes DIR/subtrack_rendezvous through a temporary file and
// a rename, so that no reader sees half of one; the others poll for it. the
// file names the run (the launcher's job id where there is one, and the
// number of processes), and a reader takes only its own run's, written after
// it started (less a minute of clock skew between nodes): an earlier run's
// leftover is not read. rank 0 removes it once every rank has joined
// (rendezvous_finish).
// tcp:HOST:PORT: rank 0 listens on PORT; every other rank connects (again
// and again until rank 0 is up), sends its rank and the number of processes,
// and reads the bytes.
// every wait gives up after pg->timeout seconds, with a message that names
// what it waited for

#define RENDEZVOUS_FILE "subtrack_rendezvous"
#define RENDEZVOUS_MAGIC 0x53545256u  // "STRV"

// what names this run: the launcher's job (torchrun, Slurm, Open MPI) and the size
static void rendezvous_key(const ProcessGroup* pg, char* key, size_t cap) {
    static const char* const ids[] = {"TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "OMPI_MCA_ess_base_jobid",
                                      "PMIX_NAMESPACE"};
    size_t n = (size_t)snprintf(key, cap, "size=%d", pg->size);
    for (size_t i = 0; i < sizeof ids / sizeof ids[0] && n < cap; i++) {
        const char* v = getenv(ids[i]);
        if (v != NULL) { n += (size_t)snprintf(key + n, cap - n, " %s=%.60s", ids[i], v); }
    }
}

static void rendezvous_file_path(const ProcessGroup* pg, char* path, size_t cap) {
    snprintf(path, cap, "%s/%s", pg->init_method + 3, RENDEZVOUS_FILE);
}

static int rendezvous_fs(const ProcessGroup* pg, unsigned char* data, size_t bytes, char* msg, size_t cap) {
    char path[400], tmp[450], key[400];
    rendezvous_file_path(pg, path, sizeof path);
    rendezvous_key(pg, key, sizeof key);
    const char* dir = pg->init_method + 3;
    if (pg->rank == 0) {
        snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", dir, RENDEZVOUS_FILE, (long)getpid());
        FILE* f = fopen(tmp, "wb");
        if (f == NULL) {
            snprintf(msg, cap, "--init_method %s: cannot write %s (%s); give a directory every rank can write and "
                     "read", pg->init_method, tmp, strerror(errno));
            return 1;
        }
        fprintf(f, "subtrack rendezvous\n%s\n", key);
        for (size_t i = 0; i < bytes; i++) { fprintf(f, "%02x", data[i]); }
        fprintf(f, "\n");
        int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
        bad |= fclose(f) != 0;
        if (bad || rename(tmp, path) != 0) {
            snprintf(msg, cap, "--init_method %s: cannot write %s (%s)", pg->init_method, path, strerror(errno));
            remove(tmp);
            return 1;
        }
        return 0;
    }
    time_t start = time(NULL);
    double t0 = wall_seconds();
    int seen_other = 0;
    while (wall_seconds() - t0 < pg->timeout) {
        struct stat st;
        FILE* f = stat(path, &st) == 0 && st.st_mtime >= start - 60 ? fopen(path, "rb") : NULL;
        if (f != NULL) {
            char line1[64] = "", line2[400] = "";
            int ok = fgets(line1, sizeof line1, f) != NULL && fgets(line2, sizeof line2, f) != NULL &&
                     strcmp(line1, "subtrack rendezvous\n") == 0;
            line2[strcspn(line2, "\n")] = '\0';
            if (ok && strcmp(line2, key) == 0) {
                size_t i = 0;
                unsigned v;
                while (i < bytes && fscanf(f, "%2x", &v) == 1) { data[i++] = (unsigned char)v; }
                fclose(f);
                if (i == bytes) { return 0; }
                snprintf(msg, cap, "--init_method %s: %s is cut short (%zu of %zu bytes)", pg->init_method, path,
                         i, bytes);
                return 1;
            }
            fclose(f);
            seen_other = ok;
        }
        usleep(50 * 1000);
    }
    snprintf(msg, cap, "rank %d waited %d s (--collective_timeout) for rank 0 to write %s%s; check that rank 0 "
             "started, and that every rank sees the same directory", pg->rank, pg->timeout, path,
             seen_other ? " (a file of another run is there; remove it if no run is starting)" : "");
    return 1;
}

// the whole of a buffer, through a socket; 0 on success
static int socket_send_all(int fd, const void* p, size_t n) {
    const char* c = (const char*)p;
    while (n > 0) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k <= 0) { if (k < 0 && errno == EINTR) { continue; } return 1; }
        c += k; n -= (size_t)k;
    }
    return 0;
}

// the whole of a buffer, waiting at most until the deadline (wall_seconds); 0 on success
static int socket_recv_all(int fd, void* p, size_t n, double deadline) {
    char* c = (char*)p;
    while (n > 0) {
        struct pollfd pf = {fd, POLLIN, 0};
        int left_ms = (int)((deadline - wall_seconds()) * 1e3);
        if (left_ms <= 0 || poll(&pf, 1, left_ms) <= 0) { return 1; }
        ssize_t k = recv(fd, c, n, 0);
        if (k <= 0) { if (k < 0 && errno == EINTR) { continue; } return 1; }
        c += k; n -= (size_t)k;
    }
    return 0;
}

static int rendezvous_tcp(const ProcessGroup* pg, unsigned char* data, size_t bytes, char* msg, size_t cap) {
    char host[300];
    const char* colon = strrchr(pg->init_method + 4, ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - (pg->init_method + 4)), pg->init_method + 4);
    const char* port = colon + 1;
    double deadline = wall_seconds() + pg->timeout;
    if (pg->rank == 0) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET6;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int fd = -1;
        // IPv6 with IPv4 mapped in where the host has IPv6, else IPv4
        for (int family = 0; family < 2 && fd < 0; family++) {
            hints.ai_family = family == 0 ? AF_INET6 : AF_INET;
            if (getaddrinfo(NULL, port, &hints, &res) != 0) { continue; }
            fd = socket(res->ai_family, SOCK_STREAM, 0);
            int on = 1, off = 0;
            if (fd >= 0) { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on); }
            if (fd >= 0 && family == 0) { setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off); }
            if (fd >= 0 && (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, pg->size) != 0)) {
                int e = errno;
                close(fd);
                fd = -1;
                errno = e;
            }
            freeaddrinfo(res);
        }
        if (fd < 0) {
            snprintf(msg, cap, "--init_method %s: rank 0 cannot listen on port %s (%s); pick a free port (under "
                     "torchrun the ranks use MASTER_PORT + 1), or use --init_method fs:DIR", pg->init_method, port,
                     strerror(errno));
            return 1;
        }
        unsigned char* joined = (unsigned char*)calloc_check((size_t)pg->size, "rendezvous ranks");
        int waiting = pg->size - 1, failed = 0;
        while (waiting > 0 && !failed) {
            struct pollfd pf = {fd, POLLIN, 0};
            int left_ms = (int)((deadline - wall_seconds()) * 1e3);
            if (left_ms <= 0 || poll(&pf, 1, left_ms) <= 0) {
                int r = 1;
                while (r < pg->size && joined[r]) { r++; }
                snprintf(msg, cap, "rank 0 waited %d s (--collective_timeout) on port %s for %d of %d ranks (rank %d "
                         "among them) to connect; check that every rank started with --init_method %s, and that "
                         "the port is reachable", pg->timeout, port, waiting, pg->size - 1, r, pg->init_method);
                failed = 1;
                break;
            }
            int c = accept(fd, NULL, NULL);
            if (c < 0) { continue; }
            uint32_t hello[3];
            if (socket_recv_all(c, hello, sizeof hello, wall_seconds() + 10) == 0 && hello[0] == RENDEZVOUS_MAGIC) {
                if ((int)hello[2] != pg->size || hello[1] == 0 || (int)hello[1] >= pg->size || joined[hello[1]]) {
                    snprintf(msg, cap, "rank 0 (of %d processes) was reached on port %s by a rank %u of %u "
                             "processes; start every rank with the same number of processes, and each rank once",
                             pg->size, port, hello[1], hello[2]);
                    failed = 1;
                } else if (socket_send_all(c, data, bytes) == 0) {
                    joined[hello[1]] = 1;
                    waiting--;
                }
            }
            close(c);  // a stranger (no hello) is dropped
        }
        free(joined);
        close(fd);
        return failed;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(msg, cap, "--init_method %s: cannot resolve %s (%s); give rank 0's host name or address",
                 pg->init_method, host, gai_strerror(gai));
        return 1;
    }
    int done = 0;
    while (!done && wall_seconds() < deadline) {
        for (struct addrinfo* a = res; a != NULL && !done; a = a->ai_next) {
            int fd = socket(a->ai_family, SOCK_STREAM, 0);
            if (fd < 0) { continue; }
            if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
                uint32_t hello[3] = {RENDEZVOUS_MAGIC, (uint32_t)pg->rank, (uint32_t)pg->size};
                done = socket_send_all(fd, hello, sizeof hello) == 0 && socket_recv_all(fd, data, bytes, deadline) == 0;
            }
            close(fd);
        }
        if (!done) { usleep(100 * 1000); }
    }
    freeaddrinfo(res);
    if (!done) {
        snprintf(msg, cap, "rank %d waited %d s (--collective_timeout) to reach rank 0 at %s:%s; check that rank 0 "
                 "started with the same --init_method, and that the address and port are reachable from here",
                 pg->rank, pg->timeout, host, port);
        return 1;
    }
    return 0;
}

// rank 0's data (bytes) to every rank of pg; returns 0, or 1 with a message
int rendezvous_share(const ProcessGroup* pg, void* data, size_t bytes, char* msg, size_t cap) {
    if (pg->size == 1) { return 0; }
    if (strncmp(pg->init_method, "fs:", 3) == 0) { return rendezvous_fs(pg, (unsigned char*)data, bytes, msg, cap); }
    return rendezvous_tcp(pg, (unsigned char*)data, bytes, msg, cap);
}

// after every rank has joined: rank 0 removes the fs: file
void rendezvous_finish(const ProcessGroup* pg) {
    if (pg->size > 1 && pg->rank == 0 && strncmp(pg->init_method, "fs:", 3) == 0) {
        char path[400];
        rendezvous_file_path(pg, path, sizeof path);
        remove(path);
    }
}

const char* train_config_problem(const TrainConfig* t) {
    static char msg[640];
    if (t->batch_size <= 0 || t->max_length < 0 || t->total_batch_size <= 0 || t->gradient_accumulation < 0) {
        snprintf(msg, sizeof msg, "--batch_size and --total_batch_size must be positive, --max_length and "
                 "--gradient_accumulation >= 0");
        return msg;
    }
    // with more than one rank, train_config_for_ranks has checked the batch against the ranks
    if (t->ranks <= 1 && t->total_batch_size % t->batch_size != 0) {
        snprintf(msg, sizeof msg, "--total_batch_size %d is not a multiple of --batch_size %d; "
                 "gradient accumulation needs a whole number of micro steps", t->total_batch_size, t->batch_size);
        return msg;
    }
    if (t->ranks <= 1 && t->gradient_accumulation * t->batch_size != t->total_batch_size) {
        snprintf(msg, sizeof msg, "--gradient_accumulation %d x --batch_size %d is not --total_batch_size %d; "
                 "give two of the three, or all three consistent", t->gradient_accumulation, t->batch_size,
                 t->total_batch_size);
        return msg;
    }
    if (t->zero_stage != 0 && t->zero_stage != 1) {
        snprintf(msg, sizeof msg, "--zero_stage %d: expected 0 (every rank holds every optimizer state) or 1 (each "
                 "state on one rank)", t->zero_stage);
        return msg;
    }
    if (t->zero_stage == 1) {
        // the first version shards the states that whole steps update in batches
        const char* lean = strcmp(t->optimizer, "sgd") == 0 ? "--optimizer sgd's momentum"
                         : strstr(t->optimizer, "adafactor") != NULL ? "Adafactor's statistics (--optimizer *adafactor)"
                         : optimizer_name_per_layer(t->optimizer) ? "per-layer updates (--optimizer *_per_layer)"
                         : strstr(t->optimizer, "8bit") != NULL ? "8-bit states (--optimizer *8bit)"
                         : strcmp(t->subspace_dtype, "bfloat16") == 0 ? "bf16 subspaces (--subspace_dtype bfloat16)"
                         : !t->master_weights && strcmp(t->dtype, "bfloat16") == 0 ? "bf16-only weights "
                           "(--master_weights 0 with --dtype bfloat16)" : NULL;
        if (lean != NULL) {
            snprintf(msg, sizeof msg, "--zero_stage 1 does not shard %s yet; use --zero_stage 0 (every rank holds "
                     "every state) or drop that option", lean);
            return msg;
        }
    }
    if (t->num_training_steps <= 0 || t->warmup_steps < 0) {
        snprintf(msg, sizeof msg, "--num_training_steps must be positive and --warmup_steps non-negative");
        return msg;
    }
    if (t->max_train_tokens[0] != '\0' && token_budget_parse(t->max_train_tokens) < 0) {
        snprintf(msg, sizeof msg, "--max_train_tokens %s: expected a whole number of tokens (at most 2^62), alone or "
                 "followed by M (millions) or B (billions), as 100M or 1B", t->max_train_tokens);
        return msg;
    }
    // with a token budget the steps are known once T is (train_config_token_budget checks the schedule then)
    const char* schedule = t->max_train_tokens[0] == '\0' ? schedule_problem(t, msg, sizeof msg) : NULL;
    if (schedule != NULL) { return schedule; }
    if (strcmp(t->optimizer, "adamw") != 0 && !optimizer_name_low_rank(t->optimizer) &&
        strcmp(t->optimizer, "adam") != 0 && strcmp(t->optimizer, "sgd") != 0 &&
        strcmp(t->optimizer, "adafactor") != 0 && strcmp(t->optimizer, "adam8bit") != 0) {
        snprintf(msg, sizeof msg, "--optimizer '%s' is not adamw, adam, adam8bit, sgd, adafactor, low_rank_adamw, "
                 "low_rank_adamw_per_layer, low_rank_adamw8bit, low_rank_adamw8bit_per_layer or low_rank_adafactor",
                 t->optimizer);
        return msg;
    }
    // per-layer updates change each weight as soon as its gradient is
    // complete, so that no full gradient buffer exists: that is the step of
    // one batch only when nothing needs every gradient first
    if (optimizer_name_per_layer(t->optimizer)) {
        int accum = t->gradient_accumulation > 0 ? t->gradient_accumulation
                  : (t->total_batch_size > 0 ? t->total_batch_size / (t->batch_size > 0 ? t->batch_size : 1) : 1);
        if (accum > 1) {
            snprintf(msg, sizeof msg, "--optimizer %s updates each weight during the backward, so it cannot "
                     "accumulate gradients over micro steps: give --total_batch_size equal to --batch_size (now %d "
                     "and %d), or use --optimizer low_rank_adamw", t->optimizer, t->total_batch_size, t->batch_size);
            return msg;
        }
        if (t->grad_clipping > 0) {
            snprintf(msg, sizeof msg, "--optimizer %s updates each weight during the backward, before the global "
                     "gradient norm that --grad_clipping %g needs is known: add --grad_clipping 0, or use "
                     "--optimizer low_rank_adamw", t->optimizer, t->grad_clipping);
            return msg;
        }
    }
    if (t->authors_defaults && train_flag_given(t, "--beta1") && strcmp(t->optimizer, "sgd") != 0 &&
        strstr(t->optimizer, "adafactor") == NULL) {
        snprintf(msg, sizeof msg, "--beta1 on one of the authors' configs: in their torchrun_main.py --beta1 only "
                 "reaches SGD and Adafactor, and their Adam optimizers keep beta1 0.9; drop the flag to run their "
                 "script as they did, or use one of our presets (kjv_small, ...) to set Adam's beta1");
        return msg;
    }
    if (strcmp(t->subspace_update_method, "galore") != 0 && strcmp(t->subspace_update_method, "subtrack") != 0) {
        snprintf(msg, sizeof msg, "--subspace_update_method '%s' is not galore or subtrack", t->subspace_update_method);
        return msg;
    }
    if (strcmp(t->proj_type, "full") == 0) {
        snprintf(msg, sizeof msg, "--proj_type full (two-sided, S_l^T G S_r) is not implemented: SubTrack++ tracks "
                 "one side's subspace, and the authors' code stops with an error on it (GaLore at its first "
                 "subspace refresh, SubTrack or --recovery_scaling at the first step); use std, reverse_std, left "
                 "or right");
        return msg;
    }
    if (proj_type_parse(t->proj_type) < 0) {
        snprintf(msg, sizeof msg, "--proj_type '%s' is not std, reverse_std, left or right (the side of each "
                 "matrix that is projected)", t->proj_type);
        return msg;
    }
    if (strcmp(t->st_step_size_scheduler, "adaptive") == 0) {
        snprintf(msg, sizeof msg, "--st_step_size_scheduler adaptive has no implementation in the authors' code "
                 "either (their argparse accepts it, their projector never reads it); use constant");
        return msg;
    }
    if (strcmp(t->st_step_size_scheduler, "constant") != 0 && strcmp(t->st_step_size_scheduler, "iterative_decrease") != 0) {
        snprintf(msg, sizeof msg, "--st_step_size_scheduler '%s' is not constant or iterative_decrease",
                 t->st_step_size_scheduler);
        return msg;
    }
    if (t->st_noise_sigma2 != 0.0f || t->st_subspace_coef != 1.0f) {
        snprintf(msg, sizeof msg, "--st_noise_sigma2 %g / --st_subspace_coef %g: the authors' code stores these and "
                 "never uses them, so only their defaults (0 and 1) are accepted", t->st_noise_sigma2,
                 t->st_subspace_coef);
        return msg;
    }
    if ((strstr(t->optimizer, "adafactor") != NULL || strcmp(t->optimizer, "adam8bit") == 0) && !t->master_weights &&
        strcmp(t->dtype, "bfloat16") == 0) {
        snprintf(msg, sizeof msg, "--optimizer %s with bf16-only weights (--master_weights 0 --dtype bfloat16) "
                 "is not built yet (each weight's update needs it whole in fp32); keep the masters (drop "
                 "--master_weights 0) or use --dtype float32", t->optimizer);
        return msg;
    }
    if (strcmp(t->optimizer, "low_rank_adafactor") == 0 && (t->adaptive_optimizer || t->recovery_scaling)) {
        snprintf(msg, sizeof msg, "--optimizer low_rank_adafactor with %s: Adafactor in the subspace has no moment "
                 "rotation and no recovery scaling (the authors' LowRankAdafactor has neither); drop the flag, or "
                 "use --optimizer low_rank_adamw for SubTrack++", t->adaptive_optimizer ? "--adaptive_optimizer"
                 : "--recovery_scaling");
        return msg;
    }
    if (t->rand_proj && !optimizer_name_low_rank(t->optimizer)) {
        snprintf(msg, sizeof msg, "--rand_proj (GoLore's random subspaces) needs a low-rank optimizer (--optimizer %s "
                 "keeps no subspace); drop it or use --optimizer low_rank_adamw", t->optimizer);
        return msg;
    }
    if (optimizer_name_low_rank(t->optimizer) && (t->rank <= 0 || t->subspace_update_interval <= 0)) {
        snprintf(msg, sizeof msg, "--rank and --subspace_update_interval must be positive");
        return msg;
    }
    if (!(t->low_rank_scale > 0) || !(t->st_init_step_size > 0) || !(t->norm_growth_limit > 0)) {
        snprintf(msg, sizeof msg, "--low_rank_scale (%g), --st_init_step_size (%g) and --norm_growth_limit (%g) "
                 "must be positive", t->low_rank_scale, t->st_init_step_size, t->norm_growth_limit);
        return msg;
    }
    if (!(t->lr > 0) || !(t->lr_non_matrix >= 0) || isinf(t->lr_non_matrix) || t->min_lr_ratio < 0 ||
        t->min_lr_ratio > 1 || t->grad_clipping < 0 ||
        t->weight_decay < 0 || t->beta1 < 0 || t->beta1 >= 1 || t->beta2 < 0 || t->beta2 >= 1 || !(t->eps > 0)) {
        snprintf(msg, sizeof msg, "bad hyperparameter: need lr > 0, lr_non_matrix >= 0 (finite), "
                 "0 <= min_lr_ratio <= 1, grad_clipping >= 0, "
                 "weight_decay >= 0, 0 <= beta1, beta2 < 1, eps > 0");
        return msg;
    }
    if (t->eval_batches <= 0 || t->gen_tokens < 0 || t->top_k < 0 || !(t->temperature > 0) || t->print_every <= 0 ||
        t->progress_interval < 0) {
        snprintf(msg, sizeof msg, "--eval_batches and --print_every must be positive, --temperature > 0, "
                 "--gen_tokens, --top_k and --progress_interval >= 0");
        return msg;
    }
    if (strcmp(t->dtype, "float16") == 0 || strcmp(t->dtype, "fp16") == 0) {
        snprintf(msg, sizeof msg, "--dtype %s is not supported (nor in the authors' torchrun_main.py); use bfloat16 "
                 "or float32", t->dtype);
        return msg;
    }
    if (strcmp(t->dtype, "float32") != 0 && strcmp(t->dtype, "bfloat16") != 0) {
        snprintf(msg, sizeof msg, "--dtype '%s' is not float32, bfloat16 or bf16", t->dtype);
        return msg;
    }
    if (strcmp(t->subspace_dtype, "float32") != 0 && strcmp(t->subspace_dtype, "bfloat16") != 0) {
        snprintf(msg, sizeof msg, "--subspace_dtype '%s' is not float32, bfloat16 or bf16", t->subspace_dtype);
        return msg;
    }
    if (strcmp(t->subspace_dtype, "bfloat16") == 0 && !optimizer_name_low_rank(t->optimizer)) {
        snprintf(msg, sizeof msg, "--subspace_dtype bfloat16 needs a low-rank optimizer (--optimizer %s keeps no "
                 "subspaces); drop it or use --optimizer low_rank_adamw", t->optimizer);
        return msg;
    }
    if (strcmp(t->svd, "exact") != 0 && strcmp(t->svd, "randomized") != 0) {
        snprintf(msg, sizeof msg, "--svd '%s' is not exact or randomized", t->svd);
        return msg;
    }
    if (strcmp(t->svd, "randomized") == 0 && !optimizer_name_low_rank(t->optimizer)) {
        snprintf(msg, sizeof msg, "--svd randomized needs a low-rank optimizer (--optimizer %s takes no SVD); drop it "
                 "or use --optimizer low_rank_adamw", t->optimizer);
        return msg;
    }
    if (t->svd_power_iters < 0 || t->svd_power_iters > SVD_POWER_ITERS_MAX) {
        snprintf(msg, sizeof msg, "--svd_power_iters %d is outside 0..%d (2 is the usual choice; each one costs two "
                 "more products with the gradient)", t->svd_power_iters, SVD_POWER_ITERS_MAX);
        return msg;
    }
    if (t->svd_oversample < 0 || t->svd_oversample > SVD_OVERSAMPLE_MAX) {
        snprintf(msg, sizeof msg, "--svd_oversample %d is outside 0..%d (%d is the usual choice)", t->svd_oversample,
                 SVD_OVERSAMPLE_MAX, SVD_OVERSAMPLE_DEFAULT);
        return msg;
    }
    if (t->stop_at_step < 0) {
        snprintf(msg, sizeof msg, "--stop_at_step must be >= 0");
        return msg;
    }
    if (t->save_every > 0 && t->save_dir[0] == '\0') {
        snprintf(msg, sizeof msg, "--save_every needs --save_dir");
        return msg;
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// training: model config from a Hugging Face LlamaConfig json
//
// a config is one json object, and only its top-level keys count: a nested
// object (a "text_config", say) is checked and skipped, never read; the one
// object read, transformers 5's "rope_parameters", is read as a config of its
// own. the reader is a small scanner that checks the whole text is json (rfc
// 8259) and notes where the value of each key we read lies; the values are
// checked after the scan, so a malformed file is reported as malformed. it
// reads only the bytes it is given (no terminating NUL needed), so any input
// is safe (dev/fuzz/fuzz_config.c fuzzes it).

#define JSON_CONFIG_MAX_BYTES (1 << 20) // a LlamaConfig json is about 1 KB
#define JSON_MAX_DEPTH 64               // deeper nesting is refused, not recursed into

// the kinds of json values; 0 is a syntax error
enum { JSON_BAD, JSON_NUMBER, JSON_STRING, JSON_TRUE, JSON_FALSE, JSON_NULL, JSON_OBJECT, JSON_ARRAY };

// the keys we read, and where the scan found each one's value
typedef struct {
    const char* key;
    int kind;       // JSON_* of the value; JSON_BAD while not seen
    size_t at, len; // the value's bytes in the text
    int count;      // how often the key appeared
} JsonField;

typedef struct {
    const char* s;       // the text, not NUL-terminated
    size_t n, i;         // its length and the scan position
    const char* problem; // the first syntax error, or NULL
    JsonField* fields;   // the top-level keys to note
    int num_fields;
    int other_keys;      // top-level keys not among them
} JsonScan;

static int json_fail(JsonScan* js, const char* problem) {
    if (js->problem == NULL) { js->problem = problem; }
    return JSON_BAD;
}

static void json_skip_space(JsonScan* js) {
    while (js->i < js->n && (js->s[js->i] == ' ' || js->s[js->i] == '\t' || js->s[js->i] == '\n' ||
                             js->s[js->i] == '\r')) { js->i++; }
}

// consumes c if it is the next byte
static int json_take(JsonScan* js, char c) {
    if (js->i < js->n && js->s[js->i] == c) { js->i++; return 1; }
    return 0;
}

// one or more digits
static int json_digits(JsonScan* js) {
    size_t start = js->i;
    while (js->i < js->n && js->s[js->i] >= '0' && js->s[js->i] <= '9') { js->i++; }
    return js->i > start;
}

// a string, at its opening quote. escapes are checked, not decoded: the keys
// we look for have none
static int json_string(JsonScan* js) {
    js->i++;
    while (js->i < js->n) {
        unsigned char ch = (unsigned char)js->s[js->i++];
        if (ch == '"') { return JSON_STRING; }
        if (ch < 0x20) { return json_fail(js, "a control character (a raw line break?) inside a string"); }
        if (ch != '\\') { continue; }
        if (js->i >= js->n) { break; }
        char e = js->s[js->i++];
        if (e == 'u') {
            for (int k = 0; k < 4; k++, js->i++) {
                char h = js->i < js->n ? js->s[js->i] : '\0';
                if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F'))) {
                    return json_fail(js, "a \\u escape without 4 hex digits");
                }
            }
        } else if (e == '\0' || strchr("\"\\/bfnrt", e) == NULL) {
            return json_fail(js, "an unknown escape in a string");
        }
    }
    return json_fail(js, "a string without its closing quote");
}

// a number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
static int json_number(JsonScan* js) {
    json_take(js, '-');
    if (!json_take(js, '0') && !json_digits(js)) { return json_fail(js, "a '-' without digits"); }
    if (json_take(js, '.') && !json_digits(js)) { return json_fail(js, "a number without digits after its '.'"); }
    if (json_take(js, 'e') || json_take(js, 'E')) {
        if (!json_take(js, '+')) { json_take(js, '-'); }
        if (!json_digits(js)) { return json_fail(js, "a number without digits in its exponent"); }
    }
    return JSON_NUMBER;
}

static int json_word(JsonScan* js, const char* word, int kind) {
    size_t len = strlen(word);
    if (js->n - js->i < len || memcmp(js->s + js->i, word, len) != 0) {
        return json_fail(js, "a bare word (strings need double quotes; the literals are true, false, null)");
    }
    js->i += len;
    return kind;
}

static int json_value(JsonScan* js, int depth);

// an object or array, at its opening bracket. at depth 0 the keys we read are
// noted in js->fields; deeper, everything is checked and skipped
static int json_container(JsonScan* js, int depth) {
    int object = js->s[js->i] == '{';
    char close = object ? '}' : ']';
    if (depth >= JSON_MAX_DEPTH) { return json_fail(js, "objects or arrays nested more than 64 deep"); }
    js->i++;
    json_skip_space(js);
    if (json_take(js, close)) { return object ? JSON_OBJECT : JSON_ARRAY; }
    for (;;) {
        JsonField* field = NULL;
        if (object) {
            json_skip_space(js);
            if (js->i >= js->n || js->s[js->i] != '"') { return json_fail(js, "expected a \"key\""); }
            size_t key_at = js->i + 1;
            if (!json_string(js)) { return JSON_BAD; }
            size_t key_len = js->i - 1 - key_at;
            for (int f = 0; depth == 0 && f < js->num_fields; f++) {
                const char* k = js->fields[f].key;
                if (strlen(k) == key_len && memcmp(k, js->s + key_at, key_len) == 0) { field = &js->fields[f]; }
            }
            if (depth == 0 && field == NULL) { js->other_keys++; }
            json_skip_space(js);
            if (!json_take(js, ':')) { return json_fail(js, "expected ':' after a key"); }
        }
        json_skip_space(js);
        size_t value_at = js->i;
        int kind = json_value(js, depth + 1);
        if (kind == JSON_BAD) { return JSON_BAD; }
        if (field != NULL) {
            field->kind = kind;
            field->at = value_at;
            field->len = js->i - value_at;
            field->count++;
        }
        json_skip_space(js);
        if (json_take(js, close)) { return object ? JSON_OBJECT : JSON_ARRAY; }
        if (!json_take(js, ',')) { return json_fail(js, object ? "expected ',' or '}'" : "expected ',' or ']'"); }
    }
}

// any value, at its first byte
static int json_value(JsonScan* js, int depth) {
    if (js->i >= js->n) { return json_fail(js, "the text ends where a value should be"); }
    char c = js->s[js->i];
    if (c == '{' || c == '[') { return json_container(js, depth); }
    if (c == '"') { return json_string(js); }
    if (c == '-' || (c >= '0' && c <= '9')) { return json_number(js); }
    if (c == 't') { return json_word(js, "true", JSON_TRUE); }
    if (c == 'f') { return json_word(js, "false", JSON_FALSE); }
    if (c == 'n') { return json_word(js, "null", JSON_NULL); }
    return json_fail(js, "an unexpected character where a value should be");
}

// the value's text for a message: at most 40 bytes, unprintable ones as '?'
static void json_field_text(const char* text, const JsonField* f, char* out, size_t cap) {
    size_t n = 0;
    for (size_t k = 0; k < f->len && k < 40 && n + 1 < cap; k++) {
        char ch = text[f->at + k];
        out[n++] = ch >= 0x20 && ch < 0x7f ? ch : '?';
    }
    if (f->len > 40 && n + 4 < cap) { memcpy(out + n, "...", 3); n += 3; }
    out[n] = '\0';
}

// what each key may hold. sizes are json integers: python's json reads 64.0
// or 1e3 as a float, which transformers cannot use as a size either. a key
// that turns on something this model does not have is refused, not ignored:
// the run would otherwise train another model than the config describes. so
// tied embeddings are refused (our model always has its own lm_head, as the
// authors' configs do), and so are biases, rope scaling and dropout.
// transformers 5 writes rope_theta inside a "rope_parameters" object (so does
// dev/export_hf.py): that one object is read too, see rope_parameters_read
enum { CFG_SIZE, CFG_POSITIVE, CFG_OFF, CFG_ACTIVATION, CFG_OBJECT };
enum { K_VOCAB, K_HIDDEN, K_INTERMEDIATE, K_HEADS, K_LAYERS, K_MAX_POSITION, K_MAX_SEQUENCE, K_KV_HEADS, K_HEAD_DIM,
       K_NORM_EPS, K_ROPE_THETA, K_TIE, K_ATTENTION_BIAS, K_MLP_BIAS, K_ROPE_SCALING, K_ROPE_PARAMETERS,
       K_DROPOUT, K_ACTIVATION, NUM_CONFIG_KEYS };
static const struct { const char* key; int kind; const char* why; } CONFIG_KEYS[NUM_CONFIG_KEYS] = {
    {"vocab_size", CFG_SIZE, NULL},
    {"hidden_size", CFG_SIZE, NULL},
    {"intermediate_size", CFG_SIZE, NULL},
    {"num_attention_heads", CFG_SIZE, NULL},
    {"num_hidden_layers", CFG_SIZE, NULL},
    {"max_position_embeddings", CFG_SIZE, NULL},
    {"max_sequence_length", CFG_SIZE, NULL},
    {"num_key_value_heads", CFG_SIZE, NULL},
    {"head_dim", CFG_SIZE, NULL},
    {"rms_norm_eps", CFG_POSITIVE, NULL},
    {"rope_theta", CFG_POSITIVE, NULL},
    {"tie_word_embeddings", CFG_OFF, "tied embeddings are not implemented (this model always has its own lm_head, "
                                     "as the authors' configs do)"},
    {"attention_bias", CFG_OFF, "attention biases are not implemented (LLaMA has none)"},
    {"mlp_bias", CFG_OFF, "MLP biases are not implemented (LLaMA has none)"},
    {"rope_scaling", CFG_OFF, "rope scaling is not implemented"},
    {"rope_parameters", CFG_OBJECT, "it holds the rope's settings, {\"rope_type\": \"default\", \"rope_theta\": ...}"},
    {"attention_dropout", CFG_OFF, "dropout is not implemented"},
    {"hidden_act", CFG_ACTIVATION, "the MLP is SwiGLU, whose activation is silu"},
};

// checks one noted key against CONFIG_KEYS; fills *size or *value. returns 0
// when the key is absent (or null: python's None, transformers' default), 1
// when it holds a good value, -1 with err filled when not
static int config_field_check(const char* text, const JsonField* f, int kind, const char* why, int* size,
                              double* value, const char* path, char* err, size_t errlen) {
    if (f->count > 1) {
        // python's json would keep the last silently; which one was meant is unclear
        snprintf(err, errlen, "%s: \"%s\" appears %d times; keep one", path, f->key, f->count);
        return -1;
    }
    if (f->count == 0 || f->kind == JSON_NULL) { return 0; }
    char shown[48];
    json_field_text(text, f, shown, sizeof shown);
    const char* v = text + f->at;
    if (kind == CFG_SIZE) {
        // digits only (no sign, '.', exponent), at most 10 of them, 1..INT32_MAX
        int digits = f->kind == JSON_NUMBER && f->len <= 10;
        long long x = 0;
        for (size_t k = 0; digits && k < f->len; k++) {
            digits = v[k] >= '0' && v[k] <= '9';
            x = x * 10 + (v[k] - '0');
        }
        if (!digits || x < 1 || x > INT32_MAX) {
            snprintf(err, errlen, "%s: \"%s\" is %s; it must be a whole number from 1 to %d, written without a '.' "
                     "or an exponent (e.g. 512)", path, f->key, shown, INT32_MAX);
            return -1;
        }
        *size = (int)x;
        return 1;
    }
    if (kind == CFG_POSITIVE) {
        // finite, and a normal float32 so the conversion neither overflows nor flushes to 0
        char num[64];
        double x = NAN;
        if (f->kind == JSON_NUMBER && f->len < sizeof num) {
            memcpy(num, v, f->len);
            num[f->len] = '\0';
            x = strtod(num, NULL);
        }
        if (!(x >= FLT_MIN && x <= FLT_MAX)) {
            snprintf(err, errlen, "%s: \"%s\" is %s; it must be a positive number within float32's range "
                     "(%g to %g)", path, f->key, shown, FLT_MIN, FLT_MAX);
            return -1;
        }
        *value = x;
        return 1;
    }
    if (kind == CFG_OFF) {
        // off: false, or a number that is 0 (dropout 0.0)
        int off = f->kind == JSON_FALSE;
        if (f->kind == JSON_NUMBER && f->len < 64) {
            char num[64];
            memcpy(num, v, f->len);
            num[f->len] = '\0';
            off = strtod(num, NULL) == 0.0;
        }
        if (!off) {
            snprintf(err, errlen, "%s: \"%s\" is %s, but %s; set it to false or null, or remove it",
                     path, f->key, shown, why);
            return -1;
        }
        return 1;
    }
    if (kind == CFG_OBJECT) {
        if (f->kind != JSON_OBJECT) {
            snprintf(err, errlen, "%s: \"%s\" is %s, not an object; %s", path, f->key, shown, why);
            return -1;
        }
        return 1;
    }
    // CFG_ACTIVATION: transformers' names for silu
    if (!(f->kind == JSON_STRING && ((f->len == 6 && memcmp(v, "\"silu\"", 6) == 0) ||
                                     (f->len == 7 && memcmp(v, "\"swish\"", 7) == 0)))) {
        snprintf(err, errlen, "%s: \"%s\" is %s, but %s; set it to \"silu\" or remove it", path, f->key, shown, why);
        return -1;
    }
    return 1;
}

// transformers 5's "rope_parameters" object, whose json the scan has checked:
// only the default rope is implemented, so it may hold rope_type "default"
// and rope_theta, nothing else. returns 0 or 1 (rope_theta given, in *theta),
// or -1 with err filled
static int rope_parameters_read(const char* text, const JsonField* rope, double* theta, const char* path,
                                char* err, size_t errlen) {
    JsonField fields[2];
    memset(fields, 0, sizeof fields);
    fields[0].key = "rope_type";
    fields[1].key = "rope_theta";
    const char* sub = text + rope->at;
    JsonScan js = {sub, rope->len, 0, NULL, fields, 2, 0};
    json_container(&js, 0);
    const JsonField* type = &fields[0];
    if (type->count > 1) {
        snprintf(err, errlen, "%s: \"rope_type\" appears %d times in rope_parameters; keep one", path, type->count);
        return -1;
    }
    int default_type = type->count == 0 || type->kind == JSON_NULL ||
                       (type->kind == JSON_STRING && type->len == 9 && memcmp(sub + type->at, "\"default\"", 9) == 0);
    if (!default_type || js.other_keys > 0) {
        char shown[48];
        json_field_text(text, rope, shown, sizeof shown);
        snprintf(err, errlen, "%s: \"rope_parameters\" is %s, but only the default rope is implemented (rope_type "
                 "\"default\" and rope_theta, no scaling); remove the other keys", path, shown);
        return -1;
    }
    int size;
    return config_field_check(sub, &fields[1], CFG_POSITIVE, NULL, &size, theta, path, err, errlen);
}

// the config in text[0..n) (the contents of path, which names it in messages).
// returns 0 on success, else fills err and leaves c as it was
int llama_config_from_json_text(LlamaConfig* c, const char* text, size_t n, const char* path,
                                char* err, size_t errlen) {
    JsonField fields[NUM_CONFIG_KEYS];
    memset(fields, 0, sizeof fields);
    for (int k = 0; k < NUM_CONFIG_KEYS; k++) { fields[k].key = CONFIG_KEYS[k].key; }
    JsonScan js = {text, n, 0, NULL, fields, NUM_CONFIG_KEYS, 0};
    json_skip_space(&js);
    if (js.i >= n || text[js.i] != '{') { json_fail(&js, "the text does not start with '{'"); }
    else if (json_container(&js, 0) != JSON_BAD) {
        json_skip_space(&js);
        if (js.i < n) { json_fail(&js, "more text after the closing '}'"); }
    }
    if (js.problem != NULL) {
        int line = 1, column = 1;
        for (size_t k = 0; k < js.i && k < n; k++) {
            if (text[k] == '\n') { line++; column = 1; } else { column++; }
        }
        snprintf(err, errlen, "%s: not valid json: %s, at line %d, column %d; a LlamaConfig json is one object "
                 "{\"key\": value, ...}", path, js.problem, line, column);
        return 1;
    }
    int size[NUM_CONFIG_KEYS] = {0};
    double value[NUM_CONFIG_KEYS] = {0};
    int present[NUM_CONFIG_KEYS];
    for (int k = 0; k < NUM_CONFIG_KEYS; k++) {
        present[k] = config_field_check(text, &fields[k], CONFIG_KEYS[k].kind, CONFIG_KEYS[k].why, &size[k],
                                        &value[k], path, err, errlen);
        if (present[k] < 0) { return 1; }
    }
    double rope_theta = 0.0;
    int rope_given = present[K_ROPE_PARAMETERS] ?
        rope_parameters_read(text, &fields[K_ROPE_PARAMETERS], &rope_theta, path, err, errlen) : 0;
    if (rope_given < 0) { return 1; }
    if (rope_given && present[K_ROPE_THETA] && rope_theta != value[K_ROPE_THETA]) {
        snprintf(err, errlen, "%s: rope_theta %g differs from rope_parameters' rope_theta %g; give one", path,
                 value[K_ROPE_THETA], rope_theta);
        return 1;
    }
    if (rope_given) {
        present[K_ROPE_THETA] = 1;
        value[K_ROPE_THETA] = rope_theta;
    }
    for (int k = K_VOCAB; k <= K_LAYERS; k++) {
        if (!present[k]) {
            snprintf(err, errlen, "%s: no numeric \"%s\"; expected a Hugging Face LlamaConfig json", path,
                     CONFIG_KEYS[k].key);
            return 1;
        }
    }
    LlamaConfig got;
    got.V = size[K_VOCAB];
    got.C = size[K_HIDDEN];
    got.F = size[K_INTERMEDIATE];
    got.NH = size[K_HEADS];
    got.L = size[K_LAYERS];
    // the authors' configs say max_sequence_length; transformers says max_position_embeddings
    got.max_seq_len = present[K_MAX_SEQUENCE] ? size[K_MAX_SEQUENCE] :
                      present[K_MAX_POSITION] ? size[K_MAX_POSITION] : 1024;
    got.norm_eps = present[K_NORM_EPS] ? (float)value[K_NORM_EPS] : 1e-6f;
    got.rope_theta = present[K_ROPE_THETA] ? (float)value[K_ROPE_THETA] : 10000.0f;
    if (present[K_KV_HEADS] && size[K_KV_HEADS] != got.NH) {
        snprintf(err, errlen, "%s: num_key_value_heads %d differs from num_attention_heads %d; "
                 "grouped-query attention is not supported", path, size[K_KV_HEADS], got.NH);
        return 1;
    }
    const char* problem = llama_config_problem(&got);
    if (problem != NULL) {
        snprintf(err, errlen, "%s: %s", path, problem);
        return 1;
    }
    if (present[K_HEAD_DIM] && size[K_HEAD_DIM] != got.C / got.NH) {
        snprintf(err, errlen, "%s: head_dim %d differs from hidden_size / num_attention_heads = %d; a head size of "
                 "its own is not supported", path, size[K_HEAD_DIM], got.C / got.NH);
        return 1;
    }
    *c = got;
    return 0;
}

// returns 0 on success, else fills err
int llama_config_from_json(LlamaConfig* c, const char* path, char* err, size_t errlen) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open (%s); --model_config takes a preset name or a .json file",
                 path, strerror(errno));
        return 1;
    }
    // one byte more than we take, to tell a file that fits from one that does not
    char* text = (char*)malloc_check(JSON_CONFIG_MAX_BYTES + 1, "json text");
    size_t n = fread(text, 1, JSON_CONFIG_MAX_BYTES + 1, f);
    int read_error = ferror(f);
    int saved_errno = errno;
    fclose(f);
    int rc = 1;
    if (read_error) {
        snprintf(err, errlen, "%s: cannot read (%s); --model_config takes a preset name or a .json file",
                 path, strerror(saved_errno));
    } else if (n > JSON_CONFIG_MAX_BYTES) {
        snprintf(err, errlen, "%s: larger than %d bytes; a LlamaConfig json is about 1 KB: is this the right file?",
                 path, JSON_CONFIG_MAX_BYTES);
    } else {
        rc = llama_config_from_json_text(c, text, n, path, err, errlen);
    }
    free(text);
    return rc;
}

void llama_config_resolve_or_exit(LlamaConfig* c, const char* name) {
    if (llama_preset_find(name, c)) { return; }
    size_t n = strlen(name);
    if (n > 5 && strcmp(name + n - 5, ".json") == 0) {
        // the authors' scripts name their configs/llama_*.json; without a copy
        // of that directory, the preset of the same name has the same sizes
        char stem[600];
        model_config_stem(name, stem, sizeof stem);
        if (access(name, F_OK) != 0 && strncmp(stem, "llama_", 6) == 0 && llama_preset_find(stem, c)) {
            printf("model_config: %s does not exist; using the built-in preset %s, which has the sizes of "
                   "the authors' configs/%s.json\n", name, stem, stem);
            return;
        }
        char err[1024];
        if (llama_config_from_json(c, name, err, sizeof err) != 0) { fatal("%s", err); }
        return;
    }
    fatal("--model_config '%s' is neither a preset nor a .json file; run with --help for the presets", name);
}

// ----------------------------------------------------------------------------
// training: learning-rate schedule and gradient clipping

// lr of optimizer step `step` (0-based): linear warmup that starts above 0
// (the authors' first step runs at lr 0), then
//   cosine:          to min_lr_ratio * lr at num_training_steps
//   linear:          to 0 at num_training_steps, as transformers'
//                    get_linear_schedule_with_warmup (min_lr_ratio unused)
//   cosine_restarts: ReLoRA's, as the authors define it
//                    (get_cosine_schedule_with_multiple_warmups): the cosine,
//                    but at every multiple of cycle_length the lr drops to 0
//                    and climbs linearly over restart_warmup_steps back to it
float lr_at_step(const TrainConfig* t, int step) {
    float lr = t->lr, min_lr = t->lr * t->min_lr_ratio;
    if (step < t->warmup_steps) { return lr * (float)(step + 1) / (float)t->warmup_steps; }
    int decay_steps = t->num_training_steps - t->warmup_steps;
    float progress = decay_steps > 0 ? (float)(step - t->warmup_steps) / (float)decay_steps : 1.0f;
    if (progress > 1.0f) { progress = 1.0f; }
    if (strcmp(t->scheduler, "linear") == 0) { return lr * (1.0f - progress); }
    if (strcmp(t->scheduler, "cosine_restarts") == 0) {
        int cycle = step % t->cycle_length, restart = step / t->cycle_length;
        if (cycle < t->restart_warmup_steps) {
            // a restart: from 0 up to the cosine's value at the restart's
            // step, whose progress the authors count without the first warmup
            float at = (float)(restart * t->cycle_length) / (float)(decay_steps > 0 ? decay_steps : 1);
            float peak = min_lr + 0.5f * (lr - min_lr) * (1.0f + cosf(3.14159265358979f * at));
            return peak * (float)cycle / (float)t->restart_warmup_steps;
        }
    }
    return min_lr + 0.5f * (lr - min_lr) * (1.0f + cosf(3.14159265358979f * progress));
}

// global l2 norm of all gradients, in double and in a fixed order
double grad_global_norm(const float* grads, size_t n) {
    // fixed chunks, summed in order: deterministic for any thread count
    enum { CHUNK = 1 << 16 };
    size_t nchunks = (n + CHUNK - 1) / CHUNK;
    double* partial = (double*)calloc_check(nchunks * sizeof(double), "norm partials");
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        double acc = 0.0;
        for (size_t i = c * CHUNK; i < end; i++) { acc += (double)grads[i] * grads[i]; }
        partial[c] = acc;
    }
    double total = 0.0;
    for (size_t c = 0; c < nchunks; c++) { total += partial[c]; }
    free(partial);
    return sqrt(total);
}

void grad_scale(float* grads, size_t n, float s) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { grads[i] *= s; }
}

// ----------------------------------------------------------------------------
// training: evaluation and sampling

// draws from softmax(logits / temperature), restricted to the top_k most
// likely tokens when top_k > 0
int sample_token(const float* logits, int V, float temperature, int top_k, Rng* rng, float* probs) {
    // probs (V) scratch
    float maxv = -INFINITY;
    for (int j = 0; j < V; j++) { maxv = logits[j] > maxv ? logits[j] : maxv; }
    float cutoff = -INFINITY;
    if (top_k > 0 && top_k < V) {
        // the k-th largest logit, by partial selection on a copy
        for (int j = 0; j < V; j++) { probs[j] = logits[j]; }
        for (int i = 0; i < top_k; i++) {
            int best = i;
            for (int j = i + 1; j < V; j++) { if (probs[j] > probs[best]) { best = j; } }
            float tmp = probs[i]; probs[i] = probs[best]; probs[best] = tmp;
        }
        cutoff = probs[top_k - 1];
    }
    double sum = 0.0;
    for (int j = 0; j < V; j++) {
        probs[j] = logits[j] >= cutoff ? expf((logits[j] - maxv) / temperature) : 0.0f;
        sum += probs[j];
    }
    double u = rng_uniform(rng) * sum, acc = 0.0;
    for (int j = 0; j < V; j++) {
        acc += probs[j];
        if (u < acc) { return j; }
    }
    return V - 1;
}

// ----------------------------------------------------------------------------
// bf16 weights without fp32 masters: stochastic rounding
//
// with --master_weights 0 the weights live only in bf16, whose gap is 2^-8 to
// 2^-7 of the weight. round to nearest would drop every update smaller than
// half a gap, step after step. stochastic rounding keeps such updates in expectation.
// x rounds up in magnitude with probability (|x| - lo) / gap, so E[round(x)] = x.
// everything below is integer arithmetic on the fp32 bit pattern, with no
// float operations, so a __device__ copy of each function matches bit for bit
// even when the GPU build flushes denormals (--use_fast_math).

#define BF16_DROPPED_BITS 0x0000FFFFu   // the fp32 mantissa bits that bf16 does not keep
#define BF16_MAX_BITS 0x7F7F0000u       // the largest finite bf16, (2 - 2^-7) 2^127 ~ 3.39e38
#define BF16_CANONICAL_NAN 0x7FFF0000u  // what __float2bfloat16 returns for every NaN
#define FP32_INF_BITS 0x7F800000u

// the CUDA trainer's kernels call the functions marked HOST_DEVICE too (it
// defines HOST_DEVICE as __host__ __device__ before including this file)
#ifndef HOST_DEVICE
#define HOST_DEVICE
#endif

HOST_DEVICE static inline uint32_t fp32_to_bits(float x) { uint32_t u; memcpy(&u, &x, sizeof u); return u; }
HOST_DEVICE static inline float fp32_from_bits(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }

// the random bits come from Philox4x32-10 (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011). cuRAND, JAX and PyTorch use the
// same counter-based generator. it has no state: the bits of a weight depend
// on (seed, step, index) alone. so they do not depend on thread order, on how
// the elements are split among threads or blocks, or on a resume from a
// checkpoint. the 128-bit counter holds index and step whole, and the 64-bit
// key holds the seed. for a fixed key Philox is a bijection of the counter,
// so two different (step, index) pairs never get the same draw. a hash of
// the three inputs folded into 64 bits could not promise that. with 10
// rounds Philox passes TestU01's BigCrush (as the paper reports), on the
// outputs of consecutive counters, which is how we use it. we use the first
// 32-bit output word. the rounding reads its low 16 bits. test_subtrack.c
// checks the Random123 known answers. its chi-square tests check those 16
// bits in particular for uniformity, and for independence across index,
// step and seed.
#define PHILOX_M0 0xD2511F53u   // the round multipliers of Philox4x32
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u   // the key schedule: golden ratio - 1 and sqrt(3) - 1, as 0.32 fixed point
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_ROUNDS 10

// ctr is replaced by its 128 random bits
HOST_DEVICE void philox4x32_10(uint32_t ctr[4], uint32_t key0, uint32_t key1) {
    for (int round = 0; round < PHILOX_ROUNDS; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * ctr[0];
        uint64_t p1 = (uint64_t)PHILOX_M1 * ctr[2];
        uint32_t c1 = ctr[1], c3 = ctr[3];
        ctr[0] = (uint32_t)(p1 >> 32) ^ c1 ^ key0;
        ctr[1] = (uint32_t)p1;
        ctr[2] = (uint32_t)(p0 >> 32) ^ c3 ^ key1;
        ctr[3] = (uint32_t)p0;
        key0 += PHILOX_W0;
        key1 += PHILOX_W1;
    }
}

HOST_DEVICE uint32_t sr_random_bits(uint64_t seed, uint64_t step, uint64_t index) {
    uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), (uint32_t)step, (uint32_t)(step >> 32)};
    philox4x32_10(ctr, (uint32_t)seed, (uint32_t)(seed >> 32));
    return ctr[0];
}

// x rounded to a bf16-representable fp32 (low 16 bits zero), using the low 16
// of bits. the sum carries into the kept bits exactly when bits & 0xFFFF >=
// 2^16 - (x's dropped bits). so x rounds up in magnitude with probability
// (dropped bits) / 2^16, which equals (|x| - lo) / gap. this holds because
// the bit pattern of a non-negative float grows linearly with its value
// across each binade, and one bf16 gap is 2^16 patterns. it holds at a
// power of two too: the upper neighbour is 2^16 patterns up, and the gap is
// the lower binade's. it holds for denormals and at the step from denormals
// to normals, where the gap is 2^-133. we work on the magnitude, so negative
// numbers round the same way as positive ones and the sign is kept, -0 too.
// special cases:
//   NaN: the canonical bf16 NaN. a NaN whose payload is all in the dropped
//        bits (0x7F800001) would otherwise truncate to inf.
//   +-inf: unchanged.
//   past the largest finite bf16 (|x| in (BF16_MAX, FLT_MAX]): the upper
//        neighbour would be inf, so we saturate to +-BF16_MAX. a finite
//        weight never turns into inf through rounding. this case cannot be
//        unbiased: we keep x finite and accept the downward bias.
//        bf16_round_nearest goes to inf instead, as IEEE and __float2bfloat16 do.
HOST_DEVICE float bf16_round_stochastic(float x, uint32_t bits) {
    uint32_t u = fp32_to_bits(x);
    uint32_t sign = u & 0x80000000u, mag = u & 0x7FFFFFFFu;
    if (mag > FP32_INF_BITS) { return fp32_from_bits(BF16_CANONICAL_NAN); }
    if (mag == FP32_INF_BITS) { return x; }
    mag += bits & BF16_DROPPED_BITS;             // at most 0x7F7FFFFF + 0xFFFF: no wrap
    if (mag >= FP32_INF_BITS) { mag = BF16_MAX_BITS; }
    return fp32_from_bits(sign | (mag & ~BF16_DROPPED_BITS));
}

// round to nearest, ties to even, the same as __float2bfloat16 bit for bit:
// NaN becomes the canonical NaN and overflow gives +-inf. adding 0x7FFF
// carries for more than half a gap, and the kept lowest bit adds the last 1
// on an exact tie only when it is odd
HOST_DEVICE float bf16_round_nearest(float x) {
    uint32_t u = fp32_to_bits(x);
    if ((u & 0x7FFFFFFFu) > FP32_INF_BITS) { return fp32_from_bits(BF16_CANONICAL_NAN); }
    u += 0x7FFFu + ((u >> 16) & 1u);             // the sign bit never changes: -inf is 0xFF800000
    return fp32_from_bits(u & ~BF16_DROPPED_BITS);
}

// rounds x[0..n) in place. offset is where x starts in the whole parameter
// buffer, so every weight keeps the same random stream whichever chunk,
// thread or call it is rounded in
void bf16_round_stochastic_array(float* x, size_t n, uint64_t seed, uint64_t step, uint64_t offset) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        x[i] = bf16_round_stochastic(x[i], sr_random_bits(seed, step, offset + i));
    }
}

// --master_weights 0 starts from the initial weights rounded to nearest bf16,
// on the CPU and the GPU alike
void llama_round_weights_bf16(Llama* model) {
    for (size_t i = 0; i < model->num_parameters; i++) {
        model->params_memory[i] = bf16_round_nearest(model->params_memory[i]);
    }
}

// ----------------------------------------------------------------------------
// 8-bit optimizer states: blockwise dynamic quantization
//
// groundwork for AdamW moments kept in 8 bits, as bitsandbytes' 8-bit Adam keeps
// them (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization").
// a tensor of n floats is cut into blocks of QUANT8_BLOCK values. each block
// keeps one float, absmax = max |x| over the block, and each value one byte:
// the index of the entry of a 256-entry map nearest to x / absmax.
//
// the map is the "dynamic" (dynamic tree) data type. it has a decimal exponent
// 10^-6 .. 10^0 and linear fraction steps inside each decade, so a value of
// 1e-5 keeps about the same relative precision as one of 0.5. the first moment
// uses the signed map. the second moment is never negative, so it uses the
// unsigned map, which spends the sign bit on one more fraction bit.
//
// the maps, the search and its tie rule match bitsandbytes bit for bit.
// test_subtrack.c checks them against dev/reference/quant8_reference.bin.

// bitsandbytes' 8-bit optimizers used blocks of 2048 (the paper's choice)
// until bnb 0.43; since 0.44 (Sept 2024) Optimizer1State and Optimizer2State
// use 256. we keep 2048 for now: it needs one eighth of the absmax floats
// (0.2% of the 8-bit state, against 1.6% at 256), and scales a little more
// coarsely. the reference file records its block size, and the test checks it
#define QUANT8_BLOCK 2048
#define QUANT8_MAP_SIZE 256

// point i of torch.linspace(0.1, 1, steps) in float32, computed the way
// torch's CPU kernel does it: one float step; points in the first half are
// counted from the start and points in the second half from the end. each
// point is a single fused multiply-add, as torch 2.15's x86 build computes it.
// plain start + step * i would change 42 entries of the signed map and 31 of
// the unsigned one, each by 1 or 2 ulp
static float quant8_linspace(int i, int steps) {
    float step = (1.0f - 0.1f) / (float)(steps - 1);
    if (i < steps / 2) { return fmaf(step, (float)i, 0.1f); }
    return fmaf(-step, (float)(steps - 1 - i), 1.0f);
}

// the dynamic map (256), sorted ascending, equal to bitsandbytes'
// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8). for each decade
// e = 0 .. 6 it holds the midpoints between neighbouring points of
// linspace(0.1, 1, count + 1), scaled by 10^(e - 6). count is 2^e for the
// signed map, which also holds their negatives, and 2^(e + 1) for the unsigned
// map. both maps add 0 and 1.
//   signed:   map[0] = -0.99297, map[126] = -5.5e-7, map[127] = 0, map[128] = 5.5e-7, map[255] = 1
//   unsigned: map[0] = 0, map[1] = 3.25e-7, map[255] = 1
void quant8_dynamic_map(float* map, int is_signed) {
    // python doubles 10**(e - 6); torch rounds the scalar to float before the multiply
    static const double decade[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    int k = 0;
    for (int e = 0; e < 7; e++) {
        int count = is_signed ? 1 << e : 1 << (e + 1);
        for (int j = 0; j < count; j++) {
            float mean = (quant8_linspace(j, count + 1) + quant8_linspace(j + 1, count + 1)) / 2.0f;
            float v = (float)decade[e] * mean;
            map[k++] = v;
            if (is_signed) { map[k++] = -v; }
        }
    }
    map[k++] = 0.0f;
    map[k++] = 1.0f; // k == QUANT8_MAP_SIZE: 2 * 127 + 2 signed, 254 + 2 unsigned
    // insertion sort; the entries are distinct
    for (int i = 1; i < QUANT8_MAP_SIZE; i++) {
        float v = map[i];
        int j = i;
        for (; j > 0 && map[j - 1] > v; j--) { map[j] = map[j - 1]; }
        map[j] = v;
    }
}

// the number of blocks, and so of absmax floats, for n values: ceil(n / QUANT8_BLOCK)
size_t quant8_num_blocks(size_t n) {
    return n / QUANT8_BLOCK + (n % QUANT8_BLOCK != 0);
}

// the index of the map entry nearest to y. bisection finds the first entry
// >= y, then the nearer of it and the entry below wins. distances are float
// differences, and an exact tie goes to the lower entry, as in bitsandbytes'
// CPU kernel (lookup_code_index, bnb 0.49). below map[0] this gives 0, above
// map[255] 255. a NaN gives 0, as bnb's lower_bound does
HOST_DEVICE static inline uint8_t quant8_nearest(const float* map, float y) {
    if (isnan(y)) { return 0; }
    int lo = 0, hi = QUANT8_MAP_SIZE; // map[lo - 1] < y <= map[hi]
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (map[mid] < y) { lo = mid + 1; } else { hi = mid; }
    }
    if (lo == 0) { return 0; }
    if (lo == QUANT8_MAP_SIZE) { return QUANT8_MAP_SIZE - 1; }
    float below = y - map[lo - 1], above = map[lo] - y;
    return (uint8_t)(above < below ? lo : lo - 1);
}

// x (n) -> codes (n), absmax (quant8_num_blocks(n)); map (256) sorted ascending.
// each block of QUANT8_BLOCK values stores absmax = max |x|. the last block may
// be shorter. each value gets the code of the entry nearest to x * (1 / absmax):
// a reciprocal, then a multiply, as bitsandbytes' CPU and CUDA kernels do it
// (x / absmax can differ in the last bit, and so can the code).
// the signed map ends at -0.99297, not -1. so when a block's largest |x| is
// negative, a round trip brings the block back with absmax 0.99297 absmax.
// bnb 0.49's CPU quantize_blockwise writes -1.0 over map[0] for that reason;
// the CUDA kernels and this code use the map as it is.
// an all-zero block gets absmax 0 and codes 0, as in bnb, with no division. it
// dequantizes to map[0] * 0 = -0 (signed) or +0 (unsigned), never NaN.
// non-finite inputs are carried to the whole block, so that the trainer's
// finiteness checks still see them after a round trip:
//   - a NaN makes the block's absmax NaN, so every code is 0 and every
//     dequantized value NaN. bnb's std::max skips NaN instead, and so hides it.
//   - an infinity makes absmax inf. then the infinities get code 0 (inf * 0 is
//     NaN), finite values get the zero entry, and the block dequantizes to inf
//     or NaN.
// an absmax below about 2.9e-39 (subnormal) makes 1 / absmax overflow to inf,
// so there we divide by absmax instead. bnb multiplies by inf, which turns
// 0 * inf into NaN and gives code 0
// the code of x in a block of absmax m > 0: x / m by one multiply with 1/m,
// as bitsandbytes does, or by a division when 1/m overflows (subnormal m)
HOST_DEVICE static inline uint8_t quant8_code(const float* map, float x, float m) {
    float inv = 1.0f / m;
    return quant8_nearest(map, isinf(inv) ? x / m : x * inv);
}

// the same in blocks of `block` values (--optimizer adam8bit: ADAM8BIT_BLOCK, bitsandbytes' optimizers')
void quantize_blockwise_sized(uint8_t* codes, float* absmax, const float* x, size_t n, const float* map,
                              size_t block) {
    size_t num_blocks = n / block + (n % block != 0);
    #pragma omp parallel for schedule(static)
    for (size_t b = 0; b < num_blocks; b++) {
        size_t start = b * block;
        size_t end = start + block < n ? start + block : n;
        // the largest |x| as the largest bit pattern of |x|: the same order
        // for numbers, and a NaN (above inf) wins, so the block turns NaN.
        // order-free, so the GPU's parallel reduction gives the same bits
        uint32_t mbits = 0;
        for (size_t i = start; i < end; i++) {
            uint32_t a = fp32_to_bits(x[i]) & 0x7FFFFFFFu;
            if (a > mbits) { mbits = a; }
        }
        float m = fp32_from_bits(mbits);
        absmax[b] = m;
        if (m == 0.0f) {
            memset(codes + start, 0, end - start);
            continue;
        }
        for (size_t i = start; i < end; i++) { codes[i] = quant8_code(map, x[i], m); }
    }
}

void quantize_blockwise(uint8_t* codes, float* absmax, const float* x, size_t n, const float* map) {
    quantize_blockwise_sized(codes, absmax, x, n, map, QUANT8_BLOCK);
}

// codes (n), absmax (quant8_num_blocks(n)), map (256) -> x (n): map[code] * absmax
void dequantize_blockwise_sized(float* x, const uint8_t* codes, const float* absmax, size_t n, const float* map,
                                size_t block) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { x[i] = map[codes[i]] * absmax[i / block]; }
}

void dequantize_blockwise(float* x, const uint8_t* codes, const float* absmax, size_t n, const float* map) {
    dequantize_blockwise_sized(x, codes, absmax, n, map, QUANT8_BLOCK);
}

// ---- --optimizer adam8bit: bitsandbytes' Adam8bit (bnb.optim.Adam8bit, as the
// authors' torchrun_main.py builds it: betas 0.9 0.999 there, eps 1e-8, their
// weight decay), on the 8-bit state code above. as bnb's Optimizer2State: a
// weight of fewer than ADAM8BIT_MIN_SIZE values (a tensor's one layer: a bnb
// parameter) keeps fp32 moments, every other one 8-bit moments in blocks of
// ADAM8BIT_BLOCK values, M on the signed dynamic map and V on the unsigned one.
// each step dequantizes the moments, updates them in fp32 and quantizes them
// again. the update is bnb's pure-PyTorch reference for the step
// (optimizer_update_8bit_blockwise_pytorch, bnb 0.49), in its order, with t the
// steps already taken:
//   M = b1 M + (1 - b1) G ;  V = b2 V + (1 - b2) G^2
//   d = sqrt(V) / sqrt(1 - b2^(t+1)) + eps
//   W = W (1 - lr wd) ;  W = W + (-lr / (1 - b1^(t+1))) M / d
// (decoupled decay first: bnb's Adam with weight decay is AdamW). the constants
// are rounded to fp32 once, as torch rounds its Python scalars
#define ADAM8BIT_BLOCK 256
#define ADAM8BIT_MIN_SIZE 4096
#define ADAM8BIT_CHUNK ((size_t)ADAM8BIT_BLOCK * 256)   // values dequantized at a time: whole blocks

typedef struct { float b1, a1, b2, a2, sqrt_c2, eps, keep, value; } Adam8bitStep;

static inline Adam8bitStep adam8bit_constants(int t, float lr, float beta1, float beta2, float eps, float wd) {
    Adam8bitStep c;
    c.b1 = beta1;
    c.a1 = (float)(1.0 - (double)beta1);
    c.b2 = beta2;
    c.a2 = (float)(1.0 - (double)beta2);
    c.sqrt_c2 = (float)sqrt(1.0 - pow((double)beta2, t + 1));
    c.eps = eps;
    c.keep = wd > 0.0f ? (float)(1.0 - (double)lr * wd) : 1.0f;
    c.value = (float)(-(double)lr / (1.0 - pow((double)beta1, t + 1)));
    return c;
}

// one element: M, V updated in place; returns the new weight
HOST_DEVICE static inline float adam8bit_element(float w, float* m, float* v, float g, const Adam8bitStep* c) {
    float mm = *m * c->b1 + c->a1 * g;
    float vv = *v * c->b2 + c->a2 * g * g;
    *m = mm;
    *v = vv;
    float d = sqrtf(vv) / c->sqrt_c2 + c->eps;
    return w * c->keep + c->value * mm / d;
}

// a weight with fp32 moments: W, M, V, G (n)
void adam8bit_update(float* W, float* M, float* V, const float* G, size_t n, int t, float lr, float beta1,
                     float beta2, float eps, float weight_decay) {
    Adam8bitStep c = adam8bit_constants(t, lr, beta1, beta2, eps, weight_decay);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { W[i] = adam8bit_element(W[i], M + i, V + i, G[i], &c); }
}

// a weight with 8-bit moments: codes (n) and absmax (ceil(n / ADAM8BIT_BLOCK)) of M and of V, maps [0]
// signed and [1] unsigned, scratch (2 chunk) with chunk a multiple of ADAM8BIT_BLOCK. on return scratch
// holds the fp32 M then V of the last chunk (as they were quantized)
void adam8bit_update_q8(float* W, uint8_t* codes_m, float* absmax_m, uint8_t* codes_v, float* absmax_v,
                        const float* G, size_t n, int t, float lr, float beta1, float beta2, float eps,
                        float weight_decay, const float (*maps)[QUANT8_MAP_SIZE], float* scratch, size_t chunk) {
    float* Mq = scratch;
    float* Vq = scratch + chunk;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk, b = off / ADAM8BIT_BLOCK;
        dequantize_blockwise_sized(Mq, codes_m + off, absmax_m + b, len, maps[0], ADAM8BIT_BLOCK);
        dequantize_blockwise_sized(Vq, codes_v + off, absmax_v + b, len, maps[1], ADAM8BIT_BLOCK);
        adam8bit_update(W + off, Mq, Vq, G + off, len, t, lr, beta1, beta2, eps, weight_decay);
        quantize_blockwise_sized(codes_m + off, absmax_m + b, Mq, len, maps[0], ADAM8BIT_BLOCK);
        quantize_blockwise_sized(codes_v + off, absmax_v + b, Vq, len, maps[1], ADAM8BIT_BLOCK);
    }
}

// 1 when one layer of s keeps 8-bit moments under adam8bit; its blocks
static inline int adam8bit_q8(const TensorSpec* s) { return (size_t)s->rows * s->cols >= ADAM8BIT_MIN_SIZE; }
static inline size_t adam8bit_blocks(size_t n) { return n / ADAM8BIT_BLOCK + (n % ADAM8BIT_BLOCK != 0); }

// ----------------------------------------------------------------------------
// the optimizer over the whole model
//
// with --optimizer low_rank_adamw, the 7 matrices of every layer (wq, wk, wv,
// wo, w_gate, w_up, w_down) each get a LowRankState; every other tensor
// (embeddings, lm_head, norms) gets AdamW. with --optimizer adamw, all get
// AdamW. state memory, which a checkpoint saves verbatim:
//   adam_m, adam_v  (num_adam) each: the AdamW tensors, in table order
//   lowrank_memory  the LowRankStates, in table order then layer order

typedef struct {
    int low_rank;             // 1: low-rank AdamW on the layer matrices
    LowRankConfig cfg;
    float beta1, beta2, eps, weight_decay;
    int l2;                   // --optimizer adam: weight decay as L2 on the gradient (torch.optim.Adam's)
    int sgd;                  // --optimizer sgd: adam_m is the momentum buffer (beta1), and there is no adam_v
    int adafactor;            // --optimizer adafactor: adam_m the first moment (none with beta1 0), adam_v the
                              // statistics of each weight (adafactor_stats_floats), every weight one after another;
                              // with low_rank (low_rank_adafactor) those of the tensors that are not low-rank
    float* adam_m;            // (num_adam)
    float* adam_v;            // (num_adam_v)
    size_t num_adam;
    size_t num_adam_v;        // num_adam, 0 with --optimizer sgd, the statistics with adafactor
    LowRankState* lowrank;    // (num_lowrank)
    int num_lowrank;
    float* lowrank_memory;    // (lowrank_floats)
    size_t lowrank_floats;
    float* scratch;           // (scratch_floats) shared work buffer for lowrank_adamw_step
    size_t scratch_floats;
    int per_layer;            // --optimizer *_per_layer (the CUDA trainer updates during the backward)
    // 8-bit states (--optimizer low_rank_adamw8bit): per slot (a moment of one
    // low-rank matrix, or of an 8-bit AdamW tensor) its codes and absmax at
    // q8 offsets; a step dequantizes a slot pair (M, V) into q8_scratch,
    // updates it in fp32 and quantizes it back, AdamW tensors in chunks of
    // q8_chunk (a multiple of QUANT8_BLOCK, so the blocks are the same)
    int q8;
    int adam8bit;             // --optimizer adam8bit: every weight's moments in q8 slots (adam8bit_q8), or in
                              //   adam_m and adam_v when it is small; blocks of ADAM8BIT_BLOCK, q8 stays 0
    uint8_t* q8_codes;        // (q8_bytes)
    size_t q8_bytes;
    float* q8_absmax;         // (q8_blocks)
    size_t q8_blocks;
    size_t q8_code_at[NUM_PARAMETER_TENSORS];   // where each tensor's slots start (layer 0's M)
    size_t q8_block_at[NUM_PARAMETER_TENSORS];
    float q8_map[2][QUANT8_MAP_SIZE];          // [0] signed (M), [1] unsigned (V)
    float* q8_scratch;        // (2 q8_chunk): M then V, dequantized
    size_t q8_chunk;
    double non_matrix_lr;     // --lr_non_matrix: the embeddings', lm_head's and norms' lr over the step's lr (1)
    int master_weights;       // 0: every update is rounded to bf16 stochastically
    int subspace_bf16;        // --subspace_dtype bfloat16: every new S is rounded to bf16 stochastically
    size_t subspace_floats;   // the S of every low-rank matrix, sum of p R
    size_t subspace_most;     // the largest one's p R
    uint64_t seed;            // of those roundings' random bits (--seed)
    int step;                 // optimizer steps taken (t in the spec)
} Optimizer;

static int optimizer_uses_lowrank(const Optimizer* o, const TensorSpec* s) {
    return o->low_rank && s->is_layer_matrix;
}

// the lr of tensor s at a step whose lr is lr: --lr_non_matrix's share for the embeddings, lm_head and norms
static float optimizer_tensor_lr(const Optimizer* o, const TensorSpec* s, float lr) {
    return s->is_layer_matrix || o->non_matrix_lr == 1.0 ? lr : (float)((double)lr * o->non_matrix_lr);
}

// 8-bit state sections (q8_codes, q8_absmax): low-rank 8-bit states or adam8bit
static int optimizer_has_q8(const Optimizer* o) { return o->q8 || o->adam8bit; }

// the layout of the low-rank states (lowrank_state_layout)
static LowRankStates optimizer_lowrank_states(const Optimizer* o) {
    return o->q8 ? STATES_Q8 : !o->cfg.adafactor ? STATES_ADAM : o->beta1 != 0.0f ? STATES_ADAFACTOR_M
                                                                                   : STATES_ADAFACTOR;
}

// an AdamW tensor whose moments are 8-bit: the embeddings and lm_head (the
// norms' few floats stay fp32)
static int optimizer_adamw_q8(const Optimizer* o, const TensorSpec* s) {
    return o->q8 && !s->is_layer_matrix && !s->is_norm;
}

// --rand_proj's first random step: the authors' test step >= rand_ratio x
// num_training_steps, for whole steps the ceiling (0 at most, INT_MAX at least)
static int golore_from_step(const TrainConfig* t) {
    double at = ceil((double)t->rand_ratio * (double)t->num_training_steps);
    return at <= 0.0 ? 0 : at >= (double)INT_MAX ? INT_MAX : (int)at;
}

// the settings and sizes of the optimizer for model c under t, allocating
// nothing: num_adam, num_lowrank, lowrank_floats and scratch_floats. the CUDA
// trainer's memory plan reads them without building anything. returns NULL,
// or a message naming the matrix whose shape cannot take the rank
const char* optimizer_plan(Optimizer* o, const LlamaConfig* c, const TrainConfig* t) {
    static char msg[512];
    memset(o, 0, sizeof *o);
    o->low_rank = optimizer_name_low_rank(t->optimizer);
    o->per_layer = optimizer_name_per_layer(t->optimizer);
    o->q8 = optimizer_name_8bit(t->optimizer);
    o->adam8bit = strcmp(t->optimizer, "adam8bit") == 0;
    o->non_matrix_lr = t->lr_non_matrix > 0.0f ? (double)t->lr_non_matrix / t->lr : 1.0;
    o->master_weights = t->master_weights;
    o->subspace_bf16 = strcmp(t->subspace_dtype, "bfloat16") == 0;
    o->seed = (uint64_t)t->seed;
    o->beta1 = t->beta1; o->beta2 = t->beta2; o->eps = t->eps; o->weight_decay = t->weight_decay;
    o->l2 = strcmp(t->optimizer, "adam") == 0;
    o->sgd = strcmp(t->optimizer, "sgd") == 0;
    int low_rank_adafactor = strcmp(t->optimizer, "low_rank_adafactor") == 0;
    o->adafactor = strcmp(t->optimizer, "adafactor") == 0 || low_rank_adafactor;
    LowRankConfig lc = {
        strcmp(t->subspace_update_method, "galore") == 0 ? SUBSPACE_GALORE : SUBSPACE_SUBTRACK,
        t->rank, t->low_rank_scale, t->subspace_update_interval, t->st_init_step_size,
        t->adaptive_optimizer, t->recovery_scaling, !t->norm_growth_limiter_off, t->norm_growth_limit,
        t->beta1, t->beta2, t->eps, t->weight_decay,
        strcmp(t->svd, "randomized") == 0, t->svd_power_iters, t->svd_oversample, (uint64_t)t->seed, 0,
        strcmp(t->st_step_size_scheduler, "iterative_decrease") == 0,
        proj_type_parse(t->proj_type) < 0 ? PROJ_STD : (ProjType)proj_type_parse(t->proj_type),
        t->rand_proj, golore_from_step(t), low_rank_adafactor,
    };
    o->cfg = lc;
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    size_t most_moment = 0;  // the largest low-rank moment, R q
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        o->q8_code_at[i] = o->q8_bytes;
        o->q8_block_at[i] = o->q8_blocks;
        if (!optimizer_uses_lowrank(o, &spec[i])) {
            size_t n = tensor_numel(&spec[i]);
            if (o->adam8bit && adam8bit_q8(&spec[i])) {
                o->q8_bytes += 2 * n;
                o->q8_blocks += (size_t)spec[i].layers * 2 * adam8bit_blocks((size_t)spec[i].rows * spec[i].cols);
            } else if (optimizer_adamw_q8(o, &spec[i])) {
                o->q8_bytes += 2 * n;
                o->q8_blocks += 2 * quant8_num_blocks(n);
            } else if (o->adafactor) {
                o->num_adam += o->beta1 != 0.0f ? n : 0;
                o->num_adam_v += (size_t)spec[i].layers * adafactor_stats_floats(spec[i].rows, spec[i].cols);
                size_t sums = 2 * (size_t)spec[i].rows;   // adafactor_update's row sums, doubles
                o->scratch_floats = sums > o->scratch_floats ? sums : o->scratch_floats;
            } else {
                o->num_adam += n;
                o->num_adam_v += o->sgd ? 0 : n;
            }
            continue;
        }
        if (lowrank_check_rank(msg, sizeof msg, spec[i].name, spec[i].rows, spec[i].cols, t->rank) != NULL) {
            return msg;
        }
        o->num_lowrank += spec[i].layers;
        int m = spec[i].rows, n = spec[i].cols, right = lowrank_right(m, n, o->cfg.proj_type);
        size_t per = lowrank_state_floats_of(m, n, right, t->rank, optimizer_lowrank_states(o));
        o->lowrank_floats += (size_t)spec[i].layers * per;
        size_t pr = (size_t)t->rank * (right ? n : m);
        o->subspace_floats += (size_t)spec[i].layers * pr;
        o->subspace_most = pr > o->subspace_most ? pr : o->subspace_most;
        size_t need = lowrank_scratch_num_floats_cfg(m, n, right, t->rank, &o->cfg);
        o->scratch_floats = need > o->scratch_floats ? need : o->scratch_floats;
        size_t moment = (size_t)t->rank * (right ? m : n);
        if (o->q8) {
            o->q8_bytes += (size_t)spec[i].layers * 2 * moment;
            o->q8_blocks += (size_t)spec[i].layers * 2 * quant8_num_blocks(moment);
        }
        most_moment = moment > most_moment ? moment : most_moment;
    }
    if (o->q8) {
        // a whole low-rank moment, and AdamW in chunks of at least one block
        o->q8_chunk = quant8_num_blocks(most_moment > QUANT8_BLOCK ? most_moment : QUANT8_BLOCK) * QUANT8_BLOCK;
        quant8_dynamic_map(o->q8_map[0], 1);
        quant8_dynamic_map(o->q8_map[1], 0);
    }
    if (o->adam8bit) {
        o->q8_chunk = ADAM8BIT_CHUNK;
        quant8_dynamic_map(o->q8_map[0], 1);
        quant8_dynamic_map(o->q8_map[1], 0);
    }
    return NULL;
}

// ---- ZeRO-1 ownership (issue [5/6]: --zero_stage 1 in the CUDA trainer)
//
// with N data-parallel ranks, each optimizer state and fp32 master lives on one
// rank, its owner, which alone updates those weights and then sends them to
// the others. SubTrack++'s state is per matrix (S, M, V, the limiter), so a
// low-rank matrix (a tensor's layer) is owned whole. AdamW is elementwise, so
// an AdamW tensor's layer is cut into at most N contiguous pieces of whole
// 8-bit blocks (QUANT8_BLOCK elements, so that 8-bit moments split exactly)
// when it is large. the pieces go to ranks largest first, each to the rank
// holding the fewest bytes so far (ties: the lower rank): the longest-
// processing-time rule, which leaves the largest rank within one piece of the
// mean. state_bytes is what optimizer_plan counts for the piece, plus its fp32
// master with --master_weights 1

typedef struct {
    int tensor, layer;      // the parameter table's tensor and layer
    size_t first, count;    // the piece: elements [first, first + count) of that layer's slice
    size_t per_layer;       // the floats of one layer of the tensor: its layer starts at layer x per_layer
    int low_rank;           // a low-rank matrix (whole), else an AdamW piece
    size_t state_bytes;     // its optimizer states and fp32 master, on its owner
    int owner;              // 0..N-1
} ShardPiece;

typedef struct {
    int num_ranks;
    int num_pieces;
    ShardPiece* pieces;     // (num_pieces) in the parameter table's order
    size_t* rank_bytes;     // (num_ranks) the states each rank holds
    size_t total_bytes;     // all of them: what one rank holds alone
} ShardPlan;

// AdamW layers below this many elements stay whole: cutting the norms' few
// floats would only add messages
#define SHARD_MIN_PIECE ((size_t)QUANT8_BLOCK * 16)

// the state bytes of an AdamW piece of count elements (whole 8-bit blocks but the last)
static size_t shard_adamw_bytes(const Optimizer* o, const TensorSpec* s, size_t count) {
    size_t b = optimizer_adamw_q8(o, s) ? 2 * count + 2 * quant8_num_blocks(count) * sizeof(float)
                                        : 2 * count * sizeof(float);
    return b + (o->master_weights ? count * sizeof(float) : 0);
}

// the state bytes of one low-rank matrix (m, n) at rank r
static size_t shard_lowrank_bytes(const Optimizer* o, int m, int n, int r) {
    size_t b;
    int right = lowrank_right(m, n, o->cfg.proj_type);
    if (o->q8) {
        size_t moment = (size_t)r * (right ? m : n);
        b = lowrank_state_num_floats_q8(m, n, right, r) * sizeof(float) + 2 * moment +
            2 * quant8_num_blocks(moment) * sizeof(float);
    } else {
        b = lowrank_state_num_floats(m, n, right, r) * sizeof(float);
    }
    return b + (o->master_weights ? (size_t)m * n * sizeof(float) : 0);
}

static int shard_piece_larger(const void* a, const void* b) {
    const ShardPiece* x = *(const ShardPiece* const*)a;
    const ShardPiece* y = *(const ShardPiece* const*)b;
    if (x->state_bytes != y->state_bytes) { return x->state_bytes > y->state_bytes ? -1 : 1; }
    return x < y ? -1 : x > y;  // the table's order: deterministic
}

void shard_plan_free(ShardPlan* sp) {
    free(sp->pieces);
    free(sp->rank_bytes);
    memset(sp, 0, sizeof *sp);
}

// the pieces of model c under t and their owners among num_ranks ranks.
// returns NULL, or what is wrong (a rank that does not fit a matrix's shape)
const char* shard_plan_build(ShardPlan* sp, const LlamaConfig* c, const TrainConfig* t, int num_ranks) {
    memset(sp, 0, sizeof *sp);
    Optimizer o;
    const char* problem = optimizer_plan(&o, c, t);
    if (problem != NULL) { return problem; }
    if (num_ranks < 1) { return "shard_plan_build: num_ranks must be >= 1"; }
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    // count, then fill
    int n = 0;
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
            size_t per = (size_t)spec[i].rows * spec[i].cols;
            for (int l = 0; l < spec[i].layers; l++) {
                if (optimizer_uses_lowrank(&o, &spec[i])) {
                    if (pass == 1) {
                        ShardPiece pc = {i, l, 0, per, per, 1, shard_lowrank_bytes(&o, spec[i].rows, spec[i].cols,
                                                                                   t->rank), 0};
                        sp->pieces[n] = pc;
                    }
                    n++;
                    continue;
                }
                // up to num_ranks pieces of whole blocks, none below SHARD_MIN_PIECE (but a small layer's one)
                size_t k = per / SHARD_MIN_PIECE;
                k = k < 1 ? 1 : k > (size_t)num_ranks ? (size_t)num_ranks : k;
                size_t step = (per + k - 1) / k;
                step = (step + QUANT8_BLOCK - 1) / QUANT8_BLOCK * QUANT8_BLOCK;
                for (size_t first = 0; first < per; first += step) {
                    if (pass == 1) {
                        size_t count = per - first < step ? per - first : step;
                        ShardPiece pc = {i, l, first, count, per, 0, shard_adamw_bytes(&o, &spec[i], count), 0};
                        sp->pieces[n] = pc;
                    }
                    n++;
                }
            }
        }
        if (pass == 0) {
            sp->pieces = (ShardPiece*)calloc_check((size_t)n * sizeof(ShardPiece), "shard plan");
            sp->rank_bytes = (size_t*)calloc_check((size_t)num_ranks * sizeof(size_t), "shard plan");
        }
    }
    sp->num_pieces = n;
    sp->num_ranks = num_ranks;
    ShardPiece** order = (ShardPiece**)malloc_check((size_t)n * sizeof(ShardPiece*), "shard plan order");
    for (int k = 0; k < n; k++) { order[k] = &sp->pieces[k]; sp->total_bytes += sp->pieces[k].state_bytes; }
    qsort(order, (size_t)n, sizeof *order, shard_piece_larger);
    for (int k = 0; k < n; k++) {
        int least = 0;
        for (int r = 1; r < num_ranks; r++) { if (sp->rank_bytes[r] < sp->rank_bytes[least]) { least = r; } }
        order[k]->owner = least;
        sp->rank_bytes[least] += order[k]->state_bytes;
    }
    free(order);
    return NULL;
}

// --memory_plan --num_processes N: what ZeRO-1 would leave each rank of the
// optimizer states and fp32 masters (the plan above holds all of them)
void shard_plan_print(const LlamaConfig* c, const TrainConfig* t, int num_ranks, FILE* f);

// the rank holding the most state bytes (the lowest of equals)
int shard_plan_largest_rank(const ShardPlan* sp) {
    int most = 0;
    for (int r = 1; r < sp->num_ranks; r++) { if (sp->rank_bytes[r] > sp->rank_bytes[most]) { most = r; } }
    return most;
}

void shard_plan_print(const LlamaConfig* c, const TrainConfig* t, int num_ranks, FILE* f) {
    ShardPlan sp;
    const char* problem = shard_plan_build(&sp, c, t, num_ranks);
    if (problem != NULL) { fprintf(f, "ZeRO-1 plan: %s\n", problem); return; }
    int most = shard_plan_largest_rank(&sp);
    double gib = 1024.0 * 1024.0 * 1024.0;
    fprintf(f, "ZeRO-1 at %d processes (--zero_stage 1: each optimizer state, and with bf16 weights each fp32 "
            "master, on its owner only): the optimizer states%s, %.3f GiB in all, in %d pieces (whole "
            "low-rank matrices, AdamW cut at most %d ways); the largest rank, %d, holds %.3f GiB of them (1/%d = "
            "%.3f GiB), %.3f GiB less than one process alone\n", num_ranks, t->master_weights ? " and fp32 masters" : "",
            sp.total_bytes / gib, sp.num_pieces, num_ranks, most, sp.rank_bytes[most] / gib, num_ranks,
            sp.total_bytes / gib / num_ranks, (sp.total_bytes - sp.rank_bytes[most]) / gib);
    shard_plan_free(&sp);
}

// the codes and absmax of the moments of slot pair (tensor i, layer l): M at
// the returned place, V right after it (n values and nb blocks each; nb is
// quant8_num_blocks(n), or adam8bit_blocks(n) under adam8bit's smaller blocks)
static void optimizer_q8_slot(const Optimizer* o, int i, int l, size_t n, size_t nb, size_t* code,
                              size_t* block) {
    *code = o->q8_code_at[i] + (size_t)l * 2 * n;
    *block = o->q8_block_at[i] + (size_t)l * 2 * nb;
}

// optimizer_plan, then the states (zeroed) and the scratch
const char* optimizer_build(Optimizer* o, const LlamaConfig* c, const TrainConfig* t) {
    const char* problem = optimizer_plan(o, c, t);
    if (problem != NULL) { return problem; }
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    o->adam_m = (float*)calloc_check(o->num_adam * sizeof(float), "AdamW first moments");
    o->adam_v = o->num_adam_v > 0 ? (float*)calloc_check(o->num_adam_v * sizeof(float), "AdamW second moments")
                                   : NULL;
    o->lowrank = (LowRankState*)calloc_check((size_t)o->num_lowrank * sizeof(LowRankState), "low-rank states");
    o->lowrank_memory = (float*)calloc_check(o->lowrank_floats * sizeof(float), "low-rank state memory");
    o->scratch = (float*)malloc_check(o->scratch_floats * sizeof(float), "optimizer scratch");
    if (optimizer_has_q8(o)) {
        // all-zero blocks (absmax 0, codes 0) dequantize to zero moments
        o->q8_codes = (uint8_t*)calloc_check(o->q8_bytes, "8-bit optimizer states");
        o->q8_absmax = (float*)calloc_check(o->q8_blocks * sizeof(float), "8-bit state scales");
        o->q8_scratch = (float*)malloc_check(2 * o->q8_chunk * sizeof(float), "8-bit state scratch");
    }
    float* mem = o->lowrank_memory;
    int k = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (!optimizer_uses_lowrank(o, &spec[i])) { continue; }
        int m = spec[i].rows, n = spec[i].cols, right = lowrank_right(m, n, o->cfg.proj_type);
        for (int l = 0; l < spec[i].layers; l++) {
            lowrank_state_layout(&o->lowrank[k++], m, n, right, t->rank, mem, optimizer_lowrank_states(o));
            mem += o->lowrank[k - 1].num_floats;
            o->lowrank[k - 1].svd_stream = (uint64_t)(k - 1);
        }
    }
    return NULL;
}

void optimizer_free(Optimizer* o) {
    free(o->adam_m); free(o->adam_v); free(o->lowrank); free(o->lowrank_memory); free(o->scratch);
    free(o->q8_codes); free(o->q8_absmax); free(o->q8_scratch);
    memset(o, 0, sizeof *o);
}

size_t optimizer_state_bytes(const Optimizer* o) {
    return (o->num_adam + o->num_adam_v + o->lowrank_floats + o->q8_blocks) * sizeof(float) + o->q8_bytes;
}

// the name of this step's phase when every low-rank matrix takes an SVD
// (the first step, and GaLore's refreshes), for the progress lines; else NULL
const char* optimizer_svd_phase(const Optimizer* o) {
    if (!o->low_rank) { return NULL; }
    if (o->step == 0) { return "initial subspaces (SVD): matrix"; }
    if (o->cfg.method == SUBSPACE_GALORE && o->step % o->cfg.update_interval == 0) { return "GaLore refresh (SVD): matrix"; }
    return NULL;
}

// --subspace_dtype bfloat16: the random bits that round low-rank state st's
// new S come from (seed, step, SR_SUBSPACE_STREAM + where S sits in
// lowrank_memory), a stream apart from the weights' (indices below 2^63)
#define SR_SUBSPACE_STREAM ((uint64_t)1 << 63)
uint64_t optimizer_subspace_stream(const Optimizer* o, const LowRankState* st) {
    return SR_SUBSPACE_STREAM + (uint64_t)(st->memory - o->lowrank_memory);
}

// with --subspace_dtype bfloat16, every S a checkpoint brought rounded to
// nearest bf16: a no-op on one saved with it (its S are bf16 values
// already), and the GPU's narrowing on upload, for one saved without it
void optimizer_round_subspaces_nearest(Optimizer* o) {
    if (!o->subspace_bf16) { return; }
    for (int k = 0; k < o->num_lowrank; k++) {
        LowRankState* st = &o->lowrank[k];
        for (size_t j = 0; j < (size_t)st->p * st->r; j++) { st->S[j] = bf16_round_nearest(st->S[j]); }
    }
}

// one step over every tensor, at learning rate lr
void optimizer_step(Optimizer* o, Llama* model, float step_lr) {
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, &model->config);
    float** params = parameter_pointers(&model->params);
    float** grads = parameter_pointers(&model->grads);
    size_t adam_off = 0, v_off = 0;   // v_off: adafactor's statistics
    int k = 0;
    Progress pr;
    progress_begin(&pr, optimizer_svd_phase(o), optimizer_svd_phase(o) != NULL ? o->num_lowrank : 0);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = tensor_numel(&spec[i]);
        float lr = optimizer_tensor_lr(o, &spec[i], step_lr);
        // without masters, the updated weights are rounded to bf16 with random
        // bits drawn from (seed, step, index in the parameter buffer)
        size_t first = (size_t)(params[i] - model->params_memory);
        float* Mq = o->q8 ? o->q8_scratch : NULL;               // the dequantized moments (8-bit states)
        float* Vq = o->q8 ? o->q8_scratch + o->q8_chunk : NULL;
        if (!optimizer_uses_lowrank(o, &spec[i])) {
            if (o->adam8bit) {
                // each layer a bnb parameter: 8-bit moments, or fp32 ones when it is small
                size_t per = (size_t)spec[i].rows * spec[i].cols;
                for (int l = 0; l < spec[i].layers; l++) {
                    float* W = params[i] + l * per;
                    if (adam8bit_q8(&spec[i])) {
                        size_t code, block, nb = adam8bit_blocks(per);
                        optimizer_q8_slot(o, i, l, per, nb, &code, &block);
                        adam8bit_update_q8(W, o->q8_codes + code, o->q8_absmax + block, o->q8_codes + code + per,
                                           o->q8_absmax + block + nb, grads[i] + l * per, per,
                                           o->step, lr, o->beta1, o->beta2, o->eps, o->weight_decay,
                                           (const float (*)[QUANT8_MAP_SIZE])o->q8_map, o->q8_scratch,
                                           o->q8_chunk);
                    } else {
                        adam8bit_update(W, o->adam_m + adam_off + l * per, o->adam_v + adam_off + l * per,
                                        grads[i] + l * per, per, o->step, lr, o->beta1, o->beta2, o->eps,
                                        o->weight_decay);
                    }
                }
                adam_off += adam8bit_q8(&spec[i]) ? 0 : n;
            } else if (optimizer_adamw_q8(o, &spec[i])) {
                // 8-bit moments, dequantized a chunk at a time (whole blocks)
                size_t code, block, nb = quant8_num_blocks(n);
                optimizer_q8_slot(o, i, 0, n, nb, &code, &block);
                for (size_t off = 0; off < n; off += o->q8_chunk) {
                    size_t len = n - off < o->q8_chunk ? n - off : o->q8_chunk;
                    size_t b = off / QUANT8_BLOCK;
                    dequantize_blockwise(Mq, o->q8_codes + code + off, o->q8_absmax + block + b, len, o->q8_map[0]);
                    dequantize_blockwise(Vq, o->q8_codes + code + n + off, o->q8_absmax + block + nb + b, len,
                                         o->q8_map[1]);
                    adamw_update(params[i] + off, Mq, Vq, grads[i] + off, len, o->step, lr, o->beta1, o->beta2,
                                 o->eps, o->weight_decay, o->l2);
                    quantize_blockwise(o->q8_codes + code + off, o->q8_absmax + block + b, Mq, len, o->q8_map[0]);
                    quantize_blockwise(o->q8_codes + code + n + off, o->q8_absmax + block + nb + b, Vq, len,
                                       o->q8_map[1]);
                }
            } else if (o->adafactor) {
                size_t per = (size_t)spec[i].rows * spec[i].cols;
                size_t stats = adafactor_stats_floats(spec[i].rows, spec[i].cols);
                for (int l = 0; l < spec[i].layers; l++) {
                    float* M = o->num_adam > 0 ? o->adam_m + adam_off + l * per : NULL;
                    adafactor_update(params[i] + l * per, M, o->adam_v + v_off + l * stats, grads[i] + l * per,
                                     spec[i].rows, spec[i].cols, o->step, lr, o->beta1, o->weight_decay,
                                     (double*)o->scratch);
                }
                adam_off += o->num_adam > 0 ? n : 0;
                v_off += spec[i].layers * stats;
            } else {
                if (o->sgd) {
                    sgd_update(params[i], o->adam_m + adam_off, grads[i], n, lr, o->beta1, o->weight_decay);
                } else {
                    adamw_update(params[i], o->adam_m + adam_off, o->adam_v + adam_off, grads[i], n, o->step,
                                 lr, o->beta1, o->beta2, o->eps, o->weight_decay, o->l2);
                }
                adam_off += n;
            }
            if (!o->master_weights) { bf16_round_stochastic_array(params[i], n, o->seed, (uint64_t)o->step, first); }
            continue;
        }
        size_t per = (size_t)spec[i].rows * spec[i].cols;
        for (int l = 0; l < spec[i].layers; l++) {
            LowRankState* st = &o->lowrank[k++];
            size_t mn = (size_t)st->r * st->q, code = 0, block = 0, nb = quant8_num_blocks(mn);
            if (o->q8) {
                // the step on dequantized moments (the rotation included), requantized after
                optimizer_q8_slot(o, i, l, mn, nb, &code, &block);
                dequantize_blockwise(Mq, o->q8_codes + code, o->q8_absmax + block, mn, o->q8_map[0]);
                dequantize_blockwise(Vq, o->q8_codes + code + mn, o->q8_absmax + block + nb, mn, o->q8_map[1]);
                st->M = Mq;
                st->V = Vq;
            }
            lowrank_adamw_step(st, params[i] + l * per, grads[i] + l * per, o->step, &o->cfg, lr, o->scratch);
            if (o->subspace_bf16 && lowrank_subspace_moves(&o->cfg, o->step)) {
                // the step ran on the fp32 S; what is kept is S rounded to bf16
                bf16_round_stochastic_array(st->S, (size_t)st->p * st->r, o->seed, (uint64_t)o->step,
                                            optimizer_subspace_stream(o, st));
            }
            if (o->q8) {
                quantize_blockwise(o->q8_codes + code, o->q8_absmax + block, Mq, mn, o->q8_map[0]);
                quantize_blockwise(o->q8_codes + code + mn, o->q8_absmax + block + nb, Vq, mn, o->q8_map[1]);
                st->M = st->V = NULL;
            }
            if (!o->master_weights) {
                bf16_round_stochastic_array(params[i] + l * per, per, o->seed, (uint64_t)o->step, first + l * per);
            }
            progress_update(&pr, k);
        }
    }
    o->step++;
}

double optimizer_subspace_seconds(const Optimizer* o) {
    double s = 0.0;
    for (int k = 0; k < o->num_lowrank; k++) { s += o->lowrank[k].subspace_seconds; }
    return s;
}

// ----------------------------------------------------------------------------
// checkpoints
//
// one file, DIR/checkpoint.bin, little-endian:
//   header    int64[CHECKPOINT_HEADER_INTS]
//     [0] magic CHECKPOINT_MAGIC   [1] version CHECKPOINT_VERSION
//     [2] V [3] C [4] F [5] NH [6] L [7] max_seq_len
//     [8] rms_norm_eps, [9] rope_theta: float32 bits
//     [10] optimizer: 0 adamw (or adam), 1 low_rank_adamw, 2 sgd   [11] method: 0 galore, 1 subtrack
//     [12] rank   [13] optimizer steps taken (the step to run next)
//     [14] num_params   [15] num_adam   [16] lowrank_floats
//     [17] sampling rng state (uint64 bits)
//     [18..23] train loader position (ShardPosition: epoch, window_in_epoch,
//              num_windows, T, shuffle, seed)
//     [24] bytes of the settings text
//     [25] q8_bytes   [26] q8_blocks (8-bit states; 0 without them)
//     the rest 0
//   settings  text, "name=value\n" for every setting that shapes the
//             trajectory (CHECKPOINT_SETTINGS), zero-padded to a multiple of 8
//   body      float32: params (num_params, parameter-table order),
//             adam_m (num_adam), adam_v (num_adam; absent with sgd, [10] = 2), lowrank_memory (lowrank_floats);
//             with 8-bit states then uint8 q8_codes (q8_bytes, zero-padded to
//             a multiple of 8) and float32 q8_absmax (q8_blocks, padded likewise)
//   trailer   int64 CHECKPOINT_TRAILER_MAGIC, then the CRC32C of every byte
//             before the trailer (as a uint64)
// the CRC is computed as the file is written and checked as it is read, in
// one pass each. the file goes to DIR/checkpoint.bin.tmp, is fsynced, renamed
// over DIR/checkpoint.bin, and the directory is fsynced: a crash or a power
// loss leaves the old checkpoint or the new one, whole. nothing that is not
// finite is ever written, and loading checks every float and header field.

#define CHECKPOINT_MAGIC 20261105
#define CHECKPOINT_VERSION 2
#define CHECKPOINT_HEADER_INTS 64
#define CHECKPOINT_TRAILER_MAGIC 0x4352433332435452LL  // "RTC23CRC" as little-endian bytes
#define CHECKPOINT_FILE "checkpoint.bin"
#define CHECKPOINT_SETTINGS_MAX 4096

// ---- CRC32C (Castagnoli, the polynomial of iSCSI and ext4), eight bytes a
// step through eight tables (slice-by-8), a few GB/s on one core
static uint32_t crc32c_table[8][256];

static void crc32c_init(void) {
    if (crc32c_table[0][1] != 0) { return; }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) { c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1; }
        crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        for (int t = 1; t < 8; t++) {
            uint32_t prev = crc32c_table[t - 1][n];
            crc32c_table[t][n] = (prev >> 8) ^ crc32c_table[0][prev & 0xff];
        }
    }
}

// continues crc over n more bytes (start from 0); the file is little-endian,
// and so is every machine this builds for
uint32_t crc32c_update(uint32_t crc, const void* data, size_t n) {
    crc32c_init();
    const unsigned char* p = (const unsigned char*)data;
    crc = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc32c_table[7][w & 0xff] ^ crc32c_table[6][(w >> 8) & 0xff] ^ crc32c_table[5][(w >> 16) & 0xff] ^
              crc32c_table[4][(w >> 24) & 0xff] ^ crc32c_table[3][(w >> 32) & 0xff] ^
              crc32c_table[2][(w >> 40) & 0xff] ^ crc32c_table[1][(w >> 48) & 0xff] ^ crc32c_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) { crc = (crc >> 8) ^ crc32c_table[0][(crc ^ *p++) & 0xff]; }
    return ~crc;
}

// the settings that shape a run's trajectory: saved in every checkpoint, and
// a resume that gives other values is refused unless --allow_changed names them
static const char* const CHECKPOINT_SETTINGS[] = {
    "optimizer", "subspace_update_method", "rank", "subspace_update_interval", "st_init_step_size",
    "low_rank_scale", "adaptive_optimizer", "recovery_scaling", "norm_growth_limit", "norm_growth_limiter_off",
    "beta1", "beta2", "eps", "weight_decay", "lr", "scheduler", "warmup_steps", "min_lr_ratio",
    "num_training_steps", "grad_clipping", "batch_size", "total_batch_size", "max_length", "seed", "shuffle",
    "master_weights", "subspace_dtype", "svd", "svd_power_iters", "svd_oversample", "cycle_length",
    "restart_warmup_steps", "st_step_size_scheduler", "proj_type", "rand_proj", "rand_ratio", "lr_non_matrix",
};

// settings recorded only by later versions of the trainer, and the value a
// checkpoint without them was trained with
static const char* const CHECKPOINT_SETTINGS_ADDED[][2] = {
    {"master_weights", "on"},
    {"subspace_dtype", "float32"},
    {"svd", "exact"},
    {"svd_power_iters", "2"},
    {"svd_oversample", "8"},
    {"cycle_length", "0"},
    {"restart_warmup_steps", "0"},
    {"st_step_size_scheduler", "constant"},
    {"proj_type", "std"},
    {"rand_proj", "off"},
    {"rand_ratio", "2"},
    {"lr_non_matrix", "0"},
};
#define NUM_CHECKPOINT_SETTINGS ((int)(sizeof(CHECKPOINT_SETTINGS) / sizeof(CHECKPOINT_SETTINGS[0])))

// a setting's value as it is saved: floats with 9 digits, which read back to
// the same float32
static void setting_value_exact(const TrainConfig* t, const char* name, char* out, size_t cap) {
    char flag[80];
    snprintf(flag, sizeof flag, "--%s", name);
    int j = flag_index(flag);
    if (j < 0) { snprintf(out, cap, "?"); return; }
    if (TRAIN_FLAGS[j].kind == FLAG_FLOAT) {
        snprintf(out, cap, "%.9g", *(const float*)((const char*)t + TRAIN_FLAGS[j].offset));
    } else {
        flag_value_string(&TRAIN_FLAGS[j], t, out, cap);
    }
}

// "name=value\n" for every CHECKPOINT_SETTINGS entry; returns its length
size_t checkpoint_settings_text(const TrainConfig* t, char* out, size_t cap) {
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < NUM_CHECKPOINT_SETTINGS && n < cap; i++) {
        char v[600];
        setting_value_exact(t, CHECKPOINT_SETTINGS[i], v, sizeof v);
        n += (size_t)snprintf(out + n, cap - n, "%s=%s\n", CHECKPOINT_SETTINGS[i], v);
    }
    return n < cap ? n : cap - 1;
}

// the value of name in a settings text, or NULL
static const char* settings_lookup(const char* text, const char* name, char* out, size_t cap) {
    size_t len = strlen(name);
    for (const char* p = text; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, len) == 0 && p[len] == '=') {
            const char* v = p + len + 1;
            size_t vl = strcspn(v, "\n");
            snprintf(out, cap, "%.*s", (int)(vl < cap ? vl : cap - 1), v);
            return out;
        }
    }
    return NULL;
}

// is name in the comma-separated list
static int name_in_list(const char* list, const char* name) {
    size_t len = strlen(name);
    for (const char* p = list; p != NULL && *p; ) {
        size_t n = strcspn(p, ",");
        if (n == len && strncmp(p, name, len) == 0) { return 1; }
        p += n;
        if (*p == ',') { p++; }
    }
    return 0;
}

// compares this run's settings with those a checkpoint saved. the differences
// that --allow_changed does not name go into problems (one per line: saved and
// given); the allowed ones into changed. returns how many were not allowed
int checkpoint_settings_compare(const TrainConfig* t, const char* saved, char* problems, size_t pcap,
                                char* changed, size_t ccap) {
    int bad = 0;
    size_t pn = 0, cn = 0;
    problems[0] = changed[0] = '\0';
    for (int i = 0; i < NUM_CHECKPOINT_SETTINGS; i++) {
        const char* name = CHECKPOINT_SETTINGS[i];
        char mine[600], theirs[600];
        setting_value_exact(t, name, mine, sizeof mine);
        if (settings_lookup(saved, name, theirs, sizeof theirs) == NULL) {
            snprintf(theirs, sizeof theirs, "(none)");
            for (size_t k = 0; k < sizeof CHECKPOINT_SETTINGS_ADDED / sizeof CHECKPOINT_SETTINGS_ADDED[0]; k++) {
                if (strcmp(CHECKPOINT_SETTINGS_ADDED[k][0], name) == 0) {
                    snprintf(theirs, sizeof theirs, "%s", CHECKPOINT_SETTINGS_ADDED[k][1]);
                }
            }
        }
        if (strcmp(mine, theirs) == 0) { continue; }
        if (name_in_list(t->allow_changed, name)) {
            if (cn < ccap) { cn += (size_t)snprintf(changed + cn, ccap - cn, "%s=%s\n", name, theirs); }
        } else {
            bad++;
            if (pn < pcap) {
                pn += (size_t)snprintf(problems + pn, pcap - pn, "  --%s: saved %s, given %s\n", name, theirs, mine);
            }
        }
    }
    return bad;
}

typedef struct {
    Llama* model;
    Optimizer* opt;
    ShardLoader* train_loader;
    Rng* sample_rng;
    const TrainConfig* settings;   // recorded in the file, checked on resume
} TrainState;

static void checkpoint_header(int64_t h[CHECKPOINT_HEADER_INTS], const TrainState* s, size_t settings_bytes) {
    const LlamaConfig* c = &s->model->config;
    memset(h, 0, CHECKPOINT_HEADER_INTS * sizeof(int64_t));
    h[0] = CHECKPOINT_MAGIC;
    h[1] = CHECKPOINT_VERSION;
    h[2] = c->V; h[3] = c->C; h[4] = c->F; h[5] = c->NH; h[6] = c->L; h[7] = c->max_seq_len;
    uint32_t bits;
    memcpy(&bits, &c->norm_eps, 4); h[8] = bits;
    memcpy(&bits, &c->rope_theta, 4); h[9] = bits;
    h[10] = s->opt->adam8bit ? 5 : s->opt->adafactor ? (s->opt->low_rank ? 4 : 3) : s->opt->sgd ? 2 : s->opt->low_rank;
    h[11] = s->opt->cfg.method;
    h[12] = s->opt->low_rank ? s->opt->cfg.rank : 0;
    h[13] = s->opt->step;
    h[14] = (int64_t)s->model->num_parameters;
    h[15] = (int64_t)s->opt->num_adam;
    h[16] = (int64_t)s->opt->lowrank_floats;
    h[30] = s->opt->adafactor ? (int64_t)s->opt->num_adam_v : 0;   // adafactor's statistics
    memcpy(&h[17], &s->sample_rng->state, 8);
    ShardPosition p = shard_loader_get_position(s->train_loader);
    h[18] = p.epoch; h[19] = p.window_in_epoch; h[20] = p.num_windows;
    h[21] = p.T; h[22] = p.shuffle; h[23] = p.seed;
    h[24] = (int64_t)settings_bytes;
    h[25] = (int64_t)s->opt->q8_bytes;
    h[26] = (int64_t)s->opt->q8_blocks;
}

static size_t padded8(size_t n) { return (n + 7) & ~(size_t)7; }

// 1 when all n floats are finite
int floats_are_finite(const float* x, size_t n) {
    int ok = 1;
    #pragma omp parallel for reduction(&&:ok) schedule(static)
    for (size_t i = 0; i < n; i++) { ok = ok && isfinite(x[i]); }
    return ok;
}

// 1 when the weights and every optimizer state are finite
int train_state_is_finite(const TrainState* s) {
    const Optimizer* o = s->opt;
    return floats_are_finite(s->model->params_memory, s->model->num_parameters) &&
           floats_are_finite(o->adam_m, o->num_adam) && floats_are_finite(o->adam_v, o->num_adam_v) &&
           floats_are_finite(o->lowrank_memory, o->lowrank_floats) && floats_are_finite(o->q8_absmax, o->q8_blocks);
}

// the writer and reader of the file body: every byte through the CRC
typedef struct { FILE* f; uint32_t crc; int ok; } CheckpointStream;

static void checkpoint_write(CheckpointStream* w, const void* data, size_t bytes) {
    if (!w->ok || bytes == 0) { return; }  // (an absent section: data may be NULL)
    w->crc = crc32c_update(w->crc, data, bytes);
    w->ok = fwrite(data, 1, bytes, w->f) == bytes;
}

// the 8-bit states after the float body, each zero-padded to 8 bytes
static void checkpoint_write_q8(CheckpointStream* w, const Optimizer* o) {
    static const unsigned char zeros[8] = {0};
    if (!optimizer_has_q8(o)) { return; }
    checkpoint_write(w, o->q8_codes, o->q8_bytes);
    checkpoint_write(w, zeros, padded8(o->q8_bytes) - o->q8_bytes);
    checkpoint_write(w, o->q8_absmax, o->q8_blocks * sizeof(float));
    checkpoint_write(w, zeros, padded8(o->q8_blocks * sizeof(float)) - o->q8_blocks * sizeof(float));
}

static void checkpoint_read(CheckpointStream* r, void* data, size_t bytes) {
    if (!r->ok || bytes == 0) { return; }  // (an absent section: data may be NULL)
    r->ok = fread(data, 1, bytes, r->f) == bytes;
    if (r->ok) { r->crc = crc32c_update(r->crc, data, bytes); }
}

// fsync of a directory, so that a rename in it survives a power loss
static int fsync_dir(const char* dir) {
    int fd = open(dir, O_RDONLY);
    if (fd < 0) { return -1; }
    int rc = fsync(fd);
    close(fd);
    return rc;
}

// the end of a file read through r: the trailer, its CRC against r's, and
// nothing after it. closes f. returns 0, else fills err (naming path)
static int checkpoint_read_end(FILE* f, const CheckpointStream* r, const char* path, char* err, size_t errlen) {
    int64_t trailer[2] = {0, 0};
    int ok = r->ok && fread(trailer, sizeof trailer, 1, f) == 1;
    int extra = ok && fgetc(f) != EOF;
    fclose(f);
    if (!ok || extra) {
        snprintf(err, errlen, "%s: %s than its header says; the file is corrupt (an interrupted copy?)", path,
                 ok ? "longer" : "shorter");
        return 1;
    }
    if (trailer[0] != CHECKPOINT_TRAILER_MAGIC || (uint64_t)trailer[1] != (uint64_t)r->crc) {
        snprintf(err, errlen, "%s: the checksum does not match (CRC32C %08x, the file says %08llx); the file is "
                 "corrupt: resume from another copy", path, r->crc, (unsigned long long)trailer[1]);
        return 1;
    }
    return 0;
}

// ---- sharded checkpoints (--zero_stage 1 in the CUDA trainer)
//
// under ZeRO-1 no rank holds every optimizer state, so each rank writes the
// pieces it owns (shard_plan_build) to a file of its own, and rank 0 then
// writes a manifest over DIR/checkpoint.bin:
//   DIR/checkpoint.bin                                   the manifest
//   DIR/shards-SSSSSSSS-IIIIIIIIIIII/rank-RRRRR-of-NNNNN.bin  one per rank
// (S the step, I the save's id in hex, R the rank, N the ranks). manifest:
//   header    int64[CHECKPOINT_HEADER_INTS], a checkpoint's, but [0] is
//             CHECKPOINT_MANIFEST_MAGIC, and [27] N, [28] P the pieces,
//             [29] the save's id (48 bits, drawn by rank 0 for each save)
//   settings  as in a checkpoint
//   pieces    int64[P][6]: tensor, layer, first, count, owner, state floats
//             (a low-rank matrix's state; an AdamW piece's M and V, 2 count),
//             in the parameter table's order, tiling every layer of every tensor
//   trailer   as in a checkpoint: the CRC32C of every byte before it
// the shard of rank r:
//   header    int64[CHECKPOINT_SHARD_INTS]: CHECKPOINT_SHARD_MAGIC, version,
//             step, r, N, id, the pieces r owns, the floats of the body
//   body      float32, each piece r owns in the table's order: its fp32
//             weights (count; the masters), then its state floats (M then V)
//   trailer   as in a checkpoint
// every file goes through a .tmp, fsync and rename. rank 0 writes the manifest
// only after every rank has written and synced its shard, and the shards'
// directory is new for each save (its name holds the step and the id), so a
// save that stops halfway leaves the previous manifest and its shards whole:
// a sharded checkpoint is complete when its manifest is. after the manifest,
// rank 0 removes every other shards directory (and a one-file save removes
// them all). reading assembles the whole state from the N shards, so a
// checkpoint of N ranks resumes on any number of ranks, with or without
// ZeRO-1, and on the CPU trainer (re-sharding is a new plan over the whole)

#define CHECKPOINT_MANIFEST_MAGIC 20261203
#define CHECKPOINT_SHARD_MAGIC 20261204
#define CHECKPOINT_SHARD_INTS 8
#define CHECKPOINT_PIECE_INTS 6
#define CHECKPOINT_ID_MAX (((int64_t)1 << 48) - 1)

// a new save's id, 48 bits from the clock and the process id. rank 0 draws
// it for each save; it only has to differ from earlier saves' in the directory
int64_t checkpoint_new_id(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 40);
    return (int64_t)(splitmix64_next(&x) & (uint64_t)CHECKPOINT_ID_MAX);
}

// the directory of the shards of the save (step, id) in dir
static void checkpoint_shards_dir(char* out, size_t cap, const char* dir, int64_t step, int64_t id) {
    snprintf(out, cap, "%s/shards-%08lld-%012llx", dir, (long long)step, (unsigned long long)id);
}

static void checkpoint_shard_path(char* out, size_t cap, const char* dir, int64_t step, int64_t id, int rank,
                                  int ranks) {
    char sd[1100];
    checkpoint_shards_dir(sd, sizeof sd, dir, step, id);
    snprintf(out, cap, "%s/rank-%05d-of-%05d.bin", sd, rank, ranks);
}

// where tensor i starts in the parameter table's layout
static size_t tensor_offset(const TensorSpec spec[NUM_PARAMETER_TENSORS], int i) {
    size_t at = 0;
    for (int k = 0; k < i; k++) { at += tensor_numel(&spec[k]); }
    return at;
}

// where piece pc of model c lives in the whole state: its weights in params
// (NULL: not asked), its states in o (m, and v for an AdamW piece, else NULL),
// n floats each
static void checkpoint_piece_places(Optimizer* o, const LlamaConfig* c, float* params, const ShardPiece* pc,
                                    float** w, float** m, float** v, size_t* n) {
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    size_t adam = 0;
    int matrix = 0;
    for (int i = 0; i < pc->tensor; i++) {
        if (optimizer_uses_lowrank(o, &spec[i])) { matrix += spec[i].layers; } else { adam += tensor_numel(&spec[i]); }
    }
    size_t within = (size_t)pc->layer * pc->per_layer + pc->first;
    *w = params != NULL ? params + tensor_offset(spec, pc->tensor) + within : NULL;
    if (pc->low_rank) {
        const LowRankState* ls = &o->lowrank[matrix + pc->layer];
        *m = ls->memory;
        *v = NULL;
        *n = lowrank_state_num_floats(ls->m, ls->n, ls->right, ls->r);
    } else {
        *m = o->adam_m + adam + within;
        *v = o->adam_v != NULL ? o->adam_v + adam + within : NULL;
        *n = pc->count;
    }
}

// the state floats a checkpoint holds for piece pc: M and V of an AdamW piece
static size_t checkpoint_piece_state_floats(Optimizer* o, const LlamaConfig* c, const ShardPiece* pc) {
    float *w, *m, *v;
    size_t n;
    checkpoint_piece_places(o, c, NULL, pc, &w, &m, &v, &n);
    return v != NULL ? 2 * n : n;
}

// writes the trailer, syncs and closes f, renames tmp to path and syncs dir.
// returns 0, else fills err (tmp removed, path untouched)
static int checkpoint_file_finish(FILE* f, CheckpointStream* w, const char* tmp, const char* path, const char* dir,
                                  char* err, size_t errlen) {
    int64_t trailer[2] = {CHECKPOINT_TRAILER_MAGIC, (int64_t)w->crc};
    int ok = w->ok && fwrite(trailer, sizeof trailer, 1, f) == 1;
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    int saved_errno = errno;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        snprintf(err, errlen, "writing %s failed (%s); disk full, or a file size limit? the previous checkpoint is "
                 "kept", tmp, strerror(saved_errno != 0 ? saved_errno : errno));
        remove(tmp);
        return 1;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s (%s)", tmp, path, strerror(errno));
        remove(tmp);
        return 1;
    }
    if (fsync_dir(dir) != 0) {
        snprintf(err, errlen, "cannot sync the directory %s after writing %s (%s)", dir, path, strerror(errno));
        return 1;
    }
    return 0;
}

// removes every shards directory in dir but keep (a path, or NULL: all):
// their rank files and .tmp files, then the directory (left if it holds
// anything else)
static void checkpoint_remove_other_shards(const char* dir, const char* keep) {
    char pattern[1100];
    snprintf(pattern, sizeof pattern, "%s/shards-*", dir);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) != 0) { return; }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        if (keep != NULL && strcmp(g.gl_pathv[i], keep) == 0) { continue; }
        char files[1200];
        snprintf(files, sizeof files, "%s/rank-*-of-*.bin*", g.gl_pathv[i]);
        glob_t gf;
        if (glob(files, 0, NULL, &gf) == 0) {
            for (size_t k = 0; k < gf.gl_pathc; k++) { remove(gf.gl_pathv[k]); }
            globfree(&gf);
        }
        rmdir(g.gl_pathv[i]);
    }
    globfree(&g);
}

// rank's shard of the save (step of s, id) into dir: the weights and states of
// the pieces of sp it owns, read from s's whole-layout copies (where the
// caller put them). returns 0, else fills err. refuses a piece that is not finite
int checkpoint_save_shard(const TrainState* s, const ShardPlan* sp, int rank, int64_t id, const char* dir, char* err,
                          size_t errlen) {
    Optimizer* o = s->opt;
    const LlamaConfig* c = &s->model->config;
    int64_t sh[CHECKPOINT_SHARD_INTS] = {CHECKPOINT_SHARD_MAGIC, CHECKPOINT_VERSION, o->step, rank, sp->num_ranks, id,
                                         0, 0};
    for (int p = 0; p < sp->num_pieces; p++) {
        const ShardPiece* pc = &sp->pieces[p];
        if (pc->owner != rank) { continue; }
        float *w, *m, *v;
        size_t n;
        checkpoint_piece_places(o, c, s->model->params_memory, pc, &w, &m, &v, &n);
        if (!floats_are_finite(w, pc->count) || !floats_are_finite(m, n) || (v != NULL && !floats_are_finite(v, n))) {
            snprintf(err, errlen, "the weights or optimizer states after step %d are not finite (rank %d's piece of "
                     "tensor %d, layer %d); not saved (the checkpoint in %s is kept)", o->step, rank, pc->tensor,
                     pc->layer, dir);
            return 1;
        }
        sh[6]++;
        sh[7] += (int64_t)(pc->count + (v != NULL ? 2 * n : n));
    }
    char sd[1100], path[1300], tmp[1400];
    checkpoint_shards_dir(sd, sizeof sd, dir, o->step, id);
    checkpoint_shard_path(path, sizeof path, dir, o->step, id, rank, sp->num_ranks);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (mkdir(sd, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s (%s); check that --save_dir is writable", sd, strerror(errno));
        return 1;
    }
    FILE* f = fopen(tmp, "wb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot write %s (%s); check that --save_dir is writable", tmp, strerror(errno));
        return 1;
    }
    CheckpointStream w = {f, 0, 1};
    checkpoint_write(&w, sh, sizeof sh);
    for (int p = 0; p < sp->num_pieces; p++) {
        const ShardPiece* pc = &sp->pieces[p];
        if (pc->owner != rank) { continue; }
        float *wt, *m, *v;
        size_t n;
        checkpoint_piece_places(o, c, s->model->params_memory, pc, &wt, &m, &v, &n);
        checkpoint_write(&w, wt, pc->count * sizeof(float));
        checkpoint_write(&w, m, n * sizeof(float));
        if (v != NULL) { checkpoint_write(&w, v, n * sizeof(float)); }
    }
    if (checkpoint_file_finish(f, &w, tmp, path, sd, err, errlen) != 0) { return 1; }
    if (fsync_dir(dir) != 0) {  // the shards directory's own entry
        snprintf(err, errlen, "cannot sync the directory %s after creating %s (%s)", dir, sd, strerror(errno));
        return 1;
    }
    return 0;
}

// opens dir/checkpoint.bin.tmp (path and tmp: 1024 and 1100 bytes) and writes
// the header of s and the settings text into w. manifest: NULL for a
// one-file checkpoint, else a manifest's ranks, pieces and id (slots 27..29).
// returns 0, else fills err
static int checkpoint_begin(const TrainState* s, const char* dir, const int64_t manifest[3], char* path, char* tmp,
                            CheckpointStream* w, char* err, size_t errlen) {
    snprintf(path, 1024, "%s/%s", dir, CHECKPOINT_FILE);
    snprintf(tmp, 1100, "%s.tmp", path);
    FILE* f = fopen(tmp, "wb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot write %s (%s); check that --save_dir exists and is writable", tmp, strerror(errno));
        return 1;
    }
    char settings[CHECKPOINT_SETTINGS_MAX + 8];
    memset(settings, 0, sizeof settings);
    size_t settings_bytes = checkpoint_settings_text(s->settings, settings, CHECKPOINT_SETTINGS_MAX);
    int64_t h[CHECKPOINT_HEADER_INTS];
    checkpoint_header(h, s, settings_bytes);
    if (manifest != NULL) {
        h[0] = CHECKPOINT_MANIFEST_MAGIC;
        h[27] = manifest[0];
        h[28] = manifest[1];
        h[29] = manifest[2];
    }
    CheckpointStream begun = {f, 0, 1};
    *w = begun;
    checkpoint_write(w, h, sizeof h);
    checkpoint_write(w, settings, padded8(settings_bytes));
    return 0;
}

// rank 0, once every rank's shard of the save (step of s, id) is written and
// synced: the manifest, renamed over dir/checkpoint.bin, which completes the
// checkpoint; then every other shards directory is removed. returns 0, else
// fills err (the previous checkpoint is untouched)
int checkpoint_save_manifest(const TrainState* s, const ShardPlan* sp, int64_t id, const char* dir, char* err,
                             size_t errlen) {
    char path[1024], tmp[1100];
    int64_t manifest[3] = {sp->num_ranks, sp->num_pieces, id};
    CheckpointStream w;
    if (checkpoint_begin(s, dir, manifest, path, tmp, &w, err, errlen) != 0) { return 1; }
    FILE* f = w.f;
    for (int p = 0; p < sp->num_pieces; p++) {
        const ShardPiece* pc = &sp->pieces[p];
        int64_t row[CHECKPOINT_PIECE_INTS] = {pc->tensor, pc->layer, (int64_t)pc->first, (int64_t)pc->count, pc->owner,
                                              (int64_t)checkpoint_piece_state_floats(s->opt, &s->model->config, pc)};
        checkpoint_write(&w, row, sizeof row);
    }
    if (checkpoint_file_finish(f, &w, tmp, path, dir, err, errlen) != 0) { return 1; }
    char keep[1100];
    checkpoint_shards_dir(keep, sizeof keep, dir, s->opt->step, id);
    checkpoint_remove_other_shards(dir, keep);
    return 0;
}

// reads and checks a manifest's piece table (the file's header h and
// settings are read): every piece of model c in place, tiling each layer of
// each tensor in the table's order, owners in range; with o, the same
// optimizer layout (low-rank matrices whole, state sizes). returns the table
// (P rows of CHECKPOINT_PIECE_INTS, malloc'd), or NULL with err filled
static int64_t* checkpoint_read_pieces(const char* path, const int64_t h[CHECKPOINT_HEADER_INTS], const LlamaConfig* c,
                                       Optimizer* o, char* err, size_t errlen) {
    int64_t ranks = h[27], P = h[28];
    if (ranks < 1 || ranks > 100000 || P < 1 || P > ((int64_t)1 << 24) || h[29] < 0 || h[29] > CHECKPOINT_ID_MAX ||
        h[25] != 0 || h[26] != 0) {
        snprintf(err, errlen, "%s: a manifest field is out of range (ranks %lld, pieces %lld, id %lld, 8-bit sizes "
                 "%lld %lld); the file is corrupt", path, (long long)ranks, (long long)P, (long long)h[29],
                 (long long)h[25], (long long)h[26]);
        return NULL;
    }
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s (%s)", path, strerror(errno));
        return NULL;
    }
    int64_t* rows = (int64_t*)malloc_check((size_t)P * CHECKPOINT_PIECE_INTS * sizeof(int64_t), "manifest pieces");
    char pad[CHECKPOINT_SETTINGS_MAX + 8];
    int64_t hh[CHECKPOINT_HEADER_INTS];
    CheckpointStream r = {f, 0, 1};
    checkpoint_read(&r, hh, sizeof hh);
    checkpoint_read(&r, pad, padded8((size_t)h[24]));
    checkpoint_read(&r, rows, (size_t)P * CHECKPOINT_PIECE_INTS * sizeof(int64_t));
    if (checkpoint_read_end(f, &r, path, err, errlen) != 0) {
        free(rows);
        return NULL;
    }
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, c);
    int64_t k = 0;
    int matrix = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        int64_t per = (int64_t)spec[i].rows * spec[i].cols;
        int low_rank = o != NULL && optimizer_uses_lowrank(o, &spec[i]);
        for (int l = 0; l < spec[i].layers; l++) {
            for (int64_t pos = 0; pos < per; k++) {
                const int64_t* x = rows + k * CHECKPOINT_PIECE_INTS;
                int64_t want_state = -1;
                if (o != NULL) {
                    const LowRankState* ls = low_rank ? &o->lowrank[matrix + l] : NULL;
                    want_state = ls != NULL ? (int64_t)lowrank_state_num_floats(ls->m, ls->n, ls->right, ls->r)
                                            : 2 * x[3];
                }
                if (k >= P || x[0] != i || x[1] != l || x[2] != pos || x[3] <= 0 || x[3] > per - pos ||
                    x[4] < 0 || x[4] >= ranks || x[5] < 0 || x[5] > ((int64_t)1 << 40) ||
                    (o != NULL && (x[5] != want_state || (low_rank && x[3] != per)))) {
                    snprintf(err, errlen, "%s: piece %lld does not fit %s (tensor %d, %s, layer %d at element %lld); "
                             "the file is corrupt, or of another --optimizer or --rank", path, (long long)k,
                             k < P ? "its place" : "(missing)", i, spec[i].name, l, (long long)pos);
                    free(rows);
                    return NULL;
                }
                pos += x[3];
            }
        }
        if (low_rank) { matrix += spec[i].layers; }
    }
    if (k != P) {
        snprintf(err, errlen, "%s: %lld pieces, the model has %lld; the file is corrupt", path, (long long)P,
                 (long long)k);
        free(rows);
        return NULL;
    }
    return rows;
}

// reads every shard of a manifest (header h, pieces from
// checkpoint_read_pieces) of the checkpoint in dir: the weights into params
// (table layout), and with o the states into o's whole layout. each shard's
// header must name this save (step, id), its rank and N, and its CRC must
// match. returns 0, else fills err
static int checkpoint_read_shards(const char* dir, const int64_t h[CHECKPOINT_HEADER_INTS], const int64_t* rows,
                                  const LlamaConfig* c, float* params, Optimizer* o, char* err, size_t errlen) {
    int64_t ranks = h[27], P = h[28], id = h[29];
    size_t skip_floats = 0;
    float* skip = NULL;
    if (o == NULL) {
        for (int64_t k = 0; k < P; k++) {
            size_t n = (size_t)rows[k * CHECKPOINT_PIECE_INTS + 5];
            skip_floats = n > skip_floats ? n : skip_floats;
        }
        skip = (float*)malloc_check((skip_floats > 0 ? skip_floats : 1) * sizeof(float), "checkpoint states");
    }
    int rc = 0;
    for (int rank = 0; rank < ranks && rc == 0; rank++) {
        char path[1300];
        checkpoint_shard_path(path, sizeof path, dir, h[13], id, rank, (int)ranks);
        int64_t want[CHECKPOINT_SHARD_INTS] = {CHECKPOINT_SHARD_MAGIC, CHECKPOINT_VERSION, h[13], rank, ranks, id, 0, 0};
        for (int64_t k = 0; k < P; k++) {
            const int64_t* x = rows + k * CHECKPOINT_PIECE_INTS;
            if (x[4] == rank) { want[6]++; want[7] += x[3] + x[5]; }
        }
        FILE* f = fopen(path, "rb");
        if (f == NULL) {
            snprintf(err, errlen, "cannot open %s (%s), a shard that %s/%s names; the checkpoint is incomplete (its "
                     "shards were moved or removed): resume from a whole copy of the directory", path,
                     strerror(errno), dir, CHECKPOINT_FILE);
            rc = 1;
            break;
        }
        CheckpointStream r = {f, 0, 1};
        int64_t sh[CHECKPOINT_SHARD_INTS];
        checkpoint_read(&r, sh, sizeof sh);
        if (!r.ok || memcmp(sh, want, sizeof sh) != 0) {
            snprintf(err, errlen, "%s: its header does not match the manifest %s/%s (magic %lld, step %lld, rank %lld "
                     "of %lld, id %llx, %lld pieces, %lld floats; expected step %lld, rank %d of %lld, id %llx, %lld "
                     "pieces, %lld floats); the file is corrupt or of another save", path, dir, CHECKPOINT_FILE,
                     (long long)sh[0], (long long)sh[2], (long long)sh[3], (long long)sh[4],
                     (unsigned long long)sh[5], (long long)sh[6], (long long)sh[7], (long long)h[13], rank,
                     (long long)ranks, (unsigned long long)id, (long long)want[6], (long long)want[7]);
            fclose(f);
            rc = 1;
            break;
        }
        TensorSpec spec[NUM_PARAMETER_TENSORS];
        parameter_table(spec, c);
        for (int64_t k = 0; k < P && r.ok; k++) {
            const int64_t* x = rows + k * CHECKPOINT_PIECE_INTS;
            if (x[4] != rank) { continue; }
            ShardPiece pc = {(int)x[0], (int)x[1], (size_t)x[2], (size_t)x[3],
                             (size_t)spec[x[0]].rows * spec[x[0]].cols, 0, 0, rank};
            pc.low_rank = o != NULL && optimizer_uses_lowrank(o, &spec[x[0]]);
            if (o == NULL) {
                size_t at = tensor_offset(spec, pc.tensor);
                checkpoint_read(&r, params + at + (size_t)pc.layer * pc.per_layer + pc.first, pc.count * sizeof(float));
                checkpoint_read(&r, skip, (size_t)x[5] * sizeof(float));
                continue;
            }
            float *w, *m, *v;
            size_t n;
            checkpoint_piece_places(o, c, params, &pc, &w, &m, &v, &n);
            checkpoint_read(&r, w, pc.count * sizeof(float));
            checkpoint_read(&r, m, n * sizeof(float));
            if (v != NULL) { checkpoint_read(&r, v, n * sizeof(float)); }
        }
        rc = checkpoint_read_end(f, &r, path, err, errlen);
    }
    free(skip);
    return rc;
}

// returns 0 on success, else fills err (the previous checkpoint is untouched).
// refuses (1) a state that is not finite
int checkpoint_save(const TrainState* s, const char* dir, char* err, size_t errlen) {
    if (!train_state_is_finite(s)) {
        snprintf(err, errlen, "the weights or optimizer states after step %d are not finite; not saved (the "
                 "checkpoint in %s is kept)", s->opt->step, dir);
        return 1;
    }
    char path[1024], tmp[1100];
    CheckpointStream w;
    if (checkpoint_begin(s, dir, NULL, path, tmp, &w, err, errlen) != 0) { return 1; }
    FILE* f = w.f;
    const Optimizer* o = s->opt;
    checkpoint_write(&w, s->model->params_memory, s->model->num_parameters * sizeof(float));
    checkpoint_write(&w, o->adam_m, o->num_adam * sizeof(float));
    checkpoint_write(&w, o->adam_v, o->num_adam_v * sizeof(float));
    checkpoint_write(&w, o->lowrank_memory, o->lowrank_floats * sizeof(float));
    checkpoint_write_q8(&w, o);
    if (checkpoint_file_finish(f, &w, tmp, path, dir, err, errlen) != 0) { return 1; }
    checkpoint_remove_other_shards(dir, NULL);  // an earlier sharded save's, now replaced
    return 0;
}

// reads a checkpoint's header and settings text (for the resume check before
// anything is built). returns 0, else fills err
int checkpoint_read_settings(const char* dir, int64_t h[CHECKPOINT_HEADER_INTS], char* settings, size_t cap,
                             char* err, size_t errlen) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, CHECKPOINT_FILE);
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s (%s); --continue_from takes a --save_dir of an earlier run",
                 path, strerror(errno));
        return 1;
    }
    int rc = 0;
    if (fread(h, sizeof(int64_t) * CHECKPOINT_HEADER_INTS, 1, f) != 1) {
        snprintf(err, errlen, "%s: shorter than its header; the file is corrupt", path);
        rc = 1;
    } else if (h[0] != CHECKPOINT_MAGIC && h[0] != CHECKPOINT_MANIFEST_MAGIC) {
        snprintf(err, errlen, "%s: magic %lld, expected %d (or %d, a sharded checkpoint's manifest); not a "
                 "checkpoint of this trainer", path, (long long)h[0], CHECKPOINT_MAGIC, CHECKPOINT_MANIFEST_MAGIC);
        rc = 1;
    } else if (h[1] != CHECKPOINT_VERSION) {
        snprintf(err, errlen, "%s: format version %lld; this trainer reads version %d (version 1, before "
                 "checksums and recorded settings, is not read: resume it with the trainer that wrote it, or "
                 "start again)", path, (long long)h[1], CHECKPOINT_VERSION);
        rc = 1;
    } else if (h[24] <= 0 || h[24] > CHECKPOINT_SETTINGS_MAX || (size_t)h[24] >= cap) {
        snprintf(err, errlen, "%s: settings size %lld in the header is out of range; the file is corrupt", path,
                 (long long)h[24]);
        rc = 1;
    } else if (fread(settings, 1, (size_t)h[24], f) != (size_t)h[24]) {
        snprintf(err, errlen, "%s: shorter than its settings; the file is corrupt", path);
        rc = 1;
    } else {
        settings[h[24]] = '\0';
    }
    fclose(f);
    return rc;
}

// refuses a checkpoint header of another model config than c. returns 0, else fills err
int checkpoint_check_model(const int64_t h[CHECKPOINT_HEADER_INTS], const LlamaConfig* c, const char* dir,
                           char* err, size_t errlen) {
    uint32_t eps_bits, theta_bits;
    memcpy(&eps_bits, &c->norm_eps, 4);
    memcpy(&theta_bits, &c->rope_theta, 4);
    int64_t want[8] = {c->V, c->C, c->F, c->NH, c->L, c->max_seq_len, eps_bits, theta_bits};
    for (int i = 0; i < 8; i++) {
        if (h[2 + i] != want[i]) {
            snprintf(err, errlen, "%s/%s: saved from another model config (V=%lld C=%lld F=%lld NH=%lld L=%lld "
                     "max_seq_len=%lld); pass the same --model_config as that run", dir, CHECKPOINT_FILE,
                     (long long)h[2], (long long)h[3], (long long)h[4], (long long)h[5], (long long)h[6],
                     (long long)h[7]);
            return 1;
        }
    }
    return 0;
}

// the body of a one-file checkpoint at path (header h, checked) into s.
// returns 0, else fills err
static int checkpoint_read_body(TrainState* s, const char* path, const int64_t h[CHECKPOINT_HEADER_INTS], char* err,
                                size_t errlen) {
    Optimizer* o = s->opt;
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s (%s)", path, strerror(errno));
        return 1;
    }
    char pad[CHECKPOINT_SETTINGS_MAX + 8];
    CheckpointStream r = {f, 0, 1};
    int64_t hh[CHECKPOINT_HEADER_INTS];
    checkpoint_read(&r, hh, sizeof hh);
    checkpoint_read(&r, pad, padded8((size_t)h[24]));
    checkpoint_read(&r, s->model->params_memory, s->model->num_parameters * sizeof(float));
    checkpoint_read(&r, o->adam_m, o->num_adam * sizeof(float));
    checkpoint_read(&r, o->adam_v, o->num_adam_v * sizeof(float));
    checkpoint_read(&r, o->lowrank_memory, o->lowrank_floats * sizeof(float));
    if (optimizer_has_q8(o)) {
        char q8pad[8];
        checkpoint_read(&r, o->q8_codes, o->q8_bytes);
        checkpoint_read(&r, q8pad, padded8(o->q8_bytes) - o->q8_bytes);
        checkpoint_read(&r, o->q8_absmax, o->q8_blocks * sizeof(float));
        checkpoint_read(&r, q8pad, padded8(o->q8_blocks * sizeof(float)) - o->q8_blocks * sizeof(float));
    }
    return checkpoint_read_end(f, &r, path, err, errlen);
}

// restores everything a checkpoint holds into s, whose model, optimizer and
// loader are already built from the command line. the CRC, every header field
// and every float are checked; a checkpoint of another model config or
// optimizer setup is refused. (the settings were compared by the caller, with
// checkpoint_read_settings, before anything was built.) returns 0, else fills err
int checkpoint_load(TrainState* s, const char* dir, char* err, size_t errlen) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, CHECKPOINT_FILE);
    int64_t h[CHECKPOINT_HEADER_INTS], want[CHECKPOINT_HEADER_INTS];
    char settings[CHECKPOINT_SETTINGS_MAX + 8];
    if (checkpoint_read_settings(dir, h, settings, sizeof settings, err, errlen) != 0) { return 1; }
    checkpoint_header(want, s, 0);
    if (checkpoint_check_model(h, &s->model->config, dir, err, errlen) != 0) { return 1; }
    if (h[10] != want[10] || h[12] != want[12] || (h[10] && h[11] != want[11])) {
        snprintf(err, errlen, "%s: saved with another optimizer setup (low_rank=%lld method=%lld rank=%lld); "
                 "pass the same --optimizer, --subspace_update_method and --rank", path,
                 (long long)h[10], (long long)h[11], (long long)h[12]);
        return 1;
    }
    if (h[14] != want[14] || h[15] != want[15] || h[16] != want[16] || h[25] != want[25] || h[26] != want[26] ||
        h[30] != want[30]) {
        snprintf(err, errlen, "%s: header sizes do not match this model; the file is corrupt", path);
        return 1;
    }
    // every other field in range before it is used: the step is an int, and
    // the data position must not overflow the loader's int64 stream index
    if (h[13] < 0 || h[13] > INT32_MAX || h[17] == 0 || h[18] < 0 || h[18] > ((int64_t)1 << 31) ||
        h[19] < 0 || h[20] <= 0 || h[21] <= 0 || h[21] > INT32_MAX || (h[22] != 0 && h[22] != 1)) {
        snprintf(err, errlen, "%s: a header field is out of range (step %lld, rng %lld, data position epoch %lld "
                 "window %lld of %lld, T %lld, shuffle %lld); the file is corrupt", path, (long long)h[13],
                 (long long)h[17], (long long)h[18], (long long)h[19], (long long)h[20], (long long)h[21],
                 (long long)h[22]);
        return 1;
    }
    Optimizer* o = s->opt;
    if (h[0] == CHECKPOINT_MANIFEST_MAGIC) {  // sharded: the whole state from every shard
        int64_t* rows = checkpoint_read_pieces(path, h, &s->model->config, o, err, errlen);
        if (rows == NULL) { return 1; }
        int rc = checkpoint_read_shards(dir, h, rows, &s->model->config, s->model->params_memory, o, err, errlen);
        free(rows);
        if (rc != 0) { return 1; }
    } else if (checkpoint_read_body(s, path, h, err, errlen) != 0) {
        return 1;
    }
    if (!train_state_is_finite(s)) {
        snprintf(err, errlen, "%s: holds weights or optimizer states that are not finite (NaN or Inf); the run "
                 "that wrote it had diverged, or the file is corrupt", path);
        return 1;
    }
    optimizer_round_subspaces_nearest(o);
    o->step = (int)h[13];
    memcpy(&s->sample_rng->state, &h[17], 8);
    ShardPosition p = {h[18], h[19], h[20], h[21], h[22], h[23]};
    char lmsg[512];
    if (shard_loader_set_position(s->train_loader, &p, lmsg, sizeof lmsg) != 0) {
        snprintf(err, errlen, "%s: %s", path, lmsg);
        return 1;
    }
    return 0;
}

// 0 when the weights read from path are finite, else frees model and fills err
static int checkpoint_params_finite(Llama* model, const char* path, char* err, size_t errlen) {
    if (!floats_are_finite(model->params_memory, model->num_parameters)) {
        snprintf(err, errlen, "%s: holds weights that are not finite; the file is corrupt", path);
        llama_free(model);
        return 1;
    }
    return 0;
}

// the model of a checkpoint file, for tools that need only the weights (the
// HF export's logits check): builds model from the header's config and reads
// the parameters, with the same checks as a resume (the CRC over the whole
// file, sizes, finite weights). returns 0, else fills err
int checkpoint_load_params(const char* path, Llama* model, char* err, size_t errlen) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s (%s); pass a --save_dir of a training run", path, strerror(errno));
        return 1;
    }
    int64_t h[CHECKPOINT_HEADER_INTS];
    CheckpointStream r = {f, 0, 1};
    checkpoint_read(&r, h, sizeof h);
    int manifest = r.ok && h[0] == CHECKPOINT_MANIFEST_MAGIC;  // a sharded checkpoint: the shards hold the weights
    if (!r.ok || (h[0] != CHECKPOINT_MAGIC && !manifest) || h[1] != CHECKPOINT_VERSION || h[24] <= 0 ||
        h[24] > CHECKPOINT_SETTINGS_MAX) {
        snprintf(err, errlen, "%s: not a version %d checkpoint of this trainer (or its header is corrupt)", path,
                 CHECKPOINT_VERSION);
        fclose(f);
        return 1;
    }
    // sizes against the file's length before anything is allocated: a header
    // that claims a huge model must not make us try to build one
    for (int i = 2; i <= 7; i++) {
        if (h[i] <= 0 || h[i] > INT32_MAX) {
            snprintf(err, errlen, "%s: model size %lld in header slot %d is out of range; the file is corrupt", path,
                     (long long)h[i], i);
            fclose(f);
            return 1;
        }
    }
    const int64_t max_floats = (int64_t)1 << 40;
    struct stat st;
    int64_t q8_extra = (h[25] >= 0 && h[25] <= max_floats && h[26] >= 0 && h[26] <= max_floats)
                     ? (int64_t)(padded8((size_t)h[25]) + padded8(4 * (size_t)h[26])) : -1;
    // the moments' floats: two of num_adam, one (--optimizer sgd), or (low-rank) adafactor's first moment and
    // statistics of the tensors that are not low-rank
    int adafactor = h[10] == 3 || h[10] == 4;
    int64_t moments = h[10] == 2 ? h[15] : adafactor ? h[15] + h[30] : 2 * h[15];
    int64_t body = manifest ? (h[28] > 0 && h[28] <= ((int64_t)1 << 24) ? 8 * CHECKPOINT_PIECE_INTS * h[28] : -1)
                            : 4 * (h[14] + moments + h[16]) + q8_extra;
    if (h[14] <= 0 || h[14] > max_floats || h[15] < 0 || h[15] > max_floats || h[16] < 0 || h[16] > max_floats ||
        h[30] < 0 || h[30] > max_floats || (!adafactor && h[30] != 0) ||
        q8_extra < 0 || body < 0 || fstat(fileno(f), &st) != 0 ||
        h[10] < 0 || h[10] > 5 || (int64_t)st.st_size != (int64_t)(sizeof h + padded8((size_t)h[24])) + body + 16) {
        snprintf(err, errlen, "%s: its length is not what the header says; the file is corrupt", path);
        fclose(f);
        return 1;
    }
    float eps, theta;
    uint32_t bits = (uint32_t)h[8];
    memcpy(&eps, &bits, 4);
    bits = (uint32_t)h[9];
    memcpy(&theta, &bits, 4);
    LlamaConfig c = {(int)h[2], (int)h[3], (int)h[4], (int)h[5], (int)h[6], (int)h[7], eps, theta};
    const char* problem = llama_config_problem(&c);
    if (problem != NULL || h[14] != (int64_t)parameter_count(&c) || h[15] < 0 || h[16] < 0) {
        snprintf(err, errlen, "%s: the header's model config or sizes are impossible (%s); the file is corrupt",
                 path, problem != NULL ? problem : "sizes");
        fclose(f);
        return 1;
    }
    llama_build(model, &c);
    if (manifest) {
        fclose(f);
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", path);
        char* slash = strrchr(dir, '/');
        if (slash != NULL) { *slash = '\0'; } else { snprintf(dir, sizeof dir, "."); }
        int64_t* rows = checkpoint_read_pieces(path, h, &c, NULL, err, errlen);
        int rc = rows == NULL || checkpoint_read_shards(dir, h, rows, &c, model->params_memory, NULL, err, errlen) != 0;
        free(rows);
        if (rc != 0) { llama_free(model); return 1; }
        return checkpoint_params_finite(model, path, err, errlen);
    }
    char pad[CHECKPOINT_SETTINGS_MAX + 8];
    checkpoint_read(&r, pad, padded8((size_t)h[24]));
    checkpoint_read(&r, model->params_memory, model->num_parameters * sizeof(float));
    // the optimizer states (8-bit ones included) are not needed, but the CRC covers them
    unsigned char chunk[16384];
    int64_t left = 4 * (moments + h[16]) + q8_extra;
    while (r.ok && left > 0) {
        size_t n = left < (int64_t)sizeof chunk ? (size_t)left : sizeof chunk;
        checkpoint_read(&r, chunk, n);
        left -= (int64_t)n;
    }
    int64_t trailer[2] = {0, 0};
    int ok = r.ok && fread(trailer, sizeof trailer, 1, f) == 1 && fgetc(f) == EOF;
    fclose(f);
    if (!ok || trailer[0] != CHECKPOINT_TRAILER_MAGIC || (uint64_t)trailer[1] != (uint64_t)r.crc) {
        snprintf(err, errlen, "%s: %s; the file is corrupt", path, ok ? "the checksum does not match"
                 : "its length is not what the header says");
        llama_free(model);
        return 1;
    }
    return checkpoint_params_finite(model, path, err, errlen);
}

// ----------------------------------------------------------------------------
// main: the training loop, one for both trainers
//
// train_run owns everything that is not arithmetic: flags, data, the
// schedule, gradient accumulation, clipping, the NaN stop, evaluation,
// sampling, logs and checkpoints. the arithmetic comes from a TrainBackend:
// the CPU model here (cpu_backend below), the GPU model in
// train_llama_subtrack.cu. a fix to the loop lands in both trainers at once.
// a backend holds one model and one optimizer, as a process trains one model.

typedef struct {
    const char* program;         // for --help and messages
    const char* default_dtype;   // float32 on the CPU, bfloat16 on the GPU
    // refuses what this backend cannot run (before anything is built): NULL or a message
    const char* (*check)(const TrainConfig* t);
    // builds the model with weights from t->seed, and its optimizer: NULL or a message
    const char* (*build)(const LlamaConfig* c, const TrainConfig* t, int B, int T);
    void (*report)(const TrainConfig* t, int B, int T);   // the device and memory lines at start
    // --memory_plan: prints the plan of device memory and returns the exit
    // status, without a device; NULL where there is no device memory to plan
    int (*memory_plan)(const LlamaConfig* c, const TrainConfig* t, int B, int T);
    void (*zero_grad)(void);
    void (*begin_step)(float lr);  // the step's lr, before its backward (per-layer updates); or NULL
    float (*forward)(const int* inputs, const int* targets, int B, int T);  // mean loss (NaN without targets)
    // forward and backward of a training micro-batch, one of accum in the step:
    // its mean loss / accum joins the step's loss, where the arithmetic is
    void (*micro_step)(const int* inputs, const int* targets, int B, int T, int accum);
    const float* (*logits_row)(int row);                 // (V) of the last forward, on the host
    // the step's loss (and then starts a new one) and its gradient norm: on the
    // GPU the step's one read of the device before the optimizer
    void (*step_stats)(double* loss, double* norm);
    void (*grad_scale)(float s);
    void (*optimizer_step)(float lr);                   // returns when the step is done (for timing)
    int (*steps_taken)(void);
    const Optimizer* (*optimizer)(void);                // settings and state sizes, on the host
    double (*subspace_seconds)(void);
    int (*save)(const TrainConfig* t, ShardLoader* loader, Rng* rng, const char* dir, char* err, size_t errlen);
    int (*load)(const TrainConfig* t, ShardLoader* loader, Rng* rng, const char* dir, char* err, size_t errlen);
    void (*free)(void);
    // data parallel, NULL where the backend trains in one process only.
    // join: this process joins the ranks of pg, before build (it picks the
    // device); NULL or a message. from then on micro_step scales its gradient
    // by 1 / ranks, and step_stats sums the gradients and the loss over the
    // ranks: every rank gets the same step
    const char* (*join)(const ProcessGroup* pg, const TrainConfig* t);
    double (*sum_over_ranks)(double x);  // x summed over the ranks; every rank gets the same bits
} TrainBackend;

// the rank of this process (0 in one process): only rank 0 prints and writes
static int g_train_rank = 0;

static double ranks_sum(const TrainBackend* be, double x) {
    return be->sum_over_ranks != NULL ? be->sum_over_ranks(x) : x;
}

// the settings table; changed ("name=saved value" lines) marks the settings
// that --allow_changed let a resume change
static void print_settings(const TrainConfig* t, const char* changed) {
    printf("+------------------------------+--------------------------------------------------------------+\n");
    for (int i = 0; i < NUM_TRAIN_FLAGS; i++) {
        char v[600], row[1300], was[600];
        flag_value_string(&TRAIN_FLAGS[i], t, v, sizeof v);
        if (settings_lookup(changed, TRAIN_FLAGS[i].name + 2, was, sizeof was) != NULL) {
            snprintf(row, sizeof row, "%s (changed on resume: was %s)", v, was);
        } else if (TRAIN_FLAGS[i].note != NULL) { snprintf(row, sizeof row, "%s (%s)", v, TRAIN_FLAGS[i].note); }
        else { snprintf(row, sizeof row, "%s", v); }
        printf("| %-28s | %-60s |\n", TRAIN_FLAGS[i].name + 2, row);
    }
    printf("+------------------------------+--------------------------------------------------------------+\n");
    printf("defaults:     %s\n", t->authors_defaults
           ? "the authors' torchrun_main.py (the model is one of their configs), for every flag not given"
           : "ours, tuned for the embedded corpus (the model is one of our presets)");
}

// mkdir -p: each missing directory on the path, then a probe file, before
// any training time is spent
static void make_writable_dir_or_exit(const char* dir) {
    char path[600];
    if (strlen(dir) >= sizeof path) { fatal("--save_dir %s: the path is too long", dir); }
    snprintf(path, sizeof path, "%s", dir);
    for (char* p = path + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) {
                fatal("--save_dir %s: cannot create %s (%s); pick a directory you can write to", dir, path,
                      strerror(errno));
            }
            *p = c;
            if (c == '\0') { break; }
        }
    }
    char probe[700];
    snprintf(probe, sizeof probe, "%s/.write_probe", dir);
    FILE* f = fopen(probe, "wb");
    if (f == NULL) {
        fatal("--save_dir %s is not a writable directory (%s); pick a directory you can write to", dir,
              strerror(errno));
    }
    fclose(f);
    remove(probe);
    // one run per directory: an advisory lock, held until the process ends,
    // with the holder's pid in the file for the message of a second run
    char lock_path[700];
    snprintf(lock_path, sizeof lock_path, "%s/.lock", dir);
    int fd = open(lock_path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) { fatal("--save_dir %s: cannot create the lock file %s (%s)", dir, lock_path, strerror(errno)); }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char holder[32] = "";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        fatal("--save_dir %s is in use by another run (process %s holds %s); wait for it to end, or pick another "
              "--save_dir", dir, holder[0] ? holder : "unknown", lock_path);
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        fatal("--save_dir %s: cannot write the lock file %s (%s)", dir, lock_path, strerror(errno));
    }
    // the descriptor stays open (and the lock held) for the rest of the run
}

// mean loss over the first eval_batches batches of the validation data: the
// loader restarts each time, so every evaluation sees the same windows
float evaluate(const TrainBackend* be, ShardLoader* val, int eval_batches, int* inputs, int* targets) {
    shard_loader_reset(val);
    int B = val->cfg.B, T = val->cfg.T;
    double total = 0.0;
    Progress pr;
    progress_begin(&pr, "evaluation: batch", eval_batches);
    for (int i = 0; i < eval_batches; i++) {
        // with N ranks each takes its B windows of the batch's N B, and the
        // means of the ranks are summed below
        shard_loader_next_batch_or_exit(val, inputs, targets);
        total += be->forward(inputs, targets, B, T);
        progress_update(&pr, i + 1);
    }
    return (float)(ranks_sum(be, total) / (eval_batches * val->cfg.num_ranks));
}

// generates gen_tokens after a BOS and prints them through the decoder.
// runs the model at B=1 over a window of the last T tokens; causal attention
// means the zero padding after the current position does not change its logits
void print_sample(const TrainBackend* be, const Decoder* dec, int V, int T, int gen_tokens, int top_k,
                  float temperature, Rng* rng, int bos_id) {
    int* history = (int*)calloc_check((size_t)(gen_tokens + 1) * sizeof(int), "sample history");
    int* window = (int*)calloc_check((size_t)T * sizeof(int), "sample window");
    float* probs = (float*)malloc_check((size_t)V * sizeof(float), "sample probs");
    history[0] = bos_id >= 0 ? bos_id : 0;
    printf("sample: ");
    for (int n = 1; n <= gen_tokens; n++) {
        int len = n < T ? n : T;  // context: the last len tokens of history[0..n)
        memcpy(window, history + (n - len), (size_t)len * sizeof(int));
        be->forward(window, NULL, 1, T);
        int next = sample_token(be->logits_row(len - 1), V, temperature, top_k, rng, probs);
        history[n] = next;
        decoder_print_token(dec, next, stdout);
        fflush(stdout);  // each token as it comes: on a large model a sample takes a while
    }
    printf("\n");
    free(history);
    free(window);
    free(probs);
}

// the per-step report
int train_step_is_due(int every, int step, int last) {
    return (every > 0 && (step + 1) % every == 0) || last;
}

void train_print_step(const TrainConfig* t, int step, int first_step, double loss, double norm, float lr,
                      double ms, double tokens_per_s, double train_seconds, int steps_timed) {
    int last = step + 1 == t->num_training_steps;
    if (step != first_step && (step + 1) % t->print_every != 0 && !last) { return; }
    char eta[32];
    format_duration(train_seconds / steps_timed * (t->num_training_steps - step - 1), eta, sizeof eta);
    printf("step %5d/%d | loss %.4f | norm %.3f | lr %.2e | %.1f ms | %.0f tok/s | eta %s\n",
           step + 1, t->num_training_steps, loss, norm, lr, ms, tokens_per_s, eta);
}

// one CSV row: step,train_loss,val_loss,lr,grad_norm,ms,tokens_per_s (val_loss
// empty when NaN). returns 0 when the row did not reach the file
int train_log_step(FILE* log, int step, double loss, float val_loss, float lr, double norm, double ms,
                   double tokens_per_s) {
    if (log == NULL) { return 1; }
    char row[256];
    int n = snprintf(row, sizeof row, "%d,%.6f,", step + 1, loss);
    if (!isnan(val_loss)) { n += snprintf(row + n, sizeof row - n, "%.6f", val_loss); }
    n += snprintf(row + n, sizeof row - n, ",%.6e,%.6f,%.3f,%.1f\n", lr, norm, ms, tokens_per_s);
    return fputs(row, log) >= 0 && fflush(log) == 0;
}

// what a stop keeps: the step of the last checkpoint this run saved (or resumed from)
static void print_kept_checkpoint(const TrainConfig* t, int last_saved) {
    if (t->save_dir[0] == '\0' || g_train_rank != 0) { return; }
    if (last_saved > 0) {
        fprintf(stderr, "the last good checkpoint, of step %d, is kept in %s/%s. ", last_saved, t->save_dir,
                CHECKPOINT_FILE);
    } else {
        fprintf(stderr, "this run saved no checkpoint in %s. ", t->save_dir);
    }
}

// a run that cannot go on: the reason (already on stderr), what is kept, exit 1
static void train_stop(const TrainConfig* t, int last_saved, const char* advice) {
    print_kept_checkpoint(t, last_saved);
    if (g_train_rank == 0) { fprintf(stderr, "%s\n", advice); }
    exit(EXIT_FAILURE);
}

// saves only a state shown to be good: every weight and optimizer state
// finite (checkpoint_save checks), and a finite loss on the first validation
// batch with these weights (weights of 1e30 are finite, and their next loss
// is not). else the run stops and the last good checkpoint stays
static void train_save_checked(const TrainBackend* be, const TrainConfig* t, ShardLoader* train_loader,
                               ShardLoader* val_loader, Rng* rng, int* inputs, int* targets, int step,
                               int* last_saved) {
    shard_loader_reset(val_loader);
    shard_loader_next_batch_or_exit(val_loader, inputs, targets);
    // every rank's batch: a NaN on any one makes the sum NaN on all
    float check_loss = (float)ranks_sum(be, be->forward(inputs, targets, val_loader->cfg.B, val_loader->cfg.T));
    char err[1024];
    if (!isfinite(check_loss)) {
        if (g_train_rank == 0) {
            fprintf(stderr, "error: after step %d the loss on a validation batch is %s; the run has diverged, and "
                    "its state is not saved. ", step, isnan(check_loss) ? "NaN" : "Inf");
        }
        train_stop(t, *last_saved, t->grad_clipping > 0 ? "try a lower --lr" : "try a lower --lr, or --grad_clipping 1");
    }
    // every rank calls save (with ZeRO-1 the states gather to rank 0); rank 0
    // writes, and the others learn whether that worked
    err[0] = '\0';
    int failed = be->save(t, train_loader, rng, t->save_dir, err, sizeof err) != 0;
    if (ranks_sum(be, failed) != 0) {
        if (g_train_rank == 0) { fprintf(stderr, "error: %s. ", err); }
        train_stop(t, *last_saved, "");
    }
    *last_saved = step;
    printf("saved %s/%s at step %d\n", t->save_dir, CHECKPOINT_FILE, step);
}

// stdout into a file (or a full disk under it) fails loudly, as the log does
static void check_stdout_or_stop(const TrainConfig* t, int last_saved) {
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "error: writing the output failed (%s); stopping. ", strerror(errno));
        train_stop(t, last_saved, "free some disk space, or redirect the output elsewhere");
    }
}

// the ranks must train the same run: every setting but the ranks' own
// (rank, meeting place, timeout) and the data each rank found, hashed
// (FNV-1a, 64 bits) and compared with rank 0's. a rank given another --lr,
// or another node's different shards, stops every rank, naming itself
static uint64_t fnv1a(uint64_t h, const char* text) {
    for (const unsigned char* c = (const unsigned char*)text; *c; c++) { h = (h ^ *c) * 0x100000001b3ull; }
    return h;
}

static void ranks_agree_or_exit(const TrainBackend* be, const TrainConfig* t, const ShardLoader* train_loader,
                                const ShardLoader* val_loader) {
    static const char* const own[] = {"--num_processes", "--process_rank", "--gpus_per_node", "--init_method",
                                      "--collective_timeout", "--log_file", "--print_every", "--progress_interval",
                                      "--save_dir"};  // its default carries the second each rank started
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < NUM_TRAIN_FLAGS; i++) {
        int skip = 0;
        for (size_t k = 0; k < sizeof own / sizeof own[0]; k++) { skip |= strcmp(TRAIN_FLAGS[i].name, own[k]) == 0; }
        if (skip) { continue; }
        char v[600];
        flag_value_string(&TRAIN_FLAGS[i], t, v, sizeof v);
        h = fnv1a(fnv1a(h, TRAIN_FLAGS[i].name), v);
    }
    char data[96];
    snprintf(data, sizeof data, "%lld %lld %d %d", (long long)train_loader->num_windows,
             (long long)val_loader->num_windows, t->gradient_accumulation, t->save_dir[0] != '\0');
    h = fnv1a(h, data);
    // rank 0's hash to every rank, in three exact 22-bit parts, then whether any differs
    double part[3];
    int differs = 0;
    for (int k = 0; k < 3; k++) {
        double mine = (double)((h >> (22 * k)) & 0x3fffff);
        part[k] = ranks_sum(be, g_train_rank == 0 ? mine : 0.0);
        differs |= part[k] != mine;
    }
    double differing = ranks_sum(be, differs);
    if (differing > 0) {
        if (differs) {
            fprintf(stderr, "error: %sthe settings or the data differ from rank 0's (a flag, or the shards this "
                    "node sees: %lld train and %lld val windows here); start every rank with the same flags and "
                    "data\n", g_fatal_prefix, (long long)train_loader->num_windows, (long long)val_loader->num_windows);
        } else if (g_train_rank == 0) {
            fprintf(stderr, "error: %.0f rank%s started with other settings or data than rank 0 (each says so); "
                    "stopping\n", differing, differing == 1 ? "" : "s");
        }
        exit(EXIT_FAILURE);
    }
}

int train_run(const TrainBackend* be, int argc, char** argv) {
    // line-buffered even into a file or a pipe, so that `tail -f` shows each
    // line as it happens
    setvbuf(stdout, NULL, _IOLBF, 0);
    // a file size limit (ulimit -f) makes writes fail with EFBIG, which the
    // checks below report, instead of killing the run without a word
    signal(SIGXFSZ, SIG_IGN);
    TrainConfig t;
    char err[1024];
    int parsed = train_config_from_args(&t, argc, argv, be->default_dtype, err, sizeof err);
    if (parsed == 1) { train_usage(stdout, be->program, be->default_dtype); return 0; }
    if (parsed < 0) { fatal("%s", err); }
    // the place of this process among the ranks, and the batch across them;
    // --memory_plan plans one rank of --num_processes and starts nothing
    ProcessGroup pg;
    const char* problem = t.memory_plan ? NULL : process_group_resolve(&pg, &t, env_process, err, sizeof err);
    if (problem == NULL && !t.memory_plan && pg.size > 1 && be->join == NULL) {
        snprintf(err, sizeof err, "this is rank %d of %d processes (%s), but %s trains in one process; data "
                 "parallel is the CUDA trainer's (./train_llama_subtrack, same flags). Run one process, without "
                 "torchrun, mpirun or srun", pg.rank, pg.size, pg.source, be->program);
        problem = err;
    }
    if (problem == NULL && !t.memory_plan) {
        problem = train_config_for_ranks(&t, pg.size, err, sizeof err);
        t.this_rank = pg.rank;
    }
    if (problem == NULL) { problem = train_config_problem(&t); }
    if (problem == NULL && t.memory_plan && be->memory_plan == NULL) {
        problem = "--memory_plan plans the CUDA trainer's device memory; run ./train_llama_subtrack --memory_plan "
                  "with the same flags (it needs no GPU)";
    }
    if (problem == NULL && !t.memory_plan) { problem = be->check(&t); }  // the plan needs no device
    if (problem != NULL) { fatal("%s", problem); }
    // only rank 0 prints and writes: the others' standard output goes
    // nowhere (their errors still reach stderr, naming the rank)
    if (!t.memory_plan && pg.size > 1) {
        snprintf(g_fatal_prefix, sizeof g_fatal_prefix, "rank %d of %d: ", pg.rank, pg.size);
    }
    if (!t.memory_plan && pg.rank != 0) {
        g_train_rank = pg.rank;
        if (freopen("/dev/null", "w", stdout) == NULL) { fatal("rank %d: cannot silence stdout", pg.rank); }
    }
    g_progress_interval = t.progress_interval;
    LlamaConfig cfg;
    llama_config_resolve_or_exit(&cfg, t.model_config);
    if (t.max_length == 0) {
        t.max_length = cfg.max_seq_len < DEFAULT_MAX_LENGTH ? cfg.max_seq_len : DEFAULT_MAX_LENGTH;
    }
    int B = t.batch_size, T = t.max_length;
    if (train_config_token_budget(&t, T, err, sizeof err) != NULL) { fatal("%s", err); }
    if (t.max_train_tokens[0] != '\0') {
        printf("budget:       --max_train_tokens %s: %d steps of %d sequences x %d tokens (it sets "
               "--num_training_steps; the authors' script divides by the sequences alone, %lld steps)\n",
               t.max_train_tokens, t.num_training_steps, t.total_batch_size, T,
               (long long)(token_budget_parse(t.max_train_tokens) / t.total_batch_size));
    }
    if (T > cfg.max_seq_len) {
        fatal("--max_length %d is above the model's max_seq_len %d (%s); lower --max_length",
              T, cfg.max_seq_len, t.model_config);
    }
    int accum = t.gradient_accumulation;
    if (t.gen_tokens > cfg.max_seq_len) {
        fatal("--gen_tokens %d is above the model's max_seq_len %d; lower --gen_tokens", t.gen_tokens, cfg.max_seq_len);
    }
    if (t.memory_plan) {
        int rc = be->memory_plan(&cfg, &t, B, T);
        if (rc == 0 && t.num_processes > 1) { shard_plan_print(&cfg, &t, t.num_processes, stdout); }
        return rc;
    }
    // a resume must continue the run it claims to: its settings against the
    // checkpoint's, before anything is built
    char changed[CHECKPOINT_SETTINGS_MAX] = "";
    if (t.continue_from[0] != '\0') {
        int64_t h[CHECKPOINT_HEADER_INTS];
        char saved[CHECKPOINT_SETTINGS_MAX + 8], problems[4096];
        if (checkpoint_read_settings(t.continue_from, h, saved, sizeof saved, err, sizeof err) != 0 ||
            checkpoint_check_model(h, &cfg, t.continue_from, err, sizeof err) != 0) {
            fatal("%s", err);
        }
        int bad = checkpoint_settings_compare(&t, saved, problems, sizeof problems, changed, sizeof changed);
        if (bad > 0) {
            fatal("--continue_from %s: %d setting%s differ%s from the checkpoint's, so this would not be the run it "
                  "continues:\n%sgive the saved values, or name the settings you change on purpose with "
                  "--allow_changed name,...", t.continue_from, bad, bad == 1 ? "" : "s", bad == 1 ? "s" : "",
                  problems);
        }
    }
    if (t.save_dir[0] != '\0' && g_train_rank == 0) { make_writable_dir_or_exit(t.save_dir); }

    // the settings first: building a large model and its first step take a while
    print_settings(&t, changed);
    printf("model:        %s: V=%d C=%d F=%d NH=%d L=%d max_seq_len=%d, %zu parameters (%.2f M)\n",
           t.model_config, cfg.V, cfg.C, cfg.F, cfg.NH, cfg.L, cfg.max_seq_len, parameter_count(&cfg),
           parameter_count(&cfg) / 1e6);

    // data: every shard is validated here, before any step
    Decoder dec;
    decoder_load_or_exit(&dec, t.decoder_path);
    if (dec.vocab_size > cfg.V) {
        fatal("the tokenizer of %s has %d ids but the model's vocab is %d; use a model_config with vocab_size >= %d",
              t.decoder_path, dec.vocab_size, cfg.V, dec.vocab_size);
    }
    if (dec.vocab_size < cfg.V) {
        printf("note:         the model's vocab is %d and the tokenizer of %s has %d ids: %d embedding rows are "
               "never used\n", cfg.V, t.decoder_path, dec.vocab_size, cfg.V - dec.vocab_size);
    }
    ShardLoaderConfig tc = {t.train_data, "--train_data", B, T, cfg.V, pg.rank, pg.size, t.shuffle, (uint64_t)t.seed};
    ShardLoaderConfig vc = {t.val_data, "--val_data", B, T, cfg.V, pg.rank, pg.size, 0, 0};
    ShardLoader train_loader, val_loader;
    shard_loader_init_or_exit(&train_loader, &tc);
    shard_loader_init_or_exit(&val_loader, &vc);
    // evaluation reads the same batches every time; more than the validation
    // data holds would only repeat them
    int64_t val_batches = val_loader.num_windows / ((int64_t)B * pg.size);
    if (t.eval_batches > val_batches) {
        printf("note:         --eval_batches %d capped at the %lld batches of B=%d%s the validation data holds\n",
               t.eval_batches, (long long)val_batches, B, pg.size > 1 ? " per rank" : "");
        t.eval_batches = (int)val_batches;
    }

    if (pg.size > 1) {
        problem = be->join(&pg, &t);
        if (problem != NULL) { fatal("%s", problem); }
        ranks_agree_or_exit(be, &t, &train_loader, &val_loader);
        printf("ranks:        %d processes (%s), meeting through %s; data parallel, every rank holding the whole "
               "state\n", pg.size, pg.source, pg.init_method);
    }
    problem = be->build(&cfg, &t, B, T);
    if (problem != NULL) { fatal("%s", problem); }
    Rng sample_rng;
    rng_seed(&sample_rng, (uint64_t)t.seed + 1000);
    if (t.continue_from[0] != '\0') {
        if (be->load(&t, &train_loader, &sample_rng, t.continue_from, err, sizeof err) != 0) { fatal("%s", err); }
        if (be->steps_taken() >= t.num_training_steps) {
            printf("nothing to do: the checkpoint in %s has taken %d steps, and --num_training_steps is %d; "
                   "to train on, pass a larger --num_training_steps with --allow_changed num_training_steps\n",
                   t.continue_from, be->steps_taken(), t.num_training_steps);
            be->free();
            shard_loader_free(&train_loader);
            shard_loader_free(&val_loader);
            decoder_free(&dec);
            return 0;
        }
    }

    // the rest of the startup report
    be->report(&t, B, T);
    const Optimizer* opt = be->optimizer();
    size_t full_adamw = 2 * parameter_count(&cfg) * sizeof(float);
    printf("optimizer:    %s%s: states %.2f MiB (%s %.2f MiB + low-rank %.2f MiB + 8-bit %.2f MiB); full AdamW "
           "would need %.2f MiB\n", t.optimizer,
           opt->low_rank ? (opt->cfg.method == SUBSPACE_GALORE ? " (galore)" : " (subtrack)") : "",
           optimizer_state_bytes(opt) / 1048576.0,
           opt->sgd ? "SGD momentum" : opt->adafactor ? "Adafactor" : "AdamW",
           (opt->num_adam + opt->num_adam_v) * 4.0 / 1048576.0,
           opt->lowrank_floats * 4.0 / 1048576.0, (opt->q8_bytes + opt->q8_blocks * 4.0) / 1048576.0,
           full_adamw / 1048576.0);
    if (opt->low_rank && opt->cfg.golore) {
        int from = opt->cfg.golore_from_step;
        if (opt->cfg.method == SUBSPACE_GALORE) {
            printf("GoLore:       random subspaces in place of the SVD's, from step %d on (of %d)\n", from,
                   t.num_training_steps);
        } else {
            printf("GoLore:       %s (SubTrack++ takes an SVD only at its first step; the rest are tracked)\n",
                   from == 0 ? "a random first subspace" : "no effect: it starts after step 0");
        }
    }
    printf("data:         %lld train windows, %lld val windows of T+1=%d tokens; %d micro steps of B=%d per step\n",
           (long long)train_loader.num_windows, (long long)val_loader.num_windows, T + 1, accum, B);
    if (be->steps_taken() > 0) { printf("resumed:      from %s at step %d\n", t.continue_from, be->steps_taken()); }

    int last_saved = be->steps_taken() > 0 && t.save_dir[0] != '\0' && strcmp(t.save_dir, t.continue_from) == 0
                     ? be->steps_taken() : 0;
    FILE* log = NULL;
    if (t.log_file[0] != '\0' && g_train_rank == 0) {
        // a fresh run starts the file; a resumed one appends. the header goes
        // at the top of every new or empty file
        log = fopen(t.log_file, be->steps_taken() > 0 ? "a" : "w");
        if (log == NULL) { fatal("cannot open --log_file %s (%s)", t.log_file, strerror(errno)); }
        if (ftello(log) == 0) { fprintf(log, "step,train_loss,val_loss,lr,grad_norm,ms,tokens_per_s\n"); }
        if (fflush(log) != 0) {
            fatal("writing --log_file %s failed (%s); check the disk and the path", t.log_file, strerror(errno));
        }
    }

    int* inputs = (int*)malloc_check((size_t)B * T * sizeof(int), "inputs");
    int* targets = (int*)malloc_check((size_t)B * T * sizeof(int), "targets");
    double train_seconds = 0.0;
    int steps_timed = 0;
    int first_step = be->steps_taken();
    for (int step = first_step; step < t.num_training_steps; step++) {
        double t0 = wall_seconds();
        float lr = lr_at_step(&t, step);
        be->zero_grad();
        if (be->begin_step != NULL) { be->begin_step(lr); }
        for (int micro = 0; micro < accum; micro++) {
            shard_loader_next_batch_or_exit(&train_loader, inputs, targets);
            be->micro_step(inputs, targets, B, T, accum);
        }
        double loss = 0.0, norm = 0.0;
        be->step_stats(&loss, &norm);
        if (!isfinite(loss) || !isfinite(norm)) {  // the same on every rank: they stop together
            if (g_train_rank == 0) {
                fprintf(stderr, "error: the %s is %s at step %d; stopping. ", isfinite(loss) ? "gradient norm" : "loss",
                        isnan(isfinite(loss) ? norm : loss) ? "NaN" : "Inf", step + 1);
            }
            train_stop(&t, last_saved, t.grad_clipping > 0 ? "try a lower --lr" : "try a lower --lr, or --grad_clipping 1");
        }
        if (t.grad_clipping > 0 && norm > t.grad_clipping) { be->grad_scale((float)(t.grad_clipping / norm)); }
        be->optimizer_step(lr);
        double ms = 1e3 * (wall_seconds() - t0);
        train_seconds += ms / 1e3;
        steps_timed++;
        double tokens_per_s = (double)t.total_batch_size * T / (ms / 1e3);
        int last = step + 1 == t.num_training_steps;

        train_print_step(&t, step, first_step, loss, norm, lr, ms, tokens_per_s, train_seconds, steps_timed);
        float val_loss = NAN;
        if (train_step_is_due(t.eval_every, step, last)) {
            val_loss = evaluate(be, &val_loader, t.eval_batches, inputs, targets);
            printf("val loss %.4f (perplexity %.2f) at step %d\n", val_loss, exp(val_loss), step + 1);
        }
        if (train_step_is_due(t.sample_every, step, last) && g_train_rank == 0) {
            print_sample(be, &dec, cfg.V, T, t.gen_tokens, t.top_k, t.temperature, &sample_rng, dec.bos_id);
        }
        if (!train_log_step(log, step, loss, val_loss, lr, norm, ms, tokens_per_s)) {
            fprintf(stderr, "error: writing --log_file %s failed (%s); stopping. ", t.log_file, strerror(errno));
            train_stop(&t, last_saved, "free some disk space, or pick another --log_file");
        }
        int stop_now = t.stop_at_step > 0 && step + 1 == t.stop_at_step && !last;
        if (t.save_dir[0] != '\0' && (train_step_is_due(t.save_every, step, last) || stop_now)) {
            train_save_checked(be, &t, &train_loader, &val_loader, &sample_rng, inputs, targets, step + 1, &last_saved);
        }
        check_stdout_or_stop(&t, last_saved);
        if (stop_now) {
            printf("stopping after step %d (--stop_at_step)\n", step + 1);
            break;
        }
    }
    if (opt->low_rank) {
        printf("subspace updates: %.2f s in total (%s)\n", be->subspace_seconds(),
               opt->cfg.method == SUBSPACE_GALORE ? "SVD" : "geodesic tracking and moment rotation");
    }
    printf("training time: %.1f s for %d steps\n", train_seconds, steps_timed);
    if (log != NULL) { fclose(log); }
    free(inputs); free(targets);
    be->free();
    shard_loader_free(&train_loader);
    shard_loader_free(&val_loader);
    decoder_free(&dec);
    return 0;
}

// ----------------------------------------------------------------------------
// the CPU backend: the model and optimizer above

static struct { Llama model; Optimizer opt; } cpu_trainer;

static const char* cpu_check(const TrainConfig* t) {
    static char msg[512];
    if (strcmp(t->dtype, "float32") != 0) {
        snprintf(msg, sizeof msg, "--dtype %s: the CPU trainer computes in float32 only. To run one of the authors' "
                 "scripts on the CPU, add --dtype float32 at the end of its line (the last value wins); for "
                 "bfloat16 use the CUDA trainer (make train && ./train_llama_subtrack)", t->dtype);
        return msg;
    }
    return NULL;
}

static const char* cpu_build(const LlamaConfig* c, const TrainConfig* t, int B, int T) {
    (void)B; (void)T;
    llama_build(&cpu_trainer.model, c);
    llama_init_weights(&cpu_trainer.model, (uint64_t)t->seed);
    if (!t->master_weights) { llama_round_weights_bf16(&cpu_trainer.model); }
    return optimizer_build(&cpu_trainer.opt, c, t);
}

static void cpu_report(const TrainConfig* t, int B, int T) {
    printf("threads:      %d (OMP_NUM_THREADS)\n", num_threads());
    llama_memory_report(&cpu_trainer.model.config, B, T, stdout);
    if (t->activation_checkpointing) {
        printf("note:         --activation_checkpointing is a no-op on the CPU trainer: it keeps every activation "
               "(host memory above); the CUDA trainer recomputes each layer\n");
    }
    if (optimizer_name_per_layer(t->optimizer)) {
        printf("note:         --optimizer %s on the CPU trainer updates every weight after the backward, as one "
               "step: the same arithmetic and results, without the memory the CUDA trainer saves\n", t->optimizer);
    }
}

static void cpu_zero_grad(void) { llama_zero_grad(&cpu_trainer.model); }
static float cpu_forward(const int* inputs, const int* targets, int B, int T) {
    return llama_forward(&cpu_trainer.model, inputs, targets, B, T);
}
static double cpu_step_loss;  // the step's loss so far
static void cpu_micro_step(const int* inputs, const int* targets, int B, int T, int accum) {
    cpu_step_loss += llama_forward(&cpu_trainer.model, inputs, targets, B, T) / accum;
    llama_backward(&cpu_trainer.model, inputs, targets, 1.0f / accum);
}
static const float* cpu_logits_row(int row) {
    return cpu_trainer.model.acts.logits + (size_t)row * cpu_trainer.model.config.V;
}
static void cpu_step_stats(double* loss, double* norm) {
    *loss = cpu_step_loss;
    cpu_step_loss = 0.0;
    *norm = grad_global_norm(cpu_trainer.model.grads_memory, cpu_trainer.model.num_parameters);
}
static void cpu_grad_scale(float s) { grad_scale(cpu_trainer.model.grads_memory, cpu_trainer.model.num_parameters, s); }
static void cpu_optimizer_step(float lr) { optimizer_step(&cpu_trainer.opt, &cpu_trainer.model, lr); }
static int cpu_steps_taken(void) { return cpu_trainer.opt.step; }
static const Optimizer* cpu_optimizer(void) { return &cpu_trainer.opt; }
static double cpu_subspace_seconds(void) { return optimizer_subspace_seconds(&cpu_trainer.opt); }
static int cpu_save(const TrainConfig* t, ShardLoader* loader, Rng* rng, const char* dir, char* err, size_t errlen) {
    TrainState s = {&cpu_trainer.model, &cpu_trainer.opt, loader, rng, t};
    return checkpoint_save(&s, dir, err, errlen);
}
static int cpu_load(const TrainConfig* t, ShardLoader* loader, Rng* rng, const char* dir, char* err, size_t errlen) {
    TrainState s = {&cpu_trainer.model, &cpu_trainer.opt, loader, rng, t};
    return checkpoint_load(&s, dir, err, errlen);
}
static void cpu_free(void) {
    optimizer_free(&cpu_trainer.opt);
    llama_free(&cpu_trainer.model);
}

static const TrainBackend cpu_backend = {
    "./train_llama_subtrack_cpu", "float32", cpu_check, cpu_build, cpu_report, NULL, cpu_zero_grad, NULL, cpu_forward,
    cpu_micro_step, cpu_logits_row, cpu_step_stats, cpu_grad_scale, cpu_optimizer_step, cpu_steps_taken,
    cpu_optimizer, cpu_subspace_seconds, cpu_save, cpu_load, cpu_free, NULL, NULL,
};

#ifndef TESTING
int main(int argc, char** argv) {
    return train_run(&cpu_backend, argc, argv);
}
#endif
