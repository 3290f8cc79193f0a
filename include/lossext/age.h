// lossext age-estimation family (header-only libtorch API): the Mean-Variance loss (Pan, Han,
// Shan, Chen, CVPR 2018) and the age estimate of a softmax over age bins: mean_variance_loss
// and age_from_logits, with the loss's parameters in MeanVarianceOptions. The autograd
// wrappers are lossext/age/ops.py's.
//
//   - logits [N, K] over the age bins, bin j standing for the age start_age + j;
//   - target: ages [N], integer (any integer dtype, converted to int64) or floating
//     (converted to float64; differentiable through the mean term);
//   - gradients flow to the logits (and a floating target), first order only.
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "detail/common.h"
#include "detail/rowwise.h"

namespace lossext {

/// Parameters of the Mean-Variance loss, L = L_s + lambda_mean (m - y)^2 / 2 + lambda_var v
/// (each term reduced over the rows). Defaults: Herosan163/AgeEstimation's (docs/age.md).
struct MeanVarianceOptions {
  double lambda_mean = 0.2;       ///< weight of the mean term (finite, >= 0)
  double lambda_var = 0.05;       ///< weight of the variance term (finite, >= 0)
  int64_t start_age = 0;          ///< the age of bin 0 (|start_age| <= 2^53)
  bool include_softmax = true;    ///< add the cross-entropy to the bin round(y) - start_age
  Reduction reduction = Reduction::Mean;  ///< Mean: each term averaged over the N rows
};

namespace detail {

// The operators of the age family, found once in the dispatcher (age_schema.cpp's order).
struct AgeOps {
  using Mv = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, double, double, int64_t, bool, int64_t);
  using MvBackward = std::tuple<at::Tensor, at::Tensor>(const OptTensor&, const OptTensor&, const OptTensor&,
                                                        const OptTensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, double, double, int64_t, bool, int64_t);
  using Age = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t);
  using AgeBackward = at::Tensor(const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, int64_t);

  c10::TypedOperatorHandle<Mv> mv = find_op<Mv>("lossext::mean_variance_loss");
  c10::TypedOperatorHandle<MvBackward> mv_bwd = find_op<MvBackward>("lossext::mean_variance_loss_backward");
  c10::TypedOperatorHandle<Age> age = find_op<Age>("lossext::age_from_logits");
  c10::TypedOperatorHandle<AgeBackward> age_bwd = find_op<AgeBackward>("lossext::age_from_logits_backward");

  static const AgeOps& get() {
    static const AgeOps o;
    return o;
  }
};

inline void check_mean_variance_options(const char* fn, const MeanVarianceOptions& o) {
  check_finite(fn, "lambda_mean", o.lambda_mean);
  check_finite(fn, "lambda_var", o.lambda_var);
  TORCH_CHECK_VALUE(o.lambda_mean >= 0.0, fn, ": lambda_mean must be >= 0, got ", o.lambda_mean);
  TORCH_CHECK_VALUE(o.lambda_var >= 0.0, fn, ": lambda_var must be >= 0, got ", o.lambda_var);
  TORCH_CHECK_VALUE(o.start_age >= -(int64_t(1) << 53) && o.start_age <= (int64_t(1) << 53), fn,
                    ": start_age must be in [-2^53, 2^53], got ", o.start_age);
  check_reduction(fn, o.reduction);
}

// mean_variance_loss: differentiable in the logits and a float64 target; returns the total.
struct MeanVarianceFunction : torch::autograd::Function<MeanVarianceFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            const MeanVarianceOptions& o) {
    auto out = AgeOps::get().mv.call(logits, target, o.lambda_mean, o.lambda_var, o.start_age, o.include_softmax,
                                     static_cast<int64_t>(o.reduction));
    ctx->saved_data["lambda"] = std::vector<double>{o.lambda_mean, o.lambda_var};
    ctx->saved_data["start_age"] = o.start_age;
    ctx->saved_data["include_softmax"] = o.include_softmax;
    ctx->saved_data["reduction"] = static_cast<int64_t>(o.reduction);
    ctx->save_for_backward({logits, target, std::get<4>(out)});
    return std::get<0>(out);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &target = saved[1], &stats = saved[2];
    at::Tensor g_logits, g_target;
    if (grad.defined()) {
      at::NoGradGuard no_grad;
      const auto lam = ctx->saved_data["lambda"].toDoubleVector();
      std::tie(g_logits, g_target) = AgeOps::get().mv_bwd.call(
          grad, std::nullopt, std::nullopt, std::nullopt, logits, target, stats, lam[0], lam[1],
          ctx->saved_data["start_age"].toInt(), ctx->saved_data["include_softmax"].toBool(),
          ctx->saved_data["reduction"].toInt());
      if (!ctx->needs_input_grad(0)) g_logits = at::Tensor();
      if (!ctx->needs_input_grad(1) || target.scalar_type() != at::kDouble) g_target = at::Tensor();
    }
    refuse_double_backward("lossext::mean_variance_loss (C++ autograd)", {&grad, &logits, &target},
                           {&g_logits, &g_target});
    return {g_logits, g_target, at::Tensor()};
  }
};

