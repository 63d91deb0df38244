/*
dev/perf_model.h: a performance model of one training step of the CUDA
trainer, that runs anywhere (no CUDA call, plain C that also compiles as C++).

for the authors' recipes it lists every kernel launch kind and every GEMM of
one training step (forward, backward, the gradient norm, the optimizer: AdamW,
SubTrack++ and GaLore, matrix shape by matrix shape), with its FLOPs and the
bytes it moves, and the roofline time at the H100 SXM's and the H200's peaks:
    roofline = max(FLOPs / the peak of its arithmetic, bytes / HBM bandwidth)
summed into a step time, tokens/s, an MFU bound, SubTrack++'s share of the
step and its overhead over AdamW, and the SVD passes (the first step's, and a
GaLore refresh). THESE ARE ESTIMATES, NOT MEASUREMENTS: the roofline is a
lower bound at peak; the "estimate" columns add stated efficiencies and
floors (below), each an assumption the output prints.

--scale adds many GPUs (issue [5/6]): the bytes each GPU sends per step, the
communication's time and what of it the backward cannot hide, the step and
the scaling efficiency of AdamW DDP, SubTrack++ DDP and SubTrack++ ZeRO-1, on
NVLink and InfiniBand (the design and every assumption: the comment above
perf_scale).

used by:
    dev/bench_gpu --model        (dev/bench_gpu.cu includes this file; --model makes no CUDA call)
    dev/bench_gpu_emu --model    (the same under the CPU harness)
    dev/perf_model [--check]     (a plain C build of this file and the trainer's preset
                                  table: make dev/perf_model; make test runs --check)
on a GPU, dev/bench_gpu --per_kernel times each row's launcher beside the model.

the figures of ../shared/GPU_NUMBERS.md are embedded below as named constants
(a clean clone has no ../shared); when that file is readable at run time,
every embedded figure is compared with it and a difference stops the run
(--check reports it as a FAIL).

what is counted, per row (the trainer as of flash attention in it, 2026-12-03):
    FLOPs    2 M N K per GEMM (batch included); the elementwise kernels' own
             arithmetic, a few FLOPs per element (they are memory-bound anyway)
    bytes    each input read once and each output written once, at the element
             size of its dtype (bf16 activations 2, fp32 weights' gradients and
             optimizer states 4, the Gram matrix 8); a GEMM with beta != 0 reads
             its C too (the weight gradients' beta 1; the wo and w_down products'
             epilogue residual: matmul_forward_residual reads the residual stream
             as cuBLASLt's C and writes the sum, so the forward launches no
             residual_forward); re-reads that caches absorb are not counted
    classes  bf16 GEMM (tensor cores, 989: every model product, on cuBLASLt),
             bf16 WMMA (989: in bf16 mode the optimizer's three bulk products,
             projection, residual norms and update, in the trainer's own tiled
             kernels on bf16 inputs, at eff_wmma), TF32 GEMM (495: GaLore's
             back-projection in bf16 mode, gemm_gpu_bulk with
             CUBLAS_COMPUTE_32F_FAST_TF32; bf16 mode's bulk products before),
             TF32 WMMA (495: the fused kernels on TF32, before), fp32 GEMM and the CUDA-core kernels
             (67, no tensor cores: the tracking step's and rotations' small
             cublasSgemm products always, the bulk ones with --dtype float32),
             FP64 (67: the Gram matrix in double and cuSOLVER's syevdx)
the estimate per row = the largest of:
    FLOPs / (peak x eff), eff = the measured bf16 GEMM (769-798 of 989 on an
              H200) as a fraction of peak, for every GEMM class; flash attention
              its own fraction; the FP64 Gram kernel its own
    bytes / (bandwidth x the measured copy fraction, 4.3 of 4.8 TB/s)
    launches x a launch floor (the host issues every launch in order), plus the
              host's own work where a row has some (encoder_backward_buckets'
              counting sort of the batch by token, O(B*T + V) per micro step)
    a latency floor for the kernels whose threads walk rows one after the other:
              rmsnorm's weight gradient (pass 1: 32 rows a thread, per wave of
              blocks; pass 2: one partial per 256 rows), encoder_backward (one
              block per token: the most frequent token's rows bound it, an
              assumed fraction of B*T; and the waves of the blocks), plus the
              host-to-device copy of the token buckets in stream order before it
    a one-SM floor for single-block kernels (the power iteration, the limiter)
    cuSOLVER syevdx: p one-at-a-time column steps of its tridiagonal reduction
              (range I asks for the top R pairs, but the reduction is of all p)
every one of these numbers is printed by --model, with where it comes from.

model FLOPs (MFU, as ../shared/GPU_NUMBERS.md defines it): 6 N per token
(N = L (4 C^2 + 3 C F) + V C) plus attention: the full T x T square for the
materialized attention of today (12 L C T per token), the causal triangle
T (T + 1) / 2 for a flash kernel that skips masked blocks (6 L C (T + 1)).
recomputation (flash's backward recomputes the scores) is not model FLOPs.
*/
#ifndef PERF_MODEL_H
#define PERF_MODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdarg.h>

// ----------------------------------------------------------------------------
// the figures, from ../shared/GPU_NUMBERS.md (the row is named in each comment)

#define PERF_NUMBERS_PATH "../shared/GPU_NUMBERS.md"
// row "bf16 dense tensor-core peak": 989 TFLOP/s on both
#define GPU_H100_BF16_TFLOPS 989.0
#define GPU_H200_BF16_TFLOPS 989.0
// row "bf16 GEMM achieved, 8192³": H200 769-798 TFLOP/s (random data, through PyTorch)
#define GPU_H200_BF16_GEMM_LO_TFLOPS 769.0
#define GPU_H200_BF16_GEMM_HI_TFLOPS 798.0
// row "TF32 dense tensor-core peak": 495 TFLOP/s on both
#define GPU_H100_TF32_TFLOPS 495.0
#define GPU_H200_TF32_TFLOPS 495.0
// row "FP32 (no tensor cores)": 67 TFLOP/s on both
#define GPU_H100_FP32_TFLOPS 67.0
#define GPU_H200_FP32_TFLOPS 67.0
// row "FP64 (tensor cores)": 67 TFLOP/s on both
#define GPU_H100_FP64_TFLOPS 67.0
#define GPU_H200_FP64_TFLOPS 67.0
// row "HBM bandwidth": 3.35 and 4.8 TB/s
#define GPU_H100_HBM_TBS 3.35
#define GPU_H200_HBM_TBS 4.8
// row "device-to-device copy achieved": H200 about 4.3 TB/s (bytes read + written)
#define GPU_H200_COPY_TBS 4.3
// row "SMs": 132 on both
#define GPU_H100_SMS 132
#define GPU_H200_SMS 132
// the text under "SubTrack++ optimizer FLOPs per step": at 1B (r = 512, 4096
// tokens per step) the three GEMMs come to "about 11%" of the model's FLOPs;
// sharing one GEMM "leaves about 7.5%"
#define GPU_NUMBERS_SHARE3_PCT 11.0
#define GPU_NUMBERS_SHARE2_PCT 7.5
// row "NVLink (per GPU, all links)": 900 GB/s, both directions together (450 GB/s each way)
#define GPU_H100_NVLINK_GBS 900.0
// row "InfiniBand NDR per port": 400 Gb/s = 50 GB/s (each way)
#define GPU_IB_NDR_PORT_GBS 50.0

typedef struct {
    const char* name;
    double bf16, tf32, fp32, fp64;  // TFLOP/s
    double hbm;                     // TB/s
    int sms;
} PerfDevice;

static const PerfDevice PERF_DEVICES[2] = {
    {"H100 SXM", GPU_H100_BF16_TFLOPS, GPU_H100_TF32_TFLOPS, GPU_H100_FP32_TFLOPS, GPU_H100_FP64_TFLOPS,
     GPU_H100_HBM_TBS, GPU_H100_SMS},
    {"H200", GPU_H200_BF16_TFLOPS, GPU_H200_TF32_TFLOPS, GPU_H200_FP32_TFLOPS, GPU_H200_FP64_TFLOPS,
     GPU_H200_HBM_TBS, GPU_H200_SMS},
};
#define PERF_NUM_DEVICES 2

// ----------------------------------------------------------------------------
// the authors' recipes (../shared/SUBTRACK.md, "Script hyperparameters"):
// batch per GPU, total batch (one GPU reaches it by gradient accumulation),
// rank, subspace update interval k; T = 256 everywhere

typedef struct {
    const char* preset;
    int batch;
    int total_batch;
    int rank;
    int k;
} PerfRecipe;

static const PerfRecipe PERF_RECIPES[] = {
    {"llama_60m", 128, 256, 128, 200},
    {"llama_130m", 128, 256, 256, 200},
    {"llama_350m", 64, 128, 256, 200},
    {"llama_1b", 8, 16, 512, 200},
    {"llama_3b", 8, 16, 512, 200},
    {"llama_7b", 4, 16, 1024, 500},
};
#define PERF_NUM_RECIPES ((int)(sizeof(PERF_RECIPES) / sizeof(PERF_RECIPES[0])))
#define PERF_T 256

