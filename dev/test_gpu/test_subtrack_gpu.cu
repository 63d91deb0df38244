/*
test_subtrack_gpu.cu: the GPU half of the tests. checks train_llama_subtrack.cu
against the CPU reference train_llama_subtrack.c (which test_subtrack.c checks
against transformers and PyTorch), on the same weights and batches.

    make test                                   # runs it after ./test_subtrack
    ./dev/test_gpu/test_subtrack_gpu            # on a real GPU (make train builds it)
    ./dev/test_gpu/test_subtrack_gpu_emu        # on the CPU, under dev/cuda_emu

it includes the CUDA trainer with TESTING defined (and so the C trainer, as
cpu::), so it tests the very code that trains. it says at the start whether it
runs on a GPU or under the CPU harness, prints PASS/FAIL per check, ends with
"N passed, N failed" and exits non-zero on any failure.
*/
#define TESTING
#include "../../train_llama_subtrack.cu"

// ----------------------------------------------------------------------------
// the check api (as in test_subtrack.c)

#include "../test_check.h"

// max |a - b| over n entries, and max |b| (the reference's scale); NaN counts as an error
static void max_errors(const float* a, const float* b, size_t n, double* max_abs, double* scale) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= e)) { e = d; }
        if (fabs((double)b[i]) > s) { s = fabs((double)b[i]); }
    }
    *max_abs = e;
    *scale = s;
}

static float* to_host(const float* device, size_t n) {
    float* h = (float*)cpu::malloc_check(n * sizeof(float), "device copy");
    cuda_check(cudaMemcpy(h, device, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

// fp32 tolerance, GPU against CPU: both compute in fp32, with different
// summation orders (cuBLAS blocking and warp-shuffle trees here, the CPU
// gemm's k order and double accumulators there). through two layers and a
// backward pass that leaves errors of about 1e-7 of each tensor's scale (the
// largest magnitude); 1e-5 is the CPU test's tolerance against transformers,
// with an order of magnitude of headroom, and any real bug (a wrong sign,
// index or transpose) shows at 1e-3 or above.
#define GPU_FP32_REL_TOL 1e-5

// ----------------------------------------------------------------------------
// test cases: a model config, weights and two micro-batches

typedef struct {
    char label[64];
    cpu::LlamaConfig cfg;
    int B, T;
    float* params;     // (num_params)
    int* inputs[2];    // (B, T) two micro-batches
    int* targets[2];   // (B, T), some IGNORE_INDEX
} GpuTestCase;

static void test_case_free(GpuTestCase* tc) {
    free(tc->params);
    for (int i = 0; i < 2; i++) { free(tc->inputs[i]); free(tc->targets[i]); }
}

// the second micro-batch: the first one's tokens rotated by one position, so
// it differs everywhere but stays in range, with the same ignored positions
static void second_batch_from_first(GpuTestCase* tc) {
    size_t BT = (size_t)tc->B * tc->T;
    tc->inputs[1] = (int*)cpu::malloc_check(BT * sizeof(int), "inputs");
    tc->targets[1] = (int*)cpu::malloc_check(BT * sizeof(int), "targets");
    for (size_t i = 0; i < BT; i++) {
        tc->inputs[1][i] = tc->inputs[0][(i + 1) % BT];
        tc->targets[1][i] = tc->targets[0][(i + 1) % BT];
    }
}

// a model reference file (format: dev/reference/README.md): only its config,
// weights and batch are used; the reference outputs are test_subtrack.c's business
#define MODEL_REF_MAGIC 20261101
#define MODEL_REF_VERSION 1
#define MODEL_REF_HEADER_INTS 32

static int test_case_from_reference(GpuTestCase* tc, const char* path) {
    memset(tc, 0, sizeof *tc);
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        check(0, "open %s (%s); regenerate with python dev/reference/model_reference.py --all", path, strerror(errno));
        return 1;
    }
    int32_t h[MODEL_REF_HEADER_INTS];
    int ok = fread(h, sizeof h, 1, f) == 1 && h[0] == MODEL_REF_MAGIC && h[1] == MODEL_REF_VERSION;
    if (ok) {
        cpu::LlamaConfig c = {h[2], h[3], h[4], h[5], h[6], h[7], 0.0f, 0.0f};
        memcpy(&c.norm_eps, &h[12], sizeof(float));
        memcpy(&c.rope_theta, &h[13], sizeof(float));
        ok = cpu::llama_config_problem(&c) == NULL && h[8] > 0 && h[9] > 0;
        tc->cfg = c;
        tc->B = h[8];
        tc->T = h[9];
    }
    if (ok) {
        size_t np = cpu::parameter_count(&tc->cfg), BT = (size_t)tc->B * tc->T;
        tc->params = (float*)cpu::malloc_check(np * sizeof(float), "params");
        tc->inputs[0] = (int*)cpu::malloc_check(BT * sizeof(int), "inputs");
        tc->targets[0] = (int*)cpu::malloc_check(BT * sizeof(int), "targets");
        ok = fread(tc->params, sizeof(float), np, f) == np && fread(tc->inputs[0], sizeof(int), BT, f) == BT
          && fread(tc->targets[0], sizeof(int), BT, f) == BT;
    }
    fclose(f);
    if (!ok) {
        check(0, "read %s: not a valid model reference file", path);
        test_case_free(tc);
        return 1;
    }
    const char* base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    snprintf(tc->label, sizeof tc->label, "%s", base);
    second_batch_from_first(tc);
    return 0;
}

// random weights (norm weights away from 1, so their gradients matter) and
// tokens, every 7th target ignored
static void test_case_random(GpuTestCase* tc, const char* label, cpu::LlamaConfig c, int B, int T, uint64_t seed) {
    memset(tc, 0, sizeof *tc);
    snprintf(tc->label, sizeof tc->label, "%s", label);
    tc->cfg = c;
    tc->B = B;
    tc->T = T;
    size_t np = cpu::parameter_count(&c), BT = (size_t)B * T;
    tc->params = (float*)cpu::malloc_check(np * sizeof(float), "params");
    cpu::parameter_init(tc->params, &c, seed);
    cpu::Rng rng;
    cpu::rng_seed(&rng, seed + 1);
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &c);
    float* p = tc->params;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = cpu::tensor_numel(&spec[i]);
        if (spec[i].is_norm) {
            for (size_t j = 0; j < n; j++) { p[j] = 1.0f + 0.2f * cpu::rng_normal(&rng); }
        }
        p += n;
    }
    tc->inputs[0] = (int*)cpu::malloc_check(BT * sizeof(int), "inputs");
    tc->targets[0] = (int*)cpu::malloc_check(BT * sizeof(int), "targets");
    for (size_t i = 0; i < BT; i++) {
        tc->inputs[0][i] = (int)(cpu::rng_u64(&rng) % (uint64_t)c.V);
        tc->targets[0][i] = i % 7 == 3 ? IGNORE_INDEX : (int)(cpu::rng_u64(&rng) % (uint64_t)c.V);
    }
    second_batch_from_first(tc);
}

