// Scalar math of the metric-learning family (Center loss, Triplet-Center loss), shared by the CPU
// and CUDA kernels. s = |f - c|^2 is a squared Euclidean distance, summed in the accumulation type.
//
// Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition",
// ECCV 2016, Eq. 2): L_i = 1/2 |x_i - c_{y_i}|^2; dL_i/dx_i = x_i - c_{y_i}, dL_i/dc_{y_i} = c_{y_i} - x_i.
//
// Triplet-Center loss (He et al., "Triplet-Center Loss for Multi-View 3D Object Retrieval",
// CVPR 2018, Eq. 3): L_i = max(D(f_i, c_{y_i}) + m - min_{j != y_i} D(f_i, c_j), 0) with
//   distance 'squared_euclidean': D = 1/2 s              (the paper's D, Eq. 3)
//   distance 'euclidean':         D = sqrt(max(s, 1e-12)) (the authors' released PyTorch code)
// dD/df = k (f - c), dD/dc = -k (f - c) with k = 1 (squared) or 1 / D where s > 1e-12, else 0
// (the clamp's slope). The min's argument is the lowest class index among ties; a NaN distance
// wins the min (so the loss is NaN, as torch.min propagates NaN).
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/config.h"

namespace lossext {
namespace metric {

constexpr double kEuclidEps = 1e-12;  // the authors' clamp(min=1e-12) before sqrt

enum class Distance : int64_t { SquaredEuclidean = 0, Euclidean = 1 };
enum class Negatives : int64_t { All = 0, Batch = 1 };

// The key the min compares: monotone in D (sqrt is strictly monotone on the clamped value), so
// the argmin and its ties are D's.
template <class A>
LOSSEXT_HD A min_key(A s, bool euclid) {
  return euclid ? (s < A(kEuclidEps) ? A(kEuclidEps) : s) : s;
}

// D from the key.
template <class A>
LOSSEXT_HD A distance_from_key(A key, bool euclid) {
  return euclid ? std::sqrt(key) : A(0.5) * key;
}

template <class A>
LOSSEXT_HD A distance(A s, bool euclid) {
  return distance_from_key(min_key(s, euclid), euclid);
}

// k of dD/df = k (f - c) (NaN stays NaN).
template <class A>
LOSSEXT_HD A distance_slope(A s, bool euclid) {
  if (!euclid) return A(1);
  return s <= A(kEuclidEps) ? A(0) : A(1) / std::sqrt(s);
}

// Whether (key, idx) beats the running (best, best_idx) of a min with the lowest index among
// ties (best_idx < 0: nothing yet). A NaN key beats any number; among NaNs the lowest index.
template <class A>
LOSSEXT_HD bool better(A key, int64_t idx, A best, int64_t best_idx) {
  if (best_idx < 0) return true;
  const bool kn = key != key, bn = best != best;
  if (kn || bn) return kn && (!bn || idx < best_idx);
  return key < best || (key == best && idx < best_idx);
}

// The hinge value v = d_pos + m - d_neg and whether it passes its gradient (v > 0, or NaN: the
// NaN propagates). relu's slope at v = 0 is 0, as torch's.
template <class A>
LOSSEXT_HD bool hinge_active(A v) {
  return !(v <= A(0));
}

template <class A>
LOSSEXT_HD A hinge(A v) {
  return v <= A(0) ? A(0) : v;
}

}  // namespace metric
}  // namespace lossext
