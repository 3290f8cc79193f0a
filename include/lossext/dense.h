// lossext dense-prediction family (header-only libtorch API): the keypoint-heatmap MSE of
// SimpleBaseline / HRNet (lib/core/loss.py JointsMSELoss, and JointsOHKMMSELoss with
// ohkm_topk), as lossext.functional.joints_mse_loss. The fused op reduces every heatmap to
// its sum of squared differences; the weight, HRNet's 0.5, the means and OHKM's top-k act on
// the [B, K] sums with ATen ops (as lossext/dense/functional.py), so autograd reaches output,
// target and a floating target_weight; first order only. Also mask_rcnn_loss, the Mask R-CNN
// mask loss (torchvision's roi_heads.maskrcnn_loss after its target projection).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

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

}  // namespace lossext
