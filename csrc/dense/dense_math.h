// Per-element math of the dense-prediction family, shared by the CPU and CUDA kernels.
//
// Keypoint heatmaps (SimpleBaseline, Xiao et al., ECCV 2018; HRNet, Sun et al., CVPR 2019;
// lib/core/loss.py, JointsMSELoss and JointsOHKMMSELoss): the kernels reduce each heatmap
// (b, k) to S_bk = sum_hw (x - y)^2, one pass over the pixels. The rest of the loss lives on the
// [B, K] sums (lossext/dense/functional.py): HRNet multiplies both heatmaps by the visibility w
// before the MSE, so its per-joint term is 0.5 * w^2 * S_bk / (H W); the mean over the joints
// and the batch (or OHKM's top-k per sample) follows.
#pragma once

#include <cmath>

#include "../common/config.h"
#include "../common/math.h"

namespace lossext {
namespace dense {

// (x - y)^2, the term of S_bk.
template <class T>
LOSSEXT_HD T sq_diff(T x, T y) {
  const T d = x - y;
  return d * d;
}

// dS_bk/dx = 2 (x - y), times the upstream gradient g of S_bk (dS/dy = -dS/dx).
template <class T>
LOSSEXT_HD T sq_diff_grad(T g, T x, T y) {
  return T(2) * g * (x - y);
}

// Binary cross-entropy with logits (torch's binary_cross_entropy_with_logits, the Mask R-CNN
// mask loss of He et al., ICCV 2017, Sec. 3): with e = exp(-|x|),
//   BCE(x, y) = (1 - y) x + log(1 + exp(-x)) = w |x| + log1p(e),  w = 1 - y (x >= 0), y (x < 0),
// never overflowing; a term w |x| whose factor w is exactly 0 is 0 at |x| = inf (the limit,
// where torch's (1 - y) x gives 0 * inf = NaN at a saturated logit with a hard label).
template <class T>
LOSSEXT_HD T bce_with_logits(T x, T y) {
  const T ax = std::abs(x);
  const T w = x >= T(0) ? T(1) - y : y;
  return (w == T(0) && ax == T(INFINITY) ? T(0) : w * ax) + math::log1p_nonneg(math::exp(-ax));
}

// dBCE/dx = sigmoid(x) - y, sigmoid(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) below.
template <class T>
LOSSEXT_HD T bce_with_logits_grad(T x, T y) {
  const T e = math::exp(-std::abs(x));
  const T r = T(1) / (T(1) + e);
  return (x >= T(0) ? r : e * r) - y;
}

// Logistic sigmoid, 1 / (1 + e) for x >= 0 and e / (1 + e) below (e = exp(-|x|)): never
// overflows; smp's DiceLoss takes exp(logsigmoid(x)), the same function.
template <class T>
LOSSEXT_HD T sigmoid(T x) {
  const T e = math::exp(-std::abs(x));
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}

// d|a|/da: sign(a), 0 at a = 0 (torch's abs backward).
template <class T>
LOSSEXT_HD T abs_grad(T a) {
  return a > T(0) ? T(1) : (a < T(0) ? T(-1) : T(0));
}

// The dice sums of one pixel of class c (Milletari et al., V-Net, 3DV 2016, Eq. 1;
// segmentation_models_pytorch losses/_functional.py): with probability p, target t and
// keep = 0 for an ignored pixel, 1 otherwise, the four per-class sums are
//   S_p = sum keep p,  S_t = sum keep t,  S_pt = sum keep p t,  S_|p-t| = sum keep |p - t|.
// The classic dice (smp <= 0.3) is (2 S_pt + smooth) / max(S_p + S_t + smooth, eps); smp >= 0.4
// takes the intersection as (S_p + S_t - S_|p-t|) / 2 (the dice semimetric of Wang and
// Blaschko, MICCAI 2023, equal to S_pt for hard targets) in its Tversky score.
// dS/dp for upstream gradients g = (g_p, g_t, g_pt, g_abs): keep (g_p + g_pt t + g_abs sign(p - t)).
template <class T>
LOSSEXT_HD T dice_dp(T gp, T gpt, T gabs, T p, T t, T keep) {
  return keep * (gp + gpt * t + gabs * abs_grad(p - t));
}

// The masked L1 sums of one element (Si et al., CVPR 2018, stage II's L_fg and L_bg): with
// d = |x - y| and mask m, the foreground and background numerators d m and d (1 - m).
// d/dx for upstream gradients (g_fg, g_bg): sign(x - y) (g_fg m + g_bg (1 - m)).
template <class T>
LOSSEXT_HD T masked_l1_grad(T gfg, T gbg, T x, T y, T m) {
  return abs_grad(x - y) * (gfg * m + gbg * (T(1) - m));
}

}  // namespace dense
}  // namespace lossext
