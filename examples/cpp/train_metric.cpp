// A libtorch consumer of lossext's metric family: trains a tiny embedding network with
// Triplet-Center loss plus softmax (He et al., CVPR 2018: L = lambda L_tc + L_softmax; the softmax
// is a plain linear layer and torch's cross_entropy), and checks on the way:
//   1. lossext::triplet_center_loss and center_loss against the formulas written out in float64;
//   2. their gradients (features and centers) against central finite differences, in float64;
//   3. argument checks;
//   4. training: 4 Gaussian classes in 8-D, an MLP to 4-D features, centers as a parameter, SGD,
//      150 steps. Fails unless the final total loss is < 0.5 x the initial one;
//   5. triplet_margin_loss (batch-hard by hand, batch-all gradients against finite differences, a
//      reference set's gradient) and contrastive_loss against its formula.
// Exits non-zero on any failure.
#include <torch/torch.h>

#include <lossext/lossext.h>

#include <cmath>
#include <cstdio>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

// The paper's Eq. 3 with D = 1/2 |f - c|^2, every other center a negative, Mean over N.
double tc_formula(const torch::Tensor& f, const torch::Tensor& t, const torch::Tensor& c, double m) {
  double total = 0;
  const int64_t N = f.size(0), C = c.size(0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t y = t[i].item<int64_t>();
    const double dp = 0.5 * (f[i] - c[y]).pow(2).sum().item<double>();
    double dn = INFINITY;
    for (int64_t j = 0; j < C; ++j)
      if (j != y) dn = std::min(dn, 0.5 * (f[i] - c[j]).pow(2).sum().item<double>());
    total += std::max(dp + m - dn, 0.0);
  }
  return total / N;
}

}  // namespace

