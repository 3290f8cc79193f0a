// Op bodies of the detection family's focal and box losses, generic over the device. Host code
// only: checks, layouts and allocations. detection_cpu.cpp and detection_cuda.cu register them;
// detection_schema.cpp declares the schemas; focal_math.h and box_math.h hold the math.
//
// sigmoid_focal_loss is element-wise: the pattern of common/pointwise_loss.h (PointwiseDevice:
// CpuDevice or CudaDevice). The others need a Device (DetectionCpu or DetectionCuda) providing
// (tensors contiguous; loss and gradients in the inputs' dtype; reductions in a fixed order):
//   box_forward(const BoxProblem&, Tensor& loss)
//   box_backward(const BoxProblem&, const Tensor& grad_output, Tensor& grad1, Tensor& grad2)
//   softmax_focal_forward(const FocalProblem&, Tensor& loss)
//   softmax_focal_backward(const FocalProblem&, const Tensor& grad_output, Tensor& grad_logits)
#pragma once

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/alloc.h"
#include "../common/pointwise_loss.h"
#include "box_math.h"
#include "focal_math.h"

namespace lossext {
namespace detection {

// ---- sigmoid focal loss (element-wise) ----------------------------------------------------

inline void check_focal_params(const char* op, double alpha, double gamma) {
  LOSSEXT_CHECK(alpha == -1.0 || (alpha >= 0.0 && alpha <= 1.0), op,
                ": argument 'alpha' must be in [0, 1] or -1 (no weighting), got ", alpha);
  LOSSEXT_CHECK(gamma >= 0.0 && gamma < INFINITY, op, ": argument 'gamma' must be finite and >= 0, got ", gamma);
}

template <class PointwiseDevice>
struct SigmoidFocalKernels {
  // f(maker): maker(T{}) gives the op for accumulation type T, gamma = 2 on its own fast path
  template <class F>
  static auto with_maker(const char* op, double alpha, double gamma, const F& f) {
    check_focal_params(op, alpha, gamma);
    if (gamma == 2.0) return f([=](auto t) { return SigmoidFocalOp<decltype(t), true>::make(alpha, gamma); });
    return f([=](auto t) { return SigmoidFocalOp<decltype(t), false>::make(alpha, gamma); });
  }
  static Tensor forward(Tensor input, Tensor target, std::optional<Tensor> weight, double alpha, double gamma,
                        int64_t reduction) {
    const char* op = "lossext::sigmoid_focal_loss";
    return with_maker(op, alpha, gamma, [&](const auto& mk) {
      return pointwise_forward<PointwiseDevice>(op, input, target, weight, reduction, mk);
    });
  }
  static std::tuple<Tensor, Tensor> forward_with_grad(Tensor input, Tensor target, std::optional<Tensor> weight,
                                                      double alpha, double gamma, int64_t reduction) {
    const char* op = "lossext::sigmoid_focal_loss_with_grad";
    return with_maker(op, alpha, gamma, [&](const auto& mk) {
      return pointwise_forward_with_grad<PointwiseDevice>(op, input, target, weight, reduction, mk);
    });
  }
  static Tensor backward(Tensor grad_output, Tensor input, Tensor target, std::optional<Tensor> weight, double alpha,
                         double gamma, int64_t reduction) {
    const char* op = "lossext::sigmoid_focal_loss_backward";
    return with_maker(op, alpha, gamma, [&](const auto& mk) {
      return pointwise_backward<PointwiseDevice, PointwiseMode::BackwardInput>(op, grad_output, input, target, weight,
                                                                               reduction, mk);
    });
  }
  static Tensor target_backward(Tensor grad_output, Tensor input, Tensor target, std::optional<Tensor> weight,
                                double alpha, double gamma, int64_t reduction) {
    const char* op = "lossext::sigmoid_focal_loss_target_backward";
    return with_maker(op, alpha, gamma, [&](const auto& mk) {
      return pointwise_backward<PointwiseDevice, PointwiseMode::BackwardTarget>(op, grad_output, input, target, weight,
                                                                                reduction, mk);
    });
  }
};

// ---- box IoU losses ----------------------------------------------------------------------

struct BoxProblem {
  const char* op;
  Tensor boxes1, boxes2;  // contiguous [n, 4] views, same dtype and device
  int64_t n;              // boxes
  int64_t mode;
  double eps;
  Reduction reduction;
  // per-box gradient scale: 1/n for mean (n > 0), 1 otherwise
  double grad_scale() const { return reduction == Reduction::Mean && n > 0 ? 1.0 / double(n) : 1.0; }
};

inline BoxProblem prepare_box(const char* op, const Tensor& boxes1, const Tensor& boxes2, int64_t mode, double eps,
                              int64_t reduction) {
  check_float_tensor(op, "boxes1", boxes1);
  LOSSEXT_CHECK(boxes1.dim() >= 1 && boxes1.size(boxes1.dim() - 1) == 4, op,
                ": argument 'boxes1' must have shape [..., 4], got ", shape_str(boxes1));
  LOSSEXT_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), op, ": argument 'boxes2' has dtype ",
                torch::headeronly::toString(boxes2.scalar_type()), " but boxes1 has dtype ",
                torch::headeronly::toString(boxes1.scalar_type()));
  LOSSEXT_CHECK(boxes2.device() == boxes1.device(), op, ": argument 'boxes2' is on a different device than boxes1");
  bool same = boxes2.dim() == boxes1.dim();
  for (int64_t i = 0; same && i < boxes1.dim(); ++i) same = boxes1.size(i) == boxes2.size(i);
  LOSSEXT_CHECK(same, op, ": argument 'boxes2' has shape ", shape_str(boxes2), " but boxes1 has shape ",
                shape_str(boxes1));
  LOSSEXT_CHECK(mode >= 0 && mode <= 3, op, ": argument 'mode' must be 0 (iou), 1 (giou), 2 (diou) or 3 (ciou), got ",
                mode);
  LOSSEXT_CHECK(eps > 0.0 && eps < INFINITY, op, ": argument 'eps' must be positive and finite, got ", eps);
  BoxProblem p;
  p.op = op;
  p.reduction = check_reduction(op, reduction);
  p.n = boxes1.numel() / 4;
  p.boxes1 = torch::stable::contiguous(boxes1);
  p.boxes2 = torch::stable::contiguous(boxes2);
  p.mode = mode;
  p.eps = eps;
  return p;
}

