# dev/cuda/gpu.mk: the CUDA trainer and the GPU half of the tests.
# Include it from the top Makefile after dev/cuda_emu/emu.mk:
#
#   include dev/cuda_emu/emu.mk
#   include dev/cuda/gpu.mk
#   test: test_subtrack train_llama_subtrack_cpu $(CUDA_EMU_TEST_DEPS) $(GPU_TEST_DEPS)
#   	@./dev/run_tests.sh ./test_subtrack ... $(if $(GPU_TEST),"$(GPU_TEST)" "$(GPU_TEST2)" "$(GPU_TEST3)")
#
# GPU_TEST, GPU_TEST2 and GPU_TEST3 are one suite each (for dev/run_tests.sh), empty when neither
# a GPU nor the CUDA headers are there. GPU_RACE_TEST .. GPU_RACE_TEST4 are the
# race-check builds of the emulated suites (dev/cuda_emu's shared-memory race
# detector), with GPU_RACE_TEST_DEPS, whenever the CUDA headers are there. GPU_CHECK_TEST is the dry run of the GPU
# acceptance run (dev/gpu_check.sh --dry-run), with GPU_CHECK_DEPS, when the
# CUDA headers are there; GPU_PERF_TEST, with the same deps, runs every launcher
# that dev/bench_gpu --per_kernel times, under the harness.
#
#   make train           ./train_llama_subtrack, built by nvcc for sm_80, sm_90
#                        (and sm_100 when this nvcc knows it), plus PTX of the
#                        newest of them so later GPUs can JIT it
#   make test_gpu        the GPU tests: on a GPU when nvidia-smi sees one, else
#                        under the CPU harness (dev/cuda_emu)
#   make GPU_ARCHS=90 train   only sm_90 (a faster build; dev/gpu_check.sh does this)

