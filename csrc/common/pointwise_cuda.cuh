// CUDA device for the element-wise loss pattern (pointwise_loss.h).
//
// - Grid-stride loop; 16-byte vector loads/stores when every pointer is aligned.
// - Runs on the current stream of the input's device; every launch is checked.
// - Reductions use no atomics: each thread sums its elements in the accumulation type in runs of
//   kRun elements, each run flushed into a double in order (as the CPU's blocks of kBlock: the
//   float error does not grow with n, which gave each thread n / 262144 terms in one float);
//   each block adds its threads' doubles by a fixed-order tree and writes its partial, then one
//   block adds the partials in double in a fixed order. The grid size, the element-to-thread
//   mapping and the run boundaries depend on the element count only (not on the GPU or on
//   pointer alignment), so the same values always give the same bits.
// - Bounds: the vector loop covers [0, n/VEC*VEC), the scalar tail the rest; no other indexing.
#pragma once

#include <cuda_runtime.h>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "pointwise_loss.h"

namespace lossext {
namespace cuda_detail {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;
constexpr int kFinalThreads = 1024;
constexpr int kRun = 64;  // elements per thread summed in the accumulation type before a double flush
static_assert(kThreads % 32 == 0 && kFinalThreads % 32 == 0, "block_sum needs whole warps");

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, what, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

inline cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream) == AOTI_TORCH_SUCCESS,
                  "lossext: could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

template <class scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Packet {
  scalar_t v[VEC];
};

// Sum over the block in a fixed order; the result is valid in thread 0.
template <class A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A smem[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nwarps ? smem[threadIdx.x] : A(0);
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  __syncthreads();  // smem may be reused by a later call
  return v;
}

// One element: returns its contribution to the reduced loss; writes o0 / o1 as the mode says.
template <PointwiseMode mode, bool kW, bool kReduce, class A, class Op>
__device__ __forceinline__ A element(const Op& op, A X, A Y, A W, A G, A scale, A& o0, A& o1) {
  if constexpr (mode == PointwiseMode::Forward || mode == PointwiseMode::ForwardWithGrad) {
    A v, d;
    if constexpr (mode == PointwiseMode::ForwardWithGrad) {
      v = W * value_and_dinput(op, X, Y, d);
      o1 = scale * W * d;
    } else {
      v = W * op.value(X, Y);
    }
    if constexpr (!kReduce) {
      o0 = v;
      return A(0);
    }
    return v;
  } else {
    const A g = mode == PointwiseMode::BackwardInput ? op.dinput(X, Y) : op.dtarget(X, Y);
    o0 = G * W * g;
    return A(0);
  }
}

// Each thread takes packets of VEC elements, packet v = tid + k * stride, and the ragged tail
// element by element. kAligned only chooses 16-byte packet loads/stores over element ones: the
// element-to-thread mapping, and so the reduction order, is the same either way.
template <PointwiseMode mode, bool kW, bool kReduce, bool kGoScalar, bool kAligned, class scalar_t,
          class Op>
__global__ void __launch_bounds__(kThreads)
    pointwise_kernel(Op op, PointwisePtrs<scalar_t> P, int64_t n, acc_t<scalar_t> scale,
                     double* partials) {
  using A = acc_t<scalar_t>;
  constexpr int VEC = 16 / sizeof(scalar_t);
  using Pk = Packet<scalar_t, VEC>;
  constexpr bool kForward = is_forward(mode);
  constexpr bool kWriteO0 = !(kForward && kReduce);
  constexpr bool kReadGo = !kForward && !kGoScalar;
  const A go_scaled = (!kForward && kGoScalar) ? static_cast<A>(P.go[0]) * scale : A(0);
  constexpr bool kSum = kForward && kReduce;
  static_assert(kRun % VEC == 0, "a run is whole packets");
  A acc = A(0);         // the current run: at most kRun elements
  double total = 0.0;   // the thread's runs, added in order
  int run = 0;          // elements in acc
  auto flush_if_full = [&](int added) {
    if constexpr (kSum) {
      run += added;
      if (run >= kRun) {
        total += static_cast<double>(acc);
        acc = A(0);
        run = 0;
      }
    }
  };
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  auto load = [](const scalar_t* base, int64_t v) {
    if constexpr (kAligned) {
      return reinterpret_cast<const Pk*>(base)[v];
    } else {
      Pk pk;
#pragma unroll
      for (int j = 0; j < VEC; ++j) pk.v[j] = base[v * VEC + j];
      return pk;
    }
  };
  auto store = [](scalar_t* base, int64_t v, const Pk& pk) {
    if constexpr (kAligned) {
      reinterpret_cast<Pk*>(base)[v] = pk;
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) base[v * VEC + j] = pk.v[j];
    }
  };
  for (int64_t v = tid; v < nvec; v += stride) {
    const Pk xv = load(P.x, v);
    const Pk yv = load(P.y, v);
    Pk wv, gv, o0v, o1v;
    if constexpr (kW) wv = load(P.w, v);
    if constexpr (kReadGo) gv = load(P.go, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      A o0 = A(0), o1 = A(0);
      const A W = kW ? static_cast<A>(wv.v[j]) : A(1);
      const A G = kReadGo ? static_cast<A>(gv.v[j]) * scale : go_scaled;
      acc += element<mode, kW, kReduce>(op, static_cast<A>(xv.v[j]), static_cast<A>(yv.v[j]), W, G,
                                        scale, o0, o1);
      o0v.v[j] = static_cast<scalar_t>(o0);
      o1v.v[j] = static_cast<scalar_t>(o1);
    }
    if constexpr (kWriteO0) store(P.o0, v, o0v);
    if constexpr (mode == PointwiseMode::ForwardWithGrad) store(P.o1, v, o1v);
    flush_if_full(VEC);
  }
  for (int64_t k = nvec * VEC + tid; k < n; k += stride) {
    A o0 = A(0), o1 = A(0);
    const A W = kW ? static_cast<A>(P.w[k]) : A(1);
    const A G = kReadGo ? static_cast<A>(P.go[k]) * scale : go_scaled;
    acc += element<mode, kW, kReduce>(op, static_cast<A>(P.x[k]), static_cast<A>(P.y[k]), W, G,
                                      scale, o0, o1);
    if constexpr (kWriteO0) P.o0[k] = static_cast<scalar_t>(o0);
    if constexpr (mode == PointwiseMode::ForwardWithGrad) P.o1[k] = static_cast<scalar_t>(o1);
    flush_if_full(1);
  }
  if constexpr (kSum) {
    total = block_sum(total + static_cast<double>(acc));
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
  }
}

