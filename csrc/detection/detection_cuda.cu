// CUDA kernels of the detection family's focal and box losses (Device = DetectionCuda, see
// detection_ops.h; sigmoid_focal_loss on the element-wise pattern's CudaDevice). The math is
// box_math.h's BoxIouOp and focal_math.h's focal_value / focal_coef, as on the CPU.
//
// - Boxes: one thread per box, grid-stride (grids capped at kMaxGrid), 64-bit indices.
// - Softmax focal rows (r = n S + s, classes at stride S):
//     S > 1 or C <= kThreadRowC: one thread per row, adjacent threads adjacent rows (adjacent s:
//       coalesced for [N, C, H, W]), the classes walked in order (max, then sum of exp(z - max),
//       then, in the backward, the gradient row);
//     S = 1 and C <= kWarpRowC: one warp per row; larger C: one block (kThreads) per row. Each
//       lane folds c = lane, lane + group, ... in order; lanes are combined by a fixed
//       shuffle-down tree (and, for a block, the warps' values read in warp order by every
//       thread), and lane 0's value broadcast: every lane of a row uses the same max and sum.
// - Deterministic, no atomics: a reduced loss is summed per thread in a fixed order (rows in
//   double; boxes in runs of kRun in the acc type, each run flushed into a double), per block by
//   cuda_detail::block_sum's fixed tree into one partial per block, then the partials by one
//   block in a fixed order. Grids and the element-to-thread mapping depend on the sizes only.
// - No host synchronization: the focal 'mean' divisor (rows not ignored) is counted on the
//   device, per block, in the forward kernel (or, for the backward, by a count kernel) and used
//   by the final one-block kernel (0 / 0 = NaN when every row is ignored, as on CPU).
// - Bad labels (softmax focal: a target outside [0, C) that is not ignore_index; the CPU raises)
//   are not validated (that would need a host sync) and never index: the row's loss is NaN (so a
//   reduced loss is NaN) and its gradient row is NaN. Ignored rows give 0 and a zero gradient row.
// - Empty inputs launch no row or box kernel; a reduced output is still written by the final
//   kernel (sum 0, box mean 0, focal mean NaN).
// - The current stream of the inputs' device, a launch check after every launch.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../common/cuda_helpers.cuh"
#include "../common/math.h"
#include "../common/pointwise_cuda.cuh"
#include "detection_ops.h"

