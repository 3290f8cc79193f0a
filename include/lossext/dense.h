// lossext dense-prediction family (header-only libtorch API): the keypoint-heatmap MSE of
// SimpleBaseline / HRNet (lib/core/loss.py JointsMSELoss, and JointsOHKMMSELoss with
// ohkm_topk), as lossext.functional.joints_mse_loss. The fused op reduces every heatmap to
// its sum of squared differences; the weight, HRNet's 0.5, the means and OHKM's top-k act on
// the [B, K] sums with ATen ops (as lossext/dense/functional.py), so autograd reaches output,
// target and a floating target_weight; first order only. Also mask_rcnn_loss, the Mask R-CNN
// mask loss (torchvision's roi_heads.maskrcnn_loss after its target projection); dice_loss
// (segmentation_models_pytorch's DiceLoss); and the stage losses of pose-guided image synthesis
// (Si et al., CVPR 2018): masked_l1_loss, pose_regression_loss and the GAN terms.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "detail/common.h"

namespace lossext {

/// Options of joints_mse_loss. ohkm_topk: std::nullopt (no mining) or k >= 1 (HRNet: 8).
struct JointsMSEOptions {
  std::optional<int64_t> ohkm_topk = std::nullopt;
  Reduction reduction = Reduction::Mean;
};

namespace detail {

struct DenseOps {
  using Sums = at::Tensor(const at::Tensor&, const at::Tensor&);
  using SumsBackward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
  c10::TypedOperatorHandle<Sums> sums = find_op<Sums>("lossext::joints_mse_sums");
  c10::TypedOperatorHandle<SumsBackward> sums_bwd = find_op<SumsBackward>("lossext::joints_mse_sums_backward");
  using Mask = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
  using MaskBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, bool);
  c10::TypedOperatorHandle<Mask> mask = find_op<Mask>("lossext::mask_bce");
  c10::TypedOperatorHandle<MaskBackward> mask_bwd = find_op<MaskBackward>("lossext::mask_bce_backward");
  using Dice = at::Tensor(const at::Tensor&, const at::Tensor&, bool, bool, std::optional<int64_t>);
  using DiceBackward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool,
                                  std::optional<int64_t>);
  c10::TypedOperatorHandle<Dice> dice = find_op<Dice>("lossext::dice_sums");
  c10::TypedOperatorHandle<DiceBackward> dice_bwd = find_op<DiceBackward>("lossext::dice_sums_backward");
  using L1 = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
  using L1Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
  c10::TypedOperatorHandle<L1> l1 = find_op<L1>("lossext::masked_l1_sums");
  c10::TypedOperatorHandle<L1Backward> l1_bwd = find_op<L1Backward>("lossext::masked_l1_sums_backward");

  static const DenseOps& get() {
    static const DenseOps o;
    return o;
  }
};

// S [B, K] = sum over each heatmap of (output - target)^2, differentiable in both.
struct JointsMseSumsFunction : torch::autograd::Function<JointsMseSumsFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& output, const at::Tensor& target) {
    ctx->save_for_backward({output, target});
    return DenseOps::get().sums.call(output, target);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    at::Tensor g_out, g_tgt;
    if (grad.defined()) {
      at::NoGradGuard no_grad;
      const at::Tensor g = DenseOps::get().sums_bwd.call(grad.contiguous(), saved[0], saved[1]);
      if (ctx->needs_input_grad(0)) g_out = g;
      if (ctx->needs_input_grad(1)) g_tgt = -g;
    }
    refuse_double_backward("lossext::joints_mse_loss (C++ autograd)", {&grad, &saved[0], &saved[1]}, {&g_out, &g_tgt});
    return {g_out, g_tgt};
  }
};

// The labelled channel's BCE per pixel (per_pixel) or per RoI, differentiable in the logits
// and the targets.
struct MaskBceFunction : torch::autograd::Function<MaskBceFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                            const at::Tensor& targets, bool per_pixel) {
    ctx->save_for_backward({logits, labels, targets});
    ctx->saved_data["per_pixel"] = per_pixel;
    return DenseOps::get().mask.call(logits, labels, targets, per_pixel);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    at::Tensor gl, gt;
    if (grad.defined()) {
      at::NoGradGuard no_grad;
      auto g = DenseOps::get().mask_bwd.call(grad.contiguous(), saved[0], saved[1], saved[2],
                                             ctx->saved_data["per_pixel"].toBool());
      if (ctx->needs_input_grad(0)) gl = std::get<0>(g);
      if (ctx->needs_input_grad(2)) gt = std::get<1>(g);
    }
    refuse_double_backward("lossext::mask_rcnn_loss (C++ autograd)", {&grad, &saved[0], &saved[2]}, {&gl, &gt});
    return {gl, at::Tensor(), gt, at::Tensor()};
  }
};

