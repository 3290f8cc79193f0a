// CUDA kernels of the dense-prediction family (Device = DenseCuda, see dense_ops.h).
//
// - row_sums: one block of kThreads per heatmap (grid-stride over rows beyond 65535 blocks);
//   thread t sums the pixels t, t + kThreads, ... in double, then a fixed-order block sum
//   (cuda_detail::block_sum). The order depends on the row length only: deterministic, no
//   atomics. 64-bit indices.
// - row_sums_backward: element-wise, grid-stride; an element of a row whose upstream gradient
//   is 0 is written as 0 without reading the heatmaps.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

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

// sum_r c_r s_r over r in [0, n), one block: thread t takes r = t, t + kThreads, ... in double.
template <class A>
__global__ void __launch_bounds__(kThreads)
    weighted_total_kernel(const A* __restrict__ c, const A* __restrict__ s, int64_t n, A* __restrict__ out) {
  double v = 0.0;
  for (int64_t r = threadIdx.x; r < n; r += kThreads) v += static_cast<double>(c[r]) * static_cast<double>(s[r]);
  v = block_sum(v);
  if (threadIdx.x == 0) *out = static_cast<A>(v);
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

// ---- dice and masked L1 ------------------------------------------------------------------
// Rows (b, c) of P pixels cut into chunks of kChunk: one block per (row, chunk) (multiclass:
// per (sample, chunk), all C classes) sums its pixels in double with fixed-order block sums
// into part[(row * nch + chunk) * 4 + q]; add_chunks_kernel then adds each row's chunks in
// order. Deterministic, no atomics; 64-bit indices; grid-stride beyond 65535 blocks.
constexpr int64_t kChunk = 2048;
constexpr int kPer = static_cast<int>(kChunk / kThreads);  // pixels per thread in a multiclass chunk
static_assert(kChunk % kThreads == 0, "whole pixels per thread");

inline int64_t chunks_of(int64_t P) { return P > 0 ? (P + kChunk - 1) / kChunk : 1; }

template <class A>
__global__ void add_chunks_kernel(const double* __restrict__ part, int64_t rows, int64_t nch, A* __restrict__ out) {
  const int64_t n = rows * 4, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / 4, q = i % 4;
    double s = 0.0;
    for (int64_t ch = 0; ch < nch; ++ch) s += part[(r * nch + ch) * 4 + q];
    out[i] = static_cast<A>(s);
  }
}

__device__ __forceinline__ void store_sums(double* dst, double s0, double s1, double s2, double s3) {
  s0 = block_sum(s0);
  s1 = block_sum(s1);
  s2 = block_sum(s2);
  s3 = block_sum(s3);
  if (threadIdx.x == 0) dst[0] = s0, dst[1] = s1, dst[2] = s2, dst[3] = s3;
}

// Binary and multilabel dice rows: p = sigmoid(x) (from_logits) or x.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    dice_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t rows, int64_t P,
                     int64_t nch, bool from_logits, bool has_ignore, int64_t ignore, double* __restrict__ part) {
  using A = acc_t<scalar_t>;
  const A ign = static_cast<A>(ignore);
  for (int64_t task = blockIdx.x; task < rows * nch; task += gridDim.x) {
    const int64_t r = task / nch, ch = task % nch;
    const int64_t k1 = min(P, (ch + 1) * kChunk);
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    for (int64_t k = ch * kChunk + threadIdx.x; k < k1; k += kThreads) {
      const A X = to_a<A>(x[r * P + k]), T = to_a<A>(y[r * P + k]);
      const A pr = from_logits ? sigmoid(X) : X;
      const A kp = has_ignore && T == ign ? A(0) : A(1);
      s0 += static_cast<double>(kp * pr);
      s1 += static_cast<double>(kp * T);
      s2 += static_cast<double>(kp * pr * T);
      s3 += static_cast<double>(kp * std::abs(pr - T));
    }
    store_sums(part + task * 4, s0, s1, s2, s3);
  }
}

