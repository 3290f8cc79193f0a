// A libtorch consumer of lossext's detection family: trains a tiny YOLOv2 detector head with
// lossext::yolov2_region_loss, and checks the family's C++ API on the way:
//   1. sigmoid_focal_loss, softmax_focal_loss and box_iou_loss (IoU, GIoU, DIoU, CIoU) against
//      plain-libtorch composites of their formulas in float64: values for every reduction and
//      the autograd gradients (inputs, targets, weight; logits; both boxes, broadcast);
//   2. yolov2_region_loss: a case with one truth computed by hand from the formula (a zero head:
//      every sigmoid 0.5, every softmax uniform), a composite of the region loss (one truth per
//      image, every anchor's no-object and prior terms) for the value, the stats and the
//      gradient, and central finite differences (rescore off: its IoU target is a constant);
//   3. argument checks (each bad argument throws, naming it), and the refusal of double backward;
//   4. on a machine with CUDA (and a CUDA build of lossext): CUDA against CPU, values and gradients;
//   5. match_priors, ssd_multibox_loss and refinedet_multibox_loss: a case computed by hand
//      (a truth equal to a prior: zero offsets; every candidate negative mined), Mean/Sum/None,
//      central finite differences, the ODM's constant ARM heads, their argument checks;
//   6. training: a 1x1-conv head over fixed random feature maps of 8 images with 1-3 boxes each,
//      SGD, 60 steps. Fails unless the final region loss is < 0.5 x the initial one.
// Exits non-zero on any failure.
#include <torch/torch.h>

#include <lossext/detection.h>

#include "example_checks.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using namespace example;
using lossext::Reduction;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);
constexpr double kPi = 3.14159265358979323846;

const std::pair<Reduction, const char*> kReductions[] = {
    {Reduction::None, "None"}, {Reduction::Mean, "Mean"}, {Reduction::Sum, "Sum"}};

torch::Tensor reduce(const torch::Tensor& per, Reduction r) {
  return r == Reduction::None ? per : (r == Reduction::Sum ? per.sum() : per.mean());
}

// a and b (values, or gradients) equal within float64 rounding.
void expect_close(const torch::Tensor& a, const torch::Tensor& b, const std::string& what, double tol = 1e-10) {
  const bool same_shape = a.defined() && b.defined() && a.sizes() == b.sizes();
  const double err = same_shape ? (a - b).abs().max().item<double>() : INFINITY;
  expect(same_shape && err <= tol * (1.0 + b.abs().max().item<double>()),
         what + ": max |lossext - composite| = " + std::to_string(err));
}

// lossext's function f and the composite g of the same arguments: values and the gradients of
// sum(loss * coeff) (coeff: fixed random numbers of the loss's shape) w.r.t. every variable.
using Fn = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;
void compare(const std::string& name, const Fn& f, const Fn& g, const std::vector<torch::Tensor>& vars,
             const std::vector<std::string>& names) {
  std::vector<torch::Tensor> a, b;
  for (const auto& v : vars) {
    a.push_back(v.clone().requires_grad_(true));
    b.push_back(v.clone().requires_grad_(true));
  }
  const auto la = f(a), lb = g(b);
  expect_close(la, lb, name + " value");
  const auto coeff = torch::rand(la.sizes(), kF64) + 0.5;
  const auto ga = torch::autograd::grad({(la * coeff).sum()}, a);
  const auto gb = torch::autograd::grad({(lb * coeff).sum()}, b);
  for (size_t i = 0; i < vars.size(); ++i) expect_close(ga[i], gb[i], name + " d/d" + names[i]);
}

// ---- 1. focal and box losses against their formulas ------------------------------------------

// torchvision.ops.sigmoid_focal_loss, times the weight.
torch::Tensor sigmoid_focal_composite(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& w,
                                      double alpha, double gamma) {
  namespace F = torch::nn::functional;
  const auto p = torch::sigmoid(x);
  const auto ce = F::binary_cross_entropy_with_logits(x, y, F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone));
  const auto p_t = p * y + (1 - p) * (1 - y);
  auto loss = ce * (1 - p_t).pow(gamma);
  if (alpha >= 0) loss = (alpha * y + (1 - alpha) * (1 - y)) * loss;
  return loss * w;
}

// -w_t alpha_t (1 - p_t)^gamma log p_t over dim 1; Mean over the rows not ignored.
torch::Tensor softmax_focal_composite(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& alpha,
                                      const torch::Tensor& w, double gamma, int64_t ignore, Reduction r) {
  const auto keep = t != ignore;
  const auto tc = torch::where(keep, t, torch::zeros_like(t));
  const auto logpt = torch::log_softmax(x, 1).gather(1, tc.unsqueeze(1)).squeeze(1);
  const auto per = -alpha.index({tc}) * w.index({tc}) * (1 - logpt.exp()).pow(gamma) * logpt;
  const auto loss = torch::where(keep, per, torch::zeros_like(per));
  if (r == Reduction::None) return loss;
  return r == Reduction::Sum ? loss.sum() : loss.sum() / keep.sum();
}

// torchvision's box losses (IoU, GIoU, DIoU, CIoU with alpha a constant) on valid boxes.
torch::Tensor box_composite(const torch::Tensor& b1, const torch::Tensor& b2, lossext::BoxIouMode mode, double eps) {
  using torch::indexing::Ellipsis;
  auto c = [](const torch::Tensor& b, int k) { return b.index({Ellipsis, k}); };
  const auto x1 = c(b1, 0), y1 = c(b1, 1), x2 = c(b1, 2), y2 = c(b1, 3);
  const auto X1 = c(b2, 0), Y1 = c(b2, 1), X2 = c(b2, 2), Y2 = c(b2, 3);
  const auto iw = (torch::minimum(x2, X2) - torch::maximum(x1, X1)).clamp_min(0);
  const auto ih = (torch::minimum(y2, Y2) - torch::maximum(y1, Y1)).clamp_min(0);
  const auto inter = iw * ih;
  const auto uni = (x2 - x1) * (y2 - y1) + (X2 - X1) * (Y2 - Y1) - inter;
  const auto iou = inter / (uni + eps);
  const auto cw = torch::maximum(x2, X2) - torch::minimum(x1, X1);
  const auto ch = torch::maximum(y2, Y2) - torch::minimum(y1, Y1);
  if (mode == lossext::BoxIouMode::IoU) return 1 - iou;
  if (mode == lossext::BoxIouMode::GIoU) return 1 - (iou - (cw * ch - uni) / (cw * ch + eps));
  const auto diag = cw * cw + ch * ch + eps;
  const auto rho2 = ((x1 + x2 - X1 - X2) / 2).pow(2) + ((y1 + y2 - Y1 - Y2) / 2).pow(2);
  const auto diou = 1 - iou + rho2 / diag;
  if (mode == lossext::BoxIouMode::DIoU) return diou;
  const auto v = (4 / (kPi * kPi)) * (torch::atan((X2 - X1) / (Y2 - Y1)) - torch::atan((x2 - x1) / (y2 - y1))).pow(2);
  torch::Tensor a;
  {
    torch::NoGradGuard no_grad;
    a = v / (1 - iou + v + eps);
  }
  return diou + a * v;
}

