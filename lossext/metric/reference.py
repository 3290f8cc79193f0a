"""Float64 references of the metric-learning losses from the papers' formulas, and the composites a
PyTorch user writes (the benchmarks' eager and torch.compile baselines)."""
import torch

__all__ = ["center_loss", "triplet_center_loss", "center_loss_composite", "triplet_center_loss_composite"]


def _reduce(per_row, reduction):
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / per_row.shape[0]  # N = 0: NaN


def center_loss(features, target, centers, reduction="mean"):
    """Wen et al., ECCV 2016, Eq. 2: 1/2 |x_i - c_{y_i}|^2 per row; 'mean' divides by N."""
    t = target.long()
    diff = features - centers.index_select(0, t)
    return _reduce(0.5 * (diff * diff).sum(1), reduction)


def triplet_center_loss(features, target, centers, margin=5.0, distance="squared_euclidean", negatives="all",
                        reduction="mean"):
    """He et al., CVPR 2018, Eq. 3, spelled out over the [N, C] distances: the hardest negative is
    the lowest class index among the minimal distances; a row without negatives has loss 0."""
    t = target.long()
    n, c = features.shape[0], centers.shape[0]
    diff = features[:, None, :] - centers[None, :, :]
    s = (diff * diff).sum(-1)                                       # [N, C]
    d = 0.5 * s if distance == "squared_euclidean" else s.clamp_min(1e-12).sqrt()
    allowed = torch.ones(n, c, dtype=torch.bool, device=features.device)
    if negatives == "batch":
        present = torch.zeros(c, dtype=torch.bool, device=features.device)
        present[t] = True
        allowed = allowed & present[None, :]
    allowed = allowed & (torch.arange(c, device=features.device)[None, :] != t[:, None])
    has_neg = allowed.any(1)
    masked = d.detach().masked_fill(~allowed, float("inf"))
    dmin = masked.min(1, keepdim=True).values
    idx = ((masked == dmin) & allowed).int().argmax(1, keepdim=True)  # first (lowest) index of the min
    dn = d.gather(1, idx)[:, 0]
    dp = d.gather(1, t[:, None])[:, 0]
    per_row = torch.where(has_neg, torch.relu(dp + margin - dn), torch.zeros_like(dp))
    return _reduce(per_row, reduction)


def center_loss_composite(features, target, centers, reduction="mean"):
    """What a PyTorch user writes: gather the centers, squared difference, sum, mean."""
    return _reduce(0.5 * (features - centers[target]).pow(2).sum(1), reduction)


def triplet_center_loss_composite(features, target, centers, margin=5.0, distance="squared_euclidean",
                                  negatives="all", reduction="mean"):
    """cdist to every center, mask the target (and absent classes), min, hinge: the [N, C]
    composite the authors' code runs (their 'euclidean'; 'squared_euclidean' halves the square)."""
    dist = torch.cdist(features, centers)
    d = 0.5 * dist * dist if distance == "squared_euclidean" else dist
    t = target[:, None]
    dp = d.gather(1, t)[:, 0]
    mask = torch.zeros_like(d, dtype=torch.bool).scatter_(1, t, True)
    if negatives == "batch":
        present = torch.zeros(centers.shape[0], dtype=torch.bool, device=features.device)
        present[target] = True
        mask = mask | ~present[None, :]
    dn = d.masked_fill(mask, float("inf")).min(1).values
    return _reduce(torch.relu(dp + margin - dn), reduction)
