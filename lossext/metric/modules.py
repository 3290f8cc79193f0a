"""Modules of the metric-learning losses; each owns its class centers [C, D].

Every Module checks its arguments at construction, shows them in its repr and is scriptable
(torch.jit.script)."""
from typing import Optional

import torch
from torch import Tensor, nn

from .._core import validation as V
from . import functional as F

__all__ = ["CenterLoss", "TripletCenterLoss", "TripletMarginLoss", "ContrastiveLoss"]

UPDATES = ["autograd", "paper"]


def _dims(n, num_classes, feature_dim):
    num_classes = V.integer(n, "num_classes", num_classes, 1)
    feature_dim = V.integer(n, "feature_dim", feature_dim, 0)
    return num_classes, feature_dim


class CenterLoss(nn.Module):
    r"""Center loss (Wen et al., ECCV 2016) with its class centers [C, D] (initialized from
    torch.randn, as the authors' PyTorch code for the Triplet-Center paper does).

    - ``update='autograd'``: ``centers`` is a Parameter; the optimizer moves it with the gradient
      :math:`\sum_{i: y_i=j} (c_j - x_i)` (scaled by the reduction).
    - ``update='paper'``: the paper's rule (Eq. 4, the caffe ``center_loss_layer``):
      :math:`\Delta c_j = \frac{\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j}`,
      :math:`c_j \leftarrow c_j - \alpha \Delta c_j`, with :math:`n_j` the rows of class j in the
      batch. ``centers`` is then a buffer (saved, not a Parameter: no optimizer, no gradient),
      updated in a no-grad step by every forward in training mode, after the loss is computed
      from the centers before the step. It is not a constant-rate moving average: the step of
      class j is :math:`\alpha n_j / (1 + n_j)` of the way to its batch mean.

    forward(features [N, D], target [N]) -> the loss (see lossext.functional.center_loss).
    """

    def __init__(self, num_classes, feature_dim, update="autograd", alpha=0.5, reduction="mean"):
        super().__init__()
        n = type(self).__name__
        self._fn = n  # the name in messages (TorchScript has no type(self).__name__)
        num_classes, feature_dim = _dims(n, num_classes, feature_dim)
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.update = F._eager_str(n, "update", update, UPDATES)
        self.alpha = V.number(n, "alpha", alpha)
        V.check_range(n, "alpha", self.alpha, 0.0, 1.0, False)
        self.reduction = V.reduction(n, reduction)
        centers = torch.randn(num_classes, feature_dim)
        self.paper_update = self.update == "paper"
        if self.paper_update:
            self.register_buffer("centers", centers)
        else:
            self.centers = nn.Parameter(centers)

    def forward(self, features: Tensor, target: Tensor) -> Tensor:
        loss = F.center(self._fn, features, target, self.centers, self.reduction)
        if self.paper_update and self.training:
            self._paper_step(features, target)
        return loss

    @torch.jit.export
    def _paper_step(self, features: Tensor, target: Tensor):
        """c_j <- c_j - alpha sum_{i: y_i = j} (c_j - x_i) / (1 + n_j) (the caffe layer's rule)."""
        with torch.no_grad():
            c = self.centers
            x = features.detach().to(c.dtype)
            t = target.long()
            # sum_{i: y_i = j} (c_j - x_i) is center_loss's grad_centers at reduction 'sum' with a
            # unit grad_output: the fused, deterministic kernel
            ones = torch.ones((), dtype=c.dtype, device=c.device)
            _, delta = torch.ops.lossext.center_loss_backward(ones, x, t, c, 2)
            count = torch.bincount(t, minlength=c.shape[0]).to(c.dtype)
            c.sub_(self.alpha * delta / (1.0 + count)[:, None])

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, update={self.update!r}, "
                f"alpha={self.alpha!r}, reduction={self.reduction!r}")


