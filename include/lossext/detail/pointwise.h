// lossext's element-wise loss pattern (lossext/_core/pointwise.py's, in C++): a loss of input and
// target with an optional weight and N float parameters, its operators' signatures, their
// handles in the dispatcher, and the generic autograd wrapper LossFunction<Loss>. A family
// describes each loss with a small struct (see any element-wise family's header) and calls apply_loss.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "common.h"

namespace lossext {
namespace detail {

// input and target: floating tensors of the same shape, dtype and device.
inline void check_pair(const char* fn, const at::Tensor& input, const at::Tensor& target) {
  check_float_tensor(fn, "input", input);
  check_float_tensor(fn, "target", target);
  TORCH_CHECK_TYPE(target.scalar_type() == input.scalar_type(), fn, ": target dtype ",
                   target.scalar_type(), " does not match input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(), fn, ": target shape ", target.sizes(),
                    " does not match input shape ", input.sizes());
  TORCH_CHECK_VALUE(target.device() == input.device(), fn, ": target is on ", target.device(),
                    " but input is on ", input.device());
}

// An optional weight broadcastable to input, returned in input's dtype and expanded to input's
// shape (a view: autograd sums the gradient of the expanded weight back to weight's shape).
inline OptTensor prepare_weight(const char* fn, const OptTensor& weight, const at::Tensor& input) {
  if (!weight.has_value() || !weight->defined()) return std::nullopt;
  const at::Tensor& w = *weight;
  TORCH_CHECK_VALUE(w.device() == input.device(), fn, ": weight is on ", w.device(),
                    " but input is on ", input.device());
  TORCH_CHECK_TYPE(!w.is_complex(), fn, ": weight must be real, got ", w.scalar_type());
  bool broadcasts = w.dim() <= input.dim();
  for (int64_t i = 1; broadcasts && i <= w.dim(); ++i) {
    const int64_t ws = w.size(-i), is = input.size(-i);
    broadcasts = ws == is || ws == 1;
  }
  TORCH_CHECK_VALUE(broadcasts, fn, ": weight of shape ", w.sizes(),
                    " does not broadcast to input shape ", input.sizes());
  at::Tensor out = w.scalar_type() == input.scalar_type() ? w : w.to(input.scalar_type());
  return out.expand(input.sizes());
}

template <size_t>
using Double = double;

// The operator signatures of a loss with N float parameters (lossext/_core/pointwise.py's pattern):
//   NAME(input, target, weight?, P..., reduction) -> loss
//   NAME_with_grad(input, target, weight?, P..., reduction) -> (loss, dloss/dinput)
//   NAME_backward(grad_output, input, target, weight?, P..., reduction) -> grad_input
//   NAME_target_backward(...) -> grad_target        (only where dL/dy is not -dL/dx)
template <class... D>
struct SignaturesOf {
  using Forward = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, D..., int64_t);
  using ForwardWithGrad = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                             const OptTensor&, D..., int64_t);
  using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                              D..., int64_t);
};

template <class Seq>
struct SignaturesN;
template <size_t... I>
struct SignaturesN<std::index_sequence<I...>> : SignaturesOf<Double<I>...> {};

// Handles of the operators of one loss, found once (on first use) in the dispatcher.
template <size_t N>
struct PointwiseOps {
  using Params = std::array<double, N>;
  using Sigs = SignaturesN<std::make_index_sequence<N>>;

  std::string name;  // "lossext::<op>"
  c10::TypedOperatorHandle<typename Sigs::Forward> fwd;
  c10::TypedOperatorHandle<typename Sigs::ForwardWithGrad> fwd_grad;
  c10::TypedOperatorHandle<typename Sigs::Backward> bwd;
  std::optional<c10::TypedOperatorHandle<typename Sigs::Backward>> target_bwd;

  PointwiseOps(const std::string& op, bool has_target_backward)
      : name(op),
        fwd(find_op<typename Sigs::Forward>(op)),
        fwd_grad(find_op<typename Sigs::ForwardWithGrad>(op + "_with_grad")),
        bwd(find_op<typename Sigs::Backward>(op + "_backward")) {
    if (has_target_backward) target_bwd = find_op<typename Sigs::Backward>(op + "_target_backward");
  }

  at::Tensor loss(const at::Tensor& x, const at::Tensor& y, const OptTensor& w, const Params& p,
                  int64_t reduction) const {
    return std::apply([&](auto... d) { return fwd.call(x, y, w, d..., reduction); }, p);
  }
  std::tuple<at::Tensor, at::Tensor> loss_with_grad(const at::Tensor& x, const at::Tensor& y,
                                                    const OptTensor& w, const Params& p,
                                                    int64_t reduction) const {
    return std::apply([&](auto... d) { return fwd_grad.call(x, y, w, d..., reduction); }, p);
  }
  at::Tensor grad_input(const at::Tensor& g, const at::Tensor& x, const at::Tensor& y,
                        const OptTensor& w, const Params& p, int64_t reduction) const {
    return std::apply([&](auto... d) { return bwd.call(g, x, y, w, d..., reduction); }, p);
  }
  // dL/dy: the target_backward operator, or -grad_input where dL/dy = -dL/dx.
  at::Tensor grad_target(const at::Tensor& g, const at::Tensor& x, const at::Tensor& y,
                         const OptTensor& w, const Params& p, int64_t reduction,
                         const at::Tensor& grad_input_if_known) const {
    if (target_bwd.has_value()) {
      return std::apply([&](auto... d) { return target_bwd->call(g, x, y, w, d..., reduction); }, p);
    }
    if (grad_input_if_known.defined()) return grad_input_if_known.neg();
    return grad_input(g, x, y, w, p, reduction).neg();
  }
};

