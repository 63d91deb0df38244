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
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

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
// tests of the data section: the shard loader, bad shards, the decoder file and
// the committed data/. (dev/wip/test_shard_loader.c: to be pasted into
// test_subtrack.c; uses its check() and g_pass/g_fail.)
// every test writes its own small shards into a fresh mkdtemp directory.


#define TEST_SHARD_VOCAB 1000   // ids in the test shards stay below this
#define TEST_SHARD_STRIDE 100   // token i of test shard s is s*100 + i, so every window names itself
#define TEST_KJV_VOCAB 4096     // the vocab of data/tokenizer.model (data/README.md)

// a fresh empty directory under /tmp; returns 0 on failure
static int test_make_dir(char* dir, size_t cap) {
    snprintf(dir, cap, "/tmp/subtrack_test_XXXXXX");
    return mkdtemp(dir) != NULL;
}

// removes the (flat) directory and the files in it
static void test_remove_dir(const char* dir) {
    DIR* d = opendir(dir);
    if (d == NULL) { return; }
    struct dirent* e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) { continue; }
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

// writes a shard with any header, so bad files can be made too; returns 1 on success
static int test_write_shard(const char* path, int32_t magic, int32_t version, int32_t header_count,
                            const int* tokens, int64_t n) {
    FILE* f = fopen(path, "wb");
    if (f == NULL) { return 0; }
    unsigned char header[SHARD_HEADER_BYTES] = {0};
    int32_t fields[3] = {magic, version, header_count};
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 4; k++) { header[4 * i + k] = (unsigned char)((uint32_t)fields[i] >> (8 * k)); }
    }
    int ok = fwrite(header, 1, sizeof(header), f) == sizeof(header);
    for (int64_t i = 0; i < n && ok; i++) {
        unsigned char b[2] = {(unsigned char)(tokens[i] & 0xFF), (unsigned char)((tokens[i] >> 8) & 0xFF)};
        ok = fwrite(b, 1, 2, f) == 2;
    }
    return fclose(f) == 0 && ok;
}

// the test corpus: 3 shards of 33, 28, 29 tokens; at T=4 that is 8, 6 and 7 windows
// (W=21). the middle shard's last 3 tokens ((28-1) % 4) are never read: with 28 tokens
// N/T would wrongly give 7 windows, so this size pins the (N-1)/T rule down
#define TEST_T 4
static const int test_shard_sizes[3] = {33, 28, 29};
static const int test_shard_first_window[4] = {0, 8, 14, 21}; // stream index of each shard's window 0
#define TEST_W 21

static int test_write_corpus(const char* dir) {
    int ok = 1;
    for (int s = 0; s < 3; s++) {
        int tokens[64];
        for (int i = 0; i < test_shard_sizes[s]; i++) { tokens[i] = s * TEST_SHARD_STRIDE + i; }
        char path[512];
        snprintf(path, sizeof(path), "%s/corpus_%03d.bin", dir, s);
        ok &= test_write_shard(path, SHARD_MAGIC, SHARD_VERSION, test_shard_sizes[s], tokens, test_shard_sizes[s]);
    }
    return ok;
}

static ShardLoaderConfig test_corpus_config(const char* pattern, int B, int rank, int ranks, int shuffle, uint64_t seed) {
    ShardLoaderConfig c = {pattern, "--train_data", B, TEST_T, TEST_SHARD_VOCAB, rank, ranks, shuffle, seed};
    return c;
}

// checks that row b of a batch is exactly one window of the test corpus and returns its
// sequential index 0..TEST_W-1, or -1 if the row is not a whole, correctly shifted window
static int test_window_of_row(const int* inputs, const int* targets, int b) {
    int first = inputs[b * TEST_T];
    int s = first / TEST_SHARD_STRIDE, i = first % TEST_SHARD_STRIDE;
    if (s < 0 || s > 2 || i % TEST_T != 0 || i / TEST_T >= test_shard_first_window[s + 1] - test_shard_first_window[s]) {
        return -1;
    }
    for (int t = 0; t < TEST_T; t++) {
        if (inputs[b * TEST_T + t] != first + t || targets[b * TEST_T + t] != first + t + 1) { return -1; }
    }
    return test_shard_first_window[s] + i / TEST_T;
}