// ----------------------------------------------------------------------------
// forward and backward, GPU against CPU

static void compare_tensor(const char* label, const char* what, const float* gpu_host, const float* cpu_ref,
                           size_t n) {
    double e, s;
    max_errors(gpu_host, cpu_ref, n, &e, &s);
    check(s > 0 && e <= GPU_FP32_REL_TOL * s, "%s %-22s: max abs err %.3g, scale %.3g, rel %.3g (tol %.0e)",
          label, what, e, s, s > 0 ? e / s : 0.0, GPU_FP32_REL_TOL);
}

static void test_model_case(GpuTestCase* tc) {
    cpu::LlamaConfig c = tc->cfg;
    int B = tc->B, T = tc->T, BT = B * T;
    const char* label = tc->label;
    printf("--- %s: V=%d C=%d F=%d NH=%d L=%d B=%d T=%d (HS=%d)\n", label, c.V, c.C, c.F, c.NH, c.L, B, T,
           c.C / c.NH);
    cpu::Llama ref;
    cpu::llama_build(&ref, &c);
    memcpy(ref.params_memory, tc->params, ref.num_parameters * sizeof(float));
    Llama model;
    llama_build(&model, &c, DTYPE_FLOAT32);
    llama_upload_params(&model, tc->params);

    // forward, first micro-batch: logits (before the backward overwrites them), loss, per-row losses
    float loss_cpu = cpu::llama_forward(&ref, tc->inputs[0], tc->targets[0], B, T);
    float loss_gpu = llama_forward(&model, tc->inputs[0], tc->targets[0], B, T);
    float* h = to_host(model.acts.logits, (size_t)BT * c.V);
    compare_tensor(label, "logits", h, ref.acts.logits, (size_t)BT * c.V);
    free(h);
    double le = fabs((double)loss_gpu - loss_cpu);
    check(le <= GPU_FP32_REL_TOL * fabs(loss_cpu), "%s %-22s: %.7f vs CPU %.7f (abs err %.3g)",
          label, "loss", loss_gpu, loss_cpu, le);
    // intermediate activations, so a failure says where it starts
    h = to_host(model.acts.att, (size_t)c.L * B * c.NH * T * T);
    compare_tensor(label, "attention probabilities", h, ref.acts.att, (size_t)c.L * B * c.NH * T * T);
    free(h);
    h = to_host(model.acts.q, (size_t)c.L * BT * c.C);
    compare_tensor(label, "q after rope", h, ref.acts.q, (size_t)c.L * BT * c.C);
    free(h);
    h = to_host(model.acts.lse, (size_t)BT);
    compare_tensor(label, "log-sum-exp", h, ref.acts.lse, (size_t)BT);
    free(h);

    // backward over two micro-batches of half weight each, as gradient
    // accumulation does: checks that every gradient accumulates (+=)
    cpu::llama_zero_grad(&ref);
    llama_zero_grad(&model);
    cpu::llama_backward(&ref, tc->inputs[0], tc->targets[0], 0.5f);
    llama_backward(&model, tc->inputs[0], tc->targets[0], 0.5f);
    cpu::llama_forward(&ref, tc->inputs[1], tc->targets[1], B, T);
    llama_forward(&model, tc->inputs[1], tc->targets[1], B, T);
    cpu::llama_backward(&ref, tc->inputs[1], tc->targets[1], 0.5f);
    llama_backward(&model, tc->inputs[1], tc->targets[1], 0.5f);
    float* grads = to_host(model.grads_memory, model.num_parameters);
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &c);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = cpu::tensor_numel(&spec[i]);
        char what[64];
        snprintf(what, sizeof what, "grad %s", spec[i].name);
        compare_tensor(label, what, grads + off, ref.grads_memory + off, n);
        off += n;
    }
    free(grads);

    // the global norm (fixed chunk order, double) and clipping's scale
    double norm_cpu = cpu::grad_global_norm(ref.grads_memory, ref.num_parameters);
    double norm_gpu = grad_global_norm(model.grads_memory, model.num_parameters);
    check(fabs(norm_gpu - norm_cpu) <= GPU_FP32_REL_TOL * norm_cpu, "%s %-22s: %.9g vs CPU %.9g",
          label, "gradient norm", norm_gpu, norm_cpu);
    grad_scale(model.grads_memory, model.num_parameters, 0.5f);
    cpu::grad_scale(ref.grads_memory, ref.num_parameters, 0.5f);
    grads = to_host(model.grads_memory, model.num_parameters);
    compare_tensor(label, "all grads after scale", grads, ref.grads_memory, model.num_parameters);
    free(grads);

    llama_free(&model);
    cpu::llama_free(&ref);
}

