"""Dense-prediction and synthesis Modules: JointsMSELoss, MaskRCNNLoss, DiceLoss, and the stage
losses of pose-guided image synthesis (PoseTransformerLoss, ForegroundStageLoss,
BackgroundStageLoss).

Every Module checks all its arguments at construction, shows them all in its repr and is
scriptable (torch.jit.script)."""
import math
from typing import List, Optional

import torch
from torch import Tensor, nn

from .._core import validation as V
from . import functional as F

__all__ = ["JointsMSELoss", "MaskRCNNLoss", "DiceLoss", "PoseTransformerLoss", "ForegroundStageLoss",
           "BackgroundStageLoss"]


class JointsMSELoss(nn.Module):
    """HRNet's ``JointsMSELoss(use_target_weight)`` and, with ``ohkm_topk`` (HRNet's default
    is 8), ``JointsOHKMMSELoss(use_target_weight, topk)``, as
    :func:`lossext.functional.joints_mse_loss`: ``forward(output, target, target_weight)``
    with heatmaps [B, K, H, W] and visibility [B, K] or [B, K, 1]. With
    ``use_target_weight=False`` the weight is not used (it may be omitted)."""

    def __init__(self, use_target_weight=True, ohkm_topk=None, reduction="mean"):
        super().__init__()
        n = type(self).__name__
        self.use_target_weight = V.flag(n, "use_target_weight", use_target_weight)
        if ohkm_topk is not None:
            ohkm_topk = V.integer(n, "ohkm_topk", ohkm_topk)
            if ohkm_topk < 1:
                raise ValueError(f"{n}: ohkm_topk must be None or >= 1, got {ohkm_topk}")
        self.ohkm_topk: Optional[int] = ohkm_topk
        self.reduction = V.reduction(n, reduction)

    def forward(self, output: Tensor, target: Tensor, target_weight: Optional[Tensor] = None) -> Tensor:
        if self.use_target_weight:
            if target_weight is None:
                raise ValueError("JointsMSELoss: use_target_weight=True needs target_weight [B, K] or [B, K, 1]")
            return F.joints_mse_loss(output, target, target_weight, self.ohkm_topk, self.reduction)
        return F.joints_mse_loss(output, target, None, self.ohkm_topk, self.reduction)

    def extra_repr(self):
        return f"use_target_weight={self.use_target_weight!r}, ohkm_topk={self.ohkm_topk!r}, reduction={self.reduction!r}"