// reads `steps` batches and appends each row's window index to stream; returns 0 on any error
static int test_read_stream(ShardLoader* L, int steps, int* stream) {
    int B = L->cfg.B;
    int inputs[64], targets[64];
    char msg[SHARD_MSG_CAP];
    for (int k = 0; k < steps; k++) {
        if (shard_loader_next_batch(L, inputs, targets, msg, sizeof(msg)) != SHARD_OK) { return 0; }
        for (int b = 0; b < B; b++) { stream[k * B + b] = test_window_of_row(inputs, targets, b); }
    }
    return 1;
}

// 1 if a[0..n) holds each of 0..n-1 exactly once
static int test_is_permutation(const int* a, int n) {
    int seen[256] = {0};
    for (int i = 0; i < n; i++) {
        if (a[i] < 0 || a[i] >= n || seen[a[i]]++) { return 0; }
    }
    return 1;
}

static void test_shard_windows_exact(void) {
    char dir[64], pattern[128];
    if (!test_make_dir(dir, sizeof(dir)) || !test_write_corpus(dir)) { check(0, "shard windows: make test shards"); return; }
    snprintf(pattern, sizeof(pattern), "%s/corpus_*.bin", dir);
    ShardLoader L;
    char msg[SHARD_MSG_CAP];
    ShardLoaderConfig cfg = test_corpus_config(pattern, 2, 0, 1, 0, 0);
    int rc = shard_loader_init(&L, &cfg, msg, sizeof(msg));
    check(rc == SHARD_OK, "shard windows: init on 3 test shards (%s)", rc == SHARD_OK ? "ok" : msg);
    if (rc != SHARD_OK) { test_remove_dir(dir); return; }
    check(L.num_shards == 3 && L.num_windows == TEST_W, "shard windows: 3 shards, %d windows of T+1 (got %d, %lld)",
          TEST_W, L.num_shards, (long long)L.num_windows);
    // sequential order is every window of every shard in glob order, each row a whole window
    // [w*T, w*T+T+1) with targets shifted by one; none crosses into the next shard
    int stream[TEST_W + 1];
    int ok = test_read_stream(&L, (TEST_W + 1) / 2, stream);
    int exact = ok;
    for (int k = 0; k < TEST_W && exact; k++) { exact = stream[k] == k; }
    check(exact, "shard windows: sequential batches hold exactly windows 0..%d in order, inputs and shifted targets",
          TEST_W - 1);
    shard_loader_free(&L);
    test_remove_dir(dir);
}

static void test_shard_shuffle(void) {
    char dir[64], pattern[128];
    if (!test_make_dir(dir, sizeof(dir)) || !test_write_corpus(dir)) { check(0, "shard shuffle: make test shards"); return; }
    snprintf(pattern, sizeof(pattern), "%s/corpus_*.bin", dir);
    // two epochs of 21 windows in batches of 3, for seeds 1234, 1234 again and 1235
    enum { STEPS = 2 * TEST_W / 3 };
    int streams[3][2 * TEST_W];
    uint64_t seeds[3] = {1234, 1234, 1235};
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        ShardLoader L;
        char msg[SHARD_MSG_CAP];
        ShardLoaderConfig cfg = test_corpus_config(pattern, 3, 0, 1, 1, seeds[i]);
        if (shard_loader_init(&L, &cfg, msg, sizeof(msg)) != SHARD_OK) { ok = 0; break; }
        ok &= test_read_stream(&L, STEPS, streams[i]);
        shard_loader_free(&L);
    }
    check(ok, "shard shuffle: read two shuffled epochs for three seeds");
    if (ok) {
        check(test_is_permutation(streams[0], TEST_W) && test_is_permutation(streams[0] + TEST_W, TEST_W),
              "shard shuffle: each epoch reads every window exactly once, each a whole window");
        check(memcmp(streams[0], streams[1], sizeof(streams[0])) == 0, "shard shuffle: same seed, same order");
        check(memcmp(streams[0], streams[2], TEST_W * sizeof(int)) != 0, "shard shuffle: another seed, another order");
        check(memcmp(streams[0], streams[0] + TEST_W, TEST_W * sizeof(int)) != 0,
              "shard shuffle: the next epoch is reshuffled");
        int sequential = 1;
        for (int k = 0; k < TEST_W; k++) { sequential &= streams[0][k] == k; }
        check(!sequential, "shard shuffle: the shuffled order is not the sequential one");
    }
    // the shard order is shuffled too: over 10 seeds, epoch 0 does not always start in the same shard
    int first_in_shard0 = 0;
    for (uint64_t seed = 0; seed < 10 && ok; seed++) {
        ShardLoader L;
        char msg[SHARD_MSG_CAP];
        ShardLoaderConfig cfg = test_corpus_config(pattern, 1, 0, 1, 1, seed);
        int first[1];
        ok = shard_loader_init(&L, &cfg, msg, sizeof(msg)) == SHARD_OK;
        if (ok) {
            ok = test_read_stream(&L, 1, first);
            first_in_shard0 += first[0] < test_shard_first_window[1];
            shard_loader_free(&L);
        }
    }
    check(ok && first_in_shard0 < 10, "shard shuffle: shards are visited in a shuffled order too (%d of 10 seeds start "
          "in shard 0)", first_in_shard0);
    test_remove_dir(dir);
}

