// Schemas of the dense-prediction family.
// joints_mse_sums: output and target heatmaps [B, K, ...] of one shape and dtype -> S [B, K],
// S_bk = sum over the heatmap's pixels of (output - target)^2, in the accumulation dtype
// (float32 for float16, bfloat16 and float32; float64 for float64).
// joints_mse_loss_with_grad: coef [B, K] (S's dtype) -> (sum_bk coef_bk S_bk (0-dim, S's
//   dtype), S, 2 coef_bk (output - target)): joints_mse_loss's one-pass forward (issue #15).
// joints_mse_sums_backward: dL/dS [B, K] (S's dtype) -> dL/doutput (output's dtype and shape,
// contiguous); dL/dtarget is its negative.
// mask_bce: the Mask R-CNN mask loss's binary cross-entropy of each RoI's labelled channel:
// mask_logits [R, C, ...], labels [R] int64, mask_targets [R, ...] (logits' dtype) -> per_pixel:
// [R, ...] per-pixel BCE in the logits' dtype; else [R] per-RoI sums in the accumulation dtype.
// mask_bce_backward: grad [R, ...] or [R] (as the forward's output) -> dL/dmask_logits (zero
// off each RoI's labelled channel) and dL/dmask_targets (-x: dBCE/dy, per pixel).
// dice_sums: logits [B, C, ...]; target [B, ...] int64 labels (multiclass) or logits' shape and
// dtype (binary, multilabel) -> [B, C, 4] accumulation-dtype sums per (sample, class) over the
// pixels not ignored: (S_p, S_t, S_pt, S_|p-t|) of dense_math.h, p the softmax over C
// (multiclass) or sigmoid (else) of the logits when from_logits, the logits themselves otherwise.
// dice_sums_backward: dL/dsums [B, C, 4] -> dL/dlogits (the target is not differentiable).
// masked_l1_sums: input, target [B, C, ...], mask [B, C, ...] or [B, 1, ...] (broadcast over C),
// one dtype -> [B, C, 4] sums per (sample, channel): (sum |x - y| m, sum |x - y| (1 - m),
// sum m, sum (1 - m)); with a broadcast mask channel 0 counts the mask, the others 0.
// masked_l1_sums_backward: dL/dsums [B, C, 4] -> dL/dinput (dL/dtarget is its negative; the
// mask is not differentiable).
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("joints_mse_sums(Tensor output, Tensor target) -> Tensor");
  m.def("joints_mse_sums_backward(Tensor grad, Tensor output, Tensor target) -> Tensor");
  m.def("joints_mse_loss_with_grad(Tensor output, Tensor target, Tensor coef) -> (Tensor, Tensor, Tensor)");
  m.def("mask_bce(Tensor mask_logits, Tensor labels, Tensor mask_targets, bool per_pixel) -> Tensor");
  m.def("mask_bce_backward(Tensor grad, Tensor mask_logits, Tensor labels, Tensor mask_targets, bool per_pixel) "
        "-> (Tensor, Tensor)");
  m.def("dice_sums(Tensor logits, Tensor target, bool multiclass, bool from_logits, int? ignore_index) -> Tensor");
  m.def("dice_sums_backward(Tensor grad, Tensor logits, Tensor target, bool multiclass, bool from_logits, "
        "int? ignore_index) -> Tensor");
  m.def("masked_l1_sums(Tensor input, Tensor target, Tensor mask) -> Tensor");
  m.def("masked_l1_sums_backward(Tensor grad, Tensor input, Tensor target, Tensor mask) -> Tensor");
}