namespace lossext {
namespace detection {
namespace {

using namespace cuda;
using cuda_detail::block_sum;
using cuda_detail::check_launch;
using cuda_detail::current_stream;
using cuda_detail::finalize_sum_kernel;

constexpr int kThreads = 256;                       // threads per block of every kernel here
constexpr int kFinal = cuda_detail::kFinalThreads;  // the final one-block sums
constexpr int kRun = cuda_detail::kRun;             // boxes per thread summed in A before a double flush
constexpr int64_t kThreadRowC = 16;                 // S = 1: a thread per row up to this many classes
constexpr int64_t kWarpRowC = 2048;                 // S = 1: a warp per row up to this many, then a block

template <class T> const T* opt_ptr(const std::optional<Tensor>& t) {
  return t ? static_cast<const T*>(t->data_ptr()) : nullptr;
}

inline Tensor new_tensor(std::vector<int64_t> sizes, ScalarType st, const Tensor& like) {
  return torch::stable::empty(sizes, st, std::nullopt, like.device());
}

// The device guard and current stream of `where`, and f(scalar_t{}, stream) for its dtype.
template <class F>
void on_device(const Tensor& where, const char* op, F&& f) {
  const int32_t dev = where.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(dev);
  cudaStream_t stream = current_stream(dev);
  dispatch_floating(where.scalar_type(), op, [&](auto tag) { f(tag, stream); });
}

// ---- box IoU losses ------------------------------------------------------------------------

template <class A, class scalar_t>
__device__ __forceinline__ Box<A> load_box(const scalar_t* __restrict__ p) {
  return {to_a<A>(p[0]), to_a<A>(p[1]), to_a<A>(p[2]), to_a<A>(p[3])};
}

// 'none': out[k] = loss of box k.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    box_none_kernel(BoxIouOp<acc_t<scalar_t>> op, const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2,
                    int64_t n, scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride)
    out[k] = to_s<scalar_t>(op.value(load_box<A>(b1 + 4 * k), load_box<A>(b2 + 4 * k)));
}

// 'sum' / 'mean': partials[block] = the block's sum of box losses (fixed order, see header).
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    box_sum_kernel(BoxIouOp<acc_t<scalar_t>> op, const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2,
                   int64_t n, double* __restrict__ partials) {
  using A = acc_t<scalar_t>;
  A acc = A(0);
  double total = 0.0;
  int run = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    acc += op.value(load_box<A>(b1 + 4 * k), load_box<A>(b2 + 4 * k));
    if (++run == kRun) {
      total += static_cast<double>(acc);
      acc = A(0);
      run = 0;
    }
  }
  total = block_sum(total + static_cast<double>(acc));
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// g1, g2 [n, 4]: the gradients of box k with g = go[k] ('none') or go[0] * scale.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    box_backward_kernel(BoxIouOp<acc_t<scalar_t>> op, const scalar_t* __restrict__ b1,
                        const scalar_t* __restrict__ b2, const scalar_t* __restrict__ go, bool per_box,
                        acc_t<scalar_t> scale, int64_t n, scalar_t* __restrict__ g1, scalar_t* __restrict__ g2) {
  using A = acc_t<scalar_t>;
  const A go0 = per_box ? A(0) : to_a<A>(go[0]) * scale;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const A g = per_box ? to_a<A>(go[k]) : go0;
    const BoxGrad<A> r = op.backward(load_box<A>(b1 + 4 * k), load_box<A>(b2 + 4 * k), g);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      g1[4 * k + j] = to_s<scalar_t>(r.g[j]);
      g2[4 * k + j] = to_s<scalar_t>(r.g[4 + j]);
    }
  }
}

template <class scalar_t>
void box_forward_t(const BoxProblem& p, Tensor& loss, cudaStream_t stream) {
  using A = acc_t<scalar_t>;
  const auto op = BoxIouOp<A>::make(p.mode, p.eps);
  const scalar_t* b1 = ptr<const scalar_t>(p.boxes1);
  const scalar_t* b2 = ptr<const scalar_t>(p.boxes2);
  scalar_t* out = ptr<scalar_t>(loss);
  if (p.reduction == Reduction::None) {
    if (p.n > 0) {
      box_none_kernel<scalar_t><<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(op, b1, b2, p.n, out);
      check_launch("lossext::box_iou_loss kernel");
    }
    return;
  }
  const int blocks = grid_for(p.n, kThreads);
  Tensor partials = new_tensor({blocks}, ScalarType::Double, p.boxes1);
  if (p.n > 0) {
    box_sum_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(op, b1, b2, p.n, ptr<double>(partials));
    check_launch("lossext::box_iou_loss sum kernel");
  }
  // 'mean' of no boxes is 0 (torchvision's box losses): 0 / 1
  const double divisor = p.reduction == Reduction::Mean && p.n > 0 ? double(p.n) : 1.0;
  finalize_sum_kernel<scalar_t><<<1, kFinal, 0, stream>>>(ptr<const double>(partials), p.n > 0 ? blocks : 0,
                                                          divisor, out);
  check_launch("lossext::box_iou_loss finalize kernel");
}

