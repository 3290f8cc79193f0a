// lossext detection family (header-only libtorch API): the sigmoid and softmax focal losses
// (Lin et al., ICCV 2017), the IoU-family box losses (IoU, GIoU, DIoU, CIoU) and the YOLOv2
// region loss (darknet's [region] layer): sigmoid_focal_loss, softmax_focal_loss, box_iou_loss
// (BoxIouMode), yolov2_region_loss / yolov2_region_loss_with_stats (RegionOptions, RegionStat),
// and SSD's and RefineDet's multibox losses: match_priors (Matching), ssd_multibox_loss and
// refinedet_multibox_loss (MultiboxOptions).
// The autograd wrappers are lossext/detection/ops.py's; sigmoid_focal_loss is element-wise, on
// detail/pointwise.h's wrapper.
//
//   - gradients: sigmoid_focal_loss to inputs, targets and weight; softmax_focal_loss to the
//     logits only (alpha and weight are per-class constants); box_iou_loss to both box tensors;
//     yolov2_region_loss to the head's output only; the multibox losses to their heads only
//     (RefineDet's ODM treats the ARM heads as constants). First order only: differentiating a
//     gradient taken with create_graph=true throws c10::NotImplementedError;
//   - reduction Mean: sigmoid_focal_loss over all elements, softmax_focal_loss over the rows not
//     ignored, box_iou_loss over the boxes (0 for no boxes), yolov2_region_loss over the images, the
//     multibox losses over max(positives in the batch, 1) (Caffe's VALID normalization).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "detail/common.h"
#include "detail/pointwise.h"
#include "detail/rowwise.h"

namespace lossext {

/// box_iou_loss's loss (the op's mode: 0 iou, 1 giou, 2 diou, 3 ciou).
enum class BoxIouMode : int64_t {
  IoU = 0,   ///< 1 - IoU
  GIoU = 1,  ///< 1 - IoU + (|C| - |A u B|) / |C|, C the enclosing box (Rezatofighi et al., CVPR 2019)
  DIoU = 2,  ///< 1 - IoU + rho^2 / c^2, centre distance over the enclosing diagonal (Zheng et al., AAAI 2020)
  CIoU = 3,  ///< DIoU + alpha v, the aspect-ratio term (alpha a constant, as torchvision's)
};

/// Parameters of yolov2_region_loss: the YOLOv2-VOC configuration's (cfg/yolo-voc.cfg), as the
/// Python function's defaults. An aggregate; with C++20 designated initializers (declaration order):
///   lossext::RegionOptions{.object_scale = 5, .thresh = 0.5, .reduction = lossext::Reduction::Sum}
struct RegionOptions {
  double object_scale = 5.0;        ///< objectness at each truth's anchor (>= 0)
  double noobject_scale = 1.0;      ///< objectness to 0 at every other anchor (>= 0)
  double class_scale = 1.0;         ///< the softmax cross-entropy at the truths' anchors (>= 0)
  double coord_scale = 1.0;         ///< the box terms (>= 0), times (2 - w h) with scale_coord_by_size
  double thresh = 0.6;              ///< no no-object term where the decoded box has IoU > thresh with a truth
  bool rescore = true;              ///< objectness target: the IoU of the decoded box (a constant), else 1
  bool bias_match = true;           ///< match truths to anchors by the anchors' shape, else the predicted w, h
  int64_t seen = 0;                 ///< images trained on so far (darknet's counter, >= 0)
  int64_t warmup_images = 12800;    ///< the prior-box term (scale 0.01) while seen < warmup_images (>= 0)
  bool scale_coord_by_size = true;  ///< coord_scale (2 - w h) (pjreddie), else coord_scale (AlexeyAB)
  Reduction reduction = Reduction::Mean;  ///< Mean: sum / B; Sum: darknet's per-layer sum; None: per image [B]
};

/// The slots of yolov2_region_loss_with_stats's stats [7] (Python's RegionStats fields), e.g.
/// stats[lossext::RegionStat::AvgIou]. Averages over no truth are 0.
struct RegionStat {
  enum : int64_t {
    AvgIou = 0,       ///< mean IoU of each truth with its anchor's decoded box
    Recall = 1,       ///< fraction of the truths with that IoU > 0.5
    AvgObj = 2,       ///< mean sigmoid(to) at the truths' anchors
    AvgAnyObj = 3,    ///< mean sigmoid(to) over every anchor of every image
    AvgCat = 4,       ///< mean softmax probability of each truth's class at its anchor
    Count = 5,        ///< the number of truths (non-padding rows)
    DarknetCost = 6,  ///< sum of darknet's delta^2 (what darknet prints as the cost; not the loss)
  };
};

/// match_priors' rule (the op's matching: 0, 1).
enum class Matching : int64_t {
  Bipartite = 0,   ///< the authors' Caffe MatchBBox: greedy bipartite, then per prediction (IoU >= threshold)
  SsdPytorch = 1,  ///< amdegroot/ssd.pytorch's match: each truth forced onto its best prior, then IoU >= threshold
};

/// Parameters of ssd_multibox_loss and refinedet_multibox_loss (the Python functions' defaults:
/// the authors' training configurations). With C++20 designated initializers (declaration order):
///   lossext::MultiboxOptions{.neg_pos_ratio = 2, .reduction = lossext::Reduction::Sum}
struct MultiboxOptions {
  double overlap_thresh = 0.5;     ///< a prior with IoU >= this takes its best truth ([0, 1])
  double neg_pos_ratio = 3.0;      ///< at most floor(ratio * positives) hard negatives per image (>= 0)
  double neg_overlap = 0.5;        ///< a negative's best IoU must be < this (not NaN)
  double variance_center = 0.1;    ///< the center offsets' variance (> 0)
  double variance_size = 0.2;      ///< the log-size offsets' variance (> 0)
  Matching matching = Matching::Bipartite;  ///< SSD only (RefineDet: the authors' bipartite rule)
  double objectness_thresh = 0.01; ///< RefineDet only: an ODM negative needs ARM objectness >= this (not NaN)
  Reduction reduction = Reduction::Mean;    ///< Mean: over max(positives, 1); Sum; None: per image [B]
};

namespace detail {

// ---- sigmoid focal loss: the element-wise pattern ------------------------------------------

// one_pass: lossext/detection/ops.py's SIGMOID_FOCAL_ONE_PASS (benchmarks/RESULTS.md, detection).
struct SigmoidFocalLoss {
  static constexpr size_t num_params = 2;
  static constexpr bool one_pass = true;
  static const PointwiseOps<2>& ops() {
    static const PointwiseOps<2> o("lossext::sigmoid_focal_loss", /*has_target_backward=*/true);
    return o;
  }
};

// ---- the other ops of the family -----------------------------------------------------------

struct DetectionOps {
  using T = const at::Tensor&;
  using Box = at::Tensor(T, T, int64_t, double, int64_t);
  using BoxBackward = std::tuple<at::Tensor, at::Tensor>(T, T, T, int64_t, double, int64_t);
  using Focal = at::Tensor(T, T, const OptTensor&, const OptTensor&, double, int64_t, int64_t);
  using FocalBackward = at::Tensor(T, T, T, const OptTensor&, const OptTensor&, double, int64_t, int64_t);
  using Region = std::tuple<at::Tensor, at::Tensor, at::Tensor>(T, T, T, int64_t, double, double, double, double,
                                                                double, bool, bool, T, bool);
  using RegionBackward = at::Tensor(T, T, T);
  using Match = std::tuple<at::Tensor, at::Tensor>(T, T, double, int64_t);
  using Multibox = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      T, T, T, T, const OptTensor&, const OptTensor&, double, double, double, double, double, int64_t, double, bool);
  using MultiboxBackward = std::tuple<at::Tensor, at::Tensor>(T, T, T, T, T, T);

