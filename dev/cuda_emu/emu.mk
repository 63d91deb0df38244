# dev/cuda_emu/emu.mk: build CUDA sources for the CPU harness (no GPU needed).
# Include it from the top Makefile:
#
#   include dev/cuda_emu/emu.mk
#   test: ... $(CUDA_EMU_TEST_DEPS)
#   	...
#   	$(CUDA_EMU_TEST)
#
#   make dev/cuda_emu/selftest     the harness self-test ($(CUDA_EMU_TEST) runs it)
#   make dev/cuda_emu/nccl_selftest  the NCCL emulation's self-test ($(CUDA_EMU_NCCL_TEST);
#                                  needs nccl.h where the compiler finds it, else skipped)
#   make path/to/X_emu             any path/to/X.cu as an emulated executable
#   make path/to/X_race            the same with the shared-memory race detector
#                                  (no AddressSanitizer: the two cannot be combined)
#
# With nvcc on PATH, X.cu's device code is also compiled for sm_90 (nvcc -cubin,
# a few seconds) for each kernel's register count, and launches that a GPU
# would refuse for lack of registers fail under the harness too.
#
# Needs the CUDA toolkit's headers (cuda_runtime.h, cuda_bf16.h, cublas_v2.h,
# cublasLt.h) but none of its libraries, python3 for the rewrite step and a
# C++17 g++ or clang++. Without the headers the emulated tests are skipped.

# the includer's default goal stays its own (rules and depfiles below would take it)
CUDA_EMU_SAVED_GOAL := $(.DEFAULT_GOAL)

CUDA_EMU_DIR := dev/cuda_emu
CUDA_EMU_BUILD := $(CUDA_EMU_DIR)/build

# feature probe: the CUDA headers, next to nvcc or in /usr/local/cuda
CUDA_EMU_NVCC := $(shell command -v nvcc 2>/dev/null)
CUDA_EMU_CANDIDATES := $(if $(CUDA_EMU_NVCC),$(abspath $(dir $(realpath $(CUDA_EMU_NVCC)))../include)) /usr/local/cuda/include
CUDA_EMU_INCLUDE ?= $(firstword $(foreach d,$(CUDA_EMU_CANDIDATES),$(if $(wildcard $(d)/cuda_runtime.h),$(if $(wildcard $(d)/cublasLt.h),$(d)))))
CUDA_EMU_PYTHON := $(shell command -v python3 2>/dev/null)

CUDA_EMU_CXX ?= $(CXX)
# NCCL's header, where the harness's compile finds it (beside the CUDA headers,
# or in a system directory: cuda_emu_nccl.cpp asks __has_include and compiles
# to nothing without it); the preprocessor only, no header is read
ifeq ($(origin CUDA_EMU_NCCL_HEADER),undefined)
CUDA_EMU_NCCL_HEADER := $(if $(CUDA_EMU_INCLUDE),$(shell printf '\043if __has_include(<nccl.h>)\nyes\n\043endif\n' | \
                        $(CUDA_EMU_CXX) -x c++ -std=c++17 -E -P -I$(CUDA_EMU_INCLUDE) - 2>/dev/null))
endif
# AddressSanitizer catches out-of-bounds and use-after-cudaFree accesses in
# kernels; UBSan stops at the first undefined behaviour instead of going on
CUDA_EMU_SANITIZE ?= -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CUDA_EMU_CXXFLAGS ?= -std=c++17 -O1 -g $(CUDA_EMU_SANITIZE) -I$(CUDA_EMU_DIR)/stubs -I$(CUDA_EMU_INCLUDE)
# the harness itself is compiled once, optimized
CUDA_EMU_LIB_CXXFLAGS ?= -std=c++17 -O2 -g $(CUDA_EMU_SANITIZE) -I$(CUDA_EMU_INCLUDE)
CUDA_EMU_LDLIBS ?= -lm
# -rdynamic: the launch-resource check finds a kernel's mangled name with dladdr
CUDA_EMU_LDFLAGS ?= -rdynamic
# the harness: every dev/cuda_emu/cuda_emu_*.cpp (runtime, cuBLAS, race detector, ...)
CUDA_EMU_SOURCES := $(wildcard $(CUDA_EMU_DIR)/cuda_emu_*.cpp)
CUDA_EMU_OBJS := $(patsubst $(CUDA_EMU_DIR)/%.cpp,$(CUDA_EMU_BUILD)/%.o,$(CUDA_EMU_SOURCES))
CUDA_EMU_DEPS := $(CUDA_EMU_OBJS) $(CUDA_EMU_DIR)/cuda_emu.h $(CUDA_EMU_DIR)/cuda_emu_rewrite.py