// Fisher-Yates must draw every permutation equally often: 24000 shuffles of 4 items,
// each of the 24 orders expected 1000 times (binomial sd 31); we allow +-150 (~5 sd)
static void test_shard_shuffle_uniform(void) {
    int counts[24] = {0};
    for (uint64_t trial = 0; trial < 24000; trial++) {
        uint64_t state = shard_rng_state(42, (int64_t)trial, 0);
        int64_t a[4] = {0, 1, 2, 3};
        fisher_yates_int64(a, 4, &state);
        int rank = 0; // the permutation's Lehmer code, 0..23
        for (int i = 0; i < 4; i++) {
            int smaller = 0;
            for (int j = i + 1; j < 4; j++) { smaller += a[j] < a[i]; }
            rank = rank * (4 - i) + smaller;
        }
        counts[rank]++;
    }
    int lo = 24000, hi = 0;
    for (int i = 0; i < 24; i++) { lo = counts[i] < lo ? counts[i] : lo; hi = counts[i] > hi ? counts[i] : hi; }
    check(lo >= 850 && hi <= 1150, "shard shuffle: all 24 orders of 4 windows equally likely (counts %d..%d, want 1000 +- 150)",
          lo, hi);
}

// P ranks with batch B must read, step by step, exactly what one rank with batch P*B reads:
// so the ranks' windows in a step are disjoint and, over an epoch, cover each window once
static void test_shard_rank_slicing(void) {
    char dir[64], pattern[128];
    if (!test_make_dir(dir, sizeof(dir)) || !test_write_corpus(dir)) { check(0, "shard ranks: make test shards"); return; }
    snprintf(pattern, sizeof(pattern), "%s/corpus_*.bin", dir);
    const int setups[2][2] = {{3, 2}, {2, 3}}; // (ranks, B): 6 windows a step; 21 is no multiple of 6
    for (int shuffle = 0; shuffle <= 1; shuffle++) {
        for (int u = 0; u < 2; u++) {
            int P = setups[u][0], B = setups[u][1];
            enum { STEPS = 7 }; // 42 windows: two epochs, with an epoch boundary inside a step
            int ranks_stream[STEPS * 6], single_stream[STEPS * 6];
            int ok = 1;
            char msg[SHARD_MSG_CAP];
            ShardLoader ranks[3];
            for (int r = 0; r < P; r++) {
                ShardLoaderConfig cfg = test_corpus_config(pattern, B, r, P, shuffle, 77);
                ok &= shard_loader_init(&ranks[r], &cfg, msg, sizeof(msg)) == SHARD_OK;
            }
            ShardLoader single;
            ShardLoaderConfig cfg = test_corpus_config(pattern, P * B, 0, 1, shuffle, 77);
            ok &= shard_loader_init(&single, &cfg, msg, sizeof(msg)) == SHARD_OK;
            if (!ok) { check(0, "shard ranks: init (%s)", msg); break; }
            for (int k = 0; k < STEPS; k++) {
                for (int r = 0; r < P; r++) { ok &= test_read_stream(&ranks[r], 1, ranks_stream + (k * P + r) * B); }
            }
            ok &= test_read_stream(&single, STEPS, single_stream);
            check(ok && memcmp(ranks_stream, single_stream, sizeof(ranks_stream)) == 0,
                  "shard ranks: %d ranks x B=%d read what 1 rank x B=%d reads (%s)", P, B, P * B,
                  shuffle ? "shuffled" : "sequential");
            check(ok && test_is_permutation(ranks_stream, TEST_W) && test_is_permutation(ranks_stream + TEST_W, TEST_W),
                  "shard ranks: %d ranks x B=%d cover each window exactly once per epoch (%s)", P, B,
                  shuffle ? "shuffled" : "sequential");
            ShardPosition p0 = shard_loader_get_position(&ranks[0]), p1 = shard_loader_get_position(&ranks[P - 1]);
            check(memcmp(&p0, &p1, sizeof(p0)) == 0, "shard ranks: all ranks hold the same position");
            for (int r = 0; r < P; r++) { shard_loader_free(&ranks[r]); }
            shard_loader_free(&single);
        }
    }
    test_remove_dir(dir);
}

