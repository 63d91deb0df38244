// test_gpu_optim.cu: the GPU optimizers (train_llama_subtrack.cu) against their CPU twins
// in train_llama_subtrack.c, step by step, for every method and switch, both
// orientations and odd shapes; then the PyTorch reference trajectories replayed
// on the GPU; then bit-exact resume.
//
// on a GPU:
//   make dev/test_gpu/test_gpu_optim   (nvcc; see dev/cuda/gpu.mk)
//   ./dev/test_gpu/test_gpu_optim
// without one, under the CPU harness (dev/cuda_emu):
//   make dev/test_gpu/test_gpu_optim_emu && ./dev/test_gpu/test_gpu_optim_emu
// prints PASS/FAIL lines and last `N passed, N failed`; exits non-zero on a failure.
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
#include <sys/wait.h>
#include <unistd.h>
#include <cuda_runtime.h>

// the CUDA trainer with TESTING defined: its optimizers, and the CPU
// reference it includes as namespace cpu
#define TESTING
#include "../../train_llama_subtrack.cu"

// ---- checks

#include "../test_check.h"

static double max_abs(const float* x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) { m = fmax(m, fabs((double)x[i])); }
    return m;
}

// max |a - b| / max |b|; NaN anywhere gives NaN (which fails every <= check)
static double rel_diff(const float* a, const float* b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) { m = d; }
    }
    return m / fmax(max_abs(b, n), 1e-30);
}

// max |A A^T - B B^T| for A, B (p, R): subspaces, blind to signs
static double projector_diff(const float* A, const float* B, int p, int r) {
    double m = 0.0;
    for (int i = 0; i < p; i++) {
        for (int j = 0; j < p; j++) {
            double pa = 0.0, pb = 0.0;
            for (int k = 0; k < r; k++) {
                pa += (double)A[(size_t)i * r + k] * A[(size_t)j * r + k];
                pb += (double)B[(size_t)i * r + k] * B[(size_t)j * r + k];
            }
            double d = fabs(pa - pb);
            if (!(d <= m)) { m = d; }
        }
    }
    return m;
}

