// CPU kernels of the pair-based metric losses (Device = PairCpu, see pair_ops.h).
//
// - batch_hard forward: the distances come in tiles, [256 anchors] x [512 references], each
//   tile's products a r^T by one aten::mm.out call (MKL) inside a parallel region (single-threaded
//   there: the same calls for any thread count). The GEMM's s~ = |a|^2 + |r|^2 - 2 a . r (dot:
//   -a . r) only screens: a reference whose s~ is within the product's rounding bound of the
//   anchor's running hardest positive (max) or negative (min) is recomputed exactly (sum_d
//   (a_d - r_d)^2 or sum_d a_d r_d in lane_sum's fixed order) and compared with the lowest index
//   winning ties. Per anchor only the two running bests are kept.
// - batch_all, semi_hard, contrastive: anchors in parallel; each task holds one row of M exact
//   distances (plus its positive and negative lists) and reduces the anchor's triplets or pairs
//   in a fixed order. Per-anchor sums (float64) and counts are added in anchor order on one thread.
// - Backward: batch_hard reads its saved (positive, negative); the others mine the row again.
//   Each anchor's gradient row is summed over its references in index order. The references'
//   gradients: the anchors are taken in waves (of at most 2^20 / M anchors, a function of M
//   only); a wave's (anchor, reference, coefficient) entries are bucketed by reference with a
//   stable counting sort and every reference row adds its bucket in anchor order, references in
//   parallel. So every gradient row is a sum in anchor (or reference) order: no atomics, the same
//   bits for any thread count.
// Memory beyond the inputs and outputs: O(N + M) vectors, a row of M per task, the GEMM tiles and
// one wave's entries (at most 2^20); never N x M.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "metric_cpu.h"
#include "pair_ops.h"