static void test_shard_wraparound(void) {
    char dir[64], pattern[128];
    if (!test_make_dir(dir, sizeof(dir)) || !test_write_corpus(dir)) { check(0, "shard wrap: make test shards"); return; }
    snprintf(pattern, sizeof(pattern), "%s/corpus_*.bin", dir);
    ShardLoader L;
    char msg[SHARD_MSG_CAP];
    ShardLoaderConfig cfg = test_corpus_config(pattern, 2, 0, 1, 0, 0);
    if (shard_loader_init(&L, &cfg, msg, sizeof(msg)) != SHARD_OK) { check(0, "shard wrap: init (%s)", msg); return; }
    int stream[2 * 11];
    int ok = test_read_stream(&L, 10, stream); // windows 0..19
    ShardPosition before = shard_loader_get_position(&L);
    ok &= test_read_stream(&L, 1, stream + 20); // window 20, then window 0 of epoch 1
    ShardPosition after = shard_loader_get_position(&L);
    check(ok && before.epoch == 0 && before.window_in_epoch == 20, "shard wrap: after 10 batches of 2, epoch 0 window 20");
    check(ok && stream[20] == TEST_W - 1 && stream[21] == 0,
          "shard wrap: the batch at the epoch end holds the last window and then the first (got %d, %d)",
          stream[20], stream[21]);
    check(after.epoch == 1 && after.window_in_epoch == 1, "shard wrap: then the position is epoch 1 window 1 (got %lld, %lld)",
          (long long)after.epoch, (long long)after.window_in_epoch);
    shard_loader_reset(&L);
    ok = test_read_stream(&L, 1, stream);
    check(ok && stream[0] == 0 && stream[1] == 1 && shard_loader_get_position(&L).epoch == 0,
          "shard wrap: reset goes back to epoch 0 window 0");
    shard_loader_free(&L);
    test_remove_dir(dir);
}

static void test_shard_position_restore(void) {
    char dir[64], pattern[128];
    if (!test_make_dir(dir, sizeof(dir)) || !test_write_corpus(dir)) { check(0, "shard restore: make test shards"); return; }
    snprintf(pattern, sizeof(pattern), "%s/corpus_*.bin", dir);
    char msg[SHARD_MSG_CAP];
    ShardLoader a, b, c;
    ShardLoaderConfig cfg = test_corpus_config(pattern, 2, 0, 1, 1, 99);
    int ok = shard_loader_init(&a, &cfg, msg, sizeof(msg)) == SHARD_OK;
    ok &= shard_loader_init(&b, &cfg, msg, sizeof(msg)) == SHARD_OK;
    ShardLoaderConfig other_seed = test_corpus_config(pattern, 2, 0, 1, 1, 100);
    ok &= shard_loader_init(&c, &other_seed, msg, sizeof(msg)) == SHARD_OK;
    if (!ok) { check(0, "shard restore: init (%s)", msg); test_remove_dir(dir); return; }
    // save in the middle of epoch 1 (36 windows read), then compare the next 12 batches (crossing
    // into epoch 2) with a fresh loader restored to the saved position; batches compare raw
    int inputs[8], targets[8], inputs2[8], targets2[8];
    for (int k = 0; k < 18; k++) { ok &= shard_loader_next_batch(&a, inputs, targets, msg, sizeof(msg)) == SHARD_OK; }
    ShardPosition saved = shard_loader_get_position(&a);
    int rc = shard_loader_set_position(&b, &saved, msg, sizeof(msg));
    check(rc == SHARD_OK, "shard restore: set_position accepts a position from the same data and seed");
    int same = ok && rc == SHARD_OK;
    for (int k = 0; k < 12 && same; k++) {
        same &= shard_loader_next_batch(&a, inputs, targets, msg, sizeof(msg)) == SHARD_OK;
        same &= shard_loader_next_batch(&b, inputs2, targets2, msg, sizeof(msg)) == SHARD_OK;
        same &= memcmp(inputs, inputs2, sizeof(inputs)) == 0 && memcmp(targets, targets2, sizeof(targets)) == 0;
    }
    check(same, "shard restore: a restored loader gives identical batches, across the epoch boundary");
    ShardPosition pa = shard_loader_get_position(&a), pb = shard_loader_get_position(&b);
    check(memcmp(&pa, &pb, sizeof(pa)) == 0 && pa.epoch == 2 && pa.window_in_epoch == 60 - 2 * TEST_W,
          "shard restore: and ends at the same position, epoch 2 window %d", 60 - 2 * TEST_W);
    msg[0] = '\0';
    rc = shard_loader_set_position(&c, &saved, msg, sizeof(msg));
    check(rc == SHARD_ERR_POSITION && strstr(msg, dir) != NULL,
          "shard restore: a position saved with another seed is refused, naming the data (%s)", msg);
    ShardPosition bad = saved;
    bad.window_in_epoch = TEST_W;
    rc = shard_loader_set_position(&b, &bad, msg, sizeof(msg));
    check(rc == SHARD_ERR_POSITION, "shard restore: a window index past the epoch is refused (%s)", msg);
    shard_loader_free(&a);
    shard_loader_free(&b);
    shard_loader_free(&c);
    test_remove_dir(dir);
}

