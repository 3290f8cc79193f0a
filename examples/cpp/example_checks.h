// What the example programs share: a failure counter and expectations, the finite-difference
// gradient check, the small MLP they train, and the main() that runs their checks.
#pragma once

#include <torch/torch.h>

#include <lossext/lossext.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace example {

inline int g_failures = 0;

inline void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++g_failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

inline bool close(double a, double b, double atol, double rtol) { return std::abs(a - b) <= atol + rtol * std::abs(b); }

// f() must throw E whose message contains needle.
template <class E, class Fn>
void expect_throws(const std::string& what, const std::string& needle, Fn&& f) {
  try {
    f();
    expect(false, what + ": no exception");
  } catch (const E& e) {
    const std::string msg = e.what_without_backtrace();
    expect(msg.find(needle) != std::string::npos, what + ": message lacks '" + needle + "': " + msg);
  } catch (const std::exception& e) {
    expect(false, what + ": wrong exception type: " + e.what());
  }
}

using ScalarFn = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// Checks d f(vars) / d vars from autograd against central differences; f returns a scalar.
inline void check_gradients(const std::string& name, const ScalarFn& f, std::vector<torch::Tensor> vars,
                            const std::vector<std::string>& names) {
  for (auto& v : vars) v = v.clone().requires_grad_(true);
  auto grads = torch::autograd::grad({f(vars)}, vars);
  const double h = 1e-6;
  torch::NoGradGuard no_grad;
  for (size_t v = 0; v < vars.size(); ++v) {
    auto flat = vars[v].detach().view(-1);  // shares the leaf's storage
    auto g = grads[v].reshape(-1);
    double worst = 0.0;
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double orig = flat[i].item<double>();
      flat[i] = orig + h;
      const double up = f(vars).item<double>();
      flat[i] = orig - h;
      const double down = f(vars).item<double>();
      flat[i] = orig;
      const double numeric = (up - down) / (2 * h);
      const double analytic = g[i].item<double>();
      worst = std::max(worst, std::abs(numeric - analytic));
      expect(close(analytic, numeric, 1e-6, 1e-5), name + ": d/d" + names[v] + "[" + std::to_string(i) +
                                                       "] autograd " + std::to_string(analytic) +
                                                       " vs finite difference " + std::to_string(numeric));
    }
    std::printf("  %-40s d/d%-12s max |autograd - finite difference| = %.2e\n", name.c_str(), names[v].c_str(),
                worst);
  }
}

// The model both examples train: features -> hidden (ReLU) -> outputs.
struct Mlp : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  Mlp(int64_t features, int64_t hidden, int64_t outputs) {
    fc1 = register_module("fc1", torch::nn::Linear(features, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, outputs));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2->forward(torch::relu(fc1->forward(x))); }
};

// main(): prints the build, runs the checks with one torch thread (the problems are tiny: more
// threads only add synchronisation; OMP_NUM_THREADS overrides), and returns 0 when all passed,
// 1 when a check failed, 2 on an unexpected exception.
inline int run_checks(const std::function<void()>& checks) {
  const auto t0 = std::chrono::steady_clock::now();
  if (std::getenv("OMP_NUM_THREADS") == nullptr) torch::set_num_threads(1);
  try {
    std::printf("lossext %s (CUDA kernels: %s%s%s), built against torch %d.%d.%d\n", lossext::version(),
                lossext::with_cuda() ? "yes" : "no", lossext::with_cuda() ? ", arch " : "", lossext::cuda_arch_list(),
                TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
    checks();
  } catch (const std::exception& e) {
    std::printf("FAIL: exception: %s\n", e.what());
    return 2;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (g_failures) {
    std::printf("%d check(s) FAILED (%.2f s)\n", g_failures, secs);
    return 1;
  }
  std::printf("all checks passed (%.2f s)\n", secs);
  return 0;
}

}  // namespace example
