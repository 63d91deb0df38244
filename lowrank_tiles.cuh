/*
lowrank_tiles.cuh: the tiled tensor-core product of SubTrack++'s bf16-mode
step, a 64 x 64 tile of S X (S (p, R), X the moments' shape) staged through
shared memory at the tensor cores' input precision (LowRankTF32, LowRankBF16).
train_llama_subtrack.cu builds its three kernels on it (lowrank_project_kernel,
lowrank_residual_norms_kernel, lowrank_fused_update_kernel; the design is in
the comment above their definitions), and the kernel ladder
dev/cuda/lowrank_fused.cu includes it too, so both run the same code.
*/
#pragma once
#include <type_traits>
#include <cuda_bf16.h>
#include <mma.h>

#define LOWRANK_TILE 64                             // rows i and columns j of a block's tile
#define LOWRANK_TILE_THREADS 128                    // 4 warps, 2 x 2 quarters of 32 x 32
#define LOWRANK_TILE_LDC (LOWRANK_TILE + 4)         // the finished tile (64, 64) of floats
#define LOWRANK_TILE_SMEM_FLOATS 4608               // 18 KiB: a staged chunk of either precision, or the tile

// the input precision of the tiled products: its wmma shape (16 x 16 x K), how
// an fp32 input is rounded as it is staged, and the reduction chunk staged at
// a time. rows of a staged chunk are padded by PAD elements (16 bytes), which
// staggers the banks and keeps every fragment's pointer 256-bit aligned
struct LowRankTF32 {
    typedef float staged;                           // a tf32 element is a float in memory
    typedef nvcuda::wmma::precision::tf32 element;
    static constexpr int K = 8;
    static constexpr int CHUNK = 32;
    static constexpr int PAD = 4;
    __device__ static float convert(float x) { return nvcuda::wmma::__float_to_tf32(x); }
};
struct LowRankBF16 {
    typedef __nv_bfloat16 staged;
    typedef __nv_bfloat16 element;
    static constexpr int K = 16;
    static constexpr int CHUNK = 64;
    static constexpr int PAD = 8;
    __device__ static __nv_bfloat16 convert(float x) { return __float2bfloat16_rn(x); }
};

// a staged chunk of a product: A (LOWRANK_TILE rows of the output, CHUNK deep)
// and B (CHUNK deep, LOWRANK_TILE columns), each stored along whichever of its
// two dimensions is contiguous in global memory (row stride LD_WIDE along the
// tile's 64, LD_DEEP along the chunk)
template <typename P> struct LowRankChunk {
    static constexpr int LD_WIDE = LOWRANK_TILE + P::PAD;
    static constexpr int LD_DEEP = P::CHUNK + P::PAD;
    static constexpr int PART = (LOWRANK_TILE * LD_DEEP > P::CHUNK * LD_WIDE ? LOWRANK_TILE * LD_DEEP
                                                                             : P::CHUNK * LD_WIDE);
    static_assert(2 * PART * sizeof(typename P::staged) <= LOWRANK_TILE_SMEM_FLOATS * sizeof(float),
                  "a staged chunk fits in the tile's shared memory");
};
static_assert(LOWRANK_TILE * LOWRANK_TILE_LDC <= LOWRANK_TILE_SMEM_FLOATS, "the finished tile fits");

// the row-tiles of p a residual-norm partials buffer has: (lowrank_residual_tiles(p), q) doubles
static inline int lowrank_residual_tiles(int p) { return (p + LOWRANK_TILE - 1) / LOWRANK_TILE; }

// acc[a][b] += A (wi + 16 a.., the chunk) B (the chunk, wj + 16 b..) for one
// staged chunk: A_COL: A's element (ii, kk) at kk lda + ii (else ii lda + kk);
// B_COL: B's element (kk, jj) at jj ldb + kk (else kk ldb + jj)
template <typename P, bool A_COL, bool B_COL>
__device__ __forceinline__ void
lowrank_chunk_mma(nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, P::K, float> (&acc)[2][2], const typename P::staged* As,
                  int lda, const typename P::staged* Bs, int ldb, int wi, int wj) {
    typedef typename std::conditional<A_COL, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type LayoutA;
    typedef typename std::conditional<B_COL, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type LayoutB;
    #pragma unroll
    for (int ks = 0; ks < P::CHUNK; ks += P::K) {
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, P::K, typename P::element, LayoutA> fa[2];
        #pragma unroll
        for (int a = 0; a < 2; a++) {
            int ii = wi + 16 * a;
            nvcuda::wmma::load_matrix_sync(fa[a], As + (A_COL ? ks * lda + ii : ii * lda + ks), lda);
        }
        #pragma unroll
        for (int b = 0; b < 2; b++) {
            int jj = wj + 16 * b;
            nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, P::K, typename P::element, LayoutB> fb;
            nvcuda::wmma::load_matrix_sync(fb, Bs + (B_COL ? jj * ldb + ks : ks * ldb + jj), ldb);
            #pragma unroll
            for (int a = 0; a < 2; a++) { nvcuda::wmma::mma_sync(acc[a][b], fa[a], fb, acc[a][b]); }
        }
    }
}

