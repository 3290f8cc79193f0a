// The smallest lossext program: link lossext::lossext (see CMakeLists.txt), compute a loss,
// backpropagate, print. Build it against the installed wheel:
//   cmake -S examples/cpp -B build/starter -DLOSSEXT_EXAMPLES=starter -DCMAKE_PREFIX_PATH="$(python -c \
//     'import torch, lossext; print(torch.utils.cmake_prefix_path + ";" + lossext.cmake_prefix_path)')"
//   cmake --build build/starter && build/starter/starter
#include <lossext/lossext.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  auto pred = torch::randn({8, 68, 2}, torch::requires_grad());  // predicted landmarks
  auto target = torch::randn({8, 68, 2});
  auto loss = lossext::wing_loss(pred, target);                   // fused CPU/CUDA kernel
  loss.backward();
  std::cout << "lossext " << lossext::version() << ": wing_loss = " << loss.item<double>()
            << ", |grad| = " << pred.grad().norm().item<double>() << "\n";
  return loss.item<double>() > 0 && pred.grad().defined() ? 0 : 1;
}
