// CPU kernels of the age-estimation family (Device = AgeCpu, see age_ops.h).
//
// - Rows are independent; torch::stable::parallel_for splits rows only. A row's sums run in a
//   fixed order (cpu_detail::lane_sums), so results are bitwise the same for any thread count
//   and every CPU variant.
// - A row is read twice (max; exp into a row buffer), the buffer once (sum_j e_j, sum_j j e_j,
//   sum_j j^2 e_j); the one-pass op (mean_variance_loss_with_grad) reads the buffer once more for
//   the gradient, p_j = e_j / sum, so that the backward is one multiply and no second exp. The
//   exponentials are in the acc type, the moments' sums in float64, where
//   v = E[j^2] - mj^2 loses only ~1e-16 K^2 (in float32 it would cancel: v ~ 1 against mj^2 ~ 1e4).
// - Bin indices enter the math as int32 (K < 2^31, checked): AVX2 has no packed int64 -> float
//   conversion, and an int64 one left the loops scalar (12 ns per element in the backward).
// - Bad bins (the softmax term on, round(y) - start_age outside [0, K)) raise before any row is
//   read.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "../common/cpu_isa.h"
#include "../common/math.h"
#include "age_ops.h"

namespace lossext {
namespace age {
namespace {

constexpr int64_t kWorkPerTask = int64_t(1) << 15;  // elements per parallel task, at least

template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }
template <class T> T* ptr(const std::optional<Tensor>& t) { return t ? static_cast<T*>(t->data_ptr()) : nullptr; }

template <class scalar_t>
scalar_t out_cast(double v) { return static_cast<scalar_t>(static_cast<acc_t<scalar_t>>(v)); }

template <class F>
void parallel_rows(int64_t n, int64_t cols, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(cols, 1));
  torch::stable::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { cpu_detail::with_cpu_isa(f, b, e); });
}

// The age of row i as a double, and its bin (-1: none).
struct Ages {
  const int64_t* ti = nullptr;
  const double* tf = nullptr;
  int64_t start = 0, K = 0;
  explicit Ages(const AgeProblem& p) : start(p.start), K(p.K) {
    if (p.target && p.target_float) tf = ptr<const double>(p.target);
    if (p.target && !p.target_float) ti = ptr<const int64_t>(p.target);
  }
  double y(int64_t i) const { return tf ? tf[i] : (ti ? double(ti[i]) : 0.0); }
  int64_t bin(int64_t i) const { return tf ? bin_of_float(tf[i], start, K) : bin_of_int(ti[i], start, K); }
};

// The softmax term indexes the logits with each row's bin: every one must exist.
void check_bins(const AgeProblem& p) {
  if (!p.include_softmax || !p.target) return;
  const Ages a(p);
  for (int64_t i = 0; i < p.N; ++i) {
    if (a.bin(i) >= 0) continue;
    if (a.tf) {
      LOSSEXT_CHECK(false, p.op, ": argument 'target' has value ", a.tf[i], " at index ", i,
                    ": its bin round(target) - start_age (start_age = ", p.start, ") is outside the bins [0, ", p.K,
                    ") that the softmax term needs (include_softmax=False drops it)");
    }
    LOSSEXT_CHECK(false, p.op, ": argument 'target' has value ", a.ti[i], " at index ", i,
                  ": its bin target - start_age (start_age = ", p.start, ") is outside the bins [0, ", p.K,
                  ") that the softmax term needs (include_softmax=False drops it)");
  }
}

// sum_j e_j, sum_j j e_j and sum_j j^2 e_j in float64 over a row buffer, in 8 fixed lanes (lane l
// takes j = l, l + 8, ...) added by a fixed tree: the order depends on K only, so every CPU
// variant (SSE2: 2 doubles a vector, AVX2: 4, AVX-512: 8) gives the same bits. A short row's cost
// matters here (K ~ 100): cpu_detail::lane_sums' 16 lanes and tile buffer cost ~160 ns a row.
template <class A>
inline void row_moment_sums(const A* __restrict e, int64_t K, double* out) {
  constexpr int L = 8;
  double a0[L] = {}, a1[L] = {}, a2[L] = {};
  int64_t j = 0;
  for (; j + L <= K; j += L) {
    const double base = double(static_cast<int32_t>(j));
#pragma omp simd
    for (int l = 0; l < L; ++l) {
      const double v = double(e[j + l]), jf = base + double(l);
      a0[l] += v;
      a1[l] += v * jf;
      a2[l] += v * (jf * jf);
    }
  }
  for (int l = 0; j + l < K; ++l) {
    const double v = double(e[j + l]), jf = double(static_cast<int32_t>(j) + l);
    a0[l] += v;
    a1[l] += v * jf;
    a2[l] += v * (jf * jf);
  }
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) {
      a0[l] += a0[l + w];
      a1[l] += a1[l + w];
      a2[l] += a2[l + w];
    }
  out[0] = a0[0];
  out[1] = a1[0];
  out[2] = a2[0];
}

