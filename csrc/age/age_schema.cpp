// Schemas of the age-estimation family. reduction: 0 none, 1 mean, 2 sum (as at::Reduction).
// target: int64 ages, or float64 ages (then differentiable through the mean term).
// stats [N, 3] float64: per row lse, m - start_age and v (see age_math.h), saved for the
// backward; not differentiable. The backward's gradients are optional: None is zero.
// mean_variance_loss_with_grad (the one-pass path): the forward's outputs and grad_logits, the
// total's gradient dL/dz for a unit upstream gradient (per row for 'none', 1/N included for
// 'mean'), written in the same pass over each row.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("mean_variance_loss(Tensor logits, Tensor target, float lambda_mean, float lambda_var, int start_age, "
        "bool include_softmax, int reduction) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("mean_variance_loss_with_grad(Tensor logits, Tensor target, float lambda_mean, float lambda_var, "
        "int start_age, bool include_softmax, int reduction) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("mean_variance_loss_backward(Tensor? grad_loss, Tensor? grad_softmax, Tensor? grad_mean, "
        "Tensor? grad_variance, Tensor logits, Tensor target, Tensor stats, float lambda_mean, float lambda_var, "
        "int start_age, bool include_softmax, int reduction) -> (Tensor, Tensor)");
  m.def("age_from_logits(Tensor logits, int start_age) -> (Tensor, Tensor, Tensor)");
  m.def("age_from_logits_backward(Tensor? grad_mean, Tensor? grad_variance, Tensor logits, Tensor stats, "
        "int start_age) -> Tensor");
}
