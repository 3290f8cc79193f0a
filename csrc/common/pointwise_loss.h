// The op pattern for element-wise losses L(x, y) with an optional per-element weight and a
// reduction. Device-independent host code: checks, layout, outputs. Each device provides
//   template <PointwiseMode, class Op, class scalar_t> static void run(const PointwiseProblem&,
//       const Op&, Tensor& out0, Tensor* out1);
// (see pointwise_cpu.h and pointwise_cuda.cuh). An Op<T> supplies value, dinput and dtarget.
#pragma once

#include <optional>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "alloc.h"
#include "checks.h"
#include "config.h"

namespace lossext {

enum class PointwiseMode {
  Forward,          // out0 = reduce(w * L)
  ForwardWithGrad,  // out0 = reduce(w * L), out1 = scale * w * dL/dx   (one pass)
  BackwardInput,    // out0 = grad_output * scale * w * dL/dx
  BackwardTarget,   // out0 = grad_output * scale * w * dL/dy
};

constexpr bool is_forward(PointwiseMode m) {
  return m == PointwiseMode::Forward || m == PointwiseMode::ForwardWithGrad;
}

// The loss of one element and, in d, its dL/dx: op.value_and_dinput(x, y, d) where the op has it
// (its shared terms computed once: sigmoid focal's exp, log1p and division), else value and
// dinput. Both kernels' ForwardWithGrad take it.
template <class Op, class A>
LOSSEXT_HD A value_and_dinput(const Op& op, A x, A y, A& d) {
  if constexpr (requires { op.value_and_dinput(x, y, d); }) {
    return op.value_and_dinput(x, y, d);
  } else {
    d = op.dinput(x, y);
    return op.value(x, y);
  }
}

struct PointwiseProblem {
  Tensor input, target;             // contiguous, same shape, dtype and device
  std::optional<Tensor> weight;     // contiguous, input's shape
  std::optional<Tensor> grad_output;  // contiguous; 0-dim for mean/sum, input's shape for none
  Reduction reduction;
  int64_t numel;
  // scale of per-element gradients: 1/numel for mean, 1 otherwise.
  double grad_scale() const {
    return reduction == Reduction::Mean && numel > 0 ? 1.0 / double(numel) : 1.0;
  }
};

inline PointwiseProblem prepare_pointwise(const char* op, const Tensor& input, const Tensor& target,
                                          const std::optional<Tensor>& weight, int64_t reduction,
                                          const Tensor* grad_output) {
  check_float_tensor(op, "input", input);
  check_like(op, "target", target, input);
  check_same_shape(op, "target", target, input);
  PointwiseProblem p;
  p.reduction = check_reduction(op, reduction);
  p.input = torch::stable::contiguous(input);
  p.target = torch::stable::contiguous(target);
  if (weight.has_value()) {
    check_like(op, "weight", *weight, input);
    check_same_shape(op, "weight", *weight, input);
    p.weight = torch::stable::contiguous(*weight);
  }
  if (grad_output != nullptr) {
    check_like(op, "grad_output", *grad_output, input);
    if (p.reduction == Reduction::None) {
      check_same_shape(op, "grad_output", *grad_output, input);
    } else {
      LOSSEXT_CHECK(grad_output->dim() == 0, op,
                      ": argument 'grad_output' must be 0-dim for a reduced loss, got shape ",
                      shape_str(*grad_output));
    }
    p.grad_output = torch::stable::contiguous(*grad_output);
  }
  p.numel = input.numel();
  return p;
}

inline Tensor new_like_input(const PointwiseProblem& p) {
  return lossext::empty(p.input.sizes(), p.input.scalar_type(), std::nullopt, p.input.device());
}

inline Tensor new_loss(const PointwiseProblem& p) {
  if (p.reduction == Reduction::None) return new_like_input(p);
  return lossext::empty(std::vector<int64_t>{}, p.input.scalar_type(), std::nullopt,
                              p.input.device());
}

// Raw pointers of one problem, as the device loops see them.
template <class scalar_t>
struct PointwisePtrs {
  const scalar_t* x;   // input
  const scalar_t* y;   // target
  const scalar_t* w;   // weight or null
  const scalar_t* go;  // grad_output or null
  scalar_t* o0;        // loss or gradient
  scalar_t* o1;        // ForwardWithGrad: dloss/dinput; else null

  PointwisePtrs(const PointwiseProblem& p, Tensor& out0, Tensor* out1)
      : x(static_cast<const scalar_t*>(p.input.data_ptr())),
        y(static_cast<const scalar_t*>(p.target.data_ptr())),
        w(p.weight ? static_cast<const scalar_t*>(p.weight->data_ptr()) : nullptr),
        go(p.grad_output ? static_cast<const scalar_t*>(p.grad_output->data_ptr()) : nullptr),
        o0(static_cast<scalar_t*>(out0.data_ptr())),
        o1(out1 ? static_cast<scalar_t*>(out1->data_ptr()) : nullptr) {}
};

// MakeOp is a generic callable: make_op(T{}) returns the loss functor for accumulation type T.
template <class Device, PointwiseMode mode, class MakeOp>
void run_pointwise(const PointwiseProblem& p, const MakeOp& make_op, Tensor& out0, Tensor* out1) {
  dispatch_floating(p.input.scalar_type(), "lossext", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto op = make_op(acc_t<scalar_t>{});
    Device::template run<mode, scalar_t>(p, op, out0, out1);
  });
}

template <class Device, class MakeOp>
Tensor pointwise_forward(const char* name, const Tensor& input, const Tensor& target,
                         const std::optional<Tensor>& weight, int64_t reduction, const MakeOp& make_op) {
  auto p = prepare_pointwise(name, input, target, weight, reduction, nullptr);
  Tensor loss = new_loss(p);
  run_pointwise<Device, PointwiseMode::Forward>(p, make_op, loss, nullptr);
  return loss;
}

template <class Device, class MakeOp>
std::tuple<Tensor, Tensor> pointwise_forward_with_grad(const char* name, const Tensor& input,
                                                       const Tensor& target,
                                                       const std::optional<Tensor>& weight,
                                                       int64_t reduction, const MakeOp& make_op) {
  auto p = prepare_pointwise(name, input, target, weight, reduction, nullptr);
  Tensor loss = new_loss(p);
  Tensor grad = new_like_input(p);
  run_pointwise<Device, PointwiseMode::ForwardWithGrad>(p, make_op, loss, &grad);
  return {loss, grad};
}

template <class Device, PointwiseMode mode, class MakeOp>
Tensor pointwise_backward(const char* name, const Tensor& grad_output, const Tensor& input,
                          const Tensor& target, const std::optional<Tensor>& weight,
                          int64_t reduction, const MakeOp& make_op) {
  auto p = prepare_pointwise(name, input, target, weight, reduction, &grad_output);
  Tensor grad = new_like_input(p);
  run_pointwise<Device, mode>(p, make_op, grad, nullptr);
  return grad;
}

}  // namespace lossext
