// CPU kernels of the detection family's focal and box losses (sigmoid_focal_loss on the
// element-wise pattern's CpuDevice).
//
// Determinism: reductions run over fixed chunks of boxes or rows (whatever the thread count),
// each summed in lane_sum's fixed order per block into a double, the chunks then added in
// order on one thread: results are bitwise equal for 1 and N threads and for every
// instruction-set variant.
// Bad labels (softmax focal: outside [0, C) and not ignore_index) raise before any row is read.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/library.h>

#include "../common/cpu_helpers.h"
#include "../common/cpu_isa.h"
#include "../common/pointwise_cpu.h"
#include "detection_ops.h"

namespace lossext {
namespace detection {
namespace {

using cpu_helpers::ptr;

constexpr int64_t kChunk = 4096;  // boxes (or rows) per fixed chunk of a reduction
constexpr int64_t kBlock = cpu_detail::kTile;  // terms per lane_sum call, added into a double

template <class T> const T* opt_ptr(const std::optional<Tensor>& t) {
  return t ? static_cast<const T*>(t->data_ptr()) : nullptr;
}

// f(chunk, b, e) for every fixed chunk [b, e) of [0, n), in parallel.
template <class F>
void for_chunks(int64_t n, int64_t work_per_item, const F& f) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  cpu_helpers::parallel_rows(chunks, kChunk * work_per_item, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) f(c, c * kChunk, std::min(n, (c + 1) * kChunk));
  });
}

inline double sum_in_order(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

template <class A, class scalar_t>
inline Box<A> load_box(const scalar_t* p) {
  return {static_cast<A>(p[0]), static_cast<A>(p[1]), static_cast<A>(p[2]), static_cast<A>(p[3])};
}

// f(std::integral_constant<int, mode>) for the problem's mode: the box loops are compiled per
// mode, with no branch on it inside (so that they vectorize).
template <class F>
void with_box_mode(int64_t mode, const F& f) {
  switch (static_cast<BoxMode>(mode)) {
    case BoxMode::IoU: f(std::integral_constant<int, 0>{}); break;
    case BoxMode::GIoU: f(std::integral_constant<int, 1>{}); break;
    case BoxMode::DIoU: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 3>{});
  }
}

template <class scalar_t>
void box_forward_t(const BoxProblem& p, Tensor& loss) {
  using A = acc_t<scalar_t>;
  const auto op = BoxIouOp<A>::make(p.mode, p.eps);
  const scalar_t* b1 = ptr<const scalar_t>(p.boxes1);
  const scalar_t* b2 = ptr<const scalar_t>(p.boxes2);
  scalar_t* out = ptr<scalar_t>(loss);
  if (p.reduction == Reduction::None) {
    with_box_mode(p.mode, [&](auto M) {
      for_chunks(p.n, 8, [&](int64_t, int64_t b, int64_t e) {
        const auto o = op;  // a local copy: GCC does not vectorize reads through the captured reference
#pragma omp simd
        for (int64_t k = b; k < e; ++k)
          out[k] = static_cast<scalar_t>(o.template value<M.value>(load_box<A>(b1 + 4 * k), load_box<A>(b2 + 4 * k)));
      });
    });
    return;
  }
  std::vector<double> partial((p.n + kChunk - 1) / kChunk, 0.0);
  with_box_mode(p.mode, [&](auto M) {
    for_chunks(p.n, 8, [&](int64_t c, int64_t b, int64_t e) {
      double s = 0.0;
      for (int64_t blk = b; blk < e; blk += kBlock) {
        s += double(cpu_detail::lane_sum<A>(blk, std::min(e, blk + kBlock), [&](int64_t k) {
          return op.template value<M.value>(load_box<A>(b1 + 4 * k), load_box<A>(b2 + 4 * k));
        }));
      }
      partial[c] = s;
    });
  });
  const double total = sum_in_order(partial);
  // 'mean' of no boxes is 0 (torchvision's box losses)
  const double r = p.reduction == Reduction::Mean ? (p.n > 0 ? total / double(p.n) : 0.0) : total;
  *out = static_cast<scalar_t>(r);
}