// Loss: a descriptor with num_params, one_pass and ops() (a PointwiseOps<num_params>).
template <class Loss>
struct LossFunction : torch::autograd::Function<LossFunction<Loss>> {
  using Params = std::array<double, Loss::num_params>;

  // Saved: input, target, weight (undefined when absent), and for one-pass dloss/dinput.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const OptTensor& weight, const Params& params,
                            int64_t reduction, bool one_pass) {
    const auto& ops = Loss::ops();
    ctx->saved_data["params"] = std::vector<double>(params.begin(), params.end());
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["one_pass"] = one_pass;
    ctx->saved_data["has_weight"] = weight.has_value();
    const at::Tensor w = weight.value_or(at::Tensor());
    if (one_pass) {
      auto [loss, grad_input] = ops.loss_with_grad(input, target, weight, params, reduction);
      // target and weight are only needed for their own gradients. input is kept (a reference,
      // no copy) so that gradients taken with create_graph=true depend on it and refuse
      // double backward (see DoubleBackwardNotSupported).
      const bool need_inputs = target.requires_grad() || (w.defined() && w.requires_grad());
      ctx->save_for_backward({grad_input, input, need_inputs ? target : at::Tensor(), need_inputs ? w : at::Tensor()});
      return loss;
    }
    ctx->save_for_backward({input, target, w});
    return ops.loss(input, target, weight, params, reduction);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto& ops = Loss::ops();
    const at::Tensor grad = grad_outputs[0];
    const auto pv = ctx->saved_data["params"].toDoubleVector();
    Params p;
    std::copy(pv.begin(), pv.end(), p.begin());
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const bool one_pass = ctx->saved_data["one_pass"].toBool();
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const auto saved = ctx->get_saved_variables();

    // Edges: 0 input, 1 target, 2 weight (only when given).
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_y = ctx->needs_input_grad(1);
    const bool need_w = has_weight && ctx->needs_input_grad(2);

    at::Tensor grad_in, x, y, w;
    if (one_pass) {
      grad_in = saved[0];
      x = saved[1];
      y = saved[2];  // undefined unless target or weight needs a gradient
      w = saved[3];
    } else {
      x = saved[0];
      y = saved[1];
      w = saved[2];
    }
    const OptTensor wopt = w.defined() ? OptTensor(w) : std::nullopt;

    at::Tensor gx, gy, gw;
    {
      at::NoGradGuard no_grad;
      if (one_pass) {
        // grad is 0-dim (reduced loss); grad_in is scale * w * dL/dx: the gradient itself for
        // grad_output = 1 (read on the CPU only: no device sync), as lossext/_core/autograd.py
        // scale_saved
        const bool unit = grad.is_cpu() && grad.dim() == 0 && grad.item<double>() == 1.0;
        if (need_x || (need_y && !ops.target_bwd.has_value())) gx = unit ? grad_in : grad * grad_in;
        if (need_y) gy = ops.grad_target(grad, x, y, wopt, p, reduction, gx);
      } else {
        if (need_x || (need_y && !ops.target_bwd.has_value())) {
          gx = ops.grad_input(grad, x, y, wopt, p, reduction);
        }
        if (need_y) gy = ops.grad_target(grad, x, y, wopt, p, reduction, gx);
      }
      if (need_w) {
        // d(w * L)/dw = L, times grad_output and the mean's 1/numel.
        const int64_t numel = x.numel();
        const double scale = reduction == 1 && numel > 0 ? 1.0 / double(numel) : 1.0;
        at::Tensor per_elem = ops.loss(x, y, std::nullopt, p, /*reduction=*/0);
        if (per_elem.scalar_type() == at::kFloat || per_elem.scalar_type() == at::kDouble) {
          gw = scale == 1.0 ? grad * per_elem : grad * per_elem * scale;
        } else {  // half precision: grad * L overflows, grad / numel underflows; use float32
          gw = (per_elem.to(at::kFloat) * (grad.to(at::kFloat) * scale)).to(per_elem.scalar_type());
        }
      }
      if (!need_x) gx = at::Tensor();
    }

    // create_graph=true: the gradients get a node that refuses double backward.
    refuse_double_backward(ops.name + " (C++ autograd)", {&grad, &x, &y, &w}, {&gx, &gy, &gw});
    // One gradient per forward argument: input, target, weight, params, reduction, one_pass.
    return {gx, gy, gw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <class Loss>
at::Tensor apply_loss(const at::Tensor& input, const at::Tensor& target, const OptTensor& weight,
                      const std::array<double, Loss::num_params>& params, int64_t reduction) {
  const bool needs_graph =
      at::GradMode::is_enabled() &&
      (input.requires_grad() || target.requires_grad() || (weight.has_value() && weight->requires_grad()));
  if (!needs_graph) return Loss::ops().loss(input, target, weight, params, reduction);
  // The one-pass buffer (dloss/dinput, 1/numel included) would underflow in half precision.
  const bool full_precision = input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble;
  const bool one_pass = Loss::one_pass && full_precision && reduction != 0 && input.requires_grad();
  return LossFunction<Loss>::apply(input, target, weight, params, reduction, one_pass);
}

}  // namespace detail
}  // namespace lossext
