// CPU kernels of the landmark losses.
#include <torch/csrc/stable/library.h>

#include "../common/pointwise_cpu.h"
#include "landmark_ops.h"

STABLE_TORCH_LIBRARY_IMPL(lossext, CPU, m) {
  lossext::landmark::register_landmark_kernels<lossext::CpuDevice>(m);
}
