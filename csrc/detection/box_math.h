// Per-box math of the IoU-family box losses, shared by the CPU and CUDA kernels. Boxes are
// (x1, y1, x2, y2); T is the accumulation type. Forward and hand-written reverse pass.
//
//   IoU  (1 - IoU):        IoU = I / (U + eps),  U = A1 + A2 - I
//   GIoU (Rezatofighi et al., CVPR 2019, Alg. 1):  1 - IoU + (C - U) / (C + eps), C the
//        smallest enclosing box's area
//   DIoU (Zheng et al., AAAI 2020, Eq. 6):  1 - IoU + rho^2 / (c^2 + eps), rho the distance of
//        the centres, c the enclosing box's diagonal
//   CIoU (ibid., Eq. 8-11):  DIoU + alpha v,  v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2,
//        alpha = v / (1 - IoU + v + eps) a constant (no gradient), as torchvision computes it.
//
// On valid boxes (x2 > x1, y2 > y1) these are torchvision's generalized_box_iou_loss,
// distance_box_iou_loss, complete_box_iou_loss formulas, and the gradients are its autograd's,
// including min/max ties, where torch.minimum/maximum give each side half the gradient.
// Degenerate boxes, defined so that values and gradients are always finite:
//   - widths and heights enter the areas and CIoU's aspect as max(x2 - x1, 0): a box with
//     x2 < x1 is empty (area 0), its gradient through the width is 0 (torchvision takes the
//     negative width as is: negative areas, a union that can vanish);
//   - CIoU's aspect is atan2(w, h), equal to atan(w / h) for h > 0, pi/2 for h = 0 < w, 0 for
//     w = h = 0, with derivatives h / (w^2 + h^2) and -w / (w^2 + h^2) (0 at w = h = 0), where
//     torchvision's w / h is inf or NaN and its gradient NaN;
//   - the enclosing box's area is max(cw, 0) max(ch, 0); with eps > 0 every quotient has a
//     positive denominator. GIoU of an empty box with itself is 1 (I = U = C = 0), as in
//     torchvision: the IoU of empty boxes is 0, never 0/0.
#pragma once

#include <cmath>

#include "../common/config.h"

namespace lossext {
namespace detection {

enum class BoxMode : int64_t { IoU = 0, GIoU = 1, DIoU = 2, CIoU = 3 };

template <class T>
struct Box {
  T x1, y1, x2, y2;
};

// max(a, b) / min(a, b) and the share of the gradient each side takes (1, 0 or 1/2 on ties).
template <class T>
struct Pick {
  T v, ga, gb;
};
// A NaN on either side makes every comparison false: the tie branch, whose a + b is NaN (as
// torch.maximum/minimum propagate NaN).
template <class T>
LOSSEXT_HD Pick<T> pick_max(T a, T b) {
  return a > b ? Pick<T>{a, T(1), T(0)}
               : (a < b ? Pick<T>{b, T(0), T(1)} : Pick<T>{a == b ? a : a + b, T(0.5), T(0.5)});
}
template <class T>
LOSSEXT_HD Pick<T> pick_min(T a, T b) {
  return a < b ? Pick<T>{a, T(1), T(0)}
               : (a > b ? Pick<T>{b, T(0), T(1)} : Pick<T>{a == b ? a : a + b, T(0.5), T(0.5)});
}

// atan2(w, h) for w, h >= 0 (CIoU's aspect angle, in [0, pi/2]). float on the CPU: Cephes' atanf
// (range reduction to |r| <= tan(pi/8), a degree-9 odd polynomial; about 1 ulp) on min/max, so
// the box loops vectorize (libm's atan2f is a scalar call); double and the GPU use libm.
LOSSEXT_HD double atan2_nonneg(double w, double h) { return std::atan2(w, h); }
LOSSEXT_HD float atan2_nonneg(float w, float h) {
#ifdef LOSSEXT_ON_DEVICE
  return ::atan2f(w, h);
#else
  // every condition a float comparison used in place (no named bools: GCC does not vectorize the
  // mix of mask widths they become, nor a select between two constants, a table load)
  const float lo = w > h ? h : w, hi = w > h ? w : h;
  const float q = lo / (hi > 0.0f ? hi : 1.0f);
  const float x0 = hi > 0.0f ? q : 0.0f;  // in [0, 1]; 0 for a point (atan2(0, 0) = 0)
  const float x = x0 > 0.414213562373095f ? (x0 - 1.0f) / (x0 + 1.0f) : x0;  // tan(pi/8)
  const float z = x * x;
  const float y = (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z - 3.33329491539e-1f) * z * x + x;
  const float yb = x0 > 0.414213562373095f ? y + 0.785398163397448f : y;
  const float r = w > h ? 1.57079632679490f - yb : yb;
  const float nan = w + h;  // NaN iff w or h is (both are >= 0)
  return nan != nan ? nan : r;
#endif
}

template <class T>
struct BoxGrad {
  T g[8];  // d loss / d (x1, y1, x2, y2) of box 1, then of box 2
};

template <class T>
struct BoxIouOp {
  BoxMode mode;
  T eps;

