/*
dev/bench_model.c: times one forward+backward step of the C model.

    make dev/bench_model && OMP_NUM_THREADS=2 ./dev/bench_model --preset llama_20m --B 4 --T 256

dev/bench_model.py runs this and PyTorch side by side and prints the ratio.
a step is zero_grad + forward + backward, as torch's timed step is. prints
the median over --iters steps after one warm-up step, as `c_step_ms <ms>`.
*/
#define TESTING
#include "../train_llama_subtrack.c"

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    const char* preset = "llama_20m";
    int B = 4, T = 256, iters = 5;
    int V = 0, C = 0, F = 0, NH = 0, L = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            printf("usage: %s [--preset NAME] [--B n] [--T n] [--iters n] [--V --C --F --NH --L overrides]\n", argv[0]);
            return 0;
        }
        if (i + 1 >= argc) { fatal("flag %s needs a value", argv[i]); }
        const char* f = argv[i];
        const char* v = argv[++i];
        if (strcmp(f, "--preset") == 0) { preset = v; }
        else if (strcmp(f, "--B") == 0) { B = atoi(v); }
        else if (strcmp(f, "--T") == 0) { T = atoi(v); }
        else if (strcmp(f, "--iters") == 0) { iters = atoi(v); }
        else if (strcmp(f, "--V") == 0) { V = atoi(v); }
        else if (strcmp(f, "--C") == 0) { C = atoi(v); }
        else if (strcmp(f, "--F") == 0) { F = atoi(v); }
        else if (strcmp(f, "--NH") == 0) { NH = atoi(v); }
        else if (strcmp(f, "--L") == 0) { L = atoi(v); }
        else { fatal("unknown flag %s; see --help", f); }
    }
    LlamaConfig cfg;
    if (!llama_preset_find(preset, &cfg)) { fatal("unknown preset %s", preset); }
    if (V) { cfg.V = V; }
    if (C) { cfg.C = C; }
    if (F) { cfg.F = F; }
    if (NH) { cfg.NH = NH; }
    if (L) { cfg.L = L; }
    if (B <= 0 || T <= 0 || iters <= 0) { fatal("--B, --T and --iters must be positive"); }
    Llama model;
    llama_build(&model, &cfg);
    llama_init_weights(&model, 1);
    int* inputs = (int*)malloc_check((size_t)B * T * sizeof(int), "inputs");
    int* targets = (int*)malloc_check((size_t)B * T * sizeof(int), "targets");
    Rng rng;
    rng_seed(&rng, 2);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)(rng_u64(&rng) % cfg.V);
        targets[i] = (int)(rng_u64(&rng) % cfg.V);
    }
    printf("preset %s V=%d C=%d F=%d NH=%d L=%d B=%d T=%d threads=%d\n",
           preset, cfg.V, cfg.C, cfg.F, cfg.NH, cfg.L, B, T, num_threads());
    double* ms = (double*)malloc_check(iters * sizeof(double), "timings");
    for (int it = -1; it < iters; it++) {
        double t0 = wall_seconds();
        llama_zero_grad(&model);
        llama_forward(&model, inputs, targets, B, T);
        llama_backward(&model, inputs, targets, 1.0f);
        double dt = 1e3 * (wall_seconds() - t0);
        if (it >= 0) { ms[it] = dt; }
    }
    qsort(ms, iters, sizeof(double), cmp_double);
    printf("c_step_ms %.2f\n", ms[iters / 2]);
    free(ms); free(inputs); free(targets);
    llama_free(&model);
    return 0;
}
