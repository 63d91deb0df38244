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

# the sanitized suite: test_subtrack again, whole, with the trainer binary it
# runs, both built with AddressSanitizer (and its leak checker) and UBSan, plus
# float-cast-overflow, which gcc leaves out of "undefined" (clang has it in);
# any report fails the run. gcc ships libasan and libubsan, clang works too
# (make CC=clang). the probe builds and runs a program, since some kernels
# break ASan's memory layout; without sanitizers the suite is skipped, loudly.
# OMP_WAIT_POLICY=passive: the instrumented threads, spinning at barriers on
# a loaded machine, made one check take minutes instead of seconds
SANITIZERS = address,undefined,float-cast-overflow
SAN_CFLAGS = $(CFLAGS) -g -fno-omit-frame-pointer -fsanitize=$(SANITIZERS) -fno-sanitize-recover=all \
             -DSANITIZED_BUILD='"$(SANITIZERS)"'
SANITIZE_OK := $(shell t=$$(mktemp) && printf 'int main(void){return 0;}' | \
                 $(CC) -fsanitize=$(SANITIZERS) -x c - -o $$t 2>/dev/null && $$t && echo yes; rm -f $$t)
ifeq ($(SANITIZE_OK),yes)
  SAN_TEST := OMP_WAIT_POLICY=passive ./test_subtrack_san --trainer_bin ./train_llama_subtrack_cpu_san
  SAN_TEST_DEPS := test_subtrack_san train_llama_subtrack_cpu_san
  $(info sanitizers: yes ($(SANITIZERS)), make test runs the sanitized suite)
else ifneq ($(REQUIRE_SANITIZERS),)
  $(error sanitizers: $(CC) cannot build and run -fsanitize=$(SANITIZERS), and REQUIRE_SANITIZERS is set (CI sets it); install gcc's libasan and libubsan)
else
  $(info sanitizers: NO, $(CC) cannot build and run -fsanitize=$(SANITIZERS): make test skips the sanitized suite)
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
# the race-check suites: the emulated suites again, built with the harness's
# shared-memory race detector instead of AddressSanitizer (dev/cuda_emu/README.md)
test: test_subtrack train_llama_subtrack_cpu dev/perf_model $(SAN_TEST_DEPS) $(CUDA_EMU_TEST_DEPS) $(CUDA_EMU_NCCL_TEST_DEPS) $(GPU_TEST_DEPS) \
      $(GPU_CHECK_DEPS) $(CUDA_EMU_RACE_TEST_DEPS) $(GPU_RACE_TEST_DEPS) $(GPU_LADDER_DEPS)
	@./dev/run_tests.sh ./test_subtrack "./dev/perf_model --check" \
	  $(if $(SAN_TEST),"$(SAN_TEST)") \
	  $(if $(CUDA_EMU_TEST),"./dev/cuda_emu/selftest" "CUDA_EMU_THREAD_ORDER=reverse ./dev/cuda_emu/selftest") \
	  $(if $(CUDA_EMU_NCCL_TEST),"$(CUDA_EMU_NCCL_TEST)") \
	  $(if $(GPU_TEST),"$(GPU_TEST)" "$(GPU_TEST2)" "$(GPU_TEST3)") \
	  $(if $(GPU_CHECK_TEST),"$(GPU_CHECK_TEST)") \
	  $(if $(GPU_PERF_TEST),"$(GPU_PERF_TEST)") \
	  $(if $(GPU_LADDER_TEST),"$(GPU_LADDER_TEST)") \
	  $(if $(GPU_LADDER_TEST2),"$(GPU_LADDER_TEST2)") \
	  $(if $(GPU_LADDER_TEST3),"$(GPU_LADDER_TEST3)") \
	  $(if $(GPU_LADDER_TEST4),"$(GPU_LADDER_TEST4)") \
	  $(if $(CUDA_EMU_RACE_TEST),"$(CUDA_EMU_RACE_TEST)") \
	  $(if $(GPU_RACE_TEST),"$(GPU_RACE_TEST)" "$(GPU_RACE_TEST2)" "$(GPU_RACE_TEST3)" "$(GPU_RACE_TEST4)")

train_llama_subtrack_cpu_san: train_llama_subtrack.c
	$(CC) $(SAN_CFLAGS) -o $@ $< $(LDLIBS)

test_subtrack_san: test_subtrack.c train_llama_subtrack.c dev/test_check.h
	$(CC) $(SAN_CFLAGS) -o $@ $< $(LDLIBS)

dev/bench_subspace: dev/bench_subspace.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

dev/export_logits: dev/export_logits.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

dev/bench_model: dev/bench_model.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# the performance model (dev/perf_model.h) with the trainer's preset table: no
# CUDA, so make test checks it on every machine (dev/bench_gpu --model is the same model)
dev/perf_model: dev/perf_model.c dev/perf_model.h train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

clean:
	rm -f train_llama_subtrack_cpu test_subtrack train_llama_subtrack_cpu_san test_subtrack_san dev/bench_model dev/bench_subspace dev/export_logits dev/perf_model
	rm -rf dev/cuda_emu/build dev/cuda_emu/selftest dev/cuda_emu/selftest_race dev/cuda_emu/nccl_selftest
