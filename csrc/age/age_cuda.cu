// CUDA kernels of the age-estimation family (Device = AgeCuda, see age_ops.h).
//
// - One warp per row (age rows are short: K ~ 100 bins), kWarps rows per block, grid-stride over
//   rows beyond 65535 blocks; 64-bit indices. Each lane folds the columns j = lane, lane + 32,
//   ... in the acc type; the lanes are combined in double by an xor butterfly (every lane gets
//   the same sum: each step adds a pair in both orders, and addition commutes exactly). The
//   order depends on K only: deterministic, no atomics.
// - The one-pass op (mean_variance_loss_with_grad) adds a fourth pass over the row, still in
//   cache, for the total's gradient (grad_row, as the backward kernel).
// - Three passes over the row as on CPU (max; sum_j e_j and sum_j j e_j; sum_j (j - mj)^2 e_j,
//   the exponentials recomputed), so the variance is taken about the row's own mean; the
//   exponentials in the acc type, the moments' sums in float64 (the lanes' too).
// - Reductions over rows: one block of kFinalThreads, each thread a fixed stride of rows in
//   double, then a fixed-order block sum (cuda_detail::block_sum).
// - Bad bins (the softmax term on, round(y) - start_age outside [0, K)) are not validated here
//   (that would need a host sync) and never index: the row's softmax term is NaN (so is a reduced
//   loss), and its gradient row and dL/dy are NaN.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cuda.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../common/math.h"
#include "../common/pointwise_cuda.cuh"
#include "age_ops.h"

namespace lossext {
namespace age {
namespace {

using cuda_detail::block_sum;
using cuda_detail::check_launch;
using cuda_detail::current_stream;

constexpr int kWarps = 8;            // rows per block
constexpr int64_t kMaxGrid = 65535;  // grid-stride beyond this
constexpr int kFinal = cuda_detail::kFinalThreads;

template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }
template <class T> T* ptr(const std::optional<Tensor>& t) { return t ? static_cast<T*>(t->data_ptr()) : nullptr; }

inline int row_grid(int64_t rows) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((rows + kWarps - 1) / kWarps, kMaxGrid)));
}
inline int flat_grid(int64_t n) {
  const int64_t t = cuda_detail::kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + t - 1) / t, kMaxGrid)));
}

template <class scalar_t>
__device__ __forceinline__ scalar_t out_cast(double v) {
  return static_cast<scalar_t>(static_cast<acc_t<scalar_t>>(v));
}

template <class T>
__device__ __forceinline__ T warp_max_all(T v) {
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;  // NaN never wins (as the CPU's max)
  }
  return v;
}

