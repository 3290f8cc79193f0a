"""Detection losses (functional): the YOLOv2 region loss (darknet's region layer), the sigmoid and
softmax focal losses (Lin et al., ICCV 2017) and the IoU-family box losses (IoU, GIoU, DIoU,
CIoU).

Each function is scriptable (torch.jit.script); eager calls also accept numpy numbers, follow
autocast (float32, as F.cross_entropy) and torch.func transforms."""
import math
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .._core import pointwise
from .._core import validation as V
from .._core.autograd import call as call_op
from . import ops

__all__ = ["yolov2_region_loss", "RegionStats", "sigmoid_focal_loss", "softmax_focal_loss", "box_iou_loss",
           "match_priors", "ssd_multibox_loss", "refinedet_multibox_loss"]


def _check_alpha(fn: str, alpha: float) -> float:
    if not (alpha == -1.0 or (alpha >= 0.0 and alpha <= 1.0)):
        raise ValueError(fn + ": alpha must be in [0, 1] or -1 (no weighting), got " + str(alpha))
    return alpha


def _check_gamma(fn: str, gamma: float) -> float:
    return V.check_range(fn, "gamma", gamma, 0.0, math.inf, True)


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none", weight: Optional[Tensor] = None) -> Tensor:
    r"""The sigmoid focal loss of RetinaNet (Lin et al., ICCV 2017, Eq. 5), as
    ``torchvision.ops.sigmoid_focal_loss``:

    .. math:: FL = \alpha_t \, \mathrm{BCE}(x, y) \, (1 - p_t)^\gamma,\quad
              p_t = p y + (1 - p)(1 - y),\ \alpha_t = \alpha y + (1 - \alpha)(1 - y),

    :math:`p = \sigma(x)`. ``alpha = -1`` disables the weighting (:math:`\alpha_t = 1`);
    ``alpha`` outside [0, 1] otherwise, a negative ``gamma`` or a bad ``reduction`` raise
    ValueError. 'mean' is over all elements. Defaults are the paper's (α = 0.25, γ = 2) and
    torchvision's reduction ('none').

    Args:
        inputs: logits, a floating tensor of any shape.
        targets: labels in [0, 1] (soft labels allowed) of inputs' shape.
        weight: optional per-element weight broadcastable to inputs (an addition to
            torchvision's signature), e.g. a mask of the anchors that count.

    Gradients flow to inputs, targets and weight. Saturated logits give finite gradients for
    every γ ≥ 0 (torchvision's autograd gives 0 · inf = NaN there for γ < 1).
    """
    fn = "sigmoid_focal_loss"
    if not torch.jit.is_scripting():
        inputs, targets = V.promote(fn, "fp32", ("inputs", "targets"), inputs, targets)
        alpha, gamma = V.number(fn, "alpha", alpha), V.number(fn, "gamma", gamma)
        reduction = V.reduction(fn, reduction)
        weight = V.tensor(fn, "weight", weight, True)
    red = V.reduction_enum(fn, reduction)
    V.check_pair(fn, inputs, targets, "inputs", "targets")
    _check_alpha(fn, alpha)
    _check_gamma(fn, gamma)
    w = V.prepare_weight(fn, weight, inputs, "inputs")
    if torch.jit.is_scripting():
        if ops.SIGMOID_FOCAL_ONE_PASS and pointwise.one_pass_applies(inputs, red):
            return torch.ops.lossext.sigmoid_focal_loss_with_grad(inputs, targets, w, alpha, gamma, red)[0]
        return torch.ops.lossext.sigmoid_focal_loss(inputs, targets, w, alpha, gamma, red)
    return pointwise.call(fn, inputs, targets, w, (alpha, gamma), red)


def _mode_enum(fn: str, mode: str) -> int:
    if mode == "iou":
        return 0
    if mode == "giou":
        return 1
    if mode == "diou":
        return 2
    if mode == "ciou":
        return 3
    raise ValueError(fn + ": mode must be 'iou', 'giou', 'diou' or 'ciou', got '" + mode + "'")


def check_mode_type(fn, mode):
    """Eager only: mode is a str (TorchScript's typed signature checks it there)."""
    if not isinstance(mode, str):
        raise TypeError(f"{fn}: mode must be a str, got {type(mode).__name__} ({mode!r})")


def _check_boxes(fn: str, name: str, boxes: Tensor) -> Tensor:
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(fn + ": " + name + " must be real boxes, got " + str(boxes.dtype))
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(fn + ": " + name + " must have shape [..., 4] (x1, y1, x2, y2), got "
                         + str(list(boxes.shape)))
    if not boxes.is_floating_point():
        boxes = boxes.float()  # as torchvision's _upcast_non_float
    return boxes


