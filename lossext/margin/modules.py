"""Margin-softmax Modules: MarginCrossEntropyLoss on cosine logits, and heads that own the class
weights [C, D] (CombinedMarginLoss, CosFaceLoss, ArcFaceLoss, SphereFaceLoss)."""
import math

import torch
from torch import nn

from .._core import validation as V
from . import functional as F

__all__ = ["MarginCrossEntropyLoss", "CombinedMarginLoss", "CosFaceLoss", "ArcFaceLoss", "SphereFaceLoss"]


def _set_margin_hypers(mod, scale, m1, m2, m3, lambda_, label_smoothing, ignore_index, reduction, easy_margin):
    """Checks and stores the hyper-parameters shared by the margin-softmax Modules."""
    n = type(mod).__name__
    mod.scale, mod.m1, mod.m2, mod.m3, mod.lambda_ = F.check_margins(n, scale, m1, m2, m3, lambda_)
    mod.label_smoothing = V.check_range(n, "label_smoothing", label_smoothing, 0.0, 1.0)
    mod.ignore_index = V.check_int(n, "ignore_index", ignore_index)
    V.reduction_enum(n, reduction)
    mod.reduction = reduction
    mod.easy_margin = bool(easy_margin)


class MarginCrossEntropyLoss(nn.Module):
    """Margin cross-entropy on cosine logits [N, C], as nn.CrossEntropyLoss is on logits.
    See :func:`lossext.functional.margin_cross_entropy`. ``weight`` [C] is a buffer."""

    def __init__(self, scale=64.0, m1=1.0, m2=0.0, m3=0.0, label_smoothing=0.0, weight=None,
                 ignore_index=-100, reduction="mean", easy_margin=False, lambda_=0.0):
        super().__init__()
        _set_margin_hypers(self, scale, m1, m2, m3, lambda_, label_smoothing, ignore_index, reduction, easy_margin)
        self.register_buffer("weight", weight)

    def forward(self, cos_logits, target, feature_norm=None):
        return F.margin_cross_entropy(cos_logits, target, self.scale, self.m1, self.m2, self.m3,
                                      self.label_smoothing, self.weight, self.ignore_index, self.reduction,
                                      easy_margin=self.easy_margin, lambda_=self.lambda_,
                                      feature_norm=feature_norm)

    def extra_repr(self):
        return (f"scale={self.scale}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}")


class CombinedMarginLoss(nn.Module):
    """A margin-softmax head that owns the class weights [C, D] (initialized as nn.Linear) and
    computes the loss from embeddings [N, D] with the fused kernel
    (:func:`lossext.functional.fused_linear_margin_cross_entropy`), never storing N x C.
    Target logit s (cos(m1 theta + m2) - m3) (ArcFace's combined margin, Deng et al. Eq. 4).
    ``fused=False`` computes ``self.logits`` and :func:`margin_cross_entropy` instead.
    ``logits(embeddings)`` returns the cosines [N, C] for evaluation."""

    def __init__(self, embedding_dim, num_classes, m1=1.0, m2=0.5, m3=0.0, scale=64.0, label_smoothing=0.0,
                 ignore_index=-100, reduction="mean", easy_margin=False, chunk_size=None, fused=True, lambda_=0.0):
        super().__init__()
        n = type(self).__name__
        self.embedding_dim = V.check_int(n, "embedding_dim", embedding_dim)
        self.num_classes = V.check_int(n, "num_classes", num_classes)
        if self.embedding_dim <= 0 or self.num_classes <= 0:
            raise ValueError(f"{n}: embedding_dim and num_classes must be > 0, got {embedding_dim}, {num_classes}")
        _set_margin_hypers(self, scale, m1, m2, m3, lambda_, label_smoothing, ignore_index, reduction, easy_margin)
        self.chunk_size = chunk_size
        self.fused = bool(fused)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear

    def logits(self, embeddings):
        """Cosines [N, C] between the embeddings and the class weights."""
        return nn.functional.normalize(embeddings, dim=1) @ nn.functional.normalize(self.weight, dim=1).t()

    def _lambda(self):
        return self.lambda_

    def forward(self, embeddings, target):
        lam = self._lambda()
        if self.fused:
            return F.fused_linear_margin_cross_entropy(
                embeddings, self.weight, target, self.scale, self.m1, self.m2, self.m3, self.label_smoothing,
                self.ignore_index, self.reduction, self.chunk_size, easy_margin=self.easy_margin, lambda_=lam)
        return F.margin_cross_entropy(self.logits(embeddings), target, self.scale, self.m1, self.m2, self.m3,
                                      self.label_smoothing, None, self.ignore_index, self.reduction,
                                      easy_margin=self.easy_margin, lambda_=lam)

    def extra_repr(self):
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale}, "
                f"m1={self.m1}, m2={self.m2}, m3={self.m3}, reduction={self.reduction!r}, fused={self.fused}")


