// Op body of the YOLOv2 region loss, generic over the device (RegionCpu or RegionCuda): checks,
// layouts, outputs. region_cpu.cpp and region_cuda.cu register it; the schema is in
// detection_schema.cpp; the math in region_math.h.
//
// A Device provides
//   run(const RegionProblem&, Tensor& loss [B], Tensor& grad (output's shape), Tensor& stats [7])
// and writes every element of the three: the per-image losses, d(sum of the losses)/d output
// (the forward writes the gradient, as darknet's forward writes its deltas; the backward op
// only scales it per image), and the statistics (region_math.h: RegionStat). Reductions are in
// a fixed order.
#pragma once

#include <array>
#include <cmath>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/alloc.h"
#include "../common/checks.h"
#include "batch_scale.h"
#include "region_math.h"

namespace lossext {
namespace detection {

struct RegionProblem {
  const char* op;
  Tensor output;   // contiguous [B, A (5 + C), H, W]
  Tensor targets;  // contiguous float64 [B, T, 5]
  Tensor anchors;  // contiguous float64 [A, 2]
  Tensor prior;    // 0-dim float64: the warm-up prior's scale (p.prior_scale is read from it on
                   // the CPU; the CUDA kernel reads it on the device)
  int64_t B;
  RegionParams p;
};

inline void check_scale(const char* op, const char* name, double v) {
  LOSSEXT_CHECK(v >= 0.0 && v < INFINITY, op, ": argument '", name, "' must be finite and >= 0, got ", v);
}

inline RegionProblem prepare_region(const char* op, const Tensor& output, const Tensor& targets, const Tensor& anchors,
                                    int64_t num_classes, double object_scale, double noobject_scale,
                                    double class_scale, double coord_scale, double thresh, bool rescore,
                                    bool bias_match, const Tensor& prior_scale, bool scale_coord_by_size) {
  check_float_tensor(op, "output", output);
  LOSSEXT_CHECK(output.dim() == 4, op, ": argument 'output' must be [B, A * (5 + C), H, W], got shape ",
                shape_str(output));
  LOSSEXT_CHECK(anchors.scalar_type() == ScalarType::Double && anchors.dim() == 2 && anchors.size(1) == 2, op,
                ": argument 'anchors' must be float64 [A, 2], got ", torch::headeronly::toString(anchors.scalar_type()),
                " of shape ", shape_str(anchors));
  LOSSEXT_CHECK(anchors.size(0) > 0, op, ": argument 'anchors' has no anchors");
  LOSSEXT_CHECK(output.size(2) > 0 && output.size(3) > 0, op, ": argument 'output' has an empty grid (shape ",
                shape_str(output), ")");
  LOSSEXT_CHECK(num_classes >= 1, op, ": argument 'num_classes' must be >= 1, got ", num_classes);
  const int64_t A = anchors.size(0);
  LOSSEXT_CHECK(output.size(1) == A * (5 + num_classes), op, ": argument 'output' has ", output.size(1),
                " channels, but A * (5 + num_classes) = ", A, " * (5 + ", num_classes, ") = ", A * (5 + num_classes));
  LOSSEXT_CHECK(targets.scalar_type() == ScalarType::Double && targets.dim() == 3 && targets.size(2) == 5 &&
                    targets.size(0) == output.size(0),
                op, ": argument 'targets' must be float64 [B, T, 5] with B = ", output.size(0), ", got ",
                torch::headeronly::toString(targets.scalar_type()), " of shape ", shape_str(targets));
  LOSSEXT_CHECK(targets.device() == output.device(), op, ": argument 'targets' is on a different device than output");
  LOSSEXT_CHECK(anchors.device() == output.device(), op, ": argument 'anchors' is on a different device than output");
  check_scale(op, "object_scale", object_scale);
  check_scale(op, "noobject_scale", noobject_scale);
  check_scale(op, "class_scale", class_scale);
  check_scale(op, "coord_scale", coord_scale);
  LOSSEXT_CHECK(prior_scale.scalar_type() == ScalarType::Double && prior_scale.dim() == 0, op,
                ": argument 'prior_scale' must be a 0-dim float64 tensor, got ",
                torch::headeronly::toString(prior_scale.scalar_type()), " of shape ", shape_str(prior_scale));
  LOSSEXT_CHECK(prior_scale.device() == output.device(), op,
                ": argument 'prior_scale' is on a different device than output");
  LOSSEXT_CHECK(std::isfinite(thresh), op, ": argument 'thresh' must be finite, got ", thresh);
  RegionProblem r;
  r.op = op;
  r.output = torch::stable::contiguous(output);
  r.targets = torch::stable::contiguous(targets);
  r.anchors = torch::stable::contiguous(anchors);
  r.prior = prior_scale;
  r.B = output.size(0);
  r.p = {A, num_classes, output.size(2), output.size(3), targets.size(1), object_scale, noobject_scale, class_scale,
         coord_scale, thresh, /*prior_scale: the device's run() reads r.prior*/ 0.0, rescore, bias_match,
         scale_coord_by_size};
  return r;
}

inline ScalarType region_stats_type(ScalarType st) {
  return st == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

template <class Device>
std::tuple<Tensor, Tensor, Tensor> yolov2_region_loss(Tensor output, Tensor targets, Tensor anchors,
                                                      int64_t num_classes, double object_scale, double noobject_scale,
                                                      double class_scale, double coord_scale, double thresh,
                                                      bool rescore, bool bias_match, Tensor prior_scale,
                                                      bool scale_coord_by_size) {
  const auto r = prepare_region("lossext::yolov2_region_loss", output, targets, anchors, num_classes, object_scale,
                                noobject_scale, class_scale, coord_scale, thresh, rescore, bias_match, prior_scale,
                                scale_coord_by_size);
  std::vector<int64_t> shape;
  for (int64_t i = 0; i < 4; ++i) shape.push_back(output.size(i));
  Tensor loss = lossext::empty({r.B}, output.scalar_type(), std::nullopt, output.device());
  Tensor grad = lossext::empty(shape, output.scalar_type(), std::nullopt, output.device());
  Tensor stats = lossext::empty({int64_t(kNumStats)}, region_stats_type(output.scalar_type()), std::nullopt,
                                      output.device());
  Device::run(r, loss, grad, stats);
  return {loss, grad, stats};
}

// The backward: the forward's gradient of each image times that image's upstream gradient,
// grad * grad_output[b] (batch_scale.h). output is the head
// the gradient belongs to: autograd sees the result depend on it (its derivative raises).
inline Tensor yolov2_region_loss_backward(Tensor grad_output, Tensor grad, Tensor output) {
  const char* op = "lossext::yolov2_region_loss_backward";
  check_like(op, "grad", grad, output);
  check_same_shape(op, "grad", grad, output);
  LOSSEXT_CHECK(grad.dim() == 4, op, ": argument 'grad' must be [B, A * (5 + C), H, W], got shape ", shape_str(grad));
  return scale_per_image(op, "grad_output", grad_output, "grad", grad);
}

template <class Device, class Lib>
void register_region_kernels(Lib& m) {
  m.impl("yolov2_region_loss", TORCH_BOX(&yolov2_region_loss<Device>));
  m.impl("yolov2_region_loss_backward", TORCH_BOX(&yolov2_region_loss_backward));
}

}  // namespace detection
}  // namespace lossext
