// Scalar math of the pair-based metric losses (triplet loss with online mining, contrastive
// loss), shared by the CPU and CUDA kernels. An anchor a (a row of embeddings) is compared with
// every reference r_j (a row of ref_embeddings; the batch itself when no reference set is given,
// j != a then); y and y^r are their labels, positives share the anchor's label.
//
// Distances (d_aj), from s = |a - r_j|^2 or t = a . r_j summed in the accumulation type:
//   squared_euclidean: d = s                        dd/da = 2 (a - r),     dd/dr = 2 (r - a)
//   euclidean:         d = sqrt(max(s, 1e-12))      dd/da = (a - r) / d,   dd/dr = (r - a) / d
//                      (slope 0 where the clamp holds: a zero distance has a finite gradient)
//   dot:               d = 1 - t                    dd/da = -r,            dd/dr = -a
//                      (cosine: the Python layer L2-normalizes first, so d = 1 - cos)
// written as dd/da = u a + v r and dd/dr = u r + v a (coefs()).
//
// Triplet loss (Schroff et al., "FaceNet", CVPR 2015, Eq. 1; Hermans et al., "In Defense of the
// Triplet Loss for Person Re-Identification", 2017, Eqs. 4-5): a triplet (a, p, n) has
//   v = d_ap - d_an + margin, loss h(v) = max(v, 0);  soft margin: v = d_ap - d_an,
//   h(v) = softplus(v) = log(1 + e^v) (Hermans et al., Sec. 2, "soft-margin").
// Mining (which triplets; ties: the lowest reference index):
//   batch_hard (Hermans, Eq. 5): per anchor, p = argmax d_ap, n = argmin d_an;
//   batch_all (Hermans, Eq. 4): every (p, n) of the anchor;
//   semi_hard (FaceNet Sec. 3.2; TensorFlow Addons' triplet_semihard_loss): per positive p,
//     n = argmin {d_an : d_an > d_ap}, or, when no negative is farther than the positive,
//     n = argmax d_an.
// Contrastive loss (Hadsell et al., CVPR 2006, in pytorch-metric-learning's form): a positive
// pair costs max(d - pos_margin, 0), a negative pair max(neg_margin - d, 0).
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/config.h"

namespace lossext {
namespace metric {

constexpr double kPairEps = 1e-12;  // euclidean: sqrt(max(s, 1e-12))

enum class PairDistance : int64_t { SquaredEuclidean = 0, Euclidean = 1, Dot = 2 };
enum class Mining : int64_t { BatchHard = 0, BatchAll = 1, SemiHard = 2, Contrastive = 3 };
// The ops' reduction: 0 none (per-anchor sums), 1 mean over the valid terms, 2 sum, 3 mean over
// the terms with a positive loss (pytorch-metric-learning's AvgNonZeroReducer).
enum class PairReduction : int64_t { None = 0, MeanAll = 1, Sum = 2, MeanNonzero = 3 };

// d from s (euclidean kinds) or t (dot).
template <class A>
LOSSEXT_HD A pair_distance(A s_or_t, PairDistance k) {
  if (k == PairDistance::SquaredEuclidean) return s_or_t;
  if (k == PairDistance::Euclidean) return std::sqrt(s_or_t < A(kPairEps) ? A(kPairEps) : s_or_t);
  return A(1) - s_or_t;
}

// dd/da = u a + v r, dd/dr = u r + v a.
template <class A>
LOSSEXT_HD void pair_coefs(A s_or_t, PairDistance k, A& u, A& v) {
  if (k == PairDistance::SquaredEuclidean) {
    u = A(2);
    v = A(-2);
  } else if (k == PairDistance::Euclidean) {
    u = s_or_t <= A(kPairEps) ? A(0) : A(1) / std::sqrt(s_or_t);  // NaN s: NaN
    v = -u;
  } else {
    u = A(0);
    v = A(-1);
  }
}

// h(v) and h'(v); the hinge's slope at 0 is 0 (as torch.relu's); NaN stays NaN.
template <class A>
LOSSEXT_HD A pair_hinge(A v) {
  return v > A(0) ? v : (v <= A(0) ? A(0) : v);
}

template <class A>
LOSSEXT_HD A pair_hinge_slope(A v) {
  return v > A(0) ? A(1) : (v <= A(0) ? A(0) : v);
}

template <class A>
LOSSEXT_HD A softplus(A v) {
  return v > A(0) ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v));
}

template <class A>
LOSSEXT_HD A sigmoid(A v) {
  if (v >= A(0)) return A(1) / (A(1) + std::exp(-v));
  const A e = std::exp(v);
  return e / (A(1) + e);
}

template <class A>
LOSSEXT_HD A triplet_value(A v, bool soft) {
  return soft ? softplus(v) : pair_hinge(v);
}

template <class A>
LOSSEXT_HD A triplet_slope(A v, bool soft) {
  return soft ? sigmoid(v) : pair_hinge_slope(v);
}

// The first arg of a max (largest) or min (!largest) with the lowest index among ties; NaN wins
// (as torch.max/min propagate NaN). best_idx < 0: nothing yet.
template <class A>
LOSSEXT_HD bool pair_better(A key, int64_t idx, A best, int64_t best_idx, bool largest) {
  if (best_idx < 0) return true;
  const bool kn = key != key, bn = best != best;
  if (kn || bn) return kn && (!bn || idx < best_idx);
  if (key == best) return idx < best_idx;
  return largest ? key > best : key < best;
}

}  // namespace metric
}  // namespace lossext
