"""The multibox benchmarks' baselines: the same rules as multibox_reference.py (the authors' Caffe
code), written as a good vectorized pure-PyTorch port would (no Python loop over images or
priors; the greedy bipartite match loops over the T truth slots, each step batched), and the
per-image-loop structure of amdegroot/ssd.pytorch's MultiBoxLoss (match one image at a time,
then batched mining). Any floating dtype; torch.compile-able (no host syncs)."""
import torch

__all__ = ["match_priors_composite", "ssd_multibox_loss_composite", "refinedet_multibox_loss_composite",
           "ssd_multibox_loss_image_loop"]

MIN_OVERLAP = 1e-6


def _corners(b):
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _area(c):
    w, h = c[..., 2] - c[..., 0], c[..., 3] - c[..., 1]
    return torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)


def _iou(truths, anchors):
    """Caffe's JaccardOverlap of truths [B, T, 4] (corners) with anchors [P, 4] or [B, P, 4]
    (cx, cy, w, h): [B, T, P]."""
    a = _corners(anchors)
    a = a[None] if a.dim() == 2 else a
    t = truths[:, :, None, :]
    a = a[:, None, :, :]
    iw = torch.minimum(t[..., 2], a[..., 2]) - torch.maximum(t[..., 0], a[..., 0])
    ih = torch.minimum(t[..., 3], a[..., 3]) - torch.maximum(t[..., 1], a[..., 1])
    ok = (iw > 0) & (ih > 0)
    inter = torch.where(ok, iw * ih, torch.zeros_like(iw))
    uni = _area(t) + _area(a) - inter
    v = torch.where(ok & (uni > 0), inter / torch.where(uni > 0, uni, torch.ones_like(uni)), torch.zeros_like(uni))
    return torch.nan_to_num(v, nan=0.0)


def _match(anchors, targets, thresh, matching):
    """(matches [B, P] target row or -1, overlaps [B, P]) against anchors [P, 4] or [B, P, 4]."""
    B, T = targets.shape[0], targets.shape[1]
    P = anchors.shape[-2]
    valid = targets[..., 4] >= 0  # [B, T]
    iou = _iou(targets[..., :4].to(anchors.dtype), anchors)  # [B, T, P]
    neg1 = torch.full_like(iou, -1.0)
    match = torch.full((B, P), -1, dtype=torch.int64, device=anchors.device)
    bi = torch.arange(B, device=anchors.device)
    if matching == "bipartite":
        stored = valid[..., None] & (iou > MIN_OVERLAP)
        ov = torch.where(stored, iou, torch.zeros_like(iou)).amax(1) if T else iou.new_zeros(B, P)
        work = torch.where(stored, iou, neg1).transpose(1, 2).contiguous()  # [B, P, T]: prior-major
        for _ in range(T):
            flat = work.reshape(B, P * T)
            idx = flat.argmax(1)  # the first maximum: the lower prior, then the earlier truth
            v = flat.gather(1, idx[:, None])[:, 0]
            hit = v > MIN_OVERLAP
            p, t = idx // T, idx % T
            match[bi, p] = torch.where(hit, t, match[bi, p])
            ov[bi, p] = torch.where(hit, v, ov[bi, p])
            # the prior and the truth leave the pool
            work[bi, p, :] = torch.where(hit[:, None], -1.0, work[bi, p, :])
            work[bi, :, t] = torch.where(hit[:, None], -1.0, work[bi, :, t])
        if T:
            per = torch.where(stored & (iou >= thresh), iou, neg1)
            v, t = per.max(1)
            take = (match < 0) & (v > MIN_OVERLAP)
            match = torch.where(take, t, match)
            ov = torch.where(take, v, ov)
        return match, ov
    # ssd.pytorch's match (no truth that overlaps nothing forced onto prior 0)
    if T == 0:
        return match, iou.new_zeros(B, P)
    masked = torch.where(valid[..., None], iou, neg1)
    v, t = masked.max(1)  # each prior's best truth (the first on ties)
    ov = v.clamp(min=0)
    match = torch.where((v >= thresh) & (v > 0), t, match)
    for j in range(T):  # each truth, in order, takes its best prior: a later one overwrites
        row = masked[:, j]
        p = row.argmax(1)
        vb = row.gather(1, p[:, None])[:, 0]
        hit = valid[:, j] & (vb > 0)
        match[bi, p] = torch.where(hit, torch.full_like(p, j), match[bi, p])
        ov[bi, p] = torch.where(hit, vb, ov[bi, p])
    return match, ov


def match_priors_composite(priors, targets, overlap_thresh=0.5, matching="bipartite"):
    return _match(priors, targets.to(priors.dtype), overlap_thresh, matching)


def _decode(priors, l, v0, v1):
    p = priors[None] if priors.dim() == 2 else priors
    return torch.cat([p[..., :2] + v0 * l[..., :2] * p[..., 2:], p[..., 2:] * torch.exp(v1 * l[..., 2:])], -1)


def _smooth_l1(d):
    a = d.abs()
    return torch.where(a < 1, 0.5 * d * d, a - 0.5)


