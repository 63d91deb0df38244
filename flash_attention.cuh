/*
flash_attention.cuh: causal multi-head attention, forward and backward, as
flash attention: an online softmax over blocks of keys, only the per-row
log-sum-exp saved for the backward pass, no (B, NH, T, T) buffer. The kernels
and their launchers; train_llama_subtrack.cu includes this file, and the
kernel ladder dev/cuda/flash_attention.cu (CPU reference, validation against
exact results with derived bounds, determinism, benchmark) includes it too.
The trainer's CPU twin is attention_forward/attention_backward in
train_llama_subtrack.c.

shapes, as in the trainer (train_llama_subtrack.c/.cu attention_forward):
q, k, v, out, dq, dk, dv, dout (B, T, NH, HS): the heads side by side in rows
of C = NH * HS, as the QKV matmuls write them; q and k arrive after RoPE (the
trainer rotates them before attention). lse, D (B, NH, T) fp32.
    s = q k^T / sqrt(HS) (causal: key j <= query i), lse_i = log sum_j exp s_ij,
    P = exp(s - lse), out = P v
backward, with D_i = sum_d dout_id out_id (= sum_j P_ij dP_ij):
    dP = dout v^T, dS = P o (dP - D), dq = dS k / sqrt(HS), dk = dS^T q / sqrt(HS), dv = P^T dout
dq, dk, dv are written (=), not accumulated, like the trainer's attention_backward.

launchers (the trainer's X is float or __nv_bfloat16):
    flash_attention_forward<X>(out, lse, q, k, v, B, T, NH, HS[, ldq, ldo])
    flash_attention_backward<X>(dq, dk, dv, dout, out, lse, q, k, v, scratch_D, B, T, NH, HS[, ldq, ldo])
    (ldq: the row stride of q, k, v, dq, dk, dv; ldo: of out, dout; both C
    by default. the trainer's fused product writes rows [q | k | v]: ldq 3C)
    flash_attention_supported<X>(HS)   // HS 1..256
    flash_attention_wmma<X>(HS)        // true: version 2 runs, else version 1

versions:
    1 (X = float): the exact path. One warp per query row (forward, dq) or key
      row (dk, dv); lanes take 32 keys (or queries) at a time for the scores,
      then the head dimensions for the products. Every sum is in fp32; the
      result matches the CPU twin to fp32 accuracy. Any HS up to 256. It also
      takes X = bf16 at the head sizes version 2 has no template for (52,
      llama_40m): bf16 loads and stores, fp32 arithmetic.
    2 (X = bf16): tensor cores through nvcuda::wmma, 16x16x16 bf16 fragments
      with fp32 accumulation; softmax and bookkeeping in fp32. 128 threads
      (4 warps) per block, each warp owns 16 rows:
      forward: a block takes 64 queries and walks blocks of 32 keys up to the
        diagonal (later key blocks are all masked and skipped; a warp whose 16
        rows are all above a key block skips it too). S = Q K^T goes through
        shared memory (fp32) for the online softmax; P is rounded to bf16 for
        O += P V; O stays in accumulator fragments, rescaled per row.
      backward: dq: a block takes 64 queries and walks the key blocks, like
        the forward, recomputing P = exp(s - lse); dk, dv: a block takes 64
        keys and walks blocks of 32 queries from the diagonal to T (at HS 128
        in two launches, dv then dk, each recomputing P: both sets of
        accumulators in one kernel need more than 255 registers). Each
        output element is summed by one warp in a fixed order: no atomics,
        the same bits on every run (resume stays bit-exact).
      HS a multiple of 16, at most 128 (templates for 16, 32, 48, 64, 80, 128:
      the head sizes of the presets; 52 (llama_40m) is not one, and takes
      version 1).
      resources (sm_90, dev/ptxas_report.sh; no spills): registers per thread
      forward 72..168, dq 72..128, dk/dv 119..236 (launch bounds of 1 block
      per SM: ptxas otherwise caps it at 128 and spills); dynamic shared
      memory at HS 64: 24.2, 42.5, 42.2 KiB; at HS 128: 35.2, 66.5, 66.2 KiB
      (dq and dk/dv opt in above 48 KiB with cudaFuncSetAttribute).
    The per-row scale of an accumulator fragment needs each element's row,
    which WMMA leaves unspecified: we load a table of element indices
    (row * 16 + col) into an accumulator fragment once, so x[i] of that
    fragment says where x[i] of every accumulator of this warp lies. This is
    portable; the harness checks it (CUDA_EMU_WMMA_MAPPING=scrambled).
*/
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <math.h>
#include <type_traits>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <mma.h>

// a failed launch or attribute call stops the program, naming the call site
static void fa_check_at(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: CUDA %s at %s:%d\n", cudaGetErrorString(err), file, line);
        exit(EXIT_FAILURE);
    }
}
#define fa_check(err) fa_check_at((err), __FILE__, __LINE__)

typedef __nv_bfloat16 bf16;
namespace wmma = nvcuda::wmma;

#define FA_WARP 32
#define FA_FULL_MASK 0xffffffffu
// version 1
#define FA1_WARPS 4        // rows per block (one warp each)
#define FA1_HS_MAX 256     // head dimensions per lane: FA1_HS_MAX / FA_WARP
// version 2
#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * FA_WARP)
#define FA_ROWS 64         // queries per block (forward, dq), keys per block (dk, dv): 16 per warp
#define FA_STEP 32         // keys (forward, dq) or queries (dk, dv) per step
#define FA_LDS (FA_STEP + 4)  // fp32 scores tile row stride: a multiple of 4 (16 bytes), as WMMA needs
#define FA_LDP (FA_STEP + 8)  // bf16 probabilities tile row stride: a multiple of 8 (16 bytes)

// ---- helpers shared by the kernels

__device__ __forceinline__ float fa_warp_max(float x) {
    for (int offset = FA_WARP / 2; offset > 0; offset /= 2) { x = fmaxf(x, __shfl_xor_sync(FA_FULL_MASK, x, offset)); }
    return x;
}
__device__ __forceinline__ float fa_warp_sum(float x) {
    for (int offset = FA_WARP / 2; offset > 0; offset /= 2) { x += __shfl_xor_sync(FA_FULL_MASK, x, offset); }
    return x;
}
__device__ __forceinline__ float fa_to_float(float x) { return x; }
__device__ __forceinline__ float fa_to_float(bf16 x) { return __bfloat162float(x); }
template <typename X> __device__ __forceinline__ X fa_from_float(float x);
template <> __device__ __forceinline__ float fa_from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 fa_from_float<bf16>(float x) { return __float2bfloat16(x); }

