// lossext: fused landmark-regression and margin-softmax losses for libtorch programs
// (header-only C++ API).
//
//   #include <lossext/lossext.h>        // CMake: find_package(lossext); link lossext::lossext
//
//   torch::Tensor loss = lossext::wing_loss(pred, target);                  // width 10, curvature 2, mean
//   torch::Tensor loss = lossext::adaptive_wing_loss(heatmap, target_heatmap, 2.1, 14.0, 1.0, 0.5,
//                                                    visibility, lossext::Reduction::Sum);
//   torch::Tensor loss = lossext::arcface_loss(cos_logits, labels, /*scale=*/64, /*margin=*/0.5);
//   torch::Tensor loss = lossext::fused_linear_margin_cross_entropy(          // ArcFace head, no [N, C]
//       embeddings, class_centres, labels, lossext::MarginOptions{.scale = 64, .m2 = 0.5});
//   loss.backward();
//
// The kernels live in liblossext.so as the torch custom operators lossext::wing_loss,
// lossext::adaptive_wing_loss, lossext::margin_cross_entropy, ... (CPU, and CUDA when compiled
// in); they are registered when the library is loaded. This header calls them through the c10
// dispatcher and adds the autograd formulas (the same as the Python package's,
// lossext/_pointwise.py and lossext/_margin.py).
//
// Landmark losses (wing_loss, adaptive_wing_loss):
//   - gradients flow to input, target and weight;
//   - weight may be any tensor broadcastable to input's shape (e.g. a per-landmark visibility
//     [N, K, 1] for [N, K, 2] coordinates); bool/integer masks are converted to input's dtype.
//     It is expanded to input's shape before the call and autograd sums its gradient back;
//   - reduction Mean divides the weighted sum by the number of elements (as torch's
//     binary_cross_entropy does), not by the sum of the weights; an empty input gives NaN for
//     Mean, 0 for Sum;
//   - float16/bfloat16 compute in float32 and return the input dtype.
//
// Margin-softmax losses (margin_cross_entropy, cosface_loss, arcface_loss, sphereface_loss,
// fused_linear_margin_cross_entropy, fused_linear_cross_entropy; parameters in MarginOptions):
//   - cross-entropy over cosine logits [N, C] whose target logit carries an angular margin
//     (SphereFace m1, ArcFace m2, CosFace m3); the fused op takes embeddings [N, D] and class
//     centres [C, D] and never stores the [N, C] logits (class chunks, online softmax);
//   - target: class labels [N], int64 (int32, int16, int8 and uint8 are converted; floating
//     labels are refused);
//   - gradients flow to the cosine logits, feature_norm, embeddings, class centres and bias.
//     The class weight [C] takes no gradient: one that requires grad is refused (with grad
//     mode on), as torch's cross_entropy refuses it;
//   - label_smoothing, weight, ignore_index and reduction mean what they mean in torch's
//     cross_entropy (Mean divides by the summed class weights of the rows not ignored).
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
#include <initializer_list>
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

/// Parameters of the margin-softmax losses. With theta = acos(clamp(cos, -1, 1)) the target
/// class's logit is
///   scale * ((lambda cos + psi(theta)) / (1 + lambda) - m3),   psi = cos(m1 theta + m2)
/// kept monotone in theta (for m1 = 1, m2 > 0 insightface's rule past theta + m2 > pi, or
/// easy_margin; for m1 != 1 A-Softmax's (-1)^k cos(m1 theta) - 2k); the other logits are
/// scale * cos. (1, 0, m) is CosFace, (1, m, 0) ArcFace, integer m1 SphereFace.
/// An aggregate; with C++20 designated initializers (fields in declaration order):
///   lossext::MarginOptions{.scale = 30, .m2 = 0.5, .label_smoothing = 0.1}
struct MarginOptions {
  double scale = 64.0;           ///< s (> 0); feature_norm, where given, replaces it per row
  double m1 = 1.0;               ///< multiplicative angular margin, SphereFace (> 0)
  double m2 = 0.0;               ///< additive angular margin, ArcFace (in [0, pi))
  double m3 = 0.0;               ///< additive cosine margin, CosFace (finite)
  double lambda = 0.0;           ///< SphereFace annealing (>= 0): (lambda cos + psi) / (1 + lambda)
  bool easy_margin = false;      ///< ArcFace: the margin only where cos > 0
  double label_smoothing = 0.0;  ///< in [0, 1], as torch's cross_entropy
  int64_t ignore_index = -100;   ///< rows with this label add nothing (nor to Mean's divisor)
  Reduction reduction = Reduction::Mean;  ///< Mean: divided by the summed class weights of the kept rows
};

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