namespace lossext {
namespace metric {
namespace {
using namespace cpu;

constexpr int64_t kPairTileRows = 256;
constexpr int64_t kPairTileCols = 512;
constexpr int64_t kWaveEntries = int64_t(1) << 20;

struct AnchorResult {
  double sum_pos = 0.0, sum_neg = 0.0;  // triplets (or positive pairs), negative pairs
  int64_t cnt[4] = {0, 0, 0, 0};        // valid, nonzero; valid, nonzero (negative pairs)
};

template <class A>
struct Row {
  std::vector<A> sv, dist, W, dneg, wneg;
  std::vector<int64_t> pos, neg;
  explicit Row(int64_t M) : sv(M), dist(M), W(M, A(0)) {}
};

template <class scalar_t>
struct Ptrs {
  const scalar_t *x, *r;
  const int64_t *y, *ry;
  explicit Ptrs(const PairProblem& p)
      : x(ptr<const scalar_t>(p.x)), r(ptr<const scalar_t>(p.r)), y(ptr<const int64_t>(p.y)),
        ry(ptr<const int64_t>(p.ry)) {}
};

template <class A, class scalar_t>
__attribute__((always_inline)) inline A pair_value(const PairProblem& p, const scalar_t* a, const scalar_t* b) {
  return p.dist == PairDistance::Dot ? dot<A>(a, b, p.D) : sq_dist<A>(a, b, p.D);
}

// Anchor a's exact row: sv (s or t), the distance and the positive and negative lists (index order).
template <class scalar_t, class A>
__attribute__((always_inline)) inline void anchor_row(const PairProblem& p, const Ptrs<scalar_t>& P, int64_t a,
                                                     Row<A>& b) {
  const scalar_t* xa = P.x + a * p.D;
  b.pos.clear();
  b.neg.clear();
  for (int64_t j = 0; j < p.M; ++j) {
    if (p.exclude_self && j == a) continue;
    const A v = pair_value<A>(p, xa, P.r + j * p.D);
    b.sv[j] = v;
    b.dist[j] = pair_distance(v, p.dist);
    (P.ry[j] == P.y[a] ? b.pos : b.neg).push_back(j);
  }
}

// The anchor's terms from its row (batch_all, semi_hard, contrastive). kGrad: W[j] += dL/dd_aj
// with the anchor's triplets (or positive pairs) scaled by gp and its negative pairs by gn.
template <bool kGrad, class A>
__attribute__((always_inline)) inline AnchorResult anchor_terms(const PairProblem& p, Row<A>& b, A gp, A gn) {
  AnchorResult res;
  const int64_t P = int64_t(b.pos.size()), Q = int64_t(b.neg.size());
  if (p.mining == Mining::Contrastive) {
    const A pm = A(p.margin), nm = A(p.neg_margin);
    for (int64_t k = 0; k < P; ++k) {
      const int64_t j = b.pos[k];
      const A v = b.dist[j] - pm, h = pair_hinge(v);
      res.sum_pos += double(h);
      res.cnt[1] += h > A(0);
      if constexpr (kGrad) b.W[j] += gp * pair_hinge_slope(v);
    }
    for (int64_t k = 0; k < Q; ++k) {
      const int64_t j = b.neg[k];
      const A v = nm - b.dist[j], h = pair_hinge(v);
      res.sum_neg += double(h);
      res.cnt[3] += h > A(0);
      if constexpr (kGrad) b.W[j] -= gn * pair_hinge_slope(v);
    }
    res.cnt[0] = P;
    res.cnt[2] = Q;
    return res;
  }
  if (P == 0 || Q == 0) return res;  // no triplet: nothing, in no divisor
  const A m = p.soft ? A(0) : A(p.margin);
  const bool soft = p.soft;
  b.dneg.resize(Q);
  for (int64_t q = 0; q < Q; ++q) b.dneg[q] = b.dist[b.neg[q]];
  const A* __restrict dn = b.dneg.data();
  if (p.mining == Mining::BatchAll) {
    if constexpr (kGrad) b.wneg.assign(Q, A(0));
    for (int64_t k = 0; k < P; ++k) {
      const A dp = b.dist[b.pos[k]];
      double s = 0.0;
      int64_t nz = 0;
      A wp = A(0);
      for (int64_t q = 0; q < Q; ++q) {
        const A v = dp - dn[q] + m, h = triplet_value(v, soft);
        s += double(h);
        nz += h > A(0);
        if constexpr (kGrad) {
          const A w = gp * triplet_slope(v, soft);
          wp += w;
          b.wneg[q] -= w;
        }
      }
      res.sum_pos += s;
      res.cnt[1] += nz;
      if constexpr (kGrad) b.W[b.pos[k]] += wp;
    }
    if constexpr (kGrad)
      for (int64_t q = 0; q < Q; ++q) b.W[b.neg[q]] += b.wneg[q];
    res.cnt[0] = P * Q;
    return res;
  }
  // semi_hard: per positive, the nearest negative farther than it, else the farthest negative
  for (int64_t k = 0; k < P; ++k) {
    const A dp = b.dist[b.pos[k]];
    A out = A(0), in = A(0);
    int64_t qo = -1, qi = -1;
    for (int64_t q = 0; q < Q; ++q) {
      if (dn[q] > dp && pair_better(dn[q], q, out, qo, false)) {
        out = dn[q];
        qo = q;
      }
      if (pair_better(dn[q], q, in, qi, true)) {
        in = dn[q];
        qi = q;
      }
    }
    const int64_t q = qo >= 0 ? qo : qi;
    const A v = dp - dn[q] + m, h = triplet_value(v, soft);
    res.sum_pos += double(h);
    res.cnt[1] += h > A(0);
    if constexpr (kGrad) {
      const A w = gp * triplet_slope(v, soft);
      b.W[b.pos[k]] += w;
      b.W[b.neg[q]] -= w;
    }
  }
  res.cnt[0] = P;
  return res;
}

// batch_hard's forward: the hardest positive (max) and negative (min) of each anchor, screened
// from GEMM tiles and decided on exact distances.
template <class scalar_t, class A>
void batch_hard_forward(const PairProblem& p, std::vector<AnchorResult>& res, int64_t* hard) {
  // (half types arrive as float32, pair_ops.h: kConvert is false for the two instantiations)
  constexpr bool kConvert = !std::is_same_v<scalar_t, A>;
  const ScalarType acc_st = acc_scalar_type(p.x.scalar_type());
  const Ptrs<scalar_t> Pt(p);
  const int64_t N = p.N, M = p.M, D = p.D;
  const bool dotk = p.dist == PairDistance::Dot, euclid = p.dist == PairDistance::Euclidean;
  const A m = p.soft ? A(0) : A(p.margin);
  std::vector<A> nr(M);
  parallel_rows(M, D, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) nr[j] = sq_norm<A>(Pt.r + j * D, D);
  });
  // |s~ - s| (and |t~ - t|) within the bound for the GEMM's value and the exact one
  const ScreenBound<A> tol = screen_bound<A>(D);
  const int64_t tiles = (N + kPairTileRows - 1) / kPairTileRows;
  torch::stable::parallel_for(0, std::max<int64_t>(tiles, 2), 1, [&](int64_t tb, int64_t te) {
    for (int64_t tile = tb; tile < std::min(te, tiles); ++tile) {
      const int64_t i0 = tile * kPairTileRows, R = std::min(kPairTileRows, N - i0);
      const int64_t K = std::max<int64_t>(1, std::min(kPairTileCols, M));
      Tensor Pm = new_tensor({R, K}, acc_st, p.x);
      std::optional<Tensor> xa, ra;
      if constexpr (kConvert) {
        xa = new_tensor({R, D}, acc_st, p.x);
        torch::stable::copy_(*xa, window(p.x, i0, R, 0, D));
        ra = new_tensor({K, D}, acc_st, p.x);
      }
      std::vector<A> bp(R, A(0)), bn(R, A(0)), na(R);
      std::vector<int64_t> ap(R, -1), an(R, -1);
      cpu_detail::with_cpu_isa([&](int64_t, int64_t) {
        for (int64_t q = 0; q < R; ++q) na[q] = sq_norm<A>(Pt.x + (i0 + q) * D, D);
        for (int64_t c0 = 0; c0 < M; c0 += K) {
          const int64_t k = std::min(K, M - c0);
          Tensor Pk = window(Pm, 0, R, 0, k);
          if (D > 0) {
            if constexpr (kConvert) {
              Tensor rw = window(*ra, 0, k, 0, D);
              torch::stable::copy_(rw, window(p.r, c0, k, 0, D));
              mm_out(Pk, *xa, torch::stable::transpose(rw, 0, 1));
            } else {
              mm_out(Pk, window(p.x, i0, R, 0, D), torch::stable::transpose(window(p.r, c0, k, 0, D), 0, 1));
            }
          } else {
            torch::stable::zero_(Pk);
          }
          const A* Pp = ptr<const A>(Pm);
          for (int64_t q = 0; q < R; ++q) {
            const int64_t a = i0 + q, ya = Pt.y[a];
            const A* __restrict pr = Pp + q * K;
            const scalar_t* __restrict xr = Pt.x + a * D;
            for (int64_t jj = 0; jj < k; ++jj) {
              const int64_t j = c0 + jj;
              if (p.exclude_self && j == a) continue;
              const A scale = tol.rel * (na[q] + nr[j]) + tol.abs;
              const A approx = dotk ? -pr[jj] : na[q] + nr[j] - A(2) * pr[jj];
              const bool is_pos = Pt.ry[j] == ya;
              // (NaN and inf pass to the exact comparison)
              if (is_pos ? (ap[q] >= 0 && approx + scale < bp[q]) : (an[q] >= 0 && approx - scale > bn[q])) continue;
              const A v = pair_value<A>(p, xr, Pt.r + j * D);
              const A key = dotk ? -v : (euclid && v < A(kPairEps) ? A(kPairEps) : v);
              if (is_pos) {
                if (pair_better(key, j, bp[q], ap[q], true)) {
                  bp[q] = key;
                  ap[q] = j;
                }
              } else if (pair_better(key, j, bn[q], an[q], false)) {
                bn[q] = key;
                an[q] = j;
              }
            }
          }
        }
        for (int64_t q = 0; q < R; ++q) {
          const int64_t a = i0 + q;
          hard[2 * a] = ap[q];
          hard[2 * a + 1] = an[q];
          AnchorResult& o = res[a];
          if (ap[q] < 0 || an[q] < 0) continue;  // no triplet: nothing, in no divisor
          const A dp = pair_distance(dotk ? -bp[q] : bp[q], p.dist);
          const A dn = pair_distance(dotk ? -bn[q] : bn[q], p.dist);
          const A h = triplet_value(dp - dn + m, p.soft);
          o.sum_pos = double(h);
          o.cnt[0] = 1;
          o.cnt[1] = h > A(0);
        }
      }, 0, 1);
    }
  });
}

struct Totals {
  double sum_pos = 0.0, sum_neg = 0.0;
  int64_t cnt[4] = {0, 0, 0, 0};
};

inline Totals totals(const std::vector<AnchorResult>& res) {
  Totals t;
  for (const AnchorResult& r : res) {
    t.sum_pos += r.sum_pos;
    t.sum_neg += r.sum_neg;
    for (int k = 0; k < 4; ++k) t.cnt[k] += r.cnt[k];
  }
  return t;
}

// A sum over `count` terms for a mean: 0 when there are none (pytorch-metric-learning's reducers:
// a batch without a triplet does not stop training).
inline double mean_of(double s, int64_t count) { return count > 0 ? s / double(count) : 0.0; }

inline bool nonzero_divisor(const PairProblem& p) { return p.reduction == PairReduction::MeanNonzero; }

// (dL/d(triplet or positive-pair loss), dL/d(negative-pair loss)) for a reduced loss.
template <class A>
void reduced_scales(const PairProblem& p, double g, const int64_t* cnt, A& gp, A& gn) {
  if (p.reduction == PairReduction::Sum) {
    gp = gn = A(g);
    return;
  }
  const int k = nonzero_divisor(p) ? 1 : 0;
  gp = A(cnt[k] > 0 ? g / double(cnt[k]) : 0.0);
  gn = A(cnt[k + 2] > 0 ? g / double(cnt[k + 2]) : 0.0);
}

struct Entry {
  int64_t j;
  double c;  // the coefficient (in A)
};

}  // namespace