  c10::TypedOperatorHandle<Box> box = find_op<Box>("lossext::box_iou_loss");
  c10::TypedOperatorHandle<BoxBackward> box_bwd = find_op<BoxBackward>("lossext::box_iou_loss_backward");
  c10::TypedOperatorHandle<Focal> focal = find_op<Focal>("lossext::softmax_focal_loss");
  c10::TypedOperatorHandle<FocalBackward> focal_bwd = find_op<FocalBackward>("lossext::softmax_focal_loss_backward");
  c10::TypedOperatorHandle<Region> region = find_op<Region>("lossext::yolov2_region_loss");
  c10::TypedOperatorHandle<RegionBackward> region_bwd =
      find_op<RegionBackward>("lossext::yolov2_region_loss_backward");
  c10::TypedOperatorHandle<Match> match = find_op<Match>("lossext::match_priors");
  c10::TypedOperatorHandle<Multibox> multibox = find_op<Multibox>("lossext::multibox_loss");
  c10::TypedOperatorHandle<MultiboxBackward> multibox_bwd =
      find_op<MultiboxBackward>("lossext::multibox_loss_backward");

  static const DetectionOps& get() {
    static const DetectionOps o;
    return o;
  }

  // yolov2_region_loss -> (per-image loss [B], d(sum)/d output, stats [7])
  std::tuple<at::Tensor, at::Tensor, at::Tensor> region_loss(const at::Tensor& output, const at::Tensor& targets,
                                                             const at::Tensor& anchors, int64_t num_classes,
                                                             const RegionOptions& o,
                                                             const at::Tensor& prior_scale) const {
    return region.call(output, targets, anchors, num_classes, o.object_scale, o.noobject_scale, o.class_scale,
                       o.coord_scale, o.thresh, o.rescore, o.bias_match, prior_scale, o.scale_coord_by_size);
  }
};

// gamma in [0, inf) (NaN refused).
inline void check_gamma(const char* fn, double gamma) {
  TORCH_CHECK_VALUE(gamma >= 0.0 && std::isfinite(gamma), fn, ": gamma must be in [0, inf), got ", gamma);
}

// A scale in [0, inf).
inline void check_scale(const char* fn, const char* name, double v) {
  TORCH_CHECK_VALUE(v >= 0.0 && std::isfinite(v), fn, ": ", name, " must be in [0, inf), got ", v);
}

// box_iou_loss: differentiable in both box tensors (already broadcast to one shape).
struct BoxIouFunction : torch::autograd::Function<BoxIouFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& b1, const at::Tensor& b2,
                            int64_t mode, double eps, int64_t reduction) {
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({b1, b2});
    return DetectionOps::get().box.call(b1, b2, mode, eps, reduction);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    at::Tensor g1, g2;
    {
      at::NoGradGuard no_grad;
      std::tie(g1, g2) = DetectionOps::get().box_bwd.call(grad, s[0], s[1], ctx->saved_data["mode"].toInt(),
                                                          ctx->saved_data["eps"].toDouble(),
                                                          ctx->saved_data["reduction"].toInt());
    }
    if (!ctx->needs_input_grad(0)) g1 = at::Tensor();
    if (!ctx->needs_input_grad(1)) g2 = at::Tensor();
    refuse_double_backward("lossext::box_iou_loss (C++ autograd)", {&grad, &s[0], &s[1]}, {&g1, &g2});
    // One gradient per forward argument: boxes1, boxes2, mode, eps, reduction.
    return {g1, g2, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// softmax_focal_loss: differentiable in the logits (alpha and weight: constants, detached).
struct SoftmaxFocalFunction : torch::autograd::Function<SoftmaxFocalFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            const OptTensor& alpha, const OptTensor& weight, double gamma, int64_t ignore_index,
                            int64_t reduction) {
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({logits, target, alpha.value_or(at::Tensor()), weight.value_or(at::Tensor())});
    return DetectionOps::get().focal.call(logits, target, alpha, weight, gamma, ignore_index, reduction);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    at::Tensor g;
    if (ctx->needs_input_grad(0)) {
      at::NoGradGuard no_grad;
      g = DetectionOps::get().focal_bwd.call(grad, s[0], s[1], opt(s[2]), opt(s[3]),
                                             ctx->saved_data["gamma"].toDouble(),
                                             ctx->saved_data["ignore_index"].toInt(),
                                             ctx->saved_data["reduction"].toInt());
    }
    refuse_double_backward("lossext::softmax_focal_loss (C++ autograd)", {&grad, &s[0]}, {&g});
    // One gradient per forward argument: logits, target, alpha, weight, gamma, ignore_index, reduction.
    return {g, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// yolov2_region_loss: differentiable in the head's output. Returns {per-image loss [B], stats [7]}
// (stats not differentiable). The forward's op writes d(sum of the losses)/d output; the
// backward op scales it per image by grad_output [B].
struct RegionLossFunction : torch::autograd::Function<RegionLossFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& output,
                                                const at::Tensor& targets, const at::Tensor& anchors,
                                                const at::Tensor& prior_scale, int64_t num_classes,
                                                const RegionOptions& o) {
    auto [loss, grad, stats] = DetectionOps::get().region_loss(output, targets, anchors, num_classes, o, prior_scale);
    ctx->mark_non_differentiable({stats});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({grad, output});
    return {loss, stats};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor g_loss = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    at::Tensor g;
    if (g_loss.defined() && ctx->needs_input_grad(0)) {
      at::NoGradGuard no_grad;
      g = DetectionOps::get().region_bwd.call(g_loss, s[0], s[1]);
    }
    refuse_double_backward("lossext::yolov2_region_loss (C++ autograd)", {&g_loss, &s[1]}, {&g});
    // One gradient per forward argument: output, targets, anchors, prior_scale, num_classes, options.
    return {g, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// boxes [..., 4], real; integer boxes converted to float32 (as torchvision's _upcast_non_float).
inline at::Tensor check_boxes(const char* fn, const char* name, const at::Tensor& boxes) {
  TORCH_CHECK_VALUE(boxes.defined(), fn, ": ", name, " must be a defined tensor");
  TORCH_CHECK_TYPE(boxes.scalar_type() != at::kBool && !boxes.is_complex(), fn, ": ", name,
                   " must be real boxes, got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.dim() > 0 && boxes.size(-1) == 4, fn, ": ", name,
                    " must have shape [..., 4] (x1, y1, x2, y2), got ", boxes.sizes());
  return boxes.is_floating_point() ? boxes : boxes.to(at::kFloat);
}

// Integer class indices [N, d...] (logits' shape without dim 1) on the logits' device, as int64.
inline at::Tensor check_focal_target(const char* fn, const at::Tensor& target, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(target.defined(), fn, ": target must be a defined tensor");
  const at::ScalarType t = target.scalar_type();
  TORCH_CHECK_TYPE(t == at::kLong || t == at::kInt || t == at::kShort || t == at::kChar || t == at::kByte, fn,
                   ": target must be integer class indices (int64, int32, int16, int8 or uint8), got ", t);
  std::vector<int64_t> want{logits.size(0)};
  for (int64_t d = 2; d < logits.dim(); ++d) want.push_back(logits.size(d));
  TORCH_CHECK_VALUE(target.sizes() == at::IntArrayRef(want), fn, ": target must have shape ", at::IntArrayRef(want),
                    " (logits' shape without dim 1), got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), fn, ": target is on ", target.device(), " but logits is on ",
                    logits.device());
  return t == at::kLong ? target : target.to(at::kLong);
}

// The checks and the call of softmax_focal_loss (in the Python function's order): the logits,
// reduction and gamma, the target, then alpha (one value for every class, or a per-class [C]
// tensor; at most one of the two) and weight.
inline at::Tensor softmax_focal_impl(const at::Tensor& logits, const at::Tensor& target, double gamma,
                                     std::optional<double> alpha_value, const OptTensor& alpha_tensor,
                                     const OptTensor& weight, int64_t ignore_index, Reduction reduction) {
  constexpr const char* fn = "lossext::softmax_focal_loss";
  check_float_tensor(fn, "logits", logits);
  TORCH_CHECK_VALUE(logits.dim() >= 2, fn, ": logits must be [N, C, ...], got shape ", logits.sizes());
  TORCH_CHECK_VALUE(logits.size(1) > 0, fn, ": logits has no classes (shape ", logits.sizes(), ")");
  const int64_t red = check_reduction(fn, reduction);
  check_gamma(fn, gamma);
  const at::Tensor t = check_focal_target(fn, target, logits);
  const int64_t C = logits.size(1);
  OptTensor a;
  if (alpha_tensor.has_value() && alpha_tensor->defined()) {
    a = check_vector(fn, "alpha", alpha_tensor, C, "C", logits, "logits")->detach();
  } else if (alpha_value.has_value()) {
    check_scale(fn, "alpha", *alpha_value);
    a = at::full({C}, *alpha_value, logits.options());
  }
  OptTensor w = check_vector(fn, "weight", weight, C, "C", logits, "logits");
  if (w.has_value()) w = w->detach();
  const bool needs_graph = at::GradMode::is_enabled() && logits.requires_grad();
  if (!needs_graph) return DetectionOps::get().focal.call(logits, t, a, w, gamma, ignore_index, red);
  return SoftmaxFocalFunction::apply(logits, t, a, w, gamma, ignore_index, red);
}

// The region loss's argument checks (lossext/detection/functional.py's check_region and the
// function's own), in their order; returns the reduction.
inline int64_t check_region(const char* fn, const at::Tensor& output, const at::Tensor& targets,
                            const at::Tensor& anchors, int64_t num_classes, const RegionOptions& o) {
  check_float_tensor(fn, "output", output);
  TORCH_CHECK_VALUE(output.dim() == 4, fn, ": output must be [B, A * (5 + C), H, W], got shape ", output.sizes());
  TORCH_CHECK_VALUE(output.size(2) > 0 && output.size(3) > 0, fn, ": output has an empty grid (shape ",
                    output.sizes(), ")");
  TORCH_CHECK_VALUE(anchors.defined(), fn, ": anchors must be a defined tensor");
  TORCH_CHECK_VALUE(anchors.is_floating_point() && anchors.dim() == 2 && anchors.size(1) == 2 && anchors.size(0) > 0,
                    fn, ": anchors must be a floating [A, 2] tensor of (w, h) in grid cells, got ",
                    anchors.scalar_type(), " of shape ", anchors.sizes());
  TORCH_CHECK_VALUE(anchors.device() == output.device(), fn, ": anchors is on ", anchors.device(),
                    " but output is on ", output.device());
  TORCH_CHECK_VALUE(num_classes >= 1, fn, ": num_classes must be >= 1, got ", num_classes);
  const int64_t A = anchors.size(0);
  TORCH_CHECK_VALUE(output.size(1) == A * (5 + num_classes), fn, ": output has ", output.size(1),
                    " channels, but A * (5 + num_classes) = ", A, " * (5 + ", num_classes, ") = ",
                    A * (5 + num_classes));
  TORCH_CHECK_VALUE(targets.defined(), fn, ": targets must be a defined tensor");
  TORCH_CHECK_TYPE(targets.is_floating_point(), fn, ": targets must be floating (class, x, y, w, h) rows, got ",
                   targets.scalar_type());
  TORCH_CHECK_VALUE(targets.dim() == 3 && targets.size(2) == 5 && targets.size(0) == output.size(0), fn,
                    ": targets must have shape [", output.size(0), ", T, 5] (class, x, y, w, h), got ",
                    targets.sizes());
  TORCH_CHECK_VALUE(targets.device() == output.device(), fn, ": targets is on ", targets.device(),
                    " but output is on ", output.device());
  check_scale(fn, "object_scale", o.object_scale);
  check_scale(fn, "noobject_scale", o.noobject_scale);
  check_scale(fn, "class_scale", o.class_scale);
  check_scale(fn, "coord_scale", o.coord_scale);
  check_finite(fn, "thresh", o.thresh);
  TORCH_CHECK_VALUE(o.seen >= 0, fn, ": seen must be >= 0, got ", o.seen);
  TORCH_CHECK_VALUE(o.warmup_images >= 0, fn, ": warmup_images must be >= 0, got ", o.warmup_images);
  return check_reduction(fn, o.reduction);
}

// The checked call of the region loss: (reduced loss, stats [7]).
inline std::tuple<at::Tensor, at::Tensor> region_impl(const at::Tensor& output, const at::Tensor& targets,
                                                      const at::Tensor& anchors, int64_t num_classes,
                                                      const RegionOptions& o) {
  const char* fn = "lossext::yolov2_region_loss";
  const int64_t red = check_region(fn, output, targets, anchors, num_classes, o);
  // region_layer.c: the prior's .01 while seen < 12800 (darknet's count of images trained on);
  // a 0-dim float64 tensor on the output's device (a fill, no host sync).
  const at::Tensor prior = at::full({}, o.seen < o.warmup_images ? 0.01 : 0.0,
                                    at::TensorOptions().dtype(at::kDouble).device(output.device()));
  const at::Tensor t64 = targets.detach().to(at::kDouble), a64 = anchors.detach().to(at::kDouble);
  at::Tensor per_image, stats;
  if (at::GradMode::is_enabled() && output.requires_grad()) {
    auto out = RegionLossFunction::apply(output, t64, a64, prior, num_classes, o);
    per_image = out[0];
    stats = out[1];
  } else {
    at::Tensor grad;
    std::tie(per_image, grad, stats) = DetectionOps::get().region_loss(output, t64, a64, num_classes, o, prior);
  }
  if (red == 0) return {per_image, stats};
  const at::Tensor total = per_image.sum();
  return {red == 2 ? total : total / double(per_image.size(0)), stats};
}


// ---- the multibox losses (SSD, RefineDet) ----------------------------------------------------

// One multibox_loss call (the SSD loss, or one of RefineDet's two), differentiable in loc and
// conf. Returns {loss_loc [B], loss_conf [B], num_pos [B]} (per-image sums; num_pos not
// differentiable). The op writes the gradients of the sums; the backward op scales them per image.
struct MultiboxFunction : torch::autograd::Function<MultiboxFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& loc,
                                                const at::Tensor& conf, const at::Tensor& priors,
                                                const at::Tensor& targets, const std::optional<at::Tensor>& arm_loc,
                                                const std::optional<at::Tensor>& arm_conf, const MultiboxOptions& o,
                                                bool binary) {
    // arm_loc/arm_conf are optionals: autograd records no input for an absent one (an undefined
    // at::Tensor argument would fail in VariableInfo).
    auto [ll, lc, npos, gl, gc] = DetectionOps::get().multibox.call(
        loc, conf, priors, targets, arm_loc, arm_conf, o.overlap_thresh, o.neg_pos_ratio, o.neg_overlap,
        o.variance_center, o.variance_size, static_cast<int64_t>(o.matching),
        arm_conf.has_value() ? o.objectness_thresh : 0.0, binary);
    ctx->mark_non_differentiable({npos});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({gl, gc, loc, conf});
    return {ll, lc, npos};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    at::Tensor g_loc = grad_outputs[0], g_conf = grad_outputs[1];
    const auto s = ctx->get_saved_variables();
    at::Tensor gl, gc;
    if ((g_loc.defined() || g_conf.defined()) && (ctx->needs_input_grad(0) || ctx->needs_input_grad(1))) {
      at::NoGradGuard no_grad;
      const at::Tensor zeros = at::zeros({s[2].size(0)}, s[2].options());
      std::tie(gl, gc) = DetectionOps::get().multibox_bwd.call(g_loc.defined() ? g_loc : zeros,
                                                               g_conf.defined() ? g_conf : zeros, s[0], s[1], s[2],
                                                               s[3]);
      if (!ctx->needs_input_grad(0)) gl = at::Tensor();
      if (!ctx->needs_input_grad(1)) gc = at::Tensor();
    }
    refuse_double_backward("lossext::multibox_loss (C++ autograd)", {&g_loc, &g_conf, &s[2], &s[3]}, {&gl, &gc});
    // One gradient per forward argument: loc, conf, priors, targets, arm_loc, arm_conf, options, binary.
    return {gl, gc, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// priors [P, 4] and targets [B, T, 5] floating (batch < 0: any B), on one device.
inline void check_priors_targets(const char* fn, const at::Tensor& priors, const at::Tensor& targets,
                                 int64_t batch) {
  TORCH_CHECK_VALUE(priors.defined() && targets.defined(), fn, ": priors and targets must be defined tensors");
  TORCH_CHECK_VALUE(priors.is_floating_point() && priors.dim() == 2 && priors.size(1) == 4, fn,
                    ": priors must be a floating [P, 4] tensor of (cx, cy, w, h), got ", priors.scalar_type(),
                    " of shape ", priors.sizes());
  TORCH_CHECK_TYPE(targets.is_floating_point(), fn, ": targets must be floating (x1, y1, x2, y2, label) rows, got ",
                   targets.scalar_type());
  TORCH_CHECK_VALUE(targets.dim() == 3 && targets.size(2) == 5 && (batch < 0 || targets.size(0) == batch), fn,
                    ": targets must have shape [", batch < 0 ? std::string("B") : std::to_string(batch),
                    ", T, 5] (x1, y1, x2, y2, label), got ", targets.sizes());
  TORCH_CHECK_VALUE(targets.device() == priors.device(), fn, ": targets is on ", targets.device(),
                    " but priors is on ", priors.device());
}

// A head [B, P, last] (last < 0: classes, at least 2) of like's dtype and device.
inline void check_head(const char* fn, const char* name, const at::Tensor& t, const char* like_name,
                       const at::Tensor& like, int64_t batch, int64_t p, int64_t last) {
  check_float_tensor(fn, name, t);
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == batch && t.size(1) == p && (last < 0 || t.size(2) == last), fn, ": ",
                    name, " must have shape [", batch, ", ", p, ", ", last < 0 ? std::string("C") : std::to_string(last),
                    "], got ", t.sizes());
  TORCH_CHECK_VALUE(last >= 0 || t.size(2) >= 2, fn, ": ", name, " must have at least 2 classes (background and one), got ",
                    t.size(2));
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), fn, ": ", name, " has dtype ", t.scalar_type(), " but ",
                   like_name, " has dtype ", like.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), fn, ": ", name, " is on ", t.device(), " but ", like_name, " is on ",
                    like.device());
}

// The checks shared by both losses, after the heads: priors, targets, P, the hyper-parameters.
inline int64_t check_multibox(const char* fn, const at::Tensor& first, const char* first_name,
                              const at::Tensor& priors, const at::Tensor& targets, const MultiboxOptions& o) {
  check_priors_targets(fn, priors, targets, first.size(0));
  TORCH_CHECK_VALUE(priors.size(0) == first.size(1), fn, ": priors has ", priors.size(0), " priors but ", first_name,
                    " has ", first.size(1));
  TORCH_CHECK_VALUE(priors.device() == first.device(), fn, ": priors is on ", priors.device(), " but ", first_name,
                    " is on ", first.device());
  TORCH_CHECK_VALUE(o.overlap_thresh >= 0.0 && o.overlap_thresh <= 1.0, fn, ": overlap_thresh must be in [0.0, 1.0], got ",
                    o.overlap_thresh);
  TORCH_CHECK_VALUE(o.neg_pos_ratio >= 0.0 && std::isfinite(o.neg_pos_ratio), fn,
                    ": neg_pos_ratio must be in [0.0, inf), got ", o.neg_pos_ratio);
  TORCH_CHECK_VALUE(!std::isnan(o.neg_overlap), fn, ": neg_overlap must not be NaN");
  check_positive(fn, "variance_center", o.variance_center);
  check_positive(fn, "variance_size", o.variance_size);
  const auto m = static_cast<int64_t>(o.matching);
  TORCH_CHECK_VALUE(m == 0 || m == 1, fn, ": matching must be Matching::Bipartite or SsdPytorch, got ", m);
  return check_reduction(fn, o.reduction);
}

// One differentiable call: (loss_loc, loss_conf) reduced (Mean: over max(the batch's positives, 1)).
inline std::tuple<at::Tensor, at::Tensor> multibox_impl(const at::Tensor& loc, const at::Tensor& conf,
                                                        const at::Tensor& priors, const at::Tensor& targets,
                                                        const at::Tensor& arm_loc, const at::Tensor& arm_conf,
                                                        const MultiboxOptions& o, bool binary, int64_t red) {
  const at::Tensor p64 = priors.detach().to(at::kDouble), t64 = targets.detach().to(at::kDouble);
  at::Tensor ll, lc, npos;
  if (at::GradMode::is_enabled() && (loc.requires_grad() || conf.requires_grad())) {
    auto out = MultiboxFunction::apply(loc, conf, p64, t64, opt(arm_loc), opt(arm_conf), o, binary);
    ll = out[0], lc = out[1], npos = out[2];
  } else {
    at::Tensor gl, gc;
    std::tie(ll, lc, npos, gl, gc) = DetectionOps::get().multibox.call(
        loc, conf, p64, t64, opt(arm_loc), opt(arm_conf), o.overlap_thresh, o.neg_pos_ratio, o.neg_overlap,
        o.variance_center, o.variance_size, static_cast<int64_t>(o.matching),
        arm_conf.defined() ? o.objectness_thresh : 0.0, binary);
  }
  if (red == 0) return {ll, lc};
  at::Tensor sl = ll.sum(), sc = lc.sum();
  if (red == 2) return {sl, sc};
  const at::Tensor n = npos.sum().clamp_min(1).to(sl.scalar_type());
  return {sl / n, sc / n};
}
}  // namespace detail