def box_iou_loss(boxes1: Tensor, boxes2: Tensor, mode: str = "giou", eps: float = 1e-7,
                 reduction: str = "none") -> Tensor:
    r"""IoU-family loss of box pairs: ``mode`` 'iou' (1 − IoU), 'giou' (Rezatofighi et al.,
    CVPR 2019), 'diou' or 'ciou' (Zheng et al., AAAI 2020), box by box.

    Boxes are (x1, y1, x2, y2) ``[..., 4]``; the two broadcast against each other. On valid
    boxes (x2 > x1, y2 > y1) values and gradients are torchvision's
    ``generalized_box_iou_loss``, ``distance_box_iou_loss``, ``complete_box_iou_loss`` (CIoU's
    α a constant, as torchvision computes it under no_grad). Degenerate boxes (zero width or
    height, points, x2 < x1) give finite values and gradients, always: widths and heights
    are max(x2 − x1, 0), CIoU's aspect is atan2(w, h); see docs/detection.md for the values
    and where torchvision gives NaN.

    'none' returns the boxes' batch shape; 'mean' of no boxes is 0 (torchvision's). Integer
    boxes are converted to float32 (as torchvision); half inputs compute in float32. Gradients
    flow to both box tensors.
    """
    fn = "box_iou_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "boxes1", boxes1)
        V.tensor(fn, "boxes2", boxes2)
        eps = V.number(fn, "eps", eps)
        reduction = V.reduction(fn, reduction)
        check_mode_type(fn, mode)
    m = _mode_enum(fn, mode)
    red = V.reduction_enum(fn, reduction)
    boxes1 = _check_boxes(fn, "boxes1", boxes1)
    boxes2 = _check_boxes(fn, "boxes2", boxes2)
    V.check_device(fn, "boxes2", boxes2, "boxes1", boxes1)
    V.check_positive(fn, "eps", eps)
    if not torch.jit.is_scripting():
        (boxes1, boxes2) = V.promote(fn, "fp32", ("boxes1", "boxes2"), boxes1, boxes2)
    elif boxes1.dtype != boxes2.dtype:
        dt = torch.promote_types(boxes1.dtype, boxes2.dtype)
        boxes1, boxes2 = boxes1.to(dt), boxes2.to(dt)
    if boxes1.shape != boxes2.shape:
        shape = _broadcast_shape(boxes1.shape, boxes2.shape)
        if len(shape) == 0:
            raise ValueError(fn + ": boxes1 of shape " + str(list(boxes1.shape)) + " and boxes2 of shape "
                             + str(list(boxes2.shape)) + " do not broadcast")
        boxes1, boxes2 = boxes1.expand(shape), boxes2.expand(shape)
    if torch.jit.is_scripting():
        return torch.ops.lossext.box_iou_loss(boxes1, boxes2, m, eps, red)
    return call_op("box_iou_loss", boxes1, boxes2, m, eps, red)


