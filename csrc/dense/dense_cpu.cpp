// CPU kernels of the dense-prediction family (Device = DenseCpu, see dense_ops.h).
//
// Determinism: rows (heatmaps) run in parallel, each summed alone: blocks of kBlock pixels in
// lane_sum's fixed lanes of the accumulation type, the blocks added in order in double. The
// order depends on the row length only: bitwise equal for 1 and N threads and for every
// instruction-set variant. The parallelism is over rows (B K heatmaps), so a batch of very few
// large heatmaps runs on few threads.
#include <algorithm>
#include <cstdint>

#include <torch/csrc/stable/library.h>

#include "../common/cpu_helpers.h"
#include "../common/cpu_isa.h"
#include "dense_ops.h"

namespace lossext {
namespace dense {
namespace {

using cpu_helpers::ptr;

constexpr int64_t kBlock = 2048;  // pixels per lane_sum call, added into a double

// sum_{k < P} term(k): blocks of kBlock in lane_sum's fixed lanes of A, the blocks added in order
// in double (the order depends on P only).
template <class A, class Term>
inline double row_sum(int64_t P, const Term& term) {
  double total = 0.0;
  for (int64_t bb = 0; bb < P; bb += kBlock) total += static_cast<double>(cpu_detail::lane_sum<A>(bb, std::min(P, bb + kBlock), term));
  return total;
}

template <class scalar_t>
void row_sums_t(const HeatmapProblem& p, Tensor& sums) {
  using A = acc_t<scalar_t>;
  const scalar_t* x = ptr<const scalar_t>(p.output);
  const scalar_t* y = ptr<const scalar_t>(p.target);
  A* s = ptr<A>(sums);
  const int64_t P = p.pixels;
  cpu_helpers::parallel_rows(p.rows, P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* __restrict xr = x + r * P;
      const scalar_t* __restrict yr = y + r * P;
      s[r] = static_cast<A>(row_sum<A>(P, [&](int64_t k) { return sq_diff(static_cast<A>(xr[k]), static_cast<A>(yr[k])); }));
    }
  });
}

template <class scalar_t>
void row_sums_backward_t(const HeatmapProblem& p, const Tensor& grad, Tensor& out) {
  using A = acc_t<scalar_t>;
  const scalar_t* x = ptr<const scalar_t>(p.output);
  const scalar_t* y = ptr<const scalar_t>(p.target);
  const A* g = ptr<const A>(grad);
  scalar_t* o = ptr<scalar_t>(out);
  const int64_t P = p.pixels;
  cpu_helpers::parallel_rows(p.rows, P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* __restrict xr = x + r * P;
      const scalar_t* __restrict yr = y + r * P;
      scalar_t* __restrict orow = o + r * P;
      const A gr = g[r];
      if (gr == A(0)) {  // a joint OHKM did not select (or weight 0): zeros, the row unread
        std::fill(orow, orow + P, static_cast<scalar_t>(0.0f));
        continue;
      }
#pragma omp simd
      for (int64_t k = 0; k < P; ++k) orow[k] = static_cast<scalar_t>(sq_diff_grad(gr, static_cast<A>(xr[k]), static_cast<A>(yr[k])));
    }
  });
}

// Every label indexes a channel: each must be in [0, C).
void check_labels(const MaskProblem& p) {
  const int64_t* l = ptr<const int64_t>(p.labels);
  for (int64_t r = 0; r < p.R; ++r) {
    LOSSEXT_CHECK(l[r] >= 0 && l[r] < p.C, p.op, ": argument 'labels' has value ", l[r], " at index ", r,
                  ", outside [0, ", p.C, ") (mask_logits has ", p.C, " class channels)");
  }
}

template <class scalar_t>
void mask_bce_t(const MaskProblem& p, Tensor& out) {
  using A = acc_t<scalar_t>;
  check_labels(p);
  const scalar_t* x = ptr<const scalar_t>(p.logits);
  const scalar_t* y = ptr<const scalar_t>(p.targets);
  const int64_t* l = ptr<const int64_t>(p.labels);
  const int64_t P = p.P, C = p.C;
  cpu_helpers::parallel_rows(p.R, P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* __restrict xr = x + (r * C + l[r]) * P;  // the labelled channel only
      const scalar_t* __restrict yr = y + r * P;
      if (p.per_pixel) {
        scalar_t* __restrict o = ptr<scalar_t>(out) + r * P;
#pragma omp simd
        for (int64_t k = 0; k < P; ++k) o[k] = static_cast<scalar_t>(bce_with_logits(static_cast<A>(xr[k]), static_cast<A>(yr[k])));
        continue;
      }
      ptr<A>(out)[r] = static_cast<A>(
          row_sum<A>(P, [&](int64_t k) { return bce_with_logits(static_cast<A>(xr[k]), static_cast<A>(yr[k])); }));
    }
  });
}

template <class scalar_t>
void mask_bce_backward_t(const MaskProblem& p, const Tensor& grad, Tensor& gl, Tensor& gt) {
  using A = acc_t<scalar_t>;
  check_labels(p);
  const scalar_t* x = ptr<const scalar_t>(p.logits);
  const scalar_t* y = ptr<const scalar_t>(p.targets);
  const int64_t* l = ptr<const int64_t>(p.labels);
  scalar_t* ol = ptr<scalar_t>(gl);
  scalar_t* ot = ptr<scalar_t>(gt);
  const int64_t P = p.P, C = p.C;
  cpu_helpers::parallel_rows(p.R, C * P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      std::fill(ol + r * C * P, ol + (r + 1) * C * P, static_cast<scalar_t>(0.0f));  // the other channels
      const scalar_t* __restrict xr = x + (r * C + l[r]) * P;
      const scalar_t* __restrict yr = y + r * P;
      scalar_t* __restrict o = ol + (r * C + l[r]) * P;
      scalar_t* __restrict ty = ot + r * P;
      with_bool(p.per_pixel, [&](auto kPerPixel) {
        const scalar_t* __restrict gp = kPerPixel ? ptr<const scalar_t>(grad) + r * P : nullptr;
        const A g_roi = kPerPixel ? A(0) : ptr<const A>(grad)[r];
#pragma omp simd
        for (int64_t k = 0; k < P; ++k) {
          const A G = kPerPixel ? static_cast<A>(gp[k]) : g_roi, X = static_cast<A>(xr[k]);
          o[k] = static_cast<scalar_t>(G * bce_with_logits_grad(X, static_cast<A>(yr[k])));
          ty[k] = static_cast<scalar_t>(-G * X);
        }
      });
    }
  });
}

}  // namespace

struct DenseCpu {
  static void mask_bce(const MaskProblem& p, Tensor& out) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) { mask_bce_t<decltype(tag)>(p, out); });
  }
  static void mask_bce_backward(const MaskProblem& p, const Tensor& grad, Tensor& gl, Tensor& gt) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) { mask_bce_backward_t<decltype(tag)>(p, grad, gl, gt); });
  }
  static void row_sums(const HeatmapProblem& p, Tensor& sums) {
    dispatch_floating(p.output.scalar_type(), p.op, [&](auto tag) { row_sums_t<decltype(tag)>(p, sums); });
  }
  static void row_sums_backward(const HeatmapProblem& p, const Tensor& grad, Tensor& out) {
    dispatch_floating(p.output.scalar_type(), p.op, [&](auto tag) { row_sums_backward_t<decltype(tag)>(p, grad, out); });
  }
};

}  // namespace dense
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::dense::register_dense_kernels<lossext::dense::DenseCpu>(m);
}