static float* device_copy(const float* host, size_t n) {
    float* d;
    cudaCheck(cudaMalloc((void**)&d, n * sizeof(float)));
    cudaCheck(cudaMemcpy(d, host, n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

static void host_copy(float* host, const float* device, size_t n) {
    cudaCheck(cudaMemcpy(host, device, n * sizeof(float), cudaMemcpyDeviceToHost));
}

// ---- test gradients: a rank-(R+3) signal with singular values 0.8^k (every gap
// 20%, so the top-R subspace and each singular vector are well defined) whose
// left factor turns a little every step, plus small noise. X = op(G) (p, q).

#define GRAD_EXTRA_RANK 3
#define GRAD_DECAY 0.8
#define GRAD_TURN 0.15          // how far the left factor moves per step
#define GRAD_NOISE 1e-3

// Q (p, k) orthonormal columns by Gram-Schmidt (twice) in double, in place
static void orthonormalize(double* Q, int p, int k) {
    for (int j = 0; j < k; j++) {
        for (int pass = 0; pass < 2; pass++) {
            for (int c = 0; c < j; c++) {
                double d = 0.0;
                for (int i = 0; i < p; i++) { d += Q[(size_t)i * k + c] * Q[(size_t)i * k + j]; }
                for (int i = 0; i < p; i++) { Q[(size_t)i * k + j] -= d * Q[(size_t)i * k + c]; }
            }
        }
        double norm = 0.0;
        for (int i = 0; i < p; i++) { norm += Q[(size_t)i * k + j] * Q[(size_t)i * k + j]; }
        norm = sqrt(norm);
        for (int i = 0; i < p; i++) { Q[(size_t)i * k + j] /= norm; }
    }
}

typedef struct {
    int m, n, p, q, k;
    double* A0;     // (p, k)
    double* A1;     // (p, k)
    double* P;      // (q, k) orthonormal
    cpu::Rng rng;
} GradientSource;

static void gradient_source_init(GradientSource* gs, int m, int n, int r, uint64_t seed) {
    gs->m = m;
    gs->n = n;
    gs->p = m <= n ? m : n;
    gs->q = m <= n ? n : m;
    gs->k = r + GRAD_EXTRA_RANK < gs->p ? r + GRAD_EXTRA_RANK : gs->p;
    cpu::rng_seed(&gs->rng, seed);
    gs->A0 = (double*)malloc((size_t)gs->p * gs->k * sizeof(double));
    gs->A1 = (double*)malloc((size_t)gs->p * gs->k * sizeof(double));
    gs->P = (double*)malloc((size_t)gs->q * gs->k * sizeof(double));
    for (size_t i = 0; i < (size_t)gs->p * gs->k; i++) { gs->A0[i] = cpu::rng_normal(&gs->rng); }
    for (size_t i = 0; i < (size_t)gs->p * gs->k; i++) { gs->A1[i] = cpu::rng_normal(&gs->rng); }
    for (size_t i = 0; i < (size_t)gs->q * gs->k; i++) { gs->P[i] = cpu::rng_normal(&gs->rng); }
    orthonormalize(gs->P, gs->q, gs->k);
}

static void gradient_source_free(GradientSource* gs) {
    free(gs->A0);
    free(gs->A1);
    free(gs->P);
}

// G (m, n) for step t
static void gradient_at(GradientSource* gs, float* G, int t) {
    int p = gs->p, q = gs->q, k = gs->k;
    double* Q = (double*)malloc((size_t)p * k * sizeof(double));
    for (size_t i = 0; i < (size_t)p * k; i++) { Q[i] = gs->A0[i] + GRAD_TURN * t * gs->A1[i]; }
    orthonormalize(Q, p, k);
    for (int a = 0; a < p; a++) {
        for (int b = 0; b < q; b++) {
            double x = GRAD_NOISE * cpu::rng_normal(&gs->rng);
            double s = 1.0;
            for (int c = 0; c < k; c++, s *= GRAD_DECAY) { x += s * Q[(size_t)a * k + c] * gs->P[(size_t)b * k + c]; }
            // X = op(G): X[a, b] is G[a, b] (left) or G[b, a] (right)
            if (gs->m <= gs->n) { G[(size_t)a * gs->n + b] = (float)x; } else { G[(size_t)b * gs->n + a] = (float)x; }
        }
    }
    free(Q);
}

// ---- 1. AdamW

// the same fp32 expressions on both sides; only fused multiply-adds may differ: 1e-6 of the scale
#define ADAMW_TOL 1e-6
// l2: --optimizer adam's decay (L2 on the gradient), else AdamW's decoupled one
static void test_adamw_mode(int l2) {
    const size_t numel = 1031;  // not a multiple of the block
    float* host[4];
    cpu::Rng rng;
    cpu::rng_seed(&rng, 7);
    for (int k = 0; k < 4; k++) {
        host[k] = (float*)malloc(numel * sizeof(float));
        for (size_t i = 0; i < numel; i++) { host[k][i] = k == 2 ? 0.0f : 0.1f * cpu::rng_normal(&rng); }
    }
    for (size_t i = 0; i < numel; i++) { host[1][i] = 0.0f; }
    float* W = device_copy(host[0], numel);
    float* M = device_copy(host[1], numel);
    float* V = device_copy(host[2], numel);
    float* G = device_copy(host[3], numel);
    float* out = (float*)malloc(numel * sizeof(float));
    double err[3] = {0, 0, 0};
    for (int t = 0; t < 4; t++) {
        for (size_t i = 0; i < numel; i++) { host[3][i] = cpu::rng_normal(&rng); }
        cudaCheck(cudaMemcpy(G, host[3], numel * sizeof(float), cudaMemcpyHostToDevice));
        cpu::adamw_update(host[0], host[1], host[2], host[3], numel, t, 1e-2f, 0.9f, 0.999f, 1e-6f, 0.1f, l2);
        adamw_update(W, M, V, G, numel, t, 1e-2f, 0.9f, 0.999f, 1e-6f, 0.1f, l2);
        const float* dev[3] = {W, M, V};
        for (int k = 0; k < 3; k++) {
            host_copy(out, dev[k], numel);
            err[k] = fmax(err[k], rel_diff(out, host[k], numel));
        }
    }
    check(err[0] <= ADAMW_TOL && err[1] <= ADAMW_TOL && err[2] <= ADAMW_TOL,
          "adamw_update %zu elements, 4 steps, wd 0.1 %s: W %.1e M %.1e V %.1e (tol %.0e)",
          numel, l2 ? "as L2 (--optimizer adam)" : "decoupled", err[0], err[1], err[2], ADAMW_TOL);
    cudaCheck(cudaFree(W));
    cudaCheck(cudaFree(M));
    cudaCheck(cudaFree(V));
    cudaCheck(cudaFree(G));
    for (int k = 0; k < 4; k++) { free(host[k]); }
    free(out);
}

// --optimizer sgd: the GPU's sgd_update against the CPU's, with momentum and
// without (the buffer then untouched), 4 steps (tolerance: ADAMW_TOL's)
static void test_sgd(float momentum) {
    const size_t numel = 1031;
    float* host[3];
    cpu::Rng rng;
    cpu::rng_seed(&rng, 8);
    for (int k = 0; k < 3; k++) {
        host[k] = (float*)malloc(numel * sizeof(float));
        for (size_t i = 0; i < numel; i++) { host[k][i] = k == 1 ? 0.0f : 0.1f * cpu::rng_normal(&rng); }
    }
    float* W = device_copy(host[0], numel);
    float* B = device_copy(host[1], numel);
    float* G = device_copy(host[2], numel);
    float* out = (float*)malloc(numel * sizeof(float));
    double err[2] = {0, 0};
    for (int t = 0; t < 4; t++) {
        for (size_t i = 0; i < numel; i++) { host[2][i] = cpu::rng_normal(&rng); }
        cudaCheck(cudaMemcpy(G, host[2], numel * sizeof(float), cudaMemcpyHostToDevice));
        cpu::sgd_update(host[0], host[1], host[2], numel, 1e-2f, momentum, 0.1f);
        sgd_update(W, B, G, numel, 1e-2f, momentum, 0.1f);
        const float* dev[2] = {W, B};
        for (int k = 0; k < 2; k++) {
            host_copy(out, dev[k], numel);
            err[k] = fmax(err[k], rel_diff(out, host[k], numel));
        }
    }
    check(err[0] <= ADAMW_TOL && err[1] <= ADAMW_TOL, "sgd_update %zu elements, 4 steps, momentum %g, wd 0.1 (L2): "
          "W %.1e buffer %.1e (tol %.0e)", numel, momentum, err[0], err[1], ADAMW_TOL);
    cudaCheck(cudaFree(W));
    cudaCheck(cudaFree(B));
    cudaCheck(cudaFree(G));
    for (int k = 0; k < 3; k++) { free(host[k]); }
    free(out);
}

// adafactor_update on the device against the CPU's, 4 steps: the same fp32
// expressions; the sums (the statistics' means, mean(R), the update's RMS)
// add in another order, so ADAMW_TOL of each array's scale
static void test_adafactor(int rows, int cols, float beta1, float weight_decay, float grad_scale) {
    size_t n = (size_t)rows * cols, ns = cpu::adafactor_stats_floats(rows, cols);
    float* host_w = (float*)malloc(n * sizeof(float));
    float* host_m = (float*)calloc(n, sizeof(float));
    float* host_s = (float*)calloc(ns, sizeof(float));
    float* host_g = (float*)malloc(n * sizeof(float));
    double* sums = (double*)malloc((size_t)rows * sizeof(double));
    cpu::Rng rng;
    cpu::rng_seed(&rng, 9 + (uint64_t)rows);
    for (size_t i = 0; i < n; i++) { host_w[i] = 0.1f * cpu::rng_normal(&rng); }
    float* W = device_copy(host_w, n);
    float* M = device_copy(host_m, n);
    float* S = device_copy(host_s, ns);
    float* G = device_copy(host_w, n);
    double* d_sums;
    cudaCheck(cudaMalloc((void**)&d_sums, ADAFACTOR_SUMS * sizeof(double)));
    float* out = (float*)malloc(n * sizeof(float));
    double err[3] = {0, 0, 0};
    for (int t = 0; t < 4; t++) {
        for (size_t i = 0; i < n; i++) { host_g[i] = grad_scale * cpu::rng_normal(&rng); }
        cudaCheck(cudaMemcpy(G, host_g, n * sizeof(float), cudaMemcpyHostToDevice));
        cpu::adafactor_update(host_w, beta1 != 0.0f ? host_m : NULL, host_s, host_g, rows, cols, t, 1e-2f, beta1,
                              weight_decay, sums);
        adafactor_update(W, beta1 != 0.0f ? M : NULL, S, G, rows, cols, t, 1e-2f, beta1, weight_decay, d_sums);
        host_copy(out, W, n);
        err[0] = fmax(err[0], rel_diff(out, host_w, n));
        host_copy(out, M, n);
        err[1] = fmax(err[1], rel_diff(out, host_m, n));
        host_copy(out, S, ns);
        err[2] = fmax(err[2], rel_diff(out, host_s, ns));
    }
    check(err[0] <= ADAMW_TOL && err[1] <= ADAMW_TOL && err[2] <= ADAMW_TOL, "adafactor_update %s %dx%d, 4 steps, "
          "beta1 %g, wd %g, |G| ~ %g: W %.1e first moment %.1e statistics %.1e (tol %.0e)",
          cpu::adafactor_factored(rows, cols) ? "factored" : "a vector", rows, cols, beta1, weight_decay, grad_scale,
          err[0], err[1], err[2], ADAMW_TOL);
    cudaCheck(cudaFree(W));
    cudaCheck(cudaFree(M));
    cudaCheck(cudaFree(S));
    cudaCheck(cudaFree(G));
    cudaCheck(cudaFree(d_sums));
    free(host_w); free(host_m); free(host_s); free(host_g); free(sums); free(out);
}

static void test_adamw(void) {
    test_adamw_mode(0);
    test_adamw_mode(1);
    test_sgd(0.9f);
    test_sgd(0.0f);
    test_adafactor(37, 53, 0.0f, 0.0f, 1.0f);        // the authors' configs: no first moment
    test_adafactor(300, 290, 0.9f, 0.1f, 100.0f);    // more blocks than ADAFACTOR_PARTIALS; clipping
    test_adafactor(1, 1031, 0.9f, 0.1f, 0.01f);      // a vector
    test_adafactor(1, 5, 0.0f, 0.0f, 1.0f);
}

// ---- 2. low-rank AdamW, GPU vs CPU after every step
//
// tolerances (each relative to the reference tensor's max |x|, S through S S^T
// whose entries are <= 1): both sides are fp32 with the same expressions; they
// differ in summation order (cuBLAS / the harness accumulate products in other
// orders than the CPU gemm, reductions are trees instead of serial loops) and
// the SVD (cuSOLVER vs bisection + inverse iteration, both accurate to ~1e-12
// in double). one fp32 product of length K carries ~sqrt(K) * 6e-8 <= 1e-6 of
// rounding; five steps, a geodesic step amplifying the change of S by eta sigma
// and Adam's division by sqrt(V) (where V is small) leave room of 1e-5..2e-5
#define LR_TOL_PROJECTOR 1e-5
#define LR_TOL_MOMENT 2e-5
#define LR_TOL_W 1e-5           // of max |W - W_0|: W_0 is exact, only the updates carry error
// with --adaptive_optimizer, V_rot = |(C o C)(V - M o M) + M_rot o M_rot| can cancel
// to entries ~1e-7 of max |V| (seen: 2e-11 against 2e-4), which is the absolute
// rounding level of V itself; Adam's M / sqrt(V) then turns V's 1e-7 agreement
// into ~1e-1 relative in that N entry and ~1e-3 of the largest update in W.
// M, V and S are still held to the tolerances above, so a wrong rotation fails there
#define LR_TOL_W_ADAPTIVE 2e-3
#define LR_TOL_LIMITER 1e-5
#define LR_STEPS 5              // with k = 2: subspace updates at t = 2 and t = 4 (plus the SVD at 0)

typedef struct {
    const char* name;
    cpu::SubspaceMethod method;
    int adaptive, recovery, limiter;
} MethodCase;

static const MethodCase method_cases[] = {
    {"galore", cpu::SUBSPACE_GALORE, 0, 0, 1},
    {"galore+adaptive", cpu::SUBSPACE_GALORE, 1, 0, 1},
    {"galore+recovery", cpu::SUBSPACE_GALORE, 0, 1, 1},
    {"subtrack", cpu::SUBSPACE_SUBTRACK, 0, 0, 1},
    {"subtrack+adaptive", cpu::SUBSPACE_SUBTRACK, 1, 0, 1},
    {"subtrack+recovery", cpu::SUBSPACE_SUBTRACK, 0, 1, 1},
    {"subtrack+both", cpu::SUBSPACE_SUBTRACK, 1, 1, 1},
    {"subtrack+both, limiter off", cpu::SUBSPACE_SUBTRACK, 1, 1, 0},
};

// --svd randomized for the cases make_config builds (test_svd_randomized_twin): -1, the exact SVD
static int g_svd_oversample = -1;

static cpu::LowRankConfig make_config(const MethodCase* mc, int r, int k, float eta, float wd) {
    cpu::LowRankConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    if (g_svd_oversample >= 0) {
        cfg.svd_randomized = 1;
        cfg.svd_oversample = g_svd_oversample;
        cfg.svd_power_iters = SVD_POWER_ITERS_DEFAULT;
        cfg.svd_seed = 77;
    }
    cfg.method = mc->method;
    cfg.rank = r;
    cfg.low_rank_scale = 0.25f;
    cfg.update_interval = k;
    cfg.st_init_step_size = eta;
    cfg.adaptive_optimizer = mc->adaptive;
    cfg.recovery_scaling = mc->recovery;
    cfg.norm_growth_limiter = mc->limiter;
    cfg.norm_growth_limit = 1.01f;
    cfg.beta1 = 0.9f;
    cfg.beta2 = 0.999f;
    cfg.eps = 1e-6f;
    cfg.weight_decay = wd;
    return cfg;
}

// errors of the GPU state against the CPU state: S S^T, M, V, W, prev
static void state_errors(double* e, const float* gpu_memory, const float* gpu_W, const cpu::LowRankState* st,
                         const float* W, const float* W0) {
    int p = st->p, q = st->q, r = st->r;
    const float* S = gpu_memory;
    const float* M = S + (size_t)p * r;
    const float* V = M + (size_t)q * r;
    const float* limiter = V + (size_t)q * r;
    size_t mn = (size_t)st->m * st->n;
    e[0] = projector_diff(S, st->S, p, r);
    e[1] = rel_diff(M, st->M, (size_t)q * r);
    e[2] = rel_diff(V, st->V, (size_t)q * r);
    double update = 0.0;
    for (size_t i = 0; i < mn; i++) { update = fmax(update, fabs((double)W[i] - W0[i])); }
    double dw = 0.0;
    for (size_t i = 0; i < mn; i++) {
        double d = fabs((double)gpu_W[i] - W[i]);
        if (!(d <= dw)) { dw = d; }
    }
    e[3] = dw / fmax(update, 1e-30);
    e[4] = fabs((double)limiter[0] - st->limiter[0]) / fmax(fabs((double)st->limiter[0]), 1e-30);
    if (limiter[1] != st->limiter[1]) { e[4] = INFINITY; }
}

// the worst errors over the steps of one case (state_errors' five), the step of
// each, and the GPU's subspace updates
typedef struct {
    double err[5];
    int err_step[5];
    int subspace_updates;
    double w_rms;       // max over steps of ||W_gpu - W_cpu||_F / ||W_cpu - W_0||_F
    int w_rms_step;
} CaseErrors;

static CaseErrors lowrank_case_errors(int m, int n, int r, const MethodCase* mc, float eta, float wd, int steps,
                                      LowRankGPU* ctx, uint64_t seed) {
    int k = 2;
    cpu::LowRankConfig cfg = make_config(mc, r, k, eta, wd);
    float lr = 1e-2f;
    size_t mn = (size_t)m * n, state_floats = cpu::lowrank_state_num_floats(m, n, m > n, r);
    // CPU side
    cpu::LowRankState st;
    float* cpu_memory = (float*)malloc(state_floats * sizeof(float));
    float* scratch = (float*)malloc(cpu::lowrank_scratch_num_floats_cfg(m, n, m > n, r, &cfg) * sizeof(float));
    float* W = (float*)malloc(mn * sizeof(float));
    float* W0 = (float*)malloc(mn * sizeof(float));
    float* G = (float*)malloc(mn * sizeof(float));
    cpu::lowrank_state_init(&st, m, n, m > n, r, cpu_memory);
    cpu::Rng rng;
    cpu::rng_seed(&rng, seed);
    for (size_t i = 0; i < mn; i++) { W0[i] = 0.1f * cpu::rng_normal(&rng); }
    memcpy(W, W0, mn * sizeof(float));
    // GPU side
    LowRankStateGPU gs;
    float* d_memory;
    cudaCheck(cudaMalloc((void**)&d_memory, state_floats * sizeof(float)));
    lowrank_state_init(&gs, m, n, m > n, r, d_memory);
    float* d_W = device_copy(W0, mn);
    float* d_G = device_copy(W0, mn);
    float* gpu_memory = (float*)malloc(state_floats * sizeof(float));
    float* gpu_W = (float*)malloc(mn * sizeof(float));
    GradientSource src;
    gradient_source_init(&src, m, n, r, seed + 1);
    CaseErrors ce;
    memset(&ce, 0, sizeof ce);
    double* err = ce.err;
    int* err_step = ce.err_step;
    for (int t = 0; t < steps; t++) {
        gradient_at(&src, G, t);
        cudaCheck(cudaMemcpy(d_G, G, mn * sizeof(float), cudaMemcpyHostToDevice));
        cpu::lowrank_adamw_step(&st, W, G, t, &cfg, lr, scratch);
        lowrank_adamw_step(&gs, d_W, d_G, t, &cfg, lr, ctx);
        host_copy(gpu_memory, d_memory, state_floats);
        host_copy(gpu_W, d_W, mn);
        double e[5];
        state_errors(e, gpu_memory, gpu_W, &st, W, W0);
        for (int i = 0; i < 5; i++) {
            if (!(e[i] <= err[i])) { err[i] = e[i]; err_step[i] = t; }
        }
        double dd = 0.0, uu = 0.0;
        for (size_t i = 0; i < mn; i++) {
            double d = (double)gpu_W[i] - W[i], u = (double)W[i] - W0[i];
            dd += d * d;
            uu += u * u;
        }
        double rms = sqrt(dd) / fmax(sqrt(uu), 1e-30);
        if (!(rms <= ce.w_rms)) { ce.w_rms = rms; ce.w_rms_step = t; }
    }
    ce.subspace_updates = gs.timing.updates;
    // the GPU did work: the subspace timing is collected without error
    (void)lowrank_subspace_seconds(&gs);
    lowrank_state_free(&gs);
    gradient_source_free(&src);
    cudaCheck(cudaFree(d_memory));
    cudaCheck(cudaFree(d_W));
    cudaCheck(cudaFree(d_G));
    free(cpu_memory); free(scratch); free(W); free(W0); free(G); free(gpu_memory); free(gpu_W);
    return ce;
}

static const char* const STATE_NAMES[5] = {"S S^T", "M", "V", "W", "prev"};

// the index of the error furthest over (or closest to) its tolerance
static int worst_of(const double* err, const double* tol) {
    int worst = 0;
    for (int i = 1; i < 5; i++) { if (!(err[i] / tol[i] <= err[worst] / tol[worst])) { worst = i; } }
    return worst;
}

static void run_lowrank_case(int m, int n, int r, const MethodCase* mc, float eta, float wd, int steps,
                             LowRankGPU* ctx, uint64_t seed) {
    CaseErrors ce = lowrank_case_errors(m, n, r, mc, eta, wd, steps, ctx, seed);
    const double* err = ce.err;
    const double tol[5] = {LR_TOL_PROJECTOR, LR_TOL_MOMENT, LR_TOL_MOMENT, mc->adaptive ? LR_TOL_W_ADAPTIVE : LR_TOL_W,
                           LR_TOL_LIMITER};
    int ok = 1;
    for (int i = 0; i < 5; i++) { ok = ok && err[i] <= tol[i]; }
    int worst = worst_of(err, tol);
    check(ok, "lowrank %3dx%-3d r%d %-27s eta %-4g wd %g, %d steps: S S^T %.1e M %.1e V %.1e W %.1e prev %.1e "
          "(worst %s at step %d; %d subspace updates)", m, n, r, mc->name, eta, wd, steps, err[0], err[1], err[2],
          err[3], err[4], STATE_NAMES[worst], ce.err_step[worst], ce.subspace_updates);
}

static const int test_shapes[][3] = {
    // m, n, R: left, right, square, and sizes no kernel tiles evenly
    {9, 23, 3}, {23, 9, 3}, {16, 16, 5}, {72, 200, 8}, {200, 72, 8},
};
#define NUM_TEST_SHAPES (int)(sizeof(test_shapes) / sizeof(test_shapes[0]))

static void test_lowrank_all(LowRankGPU* ctx) {
    int num_methods = (int)(sizeof(method_cases) / sizeof(method_cases[0]));
    for (int si = 0; si < NUM_TEST_SHAPES; si++) {
        for (int mi = 0; mi < num_methods; mi++) {
            // eta 1: geodesic steps of ~a radian here (sigma is O(1)), large enough to rotate the moments visibly
            run_lowrank_case(test_shapes[si][0], test_shapes[si][1], test_shapes[si][2], &method_cases[mi], 1.0f,
                             mi % 2 ? 0.1f : 0.0f, LR_STEPS, ctx, 1000 + 17 * si + mi);
        }
    }
}

// ---- 2b. bf16 mode: the projection, back-projection and residual on tensor
// cores, against the CPU's fp32, after every step. both of bf16 mode's
// precisions: LOWRANK_BF16 (the default: our WMMA kernels on bf16 inputs) and
// LOWRANK_TF32 (cuBLAS and the same kernels on TF32)
//
// the tolerance, from the inputs' unit roundoff u: TF32 keeps 10 mantissa
// bits, so rounding an input moves it by at most u = 2^-10 of itself
// (truncation, which a GPU's cuBLAS may do; to nearest, half that; the harness
// rounds to nearest); bf16 keeps 7, and our kernels round to nearest even
// (__float2bfloat16_rn), u = 2^-8 (the cuBLAS products the bf16 path keeps,
// GaLore's back-projection, are TF32: smaller). a product of two rounded
// inputs then errs by at most 2u of |a| |b|, and a sum of them by 2u sum |a_k| |b_k|
// <= 2u ||a|| ||b|| (Cauchy-Schwarz), which for Gt = S^T G (||s|| = 1) is 2u ||g_j||
// per entry; fp32 accumulation adds ~K 2^-24, under 1e-5 here. what follows
// carries that 2u: M and V are sums of Gt with weights summing to <= 1, so 2u
// (V, quadratic: 4u); the subspace steps turn S by angles computed from Gt
// (2u), and the rotated moments carry that; the limiter's prev is a ratio of
// norms of rounded vectors (4u). a 3x margin over the largest: 12u (TF32
// 1.2e-2, bf16 4.7e-2), relative as in state_errors, for S S^T, M, V and prev.
// W: N = M / (sqrt(V) + eps) is Adam's per-entry normalization, sign-like in
// the first steps, so an entry of Gt within its rounding 2u ||g_j|| of zero can
// change N by up to its whole size; the largest entry of W's error is bounded
// by nothing smaller than the update itself (measured: up to 30u). W is held in
// the Frobenius norm instead, ||W_gpu - W_cpu|| / ||W_cpu - W_0||: away from
// zero, N's relative error is M's 2u plus half V's 4u, and the back-projection
// adds 2u, 6u per step of updates that mostly share a sign; the entries near
// zero are a fraction ~ 2u sqrt(R) of them and weigh that share. the same 12u
// (2x the 6u) bounds it. measured (harness, rounding to nearest): TF32 S S^T
// ~1e-5, M and V ~2e-4, W ~1-6e-3; bf16 S S^T ~5e-5, M ~1e-3, V ~1-4e-3, W
// ~0.8-3e-2 (at most 0.62 of its 12u).
// the precision must really be in use: W's largest error must be at least
// FAST_EXERCISED_FACTOR times the fp32 path's on the same case (u differs by
// 2^13 or more), and bf16's above TF32's (its u is 8x larger, 4x if a GPU's
// cuBLAS truncates to TF32; measured here: 2.2x to 10x. the rounding itself is
// pinned in 2e)
#define TF32_U 9.765625e-4
#define BF16_U 3.90625e-3
#define FAST_EXERCISED_FACTOR 50.0

static void test_lowrank_fast_products(LowRankGPU* ctx) {
    const int shapes[][3] = {{72, 200, 8}, {200, 72, 8}};
    const LowRankProducts fast[2] = {LOWRANK_TF32, LOWRANK_BF16};
    const char* names[2] = {"TF32", "bf16"};
    const double us[2] = {TF32_U, BF16_U};
    int num_methods = (int)(sizeof(method_cases) / sizeof(method_cases[0]));
    for (int si = 0; si < 2; si++) {
        for (int mi = 0; mi < num_methods; mi++) {
            const MethodCase* mc = &method_cases[mi];
            int m = shapes[si][0], n = shapes[si][1], r = shapes[si][2];
            uint64_t seed = 5000 + 17 * si + mi;
            ctx->products = LOWRANK_FP32;
            CaseErrors exact = lowrank_case_errors(m, n, r, mc, 1.0f, 0.0f, LR_STEPS, ctx, seed);
            double w_largest[2];
            for (int fi = 0; fi < 2; fi++) {
                ctx->products = fast[fi];
                CaseErrors e_fast = lowrank_case_errors(m, n, r, mc, 1.0f, 0.0f, LR_STEPS, ctx, seed);
                ctx->products = LOWRANK_FP32;
                double e[5] = {e_fast.err[0], e_fast.err[1], e_fast.err[2], e_fast.w_rms, e_fast.err[4]};
                double t = 12 * us[fi];
                double tol[5] = {t, t, t, t, t};
                int ok = 1;
                for (int i = 0; i < 5; i++) { ok = ok && e[i] <= tol[i]; }
                int worst = worst_of(e, tol);
                check(ok, "lowrank %s %3dx%-3d r%d %-27s %d steps against the CPU's fp32: S S^T %.1e M %.1e V "
                      "%.1e W (Frobenius) %.1e prev %.1e (tol 12u = %.1e; worst %s)", names[fi], m, n, r, mc->name,
                      LR_STEPS, e[0], e[1], e[2], e[3], e[4], t, STATE_NAMES[worst]);
                check(e_fast.err[3] >= FAST_EXERCISED_FACTOR * exact.err[3] && e_fast.err[3] > 0,
                      "lowrank %s %3dx%-3d r%d %-27s is in use: W's largest error %.1e is at least %g x the fp32 "
                      "path's %.1e", names[fi], m, n, r, mc->name, e_fast.err[3], FAST_EXERCISED_FACTOR,
                      exact.err[3]);
                w_largest[fi] = e_fast.err[3];
            }
            check(w_largest[1] > w_largest[0], "lowrank bf16 %3dx%-3d r%d %-27s rounds to bf16, not TF32: "
                  "W's largest error %.1e is above TF32's %.1e", m, n, r, mc->name, w_largest[1], w_largest[0]);
        }
    }
}

// ---- 2d. bf16 mode's fused steps 5-6 (lowrank_residual_norms_kernel,
// lowrank_update_moments_kernel, lowrank_fused_update_kernel), in both of its
// precisions (bf16, the default, and TF32), against the unfused path
// (ctx->unfused: the residual and the back-projection by cuBLAS on TF32) and
// against the CPU's steps 4-6 (cpu::lowrank_adam_in_subspace,
// lowrank_residual, lowrank_recovery_scaling, lowrank_apply_update), batched:
// 3 matrices of a shape in one grouped batch (the kernels' tables), both
// orientations, ranks 13 and 40 (not multiples of 8 or 16; 40 crosses TF32's
// 32-wide rank chunk), 24 (a multiple of 8 only) and 72 (crosses bf16's
// 64-wide chunk), sizes no 64-tile divides. from states set by hand (no SVD): S random
// orthonormal, M, V random, and the limiter of matrix 0 unset (it stores), of
// 1 set far below (it fires), of 2 far above (it does not); step 2's gradient
// is twice step 1's, so there every limiter fires. weight decay 0.1 in half
// the cases, the limiter off in one. the CPU twin gets the GPU's Gt (the
// projection: cuBLAS on TF32, or in bf16 lowrank_project_kernel, bounded in 2b
// and 2e), and so does the unfused path (the same projection, deterministic):
// M, V and N then agree to fp32 rounding, and what is left is the fused
// kernels' own error.
//
// the tolerance, per element of W, from the inputs' unit roundoff u: TF32's
// 2^-11 (to nearest with 10 stored mantissa bits; the kernels convert with
// __float_to_tf32), bf16's 2^-8 (to nearest even with 7, __float2bfloat16_rn).
// with f_j = scale phi_j and N' = alpha N - Gt diag(f), the
// fused update computes W - lr c (S N' + f_j G); the CPU lr c (alpha S N + f_j
// (G - S Gt)) in fp32. a product of two rounded inputs errs by 2u + u^2 of |a b|, and
// fp32 accumulation over R terms adds (R + 2) 2^-24 on each side, so with
//   A_ij = sum_k |S_ik| (|alpha N_kj| + |f_j Gt_kj|)   (the product's magnitude)
//   c1 = 2u + u^2 + 2 (R + 2) 2^-24
// the products differ by c1 A_ij. the limiter's scale follows ||Lambda||,
// whose residual G - S Gt the norms kernel also forms from a rounded product: its
// column j errs relatively by at most
//   d_lambda = c1 max_j ||P_j|| / ||res_j||,  P_ij = sum_k |S_ik| |Gt_kj|
// and f_j by that plus phi's own rounding (2 ulp, 2^-22). the epilogue's fp32
// operations add 8 ulp of the magnitudes involved. so
//   |W_gpu - W_cpu|_ij <= lr c (c1 A_ij + (d_lambda + 2^-22) |f_j| |res_ij|)
//                        + 8 2^-24 (|W_ij| + lr c (A_ij + |f_j| (|G_ij| + |res_ij|)))
// and prev (= ||Lambda||, or the cap) within d_lambda + 2^-22 relative. against
// the unfused path both sides carry their own error: the sum of this bound and
// the same bound for cuBLAS's TF32 with u = 2^-10 (it may truncate; the bf16
// side's own bound is the larger). over steps the bounds add up: a step starts from W and the
// limiter's prev as the last one left them (prev's relative error enters the
// next cap, so d_lambda of earlier steps goes into f too). M and V see the same Gt on all three and must agree to 2 ulp of their
// largest entry (fp32 expressions contracted to FMAs on a GPU)
#define FUSED_U_TF32 (1.0 / 2048.0)
#define FUSED_U_BF16 (1.0 / 256.0)
#define FUSED_U_CUBLAS (1.0 / 1024.0)
#define FUSED_MATRICES 3
#define FUSED_STEPS 2

typedef struct {
    double w_ratio;     // max over elements of |diff| / bound
    double prev_ratio;
    double mv;          // max |M, V diff| / max |M, V|
    int fired;          // limiter decisions that cut Lambda
} FusedErrors;

static void fused_errors_merge(FusedErrors* into, const FusedErrors* e) {
    into->w_ratio = fmax(into->w_ratio, e->w_ratio);
    into->prev_ratio = fmax(into->prev_ratio, e->prev_ratio);
    into->mv = fmax(into->mv, e->mv);
}

// this step's bound on |W_gpu - W_ref| (unscaled), added into bound (m, n), from W before
// the step Wb, S (p, R), Gt and N (the moments' shape), f (q,) = scale phi, G (m, n), as
// the CPU had them; returns d_lambda
static double fused_step_bound(double* bound, const float* Wb, const float* S, const float* Gt, const float* N,
                               const float* f, const float* G, const cpu::LowRankState* st, float alpha,
                               double step, double d_scale_before, double u) {
    int p = st->p, q = st->q, r = st->r, right = st->right;
    double c1 = 2 * u + u * u + 2.0 * (r + 2) * ldexp(1.0, -24);
    size_t sr = right ? 1 : (size_t)q, sq = right ? (size_t)r : 1;
    // the residual and P, column by column (left frame), and d_lambda
    double* res = (double*)malloc((size_t)p * q * sizeof(double));
    double* A = (double*)malloc((size_t)p * q * sizeof(double));
    double d_lambda = 0.0;
    for (int j = 0; j < q; j++) {
        double rr = 0.0, pp = 0.0;
        for (int i = 0; i < p; i++) {
            double sg = 0.0, pa = 0.0, aa = 0.0;
            for (int k = 0; k < r; k++) {
                double s = S[(size_t)i * r + k], gt = Gt[k * sr + j * sq], n = N[k * sr + j * sq];
                sg += s * gt;
                pa += fabs(s) * fabs(gt);
                aa += fabs(s) * (fabs(alpha * n) + fabs(f[j] * gt));
            }
            size_t idx = right ? (size_t)j * p + i : (size_t)i * q + j;
            res[(size_t)i * q + j] = G[idx] - sg;
            A[(size_t)i * q + j] = aa;
            rr += (G[idx] - sg) * (G[idx] - sg);
            pp += pa * pa;
        }
        if (rr > 0.0) { d_lambda = fmax(d_lambda, c1 * sqrt(pp / rr)); }
    }
    // f_j's relative error: this step's d_lambda, phi's 2 ulp, and the
    // limiter's cap zeta prev from earlier steps (d_scale_before)
    double d_f = d_lambda + ldexp(1.0, -22) + d_scale_before;
    for (int j = 0; j < q; j++) {
        for (int i = 0; i < p; i++) {
            size_t idx = right ? (size_t)j * p + i : (size_t)i * q + j;
            double a = A[(size_t)i * q + j], rs = fabs(res[(size_t)i * q + j]), fj = fabs(f[j]);
            bound[idx] += step * (c1 * a + d_f * fj * rs) +
                          8 * ldexp(1.0, -24) * (fabs(Wb[idx]) + step * (a + fj * (fabs(G[idx]) + rs)));
        }
    }
    free(res);
    free(A);
    return d_lambda;
}

// max |Wg - Wr| / (factor bound), NaN wins
static double fused_w_ratio(const float* Wg, const float* Wr, const double* bound, size_t mn, double factor) {
    double ratio = 0.0;
    for (size_t i = 0; i < mn; i++) {
        double x = fabs((double)Wg[i] - Wr[i]) / (factor * bound[i]);
        if (!(x <= ratio)) { ratio = x; }
    }
    return ratio;
}

static double fused_mv_diff(const float* a, const float* b, size_t n) {
    double d = 0.0, big = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - b[i]);
        if (!(x <= d)) { d = x; }
        big = fmax(big, fabs((double)b[i]));
    }
    return d / fmax(big, 1e-30);
}

static void test_lowrank_fused_case(LowRankProducts products, int m, int n, int right, int r, int limiter, float wd,
                                    uint64_t seed) {
    const char* prec = products == LOWRANK_BF16 ? "bf16" : "TF32";
    double u = products == LOWRANK_BF16 ? FUSED_U_BF16 : FUSED_U_TF32;
    cpu::LowRankConfig cfg = make_config(&method_cases[6], r, 1000, 1.0f, wd);  // subtrack+both: k 1000, no update
    cfg.norm_growth_limiter = limiter;
    float lr = 1e-2f;
    size_t mn = (size_t)m * n, floats = cpu::lowrank_state_num_floats(m, n, right, r);
    int p = right ? n : m, q = right ? m : n;
    size_t pr = (size_t)p * r, qr = (size_t)q * r;
    LowRankGPU ctx[2];           // 0: fused, 1: unfused, both at `products`
    LowRankStateGPU states[2][FUSED_MATRICES];
    float *d_memory[2][FUSED_MATRICES], *d_W[2][FUSED_MATRICES], *d_G[FUSED_MATRICES];
    float *cpu_memory[FUSED_MATRICES], *W[FUSED_MATRICES], *G[FUSED_MATRICES];
    cpu::LowRankState st[FUSED_MATRICES];
    cpu::Rng rng;
    cpu::rng_seed(&rng, seed);
    LowRankGroupsGPU g[2];
    for (int run = 0; run < 2; run++) {
        lowrank_gpu_create(&ctx[run]);
        ctx[run].products = products;
        ctx[run].unfused = run;
        lowrank_gpu_reserve_group(&ctx[run], m, n, right, r, FUSED_MATRICES);
        lowrank_gpu_alloc(&ctx[run]);
    }
    for (int k = 0; k < FUSED_MATRICES; k++) {
        cpu_memory[k] = (float*)malloc(floats * sizeof(float));
        cpu::lowrank_state_init(&st[k], m, n, right, r, cpu_memory[k]);
        double* Q = (double*)malloc(pr * sizeof(double));   // S: orthonormal columns
        for (size_t i = 0; i < pr; i++) { Q[i] = cpu::rng_normal(&rng); }
        orthonormalize(Q, p, r);
        for (size_t i = 0; i < pr; i++) { st[k].S[i] = (float)Q[i]; }
        free(Q);
        for (size_t i = 0; i < qr; i++) {
            st[k].M[i] = 0.01f * cpu::rng_normal(&rng);
            st[k].V[i] = 1e-4f * (0.1f + fabsf(cpu::rng_normal(&rng)));
        }
        // limiter: unset, far below (fires), far above (does not)
        st[k].limiter[0] = k == 1 ? 1e-3f : 1e3f;
        st[k].limiter[1] = k == 0 ? 0.0f : 1.0f;
        W[k] = (float*)malloc(mn * sizeof(float));
        G[k] = (float*)malloc(mn * sizeof(float));
        for (size_t i = 0; i < mn; i++) { W[k][i] = 0.1f * cpu::rng_normal(&rng); }
        d_G[k] = device_copy(W[k], mn);
        for (int run = 0; run < 2; run++) {
            cudaCheck(cudaMalloc((void**)&d_memory[run][k], floats * sizeof(float)));
            lowrank_state_init(&states[run][k], m, n, right, r, d_memory[run][k]);
            cudaCheck(cudaMemcpy(d_memory[run][k], cpu_memory[k], floats * sizeof(float), cudaMemcpyHostToDevice));
            d_W[run][k] = device_copy(W[k], mn);
        }
    }
    for (int run = 0; run < 2; run++) {
        lowrank_groups_build(&g[run], states[run], FUSED_MATRICES, &ctx[run], 0);
        lowrank_groups_bind(&g[run], d_W[run], d_G);
    }
    float* Gt = (float*)malloc(qr * sizeof(float));
    float* N = (float*)malloc(qr * sizeof(float));
    float* D = (float*)malloc(mn * sizeof(float));
    float* phi = (float*)malloc(q * sizeof(float));
    double* norm2 = (double*)malloc(q * sizeof(double));
    float* Wb = (float*)malloc(mn * sizeof(float));
    float* host[2];
    for (int run = 0; run < 2; run++) { host[run] = (float*)malloc((floats + mn) * sizeof(float)); }
    FusedErrors vs_cpu, vs_unfused;
    memset(&vs_cpu, 0, sizeof vs_cpu);
    memset(&vs_unfused, 0, sizeof vs_unfused);
    size_t bits_differ = 0;
    double* bound[FUSED_MATRICES];      // this precision's, and cuBLAS TF32's (the unfused path's)
    double* bound_cublas[FUSED_MATRICES];
    double d_prev[FUSED_MATRICES], d_prev_cublas[FUSED_MATRICES];
    for (int k = 0; k < FUSED_MATRICES; k++) {
        bound[k] = (double*)calloc(mn, sizeof(double));
        bound_cublas[k] = (double*)calloc(mn, sizeof(double));
        d_prev[k] = d_prev_cublas[k] = 0.0;
    }
    double* bound_sum = (double*)malloc(mn * sizeof(double));
    for (int t = 1; t <= FUSED_STEPS; t++) {
        for (int k = 0; k < FUSED_MATRICES; k++) {
            for (size_t i = 0; i < mn; i++) { G[k][i] = (float)t * 0.05f * cpu::rng_normal(&rng); }
            cudaCheck(cudaMemcpy(d_G[k], G[k], mn * sizeof(float), cudaMemcpyHostToDevice));
        }
        for (int run = 0; run < 2; run++) { lowrank_groups_step(&g[run], t, &cfg, lr, &ctx[run], NULL); }
        double c = sqrt(1.0 - pow((double)cfg.beta2, t + 1)) / (1.0 - pow((double)cfg.beta1, t + 1));
        double step = (float)(lr * c);
        for (int k = 0; k < FUSED_MATRICES; k++) {
            // the CPU's steps 4-6 from the fused run's Gt (its scratch, still there after the step)
            host_copy(Gt, g[0].batch[0].Gt.on_host(k), qr);
            memcpy(Wb, W[k], mn * sizeof(float));
            float prev_before = st[k].limiter[0], prev_set_before = st[k].limiter[1];
            cpu::lowrank_adam_in_subspace(&st[k], N, Gt, &cfg);
            cpu::lowrank_residual(D, &st[k], G[k], Gt);
            cpu::lowrank_recovery_scaling(&st[k], D, N, Gt, &cfg, phi, norm2);    // phi becomes f = scale phi
            cpu::lowrank_apply_update(W[k], &st[k], N, D, t, &cfg, lr);
            if (limiter && prev_set_before != 0.0f && st[k].limiter[0] < (float)(cfg.norm_growth_limit * prev_before) * 1.0001f &&
                st[k].limiter[0] > (float)(cfg.norm_growth_limit * prev_before) * 0.9999f) {
                vs_cpu.fired++;
            }
            for (int run = 0; run < 2; run++) {
                host_copy(host[run], d_memory[run][k], floats);
                host_copy(host[run] + floats, d_W[run][k], mn);
            }
            for (size_t i = 0; i < mn; i++) {
                bits_differ += memcmp(&host[0][floats + i], &host[1][floats + i], sizeof(float)) != 0;
            }
            double d_lambda = fused_step_bound(bound[k], Wb, st[k].S, Gt, N, phi, G[k], &st[k], cfg.low_rank_scale,
                                               step, d_prev[k], u);
            d_prev[k] += d_lambda + ldexp(1.0, -22);
            double d_lambda_cublas = fused_step_bound(bound_cublas[k], Wb, st[k].S, Gt, N, phi, G[k], &st[k],
                                                      cfg.low_rank_scale, step, d_prev_cublas[k], FUSED_U_CUBLAS);
            d_prev_cublas[k] += d_lambda_cublas + ldexp(1.0, -22);
            for (size_t i = 0; i < mn; i++) { bound_sum[i] = bound[k][i] + bound_cublas[k][i]; }
            for (int run = 0; run < 2; run++) {
                FusedErrors e;
                memset(&e, 0, sizeof e);
                const float* Wref = run == 0 ? W[k] : host[1] + floats;
                e.w_ratio = fused_w_ratio(host[0] + floats, Wref, run == 0 ? bound[k] : bound_sum, mn, 1.0);
                const float* ref_mem = run == 0 ? cpu_memory[k] : host[1];
                e.mv = fmax(fused_mv_diff(host[0] + pr, ref_mem + pr, qr),
                            fused_mv_diff(host[0] + pr + qr, ref_mem + pr + qr, qr));
                double prev_ref = ref_mem[pr + 2 * qr], prev_got = host[0][pr + 2 * qr];
                e.prev_ratio = fabs(prev_got - prev_ref) /
                               (fmax(fabs(prev_ref), 1e-30) * (run == 0 ? d_prev[k] : d_prev[k] + d_prev_cublas[k]));
                if (host[0][pr + 2 * qr + 1] != ref_mem[pr + 2 * qr + 1]) { e.prev_ratio = INFINITY; }
                fused_errors_merge(run == 0 ? &vs_cpu : &vs_unfused, &e);
            }
        }
    }
    double mv_tol = ldexp(1.0, -22);
    int want_fired = limiter ? 1 + FUSED_MATRICES : 0;   // matrix 1 at step 1, every matrix at step 2
    check(vs_cpu.w_ratio <= 1.0 && vs_cpu.prev_ratio <= 1.0 && vs_cpu.mv <= mv_tol && vs_cpu.fired == want_fired,
          "lowrank fused %s %3dx%-3d %-5s r%-2d %s wd %g, %d x %d steps against the CPU's steps 4-6: W %.2f of "
          "its bound, prev %.2f, M V %.1e (tol 2^-22), limiter fired %d times (want %d)", prec, m, n,
          right ? "right" : "left", r,
          limiter ? "limiter on " : "limiter off", wd, FUSED_MATRICES, FUSED_STEPS, vs_cpu.w_ratio, vs_cpu.prev_ratio,
          vs_cpu.mv, vs_cpu.fired, want_fired);
    check(vs_unfused.w_ratio <= 1.0 && vs_unfused.prev_ratio <= 1.0 && vs_unfused.mv <= mv_tol && bits_differ > 0,
          "lowrank fused %s %3dx%-3d %-5s r%-2d %s wd %g against the unfused path (cuBLAS TF32): W %.2f of the "
          "two bounds' sum, prev %.2f, M V %.1e; %zu floats of W differ in their bits (the fused path ran)", prec,
          m, n, right ? "right" : "left", r, limiter ? "limiter on " : "limiter off", wd, vs_unfused.w_ratio,
          vs_unfused.prev_ratio, vs_unfused.mv, bits_differ);
    for (int run = 0; run < 2; run++) {
        lowrank_groups_free(&g[run]);
        for (int k = 0; k < FUSED_MATRICES; k++) {
            lowrank_state_free(&states[run][k]);
            cudaCheck(cudaFree(d_memory[run][k]));
            cudaCheck(cudaFree(d_W[run][k]));
        }
        lowrank_gpu_destroy(&ctx[run]);
        free(host[run]);
    }
    for (int k = 0; k < FUSED_MATRICES; k++) {
        cudaCheck(cudaFree(d_G[k]));
        free(cpu_memory[k]); free(W[k]); free(G[k]); free(bound[k]); free(bound_cublas[k]);
    }
    free(bound_sum);
    free(Gt); free(N); free(D); free(phi); free(norm2); free(Wb);
}

static void test_lowrank_fused(void) {
    const LowRankProducts precisions[2] = {LOWRANK_BF16, LOWRANK_TF32};
    for (int pi = 0; pi < 2; pi++) {
        LowRankProducts pr = precisions[pi];
        test_lowrank_fused_case(pr, 72, 200, 0, 13, 1, 0.0f, 7001);    // left, R odd
        test_lowrank_fused_case(pr, 200, 72, 1, 13, 1, 0.1f, 7002);    // right, weight decay
        test_lowrank_fused_case(pr, 70, 130, 0, 24, 1, 0.1f, 7003);    // left, R a multiple of 8 only
        test_lowrank_fused_case(pr, 150, 40, 1, 40, 1, 0.0f, 7004);    // right, R = p: TF32's chunk 32 + 8
        test_lowrank_fused_case(pr, 100, 96, 1, 24, 0, 0.1f, 7005);    // right, limiter off
        // the larger side projected (--proj_type reverse_std, left, right): p > q
        test_lowrank_fused_case(pr, 72, 200, 1, 13, 1, 0.1f, 7007);    // right of a wide matrix, p = 200
        test_lowrank_fused_case(pr, 200, 72, 0, 13, 1, 0.0f, 7008);    // left of a tall one, p = 200
    }
    test_lowrank_fused_case(LOWRANK_BF16, 90, 150, 0, 72, 1, 0.1f, 7006);   // left, bf16's chunk 64 + 8
}

// ---- 2e. bf16 mode's projection alone (lowrank_project_kernel<LowRankBF16>,
// what lowrank_project runs with ctx->products LOWRANK_BF16): Gt = S^T G
// (left, (R, q)) or G S (right, (q, R)) against double references, both
// orientations, ranks not multiples of 16 (13, 72: two tiles of R, the second
// partial), p across several 64-deep chunks and no 64-tile dividing p, q or R.
// with P_kj = sum_i |S_ik| |G_ij| (left frame), two bounds:
//   against the exact product of the fp32 inputs, the bf16 rounding of both
//   inputs (to nearest even, u = 2^-8) and fp32 accumulation over p terms:
//     |Gt - exact|_kj <= (2u + u^2 + (p + 2) 2^-24) P_kj
//   against the exact product of the inputs rounded to bf16 on the host
//   (__float2bfloat16_rn), fp32 accumulation alone:
//     |Gt - exact_bf16|_kj <= (p + 2) 2^-24 P_kj
// the second pins the rounding: TF32 inputs, or bf16 by truncation, miss it by
// far (errors of 2^-11 or 2^-8 of the terms, against 2^-16 here). a second
// launch gives the same bits, and so does a batch of 3 matrices in one launch
// (the grid's z, through a device table of pointers) for each of its matrices
static void test_lowrank_project_case(int m, int n, int r, uint64_t seed) {
    const int count = 3;
    int right = m > n, p = right ? n : m, q = right ? m : n;
    size_t mn = (size_t)m * n, pr = (size_t)p * r, qr = (size_t)q * r;
    cpu::Rng rng;
    cpu::rng_seed(&rng, seed);
    float *S[count], *G[count], *d_S[count], *d_G[count], *d_Gt[count];
    for (int e = 0; e < count; e++) {
        S[e] = (float*)malloc(pr * sizeof(float));
        G[e] = (float*)malloc(mn * sizeof(float));
        double* Q = (double*)malloc(pr * sizeof(double));
        for (size_t i = 0; i < pr; i++) { Q[i] = cpu::rng_normal(&rng); }
        orthonormalize(Q, p, r);
        for (size_t i = 0; i < pr; i++) { S[e][i] = (float)Q[i]; }
        free(Q);
        for (size_t i = 0; i < mn; i++) { G[e][i] = 0.05f * cpu::rng_normal(&rng); }
        d_S[e] = device_copy(S[e], pr);
        d_G[e] = device_copy(G[e], mn);
        cudaCheck(cudaMalloc((void**)&d_Gt[e], qr * sizeof(float)));
    }
    dim3 grid((r + LOWRANK_TILE - 1) / LOWRANK_TILE, (q + LOWRANK_TILE - 1) / LOWRANK_TILE, 1);
    // matrix 0 alone, twice
    float* Gt = (float*)malloc(qr * sizeof(float));
    float* again = (float*)malloc(qr * sizeof(float));
    lowrank_project_kernel<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(d_Gt[0], d_G[0], d_S[0], r, p, q, right);
    cudaCheck(cudaGetLastError());
    host_copy(Gt, d_Gt[0], qr);
    lowrank_project_kernel<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(d_Gt[0], d_G[0], d_S[0], r, p, q, right);
    cudaCheck(cudaGetLastError());
    host_copy(again, d_Gt[0], qr);
    int same = memcmp(Gt, again, qr * sizeof(float)) == 0;
    // the bounds, in the left frame (k < R, j < q)
    double u = 1.0 / 256.0, acc = (p + 2) * ldexp(1.0, -24);
    double c1 = 2 * u + u * u + acc, ratio = 0.0, ratio_bf16 = 0.0;
    for (int k = 0; k < r; k++) {
        for (int j = 0; j < q; j++) {
            double exact = 0.0, exact_bf16 = 0.0, mag = 0.0;
            for (int i = 0; i < p; i++) {
                float s = S[0][(size_t)i * r + k], g = G[0][right ? (size_t)j * p + i : (size_t)i * q + j];
                exact += (double)s * g;
                exact_bf16 += (double)__bfloat162float(__float2bfloat16_rn(s)) *
                              (double)__bfloat162float(__float2bfloat16_rn(g));
                mag += fabs((double)s * g);
            }
            double got = Gt[right ? (size_t)j * r + k : (size_t)k * q + j];
            double x = fabs(got - exact) / (c1 * mag), y = fabs(got - exact_bf16) / (acc * mag);
            if (!(x <= ratio)) { ratio = x; }
            if (!(y <= ratio_bf16)) { ratio_bf16 = y; }
        }
    }
    // the batch: a device table of the 3 matrices' pointers
    float** tables[3];
    float* const* host_tables[3] = {d_Gt, d_G, d_S};
    for (int t = 0; t < 3; t++) {
        cudaCheck(cudaMalloc((void**)&tables[t], count * sizeof(float*)));
        cudaCheck(cudaMemcpy(tables[t], host_tables[t], count * sizeof(float*), cudaMemcpyHostToDevice));
    }
    PerMatrix<float> Gt_of;
    PerMatrix<const float> G_of, S_of;
    Gt_of.table = tables[0];
    G_of.table = (const float* const*)tables[1];
    S_of.table = (const float* const*)tables[2];
    for (int e = 0; e < count; e++) { cudaCheck(cudaMemset(d_Gt[e], 0xff, qr * sizeof(float))); }
    grid.z = count;
    lowrank_project_kernel<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(Gt_of, G_of, S_of, r, p, q, right);
    cudaCheck(cudaGetLastError());
    int batch_same = 1;
    grid.z = 1;
    for (int e = 0; e < count; e++) {
        host_copy(again, d_Gt[e], qr);
        float* one = (float*)malloc(qr * sizeof(float));
        lowrank_project_kernel<LowRankBF16><<<grid, LOWRANK_TILE_THREADS>>>(d_Gt[e], d_G[e], d_S[e], r, p, q, right);
        cudaCheck(cudaGetLastError());
        host_copy(one, d_Gt[e], qr);
        batch_same = batch_same && memcmp(one, again, qr * sizeof(float)) == 0;
        free(one);
    }
    check(ratio <= 1.0 && ratio_bf16 <= 1.0 && same && batch_same,
          "lowrank_project_kernel bf16 %3dx%-3d r%-2d (%s): %.2f of the bound against the exact product "
          "(2u + u^2 + (p + 2) 2^-24 of P, u = 2^-8), %.2f of (p + 2) 2^-24 P against the exact product of the "
          "bf16-rounded inputs; a second launch %s, a batch of %d %s", m, n, r, right ? "right" : "left", ratio,
          ratio_bf16, same ? "the same bits" : "DIFFERENT bits", count,
          batch_same ? "the same bits as each alone" : "DIFFERENT bits");
    for (int t = 0; t < 3; t++) { cudaCheck(cudaFree(tables[t])); }
    for (int e = 0; e < count; e++) {
        cudaCheck(cudaFree(d_S[e])); cudaCheck(cudaFree(d_G[e])); cudaCheck(cudaFree(d_Gt[e]));
        free(S[e]); free(G[e]);
    }
    free(Gt); free(again);
}

static void test_lowrank_project(void) {
    test_lowrank_project_case(72, 200, 13, 7101);     // left: one tile of R, p = 64 + 8
    test_lowrank_project_case(200, 72, 13, 7102);     // right
    test_lowrank_project_case(150, 300, 72, 7103);    // left: R = 64 + 8, p three chunks, q = 4 64 + 44
    test_lowrank_project_case(300, 150, 72, 7104);    // right
    test_lowrank_project_case(40, 40, 40, 7105);      // square (left), everything one partial tile
}

// ---- 2c. the grouped step (lowrank_groups_step), which the trainer runs,
// against each matrix stepping alone (lowrank_adamw_step, checked against the
// CPU above): 7 matrices of two shapes, one per orientation (3 of 24x56, 4 of
// 56x24), interleaved, so the groups must gather them by shape; in batches as
// large as the scratch allows (one per shape), and of at most 2 (a shape split
// over batches, the last one short); every method and switch, 6 steps with k
// = 2 (the SVD at 0, subspace updates at 2 and 4). compared after every step:
// each matrix's whole state (S, M, V, the limiter's prev and prev_set) and its
// W. under the harness a batched product computes each matrix as the single
// call does, and a batched kernel runs each matrix's blocks as the single
// launch does, so all of it must be bit for bit the same. on a GPU batched
// cuBLAS may choose other kernels than single calls: there the state is held
// to section 2's moment tolerance (of its max |x|), and W to section 2's W
// tolerances, taken of max |W| (a bound looser than of the update)

#define GROUP_MATRICES 7
#define GROUP_STEPS 6
static const int group_shapes[2][3] = {{24, 56, 5}, {56, 24, 5}};
static const int group_shape_of[GROUP_MATRICES] = {0, 1, 1, 0, 1, 0, 1};

// the largest difference of a against b relative to max |b| (0 when equal bit for bit),
// and how many floats differ in their bits
static double group_diff(const float* a, const float* b, size_t n, size_t* differ) {
    for (size_t i = 0; i < n; i++) { *differ += memcmp(&a[i], &b[i], sizeof(float)) != 0; }
    return memcmp(a, b, n * sizeof(float)) == 0 ? 0.0 : rel_diff(a, b, n);
}

// oversample >= 0: --svd randomized (the GaLore cases only), every matrix with
// its own Omega stream, so a batch that hands a matrix another's stream differs
static void test_lowrank_groups(int oversample = -1) {
    LowRankGPU ctx;
    lowrank_gpu_create(&ctx);
    ctx.svd_oversample = oversample;
    g_svd_oversample = oversample;
    int per_shape[2] = {0, 0};
    for (int k = 0; k < GROUP_MATRICES; k++) { per_shape[group_shape_of[k]]++; }
    for (int s = 0; s < 2; s++) {
        lowrank_gpu_reserve_group(&ctx, group_shapes[s][0], group_shapes[s][1],
                                  group_shapes[s][0] > group_shapes[s][1], group_shapes[s][2], per_shape[s]);
    }
    lowrank_gpu_alloc(&ctx);
    int num_methods = (int)(sizeof(method_cases) / sizeof(method_cases[0]));
    for (int most = 0; most <= 2; most += 2) {
        for (int mi = 0; mi < num_methods; mi++) {
            const MethodCase* mc = &method_cases[mi];
            if (oversample >= 0 && mc->method != cpu::SUBSPACE_GALORE) { continue; }
            cpu::LowRankConfig cfg = make_config(mc, group_shapes[0][2], 2, 1.0f, mi % 2 ? 0.1f : 0.0f);
            // run 0: each matrix alone, run 1: grouped; the same gradients
            LowRankStateGPU states[2][GROUP_MATRICES];
            float* d_memory[2][GROUP_MATRICES];
            float* d_W[2][GROUP_MATRICES];
            float* d_G[GROUP_MATRICES];
            float* host[2][GROUP_MATRICES];
            GradientSource src[GROUP_MATRICES];
            size_t floats[GROUP_MATRICES], mn[GROUP_MATRICES];
            cpu::Rng rng;
            cpu::rng_seed(&rng, 300 + mi);
            for (int k = 0; k < GROUP_MATRICES; k++) {
                const int* sh = group_shapes[group_shape_of[k]];
                mn[k] = (size_t)sh[0] * sh[1];
                floats[k] = cpu::lowrank_state_num_floats(sh[0], sh[1], sh[0] > sh[1], sh[2]);
                float* W0 = (float*)malloc(mn[k] * sizeof(float));
                for (size_t i = 0; i < mn[k]; i++) { W0[i] = 0.1f * cpu::rng_normal(&rng); }
                for (int run = 0; run < 2; run++) {
                    cudaCheck(cudaMalloc((void**)&d_memory[run][k], floats[k] * sizeof(float)));
                    lowrank_state_init(&states[run][k], sh[0], sh[1], sh[0] > sh[1], sh[2], d_memory[run][k]);
                    states[run][k].svd_stream = 10 + (uint64_t)k;
                    d_W[run][k] = device_copy(W0, mn[k]);
                    host[run][k] = (float*)malloc((floats[k] + mn[k]) * sizeof(float));
                }
                d_G[k] = device_copy(W0, mn[k]);
                gradient_source_init(&src[k], sh[0], sh[1], sh[2], 400 + 10 * mi + k);
                free(W0);
            }
            LowRankGroupsGPU g;
            lowrank_groups_build(&g, states[1], GROUP_MATRICES, &ctx, most);
            lowrank_groups_bind(&g, d_W[1], d_G);
            int want_batches = most == 0 ? 2 : (per_shape[0] + 1) / 2 + (per_shape[1] + 1) / 2;
            double worst[2] = {0.0, 0.0};  // state, W
            size_t differ = 0, compared = 0;
            for (int t = 0; t < GROUP_STEPS; t++) {
                for (int k = 0; k < GROUP_MATRICES; k++) {
                    float* G = (float*)malloc(mn[k] * sizeof(float));
                    gradient_at(&src[k], G, t);
                    cudaCheck(cudaMemcpy(d_G[k], G, mn[k] * sizeof(float), cudaMemcpyHostToDevice));
                    free(G);
                    lowrank_adamw_step(&states[0][k], d_W[0][k], d_G[k], t, &cfg, 1e-2f, &ctx);
                }
                lowrank_groups_step(&g, t, &cfg, 1e-2f, &ctx, NULL);
                for (int k = 0; k < GROUP_MATRICES; k++) {
                    for (int run = 0; run < 2; run++) {
                        host_copy(host[run][k], d_memory[run][k], floats[k]);
                        host_copy(host[run][k] + floats[k], d_W[run][k], mn[k]);
                    }
                    double d[2] = {group_diff(host[1][k], host[0][k], floats[k], &differ),
                                   group_diff(host[1][k] + floats[k], host[0][k] + floats[k], mn[k], &differ)};
                    compared += floats[k] + mn[k];
                    for (int i = 0; i < 2; i++) { if (!(d[i] <= worst[i])) { worst[i] = d[i]; } }
                }
            }
#ifdef CUDA_EMU
            int ok = differ == 0;
#else
            int ok = worst[0] <= LR_TOL_MOMENT && worst[1] <= (mc->adaptive ? LR_TOL_W_ADAPTIVE : LR_TOL_W);
#endif
            check(ok && g.num_batches == want_batches,
                  "grouped step %-27s%s batches of %s: 3 of 24x56 and 4 of 56x24 r5 in %d batches (want %d), %d "
                  "steps: states and W against each matrix alone, %zu of %zu floats differ (state %.1e, W %.1e)",
                  mc->name, oversample >= 0 ? " --svd randomized" : "", most ? "<= 2" : "any ", g.num_batches, want_batches, GROUP_STEPS, differ, compared,
                  worst[0], worst[1]);
            lowrank_groups_free(&g);
            for (int k = 0; k < GROUP_MATRICES; k++) {
                for (int run = 0; run < 2; run++) {
                    lowrank_state_free(&states[run][k]);
                    cudaCheck(cudaFree(d_memory[run][k]));
                    cudaCheck(cudaFree(d_W[run][k]));
                    free(host[run][k]);
                }
                cudaCheck(cudaFree(d_G[k]));
                gradient_source_free(&src[k]);
            }
        }
    }
    lowrank_gpu_destroy(&ctx);
    g_svd_oversample = -1;
}

// ---- 3. bit-exact resume: copy the state out after step 3, restore it into a
// fresh state, rerun steps 3.. and compare bit for bit with the uninterrupted run

static void test_resume_bit_exact(LowRankGPU* ctx) {
    int m = 72, n = 200, r = 8, steps = 7, cut = 3;
    for (int orient = 0; orient < 2; orient++) {
        int mm = orient ? n : m, nn = orient ? m : n;
        cpu::LowRankConfig cfg = make_config(&method_cases[6], r, 2, 1.0f, 0.1f);
        size_t mn = (size_t)mm * nn, state_floats = cpu::lowrank_state_num_floats(mm, nn, mm > nn, r);
        float* G = (float*)malloc((size_t)steps * mn * sizeof(float));
        GradientSource src;
        gradient_source_init(&src, mm, nn, r, 99 + orient);
        for (int t = 0; t < steps; t++) { gradient_at(&src, G + t * mn, t); }
        float* W0 = (float*)calloc(mn, sizeof(float));
        float* d_G = device_copy(G, mn);
        float* d_mem[2];
        float* d_W[2];
        LowRankStateGPU s[2];
        float* saved_mem = (float*)malloc(state_floats * sizeof(float));
        float* saved_W = (float*)malloc(mn * sizeof(float));
        float* out_mem[2];
        float* out_W[2];
        for (int run = 0; run < 2; run++) {
            cudaCheck(cudaMalloc((void**)&d_mem[run], state_floats * sizeof(float)));
            lowrank_state_init(&s[run], mm, nn, mm > nn, r, d_mem[run]);
            d_W[run] = device_copy(W0, mn);
            for (int t = 0; t < steps; t++) {
                if (run == 1 && t == cut) {
                    // "checkpoint": save, then load into a brand-new state
                    host_copy(saved_mem, d_mem[1], state_floats);
                    host_copy(saved_W, d_W[1], mn);
                    lowrank_state_free(&s[1]);
                    cudaCheck(cudaFree(d_mem[1]));
                    cudaCheck(cudaFree(d_W[1]));
                    cudaCheck(cudaMalloc((void**)&d_mem[1], state_floats * sizeof(float)));
                    lowrank_state_init(&s[1], mm, nn, mm > nn, r, d_mem[1]);
                    cudaCheck(cudaMemcpy(d_mem[1], saved_mem, state_floats * sizeof(float), cudaMemcpyHostToDevice));
                    d_W[1] = device_copy(saved_W, mn);
                }
                cudaCheck(cudaMemcpy(d_G, G + t * mn, mn * sizeof(float), cudaMemcpyHostToDevice));
                lowrank_adamw_step(&s[run], d_W[run], d_G, t, &cfg, 1e-2f, ctx);
            }
            out_mem[run] = (float*)malloc(state_floats * sizeof(float));
            out_W[run] = (float*)malloc(mn * sizeof(float));
            host_copy(out_mem[run], d_mem[run], state_floats);
            host_copy(out_W[run], d_W[run], mn);
        }
        int same = memcmp(out_mem[0], out_mem[1], state_floats * sizeof(float)) == 0 &&
                   memcmp(out_W[0], out_W[1], mn * sizeof(float)) == 0;
        check(same, "resume after step %d of %d, %dx%d r%d subtrack+both: state and W bit-exact", cut, steps, mm, nn, r);
        for (int run = 0; run < 2; run++) {
            lowrank_state_free(&s[run]);
            cudaCheck(cudaFree(d_mem[run]));
            cudaCheck(cudaFree(d_W[run]));
            free(out_mem[run]);
            free(out_W[run]);
        }
        cudaCheck(cudaFree(d_G));
        gradient_source_free(&src);
        free(G); free(W0); free(saved_mem); free(saved_W);
    }
}

// ---- 4. the power iteration's start: H with e_0 an eigenvector (of 2, the
// largest diagonal) and the top eigenpair 2.9, (0, .., 1, .., 1, ..)/sqrt(2)
// elsewhere; test_subtrack.c's test_power_iteration_start on the CPU has the
// matrices and the reasoning. R = 3 and R = 45 (more than a warp: the kernel's
// rows and sums span warps). H is fp32 here (dF^T dF is): 1.4f = 1.4 - 2.4e-8,
// so the exact top eigenvalue is 1.5 + 1.4f, with the same eigenvector; the
// iteration itself is in double, with the CPU's stopping rule, hence its
// tolerances: the eigenvector to 1e-9, the eigenvalue to 1e-12 relative, and the
// GPU's v against the CPU's (same start, same H) to 1e-9

#define POWER_TOL_VECTOR 1e-9
#define POWER_TOL_VALUE 1e-12
static void test_power_iteration_start(void) {
    const int sizes[2] = {3, 45};
    for (int si = 0; si < 2; si++) {
        int r = sizes[si];
        int i1 = r == 3 ? 1 : 17, i2 = r == 3 ? 2 : 38;
        float* H = (float*)calloc((size_t)r * r, sizeof(float));
        double* Hd = (double*)malloc((size_t)r * r * sizeof(double));
        for (int i = 0; i < r; i++) { H[(size_t)i * r + i] = i == 0 ? 2.0f : 1.0f / (1.0f + i); }
        H[(size_t)i1 * r + i1] = 1.5f;
        H[(size_t)i2 * r + i2] = 1.5f;
        H[(size_t)i1 * r + i2] = 1.4f;
        H[(size_t)i2 * r + i1] = 1.4f;
        for (int i = 0; i < r * r; i++) { Hd[i] = H[i]; }
        float* d_H = device_copy(H, (size_t)r * r);
        double* d_v;
        TrackScalars* d_ts;
        cudaCheck(cudaMalloc((void**)&d_v, (size_t)r * sizeof(double)));
        cudaCheck(cudaMalloc((void**)&d_ts, sizeof(TrackScalars)));
        cudaCheck(cudaMemset(d_ts, 0, sizeof(TrackScalars)));
        power_iteration(d_v, d_ts, d_H, r);
        double* v = (double*)malloc((size_t)r * sizeof(double));
        TrackScalars ts;
        cudaCheck(cudaMemcpy(v, d_v, (size_t)r * sizeof(double), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(&ts, d_ts, sizeof ts, cudaMemcpyDeviceToHost));
        // the CPU's power iteration on the same (fp32) H
        double* v_cpu = (double*)malloc((size_t)r * sizeof(double));
        double* scratch = (double*)malloc((size_t)r * sizeof(double));
        cpu::TrackScalars ts_cpu = {0, 0, 0.0, 0.0, 0.0, 0.0};
        cpu::power_iteration(v_cpu, &ts_cpu, Hd, r, scratch);
        double want_value = 1.5 + (double)1.4f;
        double sign = v[i1] < 0.0 ? -1.0 : 1.0, err = 0.0, value = 0.0, err_cpu = 0.0;
        for (int i = 0; i < r; i++) {
            double want = (i == i1 || i == i2) ? sign / sqrt(2.0) : 0.0;
            err = fmax(err, fabs(v[i] - want));
            err_cpu = fmax(err_cpu, fabs(v[i] - v_cpu[i]));
            double hv = 0.0;
            for (int k = 0; k < r; k++) { hv += Hd[(size_t)i * r + k] * v[k]; }
            value += v[i] * hv;
        }
        double value_err = fabs(value - want_value) / want_value;
        check(!ts.skip && ts.iterations > 0 && err <= POWER_TOL_VECTOR && value_err <= POWER_TOL_VALUE &&
              err_cpu <= POWER_TOL_VECTOR,
              "power iteration on the GPU, R=%d, e_0 an eigenvector of 2 with the largest diagonal: top eigenvalue "
              "%.15g (1.5 + 1.4f, rel err %.1e, tol %.0e), eigenvector err %.1e, against the CPU's v %.1e "
              "(tol %.0e), %d iterations (CPU %d)", r, value, value_err, POWER_TOL_VALUE, err, err_cpu,
              POWER_TOL_VECTOR, ts.iterations, ts_cpu.iterations);
        cudaCheck(cudaFree(d_H));
        cudaCheck(cudaFree(d_v));
        cudaCheck(cudaFree(d_ts));
        free(H); free(Hd); free(v); free(v_cpu); free(scratch);
    }
}

// ---- 4b. cusolverDnDsyevdx's selection, as the SVD uses it, against the whole
// decomposition of cusolverDnDsyevd: a symmetric K (p, p) with eigenvalues
// 1..p (K = Q diag Q^T, Q orthonormal), so every gap is 1 and each eigenvector
// is defined to ~1e-15 in double. range I (the top R) and range V (those above
// p - R + 0.5) must both find R pairs: the eigenvalues to 1e-12 of p, and the
// eigenvectors (blind to sign) to 1e-10, against syevd's columns p-R..p-1
static void test_syevdx_selection(void) {
    const int p = 12, r = 4;
    double* Q = (double*)malloc((size_t)p * p * sizeof(double));
    cpu::Rng rng;
    cpu::rng_seed(&rng, 77);
    for (int i = 0; i < p * p; i++) { Q[i] = cpu::rng_normal(&rng); }
    orthonormalize(Q, p, p);  // columns of the row-major (p, p) Q
    double* K = (double*)malloc((size_t)p * p * sizeof(double));
    for (int i = 0; i < p; i++) {
        for (int j = 0; j < p; j++) {
            double x = 0.0;
            for (int e = 0; e < p; e++) { x += Q[i * p + e] * (e + 1.0) * Q[j * p + e]; }
            K[i * p + j] = x;  // symmetric: row- and column-major alike
        }
    }
    cusolverDnHandle_t solver;
    cusolverCheck(cusolverDnCreate(&solver));
    int lwork = 0, lwork_x = 0, meig = 0;
    cusolverCheck(cusolverDnDsyevd_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, p, NULL, p,
                                              NULL, &lwork));
    cusolverCheck(cusolverDnDsyevdx_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I,
                                               CUBLAS_FILL_MODE_LOWER, p, NULL, p, 0.0, 0.0, p - r + 1, p, &meig, NULL,
                                               &lwork_x));
    if (lwork_x > lwork) { lwork = lwork_x; }
    double *dK, *dA, *dW, *dwork;
    int* dinfo;
    cudaCheck(cudaMalloc((void**)&dK, (size_t)p * p * sizeof(double)));
    cudaCheck(cudaMalloc((void**)&dA, (size_t)p * p * sizeof(double)));
    cudaCheck(cudaMalloc((void**)&dW, (size_t)p * sizeof(double)));
    cudaCheck(cudaMalloc((void**)&dwork, (size_t)lwork * sizeof(double)));
    cudaCheck(cudaMalloc((void**)&dinfo, sizeof(int)));
    cudaCheck(cudaMemcpy(dK, K, (size_t)p * p * sizeof(double), cudaMemcpyHostToDevice));
    double* full = (double*)malloc((size_t)p * p * sizeof(double));
    double* sel = (double*)malloc((size_t)p * p * sizeof(double));
    double W[64], Wsel[64];
    int info = -1;
    cudaCheck(cudaMemcpy(dA, dK, (size_t)p * p * sizeof(double), cudaMemcpyDeviceToDevice));
    cusolverCheck(cusolverDnDsyevd(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, p, dA, p, dW, dwork,
                                   lwork, dinfo));
    cudaCheck(cudaMemcpy(&info, dinfo, sizeof(int), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(full, dA, (size_t)p * p * sizeof(double), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(W, dW, (size_t)p * sizeof(double), cudaMemcpyDeviceToHost));
    for (int range = 0; range < 2; range++) {
        cusolverEigRange_t rg = range == 0 ? CUSOLVER_EIG_RANGE_I : CUSOLVER_EIG_RANGE_V;
        double vl = p - r + 0.5, vu = p + 0.5;
        int found = -1, info_x = -1;
        cudaCheck(cudaMemcpy(dA, dK, (size_t)p * p * sizeof(double), cudaMemcpyDeviceToDevice));
        cusolverCheck(cusolverDnDsyevdx(solver, CUSOLVER_EIG_MODE_VECTOR, rg, CUBLAS_FILL_MODE_LOWER, p, dA, p, vl,
                                        vu, p - r + 1, p, &found, dW, dwork, lwork, dinfo));
        cudaCheck(cudaMemcpy(&info_x, dinfo, sizeof(int), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(sel, dA, (size_t)p * p * sizeof(double), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(Wsel, dW, (size_t)p * sizeof(double), cudaMemcpyDeviceToHost));
        double ev = 0.0, vec = 0.0;
        for (int k = 0; k < r && found == r; k++) {
            ev = fmax(ev, fabs(Wsel[k] - (p - r + 1 + k)) / p);
            ev = fmax(ev, fabs(W[p - r + k] - (p - r + 1 + k)) / p);
            double dot = 0.0;
            for (int i = 0; i < p; i++) { dot += sel[(size_t)k * p + i] * full[(size_t)(p - r + k) * p + i]; }
            double d = 1.0 - fabs(dot);  // both unit vectors: |dot| = 1 when they agree up to sign
            if (!(d <= vec)) { vec = d; }
        }
        check(info == 0 && info_x == 0 && found == r && ev <= 1e-12 && vec <= 1e-10,
              "cusolverDnDsyevdx range %s on a %dx%d matrix finds the top %d pairs (found %d, devInfo %d/%d): "
              "eigenvalues %.1e of p, eigenvectors 1 - |dot| %.1e against syevd's", range == 0 ? "I" : "V", p, p, r,
              found, info, info_x, ev, vec);
    }
    cusolverCheck(cusolverDnDestroy(solver));
    cudaCheck(cudaFree(dK)); cudaCheck(cudaFree(dA)); cudaCheck(cudaFree(dW)); cudaCheck(cudaFree(dwork));
    cudaCheck(cudaFree(dinfo));
    free(Q); free(K); free(full); free(sel);
}

// ---- 5. a failed cuSOLVER factorization stops the run: a gradient with a NaN
// makes syevd fail (devInfo > 0, or an error status), and the step must then
// exit non-zero with a message naming the call and the shapes (and, grouped,
// the matrix), not hand on an S of garbage. the step runs in a child process
// (this program, re-run with --svd-failure-child; started with exec, so no
// CUDA context crosses a fork): the first step of one matrix alone
// (lowrank_adamw_step), or of SVD_FAILURE_MATRICES grouped with the NaN in
// matrix SVD_FAILURE_BAD, whose devInfo is read back with the others' after
// all of them; and the same grouped step with --svd randomized, whose batched
// eigensolver (cusolverDnXsyevBatched) then fails on that matrix (the shift's
// trace is NaN, so every iterate is), with l = p = 9 (the Rayleigh-Ritz
// problem is the Gram matrix itself)

#define SVD_FAILURE_CHILD_FLAG "--svd-failure-child"
#define SVD_FAILURE_M 9
#define SVD_FAILURE_N 23
#define SVD_FAILURE_R 3
#define SVD_FAILURE_MATRICES 3
#define SVD_FAILURE_BAD 1

// in the child: returns 0 only if the step came back. mode 0: one matrix, 1:
// grouped, 2: grouped with --svd randomized
static int svd_failure_child(int mode) {
    int grouped = mode >= 1;
    int m = SVD_FAILURE_M, n = SVD_FAILURE_N, r = SVD_FAILURE_R, count = grouped ? SVD_FAILURE_MATRICES : 1;
    int bad = grouped ? SVD_FAILURE_BAD : 0;
    size_t mn = (size_t)m * n, state_floats = cpu::lowrank_state_num_floats(m, n, m > n, r);
    LowRankGPU ctx;
    lowrank_gpu_create(&ctx);
    if (mode == 2) {
        ctx.svd_oversample = SVD_OVERSAMPLE_DEFAULT;
        g_svd_oversample = SVD_OVERSAMPLE_DEFAULT;
    }
    lowrank_gpu_reserve_group(&ctx, m, n, m > n, r, count);
    lowrank_gpu_alloc(&ctx);
    float* G = (float*)malloc(mn * sizeof(float));
    cpu::Rng rng;
    cpu::rng_seed(&rng, 3);
    LowRankStateGPU states[SVD_FAILURE_MATRICES];
    float* d_W[SVD_FAILURE_MATRICES];
    float* d_G[SVD_FAILURE_MATRICES];
    float* d_memory;
    cudaCheck(cudaMalloc((void**)&d_memory, count * state_floats * sizeof(float)));
    for (int k = 0; k < count; k++) {
        for (size_t i = 0; i < mn; i++) { G[i] = cpu::rng_normal(&rng); }
        if (k == bad) { G[5 * n + 7] = NAN; }
        d_G[k] = device_copy(G, mn);
        d_W[k] = device_copy(G, mn);
        lowrank_state_init(&states[k], m, n, m > n, r, d_memory + k * state_floats);
        states[k].svd_stream = (uint64_t)k;
    }
    cpu::LowRankConfig cfg = make_config(&method_cases[6], r, 2, 1.0f, 0.0f);
    if (grouped) {
        LowRankGroupsGPU g;
        lowrank_groups_build(&g, states, count, &ctx, 0);
        lowrank_groups_bind(&g, d_W, d_G);
        lowrank_groups_step(&g, 0, &cfg, 1e-2f, &ctx, NULL);
        lowrank_groups_free(&g);
    } else {
        lowrank_adamw_step(&states[0], d_W[0], d_G[0], 0, &cfg, 1e-2f, &ctx);
    }
    cudaCheck(cudaDeviceSynchronize());
    printf("the step of a gradient with a NaN returned\n");
    fflush(stdout);
    for (int k = 0; k < count; k++) {
        lowrank_state_free(&states[k]);
        cudaCheck(cudaFree(d_G[k]));
        cudaCheck(cudaFree(d_W[k]));
    }
    cudaCheck(cudaFree(d_memory));
    lowrank_gpu_destroy(&ctx);
    free(G);
    return 0;
}

static void test_svd_failure_stops(void) {
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        check(0, "cuSOLVER failure: cannot find this program (/proc/self/exe) to run the child");
        return;
    }
    self[len] = '\0';
    for (int mode = 0; mode < 3; mode++) {
        int grouped = mode >= 1;
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "'%s' %s %d 2>&1", self, SVD_FAILURE_CHILD_FLAG, mode);
        FILE* pipe = popen(cmd, "r");
        char out[4096] = "";
        size_t got = pipe != NULL ? fread(out, 1, sizeof out - 1, pipe) : 0;
        out[got] = '\0';
        int status = pipe != NULL ? pclose(pipe) : -1;
        int code = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        char shapes[128], which[64];
        snprintf(shapes, sizeof shapes, "%d x %d Gram matrix of a %d x %d gradient", SVD_FAILURE_M, SVD_FAILURE_M,
                 SVD_FAILURE_M, SVD_FAILURE_N);
        snprintf(which, sizeof which, grouped ? "(low-rank matrix %d; the SVD" : "(the SVD", SVD_FAILURE_BAD);
        const char* line = strstr(out, mode == 2 ? "error: cusolverDnXsyevBatched failed"
                                                 : "error: cusolverDnDsyevdx failed");
        char first[256] = "(no error line)";
        if (line != NULL) { snprintf(first, sizeof first, "%.*s", (int)strcspn(line, "\n"), line); }
        check(code == EXIT_FAILURE && line != NULL && strstr(line, shapes) != NULL && strstr(line, which) != NULL &&
              strstr(out, "returned") == NULL,
              "%s whose eigensolver fails (a NaN in a %dx%d gradient) exits %d (want %d) with: %s",
              mode == 2 ? "a grouped --svd randomized first step of 3 matrices, the second"
              : grouped ? "a grouped first step of 3 matrices, the second" : "the first step of a matrix",
              SVD_FAILURE_M, SVD_FAILURE_N, code, EXIT_FAILURE, first);
    }
}

// reserves scratch for one more shape, reallocating if it grew
static void lowrank_gpu_grow(LowRankGPU* ctx, int m, int n, int right, int r) {
    size_t floats = ctx->scratch_floats;
    int lwork = ctx->eig_lwork;
    lowrank_gpu_reserve(ctx, m, n, right, r);
    if (ctx->scratch_floats == floats && ctx->eig_lwork == lwork) { return; }
    cudaCheck(cudaFree(ctx->scratch));
    cudaCheck(cudaFree(ctx->eig_work));
    cudaCheck(cudaFree(ctx->eig_info));
    lowrank_gpu_alloc(ctx);
}

// ---- 6. the PyTorch reference trajectories (dev/reference/README.md,
// "SubTrack trajectories"; the same format test_subtrack.c reads), replayed on
// the GPU with the tolerances test_subtrack.c uses for the CPU

#define TRAJ_MAGIC 20261102
#define TRAJ_VERSION 1
#define TRAJ_FILE_HEADER_INTS 8
#define TRAJ_CASE_HEADER_INTS 32
#define TRAJ_CASE_NAME_BYTES 32
#define TRAJ_TOL_PROJECTOR 2e-5
#define TRAJ_TOL_MOMENT 4e-5
#define TRAJ_TOL_UPDATE 4e-5
#define TRAJ_TOL_LIMITER 4e-5

static float bits_to_float(int32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void test_trajectories(const char* path, LowRankGPU* ctx) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        check(0, "trajectories: cannot open %s (run from the repository root)", path);
        return;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* data = (char*)malloc((size_t)size);
    size_t got = fread(data, 1, (size_t)size, f);
    fclose(f);
    const int32_t* header = (const int32_t*)data;
    if (got != (size_t)size || size < (long)(TRAJ_FILE_HEADER_INTS * 4) || header[0] != TRAJ_MAGIC ||
        header[1] != TRAJ_VERSION) {
        check(0, "trajectories: %s is not a version %d trajectory file", path, TRAJ_VERSION);
        free(data);
        return;
    }
    int num_cases = header[2];
    size_t offset = TRAJ_FILE_HEADER_INTS * 4;
    double worst[5] = {0, 0, 0, 0, 0};
    int cases_run = 0;
    for (int ci = 0; ci < num_cases; ci++) {
        size_t case_header = TRAJ_CASE_HEADER_INTS * 4 + TRAJ_CASE_NAME_BYTES;
        if (offset + case_header > (size_t)size) { check(0, "trajectories: %s is truncated", path); break; }
        const int32_t* h = (const int32_t*)(data + offset);
        int m = h[0], n = h[1], r = h[2], steps = h[3];
        cpu::LowRankConfig cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.rank = r;
        cfg.method = h[4] == 1 ? cpu::SUBSPACE_SUBTRACK : cpu::SUBSPACE_GALORE;
        cfg.adaptive_optimizer = h[5];
        cfg.recovery_scaling = h[6];
        cfg.norm_growth_limiter = h[7];
        cfg.update_interval = h[8];
        cfg.low_rank_scale = bits_to_float(h[9]);
        cfg.st_init_step_size = bits_to_float(h[10]);
        float lr = bits_to_float(h[11]);
        cfg.weight_decay = bits_to_float(h[12]);
        cfg.beta1 = bits_to_float(h[13]);
        cfg.beta2 = bits_to_float(h[14]);
        cfg.eps = bits_to_float(h[15]);
        cfg.norm_growth_limit = bits_to_float(h[16]);
        cfg.st_step_size_iterative = h[17];  // --st_step_size_scheduler iterative_decrease (0: constant)
        cfg.proj_type = (cpu::ProjType)(h[18] >= 0 && h[18] <= 3 ? h[18] : 0);   // --proj_type (checked below)
        int right = cpu::lowrank_right(m, n, cfg.proj_type);
        cfg.golore = h[19];                  // --rand_proj: GoLore's random subspaces ...
        cfg.golore_from_step = h[20];        // ... from this step on
        cfg.svd_seed = (uint32_t)h[21];      // their draws' seed (each case's matrix is stream 0)
        char name[TRAJ_CASE_NAME_BYTES];
        memcpy(name, (const char*)h + TRAJ_CASE_HEADER_INTS * 4, TRAJ_CASE_NAME_BYTES);
        name[TRAJ_CASE_NAME_BYTES - 1] = '\0';
        offset += case_header;
        size_t mn = (size_t)m * n, p = right ? n : m, q = right ? m : n;
        size_t record = 2 * mn + p * r + 2 * q * r + 1;
        size_t body = (mn + (size_t)steps * record) * sizeof(float);
        if (m < 1 || n < 1 || r < 1 || r > (m <= n ? m : n) || steps < 1 || h[18] < 0 || h[18] > 3 || h[19] < 0 ||
            h[19] > 1 || h[20] < 0 || offset + body > (size_t)size) {
            check(0, "trajectories: %s, case %d has a bad header or is truncated", path, ci);
            break;
        }
        const float* W0 = (const float*)(data + offset);
        const float* records = W0 + mn;
        offset += body;
        lowrank_gpu_grow(ctx, m, n, right, r);
        size_t state_floats = cpu::lowrank_state_num_floats(m, n, right, r);
        LowRankStateGPU gs;
        float* d_memory;
        cudaCheck(cudaMalloc((void**)&d_memory, state_floats * sizeof(float)));
        lowrank_state_init(&gs, m, n, right, r, d_memory);
        float* d_W = device_copy(W0, mn);
        float* d_G = device_copy(W0, mn);
        float* memory = (float*)malloc(state_floats * sizeof(float));
        float* W = (float*)malloc(mn * sizeof(float));
        double err[5] = {0, 0, 0, 0, 0};
        for (int t = 0; t < steps; t++) {
            const float* rec = records + (size_t)t * record;
            const float *G = rec, *S_ref = G + mn, *M_ref = S_ref + p * r, *V_ref = M_ref + q * r;
            const float* W_ref = V_ref + q * r;
            float prev_ref = W_ref[mn];
            cudaCheck(cudaMemcpy(d_G, G, mn * sizeof(float), cudaMemcpyHostToDevice));
            lowrank_adamw_step(&gs, d_W, d_G, t, &cfg, lr, ctx);
            host_copy(memory, d_memory, state_floats);
            host_copy(W, d_W, mn);
            double update = 0.0, dw = 0.0;
            for (size_t i = 0; i < mn; i++) {
                update = fmax(update, fabs((double)W_ref[i] - W0[i]));
                double d = fabs((double)W[i] - W_ref[i]);
                if (!(d <= dw)) { dw = d; }
            }
            double e[5];
            e[0] = projector_diff(memory, S_ref, (int)p, r);
            e[1] = rel_diff(memory + p * r, M_ref, q * r);
            e[2] = rel_diff(memory + p * r + q * r, V_ref, q * r);
            e[3] = dw / fmax(update, 1e-30);
            float prev = (cfg.recovery_scaling && cfg.norm_growth_limiter) ? memory[p * r + 2 * q * r] : 0.0f;
            e[4] = prev_ref == 0.0f ? fabs((double)prev) : fabs((double)prev - prev_ref) / fabs((double)prev_ref);
            for (int i = 0; i < 5; i++) { if (!(e[i] <= err[i])) { err[i] = e[i]; } }
        }
        const double tol[5] = {TRAJ_TOL_PROJECTOR, TRAJ_TOL_MOMENT, TRAJ_TOL_MOMENT, TRAJ_TOL_UPDATE, TRAJ_TOL_LIMITER};
        int ok = 1;
        for (int i = 0; i < 5; i++) {
            ok = ok && err[i] <= tol[i];
            if (!(err[i] <= worst[i])) { worst[i] = err[i]; }
        }
        check(ok, "trajectory %-30s %dx%d r%d k%d on the GPU: S S^T %.1e M %.1e V %.1e W %.1e prev %.1e",
              name, m, n, r, cfg.update_interval, err[0], err[1], err[2], err[3], err[4]);
        cases_run++;
        lowrank_state_free(&gs);
        cudaCheck(cudaFree(d_memory));
        cudaCheck(cudaFree(d_W));
        cudaCheck(cudaFree(d_G));
        free(memory);
        free(W);
    }
    printf("trajectories on the GPU: %d cases, worst: S S^T %.1e, M %.1e, V %.1e, W %.1e, prev %.1e\n",
           cases_run, worst[0], worst[1], worst[2], worst[3], worst[4]);
    free(data);
}

// --master_weights 0's rounding: the GPU kernels call the CPU's own integer
// functions, so every value, edge cases included, must round to the same
// bits as cpu::bf16_round_stochastic_array, in place (fp32) and stored as
// bf16, at an offset in the parameter buffer; and bf16 widens exactly
static void test_stochastic_rounding(void) {
    const size_t n = 70001;  // not a multiple of any block size
    const uint64_t seed = 7, step = 12, offset = 1000003;
    float* x = (float*)cpu::malloc_check(n * sizeof(float), "x");
    cpu::Rng rng;
    cpu::rng_seed(&rng, 99);
    const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 1e-40f, -1e-40f, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY,
                              NAN, 3.3895e38f, 1.17549435e-38f, 0.1f, -0.1f};
    for (size_t i = 0; i < n; i++) {
        x[i] = i < sizeof specials / sizeof specials[0] ? specials[i]
             : (float)((cpu::rng_uniform(&rng) - 0.5) * pow(2.0, (double)(i % 60) - 30.0));
    }
    float* want = (float*)cpu::malloc_check(n * sizeof(float), "want");
    memcpy(want, x, n * sizeof(float));
    cpu::bf16_round_stochastic_array(want, n, seed, step, offset);
    float* d = device_copy(x, n);
    bf16_round_stochastic_array(d, n, seed, step, offset);
    float* got = (float*)cpu::malloc_check(n * sizeof(float), "got");
    host_copy(got, d, n);
    check(memcmp(got, want, n * sizeof(float)) == 0, "stochastic rounding in place: %zu values (edge cases "
          "included) round to the CPU's bits", n);
    float* dx = device_copy(x, n);
    bf16* b16 = NULL;
    cudaCheck(cudaMalloc((void**)&b16, n * sizeof(bf16)));
    bf16_store_stochastic_array(b16, dx, n, seed, step, offset);
    bf16_widen_array(d, b16, n);
    host_copy(got, d, n);
    check(memcmp(got, want, n * sizeof(float)) == 0, "stochastic rounding stored as bf16, widened back: the CPU's "
          "bits for all %zu values", n);
    // a different step draws different bits: most values not already bf16 round differently somewhere
    bf16_round_stochastic_array(dx, n, seed, step + 1, offset);
    host_copy(got, dx, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) { differ += memcmp(&got[i], &want[i], sizeof(float)) != 0; }
    // a value rounds differently under two independent draws with probability
    // 2 p (1 - p), p its fractional position: 1/3 on average; 20% is far below
    // that mean (n = 70001) and far above 0
    check(differ > n / 5, "the next step's bits differ: %zu of %zu values round differently", differ, n);
    cudaCheck(cudaFree(b16));
    cudaCheck(cudaFree(d));
    cudaCheck(cudaFree(dx));
    free(x); free(want); free(got);
}

// 8-bit states: the GPU's blockwise quantization must give the CPU's codes
// and scales bit for bit (the CPU's is checked against bitsandbytes in
// test_subtrack.c), both maps, a tail block, an all-zero block, a block with
// a subnormal absmax, values over many decades; and dequantization the CPU's
// floats. no tolerance: the same operations on the same floats
static void test_quantize_blockwise(void) {
    const size_t n = 5 * QUANT8_BLOCK + 777;
    float* x = (float*)cpu::malloc_check(n * sizeof(float), "x");
    cpu::Rng rng;
    cpu::rng_seed(&rng, 5);
    for (size_t i = 0; i < n; i++) {
        double mag = pow(10.0, -8.0 * cpu::rng_uniform(&rng));
        x[i] = (float)((cpu::rng_uniform(&rng) - 0.5) * mag);
    }
    // each block's largest value at another thread's element (block b: thread 255 - 50 b), so that
    // every warp of the reduction must take part
    for (size_t b = 0; b * QUANT8_BLOCK < n; b++) { x[b * QUANT8_BLOCK + 255 - 50 * b] = (b % 2 ? -0.75f : 0.75f); }
    for (size_t i = QUANT8_BLOCK; i < 2 * QUANT8_BLOCK; i++) { x[i] = 0.0f; }            // all zero
    for (size_t i = 2 * QUANT8_BLOCK; i < 3 * QUANT8_BLOCK; i++) { x[i] *= 1e-39f; }      // subnormal absmax
    size_t nb = cpu::quant8_num_blocks(n);
    uint8_t* dcodes = NULL;
    float* dabs = NULL;
    float* dmap = NULL;
    cudaCheck(cudaMalloc((void**)&dcodes, n));
    cudaCheck(cudaMalloc((void**)&dabs, nb * sizeof(float)));
    cudaCheck(cudaMalloc((void**)&dmap, QUANT8_MAP_SIZE * sizeof(float)));
    float* dx = device_copy(x, n);
    uint8_t* codes = (uint8_t*)cpu::malloc_check(n, "codes");
    uint8_t* gcodes = (uint8_t*)cpu::malloc_check(n, "gpu codes");
    float* absmax = (float*)cpu::malloc_check(nb * sizeof(float), "absmax");
    float* gabs = (float*)cpu::malloc_check(nb * sizeof(float), "gpu absmax");
    float* y = (float*)cpu::malloc_check(n * sizeof(float), "y");
    float* gy = (float*)cpu::malloc_check(n * sizeof(float), "gpu y");
    for (int is_signed = 1; is_signed >= 0; is_signed--) {
        float map[QUANT8_MAP_SIZE];
        cpu::quant8_dynamic_map(map, is_signed);
        float* xs = x;
        float* xu = NULL;
        if (!is_signed) {  // the second moment is never negative
            xu = (float*)cpu::malloc_check(n * sizeof(float), "|x|");
            for (size_t i = 0; i < n; i++) { xu[i] = fabsf(x[i]); }
            xs = xu;
            cudaCheck(cudaMemcpy(dx, xs, n * sizeof(float), cudaMemcpyHostToDevice));
        }
        cudaCheck(cudaMemcpy(dmap, map, sizeof map, cudaMemcpyHostToDevice));
        cpu::quantize_blockwise(codes, absmax, xs, n, map);
        quantize_blockwise(dcodes, dabs, dx, n, dmap);
        cudaCheck(cudaMemcpy(gcodes, dcodes, n, cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(gabs, dabs, nb * sizeof(float), cudaMemcpyDeviceToHost));
        size_t differ = 0;
        for (size_t i = 0; i < n; i++) { differ += codes[i] != gcodes[i]; }
        check(differ == 0 && memcmp(absmax, gabs, nb * sizeof(float)) == 0,
              "8-bit quantization (%s map), %zu values in %zu blocks: codes (%zu differ) and scales equal the CPU's",
              is_signed ? "signed" : "unsigned", n, nb, differ);
        cpu::dequantize_blockwise(y, codes, absmax, n, map);
        dequantize_blockwise(dx, dcodes, dabs, n, dmap);
        host_copy(gy, dx, n);
        check(memcmp(y, gy, n * sizeof(float)) == 0, "8-bit dequantization (%s map): the CPU's floats, all %zu",
              is_signed ? "signed" : "unsigned", n);
        cudaCheck(cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice));
        free(xu);
    }
    cudaCheck(cudaFree(dcodes));
    cudaCheck(cudaFree(dabs));
    cudaCheck(cudaFree(dmap));
    cudaCheck(cudaFree(dx));
    free(x); free(codes); free(gcodes); free(absmax); free(gabs); free(y); free(gy);
}

// --optimizer adam8bit: the GPU's adam8bit_update_q8 against the CPU's, 4 steps on
// one weight of 4 chunks and a short last block (4 x 65536 + 300 values, whose
// first block keeps a zero gradient), with decay, and adam8bit_update on fp32
// moments. no tolerance: the same operations on the same floats, codes, scales
// and weights bit for bit
static void test_adam8bit(void) {
    const size_t n = 4 * ADAM8BIT_CHUNK + 300, nb = cpu::adam8bit_blocks(n);
    float maps[2][QUANT8_MAP_SIZE];
    cpu::quant8_dynamic_map(maps[0], 1);
    cpu::quant8_dynamic_map(maps[1], 0);
    float* W = (float*)cpu::malloc_check(n * sizeof(float), "W");
    float* G = (float*)cpu::malloc_check(n * sizeof(float), "G");
    uint8_t* codes = (uint8_t*)cpu::calloc_check(2 * n, "codes");
    float* absmax = (float*)cpu::calloc_check(2 * nb * sizeof(float), "absmax");
    float* M = (float*)cpu::calloc_check(n * sizeof(float), "M");
    float* V = (float*)cpu::calloc_check(n * sizeof(float), "V");
    float* scratch = (float*)cpu::malloc_check(2 * ADAM8BIT_CHUNK * sizeof(float), "scratch");
    cpu::Rng rng;
    cpu::rng_seed(&rng, 8);
    for (size_t i = 0; i < n; i++) { W[i] = (float)(cpu::rng_uniform(&rng) - 0.5); }
    float* dW = device_copy(W, n);
    float* dW32 = device_copy(W, n);
    float* W32 = (float*)cpu::malloc_check(n * sizeof(float), "W32");
    memcpy(W32, W, n * sizeof(float));
    float* dM = device_copy(M, n);
    float* dV = device_copy(V, n);
    float* dG = device_copy(G, n);
    float* dmaps = device_copy(&maps[0][0], 2 * QUANT8_MAP_SIZE);
    float* dscratch = device_copy(scratch, 2 * ADAM8BIT_CHUNK);
    uint8_t* dcodes = NULL;
    float* dabs = device_copy(absmax, 2 * nb);
    cudaCheck(cudaMalloc((void**)&dcodes, 2 * n));
    cudaCheck(cudaMemset(dcodes, 0, 2 * n));
    int same = 1;
    for (int t = 0; t < 4; t++) {
        for (size_t i = 0; i < n; i++) {
            double scale = pow(10.0, -3.0 * (i % 7) / 6.0);   // over three decades
            G[i] = i < ADAM8BIT_BLOCK ? 0.0f : (float)((cpu::rng_uniform(&rng) - 0.5) * scale);
        }
        cudaCheck(cudaMemcpy(dG, G, n * sizeof(float), cudaMemcpyHostToDevice));
        cpu::adam8bit_update_q8(W, codes, absmax, codes + n, absmax + nb, G, n, t, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f,
                                (const float (*)[QUANT8_MAP_SIZE])maps, scratch, ADAM8BIT_CHUNK);
        adam8bit_update_q8(dW, dcodes, dabs, dcodes + n, dabs + nb, dG, n, t, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f,
                           dmaps, dscratch, ADAM8BIT_CHUNK);
        cpu::adam8bit_update(W32, M, V, G, n, t, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f);
        adam8bit_update(dW32, dM, dV, dG, n, t, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f);
        float* gW = (float*)cpu::malloc_check(n * sizeof(float), "gpu W");
        uint8_t* gcodes = (uint8_t*)cpu::malloc_check(2 * n, "gpu codes");
        float* gabs = (float*)cpu::malloc_check(2 * nb * sizeof(float), "gpu absmax");
        host_copy(gW, dW, n);
        cudaCheck(cudaMemcpy(gcodes, dcodes, 2 * n, cudaMemcpyDeviceToHost));
        host_copy(gabs, dabs, 2 * nb);
        same &= memcmp(gW, W, n * sizeof(float)) == 0 && memcmp(gcodes, codes, 2 * n) == 0 &&
                memcmp(gabs, absmax, 2 * nb * sizeof(float)) == 0;
        host_copy(gW, dW32, n);
        same &= memcmp(gW, W32, n * sizeof(float)) == 0;
        host_copy(gW, dM, n);
        same &= memcmp(gW, M, n * sizeof(float)) == 0;
        free(gW); free(gcodes); free(gabs);
    }
    check(same && absmax[0] == 0.0f && absmax[nb - 1] > 0.0f,
          "adam8bit_update_q8 and adam8bit_update: 4 steps of %zu values (4 chunks, a short last block, a zero "
          "block), the CPU's weights, codes, scales and fp32 moments bit for bit", n);
    cudaCheck(cudaFree(dW)); cudaCheck(cudaFree(dW32)); cudaCheck(cudaFree(dM)); cudaCheck(cudaFree(dV));
    cudaCheck(cudaFree(dG)); cudaCheck(cudaFree(dmaps)); cudaCheck(cudaFree(dscratch)); cudaCheck(cudaFree(dcodes));
    cudaCheck(cudaFree(dabs));
    free(W); free(G); free(codes); free(absmax); free(M); free(V); free(scratch); free(W32);
}

// ---- 4c. --svd randomized: the GPU's svd_randomized_top_left_singular_vectors,
// a batch of RSVD_TWIN_MATRICES matrices of one shape at once (each with its
// own Omega stream), against the CPU's, matrix by matrix, on G = sum_j (10 - j)
// a_j b_j^T + 0.01 noise (a, b Gaussian; R terms, so the top-R subspace is
// well separated), both orientations, l < p and l = p:
//  - the same Omega: svd_sketch_kernel's draws against cpu::svd_sketch_normal,
//    bit for bit under the harness (one libm); on a GPU its double log, cos and
//    sqrt may differ from glibc's in the last place, which survives the
//    rounding to fp32 at most as one fp32 ulp: held to 2^-22 relative;
//  - the same S, column by column (canonical sign) and as a projector, to
//    RSVD_TWIN_TOL: both compute in double from the same fp32 G (the same
//    in-order Gram sums) and differ only in the order of DGEMM sums and in
//    the eigensolvers (Jacobi here, tridiagonal + inverse iteration on the
//    CPU), ~1e-15 relative on bases orthonormal to ~1e-15, i.e. ~1e-15 / gap
//    on the Ritz vectors, gap (s_R^2 - s_(R+1)^2) / s_1^2 >= 1e-2 here; then
//    each side rounds to fp32 once: an entry may round the other way, 2^-24
//    of |S| <= 1. so 2^-23 (two fp32 half-ulps) + 1e-12;
//  - devInfo 0 for every matrix, the status a success;
//  - whole steps (galore, SVDs at t = 0, 2, 4) through lowrank_adamw_step on a
//    context reserved for it, to the tolerances of test_lowrank_all (4a);
//  - the grouped step, in chunks, against each matrix alone (test_lowrank_groups).
#define RSVD_TWIN_MATRICES 3

// a batch's bases S_gpu (nb, p R), read back from c->w.S, against the CPU's S_cpu: the largest
// entry difference; *ok_solver cleared unless every matrix's status is a success, its devInfo
// 0 and its eigenpairs all found
static double batch_against_cpu(float* S_gpu, const float* S_cpu, const RsvdBatchGPU* c, int nb, size_t pr,
                                int* ok_solver) {
    int info[RSVD_TWIN_MATRICES];
    cudaCheck(cudaMemcpy(info, c->info, nb * sizeof(int), cudaMemcpyDeviceToHost));
    host_copy(S_gpu, c->w.S, nb * pr);
    double col = 0.0;
    for (int k = 0; k < nb; k++) {
        for (size_t i = 0; i < pr; i++) { col = fmax(col, fabs((double)S_gpu[k * pr + i] - S_cpu[k * pr + i])); }
        *ok_solver &= c->outcome[k].status == CUSOLVER_STATUS_SUCCESS && info[k] == 0 && c->outcome[k].found == c->r;
    }
    return col;
}
#define RSVD_TWIN_TOL (1.1920928955078125e-07 + 1e-12)
// S^T S = I of an fp32 S whose double form is orthonormal: each entry rounds by at most 2^-24 of itself, so
// an entry of S^T S moves by at most 2^-23 sum_i |s_ia s_ib| <= 2^-23 (Cauchy-Schwarz, unit columns); the
// double polar factor's own error is ~1e-15. so 2^-22, twice the bound
#define RSVD_TOL_ORTH_GOLORE 2.384185791015625e-07
static void test_svd_randomized_twin(void) {
    // (m, n, R, right): the side std projects, and the larger side (--proj_type reverse_std, left, right)
    const int shapes[][4] = {{72, 200, 8, 0}, {200, 72, 8, 1}, {23, 9, 3, 1}, {16, 16, 5, 0}, {72, 200, 8, 1},
                             {23, 9, 3, 0}};
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]), o = SVD_OVERSAMPLE_DEFAULT, nb = RSVD_TWIN_MATRICES;
    LowRankGPU ctx;
    lowrank_gpu_create(&ctx);
    ctx.svd_oversample = o;
    for (int si = 0; si < nshapes; si++) {
        lowrank_gpu_reserve_group(&ctx, shapes[si][0], shapes[si][1], shapes[si][3], shapes[si][2], nb);
    }
    lowrank_gpu_alloc(&ctx);
    for (int si = 0; si < nshapes; si++) {
        int m = shapes[si][0], n = shapes[si][1], r = shapes[si][2], right = shapes[si][3];
        int p = right ? n : m, l = cpu::svd_sketch_cols(m, n, right, r, o);
        size_t mn = (size_t)m * n, pr = (size_t)p * r;
        cpu::SvdSketch sk = {o, SVD_POWER_ITERS_DEFAULT, 4242, 6, 0};
        uint64_t streams[RSVD_TWIN_MATRICES];
        float* d_G[RSVD_TWIN_MATRICES];
        float* S_cpu = (float*)malloc(nb * pr * sizeof(float));
        float* S_gpu = (float*)malloc(nb * pr * sizeof(float));
        float* G = (float*)malloc(mn * sizeof(float));
        float* a = (float*)malloc((size_t)m * sizeof(float));
        float* b = (float*)malloc((size_t)n * sizeof(float));
        float* scratch = (float*)malloc(cpu::svd_randomized_scratch_num_floats(m, n, right, r, o) * sizeof(float));
        for (int k = 0; k < nb; k++) {
            cpu::Rng rng;
            cpu::rng_seed(&rng, 900 + 10 * si + k);
            for (size_t i = 0; i < mn; i++) { G[i] = 0.01f * cpu::rng_normal(&rng); }
            for (int j = 0; j < r; j++) {
                for (int i = 0; i < m; i++) { a[i] = cpu::rng_normal(&rng) / sqrtf((float)m); }
                for (int i = 0; i < n; i++) { b[i] = cpu::rng_normal(&rng) / sqrtf((float)n); }
                for (int i = 0; i < m; i++) {
                    for (int c = 0; c < n; c++) { G[(size_t)i * n + c] += (10.0f - j) * a[i] * b[c]; }
                }
            }
            streams[k] = 5 + 7 * (uint64_t)si + k;
            sk.stream = streams[k];
            cpu::svd_randomized_top_left_singular_vectors(S_cpu + k * pr, G, m, n, right, r, &sk, scratch);
            d_G[k] = device_copy(G, mn);
        }
        // the batch: G as a device table, each matrix's stream on the device, arrays for nb matrices
        const float** d_table;
        uint64_t* d_streams;
        int* d_info;
        cudaCheck(cudaMalloc((void**)&d_table, nb * sizeof(float*)));
        cudaCheck(cudaMemcpy(d_table, d_G, nb * sizeof(float*), cudaMemcpyHostToDevice));
        cudaCheck(cudaMalloc((void**)&d_streams, nb * sizeof(uint64_t)));
        cudaCheck(cudaMemcpy(d_streams, streams, nb * sizeof(uint64_t), cudaMemcpyHostToDevice));
        cudaCheck(cudaMalloc((void**)&d_info, nb * sizeof(int)));
        size_t used = 0;
        RsvdArraysGPU w = rsvd_arrays_layout(ctx.scratch, &used, m, n, right, r, o, nb);
        PerMatrix<const float> Gs;
        Gs.table = d_table;
        Gs.host = (const float* const*)d_G;
        SvdOutcome outcome[RSVD_TWIN_MATRICES];
        RsvdBatchGPU c = {nb, m, n, right, r, Gs, 0, d_streams, w, d_info, outcome};
        // Omega, as the GPU draws it (into the basis array, as the SVD does first)
        size_t numel = (size_t)p * l, same = 0;
        double worst = 0.0;
        svd_sketch_kernel<<<dim3(optim_blocks(numel, OPTIM_BLOCK), nb), OPTIM_BLOCK>>>(w.Q, numel, sk.seed, sk.step,
                                                                                      0, d_streams);
        cudaCheck(cudaGetLastError());
        double* omega = (double*)malloc(nb * numel * sizeof(double));
        cudaCheck(cudaMemcpy(omega, w.Q, nb * numel * sizeof(double), cudaMemcpyDeviceToHost));
        for (int k = 0; k < nb; k++) {
            for (size_t i = 0; i < numel; i++) {
                float want = cpu::svd_sketch_normal(sk.seed, sk.step, streams[k], i);
                float got = (float)omega[k * numel + i];
                same += memcmp(&want, &got, sizeof(float)) == 0;
                worst = fmax(worst, fabs((double)got - want) / fmax(fabs((double)want), 1e-30));
            }
        }
        svd_randomized_top_left_singular_vectors(&c, &sk, &ctx);
        int ok_solver = 1;
        double e_col = batch_against_cpu(S_gpu, S_cpu, &c, nb, pr, &ok_solver), e_proj = 0.0;
        for (int k = 0; k < nb; k++) { e_proj = fmax(e_proj, projector_diff(S_gpu + k * pr, S_cpu + k * pr, p, r)); }
#ifdef CUDA_EMU
        int omega_ok = same == nb * numel;
#else
        int omega_ok = worst <= 2.384185791015625e-07;
#endif
        check(omega_ok && ok_solver && e_col <= RSVD_TWIN_TOL && e_proj <= RSVD_TWIN_TOL,
              "randomized svd %3dx%-3d %-5s r%d o%d (l %d), a batch of %d: Omega %zu of %zu entries bit-equal (worst "
              "%.1e rel), S vs CPU columns %.1e, projector %.1e (tol %.2e); every devInfo 0 %d", m, n,
              right ? "right" : "left", r, o, l, nb, same,
              nb * numel, worst, e_col, e_proj, RSVD_TWIN_TOL, ok_solver);
        // GoLore's random bases (--rand_proj) of the same batch, in the same arrays: the CPU's
        // cpu::golore_random_basis, each in double to fp32, so within the same tolerance
        float* golore_scratch = (float*)malloc(cpu::golore_scratch_num_floats(m, n, right, r) * sizeof(float));
        for (int k = 0; k < nb; k++) {
            sk.stream = streams[k];
            cpu::golore_random_basis(S_cpu + k * pr, p, r, &sk, golore_scratch);
        }
        free(golore_scratch);
        golore_random_basis(&c, &sk, &ctx);
        int g_solver = 1;
        double g_col = batch_against_cpu(S_gpu, S_cpu, &c, nb, pr, &g_solver), g_orth = 0.0;
        for (int k = 0; k < nb; k++) {
            for (int a = 0; a < r; a++) {   // S^T S = I: the polar factor is orthonormal
                for (int b2 = 0; b2 < r; b2++) {
                    double d = 0.0;
                    const float* Sk = S_gpu + k * pr;
                    for (int i = 0; i < p; i++) { d += (double)Sk[(size_t)i * r + a] * Sk[(size_t)i * r + b2]; }
                    g_orth = fmax(g_orth, fabs(d - (a == b2)));
                }
            }
        }
        check(g_solver && g_col <= RSVD_TWIN_TOL && g_orth <= RSVD_TOL_ORTH_GOLORE,
              "golore basis %3dx%-3d %-5s r%d, a batch of %d: S vs the CPU's %.1e (tol %.2e), |S^T S - I| %.1e "
              "(tol %.1e); every devInfo 0 %d", m, n, right ? "right" : "left", r, nb, g_col, RSVD_TWIN_TOL, g_orth,
              RSVD_TOL_ORTH_GOLORE, g_solver);
        for (int k = 0; k < nb; k++) { cudaCheck(cudaFree(d_G[k])); }
        cudaCheck(cudaFree(d_table));
        cudaCheck(cudaFree(d_streams));
        cudaCheck(cudaFree(d_info));
        free(G); free(a); free(b); free(S_cpu); free(S_gpu); free(scratch); free(omega);
    }
    // whole steps: galore (SVD every 2 steps)
    g_svd_oversample = o;
    MethodCase randomized = method_cases[0];
    randomized.name = "galore --svd randomized";
    for (int si = 0; si < nshapes; si++) {
        if (shapes[si][3] != (shapes[si][0] > shapes[si][1])) { continue; }   // std's side (run_lowrank_case's)
        run_lowrank_case(shapes[si][0], shapes[si][1], shapes[si][2], &randomized, 1.0f, 0.0f, LR_STEPS, &ctx,
                         3000 + si);
    }
    g_svd_oversample = -1;
    lowrank_gpu_destroy(&ctx);
    // the grouped step: each matrix's own Omega
    test_lowrank_groups(o);
}