// In a backward run with create_graph=true: makes the defined `grads` refuse double backward,
// depending on those of the backward's `inputs` (grad_output and the saved tensors) that
// require grad. Does nothing otherwise.
inline void refuse_double_backward(const std::string& what, std::initializer_list<const at::Tensor*> inputs,
                                   std::initializer_list<at::Tensor*> grads) {
  if (!at::GradMode::is_enabled()) return;
  std::vector<at::Tensor> depends_on;
  for (const at::Tensor* t : inputs) {
    if (t->defined() && t->requires_grad()) depends_on.push_back(*t);
  }
  if (depends_on.empty()) return;
  for (at::Tensor* g : grads) {
    if (g->defined()) *g = DoubleBackwardNotSupported::apply(*g, at::TensorList(depends_on), what);
  }
}

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

// ---- margin softmax (lossext/_margin.py's autograd) -----------------------------------------

constexpr double kPi = 3.14159265358979323846;

// MarginOptions' values (the kernels check them again); returns the reduction as the ops take it.
inline int64_t check_margin_options(const char* fn, const MarginOptions& o) {
  check_positive(fn, "scale", o.scale);
  check_positive(fn, "m1", o.m1);
  check_finite(fn, "m2", o.m2);
  TORCH_CHECK_VALUE(o.m2 >= 0.0 && o.m2 < kPi, fn, ": m2 must be in [0, pi), got ", o.m2);
  check_finite(fn, "m3", o.m3);
  check_finite(fn, "lambda", o.lambda);
  TORCH_CHECK_VALUE(o.lambda >= 0.0, fn, ": lambda must be >= 0, got ", o.lambda);
  TORCH_CHECK_VALUE(o.label_smoothing >= 0.0 && o.label_smoothing <= 1.0, fn,
                    ": label_smoothing must be in [0, 1], got ", o.label_smoothing);
  return check_reduction(fn, o.reduction);
}

// A 2-D floating tensor; layout names its dimensions in the message, e.g. "[N, C]".
inline void check_rows(const char* fn, const char* name, const at::Tensor& x, const char* layout) {
  check_float_tensor(fn, name, x);
  TORCH_CHECK_VALUE(x.dim() == 2, fn, ": ", name, " must be 2-D ", layout, ", got shape ", x.sizes());
}

// Integer class labels [n] on like's device, returned as int64.
inline at::Tensor check_labels(const char* fn, const at::Tensor& target, int64_t n, const at::Tensor& like,
                               const char* like_name) {
  TORCH_CHECK_VALUE(target.defined(), fn, ": target must be a defined tensor");
  const at::ScalarType t = target.scalar_type();
  TORCH_CHECK_TYPE(t == at::kLong || t == at::kInt || t == at::kShort || t == at::kChar || t == at::kByte, fn,
                   ": target must be integer class indices (int64, int32, int16, int8 or uint8), got ", t);
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == n, fn, ": target must have shape [", n, "], got ",
                    target.sizes());
  TORCH_CHECK_VALUE(target.device() == like.device(), fn, ": target is on ", target.device(), " but ", like_name,
                    " is on ", like.device());
  return t == at::kLong ? target : target.to(at::kLong);
}

// An optional floating vector [n] (dims names n, e.g. "C") on like's device, returned in like's
// dtype (the conversion is differentiable).
inline OptTensor check_vector(const char* fn, const char* name, const OptTensor& v, int64_t n, const char* dims,
                              const at::Tensor& like, const char* like_name) {
  if (!v.has_value() || !v->defined()) return std::nullopt;
  TORCH_CHECK_TYPE(v->is_floating_point(), fn, ": ", name, " must be floating point, got ", v->scalar_type());
  TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == n, fn, ": ", name, " must have shape [", dims, "] = [", n,
                    "], got ", v->sizes());
  TORCH_CHECK_VALUE(v->device() == like.device(), fn, ": ", name, " is on ", v->device(), " but ", like_name,
                    " is on ", like.device());
  return v->scalar_type() == like.scalar_type() ? *v : v->to(like.scalar_type());
}

