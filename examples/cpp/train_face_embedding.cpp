// A libtorch consumer of lossext's margin-softmax losses: trains a small face-embedding head with
// lossext::fused_linear_margin_cross_entropy (ArcFace), and checks the C++ API on the way.
//
//   1. values: margin_cross_entropy (ArcFace, CosFace, SphereFace with feature_norm; class
//      weights, label smoothing, ignore_index) and fused_linear_cross_entropy against the
//      composite that materializes the logits and calls torch's cross_entropy, in float64;
//   2. the wrappers' gradients (embeddings, class centres, bias, cos_logits, feature_norm)
//      against central finite differences, in float64;
//   3. fused_linear_margin_cross_entropy == margin_cross_entropy(normalize(x) @ normalize(W).T):
//      values and gradients, with a chunk size that does not divide C;
//   4. argument checks, and the refusal of double backward;
//   5. on a machine with CUDA (and a CUDA build of lossext): CUDA against CPU;
//   6. training: 8-D points clustered around 10 class centres, an MLP embedding into 16-D and
//      ArcFace class centres [10, 16] (margin 0.5, scale 16), Adam, 100 steps. Fails unless the
//      final loss is < 0.25 x initial and the nearest-centre accuracy is > 90%.
// Exits non-zero on any failure.
#include <torch/torch.h>

#include <lossext/lossext.h>

#include "example_checks.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

namespace F = torch::nn::functional;
using lossext::MarginOptions;
using lossext::Reduction;

using namespace example;

void expect_allclose(const torch::Tensor& a, const torch::Tensor& b, const std::string& what, double rtol = 1e-10,
                     double atol = 1e-12) {
  const bool ok = a.sizes() == b.sizes() && torch::allclose(a, b, rtol, atol, /*equal_nan=*/true);
  const double diff = a.sizes() == b.sizes() && a.numel() > 0 ? (a - b).abs().max().item<double>() : 0.0;
  expect(ok, what + ": max |difference| " + std::to_string(diff));
}

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// ---- 1. values against the composite -------------------------------------------------------

// The target margin of MarginOptions' comment (m1 = 1 or an integer m1, as the peers write it).
torch::Tensor target_margin(const torch::Tensor& c, const MarginOptions& o) {
  const double pi = 3.14159265358979323846;
  auto theta = torch::acos(c.clamp(-1.0, 1.0));
  torch::Tensor psi;
  if (o.m1 == 1.0) {
    psi = torch::cos(theta + o.m2);
    if (o.m2 > 0.0) {  // insightface's rule past theta + m2 > pi, or easy_margin
      psi = o.easy_margin ? torch::where(c > 0, psi, c)
                          : torch::where(c > std::cos(pi - o.m2), psi, c - std::sin(pi - o.m2) * o.m2);
    }
  } else {  // A-Softmax: (-1)^k cos(m1 theta + m2) - 2k
    auto k = torch::floor((o.m1 * theta + o.m2) / pi);
    auto sign = 1.0 - 2.0 * torch::remainder(k, 2.0);
    psi = sign * torch::cos(o.m1 * theta + o.m2) - 2.0 * k;
  }
  return (o.lambda * c + psi) / (1.0 + o.lambda) - o.m3;
}

// What pytorch-metric-learning and insightface run: margin on the target logit, scale, then
// torch's cross_entropy ([N, C] logits materialized).
torch::Tensor margin_ce_composite(const torch::Tensor& cos, const torch::Tensor& target, const MarginOptions& o,
                                  const torch::Tensor& weight = {}, const torch::Tensor& feature_norm = {}) {
  auto valid = target != o.ignore_index;
  auto t = torch::where(valid, target, torch::zeros_like(target)).unsqueeze(1);
  auto logits = cos.scatter(1, t, target_margin(cos.gather(1, t), o));
  logits = feature_norm.defined() ? logits * feature_norm.unsqueeze(1) : logits * o.scale;
  auto opts = F::CrossEntropyFuncOptions().ignore_index(o.ignore_index).label_smoothing(o.label_smoothing);
  if (weight.defined()) opts = opts.weight(weight);
  if (o.reduction == Reduction::None) opts = opts.reduction(torch::kNone);
  if (o.reduction == Reduction::Sum) opts = opts.reduction(torch::kSum);
  return F::cross_entropy(logits, target, opts);
}

