// Schemas of the landmark losses. reduction: 0 none, 1 mean, 2 sum (as at::Reduction).
// *_with_grad returns (loss, dloss/dinput) from one pass; its second output is not differentiable.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("wing_loss(Tensor input, Tensor target, Tensor? weight, float width, float curvature, "
        "int reduction) -> Tensor");
  m.def("wing_loss_with_grad(Tensor input, Tensor target, Tensor? weight, float width, "
        "float curvature, int reduction) -> (Tensor, Tensor)");
  m.def("wing_loss_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, "
        "float width, float curvature, int reduction) -> Tensor");
  m.def("adaptive_wing_loss(Tensor input, Tensor target, Tensor? weight, float alpha, float omega, "
        "float epsilon, float theta, int reduction) -> Tensor");
  m.def("adaptive_wing_loss_with_grad(Tensor input, Tensor target, Tensor? weight, float alpha, "
        "float omega, float epsilon, float theta, int reduction) -> (Tensor, Tensor)");
  m.def("adaptive_wing_loss_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, "
        "float alpha, float omega, float epsilon, float theta, int reduction) -> Tensor");
  m.def("adaptive_wing_loss_target_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, float alpha, float omega, float epsilon, float theta, int reduction) -> Tensor");
}