// The operators of the margin family, found once (on first use) in the dispatcher, called with
// MarginOptions (margin_schema.cpp's argument order).
struct MarginOps {
  using Ce = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                                const OptTensor&, double, double, double, double, double, bool,
                                                double, int64_t, int64_t);
  using CeBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const OptTensor&, const OptTensor&, const at::Tensor&,
                                                        double, double, double, double, double, bool, double,
                                                        int64_t, int64_t);
  using Fused = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const OptTensor&, double, double, double, double, double, bool,
                                                   bool, double, int64_t, int64_t, int64_t);
  using FusedBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
      const at::Tensor&, double, double, double, double, double, bool, bool, double, int64_t, int64_t, int64_t);

  c10::TypedOperatorHandle<Ce> ce = find_op<Ce>("lossext::margin_cross_entropy");
  c10::TypedOperatorHandle<CeBackward> ce_bwd = find_op<CeBackward>("lossext::margin_cross_entropy_backward");
  c10::TypedOperatorHandle<Fused> fused = find_op<Fused>("lossext::fused_linear_margin_cross_entropy");
  c10::TypedOperatorHandle<FusedBackward> fused_bwd =
      find_op<FusedBackward>("lossext::fused_linear_margin_cross_entropy_backward");

  static const MarginOps& get() {
    static const MarginOps o;
    return o;
  }

  // -> (loss, lse)
  std::tuple<at::Tensor, at::Tensor> margin_ce(const at::Tensor& cos, const at::Tensor& target,
                                               const OptTensor& weight, const OptTensor& row_scale,
                                               const MarginOptions& o) const {
    return ce.call(cos, target, weight, row_scale, o.scale, o.m1, o.m2, o.m3, o.lambda, o.easy_margin,
                   o.label_smoothing, o.ignore_index, static_cast<int64_t>(o.reduction));
  }
  // -> (grad_cos, grad_row_scale); grad_row_scale is empty without row_scale
  std::tuple<at::Tensor, at::Tensor> margin_ce_backward(const at::Tensor& grad, const at::Tensor& cos,
                                                        const at::Tensor& target, const OptTensor& weight,
                                                        const OptTensor& row_scale, const at::Tensor& lse,
                                                        const MarginOptions& o) const {
    return ce_bwd.call(grad, cos, target, weight, row_scale, lse, o.scale, o.m1, o.m2, o.m3, o.lambda,
                       o.easy_margin, o.label_smoothing, o.ignore_index, static_cast<int64_t>(o.reduction));
  }
  // -> (loss, lse)
  std::tuple<at::Tensor, at::Tensor> fused_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& target,
                                                  const OptTensor& bias, const MarginOptions& o, bool normalize,
                                                  int64_t chunk) const {
    return fused.call(x, w, target, bias, o.scale, o.m1, o.m2, o.m3, o.lambda, o.easy_margin, normalize,
                      o.label_smoothing, o.ignore_index, static_cast<int64_t>(o.reduction), chunk);
  }
  // -> (grad_input, grad_weight, grad_bias); grad_bias is empty without bias
  std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward(
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& target,
      const OptTensor& bias, const at::Tensor& lse, const MarginOptions& o, bool normalize, int64_t chunk) const {
    return fused_bwd.call(grad, x, w, target, bias, lse, o.scale, o.m1, o.m2, o.m3, o.lambda, o.easy_margin,
                          normalize, o.label_smoothing, o.ignore_index, static_cast<int64_t>(o.reduction), chunk);
  }
};

inline void save_margin_options(torch::autograd::AutogradContext* ctx, const MarginOptions& o) {
  ctx->saved_data["margin"] = std::vector<double>{o.scale, o.m1, o.m2, o.m3, o.lambda, o.label_smoothing};
  ctx->saved_data["easy_margin"] = o.easy_margin;
  ctx->saved_data["ignore_index"] = o.ignore_index;
  ctx->saved_data["reduction"] = static_cast<int64_t>(o.reduction);
}

inline MarginOptions load_margin_options(torch::autograd::AutogradContext* ctx) {
  const auto v = ctx->saved_data["margin"].toDoubleVector();
  return MarginOptions{.scale = v[0],
                       .m1 = v[1],
                       .m2 = v[2],
                       .m3 = v[3],
                       .lambda = v[4],
                       .easy_margin = ctx->saved_data["easy_margin"].toBool(),
                       .label_smoothing = v[5],
                       .ignore_index = ctx->saved_data["ignore_index"].toInt(),
                       .reduction = static_cast<Reduction>(ctx->saved_data["reduction"].toInt())};
}

