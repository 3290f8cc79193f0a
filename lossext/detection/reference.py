"""Float64 references of the detection losses, written from the papers' formulas (and, for the
degenerate boxes, from the definitions of csrc/detection/box_math.h)."""
import math

import torch

from .._core.reference import reduce as _reduce

from .multibox_composite import (match_priors_composite, refinedet_multibox_loss_composite,
                                 ssd_multibox_loss_composite, ssd_multibox_loss_image_loop)
from .multibox_reference import match_priors, refinedet_multibox_loss, ssd_multibox_loss
from .region_reference import region_loss_composite, region_loss_darknet, region_loss_image_loop

__all__ = ["yolov2_region_loss", "yolov2_region_loss_darknet", "yolov2_region_loss_image_loop",
           "sigmoid_focal_loss", "softmax_focal_loss", "box_iou_loss",
           # the multibox losses: the per-image float64 references of the authors' Caffe rules
           # (multibox_reference.py) and the benchmarks' vectorized composites and per-image-loop
           # port (multibox_composite.py)
           "match_priors", "ssd_multibox_loss", "refinedet_multibox_loss", "match_priors_composite",
           "ssd_multibox_loss_composite", "refinedet_multibox_loss_composite", "ssd_multibox_loss_image_loop"]

# The region loss: the vectorized float64-capable composite is the generic tests' reference (it
# matches the line-by-line port of darknet's loops, region_loss_darknet, to 1e-10: tests/
# test_detection.py checks both); the per-image loop is the second benchmark baseline.
yolov2_region_loss = region_loss_composite
yolov2_region_loss_darknet = region_loss_darknet
yolov2_region_loss_image_loop = region_loss_image_loop


def _softplus(x):
    # log(1 + e^x) from two smooth branches, each fed only its own side (no NaN through where)
    pos = x > 0
    xp, xn = torch.where(pos, x, torch.zeros_like(x)), torch.where(pos, torch.zeros_like(x), x)
    return torch.where(pos, xp + torch.log1p(torch.exp(-xp)), torch.log1p(torch.exp(xn)))


def _side(d):
    # max(d, 0) with the gradient of d where d >= 0 (clamp's is 0 at d = 0; a zero width keeps
    # torchvision's gradient, which takes the width as is)
    return torch.where(d < 0, torch.zeros_like(d), d)  # NaN stays NaN


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none", weight=None):
    # Lin et al., ICCV 2017, Eq. (5) with alpha_t (Sec. 3.2), soft targets as torchvision's
    p = torch.sigmoid(inputs)
    # BCE with logits, y softplus(-x) + (1 - y) softplus(x) (torch's log(exp(-m) + exp(-x - m))
    # loses digits at large |x|; this form is exact at +-inf and smooth at 0); a term whose factor
    # is exactly 0 is 0, the limit, where 0 * softplus(+-inf) = 0 * inf would give NaN (a hard
    # label at a saturated logit; the kernels' rule, focal_math.h)
    def term(w, sp):  # (an infinite sp masked, not the product: d/dw keeps sp where it is finite)
        return w * torch.where((w == 0) & torch.isinf(sp), torch.zeros_like(sp), sp)

    ce = term(targets, _softplus(-inputs)) + term(1 - targets, _softplus(inputs))
    m = p * (1 - targets) + torch.sigmoid(-inputs) * targets  # 1 - p_t
    loss = ce * m ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def softmax_focal_loss(logits, target, gamma=2.0, alpha=None, weight=None, ignore_index=-100, reduction="mean"):
    # FL = -w_t alpha_t (1 - p_t)^gamma log p_t over a softmax of dim 1
    keep = target != ignore_index
    t = torch.where(keep, target, torch.zeros_like(target)).long()
    lp = torch.log_softmax(logits, 1).gather(1, t.unsqueeze(1)).squeeze(1)
    q = -torch.expm1(lp)
    # q^gamma, with the limit 0 (and gradient 0) at q = 0 where pow's gradient is 0 * inf
    pos = q > 0
    qg = torch.where(pos, torch.where(pos, q, torch.ones_like(q)) ** gamma, torch.full_like(q, float(gamma == 0)))
    loss = -qg * lp
    C = logits.shape[1]
    if alpha is not None:
        a = alpha if isinstance(alpha, torch.Tensor) else torch.full((C,), float(alpha), dtype=logits.dtype)
        loss = loss * a.to(logits)[t]
    if weight is not None:
        loss = loss * weight.to(logits)[t]
    loss = torch.where(keep, loss, torch.zeros_like(loss))  # ignored rows: 0, gradient 0
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum()


def _atan2(w, h):
    # atan2(w, h) with the derivatives h / (w^2 + h^2), -w / (w^2 + h^2), and 0 at w = h = 0
    n = w * w + h * h
    safe = n > 0
    one = torch.ones_like(w)
    return torch.where(safe, torch.atan2(torch.where(safe, w, one), torch.where(safe, h, one)), w * 0)


def box_iou_loss(boxes1, boxes2, mode="giou", eps=1e-7, reduction="none"):
    # 1 - IoU; GIoU: Rezatofighi et al., CVPR 2019, Alg. 1; DIoU and CIoU: Zheng et al., AAAI 2020,
    # Eq. (6) and (8)-(11), alpha detached as torchvision computes it. Sides clamped at 0.
    if not boxes1.is_floating_point():
        boxes1 = boxes1.double()
    if not boxes2.is_floating_point():
        boxes2 = boxes2.double()
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    x1, y1, x2, y2 = boxes1.unbind(-1)
    X1, Y1, X2, Y2 = boxes2.unbind(-1)
    w1, h1 = _side(x2 - x1), _side(y2 - y1)
    w2, h2 = _side(X2 - X1), _side(Y2 - Y1)
    iw = torch.minimum(x2, X2) - torch.maximum(x1, X1)
    ih = torch.minimum(y2, Y2) - torch.maximum(y1, Y1)
    # no overlap: 0 (torchvision's mask), also where a side is infinite (iw * 0 would be NaN)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    union = w1 * h1 + w2 * h2 - inter
    iou = inter / (union + eps)
    loss = 1 - iou
    if mode != "iou":
        cw = torch.maximum(x2, X2) - torch.minimum(x1, X1)
        ch = torch.maximum(y2, Y2) - torch.minimum(y1, Y1)
        if mode == "giou":
            area_c = _side(cw) * _side(ch)
            loss = loss + (area_c - union) / (area_c + eps)
        else:
            rho2 = ((x2 + x1) / 2 - (X1 + X2) / 2) ** 2 + ((y2 + y1) / 2 - (Y1 + Y2) / 2) ** 2
            loss = loss + rho2 / (cw ** 2 + ch ** 2 + eps)
            if mode == "ciou":
                v = (4 / math.pi ** 2) * (_atan2(w2, h2) - _atan2(w1, h1)) ** 2
                with torch.no_grad():
                    alpha = v / (1 - iou + v + eps)
                loss = loss + alpha * v
    if reduction == "mean" and loss.numel() == 0:
        return loss.sum()  # 'mean' of no boxes is 0 (torchvision's)
    return _reduce(loss, reduction)