__device__ __forceinline__ double warp_sum_all(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The age of row i and its bin (-1: none).
struct Ages {
  const int64_t* ti;
  const double* tf;
  int64_t start, K;
  __device__ __forceinline__ double y(int64_t i) const { return tf ? tf[i] : (ti ? double(ti[i]) : 0.0); }
  __device__ __forceinline__ int64_t bin(int64_t i) const {
    return tf ? bin_of_float(tf[i], start, K) : (ti ? bin_of_int(ti[i], start, K) : int64_t(-1));
  }
};

// dL/dz of row i (age_math.h dlogit) by the warp; the target bin, with its -S, in float64; a bad
// bin (bad: the softmax term on, no bin) is never used as an index: the row is NaN.
template <class scalar_t>
__device__ __forceinline__ void grad_row(const scalar_t* row, scalar_t* o, int64_t K, int lane, const RowMoments& r,
                                         double S, double Am, double B, int64_t bin, bool bad) {
  using A = acc_t<scalar_t>;
  if (bad) {
    for (int64_t j = lane; j < K; j += 32) o[j] = out_cast<scalar_t>(std::numeric_limits<double>::quiet_NaN());
    return;
  }
  const A Lh = static_cast<A>(r.lse), Ll = static_cast<A>(r.lse - double(Lh));
  const A mh = static_cast<A>(r.mj), ml = static_cast<A>(r.mj - double(mh)), va = static_cast<A>(r.v);
  const A Sa = static_cast<A>(S), Aa = static_cast<A>(Am), Ba = static_cast<A>(B);
  for (int64_t j = lane; j < K; j += 32) {
    if (j == bin) {
      const double pb = ::exp(double(static_cast<A>(row[j])) - r.lse);
      o[j] = out_cast<scalar_t>(dlogit<double>(pb, double(j) - r.mj, r.v, S, Am, B) - S);
    } else {
      const A pj = math::exp_softmax((static_cast<A>(row[j]) - Lh) - Ll);
      o[j] = static_cast<scalar_t>(dlogit<A>(pj, (static_cast<A>(j) - mh) - ml, va, Sa, Aa, Ba));
    }
  }
}

// The one-pass path's gradient: the total's, for a unit upstream gradient (unit = 1/N for 'mean').
struct OnePass {
  void* grad;  // [N, K] in scalar_t, or null
  double unit, lm, lv;
};

template <class scalar_t>
__global__ void moments_kernel(const scalar_t* __restrict z, int64_t N, int64_t K, Ages ages, bool soft_on,
                               double* __restrict stats, double* __restrict terms, OnePass one) {
  using A = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = threadIdx.x >> 5;
  for (int64_t i = int64_t(blockIdx.x) * kWarps + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    const scalar_t* row = z + i * K;
    A mx = -std::numeric_limits<A>::infinity();
    for (int64_t j = lane; j < K; j += 32) {
      const A v = static_cast<A>(row[j]);
      mx = v > mx ? v : mx;
    }
    mx = warp_max_all(mx);
    double s = 0.0, s1 = 0.0;  // the moments' sums in float64, as on CPU
    for (int64_t j = lane; j < K; j += 32) {
      const double e = double(math::exp_softmax(static_cast<A>(row[j]) - mx));
      s += e;
      s1 += e * double(j);
    }
    const double sum = warp_sum_all(s);
    const double mj = warp_sum_all(s1) / sum;
    double s2 = 0.0;
    for (int64_t j = lane; j < K; j += 32) {
      const double d = double(j) - mj;
      s2 += double(math::exp_softmax(static_cast<A>(row[j]) - mx)) * d * d;
    }
    const double v = warp_sum_all(s2) / sum;
    const RowMoments r{double(mx) + ::log(sum), mj, v};
    if (one.grad != nullptr) {  // the row is in cache: a fourth pass writes the total's gradient
      double S = 0.0, Am = 0.0, B = 0.0, dy = 0.0;
      row_coefs(r, ages.y(i), ages.start, soft_on, one.lm, one.lv, one.unit, 0.0, 0.0, 0.0, S, Am, B, dy);
      const int64_t bin = soft_on ? ages.bin(i) : int64_t(-1);
      grad_row(row, static_cast<scalar_t*>(one.grad) + i * K, K, lane, r, S, Am, B, bin, soft_on && bin < 0);
    }
    if (lane == 0) {
      stats[3 * i] = r.lse;
      stats[3 * i + 1] = r.mj;
      stats[3 * i + 2] = r.v;
      if (terms != nullptr) {
        const int64_t bin = soft_on ? ages.bin(i) : int64_t(-1);
        const double zb = bin >= 0 ? double(static_cast<A>(row[bin])) : 0.0;
        row_terms(r, ages.y(i), ages.start, soft_on, bin, zb, terms[3 * i], terms[3 * i + 1], terms[3 * i + 2]);
      }
    }
  }
}

// Per-row outputs (reduction 'none').
template <class scalar_t>
__global__ void rows_out_kernel(const double* __restrict terms, int64_t N, double lm, double lv, scalar_t* o0,
                                scalar_t* o1, scalar_t* o2, scalar_t* o3) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    const double* t = terms + 3 * i;
    o0[i] = out_cast<scalar_t>(t[0] + lm * t[1] + lv * t[2]);
    o1[i] = out_cast<scalar_t>(t[0]);
    o2[i] = out_cast<scalar_t>(t[1]);
    o3[i] = out_cast<scalar_t>(t[2]);
  }
}

// Reduced outputs: one block; thread k sums rows k, k + kFinal, ... then a fixed-order block sum.
template <class scalar_t>
__global__ void reduce_kernel(const double* __restrict terms, int64_t N, double lm, double lv, double div,
                              scalar_t* o0, scalar_t* o1, scalar_t* o2, scalar_t* o3) {
  double a = 0.0, b = 0.0, c = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    a += terms[3 * i];
    b += terms[3 * i + 1];
    c += terms[3 * i + 2];
  }
  a = block_sum(a);
  b = block_sum(b);
  c = block_sum(c);
  if (threadIdx.x == 0) {
    o0[0] = out_cast<scalar_t>((a + lm * b + lv * c) / div);
    o1[0] = out_cast<scalar_t>(a / div);
    o2[0] = out_cast<scalar_t>(b / div);
    o3[0] = out_cast<scalar_t>(c / div);
  }
}

template <class scalar_t>
__global__ void moments_out_kernel(const double* __restrict stats, int64_t N, int64_t start, scalar_t* m, scalar_t* v) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    m[i] = out_cast<scalar_t>(double(start) + stats[3 * i + 1]);
    v[i] = out_cast<scalar_t>(stats[3 * i + 2]);
  }
}

struct GradIn {
  const void* g[4];
  bool per_row;
  double inv;
};

