// A libtorch consumer of lossext's dense-prediction family: lossext::joints_mse_loss (HRNet's
// JointsMSELoss / JointsOHKMMSELoss) checked and used.
//
//   1. values against HRNet's formula written out joint by joint (0.5 MSE of w x and w y, the
//      mean over joints; OHKM's per-sample top-k with ties to the lower joint, k >= K);
//   2. gradients in output, target and target_weight against central finite differences
//      (float64), with and without OHKM, every reduction;
//   3. argument checks and the refusal of double backward;
//   4. training: a linear map from features to 4 heatmaps of 6 x 5, Adam, 150 steps, with OHKM;
//      fails unless the final loss is < 0.3 x the initial one.
//   5. lossext::mask_rcnn_loss against the gather + binary_cross_entropy_with_logits composite
//      (torchvision's maskrcnn_loss after its projection), its gradients against finite
//      differences, no RoIs (a zero attached to the graph), a bad label's error.
// Exits non-zero on any failure.
#include <torch/torch.h>

#include <lossext/lossext.h>

#include "example_checks.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace example;

// HRNet lib/core/loss.py, per joint: 0.5 * mean over (b, pixels) of (w x - w y)^2; OHKM per
// sample: the k largest of the per-(b, k) terms (ties to the lower joint), summed / k.
double hrnet(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& w, int64_t topk) {
  const int64_t B = x.size(0), K = x.size(1);
  auto d = (x * w.reshape({B, K, 1, 1}) - y * w.reshape({B, K, 1, 1})).pow(2).reshape({B, K, -1}).mean(-1) * 0.5;
  if (topk <= 0) return d.mean().item<double>();
  double total = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> idx(K);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t i, int64_t j) {
      return d[b][i].item<double>() > d[b][j].item<double>();
    });
    const int64_t k = std::min(topk, K);
    double s = 0.0;
    for (int64_t i = 0; i < k; ++i) s += d[b][idx[i]].item<double>();
    total += s / double(k);
  }
  return total / double(B);
}

void check_values() {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::manual_seed(0);
  auto x = torch::rand({3, 5, 4, 3}, opts), y = torch::rand({3, 5, 4, 3}, opts);
  auto w = (torch::rand({3, 5, 1}, opts) > 0.3).to(torch::kFloat64);
  const double plain = lossext::joints_mse_loss(x, y, w).item<double>();
  expect(close(plain, hrnet(x, y, w, 0), 1e-14, 1e-12), "joints_mse_loss against HRNet's JointsMSELoss");
  for (int64_t k : {1, 3, 5, 8}) {
    lossext::JointsMSEOptions o;
    o.ohkm_topk = k;
    const double v = lossext::joints_mse_loss(x, y, w, o).item<double>();
    expect(close(v, hrnet(x, y, w, k), 1e-14, 1e-12), "OHKM k=" + std::to_string(k) + " against HRNet's");
  }
  // ties: four equal joints and one larger; k = 2 takes the larger and joint 0
  auto xt = torch::zeros({1, 5, 2, 2}, opts), yt = torch::full({1, 5, 2, 2}, 0.5, opts);
  yt.select(1, 3).fill_(1.0);
  lossext::JointsMSEOptions o2;
  o2.ohkm_topk = 2;
  o2.reduction = lossext::Reduction::None;
  expect(close(lossext::joints_mse_loss(xt, yt, {}, o2).item<double>(), (0.5 + 0.125) / 2, 1e-15, 0),
         "OHKM ties: the larger joint and the lowest of the tied ones");
  auto none = lossext::joints_mse_loss(x, y, w, {std::nullopt, lossext::Reduction::None});
  expect(none.sizes() == torch::IntArrayRef({3, 5}), "Reduction::None gives [B, K]");
  std::printf("  values match HRNet's loops (plain and OHKM k = 1, 3, 5, 8), ties go to the lower joint\n");
}

