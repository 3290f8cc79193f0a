// Op bodies of the dense-prediction family, generic over the device (DenseCpu or DenseCuda):
// checks, layouts and allocations. dense_cpu.cpp and dense_cuda.cu register them;
// dense_schema.cpp declares the schemas; dense_math.h holds the per-element math.
//
// A Device provides (tensors contiguous; R = B K rows of P pixels each):
//   row_sums(const HeatmapProblem&, Tensor& sums [R] acc dtype)     S_r = sum_p (x - y)^2
//   row_sums_backward(const HeatmapProblem&, const Tensor& grad [R], Tensor& grad_output)
//        2 g_r (x - y); a row whose g_r is 0 is written as zeros without reading x or y
//   row_sums_with_grad(const HeatmapProblem&, const Tensor& coef [R], Tensor& loss [], Tensor& sums [R],
//        Tensor& grad_output)   both of the above with g = coef, and loss = sum_r coef_r S_r (rows in
//        order, in double)
//   mask_bce(const MaskProblem&, Tensor& out)     per-pixel BCE [R, P] or per-RoI sums [R] of
//        the labelled channel; a bad label raises (CPU) or gives NaN (CUDA), never an index
//   mask_bce_backward(const MaskProblem&, const Tensor& grad, Tensor& grad_logits, Tensor& grad_targets)
//   dice_sums(const DiceProblem&, Tensor& out [B, C, 4])   per-class sums, fixed order
//   dice_sums_backward(const DiceProblem&, const Tensor& grad [B, C, 4], Tensor& grad_logits)
//        a multiclass label outside [0, C) that is not ignore_index raises (CPU) or gives NaN (CUDA)
//   masked_l1_sums(const MaskedL1Problem&, Tensor& out [B, C, 4])
//   masked_l1_sums_backward(const MaskedL1Problem&, const Tensor& grad [B, C, 4], Tensor& grad_input)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/alloc.h"
#include "../common/checks.h"
#include "dense_math.h"

