// Scalar math of the age-estimation family, shared by the CPU and CUDA kernels.
//
// Mean-Variance loss (Pan, Han, Shan, Chen, "Mean-Variance Loss for Deep Age Estimation from a
// Face", CVPR 2018). A row of logits z_j over K age bins, bin j standing for the age
// a_j = start_age + j, and p = softmax(z):
//   m = sum_j a_j p_j                      (Eq. 2, the estimate; m - start_age = sum_j j p_j)
//   v = sum_j p_j (a_j - m)^2              (Eq. 4)
//   L_m = (m - y)^2 / 2                    (Eq. 3, the mean loss)
//   L_v = v                                (Eq. 4, the variance loss)
//   L_s = lse(z) - z_b, b = round(y) - start_age   (the softmax loss, cross-entropy, Eq. 5)
//   L = L_s + lambda_mean L_m + lambda_var L_v     (Eq. 5)
// Gradients (dm/dz_j = p_j (a_j - m), dv/dz_j = p_j ((a_j - m)^2 - v); the term of dv through
// m vanishes since sum_j p_j (a_j - m) = 0):
//   dL/dz_j = S (p_j - [j = b]) + p_j (A (j - mj) + B ((j - mj)^2 - v))
// with per-row coefficients S (the softmax term's weight), A = c_m (m - y) (c_m the mean term's
// weight) and B (the variance term's), mj = m - start_age; dL/dy = -c_m (m - y).
// age_from_logits' backward is the same with S = 0, A = dL/dm, B = dL/dv.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../common/config.h"

namespace lossext {
namespace age {

// |start_age| bound: ages, start_age + K and y - start_age stay exact in float64 and int64.
constexpr double kMaxStartAge = 9007199254740992.0;  // 2^53

// The bin of an integer age y: y - start in [0, K), else -1 (no overflow: |start| <= 2^53).
LOSSEXT_HD int64_t bin_of_int(int64_t y, int64_t start, int64_t K) {
  return (y >= start && y - start < K) ? y - start : int64_t(-1);
}

// The bin of a floating age y: round(y) (half to even, as torch.round) - start in [0, K), else
// -1 (NaN and +-inf included).
LOSSEXT_HD int64_t bin_of_float(double y, int64_t start, int64_t K) {
  const double r = std::nearbyint(y) - double(start);  // exact: |y| < 2^53 where it matters
  return (r >= 0.0 && r < double(K)) ? static_cast<int64_t>(r) : int64_t(-1);
}

// A row's statistics: lse, mj = m - start_age, v (float64), from the logits' max mx and the
// sums s = sum_j e_j, s1 = sum_j j e_j, s2 = sum_j (j - mj)^2 e_j with e_j = exp(z_j - mx).
struct RowMoments {
  double lse, mj, v;
};

// The per-row terms (L_s, L_m, L_v) of the loss; soft is NaN for a row whose bin is missing
// (b < 0) when the softmax term is on (CUDA: a bad bin is never used as an index).
LOSSEXT_HD void row_terms(const RowMoments& r, double y, int64_t start, bool include_softmax, int64_t b,
                          double z_b, double& soft, double& mean, double& var) {
  const double d = (double(start) + r.mj) - y;
  soft = include_softmax ? (b >= 0 ? r.lse - z_b : std::numeric_limits<double>::quiet_NaN()) : 0.0;
  mean = 0.5 * d * d;
  var = r.v;
}

// The backward's per-row coefficients from the gradients of the reduced (or per-row) outputs
// gt (total), gs (softmax term), gm (mean term), gv (variance term), each already divided by N
// for 'mean': S, A, B of the header formula, and dL/dy.
LOSSEXT_HD void row_coefs(const RowMoments& r, double y, int64_t start, bool include_softmax, double lambda_mean,
                          double lambda_var, double gt, double gs, double gm, double gv, double& S, double& A,
                          double& B, double& dy) {
  const double cm = lambda_mean * gt + gm;
  const double d = (double(start) + r.mj) - y;
  S = include_softmax ? gt + gs : 0.0;
  A = cm * d;
  B = lambda_var * gt + gv;
  dy = -cm * d;
}

// dL/dz_j for p_j and the row's coefficients, without the target indicator -S [j = b] (the
// caller subtracts it at the bin). dj = j - mj.
template <class T>
LOSSEXT_HD T dlogit(T p, T dj, T v, T S, T A, T B) {
  return p * (S + A * dj + B * (dj * dj - v));
}

}  // namespace age
}  // namespace lossext
