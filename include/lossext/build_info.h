// Plain C entry points of the lossext library: what was compiled into it.
#pragma once

#define LOSSEXT_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif
LOSSEXT_API const char* lossext_version(void);
LOSSEXT_API int lossext_with_cuda(void);             // 1 when the CUDA kernels are compiled in
LOSSEXT_API const char* lossext_cuda_arch_list(void);  // e.g. "9.0"; empty without CUDA

// The CPU loops' instruction set (the x86-64 variants compiled in; other CPUs: baseline only).
// The best one this CPU supports runs, unless the environment variable
// LOSSEXT_CPU_ISA=baseline|avx2|avx512 (read at the first kernel call) or lossext_set_cpu_isa()
// picks a lower one. All variants give bitwise-equal results.
#define LOSSEXT_CPU_ISA_BASELINE 0
#define LOSSEXT_CPU_ISA_AVX2 1
#define LOSSEXT_CPU_ISA_AVX512 2
LOSSEXT_API int lossext_cpu_isa(void);                  // the level that runs now
LOSSEXT_API int lossext_cpu_isa_best(void);             // the best level this CPU supports
LOSSEXT_API int lossext_set_cpu_isa(int level);         // 0, or -1 (level above the best: unchanged)
LOSSEXT_API const char* lossext_cpu_isa_name(int level);  // "baseline", "avx2", "avx512"; "" if unknown
// NULL, or why LOSSEXT_CPU_ISA was not honoured (unknown name, or above this CPU's best level)
LOSSEXT_API const char* lossext_cpu_isa_env_error(void);
#ifdef __cplusplus
}
#endif
