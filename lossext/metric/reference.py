"""Float64 references of the metric-learning losses from the papers' formulas, and the composites a
PyTorch user writes (the benchmarks' eager and torch.compile baselines)."""
import torch

__all__ = ["center_loss", "triplet_center_loss", "center_loss_composite", "triplet_center_loss_composite",
           "triplet_margin_loss", "contrastive_loss", "triplet_margin_loss_composite",
           "contrastive_loss_composite"]


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


# ---- pair-based losses: float64 references spelled out anchor by anchor ------------------------

def _pair_setup(embeddings, labels, ref_embeddings, ref_labels, distance, squared, normalize):
    x, r = embeddings, embeddings if ref_embeddings is None else ref_embeddings
    y = labels.long()
    ry = y if ref_labels is None else ref_labels.long()
    if normalize or distance == "cosine":
        x = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
        r = torch.nn.functional.normalize(r, dim=1, eps=1e-12) if ref_embeddings is not None else x
    if distance == "cosine":
        d = 1.0 - x @ r.T
    else:
        s = ((x[:, None, :] - r[None, :, :]) ** 2).sum(-1)
        d = s if squared else s.clamp_min(1e-12).sqrt()
    same = y[:, None] == ry[None, :]
    valid = torch.ones_like(same)
    if ref_embeddings is None:
        valid &= ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d, same & valid, ~same & valid


def _first(values, largest):
    """The index of the max (largest) or min, the lowest among ties."""
    best = values.max() if largest else values.min()
    return int((values == best).nonzero()[0, 0])


def _pair_reduce(per_anchor, terms, reduction, default):
    """terms: [(sum, valid count, nonzero count)] per kind (one for triplets, pos and neg pairs for
    contrastive); 'mean' is `default` ('mean_all' or 'mean_nonzero'); a mean of no terms is 0
    (pytorch-metric-learning's reducers), of an empty batch NaN (torch's mean of nothing)."""
    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return per_anchor.sum()
    kind = default if reduction == "mean" else reduction
    if per_anchor.shape[0] == 0:
        return per_anchor.sum() / 0.0  # an empty batch: NaN, as torch's mean of nothing
    total = per_anchor.sum() * 0.0
    for s, nv, nz in terms:
        n = nv if kind == "mean_all" else nz
        if n > 0:
            total = total + s / n
    return total


def triplet_margin_loss(embeddings, labels, margin=0.2, mining="batch_hard", distance="euclidean", squared=False,
                        normalize=False, soft_margin=False, reduction="mean", ref_embeddings=None, ref_labels=None):
    """Triplet loss with online mining (FaceNet, Schroff et al., CVPR 2015, Eq. 1; Hermans et al.,
    2017, Eqs. 4-5), anchor by anchor over the [N, M] distances. v = d_ap - d_an + margin, h = relu
    (soft_margin: v = d_ap - d_an, h = softplus). batch_hard: the farthest positive and nearest
    negative; batch_all: every (positive, negative); semi_hard: per positive the nearest negative
    farther than it, else the farthest negative (TensorFlow Addons). Ties: the lowest index. An
    anchor without a positive or a negative has no triplet. 'mean': batch_all over the triplets
    with a positive loss, the others over all their triplets; 'none': per-anchor sums."""
    d, pos, neg = _pair_setup(embeddings, labels, ref_embeddings, ref_labels, distance, squared, normalize)
    m = 0.0 if soft_margin else margin
    h = torch.nn.functional.softplus if soft_margin else torch.relu
    zero = d.sum() * 0.0  # a zero in the graph (the inputs take a zero gradient)
    per_anchor, total, nv, nz = [], zero, 0, 0
    for a in range(d.shape[0]):
        P, Q = pos[a].nonzero()[:, 0], neg[a].nonzero()[:, 0]
        if len(P) == 0 or len(Q) == 0:
            per_anchor.append(zero)
            continue
        dp, dn = d[a, P], d[a, Q]
        if mining == "batch_hard":
            v = dp[_first(dp.detach(), True)] - dn[_first(dn.detach(), False)] + m
        elif mining == "batch_all":
            v = (dp[:, None] - dn[None, :] + m).reshape(-1)
        else:
            chosen = []
            for k in range(len(P)):
                out = dn.detach() > dp[k].detach()
                if out.any():
                    q = int(out.nonzero()[_first(dn.detach()[out], False), 0])
                else:
                    q = _first(dn.detach(), True)
                chosen.append(dn[q])
            v = dp - torch.stack(chosen) + m
        loss = h(v)
        per_anchor.append(loss.sum())
        total = total + loss.sum()
        nv += loss.numel()
        nz += int((loss.detach() > 0).sum())
    per_anchor = torch.stack(per_anchor) if per_anchor else zero.reshape(1)[:0]
    default = "mean_nonzero" if mining == "batch_all" else "mean_all"
    return _pair_reduce(per_anchor, [(total, nv, nz)], reduction, default)


