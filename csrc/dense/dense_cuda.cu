// CUDA kernels of the dense-prediction family (Device = DenseCuda, see dense_ops.h).
//
// - row_sums: one block of kThreads per heatmap (grid-stride over rows beyond 65535 blocks);
//   thread t sums the pixels t, t + kThreads, ... in double, then a fixed-order block sum
//   (cuda_detail::block_sum). The order depends on the row length only: deterministic, no
//   atomics. 64-bit indices.
// - row_sums_backward: element-wise, grid-stride; an element of a row whose upstream gradient
//   is 0 is written as 0 without reading the heatmaps.
#include <cuda_runtime.h>

#include <cstdint>

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cuda.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../common/cuda_helpers.cuh"
#include "../common/pointwise_cuda.cuh"
#include "dense_ops.h"

namespace lossext {
namespace dense {
namespace {

using cuda::grid_for;
using cuda::ptr;
using cuda::to_a;
using cuda::to_s;
using cuda_detail::block_sum;
using cuda_detail::check_launch;
using cuda_detail::current_stream;
constexpr int kThreads = cuda_detail::kThreads;

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    row_sums_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t rows, int64_t P,
                    acc_t<scalar_t>* __restrict__ out) {
  using A = acc_t<scalar_t>;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* xr = x + r * P;
    const scalar_t* yr = y + r * P;
    double s = 0.0;
    for (int64_t k = threadIdx.x; k < P; k += kThreads) s += static_cast<double>(sq_diff(to_a<A>(xr[k]), to_a<A>(yr[k])));
    s = block_sum(s);
    if (threadIdx.x == 0) out[r] = static_cast<A>(s);
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    row_sums_backward_kernel(const acc_t<scalar_t>* __restrict__ g, const scalar_t* __restrict__ x,
                             const scalar_t* __restrict__ y, int64_t n, int64_t P, scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const A gr = g[i / P];
    out[i] = gr == A(0) ? to_s<scalar_t>(A(0)) : to_s<scalar_t>(sq_diff_grad(gr, to_a<A>(x[i]), to_a<A>(y[i])));
  }
}

// The Mask R-CNN mask loss: one block per RoI as row_sums (per_pixel: element-wise). A label
// outside [0, C) never indexes: that RoI's values are NaN and its gradients 0.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    mask_bce_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ labels,
                    const scalar_t* __restrict__ y, int64_t R, int64_t C, int64_t P, bool per_pixel,
                    void* __restrict__ out) {
  using A = acc_t<scalar_t>;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const int64_t l = labels[r];
    const bool ok = l >= 0 && l < C;
    const scalar_t* xr = x + (r * C + (ok ? l : 0)) * P;
    const scalar_t* yr = y + r * P;
    if (per_pixel) {
      scalar_t* o = static_cast<scalar_t*>(out) + r * P;
      for (int64_t k = threadIdx.x; k < P; k += kThreads)
        o[k] = to_s<scalar_t>(ok ? bce_with_logits(to_a<A>(xr[k]), to_a<A>(yr[k])) : cuda::nan_v<A>());
      continue;
    }
    double s = 0.0;
    for (int64_t k = threadIdx.x; k < P; k += kThreads) s += static_cast<double>(bce_with_logits(to_a<A>(xr[k]), to_a<A>(yr[k])));
    s = block_sum(s);
    if (threadIdx.x == 0) static_cast<A*>(out)[r] = ok ? static_cast<A>(s) : cuda::nan_v<A>();
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    mask_bce_backward_kernel(const void* __restrict__ grad, const scalar_t* __restrict__ x,
                             const int64_t* __restrict__ labels, const scalar_t* __restrict__ y, int64_t R, int64_t C,
                             int64_t P, bool per_pixel, scalar_t* __restrict__ gl, scalar_t* __restrict__ gt) {
  using A = acc_t<scalar_t>;
  const int64_t n = R * C * P;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / (C * P), c = (i / P) % C, k = i % P;
    const int64_t l = labels[r];
    const bool ok = l >= 0 && l < C;
    const A G = per_pixel ? to_a<A>(static_cast<const scalar_t*>(grad)[r * P + k]) : static_cast<const A*>(grad)[r];
    if (c == (ok ? l : 0)) {  // the labelled channel (channel 0 writes the target's gradient of a bad label)
      const A X = to_a<A>(x[i]), Y = to_a<A>(y[r * P + k]);
      gl[i] = to_s<scalar_t>(ok ? G * bce_with_logits_grad(X, Y) : A(0));
      gt[r * P + k] = to_s<scalar_t>(ok ? -G * X : A(0));
    } else {
      gl[i] = to_s<scalar_t>(A(0));
    }
  }
}

template <class F>
void on_device(const Tensor& t, const char* op, F&& f) {
  const int32_t dev = t.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(dev);
  cudaStream_t stream = current_stream(dev);
  dispatch_floating(t.scalar_type(), op, [&](auto tag) { f(tag, stream); });
}

}  // namespace

struct DenseCuda {
  static void mask_bce(const MaskProblem& p, Tensor& out) {
    if (p.R == 0) return;
    on_device(p.logits, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      mask_bce_kernel<scalar_t><<<grid_for(p.R, 1), kThreads, 0, stream>>>(
          ptr<const scalar_t>(p.logits), ptr<const int64_t>(p.labels), ptr<const scalar_t>(p.targets), p.R, p.C, p.P,
          p.per_pixel, out.data_ptr());
      check_launch("lossext::mask_bce kernel");
    });
  }
  static void mask_bce_backward(const MaskProblem& p, const Tensor& grad, Tensor& gl, Tensor& gt) {
    const int64_t n = p.R * p.C * p.P;
    if (n == 0) return;
    on_device(p.logits, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      mask_bce_backward_kernel<scalar_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          grad.data_ptr(), ptr<const scalar_t>(p.logits), ptr<const int64_t>(p.labels), ptr<const scalar_t>(p.targets),
          p.R, p.C, p.P, p.per_pixel, ptr<scalar_t>(gl), ptr<scalar_t>(gt));
      check_launch("lossext::mask_bce_backward kernel");
    });
  }
  static void row_sums(const HeatmapProblem& p, Tensor& sums) {
    if (p.rows == 0) return;
    on_device(p.output, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      row_sums_kernel<scalar_t><<<grid_for(p.rows, 1), kThreads, 0, stream>>>(
          ptr<const scalar_t>(p.output), ptr<const scalar_t>(p.target), p.rows, p.pixels, ptr<acc_t<scalar_t>>(sums));
      check_launch("lossext::joints_mse_sums kernel");
    });
  }
  static void row_sums_backward(const HeatmapProblem& p, const Tensor& grad, Tensor& out) {
    const int64_t n = p.rows * p.pixels;
    if (n == 0) return;
    on_device(p.output, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      row_sums_backward_kernel<scalar_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          ptr<const acc_t<scalar_t>>(grad), ptr<const scalar_t>(p.output), ptr<const scalar_t>(p.target), n, p.pixels,
          ptr<scalar_t>(out));
      check_launch("lossext::joints_mse_sums_backward kernel");
    });
  }
};

}  // namespace dense
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::dense::register_dense_kernels<lossext::dense::DenseCuda>(m);
}
