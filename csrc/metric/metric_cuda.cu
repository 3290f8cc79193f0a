// CUDA kernels of the metric-learning family (Device = MetricCuda, see metric_ops.h).
//
// - Rows: one warp per row (center loss, the backward rows) or one block per row (Triplet-Center
//   forward: its 8 warps take the classes j = warp, warp + 8, ... in order). A squared distance is
//   summed by each lane over d = lane, lane + 32, ... in order, then by a fixed shuffle-down tree,
//   and lane 0's value is broadcast: the same bits on every run. The Triplet-Center forward keeps
//   per warp the running (min key, argmin) with the lowest index among ties (metric_math.h
//   `better`), merged by thread 0 in warp order. It is a direct kernel (O(N C D) work, O(1) extra
//   memory per row; no N x C buffer): fine for the class counts of the papers (40, 55 classes);
//   the CPU uses tiled GEMMs for large C.
// - Reduced losses: per-row float64 values, added by one block in a fixed order (block_sum).
// - Center gradients, no atomics: each center row is one block, whose threads own columns d and
//   walk the rows' contributions (positive, and the hardest negative) in row order, keeping
//   those of their class. O(C x N) label reads: simple and deterministic by construction.
// - Grid-stride loops over rows, classes and elements (grids capped at kMaxGrid), 64-bit indices,
//   the current stream of the features' device, a launch check after every launch, no host sync.
// - Bad labels are not validated (a host sync): a row whose target is outside [0, C) never
//   indexes with it; its loss (so a reduced loss) and its feature-gradient row are NaN, and it
//   gives no center gradient. A negative index outside [-1, C) in the backward: the same.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <torch/csrc/stable/library.h>

#include "../common/pointwise_cuda.cuh"
#include "../common/cuda_helpers.cuh"
#include "metric_ops.h"

namespace lossext {
namespace metric {
namespace {

using namespace cuda;
using cuda_detail::block_sum;
using cuda_detail::check_launch;
using cuda_detail::current_stream;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kFinal = cuda_detail::kFinalThreads;

// sum_d (a_d - b_d)^2 over the warp (lanes over d in order, fixed tree), the same in every lane.
template <class A, class scalar_t>
__device__ __forceinline__ A warp_sq_dist(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t D,
                                          int lane) {
  A v = A(0);
  for (int64_t d = lane; d < D; d += 32) {
    const A x = to_a<A>(a[d]) - to_a<A>(b[d]);
    v = v + x * x;
  }
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return __shfl_sync(0xffffffffu, v, 0);
}

template <class A>
__device__ __forceinline__ A grad_scale(const A* go_acc, int64_t i, Reduction red) {
  return red == Reduction::None ? go_acc[i] : go_acc[0];
}

// ---- center loss ------------------------------------------------------------------------------

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    center_rows_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ c, const int64_t* __restrict__ t,
                       int64_t N, int64_t C, int64_t D, double* __restrict__ li, scalar_t* __restrict__ out_none) {
  using A = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = threadIdx.x >> 5;
  for (int64_t i = blockIdx.x * int64_t(kWarps) + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    const int64_t y = t[i];
    double v;
    if (y < 0 || y >= C) {
      v = nan_v<double>();
    } else {
      v = 0.5 * double(warp_sq_dist<A>(f + i * D, c + y * D, D, lane));
    }
    if (lane == 0) {
      if (out_none) out_none[i] = to_s<scalar_t>(v); else li[i] = v;
    }
  }
}

// out[0] = sum_i li[i] (or / N), by one block in a fixed order.
template <class scalar_t>
__global__ void __launch_bounds__(kFinal)
    total_kernel(const double* __restrict__ li, int64_t N, bool mean, scalar_t* __restrict__ out) {
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) v += li[i];
  v = block_sum(v);
  if (threadIdx.x == 0) out[0] = to_s<scalar_t>(mean ? v / double(N) : v);
}

// go_acc: grad_output as A, with 'mean' divided by N.
template <class scalar_t>
__global__ void grad_output_kernel(const scalar_t* __restrict__ go, int64_t n, double div, acc_t<scalar_t>* __restrict__ out) {
  using A = acc_t<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = static_cast<A>(double(to_a<A>(go[i])) / div);
}

// grad_features of the center loss (element-wise) and its center-gradient entries (m = i).
template <class scalar_t>
__global__ void center_backward_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ c,
                                       const int64_t* __restrict__ t, const acc_t<scalar_t>* __restrict__ g,
                                       Reduction red, int64_t N, int64_t C, int64_t D, scalar_t* __restrict__ gf,
                                       int64_t* __restrict__ cls, acc_t<scalar_t>* __restrict__ coef) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += stride) {
    const int64_t y = t[i];
    const bool ok = y >= 0 && y < C;
    cls[i] = ok ? y : -1;
    coef[i] = -grad_scale(g, i, red);
  }
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < N * D; e += stride) {
    const int64_t i = e / D, d = e - i * D;
    const int64_t y = t[i];
    A v;
    if (y < 0 || y >= C) {
      v = nan_v<A>();
    } else {
      v = grad_scale(g, i, red) * (to_a<A>(f[e]) - to_a<A>(c[y * D + d]));
    }
    gf[e] = to_s<scalar_t>(v);
  }
}