static const PerfRecipe* perf_recipe(const char* preset) {
    for (int i = 0; i < PERF_NUM_RECIPES; i++) {
        if (strcmp(PERF_RECIPES[i].preset, preset) == 0) { return &PERF_RECIPES[i]; }
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// assumptions that are not in GPU_NUMBERS.md, and the variants of the code

typedef struct {
    double eff_gemm;       // achieved / peak for every GEMM class
    double eff_flash;      // achieved / bf16 peak of a flash attention kernel
    double eff_wmma;       // achieved / peak (bf16's, or TF32's) of the trainer's own WMMA kernels (the low-rank
                           //   projection, fused residual norms and update: 64x64 tiles, no cp.async pipeline, fp32
                           //   operands converted as they are staged; an estimate, unmeasured)
    double eff_bw;         // achieved / HBM bandwidth of the memory-bound kernels
    double eff_gram;       // achieved / FP64 peak of the trainer's Gram kernel
    double launch_us;      // per launch, host issuing in order
    double latency_us;     // one dependent global load (HBM load-to-use)
    double serial_ilp;     // independent loads in flight per thread in a row-walking loop
    double sm_gbs;         // what one SM streams from L2, GB/s (single-block kernels)
    double power_iters;    // power iterations per tracking step
    double syevd_step_us;  // one column step of syevd's tridiagonal reduction
    int topr_iters;        // power iterations of the randomized range finder (--svd topr; the trainer's
                           //   --svd_power_iters)
    int topr_oversample;   // its sketch's columns beyond R (the trainer's --svd_oversample)
    double batched_step_us; // one column step of cusolverDnXsyevBatched on n = l (--svd topr), paid once per
                           //   call for its whole batch of matrices (unmeasured estimate: the batched
                           //   tridiagonal reduction's steps as long as syevd's)
    double top_token;      // the most frequent token's share of a micro-batch's positions (encoder_backward)
    double host_ns;        // the host's counting sort, per element visited (encoder_backward_buckets)
    double h2d_gbs;        // host-to-device copy from pinned memory, GB/s (the token buckets)
    // many GPUs (--scale; estimates, unmeasured: no session has had more than one GPU)
    double eff_nvlink;     // NCCL's ring bus bandwidth / NVLink's bandwidth each way (450 GB/s an H100)
    double eff_ib;         // the same over InfiniBand (50 GB/s a port each way)
    double ib_ports;       // InfiniBand ports (NICs) per GPU
    int gpus_per_node;     // GPUs joined by NVLink in one node (an HGX H100: 8)
    double coll_base_us;   // a ring collective's fixed latency (NCCL 2.8's tuning model, ring / Simple: 8.4)
    double nvlink_hop_us;  // each ring step over NVLink (the same table: 3.4)
    double ib_hop_us;      // each ring step between nodes (the same table: 9.6)
    double op_us;          // each further collective of an ncclGroup (ZeRO-1's per-unit reduces and broadcasts)
    double bucket_mb;      // MB of gradient (fp32) or weights (bf16) per bucket (PyTorch DDP's default cap: 25)
    double bcast_bytes;    // ZeRO-1's broadcast, bytes a weight: 2 (bf16, with sharded masters: the design), 4 (fp32:
                           // --zero_stage 1 today, whose masters are on every rank)
} PerfAssume;

static void perf_assume_defaults(PerfAssume* a) {
    a->eff_gemm = 0.5 * (GPU_H200_BF16_GEMM_LO_TFLOPS + GPU_H200_BF16_GEMM_HI_TFLOPS) / GPU_H200_BF16_TFLOPS;
    a->eff_flash = 0.5;
    a->eff_wmma = 0.5;
    a->eff_bw = GPU_H200_COPY_TBS / GPU_H200_HBM_TBS;
    a->eff_gram = 0.15;
    a->launch_us = 3.0;
    a->latency_us = 0.5;
    a->serial_ilp = 4.0;
    a->sm_gbs = 100.0;
    a->power_iters = 50.0;
    a->syevd_step_us = 10.0;
    a->topr_iters = 2;
    a->topr_oversample = 8;
    a->batched_step_us = 10.0;
    a->top_token = 0.05;
    a->host_ns = 1.0;
    a->h2d_gbs = 25.0;
    a->eff_nvlink = 0.8;
    a->eff_ib = 0.8;
    a->ib_ports = 1.0;
    a->gpus_per_node = 8;
    a->coll_base_us = 8.4;
    a->nvlink_hop_us = 3.4;
    a->ib_hop_us = 9.6;
    a->op_us = 2.0;
    a->bucket_mb = 25.0;
    a->bcast_bytes = 2.0;
}

typedef enum { PERF_GEMM_FP32 = 0, PERF_GEMM_TF32 = 1, PERF_GEMM_BF16 = 2 } PerfGemmPrecision;
typedef enum { PERF_SVD_FULL = 0, PERF_SVD_SYEVDX = 1, PERF_SVD_TOPR = 2 } PerfSvd;
static const char* PERF_GEMM_NAMES[3] = {"fp32", "tf32", "bf16"};
static const char* PERF_SVD_NAMES[3] = {"full", "syevdx", "topr"};

// "today" is the trainer at commit e56a56e plus flash attention; every option
// also shows the code before a change (the commit named) or a planned one
typedef struct {
    int flash;            // attention: 1 flash (today: flash_attention.cuh); 0 materialized: cuBLAS scores,
                          //   softmax and PV with a (B,NH,T,T) buffer (before flash attention)
    int opt_gemm;         // the optimizer's three bulk GEMMs (projection, back-projection, residual):
                          //   today PERF_GEMM_BF16 in bf16 mode: the trainer's own WMMA kernels on bf16 inputs
                          //   (lowrank_project_kernel; the fused recovery's two), reading fp32 operands that they
                          //   round as they stage them, GaLore's back-projection on cuBLAS TF32;
                          //   PERF_GEMM_FP32 with --dtype float32. before: PERF_GEMM_TF32 in bf16 mode (cuBLAS
                          //   TF32 and the fused kernels on TF32; before da90bbf fp32 in both). the tracking
                          //   step's products are fp32 in every variant
    int svd;              // today PERF_SVD_SYEVDX (Gram in FP64 + syevdx, range I: the top R pairs);
                          //   PERF_SVD_FULL: syevd of all p (before da90bbf); PERF_SVD_TOPR: --svd randomized
    int fused_residual;   // 1 today: the wo and w_down products add the residual in cuBLASLt's
                          //   epilogue; 0: two residual_forward launches a layer (before ccb06c0)
    int fused_recovery;   // 1 today in bf16: recovery scaling's residual never formed: its column norms from
                          //   tiles of S Gt in lowrank_residual_norms_kernel (TF32 WMMA, reads G), the update in one
                          //   WMMA product S (alpha N - Gt diag f) whose epilogue adds G diag(f) and the decay
                          //   (reads G, W, writes W); 0 in fp32 and before: D = G, D -= S Gt, the norms read D,
                          //   W -= alpha S N (cuBLAS), W -= D diag(f) (44 bytes an element against 20)
    int opt_batched;      // optimizer launches: 0 one per matrix (before 1aac24b); 2 today: one per batch of
                          //   matrices of a shape, as many as fit in 256 MiB of scratch (lowrank_batch_size);
                          //   1: one per tensor, over its L layers (planned)
    int fused;            // 1 today in bf16: q, k, v in one product and gate, up in one, and their input
                          //   gradients one product each (K = 3C, 2F); the padding of F to Fp is not modelled
                          //   (under 1% more FLOPs); 0 in fp32 and before
    int fp32_acts;        // --dtype float32 (today's default is bfloat16)
    int clip;             // gradient clipping fires (grad_scale runs); the authors' configs: off
    int parallel_wgrad;   // 1 today: rmsnorm's weight gradient in two fixed-order passes over many blocks,
                          //   encoder_backward one block per token after a host-side grouping by token;
                          //   0: one thread per channel walks the B*T rows (before e56a56e)
} PerfVariant;

static void perf_variant_today(PerfVariant* v) {
    memset(v, 0, sizeof *v);
    v->flash = 1;
    v->opt_gemm = PERF_GEMM_BF16;
    v->svd = PERF_SVD_SYEVDX;
    v->fused_residual = 1;
    v->parallel_wgrad = 1;
    v->opt_batched = 2;
    v->fused = 1;
    v->fused_recovery = 1;
}

// today's coupling of the dtype and the optimizer's bulk GEMMs: bf16 WMMA kernels in bf16 mode (the
// projection and the fused recovery kernels), fp32 with --dtype float32 (the three cuBLAS products, unfused)
static void perf_variant_set_dtype(PerfVariant* v, int fp32_acts) {
    v->fp32_acts = fp32_acts;
    v->opt_gemm = fp32_acts ? PERF_GEMM_FP32 : PERF_GEMM_BF16;
    v->fused = !fp32_acts;
    v->fused_recovery = !fp32_acts;
}

// ----------------------------------------------------------------------------
// rows

typedef enum {
    PERF_BF16_GEMM, PERF_TF32_GEMM, PERF_FP32_GEMM, PERF_FP32_CORE, PERF_FP64_CORE, PERF_FP64_SYEVD,
    PERF_FLASH, PERF_MEMORY, PERF_TF32_WMMA, PERF_FP64_GEMM, PERF_BF16_WMMA, PERF_NUM_CLASSES
} PerfClass;
// tf32 wmma, bf16 wmma: a product on TF32 or bf16 tensor cores in our own kernel (eff_wmma instead of cuBLAS's
// eff_gemm, against that precision's peak)
static const char* PERF_CLASS_NAMES[PERF_NUM_CLASSES] = {"bf16 gemm", "tf32 gemm", "fp32 gemm", "fp32 core",
                                                         "fp64 core", "fp64 syevd", "bf16 flash", "memory",
                                                         "tf32 wmma", "fp64 gemm", "bf16 wmma"};
// a row that is a matrix product (cuBLAS or our own tensor-core kernel)
static int perf_class_is_gemm(int cls) {
    return cls == PERF_BF16_GEMM || cls == PERF_TF32_GEMM || cls == PERF_FP32_GEMM || cls == PERF_TF32_WMMA ||
           cls == PERF_BF16_WMMA;
}

// which steps and methods a row belongs to
#define PERF_SET_COMMON 1     // every method: forward, backward, the step's own work
#define PERF_SET_ADAMW 2      // full AdamW on every tensor
#define PERF_SET_LR_ADAMW 4   // low-rank methods: AdamW on embeddings, lm_head, norms
#define PERF_SET_SUBTRACK 8   // SubTrack++ (every step, and tracking amortised over k)
#define PERF_SET_GALORE 16    // GaLore as published (every step, and the refresh amortised over k)
#define PERF_SET_INIT 32      // the first step's SVD pass (once per run, not in the step time)
#define PERF_SET_REFRESH 64   // one whole GaLore refresh pass (the rows of 16 not amortised)

// the launchers dev/bench_gpu --per_kernel times, one per row kind
typedef enum {
    OP_NONE = 0, OP_ENCODER_FWD, OP_RMSNORM_FWD, OP_GEMM, OP_GEMM_RESIDUAL, OP_FLASH_FWD, OP_ROPE, OP_FLASH_BWD,
    OP_RESIDUAL_FWD, OP_SWIGLU_FWD, OP_CE_FWD, OP_CE_BWD, OP_MEMSET, OP_RMSNORM_BWD_DINP, OP_RMSNORM_BWD_DWEIGHT,
    OP_SWIGLU_BWD, OP_RESIDUAL_BWD, OP_ENCODER_BWD, OP_NORM, OP_SCALE, OP_REFRESH, OP_ADAMW, OP_SGEMM,
    OP_SGEMM_BULK, OP_COPY, OP_ADAM_NORMS, OP_LIMITER, OP_RECOVERY_APPLY, OP_POWER, OP_TRACK_ROWS, OP_TRACK_REDUCE,
    OP_PROJECT_U, OP_GEODESIC, OP_UPDATE_PROJECTION, OP_ROTATE_RANK1, OP_GRAM, OP_SYEVDX, OP_TOP_EIG, OP_CANON_SIGN,
    OP_RESIDUAL_NORMS, OP_UPDATE_MOMENTS, OP_FUSED_UPDATE, OP_PROJECT, OP_NUM
} PerfOp;

// one launch of a row, as the trainer makes it: sizes a..f mean what the op says
// (GEMM: transA transB M N K batch; kernels: their size arguments)
typedef struct {
    int op;
    long long a, b, c, d, e, f;
    int out_fp32;   // GEMM: C is fp32 (weight gradients), else the activation type
    float beta;
} PerfLaunch;

typedef struct {
    char phase[12];
    char name[96];
    char shape[64];
    int cls;
    int set;
    double launches;     // per training step (amortised where the set says so)
    double flops;        // per training step, all launches
    double bytes;        // per training step, all launches
    double model_flops;  // matrix products counted in 6 N
    double attn_flops;   // attention products counted in the MFU
    double serial_s;     // serial (latency) floor per step, seconds (device independent)
    double host_s;       // the host's own work per step besides issuing launches, seconds
    double sm_bytes;     // bytes one SM streams (single-block kernels), per step
    PerfLaunch launch;   // one launch, for --per_kernel
} PerfRow;

#define PERF_MAX_ROWS 160

typedef struct {
    int V, C, F, NH, L;
} PerfDims;

typedef struct {
    char preset[64];
    PerfDims d;
    int B, T, accum, rank, k;
    PerfVariant v;
    PerfAssume a;
    PerfRow rows[PERF_MAX_ROWS];
    int n;
} PerfModel;

static PerfRow* perf_row(PerfModel* m, const char* phase, const char* name, int set, int cls, double launches) {
    if (m->n >= PERF_MAX_ROWS) {
        fprintf(stderr, "error: perf_model: more than %d rows; raise PERF_MAX_ROWS in dev/perf_model.h\n",
                PERF_MAX_ROWS);
        exit(EXIT_FAILURE);
    }
    PerfRow* r = &m->rows[m->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->phase, sizeof r->phase, "%s", phase);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->set = set;
    r->cls = cls;
    r->launches = launches;
    return r;
}

// a GEMM C (M, N) = op(A) (M, K) op(B) (K, N), batch of them per launch;
// ab, c: element bytes of the inputs and the output; beta != 0 reads C too
static PerfRow* perf_gemm(PerfModel* m, const char* phase, const char* name, int set, int cls, double launches,
                          long long M, long long N, long long K, long long batch, double ab, double c, float beta) {
    PerfRow* r = perf_row(m, phase, name, set, cls, launches);
    double per_flops = 2.0 * M * N * K * batch;
    double per_bytes = batch * ((double)(M * K + K * N) * ab + (double)M * N * c * (beta != 0.0f ? 2.0 : 1.0));
    r->flops = launches * per_flops;
    r->bytes = launches * per_bytes;
    if (batch > 1) {
        snprintf(r->shape, sizeof r->shape, "%lldx%lldx%lld x%lld", M, N, K, batch);
    } else {
        snprintf(r->shape, sizeof r->shape, "%lldx%lldx%lld", M, N, K);
    }
    r->launch.op = OP_GEMM;
    r->launch.c = M; r->launch.d = N; r->launch.e = K; r->launch.f = batch;
    r->launch.beta = beta;
    return r;
}

// a kernel (or memset / copy): FLOPs and bytes of ONE launch
static PerfRow* perf_kernel(PerfModel* m, const char* phase, const char* name, int set, int cls, double launches,
                            double flops, double bytes, int op, const char* shape) {
    PerfRow* r = perf_row(m, phase, name, set, cls, launches);
    r->flops = launches * flops;
    r->bytes = launches * bytes;
    r->launch.op = op;
    snprintf(r->shape, sizeof r->shape, "%s", shape);
    return r;
}

// the model's matrix weights N (without the embedding lookup and the norms)
static double perf_matrix_params(const PerfDims* d) {
    return (double)d->L * (4.0 * d->C * d->C + 3.0 * (double)d->C * d->F) + (double)d->V * d->C;
}

// every parameter: the trainer's parameter table, counted here independently
static double perf_all_params(const PerfDims* d) {
    return perf_matrix_params(d) + (double)d->V * d->C + (2.0 * d->L + 1.0) * d->C;
}

// the matrix shape groups of the low-rank optimizer: (p, q) with their count.
// matrices of one shape that the trainer's grouped step takes in one batch (lowrank_batch_size): as many as
// fit in 256 MiB of scratch, one matrix's own arrays (D p q, Gt N Mrot Xm 4 q R, X S_old 2 p R, three R x R,
// and a few vectors) each, after one SVD's (a double p x p Gram matrix); alignment left out
#define PERF_BATCH_SCRATCH_FLOATS ((double)((size_t)256 << 20) / 4.0)
// --svd randomized's SVD chunks: up to 2 GiB of arrays (the trainer's LOWRANK_SVD_BATCH_BYTES)
#define PERF_SVD_CHUNK_FLOATS ((double)((size_t)2 << 30) / 4.0)
static double perf_lowrank_batch(double p, double q, double R) {
    double one = p * q + 4.0 * q * R + 2.0 * p * R + 3.0 * R * R + 5.0 * q + 5.0 * p + 6.0 * R;
    double svd = 2.0 * p * p + 2.0 * p;
    double room = PERF_BATCH_SCRATCH_FLOATS > one + svd ? PERF_BATCH_SCRATCH_FLOATS : one + svd;
    double b = floor((room - svd) / one);
    return b < 1.0 ? 1.0 : b;
}

// wq wk wv wo are C x C; w_gate, w_up (F x C) and w_down (C x F) share p = min, q = max
typedef struct {
    const char* names;
    long long p, q;
    int count;         // matrices in the model
    int tensors;       // parameter tensors (each holds L of them)
    int right_count;   // of them, m > n (the right orientation)
} PerfShapeGroup;

static int perf_shape_groups(const PerfDims* d, PerfShapeGroup g[2]) {
    long long C = d->C, F = d->F;
    g[0].names = "wq wk wv wo";
    g[0].p = C; g[0].q = C; g[0].count = 4 * d->L; g[0].tensors = 4; g[0].right_count = 0;
    g[1].names = "w_gate w_up w_down";
    g[1].p = C < F ? C : F; g[1].q = C < F ? F : C; g[1].count = 3 * d->L; g[1].tensors = 3;
    g[1].right_count = C < F ? 2 * d->L : d->L;
    return 2;
}

// the launch geometry of today's column sums (train_llama_subtrack.cu: COLUMN_CHUNK_ROWS, COLUMN_TILE,
// COLUMN_ROW_LANES, BLOCK_COLUMNS)
#define PERF_CHUNK_ROWS 256
#define PERF_COLUMN_TILE 32
#define PERF_ROW_LANES 8
#define PERF_BLOCK_COLUMNS 256
// blocks of 256 threads resident at once: 2048 threads an SM, 132 SMs (the H100 SXM and the H200 alike)
#define PERF_RESIDENT_BLOCKS ((double)GPU_H200_SMS * 2048.0 / 256.0)

static double perf_ceil_div(double a, double b) { return ceil(a / b); }

// the trainer's LOWRANK_TILE: rows of p per tile of the fused residual norms and update
#define PERF_WMMA_TILE 64.0
static double perf_waves(double blocks) { return ceil(blocks / PERF_RESIDENT_BLOCKS); }

// the expected number of distinct tokens among n drawn uniformly from V
static double perf_distinct_tokens(double n, double V) { return V * (1.0 - exp(-n / V)); }

// ----------------------------------------------------------------------------
// the rows of one training step, in the trainer's order

static void perf_build_forward_backward(PerfModel* m) {
    const PerfDims* d = &m->d;
    long long V = d->V, C = d->C, F = d->F, NH = d->NH, L = d->L, HS = C / NH, B = m->B, T = m->T;
    long long BT = B * T;
    double acc = m->accum;  // micro steps per training step
    double e = m->v.fp32_acts ? 4.0 : 2.0;   // activation bytes
    int gemm = m->v.fp32_acts ? PERF_FP32_GEMM : PERF_BF16_GEMM;
    double tt = (double)T * T, tri = (double)T * (T + 1) / 2.0;  // the square, and the causal triangle with its diagonal
    char s[64];
    PerfRow* r;
    const int S = PERF_SET_COMMON;

    // ---- forward (llama_forward_typed, layer_forward), per micro step x accum
    snprintf(s, sizeof s, "%lldx%lld", BT, C);
    r = perf_kernel(m, "forward", "encoder_forward", S, PERF_FP32_CORE, acc, 0.0, BT * 4.0 + BT * C * (4.0 + e),
                    OP_ENCODER_FWD, s);
    r->launch.a = BT; r->launch.b = C;
    r = perf_kernel(m, "forward", "rmsnorm_forward", S, PERF_FP32_CORE, acc * (2 * L + 1), 4.0 * BT * C,
                    2.0 * BT * C * e + C * 4.0 + BT * 4.0, OP_RMSNORM_FWD, s);
    r->launch.a = BT; r->launch.b = C;
    // every model product is one cuBLASLt call (gemm_lt, a cached plan)
    if (m->v.fused) {
        r = perf_gemm(m, "forward", "matmul q|k|v, one product (x C->3C)", S, gemm, acc * L, BT, 3 * C, C, 1, e, e,
                      0.0f);
    } else {
        r = perf_gemm(m, "forward", "matmul q k v (x C->C)", S, gemm, acc * 3 * L, BT, C, C, 1, e, e, 0.0f);
    }
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 1;
    snprintf(s, sizeof s, "%lldx%lldx%lld", BT, NH, HS);
    r = perf_kernel(m, "forward", "rope_forward (q, k)", S, PERF_FP32_CORE, acc * 2 * L, 3.0 * BT * C,
                    2.0 * BT * C * e + T * HS * 4.0, OP_ROPE, s);
    r->launch.a = B; r->launch.b = T; r->launch.c = NH; r->launch.d = HS;
    if (!m->v.flash) {
        // per sequence: one strided-batched GEMM over the NH heads (a loop of B calls)
        // (before flash attention: these rows have no launcher any more)
        r = perf_gemm(m, "forward", "attention scores q k^T (before flash)", S, gemm, acc * L * B, T, T, HS, NH, e, e,
                      0.0f);
        r->attn_flops = r->flops; r->launch.op = OP_NONE;
        // the full square is written, the causal triangle read (its passes hit cache)
        snprintf(s, sizeof s, "%lldx%lldx%lldx%lld", B, NH, T, T);
        r = perf_kernel(m, "forward", "causal_softmax (before flash)", S, PERF_FP32_CORE, acc * L, 5.0 * B * NH * tri,
                        B * NH * (tri + tt) * e, OP_NONE, s);
        r = perf_gemm(m, "forward", "attention att v (before flash)", S, gemm, acc * L * B, T, HS, T, NH, e, e, 0.0f);
        r->attn_flops = r->flops; r->launch.op = OP_NONE;
    } else {
        // one fused kernel, causal blocks only, no T x T buffer; reads q k v, writes out and the row lse
        double f = 2.0 * 2.0 * B * NH * HS * tri;
        snprintf(s, sizeof s, "%lldx%lldx%lldx%lld causal", B, NH, T, HS);
        r = perf_kernel(m, "forward", "flash attention forward", S, PERF_FLASH, acc * L, f,
                        4.0 * BT * C * e + B * NH * T * 4.0, OP_FLASH_FWD, s);
        r->attn_flops = r->flops;
        r->launch.a = B; r->launch.b = T; r->launch.c = NH; r->launch.d = HS;
    }
    // the attention output's projection joins the residual stream: fused, cuBLASLt reads the residual as its C
    // (beta 1) and writes the sum (matmul_forward_residual); before ccb06c0 a residual_forward followed
    int fr = m->v.fused_residual;
    r = perf_gemm(m, "forward", fr ? "matmul o + residual (epilogue, x C->C)" : "matmul o (x C->C)", S, gemm, acc * L,
                  BT, C, C, 1, e, e, fr ? 1.0f : 0.0f);
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 1;
    if (fr) { r->launch.op = OP_GEMM_RESIDUAL; }
    if (!fr) {
        snprintf(s, sizeof s, "%lldx%lld", BT, C);
        r = perf_kernel(m, "forward", "residual_forward (before ccb06c0)", S, PERF_FP32_CORE, acc * 2 * L, 1.0 * BT * C,
                        3.0 * BT * C * e, OP_RESIDUAL_FWD, s);
        r->launch.a = BT * C;
    }
    if (m->v.fused) {
        r = perf_gemm(m, "forward", "matmul gate|up, one product (x C->2F)", S, gemm, acc * L, BT, 2 * F, C, 1, e, e,
                      0.0f);
    } else {
        r = perf_gemm(m, "forward", "matmul gate up (x C->F)", S, gemm, acc * 2 * L, BT, F, C, 1, e, e, 0.0f);
    }
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 1;
    snprintf(s, sizeof s, "%lldx%lld", BT, F);
    r = perf_kernel(m, "forward", "swiglu_forward", S, PERF_FP32_CORE, acc * L, 6.0 * BT * F, 3.0 * BT * F * e,
                    OP_SWIGLU_FWD, s);
    r->launch.a = BT * F;
    r = perf_gemm(m, "forward", fr ? "matmul down + residual (epilogue, x F->C)" : "matmul down (x F->C)", S, gemm,
                  acc * L, BT, C, F, 1, e, e, fr ? 1.0f : 0.0f);
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 1;
    if (fr) { r->launch.op = OP_GEMM_RESIDUAL; }
    r = perf_gemm(m, "forward", "matmul lm_head (x C->V)", S, gemm, acc, BT, V, C, 1, e, e, 0.0f);
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 1;
    snprintf(s, sizeof s, "%lldx%lld", BT, V);
    r = perf_kernel(m, "forward", "crossentropy_forward", S, PERF_FP32_CORE, acc, 3.0 * BT * V,
                    BT * V * e + BT * 4.0 * 3.0, OP_CE_FWD, s);
    r->launch.a = BT; r->launch.b = V;

    // ---- backward (llama_backward_typed), per micro step x accum
    r = perf_kernel(m, "backward", "crossentropy_softmax_backward", S, PERF_FP32_CORE, acc, 3.0 * BT * V,
                    2.0 * BT * V * e + BT * 8.0, OP_CE_BWD, s);
    r->launch.a = BT; r->launch.b = V;
    // matmul_backward: dinp (BT, in) = dout (BT, out) W (out, in); dweight (out, in) += dout^T inp, fp32, beta 1
    r = perf_gemm(m, "backward", "lm_head dinp", S, gemm, acc, BT, C, V, 1, e, e, 0.0f);
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 0;
    r = perf_gemm(m, "backward", "lm_head dweight", S, gemm, acc, V, C, BT, 1, e, 4.0, 1.0f);
    r->model_flops = r->flops; r->launch.a = 1; r->launch.b = 0; r->launch.out_fp32 = 1;
    snprintf(s, sizeof s, "%lldx%lld", BT, C);
    r = perf_kernel(m, "backward", "memset dresid", S, PERF_MEMORY, acc, 0.0, BT * C * e, OP_MEMSET, s);
    r->launch.a = (long long)(BT * C * e);
    r = perf_kernel(m, "backward", "rmsnorm_backward dinp (+=)", S, PERF_FP32_CORE, acc * (2 * L + 1), 8.0 * BT * C,
                    4.0 * BT * C * e + C * 4.0 + BT * 4.0, OP_RMSNORM_BWD_DINP, s);
    r->launch.a = BT; r->launch.b = C;
    // rmsnorm_backward_residual reads a second dout where a residual add was (both norms', unless the products
    // are fused, whose input gradients are then one product each)
    r->bytes += acc * (m->v.fused ? 0.0 : 2.0) * L * BT * C * e;
    if (m->v.parallel_wgrad) {
        // rmsnorm_backward_dweight: two launches a call. pass 1, a (C/32, BT/256) grid of 32 x 8 threads: each
        // thread sums 32 rows of one channel (dout, inp, rstd) and the block writes one partial per channel
        // and chunk of 256 rows; pass 2 (column_partials_sum_kernel, C/256 blocks) adds the chunks in order
        // into dweight (read and written). latency: pass 1 a chain of 32 rows per thread, per wave of blocks;
        // pass 2 a chain of BT/256 partials per thread
        double calls = acc * (2 * L + 1);
        double chunks = perf_ceil_div(BT, PERF_CHUNK_ROWS);
        double rows_thread = perf_ceil_div(BT < PERF_CHUNK_ROWS ? BT : PERF_CHUNK_ROWS, PERF_ROW_LANES);
        double blocks1 = perf_ceil_div(C, PERF_COLUMN_TILE) * chunks;
        double lat = (perf_waves(blocks1) * ceil(rows_thread / m->a.serial_ilp) + ceil(chunks / m->a.serial_ilp)) *
                     m->a.latency_us;
        r = perf_kernel(m, "backward", "rmsnorm_backward_dweight (2 passes)", S, PERF_FP32_CORE, 2.0 * calls, 0.0,
                        0.0, OP_RMSNORM_BWD_DWEIGHT, s);
        r->flops = calls * (3.0 * BT * C + chunks * C);
        r->bytes = calls * (2.0 * BT * C * e + BT * 4.0 + 2.0 * chunks * C * 4.0 + 2.0 * C * 4.0);
        r->serial_s = calls * lat * 1e-6;
    } else {
        // one thread per channel walks the B*T rows in order: C threads in all
        r = perf_kernel(m, "backward", "rmsnorm_backward dweight (serial rows, before e56a56e)", S, PERF_FP32_CORE,
                        acc * (2 * L + 1), 3.0 * BT * C, 2.0 * BT * C * e + BT * 4.0 + 2.0 * C * 4.0, OP_NONE, s);
        r->serial_s = r->launches * (double)BT / m->a.serial_ilp * m->a.latency_us * 1e-6;
    }
    r->launch.a = BT; r->launch.b = C;
    r = perf_gemm(m, "backward", "down dinp", S, gemm, acc * L, BT, F, C, 1, e, e, 0.0f);
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 0;
    r = perf_gemm(m, "backward", "down dweight", S, gemm, acc * L, C, F, BT, 1, e, 4.0, 1.0f);
    r->model_flops = r->flops; r->launch.a = 1; r->launch.b = 0; r->launch.out_fp32 = 1;
    snprintf(s, sizeof s, "%lldx%lld", BT, F);
    r = perf_kernel(m, "backward", "swiglu_backward", S, PERF_FP32_CORE, acc * L, 10.0 * BT * F, 5.0 * BT * F * e,
                    OP_SWIGLU_BWD, s);
    r->launch.a = BT * F;
    if (m->v.fused) {
        r = perf_gemm(m, "backward", "gate|up dinp, one product (K = 2F)", S, gemm, acc * L, BT, C, 2 * F, 1, e, e,
                      0.0f);
    } else {
        r = perf_gemm(m, "backward", "gate up dinp", S, gemm, acc * 2 * L, BT, C, F, 1, e, e, 0.0f);
    }
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 0;
    r = perf_gemm(m, "backward", "gate up dweight", S, gemm, acc * 2 * L, F, C, BT, 1, e, 4.0, 1.0f);
    r->model_flops = r->flops; r->launch.a = 1; r->launch.b = 0; r->launch.out_fp32 = 1;
    snprintf(s, sizeof s, "%lldx%lld", BT, C);
    // one a layer (the attention's dxn of wq and wk; wv's part is added in the attention norm's backward,
    // rmsnorm_backward_residual, which reads it once more, as does the mlp norm's unfused)
    if (!m->v.fused) {  // fused, the attention's dxn is one product too
        r = perf_kernel(m, "backward", "residual_backward (+=)", S, PERF_FP32_CORE, acc * L, 1.0 * BT * C,
                        3.0 * BT * C * e, OP_RESIDUAL_BWD, s);
        r->launch.a = BT * C;
    }
    if (m->v.fused) {
        r = perf_gemm(m, "backward", "q|k|v dinp, one product (K = 3C)", S, gemm, acc * L, BT, C, 3 * C, 1, e, e,
                      0.0f);
        r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 0;
        r = perf_gemm(m, "backward", "o dinp", S, gemm, acc * L, BT, C, C, 1, e, e, 0.0f);
    } else {
        r = perf_gemm(m, "backward", "q k v o dinp", S, gemm, acc * 4 * L, BT, C, C, 1, e, e, 0.0f);
    }
    r->model_flops = r->flops; r->launch.a = 0; r->launch.b = 0;
    r = perf_gemm(m, "backward", "q k v o dweight", S, gemm, acc * 4 * L, C, C, BT, 1, e, 4.0, 1.0f);
    r->model_flops = r->flops; r->launch.a = 1; r->launch.b = 0; r->launch.out_fp32 = 1;
    if (!m->v.flash) {
        // (before flash attention: these rows have no launcher any more)
        r = perf_gemm(m, "backward", "attention datt = dout v^T (before flash)", S, gemm, acc * L * B, T, T, HS, NH,
                      e, e, 0.0f);
        r->attn_flops = r->flops; r->launch.op = OP_NONE;
        r = perf_gemm(m, "backward", "attention dv = att^T dout (before flash)", S, gemm, acc * L * B, T, HS, T, NH,
                      e, e, 0.0f);
        r->attn_flops = r->flops; r->launch.op = OP_NONE;
        snprintf(s, sizeof s, "%lldx%lldx%lldx%lld", B, NH, T, T);
        r = perf_kernel(m, "backward", "softmax_backward (before flash)", S, PERF_FP32_CORE, acc * L,
                        4.0 * B * NH * tri, B * NH * (2.0 * tri + tt) * e, OP_NONE, s);
        r = perf_gemm(m, "backward", "attention dq = ds k, dk = ds^T q (before flash)", S, gemm, acc * L * B * 2, T,
                      HS, T, NH, e, e, 0.0f);
        r->attn_flops = r->flops; r->launch.op = OP_NONE;
    } else {
        // dv, dP, dq, dk over the causal blocks, plus the scores recomputed (not model FLOPs)
        double f = 2.0 * B * NH * HS * tri;
        snprintf(s, sizeof s, "%lldx%lldx%lldx%lld causal", B, NH, T, HS);
        r = perf_kernel(m, "backward", "flash attention backward", S, PERF_FLASH, acc * L, 5.0 * f,
                        8.0 * BT * C * e + 2.0 * B * NH * T * 4.0, OP_FLASH_BWD, s);
        r->attn_flops = acc * L * 4.0 * f;
        r->launch.a = B; r->launch.b = T; r->launch.c = NH; r->launch.d = HS;
    }
    snprintf(s, sizeof s, "%lldx%lldx%lld", BT, NH, HS);
    r = perf_kernel(m, "backward", "rope_backward (dq, dk)", S, PERF_FP32_CORE, acc * 2 * L, 3.0 * BT * C,
                    2.0 * BT * C * e + T * HS * 4.0, OP_ROPE, s);
    r->launch.a = B; r->launch.b = T; r->launch.c = NH; r->launch.d = HS;
    snprintf(s, sizeof s, "%lldx%lld", BT, C);
    if (m->v.parallel_wgrad) {
        // encoder_backward_buckets on the host: a counting sort of the micro-batch by token (2 BT + 4 V element
        // visits: counts, buckets, prefix sums, starts, rows, and the memset of V + 1 counts), then one async
        // copy of rows, starts, tokens (BT + 2 U + 1 ints) in stream order before the kernel. encoder_backward:
        // one block per (distinct token, 256 channels), each adding its token's rows in order into its dwte row
        // (read once, written once). U distinct tokens: V (1 - e^(-BT/V)), the expectation for uniform tokens
        // and about an upper bound for text. latency: the most frequent token's block walks top_token x BT rows;
        // every block a chain of (2 + its rows / serial_ilp) loads, per wave of blocks
        double U = perf_distinct_tokens(BT, V);
        double top = ceil(m->a.top_token * BT), mean = BT / U;
        if (top < 1.0) { top = 1.0; }
        double blocks = U * perf_ceil_div(C, PERF_BLOCK_COLUMNS);
        double chain_top = 2.0 + ceil(top / m->a.serial_ilp), chain_mean = 2.0 + ceil(mean / m->a.serial_ilp);
        double lat = perf_waves(blocks) * chain_mean > chain_top ? perf_waves(blocks) * chain_mean : chain_top;
        double ints = BT + 2.0 * U + 1.0;
        r = perf_kernel(m, "backward", "encoder_backward_buckets + encoder_backward", S, PERF_FP32_CORE, 2.0 * acc,
                        0.0, 0.0, OP_ENCODER_BWD, s);
        r->flops = acc * (double)BT * C;
        r->bytes = acc * (BT * C * e + ints * 4.0 + 2.0 * U * C * 4.0);
        r->serial_s = acc * (lat * m->a.latency_us * 1e-6 + ints * 4.0 / (m->a.h2d_gbs * 1e9));
        r->host_s = acc * (2.0 * BT + 4.0 * V) * m->a.host_ns * 1e-9;
    } else {
        // one thread per channel, B*T dependent load-add-store steps into the fp32 table
        r = perf_kernel(m, "backward", "encoder_backward (serial rows, before e56a56e)", S, PERF_FP32_CORE, acc,
                        1.0 * BT * C, BT * C * e + BT * 4.0 + 2.0 * BT * C * 4.0, OP_NONE, s);
        r->serial_s = r->launches * (double)BT * m->a.latency_us * 1e-6;
    }
    r->launch.a = BT; r->launch.b = C;
}

static void perf_build_step(PerfModel* m) {
    const PerfDims* d = &m->d;
    double np = perf_all_params(d);
    char s[64];
    snprintf(s, sizeof s, "%.0f", np);
    PerfRow* r;
    r = perf_kernel(m, "step", "zero_grad (memset)", PERF_SET_COMMON, PERF_MEMORY, 1, 0.0, 4.0 * np, OP_MEMSET, s);
    r->launch.a = (long long)(4.0 * np);
    r = perf_kernel(m, "step", "grad norm (squared_norm_chunks)", PERF_SET_COMMON, PERF_FP32_CORE, 1, 2.0 * np,
                    4.0 * np, OP_NORM, s);
    r->launch.a = (long long)np;
    if (m->v.clip) {
        r = perf_kernel(m, "step", "grad_scale (clipping)", PERF_SET_COMMON, PERF_FP32_CORE, 1, np, 8.0 * np,
                        OP_SCALE, s);
        r->launch.a = (long long)np;
    }
    if (!m->v.fp32_acts) {
        r = perf_kernel(m, "step", "bf16 weight copy (float_to_bf16)", PERF_SET_COMMON, PERF_FP32_CORE, 1, 0.0,
                        6.0 * np, OP_REFRESH, s);
        r->launch.a = (long long)np;
    }
}

static void perf_build_optimizers(PerfModel* m) {
    const PerfDims* d = &m->d;
    double np = perf_all_params(d);
    double n_lr_adam = 2.0 * d->V * d->C + (2.0 * d->L + 1.0) * d->C;  // embeddings, lm_head, norms
    char s[64];
    PerfRow* r;
    // full AdamW: one launch per parameter tensor (12), 4 reads and 3 writes of fp32 per parameter
    snprintf(s, sizeof s, "%.0f", np);
    r = perf_kernel(m, "adamw", "adamw_kernel (every tensor)", PERF_SET_ADAMW, PERF_FP32_CORE, 12, 14.0 * np / 12,
                    28.0 * np / 12, OP_ADAMW, s);
    r->launch.a = (long long)(np / 12);
    snprintf(s, sizeof s, "%.0f", n_lr_adam);
    r = perf_kernel(m, "lowrank", "adamw_kernel (emb, lm_head, norms)", PERF_SET_LR_ADAMW, PERF_FP32_CORE, 5,
                    14.0 * n_lr_adam / 5, 28.0 * n_lr_adam / 5, OP_ADAMW, s);
    r->launch.a = (long long)(n_lr_adam / 5);

    // the three bulk products (projection, back-projection, residual) at the variant's precision. every
    // variant reads fp32 operands, 4 bytes: cuBLAS's TF32 rounds them, and the bf16 WMMA kernels round
    // them as they stage them in shared memory. bf16 (today in bf16 mode): the projection is
    // lowrank_project_kernel, the residual norms and the update the fused kernels, all bf16 WMMA; what
    // stays on cuBLAS (GaLore's back-projection; the unfused recovery's residual and back-projection) is
    // TF32. outputs stay fp32. the tracking step's products (gemm_gpu) are fp32 in every variant
    int bf16_wmma = m->v.opt_gemm == PERF_GEMM_BF16;
    int gemm = m->v.opt_gemm == PERF_GEMM_FP32 ? PERF_FP32_GEMM : PERF_TF32_GEMM;
    int wmma = bf16_wmma ? PERF_BF16_WMMA : PERF_TF32_WMMA;
    double ge = 4.0;
    int ST = PERF_SET_SUBTRACK, GA = PERF_SET_GALORE, BOTH = PERF_SET_SUBTRACK | PERF_SET_GALORE;
    double k = m->k;
    PerfShapeGroup g[2];
    int ng = perf_shape_groups(d, g);
    for (int gi = 0; gi < ng; gi++) {
        long long p = g[gi].p, q = g[gi].q, R = m->rank;
        if (R > p) { R = p; }
        // launches per step of one per-matrix kernel: one per matrix, one per batch of a shape (today), or
        // one per tensor (over its L layers)
        double per = m->v.opt_batched == 1 ? g[gi].tensors
                   : m->v.opt_batched == 2 ? perf_ceil_div(g[gi].count, perf_lowrank_batch(p, q, R)) : g[gi].count;
        double nm = g[gi].count;  // matrices: the work scales with these
        char tag[80];
        // every step: projection Gt = S^T G (left) or G S (right); in bf16 mode 64 x 64 tiles of Gt (R, q),
        // each reducing over p: reads S and G (from L2 after the first of the R / 64 tiles of a slab), writes Gt
        snprintf(tag, sizeof tag, "projection Gt [%s]", g[gi].names);
        if (bf16_wmma) {
            snprintf(s, sizeof s, "%lldx%lldx%lld", p, q, R);
            r = perf_kernel(m, "lowrank", tag, BOTH, PERF_BF16_WMMA, nm, 2.0 * p * q * R,
                            4.0 * p * R + 4.0 * p * q + 4.0 * R * q, OP_PROJECT, s);
            r->launches = per; r->launch.a = p; r->launch.b = q; r->launch.c = R;
        } else {
            r = perf_gemm(m, "lowrank", tag, BOTH, gemm, nm, R, q, p, 1, ge, 4.0, 0.0f);
            r->launches = per;
            r->launch.op = OP_SGEMM_BULK; r->launch.a = 1; r->launch.b = 0;
        }
        // recovery scaling's residual tiles of p: the partial norms kernel writes (tiles, q) doubles
        double tiles = perf_ceil_div(p, PERF_WMMA_TILE);
        if (!m->v.fused_recovery) {
            // SubTrack++ (recovery scaling): the residual D = G - S Gt, then N back-projected into W, then
            // W -= D diag(phi) elementwise. GaLore as published: the back-projection only
            snprintf(s, sizeof s, "%lldx%lld", p, q);
            snprintf(tag, sizeof tag, "residual copy D = G [%s]", g[gi].names);
            r = perf_kernel(m, "lowrank", tag, ST, PERF_MEMORY, nm, 0.0, 8.0 * p * q, OP_COPY, s);
            r->launches = per; r->launch.a = p * q * 4;
            snprintf(tag, sizeof tag, "residual D -= S Gt [%s]", g[gi].names);
            r = perf_gemm(m, "lowrank", tag, ST, gemm, nm, p, q, R, 1, ge, 4.0, 1.0f);
            r->launches = per; r->launch.op = OP_SGEMM_BULK; r->launch.a = 0; r->launch.b = 0;
        } else {
            // bf16 mode: the residual's per-tile column norms from 64 x 64 tiles of S Gt (bf16 WMMA; TF32
            // before) that stay in shared memory; reads G once, S and Gt per tile (from L2), writes (tiles, q)
            // doubles
            snprintf(s, sizeof s, "%lldx%lldx%lld", p, q, R);
            snprintf(tag, sizeof tag, "residual_norms ||G - S Gt||^2 tiles [%s]", g[gi].names);
            r = perf_kernel(m, "lowrank", tag, ST, wmma, nm, 2.0 * p * q * R,
                            4.0 * p * q + 4.0 * p * R + 4.0 * R * q + 8.0 * tiles * q, OP_RESIDUAL_NORMS, s);
            r->launches = per; r->launch.a = p; r->launch.b = q; r->launch.c = R;
        }
        snprintf(s, sizeof s, "%lldx%lld", R, q);
        snprintf(tag, sizeof tag, "adam_norms (+ residual norms) [%s]", g[gi].names);
        // step 4 over the moments; with recovery scaling it also reads D (fused: the residual's partial norms)
        double norms_in = m->v.fused_recovery ? 8.0 * tiles * q : 4.0 * p * q;
        r = perf_kernel(m, "lowrank", tag, ST, PERF_FP32_CORE, nm, 12.0 * R * q + norms_in / 2.0,
                        24.0 * R * q + norms_in + 12.0 * q, OP_ADAM_NORMS, s);
        r->launches = per; r->launch.a = p; r->launch.b = q; r->launch.c = R; r->launch.e = m->v.fused_recovery;
        snprintf(tag, sizeof tag, "adam (no recovery) [%s]", g[gi].names);
        r = perf_kernel(m, "lowrank", tag, GA, PERF_FP32_CORE, nm, 10.0 * R * q, 24.0 * R * q, OP_ADAM_NORMS, s);
        r->launches = per; r->launch.a = p; r->launch.b = q; r->launch.c = R; r->launch.f = 1;
        snprintf(s, sizeof s, "%lld", q);
        snprintf(tag, sizeof tag, "limiter (1 block) [%s]", g[gi].names);
        r = perf_kernel(m, "lowrank", tag, ST, PERF_FP32_CORE, nm, 3.0 * q, 12.0 * q, OP_LIMITER, s);
        r->launches = per; r->sm_bytes = r->bytes; r->launch.a = q;
        if (m->v.fused_recovery) {
            // W = (1 - lr wd) (W - lr c (S N' + G diag f)), N' = alpha N - Gt diag f, f = scale phi: the small
            // (R, q) kernel for N', then one WMMA product into W whose epilogue reads G and W and writes W
            snprintf(s, sizeof s, "%lldx%lld", R, q);
            snprintf(tag, sizeof tag, "update_moments N' = alpha N - Gt diag(f) [%s]", g[gi].names);
            r = perf_kernel(m, "lowrank", tag, ST, PERF_FP32_CORE, nm, 3.0 * R * q, 12.0 * R * q + 4.0 * q,
                            OP_UPDATE_MOMENTS, s);
            r->launches = per; r->launch.a = R; r->launch.b = q;
            snprintf(s, sizeof s, "%lldx%lldx%lld", p, q, R);
            snprintf(tag, sizeof tag, "fused_update W -= S N' + G diag(f) [%s]", g[gi].names);
            r = perf_kernel(m, "lowrank", tag, ST, wmma, nm, 2.0 * p * q * R,
                            12.0 * p * q + 4.0 * p * R + 4.0 * R * q + 4.0 * q, OP_FUSED_UPDATE, s);
            r->launches = per; r->launch.a = p; r->launch.b = q; r->launch.c = R;
        }
        // GaLore's back-projection (and SubTrack++'s, unfused)
        snprintf(tag, sizeof tag, "back-projection W -= S N [%s]", g[gi].names);
        r = perf_gemm(m, "lowrank", tag, m->v.fused_recovery ? GA : BOTH, gemm, nm, p, q, R, 1, ge, 4.0, 1.0f);
        r->launches = per; r->launch.op = OP_SGEMM_BULK; r->launch.a = 0; r->launch.b = 0;
        if (!m->v.fused_recovery) {
            snprintf(s, sizeof s, "%lldx%lld", p, q);
            snprintf(tag, sizeof tag, "recovery_apply W -= D diag(phi) [%s]", g[gi].names);
            r = perf_kernel(m, "lowrank", tag, ST, PERF_FP32_CORE, nm, 4.0 * p * q, 12.0 * p * q + 4.0 * q,
                            OP_RECOVERY_APPLY, s);
            r->launches = per; r->launch.a = p; r->launch.b = q;
        }

        // SubTrack++'s tracking step, every k steps (subtrack_track_subspace)
        double tk = nm / k, tper = per / k;
        snprintf(tag, sizeof tag, "track X = G A^T [%s]", g[gi].names);
        r = perf_gemm(m, "track", tag, ST, PERF_FP32_GEMM, tk, p, R, q, 1, 4.0, 4.0, 0.0f);
        r->launches = tper; r->launch.op = OP_SGEMM; r->launch.a = 0; r->launch.b = 1;
        snprintf(tag, sizeof tag, "track AAt, dF, H (R x R x p) [%s]", g[gi].names);
        r = perf_gemm(m, "track", tag, ST, PERF_FP32_GEMM, 3 * tk, R, R, p, 1, 4.0, 4.0, 0.0f);
        r->launches = 3 * tper; r->launch.op = OP_SGEMM; r->launch.a = 1; r->launch.b = 0;
        snprintf(s, sizeof s, "%lldx%lld x%.0f it", R, R, m->a.power_iters);
        snprintf(tag, sizeof tag, "power_iteration (1 block) [%s]", g[gi].names);
        r = perf_kernel(m, "track", tag, ST, PERF_FP32_CORE, tk, 2.0 * R * R * m->a.power_iters,
                        4.0 * R * R * m->a.power_iters, OP_POWER, s);
        r->launches = tper; r->sm_bytes = r->bytes; r->launch.a = R;
        snprintf(s, sizeof s, "%lldx%lld", p, R);
        snprintf(tag, sizeof tag, "track u, project, orthogonalize (3 kernels) [%s]", g[gi].names);
        r = perf_kernel(m, "track", tag, ST, PERF_FP32_CORE, 3 * tk, 2.0 * p * R, 4.0 * p * R + 16.0 * p, OP_TRACK_ROWS,
                        s);
        r->launches = 3 * tper; r->launch.a = p; r->launch.b = R;
        snprintf(s, sizeof s, "%lld", p);
        snprintf(tag, sizeof tag, "track sigma, angle (1 block each) [%s]", g[gi].names);
        r = perf_kernel(m, "track", tag, ST, PERF_FP32_CORE, 2 * tk, 2.0 * p, 8.0 * p, OP_TRACK_REDUCE, s);
        r->launches = 2 * tper; r->sm_bytes = r->bytes; r->launch.a = p;
        snprintf(s, sizeof s, "%lldx%lld", p, R);
        snprintf(tag, sizeof tag, "track_geodesic S += a v^T [%s]", g[gi].names);
        r = perf_kernel(m, "track", tag, ST, PERF_FP32_CORE, tk, 4.0 * p * R, 8.0 * p * R, OP_GEODESIC, s);
        r->launches = tper; r->launch.a = p; r->launch.b = R;
        snprintf(s, sizeof s, "%lldx%lld", p, q);
        snprintf(tag, sizeof tag, "track_update_projection Gt += v a^T G [%s]", g[gi].names);
        r = perf_kernel(m, "track", tag, ST, PERF_FP32_CORE, tk, 2.0 * p * q + 2.0 * R * q, 4.0 * p * q + 8.0 * R * q,
                        OP_UPDATE_PROJECTION, s);
        r->launches = tper; r->launch.a = p; r->launch.b = q; r->launch.c = R;
        snprintf(s, sizeof s, "%lldx%lld", R, q);
        snprintf(tag, sizeof tag, "moments_rotate_rank1 [%s]", g[gi].names);
        r = perf_kernel(m, "track", tag, ST, PERF_FP32_CORE, tk, 12.0 * R * q, 16.0 * R * q, OP_ROTATE_RANK1, s);
        r->launches = tper; r->launch.a = p; r->launch.b = q; r->launch.c = R;

        // the SVD: GaLore's refresh every k steps (amortised), one whole refresh pass, and the first step's
        for (int pass = 0; pass < 3; pass++) {
            int set = pass == 0 ? GA : pass == 1 ? PERF_SET_REFRESH : PERF_SET_INIT;
            const char* ph = pass == 0 ? "refresh/k" : pass == 1 ? "refresh" : "init";
            double f = pass == 0 ? 1.0 / k : 1.0;  // launches scale
            double cnt = nm * f, lper = per * f;
            if (pass < 2) {
                snprintf(s, sizeof s, "%lldx%lld", p, R);
                snprintf(tag, sizeof tag, "copy S_old [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_MEMORY, cnt, 0.0, 8.0 * p * R, OP_COPY, s);
                r->launches = lper; r->launch.a = p * R * 4;
            } else {
                snprintf(s, sizeof s, "%lldx%lld", R, q);
                snprintf(tag, sizeof tag, "memset M, V [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_MEMORY, 2 * cnt, 0.0, 4.0 * R * q, OP_MEMSET, s);
                r->launches = 2 * lper; r->launch.a = R * q * 4;
            }
            if (m->v.svd == PERF_SVD_TOPR) {
                // --svd randomized (svd_randomized_top_left_singular_vectors): randomized subspace iteration on
                // A = K + mu I, K = X X^T (p, p) in double, l = min(R + o, p), it power iterations, the matrices
                // of a shape in chunks (lowrank_svd_chunk), each chunk one batch: every launch and every
                // eigensolver call below is one per chunk. the Gram by gram_double_kernel (FP64 CUDA cores,
                // eff_gram; batched over blockIdx.z); then it + 2 DGEMMs Y = A Q (2 p^2 l; the last one for
                // Rayleigh-Ritz), it + 2 orths of two passes, each W = Y^T Y and Q = Y V (2 p l^2 each), B =
                // Q^T (A Q) (2 p l^2) and S = Q U (2 p l R): cublasDgemmStridedBatched (FP64 tensor cores, at
                // eff_gemm). 2 (it + 2) + 1 cusolverDnXsyevBatched calls on (l, l): 14/3 l^3 each matrix
                // (reduction, divide and conquer, all vectors), and l dependent column steps once per call
                // (batched_step_us), not per matrix. l == p: Q = I, no orth and one DGEMM A Q
                int it = m->a.topr_iters;
                long long l = R + m->a.topr_oversample < p ? R + m->a.topr_oversample : p;
                int orths = l == p ? 0 : it + 2, aq = l == p ? 1 : it + 2, calls = 2 * orths + 1;
                // the chunks: whole step batches (their own arrays, no SVD's, in 256 MiB) up to 2 GiB of SVD
                // arrays (A p^2, Q Y p l, W l^2 doubles, lambda, S p R floats); alignment left out
                double own = p * q + 4.0 * q * R + 2.0 * p * R + 3.0 * R * R + 5.0 * q + 5.0 * p + 6.0 * R;
                double per_b = floor(PERF_BATCH_SCRATCH_FLOATS / own);
                if (per_b < 1.0) { per_b = 1.0; }
                if (per_b > nm) { per_b = nm; }
                double svd_one = 2.0 * p * p + 4.0 * p * l + 2.0 * l * l + 2.0 * l + 1.0 + (double)p * R;
                double fit = floor(PERF_SVD_CHUNK_FLOATS / svd_one / per_b);
                double chunk = (fit > 1.0 ? fit : 1.0) * per_b;
                if (chunk > nm) { chunk = nm; }
                double nch = perf_ceil_div(nm, chunk) * f;   // chunk batches per pass (refresh/k: amortised)
                long long nt = (p + 31) / 32;
                snprintf(s, sizeof s, "%lldx%lld <- %lldx%lld x%.0f", p, p, p, q, chunk);
                snprintf(tag, sizeof tag, "topr gram_double K (fp64 core, batched) [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP64_CORE, cnt, 1024.0 * 2.0 * q * nt * (nt + 1) / 2.0,
                                4.0 * p * q + 8.0 * p * p, OP_NONE, s);
                r->launches = nch;
                snprintf(s, sizeof s, "%lld + %lldx%lld", p, p, l);
                snprintf(tag, sizeof tag, "topr shift A = K + mu I, sketch Omega (2 kernels) [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_MEMORY, cnt, 2.0 * p, 16.0 * p + (l == p ? 8.0 * p * p : 8.0 * p * l),
                                OP_NONE, s);
                r->launches = 2 * nch;
                snprintf(s, sizeof s, "%lldx%lldx%lld x%.0f", p, l, p, chunk);
                snprintf(tag, sizeof tag, "topr DGEMM Y = A Q (%d) [%s]", aq, g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP64_GEMM, cnt * aq, 2.0 * p * p * l,
                                8.0 * ((double)p * p + 2.0 * p * l), OP_NONE, s);
                r->launches = aq * nch;
                if (orths > 0) {
                    snprintf(s, sizeof s, "%lldx%lldx%lld x%.0f", l, l, p, chunk);
                    snprintf(tag, sizeof tag, "topr DGEMM orth W = Y^T Y, Q = Y V (%d) [%s]", 4 * orths, g[gi].names);
                    r = perf_kernel(m, ph, tag, set, PERF_FP64_GEMM, cnt * 4 * orths, 2.0 * p * l * l,
                                    8.0 * (1.5 * p * l + 1.5 * l * l), OP_NONE, s);
                    r->launches = 4 * orths * nch;
                }
                snprintf(s, sizeof s, "%lldx%lldx%lld x%.0f", l, l, p, chunk);
                snprintf(tag, sizeof tag, "topr DGEMM B = Q^T A Q, S = Q U (2) [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP64_GEMM, cnt, 2.0 * p * l * l + 2.0 * p * l * R,
                                8.0 * (3.0 * p * l + 2.0 * l * l + p * R), OP_NONE, s);
                r->launches = 2 * nch;
                snprintf(s, sizeof s, "%lldx%lld x%.0f", l, l, chunk);
                snprintf(tag, sizeof tag, "topr cusolverDnXsyevBatched l x l (%d calls) [%s]", calls, g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP64_SYEVD, cnt * calls, 14.0 / 3.0 * l * l * l,
                                8.0 * 3.0 * l * l, OP_NONE, s);
                r->launches = calls * nch;
                r->serial_s = calls * nch * (double)l * m->a.batched_step_us * 1e-6;
                snprintf(s, sizeof s, "%lldx%lld", l, l);
                snprintf(tag, sizeof tag, "topr orth scale, devInfo fold (small kernels) [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_MEMORY, cnt * calls, (double)l * l, 16.0 * l * l, OP_NONE, s);
                r->launches = (2 * orths + calls) * nch;
                snprintf(s, sizeof s, "%lldx%lld", p, R);
                snprintf(tag, sizeof tag, "topr top vectors, canonical_sign, copy to S [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP32_CORE, cnt, 2.0 * p * R, 8.0 * p * R + 12.0 * p * R,
                                OP_NONE, s);
                r->launches = 2 * nch + lper;
            } else {
                // K = op(G) op(G)^T (p, p) in double: 32 x 32 tiles on and below the diagonal, each full
                long long nt = (p + 31) / 32;
                snprintf(s, sizeof s, "%lldx%lld <- %lldx%lld", p, p, p, q);
                snprintf(tag, sizeof tag, "gram_double (fp64) [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP64_CORE, cnt, 1024.0 * 2.0 * q * nt * (nt + 1) / 2.0,
                                4.0 * p * q + 8.0 * p * p, OP_GRAM, s);
                r->launches = lper; r->launch.a = p; r->launch.b = q;
                // today (svd_top_left_singular_vectors): cusolverDnDsyevdx, CUSOLVER_EIG_RANGE_I, indices
                // p-R+1..p: the tridiagonal reduction of all of K, 4/3 p^3, the R wanted pairs of the
                // tridiagonal matrix (O(p R), not counted), and the back-transformation of R vectors, 2 p^2 R;
                // it returns the count found to the host (one synchronisation a matrix, inside its floor).
                // before da90bbf, syevd with every vector: the reduction 4/3 p^3, divide and conquer <= 4/3 p^3
                // (no deflation), the back-transformation 2 p^3: 14/3 p^3. either way the reduction's p
                // column steps run one after the other (serial floor)
                double ef = m->v.svd == PERF_SVD_FULL ? 14.0 / 3.0 * p * p * p
                          : 4.0 / 3.0 * p * p * p + 2.0 * (double)p * p * R;
                snprintf(s, sizeof s, "%lldx%lld top %lld", p, p, m->v.svd == PERF_SVD_FULL ? p : R);
                snprintf(tag, sizeof tag, "%s (fp64) [%s]", m->v.svd == PERF_SVD_FULL
                         ? "cusolverDnDsyevd, all p (before da90bbf)" : "cusolverDnDsyevdx range I, top R",
                         g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP64_SYEVD, cnt, ef, 8.0 * 3.0 * p * p,
                                m->v.svd == PERF_SVD_FULL ? OP_NONE : OP_SYEVDX, s);
                r->serial_s = cnt * (double)p * m->a.syevd_step_us * 1e-6;
                r->launch.a = p; r->launch.b = R;
                snprintf(s, sizeof s, "%lldx%lld", p, R);
                snprintf(tag, sizeof tag, "top_eigenvectors, canonical_sign [%s]", g[gi].names);
                r = perf_kernel(m, ph, tag, set, PERF_FP32_CORE, 2 * cnt, 1.0 * p * R, 10.0 * p * R, OP_TOP_EIG, s);
                r->launches = 2 * lper; r->launch.a = p; r->launch.b = R;
            }
        }
    }
}

// every row of one recipe under one variant
static void perf_model_build(PerfModel* m, const char* preset, const PerfDims* d, int B, int T, int accum, int rank,
                             int k, const PerfVariant* v, const PerfAssume* a) {
    memset(m, 0, sizeof *m);
    snprintf(m->preset, sizeof m->preset, "%s", preset);
    m->d = *d;
    m->B = B; m->T = T; m->accum = accum; m->rank = rank; m->k = k;
    m->v = *v;
    m->a = *a;
    perf_build_forward_backward(m);
    perf_build_step(m);
    perf_build_optimizers(m);
}

// ----------------------------------------------------------------------------
// times

static double perf_peak_tflops(const PerfDevice* dev, int cls) {
    switch (cls) {
        case PERF_BF16_GEMM: case PERF_FLASH: return dev->bf16;
        case PERF_BF16_WMMA: return dev->bf16;
        case PERF_TF32_GEMM: case PERF_TF32_WMMA: return dev->tf32;
        case PERF_FP32_GEMM: case PERF_FP32_CORE: return dev->fp32;
        case PERF_FP64_CORE: case PERF_FP64_SYEVD: case PERF_FP64_GEMM: return dev->fp64;
        default: return dev->fp32;
    }
}

// the roofline: a lower bound at peak, seconds per step
static double perf_row_roofline(const PerfRow* r, const PerfDevice* dev) {
    double t_flops = r->flops / (perf_peak_tflops(dev, r->cls) * 1e12);
    double t_bytes = r->bytes / (dev->hbm * 1e12);
    return t_flops > t_bytes ? t_flops : t_bytes;
}

static double perf_class_eff(const PerfAssume* a, int cls) {
    switch (cls) {
        case PERF_FLASH: return a->eff_flash;
        case PERF_TF32_WMMA: case PERF_BF16_WMMA: return a->eff_wmma;
        case PERF_FP64_CORE: return a->eff_gram;
        case PERF_FP32_CORE: case PERF_MEMORY: return 1.0;  // memory-bound: eff_bw applies
        default: return a->eff_gemm;
    }
}

// the estimate: the roofline at the stated efficiencies, and the floors
static double perf_row_estimate(const PerfRow* r, const PerfDevice* dev, const PerfAssume* a) {
    double t = r->flops / (perf_peak_tflops(dev, r->cls) * 1e12 * perf_class_eff(a, r->cls));
    double tb = r->bytes / (dev->hbm * 1e12 * a->eff_bw);
    if (tb > t) { t = tb; }
    double tl = r->launches * a->launch_us * 1e-6 + r->host_s;
    if (tl > t) { t = tl; }
    if (r->serial_s > t) { t = r->serial_s; }
    double ts = r->sm_bytes / (a->sm_gbs * 1e9);
    if (ts > t) { t = ts; }
    return t;
}

typedef struct {
    double roof, est;
} PerfTime;

// the rows of the given sets, summed
static PerfTime perf_sum(const PerfModel* m, int sets, const PerfDevice* dev) {
    PerfTime t = {0.0, 0.0};
    for (int i = 0; i < m->n; i++) {
        if (!(m->rows[i].set & sets)) { continue; }
        t.roof += perf_row_roofline(&m->rows[i], dev);
        t.est += perf_row_estimate(&m->rows[i], dev, &m->a);
    }
    return t;
}

static double perf_sum_field(const PerfModel* m, int sets, int field) {
    double s = 0.0;
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (!(r->set & sets)) { continue; }
        s += field == 0 ? r->flops : field == 1 ? r->model_flops : field == 2 ? r->attn_flops : r->bytes;
    }
    return s;
}

// the GEMM FLOPs of a set's rows whose name starts with one of the low-rank products
static double perf_lowrank_gemm_flops(const PerfModel* m, int sets, const char* phase) {
    double s = 0.0;
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (!(r->set & sets) || strcmp(r->phase, phase) != 0) { continue; }
        if (perf_class_is_gemm(r->cls)) { s += r->flops; }
    }
    return s;
}

// one recipe under one variant on one device
typedef struct {
    PerfTime common, adamw, subtrack, galore, init, refresh;
    PerfTime step_adamw, step_subtrack, step_galore;
    double model_flops;   // per step: matrices + attention (MFU numerator)
    double tokens;        // per step
} PerfSummary;

static PerfTime perf_add(PerfTime a, PerfTime b) {
    PerfTime t = {a.roof + b.roof, a.est + b.est};
    return t;
}

static PerfSummary perf_summarize(const PerfModel* m, const PerfDevice* dev) {
    PerfSummary s;
    s.common = perf_sum(m, PERF_SET_COMMON, dev);
    s.adamw = perf_sum(m, PERF_SET_ADAMW, dev);
    s.subtrack = perf_sum(m, PERF_SET_LR_ADAMW | PERF_SET_SUBTRACK, dev);
    s.galore = perf_sum(m, PERF_SET_LR_ADAMW | PERF_SET_GALORE, dev);
    s.init = perf_sum(m, PERF_SET_INIT, dev);
    s.refresh = perf_sum(m, PERF_SET_REFRESH, dev);
    s.step_adamw = perf_add(s.common, s.adamw);
    s.step_subtrack = perf_add(s.common, s.subtrack);
    s.step_galore = perf_add(s.common, s.galore);
    s.model_flops = perf_sum_field(m, PERF_SET_COMMON, 1) + perf_sum_field(m, PERF_SET_COMMON, 2);
    s.tokens = (double)m->B * m->T * m->accum;
    return s;
}

static double perf_mfu(const PerfSummary* s, double seconds, const PerfDevice* dev) {
    return s->model_flops / (seconds * dev->bf16 * 1e12);
}

// ----------------------------------------------------------------------------
// the check of the embedded figures against ../shared/GPU_NUMBERS.md

// the numbers in a markdown cell, in order ("769–798 TFLOP/s" -> 769, 798); returns how many
static int perf_cell_numbers(const char* cell, double* out, int max) {
    int n = 0;
    const char* c = cell;
    while (*c != '\0' && n < max) {
        if ((*c >= '0' && *c <= '9') || (*c == '.' && c[1] >= '0' && c[1] <= '9')) {
            char* end = NULL;
            out[n++] = strtod(c, &end);
            c = end;
        } else {
            c++;
        }
    }
    return n;
}

// the cell `col` (0 = the quantity) of the table row whose quantity is `quantity`; 1 if found
static int perf_table_cell(const char* text, const char* quantity, int col, char* cell, size_t cap) {
    const char* line = text;
    while (line != NULL && *line != '\0') {
        const char* eol = strchr(line, '\n');
        size_t len = eol != NULL ? (size_t)(eol - line) : strlen(line);
        if (len > 2 && line[0] == '|') {
            // the quantity: the first cell, trimmed
            const char* q = line + 1;
            while (*q == ' ') { q++; }
            size_t ql = strlen(quantity);
            if (strncmp(q, quantity, ql) == 0 && (q[ql] == ' ' || q[ql] == '|')) {
                const char* c = line;
                for (int i = 0; i < col; i++) {
                    c = (const char*)memchr(c + 1, '|', len - (size_t)(c + 1 - line));
                    if (c == NULL) { return 0; }
                }
                const char* end = (const char*)memchr(c + 1, '|', len - (size_t)(c + 1 - line));
                if (end == NULL) { return 0; }
                size_t n = (size_t)(end - c - 1) < cap - 1 ? (size_t)(end - c - 1) : cap - 1;
                memcpy(cell, c + 1, n);
                cell[n] = '\0';
                return 1;
            }
        }
        line = eol != NULL ? eol + 1 : NULL;
    }
    return 0;
}

// the number after `phrase` in the text ("come to about 11%" -> 11); 1 if found
static int perf_text_number(const char* text, const char* phrase, double* out) {
    const char* p = strstr(text, phrase);
    if (p == NULL) { return 0; }
    return perf_cell_numbers(p + strlen(phrase), out, 1) == 1;
}

typedef struct {
    const char* what;      // for messages
    const char* quantity;  // the table row, or NULL: a phrase in the text
    int col;               // 1 H100, 2 H200
    int index;             // which number of the cell
    double embedded;
} PerfFigure;

static const PerfFigure PERF_FIGURES[] = {
    {"GPU_H100_BF16_TFLOPS", "bf16 dense tensor-core peak", 1, 0, GPU_H100_BF16_TFLOPS},
    {"GPU_H200_BF16_TFLOPS", "bf16 dense tensor-core peak", 2, 0, GPU_H200_BF16_TFLOPS},
    {"GPU_H200_BF16_GEMM_LO_TFLOPS", "bf16 GEMM achieved, 8192³", 2, 0, GPU_H200_BF16_GEMM_LO_TFLOPS},
    {"GPU_H200_BF16_GEMM_HI_TFLOPS", "bf16 GEMM achieved, 8192³", 2, 1, GPU_H200_BF16_GEMM_HI_TFLOPS},
    {"GPU_H100_TF32_TFLOPS", "TF32 dense tensor-core peak", 1, 0, GPU_H100_TF32_TFLOPS},
    {"GPU_H200_TF32_TFLOPS", "TF32 dense tensor-core peak", 2, 0, GPU_H200_TF32_TFLOPS},
    {"GPU_H100_FP32_TFLOPS", "FP32 (no tensor cores)", 1, 0, GPU_H100_FP32_TFLOPS},
    {"GPU_H200_FP32_TFLOPS", "FP32 (no tensor cores)", 2, 0, GPU_H200_FP32_TFLOPS},
    {"GPU_H100_FP64_TFLOPS", "FP64 (tensor cores)", 1, 0, GPU_H100_FP64_TFLOPS},
    {"GPU_H200_FP64_TFLOPS", "FP64 (tensor cores)", 2, 0, GPU_H200_FP64_TFLOPS},
    {"GPU_H100_HBM_TBS", "HBM bandwidth", 1, 0, GPU_H100_HBM_TBS},
    {"GPU_H200_HBM_TBS", "HBM bandwidth", 2, 0, GPU_H200_HBM_TBS},
    {"GPU_H200_COPY_TBS", "device-to-device copy achieved", 2, 0, GPU_H200_COPY_TBS},
    {"GPU_H100_SMS", "SMs", 1, 0, GPU_H100_SMS},
    {"GPU_H200_SMS", "SMs", 2, 0, GPU_H200_SMS},
    {"GPU_NUMBERS_SHARE3_PCT", NULL, 0, 0, GPU_NUMBERS_SHARE3_PCT},
    {"GPU_NUMBERS_SHARE2_PCT", NULL, 1, 0, GPU_NUMBERS_SHARE2_PCT},
    {"GPU_H100_NVLINK_GBS", "NVLink (per GPU, all links)", 1, 0, GPU_H100_NVLINK_GBS},
    {"GPU_IB_NDR_PORT_GBS", "InfiniBand NDR per port", 1, 1, GPU_IB_NDR_PORT_GBS},
};
#define PERF_NUM_FIGURES ((int)(sizeof(PERF_FIGURES) / sizeof(PERF_FIGURES[0])))
static const char* PERF_FIGURE_PHRASES[2] = {"come to about ", "leaves about "};

// reads the file whole; NULL if it cannot be read
static char* perf_read_file(const char* path) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) { return NULL; }
    size_t cap = 1 << 16, n = 0;
    char* buf = (char*)malloc(cap + 1);
    if (buf == NULL) { fclose(f); return NULL; }
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char* bigger = (char*)realloc(buf, 2 * cap + 1);
            if (bigger == NULL) { free(buf); fclose(f); return NULL; }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

// compares every embedded figure with the file's. returns the number of
// mismatches (a figure the file lacks counts as one); -1 if the file cannot be
// read. each mismatch is described on `out`. report(ok, message) gets every figure
static int perf_check_figures(const char* path, FILE* out, void (*report)(int ok, const char* msg)) {
    char* text = perf_read_file(path);
    if (text == NULL) { return -1; }
    int bad = 0;
    for (int i = 0; i < PERF_NUM_FIGURES; i++) {
        const PerfFigure* f = &PERF_FIGURES[i];
        double nums[4];
        int n = 0;
        char where[160];
        if (f->quantity != NULL) {
            char cell[256];
            if (perf_table_cell(text, f->quantity, f->col, cell, sizeof cell)) { n = perf_cell_numbers(cell, nums, 4); }
            snprintf(where, sizeof where, "row '%s', %s column", f->quantity, f->col == 1 ? "H100 SXM" : "H200");
        } else {
            n = perf_text_number(text, PERF_FIGURE_PHRASES[f->col], &nums[0]) ? 1 : 0;
            snprintf(where, sizeof where, "the text '%s...%%'", PERF_FIGURE_PHRASES[f->col]);
        }
        int ok = n > f->index && fabs(nums[f->index] - f->embedded) <= 1e-9 * fabs(f->embedded);
        char msg[512];
        if (ok) {
            snprintf(msg, sizeof msg, "embedded %s = %g matches %s, %s", f->what, f->embedded, path, where);
        } else if (n > f->index) {
            snprintf(msg, sizeof msg, "embedded %s = %g but %s says %g (%s): update dev/perf_model.h", f->what,
                     f->embedded, path, nums[f->index], where);
        } else {
            snprintf(msg, sizeof msg, "embedded %s = %g: %s has no such figure (%s): update dev/perf_model.h",
                     f->what, f->embedded, path, where);
        }
        if (!ok) {
            bad++;
            if (out != NULL) { fprintf(out, "error: perf_model: %s\n", msg); }
        }
        if (report != NULL) { report(ok, msg); }
    }
    free(text);
    return bad;
}

// ----------------------------------------------------------------------------
// the report

// what the includer knows: the trainer's preset table and its parameter count
typedef struct {
    int (*find)(const char* name, PerfDims* d, char* full_name, size_t cap);  // 1 if found
    double (*parameter_count)(const PerfDims* d);                             // every parameter
} PerfTrainerFacts;

typedef struct {
    char presets[16][64];
    int num_presets;
    int B, T, accum, rank, k;       // 0: the recipe's
    PerfVariant v;
    PerfAssume a;
    int rows;                       // print the rows (default 1); --summary 0
    int table;                      // print the README table instead
    int scale;                      // the many-GPU scale model (with table: its README table)
    int check;                      // the self-check
    const char* numbers;            // GPU_NUMBERS.md path
} PerfOptions;

static void perf_print_assumptions(const PerfAssume* a, const PerfVariant* v) {
    printf("ESTIMATES, NOT MEASUREMENTS. roofline = max(FLOPs / peak of the row's arithmetic, bytes / HBM bandwidth),\n"
           "a lower bound at peak. estimate = the largest of: FLOPs / (peak x eff), bytes / (bandwidth x %.3f),\n"
           "launches x %.1f us (+ the host's own work), and the latency / one-SM floors below.\n", a->eff_bw,
           a->launch_us);
    printf("figures (../shared/GPU_NUMBERS.md): H100 SXM bf16 %.0f, TF32 %.0f, FP32 %.0f, FP64 %.0f TFLOP/s, HBM %.2f TB/s;\n"
           "  H200 the same peaks, HBM %.1f TB/s; bf16 GEMM achieved %.0f-%.0f TFLOP/s, copy %.1f TB/s (H200).\n",
           GPU_H100_BF16_TFLOPS, GPU_H100_TF32_TFLOPS, GPU_H100_FP32_TFLOPS, GPU_H100_FP64_TFLOPS, GPU_H100_HBM_TBS,
           GPU_H200_HBM_TBS, GPU_H200_BF16_GEMM_LO_TFLOPS, GPU_H200_BF16_GEMM_HI_TFLOPS, GPU_H200_COPY_TBS);
    printf("assumptions (not in GPU_NUMBERS.md; flags in --help):\n");
    printf("  eff_gemm   %.3f  every GEMM class at the measured bf16 GEMM's fraction of peak (small GEMMs do worse)\n",
           a->eff_gemm);
    printf("  eff_bw     %.3f  memory-bound kernels at the measured copy's fraction of HBM bandwidth (H200's; H100 assumed alike)\n",
           a->eff_bw);
    printf("  eff_flash  %.3f  flash attention's fraction of the bf16 peak (published FlashAttention-2/3 kernels at head\n"
           "                   size 64-128 reach about half)\n", a->eff_flash);
    printf("  eff_wmma   %.3f  the trainer's own WMMA kernels (projection, fused residual norms, fused update: 64x64\n"
           "                   tiles, 4 warps, no asynchronous-copy pipeline, fp32 operands rounded as staged) against\n"
           "                   their precision's peak (bf16; TF32 before); an estimate, not measured (cuBLAS reaches\n"
           "                   eff_gemm)\n", a->eff_wmma);
    printf("  eff_gram   %.3f  the trainer's FP64 Gram kernel (32x32 shared-memory tiles, 2 shared loads per DFMA, no\n"
           "                   tensor cores: bound by shared memory, and the FP64 non-tensor rate is below the 67 figure)\n",
           a->eff_gram);
    printf("  launch     %.1f us per launch (the host issues each kernel and cuBLAS call in order)\n", a->launch_us);
    printf("  latency    %.2f us per global load round trip, %.0f independent loads in flight per thread: rmsnorm's\n"
           "                   weight gradient walks 32 rows a thread (per wave of %.0f blocks of 256 threads), then\n"
           "                   B*T/256 partials; encoder_backward's block of a token walks that token's rows\n",
           a->latency_us, a->serial_ilp, PERF_RESIDENT_BLOCKS);
    printf("  top token  %.3f  of a micro-batch's positions are its most frequent token (text: a few %%; the\n"
           "                   per-kernel bench draws uniform tokens, far fewer repeats)\n", a->top_token);
    printf("  host sort  %.1f ns per element visited by encoder_backward_buckets' counting sort (2 B*T + 4 V a\n"
           "                   micro step); its bucket copy at %.0f GB/s host to device (pinned), in stream order\n",
           a->host_ns, a->h2d_gbs);
    printf("  one SM     %.0f GB/s from L2 for single-block kernels (power iteration: %.0f iterations assumed)\n",
           a->sm_gbs, a->power_iters);
    printf("  syevdx     %.1f us per column step of the tridiagonal reduction (p steps one after the other, also\n"
           "                   when range I asks for R pairs); FLOPs 4/3 p^3 + 2 p^2 R (reduction, back-transformation\n"
           "                   of R vectors); --svd full (syevd, before da90bbf): 14/3 p^3\n", a->syevd_step_us);
    if (v->svd == PERF_SVD_TOPR) {
        printf("  topr       %d power iterations, oversampling %d (l = R + o); the matrices of a shape in SVD chunks of\n"
               "                   up to 2 GiB, each chunk one batch; cusolverDnXsyevBatched: %.1f us per column step\n"
               "                   (l steps) once per call for the whole chunk (estimate, unmeasured), 14/3 l^3 FLOPs a\n"
               "                   matrix; the DGEMMs on FP64 tensor cores at eff_gemm; the Gram at eff_gram\n",
               a->topr_iters, a->topr_oversample, a->batched_step_us);
    }
    printf("variant: attention %s (%s), optimizer bulk GEMMs %s (tracking fp32), SVD %s, model residual adds %s,\n"
           "  weight-gradient column sums %s%s%s%s%s, activations %s\n",
           v->flash ? "flash" : "materialized", v->flash ? "MFU counts the causal triangle T(T+1)/2"
           : "MFU counts the full T x T square", PERF_GEMM_NAMES[v->opt_gemm], PERF_SVD_NAMES[v->svd],
           v->fused_residual ? "in the GEMM epilogue" : "as residual_forward launches",
           v->parallel_wgrad ? "two-pass / per token" : "one thread per channel",
           v->fused_recovery ? (v->opt_gemm == PERF_GEMM_BF16 ? ", recovery residual never formed (bf16 WMMA norms "
                                "and update)" : ", recovery residual never formed (TF32 WMMA norms and update)") : "",
           v->fused ? ", q|k|v and gate|up in one product each" : "",
           v->opt_batched == 1 ? ", optimizer launches batched over layers"
           : v->opt_batched == 2 ? ", optimizer launches per batch of a shape" : "", v->clip ? ", clipping on" : "",
           v->fp32_acts ? "fp32" : "bf16");
}

static void perf_print_rows(const PerfModel* m) {
    printf("\n%-10s %-52s %-24s %-10s %10s %11s %11s %9s %9s %9s %9s\n", "phase", "row", "one launch", "class",
           "launches", "GFLOP", "MB", "H100 roof", "H200 roof", "H100 est", "H200 est");
    printf("%-10s %-52s %-24s %-10s %10s %11s %11s %9s %9s %9s %9s\n", "", "(per training step; refresh/k, track:"
           " amortised over k)", "", "", "/step", "/step", "/step", "ms", "ms", "ms", "ms");
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (r->set & (PERF_SET_INIT | PERF_SET_REFRESH)) { continue; }
        printf("%-10s %-52.52s %-24.24s %-10s %10.2f %11.3f %11.2f %9.4f %9.4f %9.4f %9.4f\n", r->phase, r->name,
               r->shape, PERF_CLASS_NAMES[r->cls], r->launches, r->flops / 1e9, r->bytes / 1e6,
               1e3 * perf_row_roofline(r, &PERF_DEVICES[0]), 1e3 * perf_row_roofline(r, &PERF_DEVICES[1]),
               1e3 * perf_row_estimate(r, &PERF_DEVICES[0], &m->a), 1e3 * perf_row_estimate(r, &PERF_DEVICES[1], &m->a));
    }
    printf("(the first step's SVD pass and one whole GaLore refresh pass: rows 'init' and 'refresh', per pass)\n");
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (!(r->set & (PERF_SET_INIT | PERF_SET_REFRESH))) { continue; }
        printf("%-10s %-52.52s %-24.24s %-10s %10.2f %11.3f %11.2f %9.4f %9.4f %9.4f %9.4f\n", r->phase, r->name,
               r->shape, PERF_CLASS_NAMES[r->cls], r->launches, r->flops / 1e9, r->bytes / 1e6,
               1e3 * perf_row_roofline(r, &PERF_DEVICES[0]), 1e3 * perf_row_roofline(r, &PERF_DEVICES[1]),
               1e3 * perf_row_estimate(r, &PERF_DEVICES[0], &m->a), 1e3 * perf_row_estimate(r, &PERF_DEVICES[1], &m->a));
    }
}

