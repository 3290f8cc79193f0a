// CPU kernels of the margin-softmax family (Device = MarginCpu, see margin_ops.h).
//
// - Rows are independent; torch::stable::parallel_for splits rows only, and every reduction
//   inside a row runs in a fixed order (float lanes per block of kBlock classes, blocks added
//   in double), so results are bitwise the same for any thread count.
// - margin CE reads each row once: an online softmax over blocks of kBlock classes (block max,
//   rescale, sum of exp from L1), as Milakov & Gimelshein, "Online normalizer calculation for
//   softmax" (2018), Alg. 3, applied per block.
// - Bad labels (not in [0, C) and not ignore_index) raise before any row is read.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cpu.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "../common/cpu_isa.h"
#include "../common/math.h"
#include "margin_ops.h"

namespace lossext {
namespace margin {
namespace {

constexpr int64_t kBlock = 2048;
constexpr int64_t kWorkPerTask = int64_t(1) << 15;  // elements per parallel task, at least

template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }
template <class T> T* ptr(const std::optional<Tensor>& t) { return t ? static_cast<T*>(t->data_ptr()) : nullptr; }

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(cols, 1)); }

void check_targets(const LossSpec& s, const Tensor& target) {
  const char* op = s.op;
  const int64_t* t = ptr<const int64_t>(target);
  for (int64_t i = 0; i < s.N; ++i) {
    if (s.shard) {  // -1: the target is on another shard
      LOSSEXT_CHECK(t[i] == -1 || (t[i] >= 0 && t[i] < s.C), op, ": argument 'target' has value ", t[i],
                    " at index ", i, ", outside [0, ", s.C, ") and not -1 (a target on another shard)");
    } else {
      LOSSEXT_CHECK(t[i] == s.ignore_index || (t[i] >= 0 && t[i] < s.C), op, ": argument 'target' has value ",
                    t[i], " at index ", i, ", outside [0, ", s.C, ") and not ignore_index (", s.ignore_index, ")");
    }
  }
}

template <class scalar_t>
double class_weight_sum(const scalar_t* w, int64_t C) {
  if (w == nullptr) return double(C);
  double s = 0.0;
  for (int64_t j = 0; j < C; ++j) s += double(w[j]);
  return s;
}

// m_new = the running max m after the block [b, e) of z_j = r v_j; returns the shift that exp
// takes in the block: m_new, or 0 while every logit so far is -inf (exp(-inf - 0) = 0, not NaN).
// NaN never wins the max: it shows up in the sum of exps instead.
template <class scalar_t, class A>
inline A block_shift(const scalar_t* __restrict v, int64_t b, int64_t e, A r, double m, double& m_new) {
  A bm = -std::numeric_limits<A>::infinity();
#pragma omp simd reduction(max : bm)
  for (int64_t j = b; j < e; ++j) {
    const A z = r * static_cast<A>(v[j]);
    bm = z > bm ? z : bm;
  }
  m_new = std::max(m, double(bm));
  return m_new == -std::numeric_limits<double>::infinity() ? A(0) : static_cast<A>(m_new);
}

// Online max / sum of exp over z_j = r * v_j, j in [b0, e0), blockwise: folds the segment into
// (m, s). sum_z gets sum_j w_j z_j when kSum.
template <bool kW, bool kSum, class scalar_t, class A>
inline void online_span(const scalar_t* __restrict v, const scalar_t* __restrict w, int64_t b0, int64_t e0,
                        A r, double& m, double& s, double& sum_z) {
  for (int64_t b = b0; b < e0; b += kBlock) {
    const int64_t e = std::min(e0, b + kBlock);
    double m_new;
    const A mf = block_shift(v, b, e, r, m, m_new);
    // z - m with z = r x rounded as in the max above (the max's own term is exp(0) = 1): an fma
    // would keep the product's rounding residual, half an ulp of z, which leaves exp's range
    // for huge logits (a float64 logit of 8e18 gave a loss of inf)
    const auto ex = [&](int64_t j) { return math::exp_softmax(r * static_cast<A>(v[j]) - mf); };
    A bs, bz = A(0);
    if constexpr (kSum) {
      const auto z = [&](int64_t j) { return (kW ? static_cast<A>(w[j]) : A(1)) * r * static_cast<A>(v[j]); };
      const auto sums = cpu_detail::lane_sums<A>(b, e, ex, z);
      bs = sums[0];
      bz = sums[1];
    } else {
      bs = cpu_detail::lane_sum<A>(b, e, ex);
    }
    s = (s == 0.0 ? 0.0 : s * std::exp(m - m_new)) + double(bs);
    m = m_new;
    if constexpr (kSum) sum_z += double(bz);
  }
}

