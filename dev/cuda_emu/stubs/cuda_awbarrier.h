// stubs/cuda_awbarrier.h: stands in for the CUDA header of the same name under cuda_emu.
#error "cuda_emu: <cuda_awbarrier.h> is not supported by the CPU harness; use the warp intrinsics (__shfl_xor_sync, ...) and __syncthreads it provides (see dev/cuda_emu/README.md)"
