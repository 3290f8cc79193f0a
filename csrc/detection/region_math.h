// Math of the YOLOv2 region loss (darknet's [region] layer, pjreddie/darknet src/region_layer.c),
// shared by the CPU and CUDA kernels. Each function cites the darknet function it follows.
//
// Layout: output [B, A * (5 + C), H, W], anchor n's channels n * (5 + C) + k, k = tx, ty, tw, th,
// to, then the C class logits (region_layer.c: entry_index). targets [B, T, 5] rows (class, x, y,
// w, h) in [0, 1] (darknet's rows are (x, y, w, h, class)); class < 0 is padding. anchors [A, 2]
// (w, h) in grid cells (darknet's biases). Truth geometry is double; the per-entry terms use the
// accumulation type A (float for float and half outputs).
//
// The loss of one image is the function whose gradient is darknet's GPU delta
// (backward_region_layer_gpu: delta times the logistic derivative on tx, ty, to):
//   sum over the squared terms of 1/2 s (t - o)^2, o = sigmoid(z) for tx, ty, to and o = z for
//   tw, th, plus class_scale times the softmax cross-entropy at the matched anchors;
// darknet_cost is darknet's sum of delta^2, delta = s (t - o) (class: class_scale (onehot - p)).
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/config.h"
#include "../common/math.h"

