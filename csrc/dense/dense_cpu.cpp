// CPU kernels of the dense-prediction family (Device = DenseCpu, see dense_ops.h).
//
// Determinism: rows (heatmaps) run in parallel, each summed alone: blocks of kBlock pixels in
// lane_sum's fixed lanes of the accumulation type, the blocks added in order in double. The
// order depends on the row length only: bitwise equal for 1 and N threads and for every
// instruction-set variant. The parallelism is over rows (B K heatmaps), so a batch of very few
// large heatmaps runs on few threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <torch/csrc/stable/library.h>

#include "../common/cpu_helpers.h"
#include "../common/cpu_isa.h"
#include "dense_ops.h"

namespace lossext {
namespace dense {
namespace {

using cpu_helpers::ptr;

constexpr int64_t kBlock = 2048;  // pixels per lane_sum call, added into a double

// sum_{k < P} term(k): blocks of kBlock in lane_sum's fixed lanes of A, the blocks added in order
// in double (the order depends on P only).
template <class A, class Term>
inline double row_sum(int64_t P, const Term& term) {
  double total = 0.0;
  for (int64_t bb = 0; bb < P; bb += kBlock) total += static_cast<double>(cpu_detail::lane_sum<A>(bb, std::min(P, bb + kBlock), term));
  return total;
}

template <class scalar_t>
void row_sums_t(const HeatmapProblem& p, Tensor& sums) {
  using A = acc_t<scalar_t>;
  const scalar_t* x = ptr<const scalar_t>(p.output);
  const scalar_t* y = ptr<const scalar_t>(p.target);
  A* s = ptr<A>(sums);
  const int64_t P = p.pixels;
  cpu_helpers::parallel_rows(p.rows, P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* __restrict xr = x + r * P;
      const scalar_t* __restrict yr = y + r * P;
      s[r] = static_cast<A>(row_sum<A>(P, [&](int64_t k) { return sq_diff(static_cast<A>(xr[k]), static_cast<A>(yr[k])); }));
    }
  });
}

template <class scalar_t>
void row_sums_backward_t(const HeatmapProblem& p, const Tensor& grad, Tensor& out) {
  using A = acc_t<scalar_t>;
  const scalar_t* x = ptr<const scalar_t>(p.output);
  const scalar_t* y = ptr<const scalar_t>(p.target);
  const A* g = ptr<const A>(grad);
  scalar_t* o = ptr<scalar_t>(out);
  const int64_t P = p.pixels;
  cpu_helpers::parallel_rows(p.rows, P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* __restrict xr = x + r * P;
      const scalar_t* __restrict yr = y + r * P;
      scalar_t* __restrict orow = o + r * P;
      const A gr = g[r];
      if (gr == A(0)) {  // a joint OHKM did not select (or weight 0): zeros, the row unread
        std::fill(orow, orow + P, static_cast<scalar_t>(0.0f));
        continue;
      }
#pragma omp simd
      for (int64_t k = 0; k < P; ++k) orow[k] = static_cast<scalar_t>(sq_diff_grad(gr, static_cast<A>(xr[k]), static_cast<A>(yr[k])));
    }
  });
}

// One pass (issue #15): per row, S_r in row_sum's lanes (bitwise row_sums_t's) while the gradient
// 2 c_r (x - y) is written (zeros for c_r = 0, as row_sums_backward_t); the loss sum_r c_r S_r
// then adds the rows in order in double, the same for any thread count.
template <class scalar_t>
void row_sums_with_grad_t(const HeatmapProblem& p, const Tensor& coef, Tensor& loss, Tensor& sums, Tensor& out) {
  using A = acc_t<scalar_t>;
  const scalar_t* x = ptr<const scalar_t>(p.output);
  const scalar_t* y = ptr<const scalar_t>(p.target);
  const A* c = ptr<const A>(coef);
  A* s = ptr<A>(sums);
  scalar_t* o = ptr<scalar_t>(out);
  const int64_t P = p.pixels;
  cpu_helpers::parallel_rows(p.rows, P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* __restrict xr = x + r * P;
      const scalar_t* __restrict yr = y + r * P;
      scalar_t* __restrict orow = o + r * P;
      const A cr = c[r];
      const A keep = cr == A(0) ? A(0) : A(1);  // 0: the row's gradient is zeros, even for inf or NaN maps
      s[r] = static_cast<A>(row_sum<A>(P, [&](int64_t k) {
        const A X = static_cast<A>(xr[k]), Y = static_cast<A>(yr[k]);
        orow[k] = static_cast<scalar_t>(keep == A(0) ? A(0) : sq_diff_grad(cr, X, Y));
        return sq_diff(X, Y);
      }));
    }
  });
  double total = 0.0;
  for (int64_t r = 0; r < p.rows; ++r) total += double(c[r]) * double(s[r]);
  *ptr<A>(loss) = static_cast<A>(total);
}

