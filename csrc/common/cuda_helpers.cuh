// CUDA helpers shared by the families' kernels (lossext::cuda): pointers, grid sizes (capped, for
// grid-stride loops), NaN, and the conversions of half types through float (as on the CPU).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <torch/csrc/stable/tensor.h>

namespace lossext {
namespace cuda {

constexpr int64_t kMaxGrid = 65535;

template <class T> T* ptr(const torch::stable::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

inline int grid_for(int64_t n, int64_t per_block) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + per_block - 1) / per_block, kMaxGrid)));
}

template <class T> __device__ __forceinline__ T nan_v() { return std::numeric_limits<T>::quiet_NaN(); }

template <class scalar_t, class V>
__device__ __forceinline__ scalar_t to_s(V v) {
  if constexpr (std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>) {
    return static_cast<scalar_t>(v);
  } else {
    return static_cast<scalar_t>(static_cast<float>(v));
  }
}

template <class A, class scalar_t>
__device__ __forceinline__ A to_a(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>) {
    return static_cast<A>(v);
  } else {
    return static_cast<A>(static_cast<float>(v));
  }
}

}  // namespace cuda
}  // namespace lossext