// grad_centers[j, d] = sum over entries m (row m / per_row) with cls[m] = j, in m order, of
// coef[m] (f[row, d] - c[j, d]). One block per class (grid-stride), threads over d.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    center_grad_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ c, const int64_t* __restrict__ cls,
                       const acc_t<scalar_t>* __restrict__ coef, int64_t M, int per_row, int64_t C, int64_t D,
                       scalar_t* __restrict__ gc) {
  using A = acc_t<scalar_t>;
  for (int64_t j = blockIdx.x; j < C; j += gridDim.x) {
    for (int64_t d0 = 0; d0 < D; d0 += blockDim.x) {
      const int64_t d = d0 + threadIdx.x;
      const bool mine = d < D;
      const A cj = mine ? to_a<A>(c[j * D + d]) : A(0);
      A acc = A(0);
      for (int64_t m = 0; m < M; ++m) {
        if (cls[m] != j) continue;  // uniform over the block
        if (mine) acc += coef[m] * (to_a<A>(f[(m / per_row) * D + d]) - cj);
      }
      if (mine) gc[j * D + d] = to_s<scalar_t>(acc);
    }
  }
}

// ---- triplet-center loss ----------------------------------------------------------------------

__global__ void mark_present_kernel(const int64_t* __restrict__ t, int64_t N, int64_t C, unsigned char* __restrict__ present) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t y = t[i];
    if (y >= 0 && y < C) present[y] = 1;  // every writer stores the same byte
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    tc_forward_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ c, const int64_t* __restrict__ t,
                      const unsigned char* __restrict__ present, int64_t N, int64_t C, int64_t D, double margin,
                      bool euclid, double* __restrict__ li, scalar_t* __restrict__ out_none,
                      int64_t* __restrict__ neg) {
  using A = acc_t<scalar_t>;
  __shared__ A s_best[kWarps];
  __shared__ int64_t s_arg[kWarps];
  __shared__ A s_pos;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t y = t[i];
    const bool ok = y >= 0 && y < C;
    const scalar_t* fi = f + i * D;
    A best = A(0);
    int64_t arg = -1;
    if (ok) {
      for (int64_t j = warp; j < C; j += kWarps) {
        if (j == y || (present && !present[j])) continue;  // uniform over the warp
        const A key = min_key(warp_sq_dist<A>(fi, c + j * D, D, lane), euclid);
        if (better(key, j, best, arg)) {
          best = key;
          arg = j;
        }
      }
      if (warp == 0) {
        const A sp = warp_sq_dist<A>(fi, c + y * D, D, lane);
        if (lane == 0) s_pos = sp;
      }
    }
    if (lane == 0) {
      s_best[warp] = best;
      s_arg[warp] = arg;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      A b = A(0);
      int64_t a = -1;
      for (int w = 0; w < kWarps; ++w)
        if (s_arg[w] >= 0 && better(s_best[w], s_arg[w], b, a)) {
          b = s_best[w];
          a = s_arg[w];
        }
      double v;
      if (!ok) {
        v = nan_v<double>();
        a = -1;
      } else if (a < 0) {
        v = 0.0;  // no negative: no hinge
      } else {
        v = double(hinge(distance(s_pos, euclid) + A(margin) - distance_from_key(b, euclid)));
      }
      neg[i] = a;
      if (out_none) out_none[i] = to_s<scalar_t>(v); else li[i] = v;
    }
    __syncthreads();  // shared values are rewritten for the next row
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    tc_backward_rows_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ c,
                            const int64_t* __restrict__ t, const int64_t* __restrict__ neg,
                            const acc_t<scalar_t>* __restrict__ g, Reduction red, int64_t N, int64_t C, int64_t D,
                            double margin, bool euclid, scalar_t* __restrict__ gf, int64_t* __restrict__ cls,
                            acc_t<scalar_t>* __restrict__ coef) {
  using A = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = threadIdx.x >> 5;
  for (int64_t i = blockIdx.x * int64_t(kWarps) + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    const int64_t y = t[i], n = neg[i];
    const bool ok = y >= 0 && y < C && n >= -1 && n < C;
    const scalar_t* fi = f + i * D;
    scalar_t* gi = gf + i * D;
    A ap = A(0), an = A(0);
    int64_t cp = -1, cn = -1;
    if (ok && n >= 0) {
      const A sp = warp_sq_dist<A>(fi, c + y * D, D, lane);
      const A sn = warp_sq_dist<A>(fi, c + n * D, D, lane);
      if (hinge_active(distance(sp, euclid) + A(margin) - distance(sn, euclid))) {
        const A gs = grad_scale(g, i, red);
        ap = gs * distance_slope(sp, euclid);
        an = gs * distance_slope(sn, euclid);
        cp = y;
        cn = n;
      }
    }
    if (lane == 0) {
      cls[2 * i] = cp;
      cls[2 * i + 1] = cn;
      coef[2 * i] = -ap;
      coef[2 * i + 1] = an;
    }
    const scalar_t* pc = c + (ok ? y : 0) * D;
    const scalar_t* nc = c + (ok && n >= 0 ? n : (ok ? y : 0)) * D;
    for (int64_t d = lane; d < D; d += 32) {
      A v;
      if (!ok) {
        v = nan_v<A>();
      } else {
        const A x = to_a<A>(fi[d]);
        v = ap * (x - to_a<A>(pc[d])) - an * (x - to_a<A>(nc[d]));
      }
      gi[d] = to_s<scalar_t>(v);
    }
  }
}

