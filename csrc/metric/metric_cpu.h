// CPU helpers of the metric-learning kernels (metric_cpu.cpp, pair_cpu.cpp): row loops and the
// fixed-order (lane_sum) distance sums, so that results are bitwise equal for any thread count
// and every instruction-set variant.
#pragma once

#include <algorithm>
#include <cstdint>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/cpu_isa.h"

namespace lossext {
namespace metric {
namespace cpu {

using torch::stable::Tensor;

constexpr int64_t kWorkPerTask = int64_t(1) << 15;  // elements per parallel task, at least

template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }

inline int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(cols, 1)); }

template <class F>
void parallel_rows(int64_t n, int64_t cols, const F& f) {
  torch::stable::parallel_for(0, n, row_grain(cols), [&](int64_t b, int64_t e) { cpu_detail::with_cpu_isa(f, b, e); });
}

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

}  // namespace cpu
}  // namespace metric
}  // namespace lossext