template <class scalar_t>
void box_backward_t(const BoxProblem& p, const Tensor& grad_output, Tensor& grad1, Tensor& grad2) {
  using A = acc_t<scalar_t>;
  const auto op = BoxIouOp<A>::make(p.mode, p.eps);
  const scalar_t* b1 = ptr<const scalar_t>(p.boxes1);
  const scalar_t* b2 = ptr<const scalar_t>(p.boxes2);
  const scalar_t* go = ptr<const scalar_t>(grad_output);
  scalar_t* g1 = ptr<scalar_t>(grad1);
  scalar_t* g2 = ptr<scalar_t>(grad2);
  const bool per_box = p.reduction == Reduction::None;
  const A scale = static_cast<A>(p.grad_scale());
  const A go0 = per_box ? A(0) : static_cast<A>(go[0]) * scale;
  auto run = [&](auto M, auto kPerBox) {
    for_chunks(p.n, 16, [&](int64_t, int64_t b, int64_t e) {
      // boxes are independent and the outputs never alias the inputs (fresh tensors): one box
      // per lane (GCC does not vectorize this loop by itself: eight output streams)
#pragma omp simd
      for (int64_t k = b; k < e; ++k) {
        A g = go0;
        if constexpr (kPerBox.value) g = static_cast<A>(go[k]);
        const BoxGrad<A> r = op.template backward<M.value>(load_box<A>(b1 + 4 * k), load_box<A>(b2 + 4 * k), g);
        scalar_t* o1 = g1 + 4 * k;
        scalar_t* o2 = g2 + 4 * k;
        o1[0] = static_cast<scalar_t>(r.g[0]); o1[1] = static_cast<scalar_t>(r.g[1]);
        o1[2] = static_cast<scalar_t>(r.g[2]); o1[3] = static_cast<scalar_t>(r.g[3]);
        o2[0] = static_cast<scalar_t>(r.g[4]); o2[1] = static_cast<scalar_t>(r.g[5]);
        o2[2] = static_cast<scalar_t>(r.g[6]); o2[3] = static_cast<scalar_t>(r.g[7]);
      }
    });
  };
  with_box_mode(p.mode, [&](auto M) {
    if (per_box) run(M, std::true_type{}); else run(M, std::false_type{});
  });
}

// ---- softmax focal loss --------------------------------------------------------------------

void check_targets(const FocalProblem& p) {
  const int64_t* t = ptr<const int64_t>(p.target);
  const int64_t rows = p.N * p.S;
  for (int64_t i = 0; i < rows; ++i) {
    LOSSEXT_CHECK(t[i] == p.ignore_index || (t[i] >= 0 && t[i] < p.C), p.op, ": argument 'target' has value ", t[i],
                  " at index ", i, ", outside [0, ", p.C, ") and not ignore_index (", p.ignore_index, ")");
  }
}

int64_t count_kept(const FocalProblem& p) {
  const int64_t* t = ptr<const int64_t>(p.target);
  int64_t n = 0;
  for (int64_t i = 0, rows = p.N * p.S; i < rows; ++i) n += t[i] != p.ignore_index;
  return n;
}

// The rows run in blocks of kRowBlock: a first loop takes each row's softmax statistics (its
// max and sum of exp(z - max), the target's z_t - max and the class factor) into the block's
// arrays, and the focal math of the rows (a log, an expm1, a power) then runs vectorized across
// the block, where one row at a time it cost as much as the row's exps. Ignored rows get
// factor 0 and the statistics of p_t = 1 (lp = 0): their terms are 0, never a read of the row.
constexpr int64_t kRowBlock = 256;

template <class A>
struct RowBlock {
  A zt[kRowBlock];   // z_t - max
  A sum[kRowBlock];  // sum of exp(z - max)
  A f[kRowBlock];    // w_t alpha_t, 0 for an ignored row
};