// the same forward twice gives the same bits (no atomics, fixed reduction order)
static void test_determinism(GpuTestCase* tc) {
    Llama model;
    llama_build(&model, &tc->cfg, DTYPE_FLOAT32);
    llama_upload_params(&model, tc->params);
    float* g[2];
    float loss[2];
    for (int r = 0; r < 2; r++) {
        llama_zero_grad(&model);
        loss[r] = llama_forward(&model, tc->inputs[0], tc->targets[0], tc->B, tc->T);
        llama_backward(&model, tc->inputs[0], tc->targets[0], 1.0f);
        g[r] = to_host(model.grads_memory, model.num_parameters);
    }
    int same = memcmp(&loss[0], &loss[1], sizeof(float)) == 0 &&
               memcmp(g[0], g[1], model.num_parameters * sizeof(float)) == 0;
    check(same, "%s forward+backward twice: loss and every gradient bit-identical", tc->label);
    free(g[0]); free(g[1]);
    llama_free(&model);
}


// ----------------------------------------------------------------------------
// whole training steps (forward, backward, clipping, optimizer) on both
// sides from the same weights and batches, then every weight and every
// optimizer state compared

// max |S_a S_a^T - S_b S_b^T|: singular vectors have arbitrary signs, the
// subspace's projector does not
static double projector_diff(const float* A, const float* Bm, int p, int r) {
    double worst = 0.0;
    for (int i = 0; i < p; i++) {
        for (int j = 0; j < p; j++) {
            double a = 0.0, b = 0.0;
            for (int k = 0; k < r; k++) {
                a += (double)A[(size_t)i * r + k] * A[(size_t)j * r + k];
                b += (double)Bm[(size_t)i * r + k] * Bm[(size_t)j * r + k];
            }
            double d = fabs(a - b);
            if (!(d <= worst)) { worst = d; }
        }
    }
    return worst;
}