// the forward and backward rows alone
static PerfTime perf_sum_fwd_bwd(const PerfModel* m, const PerfDevice* dev) {
    PerfTime t = {0.0, 0.0};
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (strcmp(r->phase, "forward") != 0 && strcmp(r->phase, "backward") != 0) { continue; }
        t.roof += perf_row_roofline(r, dev);
        t.est += perf_row_estimate(r, dev, &m->a);
    }
    return t;
}

static void perf_print_summary(const PerfModel* m) {
    printf("\n%-9s %-9s %9s %9s %9s %11s %11s %8s %8s %10s %9s\n", "device", "", "fwd+bwd", "AdamW", "SubTrack++",
           "tok/s", "tok/s", "MFU", "MFU", "SubTrack++", "SubTrack++");
    printf("%-9s %-9s %9s %9s %9s %11s %11s %8s %8s %10s %9s\n", "", "", "ms/step", "step ms", "step ms", "AdamW",
           "SubTrack++", "AdamW", "SubTr++", "opt share", "vs AdamW");
    for (int di = 0; di < PERF_NUM_DEVICES; di++) {
        const PerfDevice* dev = &PERF_DEVICES[di];
        PerfSummary s = perf_summarize(m, dev);
        PerfTime fb = perf_sum_fwd_bwd(m, dev);
        for (int e = 0; e < 2; e++) {
            double a = e ? s.step_adamw.est : s.step_adamw.roof;
            double st = e ? s.step_subtrack.est : s.step_subtrack.roof;
            double opt = e ? s.subtrack.est : s.subtrack.roof;
            printf("%-9s %-9s %9.3f %9.3f %9.3f %11.0f %11.0f %7.1f%% %7.1f%% %9.1f%% %+8.1f%%\n", dev->name,
                   e ? "estimate" : "roofline", 1e3 * (e ? fb.est : fb.roof), 1e3 * a, 1e3 * st, s.tokens / a,
                   s.tokens / st, 100.0 * perf_mfu(&s, a, dev), 100.0 * perf_mfu(&s, st, dev), 100.0 * opt / st,
                   100.0 * (st - a) / a);
        }
    }
    printf("(roofline: the MFU bound; SubTrack++ opt share: its optimizer's part of its step)\n");
    for (int di = 0; di < PERF_NUM_DEVICES; di++) {
        const PerfDevice* dev = &PERF_DEVICES[di];
        PerfSummary s = perf_summarize(m, dev);
        printf("%-9s GaLore step %.3f ms (estimate), %+.1f%% vs AdamW. SVD passes over all %d matrices: the first "
               "step's %.3f s, one GaLore refresh %.3f s, together %.3f s (estimates; rooflines %.4f s, %.4f s)\n",
               dev->name, 1e3 * s.step_galore.est, 100.0 * (s.step_galore.est - s.step_adamw.est) / s.step_adamw.est,
               7 * m->d.L, s.init.est, s.refresh.est, s.init.est + s.refresh.est, s.init.roof, s.refresh.roof);
    }
}