int main() {
  torch::manual_seed(0);
  auto dbl = torch::TensorOptions().dtype(torch::kFloat64);

  // 1. values
  auto f = torch::randn({9, 5}, dbl), c = torch::randn({4, 5}, dbl);
  auto t = torch::randint(0, 4, {9}, torch::kLong);
  const double v = lossext::triplet_center_loss(f, t, c, {.margin = 2.0}).item<double>();
  check(std::abs(v - tc_formula(f, t, c, 2.0)) < 1e-12, "triplet_center_loss equals Eq. 3");
  const double cl = lossext::center_loss(f, t, c).item<double>();
  check(std::abs(cl - 0.5 * (f - c.index_select(0, t)).pow(2).sum().item<double>() / 9) < 1e-12,
        "center_loss equals 1/2 |x - c_y|^2 / N");

  // 2. gradients against finite differences
  auto fg = f.clone().requires_grad_(true), cg = c.clone().requires_grad_(true);
  lossext::triplet_center_loss(fg, t, cg, {.margin = 2.0, .distance = lossext::CenterDistance::Euclidean}).backward();
  const double h = 1e-6;
  for (int k = 0; k < 5; ++k) {
    auto fp = f.clone(), fm = f.clone();
    fp[1][k] += h;
    fm[1][k] -= h;
    const lossext::TripletCenterOptions o{.margin = 2.0, .distance = lossext::CenterDistance::Euclidean};
    const double num = (lossext::triplet_center_loss(fp, t, c, o).item<double>() -
                        lossext::triplet_center_loss(fm, t, c, o).item<double>()) / (2 * h);
    check(std::abs(num - fg.grad()[1][k].item<double>()) < 1e-6, "d triplet_center_loss / d features");
  }
  check(cg.grad().defined() && cg.grad().abs().sum().item<double>() > 0, "triplet_center_loss gives center gradients");

  // 3. argument checks
  bool threw = false;
  try {
    lossext::triplet_center_loss(f, t, c, {.margin = -1.0});
  } catch (const c10::ValueError&) {
    threw = true;
  }
  check(threw, "a negative margin is refused");
  threw = false;
  try {
    lossext::center_loss(f, t, torch::randn({4, 3}, dbl));
  } catch (const c10::ValueError&) {
    threw = true;
  }
  check(threw, "a D mismatch is refused");

  // 4. training: Triplet-Center + softmax
  const int64_t K = 4, N = 256;
  auto means = torch::randn({K, 8}) * 3.0;
  auto labels = torch::randint(0, K, {N}, torch::kLong);
  auto x = means.index_select(0, labels) + torch::randn({N, 8});
  torch::nn::Sequential net(torch::nn::Linear(8, 32), torch::nn::ReLU(), torch::nn::Linear(32, 4));
  torch::nn::Linear classifier(4, K);
  auto centers = torch::randn({K, 4}).requires_grad_(true);
  std::vector<torch::Tensor> params = net->parameters();
  for (auto& p : classifier->parameters()) params.push_back(p);
  params.push_back(centers);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.05));
  const double lambda = 0.1;
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    auto feat = net->forward(x);
    auto loss = lambda * lossext::triplet_center_loss(feat, labels, centers, {.margin = 1.0}) +
                torch::nn::functional::cross_entropy(classifier->forward(feat), labels);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  std::printf("lossext %s: Triplet-Center + softmax, loss %.4f -> %.4f\n", lossext::version(), first, last);
  check(std::isfinite(last) && last < 0.5 * first, "the loss falls by half");

  // 5. pair losses
  auto x1 = torch::tensor({0.0, 2.0, -2.0, 1.0, -1.0}, dbl).reshape({5, 1});
  auto y1 = torch::tensor({0, 0, 0, 1, 1}, torch::kLong);
  auto per = lossext::triplet_margin_loss(x1, y1, {.margin = 0.5, .reduction = lossext::PairReduction::None});
  check(std::abs(per[0].item<double>() - 1.5) < 1e-12, "batch-hard: farthest positive 2, nearest negative 1");
  auto e = torch::randn({10, 3}, dbl), ey = torch::randint(0, 3, {10}, torch::kLong);
  const lossext::TripletMarginOptions ba{.margin = 0.5, .mining = lossext::Mining::BatchAll};
  auto eg = e.clone().requires_grad_(true);
  lossext::triplet_margin_loss(eg, ey, ba).backward();
  for (int k = 0; k < 3; ++k) {
    auto ep = e.clone(), em = e.clone();
    ep[2][k] += h;
    em[2][k] -= h;
    const double num = (lossext::triplet_margin_loss(ep, ey, ba).item<double>() -
                        lossext::triplet_margin_loss(em, ey, ba).item<double>()) / (2 * h);
    check(std::abs(num - eg.grad()[2][k].item<double>()) < 1e-6, "d triplet_margin_loss (batch_all) / d embeddings");
  }
  auto ref = torch::randn({7, 3}, dbl).requires_grad_(true);
  auto refy = torch::randint(0, 3, {7}, torch::kLong);
  lossext::triplet_margin_loss(e, ey, {}, ref, refy).backward();
  check(ref.grad().defined() && ref.grad().abs().sum().item<double>() > 0, "a reference set takes gradients");
  // contrastive: relu(d - 0.2) over positive pairs, relu(1.5 - d) over negative ones, each kind
  // averaged over its non-zero terms
  double sp = 0, sn = 0;
  int64_t np = 0, nn = 0;
  for (int64_t i = 0; i < 10; ++i)
    for (int64_t j = 0; j < 10; ++j) {
      if (i == j) continue;
      const double d = (e[i] - e[j]).pow(2).sum().sqrt().item<double>();
      const double v = ey[i].item<int64_t>() == ey[j].item<int64_t>() ? std::max(d - 0.2, 0.0) : std::max(1.5 - d, 0.0);
      if (ey[i].item<int64_t>() == ey[j].item<int64_t>()) {
        sp += v;
        np += v > 0;
      } else {
        sn += v;
        nn += v > 0;
      }
    }
  const double want = (np ? sp / np : 0.0) + (nn ? sn / nn : 0.0);
  const double got = lossext::contrastive_loss(e, ey, {.pos_margin = 0.2, .neg_margin = 1.5}).item<double>();
  check(std::abs(got - want) < 1e-12, "contrastive_loss equals its formula (pml's AvgNonZeroReducer)");
  return failures == 0 ? 0 : 1;
}