torch::Tensor normalized_cos(const torch::Tensor& x, const torch::Tensor& w) {
  auto unit = F::NormalizeFuncOptions().dim(1);
  return F::normalize(x, unit).mm(F::normalize(w, unit).t());
}

void check_values() {
  torch::manual_seed(1);
  constexpr int64_t N = 9, C = 7;
  auto cos = torch::rand({N, C}, kF64) * 1.9 - 0.95;
  cos[0][2] = -0.97;  // past ArcFace's theta + m2 > pi for m2 = 0.5 (cos(pi - 0.5) = -0.878)
  auto target = torch::tensor({2, 0, 6, 3, 3, -100, 1, 5, 4}, torch::kLong);
  auto weight = torch::rand({C}, kF64) + 0.5;
  auto norms = torch::rand({N}, kF64) * 10 + 5;

  struct Case {
    const char* name;
    MarginOptions o;
    bool with_weight, with_norm;
  };
  const Case cases[] = {
      {"ArcFace mean", {.scale = 16, .m2 = 0.5}, false, false},
      {"ArcFace easy, sum", {.scale = 16, .m2 = 0.5, .easy_margin = true, .reduction = Reduction::Sum}, false, false},
      {"CosFace, weight, smoothing", {.scale = 30, .m3 = 0.35, .label_smoothing = 0.1}, true, false},
      {"combined, none", {.scale = 8, .m1 = 1, .m2 = 0.3, .m3 = 0.2, .reduction = Reduction::None}, true, false},
      {"SphereFace, feature_norm", {.m1 = 4, .lambda = 2}, false, true},
  };
  for (const Case& c : cases) {
    const auto w = c.with_weight ? std::optional<torch::Tensor>(weight) : std::nullopt;
    const auto fnorm = c.with_norm ? std::optional<torch::Tensor>(norms) : std::nullopt;
    auto got = lossext::margin_cross_entropy(cos, target, c.o, w, fnorm);
    auto ref = margin_ce_composite(cos, target, c.o, c.with_weight ? weight : torch::Tensor(),
                                   c.with_norm ? norms : torch::Tensor());
    expect_allclose(got, ref, std::string("margin_cross_entropy ") + c.name + " vs composite");
  }
  // The named variants are margin_cross_entropy with their margin; int32 labels are converted.
  auto t32 = target.to(torch::kInt);
  expect_allclose(lossext::arcface_loss(cos, t32, 16, 0.5), lossext::margin_cross_entropy(cos, target, {.scale = 16, .m2 = 0.5}),
                  "arcface_loss (int32 labels)");
  expect_allclose(lossext::cosface_loss(cos, target, 30, 0.4, weight, Reduction::Sum),
                  margin_ce_composite(cos, target, {.scale = 30, .m3 = 0.4, .reduction = Reduction::Sum}, weight),
                  "cosface_loss");
  expect_allclose(lossext::sphereface_loss(cos, target, 4, 1.0, norms),
                  margin_ce_composite(cos, target, {.m1 = 4, .lambda = 1.0}, {}, norms), "sphereface_loss");

  // fused_linear_cross_entropy is torch's cross_entropy of the linear layer.
  auto x = torch::randn({N, 5}, kF64), W = torch::randn({C, 5}, kF64), b = torch::randn({C}, kF64);
  auto ce = F::cross_entropy(F::linear(x, W, b), target, F::CrossEntropyFuncOptions().label_smoothing(0.05));
  expect_allclose(lossext::fused_linear_cross_entropy(x, W, target, b, 0.05, -100, Reduction::Mean, 3), ce,
                  "fused_linear_cross_entropy vs cross_entropy(linear)");
  std::printf("values vs the composite (cross_entropy over materialized logits): checked\n");
}