// ---- 128-bit packs: every elementwise kernel of the step and the optimizers
// moves a whole pack of 4 floats (8 elements where bf16 meets fp32) with
// 128-bit accesses when its launcher finds every pointer 16-byte aligned,
// and element by element otherwise (the tail past the last whole pack, or
// pointers one element off). each launcher runs on the same values at
// offset 0 (vector path, and the per-element tail when the size is not a
// multiple of the pack) and at offset 1 element (per-element path
// throughout): the two must give the same bits, and the CPU twin's (or, for
// kernels without one, the same fp32 expression on the host) bit for bit
// under the harness; on a GPU nvcc may fuse a multiply and an add in the
// kernels with products, so there ADAMW_TOL of the scale. the gradient norm
// sums in its own fixed order: bit for bit between the paths, and within
// 1e-12 (double sums of n floats: n 2^-53) of the CPU twin's serial chunks

static const size_t vec_sizes[] = {1, 3, 4, 5, 1023, 4097};
#define NUM_VEC_SIZES (int)(sizeof vec_sizes / sizeof vec_sizes[0])

typedef struct {
    int ok;
    char first[200];  // the first failure
} PathCheck;

static void path_expect(PathCheck* pc, int ok, const char* fmt, ...) {
    if (ok || !pc->ok) {
        pc->ok = pc->ok && ok;
        return;
    }
    pc->ok = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pc->first, sizeof pc->first, fmt, ap);
    va_end(ap);
}

