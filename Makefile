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

.PHONY: all test train_cpu clean

all: train_llama_subtrack_cpu test_subtrack

train_cpu: train_llama_subtrack_cpu

train_llama_subtrack_cpu: train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test_subtrack: test_subtrack.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test: test_subtrack train_llama_subtrack_cpu
	./test_subtrack

dev/bench_subspace: dev/bench_subspace.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

dev/bench_model: dev/bench_model.c train_llama_subtrack.c
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

clean:
	rm -f train_llama_subtrack_cpu test_subtrack dev/bench_model dev/bench_subspace