// D_i = sum_d dout_id out_id, one warp per row (b, h, t); D (B,NH,T). both versions
template <typename X>
__global__ void flash_backward_rowdot_kernel(float* D, const X* dout, const X* out, int B, int T, int NH, int HS,
                                             int ldo) {
    int row = blockIdx.x * (blockDim.x / FA_WARP) + threadIdx.x / FA_WARP;  // (b, h, t)
    int lane = threadIdx.x % FA_WARP;
    if (row >= B * NH * T) { return; }  // whole warps leave together
    int t = row % T, h = (row / T) % NH, b = row / (T * NH);
    size_t off = ((size_t)b * T + t) * ldo + (size_t)h * HS;
    float acc = 0.0f;
    for (int d = lane; d < HS; d += FA_WARP) { acc += fa_to_float(dout[off + d]) * fa_to_float(out[off + d]); }
    acc = fa_warp_sum(acc);
    if (lane == 0) { D[row] = acc; }
}

// ---- version 1: fp32, one warp per row

// one warp per query row i: lanes take keys j0 + lane for the scores, then
// head dimensions d = lane + 32 r for out. smem per warp: q row (HS), p (32)
template <typename X>
__global__ void flash_forward_fp32_kernel(X* out, float* lse, const X* q, const X* k, const X* v,
                                          int B, int T, int NH, int HS, float scale, int ldq, int ldo) {
    extern __shared__ float fa1_smem[];
    int warp = threadIdx.x / FA_WARP, lane = threadIdx.x % FA_WARP;
    int row = blockIdx.x * FA1_WARPS + warp;  // (b, h, t)
    if (row >= B * NH * T) { return; }  // no block barriers below: whole warps may leave
    int t = row % T, h = (row / T) % NH, b = row / (T * NH);
    const X* kh = k + (size_t)b * T * ldq + (size_t)h * HS;  // key j at kh + j * ldq
    const X* vh = v + (size_t)b * T * ldq + (size_t)h * HS;
    float* qs = fa1_smem + warp * (HS + FA_WARP);
    float* ps = qs + HS;
    for (int d = lane; d < HS; d += FA_WARP) { qs[d] = fa_to_float(q[((size_t)b * T + t) * ldq + (size_t)h * HS + d]); }
    __syncwarp();
    float o[FA1_HS_MAX / FA_WARP];
    for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) { o[r] = 0.0f; }
    float m = -INFINITY, l = 0.0f;
    for (int j0 = 0; j0 <= t; j0 += FA_WARP) {
        int j = j0 + lane;
        float s = -INFINITY;
        if (j <= t) {
            float acc = 0.0f;
            for (int d = 0; d < HS; d++) { acc += qs[d] * fa_to_float(kh[(size_t)j * ldq + d]); }
            s = acc * scale;
        }
        // key j0 <= t is in every step, so m_new is finite; exp(-inf) = 0 on the first step
        float m_new = fmaxf(m, fa_warp_max(s));
        float alpha = expf(m - m_new);
        float p = j <= t ? expf(s - m_new) : 0.0f;
        l = l * alpha + fa_warp_sum(p);
        m = m_new;
        ps[lane] = p;
        __syncwarp();
        int nj = min(FA_WARP, t + 1 - j0);
        for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) {
            int d = lane + r * FA_WARP;
            if (d < HS) {
                float acc = o[r] * alpha;
                for (int jj = 0; jj < nj; jj++) { acc += ps[jj] * fa_to_float(vh[(size_t)(j0 + jj) * ldq + d]); }
                o[r] = acc;
            }
        }
        __syncwarp();  // ps is rewritten on the next step
    }
    float inv = 1.0f / l;
    for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) {
        int d = lane + r * FA_WARP;
        if (d < HS) { out[((size_t)b * T + t) * ldo + (size_t)h * HS + d] = fa_from_float<X>(o[r] * inv); }
    }
    if (lane == 0) { lse[row] = m + logf(l); }
}

// dq: one warp per query row i. lanes take keys j: s, P = exp(s - lse_i),
// dP = dout_i . v_j, dS = P (dP - D_i); then head dimensions for dS k.
// smem per warp: q row, dout row (HS each), dS (32)
template <typename X>
__global__ void flash_backward_dq_fp32_kernel(X* dq, const X* dout, const float* lse, const float* D,
                                              const X* q, const X* k, const X* v,
                                              int B, int T, int NH, int HS, float scale, int ldq, int ldo) {
    extern __shared__ float fa1_smem[];
    int warp = threadIdx.x / FA_WARP, lane = threadIdx.x % FA_WARP;
    int row = blockIdx.x * FA1_WARPS + warp;
    if (row >= B * NH * T) { return; }
    int t = row % T, h = (row / T) % NH, b = row / (T * NH);
    const X* kh = k + (size_t)b * T * ldq + (size_t)h * HS;
    const X* vh = v + (size_t)b * T * ldq + (size_t)h * HS;
    float* qs = fa1_smem + warp * (2 * HS + FA_WARP);
    float* gs = qs + HS;
    float* dss = gs + HS;
    for (int d = lane; d < HS; d += FA_WARP) {
        qs[d] = fa_to_float(q[((size_t)b * T + t) * ldq + (size_t)h * HS + d]);
        gs[d] = fa_to_float(dout[((size_t)b * T + t) * ldo + (size_t)h * HS + d]);
    }
    __syncwarp();
    float lse_i = lse[row], D_i = D[row];
    float acc[FA1_HS_MAX / FA_WARP];
    for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) { acc[r] = 0.0f; }
    for (int j0 = 0; j0 <= t; j0 += FA_WARP) {
        int j = j0 + lane;
        float ds = 0.0f;
        if (j <= t) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < HS; d++) {
                s += qs[d] * fa_to_float(kh[(size_t)j * ldq + d]);
                dp += gs[d] * fa_to_float(vh[(size_t)j * ldq + d]);
            }
            float p = expf(s * scale - lse_i);
            ds = p * (dp - D_i);
        }
        dss[lane] = ds;
        __syncwarp();
        int nj = min(FA_WARP, t + 1 - j0);
        for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) {
            int d = lane + r * FA_WARP;
            if (d < HS) {
                float a = acc[r];
                for (int jj = 0; jj < nj; jj++) { a += dss[jj] * fa_to_float(kh[(size_t)(j0 + jj) * ldq + d]); }
                acc[r] = a;
            }
        }
        __syncwarp();
    }
    for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) {
        int d = lane + r * FA_WARP;
        if (d < HS) { dq[((size_t)b * T + t) * ldq + (size_t)h * HS + d] = fa_from_float<X>(acc[r] * scale); }
    }
}