namespace lossext {
namespace dense {

struct HeatmapProblem {
  const char* op;
  Tensor output, target;  // contiguous [B, K, ...]
  int64_t B = 0, K = 0, rows = 0, pixels = 0;
};

inline ScalarType acc_type_of(ScalarType st) { return st == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

inline HeatmapProblem prepare_heatmaps(const char* op, const Tensor& output, const Tensor& target) {
  check_float_tensor(op, "output", output);
  LOSSEXT_CHECK(output.dim() >= 2, op, ": argument 'output' must be [B, K, ...] heatmaps, got shape ",
                shape_str(output));
  LOSSEXT_CHECK(target.scalar_type() == output.scalar_type(), op, ": argument 'target' has dtype ",
                torch::headeronly::toString(target.scalar_type()), " but output has dtype ",
                torch::headeronly::toString(output.scalar_type()));
  LOSSEXT_CHECK(target.device() == output.device(), op, ": argument 'target' is on a different device than output");
  bool same = target.dim() == output.dim();
  for (int64_t i = 0; same && i < output.dim(); ++i) same = target.size(i) == output.size(i);
  LOSSEXT_CHECK(same, op, ": argument 'target' has shape ", shape_str(target), " but output has shape ",
                shape_str(output));
  HeatmapProblem p;
  p.op = op;
  p.B = output.size(0);
  p.K = output.size(1);
  p.rows = p.B * p.K;
  p.pixels = 1;
  for (int64_t i = 2; i < output.dim(); ++i) p.pixels *= output.size(i);
  p.output = torch::stable::contiguous(output);
  p.target = torch::stable::contiguous(target);
  return p;
}

// The Mask R-CNN mask loss: R RoIs, C class channels of P pixels each.
struct MaskProblem {
  const char* op;
  Tensor logits, labels, targets;  // contiguous [R, C, ...], [R] int64, [R, ...]
  int64_t R = 0, C = 0, P = 0;
  bool per_pixel = false;
};

inline MaskProblem prepare_mask(const char* op, const Tensor& logits, const Tensor& labels, const Tensor& targets,
                                bool per_pixel) {
  check_float_tensor(op, "mask_logits", logits);
  LOSSEXT_CHECK(logits.dim() >= 2 && logits.size(1) > 0, op,
                ": argument 'mask_logits' must be [R, C, ...] with C >= 1 class channels, got shape ", shape_str(logits));
  LOSSEXT_CHECK(labels.scalar_type() == ScalarType::Long, op, ": argument 'labels' must be int64, got ",
                torch::headeronly::toString(labels.scalar_type()));
  LOSSEXT_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), op, ": argument 'labels' must have shape [",
                logits.size(0), "], got ", shape_str(labels));
  LOSSEXT_CHECK(targets.scalar_type() == logits.scalar_type(), op, ": argument 'mask_targets' has dtype ",
                torch::headeronly::toString(targets.scalar_type()), " but mask_logits has dtype ",
                torch::headeronly::toString(logits.scalar_type()));
  bool same = targets.dim() == logits.dim() - 1 && targets.size(0) == logits.size(0);
  for (int64_t i = 2; same && i < logits.dim(); ++i) same = targets.size(i - 1) == logits.size(i);
  LOSSEXT_CHECK(same, op, ": argument 'mask_targets' has shape ", shape_str(targets),
                " but mask_logits [R, C, ...] has shape ", shape_str(logits), " (targets are [R, ...])");
  LOSSEXT_CHECK(labels.device() == logits.device() && targets.device() == logits.device(), op,
                ": arguments 'labels' and 'mask_targets' must be on mask_logits' device");
  MaskProblem p;
  p.op = op;
  p.R = logits.size(0);
  p.C = logits.size(1);
  p.P = 1;
  for (int64_t i = 2; i < logits.dim(); ++i) p.P *= logits.size(i);
  p.per_pixel = per_pixel;
  p.logits = torch::stable::contiguous(logits);
  p.labels = torch::stable::contiguous(labels);
  p.targets = torch::stable::contiguous(targets);
  return p;
}

template <class Device>
struct MaskBceKernels {
  static Tensor forward(Tensor logits, Tensor labels, Tensor targets, bool per_pixel) {
    MaskProblem p = prepare_mask("lossext::mask_bce", logits, labels, targets, per_pixel);
    Tensor out = per_pixel ? lossext::empty(sizes_of(p.targets), p.logits.scalar_type(), std::nullopt,
                                                  p.logits.device())
                           : lossext::empty(std::vector<int64_t>{p.R}, acc_type_of(p.logits.scalar_type()),
                                                  std::nullopt, p.logits.device());
    Device::mask_bce(p, out);
    return out;
  }

  static std::tuple<Tensor, Tensor> backward(Tensor grad, Tensor logits, Tensor labels, Tensor targets,
                                             bool per_pixel) {
    const char* op = "lossext::mask_bce_backward";
    MaskProblem p = prepare_mask(op, logits, labels, targets, per_pixel);
    const ScalarType gt = per_pixel ? p.logits.scalar_type() : acc_type_of(p.logits.scalar_type());
    LOSSEXT_CHECK(grad.scalar_type() == gt, op, ": argument 'grad' must have dtype ", torch::headeronly::toString(gt),
                  " (the forward's), got ", torch::headeronly::toString(grad.scalar_type()));
    LOSSEXT_CHECK(grad.device() == p.logits.device(), op, ": argument 'grad' is on a different device than mask_logits");
    bool ok = per_pixel ? grad.dim() == p.targets.dim() : grad.dim() == 1;
    for (int64_t i = 0; ok && i < grad.dim(); ++i) ok = grad.size(i) == p.targets.size(i);
    LOSSEXT_CHECK(ok, op, ": argument 'grad' must have shape ", per_pixel ? shape_str(p.targets) : "[" + std::to_string(p.R) + "]",
                  ", got ", shape_str(grad));
    Tensor gl = lossext::empty(sizes_of(p.logits), p.logits.scalar_type(), std::nullopt, p.logits.device());
    Tensor gtg = lossext::empty(sizes_of(p.targets), p.logits.scalar_type(), std::nullopt, p.logits.device());
    Device::mask_bce_backward(p, torch::stable::contiguous(grad), gl, gtg);
    return {gl, gtg};
  }
};

template <class Device>
struct JointsMseKernels {
  static Tensor forward(Tensor output, Tensor target) {
    HeatmapProblem p = prepare_heatmaps("lossext::joints_mse_sums", output, target);
    Tensor sums = lossext::empty(std::vector<int64_t>{p.B, p.K}, acc_type_of(p.output.scalar_type()), std::nullopt,
                                       p.output.device());
    Device::row_sums(p, sums);
    return sums;
  }

