"""Margin-softmax losses (functional): SphereFace, CosFace, ArcFace, the combined margin, and the
fused normalized-linear version that never stores the [N, C] logits. They follow
torch.nn.functional.cross_entropy: 'mean' divides by the summed class weights of the rows not
ignored."""
import math

import torch

from .._core import validation as V
from . import ops  # noqa: F401  (registers fake kernels and autograd)

__all__ = ["margin_cross_entropy", "cosface_loss", "arcface_loss", "sphereface_loss",
           "fused_linear_margin_cross_entropy", "fused_linear_cross_entropy"]


def check_margins(fn, scale, m1, m2, m3, lambda_=0.0):
    scale = V.check_number(fn, "scale", scale, positive=True)
    m1 = V.check_number(fn, "m1", m1, positive=True)
    m2 = V.check_range(fn, "m2", m2, 0.0, math.pi, hi_open=True)
    m3 = V.check_number(fn, "m3", m3)
    lambda_ = V.check_range(fn, "lambda_", lambda_, 0.0, math.inf, hi_open=True)
    return scale, m1, m2, m3, lambda_


def _ce_common(fn, label_smoothing, ignore_index, reduction):
    return (V.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0),
            V.check_int(fn, "ignore_index", ignore_index), V.reduction_enum(fn, reduction))


def margin_cross_entropy(cos_logits, target, scale=64.0, m1=1.0, m2=0.0, m3=0.0, label_smoothing=0.0,
                         weight=None, ignore_index=-100, reduction="mean", *, easy_margin=False,
                         lambda_=0.0, feature_norm=None):
    r"""Cross-entropy over cosine logits with an angular margin on the target class.

    The target logit is :math:`s\,(\frac{\lambda\cos\theta + \psi(\theta)}{1+\lambda} - m_3)`,
    :math:`\theta = \arccos(\mathrm{clamp}(\cos, -1, 1))`, with :math:`\psi = \cos(m_1\theta + m_2)`
    kept monotone in :math:`\theta` (ArcFace, Deng et al. CVPR 2019, Eq. 4); other logits are
    :math:`s\cos`. (1, 0, m) is CosFace, (1, m, 0) ArcFace, integer m1 SphereFace.

    - ArcFace (m1 = 1, m2 > 0): where cos <= cos(pi - m2) the target uses cos - sin(pi - m2) m2
      (insightface's rule); ``easy_margin=True`` uses cos(theta + m2) only where cos > 0 (and
      plain cos elsewhere: not monotone at cos = 0, by its definition).
    - m1 != 1: A-Softmax's psi = (-1)^k cos(m1 theta + m2) - 2k, k = floor((m1 theta + m2) / pi).
    - ``lambda_`` anneals SphereFace; ``feature_norm`` [N] replaces ``scale`` per row (SphereFace
      scales by the feature norm; it takes a gradient).
    - ``label_smoothing``, ``weight`` [C] (no gradient), ``ignore_index`` and ``reduction`` mean
      what they mean in torch.nn.functional.cross_entropy ('mean' divides by the summed target
      weights of the rows not ignored; all rows ignored gives NaN).
    - At cos = +-1 the gradient is finite: d psi/d cos divides by max(sin theta, 1e-4).
    - float16/bfloat16 compute in float32 (no overflow at s = 64).
    - A row with a logit of +inf (``scale * cos``, or the target's margin logit, formed in float32 for
      float16/bfloat16/float32 inputs and in float64 for float64) has a NaN loss and gradient on
      every device, as ``F.cross_entropy`` gives on logits that contain +inf.
    - Labels outside [0, C) that are not ``ignore_index``: RuntimeError on CPU. On CUDA they are
      never used as an index; that row's loss, and so a reduced loss, is NaN, and its gradient is NaN.

    Args:
        cos_logits: [N, C] cosines. target: [N] integer labels.
    """
    fn = "margin_cross_entropy"
    V.check_rows(fn, "cos_logits", cos_logits)
    n, c = cos_logits.shape
    target = V.check_labels(fn, target, n, cos_logits.device)
    scale, m1, m2, m3, lambda_ = check_margins(fn, scale, m1, m2, m3, lambda_)
    ls, ii, red = _ce_common(fn, label_smoothing, ignore_index, reduction)
    if not isinstance(easy_margin, bool):
        raise TypeError(f"{fn}: easy_margin must be a bool, got {type(easy_margin).__name__}")
    if c == 0 and n > 0:
        raise ValueError(f"{fn}: cos_logits has no classes (shape {tuple(cos_logits.shape)})")
    w = V.check_vector(fn, "weight", weight, c, cos_logits)
    rs = V.check_vector(fn, "feature_norm", feature_norm, n, cos_logits, what="N")
    return torch.ops.lossext.margin_cross_entropy(cos_logits, target, w, rs, scale, m1, m2, m3,
                                                  ops.lambda_arg(lambda_, cos_logits), easy_margin, ls, ii, red)[0]


