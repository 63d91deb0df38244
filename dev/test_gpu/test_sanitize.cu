/*
test_sanitize.cu: a short GPU run for compute-sanitizer. the `tiny` model
(V=256, C=64, L=2) at B=2, T=16: forward, backward, clipping and 2 optimizer
steps of SubTrack++ (low_rank_adamw, subtrack, moment rotation and recovery
scaling on; k=1, so step 0 is the SVD and step 1 a geodesic tracking step)
and of AdamW, in bf16 and in fp32. small on purpose: racecheck slows every
kernel down by orders of magnitude.

    make dev/test_gpu/test_sanitize && compute-sanitizer --tool memcheck ./dev/test_gpu/test_sanitize
    compute-sanitizer --tool racecheck ./dev/test_gpu/test_sanitize
    make dev/test_gpu/test_sanitize_emu && ./dev/test_gpu/test_sanitize_emu     # under the CPU harness

dev/gpu_check.sh runs it under both tools. the checks are sanity only (finite
losses and norms, the first loss against the CPU reference, the loss falls,
the weights move and stay finite); the real comparisons are in
test_subtrack_gpu.cu and test_gpu_optim.cu. it ends with "N passed, N failed"
and exits non-zero on any failure.
*/
#define TESTING
#include "../../train_llama_subtrack.cu"

#include "../test_check.h"

#define SAN_PRESET "tiny"
#define SAN_B 2
#define SAN_T 16
#define SAN_STEPS 2
#define SAN_LR 1e-2f
#define SAN_SEED 7
// the first loss against the CPU's fp32 forward: fp32 to fp32 accuracy with
// headroom (measured ~1e-7 in test_subtrack_gpu), bf16 at that test's 2e-3
#define SAN_LOSS_TOL_FP32 1e-5
#define SAN_LOSS_TOL_BF16 2e-3

static int all_finite(const float* x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) { return 0; }
    }
    return 1;
}

// lean: the leanest memory flags (bf16 weights without masters, recomputed
// activations, per-layer updates without clipping, bf16 subspaces), so that the sanitizers
// cover their kernels and buffers too
static void run_case(const cpu::Llama* ref, const int* inputs, const int* targets, float ref_loss, Dtype dt,
                     const char* optimizer, int lean = 0) {
    const cpu::LlamaConfig* c = &ref->config;
    cpu::TrainConfig t;
    cpu::train_config_defaults(&t);
    snprintf(t.optimizer, sizeof t.optimizer, "%s", optimizer);
    snprintf(t.subspace_update_method, sizeof t.subspace_update_method, "%s", "subtrack");
    t.adaptive_optimizer = 1;
    t.recovery_scaling = 1;
    t.rank = 8;
    t.subspace_update_interval = 1;  // step 1 tracks the subspace (step 0 is the SVD)
    t.weight_decay = 0.01f;
    t.master_weights = !lean;
    snprintf(t.dtype, sizeof t.dtype, "%s", dt == DTYPE_BFLOAT16 ? "bfloat16" : "float32");
    if (lean) {
        t.grad_clipping = 0.0f;
        snprintf(t.subspace_dtype, sizeof t.subspace_dtype, "%s", "bfloat16");
    }
    int lowrank = strcmp(optimizer, "low_rank_adamw") == 0;
    char label[160];
    snprintf(label, sizeof label, "%s %s %s%s", SAN_PRESET, dt == DTYPE_BFLOAT16 ? "bf16" : "fp32",
             lowrank ? "SubTrack++" : "AdamW", lean ? " (--master_weights 0, recomputed, per-layer, bf16 S)" : "");

    Llama model;
    llama_build(&model, c, dt, !lean, lean);
    model.recompute = lean;
    llama_upload_params(&model, ref->params_memory);
    Optimizer opt;
    const char* problem = optimizer_build(&opt, c, &t);
    if (problem != NULL) {
        check(0, "%s: optimizer_build: %s", label, problem);
        llama_free(&model);
        return;
    }
    if (lean) { optimizer_attach_per_layer(&opt, &model); }
    // the same batch every step, so the loss must fall
    float loss[SAN_STEPS + 1];
    int finite = 1;
    for (int step = 0; step < SAN_STEPS; step++) {
        llama_zero_grad(&model);
        optimizer_begin_step(&opt, SAN_LR);
        loss[step] = llama_forward(&model, inputs, targets, SAN_B, SAN_T);
        llama_backward(&model, inputs, targets, 1.0f);
        double norm = lean ? sqrt(llama_unit_norm2()) : grad_global_norm(model.grads_memory, model.num_parameters);
        finite = finite && isfinite(loss[step]) && isfinite(norm) && norm > 0.0;
        if (!lean && norm > t.grad_clipping) {
            grad_scale(model.grads_memory, model.num_parameters, (float)(t.grad_clipping / norm));
        }
        optimizer_step(&opt, &model, SAN_LR);
    }
    loss[SAN_STEPS] = llama_forward(&model, inputs, targets, SAN_B, SAN_T);
    cuda_check(cudaDeviceSynchronize());
    finite = finite && isfinite(loss[SAN_STEPS]);
    check(finite, "%s: losses %.4f %.4f -> %.4f and gradient norms finite", label, loss[0], loss[1],
          loss[SAN_STEPS]);
    double tol = dt == DTYPE_BFLOAT16 ? SAN_LOSS_TOL_BF16 : SAN_LOSS_TOL_FP32;
    double rel = fabs((double)loss[0] - ref_loss) / fabs(ref_loss);
    check(rel <= tol, "%s: first loss %.6f vs the CPU's %.6f, rel %.2g (tol %.0e)", label, loss[0], ref_loss, rel,
          tol);
    check(loss[SAN_STEPS] < loss[0], "%s: the loss falls over %d steps on one batch (%.4f -> %.4f)", label,
          SAN_STEPS, loss[0], loss[SAN_STEPS]);
    float* w = (float*)cpu::malloc_check(model.num_parameters * sizeof(float), "weights");
    llama_download_params(&model, w);
    size_t moved = 0;
    for (size_t i = 0; i < model.num_parameters; i++) { moved += w[i] != ref->params_memory[i]; }
    check(all_finite(w, model.num_parameters) && moved > model.num_parameters / 2,
          "%s: weights finite, %zu of %zu moved", label, moved, model.num_parameters);
    if (lowrank) {
        optimizer_download(&opt);
        check(all_finite(opt.host.lowrank_memory, opt.host.lowrank_floats) &&
              all_finite(opt.host.adam_m, opt.host.num_adam) && all_finite(opt.host.adam_v, opt.host.num_adam),
              "%s: optimizer states finite (%zu low-rank floats)", label, opt.host.lowrank_floats);
    }
    free(w);
    optimizer_free(&opt);
    llama_free(&model);
}

