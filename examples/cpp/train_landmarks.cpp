// A libtorch consumer of lossext: trains a small landmark regressor with lossext::wing_loss, and
// checks the operators and the C++ autograd wrappers on the way.
//
//   1. an operator called by name through the c10 dispatcher (no wrapper) against values
//      computed by hand from the papers' formulas;
//   2. the gradients of lossext::wing_loss / adaptive_wing_loss (input, target, broadcast
//      weight; every reduction) against central finite differences, in float64;
//   3. argument checks, and the refusal of double backward;
//   4. on a machine with CUDA (and a CUDA build of lossext): CUDA against CPU;
//   5. training: random "image features" -> 68 x 2 landmarks from a fixed random linear map plus
//      noise, a two-layer MLP, Adam, 200 steps. Fails unless the final loss is < 0.5 x initial.
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

using namespace example;

// ---- 1. a direct dispatcher call against the paper's formula ----------------------------------

// Adaptive Wing, Wang et al. 2019, Eq. (6), written out as in the paper.
double awing_paper(double x, double y, double alpha, double omega, double eps, double theta) {
  const double D = std::abs(y - x), p = alpha - y;
  if (D < theta) return omega * std::log(1.0 + std::pow(D / eps, p));
  const double r = theta / eps;
  const double A = omega * (1.0 / (1.0 + std::pow(r, p))) * p * std::pow(r, p - 1.0) / eps;
  const double C = theta * A - omega * std::log(1.0 + std::pow(r, p));
  return A * D - C;
}

// Wing, Feng et al. 2018, Eq. (5).
double wing_paper(double x, double y, double w, double eps) {
  const double d = std::abs(x - y);
  const double C = w - w * std::log(1.0 + w / eps);
  return d < w ? w * std::log(1.0 + d / eps) : d - C;
}

void check_dispatcher_call() {
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, double,
                         double, double, int64_t);
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("lossext::adaptive_wing_loss", "").typed<Sig>();
  const double alpha = 2.1, omega = 14.0, eps = 1.0, theta = 0.5;
  const std::vector<double> xs = {0.2, 0.65, 1.5, -0.3, 0.0, 0.95};
  const std::vector<double> ys = {0.5, 0.6, 0.0, 0.2, 1.0, 1.0};  // D: 0.3, 0.05, 1.5, 0.5, 1.0, 0.05
  const std::vector<double> ws = {1.0, 0.5, 2.0, 1.0, 0.0, 3.0};
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto x = torch::tensor(xs, opts), y = torch::tensor(ys, opts), w = torch::tensor(ws, opts);

  auto none = op.call(x, y, w, alpha, omega, eps, theta, /*reduction=*/0);
  auto sum = op.call(x, y, w, alpha, omega, eps, theta, /*reduction=*/2);
  auto mean = op.call(x, y, std::nullopt, alpha, omega, eps, theta, /*reduction=*/1);
  double ref_sum = 0.0, ref_mean = 0.0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double l = awing_paper(xs[i], ys[i], alpha, omega, eps, theta);
    expect(close(none[i].item<double>(), ws[i] * l, 1e-12, 1e-10),
           "lossext::adaptive_wing_loss element " + std::to_string(i) + ": got " +
               std::to_string(none[i].item<double>()) + ", paper " + std::to_string(ws[i] * l));
    ref_sum += ws[i] * l;
    ref_mean += l / double(xs.size());
  }
  expect(close(sum.item<double>(), ref_sum, 1e-12, 1e-10), "adaptive_wing_loss sum");
  expect(close(mean.item<double>(), ref_mean, 1e-12, 1e-10), "adaptive_wing_loss mean");

  // And the wrapper's wing_loss against Eq. (5), inside and outside the width.
  auto xw = torch::tensor({0.5, -3.0, 12.0, 7.0}, opts), yw = torch::tensor({0.0, 1.0, -1.0, 0.0}, opts);
  auto lw = lossext::wing_loss(xw, yw, 5.0, 1.5, {}, lossext::Reduction::None);
  for (int64_t i = 0; i < 4; ++i) {
    const double ref = wing_paper(xw[i].item<double>(), yw[i].item<double>(), 5.0, 1.5);
    expect(close(lw[i].item<double>(), ref, 1e-12, 1e-10), "wing_loss element " + std::to_string(i));
  }
  std::printf("dispatcher call lossext::adaptive_wing_loss: sum %.12f (paper %.12f)\n", sum.item<double>(),
              ref_sum);
}