void check_focal_and_boxes() {
  // sigmoid focal: values and gradients to inputs, targets (soft) and a broadcast weight
  const auto x = torch::randn({4, 6}, kF64) * 2, y = torch::rand({4, 6}, kF64), w = torch::rand({6}, kF64) + 0.5;
  for (auto [red, rname] : kReductions) {
    for (auto [alpha, gamma] : {std::pair{0.25, 2.0}, std::pair{-1.0, 1.5}, std::pair{0.6, 0.0}}) {
      const std::string name = std::string("sigmoid_focal_loss/") + rname + " alpha " + std::to_string(alpha) +
                               " gamma " + std::to_string(gamma);
      compare(
          name, [&](const auto& v) { return lossext::sigmoid_focal_loss(v[0], v[1], alpha, gamma, red, v[2]); },
          [&](const auto& v) { return reduce(sigmoid_focal_composite(v[0], v[1], v[2], alpha, gamma), red); },
          {x, y, w}, {"inputs", "targets", "weight"});
    }
  }
  // the defaults: alpha 0.25, gamma 2, None, no weight
  expect_close(lossext::sigmoid_focal_loss(x, y), sigmoid_focal_composite(x, y, torch::ones({1}, kF64), 0.25, 2.0),
               "sigmoid_focal_loss defaults");

  // softmax focal: logits [N, C, d] with ignored rows, per-class alpha and weight
  const int64_t N = 5, C = 4, D = 3, ignore = -100;
  const auto logits = torch::randn({N, C, D}, kF64) * 2;
  auto target = torch::randint(0, C, {N, D}, torch::kLong);
  target.index_put_({0, 1}, ignore);
  target.index_put_({3, 2}, ignore);
  const auto alpha = torch::rand({C}, kF64) + 0.1, cw = torch::rand({C}, kF64) + 0.5, ones = torch::ones({C}, kF64);
  for (auto [red, rname] : kReductions) {
    const std::string base = std::string("softmax_focal_loss/") + rname;
    compare(
        base + " alpha [C], weight [C], gamma 1.5",
        [&](const auto& v) { return lossext::softmax_focal_loss(v[0], target, 1.5, alpha, cw, ignore, red); },
        [&](const auto& v) { return softmax_focal_composite(v[0], target, alpha, cw, 1.5, ignore, red); }, {logits},
        {"logits"});
    compare(
        base + " alpha 0.25, gamma 2",
        [&](const auto& v) { return lossext::softmax_focal_loss(v[0], target, 2.0, 0.25, {}, ignore, red); },
        [&](const auto& v) { return softmax_focal_composite(v[0], target, ones * 0.25, ones, 2.0, ignore, red); },
        {logits}, {"logits"});
  }
  // the defaults: gamma 2, no alpha, no weight, Mean; a 2-D [N, C] case with int32 labels
  const auto l2 = torch::randn({7, C}, kF64), t2 = torch::randint(0, C, {7}, torch::kInt);
  expect_close(lossext::softmax_focal_loss(l2, t2),
               softmax_focal_composite(l2, t2.to(torch::kLong), ones, ones, 2.0, ignore, Reduction::Mean),
               "softmax_focal_loss defaults");

  // boxes: valid (x2 > x1, y2 > y1), overlapping and disjoint pairs, [2, 3, 4] against [3, 4]
  auto make_boxes = [](at::IntArrayRef batch) {
    std::vector<int64_t> s(batch.begin(), batch.end());
    s.push_back(2);
    const auto lo = torch::rand(s, kF64) * 4, size = torch::rand(s, kF64) * 3 + 0.5;
    return torch::cat({lo, lo + size}, -1);
  };
  const auto b1 = make_boxes({2, 3}), b2 = make_boxes({3});
  const std::pair<lossext::BoxIouMode, const char*> modes[] = {{lossext::BoxIouMode::IoU, "IoU"},
                                                              {lossext::BoxIouMode::GIoU, "GIoU"},
                                                              {lossext::BoxIouMode::DIoU, "DIoU"},
                                                              {lossext::BoxIouMode::CIoU, "CIoU"}};
  for (auto [mode, mname] : modes) {
    for (auto [red, rname] : kReductions) {
      compare(
          std::string("box_iou_loss/") + mname + "/" + rname,
          [&](const auto& v) { return lossext::box_iou_loss(v[0], v[1], mode, 1e-7, red); },
          [&](const auto& v) { return reduce(box_composite(v[0], v[1], mode, 1e-7), red); }, {b1, b2},
          {"boxes1", "boxes2"});
    }
  }
  // GIoU of two boxes by hand: A = [0, 0, 2, 2], B = [1, 1, 3, 3]: I = 1, U = 7, C = 9,
  // GIoU = 1/7 - 2/9; integer boxes compute in float32
  const auto gi = lossext::box_iou_loss(torch::tensor({0, 0, 2, 2}), torch::tensor({1, 1, 3, 3}));
  expect(gi.scalar_type() == torch::kFloat32 && gi.dim() == 0, "integer boxes give a float32 0-dim loss");
  expect(close(gi.item<double>(), 1.0 - (1.0 / 7.0 - 2.0 / 9.0), 1e-6, 1e-6),
         "GIoU by hand: " + std::to_string(gi.item<double>()));
  expect(lossext::box_iou_loss(torch::zeros({0, 4}, kF64), torch::zeros({0, 4}, kF64), lossext::BoxIouMode::GIoU,
                               1e-7, Reduction::Mean)
                 .item<double>() == 0.0,
         "box_iou_loss: Mean of no boxes is 0");
  std::printf("focal and box losses: values and gradients match the composites\n");
}

// ---- 2. the region loss ------------------------------------------------------------------------

