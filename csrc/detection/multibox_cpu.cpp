// CPU kernels of prior matching and the multibox losses: images in parallel, each image's
// matching, encoding, mining and sums on one thread in a fixed order (bitwise equal results for
// any thread count).
//
// Per image: (1) its truths (padding rows skipped) and anchors (the priors, or the priors refined
// by arm_loc); (2) the IoU of every truth with every anchor, then the match (bbox_util.cpp
// MatchBBox: the greedy bipartite match, then per prediction; or ssd.pytorch's box_utils.match);
// (3) the positives' smooth L1 and every prior's cross-entropy (for the mining and the loss);
// (4) hard negative mining (bbox_util.cpp MineHardExamples, MAX_NEGATIVE): among the unmatched
// priors whose best overlap is < neg_overlap (and, for RefineDet's ODM, whose ARM objectness is
// >= objectness_thresh), the floor(num_pos * neg_pos_ratio) of largest cross-entropy (ties: the
// lower index); (5) the cross-entropy of the positives and the mined negatives and its gradient.
// Bad targets (a label that is not an integer in [0, C - 1), a NaN or infinite coordinate,
// x2 < x1 or y2 < y1) and bad priors (w or h not > 0, not finite) raise before any image is read.
#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/csrc/stable/library.h>

#include "../common/cpu_helpers.h"
#include "multibox_ops.h"

namespace lossext {
namespace detection {
namespace {

using cpu_helpers::ptr;

struct MbTruth {
  MbCorners box;
  int64_t label, row;
};

// num_labels: labels must be < num_labels (the classes without the background), or -1: any.
void check_inputs(const MatchProblem& m, int64_t num_labels) {
  const double* pr = ptr<const double>(m.priors);
  for (int64_t p = 0; p < m.P; ++p) {
    const double* q = pr + p * 4;
    LOSSEXT_CHECK(std::isfinite(q[0]) && std::isfinite(q[1]) && q[2] > 0.0 && q[3] > 0.0 && q[2] < INFINITY &&
                      q[3] < INFINITY,
                  m.op, ": argument 'priors' has (cx, cy, w, h) = (", q[0], ", ", q[1], ", ", q[2], ", ", q[3],
                  ") at [", p, "]: centres must be finite, widths and heights > 0 and finite");
  }
  const double* t = ptr<const double>(m.targets);
  for (int64_t b = 0; b < m.B; ++b) {
    for (int64_t k = 0; k < m.T; ++k) {
      const double* row = t + (b * m.T + k) * 5;
      const double c = row[4];
      if (c < 0) continue;  // padding
      LOSSEXT_CHECK(c == std::floor(c) && (num_labels < 0 || c < double(num_labels)), m.op,
                    ": argument 'targets' has label ", c, " at [", b, ", ", k, "] (image, row), outside [0, ",
                    num_labels, ") = [0, C - 1) or not an integer");
      LOSSEXT_CHECK(std::isfinite(row[0]) && std::isfinite(row[1]) && std::isfinite(row[2]) && std::isfinite(row[3]),
                    m.op, ": argument 'targets' has a box (", row[0], ", ", row[1], ", ", row[2], ", ", row[3],
                    ") at [", b, ", ", k, "] (image, row) that is not finite");
      LOSSEXT_CHECK(row[2] >= row[0] && row[3] >= row[1], m.op, ": argument 'targets' has a box (", row[0], ", ",
                    row[1], ", ", row[2], ", ", row[3], ") at [", b, ", ", k,
                    "] (image, row) with a negative width or height: boxes must have x2 >= x1, y2 >= y1");
    }
  }
}

// One image's matching state, reused across the images of a task.
struct Matcher {
  std::vector<MbTruth> tr;
  std::vector<MbBox> anchors;
  std::vector<double> iou;  // [nt, P]
  std::vector<int32_t> match;  // local truth index or -1
  std::vector<double> ov;

