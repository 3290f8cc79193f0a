"""Center loss and Triplet-Center loss (functional). Both take features [N, D], integer labels
[N] and class centers [C, D], and give gradients to the features and the centers. 'mean' divides
by N (the batch size), as the papers' code does.

Each function is scriptable (torch.jit.script); eager calls also accept numpy and other
numbers.Real parameters, follow autocast (a float32 loss) and torch.func transforms."""
import math

import torch
from torch import Tensor

from .._core import validation as V
from .._core.autograd import call as call_op
from . import ops  # noqa: F401  (registers fake kernels and autograd)

__all__ = ["center_loss", "triplet_center_loss"]

DISTANCES = ["squared_euclidean", "euclidean"]
NEGATIVES = ["all", "batch"]


def distance_enum(fn: str, distance: str) -> int:
    if distance == "squared_euclidean":
        return 0
    if distance == "euclidean":
        return 1
    raise ValueError(fn + ": distance must be 'squared_euclidean' or 'euclidean', got '" + distance + "'")


def negatives_enum(fn: str, negatives: str) -> int:
    if negatives == "all":
        return 0
    if negatives == "batch":
        return 1
    raise ValueError(fn + ": negatives must be 'all' or 'batch', got '" + negatives + "'")


def check_margin(fn: str, margin: float) -> float:
    V.check_finite(fn, "margin", margin)
    if margin < 0.0:
        raise ValueError(fn + ": margin must be >= 0, got " + str(margin))
    return margin


def _eager_str(fn, name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{fn}: {name} must be " + " or ".join(repr(a) for a in allowed) + f", got {value!r}")
    return value


def check_inputs(fn: str, features: Tensor, target: Tensor, centers: Tensor) -> Tensor:
    """features [N, D] and centers [C, D] of one dtype and device, C > 0; target [N] integer
    (returned as int64; its range is checked by the kernels: IndexError on the CPU)."""
    V.check_rows(fn, "features", features, "D")
    V.check_rows(fn, "centers", centers, "D", "C")
    if centers.dtype != features.dtype:
        raise TypeError(fn + ": centers dtype " + str(centers.dtype) + " does not match features dtype "
                        + str(features.dtype))
    V.check_device(fn, "centers", centers, "features", features)
    if centers.shape[1] != features.shape[1]:
        raise ValueError(fn + ": centers has D = " + str(centers.shape[1]) + " but features have D = "
                         + str(features.shape[1]))
    if centers.shape[0] == 0:
        raise ValueError(fn + ": centers has no classes (shape " + str(list(centers.shape)) + ")")
    return V.check_labels(fn, target, features.shape[0], features, "features")


def _eager_call(fn, op_name, *args):
    try:
        return call_op(op_name, *args)
    except RuntimeError as e:
        V.raise_from_kernel(fn, e)


def center(fn: str, features: Tensor, target: Tensor, centers: Tensor, reduction: str) -> Tensor:
    """center_loss after the eager conversions (the Module calls it)."""
    if not torch.jit.is_scripting():
        features, centers = V.promote(fn, "fp32", ("features", "centers"), features, centers)
        V.tensor(fn, "target", target)
    target = check_inputs(fn, features, target, centers)
    red = V.reduction_enum(fn, reduction)
    if torch.jit.is_scripting():
        return torch.ops.lossext.center_loss(features, target, centers, red)
    else:
        return _eager_call(fn, "center_loss", features, target, centers, red)


def center_loss(features: Tensor, target: Tensor, centers: Tensor, reduction: str = "mean") -> Tensor:
    r"""Center loss (Wen et al., ECCV 2016, Eq. 2): :math:`L_i = \frac12 \|x_i - c_{y_i}\|_2^2`.

    Fused: no gathered [N, D] copy of the centers. Gradients flow to ``features``
    (:math:`x_i - c_{y_i}`) and ``centers`` (:math:`\sum_{i: y_i = j} (c_j - x_i)`, summed in row
    order: deterministic). ``'mean'`` divides by N, as the authors' caffe layer divides by the batch
    size; ``'sum'`` and ``'none'`` as in torch.nn losses. Labels outside [0, C): IndexError on the
    CPU; on CUDA that row's loss and feature gradient are NaN.

    Args:
        features: [N, D]. target: [N] integer labels. centers: [C, D], C > 0.
    """
    if not torch.jit.is_scripting():
        reduction = V.reduction("center_loss", reduction)
    return center("center_loss", features, target, centers, reduction)


def triplet_center(fn: str, features: Tensor, target: Tensor, centers: Tensor, margin: float, distance: str,
                   negatives: str, reduction: str) -> Tensor:
    """triplet_center_loss after the eager conversions (the Module calls it)."""
    if not torch.jit.is_scripting():
        features, centers = V.promote(fn, "fp32", ("features", "centers"), features, centers)
        V.tensor(fn, "target", target)
    target = check_inputs(fn, features, target, centers)
    check_margin(fn, margin)
    dist = distance_enum(fn, distance)
    neg = negatives_enum(fn, negatives)
    red = V.reduction_enum(fn, reduction)
    if torch.jit.is_scripting():
        return torch.ops.lossext.triplet_center_loss(features, target, centers, margin, dist, neg, red)[0]
    else:
        return _eager_call(fn, "triplet_center_loss", features, target, centers, margin, dist, neg, red)[0]


def triplet_center_loss(features: Tensor, target: Tensor, centers: Tensor, margin: float = 5.0,
                        distance: str = "squared_euclidean", negatives: str = "all",
                        reduction: str = "mean") -> Tensor:
    r"""Triplet-Center loss (He et al., CVPR 2018, Eq. 3):
    :math:`L_i = \max(D(f_i, c_{y_i}) + m - \min_{j \ne y_i} D(f_i, c_j), 0)`.

    - ``distance='squared_euclidean'``: :math:`D = \frac12\|f - c\|^2` (the paper's);
      ``'euclidean'``: :math:`D = \sqrt{\max(\|f - c\|^2, 10^{-12})}` (the authors' released code).
    - ``negatives='all'``: the min over every other center; ``'batch'``: only over the centers of
      the classes present in ``target`` (the authors' second variant).
    - No negative (C = 1, or ``'batch'`` with one class present): the row's loss is 0 and no
      gradient flows from it. Ties in the min: the lowest class index wins.
    - Gradients to ``features`` and ``centers`` (the positive center and the hardest negative of each
      row with a positive hinge, summed per center in row order: deterministic). The distances to
      all centers are computed in tiles; only each row's target distance and running min are kept
      (no [N, C] tensor). ``'mean'`` divides by N (the authors' MarginRankingLoss).
    - Labels outside [0, C): IndexError on the CPU; on CUDA that row's loss and gradient are NaN.

    Args:
        features: [N, D]. target: [N] integer labels. centers: [C, D], C > 0.
        margin: m >= 0.
    """
    if not torch.jit.is_scripting():
        margin = V.number("triplet_center_loss", "margin", margin)
        distance = _eager_str("triplet_center_loss", "distance", distance, DISTANCES)
        negatives = _eager_str("triplet_center_loss", "negatives", negatives, NEGATIVES)
        reduction = V.reduction("triplet_center_loss", reduction)
    return triplet_center("triplet_center_loss", features, target, centers, margin, distance, negatives, reduction)