// the tolerance for states after several whole steps. each step's inputs
// (gradients) already differ by ~1e-7 relative (above), and the optimizer
// divides by sqrt(V) + eps, which amplifies relative differences of small
// gradient entries; the subspace (SVD, power iteration) turns them into
// differences of S of about (gradient error) / (spectral gap). measured:
// see the PASS lines; 1e-4 of scale keeps an order of magnitude of headroom
// over them and is still 100x below what a wrong sign or index gives.
#define GPU_STEPS_REL_TOL 1e-4

// same_grads = 0: each side runs its own forward and backward (the whole
// trainer step). same_grads = 1: the CPU's clipped gradients are copied to the
// GPU each step, which isolates the optimizers from the model's rounding
static void test_training_steps(GpuTestCase* tc, const char* optimizer, const char* method, int steps,
                                int same_grads) {
    cpu::LlamaConfig c = tc->cfg;
    int B = tc->B, T = tc->T;
    cpu::TrainConfig t;
    cpu::train_config_defaults(&t);
    snprintf(t.optimizer, sizeof t.optimizer, "%s", optimizer);
    snprintf(t.subspace_update_method, sizeof t.subspace_update_method, "%s", method);
    t.rank = 4;
    t.subspace_update_interval = 2;   // subspace updates at steps 2 and 4, after the SVD at step 0
    t.num_training_steps = steps;
    t.warmup_steps = 2;
    t.lr = 1e-2f;
    t.weight_decay = 0.01f;
    char label[160];
    snprintf(label, sizeof label, "%s %s%s%s, %d %s", tc->label, optimizer,
             strcmp(optimizer, "adamw") == 0 ? "" : " ", strcmp(optimizer, "adamw") == 0 ? "" : method, steps,
             same_grads ? "optimizer steps on the CPU's gradients" : "whole trainer steps");

    cpu::Llama ref;
    cpu::llama_build(&ref, &c);
    memcpy(ref.params_memory, tc->params, ref.num_parameters * sizeof(float));
    cpu::Optimizer hopt;
    const char* problem = cpu::optimizer_build(&hopt, &c, &t);
    Llama model;
    llama_build(&model, &c, DTYPE_FLOAT32);
    llama_upload_params(&model, tc->params);
    Optimizer gopt;
    const char* gproblem = optimizer_build(&gopt, &c, &t);
    if (problem != NULL || gproblem != NULL) {
        check(0, "%s: optimizer_build: %s", label, problem ? problem : gproblem);
        return;
    }
    for (int step = 0; step < steps; step++) {
        const int* in = tc->inputs[step % 2];
        const int* tg = tc->targets[step % 2];
        cpu::llama_zero_grad(&ref);
        cpu::llama_forward(&ref, in, tg, B, T);
        cpu::llama_backward(&ref, in, tg, 1.0f);
        double ncpu = cpu::grad_global_norm(ref.grads_memory, ref.num_parameters);
        if (ncpu > t.grad_clipping) { cpu::grad_scale(ref.grads_memory, ref.num_parameters, (float)(t.grad_clipping / ncpu)); }
        if (same_grads) {
            cuda_check(cudaMemcpy(model.grads_memory, ref.grads_memory, ref.num_parameters * sizeof(float),
                                  cudaMemcpyHostToDevice));
        } else {
            llama_zero_grad(&model);
            llama_forward(&model, in, tg, B, T);
            llama_backward(&model, in, tg, 1.0f);
            double ngpu = grad_global_norm(model.grads_memory, model.num_parameters);
            if (ngpu > t.grad_clipping) {
                grad_scale(model.grads_memory, model.num_parameters, (float)(t.grad_clipping / ngpu));
            }
        }
        float lr = cpu::lr_at_step(&t, step);
        cpu::optimizer_step(&hopt, &ref, lr);
        optimizer_step(&gopt, &model, lr);
    }

    // weights: compared on W - W0, since W0 is exact and only updates carry error
    float* w = to_host(model.params_memory, model.num_parameters);
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < model.num_parameters; i++) {
        double d = fabs((double)w[i] - ref.params_memory[i]);
        if (!(d <= e)) { e = d; }
        s = fmax(s, fabs((double)ref.params_memory[i] - tc->params[i]));
    }
    check(s > 0 && e <= GPU_STEPS_REL_TOL * s, "%s: weights, max err %.3g of update scale %.3g, rel %.3g (tol %.0e)",
          label, e, s, e / s, GPU_STEPS_REL_TOL);
    free(w);
    // AdamW moments
    optimizer_download(&gopt);
    max_errors(gopt.host.adam_m, hopt.adam_m, hopt.num_adam, &e, &s);
    check(s > 0 && e <= GPU_STEPS_REL_TOL * s, "%s: AdamW m (%zu floats), rel err %.3g", label, hopt.num_adam, e / s);
    max_errors(gopt.host.adam_v, hopt.adam_v, hopt.num_adam, &e, &s);
    check(s > 0 && e <= GPU_STEPS_REL_TOL * s, "%s: AdamW v, rel err %.3g", label, e / s);
    // low-rank states, matrix by matrix; the worst of each kind is reported
    if (hopt.num_lowrank > 0) {
        double worst_p = 0.0, worst_m = 0.0, worst_v = 0.0, worst_lim = 0.0;
        int set_same = 1;
        for (int k = 0; k < hopt.num_lowrank; k++) {
            const cpu::LowRankState* hs = &hopt.lowrank[k];
            const float* g = gopt.host.lowrank_memory + (hs->memory - hopt.lowrank_memory);
            size_t sm = (size_t)hs->p * hs->r, mq = (size_t)hs->q * hs->r;
            worst_p = fmax(worst_p, projector_diff(g, hs->S, hs->p, hs->r));
            max_errors(g + sm, hs->M, mq, &e, &s);
            worst_m = fmax(worst_m, s > 0 ? e / s : e);
            max_errors(g + sm + mq, hs->V, mq, &e, &s);
            worst_v = fmax(worst_v, s > 0 ? e / s : e);
            const float* lim = g + sm + 2 * mq;
            if (t.recovery_scaling) {
                worst_lim = fmax(worst_lim, fabs((double)lim[0] - hs->limiter[0]) / fmax(fabs((double)hs->limiter[0]), 1e-30));
            }
            set_same &= lim[1] == hs->limiter[1];
        }
        check(worst_p <= GPU_STEPS_REL_TOL, "%s: S of %d matrices, worst projector err %.3g", label,
              hopt.num_lowrank, worst_p);
        check(worst_m <= GPU_STEPS_REL_TOL, "%s: low-rank M, worst rel err %.3g", label, worst_m);
        check(worst_v <= GPU_STEPS_REL_TOL, "%s: low-rank V, worst rel err %.3g", label, worst_v);
        check(worst_lim <= GPU_STEPS_REL_TOL && set_same, "%s: limiter prev, worst rel err %.3g, prev_set equal: %s",
              label, worst_lim, set_same ? "yes" : "no");
    }
    check(gopt.host.step == hopt.step, "%s: step counter %d vs CPU %d", label, gopt.host.step, hopt.step);
    optimizer_free(&gopt);
    cpu::optimizer_free(&hopt);
    llama_free(&model);
    cpu::llama_free(&ref);
}

