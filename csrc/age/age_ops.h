// Op bodies of the age-estimation family, generic over the device (AgeCpu or AgeCuda): checks,
// layouts and allocations. age_cpu.cpp and age_cuda.cu register them; age_schema.cpp declares
// the schemas; age_math.h holds the per-row math.
//
// The pattern: a row-wise softmax with a per-row regression on its moments. A Device provides
// (tensors contiguous; N rows, K bins):
//   moments(const AgeProblem&, Tensor& stats [N, 3] f64, Tensor* terms [N, 3] f64, Tensor* grad [N, K])
//        per row lse, m - start_age, v; with terms (the loss), also L_s, L_m, L_v per row; with
//        grad (the one-pass path), also dL/dz of the total for a unit upstream gradient, from the
//        same pass over the row
//   finalize(const AgeProblem&, const Tensor& terms, Tensor* out[4])
//        total, softmax, mean and variance terms, reduced (or per row), in the logits' dtype
//   moments_out(const AgeProblem&, const Tensor& stats, Tensor& mean, Tensor& var)
//        age_from_logits' m and v in the logits' dtype
//   backward(const AgeProblem&, const AgeGrads&, const Tensor& stats, Tensor& grad [N, K],
//            Tensor* grad_target [N] f64)
//        dL/dz (and dL/dy for float64 ages) from the outputs' gradients (age_math.h)
// A later family with a softmax over bins and a regression on it (DLDL, ordinal losses) adds a
// mode to the coefficients (age_math.h row_coefs) and reuses the row kernels.
#pragma once

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/alloc.h"
#include "../common/checks.h"
#include "age_math.h"

