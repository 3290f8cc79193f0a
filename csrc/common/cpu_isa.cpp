// The active CPU instruction-set level (cpu_isa.h) and its C entry points (build_info.h).
#include "cpu_isa.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace lossext {
namespace cpu_detail {

std::atomic<int> g_cpu_level{-1};

namespace {

int best_level() {
#if defined(LOSSEXT_HAVE_X86_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return LOSSEXT_CPU_ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return LOSSEXT_CPU_ISA_AVX2;
#endif
  return LOSSEXT_CPU_ISA_BASELINE;
}

int best() {
  static const int b = best_level();
  return b;
}

int parse(const char* s) {
  if (std::strcmp(s, "baseline") == 0) return LOSSEXT_CPU_ISA_BASELINE;
  if (std::strcmp(s, "avx2") == 0) return LOSSEXT_CPU_ISA_AVX2;
  if (std::strcmp(s, "avx512") == 0) return LOSSEXT_CPU_ISA_AVX512;
  return -1;
}

// LOSSEXT_CPU_ISA, checked once: unset, empty or "auto" is the best level; a name this CPU
// cannot run (or an unknown one) keeps the best level and is reported by
// lossext_cpu_isa_env_error() (Python's import raises it; C++ programs may ask).
char g_env_error[256] = {0};

int from_env() {
  const char* s = std::getenv("LOSSEXT_CPU_ISA");
  if (s == nullptr || *s == '\0' || std::strcmp(s, "auto") == 0) return best();
  const int v = parse(s);
  if (v < 0) {
    std::snprintf(g_env_error, sizeof g_env_error,
                  "LOSSEXT_CPU_ISA=%.64s is not one of auto, baseline, avx2, avx512", s);
    return best();
  }
  if (v > best()) {
    std::snprintf(g_env_error, sizeof g_env_error,
                  "LOSSEXT_CPU_ISA=%s: this CPU supports at most %s", s, lossext_cpu_isa_name(best()));
    return best();
  }
  return v;
}

}  // namespace

int init_cpu_level() {
  static const int env = from_env();  // thread-safe, once
  int expected = -1;
  g_cpu_level.compare_exchange_strong(expected, env, std::memory_order_relaxed);
  return g_cpu_level.load(std::memory_order_relaxed);
}

}  // namespace cpu_detail
}  // namespace lossext

extern "C" {
LOSSEXT_API int lossext_cpu_isa(void) { return static_cast<int>(lossext::cpu_detail::cpu_level()); }
LOSSEXT_API int lossext_cpu_isa_best(void) { return lossext::cpu_detail::best(); }
LOSSEXT_API int lossext_set_cpu_isa(int level) {
  using namespace lossext::cpu_detail;
  if (level < LOSSEXT_CPU_ISA_BASELINE || level > best()) return -1;
  init_cpu_level();  // the environment is read (and its error kept) even when set first
  g_cpu_level.store(level, std::memory_order_relaxed);
  return 0;
}
LOSSEXT_API const char* lossext_cpu_isa_name(int level) {
  switch (level) {
    case LOSSEXT_CPU_ISA_BASELINE: return "baseline";
    case LOSSEXT_CPU_ISA_AVX2: return "avx2";
    case LOSSEXT_CPU_ISA_AVX512: return "avx512";
    default: return "";
  }
}
LOSSEXT_API const char* lossext_cpu_isa_env_error(void) {
  lossext::cpu_detail::init_cpu_level();
  return lossext::cpu_detail::g_env_error[0] ? lossext::cpu_detail::g_env_error : nullptr;
}
}
