// Per-element math of the landmark-regression losses, shared by the CPU and CUDA kernels.
// x is the prediction, y the target; T is the accumulation type (float or double).
#pragma once

#include <cmath>

#include "../common/config.h"
#include "../common/math.h"

namespace lossext {
namespace landmark {

// Wing loss, Feng et al., CVPR 2018, Eq. (5), with d = x - y:
//   wing(d) = w ln(1 + |d|/eps)   if |d| < w
//           = |d| - C             otherwise,   C = w - w ln(1 + w/eps).
template <class T>
struct WingOp {
  T w, inv_eps, C;

  static WingOp make(double width, double curvature) {
    return {T(width), T(1.0 / curvature), T(width - width * std::log1p(width / curvature))};
  }
  LOSSEXT_HD T value(T x, T y) const {
    const T a = std::abs(x - y);
    const T inner = w * math::log1p_nonneg(a * inv_eps);
    return a < w ? inner : a - C;
  }
  // d wing / dx = sign(d) w / (eps + |d|) inside, sign(d) outside; 0 at d = 0.
  LOSSEXT_HD T dinput(T x, T y) const {
    const T d = x - y;
    const T a = std::abs(d);
    const T slope = a < w ? w * inv_eps / (T(1) + a * inv_eps) : T(1);
    return math::sign(d) * slope;
  }
  LOSSEXT_HD T dtarget(T x, T y) const { return -dinput(x, y); }
};

// Adaptive Wing loss, Wang et al., ICCV 2019, Eq. (6), with D = |y - x| and p = alpha - y:
//   AWing = w ln(1 + (D/eps)^p)   if D < theta
//         = A D - C               otherwise,
//   A = w p (theta/eps)^(p-1) / (eps (1 + (theta/eps)^p)),  C = theta A - w ln(1 + (theta/eps)^p).
// Both branches share one form: with q = min(D, theta)/eps and z = q^p,
//   AWing = w ln(1 + z) + [D >= theta] A (D - theta),   A = dAWing/dD = w p z / (q eps (1 + z)),
// so each element costs one log, one exp and one log1p. z is never formed: with s = p ln q,
//   ln(1 + z) = max(s, 0) + log1p(exp(-|s|)),   z / (1 + z) = sigmoid(s),
// which stays finite when q^p overflows (large alpha, small eps) and is exact at q = 0.
template <class T>
struct AdaptiveWingOp {
  T alpha, omega, inv_eps, theta;

  static AdaptiveWingOp make(double alpha, double omega, double epsilon, double theta) {
    return {T(alpha), T(omega), T(1.0 / epsilon), T(theta)};
  }

  struct Terms {
    T D, p, lnq;  // lnq: ln q, with 0 in place of -inf at q = 0 (only used where multiplied by z)
    T sig;        // z / (1 + z)
    T log1pz;     // ln(1 + z)
    T slope_p;    // slope / p = w z / (q eps (1 + z)); 0 at q = 0 (subgradient, see dinput)
    bool outer;
  };
  LOSSEXT_HD Terms terms(T x, T y) const {
    Terms t;
    t.D = std::abs(y - x);
    t.p = alpha - y;
    t.outer = !(t.D < theta);  // NaN goes to the outer branch and propagates
    const T q = (t.outer ? theta : t.D) * inv_eps;
    const T lnq = math::log(q);
    const T s = t.p == T(0) ? T(0) : t.p * lnq;  // q^0 = 1, also at q = 0 (as torch.pow)
    const T e = math::exp(-std::abs(s));
    const T r = T(1) / (T(1) + e);
    t.sig = s > T(0) ? r : e * r;
    t.log1pz = (s > T(0) ? s : T(0)) + math::log1p_nonneg(e);
    const bool q0 = q == T(0);
    t.lnq = q0 ? T(0) : lnq;
    t.slope_p = q0 ? T(0) : omega * t.sig * inv_eps / q;
    return t;
  }
  LOSSEXT_HD T value(T x, T y) const {
    const Terms t = terms(x, y);
    const T base = omega * t.log1pz;
    return t.outer ? base + t.p * t.slope_p * (t.D - theta) : base;
  }
  // dAWing/dx = sign(x - y) * slope; 0 where x == y.
  LOSSEXT_HD T dinput(T x, T y) const {
    const Terms t = terms(x, y);
    const T g = math::sign(x - y) * t.p * t.slope_p;
    return t.D == T(0) ? T(0) : g;
  }
  // dAWing/dy = -sign(x - y) * slope - dAWing/dp  (p = alpha - y), with
  //   dAWing/dp = w z ln q / (1 + z) + [outer] (D - theta) slope/p (1 + p ln q / (1 + z)).
  LOSSEXT_HD T dtarget(T x, T y) const {
    const Terms t = terms(x, y);
    T dp = omega * t.sig * t.lnq;  // z ln q -> 0 at q = 0
    const T extra = (t.D - theta) * t.slope_p * (T(1) + t.p * t.lnq * (T(1) - t.sig));
    dp = t.outer ? dp + extra : dp;
    const T gx = t.D == T(0) ? T(0) : math::sign(x - y) * t.p * t.slope_p;
    return -gx - dp;
  }
};

}  // namespace landmark
}  // namespace lossext