template <class F>
void on_device(const Tensor& where, const char* op, F&& f) {
  const int32_t dev = where.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(dev);
  cudaStream_t stream = current_stream(dev);
  dispatch_floating(where.scalar_type(), op, [&](auto tag) { f(tag, stream); });
}

// Writes the loss from the per-row values li (reduced), or nothing ('none' wrote it already).
template <class scalar_t>
void finish_loss(const Problem& p, const Tensor& li, Tensor& loss, cudaStream_t stream) {
  if (p.reduction == Reduction::None) return;
  total_kernel<scalar_t><<<1, kFinal, 0, stream>>>(ptr<const double>(li), p.N, p.reduction == Reduction::Mean,
                                                   ptr<scalar_t>(loss));
  check_launch("lossext::metric total kernel");
}

// grad_output as A [N] or [1] ('mean' divided by N).
template <class scalar_t>
Tensor grad_output_acc(const Problem& p, const Tensor& go, cudaStream_t stream) {
  const int64_t n = p.reduction == Reduction::None ? p.N : 1;
  Tensor out = new_tensor({std::max<int64_t>(n, 1)}, acc_scalar_type(p.f.scalar_type()), p.f);
  if (n > 0) {
    const double div = p.reduction == Reduction::Mean ? double(p.N) : 1.0;
    grad_output_kernel<scalar_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        ptr<const scalar_t>(go), n, div, ptr<acc_t<scalar_t>>(out));
    check_launch("lossext::metric grad_output kernel");
  }
  return out;
}

template <class scalar_t>
void center_grads(const Problem& p, const Tensor& cls, const Tensor& coef, int per_row, Tensor& gc,
                  cudaStream_t stream) {
  center_grad_kernel<scalar_t><<<grid_for(p.C, 1), kThreads, 0, stream>>>(
      ptr<const scalar_t>(p.f), ptr<const scalar_t>(p.c), ptr<const int64_t>(cls), ptr<const acc_t<scalar_t>>(coef),
      p.N * per_row, per_row, p.C, p.D, ptr<scalar_t>(gc));
  check_launch("lossext::metric center_grad kernel");
}

}  // namespace