  template <class scalar_t>
  void load(const MatchProblem& m, int64_t b) {
    const double* t = ptr<const double>(m.targets) + b * m.T * 5;
    tr.clear();
    for (int64_t k = 0; k < m.T; ++k) {
      const double* row = t + k * 5;
      if (row[4] < 0) continue;
      tr.push_back({{row[0], row[1], row[2], row[3]}, static_cast<int64_t>(row[4]), k});
    }
    const double* pr = ptr<const double>(m.priors);
    anchors.resize(size_t(m.P));
    if (m.arm_loc.has_value()) {  // RefineDet: CasRegFindMatches matches against the refined anchors
      const scalar_t* l = ptr<const scalar_t>(*m.arm_loc) + b * m.P * 4;
      for (int64_t p = 0; p < m.P; ++p) {
        const double* q = pr + p * 4;
        anchors[p] = mb_decode({q[0], q[1], q[2], q[3]}, double(l[p * 4]), double(l[p * 4 + 1]),
                               double(l[p * 4 + 2]), double(l[p * 4 + 3]), m.v0, m.v1);
      }
    } else {
      for (int64_t p = 0; p < m.P; ++p) anchors[p] = {pr[p * 4], pr[p * 4 + 1], pr[p * 4 + 2], pr[p * 4 + 3]};
    }
  }

  void run(const MatchProblem& m) {
    const int64_t nt = int64_t(tr.size()), P = m.P;
    match.assign(size_t(P), -1);
    ov.assign(size_t(P), 0.0);
    if (nt == 0 || P == 0) return;
    iou.resize(size_t(nt * P));
    for (int64_t p = 0; p < P; ++p) {
      const MbCorners a = mb_corners(anchors[p]);
      for (int64_t t = 0; t < nt; ++t) iou[t * P + p] = mb_iou(tr[t].box, a);
    }
    if (m.matching == MbMatching::Bipartite) bipartite(m, nt);
    else ssd_pytorch(m, nt);
  }

  // bbox_util.cpp MatchBBox: each prior's overlap is its best with any truth (pairs > 1e-6 only);
  // the bipartite loop gives the pair of largest overlap among the unmatched priors and the
  // truths left (strict >, priors in order, then truths: ties go to the lower prior, then the
  // lower truth) until none is left; then PER_PREDICTION: each prior still unmatched takes its
  // truth of largest overlap >= overlap_thresh (the first on ties).
  void bipartite(const MatchProblem& m, int64_t nt) {
    const int64_t P = m.P;
    for (int64_t p = 0; p < P; ++p) {
      double best = 0.0;
      for (int64_t t = 0; t < nt; ++t) {
        const double v = iou[t * P + p];
        if (v > kMbMinOverlap && v > best) best = v;
      }
      ov[p] = best;
    }
    std::vector<double> bv(static_cast<size_t>(nt));
    std::vector<int64_t> bi(static_cast<size_t>(nt));
    std::vector<char> pool(static_cast<size_t>(nt), 1);
    auto best_of = [&](int64_t t) {
      double v = -1.0;
      int64_t i = -1;
      const double* row = iou.data() + t * P;
      for (int64_t p = 0; p < P; ++p) {
        if (match[p] == -1 && row[p] > kMbMinOverlap && row[p] > v) {
          v = row[p];
          i = p;
        }
      }
      bv[t] = v;
      bi[t] = i;
    };
    for (int64_t t = 0; t < nt; ++t) best_of(t);
    for (int64_t it = 0; it < nt; ++it) {
      int64_t tb = -1;
      for (int64_t t = 0; t < nt; ++t) {
        if (!pool[t] || bi[t] < 0) continue;
        if (tb < 0 || bv[t] > bv[tb] || (bv[t] == bv[tb] && bi[t] < bi[tb])) tb = t;
      }
      if (tb < 0) break;
      const int64_t p = bi[tb];
      match[p] = int32_t(tb);
      ov[p] = bv[tb];
      pool[tb] = 0;
      for (int64_t t = 0; t < nt; ++t)
        if (pool[t] && bi[t] == p) best_of(t);
    }
    for (int64_t p = 0; p < P; ++p) {
      if (match[p] != -1) continue;
      double v = -1.0;
      int64_t tb = -1;
      for (int64_t t = 0; t < nt; ++t) {
        const double o = iou[t * P + p];
        if (o > kMbMinOverlap && o >= m.thresh && o > v) {
          v = o;
          tb = t;
        }
      }
      if (tb >= 0) {
        match[p] = int32_t(tb);
        ov[p] = v;
      }
    }
  }

