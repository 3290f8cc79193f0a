"""Landmark regression: Wing (Feng et al., CVPR 2018) and Adaptive Wing (Wang et al., ICCV 2019).

Element-wise losses on the shared pattern (csrc/common/pointwise_*, lossext/_core/pointwise.py);
the per-element math is csrc/landmark/landmark_math.h. C++ API: include/lossext/landmark.h.
"""

# The family's rows of the README loss table (tools/sync_families.py renders them; the raw ops
# come from the OpInfo rows of the functions named).
README_ROWS = [
    dict(loss="Wing", paper="Feng et al., CVPR 2018, Eq. 5", functional=["wing_loss"], modules=["WingLoss"]),
    dict(loss="Adaptive Wing", paper="Wang et al., ICCV 2019, Eq. 6", functional=["adaptive_wing_loss"],
         modules=["AdaptiveWingLoss"]),
]