// ----------------------------------------------------------------------------
// bf16 mode (--dtype bfloat16) against the CPU's fp32
//
// where the error comes from: every activation and activation gradient is
// stored in bf16, an 8-bit mantissa, so each store rounds by up to
// u = 2^-9 = 1.95e-3 relative (half that on average), and the matrix
// products read bf16 copies of the weights (one more rounding of u). fp32
// accumulation everywhere keeps the sums themselves exact to ~1e-7, so the
// error is a sum of independent roundings of size u carried through the
// graph: about 2 (weights and input) per product, one per kernel, and the
// residual stream is re-rounded after every block.
//   logits: the last of ~10 roundings in a row through 2 layers, mostly
//     uncorrelated, so sqrt(10) u ~ 6e-3 of scale expected at worst; the
//     tolerance is 2e-2 (3x that; a wrong dtype or a lost rounding step
//     gives O(1) or 0 respectively, see the exercised check).
//   loss: a mean over B*T rows of lse - logit[target], whose rounding errors
//     mostly average out; 1e-2 relative.
//   gradients: a backward pass doubles the chain (~20-30 roundings, and the
//     products sum over B*T rows of rounded dout * inp), sqrt(30) u ~ 1e-2
//     of scale expected at worst; the tolerance is 4e-2 (that times 4: small
//     tensors such as the norm weights' gradient take a max over few
//     entries, the largest relative spread).
// measured (see the PASS lines; README.md, "How the CUDA trainer is checked", lists them): at most
// a few 1e-3 for logits and loss, up to ~1e-2 for gradients.
#define BF16_LOGITS_REL_TOL 2e-2
#define BF16_LOSS_REL_TOL 2e-3
#define BF16_GRAD_REL_TOL 4e-2
// bf16 must really be in use: its logits' error must be this many times the
// fp32 GPU path's error on the same case (fp32 gives ~1e-7 of scale, bf16
// ~1e-3, so 100 leaves an order of magnitude either side)
#define BF16_EXERCISED_FACTOR 100.0

