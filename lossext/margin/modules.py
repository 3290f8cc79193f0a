"""Margin-softmax Modules: MarginCrossEntropyLoss on cosine logits, and heads that own the class
weights [C, D] (CombinedMarginLoss, CosFaceLoss, ArcFaceLoss, SphereFaceLoss).

Every Module checks all its arguments at construction, shows them all in its repr and is
scriptable (torch.jit.script)."""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .._core import validation as V
from . import functional as F

__all__ = ["MarginCrossEntropyLoss", "CombinedMarginLoss", "CosFaceLoss", "ArcFaceLoss", "SphereFaceLoss"]


def _set_margin_hypers(mod, names, scale, m1, m2, m3, lambda_, label_smoothing, ignore_index, reduction, easy_margin):
    """Checks and stores the hyper-parameters shared by the margin-softmax Modules; names: the
    user's names of m1, m2, m3 (lossext.margin.functional.COMBINED, ARCFACE, ...)."""
    n = type(mod).__name__
    mod._fn, mod._names = n, list(names)
    mod.scale, mod.m1, mod.m2, mod.m3, mod.label_smoothing, mod.ignore_index, mod.lambda_ = F._eager_numbers(
        n, names, scale, m1, m2, m3, label_smoothing, ignore_index, lambda_)
    F.check_margins(n, names, mod.scale, mod.m1, mod.m2, mod.m3, mod.lambda_)
    F.check_common(n, mod.label_smoothing, V.reduction(n, reduction))
    mod.reduction = reduction
    mod.easy_margin = V.flag(n, "easy_margin", easy_margin)


def _reject_fixed(mod_name, kw, fixed, what):
    for key in fixed:
        if key in kw:
            raise TypeError(f"{mod_name}: {key} is fixed by {what}; pass margin=, or use CombinedMarginLoss to set "
                            "m1, m2 and m3 together")


def _render(settings):
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


class MarginCrossEntropyLoss(nn.Module):
    """Margin cross-entropy on cosine logits [N, C], as nn.CrossEntropyLoss is on logits.
    See :func:`lossext.functional.margin_cross_entropy`. ``weight`` [C] is a buffer."""

    def __init__(self, scale=64.0, m1=1.0, m2=0.0, m3=0.0, label_smoothing=0.0, weight=None,
                 ignore_index=-100, reduction="mean", easy_margin=False, lambda_=0.0):
        super().__init__()
        n = type(self).__name__
        _set_margin_hypers(self, F.COMBINED, scale, m1, m2, m3, lambda_, label_smoothing, ignore_index, reduction,
                           easy_margin)
        weight = V.tensor(n, "weight", weight, True)
        if weight is not None and (weight.dim() != 1 or not weight.is_floating_point()):
            raise ValueError(f"{n}: weight must be a 1-D floating tensor [C], got {weight.dtype} of shape "
                             f"{list(weight.shape)}")
        self.register_buffer("weight", weight)

    def forward(self, cos_logits: Tensor, target: Tensor, feature_norm: Optional[Tensor] = None) -> Tensor:
        return F.margin_ce(self._fn, self._names, cos_logits, target, self.scale, self.m1, self.m2, self.m3,
                           self.label_smoothing, self.weight, self.ignore_index, self.reduction, self.easy_margin,
                           F.lambda_tensor(self.lambda_, cos_logits), feature_norm)

    def extra_repr(self):
        w = None if self.weight is None else f"[{self.weight.shape[0]}]"
        return _render(dict(scale=self.scale, m1=self.m1, m2=self.m2, m3=self.m3, label_smoothing=self.label_smoothing,
                            weight=w, ignore_index=self.ignore_index, reduction=self.reduction,
                            easy_margin=self.easy_margin, lambda_=self.lambda_))


