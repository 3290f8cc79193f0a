"""Center loss and Triplet-Center loss (functional). Both take features [N, D], integer labels
[N] and class centers [C, D], and give gradients to the features and the centers. 'mean' divides
by N (the batch size), as the papers' code does.

Each function is scriptable (torch.jit.script); eager calls also accept numpy and other
numbers.Real parameters, follow autocast (a float32 loss) and torch.func transforms."""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._core import validation as V
from .._core.autograd import call as call_op
from . import ops  # noqa: F401  (registers fake kernels and autograd)

__all__ = ["center_loss", "triplet_center_loss", "triplet_margin_loss", "contrastive_loss"]

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



# ---- pair-based losses -----------------------------------------------------------------------------

MININGS = ["batch_hard", "batch_all", "semi_hard"]
TRIPLET_DISTANCES = ["euclidean", "cosine"]
CONTRASTIVE_DISTANCES = ["euclidean", "squared_euclidean", "cosine"]
PAIR_REDUCTIONS = ["none", "mean", "sum", "mean_all", "mean_nonzero"]


def _one_of(fn: str, name: str, value: str, allowed: List[str]) -> str:
    if value not in allowed:
        raise ValueError(fn + ": " + name + " must be " + ", ".join(["'" + a + "'" for a in allowed[:-1]]) + " or '"
                         + allowed[-1] + "', got '" + value + "'")
    return value


def _choice_index(fn: str, name: str, value: str, allowed: List[str]) -> int:
    _one_of(fn, name, value, allowed)
    for i in range(len(allowed)):
        if allowed[i] == value:
            return i
    return -1


def pair_reduction_enum(fn: str, reduction: str, default: int) -> int:
    """'mean' is `default` (1: over all valid terms, 3: over those with a positive loss)."""
    _one_of(fn, "reduction", reduction, ["none", "mean", "sum", "mean_all", "mean_nonzero"])
    if reduction == "none":
        return 0
    if reduction == "sum":
        return 2
    if reduction == "mean_all":
        return 1
    if reduction == "mean_nonzero":
        return 3
    return default


def _eager_choice(fn, name, value, allowed):
    if not isinstance(value, str):
        raise TypeError(f"{fn}: {name} must be a str, got {type(value).__name__} ({value!r})")
    return _one_of(fn, name, value, allowed)


def check_nonnegative(fn: str, name: str, value: float) -> float:
    V.check_finite(fn, name, value)
    if value < 0.0:
        raise ValueError(fn + ": " + name + " must be >= 0, got " + str(value))
    return value


def _pair_labels(fn: str, name: str, labels: Tensor, n: int, like: Tensor, like_name: str) -> Tensor:
    if labels.dtype not in [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]:
        raise TypeError(fn + ": " + name + " must be integer class labels, got " + str(labels.dtype))
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(fn + ": " + name + " must have shape [" + str(n) + "], got " + str(list(labels.shape)))
    V.check_device(fn, name, labels, like_name, like)
    return labels.long()


def pair_inputs(fn: str, embeddings: Tensor, labels: Tensor, ref_embeddings: Optional[Tensor],
                ref_labels: Optional[Tensor], normalize: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, bool]:
    """(x, y, r, ry, exclude_self): the checked inputs, L2-normalized if `normalize`; without a
    reference set the batch is its own (the same tensors, exclude_self True)."""
    V.check_rows(fn, "embeddings", embeddings, "D")
    y = _pair_labels(fn, "labels", labels, embeddings.shape[0], embeddings, "embeddings")
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError(fn + ": ref_embeddings and ref_labels must be given together")
    x = embeddings
    if normalize:
        x = torch.nn.functional.normalize(x, 2.0, 1, 1e-12)
    if ref_embeddings is None or ref_labels is None:
        return x, y, x, y, True
    V.check_rows(fn, "ref_embeddings", ref_embeddings, "D", "M")
    if ref_embeddings.dtype != embeddings.dtype:
        raise TypeError(fn + ": ref_embeddings dtype " + str(ref_embeddings.dtype) + " does not match embeddings dtype "
                        + str(embeddings.dtype))
    V.check_device(fn, "ref_embeddings", ref_embeddings, "embeddings", embeddings)
    if ref_embeddings.shape[1] != embeddings.shape[1]:
        raise ValueError(fn + ": ref_embeddings has D = " + str(ref_embeddings.shape[1]) + " but embeddings have D = "
                         + str(embeddings.shape[1]))
    ry = _pair_labels(fn, "ref_labels", ref_labels, ref_embeddings.shape[0], embeddings, "embeddings")
    r = ref_embeddings
    if normalize:
        r = torch.nn.functional.normalize(r, 2.0, 1, 1e-12)
    return x, y, r, ry, False