class CosFaceLoss(CombinedMarginLoss):
    """CosFace / LMCL (Wang et al., CVPR 2018): target logit s (cos - margin)."""

    def __init__(self, embedding_dim, num_classes, scale=64.0, margin=0.35, **kw):
        super().__init__(embedding_dim, num_classes, 1.0, 0.0, margin, scale, **kw)


class ArcFaceLoss(CombinedMarginLoss):
    """ArcFace (Deng et al., CVPR 2019): target logit s cos(theta + margin)."""

    def __init__(self, embedding_dim, num_classes, scale=64.0, margin=0.5, easy_margin=False, **kw):
        super().__init__(embedding_dim, num_classes, 1.0, margin, 0.0, scale, easy_margin=easy_margin, **kw)


class SphereFaceLoss(CombinedMarginLoss):
    """SphereFace / A-Softmax (Liu et al., CVPR 2017) with its annealing schedule: each call in
    training mode uses lambda = max(lambda_min, base (1 + gamma it)^-power), then it += 1
    (the original's MarginInnerProduct). The target logit is (lambda cos + psi) / (1 + lambda).

    ``feature_norm=False`` (default): normalized embeddings, logits ``scale * cos``, fused kernel.
    ``feature_norm=True``: the original's |x| cos logits (gradient through |x|), computed from
    ``self.logits`` and :func:`margin_cross_entropy` (not fused). The iteration count is saved
    in the state dict. Under torch.compile the changing lambda is a new constant each step
    (a recompile); compile the backbone and call the loss eagerly, or anneal to lambda_min first."""

    def __init__(self, embedding_dim, num_classes, margin=4, scale=64.0, base=1000.0, gamma=0.12, power=1.0,
                 lambda_min=5.0, feature_norm=False, **kw):
        super().__init__(embedding_dim, num_classes, margin, 0.0, 0.0, scale, **kw)
        n = type(self).__name__
        self.base = V.check_number(n, "base", base)
        self.gamma = V.check_number(n, "gamma", gamma)
        self.power = V.check_number(n, "power", power)
        self.lambda_min = V.check_number(n, "lambda_min", lambda_min)
        if self.base < 0 or self.lambda_min < 0 or self.gamma < 0:
            raise ValueError(f"{n}: base, gamma and lambda_min must be >= 0, got {base}, {gamma}, {lambda_min}")
        self.feature_norm = bool(feature_norm)
        self.iteration = 0

    def current_lambda(self):
        return max(self.lambda_min, self.base * (1.0 + self.gamma * self.iteration) ** (-self.power))

    def _lambda(self):
        lam = self.current_lambda()
        if self.training:
            self.iteration += 1
        return lam

    def forward(self, embeddings, target):
        if not self.feature_norm:
            return super().forward(embeddings, target)
        lam = self._lambda()
        return F.margin_cross_entropy(self.logits(embeddings), target, self.scale, self.m1, 0.0, 0.0,
                                      self.label_smoothing, None, self.ignore_index, self.reduction,
                                      lambda_=lam, feature_norm=embeddings.norm(dim=1))

    def get_extra_state(self):
        return {"iteration": self.iteration}

    def set_extra_state(self, state):
        self.iteration = int(state["iteration"])

    def extra_repr(self):
        return super().extra_repr() + f", lambda={self.current_lambda():.4g}, iteration={self.iteration}"