struct PairCpu {
  static void pair_forward(const PairProblem& p, Tensor& loss, Tensor& hard, Tensor& counts) {
    int64_t* hd = ptr<int64_t>(hard);
    std::fill(hd, hd + 2 * p.N, int64_t(-1));
    std::vector<AnchorResult> res(p.N);
    dispatch_pair(p, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      if (p.mining == Mining::BatchHard) {
        batch_hard_forward<scalar_t, A>(p, res, hd);
      } else {
        const Ptrs<scalar_t> P(p);
        torch::stable::parallel_for(0, p.N, row_grain(p.M * std::max<int64_t>(p.D, 1)), [&](int64_t b, int64_t e) {
          Row<A> row(p.M);
          cpu_detail::with_cpu_isa([&](int64_t ab, int64_t ae) {
            for (int64_t a = ab; a < ae; ++a) {
              anchor_row(p, P, a, row);
              res[a] = anchor_terms<false>(p, row, A(0), A(0));
            }
          }, b, e);
        });
      }
      const Totals t = totals(res);
      int64_t* cn = ptr<int64_t>(counts);
      for (int k = 0; k < 4; ++k) cn[k] = t.cnt[k];
      scalar_t* out = ptr<scalar_t>(loss);
      if (p.reduction == PairReduction::None) {
        for (int64_t a = 0; a < p.N; ++a) out[a] = static_cast<scalar_t>(res[a].sum_pos + res[a].sum_neg);
      } else if (p.reduction == PairReduction::Sum) {
        double s = 0.0;
        for (int64_t a = 0; a < p.N; ++a) s += res[a].sum_pos + res[a].sum_neg;
        out[0] = static_cast<scalar_t>(s);
      } else {
        const int k = nonzero_divisor(p) ? 1 : 0;
        // an empty batch: NaN, as torch's mean of nothing; a batch without terms: 0
        out[0] = static_cast<scalar_t>(p.N == 0 ? std::numeric_limits<double>::quiet_NaN()
                                                : mean_of(t.sum_pos, t.cnt[k]) + mean_of(t.sum_neg, t.cnt[k + 2]));
      }
    });
  }

  static void pair_backward(const PairProblem& p, const Tensor& go, const Tensor& hard, const Tensor& counts,
                            Tensor& ge, Tensor& gr) {
    const int64_t* cn = ptr<const int64_t>(counts);
    const int64_t* hd = ptr<const int64_t>(hard);
    const int64_t N = p.N, M = p.M, D = p.D;
    if (p.mining == Mining::BatchHard)
      for (int64_t a = 0; a < N; ++a)
        for (int k = 0; k < 2; ++k)
          LOSSEXT_CHECK(hd[2 * a + k] >= -1 && hd[2 * a + k] < M, p.op, ": argument 'hard' has value ",
                        hd[2 * a + k], " at [", a, ", ", k, "], outside [-1, ", M, ") (it is the forward's output)");
    dispatch_pair(p, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const Ptrs<scalar_t> P(p);
      const scalar_t* gop = ptr<const scalar_t>(go);
      A gp0 = A(0), gn0 = A(0);
      if (p.reduction != PairReduction::None) reduced_scales(p, double(gop[0]), cn, gp0, gn0);
      const bool dotk = p.dist == PairDistance::Dot;
      const A m = p.soft ? A(0) : A(p.margin);
      scalar_t* gep = ptr<scalar_t>(ge);
      // the references' accumulators (A): dL/dr_j, summed in anchor order across the waves (in
      // grad_ref itself when it is in A)
      constexpr bool kInPlace = std::is_same_v<scalar_t, A>;
      std::vector<A> racc_buf(p.ref_grad && !kInPlace ? M * D : 0, A(0));
      A* racc = racc_buf.data();
      if constexpr (kInPlace) {
        racc = ptr<A>(gr);
        if (p.ref_grad) std::fill(racc, racc + M * D, A(0));
      }
      const int64_t wave = std::max<int64_t>(1, kWaveEntries / std::max<int64_t>(M, 1));
      std::vector<std::vector<Entry>> entries(std::min(wave, std::max<int64_t>(N, 1)));
      for (int64_t w0 = 0; w0 < N; w0 += wave) {
        const int64_t W = std::min(wave, N - w0);
        torch::stable::parallel_for(0, W, p.mining == Mining::BatchHard ? row_grain(D) : 1, [&](int64_t b, int64_t e) {
          std::optional<Row<A>> row;
          if (p.mining != Mining::BatchHard) row.emplace(M);
          std::vector<A> acc(D);
          cpu_detail::with_cpu_isa([&](int64_t ab, int64_t ae) {
            for (int64_t w = ab; w < ae; ++w) {
              const int64_t a = w0 + w;
              std::vector<Entry>& ent = entries[w];
              ent.clear();
              const A gp = p.reduction == PairReduction::None ? A(gop[a]) : gp0;
              const A gn = p.reduction == PairReduction::None ? A(gop[a]) : gn0;
              const scalar_t* __restrict xa = P.x + a * D;
              auto add = [&](int64_t j, A W, A sv) {  // W = dL/dd_aj
                A u, v;
                pair_coefs(sv, p.dist, u, v);
                ent.push_back({j, double(dotk ? -W : W * u)});
              };
              if (p.mining == Mining::BatchHard) {
                const int64_t jp = hd[2 * a], jn = hd[2 * a + 1];
                if (jp >= 0 && jn >= 0) {
                  const A sp = pair_value<A>(p, xa, P.r + jp * D), sn = pair_value<A>(p, xa, P.r + jn * D);
                  const A w = gp * triplet_slope(pair_distance(sp, p.dist) - pair_distance(sn, p.dist) + m, p.soft);
                  add(jp, w, sp);
                  add(jn, -w, sn);
                }
              } else {
                Row<A>& b = *row;
                anchor_row(p, P, a, b);
                anchor_terms<true>(p, b, gp, gn);
                for (int64_t j = 0; j < M; ++j) {
                  if (p.exclude_self && j == a) continue;
                  if (b.W[j] != A(0)) add(j, b.W[j], b.sv[j]);  // (NaN passes)
                  b.W[j] = A(0);
                }
              }
              // dL/da = sum_j c (a - r_j) (euclidean kinds) or sum_j c r_j (dot), in j order
              A* __restrict g = acc.data();
              std::fill(g, g + D, A(0));
              for (const Entry& en : ent) {
                const A c = A(en.c);
                const scalar_t* __restrict rj = P.r + en.j * D;
                if (dotk) {
#pragma omp simd
                  for (int64_t d = 0; d < D; ++d) g[d] += c * static_cast<A>(rj[d]);
                } else {
#pragma omp simd
                  for (int64_t d = 0; d < D; ++d) g[d] += c * (static_cast<A>(xa[d]) - static_cast<A>(rj[d]));
                }
              }
              scalar_t* __restrict o = gep + a * D;
#pragma omp simd
              for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(g[d]);
            }
          }, b, e);
        });
        if (!p.ref_grad) continue;
        // bucket the wave's entries by reference (stable: anchor order), then each reference
        // adds its bucket in that order
        std::vector<int64_t> off(M + 1, 0);
        for (int64_t w = 0; w < W; ++w)
          for (const Entry& en : entries[w]) ++off[en.j + 1];
        for (int64_t j = 0; j < M; ++j) off[j + 1] += off[j];
        std::vector<std::pair<int64_t, double>> order(off[M]);
        {
          std::vector<int64_t> pos(off.begin(), off.end() - 1);
          for (int64_t w = 0; w < W; ++w)
            for (const Entry& en : entries[w]) order[pos[en.j]++] = {w0 + w, en.c};
        }
        torch::stable::parallel_for(0, M, row_grain(D), [&](int64_t b, int64_t e) {
          cpu_detail::with_cpu_isa([&](int64_t jb, int64_t je) {
            for (int64_t j = jb; j < je; ++j) {
              A* __restrict g = racc + j * D;
              const scalar_t* __restrict rj = P.r + j * D;
              for (int64_t q = off[j]; q < off[j + 1]; ++q) {
                const A c = A(order[q].second);
                const scalar_t* __restrict xa = P.x + order[q].first * D;
                // dL/dr_j = sum_a c (r_j - a) (euclidean kinds) or sum_a c a (dot)
                if (dotk) {
#pragma omp simd
                  for (int64_t d = 0; d < D; ++d) g[d] += c * static_cast<A>(xa[d]);
                } else {
#pragma omp simd
                  for (int64_t d = 0; d < D; ++d) g[d] += c * (static_cast<A>(rj[d]) - static_cast<A>(xa[d]));
                }
              }
            }
          }, b, e);
        });
      }
      if (p.ref_grad && !kInPlace) {
        scalar_t* grp = ptr<scalar_t>(gr);
        for (int64_t k = 0; k < M * D; ++k) grp[k] = static_cast<scalar_t>(racc[k]);
      }
    });
  }
};

}  // namespace metric
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::metric::register_pair_kernels<lossext::metric::PairCpu>(m);
}