/// The sigmoid focal loss of RetinaNet (Lin et al., ICCV 2017, Eq. 5), as
/// torchvision.ops.sigmoid_focal_loss: with p = sigmoid(x),
///   FL = alpha_t BCE(x, y) (1 - p_t)^gamma,  p_t = p y + (1 - p)(1 - y),
///   alpha_t = alpha y + (1 - alpha)(1 - y);
/// alpha = -1 disables the weighting (alpha_t = 1); otherwise alpha in [0, 1]; gamma >= 0.
/// inputs: logits, floating, any shape; targets: labels in [0, 1] (soft labels allowed) of the
/// same shape, dtype and device. weight: optional per-element weight broadcastable to inputs
/// (bool/integer masks converted). Mean is over all elements. Defaults: the paper's alpha and
/// gamma, torchvision's reduction (None).
/// Differentiable in inputs, targets and weight (first order only); saturated logits give
/// finite gradients for every gamma >= 0. float16/bfloat16 compute in float32.
inline torch::Tensor sigmoid_focal_loss(const torch::Tensor& inputs, const torch::Tensor& targets, double alpha = 0.25,
                                        double gamma = 2.0, Reduction reduction = Reduction::None,
                                        const std::optional<torch::Tensor>& weight = {}) {
  constexpr const char* fn = "lossext::sigmoid_focal_loss";
  const int64_t red = detail::check_reduction(fn, reduction);
  // detail::check_pair's checks, naming the arguments as this function (and torchvision) does
  detail::check_float_tensor(fn, "inputs", inputs);
  detail::check_float_tensor(fn, "targets", targets);
  TORCH_CHECK_TYPE(targets.scalar_type() == inputs.scalar_type(), fn, ": targets dtype ", targets.scalar_type(),
                   " does not match inputs dtype ", inputs.scalar_type());
  TORCH_CHECK_VALUE(targets.sizes() == inputs.sizes(), fn, ": targets shape ", targets.sizes(),
                    " does not match inputs shape ", inputs.sizes());
  TORCH_CHECK_VALUE(targets.device() == inputs.device(), fn, ": targets is on ", targets.device(),
                    " but inputs is on ", inputs.device());
  TORCH_CHECK_VALUE(alpha == -1.0 || (alpha >= 0.0 && alpha <= 1.0), fn,
                    ": alpha must be in [0, 1] or -1 (no weighting), got ", alpha);
  detail::check_gamma(fn, gamma);
  const auto w = detail::prepare_weight(fn, weight, inputs);
  return detail::apply_loss<detail::SigmoidFocalLoss>(inputs, targets, w, {alpha, gamma}, red);
}

