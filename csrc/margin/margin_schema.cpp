// Schemas of the margin-softmax family. reduction: 0 none, 1 mean, 2 sum (as at::Reduction).
// The forwards return (loss, lse): lse [N] is log-sum-exp of each row's logits, in float64 for
// every input dtype (N values; float32 rounding of lse ~ 64 would cost 4e-6 in every softmax
// probability of the backward), saved for the backward; it is not differentiable.
// lambda_ (SphereFace's annealing, changed every step) is a tensor so that torch.compile does
// not bake it into the graph: None means 0, else a 0-dim float64 tensor on the logits' (or
// embeddings') device, finite and >= 0 (checked on the CPU; on CUDA the kernels read it from
// device memory without a host sync, and a bad value gives a NaN loss).
// margin_cross_entropy_with_grad returns (loss, lse, grad_cos_logits, grad_row_scale): the
// forward's two, then the backward's two for grad_output = 1 (grad_row_scale is empty without
// row_scale), computed in the same pass over the logits; they are not differentiable.
// fused_linear_margin_cross_entropy_with_grad (a reduced loss: mean or sum) returns (loss, lse,
// grad_input, grad_weight, grad_bias) for grad_output = 1, its logits taken in blocks of `rows`
// rows (margin_ops.h FusedRowKernels); the last three are not differentiable.
// The shard ops (lossext.distributed: one rank's shard of the classes of a normalized fused op):
// target -1 means "on another shard"; the forward returns (row_max, row_sumexp, target_logit),
// float64 [N] each, not reduced; the backward takes the global lse [N] float64 and
// grad_rows [N] (dLoss/dloss_i, float32, or float64 for float64 inputs) and returns
// (grad_input: this shard's part, grad_weight).
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("margin_cross_entropy(Tensor cos_logits, Tensor target, Tensor? weight, Tensor? row_scale, "
        "float scale, float m1, float m2, float m3, Tensor? lambda_, bool easy_margin, "
        "float label_smoothing, int ignore_index, int reduction) -> (Tensor, Tensor)");
  m.def("margin_cross_entropy_backward(Tensor grad_output, Tensor cos_logits, Tensor target, "
        "Tensor? weight, Tensor? row_scale, Tensor lse, float scale, float m1, float m2, float m3, "
        "Tensor? lambda_, bool easy_margin, float label_smoothing, int ignore_index, int reduction) "
        "-> (Tensor, Tensor)");
  m.def("margin_cross_entropy_with_grad(Tensor cos_logits, Tensor target, Tensor? weight, Tensor? row_scale, "
        "float scale, float m1, float m2, float m3, Tensor? lambda_, bool easy_margin, "
        "float label_smoothing, int ignore_index, int reduction) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fused_linear_margin_cross_entropy(Tensor input, Tensor weight, Tensor target, Tensor? bias, "
        "float scale, float m1, float m2, float m3, Tensor? lambda_, bool easy_margin, bool normalize, "
        "float label_smoothing, int ignore_index, int reduction, int chunk_size) -> (Tensor, Tensor)");
  m.def("fused_linear_margin_cross_entropy_backward(Tensor grad_output, Tensor input, Tensor weight, "
        "Tensor target, Tensor? bias, Tensor lse, float scale, float m1, float m2, float m3, "
        "Tensor? lambda_, bool easy_margin, bool normalize, float label_smoothing, int ignore_index, int reduction, "
        "int chunk_size) -> (Tensor, Tensor, Tensor)");
  m.def("fused_linear_margin_cross_entropy_with_grad(Tensor input, Tensor weight, Tensor target, Tensor? bias, "
        "float scale, float m1, float m2, float m3, Tensor? lambda_, bool easy_margin, bool normalize, "
        "float label_smoothing, int ignore_index, int reduction, int chunk_size, int rows) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("fused_linear_margin_shard_forward(Tensor input, Tensor weight, Tensor target, float scale, "
        "float m1, float m2, float m3, Tensor? lambda_, bool easy_margin, int chunk_size) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("fused_linear_margin_shard_backward(Tensor grad_rows, Tensor input, Tensor weight, Tensor target, "
        "Tensor lse, float scale, float m1, float m2, float m3, Tensor? lambda_, bool easy_margin, "
        "int chunk_size) -> (Tensor, Tensor)");
}