// ---- 2. gradients against finite differences ------------------------------------------------

void check_all_gradients() {
  torch::manual_seed(2);
  constexpr int64_t N = 6, D = 5, C = 7;
  auto x = torch::randn({N, D}, kF64), W = torch::randn({C, D}, kF64), b = torch::randn({C}, kF64) * 0.1;
  auto target = torch::tensor({3, 0, 6, -100, 2, 3}, torch::kLong);
  auto coeff = torch::randn({N}, kF64);  // for reduction None
  auto reduce = [&](const torch::Tensor& l) { return l.dim() == 0 ? l : (l * coeff).sum(); };

  const std::pair<const char*, MarginOptions> fused_cases[] = {
      {"fused ArcFace/Mean (chunk 3)", {.scale = 8, .m2 = 0.5, .label_smoothing = 0.1}},
      {"fused CosFace/Sum (chunk 3)", {.scale = 8, .m3 = 0.35, .reduction = Reduction::Sum}},
      {"fused combined/None (chunk 3)", {.scale = 4, .m2 = 0.3, .m3 = 0.2, .reduction = Reduction::None}},
  };
  for (const auto& [name, o] : fused_cases) {
    check_gradients(
        name, [&](const auto& v) { return reduce(lossext::fused_linear_margin_cross_entropy(v[0], v[1], target, o, 3)); },
        {x, W}, {"embeddings", "weight"});
  }
  check_gradients(
      "fused_linear_cross_entropy/Mean (chunk 3)",
      [&](const auto& v) { return lossext::fused_linear_cross_entropy(v[0], v[1], target, v[2], 0.1, -100, Reduction::Mean, 3); },
      {x, W, b}, {"input", "weight", "bias"});

  // margin_cross_entropy: cos_logits away from +-1 and from ArcFace's switch at -0.878.
  auto cos = (torch::rand({N, C}, kF64) * 1.6 - 0.8);
  auto norms = torch::rand({N}, kF64) * 3 + 2;
  auto weight = torch::rand({C}, kF64) + 0.5;
  check_gradients(
      "margin_cross_entropy ArcFace/weight/Mean",
      [&](const auto& v) { return lossext::margin_cross_entropy(v[0], target, {.scale = 8, .m2 = 0.5}, weight); },
      {cos}, {"cos_logits"});
  check_gradients(
      "margin_cross_entropy CosFace/weight/norm/Sum",
      [&](const auto& v) {
        return lossext::margin_cross_entropy(v[0], target, {.m3 = 0.35, .reduction = Reduction::Sum}, weight, v[1]);
      },
      {cos, norms}, {"cos_logits", "feature_norm"});
  check_gradients(
      "sphereface_loss feature_norm/None",
      [&](const auto& v) {
        return reduce(lossext::sphereface_loss(v[0], target, 4, 1.0, v[1], 64, {}, Reduction::None));
      },
      {cos, norms}, {"cos_logits", "feature_norm"});
}

// ---- 3. fused == margin_cross_entropy over the normalized product ---------------------------