template <class scalar_t>
void box_backward_t(const BoxProblem& p, const Tensor& go, Tensor& g1, Tensor& g2, cudaStream_t stream) {
  using A = acc_t<scalar_t>;
  if (p.n == 0) return;
  const auto op = BoxIouOp<A>::make(p.mode, p.eps);
  box_backward_kernel<scalar_t><<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(
      op, ptr<const scalar_t>(p.boxes1), ptr<const scalar_t>(p.boxes2), ptr<const scalar_t>(go),
      p.reduction == Reduction::None, static_cast<A>(p.grad_scale()), p.n, ptr<scalar_t>(g1), ptr<scalar_t>(g2));
  check_launch("lossext::box_iou_loss_backward kernel");
}

// ---- softmax focal loss --------------------------------------------------------------------

template <class scalar_t>
struct FocalArgs {
  const scalar_t* __restrict__ z;   // [N, C, S]
  const int64_t* __restrict__ tg;   // [N S]
  const scalar_t* __restrict__ al;  // [C] or nullptr
  const scalar_t* __restrict__ wt;  // [C] or nullptr
  int64_t rows, C, S, ignore;
  acc_t<scalar_t> gamma;
};

template <class scalar_t>
FocalArgs<scalar_t> focal_args(const FocalProblem& p) {
  return {ptr<const scalar_t>(p.logits), ptr<const int64_t>(p.target), opt_ptr<scalar_t>(p.alpha),
          opt_ptr<scalar_t>(p.weight), p.N * p.S, p.C, p.S, p.ignore_index,
          static_cast<acc_t<scalar_t>>(p.gamma)};
}

// The max with NaN winning (propagates), as the CPU's row_stats.
struct MaxNan {
  template <class T>
  __device__ __forceinline__ T operator()(T m, T v) const { return (v > m || v != v) ? v : m; }
};
struct Add {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

// The row's class factor w_t alpha_t (1 where neither is given).
template <class A, class scalar_t>
__device__ __forceinline__ A class_factor(const scalar_t* al, const scalar_t* wt, int64_t t) {
  A f = A(1);
  if (al) f *= to_a<A>(al[t]);
  if (wt) f *= to_a<A>(wt[t]);
  return f;
}

// The row's offset in z (and in the gradient): n C S + s.
__device__ __forceinline__ int64_t row_offset(int64_t r, int64_t C, int64_t S) {
  const int64_t n = r / S;
  return n * C * S + (r - n * S);
}

// The loss of a kept row from its softmax statistics (m, sum) and its target logit.
template <class A, class scalar_t>
__device__ __forceinline__ A kept_row_loss(const FocalArgs<scalar_t>& a, int64_t t, A zt, A m, A sum) {
  const A lp = zt - m - math::log(sum);
  return class_factor<A>(a.al, a.wt, t) * focal_value(lp, a.gamma);
}

// The gradient factor k = up w_t alpha_t A of a kept row: dFL/dz_c = k (delta_c - p_c).
template <class A, class scalar_t>
__device__ __forceinline__ A kept_row_coef(const FocalArgs<scalar_t>& a, int64_t t, A zt, A m, A sum, A up) {
  const A lse = m + math::log(sum);
  const A lp = zt - lse;
  return up * class_factor<A>(a.al, a.wt, t) * focal_coef(lp, a.gamma);
}

__device__ __forceinline__ bool is_bad(int64_t t, int64_t ignore, int64_t C) {
  return t != ignore && (t < 0 || t >= C);
}

// One thread's row: the max and the sum of exp(z - max), classes in order.
template <class A, class scalar_t>
__device__ __forceinline__ void thread_row_stats(const scalar_t* __restrict__ zr, int64_t C, int64_t S, A& m,
                                                 A& sum) {
  A mm = to_a<A>(zr[0]);
  for (int64_t c = 1; c < C; ++c) mm = MaxNan()(mm, to_a<A>(zr[c * S]));
  A s = A(0);
  for (int64_t c = 0; c < C; ++c) s += math::exp_softmax(to_a<A>(zr[c * S]) - mm);
  m = mm;
  sum = s;
}

// Reduction over a group of kGroup threads (a warp, or the whole block of kThreads): a fixed
// shuffle-down tree per warp, then (a block) the warps' values in warp order; every thread of
// the group returns the same value. Every thread of the group must call it.
template <int kGroup, class T, class Op>
__device__ __forceinline__ T group_reduce(T v, Op op, T* smem) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  if constexpr (kGroup == 32) {
    return __shfl_sync(0xffffffffu, v, 0);
  } else {
    static_assert(kGroup == kThreads, "a group is a warp or the block");
    if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = smem[0];
#pragma unroll
    for (int w = 1; w < kGroup / 32; ++w) r = op(r, smem[w]);
    __syncthreads();  // smem is rewritten by the next call
    return r;
  }
}