// The row's class factor w_t alpha_t (1 where neither is given).
template <class A, class scalar_t>
inline A class_factor(const scalar_t* alpha, const scalar_t* weight, int64_t t) {
  A f = A(1);
  if (alpha) f *= static_cast<A>(alpha[t]);
  if (weight) f *= static_cast<A>(weight[t]);
  return f;
}

// Rows [b, e) of one block into blk. The max skips NaN (a NaN logit makes its exp, so the sum
// and the loss, NaN). kContig: S = 1 (classification rows), contiguous loads; else the class
// stride S ([N, C, d...] logits). kStore: exp(z_c - max) of row r also goes to ev + (r - b) C.
template <class A, bool kContig, bool kStore, class scalar_t>
inline void block_stats(const FocalProblem& p, const scalar_t* __restrict z, const int64_t* tg, const scalar_t* al,
                        const scalar_t* wt, int64_t b, int64_t e, RowBlock<A>& blk, A* __restrict ev) {
  const int64_t C = p.C, S = p.S, st = kContig ? 1 : S;
  for (int64_t r = b; r < e; ++r) {
    const int64_t i = r - b, t = tg[r];
    if (t == p.ignore_index) {
      blk.zt[i] = A(0), blk.sum[i] = A(1), blk.f[i] = A(0);
      continue;
    }
    const scalar_t* zr = z + (r / S) * C * S + r % S;
    A m = static_cast<A>(zr[0]);
#pragma omp simd reduction(max : m)
    for (int64_t c = 1; c < C; ++c) m = std::max(m, static_cast<A>(zr[c * st]));
    const A mm = m;
    A* __restrict er = kStore ? ev + i * C : nullptr;
    blk.sum[i] = cpu_detail::lane_sum<A>(0, C, [&](int64_t c) {
      const A v = math::exp_softmax(static_cast<A>(zr[c * st]) - mm);
      if constexpr (kStore) er[c] = v;
      return v;
    });
    blk.zt[i] = static_cast<A>(zr[t * st]) - mm;
    blk.f[i] = class_factor<A>(al, wt, t);
  }
}

// Rows per block: kRowBlock, fewer for wide rows so that the backward's exps (rows x C) stay
// within about 64 KiB.
inline int64_t rows_per_block(int64_t C) { return std::clamp<int64_t>(16384 / std::max<int64_t>(C, 1), 1, kRowBlock); }

template <class scalar_t, bool kContig>
void focal_forward_t(const FocalProblem& p, Tensor& loss) {
  using A = acc_t<scalar_t>;
  check_targets(p);
  const scalar_t* z = ptr<const scalar_t>(p.logits);
  const int64_t* tg = ptr<const int64_t>(p.target);
  const scalar_t* al = opt_ptr<scalar_t>(p.alpha);
  const scalar_t* wt = opt_ptr<scalar_t>(p.weight);
  const int64_t rows = p.N * p.S;
  const A gamma = static_cast<A>(p.gamma);
  const bool per_row = p.reduction == Reduction::None;
  scalar_t* out = ptr<scalar_t>(loss);
  std::vector<double> partial(per_row ? 0 : (rows + kChunk - 1) / kChunk, 0.0);
  for_chunks(rows, p.C, [&](int64_t c, int64_t b, int64_t e) {
    RowBlock<A> blk;
    A v[kRowBlock];
    double s = 0.0;
    for (int64_t bb = b; bb < e; bb += kRowBlock) {
      const int64_t n = std::min(kRowBlock, e - bb);
      block_stats<A, kContig, false>(p, z, tg, al, wt, bb, bb + n, blk, nullptr);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) v[i] = blk.f[i] * focal_value(blk.zt[i] - math::log(blk.sum[i]), gamma);
      if (per_row) {
        for (int64_t i = 0; i < n; ++i) out[bb + i] = static_cast<scalar_t>(v[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) s += double(v[i]);  // in row order
      }
    }
    if (!per_row) partial[c] = s;
  });
  if (per_row) return;
  const double total = sum_in_order(partial);
  // 'mean': over the rows not ignored (0 / 0 = NaN when every row is, as F.cross_entropy)
  const double r = p.reduction == Reduction::Mean ? total / double(count_kept(p)) : total;
  *out = static_cast<scalar_t>(r);
}