int main(int argc, char** argv) {
    (void)argc; (void)argv;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("no CUDA GPU here: run ./dev/test_gpu/test_sanitize_emu (the CPU harness build) instead\n");
        return EXIT_FAILURE;
    }
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, 0));
#ifdef CUDA_EMU
    printf("sanitizer test: running UNDER THE CPU HARNESS dev/cuda_emu (%s)\n", prop.name);
#else
    printf("sanitizer test: running ON A GPU: %s (compute %d.%d)\n", prop.name, prop.major, prop.minor);
#endif
    cublas_init();

    cpu::LlamaConfig c;
    if (!cpu::llama_preset_find(SAN_PRESET, &c)) {
        check(0, "preset %s exists", SAN_PRESET);
        return check_summary();
    }
    cpu::Llama ref;
    cpu::llama_build(&ref, &c);
    cpu::llama_init_weights(&ref, SAN_SEED);
    int inputs[SAN_B * SAN_T], targets[SAN_B * SAN_T];
    cpu::Rng rng;
    cpu::rng_seed(&rng, SAN_SEED);
    for (int i = 0; i < SAN_B * SAN_T; i++) {
        inputs[i] = (int)(cpu::rng_u64(&rng) % (uint64_t)c.V);
        targets[i] = (int)(cpu::rng_u64(&rng) % (uint64_t)c.V);
    }
    float ref_loss = cpu::llama_forward(&ref, inputs, targets, SAN_B, SAN_T);

    const Dtype dtypes[2] = {DTYPE_BFLOAT16, DTYPE_FLOAT32};
    const char* optimizers[2] = {"low_rank_adamw", "adamw"};
    for (int d = 0; d < 2; d++) {
        for (int o = 0; o < 2; o++) { run_case(&ref, inputs, targets, ref_loss, dtypes[d], optimizers[o]); }
    }
    run_case(&ref, inputs, targets, ref_loss, DTYPE_BFLOAT16, "low_rank_adamw", 1);
    cpu::llama_free(&ref);
    cublas_free();
    return check_summary();
}