inline OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// margin_cross_entropy: differentiable in cos_logits and row_scale (the class weight takes no
// gradient: refused before the call). lse is kept for the backward, not returned.
struct MarginCrossEntropyFunction : torch::autograd::Function<MarginCrossEntropyFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& cos, const at::Tensor& target,
                            const OptTensor& weight, const OptTensor& row_scale, const MarginOptions& options) {
    auto [loss, lse] = MarginOps::get().margin_ce(cos, target, weight, row_scale, options);
    save_margin_options(ctx, options);
    ctx->save_for_backward({cos, target, weight.value_or(at::Tensor()), row_scale.value_or(at::Tensor()), lse});
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &cos = saved[0], &target = saved[1], &w = saved[2], &rs = saved[3], &lse = saved[4];
    // Edges: 0 cos_logits, 1 target, then weight and row_scale where given.
    const bool need_cos = ctx->needs_input_grad(0);
    const bool need_rs = rs.defined() && ctx->needs_input_grad(w.defined() ? 3 : 2);
    at::Tensor g_cos, g_rs;
    if (need_cos || need_rs) {
      at::NoGradGuard no_grad;
      std::tie(g_cos, g_rs) =
          MarginOps::get().margin_ce_backward(grad, cos, target, opt(w), opt(rs), lse, load_margin_options(ctx));
      if (!need_cos) g_cos = at::Tensor();
      if (!need_rs) g_rs = at::Tensor();
    }
    refuse_double_backward("lossext::margin_cross_entropy (C++ autograd)", {&grad, &cos, &rs}, {&g_cos, &g_rs});
    // One gradient per forward argument: cos_logits, target, weight, row_scale, options.
    return {g_cos, at::Tensor(), at::Tensor(), g_rs, at::Tensor()};
  }
};

inline at::Tensor apply_margin_ce(const at::Tensor& cos, const at::Tensor& target, const OptTensor& weight,
                                  const OptTensor& row_scale, const MarginOptions& options) {
  const bool needs_graph = at::GradMode::is_enabled() &&
                           (cos.requires_grad() || (row_scale.has_value() && row_scale->requires_grad()));
  if (!needs_graph) return std::get<0>(MarginOps::get().margin_ce(cos, target, weight, row_scale, options));
  return MarginCrossEntropyFunction::apply(cos, target, weight, row_scale, options);
}

// fused_linear_margin_cross_entropy: differentiable in input, weight and bias. The backward
// recomputes the logits chunk by chunk from the saved input, weight and lse.
struct FusedLinearMarginFunction : torch::autograd::Function<FusedLinearMarginFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& target, const OptTensor& bias, const MarginOptions& options,
                            bool normalize, int64_t chunk) {
    auto [loss, lse] = MarginOps::get().fused_linear(x, w, target, bias, options, normalize, chunk);
    save_margin_options(ctx, options);
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["chunk"] = chunk;
    ctx->save_for_backward({x, w, target, bias.value_or(at::Tensor()), lse});
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &target = saved[2], &b = saved[3], &lse = saved[4];
    // Edges: 0 input, 1 weight, 2 target, 3 bias (only when given).
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    const bool need_b = b.defined() && ctx->needs_input_grad(3);
    at::Tensor gx, gw, gb;
    if (need_x || need_w || need_b) {
      at::NoGradGuard no_grad;
      std::tie(gx, gw, gb) = MarginOps::get().fused_linear_backward(
          grad, x, w, target, opt(b), lse, load_margin_options(ctx), ctx->saved_data["normalize"].toBool(),
          ctx->saved_data["chunk"].toInt());
      if (!need_x) gx = at::Tensor();
      if (!need_w) gw = at::Tensor();
      if (!need_b) gb = at::Tensor();
    }
    refuse_double_backward("lossext::fused_linear_margin_cross_entropy (C++ autograd)", {&grad, &x, &w, &b},
                           {&gx, &gw, &gb});
    // One gradient per forward argument: input, weight, target, bias, options, normalize, chunk.
    return {gx, gw, at::Tensor(), gb, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The checks and the call of fused_linear_margin_cross_entropy and fused_linear_cross_entropy
// (fn and x_name: the public function and its first argument, for the messages).
inline at::Tensor fused_linear_impl(const char* fn, const char* x_name, const at::Tensor& x, const at::Tensor& w,
                                    const at::Tensor& target, const MarginOptions& options, int64_t chunk_size,
                                    bool normalize, const OptTensor& bias) {
  check_rows(fn, x_name, x, "[N, D]");
  check_rows(fn, "weight", w, "[C, D]");
  TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), fn, ": weight dtype ", w.scalar_type(), " does not match ",
                   x_name, " dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(w.device() == x.device(), fn, ": weight is on ", w.device(), " but ", x_name, " is on ",
                    x.device());
  const int64_t n = x.size(0), d = x.size(1), c = w.size(0);
  TORCH_CHECK_VALUE(w.size(1) == d, fn, ": weight [C, D] has D = ", w.size(1), " but ", x_name, " [N, D] has D = ",
                    d);
  TORCH_CHECK_VALUE(c > 0 || n == 0, fn, ": weight has no classes (shape ", w.sizes(), ")");
  const at::Tensor y = check_labels(fn, target, n, x, x_name);
  check_margin_options(fn, options);
  TORCH_CHECK_VALUE(normalize || (options.m1 == 1.0 && options.m2 == 0.0), fn,
                    ": normalize=false takes only the additive margin m3; got m1 = ", options.m1,
                    ", m2 = ", options.m2);
  TORCH_CHECK_VALUE(!(normalize && bias.has_value() && bias->defined()), fn, ": bias needs normalize=false");
  TORCH_CHECK_VALUE(chunk_size >= 0, fn, ": chunk_size must be >= 0 (0: automatic), got ", chunk_size);
  const OptTensor b = check_vector(fn, "bias", bias, c, "C", x, x_name);

  const bool needs_graph = at::GradMode::is_enabled() &&
                           (x.requires_grad() || w.requires_grad() || (b.has_value() && b->requires_grad()));
  if (!needs_graph) return std::get<0>(MarginOps::get().fused_linear(x, w, y, b, options, normalize, chunk_size));
  return FusedLinearMarginFunction::apply(x, w, y, b, options, normalize, chunk_size);
}

