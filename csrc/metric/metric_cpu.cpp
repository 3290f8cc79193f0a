// CPU kernels of the metric-learning family (Device = MetricCpu, see metric_ops.h).
//
// - Row loops: torch::stable::parallel_for over rows; a row's squared distance is one lane_sum
//   (cpu_isa.h: the same order for every instruction-set variant), so results are bitwise equal
//   for any thread count and every variant. Reduced losses: per-row float64 values added in row
//   order on one thread.
// - Triplet-Center forward: the distances to all C centers come in tiles, [256 rows] x [512
//   classes], each tile's products f c^T by one aten::mm.out call (MKL) inside a parallel region
//   (so single-threaded, the same calls for any thread count; tasks are row blocks, each walking
//   the class tiles in order). From a tile, s~_ij = |f_i|^2 + |c_j|^2 - 2 f_i . c_j only screens
//   candidates: a class whose s~ is within the product's rounding bound (tol, below) of the row's
//   best is recomputed exactly as sum_d (f_id - c_jd)^2 (the value the loss and the backward use)
//   and compared with the lowest index winning ties. So the argmin and its ties come from the
//   exact distances, never from the GEMM's cancellation (f equal to a center gives s = 0
//   exactly), and do not depend on how MKL blocks the product. Per row only the running min and
//   argmin are kept: O(N + C) memory beyond the inputs, plus one tile per task.
// - Center gradients: each row contributes to its positive center (and, Triplet-Center, to its
//   hardest negative). The contributions are bucketed by class with a stable counting sort (row
//   order inside a class), then each class's row sums its bucket in that order, classes in
//   parallel: no atomics, the same bits for any thread count.
// - Bad labels (outside [0, C)) raise before any row is read.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "../common/cpu_isa.h"
#include "metric_cpu.h"
#include "metric_ops.h"

