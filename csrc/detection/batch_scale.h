// The backward of the detection ops whose forward writes the gradient of the per-image losses'
// sum (the region and multibox losses): that gradient times each image's upstream gradient,
// grad * grad_output[b] (aten::mul through the dispatcher, on either device; the result is
// contiguous, as the ops' fake kernels say). grad_output must be [B] of grad's dtype and device;
// grad's own shape is checked by the caller.
#pragma once

#include <array>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/checks.h"

namespace lossext {
namespace detection {

inline Tensor scale_per_image(const char* op, const char* go_name, const Tensor& grad_output, const char* grad_name,
                              const Tensor& grad) {
  LOSSEXT_CHECK(grad_output.dim() == 1 && grad_output.size(0) == grad.size(0), op, ": argument '", go_name,
                "' must have shape [", grad.size(0), "] (one per image), got ", shape_str(grad_output));
  LOSSEXT_CHECK(grad_output.scalar_type() == grad.scalar_type(), op, ": argument '", go_name, "' has dtype ",
                torch::headeronly::toString(grad_output.scalar_type()), " but ", grad_name, " has dtype ",
                torch::headeronly::toString(grad.scalar_type()));
  LOSSEXT_CHECK(grad_output.device() == grad.device(), op, ": argument '", go_name, "' is on a different device than ",
                grad_name);
  std::vector<int64_t> shape(static_cast<size_t>(grad.dim()), 1);
  shape[0] = grad.size(0);
  const Tensor go = torch::stable::reshape(grad_output, shape);
  using torch::stable::detail::from;
  const Tensor g = torch::stable::contiguous(grad);
  std::array<StableIValue, 2> stack{from(g), from(go)};
  STD_TORCH_CHECK(torch_call_dispatcher("aten::mul", "Tensor", stack.data(), TORCH_ABI_VERSION) == AOTI_TORCH_SUCCESS,
                  "lossext: aten::mul failed");
  return torch::stable::detail::to<Tensor>(stack[0]);
}

}  // namespace detection
}  // namespace lossext
