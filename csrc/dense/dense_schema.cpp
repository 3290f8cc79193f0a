// Schemas of the dense-prediction family.
// joints_mse_sums: output and target heatmaps [B, K, ...] of one shape and dtype -> S [B, K],
// S_bk = sum over the heatmap's pixels of (output - target)^2, in the accumulation dtype
// (float32 for float16, bfloat16 and float32; float64 for float64).
// joints_mse_sums_backward: dL/dS [B, K] (S's dtype) -> dL/doutput (output's dtype and shape,
// contiguous); dL/dtarget is its negative.
// mask_bce: the Mask R-CNN mask loss's binary cross-entropy of each RoI's labelled channel:
// mask_logits [R, C, ...], labels [R] int64, mask_targets [R, ...] (logits' dtype) -> per_pixel:
// [R, ...] per-pixel BCE in the logits' dtype; else [R] per-RoI sums in the accumulation dtype.
// mask_bce_backward: grad [R, ...] or [R] (as the forward's output) -> dL/dmask_logits (zero
// off each RoI's labelled channel) and dL/dmask_targets (-x: dBCE/dy, per pixel).
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("joints_mse_sums(Tensor output, Tensor target) -> Tensor");
  m.def("joints_mse_sums_backward(Tensor grad, Tensor output, Tensor target) -> Tensor");
  m.def("mask_bce(Tensor mask_logits, Tensor labels, Tensor mask_targets, bool per_pixel) -> Tensor");
  m.def("mask_bce_backward(Tensor grad, Tensor mask_logits, Tensor labels, Tensor mask_targets, bool per_pixel) "
        "-> (Tensor, Tensor)");
}