static float* to_host_dtype(const void* device, size_t n, Dtype dt) {
    float* h = (float*)cpu::malloc_check(n * sizeof(float), "device copy");
    device_to_host_float(h, device, n, dt);
    return h;
}

static double rel_error(const float* a, const float* b, size_t n) {
    double e, s;
    max_errors(a, b, n, &e, &s);
    return s > 0 ? e / s : (e > 0 ? INFINITY : 0.0);
}

// forward (logits, loss) and backward over two half-weight micro-batches
// (every gradient), for one dtype on the GPU; the results come back in fp32
typedef struct {
    float loss;
    float* logits;  // (B,T,V)
    float* grads;   // (num_parameters)
} GpuRun;

static GpuRun gpu_forward_backward(GpuTestCase* tc, Dtype dt) {
    int B = tc->B, T = tc->T;
    Llama model;
    llama_build(&model, &tc->cfg, dt);
    llama_upload_params(&model, tc->params);
    GpuRun r;
    r.loss = llama_forward(&model, tc->inputs[0], tc->targets[0], B, T);
    r.logits = to_host_dtype(model.acts.logits, (size_t)B * T * tc->cfg.V, dt);
    llama_zero_grad(&model);
    llama_backward(&model, tc->inputs[0], tc->targets[0], 0.5f);
    llama_forward(&model, tc->inputs[1], tc->targets[1], B, T);
    llama_backward(&model, tc->inputs[1], tc->targets[1], 0.5f);
    r.grads = to_host(model.grads_memory, model.num_parameters);
    llama_free(&model);
    return r;
}

static void test_model_case_bf16(GpuTestCase* tc) {
    cpu::LlamaConfig c = tc->cfg;
    int B = tc->B, T = tc->T, BT = B * T;
    const char* label = tc->label;
    printf("--- %s in bf16 against the CPU's fp32: V=%d C=%d F=%d NH=%d L=%d B=%d T=%d\n", label, c.V, c.C, c.F,
           c.NH, c.L, B, T);
    cpu::Llama ref;
    cpu::llama_build(&ref, &c);
    memcpy(ref.params_memory, tc->params, ref.num_parameters * sizeof(float));
    float loss_cpu = cpu::llama_forward(&ref, tc->inputs[0], tc->targets[0], B, T);
    size_t nlogits = (size_t)BT * c.V;
    float* logits_cpu = (float*)cpu::malloc_check(nlogits * sizeof(float), "logits");
    memcpy(logits_cpu, ref.acts.logits, nlogits * sizeof(float));
    cpu::llama_zero_grad(&ref);
    cpu::llama_backward(&ref, tc->inputs[0], tc->targets[0], 0.5f);
    cpu::llama_forward(&ref, tc->inputs[1], tc->targets[1], B, T);
    cpu::llama_backward(&ref, tc->inputs[1], tc->targets[1], 0.5f);

    GpuRun bf = gpu_forward_backward(tc, DTYPE_BFLOAT16);
    GpuRun fp = gpu_forward_backward(tc, DTYPE_FLOAT32);
    double e_logits = rel_error(bf.logits, logits_cpu, nlogits);
    double e_logits32 = rel_error(fp.logits, logits_cpu, nlogits);
    check(e_logits <= BF16_LOGITS_REL_TOL, "%s bf16 %-22s: rel err %.3g of scale (tol %.0e)", label, "logits",
          e_logits, BF16_LOGITS_REL_TOL);
    double e_loss = fabs((double)bf.loss - loss_cpu) / fabs(loss_cpu);
    check(e_loss <= BF16_LOSS_REL_TOL, "%s bf16 %-22s: %.6f vs CPU %.6f, rel err %.3g (tol %.0e)", label, "loss",
          bf.loss, loss_cpu, e_loss, BF16_LOSS_REL_TOL);
    cpu::TensorSpec spec[NUM_PARAMETER_TENSORS];
    cpu::parameter_table(spec, &c);
    size_t off = 0;
    double worst = 0.0, worst32 = 0.0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = cpu::tensor_numel(&spec[i]);
        double e = rel_error(bf.grads + off, ref.grads_memory + off, n);
        double e32 = rel_error(fp.grads + off, ref.grads_memory + off, n);
        worst = fmax(worst, e);
        worst32 = fmax(worst32, e32);
        check(e <= BF16_GRAD_REL_TOL, "%s bf16 grad %-17s: rel err %.3g of scale (tol %.0e; fp32 path %.2g)",
              label, spec[i].name, e, BF16_GRAD_REL_TOL, e32);
        off += n;
    }
    // a bf16 run that silently computed in fp32 (a buffer left fp32, a
    // missing rounding) would pass the tolerances above; this catches it
    check(e_logits >= BF16_EXERCISED_FACTOR * e_logits32 && worst >= BF16_EXERCISED_FACTOR * worst32,
          "%s bf16 is exercised: logits err %.3g vs fp32 path %.3g, worst grad err %.3g vs fp32 path %.3g "
          "(each >= %.0fx)", label, e_logits, e_logits32, worst, worst32, BF16_EXERCISED_FACTOR);
    free(bf.logits); free(bf.grads); free(fp.logits); free(fp.grads);
    free(logits_cpu);
    cpu::llama_free(&ref);
}