// one bad-shard case: the loader must return `expected` with a message naming `name`
static void test_shard_bad_case(const char* what, const char* pattern, const char* name, int B, int expected) {
    ShardLoader L;
    char msg[SHARD_MSG_CAP] = "";
    ShardLoaderConfig cfg = {pattern, "--train_data", B, TEST_T, TEST_SHARD_VOCAB, 0, 1, 0, 0};
    int rc = shard_loader_init(&L, &cfg, msg, sizeof(msg));
    check(rc == expected && strstr(msg, name) != NULL && strstr(msg, "hint") != NULL,
          "bad shard, %s: error %d (want %d), message names %s and a fix: %s", what, rc, expected, name, msg);
    if (rc == SHARD_OK) { shard_loader_free(&L); }
}

static void test_shard_bad_files(void) {
    char dir[64];
    if (!test_make_dir(dir, sizeof(dir))) { check(0, "bad shards: make temp dir"); return; }
    int tokens[64];
    for (int i = 0; i < 64; i++) { tokens[i] = i; }
    char path[256];
    // B=2, T=4 needs 9 tokens; each case is a single file globbed by its own name
    struct { const char* name; int32_t magic, version, count; int n; int bad_token; int expected; } cases[] = {
        {"good.bin", SHARD_MAGIC, SHARD_VERSION, 9, 9, -1, SHARD_OK},
        {"magic.bin", SHARD_MAGIC + 1, SHARD_VERSION, 20, 20, -1, SHARD_ERR_MAGIC},
        {"version.bin", SHARD_MAGIC, SHARD_VERSION + 1, 20, 20, -1, SHARD_ERR_VERSION},
        {"truncated.bin", SHARD_MAGIC, SHARD_VERSION, 20, 19, -1, SHARD_ERR_SIZE},
        {"toolong.bin", SHARD_MAGIC, SHARD_VERSION, 20, 21, -1, SHARD_ERR_SIZE},
        {"negative.bin", SHARD_MAGIC, SHARD_VERSION, -1, 20, -1, SHARD_ERR_SIZE},
        {"fewtokens.bin", SHARD_MAGIC, SHARD_VERSION, 8, 8, -1, SHARD_ERR_TOO_FEW_TOKENS},
        {"vocab.bin", SHARD_MAGIC, SHARD_VERSION, 20, 20, TEST_SHARD_VOCAB, SHARD_ERR_TOKEN_RANGE},
        {"vocabok.bin", SHARD_MAGIC, SHARD_VERSION, 20, 20, TEST_SHARD_VOCAB - 1, SHARD_OK},
    };
    int ncases = (int)(sizeof(cases) / sizeof(cases[0]));
    for (int i = 0; i < ncases; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, cases[i].name);
        tokens[17] = cases[i].bad_token >= 0 ? cases[i].bad_token : 17;
        if (!test_write_shard(path, cases[i].magic, cases[i].version, cases[i].count, tokens, cases[i].n)) {
            check(0, "bad shards: write %s", path);
            continue;
        }
        if (cases[i].expected == SHARD_OK) {
            ShardLoader L;
            char msg[SHARD_MSG_CAP];
            ShardLoaderConfig cfg = {path, "--train_data", 2, TEST_T, TEST_SHARD_VOCAB, 0, 1, 0, 0};
            int rc = shard_loader_init(&L, &cfg, msg, sizeof(msg));
            check(rc == SHARD_OK, "bad shards: the control case %s loads (%s)", cases[i].name, rc ? msg : "ok");
            if (rc == SHARD_OK) { shard_loader_free(&L); }
        } else {
            test_shard_bad_case(cases[i].name, path, path, 2, cases[i].expected);
        }
    }
    // shorter than the header
    snprintf(path, sizeof(path), "%s/short.bin", dir);
    FILE* f = fopen(path, "wb");
    if (f != NULL) { fwrite("not a shard", 1, 11, f); fclose(f); }
    test_shard_bad_case("shorter than the header", path, path, 2, SHARD_ERR_HEADER);
    // an empty glob names the pattern; a glob with one bad file among good ones names the bad one
    char pattern[256];
    snprintf(pattern, sizeof(pattern), "%s/nothing_*.bin", dir);
    test_shard_bad_case("empty glob", pattern, pattern, 2, SHARD_ERR_GLOB_EMPTY);
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/mix_%d.bin", dir, i);
        test_write_shard(path, i == 1 ? SHARD_MAGIC + 1 : SHARD_MAGIC, SHARD_VERSION, 20, tokens, 20);
    }
    snprintf(pattern, sizeof(pattern), "%s/mix_*.bin", dir);
    snprintf(path, sizeof(path), "%s/mix_1.bin", dir);
    test_shard_bad_case("a bad shard among good ones", pattern, path, 2, SHARD_ERR_MAGIC);
    // settings and shard_validate on its own
    test_shard_bad_case("B = 0", pattern, pattern, 0, SHARD_ERR_ARGS);
    char msg[SHARD_MSG_CAP];
    int64_t n = -1;
    snprintf(path, sizeof(path), "%s/missing.bin", dir);
    int rc = shard_validate(path, 1, 0, &n, msg, sizeof(msg));
    check(rc == SHARD_ERR_OPEN && strstr(msg, path) != NULL, "bad shards: a missing file: %s", msg);
    snprintf(path, sizeof(path), "%s/vocab.bin", dir);
    rc = shard_validate(path, 1, 0, &n, msg, sizeof(msg));
    check(rc == SHARD_OK && n == 20, "bad shards: vocab_size 0 skips the id check (%lld tokens)", (long long)n);
    test_remove_dir(dir);
}