static void perf_print_model(const PerfModel* m, int rows) {
    const PerfDims* d = &m->d;
    double N = perf_matrix_params(d);
    printf("\n==== %s: V=%d C=%d F=%d NH=%d L=%d | B=%d T=%d accum=%d (%d tokens a step) | R=%d k=%d | N=%.1fM "
           "matrix weights\n", m->preset, d->V, d->C, d->F, d->NH, d->L, m->B, m->T, m->accum, m->B * m->T * m->accum,
           m->rank, m->k, N / 1e6);
    PerfSummary s = perf_summarize(m, &PERF_DEVICES[0]);
    double lr3 = perf_lowrank_gemm_flops(m, PERF_SET_SUBTRACK, "lowrank");
    printf("model FLOPs a step %.3f TFLOP (6N %.3f + attention %.3f, %s); SubTrack++'s optimizer GEMMs a plain step "
           "%.3f TFLOP = %.2f%% of them\n", s.model_flops / 1e12, perf_sum_field(m, PERF_SET_COMMON, 1) / 1e12,
           perf_sum_field(m, PERF_SET_COMMON, 2) / 1e12, m->v.flash ? "causal triangle" : "full square",
           lr3 / 1e12, 100.0 * lr3 / s.model_flops);
    if (rows) { perf_print_rows(m); }
    perf_print_summary(m);
}