// Every label indexes a channel: each must be in [0, C).
void check_labels(const MaskProblem& p) {
  const int64_t* l = ptr<const int64_t>(p.labels);
  for (int64_t r = 0; r < p.R; ++r) {
    LOSSEXT_CHECK(l[r] >= 0 && l[r] < p.C, p.op, ": argument 'labels' has value ", l[r], " at index ", r,
                  ", outside [0, ", p.C, ") (mask_logits has ", p.C, " class channels)");
  }
}

template <class scalar_t>
void mask_bce_t(const MaskProblem& p, Tensor& out) {
  using A = acc_t<scalar_t>;
  check_labels(p);
  const scalar_t* x = ptr<const scalar_t>(p.logits);
  const scalar_t* y = ptr<const scalar_t>(p.targets);
  const int64_t* l = ptr<const int64_t>(p.labels);
  const int64_t P = p.P, C = p.C;
  cpu_helpers::parallel_rows(p.R, P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* __restrict xr = x + (r * C + l[r]) * P;  // the labelled channel only
      const scalar_t* __restrict yr = y + r * P;
      if (p.per_pixel) {
        scalar_t* __restrict o = ptr<scalar_t>(out) + r * P;
#pragma omp simd
        for (int64_t k = 0; k < P; ++k) o[k] = static_cast<scalar_t>(bce_with_logits(static_cast<A>(xr[k]), static_cast<A>(yr[k])));
        continue;
      }
      ptr<A>(out)[r] = static_cast<A>(
          row_sum<A>(P, [&](int64_t k) { return bce_with_logits(static_cast<A>(xr[k]), static_cast<A>(yr[k])); }));
    }
  });
}

template <class scalar_t>
void mask_bce_backward_t(const MaskProblem& p, const Tensor& grad, Tensor& gl, Tensor& gt) {
  using A = acc_t<scalar_t>;
  check_labels(p);
  const scalar_t* x = ptr<const scalar_t>(p.logits);
  const scalar_t* y = ptr<const scalar_t>(p.targets);
  const int64_t* l = ptr<const int64_t>(p.labels);
  scalar_t* ol = ptr<scalar_t>(gl);
  scalar_t* ot = ptr<scalar_t>(gt);
  const int64_t P = p.P, C = p.C;
  cpu_helpers::parallel_rows(p.R, C * P, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      std::fill(ol + r * C * P, ol + (r + 1) * C * P, static_cast<scalar_t>(0.0f));  // the other channels
      const scalar_t* __restrict xr = x + (r * C + l[r]) * P;
      const scalar_t* __restrict yr = y + r * P;
      scalar_t* __restrict o = ol + (r * C + l[r]) * P;
      scalar_t* __restrict ty = ot + r * P;
      with_bool(p.per_pixel, [&](auto kPerPixel) {
        const scalar_t* __restrict gp = kPerPixel ? ptr<const scalar_t>(grad) + r * P : nullptr;
        const A g_roi = kPerPixel ? A(0) : ptr<const A>(grad)[r];
#pragma omp simd
        for (int64_t k = 0; k < P; ++k) {
          const A G = kPerPixel ? static_cast<A>(gp[k]) : g_roi, X = static_cast<A>(xr[k]);
          o[k] = static_cast<scalar_t>(G * bce_with_logits_grad(X, static_cast<A>(yr[k])));
          ty[k] = static_cast<scalar_t>(-G * X);
        }
      });
    }
  });
}

// ---- dice and masked L1: per-(row, chunk) partial sums, added in chunk order ----------------
//
// Both reduce rows (b, c) of P pixels into four sums. The pixels of a row are cut into fixed
// chunks of kChunk (the parallel tasks: a few large images still use every thread); a chunk
// adds tiles of lane_sums (fixed lanes of the accumulation type) in double; the chunks of a
// row are then added in order. The order depends on the shapes only.

