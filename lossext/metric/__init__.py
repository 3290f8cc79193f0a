"""Metric learning: Center loss (Wen et al., ECCV 2016) and Triplet-Center loss (He et al., CVPR
2018) with class centers; the triplet loss with online mining (FaceNet, CVPR 2015; Hermans et al.,
2017) and the contrastive loss (Hadsell et al., CVPR 2006) on the batch or a reference set.

Row-wise ops with integer labels: csrc/metric (math in metric_math.h and pair_math.h, op bodies
in metric_ops.h and pair_ops.h). C++ API: include/lossext/metric.h. Benchmarks:
lossext/metric/bench.py. Figures: lossext/metric/plots.py.
"""

README_ROWS = [
    dict(loss="Center loss", paper="Wen et al., ECCV 2016, Eq. 2 (and its update rule, Eq. 4)",
         functional=["center_loss"], modules=["CenterLoss"],
         note="update='paper': the caffe layer's center update, centers as a buffer"),
    dict(loss="Triplet-Center loss (hardest negative center, never stores N×C)",
         paper="He et al., CVPR 2018, Eq. 3", functional=["triplet_center_loss"], modules=["TripletCenterLoss"],
         note="the Modules own the centers [C, D]"),
    dict(loss="Triplet loss with online mining: batch-hard, batch-all, semi-hard (tiled, never stores N×M)",
         paper="Schroff et al. (FaceNet), CVPR 2015, Eq. 1; Hermans et al., 2017, Eqs. 4-5",
         functional=["triplet_margin_loss"], modules=["TripletMarginLoss"],
         note="a reference set (cross-batch memory) via ref_embeddings, ref_labels"),
    dict(loss="Contrastive loss (pytorch-metric-learning's form)", paper="Hadsell et al., CVPR 2006",
         functional=["contrastive_loss"], modules=["ContrastiveLoss"], note="'mean': pml's AvgNonZeroReducer"),
]