// The dice sums [B, C, 4] of logits [B, C, P], differentiable in the logits.
struct DiceSumsFunction : torch::autograd::Function<DiceSumsFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            bool multiclass, bool from_logits, std::optional<int64_t> ignore_index) {
    ctx->save_for_backward({logits, target});
    ctx->saved_data["multiclass"] = multiclass;
    ctx->saved_data["from_logits"] = from_logits;
    ctx->saved_data["ignore"] = ignore_index ? c10::IValue(*ignore_index) : c10::IValue();
    return DenseOps::get().dice.call(logits, target, multiclass, from_logits, ignore_index);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    at::Tensor g;
    if (grad.defined() && ctx->needs_input_grad(0)) {
      at::NoGradGuard no_grad;
      const c10::IValue ign = ctx->saved_data["ignore"];
      g = DenseOps::get().dice_bwd.call(grad.contiguous(), saved[0], saved[1], ctx->saved_data["multiclass"].toBool(),
                                        ctx->saved_data["from_logits"].toBool(),
                                        ign.isNone() ? std::nullopt : std::optional<int64_t>(ign.toInt()));
    }
    refuse_double_backward("lossext::dice_loss (C++ autograd)", {&grad, &saved[0]}, {&g});
    return {g, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The masked L1 sums [B, C, 4], differentiable in input and target (the mask is constant).
struct MaskedL1SumsFunction : torch::autograd::Function<MaskedL1SumsFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& target,
                            const at::Tensor& mask) {
    ctx->save_for_backward({input, target, mask});
    return DenseOps::get().l1.call(input, target, mask);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    at::Tensor gx, gy;
    if (grad.defined()) {
      at::NoGradGuard no_grad;
      const at::Tensor g = DenseOps::get().l1_bwd.call(grad.contiguous(), saved[0], saved[1], saved[2]);
      if (ctx->needs_input_grad(0)) gx = g;
      if (ctx->needs_input_grad(1)) gy = -g;
    }
    refuse_double_backward("lossext::masked_l1_loss (C++ autograd)", {&grad, &saved[0], &saved[1]}, {&gx, &gy});
    return {gx, gy, at::Tensor()};
  }
};

inline at::Tensor safe_ratio(const at::Tensor& num, const at::Tensor& den) {
  const at::Tensor nz = den != 0;
  return at::where(nz, num / at::where(nz, den, at::ones_like(den)), at::zeros_like(num));
}

// softplus(-x) (real) or softplus(x) (fake) per element ([R, P]) or per row ([R]), rows the
// first dim: the mask loss's BCE with one channel and a constant target.
inline at::Tensor softplus_terms(const at::Tensor& logits, bool real, bool per_element) {
  const int64_t R = logits.dim() > 0 ? logits.size(0) : 1;
  const at::Tensor x = logits.reshape({R, 1, -1});
  const at::Tensor labels = at::zeros({R}, logits.options().dtype(at::kLong));
  const at::Tensor t = at::full({R, x.size(2)}, real ? 1.0 : 0.0, logits.options());
  return (at::GradMode::is_enabled() && x.requires_grad()) ? MaskBceFunction::apply(x, labels, t, per_element)
                                                          : DenseOps::get().mask.call(x, labels, t, per_element);
}

}  // namespace detail