// Adds the block partials (double) in a fixed order and writes the reduced loss.
template <class scalar_t>
__global__ void __launch_bounds__(kFinalThreads)
    finalize_sum_kernel(const double* partials, int64_t nparts, double divisor, scalar_t* out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < nparts; i += blockDim.x) s += partials[i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = static_cast<scalar_t>(s / divisor);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace cuda_detail

struct CudaDevice {
  template <PointwiseMode mode, class scalar_t, class Op>
  static void run(const PointwiseProblem& p, const Op& op, Tensor& out0, Tensor* out1) {
    using namespace cuda_detail;
    using A = acc_t<scalar_t>;
    constexpr bool kForward = is_forward(mode);
    const int64_t n = p.numel;
    const int32_t dev = p.input.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(dev);
    cudaStream_t stream = current_stream(dev);

    const PointwisePtrs<scalar_t> P(p, out0, out1);
    const bool reduce = p.reduction != Reduction::None;
    const bool go_scalar = !kForward && reduce;
    const bool vec_ok = aligned16(P.x) && aligned16(P.y) && (!P.w || aligned16(P.w)) &&
                        (go_scalar || !P.go || aligned16(P.go)) && aligned16(P.o0) &&
                        (!P.o1 || aligned16(P.o1));
    const int64_t per_block = int64_t(kThreads) * 16;  // independent of VEC: see header comment
    const int blocks = static_cast<int>(std::max<int64_t>(
        1, std::min<int64_t>(kMaxBlocks, (n + per_block - 1) / per_block)));
    const A scale = static_cast<A>(p.grad_scale());

    Tensor partials;
    double* partials_ptr = nullptr;
    if (kForward && reduce) {
      partials = torch::stable::empty(std::vector<int64_t>{blocks}, ScalarType::Double, std::nullopt,
                                      p.input.device());
      partials_ptr = static_cast<double*>(partials.data_ptr());
    }
    if (n > 0) {
      with_bool(p.weight.has_value(), [&](auto kW) {
        with_bool(reduce, [&](auto kReduce) {
          with_bool(go_scalar, [&](auto kGo) {
            with_bool(vec_ok, [&](auto kAligned) {
              pointwise_kernel<mode, kW.value, kReduce.value, kGo.value, kAligned.value, scalar_t, Op>
                  <<<blocks, kThreads, 0, stream>>>(op, P, n, scale, partials_ptr);
              check_launch("lossext pointwise kernel");
            });
          });
        });
      });
    }
    if (kForward && reduce) {
      const double divisor = p.reduction == Reduction::Mean ? static_cast<double>(n) : 1.0;
      finalize_sum_kernel<scalar_t><<<1, kFinalThreads, 0, stream>>>(partials_ptr, n > 0 ? blocks : 0,
                                                                    divisor, P.o0);
      check_launch("lossext finalize_sum kernel");
    }
  }
};

}  // namespace lossext
