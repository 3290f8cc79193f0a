"""Dense prediction and synthesis losses (functional): keypoint heatmaps (SimpleBaseline /
HRNet), the Mask R-CNN mask loss, the dice loss (segmentation_models_pytorch's DiceLoss) and
the stage losses of pose-guided image synthesis (Si et al., CVPR 2018): masked L1, pose
regression and the GAN terms.

Each function is scriptable (torch.jit.script); eager calls also accept numpy numbers, follow
autocast (float32, as F.mse_loss) and torch.func transforms."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._core import validation as V
from .._core.autograd import call as call_op
from . import ops  # registers fake kernels and autograd

__all__ = ["joints_mse_loss", "mask_rcnn_loss", "dice_loss", "masked_l1_loss", "pose_regression_loss",
           "adversarial_loss", "gan_generator_loss", "gan_discriminator_loss"]


def _sums(output: Tensor, target: Tensor) -> Tensor:
    if torch.jit.is_scripting():
        return torch.ops.lossext.joints_mse_sums(output, target)
    return call_op("joints_mse_sums", output, target)


def _eager_call(fn: str, op, *args, label_arg: str = "target"):
    """call_op (op: an op's name, or a callable: a one-node path), a kernel error re-raised as
    fn's naming the argument; an out-of-range value of label_arg (the op's class-index
    argument) an IndexError, as indexing with it would. Eager only: TorchScript has no try."""
    try:
        return op(*args) if callable(op) else call_op(op, *args)
    except RuntimeError as e:
        msg = str(e)
        at = msg.find("argument '" + label_arg + "' has value")
        if label_arg != "target" and at >= 0:  # (raise_from_kernel knows 'target')
            raise IndexError(fn + ": " + label_arg + msg[at + len(label_arg) + 11:].split("\n")[0]) from None
        V.raise_from_kernel(fn, e)
        raise


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
    pixels = 1
    for d in output.shape[2:]:
        pixels *= d
    if ops.joints_one_pass(output, red, ohkm_topk is not None, pixels):
        # issue #15: dLoss/dS is known before the maps are read, so one pass gives the loss and
        # its gradient (the backward returns that buffer for grad_output = 1)
        w = _joint_weight(fn, target_weight, output, output)
        c = 0.5 / pixels / (output.shape[0] * output.shape[1] if red == 1 else 1)
        coef = torch.full(output.shape[:2], c, dtype=output.dtype, device=output.device) if w is None else w * w * c
        if torch.jit.is_scripting():
            return torch.ops.lossext.joints_mse_loss_with_grad(output, target, coef)[0]
        return call_op("joints_mse_loss_with_grad", output, target, coef)[0]
    if not torch.jit.is_scripting():
        if ohkm_topk is not None:
            k = min(ohkm_topk, output.shape[1])
            if ops.ohkm_one_node(output, target_weight, red, pixels, k):
                # eager training with OHKM: one autograd node (the same loss and gradient; issue #15)
                return ops.ohkm_loss(output, target, _joint_weight(fn, target_weight, output, output), pixels, k, red)
    sums = _sums(output, target)  # [B, K]: sum_p (x - y)^2
    w = _joint_weight(fn, target_weight, output, sums)
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


def mask_rcnn_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor, reduction: str = "mean") -> Tensor:
    r"""The Mask R-CNN mask loss (He et al., ICCV 2017, Sec. 3; torchvision's
    ``roi_heads.maskrcnn_loss`` after its target projection): the binary cross-entropy with
    logits of each RoI's labelled class channel against its mask target,

    .. math:: L = \frac{1}{R\,M^2} \sum_{r} \sum_{p} \mathrm{BCE}(x_{r,\,l_r,\,p},\ t_{r,p}),

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
        out = _eager_call(fn, "mask_bce", mask_logits, labels, mask_targets, per_pixel, label_arg="labels")
    if per_pixel:
        return out
    pixels = mask_targets.numel()
    if pixels == 0:  # torchvision: mask_logits.sum() * 0
        return (out.sum() * 0.0).to(mask_logits.dtype)
    total = out.sum()
    return (total / pixels if red == 1 else total).to(mask_logits.dtype)