namespace lossext {
namespace detection {

// The statistics' slots (stats [7] of the op; the kernels' per-image partial sums).
enum RegionStat : int {
  kAvgIou = 0,     // sum of each truth's IoU with its anchor's decoded box / count
  kRecall = 1,     // truths with that IoU > 0.5 / count
  kAvgObj = 2,     // sigmoid(to) at each truth's anchor / count
  kAvgAnyObj = 3,  // sigmoid(to) over every anchor / (B A H W)
  kAvgCat = 4,     // the softmax probability of each truth's class at its anchor / count
  kCount = 5,      // truths (every non-padding row, also one a later truth overwrote)
  kCost = 6,       // darknet_cost: sum of delta^2
  kNumStats = 7,
};

struct RegionParams {
  int64_t A, C, H, W, T;
  double object_scale, noobject_scale, class_scale, coord_scale, thresh, prior_scale;
  bool rescore, bias_match, scale_coord_by_size;
};

template <class T>
LOSSEXT_HD T sigmoid_of(T z) {
  const T e = math::exp(-std::abs(z));
  const T r = T(1) / (T(1) + e);
  return z >= T(0) ? r : e * r;
}

// box.c: overlap, box_intersection, box_union, box_iou on centre-format boxes. IoU is 0 where the
// intersection or the union is 0 (AlexeyAB's guard; pjreddie's box_iou divides 0 by 0 there).
LOSSEXT_HD double dk_overlap(double x1, double w1, double x2, double w2) {
  const double l1 = x1 - w1 / 2, l2 = x2 - w2 / 2;
  const double r1 = x1 + w1 / 2, r2 = x2 + w2 / 2;
  return (r1 < r2 ? r1 : r2) - (l1 > l2 ? l1 : l2);
}
LOSSEXT_HD double dk_iou(double ax, double ay, double aw, double ah, double bx, double by, double bw, double bh) {
  const double w = dk_overlap(ax, aw, bx, bw), h = dk_overlap(ay, ah, by, bh);
  const double inter = (w < 0 || h < 0) ? 0.0 : w * h;
  const double uni = aw * ah + bw * bh - inter;
  return (inter == 0.0 || uni == 0.0) ? 0.0 : inter / uni;
}

// One truth, read once: (class, x, y, w, h), its cell and, after the anchor match, its key
// (the anchor-cell index (n H + j) W + i of its image) and stats.
struct Truth {
  int64_t cls;
  double x, y, w, h;
  int64_t i, j;  // cell: floor(x W), floor(y H), clamped to the grid (darknet indexes past it at 1.0)
};

LOSSEXT_HD Truth make_truth(const double* row, int64_t H, int64_t W) {
  Truth t;
  t.cls = static_cast<int64_t>(row[0]);
  t.x = row[1];
  t.y = row[2];
  t.w = row[3];
  t.h = row[4];
  double fi = floor(t.x * double(W)), fj = floor(t.y * double(H));
  fi = fi < 0 ? 0 : (fi > double(W - 1) ? double(W - 1) : fi);
  fj = fj < 0 ? 0 : (fj > double(H - 1) ? double(H - 1) : fj);
  t.i = static_cast<int64_t>(fi);
  t.j = static_cast<int64_t>(fj);
  return t;
}

// The decoded box of anchor n at column i, row j (region_layer.c: get_region_box), from the raw
// head's tx, ty, tw, th: the activations in A (float's exp is math.h's fast one on the CPU), the
// box in double.
struct Decoded {
  double x, y, w, h;
};
template <class A>
LOSSEXT_HD Decoded decode(A tx, A ty, A tw, A th, double aw, double ah, int64_t i, int64_t j, int64_t H, int64_t W) {
  return {(double(i) + double(sigmoid_of(tx))) / double(W), (double(j) + double(sigmoid_of(ty))) / double(H),
          double(math::exp(tw)) * aw / double(W), double(math::exp(th)) * ah / double(H)};
}

// The anchor a truth goes to (forward_region_layer, the best_n loop): the best shape-only IoU
// against the anchor (bias_match) or the anchor's predicted w, h at the truth's cell; strict >,
// so ties go to the lowest index (and best_n = 0 when every IoU is 0).
template <class GetWH>
LOSSEXT_HD int64_t best_anchor(const Truth& t, int64_t A, const GetWH& wh) {
  double best = 0.0;
  int64_t best_n = 0;
  for (int64_t n = 0; n < A; ++n) {
    double w, h;
    wh(n, w, h);
    const double iou = dk_iou(0.0, 0.0, w, h, 0.0, 0.0, t.w, t.h);
    if (iou > best) {
      best = iou;
      best_n = n;
    }
  }
  return best_n;
}

// delta_region_box's targets for a truth matched at cell (i, j), anchor (aw, ah):
// tx = x W - i, ty = y H - j (sigmoid space), tw = log(w W / aw), th = log(h H / ah).
struct BoxTargets {
  double tx, ty, tw, th;
};
LOSSEXT_HD BoxTargets box_targets(const Truth& t, double aw, double ah, int64_t H, int64_t W) {
  return {t.x * double(W) - double(t.i), t.y * double(H) - double(t.j), log(t.w * double(W) / aw),
          log(t.h * double(H) / ah)};
}

// The coordinate scale: coord_scale (2 - w h) (pjreddie's delta_region_box call) or coord_scale
// (AlexeyAB's fork).
LOSSEXT_HD double coord_scale_of(const RegionParams& p, const Truth& t) {
  return p.scale_coord_by_size ? p.coord_scale * (2.0 - t.w * t.h) : p.coord_scale;
}

// One squared term 1/2 s (t - o)^2 of a sigmoid entry (o = sigmoid(z)) or a linear one (o = z):
// its value, d/dz and darknet's delta^2 = (s (t - o))^2.
template <class A>
struct Term {
  A loss, grad, delta2;
};
template <class A>
LOSSEXT_HD Term<A> sigmoid_term(A z, A s, A t) {
  const A e = math::exp(-std::abs(z));
  const A r = A(1) / (A(1) + e);
  const A o = z >= A(0) ? r : e * r;   // sigmoid(z)
  const A oc = z >= A(0) ? e * r : r;  // sigmoid(-z) = 1 - o, without the cancellation
  const A d = s * (t - o);             // darknet's delta
  return {A(0.5) * d * (t - o), -d * o * oc, d * d};
}
template <class A>
LOSSEXT_HD Term<A> linear_term(A z, A s, A t) {
  const A d = s * (t - z);
  return {A(0.5) * d * (t - z), -d, d * d};
}

}  // namespace detection
}  // namespace lossext