namespace lossext {
namespace metric {
namespace {
using namespace cpu;

constexpr int64_t kTileRows = 256;
constexpr int64_t kTileCols = 512;

void check_targets(const Problem& p) {
  const int64_t* t = ptr<const int64_t>(p.target);
  for (int64_t i = 0; i < p.N; ++i)
    LOSSEXT_CHECK(t[i] >= 0 && t[i] < p.C, p.op, ": argument 'target' has value ", t[i], " at index ", i,
                  ", outside [0, ", p.C, ")");
}

// G_i = dReducedLoss / dloss_i in A.
template <class scalar_t, class A>
void row_grad_scale(const Problem& p, const Tensor& go, std::vector<A>& g) {
  const scalar_t* gp = ptr<const scalar_t>(go);
  g.resize(p.N);
  const double div = p.reduction == Reduction::Mean ? double(p.N) : 1.0;
  for (int64_t i = 0; i < p.N; ++i)
    g[i] = static_cast<A>(p.reduction == Reduction::None ? double(gp[i]) : double(gp[0]) / div);
}

template <class scalar_t>
void write_loss(const Problem& p, const std::vector<double>& li, Tensor& loss) {
  scalar_t* out = ptr<scalar_t>(loss);
  if (p.reduction == Reduction::None) {
    for (int64_t i = 0; i < p.N; ++i) out[i] = static_cast<scalar_t>(li[i]);
    return;
  }
  double total = 0.0;
  for (int64_t i = 0; i < p.N; ++i) total += li[i];
  out[0] = static_cast<scalar_t>(p.reduction == Reduction::Mean ? total / double(p.N) : total);  // N = 0: NaN
}

// grad_centers[j] = sum over the entries m with cls[m] = j, in m order, of coef[m] (f_{row[m]} - c_j)
// (cls[m] < 0: no entry). Stable counting sort by class, then classes in parallel.
template <class scalar_t, class A>
void center_grad(const Problem& p, const std::vector<int64_t>& cls, const std::vector<int64_t>& row,
                 const std::vector<A>& coef, Tensor& gc) {
  const int64_t C = p.C, D = p.D, M = static_cast<int64_t>(cls.size());
  std::vector<int64_t> off(C + 1, 0);
  for (int64_t m = 0; m < M; ++m)
    if (cls[m] >= 0) ++off[cls[m] + 1];
  for (int64_t j = 0; j < C; ++j) off[j + 1] += off[j];
  std::vector<int64_t> order(off[C]);
  {
    std::vector<int64_t> pos(off.begin(), off.end() - 1);
    for (int64_t m = 0; m < M; ++m)
      if (cls[m] >= 0) order[pos[cls[m]]++] = m;
  }
  const scalar_t* f = ptr<const scalar_t>(p.f);
  const scalar_t* c = ptr<const scalar_t>(p.c);
  scalar_t* out = ptr<scalar_t>(gc);
  torch::stable::parallel_for(0, C, row_grain(D), [&](int64_t b, int64_t e) {
    std::vector<A> acc(D);
    cpu_detail::with_cpu_isa([&](int64_t jb, int64_t je) {
      A* __restrict a = acc.data();
      for (int64_t j = jb; j < je; ++j) {
        const scalar_t* __restrict cj = c + j * D;
        std::fill(a, a + D, A(0));
        for (int64_t q = off[j]; q < off[j + 1]; ++q) {
          const int64_t m = order[q];
          const A k = coef[m];
          const scalar_t* __restrict fi = f + row[m] * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += k * (static_cast<A>(fi[d]) - static_cast<A>(cj[d]));
        }
        scalar_t* __restrict o = out + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(a[d]);
      }
    }, b, e);
  });
}

}  // namespace

struct MetricCpu {
  // ---- center loss ----------------------------------------------------------------------------
  static void center_forward(const Problem& p, Tensor& loss) {
    check_targets(p);
    dispatch_floating(p.f.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* f = ptr<const scalar_t>(p.f);
      const scalar_t* c = ptr<const scalar_t>(p.c);
      const int64_t* t = ptr<const int64_t>(p.target);
      const int64_t D = p.D;
      std::vector<double> li(p.N);
      parallel_rows(p.N, D, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) li[i] = 0.5 * double(sq_dist<A>(f + i * D, c + t[i] * D, D));
      });
      write_loss<scalar_t>(p, li, loss);
    });
  }

  static void center_backward(const Problem& p, const Tensor& go, Tensor& gf, Tensor& gc) {
    check_targets(p);
    dispatch_floating(p.f.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      std::vector<A> g;
      row_grad_scale<scalar_t>(p, go, g);
      const scalar_t* f = ptr<const scalar_t>(p.f);
      const scalar_t* c = ptr<const scalar_t>(p.c);
      const int64_t* t = ptr<const int64_t>(p.target);
      scalar_t* o = ptr<scalar_t>(gf);
      const int64_t D = p.D;
      parallel_rows(p.N, D, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const scalar_t* __restrict fi = f + i * D;
          const scalar_t* __restrict ci = c + t[i] * D;
          scalar_t* __restrict oi = o + i * D;
          const A gi = g[i];
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) oi[d] = static_cast<scalar_t>(gi * (static_cast<A>(fi[d]) - static_cast<A>(ci[d])));
        }
      });
      std::vector<int64_t> cls(t, t + p.N), row(p.N);
      std::vector<A> coef(p.N);
      for (int64_t i = 0; i < p.N; ++i) {
        row[i] = i;
        coef[i] = -g[i];
      }
      center_grad<scalar_t>(p, cls, row, coef, gc);
    });
  }

  // ---- triplet-center loss ----------------------------------------------------------------------
  static void tc_forward(const Problem& p, Tensor& loss, Tensor& neg) {
    check_targets(p);
    dispatch_floating(p.f.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      constexpr bool kConvert = !std::is_same_v<scalar_t, A>;  // half types: tiles in float32
      const ScalarType acc_st = acc_scalar_type(p.f.scalar_type());
      const scalar_t* f = ptr<const scalar_t>(p.f);
      const scalar_t* c = ptr<const scalar_t>(p.c);
      const int64_t* t = ptr<const int64_t>(p.target);
      int64_t* ng = ptr<int64_t>(neg);
      const int64_t N = p.N, C = p.C, D = p.D;
      const bool euclid = p.euclid;
      std::vector<double> li(N);
      // class norms and the classes present (negatives = batch)
      std::vector<A> nc(C);
      parallel_rows(C, D, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) nc[j] = sq_norm<A>(c + j * D, D);
      });
      std::vector<unsigned char> present(C, p.batch ? 0 : 1);
      if (p.batch)
        for (int64_t i = 0; i < N; ++i) present[t[i]] = 1;
      // screening bound for the GEMM's s~ and the exact s (metric_cpu.h)
      const ScreenBound<A> tol = screen_bound<A>(D);
      const int64_t tiles = (N + kTileRows - 1) / kTileRows;
      // at least two tasks, so that with several threads even one tile runs in a parallel region
      // (where MKL is single-threaded: the same calls for any thread count)
      torch::stable::parallel_for(0, std::max<int64_t>(tiles, 2), 1, [&](int64_t tb, int64_t te) {
        for (int64_t tile = tb; tile < std::min(te, tiles); ++tile) {
          const int64_t i0 = tile * kTileRows, R = std::min(kTileRows, N - i0);
          const int64_t K = std::min(kTileCols, C);
          Tensor P = new_tensor({R, K}, acc_st, p.f);
          std::optional<Tensor> fa, ca;
          if constexpr (kConvert) {
            fa = new_tensor({R, D}, acc_st, p.f);
            torch::stable::copy_(*fa, window(p.f, i0, R, 0, D));
            ca = new_tensor({K, D}, acc_st, p.f);
          }
          std::vector<A> best(R, A(0)), nf(R);
          std::vector<int64_t> arg(R, -1);
          cpu_detail::with_cpu_isa([&](int64_t, int64_t) {
            for (int64_t r = 0; r < R; ++r) nf[r] = sq_norm<A>(f + (i0 + r) * D, D);
            for (int64_t c0 = 0; c0 < C; c0 += K) {
              const int64_t k = std::min(K, C - c0);
              Tensor Pk = window(P, 0, R, 0, k);
              if (D > 0) {
                if constexpr (kConvert) {
                  Tensor cw = window(*ca, 0, k, 0, D);
                  torch::stable::copy_(cw, window(p.c, c0, k, 0, D));
                  mm_out(Pk, *fa, torch::stable::transpose(cw, 0, 1));
                } else {
                  mm_out(Pk, window(p.f, i0, R, 0, D), torch::stable::transpose(window(p.c, c0, k, 0, D), 0, 1));
                }
              } else {
                torch::stable::zero_(Pk);
              }
              const A* Pp = ptr<const A>(P);
              for (int64_t r = 0; r < R; ++r) {
                const int64_t i = i0 + r, y = t[i];
                const A* __restrict pr = Pp + r * K;
                const scalar_t* __restrict fi = f + i * D;
                for (int64_t j = 0; j < k; ++j) {
                  const int64_t cls = c0 + j;
                  if (cls == y || !present[cls]) continue;
                  if (arg[r] >= 0) {
                    const A approx = nf[r] + nc[cls] - A(2) * pr[j];
                    // (NaN and inf pass to the exact comparison)
                    if (approx - (tol.rel * (nf[r] + nc[cls]) + tol.abs) > best[r]) continue;
                  }
                  const A key = min_key(sq_dist<A>(fi, c + cls * D, D), euclid);
                  if (better(key, cls, best[r], arg[r])) {
                    best[r] = key;
                    arg[r] = cls;
                  }
                }
              }
            }
            for (int64_t r = 0; r < R; ++r) {
              const int64_t i = i0 + r;
              ng[i] = arg[r];
              if (arg[r] < 0) {  // no negative (C = 1, or one class in the batch): no hinge
                li[i] = 0.0;
                continue;
              }
              const A dp = distance(sq_dist<A>(f + i * D, c + t[i] * D, D), euclid);
              const A dn = distance_from_key(best[r], euclid);
              li[i] = double(hinge(dp + A(p.margin) - dn));
            }
          }, 0, 1);
        }
      });
      write_loss<scalar_t>(p, li, loss);
    });
  }

  static void tc_backward(const Problem& p, const Tensor& go, const Tensor& neg, Tensor& gf, Tensor& gc) {
    check_targets(p);
    const int64_t* ng = ptr<const int64_t>(neg);
    for (int64_t i = 0; i < p.N; ++i)
      LOSSEXT_CHECK(ng[i] >= -1 && ng[i] < p.C, p.op, ": argument 'negative' has value ", ng[i], " at index ", i,
                    ", outside [-1, ", p.C, ") (it is the forward's second output)");
    dispatch_floating(p.f.scalar_type(), p.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      std::vector<A> g;
      row_grad_scale<scalar_t>(p, go, g);
      const scalar_t* f = ptr<const scalar_t>(p.f);
      const scalar_t* c = ptr<const scalar_t>(p.c);
      const int64_t* t = ptr<const int64_t>(p.target);
      scalar_t* o = ptr<scalar_t>(gf);
      const int64_t N = p.N, D = p.D;
      const bool euclid = p.euclid;
      std::vector<int64_t> cls(2 * N, -1), row(2 * N);
      std::vector<A> coef(2 * N, A(0));
      parallel_rows(N, D, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const scalar_t* __restrict fi = f + i * D;
          scalar_t* __restrict oi = o + i * D;
          row[2 * i] = row[2 * i + 1] = i;
          const int64_t n = ng[i];
          A ap = A(0), an = A(0);
          if (n >= 0) {
            const A sp = sq_dist<A>(fi, c + t[i] * D, D), sn = sq_dist<A>(fi, c + n * D, D);
            if (hinge_active(distance(sp, euclid) + A(p.margin) - distance(sn, euclid))) {
              ap = g[i] * distance_slope(sp, euclid);
              an = g[i] * distance_slope(sn, euclid);
              cls[2 * i] = t[i];
              cls[2 * i + 1] = n;
              coef[2 * i] = -ap;
              coef[2 * i + 1] = an;
            }
          }
          const scalar_t* __restrict cp = c + t[i] * D;
          const scalar_t* __restrict cn = c + (n >= 0 ? n : t[i]) * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) {
            const A x = static_cast<A>(fi[d]);
            oi[d] = static_cast<scalar_t>(ap * (x - static_cast<A>(cp[d])) - an * (x - static_cast<A>(cn[d])));
          }
        }
      });
      center_grad<scalar_t>(p, cls, row, coef, gc);
    });
  }
};

}  // namespace metric
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::metric::register_metric_kernels<lossext::metric::MetricCpu>(m);
}