_DICE_MODES = ["binary", "multiclass", "multilabel"]


def _numel_from(t: Tensor, dim: int) -> int:
    """The product of t's sizes from dim on (1 for none)."""
    n = 1
    for d in t.shape[dim:]:
        n *= d
    return n


def _dice_sums(fn: str, logits: Tensor, target: Tensor, multiclass: bool, from_logits: bool,
               ignore_index: Optional[int]) -> Tensor:
    if torch.jit.is_scripting():
        return torch.ops.lossext.dice_sums(logits, target, multiclass, from_logits, ignore_index)
    return _eager_call(fn, "dice_sums", logits, target, multiclass, from_logits, ignore_index)


def _dice_eager_args(fn, logits, target, mode, classes, log_loss, from_logits, smooth, eps, ignore_index,
                     class_weights):
    """dice_loss's eager conversions (numpy numbers, tensors of classes and weights, autocast)."""
    V.tensor(fn, "logits", logits)
    V.tensor(fn, "target", target)
    if not isinstance(mode, str) or mode not in _DICE_MODES:
        raise ValueError(f"{fn}: mode must be 'binary', 'multiclass' or 'multilabel', got {mode!r}")
    log_loss = V.flag(fn, "log_loss", log_loss)
    from_logits = V.flag(fn, "from_logits", from_logits)
    smooth = V.number(fn, "smooth", smooth)
    eps = V.number(fn, "eps", eps)
    if ignore_index is not None:
        ignore_index = V.integer(fn, "ignore_index", ignore_index)
    if classes is not None:
        if isinstance(classes, Tensor):
            classes = classes.tolist()
        classes = [V.integer(fn, "classes", c) for c in classes]
    if class_weights is not None:
        if isinstance(class_weights, Tensor):
            class_weights = class_weights.tolist()
        class_weights = [V.number(fn, "class_weights", w) for w in class_weights]
    if target.requires_grad:
        raise ValueError(f"{fn}: target must not require grad (the dice loss's target is not differentiable)")
    (logits,) = V.promote(fn, "fp32", ("logits",), logits)
    return logits, classes, log_loss, from_logits, smooth, eps, ignore_index, class_weights


def _dice_formula(fn, formula):
    """An eager check of formula's type (the scriptable check concatenates it as a str)."""
    if not isinstance(formula, str):
        raise ValueError(f"{fn}: formula must be 'semimetric' or 'classic', got {formula!r}")


