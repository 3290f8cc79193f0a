"""Age estimation losses (functional): the Mean-Variance loss (Pan et al., CVPR 2018) and the
age estimate of a softmax over age bins.

Each function is scriptable (torch.jit.script; ``return_components=True`` is eager-only);
eager calls also accept numpy numbers, follow autocast (float32, as F.cross_entropy) and
torch.func transforms (reverse mode)."""
import math
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from .._core import validation as V
from .._core.autograd import call as call_op
from . import ops  # registers fake kernels and autograd

__all__ = ["mean_variance_loss", "age_from_logits", "MeanVarianceComponents"]

# phrases of the kernels' target check that are a ValueError (csrc/age/age_cpu.cpp)
_VALUE_ERRORS = ("outside the bins",)


class MeanVarianceComponents(NamedTuple):
    """``mean_variance_loss(..., return_components=True)``: the total and its three terms, each
    reduced as the loss (the terms unweighted: total = softmax + lambda_mean mean + lambda_var
    variance)."""
    total: Tensor
    softmax: Tensor
    mean: Tensor
    variance: Tensor


def _check_logits(fn: str, logits: Tensor) -> Tensor:
    if not torch.jit.is_scripting():
        (logits,) = V.promote(fn, "fp32", ("logits",), logits)
    V.check_rows(fn, "logits", logits, "K")
    if logits.shape[1] == 0:
        raise ValueError(fn + ": logits has no age bins (shape " + str(list(logits.shape)) + ")")
    return logits


def _check_start(fn: str, start_age: int) -> int:
    if start_age < -9007199254740992 or start_age > 9007199254740992:  # 2^53 (TorchScript reads no globals)
        raise ValueError(fn + ": start_age must be in [-2^53, 2^53], got " + str(start_age))
    return start_age


def check_settings(fn: str, lambda_mean: float, lambda_var: float, start_age: int):
    V.check_range(fn, "lambda_mean", lambda_mean, 0.0, math.inf, True)
    V.check_range(fn, "lambda_var", lambda_var, 0.0, math.inf, True)
    _check_start(fn, start_age)


def _ages(fn: str, target: Tensor, n: int, logits: Tensor) -> Tensor:
    """Ages [n], integer or floating, as the op takes them: int64 or float64."""
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(fn + ": target must be integer or floating ages, got " + str(target.dtype))
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(fn + ": target must have shape [" + str(n) + "], got " + str(list(target.shape)))
    V.check_device(fn, "target", target, "logits", logits)
    return target.to(torch.float64) if target.is_floating_point() else target.to(torch.int64)


