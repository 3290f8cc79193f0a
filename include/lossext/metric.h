// lossext metric-learning family (header-only libtorch API): Center loss (Wen et al., ECCV 2016)
// and Triplet-Center loss (He et al., CVPR 2018): center_loss and triplet_center_loss, with the
// Triplet-Center parameters in TripletCenterOptions. The autograd wrappers are
// lossext/metric/ops.py's.
//
//   - features [N, D], target [N] class labels (int64; int32, int16, int8 and uint8 are
//     converted), centers [C, D] (C > 0) of the features' dtype and device;
//   - gradients flow to the features and the centers; Mean divides by N.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "detail/common.h"
#include "detail/rowwise.h"

namespace lossext {

enum class CenterDistance : int64_t { SquaredEuclidean = 0, Euclidean = 1 };
enum class CenterNegatives : int64_t { All = 0, Batch = 1 };

/// Parameters of triplet_center_loss (the Python defaults):
///   lossext::TripletCenterOptions{.margin = 1.0, .distance = lossext::CenterDistance::Euclidean}
struct TripletCenterOptions {
  double margin = 5.0;                                      ///< m >= 0
  CenterDistance distance = CenterDistance::SquaredEuclidean;  ///< 1/2 |f - c|^2, or sqrt(max(|f - c|^2, 1e-12))
  CenterNegatives negatives = CenterNegatives::All;         ///< all other centers, or the batch's classes
  Reduction reduction = Reduction::Mean;                    ///< Mean divides by N
};

namespace detail {

struct MetricOps {
  using Center = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
  using CenterBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                            const at::Tensor&, int64_t);
  using Tc = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                                int64_t, int64_t, int64_t);
  using TcBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const at::Tensor&, double, int64_t,
                                                        int64_t, int64_t);
  c10::TypedOperatorHandle<Center> center = find_op<Center>("lossext::center_loss");
  c10::TypedOperatorHandle<CenterBackward> center_bwd = find_op<CenterBackward>("lossext::center_loss_backward");
  c10::TypedOperatorHandle<Tc> tc = find_op<Tc>("lossext::triplet_center_loss");
  c10::TypedOperatorHandle<TcBackward> tc_bwd = find_op<TcBackward>("lossext::triplet_center_loss_backward");

  static const MetricOps& get() {
    static const MetricOps o;
    return o;
  }
};

// features, centers and target checked as the Python functions do; returns the int64 target.
inline at::Tensor check_metric_inputs(const char* fn, const at::Tensor& f, const at::Tensor& target,
                                      const at::Tensor& c) {
  check_rows(fn, "features", f, "[N, D]");
  check_rows(fn, "centers", c, "[C, D]");
  TORCH_CHECK_TYPE(c.scalar_type() == f.scalar_type(), fn, ": centers dtype ", c.scalar_type(),
                   " does not match features dtype ", f.scalar_type());
  TORCH_CHECK_VALUE(c.device() == f.device(), fn, ": centers is on ", c.device(), " but features is on ", f.device());
  TORCH_CHECK_VALUE(c.size(1) == f.size(1), fn, ": centers has D = ", c.size(1), " but features have D = ", f.size(1));
  TORCH_CHECK_VALUE(c.size(0) > 0, fn, ": centers has no classes (shape ", c.sizes(), ")");
  return check_labels(fn, target, f.size(0), f, "features");
}

struct CenterLossFunction : torch::autograd::Function<CenterLossFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& f, const at::Tensor& target,
                            const at::Tensor& c, int64_t reduction) {
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({f, target, c});
    return MetricOps::get().center.call(f, target, c, reduction);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    at::Tensor gf, gc;
    {
      at::NoGradGuard no_grad;
      std::tie(gf, gc) = MetricOps::get().center_bwd.call(grad, s[0], s[1], s[2], ctx->saved_data["reduction"].toInt());
    }
    if (!ctx->needs_input_grad(0)) gf = at::Tensor();
    if (!ctx->needs_input_grad(2)) gc = at::Tensor();
    refuse_double_backward("lossext::center_loss (C++ autograd)", {&grad, &s[0], &s[2]}, {&gf, &gc});
    return {gf, at::Tensor(), gc, at::Tensor()};
  }
};

