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
    const T inner = w * math::log1p(a * inv_eps);
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
//   AWing = w ln(1 + z) + [D >= theta] A (D - theta),   A = dAWing/dD = w p z / (q eps (1 + z)).
// so each element costs one log, one exp and one log1p.
template <class T>
struct AdaptiveWingOp {
  T alpha, omega, inv_eps, theta;

  static AdaptiveWingOp make(double alpha, double omega, double epsilon, double theta) {
    return {T(alpha), T(omega), T(1.0 / epsilon), T(theta)};
  }

  struct Terms {
    T D, p, q, lnq, z, slope;
    bool outer;
  };
  LOSSEXT_HD Terms terms(T x, T y) const {
    Terms t;
    t.D = std::abs(y - x);
    t.p = alpha - y;
    t.outer = !(t.D < theta);  // NaN goes to the outer branch and propagates
    t.q = (t.outer ? theta : t.D) * inv_eps;
    t.lnq = math::log(t.q);
    t.z = math::exp(t.p * t.lnq);
    // slope = w p q^(p-1) / (eps (1 + q^p)); at D = 0 the subgradient 0 is used (see dinput).
    const T qs = t.q > T(0) ? t.q : T(1);
    t.slope = omega * t.p * (t.z / qs) * inv_eps / (T(1) + t.z);
    return t;
  }
  LOSSEXT_HD T value(T x, T y) const {
    const Terms t = terms(x, y);
    const T base = omega * math::log1p(t.z);
    return t.outer ? base + t.slope * (t.D - theta) : base;
  }
  // dAWing/dx = sign(x - y) * slope; 0 where x == y.
  LOSSEXT_HD T dinput(T x, T y) const {
    const Terms t = terms(x, y);
    const T g = math::sign(x - y) * t.slope;
    return t.D == T(0) ? T(0) : g;
  }
  // dAWing/dy = -sign(x - y) * slope - dAWing/dp  (p = alpha - y), with
  //   dAWing/dp = w z ln q / (1 + z) + [outer] (D - theta) slope/p (1 + p ln q / (1 + z)).
  LOSSEXT_HD T dtarget(T x, T y) const {
    const Terms t = terms(x, y);
    const T zlnq = t.z == T(0) ? T(0) : t.z * t.lnq;  // limit z ln z -> 0 at q = 0
    const T inv1z = T(1) / (T(1) + t.z);
    T dp = omega * zlnq * inv1z;
    // slope / p without dividing by p: w q^(p-1) / (eps (1 + z))
    const T qs = t.q > T(0) ? t.q : T(1);
    const T slope_over_p = omega * (t.z / qs) * inv_eps * inv1z;
    const T extra = (t.D - theta) * slope_over_p * (T(1) + t.p * t.lnq * inv1z);
    dp = t.outer ? dp + extra : dp;
    const T gx = t.D == T(0) ? T(0) : math::sign(x - y) * t.slope;
    return -gx - dp;
  }
};

}  // namespace landmark
}  // namespace lossext