/// The softmax focal loss (Lin et al., ICCV 2017, Eq. 5 over a softmax):
///   FL = -w_t alpha_t (1 - p_t)^gamma log p_t,
/// p_t the softmax probability (over dim 1) of the target class.
/// logits: [N, C, d...] floating (C > 0); target: [N, d...] integer classes (int64; other integer
/// dtypes converted), or ignore_index (such rows give 0 and a zero gradient). gamma >= 0 (0: the
/// cross-entropy). alpha: nullopt (1) or one value >= 0 for every class; the overload below takes
/// a per-class [C] tensor. weight: optional per-class [C] weight (as torch's cross_entropy's).
/// Mean divides by the rows not ignored (NaN when every row is); None returns target's shape.
/// Differentiable in the logits only (alpha and weight are detached), first order only. A
/// target outside [0, C) that is not ignore_index throws (std::runtime_error, from the kernel) on
/// the CPU; on CUDA its row's loss is NaN.
inline torch::Tensor softmax_focal_loss(const torch::Tensor& logits, const torch::Tensor& target, double gamma = 2.0,
                                        std::optional<double> alpha = std::nullopt,
                                        const std::optional<torch::Tensor>& weight = {}, int64_t ignore_index = -100,
                                        Reduction reduction = Reduction::Mean) {
  return detail::softmax_focal_impl(logits, target, gamma, alpha, std::nullopt, weight, ignore_index, reduction);
}

