"""Float64 references of prior matching and the multibox losses (SSD, RefineDet), written from
the authors' Caffe rules (sfzhang15/RefineDet src/caffe/util/bbox_util.cpp; docs/detection.md
cites the lines) one image, one truth and one prior at a time, in plain Python: the tests' ground
truth. The heads' losses are torch expressions of loc and conf, so autograd gives the reference
gradients; matching and mining decisions are made on detached values (as the authors' code)."""
import math

import torch

__all__ = ["match_priors", "ssd_multibox_loss", "refinedet_multibox_loss"]

MIN_OVERLAP = 1e-6  # MatchBBox stores only pairs with overlap > 1e-6


def _corners(cx, cy, w, h):
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _size(b):
    """BBoxSize: 0 for an inverted box, else w * h (normalized, no +1)."""
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1])


def _iou(a, b):
    """JaccardOverlap: 0 unless the intersection has positive width and height."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if not (iw > 0 and ih > 0):
        return 0.0
    inter = iw * ih
    v = inter / (_size(a) + _size(b) - inter)
    return v if v == v else 0.0


def _truths(rows):
    """The image's truths: (row index, (x1, y1, x2, y2), label), padding (label < 0) left out."""
    return [(k, tuple(float(v) for v in r[:4]), int(r[4])) for k, r in enumerate(rows.tolist()) if r[4] >= 0]


def _match_image(anchors, truths, thresh, matching):
    """anchors: [(cx, cy, w, h)]; returns (match: truth position or -1 per anchor, overlap)."""
    P, nt = len(anchors), len(truths)
    match, ov = [-1] * P, [0.0] * P
    if nt == 0:
        return match, ov
    boxes = [_corners(*a) for a in anchors]
    iou = [[_iou(t[1], boxes[p]) for p in range(P)] for t in truths]  # [truth][prior]
    if matching == "bipartite":
        for p in range(P):
            ov[p] = max([iou[t][p] for t in range(nt) if iou[t][p] > MIN_OVERLAP], default=0.0)
        pool = list(range(nt))
        while pool:  # the largest stored pair; ties: the lower prior, then the earlier truth
            best, bp, bt = -1.0, -1, -1
            for p in range(P):
                if match[p] != -1:
                    continue
                for t in pool:
                    if iou[t][p] > MIN_OVERLAP and iou[t][p] > best:
                        best, bp, bt = iou[t][p], p, t
            if bp < 0:
                break
            match[bp], ov[bp] = bt, best
            pool.remove(bt)
        for p in range(P):  # PER_PREDICTION: >= the threshold, the first truth on ties
            if match[p] != -1:
                continue
            best, bt = -1.0, -1
            for t in range(nt):
                o = iou[t][p]
                if o > MIN_OVERLAP and o >= thresh and o > best:
                    best, bt = o, t
            if bt >= 0:
                match[p], ov[p] = bt, best
    else:  # ssd.pytorch's match, without forcing a truth that overlaps nothing onto prior 0
        for p in range(P):
            col = [iou[t][p] for t in range(nt)]
            v = max(col)
            ov[p] = v
            if v >= thresh and v > 0:
                match[p] = col.index(v)
        for t in range(nt):
            v = max(iou[t])
            if v > 0:
                p = iou[t].index(v)
                match[p], ov[p] = t, v
    return match, ov


def _priors_list(priors):
    return [tuple(float(v) for v in r) for r in priors.detach().double().tolist()]


def match_priors(priors, targets, overlap_thresh=0.5, matching="bipartite"):
    anchors = _priors_list(priors)
    B, P = targets.shape[0], len(anchors)
    m = torch.full((B, P), -1, dtype=torch.int64)
    o = torch.zeros((B, P), dtype=torch.float64)
    for b in range(B):
        truths = _truths(targets[b].detach().double().cpu())
        mt, ov = _match_image(anchors, truths, overlap_thresh, matching)
        for p in range(P):
            m[b, p] = truths[mt[p]][0] if mt[p] >= 0 else -1
            o[b, p] = ov[p]
    return m.to(priors.device), o.to(priors.device)


def _decode(prior, l, v0, v1):
    """DecodeBBox CENTER_SIZE, the variance not in the target, not clipped."""
    cx, cy, w, h = prior
    return (cx + v0 * l[0] * w, cy + v0 * l[1] * h, w * math.exp(v1 * l[2]), h * math.exp(v1 * l[3]))


def _encode(box, anchor, v0, v1):
    """EncodeBBox CENTER_SIZE: the truth's offsets from the anchor."""
    cx, cy, w, h = anchor
    gcx, gcy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    gw, gh = box[2] - box[0], box[3] - box[1]
    return ((gcx - cx) / w / v0, (gcy - cy) / h / v0, math.log(gw / w) / v1, math.log(gh / h) / v1)