void check_grads() {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::manual_seed(1);
  auto x = torch::rand({2, 4, 3, 2}, opts), y = torch::rand({2, 4, 3, 2}, opts), w = torch::rand({2, 4}, opts);
  for (int64_t k : {0, 2}) {
    for (auto red : {lossext::Reduction::Mean, lossext::Reduction::Sum, lossext::Reduction::None}) {
      lossext::JointsMSEOptions o;
      if (k) o.ohkm_topk = k;
      o.reduction = red;
      check_gradients("joints_mse_loss k=" + std::to_string(k) + " red=" + std::to_string(int(red)),
                      [&](const std::vector<torch::Tensor>& v) {
                        return lossext::joints_mse_loss(v[0], v[1], v[2], o).sum();
                      },
                      {x, y, w}, {"output", "target", "target_weight"});
    }
  }
}

void check_errors() {
  auto x = torch::rand({2, 3, 4, 4}), y = torch::rand({2, 3, 4, 4});
  expect_throws<c10::ValueError>("target shape", "target shape", [&] { lossext::joints_mse_loss(x, y.narrow(1, 0, 2)); });
  expect_throws<c10::ValueError>("weight shape", "target_weight must have shape",
                                 [&] { lossext::joints_mse_loss(x, y, torch::ones({2, 2})); });
  expect_throws<c10::ValueError>("ohkm_topk", "ohkm_topk must be >= 1",
                                 [&] { lossext::joints_mse_loss(x, y, {}, {int64_t(0), lossext::Reduction::Mean}); });
  expect_throws<c10::ValueError>("1-D output", "output must be [B, K, ...]",
                                 [&] { lossext::joints_mse_loss(x.reshape(-1), y.reshape(-1)); });
  auto xg = x.clone().requires_grad_(true);
  auto l = lossext::joints_mse_loss(xg, y);
  auto g = torch::autograd::grad({l}, {xg}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  expect_throws<c10::Error>("double backward", "double backward", [&] { g.sum().backward(); });
  std::printf("  argument checks and the double-backward refusal hold\n");
}

void train() {
  torch::manual_seed(2);
  const int64_t B = 32, F = 16, K = 4, H = 6, W = 5;
  auto feats = torch::randn({B, F});
  auto truth = torch::randn({F, K * H * W}) * 0.3;
  auto target = torch::sigmoid(feats.matmul(truth)).reshape({B, K, H, W});
  auto vis = (torch::rand({B, K, 1}) > 0.2).to(torch::kFloat32);
  torch::nn::Linear net(F, K * H * W);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(3e-2));
  lossext::JointsMSEOptions o;
  o.ohkm_topk = 2;
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 150; ++step) {
    auto out = net->forward(feats).reshape({B, K, H, W});
    auto loss = lossext::joints_mse_loss(out, target, vis, o);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  std::printf("  training with OHKM k=2: loss %.5f -> %.5f\n", first, last);
  expect(last < 0.3 * first, "training reduces the loss below 0.3 x its start");
}

void check_mask_loss() {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::manual_seed(3);
  auto x = torch::randn({5, 4, 6, 6}, opts) * 3, t = torch::rand({5, 6, 6}, opts);
  auto lab = torch::tensor({0, 3, 1, 1, 2});
  auto want = torch::binary_cross_entropy_with_logits(x.index({torch::arange(5), lab}), t);
  expect(close(lossext::mask_rcnn_loss(x, lab, t).item<double>(), want.item<double>(), 1e-14, 1e-12),
         "mask_rcnn_loss against gather + BCE-with-logits");
  for (auto red : {lossext::Reduction::Mean, lossext::Reduction::None}) {
    check_gradients("mask_rcnn_loss red=" + std::to_string(int(red)),
                    [&](const std::vector<torch::Tensor>& v) { return lossext::mask_rcnn_loss(v[0], lab.narrow(0, 0, 2), v[1], red).sum(); },
                    {x.narrow(0, 0, 2), t.narrow(0, 0, 2)}, {"mask_logits", "mask_targets"});
  }
  auto empty = torch::zeros({0, 4, 6, 6}, opts).requires_grad_(true);
  auto z = lossext::mask_rcnn_loss(empty, torch::zeros({0}, torch::kLong), torch::zeros({0, 6, 6}, opts));
  expect(z.item<double>() == 0.0 && z.requires_grad(), "no RoIs: a zero attached to the graph");
  bool threw = false;  // the kernel's check: a std::runtime_error naming the argument
  try {
    lossext::mask_rcnn_loss(x, torch::tensor({0, 4, 1, 1, 2}), t);
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()).find("'labels' has value 4 at index 1") != std::string::npos;
  }
  expect(threw, "a bad label throws, naming labels, its value and index");
  std::printf("  mask_rcnn_loss matches the gather + BCE composite\n");
}

