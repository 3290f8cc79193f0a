// Math of the SSD and RefineDet multibox losses, shared by the CPU and CUDA kernels. Each
// function cites the authors' Caffe code it follows (sfzhang15/RefineDet, which carries
// weiliu89/caffe's SSD code: src/caffe/util/bbox_util.cpp, src/caffe/layers/multibox_loss_layer.cpp).
//
// Boxes: priors (and the refined anchors) are center-size (cx, cy, w, h), as ssd.pytorch's
// priors; truths are corners (x1, y1, x2, y2). The geometry (IoU, encoding, decoding) is
// double on both devices, so that matching is the float64 reference's and CPU = CUDA.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/config.h"
#include "../common/math.h"

namespace lossext {
namespace detection {

struct MbBox {  // center-size
  double cx, cy, w, h;
};
struct MbCorners {
  double x1, y1, x2, y2;
};

LOSSEXT_HD MbCorners mb_corners(const MbBox& b) {
  return {b.cx - b.w / 2, b.cy - b.h / 2, b.cx + b.w / 2, b.cy + b.h / 2};
}

// bbox_util.cpp BBoxSize (normalized): 0 for x2 < x1 or y2 < y1, else w h.
LOSSEXT_HD double mb_area(const MbCorners& a) {
  return (a.x2 < a.x1 || a.y2 < a.y1) ? 0.0 : (a.x2 - a.x1) * (a.y2 - a.y1);
}

// bbox_util.cpp JaccardOverlap (normalized, no +1): the intersection's area over the union's.
// Disjoint or touching boxes give 0 (IntersectBBox's empty box); a union of 0 (two empty
// boxes) gives 0 where Caffe divides 0 by 0; a NaN coordinate gives 0 (it matches nothing).
LOSSEXT_HD double mb_iou(const MbCorners& a, const MbCorners& b) {
  const double iw = (a.x2 < b.x2 ? a.x2 : b.x2) - (a.x1 > b.x1 ? a.x1 : b.x1);
  const double ih = (a.y2 < b.y2 ? a.y2 : b.y2) - (a.y1 > b.y1 ? a.y1 : b.y1);
  if (!(iw > 0.0 && ih > 0.0)) return 0.0;
  const double inter = iw * ih;
  const double uni = mb_area(a) + mb_area(b) - inter;
  return uni > 0.0 ? inter / uni : 0.0;
}

// bbox_util.cpp EncodeBBox, CENTER_SIZE, variance not encoded in the target: the truth g
// relative to the anchor p, ((g_cx - p_cx) / p_w / v0, (g_cy - p_cy) / p_h / v0,
// log(g_w / p_w) / v1, log(g_h / p_h) / v1). Only matched pairs are encoded, and a pair
// matches only with IoU > 0, so g_w, g_h > 0: no log(0).
struct MbTarget {
  double t[4];
};
LOSSEXT_HD MbTarget mb_encode(const MbCorners& g, const MbBox& p, double v0, double v1) {
  const double gw = g.x2 - g.x1, gh = g.y2 - g.y1;
  const double gcx = (g.x1 + g.x2) / 2, gcy = (g.y1 + g.y2) / 2;
  return {{(gcx - p.cx) / p.w / v0, (gcy - p.cy) / p.h / v0, log(gw / p.w) / v1, log(gh / p.h) / v1}};
}

// bbox_util.cpp DecodeBBox, CENTER_SIZE, not clipped (RefineDet's CasRegFindMatches decodes the
// ARM's offsets on the priors this way): the refined anchor (cx + v0 l0 w, cy + v0 l1 h,
// w exp(v1 l2), h exp(v1 l3)).
LOSSEXT_HD MbBox mb_decode(const MbBox& p, double l0, double l1, double l2, double l3, double v0, double v1) {
  return {p.cx + v0 * l0 * p.w, p.cy + v0 * l1 * p.h, p.w * exp(v1 * l2), p.h * exp(v1 * l3)};
}

// SmoothL1 (beta 1; Caffe's SmoothL1LossLayer with sigma 1, F.smooth_l1_loss): value and d/dx
// of x = prediction - target.
struct MbL1 {
  double loss, grad;
};
LOSSEXT_HD MbL1 mb_smooth_l1(double x) {
  const double ax = x < 0 ? -x : x;
  if (ax < 1.0) return {0.5 * x * x, x};
  return {ax - 0.5, x < 0 ? -1.0 : (x > 0 ? 1.0 : x)};  // x NaN: NaN
}

// The matching rules (match_priors' `matching`).
enum class MbMatching : int64_t { Bipartite = 0, SsdPytorch = 1 };

// Caffe's MatchBBox keeps the pairs with overlap > 1e-6 (bbox_util.cpp, MatchBBox).
constexpr double kMbMinOverlap = 1e-6;

// The hard negative mining's order: a before b when its loss is larger, NaN first (it sorts as
// the largest: a NaN head is never silently dropped), ties by the lower prior index.
template <class T>
LOSSEXT_HD bool mb_harder(T la, int64_t ia, T lb, int64_t ib) {
  const bool na = la != la, nb = lb != lb;
  if (na != nb) return na;
  if (!na && la != lb) return la > lb;
  return ia < ib;
}

}  // namespace detection
}  // namespace lossext