// box.c's box_iou on centre-format (x, y, w, h) boxes, broadcast; 0 where I or U is 0.
torch::Tensor dk_iou(const torch::Tensor& ax, const torch::Tensor& ay, const torch::Tensor& aw, const torch::Tensor& ah,
                     double bx, double by, double bw, double bh) {
  const auto ow = torch::minimum(ax + aw / 2, torch::full_like(ax, bx + bw / 2)) -
                  torch::maximum(ax - aw / 2, torch::full_like(ax, bx - bw / 2));
  const auto oh = torch::minimum(ay + ah / 2, torch::full_like(ay, by + bh / 2)) -
                  torch::maximum(ay - ah / 2, torch::full_like(ay, by - bh / 2));
  const auto inter = torch::where((ow < 0) | (oh < 0), torch::zeros_like(ow), ow * oh);
  const auto uni = aw * ah + bw * bh - inter;
  const auto ok = (inter != 0) & (uni != 0);
  return torch::where(ok, inter / torch::where(ok, uni, torch::ones_like(uni)), torch::zeros_like(inter));
}

double dk_iou1(double ax, double ay, double aw, double ah, double bx, double by, double bw, double bh) {
  const auto t = [](double v) { return torch::full({}, v, kF64); };
  return dk_iou(t(ax), t(ay), t(aw), t(ah), bx, by, bw, bh).item<double>();
}

struct RegionComposite {
  torch::Tensor per_image;  // [B], differentiable in output
  std::vector<double> stats;
};

// The region loss of docstring's formula, for at most one truth per image (targets [B, 1, 5];
// class < 0: none): every anchor's no-object term (dropped where the decoded box's IoU with the
// truth > thresh) and prior term, replaced at the truth's anchor by its box, objectness and
// class terms. The IoU target (rescore) and the no-object mask are constants, as darknet's.
RegionComposite region_composite(const torch::Tensor& output, const torch::Tensor& targets, const torch::Tensor& anchors,
                                 int64_t C, const lossext::RegionOptions& o) {
  const int64_t B = output.size(0), A = anchors.size(0), H = output.size(2), W = output.size(3);
  const auto z = output.view({B, A, 5 + C, H, W});
  const auto sx = torch::sigmoid(z.select(2, 0)), sy = torch::sigmoid(z.select(2, 1));
  const auto tw = z.select(2, 2), th = z.select(2, 3), so = torch::sigmoid(z.select(2, 4));
  const auto logp = torch::log_softmax(z.narrow(2, 5, C), 2);
  const auto aw = anchors.select(1, 0).view({1, A, 1, 1}), ah = anchors.select(1, 1).view({1, A, 1, 1});
  const auto gi = torch::arange(W, kF64).view({1, 1, 1, W}), gj = torch::arange(H, kF64).view({1, 1, H, 1});
  torch::Tensor bx, by, bw, bh;  // decoded boxes [B, A, H, W]
  {
    torch::NoGradGuard no_grad;
    bx = ((gi + sx) / double(W)).expand({B, A, H, W});
    by = ((gj + sy) / double(H)).expand({B, A, H, W});
    bw = (tw.exp() * aw / double(W)).expand({B, A, H, W});
    bh = (th.exp() * ah / double(H)).expand({B, A, H, W});
  }
  const double warm = o.seen < o.warmup_images ? 0.01 : 0.0;
  auto noobj_scale = torch::full({B, A, H, W}, o.noobject_scale, kF64);
  auto matched = torch::zeros({B, A, H, W}, kF64);
  auto truth_terms = torch::zeros({B}, kF64);
  double iou_sum = 0, recall = 0, obj_sum = 0, cat_sum = 0, count = 0, cost = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto row = targets[b][0];
    const int64_t cls = int64_t(row[0].item<double>());
    if (cls < 0) continue;
    const double x = row[1].item<double>(), y = row[2].item<double>(), w = row[3].item<double>(),
                 h = row[4].item<double>();
    // the no-object mask: IoU > thresh with the truth
    noobj_scale[b].masked_fill_(dk_iou(bx[b], by[b], bw[b], bh[b], x, y, w, h) > o.thresh, 0.0);
    const int64_t i = std::min<int64_t>(int64_t(std::floor(x * W)), W - 1);
    const int64_t j = std::min<int64_t>(int64_t(std::floor(y * H)), H - 1);
    int64_t n = 0;  // best shape IoU (bias_match), strict >
    double best = 0;
    for (int64_t k = 0; k < A; ++k) {
      const double iou = dk_iou1(0, 0, anchors[k][0].item<double>() / W, anchors[k][1].item<double>() / H, 0, 0, w, h);
      if (iou > best) best = iou, n = k;
    }
    matched[b][n][j][i] = 1.0;
    const double awn = anchors[n][0].item<double>(), ahn = anchors[n][1].item<double>();
    const double iou = dk_iou1(bx[b][n][j][i].item<double>(), by[b][n][j][i].item<double>(),
                               bw[b][n][j][i].item<double>(), bh[b][n][j][i].item<double>(), x, y, w, h);
    const double cs = o.coord_scale * (o.scale_coord_by_size ? 2.0 - w * h : 1.0);
    const double obj_t = o.rescore ? iou : 1.0;
    const torch::Tensor os[4] = {sx[b][n][j][i], sy[b][n][j][i], tw[b][n][j][i], th[b][n][j][i]};
    const double ts[4] = {x * W - i, y * H - j, std::log(w * W / awn), std::log(h * H / ahn)};
    auto terms = 0.5 * o.object_scale * (obj_t - so[b][n][j][i]).pow(2) - o.class_scale * logp[b][n][cls][j][i];
    cost += std::pow(o.object_scale * (obj_t - so[b][n][j][i].item<double>()), 2);
    for (int k = 0; k < 4; ++k) {
      terms = terms + 0.5 * cs * (ts[k] - os[k]).pow(2);
      cost += std::pow(cs * (ts[k] - os[k].item<double>()), 2);
    }
    truth_terms[b] = terms;
    const auto p = logp[b][n].select(1, j).select(1, i).exp();  // [C]
    for (int64_t c = 0; c < C; ++c) cost += std::pow(o.class_scale * ((c == cls) - p[c].item<double>()), 2);
    iou_sum += iou;
    recall += iou > 0.5;
    obj_sum += so[b][n][j][i].item<double>();
    cat_sum += p[cls].item<double>();
    count += 1;
  }
  // every other anchor: objectness to 0, the prior box while warm
  const auto noobj = 0.5 * noobj_scale * so.pow(2);
  const auto prior = 0.5 * warm * ((0.5 - sx).pow(2) + (0.5 - sy).pow(2) + tw.pow(2) + th.pow(2));
  const auto others = ((noobj + prior) * (1 - matched)).sum({1, 2, 3});
  {
    torch::NoGradGuard no_grad;
    const auto s = (1 - matched);
    cost += ((noobj_scale * so).pow(2) * s).sum().item<double>() +
            (warm * warm * ((0.5 - sx).pow(2) + (0.5 - sy).pow(2) + tw.pow(2) + th.pow(2)) * s).sum().item<double>();
  }
  const double anyobj = so.mean().item<double>();
  auto avg = [count](double v) { return count > 0 ? v / count : 0.0; };
  return {others + truth_terms,
          {avg(iou_sum), avg(recall), avg(obj_sum), anyobj, avg(cat_sum), count, cost}};
}