  // ssd.pytorch layers/box_utils.py match: each prior takes its truth of largest IoU (the first on
  // ties) when that IoU >= overlap_thresh; then each truth, in order, takes its prior of largest
  // IoU (the first on ties), a later truth overwriting an earlier one. Unlike the port, a truth
  // that overlaps no prior is not forced onto prior 0, and a prior needs IoU > 0 to match.
  void ssd_pytorch(const MatchProblem& m, int64_t nt) {
    const int64_t P = m.P;
    for (int64_t p = 0; p < P; ++p) {
      double v = iou[p];
      int64_t tb = 0;
      for (int64_t t = 1; t < nt; ++t) {
        if (iou[t * P + p] > v) {
          v = iou[t * P + p];
          tb = t;
        }
      }
      ov[p] = v;
      if (v >= m.thresh && v > 0.0) match[p] = int32_t(tb);
    }
    for (int64_t t = 0; t < nt; ++t) {
      const double* row = iou.data() + t * P;
      const int64_t p = std::max_element(row, row + P) - row;  // the first maximum
      if (!(row[p] > 0.0)) continue;
      match[p] = int32_t(t);
      ov[p] = row[p];
    }
  }
};

struct MultiboxCpu {
  static void match(const MatchProblem& m, Tensor& matches, Tensor& overlaps) {
    check_inputs(m, -1);
    int64_t* mi = ptr<int64_t>(matches);
    double* mo = ptr<double>(overlaps);
    cpu_helpers::parallel_rows(m.B, m.P * std::max<int64_t>(m.T, 1), [&](int64_t b0, int64_t b1) {
      Matcher mt;
      for (int64_t b = b0; b < b1; ++b) {
        mt.load<double>(m, b);  // no arm_loc here (match_priors matches the priors)
        mt.run(m);
        for (int64_t p = 0; p < m.P; ++p) {
          const int32_t t = mt.match[p];
          mi[b * m.P + p] = t < 0 ? -1 : mt.tr[t].row;
          mo[b * m.P + p] = mt.ov[p];
        }
      }
    });
  }

  static void run(const MultiboxProblem& p, Tensor& loss_loc, Tensor& loss_conf, Tensor& num_pos, Tensor& grad_loc,
                  Tensor& grad_conf) {
    dispatch_floating(p.loc.scalar_type(), p.m.op, [&](auto tag) {
      run_t<decltype(tag)>(p, loss_loc, loss_conf, num_pos, grad_loc, grad_conf);
    });
  }