// dk, dv: one warp per key row j. lanes take queries i >= j: P_ij and dS_ij
// as in dq; then head dimensions for dv = sum_i P dout_i, dk = sum_i dS q_i.
// smem per warp: k row, v row (HS each), P and dS (32 each)
template <typename X>
__global__ void flash_backward_dkdv_fp32_kernel(X* dk, X* dv, const X* dout, const float* lse,
                                                const float* D, const X* q, const X* k, const X* v,
                                                int B, int T, int NH, int HS, float scale, int ldq, int ldo) {
    extern __shared__ float fa1_smem[];
    int warp = threadIdx.x / FA_WARP, lane = threadIdx.x % FA_WARP;
    int row = blockIdx.x * FA1_WARPS + warp;  // (b, h, j)
    if (row >= B * NH * T) { return; }
    int j = row % T, h = (row / T) % NH, b = row / (T * NH);
    const X* qh = q + (size_t)b * T * ldq + (size_t)h * HS;  // query i at qh + i * ldq
    const X* gh = dout + (size_t)b * T * ldo + (size_t)h * HS;
    const float* lse_h = lse + (size_t)(row - j);  // (b, h, 0)
    const float* D_h = D + (size_t)(row - j);
    float* ks = fa1_smem + warp * (2 * HS + 2 * FA_WARP);
    float* vs = ks + HS;
    float* ps = vs + HS;
    float* dss = ps + FA_WARP;
    for (int d = lane; d < HS; d += FA_WARP) {
        ks[d] = fa_to_float(k[((size_t)b * T + j) * ldq + (size_t)h * HS + d]);
        vs[d] = fa_to_float(v[((size_t)b * T + j) * ldq + (size_t)h * HS + d]);
    }
    __syncwarp();
    float ak[FA1_HS_MAX / FA_WARP], av[FA1_HS_MAX / FA_WARP];
    for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) { ak[r] = 0.0f; av[r] = 0.0f; }
    for (int i0 = j; i0 < T; i0 += FA_WARP) {
        int i = i0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (i < T) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < HS; d++) {
                s += fa_to_float(qh[(size_t)i * ldq + d]) * ks[d];
                dp += fa_to_float(gh[(size_t)i * ldo + d]) * vs[d];
            }
            p = expf(s * scale - lse_h[i]);
            ds = p * (dp - D_h[i]);
        }
        ps[lane] = p;
        dss[lane] = ds;
        __syncwarp();
        int ni = min(FA_WARP, T - i0);
        for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) {
            int d = lane + r * FA_WARP;
            if (d < HS) {
                float a = ak[r], c = av[r];
                for (int ii = 0; ii < ni; ii++) {
                    a += dss[ii] * fa_to_float(qh[(size_t)(i0 + ii) * ldq + d]);
                    c += ps[ii] * fa_to_float(gh[(size_t)(i0 + ii) * ldo + d]);
                }
                ak[r] = a;
                av[r] = c;
            }
        }
        __syncwarp();
    }
    for (int r = 0; r < FA1_HS_MAX / FA_WARP; r++) {
        int d = lane + r * FA_WARP;
        if (d < HS) {
            dk[((size_t)b * T + j) * ldq + (size_t)h * HS + d] = fa_from_float<X>(ak[r] * scale);
            dv[((size_t)b * T + j) * ldq + (size_t)h * HS + d] = fa_from_float<X>(av[r]);
        }
    }
}

// ---- version 2: bf16 tensor cores (WMMA), fp32 accumulation

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_b_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_acc;

// shared memory carving: every buffer starts 128-byte aligned (WMMA needs 32)
__host__ __device__ constexpr size_t fa_align(size_t bytes) { return (bytes + 127) / 128 * 128; }

// rows [r0, r0 + n) of a head (row stride C) into a (n, HS + 8) bf16 tile, 16
// bytes at a time; rows at or past T become zeros (padding queries or keys)
template <int HS>
__device__ __forceinline__ void fa_stage_rows(bf16* tile, const bf16* head, size_t C, int r0, int n, int T) {
    constexpr int LDH = HS + 8, CHUNKS = HS / 8;
    for (int e = threadIdx.x; e < n * CHUNKS; e += FA_THREADS) {
        int r = e / CHUNKS, c8 = (e % CHUNKS) * 8;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < T) { val = *reinterpret_cast<const uint4*>(head + (size_t)(r0 + r) * C + c8); }
        *reinterpret_cast<uint4*>(tile + r * LDH + c8) = val;
    }
}

// the warp's 16 x 16 fp32 tile (in stage, row stride FA_LDS) as bf16 rows
// r0 .. r0 + 15 of a head in global memory, column offset c0; rows >= T skipped
__device__ __forceinline__ void fa_write_tile(bf16* head, size_t C, int r0, int c0, int T, const float* stage) {
    int lane = threadIdx.x % FA_WARP;
    int r = lane / 2, c8 = (lane % 2) * 8;
    if (r0 + r < T) {
        __align__(16) bf16 vals[8];
        #pragma unroll
        for (int c = 0; c < 8; c++) { vals[c] = __float2bfloat16(stage[r * FA_LDS + c8 + c]); }
        *reinterpret_cast<uint4*>(head + (size_t)(r0 + r) * C + c0 + c8) = *reinterpret_cast<const uint4*>(vals);
    }
}

// the index fragment: x[i] = row * 16 + col of element i of this warp's accumulators
__device__ __forceinline__ int fa_row(const frag_acc& idx, int i) { return (int)idx.x[i] >> 4; }
__device__ __forceinline__ int fa_col(const frag_acc& idx, int i) { return (int)idx.x[i] & 15; }

template <int HS>
struct fa_forward_smem {
    static constexpr int LDH = HS + 8;
    static constexpr size_t q = fa_align((size_t)FA_ROWS * LDH * sizeof(bf16));
    static constexpr size_t s = fa_align((size_t)FA_WARPS * 16 * FA_LDS * sizeof(float));
    static constexpr size_t p = fa_align((size_t)FA_WARPS * 16 * FA_LDP * sizeof(bf16));
    static constexpr size_t qsp = q > s + p ? q : s + p;  // Q is staged once, then the space holds S and P
    static constexpr size_t kv = fa_align((size_t)FA_STEP * LDH * sizeof(bf16));
    static constexpr size_t idx = fa_align(256 * sizeof(float));
    static constexpr size_t rowv = fa_align((size_t)FA_WARPS * 16 * sizeof(float));
    static constexpr size_t bytes = qsp + 2 * kv + idx + rowv;
};