class TripletCenterLoss(nn.Module):
    r"""Triplet-Center loss (He et al., CVPR 2018) with its class centers [C, D] as a Parameter
    (initialized from torch.randn, as the authors' code). The paper trains with
    :math:`L = \lambda L_{tc} + L_{softmax}`; see docs/metric.md for an example.

    forward(features [N, D], target [N]) -> the loss (see lossext.functional.triplet_center_loss).
    """

    def __init__(self, num_classes, feature_dim, margin=5.0, distance="squared_euclidean", negatives="all",
                 reduction="mean"):
        super().__init__()
        n = type(self).__name__
        self._fn = n  # the name in messages (TorchScript has no type(self).__name__)
        num_classes, feature_dim = _dims(n, num_classes, feature_dim)
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.margin = F.check_margin(n, V.number(n, "margin", margin))
        self.distance = F._eager_str(n, "distance", distance, F.DISTANCES)
        self.negatives = F._eager_str(n, "negatives", negatives, F.NEGATIVES)
        self.reduction = V.reduction(n, reduction)
        self.centers = nn.Parameter(torch.randn(num_classes, feature_dim))

    def forward(self, features: Tensor, target: Tensor) -> Tensor:
        return F.triplet_center(self._fn, features, target, self.centers, self.margin, self.distance,
                                self.negatives, self.reduction)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, margin={self.margin!r}, "
                f"distance={self.distance!r}, negatives={self.negatives!r}, reduction={self.reduction!r}")


class TripletMarginLoss(nn.Module):
    r"""Triplet loss with online mining over the batch (or a reference set): batch-hard (Hermans et
    al., 2017), batch-all, or semi-hard (FaceNet). Unlike torch.nn.TripletMarginLoss, which takes
    ready-made (anchor, positive, negative) rows, it takes embeddings and labels and mines the
    triplets itself, in tiles (no [N, M] matrix).

    forward(embeddings [N, D], labels [N], ref_embeddings [M, D] = None, ref_labels [M] = None)
    -> the loss (see lossext.functional.triplet_margin_loss).
    """

    def __init__(self, margin=0.2, mining="batch_hard", distance="euclidean", squared=False, normalize=False,
                 soft_margin=False, reduction="mean"):
        super().__init__()
        n = type(self).__name__
        self._fn = n
        self.margin = F.check_nonnegative(n, "margin", V.number(n, "margin", margin))
        self.mining = F._eager_choice(n, "mining", mining, F.MININGS)
        self.distance = F._eager_choice(n, "distance", distance, F.TRIPLET_DISTANCES)
        self.squared = V.flag(n, "squared", squared)
        if self.squared and self.distance == "cosine":
            raise ValueError(f"{n}: squared=True applies to distance='euclidean', got distance='cosine'")
        self.normalize = V.flag(n, "normalize", normalize)
        self.soft_margin = V.flag(n, "soft_margin", soft_margin)
        self.reduction = F._eager_choice(n, "reduction", reduction, F.PAIR_REDUCTIONS)

    def forward(self, embeddings: Tensor, labels: Tensor, ref_embeddings: Optional[Tensor] = None,
                ref_labels: Optional[Tensor] = None) -> Tensor:
        return F.triplet_margin(self._fn, embeddings, labels, self.margin, self.mining, self.distance, self.squared,
                                self.normalize, self.soft_margin, self.reduction, ref_embeddings, ref_labels)

    def extra_repr(self):
        return (f"margin={self.margin!r}, mining={self.mining!r}, distance={self.distance!r}, squared={self.squared}, "
                f"normalize={self.normalize}, soft_margin={self.soft_margin}, reduction={self.reduction!r}")


class ContrastiveLoss(nn.Module):
    r"""Contrastive loss over every pair of the batch (or with a reference set), in
    pytorch-metric-learning's form (Hadsell et al., CVPR 2006).

    forward(embeddings [N, D], labels [N], ref_embeddings [M, D] = None, ref_labels [M] = None)
    -> the loss (see lossext.functional.contrastive_loss).
    """

    def __init__(self, pos_margin=0.0, neg_margin=1.0, distance="euclidean", reduction="mean"):
        super().__init__()
        n = type(self).__name__
        self._fn = n
        self.pos_margin = F.check_nonnegative(n, "pos_margin", V.number(n, "pos_margin", pos_margin))
        self.neg_margin = F.check_nonnegative(n, "neg_margin", V.number(n, "neg_margin", neg_margin))
        self.distance = F._eager_choice(n, "distance", distance, F.CONTRASTIVE_DISTANCES)
        self.reduction = F._eager_choice(n, "reduction", reduction, F.PAIR_REDUCTIONS)

    def forward(self, embeddings: Tensor, labels: Tensor, ref_embeddings: Optional[Tensor] = None,
                ref_labels: Optional[Tensor] = None) -> Tensor:
        return F.contrastive(self._fn, embeddings, labels, self.pos_margin, self.neg_margin, self.distance,
                             self.reduction, ref_embeddings, ref_labels)

    def extra_repr(self):
        return (f"pos_margin={self.pos_margin!r}, neg_margin={self.neg_margin!r}, distance={self.distance!r}, "
                f"reduction={self.reduction!r}")