// ----------------------------------------------------------------------------
// the table for the README: today's code and the planned variants

typedef struct {
    const char* label;
    PerfVariant v;
} PerfNamedVariant;

#define PERF_NUM_TABLE_VARIANTS 4
static int perf_table_variants(PerfNamedVariant out[PERF_NUM_TABLE_VARIANTS]) {
    for (int i = 0; i < PERF_NUM_TABLE_VARIANTS; i++) { perf_variant_today(&out[i].v); }
    out[0].label = "today (bf16: flash attention, gate and up in one product, the optimizer's launches per batch "
                   "of a shape, every model product on cuBLASLt with the "
                   "residual adds in the wo / w_down epilogue, the optimizer's projection, recovery scaling's "
                   "residual norms and update as three bf16 WMMA kernels (no residual in memory), FP64 Gram + "
                   "syevdx for the top R, two-pass rmsnorm weight gradient, encoder_backward one block per token)";
    out[1].label = "(a) + --svd randomized (FP64 Gram, batched DGEMMs and cusolverDnXsyevBatched on (R+o) x (R+o) "
                   "per chunk of up to 2 GiB)";
    out[1].v.svd = PERF_SVD_TOPR;
    out[2].label = "before: (a) with the optimizer's bulk products on TF32 (cuBLAS's projection, TF32 WMMA)";
    out[2].v = out[0].v; out[2].v.opt_gemm = PERF_GEMM_TF32;
    out[3].label = "planned: (b) + optimizer launches batched over layers";
    out[3].v = out[1].v; out[3].v.opt_batched = 1;
    return PERF_NUM_TABLE_VARIANTS;
}

#define PERF_GOAL_MFU 0.50            // MFU >= 50% at the 1B recipe
#define PERF_GOAL_OVERHEAD 0.10       // SubTrack++'s step <= AdamW's + 10% at 1B
#define PERF_GOAL_SVD_S 2.0           // GaLore refresh + the first step's SVD pass at 1B <= 2 s

static int perf_build_recipe(PerfModel* m, const char* preset, const PerfOptions* o, const PerfVariant* v,
                             const PerfTrainerFacts* facts) {
    PerfDims d;
    char full[64];
    if (!facts->find(preset, &d, full, sizeof full)) { return 0; }
    const PerfRecipe* rc = perf_recipe(full);
    int B = o->B > 0 ? o->B : rc != NULL ? rc->batch : 8;
    int accum = o->accum > 0 ? o->accum : rc != NULL ? rc->total_batch / rc->batch : 1;
    int rank = o->rank > 0 ? o->rank : rc != NULL ? rc->rank : (d.C / 4 > 0 ? d.C / 4 : 1);
    int k = o->k > 0 ? o->k : rc != NULL ? rc->k : 200;
    int T = o->T > 0 ? o->T : PERF_T;
    int p = d.C < d.F ? d.C : d.F;
    if (rank > p) { rank = p; }
    perf_model_build(m, full, &d, B, T, accum, rank, k, v, &o->a);
    return 1;
}

static void perf_print_table(const PerfOptions* o, const PerfTrainerFacts* facts) {
    PerfNamedVariant vs[PERF_NUM_TABLE_VARIANTS];
    int nv = perf_table_variants(vs);
    static PerfModel m;
    printf("Estimates from the performance model, not measurements: a roofline lower bound at peak, and an estimate\n"
           "with the stated efficiencies and floors (`dev/bench_gpu --model` prints every row and assumption).\n"
           "Step: one optimizer step at the recipe's total batch (T = 256; gradient accumulation on one GPU), the\n"
           "subspace work amortised over k. MFU: model FLOPs (6N + attention: the full T x T square with\n"
           "materialized attention, the causal triangle with flash) / (SubTrack++ step x 989 TFLOP/s); the bound\n"
           "uses the roofline step, the estimate the estimated one. vs AdamW: SubTrack++'s estimated step over\n"
           "AdamW's. SVD: the first step's SVD pass plus one GaLore refresh pass over every matrix (estimate).\n"
           "Each cell: H100 SXM / H200.\n\n");
    for (int i = 0; i < nv; i++) { printf("- (%c) %s\n", 'a' + i, vs[i].label); }
    printf("\n| recipe | variant | SubTrack++ step (ms) | AdamW step (ms) | MFU bound | MFU estimate | "
           "SubTrack++ vs AdamW | SVD init + refresh (s) |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (int pi = 0; pi < o->num_presets; pi++) {
        for (int vi = 0; vi < nv; vi++) {
            if (!perf_build_recipe(&m, o->presets[pi], o, &vs[vi].v, facts)) { continue; }
            PerfSummary s0 = perf_summarize(&m, &PERF_DEVICES[0]), s1 = perf_summarize(&m, &PERF_DEVICES[1]);
            printf("| %s (B %d x %d, R %d, k %d) | (%c) | %.1f / %.1f | %.1f / %.1f | %.1f%% / %.1f%% | %.1f%% / %.1f%% | "
                   "%+.1f%% / %+.1f%% | %.2f / %.2f |\n",
                   m.preset + (strncmp(m.preset, "llama_", 6) == 0 ? 6 : 0), m.B, m.accum, m.rank, m.k, 'a' + vi,
                   1e3 * s0.step_subtrack.est, 1e3 * s1.step_subtrack.est, 1e3 * s0.step_adamw.est,
                   1e3 * s1.step_adamw.est, 100.0 * perf_mfu(&s0, s0.step_subtrack.roof, &PERF_DEVICES[0]),
                   100.0 * perf_mfu(&s1, s1.step_subtrack.roof, &PERF_DEVICES[1]),
                   100.0 * perf_mfu(&s0, s0.step_subtrack.est, &PERF_DEVICES[0]),
                   100.0 * perf_mfu(&s1, s1.step_subtrack.est, &PERF_DEVICES[1]),
                   100.0 * (s0.step_subtrack.est - s0.step_adamw.est) / s0.step_adamw.est,
                   100.0 * (s1.step_subtrack.est - s1.step_adamw.est) / s1.step_adamw.est,
                   s0.init.est + s0.refresh.est, s1.init.est + s1.refresh.est);
        }
    }
    printf("\nGoals at the 1B recipe, judged on the estimate (the roofline bound in brackets); H100 SXM / H200:\n\n");
    printf("| variant | MFU >= 50%% (SubTrack++ step) | SubTrack++ step <= AdamW + 10%% | SVD init + refresh <= 2 s |\n");
    printf("|---|---|---|---|\n");
    for (int vi = 0; vi < nv; vi++) {
        if (!perf_build_recipe(&m, "llama_1b", o, &vs[vi].v, facts)) { continue; }
        char cell[3][2][96];
        for (int di = 0; di < PERF_NUM_DEVICES; di++) {
            const PerfDevice* dev = &PERF_DEVICES[di];
            PerfSummary s = perf_summarize(&m, dev);
            double mfu = perf_mfu(&s, s.step_subtrack.est, dev), mfu_b = perf_mfu(&s, s.step_subtrack.roof, dev);
            double ov = (s.step_subtrack.est - s.step_adamw.est) / s.step_adamw.est;
            double ov_b = (s.step_subtrack.roof - s.step_adamw.roof) / s.step_adamw.roof;
            double svd = s.init.est + s.refresh.est, svd_b = s.init.roof + s.refresh.roof;
            snprintf(cell[0][di], sizeof cell[0][di], "%s %.1f%% (%.1f%%)", mfu >= PERF_GOAL_MFU ? "met" : "no",
                     100.0 * mfu, 100.0 * mfu_b);
            snprintf(cell[1][di], sizeof cell[1][di], "%s %+.1f%% (%+.1f%%)", ov <= PERF_GOAL_OVERHEAD ? "met" : "no",
                     100.0 * ov, 100.0 * ov_b);
            snprintf(cell[2][di], sizeof cell[2][di], "%s %.2f s (%.2f s)", svd <= PERF_GOAL_SVD_S ? "met" : "no",
                     svd, svd_b);
        }
        printf("| (%c) | %s / %s | %s / %s | %s / %s |\n", 'a' + vi, cell[0][0], cell[0][1], cell[1][0], cell[1][1],
               cell[2][0], cell[2][1]);
    }
}

// ----------------------------------------------------------------------------
// many GPUs (issue [5/6]): the scale model. ESTIMATES: no session has had more than one GPU, and nothing of
// this has been measured
//
// the design being built: one process per GPU. each rank runs forward and backward on its own micro-batches
// with the full bf16 weights and a full fp32 gradient buffer. three methods:
//   AdamW DDP, SubTrack++ DDP: the fp32 gradients are ring all-reduced (2 (N-1)/N x 4 P bytes sent per rank)
//       in buckets that overlap the backward; then every rank runs the whole optimizer, and its own grad norm
//       on the full reduced gradient (no message); the loss: one scalar all-reduce
//   SubTrack++ ZeRO-1: the gradients are reduced to each state's owner (ncclReduce per owned unit, in one
//       ncclGroup per bucket: about a reduce-scatter's volume, (N-1)/N x 4 P, in fp32) in buckets that
//       overlap the backward; the owner runs the optimizer for its units only (shard_plan_build in
//       train_llama_subtrack.c: whole low-rank matrices, AdamW layers cut into at most N pieces, largest
//       first onto the least loaded rank, so a rank's optimizer is about 1/N of one GPU's plus one unit at
//       most), and converts only its units to bf16; the updated bf16 weights go back to every rank
//       (ncclBroadcast per unit in groups: about an all-gather's volume, (N-1)/N x 2 P), NOT overlapped with
//       anything in the first version (overlapping it with the next forward is the obvious next step); the
//       clipping norm (of each rank's owned gradients) and the loss: one scalar all-reduce each
// weak scaling: each rank keeps the single-GPU recipe's batch per GPU and accumulation (the total batch grows
// N times); efficiency = the single-GPU step / the N-GPU step, of the same method. ZeRO-1's can pass 100%:
// it divides the optimizer's work by N. strong scaling (the recipe's total batch over N ranks, fewer micro
// steps or smaller micro-batches on each) is shown where the total batch has a sequence for every rank.
// with accumulation, only the last micro step's backward can hide the reduction (the earlier ones add into
// the local buffer without a message, as DDP's no_sync).
// compute: the H100 SXM estimates of the single-GPU model above, unchanged (NCCL's kernels take SMs and HBM
// from the backward they overlap: not modelled).
// the fabrics: N <= gpus_per_node: one node, a ring over NVLink at 450 GB/s each way x eff_nvlink (NCCL's
// maintainers: about 370 GB/s of the 450 line rate, nccl-tests issue 212). more: rings through every node,
// NVLink inside, InfiniBand between. NCCL lays one ring (channel) through each NIC, so each ring leaves a node
// through its own port and carries 1/(NICs a node) of the data: every GPU's NVLink carries all of its 2 (N-1)/N
// x S, and every port 1/(gpus_per_node x ib_ports) of it. a rank's bytes go at the slowest of the two:
// min(450 x eff_nvlink, gpus_per_node x ib_ports x 50 x eff_ib) (nccl-tests issue 290: 46-48 GB/s a NDR
// NIC). --ib_ports 0.125 is one NIC a node (a single ring through one port). simplifications: NCCL's trees,
// PXN, NVLink SHARP and in-network reductions are not modelled, nor congestion in the switches beyond one
// hop. time of a collective: the bytes a rank sends / that
// bandwidth + coll_base_us + its ring steps inside a node x nvlink_hop_us + its steps between nodes x
// ib_hop_us (all-reduce 2 (N-1) steps, 2 (nodes-1) between nodes; reduce-scatter, all-gather and the
// per-owner reduce and broadcast groups N-1 and nodes-1); a group's further collectives op_us each; a scalar
// all-reduce the latency of a tree: coll_base_us + 2 (log2 (N in a node) x nvlink_hop_us + log2 nodes x
// ib_hop_us). with N = 1 there is no message at all.
// overlap: nb buckets of equal size, the backward's window W produces them at an even rate, the link takes
// them one after another: the last one leaves at max over buckets i of (W i / nb + (nb - i + 1) Tc / nb), so
// exposed = max(Tc / nb, Tc - W (1 - 1 / nb)) (the last bucket never overlaps)

typedef enum { PERF_ADAMW_DDP = 0, PERF_SUBTRACK_DDP = 1, PERF_SUBTRACK_ZERO1 = 2, PERF_NUM_SCALE_METHODS = 3 }
    PerfScaleMethod;
static const char* PERF_SCALE_METHOD_NAMES[PERF_NUM_SCALE_METHODS] = {"AdamW DDP", "SubTrack++ DDP",
                                                                      "SubTrack++ ZeRO-1"};

// train_llama_subtrack.c's SHARD_MIN_PIECE (QUANT8_BLOCK 2048 x 16): AdamW layers below it stay whole
#define PERF_SHARD_MIN_PIECE 32768.0
#define PERF_GOAL_SCALE 0.90          // scaling efficiency >= 90% on 8x H100 over NVLink at 1B (ZeRO-1)

typedef struct {
    int gpus, nodes;
    double gbs;            // the ring's bus bandwidth per rank each way, GB/s: the slowest link at its efficiency
} PerfFabric;

static PerfFabric perf_fabric(const PerfAssume* a, int gpus) {
    PerfFabric f;
    f.gpus = gpus;
    f.nodes = (gpus + a->gpus_per_node - 1) / a->gpus_per_node;
    f.gbs = GPU_H100_NVLINK_GBS / 2.0 * a->eff_nvlink;
    double ib = a->gpus_per_node * a->ib_ports * GPU_IB_NDR_PORT_GBS * a->eff_ib;
    if (f.nodes > 1 && ib < f.gbs) { f.gbs = ib; }
    return f;
}

// the latency of one ring collective of `steps` steps, `inter` of them between nodes (seconds)
static double perf_ring_latency(const PerfFabric* f, const PerfAssume* a, int steps, int inter) {
    if (f->gpus <= 1) { return 0.0; }
    return (a->coll_base_us + (steps - inter) * a->nvlink_hop_us + inter * a->ib_hop_us) * 1e-6;
}

// a scalar all-reduce (the loss, the clipping norm): latency only, a tree's up and down
static double perf_scalar_allreduce(const PerfFabric* f, const PerfAssume* a) {
    if (f->gpus <= 1) { return 0.0; }
    int in_node = f->gpus < a->gpus_per_node ? f->gpus : a->gpus_per_node;
    return (a->coll_base_us + 2.0 * (ceil(log2((double)in_node)) * a->nvlink_hop_us +
                                     ceil(log2((double)f->nodes)) * a->ib_hop_us)) * 1e-6;
}

// what is exposed of Tc seconds of messages in nb buckets behind a window of W seconds of backward
static double perf_exposed(double Tc, double W, double nb) {
    if (Tc <= 0.0) { return 0.0; }
    double last = Tc / nb, rest = Tc - W * (1.0 - 1.0 / nb);
    return last > rest ? last : rest;
}

// the units of the ZeRO-1 plan (shard_plan_build's rule): the 7 L low-rank matrices whole; the embedding,
// lm_head (V x C each) and the 2 L + 1 norms (C) cut into min(N, elements / SHARD_MIN_PIECE) pieces, at least 1
static double perf_shard_pieces(double elements, int N) {
    double k = floor(elements / PERF_SHARD_MIN_PIECE);
    if (k < 1.0) { k = 1.0; }
    if (k > N) { k = N; }
    return k;
}
static double perf_shard_units(const PerfDims* d, int N) {
    return 7.0 * d->L + 2.0 * perf_shard_pieces((double)d->V * d->C, N) +
           (2.0 * d->L + 1.0) * perf_shard_pieces((double)d->C, N);
}

typedef struct {
    int method, gpus, nodes;
    double gbs;               // the ring's bandwidth, GB/s
    double params;            // P, every parameter
    double grad_bytes;        // sent per rank per step for the gradient (all-reduce, or reduce to owners)
    double weight_bytes;      // sent per rank per step for the weights (ZeRO-1's bf16 broadcast)
    double buckets;           // of the gradient
    double messages;          // collectives per step (scalars included)
    double fwd, bwd, window;  // seconds: forward, backward, and the last micro step's backward
    double t_grad, lat_grad;  // the gradient's messages: all of it, and its latency part
    double exposed_grad;      // after overlap with the backward
    double t_weights, lat_weights;  // ZeRO-1's broadcast (all exposed)
    double t_scalars;         // the scalar all-reduces
    double step_rows;         // zero_grad, grad norm, bf16 copy (the rank's share)
    double opt, opt1;         // the rank's optimizer, and one GPU's
    double unit_max;          // the largest unit's optimizer (ZeRO-1's imbalance bound)
    double step1, step;       // single-GPU step, N-GPU step
    double exposed;           // exposed communication
    double eff;               // step1 / step
} PerfScale;

// the estimate of the rows of `sets` in `phase` (NULL: any) whose name contains `tag` (NULL: any)
static double perf_rows_est(const PerfModel* m, int sets, const char* phase, const char* tag, const PerfDevice* dev) {
    double t = 0.0;
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (!(r->set & sets) || (phase != NULL && strcmp(r->phase, phase) != 0) ||
            (tag != NULL && strstr(r->name, tag) == NULL)) { continue; }
        t += perf_row_estimate(r, dev, &m->a);
    }
    return t;
}