/// HRNet's keypoint-heatmap loss: per joint l_bk = 0.5 w_bk^2 MSE(output_bk, target_bk) (the
/// weight multiplies both heatmaps, so it acts as w^2); Mean: the mean over joints and batch
/// (HRNet's JointsMSELoss), Sum, or None ([B, K]). With ohkm_topk = k: per sample the k largest
/// l_bk (ties to the lower joint; k >= K takes all K) summed and divided by min(k, K), then the
/// mean (HRNet's JointsOHKMMSELoss), the sum or None ([B]). output, target: [B, K, ...] of one
/// shape; target_weight: undefined (no weighting), [B, K] or [B, K, 1].
inline torch::Tensor joints_mse_loss(const torch::Tensor& output, const torch::Tensor& target,
                                     const torch::Tensor& target_weight = {}, const JointsMSEOptions& options = {}) {
  const char* fn = "lossext::joints_mse_loss";
  detail::check_float_tensor(fn, "output", output);
  detail::check_float_tensor(fn, "target", target);
  TORCH_CHECK_VALUE(output.dim() >= 2, fn, ": output must be [B, K, ...] heatmaps, got shape ", output.sizes());
  TORCH_CHECK_VALUE(target.sizes() == output.sizes(), fn, ": target shape ", target.sizes(),
                    " does not match output shape ", output.sizes());
  TORCH_CHECK_VALUE(target.device() == output.device(), fn, ": target is on ", target.device(), " but output is on ",
                    output.device());
  TORCH_CHECK_VALUE(!options.ohkm_topk || *options.ohkm_topk >= 1, fn, ": ohkm_topk must be >= 1, got ",
                    options.ohkm_topk.value_or(0));
  detail::check_reduction(fn, options.reduction);
  const auto dtype = at::promote_types(output.scalar_type(), target.scalar_type());
  const at::Tensor x = output.to(dtype), y = target.to(dtype);
  const int64_t B = x.size(0), K = x.size(1);
  const at::Tensor sums = (at::GradMode::is_enabled() && (x.requires_grad() || y.requires_grad()))
                              ? detail::JointsMseSumsFunction::apply(x, y)
                              : detail::DenseOps::get().sums.call(x, y);
  int64_t pixels = 1;
  for (int64_t d = 2; d < x.dim(); ++d) pixels *= x.size(d);
  at::Tensor per;
  if (pixels > 0) {
    per = sums * (0.5 / static_cast<double>(pixels));
  } else {
    per = sums * 0.0 + std::numeric_limits<double>::quiet_NaN();
  }
  if (target_weight.defined()) {
    TORCH_CHECK_VALUE((target_weight.dim() == 2 || (target_weight.dim() == 3 && target_weight.size(2) == 1)) &&
                          target_weight.size(0) == B && target_weight.size(1) == K,
                      fn, ": target_weight must have shape [", B, ", ", K, "] or [", B, ", ", K, ", 1], got ",
                      target_weight.sizes());
    TORCH_CHECK_VALUE(target_weight.device() == output.device(), fn, ": target_weight is on ", target_weight.device(),
                      " but output is on ", output.device());
    const at::Tensor w = target_weight.reshape({B, K}).to(sums.scalar_type());
    per = pixels > 0 ? per * (w * w) : per + w * 0.0;
  }
  if (options.ohkm_topk) {
    const int64_t k = std::min<int64_t>(*options.ohkm_topk, K);
    const at::Tensor top = std::get<0>(at::sort(per, /*stable=*/true, /*dim=*/1, /*descending=*/true)).narrow(1, 0, k);
    per = k > 0 ? top.sum(1) / static_cast<double>(k) : per.sum(1) * std::numeric_limits<double>::quiet_NaN();
  }
  at::Tensor out;
  switch (options.reduction) {
    case Reduction::None: out = per; break;
    case Reduction::Sum: out = per.sum(); break;
    default: out = per.mean();
  }
  return out.to(dtype);
}

