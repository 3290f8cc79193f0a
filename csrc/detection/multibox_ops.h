// Op bodies of prior matching and the multibox losses (SSD, RefineDet), generic over the device
// (MultiboxCpu or MultiboxCuda): checks, layouts, outputs. multibox_cpu.cpp and multibox_cuda.cu
// register them; the schemas are in detection_schema.cpp; the math in multibox_math.h.
//
// A Device provides
//   match(const MatchProblem&, Tensor& matches int64 [B, P], Tensor& overlaps float64 [B, P])
//   run(const MultiboxProblem&, Tensor& loss_loc [B], Tensor& loss_conf [B], Tensor& num_pos int64 [B],
//       Tensor& grad_loc, Tensor& grad_conf)
// and writes every element. run's losses are each image's sums (smooth L1 over its positives'
// four offsets; cross-entropy over its positives and mined negatives), its gradients those of
// the losses' sum over the batch; the normalization by max(positives, 1) is the Python layer's.
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/alloc.h"
#include "../common/checks.h"
#include "batch_scale.h"
#include "multibox_math.h"

namespace lossext {
namespace detection {

struct MatchProblem {
  const char* op;
  Tensor priors;                  // contiguous float64 [P, 4] (cx, cy, w, h)
  Tensor targets;                 // contiguous float64 [B, T, 5] (x1, y1, x2, y2, label); label < 0 padding
  std::optional<Tensor> arm_loc;  // contiguous [B, P, 4] (loc's dtype): the anchors are the priors refined by it
  int64_t B, P, T;
  double thresh, v0, v1;
  MbMatching matching;
};

struct MultiboxProblem {
  MatchProblem m;
  Tensor loc;                      // contiguous [B, P, 4]
  Tensor conf;                     // contiguous [B, P, C], class 0 the background
  std::optional<Tensor> arm_conf;  // contiguous [B, P, 2]: negatives need softmax(arm_conf)[1] >= objectness
  int64_t C;
  double neg_pos_ratio, neg_overlap, objectness;
  bool binary;  // every object's class is 1 (RefineDet's ARM); else label + 1, label < C - 1
};

inline void check_f64(const char* op, const char* name, const Tensor& t, int64_t dim, int64_t last, const char* what) {
  LOSSEXT_CHECK(t.scalar_type() == ScalarType::Double && t.dim() == dim && t.size(dim - 1) == last, op,
                ": argument '", name, "' must be float64 ", what, ", got ", torch::headeronly::toString(t.scalar_type()),
                " of shape ", shape_str(t));
}

inline MatchProblem prepare_match(const char* op, const Tensor& priors, const Tensor& targets, double thresh,
                                  int64_t matching, double v0, double v1) {
  check_f64(op, "priors", priors, 2, 4, "[P, 4] (cx, cy, w, h)");
  check_f64(op, "targets", targets, 3, 5, "[B, T, 5] (x1, y1, x2, y2, label)");
  LOSSEXT_CHECK(targets.device() == priors.device(), op, ": argument 'targets' is on a different device than priors");
  LOSSEXT_CHECK(thresh >= 0.0 && thresh <= 1.0, op, ": argument 'overlap_thresh' must be in [0, 1], got ", thresh);
  LOSSEXT_CHECK(matching == 0 || matching == 1, op, ": argument 'matching' must be 0 (bipartite) or 1 (ssd_pytorch), got ",
                matching);
  MatchProblem m;
  m.op = op;
  m.priors = torch::stable::contiguous(priors);
  m.targets = torch::stable::contiguous(targets);
  m.B = targets.size(0);
  m.P = priors.size(0);
  m.T = targets.size(1);
  m.thresh = thresh;
  m.v0 = v0;
  m.v1 = v1;
  m.matching = static_cast<MbMatching>(matching);
  return m;
}

template <class Device>
std::tuple<Tensor, Tensor> match_priors(Tensor priors, Tensor targets, double overlap_thresh, int64_t matching) {
  const MatchProblem m = prepare_match("lossext::match_priors", priors, targets, overlap_thresh, matching, 1.0, 1.0);
  Tensor matches = lossext::empty({m.B, m.P}, ScalarType::Long, std::nullopt, priors.device());
  Tensor overlaps = lossext::empty({m.B, m.P}, ScalarType::Double, std::nullopt, priors.device());
  Device::match(m, matches, overlaps);
  return {overlaps, matches};  // the floating output first (opcheck's aot test sums the outputs in order)
}

inline void check_head(const char* op, const char* name, const Tensor& t, const Tensor& like, int64_t B, int64_t P,
                       int64_t last) {
  check_float_tensor(op, name, t);
  LOSSEXT_CHECK(t.scalar_type() == like.scalar_type(), op, ": argument '", name, "' has dtype ",
                torch::headeronly::toString(t.scalar_type()), " but loc has dtype ",
                torch::headeronly::toString(like.scalar_type()));
  LOSSEXT_CHECK(t.device() == like.device(), op, ": argument '", name, "' is on a different device than loc");
  LOSSEXT_CHECK(t.dim() == 3 && t.size(0) == B && t.size(1) == P && (last < 0 || t.size(2) == last), op,
                ": argument '", name, "' must have shape [", B, ", ", P, ", ", last < 0 ? "C" : std::to_string(last),
                "] (B, priors, ...), got ", shape_str(t));
}

template <class Device>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> multibox_loss(
    Tensor loc, Tensor conf, Tensor priors, Tensor targets, std::optional<Tensor> arm_loc,
    std::optional<Tensor> arm_conf, double overlap_thresh, double neg_pos_ratio, double neg_overlap,
    double variance_center, double variance_size, int64_t matching, double objectness_thresh, bool binary) {
  const char* op = "lossext::multibox_loss";
  LOSSEXT_CHECK(variance_center > 0.0 && variance_center < INFINITY, op,
                ": argument 'variance_center' must be positive and finite, got ", variance_center);
  LOSSEXT_CHECK(variance_size > 0.0 && variance_size < INFINITY, op,
                ": argument 'variance_size' must be positive and finite, got ", variance_size);
  MultiboxProblem p;
  p.m = prepare_match(op, priors, targets, overlap_thresh, matching, variance_center, variance_size);
  check_float_tensor(op, "loc", loc);
  LOSSEXT_CHECK(loc.dim() == 3 && loc.size(0) == p.m.B && loc.size(1) == p.m.P && loc.size(2) == 4, op,
                ": argument 'loc' must have shape [", p.m.B, ", ", p.m.P, ", 4] (B, priors, 4), got ", shape_str(loc));
  LOSSEXT_CHECK(priors.device() == loc.device(), op, ": argument 'priors' is on a different device than loc");
  check_head(op, "conf", conf, loc, p.m.B, p.m.P, -1);
  p.C = conf.size(2);
  LOSSEXT_CHECK(p.C >= 2, op, ": argument 'conf' must have at least 2 classes (background and one), got ", p.C);
  LOSSEXT_CHECK(!binary || p.C == 2, op, ": argument 'conf' must have 2 classes (binary), got ", p.C);
  LOSSEXT_CHECK(neg_pos_ratio >= 0.0 && neg_pos_ratio < INFINITY, op,
                ": argument 'neg_pos_ratio' must be finite and >= 0, got ", neg_pos_ratio);
  LOSSEXT_CHECK(!(neg_overlap != neg_overlap), op, ": argument 'neg_overlap' must not be NaN");
  LOSSEXT_CHECK(!(objectness_thresh != objectness_thresh), op, ": argument 'objectness_thresh' must not be NaN");
  if (arm_loc.has_value()) {
    check_head(op, "arm_loc", *arm_loc, loc, p.m.B, p.m.P, 4);
    p.m.arm_loc = torch::stable::contiguous(*arm_loc);
  }
  if (arm_conf.has_value()) {
    check_head(op, "arm_conf", *arm_conf, loc, p.m.B, p.m.P, 2);
    p.arm_conf = torch::stable::contiguous(*arm_conf);
  }
  p.loc = torch::stable::contiguous(loc);
  p.conf = torch::stable::contiguous(conf);
  p.neg_pos_ratio = neg_pos_ratio;
  p.neg_overlap = neg_overlap;
  p.objectness = objectness_thresh;
  p.binary = binary;
  const auto dev = loc.device();
  Tensor loss_loc = lossext::empty({p.m.B}, loc.scalar_type(), std::nullopt, dev);
  Tensor loss_conf = lossext::empty({p.m.B}, loc.scalar_type(), std::nullopt, dev);
  Tensor num_pos = lossext::empty({p.m.B}, ScalarType::Long, std::nullopt, dev);
  Tensor grad_loc = lossext::empty({p.m.B, p.m.P, 4}, loc.scalar_type(), std::nullopt, dev);
  Tensor grad_conf = lossext::empty({p.m.B, p.m.P, p.C}, loc.scalar_type(), std::nullopt, dev);
  Device::run(p, loss_loc, loss_conf, num_pos, grad_loc, grad_conf);
  return {loss_loc, loss_conf, num_pos, grad_loc, grad_conf};
}

// The backward: each image's gradients times that image's upstream gradients (batch_scale.h).
// loc and conf are the heads the gradients belong to (autograd sees the results depend on them).
inline std::tuple<Tensor, Tensor> multibox_loss_backward(Tensor grad_loss_loc, Tensor grad_loss_conf, Tensor grad_loc,
                                                         Tensor grad_conf, Tensor loc, Tensor conf) {
  const char* op = "lossext::multibox_loss_backward";
  check_float_tensor(op, "loc", loc);
  LOSSEXT_CHECK(loc.dim() == 3 && loc.size(2) == 4, op, ": argument 'loc' must be [B, P, 4], got shape ",
                shape_str(loc));
  check_head(op, "conf", conf, loc, loc.size(0), loc.size(1), -1);
  check_head(op, "grad_loc", grad_loc, loc, loc.size(0), loc.size(1), 4);
  check_head(op, "grad_conf", grad_conf, loc, loc.size(0), loc.size(1), conf.size(2));
  return {scale_per_image(op, "grad_loss_loc", grad_loss_loc, "grad_loc", grad_loc),
          scale_per_image(op, "grad_loss_conf", grad_loss_conf, "grad_conf", grad_conf)};
}

template <class Device, class Lib>
void register_multibox_kernels(Lib& m) {
  m.impl("match_priors", TORCH_BOX(&match_priors<Device>));
  m.impl("multibox_loss", TORCH_BOX(&multibox_loss<Device>));
  m.impl("multibox_loss_backward", TORCH_BOX(&multibox_loss_backward));
}

}  // namespace detection
}  // namespace lossext
