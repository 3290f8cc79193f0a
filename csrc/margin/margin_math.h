// Scalar math of the margin-softmax family, shared by the CPU and CUDA kernels.
//
// Target logit (Deng et al., ArcFace, CVPR 2019, Eq. 4, the combined margin):
//   z_y = s * ((lambda * cos + psi(theta)) / (1 + lambda) - m3),   theta = acos(clamp(cos, -1, 1)),
// other logits z_j = s * cos_j. psi is chosen to stay monotone in theta:
//   m1 = 1, m2 = 0  : psi = cos                                   (plain softmax / CosFace, Wang et al. Eq. 4)
//   m1 = 1, m2 > 0  : psi = cos(theta + m2) where cos > cos(pi - m2), else cos - sin(pi - m2) * m2
//                     (ArcFace, insightface's rule); easy_margin: cos(theta + m2) where cos > 0, else cos
//   otherwise       : psi = (-1)^k cos(m1 theta + m2) - 2k, k = floor((m1 theta + m2) / pi)
//                     (A-Softmax, Liu et al., SphereFace, CVPR 2017, Eq. 7, for any m1 and m2;
//                     integer m1 with m2 = 0 uses the Chebyshev polynomials: exact at cos = +-1)
// lambda anneals SphereFace (its Sec. 3.4); lambda = 0 gives the plain formula.
// d psi / d cos has sin(theta) in the denominator: it is floored at kSinFloor so that the
// gradient at cos = +-1 is finite (the true one-sided slope of ArcFace there is infinite).
// Outside [-1, 1] the angle does not move, so the angular part has zero slope (as clamp).
#pragma once

#include <cmath>
#include <limits>

#include "../common/config.h"

namespace lossext {
namespace margin {

enum class MarginKind : int { Plain = 0, Arc = 1, ArcEasy = 2, Psi = 3, PsiChebyshev = 4 };

template <class T>
struct TargetMargin {
  MarginKind kind;
  T m1, m2, m3, lambda;
  T cos_m2, sin_m2, th, mm;  // ArcFace constants: th = cos(pi - m2), mm = sin(pi - m2) * m2
  int m_int;                 // PsiChebyshev: the integer m1
  // lambda in device memory (CUDA kernels; read by apply, not copied to the host), or nullptr:
  // use lambda. A value there that is not finite and >= 0 gives a NaN target logit.
  const double* lambda_p;

  static TargetMargin make(double m1, double m2, double m3, double lambda, bool easy_margin,
                           const double* lambda_p = nullptr) {
    TargetMargin t;
    t.lambda_p = lambda_p;
    const double pi = 3.14159265358979323846;
    t.m1 = T(m1); t.m2 = T(m2); t.m3 = T(m3); t.lambda = T(lambda);
    t.cos_m2 = T(std::cos(m2)); t.sin_m2 = T(std::sin(m2));
    t.th = T(std::cos(pi - m2)); t.mm = T(std::sin(pi - m2) * m2);
    t.m_int = 0;
    if (m1 == 1.0) {
      t.kind = m2 == 0.0 ? MarginKind::Plain : (easy_margin ? MarginKind::ArcEasy : MarginKind::Arc);
    } else if (m2 == 0.0 && m1 == std::floor(m1) && m1 >= 2.0 && m1 <= 64.0) {
      t.kind = MarginKind::PsiChebyshev;
      t.m_int = static_cast<int>(m1);
    } else {
      t.kind = MarginKind::Psi;
    }
    return t;
  }

  // psi(cos) and d psi / d cos, before annealing and m3.
  LOSSEXT_HD void psi(T c, T& f, T& df) const {
    const T kSinFloor = T(1e-4);
    const T pi = T(3.14159265358979323846);
    const T cc = c < T(-1) ? T(-1) : (c > T(1) ? T(1) : c);  // NaN stays NaN
    const T inside = (c >= T(-1) && c <= T(1)) ? T(1) : T(0);
    if (kind == MarginKind::Plain) {
      f = c;
      df = T(1);
      return;
    }
    const T sin_t = std::sqrt(T(1) - cc * cc > T(0) ? T(1) - cc * cc : T(0));
    const T sin_floor = sin_t > kSinFloor ? sin_t : kSinFloor;
    if (kind == MarginKind::Arc || kind == MarginKind::ArcEasy) {
      const T phi = cc * cos_m2 - sin_t * sin_m2;            // cos(theta + m2)
      const T dphi = (cos_m2 + sin_m2 * cc / sin_floor) * inside;
      const bool on = kind == MarginKind::Arc ? (c > th) : (c > T(0));
      f = on ? phi : (kind == MarginKind::Arc ? c - mm : c);
      df = on ? dphi : T(1);
      if (c != c) f = c;
      return;
    }
    const T theta = std::acos(cc);
    if (kind == MarginKind::PsiChebyshev) {
      // T_m(cc) and U_{m-1}(cc) by their recurrences; cos(m theta) = T_m, sin(m theta)/sin(theta) = U_{m-1}
      T t0 = T(1), t1 = cc, u0 = T(1), u1 = T(2) * cc;
      for (int n = 1; n < m_int; ++n) {
        const T t2 = T(2) * cc * t1 - t0;
        t0 = t1; t1 = t2;
      }
      for (int n = 1; n < m_int - 1; ++n) {
        const T u2 = T(2) * cc * u1 - u0;
        u0 = u1; u1 = u2;
      }
      const T u = m_int == 1 ? T(1) : u1;
      T k = std::floor(T(m_int) * theta / pi);
      k = k < T(0) ? T(0) : (k > T(m_int - 1) ? T(m_int - 1) : k);
      const T sign = std::fmod(k, T(2)) == T(0) ? T(1) : T(-1);
      f = sign * t1 - T(2) * k;
      df = sign * T(m_int) * u * inside;
      if (c != c) f = c;
      return;
    }
    const T phi = m1 * theta + m2;
    T k = std::floor(phi / pi);
    k = k < T(0) ? T(0) : k;
    const T sign = std::fmod(k, T(2)) == T(0) ? T(1) : T(-1);
    f = sign * std::cos(phi) - T(2) * k;
    df = sign * m1 * std::sin(phi) / sin_floor * inside;
    if (c != c) f = c;
  }