def contrastive_loss(embeddings, labels, pos_margin=0.0, neg_margin=1.0, distance="euclidean", reduction="mean",
                     ref_embeddings=None, ref_labels=None):
    """Contrastive loss (Hadsell et al., CVPR 2006) in pytorch-metric-learning's form: positive pairs
    relu(d - pos_margin), negative pairs relu(neg_margin - d), over every ordered pair (a, j);
    'mean' (pml's AvgNonZeroReducer) averages the positive and the negative terms each over those
    with a positive loss and adds the two; 'mean_all' over all of them; 'none': per-anchor sums."""
    squared = distance == "squared_euclidean"
    d, pos, neg = _pair_setup(embeddings, labels, ref_embeddings, ref_labels,
                              "euclidean" if squared else distance, squared, False)
    lp = torch.relu(d - pos_margin) * pos
    ln = torch.relu(neg_margin - d) * neg
    per_anchor = lp.sum(1) + ln.sum(1)
    terms = [(lp.sum(), int(pos.sum()), int((lp.detach() > 0).sum())),
             (ln.sum(), int(neg.sum()), int((ln.detach() > 0).sum()))]
    return _pair_reduce(per_anchor, terms, reduction, "mean_nonzero")


def _composite_distances(x, r, distance, squared, normalize):
    if normalize or distance == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
        r = torch.nn.functional.normalize(r, dim=1)
    if distance == "cosine":
        return 1.0 - x @ r.T
    d = torch.cdist(x, r)
    return d * d if squared else d


def triplet_margin_loss_composite(embeddings, labels, margin=0.2, mining="batch_hard", distance="euclidean",
                                  squared=False, normalize=False, soft_margin=False, reduction="mean",
                                  ref_embeddings=None, ref_labels=None):
    """The vectorized composite a PyTorch user writes (the benchmarks' eager and torch.compile
    baseline): the [N, M] distances by cdist, label masks, then per mining a masked max/min
    (batch_hard) or the [N, M, M] triplet tensor (batch_all, semi_hard); 'mean' as the op's."""
    self_ref = ref_embeddings is None
    r = embeddings if self_ref else ref_embeddings
    ry = labels if self_ref else ref_labels
    d = _composite_distances(embeddings, r, distance, squared, normalize)
    same = labels[:, None] == ry[None, :]
    pos = same
    if self_ref:
        pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=d.device)
    neg = ~same
    m = 0.0 if soft_margin else margin
    h = torch.nn.functional.softplus if soft_margin else torch.relu
    if mining == "batch_hard":
        dp = d.masked_fill(~pos, float("-inf")).max(1).values
        dn = d.masked_fill(~neg, float("inf")).min(1).values
        valid = pos.any(1) & neg.any(1)
        loss = torch.where(valid, h(dp - dn + m), torch.zeros_like(dp))
        return _reduce_valid(loss, valid, reduction, "mean_all")
    v = d[:, :, None] - d[:, None, :] + m                               # [N, M(p), M(n)]
    if mining == "semi_hard":
        dn = d[:, None, :].expand_as(v)
        farther = neg[:, None, :] & (dn > d[:, :, None])
        nearest = dn.masked_fill(~farther, float("inf")).min(2).values
        farthest = d.masked_fill(~neg, float("-inf")).max(1).values[:, None].expand_as(nearest)
        chosen = torch.where(farther.any(2), nearest, farthest)
        valid = pos & neg.any(1, keepdim=True)
        loss = torch.where(valid, h(d - chosen + m), torch.zeros_like(d))
        return _reduce_valid(loss, valid, reduction, "mean_all")
    valid = pos[:, :, None] & neg[:, None, :]
    loss = torch.where(valid, h(v), torch.zeros_like(v))
    return _reduce_valid(loss, valid, reduction, "mean_nonzero")


def _reduce_valid(loss, valid, reduction, default):
    if reduction == "none":
        return loss.reshape(loss.shape[0], -1).sum(1)
    if reduction == "sum":
        return loss.sum()
    kind = default if reduction == "mean" else reduction
    n = valid.sum() if kind == "mean_all" else (loss > 0).sum()
    return loss.sum() / n.clamp_min(1)


def contrastive_loss_composite(embeddings, labels, pos_margin=0.0, neg_margin=1.0, distance="euclidean",
                               reduction="mean", ref_embeddings=None, ref_labels=None):
    """The vectorized composite: the [N, M] distances, masks, two hinges, pml's reducers."""
    self_ref = ref_embeddings is None
    r = embeddings if self_ref else ref_embeddings
    ry = labels if self_ref else ref_labels
    d = _composite_distances(embeddings, r, "cosine" if distance == "cosine" else "euclidean",
                             distance == "squared_euclidean", False)
    same = labels[:, None] == ry[None, :]
    pos = same
    if self_ref:
        pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=d.device)
    neg = ~same
    lp = torch.where(pos, torch.relu(d - pos_margin), torch.zeros_like(d))
    ln = torch.where(neg, torch.relu(neg_margin - d), torch.zeros_like(d))
    if reduction == "none":
        return lp.sum(1) + ln.sum(1)
    if reduction == "sum":
        return lp.sum() + ln.sum()
    if reduction == "mean_all":
        return lp.sum() / pos.sum().clamp_min(1) + ln.sum() / neg.sum().clamp_min(1)
    return lp.sum() / (lp > 0).sum().clamp_min(1) + ln.sum() / (ln > 0).sum().clamp_min(1)