struct TripletCenterFunction : torch::autograd::Function<TripletCenterFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& f, const at::Tensor& target,
                            const at::Tensor& c, double margin, int64_t distance, int64_t negatives, int64_t reduction) {
    auto [loss, neg] = MetricOps::get().tc.call(f, target, c, margin, distance, negatives, reduction);
    ctx->saved_data["params"] = std::vector<int64_t>{distance, negatives, reduction};
    ctx->saved_data["margin"] = margin;
    ctx->save_for_backward({f, target, c, neg});
    return loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    const auto p = ctx->saved_data["params"].toIntVector();
    at::Tensor gf, gc;
    {
      at::NoGradGuard no_grad;
      std::tie(gf, gc) = MetricOps::get().tc_bwd.call(grad, s[0], s[1], s[2], s[3], ctx->saved_data["margin"].toDouble(),
                                                      p[0], p[1], p[2]);
    }
    if (!ctx->needs_input_grad(0)) gf = at::Tensor();
    if (!ctx->needs_input_grad(2)) gc = at::Tensor();
    refuse_double_backward("lossext::triplet_center_loss (C++ autograd)", {&grad, &s[0], &s[2]}, {&gf, &gc});
    return {gf, at::Tensor(), gc, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace detail

/// Center loss (Wen et al., ECCV 2016, Eq. 2): 1/2 |x_i - c_{y_i}|^2 per row. Mean divides by N.
inline torch::Tensor center_loss(const torch::Tensor& features, const torch::Tensor& target,
                                 const torch::Tensor& centers, Reduction reduction = Reduction::Mean) {
  const char* fn = "lossext::center_loss";
  const at::Tensor t = detail::check_metric_inputs(fn, features, target, centers);
  const int64_t red = detail::check_reduction(fn, reduction);
  if (!(at::GradMode::is_enabled() && (features.requires_grad() || centers.requires_grad())))
    return detail::MetricOps::get().center.call(features, t, centers, red);
  return detail::CenterLossFunction::apply(features, t, centers, red);
}

/// Triplet-Center loss (He et al., CVPR 2018, Eq. 3): max(D(f_i, c_{y_i}) + m - min_{j != y_i}
/// D(f_i, c_j), 0); no negative (C = 1, or Batch with one class present) gives 0.
inline torch::Tensor triplet_center_loss(const torch::Tensor& features, const torch::Tensor& target,
                                         const torch::Tensor& centers, const TripletCenterOptions& o = {}) {
  const char* fn = "lossext::triplet_center_loss";
  const at::Tensor t = detail::check_metric_inputs(fn, features, target, centers);
  detail::check_finite(fn, "margin", o.margin);
  TORCH_CHECK_VALUE(o.margin >= 0.0, fn, ": margin must be >= 0, got ", o.margin);
  const int64_t red = detail::check_reduction(fn, o.reduction);
  const auto dist = static_cast<int64_t>(o.distance), neg = static_cast<int64_t>(o.negatives);
  TORCH_CHECK_VALUE(dist == 0 || dist == 1, fn, ": distance must be SquaredEuclidean or Euclidean, got ", dist);
  TORCH_CHECK_VALUE(neg == 0 || neg == 1, fn, ": negatives must be All or Batch, got ", neg);
  if (!(at::GradMode::is_enabled() && (features.requires_grad() || centers.requires_grad())))
    return std::get<0>(detail::MetricOps::get().tc.call(features, t, centers, o.margin, dist, neg, red));
  return detail::TripletCenterFunction::apply(features, t, centers, o.margin, dist, neg, red);
}

}  // namespace lossext
