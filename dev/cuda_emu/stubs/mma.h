// stubs/mma.h: stands in for the CUDA header of the same name under cuda_emu.
// nvcuda::wmma is emulated by ../cuda_emu_wmma.h (the 16x16x16 bf16 -> fp32
// fragments; anything else stops the build with a static_assert there).
#include "../cuda_emu_wmma.h"
