// Op bodies of the metric-learning family, generic over the device (MetricCpu or MetricCuda).
// Host code only: checks, layouts and allocations. metric_cpu.cpp and metric_cuda.cu register
// them; metric_schema.cpp declares the schemas; metric_math.h holds the scalar math.
//
// A Device provides (tensors contiguous; N rows, C classes, D features; loss in features' dtype):
//   center_forward(const Problem&, Tensor& loss)
//   center_backward(const Problem&, const Tensor& grad_output, Tensor& grad_features, Tensor& grad_centers)
//   tc_forward(const Problem&, Tensor& loss, Tensor& negative [N] int64)
//   tc_backward(const Problem&, const Tensor& grad_output, const Tensor& negative, Tensor& grad_features,
//               Tensor& grad_centers)
// Memory beyond the inputs and outputs: O(N + C) (row and class vectors) plus fixed-size tiles;
// never N x C. Every center gradient row is written once, from its rows in row order (no atomics).
#pragma once

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/alloc.h"
#include "../common/checks.h"
#include "metric_math.h"

namespace lossext {
namespace metric {

struct Problem {
  const char* op;
  Tensor f, target, c;  // [N, D], [N] int64, [C, D]
  int64_t N, C, D;
  double margin;
  bool euclid, batch;
  Reduction reduction;
};

inline ScalarType acc_scalar_type(ScalarType st) {
  return st == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

inline Tensor new_tensor(std::vector<int64_t> sizes, ScalarType st, const Tensor& like) {
  return lossext::empty(sizes, st, std::nullopt, like.device());
}

// out = a @ b through the dispatcher (BLAS on CPU, cuBLAS on CUDA).
inline void mm_out(Tensor& out, const Tensor& a, const Tensor& b) {
  using torch::stable::detail::from;
  std::array<StableIValue, 3> stack{from(a), from(b), from(out)};
  STD_TORCH_CHECK(torch_call_dispatcher("aten::mm", "out", stack.data(), TORCH_ABI_VERSION) ==
                      AOTI_TORCH_SUCCESS,
                  "lossext: aten::mm.out failed");
  (void)torch::stable::detail::to<Tensor>(stack[0]);
}

// A [rows, cols] window of a contiguous 2-D tensor at (row0, col0), as a plain alias (no autograd
// history: safe for aten::mm.out from worker threads).
inline Tensor window(const Tensor& base, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  const int64_t ld = base.size(1);
  return torch::stable::from_blob(base.data_ptr(), {rows, cols}, {ld, 1}, base.device(), base.scalar_type(),
                                  row0 * ld + col0);
}

inline Problem prepare(const char* op, const Tensor& f, const Tensor& target, const Tensor& c, double margin,
                       int64_t distance, int64_t negatives, int64_t reduction) {
  check_float_tensor(op, "features", f);
  LOSSEXT_CHECK(f.dim() == 2, op, ": argument 'features' must be 2-D [N, D], got shape ", shape_str(f));
  LOSSEXT_CHECK(c.scalar_type() == f.scalar_type(), op, ": argument 'centers' has dtype ",
                torch::headeronly::toString(c.scalar_type()), " but features has dtype ",
                torch::headeronly::toString(f.scalar_type()));
  LOSSEXT_CHECK(c.device() == f.device(), op, ": argument 'centers' is on a different device than features");
  LOSSEXT_CHECK(c.dim() == 2, op, ": argument 'centers' must be 2-D [C, D], got shape ", shape_str(c));
  LOSSEXT_CHECK(c.size(1) == f.size(1), op, ": argument 'centers' has D = ", c.size(1), " but features has D = ",
                f.size(1));
  LOSSEXT_CHECK(c.size(0) > 0, op, ": argument 'centers' has no classes (shape ", shape_str(c), ")");
  const int64_t N = f.size(0);
  LOSSEXT_CHECK(target.scalar_type() == ScalarType::Long, op,
                ": argument 'target' must be int64 class indices, got ",
                torch::headeronly::toString(target.scalar_type()));
  LOSSEXT_CHECK(target.dim() == 1 && target.size(0) == N, op, ": argument 'target' must have shape [", N,
                "], got ", shape_str(target));
  LOSSEXT_CHECK(target.device() == f.device(), op, ": argument 'target' is on a different device than features");
  LOSSEXT_CHECK(std::isfinite(margin) && margin >= 0.0, op, ": argument 'margin' must be finite and >= 0, got ",
                margin);
  LOSSEXT_CHECK(distance == 0 || distance == 1, op,
                ": argument 'distance' must be 0 (squared_euclidean) or 1 (euclidean), got ", distance);
  LOSSEXT_CHECK(negatives == 0 || negatives == 1, op, ": argument 'negatives' must be 0 (all) or 1 (batch), got ",
                negatives);
  Problem p;
  p.op = op;
  p.reduction = check_reduction(op, reduction);
  p.f = torch::stable::contiguous(f);
  p.c = torch::stable::contiguous(c);
  p.target = torch::stable::contiguous(target);
  p.N = N;
  p.C = c.size(0);
  p.D = f.size(1);
  p.margin = margin;
  p.euclid = distance == 1;
  p.batch = negatives == 1;
  return p;
}

inline Tensor new_loss(const Problem& p) {
  if (p.reduction == Reduction::None) return new_tensor({p.N}, p.f.scalar_type(), p.f);
  return new_tensor({}, p.f.scalar_type(), p.f);
}

inline void check_grad_output(const Problem& p, const Tensor& g) {
  LOSSEXT_CHECK(g.scalar_type() == p.f.scalar_type(), p.op, ": argument 'grad_output' has dtype ",
                torch::headeronly::toString(g.scalar_type()), " but the loss has dtype ",
                torch::headeronly::toString(p.f.scalar_type()));
  LOSSEXT_CHECK(g.device() == p.f.device(), p.op, ": argument 'grad_output' is on a different device than features");
  if (p.reduction == Reduction::None) {
    LOSSEXT_CHECK(g.dim() == 1 && g.size(0) == p.N, p.op, ": argument 'grad_output' must have shape [", p.N,
                  "], got ", shape_str(g));
  } else {
    LOSSEXT_CHECK(g.dim() == 0, p.op, ": argument 'grad_output' must be 0-dim for a reduced loss, got shape ",
                  shape_str(g));
  }
}

template <class Device>
struct MetricKernels {
  static Tensor center_forward(Tensor f, Tensor target, Tensor c, int64_t reduction) {
    Problem p = prepare("lossext::center_loss", f, target, c, 0.0, 0, 0, reduction);
    Tensor loss = new_loss(p);
    Device::center_forward(p, loss);
    return loss;
  }

  static std::tuple<Tensor, Tensor> center_backward(Tensor grad_output, Tensor f, Tensor target, Tensor c,
                                                    int64_t reduction) {
    Problem p = prepare("lossext::center_loss_backward", f, target, c, 0.0, 0, 0, reduction);
    check_grad_output(p, grad_output);
    Tensor gf = new_tensor({p.N, p.D}, p.f.scalar_type(), p.f);
    Tensor gc = new_tensor({p.C, p.D}, p.f.scalar_type(), p.f);
    Device::center_backward(p, torch::stable::contiguous(grad_output), gf, gc);
    return {gf, gc};
  }

  static std::tuple<Tensor, Tensor> tc_forward(Tensor f, Tensor target, Tensor c, double margin, int64_t distance,
                                               int64_t negatives, int64_t reduction) {
    Problem p = prepare("lossext::triplet_center_loss", f, target, c, margin, distance, negatives, reduction);
    Tensor loss = new_loss(p);
    Tensor neg = new_tensor({p.N}, ScalarType::Long, p.f);
    Device::tc_forward(p, loss, neg);
    return {loss, neg};
  }

  static std::tuple<Tensor, Tensor> tc_backward(Tensor grad_output, Tensor f, Tensor target, Tensor c, Tensor neg,
                                                double margin, int64_t distance, int64_t negatives,
                                                int64_t reduction) {
    Problem p = prepare("lossext::triplet_center_loss_backward", f, target, c, margin, distance, negatives,
                        reduction);
    check_grad_output(p, grad_output);
    LOSSEXT_CHECK(neg.scalar_type() == ScalarType::Long && neg.dim() == 1 && neg.size(0) == p.N, p.op,
                  ": argument 'negative' must be int64 of shape [", p.N, "] (the forward's second output), got ",
                  torch::headeronly::toString(neg.scalar_type()), " ", shape_str(neg));
    LOSSEXT_CHECK(neg.device() == p.f.device(), p.op, ": argument 'negative' is on a different device than features");
    Tensor gf = new_tensor({p.N, p.D}, p.f.scalar_type(), p.f);
    Tensor gc = new_tensor({p.C, p.D}, p.f.scalar_type(), p.f);
    Device::tc_backward(p, torch::stable::contiguous(grad_output), torch::stable::contiguous(neg), gf, gc);
    return {gf, gc};
  }
};

template <class Device, class Lib>
void register_metric_kernels(Lib& m) {
  m.impl("center_loss", TORCH_BOX(&MetricKernels<Device>::center_forward));
  m.impl("center_loss_backward", TORCH_BOX(&MetricKernels<Device>::center_backward));
  m.impl("triplet_center_loss", TORCH_BOX(&MetricKernels<Device>::tc_forward));
  m.impl("triplet_center_loss_backward", TORCH_BOX(&MetricKernels<Device>::tc_backward));
}

}  // namespace metric
}  // namespace lossext
