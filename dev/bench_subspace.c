/*
bench_subspace.c: one SubTrack++ subspace update against one GaLore SVD
refresh, both from this project's C code, at the matrix shapes and ranks of
the 60M, 350M and 1B presets (512x1376 r128, 1024x2736 r256, 2048x5461 r512,
the w_gate / w_up shapes of those models).

build and run (from the repo root):
    make dev/bench_subspace && OMP_NUM_THREADS=2 ./dev/bench_subspace

what it times, per shape:
  svd    galore_refresh_subspace: Gram matrix in double, tridiagonal eigensolver
         for the top r vectors, canonical sign, moment rotation (adaptive on)
  track  subtrack_track_subspace: dF, power iteration, geodesic step, the
         projection update, rank-1 moment rotation (adaptive on). this is the
         marginal cost: the projection A = S^T G it starts from is paid by
         every step anyway, and is timed apart as part of "per step"
  per step  the projection S^T G, the back-projection S N and recovery's
         residual G - S Gt: 3 gemms of 2 m n r flops each
It also prints the per-step projection flops as a fraction of the matrix's
forward+backward flops, 6 m n tokens, with tokens = total batch x 256 from the
preset table of ../shared/SUBTRACK.md (60M 256 x 256, 350M 128 x 256, 1B 16 x 256),
and each subspace update amortised over k = 200 steps.
*/
#define TESTING
#include "../train_llama_subtrack.c"

#define BENCH_SEQ_LEN 256
#define BENCH_UPDATE_INTERVAL 200   // k of the paper's runs

typedef struct {
    const char* model;
    int m, n, r;
    int total_batch;    // sequences per optimizer step
    int reps_svd, reps_track;
} BenchShape;

static const BenchShape BENCH_SHAPES[] = {
    {"60M", 512, 1376, 128, 256, 3, 5},
    {"350M", 1024, 2736, 256, 128, 2, 5},
    {"1B", 2048, 5461, 512, 16, 1, 3},
};

// a gradient with a decaying spectrum: G = U diag(s) V with gaussian U (m, k),
// V (k, n) and s_j = 1 / (1 + j), k = min(m, n); plus gaussian noise of size eps
static void bench_gradient(float* G, int m, int n, uint64_t seed, float noise) {
    int k = m < n ? m : n;
    float* U = (float*)malloc_check((size_t)m * k * sizeof(float), "U");
    float* V = (float*)malloc_check((size_t)k * n * sizeof(float), "V");
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < k; j++) { U[(size_t)i * k + j] = rng_normal(&rng) / (1.0f + j) / sqrtf((float)m); }
    }
    for (size_t i = 0; i < (size_t)k * n; i++) { V[i] = rng_normal(&rng) / sqrtf((float)n); }
    gemm(0, 0, m, n, k, 1.0f, U, k, V, n, 0.0f, G, n);
    for (size_t i = 0; i < (size_t)m * n; i++) { G[i] += noise * rng_normal(&rng) / sqrtf((float)n); }
    free(U);
    free(V);
}