/// softmax_focal_loss with a per-class alpha: a floating [C] tensor on the logits' device
/// (converted to their dtype, detached), or an undefined tensor for none.
inline torch::Tensor softmax_focal_loss(const torch::Tensor& logits, const torch::Tensor& target, double gamma,
                                        const torch::Tensor& alpha, const std::optional<torch::Tensor>& weight = {},
                                        int64_t ignore_index = -100, Reduction reduction = Reduction::Mean) {
  return detail::softmax_focal_impl(logits, target, gamma, std::nullopt, detail::opt(alpha), weight, ignore_index,
                                    reduction);
}

/// IoU-family loss of box pairs, box by box: IoU (1 - IoU), GIoU (Rezatofighi et al., CVPR
/// 2019), DIoU or CIoU (Zheng et al., AAAI 2020). boxes1, boxes2: (x1, y1, x2, y2) [..., 4], real
/// (integer boxes are converted to float32; two floating dtypes are promoted to a common one),
/// on one device; the two broadcast against each other. eps > 0 keeps the divisions finite.
/// On valid boxes (x2 > x1, y2 > y1) values and gradients are torchvision's
/// generalized_box_iou_loss, distance_box_iou_loss, complete_box_iou_loss (CIoU's alpha a
/// constant); degenerate boxes give finite values and gradients (widths max(x2 - x1, 0), CIoU's
/// aspect atan2(w, h)). None returns the boxes' broadcast batch shape; Mean of no boxes is 0.
/// Differentiable in both box tensors (first order only). float16/bfloat16 compute in float32.
inline torch::Tensor box_iou_loss(const torch::Tensor& boxes1, const torch::Tensor& boxes2,
                                  BoxIouMode mode = BoxIouMode::GIoU, double eps = 1e-7,
                                  Reduction reduction = Reduction::None) {
  constexpr const char* fn = "lossext::box_iou_loss";
  const auto m = static_cast<int64_t>(mode);
  TORCH_CHECK_VALUE(m >= 0 && m <= 3, fn, ": mode must be BoxIouMode::IoU, GIoU, DIoU or CIoU, got ", m);
  const int64_t red = detail::check_reduction(fn, reduction);
  at::Tensor b1 = detail::check_boxes(fn, "boxes1", boxes1);
  at::Tensor b2 = detail::check_boxes(fn, "boxes2", boxes2);
  TORCH_CHECK_VALUE(b2.device() == b1.device(), fn, ": boxes2 is on ", b2.device(), " but boxes1 is on ", b1.device());
  detail::check_positive(fn, "eps", eps);
  if (b1.scalar_type() != b2.scalar_type()) {
    const at::ScalarType dt = at::promote_types(b1.scalar_type(), b2.scalar_type());
    b1 = b1.to(dt);
    b2 = b2.to(dt);
  }
  if (b1.sizes() != b2.sizes()) {
    const int64_t n = std::min(b1.dim(), b2.dim());
    bool broadcasts = true;
    for (int64_t i = 1; broadcasts && i <= n; ++i) {
      const int64_t s1 = b1.size(-i), s2 = b2.size(-i);
      broadcasts = s1 == s2 || s1 == 1 || s2 == 1;
    }
    TORCH_CHECK_VALUE(broadcasts, fn, ": boxes1 of shape ", b1.sizes(), " and boxes2 of shape ", b2.sizes(),
                      " do not broadcast");
    const std::vector<int64_t> shape = at::infer_size(b1.sizes(), b2.sizes());
    b1 = b1.expand(shape);
    b2 = b2.expand(shape);
  }
  const bool needs_graph = at::GradMode::is_enabled() && (b1.requires_grad() || b2.requires_grad());
  if (!needs_graph) return detail::DetectionOps::get().box.call(b1, b2, m, eps, red);
  return detail::BoxIouFunction::apply(b1, b2, m, eps, red);
}

