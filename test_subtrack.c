/*
test_subtrack.c: checks train_llama_subtrack.c against independent references.

    make test                       # builds ./test_subtrack and runs it
    ./test_subtrack path/to/model_ref.bin ...   # check other reference files

it includes the trainer with TESTING defined, so it tests the very code that
trains. every check prints one line; any failure makes the exit code non-zero,
and the last line is "N passed, N failed".

tolerances are stated where they are used, each with its reason. fp32 paths
are held to fp32 accuracy: errors are measured relative to the scale of the
tensor (its largest magnitude), because entries near zero have no meaningful
relative error.
*/
#define TESTING
#include "train_llama_subtrack.c"

// ----------------------------------------------------------------------------
// the check api

static int g_pass, g_fail;

static void check(int ok, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) { g_pass++; } else { g_fail++; }
    fflush(stdout);
}

// max |a - b| over n entries, and max |b| (the reference's scale)
static void max_errors(const float* a, const float* b, size_t n, double* max_abs, double* scale) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= e)) { e = d; } // also catches NaN
        if (fabs((double)b[i]) > s) { s = fabs((double)b[i]); }
    }
    *max_abs = e;
    *scale = s;
}

// ----------------------------------------------------------------------------
// model reference files (format: dev/reference/README.md)

#define MODEL_REF_MAGIC 20261101
#define MODEL_REF_VERSION 1
#define MODEL_REF_HEADER_INTS 32

typedef struct {
    LlamaConfig cfg;
    int B, T;
    size_t num_params;
    float* params;  // (num_params) in parameter-table order
    int* inputs;    // (B, T)
    int* targets;   // (B, T), IGNORE_INDEX where ignored
    float* logits;  // (B, T, V)
    float loss;
    float* grads;   // (num_params)
} ModelReference;

static int read_exact(FILE* f, void* dst, size_t bytes) {
    return fread(dst, 1, bytes, f) == bytes;
}

// the one reader of model reference files. returns 0 on success, else
// fills err with the file, the problem and a hint
static int model_reference_read(ModelReference* ref, const char* path, char* err, size_t errlen) {
    memset(ref, 0, sizeof *ref);
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open (%s); regenerate with python dev/reference/model_reference.py --all",
                 path, strerror(errno));
        return 1;
    }
    int32_t h[MODEL_REF_HEADER_INTS];
    if (!read_exact(f, h, sizeof h)) {
        snprintf(err, errlen, "%s: shorter than its %d-int header", path, MODEL_REF_HEADER_INTS);
        fclose(f);
        return 1;
    }
    if (h[0] != MODEL_REF_MAGIC || h[1] != MODEL_REF_VERSION) {
        snprintf(err, errlen, "%s: magic %d version %d, expected %d version %d (not a model reference file?)",
                 path, h[0], h[1], MODEL_REF_MAGIC, MODEL_REF_VERSION);
        fclose(f);
        return 1;
    }
    LlamaConfig c = {h[2], h[3], h[4], h[5], h[6], h[7], 0.0f, 0.0f};
    memcpy(&c.norm_eps, &h[12], sizeof(float));
    memcpy(&c.rope_theta, &h[13], sizeof(float));
    const char* problem = llama_config_problem(&c);
    if (problem != NULL || h[8] <= 0 || h[9] <= 0 || h[10] != IGNORE_INDEX) {
        snprintf(err, errlen, "%s: bad header: %s", path, problem ? problem : "B, T or ignore_index");
        fclose(f);
        return 1;
    }
    ref->cfg = c;
    ref->B = h[8];
    ref->T = h[9];
    ref->num_params = parameter_count(&c);
    if ((size_t)(uint32_t)h[11] != ref->num_params) {
        snprintf(err, errlen, "%s: header says %d parameters, the config has %zu", path, h[11], ref->num_params);
        fclose(f);
        return 1;
    }
    size_t BT = (size_t)ref->B * ref->T, np = ref->num_params;
    ref->params = (float*)malloc_check(np * sizeof(float), "reference params");
    ref->inputs = (int*)malloc_check(BT * sizeof(int), "reference inputs");
    ref->targets = (int*)malloc_check(BT * sizeof(int), "reference targets");
    ref->logits = (float*)malloc_check(BT * c.V * sizeof(float), "reference logits");
    ref->grads = (float*)malloc_check(np * sizeof(float), "reference grads");
    int ok = read_exact(f, ref->params, np * sizeof(float))
          && read_exact(f, ref->inputs, BT * sizeof(int))
          && read_exact(f, ref->targets, BT * sizeof(int))
          && read_exact(f, ref->logits, BT * c.V * sizeof(float))
          && read_exact(f, &ref->loss, sizeof(float))
          && read_exact(f, ref->grads, np * sizeof(float));
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (!ok || extra) {
        snprintf(err, errlen, "%s: %s than its header implies; regenerate it", path, ok ? "longer" : "shorter");
        return 1;
    }
    for (size_t i = 0; i < BT; i++) {
        if (ref->inputs[i] < 0 || ref->inputs[i] >= c.V ||
            (ref->targets[i] != IGNORE_INDEX && (ref->targets[i] < 0 || ref->targets[i] >= c.V))) {
            snprintf(err, errlen, "%s: token %zu out of range", path, i);
            return 1;
        }
    }
    return 0;
}