class MaskRCNNLoss(nn.Module):
    """The Mask R-CNN mask loss, as :func:`lossext.functional.mask_rcnn_loss`:
    ``forward(mask_logits [R, C, M, M], labels [R], mask_targets [R, M, M])``."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = V.reduction(type(self).__name__, reduction)

    def forward(self, mask_logits: Tensor, labels: Tensor, mask_targets: Tensor) -> Tensor:
        return F.mask_rcnn_loss(mask_logits, labels, mask_targets, self.reduction)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class DiceLoss(nn.Module):
    """segmentation_models_pytorch's ``DiceLoss(mode, classes, log_loss, from_logits, smooth,
    ignore_index, eps, class_weights)``, as :func:`lossext.functional.dice_loss` (``formula``
    picks smp ≥ 0.4's semimetric score, the default, or smp ≤ 0.3.4's classic one):
    ``forward(logits, target)``."""

    def __init__(self, mode="multiclass", classes=None, log_loss=False, from_logits=True, smooth=0.0,
                 ignore_index=None, eps=1e-7, class_weights=None, formula="semimetric"):
        super().__init__()
        n = type(self).__name__
        if not isinstance(mode, str) or mode not in ("binary", "multiclass", "multilabel"):
            raise ValueError(f"{n}: mode must be 'binary', 'multiclass' or 'multilabel', got {mode!r}")
        if mode == "binary" and classes is not None:
            raise ValueError(f"{n}: classes cannot be used with mode='binary'")
        if mode == "binary" and class_weights is not None:
            raise ValueError(f"{n}: class_weights cannot be used with mode='binary'")
        if formula not in ("semimetric", "classic"):
            raise ValueError(f"{n}: formula must be 'semimetric' or 'classic', got {formula!r}")
        self.mode = mode
        if isinstance(classes, torch.Tensor):
            classes = classes.tolist()
        self.classes: Optional[List[int]] = None if classes is None else [V.integer(n, "classes", c) for c in classes]
        self.log_loss = V.flag(n, "log_loss", log_loss)
        self.from_logits = V.flag(n, "from_logits", from_logits)
        self.smooth = V.number(n, "smooth", smooth)
        if not (math.isfinite(self.smooth) and self.smooth >= 0):
            raise ValueError(f"{n}: smooth must be finite and >= 0, got {self.smooth}")
        self.eps = V.number(n, "eps", eps)
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"{n}: eps must be positive and finite, got {self.eps}")
        self.ignore_index: Optional[int] = None if ignore_index is None else V.integer(n, "ignore_index", ignore_index)
        if isinstance(class_weights, torch.Tensor):
            class_weights = class_weights.tolist()
        self.class_weights: Optional[List[float]] = (
            None if class_weights is None else [V.number(n, "class_weights", w) for w in class_weights])
        self.formula = formula

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.dice_loss(logits, target, self.mode, self.classes, self.log_loss, self.from_logits, self.smooth,
                           self.eps, self.ignore_index, self.class_weights, self.formula)

    def extra_repr(self):
        return (f"mode={self.mode!r}, classes={self.classes!r}, log_loss={self.log_loss!r}, "
                f"from_logits={self.from_logits!r}, smooth={self.smooth!r}, ignore_index={self.ignore_index!r}, "
                f"eps={self.eps!r}, class_weights={self.class_weights!r}, formula={self.formula!r}")


def _weight_arg(n, name, v):
    v = V.number(n, name, v)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{n}: {name} must be finite and >= 0, got {v}")
    return v


class PoseTransformerLoss(nn.Module):
    r"""Stage I of Si et al. (CVPR 2018, "Multistage Adversarial Losses for Pose-Based Human
    Image Synthesis"): :math:`\mathcal{L}^1 = \sum_i \lVert P^{*}_i - P_i \rVert_2^2`, the
    squared L2 distance of each sample's predicted pose to its target
    (:func:`lossext.functional.pose_regression_loss`); ``reduction='sum'`` is the paper's sum
    over samples, ``'mean'`` (the default) its mean. ``forward(pred_pose, target_pose)``."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = V.reduction(type(self).__name__, reduction)

    def forward(self, pred_pose: Tensor, target_pose: Tensor) -> Tensor:
        return F.pose_regression_loss(pred_pose, target_pose, self.reduction)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class ForegroundStageLoss(nn.Module):
    r"""Stage II of Si et al. (CVPR 2018), the foreground transformer's losses. With the
    generated foreground :math:`\hat F` (the seed's :math:`F^*_t`), the real one F, the
    foreground mask M and the discriminator :math:`D^{fg}` conditioned on the target pose:

    .. math:: \mathcal{L}^2 = \alpha_f L_{fg} + \beta_f L_{bg} + L_{gen}, \quad
              L_{gen} = -\log D^{fg}(\hat F),

    with :math:`(L_{fg}, L_{bg})` = :func:`lossext.functional.masked_l1_loss` (F̂, F, M), and
    the discriminator's loss

    .. math:: \mathcal{L}^2_D = -\log D^{fg}(F) - \log(1 - D^{fg}(\hat F)).

    The seed marks generated images with * and writes both terms the standard way (the
    generator's non-saturating −log D(fake); the discriminator's −log D(real) −
    log(1 − D(fake))); the Module takes real and fake logits by name, so nothing can swap.
    Every log is a softplus of the logits (:func:`lossext.functional.adversarial_loss`).

    ``forward(generated, target, mask, fake_logits)`` gives :math:`\mathcal{L}^2`;
    ``discriminator_loss(real_logits, fake_logits)`` gives :math:`\mathcal{L}^2_D` (pass the
    fake logits of a detached generated image)."""

    def __init__(self, alpha_f, beta_f):
        super().__init__()
        n = type(self).__name__
        self.alpha_f = _weight_arg(n, "alpha_f", alpha_f)
        self.beta_f = _weight_arg(n, "beta_f", beta_f)

    def forward(self, generated: Tensor, target: Tensor, mask: Tensor, fake_logits: Tensor) -> Tensor:
        fg, bg = F.masked_l1_loss(generated, target, mask)
        return self.alpha_f * fg + self.beta_f * bg + F.gan_generator_loss(fake_logits)

    @torch.jit.export
    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return F.gan_discriminator_loss(real_logits, fake_logits)

    def extra_repr(self):
        return f"alpha_f={self.alpha_f!r}, beta_f={self.beta_f!r}"


class BackgroundStageLoss(nn.Module):
    r"""Stage III of Si et al. (CVPR 2018), the background transformer's losses. With the
    generated image :math:`\hat I` (the seed's :math:`I^*_t`), the real one I, the foreground
    mask M, the foreground-conditioned discriminator :math:`D^{bg}_{fg}` (which sees
    :math:`I \odot M` with the target pose) and the global one :math:`D^{bg}`:

    .. math:: \mathcal{L}^3 = \alpha_b L_{fg} + \beta_b L_{bg} + L_{gen_{fg}} + L_{gen},\quad
              L_{gen_{fg}} = -\log D^{bg}_{fg}(\hat I \odot M),\quad L_{gen} = -\log D^{bg}(\hat I),

    with :math:`(L_{fg}, L_{bg})` = :func:`lossext.functional.masked_l1_loss` (Î, I, M), and
    the discriminators' loss

    .. math:: \mathcal{L}^3_D = -\log D^{bg}_{fg}(I \odot M) - \log(1 - D^{bg}_{fg}(\hat I \odot M))
              - \log D^{bg}(I) - \log(1 - D^{bg}(\hat I)).

    As in :class:`ForegroundStageLoss`, real and fake logits are named, and every log is a
    softplus of the logits.

    ``forward(generated, target, mask, fake_fg_logits, fake_logits)`` gives
    :math:`\mathcal{L}^3`; ``discriminator_loss(real_fg_logits, fake_fg_logits, real_logits,
    fake_logits)`` gives :math:`\mathcal{L}^3_D`."""

    def __init__(self, alpha_b, beta_b):
        super().__init__()
        n = type(self).__name__
        self.alpha_b = _weight_arg(n, "alpha_b", alpha_b)
        self.beta_b = _weight_arg(n, "beta_b", beta_b)

    def forward(self, generated: Tensor, target: Tensor, mask: Tensor, fake_fg_logits: Tensor,
                fake_logits: Tensor) -> Tensor:
        fg, bg = F.masked_l1_loss(generated, target, mask)
        return (self.alpha_b * fg + self.beta_b * bg + F.gan_generator_loss(fake_fg_logits)
                + F.gan_generator_loss(fake_logits))

    @torch.jit.export
    def discriminator_loss(self, real_fg_logits: Tensor, fake_fg_logits: Tensor, real_logits: Tensor,
                           fake_logits: Tensor) -> Tensor:
        return (F.gan_discriminator_loss(real_fg_logits, fake_fg_logits)
                + F.gan_discriminator_loss(real_logits, fake_logits))

    def extra_repr(self):
        return f"alpha_b={self.alpha_b!r}, beta_b={self.beta_b!r}"