NVCC ?= nvcc
GPU_NVCC := $(shell command -v $(NVCC) 2>/dev/null)
# feature probes: nvcc, the architectures it can build, and a GPU to run on
GPU_ARCHS := $(if $(GPU_NVCC),80 90 $(if $(shell $(NVCC) --list-gpu-arch 2>/dev/null | grep -x compute_100),100))
GPU_PTX_ARCH := $(lastword $(GPU_ARCHS))
GPU_PRESENT := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo yes)
# -Wall -Wextra on the host side (the C reference is compiled in, as C++);
# OpenMP for the CPU code paths the trainer shares (loader, checkpoints)
NVCCFLAGS ?= -O3 -std=c++17 $(foreach a,$(GPU_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
             -gencode arch=compute_$(GPU_PTX_ARCH),code=compute_$(GPU_PTX_ARCH) \
             -Xcompiler -Wall,-Wextra,-fopenmp
# NCCL, for data parallel, where its header is (emu.mk probes it): without it
# the trainer builds for one process and says so to a launcher
GPU_NCCL := $(CUDA_EMU_NCCL_HEADER)
NVCC_LDLIBS := -lcublas -lcublasLt -lcusolver $(if $(GPU_NCCL),-lnccl) -lgomp -lm

.PHONY: train test_gpu

ifeq ($(GPU_NVCC),)

$(info nvcc not found: the CUDA trainer is not built (make train_cpu builds the CPU one))
train:
	@echo "nvcc not found: install the CUDA toolkit to build ./train_llama_subtrack, or use make train_cpu"; exit 1

else

$(info nvcc found: building GPU targets for $(GPU_ARCHS:%=sm_%) (GPU present: $(if $(GPU_PRESENT),yes,no); NCCL: $(if $(GPU_NCCL),yes,no)))

train: train_llama_subtrack

train_llama_subtrack: train_llama_subtrack.cu train_llama_subtrack.c flash_attention.cuh lowrank_tiles.cuh
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(NVCC_LDLIBS)

dev/bench_gpu: dev/bench_gpu.cu dev/perf_model.h train_llama_subtrack.cu train_llama_subtrack.c flash_attention.cuh lowrank_tiles.cuh
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(NVCC_LDLIBS)

dev/test_gpu/%: dev/test_gpu/%.cu train_llama_subtrack.cu train_llama_subtrack.c flash_attention.cuh lowrank_tiles.cuh
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(NVCC_LDLIBS)

endif

# the GPU test: the real thing when there is a GPU, else the emulated build
# (dev/cuda_emu/emu.mk's %_emu rule; its depfiles track the included files)
# two suites: the model and trainer (test_subtrack_gpu), the optimizers (test_gpu_optim)
# a third, GPU_TEST3: the training loop's checks (test_subtrack --trainer) on the
# CUDA trainer binary: bit-exact resume, log headers, CPU checkpoints, no GPU
ifeq ($(GPU_PRESENT),yes)
GPU_TEST_DEPS := dev/test_gpu/test_subtrack_gpu dev/test_gpu/test_gpu_optim train_llama_subtrack test_subtrack
GPU_TEST := ./dev/test_gpu/test_subtrack_gpu
GPU_TEST2 := ./dev/test_gpu/test_gpu_optim
GPU_TEST3 := ./test_subtrack --trainer ./train_llama_subtrack
else ifneq ($(CUDA_EMU_TEST),)
GPU_TEST_DEPS := dev/test_gpu/test_subtrack_gpu_emu dev/test_gpu/test_gpu_optim_emu train_llama_subtrack_emu test_subtrack
GPU_TEST := ./dev/test_gpu/test_subtrack_gpu_emu
GPU_TEST2 := ./dev/test_gpu/test_gpu_optim_emu
GPU_TEST3 := ./test_subtrack --trainer ./train_llama_subtrack_emu
else
GPU_TEST_DEPS :=
GPU_TEST :=
GPU_TEST2 :=
GPU_TEST3 :=
endif

# the GPU acceptance run's dry run: every part of dev/gpu_check.sh at tiny
# sizes under the harness, so that the script cannot rot before a GPU runs it
ifneq ($(CUDA_EMU_TEST),)
GPU_CHECK_DEPS := train_llama_subtrack_emu dev/test_gpu/test_subtrack_gpu_emu dev/test_gpu/test_gpu_optim_emu \
                  dev/test_gpu/test_sanitize_emu dev/bench_gpu_emu train_llama_subtrack_cpu
GPU_CHECK_TEST := ./dev/gpu_check.sh --dry-run
# the flash-attention ladder (dev/cuda/flash_attention.cu: fp32 and WMMA bf16
# kernels against the CPU reference, bit-identical reruns), about 4 s
GPU_LADDER_DEPS := dev/cuda/flash_attention_emu $(if $(CUDA_EMU_RACE_TEST),dev/cuda/flash_attention_race)
GPU_LADDER_TEST := ./dev/cuda/flash_attention_emu
# and its race-check build: the WMMA kernels' shared-memory tiles checked for races
GPU_LADDER_TEST2 := $(if $(CUDA_EMU_RACE_TEST),./dev/cuda/flash_attention_race)
# the low-rank tile ladder (dev/cuda/lowrank_fused.cu: the projection, the residual norms and the update, fp32,
# TF32 and bf16 WMMA, against the CPU's double within each precision's bound, both orientations, reruns
# bit-identical), and its race check (both WMMA versions)
GPU_LADDER_DEPS += dev/cuda/lowrank_fused_emu $(if $(CUDA_EMU_RACE_TEST),dev/cuda/lowrank_fused_race)
GPU_LADDER_TEST3 := ./dev/cuda/lowrank_fused_emu 1 && ./dev/cuda/lowrank_fused_emu 2 && ./dev/cuda/lowrank_fused_emu 3
GPU_LADDER_TEST4 := $(if $(CUDA_EMU_RACE_TEST),./dev/cuda/lowrank_fused_race 2 && ./dev/cuda/lowrank_fused_race 3)
# and every launcher of dev/bench_gpu --per_kernel once, at tiny sizes (about a second)
GPU_PERF_TEST := ./dev/bench_gpu_emu --per_kernel 1 --preset kjv_test --B 2 --T 16 --iters 1 --warmup 0
else
GPU_CHECK_DEPS :=
GPU_CHECK_TEST :=
GPU_PERF_TEST :=
GPU_LADDER_DEPS :=
GPU_LADDER_TEST :=
GPU_LADDER_TEST2 :=
GPU_LADDER_TEST3 :=
GPU_LADDER_TEST4 :=
endif

# the race-check builds (X_race: every kernel's shared-memory accesses checked
# for races, no AddressSanitizer) of the emulated suites, also on a GPU machine
ifneq ($(CUDA_EMU_RACE_TEST),)
GPU_RACE_TEST_DEPS := dev/test_gpu/test_subtrack_gpu_race dev/test_gpu/test_gpu_optim_race train_llama_subtrack_race \
                      dev/test_gpu/test_sanitize_race test_subtrack train_llama_subtrack_cpu
GPU_RACE_TEST := ./dev/test_gpu/test_subtrack_gpu_race
GPU_RACE_TEST2 := ./dev/test_gpu/test_gpu_optim_race
GPU_RACE_TEST3 := ./test_subtrack --trainer ./train_llama_subtrack_race
GPU_RACE_TEST4 := ./dev/test_gpu/test_sanitize_race
else
GPU_RACE_TEST_DEPS :=
GPU_RACE_TEST :=
GPU_RACE_TEST2 :=
GPU_RACE_TEST3 :=
GPU_RACE_TEST4 :=
endif

test_gpu: $(GPU_TEST_DEPS)
	$(if $(GPU_TEST),$(GPU_TEST) && $(GPU_TEST2) && $(GPU_TEST3),@echo "no GPU and no CUDA headers: skipping the GPU tests")

.PHONY: gpu_clean
gpu_clean:
	rm -f dev/cuda/flash_attention_emu dev/cuda/flash_attention_race dev/cuda/lowrank_fused_emu dev/cuda/lowrank_fused_race train_llama_subtrack dev/test_gpu/test_subtrack_gpu dev/test_gpu/test_subtrack_gpu_emu dev/test_gpu/test_gpu_optim dev/test_gpu/test_gpu_optim_emu dev/bench_gpu dev/bench_gpu_emu \
	  dev/test_gpu/test_sanitize dev/test_gpu/test_sanitize_emu train_llama_subtrack_emu \
	  dev/test_gpu/test_subtrack_gpu_race dev/test_gpu/test_gpu_optim_race dev/test_gpu/test_sanitize_race \
	  train_llama_subtrack_race dev/bench_gpu_race