static void model_reference_free(ModelReference* ref) {
    free(ref->params); free(ref->inputs); free(ref->targets); free(ref->logits); free(ref->grads);
}

// fp32 tolerance for the model against transformers: both sides compute in
// fp32 with different summation orders (blocked gemm with fma here, mkl/
// oneDNN in torch). through two layers and a backward pass that leaves
// errors of a few 1e-7 relative to each tensor's scale; 1e-5 leaves an order
// of magnitude of headroom and still catches any real bug, which shows up at
// 1e-3 or above.
#define MODEL_REL_TOL 1e-5

static double loss_in_double(const Llama* model, const int* targets) {
    int BT = model->B * model->T;
    double total = 0.0;
    int count = 0;
    for (int i = 0; i < BT; i++) {
        if (targets[i] != IGNORE_INDEX) { total += model->acts.losses[i]; count++; }
    }
    return total / count;
}

// central finite differences of a few entries per parameter tensor. the
// forward is fp32, so the loss carries rounding noise of about 1e-7
// relative; with a step of h = 1e-2 that is about 1e-5 absolute in the
// difference quotient, and the truncation error (h^2/6 * third derivative)
// is of the same order. so entries are drawn among the largest 10% of
// |gradient| in each tensor (about 1e-3 and up), and held to 2% relative plus
// 2e-5 absolute: loose next to the reference check above, but it comes from
// no other code at all, and a wrong layer is off by 100% or more.
static void check_finite_differences(Llama* model, const int* inputs, const int* targets, const char* label) {
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, &model->config);
    float** params = parameter_pointers(&model->params);
    float** grads = parameter_pointers(&model->grads);
    Rng rng;
    rng_seed(&rng, 1234);
    const float h = 1e-2f;
    const int per_tensor = 3;
    for (int ti = 0; ti < NUM_PARAMETER_TENSORS; ti++) {
        size_t n = tensor_numel(&spec[ti]);
        // the 90th percentile of |g| by sampling, to pick informative entries
        float* gabs = (float*)malloc_check(n * sizeof(float), "fd scratch");
        for (size_t j = 0; j < n; j++) { gabs[j] = fabsf(grads[ti][j]); }
        float gmax = 0.0f;
        for (size_t j = 0; j < n; j++) { gmax = gabs[j] > gmax ? gabs[j] : gmax; }
        double worst = 0.0;
        int ok = 1;
        for (int s = 0; s < per_tensor; s++) {
            size_t j = 0;
            for (int tries = 0; tries < 100000; tries++) {
                j = rng_u64(&rng) % n;
                if (gabs[j] >= 0.3f * gmax) { break; }
            }
            float saved = params[ti][j];
            double analytic = grads[ti][j];
            params[ti][j] = saved + h;
            llama_forward(model, inputs, targets, model->B, model->T);
            double lp = loss_in_double(model, targets);
            params[ti][j] = saved - h;
            llama_forward(model, inputs, targets, model->B, model->T);
            double lm = loss_in_double(model, targets);
            params[ti][j] = saved;
            double fd = (lp - lm) / (2.0 * h);
            double err = fabs(fd - analytic);
            double allowed = 2e-2 * fabs(analytic) + 2e-5;
            if (!(err <= allowed)) { ok = 0; }
            if (err / allowed > worst) { worst = err / allowed; }
        }
        free(gabs);
        check(ok, "%s finite differences %-14s (%d entries, worst error %.2f of allowed)",
              label, spec[ti].name, per_tensor, worst);
    }
}