inline std::vector<int64_t> box_batch_shape(const Tensor& boxes) {
  std::vector<int64_t> s;
  for (int64_t i = 0; i + 1 < boxes.dim(); ++i) s.push_back(boxes.size(i));
  return s;
}

template <class Device>
Tensor box_iou_loss(Tensor boxes1, Tensor boxes2, int64_t mode, double eps, int64_t reduction) {
  const auto p = prepare_box("lossext::box_iou_loss", boxes1, boxes2, mode, eps, reduction);
  Tensor loss = lossext::empty(p.reduction == Reduction::None ? box_batch_shape(boxes1) : std::vector<int64_t>{},
                                     boxes1.scalar_type(), std::nullopt, boxes1.device());
  Device::box_forward(p, loss);
  return loss;
}

template <class Device>
std::tuple<Tensor, Tensor> box_iou_loss_backward(Tensor grad_output, Tensor boxes1, Tensor boxes2, int64_t mode,
                                                 double eps, int64_t reduction) {
  const char* op = "lossext::box_iou_loss_backward";
  const auto p = prepare_box(op, boxes1, boxes2, mode, eps, reduction);
  LOSSEXT_CHECK(grad_output.scalar_type() == boxes1.scalar_type(), op, ": argument 'grad_output' has dtype ",
                torch::headeronly::toString(grad_output.scalar_type()), " but boxes1 has dtype ",
                torch::headeronly::toString(boxes1.scalar_type()));
  LOSSEXT_CHECK(grad_output.device() == boxes1.device(), op,
                ": argument 'grad_output' is on a different device than boxes1");
  if (p.reduction == Reduction::None) {
    const auto want = box_batch_shape(boxes1);
    bool same = grad_output.dim() == int64_t(want.size());
    for (int64_t i = 0; same && i < grad_output.dim(); ++i) same = grad_output.size(i) == want[i];
    LOSSEXT_CHECK(same, op, ": argument 'grad_output' has shape ", shape_str(grad_output),
                  " but the loss has the boxes' batch shape");
  } else {
    LOSSEXT_CHECK(grad_output.dim() == 0, op, ": argument 'grad_output' must be 0-dim for a reduced loss, got shape ",
                  shape_str(grad_output));
  }
  const Tensor go = torch::stable::contiguous(grad_output);
  Tensor g1 = lossext::empty(sizes_of(p.boxes1), boxes1.scalar_type(), std::nullopt, boxes1.device());
  Tensor g2 = lossext::empty(sizes_of(p.boxes1), boxes1.scalar_type(), std::nullopt, boxes1.device());
  Device::box_backward(p, go, g1, g2);
  return {g1, g2};
}

