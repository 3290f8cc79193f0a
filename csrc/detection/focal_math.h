// Per-element and per-row math of the focal losses (Lin et al., "Focal Loss for Dense Object
// Detection", ICCV 2017), shared by the CPU and CUDA kernels. T is the accumulation type.
#pragma once

#include <cmath>

#include "../common/config.h"
#include "../common/math.h"

namespace lossext {
namespace detection {

// m^g for m >= 0 (or NaN), g >= 0: 0^0 = 1 (as torch.pow), 0^g = 0.
template <class T>
LOSSEXT_HD T pow_nonneg(T m, T g) {
  return m == T(0) ? (g == T(0) ? T(1) : T(0)) : math::exp(g * math::log(m));
}

// Sigmoid focal loss, Eq. (5) with the alpha-balanced form of Sec. 3.2, in torchvision's
// (fvcore's) reading for soft targets y in [0, 1]:
//   p = sigmoid(x),  ce = BCE-with-logits(x, y),  p_t = p y + (1 - p)(1 - y),
//   alpha_t = alpha y + (1 - alpha)(1 - y)   (1 when alpha < 0: the weighting disabled),
//   FL = alpha_t ce (1 - p_t)^gamma.
// 1 - p_t is formed as m = p (1 - y) + sigmoid(-x) y (no cancellation where p -> 1), and
// ce = (1 - y) x + max(-x, 0) + log1p(exp(-|x|)) (torch's stable form), taken branch by branch so
// that x = -inf gives +inf, not inf - inf.
// alpha_t = a0 + a1 y: a0 = 1 - alpha, a1 = 2 alpha - 1 (a0 = 1, a1 = 0 without the weighting).
// Plain factors, not a flag: a run-time bool member keeps GCC from vectorizing the loops.
// kSquare: gamma = 2 (the paper's and torchvision's default), m^2 and 2m without exp and log.
template <class T, bool kSquare = false>
struct SigmoidFocalOp {
  T a0, a1, gamma;

  static SigmoidFocalOp make(double alpha, double gamma) {
    const bool balanced = alpha >= 0.0;
    return {T(balanced ? 1.0 - alpha : 1.0), T(balanced ? 2.0 * alpha - 1.0 : 0.0), T(gamma)};
  }

  struct Terms {
    T s, sc;   // sigmoid(x), sigmoid(-x)
    T ce, m, f;  // BCE, 1 - p_t, m^gamma
    T at;      // alpha_t
  };
  LOSSEXT_HD Terms terms(T x, T y) const {
    Terms t;
    const T e = math::exp(-std::abs(x));
    const T r = T(1) / (T(1) + e);
    const bool pos = x >= T(0);
    t.s = pos ? r : e * r;
    t.sc = pos ? e * r : r;
    // ce = (1 - y) |x| for x >= 0, y |x| for x < 0, plus log1p(exp(-|x|)); the product is 0
    // where its factor is 0 and |x| = inf (the limit, where 0 * inf would give NaN)
    const T ax = std::abs(x);
    const T wce = pos ? T(1) - y : y;
    t.ce = (wce == T(0) && ax == T(INFINITY) ? T(0) : wce * ax) + math::log1p_nonneg(e);
    t.m = t.s * (T(1) - y) + t.sc * y;
    t.f = kSquare ? t.m * t.m : pow_nonneg(t.m, gamma);
    t.at = a0 + a1 * y;
    return t;
  }
  // d(m^gamma)/dm = gamma m^(gamma - 1); at m = 0 its limit times dm (which vanishes with m)
  // is taken as 0 for every gamma (gamma = 1: 1), where torchvision's autograd gives 0 * inf = NaN
  // for gamma < 1 at saturated logits.
  LOSSEXT_HD T dpow(const Terms& t) const {
    if constexpr (kSquare) return T(2) * t.m;
    return t.m > T(0) ? gamma * t.f / t.m : (gamma == T(1) ? T(1) : T(0));
  }
  LOSSEXT_HD T value(T x, T y) const {
    const Terms t = terms(x, y);
    return t.at * t.ce * t.f;
  }
  // dFL/dx = alpha_t [(p - y) m^g + ce g m^(g-1) p (1 - p)(1 - 2y)],  p - y = p (1 - y) - (1 - p) y.
  // FL itself is returned, from the same terms (the one-pass kernels: one exp, one log1p and one
  // division per element for both).
  LOSSEXT_HD T value_and_dinput(T x, T y, T& d) const {
    const Terms t = terms(x, y);
    const T dce = t.s * (T(1) - y) - t.sc * y;
    const T dm = t.s * t.sc * (T(1) - T(2) * y);
    d = t.at * (dce * t.f + t.ce * dpow(t) * dm);
    return t.at * t.ce * t.f;
  }
  LOSSEXT_HD T dinput(T x, T y) const {
    T d;
    (void)value_and_dinput(x, y, d);
    return d;
  }
  // dFL/dy = (2 alpha - 1) ce m^g + alpha_t [-x m^g + ce g m^(g-1) (1 - 2p)]
  // (dce/dy = -x, dm/dy = (1 - p) - p, dalpha_t/dy = 2 alpha - 1).
  LOSSEXT_HD T dtarget(T x, T y) const {
    const Terms t = terms(x, y);
    return a1 * t.ce * t.f + t.at * (-x * t.f + t.ce * dpow(t) * (t.sc - t.s));
  }
};

// Softmax focal loss of one row (Lin et al., Eq. (5) over a softmax, as mmcv's
// softmax_focal_loss): with lp = log p_t (log-softmax at the target class) and q = 1 - p_t,
//   FL = -w_t alpha_t q^gamma lp,
// and over the logits z_c (delta_c = [c == t], p_c the softmax)
//   dFL/dz_c = w_t alpha_t A (delta_c - p_c),   A = q^gamma (gamma p_t lp / q - 1),
// where p_t lp / q -> -1 as q -> 0 (A = -1 at gamma = 0: the cross-entropy's p - delta).
// q = -expm1(lp) keeps its precision where p_t -> 1.
template <class T>
LOSSEXT_HD T focal_coef(T lp, T gamma) {
  const T p = math::exp(lp);
  const T q = -math::expm1(lp);
  const T ratio = q > T(0) ? p * lp / q : T(-1);
  return pow_nonneg(q, gamma) * (gamma * ratio - T(1));
}

template <class T>
LOSSEXT_HD T focal_value(T lp, T gamma) {
  return -pow_nonneg(T(-math::expm1(lp)), gamma) * lp;
}

}  // namespace detection
}  // namespace lossext