// one method on N GPUs (weak scaling at m's batch per GPU), on the H100 SXM's estimates
static PerfScale perf_scale(const PerfModel* m, int method, int N) {
    const PerfDevice* dev = &PERF_DEVICES[0];
    const PerfAssume* a = &m->a;
    PerfScale s;
    memset(&s, 0, sizeof s);
    PerfFabric f = perf_fabric(a, N);
    s.method = method; s.gpus = N; s.nodes = f.nodes; s.gbs = f.gbs;
    double P = perf_all_params(&m->d), Nd = N, bw = f.gbs * 1e9, bucket = a->bucket_mb * 1e6;
    int zero1 = method == PERF_SUBTRACK_ZERO1;
    s.params = P;
    s.fwd = perf_rows_est(m, PERF_SET_COMMON, "forward", NULL, dev);
    s.bwd = perf_rows_est(m, PERF_SET_COMMON, "backward", NULL, dev);
    s.window = s.bwd / m->accum;
    int opt_sets = method == PERF_ADAMW_DDP ? PERF_SET_ADAMW : PERF_SET_LR_ADAMW | PERF_SET_SUBTRACK;
    s.opt1 = perf_rows_est(m, opt_sets, NULL, NULL, dev);
    double step_all = perf_rows_est(m, PERF_SET_COMMON, "step", NULL, dev);
    s.step1 = s.fwd + s.bwd + step_all + s.opt1;
    s.buckets = ceil(4.0 * P / bucket);
    if (N > 1) {
        int rs_steps = N - 1, rs_inter = f.nodes - 1;
        if (!zero1) {
            // ring all-reduce of the fp32 gradient, bucket by bucket
            s.grad_bytes = 2.0 * (Nd - 1.0) / Nd * 4.0 * P;
            s.lat_grad = s.buckets * perf_ring_latency(&f, a, 2 * rs_steps, 2 * rs_inter);
            s.messages = s.buckets + 1;  // + the loss
            s.t_scalars = perf_scalar_allreduce(&f, a);
        } else {
            // reduce to the owners, one group of ncclReduce a bucket; the bf16 broadcast the same way back
            double units = perf_shard_units(&m->d, N), wbuckets = ceil(a->bcast_bytes * P / bucket);
            s.grad_bytes = (Nd - 1.0) / Nd * 4.0 * P;
            s.weight_bytes = (Nd - 1.0) / Nd * a->bcast_bytes * P;
            s.lat_grad = s.buckets * perf_ring_latency(&f, a, rs_steps, rs_inter) +
                         (units > s.buckets ? units - s.buckets : 0.0) * a->op_us * 1e-6;
            s.lat_weights = wbuckets * perf_ring_latency(&f, a, rs_steps, rs_inter) +
                            (units > wbuckets ? units - wbuckets : 0.0) * a->op_us * 1e-6;
            s.t_weights = s.weight_bytes / bw + s.lat_weights;
            s.messages = 2.0 * units + 2;  // + the norm and the loss
            s.t_scalars = 2.0 * perf_scalar_allreduce(&f, a);
        }
        s.t_grad = s.grad_bytes / bw + s.lat_grad;
    }
    s.exposed_grad = perf_exposed(s.t_grad, s.window, s.buckets);
    if (!zero1) {
        s.opt = s.opt1;
        s.step_rows = step_all;
    } else {
        // the owner's share: zero_grad stays whole (every rank accumulates every gradient), the norm and the bf16
        // copy only over its units; its optimizer about 1/N plus the largest unit at most
        double zero = 0.0;
        for (int i = 0; i < m->n; i++) {
            const PerfRow* r = &m->rows[i];
            if ((r->set & PERF_SET_COMMON) && strcmp(r->phase, "step") == 0 && r->launch.op == OP_MEMSET) {
                zero += perf_row_estimate(r, dev, a);
            }
        }
        s.step_rows = zero + (step_all - zero) / Nd;
        PerfShapeGroup g[2];
        int ng = perf_shape_groups(&m->d, g);
        for (int gi = 0; gi < ng; gi++) {
            char tag[64];
            snprintf(tag, sizeof tag, "[%s]", g[gi].names);
            double one = perf_rows_est(m, PERF_SET_SUBTRACK, NULL, tag, dev) / g[gi].count;
            if (one > s.unit_max) { s.unit_max = one; }
        }
        double n_lr_adam = 2.0 * m->d.V * m->d.C + (2.0 * m->d.L + 1.0) * m->d.C;
        double piece = (double)m->d.V * m->d.C / perf_shard_pieces((double)m->d.V * m->d.C, N);
        double adam_piece = perf_rows_est(m, PERF_SET_LR_ADAMW, NULL, NULL, dev) * piece / n_lr_adam;
        if (adam_piece > s.unit_max) { s.unit_max = adam_piece; }
        s.opt = s.opt1 / Nd + s.unit_max;
        if (s.opt > s.opt1) { s.opt = s.opt1; }
    }
    s.exposed = s.exposed_grad + s.t_weights + s.t_scalars;
    s.step = s.fwd + s.bwd + s.exposed_grad + s.step_rows + s.opt + s.t_weights + s.t_scalars;
    s.eff = s.step1 / s.step;
    return s;
}

// strong scaling: the recipe's total batch over N ranks. builds into `work` the per-rank recipe (the largest
// micro-batch <= the recipe's that divides the rank's sequences); 0 when N does not divide the total batch
static int perf_scale_strong(PerfModel* work, const PerfModel* m, int method, int N, PerfScale* out) {
    int total = m->B * m->accum;
    if (N < 1 || total % N != 0) { return 0; }
    int seqs = total / N, B = m->B < seqs ? m->B : seqs;
    while (seqs % B != 0) { B--; }
    perf_model_build(work, m->preset, &m->d, B, m->T, seqs / B, m->rank, m->k, &m->v, &m->a);
    *out = perf_scale(work, method, N);
    // the single-GPU step of the whole batch, and the efficiency speedup / N
    PerfScale one = perf_scale(m, method, 1);
    out->step1 = one.step1;
    out->eff = one.step1 / (N * out->step);
    return 1;
}

static const int PERF_SCALE_GPUS[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
#define PERF_NUM_SCALE_GPUS ((int)(sizeof(PERF_SCALE_GPUS) / sizeof(PERF_SCALE_GPUS[0])))
static const int PERF_SCALE_FABRICS[2] = {8, 64};  // 8x H100 over NVLink, 64 over InfiniBand

static const char* perf_fabric_name(const PerfAssume* a, int N) {
    return N <= a->gpus_per_node ? "NVLink" : "IB";
}

// what the N-GPU step adds: its exposed parts, and how much of the messages' time is ring latency
static const char* perf_scale_exposed_text(const PerfScale* s, char* buf, size_t cap) {
    double all = s->t_grad + s->t_weights + s->t_scalars;
    double lat = s->lat_grad + s->lat_weights + s->t_scalars;
    snprintf(buf, cap, "exposed %.1f ms = gradient %s %.1f ms (of %.1f) + weight broadcast %.1f ms + scalars %.2f ms; "
             "%.0f%% of the messages' time is latency", 1e3 * s->exposed,
             s->method == PERF_SUBTRACK_ZERO1 ? "reduce" : "all-reduce", 1e3 * s->exposed_grad, 1e3 * s->t_grad,
             1e3 * s->t_weights, 1e3 * s->t_scalars, all > 0.0 ? 100.0 * lat / all : 0.0);
    return buf;
}

static void perf_print_scale_assumptions(const PerfAssume* a) {
    PerfFabric nv = perf_fabric(a, a->gpus_per_node), ib = perf_fabric(a, 8 * a->gpus_per_node);
    printf("ESTIMATES, NOT MEASUREMENTS (no session has had more than one GPU). the many-GPU model (issue [5/6]):\n"
           "  compute: the single-GPU model's H100 SXM estimates (forward, backward, step rows, optimizer)\n"
           "  weak scaling: each rank keeps the recipe's batch per GPU and accumulation; efficiency = the\n"
           "    single-GPU step / the N-GPU step of the same method (ZeRO-1 can pass 100%%: it divides the optimizer)\n"
           "  AdamW DDP, SubTrack++ DDP: ring all-reduce of the fp32 gradient, 2 (N-1)/N x 4 P bytes sent a rank,\n"
           "    in buckets behind the last micro step's backward; every rank runs the whole optimizer\n"
           "  SubTrack++ ZeRO-1: ncclReduce to each unit's owner (whole low-rank matrices; AdamW layers in <= N\n"
           "    pieces), (N-1)/N x 4 P, in groups behind the backward; the owner's optimizer ~ 1/N + one unit;\n"
           "    ncclBroadcast of bf16 weights, (N-1)/N x 2 P, NOT overlapped (the first version)\n"
           "  scalars: the loss all-reduce (every method), the clipping norm's (ZeRO-1: each owner has part of it)\n"
           "fabric (GPU_NUMBERS.md: NVLink %.0f GB/s a GPU both ways, so %.0f each way; IB NDR %.0f GB/s a port):\n"
           "  eff_nvlink %.2f  NCCL's bus bandwidth on NVLink as a fraction: ring at %.0f GB/s inside a node\n"
           "  eff_ib     %.2f  the same on InfiniBand, %g port(s) a GPU. NCCL lays one ring through each NIC, so a\n"
           "                   node's %g ports share the data leaving it; a rank's bytes go at the slower of NVLink\n"
           "                   and the node's ports: %.0f GB/s over nodes (a simplification: NCCL's trees, PXN,\n"
           "                   NVLink SHARP, in-network reduction, switch congestion: not modelled)\n"
           "  latency    %.1f us a collective + %.1f us a ring step over NVLink + %.1f us a step between nodes\n"
           "                   (NCCL 2.8's tuning table, ring / Simple); %.1f us each further collective of a group;\n"
           "                   scalars: a tree's latency, base + 2 (log2 GPUs a node x NVLink + log2 nodes x IB)\n"
           "  buckets    %.0f MB (fp32 gradient, bf16 weights); %d GPUs a node\n"
           "  overlap    the last micro step's backward W hides the first buckets: exposed = max(Tc/nb, Tc - W (1 -\n"
           "                   1/nb)); NCCL's kernels slowing the backward they overlap: not modelled\n",
           GPU_H100_NVLINK_GBS, GPU_H100_NVLINK_GBS / 2.0, GPU_IB_NDR_PORT_GBS, a->eff_nvlink, nv.gbs, a->eff_ib,
           a->ib_ports, a->ib_ports * a->gpus_per_node, ib.gbs, a->coll_base_us, a->nvlink_hop_us, a->ib_hop_us, a->op_us, a->bucket_mb,
           a->gpus_per_node);
}

static void perf_print_scale_recipe(const PerfModel* m) {
    static PerfModel work;
    printf("\n==== %s: P = %.1fM parameters | B=%d x accum %d per GPU (%d tokens a GPU a step) | H100 SXM\n",
           m->preset, perf_all_params(&m->d) / 1e6, m->B, m->accum, m->B * m->T * m->accum);
    PerfScale one = perf_scale(m, PERF_ADAMW_DDP, 1);
    printf("forward %.2f ms, backward %.2f ms (the last micro step's, the overlap window: %.2f ms)\n", 1e3 * one.fwd,
           1e3 * one.bwd, 1e3 * one.window);
    printf("\n%-18s %5s %-6s %9s %9s %7s %9s %9s %9s %9s %9s %8s %9s %8s\n", "method", "GPUs", "fabric", "GB sent",
           "GB sent", "msgs", "grad msg", "exposed", "weights", "optimizer", "step", "weak", "step 1", "strong");
    printf("%-18s %5s %-6s %9s %9s %7s %9s %9s %9s %9s %9s %8s %9s %8s\n", "", "", "", "gradient", "weights", "",
           "ms", "grad ms", "bcast ms", "ms", "ms", "eff", "GPU ms", "eff");
    for (int me = 0; me < PERF_NUM_SCALE_METHODS; me++) {
        for (int gi = 0; gi < PERF_NUM_SCALE_GPUS; gi++) {
            int N = PERF_SCALE_GPUS[gi];
            PerfScale s = perf_scale(m, me, N), st;
            char strong[16] = "-";
            if (perf_scale_strong(&work, m, me, N, &st)) { snprintf(strong, sizeof strong, "%.1f%%", 100.0 * st.eff); }
            printf("%-18s %5d %-6s %9.3f %9.3f %7.0f %9.2f %9.2f %9.2f %9.2f %9.2f %7.1f%% %9.2f %8s\n",
                   PERF_SCALE_METHOD_NAMES[me], N, N == 1 ? "-" : perf_fabric_name(&m->a, N), s.grad_bytes / 1e9,
                   s.weight_bytes / 1e9, s.messages, 1e3 * s.t_grad, 1e3 * s.exposed_grad, 1e3 * s.t_weights,
                   1e3 * s.opt, 1e3 * s.step, 100.0 * s.eff, 1e3 * s.step1, strong);
        }
    }
    printf("(strong: the recipe's total batch, %d sequences, over N ranks: speedup / N; '-' where N does not divide "
           "it)\n", m->B * m->accum);
}

// the smallest GPU count of the curve past one node where the weak-scaling efficiency falls below the goal; 0 if none
static int perf_scale_falls(const PerfModel* m, int method, PerfScale* at) {
    for (int gi = 0; gi < PERF_NUM_SCALE_GPUS; gi++) {
        int N = PERF_SCALE_GPUS[gi];
        PerfScale s = perf_scale(m, method, N);
        if (s.eff < PERF_GOAL_SCALE) { *at = s; return N; }
    }
    return 0;
}

static void perf_print_scale_verdict(const PerfOptions* o, const PerfTrainerFacts* facts, int markdown) {
    static PerfModel m;
    const char* bullet = markdown ? "- " : "";
    if (perf_build_recipe(&m, "llama_1b", o, &o->v, facts)) {
        PerfScale s = perf_scale(&m, PERF_SUBTRACK_ZERO1, PERF_SCALE_FABRICS[0]);
        printf("\n%sgoal: SubTrack++ ZeRO-1 on 8x H100 over NVLink at 1B, efficiency >= %.0f%%: %s, %.1f%% (step %.2f "
               "ms against %.2f ms on one GPU; estimate)\n", bullet, 100.0 * PERF_GOAL_SCALE,
               s.eff >= PERF_GOAL_SCALE ? "met" : "NOT met", 100.0 * s.eff, 1e3 * s.step, 1e3 * s.step1);
    }
    for (int pi = 0; pi < o->num_presets; pi++) {
        if (!perf_build_recipe(&m, o->presets[pi], o, &o->v, facts)) { continue; }
        for (int me = 0; me < PERF_NUM_SCALE_METHODS; me++) {
            PerfScale at, big = perf_scale(&m, me, PERF_SCALE_FABRICS[1]);
            char why[320], falls[96];
            int N = perf_scale_falls(&m, me, &at);
            const char* name = m.preset + (strncmp(m.preset, "llama_", 6) == 0 ? 6 : 0);
            if (N == 0) {
                snprintf(falls, sizeof falls, "at or above %.0f%% up to %d GPUs", 100.0 * PERF_GOAL_SCALE,
                         PERF_SCALE_GPUS[PERF_NUM_SCALE_GPUS - 1]);
            } else {
                snprintf(falls, sizeof falls, "below %.0f%% from %d GPUs (%s, %.1f%%)", 100.0 * PERF_GOAL_SCALE, N,
                         perf_fabric_name(&m.a, N), 100.0 * at.eff);
            }
            printf("%s%s, %s: %s; at %d GPUs over IB %.1f%%: %s\n", bullet, name, PERF_SCALE_METHOD_NAMES[me], falls,
                   PERF_SCALE_FABRICS[1], 100.0 * big.eff, perf_scale_exposed_text(&big, why, sizeof why));
        }
    }
}

static void perf_print_scale(const PerfOptions* o, const PerfTrainerFacts* facts) {
    static PerfModel m;
    perf_print_scale_assumptions(&o->a);
    for (int pi = 0; pi < o->num_presets; pi++) {
        if (perf_build_recipe(&m, o->presets[pi], o, &o->v, facts)) { perf_print_scale_recipe(&m); }
    }
    perf_print_scale_verdict(o, facts, 0);
}

// the README's table: each recipe, method, and the two fabrics
static void perf_print_scale_table(const PerfOptions* o, const PerfTrainerFacts* facts) {
    static PerfModel m;
    PerfFabric nv = perf_fabric(&o->a, PERF_SCALE_FABRICS[0]), ib = perf_fabric(&o->a, PERF_SCALE_FABRICS[1]);
    printf("Estimates from the scale model, not measurements (`./dev/perf_model --scale` prints the assumptions and\n"
           "every GPU count from 1 to %d). Weak scaling: each GPU keeps the recipe's batch and accumulation; compute\n"
           "from the single-GPU model's H100 SXM estimates; rings at %.0f GB/s a GPU each way on NVLink (450 x %.2f)\n"
           "and %.0f GB/s across nodes (one ring per NIC, one NDR port a GPU at 50 x %.2f: the node's ports share\n"
           "the data leaving it), NCCL's ring latencies per step; gradient buckets of %.0f MB\n"
           "behind the last micro step's backward; ZeRO-1's %s weights broadcast, not overlapped. GB: sent per GPU per\n"
           "step (gradient + weights). Efficiency: the one-GPU step / the N-GPU step, same method.\n\n",
           PERF_SCALE_GPUS[PERF_NUM_SCALE_GPUS - 1], nv.gbs, o->a.eff_nvlink, ib.gbs, o->a.eff_ib, o->a.bucket_mb,
           o->a.bcast_bytes > 2.0 ? "fp32" : "bf16");
    printf("| recipe | method | GPUs | GB sent | exposed comm (ms) | step (ms) | 1 GPU step (ms) | efficiency |\n");
    printf("|---|---|---|---:|---:|---:|---:|---:|\n");
    for (int pi = 0; pi < o->num_presets; pi++) {
        if (!perf_build_recipe(&m, o->presets[pi], o, &o->v, facts)) { continue; }
        for (int me = 0; me < PERF_NUM_SCALE_METHODS; me++) {
            for (int fi = 0; fi < 2; fi++) {
                int N = PERF_SCALE_FABRICS[fi];
                PerfScale s = perf_scale(&m, me, N);
                printf("| %s | %s | %d %s | %.2f | %.1f | %.1f | %.1f | %.1f%% |\n",
                       m.preset + (strncmp(m.preset, "llama_", 6) == 0 ? 6 : 0), PERF_SCALE_METHOD_NAMES[me], N,
                       perf_fabric_name(&m.a, N), (s.grad_bytes + s.weight_bytes) / 1e9, 1e3 * s.exposed,
                       1e3 * s.step, 1e3 * s.step1, 100.0 * s.eff);
            }
        }
    }
    perf_print_scale_verdict(o, facts, 1);
}

// ----------------------------------------------------------------------------
// --check: the model against independent closed forms, and the figures against the file

// the project's check api (dev/test_check.h): PASS/FAIL lines and the closing count
#include "test_check.h"

static void perf_check_report(int ok, const char* msg) { check(ok, "%s", msg); }

static int perf_close(double x, double y) { return fabs(x - y) <= 1e-12 * fabs(y) + 1e-300; }

// a field summed over the rows of the given sets that match: phase (NULL: any), class (-1: any; -2: any
// GEMM class), op (-1: any). field: 0 FLOPs, 1 bytes, 2 launches, 3 serial floor, 4 host seconds, 5 rows
static double perf_rows_sum(const PerfModel* m, int sets, const char* phase, int cls, int op, int field) {
    double s = 0.0;
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (!(r->set & sets) || (phase != NULL && strcmp(r->phase, phase) != 0) || (op >= 0 && r->launch.op != op)) {
            continue;
        }
        int gemm = perf_class_is_gemm(r->cls);
        if ((cls >= 0 && r->cls != cls) || (cls == -2 && !gemm)) { continue; }
        s += field == 0 ? r->flops : field == 1 ? r->bytes : field == 2 ? r->launches : field == 3 ? r->serial_s
           : field == 4 ? r->host_s : 1.0;
    }
    return s;
}

// --svd randomized (the batched rewrite), at 1B, written out apart from the rows: one refresh pass's DGEMM
// FLOPs sum over the 4L (C, C) and 3L (C, F) matrices of (it + 2) 2 p^2 l (A Q) + 4 (it + 2) 2 p l^2 (orth) +
// 2 p l^2 + 2 p l R (Rayleigh-Ritz); the SVD chunks hold 35 and 36 matrices (the trainer's comment at
// LOWRANK_SVD_BATCH_BYTES), so 3 + 2 chunks, each 2 (it + 2) + 1 eigensolver calls with l column steps
static void perf_check_topr(const PerfModel* m, const char* tag) {
    double L = m->d.L, C = m->d.C, F = m->d.F, R = m->rank, it = m->a.topr_iters;
    double pmin = C < F ? C : F, l = R + m->a.topr_oversample;
    double pc[2][2] = {{4.0 * L, C}, {3.0 * L, pmin}};
    double dgemm = 0.0;
    for (int g = 0; g < 2; g++) {
        double cnt = pc[g][0], p = pc[g][1];
        dgemm += cnt * ((it + 2.0) * 2.0 * p * p * l + 4.0 * (it + 2.0) * 2.0 * p * l * l + 2.0 * p * l * l +
                        2.0 * p * l * R);
    }
    double calls = 2.0 * (it + 2.0) + 1.0;
    double chunks = ceil(4.0 * L / 35.0) + ceil(3.0 * L / 36.0);
    double serial = chunks * calls * l * m->a.batched_step_us * 1e-6;
    check(perf_close(perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_GEMM, -1, 0), dgemm) &&
          perf_close(perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_SYEVD, -1, 2), chunks * calls) &&
          perf_close(perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_SYEVD, -1, 3), serial),
          "%s: --svd randomized's refresh pass: DGEMMs sum((it+2) 2p^2 l + 4(it+2) 2pl^2 + 2pl^2 + 2plR) = %.6e "
          "FLOPs; %.0f SVD chunks (35 (C, C), 36 (F, C) a chunk) x %.0f batched eigensolver calls, %.4f s of "
          "column steps", tag, dgemm, chunks, calls, serial);
}