/// The Mask R-CNN mask loss (He et al., ICCV 2017): the binary cross-entropy with logits of each
/// RoI's labelled channel, mask_logits [R, C, M, M] (not gathered into a new tensor), labels [R]
/// (integer, in [0, C)), mask_targets [R, M, M] binary or soft; Mean over R M M (torchvision's),
/// Sum, or None (per pixel, [R, M, M]). No RoIs: a zero attached to the graph (torchvision's
/// mask_logits.sum() * 0). A bad label throws on the CPU; on CUDA its RoI's values are NaN.
inline torch::Tensor mask_rcnn_loss(const torch::Tensor& mask_logits, const torch::Tensor& labels,
                                    const torch::Tensor& mask_targets, Reduction reduction = Reduction::Mean) {
  const char* fn = "lossext::mask_rcnn_loss";
  detail::check_float_tensor(fn, "mask_logits", mask_logits);
  detail::check_float_tensor(fn, "mask_targets", mask_targets);
  TORCH_CHECK_VALUE(mask_logits.dim() >= 2 && mask_logits.size(1) > 0, fn,
                    ": mask_logits must be [R, C, ...] with C >= 1, got shape ", mask_logits.sizes());
  TORCH_CHECK_TYPE(!labels.is_floating_point() && !labels.is_complex() && labels.scalar_type() != at::kBool, fn,
                   ": labels must be an integer tensor, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == mask_logits.size(0), fn, ": labels must have shape [",
                    mask_logits.size(0), "], got ", labels.sizes());
  detail::check_reduction(fn, reduction);
  const auto dtype = at::promote_types(mask_logits.scalar_type(), mask_targets.scalar_type());
  const at::Tensor x = mask_logits.to(dtype), t = mask_targets.to(dtype), l = labels.to(at::kLong);
  const bool per_pixel = reduction == Reduction::None;
  const at::Tensor out = (at::GradMode::is_enabled() && (x.requires_grad() || t.requires_grad()))
                             ? detail::MaskBceFunction::apply(x, l, t, per_pixel)
                             : detail::DenseOps::get().mask.call(x, l, t, per_pixel);
  if (per_pixel) return out;
  const int64_t pixels = t.numel();
  if (pixels == 0) return (out.sum() * 0.0).to(dtype);
  const at::Tensor total = out.sum();
  return (reduction == Reduction::Mean ? total / static_cast<double>(pixels) : total).to(dtype);
}

/// Options of dice_loss, segmentation_models_pytorch's DiceLoss arguments. mode: Binary, Multiclass
/// or Multilabel; semimetric: smp >= 0.4's score (default) or false for smp <= 0.3.4's classic one.
struct DiceOptions {
  enum class Mode { Binary, Multiclass, Multilabel };
  Mode mode = Mode::Multiclass;
  std::vector<int64_t> classes = {};  // empty: every class
  bool log_loss = false;
  bool from_logits = true;
  double smooth = 0.0;
  double eps = 1e-7;
  std::optional<int64_t> ignore_index = std::nullopt;
  std::vector<double> class_weights = {};  // empty: the plain mean
  bool semimetric = true;
};

/// The dice loss as lossext.functional.dice_loss: per class the sums over batch and pixels
/// S_p, S_t, S_pt, S_|p-t| (pixels not ignored); semimetric: I = (S_p + S_t - S_|p-t|) / 2,
/// D = (I + smooth) / max((S_p + S_t) / 2 + smooth, eps); classic: D = (2 S_pt + smooth) /
/// max(S_p + S_t + smooth, eps); loss 1 - D (or -log max(D, eps)), 0 for a class without target
/// pixels, then the mean over the classes kept (or weighted by class_weights). logits [B, C, ...]
/// (binary: [B, 1, ...] or [B, ...]); target: [B, ...] integer labels (multiclass) or the logits'
/// shape. Differentiable in the logits only.
inline torch::Tensor dice_loss(const torch::Tensor& logits, const torch::Tensor& target, const DiceOptions& o = {}) {
  const char* fn = "lossext::dice_loss";
  detail::check_float_tensor(fn, "logits", logits);
  TORCH_CHECK_VALUE(logits.dim() >= 2 || (o.mode == DiceOptions::Mode::Binary && logits.dim() >= 1), fn,
                    ": logits must be [B, C, ...], got shape ", logits.sizes());
  TORCH_CHECK_VALUE(target.dim() >= 1 && target.size(0) == logits.size(0), fn,
                    ": target must have the batch size of logits first, got shape ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), fn, ": target is on ", target.device(), " but logits is on ",
                    logits.device());
  TORCH_CHECK_VALUE(o.smooth >= 0.0 && std::isfinite(o.smooth), fn, ": smooth must be finite and >= 0, got ", o.smooth);
  detail::check_positive(fn, "eps", o.eps);
  TORCH_CHECK_VALUE(!target.requires_grad(), fn, ": target must not require grad");
  const int64_t B = logits.size(0);
  const bool multiclass = o.mode == DiceOptions::Mode::Multiclass;
  at::Tensor x, t;
  if (o.mode == DiceOptions::Mode::Binary) {
    TORCH_CHECK_VALUE(o.classes.empty() && o.class_weights.empty(), fn,
                      ": classes and class_weights cannot be used with the binary mode");
    TORCH_CHECK_VALUE(logits.numel() == target.numel(), fn, ": target has shape ", target.sizes(),
                      " but binary logits have shape ", logits.sizes());
    x = logits.reshape({B, 1, -1});
    t = target.reshape({B, 1, -1}).to(logits.scalar_type());
  } else if (multiclass) {
    TORCH_CHECK_TYPE(!target.is_floating_point() && !target.is_complex() && target.scalar_type() != at::kBool, fn,
                     ": the multiclass mode needs integer class labels as target, got ", target.scalar_type());
    std::vector<int64_t> want{B};
    for (int64_t d = 2; d < logits.dim(); ++d) want.push_back(logits.size(d));
    TORCH_CHECK_VALUE(target.sizes() == at::IntArrayRef(want), fn, ": target must have shape ", at::IntArrayRef(want),
                      ", got ", target.sizes());
    x = logits.reshape({B, logits.size(1), -1});
    t = target.reshape({B, -1}).to(at::kLong);
  } else {
    TORCH_CHECK_VALUE(target.sizes() == logits.sizes(), fn, ": target must have the logits' shape ", logits.sizes(),
                      " in the multilabel mode, got ", target.sizes());
    x = logits.reshape({B, logits.size(1), -1});
    t = target.reshape({B, logits.size(1), -1}).to(logits.scalar_type());
  }
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(C > 0, fn, ": logits have no classes");
  for (int64_t c : o.classes)
    TORCH_CHECK_INDEX(c >= -C && c < C, fn, ": classes has value ", c, ", outside [0, ", C, ")");
  TORCH_CHECK_VALUE(o.class_weights.empty() || static_cast<int64_t>(o.class_weights.size()) == C, fn,
                    ": class_weights must have ", C, " values, got ", o.class_weights.size());
  const at::Tensor sums = ((at::GradMode::is_enabled() && x.requires_grad())
                               ? detail::DiceSumsFunction::apply(x, t, multiclass, o.from_logits, o.ignore_index)
                               : detail::DenseOps::get().dice.call(x, t, multiclass, o.from_logits, o.ignore_index))
                              .sum(0);
  const at::Tensor Sp = sums.select(1, 0), St = sums.select(1, 1), Spt = sums.select(1, 2), Sabs = sums.select(1, 3);
  at::Tensor score;
  if (o.semimetric) {
    score = ((Sp + St - Sabs) * 0.5 + o.smooth) / ((Sp + St) * 0.5 + o.smooth).clamp_min(o.eps);
  } else {
    score = (Spt * 2.0 + o.smooth) / (Sp + St + o.smooth).clamp_min(o.eps);
  }
  at::Tensor loss = o.log_loss ? -at::log(score.clamp_min(o.eps)) : 1.0 - score;
  loss = loss * (St > 0).to(loss.scalar_type());
  const auto idx = at::tensor(o.classes, at::TensorOptions().dtype(at::kLong)).to(loss.device());
  if (!o.classes.empty()) loss = loss.index_select(0, (idx + C) % C);
  if (!o.class_weights.empty()) {
    at::Tensor w = at::tensor(o.class_weights, at::TensorOptions().dtype(at::kDouble)).to(loss.options());
    if (!o.classes.empty()) w = w.index_select(0, (idx + C) % C);
    return ((loss * w).sum() / w.sum()).to(logits.scalar_type());
  }
  return loss.mean().to(logits.scalar_type());
}

/// Stage II's foreground and background L1 terms (Si et al., CVPR 2018) in one pass:
/// (sum |x - y| M / sum M, sum |x - y| (1 - M) / sum (1 - M)), the mask [B, C, ...], [B, 1, ...] or
/// [B, ...] (broadcast over channels, counted once per pixel); an empty side gives 0.
inline std::tuple<torch::Tensor, torch::Tensor> masked_l1_loss(const torch::Tensor& input, const torch::Tensor& target,
                                                               const torch::Tensor& mask) {
  const char* fn = "lossext::masked_l1_loss";
  detail::check_float_tensor(fn, "input", input);
  detail::check_float_tensor(fn, "target", target);
  TORCH_CHECK_VALUE(input.dim() >= 2, fn, ": input must be [B, C, ...], got shape ", input.sizes());
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(), fn, ": target shape ", target.sizes(), " does not match input shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(!mask.requires_grad(), fn, ": mask must not require grad");
  const auto dtype = at::promote_types(input.scalar_type(), target.scalar_type());
  const at::Tensor x = input.to(dtype), y = target.to(dtype);
  at::Tensor m = mask.dim() == input.dim() - 1 ? mask.unsqueeze(1) : mask;
  bool ok = m.dim() == x.dim() && m.size(0) == x.size(0) && (m.size(1) == 1 || m.size(1) == x.size(1));
  for (int64_t d = 2; ok && d < x.dim(); ++d) ok = m.size(d) == x.size(d);
  TORCH_CHECK_VALUE(ok, fn, ": mask must have shape ", input.sizes(), ", [B, 1, ...] or [B, ...], got ", mask.sizes());
  m = m.to(dtype);
  const at::Tensor s = ((at::GradMode::is_enabled() && (x.requires_grad() || y.requires_grad()))
                            ? detail::MaskedL1SumsFunction::apply(x, y, m)
                            : detail::DenseOps::get().l1.call(x, y, m))
                           .sum(at::IntArrayRef{0, 1});
  return {detail::safe_ratio(s[0], s[2]).to(dtype), detail::safe_ratio(s[1], s[3]).to(dtype)};
}

/// Stage I's pose regression loss: per sample sum (pred - target)^2, then Mean (over samples),
/// Sum (the paper's) or None ([B]).
inline torch::Tensor pose_regression_loss(const torch::Tensor& pred, const torch::Tensor& target,
                                          Reduction reduction = Reduction::Mean) {
  const char* fn = "lossext::pose_regression_loss";
  detail::check_float_tensor(fn, "pred", pred);
  detail::check_float_tensor(fn, "target", target);
  TORCH_CHECK_VALUE(pred.dim() >= 1 && target.sizes() == pred.sizes(), fn, ": target shape ", target.sizes(),
                    " does not match pred shape ", pred.sizes());
  detail::check_reduction(fn, reduction);
  const auto dtype = at::promote_types(pred.scalar_type(), target.scalar_type());
  const int64_t B = pred.size(0);
  const at::Tensor x = pred.to(dtype).reshape({B, 1, -1}), y = target.to(dtype).reshape({B, 1, -1});
  const at::Tensor per = ((at::GradMode::is_enabled() && (x.requires_grad() || y.requires_grad()))
                              ? detail::JointsMseSumsFunction::apply(x, y)
                              : detail::DenseOps::get().sums.call(x, y))
                             .reshape({B});
  if (reduction == Reduction::None) return per.to(dtype);
  return (reduction == Reduction::Sum ? per.sum() : per.mean()).to(dtype);
}

/// The GAN loss from logits: softplus(-x) (-log D, target_is_real) or softplus(x) (-log(1 - D)),
/// never through probabilities; Mean over all elements, Sum, or None.
inline torch::Tensor adversarial_loss(const torch::Tensor& logits, bool target_is_real,
                                      Reduction reduction = Reduction::Mean) {
  const char* fn = "lossext::adversarial_loss";
  detail::check_float_tensor(fn, "logits", logits);
  detail::check_reduction(fn, reduction);
  if (reduction == Reduction::None) return detail::softplus_terms(logits, target_is_real, true).reshape(logits.sizes());
  const at::Tensor total = detail::softplus_terms(logits, target_is_real, false).sum();
  return (reduction == Reduction::Sum ? total : total / static_cast<double>(logits.numel())).to(logits.scalar_type());
}

/// The generator's non-saturating loss, -log D(fake).
inline torch::Tensor gan_generator_loss(const torch::Tensor& fake_logits, Reduction reduction = Reduction::Mean) {
  return adversarial_loss(fake_logits, true, reduction);
}

/// The discriminator's loss, -log D(real) - log(1 - D(fake)) (no 0.5).
inline torch::Tensor gan_discriminator_loss(const torch::Tensor& real_logits, const torch::Tensor& fake_logits,
                                            Reduction reduction = Reduction::Mean) {
  TORCH_CHECK_VALUE(reduction != Reduction::None || real_logits.sizes() == fake_logits.sizes(),
                    "lossext::gan_discriminator_loss: Reduction::None needs real_logits and fake_logits of one shape");
  return adversarial_loss(real_logits, true, reduction) + adversarial_loss(fake_logits, false, reduction);
}

}  // namespace lossext
