# dev/cuda_emu/emu.mk: build CUDA sources for the CPU harness (no GPU needed).
# Include it from the top Makefile:
#
#   include dev/cuda_emu/emu.mk
#   test: ... $(CUDA_EMU_TEST_DEPS)
#   	...
#   	$(CUDA_EMU_TEST)
#
#   make dev/cuda_emu/selftest     the harness self-test ($(CUDA_EMU_TEST) runs it)
#   make path/to/X_emu             any path/to/X.cu as an emulated executable
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
# AddressSanitizer catches out-of-bounds and use-after-cudaFree accesses in
# kernels; UBSan stops at the first undefined behaviour instead of going on
CUDA_EMU_SANITIZE ?= -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CUDA_EMU_CXXFLAGS ?= -std=c++17 -O1 -g $(CUDA_EMU_SANITIZE) -I$(CUDA_EMU_DIR)/stubs -I$(CUDA_EMU_INCLUDE)
# the harness itself is compiled once, optimized
CUDA_EMU_LIB_CXXFLAGS ?= -std=c++17 -O2 -g $(CUDA_EMU_SANITIZE) -I$(CUDA_EMU_INCLUDE)
CUDA_EMU_LDLIBS ?= -lm
# the harness: every dev/cuda_emu/cuda_emu_*.cpp (runtime, cuBLAS, ...)
CUDA_EMU_SOURCES := $(wildcard $(CUDA_EMU_DIR)/cuda_emu_*.cpp)
CUDA_EMU_OBJS := $(patsubst $(CUDA_EMU_DIR)/%.cpp,$(CUDA_EMU_BUILD)/%.o,$(CUDA_EMU_SOURCES))
CUDA_EMU_DEPS := $(CUDA_EMU_OBJS) $(CUDA_EMU_DIR)/cuda_emu.h $(CUDA_EMU_DIR)/cuda_emu_rewrite.py

.PHONY: cuda_emu_test cuda_emu_clean

ifeq ($(and $(CUDA_EMU_INCLUDE),$(CUDA_EMU_PYTHON)),)

$(info CUDA headers not found$(if $(CUDA_EMU_PYTHON),, (or no python3)): skipping the emulated CUDA tests)
CUDA_EMU_TEST_DEPS :=
CUDA_EMU_TEST :=
.PHONY: $(CUDA_EMU_DIR)/selftest
$(CUDA_EMU_DIR)/selftest cuda_emu_test:
	@echo "CUDA headers not found: skipping the emulated CUDA tests"
%_emu: %.cu
	@echo "CUDA headers not found: cannot build $@ for the CPU harness"; exit 1

else

$(info CUDA headers: $(CUDA_EMU_INCLUDE) (emulated CUDA tests: yes))
CUDA_EMU_TEST_DEPS := $(CUDA_EMU_DIR)/selftest
# run twice: in thread order, then in reverse, which exposes some order dependences
CUDA_EMU_TEST := ./$(CUDA_EMU_DIR)/selftest && CUDA_EMU_THREAD_ORDER=reverse ./$(CUDA_EMU_DIR)/selftest

$(CUDA_EMU_BUILD)/%.o: $(CUDA_EMU_DIR)/%.cpp $(CUDA_EMU_DIR)/cuda_emu.h
	@mkdir -p $(CUDA_EMU_BUILD)
	$(CUDA_EMU_CXX) $(CUDA_EMU_LIB_CXXFLAGS) -c -o $@ $<

# X.cu -> (rewrite launches and __shared__) -> build/X.cpp -> X_emu, with
# depfiles so that edits to included headers rebuild the executable
define CUDA_EMU_LINK
	@mkdir -p $(CUDA_EMU_BUILD)
	$(CUDA_EMU_PYTHON) $(CUDA_EMU_DIR)/cuda_emu_rewrite.py $< $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).cpp \
	  --depfile $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).rewrite.d --target $@
	$(CUDA_EMU_CXX) $(CUDA_EMU_CXXFLAGS) -include $(CUDA_EMU_DIR)/cuda_emu.h -MMD -MP \
	  -MF $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).d -MT $@ -o $@ \
	  $(CUDA_EMU_BUILD)/$(subst /,__,$(basename $<)).cpp $(CUDA_EMU_OBJS) $(CUDA_EMU_LDLIBS)
endef
-include $(wildcard $(CUDA_EMU_BUILD)/*.d)

%_emu: %.cu $(CUDA_EMU_DEPS)
	$(CUDA_EMU_LINK)

$(CUDA_EMU_DIR)/selftest: $(CUDA_EMU_DIR)/selftest.cu $(CUDA_EMU_DEPS)
	$(CUDA_EMU_LINK)

cuda_emu_test: $(CUDA_EMU_TEST_DEPS)
	$(CUDA_EMU_TEST)

endif

cuda_emu_clean:
	rm -rf $(CUDA_EMU_BUILD) $(CUDA_EMU_DIR)/selftest

.DEFAULT_GOAL := $(CUDA_EMU_SAVED_GOAL)