namespace lossext {
namespace age {

struct AgeProblem {
  const char* op;
  Tensor logits;                 // [N, K]
  std::optional<Tensor> target;  // [N] int64 or float64 ages; absent for age_from_logits
  bool target_float = false;
  double lambda_mean = 0.0, lambda_var = 0.0;
  int64_t start = 0;
  bool include_softmax = false;
  Reduction reduction = Reduction::None;
  int64_t N = 0, K = 0;
};

// The gradients of the four outputs (total, softmax, mean, variance terms; age_from_logits:
// mean and variance only), each absent (zero) or [N] / 0-dim in the logits' dtype.
struct AgeGrads {
  std::optional<Tensor> total, soft, mean, var;
};

// A row's weight in a reduced loss: 1/N for 'mean', else 1 (the backward and the one-pass
// gradient scale the upstream gradient by it).
inline double row_weight(const AgeProblem& p) { return p.reduction == Reduction::Mean ? 1.0 / double(p.N) : 1.0; }

inline Tensor new_tensor(std::vector<int64_t> sizes, ScalarType st, const Tensor& like) {
  return lossext::empty(sizes, st, std::nullopt, like.device());
}

// An output of `per_row` ([N]) or 0-dim shape in the logits' dtype.
inline Tensor new_out(const AgeProblem& p, bool per_row) {
  return per_row ? new_tensor({p.N}, p.logits.scalar_type(), p.logits)
                 : new_tensor({}, p.logits.scalar_type(), p.logits);
}

inline AgeProblem prepare(const char* op, const Tensor& logits, const Tensor* target, double lambda_mean,
                          double lambda_var, int64_t start_age, bool include_softmax, int64_t reduction) {
  check_float_tensor(op, "logits", logits);
  LOSSEXT_CHECK(logits.dim() == 2, op, ": argument 'logits' must be 2-D [N, K], got shape ", shape_str(logits));
  AgeProblem p;
  p.op = op;
  p.N = logits.size(0);
  p.K = logits.size(1);
  LOSSEXT_CHECK(p.K > 0, op, ": argument 'logits' has no age bins (shape ", shape_str(logits), ")");
  LOSSEXT_CHECK(p.K <= int64_t(2147483647), op, ": argument 'logits' has more than 2^31 - 1 age bins (shape ",
                shape_str(logits), ")");
  LOSSEXT_CHECK(std::fabs(double(start_age)) <= kMaxStartAge, op,
                ": argument 'start_age' must be in [-2^53, 2^53], got ", start_age);
  LOSSEXT_CHECK(std::isfinite(lambda_mean) && lambda_mean >= 0.0, op,
                ": argument 'lambda_mean' must be finite and >= 0, got ", lambda_mean);
  LOSSEXT_CHECK(std::isfinite(lambda_var) && lambda_var >= 0.0, op,
                ": argument 'lambda_var' must be finite and >= 0, got ", lambda_var);
  p.reduction = check_reduction(op, reduction);
  p.lambda_mean = lambda_mean;
  p.lambda_var = lambda_var;
  p.start = start_age;
  p.include_softmax = include_softmax;
  p.logits = torch::stable::contiguous(logits);
  if (target != nullptr) {
    const ScalarType st = target->scalar_type();
    LOSSEXT_CHECK(st == ScalarType::Long || st == ScalarType::Double, op,
                  ": argument 'target' must be int64 or float64 ages, got ", torch::headeronly::toString(st));
    LOSSEXT_CHECK(target->dim() == 1 && target->size(0) == p.N, op, ": argument 'target' must have shape [", p.N,
                  "], got ", shape_str(*target));
    LOSSEXT_CHECK(target->device() == logits.device(), op,
                  ": argument 'target' is on a different device than the logits");
    p.target = torch::stable::contiguous(*target);
    p.target_float = st == ScalarType::Double;
  }
  return p;
}

inline void check_stats(const char* op, const Tensor& stats, const AgeProblem& p) {
  LOSSEXT_CHECK(stats.scalar_type() == ScalarType::Double, op, ": argument 'stats' must be float64, got ",
                torch::headeronly::toString(stats.scalar_type()), " (stats is the forward's last output)");
  LOSSEXT_CHECK(stats.dim() == 2 && stats.size(0) == p.N && stats.size(1) == 3, op,
                ": argument 'stats' must have shape [", p.N, ", 3] (the forward's last output), got shape ",
                shape_str(stats));
  LOSSEXT_CHECK(stats.device() == p.logits.device(), op,
                ": argument 'stats' is on a different device than the logits");
}

// An output's gradient: the logits' dtype and device, [N] when per_row, else 0-dim.
inline std::optional<Tensor> check_grad(const char* op, const char* name, const std::optional<Tensor>& g,
                                        const AgeProblem& p, bool per_row) {
  if (!g.has_value()) return std::nullopt;
  LOSSEXT_CHECK(g->scalar_type() == p.logits.scalar_type(), op, ": argument '", name, "' has dtype ",
                torch::headeronly::toString(g->scalar_type()), " but the logits have dtype ",
                torch::headeronly::toString(p.logits.scalar_type()));
  LOSSEXT_CHECK(g->device() == p.logits.device(), op, ": argument '", name,
                "' is on a different device than the logits");
  if (per_row) {
    LOSSEXT_CHECK(g->dim() == 1 && g->size(0) == p.N, op, ": argument '", name, "' must have shape [", p.N,
                  "], got ", shape_str(*g));
  } else {
    LOSSEXT_CHECK(g->dim() == 0, op, ": argument '", name, "' must be 0-dim for a reduced loss, got shape ",
                  shape_str(*g));
  }
  return torch::stable::contiguous(*g);
}

template <class Device>
struct MeanVarianceKernels {
  using Outs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

  // The loss (and, with grad, its one-pass gradient): outputs 0-3, stats.
  static Outs run(const char* op, Tensor logits, Tensor target, double lambda_mean, double lambda_var,
                  int64_t start_age, bool include_softmax, int64_t reduction, std::optional<Tensor>* grad) {
    AgeProblem p = prepare(op, logits, &target, lambda_mean, lambda_var, start_age, include_softmax, reduction);
    Tensor stats = new_tensor({p.N, 3}, ScalarType::Double, p.logits);
    Tensor terms = new_tensor({p.N, 3}, ScalarType::Double, p.logits);
    if (grad != nullptr) *grad = new_tensor({p.N, p.K}, p.logits.scalar_type(), p.logits);
    Device::moments(p, stats, &terms, grad != nullptr ? &**grad : nullptr);
    const bool per_row = p.reduction == Reduction::None;
    Tensor outs[4] = {new_out(p, per_row), new_out(p, per_row), new_out(p, per_row), new_out(p, per_row)};
    Tensor* out_ptrs[4] = {&outs[0], &outs[1], &outs[2], &outs[3]};
    Device::finalize(p, terms, out_ptrs);
    return {outs[0], outs[1], outs[2], outs[3], stats};
  }