// dL/dz of one row (age_math.h dlogit) from its probabilities prob(j) and coefficients; the
// target bin, with its -S, in float64. mj as a pair mh + ml: j - mj = (j - mh) - ml, exact to
// one rounding of A.
template <class scalar_t, class A, class P>
inline void grad_row(const P& prob, const scalar_t* __restrict row, scalar_t* __restrict o, int64_t K,
                     const RowMoments& r, double S, double Am, double B, int64_t bin) {
  const A mh = static_cast<A>(r.mj), ml = static_cast<A>(r.mj - double(mh)), va = static_cast<A>(r.v);
  const A Sa = static_cast<A>(S), Aa = static_cast<A>(Am), Ba = static_cast<A>(B);
#pragma omp simd
  for (int64_t j = 0; j < K; ++j)
    o[j] = static_cast<scalar_t>(dlogit<A>(prob(j), (static_cast<A>(int32_t(j)) - mh) - ml, va, Sa, Aa, Ba));
  if (bin >= 0) {
    const double pb = std::exp(double(static_cast<A>(row[bin])) - r.lse);
    o[bin] = out_cast<scalar_t>(dlogit<double>(pb, double(bin) - r.mj, r.v, S, Am, B) - S);
  }
}

}  // namespace

struct AgeCpu {
  static void moments(const AgeProblem& p, Tensor& stats, Tensor* terms, Tensor* grad) {
    if (terms != nullptr) check_bins(p);
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* z = ptr<const scalar_t>(p.logits);
      double* st = ptr<double>(stats);
      double* tm = terms ? ptr<double>(*terms) : nullptr;
      scalar_t* gout = grad ? ptr<scalar_t>(*grad) : nullptr;  // one pass: terms and target present
      const double unit = row_weight(p);
      const Ages ages(p);
      const int64_t K = p.K, start = p.start;
      const bool soft_on = p.include_softmax;
      parallel_rows(p.N, K, [&](int64_t b, int64_t e) {
        std::vector<A> buffer(K);
        A* __restrict buf = buffer.data();
        for (int64_t i = b; i < e; ++i) {
          const scalar_t* __restrict row = z + i * K;
          A mx = -std::numeric_limits<A>::infinity();
#pragma omp simd reduction(max : mx)
          for (int64_t j = 0; j < K; ++j) {
            const A v = static_cast<A>(row[j]);
            mx = v > mx ? v : mx;  // NaN never wins: it reaches the sums below
          }
#pragma omp simd
          for (int64_t j = 0; j < K; ++j) buf[j] = math::exp_softmax(static_cast<A>(row[j]) - mx);
          // the moments' sums in float64, in one pass over the buffer: v = E[j^2] - mj^2 costs
          // ~1e-16 K^2 there (the exponentials' own float32 rounding is the same either way). The
          // mean's gradient, p_j lambda (m - y) (j - mj), is ill-conditioned in mj: float32 sums
          // (mj off by 2e-5 at mj ~ 80) cost 4e-4 in a gradient of 1.6, torch's float32 composite 8e-5.
          double s[3];
          row_moment_sums(buf, K, s);
          const double sum = s[0];
          const double mj = s[1] / sum;
          const double var = s[2] / sum - mj * mj;
          RowMoments r{double(mx) + std::log(sum), mj, var > 0.0 ? var : 0.0};  // rounding: -1e-13 for one bin
          st[3 * i] = r.lse;
          st[3 * i + 1] = r.mj;
          st[3 * i + 2] = r.v;
          if (tm != nullptr) {
            const int64_t bin = soft_on ? ages.bin(i) : int64_t(-1);
            const double zb = bin >= 0 ? double(static_cast<A>(row[bin])) : 0.0;
            row_terms(r, ages.y(i), start, soft_on, bin, zb, tm[3 * i], tm[3 * i + 1], tm[3 * i + 2]);
            if (gout != nullptr) {  // the total's gradient from the buffer: p_j = e_j / sum, no second exp
              double S = 0.0, Am = 0.0, B = 0.0, dy = 0.0;
              row_coefs(r, ages.y(i), start, soft_on, p.lambda_mean, p.lambda_var, unit, 0.0, 0.0, 0.0, S, Am, B, dy);
              const A inv = static_cast<A>(1.0 / sum);
              grad_row<scalar_t, A>([&](int64_t j) { return buf[j] * inv; }, row, gout + i * K, K, r, S, Am, B, bin);
            }
          }
        }
      });
    });
  }

  static void finalize(const AgeProblem& p, const Tensor& terms, Tensor* out[4]) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      const double* tm = ptr<const double>(terms);
      scalar_t* o[4] = {ptr<scalar_t>(*out[0]), ptr<scalar_t>(*out[1]), ptr<scalar_t>(*out[2]), ptr<scalar_t>(*out[3])};
      double sum[4] = {0.0, 0.0, 0.0, 0.0};
      for (int64_t i = 0; i < p.N; ++i) {  // in row order: deterministic
        const double* t = tm + 3 * i;
        const double v[4] = {t[0] + p.lambda_mean * t[1] + p.lambda_var * t[2], t[0], t[1], t[2]};
        for (int k = 0; k < 4; ++k) {
          if (p.reduction == Reduction::None) o[k][i] = out_cast<scalar_t>(v[k]);
          sum[k] += v[k];
        }
      }
      if (p.reduction == Reduction::None) return;
      const double div = p.reduction == Reduction::Mean ? double(p.N) : 1.0;  // no rows: 0 / 0 = NaN
      for (int k = 0; k < 4; ++k) o[k][0] = out_cast<scalar_t>(sum[k] / div);
    });
  }

  static void moments_out(const AgeProblem& p, const Tensor& stats, Tensor& mean, Tensor& var) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      const double* st = ptr<const double>(stats);
      scalar_t* m = ptr<scalar_t>(mean);
      scalar_t* v = ptr<scalar_t>(var);
      for (int64_t i = 0; i < p.N; ++i) {
        m[i] = out_cast<scalar_t>(double(p.start) + st[3 * i + 1]);
        v[i] = out_cast<scalar_t>(st[3 * i + 2]);
      }
    });
  }

  static void backward(const AgeProblem& p, const AgeGrads& g, const Tensor& stats, Tensor& grad, Tensor* grad_target) {
    check_bins(p);
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* z = ptr<const scalar_t>(p.logits);
      const double* st = ptr<const double>(stats);
      scalar_t* out = ptr<scalar_t>(grad);
      double* gt_out = grad_target ? ptr<double>(*grad_target) : nullptr;
      const scalar_t* gp[4] = {ptr<const scalar_t>(g.total), ptr<const scalar_t>(g.soft), ptr<const scalar_t>(g.mean),
                               ptr<const scalar_t>(g.var)};
      const bool per_row = p.reduction == Reduction::None;
      const double inv = row_weight(p);
      const Ages ages(p);
      const int64_t K = p.K, start = p.start;
      parallel_rows(p.N, K, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          double gv[4];
          for (int k = 0; k < 4; ++k) gv[k] = gp[k] ? double(static_cast<A>(gp[k][per_row ? i : 0])) * inv : 0.0;
          const RowMoments r{st[3 * i], st[3 * i + 1], st[3 * i + 2]};
          double S = 0.0, Am = gv[2], B = gv[3], dy = 0.0;  // age_from_logits: dL/dm, dL/dv
          if (p.target) row_coefs(r, ages.y(i), start, p.include_softmax, p.lambda_mean, p.lambda_var, gv[0], gv[1],
                                  gv[2], gv[3], S, Am, B, dy);
          const int64_t bin = (p.target && p.include_softmax) ? ages.bin(i) : int64_t(-1);
          const scalar_t* __restrict row = z + i * K;
          // lse as a pair Lh + Ll in A: z - lse = (z - Lh) - Ll
          const A Lh = static_cast<A>(r.lse), Ll = static_cast<A>(r.lse - double(Lh));
          grad_row<scalar_t, A>([&](int64_t j) { return math::exp_softmax((static_cast<A>(row[j]) - Lh) - Ll); }, row,
                                out + i * K, K, r, S, Am, B, bin);
          if (gt_out) gt_out[i] = dy;
        }
      });
    });
  }
};

}  // namespace age
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::age::register_age_kernels<lossext::age::AgeCpu>(m);
}