// a sparse shard bigger than 2^31 bytes: its last window must be read from the right place
static void test_shard_large_offsets(void) {
    char dir[64], path[128];
    if (!test_make_dir(dir, sizeof(dir))) { check(0, "large shard: make temp dir"); return; }
    snprintf(path, sizeof(path), "%s/large.bin", dir);
    const int T = 1024;
    const int32_t count = 1100000001; // 2.2e9 bytes of tokens, so the last windows lie past byte 2^31
    int64_t last_window = (int64_t)(count - 1) / T - 1;
    int64_t last_offset = SHARD_HEADER_BYTES + last_window * T * SHARD_TOKEN_BYTES;
    int ok = test_write_shard(path, SHARD_MAGIC, SHARD_VERSION, count, NULL, 0);
    int fd = ok ? open(path, O_WRONLY) : -1;
    ok = fd >= 0 && ftruncate(fd, SHARD_HEADER_BYTES + (off_t)count * SHARD_TOKEN_BYTES) == 0; // holes read as 0
    unsigned char marker[4] = {7, 0, 9, 0}; // tokens 7, 9 at the start of the last window
    ok = ok && pwrite(fd, marker, sizeof(marker), (off_t)last_offset) == (ssize_t)sizeof(marker);
    if (fd >= 0) { close(fd); }
    if (!ok) { check(0, "large shard: make a sparse %lld-byte file", (long long)last_offset); test_remove_dir(dir); return; }
    ShardLoader L;
    char msg[SHARD_MSG_CAP];
    // vocab 65536 skips the id scan of 2.2 GB (ids are uint16, so none can be out of range)
    ShardLoaderConfig cfg = {path, "--train_data", 1, T, SHARD_MAX_VOCAB, 0, 1, 0, 0};
    int rc = shard_loader_init(&L, &cfg, msg, sizeof(msg));
    check(rc == SHARD_OK && L.num_windows == last_window + 1, "large shard: a %lld-byte shard validates (%s)",
          (long long)(SHARD_HEADER_BYTES + (int64_t)count * 2), rc ? msg : "ok");
    if (rc == SHARD_OK) {
        ShardPosition p = shard_loader_get_position(&L);
        p.window_in_epoch = last_window;
        int* inputs = (int*)malloc(2 * (size_t)T * sizeof(int));
        int* targets = inputs + T;
        rc = shard_loader_set_position(&L, &p, msg, sizeof(msg));
        rc = rc == SHARD_OK ? shard_loader_next_batch(&L, inputs, targets, msg, sizeof(msg)) : rc;
        check(rc == SHARD_OK && inputs[0] == 7 && inputs[1] == 9 && targets[0] == 9 && inputs[2] == 0,
              "large shard: the last window, at byte offset %lld > 2^31, is read from the right place",
              (long long)last_offset);
        free(inputs);
        shard_loader_free(&L);
    }
    test_remove_dir(dir);
}