  static BoxIouOp make(int64_t mode, double eps) { return {static_cast<BoxMode>(mode), T(eps)}; }

  static constexpr double kFourOverPi2 = 0.40528473456935108578;  // 4 / pi^2

  // The forward quantities, kept for the reverse pass.
  struct Fwd {
    T w1, h1, w2, h2;          // clamped at 0
    Pick<T> ix1, iy1, ix2, iy2;  // intersection corners
    T iw, ih;
    T inter, D, iou;           // D = U + eps
    Pick<T> cx1, cy1, cx2, cy2;  // enclosing box corners
    T cw, ch;                  // enclosing box sides (unclamped)
    T C, Ce;                   // GIoU: max(cw,0) max(ch,0), C + eps
    T rx, ry, rho2, c2;        // DIoU: half the centre offsets' doubles, rho^2, diagonal^2 + eps
    T t1, t2, v, alpha;        // CIoU
    T loss;
  };

  // The mode: the runtime one (M < 0, the CUDA kernels), or M itself, known at compile time so
  // that the CPU loops have no branch on it and vectorize (one box per lane).
  template <int M>
  LOSSEXT_HD BoxMode mode_of() const { return M < 0 ? mode : static_cast<BoxMode>(M); }

  template <int M = -1>
  LOSSEXT_HD Fwd forward(const Box<T>& a, const Box<T>& b) const {
    const BoxMode mode = mode_of<M>();
    Fwd f;
    const T dw1 = a.x2 - a.x1, dh1 = a.y2 - a.y1, dw2 = b.x2 - b.x1, dh2 = b.y2 - b.y1;
    f.w1 = dw1 < T(0) ? T(0) : dw1;
    f.h1 = dh1 < T(0) ? T(0) : dh1;
    f.w2 = dw2 < T(0) ? T(0) : dw2;
    f.h2 = dh2 < T(0) ? T(0) : dh2;
    f.ix1 = pick_max(a.x1, b.x1);
    f.iy1 = pick_max(a.y1, b.y1);
    f.ix2 = pick_min(a.x2, b.x2);
    f.iy2 = pick_min(a.y2, b.y2);
    f.iw = f.ix2.v - f.ix1.v;
    f.ih = f.iy2.v - f.iy1.v;
    f.inter = f.iw > T(0) ? (f.ih > T(0) ? f.iw * f.ih : T(0)) : T(0);
    const T U = f.w1 * f.h1 + f.w2 * f.h2 - f.inter;
    f.D = U + eps;
    f.iou = f.inter / f.D;
    f.loss = T(1) - f.iou;
    if (mode == BoxMode::IoU) return f;
    f.cx1 = pick_min(a.x1, b.x1);
    f.cy1 = pick_min(a.y1, b.y1);
    f.cx2 = pick_max(a.x2, b.x2);
    f.cy2 = pick_max(a.y2, b.y2);
    f.cw = f.cx2.v - f.cx1.v;
    f.ch = f.cy2.v - f.cy1.v;
    if (mode == BoxMode::GIoU) {
      f.C = (f.cw < T(0) ? T(0) : f.cw) * (f.ch < T(0) ? T(0) : f.ch);
      f.Ce = f.C + eps;
      f.loss += (f.C - U) / f.Ce;
      return f;
    }
    // centres' offset: ((x1 + x2) - (X1 + X2)) / 2, as torchvision's (x_p - x_g)
    f.rx = (a.x2 + a.x1) / T(2) - (b.x1 + b.x2) / T(2);
    f.ry = (a.y2 + a.y1) / T(2) - (b.y1 + b.y2) / T(2);
    f.rho2 = f.rx * f.rx + f.ry * f.ry;
    f.c2 = f.cw * f.cw + f.ch * f.ch + eps;
    f.loss += f.rho2 / f.c2;
    if (mode == BoxMode::DIoU) return f;
    f.t1 = atan2_nonneg(f.w1, f.h1);
    f.t2 = atan2_nonneg(f.w2, f.h2);
    const T dt = f.t2 - f.t1;
    f.v = T(kFourOverPi2) * dt * dt;
    f.alpha = f.v / (T(1) - f.iou + f.v + eps);
    f.loss += f.alpha * f.v;
    return f;
  }

