"""Detection: the YOLOv2 region loss (darknet's region layer), the sigmoid and softmax focal
losses (Lin et al., ICCV 2017), the IoU-family box losses (IoU, GIoU, DIoU, CIoU), and SSD's and
RefineDet's multibox losses with prior matching.

sigmoid_focal_loss is element-wise, on the shared pattern (csrc/common/pointwise_*); the
others have their own op bodies (csrc/detection/detection_ops.h, region_ops.h, multibox_ops.h),
math (focal_math.h, box_math.h, region_math.h, multibox_math.h) and kernels. SSD's and RefineDet's
multibox losses and match_priors (issue 12): multibox_*. C++ API: include/lossext/detection.h.
"""

README_ROWS = [
    dict(loss="YOLOv2 region", paper="Redmon & Farhadi, CVPR 2017; darknet region_layer.c",
         functional=["yolov2_region_loss"], modules=["YOLOv2RegionLoss"], note="darknet's GPU gradient and stats"),
    dict(loss="Sigmoid focal", paper="Lin et al., ICCV 2017, Eq. 5", functional=["sigmoid_focal_loss"],
         modules=["SigmoidFocalLoss"], note="torchvision.ops.sigmoid_focal_loss's values, gradients and checks"),
    dict(loss="Softmax focal", paper="Lin et al., ICCV 2017, Eq. 5", functional=["softmax_focal_loss"],
         modules=["SoftmaxFocalLoss"], note="per-class alpha and weight, ignore_index"),
    dict(loss="IoU / GIoU / DIoU / CIoU", paper="Rezatofighi et al., CVPR 2019; Zheng et al., AAAI 2020",
         functional=["box_iou_loss"], modules=["BoxIoULoss"], note="finite on degenerate boxes"),
    dict(loss="SSD multibox", paper="Liu et al., ECCV 2016; the authors' Caffe MultiBoxLossLayer",
         functional=["ssd_multibox_loss", "match_priors"], modules=["SSDMultiboxLoss"],
         note="matching and hard negative mining on the device"),
    dict(loss="RefineDet multibox (ARM + ODM)", paper="Zhang et al., CVPR 2018; sfzhang15/RefineDet",
         functional=["refinedet_multibox_loss"], modules=["RefineDetMultiboxLoss"],
         note="negative anchor filtering as the authors' code"),
]