static void path_report(const PathCheck* pc, const char* what) {
    check(pc->ok, "%s: sizes 1, 3, 4, 5, 1023, 4097 at offsets 0 and 1 element: vector and per-element paths "
          "bit-identical, and the twin's values%s%s", what, pc->ok ? "" : "; first failure: ", pc->ok ? "" : pc->first);
}

// the host's fp32 expressions against the kernels' (see the section comment)
static int twin_agrees(const float* got, const float* want, size_t n) {
#ifdef CUDA_EMU
    return memcmp(got, want, n * sizeof(float)) == 0;
#else
    return memcmp(got, want, n * sizeof(float)) == 0 || rel_diff(got, want, n) <= ADAMW_TOL;
#endif
}

static int same_bits(const void* a, const void* b, size_t bytes) { return memcmp(a, b, bytes) == 0; }

// n random values ~ N(0, scale), the first few the stochastic rounding's edge cases
static float* vec_inputs(size_t n, float scale, int specials, cpu::Rng* rng) {
    static const float edge[] = {0.0f, -0.0f, 1e-40f, 3.3895e38f, -1.17549435e-38f, 0.1f};
    float* x = (float*)cpu::malloc_check(n * sizeof(float), "inputs");
    for (size_t i = 0; i < n; i++) {
        x[i] = specials && i < sizeof edge / sizeof edge[0] ? edge[i] : scale * (float)cpu::rng_normal(rng);
    }
    return x;
}