// bf16 repeats itself bit for bit too (no atomics; cuBLAS with fixed inputs)
static void test_determinism_bf16(GpuTestCase* tc) {
    GpuRun r[2];
    for (int i = 0; i < 2; i++) { r[i] = gpu_forward_backward(tc, DTYPE_BFLOAT16); }
    size_t np = cpu::parameter_count(&tc->cfg);
    int same = memcmp(&r[0].loss, &r[1].loss, sizeof(float)) == 0 &&
               memcmp(r[0].grads, r[1].grads, np * sizeof(float)) == 0;
    check(same, "%s bf16 forward+backward twice: loss and every gradient bit-identical", tc->label);
    for (int i = 0; i < 2; i++) { free(r[i].logits); free(r[i].grads); }
}

// whole trainer steps in bf16 (forward, backward, clipping, optimizer, the
// bf16 weight copy refreshed) against the same steps on the CPU in fp32, on
// two batches in turn: the loss must fall as on the CPU. the optimizer
// amplifies bf16's ~1e-2 gradient error only mildly over a few steps (Adam
// normalises each entry, and both sides see the same batches), so every
// step's loss should stay within a few 1e-3 of the CPU's relative; 2e-2
// relative per step, and the total fall within 10% of the CPU's, still
// fail if the weights the forward reads are stale (no fall at all) or wrong.
#define BF16_STEPS 6
#define BF16_STEP_LOSS_REL_TOL 2e-2
#define BF16_FALL_REL_TOL 0.1

static void test_training_steps_bf16(GpuTestCase* tc, const char* optimizer) {
    cpu::LlamaConfig c = tc->cfg;
    int B = tc->B, T = tc->T;
    cpu::TrainConfig t;
    cpu::train_config_defaults(&t);
    snprintf(t.optimizer, sizeof t.optimizer, "%s", optimizer);
    t.rank = 4;
    t.subspace_update_interval = 2;
    t.num_training_steps = BF16_STEPS;
    t.warmup_steps = 1;
    t.lr = 1e-2f;
    cpu::Llama ref;
    cpu::llama_build(&ref, &c);
    memcpy(ref.params_memory, tc->params, ref.num_parameters * sizeof(float));
    cpu::Optimizer hopt;
    const char* problem = cpu::optimizer_build(&hopt, &c, &t);
    Llama model;
    llama_build(&model, &c, DTYPE_BFLOAT16);
    llama_upload_params(&model, tc->params);
    Optimizer gopt;
    const char* gproblem = optimizer_build(&gopt, &c, &t);
    if (problem != NULL || gproblem != NULL) {
        check(0, "%s bf16 %s: optimizer_build: %s", tc->label, optimizer, problem ? problem : gproblem);
        return;
    }
    // the losses of steps 0..BF16_STEPS-1 (before each update), then of the
    // first batch after the last update
    float lc[BF16_STEPS + 1], lg[BF16_STEPS + 1];
    double worst = 0.0;
    for (int step = 0; step <= BF16_STEPS; step++) {
        const int* in = tc->inputs[step < BF16_STEPS ? step % 2 : 0];
        const int* tg = tc->targets[step < BF16_STEPS ? step % 2 : 0];
        cpu::llama_zero_grad(&ref);
        llama_zero_grad(&model);
        lc[step] = cpu::llama_forward(&ref, in, tg, B, T);
        lg[step] = llama_forward(&model, in, tg, B, T);
        worst = fmax(worst, fabs((double)lg[step] - lc[step]) / fabs(lc[step]));
        if (step == BF16_STEPS) { break; }
        cpu::llama_backward(&ref, in, tg, 1.0f);
        llama_backward(&model, in, tg, 1.0f);
        double ncpu = cpu::grad_global_norm(ref.grads_memory, ref.num_parameters);
        if (ncpu > t.grad_clipping) { cpu::grad_scale(ref.grads_memory, ref.num_parameters, (float)(t.grad_clipping / ncpu)); }
        double ngpu = grad_global_norm(model.grads_memory, model.num_parameters);
        if (ngpu > t.grad_clipping) { grad_scale(model.grads_memory, model.num_parameters, (float)(t.grad_clipping / ngpu)); }
        float lr = cpu::lr_at_step(&t, step);
        cpu::optimizer_step(&hopt, &ref, lr);
        optimizer_step(&gopt, &model, lr);
    }
    double fall_cpu = lc[0] - lc[BF16_STEPS], fall_gpu = lg[0] - lg[BF16_STEPS];
    printf("     %s bf16 %s losses (CPU fp32 / GPU bf16):", tc->label, optimizer);
    for (int s = 0; s <= BF16_STEPS; s++) { printf(" %.4f/%.4f", lc[s], lg[s]); }
    printf("\n");
    check(worst <= BF16_STEP_LOSS_REL_TOL, "%s bf16 %s, %d whole trainer steps: every loss within rel %.3g of "
          "the CPU's (tol %.0e)", tc->label, optimizer, BF16_STEPS, worst, BF16_STEP_LOSS_REL_TOL);
    check(fall_cpu > 0 && fabs(fall_gpu - fall_cpu) <= BF16_FALL_REL_TOL * fall_cpu,
          "%s bf16 %s: the loss falls by %.4f vs the CPU's %.4f (tol %.0f%%)", tc->label, optimizer, fall_gpu,
          fall_cpu, 100 * BF16_FALL_REL_TOL);
    optimizer_free(&gopt);
    cpu::optimizer_free(&hopt);
    llama_free(&model);
    cpu::llama_free(&ref);
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    (void)argc; (void)argv;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("no CUDA GPU here: run ./dev/test_gpu/test_subtrack_gpu_emu (the CPU harness build) instead\n");
        return EXIT_FAILURE;
    }
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, 0));
#ifdef CUDA_EMU
    printf("GPU tests: running UNDER THE CPU HARNESS dev/cuda_emu (%s); real GPU runs remain the final word\n",
           prop.name);
