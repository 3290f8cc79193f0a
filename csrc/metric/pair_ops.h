// Op bodies of the pair-based metric losses (triplet loss with online mining, contrastive loss),
// generic over the device (PairCpu or PairCuda). Host code only: checks, layouts, allocations.
// pair_cpu.cpp and pair_cuda.cu register them; metric_schema.cpp declares the schemas;
// pair_math.h holds the scalar math.
//
// A Device provides (tensors contiguous; N anchors, M references, D features):
//   pair_forward(const PairProblem&, Tensor& loss, Tensor& hard [N, 2] int64, Tensor& counts [4] int64)
//   pair_backward(const PairProblem&, const Tensor& grad_output, const Tensor& hard, const Tensor& counts,
//                 Tensor& grad_embeddings [N, D], Tensor& grad_ref [M, D] or [0, D] (ref_grad false))
// hard: batch_hard's (positive, negative) reference index per anchor (-1: none); the other
// minings leave it -1 (their backward mines again). counts: (valid, nonzero) of the triplets or
// positive pairs, then (valid, nonzero) of the negative pairs (contrastive; 0 for triplets).
// A mean over no terms is 0 (pytorch-metric-learning's reducers), except for an empty batch
// (N = 0): NaN, as torch's mean of nothing.
// Memory beyond the inputs and outputs: O(N + M) vectors plus per-task rows of M and tiles;
// never N x M. Every gradient row is summed in a fixed order (no atomics).
#pragma once

#include <cmath>
#include <tuple>
#include <vector>

#include "metric_ops.h"
#include "pair_math.h"