# the race-check flavour X_race: g++'s -fsanitize=thread instrumentation calls
# a hook before every load and store, and the harness's race detector
# (cuda_emu_racecheck.cpp) defines those hooks; ThreadSanitizer's own runtime
# is not linked (so the flag is given to the compile, not to the link).
# No AddressSanitizer here: g++ cannot combine the two.
CUDA_EMU_RACE_BUILD := $(CUDA_EMU_BUILD)/race
CUDA_EMU_RACE_CXXFLAGS ?= -std=c++17 -O2 -g -fsanitize=thread --param tsan-instrument-func-entry-exit=0 \
                          -fno-omit-frame-pointer -DCUDA_EMU_RACECHECK -I$(CUDA_EMU_DIR)/stubs -I$(CUDA_EMU_INCLUDE)
CUDA_EMU_RACE_LIB_CXXFLAGS ?= -std=c++17 -O2 -g -DCUDA_EMU_RACECHECK -I$(CUDA_EMU_INCLUDE)
CUDA_EMU_RACE_OBJS := $(patsubst $(CUDA_EMU_DIR)/%.cpp,$(CUDA_EMU_RACE_BUILD)/%.o,$(CUDA_EMU_SOURCES))
CUDA_EMU_RACE_DEPS := $(CUDA_EMU_RACE_OBJS) $(CUDA_EMU_DIR)/cuda_emu.h $(CUDA_EMU_DIR)/cuda_emu_rewrite.py

# the launch-resource check's table: with nvcc, X.cu -> build/regs/X.regs.cpp
# (cuda_emu_regs.py: nvcc -cubin -arch=sm_90 -Xptxas -v, device code only) ->
# .o, linked into X_emu and X_race; remade only when X.cu or what it includes
# changes (nvcc's depfile). The flags are the trainer's (gpu.mk), one arch.
CUDA_EMU_REGS_ARCH ?= sm_90
CUDA_EMU_REGS_NVCCFLAGS ?= -O3 -std=c++17
CUDA_EMU_REGS_BUILD := $(CUDA_EMU_BUILD)/regs
# the table object of the X.cu being linked ($< in a link recipe)
CUDA_EMU_REGS_OBJ = $(if $(CUDA_EMU_NVCC),$(CUDA_EMU_REGS_BUILD)/$(basename $<).regs.o)

.PHONY: cuda_emu_test cuda_emu_clean

ifeq ($(and $(CUDA_EMU_INCLUDE),$(CUDA_EMU_PYTHON)),)

$(info CUDA headers not found$(if $(CUDA_EMU_PYTHON),, (or no python3)): skipping the emulated CUDA tests)
CUDA_EMU_TEST_DEPS :=
CUDA_EMU_TEST :=
CUDA_EMU_RACE_TEST_DEPS :=
CUDA_EMU_RACE_TEST :=
CUDA_EMU_NCCL_TEST_DEPS :=
CUDA_EMU_NCCL_TEST :=
.PHONY: $(CUDA_EMU_DIR)/selftest $(CUDA_EMU_DIR)/nccl_selftest
$(CUDA_EMU_DIR)/selftest $(CUDA_EMU_DIR)/nccl_selftest cuda_emu_test:
	@echo "CUDA headers not found: skipping the emulated CUDA tests"
%_emu: %.cu
	@echo "CUDA headers not found: cannot build $@ for the CPU harness"; exit 1
%_race: %.cu
	@echo "CUDA headers not found: cannot build $@ for the CPU harness"; exit 1

else