// A group's row (S = 1): max and sum of exp(z - max), the same in every lane.
template <int kGroup, class A, class scalar_t>
__device__ __forceinline__ void group_row_stats(const scalar_t* __restrict__ zr, int64_t C, int lane, A* smem, A& m,
                                                A& sum) {
  A mm = -std::numeric_limits<A>::infinity();
  for (int64_t c = lane; c < C; c += kGroup) mm = MaxNan()(mm, to_a<A>(zr[c]));
  mm = group_reduce<kGroup>(mm, MaxNan(), smem);
  A s = A(0);
  for (int64_t c = lane; c < C; c += kGroup) s += math::exp_softmax(to_a<A>(zr[c]) - mm);
  m = mm;
  sum = group_reduce<kGroup>(s, Add(), smem);
}

// Forward, a thread per row. kReduce: per-block partial loss sums and kept-row counts; else
// out[r] = the row's loss.
template <class scalar_t, bool kReduce>
__global__ void __launch_bounds__(kThreads)
    focal_forward_thread_kernel(FocalArgs<scalar_t> a, scalar_t* __restrict__ out, double* __restrict__ part_loss,
                                double* __restrict__ part_count) {
  using A = acc_t<scalar_t>;
  double acc = 0.0;
  int64_t kept = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < a.rows; r += stride) {
    const int64_t t = a.tg[r];
    A v;
    if (t == a.ignore) {
      v = A(0);
    } else if (t < 0 || t >= a.C) {
      v = nan_v<A>();
    } else {
      const scalar_t* zr = a.z + row_offset(r, a.C, a.S);
      A m, sum;
      thread_row_stats<A>(zr, a.C, a.S, m, sum);
      v = kept_row_loss<A>(a, t, to_a<A>(zr[t * a.S]), m, sum);
    }
    if constexpr (kReduce) {
      acc += static_cast<double>(v);
      kept += t != a.ignore;
    } else {
      out[r] = to_s<scalar_t>(v);
    }
  }
  if constexpr (kReduce) {
    acc = block_sum(acc);
    const double cnt = block_sum(static_cast<double>(kept));
    if (threadIdx.x == 0) {
      part_loss[blockIdx.x] = acc;
      part_count[blockIdx.x] = cnt;
    }
  }
}

// Forward, a group (warp or block) per row, S = 1.
template <class scalar_t, int kGroup, bool kReduce>
__global__ void __launch_bounds__(kThreads)
    focal_forward_group_kernel(FocalArgs<scalar_t> a, scalar_t* __restrict__ out, double* __restrict__ part_loss,
                               double* __restrict__ part_count) {
  using A = acc_t<scalar_t>;
  constexpr int kGroups = kThreads / kGroup;
  __shared__ A smem[kThreads / 32];
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  const int64_t group = threadIdx.x / kGroup;
  double acc = 0.0;
  int64_t kept = 0;
  for (int64_t r = int64_t(blockIdx.x) * kGroups + group; r < a.rows; r += int64_t(gridDim.x) * kGroups) {
    const int64_t t = a.tg[r];  // uniform over the group
    A v;
    if (t == a.ignore) {
      v = A(0);
    } else if (t < 0 || t >= a.C) {
      v = nan_v<A>();
    } else {
      const scalar_t* zr = a.z + r * a.C;
      A m, sum;
      group_row_stats<kGroup>(zr, a.C, lane, smem, m, sum);
      v = kept_row_loss<A>(a, t, to_a<A>(zr[t]), m, sum);
    }
    if (lane == 0) {
      if constexpr (kReduce) {
        acc += static_cast<double>(v);
        kept += t != a.ignore;
      } else {
        out[r] = to_s<scalar_t>(v);
      }
    }
  }
  if constexpr (kReduce) {
    acc = block_sum(acc);
    const double cnt = block_sum(static_cast<double>(kept));
    if (threadIdx.x == 0) {
      part_loss[blockIdx.x] = acc;
      part_count[blockIdx.x] = cnt;
    }
  }
}