// grid (ceil(T / 64), B * NH), 128 threads
template <int HS>
__global__ void __launch_bounds__(FA_THREADS)
flash_forward_wmma_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int T, int NH,
                          float scale, int ldq, int ldo) {
    typedef fa_forward_smem<HS> L;
    constexpr int LDH = HS + 8, NT = HS / 16;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    bf16* sQ = reinterpret_cast<bf16*>(fa_smem);
    float* sS = reinterpret_cast<float*>(fa_smem);             // after Q is in registers
    bf16* sP = reinterpret_cast<bf16*>(fa_smem + L::s);
    bf16* sK = reinterpret_cast<bf16*>(fa_smem + L::qsp);
    bf16* sV = reinterpret_cast<bf16*>(fa_smem + L::qsp + L::kv);
    float* sIdx = reinterpret_cast<float*>(fa_smem + L::qsp + 2 * L::kv);
    float* sRow = reinterpret_cast<float*>(fa_smem + L::qsp + 2 * L::kv + L::idx);
    int warp = threadIdx.x / FA_WARP, lane = threadIdx.x % FA_WARP;
    int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int q0 = (gridDim.x - 1 - blockIdx.x) * FA_ROWS;  // the longest (last) query blocks start first
    size_t head = (size_t)b * T * ldq + (size_t)h * HS;  // row t of this head's q, k, v at + t * ldq
    size_t head_o = (size_t)b * T * ldo + (size_t)h * HS;  // of its out, dout at + t * ldo
    float* sSw = sS + warp * 16 * FA_LDS;
    bf16* sPw = sP + warp * 16 * FA_LDP;
    float* sRoww = sRow + warp * 16;

    fa_stage_rows<HS>(sQ, q + head, ldq, q0, FA_ROWS, T);
    for (int e = threadIdx.x; e < 256; e += FA_THREADS) { sIdx[e] = (float)e; }
    __syncthreads();
    frag_a qf[NT];
    #pragma unroll
    for (int c = 0; c < NT; c++) { wmma::load_matrix_sync(qf[c], sQ + warp * 16 * LDH + c * 16, LDH); }
    frag_acc idx;
    wmma::load_matrix_sync(idx, sIdx, 16, wmma::mem_row_major);
    frag_acc o[NT];
    #pragma unroll
    for (int c = 0; c < NT; c++) { wmma::fill_fragment(o[c], 0.0f); }
    // softmax bookkeeping: lanes 2r and 2r + 1 own row r of the warp's 16, half the columns each
    int my_row = lane / 2, half = lane % 2;
    int w0 = q0 + warp * 16, qi = w0 + my_row;
    bool warp_live = w0 < T;
    float m_run = -INFINITY, l_run = 0.0f;
    int kend = min(T, q0 + FA_ROWS);  // keys 0 .. kend - 1 are needed by some query of the block
    __syncthreads();  // every warp has its Q fragments: the space now holds S and P
    for (int k0 = 0; k0 < kend; k0 += FA_STEP) {
        fa_stage_rows<HS>(sK, k + head, ldq, k0, FA_STEP, T);
        fa_stage_rows<HS>(sV, v + head, ldq, k0, FA_STEP, T);
        __syncthreads();
        if (warp_live && k0 <= w0 + 15) {  // else every key of this step is above the warp's rows
            // S (16 x 32) = Q K^T: K^T is K read column-major
            #pragma unroll
            for (int n = 0; n < FA_STEP / 16; n++) {
                frag_acc s;
                wmma::fill_fragment(s, 0.0f);
                #pragma unroll
                for (int c = 0; c < NT; c++) {
                    frag_b_col kf;
                    wmma::load_matrix_sync(kf, sK + n * 16 * LDH + c * 16, LDH);
                    wmma::mma_sync(s, qf[c], kf, s);
                }
                wmma::store_matrix_sync(sSw + n * 16, s, FA_LDS, wmma::mem_row_major);
            }
            __syncwarp();
            // online softmax of this row's 16 columns, the pair of lanes combined by a shuffle
            float* srow = sSw + my_row * FA_LDS + half * 16;
            float mx = -INFINITY;
            #pragma unroll
            for (int c = 0; c < 16; c++) {
                int kj = k0 + half * 16 + c;
                float x = (kj <= qi && kj < T) ? srow[c] * scale : -INFINITY;
                srow[c] = x;
                mx = fmaxf(mx, x);
            }
            mx = fmaxf(mx, __shfl_xor_sync(FA_FULL_MASK, mx, 1));
            float m_new = fmaxf(m_run, mx);  // finite: key 0 was in the first step of every row
            float alpha = expf(m_run - m_new);
            float psum = 0.0f;
            #pragma unroll
            for (int c = 0; c < 16; c++) {
                float p = expf(srow[c] - m_new);
                psum += p;
                sPw[my_row * FA_LDP + half * 16 + c] = __float2bfloat16(p);
            }
            psum += __shfl_xor_sync(FA_FULL_MASK, psum, 1);
            l_run = l_run * alpha + psum;  // the fp32 p: out's weights bf16(p) / l are off by at most u_bf16 each
            m_run = m_new;
            if (half == 0) { sRoww[my_row] = alpha; }
            __syncwarp();
            // O = diag(alpha) O + P V
            #pragma unroll
            for (int c = 0; c < NT; c++) {
                #pragma unroll
                for (int i = 0; i < o[c].num_elements; i++) { o[c].x[i] *= sRoww[fa_row(idx, i)]; }
            }
            frag_a pf[FA_STEP / 16];
            #pragma unroll
            for (int kk = 0; kk < FA_STEP / 16; kk++) { wmma::load_matrix_sync(pf[kk], sPw + kk * 16, FA_LDP); }
            #pragma unroll
            for (int c = 0; c < NT; c++) {
                #pragma unroll
                for (int kk = 0; kk < FA_STEP / 16; kk++) {
                    frag_b_row vf;
                    wmma::load_matrix_sync(vf, sV + kk * 16 * LDH + c * 16, LDH);
                    wmma::mma_sync(o[c], pf[kk], vf, o[c]);
                }
            }
        }
        __syncthreads();  // sK, sV are rewritten on the next step
    }
    if (!warp_live) { return; }  // no block barriers below
    if (half == 0) {
        sRoww[my_row] = 1.0f / l_run;
        if (qi < T) { lse[(size_t)bh * T + qi] = m_run + logf(l_run); }
    }
    __syncwarp();
    #pragma unroll
    for (int c = 0; c < NT; c++) {
        #pragma unroll
        for (int i = 0; i < o[c].num_elements; i++) { o[c].x[i] *= sRoww[fa_row(idx, i)]; }
        wmma::store_matrix_sync(sSw, o[c], FA_LDS, wmma::mem_row_major);
        __syncwarp();
        fa_write_tile(out + head_o, ldo, w0, c * 16, T, sSw);
        __syncwarp();
    }
}