void check_fused_equals_unfused() {
  torch::manual_seed(3);
  constexpr int64_t N = 11, D = 6, C = 13, chunk = 4;  // 4 does not divide 13
  auto x0 = torch::randn({N, D}, kF64) * 3, w0 = torch::randn({C, D}, kF64);
  auto target = torch::randint(C, {N}, torch::kLong);
  target[4] = -1;
  const MarginOptions cases[] = {
      {.scale = 16, .m2 = 0.5, .label_smoothing = 0.05, .ignore_index = -1},
      {.scale = 16, .m2 = 0.5, .easy_margin = true, .ignore_index = -1, .reduction = Reduction::Sum},
      {.scale = 30, .m1 = 2, .m3 = 0.1, .lambda = 1, .ignore_index = -1, .reduction = Reduction::None},
  };
  auto gy = torch::randn({N}, kF64);
  for (const MarginOptions& o : cases) {
    auto run = [&](bool fused) {
      auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      auto loss = fused ? lossext::fused_linear_margin_cross_entropy(x, w, target, o, chunk)
                        : lossext::margin_cross_entropy(normalized_cos(x, w), target, o);
      (loss.dim() == 0 ? loss : (loss * gy).sum()).backward();
      return std::vector<torch::Tensor>{loss.detach(), x.grad(), w.grad()};
    };
    auto a = run(true), b = run(false);
    const std::string what = "fused vs unfused (m1 " + std::to_string(o.m1) + ", reduction " +
                             std::to_string(int(o.reduction)) + ")";
    expect_allclose(a[0], b[0], what + ": loss");
    expect_allclose(a[1], b[1], what + ": d/dembeddings", 1e-9, 1e-12);
    expect_allclose(a[2], b[2], what + ": d/dweight", 1e-9, 1e-12);
  }
  // Only the weight needs a gradient (a frozen backbone): the embeddings get none.
  auto w = w0.clone().requires_grad_(true);
  lossext::fused_linear_margin_cross_entropy(x0, w, target, {.scale = 16, .m2 = 0.5, .ignore_index = -1}, chunk).backward();
  expect(w.grad().defined() && !x0.grad().defined(), "fused: gradient of the weight only");
  std::printf("fused_linear_margin_cross_entropy == margin_cross_entropy(normalize(x) normalize(W)^T): checked\n");
}

// ---- 4. argument checks and double backward -------------------------------------------------

