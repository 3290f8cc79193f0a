// Op bodies of the landmark losses, generic over the device (CpuDevice or CudaDevice).
// landmark_cpu.cpp and landmark_cuda.cu register them; landmark_schema.cpp declares the schemas.
#pragma once

#include <optional>
#include <tuple>

#include "../common/pointwise_loss.h"
#include "landmark_math.h"

namespace lossext {
namespace landmark {

// op: the raw op called (its name is the messages' prefix).
inline void check_wing_params(const char* op, double width, double curvature) {
  check_positive(op, "width", width);
  check_positive(op, "curvature", curvature);
}

inline void check_awing_params(const char* op, double alpha, double omega, double epsilon, double theta) {
  check_positive(op, "omega", omega);
  check_positive(op, "epsilon", epsilon);
  check_positive(op, "theta", theta);
  LOSSEXT_CHECK(alpha > theta && alpha < INFINITY, op, ": argument 'alpha' must be finite and greater than theta (",
                  theta, "), got ", alpha);
}

template <class Device>
struct WingKernels {
  static auto maker(const char* op, double width, double curvature) {
    check_wing_params(op, width, curvature);
    return [=](auto t) { return WingOp<decltype(t)>::make(width, curvature); };
  }
  static Tensor forward(Tensor input, Tensor target, std::optional<Tensor> weight, double width,
                        double curvature, int64_t reduction) {
    return pointwise_forward<Device>("lossext::wing_loss", input, target, weight, reduction,
                                     maker("lossext::wing_loss", width, curvature));
  }
  static std::tuple<Tensor, Tensor> forward_with_grad(Tensor input, Tensor target,
                                                      std::optional<Tensor> weight, double width,
                                                      double curvature, int64_t reduction) {
    const char* op = "lossext::wing_loss_with_grad";
    return pointwise_forward_with_grad<Device>(op, input, target, weight, reduction, maker(op, width, curvature));
  }
  static Tensor backward(Tensor grad_output, Tensor input, Tensor target, std::optional<Tensor> weight,
                         double width, double curvature, int64_t reduction) {
    return pointwise_backward<Device, PointwiseMode::BackwardInput>(
        "lossext::wing_loss_backward", grad_output, input, target, weight, reduction,
        maker("lossext::wing_loss_backward", width, curvature));
  }
};

template <class Device>
struct AdaptiveWingKernels {
  static auto maker(const char* op, double alpha, double omega, double epsilon, double theta) {
    check_awing_params(op, alpha, omega, epsilon, theta);
    return [=](auto t) { return AdaptiveWingOp<decltype(t)>::make(alpha, omega, epsilon, theta); };
  }
  static Tensor forward(Tensor input, Tensor target, std::optional<Tensor> weight, double alpha,
                        double omega, double epsilon, double theta, int64_t reduction) {
    return pointwise_forward<Device>("lossext::adaptive_wing_loss", input, target, weight, reduction,
                                     maker("lossext::adaptive_wing_loss", alpha, omega, epsilon, theta));
  }
  static std::tuple<Tensor, Tensor> forward_with_grad(Tensor input, Tensor target,
                                                      std::optional<Tensor> weight, double alpha,
                                                      double omega, double epsilon, double theta,
                                                      int64_t reduction) {
    const char* op = "lossext::adaptive_wing_loss_with_grad";
    return pointwise_forward_with_grad<Device>(op, input, target, weight, reduction,
                                               maker(op, alpha, omega, epsilon, theta));
  }
  static Tensor backward(Tensor grad_output, Tensor input, Tensor target, std::optional<Tensor> weight,
                         double alpha, double omega, double epsilon, double theta, int64_t reduction) {
    return pointwise_backward<Device, PointwiseMode::BackwardInput>(
        "lossext::adaptive_wing_loss_backward", grad_output, input, target, weight, reduction,
        maker("lossext::adaptive_wing_loss_backward", alpha, omega, epsilon, theta));
  }
  static Tensor target_backward(Tensor grad_output, Tensor input, Tensor target,
                                std::optional<Tensor> weight, double alpha, double omega,
                                double epsilon, double theta, int64_t reduction) {
    return pointwise_backward<Device, PointwiseMode::BackwardTarget>(
        "lossext::adaptive_wing_loss_target_backward", grad_output, input, target, weight, reduction,
        maker("lossext::adaptive_wing_loss_target_backward", alpha, omega, epsilon, theta));
  }
};

// Registers every landmark kernel of one device on a STABLE_TORCH_LIBRARY_IMPL block.
template <class Device, class Lib>
void register_landmark_kernels(Lib& m) {
  m.impl("wing_loss", TORCH_BOX(&WingKernels<Device>::forward));
  m.impl("wing_loss_with_grad", TORCH_BOX(&WingKernels<Device>::forward_with_grad));
  m.impl("wing_loss_backward", TORCH_BOX(&WingKernels<Device>::backward));
  m.impl("adaptive_wing_loss", TORCH_BOX(&AdaptiveWingKernels<Device>::forward));
  m.impl("adaptive_wing_loss_with_grad", TORCH_BOX(&AdaptiveWingKernels<Device>::forward_with_grad));
  m.impl("adaptive_wing_loss_backward", TORCH_BOX(&AdaptiveWingKernels<Device>::backward));
  m.impl("adaptive_wing_loss_target_backward",
         TORCH_BOX(&AdaptiveWingKernels<Device>::target_backward));
}

}  // namespace landmark
}  // namespace lossext