int main(void) {
    printf("subspace update benchmark, %d threads; times are the best of the repetitions\n\n", num_threads());
    printf("%-5s %-14s %9s %9s %7s %6s | %9s %11s %11s | %13s %13s\n", "model", "shape", "svd s", "track s",
           "ratio", "iters", "step ms", "proj/fwdbwd", "tokens", "svd/step ms", "track/step ms");
    double ratio_1b = 0.0;
    for (size_t si = 0; si < sizeof(BENCH_SHAPES) / sizeof(BENCH_SHAPES[0]); si++) {
        const BenchShape* b = &BENCH_SHAPES[si];
        int m = b->m, n = b->n, r = b->r;
        size_t mn = (size_t)m * n, nstate = lowrank_state_num_floats(m, n, m > n, r);
        float* G = (float*)malloc_check(mn * sizeof(float), "G");
        float* G2 = (float*)malloc_check(mn * sizeof(float), "G2");
        float* W = (float*)calloc_check(mn * sizeof(float), "W");
        float* memory = (float*)malloc_check(nstate * sizeof(float), "state");
        float* saved = (float*)malloc_check(nstate * sizeof(float), "saved state");
        float* scratch = (float*)malloc_check(lowrank_scratch_num_floats(m, n, m > n, r) * sizeof(float), "scratch");
        float* Gt = (float*)malloc_check((size_t)(m > n ? m : n) * r * sizeof(float), "Gt");
        float* D = (float*)malloc_check(mn * sizeof(float), "D");
        bench_gradient(G, m, n, 1 + si, 0.05f);
        bench_gradient(G2, m, n, 1 + si, 0.05f);  // same signal, fresh noise: the next gradient
        for (size_t i = 0; i < mn; i++) { G2[i] += 0.2f * (G[(i * 7919) % mn] - G[i]); }  // and a moved subspace
        LowRankConfig cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.rank = r; cfg.low_rank_scale = 0.25f; cfg.update_interval = BENCH_UPDATE_INTERVAL;
        cfg.st_init_step_size = 10.0f; cfg.adaptive_optimizer = 1; cfg.recovery_scaling = 1;
        cfg.norm_growth_limiter = 1; cfg.norm_growth_limit = 1.01f;
        cfg.beta1 = 0.9f; cfg.beta2 = 0.999f; cfg.eps = 1e-6f;
        LowRankState st;
        lowrank_state_init(&st, m, n, m > n, r, memory);
        // a first step (SVD + Adam) so S, M and V hold realistic values
        lowrank_adamw_step(&st, W, G, 0, &cfg, 1e-3f, scratch);
        memcpy(saved, memory, nstate * sizeof(float));
        double t_svd = 1e30, t_track = 1e30, t_step = 1e30;
        for (int rep = 0; rep < b->reps_svd; rep++) {
            memcpy(memory, saved, nstate * sizeof(float));
            double t0 = wall_seconds();
            galore_refresh_subspace(&st, G2, &cfg, scratch);
            t_svd = fmin(t_svd, wall_seconds() - t0);
        }
        for (int rep = 0; rep < b->reps_track; rep++) {
            memcpy(memory, saved, nstate * sizeof(float));
            lowrank_project(Gt, &st, G2);
            double t0 = wall_seconds();
            subtrack_track_subspace(&st, Gt, G2, &cfg, scratch);
            t_track = fmin(t_track, wall_seconds() - t0);
        }
        for (int rep = 0; rep < b->reps_track; rep++) {
            double t0 = wall_seconds();
            lowrank_project(Gt, &st, G2);                   // Gt = S^T G
            memcpy(D, G2, mn * sizeof(float));
            lowrank_back_project(D, &st, Gt, -1.0f, 1.0f);  // recovery's residual G - S Gt
            lowrank_back_project(D, &st, Gt, 0.25f, 1.0f);  // + alpha S N (Gt stands in for N)
            t_step = fmin(t_step, wall_seconds() - t0);
        }
        double tokens = (double)b->total_batch * BENCH_SEQ_LEN;
        double proj_fraction = 3.0 * 2.0 * mn * r / (6.0 * mn * tokens);
        double ratio = t_svd / t_track;
        if (strcmp(b->model, "1B") == 0) { ratio_1b = ratio; }
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%d r%d", m, n, r);
        printf("%-5s %-14s %9.3f %9.4f %6.1fx %6d | %9.1f %10.2f%% %11.0f | %13.2f %13.3f\n", b->model, shape,
               t_svd, t_track, ratio, st.power_iterations, 1e3 * t_step, 100.0 * proj_fraction, tokens,
               1e3 * t_svd / BENCH_UPDATE_INTERVAL, 1e3 * t_track / BENCH_UPDATE_INTERVAL);
        free(G); free(G2); free(W); free(memory); free(saved); free(scratch); free(Gt); free(D);
    }
    printf("\nsvd: GaLore refresh (top-r SVD + moment rotation); track: SubTrack++ geodesic step + rank-1 moment\n"
           "rotation, beyond the projection every step pays; iters: power iterations of that step (max %d);\n"
           "step ms: projection + residual + back-projection, paid every step by both methods; proj/fwdbwd:\n"
           "their 3 x 2 m n r flops over the matrix's 6 m n tokens forward+backward flops.\n", POWER_ITER_MAX);
    printf("1B shape: tracking is %.1fx faster than the SVD refresh (goal: >= 20x)\n", ratio_1b);
    return 0;
}
