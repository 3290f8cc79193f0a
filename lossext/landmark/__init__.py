"""Landmark regression: Wing (Feng et al., CVPR 2018) and Adaptive Wing (Wang et al., ICCV 2019).

Element-wise losses on the shared pattern (csrc/common/pointwise_*, lossext/_core/pointwise.py);
the per-element math is csrc/landmark/landmark_math.h. C++ API: include/lossext/landmark.h.
"""

# The family's rows of the README loss table (tools/sync_families.py renders them).
README_ROWS = [
    dict(loss="Wing", paper="Feng et al., CVPR 2018, Eq. 5", functional=["wing_loss"], modules=["WingLoss"],
         ops=["wing_loss", "wing_loss_with_grad", "wing_loss_backward"]),
    dict(loss="Adaptive Wing", paper="Wang et al., ICCV 2019, Eq. 6", functional=["adaptive_wing_loss"],
         modules=["AdaptiveWingLoss"],
         ops=["adaptive_wing_loss", "adaptive_wing_loss_with_grad", "adaptive_wing_loss_backward",
              "adaptive_wing_loss_target_backward"]),
]