constexpr int64_t kChunk = 8192;
constexpr int kT = 128;  // pixels per tile (a multiclass tile keeps C * kT probabilities in L1/L2)
static_assert(kT <= cpu_detail::kTile, "a tile is one lane_sums call");

inline int64_t chunks_of(int64_t P) { return std::max<int64_t>(1, (P + kChunk - 1) / kChunk); }

template <class A>
void add_chunks(int64_t rows, int64_t nch, const std::vector<double>& part, Tensor& out) {
  A* o = ptr<A>(out);
  for (int64_t r = 0; r < rows; ++r)
    for (int q = 0; q < 4; ++q) {
      double s = 0.0;
      for (int64_t ch = 0; ch < nch; ++ch) s += part[(r * nch + ch) * 4 + q];
      o[r * 4 + q] = static_cast<A>(s);
    }
}

template <class A, class... Terms>
inline void add_lane_sums(double* acc, int64_t b, int64_t e, const Terms&... terms) {
  const auto s = cpu_detail::lane_sums<A>(b, e, terms...);
  for (size_t q = 0; q < sizeof...(Terms); ++q) acc[q] += static_cast<double>(s[q]);
}

// Multiclass labels: each in [0, C) or ignore_index.
void check_dice_labels(const DiceProblem& p) {
  const int64_t* l = ptr<const int64_t>(p.target);
  const int64_t n = p.B * p.P;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = l[i];
    if (p.has_ignore && v == p.ignore) continue;
    LOSSEXT_CHECK(v >= 0 && v < p.C, p.op, ": argument 'target' has value ", v, " at flat index ", i, ", outside [0, ",
                  p.C, ") (logits has ", p.C, " classes)", p.has_ignore ? " and not ignore_index" : "");
  }
}

// One tile of a multiclass sample: n <= kT pixels from k0, its class probabilities into
// prob[c * kT + j] (softmax over the C channels at stride P, or the values as given), its
// labels and keep flags into lab / keep.
template <class scalar_t, class A>
inline void softmax_tile(const DiceProblem& p, const scalar_t* xb, const int64_t* lb, int64_t k0, int n, A* prob,
                         A* keep, int64_t* lab) {
  const int64_t C = p.C, P = p.P;
  for (int j = 0; j < n; ++j) {
    lab[j] = lb[k0 + j];
    keep[j] = p.has_ignore && lab[j] == p.ignore ? A(0) : A(1);
  }
  if (!p.from_logits) {
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* __restrict xc = xb + c * P + k0;
      A* __restrict pc = prob + c * kT;
#pragma omp simd
      for (int j = 0; j < n; ++j) pc[j] = static_cast<A>(xc[j]);
    }
    return;
  }
  A mx[kT], sum[kT];
  for (int j = 0; j < n; ++j) mx[j] = -A(INFINITY), sum[j] = A(0);
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* __restrict xc = xb + c * P + k0;
#pragma omp simd
    for (int j = 0; j < n; ++j) mx[j] = std::max(mx[j], static_cast<A>(xc[j]));
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* __restrict xc = xb + c * P + k0;
    A* __restrict pc = prob + c * kT;
#pragma omp simd
    for (int j = 0; j < n; ++j) {
      pc[j] = math::exp(static_cast<A>(xc[j]) - mx[j]);
      sum[j] += pc[j];
    }
  }
#pragma omp simd
  for (int j = 0; j < n; ++j) sum[j] = A(1) / sum[j];
  for (int64_t c = 0; c < C; ++c) {
    A* __restrict pc = prob + c * kT;
#pragma omp simd
    for (int j = 0; j < n; ++j) pc[j] *= sum[j];
  }
}