/// The YOLOv2 region loss: darknet's [region] layer (pjreddie/darknet src/region_layer.c,
/// forward_region_layer) as one fused op; the semantics of lossext.yolov2_region_loss.
///   - output [B, A (5 + C), H, W]: the raw head, anchor n's channels n (5 + C) + (tx, ty, tw,
///     th, to, C class logits); sigmoid on tx, ty, to, softmax over the classes;
///   - targets [B, T, 5] floating: rows (class, x, y, w, h), x, y, w, h in [0, 1]; a row with
///     class < 0 is padding wherever it stands (T may be 0);
///   - anchors [A, 2] floating: the anchors' (w, h) in grid cells (darknet's biases).
/// Each truth goes to the cell (floor(x W), floor(y H)) (clamped: x = 1 is legal) and to the
/// anchor of best shape IoU (bias_match; else the predicted w, h), lowest index on ties; a
/// later truth on the same cell and anchor wins. With o = sigmoid(z) for tx, ty, to and o = z
/// for tw, th, the loss of an image is the sum of 1/2 s (t - o)^2 over the squared terms plus
/// the class terms:
///   - the truth's anchor: (tx, ty, tw, th) to (x W - i, y H - j, log(w W / a_w), log(h H / a_h))
///     at s = coord_scale (2 - w h) (coord_scale without scale_coord_by_size); to to the IoU of
///     the decoded box (rescore; a constant) or 1 at object_scale; class_scale times the softmax
///     cross-entropy of the truth's class;
///   - every other anchor: to to 0 at noobject_scale, dropped where the decoded box has IoU >
///     thresh with a truth; while seen < warmup_images also the prior box (sigmoid(tx) =
///     sigmoid(ty) = 0.5, tw = th = 0) at s = 0.01.
/// The gradient is darknet's GPU delta times the logistic derivative. Returns the loss reduced
/// by options.reduction (Mean: sum / B). A class outside [0, num_classes), centres outside [0, 1]
/// or widths/heights <= 0 throw on the CPU (std::runtime_error, from the kernel; on CUDA they
/// are not read back: a bad class makes the loss NaN). Differentiable in output only (first order only); targets and anchors are
/// converted to float64 and detached. float16/bfloat16 compute in float32.
inline torch::Tensor yolov2_region_loss(const torch::Tensor& output, const torch::Tensor& targets,
                                        const torch::Tensor& anchors, int64_t num_classes,
                                        const RegionOptions& options = {}) {
  return std::get<0>(detail::region_impl(output, targets, anchors, num_classes, options));
}

