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

}  // namespace dense
}  // namespace lossext