// the scale model (issue [5/6]) against closed forms written apart from perf_scale: the bytes of a ring
// all-reduce, reduce-scatter and all-gather, the ring's time, the overlap (by an event simulation of the
// buckets), and what must hold at N = 1 and as N grows
static void perf_check_scale(const PerfModel* m) {
    const PerfAssume* a = &m->a;
    double P = perf_all_params(&m->d);
    const char* name = m->preset;
    // N = 1: no message, and the single-GPU model's own step (perf_summarize), for every method
    PerfSummary sum = perf_summarize(m, &PERF_DEVICES[0]);
    for (int me = 0; me < PERF_NUM_SCALE_METHODS; me++) {
        PerfScale s = perf_scale(m, me, 1);
        double want = me == PERF_ADAMW_DDP ? sum.step_adamw.est : sum.step_subtrack.est;
        check(s.grad_bytes == 0.0 && s.weight_bytes == 0.0 && s.exposed == 0.0 && perf_close(s.step, want) &&
              perf_close(s.step1, want) && fabs(s.eff - 1.0) < 1e-12,
              "%s, %s: on 1 GPU no byte sent, the step %.3f ms is the single-GPU model's %.3f ms, efficiency %.6f",
              name, PERF_SCALE_METHOD_NAMES[me], 1e3 * s.step, 1e3 * want, s.eff);
    }
    // the volumes: DDP's ring all-reduce 2 (N-1)/N x 4 P; ZeRO-1's reduce-scatter (N-1)/N x 4 P plus
    // all-gather (N-1)/N x 2 P, 3/4 of DDP's and less
    static const int Ns[3] = {2, 8, 64};
    for (int i = 0; i < 3; i++) {
        double N = Ns[i];
        PerfScale ad = perf_scale(m, PERF_ADAMW_DDP, Ns[i]), sd = perf_scale(m, PERF_SUBTRACK_DDP, Ns[i]);
        PerfScale z = perf_scale(m, PERF_SUBTRACK_ZERO1, Ns[i]);
        double allreduce = 2.0 * (N - 1.0) / N * 4.0 * P;
        double rs = (N - 1.0) / N * 4.0 * P, ag = (N - 1.0) / N * 2.0 * P;
        check(perf_close(ad.grad_bytes, allreduce) && perf_close(sd.grad_bytes, allreduce) &&
              ad.weight_bytes == 0.0 && sd.weight_bytes == 0.0,
              "%s, %d GPUs: DDP sends 2 (N-1)/N x 4 P = %.4f GB a rank (ring all-reduce of fp32 gradients)", name,
              Ns[i], allreduce / 1e9);
        double zt = z.grad_bytes + z.weight_bytes, dt = sd.grad_bytes + sd.weight_bytes;
        check(perf_close(z.grad_bytes, rs) && perf_close(z.weight_bytes, ag) && perf_close(zt, 0.75 * dt) &&
              zt < dt, "%s, %d GPUs: ZeRO-1 sends (N-1)/N x 4 P + (N-1)/N x 2 P = %.4f + %.4f GB (reduce-scatter + "
              "all-gather), 3/4 of DDP's %.4f GB", name, Ns[i], rs / 1e9, ag / 1e9, dt / 1e9);
    }
    // the fabrics and the ring's time, written out: one node at 450 x eff_nvlink; over nodes the slower of that
    // and a node's ports, 8 x ib_ports x 50 x eff_ib; DDP's time = bytes / bandwidth + buckets x (base +
    // 2 (N-1) steps: 2 (nodes-1) of them between nodes)
    {
        PerfScale s8 = perf_scale(m, PERF_SUBTRACK_DDP, 8), s64 = perf_scale(m, PERF_SUBTRACK_DDP, 64);
        double nv = 450.0 * a->eff_nvlink, ib = a->gpus_per_node * a->ib_ports * 50.0 * a->eff_ib;
        double over = ib < nv ? ib : nv, nb = ceil(4.0 * P / (a->bucket_mb * 1e6));
        int nodes64 = (64 + a->gpus_per_node - 1) / a->gpus_per_node, nodes8 = (8 + a->gpus_per_node - 1) / a->gpus_per_node;
        double lat8 = a->coll_base_us + (14 - 2 * (nodes8 - 1)) * a->nvlink_hop_us + 2 * (nodes8 - 1) * a->ib_hop_us;
        double lat64 = a->coll_base_us + (126 - 2 * (nodes64 - 1)) * a->nvlink_hop_us + 2 * (nodes64 - 1) * a->ib_hop_us;
        double t8 = 2.0 * 7.0 / 8.0 * 4.0 * P / ((nodes8 > 1 ? over : nv) * 1e9) + nb * lat8 * 1e-6;
        double t64 = 2.0 * 63.0 / 64.0 * 4.0 * P / (over * 1e9) + nb * lat64 * 1e-6;
        check(perf_close(s8.t_grad, t8) && perf_close(s64.t_grad, t64) && s8.buckets == nb,
              "%s: DDP's all-reduce time %.3f ms on 8 GPUs (%.0f GB/s), %.3f ms on 64 (%.0f GB/s): bytes / "
              "bandwidth + %.0f buckets x the ring's latency (%.1f, %.1f us)", name, 1e3 * t8,
              nodes8 > 1 ? over : nv, 1e3 * t64, over, nb, lat8, lat64);
    }
    // the overlap against an event simulation: bucket i ready at W i / nb, the link takes them in turn
    {
        PerfScale s = perf_scale(m, PERF_SUBTRACK_DDP, 8), z = perf_scale(m, PERF_SUBTRACK_ZERO1, 64);
        const PerfScale* two[2] = {&s, &z};
        int ok = 1;
        double sim[2];
        for (int k = 0; k < 2; k++) {
            double nb = two[k]->buckets, piece = two[k]->t_grad / nb, W = two[k]->window, done = 0.0;
            for (double i = 1.0; i <= nb; i += 1.0) {
                double ready = W * i / nb;
                done = (done > ready ? done : ready) + piece;
            }
            sim[k] = done - W;
            ok = ok && fabs(two[k]->exposed_grad - sim[k]) <= 1e-9 * two[k]->t_grad + 1e-12;
        }
        check(ok && perf_close(perf_exposed(1.0, 0.0, 10.0), 1.0) && perf_close(perf_exposed(1.0, 1e9, 10.0), 0.1),
              "%s: exposed gradient messages = an event simulation of the buckets (DDP, 8 GPUs: %.3f ms; ZeRO-1, 64: "
              "%.3f ms); no window: all of them; a long one: the last bucket", name, 1e3 * sim[0], 1e3 * sim[1]);
    }
    // as N grows: the bytes and the messages' time never fall; DDP's efficiency never rises
    for (int me = 0; me < PERF_NUM_SCALE_METHODS; me++) {
        PerfScale prev = perf_scale(m, me, 1);
        int ok = 1, bad_n = 0;
        for (int gi = 1; gi < PERF_NUM_SCALE_GPUS; gi++) {
            PerfScale s = perf_scale(m, me, PERF_SCALE_GPUS[gi]);
            double t = s.t_grad + s.t_weights + s.t_scalars, tp = prev.t_grad + prev.t_weights + prev.t_scalars;
            int good = s.grad_bytes + s.weight_bytes >= prev.grad_bytes + prev.weight_bytes && t >= tp &&
                       s.exposed >= prev.exposed && (me == PERF_SUBTRACK_ZERO1 || s.eff <= prev.eff);
            if (!good && ok) { bad_n = PERF_SCALE_GPUS[gi]; }
            ok = ok && good;
            prev = s;
        }
        check(ok, "%s, %s: from 1 to %d GPUs the bytes, the messages' time and the exposed part never fall%s "
              "(first break: %d)", name, PERF_SCALE_METHOD_NAMES[me], PERF_SCALE_GPUS[PERF_NUM_SCALE_GPUS - 1],
              me == PERF_SUBTRACK_ZERO1 ? "" : ", the efficiency never rises", bad_n);
    }
    // ZeRO-1's optimizer: 1/N of one GPU's plus the largest unit at most, and never more than one GPU's;
    // the units as shard_plan_build cuts them
    {
        int ok = 1;
        for (int gi = 1; gi < PERF_NUM_SCALE_GPUS; gi++) {
            PerfScale z = perf_scale(m, PERF_SUBTRACK_ZERO1, PERF_SCALE_GPUS[gi]);
            double lo = z.opt1 / PERF_SCALE_GPUS[gi];
            ok = ok && z.opt >= lo * (1.0 - 1e-12) && z.opt <= lo + z.unit_max + 1e-15 && z.opt <= z.opt1 &&
                 z.unit_max > 0.0;
        }
        double L = m->d.L, VC = (double)m->d.V * m->d.C;
        double k8 = floor(VC / 32768.0) < 8.0 ? floor(VC / 32768.0) : 8.0;
        double units8 = 7.0 * L + 2.0 * (k8 < 1.0 ? 1.0 : k8) + (2.0 * L + 1.0) * (m->d.C >= 2 * 32768 ? 2.0 : 1.0);
        check(ok && perf_close(perf_shard_units(&m->d, 8), units8),
              "%s: ZeRO-1's optimizer on a rank lies in [1/N, 1/N + one unit] of one GPU's, for 2 to %d GPUs; "
              "%.0f units at 8 (7L matrices whole, embedding and lm_head in 8 pieces, norms whole)", name,
              PERF_SCALE_GPUS[PERF_NUM_SCALE_GPUS - 1], units8);
    }
}

// the checks of what changed in the trainer since 33b6305 (da90bbf, ccb06c0, e56a56e), on today's variant
// (attention as given) of one recipe; written out apart from the rows' own arithmetic
static void perf_check_today(const PerfModel* m, const PerfOptions* o, const PerfTrainerFacts* facts,
                             const char* tag) {
    const PerfDims* d = &m->d;
    double L = d->L, C = d->C, F = d->F, V = d->V, R = m->rank, acc = m->accum, BT = (double)m->B * m->T;
    double e = 2.0;  // bf16 activations
    double N = L * (4.0 * C * C + 3.0 * C * F) + V * C, pmin = C < F ? C : F;
    const PerfAssume* a = &m->a;
    const int ST = PERF_SET_SUBTRACK;

    // da90bbf: in bf16 mode the three bulk products were TF32 (4-byte operands); the tracking ones fp32.
    // today in bf16 mode (opt_gemm bf16): the projection is lowrank_project_kernel (bf16 WMMA); with the
    // fused recovery the residual norms and the update are the two WMMA kernels on bf16 too, with the same
    // 2 p q R FLOPs each; unfused (--fused_recovery 0) the residual and the back-projection stay cuBLAS TF32.
    // with --opt_gemm tf32 (bf16 mode before): the projection on cuBLAS TF32, the two kernels on TF32 WMMA
    double bulk = 3.0 * 2.0 * R * (N - V * C);
    int fr = m->v.fused_recovery, b16 = m->v.opt_gemm == PERF_GEMM_BF16;
    double tf32 = perf_rows_sum(m, ST, "lowrank", PERF_TF32_GEMM, OP_SGEMM_BULK, 0);
    double wmma = perf_rows_sum(m, ST, "lowrank", b16 ? PERF_BF16_WMMA : PERF_TF32_WMMA, -1, 0);
    double proj = perf_rows_sum(m, ST, "lowrank", PERF_BF16_WMMA, OP_PROJECT, 0);
    double other = perf_rows_sum(m, ST, "lowrank", -2, -1, 0) - tf32 - wmma;
    double track_fp32 = perf_rows_sum(m, ST, "track", PERF_FP32_GEMM, OP_SGEMM, 0);
    double track_all = perf_rows_sum(m, ST, "track", -2, -1, 0);
    double want_wmma = (b16 ? 1.0 : 0.0) + (fr ? 2.0 : 0.0);
    check(perf_close(tf32, bulk - want_wmma * bulk / 3.0) &&
               (want_wmma > 0.0 ? perf_close(wmma, want_wmma * bulk / 3.0) : wmma == 0.0) &&
               (b16 ? perf_close(proj, bulk / 3.0) : proj == 0.0) && other == 0.0 && track_all > 0.0 &&
               perf_close(track_fp32, track_all),
               "%s: bf16 mode (--opt_gemm %s): the bulk products, 3 x 2 R (N - VC) = %.6e, with %s (%.3e "
               "elsewhere); the tracking GEMMs fp32 (gemm_gpu)", tag, PERF_GEMM_NAMES[m->v.opt_gemm], bulk,
               b16 ? (fr ? "all three on bf16 WMMA (the projection, the residual norms, the update)"
                         : "the projection on bf16 WMMA, the residual and the back-projection on cuBLAS TF32")
                   : (fr ? "the projection on cuBLAS TF32, the residual norms and the update on TF32 WMMA"
                         : "all three on cuBLAS TF32"), other);
    // their bytes: the projection reads S, G and writes Gt (R p + p q + q R). unfused: residual and
    // back-projection (p R + R q) in + 2 p q (beta 1) each. fused: the norms kernel reads G, S, Gt and writes
    // (tiles, q) doubles; the update kernel reads S, N', G, W, phi and writes W. over the 4L (C, C) and 3L
    // (pmin, max) matrices. the (m, n) passes a step: 4 + 8 + 4 + 8 ... = 20 bytes an element unfused (the
    // copy, the norms' read of D and recovery_apply are other rows), 4 + 4 + 12 fused
    double pq[2][3] = {{4.0 * L, C, C}, {3.0 * L, pmin, C < F ? F : C}};
    double bulk_bytes = 0.0, mn_bytes = 0.0, mn_want = 0.0;
    for (int g = 0; g < 2; g++) {
        double cnt = pq[g][0], p = pq[g][1], q = pq[g][2], tiles = ceil(p / PERF_WMMA_TILE);
        double proj = R * p + p * q + R * q;
        bulk_bytes += cnt * 4.0 * (fr ? proj + (p * q + p * R + R * q + 2.0 * tiles * q) +
                                            (3.0 * p * q + p * R + R * q + q)
                                      : proj + 2.0 * (p * R + R * q + 2.0 * p * q));
        mn_want += cnt * p * q * (fr ? 4.0 + 4.0 + 12.0 : 44.0);
    }
    check(perf_close(perf_rows_sum(m, ST, "lowrank", -2, -1, 1), bulk_bytes), "%s: the bulk products' bytes at "
               "4 an fp32 operand (rounded to TF32 or bf16 on the way) = %.6e", tag, bulk_bytes);
    // the (m, n)-sized traffic of the SubTrack++ rows (every row's bytes less its (R, q), (p, R) and (q,) terms,
    // written out per kind): 44 bytes an element unfused, 20 fused
    {
        double rq = 0.0, small = 0.0;
        for (int g = 0; g < 2; g++) {
            double cnt = pq[g][0], p = pq[g][1], q = pq[g][2], tiles = ceil(p / PERF_WMMA_TILE);
            // projection (R p + R q), adam_norms (24 R q + 12 q, fused: + 8 tiles q), limiter 12 q; fused: the
            // norms kernel 4 (p R + R q) + 8 tiles q, update_moments 12 R q + 4 q, the update 4 (p R + R q + q);
            // unfused: residual and back-projection 4 (p R + R q) each, recovery_apply 4 q
            rq += cnt * (4.0 * (R * p + R * q) + 24.0 * R * q + 12.0 * q + 12.0 * q +
                         (fr ? 8.0 * tiles * q + 4.0 * (p * R + R * q) + 8.0 * tiles * q + 12.0 * R * q + 4.0 * q +
                               4.0 * (p * R + R * q + q)
                             : 8.0 * (p * R + R * q) + 4.0 * q));
        }
        small = rq;
        double lr_rows = perf_rows_sum(m, ST, "lowrank", -1, -1, 1) - perf_rows_sum(m, ST, "lowrank", -1, OP_ADAMW, 1);
        mn_bytes = lr_rows - small;
        check(perf_close(mn_bytes, mn_want) && (fr ? perf_rows_sum(m, ST, "lowrank", -1, OP_COPY, 5) == 0.0 &&
                                                     perf_rows_sum(m, ST, "lowrank", -1, OP_RECOVERY_APPLY, 5) == 0.0
                                                   : 1),
              "%s: SubTrack++'s (m, n) passes a step: %s bytes an element (%.6e)%s", tag, fr ? "4 + 4 + 12 = 20"
              : "4 + 8 + 8 + 4 + 8 + 12 = 44", mn_want, fr ? "; no residual copy, no recovery_apply" : "");
    }
    {
        PerfModel* m32 = (PerfModel*)malloc(sizeof(PerfModel));
        PerfVariant v = m->v;
        perf_variant_set_dtype(&v, 1);
        PerfOptions oo = *o;
        oo.B = oo.T = oo.accum = oo.rank = oo.k = 0;
        if (m32 != NULL && perf_build_recipe(m32, m->preset, &oo, &v, facts)) {
            double f32 = perf_rows_sum(m32, ST, "lowrank", PERF_FP32_GEMM, OP_SGEMM_BULK, 0);
            double t32 = perf_rows_sum(m32, ST, "lowrank", PERF_TF32_GEMM, -1, 0) +
                         perf_rows_sum(m32, ST, "lowrank", PERF_TF32_WMMA, -1, 0) +
                         perf_rows_sum(m32, ST, "lowrank", PERF_BF16_WMMA, -1, 0);
            check(perf_close(f32, bulk) && t32 == 0.0, "%s: --dtype float32: the same bulk GEMMs stay fp32 "
                       "(%.6e), none TF32 or bf16", tag, f32);
        } else {
            check(0, "%s: --dtype float32 model could not be built", tag);
        }
        free(m32);
    }

    // da90bbf: the SVD is the FP64 Gram + cusolverDnDsyevdx for the top R: per matrix 4/3 p^3 + 2 p^2 R FLOPs,
    // p serial column steps, one launcher call (OP_SYEVDX, with R)
    double syx = 4.0 * L * (4.0 / 3.0 * C * C * C + 2.0 * C * C * R) +
                 3.0 * L * (4.0 / 3.0 * pmin * pmin * pmin + 2.0 * pmin * pmin * R);
    double syx_serial = (4.0 * L * C + 3.0 * L * pmin) * a->syevd_step_us * 1e-6;
    int bad_r = 0;
    for (int i = 0; i < m->n; i++) {
        if (m->rows[i].launch.op == OP_SYEVDX && m->rows[i].launch.b != (long long)R) { bad_r++; }
    }
    check(perf_close(perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_SYEVD, OP_SYEVDX, 0), syx) &&
               perf_close(perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_SYEVD, OP_SYEVDX, 3), syx_serial) &&
               perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_SYEVD, OP_SYEVDX, 2) == 7.0 * L &&
               perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_SYEVD, -1, 5) ==
               perf_rows_sum(m, PERF_SET_REFRESH, NULL, PERF_FP64_SYEVD, OP_SYEVDX, 5) && bad_r == 0,
               "%s: one refresh pass's eigensolver is syevdx range I over the 7L matrices: sum (4/3 p^3 + 2 p^2 R) = "
               "%.6e FLOPs, sum p x %.0f us = %.4f s serial, the launcher given R (%d rows without)", tag, syx,
               a->syevd_step_us, syx_serial, bad_r);

    // ccb06c0: the wo and w_down products add the residual in the epilogue: the forward's projection GEMMs
    // (not attention) read the matrices once, their inputs, write their outputs, and read the residual twice
    // a layer; no residual_forward launch. in bf16, q|k|v and gate|up are one product each, which read their
    // input once, not three times and twice (10 BT C a layer instead of 13)
    double xs = m->v.fused ? 10.0 : 13.0;
    // 1aac24b: the optimizer's batches (lowrank_batch_size, whose comment gives 5 (C, C) matrices a batch at 1B
    // and every matrix of a shape at 60M)
    if (strcmp(m->preset, "llama_1b") == 0 || strcmp(m->preset, "llama_60m") == 0) {
        int is_1b = strcmp(m->preset, "llama_1b") == 0;
        double b = perf_lowrank_batch(C, C, R), want = is_1b ? 5.0 : 4.0 * L;
        check(is_1b ? b == want : b >= want, "%s: the grouped optimizer step takes %.0f (C, C) matrices a batch "
              "(%s %.0f)", tag, b, is_1b ? "the trainer's comment:" : "all of them:", want);
    }
    double fwd_bytes = acc * e * (L * (4.0 * C * C + 3.0 * C * F + xs * BT * C + 3.0 * BT * F) + V * C +
                                  BT * (C + V));
    double got_bytes = 0.0;
    for (int i = 0; i < m->n; i++) {
        const PerfRow* r = &m->rows[i];
        if (strcmp(r->phase, "forward") == 0 && r->model_flops > 0.0) { got_bytes += r->bytes; }
    }
    check(perf_close(got_bytes, fwd_bytes) &&
               perf_rows_sum(m, PERF_SET_COMMON, "forward", -2, OP_GEMM_RESIDUAL, 2) == 2.0 * L * acc,
               "%s: the forward's projection GEMM bytes = accum x e x (L (4C^2 + 3CF + %.0f BT C + 3 BT F) + VC + "
               "BT (C + V)) = %.6e, 2 BT C e a layer of it the epilogue's residual reads (2L matmul_forward_residual "
               "a micro step)", tag, xs, fwd_bytes);
    double elem = perf_rows_sum(m, PERF_SET_COMMON, "forward", PERF_FP32_CORE, -1, 2);
    double want_elem = acc * ((m->v.flash ? 5.0 : 6.0) * L + 3.0);
    check(perf_close(elem, want_elem) && perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_RESIDUAL_FWD, 5) == 0.0,
               "%s: the forward's elementwise launches = accum x (%s) = %.0f: no residual_forward (2 a layer before "
               "ccb06c0)", tag, m->v.flash ? "5L + 3" : "6L + 3", want_elem);

    // e56a56e: rmsnorm_backward_dweight, two launches a call, (2L + 1) calls a micro step; pass 1 reads dout and
    // inp (e each) and rstd, writes ceil(BT/256) x C partials that pass 2 reads, and dweight is read and written;
    // latency: ceil(#blocks / 1056 resident) waves x ceil(32 rows / ilp) + ceil(#chunks / ilp) round trips
    double calls = acc * (2.0 * L + 1.0), chunks = ceil(BT / 256.0), rows = ceil((BT < 256.0 ? BT : 256.0) / 8.0);
    double waves = ceil(ceil(C / 32.0) * chunks / (132.0 * 8.0));
    double dw_bytes = calls * (2.0 * BT * C * e + 4.0 * BT + 8.0 * chunks * C + 8.0 * C);
    double dw_serial = calls * (waves * ceil(rows / a->serial_ilp) + ceil(chunks / a->serial_ilp)) * a->latency_us * 1e-6;
    check(perf_close(perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_RMSNORM_BWD_DWEIGHT, 1), dw_bytes) &&
               perf_close(perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_RMSNORM_BWD_DWEIGHT, 2), 2.0 * calls) &&
               perf_close(perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_RMSNORM_BWD_DWEIGHT, 3), dw_serial),
               "%s: rmsnorm_backward_dweight: %.0f launches, bytes (2L+1) accum (2 BT C e + 4 BT + 8 ceil(BT/256) C + 8 C)"
               " = %.6e, latency floor %.4f ms (%.0f wave(s) of pass 1)", tag, 2.0 * calls, dw_bytes, 1e3 * dw_serial,
               waves);
    // e56a56e: encoder_backward after the host's grouping: U = V (1 - e^(-BT/V)) buckets; reads dout once, the
    // 3 bucket arrays, reads and writes U dwte rows; host 2 BT + 4 V visits; the copy and the kernel
    double U = V * (1.0 - exp(-BT / V));
    double ints = BT + 2.0 * U + 1.0;
    double enc_bytes = acc * (BT * C * e + 4.0 * ints + 8.0 * U * C);
    double top = ceil(a->top_token * BT) > 1.0 ? ceil(a->top_token * BT) : 1.0;
    double lat_top = 2.0 + ceil(top / a->serial_ilp);
    double lat_waves = ceil(U * ceil(C / 256.0) / (132.0 * 8.0)) * (2.0 + ceil(BT / U / a->serial_ilp));
    double enc_serial = acc * ((lat_top > lat_waves ? lat_top : lat_waves) * a->latency_us * 1e-6 +
                               4.0 * ints / (a->h2d_gbs * 1e9));
    double enc_host = acc * (2.0 * BT + 4.0 * V) * a->host_ns * 1e-9;
    check(perf_close(perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_ENCODER_BWD, 1), enc_bytes) &&
               perf_close(perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_ENCODER_BWD, 2), 2.0 * acc) &&
               perf_close(perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_ENCODER_BWD, 3), enc_serial) &&
               perf_close(perf_rows_sum(m, PERF_SET_COMMON, NULL, -1, OP_ENCODER_BWD, 4), enc_host),
               "%s: encoder_backward_buckets + encoder_backward: U = %.0f tokens, bytes accum (BT C e + 4 (BT + 2U + 1)"
               " + 8 U C) = %.6e, latency + copy %.4f ms (top token %.0f rows), host sort %.4f ms", tag, U, enc_bytes,
               1e3 * enc_serial, top, 1e3 * enc_host);
    // the code before each change, still an option: it differs from today exactly by the change
    {
        PerfModel* mo = (PerfModel*)malloc(sizeof(PerfModel));
        PerfVariant v = m->v;
        v.fused_residual = 0;
        PerfOptions oo = *o;
        oo.B = oo.T = oo.accum = oo.rank = oo.k = 0;
        if (mo != NULL && perf_build_recipe(mo, m->preset, &oo, &v, facts)) {
            double d_gemm = perf_rows_sum(m, PERF_SET_COMMON, "forward", -2, -1, 1) -
                            perf_rows_sum(mo, PERF_SET_COMMON, "forward", -2, -1, 1);
            double res = perf_rows_sum(mo, PERF_SET_COMMON, NULL, -1, OP_RESIDUAL_FWD, 2);
            check(perf_close(d_gemm, acc * 2.0 * L * BT * C * e) && perf_close(res, acc * 2.0 * L),
                       "%s: --fused_residual 0 (before ccb06c0): %.0f residual_forward launches, and its GEMMs read "
                       "2 L BT C e a micro step less", tag, res);
        } else {
            check(0, "%s: --fused_residual 0 model could not be built", tag);
        }
        free(mo);
    }
}