/// yolov2_region_loss and darknet's diagnostics (Python's return_stats=True): (loss, stats [7]),
/// stats indexed by RegionStat (avg_iou, recall, avg_obj, avg_anyobj, avg_cat, count,
/// darknet_cost), float32 (float64 for a float64 output), not differentiable.
inline std::tuple<torch::Tensor, torch::Tensor> yolov2_region_loss_with_stats(const torch::Tensor& output,
                                                                              const torch::Tensor& targets,
                                                                              const torch::Tensor& anchors,
                                                                              int64_t num_classes,
                                                                              const RegionOptions& options = {}) {
  return detail::region_impl(output, targets, anchors, num_classes, options);
}

/// Matches each image's truths to the priors (SSD's and RefineDet's target assignment); the
/// semantics of lossext.match_priors. priors [P, 4] (cx, cy, w, h), targets [B, T, 5] (x1, y1,
/// x2, y2, label; label < 0 padding). Returns (matches int64 [B, P]: the matched target row or
/// -1, overlaps float64 [B, P]: the IoU with the matched truth, else the best IoU). Bipartite:
/// sfzhang15/RefineDet bbox_util.cpp MatchBBox (greedy bipartite over IoU > 1e-6, ties to the
/// lower prior, then per prediction IoU >= overlap_thresh); SsdPytorch: ssd.pytorch's match (a
/// truth that overlaps no prior matches nothing). Not differentiable.
inline std::tuple<torch::Tensor, torch::Tensor> match_priors(const torch::Tensor& priors, const torch::Tensor& targets,
                                                             double overlap_thresh = 0.5,
                                                             Matching matching = Matching::Bipartite) {
  constexpr const char* fn = "lossext::match_priors";
  detail::check_priors_targets(fn, priors, targets, -1);
  TORCH_CHECK_VALUE(overlap_thresh >= 0.0 && overlap_thresh <= 1.0, fn, ": overlap_thresh must be in [0.0, 1.0], got ",
                    overlap_thresh);
  const auto m = static_cast<int64_t>(matching);
  TORCH_CHECK_VALUE(m == 0 || m == 1, fn, ": matching must be Matching::Bipartite or SsdPytorch, got ", m);
  auto [overlaps, matches] = detail::DetectionOps::get().match.call(
      priors.detach().to(at::kDouble), targets.detach().to(at::kDouble), overlap_thresh, m);
  return {matches, overlaps};
}