void check_errors() {
  auto x = torch::randn({4, 16}, kF64), W = torch::randn({10, 16}, kF64);
  auto cos = torch::rand({4, 10}, kF64) - 0.5;
  auto t = torch::tensor({1, 2, 3, 4}, torch::kLong);
  expect_throws<c10::ValueError>("D mismatch", "weight [C, D] has D = 8 but embeddings [N, D] has D = 16",
                                 [&] { lossext::fused_linear_margin_cross_entropy(x, W.narrow(1, 0, 8), t); });
  expect_throws<c10::TypeError>("weight dtype", "does not match embeddings dtype",
                                [&] { lossext::fused_linear_margin_cross_entropy(x, W.to(torch::kFloat32), t); });
  expect_throws<c10::TypeError>("float labels", "target must be integer class indices",
                                [&] { lossext::fused_linear_margin_cross_entropy(x, W, t.to(torch::kFloat64)); });
  expect_throws<c10::ValueError>("label shape", "target must have shape [4], got [2]",
                                 [&] { lossext::margin_cross_entropy(cos, t.narrow(0, 0, 2)); });
  expect_throws<c10::ValueError>("1-D cos_logits", "cos_logits must be 2-D [N, C]",
                                 [&] { lossext::margin_cross_entropy(cos.view(-1), t); });
  expect_throws<c10::ValueError>("m2 >= pi", "m2 must be in [0, pi), got 4",
                                 [&] { lossext::arcface_loss(cos, t, 64, 4.0); });
  expect_throws<c10::ValueError>("scale <= 0", "scale must be > 0, got 0",
                                 [&] { lossext::margin_cross_entropy(cos, t, {.scale = 0}); });
  expect_throws<c10::ValueError>("label_smoothing", "label_smoothing must be in [0, 1], got 1.5",
                                 [&] { lossext::margin_cross_entropy(cos, t, {.label_smoothing = 1.5}); });
  expect_throws<c10::ValueError>("weight shape", "weight must have shape [C] = [10], got [3]",
                                 [&] { lossext::margin_cross_entropy(cos, t, {}, torch::ones({3}, kF64)); });
  expect_throws<c10::ValueError>("bias with normalize", "bias needs normalize=false", [&] {
    lossext::fused_linear_margin_cross_entropy(x, W, t, {}, 0, true, torch::zeros({10}, kF64));
  });
  expect_throws<c10::ValueError>("angular margin without normalize", "normalize=false takes only the additive margin",
                                 [&] { lossext::fused_linear_margin_cross_entropy(x, W, t, {.m2 = 0.5}, 0, false); });
  expect_throws<c10::ValueError>("negative chunk", "chunk_size must be >= 0",
                                 [&] { lossext::fused_linear_margin_cross_entropy(x, W, t, {}, -2); });
  expect_throws<c10::ValueError>("class weight requires grad", "not differentiable with respect to argument 'weight'",
                                 [&] {
                                   lossext::margin_cross_entropy(cos, t, {}, torch::ones({10}, kF64).requires_grad_());
                                 });
  {  // ... but under no_grad it is only data, as in torch's cross_entropy
    torch::NoGradGuard no_grad;
    auto l = lossext::margin_cross_entropy(cos, t, {}, torch::ones({10}, kF64).requires_grad_());
    expect(std::isfinite(l.item<double>()), "class weight requiring grad under no_grad");
  }
  // A label out of range: the CPU kernel throws (the operator's error, through the dispatcher).
  if (!cos.is_cuda()) {
    try {
      lossext::margin_cross_entropy(cos, torch::tensor({1, 2, 10, 4}, torch::kLong));
      expect(false, "label out of range: no exception");
    } catch (const std::exception& e) {
      expect(std::string(e.what()).find("target") != std::string::npos,
             std::string("label out of range: message lacks 'target': ") + e.what());
    }
  }

  // backward(create_graph) works; differentiating its gradients is refused.
  {
    auto xr = x.clone().requires_grad_(true), wr = W.clone().requires_grad_(true);
    auto loss = lossext::fused_linear_margin_cross_entropy(xr, wr, t, {.scale = 16, .m2 = 0.5}, 3);
    auto g = torch::autograd::grad({loss}, {xr, wr}, {}, /*retain_graph=*/true, /*create_graph=*/true);
    expect(g[0].requires_grad() && g[1].requires_grad(), "fused: the create_graph gradients require grad");
    expect_throws<c10::NotImplementedError>("fused double backward", "double backward is not supported",
                                            [&] { torch::autograd::grad({g[1].sum()}, {xr}); });
  }
  {
    auto cr = cos.clone().requires_grad_(true);
    auto norms = torch::full({4}, 5.0, kF64).requires_grad_(true);
    auto loss = lossext::margin_cross_entropy(cr, t, {.m2 = 0.5}, {}, norms);
    auto g = torch::autograd::grad({loss}, {cr, norms}, {}, true, true);
    expect(g[0].requires_grad() && g[1].requires_grad(), "margin_cross_entropy: create_graph gradients require grad");
    expect_throws<c10::NotImplementedError>("margin_cross_entropy double backward", "double backward is not supported",
                                            [&] { torch::autograd::grad({g[0].sum()}, {cr}); });
  }
  std::printf("argument checks and double backward: checked\n");
}

// ---- 5. CUDA against CPU (when there is a GPU) --------------------------------------------------