  static Tensor backward(Tensor grad, Tensor output, Tensor target) {
    const char* op = "lossext::joints_mse_sums_backward";
    HeatmapProblem p = prepare_heatmaps(op, output, target);
    check_row_values(op, "grad", grad, p);
    Tensor g = lossext::empty(sizes_of(p.output), p.output.scalar_type(), std::nullopt, p.output.device());
    Device::row_sums_backward(p, torch::stable::contiguous(grad), g);
    return g;
  }

  // The one-pass loss (issue #15): loss = sum_r coef_r S_r (0-dim, S's dtype), S, and the loss's
  // gradient with respect to output, 2 coef_r (x - y) (a row whose coef is 0: zeros), from one
  // read of output and target; coef [B, K] holds dLoss/dS (joints_mse_loss's 0.5 w^2 / P, over
  // B K for 'mean').
  static std::tuple<Tensor, Tensor, Tensor> forward_with_grad(Tensor output, Tensor target, Tensor coef) {
    const char* op = "lossext::joints_mse_loss_with_grad";
    HeatmapProblem p = prepare_heatmaps(op, output, target);
    check_row_values(op, "coef", coef, p);
    const ScalarType at = acc_type_of(p.output.scalar_type());
    Tensor loss = lossext::empty(std::vector<int64_t>{}, at, std::nullopt, p.output.device());
    Tensor sums = lossext::empty(std::vector<int64_t>{p.B, p.K}, at, std::nullopt, p.output.device());
    Tensor g = lossext::empty(sizes_of(p.output), p.output.scalar_type(), std::nullopt, p.output.device());
    Device::row_sums_with_grad(p, torch::stable::contiguous(coef), loss, sums, g);
    return {loss, sums, g};
  }