  // The target's cosine after the margin, f, and d f / d cos.
  LOSSEXT_HD void apply(T c, T& f, T& df) const {
    T p, dp;
    psi(c, p, dp);
    T lam = lambda;
    if (lambda_p != nullptr) {
      const double v = *lambda_p;
      lam = (v >= 0.0 && v <= 1.7976931348623157e308) ? T(v) : std::numeric_limits<T>::quiet_NaN();
    }
    const T inv = T(1) / (T(1) + lam);
    // lam = 0 (no annealing) leaves psi alone: 0 * c would make a cosine of -inf (a target logit
    // of -inf, whose cross-entropy is +inf as in F.cross_entropy) NaN
    f = (lam == T(0) ? p : (lam * c + p) * inv) - m3;
    df = (lam + dp) * inv;
  }
};

// d L / d cos of the target column from g * d L / d z_y and df = d f / d cos: 0 where df is 0 (a
// cosine outside [-1, 1], whose angle does not move). As clamp's backward, a select: an upstream
// NaN (the 0 / 0 of a 'mean' whose class weights sum to 0) stays out, as in the composite.
LOSSEXT_HD double target_cos_grad(double g_dz, double df) { return df == 0.0 ? 0.0 : g_dz * df; }

// The cross-entropy with label smoothing eps and class weights w (as
// torch.nn.functional.cross_entropy): per valid row with target y and logits z,
//   L = (1 - eps) w_y (lse - z_y) + eps / C * sum_j w_j (lse - z_j)
//     = a lse - keep w_y z_y - spread * sum_j w_j z_j,   keep = 1 - eps, spread = eps / C,
//   dL/dz_j = a p_j - keep w_y [j = y] - spread w_j,    a = keep w_y + spread W, W = sum_j w_j.
// 'mean' divides the sum over rows by sum of w_y over the valid rows.

// A row's loss from its forward statistics (0 for an ignored row is the caller's), with
// wz = sum_j w_j z_j (needed only when label smoothing is on).
LOSSEXT_HD double row_loss(double keep, double spread, double wsum, double w_y, double lse,
                           double z_y, double wz) {
  return (keep * w_y + spread * wsum) * lse - keep * w_y * z_y - (spread != 0.0 ? spread * wz : 0.0);
}

// dL/dz_y of the target column (the formula above at j = y), in float64.
LOSSEXT_HD double target_dlogit(double a, double keep, double spread, double w_y, double z_y, double lse) {
  return a * std::exp(z_y - lse) - (keep + spread) * w_y;
}

// Logits that overflow: a row with a +inf logit has a NaN loss and gradient, on every device and
// dtype, as torch's cross_entropy (log_softmax) gives on such logits. The other logits are formed
// in the accumulation type A (float32 for half and float32 inputs), where scale * cos may round to
// +inf; the target's margin logit is formed in float64, so it goes through acc_logit to overflow
// where A would. row_lse then makes lse NaN for a running max of +inf (it would otherwise be
// inf + log(0) or inf + log(s), depending on the summation order: NaN on CUDA, inf on the CPU).
template <class A>
LOSSEXT_HD double acc_logit(double z) {
  const A za = static_cast<A>(z);
  return (za == std::numeric_limits<A>::infinity() || za == -std::numeric_limits<A>::infinity()) ? double(za) : z;
}

// lse of a row from its online state (m, s); NaN when the max is +inf (see above).
LOSSEXT_HD double row_lse(double m, double s) {
  return m == std::numeric_limits<double>::infinity() ? std::numeric_limits<double>::quiet_NaN() : m + std::log(s);
}

// Adds one logit z to an online softmax state: m the running max, s = sum_j exp(z_j - m)
// (Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018). NaN propagates.
LOSSEXT_HD void online_add(double z, double& m, double& s) {
  const double m_new = m < z ? z : m;
  s = (s == 0.0 ? 0.0 : s * std::exp(m - m_new)) + std::exp(z - m_new);
  m = (z != z) ? z : m_new;
  if (z != z) s = z;
}

// The fused op's target cosine (normalize: the chunk product of normalized rows) or plain logit
// before scale P + b, in float64, from its chunk product P_yt.
template <class A, class S>
LOSSEXT_HD double fused_target_cos(const S* row, int64_t t, const S* bias) {
  const double p = double(static_cast<A>(row[t]));
  return p + (bias != nullptr ? double(static_cast<A>(bias[t])) : 0.0);
}

}  // namespace margin
}  // namespace lossext
