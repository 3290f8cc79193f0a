// Run-time choice of the CPU instruction set for hot loops.
//
// A loop body written once (a lambda or inline template) is inlined, by `flatten`, into three
// functions compiled for baseline x86-64, AVX2+FMA and AVX-512; cpu_level() says which one runs.
// GCC then vectorizes the body for each target. The whole library is compiled with
// -ffp-contract=off (setup.py), so the variants agree bitwise: FMA contraction is the one way
// the targets could round differently (no reassociation: no -ffast-math), and the sums' order is
// fixed by the chunking, never by the vector width (tests/test_cpu_isa.py checks it).
//
// The level is the best this CPU supports, unless LOSSEXT_CPU_ISA=baseline|avx2|avx512 (read
// once, at the first kernel call) or lossext_set_cpu_isa() forces a lower one: the baseline and
// AVX2 variants are what users of older CPUs get, and the tests run them on newer ones too.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "../../include/lossext/build_info.h"

namespace lossext {
namespace cpu_detail {

enum class CpuLevel : int { Base = LOSSEXT_CPU_ISA_BASELINE, Avx2 = LOSSEXT_CPU_ISA_AVX2, Avx512 = LOSSEXT_CPU_ISA_AVX512 };

// The active level: set on first use from the environment (cpu_isa.cpp), then by
// lossext_set_cpu_isa(). A relaxed atomic: a kernel reads it once per call.
extern std::atomic<int> g_cpu_level;
int init_cpu_level();

inline CpuLevel cpu_level() {
  int v = g_cpu_level.load(std::memory_order_relaxed);
  if (v < 0) v = init_cpu_level();
  return static_cast<CpuLevel>(v);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LOSSEXT_HAVE_X86_CLONES 1
#define LOSSEXT_TARGET_AVX2 "avx2,fma"
#define LOSSEXT_TARGET_AVX512 "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512"

template <class F>
__attribute__((flatten)) void isa_base(const F& f, int64_t b, int64_t e) { f(b, e); }
template <class F>
__attribute__((target(LOSSEXT_TARGET_AVX2), flatten)) void isa_avx2(const F& f, int64_t b, int64_t e) { f(b, e); }
template <class F>
__attribute__((target(LOSSEXT_TARGET_AVX512), flatten)) void isa_avx512(const F& f, int64_t b, int64_t e) { f(b, e); }

// Calls f(b, e) compiled for the active instruction set.
template <class F>
void with_cpu_isa(const F& f, int64_t b, int64_t e) {
  switch (cpu_level()) {
    case CpuLevel::Avx512: isa_avx512(f, b, e); break;
    case CpuLevel::Avx2: isa_avx2(f, b, e); break;
    default: isa_base(f, b, e);
  }
}
#else
template <class F>
void with_cpu_isa(const F& f, int64_t b, int64_t e) { f(b, e); }
#endif

// Sums of series over k in [b, e), one per callable terms(k) (which may also write element k's
// outputs), in an order that no instruction set changes: lane l of kLanes partial sums takes the
// terms k = b + l, b + l + kLanes, ...; the lanes are then added by a fixed pairwise tree. Per
// tile of kTile elements, an `omp simd` loop writes the terms to a stack buffer (vectorized like
// any element-wise loop), and a branch-free loop adds the buffer into the lanes, which SSE2
// (4 floats), AVX2 (8) and AVX-512 (16) all vectorize into the same additions: the variants
// agree bitwise, which an `omp simd reduction` (whose lane count is the vector width) would not.
// A short tile's padding adds +0, which changes no lane (a lane starts at +0 and, rounding to
// nearest, never becomes -0). The terms must be returned as scalars: GCC does not vectorize the
// loop when they come back in a std::array, nor when a term reads its parameters through a
// reference the loop's stores could alias (copy them to locals first, as pointwise_cpu.h does).
// Cost, measured with `python -m lossext` (AVX2): forward-only sums 20-30% slower than the
// vector-width reduction (Wing forward at 2^20: 0.9 -> 1.1-1.2 ms; 6% in a standalone loop).
constexpr int kLanes = 16;
constexpr int kTile = 512;  // a multiple of kLanes; kTile * sizeof(A) bytes of stack per series

template <class A, class... Terms>
__attribute__((always_inline)) inline std::array<A, sizeof...(Terms)> lane_sums(int64_t b, int64_t e, const Terms&... terms) {
  constexpr int N = sizeof...(Terms);
  A acc[N][kLanes];
  A buf[N][kTile];
  for (int i = 0; i < N; ++i)
    for (int l = 0; l < kLanes; ++l) acc[i][l] = A(0);
  for (int64_t t = b; t < e; t += kTile) {
    const int m = static_cast<int>(std::min<int64_t>(kTile, e - t));
#pragma omp simd
    for (int j = 0; j < m; ++j) {
      int i = 0;
      ((buf[i++][j] = terms(t + j)), ...);
    }
    const int m_pad = (m + kLanes - 1) / kLanes * kLanes;
    for (int i = 0; i < N; ++i) {
      for (int j = m; j < m_pad; ++j) buf[i][j] = A(0);
      for (int j = 0; j < m_pad; j += kLanes)
        for (int l = 0; l < kLanes; ++l) acc[i][l] += buf[i][j + l];
    }
  }
  std::array<A, N> out;
  for (int i = 0; i < N; ++i) {
    for (int w = kLanes / 2; w > 0; w /= 2)
      for (int l = 0; l < w; ++l) acc[i][l] += acc[i][l + w];
    out[i] = acc[i][0];
  }
  return out;
}

// The one-series lane_sums.
template <class A, class Terms>
__attribute__((always_inline)) inline A lane_sum(int64_t b, int64_t e, const Terms& terms) {
  return lane_sums<A>(b, e, terms)[0];
}

}  // namespace cpu_detail
}  // namespace lossext
