"""Margin-softmax losses (functional): SphereFace, CosFace, ArcFace, the combined margin, and the
fused normalized-linear version that never stores the [N, C] logits. They follow
torch.nn.functional.cross_entropy: 'mean' divides by the summed class weights of the rows not
ignored.

Each function is scriptable (torch.jit.script); eager calls also accept numpy and other
numbers.Real/Integral parameters, follow autocast (a float32 loss; the fused ops run their
matmuls in the autocast dtype) and torch.func transforms. The wrappers (cosface_loss, ...)
name their own parameters in errors (``margin``, not ``m3``)."""
import math
from typing import List, Optional

import torch
from torch import Tensor

from .._core import amp
from .._core import validation as V
from .._core.autograd import call as call_op
from . import ops  # noqa: F401  (registers fake kernels and autograd)
from .ops import fused_rows, use_one_pass

__all__ = ["margin_cross_entropy", "cosface_loss", "arcface_loss", "sphereface_loss",
           "fused_linear_margin_cross_entropy", "fused_linear_cross_entropy"]

# The user's names of m1, m2, m3 (a wrapper fixes two and names the third `margin`); the
# functions spell them as literals (TorchScript reads no global lists).
COMBINED = ["m1", "m2", "m3"]
ARCFACE = ["m1 (fixed)", "margin", "m3 (fixed)"]
COSFACE = ["m1 (fixed)", "m2 (fixed)", "margin"]
SPHEREFACE = ["margin", "m2 (fixed)", "m3 (fixed)"]


def check_margins(fn: str, names: List[str], scale: float, m1: float, m2: float, m3: float, lambda_: float):
    V.check_positive(fn, "scale", scale)
    V.check_positive(fn, names[0], m1)
    V.check_range(fn, names[1], m2, 0.0, math.pi, True)
    V.check_finite(fn, names[2], m3)
    V.check_range(fn, "lambda_", lambda_, 0.0, math.inf, True)


def check_common(fn: str, label_smoothing: float, reduction: str) -> int:
    V.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0, False)
    return V.reduction_enum(fn, reduction)


def _eager_numbers(fn, names, scale, m1, m2, m3, label_smoothing, ignore_index, lambda_):
    """The eager-only conversions of the shared parameters (Python/numpy numbers)."""
    return (V.number(fn, "scale", scale), V.number(fn, names[0], m1), V.number(fn, names[1], m2),
            V.number(fn, names[2], m3), V.number(fn, "label_smoothing", label_smoothing),
            V.integer(fn, "ignore_index", ignore_index), V.number(fn, "lambda_", lambda_))


def lambda_tensor(lambda_: float, like: Tensor) -> Optional[Tensor]:
    """The ops take SphereFace's lambda as an optional 0-dim float64 tensor (a changing
    schedule is then not a compile-time constant): None for 0."""
    if lambda_ == 0.0:
        return None
    # like: the logits or embeddings, called before their checks, which refuse a non-Tensor
    # naming it (an AttributeError here instead was a bug)
    device = like.device if isinstance(like, torch.Tensor) else torch.device("cpu")
    return torch.full((), lambda_, dtype=torch.float64, device=device)


def _eager_call(fn, names, op_name, *args):
    """The op's loss; its kernel's errors re-raised as fn's (eager only: TorchScript has no try)."""
    try:
        return call_op(op_name, *args)[0]
    except RuntimeError as e:
        V.raise_from_kernel(fn, e, names)


_CE_NAMES = {"row_scale": "feature_norm"}
_FUSED_NAMES = {"input": "embeddings"}