// ---- 2. gradients against finite differences ------------------------------------------------

using LossFn = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;

// d f(x, y, w) / d{x, y, w}: autograd against central differences (example::check_gradients).
void check_gradients(const std::string& name, const LossFn& f, torch::Tensor x, torch::Tensor y, torch::Tensor w) {
  example::check_gradients(
      name, [&](const std::vector<torch::Tensor>& v) { return f(v[0], v[1], v[2]); }, {x, y, w},
      {"input", "target", "weight"});
}

void check_all_gradients() {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  // |input - target| stays away from the kinks (0 and the width).
  auto xw = torch::tensor({{0.3, -1.2, 2.5}, {-0.7, 4.0, 12.0}}, opts);
  auto yw = torch::tensor({{0.1, 0.2, -0.3}, {0.4, -0.5, 0.6}}, opts);
  // Adaptive Wing: targets in [0, 1]; D on both sides of theta = 0.5.
  auto ya = torch::tensor({{0.0, 0.3, 0.9}, {1.0, 0.5, 0.1}}, opts);
  auto xa = ya + torch::tensor({{0.2, -0.35, 0.8}, {-1.3, 0.05, 0.45}}, opts);
  auto weight = torch::tensor({0.5, 1.0, 2.0}, opts);  // broadcast over the rows
  auto coeff = torch::tensor({{0.3, -1.1, 0.7}, {1.9, 0.4, -0.6}}, opts);  // for reduction None

  const std::pair<lossext::Reduction, const char*> reductions[] = {
      {lossext::Reduction::None, "None"}, {lossext::Reduction::Mean, "Mean"}, {lossext::Reduction::Sum, "Sum"}};
  for (auto [red, rname] : reductions) {
    auto reduce = [red, coeff](const torch::Tensor& l) { return red == lossext::Reduction::None ? (l * coeff).sum() : l; };
    check_gradients(std::string("wing_loss/") + rname,
                    [&](const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& w) {
                      return reduce(lossext::wing_loss(x, y, 5.0, 1.5, w, red));
                    },
                    xw, yw, weight);
    check_gradients(std::string("adaptive_wing_loss/") + rname,
                    [&](const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& w) {
                      return reduce(lossext::adaptive_wing_loss(x, y, 2.1, 14.0, 1.0, 0.5, w, red));
                    },
                    xa, ya, weight);
  }
}

// ---- 3. argument checks and double backward -------------------------------------------------