// writes a decoder file with entries[0..V) (all fields from the arguments, so bad files can be made)
static int test_write_decoder(const char* path, int32_t magic, int32_t V, const char** entries, int32_t total) {
    FILE* f = fopen(path, "wb");
    if (f == NULL) { return 0; }
    int32_t longest = 0;
    for (int i = 0; i < V; i++) { longest = (int32_t)strlen(entries[i]) > longest ? (int32_t)strlen(entries[i]) : longest; }
    int32_t h[DECODER_HEADER_INTS] = {magic, DECODER_VERSION, V, 1, 2, 0, longest, total};
    unsigned char b[4];
    int ok = 1;
    for (int i = 0; i < DECODER_HEADER_INTS; i++) {
        for (int k = 0; k < 4; k++) { b[k] = (unsigned char)((uint32_t)h[i] >> (8 * k)); }
        ok &= fwrite(b, 1, 4, f) == 4;
    }
    for (int i = 0; i < V; i++) {
        size_t n = strlen(entries[i]);
        b[0] = (unsigned char)(n & 0xFF); b[1] = (unsigned char)(n >> 8);
        ok &= fwrite(b, 1, 2, f) == 2 && fwrite(entries[i], 1, n, f) == n;
    }
    return fclose(f) == 0 && ok;
}

static void test_decoder_file(void) {
    char dir[64], path[128];
    if (!test_make_dir(dir, sizeof(dir))) { check(0, "decoder: make temp dir"); return; }
    const char* entries[5] = {"", "", " the", "\n", "\x1b"}; // unk, bos, a word, a newline, an escape byte
    snprintf(path, sizeof(path), "%s/decoder.bin", dir);
    Decoder d;
    char msg[SHARD_MSG_CAP];
    int rc = test_write_decoder(path, DECODER_MAGIC, 5, entries, 6) ? decoder_load(&d, path, msg, sizeof(msg)) : -1;
    check(rc == SHARD_OK && d.vocab_size == 5 && d.bos_id == 1 && d.eos_id == 2,
          "decoder: loads a 5-entry file (%s)", rc ? msg : "ok");
    if (rc == SHARD_OK) {
        int ids[6] = {1, 2, 3, 2, 4, 99}; // 99: outside the vocab, adds nothing
        char out[64], small[5];
        size_t n = decoder_decode(&d, ids, 6, out, sizeof(out));
        check(n == 10 && strcmp(out, " the\n the\x1b") == 0, "decoder: decodes by concatenating entries");
        n = decoder_decode(&d, ids, 6, small, sizeof(small));
        check(n == 10 && strcmp(small, " the") == 0, "decoder: truncates to the buffer and returns the full length");
        FILE* tmp = tmpfile();
        if (tmp != NULL) {
            for (int i = 0; i < 6; i++) { decoder_print_token(&d, ids[i], tmp); }
            rewind(tmp);
            char printed[64] = "";
            size_t got = fread(printed, 1, sizeof(printed) - 1, tmp);
            printed[got] = '\0';
            fclose(tmp);
            check(strcmp(printed, " the\n the\\x1B") == 0, "decoder: printing shows control bytes as \\xNN, keeps newlines");
        }
        decoder_free(&d);
    }
    // bad files take the error path and name the file
    struct { const char* name; int32_t magic, V, total; int expected; } bad[] = {
        {"magic.bin", DECODER_MAGIC + 1, 5, 6, SHARD_ERR_MAGIC},
        {"total.bin", DECODER_MAGIC, 5, 7, SHARD_ERR_SIZE},   // header claims one byte more than there is
        {"vocab.bin", DECODER_MAGIC, 6, 6, SHARD_ERR_SIZE},   // header claims an entry more
    };
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, bad[i].name);
        msg[0] = '\0';
        rc = test_write_decoder(path, bad[i].magic, 5, entries, 6) ? -1 : -2;
        if (rc == -1) { // rewrite the header fields under test
            FILE* f = fopen(path, "r+b");
            int32_t fields[3] = {bad[i].magic, bad[i].V, bad[i].total};
            long where[3] = {0, 8, 28};
            for (int k = 0; f != NULL && k < 3; k++) {
                unsigned char b[4];
                for (int j = 0; j < 4; j++) { b[j] = (unsigned char)((uint32_t)fields[k] >> (8 * j)); }
                fseek(f, where[k], SEEK_SET);
                fwrite(b, 1, 4, f);
            }
            if (f != NULL) { fclose(f); }
            rc = decoder_load(&d, path, msg, sizeof(msg));
        }
        check(rc == bad[i].expected && strstr(msg, path) != NULL, "decoder: bad file %s takes the error path: %s",
              bad[i].name, msg);
    }
    snprintf(path, sizeof(path), "%s/missing.bin", dir);
    rc = decoder_load(&d, path, msg, sizeof(msg));
    check(rc == SHARD_ERR_OPEN && strstr(msg, path) != NULL, "decoder: a missing file takes the error path: %s", msg);
    test_remove_dir(dir);
}