def _broadcast_shape(a: List[int], b: List[int]) -> List[int]:
    """The broadcast of two box shapes (both end in 4), [] when they do not broadcast. Written
    out because TorchScript has no torch.broadcast_shapes before torch 2.12."""
    n = max(len(a), len(b))
    out: List[int] = []
    for i in range(n, 0, -1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            return []
        out.append(y if x == 1 else x)
    return out


def _class_vector(fn: str, name: str, v: Optional[Tensor], logits: Tensor) -> Optional[Tensor]:
    if v is None:
        return None
    C = logits.shape[1]
    if not v.is_floating_point():
        raise TypeError(fn + ": " + name + " must be floating point, got " + str(v.dtype))
    if v.dim() != 1 or v.shape[0] != C:
        raise ValueError(fn + ": " + name + " must have shape [" + str(C) + "] (one per class), got "
                         + str(list(v.shape)))
    V.check_device(fn, name, v, "logits", logits)
    return v.detach().to(logits.dtype)


def _focal_target(fn: str, target: Tensor, logits: Tensor) -> Tensor:
    if target.dtype not in [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]:
        raise TypeError(fn + ": target must be integer class indices, got " + str(target.dtype))
    want = [logits.shape[0]] + list(logits.shape[2:])
    if list(target.shape) != want:
        raise ValueError(fn + ": target must have shape " + str(want) + " (logits' shape without dim 1), got "
                         + str(list(target.shape)))
    V.check_device(fn, "target", target, "logits", logits)
    return target.long()


def softmax_focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0,
                       alpha: Optional[Union[float, Tensor]] = None, weight: Optional[Tensor] = None,
                       ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""The softmax focal loss (Lin et al., ICCV 2017, Eq. 5 over a softmax):

    .. math:: FL = -w_t \, \alpha_t \, (1 - p_t)^\gamma \log p_t,

    :math:`p_t` the softmax probability of the target class, over dim 1 of ``logits``
    [N, C, d...] (as F.cross_entropy; ``target`` [N, d...] integer classes).

    Args:
        gamma: the focusing parameter, ≥ 0 (γ = 0 is the cross-entropy).
        alpha: None (1), a float ≥ 0 for every class, or a per-class tensor [C].
        weight: optional per-class weight [C] (as F.cross_entropy's).
        ignore_index: rows with this target give 0 and a zero gradient, and are never used as
            an index.
        reduction: 'mean' divides by the number of rows not ignored (NaN when every row is, as
            F.cross_entropy), 'sum', or 'none' (target's shape).

    Differs from mmcv's ``softmax_focal_loss`` (CUDA only), whose α is one scalar for every
    class and whose 'mean' is over all rows, ignored ones included. ``alpha`` and ``weight``
    take no gradient. A target outside [0, C) raises IndexError on the CPU; on CUDA it is never
    used as an index and that row's loss (so a reduced loss) is NaN.
    """
    fn = "softmax_focal_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "target", target)
        (logits,) = V.promote(fn, "fp32", ("logits",), logits)
        gamma = V.number(fn, "gamma", gamma)
        ignore_index = V.integer(fn, "ignore_index", ignore_index)
        reduction = V.reduction(fn, reduction)
        weight = V.tensor(fn, "weight", weight, True)
        if alpha is not None and not isinstance(alpha, torch.Tensor):
            alpha = V.number(fn, "alpha", alpha)
    V.check_float_tensor(fn, "logits", logits)
    if logits.dim() < 2:
        raise ValueError(fn + ": logits must be [N, C, ...], got shape " + str(list(logits.shape)))
    if logits.shape[1] == 0:
        raise ValueError(fn + ": logits has no classes (shape " + str(list(logits.shape)) + ")")
    red = V.reduction_enum(fn, reduction)
    _check_gamma(fn, gamma)
    t = _focal_target(fn, target, logits)
    a: Optional[Tensor] = None
    if isinstance(alpha, Tensor):
        a = _class_vector(fn, "alpha", alpha, logits)
    elif alpha is not None:
        V.check_range(fn, "alpha", alpha, 0.0, math.inf, True)
        a = torch.full([logits.shape[1]], alpha, dtype=logits.dtype, device=logits.device)
    w = _class_vector(fn, "weight", weight, logits)
    if torch.jit.is_scripting():
        return torch.ops.lossext.softmax_focal_loss(logits, t, a, w, gamma, ignore_index, red)
    else:
        return _eager_call(fn, "softmax_focal_loss", logits, t, a, w, gamma, ignore_index, red)


def _eager_call(fn, op_name, *args, value_errors=()):
    """The op's outputs; its kernel's errors re-raised as fn's (eager only: TorchScript has no try)."""
    try:
        return call_op(op_name, *args)
    except RuntimeError as e:
        V.raise_from_kernel(fn, e, None, value_errors)


# ---- YOLOv2 region loss -----------------------------------------------------------------------

class RegionStats(NamedTuple):
    """darknet's diagnostics of a region layer (forward_region_layer's printf), 0-dim tensors:
    average IoU of each truth with its anchor's decoded box, recall (that IoU > 0.5), average
    objectness at the truths' anchors and over every anchor, average probability of the
    truth's class, the truth count, and darknet_cost = sum of delta^2 (what darknet prints as
    the cost; not the loss). Averages over nothing are 0 (darknet prints -nan)."""
    avg_iou: Tensor
    recall: Tensor
    avg_obj: Tensor
    avg_anyobj: Tensor
    avg_cat: Tensor
    count: Tensor
    darknet_cost: Tensor


# phrases of the region kernel's target checks that are a ValueError (csrc/detection/region_cpu.cpp)
_REGION_VALUE_ERRORS = ("must be in [0, 1]", "must be > 0", "must be positive")


def _region_eager(fn, output, targets, anchors, num_classes, scales, thresh, rescore, bias_match, seen,
                  warmup_images, scale_coord_by_size, reduction, return_stats):
    """The eager-only conversions: numbers, flags, anchors given as a sequence of (w, h)."""
    V.tensor(fn, "output", output)
    V.tensor(fn, "targets", targets)
    if not isinstance(anchors, torch.Tensor):
        try:
            anchors = torch.tensor(anchors, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{fn}: anchors must be a Tensor or a sequence of (w, h) pairs, got "
                            f"{type(anchors).__name__}") from None
        anchors = anchors.to(output.device)
    (output,) = V.promote(fn, "fp32", ("output",), output)
    names = ("object_scale", "noobject_scale", "class_scale", "coord_scale")
    scales = tuple(V.number(fn, n, v) for n, v in zip(names, scales))
    return (output, anchors, V.integer(fn, "num_classes", num_classes), scales, V.number(fn, "thresh", thresh),
            V.flag(fn, "rescore", rescore), V.flag(fn, "bias_match", bias_match), V.integer(fn, "seen", seen),
            V.integer(fn, "warmup_images", warmup_images), V.flag(fn, "scale_coord_by_size", scale_coord_by_size),
            V.reduction(fn, reduction), V.flag(fn, "return_stats", return_stats))


def check_region(fn: str, output: Tensor, targets: Tensor, anchors: Tensor, num_classes: int, object_scale: float,
                 noobject_scale: float, class_scale: float, coord_scale: float, thresh: float):
    """The scriptable checks of the region loss's arguments (the function and the Module)."""
    V.check_float_tensor(fn, "output", output)
    if output.dim() != 4:
        raise ValueError(fn + ": output must be [B, A * (5 + C), H, W], got shape " + str(list(output.shape)))
    if output.shape[2] == 0 or output.shape[3] == 0:
        raise ValueError(fn + ": output has an empty grid (shape " + str(list(output.shape)) + ")")
    if not anchors.is_floating_point() or anchors.dim() != 2 or anchors.shape[1] != 2 or anchors.shape[0] == 0:
        raise ValueError(fn + ": anchors must be a floating [A, 2] tensor of (w, h) in grid cells, got "
                         + str(anchors.dtype) + " of shape " + str(list(anchors.shape)))
    V.check_device(fn, "anchors", anchors, "output", output)  # their values: the CPU kernel checks them (CUDA
    # does not read them back: a non-positive anchor gives inf or NaN there)
    if num_classes < 1:
        raise ValueError(fn + ": num_classes must be >= 1, got " + str(num_classes))
    A = anchors.shape[0]
    if output.shape[1] != A * (5 + num_classes):
        raise ValueError(fn + ": output has " + str(output.shape[1]) + " channels, but A * (5 + num_classes) = "
                         + str(A) + " * (5 + " + str(num_classes) + ") = " + str(A * (5 + num_classes)))
    if not targets.is_floating_point():
        raise TypeError(fn + ": targets must be floating (class, x, y, w, h) rows, got " + str(targets.dtype))
    if targets.dim() != 3 or targets.shape[2] != 5 or targets.shape[0] != output.shape[0]:
        raise ValueError(fn + ": targets must have shape [" + str(output.shape[0]) + ", T, 5] (class, x, y, w, h), got "
                         + str(list(targets.shape)))
    V.check_device(fn, "targets", targets, "output", output)
    V.check_range(fn, "object_scale", object_scale, 0.0, math.inf, True)
    V.check_range(fn, "noobject_scale", noobject_scale, 0.0, math.inf, True)
    V.check_range(fn, "class_scale", class_scale, 0.0, math.inf, True)
    V.check_range(fn, "coord_scale", coord_scale, 0.0, math.inf, True)
    V.check_finite(fn, "thresh", thresh)


def region_call(fn: str, output: Tensor, targets: Tensor, anchors: Tensor, num_classes: int, object_scale: float,
                noobject_scale: float, class_scale: float, coord_scale: float, thresh: float, rescore: bool,
                bias_match: bool, prior_scale: Tensor, scale_coord_by_size: bool, red: int) -> Tuple[Tensor, Tensor]:
    """The op's (reduced loss, stats) for checked arguments; prior_scale a 0-dim float64 tensor."""
    args = (output, targets.detach().to(torch.float64), anchors.detach().to(torch.float64), num_classes,
            object_scale, noobject_scale, class_scale, coord_scale, thresh, rescore, bias_match, prior_scale,
            scale_coord_by_size)
    if torch.jit.is_scripting():
        per_image, _grad, stats = torch.ops.lossext.yolov2_region_loss(*args)
    else:
        per_image, _grad, stats = _eager_call(fn, "yolov2_region_loss", *args, value_errors=_REGION_VALUE_ERRORS)
    if red == 0:
        return per_image, stats
    total = per_image.sum()
    return (total if red == 2 else total / per_image.shape[0]), stats


def yolov2_region_loss(output: Tensor, targets: Tensor, anchors: Tensor, num_classes: int, object_scale: float = 5.0,
                       noobject_scale: float = 1.0, class_scale: float = 1.0, coord_scale: float = 1.0,
                       thresh: float = 0.6, rescore: bool = True, bias_match: bool = True, seen: int = 0,
                       warmup_images: int = 12800, scale_coord_by_size: bool = True, reduction: str = "mean",
                       return_stats: bool = False) -> Tensor:
    r"""The YOLOv2 region loss: darknet's ``[region]`` layer (pjreddie/darknet
    ``src/region_layer.c``, forward_region_layer), one fused op on the CPU and CUDA.

    - ``output`` [B, A·(5+C), H, W]: the raw head, anchor n's channels n·(5+C) + (tx, ty, tw,
      th, to, class logits); σ on tx, ty, to, softmax over the classes.
    - ``targets`` [B, T, 5]: rows (class, x, y, w, h), x, y, w, h in [0, 1]; a row with
      class < 0 is padding wherever it stands (darknet stops at the first row with x = 0).
    - ``anchors`` [A, 2] (or a list of (w, h)): the anchors in grid cells (darknet's biases).

    Each truth goes to the cell (⌊xW⌋, ⌊yH⌋), clamped so that x = 1.0 is legal, and to the
    anchor of best shape IoU (``bias_match``; else against the predicted w, h), lowest index
    on ties; a later truth on the same cell and anchor wins. Its terms: coordinates
    (xW − i, yH − j, log(wW/a_w), log(hH/a_h)) at scale coord_scale·(2 − wh)
    (``scale_coord_by_size=False``: coord_scale, AlexeyAB's fork), objectness to the IoU of
    the decoded box (``rescore``) or 1 at object_scale, and class_scale times the softmax
    cross-entropy. Every other anchor: objectness to 0 at noobject_scale, dropped where its
    decoded box has IoU > ``thresh`` with a truth, and while ``seen`` (images trained on, as
    darknet's counter) < ``warmup_images`` the prior box target (σ(tx) = σ(ty) = 0.5,
    tw = th = 0) at scale 0.01.

    The loss is Σ ½·s·(t − o)² over the squared terms plus the class terms, whose gradient is
    darknet's GPU delta times the logistic derivative. 'sum' is darknet's per-layer sum,
    'mean' divides by B (darknet's optimizer divides its learning rate by the batch), 'none'
    is per image [B]. Defaults are the YOLOv2-VOC configuration's (``cfg/yolo-voc.cfg``), not
    darknet's parser defaults. ``return_stats=True`` (eager only) returns
    ``(loss, RegionStats)``. A class outside [0, num_classes) raises IndexError, centres
    outside [0, 1] or widths/heights ≤ 0 ValueError (CPU; on CUDA they are not read back: a
    bad class makes the loss NaN). Gradients flow to ``output`` only. See docs/detection.md.
    """
    fn = "yolov2_region_loss"
    if not torch.jit.is_scripting():
        (output, anchors, num_classes, scales, thresh, rescore, bias_match, seen, warmup_images,
         scale_coord_by_size, reduction, return_stats) = _region_eager(
            fn, output, targets, anchors, num_classes, (object_scale, noobject_scale, class_scale, coord_scale),
            thresh, rescore, bias_match, seen, warmup_images, scale_coord_by_size, reduction, return_stats)
        object_scale, noobject_scale, class_scale, coord_scale = scales
    check_region(fn, output, targets, anchors, num_classes, object_scale, noobject_scale, class_scale, coord_scale, thresh)
    if seen < 0:
        raise ValueError(fn + ": seen must be >= 0, got " + str(seen))
    if warmup_images < 0:
        raise ValueError(fn + ": warmup_images must be >= 0, got " + str(warmup_images))
    red = V.reduction_enum(fn, reduction)
    # region_layer.c: the prior's .01 while seen < 12800 (darknet's count of images trained on)
    prior = torch.full([], 0.01 if seen < warmup_images else 0.0, dtype=torch.float64, device=output.device)
    loss, stats = region_call(fn, output, targets, anchors, num_classes, object_scale, noobject_scale, class_scale,
                              coord_scale, thresh, rescore, bias_match, prior, scale_coord_by_size, red)
    if not torch.jit.is_scripting():
        if return_stats:
            return loss, RegionStats(*stats.unbind(0))
    elif return_stats:
        raise ValueError(fn + ": return_stats=True is not supported in TorchScript (it changes the return type); "
                         "call it eagerly")
    return loss


# ---- prior matching and the multibox losses (SSD, RefineDet) ----------------------------------

# phrases of the multibox kernels' data checks that are a ValueError (csrc/detection/multibox_cpu.cpp)
_MULTIBOX_VALUE_ERRORS = ("negative width", "widths and heights > 0", "is not finite")


def _matching_enum(fn: str, matching: str) -> int:
    if matching == "bipartite":
        return 0
    if matching == "ssd_pytorch":
        return 1
    raise ValueError(fn + ": matching must be 'bipartite' or 'ssd_pytorch', got '" + matching + "'")


def _matching_type(fn, matching):
    if not isinstance(matching, str):
        raise TypeError(f"{fn}: matching must be 'bipartite' or 'ssd_pytorch', got {matching!r}")


def _check_priors_targets(fn: str, priors: Tensor, targets: Tensor, batch: int):
    """priors [P, 4] (cx, cy, w, h) and targets [B, T, 5] (x1, y1, x2, y2, label), floating;
    batch < 0: any B."""
    if not priors.is_floating_point() or priors.dim() != 2 or priors.shape[1] != 4:
        raise ValueError(fn + ": priors must be a floating [P, 4] tensor of (cx, cy, w, h), got " + str(priors.dtype)
                         + " of shape " + str(list(priors.shape)))
    if not targets.is_floating_point():
        raise TypeError(fn + ": targets must be floating (x1, y1, x2, y2, label) rows, got " + str(targets.dtype))
    if targets.dim() != 3 or targets.shape[2] != 5 or (batch >= 0 and targets.shape[0] != batch):
        b = "B" if batch < 0 else str(batch)
        raise ValueError(fn + ": targets must have shape [" + b + ", T, 5] (x1, y1, x2, y2, label), got "
                         + str(list(targets.shape)))
    V.check_device(fn, "targets", targets, "priors", priors)


def _check_head(fn: str, name: str, t: Tensor, like_name: str, like: Tensor, batch: int, p: int, last: int):
    """A head [B, P, last] (last < 0: any C >= 2) of like's dtype and device."""
    V.check_float_tensor(fn, name, t)
    if t.dim() != 3 or t.shape[0] != batch or t.shape[1] != p or (last >= 0 and t.shape[2] != last):
        what = "C" if last < 0 else str(last)
        raise ValueError(fn + ": " + name + " must have shape [" + str(batch) + ", " + str(p) + ", " + what
                         + "] (images, priors, " + ("classes" if last < 0 else "values") + "), got "
                         + str(list(t.shape)))
    if last < 0 and t.shape[2] < 2:
        raise ValueError(fn + ": " + name + " must have at least 2 classes (background and one), got "
                         + str(t.shape[2]))
    if t.dtype != like.dtype:
        raise TypeError(fn + ": " + name + " has dtype " + str(t.dtype) + " but " + like_name + " has dtype "
                        + str(like.dtype))
    V.check_device(fn, name, t, like_name, like)


def _check_multibox(fn: str, overlap_thresh: float, neg_pos_ratio: float, neg_overlap: float,
                    variances: Tuple[float, float]):
    V.check_range(fn, "overlap_thresh", overlap_thresh, 0.0, 1.0, False)
    V.check_range(fn, "neg_pos_ratio", neg_pos_ratio, 0.0, math.inf, True)
    if math.isnan(neg_overlap):
        raise ValueError(fn + ": neg_overlap must not be NaN")
    V.check_positive(fn, "variances[0]", variances[0])
    V.check_positive(fn, "variances[1]", variances[1])


def _multibox_eager(fn, heads, head_names, priors, targets, numbers, variances, reduction):
    """The eager-only conversions: tensors, numbers, variances given as any pair of reals."""
    heads = V.promote(fn, "fp32", head_names, *heads)
    V.tensor(fn, "priors", priors)
    V.tensor(fn, "targets", targets)
    numbers = tuple(V.number(fn, n, v) for n, v in numbers)
    try:
        v = tuple(variances)
    except TypeError:
        v = ()
    if len(v) != 2:
        raise TypeError(f"{fn}: variances must be a pair (center, size) of real numbers, got {variances!r}")
    v = (V.number(fn, "variances[0]", v[0]), V.number(fn, "variances[1]", v[1]))
    return heads, numbers, v, V.reduction(fn, reduction)


def _multibox_call(fn: str, loc: Tensor, conf: Tensor, priors: Tensor, targets: Tensor, arm_loc: Optional[Tensor],
                   arm_conf: Optional[Tensor], overlap_thresh: float, neg_pos_ratio: float, neg_overlap: float,
                   variances: Tuple[float, float], matching: int, objectness_thresh: float,
                   binary: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The op's per-image (loss_loc, loss_conf, num_pos) for checked arguments."""
    args = (loc, conf, priors.detach().to(torch.float64), targets.detach().to(torch.float64), arm_loc, arm_conf,
            overlap_thresh, neg_pos_ratio, neg_overlap, variances[0], variances[1], matching, objectness_thresh, binary)
    if torch.jit.is_scripting():
        ll, lc, npos, _gl, _gc = torch.ops.lossext.multibox_loss(*args)
    else:
        ll, lc, npos, _gl, _gc = _eager_call(fn, "multibox_loss", *args, value_errors=_MULTIBOX_VALUE_ERRORS)
    return ll, lc, npos


def _multibox_reduce(loss_loc: Tensor, loss_conf: Tensor, num_pos: Tensor, red: int) -> Tuple[Tensor, Tensor]:
    """'none': the per-image sums; 'sum': their sums; 'mean': the sums over max(positives, 1)
    (Caffe's VALID normalization, weiliu89/caffe loss_layer.cpp GetNormalizer), on the device."""
    if red == 0:
        return loss_loc, loss_conf
    sl, sc = loss_loc.sum(), loss_conf.sum()
    if red == 2:
        return sl, sc
    n = num_pos.sum().clamp(min=1).to(sl.dtype)
    return sl / n, sc / n


def match_priors(priors: Tensor, targets: Tensor, overlap_thresh: float = 0.5,
                 matching: str = "bipartite") -> Tuple[Tensor, Tensor]:
    r"""Matches each image's truths to the priors (SSD's and RefineDet's target assignment), one
    fused op on the CPU and CUDA.

    - ``priors`` [P, 4]: (cx, cy, w, h), w, h > 0.
    - ``targets`` [B, T, 5]: rows (x1, y1, x2, y2, label); a row with label < 0 is padding
      wherever it stands.

    Returns ``(matches, overlaps)``: int64 [B, P], the matched target row (an index into T) or −1,
    and float64 [B, P], the IoU with the matched truth, or for an unmatched prior its best IoU
    (0 when no IoU exceeds 1e-6).

    ``matching='bipartite'`` is the authors' Caffe rule (sfzhang15/RefineDet
    ``src/caffe/util/bbox_util.cpp`` MatchBBox, match_type PER_PREDICTION): a greedy global
    bipartite match of the pairs with IoU > 1e-6 (largest first; ties to the lower prior, then
    the lower row), then every unmatched prior takes its best truth with IoU ≥
    ``overlap_thresh``. ``'ssd_pytorch'`` is amdegroot/ssd.pytorch's ``match``: every truth is
    forced onto its best prior (a later truth takes a shared one), the other priors take their
    best truth with IoU ≥ ``overlap_thresh``; a truth that overlaps no prior matches nothing
    (ssd.pytorch forces it onto prior 0). A degenerate truth (zero width or height) has IoU 0
    with every prior and is never matched. No gradient. See docs/detection.md.
    """
    fn = "match_priors"
    if not torch.jit.is_scripting():
        V.tensor(fn, "priors", priors)
        V.tensor(fn, "targets", targets)
        overlap_thresh = V.number(fn, "overlap_thresh", overlap_thresh)
        _matching_type(fn, matching)
    _check_priors_targets(fn, priors, targets, -1)
    V.check_range(fn, "overlap_thresh", overlap_thresh, 0.0, 1.0, False)
    mode = _matching_enum(fn, matching)
    args = (priors.detach().to(torch.float64), targets.detach().to(torch.float64), overlap_thresh, mode)
    if torch.jit.is_scripting():
        overlaps, matches = torch.ops.lossext.match_priors(*args)
    else:
        overlaps, matches = _eager_call(fn, "match_priors", *args, value_errors=_MULTIBOX_VALUE_ERRORS)
    return matches, overlaps


def ssd_multibox_loss(loc: Tensor, conf: Tensor, priors: Tensor, targets: Tensor, overlap_thresh: float = 0.5,
                      neg_pos_ratio: float = 3.0, neg_overlap: float = 0.5,
                      variances: Tuple[float, float] = (0.1, 0.2), matching: str = "bipartite",
                      reduction: str = "mean") -> Tuple[Tensor, Tensor]:
    r"""SSD's multibox loss (Liu et al., ECCV 2016, Eq. 1-3; the authors' Caffe
    MultiBoxLossLayer), one fused op on the CPU and CUDA: matching, encoding, hard negative
    mining and both terms.

    - ``loc`` [B, P, 4]: the predicted offsets; ``conf`` [B, P, C]: class logits, class 0 the
      background; ``priors`` [P, 4] (cx, cy, w, h).
    - ``targets`` [B, T, 5]: rows (x1, y1, x2, y2, label), label in [0, C − 1) without the
      background (its class is label + 1), padding rows label −1 anywhere.

    The priors are matched as :func:`match_priors` (``matching``); each positive's truth is
    encoded center-size with ``variances`` (v_c, v_s): ((g_cx − p_cx)/(v_c p_w), (g_cy −
    p_cy)/(v_c p_h), log(g_w/p_w)/v_s, log(g_h/p_h)/v_s). loss_loc is smooth L1 over the
    positives' offsets; loss_conf the softmax cross-entropy over the positives and the hardest
    negatives, per image at most ⌊neg_pos_ratio · positives⌋ of the unmatched priors whose best
    IoU is below ``neg_overlap`` (ranked by their exact cross-entropy; ties to the lower prior).
    'mean' divides both batch sums by max(total positives, 1) (Caffe's VALID normalization);
    'sum' returns the sums, 'none' the per-image sums [B] (not normalized). A batch without
    positives gives 0 and zero gradients. Returns ``(loss_loc, loss_conf)``. A label ≥ C − 1
    raises IndexError, an inverted or non-finite box ValueError (CPU; CUDA does not read them
    back). Gradients flow to ``loc`` and ``conf`` only. See docs/detection.md.
    """
    fn = "ssd_multibox_loss"
    if not torch.jit.is_scripting():
        (loc, conf), (overlap_thresh, neg_pos_ratio, neg_overlap), variances, reduction = _multibox_eager(
            fn, (loc, conf), ("loc", "conf"), priors, targets,
            (("overlap_thresh", overlap_thresh), ("neg_pos_ratio", neg_pos_ratio), ("neg_overlap", neg_overlap)),
            variances, reduction)
        _matching_type(fn, matching)
    V.check_float_tensor(fn, "loc", loc)
    if loc.dim() != 3 or loc.shape[2] != 4:
        raise ValueError(fn + ": loc must have shape [B, P, 4] (images, priors, offsets), got " + str(list(loc.shape)))
    _check_head(fn, "conf", conf, "loc", loc, loc.shape[0], loc.shape[1], -1)
    _check_priors_targets(fn, priors, targets, loc.shape[0])
    if priors.shape[0] != loc.shape[1]:
        raise ValueError(fn + ": priors has " + str(priors.shape[0]) + " priors but loc has " + str(loc.shape[1]))
    V.check_device(fn, "priors", priors, "loc", loc)
    _check_multibox(fn, overlap_thresh, neg_pos_ratio, neg_overlap, variances)
    mode = _matching_enum(fn, matching)
    red = V.reduction_enum(fn, reduction)
    ll, lc, npos = _multibox_call(fn, loc, conf, priors, targets, None, None, overlap_thresh, neg_pos_ratio,
                                  neg_overlap, variances, mode, 0.0, False)
    return _multibox_reduce(ll, lc, npos, red)


def refinedet_multibox_loss(arm_loc: Tensor, arm_conf: Tensor, odm_loc: Tensor, odm_conf: Tensor, priors: Tensor,
                            targets: Tensor, overlap_thresh: float = 0.5, neg_pos_ratio: float = 3.0,
                            neg_overlap: float = 0.5, variances: Tuple[float, float] = (0.1, 0.2),
                            objectness_thresh: float = 0.01,
                            reduction: str = "mean") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""RefineDet's two multibox losses (Zhang et al., CVPR 2018; the authors' Caffe code,
    sfzhang15/RefineDet), two fused op calls on the CPU and CUDA.

    - ``arm_loc`` [B, P, 4], ``arm_conf`` [B, P, 2]: the anchor refinement module's offsets
      and object/background logits; ``odm_loc`` [B, P, 4], ``odm_conf`` [B, P, C]: the object
      detection module's; ``priors`` [P, 4] (cx, cy, w, h); ``targets`` as
      :func:`ssd_multibox_loss`'s.

    The ARM term is a binary multibox loss on the priors (every object's class is 1). The ODM
    matches the truths against the anchors refined by ``arm_loc`` (decoded with the prior
    variances, not clipped, detached: no gradient from the ODM reaches the ARM) and encodes its
    targets relative to them; a prior is an eligible ODM negative only if its ARM objectness
    softmax(arm_conf)[..., 1] ≥ ``objectness_thresh`` (negative anchor filtering, applied to
    negatives only). Matching is the authors' bipartite rule (:func:`match_priors`). Returns
    ``(arm_loc_loss, arm_conf_loss, odm_loc_loss, odm_conf_loss)``, each pair over its own
    max(positives, 1) for 'mean' ('sum': sums, 'none': per-image sums [B]). Gradients flow to
    the four heads only. See docs/detection.md for the Caffe lines and luuuyi/RefineDet.PyTorch's
    differences.
    """
    fn = "refinedet_multibox_loss"
    if not torch.jit.is_scripting():
        heads, (overlap_thresh, neg_pos_ratio, neg_overlap, objectness_thresh), variances, reduction = \
            _multibox_eager(fn, (arm_loc, arm_conf, odm_loc, odm_conf), ("arm_loc", "arm_conf", "odm_loc", "odm_conf"),
                            priors, targets, (("overlap_thresh", overlap_thresh), ("neg_pos_ratio", neg_pos_ratio),
                                              ("neg_overlap", neg_overlap), ("objectness_thresh", objectness_thresh)),
                            variances, reduction)
        arm_loc, arm_conf, odm_loc, odm_conf = heads
    V.check_float_tensor(fn, "arm_loc", arm_loc)
    if arm_loc.dim() != 3 or arm_loc.shape[2] != 4:
        raise ValueError(fn + ": arm_loc must have shape [B, P, 4] (images, priors, offsets), got "
                         + str(list(arm_loc.shape)))
    b, p = arm_loc.shape[0], arm_loc.shape[1]
    _check_head(fn, "arm_conf", arm_conf, "arm_loc", arm_loc, b, p, 2)
    _check_head(fn, "odm_loc", odm_loc, "arm_loc", arm_loc, b, p, 4)
    _check_head(fn, "odm_conf", odm_conf, "arm_loc", arm_loc, b, p, -1)
    _check_priors_targets(fn, priors, targets, b)
    if priors.shape[0] != p:
        raise ValueError(fn + ": priors has " + str(priors.shape[0]) + " priors but arm_loc has " + str(p))
    V.check_device(fn, "priors", priors, "arm_loc", arm_loc)
    _check_multibox(fn, overlap_thresh, neg_pos_ratio, neg_overlap, variances)
    if math.isnan(objectness_thresh):
        raise ValueError(fn + ": objectness_thresh must not be NaN")
    red = V.reduction_enum(fn, reduction)
    al, ac, anp = _multibox_call(fn, arm_loc, arm_conf, priors, targets, None, None, overlap_thresh, neg_pos_ratio,
                                 neg_overlap, variances, 0, 0.0, True)
    ol, oc, onp = _multibox_call(fn, odm_loc, odm_conf, priors, targets, arm_loc.detach(), arm_conf.detach(),
                                 overlap_thresh, neg_pos_ratio, neg_overlap, variances, 0, objectness_thresh, False)
    al, ac = _multibox_reduce(al, ac, anp, red)
    ol, oc = _multibox_reduce(ol, oc, onp, red)
    return al, ac, ol, oc