// The reduced loss from the block partials: the sum, or the sum / the kept rows ('mean').
template <class scalar_t>
__global__ void __launch_bounds__(kFinal)
    focal_finalize_kernel(const double* __restrict__ part_loss, const double* __restrict__ part_count,
                          int64_t nparts, bool mean, scalar_t* __restrict__ out) {
  double s = 0.0, c = 0.0;
  for (int64_t i = threadIdx.x; i < nparts; i += blockDim.x) {
    s += part_loss[i];
    c += part_count[i];
  }
  s = block_sum(s);
  c = block_sum(c);
  // 'mean': 0 / 0 = NaN when every row is ignored (or there are none), as F.cross_entropy
  if (threadIdx.x == 0) out[0] = to_s<scalar_t>(mean ? s / c : s);
}

// Per-block counts of the rows not ignored (the backward's 'mean' divisor).
__global__ void __launch_bounds__(kThreads)
    focal_count_kernel(const int64_t* __restrict__ tg, int64_t rows, int64_t ignore, double* __restrict__ part) {
  int64_t kept = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) kept += tg[r] != ignore;
  const double c = block_sum(static_cast<double>(kept));
  if (threadIdx.x == 0) part[blockIdx.x] = c;
}

// go0[0] = A(go[0] * scale) as a double, scale = 1 / (kept rows) for 'mean' (the counts' partials),
// 1 for 'sum': the CPU's go0.
template <class scalar_t>
__global__ void __launch_bounds__(kFinal)
    focal_go_kernel(const double* __restrict__ part_count, int64_t nparts, bool mean,
                    const scalar_t* __restrict__ go, double* __restrict__ go0) {
  using A = acc_t<scalar_t>;
  double c = 0.0;
  for (int64_t i = threadIdx.x; i < nparts; i += blockDim.x) c += part_count[i];
  c = block_sum(c);
  if (threadIdx.x == 0) {
    const double scale = mean ? 1.0 / c : 1.0;
    go0[0] = static_cast<double>(static_cast<A>(to_a<double>(go[0]) * scale));
  }
}

// Backward, a thread per row: the row's C gradient entries (stride S).
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    focal_backward_thread_kernel(FocalArgs<scalar_t> a, const scalar_t* __restrict__ go,
                                 const double* __restrict__ go0, scalar_t* __restrict__ g) {
  using A = acc_t<scalar_t>;
  const bool per_row = go0 == nullptr;
  const A up0 = per_row ? A(0) : static_cast<A>(go0[0]);
  const int64_t C = a.C, S = a.S;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < a.rows; r += stride) {
    const int64_t off = row_offset(r, C, S);
    scalar_t* gr = g + off;
    const int64_t t = a.tg[r];
    if (t == a.ignore || is_bad(t, a.ignore, C)) {
      const scalar_t v = t == a.ignore ? to_s<scalar_t>(0.0f) : to_s<scalar_t>(nan_v<float>());
      for (int64_t c = 0; c < C; ++c) gr[c * S] = v;
      continue;
    }
    const scalar_t* zr = a.z + off;
    A m, sum;
    thread_row_stats<A>(zr, C, S, m, sum);
    const A k = kept_row_coef<A>(a, t, to_a<A>(zr[t * S]), m, sum, per_row ? to_a<A>(go[r]) : up0);
    for (int64_t c = 0; c < C; ++c) {
      const A pc = math::exp_softmax(to_a<A>(zr[c * S]) - m) / sum;
      gr[c * S] = to_s<scalar_t>(k * ((c == t ? A(1) : A(0)) - pc));
    }
  }
}