static int perf_model_check(const PerfOptions* o, const PerfTrainerFacts* facts) {
    g_pass = g_fail = 0;
    static PerfModel m;
    printf("perf_model --check: the model's rows against closed forms computed apart from them, for every recipe,\n"
           "both attention kinds and both recovery forms, and what changed in the trainer since 33b6305 (TF32 bulk\n"
           "GEMMs, syevdx for the top R, the residual in the GEMM epilogue, the two-pass column sums); then the\n"
           "embedded figures against %s\n\n", o->numbers);
    for (int ri = 0; ri < PERF_NUM_RECIPES; ri++) {
        const PerfRecipe* rc = &PERF_RECIPES[ri];
        for (int variant = 0; variant < 4; variant++) {
            PerfVariant v;
            perf_variant_today(&v);
            v.flash = !(variant & 1);  // variant 0 is today's code
            v.fused_recovery = !((variant >> 1) & 1);  // 1 today (bf16); 0: the unfused path
            PerfOptions oo = *o;
            oo.B = oo.T = oo.accum = oo.rank = oo.k = 0;
            if (!perf_build_recipe(&m, rc->preset, &oo, &v, facts)) {
                check(0, "%s: the trainer has no such preset", rc->preset);
                continue;
            }
            const PerfDims* d = &m.d;
            double L = d->L, C = d->C, F = d->F, V = d->V, T = m.T, R = m.rank;
            double tokens = (double)m.B * m.T * m.accum;
            double N = L * (4.0 * C * C + 3.0 * C * F) + V * C;  // GPU_NUMBERS.md's N, written out again
            char tag[160];
            snprintf(tag, sizeof tag, "%s (attention %s, %s)", rc->preset, v.flash ? "flash" : "materialized",
                     v.fused_recovery ? "fused recovery" : "unfused recovery");
            if (variant == 0) {
                // the trainer's own parameter table, less the embedding and the norms
                double from_trainer = facts->parameter_count(d) - V * C - (2.0 * L + 1.0) * C;
                check(perf_close(perf_matrix_params(d), from_trainer) && perf_close(N, from_trainer),
                           "%s: N = %.0f from the trainer's parameter table (less embedding and norms) = L(4C^2+3CF)+VC",
                           rc->preset, from_trainer);
            }
            if (variant < 2) {
                double mm = perf_sum_field(&m, PERF_SET_COMMON, 1);
                check(perf_close(mm, 6.0 * N * tokens), "%s: forward + backward matmul FLOPs summed over the "
                           "rows = 6 N tokens = %.6e", tag, 6.0 * N * tokens);
                double attn = perf_sum_field(&m, PERF_SET_COMMON, 2);
                double want = tokens * (v.flash ? 6.0 * L * C * (T + 1.0) : 12.0 * L * C * T);
                check(perf_close(attn, want), "%s: attention FLOPs summed over the rows = tokens x %s = %.6e",
                           tag, v.flash ? "6 L C (T+1) (causal triangle)" : "12 L C T (full square)", want);
            }
            // the optimizer: sum over matrices of 2 p q R = 2 R sum(m n) = 2 R (N - V C)
            double per_gemm = 2.0 * R * (N - V * C);
            double lr = perf_lowrank_gemm_flops(&m, PERF_SET_SUBTRACK, "lowrank");
            int ngemm = 3;  // fused or not: projection, residual (its norms), back-projection (the update)
            check(perf_close(lr, ngemm * per_gemm), "%s: SubTrack++ GEMM FLOPs a plain step = %d x 2pqR over "
                       "the matrices = %d x 2 R (N - V C) = %.6e", tag, ngemm, ngemm, ngemm * per_gemm);
            if (variant == 0) {
                double tr = perf_lowrank_gemm_flops(&m, PERF_SET_SUBTRACK, "track");
                double pmin = C < F ? C : F;
                double want_tr = (per_gemm + 3.0 * 2.0 * R * R * (4.0 * L * C + 3.0 * L * pmin)) / m.k;
                check(perf_close(tr, want_tr), "%s: tracking GEMM FLOPs a step = (2pqR + 3 x 2pR^2) per "
                           "matrix / k = %.6e", rc->preset, want_tr);
                double ab = perf_sum_field(&m, PERF_SET_ADAMW, 3);
                double np = facts->parameter_count(d);
                check(perf_close(ab, 28.0 * np), "%s: AdamW bytes = 28 x every parameter (%.0f) = %.6e",
                           rc->preset, np, 28.0 * np);
                // every row: the estimate is never below the roofline, and the H200 never slower than the H100
                int bad_est = 0, bad_dev = 0;
                for (int i = 0; i < m.n; i++) {
                    for (int di = 0; di < PERF_NUM_DEVICES; di++) {
                        if (perf_row_estimate(&m.rows[i], &PERF_DEVICES[di], &m.a) <
                            perf_row_roofline(&m.rows[i], &PERF_DEVICES[di]) * (1.0 - 1e-12)) { bad_est++; }
                    }
                    if (perf_row_roofline(&m.rows[i], &PERF_DEVICES[1]) >
                        perf_row_roofline(&m.rows[i], &PERF_DEVICES[0]) * (1.0 + 1e-12)) { bad_dev++; }
                }
                check(bad_est == 0 && bad_dev == 0, "%s: every row's estimate >= its roofline (%d below), and "
                           "its H200 roofline <= its H100 one (%d above)", rc->preset, bad_est, bad_dev);
                // today's rows are all measurable (--per_kernel); only planned kernels have no launcher
                int unmeasured = 0;
                for (int i = 0; i < m.n; i++) {
                    if (m.rows[i].launch.op == OP_NONE && strstr(m.rows[i].name, "(planned)") == NULL) { unmeasured++; }
                }
                check(unmeasured == 0, "%s: every row of today's code names the launcher --per_kernel times "
                           "(%d without)", rc->preset, unmeasured);
            }
            perf_check_today(&m, o, facts, tag);  // today's, and the unfused recovery (--fused_recovery 0)
            if (variant == 0) { perf_check_scale(&m); }
            if (variant == 0 && strcmp(rc->preset, "llama_1b") == 0) {
                PerfModel* mt = (PerfModel*)malloc(sizeof(PerfModel));
                PerfVariant vt = v;
                vt.svd = PERF_SVD_TOPR;
                if (mt != NULL && perf_build_recipe(mt, rc->preset, &oo, &vt, facts)) {
                    perf_check_topr(mt, tag);
                } else {
                    check(0, "%s: --svd topr model could not be built", tag);
                }
                free(mt);
            }
            if (strcmp(rc->preset, "llama_1b") == 0 && !v.flash) {
                // GPU_NUMBERS.md: at 1B (r = 512, 4096 tokens a step) the three GEMMs are about 11% of the model's
                // FLOPs, two about 7.5%. exactly: ngemm 2 R (N - V C) / (tokens (6 N + 12 L C T))
                double share = lr / (perf_sum_field(&m, PERF_SET_COMMON, 1) + perf_sum_field(&m, PERF_SET_COMMON, 2));
                double want = ngemm * 2.0 * R * (N - V * C) / (tokens * (6.0 * N + 12.0 * L * C * T));
                double doc = GPU_NUMBERS_SHARE3_PCT;
                check(perf_close(share, want) && R == 512 && tokens == 4096,
                           "%s: the optimizer GEMMs' share of the model FLOPs = %d R (N - VC) / (3 tokens (N + 2 L C T)) "
                           "= %.4f%% (R %.0f, %.0f tokens)", tag, ngemm, 100.0 * want, R, tokens);
                check(fabs(100.0 * share - doc) < 1.0, "%s: that share, %.2f%%, is GPU_NUMBERS.md's 'about "
                           "%g%%' (within 1 point: the file rounds)", tag, 100.0 * share, doc);
            }
        }
    }
    int bad = perf_check_figures(o->numbers, NULL, perf_check_report);
    if (bad < 0) {
        printf("note: %s cannot be read (a clean clone has no ../shared): the embedded figures are not compared\n",
               o->numbers);
    }
    return check_summary();
}

// ----------------------------------------------------------------------------
// flags and main

static void perf_usage(FILE* out, const char* prog) {
    PerfAssume a;
    perf_assume_defaults(&a);
    fprintf(out,
            "usage: %s --model [flags]      the performance model (no GPU needed)\n"
            "       %s --check              the model's self-check (make test runs it)\n\n"
            "  --preset LIST       presets (default 60m,350m,1b,7b: the authors' recipes)\n"
            "  --table             the README's markdown table (today and the planned variants), instead of the rows\n"
            "  --scale             many GPUs (issue [5/6]): bytes sent a GPU, exposed communication, step and scaling\n"
            "                      efficiency of AdamW DDP, SubTrack++ DDP and SubTrack++ ZeRO-1, 1 to 512 GPUs;\n"
            "                      with --table: the README's table (8 GPUs over NVLink, 64 over InfiniBand)\n"
            "  --rows 0|1          print every row (default 1), or the summaries only\n"
            "  --B, --T, --accum, --rank, --k N   override the recipe's (default: the authors' script, T 256)\n"
            "  --attention flash|materialized     (default flash: today's flash_attention.cuh; materialized: cuBLAS\n"
            "                                      scores + softmax + PV, before it)\n"
            "  --opt_gemm fp32|tf32|bf16          the optimizer's bulk GEMMs (default today's: bf16 in bf16 mode, the\n"
            "                                     trainer's WMMA kernels; fp32 with --dtype float32; tf32: bf16 mode\n"
            "                                     before, cuBLAS TF32 and TF32 WMMA). tracking: fp32 always\n"
            "  --svd full|syevdx|topr             syevdx (default, today): FP64 Gram + syevdx range I, top R;\n"
            "                                     full: syevd of all p (before da90bbf);\n"
            "                                     topr: --svd randomized: FP64 Gram, subspace iteration by batched\n"
            "                                     DGEMMs and cusolverDnXsyevBatched on (R+o) x (R+o), per SVD chunk\n"
            "  --fused 0|1                        q, k, v in one product and gate, up in one (default 1 in bf16,\n"
            "                                      today; 0: apart, as --dtype float32 and the code before 85bd595)\n"
            "  --fused_residual 0|1               the wo / w_down products add the residual in cuBLASLt's epilogue\n"
            "                                     (default 1, today; 0: residual_forward launches, before ccb06c0)\n"
            "  --fused_recovery 0|1               bf16 mode's fused residual norms and update, no residual in memory\n"
            "                                     (default 1 in bf16, 0 with --dtype float32; 0: the unfused path)\n"
            "  --opt_batched 0|1|2                optimizer launches: 0 per matrix, 2 per batch of a shape (default,\n"
            "                                      today), 1 per tensor over its L layers (planned)\n"
            "  --dtype bfloat16|float32           activations (default bfloat16, the trainer's)\n"
            "  --clip 0|1                         gradient clipping fires (default 0, the authors' configs)\n"
            "  --parallel_wgrad 0|1               1 (default, today): rmsnorm dweight in two passes over many blocks,\n"
            "                                     encoder_backward one block per token; 0: one thread per channel\n"
            "                                     walks the B*T rows (before e56a56e)\n"
            "  --numbers PATH      GPU_NUMBERS.md to compare the embedded figures with (default %s)\n"
            "assumptions (defaults; see the header of dev/perf_model.h):\n"
            "  --eff_gemm %.3f --eff_flash %.2f --eff_bw %.3f --eff_gram %.2f --launch_us %.1f --latency_us %.2f\n"
            "  --serial_ilp %.0f --sm_gbs %.0f --power_iters %.0f --syevd_step_us %.1f --topr_iters %d\n"
            "  --topr_oversample %d --batched_step_us %.1f --top_token %.2f --host_ns %.1f --h2d_gbs %.0f\n"
            "many GPUs (--scale; estimates, see the comment above perf_scale):\n"
            "  --eff_nvlink %.2f --eff_ib %.2f --ib_ports %.0f --gpus_per_node %d --coll_base_us %.1f\n"
            "  --nvlink_hop_us %.1f --ib_hop_us %.1f --op_us %.1f --bucket_mb %.0f --bcast_bytes %.0f\n",
            prog, prog, PERF_NUMBERS_PATH, a.eff_gemm, a.eff_flash, a.eff_bw, a.eff_gram, a.launch_us, a.latency_us,
            a.serial_ilp, a.sm_gbs, a.power_iters, a.syevd_step_us, a.topr_iters, a.topr_oversample, a.batched_step_us,
            a.top_token, a.host_ns, a.h2d_gbs, a.eff_nvlink, a.eff_ib, a.ib_ports, a.gpus_per_node, a.coll_base_us,
            a.nvlink_hop_us, a.ib_hop_us, a.op_us, a.bucket_mb, a.bcast_bytes);
}

static void perf_flag_error(const char* flag, const char* value, const char* hint) {
    fprintf(stderr, "error: perf_model: bad value '%s' for %s; %s (see --help)\n", value != NULL ? value : "(missing)",
            flag, hint);
    exit(EXIT_FAILURE);
}

static double perf_parse_number(const char* flag, const char* v, double lo, double hi) {
    char* end = NULL;
    double x = v != NULL ? strtod(v, &end) : 0.0;
    if (v == NULL || *v == '\0' || *end != '\0' || !(x >= lo && x <= hi)) {
        char hint[96];
        snprintf(hint, sizeof hint, "expected a number in [%g, %g]", lo, hi);
        perf_flag_error(flag, v, hint);
    }
    return x;
}

static int perf_parse_choice(const char* flag, const char* v, const char* const* names, int n) {
    for (int i = 0; v != NULL && i < n; i++) {
        if (strcmp(v, names[i]) == 0) { return i; }
    }
    char hint[128] = "one of:";
    for (int i = 0; i < n; i++) { snprintf(hint + strlen(hint), sizeof hint - strlen(hint), " %s", names[i]); }
    perf_flag_error(flag, v, hint);
    return 0;
}

// the whole tool: argv as given to bench_gpu or perf_model (--model and --check take no value)
static int perf_model_main(int argc, char** argv, const PerfTrainerFacts* facts) {
    static PerfOptions o;
    memset(&o, 0, sizeof o);
    perf_variant_today(&o.v);
    perf_assume_defaults(&o.a);
    o.rows = 1;
    o.numbers = PERF_NUMBERS_PATH;
    const char* preset_list = "60m,350m,1b,7b";
    static const char* const attn[2] = {"materialized", "flash"};
    static const char* const dtypes[2] = {"bfloat16", "float32"};
    static const char* const off_on[2] = {"0", "1"};
    static const char* const batched[3] = {"0", "1", "2"};
    int opt_gemm_given = 0;
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { perf_usage(stdout, argv[0]); return 0; }
        if (strcmp(f, "--model") == 0) { continue; }
        if (strcmp(f, "--check") == 0) { o.check = 1; continue; }
        if (strcmp(f, "--table") == 0) { o.table = 1; continue; }
        if (strcmp(f, "--scale") == 0) { o.scale = 1; continue; }
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strncmp(f, "--", 2) != 0) { perf_flag_error("an argument", f, "flags start with --"); }
        if (v == NULL) { perf_flag_error(f, v, "this flag takes a value"); }
        i++;
        if (strcmp(f, "--preset") == 0) { preset_list = v; }
        else if (strcmp(f, "--rows") == 0) { o.rows = perf_parse_choice(f, v, off_on, 2); }
        else if (strcmp(f, "--B") == 0) { o.B = (int)perf_parse_number(f, v, 1, 1e6); }
        else if (strcmp(f, "--T") == 0) { o.T = (int)perf_parse_number(f, v, 1, 1e6); }
        else if (strcmp(f, "--accum") == 0) { o.accum = (int)perf_parse_number(f, v, 1, 1e6); }
        else if (strcmp(f, "--rank") == 0) { o.rank = (int)perf_parse_number(f, v, 1, 1e6); }
        else if (strcmp(f, "--k") == 0) { o.k = (int)perf_parse_number(f, v, 1, 1e9); }
        else if (strcmp(f, "--attention") == 0) { o.v.flash = perf_parse_choice(f, v, attn, 2); }
        else if (strcmp(f, "--opt_gemm") == 0) {
            o.v.opt_gemm = perf_parse_choice(f, v, PERF_GEMM_NAMES, 3);
            opt_gemm_given = 1;
        }
        else if (strcmp(f, "--svd") == 0) { o.v.svd = perf_parse_choice(f, v, PERF_SVD_NAMES, 3); }
        else if (strcmp(f, "--fused_residual") == 0) { o.v.fused_residual = perf_parse_choice(f, v, off_on, 2); }
        else if (strcmp(f, "--fused_recovery") == 0) { o.v.fused_recovery = perf_parse_choice(f, v, off_on, 2); }
        else if (strcmp(f, "--opt_batched") == 0) { o.v.opt_batched = perf_parse_choice(f, v, batched, 3); }
        else if (strcmp(f, "--fused") == 0) { o.v.fused = perf_parse_choice(f, v, off_on, 2); }
        else if (strcmp(f, "--dtype") == 0) { o.v.fp32_acts = perf_parse_choice(f, v, dtypes, 2); }
        else if (strcmp(f, "--clip") == 0) { o.v.clip = perf_parse_choice(f, v, off_on, 2); }
        else if (strcmp(f, "--parallel_wgrad") == 0) { o.v.parallel_wgrad = perf_parse_choice(f, v, off_on, 2); }
        else if (strcmp(f, "--numbers") == 0) { o.numbers = v; }
        else if (strcmp(f, "--eff_gemm") == 0) { o.a.eff_gemm = perf_parse_number(f, v, 1e-3, 1.0); }
        else if (strcmp(f, "--eff_flash") == 0) { o.a.eff_flash = perf_parse_number(f, v, 1e-3, 1.0); }
        else if (strcmp(f, "--eff_wmma") == 0) { o.a.eff_wmma = perf_parse_number(f, v, 1e-3, 1.0); }
        else if (strcmp(f, "--eff_bw") == 0) { o.a.eff_bw = perf_parse_number(f, v, 1e-3, 1.0); }
        else if (strcmp(f, "--eff_gram") == 0) { o.a.eff_gram = perf_parse_number(f, v, 1e-3, 1.0); }
        else if (strcmp(f, "--launch_us") == 0) { o.a.launch_us = perf_parse_number(f, v, 0.0, 1e3); }
        else if (strcmp(f, "--latency_us") == 0) { o.a.latency_us = perf_parse_number(f, v, 0.0, 1e3); }
        else if (strcmp(f, "--serial_ilp") == 0) { o.a.serial_ilp = perf_parse_number(f, v, 1.0, 1e3); }
        else if (strcmp(f, "--sm_gbs") == 0) { o.a.sm_gbs = perf_parse_number(f, v, 1.0, 1e5); }
        else if (strcmp(f, "--power_iters") == 0) { o.a.power_iters = perf_parse_number(f, v, 1.0, 1e4); }
        else if (strcmp(f, "--syevd_step_us") == 0) { o.a.syevd_step_us = perf_parse_number(f, v, 0.0, 1e4); }
        else if (strcmp(f, "--topr_iters") == 0) { o.a.topr_iters = (int)perf_parse_number(f, v, 0, 20); }
        else if (strcmp(f, "--topr_oversample") == 0) { o.a.topr_oversample = (int)perf_parse_number(f, v, 0, 256); }
        else if (strcmp(f, "--batched_step_us") == 0) { o.a.batched_step_us = perf_parse_number(f, v, 0.0, 1e4); }
        else if (strcmp(f, "--top_token") == 0) { o.a.top_token = perf_parse_number(f, v, 0.0, 1.0); }
        else if (strcmp(f, "--host_ns") == 0) { o.a.host_ns = perf_parse_number(f, v, 0.0, 1e6); }
        else if (strcmp(f, "--h2d_gbs") == 0) { o.a.h2d_gbs = perf_parse_number(f, v, 1e-3, 1e4); }
        else if (strcmp(f, "--eff_nvlink") == 0) { o.a.eff_nvlink = perf_parse_number(f, v, 1e-3, 1.0); }
        else if (strcmp(f, "--eff_ib") == 0) { o.a.eff_ib = perf_parse_number(f, v, 1e-3, 1.0); }
        else if (strcmp(f, "--ib_ports") == 0) { o.a.ib_ports = perf_parse_number(f, v, 0.125, 16.0); }
        else if (strcmp(f, "--gpus_per_node") == 0) { o.a.gpus_per_node = (int)perf_parse_number(f, v, 1, 64); }
        else if (strcmp(f, "--coll_base_us") == 0) { o.a.coll_base_us = perf_parse_number(f, v, 0.0, 1e4); }
        else if (strcmp(f, "--nvlink_hop_us") == 0) { o.a.nvlink_hop_us = perf_parse_number(f, v, 0.0, 1e4); }
        else if (strcmp(f, "--bcast_bytes") == 0) { o.a.bcast_bytes = perf_parse_number(f, v, 2.0, 4.0); }
        else if (strcmp(f, "--ib_hop_us") == 0) { o.a.ib_hop_us = perf_parse_number(f, v, 0.0, 1e4); }
        else if (strcmp(f, "--op_us") == 0) { o.a.op_us = perf_parse_number(f, v, 0.0, 1e4); }
        else if (strcmp(f, "--bucket_mb") == 0) { o.a.bucket_mb = perf_parse_number(f, v, 0.01, 1e5); }
        else { perf_flag_error("a flag", f, "unknown flag"); }
    }
    // today's optimizer bulk GEMMs follow the dtype, unless --opt_gemm says otherwise
    if (!opt_gemm_given) { perf_variant_set_dtype(&o.v, o.v.fp32_acts); }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", preset_list);
    for (char* tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ",")) {
        PerfDims d;
        char full[64];
        if (!facts->find(tok, &d, full, sizeof full)) { perf_flag_error("--preset", tok, "not a preset name"); }
        if (o.num_presets == 16) { perf_flag_error("--preset", preset_list, "at most 16 presets"); }
        snprintf(o.presets[o.num_presets++], sizeof o.presets[0], "%s", full);
    }
    if (o.check) { return perf_model_check(&o, facts); }
    // the embedded figures must be the file's, when it is here
    int bad = perf_check_figures(o.numbers, stderr, NULL);
    if (bad > 0) {
        fprintf(stderr, "error: perf_model: %d embedded figure(s) differ from %s; the model would use stale numbers. "
                "hint: update the constants in dev/perf_model.h (or give --numbers)\n", bad, o.numbers);
        return 1;
    }
    if (o.scale) {
        if (o.table) { perf_print_scale_table(&o, facts); } else { perf_print_scale(&o, facts); }
        return 0;
    }
    if (o.table) {
        perf_print_table(&o, facts);
        return 0;
    }
    printf("performance model of one training step (dev/perf_model.h)\n");
    printf("figures: embedded, %s %s\n", bad == 0 ? "equal to" : "not compared:", bad == 0 ? o.numbers
           : "the file cannot be read (a clean clone has no ../shared)");
    perf_print_assumptions(&o.a, &o.v);
    static PerfModel m;
    for (int i = 0; i < o.num_presets; i++) {
        if (perf_build_recipe(&m, o.presets[i], &o, &o.v, facts)) { perf_print_model(&m, o.rows); }
    }
    return 0;
}

#endif
