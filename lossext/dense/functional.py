"""Dense prediction losses (functional): keypoint heatmaps (SimpleBaseline / HRNet) and the
Mask R-CNN mask loss.

Each function is scriptable (torch.jit.script); eager calls also accept numpy numbers, follow
autocast (float32, as F.mse_loss) and torch.func transforms."""
from typing import Optional

import torch
from torch import Tensor

from .._core import validation as V
from .._core.autograd import call as call_op
from . import ops  # registers fake kernels and autograd

__all__ = ["joints_mse_loss", "mask_rcnn_loss"]


def _sums(output: Tensor, target: Tensor) -> Tensor:
    if torch.jit.is_scripting():
        return torch.ops.lossext.joints_mse_sums(output, target)
    return call_op("joints_mse_sums", output, target)


def _joint_weight(fn: str, target_weight: Optional[Tensor], output: Tensor, sums: Tensor) -> Optional[Tensor]:
    """target_weight [B, K] or [B, K, 1] as [B, K] in the sums' dtype (None: no weighting)."""
    if target_weight is None:
        return None
    B, K = output.shape[0], output.shape[1]
    shape = list(target_weight.shape)
    if not (shape == [B, K] or shape == [B, K, 1]):
        raise ValueError(fn + ": target_weight must have shape [" + str(B) + ", " + str(K) + "] or [" + str(B)
                         + ", " + str(K) + ", 1] (output is " + str(list(output.shape)) + "), got " + str(shape))
    if not (target_weight.is_floating_point() or target_weight.dtype == torch.bool
            or target_weight.dtype in [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]):
        raise TypeError(fn + ": target_weight must be a real tensor, got " + str(target_weight.dtype))
    V.check_device(fn, "target_weight", target_weight, "output", output)
    return target_weight.reshape(B, K).to(sums.dtype)


def joints_mse_loss(output: Tensor, target: Tensor, target_weight: Optional[Tensor] = None,
                    ohkm_topk: Optional[int] = None, reduction: str = "mean") -> Tensor:
    r"""The keypoint-heatmap MSE of SimpleBaseline and HRNet (``lib/core/loss.py``:
    ``JointsMSELoss``, and ``JointsOHKMMSELoss`` with ``ohkm_topk``).

    For heatmaps :math:`\hat h_{bk}` (``output``) and :math:`h_{bk}` (``target``) of P = H·W
    pixels and visibility :math:`w_{bk}` (``target_weight``, 1 when None), the per-joint term is

    .. math:: \ell_{bk} = \tfrac12 \cdot \tfrac1P \sum_p (w_{bk}\hat h_{bkp} - w_{bk} h_{bkp})^2
              = \tfrac12\, w_{bk}^2 \cdot \mathrm{MSE}(\hat h_{bk}, h_{bk}).

    HRNet multiplies both heatmaps by the weight, so it acts as :math:`w^2` (a 0/1 visibility is
    unchanged); the 0.5 is HRNet's. ``'mean'`` (HRNet's) is the mean of :math:`\ell_{bk}` over
    joints and batch, ``'sum'`` their sum, ``'none'`` the [B, K] terms.

    With ``ohkm_topk=k`` (online hard keypoint mining; HRNet's default is 8): per sample the k
    largest :math:`\ell_{bk}` are summed and divided by k, ties going to the lower joint index;
    ``'mean'`` (HRNet's) is then the mean over the batch, ``'sum'`` the sum, ``'none'`` the [B]
    per-sample values. k ≥ K takes all K joints (divided by K), where HRNet's ``torch.topk``
    raises; B = 1 works (HRNet's ``.squeeze()`` breaks there). The gradient reaches only the
    selected joints' heatmaps.

    Args:
        output: predicted heatmaps [B, K, ...] (any spatial dims, usually [B, K, H, W]).
        target: target heatmaps, output's shape; its gradient is the negative of output's.
        target_weight: [B, K] or [B, K, 1] visibility (HRNet's ``target_weight``), or None
            (``use_target_weight=False``); differentiable.
        ohkm_topk: None (no mining) or the k ≥ 1 of OHKM.
        reduction: 'mean', 'sum' or 'none', as above.

    An empty batch, K = 0 or empty heatmaps give NaN for 'mean' (torch's 0 / 0, as
    F.mse_loss), 0 for 'sum'.
    """
    fn = "joints_mse_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "target_weight", target_weight, True)
        (output, target) = V.promote(fn, "fp32", ("output", "target"), output, target)
        reduction = V.reduction(fn, reduction)
        if ohkm_topk is not None:
            ohkm_topk = V.integer(fn, "ohkm_topk", ohkm_topk)
    V.check_float_tensor(fn, "output", output)
    if output.dim() < 2:
        raise ValueError(fn + ": output must be [B, K, ...] heatmaps, got shape " + str(list(output.shape)))
    V.check_pair(fn, output, target, "output", "target")
    red = V.reduction_enum(fn, reduction)
    if ohkm_topk is not None:
        if ohkm_topk < 1:
            raise ValueError(fn + ": ohkm_topk must be None or >= 1, got " + str(ohkm_topk))
    sums = _sums(output, target)  # [B, K]: sum_p (x - y)^2
    w = _joint_weight(fn, target_weight, output, sums)
    pixels = 1
    for d in output.shape[2:]:
        pixels *= d
    if pixels > 0:
        per = sums * (0.5 / pixels)
        if w is not None:
            per = per * (w * w)
    else:  # HRNet's MSE of empty heatmaps: NaN, and a zero gradient (no pixel depends on anything)
        per = sums * 0.0 + float("nan")
        if w is not None:
            per = per + w * 0.0
    if ohkm_topk is not None:
        K = per.shape[1]
        k = min(ohkm_topk, K)
        # the k largest per sample, ties to the lower joint (a stable descending sort)
        top = torch.sort(per, dim=1, descending=True, stable=True)[0].narrow(1, 0, k)
        per = top.sum(1) / k if k > 0 else per.sum(1) * float("nan")
    if red == 0:
        return per.to(output.dtype)
    if red == 2:
        return per.sum().to(output.dtype)
    return per.mean().to(output.dtype)