class CombinedMarginLoss(nn.Module):
    """A margin-softmax head that owns the class weights [C, D] (initialized as nn.Linear) and
    computes the loss from embeddings [N, D] with the fused kernel
    (:func:`lossext.functional.fused_linear_margin_cross_entropy`), never storing N x C.
    Target logit s (cos(m1 theta + m2) - m3) (ArcFace's combined margin, Deng et al. Eq. 4).
    ``fused=False`` computes ``self.logits`` and :func:`margin_cross_entropy` instead.
    ``logits(embeddings)`` returns the cosines [N, C] for evaluation."""

    def __init__(self, embedding_dim, num_classes, m1=1.0, m2=0.5, m3=0.0, scale=64.0, label_smoothing=0.0,
                 ignore_index=-100, reduction="mean", easy_margin=False, chunk_size=None, fused=True, lambda_=0.0,
                 *, _names=F.COMBINED):
        super().__init__()
        n = type(self).__name__
        self.embedding_dim = V.integer(n, "embedding_dim", embedding_dim, 1)
        self.num_classes = V.integer(n, "num_classes", num_classes, 1)
        _set_margin_hypers(self, _names, scale, m1, m2, m3, lambda_, label_smoothing, ignore_index, reduction,
                           easy_margin)
        self.chunk_size = None if chunk_size is None else V.integer(n, "chunk_size", chunk_size, 1)
        self.fused = V.flag(n, "fused", fused)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear

    def logits(self, embeddings: Tensor) -> Tensor:
        """Cosines [N, C] between the embeddings and the class weights (errors name
        ``embeddings``, as the fused path's)."""
        fn = self._fn
        weight = self.weight
        if not torch.jit.is_scripting():
            embeddings, weight = V.promote(fn, "matmul", ("embeddings", "weight"), embeddings, weight)
        V.check_rows(fn, "embeddings", embeddings, "D")
        V.check_device(fn, "embeddings", embeddings, "weight", weight)
        if embeddings.shape[1] != weight.shape[1]:
            raise ValueError(fn + ": embeddings have D = " + str(embeddings.shape[1]) + " but weight has D = "
                             + str(weight.shape[1]) + " (embedding_dim)")
        return nn.functional.normalize(embeddings, dim=1) @ nn.functional.normalize(weight, dim=1).t()

    def _lambda(self, like: Tensor) -> Optional[Tensor]:
        return F.lambda_tensor(self.lambda_, like)

    def _head(self, embeddings: Tensor, target: Tensor, lam: Optional[Tensor]) -> Tensor:
        if self.fused:
            return F.fused_margin(self._fn, self._names, embeddings, self.weight, target, self.scale, self.m1,
                                  self.m2, self.m3, self.label_smoothing, self.ignore_index, self.reduction,
                                  self.chunk_size, True, None, self.easy_margin, lam)
        return F.margin_ce(self._fn, self._names, self.logits(embeddings), target, self.scale, self.m1, self.m2,
                           self.m3, self.label_smoothing, None, self.ignore_index, self.reduction, self.easy_margin,
                           lam, None)

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        return self._head(embeddings, target, self._lambda(embeddings))

    def _settings(self):
        return dict(embedding_dim=self.embedding_dim, num_classes=self.num_classes, m1=self.m1, m2=self.m2,
                    m3=self.m3, scale=self.scale, label_smoothing=self.label_smoothing,
                    ignore_index=self.ignore_index, reduction=self.reduction, easy_margin=self.easy_margin,
                    chunk_size=self.chunk_size, fused=self.fused, lambda_=self.lambda_)

    def extra_repr(self):
        return _render(self._settings())


def _wrapper_settings(mod, margin_key, drop):
    s = mod._settings()
    s = {k: v for k, v in s.items() if k not in drop}
    return dict(embedding_dim=s.pop("embedding_dim"), num_classes=s.pop("num_classes"), scale=s.pop("scale"),
                margin=getattr(mod, margin_key), **s)


class CosFaceLoss(CombinedMarginLoss):
    """CosFace / LMCL (Wang et al., CVPR 2018): target logit s (cos - margin). The other
    arguments are CombinedMarginLoss's (m1, m2 are fixed)."""

    def __init__(self, embedding_dim, num_classes, scale=64.0, margin=0.35, **kw):
        _reject_fixed(type(self).__name__, kw, ("m1", "m2", "m3", "_names"), "CosFace (target logit s (cos - margin))")
        super().__init__(embedding_dim, num_classes, 1.0, 0.0, margin, scale, _names=F.COSFACE, **kw)

    def extra_repr(self):
        return _render(_wrapper_settings(self, "m3", ("m1", "m2", "m3", "easy_margin")))


class ArcFaceLoss(CombinedMarginLoss):
    """ArcFace (Deng et al., CVPR 2019): target logit s cos(theta + margin). The other
    arguments are CombinedMarginLoss's (m1, m3 are fixed)."""

    def __init__(self, embedding_dim, num_classes, scale=64.0, margin=0.5, easy_margin=False, **kw):
        _reject_fixed(type(self).__name__, kw, ("m1", "m2", "m3", "_names"), "ArcFace (target logit s cos(theta + margin))")
        super().__init__(embedding_dim, num_classes, 1.0, margin, 0.0, scale, easy_margin=easy_margin,
                         _names=F.ARCFACE, **kw)

    def extra_repr(self):
        return _render(_wrapper_settings(self, "m2", ("m1", "m2", "m3")))