#else
    printf("GPU tests: running ON A GPU: %s (compute %d.%d)\n", prop.name, prop.major, prop.minor);
#endif
    cublas_init();

    GpuTestCase tcs[3];
    int ncases = 0;
    if (test_case_from_reference(&tcs[ncases], "dev/reference/model_tiny.bin") == 0) { ncases++; }
    if (test_case_from_reference(&tcs[ncases], "dev/reference/model_awkward.bin") == 0) { ncases++; }
    // head size 52 (as llama_40m), T above a warp, odd V and F
    cpu::LlamaConfig odd = {301, 104, 283, 2, 2, 64, 1e-6f, 10000.0f};
    test_case_random(&tcs[ncases++], "random_hs52", odd, 2, 37, 7);
    for (int i = 0; i < ncases; i++) { test_model_case(&tcs[i]); }
    test_determinism(&tcs[ncases - 1]);
    // whole trainer steps: 3 steps are the SVD at step 0 and one subspace
    // update at step 2. (beyond that the two sides drift apart on these tiny
    // random models: see README.md, "Open questions about the CUDA trainer")
    printf("--- training steps, GPU against CPU: weights and every optimizer state\n");
    for (int i = 0; i < ncases; i++) {
        test_training_steps(&tcs[i], "low_rank_adamw", "subtrack", 3, 0);
    }
    test_training_steps(&tcs[1], "low_rank_adamw", "galore", 3, 0);
    test_training_steps(&tcs[0], "adamw", "subtrack", 5, 0);
    // the optimizers on identical gradients: 5 steps, so the SVD at step 0
    // and two subspace updates (steps 2 and 4)
    for (int i = 0; i < ncases; i++) {
        test_training_steps(&tcs[i], "low_rank_adamw", "subtrack", 5, 1);
    }
    test_training_steps(&tcs[1], "low_rank_adamw", "galore", 5, 1);
    // bf16, on the two reference models (the random one is left out to keep the harness run short)
    for (int i = 0; i < ncases && i < 2; i++) { test_model_case_bf16(&tcs[i]); }
    test_determinism_bf16(&tcs[0]);
    printf("--- training steps in bf16 against the CPU's fp32: the loss\n");
    test_training_steps_bf16(&tcs[0], "adamw");
    test_training_steps_bf16(&tcs[1], "low_rank_adamw");
    for (int i = 0; i < ncases; i++) { test_case_free(&tcs[i]); }
    cublas_check(cublasDestroy(g_cublas));
    return check_summary();
}
