// Plain C entry points of the lossext library: what was compiled into it.
#pragma once

#define LOSSEXT_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif
LOSSEXT_API const char* lossext_version(void);
LOSSEXT_API int lossext_with_cuda(void);             // 1 when the CUDA kernels are compiled in
LOSSEXT_API const char* lossext_cuda_arch_list(void);  // e.g. "9.0"; empty without CUDA
#ifdef __cplusplus
}
#endif