// online_span over [0, n) without the column skip (the target, added by online_add; -1: none).
template <bool kW, bool kSum, class scalar_t, class A>
inline void online_row(const scalar_t* v, const scalar_t* w, int64_t n, int64_t skip, A r, double& m,
                       double& s, double& sum_z) {
  if (skip < 0 || skip >= n) {
    online_span<kW, kSum>(v, w, 0, n, r, m, s, sum_z);
    return;
  }
  online_span<kW, kSum>(v, w, 0, skip, r, m, s, sum_z);
  online_span<kW, kSum>(v, w, skip + 1, n, r, m, s, sum_z);
}

// Calls f(b, e) for [0, skip) and [skip + 1, n) (or [0, n) when skip is outside).
template <class F>
inline void around(int64_t n, int64_t skip, const F& f) {
  if (skip < 0 || skip >= n) {
    f(int64_t(0), n);
    return;
  }
  f(int64_t(0), skip);
  f(skip + 1, n);
}

// A row's w_t and a = keep w_t + spread W (margin_math.h's cross-entropy with smoothing).
template <bool kW, class scalar_t, class A>
inline std::pair<A, A> target_weights(const scalar_t* w, int64_t t, A keep, A spread, A wsum) {
  const A w_t = kW ? static_cast<A>(w[t]) : A(1);
  return {w_t, keep * w_t + spread * wsum};
}

template <class F>
void parallel_rows(int64_t n, int64_t cols, const F& f) {
  torch::stable::parallel_for(0, n, row_grain(cols), [&](int64_t b, int64_t e) {
    cpu_detail::with_cpu_isa(f, b, e);
  });
}

}  // namespace