// age_from_logits: differentiable in the logits; returns (m, v).
struct AgeFromLogitsFunction : torch::autograd::Function<AgeFromLogitsFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                                                int64_t start_age) {
    auto [m, v, stats] = AgeOps::get().age.call(logits, start_age);
    ctx->saved_data["start_age"] = start_age;
    ctx->save_for_backward({logits, stats});
    return {m, v};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &gm = grad_outputs[0], &gv = grad_outputs[1];
    at::Tensor g;
    if (gm.defined() || gv.defined()) {
      at::NoGradGuard no_grad;
      g = AgeOps::get().age_bwd.call(opt(gm), opt(gv), saved[0], saved[1], ctx->saved_data["start_age"].toInt());
    }
    refuse_double_backward("lossext::age_from_logits (C++ autograd)", {&gm, &gv, &saved[0]}, {&g});
    return {g, at::Tensor()};
  }
};

inline at::Tensor check_ages(const char* fn, const at::Tensor& target, int64_t n, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(target.defined(), fn, ": target must be a defined tensor");
  TORCH_CHECK_TYPE(target.scalar_type() != at::kBool && !target.is_complex(), fn,
                   ": target must be integer or floating ages, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == n, fn, ": target must have shape [", n, "], got ",
                    target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), fn, ": target is on ", target.device(), " but logits is on ",
                    logits.device());
  return target.to(target.is_floating_point() ? at::kDouble : at::kLong);
}

inline void check_age_logits(const char* fn, const at::Tensor& logits) {
  check_rows(fn, "logits", logits, "[N, K]");
  TORCH_CHECK_VALUE(logits.size(1) > 0, fn, ": logits has no age bins (shape ", logits.sizes(), ")");
}

}  // namespace detail

/// The Mean-Variance loss (Pan et al., CVPR 2018, Eq. 2-5): with p = softmax(logits),
/// m = sum_j a_j p_j, v = sum_j p_j (a_j - m)^2 (a_j = start_age + j),
///   L = CE(logits, round(y) - start_age) + lambda_mean (m - y)^2 / 2 + lambda_var v,
/// each term reduced over the rows. logits: [N, K] floating; target: [N] ages. An age outside
/// the bins while include_softmax throws on the CPU; on CUDA its row's softmax term is NaN.
/// Returns [N] for Reduction::None, else a scalar.
inline torch::Tensor mean_variance_loss(const torch::Tensor& logits, const torch::Tensor& target,
                                        const MeanVarianceOptions& options = {}) {
  const char* fn = "lossext::mean_variance_loss";
  detail::check_age_logits(fn, logits);
  const at::Tensor y = detail::check_ages(fn, target, logits.size(0), logits);
  detail::check_mean_variance_options(fn, options);
  if (at::GradMode::is_enabled() && (logits.requires_grad() || y.requires_grad()))
    return detail::MeanVarianceFunction::apply(logits, y, options);
  return std::get<0>(detail::AgeOps::get().mv.call(logits, y, options.lambda_mean, options.lambda_var,
                                                   options.start_age, options.include_softmax,
                                                   static_cast<int64_t>(options.reduction)));
}

/// The age estimate (m, v) of a softmax over age bins (Pan et al. Eq. 2 and 4), [N] each in the
/// logits' dtype; differentiable in the logits.
inline std::tuple<torch::Tensor, torch::Tensor> age_from_logits(const torch::Tensor& logits, int64_t start_age = 0) {
  const char* fn = "lossext::age_from_logits";
  detail::check_age_logits(fn, logits);
  TORCH_CHECK_VALUE(start_age >= -(int64_t(1) << 53) && start_age <= (int64_t(1) << 53), fn,
                    ": start_age must be in [-2^53, 2^53], got ", start_age);
  if (at::GradMode::is_enabled() && logits.requires_grad()) {
    auto out = detail::AgeFromLogitsFunction::apply(logits, start_age);
    return {out[0], out[1]};
  }
  auto [m, v, stats] = detail::AgeOps::get().age.call(logits, start_age);
  return {m, v};
}

}  // namespace lossext
