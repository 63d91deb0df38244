# SubTrack++ for LLaMA: CPU reference/trainer, tests, benchmarks.
#   make train_cpu   ->  ./train_llama_subtrack_cpu
#   make test        ->  builds ./test_subtrack and runs it

CC ?= gcc
# no -ffast-math or friends: the trainer checks for NaN/Inf losses, and the
# tests hold fp32 code to fp32 accuracy. -march=native lets the compiler use
# the machine's widest vectors for the gemm micro kernel.
CFLAGS ?= -O3 -march=native
CFLAGS += -std=gnu11 -Wall -Wextra
LDLIBS = -lm

# feature probe: OpenMP
OPENMP := $(shell printf 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo yes)
ifeq ($(OPENMP),yes)
  CFLAGS += -fopenmp
  $(info OpenMP: yes (threads from OMP_NUM_THREADS))
else
  $(info OpenMP: no, building single-threaded (install gcc's libgomp for threads))
endif

# the CPU execution harness for the CUDA sources (dev/cuda_emu/README.md):
# with the CUDA headers present, make test also runs the CUDA code on the CPU
include dev/cuda_emu/emu.mk
# the CUDA trainer (make train) and the GPU half of the tests: on a GPU when
# there is one, else under the harness
include dev/cuda/gpu.mk

.PHONY: all test train_cpu clean

all: train_llama_subtrack_cpu test_subtrack

train_cpu: train_llama_subtrack_cpu

train_llama_subtrack_cpu: train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test_subtrack: test_subtrack.c train_llama_subtrack.c dev/test_check.h
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# every suite's output, then one line "N passed, N failed" over all of them
test: test_subtrack train_llama_subtrack_cpu $(CUDA_EMU_TEST_DEPS) $(GPU_TEST_DEPS) $(GPU_CHECK_DEPS)
	@./dev/run_tests.sh ./test_subtrack \
	  $(if $(CUDA_EMU_TEST),"./dev/cuda_emu/selftest" "CUDA_EMU_THREAD_ORDER=reverse ./dev/cuda_emu/selftest") \
	  $(if $(GPU_TEST),"$(GPU_TEST)" "$(GPU_TEST2)" "$(GPU_TEST3)") \
	  $(if $(GPU_CHECK_TEST),"$(GPU_CHECK_TEST)")

dev/bench_subspace: dev/bench_subspace.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

dev/export_logits: dev/export_logits.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

dev/bench_model: dev/bench_model.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

clean:
	rm -f train_llama_subtrack_cpu test_subtrack dev/bench_model dev/bench_subspace dev/export_logits
	rm -rf dev/cuda_emu/build dev/cuda_emu/selftest