def _mask_bce_eager(fn, mask_logits, labels, mask_targets, per_pixel):
    """The op's output; a label outside [0, C) re-raised as an IndexError naming it, other
    kernel errors as fn's (eager only: TorchScript has no try)."""
    try:
        return call_op("mask_bce", mask_logits, labels, mask_targets, per_pixel)
    except RuntimeError as e:
        msg = str(e)
        at = msg.find("argument 'labels' has value")
        if at >= 0:  # as indexing the channel would
            raise IndexError(fn + ": labels" + msg[at + len("argument 'labels'"):].split("\n")[0]) from None
        V.raise_from_kernel(fn, e)
        raise


def mask_rcnn_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor, reduction: str = "mean") -> Tensor:
    r"""The Mask R-CNN mask loss (He et al., ICCV 2017, Sec. 3; torchvision's
    ``roi_heads.maskrcnn_loss`` after its target projection): the binary cross-entropy with
    logits of each RoI's labelled class channel against its mask target,

    .. math:: L = rac{1}{R\,M^2} \sum_{r} \sum_{p} \mathrm{BCE}(x_{r,\,l_r,\,p},\ t_{r,p}),

    computed from the [R, C, M, M] logits without gathering the channel into a new tensor; the
    other channels get gradient 0.

    Args:
        mask_logits: [R, C, M, M] (any spatial dims) mask head logits.
        labels: [R] class of each RoI (an integer tensor), in [0, C).
        mask_targets: [R, M, M] binary or soft targets (torchvision's come from roi_align and
            are soft); differentiable (dL/dt = -x).
        reduction: 'mean' (torchvision's: over all R·M·M pixels), 'sum', or 'none' (per pixel,
            [R, M, M]).

    R = 0 (or empty masks) gives a zero loss attached to the graph, with zero gradients, as
    torchvision's ``mask_logits.sum() * 0`` ('none': an empty tensor). A label outside
    [0, C) raises IndexError on the CPU; on CUDA it is never used as an index and that RoI's
    values (so a reduced loss) are NaN. Saturated logits with a hard target give the limit
    (0 · inf taken as 0), where torch's formula gives NaN.
    """
    fn = "mask_rcnn_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "labels", labels)
        (mask_logits, mask_targets) = V.promote(fn, "fp32", ("mask_logits", "mask_targets"), mask_logits, mask_targets)
        reduction = V.reduction(fn, reduction)
    V.check_float_tensor(fn, "mask_logits", mask_logits)
    V.check_float_tensor(fn, "mask_targets", mask_targets)
    if mask_logits.dim() < 2:
        raise ValueError(fn + ": mask_logits must be [R, C, ...], got shape " + str(list(mask_logits.shape)))
    R, C = mask_logits.shape[0], mask_logits.shape[1]
    if C == 0:
        raise ValueError(fn + ": mask_logits has no class channels (shape " + str(list(mask_logits.shape)) + ")")
    want = [R] + list(mask_logits.shape[2:])
    if list(mask_targets.shape) != want:
        raise ValueError(fn + ": mask_targets must have shape " + str(want) + " (mask_logits is "
                         + str(list(mask_logits.shape)) + "), got " + str(list(mask_targets.shape)))
    if mask_targets.dtype != mask_logits.dtype:
        raise TypeError(fn + ": mask_targets dtype " + str(mask_targets.dtype) + " does not match mask_logits dtype "
                        + str(mask_logits.dtype))
    V.check_device(fn, "mask_targets", mask_targets, "mask_logits", mask_logits)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(fn + ": labels must be an integer tensor, got " + str(labels.dtype))
    if list(labels.shape) != [R]:
        raise ValueError(fn + ": labels must have shape [" + str(R) + "], got " + str(list(labels.shape)))
    V.check_device(fn, "labels", labels, "mask_logits", mask_logits)
    red = V.reduction_enum(fn, reduction)
    labels = labels.to(torch.int64)
    per_pixel = red == 0
    if torch.jit.is_scripting():
        out = torch.ops.lossext.mask_bce(mask_logits, labels, mask_targets, per_pixel)
    else:
        out = _mask_bce_eager(fn, mask_logits, labels, mask_targets, per_pixel)
    if per_pixel:
        return out
    pixels = mask_targets.numel()
    if pixels == 0:  # torchvision: mask_logits.sum() * 0
        return (out.sum() * 0.0).to(mask_logits.dtype)
    total = out.sum()
    return (total / pixels if red == 1 else total).to(mask_logits.dtype)
