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

// One step of a block-wide, order-preserving compaction (the truths of an image, kept in row
// order): the number of keeping threads before this one in the block (x) and their total (y).
// Every thread of the block calls it; warp_count is __shared__ int[kWarps], kWarps * 32 threads.
template <int kWarps>
__device__ __forceinline__ int2 block_compact(bool keep, int* warp_count) {
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const unsigned ballot = __ballot_sync(0xffffffffu, keep);
  if (lane == 0) warp_count[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const int c = warp_count[w];
    before += w < warp ? c : 0;
    total += c;
  }
  __syncthreads();  // warp_count is rewritten by the next step
  return make_int2(before + __popc(ballot & ((1u << lane) - 1u)), total);
}

}  // namespace cuda
}  // namespace lossext
