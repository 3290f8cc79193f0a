// Schemas of the detection family. reduction: 0 none, 1 mean, 2 sum (as at::Reduction).
// sigmoid_focal_loss: the element-wise pattern (common/pointwise_loss.h); alpha -1 disables
// the alpha weighting (torchvision's convention).
// box_iou_loss: boxes [..., 4] (x1, y1, x2, y2); mode 0 iou, 1 giou, 2 diou, 3 ciou; the loss
// 'none' has the boxes' batch shape; 'mean' of no boxes is 0 (torchvision's).
// softmax_focal_loss: logits [N, C, d...], target [N, d...] int64; alpha, weight optional [C]
// (per-class factors, no gradient); rows whose target is ignore_index give 0; 'mean' divides by
// the rows not ignored.
// yolov2_region_loss (region_ops.h): output [B, A (5 + C), H, W], targets float64 [B, T, 5]
// (class, x, y, w, h; class < 0 padding), anchors float64 [A, 2]; prior_scale: a 0-dim float64
// tensor on the output's device, the warm-up prior's scale (darknet's .01 while seen < 12800
// images, else 0; a tensor so that a Module's image counter never syncs or recompiles). Returns the per-image losses [B], their
// gradient d(sum)/d output (not differentiable: the backward scales it) and the statistics [7]
// (avg_iou, recall, avg_obj, avg_anyobj, avg_cat, count, darknet_cost; float32, float64 for a
// float64 output). yolov2_region_loss_backward(grad_output [B], grad, output) = grad_output[b] grad[b]
// (output, the head: the result is a function of it, whose derivative is refused).
// match_priors(priors float64 [P, 4] (cx, cy, w, h), targets float64 [B, T, 5] (x1, y1, x2, y2, label;
// label < 0 padding), overlap_thresh, matching 0 bipartite (Caffe's MatchBBox + per-prediction) or
// 1 ssd_pytorch) -> (overlaps float64 [B, P], matches int64 [B, P]: the matched target row or -1).
// multibox_loss (multibox_ops.h): the SSD loss, and each of RefineDet's two (arm_loc: the anchors
// are the priors refined by it; arm_conf: a negative needs softmax(arm_conf)[1] >= objectness_thresh;
// binary: every object is class 1, the ARM) -> (loss_loc [B], loss_conf [B], num_pos int64 [B],
// grad_loc, grad_conf), per-image sums and the gradients of their sum (not differentiable: the
// backward, multibox_loss_backward, scales them per image).
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
  m.def("yolov2_region_loss(Tensor output, Tensor targets, Tensor anchors, int num_classes, float object_scale, "
        "float noobject_scale, float class_scale, float coord_scale, float thresh, bool rescore, bool bias_match, "
        "Tensor prior_scale, bool scale_coord_by_size) -> (Tensor, Tensor, Tensor)");
  m.def("yolov2_region_loss_backward(Tensor grad_output, Tensor grad, Tensor output) -> Tensor");
  m.def("match_priors(Tensor priors, Tensor targets, float overlap_thresh, int matching) -> (Tensor, Tensor)");
  m.def("multibox_loss(Tensor loc, Tensor conf, Tensor priors, Tensor targets, Tensor? arm_loc, Tensor? arm_conf, "
        "float overlap_thresh, float neg_pos_ratio, float neg_overlap, float variance_center, float variance_size, "
        "int matching, float objectness_thresh, bool binary) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("multibox_loss_backward(Tensor grad_loss_loc, Tensor grad_loss_conf, Tensor grad_loc, Tensor grad_conf, "
        "Tensor loc, Tensor conf) -> (Tensor, Tensor)");
}