def _eager_pair(fn, embeddings, ref_embeddings):
    if ref_embeddings is None:
        (embeddings,) = V.promote(fn, "fp32", ("embeddings",), embeddings)
    else:
        embeddings, ref_embeddings = V.promote(fn, "fp32", ("embeddings", "ref_embeddings"), embeddings,
                                               ref_embeddings)
    return embeddings, ref_embeddings


def triplet_margin(fn: str, embeddings: Tensor, labels: Tensor, margin: float, mining: str, distance: str,
                   squared: bool, normalize: bool, soft_margin: bool, reduction: str,
                   ref_embeddings: Optional[Tensor], ref_labels: Optional[Tensor]) -> Tensor:
    """triplet_margin_loss after the eager conversions (the Module calls it)."""
    if not torch.jit.is_scripting():
        V.tensor(fn, "labels", labels)
        V.tensor(fn, "ref_labels", ref_labels, optional=True)
        embeddings, ref_embeddings = _eager_pair(fn, embeddings, ref_embeddings)
    check_nonnegative(fn, "margin", margin)
    mine = _choice_index(fn, "mining", mining, ["batch_hard", "batch_all", "semi_hard"])
    _one_of(fn, "distance", distance, ["euclidean", "cosine"])
    if squared and distance == "cosine":
        raise ValueError(fn + ": squared=True applies to distance='euclidean', got distance='cosine'")
    red = pair_reduction_enum(fn, reduction, 3 if mining == "batch_all" else 1)
    dist = 2 if distance == "cosine" else (0 if squared else 1)
    x, y, r, ry, self_ref = pair_inputs(fn, embeddings, labels, ref_embeddings, ref_labels,
                                        normalize or distance == "cosine")
    if torch.jit.is_scripting():
        return torch.ops.lossext.triplet_margin_loss(x, y, r, ry, self_ref, margin, mine, dist, soft_margin, red)[0]
    else:
        return _eager_call(fn, "triplet_margin_loss", x, y, r, ry, self_ref, margin, mine, dist, soft_margin, red)[0]


def triplet_margin_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.2, mining: str = "batch_hard",
                        distance: str = "euclidean", squared: bool = False, normalize: bool = False,
                        soft_margin: bool = False, reduction: str = "mean", ref_embeddings: Optional[Tensor] = None,
                        ref_labels: Optional[Tensor] = None) -> Tensor:
    r"""Triplet loss with online mining (FaceNet, Schroff et al., CVPR 2015; Hermans et al., "In Defense
    of the Triplet Loss for Person Re-Identification", 2017), fused and tiled: no [N, M] distance
    matrix, mask or triplet list is ever stored.

    A triplet (anchor a, positive p, negative n) costs :math:`\max(d_{ap} - d_{an} + m, 0)`, or with
    ``soft_margin=True`` :math:`\log(1 + e^{d_{ap} - d_{an}})` (Hermans et al.'s soft margin; the
    margin is not used then).

    - ``mining='batch_hard'``: per anchor, the farthest positive and the nearest negative
      (Hermans et al.); ``'batch_all'``: every valid (a, p, n); ``'semi_hard'``: per (a, p), the
      nearest negative farther than p (FaceNet), or the farthest negative where none is (as
      TensorFlow Addons' ``triplet_semihard_loss``). Ties: the lowest reference index.
    - ``distance='euclidean'``: :math:`\sqrt{\max(\|a - r\|^2, 10^{-12})}` (a zero distance has a
      finite gradient), the squared distance with ``squared=True``; ``'cosine'``: :math:`1 - \cos`.
      ``normalize=True`` (and ``'cosine'``) L2-normalizes the embeddings first (F.normalize).
    - ``reduction``: ``'mean'`` is Hermans et al.'s: for ``'batch_all'`` the mean over the triplets
      with a positive loss, for the others the mean over all mined triplets (one per anchor for
      ``'batch_hard'``, one per (a, p) for ``'semi_hard'``, TensorFlow Addons' divisor);
      ``'mean_all'`` and ``'mean_nonzero'`` choose either divisor explicitly
      (pytorch-metric-learning's MeanReducer and AvgNonZeroReducer, the latter its default); a mean
      over no triplet is 0; ``'sum'``; ``'none'``: [N], each anchor's sum over its triplets.
    - An anchor with no positive or no negative has no triplet: it contributes nothing and counts
      in no divisor.
    - ``ref_embeddings`` [M, D] and ``ref_labels`` [M]: the reference set (a cross-batch memory, a
      gallery) from which positives and negatives are drawn; every (a, j) pair counts (the batch
      need not be in it). No gradient flows to it unless it requires grad. Without it the batch is
      its own reference and an anchor is never its own positive.

    Args:
        embeddings: [N, D]. labels: [N] integer labels (any values: only equality matters).
        margin: >= 0.
    """
    if not torch.jit.is_scripting():
        fn = "triplet_margin_loss"
        margin = V.number(fn, "margin", margin)
        mining = _eager_choice(fn, "mining", mining, MININGS)
        distance = _eager_choice(fn, "distance", distance, TRIPLET_DISTANCES)
        squared = V.flag(fn, "squared", squared)
        normalize = V.flag(fn, "normalize", normalize)
        soft_margin = V.flag(fn, "soft_margin", soft_margin)
        reduction = _eager_choice(fn, "reduction", reduction, PAIR_REDUCTIONS)
    return triplet_margin("triplet_margin_loss", embeddings, labels, margin, mining, distance, squared, normalize,
                          soft_margin, reduction, ref_embeddings, ref_labels)