template <int HS>
struct fa_dq_smem {
    static constexpr int LDH = HS + 8;
    static constexpr size_t rows = fa_align((size_t)FA_ROWS * LDH * sizeof(bf16));   // Q, dout
    static constexpr size_t kv = fa_align((size_t)FA_STEP * LDH * sizeof(bf16));      // K, V
    static constexpr size_t s = fa_align((size_t)FA_WARPS * 16 * FA_LDS * sizeof(float));
    static constexpr size_t p = fa_align((size_t)FA_WARPS * 16 * FA_LDP * sizeof(bf16));
    static constexpr size_t idx = fa_align(256 * sizeof(float));
    static constexpr size_t stats = fa_align((size_t)FA_ROWS * sizeof(float));        // lse, D
    static constexpr size_t bytes = 2 * rows + 2 * kv + s + p + idx + 2 * stats;
};

// dq = scale sum_j dS_ij k_j: grid (ceil(T / 64), B * NH), 128 threads; each
// warp owns 16 query rows and walks the key blocks up to its diagonal
template <int HS>
__global__ void __launch_bounds__(FA_THREADS)
flash_backward_dq_wmma_kernel(bf16* dq, const bf16* dout, const float* lse, const float* D, const bf16* q,
                              const bf16* k, const bf16* v, int T, int NH, float scale, int ldq, int ldo) {
    typedef fa_dq_smem<HS> L;
    constexpr int LDH = HS + 8, NT = HS / 16;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    unsigned char* at = fa_smem;
    bf16* sQ = reinterpret_cast<bf16*>(at); at += L::rows;
    bf16* sG = reinterpret_cast<bf16*>(at); at += L::rows;  // dout
    bf16* sK = reinterpret_cast<bf16*>(at); at += L::kv;
    bf16* sV = reinterpret_cast<bf16*>(at); at += L::kv;
    float* sS = reinterpret_cast<float*>(at); at += L::s;
    bf16* sP = reinterpret_cast<bf16*>(at); at += L::p;
    float* sIdx = reinterpret_cast<float*>(at); at += L::idx;
    float* sLse = reinterpret_cast<float*>(at); at += L::stats;
    float* sD = reinterpret_cast<float*>(at);
    int warp = threadIdx.x / FA_WARP, lane = threadIdx.x % FA_WARP;
    int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int q0 = (gridDim.x - 1 - blockIdx.x) * FA_ROWS;
    size_t head = (size_t)b * T * ldq + (size_t)h * HS;
    size_t head_o = (size_t)b * T * ldo + (size_t)h * HS;
    float* sSw = sS + warp * 16 * FA_LDS;
    bf16* sPw = sP + warp * 16 * FA_LDP;

    fa_stage_rows<HS>(sQ, q + head, ldq, q0, FA_ROWS, T);
    fa_stage_rows<HS>(sG, dout + head_o, ldo, q0, FA_ROWS, T);
    for (int e = threadIdx.x; e < 256; e += FA_THREADS) { sIdx[e] = (float)e; }
    for (int e = threadIdx.x; e < FA_ROWS; e += FA_THREADS) {
        bool in = q0 + e < T;
        sLse[e] = in ? lse[(size_t)bh * T + q0 + e] : 0.0f;
        sD[e] = in ? D[(size_t)bh * T + q0 + e] : 0.0f;
    }
    __syncthreads();
    frag_acc idx;
    wmma::load_matrix_sync(idx, sIdx, 16, wmma::mem_row_major);
    frag_acc acc[NT];
    #pragma unroll
    for (int c = 0; c < NT; c++) { wmma::fill_fragment(acc[c], 0.0f); }
    int my_row = lane / 2, half = lane % 2;
    int w0 = q0 + warp * 16, qi = w0 + my_row;
    bool warp_live = w0 < T;
    const bf16* sQw = sQ + warp * 16 * LDH;
    const bf16* sGw = sG + warp * 16 * LDH;
    int kend = min(T, q0 + FA_ROWS);
    for (int k0 = 0; k0 < kend; k0 += FA_STEP) {
        fa_stage_rows<HS>(sK, k + head, ldq, k0, FA_STEP, T);
        fa_stage_rows<HS>(sV, v + head, ldq, k0, FA_STEP, T);
        __syncthreads();
        if (warp_live && k0 <= w0 + 15) {
            // S = Q K^T (16 x 32)
            #pragma unroll
            for (int n = 0; n < FA_STEP / 16; n++) {
                frag_acc s;
                wmma::fill_fragment(s, 0.0f);
                #pragma unroll
                for (int c = 0; c < NT; c++) {
                    frag_a a;
                    frag_b_col kf;
                    wmma::load_matrix_sync(a, sQw + c * 16, LDH);
                    wmma::load_matrix_sync(kf, sK + n * 16 * LDH + c * 16, LDH);
                    wmma::mma_sync(s, a, kf, s);
                }
                wmma::store_matrix_sync(sSw + n * 16, s, FA_LDS, wmma::mem_row_major);
            }
            __syncwarp();
            // P = exp(s - lse) in place, 0 where masked
            float* srow = sSw + my_row * FA_LDS + half * 16;
            float lse_i = sLse[warp * 16 + my_row];
            #pragma unroll
            for (int c = 0; c < 16; c++) {
                int kj = k0 + half * 16 + c;
                srow[c] = (kj <= qi && qi < T) ? expf(srow[c] * scale - lse_i) : 0.0f;  // kj <= qi < T
            }
            __syncwarp();
            // dP = dout V^T, then dS = P (dP - D) element-wise, over P's tile in shared memory
            #pragma unroll
            for (int n = 0; n < FA_STEP / 16; n++) {
                frag_acc dp, pf;
                wmma::fill_fragment(dp, 0.0f);
                #pragma unroll
                for (int c = 0; c < NT; c++) {
                    frag_a a;
                    frag_b_col vf;
                    wmma::load_matrix_sync(a, sGw + c * 16, LDH);
                    wmma::load_matrix_sync(vf, sV + n * 16 * LDH + c * 16, LDH);
                    wmma::mma_sync(dp, a, vf, dp);
                }
                wmma::load_matrix_sync(pf, sSw + n * 16, FA_LDS, wmma::mem_row_major);
                #pragma unroll
                for (int i = 0; i < dp.num_elements; i++) {
                    dp.x[i] = pf.x[i] * (dp.x[i] - sD[warp * 16 + fa_row(idx, i)]);
                }
                wmma::store_matrix_sync(sSw + n * 16, dp, FA_LDS, wmma::mem_row_major);
            }
            __syncwarp();
            #pragma unroll
            for (int c = 0; c < 16; c++) { sPw[my_row * FA_LDP + half * 16 + c] = __float2bfloat16(srow[c]); }
            __syncwarp();
            // dq += dS K
            #pragma unroll
            for (int kk = 0; kk < FA_STEP / 16; kk++) {
                frag_a dsf;
                wmma::load_matrix_sync(dsf, sPw + kk * 16, FA_LDP);
                #pragma unroll
                for (int c = 0; c < NT; c++) {
                    frag_b_row kf;
                    wmma::load_matrix_sync(kf, sK + kk * 16 * LDH + c * 16, LDH);
                    wmma::mma_sync(acc[c], dsf, kf, acc[c]);
                }
            }
        }
        __syncthreads();
    }
    if (!warp_live) { return; }
    #pragma unroll
    for (int c = 0; c < NT; c++) {
        #pragma unroll
        for (int i = 0; i < acc[c].num_elements; i++) { acc[c].x[i] *= scale; }
        wmma::store_matrix_sync(sSw, acc[c], FA_LDS, wmma::mem_row_major);
        __syncwarp();
        fa_write_tile(dq + head, ldq, w0, c * 16, T, sSw);
        __syncwarp();
    }
}

