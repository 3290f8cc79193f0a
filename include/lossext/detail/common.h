// lossext's shared C++ wrapper machinery, used by every loss family: the lossext namespace's
// basics (Reduction, version(), with_cuda(), cuda_arch_list()), the symbol that keeps
// liblossext.so linked, the argument checks, the operator lookup in the dispatcher and the
// autograd node that refuses double backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "../build_info.h"

namespace lossext {

/// How the per-element losses are reduced (values as at::Reduction and the operator schemas).
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

/// The version of the loaded liblossext.so, e.g. "0.1.0".
inline const char* version() { return ::lossext_version(); }
/// Whether liblossext.so was compiled with its CUDA kernels.
inline bool with_cuda() { return ::lossext_with_cuda() != 0; }
/// The CUDA architectures compiled in, e.g. "9.0"; empty without CUDA.
inline const char* cuda_arch_list() { return ::lossext_cuda_arch_list(); }

namespace detail {

// Every program that includes a lossext header references a symbol of liblossext.so here, so that
// the linker keeps the library (whose loading registers the operators) even under
// -Wl,--as-needed, which torch's CMake targets switch on after their own libraries.
inline const char* const linked_version = ::lossext_version();

using OptTensor = std::optional<at::Tensor>;

inline int64_t check_reduction(const char* fn, Reduction r) {
  const auto v = static_cast<int64_t>(r);
  TORCH_CHECK_VALUE(v >= 0 && v <= 2, fn, ": reduction must be Reduction::None, Mean or Sum, got ", v);
  return v;
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_tensor(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), fn, ": ", name, " must be a defined tensor");
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), fn, ": ", name,
                   " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_finite(const char* fn, const char* name, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v), fn, ": ", name, " must be finite, got ", v);
}

inline void check_positive(const char* fn, const char* name, double v) {
  check_finite(fn, name, v);
  TORCH_CHECK_VALUE(v > 0.0, fn, ": ", name, " must be > 0, got ", v);
}

template <class Sig>
c10::TypedOperatorHandle<Sig> find_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "").template typed<Sig>();
}

// Identity on `result` whose backward refuses: attached to the gradients computed under
// create_graph=true, so that differentiating them again fails loudly instead of silently
// giving zeros.
struct DoubleBackwardNotSupported : torch::autograd::Function<DoubleBackwardNotSupported> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& result,
                            at::TensorList /*depends_on: only for the graph edges*/,
                            const std::string& name) {
    ctx->saved_data["name"] = name;
    return result;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, ctx->saved_data["name"].toStringRef(),
                                ": double backward is not supported");
    return {};
  }
};

// In a backward run with create_graph=true: makes the defined `grads` refuse double backward,
// depending on those of the backward's `inputs` (grad_output and the saved tensors) that
// require grad. Does nothing otherwise.
inline void refuse_double_backward(const std::string& what, std::initializer_list<const at::Tensor*> inputs,
                                   std::initializer_list<at::Tensor*> grads) {
  if (!at::GradMode::is_enabled()) return;
  std::vector<at::Tensor> depends_on;
  for (const at::Tensor* t : inputs) {
    if (t->defined() && t->requires_grad()) depends_on.push_back(*t);
  }
  if (depends_on.empty()) return;
  for (at::Tensor* g : grads) {
    if (g->defined()) *g = DoubleBackwardNotSupported::apply(*g, at::TensorList(depends_on), what);
  }
}

// An optional tensor from a saved one (undefined: absent).
inline OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

}  // namespace detail
}  // namespace lossext