// dice (multiclass and multilabel, against smp 0.6.0's formula written here), masked L1 and
// the GAN terms (against their formulas), with finite-difference gradients.
void check_synthesis_and_dice() {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::manual_seed(4);
  auto x = torch::randn({2, 3, 4, 5}, opts), lab = torch::randint(0, 3, {2, 4, 5});
  {
    auto p = torch::softmax(x, 1).permute({1, 0, 2, 3}).reshape({3, -1});
    auto t = torch::one_hot(lab, 3).permute({3, 0, 1, 2}).reshape({3, -1}).to(torch::kFloat64);
    auto ps = p.sum(1), ts = t.sum(1), inter = (ps + ts - (p - t).abs().sum(1)) / 2;
    auto want = (1.0 - (inter + 1.0) / ((ps + ts) / 2 + 1.0)).mean().item<double>();
    lossext::DiceOptions o;
    o.smooth = 1.0;
    expect(close(lossext::dice_loss(x, lab, o).item<double>(), want, 1e-14, 1e-12), "dice_loss against smp's score");
    o.semimetric = false;
    auto classic = (1.0 - (2 * (p * t).sum(1) + 1.0) / (ps + ts + 1.0)).mean().item<double>();
    expect(close(lossext::dice_loss(x, lab, o).item<double>(), classic, 1e-14, 1e-12), "dice_loss classic formula");
  }
  check_gradients("dice_loss multiclass", [&](const std::vector<torch::Tensor>& v) { return lossext::dice_loss(v[0], lab); },
                  {x}, {"logits"});
  lossext::DiceOptions ml;
  ml.mode = lossext::DiceOptions::Mode::Multilabel;
  auto soft = torch::rand({2, 3, 4, 5}, opts);
  check_gradients("dice_loss multilabel", [&](const std::vector<torch::Tensor>& v) { return lossext::dice_loss(v[0], soft, ml); },
                  {x}, {"logits"});
  auto y = torch::randn({2, 3, 4, 5}, opts), m = (torch::rand({2, 4, 5}, opts) > 0.5).to(torch::kFloat64);
  auto [fg, bg] = lossext::masked_l1_loss(x, y, m);
  auto d = (x - y).abs(), mm = m.unsqueeze(1);
  expect(close(fg.item<double>(), ((d * mm).sum() / m.sum()).item<double>(), 1e-14, 1e-12) &&
             close(bg.item<double>(), ((d * (1 - mm)).sum() / (1 - m).sum()).item<double>(), 1e-14, 1e-12),
         "masked_l1_loss against its formula (the mask counted once per pixel)");
  auto [fg0, bg0] = lossext::masked_l1_loss(x, y, torch::zeros({2, 4, 5}, opts));
  expect(fg0.item<double>() == 0.0 && std::isfinite(bg0.item<double>()), "an empty foreground gives 0");
  check_gradients("masked_l1_loss", [&](const std::vector<torch::Tensor>& v) {
    auto [a, b] = lossext::masked_l1_loss(v[0], v[1], m);
    return a + 2 * b;
  }, {x, y}, {"input", "target"});
  auto z = torch::tensor({-100.0, -1.0, 0.5, 100.0}, opts);
  expect(close(lossext::gan_discriminator_loss(z, z).item<double>(),
               (torch::softplus(-z).mean() + torch::softplus(z).mean()).item<double>(), 1e-14, 1e-12),
         "gan_discriminator_loss = softplus(-real) + softplus(fake)");
  check_gradients("adversarial_loss", [&](const std::vector<torch::Tensor>& v) { return lossext::adversarial_loss(v[0], true); },
                  {z}, {"logits"});
  expect(close(lossext::pose_regression_loss(x, y, lossext::Reduction::Sum).item<double>(),
               ((x - y) * (x - y)).sum().item<double>(), 1e-14, 1e-12),
         "pose_regression_loss 'sum' = sum of squared differences");
  std::printf("  dice, masked L1, pose regression and GAN terms match their formulas\n");
}

}  // namespace

int main() {
  return run_checks([] {
    check_values();
    check_grads();
    check_errors();
    train();
    check_mask_loss();
    check_synthesis_and_dice();
  });
}