template <int HS>
struct fa_dkdv_smem {
    static constexpr int LDH = HS + 8;
    static constexpr size_t keys = fa_align((size_t)FA_ROWS * LDH * sizeof(bf16));    // K, V
    static constexpr size_t step = fa_align((size_t)FA_STEP * LDH * sizeof(bf16));    // Q, dout
    static constexpr size_t s = fa_align((size_t)FA_WARPS * 16 * FA_LDS * sizeof(float));
    static constexpr size_t p = fa_align((size_t)FA_WARPS * 16 * FA_LDP * sizeof(bf16));
    static constexpr size_t idx = fa_align(256 * sizeof(float));
    static constexpr size_t stats = fa_align((size_t)FA_STEP * sizeof(float));        // lse, D
    static constexpr size_t bytes = 2 * keys + 2 * step + s + p + idx + 2 * stats;
};

// which outputs a dk/dv launch computes: both, or (at HS 128, where the two
// sets of accumulators would take 128 registers per lane and spill) one per
// launch, each recomputing P
#define FA_DV 1
#define FA_DK 2
static constexpr bool fa_dkdv_split(int HS) { return HS > 80; }

// dv = sum_i P_ij dout_i, dk = scale sum_i dS_ij q_i: grid (ceil(T / 64),
// B * NH), 128 threads; each warp owns 16 keys and walks the query blocks from
// its diagonal to T. The warp works on transposed tiles (keys x queries)
// (minimum 1 block per SM in the launch bounds: else ptxas aims at 4 blocks
// per SM, caps the registers at 128 and spills at HS 64)
template <int HS, int PARTS>
__global__ void __launch_bounds__(FA_THREADS, 1)
flash_backward_dkdv_wmma_kernel(bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* D,
                                const bf16* q, const bf16* k, const bf16* v, int T, int NH, float scale, int ldq,
                                int ldo) {
    typedef fa_dkdv_smem<HS> L;
    constexpr int LDH = HS + 8, NT = HS / 16;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    unsigned char* at = fa_smem;
    bf16* sK = reinterpret_cast<bf16*>(at); at += L::keys;
    bf16* sV = reinterpret_cast<bf16*>(at); at += L::keys;
    bf16* sQ = reinterpret_cast<bf16*>(at); at += L::step;
    bf16* sG = reinterpret_cast<bf16*>(at); at += L::step;  // dout
    float* sS = reinterpret_cast<float*>(at); at += L::s;
    bf16* sP = reinterpret_cast<bf16*>(at); at += L::p;
    float* sIdx = reinterpret_cast<float*>(at); at += L::idx;
    float* sLse = reinterpret_cast<float*>(at); at += L::stats;
    float* sD = reinterpret_cast<float*>(at);
    int warp = threadIdx.x / FA_WARP, lane = threadIdx.x % FA_WARP;
    int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int k0 = blockIdx.x * FA_ROWS;  // the first key blocks have the most queries: they start first
    size_t head = (size_t)b * T * ldq + (size_t)h * HS;
    size_t head_o = (size_t)b * T * ldo + (size_t)h * HS;
    float* sSw = sS + warp * 16 * FA_LDS;
    bf16* sPw = sP + warp * 16 * FA_LDP;

    fa_stage_rows<HS>(sK, k + head, ldq, k0, FA_ROWS, T);
    fa_stage_rows<HS>(sV, v + head, ldq, k0, FA_ROWS, T);
    for (int e = threadIdx.x; e < 256; e += FA_THREADS) { sIdx[e] = (float)e; }
    __syncthreads();
    frag_acc idx;
    wmma::load_matrix_sync(idx, sIdx, 16, wmma::mem_row_major);
    frag_acc adk[NT], adv[NT];
    #pragma unroll
    for (int c = 0; c < NT; c++) {
        wmma::fill_fragment(adk[c], 0.0f);
        wmma::fill_fragment(adv[c], 0.0f);
    }
    int my_key = lane / 2, half = lane % 2;
    int w0 = k0 + warp * 16, kj = w0 + my_key;
    bool warp_live = w0 < T;
    const bf16* sKw = sK + warp * 16 * LDH;
    const bf16* sVw = sV + warp * 16 * LDH;
    for (int i0 = k0; i0 < T; i0 += FA_STEP) {  // queries before k0 see none of these keys
        fa_stage_rows<HS>(sQ, q + head, ldq, i0, FA_STEP, T);
        fa_stage_rows<HS>(sG, dout + head_o, ldo, i0, FA_STEP, T);
        for (int e = threadIdx.x; e < FA_STEP; e += FA_THREADS) {
            bool in = i0 + e < T;
            sLse[e] = in ? lse[(size_t)bh * T + i0 + e] : 0.0f;
            sD[e] = in ? D[(size_t)bh * T + i0 + e] : 0.0f;
        }
        __syncthreads();
        if (warp_live && i0 + FA_STEP - 1 >= w0) {  // else every query of this step is before the warp's keys
            // S^T (16 keys x 32 queries) = K Q^T, one 16 x 16 tile at a time (registers are
            // scarce here: the dk and dv accumulators take HS / 2 per lane)
            #pragma unroll
            for (int n = 0; n < FA_STEP / 16; n++) {
                frag_acc st;
                wmma::fill_fragment(st, 0.0f);
                #pragma unroll
                for (int c = 0; c < NT; c++) {
                    frag_a a;
                    frag_b_col qf;
                    wmma::load_matrix_sync(a, sKw + c * 16, LDH);
                    wmma::load_matrix_sync(qf, sQ + n * 16 * LDH + c * 16, LDH);
                    wmma::mma_sync(st, a, qf, st);
                }
                wmma::store_matrix_sync(sSw + n * 16, st, FA_LDS, wmma::mem_row_major);
            }
            __syncwarp();
            // P^T = exp(s - lse_query): fp32 in place (for dS) and bf16 (for dv)
            float* srow = sSw + my_key * FA_LDS + half * 16;
            #pragma unroll
            for (int c = 0; c < 16; c++) {
                int iq = half * 16 + c, qi = i0 + iq;
                float p = (kj <= qi && qi < T && kj < T) ? expf(srow[c] * scale - sLse[iq]) : 0.0f;
                srow[c] = p;
                sPw[my_key * FA_LDP + iq] = __float2bfloat16(p);
            }
            __syncwarp();
            if (PARTS & FA_DV) {
                // dv += P^T dout
                #pragma unroll
                for (int kk = 0; kk < FA_STEP / 16; kk++) {
                    frag_a pf;
                    wmma::load_matrix_sync(pf, sPw + kk * 16, FA_LDP);
                    #pragma unroll
                    for (int c = 0; c < NT; c++) {
                        frag_b_row gf;
                        wmma::load_matrix_sync(gf, sG + kk * 16 * LDH + c * 16, LDH);
                        wmma::mma_sync(adv[c], pf, gf, adv[c]);
                    }
                }
            }
            if (PARTS & FA_DK) {
                // dP^T = V dout^T, then dS^T = P^T (dP^T - D_query) over P^T's fp32 tile
                #pragma unroll
                for (int n = 0; n < FA_STEP / 16; n++) {
                    frag_acc dp, pf;
                    wmma::fill_fragment(dp, 0.0f);
                    #pragma unroll
                    for (int c = 0; c < NT; c++) {
                        frag_a a;
                        frag_b_col gf;
                        wmma::load_matrix_sync(a, sVw + c * 16, LDH);
                        wmma::load_matrix_sync(gf, sG + n * 16 * LDH + c * 16, LDH);
                        wmma::mma_sync(dp, a, gf, dp);
                    }
                    wmma::load_matrix_sync(pf, sSw + n * 16, FA_LDS, wmma::mem_row_major);
                    #pragma unroll
                    for (int i = 0; i < dp.num_elements; i++) {
                        dp.x[i] = pf.x[i] * (dp.x[i] - sD[n * 16 + fa_col(idx, i)]);
                    }
                    wmma::store_matrix_sync(sSw + n * 16, dp, FA_LDS, wmma::mem_row_major);
                }
                __syncwarp();  // also: every lane has loaded P^T (bf16) before dS^T overwrites it
                #pragma unroll
                for (int c = 0; c < 16; c++) { sPw[my_key * FA_LDP + half * 16 + c] = __float2bfloat16(srow[c]); }
                __syncwarp();
                // dk += dS^T Q
                #pragma unroll
                for (int kk = 0; kk < FA_STEP / 16; kk++) {
                    frag_a dsf;
                    wmma::load_matrix_sync(dsf, sPw + kk * 16, FA_LDP);
                    #pragma unroll
                    for (int c = 0; c < NT; c++) {
                        frag_b_row qf;
                        wmma::load_matrix_sync(qf, sQ + kk * 16 * LDH + c * 16, LDH);
                        wmma::mma_sync(adk[c], dsf, qf, adk[c]);
                    }
                }
            }
        }
        __syncthreads();
    }
    if (!warp_live) { return; }
    #pragma unroll
    for (int c = 0; c < NT; c++) {
        if (PARTS & FA_DK) {
            #pragma unroll
            for (int i = 0; i < adk[c].num_elements; i++) { adk[c].x[i] *= scale; }
            wmma::store_matrix_sync(sSw, adk[c], FA_LDS, wmma::mem_row_major);
            __syncwarp();
            fa_write_tile(dk + head, ldq, w0, c * 16, T, sSw);
            __syncwarp();
        }
        if (PARTS & FA_DV) {
            wmma::store_matrix_sync(sSw, adv[c], FA_LDS, wmma::mem_row_major);
            __syncwarp();
            fa_write_tile(dv + head, ldq, w0, c * 16, T, sSw);
            __syncwarp();
        }
    }
}

