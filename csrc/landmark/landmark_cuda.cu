// CUDA kernels of the landmark losses.
#include <torch/csrc/stable/library.h>

#include "../common/pointwise_cuda.cuh"
#include "landmark_ops.h"

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::landmark::register_landmark_kernels<lossext::CudaDevice>(m);
}
