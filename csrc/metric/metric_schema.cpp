// Schemas of the metric-learning family. reduction: 0 none, 1 mean, 2 sum (as at::Reduction);
// 'mean' divides by N (Wen et al.'s caffe layer divides the loss by the batch size; the
// Triplet-Center authors' MarginRankingLoss averages over the batch).
// triplet_center_loss: distance 0 squared_euclidean (1/2 |f - c|^2), 1 euclidean
// (sqrt(max(|f - c|^2, 1e-12))); negatives 0 all (every other center), 1 batch (the centers of the
// classes present in target). Its second output, negative [N] int64, is each row's hardest
// negative class (lowest index among ties; -1: no negative, as for C = 1), saved for the backward
// and not differentiable.
//
// Pair-based losses (pair_ops.h). The reference set is ref_embeddings [M, D] with ref_labels [M];
// exclude_self: it is the batch itself (M = N) and an anchor is never paired with itself.
// mining 0 batch_hard, 1 batch_all, 2 semi_hard; distance 0 squared_euclidean, 1 euclidean,
// 2 dot (d = 1 - a . r: cosine on L2-normalized rows); reduction 0 none (per-anchor sums),
// 1 mean over the valid terms, 2 sum, 3 mean over the terms with a positive loss. Outputs besides
// the loss (not differentiable, saved for the backward): hard [N, 2] int64, batch_hard's
// (positive, negative) per anchor (-1: none); counts [4] int64, (valid, nonzero) of the triplets
// or positive pairs, then of the negative pairs. ref_grad false: grad_ref_embeddings is [0, D].
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(lossext, m) {
  m.def("center_loss(Tensor features, Tensor target, Tensor centers, int reduction) -> Tensor");
  m.def("center_loss_backward(Tensor grad_output, Tensor features, Tensor target, Tensor centers, "
        "int reduction) -> (Tensor, Tensor)");
  m.def("triplet_center_loss(Tensor features, Tensor target, Tensor centers, float margin, int distance, "
        "int negatives, int reduction) -> (Tensor, Tensor)");
  m.def("triplet_center_loss_backward(Tensor grad_output, Tensor features, Tensor target, Tensor centers, "
        "Tensor negative, float margin, int distance, int negatives, int reduction) -> (Tensor, Tensor)");
  m.def("triplet_margin_loss(Tensor embeddings, Tensor labels, Tensor ref_embeddings, Tensor ref_labels, "
        "bool exclude_self, float margin, int mining, int distance, bool soft_margin, int reduction) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("triplet_margin_loss_backward(Tensor grad_output, Tensor embeddings, Tensor labels, Tensor ref_embeddings, "
        "Tensor ref_labels, Tensor hard, Tensor counts, bool exclude_self, float margin, int mining, int distance, "
        "bool soft_margin, int reduction, bool ref_grad) -> (Tensor, Tensor)");
  m.def("contrastive_loss(Tensor embeddings, Tensor labels, Tensor ref_embeddings, Tensor ref_labels, "
        "bool exclude_self, float pos_margin, float neg_margin, int distance, int reduction) -> (Tensor, Tensor)");
  m.def("contrastive_loss_backward(Tensor grad_output, Tensor embeddings, Tensor labels, Tensor ref_embeddings, "
        "Tensor ref_labels, Tensor counts, bool exclude_self, float pos_margin, float neg_margin, int distance, "
        "int reduction, bool ref_grad) -> (Tensor, Tensor)");
}