// the committed data/ (run from the repository root): both splits validate against
// the tokenizer's vocab and the val shard decodes to the chapter the split rule puts first
static void test_embedded_data(void) {
    char msg[SHARD_MSG_CAP];
    Decoder d;
    int rc = decoder_load(&d, DEFAULT_DECODER, msg, sizeof(msg));
    check(rc == SHARD_OK && d.vocab_size == TEST_KJV_VOCAB && d.bos_id == 1 && d.eos_id == 2,
          "data/: %s loads, V=%d, BOS 1, EOS 2 (%s)", DEFAULT_DECODER, TEST_KJV_VOCAB, rc ? msg : "ok");
    if (rc != SHARD_OK) { return; }
    const char* patterns[2] = {DEFAULT_TRAIN_DATA, DEFAULT_VAL_DATA};
    for (int i = 0; i < 2; i++) {
        ShardLoader L;
        ShardLoaderConfig cfg = {patterns[i], i ? "--val_data" : "--train_data", 4, 256, TEST_KJV_VOCAB, 0, 1, 0, 0};
        rc = shard_loader_init(&L, &cfg, msg, sizeof(msg));
        check(rc == SHARD_OK, "data/: %s validates at B=4, T=256, V=%d (%s)", patterns[i], TEST_KJV_VOCAB, rc ? msg : "ok");
        if (rc != SHARD_OK) { continue; }
        if (i == 1) {
            // chapter 19 (i % 20 == 19) is Genesis 20: the val shard starts with BOS and that chapter
            int inputs[4 * 256], targets[4 * 256];
            rc = shard_loader_next_batch(&L, inputs, targets, msg, sizeof(msg));
            char text[4096];
            size_t n = rc == SHARD_OK ? decoder_decode(&d, inputs, 256, text, sizeof(text)) : 0;
            int printable = n > 0 && n < sizeof(text);
            for (size_t k = 0; k < n && printable; k++) {
                printable = (text[k] >= 0x20 && text[k] < 0x7F) || text[k] == '\n';
            }
            check(rc == SHARD_OK && inputs[0] == d.bos_id, "data/: the val shard starts with BOS");
            check(printable && strncmp(text, " Genesis 20\n1 And Abraham journeyed", 35) == 0 &&
                  strstr(text, " the ") != NULL && strstr(text, " God ") != NULL,
                  "data/: its first 256 tokens decode to printable text, Genesis 20: '...%.40s...'", text + 12);
        }
        shard_loader_free(&L);
    }
    decoder_free(&d);
}

static void test_data_all(void) {
    test_shard_windows_exact();
    test_shard_shuffle();
    test_shard_shuffle_uniform();
    test_shard_rank_slicing();
    test_shard_wraparound();
    test_shard_position_restore();
    test_shard_bad_files();
    test_shard_large_offsets();
    test_decoder_file();
    test_embedded_data();
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    test_gemm();
    test_expf_simd();
    test_config_validation();
    test_data_all();
    if (argc > 1) {
        for (int i = 1; i < argc; i++) { test_model_reference(argv[i]); }
    } else {
        test_model_reference("dev/reference/model_tiny.bin");
        test_model_reference("dev/reference/model_awkward.bin");
    }
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