  template <class scalar_t>
  static void run_t(const MultiboxProblem& p, Tensor& loss_loc_t, Tensor& loss_conf_t, Tensor& num_pos_t,
                    Tensor& grad_loc_t, Tensor& grad_conf_t) {
    using A = acc_t<scalar_t>;
    const MatchProblem& m = p.m;
    check_inputs(m, p.binary ? -1 : p.C - 1);
    const int64_t P = m.P, C = p.C;
    const scalar_t* loc = ptr<const scalar_t>(p.loc);
    const scalar_t* conf = ptr<const scalar_t>(p.conf);
    const scalar_t* arm_conf = p.arm_conf.has_value() ? ptr<const scalar_t>(*p.arm_conf) : nullptr;
    scalar_t* gl_all = ptr<scalar_t>(grad_loc_t);
    scalar_t* gc_all = ptr<scalar_t>(grad_conf_t);
    scalar_t* out_loc = ptr<scalar_t>(loss_loc_t);
    scalar_t* out_conf = ptr<scalar_t>(loss_conf_t);
    int64_t* out_pos = ptr<int64_t>(num_pos_t);
    cpu_helpers::parallel_rows(m.B, P * (C + 4 * std::max<int64_t>(m.T, 1)), [&](int64_t b0, int64_t b1) {
      Matcher mt;
      std::vector<A> ce(static_cast<size_t>(P)), lse(static_cast<size_t>(P));
      std::vector<int64_t> cand;
      std::vector<char> take(static_cast<size_t>(P));
      for (int64_t b = b0; b < b1; ++b) {
        mt.load<scalar_t>(m, b);
        mt.run(m);
        const scalar_t* lz = loc + b * P * 4;
        const scalar_t* cz = conf + b * P * C;
        scalar_t* gl = gl_all + b * P * 4;
        scalar_t* gc = gc_all + b * P * C;
        std::fill(gl, gl + P * 4, static_cast<scalar_t>(0.0f));
        std::fill(gc, gc + P * C, static_cast<scalar_t>(0.0f));
        // (3) the positives' smooth L1 (bbox_util.cpp EncodeLocPrediction / CasRegEncodeLocPrediction:
        // the targets relative to the anchor each prior matched with)
        int64_t npos = 0;
        double lloc = 0.0;
        for (int64_t q = 0; q < P; ++q) {
          const int32_t t = mt.match[q];
          if (t < 0) continue;
          ++npos;
          const MbTarget tg = mb_encode(mt.tr[t].box, mt.anchors[q], m.v0, m.v1);
          for (int k = 0; k < 4; ++k) {
            const MbL1 l = mb_smooth_l1(double(lz[q * 4 + k]) - tg.t[k]);
            lloc += l.loss;
            gl[q * 4 + k] = static_cast<scalar_t>(l.grad);
          }
        }
        // every prior's cross-entropy against its class (the background for the unmatched ones):
        // bbox_util.cpp ComputeConfLoss, the mining's loss
        for (int64_t q = 0; q < P; ++q) {
          const scalar_t* z = cz + q * C;
          A mx = static_cast<A>(z[0]);
          for (int64_t c = 1; c < C; ++c) mx = std::max(mx, static_cast<A>(z[c]));
          A s = A(0);
          for (int64_t c = 0; c < C; ++c) s += math::exp_softmax(static_cast<A>(z[c]) - mx);
          const int32_t t = mt.match[q];
          const int64_t cls = t < 0 ? 0 : (p.binary ? 1 : mt.tr[t].label + 1);
          lse[q] = mx + math::log(s);
          ce[q] = lse[q] - static_cast<A>(z[cls]);
        }
        // (4) hard negative mining
        std::fill(take.begin(), take.end(), char(0));
        for (int64_t q = 0; q < P; ++q) take[q] = mt.match[q] >= 0;
        if (npos > 0) {
          cand.clear();
          for (int64_t q = 0; q < P; ++q) {
            if (mt.match[q] >= 0 || !(mt.ov[q] < p.neg_overlap)) continue;
            if (arm_conf) {  // RefineDet: negative anchor filtering (the ARM's objectness)
              const scalar_t* a = arm_conf + (b * P + q) * 2;
              const double obj = 1.0 / (1.0 + std::exp(double(a[0]) - double(a[1])));
              if (!(obj >= p.objectness)) continue;
            }
            cand.push_back(q);
          }
          const double want = std::floor(double(npos) * p.neg_pos_ratio);  // compared before the cast
          const int64_t k = want < double(cand.size()) ? static_cast<int64_t>(want) : int64_t(cand.size());
          if (k > 0) {
            auto harder = [&](int64_t x, int64_t y) { return mb_harder(ce[x], x, ce[y], y); };
            if (k < int64_t(cand.size())) std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), harder);
            for (int64_t i = 0; i < k; ++i) take[cand[i]] = 1;
          }
        }
        // (5) the confidence loss and its gradient, softmax - onehot, over the taken priors
        double lconf = 0.0;
        for (int64_t q = 0; q < P; ++q) {
          if (!take[q]) continue;
          lconf += double(ce[q]);
          const int32_t t = mt.match[q];
          const int64_t cls = t < 0 ? 0 : (p.binary ? 1 : mt.tr[t].label + 1);
          const scalar_t* z = cz + q * C;
          for (int64_t c = 0; c < C; ++c) {
            const A pc = math::exp_softmax(static_cast<A>(z[c]) - lse[q]);
            gc[q * C + c] = static_cast<scalar_t>(c == cls ? pc - A(1) : pc);
          }
        }
        out_loc[b] = static_cast<scalar_t>(lloc);
        out_conf[b] = static_cast<scalar_t>(lconf);
        out_pos[b] = npos;
      }
    });
  }
};

}  // namespace
}  // namespace detection
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::detection::register_multibox_kernels<lossext::detection::MultiboxCpu>(m);
}