// The label of pixel (b, k): keep 0 (ignored) or 1; bad (outside [0, C) and not ignored).
__device__ __forceinline__ int64_t read_label(const int64_t* labels, int64_t i, int64_t C, bool has_ignore,
                                              int64_t ignore, bool& ignored, bool& bad) {
  const int64_t l = labels[i];
  ignored = has_ignore && l == ignore;
  bad = !ignored && (l < 0 || l >= C);
  return l;
}

// Softmax statistics of pixel k of sample xb (classes at stride P): max and 1 / sum exp.
template <class A, class scalar_t>
__device__ __forceinline__ void softmax_stats(const scalar_t* xb, int64_t C, int64_t P, int64_t k, A& mx, A& inv) {
  mx = -A(INFINITY);
  for (int64_t c = 0; c < C; ++c) mx = max(mx, to_a<A>(xb[c * P + k]));
  A s = A(0);
  for (int64_t c = 0; c < C; ++c) s += math::exp(to_a<A>(xb[c * P + k]) - mx);
  inv = A(1) / s;
}

// Multiclass dice: one block per (sample, chunk); thread t keeps the softmax statistics of its
// kPer pixels in registers, then adds each class's four sums (a bad label: NaN).
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    dice_multiclass_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ labels, int64_t B, int64_t C,
                           int64_t P, int64_t nch, bool from_logits, bool has_ignore, int64_t ignore,
                           double* __restrict__ part) {
  using A = acc_t<scalar_t>;
  for (int64_t task = blockIdx.x; task < B * nch; task += gridDim.x) {
    const int64_t b = task / nch, ch = task % nch;
    const scalar_t* xb = x + b * C * P;
    A mx[kPer], inv[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t k = ch * kChunk + threadIdx.x + int64_t(i) * kThreads;
      mx[i] = A(0), inv[i] = A(1);
      if (k < P && from_logits) softmax_stats(xb, C, P, k, mx[i], inv[i]);
    }
    for (int64_t c = 0; c < C; ++c) {
      double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int64_t k = ch * kChunk + threadIdx.x + int64_t(i) * kThreads;
        if (k >= P) continue;
        bool ignored, bad;
        const int64_t l = read_label(labels, b * P + k, C, has_ignore, ignore, ignored, bad);
        const A X = to_a<A>(xb[c * P + k]);
        const A pr = from_logits ? math::exp(X - mx[i]) * inv[i] : X;
        const A T = l == c ? A(1) : A(0), kp = ignored ? A(0) : A(1);
        s0 += bad ? cuda::nan_v<double>() : static_cast<double>(kp * pr);
        s1 += static_cast<double>(kp * T);
        s2 += static_cast<double>(kp * pr * T);
        s3 += static_cast<double>(kp * std::abs(pr - T));
      }
      store_sums(part + ((b * C + c) * nch + ch) * 4, s0, s1, s2, s3);
    }
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    dice_rows_backward_kernel(const acc_t<scalar_t>* __restrict__ g, const scalar_t* __restrict__ x,
                              const scalar_t* __restrict__ y, int64_t n, int64_t P, bool from_logits, bool has_ignore,
                              int64_t ignore, scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  const A ign = static_cast<A>(ignore);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const A* gr = g + (i / P) * 4;
    const A X = to_a<A>(x[i]), T = to_a<A>(y[i]);
    const A pr = from_logits ? sigmoid(X) : X;
    const A d = dice_dp(gr[0], gr[2], gr[3], pr, T, has_ignore && T == ign ? A(0) : A(1));
    out[i] = to_s<scalar_t>(from_logits ? d * pr * (A(1) - pr) : d);
  }
}