def mean_variance_outputs(fn: str, logits: Tensor, target: Tensor, lambda_mean: float, lambda_var: float,
                          start_age: int, include_softmax: bool, reduction: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(total, softmax, mean, variance) after the eager conversions of numbers (the Module calls it)."""
    if not torch.jit.is_scripting():
        V.tensor(fn, "target", target)
    logits = _check_logits(fn, logits)
    target = _ages(fn, target, logits.shape[0], logits)
    check_settings(fn, lambda_mean, lambda_var, start_age)
    red = V.reduction_enum(fn, reduction)
    one_pass = ops.one_pass_applies(logits, target)  # the forward writes the total's gradient too
    if torch.jit.is_scripting():
        if one_pass:
            o = torch.ops.lossext.mean_variance_loss_with_grad(logits, target, lambda_mean, lambda_var, start_age,
                                                               include_softmax, red)
            return o[0], o[1], o[2], o[3]
        out = torch.ops.lossext.mean_variance_loss(logits, target, lambda_mean, lambda_var, start_age,
                                                   include_softmax, red)
    else:
        out = _eager_call(fn, "mean_variance_loss_with_grad" if one_pass else "mean_variance_loss", logits, target,
                          lambda_mean, lambda_var, start_age, include_softmax, red)
    return out[0], out[1], out[2], out[3]


def _eager_call(fn, op_name, *args):
    """The op's outputs; its kernel's errors re-raised as fn's (eager only: TorchScript has no try)."""
    try:
        return call_op(op_name, *args)
    except RuntimeError as e:
        V.raise_from_kernel(fn, e, None, _VALUE_ERRORS)


def eager_numbers(fn, lambda_mean, lambda_var, start_age, include_softmax, reduction, return_components):
    """The eager-only conversions of the parameters (Python/numpy numbers and bools)."""
    return (V.number(fn, "lambda_mean", lambda_mean), V.number(fn, "lambda_var", lambda_var),
            V.integer(fn, "start_age", start_age), V.flag(fn, "include_softmax", include_softmax),
            V.reduction(fn, reduction), V.flag(fn, "return_components", return_components))


def mean_variance_loss(logits: Tensor, target: Tensor, lambda_mean: float = 0.2, lambda_var: float = 0.05,
                       start_age: int = 0, include_softmax: bool = True, reduction: str = "mean",
                       return_components: bool = False) -> Tensor:
    r"""The Mean-Variance loss for age estimation (Pan, Han, Shan, Chen, CVPR 2018, Eq. 2-5).

    ``logits`` [N, K] over the age bins; bin j stands for the age :math:`a_j` = start_age + j.
    With :math:`p = \mathrm{softmax}(z)`, :math:`m = \sum_j a_j p_j` and
    :math:`v = \sum_j p_j (a_j - m)^2`:

    .. math:: L = L_s + \lambda_1 \tfrac12 (m - y)^2 + \lambda_2 v,

    :math:`L_s` the cross-entropy to the bin round(y) - start_age (dropped with
    ``include_softmax=False``). Each term is averaged over the N rows ('mean'), summed ('sum')
    or kept per row ('none').

    - ``target`` [N]: integer or floating ages. round is half to even (torch.round). A
      floating target gets the gradient :math:`-\lambda_1 (m - y)` when it requires grad.
    - Only the softmax term needs a bin in [0, K): with ``include_softmax=False`` any age is
      legal (the mean term is then a plain regression of m). With it, an age outside the bins
      raises a ValueError naming ``target`` and its value (CPU); on CUDA it is never used as an
      index: that row's softmax term is NaN (so is a reduced loss) and its gradient is NaN.
    - Defaults :math:`\lambda_1 = 0.2`, :math:`\lambda_2 = 0.05`: those of the widely used
      reimplementation (Herosan163/AgeEstimation, ``LAMBDA_1``, ``LAMBDA_2``), whose
      'mean' also averages each term over the batch (docs/age.md).
    - ``return_components=True`` (eager only) returns :class:`MeanVarianceComponents`
      (total, softmax, mean, variance), each differentiable.
    - One pass per row in each direction; the row's statistics are float64, half inputs
      compute in float32; no ignore_index (ages have no class to ignore: mask the rows).

    Example::

        >>> import torch, lossext.functional as LF
        >>> logits = torch.zeros(2, 5)                      # uniform over ages 20..24
        >>> LF.mean_variance_loss(logits, torch.tensor([22, 22]), start_age=20)
        tensor(1.7094)
        >>> m, v = LF.age_from_logits(logits, start_age=20)
        >>> m, v
        (tensor([22., 22.]), tensor([2., 2.]))
    """
    fn = "mean_variance_loss"
    if not torch.jit.is_scripting():
        lambda_mean, lambda_var, start_age, include_softmax, reduction, return_components = eager_numbers(
            fn, lambda_mean, lambda_var, start_age, include_softmax, reduction, return_components)
    total, soft, mean, var = mean_variance_outputs(fn, logits, target, lambda_mean, lambda_var, start_age,
                                                   include_softmax, reduction)
    if not torch.jit.is_scripting():
        if return_components:
            return MeanVarianceComponents(total, soft, mean, var)
    elif return_components:
        raise ValueError(fn + ": return_components=True is not supported in TorchScript (it changes the return "
                         "type); call it eagerly")
    return total


def age_from_logits(logits: Tensor, start_age: int = 0) -> Tuple[Tensor, Tensor]:
    r"""The age estimate of a softmax over age bins, as the Mean-Variance paper uses it at test
    time (Pan et al., CVPR 2018, Eq. 2 and 4): (m, v), :math:`m = \sum_j a_j p_j`,
    :math:`v = \sum_j p_j (a_j - m)^2` per row, [N] each in the logits' dtype, from the same
    kernel as the loss. Differentiable (dm/dz_j = p_j (a_j - m), dv/dz_j = p_j ((a_j - m)^2 - v))."""
    fn = "age_from_logits"
    if not torch.jit.is_scripting():
        start_age = V.integer(fn, "start_age", start_age)
    logits = _check_logits(fn, logits)
    start_age = _check_start(fn, start_age)
    if torch.jit.is_scripting():
        out = torch.ops.lossext.age_from_logits(logits, start_age)
    else:
        out = call_op("age_from_logits", logits, start_age)
    return out[0], out[1]