// ---- launchers

// the head sizes with a WMMA instantiation (the presets' HS that are multiples of 16)
#define FA_WMMA_HEAD_SIZES(X) X(16) X(32) X(48) X(64) X(80) X(128)

static bool fa_wmma_head_size(int HS) {
#define FA_CASE(n) if (HS == n) { return true; }
    FA_WMMA_HEAD_SIZES(FA_CASE)
#undef FA_CASE
    return false;
}

// the kernels a launch takes: version 2 (tensor cores) for bf16 at the WMMA
// head sizes; version 1 otherwise: fp32, and bf16 at any other head size
// (llama_40m's 52), where it reads and writes bf16 and computes in fp32
template <typename X>
bool flash_attention_wmma(int HS) {
    return std::is_same<X, bf16>::value && fa_wmma_head_size(HS);
}

// can flash_attention_forward/backward<X> take this head size?
template <typename X>
bool flash_attention_supported(int HS) {
    return HS >= 1 && HS <= FA1_HS_MAX;
}

template <typename X>
static void fa_check_arguments(const char* who, const X* const* ptrs, int n, int B, int T, int NH, int HS, int ldq,
                               int ldo) {
    if (B < 1 || T < 1 || NH < 1 || !flash_attention_supported<X>(HS)) {
        fprintf(stderr, "error: %s: unsupported shape B %d T %d NH %d HS %d; hint: see "
                "flash_attention_supported(): HS 1..256\n", who, B, T, NH, HS);
        exit(EXIT_FAILURE);
    }
    // rows at least NH * HS long; the tensor-core kernels stage rows 16 bytes at a time
    int rows16 = flash_attention_wmma<X>(HS) ? 16 / (int)sizeof(X) : 1;
    if (ldq < NH * HS || ldo < NH * HS || ldq % rows16 != 0 || ldo % rows16 != 0) {
        fprintf(stderr, "error: %s: row strides %d (q, k, v) and %d (out) for NH %d x HS %d; hint: each must be at "
                "least NH * HS%s\n", who, ldq, ldo, NH, HS, rows16 > 1 ? " and a multiple of 8" : "");
        exit(EXIT_FAILURE);
    }
    for (int i = 0; i < n; i++) {
        if ((uintptr_t)ptrs[i] % 16 != 0) {
            fprintf(stderr, "error: %s: tensor %d at %p is not 16-byte aligned; hint: the kernels read rows 16 bytes "
                    "at a time\n", who, i, (const void*)ptrs[i]);
            exit(EXIT_FAILURE);
        }
    }
}

template <typename K>
static void fa_set_smem(K* kernel, size_t bytes) {
    if (bytes > 48 * 1024) {  // above the default: opt in (sm_80+: up to 227 KiB)
        fa_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    }
}