 private:
  // A [B, K] tensor of per-row values (the backward's grad, the one-pass op's coef) in S's dtype.
  static void check_row_values(const char* op, const char* name, const Tensor& v, const HeatmapProblem& p) {
    const ScalarType at = acc_type_of(p.output.scalar_type());
    LOSSEXT_CHECK(v.scalar_type() == at, op, ": argument '", name, "' must have dtype ", torch::headeronly::toString(at),
                  " (the forward's), got ", torch::headeronly::toString(v.scalar_type()));
    LOSSEXT_CHECK(v.device() == p.output.device(), op, ": argument '", name, "' is on a different device than output");
    LOSSEXT_CHECK(v.dim() == 2 && v.size(0) == p.B && v.size(1) == p.K, op,
                  ": argument '", name, "' must have shape [", p.B, ", ", p.K, "], got ", shape_str(v));
  }
};

// The dice loss: B samples, C classes of P pixels each (logits contiguous [B, C, P]).
struct DiceProblem {
  const char* op;
  Tensor logits, target;  // [B, C, ...] and (multiclass) [B, ...] int64 or (else) logits' shape
  int64_t B = 0, C = 0, P = 0;
  bool multiclass = false, from_logits = true, has_ignore = false;
  int64_t ignore = 0;
};

inline DiceProblem prepare_dice(const char* op, const Tensor& logits, const Tensor& target, bool multiclass,
                                bool from_logits, std::optional<int64_t> ignore_index) {
  check_float_tensor(op, "logits", logits);
  LOSSEXT_CHECK(logits.dim() >= 2, op, ": argument 'logits' must be [B, C, ...], got shape ", shape_str(logits));
  LOSSEXT_CHECK(target.device() == logits.device(), op, ": argument 'target' is on a different device than logits");
  bool same;
  if (multiclass) {
    LOSSEXT_CHECK(target.scalar_type() == ScalarType::Long, op, ": argument 'target' must be int64 class labels, got ",
                  torch::headeronly::toString(target.scalar_type()));
    same = target.dim() == logits.dim() - 1 && target.size(0) == logits.size(0);
    for (int64_t i = 2; same && i < logits.dim(); ++i) same = target.size(i - 1) == logits.size(i);
  } else {
    LOSSEXT_CHECK(target.scalar_type() == logits.scalar_type(), op, ": argument 'target' has dtype ",
                  torch::headeronly::toString(target.scalar_type()), " but logits has dtype ",
                  torch::headeronly::toString(logits.scalar_type()));
    same = target.dim() == logits.dim();
    for (int64_t i = 0; same && i < logits.dim(); ++i) same = target.size(i) == logits.size(i);
  }
  LOSSEXT_CHECK(same, op, ": argument 'target' has shape ", shape_str(target), " but logits has shape ",
                shape_str(logits), multiclass ? " (multiclass targets are [B, ...] labels)" : "");
  DiceProblem p;
  p.op = op;
  p.B = logits.size(0);
  p.C = logits.size(1);
  p.P = 1;
  for (int64_t i = 2; i < logits.dim(); ++i) p.P *= logits.size(i);
  p.multiclass = multiclass;
  p.from_logits = from_logits;
  p.has_ignore = ignore_index.has_value();
  p.ignore = ignore_index.value_or(0);
  p.logits = torch::stable::contiguous(logits);
  p.target = torch::stable::contiguous(target);
  return p;
}

// The masked L1 sums: input, target [B, C, P]; mask [B, C, P] or (mask_bcast) [B, 1, P].
struct MaskedL1Problem {
  const char* op;
  Tensor input, target, mask;
  int64_t B = 0, C = 0, P = 0;
  bool mask_bcast = false;
};

inline MaskedL1Problem prepare_masked_l1(const char* op, const Tensor& input, const Tensor& target, const Tensor& mask) {
  check_float_tensor(op, "input", input);
  LOSSEXT_CHECK(input.dim() >= 2, op, ": argument 'input' must be [B, C, ...], got shape ", shape_str(input));
  check_like(op, "target", target, input);
  check_same_shape(op, "target", target, input);
  check_like(op, "mask", mask, input);
  bool ok = mask.dim() == input.dim() && mask.size(0) == input.size(0) && (mask.size(1) == 1 || mask.size(1) == input.size(1));
  for (int64_t i = 2; ok && i < input.dim(); ++i) ok = mask.size(i) == input.size(i);
  LOSSEXT_CHECK(ok, op, ": argument 'mask' has shape ", shape_str(mask), " but input has shape ", shape_str(input),
                " (the mask is [B, C, ...] or [B, 1, ...])");
  MaskedL1Problem p;
  p.op = op;
  p.B = input.size(0);
  p.C = input.size(1);
  p.P = 1;
  for (int64_t i = 2; i < input.dim(); ++i) p.P *= input.size(i);
  p.mask_bcast = mask.size(1) != input.size(1) || input.size(1) == 1;
  p.input = torch::stable::contiguous(input);
  p.target = torch::stable::contiguous(target);
  p.mask = torch::stable::contiguous(mask);
  return p;
}

inline void check_sums_grad(const char* op, const Tensor& grad, const Tensor& ref, int64_t B, int64_t C) {
  const ScalarType at = acc_type_of(ref.scalar_type());
  LOSSEXT_CHECK(grad.scalar_type() == at, op, ": argument 'grad' must have dtype ", torch::headeronly::toString(at),
                " (the forward's), got ", torch::headeronly::toString(grad.scalar_type()));
  LOSSEXT_CHECK(grad.device() == ref.device(), op, ": argument 'grad' is on a different device than the inputs");
  LOSSEXT_CHECK(grad.dim() == 3 && grad.size(0) == B && grad.size(1) == C && grad.size(2) == 4, op,
                ": argument 'grad' must have shape [", B, ", ", C, ", 4], got ", shape_str(grad));
}

inline Tensor new_sums(const Tensor& ref, int64_t B, int64_t C) {
  return lossext::empty(std::vector<int64_t>{B, C, 4}, acc_type_of(ref.scalar_type()), std::nullopt, ref.device());
}

template <class Device>
struct DiceKernels {
  static Tensor forward(Tensor logits, Tensor target, bool multiclass, bool from_logits, std::optional<int64_t> ignore_index) {
    DiceProblem p = prepare_dice("lossext::dice_sums", logits, target, multiclass, from_logits, ignore_index);
    Tensor out = new_sums(p.logits, p.B, p.C);
    Device::dice_sums(p, out);
    return out;
  }
  static Tensor backward(Tensor grad, Tensor logits, Tensor target, bool multiclass, bool from_logits,
                         std::optional<int64_t> ignore_index) {
    const char* op = "lossext::dice_sums_backward";
    DiceProblem p = prepare_dice(op, logits, target, multiclass, from_logits, ignore_index);
    check_sums_grad(op, grad, p.logits, p.B, p.C);
    Tensor g = lossext::empty(sizes_of(p.logits), p.logits.scalar_type(), std::nullopt, p.logits.device());
    Device::dice_sums_backward(p, torch::stable::contiguous(grad), g);
    return g;
  }
};

template <class Device>
struct MaskedL1Kernels {
  static Tensor forward(Tensor input, Tensor target, Tensor mask) {
    MaskedL1Problem p = prepare_masked_l1("lossext::masked_l1_sums", input, target, mask);
    Tensor out = new_sums(p.input, p.B, p.C);
    Device::masked_l1_sums(p, out);
    return out;
  }
  static Tensor backward(Tensor grad, Tensor input, Tensor target, Tensor mask) {
    const char* op = "lossext::masked_l1_sums_backward";
    MaskedL1Problem p = prepare_masked_l1(op, input, target, mask);
    check_sums_grad(op, grad, p.input, p.B, p.C);
    Tensor g = lossext::empty(sizes_of(p.input), p.input.scalar_type(), std::nullopt, p.input.device());
    Device::masked_l1_sums_backward(p, torch::stable::contiguous(grad), g);
    return g;
  }
};

template <class Device, class Lib>
void register_dense_kernels(Lib& m) {
  m.impl("joints_mse_sums", TORCH_BOX(&JointsMseKernels<Device>::forward));
  m.impl("joints_mse_sums_backward", TORCH_BOX(&JointsMseKernels<Device>::backward));
  m.impl("joints_mse_loss_with_grad", TORCH_BOX(&JointsMseKernels<Device>::forward_with_grad));
  m.impl("mask_bce", TORCH_BOX(&MaskBceKernels<Device>::forward));
  m.impl("mask_bce_backward", TORCH_BOX(&MaskBceKernels<Device>::backward));
  m.impl("dice_sums", TORCH_BOX(&DiceKernels<Device>::forward));
  m.impl("dice_sums_backward", TORCH_BOX(&DiceKernels<Device>::backward));
  m.impl("masked_l1_sums", TORCH_BOX(&MaskedL1Kernels<Device>::forward));
  m.impl("masked_l1_sums_backward", TORCH_BOX(&MaskedL1Kernels<Device>::backward));
}

}  // namespace dense
}  // namespace lossext