def dice_loss(logits: Tensor, target: Tensor, mode: str = "multiclass", classes: Optional[List[int]] = None,
              log_loss: bool = False, from_logits: bool = True, smooth: float = 0.0, eps: float = 1e-7,
              ignore_index: Optional[int] = None, class_weights: Optional[List[float]] = None,
              formula: str = "semimetric") -> Tensor:
    r"""The dice loss of segmentation_models_pytorch's ``DiceLoss`` (``losses/dice.py``;
    Milletari et al., V-Net, 3DV 2016), on the same arguments.

    Probabilities p: the softmax over the C channels (``'multiclass'``) or the sigmoid of each
    (``'binary'``, ``'multilabel'``) of the logits when ``from_logits`` (smp takes
    exp(log_softmax) and exp(logsigmoid): the same values), the input itself otherwise.
    Targets t: one-hot labels ``[B, ...]`` (multiclass) or a tensor of the logits' shape
    (binary: ``[B, 1, ...]`` or ``[B, ...]``; multilabel: ``[B, C, ...]``), hard or soft. Each
    class's sums run over the batch and the pixels together (smp's ``dims=(0, 2)``), over the
    pixels whose target is not ``ignore_index``:
    :math:`S_p = \sum p`, :math:`S_t = \sum t`, :math:`S_{pt} = \sum p t`,
    :math:`S_{|p-t|} = \sum |p - t|`. The score of a class is

    - ``formula='semimetric'`` (the default: smp ≥ 0.4, whose ``soft_dice_score`` is its
      Tversky score at α = β = ½ with the intersection of the dice semimetric, Wang and
      Blaschko, MICCAI 2023): :math:`I = (S_p + S_t - S_{|p-t|}) / 2`,
      :math:`D = (I + s) / \max(\tfrac12 (S_p + S_t) + s, \epsilon)`;
    - ``formula='classic'`` (smp ≤ 0.3.4, pytorch-toolbelt):
      :math:`D = (2 S_{pt} + s) / \max(S_p + S_t + s, \epsilon)`.

    For hard targets :math:`I = S_{pt}`, so with ``smooth=0`` the two agree; they differ for
    soft targets (I is then Σ min(p, t)) and for smooth > 0 (the semimetric form's smooth
    acts as 2·smooth would in the classic one).

    The loss of a class is 1 − D, or −log(max(D, ε)) with ``log_loss``; a class with no target
    pixels in the whole batch (:math:`S_t = 0`) contributes 0 but still counts in the mean over
    classes, as in smp. ``classes`` keeps a subset (smp's ``loss[classes]``), and the result is
    the mean over the classes kept, or their mean weighted by ``class_weights`` (smp ≥ 0.5:
    Σ w·loss / Σ w).

    Args:
        logits: [B, C, ...] (binary: C = 1, or [B, ...]).
        target: see above; multiclass labels are an integer tensor in [0, C) or ignore_index.
        mode: 'binary', 'multiclass' or 'multilabel'.
        classes: class indices to keep (not with 'binary'), or None for all.
        log_loss, from_logits, smooth, eps, ignore_index: as smp's.
        class_weights: C weights (not with 'binary'), or None.
        formula: 'semimetric' (smp ≥ 0.4) or 'classic' (smp ≤ 0.3.4), as above.

    The target is not differentiable (a floating target that requires grad is refused). A
    label outside [0, C) that is not ignore_index raises IndexError on the CPU and gives NaN on
    CUDA (never an index).
    """
    fn = "dice_loss"
    if not torch.jit.is_scripting():
        (logits, classes, log_loss, from_logits, smooth, eps, ignore_index, class_weights) = _dice_eager_args(
            fn, logits, target, mode, classes, log_loss, from_logits, smooth, eps, ignore_index, class_weights)
        _dice_formula(fn, formula)
    if mode != "binary" and mode != "multiclass" and mode != "multilabel":
        raise ValueError(fn + ": mode must be 'binary', 'multiclass' or 'multilabel', got '" + mode + "'")
    if formula != "semimetric" and formula != "classic":
        raise ValueError(fn + ": formula must be 'semimetric' or 'classic', got '" + formula + "'")
    V.check_float_tensor(fn, "logits", logits)
    V.check_device(fn, "target", target, "logits", logits)
    V.check_finite(fn, "smooth", smooth)
    if not (smooth >= 0.0):
        raise ValueError(fn + ": smooth must be >= 0, got " + str(smooth))
    V.check_positive(fn, "eps", eps)
    if logits.dim() < 1 or (mode != "binary" and logits.dim() < 2):
        raise ValueError(fn + ": logits must be [B, C, ...], got shape " + str(list(logits.shape)))
    B = logits.shape[0]
    if target.dim() < 1 or target.shape[0] != B:
        raise ValueError(fn + ": target must have the batch size " + str(B) + " of logits first, got shape "
                         + str(list(target.shape)))
    multiclass = mode == "multiclass"
    if mode == "binary":
        if classes is not None:
            raise ValueError(fn + ": classes cannot be used with mode='binary'")
        if class_weights is not None:
            raise ValueError(fn + ": class_weights cannot be used with mode='binary'")
        if logits.numel() != target.numel():
            raise ValueError(fn + ": target has shape " + str(list(target.shape)) + " but binary logits have shape "
                             + str(list(logits.shape)))
        x = logits.reshape(B, 1, _numel_from(logits, 1))  # explicit sizes: -1 is ambiguous when B = 0
        t = target.reshape(B, 1, _numel_from(logits, 1))
    elif multiclass:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(fn + ": mode='multiclass' needs integer class labels as target, got " + str(target.dtype))
        want = [B] + list(logits.shape[2:])
        if list(target.shape) != want:
            raise ValueError(fn + ": target must have shape " + str(want) + " (logits are [B, C, ...] "
                             + str(list(logits.shape)) + "), got " + str(list(target.shape)))
        x = logits.reshape(B, logits.shape[1], _numel_from(logits, 2))
        t = target.reshape(B, _numel_from(logits, 2)).to(torch.int64)
    else:
        if target.shape != logits.shape:
            raise ValueError(fn + ": target must have the logits' shape " + str(list(logits.shape))
                             + " in mode='multilabel', got " + str(list(target.shape)))
        x = logits.reshape(B, logits.shape[1], _numel_from(logits, 2))
        t = target.reshape(B, logits.shape[1], _numel_from(logits, 2))
    C = x.shape[1]
    if C == 0:
        raise ValueError(fn + ": logits have no classes (shape " + str(list(logits.shape)) + ")")
    if not multiclass:
        if target.is_complex():
            raise TypeError(fn + ": target must be real, got " + str(target.dtype))
        t = t.to(logits.dtype)
    if classes is not None:
        for c in classes:
            if c < -C or c >= C:
                raise IndexError(fn + ": classes has value " + str(c) + ", outside [0, " + str(C) + ")")
    if class_weights is not None and len(class_weights) != C:
        raise ValueError(fn + ": class_weights must have " + str(C) + " values (one per class), got "
                         + str(len(class_weights)))
    S = _dice_sums(fn, x, t, multiclass, from_logits, ignore_index).sum(0)  # [C, 4]
    Sp, St, Spt, Sabs = S[:, 0], S[:, 1], S[:, 2], S[:, 3]
    if formula == "semimetric":
        inter = (Sp + St - Sabs) * 0.5
        score = (inter + smooth) / ((Sp + St) * 0.5 + smooth).clamp_min(eps)
    else:
        score = (2.0 * Spt + smooth) / (Sp + St + smooth).clamp_min(eps)
    if log_loss:
        loss = -torch.log(score.clamp_min(eps))
    else:
        loss = 1.0 - score
    loss = loss * (St > 0).to(loss.dtype)
    if classes is not None:
        loss = loss[torch.tensor(classes, dtype=torch.int64, device=loss.device)]
    if class_weights is not None:
        w = torch.tensor(class_weights, dtype=loss.dtype, device=loss.device)
        if classes is not None:
            w = w[torch.tensor(classes, dtype=torch.int64, device=loss.device)]
        return ((loss * w).sum() / w.sum()).to(logits.dtype)
    return loss.mean().to(logits.dtype)


