"""Dense prediction: keypoint heatmaps (SimpleBaseline / HRNet's JointsMSELoss with online hard
keypoint mining).

Row-wise ops: csrc/dense (math in dense_math.h, op bodies in dense_ops.h): one pass reduces
each heatmap to its sum of squared differences; the weights, means and OHKM act on the [B, K]
sums. C++ API: include/lossext/dense.h.
"""

# The family's rows of the README loss table (tools/sync_families.py renders them; the raw ops
# come from the OpInfo rows of the functions named).
README_ROWS = [
    dict(loss="Keypoint heatmap MSE with OHKM", paper="Xiao et al., ECCV 2018; Sun et al. (HRNet), CVPR 2019",
         functional=["joints_mse_loss"], modules=["JointsMSELoss"],
         note="HRNet's JointsMSELoss / JointsOHKMMSELoss semantics"),
]