template <class scalar_t>
void dice_sums_t(const DiceProblem& p, Tensor& out) {
  using A = acc_t<scalar_t>;
  const int64_t B = p.B, C = p.C, P = p.P, nch = chunks_of(P), rows = B * C;
  const scalar_t* x = ptr<const scalar_t>(p.logits);
  std::vector<double> part(static_cast<size_t>(rows * nch * 4), 0.0);
  if (p.multiclass) {
    check_dice_labels(p);
    const int64_t* lab_all = ptr<const int64_t>(p.target);
    cpu_helpers::parallel_rows(B * nch, std::min(P, kChunk) * C, [&](int64_t tb, int64_t te) {
      std::vector<A> prob(static_cast<size_t>(C * kT));
      A keep[kT];
      int64_t lab[kT];
      for (int64_t task = tb; task < te; ++task) {
        const int64_t b = task / nch, ch = task % nch;
        const int64_t k1 = std::min(P, (ch + 1) * kChunk);
        for (int64_t k0 = ch * kChunk; k0 < k1; k0 += kT) {
          const int n = static_cast<int>(std::min<int64_t>(kT, k1 - k0));
          softmax_tile<scalar_t, A>(p, x + b * C * P, lab_all + b * P, k0, n, prob.data(), keep, lab);
          for (int64_t c = 0; c < C; ++c) {
            const A* __restrict pc = prob.data() + c * kT;
            auto t_of = [&](int64_t j) { return lab[j] == c ? A(1) : A(0); };
            add_lane_sums<A>(&part[((b * C + c) * nch + ch) * 4], 0, n,
                             [&](int64_t j) { return keep[j] * pc[j]; },
                             [&](int64_t j) { return keep[j] * t_of(j); },
                             [&](int64_t j) { return keep[j] * pc[j] * t_of(j); },
                             [&](int64_t j) { return keep[j] * std::abs(pc[j] - t_of(j)); });
          }
        }
      }
    });
  } else {
    const scalar_t* y = ptr<const scalar_t>(p.target);
    const bool has_ignore = p.has_ignore;
    const A ign = static_cast<A>(p.ignore);
    with_bool(p.from_logits, [&](auto kLogits) {
      cpu_helpers::parallel_rows(rows * nch, std::min(P, kChunk), [&](int64_t tb, int64_t te) {
        A pv[kT], tv[kT], kv[kT];
        for (int64_t task = tb; task < te; ++task) {
          const int64_t r = task / nch, ch = task % nch;
          const int64_t k1 = std::min(P, (ch + 1) * kChunk);
          const scalar_t* __restrict xr = x + r * P;
          const scalar_t* __restrict yr = y + r * P;
          for (int64_t k0 = ch * kChunk; k0 < k1; k0 += kT) {
            const int n = static_cast<int>(std::min<int64_t>(kT, k1 - k0));
#pragma omp simd
            for (int j = 0; j < n; ++j) {
              const A X = static_cast<A>(xr[k0 + j]), T = static_cast<A>(yr[k0 + j]);
              pv[j] = kLogits ? sigmoid(X) : X;
              kv[j] = has_ignore && T == ign ? A(0) : A(1);
              tv[j] = T;
            }
            add_lane_sums<A>(&part[(r * nch + ch) * 4], 0, n, [&](int64_t j) { return kv[j] * pv[j]; },
                             [&](int64_t j) { return kv[j] * tv[j]; },
                             [&](int64_t j) { return kv[j] * pv[j] * tv[j]; },
                             [&](int64_t j) { return kv[j] * std::abs(pv[j] - tv[j]); });
          }
        }
      });
    });
  }
  add_chunks<A>(rows, nch, part, out);
}