def _l1_sums(fn: str, input: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    if torch.jit.is_scripting():
        return torch.ops.lossext.masked_l1_sums(input, target, mask)
    return _eager_call(fn, "masked_l1_sums", input, target, mask)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den is 0 (an empty foreground or background), with a finite gradient."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


def masked_l1_loss(input: Tensor, target: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Stage II's foreground and background L1 terms (Si et al., "Multistage Adversarial Losses
    for Pose-Based Human Image Synthesis", CVPR 2018), in one pass: for an image x (``input``),
    its target y and a mask M (1 on the foreground),

    .. math:: L_{fg} = \frac{\sum |x - y| \cdot M}{\sum M}, \qquad
              L_{bg} = \frac{\sum |x - y| \cdot (1 - M)}{\sum (1 - M)}.

    The numerators sum over every element (batch, channels, pixels); the denominators are the
    sums of the mask as given (the pixels i, j of the paper's formula, and the batch), so a
    mask [B, 1, H, W] broadcast over C channels is counted once per pixel, not C times. Soft
    masks use their sums of weights. An empty foreground (Σ M = 0) gives L_fg = 0, an empty
    background L_bg = 0, with zero gradients: never NaN.

    Args:
        input: [B, C, ...] generated image (differentiable).
        target: its target, input's shape (differentiable: the negative gradient).
        mask: [B, C, ...], [B, 1, ...] or [B, ...] (both broadcast over the channels); float,
            bool or integer; not differentiable (refused when it requires grad).

    Returns:
        (L_fg, L_bg), two scalars in input's dtype.
    """
    fn = "masked_l1_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "mask", mask)
        if mask.requires_grad:
            raise ValueError(fn + ": mask must not require grad (it is not differentiable here)")
        (input, target) = V.promote(fn, "fp32", ("input", "target"), input, target)
    V.check_pair(fn, input, target)
    if input.dim() < 2:
        raise ValueError(fn + ": input must be [B, C, ...], got shape " + str(list(input.shape)))
    V.check_device(fn, "mask", mask, "input", input)
    if mask.is_complex():
        raise TypeError(fn + ": mask must be real, got " + str(mask.dtype))
    m = mask
    if m.dim() == input.dim() - 1:
        m = m.unsqueeze(1)
    ok = m.dim() == input.dim() and m.shape[0] == input.shape[0] and (m.shape[1] == 1 or m.shape[1] == input.shape[1])
    if ok:
        for d in range(2, input.dim()):
            ok = ok and m.shape[d] == input.shape[d]
    if not ok:
        raise ValueError(fn + ": mask must have shape " + str(list(input.shape)) + ", [B, 1, ...] or [B, ...] "
                         + "(input is " + str(list(input.shape)) + "), got " + str(list(mask.shape)))
    m = m.to(input.dtype)
    if not torch.jit.is_scripting():
        if ops.masked_l1_one_node(input, target):  # eager training: one autograd node (issue #13)
            return _eager_call(fn, ops.masked_l1_loss, input, target, m)
    S = _l1_sums(fn, input, target, m).sum([0, 1])  # [4]
    fg = _ratio(S[0], S[2])
    bg = _ratio(S[1], S[3])
    return fg.to(input.dtype), bg.to(input.dtype)


def pose_regression_loss(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    r"""Stage I's pose regression loss (Si et al., CVPR 2018): the squared L2 distance of each
    sample's predicted pose to its target, :math:`\lVert P^*_i - P_i \rVert_2^2` summed over all
    of the sample's values (keypoint coordinates or heatmaps), then reduced over the batch:
    ``'sum'`` is the paper's :math:`\sum_i`, ``'mean'`` the mean over samples, ``'none'`` the
    [B] values. One fused pass (the heatmap sums' op, each sample one row).

    Args:
        pred: [B, ...] predicted poses.
        target: pred's shape (differentiable).
        reduction: 'mean', 'sum' or 'none'.
    """
    fn = "pose_regression_loss"
    if not torch.jit.is_scripting():
        (pred, target) = V.promote(fn, "fp32", ("pred", "target"), pred, target)
        reduction = V.reduction(fn, reduction)
    V.check_pair(fn, pred, target, "pred", "target")
    if pred.dim() < 1:
        raise ValueError(fn + ": pred must be [B, ...], got a 0-dim tensor")
    red = V.reduction_enum(fn, reduction)
    B = pred.shape[0]
    n = _numel_from(pred, 1)  # each sample's values (explicit: reshape cannot infer -1 for B = 0)
    per = _sums(pred.reshape(B, 1, n), target.reshape(B, 1, n)).reshape(B)
    if red == 0:
        return per.to(pred.dtype)
    if red == 2:
        return per.sum().to(pred.dtype)
    return per.mean().to(pred.dtype)


def _softplus_terms(fn: str, logits: Tensor, target_is_real: bool, per_element: bool) -> Tensor:
    """softplus(-x) (real) or softplus(x) (fake) per element, or the sum per row of the first
    dim: the binary cross-entropy with logits against a constant target, on the mask loss's op
    (one channel, label 0)."""
    R = logits.shape[0] if logits.dim() > 0 else 1
    x = logits.reshape(R, 1, _numel_from(logits, 1))  # explicit: reshape cannot infer -1 when empty
    labels = torch.zeros(R, dtype=torch.int64, device=logits.device)
    t = torch.full([R, x.shape[2]], 1.0 if target_is_real else 0.0, dtype=logits.dtype, device=logits.device)
    if torch.jit.is_scripting():
        return torch.ops.lossext.mask_bce(x, labels, t, per_element)
    return _eager_call(fn, "mask_bce", x, labels, t, per_element)


def _adversarial(fn: str, logits: Tensor, target_is_real: bool, red: int) -> Tensor:
    V.check_float_tensor(fn, "logits", logits)
    if red == 0:
        return _softplus_terms(fn, logits, target_is_real, True).reshape(logits.shape)
    total = _softplus_terms(fn, logits, target_is_real, False).sum()
    if red == 2:
        return total.to(logits.dtype)
    return (total / logits.numel()).to(logits.dtype)


def adversarial_loss(logits: Tensor, target_is_real: bool, reduction: str = "mean") -> Tensor:
    r"""The GAN loss of discriminator logits x against a real or fake label, from the logits:
    :math:`-\log D = \mathrm{softplus}(-x)` for ``target_is_real=True`` and
    :math:`-\log(1 - D) = \mathrm{softplus}(x)` otherwise, with D = sigmoid(x) never formed,
    so there is no log(0): the loss and its gradient (sigmoid(x) − label) stay finite at any
    finite logit (±100 included). Equal to ``F.binary_cross_entropy_with_logits(x, label)``
    (pix2pix's ``GANLoss('vanilla')``).

    Args:
        logits: discriminator outputs, any shape (a PatchGAN map or [B]).
        target_is_real: True for the real label 1, False for the fake label 0.
        reduction: 'mean' (over all elements), 'sum' or 'none'.
    """
    fn = "adversarial_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "logits", logits)
        target_is_real = V.flag(fn, "target_is_real", target_is_real)
        (logits,) = V.promote(fn, "fp32", ("logits",), logits)
        reduction = V.reduction(fn, reduction)
    return _adversarial(fn, logits, target_is_real, V.reduction_enum(fn, reduction))


def gan_generator_loss(fake_logits: Tensor, reduction: str = "mean") -> Tensor:
    r"""The generator's (non-saturating) GAN loss, :math:`-\log D(G(z))` =
    ``adversarial_loss(fake_logits, True)``: the seed's :math:`L_{gen}` terms (Si et al., CVPR
    2018, stages II and III)."""
    fn = "gan_generator_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "fake_logits", fake_logits)
        (fake_logits,) = V.promote(fn, "fp32", ("fake_logits",), fake_logits)
        reduction = V.reduction(fn, reduction)
    V.check_float_tensor(fn, "fake_logits", fake_logits)
    return _adversarial(fn, fake_logits, True, V.reduction_enum(fn, reduction))


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor, reduction: str = "mean") -> Tensor:
    r"""The discriminator's GAN loss, :math:`-\log D(x) - \log(1 - D(G(z)))` =
    ``adversarial_loss(real_logits, True) + adversarial_loss(fake_logits, False)``: the seed's
    :math:`L_D` terms (Si et al., CVPR 2018), without the 0.5 that pix2pix puts in front of it.
    The two reduce separately (real and fake maps may differ in size); ``'none'`` needs equal
    shapes and returns the per-element sums. Pass the generated images detached."""
    fn = "gan_discriminator_loss"
    if not torch.jit.is_scripting():
        V.tensor(fn, "real_logits", real_logits)
        V.tensor(fn, "fake_logits", fake_logits)
        (real_logits, fake_logits) = V.promote(fn, "fp32", ("real_logits", "fake_logits"), real_logits, fake_logits)
        reduction = V.reduction(fn, reduction)
    V.check_float_tensor(fn, "real_logits", real_logits)
    V.check_float_tensor(fn, "fake_logits", fake_logits)
    V.check_device(fn, "fake_logits", fake_logits, "real_logits", real_logits)
    red = V.reduction_enum(fn, reduction)
    if red == 0 and real_logits.shape != fake_logits.shape:
        raise ValueError(fn + ": reduction='none' needs real_logits and fake_logits of one shape, got "
                         + str(list(real_logits.shape)) + " and " + str(list(fake_logits.shape)))
    return _adversarial(fn, real_logits, True, red) + _adversarial(fn, fake_logits, False, red)