template <int HS>
static void fa_forward_wmma(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                            int B, int T, int NH, float scale, int ldq, int ldo) {
    size_t smem = fa_forward_smem<HS>::bytes;
    fa_set_smem(flash_forward_wmma_kernel<HS>, smem);
    dim3 grid((T + FA_ROWS - 1) / FA_ROWS, B * NH);
    flash_forward_wmma_kernel<HS><<<grid, FA_THREADS, smem>>>(out, lse, q, k, v, T, NH, scale, ldq, ldo);
    fa_check(cudaGetLastError());
}

template <int HS>
static void fa_backward_wmma(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* D,
                             const bf16* q, const bf16* k, const bf16* v, int B, int T, int NH, float scale,
                             int ldq, int ldo) {
    dim3 grid((T + FA_ROWS - 1) / FA_ROWS, B * NH);
    size_t smem = fa_dq_smem<HS>::bytes;
    fa_set_smem(flash_backward_dq_wmma_kernel<HS>, smem);
    flash_backward_dq_wmma_kernel<HS><<<grid, FA_THREADS, smem>>>(dq, dout, lse, D, q, k, v, T, NH, scale, ldq,
                                                                                 ldo);
    fa_check(cudaGetLastError());
    smem = fa_dkdv_smem<HS>::bytes;
    if constexpr (fa_dkdv_split(HS)) {
        fa_set_smem(flash_backward_dkdv_wmma_kernel<HS, FA_DV>, smem);
        flash_backward_dkdv_wmma_kernel<HS, FA_DV><<<grid, FA_THREADS, smem>>>(dk, dv, dout, lse, D, q, k, v, T, NH,
                                                                             scale, ldq, ldo);
        fa_check(cudaGetLastError());
        fa_set_smem(flash_backward_dkdv_wmma_kernel<HS, FA_DK>, smem);
        flash_backward_dkdv_wmma_kernel<HS, FA_DK><<<grid, FA_THREADS, smem>>>(dk, dv, dout, lse, D, q, k, v, T, NH,
                                                                             scale, ldq, ldo);
    } else {
        fa_set_smem(flash_backward_dkdv_wmma_kernel<HS, FA_DV | FA_DK>, smem);
        flash_backward_dkdv_wmma_kernel<HS, FA_DV | FA_DK><<<grid, FA_THREADS, smem>>>(dk, dv, dout, lse, D, q, k, v,
                                                                                     T, NH, scale, ldq, ldo);
    }
    fa_check(cudaGetLastError());
}

// out (B,T,NH,HS), lse (B,NH,T); q, k, v (B,T,NH,HS), q and k after RoPE.
// ldq, ldo: the row strides of q, k, v (and dq, dk, dv) and of out (and
// dout), NH * HS by default (0); 3 NH HS when q, k, v are the thirds of
// one product's rows [q | k | v]. the last arguments, which the CPU twin
// does not have
template <typename X>
void flash_attention_forward(X* out, float* lse, const X* q, const X* k, const X* v, int B, int T, int NH, int HS,
                             int ldq = 0, int ldo = 0) {
    const X* ptrs[4] = {out, q, k, v};
    ldq = ldq > 0 ? ldq : NH * HS;
    ldo = ldo > 0 ? ldo : NH * HS;
    fa_check_arguments("flash_attention_forward", ptrs, 4, B, T, NH, HS, ldq, ldo);
    float scale = 1.0f / sqrtf((float)HS);
    if constexpr (std::is_same<X, bf16>::value) {
        if (fa_wmma_head_size(HS)) {
#define FA_CASE(n) if (HS == n) { fa_forward_wmma<n>(out, lse, q, k, v, B, T, NH, scale, ldq, ldo); }
            FA_WMMA_HEAD_SIZES(FA_CASE)
#undef FA_CASE
            return;
        }
    }
    int rows = B * NH * T;
    size_t smem = (size_t)FA1_WARPS * (HS + FA_WARP) * sizeof(float);
    flash_forward_fp32_kernel<X><<<(rows + FA1_WARPS - 1) / FA1_WARPS, FA1_WARPS * FA_WARP, smem>>>(
        out, lse, q, k, v, B, T, NH, HS, scale, ldq, ldo);
    fa_check(cudaGetLastError());
}

// dq, dk, dv (B,T,NH,HS) written (=); dout, out (B,T,NH,HS); lse (B,NH,T)
// from the forward pass; scratch_D (B,NH,T) floats
template <typename X>
void flash_attention_backward(X* dq, X* dk, X* dv, const X* dout, const X* out, const float* lse, const X* q,
                              const X* k, const X* v, float* scratch_D, int B, int T, int NH, int HS, int ldq = 0,
                              int ldo = 0) {
    const X* ptrs[8] = {dq, dk, dv, dout, out, q, k, v};
    ldq = ldq > 0 ? ldq : NH * HS;
    ldo = ldo > 0 ? ldo : NH * HS;
    fa_check_arguments("flash_attention_backward", ptrs, 8, B, T, NH, HS, ldq, ldo);
    float scale = 1.0f / sqrtf((float)HS);
    int rows = B * NH * T;
    flash_backward_rowdot_kernel<<<(rows + 7) / 8, 8 * FA_WARP>>>(scratch_D, dout, out, B, T, NH, HS, ldo);
    fa_check(cudaGetLastError());
    if constexpr (std::is_same<X, bf16>::value) {
        if (fa_wmma_head_size(HS)) {
#define FA_CASE(n) if (HS == n) { fa_backward_wmma<n>(dq, dk, dv, dout, lse, scratch_D, q, k, v, B, T, NH, scale, \
                                                     ldq, ldo); }
            FA_WMMA_HEAD_SIZES(FA_CASE)
#undef FA_CASE
            return;
        }
    }
    int blocks = (rows + FA1_WARPS - 1) / FA1_WARPS;
    size_t smem = (size_t)FA1_WARPS * (2 * HS + FA_WARP) * sizeof(float);
    flash_backward_dq_fp32_kernel<X><<<blocks, FA1_WARPS * FA_WARP, smem>>>(dq, dout, lse, scratch_D, q, k, v,
                                                                        B, T, NH, HS, scale, ldq, ldo);
    fa_check(cudaGetLastError());
    smem = (size_t)FA1_WARPS * (2 * HS + 2 * FA_WARP) * sizeof(float);
    flash_backward_dkdv_fp32_kernel<X><<<blocks, FA1_WARPS * FA_WARP, smem>>>(dk, dv, dout, lse, scratch_D, q, k, v,
                                                                          B, T, NH, HS, scale, ldq, ldo);
    fa_check(cudaGetLastError());
}
