// CPU helpers of the metric-learning kernels (metric_cpu.cpp, pair_cpu.cpp), beside the shared
// ones of common/cpu_helpers.h: the fixed-order (lane_sum) distance sums, so that results are bitwise equal for any thread count
// and every instruction-set variant.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/cpu_helpers.h"
#include "../common/cpu_isa.h"

namespace lossext {
namespace metric {
namespace cpu {

using torch::stable::Tensor;

using lossext::cpu_helpers::kWorkPerTask;
using lossext::cpu_helpers::parallel_rows;
using lossext::cpu_helpers::ptr;
using lossext::cpu_helpers::row_grain;

// sum_d (a_d - b_d)^2 in A, in lane_sum's fixed order.
template <class A, class scalar_t>
__attribute__((always_inline)) inline A sq_dist(const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t D) {
  return cpu_detail::lane_sum<A>(0, D, [&](int64_t d) {
    const A x = static_cast<A>(a[d]) - static_cast<A>(b[d]);
    return x * x;
  });
}

template <class A, class scalar_t>
__attribute__((always_inline)) inline A sq_norm(const scalar_t* __restrict a, int64_t D) {
  return cpu_detail::lane_sum<A>(0, D, [&](int64_t d) {
    const A x = static_cast<A>(a[d]);
    return x * x;
  });
}

// sum_d a_d b_d in A, in lane_sum's fixed order.
template <class A, class scalar_t>
__attribute__((always_inline)) inline A dot(const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t D) {
  return cpu_detail::lane_sum<A>(0, D, [&](int64_t d) { return static_cast<A>(a[d]) * static_cast<A>(b[d]); });
}

// The screening bound of a GEMM tile: |s~ - s| <= rel (|a|^2 + |b|^2) + abs for the tile's
// s~ = |a|^2 + |b|^2 - 2 a . b (or its a . b) and the exact s, both sums of D products in A.
// rel covers IEEE products (gamma_D = D eps for each sum, with the norms' and the additions'),
// and for float32 also a GEMM that torch runs with bfloat16 or TF32 products
// (torch.set_float32_matmul_precision('medium' or 'high') on CPUs where oneDNN does so: each
// product's relative error up to 2^-8, so |s~ - s| up to 2^-8 (|a|^2 + |b|^2); 2^-7 is taken);
// abs covers the roundings of the subnormal range, where a relative bound fails.
template <class A>
struct ScreenBound {
  A rel, abs;
};

template <class A>
inline ScreenBound<A> screen_bound(int64_t D) {
  const double terms = 4.5 * double(D) + 16.0;
  const double reduced = std::is_same_v<A, float> ? 1.0 / 128.0 : 0.0;
  return {A(terms * double(std::numeric_limits<A>::epsilon()) + reduced),
          A(terms * double(std::numeric_limits<A>::denorm_min()))};
}

}  // namespace cpu
}  // namespace metric
}  // namespace lossext