template <class scalar_t>
void dice_sums_backward_t(const DiceProblem& p, const Tensor& grad, Tensor& out) {
  using A = acc_t<scalar_t>;
  const int64_t B = p.B, C = p.C, P = p.P;
  const scalar_t* x = ptr<const scalar_t>(p.logits);
  const A* g = ptr<const A>(grad);
  scalar_t* o = ptr<scalar_t>(out);
  if (p.multiclass) {
    check_dice_labels(p);
    const int64_t* lab_all = ptr<const int64_t>(p.target);
    const int64_t nt = (P + kT - 1) / kT;
    cpu_helpers::parallel_rows(B * nt, std::min<int64_t>(P, kT) * C, [&](int64_t tb, int64_t te) {
      std::vector<A> prob(static_cast<size_t>(C * kT)), dp(static_cast<size_t>(C * kT));
      A keep[kT], dot[kT];
      int64_t lab[kT];
      for (int64_t task = tb; task < te; ++task) {
        const int64_t b = task / nt, k0 = (task % nt) * kT;
        const int n = static_cast<int>(std::min<int64_t>(kT, P - k0));
        softmax_tile<scalar_t, A>(p, x + b * C * P, lab_all + b * P, k0, n, prob.data(), keep, lab);
        for (int j = 0; j < n; ++j) dot[j] = A(0);
        for (int64_t c = 0; c < C; ++c) {
          const A* gc = g + (b * C + c) * 4;
          const A g0 = gc[0], g2 = gc[2], g3 = gc[3];
          const A* __restrict pc = prob.data() + c * kT;
          A* __restrict dc = dp.data() + c * kT;
#pragma omp simd
          for (int j = 0; j < n; ++j) {
            dc[j] = dice_dp(g0, g2, g3, pc[j], lab[j] == c ? A(1) : A(0), keep[j]);
            dot[j] += pc[j] * dc[j];
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* __restrict pc = prob.data() + c * kT;
          const A* __restrict dc = dp.data() + c * kT;
          scalar_t* __restrict oc = o + (b * C + c) * P + k0;
          if (p.from_logits) {
#pragma omp simd
            for (int j = 0; j < n; ++j) oc[j] = static_cast<scalar_t>(pc[j] * (dc[j] - dot[j]));
          } else {
#pragma omp simd
            for (int j = 0; j < n; ++j) oc[j] = static_cast<scalar_t>(dc[j]);
          }
        }
      }
    });
    return;
  }
  const scalar_t* y = ptr<const scalar_t>(p.target);
  const bool has_ignore = p.has_ignore;
  const A ign = static_cast<A>(p.ignore);
  with_bool(p.from_logits, [&](auto kLogits) {
    cpu_helpers::parallel_rows(B * C, P, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const A g0 = g[r * 4], g2 = g[r * 4 + 2], g3 = g[r * 4 + 3];
        const scalar_t* __restrict xr = x + r * P;
        const scalar_t* __restrict yr = y + r * P;
        scalar_t* __restrict orow = o + r * P;
#pragma omp simd
        for (int64_t k = 0; k < P; ++k) {
          const A X = static_cast<A>(xr[k]), T = static_cast<A>(yr[k]);
          const A pr = kLogits ? sigmoid(X) : X;
          const A d = dice_dp(g0, g2, g3, pr, T, has_ignore && T == ign ? A(0) : A(1));
          orow[k] = static_cast<scalar_t>(kLogits ? d * pr * (A(1) - pr) : d);
        }
      }
    });
  });
}

template <class scalar_t>
void masked_l1_sums_t(const MaskedL1Problem& p, Tensor& out) {
  using A = acc_t<scalar_t>;
  const int64_t B = p.B, C = p.C, P = p.P, nch = chunks_of(P), rows = B * C;
  const scalar_t* x = ptr<const scalar_t>(p.input);
  const scalar_t* y = ptr<const scalar_t>(p.target);
  const scalar_t* m = ptr<const scalar_t>(p.mask);
  std::vector<double> part(static_cast<size_t>(rows * nch * 4), 0.0);
  // a task is one chunk of one sample, its C channels in turn: a broadcast mask chunk is read
  // from memory once and from cache for the other channels
  cpu_helpers::parallel_rows(B * nch, std::min(P, kChunk) * C, [&](int64_t tb, int64_t te) {
    for (int64_t task = tb; task < te; ++task) {
      const int64_t b = task / nch, ch = task % nch;
      const int64_t k1 = std::min(P, (ch + 1) * kChunk);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = b * C + c;
        const scalar_t* __restrict xr = x + r * P;
        const scalar_t* __restrict yr = y + r * P;
        const scalar_t* __restrict mr = m + (p.mask_bcast ? b : r) * P;
        // a broadcast mask is counted once: its sums come from channel 0, the other channels
        // add the two distance series only (their mask slots stay 0)
        const bool count = !p.mask_bcast || c == 0;
        double* acc = &part[(r * nch + ch) * 4];
        for (int64_t k0 = ch * kChunk; k0 < k1; k0 += kBlock) {
          auto d = [&](int64_t k) { return std::abs(static_cast<A>(xr[k]) - static_cast<A>(yr[k])); };
          auto mk = [&](int64_t k) { return static_cast<A>(mr[k]); };
          const int64_t e = std::min(k1, k0 + kBlock);
          if (count) {
            add_lane_sums<A>(acc, k0, e, [&](int64_t k) { return d(k) * mk(k); },
                             [&](int64_t k) { return d(k) * (A(1) - mk(k)); }, [&](int64_t k) { return mk(k); },
                             [&](int64_t k) { return A(1) - mk(k); });
          } else {
            add_lane_sums<A>(acc, k0, e, [&](int64_t k) { return d(k) * mk(k); },
                             [&](int64_t k) { return d(k) * (A(1) - mk(k)); });
          }
        }
      }
    }
  });
  add_chunks<A>(rows, nch, part, out);
}