// Multiclass backward: one thread per pixel; the softmax's Jacobian needs sum_c p_c dp_c first.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    dice_multiclass_backward_kernel(const acc_t<scalar_t>* __restrict__ g, const scalar_t* __restrict__ x,
                                    const int64_t* __restrict__ labels, int64_t B, int64_t C, int64_t P,
                                    bool from_logits, bool has_ignore, int64_t ignore, scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  const int64_t n = B * P, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / P, k = i % P;
    const scalar_t* xb = x + b * C * P;
    const A* gb = g + b * C * 4;
    bool ignored, bad;
    const int64_t l = read_label(labels, i, C, has_ignore, ignore, ignored, bad);
    const A kp = ignored || bad ? A(0) : A(1);
    A mx = A(0), inv = A(1);
    if (from_logits) softmax_stats(xb, C, P, k, mx, inv);
    A dot = A(0);
    if (from_logits) {
      for (int64_t c = 0; c < C; ++c) {
        const A pr = math::exp(to_a<A>(xb[c * P + k]) - mx) * inv;
        dot += pr * dice_dp(gb[c * 4], gb[c * 4 + 2], gb[c * 4 + 3], pr, l == c ? A(1) : A(0), kp);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const A X = to_a<A>(xb[c * P + k]);
      const A pr = from_logits ? math::exp(X - mx) * inv : X;
      const A d = dice_dp(gb[c * 4], gb[c * 4 + 2], gb[c * 4 + 3], pr, l == c ? A(1) : A(0), kp);
      out[(b * C + c) * P + k] = to_s<scalar_t>(from_logits ? pr * (d - dot) : d);
    }
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    masked_l1_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ m,
                     int64_t rows, int64_t C, int64_t P, int64_t nch, bool bcast, double* __restrict__ part) {
  using A = acc_t<scalar_t>;
  for (int64_t task = blockIdx.x; task < rows * nch; task += gridDim.x) {
    const int64_t r = task / nch, ch = task % nch;
    const int64_t k1 = min(P, (ch + 1) * kChunk);
    const scalar_t* mr = m + (bcast ? r / C : r) * P;
    const A cnt = !bcast || r % C == 0 ? A(1) : A(0);
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    for (int64_t k = ch * kChunk + threadIdx.x; k < k1; k += kThreads) {
      const A d = std::abs(to_a<A>(x[r * P + k]) - to_a<A>(y[r * P + k])), M = to_a<A>(mr[k]);
      s0 += static_cast<double>(d * M);
      s1 += static_cast<double>(d * (A(1) - M));
      s2 += static_cast<double>(cnt * M);
      s3 += static_cast<double>(cnt * (A(1) - M));
    }
    store_sums(part + task * 4, s0, s1, s2, s3);
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    masked_l1_backward_kernel(const acc_t<scalar_t>* __restrict__ g, const scalar_t* __restrict__ x,
                              const scalar_t* __restrict__ y, const scalar_t* __restrict__ m, int64_t n, int64_t C,
                              int64_t P, bool bcast, scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / P, k = i % P;
    const A M = to_a<A>(m[(bcast ? r / C : r) * P + k]);
    out[i] = to_s<scalar_t>(masked_l1_grad(g[r * 4], g[r * 4 + 1], to_a<A>(x[i]), to_a<A>(y[i]), M));
  }
}

// The [rows * nch * 4] double partials of a chunked forward.
inline Tensor new_partials(const Tensor& ref, int64_t rows, int64_t nch) {
  return torch::stable::empty(std::vector<int64_t>{rows * nch * 4}, ScalarType::Double, std::nullopt, ref.device());
}

template <class A>
void launch_add_chunks(const Tensor& part, int64_t rows, int64_t nch, Tensor& out, cudaStream_t stream, const char* what) {
  add_chunks_kernel<A><<<grid_for(rows * 4, kThreads), kThreads, 0, stream>>>(ptr<const double>(part), rows, nch,
                                                                              ptr<A>(out));
  check_launch(what);
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
  // No one-pass kernel on CUDA: row_sums, row_sums_backward with g = coef, then the loss from a
  // single block (rows in a fixed thread order, block_sum: deterministic).
  static void row_sums_with_grad(const HeatmapProblem& p, const Tensor& coef, Tensor& loss, Tensor& sums, Tensor& out) {
    row_sums(p, sums);
    row_sums_backward(p, coef, out);
    on_device(p.output, p.op, [&](auto tag, cudaStream_t stream) {
      using A = acc_t<decltype(tag)>;
      weighted_total_kernel<A><<<1, kThreads, 0, stream>>>(ptr<const A>(coef), ptr<const A>(sums), p.rows, ptr<A>(loss));
      check_launch("lossext::joints_mse_loss_with_grad total kernel");
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
  static void dice_sums(const DiceProblem& p, Tensor& out) {
    const int64_t rows = p.B * p.C, nch = chunks_of(p.P);
    if (rows == 0) return;
    Tensor part = new_partials(p.logits, rows, nch);
    on_device(p.logits, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      if (p.multiclass) {
        dice_multiclass_kernel<scalar_t><<<grid_for(p.B * nch, 1), kThreads, 0, stream>>>(
            ptr<const scalar_t>(p.logits), ptr<const int64_t>(p.target), p.B, p.C, p.P, nch, p.from_logits,
            p.has_ignore, p.ignore, ptr<double>(part));
      } else {
        dice_rows_kernel<scalar_t><<<grid_for(rows * nch, 1), kThreads, 0, stream>>>(
            ptr<const scalar_t>(p.logits), ptr<const scalar_t>(p.target), rows, p.P, nch, p.from_logits, p.has_ignore,
            p.ignore, ptr<double>(part));
      }
      check_launch("lossext::dice_sums kernel");
      launch_add_chunks<acc_t<scalar_t>>(part, rows, nch, out, stream, "lossext::dice_sums chunk sums");
    });
  }
  static void dice_sums_backward(const DiceProblem& p, const Tensor& grad, Tensor& out) {
    const int64_t n = p.B * p.C * p.P;
    if (n == 0) return;
    on_device(p.logits, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      if (p.multiclass) {
        dice_multiclass_backward_kernel<scalar_t><<<grid_for(p.B * p.P, kThreads), kThreads, 0, stream>>>(
            ptr<const A>(grad), ptr<const scalar_t>(p.logits), ptr<const int64_t>(p.target), p.B, p.C, p.P,
            p.from_logits, p.has_ignore, p.ignore, ptr<scalar_t>(out));
      } else {
        dice_rows_backward_kernel<scalar_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
            ptr<const A>(grad), ptr<const scalar_t>(p.logits), ptr<const scalar_t>(p.target), n, p.P, p.from_logits,
            p.has_ignore, p.ignore, ptr<scalar_t>(out));
      }
      check_launch("lossext::dice_sums_backward kernel");
    });
  }
  static void masked_l1_sums(const MaskedL1Problem& p, Tensor& out) {
    const int64_t rows = p.B * p.C, nch = chunks_of(p.P);
    if (rows == 0) return;
    Tensor part = new_partials(p.input, rows, nch);
    on_device(p.input, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      masked_l1_kernel<scalar_t><<<grid_for(rows * nch, 1), kThreads, 0, stream>>>(
          ptr<const scalar_t>(p.input), ptr<const scalar_t>(p.target), ptr<const scalar_t>(p.mask), rows, p.C, p.P, nch,
          p.mask_bcast, ptr<double>(part));
      check_launch("lossext::masked_l1_sums kernel");
      launch_add_chunks<acc_t<scalar_t>>(part, rows, nch, out, stream, "lossext::masked_l1_sums chunk sums");
    });
  }
  static void masked_l1_sums_backward(const MaskedL1Problem& p, const Tensor& grad, Tensor& out) {
    const int64_t n = p.B * p.C * p.P;
    if (n == 0) return;
    on_device(p.input, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      masked_l1_backward_kernel<scalar_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          ptr<const acc_t<scalar_t>>(grad), ptr<const scalar_t>(p.input), ptr<const scalar_t>(p.target),
          ptr<const scalar_t>(p.mask), n, p.C, p.P, p.mask_bcast, ptr<scalar_t>(out));
      check_launch("lossext::masked_l1_sums_backward kernel");
    });
  }
};

}  // namespace dense
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::dense::register_dense_kernels<lossext::dense::DenseCuda>(m);
}