  template <int M = -1>
  LOSSEXT_HD T value(const Box<T>& a, const Box<T>& b) const { return forward<M>(a, b).loss; }

  // d loss / d coordinates times g.
  // Branch-free in the data (selects, not ifs), so that the CPU loop vectorizes.
  template <int M = -1>
  LOSSEXT_HD BoxGrad<T> backward(const Box<T>& a, const Box<T>& b, T g) const {
    const BoxMode mode = mode_of<M>();
    const Fwd f = forward<M>(a, b);
    // box 1's (x1, y1, x2, y2), then box 2's; local arrays (not r.g through pointers: GCC then
    // keeps them in registers, and the CPU loop vectorizes)
    T ga[4] = {T(0), T(0), T(0), T(0)};
    T gb[4] = {T(0), T(0), T(0), T(0)};
    // loss = 1 - I / D (+ terms); D = A1 + A2 - I + eps
    T gI = -g / f.D;                    // through IoU's numerator
    T gU = g * f.iou / f.D;             // through IoU's denominator
    if (mode == BoxMode::GIoU) gU -= g / f.Ce;  // (C - U) / (C + eps)
    gI -= gU;                           // U = A1 + A2 - I
    // areas A = w h (w, h clamped: no gradient where the side is negative)
    const T gw1 = a.x2 - a.x1 < T(0) ? T(0) : gU * f.h1, gh1 = a.y2 - a.y1 < T(0) ? T(0) : gU * f.w1;
    const T gw2 = b.x2 - b.x1 < T(0) ? T(0) : gU * f.h2, gh2 = b.y2 - b.y1 < T(0) ? T(0) : gU * f.w2;
    T gw1t = gw1, gh1t = gh1, gw2t = gw2, gh2t = gh2;
    // intersection I = iw ih where it overlaps
    {  // (0 where the boxes do not overlap)
      const T giw = f.iw > T(0) ? (f.ih > T(0) ? gI * f.ih : T(0)) : T(0);
      const T gih = f.iw > T(0) ? (f.ih > T(0) ? gI * f.iw : T(0)) : T(0);
      ga[2] += giw * f.ix2.ga; gb[2] += giw * f.ix2.gb;
      ga[0] -= giw * f.ix1.ga; gb[0] -= giw * f.ix1.gb;
      ga[3] += gih * f.iy2.ga; gb[3] += gih * f.iy2.gb;
      ga[1] -= gih * f.iy1.ga; gb[1] -= gih * f.iy1.gb;
    }
    T gcw = T(0), gch = T(0);
    if (mode == BoxMode::GIoU) {
      // (C - U) / Ce: dC = g (Ce - (C - U)) / Ce^2 = g (U + eps) / Ce^2
      const T gC = g * f.D / (f.Ce * f.Ce);
      gcw = f.cw < T(0) ? T(0) : gC * (f.ch < T(0) ? T(0) : f.ch);
      gch = f.ch < T(0) ? T(0) : gC * (f.cw < T(0) ? T(0) : f.cw);
    } else if (mode != BoxMode::IoU) {
      const T grho = g / f.c2;
      const T gc2 = -g * f.rho2 / (f.c2 * f.c2);
      gcw = T(2) * f.cw * gc2;
      gch = T(2) * f.ch * gc2;
      // rho^2 = rx^2 + ry^2, rx = (x1 + x2)/2 - (X1 + X2)/2
      const T grx = grho * T(2) * f.rx / T(2), gry = grho * T(2) * f.ry / T(2);
      ga[0] += grx; ga[2] += grx; gb[0] -= grx; gb[2] -= grx;
      ga[1] += gry; ga[3] += gry; gb[1] -= gry; gb[3] -= gry;
      if (mode == BoxMode::CIoU) {
        // alpha v, alpha constant: dv = 2 (4/pi^2) (t2 - t1) d(t2 - t1); t = atan2(w, h)
        const T gt2 = g * f.alpha * T(2) * T(kFourOverPi2) * (f.t2 - f.t1);
        const T n1 = f.w1 * f.w1 + f.h1 * f.h1, n2 = f.w2 * f.w2 + f.h2 * f.h2;
        // d atan2(w, h) = (h dw - w dh) / (w^2 + h^2), 0 at w = h = 0 and through a clamped side
        const T n1s = n1 > T(0) ? n1 : T(1), n2s = n2 > T(0) ? n2 : T(1);
        // n = 0 needs no condition of its own: then w = h = 0 (or they underflowed), and the
        // terms over n = 1 are 0 (or negligible); one select per term (GCC does not vectorize
        // the and-ed masks of two)
        gw1t -= a.x2 - a.x1 < T(0) ? T(0) : gt2 * f.h1 / n1s;
        gh1t += a.y2 - a.y1 < T(0) ? T(0) : gt2 * f.w1 / n1s;
        gw2t += b.x2 - b.x1 < T(0) ? T(0) : gt2 * f.h2 / n2s;
        gh2t -= b.y2 - b.y1 < T(0) ? T(0) : gt2 * f.w2 / n2s;
      }
    }
    if (mode != BoxMode::IoU) {  // enclosing box: cw = max(x2, X2) - min(x1, X1)
      ga[2] += gcw * f.cx2.ga; gb[2] += gcw * f.cx2.gb;
      ga[0] -= gcw * f.cx1.ga; gb[0] -= gcw * f.cx1.gb;
      ga[3] += gch * f.cy2.ga; gb[3] += gch * f.cy2.gb;
      ga[1] -= gch * f.cy1.ga; gb[1] -= gch * f.cy1.gb;
    }
    // widths and heights: w = x2 - x1
    ga[2] += gw1t; ga[0] -= gw1t; ga[3] += gh1t; ga[1] -= gh1t;
    gb[2] += gw2t; gb[0] -= gw2t; gb[3] += gh2t; gb[1] -= gh2t;
    BoxGrad<T> r;
    r.g[0] = ga[0]; r.g[1] = ga[1]; r.g[2] = ga[2]; r.g[3] = ga[3];
    r.g[4] = gb[0]; r.g[5] = gb[1]; r.g[6] = gb[2]; r.g[7] = gb[3];
    return r;
  }
};

}  // namespace detection
}  // namespace lossext