void check_cuda() {
  if (!torch::cuda::is_available() || !lossext::with_cuda()) {
    std::printf("CUDA check skipped (CUDA available: %d, lossext CUDA kernels: %d)\n",
                int(torch::cuda::is_available()), int(lossext::with_cuda()));
    return;
  }
  torch::manual_seed(5);
  auto x = torch::randn({256, 32}, kF64), w = torch::randn({1000, 32}, kF64);
  auto target = torch::randint(1000, {256}, torch::kLong);
  const MarginOptions o{.scale = 32, .m2 = 0.5, .label_smoothing = 0.1};
  auto run = [&](torch::Device dev) {
    auto xd = x.to(dev).requires_grad_(true), wd = w.to(dev).requires_grad_(true);
    auto fused = lossext::fused_linear_margin_cross_entropy(xd, wd, target.to(dev), o, 256);
    auto cos = normalized_cos(x, w).to(dev).requires_grad_(true);
    auto ce = lossext::margin_cross_entropy(cos, target.to(dev), o);
    (fused + ce).backward();
    return std::vector<torch::Tensor>{fused.detach().cpu(), xd.grad().cpu(), wd.grad().cpu(), ce.detach().cpu(),
                                      cos.grad().cpu()};
  };
  auto a = run(torch::kCPU), b = run(torch::kCUDA);
  for (size_t i = 0; i < a.size(); ++i) expect_allclose(b[i], a[i], "CUDA vs CPU, output " + std::to_string(i), 1e-9, 1e-12);
  std::printf("CUDA vs CPU: checked\n");
}

// ---- 6. training ----------------------------------------------------------------------------------

void train() {
  constexpr int64_t N = 1000, F_IN = 8, D = 16, C = 10, steps = 100, batch = 200;
  torch::manual_seed(0);
  // "Faces": points around one centre per identity.
  auto centres = torch::randn({C, F_IN}) * 2.0;
  auto labels = torch::randint(C, {N}, torch::kLong);
  auto X = centres.index_select(0, labels) + 0.7 * torch::randn({N, F_IN});

  auto model = std::make_shared<Mlp>(F_IN, 64, D);
  auto class_centres = torch::randn({C, D}).requires_grad_(true);  // ArcFace's W
  std::vector<torch::Tensor> params = model->parameters();
  params.push_back(class_centres);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));
  const MarginOptions arcface{.scale = 16, .m2 = 0.5};

  auto evaluate = [&](double* accuracy) {
    torch::NoGradGuard no_grad;
    auto emb = model->forward(X);
    const double loss = lossext::fused_linear_margin_cross_entropy(emb, class_centres, labels, arcface).item<double>();
    auto pred = normalized_cos(emb, class_centres).argmax(1);
    *accuracy = pred.eq(labels).to(torch::kFloat64).mean().item<double>();
    return loss;
  };
  double acc0 = 0, acc1 = 0;
  const double initial = evaluate(&acc0);
  std::printf("training: %lld samples, %lld identities, D = %lld, ArcFace m = 0.5, s = 16: initial loss %.4f "
              "(accuracy %.1f%%)\n",
              (long long)N, (long long)C, (long long)D, initial, 100 * acc0);
  for (int64_t step = 1; step <= steps; ++step) {
    auto idx = torch::randint(N, {batch}, torch::kLong);
    auto emb = model->forward(X.index_select(0, idx));
    // chunk_size 4: the classes in 3 chunks, as a large-C head would walk them
    auto loss = lossext::fused_linear_margin_cross_entropy(emb, class_centres, labels.index_select(0, idx), arcface, 4);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step % 20 == 0) std::printf("  step %3lld  batch loss %.4f\n", (long long)step, loss.item<double>());
  }
  const double final_loss = evaluate(&acc1);
  std::printf("training: final loss %.4f (%.1f%% of initial), nearest-centre accuracy %.1f%%\n", final_loss,
              100.0 * final_loss / initial, 100 * acc1);
  expect(std::isfinite(final_loss) && final_loss < 0.25 * initial,
         "training did not reduce the loss below a quarter: " + std::to_string(initial) + " -> " +
             std::to_string(final_loss));
  expect(acc1 > 0.9, "nearest-centre accuracy after training only " + std::to_string(acc1));
}

}  // namespace

int main() {
  return example::run_checks([] {
    check_values();
    std::printf("gradients vs finite differences:\n");
    check_all_gradients();
    check_fused_equals_unfused();
    check_errors();
    check_cuda();
    train();
  });
}