def margin_ce(fn: str, names: List[str], cos_logits: Tensor, target: Tensor, scale: float, m1: float, m2: float,
              m3: float, label_smoothing: float, weight: Optional[Tensor], ignore_index: int, reduction: str,
              easy_margin: bool, lam: Optional[Tensor], feature_norm: Optional[Tensor]) -> Tensor:
    """margin_cross_entropy after the eager conversions of numbers (the Modules call it);
    lam: None or a 0-dim tensor >= 0."""
    if not torch.jit.is_scripting():
        # the class weight and feature_norm follow cos_logits' dtype (check_vector)
        (cos_logits,) = V.promote(fn, "fp32", ("cos_logits",), cos_logits)
        V.tensor(fn, "target", target)
        V.tensor(fn, "weight", weight, True)
        V.tensor(fn, "feature_norm", feature_norm, True)
    V.check_rows(fn, "cos_logits", cos_logits, "C")
    n, c = cos_logits.shape[0], cos_logits.shape[1]
    target = V.check_labels(fn, target, n, cos_logits, "cos_logits")
    red = check_common(fn, label_smoothing, reduction)
    if c == 0 and n > 0:
        raise ValueError(fn + ": cos_logits has no classes (shape " + str(list(cos_logits.shape)) + ")")
    w = V.check_vector(fn, "weight", weight, c, cos_logits, "C")
    rs = V.check_vector(fn, "feature_norm", feature_norm, n, cos_logits, "N")
    one_pass = use_one_pass(cos_logits, red)  # issue #15: the forward also writes the gradient
    if torch.jit.is_scripting():
        if one_pass:
            return torch.ops.lossext.margin_cross_entropy_with_grad(cos_logits, target, w, rs, scale, m1, m2, m3,
                                                                    lam, easy_margin, label_smoothing,
                                                                    ignore_index, red)[0]
        return torch.ops.lossext.margin_cross_entropy(cos_logits, target, w, rs, scale, m1, m2, m3, lam,
                                                      easy_margin, label_smoothing, ignore_index, red)[0]
    else:
        return _eager_call(fn, _CE_NAMES, "margin_cross_entropy_with_grad" if one_pass else "margin_cross_entropy",
                           cos_logits, target, w, rs, scale, m1, m2, m3, lam, easy_margin, label_smoothing,
                           ignore_index, red)


def _margin_entry(fn: str, names: List[str], cos_logits: Tensor, target: Tensor, scale: float, m1: float, m2: float,
                  m3: float, label_smoothing: float, weight: Optional[Tensor], ignore_index: int, reduction: str,
                  easy_margin: bool, lambda_: float, feature_norm: Optional[Tensor]) -> Tensor:
    if not torch.jit.is_scripting():
        scale, m1, m2, m3, label_smoothing, ignore_index, lambda_ = _eager_numbers(
            fn, names, scale, m1, m2, m3, label_smoothing, ignore_index, lambda_)
        reduction = V.reduction(fn, reduction)
        easy_margin = V.flag(fn, "easy_margin", easy_margin)
    check_margins(fn, names, scale, m1, m2, m3, lambda_)
    return margin_ce(fn, names, cos_logits, target, scale, m1, m2, m3, label_smoothing, weight, ignore_index,
                     reduction, easy_margin, lambda_tensor(lambda_, cos_logits), feature_norm)


