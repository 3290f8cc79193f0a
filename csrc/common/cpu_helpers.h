// CPU helpers shared by the families' kernels (lossext::cpu_helpers): typed data pointers and
// parallel row loops whose tasks run under the selected instruction-set variant (cpu_isa.h).
#pragma once

#include <algorithm>
#include <cstdint>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "cpu_isa.h"

namespace lossext {
namespace cpu_helpers {

constexpr int64_t kWorkPerTask = int64_t(1) << 15;  // elements per parallel task, at least

template <class T> T* ptr(const torch::stable::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

inline int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(cols, 1)); }

// f(b, e) over [0, n) in tasks of at least kWorkPerTask elements (rows of `cols` elements).
template <class F>
void parallel_rows(int64_t n, int64_t cols, const F& f) {
  torch::stable::parallel_for(0, n, row_grain(cols), [&](int64_t b, int64_t e) { cpu_detail::with_cpu_isa(f, b, e); });
}

}  // namespace cpu_helpers
}  // namespace lossext