void check_errors() {
  auto x = torch::randn({4, 2}, torch::kFloat64), y = torch::randn({4, 2}, torch::kFloat64);
  expect_throws<c10::ValueError>("negative width", "width must be > 0, got -1",
                                 [&] { lossext::wing_loss(x, y, -1.0); });
  expect_throws<c10::ValueError>("alpha <= theta", "alpha must be > theta",
                                 [&] { lossext::adaptive_wing_loss(x, y, 0.4); });
  expect_throws<c10::ValueError>("shape mismatch", "target shape",
                                 [&] { lossext::wing_loss(x, y.view({2, 4})); });
  expect_throws<c10::TypeError>("dtype mismatch", "target dtype",
                                [&] { lossext::wing_loss(x, y.to(torch::kFloat32)); });
  expect_throws<c10::TypeError>("integer input", "input must be float",
                                [&] { lossext::wing_loss(x.to(torch::kLong), y.to(torch::kLong)); });
  expect_throws<c10::ValueError>("weight shape", "does not broadcast",
                                 [&] { lossext::wing_loss(x, y, 10.0, 2.0, torch::ones({3})); });

  // backward(create_graph) works; differentiating its gradients is refused (both backward
  // paths: wing_loss recomputes in backward, adaptive_wing_loss keeps the forward's gradient).
  for (int which = 0; which < 2; ++which) {
    auto xr = x.clone().requires_grad_(true);
    auto loss = which == 0 ? lossext::wing_loss(xr, y) : lossext::adaptive_wing_loss(xr, y.sigmoid());
    auto g = torch::autograd::grad({loss}, {xr}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    const std::string what = which == 0 ? "wing_loss" : "adaptive_wing_loss";
    expect(g.requires_grad(), what + ": the create_graph gradient requires grad");
    expect_throws<c10::NotImplementedError>(what + " double backward", "double backward is not supported",
                                            [&] { torch::autograd::grad({g.sum()}, {xr}); });
  }
}

// ---- 4. CUDA against CPU (when there is a GPU) --------------------------------------------------

void check_cuda() {
  if (!torch::cuda::is_available() || !lossext::with_cuda()) {
    std::printf("CUDA check skipped (CUDA available: %d, lossext CUDA kernels: %d)\n",
                int(torch::cuda::is_available()), int(lossext::with_cuda()));
    return;
  }
  auto w = (torch::rand({64, 68, 1}, torch::kFloat64) > 0.1).to(torch::kFloat64);
  for (int which = 0; which < 2; ++which) {
    // Wing: pixel-like coordinates; Adaptive Wing: heatmap values in [0, 1].
    auto x = which == 0 ? torch::randn({64, 68, 2}, torch::kFloat64) * 8 : torch::rand({64, 68, 2}, torch::kFloat64);
    auto y = which == 0 ? torch::randn({64, 68, 2}, torch::kFloat64) * 8 : torch::rand({64, 68, 2}, torch::kFloat64);
    auto run = [&](torch::Device dev) {
      auto xd = x.to(dev).requires_grad_(true), yd = y.to(dev).requires_grad_(true);
      auto wd = w.to(dev).requires_grad_(true);
      auto l = which == 0 ? lossext::wing_loss(xd, yd, 10.0, 2.0, wd)
                          : lossext::adaptive_wing_loss(xd, yd, 2.1, 14.0, 1.0, 0.5, wd);
      l.backward();
      return std::vector<torch::Tensor>{l.cpu(), xd.grad().cpu(), yd.grad().cpu(), wd.grad().cpu()};
    };
    auto a = run(torch::kCPU), b = run(torch::kCUDA);
    for (size_t i = 0; i < a.size(); ++i) {
      expect(torch::allclose(a[i], b[i], 1e-9, 1e-12), std::string(which ? "adaptive_" : "") +
                                                           "wing_loss CUDA vs CPU, output " + std::to_string(i));
    }
  }
  std::printf("CUDA vs CPU: checked\n");
}

// ---- 5. training --------------------------------------------------------------------------------

void train() {
  constexpr int64_t N = 512, F = 32, K = 68, H = 128, steps = 200, batch = 128;
  torch::manual_seed(0);
  // Synthetic data: landmarks (in "pixels") from a fixed random linear map of the features.
  auto X = torch::randn({N, F});
  auto M = torch::randn({F, K * 2}) * 2.0;
  auto bias = torch::rand({K * 2}) * 64.0;
  auto Y = (X.mm(M) + bias + 0.1 * torch::randn({N, K * 2})).view({N, K, 2});
  // Per-landmark visibility, broadcast over (x, y): about 10% of the landmarks are not labelled.
  auto visible = (torch::rand({N, K, 1}) > 0.1).to(torch::kFloat32);

  auto model = std::make_shared<Mlp>(F, H, K * 2);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-2));

  auto full_loss = [&] {
    torch::NoGradGuard no_grad;
    return lossext::wing_loss(model->forward(X).view({N, K, 2}), Y, 10.0, 2.0, visible).item<double>();
  };
  const double initial = full_loss();
  std::printf("training: %lld samples, %lld landmarks, initial wing loss %.4f\n", (long long)N, (long long)K, initial);
  for (int64_t step = 1; step <= steps; ++step) {
    auto idx = torch::randint(N, {batch}, torch::kLong);
    auto pred = model->forward(X.index_select(0, idx)).view({batch, K, 2});
    auto loss = lossext::wing_loss(pred, Y.index_select(0, idx), 10.0, 2.0, visible.index_select(0, idx));
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step % 25 == 0) std::printf("  step %3lld  batch loss %.4f\n", (long long)step, loss.item<double>());
  }
  const double final_loss = full_loss();
  std::printf("training: final wing loss %.4f (%.1f%% of initial)\n", final_loss, 100.0 * final_loss / initial);
  expect(std::isfinite(final_loss) && final_loss < 0.5 * initial,
         "training did not reduce the loss below half: " + std::to_string(initial) + " -> " +
             std::to_string(final_loss));
}

}  // namespace

int main() {
  return example::run_checks([] {
    check_dispatcher_call();
    std::printf("gradients vs finite differences:\n");
    check_all_gradients();
    check_errors();
    check_cuda();
    train();
  });
}