def margin_cross_entropy(cos_logits: Tensor, target: Tensor, scale: float = 64.0, m1: float = 1.0, m2: float = 0.0,
                         m3: float = 0.0, label_smoothing: float = 0.0, weight: Optional[Tensor] = None,
                         ignore_index: int = -100, reduction: str = "mean", easy_margin: bool = False,
                         lambda_: float = 0.0, feature_norm: Optional[Tensor] = None) -> Tensor:
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
    - Labels outside [0, C) that are not ``ignore_index``: IndexError on CPU (as F.cross_entropy).
      On CUDA they are never used as an index; that row's loss, and so a reduced loss, is NaN, and
      its gradient is NaN (the class weight's too).

    Args:
        cos_logits: [N, C] cosines. target: [N] integer labels.
    """
    return _margin_entry("margin_cross_entropy", ["m1", "m2", "m3"], cos_logits, target, scale, m1, m2, m3, label_smoothing,
                         weight, ignore_index, reduction, easy_margin, lambda_, feature_norm)


def cosface_loss(cos_logits: Tensor, target: Tensor, scale: float = 64.0, margin: float = 0.35,
                 label_smoothing: float = 0.0, weight: Optional[Tensor] = None, ignore_index: int = -100,
                 reduction: str = "mean") -> Tensor:
    """CosFace / LMCL (Wang et al., CVPR 2018, Eq. 4): target logit s (cos - margin).
    The other arguments are margin_cross_entropy's."""
    return _margin_entry("cosface_loss", ["m1 (fixed)", "m2 (fixed)", "margin"], cos_logits, target, scale, 1.0, 0.0, margin, label_smoothing,
                         weight, ignore_index, reduction, False, 0.0, None)


def arcface_loss(cos_logits: Tensor, target: Tensor, scale: float = 64.0, margin: float = 0.5,
                 easy_margin: bool = False, label_smoothing: float = 0.0, weight: Optional[Tensor] = None,
                 ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """ArcFace (Deng et al., CVPR 2019, Eq. 3): target logit s cos(theta + margin), with
    insightface's rule past theta + margin > pi (or ``easy_margin``).
    The other arguments are margin_cross_entropy's."""
    return _margin_entry("arcface_loss", ["m1 (fixed)", "margin", "m3 (fixed)"], cos_logits, target, scale, 1.0, margin, 0.0, label_smoothing,
                         weight, ignore_index, reduction, easy_margin, 0.0, None)


def sphereface_loss(cos_logits: Tensor, target: Tensor, margin: float = 4.0, lambda_: float = 0.0,
                    feature_norm: Optional[Tensor] = None, scale: float = 64.0, label_smoothing: float = 0.0,
                    weight: Optional[Tensor] = None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""SphereFace / A-Softmax (Liu et al., CVPR 2017, Eq. 7): target psi(theta) =
    (-1)^k cos(m theta) - 2k, annealed as (lambda cos + psi) / (1 + lambda).
    With ``feature_norm`` [N] (the embeddings' norms) the logits are |x| cos as in the paper;
    without it they are ``scale`` cos (normalized features).
    The other arguments are margin_cross_entropy's."""
    return _margin_entry("sphereface_loss", ["margin", "m2 (fixed)", "m3 (fixed)"], cos_logits, target, scale, margin, 0.0, 0.0,
                         label_smoothing, weight, ignore_index, reduction, False, lambda_, feature_norm)


def check_chunk_size(fn: str, chunk_size: Optional[int]) -> int:
    if chunk_size is None:
        return 0
    if chunk_size <= 0:
        raise ValueError(fn + ": chunk_size must be > 0, got " + str(chunk_size))
    return chunk_size


def fused_margin(fn: str, names: List[str], embeddings: Tensor, weight: Tensor, target: Tensor, scale: float,
                 m1: float, m2: float, m3: float, label_smoothing: float, ignore_index: int, reduction: str,
                 chunk_size: Optional[int], normalize: bool, bias: Optional[Tensor], easy_margin: bool,
                 lam: Optional[Tensor]) -> Tensor:
    """fused_linear_margin_cross_entropy after the eager conversions of numbers (the Modules
    call it); lam: None or a 0-dim tensor >= 0."""
    if not torch.jit.is_scripting():
        embeddings, weight = V.promote(fn, "matmul", ("embeddings", "weight"), embeddings, weight)
        V.tensor(fn, "target", target)
        V.tensor(fn, "bias", bias, True)  # follows the embeddings' dtype (check_vector)
    V.check_rows(fn, "embeddings", embeddings, "D")
    V.check_rows(fn, "weight", weight, "D", "C")
    if weight.dtype != embeddings.dtype:
        raise TypeError(fn + ": weight dtype " + str(weight.dtype) + " does not match embeddings dtype "
                        + str(embeddings.dtype))
    V.check_device(fn, "weight", weight, "embeddings", embeddings)
    n, d = embeddings.shape[0], embeddings.shape[1]
    c = weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(fn + ": weight has D = " + str(weight.shape[1]) + " but embeddings have D = " + str(d))
    if c == 0 and n > 0:
        raise ValueError(fn + ": weight has no classes (shape " + str(list(weight.shape)) + ")")
    target = V.check_labels(fn, target, n, embeddings, "embeddings")
    red = check_common(fn, label_smoothing, reduction)
    if not normalize and (m1 != 1.0 or m2 != 0.0):
        raise ValueError(fn + ": normalize=False takes only the additive margin m3; got m1=" + str(m1) + ", m2="
                         + str(m2))
    if normalize and bias is not None:
        raise ValueError(fn + ": bias needs normalize=False")
    b = V.check_vector(fn, "bias", bias, c, embeddings, "C")
    chunk = check_chunk_size(fn, chunk_size)
    # The op's loss is float32 for float16/bfloat16 embeddings (never rounded to the half dtype).
    # Under autocast it stays float32 (as F.cross_entropy's); otherwise it is returned in the
    # embeddings' dtype, as every loss returns its input's. TorchScript always converts back
    # (autocast state is not queried there: torch.is_autocast_cpu_enabled crashes in a script).
    rows = fused_rows(embeddings, weight, red, chunk)  # issue #15: row blocks, the gradients in the forward
    if torch.jit.is_scripting():
        if rows > 0:
            loss = torch.ops.lossext.fused_linear_margin_cross_entropy_with_grad(
                embeddings, weight, target, b, scale, m1, m2, m3, lam, easy_margin, normalize,
                label_smoothing, ignore_index, red, chunk, rows)[0]
        else:
            loss = torch.ops.lossext.fused_linear_margin_cross_entropy(
                embeddings, weight, target, b, scale, m1, m2, m3, lam, easy_margin, normalize,
                label_smoothing, ignore_index, red, chunk)[0]
        return loss.to(embeddings.dtype)
    else:
        loss = _eager_call(fn, _FUSED_NAMES, "fused_linear_margin_cross_entropy" + ("_with_grad" if rows > 0 else ""),
                           embeddings, weight, target, b, scale, m1, m2, m3, lam, easy_margin, normalize,
                           label_smoothing, ignore_index, red, chunk, *((rows,) if rows > 0 else ()))
        if loss.dtype != embeddings.dtype and not amp.enabled(embeddings.device.type):
            loss = loss.to(embeddings.dtype)
        return loss


def fused_linear_margin_cross_entropy(embeddings: Tensor, weight: Tensor, target: Tensor, scale: float = 64.0,
                                      m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
                                      label_smoothing: float = 0.0, ignore_index: int = -100,
                                      reduction: str = "mean", chunk_size: Optional[int] = None,
                                      normalize: bool = True, bias: Optional[Tensor] = None,
                                      easy_margin: bool = False, lambda_: float = 0.0) -> Tensor:
    r"""``margin_cross_entropy(normalize(embeddings) @ normalize(weight).T, target, ...)`` without
    ever storing the [N, C] logits.

    The op walks the classes in chunks of ``chunk_size`` (default: about 16 MiB of logits on the CPU, 256 MiB on CUDA)
    with an online softmax (running max and sum per row), saves only the per-row log-sum-exp,
    and recomputes each chunk in the backward to form dX and dW. Extra memory:
    O(N * chunk + N * D + C). dW rows are owned by one chunk each; dX accumulates over chunks
    in a fixed order: no atomics, deterministic.

    Training on the CPU (float32/float64, reduction 'mean' or 'sum', ``chunk_size=None``): where
    a block of at least 128 rows (or the whole batch) keeps its logits for every class within
    16M elements (64 MiB of float32), the op takes the rows in such blocks and forms the
    gradients in the forward (``fused_linear_margin_cross_entropy_with_grad``): three matrix
    products instead of four, since no logit is recomputed; the backward is then a multiply (none
    for grad_output = 1). Extra memory: those 16M logits, O(N * D + C) and the weight's
    gradient from the forward on. A ``chunk_size`` given keeps the class-chunked op and its bound.

    ``normalize=False`` is a plain linear layer (logits ``scale * (x @ W.T + bias)``); then only
    the additive margin m3 applies.

    Args:
        embeddings: [N, D]. weight: [C, D] (class centres). target: [N] integer labels.
    """
    return _fused_entry("fused_linear_margin_cross_entropy", embeddings, weight, target, scale, m1, m2, m3,
                        label_smoothing, ignore_index, reduction, chunk_size, normalize, bias, easy_margin, lambda_)


def _fused_entry(fn: str, embeddings: Tensor, weight: Tensor, target: Tensor, scale: float, m1: float, m2: float,
                 m3: float, label_smoothing: float, ignore_index: int, reduction: str, chunk_size: Optional[int],
                 normalize: bool, bias: Optional[Tensor], easy_margin: bool, lambda_: float) -> Tensor:
    if not torch.jit.is_scripting():
        scale, m1, m2, m3, label_smoothing, ignore_index, lambda_ = _eager_numbers(
            fn, ["m1", "m2", "m3"], scale, m1, m2, m3, label_smoothing, ignore_index, lambda_)
        reduction = V.reduction(fn, reduction)
        chunk_size = None if chunk_size is None else V.integer(fn, "chunk_size", chunk_size)
        normalize, easy_margin = V.flag(fn, "normalize", normalize), V.flag(fn, "easy_margin", easy_margin)
    check_margins(fn, ["m1", "m2", "m3"], scale, m1, m2, m3, lambda_)
    return fused_margin(fn, ["m1", "m2", "m3"], embeddings, weight, target, scale, m1, m2, m3, label_smoothing, ignore_index,
                        reduction, chunk_size, normalize, bias, easy_margin, lambda_tensor(lambda_, embeddings))


def fused_linear_cross_entropy(input: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor] = None,
                               label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "mean",
                               chunk_size: Optional[int] = None) -> Tensor:
    """``cross_entropy(input @ weight.T + bias, target, ...)`` without storing the logits: the
    fused linear cross-entropy of LLM-style training. See fused_linear_margin_cross_entropy
    (its errors call ``input`` embeddings)."""
    return _fused_entry("fused_linear_cross_entropy", input, weight, target, 1.0, 1.0, 0.0, 0.0, label_smoothing,
                        ignore_index, reduction, chunk_size, False, bias, False, 0.0)