struct MetricCuda {
  static void center_forward(const Problem& p, Tensor& loss) {
    on_device(p.f, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      const bool none = p.reduction == Reduction::None;
      Tensor li = new_tensor({none ? 0 : p.N}, ScalarType::Double, p.f);
      if (p.N > 0) {
        center_rows_kernel<scalar_t><<<grid_for(p.N, kWarps), kThreads, 0, stream>>>(
            ptr<const scalar_t>(p.f), ptr<const scalar_t>(p.c), ptr<const int64_t>(p.target), p.N, p.C, p.D,
            none ? nullptr : ptr<double>(li), none ? ptr<scalar_t>(loss) : nullptr);
        check_launch("lossext::center_loss rows kernel");
      }
      finish_loss<scalar_t>(p, li, loss, stream);
    });
  }

  static void center_backward(const Problem& p, const Tensor& go, Tensor& gf, Tensor& gc) {
    on_device(p.f, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      Tensor g = grad_output_acc<scalar_t>(p, go, stream);
      Tensor cls = new_tensor({p.N}, ScalarType::Long, p.f);
      Tensor coef = new_tensor({p.N}, acc_scalar_type(p.f.scalar_type()), p.f);
      if (p.N > 0) {
        center_backward_kernel<scalar_t><<<grid_for(std::max(p.N * p.D, p.N), kThreads), kThreads, 0, stream>>>(
            ptr<const scalar_t>(p.f), ptr<const scalar_t>(p.c), ptr<const int64_t>(p.target), ptr<const A>(g),
            p.reduction, p.N, p.C, p.D, ptr<scalar_t>(gf), ptr<int64_t>(cls), ptr<A>(coef));
        check_launch("lossext::center_loss_backward kernel");
      }
      center_grads<scalar_t>(p, cls, coef, 1, gc, stream);
    });
  }

  static void tc_forward(const Problem& p, Tensor& loss, Tensor& neg) {
    on_device(p.f, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      const bool none = p.reduction == Reduction::None;
      Tensor li = new_tensor({none ? 0 : p.N}, ScalarType::Double, p.f);
      std::optional<Tensor> present;
      if (p.batch) {
        present = new_tensor({p.C}, ScalarType::Byte, p.f);
        torch::stable::zero_(*present);
        if (p.N > 0) {
          mark_present_kernel<<<grid_for(p.N, kThreads), kThreads, 0, stream>>>(ptr<const int64_t>(p.target), p.N,
                                                                                p.C, ptr<unsigned char>(*present));
          check_launch("lossext::triplet_center_loss present kernel");
        }
      }
      if (p.N > 0) {
        tc_forward_kernel<scalar_t><<<grid_for(p.N, 1), kThreads, 0, stream>>>(
            ptr<const scalar_t>(p.f), ptr<const scalar_t>(p.c), ptr<const int64_t>(p.target),
            present ? ptr<const unsigned char>(*present) : nullptr, p.N, p.C, p.D, p.margin, p.euclid,
            none ? nullptr : ptr<double>(li), none ? ptr<scalar_t>(loss) : nullptr, ptr<int64_t>(neg));
        check_launch("lossext::triplet_center_loss kernel");
      }
      finish_loss<scalar_t>(p, li, loss, stream);
    });
  }

  static void tc_backward(const Problem& p, const Tensor& go, const Tensor& neg, Tensor& gf, Tensor& gc) {
    on_device(p.f, p.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      Tensor g = grad_output_acc<scalar_t>(p, go, stream);
      Tensor cls = new_tensor({2 * p.N}, ScalarType::Long, p.f);
      Tensor coef = new_tensor({2 * p.N}, acc_scalar_type(p.f.scalar_type()), p.f);
      if (p.N > 0) {
        tc_backward_rows_kernel<scalar_t><<<grid_for(p.N, kWarps), kThreads, 0, stream>>>(
            ptr<const scalar_t>(p.f), ptr<const scalar_t>(p.c), ptr<const int64_t>(p.target), ptr<const int64_t>(neg),
            ptr<const A>(g), p.reduction, p.N, p.C, p.D, p.margin, p.euclid, ptr<scalar_t>(gf), ptr<int64_t>(cls),
            ptr<A>(coef));
        check_launch("lossext::triplet_center_loss_backward kernel");
      }
      center_grads<scalar_t>(p, cls, coef, 2, gc, stream);
    });
  }
};

}  // namespace metric
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::metric::register_metric_kernels<lossext::metric::MetricCuda>(m);
}
