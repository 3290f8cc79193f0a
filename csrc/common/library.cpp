// The lossext operator namespace, and the library's exported build facts.
// Each loss family adds its schemas with STABLE_TORCH_LIBRARY_FRAGMENT(lossext, ...).
#include <torch/csrc/stable/library.h>

#include "../../include/lossext/build_info.h"

#ifndef LOSSEXT_VERSION
#define LOSSEXT_VERSION "0.0.0"
#endif
#ifndef LOSSEXT_CUDA_ARCH_LIST
#define LOSSEXT_CUDA_ARCH_LIST ""
#endif

STABLE_TORCH_LIBRARY(lossext, m) {}

extern "C" {
LOSSEXT_API const char* lossext_version() { return LOSSEXT_VERSION; }
LOSSEXT_API int lossext_with_cuda() {
#ifdef LOSSEXT_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}
LOSSEXT_API const char* lossext_cuda_arch_list() { return LOSSEXT_CUDA_ARCH_LIST; }
}