struct MarginCpu {
  // ---- margin_cross_entropy --------------------------------------------------------------
  static void ce_forward(const CeProblem& p, RowStats& st) {
    const LossSpec& s = p.spec;
    check_targets(s, p.target);
    dispatch_floating(p.cos.scalar_type(), "lossext::margin_cross_entropy", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* cos = ptr<const scalar_t>(p.cos);
      const int64_t* tg = ptr<const int64_t>(p.target);
      const scalar_t* w = ptr<const scalar_t>(p.weight);
      const scalar_t* rs = ptr<const scalar_t>(p.row_scale);
      double* lse = ptr<double>(st.lse);
      double* zy = ptr<double>(st.zy);
      double* wz = ptr<double>(st.wz);
      const auto tm = s.target_margin<double>();  // the target's logit in float64
      const int64_t C = s.C;
      with_bool(w != nullptr, [&](auto kW) {
        with_bool(s.smoothing > 0.0, [&](auto kSum) {
          parallel_rows(s.N, C, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
              const int64_t t = tg[i];
              if (t == s.ignore_index) {
                lse[i] = zy[i] = wz[i] = 0.0;
                continue;
              }
              const scalar_t* row = cos + i * C;
              const A r = rs ? static_cast<A>(rs[i]) : static_cast<A>(s.scale);
              double f, df;
              tm.apply(double(row[t]), f, df);
              const double z_t = acc_logit<A>(double(r) * f);
              double m = -std::numeric_limits<double>::infinity(), sum = 0.0, sz = 0.0;
              online_row<kW.value, kSum.value>(row, w, C, t, r, m, sum, sz);
              online_add(z_t, m, sum);
              lse[i] = row_lse(m, sum);
              zy[i] = z_t;
              wz[i] = sz + (kW.value ? double(w[t]) : 1.0) * z_t;
            }
          });
        });
      });
    });
  }

  static void ce_backward(const CeProblem& p, const Tensor& G, Tensor& grad, Tensor* grad_rs) {
    const LossSpec& s = p.spec;
    dispatch_floating(p.cos.scalar_type(), "lossext::margin_cross_entropy_backward", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* cos = ptr<const scalar_t>(p.cos);
      const int64_t* tg = ptr<const int64_t>(p.target);
      const scalar_t* w = ptr<const scalar_t>(p.weight);
      const scalar_t* rs = ptr<const scalar_t>(p.row_scale);
      const double* lse = ptr<const double>(*p.lse);
      const A* g = ptr<const A>(G);
      scalar_t* out = ptr<scalar_t>(grad);
      scalar_t* out_rs = grad_rs ? ptr<scalar_t>(*grad_rs) : nullptr;
      const auto tm = s.target_margin<double>();
      const int64_t C = s.C;
      const A keep = A(s.keep()), spread = A(s.spread());
      const A wsum = A(class_weight_sum(w, C));
      with_bool(w != nullptr, [&](auto kW) {
        with_bool(out_rs != nullptr, [&](auto kRS) {
          parallel_rows(s.N, C, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
              const int64_t t = tg[i];
              scalar_t* __restrict o = out + i * C;
              if (t == s.ignore_index) {
                std::fill(o, o + C, scalar_t(0));
                if (kRS.value) out_rs[i] = scalar_t(0);
                continue;
              }
              const scalar_t* __restrict row = cos + i * C;
              const A r = rs ? static_cast<A>(rs[i]) : static_cast<A>(s.scale);
              const auto [w_t, a] = target_weights<kW.value>(w, t, keep, spread, wsum);
              // lse as a float pair Lh + Ll: z - lse = (z - Lh) - Ll with z = r x rounded as in the
              // forward (no fma: see online_span)
              const A Lh = static_cast<A>(lse[i]);
              const A Ll = static_cast<A>(lse[i] - double(Lh));
              const A gr = g[i] * r;
              double dr = 0.0;
              around(C, t, [&](int64_t b0, int64_t e0) {
                for (int64_t bb = b0; bb < e0; bb += kBlock) {
                  const int64_t ee = std::min(e0, bb + kBlock);
                  const A bdr = cpu_detail::lane_sum<A>(bb, ee, [&](int64_t j) {
                    const A x = static_cast<A>(row[j]);
                    const A d = a * math::exp_softmax((r * x - Lh) - Ll) -
                                spread * (kW.value ? static_cast<A>(w[j]) : A(1));
                    o[j] = static_cast<scalar_t>(gr * d);
                    return kRS.value ? d * x : A(0);
                  });
                  dr += double(bdr);
                }
              });
              double f, df;
              tm.apply(double(row[t]), f, df);
              const double d_t = target_dlogit(a, keep, spread, w_t, double(r) * f, lse[i]);
              o[t] = static_cast<scalar_t>(target_cos_grad(double(gr) * d_t, df));
              if constexpr (kRS.value) out_rs[i] = static_cast<scalar_t>(double(g[i]) * (dr + d_t * f));
            }
          });
        });
      });
    });
  }

  // One pass over each row (issue #15; margin_ops.h forward_with_grad). Per block of kBlock
  // classes, read from memory once: the running max m_k (as online_span), then e_j = exp(z_j - m_k)
  // written into the gradient with the block's sums (the same lane sums as ce_forward, so lse and
  // the loss are bitwise ce_forward's); after the row, a sweep over its gradient (still in L2: a
  // row of 100k float32 is 400 KB) scales each block by G r a exp(m_k - lse) and subtracts the
  // label-smoothing term G r spread w_j. One read and one write of each element and one exp,
  // against ce_forward + ce_backward's two reads and two exps; e_j <= 1 and exp(m_k - lse) <= 1,
  // so nothing overflows that the two-pass formula would not. float16/bfloat16 take the two
  // passes: e_j rounded to the half dtype before its scaling would cost precision.
  static void ce_forward_with_grad(const CeProblem& p, const Tensor& G, RowStats& st, Tensor& grad,
                                   Tensor* grad_rs) {
    const ScalarType dt = p.cos.scalar_type();
    if (dt != ScalarType::Float && dt != ScalarType::Double) {
      ce_forward_then_backward<MarginCpu>(p, G, st, grad, grad_rs);
      return;
    }
    const LossSpec& s = p.spec;
    check_targets(s, p.target);
    dispatch_floating(dt, "lossext::margin_cross_entropy_with_grad", [&](auto tag) {
      using scalar_t = decltype(tag);
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
        ce_one_pass<scalar_t>(p, G, st, grad, grad_rs);
      }
    });
  }

  template <class scalar_t>
  static void ce_one_pass(const CeProblem& p, const Tensor& G, RowStats& st, Tensor& grad, Tensor* grad_rs) {
    using A = scalar_t;  // float32 and float64 accumulate in their own type, as ce_forward
    const LossSpec& s = p.spec;
    const scalar_t* cos = ptr<const scalar_t>(p.cos);
    const int64_t* tg = ptr<const int64_t>(p.target);
    const scalar_t* w = ptr<const scalar_t>(p.weight);
    const scalar_t* rs = ptr<const scalar_t>(p.row_scale);
    const A* g = ptr<const A>(G);
    double* lse = ptr<double>(st.lse);
    double* zy = ptr<double>(st.zy);
    double* wz = ptr<double>(st.wz);
    scalar_t* out = ptr<scalar_t>(grad);
    scalar_t* out_rs = grad_rs ? ptr<scalar_t>(*grad_rs) : nullptr;
    const auto tm = s.target_margin<double>();
    const int64_t C = s.C;
    const A keep = A(s.keep()), spread = A(s.spread());
    const A wsum = A(class_weight_sum(w, C));
    const int64_t max_blocks = (C + kBlock - 1) / kBlock + 1;
    with_bool(w != nullptr, [&](auto kW) {
      with_bool(s.smoothing > 0.0, [&](auto kSum) {
        with_bool(out_rs != nullptr, [&](auto kRS) {
          parallel_rows(s.N, C, [&](int64_t b, int64_t e) {
            struct Block { int64_t b, e; A shift; double sx; };
            std::vector<Block> blocks(static_cast<size_t>(max_blocks));
            for (int64_t i = b; i < e; ++i) {
              const int64_t t = tg[i];
              scalar_t* __restrict o = out + i * C;
              if (t == s.ignore_index) {
                std::fill(o, o + C, scalar_t(0));
                lse[i] = zy[i] = wz[i] = 0.0;
                if (kRS.value) out_rs[i] = scalar_t(0);
                continue;
              }
              const scalar_t* __restrict row = cos + i * C;
              const A r = rs ? static_cast<A>(rs[i]) : static_cast<A>(s.scale);
              const auto [w_t, a] = target_weights<kW.value>(w, t, keep, spread, wsum);
              double f, df;
              tm.apply(double(row[t]), f, df);
              const double z_t = acc_logit<A>(double(r) * f);
              // pass 1: block maxima, e_j into the gradient, the row's online (m, sum)
              double m = -std::numeric_limits<double>::infinity(), sum = 0.0, sz = 0.0, swx = 0.0;
              int64_t nb = 0;
              around(C, t, [&](int64_t b0, int64_t e0) {
                for (int64_t bb = b0; bb < e0; bb += kBlock) {
                  const int64_t ee = std::min(e0, bb + kBlock);
                  double m_new;
                  const A mf = block_shift(row, bb, ee, r, m, m_new);  // as online_span
                  const auto ex = [&](int64_t j) {
                    const A v = math::exp_softmax(r * static_cast<A>(row[j]) - mf);
                    o[j] = v;
                    return v;
                  };
                  const auto ex_x = [&](int64_t j) { return o[j] * static_cast<A>(row[j]); };
                  const auto wx = [&](int64_t j) { return (kW.value ? static_cast<A>(w[j]) : A(1)) * r * static_cast<A>(row[j]); };
                  const auto w_x = [&](int64_t j) { return (kW.value ? static_cast<A>(w[j]) : A(1)) * static_cast<A>(row[j]); };
                  A bs, bz = A(0), bx = A(0), bwx = A(0);
                  if constexpr (kSum.value && kRS.value) {
                    const auto v = cpu_detail::lane_sums<A>(bb, ee, ex, wx, ex_x, w_x);
                    bs = v[0]; bz = v[1]; bx = v[2]; bwx = v[3];
                  } else if constexpr (kSum.value) {
                    const auto v = cpu_detail::lane_sums<A>(bb, ee, ex, wx);
                    bs = v[0]; bz = v[1];
                  } else if constexpr (kRS.value) {
                    const auto v = cpu_detail::lane_sums<A>(bb, ee, ex, ex_x);
                    bs = v[0]; bx = v[1];
                  } else {
                    bs = cpu_detail::lane_sum<A>(bb, ee, ex);
                  }
                  // (m, sum) exactly as online_span folds it (the shift there is mf too)
                  sum = (sum == 0.0 ? 0.0 : sum * std::exp(m - m_new)) + double(bs);
                  m = m_new;
                  if constexpr (kSum.value) sz += double(bz);
                  if constexpr (kSum.value && kRS.value) swx += double(bwx);
                  blocks[static_cast<size_t>(nb++)] = Block{bb, ee, mf, double(bx)};
                }
              });
              online_add(z_t, m, sum);
              const double L = row_lse(m, sum);
              lse[i] = L;
              zy[i] = z_t;
              wz[i] = sz + (kW.value ? double(w[t]) : 1.0) * z_t;
              // pass 2: p_j = e_j exp(m_k - lse); dL/dcos_j = G r (a p_j - spread w_j)
              const A gr = g[i] * r;
              const A gs = gr * spread;
              double dr = 0.0;
              for (int64_t k = 0; k < nb; ++k) {
                const Block& blk = blocks[static_cast<size_t>(k)];
                const double pk = std::exp(double(blk.shift) - L);  // NaN with L: the row is NaN
                const A fk = static_cast<A>(double(gr) * double(a) * pk);
                if constexpr (kSum.value) {
#pragma omp simd
                  for (int64_t j = blk.b; j < blk.e; ++j) o[j] = o[j] * fk - gs * (kW.value ? static_cast<A>(w[j]) : A(1));
                } else {
#pragma omp simd
                  for (int64_t j = blk.b; j < blk.e; ++j) o[j] = o[j] * fk;
                }
                if constexpr (kRS.value) dr += double(a) * pk * blk.sx;
              }
              const double d_t = target_dlogit(a, keep, spread, w_t, double(r) * f, L);
              o[t] = static_cast<scalar_t>(target_cos_grad(double(gr) * d_t, df));
              if constexpr (kRS.value) {
                // sum over j != t of (a p_j - spread w_j) x_j, then the target's d_t f
                out_rs[i] = static_cast<scalar_t>(double(g[i]) * (dr - double(spread) * swx + d_t * f));
              }
            }
          });
        });
      });
    });
  }

  // ---- shared -------------------------------------------------------------------------------
  static void finalize(const LossSpec& s, const RowStats& st, const Tensor& target, const Tensor* class_weight,
                       Tensor& loss, Tensor& lse_out) {
    check_weight_type(class_weight, loss, "finalize");
    dispatch_floating(loss.scalar_type(), "lossext::margin finalize", [&](auto tag) {
      using scalar_t = decltype(tag);
      const int64_t* tg = ptr<const int64_t>(target);
      const scalar_t* w = class_weight ? ptr<const scalar_t>(*class_weight) : nullptr;
      const double* lse = ptr<const double>(st.lse);
      const double* mx = st.max ? ptr<const double>(*st.max) : nullptr;
      const double* zy = ptr<const double>(st.zy);
      const double* wz = ptr<const double>(st.wz);
      double* lo = ptr<double>(lse_out);
      scalar_t* out = ptr<scalar_t>(loss);
      const double wsum = class_weight_sum(w, s.C);
      double total = 0.0, weight_total = 0.0;
      for (int64_t i = 0; i < s.N; ++i) {
        const int64_t t = tg[i];
        const bool valid = t != s.ignore_index;
        double L = lse[i];
        if (mx) L = valid ? row_lse(mx[i], lse[i]) : 0.0;
        lo[i] = L;
        const double w_t = valid ? (w ? double(w[t]) : 1.0) : 0.0;
        const double li = valid ? row_loss(s.keep(), s.spread(), wsum, w_t, L, zy[i], wz[i]) : 0.0;
        if (s.reduction == Reduction::None) out[i] = static_cast<scalar_t>(li);
        total += li;
        weight_total += w_t;
      }
      if (s.reduction == Reduction::Sum) out[0] = static_cast<scalar_t>(total);
      if (s.reduction == Reduction::Mean) out[0] = static_cast<scalar_t>(total / weight_total);  // 0/0 = NaN
    });
  }

  static void row_grad_scale(const LossSpec& s, const Tensor& grad_output, const Tensor& target,
                             const Tensor* class_weight, Tensor& G) {
    check_weight_type(class_weight, grad_output, "row_grad_scale");
    check_targets(s, target);
    dispatch_floating(grad_output.scalar_type(), s.op, [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const int64_t* tg = ptr<const int64_t>(target);
      const scalar_t* w = class_weight ? ptr<const scalar_t>(*class_weight) : nullptr;
      const scalar_t* go = ptr<const scalar_t>(grad_output);
      A* g = ptr<A>(G);
      double div = 1.0;
      if (s.reduction == Reduction::Mean) {
        div = 0.0;
        for (int64_t i = 0; i < s.N; ++i)
          if (tg[i] != s.ignore_index) div += w ? double(w[tg[i]]) : 1.0;
      }
      for (int64_t i = 0; i < s.N; ++i) {
        const int64_t t = tg[i];
        const double gi = s.reduction == Reduction::None ? double(go[i]) : double(go[0]) / div;
        g[i] = t == s.ignore_index ? A(0) : static_cast<A>(gi);
      }
    });
  }

  static void inv_norms(const Tensor& v, Tensor& out) {
    dispatch_floating(v.scalar_type(), "lossext::margin inv_norms", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* x = ptr<const scalar_t>(v);
      A* o = ptr<A>(out);
      const int64_t R = v.size(0), D = v.size(1);
      parallel_rows(R, D, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const scalar_t* row = x + r * D;
          const A ss = cpu_detail::lane_sum<A>(0, D, [&](int64_t j) { return static_cast<A>(row[j]) * static_cast<A>(row[j]); });
          o[r] = A(1) / std::max(std::sqrt(ss), A(kNormEps));
        }
      });
    });
  }

  static void scale_rows(const Tensor& v, const Tensor& sc, Tensor& out) {
    dispatch_floating(v.scalar_type(), "lossext::margin scale_rows", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* x = ptr<const scalar_t>(v);
      const A* r = ptr<const A>(sc);
      scalar_t* o = ptr<scalar_t>(out);
      const int64_t R = v.size(0), D = v.size(1);
      parallel_rows(R, D, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const A ri = r[i];
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) o[i * D + j] = static_cast<scalar_t>(ri * static_cast<A>(x[i * D + j]));
        }
      });
    });
  }

  // ---- fused linear ------------------------------------------------------------------------
  // The chunk's logit before scale: P_ij (the cosine, normalize) or P_ij + b_j.
  static void fused_forward_chunk(const FusedProblem& p, const Tensor& P, int64_t c0, RowStats& st) {
    const LossSpec& s = p.spec;
    if (c0 == 0) check_targets(s, p.target);
    dispatch_floating(p.x.scalar_type(), "lossext::fused_linear_margin_cross_entropy", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const int64_t k = P.size(1);
      const scalar_t* Pp = ptr<const scalar_t>(P);
      const int64_t* tg = ptr<const int64_t>(p.target);
      const scalar_t* bias = p.bias ? ptr<const scalar_t>(*p.bias) + c0 : nullptr;
      double* ssum = ptr<double>(st.lse);
      double* smax = ptr<double>(*st.max);
      double* zy = ptr<double>(st.zy);
      double* wz = ptr<double>(st.wz);
      const auto tm = s.target_margin<double>();
      const A scale = A(s.scale);
      const bool smooth = s.smoothing > 0.0;
      parallel_rows(s.N, k, [&](int64_t b, int64_t e) {
        std::vector<A> zbuf(k);
        A* __restrict z = zbuf.data();
        for (int64_t i = b; i < e; ++i) {
          if (c0 == 0) {
            smax[i] = -std::numeric_limits<double>::infinity();
            ssum[i] = zy[i] = wz[i] = 0.0;
          }
          const scalar_t* __restrict row = Pp + i * k;
          const int64_t t = tg[i] - c0;  // target column in this chunk, if in [0, k)
          if (bias) {
#pragma omp simd
            for (int64_t j = 0; j < k; ++j) z[j] = scale * (static_cast<A>(row[j]) + static_cast<A>(bias[j]));
          } else {
#pragma omp simd
            for (int64_t j = 0; j < k; ++j) z[j] = scale * static_cast<A>(row[j]);
          }
          const bool here = tg[i] >= 0 && tg[i] != s.ignore_index && t >= 0 && t < k;
          double m = smax[i], sum = ssum[i], sz = 0.0;
          double z_t = 0.0;
          if (here) {  // the target's cosine (or logit) and margin in float64
            double f, df;
            tm.apply(fused_target_cos<A>(row, t, bias), f, df);
            z_t = acc_logit<A>(double(scale) * f);
          }
          online_row<false, true>(z, static_cast<const A*>(nullptr), k, here ? t : -1, A(1), m, sum, sz);
          if (here) {
            online_add(z_t, m, sum);
            zy[i] = z_t;
            sz += z_t;
          }
          smax[i] = m;
          ssum[i] = sum;
          if (smooth) wz[i] += sz;
        }
      });
    });
  }

  static void fused_backward_chunk(const FusedProblem& p, Tensor& P, int64_t c0, const Tensor& G,
                                   Tensor* grad_bias) {
    const LossSpec& s = p.spec;
    if (s.shard && c0 == 0) check_targets(s, p.target);  // (the other backward checks in row_grad_scale)
    dispatch_floating(p.x.scalar_type(), "lossext::fused_linear_margin_cross_entropy_backward", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const int64_t k = P.size(1);
      scalar_t* Pp = ptr<scalar_t>(P);
      const int64_t* tg = ptr<const int64_t>(p.target);
      const scalar_t* bias = p.bias ? ptr<const scalar_t>(*p.bias) + c0 : nullptr;
      const double* lse = ptr<const double>(*p.lse);
      const A* g = ptr<const A>(G);
      const auto tm = s.target_margin<double>();
      const A scale = A(s.scale), keep = A(s.keep()), spread = A(s.spread());
      const A a = keep + spread * A(s.C);
      parallel_rows(s.N, k, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          scalar_t* __restrict row = Pp + i * k;
          if (!s.shard && tg[i] == s.ignore_index) {
            std::fill(row, row + k, scalar_t(0));
            continue;
          }
          const int64_t t = tg[i] - c0;
          const bool here = tg[i] >= 0 && t >= 0 && t < k;
          const A Lh = static_cast<A>(lse[i]);
          const A Ll = static_cast<A>(lse[i] - double(Lh));
          const A gs = g[i] * scale;
          // read before the loop below overwrites the row
          const double c_t = here ? fused_target_cos<A>(row, t, bias) : 0.0;
#pragma omp simd
          for (int64_t j = 0; j < k; ++j) {
            // the forward's rounded logit z (no fma: see online_span), then (z - Lh) - Ll
            const A z = (scale * (static_cast<A>(row[j]) + (bias ? static_cast<A>(bias[j]) : A(0))) - Lh) - Ll;
            row[j] = static_cast<scalar_t>(gs * (a * math::exp_softmax(z) - spread));
          }  // the target column (exp may overflow there: its margin logit is lower) is rewritten below
          if (here) {
            double f, df;
            tm.apply(c_t, f, df);
            const double d_t = target_dlogit(a, keep, spread, 1.0, double(scale) * f, lse[i]);
            row[t] = static_cast<scalar_t>(target_cos_grad(double(gs) * d_t, df));
          }
        }
      });
      if (grad_bias) {
        // column sums in row order: one thread per column range, deterministic
        scalar_t* db = ptr<scalar_t>(*grad_bias) + c0;
        const int64_t N = s.N;
        torch::stable::parallel_for(0, k, 64, [&](int64_t b, int64_t e) {
          for (int64_t j = b; j < e; ++j) {
            double acc = 0.0;
            for (int64_t i = 0; i < N; ++i) acc += double(Pp[i * k + j]);
            db[j] = static_cast<scalar_t>(acc);
          }
        });
      }
    });
  }

  static void project_rows(const Tensor& g, const Tensor& v, const Tensor* inv_norm, Tensor& out) {
    dispatch_floating(out.scalar_type(), "lossext::margin project_rows", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      auto run = [&](auto gtag) {
        using gscalar_t = decltype(gtag);
        const gscalar_t* gp = ptr<const gscalar_t>(g);
        const scalar_t* vp = ptr<const scalar_t>(v);
        const A* rn = inv_norm ? ptr<const A>(*inv_norm) : nullptr;
        scalar_t* op = ptr<scalar_t>(out);
        const int64_t R = g.size(0), D = g.size(1);
        parallel_rows(R, D, [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r) {
            const gscalar_t* gr = gp + r * D;
            const scalar_t* vr = vp + r * D;
            scalar_t* orow = op + r * D;
            A coef = A(0), post = A(1);
            if (rn) {
              const A dot = cpu_detail::lane_sum<A>(0, D, [&](int64_t j) { return static_cast<A>(gr[j]) * static_cast<A>(vr[j]); });
              coef = rn[r] * rn[r] * dot;
              post = rn[r];
            }
#pragma omp simd
            for (int64_t j = 0; j < D; ++j)
              orow[j] = static_cast<scalar_t>(post * (static_cast<A>(gr[j]) - coef * static_cast<A>(vr[j])));
          }
        });
      };
      if (g.scalar_type() == out.scalar_type()) run(scalar_t{}); else run(A{});
    });
  }

  static void addmm_into(Tensor& acc, const Tensor& a, const Tensor& b) {
    STD_TORCH_CHECK(aoti_torch_cpu_addmm_out(acc.get(), acc.get(), a.get(), b.get(), 1.0, 1.0) == AOTI_TORCH_SUCCESS,
                    "lossext: aten::addmm.out failed");
  }

  static void add_into(Tensor& acc, const Tensor& t) {
    dispatch_floating(t.scalar_type(), "lossext::margin add_into", [&](auto tag) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      A* a = ptr<A>(acc);
      const scalar_t* x = ptr<const scalar_t>(t);
      const int64_t n = t.numel();
      torch::stable::parallel_for(0, n, kWorkPerTask, [&](int64_t b, int64_t e) {
        cpu_detail::with_cpu_isa([&](int64_t bb, int64_t ee) {
#pragma omp simd
          for (int64_t j = bb; j < ee; ++j) a[j] += static_cast<A>(x[j]);
        }, b, e);
      });
    });
  }
};