// the accumulators into C (shared floats): element (ii, jj) of the tile at
// ii LDC + jj, or with C_COL at jj LDC + ii; then a barrier, the tile complete
template <typename P, bool C_COL>
__device__ __forceinline__ void lowrank_tile_store(float* C, nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, P::K, float>
                                                   (&acc)[2][2], int wi, int wj) {
    #pragma unroll
    for (int a = 0; a < 2; a++) {
        #pragma unroll
        for (int b = 0; b < 2; b++) {
            int ii = wi + 16 * a, jj = wj + 16 * b;
            nvcuda::wmma::store_matrix_sync(C + (C_COL ? jj * LOWRANK_TILE_LDC + ii : ii * LOWRANK_TILE_LDC + jj), acc[a][b],
                                    LOWRANK_TILE_LDC, C_COL ? nvcuda::wmma::mem_col_major : nvcuda::wmma::mem_row_major);
        }
    }
    __syncthreads();
}

// the tile (i0.., j0..) of S X in the left frame into C (shared, LOWRANK_TILE_SMEM_FLOATS):
// left, C[ii * LDC + jj]; right, C[jj * LDC + ii]. every thread of the block calls it.
// R in chunks: S (i0.., k0..) staged as rows ii, X as rows kk (left, X (R, q)
// contiguous along j) or rows jj (right, X (q, R) contiguous along k)
template <typename P>
__device__ void lowrank_tile_product(float* C, const float* S, const float* X, int r, int p, int q, int right,
                                     int i0, int j0) {
    typedef LowRankChunk<P> Ch;
    typename P::staged* As = reinterpret_cast<typename P::staged*>(C);
    typename P::staged* Bs = As + Ch::PART;
    int tid = threadIdx.x, warp = tid / 32;
    int wi = (warp / 2) * 32, wj = (warp % 2) * 32;  // this warp's quarter
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, P::K, float> acc[2][2];
    #pragma unroll
    for (int a = 0; a < 2; a++) {
        #pragma unroll
        for (int b = 0; b < 2; b++) { nvcuda::wmma::fill_fragment(acc[a][b], 0.0f); }
    }
    for (int k0 = 0; k0 < r; k0 += P::CHUNK) {
        // stage S (i0.., k0..) and X (k0.., j0..) at P's precision, zeros outside
        for (int e = tid; e < LOWRANK_TILE * P::CHUNK; e += LOWRANK_TILE_THREADS) {
            int ii = e / P::CHUNK, kk = e % P::CHUNK;
            int i = i0 + ii, k = k0 + kk;
            float s = i < p && k < r ? S[(size_t)i * r + k] : 0.0f;
            As[ii * Ch::LD_DEEP + kk] = P::convert(s);
        }
        for (int e = tid; e < LOWRANK_TILE * P::CHUNK; e += LOWRANK_TILE_THREADS) {
            if (!right) {   // X (R, q): rows k, contiguous along j
                int kk = e / LOWRANK_TILE, jj = e % LOWRANK_TILE;
                int k = k0 + kk, j = j0 + jj;
                float x = k < r && j < q ? X[(size_t)k * q + j] : 0.0f;
                Bs[kk * Ch::LD_WIDE + jj] = P::convert(x);
            } else {        // X (q, R): rows j, contiguous along k
                int jj = e / P::CHUNK, kk = e % P::CHUNK;
                int k = k0 + kk, j = j0 + jj;
                float x = k < r && j < q ? X[(size_t)j * r + k] : 0.0f;
                Bs[jj * Ch::LD_DEEP + kk] = P::convert(x);
            }
        }
        __syncthreads();
        if (!right) {   // block-uniform branch: the warps stay converged
            lowrank_chunk_mma<P, false, false>(acc, As, Ch::LD_DEEP, Bs, Ch::LD_WIDE, wi, wj);
        } else {        // element (k, j) at j LD_DEEP + k: column-major
            lowrank_chunk_mma<P, false, true>(acc, As, Ch::LD_DEEP, Bs, Ch::LD_DEEP, wi, wj);
        }
        __syncthreads();    // the chunk is used up before the next is staged (or C overwrites it)
    }
    if (!right) {
        lowrank_tile_store<P, false>(C, acc, wi, wj);
    } else {
        lowrank_tile_store<P, true>(C, acc, wi, wj);
    }
}