void check_region() {
  const int64_t C = 3, H = 3, W = 4;
  const auto anchors = torch::tensor({{1.0, 1.5}, {3.0, 2.0}}, kF64);
  const int64_t A = anchors.size(0);

  // (a) by hand: a zero head. Every sigmoid is 0.5 and tw = th = 0, so the prior terms vanish;
  // every anchor's decoded box is its anchor centred in its cell, softmax 1/C. One truth of
  // class 2 at (0.6, 0.3), 0.2 x 0.3: cell i = floor(2.4) = 2, j = floor(0.9) = 0; the anchors'
  // shapes (0.25, 0.5) and (0.75, 0.667): shape IoU 0.06/0.125 = 0.48 and 0.06/0.5 = 0.12 ->
  // anchor 0. No decoded box overlaps the truth by more than 0.6, so the 2 * 3 * 4 - 1 = 23
  // other anchors each give 1/2 * 1 * 0.5^2; the truth's anchor gives
  //   1/2 (2 - 0.06) [(2.4 - 2 - 0.5)^2 + (0.9 - 0.5)^2 + log(0.2 * 4 / 1)^2 + log(0.3 * 3 / 1.5)^2]
  //   + 1/2 * 5 * (IoU - 0.5)^2 + log 3,
  // IoU of the decoded box (centre (2.5/4, 0.5/3), 0.25 x 0.5) with the truth: x overlap 0.2
  // (the truth's [0.5, 0.7] inside [0.5, 0.75]), y overlap 0.5/3 + 0.25 - 0.15, so
  // IoU = I / (0.125 + 0.06 - I) = 0.405.
  {
    const auto out = torch::zeros({1, A * (5 + C), H, W}, kF64);
    const auto tg = torch::tensor({{{2.0, 0.6, 0.3, 0.2, 0.3}}}, kF64);
    const double inter = 0.2 * (0.5 / 3 + 0.25 - 0.15), iou = inter / (0.125 + 0.06 - inter);
    const double coord = 0.5 * (2 - 0.06) *
                         (std::pow(2.4 - 2 - 0.5, 2) + std::pow(0.9 - 0.5, 2) + std::pow(std::log(0.8), 2) +
                          std::pow(std::log(0.6), 2));
    const double want = 23 * 0.5 * 0.25 + coord + 0.5 * 5 * std::pow(iou - 0.5, 2) + std::log(3.0);
    auto [loss, stats] = lossext::yolov2_region_loss_with_stats(out, tg, anchors, C);
    expect(close(loss.item<double>(), want, 1e-12, 1e-12),
           "region loss by hand: got " + std::to_string(loss.item<double>()) + ", want " + std::to_string(want));
    expect(stats.scalar_type() == torch::kFloat64 && stats.numel() == 7, "stats: [7], float64 for a float64 output");
    expect(close(stats[lossext::RegionStat::AvgIou].item<double>(), iou, 1e-12, 0) &&
               stats[lossext::RegionStat::Recall].item<double>() == 0.0 &&
               stats[lossext::RegionStat::AvgObj].item<double>() == 0.5 &&
               stats[lossext::RegionStat::AvgAnyObj].item<double>() == 0.5 &&
               close(stats[lossext::RegionStat::AvgCat].item<double>(), 1.0 / 3, 1e-12, 0) &&
               stats[lossext::RegionStat::Count].item<double>() == 1.0,
           "region stats by hand");
    // past the warm-up nothing changes here (the prior terms are 0 on a zero head)
    const double after = lossext::yolov2_region_loss(out, tg, anchors, C, {.seen = 12800}).item<double>();
    expect(close(after, want, 1e-12, 1e-12), "region loss by hand, after the warm-up");
    std::printf("region loss by hand (zero head, one truth): %.12f (formula %.12f)\n", loss.item<double>(), want);
  }

  // (b) a random head against the composite: image 0 one truth (and a padding row), image 1 a
  // truth in its second row, image 2 none. Values, stats and gradients, for the defaults and for
  // rescore off, no warm-up, unscaled coordinates.
  const int64_t B = 3;
  const auto out = torch::randn({B, A * (5 + C), H, W}, kF64) * 0.5;
  const auto tg = torch::tensor({{{1.0, 0.55, 0.45, 0.3, 0.5}, {-1.0, 0.0, 0.0, 0.0, 0.0}},
                                 {{-1.0, 0.0, 0.0, 0.0, 0.0}, {0.0, 0.1, 0.9, 0.6, 0.4}},
                                 {{-1.0, 0.0, 0.0, 0.0, 0.0}, {-1.0, 0.0, 0.0, 0.0, 0.0}}},
                                kF64);
  // the composite's targets: each image's one truth row
  const auto tg1 = torch::stack({tg[0][0], tg[1][1], tg[2][0]}).unsqueeze(1);
  const lossext::RegionOptions variants[] = {
      {},
      {.object_scale = 2.0, .noobject_scale = 0.5, .class_scale = 1.5, .coord_scale = 2.0, .thresh = 0.3,
       .rescore = false, .seen = 20000, .scale_coord_by_size = false},
  };
  for (size_t v = 0; v < 2; ++v) {
    for (auto [red, rname] : kReductions) {
      lossext::RegionOptions o = variants[v];
      o.reduction = red;
      const std::string name = std::string("yolov2_region_loss/") + rname + (v ? " (options)" : " (defaults)");
      auto regred = [red](const torch::Tensor& per) {
        return red == Reduction::None ? per : (red == Reduction::Sum ? per.sum() : per.sum() / per.size(0));
      };
      compare(
          name, [&](const auto& x) { return lossext::yolov2_region_loss(x[0], tg, anchors, C, o); },
          [&](const auto& x) { return regred(region_composite(x[0], tg1, anchors, C, o).per_image); }, {out},
          {"output"});
    }
    auto [loss, stats] = lossext::yolov2_region_loss_with_stats(out, tg, anchors, C, variants[v]);
    const auto want = region_composite(out, tg1, anchors, C, variants[v]).stats;
    const char* names[] = {"avg_iou", "recall", "avg_obj", "avg_anyobj", "avg_cat", "count", "darknet_cost"};
    for (int k = 0; k < 7; ++k) {
      expect(close(stats[k].item<double>(), want[k], 1e-12, 1e-10),
             std::string("region stats ") + names[k] + ": " + std::to_string(stats[k].item<double>()) + " vs " +
                 std::to_string(want[k]));
    }
  }
  // finite differences (rescore off: the loss is then a smooth function of the head, away from
  // the IoU thresholds); float32 heads give float32 losses
  example::check_gradients(
      "yolov2_region_loss (rescore off)",
      [&](const std::vector<torch::Tensor>& x) {
        return lossext::yolov2_region_loss(x[0], tg, anchors, C, {.rescore = false, .reduction = Reduction::Sum});
      },
      {out}, {"output"});
  expect(lossext::yolov2_region_loss(out.to(torch::kFloat32), tg, anchors, C).scalar_type() == torch::kFloat32,
         "a float32 head gives a float32 loss");
  std::printf("region loss: values, stats and gradients match the composite\n");
}