static void test_model_reference(const char* path) {
    ModelReference ref;
    char err[512];
    if (model_reference_read(&ref, path, err, sizeof err) != 0) {
        check(0, "read %s: %s", path, err);
        return;
    }
    const char* label = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    LlamaConfig c = ref.cfg;
    printf("--- %s: V=%d C=%d F=%d NH=%d L=%d B=%d T=%d\n", label, c.V, c.C, c.F, c.NH, c.L, ref.B, ref.T);
    Llama model;
    llama_build(&model, &c);
    memcpy(model.params_memory, ref.params, ref.num_params * sizeof(float));
    int B = ref.B, T = ref.T;
    float loss = llama_forward(&model, ref.inputs, ref.targets, B, T);

    double e, s;
    max_errors(model.acts.logits, ref.logits, (size_t)B * T * c.V, &e, &s);
    check(e <= MODEL_REL_TOL * s, "%s logits: max abs err %.3g, scale %.3g, rel %.3g", label, e, s, e / s);
    double le = fabs((double)loss - ref.loss);
    // the loss is a mean of B*T terms of size ~log(V): fp32 relative accuracy
    check(le <= MODEL_REL_TOL * fabs(ref.loss), "%s loss: %.7f vs reference %.7f (abs err %.3g)",
          label, loss, ref.loss, le);

    llama_zero_grad(&model);
    llama_backward(&model, ref.inputs, ref.targets, 1.0f);
    TensorSpec spec[NUM_PARAMETER_TENSORS];
    parameter_table(spec, &c);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = tensor_numel(&spec[i]);
        max_errors(model.grads_memory + off, ref.grads + off, n, &e, &s);
        check(s > 0 && e <= MODEL_REL_TOL * s, "%s grad %-14s: max abs err %.3g, scale %.3g, rel %.3g",
              label, spec[i].name, e, s, s > 0 ? e / s : 0.0);
        off += n;
    }
    check_finite_differences(&model, ref.inputs, ref.targets, label);
    llama_free(&model);
    model_reference_free(&ref);
}

// ----------------------------------------------------------------------------
// small unit tests of the building blocks