class SphereFaceLoss(CombinedMarginLoss):
    """SphereFace / A-Softmax (Liu et al., CVPR 2017) with its annealing schedule
    lambda = max(lambda_min, base (1 + gamma it)^-power) (the original's MarginInnerProduct);
    the target logit is (lambda cos + psi) / (1 + lambda).

    ``it`` counts optimizer steps: call ``loss_fn.step()`` once after each optimizer step (as
    an LR scheduler), so gradient accumulation, evaluation and no_grad calls leave the schedule
    alone (the original counted Caffe iterations, one forward each). The count is the int64
    buffer ``iteration`` (saved in the state dict; a checkpoint without it, e.g. weights only,
    loads strictly and keeps the current count); lambda is computed as a tensor from it, so a
    compiled training loop compiles once.

    ``feature_norm=False`` (default): normalized embeddings, logits ``scale * cos``, fused kernel.
    ``feature_norm=True``: the original's |x| cos logits (gradient through |x|), computed from
    ``self.logits`` and :func:`margin_cross_entropy` (not fused)."""

    def __init__(self, embedding_dim, num_classes, margin=4, scale=64.0, base=1000.0, gamma=0.12, power=1.0,
                 lambda_min=5.0, feature_norm=False, **kw):
        n = type(self).__name__
        _reject_fixed(n, kw, ("m1", "m2", "m3", "lambda_", "easy_margin", "_names"),
                      "SphereFace (psi(theta) with margin m, annealed by base, gamma, power, lambda_min)")
        super().__init__(embedding_dim, num_classes, margin, 0.0, 0.0, scale, _names=F.SPHEREFACE, **kw)
        self.base = V.number(n, "base", base)
        self.gamma = V.number(n, "gamma", gamma)
        self.power = V.number(n, "power", power)
        self.lambda_min = V.number(n, "lambda_min", lambda_min)
        for key in ("base", "gamma", "power", "lambda_min"):
            V.check_finite(n, key, getattr(self, key))
        for key in ("base", "gamma", "lambda_min"):
            if getattr(self, key) < 0:
                raise ValueError(f"{n}: {key} must be >= 0, got {getattr(self, key)}")
        self.feature_norm = V.flag(n, "feature_norm", feature_norm)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    @torch.jit.ignore
    def step(self, n=1):
        """Advances the schedule by n optimizer steps (call once after each optimizer.step())."""
        n = V.integer(type(self).__name__, "n", n, 0)
        with torch.no_grad():
            self.iteration.add_(n)

    def lambda_value(self) -> Tensor:
        """The current lambda, a 0-dim float64 tensor on the module's device."""
        it = self.iteration.to(torch.float64)
        return torch.clamp_min(self.base * (1.0 + self.gamma * it) ** (-self.power), self.lambda_min)

    @torch.jit.ignore
    def current_lambda(self):
        return float(self.lambda_value())

    def _lambda(self, like: Tensor) -> Optional[Tensor]:
        # like may be a wrong argument (None, a list): the op's checks then name it
        lam = self.lambda_value()
        return lam.to(like.device) if isinstance(like, torch.Tensor) else lam

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        lam = self._lambda(embeddings)
        if not self.feature_norm:
            return self._head(embeddings, target, lam)
        return F.margin_ce(self._fn, self._names, self.logits(embeddings), target, self.scale, self.m1, 0.0, 0.0,
                           self.label_smoothing, None, self.ignore_index, self.reduction, False, lam,
                           torch.linalg.vector_norm(embeddings, 2.0, [1]))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "iteration"
        legacy = state_dict.pop(prefix + "_extra_state", None)  # checkpoints of lossext <= 0.2
        if legacy is not None and key not in state_dict:
            state_dict[key] = torch.tensor(int(legacy["iteration"]), dtype=torch.int64)
        had = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not had and key in missing_keys:
            missing_keys.remove(key)  # a weights-only checkpoint: keep the current count

    def extra_repr(self):
        s = _wrapper_settings(self, "m1", ("m1", "m2", "m3", "easy_margin", "lambda_"))
        s.update(base=self.base, gamma=self.gamma, power=self.power, lambda_min=self.lambda_min,
                 feature_norm=self.feature_norm, iteration=int(self.iteration), lambda_=round(self.current_lambda(), 6))
        return _render(s)