// ---- 3. argument checks and double backward --------------------------------------------------

// The kernels' own checks (a value only the kernel reads): their errors reach C++ as
// std::exception (through the stable ABI), naming the op and the argument.
template <class Fn>
void expect_throws_kernel(const std::string& what, const std::string& needle, Fn&& f) {
  try {
    f();
    expect(false, what + ": no exception");
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    expect(msg.find(needle) != std::string::npos, what + ": message lacks '" + needle + "': " + msg);
    std::printf("  %s: %s (%s)\n", what.c_str(), msg.substr(0, msg.find('\n')).c_str(), typeid(e).name());
  }
}

void check_errors() {
  using E = c10::ValueError;
  using T = c10::TypeError;
  const auto x = torch::randn({4, 3}, kF64), y = torch::rand({4, 3}, kF64);
  expect_throws<E>("sigmoid alpha", "alpha must be in [0, 1] or -1", [&] { lossext::sigmoid_focal_loss(x, y, 1.5); });
  expect_throws<E>("sigmoid gamma", "gamma must be in [0, inf)", [&] { lossext::sigmoid_focal_loss(x, y, 0.25, -1.0); });
  expect_throws<E>("sigmoid shapes", "targets shape", [&] { lossext::sigmoid_focal_loss(x, y.view({3, 4})); });
  expect_throws<T>("sigmoid dtypes", "targets dtype", [&] { lossext::sigmoid_focal_loss(x, y.to(torch::kFloat32)); });
  expect_throws<T>("sigmoid integer inputs", "inputs must be float",
                   [&] { lossext::sigmoid_focal_loss(x.to(torch::kLong), y.to(torch::kLong)); });
  expect_throws<E>("sigmoid weight", "does not broadcast",
                   [&] { lossext::sigmoid_focal_loss(x, y, 0.25, 2.0, Reduction::Mean, torch::ones({4})); });

  const auto t = torch::randint(0, 3, {4}, torch::kLong);
  expect_throws<E>("softmax 1-D logits", "logits must be [N, C, ...]",
                   [&] { lossext::softmax_focal_loss(torch::randn({4}, kF64), t); });
  expect_throws<E>("softmax no classes", "logits has no classes",
                   [&] { lossext::softmax_focal_loss(torch::randn({4, 0}, kF64), t); });
  expect_throws<T>("softmax float target", "target must be integer class indices",
                   [&] { lossext::softmax_focal_loss(x, t.to(torch::kFloat64)); });
  expect_throws<E>("softmax target shape", "target must have shape [4]",
                   [&] { lossext::softmax_focal_loss(x, t.view({2, 2})); });
  expect_throws<E>("softmax gamma", "gamma must be in [0, inf)", [&] { lossext::softmax_focal_loss(x, t, -0.5); });
  expect_throws<E>("softmax alpha", "alpha must be in [0, inf)", [&] { lossext::softmax_focal_loss(x, t, 2.0, -0.1); });
  expect_throws<E>("softmax alpha shape", "alpha must have shape",
                   [&] { lossext::softmax_focal_loss(x, t, 2.0, torch::ones({4}, kF64)); });
  expect_throws<T>("softmax integer alpha", "alpha must be floating",
                   [&] { lossext::softmax_focal_loss(x, t, 2.0, torch::ones({3}, torch::kLong)); });
  expect_throws<E>("softmax weight shape", "weight must have shape",
                   [&] { lossext::softmax_focal_loss(x, t, 2.0, std::nullopt, torch::ones({2}, kF64)); });
  expect_throws_kernel("softmax target out of range (kernel)", "outside [0, 3)",
                            [&] { lossext::softmax_focal_loss(x, torch::tensor({0, 1, 2, 3})); });

  const auto b = torch::tensor({{0.0, 0.0, 1.0, 1.0}}, kF64);
  expect_throws<E>("boxes shape", "boxes1 must have shape [..., 4]",
                   [&] { lossext::box_iou_loss(torch::zeros({2, 3}, kF64), b); });
  expect_throws<T>("bool boxes", "boxes2 must be real boxes",
                   [&] { lossext::box_iou_loss(b, torch::zeros({1, 4}, torch::kBool)); });
  expect_throws<E>("boxes broadcast", "do not broadcast",
                   [&] { lossext::box_iou_loss(torch::zeros({3, 4}, kF64), torch::zeros({2, 4}, kF64)); });
  expect_throws<E>("box eps", "eps must be > 0", [&] { lossext::box_iou_loss(b, b, lossext::BoxIouMode::GIoU, 0.0); });
  expect_throws<E>("box mode", "mode must be", [&] { lossext::box_iou_loss(b, b, static_cast<lossext::BoxIouMode>(7)); });
  expect_throws<E>("box reduction", "reduction must be",
                   [&] { lossext::box_iou_loss(b, b, lossext::BoxIouMode::IoU, 1e-7, static_cast<Reduction>(5)); });

  const auto anchors = torch::tensor({{1.0, 1.0}, {2.0, 3.0}}, kF64);
  const auto out = torch::randn({2, 2 * (5 + 3), 3, 3}, kF64);
  const auto tg = torch::tensor({{{0.0, 0.5, 0.5, 0.2, 0.2}}, {{2.0, 0.1, 0.2, 0.3, 0.4}}}, kF64);
  expect_throws<E>("region channels", "channels, but A * (5 + num_classes)",
                   [&] { lossext::yolov2_region_loss(out, tg, anchors, 4); });
  expect_throws<E>("region num_classes", "num_classes must be >= 1",
                   [&] { lossext::yolov2_region_loss(out, tg, anchors, 0); });
  expect_throws<E>("region output rank", "output must be [B, A * (5 + C), H, W]",
                   [&] { lossext::yolov2_region_loss(out[0], tg, anchors, 3); });
  expect_throws<E>("region anchors", "anchors must be a floating [A, 2]",
                   [&] { lossext::yolov2_region_loss(out, tg, anchors.view({4}), 3); });
  expect_throws<T>("region integer targets", "targets must be floating",
                   [&] { lossext::yolov2_region_loss(out, tg.to(torch::kLong), anchors, 3); });
  expect_throws<E>("region targets shape", "targets must have shape [2, T, 5]",
                   [&] { lossext::yolov2_region_loss(out, tg.narrow(2, 0, 4), anchors, 3); });
  expect_throws<E>("region scale", "noobject_scale must be in [0, inf)",
                   [&] { lossext::yolov2_region_loss(out, tg, anchors, 3, {.noobject_scale = -1}); });
  expect_throws<E>("region thresh", "thresh must be finite",
                   [&] { lossext::yolov2_region_loss(out, tg, anchors, 3, {.thresh = NAN}); });
  expect_throws<E>("region seen", "seen must be >= 0",
                   [&] { lossext::yolov2_region_loss(out, tg, anchors, 3, {.seen = -1}); });
  expect_throws_kernel("region class out of range (kernel)", "outside [0, 3)", [&] {
    lossext::yolov2_region_loss(out, torch::tensor({{{3.0, 0.5, 0.5, 0.2, 0.2}}, {{0.0, 0.5, 0.5, 0.2, 0.2}}}, kF64),
                                anchors, 3);
  });

  // backward(create_graph=true) works; differentiating its gradients is refused
  const auto boxes = torch::tensor({{0.0, 0.0, 2.0, 2.0}, {1.0, 0.5, 3.0, 4.0}}, kF64);
  const std::pair<const char*, std::function<torch::Tensor(const torch::Tensor&)>> losses[] = {
      {"sigmoid_focal_loss", [&](const torch::Tensor& v) { return lossext::sigmoid_focal_loss(v, y, 0.25, 2.0, Reduction::Mean); }},
      {"softmax_focal_loss", [&](const torch::Tensor& v) { return lossext::softmax_focal_loss(v, t); }},
      {"box_iou_loss", [&](const torch::Tensor& v) { return lossext::box_iou_loss(v, boxes.flip(0)).sum(); }},
      {"yolov2_region_loss", [&](const torch::Tensor& v) { return lossext::yolov2_region_loss(v, tg, anchors, 3); }},
  };
  const torch::Tensor at_[] = {x, x, boxes, out};
  for (size_t k = 0; k < 4; ++k) {
    const std::string name = losses[k].first;
    auto xr = at_[k].clone().requires_grad_(true);
    auto g = torch::autograd::grad({losses[k].second(xr)}, {xr}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    expect(g.requires_grad(), name + ": the create_graph gradient requires grad");
    expect_throws<c10::NotImplementedError>(name + " double backward", "double backward is not supported",
                                            [&] { torch::autograd::grad({g.sum()}, {xr}); });
  }
  std::printf("argument checks and double-backward refusals: checked\n");
}

// ---- 4. CUDA against CPU (when there is a GPU) -------------------------------------------------

// f(vars on dev, dev): the loss and its gradients w.r.t. vars (of sum(loss)), on the CPU.
using DevFn = std::function<torch::Tensor(const std::vector<torch::Tensor>&, torch::Device)>;
std::vector<torch::Tensor> run_on(const DevFn& f, const std::vector<torch::Tensor>& vars, torch::Device dev) {
  std::vector<torch::Tensor> v;
  for (const auto& t : vars) v.push_back(t.to(dev).detach().requires_grad_(true));
  const auto loss = f(v, dev);
  auto grads = torch::autograd::grad({loss.sum()}, v);
  std::vector<torch::Tensor> out{loss.detach().cpu()};
  for (auto& g : grads) out.push_back(g.cpu());
  return out;
}

void check_cuda() {
  if (!torch::cuda::is_available() || !lossext::with_cuda()) {
    std::printf("CUDA check skipped (CUDA available: %d, lossext CUDA kernels: %d)\n", int(torch::cuda::is_available()),
                int(lossext::with_cuda()));
    return;
  }
  const torch::Device cpu(torch::kCPU), cuda(torch::kCUDA);
  auto same = [&](const std::string& name, const DevFn& f, const std::vector<torch::Tensor>& vars) {
    const auto a = run_on(f, vars, cpu), b = run_on(f, vars, cuda);
    for (size_t i = 0; i < a.size(); ++i) {
      expect(torch::allclose(a[i], b[i], 1e-9, 1e-12),
             name + " CUDA vs CPU, " + (i ? "gradient " + std::to_string(i - 1) : std::string("loss")));
    }
  };
  const auto x = torch::randn({64, 80}, kF64) * 3, y = (torch::rand({64, 80}, kF64) > 0.9).to(torch::kFloat64);
  same("sigmoid_focal_loss", [](const auto& v, torch::Device) {
    return lossext::sigmoid_focal_loss(v[0], v[1], 0.25, 2.0, Reduction::Mean);
  }, {x, y});
  const auto logits = torch::randn({32, 5, 7}, kF64);
  auto target = torch::randint(0, 5, {32, 7}, torch::kLong);
  target.index_put_({3, 4}, -100);
  const auto alpha = torch::rand({5}, kF64);
  same("softmax_focal_loss", [&](const auto& v, torch::Device d) {
    return lossext::softmax_focal_loss(v[0], target.to(d), 2.0, alpha.to(d), {}, -100, Reduction::None);
  }, {logits});
  const auto lo = torch::rand({50, 2}, kF64) * 4;
  const auto b1 = torch::cat({lo, lo + torch::rand({50, 2}, kF64) + 0.1}, 1);
  const auto b2 = b1 + torch::randn({50, 4}, kF64) * 0.3;
  for (auto mode : {lossext::BoxIouMode::IoU, lossext::BoxIouMode::GIoU, lossext::BoxIouMode::DIoU,
                    lossext::BoxIouMode::CIoU}) {
    same("box_iou_loss mode " + std::to_string(int64_t(mode)), [mode](const auto& v, torch::Device) {
      return lossext::box_iou_loss(v[0], v[1], mode);
    }, {b1, b2});
  }
  const auto anchors = torch::tensor({{1.0, 1.5}, {3.0, 2.0}, {0.5, 0.8}}, kF64);
  const auto head = torch::randn({4, 3 * (5 + 6), 7, 9}, kF64) * 0.5;
  auto tg = torch::full({4, 5, 5}, -1.0, kF64);
  for (int64_t b = 0; b < 4; ++b) {
    for (int64_t k = 0; k <= b; ++k) {
      tg[b][k][0] = double((b + k) % 6);
      tg[b][k].narrow(0, 1, 4).copy_(torch::rand({4}, kF64) * 0.5 + 0.2);
    }
  }
  auto region = [&](const auto& v, torch::Device d) {
    return lossext::yolov2_region_loss(v[0], tg.to(d), anchors.to(d), 6, {.reduction = Reduction::None});
  };
  same("yolov2_region_loss", region, {head});
  const auto sa = std::get<1>(lossext::yolov2_region_loss_with_stats(head, tg, anchors, 6));
  const auto sb = std::get<1>(lossext::yolov2_region_loss_with_stats(head.to(cuda), tg.to(cuda), anchors.to(cuda), 6));
  expect(torch::allclose(sa, sb.cpu(), 1e-9, 1e-12), "yolov2_region_loss stats CUDA vs CPU");
  std::printf("CUDA vs CPU: checked\n");
}

// ---- 5. the multibox losses ---------------------------------------------------------------------

void check_multibox() {
  // three priors (cx, cy, w, h); the truth (x1, y1, x2, y2, label 1) is prior 0 itself (IoU 1, offsets
  // 0); prior 1 only touches it (IoU 0), prior 2 overlaps it a little (IoU 0.01 / 0.28): both are
  // eligible negatives (IoU < 0.5), both are mined (3 x 1 positive >= 2 candidates)
  const auto priors = torch::tensor({{0.25, 0.25, 0.5, 0.5}, {0.75, 0.75, 0.5, 0.5}, {0.5, 0.5, 0.2, 0.2}}, kF64);
  const auto tg = torch::tensor({{{0.0, 0.0, 0.5, 0.5, 1.0}, {-1.0, -1.0, -1.0, -1.0, -1.0}}}, kF64);
  auto [m, ov] = lossext::match_priors(priors, tg);
  expect(torch::equal(m, torch::tensor({{0, -1, -1}}, torch::kLong)), "match_priors: prior 0 takes row 0");
  expect_close(ov, torch::tensor({{1.0, 0.0, 0.01 / 0.28}}, kF64), "match_priors overlaps");
  const auto loc = torch::randn({1, 3, 4}, kF64), conf = torch::randn({1, 3, 3}, kF64);
  auto sl1 = [](const torch::Tensor& d) { return torch::where(d.abs() < 1, 0.5 * d * d, d.abs() - 0.5).sum(); };
  auto ce = [&](int64_t p, int64_t c) { return torch::logsumexp(conf[0][p], 0) - conf[0][p][c]; };
  const auto want_loc = sl1(loc[0][0]), want_conf = ce(0, 2) + ce(1, 0) + ce(2, 0);
  auto [ll, lc] = lossext::ssd_multibox_loss(loc, conf, priors, tg);
  expect_close(ll, want_loc, "ssd_multibox_loss loc by hand");
  expect_close(lc, want_conf, "ssd_multibox_loss conf by hand");
  auto [nl, nc] = lossext::ssd_multibox_loss(loc, conf, priors, tg, {.neg_pos_ratio = 0, .reduction = Reduction::None});
  expect(nl.sizes() == torch::IntArrayRef({1}), "ssd_multibox_loss None is per image");
  expect_close(nc, ce(0, 2).reshape({1}), "ssd_multibox_loss conf, no negatives");
  std::printf("multibox losses by hand: loc %.6f conf %.6f\n", ll.item<double>(), lc.item<double>());

  // two images (the second without truths), finite differences of a weighted sum of the terms
  const auto pri = torch::tensor({{0.3, 0.3, 0.4, 0.4}, {0.7, 0.7, 0.4, 0.4}, {0.5, 0.5, 0.6, 0.3},
                                  {0.2, 0.7, 0.3, 0.5}, {0.6, 0.2, 0.5, 0.3}}, kF64);
  const auto t2 = torch::tensor({{{0.1, 0.1, 0.5, 0.5, 0.0}, {0.5, 0.45, 0.9, 0.95, 2.0}},
                                 {{0.0, 0.0, 0.0, 0.0, -1.0}, {0.0, 0.0, 0.0, 0.0, -1.0}}}, kF64);
  const auto l2 = torch::randn({2, 5, 4}, kF64) * 0.5, c2 = torch::randn({2, 5, 4}, kF64);
  example::check_gradients("ssd_multibox_loss", [&](const std::vector<torch::Tensor>& x) {
    auto [a, b] = lossext::ssd_multibox_loss(x[0], x[1], pri, t2, {.neg_pos_ratio = 1.0});
    return a + 0.7 * b;
  }, {l2, c2}, {"loc", "conf"});
  const auto al = torch::randn({2, 5, 4}, kF64) * 0.1, ac = torch::randn({2, 5, 2}, kF64);
  // The ARM heads by the ARM terms, the ODM heads by the ODM terms: a finite difference in arm_loc
  // also moves the refined anchors of the ODM, which the authors' loss holds constant.
  example::check_gradients("refinedet_multibox_loss (ARM)", [&](const std::vector<torch::Tensor>& x) {
    auto [a, b, c, d] = lossext::refinedet_multibox_loss(x[0], x[1], l2, c2, pri, t2, {.neg_pos_ratio = 1.0});
    return a + 0.5 * b;
  }, {al, ac}, {"arm_loc", "arm_conf"});
  example::check_gradients("refinedet_multibox_loss (ODM)", [&](const std::vector<torch::Tensor>& x) {
    auto [a, b, c, d] = lossext::refinedet_multibox_loss(al, ac, x[0], x[1], pri, t2, {.neg_pos_ratio = 1.0});
    return 0.3 * c + 0.2 * d;
  }, {l2, c2}, {"odm_loc", "odm_conf"});
  // the ODM terms take no gradient through the refined anchors (the authors' propagate_down false)
  auto alr = al.clone().requires_grad_(true), acr = ac.clone().requires_grad_(true);
  auto [a1, a2, o1, o2] = lossext::refinedet_multibox_loss(alr, acr, l2, c2, pri, t2);
  (void)a1, (void)a2, (void)o2;
  expect(!o1.requires_grad(), "refinedet: the ODM loc loss is constant in the ARM heads");
  // a batch without positives: zero, finite
  auto [zl, zc] = lossext::ssd_multibox_loss(l2, c2, pri, t2.narrow(0, 1, 1).expand({2, 2, 5}).contiguous());
  expect(zl.item<double>() == 0.0 && zc.item<double>() == 0.0, "no positives: zero losses");

  using E = c10::ValueError;
  using T = c10::TypeError;
  expect_throws<E>("multibox conf shape", "conf must have shape [2, 5, C]",
                   [&] { lossext::ssd_multibox_loss(l2, c2.narrow(1, 0, 4), pri, t2); });
  expect_throws<E>("multibox classes", "conf must have at least 2 classes",
                   [&] { lossext::ssd_multibox_loss(l2, c2.narrow(2, 0, 1), pri, t2); });
  expect_throws<E>("multibox priors", "priors must be a floating [P, 4]",
                   [&] { lossext::ssd_multibox_loss(l2, c2, pri.narrow(1, 0, 3), t2); });
  expect_throws<E>("multibox prior count", "priors has 4 priors but loc has 5",
                   [&] { lossext::ssd_multibox_loss(l2, c2, pri.narrow(0, 0, 4), t2); });
  expect_throws<T>("multibox integer targets", "targets must be floating",
                   [&] { lossext::ssd_multibox_loss(l2, c2, pri, t2.to(torch::kLong)); });
  expect_throws<E>("multibox threshold", "overlap_thresh must be in [0.0, 1.0]",
                   [&] { lossext::ssd_multibox_loss(l2, c2, pri, t2, {.overlap_thresh = 1.5}); });
  expect_throws<E>("multibox variance", "variance_size must be > 0",
                   [&] { lossext::ssd_multibox_loss(l2, c2, pri, t2, {.variance_size = 0.0}); });
  expect_throws<T>("multibox dtypes", "conf has dtype Float but loc has dtype Double",
                   [&] { lossext::ssd_multibox_loss(l2, c2.to(torch::kFloat32), pri, t2); });
  expect_throws<E>("refinedet arm_conf", "arm_conf must have shape [2, 5, 2]",
                   [&] { lossext::refinedet_multibox_loss(al, c2, l2, c2, pri, t2); });
  expect_throws<E>("refinedet objectness", "objectness_thresh must not be NaN",
                   [&] { lossext::refinedet_multibox_loss(al, ac, l2, c2, pri, t2, {.objectness_thresh = NAN}); });
  auto bad = t2.clone();
  bad[0][1][4] = 3.0;  // C = 4: labels in [0, 3)
  expect_throws_kernel("multibox label out of range (kernel)", "outside [0, 3)",
                       [&] { lossext::ssd_multibox_loss(l2, c2, pri, bad); });
  // double backward is refused
  auto xr = c2.clone().requires_grad_(true);
  auto g = torch::autograd::grad({std::get<1>(lossext::ssd_multibox_loss(l2, xr, pri, t2))}, {xr}, {}, true, true)[0];
  expect_throws<c10::NotImplementedError>("multibox double backward", "double backward is not supported",
                                          [&] { torch::autograd::grad({g.sum()}, {xr}); });
  if (torch::cuda::is_available() && lossext::with_cuda()) {
    const torch::Device cuda(torch::kCUDA);
    auto [cl, cc] = lossext::ssd_multibox_loss(l2.to(cuda), c2.to(cuda), pri.to(cuda), t2.to(cuda));
    auto [pl, pc] = lossext::ssd_multibox_loss(l2, c2, pri, t2);
    expect(torch::allclose(cl.cpu(), pl, 1e-9, 1e-12) && torch::allclose(cc.cpu(), pc, 1e-9, 1e-12),
           "ssd_multibox_loss CUDA vs CPU");
  }
  std::printf("multibox losses: by hand, gradients, argument checks: checked\n");
}

// ---- 6. training a tiny detector head ---------------------------------------------------------

void train() {
  constexpr int64_t B = 8, F = 16, C = 4, H = 5, W = 5, T = 3, steps = 60;
  const auto anchors = torch::tensor({{1.0, 1.0}, {2.5, 1.5}, {1.5, 3.0}});
  const int64_t A = anchors.size(0);
  // fixed "backbone features" and 1-3 random boxes per image (rows past the count are padding)
  const auto feats = torch::randn({B, F, H, W});
  auto tg = torch::full({B, T, 5}, -1.0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = 1 + b % T;
    for (int64_t k = 0; k < n; ++k) {
      tg[b][k][0] = double(torch::randint(0, C, {1}).item<int64_t>());
      tg[b][k].narrow(0, 1, 2).copy_(torch::rand({2}) * 0.8 + 0.1);
      tg[b][k].narrow(0, 3, 2).copy_(torch::rand({2}) * 0.4 + 0.1);
    }
  }
  torch::nn::Conv2d head(torch::nn::Conv2dOptions(F, A * (5 + C), 1));
  torch::optim::SGD opt(head->parameters(), torch::optim::SGDOptions(0.02).momentum(0.9));
  lossext::RegionOptions o;
  double first = 0, last = 0;
  torch::Tensor first_stats, last_stats;
  for (int64_t step = 0; step < steps; ++step) {
    auto [loss, stats] = lossext::yolov2_region_loss_with_stats(head->forward(feats), tg, anchors, C, o);
    opt.zero_grad();
    loss.backward();
    opt.step();
    o.seen += B;  // darknet's image counter
    if (step == 0) first = loss.item<double>(), first_stats = stats;
    last = loss.item<double>(), last_stats = stats;
    if (step % 10 == 0 || step == steps - 1) std::printf("  step %2lld  region loss %.4f\n", (long long)step, loss.item<double>());
  }
  auto s = [](const torch::Tensor& st, int64_t k) { return st[k].item<double>(); };
  std::printf("training: region loss %.4f -> %.4f; avg IoU %.3f -> %.3f, avg obj %.3f -> %.3f, avg cat %.3f -> %.3f "
              "(%g truths)\n",
              first, last, s(first_stats, lossext::RegionStat::AvgIou), s(last_stats, lossext::RegionStat::AvgIou),
              s(first_stats, lossext::RegionStat::AvgObj), s(last_stats, lossext::RegionStat::AvgObj),
              s(first_stats, lossext::RegionStat::AvgCat), s(last_stats, lossext::RegionStat::AvgCat),
              s(last_stats, lossext::RegionStat::Count));
  expect(std::isfinite(last) && last < 0.5 * first,
         "training did not halve the region loss: " + std::to_string(first) + " -> " + std::to_string(last));
}

}  // namespace

int main() {
  return example::run_checks([] {
    torch::manual_seed(0);
    check_focal_and_boxes();
    check_region();
    check_errors();
    check_cuda();
    check_multibox();
    train();
  });
}
