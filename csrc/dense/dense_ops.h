// Op bodies of the dense-prediction family, generic over the device (DenseCpu or DenseCuda):
// checks, layouts and allocations. dense_cpu.cpp and dense_cuda.cu register them;
// dense_schema.cpp declares the schemas; dense_math.h holds the per-element math.
//
// A Device provides (tensors contiguous; R = B K rows of P pixels each):
//   row_sums(const HeatmapProblem&, Tensor& sums [R] acc dtype)     S_r = sum_p (x - y)^2
//   row_sums_backward(const HeatmapProblem&, const Tensor& grad [R], Tensor& grad_output)
//        2 g_r (x - y); a row whose g_r is 0 is written as zeros without reading x or y
//   mask_bce(const MaskProblem&, Tensor& out)     per-pixel BCE [R, P] or per-RoI sums [R] of
//        the labelled channel; a bad label raises (CPU) or gives NaN (CUDA), never an index
//   mask_bce_backward(const MaskProblem&, const Tensor& grad, Tensor& grad_logits, Tensor& grad_targets)
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

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
    Tensor out = per_pixel ? torch::stable::empty(sizes_of(p.targets), p.logits.scalar_type(), std::nullopt,
                                                  p.logits.device())
                           : torch::stable::empty(std::vector<int64_t>{p.R}, acc_type_of(p.logits.scalar_type()),
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
    Tensor gl = torch::stable::empty(sizes_of(p.logits), p.logits.scalar_type(), std::nullopt, p.logits.device());
    Tensor gtg = torch::stable::empty(sizes_of(p.targets), p.logits.scalar_type(), std::nullopt, p.logits.device());
    Device::mask_bce_backward(p, torch::stable::contiguous(grad), gl, gtg);
    return {gl, gtg};
  }
};

template <class Device>
struct JointsMseKernels {
  static Tensor forward(Tensor output, Tensor target) {
    HeatmapProblem p = prepare_heatmaps("lossext::joints_mse_sums", output, target);
    Tensor sums = torch::stable::empty(std::vector<int64_t>{p.B, p.K}, acc_type_of(p.output.scalar_type()), std::nullopt,
                                       p.output.device());
    Device::row_sums(p, sums);
    return sums;
  }

  static Tensor backward(Tensor grad, Tensor output, Tensor target) {
    const char* op = "lossext::joints_mse_sums_backward";
    HeatmapProblem p = prepare_heatmaps(op, output, target);
    const ScalarType at = acc_type_of(p.output.scalar_type());
    LOSSEXT_CHECK(grad.scalar_type() == at, op, ": argument 'grad' must have dtype ", torch::headeronly::toString(at),
                  " (the forward's), got ", torch::headeronly::toString(grad.scalar_type()));
    LOSSEXT_CHECK(grad.device() == p.output.device(), op, ": argument 'grad' is on a different device than output");
    LOSSEXT_CHECK(grad.dim() == 2 && grad.size(0) == p.B && grad.size(1) == p.K, op,
                  ": argument 'grad' must have shape [", p.B, ", ", p.K, "], got ", shape_str(grad));
    Tensor g = torch::stable::empty(sizes_of(p.output), p.output.scalar_type(), std::nullopt, p.output.device());
    Device::row_sums_backward(p, torch::stable::contiguous(grad), g);
    return g;
  }
};

template <class Device, class Lib>
void register_dense_kernels(Lib& m) {
  m.impl("joints_mse_sums", TORCH_BOX(&JointsMseKernels<Device>::forward));
  m.impl("joints_mse_sums_backward", TORCH_BOX(&JointsMseKernels<Device>::backward));
  m.impl("mask_bce", TORCH_BOX(&MaskBceKernels<Device>::forward));
  m.impl("mask_bce_backward", TORCH_BOX(&MaskBceKernels<Device>::backward));
}

}  // namespace dense
}  // namespace lossext
