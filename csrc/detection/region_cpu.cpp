// CPU kernel of the YOLOv2 region loss: images in parallel, each image's truths, anchor matching,
// best-IoU search, targets, gradient and sums on one thread, in a fixed order (so results are
// bitwise equal for any thread count); the images' partial sums are added in image order.
//
// Per image: (1) the truths (padding rows skipped) with their cell, anchor (the best_n loop) and
// key (n H + j) W + i, and their statistics; (2) every anchor of every cell: its decoded box, the
// best IoU with the image's truths (the no-object drop), the last truth whose key it is (a later
// truth overwrites an earlier one on the same cell and anchor, as darknet's deltas), then its
// 5 + C entries' gradient, loss and delta^2.
// Bad targets (a class that is not an integer in [0, num_classes), x or y outside [0, 1], w or
// h not > 0, NaN) raise before any image is read.
#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/csrc/stable/library.h>

#include "../common/cpu_helpers.h"
#include "region_ops.h"

namespace lossext {
namespace detection {
namespace {

using cpu_helpers::ptr;

void check_targets(const RegionProblem& r) {
  const double* t = ptr<const double>(r.targets);
  const int64_t T = r.p.T, C = r.p.C;
  for (int64_t b = 0; b < r.B; ++b) {
    for (int64_t k = 0; k < T; ++k) {
      const double* row = t + (b * T + k) * 5;
      const double c = row[0];
      if (c < 0) continue;  // padding
      LOSSEXT_CHECK(c == std::floor(c) && c < double(C), r.op, ": argument 'targets' has class ", c, " at [", b,
                    ", ", k, "] (image, row), outside [0, ", C, ") = [0, num_classes) or not an integer");
      LOSSEXT_CHECK(row[1] >= 0.0 && row[1] <= 1.0 && row[2] >= 0.0 && row[2] <= 1.0, r.op,
                    ": argument 'targets' has centre (x, y) = (", row[1], ", ", row[2], ") at [", b, ", ", k,
                    "] (image, row): centres must be in [0, 1]");
      LOSSEXT_CHECK(row[3] > 0.0 && row[4] > 0.0 && std::isfinite(row[3]) && std::isfinite(row[4]), r.op,
                    ": argument 'targets' has (w, h) = (", row[3], ", ", row[4], ") at [", b, ", ", k,
                    "] (image, row): widths and heights must be > 0 and finite");
    }
  }
}

void check_anchors(const RegionProblem& r) {
  const double* a = ptr<const double>(r.anchors);
  for (int64_t k = 0; k < 2 * r.p.A; ++k) {
    LOSSEXT_CHECK(a[k] > 0.0 && a[k] < INFINITY, r.op, ": argument 'anchors' has ", a[k], " at [", k / 2, ", ", k % 2,
                  "]: anchors must be positive and finite");
  }
}

template <class scalar_t>
void run_t(const RegionProblem& r, Tensor& loss_t, Tensor& grad_t, Tensor& stats_t) {
  using A = acc_t<scalar_t>;
  check_targets(r);
  check_anchors(r);
  RegionParams p = r.p;
  p.prior_scale = *ptr<const double>(r.prior);
  LOSSEXT_CHECK(p.prior_scale >= 0.0 && p.prior_scale < INFINITY, r.op,
                ": argument 'prior_scale' must be finite and >= 0, got ", p.prior_scale);
  const int64_t HW = p.H * p.W, E = 5 + p.C, per_image = p.A * E * HW;
  const scalar_t* out = ptr<const scalar_t>(r.output);
  const double* tg = ptr<const double>(r.targets);
  const double* anc = ptr<const double>(r.anchors);
  scalar_t* grad = ptr<scalar_t>(grad_t);
  scalar_t* loss = ptr<scalar_t>(loss_t);
  std::vector<double> part(size_t(r.B) * kNumStats, 0.0);

  cpu_helpers::parallel_rows(r.B, per_image, [&](int64_t b0, int64_t b1) {
    std::vector<Truth> tr;
    std::vector<int64_t> key;
    std::vector<int32_t> owner(size_t(p.A * HW), -1);  // anchor-cell -> the last truth matched there
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* z = out + b * per_image;
      scalar_t* g = grad + b * per_image;
      double* st = part.data() + b * kNumStats;
      auto at = [&](int64_t n, int64_t cell, int64_t e) { return static_cast<A>(z[n * E * HW + e * HW + cell]); };
      // (1) truths: cell, anchor, key, statistics
      for (int64_t k : key) owner[k] = -1;  // the previous image's entries
      tr.clear();
      key.clear();
      for (int64_t k = 0; k < p.T; ++k) {
        const double* row = tg + (b * p.T + k) * 5;
        if (row[0] < 0) continue;
        const Truth u = make_truth(row, p.H, p.W);
        const int64_t cell = u.j * p.W + u.i;
        const int64_t n = best_anchor(u, p.A, [&](int64_t a, double& w, double& h) {
          w = p.bias_match ? anc[2 * a] / double(p.W) : std::exp(double(at(a, cell, 2))) * anc[2 * a] / double(p.W);
          h = p.bias_match ? anc[2 * a + 1] / double(p.H)
                           : std::exp(double(at(a, cell, 3))) * anc[2 * a + 1] / double(p.H);
        });
        tr.push_back(u);
        key.push_back(n * HW + cell);
        owner[n * HW + cell] = int32_t(tr.size() - 1);  // in row order: a later truth overwrites
        const Decoded d = decode(at(n, cell, 0), at(n, cell, 1), at(n, cell, 2), at(n, cell, 3), anc[2 * n],
                                 anc[2 * n + 1], u.i, u.j, p.H, p.W);
        const double iou = dk_iou(d.x, d.y, d.w, d.h, u.x, u.y, u.w, u.h);
        st[kAvgIou] += iou;
        st[kRecall] += iou > 0.5 ? 1.0 : 0.0;
        st[kAvgObj] += double(sigmoid_of(at(n, cell, 4)));
        A m = at(n, cell, 5);
        for (int64_t c = 1; c < p.C; ++c) m = std::max(m, at(n, cell, 5 + c));
        A s = A(0);
        for (int64_t c = 0; c < p.C; ++c) s += math::exp_softmax(at(n, cell, 5 + c) - m);
        st[kAvgCat] += double(math::exp_softmax(at(n, cell, 5 + u.cls) - m) / s);
        st[kCount] += 1.0;
      }
      const int64_t nt = int64_t(tr.size());
      // (2) anchors
      double lsum = 0.0, cost = 0.0, anyobj = 0.0;
      const A ps = static_cast<A>(p.prior_scale);
      for (int64_t n = 0; n < p.A; ++n) {
        const double aw = anc[2 * n], ah = anc[2 * n + 1];
        for (int64_t cell = 0; cell < HW; ++cell) {
          const int64_t i = cell % p.W, j = cell / p.W;
          const A tx = at(n, cell, 0), ty = at(n, cell, 1), tw = at(n, cell, 2), th = at(n, cell, 3);
          const A to = at(n, cell, 4);
          const Decoded d = decode(tx, ty, tw, th, aw, ah, i, j, p.H, p.W);
          const int64_t k = n * HW + cell;
          const int64_t win = owner[k];
          // the no-object drop: is the best IoU with a truth > thresh (the scan stops at the first)
          bool drop = 0.0 > p.thresh;
          for (int64_t t = 0; t < nt && !drop; ++t)
            drop = dk_iou(d.x, d.y, d.w, d.h, tr[t].x, tr[t].y, tr[t].w, tr[t].h) > p.thresh;
          anyobj += double(sigmoid_of(to));
          scalar_t* gk = g + n * E * HW + cell;
          Term<A> ex, ey, ew, eh, eo;
          if (win >= 0) {  // the truth's terms (forward_region_layer's truth loop)
            const Truth& u = tr[win];
            const BoxTargets bt = box_targets(u, aw, ah, p.H, p.W);
            const A cs = static_cast<A>(coord_scale_of(p, u));
            ex = sigmoid_term(tx, cs, A(bt.tx));
            ey = sigmoid_term(ty, cs, A(bt.ty));
            ew = linear_term(tw, cs, A(bt.tw));
            eh = linear_term(th, cs, A(bt.th));
            const double iou = dk_iou(d.x, d.y, d.w, d.h, u.x, u.y, u.w, u.h);
            eo = sigmoid_term(to, static_cast<A>(p.object_scale), static_cast<A>(p.rescore ? iou : 1.0));
            // delta_region_class (softmax): class_scale (p - onehot) for every class
            A m = at(n, cell, 5);
            for (int64_t c = 1; c < p.C; ++c) m = std::max(m, at(n, cell, 5 + c));
            A s = A(0);
            for (int64_t c = 0; c < p.C; ++c) s += math::exp_softmax(at(n, cell, 5 + c) - m);
            const A lse = m + math::log(s);
            const A cls = static_cast<A>(p.class_scale);
            for (int64_t c = 0; c < p.C; ++c) {
              const A pc = math::exp_softmax(at(n, cell, 5 + c) - m) / s;
              const A dc = cls * ((c == u.cls ? A(1) : A(0)) - pc);
              gk[(5 + c) * HW] = static_cast<scalar_t>(-dc);
              cost += double(dc) * double(dc);
            }
            lsum += double(cls) * double(lse - at(n, cell, 5 + u.cls));
          } else {  // the no-object term and the warm-up prior (forward_region_layer's first loop)
            ex = sigmoid_term(tx, ps, A(0.5));
            ey = sigmoid_term(ty, ps, A(0.5));
            ew = linear_term(tw, ps, A(0));
            eh = linear_term(th, ps, A(0));
            const A s = drop ? A(0) : static_cast<A>(p.noobject_scale);
            eo = sigmoid_term(to, s, A(0));
            for (int64_t c = 0; c < p.C; ++c) gk[(5 + c) * HW] = static_cast<scalar_t>(0.0f);
          }
          const Term<A> terms[5] = {ex, ey, ew, eh, eo};
          for (int e = 0; e < 5; ++e) {
            gk[e * HW] = static_cast<scalar_t>(terms[e].grad);
            lsum += double(terms[e].loss);
            cost += double(terms[e].delta2);
          }
        }
      }
      loss[b] = static_cast<scalar_t>(lsum);
      st[kAvgAnyObj] = anyobj;
      st[kCost] = cost;
    }
  });
  // the batch's statistics, images in order; averages over nothing are 0
  double tot[kNumStats] = {0, 0, 0, 0, 0, 0, 0};
  for (int64_t b = 0; b < r.B; ++b)
    for (int s = 0; s < kNumStats; ++s) tot[s] += part[b * kNumStats + s];
  const double cnt = tot[kCount], anchors_total = double(r.B * p.A * HW);
  auto avg = [](double v, double n) { return n > 0 ? v / n : 0.0; };
  const double res[kNumStats] = {avg(tot[kAvgIou], cnt), avg(tot[kRecall], cnt),       avg(tot[kAvgObj], cnt),
                                 avg(tot[kAvgAnyObj], anchors_total), avg(tot[kAvgCat], cnt), cnt,
                                 tot[kCost]};
  dispatch_floating(stats_t.scalar_type(), r.op, [&](auto tag) {
    using S = decltype(tag);
    S* o = ptr<S>(stats_t);
    for (int s = 0; s < kNumStats; ++s) o[s] = static_cast<S>(res[s]);
  });
}

struct RegionCpu {
  static void run(const RegionProblem& r, Tensor& loss, Tensor& grad, Tensor& stats) {
    dispatch_floating(r.output.scalar_type(), r.op, [&](auto tag) { run_t<decltype(tag)>(r, loss, grad, stats); });
  }
};

}  // namespace
}  // namespace detection
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::detection::register_region_kernels<lossext::detection::RegionCpu>(m);
}
