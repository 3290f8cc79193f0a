// lossext metric-learning family (header-only libtorch API): Center loss (Wen et al., ECCV 2016)
// and Triplet-Center loss (He et al., CVPR 2018): center_loss and triplet_center_loss, with the
// Triplet-Center parameters in TripletCenterOptions; the triplet loss with online mining
// (triplet_margin_loss, TripletMarginOptions) and the contrastive loss (contrastive_loss,
// ContrastiveOptions) over the batch or a reference set. The autograd wrappers are
// lossext/metric/ops.py's.
//
//   - features [N, D], target [N] class labels (int64; int32, int16, int8 and uint8 are
//     converted), centers [C, D] (C > 0) of the features' dtype and device;
//   - gradients flow to the features and the centers; Mean divides by N.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include "detail/common.h"
#include "detail/rowwise.h"

namespace lossext {

enum class CenterDistance : int64_t { SquaredEuclidean = 0, Euclidean = 1 };
enum class CenterNegatives : int64_t { All = 0, Batch = 1 };

/// Parameters of triplet_center_loss (the Python defaults):
///   lossext::TripletCenterOptions{.margin = 1.0, .distance = lossext::CenterDistance::Euclidean}
struct TripletCenterOptions {
  double margin = 5.0;                                      ///< m >= 0
  CenterDistance distance = CenterDistance::SquaredEuclidean;  ///< 1/2 |f - c|^2, or sqrt(max(|f - c|^2, 1e-12))
  CenterNegatives negatives = CenterNegatives::All;         ///< all other centers, or the batch's classes
  Reduction reduction = Reduction::Mean;                    ///< Mean divides by N
};

enum class Mining : int64_t { BatchHard = 0, BatchAll = 1, SemiHard = 2 };
enum class PairDistance : int64_t { Euclidean = 0, SquaredEuclidean = 1, Cosine = 2 };
/// Mean: batch_all and contrastive over the terms with a positive loss, the other minings over all
/// mined triplets (as the Python 'mean'); MeanAll, MeanNonzero choose; None: per-anchor sums [N].
enum class PairReduction : int64_t { None = 0, Mean = 1, Sum = 2, MeanAll = 3, MeanNonzero = 4 };

/// Parameters of triplet_margin_loss (the Python defaults), e.g.
///   lossext::TripletMarginOptions{.margin = 0.3, .mining = lossext::Mining::SemiHard}
struct TripletMarginOptions {
  double margin = 0.2;                                  ///< >= 0 (unused with soft_margin)
  Mining mining = Mining::BatchHard;
  PairDistance distance = PairDistance::Euclidean;      ///< Cosine L2-normalizes first
  bool normalize = false;                               ///< L2-normalize the embeddings first
  bool soft_margin = false;                             ///< softplus(d_ap - d_an) (Hermans et al.)
  PairReduction reduction = PairReduction::Mean;
};

/// Parameters of contrastive_loss (pytorch-metric-learning's defaults).
struct ContrastiveOptions {
  double pos_margin = 0.0;                              ///< >= 0
  double neg_margin = 1.0;                              ///< >= 0
  PairDistance distance = PairDistance::Euclidean;
  PairReduction reduction = PairReduction::Mean;        ///< Mean: over the non-zero terms, per kind
};

namespace detail {

struct MetricOps {
  using Center = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
  using CenterBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                            const at::Tensor&, int64_t);
  using Tc = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                                int64_t, int64_t, int64_t);
  using TcBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const at::Tensor&, double, int64_t,
                                                        int64_t, int64_t);
  c10::TypedOperatorHandle<Center> center = find_op<Center>("lossext::center_loss");
  c10::TypedOperatorHandle<CenterBackward> center_bwd = find_op<CenterBackward>("lossext::center_loss_backward");
  c10::TypedOperatorHandle<Tc> tc = find_op<Tc>("lossext::triplet_center_loss");
  c10::TypedOperatorHandle<TcBackward> tc_bwd = find_op<TcBackward>("lossext::triplet_center_loss_backward");
  using T4 = const at::Tensor&;
  using Triplet = std::tuple<at::Tensor, at::Tensor, at::Tensor>(T4, T4, T4, T4, bool, double, int64_t, int64_t, bool,
                                                                 int64_t);
  using TripletBackward = std::tuple<at::Tensor, at::Tensor>(T4, T4, T4, T4, T4, T4, T4, bool, double, int64_t,
                                                             int64_t, bool, int64_t, bool);
  using Contrastive = std::tuple<at::Tensor, at::Tensor>(T4, T4, T4, T4, bool, double, double, int64_t, int64_t);
  using ContrastiveBackward = std::tuple<at::Tensor, at::Tensor>(T4, T4, T4, T4, T4, T4, bool, double, double,
                                                                 int64_t, int64_t, bool);
  c10::TypedOperatorHandle<Triplet> triplet = find_op<Triplet>("lossext::triplet_margin_loss");
  c10::TypedOperatorHandle<TripletBackward> triplet_bwd =
      find_op<TripletBackward>("lossext::triplet_margin_loss_backward");
  c10::TypedOperatorHandle<Contrastive> contrastive = find_op<Contrastive>("lossext::contrastive_loss");
  c10::TypedOperatorHandle<ContrastiveBackward> contrastive_bwd =
      find_op<ContrastiveBackward>("lossext::contrastive_loss_backward");

  static const MetricOps& get() {
    static const MetricOps o;
    return o;
  }
};