// a device buffer of n + 8 elements of `bytes_each`, and the place `off` elements in
static void* vec_device(size_t n, size_t bytes_each, int off, void** alloc) {
    cudaCheck(cudaMalloc(alloc, (n + 8) * bytes_each));
    cudaCheck(cudaMemset(*alloc, 0, (n + 8) * bytes_each));
    return (char*)*alloc + off * bytes_each;
}

static float* vec_upload(const float* host, size_t n, int off, void** alloc) {
    float* d = (float*)vec_device(n, sizeof(float), off, alloc);
    cudaCheck(cudaMemcpy(d, host, n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

static float* vec_download(const float* d, size_t n) {
    float* h = (float*)cpu::malloc_check((n > 0 ? n : 1) * sizeof(float), "outputs");
    host_copy(h, d, n);
    return h;
}

static void test_vector_adamw(cpu::Rng* rng) {
    PathCheck pc = {1, ""};
    for (int s = 0; s < NUM_VEC_SIZES; s++) {
        size_t n = vec_sizes[s];
        float* in[4];
        for (int k = 0; k < 4; k++) { in[k] = vec_inputs(n, k == 3 ? 1.0f : 0.1f, 0, rng); }
        for (size_t i = 0; i < n; i++) { in[2][i] = fabsf(in[2][i]) * 0.01f; }  // V >= 0
        float* want[3];
        for (int k = 0; k < 3; k++) {
            want[k] = (float*)cpu::malloc_check(n * sizeof(float), "want");
            memcpy(want[k], in[k], n * sizeof(float));
        }
        cpu::adamw_update(want[0], want[1], want[2], in[3], n, 3, 1e-2f, 0.9f, 0.999f, 1e-6f, 0.1f, 0);
        float* got[2][3];
        for (int off = 0; off < 2; off++) {
            void* alloc[4];
            float* d[4];
            for (int k = 0; k < 4; k++) { d[k] = vec_upload(in[k], n, off, &alloc[k]); }
            adamw_update(d[0], d[1], d[2], d[3], n, 3, 1e-2f, 0.9f, 0.999f, 1e-6f, 0.1f, 0);
            for (int k = 0; k < 3; k++) { got[off][k] = vec_download(d[k], n); }
            for (int k = 0; k < 4; k++) { cudaCheck(cudaFree(alloc[k])); }
        }
        const char* names[3] = {"W", "M", "V"};
        for (int k = 0; k < 3; k++) {
            path_expect(&pc, same_bits(got[0][k], got[1][k], n * sizeof(float)), "n=%zu %s: offset 0 vs 1", n, names[k]);
            path_expect(&pc, twin_agrees(got[0][k], want[k], n), "n=%zu %s: against the CPU twin", n, names[k]);
            free(got[0][k]);
            free(got[1][k]);
            free(want[k]);
        }
        for (int k = 0; k < 4; k++) { free(in[k]); }
    }
    path_report(&pc, "adamw_update (adamw_kernel)");
}

static void test_vector_grad_scale_norm(cpu::Rng* rng) {
    PathCheck scale = {1, ""}, norm = {1, ""};
    for (int s = 0; s <= NUM_VEC_SIZES; s++) {
        // and three chunks of the norm, the last partial
        size_t n = s < NUM_VEC_SIZES ? vec_sizes[s] : 2 * NORM_CHUNK + 5;
        float* x = vec_inputs(n, 1.0f, 0, rng);
        double norm2[2];
        float* got[2];
        for (int off = 0; off < 2; off++) {
            void* alloc;
            float* d = vec_upload(x, n, off, &alloc);
            norm2[off] = grad_squared_norm(d, n);
            grad_scale(d, n, 0.37f);
            got[off] = vec_download(d, n);
            cudaCheck(cudaFree(alloc));
        }
        double want = cpu::grad_global_norm(x, n);
        want *= want;
        path_expect(&norm, same_bits(&norm2[0], &norm2[1], sizeof(double)), "n=%zu: offset 0 %.17g vs 1 %.17g", n,
                    norm2[0], norm2[1]);
        path_expect(&norm, fabs(norm2[0] - want) <= 1e-12 * want, "n=%zu: %.17g vs the CPU twin's %.17g", n,
                    norm2[0], want);
        cpu::grad_scale(x, n, 0.37f);
        path_expect(&scale, same_bits(got[0], got[1], n * sizeof(float)), "n=%zu: offset 0 vs 1", n);
        path_expect(&scale, same_bits(got[0], x, n * sizeof(float)), "n=%zu: against the CPU twin", n);
        free(got[0]);
        free(got[1]);
        free(x);
    }
    path_report(&norm, "grad_squared_norm (squared_norm_chunks_kernel; also n = 2 chunks + 5)");
    path_report(&scale, "grad_scale (scale_kernel; also n = 2 chunks + 5)");
}

// float_to_bf16, the stochastic roundings in place and stored as bf16, and widening
static void test_vector_bf16(cpu::Rng* rng) {
    PathCheck conv = {1, ""}, round = {1, ""}, store = {1, ""}, widen = {1, ""};
    const uint64_t seed = 5, step = 9, offset = 4093;
    for (int s = 0; s < NUM_VEC_SIZES; s++) {
        size_t n = vec_sizes[s];
        float* x = vec_inputs(n, 3.0f, 1, rng);
        bf16* want16 = (bf16*)cpu::malloc_check(n * sizeof(bf16), "want");
        for (size_t i = 0; i < n; i++) { want16[i] = __float2bfloat16(x[i]); }
        float* want_sr = (float*)cpu::malloc_check(n * sizeof(float), "want");
        memcpy(want_sr, x, n * sizeof(float));
        cpu::bf16_round_stochastic_array(want_sr, n, seed, step, offset);
        bf16* got16[2];
        float *got_round[2], *got_widen[2];
        bf16* got_store[2];
        for (int off = 0; off < 2; off++) {
            void *ax, *a16, *aw;
            float* dx = vec_upload(x, n, off, &ax);
            bf16* d16 = (bf16*)vec_device(n, sizeof(bf16), off, &a16);
            float* dw = (float*)vec_device(n, sizeof(float), off, &aw);
            float_to_bf16(d16, dx, n);
            got16[off] = (bf16*)cpu::malloc_check(n * sizeof(bf16), "got");
            cudaCheck(cudaMemcpy(got16[off], d16, n * sizeof(bf16), cudaMemcpyDeviceToHost));
            bf16_store_stochastic_array(d16, dx, n, seed, step, offset);
            got_store[off] = (bf16*)cpu::malloc_check(n * sizeof(bf16), "got");
            cudaCheck(cudaMemcpy(got_store[off], d16, n * sizeof(bf16), cudaMemcpyDeviceToHost));
            bf16_widen_array(dw, d16, n);
            got_widen[off] = vec_download(dw, n);
            bf16_round_stochastic_array(dx, n, seed, step, offset);
            got_round[off] = vec_download(dx, n);
            cudaCheck(cudaFree(ax));
            cudaCheck(cudaFree(a16));
            cudaCheck(cudaFree(aw));
        }
        // the stored bf16 are the rounded floats' top halves
        bf16* want_store = (bf16*)cpu::malloc_check(n * sizeof(bf16), "want");
        for (size_t i = 0; i < n; i++) { want_store[i] = __float2bfloat16(want_sr[i]); }
        path_expect(&conv, same_bits(got16[0], got16[1], n * sizeof(bf16)), "n=%zu: offset 0 vs 1", n);
        path_expect(&conv, same_bits(got16[0], want16, n * sizeof(bf16)), "n=%zu: against __float2bfloat16", n);
        path_expect(&round, same_bits(got_round[0], got_round[1], n * sizeof(float)), "n=%zu: offset 0 vs 1", n);
        path_expect(&round, same_bits(got_round[0], want_sr, n * sizeof(float)), "n=%zu: against the CPU twin", n);
        path_expect(&store, same_bits(got_store[0], got_store[1], n * sizeof(bf16)), "n=%zu: offset 0 vs 1", n);
        path_expect(&store, same_bits(got_store[0], want_store, n * sizeof(bf16)), "n=%zu: against the CPU twin", n);
        path_expect(&widen, same_bits(got_widen[0], got_widen[1], n * sizeof(float)), "n=%zu: offset 0 vs 1", n);
        path_expect(&widen, same_bits(got_widen[0], want_sr, n * sizeof(float)), "n=%zu: the CPU twin's rounded "
                    "values back", n);
        for (int off = 0; off < 2; off++) { free(got16[off]); free(got_store[off]); free(got_round[off]); free(got_widen[off]); }
        free(x); free(want16); free(want_sr); free(want_store);
    }
    path_report(&conv, "float_to_bf16 (float_to_bf16_kernel)");
    path_report(&round, "bf16_round_stochastic_array (bf16_round_stochastic_kernel)");
    path_report(&store, "bf16_store_stochastic_array (bf16_store_stochastic_kernel)");
    path_report(&widen, "bf16_widen_array (bf16_widen_kernel)");
}

// params_bf16_block on a tensor of `layers` layers of (rows, cols), rows
// row_stride apart and layers layer_stride apart (the gaps untouched), from
// element j0: the three ops against the map computed on the host
static void test_vector_params_bf16(cpu::Rng* rng) {
    typedef struct { size_t layers, rows, cols, row_stride, layer_stride, j0; } Layout;
    const Layout layouts[] = {
        {5, 64, 16, 24, 64 * 24 + 8, 0},    // packs whole: vector path at offset 0
        {5, 64, 16, 24, 64 * 24 + 8, 8},    // from the second pack of a row
        {5, 64, 16, 24, 64 * 24 + 8, 3},    // j0 mid-pack: per-element
        {4, 100, 12, 16, 1608, 0},          // rows of 12: a pack would cross rows
        {4, 100, 12, 12, 1200, 0},          // and contiguous
        {3, 700, 8, 8, 5600, 16},           // rows of one pack, contiguous
    };
    const uint64_t seed = 3, step = 17, offset = 123457;
    PathCheck pc[3] = {{1, ""}, {1, ""}, {1, ""}};
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; li++) {
        const Layout* L = &layouts[li];
        size_t per = L->rows * L->cols, total = L->layers * per, span = L->layers * L->layer_stride;
        for (int s = 0; s < NUM_VEC_SIZES; s++) {
            size_t n = vec_sizes[s];
            if (L->j0 + n > total) { continue; }
            float* x = vec_inputs(n, 2.0f, 1, rng);
            bf16* init = (bf16*)cpu::malloc_check(span * sizeof(bf16), "layout");
            for (size_t i = 0; i < span; i++) { init[i] = __float2bfloat16((float)cpu::rng_normal(rng)); }
            size_t* at = (size_t*)cpu::malloc_check(n * sizeof(size_t), "map");
            for (size_t i = 0; i < n; i++) {
                size_t j = L->j0 + i, l = j / per, r = (j - l * per) / L->cols, c = j - l * per - r * L->cols;
                at[i] = l * L->layer_stride + r * L->row_stride + c;
            }
            for (int op = 0; op < 3; op++) {
                bf16* want = (bf16*)cpu::malloc_check(span * sizeof(bf16), "want");
                float* want_x = (float*)cpu::malloc_check(n * sizeof(float), "want");
                memcpy(want, init, span * sizeof(bf16));
                memcpy(want_x, x, n * sizeof(float));
                for (size_t i = 0; i < n; i++) {
                    if (op == PARAMS_BF16_FROM_FLOAT) {
                        want[at[i]] = __float2bfloat16(x[i]);
                    } else if (op == PARAMS_BF16_WIDEN) {
                        want_x[i] = __bfloat162float(init[at[i]]);
                    } else {
                        want[at[i]] = __float2bfloat16(cpu::bf16_round_stochastic(
                            x[i], cpu::sr_random_bits(seed, step, offset + i)));
                    }
                }
                bf16* got[2];
                float* got_x[2];
                for (int off = 0; off < 2; off++) {
                    void *ab, *ax;
                    bf16* base = (bf16*)vec_device(span, sizeof(bf16), off, &ab);
                    cudaCheck(cudaMemcpy(base, init, span * sizeof(bf16), cudaMemcpyHostToDevice));
                    float* dx = vec_upload(x, n, off, &ax);
                    params_bf16_block(op, base, L->j0, per, L->cols, L->layer_stride, L->row_stride, dx, n, seed,
                                      step, offset);
                    got[off] = (bf16*)cpu::malloc_check(span * sizeof(bf16), "got");
                    cudaCheck(cudaMemcpy(got[off], base, span * sizeof(bf16), cudaMemcpyDeviceToHost));
                    got_x[off] = vec_download(dx, n);
                    cudaCheck(cudaFree(ab));
                    cudaCheck(cudaFree(ax));
                }
                path_expect(&pc[op], same_bits(got[0], got[1], span * sizeof(bf16)) &&
                                     same_bits(got_x[0], got_x[1], n * sizeof(float)),
                            "layout %zu, n=%zu: offset 0 vs 1", li, n);
                path_expect(&pc[op], same_bits(got[0], want, span * sizeof(bf16)) &&
                                     same_bits(got_x[0], want_x, n * sizeof(float)),
                            "layout %zu, n=%zu: against the host's map", li, n);
                for (int off = 0; off < 2; off++) { free(got[off]); free(got_x[off]); }
                free(want);
                free(want_x);
            }
            free(x);
            free(init);
            free(at);
        }
    }
    path_report(&pc[PARAMS_BF16_FROM_FLOAT], "params_bf16_kernel PARAMS_BF16_FROM_FLOAT, 6 layouts with row and "
                "layer gaps");
    path_report(&pc[PARAMS_BF16_WIDEN], "params_bf16_kernel PARAMS_BF16_WIDEN, 6 layouts");
    path_report(&pc[PARAMS_BF16_STORE_STOCHASTIC], "params_bf16_kernel PARAMS_BF16_STORE_STOCHASTIC, 6 layouts "
                "(the CPU twin's rounding)");
}

// a (rows, cols) shape of n elements, rows > 1 where n has a factor
static size_t vec_rows(size_t n) {
    for (size_t f = 2; f * f <= n; f++) {
        if (n % f == 0) { return f; }
    }
    return 1;
}

// the low-rank step's elementwise passes: a batch of two matrices through a
// device table (copy_kernel runs only for a batch), the second at the
// offset; the others one matrix at the offset, in both orientations
static void test_vector_lowrank(cpu::Rng* rng) {
    PathCheck copy = {1, ""}, zero = {1, ""}, decay = {1, ""}, apply = {1, ""}, moments = {1, ""};
    const float step = 0.013f, dec = 0.002f, alpha = 0.25f;
    for (int s = 0; s < NUM_VEC_SIZES; s++) {
        size_t n = vec_sizes[s];
        int rows = (int)vec_rows(n), cols = (int)(n / rows);
        float* a = vec_inputs(n, 1.0f, 0, rng);
        float* b = vec_inputs(n, 1.0f, 0, rng);
        int nphi = rows > cols ? rows : cols;
        float* phi = vec_inputs((size_t)nphi, 1.0f, 0, rng);
        float scale_h = 0.75f;
        float* got[2][8];  // copy, zero, decay, apply left/right, moments left/right
        for (int off = 0; off < 2; off++) {
            void *aa[2], *ab[2], *ap, *as, *at, *atb;
            float *da[2], *db[2];
            for (int e = 0; e < 2; e++) {
                da[e] = vec_upload(a, n, e == 1 ? off : 0, &aa[e]);
                db[e] = vec_upload(b, n, e == 1 ? off : 0, &ab[e]);
            }
            float* dphi = vec_upload(phi, (size_t)nphi, 0, &ap);
            float* dscale = vec_upload(&scale_h, 1, 0, &as);
            float** table;
            cudaCheck(cudaMalloc(&at, 2 * sizeof(float*)));
            cudaCheck(cudaMalloc(&atb, 2 * sizeof(float*)));
            table = (float**)at;
            cudaCheck(cudaMemcpy(table, da, sizeof da, cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(atb, db, sizeof db, cudaMemcpyHostToDevice));
            PerMatrix<float> dst, src;
            dst.table = table;
            dst.host = da;
            src.table = (float**)atb;
            src.host = db;
            copy_each(dst, src, n, 2);  // a := b in both
            got[off][0] = vec_download(da[1], n);
            copy_each(dst, PerMatrix<const float>(), n, 2);  // zeroed
            got[off][1] = vec_download(da[1], n);
            // the single-matrix passes on matrix 1 (at the offset)
            cudaCheck(cudaMemcpy(da[1], a, n * sizeof(float), cudaMemcpyHostToDevice));
            weight_decay_each(PerMatrix<float>(da[1]), n, dec, 1);
            got[off][2] = vec_download(da[1], n);
            for (int right = 0; right < 2; right++) {
                cudaCheck(cudaMemcpy(da[1], a, n * sizeof(float), cudaMemcpyHostToDevice));
                recovery_apply_each(PerMatrix<float>(da[1]), PerMatrix<const float>(db[1]), PerMatrix<const float>(dphi),
                                    PerMatrix<const float>(dscale), rows, cols, right, step, dec, 1);
                got[off][3 + right] = vec_download(da[1], n);
                cudaCheck(cudaMemcpy(da[1], a, n * sizeof(float), cudaMemcpyHostToDevice));
                // the moments' (r, q) = (rows, cols)
                update_moments_each(PerMatrix<float>(da[1]), PerMatrix<const float>(db[1]), PerMatrix<const float>(dphi),
                                    PerMatrix<const float>(dscale), rows, cols, right, alpha, 1);
                got[off][5 + right] = vec_download(da[1], n);
            }
            got[off][7] = NULL;
            for (int e = 0; e < 2; e++) { cudaCheck(cudaFree(aa[e])); cudaCheck(cudaFree(ab[e])); }
            cudaCheck(cudaFree(ap)); cudaCheck(cudaFree(as)); cudaCheck(cudaFree(at)); cudaCheck(cudaFree(atb));
        }
        // the same expressions on the host
        float* want[7];
        for (int k = 0; k < 7; k++) { want[k] = (float*)cpu::malloc_check(n * sizeof(float), "want"); }
        for (size_t i = 0; i < n; i++) {
            want[0][i] = b[i];
            want[1][i] = 0.0f;
            want[2][i] = a[i] - dec * a[i];
            for (int right = 0; right < 2; right++) {
                int j = right ? (int)(i / cols) : (int)(i % cols);
                float f = phi[j] * scale_h;
                float w = a[i] - step * (b[i] * f);
                want[3 + right][i] = w - dec * w;
                int jm = right ? (int)(i / rows) : (int)(i % cols);
                float fm = phi[jm] * scale_h;
                want[5 + right][i] = alpha * a[i] - fm * b[i];
            }
        }
        PathCheck* pcs[7] = {&copy, &zero, &decay, &apply, &apply, &moments, &moments};
        for (int k = 0; k < 7; k++) {
            path_expect(pcs[k], same_bits(got[0][k], got[1][k], n * sizeof(float)), "n=%zu (%d, %d)%s: offset 0 "
                        "vs 1", n, rows, cols, k == 4 || k == 6 ? " right" : "");
            path_expect(pcs[k], k < 2 ? same_bits(got[0][k], want[k], n * sizeof(float))
                                      : twin_agrees(got[0][k], want[k], n),
                        "n=%zu (%d, %d)%s: against the host's expression", n, rows, cols,
                        k == 4 || k == 6 ? " right" : "");
            free(got[0][k]);
            free(got[1][k]);
            free(want[k]);
        }
        free(a); free(b); free(phi);
    }
    path_report(&copy, "copy_each (copy_kernel), a batch of 2, the second at the offset");
    path_report(&zero, "copy_each zeroing (copy_kernel, src NULL), a batch of 2");
    path_report(&decay, "weight_decay_kernel");
    path_report(&apply, "lowrank_recovery_apply_kernel, left and right (the CPU's lowrank_apply_update expression)");
    path_report(&moments, "lowrank_update_moments_kernel, left and right");
}

static void test_vector_kernels(void) {
    cpu::Rng rng;
    cpu::rng_seed(&rng, 128);
    test_vector_adamw(&rng);
    test_vector_grad_scale_norm(&rng);
    test_vector_bf16(&rng);
    test_vector_params_bf16(&rng);
    test_vector_lowrank(&rng);
}

int main(int argc, char** argv) {
    if (argc == 3 && strcmp(argv[1], SVD_FAILURE_CHILD_FLAG) == 0) { return svd_failure_child(atoi(argv[2])); }
#ifdef CUDA_EMU
    printf("running under the CPU harness (dev/cuda_emu), not on a GPU\n");
#else
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        fprintf(stderr, "error: no CUDA GPU found; hint: make dev/test_gpu/test_gpu_optim_emu runs it under the CPU harness\n");
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("running on a GPU: %s\n", prop.name);
#endif
    const char* traj = argc > 1 ? argv[1] : "dev/reference/subtrack_trajectories.bin";
    LowRankGPU ctx;
    lowrank_gpu_create(&ctx);
    for (int si = 0; si < NUM_TEST_SHAPES; si++) {
        lowrank_gpu_reserve(&ctx, test_shapes[si][0], test_shapes[si][1], test_shapes[si][0] > test_shapes[si][1],
                            test_shapes[si][2]);
    }
    lowrank_gpu_alloc(&ctx);
    test_adamw();
    test_stochastic_rounding();
    test_vector_kernels();
    test_quantize_blockwise();
    test_adam8bit();
    test_lowrank_all(&ctx);
    test_lowrank_fast_products(&ctx);
    test_lowrank_fused();
    test_lowrank_project();
    test_lowrank_groups();
    test_resume_bit_exact(&ctx);
    test_power_iteration_start();
    test_syevdx_selection();
    test_svd_randomized_twin();
    test_svd_failure_stops();
    test_trajectories(traj, &ctx);
    lowrank_gpu_destroy(&ctx);
    return check_summary();
}