def _smooth_l1(d):
    a = d.abs()
    return torch.where(a < 1, 0.5 * d * d, a - 0.5)


def _image_loss(loc, conf, anchors, truths, thresh, ratio, neg_overlap, v, matching, binary, objectness,
                obj_thresh):
    """One image's (loc sum, conf sum, positives); objectness: the ARM's object probabilities
    (a list) for RefineDet's ODM, else None: a negative needs objectness >= obj_thresh."""
    mt, ov = _match_image(anchors, truths, thresh, matching)
    P = len(anchors)
    lloc = loc[:0].sum()  # 0, in the graph (an empty selection's gradient is zero)
    pos = [p for p in range(P) if mt[p] >= 0]
    for p in pos:
        tgt = torch.tensor(_encode(truths[mt[p]][1], anchors[p], *v), dtype=loc.dtype, device=loc.device)
        lloc = lloc + _smooth_l1(loc[p] - tgt).sum()
    cls = [0 if mt[p] < 0 else (1 if binary else truths[mt[p]][2] + 1) for p in range(P)]
    ce = torch.logsumexp(conf, -1) - conf[torch.arange(P), torch.tensor(cls, dtype=torch.int64)]
    take = list(pos)
    if pos:
        cand = [p for p in range(P) if mt[p] < 0 and ov[p] < neg_overlap
                and (objectness is None or objectness[p] >= obj_thresh)]
        k = min(int(math.floor(len(pos) * ratio)), len(cand))
        key = ce.detach().tolist()
        # the hardest first: NaN first, then the largest loss; ties to the lower prior
        cand.sort(key=lambda p: (0 if key[p] != key[p] else 1, -key[p] if key[p] == key[p] else 0, p))
        take += cand[:k]
    lconf = ce[take].sum() if take else conf[:0].sum()
    return lloc, lconf, len(pos)


def _reduce(ll, lc, npos, reduction, device):
    ll, lc = torch.stack(ll) if ll else torch.zeros(0, dtype=torch.float64, device=device), \
        torch.stack(lc) if lc else torch.zeros(0, dtype=torch.float64, device=device)
    if reduction == "none":
        return ll, lc
    if reduction == "sum":
        return ll.sum(), lc.sum()
    n = max(sum(npos), 1)
    return ll.sum() / n, lc.sum() / n


def _multibox(loc, conf, priors, targets, thresh, ratio, neg_overlap, v, matching, binary, arm_loc=None,
              arm_conf=None, objectness_thresh=0.0, reduction="mean"):
    prior_list = _priors_list(priors)
    ll, lc, npos = [], [], []
    for b in range(loc.shape[0]):
        truths = _truths(targets[b].detach().double().cpu())
        anchors, obj = prior_list, None
        if arm_loc is not None:  # CasRegFindMatches: the priors refined by the ARM, detached
            al = arm_loc[b].detach().double().tolist()
            anchors = [_decode(prior_list[p], al[p], *v) for p in range(len(prior_list))]
            prob = torch.softmax(arm_conf[b].detach().double(), -1)[:, 1].tolist()
            obj = prob
        a, c, n = _image_loss(loc[b], conf[b], anchors, truths, thresh, ratio, neg_overlap, v, matching, binary, obj,
                              objectness_thresh)
        ll.append(a)
        lc.append(c)
        npos.append(n)
    if not ll:
        z = loc.sum((1, 2))  # [0], in the graph
        return (z, z) if reduction == "none" else (z.sum(), z.sum())
    return _reduce(ll, lc, npos, reduction, loc.device)


def ssd_multibox_loss(loc, conf, priors, targets, overlap_thresh=0.5, neg_pos_ratio=3, neg_overlap=0.5,
                      variances=(0.1, 0.2), matching="bipartite", reduction="mean"):
    return _multibox(loc, conf, priors, targets, overlap_thresh, neg_pos_ratio, neg_overlap, tuple(variances),
                     matching, False, reduction=reduction)


def refinedet_multibox_loss(arm_loc, arm_conf, odm_loc, odm_conf, priors, targets, overlap_thresh=0.5,
                            neg_pos_ratio=3, neg_overlap=0.5, variances=(0.1, 0.2), objectness_thresh=0.01,
                            reduction="mean"):
    v = tuple(variances)
    arm = _multibox(arm_loc, arm_conf, priors, targets, overlap_thresh, neg_pos_ratio, neg_overlap, v, "bipartite",
                    True, reduction=reduction)
    odm = _multibox(odm_loc, odm_conf, priors, targets, overlap_thresh, neg_pos_ratio, neg_overlap, v, "bipartite",
                    False, arm_loc, arm_conf, objectness_thresh, reduction)
    return arm + odm
