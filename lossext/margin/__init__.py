"""Margin softmax for face recognition: SphereFace (Liu et al., CVPR 2017), CosFace (Wang et al.,
CVPR 2018), ArcFace and the combined margin (Deng et al., CVPR 2019), and the fused
normalized-linear version that never stores the [N, C] logits.

Row-wise ops: csrc/margin (math in margin_math.h, op bodies and the fused class-chunk loop in
margin_ops.h). C++ API: include/lossext/margin.h. Benchmarks: lossext/margin/bench.py.
"""

# The family's rows of the README loss table (tools/sync_families.py renders them; the raw ops
# come from the OpInfo rows of the functions named).
README_ROWS = [
    dict(loss="Margin softmax: CosFace, ArcFace, SphereFace, combined",
         paper="Wang et al. CVPR 2018 Eq. 4; Deng et al. CVPR 2019 Eq. 3-4; Liu et al. CVPR 2017 Eq. 7",
         functional=["margin_cross_entropy", "cosface_loss", "arcface_loss", "sphereface_loss"],
         modules=["MarginCrossEntropyLoss"]),
    dict(loss="Fused normalized-linear margin softmax (never stores N×C)", paper="as above",
         functional=["fused_linear_margin_cross_entropy", "fused_linear_cross_entropy"],
         modules=["CosFaceLoss", "ArcFaceLoss", "SphereFaceLoss", "CombinedMarginLoss"],
         note="the Modules own the class weights [C, D]"),
]
