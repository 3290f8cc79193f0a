// Schemas of the detection family. reduction: 0 none, 1 mean, 2 sum (as at::Reduction).
// sigmoid_focal_loss: the element-wise pattern (common/pointwise_loss.h); alpha -1 disables
// the alpha weighting (torchvision's convention).
// box_iou_loss: boxes [..., 4] (x1, y1, x2, y2); mode 0 iou, 1 giou, 2 diou, 3 ciou; the loss
// 'none' has the boxes' batch shape; 'mean' of no boxes is 0 (torchvision's).
// softmax_focal_loss: logits [N, C, d...], target [N, d...] int64; alpha, weight optional [C]
// (per-class factors, no gradient); rows whose target is ignore_index give 0; 'mean' divides by
// the rows not ignored.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("sigmoid_focal_loss(Tensor input, Tensor target, Tensor? weight, float alpha, float gamma, "
        "int reduction) -> Tensor");
  m.def("sigmoid_focal_loss_with_grad(Tensor input, Tensor target, Tensor? weight, float alpha, float gamma, "
        "int reduction) -> (Tensor, Tensor)");
  m.def("sigmoid_focal_loss_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, "
        "float alpha, float gamma, int reduction) -> Tensor");
  m.def("sigmoid_focal_loss_target_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, "
        "float alpha, float gamma, int reduction) -> Tensor");
  m.def("box_iou_loss(Tensor boxes1, Tensor boxes2, int mode, float eps, int reduction) -> Tensor");
  m.def("box_iou_loss_backward(Tensor grad_output, Tensor boxes1, Tensor boxes2, int mode, float eps, "
        "int reduction) -> (Tensor, Tensor)");
  m.def("softmax_focal_loss(Tensor logits, Tensor target, Tensor? alpha, Tensor? weight, float gamma, "
        "int ignore_index, int reduction) -> Tensor");
  m.def("softmax_focal_loss_backward(Tensor grad_output, Tensor logits, Tensor target, Tensor? alpha, "
        "Tensor? weight, float gamma, int ignore_index, int reduction) -> Tensor");
}