/// SSD's multibox loss (Liu et al., ECCV 2016; the authors' Caffe MultiBoxLossLayer); the
/// semantics of lossext.ssd_multibox_loss: loc [B, P, 4], conf [B, P, C] (class 0 the
/// background), priors [P, 4] (cx, cy, w, h), targets [B, T, 5] (x1, y1, x2, y2, label in
/// [0, C - 1), label < 0 padding). Smooth L1 over the positives' center-size offsets; softmax
/// cross-entropy over the positives and the hardest negatives (per image at most
/// floor(neg_pos_ratio positives) unmatched priors with best IoU < neg_overlap; ties to the lower
/// prior). Returns (loss_loc, loss_conf) reduced by options.reduction. Differentiable in loc and
/// conf (first order only). A bad label or box throws on the CPU (from the kernel); on CUDA it is
/// not read back (NaN loss).
inline std::tuple<torch::Tensor, torch::Tensor> ssd_multibox_loss(const torch::Tensor& loc, const torch::Tensor& conf,
                                                                  const torch::Tensor& priors,
                                                                  const torch::Tensor& targets,
                                                                  const MultiboxOptions& options = {}) {
  constexpr const char* fn = "lossext::ssd_multibox_loss";
  detail::check_float_tensor(fn, "loc", loc);
  TORCH_CHECK_VALUE(loc.dim() == 3 && loc.size(2) == 4, fn, ": loc must have shape [B, P, 4], got ", loc.sizes());
  detail::check_head(fn, "conf", conf, "loc", loc, loc.size(0), loc.size(1), -1);
  const int64_t red = detail::check_multibox(fn, loc, "loc", priors, targets, options);
  return detail::multibox_impl(loc, conf, priors, targets, at::Tensor(), at::Tensor(), options, false, red);
}

/// RefineDet's two multibox losses (Zhang et al., CVPR 2018; sfzhang15/RefineDet's Caffe code);
/// the semantics of lossext.refinedet_multibox_loss: the ARM (arm_loc [B, P, 4], arm_conf
/// [B, P, 2]) is a binary multibox loss on the priors; the ODM (odm_loc [B, P, 4], odm_conf
/// [B, P, C]) matches and encodes against the priors refined by arm_loc (decoded, not clipped,
/// detached) and mines only negatives whose ARM objectness softmax(arm_conf)[1] >=
/// objectness_thresh. Matching is always bipartite (options.matching must be Bipartite).
/// Returns (arm_loc_loss, arm_conf_loss, odm_loc_loss, odm_conf_loss), each pair over its own
/// max(positives, 1) for Mean. Differentiable in the four heads (the ODM terms in the ODM heads).
inline std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> refinedet_multibox_loss(
    const torch::Tensor& arm_loc, const torch::Tensor& arm_conf, const torch::Tensor& odm_loc,
    const torch::Tensor& odm_conf, const torch::Tensor& priors, const torch::Tensor& targets,
    const MultiboxOptions& options = {}) {
  constexpr const char* fn = "lossext::refinedet_multibox_loss";
  detail::check_float_tensor(fn, "arm_loc", arm_loc);
  TORCH_CHECK_VALUE(arm_loc.dim() == 3 && arm_loc.size(2) == 4, fn, ": arm_loc must have shape [B, P, 4], got ",
                    arm_loc.sizes());
  const int64_t b = arm_loc.size(0), p = arm_loc.size(1);
  detail::check_head(fn, "arm_conf", arm_conf, "arm_loc", arm_loc, b, p, 2);
  detail::check_head(fn, "odm_loc", odm_loc, "arm_loc", arm_loc, b, p, 4);
  detail::check_head(fn, "odm_conf", odm_conf, "arm_loc", arm_loc, b, p, -1);
  const int64_t red = detail::check_multibox(fn, arm_loc, "arm_loc", priors, targets, options);
  TORCH_CHECK_VALUE(options.matching == Matching::Bipartite, fn,
                    ": matching must be Matching::Bipartite (the authors' rule) for RefineDet");
  TORCH_CHECK_VALUE(!std::isnan(options.objectness_thresh), fn, ": objectness_thresh must not be NaN");
  auto [al, ac] = detail::multibox_impl(arm_loc, arm_conf, priors, targets, at::Tensor(), at::Tensor(), options, true,
                                        red);
  auto [ol, oc] = detail::multibox_impl(odm_loc, odm_conf, priors, targets, arm_loc.detach(), arm_conf.detach(),
                                        options, false, red);
  return {al, ac, ol, oc};
}

}  // namespace lossext
