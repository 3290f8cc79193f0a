// lossext: fused landmark-regression losses for libtorch programs (header-only C++ API).
//
//   #include <lossext/lossext.h>        // CMake: find_package(lossext); link lossext::lossext
//
//   torch::Tensor loss = lossext::wing_loss(pred, target);                  // width 10, curvature 2, mean
//   torch::Tensor loss = lossext::adaptive_wing_loss(heatmap, target_heatmap, 2.1, 14.0, 1.0, 0.5,
//                                                    visibility, lossext::Reduction::Sum);
//   loss.backward();
//
// The kernels live in liblossext.so as the torch custom operators lossext::wing_loss,
// lossext::adaptive_wing_loss, ... (CPU, and CUDA when compiled in); they are registered when the
// library is loaded. This header calls them through the c10 dispatcher and adds the autograd
// formulas (the same as the Python package's, lossext/_pointwise.py):
//   - gradients flow to input, target and weight;
//   - weight may be any tensor broadcastable to input's shape (e.g. a per-landmark visibility
//     [N, K, 1] for [N, K, 2] coordinates); bool/integer masks are converted to input's dtype.
//     It is expanded to input's shape before the call and autograd sums its gradient back;
//   - reduction Mean divides the weighted sum by the number of elements (as torch's
//     binary_cross_entropy does), not by the sum of the weights; an empty input gives NaN for
//     Mean, 0 for Sum;
//   - float16/bfloat16 compute in float32 and return the input dtype.
//
// Double backward is NOT supported: the gradients are computed by fused kernels that have no
// derivative of their own. backward(create_graph=true) works, but differentiating the
// gradients it returns throws c10::NotImplementedError.
//
// Argument errors throw c10::Error subclasses naming the argument and its value
// (c10::ValueError for bad values and shapes, c10::TypeError for bad dtypes).
//
// This header needs full libtorch; it is compiled by consumers only (the kernels themselves are
// built on the LibTorch stable ABI).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "build_info.h"

namespace lossext {

/// How the per-element losses are reduced (values as at::Reduction and the operator schemas).
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

/// The version of the loaded liblossext.so, e.g. "0.1.0".
inline const char* version() { return ::lossext_version(); }
/// Whether liblossext.so was compiled with its CUDA kernels.
inline bool with_cuda() { return ::lossext_with_cuda() != 0; }
/// The CUDA architectures compiled in, e.g. "9.0"; empty without CUDA.
inline const char* cuda_arch_list() { return ::lossext_cuda_arch_list(); }

namespace detail {

// Every program that includes this header references a symbol of liblossext.so here, so that
// the linker keeps the library (whose loading registers the operators) even under
// -Wl,--as-needed, which torch's CMake targets switch on after their own libraries.
inline const char* const linked_version = ::lossext_version();

using OptTensor = std::optional<at::Tensor>;

inline int64_t check_reduction(const char* fn, Reduction r) {
  const auto v = static_cast<int64_t>(r);
  TORCH_CHECK_VALUE(v >= 0 && v <= 2, fn, ": reduction must be Reduction::None, Mean or Sum, got ", v);
  return v;
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_tensor(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), fn, ": ", name, " must be a defined tensor");
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), fn, ": ", name,
                   " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

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

inline void check_finite(const char* fn, const char* name, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v), fn, ": ", name, " must be finite, got ", v);
}

inline void check_positive(const char* fn, const char* name, double v) {
  check_finite(fn, name, v);
  TORCH_CHECK_VALUE(v > 0.0, fn, ": ", name, " must be > 0, got ", v);
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

// The operator signatures of a loss with N float parameters (lossext/_pointwise.py's pattern):
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

template <class Sig>
c10::TypedOperatorHandle<Sig> find_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "").template typed<Sig>();
}

// Handles of the operators of one loss, found once (on first use) in the dispatcher.
template <size_t N>
struct PointwiseOps {
  using Params = std::array<double, N>;
  using Sigs = SignaturesN<std::make_index_sequence<N>>;

  std::string name;  // "lossext::wing_loss"
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

// The losses: operator name, parameters, and which backward path the autograd wrapper takes.
// one_pass (as lossext/_ops.py, measured there): for reduced losses whose input needs a
// gradient, run NAME_with_grad once (the forward writes dloss/dinput) instead of running
// NAME_backward later over the saved inputs.
struct WingLoss {
  static constexpr size_t num_params = 2;
  static constexpr bool one_pass = false;
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

// Identity on `result` whose backward refuses: attached to the gradients computed under
// create_graph=true, so that differentiating them again fails loudly instead of silently
// giving zeros.
struct DoubleBackwardNotSupported : torch::autograd::Function<DoubleBackwardNotSupported> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& result,
                            at::TensorList /*depends_on: only for the graph edges*/,
                            const std::string& name) {
    ctx->saved_data["name"] = name;
    return result;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, ctx->saved_data["name"].toStringRef(),
                                ": double backward is not supported");
    return {};
  }
};

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

    // create_graph=true: the gradients get a node that refuses double backward.
    const bool create_graph = at::GradMode::is_enabled();
    std::vector<at::Tensor> depends_on;
    if (create_graph) {
      for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&grad, &x, &y, &w}) {
        if (t->defined() && t->requires_grad()) depends_on.push_back(*t);
      }
    }

    at::Tensor gx, gy, gw;
    {
      at::NoGradGuard no_grad;
      if (one_pass) {
        // grad is 0-dim (reduced loss); grad_in is scale * w * dL/dx.
        if (need_x || (need_y && !ops.target_bwd.has_value())) gx = grad * grad_in;
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

    if (!depends_on.empty()) {
      const std::string what = ops.name + " (C++ autograd)";
      for (at::Tensor* g : {&gx, &gy, &gw}) {
        if (g->defined()) *g = DoubleBackwardNotSupported::apply(*g, at::TensorList(depends_on), what);
      }
    }
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