// features, centers and target checked as the Python functions do; returns the int64 target.
inline at::Tensor check_metric_inputs(const char* fn, const at::Tensor& f, const at::Tensor& target,
                                      const at::Tensor& c) {
  check_rows(fn, "features", f, "[N, D]");
  check_rows(fn, "centers", c, "[C, D]");
  TORCH_CHECK_TYPE(c.scalar_type() == f.scalar_type(), fn, ": centers dtype ", c.scalar_type(),
                   " does not match features dtype ", f.scalar_type());
  TORCH_CHECK_VALUE(c.device() == f.device(), fn, ": centers is on ", c.device(), " but features is on ", f.device());
  TORCH_CHECK_VALUE(c.size(1) == f.size(1), fn, ": centers has D = ", c.size(1), " but features have D = ", f.size(1));
  TORCH_CHECK_VALUE(c.size(0) > 0, fn, ": centers has no classes (shape ", c.sizes(), ")");
  return check_labels(fn, target, f.size(0), f, "features");
}

struct CenterLossFunction : torch::autograd::Function<CenterLossFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& f, const at::Tensor& target,
                            const at::Tensor& c, int64_t reduction) {
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({f, target, c});
    return MetricOps::get().center.call(f, target, c, reduction);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    at::Tensor gf, gc;
    {
      at::NoGradGuard no_grad;
      std::tie(gf, gc) = MetricOps::get().center_bwd.call(grad, s[0], s[1], s[2], ctx->saved_data["reduction"].toInt());
    }
    if (!ctx->needs_input_grad(0)) gf = at::Tensor();
    if (!ctx->needs_input_grad(2)) gc = at::Tensor();
    refuse_double_backward("lossext::center_loss (C++ autograd)", {&grad, &s[0], &s[2]}, {&gf, &gc});
    return {gf, at::Tensor(), gc, at::Tensor()};
  }
};

