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
#include "../common/cpu_isa.h"
#include "region_ops.h"

namespace lossext {
namespace detection {
namespace {

using cpu_helpers::ptr;

constexpr int64_t kBlock = cpu_detail::kTile;  // cells per lane_sums call, added into doubles

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
    // one plane's decoded boxes, its cells' column and row, and the no-object drop flags
    std::vector<double> bx_(static_cast<size_t>(HW)), by_(static_cast<size_t>(HW)), bw_(static_cast<size_t>(HW)),
        bh_(static_cast<size_t>(HW)), ci_(static_cast<size_t>(HW)), cj_(static_cast<size_t>(HW));
    for (int64_t cell = 0; cell < HW; ++cell) {
      ci_[cell] = double(cell % p.W);
      cj_[cell] = double(cell / p.W);
    }
    std::vector<uint8_t> drop_(static_cast<size_t>(HW), uint8_t(0));
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
      // (2) anchors, plane by plane (anchor n's channels are [H W] planes): the activations and the
      // default terms vectorize over the cells; the drop scan vectorizes over the truths; the
      // matched anchors (few) overwrite their entries afterwards, in cell order.
      double lsum = 0.0, cost = 0.0, anyobj = 0.0;
      const A ps = static_cast<A>(p.prior_scale), noobj = static_cast<A>(p.noobject_scale);
      for (int64_t n = 0; n < p.A; ++n) {
        const double aw = anc[2 * n], ah = anc[2 * n + 1];
        const scalar_t* __restrict zn = z + n * E * HW;
        scalar_t* __restrict gn = g + n * E * HW;
        const int32_t* __restrict own = owner.data() + n * HW;
        // the no-object drop of each cell: does its decoded box have IoU > thresh with a truth
        // (the boxes decoded in a loop over the cells, then one loop over the cells per truth)
        if (nt == 0 || 0.0 > p.thresh) {
          std::fill(drop_.begin(), drop_.end(), uint8_t(nt > 0 || 0.0 > p.thresh ? 1 : 0));
        } else {
          double* __restrict px = bx_.data();
          double* __restrict py = by_.data();
          double* __restrict pw = bw_.data();
          double* __restrict ph = bh_.data();
          const double* __restrict ci = ci_.data();
          const double* __restrict cj = cj_.data();
          const double W = double(p.W), H = double(p.H);
#pragma omp simd
          for (int64_t cell = 0; cell < HW; ++cell) {
            px[cell] = (ci[cell] + double(sigmoid_of(static_cast<A>(zn[cell])))) / W;
            py[cell] = (cj[cell] + double(sigmoid_of(static_cast<A>(zn[HW + cell])))) / H;
            pw[cell] = double(math::exp(static_cast<A>(zn[2 * HW + cell]))) * aw / W;
            ph[cell] = double(math::exp(static_cast<A>(zn[3 * HW + cell]))) * ah / H;
          }
          uint8_t* __restrict hit = drop_.data();
          const uint8_t always = 0.0 > p.thresh ? 1 : 0;
          std::fill(hit, hit + HW, always);
          const double thresh = p.thresh;
          for (int64_t t = 0; t < nt && !always; ++t) {
            const double X = tr[t].x, Y = tr[t].y, Wt = tr[t].w, Ht = tr[t].h;
#pragma omp simd
            for (int64_t cell = 0; cell < HW; ++cell)
              hit[cell] |= uint8_t(dk_iou(px[cell], py[cell], pw[cell], ph[cell], X, Y, Wt, Ht) > thresh);
          }
        }
        // the default terms (forward_region_layer's first loop: no-object term, warm-up prior) of
        // every cell, written to the gradient; their sums leave the matched cells out
        const uint8_t* __restrict dr = drop_.data();
        for (int64_t c0 = 0; c0 < HW; c0 += kBlock) {
          const int64_t c1 = std::min(HW, c0 + kBlock);
          const auto sums = cpu_detail::lane_sums<A>(
              c0, c1,
              [&](int64_t cell) {
                const A keep = own[cell] < 0 ? A(1) : A(0);
                const Term<A> ex = sigmoid_term(static_cast<A>(zn[cell]), ps, A(0.5));
                const Term<A> ey = sigmoid_term(static_cast<A>(zn[HW + cell]), ps, A(0.5));
                const Term<A> ew = linear_term(static_cast<A>(zn[2 * HW + cell]), ps, A(0));
                const Term<A> eh = linear_term(static_cast<A>(zn[3 * HW + cell]), ps, A(0));
                const Term<A> eo = sigmoid_term(static_cast<A>(zn[4 * HW + cell]), dr[cell] ? A(0) : noobj, A(0));
                gn[cell] = static_cast<scalar_t>(ex.grad);
                gn[HW + cell] = static_cast<scalar_t>(ey.grad);
                gn[2 * HW + cell] = static_cast<scalar_t>(ew.grad);
                gn[3 * HW + cell] = static_cast<scalar_t>(eh.grad);
                gn[4 * HW + cell] = static_cast<scalar_t>(eo.grad);
                return keep != A(0) ? ((ex.loss + ey.loss) + (ew.loss + eh.loss)) + eo.loss : A(0);
              },
              [&](int64_t cell) {
                const A keep = own[cell] < 0 ? A(1) : A(0);
                const A dx = sigmoid_term(static_cast<A>(zn[cell]), ps, A(0.5)).delta2;
                const A dy = sigmoid_term(static_cast<A>(zn[HW + cell]), ps, A(0.5)).delta2;
                const A dw = linear_term(static_cast<A>(zn[2 * HW + cell]), ps, A(0)).delta2;
                const A dh = linear_term(static_cast<A>(zn[3 * HW + cell]), ps, A(0)).delta2;
                const A d_o = sigmoid_term(static_cast<A>(zn[4 * HW + cell]), dr[cell] ? A(0) : noobj, A(0)).delta2;
                return keep != A(0) ? ((dx + dy) + (dw + dh)) + d_o : A(0);  // a select: inf stays out
              },
              [&](int64_t cell) { return sigmoid_of(static_cast<A>(zn[4 * HW + cell])); });
          lsum += double(sums[0]);
          cost += double(sums[1]);
          anyobj += double(sums[2]);
        }
        for (int64_t c = 0; c < p.C; ++c) std::fill(gn + (5 + c) * HW, gn + (6 + c) * HW, static_cast<scalar_t>(0.0f));
        // the matched cells: the truth's terms (forward_region_layer's truth loop) overwrite them
        for (int64_t cell = 0; cell < HW; ++cell) {
          const int32_t win = own[cell];
          if (win < 0) continue;
          const Truth& u = tr[win];
          auto at_ = [&](int64_t e) { return static_cast<A>(zn[e * HW + cell]); };
          const A tx = at_(0), ty = at_(1), tw = at_(2), th = at_(3), to = at_(4);
          const Decoded d = decode(tx, ty, tw, th, aw, ah, cell % p.W, cell / p.W, p.H, p.W);
          const BoxTargets bt = box_targets(u, aw, ah, p.H, p.W);
          const A cs = static_cast<A>(coord_scale_of(p, u));
          const double iou = dk_iou(d.x, d.y, d.w, d.h, u.x, u.y, u.w, u.h);
          const Term<A> terms[5] = {
              sigmoid_term(tx, cs, A(bt.tx)), sigmoid_term(ty, cs, A(bt.ty)), linear_term(tw, cs, A(bt.tw)),
              linear_term(th, cs, A(bt.th)),
              sigmoid_term(to, static_cast<A>(p.object_scale), static_cast<A>(p.rescore ? iou : 1.0))};
          for (int e = 0; e < 5; ++e) {
            gn[e * HW + cell] = static_cast<scalar_t>(terms[e].grad);
            lsum += double(terms[e].loss);
            cost += double(terms[e].delta2);
          }
          // delta_region_class (softmax): class_scale (p - onehot) for every class
          A m = at_(5);
          for (int64_t c = 1; c < p.C; ++c) m = std::max(m, at_(5 + c));
          A sum = A(0);
          for (int64_t c = 0; c < p.C; ++c) sum += math::exp_softmax(at_(5 + c) - m);
          const A lse = m + math::log(sum);
          const A cls = static_cast<A>(p.class_scale);
          for (int64_t c = 0; c < p.C; ++c) {
            const A pc = math::exp_softmax(at_(5 + c) - m) / sum;
            const A dc = cls * ((c == u.cls ? A(1) : A(0)) - pc);
            gn[(5 + c) * HW + cell] = static_cast<scalar_t>(-dc);
            cost += double(dc) * double(dc);
          }
          lsum += double(cls) * double(lse - at_(5 + u.cls));
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