$(info CUDA headers: $(CUDA_EMU_INCLUDE) (emulated CUDA tests: yes; race-check builds: yes))
ifeq ($(CUDA_EMU_NVCC),)
$(info nvcc not found: emulated launches are not checked against the kernels' register counts)
else
$(info nvcc found: emulated launches are checked against the kernels' register counts ($(CUDA_EMU_REGS_ARCH), ptxas))
# the self-test checks the register limit only where the build links a table
CUDA_EMU_CXXFLAGS += -DCUDA_EMU_REGISTER_TABLE=1
CUDA_EMU_RACE_CXXFLAGS += -DCUDA_EMU_REGISTER_TABLE=1
endif
CUDA_EMU_TEST_DEPS := $(CUDA_EMU_DIR)/selftest
# run twice: in thread order, then in reverse, which exposes some order dependences
CUDA_EMU_TEST := ./$(CUDA_EMU_DIR)/selftest && CUDA_EMU_THREAD_ORDER=reverse ./$(CUDA_EMU_DIR)/selftest
# the self-test of the race detector (and of the rest, without AddressSanitizer)
CUDA_EMU_RACE_TEST_DEPS := $(CUDA_EMU_DIR)/selftest_race
CUDA_EMU_RACE_TEST := ./$(CUDA_EMU_DIR)/selftest_race
# the NCCL emulation's self-test: ranks as processes, bit-exact collectives,
# planted mismatches, dead and late ranks (about 6 s)
ifeq ($(CUDA_EMU_NCCL_HEADER),)
$(info nccl.h not found: skipping the NCCL emulation's self-test)
CUDA_EMU_NCCL_TEST_DEPS :=
CUDA_EMU_NCCL_TEST :=
.PHONY: $(CUDA_EMU_DIR)/nccl_selftest
$(CUDA_EMU_DIR)/nccl_selftest:
	@echo "nccl.h not found: skipping the NCCL emulation's self-test"
else
$(info nccl.h: yes (the NCCL emulation's self-test runs in make test))
CUDA_EMU_NCCL_TEST_DEPS := $(CUDA_EMU_DIR)/nccl_selftest
CUDA_EMU_NCCL_TEST := ./$(CUDA_EMU_DIR)/nccl_selftest
endif

$(CUDA_EMU_BUILD)/%.o: $(CUDA_EMU_DIR)/%.cpp $(CUDA_EMU_DIR)/cuda_emu.h
	@mkdir -p $(CUDA_EMU_BUILD)
	$(CUDA_EMU_CXX) $(CUDA_EMU_LIB_CXXFLAGS) -c -o $@ $<

$(CUDA_EMU_RACE_BUILD)/%.o: $(CUDA_EMU_DIR)/%.cpp $(CUDA_EMU_DIR)/cuda_emu.h
	@mkdir -p $(CUDA_EMU_RACE_BUILD)
	$(CUDA_EMU_CXX) $(CUDA_EMU_RACE_LIB_CXXFLAGS) -c -o $@ $<

$(CUDA_EMU_REGS_BUILD)/%.regs.cpp: %.cu $(CUDA_EMU_DIR)/cuda_emu_regs.py
	@mkdir -p $(dir $@)
	$(CUDA_EMU_PYTHON) $(CUDA_EMU_DIR)/cuda_emu_regs.py $< $@ --nvcc $(CUDA_EMU_NVCC) --arch $(CUDA_EMU_REGS_ARCH) \
	  --depfile $(basename $@).d -- $(CUDA_EMU_REGS_NVCCFLAGS)
$(CUDA_EMU_REGS_BUILD)/%.regs.o: $(CUDA_EMU_REGS_BUILD)/%.regs.cpp
	$(CUDA_EMU_CXX) -c -o $@ $<
.PRECIOUS: $(CUDA_EMU_REGS_BUILD)/%.regs.cpp $(CUDA_EMU_REGS_BUILD)/%.regs.o $(CUDA_EMU_RACE_BUILD)/%.o
-include $(wildcard $(CUDA_EMU_REGS_BUILD)/*.d $(CUDA_EMU_REGS_BUILD)/*/*.d $(CUDA_EMU_REGS_BUILD)/*/*/*.d)

# X.cu -> (rewrite launches and __shared__) -> build/X.cpp -> X_emu, with
# depfiles so that edits to included headers rebuild the executable
define CUDA_EMU_LINK
	@mkdir -p $(CUDA_EMU_BUILD)
	$(CUDA_EMU_PYTHON) $(CUDA_EMU_DIR)/cuda_emu_rewrite.py $< $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).cpp \
	  --depfile $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).rewrite.d --target $@
	$(CUDA_EMU_CXX) $(CUDA_EMU_CXXFLAGS) -include $(CUDA_EMU_DIR)/cuda_emu.h -MMD -MP \
	  -MF $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).d -MT $@ -o $@ \
	  $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).cpp $(CUDA_EMU_OBJS) $(CUDA_EMU_REGS_OBJ) \
	  $(CUDA_EMU_LDFLAGS) $(CUDA_EMU_LDLIBS)
endef
# the race-check flavour: the same rewrite (beside its own output), an
# instrumented compile, a link without ThreadSanitizer's runtime
define CUDA_EMU_RACE_LINK
	@mkdir -p $(CUDA_EMU_RACE_BUILD)
	$(CUDA_EMU_PYTHON) $(CUDA_EMU_DIR)/cuda_emu_rewrite.py $< $(CUDA_EMU_RACE_BUILD)/$(subst /,__,$(basename $<)).cpp \
	  --depfile $(CUDA_EMU_RACE_BUILD)/$(subst /,__,$(basename $<)).rewrite.d --target $@
	$(CUDA_EMU_CXX) $(CUDA_EMU_RACE_CXXFLAGS) -include $(CUDA_EMU_DIR)/cuda_emu.h -MMD -MP \
	  -MF $(CUDA_EMU_RACE_BUILD)/$(subst /,__,$(basename $<)).d -MT $@ -c \
	  -o $(CUDA_EMU_RACE_BUILD)/$(subst /,__,$(basename $<)).o $(CUDA_EMU_RACE_BUILD)/$(subst /,__,$(basename $<)).cpp
	$(CUDA_EMU_CXX) -o $@ $(CUDA_EMU_RACE_BUILD)/$(subst /,__,$(basename $<)).o $(CUDA_EMU_RACE_OBJS) \
	  $(CUDA_EMU_REGS_OBJ) $(CUDA_EMU_LDFLAGS) $(CUDA_EMU_LDLIBS)
endef
-include $(wildcard $(CUDA_EMU_BUILD)/*.d $(CUDA_EMU_RACE_BUILD)/*.d)

# the table's path in a second expansion, from the stem with its directory
# ($*): a % there would get the target's directory put in front
.SECONDEXPANSION:
%_emu: %.cu $(CUDA_EMU_DEPS) $$(if $$(CUDA_EMU_NVCC),$$(CUDA_EMU_REGS_BUILD)/$$*.regs.o)
	$(CUDA_EMU_LINK)

%_race: %.cu $(CUDA_EMU_RACE_DEPS) $$(if $$(CUDA_EMU_NVCC),$$(CUDA_EMU_REGS_BUILD)/$$*.regs.o)
	$(CUDA_EMU_RACE_LINK)

$(CUDA_EMU_DIR)/selftest: $(CUDA_EMU_DIR)/selftest.cu $(CUDA_EMU_DEPS) \
                          $(if $(CUDA_EMU_NVCC),$(CUDA_EMU_REGS_BUILD)/$(CUDA_EMU_DIR)/selftest.regs.o)
	$(CUDA_EMU_LINK)

ifneq ($(CUDA_EMU_NCCL_HEADER),)
$(CUDA_EMU_DIR)/nccl_selftest: $(CUDA_EMU_DIR)/nccl_selftest.cu $(CUDA_EMU_DEPS) \
                               $(if $(CUDA_EMU_NVCC),$(CUDA_EMU_REGS_BUILD)/$(CUDA_EMU_DIR)/nccl_selftest.regs.o)
	$(CUDA_EMU_LINK)
endif

cuda_emu_test: $(CUDA_EMU_TEST_DEPS) $(CUDA_EMU_RACE_TEST_DEPS) $(CUDA_EMU_NCCL_TEST_DEPS)
	$(CUDA_EMU_TEST) && $(CUDA_EMU_RACE_TEST) $(if $(CUDA_EMU_NCCL_TEST),&& $(CUDA_EMU_NCCL_TEST))

endif

cuda_emu_clean:
	rm -rf $(CUDA_EMU_BUILD) $(CUDA_EMU_DIR)/selftest $(CUDA_EMU_DIR)/selftest_race $(CUDA_EMU_DIR)/nccl_selftest

.DEFAULT_GOAL := $(CUDA_EMU_SAVED_GOAL)