struct TripletCenterFunction : torch::autograd::Function<TripletCenterFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& f, const at::Tensor& target,
                            const at::Tensor& c, double margin, int64_t distance, int64_t negatives, int64_t reduction) {
    auto [loss, neg] = MetricOps::get().tc.call(f, target, c, margin, distance, negatives, reduction);
    ctx->saved_data["params"] = std::vector<int64_t>{distance, negatives, reduction};
    ctx->saved_data["margin"] = margin;
    ctx->save_for_backward({f, target, c, neg});
    return loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    const auto p = ctx->saved_data["params"].toIntVector();
    at::Tensor gf, gc;
    {
      at::NoGradGuard no_grad;
      std::tie(gf, gc) = MetricOps::get().tc_bwd.call(grad, s[0], s[1], s[2], s[3], ctx->saved_data["margin"].toDouble(),
                                                      p[0], p[1], p[2]);
    }
    if (!ctx->needs_input_grad(0)) gf = at::Tensor();
    if (!ctx->needs_input_grad(2)) gc = at::Tensor();
    refuse_double_backward("lossext::triplet_center_loss (C++ autograd)", {&grad, &s[0], &s[2]}, {&gf, &gc});
    return {gf, at::Tensor(), gc, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The pair ops' arguments: (embeddings, labels, reference, reference labels, exclude_self) with
// the batch as its own reference when none is given, L2-normalized when asked.
struct PairInputs {
  at::Tensor x, y, r, ry;
  bool self_ref;
};

inline PairInputs check_pair_inputs(const char* fn, const at::Tensor& x, const at::Tensor& y, const OptTensor& r,
                                    const OptTensor& ry, bool normalize) {
  check_rows(fn, "embeddings", x, "[N, D]");
  const auto norm = [](const at::Tensor& t) { return t / t.norm(2, {1}, true).clamp_min(1e-12).expand_as(t); };
  PairInputs p;
  p.y = check_labels(fn, y, x.size(0), x, "embeddings");
  const bool has_r = r.has_value() && r->defined(), has_ry = ry.has_value() && ry->defined();
  TORCH_CHECK_VALUE(has_r == has_ry, fn, ": ref_embeddings and ref_labels must be given together");
  p.x = normalize ? norm(x) : x;
  p.self_ref = !has_r;
  if (!has_r) {
    p.r = p.x;
    p.ry = p.y;
    return p;
  }
  check_rows(fn, "ref_embeddings", *r, "[M, D]");
  TORCH_CHECK_TYPE(r->scalar_type() == x.scalar_type(), fn, ": ref_embeddings dtype ", r->scalar_type(),
                   " does not match embeddings dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(r->device() == x.device(), fn, ": ref_embeddings is on ", r->device(), " but embeddings is on ",
                    x.device());
  TORCH_CHECK_VALUE(r->size(1) == x.size(1), fn, ": ref_embeddings has D = ", r->size(1), " but embeddings have D = ",
                    x.size(1));
  p.ry = check_labels(fn, *ry, r->size(0), x, "embeddings");
  p.r = normalize ? norm(*r) : *r;
  return p;
}

// The op's reduction (0 none, 1 mean over all terms, 2 sum, 3 mean over the non-zero ones).
inline int64_t pair_reduction(const char* fn, PairReduction r, bool mean_nonzero) {
  const auto v = static_cast<int64_t>(r);
  TORCH_CHECK_VALUE(v >= 0 && v <= 4, fn, ": reduction must be a PairReduction, got ", v);
  if (r == PairReduction::Mean) return mean_nonzero ? 3 : 1;
  return r == PairReduction::MeanAll ? 1 : (r == PairReduction::MeanNonzero ? 3 : v);
}

inline void check_margin(const char* fn, const char* name, double v) {
  check_finite(fn, name, v);
  TORCH_CHECK_VALUE(v >= 0.0, fn, ": ", name, " must be >= 0, got ", v);
}

// One autograd wrapper for both pair ops: kTriplet picks the op and its saved outputs (triplet:
// hard and counts; contrastive: counts).
template <bool kTriplet>
struct PairFunction : torch::autograd::Function<PairFunction<kTriplet>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& r, const at::Tensor& ry, bool self_ref, double m1, double m2,
                            int64_t mining, int64_t dist, bool soft, int64_t red) {
    const MetricOps& o = MetricOps::get();
    at::Tensor loss, hard, counts;
    if constexpr (kTriplet) {
      std::tie(loss, hard, counts) = o.triplet.call(x, y, r, ry, self_ref, m1, mining, dist, soft, red);
    } else {
      std::tie(loss, counts) = o.contrastive.call(x, y, r, ry, self_ref, m1, m2, dist, red);
      hard = counts;
    }
    ctx->saved_data["self_ref"] = self_ref;
    ctx->saved_data["soft"] = soft;
    ctx->saved_data["m"] = std::vector<double>{m1, m2};
    ctx->saved_data["p"] = std::vector<int64_t>{mining, dist, red};
    ctx->save_for_backward({x, y, r, ry, hard, counts});
    return loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad = grad_outputs[0];
    const auto s = ctx->get_saved_variables();
    const auto m = ctx->saved_data["m"].toDoubleVector();
    const auto p = ctx->saved_data["p"].toIntVector();
    const bool self_ref = ctx->saved_data["self_ref"].toBool(), soft = ctx->saved_data["soft"].toBool();
    const bool ref_grad = ctx->needs_input_grad(2);
    at::Tensor ge, gr;
    {
      at::NoGradGuard no_grad;
      const MetricOps& o = MetricOps::get();
      if constexpr (kTriplet) {
        std::tie(ge, gr) = o.triplet_bwd.call(grad, s[0], s[1], s[2], s[3], s[4], s[5], self_ref, m[0], p[0], p[1],
                                              soft, p[2], ref_grad);
      } else {
        std::tie(ge, gr) = o.contrastive_bwd.call(grad, s[0], s[1], s[2], s[3], s[5], self_ref, m[0], m[1], p[1],
                                                  p[2], ref_grad);
      }
    }
    if (!ctx->needs_input_grad(0)) ge = at::Tensor();
    if (!ref_grad) gr = at::Tensor();
    refuse_double_backward(kTriplet ? "lossext::triplet_margin_loss (C++ autograd)"
                                    : "lossext::contrastive_loss (C++ autograd)",
                           {&grad, &s[0], &s[2]}, {&ge, &gr});
    return {ge, at::Tensor(), gr, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <bool kTriplet>
inline torch::Tensor pair_loss(const PairInputs& in, double m1, double m2, int64_t mining, int64_t dist, bool soft,
                               int64_t red) {
  const bool grad = at::GradMode::is_enabled() && (in.x.requires_grad() || in.r.requires_grad());
  if (grad) return PairFunction<kTriplet>::apply(in.x, in.y, in.r, in.ry, in.self_ref, m1, m2, mining, dist, soft, red);
  const MetricOps& o = MetricOps::get();
  if constexpr (kTriplet) return std::get<0>(o.triplet.call(in.x, in.y, in.r, in.ry, in.self_ref, m1, mining, dist, soft, red));
  return std::get<0>(o.contrastive.call(in.x, in.y, in.r, in.ry, in.self_ref, m1, m2, dist, red));
}

}  // namespace detail

/// Triplet loss with online mining (FaceNet; Hermans et al., 2017) over the batch, or over a
/// reference set (ref_embeddings [M, D], ref_labels [M]): see lossext.functional.triplet_margin_loss.
inline torch::Tensor triplet_margin_loss(const torch::Tensor& embeddings, const torch::Tensor& labels,
                                         const TripletMarginOptions& o = {},
                                         const std::optional<torch::Tensor>& ref_embeddings = std::nullopt,
                                         const std::optional<torch::Tensor>& ref_labels = std::nullopt) {
  const char* fn = "lossext::triplet_margin_loss";
  detail::check_margin(fn, "margin", o.margin);
  const auto mining = static_cast<int64_t>(o.mining);
  TORCH_CHECK_VALUE(mining >= 0 && mining <= 2, fn, ": mining must be BatchHard, BatchAll or SemiHard, got ", mining);
  const auto d = static_cast<int64_t>(o.distance);
  TORCH_CHECK_VALUE(d >= 0 && d <= 2, fn, ": distance must be Euclidean, SquaredEuclidean or Cosine, got ", d);
  const int64_t red = detail::pair_reduction(fn, o.reduction, o.mining == Mining::BatchAll);
  const auto in = detail::check_pair_inputs(fn, embeddings, labels, ref_embeddings, ref_labels,
                                            o.normalize || o.distance == PairDistance::Cosine);
  const int64_t dist = o.distance == PairDistance::Cosine ? 2 : (o.distance == PairDistance::Euclidean ? 1 : 0);
  return detail::pair_loss<true>(in, o.margin, 0.0, mining, dist, o.soft_margin, red);
}

/// Contrastive loss (Hadsell et al., CVPR 2006, in pytorch-metric-learning's form) over every pair:
/// see lossext.functional.contrastive_loss.
inline torch::Tensor contrastive_loss(const torch::Tensor& embeddings, const torch::Tensor& labels,
                                      const ContrastiveOptions& o = {},
                                      const std::optional<torch::Tensor>& ref_embeddings = std::nullopt,
                                      const std::optional<torch::Tensor>& ref_labels = std::nullopt) {
  const char* fn = "lossext::contrastive_loss";
  detail::check_margin(fn, "pos_margin", o.pos_margin);
  detail::check_margin(fn, "neg_margin", o.neg_margin);
  const auto d = static_cast<int64_t>(o.distance);
  TORCH_CHECK_VALUE(d >= 0 && d <= 2, fn, ": distance must be Euclidean, SquaredEuclidean or Cosine, got ", d);
  const int64_t red = detail::pair_reduction(fn, o.reduction, true);
  const auto in = detail::check_pair_inputs(fn, embeddings, labels, ref_embeddings, ref_labels,
                                            o.distance == PairDistance::Cosine);
  const int64_t dist = o.distance == PairDistance::Cosine ? 2 : (o.distance == PairDistance::Euclidean ? 1 : 0);
  return detail::pair_loss<false>(in, o.pos_margin, o.neg_margin, 3, dist, false, red);
}

/// Center loss (Wen et al., ECCV 2016, Eq. 2): 1/2 |x_i - c_{y_i}|^2 per row. Mean divides by N.
inline torch::Tensor center_loss(const torch::Tensor& features, const torch::Tensor& target,
                                 const torch::Tensor& centers, Reduction reduction = Reduction::Mean) {
  const char* fn = "lossext::center_loss";
  const at::Tensor t = detail::check_metric_inputs(fn, features, target, centers);
  const int64_t red = detail::check_reduction(fn, reduction);
  if (!(at::GradMode::is_enabled() && (features.requires_grad() || centers.requires_grad())))
    return detail::MetricOps::get().center.call(features, t, centers, red);
  return detail::CenterLossFunction::apply(features, t, centers, red);
}

/// Triplet-Center loss (He et al., CVPR 2018, Eq. 3): max(D(f_i, c_{y_i}) + m - min_{j != y_i}
/// D(f_i, c_j), 0); no negative (C = 1, or Batch with one class present) gives 0.
inline torch::Tensor triplet_center_loss(const torch::Tensor& features, const torch::Tensor& target,
                                         const torch::Tensor& centers, const TripletCenterOptions& o = {}) {
  const char* fn = "lossext::triplet_center_loss";
  const at::Tensor t = detail::check_metric_inputs(fn, features, target, centers);
  detail::check_finite(fn, "margin", o.margin);
  TORCH_CHECK_VALUE(o.margin >= 0.0, fn, ": margin must be >= 0, got ", o.margin);
  const int64_t red = detail::check_reduction(fn, o.reduction);
  const auto dist = static_cast<int64_t>(o.distance), neg = static_cast<int64_t>(o.negatives);
  TORCH_CHECK_VALUE(dist == 0 || dist == 1, fn, ": distance must be SquaredEuclidean or Euclidean, got ", dist);
  TORCH_CHECK_VALUE(neg == 0 || neg == 1, fn, ": negatives must be All or Batch, got ", neg);
  if (!(at::GradMode::is_enabled() && (features.requires_grad() || centers.requires_grad())))
    return std::get<0>(detail::MetricOps::get().tc.call(features, t, centers, o.margin, dist, neg, red));
  return detail::TripletCenterFunction::apply(features, t, centers, o.margin, dist, neg, red);
}

}  // namespace lossext
