// lossext landmark family (header-only libtorch API): the Wing loss (Feng et al., CVPR 2018) for
// landmark regression and the Adaptive Wing loss (Wang et al., ICCV 2019) for heatmap regression,
// lossext::wing_loss and lossext::adaptive_wing_loss. Element-wise losses: the autograd wrapper
// is detail/pointwise.h's (as lossext/_core/pointwise.py's).
//
//   - gradients flow to input, target and weight;
//   - weight may be any tensor broadcastable to input's shape (e.g. a per-landmark visibility
//     [N, K, 1] for [N, K, 2] coordinates); bool/integer masks are converted to input's dtype.
//     It is expanded to input's shape before the call and autograd sums its gradient back;
//   - reduction Mean divides the weighted sum by the number of elements (as torch's
//     binary_cross_entropy does), not by the sum of the weights; an empty input gives NaN for
//     Mean, 0 for Sum;
//   - float16/bfloat16 compute in float32 and return the input dtype.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include <torch/types.h>

#include "detail/common.h"
#include "detail/pointwise.h"

namespace lossext {
namespace detail {

// The losses: operator name, parameters, and which backward path the autograd wrapper takes.
// one_pass (as lossext/landmark/ops.py, measured there): for reduced losses whose input needs a
// gradient, run NAME_with_grad once (the forward writes dloss/dinput) instead of running
// NAME_backward later over the saved inputs.
struct WingLoss {
  static constexpr size_t num_params = 2;
  static constexpr bool one_pass = true;
  static const PointwiseOps<2>& ops() {
    static const PointwiseOps<2> o("lossext::wing_loss", /*has_target_backward=*/false);
    return o;
  }
};

struct AdaptiveWingLoss {
  static constexpr size_t num_params = 4;
  static constexpr bool one_pass = true;
  static const PointwiseOps<4>& ops() {
    static const PointwiseOps<4> o("lossext::adaptive_wing_loss", /*has_target_backward=*/true);
    return o;
  }
};

}  // namespace detail

/// Wing loss (Feng et al., CVPR 2018, Eq. 5) for landmark regression. With d = input - target:
///   w ln(1 + |d| / eps)   if |d| < w,   else |d| - C,   C = w - w ln(1 + w / eps);
/// `width` is w, `curvature` is eps (both > 0).
/// input, target: floating tensors of the same shape, dtype and device. weight: optional,
/// broadcastable to input. Differentiable in input, target and weight (first order only).
inline torch::Tensor wing_loss(const torch::Tensor& input, const torch::Tensor& target, double width = 10.0,
                               double curvature = 2.0, const std::optional<torch::Tensor>& weight = {},
                               Reduction reduction = Reduction::Mean) {
  constexpr const char* fn = "lossext::wing_loss";
  const int64_t red = detail::check_reduction(fn, reduction);
  detail::check_pair(fn, input, target);
  detail::check_positive(fn, "width", width);
  detail::check_positive(fn, "curvature", curvature);
  const auto w = detail::prepare_weight(fn, weight, input);
  return detail::apply_loss<detail::WingLoss>(input, target, w, {width, curvature}, red);
}

/// Adaptive Wing loss (Wang et al., ICCV 2019, Eq. 6) for heatmap regression. With
/// D = |target - input| and p = alpha - target (target in [0, 1]):
///   omega ln(1 + (D / epsilon)^p)   if D < theta,   else A D - C,
///   A = omega p (theta/epsilon)^(p-1) / (epsilon (1 + (theta/epsilon)^p)),
///   C = theta A - omega ln(1 + (theta/epsilon)^p).
/// omega, epsilon, theta > 0; alpha > theta (for a smooth loss also alpha > max(target) + 1).
/// Differentiable in input, target (through D and p) and weight; the gradient is 0 at D = 0.
inline torch::Tensor adaptive_wing_loss(const torch::Tensor& input, const torch::Tensor& target,
                                        double alpha = 2.1, double omega = 14.0, double epsilon = 1.0,
                                        double theta = 0.5, const std::optional<torch::Tensor>& weight = {},
                                        Reduction reduction = Reduction::Mean) {
  constexpr const char* fn = "lossext::adaptive_wing_loss";
  const int64_t red = detail::check_reduction(fn, reduction);
  detail::check_pair(fn, input, target);
  detail::check_positive(fn, "omega", omega);
  detail::check_positive(fn, "epsilon", epsilon);
  detail::check_positive(fn, "theta", theta);
  detail::check_finite(fn, "alpha", alpha);
  TORCH_CHECK_VALUE(alpha > theta, fn, ": alpha must be > theta (", theta, "), got ", alpha);
  const auto w = detail::prepare_weight(fn, weight, input);
  return detail::apply_loss<detail::AdaptiveWingLoss>(input, target, w, {alpha, omega, epsilon, theta}, red);
}

}  // namespace lossext