def contrastive(fn: str, embeddings: Tensor, labels: Tensor, pos_margin: float, neg_margin: float, distance: str,
                reduction: str, ref_embeddings: Optional[Tensor], ref_labels: Optional[Tensor]) -> Tensor:
    """contrastive_loss after the eager conversions (the Module calls it)."""
    if not torch.jit.is_scripting():
        V.tensor(fn, "labels", labels)
        V.tensor(fn, "ref_labels", ref_labels, optional=True)
        embeddings, ref_embeddings = _eager_pair(fn, embeddings, ref_embeddings)
    check_nonnegative(fn, "pos_margin", pos_margin)
    check_nonnegative(fn, "neg_margin", neg_margin)
    dist = _choice_index(fn, "distance", distance, ["euclidean", "squared_euclidean", "cosine"])
    dist = 1 if dist == 0 else (0 if dist == 1 else 2)
    red = pair_reduction_enum(fn, reduction, 3)
    x, y, r, ry, self_ref = pair_inputs(fn, embeddings, labels, ref_embeddings, ref_labels, distance == "cosine")
    if torch.jit.is_scripting():
        return torch.ops.lossext.contrastive_loss(x, y, r, ry, self_ref, pos_margin, neg_margin, dist, red)[0]
    else:
        return _eager_call(fn, "contrastive_loss", x, y, r, ry, self_ref, pos_margin, neg_margin, dist, red)[0]


def contrastive_loss(embeddings: Tensor, labels: Tensor, pos_margin: float = 0.0, neg_margin: float = 1.0,
                     distance: str = "euclidean", reduction: str = "mean", ref_embeddings: Optional[Tensor] = None,
                     ref_labels: Optional[Tensor] = None) -> Tensor:
    r"""Contrastive loss (Hadsell, Chopra and LeCun, CVPR 2006) over every pair, fused and tiled (no
    [N, M] matrix): a positive pair costs :math:`\max(d - m_{pos}, 0)`, a negative pair
    :math:`\max(m_{neg} - d, 0)`: pytorch-metric-learning's ``ContrastiveLoss`` (whose defaults,
    pos_margin 0 and neg_margin 1, these are). Hadsell et al. square both terms
    (:math:`\frac12 d^2`, :math:`\frac12 \max(m - d, 0)^2`); this is not that form.

    - Pairs: every ordered (a, j) with j != a (so each unordered pair twice, as pml), or every
      (a, j) with a reference set.
    - ``reduction='mean'``: pml's AvgNonZeroReducer, applied to the positive and the negative terms
      separately and the two means added (each over its terms with a positive loss; a mean over
      none is 0); ``'mean_all'``: the same over all positive and all negative pairs (pml's
      MeanReducer); ``'sum'``; ``'none'``: [N], each anchor's sum over its pairs.
    - ``distance``: ``'euclidean'`` (:math:`\sqrt{\max(s, 10^{-12})}`), ``'squared_euclidean'``, or
      ``'cosine'`` (:math:`1 - \cos` of the L2-normalized embeddings).
    - ``ref_embeddings``, ``ref_labels``: a reference set, as in triplet_margin_loss.

    Args:
        embeddings: [N, D]. labels: [N] integer labels. pos_margin, neg_margin: >= 0.
    """
    if not torch.jit.is_scripting():
        fn = "contrastive_loss"
        pos_margin = V.number(fn, "pos_margin", pos_margin)
        neg_margin = V.number(fn, "neg_margin", neg_margin)
        distance = _eager_choice(fn, "distance", distance, CONTRASTIVE_DISTANCES)
        reduction = _eager_choice(fn, "reduction", reduction, PAIR_REDUCTIONS)
    return contrastive("contrastive_loss", embeddings, labels, pos_margin, neg_margin, distance, reduction,
                       ref_embeddings, ref_labels)