// Backward, a group (warp or block) per row, S = 1.
template <class scalar_t, int kGroup>
__global__ void __launch_bounds__(kThreads)
    focal_backward_group_kernel(FocalArgs<scalar_t> a, const scalar_t* __restrict__ go,
                                const double* __restrict__ go0, scalar_t* __restrict__ g) {
  using A = acc_t<scalar_t>;
  constexpr int kGroups = kThreads / kGroup;
  __shared__ A smem[kThreads / 32];
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  const int64_t group = threadIdx.x / kGroup;
  const bool per_row = go0 == nullptr;
  const A up0 = per_row ? A(0) : static_cast<A>(go0[0]);
  const int64_t C = a.C;
  for (int64_t r = int64_t(blockIdx.x) * kGroups + group; r < a.rows; r += int64_t(gridDim.x) * kGroups) {
    scalar_t* gr = g + r * C;
    const int64_t t = a.tg[r];  // uniform over the group
    if (t == a.ignore || is_bad(t, a.ignore, C)) {
      const scalar_t v = t == a.ignore ? to_s<scalar_t>(0.0f) : to_s<scalar_t>(nan_v<float>());
      for (int64_t c = lane; c < C; c += kGroup) gr[c] = v;
      continue;
    }
    const scalar_t* zr = a.z + r * C;
    A m, sum;
    group_row_stats<kGroup>(zr, C, lane, smem, m, sum);
    const A k = kept_row_coef<A>(a, t, to_a<A>(zr[t]), m, sum, per_row ? to_a<A>(go[r]) : up0);
    for (int64_t c = lane; c < C; c += kGroup) {
      const A pc = math::exp_softmax(to_a<A>(zr[c]) - m) / sum;
      gr[c] = to_s<scalar_t>(k * ((c == t ? A(1) : A(0)) - pc));
    }
  }
}

// How the rows are laid out on threads (a function of C and S only).
enum class RowLayout { Thread, Warp, Block };

inline RowLayout row_layout(const FocalProblem& p) {
  if (p.S > 1 || p.C <= kThreadRowC) return RowLayout::Thread;
  return p.C <= kWarpRowC ? RowLayout::Warp : RowLayout::Block;
}

inline int row_grid(RowLayout l, int64_t rows) {
  switch (l) {
    case RowLayout::Thread: return grid_for(rows, kThreads);
    case RowLayout::Warp: return grid_for(rows, kThreads / 32);
    default: return grid_for(rows, 1);
  }
}

template <class scalar_t>
void focal_forward_t(const FocalProblem& p, Tensor& loss, cudaStream_t stream) {
  const auto a = focal_args<scalar_t>(p);
  const RowLayout layout = row_layout(p);
  const int blocks = row_grid(layout, a.rows);
  const bool reduce = p.reduction != Reduction::None;
  Tensor part_loss, part_count;
  double* pl = nullptr;
  double* pc = nullptr;
  if (reduce) {
    part_loss = new_tensor({blocks}, ScalarType::Double, p.logits);
    part_count = new_tensor({blocks}, ScalarType::Double, p.logits);
    pl = ptr<double>(part_loss);
    pc = ptr<double>(part_count);
  }
  scalar_t* out = ptr<scalar_t>(loss);
  if (a.rows > 0) {
    with_bool(reduce, [&](auto kReduce) {
      switch (layout) {
        case RowLayout::Thread:
          focal_forward_thread_kernel<scalar_t, kReduce.value><<<blocks, kThreads, 0, stream>>>(a, out, pl, pc);
          break;
        case RowLayout::Warp:
          focal_forward_group_kernel<scalar_t, 32, kReduce.value><<<blocks, kThreads, 0, stream>>>(a, out, pl, pc);
          break;
        case RowLayout::Block:
          focal_forward_group_kernel<scalar_t, kThreads, kReduce.value>
              <<<blocks, kThreads, 0, stream>>>(a, out, pl, pc);
          break;
      }
      check_launch("lossext::softmax_focal_loss kernel");
    });
  }
  if (reduce) {
    focal_finalize_kernel<scalar_t><<<1, kFinal, 0, stream>>>(pl, pc, a.rows > 0 ? blocks : 0,
                                                              p.reduction == Reduction::Mean, out);
    check_launch("lossext::softmax_focal_loss finalize kernel");
  }
}