static void test_gemm(void) {
    // every transpose combination and awkward sizes (tails of every block)
    // against a double-precision naive loop. fp32 with k up to 300 terms:
    // 1e-5 relative to the output scale is ~100x the expected rounding
    int sizes[][3] = {{1, 1, 1}, {7, 33, 5}, {13, 37, 300}, {129, 65, 257}, {8, 32, 256}};
    Rng rng;
    rng_seed(&rng, 7);
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int M = sizes[si][0], N = sizes[si][1], K = sizes[si][2];
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                float* A = (float*)malloc_check((size_t)M * K * sizeof(float), "A");
                float* Bm = (float*)malloc_check((size_t)K * N * sizeof(float), "B");
                float* Cm = (float*)malloc_check((size_t)M * N * sizeof(float), "C");
                float* Cr = (float*)malloc_check((size_t)M * N * sizeof(float), "Cref");
                for (int i = 0; i < M * K; i++) { A[i] = rng_normal(&rng); }
                for (int i = 0; i < K * N; i++) { Bm[i] = rng_normal(&rng); }
                for (int i = 0; i < M * N; i++) { Cm[i] = rng_normal(&rng); Cr[i] = Cm[i]; }
                int lda = ta ? M : K, ldb = tb ? K : N;
                float alpha = 0.5f, beta = (si % 2) ? 0.0f : 2.0f;
                gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cm, N);
                for (int i = 0; i < M; i++) {
                    for (int j = 0; j < N; j++) {
                        double acc = 0.0;
                        for (int k = 0; k < K; k++) {
                            double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                            double b = tb ? Bm[(size_t)j * ldb + k] : Bm[(size_t)k * ldb + j];
                            acc += a * b;
                        }
                        Cr[(size_t)i * N + j] = (float)(alpha * acc + (beta == 0.0f ? 0.0 : beta * Cr[(size_t)i * N + j]));
                    }
                }
                double e, s;
                max_errors(Cm, Cr, (size_t)M * N, &e, &s);
                check(e <= 1e-5 * s, "gemm %dx%dx%d transA=%d transB=%d beta=%g: rel err %.3g",
                      M, N, K, ta, tb, beta, e / s);
                free(A); free(Bm); free(Cm); free(Cr);
            }
        }
    }
}

static void test_config_validation(void) {
    LlamaConfig ok = {256, 64, 176, 4, 2, 64, 1e-6f, 10000.0f};
    check(llama_config_problem(&ok) == NULL, "config: a valid config is accepted");
    LlamaConfig bad = ok;
    bad.NH = 3;
    check(llama_config_problem(&bad) != NULL, "config: C not divisible by NH is rejected (%s)",
          llama_config_problem(&bad));
    bad = ok;
    bad.C = 60; bad.NH = 4; // head size 15
    check(llama_config_problem(&bad) != NULL, "config: odd head size is rejected (%s)", llama_config_problem(&bad));
    bad = ok;
    bad.F = 0;
    check(llama_config_problem(&bad) != NULL, "config: zero size is rejected (%s)", llama_config_problem(&bad));
    int all_valid = 1;
    for (int i = 0; i < NUM_LLAMA_PRESETS; i++) {
        all_valid &= llama_config_problem(&LLAMA_PRESETS[i].cfg) == NULL;
    }
    check(all_valid, "config: all %d presets are valid", NUM_LLAMA_PRESETS);
    LlamaConfig c60;
    check(llama_preset_find("llama_60m", &c60) && parameter_count(&c60) == 58073600,
          "config: llama_60m has 58073600 parameters (transformers' count for configs/llama_60m.json)");
}

static void test_expf_simd(void) {
    // against double exp over the range softmax uses; 2 ulp = 2.4e-7 relative
    double worst = 0.0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * i / 200000.0f;
        double ref = exp((double)x);
        double rel = fabs(expf_simd(x) - ref) / ref;
        worst = rel > worst ? rel : worst;
    }
    check(worst <= 2.4e-7, "expf_simd: worst relative error %.3g on [-87, 88]", worst);
    check(isnan(expf_simd(NAN)) && expf_simd(-1000.0f) == 0.0f && expf_simd(0.0f) == 1.0f,
          "expf_simd: NaN stays NaN, exp(-1000) = 0, exp(0) = 1");
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    test_gemm();
    test_expf_simd();
    test_config_validation();
    if (argc > 1) {
        for (int i = 1; i < argc; i++) { test_model_reference(argv[i]); }
    } else {
        test_model_reference("dev/reference/model_tiny.bin");
        test_model_reference("dev/reference/model_awkward.bin");
    }
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
