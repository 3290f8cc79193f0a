"""Detection loss Modules. Their reduction defaults to 'mean', as torch.nn's losses (and mmdet's
FocalLoss); the functions keep torchvision's 'none' where they follow torchvision."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .._core import validation as V
from . import functional as F

__all__ = ["YOLOv2RegionLoss", "SigmoidFocalLoss", "SoftmaxFocalLoss", "BoxIoULoss", "SSDMultiboxLoss",
           "RefineDetMultiboxLoss"]


class SigmoidFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., ICCV 2017). See :func:`lossext.functional.sigmoid_focal_loss`."""

    def __init__(self, alpha=0.25, gamma=2.0, reduction="mean"):
        super().__init__()
        n = "SigmoidFocalLoss"
        self.alpha = F._check_alpha(n, V.number(n, "alpha", alpha))
        self.gamma = F._check_gamma(n, V.number(n, "gamma", gamma))
        self.reduction = V.reduction(n, reduction)

    def forward(self, inputs: Tensor, targets: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.sigmoid_focal_loss(inputs, targets, self.alpha, self.gamma, self.reduction, weight)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class SoftmaxFocalLoss(nn.Module):
    """Softmax focal loss. See :func:`lossext.functional.softmax_focal_loss`. A tensor ``alpha``
    and ``weight`` are buffers (they follow ``.to()`` and the state dict, as
    nn.CrossEntropyLoss's weight)."""

    alpha_value: Optional[float]

    def __init__(self, gamma=2.0, alpha=None, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__()
        n = "SoftmaxFocalLoss"
        self.gamma = F._check_gamma(n, V.number(n, "gamma", gamma))
        self.alpha_value = None
        if isinstance(alpha, torch.Tensor):
            if not alpha.is_floating_point() or alpha.dim() != 1:
                raise ValueError(f"{n}: alpha must be a float, None or a floating [C] tensor, got {alpha.dtype} "
                                 f"of shape {list(alpha.shape)}")
            self.register_buffer("alpha", alpha.detach().clone())
        else:
            self.register_buffer("alpha", None)
            if alpha is not None:
                a = V.number(n, "alpha", alpha)
                if not (0.0 <= a < float("inf")):
                    raise ValueError(f"{n}: alpha must be finite and >= 0, got {a}")
                self.alpha_value = a
        if weight is not None:
            weight = V.tensor(n, "weight", weight)
            if not weight.is_floating_point() or weight.dim() != 1:
                raise ValueError(f"{n}: weight must be a floating [C] tensor, got {weight.dtype} of shape "
                                 f"{list(weight.shape)}")
            weight = weight.detach().clone()
        self.register_buffer("weight", weight)
        self.ignore_index = V.integer(n, "ignore_index", ignore_index)
        self.reduction = V.reduction(n, reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        alpha = self.alpha
        if alpha is None:
            return F.softmax_focal_loss(logits, target, self.gamma, self.alpha_value, self.weight, self.ignore_index,
                                        self.reduction)
        return F.softmax_focal_loss(logits, target, self.gamma, alpha, self.weight, self.ignore_index,
                                    self.reduction)

    def extra_repr(self):
        alpha = "tensor" if self.alpha is not None else self.alpha_value
        return (f"gamma={self.gamma}, alpha={alpha}, weight={'tensor' if self.weight is not None else None}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")


class BoxIoULoss(nn.Module):
    """IoU-family box loss. See :func:`lossext.functional.box_iou_loss`."""

    def __init__(self, mode="giou", eps=1e-7, reduction="mean"):
        super().__init__()
        n = "BoxIoULoss"
        F.check_mode_type(n, mode)
        F._mode_enum(n, mode)
        self.mode = mode
        self.eps = V.check_positive(n, "eps", V.number(n, "eps", eps))
        self.reduction = V.reduction(n, reduction)

    def forward(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        return F.box_iou_loss(boxes1, boxes2, self.mode, self.eps, self.reduction)

    def extra_repr(self):
        return f"mode={self.mode!r}, eps={self.eps}, reduction={self.reduction!r}"


class YOLOv2RegionLoss(nn.Module):
    """The YOLOv2 region loss (darknet's region layer). See
    :func:`lossext.functional.yolov2_region_loss`. The anchors are a buffer; ``seen`` (images
    trained on, darknet's counter that ends the warm-up) is an int64 buffer that each
    training-mode forward advances by the batch size before the loss, as darknet's
    train_network_datum does (so the state dict carries it; set it to resume)."""

    def __init__(self, anchors, num_classes, object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0,
                 thresh=0.6, rescore=True, bias_match=True, warmup_images=12800, scale_coord_by_size=True,
                 reduction="mean"):
        super().__init__()
        n = "YOLOv2RegionLoss"
        a = anchors.detach().clone() if isinstance(anchors, torch.Tensor) else torch.tensor(anchors, dtype=torch.float64)
        if not a.is_floating_point() or a.dim() != 2 or a.shape[1] != 2 or a.shape[0] == 0 or not bool((a > 0).all()):
            raise ValueError(f"{n}: anchors must be positive (w, h) pairs [A, 2], got {a.tolist()}")
        self.register_buffer("anchors", a.to(torch.float64))
        self.num_classes = V.integer(n, "num_classes", num_classes, 1)
        for name, v in (("object_scale", object_scale), ("noobject_scale", noobject_scale),
                        ("class_scale", class_scale), ("coord_scale", coord_scale)):
            setattr(self, name, V.check_range(n, name, V.number(n, name, v), 0.0, float("inf"), True))
        self.thresh = V.check_finite(n, "thresh", V.number(n, "thresh", thresh))
        self.rescore = V.flag(n, "rescore", rescore)
        self.bias_match = V.flag(n, "bias_match", bias_match)
        self.warmup_images = V.integer(n, "warmup_images", warmup_images, 0)
        self.scale_coord_by_size = V.flag(n, "scale_coord_by_size", scale_coord_by_size)
        self.reduction = V.reduction(n, reduction)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    def forward(self, output: Tensor, targets: Tensor) -> Tensor:
        fn = "YOLOv2RegionLoss"
        if self.training:
            self.seen += output.shape[0]  # before the loss, as darknet's counter
        anchors = self.anchors
        if not torch.jit.is_scripting():
            (output,) = V.promote(fn, "fp32", ("output",), output)
            anchors = anchors.to(output.device) if isinstance(output, torch.Tensor) else anchors
        F.check_region(fn, output, targets, anchors, self.num_classes, self.object_scale, self.noobject_scale,
                       self.class_scale, self.coord_scale, self.thresh)
        # the warm-up prior's scale from the counter, on the device (no host sync, no recompile)
        prior = (self.seen < self.warmup_images).to(device=output.device, dtype=torch.float64) * 0.01
        loss, _ = F.region_call(fn, output, targets, anchors, self.num_classes, self.object_scale, self.noobject_scale,
                                self.class_scale, self.coord_scale, self.thresh, self.rescore, self.bias_match, prior,
                                self.scale_coord_by_size, V.reduction_enum(fn, self.reduction))
        return loss

    def extra_repr(self):
        return (f"anchors={self.anchors.shape[0]}, num_classes={self.num_classes}, object_scale={self.object_scale}, "
                f"noobject_scale={self.noobject_scale}, class_scale={self.class_scale}, "
                f"coord_scale={self.coord_scale}, thresh={self.thresh}, rescore={self.rescore}, "
                f"bias_match={self.bias_match}, warmup_images={self.warmup_images}, "
                f"scale_coord_by_size={self.scale_coord_by_size}, reduction={self.reduction!r}")


def _priors_buffer(n, priors):
    p = priors.detach().clone() if isinstance(priors, torch.Tensor) else torch.tensor(priors, dtype=torch.float64)
    if not p.is_floating_point() or p.dim() != 2 or p.shape[1] != 4:
        raise ValueError(f"{n}: priors must be a floating [P, 4] tensor of (cx, cy, w, h), got {p.dtype} of shape "
                         f"{list(p.shape)}")
    return p


class _MultiboxBase(nn.Module):
    def _set(self, n, priors, overlap_thresh, neg_pos_ratio, neg_overlap, variances, reduction):
        self.register_buffer("priors", _priors_buffer(n, priors))
        self.overlap_thresh = V.check_range(n, "overlap_thresh", V.number(n, "overlap_thresh", overlap_thresh), 0.0,
                                            1.0, False)
        self.neg_pos_ratio = V.check_range(n, "neg_pos_ratio", V.number(n, "neg_pos_ratio", neg_pos_ratio), 0.0,
                                           float("inf"), True)
        self.neg_overlap = V.number(n, "neg_overlap", neg_overlap)
        if self.neg_overlap != self.neg_overlap:
            raise ValueError(f"{n}: neg_overlap must not be NaN")
        if not isinstance(variances, (tuple, list)) or len(variances) != 2:
            raise TypeError(f"{n}: variances must be a pair (center, size) of real numbers, got {variances!r}")
        self.variances = (V.check_positive(n, "variances[0]", V.number(n, "variances[0]", variances[0])),
                          V.check_positive(n, "variances[1]", V.number(n, "variances[1]", variances[1])))
        self.reduction = V.reduction(n, reduction)

    def _repr(self):
        return (f"priors={self.priors.shape[0]}, overlap_thresh={self.overlap_thresh}, "
                f"neg_pos_ratio={self.neg_pos_ratio}, neg_overlap={self.neg_overlap}, variances={self.variances}")


class SSDMultiboxLoss(_MultiboxBase):
    """SSD's multibox loss; the priors [P, 4] (cx, cy, w, h) are a buffer. forward(loc, conf,
    targets) -> (loss_loc, loss_conf). See :func:`lossext.functional.ssd_multibox_loss`."""

    def __init__(self, priors, overlap_thresh=0.5, neg_pos_ratio=3.0, neg_overlap=0.5, variances=(0.1, 0.2),
                 matching="bipartite", reduction="mean"):
        super().__init__()
        n = "SSDMultiboxLoss"
        self._set(n, priors, overlap_thresh, neg_pos_ratio, neg_overlap, variances, reduction)
        F._matching_type(n, matching)
        F._matching_enum(n, matching)
        self.matching = matching

    def forward(self, loc: Tensor, conf: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        return F.ssd_multibox_loss(loc, conf, self.priors, targets, self.overlap_thresh, self.neg_pos_ratio,
                                   self.neg_overlap, self.variances, self.matching, self.reduction)

    def extra_repr(self):
        return self._repr() + f", matching={self.matching!r}, reduction={self.reduction!r}"


class RefineDetMultiboxLoss(_MultiboxBase):
    """RefineDet's ARM and ODM multibox losses; the priors [P, 4] (cx, cy, w, h) are a buffer.
    forward(arm_loc, arm_conf, odm_loc, odm_conf, targets) -> (arm_loc_loss, arm_conf_loss,
    odm_loc_loss, odm_conf_loss). See :func:`lossext.functional.refinedet_multibox_loss`."""

    def __init__(self, priors, overlap_thresh=0.5, neg_pos_ratio=3.0, neg_overlap=0.5, variances=(0.1, 0.2),
                 objectness_thresh=0.01, reduction="mean"):
        super().__init__()
        n = "RefineDetMultiboxLoss"
        self._set(n, priors, overlap_thresh, neg_pos_ratio, neg_overlap, variances, reduction)
        self.objectness_thresh = V.number(n, "objectness_thresh", objectness_thresh)
        if self.objectness_thresh != self.objectness_thresh:
            raise ValueError(f"{n}: objectness_thresh must not be NaN")

    def forward(self, arm_loc: Tensor, arm_conf: Tensor, odm_loc: Tensor, odm_conf: Tensor,
                targets: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return F.refinedet_multibox_loss(arm_loc, arm_conf, odm_loc, odm_conf, self.priors, targets,
                                         self.overlap_thresh, self.neg_pos_ratio, self.neg_overlap, self.variances,
                                         self.objectness_thresh, self.reduction)

    def extra_repr(self):
        return self._repr() + f", objectness_thresh={self.objectness_thresh}, reduction={self.reduction!r}"