// The checks and the call of margin_cross_entropy and its named variants (fn: the public
// function, for the messages).
inline at::Tensor margin_ce_impl(const char* fn, const at::Tensor& cos, const at::Tensor& target,
                                 const MarginOptions& options, const OptTensor& weight, const OptTensor& feature_norm) {
  check_rows(fn, "cos_logits", cos, "[N, C]");
  const int64_t n = cos.size(0), c = cos.size(1);
  TORCH_CHECK_VALUE(c > 0 || n == 0, fn, ": cos_logits has no classes (shape ", cos.sizes(), ")");
  const at::Tensor y = check_labels(fn, target, n, cos, "cos_logits");
  check_margin_options(fn, options);
  const OptTensor w = check_vector(fn, "weight", weight, c, "C", cos, "cos_logits");
  // As torch's cross_entropy: the class weight is not differentiable (the Python package computes
  // its gradient through an unfused composite; this header does not).
  TORCH_CHECK_VALUE(!(w.has_value() && w->requires_grad() && at::GradMode::is_enabled()), fn,
                    " is not differentiable with respect to argument 'weight' (the class weights [C]); this input "
                    "cannot have requires_grad true (pass weight.detach())");
  const OptTensor rs = check_vector(fn, "feature_norm", feature_norm, n, "N", cos, "cos_logits");
  return apply_margin_ce(cos, y, w, rs, options);
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

/// Cross-entropy over cosine logits with an angular margin on the target class (SphereFace,
/// CosFace, ArcFace and their combination; the logits are in MarginOptions' comment).
/// cos_logits: [N, C] floating (cosines; clamped to [-1, 1] for the angle). target: [N] class
/// labels (int64; other integer dtypes are converted), or options.ignore_index.
/// weight: optional class weights [C], no gradient. feature_norm: optional [N] that replaces
/// options.scale per row (SphereFace's |x|); it takes a gradient.
/// Returns [N] for Reduction::None, else a scalar (Mean over no kept row is NaN).
/// Differentiable in cos_logits and feature_norm (first order only). The gradient is finite at
/// cos = +-1. float16/bfloat16 compute in float32. A label outside [0, C) that is not
/// ignore_index throws on the CPU; on CUDA its row's loss and gradient are NaN.
inline torch::Tensor margin_cross_entropy(const torch::Tensor& cos_logits, const torch::Tensor& target,
                                          const MarginOptions& options = {},
                                          const std::optional<torch::Tensor>& weight = {},
                                          const std::optional<torch::Tensor>& feature_norm = {}) {
  return detail::margin_ce_impl("lossext::margin_cross_entropy", cos_logits, target, options, weight, feature_norm);
}

/// CosFace / LMCL (Wang et al., CVPR 2018, Eq. 4): target logit scale (cos - margin).
inline torch::Tensor cosface_loss(const torch::Tensor& cos_logits, const torch::Tensor& target, double scale = 64.0,
                                  double margin = 0.35, const std::optional<torch::Tensor>& weight = {},
                                  Reduction reduction = Reduction::Mean) {
  const MarginOptions o{.scale = scale, .m3 = margin, .reduction = reduction};
  return detail::margin_ce_impl("lossext::cosface_loss", cos_logits, target, o, weight, std::nullopt);
}

/// ArcFace (Deng et al., CVPR 2019, Eq. 3): target logit scale cos(theta + margin), with
/// insightface's rule past theta + margin > pi (or easy_margin: the margin only where cos > 0).
inline torch::Tensor arcface_loss(const torch::Tensor& cos_logits, const torch::Tensor& target, double scale = 64.0,
                                  double margin = 0.5, bool easy_margin = false,
                                  const std::optional<torch::Tensor>& weight = {},
                                  Reduction reduction = Reduction::Mean) {
  const MarginOptions o{.scale = scale, .m2 = margin, .easy_margin = easy_margin, .reduction = reduction};
  return detail::margin_ce_impl("lossext::arcface_loss", cos_logits, target, o, weight, std::nullopt);
}

/// SphereFace / A-Softmax (Liu et al., CVPR 2017, Eq. 7): target psi(theta) =
/// (-1)^k cos(margin theta) - 2k, annealed as (lambda cos + psi) / (1 + lambda). With
/// feature_norm [N] (the embeddings' norms) the logits are |x| cos as in the paper; without it
/// they are scale cos (normalized features).
inline torch::Tensor sphereface_loss(const torch::Tensor& cos_logits, const torch::Tensor& target, double margin = 4.0,
                                     double lambda = 0.0, const std::optional<torch::Tensor>& feature_norm = {},
                                     double scale = 64.0, const std::optional<torch::Tensor>& weight = {},
                                     Reduction reduction = Reduction::Mean) {
  const MarginOptions o{.scale = scale, .m1 = margin, .lambda = lambda, .reduction = reduction};
  return detail::margin_ce_impl("lossext::sphereface_loss", cos_logits, target, o, weight, feature_norm);
}

/// margin_cross_entropy(normalize(embeddings) @ normalize(weight).T, target, options) without
/// ever storing the [N, C] logits: the op walks the classes in chunks of chunk_size (0: about
/// 16 MiB of logits) with an online softmax, keeps only each row's log-sum-exp and recomputes the
/// chunks in the backward. Deterministic (no atomics).
/// embeddings: [N, D]; weight: [C, D] class centres, same dtype and device; target: [N] labels.
/// normalize=false is a plain linear layer, logits scale * (x @ W.T + bias): then only the
/// additive margin m3 applies (m1 = 1, m2 = 0) and bias [C] may be given (not otherwise).
/// Differentiable in embeddings, weight and bias (first order only).
inline torch::Tensor fused_linear_margin_cross_entropy(const torch::Tensor& embeddings, const torch::Tensor& weight,
                                                       const torch::Tensor& target, const MarginOptions& options = {},
                                                       int64_t chunk_size = 0, bool normalize = true,
                                                       const std::optional<torch::Tensor>& bias = {}) {
  return detail::fused_linear_impl("lossext::fused_linear_margin_cross_entropy", "embeddings", embeddings, weight,
                                   target, options, chunk_size, normalize, bias);
}

/// cross_entropy(input @ weight.T + bias, target) without storing the [N, C] logits: the fused
/// linear cross-entropy of LLM-style training (fused_linear_margin_cross_entropy with scale 1,
/// no margin, normalize=false). input: [N, D]; weight: [C, D]; bias: optional [C].
inline torch::Tensor fused_linear_cross_entropy(const torch::Tensor& input, const torch::Tensor& weight,
                                                const torch::Tensor& target,
                                                const std::optional<torch::Tensor>& bias = {},
                                                double label_smoothing = 0.0, int64_t ignore_index = -100,
                                                Reduction reduction = Reduction::Mean, int64_t chunk_size = 0) {
  const MarginOptions o{
      .scale = 1.0, .label_smoothing = label_smoothing, .ignore_index = ignore_index, .reduction = reduction};
  return detail::fused_linear_impl("lossext::fused_linear_cross_entropy", "input", input, weight, target, o,
                                   chunk_size, /*normalize=*/false, bias);
}

}  // namespace lossext
