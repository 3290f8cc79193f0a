// Run-time choice of the CPU instruction set for hot loops.
//
// A loop body written once (a lambda or inline template) is inlined, by `flatten`, into three
// functions compiled for baseline x86-64, AVX2+FMA and AVX-512; cpu_level() picks one at run
// time. GCC then vectorizes the body for each target. Results may differ in the last bits
// between CPU generations, never between runs or thread counts on one machine.
#pragma once

#include <cstdint>

namespace lossext {
namespace cpu_detail {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LOSSEXT_HAVE_X86_CLONES 1
#define LOSSEXT_TARGET_AVX2 "avx2,fma"
#define LOSSEXT_TARGET_AVX512 "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512"

enum class CpuLevel { Base, Avx2, Avx512 };
inline CpuLevel cpu_level() {
  static const CpuLevel level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
      return CpuLevel::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuLevel::Avx2;
    return CpuLevel::Base;
  }();
  return level;
}

template <class F>
__attribute__((flatten)) void isa_base(const F& f, int64_t b, int64_t e) { f(b, e); }
template <class F>
__attribute__((target(LOSSEXT_TARGET_AVX2), flatten)) void isa_avx2(const F& f, int64_t b, int64_t e) { f(b, e); }
template <class F>
__attribute__((target(LOSSEXT_TARGET_AVX512), flatten)) void isa_avx512(const F& f, int64_t b, int64_t e) { f(b, e); }

// Calls f(b, e) compiled for the best instruction set of this CPU.
template <class F>
void with_best_isa(const F& f, int64_t b, int64_t e) {
  switch (cpu_level()) {
    case CpuLevel::Avx512: isa_avx512(f, b, e); break;
    case CpuLevel::Avx2: isa_avx2(f, b, e); break;
    default: isa_base(f, b, e);
  }
}
#else
template <class F>
void with_best_isa(const F& f, int64_t b, int64_t e) { f(b, e); }
#endif

}  // namespace cpu_detail
}  // namespace lossext