  static Outs forward(Tensor logits, Tensor target, double lambda_mean, double lambda_var, int64_t start_age,
                      bool include_softmax, int64_t reduction) {
    return run("lossext::mean_variance_loss", logits, target, lambda_mean, lambda_var, start_age, include_softmax,
               reduction, nullptr);
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> with_grad(Tensor logits, Tensor target,
                                                                              double lambda_mean, double lambda_var,
                                                                              int64_t start_age, bool include_softmax,
                                                                              int64_t reduction) {
    std::optional<Tensor> grad;
    auto o = run("lossext::mean_variance_loss_with_grad", logits, target, lambda_mean, lambda_var, start_age,
                 include_softmax, reduction, &grad);
    return {std::get<0>(o), std::get<1>(o), std::get<2>(o), std::get<3>(o), std::get<4>(o), *grad};
  }

  static std::tuple<Tensor, Tensor> backward(std::optional<Tensor> grad_loss, std::optional<Tensor> grad_softmax,
                                             std::optional<Tensor> grad_mean, std::optional<Tensor> grad_variance,
                                             Tensor logits, Tensor target, Tensor stats, double lambda_mean,
                                             double lambda_var, int64_t start_age, bool include_softmax,
                                             int64_t reduction) {
    const char* op = "lossext::mean_variance_loss_backward";
    AgeProblem p = prepare(op, logits, &target, lambda_mean, lambda_var, start_age, include_softmax, reduction);
    check_stats(op, stats, p);
    const bool per_row = p.reduction == Reduction::None;
    AgeGrads g{check_grad(op, "grad_loss", grad_loss, p, per_row), check_grad(op, "grad_softmax", grad_softmax, p, per_row),
               check_grad(op, "grad_mean", grad_mean, p, per_row),
               check_grad(op, "grad_variance", grad_variance, p, per_row)};
    Tensor grad = new_tensor({p.N, p.K}, p.logits.scalar_type(), p.logits);
    Tensor grad_t = new_tensor({p.target_float ? p.N : 0}, ScalarType::Double, p.logits);
    Device::backward(p, g, torch::stable::contiguous(stats), grad, p.target_float ? &grad_t : nullptr);
    return {grad, grad_t};
  }
};

template <class Device>
struct AgeFromLogitsKernels {
  static std::tuple<Tensor, Tensor, Tensor> forward(Tensor logits, int64_t start_age) {
    const char* op = "lossext::age_from_logits";
    AgeProblem p = prepare(op, logits, nullptr, 0.0, 0.0, start_age, false, 0);
    Tensor stats = new_tensor({p.N, 3}, ScalarType::Double, p.logits);
    Device::moments(p, stats, nullptr, nullptr);
    Tensor mean = new_out(p, true), var = new_out(p, true);
    Device::moments_out(p, stats, mean, var);
    return {mean, var, stats};
  }

  static Tensor backward(std::optional<Tensor> grad_mean, std::optional<Tensor> grad_variance, Tensor logits,
                         Tensor stats, int64_t start_age) {
    const char* op = "lossext::age_from_logits_backward";
    AgeProblem p = prepare(op, logits, nullptr, 0.0, 0.0, start_age, false, 0);
    check_stats(op, stats, p);
    AgeGrads g{std::nullopt, std::nullopt, check_grad(op, "grad_mean", grad_mean, p, true),
               check_grad(op, "grad_variance", grad_variance, p, true)};
    Tensor grad = new_tensor({p.N, p.K}, p.logits.scalar_type(), p.logits);
    Device::backward(p, g, torch::stable::contiguous(stats), grad, nullptr);
    return grad;
  }
};

template <class Device, class Lib>
void register_age_kernels(Lib& m) {
  m.impl("mean_variance_loss", TORCH_BOX(&MeanVarianceKernels<Device>::forward));
  m.impl("mean_variance_loss_with_grad", TORCH_BOX(&MeanVarianceKernels<Device>::with_grad));
  m.impl("mean_variance_loss_backward", TORCH_BOX(&MeanVarianceKernels<Device>::backward));
  m.impl("age_from_logits", TORCH_BOX(&AgeFromLogitsKernels<Device>::forward));
  m.impl("age_from_logits_backward", TORCH_BOX(&AgeFromLogitsKernels<Device>::backward));
}

}  // namespace age
}  // namespace lossext