// The chunk matmuls on the CPU, bitwise equal for any thread count: the products are cut into
// fixed tasks (column blocks of kCols classes, or row blocks of kRows rows for dX), each one
// aten::mm call. The tasks run inside a parallel region, where MKL runs single-threaded, and
// with one thread MKL is single-threaded too: so every output element always comes from the
// same call on the same shapes, whatever the thread count (MKL alone may split the inner
// dimension differently for 1 and N threads).
template <>
struct ChunkMatmuls<MarginCpu> {
  static constexpr int64_t kCols = 512;
  static constexpr int64_t kRows = 256;
  static constexpr int64_t kDCols = 128;

  template <class F>
  static void tasks(int64_t n, const F& f) {
    // at least two tasks, so that with several threads even one real task runs in a parallel region
    torch::stable::parallel_for(0, std::max<int64_t>(n, 2), 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < std::min(e, n); ++t) f(t);
    });
  }

  static void logits(const FusedProblem& p, Tensor& P, const Tensor& wc) {
    const int64_t k = P.size(1);
    tasks((k + kCols - 1) / kCols, [&](int64_t t) {
      const int64_t j0 = t * kCols, len = std::min(kCols, k - j0);
      Tensor out = window(P, 0, P.size(0), j0, len);
      mm_out(out, p.xn, torch::stable::transpose(window(wc, j0, len, 0, p.D), 0, 1));
    });
  }

  static void grads(const FusedProblem& p, const Tensor& P, int64_t c0, const Tensor& wc, Tensor& gw,
                    Tensor& acc_x, Tensor* tmp) {
    const int64_t N = P.size(0), k = P.size(1), D = p.D;
    // p.gw_acc (float16/bfloat16, normalize): B^T xn in float32 (see FusedKernels::backward).
    // aten has no CPU mm with a float32 out for half inputs, so B and xn are converted (exact)
    // and multiplied in float32: the same fixed tasks, so still bitwise equal for any thread
    // count. xn is converted per chunk: O(N D) next to the product's O(N k D), k >= 256 or all C.
    std::optional<Tensor> Bf, xf;
    if (p.gw_acc) {
      const ScalarType acc = p.gw_acc->scalar_type();
      Bf = new_tensor({N, k}, acc, P);
      torch::stable::copy_(*Bf, window(P, 0, N, 0, k));
      xf = new_tensor({N, D}, acc, P);
      torch::stable::copy_(*xf, p.xn);
    }
    tasks((k + kCols - 1) / kCols, [&](int64_t t) {
      const int64_t j0 = t * kCols, len = std::min(kCols, k - j0);
      Tensor g = window(gw, j0, len, 0, D);
      if (Bf) {
        Tensor ga = window(*p.gw_acc, j0, len, 0, D);
        mm_out(ga, torch::stable::transpose(window(*Bf, 0, N, j0, len), 0, 1), *xf);
        const Tensor rw = segment(*p.inv_norm_w, c0 + j0, len);
        MarginCpu::project_rows(ga, window(p.w, c0 + j0, len, 0, D), &rw, g);
        return;
      }
      mm_out(g, torch::stable::transpose(window(P, 0, N, j0, len), 0, 1), p.xn);
      if (p.normalize) {
        const Tensor rw = segment(*p.inv_norm_w, c0 + j0, len);
        MarginCpu::project_rows(g, window(p.w, c0 + j0, len, 0, D), &rw, g);
      }
    });
    // dX: row blocks; within one, the classes in blocks of kCols added in order (inner
    // dimension of each call at most kCols): one addmm each (float32, float64), or a product
    // into tmp and an add (half types). Fewer than 2 kRows rows (a row block of the row-block
    // op) in float32/float64: the D columns are cut into kDCols blocks too, so that the product
    // still runs on every thread; the cut follows the shapes and dtype only, never the thread
    // count. (The half types' add_into takes whole rows.)
    const int64_t row_tasks = (N + kRows - 1) / kRows;
    const int64_t dcols = N < 2 * kRows && tmp == nullptr ? kDCols : std::max<int64_t>(D, 1);
    const int64_t col_tasks = std::max<int64_t>(1, (D + dcols - 1) / dcols);
    tasks(row_tasks * col_tasks, [&](int64_t t) {
      const int64_t i0 = (t / col_tasks) * kRows, len = std::min(kRows, N - i0);
      const int64_t d0 = (t % col_tasks) * dcols, dl = std::min(dcols, D - d0);
      Tensor a = window(acc_x, i0, len, d0, dl);
      std::optional<Tensor> tt;
      if (tmp) tt = window(*tmp, i0, len, d0, dl);
      for (int64_t j0 = 0; j0 < k; j0 += kCols) {
        const int64_t cols = std::min(kCols, k - j0);
        accumulate_product<MarginCpu>(a, window(P, i0, len, j0, cols), window(wc, j0, cols, d0, dl),
                                      tt ? &*tt : nullptr);
      }
    });
  }
};

}  // namespace margin
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::margin::register_margin_kernels<lossext::margin::MarginCpu>(m);
}