template <class scalar_t>
void masked_l1_sums_backward_t(const MaskedL1Problem& p, const Tensor& grad, Tensor& out) {
  using A = acc_t<scalar_t>;
  const int64_t C = p.C, P = p.P;
  const scalar_t* x = ptr<const scalar_t>(p.input);
  const scalar_t* y = ptr<const scalar_t>(p.target);
  const scalar_t* m = ptr<const scalar_t>(p.mask);
  const A* g = ptr<const A>(grad);
  scalar_t* o = ptr<scalar_t>(out);
  const int64_t nch = chunks_of(P);
  cpu_helpers::parallel_rows(p.B * nch, std::min(P, kChunk) * C, [&](int64_t tb, int64_t te) {
    for (int64_t task = tb; task < te; ++task) {  // one chunk of one sample, its channels in turn
      const int64_t b = task / nch, k0 = (task % nch) * kChunk, k1 = std::min(P, k0 + kChunk);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = b * C + c;
        const A gf = g[r * 4], gb = g[r * 4 + 1];
        const scalar_t* __restrict xr = x + r * P;
        const scalar_t* __restrict yr = y + r * P;
        const scalar_t* __restrict mr = m + (p.mask_bcast ? b : r) * P;
        scalar_t* __restrict orow = o + r * P;
#pragma omp simd
        for (int64_t k = k0; k < k1; ++k)
          orow[k] = static_cast<scalar_t>(
              masked_l1_grad(gf, gb, static_cast<A>(xr[k]), static_cast<A>(yr[k]), static_cast<A>(mr[k])));
      }
    }
  });
}

}  // namespace

struct DenseCpu {
  static void dice_sums(const DiceProblem& p, Tensor& out) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) { dice_sums_t<decltype(tag)>(p, out); });
  }
  static void dice_sums_backward(const DiceProblem& p, const Tensor& grad, Tensor& out) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) { dice_sums_backward_t<decltype(tag)>(p, grad, out); });
  }
  static void masked_l1_sums(const MaskedL1Problem& p, Tensor& out) {
    dispatch_floating(p.input.scalar_type(), p.op, [&](auto tag) { masked_l1_sums_t<decltype(tag)>(p, out); });
  }
  static void masked_l1_sums_backward(const MaskedL1Problem& p, const Tensor& grad, Tensor& out) {
    dispatch_floating(p.input.scalar_type(), p.op, [&](auto tag) { masked_l1_sums_backward_t<decltype(tag)>(p, grad, out); });
  }
  static void mask_bce(const MaskProblem& p, Tensor& out) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) { mask_bce_t<decltype(tag)>(p, out); });
  }
  static void mask_bce_backward(const MaskProblem& p, const Tensor& grad, Tensor& gl, Tensor& gt) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) { mask_bce_backward_t<decltype(tag)>(p, grad, gl, gt); });
  }
  static void row_sums(const HeatmapProblem& p, Tensor& sums) {
    dispatch_floating(p.output.scalar_type(), p.op, [&](auto tag) { row_sums_t<decltype(tag)>(p, sums); });
  }
  static void row_sums_backward(const HeatmapProblem& p, const Tensor& grad, Tensor& out) {
    dispatch_floating(p.output.scalar_type(), p.op, [&](auto tag) { row_sums_backward_t<decltype(tag)>(p, grad, out); });
  }
  static void row_sums_with_grad(const HeatmapProblem& p, const Tensor& coef, Tensor& loss, Tensor& sums, Tensor& out) {
    dispatch_floating(p.output.scalar_type(), p.op,
                      [&](auto tag) { row_sums_with_grad_t<decltype(tag)>(p, coef, loss, sums, out); });
  }
};

}  // namespace dense
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::dense::register_dense_kernels<lossext::dense::DenseCpu>(m);
}
