"""Dense prediction and image synthesis: keypoint heatmaps (SimpleBaseline / HRNet's JointsMSELoss
with online hard keypoint mining), the Mask R-CNN mask loss, the dice loss (smp's DiceLoss) and
the stage losses of pose-guided human image synthesis (Si et al., CVPR 2018).

Row-wise ops: csrc/dense (math in dense_math.h, op bodies in dense_ops.h): one pass reduces
each heatmap to its sum of squared differences (the weights, means and OHKM act on the [B, K]
sums), each RoI's labelled mask channel to its BCE, each (sample, class) to its four dice sums,
each (sample, channel) to its masked L1 sums. C++ API: include/lossext/dense.h.
"""

# The family's rows of the README loss table (tools/sync_families.py renders them; the raw ops
# come from the OpInfo rows of the functions named).
README_ROWS = [
    dict(loss="Keypoint heatmap MSE with OHKM", paper="Xiao et al., ECCV 2018; Sun et al. (HRNet), CVPR 2019",
         functional=["joints_mse_loss"], modules=["JointsMSELoss"],
         note="HRNet's JointsMSELoss / JointsOHKMMSELoss semantics"),
    dict(loss="Mask R-CNN mask loss", paper="He et al., ICCV 2017, Sec. 3", functional=["mask_rcnn_loss"],
         modules=["MaskRCNNLoss"], note="torchvision's maskrcnn_loss, no gathered channel"),
    dict(loss="Dice", paper="Milletari et al. (V-Net), 3DV 2016; smp's DiceLoss", functional=["dice_loss"],
         modules=["DiceLoss"], note="smp 0.6.0's values (or its 0.3 formula), per-class sums in one pass"),
    dict(loss="Pose-guided synthesis stages (masked L1, pose L2, GAN)", paper="Si et al., CVPR 2018",
         functional=["masked_l1_loss", "pose_regression_loss", "adversarial_loss", "gan_generator_loss",
                     "gan_discriminator_loss"],
         modules=["PoseTransformerLoss", "ForegroundStageLoss", "BackgroundStageLoss"],
         note="softplus from logits; empty mask sides give 0"),
]