namespace lossext {
namespace metric {

struct PairProblem {
  const char* op;
  Tensor x, y, r, ry;  // embeddings [N, D], labels [N] int64, ref_embeddings [M, D], ref_labels [M] int64
  int64_t N, M, D;
  bool exclude_self;   // the reference set is the batch: j != a
  Mining mining;
  PairDistance dist;
  bool soft;
  double margin;       // triplets: the margin (0 with soft_margin); contrastive: pos_margin
  double neg_margin;   // contrastive
  PairReduction reduction;
  bool ref_grad;
};

inline PairProblem prepare_pair(const char* op, const Tensor& x, const Tensor& y, const Tensor& r,
                                const Tensor& ry, bool exclude_self, double margin, double neg_margin,
                                int64_t mining, int64_t distance, bool soft, int64_t reduction) {
  check_float_tensor(op, "embeddings", x);
  LOSSEXT_CHECK(x.dim() == 2, op, ": argument 'embeddings' must be 2-D [N, D], got shape ", shape_str(x));
  LOSSEXT_CHECK(r.scalar_type() == x.scalar_type(), op, ": argument 'ref_embeddings' has dtype ",
                torch::headeronly::toString(r.scalar_type()), " but embeddings has dtype ",
                torch::headeronly::toString(x.scalar_type()));
  LOSSEXT_CHECK(r.device() == x.device(), op, ": argument 'ref_embeddings' is on a different device than embeddings");
  LOSSEXT_CHECK(r.dim() == 2, op, ": argument 'ref_embeddings' must be 2-D [M, D], got shape ", shape_str(r));
  LOSSEXT_CHECK(r.size(1) == x.size(1), op, ": argument 'ref_embeddings' has D = ", r.size(1),
                " but embeddings has D = ", x.size(1));
  const int64_t N = x.size(0), M = r.size(0);
  const char* names[2] = {"labels", "ref_labels"};
  const Tensor* labels[2] = {&y, &ry};
  const int64_t rows[2] = {N, M};
  for (int k = 0; k < 2; ++k) {
    const Tensor& t = *labels[k];
    LOSSEXT_CHECK(t.scalar_type() == ScalarType::Long, op, ": argument '", names[k], "' must be int64, got ",
                  torch::headeronly::toString(t.scalar_type()));
    LOSSEXT_CHECK(t.dim() == 1 && t.size(0) == rows[k], op, ": argument '", names[k], "' must have shape [",
                  rows[k], "], got ", shape_str(t));
    LOSSEXT_CHECK(t.device() == x.device(), op, ": argument '", names[k],
                  "' is on a different device than embeddings");
  }
  LOSSEXT_CHECK(!exclude_self || M == N, op, ": argument 'exclude_self' needs the batch as its reference (M = N), got N = ",
                N, " and M = ", M);
  const bool contrastive = mining == 3;
  LOSSEXT_CHECK(std::isfinite(margin) && margin >= 0.0, op, ": argument '", contrastive ? "pos_margin" : "margin",
                "' must be finite and >= 0, got ", margin);
  LOSSEXT_CHECK(std::isfinite(neg_margin) && neg_margin >= 0.0, op,
                ": argument 'neg_margin' must be finite and >= 0, got ", neg_margin);
  LOSSEXT_CHECK(mining >= 0 && mining <= 3, op,
                ": argument 'mining' must be 0 (batch_hard), 1 (batch_all) or 2 (semi_hard), got ", mining);
  LOSSEXT_CHECK(distance >= 0 && distance <= 2, op,
                ": argument 'distance' must be 0 (squared_euclidean), 1 (euclidean) or 2 (dot), got ", distance);
  LOSSEXT_CHECK(reduction >= 0 && reduction <= 3, op,
                ": argument 'reduction' must be 0 (none), 1 (mean_all), 2 (sum) or 3 (mean_nonzero), got ", reduction);
  PairProblem p;
  p.op = op;
  p.x = torch::stable::contiguous(x);
  p.y = torch::stable::contiguous(y);
  p.r = torch::stable::contiguous(r);
  p.ry = torch::stable::contiguous(ry);
  p.N = N;
  p.M = M;
  p.D = x.size(1);
  p.exclude_self = exclude_self;
  p.mining = static_cast<Mining>(mining);
  p.dist = static_cast<PairDistance>(distance);
  p.soft = soft;
  p.margin = margin;
  p.neg_margin = neg_margin;
  p.reduction = static_cast<PairReduction>(reduction);
  p.ref_grad = true;
  return p;
}

inline void check_pair_grad_output(const PairProblem& p, const Tensor& g) {
  LOSSEXT_CHECK(g.scalar_type() == p.x.scalar_type(), p.op, ": argument 'grad_output' has dtype ",
                torch::headeronly::toString(g.scalar_type()), " but the loss has dtype ",
                torch::headeronly::toString(p.x.scalar_type()));
  LOSSEXT_CHECK(g.device() == p.x.device(), p.op, ": argument 'grad_output' is on a different device than embeddings");
  if (p.reduction == PairReduction::None) {
    LOSSEXT_CHECK(g.dim() == 1 && g.size(0) == p.N, p.op, ": argument 'grad_output' must have shape [", p.N,
                  "], got ", shape_str(g));
  } else {
    LOSSEXT_CHECK(g.dim() == 0, p.op, ": argument 'grad_output' must be 0-dim for a reduced loss, got shape ",
                  shape_str(g));
  }
}

inline void check_saved(const PairProblem& p, const char* name, const Tensor& t, std::vector<int64_t> shape) {
  bool ok = t.scalar_type() == ScalarType::Long && t.dim() == int64_t(shape.size());
  for (size_t k = 0; ok && k < shape.size(); ++k) ok = t.size(int64_t(k)) == shape[k];
  LOSSEXT_CHECK(ok, p.op, ": argument '", name, "' must be int64 of shape [", shape[0],
                shape.size() > 1 ? ", 2" : "", "] (the forward's output), got ",
                torch::headeronly::toString(t.scalar_type()), " ", shape_str(t));
  LOSSEXT_CHECK(t.device() == p.x.device(), p.op, ": argument '", name, "' is on a different device than embeddings");
}

// float16 / bfloat16 run as float32, their accumulation type: the host converts the embeddings
// (and grad_output) once and rounds the results once, so the kernels are compiled for float and
// double only (half the code, the same values: they would convert every element to float anyway).
inline bool is_half(ScalarType st) { return st == ScalarType::Half || st == ScalarType::BFloat16; }

inline Tensor converted(const Tensor& t, ScalarType st) {
  if (t.scalar_type() == st) return t;
  std::vector<int64_t> sizes(t.dim());
  for (int64_t k = 0; k < t.dim(); ++k) sizes[k] = t.size(k);
  Tensor o = new_tensor(sizes, st, t);
  torch::stable::copy_(o, t);
  return o;
}

// Calls f(float{}) or f(double{}) (pair kernels: half types were converted to float32).
template <class F>
void dispatch_pair(const PairProblem& p, F&& f) {
  if (p.x.scalar_type() == ScalarType::Double) {
    f(double{});
  } else {
    STD_TORCH_CHECK(p.x.scalar_type() == ScalarType::Float, p.op, ": unsupported dtype ",
                    torch::headeronly::toString(p.x.scalar_type()));
    f(float{});
  }
}

// The problem in float32 for half inputs (the shared batch stays one tensor).
inline ScalarType to_compute_type(PairProblem& p) {
  const ScalarType st = p.x.scalar_type();
  if (!is_half(st)) return st;
  const bool same = p.exclude_self && p.r.data_ptr() == p.x.data_ptr();
  p.x = converted(p.x, ScalarType::Float);
  p.r = same ? p.x : converted(p.r, ScalarType::Float);
  return st;
}

template <class Device>
struct PairKernels {
  static Tensor new_pair_loss(const PairProblem& p) {
    if (p.reduction == PairReduction::None) return new_tensor({p.N}, p.x.scalar_type(), p.x);
    return new_tensor({}, p.x.scalar_type(), p.x);
  }