def _losses(loc, conf, anchors, targets, match, ov, ratio, neg_overlap, v, binary, objectness=None, obj_thresh=0.0):
    """Per-image (loc sum, conf sum, positives) from the matches, mining batched."""
    B, P = match.shape
    pos = match >= 0
    rows = torch.gather(targets, 1, match.clamp(min=0)[..., None].expand(B, P, 5)) if targets.shape[1] else \
        targets.new_zeros(B, P, 5)
    g = rows[..., :4].to(anchors.dtype)
    a = anchors.expand(B, P, 4) if anchors.dim() == 2 else anchors
    gw, gh = g[..., 2] - g[..., 0], g[..., 3] - g[..., 1]
    gcx, gcy = (g[..., 0] + g[..., 2]) / 2, (g[..., 1] + g[..., 3]) / 2
    one = torch.ones_like(gw)
    tgt = torch.stack([(gcx - a[..., 0]) / a[..., 2] / v[0], (gcy - a[..., 1]) / a[..., 3] / v[0],
                       torch.log(torch.where(pos, gw / a[..., 2], one)) / v[1],
                       torch.log(torch.where(pos, gh / a[..., 3], one)) / v[1]], -1)
    l1 = _smooth_l1(loc - tgt.to(loc.dtype)).sum(-1)
    lloc = torch.where(pos, l1, torch.zeros_like(l1)).sum(1)
    if binary:
        cls = pos.long()
    else:
        cls = torch.where(pos, rows[..., 4].long() + 1, torch.zeros_like(match))
    ce = torch.logsumexp(conf, -1) - conf.gather(-1, cls[..., None])[..., 0]
    npos = pos.sum(1)
    cand = ~pos & (ov < neg_overlap)
    if objectness is not None:
        cand = cand & (objectness >= obj_thresh)
    key = torch.where(cand, ce.detach(), torch.full_like(ce, -float("inf")))
    order = key.sort(dim=1, descending=True, stable=True)[1]
    rank = order.argsort(1)
    k = torch.minimum(torch.floor(npos.double() * ratio), cand.sum(1).double())
    take = pos | (cand & (rank < k[:, None]) & (npos > 0)[:, None])
    lconf = torch.where(take, ce, torch.zeros_like(ce)).sum(1)
    return lloc, lconf, npos


def _reduce(lloc, lconf, npos, reduction):
    if reduction == "none":
        return lloc, lconf
    if reduction == "sum":
        return lloc.sum(), lconf.sum()
    n = npos.sum().clamp(min=1).to(lloc.dtype)
    return lloc.sum() / n, lconf.sum() / n


def ssd_multibox_loss_composite(loc, conf, priors, targets, overlap_thresh=0.5, neg_pos_ratio=3, neg_overlap=0.5,
                                variances=(0.1, 0.2), matching="bipartite", reduction="mean"):
    pri = priors.detach()
    tg = targets.detach().to(pri.dtype)
    match, ov = _match(pri, tg, overlap_thresh, matching)
    return _reduce(*_losses(loc, conf, pri, tg, match, ov, neg_pos_ratio, neg_overlap, variances, False), reduction)


def _match_image_loop(anchors, tg, thresh, matching):
    """ssd.pytorch's structure: `match` called one image at a time (its `for idx in range(num)`);
    anchors [P, 4] or, refined per image, [B, P, 4]."""
    ms, os_ = [], []
    for b in range(tg.shape[0]):
        m, o = _match(anchors if anchors.dim() == 2 else anchors[b], tg[b:b + 1], thresh, matching)
        ms.append(m)
        os_.append(o)
    P = anchors.shape[-2]
    match = torch.cat(ms) if ms else torch.zeros(0, P, dtype=torch.int64, device=anchors.device)
    ov = torch.cat(os_) if os_ else anchors.new_zeros(0, P)
    return match, ov


def ssd_multibox_loss_image_loop(loc, conf, priors, targets, overlap_thresh=0.5, neg_pos_ratio=3, neg_overlap=0.5,
                                 variances=(0.1, 0.2), matching="bipartite", reduction="mean"):
    """ssd.pytorch's structure: a Python loop matching one image at a time, then the mining and
    both losses batched."""
    pri = priors.detach()
    tg = targets.detach().to(pri.dtype)
    match, ov = _match_image_loop(pri, tg, overlap_thresh, matching)
    return _reduce(*_losses(loc, conf, pri, tg, match, ov, neg_pos_ratio, neg_overlap, variances, False), reduction)


def refinedet_multibox_loss_composite(arm_loc, arm_conf, odm_loc, odm_conf, priors, targets, overlap_thresh=0.5,
                                      neg_pos_ratio=3, neg_overlap=0.5, variances=(0.1, 0.2),
                                      objectness_thresh=0.01, reduction="mean", _match_fn=_match):
    pri = priors.detach()
    tg = targets.detach().to(pri.dtype)
    match, ov = _match_fn(pri, tg, overlap_thresh, "bipartite")
    arm = _reduce(*_losses(arm_loc, arm_conf, pri, tg, match, ov, neg_pos_ratio, neg_overlap, variances, True),
                  reduction)
    anchors = _decode(pri, arm_loc.detach().to(pri.dtype), variances[0], variances[1])
    match, ov = _match_fn(anchors, tg, overlap_thresh, "bipartite")
    obj = torch.softmax(arm_conf.detach(), -1)[..., 1]
    odm = _reduce(*_losses(odm_loc, odm_conf, anchors, tg, match, ov, neg_pos_ratio, neg_overlap, variances, False,
                           obj, objectness_thresh), reduction)
    return arm + odm


def refinedet_multibox_loss_image_loop(arm_loc, arm_conf, odm_loc, odm_conf, priors, targets, overlap_thresh=0.5,
                                       neg_pos_ratio=3, neg_overlap=0.5, variances=(0.1, 0.2),
                                       objectness_thresh=0.01, reduction="mean"):
    """The PyTorch RefineDet ports' structure (ssd.pytorch's): both matches, against the priors
    for the ARM and against each image's refined anchors for the ODM, one image at a time in
    Python; the rest batched as the composite."""
    return refinedet_multibox_loss_composite(arm_loc, arm_conf, odm_loc, odm_conf, priors, targets, overlap_thresh,
                                             neg_pos_ratio, neg_overlap, variances, objectness_thresh, reduction,
                                             _match_fn=_match_image_loop)
