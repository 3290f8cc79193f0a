// Schemas of the metric-learning family. reduction: 0 none, 1 mean, 2 sum (as at::Reduction);
// 'mean' divides by N (Wen et al.'s caffe layer divides the loss by the batch size; the
// Triplet-Center authors' MarginRankingLoss averages over the batch).
// triplet_center_loss: distance 0 squared_euclidean (1/2 |f - c|^2), 1 euclidean
// (sqrt(max(|f - c|^2, 1e-12))); negatives 0 all (every other center), 1 batch (the centers of the
// classes present in target). Its second output, negative [N] int64, is each row's hardest
// negative class (lowest index among ties; -1: no negative, as for C = 1), saved for the backward
// and not differentiable.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("center_loss(Tensor features, Tensor target, Tensor centers, int reduction) -> Tensor");
  m.def("center_loss_backward(Tensor grad_output, Tensor features, Tensor target, Tensor centers, "
        "int reduction) -> (Tensor, Tensor)");
  m.def("triplet_center_loss(Tensor features, Tensor target, Tensor centers, float margin, int distance, "
        "int negatives, int reduction) -> (Tensor, Tensor)");
  m.def("triplet_center_loss_backward(Tensor grad_output, Tensor features, Tensor target, Tensor centers, "
        "Tensor negative, float margin, int distance, int negatives, int reduction) -> (Tensor, Tensor)");
}
