// lossext margin-softmax family (header-only libtorch API): cross-entropy with an angular margin
// on the target class, SphereFace / A-Softmax (Liu et al., CVPR 2017), CosFace / LMCL (Wang et
// al., CVPR 2018), ArcFace (Deng et al., CVPR 2019) and their combination: margin_cross_entropy,
// cosface_loss, arcface_loss, sphereface_loss, fused_linear_margin_cross_entropy and
// fused_linear_cross_entropy, with their parameters in MarginOptions. The autograd wrappers are
// lossext/margin/ops.py's.
//
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
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "detail/common.h"
#include "detail/rowwise.h"

namespace lossext {

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

namespace detail {

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

// The operators of the margin family, found once (on first use) in the dispatcher, called with
// MarginOptions (margin_schema.cpp's argument order).
struct MarginOps {
  // lambda_ is Tensor? in the schemas (None: 0; else a 0-dim float64 tensor on the input's device)
  using Ce = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                                const OptTensor&, double, double, double, double, const OptTensor&,
                                                bool, double, int64_t, int64_t);
  using CeBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const OptTensor&, const OptTensor&, const at::Tensor&,
                                                        double, double, double, double, const OptTensor&, bool,
                                                        double, int64_t, int64_t);
  using Fused = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const OptTensor&, double, double, double, double, const OptTensor&,
                                                   bool, bool, double, int64_t, int64_t, int64_t);
  using FusedBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
      const at::Tensor&, double, double, double, double, const OptTensor&, bool, bool, double, int64_t, int64_t,
      int64_t);

  c10::TypedOperatorHandle<Ce> ce = find_op<Ce>("lossext::margin_cross_entropy");
  c10::TypedOperatorHandle<CeBackward> ce_bwd = find_op<CeBackward>("lossext::margin_cross_entropy_backward");
  c10::TypedOperatorHandle<Fused> fused = find_op<Fused>("lossext::fused_linear_margin_cross_entropy");
  c10::TypedOperatorHandle<FusedBackward> fused_bwd =
      find_op<FusedBackward>("lossext::fused_linear_margin_cross_entropy_backward");

  static const MarginOps& get() {
    static const MarginOps o;
    return o;
  }

  // The ops' lambda_ argument from MarginOptions::lambda: None for 0, else a 0-dim float64
  // tensor on like's device (a fill, no host sync).
  static OptTensor lambda_arg(const MarginOptions& o, const at::Tensor& like) {
    if (o.lambda == 0.0) return std::nullopt;
    return at::full({}, o.lambda, at::TensorOptions().dtype(at::kDouble).device(like.device()));
  }

  // -> (loss, lse)
  std::tuple<at::Tensor, at::Tensor> margin_ce(const at::Tensor& cos, const at::Tensor& target,
                                               const OptTensor& weight, const OptTensor& row_scale,
                                               const MarginOptions& o) const {
    return ce.call(cos, target, weight, row_scale, o.scale, o.m1, o.m2, o.m3, lambda_arg(o, cos), o.easy_margin,
                   o.label_smoothing, o.ignore_index, static_cast<int64_t>(o.reduction));
  }
  // -> (grad_cos, grad_row_scale); grad_row_scale is empty without row_scale
  std::tuple<at::Tensor, at::Tensor> margin_ce_backward(const at::Tensor& grad, const at::Tensor& cos,
                                                        const at::Tensor& target, const OptTensor& weight,
                                                        const OptTensor& row_scale, const at::Tensor& lse,
                                                        const MarginOptions& o) const {
    return ce_bwd.call(grad, cos, target, weight, row_scale, lse, o.scale, o.m1, o.m2, o.m3, lambda_arg(o, cos),
                       o.easy_margin, o.label_smoothing, o.ignore_index, static_cast<int64_t>(o.reduction));
  }
  // -> (loss, lse); the loss is float32 for float16/bfloat16 inputs (else the input's dtype)
  std::tuple<at::Tensor, at::Tensor> fused_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& target,
                                                  const OptTensor& bias, const MarginOptions& o, bool normalize,
                                                  int64_t chunk) const {
    return fused.call(x, w, target, bias, o.scale, o.m1, o.m2, o.m3, lambda_arg(o, x), o.easy_margin, normalize,
                      o.label_smoothing, o.ignore_index, static_cast<int64_t>(o.reduction), chunk);
  }
  // -> (grad_input, grad_weight, grad_bias); grad_bias is empty without bias. grad: the loss's
  // dtype (for float16/bfloat16 inputs float32, or the input's dtype)
  std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward(
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& target,
      const OptTensor& bias, const at::Tensor& lse, const MarginOptions& o, bool normalize, int64_t chunk) const {
    return fused_bwd.call(grad, x, w, target, bias, lse, o.scale, o.m1, o.m2, o.m3, lambda_arg(o, x), o.easy_margin,
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
  at::Tensor loss = needs_graph ? FusedLinearMarginFunction::apply(x, w, y, b, options, normalize, chunk_size)
                                : std::get<0>(MarginOps::get().fused_linear(x, w, y, b, options, normalize, chunk_size));
  // The op's loss is float32 for float16/bfloat16 inputs; outside autocast it is returned in the
  // input's dtype (as lossext.margin.functional does), under autocast in float32.
  if (loss.scalar_type() != x.scalar_type() && !at::autocast::is_autocast_enabled(x.device().type()))
    loss = loss.to(x.scalar_type());
  return loss;
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
/// 16 MiB of logits on the CPU, 256 MiB on CUDA) with an online softmax, keeps only each row's log-sum-exp and recomputes the
/// chunks in the backward. Deterministic (no atomics).
/// embeddings: [N, D]; weight: [C, D] class centres, same dtype and device; target: [N] labels.
/// normalize=false is a plain linear layer, logits scale * (x @ W.T + bias): then only the
/// additive margin m3 applies (m1 = 1, m2 = 0) and bias [C] may be given (not otherwise).
/// float16/bfloat16: the matmuls run in that dtype, the softmax and the row statistics in
/// float32/float64; the loss is returned in the input's dtype, or in float32 (not rounded to
/// the input dtype) while at::autocast is enabled for the input's device.
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