template <class scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict z, int64_t N, int64_t K, Ages ages, bool has_target,
                                bool soft_on, double lm, double lv, GradIn gin, const double* __restrict stats,
                                scalar_t* __restrict out, double* __restrict grad_target) {
  using A = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = threadIdx.x >> 5;
  for (int64_t i = int64_t(blockIdx.x) * kWarps + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    double gv[4];
    for (int k = 0; k < 4; ++k) {
      const scalar_t* gk = static_cast<const scalar_t*>(gin.g[k]);
      gv[k] = gk ? double(static_cast<A>(gk[gin.per_row ? i : 0])) * gin.inv : 0.0;
    }
    const RowMoments r{stats[3 * i], stats[3 * i + 1], stats[3 * i + 2]};
    double S = 0.0, Am = gv[2], B = gv[3], dy = 0.0;  // age_from_logits: dL/dm, dL/dv
    if (has_target) row_coefs(r, ages.y(i), ages.start, soft_on, lm, lv, gv[0], gv[1], gv[2], gv[3], S, Am, B, dy);
    const int64_t bin = (has_target && soft_on) ? ages.bin(i) : int64_t(-1);
    const bool bad = has_target && soft_on && bin < 0;
    grad_row(z + i * K, out + i * K, K, lane, r, S, Am, B, bin, bad);
    if (lane == 0 && grad_target) grad_target[i] = bad ? std::numeric_limits<double>::quiet_NaN() : dy;
  }
}

template <class F>
void on_device(const AgeProblem& p, F&& f) {
  const int32_t dev = p.logits.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(dev);
  cudaStream_t stream = current_stream(dev);
  dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) { f(tag, stream); });
}

Ages ages_of(const AgeProblem& p) {
  Ages a{nullptr, nullptr, p.start, p.K};
  if (p.target && p.target_float) a.tf = ptr<const double>(p.target);
  if (p.target && !p.target_float) a.ti = ptr<const int64_t>(p.target);
  return a;
}

}  // namespace

struct AgeCuda {
  static void moments(const AgeProblem& p, Tensor& stats, Tensor* terms, Tensor* grad) {
    if (p.N == 0) return;
    on_device(p, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      moments_kernel<scalar_t><<<row_grid(p.N), kWarps * 32, 0, stream>>>(
          ptr<const scalar_t>(p.logits), p.N, p.K, ages_of(p), p.include_softmax, ptr<double>(stats),
          terms ? ptr<double>(*terms) : nullptr,
          OnePass{grad ? grad->data_ptr() : nullptr, row_weight(p), p.lambda_mean, p.lambda_var});
      check_launch("lossext::age moments kernel");
    });
  }

  static void finalize(const AgeProblem& p, const Tensor& terms, Tensor* out[4]) {
    on_device(p, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      scalar_t* o[4] = {ptr<scalar_t>(*out[0]), ptr<scalar_t>(*out[1]), ptr<scalar_t>(*out[2]), ptr<scalar_t>(*out[3])};
      if (p.reduction == Reduction::None) {
        if (p.N == 0) return;
        rows_out_kernel<scalar_t><<<flat_grid(p.N), cuda_detail::kThreads, 0, stream>>>(
            ptr<const double>(terms), p.N, p.lambda_mean, p.lambda_var, o[0], o[1], o[2], o[3]);
        check_launch("lossext::mean_variance_loss rows kernel");
        return;
      }
      const double div = p.reduction == Reduction::Mean ? double(p.N) : 1.0;  // no rows: 0 / 0 = NaN
      reduce_kernel<scalar_t><<<1, kFinal, 0, stream>>>(ptr<const double>(terms), p.N, p.lambda_mean, p.lambda_var,
                                                         div, o[0], o[1], o[2], o[3]);
      check_launch("lossext::mean_variance_loss reduce kernel");
    });
  }

  static void moments_out(const AgeProblem& p, const Tensor& stats, Tensor& mean, Tensor& var) {
    if (p.N == 0) return;
    on_device(p, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      moments_out_kernel<scalar_t><<<flat_grid(p.N), cuda_detail::kThreads, 0, stream>>>(
          ptr<const double>(stats), p.N, p.start, ptr<scalar_t>(mean), ptr<scalar_t>(var));
      check_launch("lossext::age_from_logits kernel");
    });
  }

  static void backward(const AgeProblem& p, const AgeGrads& g, const Tensor& stats, Tensor& grad, Tensor* grad_target) {
    if (p.N == 0) return;
    on_device(p, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      GradIn gin{{ptr<const scalar_t>(g.total), ptr<const scalar_t>(g.soft), ptr<const scalar_t>(g.mean),
                  ptr<const scalar_t>(g.var)},
                 p.reduction == Reduction::None, row_weight(p)};
      backward_kernel<scalar_t><<<row_grid(p.N), kWarps * 32, 0, stream>>>(
          ptr<const scalar_t>(p.logits), p.N, p.K, ages_of(p), p.target.has_value(), p.include_softmax,
          p.lambda_mean, p.lambda_var, gin, ptr<const double>(stats), ptr<scalar_t>(grad),
          grad_target ? ptr<double>(*grad_target) : nullptr);
      check_launch("lossext::age backward kernel");
    });
  }
};

}  // namespace age
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::age::register_age_kernels<lossext::age::AgeCuda>(m);
}