template <class scalar_t, bool kContig>
void focal_backward_t(const FocalProblem& p, const Tensor& grad_output, Tensor& grad) {
  using A = acc_t<scalar_t>;
  check_targets(p);
  const scalar_t* z = ptr<const scalar_t>(p.logits);
  const int64_t* tg = ptr<const int64_t>(p.target);
  const scalar_t* al = opt_ptr<scalar_t>(p.alpha);
  const scalar_t* wt = opt_ptr<scalar_t>(p.weight);
  const scalar_t* go = ptr<const scalar_t>(grad_output);
  scalar_t* g = ptr<scalar_t>(grad);
  const int64_t rows = p.N * p.S, C = p.C, S = p.S, st = kContig ? 1 : S;
  const A gamma = static_cast<A>(p.gamma);
  const bool per_row = p.reduction == Reduction::None;
  const double scale = p.reduction == Reduction::Mean ? 1.0 / double(count_kept(p)) : 1.0;
  const A go0 = per_row ? A(0) : static_cast<A>(double(go[0]) * scale);
  const int64_t rb = rows_per_block(C);
  for_chunks(rows, 2 * C, [&](int64_t, int64_t b, int64_t r_end) {
    RowBlock<A> blk;
    A k[kRowBlock], inv[kRowBlock];
    std::vector<A> e(static_cast<size_t>(rb * C));  // the block's exp(z_c - max), row by row
    for (int64_t bb = b; bb < r_end; bb += rb) {
      const int64_t n = std::min(rb, r_end - bb);
      block_stats<A, kContig, true>(p, z, tg, al, wt, bb, bb + n, blk, e.data());
      // dFL/dz_c = k (delta_c - p_c), k = g_r w_t alpha_t A(lp) (0 on ignored rows)
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const A up = per_row ? static_cast<A>(go[bb + i]) : go0;
        k[i] = up * blk.f[i] * focal_coef(blk.zt[i] - math::log(blk.sum[i]), gamma);
        inv[i] = A(1) / blk.sum[i];
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = bb + i, t = tg[r];
        scalar_t* gr = g + (r / S) * C * S + r % S;
        if (t == p.ignore_index) {
          for (int64_t c = 0; c < C; ++c) gr[c * st] = static_cast<scalar_t>(0.0f);
          continue;
        }
        const A* __restrict ev = e.data() + i * C;
        const A ki = k[i], ii = inv[i];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) gr[c * st] = static_cast<scalar_t>(ki * ((c == t ? A(1) : A(0)) - ev[c] * ii));
      }
    }
  });
}

struct DetectionCpu {
  static void box_forward(const BoxProblem& p, Tensor& loss) {
    dispatch_floating(p.boxes1.scalar_type(), p.op, [&](auto tag) { box_forward_t<decltype(tag)>(p, loss); });
  }
  static void box_backward(const BoxProblem& p, const Tensor& go, Tensor& g1, Tensor& g2) {
    dispatch_floating(p.boxes1.scalar_type(), p.op, [&](auto tag) { box_backward_t<decltype(tag)>(p, go, g1, g2); });
  }
  static void softmax_focal_forward(const FocalProblem& p, Tensor& loss) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) {
      with_bool(p.S == 1, [&](auto contig) { focal_forward_t<decltype(tag), decltype(contig)::value>(p, loss); });
    });
  }
  static void softmax_focal_backward(const FocalProblem& p, const Tensor& go, Tensor& grad) {
    dispatch_floating(p.logits.scalar_type(), p.op, [&](auto tag) {
      with_bool(p.S == 1, [&](auto contig) { focal_backward_t<decltype(tag), decltype(contig)::value>(p, go, grad); });
    });
  }
};

}  // namespace
}  // namespace detection
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::detection::register_detection_kernels<lossext::CpuDevice, lossext::detection::DetectionCpu>(m);
}
