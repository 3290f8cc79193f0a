// lossext's row-wise argument checks, for losses over rows of a 2-D tensor with one class label
// per row: the 2-D floating tensor, the integer labels [N] and the optional per-row or
// per-class vectors.
#pragma once

#include <cstdint>
#include <optional>

#include <torch/types.h>

#include "common.h"

namespace lossext {
namespace detail {

// A 2-D floating tensor; layout names its dimensions in the message, e.g. "[N, C]".
inline void check_rows(const char* fn, const char* name, const at::Tensor& x, const char* layout) {
  check_float_tensor(fn, name, x);
  TORCH_CHECK_VALUE(x.dim() == 2, fn, ": ", name, " must be 2-D ", layout, ", got shape ", x.sizes());
}

// Integer class labels [n] on like's device, returned as int64.
inline at::Tensor check_labels(const char* fn, const at::Tensor& target, int64_t n, const at::Tensor& like,
                               const char* like_name) {
  TORCH_CHECK_VALUE(target.defined(), fn, ": target must be a defined tensor");
  const at::ScalarType t = target.scalar_type();
  TORCH_CHECK_TYPE(t == at::kLong || t == at::kInt || t == at::kShort || t == at::kChar || t == at::kByte, fn,
                   ": target must be integer class indices (int64, int32, int16, int8 or uint8), got ", t);
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == n, fn, ": target must have shape [", n, "], got ",
                    target.sizes());
  TORCH_CHECK_VALUE(target.device() == like.device(), fn, ": target is on ", target.device(), " but ", like_name,
                    " is on ", like.device());
  return t == at::kLong ? target : target.to(at::kLong);
}

// An optional floating vector [n] (dims names n, e.g. "C") on like's device, returned in like's
// dtype (the conversion is differentiable).
inline OptTensor check_vector(const char* fn, const char* name, const OptTensor& v, int64_t n, const char* dims,
                              const at::Tensor& like, const char* like_name) {
  if (!v.has_value() || !v->defined()) return std::nullopt;
  TORCH_CHECK_TYPE(v->is_floating_point(), fn, ": ", name, " must be floating point, got ", v->scalar_type());
  TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == n, fn, ": ", name, " must have shape [", dims, "] = [", n,
                    "], got ", v->sizes());
  TORCH_CHECK_VALUE(v->device() == like.device(), fn, ": ", name, " is on ", v->device(), " but ", like_name,
                    " is on ", like.device());
  return v->scalar_type() == like.scalar_type() ? *v : v->to(like.scalar_type());
}

}  // namespace detail
}  // namespace lossext