// ---- softmax focal loss ------------------------------------------------------------------

struct FocalProblem {
  const char* op;
  Tensor logits;                // contiguous [N, C, S] (S = 1 for [N, C])
  Tensor target;                // contiguous int64, N * S entries
  std::optional<Tensor> alpha;  // contiguous [C], logits' dtype
  std::optional<Tensor> weight; // contiguous [C], logits' dtype
  int64_t N, C, S;
  double gamma;
  int64_t ignore_index;
  Reduction reduction;
};

inline void check_class_vector(const char* op, const char* name, const std::optional<Tensor>& v, const Tensor& logits,
                               int64_t C) {
  if (!v) return;
  LOSSEXT_CHECK(v->scalar_type() == logits.scalar_type(), op, ": argument '", name, "' has dtype ",
                torch::headeronly::toString(v->scalar_type()), " but logits has dtype ",
                torch::headeronly::toString(logits.scalar_type()));
  LOSSEXT_CHECK(v->device() == logits.device(), op, ": argument '", name, "' is on a different device than logits");
  LOSSEXT_CHECK(v->dim() == 1 && v->size(0) == C, op, ": argument '", name, "' must have shape [", C, "], got ",
                shape_str(*v));
}

inline FocalProblem prepare_focal(const char* op, const Tensor& logits, const Tensor& target,
                                  const std::optional<Tensor>& alpha, const std::optional<Tensor>& weight,
                                  double gamma, int64_t ignore_index, int64_t reduction) {
  check_float_tensor(op, "logits", logits);
  LOSSEXT_CHECK(logits.dim() >= 2, op, ": argument 'logits' must be [N, C, ...], got shape ", shape_str(logits));
  LOSSEXT_CHECK(target.scalar_type() == ScalarType::Long, op, ": argument 'target' must be int64, got ",
                torch::headeronly::toString(target.scalar_type()));
  LOSSEXT_CHECK(target.device() == logits.device(), op, ": argument 'target' is on a different device than logits");
  bool same = target.dim() == logits.dim() - 1 && target.size(0) == logits.size(0);
  for (int64_t i = 1; same && i < target.dim(); ++i) same = target.size(i) == logits.size(i + 1);
  LOSSEXT_CHECK(same, op, ": argument 'target' has shape ", shape_str(target), " but logits has shape ",
                shape_str(logits), " (target must be logits' shape without dim 1)");
  FocalProblem p;
  p.op = op;
  p.N = logits.size(0);
  p.C = logits.size(1);
  p.S = 1;
  for (int64_t i = 2; i < logits.dim(); ++i) p.S *= logits.size(i);
  LOSSEXT_CHECK(p.C > 0, op, ": argument 'logits' has no classes (shape ", shape_str(logits), ")");
  check_class_vector(op, "alpha", alpha, logits, p.C);
  check_class_vector(op, "weight", weight, logits, p.C);
  LOSSEXT_CHECK(gamma >= 0.0 && gamma < INFINITY, op, ": argument 'gamma' must be finite and >= 0, got ", gamma);
  p.logits = torch::stable::contiguous(logits);
  p.target = torch::stable::contiguous(target);
  if (alpha) p.alpha = torch::stable::contiguous(*alpha);
  if (weight) p.weight = torch::stable::contiguous(*weight);
  p.gamma = gamma;
  p.ignore_index = ignore_index;
  p.reduction = check_reduction(op, reduction);
  return p;
}