def cosface_loss(cos_logits, target, scale=64.0, margin=0.35, **kw):
    """CosFace / LMCL (Wang et al., CVPR 2018, Eq. 4): target logit s (cos - margin)."""
    return margin_cross_entropy(cos_logits, target, scale, 1.0, 0.0, margin, **kw)


def arcface_loss(cos_logits, target, scale=64.0, margin=0.5, easy_margin=False, **kw):
    """ArcFace (Deng et al., CVPR 2019, Eq. 3): target logit s cos(theta + margin), with
    insightface's rule past theta + margin > pi (or ``easy_margin``)."""
    return margin_cross_entropy(cos_logits, target, scale, 1.0, margin, 0.0, easy_margin=easy_margin, **kw)


def sphereface_loss(cos_logits, target, margin=4, lambda_=0.0, feature_norm=None, scale=64.0, **kw):
    r"""SphereFace / A-Softmax (Liu et al., CVPR 2017, Eq. 7): target psi(theta) =
    (-1)^k cos(m theta) - 2k, annealed as (lambda cos + psi) / (1 + lambda).
    With ``feature_norm`` [N] (the embeddings' norms) the logits are |x| cos as in the paper;
    without it they are ``scale`` cos (normalized features)."""
    return margin_cross_entropy(cos_logits, target, scale, margin, 0.0, 0.0, lambda_=lambda_,
                                feature_norm=feature_norm, **kw)


def fused_linear_margin_cross_entropy(embeddings, weight, target, scale=64.0, m1=1.0, m2=0.0, m3=0.0,
                                      label_smoothing=0.0, ignore_index=-100, reduction="mean",
                                      chunk_size=None, *, normalize=True, bias=None, easy_margin=False,
                                      lambda_=0.0):
    r"""``margin_cross_entropy(normalize(embeddings) @ normalize(weight).T, target, ...)`` without
    ever storing the [N, C] logits.

    The op walks the classes in chunks of ``chunk_size`` (default: about 16 MiB of logits)
    with an online softmax (running max and sum per row), saves only the per-row log-sum-exp,
    and recomputes each chunk in the backward to form dX and dW. Extra memory:
    O(N * chunk + N * D + C). dW rows are owned by one chunk each; dX accumulates over chunks
    in a fixed order: no atomics, deterministic.

    ``normalize=False`` is a plain linear layer (logits ``scale * (x @ W.T + bias)``); then only
    the additive margin m3 applies.

    Args:
        embeddings: [N, D]. weight: [C, D] (class centres). target: [N] integer labels.
    """
    fn = "fused_linear_margin_cross_entropy"
    V.check_rows(fn, "embeddings", embeddings, cols_name="D")
    V.check_rows(fn, "weight", weight, cols_name="D")
    if weight.dtype != embeddings.dtype:
        raise TypeError(f"{fn}: weight dtype {weight.dtype} does not match embeddings dtype {embeddings.dtype}")
    if weight.device != embeddings.device:
        raise ValueError(f"{fn}: weight is on {weight.device} but embeddings are on {embeddings.device}")
    n, d = embeddings.shape
    c = weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(f"{fn}: weight has D = {weight.shape[1]} but embeddings have D = {d}")
    if c == 0 and n > 0:
        raise ValueError(f"{fn}: weight has no classes (shape {tuple(weight.shape)})")
    target = V.check_labels(fn, target, n, embeddings.device)
    scale, m1, m2, m3, lambda_ = check_margins(fn, scale, m1, m2, m3, lambda_)
    ls, ii, red = _ce_common(fn, label_smoothing, ignore_index, reduction)
    if not normalize and (m1 != 1.0 or m2 != 0.0):
        raise ValueError(f"{fn}: normalize=False takes only the additive margin m3; got m1={m1}, m2={m2}")
    if normalize and bias is not None:
        raise ValueError(f"{fn}: bias needs normalize=False")
    b = V.check_vector(fn, "bias", bias, c, embeddings)
    if chunk_size is None:
        chunk = 0
    else:
        chunk = V.check_int(fn, "chunk_size", chunk_size)
        if chunk <= 0:
            raise ValueError(f"{fn}: chunk_size must be > 0, got {chunk}")
    return torch.ops.lossext.fused_linear_margin_cross_entropy(
        embeddings, weight, target, b, scale, m1, m2, m3, ops.lambda_arg(lambda_, embeddings), bool(easy_margin),
        bool(normalize),
        ls, ii, red, chunk)[0]


def fused_linear_cross_entropy(input, weight, target, bias=None, label_smoothing=0.0, ignore_index=-100,
                               reduction="mean", chunk_size=None):
    """``cross_entropy(input @ weight.T + bias, target, ...)`` without storing the logits: the
    fused linear cross-entropy of LLM-style training. See fused_linear_margin_cross_entropy."""
    return fused_linear_margin_cross_entropy(input, weight, target, 1.0, 1.0, 0.0, 0.0, label_smoothing,
                                             ignore_index, reduction, chunk_size, normalize=False, bias=bias)
