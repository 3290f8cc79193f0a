"""Metric learning with class centers: Center loss (Wen et al., ECCV 2016) and Triplet-Center loss
(He et al., CVPR 2018).

Row-wise ops with integer labels and a [C, D] center parameter: csrc/metric (math in
metric_math.h, op bodies in metric_ops.h). C++ API: include/lossext/metric.h. Benchmarks:
lossext/metric/bench.py.
"""

README_ROWS = [
    dict(loss="Center loss", paper="Wen et al., ECCV 2016, Eq. 2 (and its update rule, Eq. 4)",
         functional=["center_loss"], modules=["CenterLoss"],
         note="update='paper': the caffe layer's center update, centers as a buffer"),
    dict(loss="Triplet-Center loss (hardest negative center, never stores N×C)",
         paper="He et al., CVPR 2018, Eq. 3", functional=["triplet_center_loss"], modules=["TripletCenterLoss"],
         note="the Modules own the centers [C, D]"),
]