  static std::tuple<Tensor, Tensor, Tensor> forward(PairProblem& p) {
    const ScalarType st = to_compute_type(p);
    Tensor loss = new_pair_loss(p);
    Tensor hard = new_tensor({p.N, 2}, ScalarType::Long, p.x);
    Tensor counts = new_tensor({4}, ScalarType::Long, p.x);
    Device::pair_forward(p, loss, hard, counts);
    return {converted(loss, st), hard, counts};
  }

  static std::tuple<Tensor, Tensor> backward(PairProblem& p, const Tensor& grad_output, const Tensor& hard,
                                             const Tensor& counts, bool ref_grad) {
    check_pair_grad_output(p, grad_output);
    check_saved(p, "counts", counts, {4});
    p.ref_grad = ref_grad;
    const ScalarType st = to_compute_type(p);
    Tensor ge = new_tensor({p.N, p.D}, p.x.scalar_type(), p.x);
    Tensor gr = new_tensor({ref_grad ? p.M : 0, p.D}, p.x.scalar_type(), p.x);
    Device::pair_backward(p, torch::stable::contiguous(converted(grad_output, p.x.scalar_type())),
                          torch::stable::contiguous(hard), torch::stable::contiguous(counts), ge, gr);
    return {converted(ge, st), converted(gr, st)};
  }

  static std::tuple<Tensor, Tensor, Tensor> triplet(Tensor x, Tensor y, Tensor r, Tensor ry, bool exclude_self,
                                                    double margin, int64_t mining, int64_t distance,
                                                    bool soft_margin, int64_t reduction) {
    LOSSEXT_CHECK(mining >= 0 && mining <= 2, "lossext::triplet_margin_loss: argument 'mining' must be 0 (batch_hard), "
                  "1 (batch_all) or 2 (semi_hard), got ", mining);
    PairProblem p = prepare_pair("lossext::triplet_margin_loss", x, y, r, ry, exclude_self, margin, 0.0, mining,
                                 distance, soft_margin, reduction);
    return forward(p);
  }

  static std::tuple<Tensor, Tensor> triplet_backward(Tensor go, Tensor x, Tensor y, Tensor r, Tensor ry,
                                                     Tensor hard, Tensor counts, bool exclude_self, double margin,
                                                     int64_t mining, int64_t distance, bool soft_margin,
                                                     int64_t reduction, bool ref_grad) {
    LOSSEXT_CHECK(mining >= 0 && mining <= 2, "lossext::triplet_margin_loss_backward: argument 'mining' must be 0 "
                  "(batch_hard), 1 (batch_all) or 2 (semi_hard), got ", mining);
    PairProblem p = prepare_pair("lossext::triplet_margin_loss_backward", x, y, r, ry, exclude_self, margin, 0.0,
                                 mining, distance, soft_margin, reduction);
    check_saved(p, "hard", hard, {p.N, 2});
    return backward(p, go, hard, counts, ref_grad);
  }

  static std::tuple<Tensor, Tensor> contrastive(Tensor x, Tensor y, Tensor r, Tensor ry, bool exclude_self,
                                                double pos_margin, double neg_margin, int64_t distance,
                                                int64_t reduction) {
    PairProblem p = prepare_pair("lossext::contrastive_loss", x, y, r, ry, exclude_self, pos_margin, neg_margin,
                                 3, distance, false, reduction);
    auto out = forward(p);
    return {std::get<0>(out), std::get<2>(out)};
  }

  static std::tuple<Tensor, Tensor> contrastive_backward(Tensor go, Tensor x, Tensor y, Tensor r, Tensor ry,
                                                         Tensor counts, bool exclude_self, double pos_margin,
                                                         double neg_margin, int64_t distance, int64_t reduction,
                                                         bool ref_grad) {
    PairProblem p = prepare_pair("lossext::contrastive_loss_backward", x, y, r, ry, exclude_self, pos_margin,
                                 neg_margin, 3, distance, false, reduction);
    return backward(p, go, new_tensor({p.N, 2}, ScalarType::Long, p.x), counts, ref_grad);
  }
};

template <class Device, class Lib>
void register_pair_kernels(Lib& m) {
  m.impl("triplet_margin_loss", TORCH_BOX(&PairKernels<Device>::triplet));
  m.impl("triplet_margin_loss_backward", TORCH_BOX(&PairKernels<Device>::triplet_backward));
  m.impl("contrastive_loss", TORCH_BOX(&PairKernels<Device>::contrastive));
  m.impl("contrastive_loss_backward", TORCH_BOX(&PairKernels<Device>::contrastive_backward));
}

}  // namespace metric
}  // namespace lossext