template <class scalar_t>
void focal_backward_t(const FocalProblem& p, const Tensor& go, Tensor& grad, cudaStream_t stream) {
  const auto a = focal_args<scalar_t>(p);
  if (a.rows == 0) return;  // no rows: grad has no elements
  const RowLayout layout = row_layout(p);
  const int blocks = row_grid(layout, a.rows);
  const scalar_t* gop = ptr<const scalar_t>(go);
  Tensor go0;
  const double* go0p = nullptr;
  if (p.reduction != Reduction::None) {
    const bool mean = p.reduction == Reduction::Mean;
    const int cblocks = grid_for(a.rows, kThreads);
    Tensor part = new_tensor({mean ? cblocks : 1}, ScalarType::Double, p.logits);
    if (mean) {
      focal_count_kernel<<<cblocks, kThreads, 0, stream>>>(a.tg, a.rows, a.ignore, ptr<double>(part));
      check_launch("lossext::softmax_focal_loss_backward count kernel");
    }
    go0 = new_tensor({1}, ScalarType::Double, p.logits);
    focal_go_kernel<scalar_t><<<1, kFinal, 0, stream>>>(ptr<const double>(part), mean ? cblocks : 0, mean, gop,
                                                        ptr<double>(go0));
    check_launch("lossext::softmax_focal_loss_backward grad_output kernel");
    go0p = ptr<const double>(go0);
  }
  scalar_t* g = ptr<scalar_t>(grad);
  switch (layout) {
    case RowLayout::Thread:
      focal_backward_thread_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a, gop, go0p, g);
      break;
    case RowLayout::Warp:
      focal_backward_group_kernel<scalar_t, 32><<<blocks, kThreads, 0, stream>>>(a, gop, go0p, g);
      break;
    case RowLayout::Block:
      focal_backward_group_kernel<scalar_t, kThreads><<<blocks, kThreads, 0, stream>>>(a, gop, go0p, g);
      break;
  }
  check_launch("lossext::softmax_focal_loss_backward kernel");
}

}  // namespace

struct DetectionCuda {
  static void box_forward(const BoxProblem& p, Tensor& loss) {
    on_device(p.boxes1, p.op, [&](auto tag, cudaStream_t s) { box_forward_t<decltype(tag)>(p, loss, s); });
  }
  static void box_backward(const BoxProblem& p, const Tensor& go, Tensor& g1, Tensor& g2) {
    on_device(p.boxes1, p.op, [&](auto tag, cudaStream_t s) { box_backward_t<decltype(tag)>(p, go, g1, g2, s); });
  }
  static void softmax_focal_forward(const FocalProblem& p, Tensor& loss) {
    on_device(p.logits, p.op, [&](auto tag, cudaStream_t s) { focal_forward_t<decltype(tag)>(p, loss, s); });
  }
  static void softmax_focal_backward(const FocalProblem& p, const Tensor& go, Tensor& grad) {
    on_device(p.logits, p.op, [&](auto tag, cudaStream_t s) { focal_backward_t<decltype(tag)>(p, go, grad, s); });
  }
};

}  // namespace detection
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::detection::register_detection_kernels<lossext::CudaDevice, lossext::detection::DetectionCuda>(m);
}