template <class Device>
Tensor softmax_focal_loss(Tensor logits, Tensor target, std::optional<Tensor> alpha, std::optional<Tensor> weight,
                          double gamma, int64_t ignore_index, int64_t reduction) {
  const auto p = prepare_focal("lossext::softmax_focal_loss", logits, target, alpha, weight, gamma, ignore_index,
                               reduction);
  Tensor loss = lossext::empty(p.reduction == Reduction::None ? sizes_of(target) : std::vector<int64_t>{},
                                     logits.scalar_type(), std::nullopt, logits.device());
  Device::softmax_focal_forward(p, loss);
  return loss;
}

template <class Device>
Tensor softmax_focal_loss_backward(Tensor grad_output, Tensor logits, Tensor target, std::optional<Tensor> alpha,
                                   std::optional<Tensor> weight, double gamma, int64_t ignore_index,
                                   int64_t reduction) {
  const char* op = "lossext::softmax_focal_loss_backward";
  const auto p = prepare_focal(op, logits, target, alpha, weight, gamma, ignore_index, reduction);
  LOSSEXT_CHECK(grad_output.scalar_type() == logits.scalar_type(), op, ": argument 'grad_output' has dtype ",
                torch::headeronly::toString(grad_output.scalar_type()), " but logits has dtype ",
                torch::headeronly::toString(logits.scalar_type()));
  LOSSEXT_CHECK(grad_output.device() == logits.device(), op,
                ": argument 'grad_output' is on a different device than logits");
  if (p.reduction == Reduction::None) {
    check_same_shape(op, "grad_output", grad_output, target);
  } else {
    LOSSEXT_CHECK(grad_output.dim() == 0, op, ": argument 'grad_output' must be 0-dim for a reduced loss, got shape ",
                  shape_str(grad_output));
  }
  const Tensor go = torch::stable::contiguous(grad_output);
  Tensor grad = lossext::empty(sizes_of(p.logits), logits.scalar_type(), std::nullopt, logits.device());
  Device::softmax_focal_backward(p, go, grad);
  return grad;
}

// Registers the family's focal and box kernels of one device.
template <class PointwiseDevice, class Device, class Lib>
void register_detection_kernels(Lib& m) {
  m.impl("sigmoid_focal_loss", TORCH_BOX(&SigmoidFocalKernels<PointwiseDevice>::forward));
  m.impl("sigmoid_focal_loss_with_grad", TORCH_BOX(&SigmoidFocalKernels<PointwiseDevice>::forward_with_grad));
  m.impl("sigmoid_focal_loss_backward", TORCH_BOX(&SigmoidFocalKernels<PointwiseDevice>::backward));
  m.impl("sigmoid_focal_loss_target_backward", TORCH_BOX(&SigmoidFocalKernels<PointwiseDevice>::target_backward));
  m.impl("box_iou_loss", TORCH_BOX(&box_iou_loss<Device>));
  m.impl("box_iou_loss_backward", TORCH_BOX(&box_iou_loss_backward<Device>));
  m.impl("softmax_focal_loss", TORCH_BOX(&softmax_focal_loss<Device>));
  m.impl("softmax_focal_loss_backward", TORCH_BOX(&softmax_focal_loss_backward<Device>));
}

}  // namespace detection
}  // namespace lossext
