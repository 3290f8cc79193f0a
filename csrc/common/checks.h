// Argument checks shared by every op (host code, stable ABI only).
// Messages name the argument and the value; the Python layer raises ValueError/TypeError
// before reaching here, these guard direct torch.ops.lossext.* calls.
//
// Every argument check uses LOSSEXT_CHECK: its message is exactly
//   "lossext::<op>: argument '<name>' ..."
// with no C++ function or file:line in front (STD_TORCH_CHECK adds both), so that the Python
// layer can read the op and the argument from that prefix and re-raise as the user's function
// and argument. Internal invariants (launch failures, the dispatcher) keep STD_TORCH_CHECK.
#pragma once

#include <optional>
#include <sstream>
#include <vector>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "config.h"

namespace lossext {
namespace detail {

// The message of a failed argument check: its pieces streamed in order, nothing added.
template <class... Args>
[[noreturn]] inline void throw_argument_error(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  throw std::runtime_error(s.str());
}

}  // namespace detail

// Argument check: throws std::runtime_error whose message is the pieces alone (torch raises
// it as RuntimeError). Use it for every check of an op's arguments.
#define LOSSEXT_CHECK(cond, ...)                                     \
  do {                                                               \
    if (!(cond)) ::lossext::detail::throw_argument_error(__VA_ARGS__); \
  } while (0)

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

inline std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

// A tensor's sizes, for torch::stable::empty.
inline std::vector<int64_t> sizes_of(const Tensor& t) {
  std::vector<int64_t> s(static_cast<size_t>(t.dim()));
  for (int64_t i = 0; i < t.dim(); ++i) s[static_cast<size_t>(i)] = t.size(i);
  return s;
}

inline bool is_supported_float(ScalarType st) {
  return st == ScalarType::Float || st == ScalarType::Double || st == ScalarType::Half ||
         st == ScalarType::BFloat16;
}

inline void check_float_tensor(const char* op, const char* name, const Tensor& t) {
  LOSSEXT_CHECK(is_supported_float(t.scalar_type()), op, ": argument '", name,
                  "' must be float16, bfloat16, float32 or float64, got ",
                  torch::headeronly::toString(t.scalar_type()));
}

inline void check_like(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  LOSSEXT_CHECK(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ",
                  torch::headeronly::toString(t.scalar_type()), " but input has dtype ",
                  torch::headeronly::toString(ref.scalar_type()));
  LOSSEXT_CHECK(t.device() == ref.device(), op, ": argument '", name,
                  "' is on a different device than input");
}

inline void check_same_shape(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  bool same = t.dim() == ref.dim();
  for (int64_t i = 0; same && i < t.dim(); ++i) same = t.size(i) == ref.size(i);
  LOSSEXT_CHECK(same, op, ": argument '", name, "' has shape ", shape_str(t),
                  " but input has shape ", shape_str(ref));
}

inline Reduction check_reduction(const char* op, int64_t reduction) {
  LOSSEXT_CHECK(reduction >= 0 && reduction <= 2, op,
                  ": argument 'reduction' must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  return static_cast<Reduction>(reduction);
}

inline void check_positive(const char* op, const char* name, double v) {
  LOSSEXT_CHECK(v > 0.0 && v < INFINITY, op, ": argument '", name,
                  "' must be positive and finite, got ", v);
}

// Calls f(std::true_type{}) or f(std::false_type{}): turns run-time flags into template ones.
template <class F>
inline void with_bool(bool b, F&& f) {
  if (b) f(std::true_type{}); else f(std::false_type{});
}

// Calls f(scalar_t{}) for the dtypes lossext supports.
template <class F>
void dispatch_floating(ScalarType st, const char* op, F&& f) {
  switch (st) {
    case ScalarType::Float: f(float{}); break;
    case ScalarType::Double: f(double{}); break;
    case ScalarType::Half: f(torch::headeronly::Half{}); break;
    case ScalarType::BFloat16: f(torch::headeronly::BFloat16{}); break;
    default:
      STD_TORCH_CHECK(false, op, ": unsupported dtype ", torch::headeronly::toString(st));
  }
}

}  // namespace lossext
