"""Pure-PyTorch references of the YOLOv2 region loss (darknet's [region] layer).

Three implementations of one specification, with one signature:

    f(output, targets, anchors, num_classes, object_scale=5.0, noobject_scale=1.0,
      class_scale=1.0, coord_scale=1.0, thresh=0.6, rescore=True, bias_match=True, seen=0,
      warmup_images=12800, scale_coord_by_size=True, reduction="mean", return_stats=False)

  region_loss_darknet      the ground truth: a scalar, line-by-line port of darknet's
                           forward_region_layer (pjreddie/darknet src/region_layer.c), computing
                           its delta array in float64 Python floats, then the loss as a
                           differentiable torch expression whose autograd gradient is darknet's
                           GPU gradient (-delta, times the logistic derivative on x, y, obj).
  region_delta_darknet     darknet's delta array itself, [B, A*(5+C), H, W] float64, in darknet's
                           sign (delta = scale * (target - output), no logistic derivative).
  region_loss_composite    vectorized over images and truths (the eager / torch.compile baseline;
                           no Python loop over boxes or images, no data-dependent shapes).
  region_loss_image_loop   the per-image, per-truth Python loop of the common PyTorch YOLOv2 ports
                           (build_targets style), the second baseline.

Layout and conventions
  output   [B, A*(5+C), H, W] raw head; channel a*(5+C)+k, k = tx, ty, tw, th, to, C class logits
           (darknet's entry_index layout: flattening output gives darknet's l.output order).
  targets  [B, T, 5] rows (class, x, y, w, h), x, y, w, h normalized to [0, 1]; a row with
           class < 0 is padding, wherever it stands. T may be 0.
  anchors  [A, 2] (w, h) in grid cells (darknet's biases).
  Decoded box of anchor n at column i, row j: ((i + s(tx))/W, (j + s(ty))/H, exp(tw) a_w/W,
  exp(th) a_h/H). Loss = sum of 1/2 s (t - o)^2 over the squared terms (o = s(z) for tx, ty, to,
  o = z for tw, th) + class_scale * softmax cross-entropy at the matched anchors.
  reduction 'none' -> per-image losses [B]; 'sum'; 'mean' = sum / B (B = 0: NaN).
  return_stats -> (loss, stats), stats [7] = (avg_iou, recall, avg_obj, avg_anyobj, avg_cat,
  count, darknet_cost) in the output's dtype promoted to at least float32; averages over no
  truths are 0.

Where the specification differs from darknet (each place is marked "spec:" below): truth rows are (class, x, y, w, h), not darknet's
(x, y, w, h, class); padding rows are skipped (darknet stops at the first row with x == 0); the
cell index is clamped to the grid (darknet indexes one cell past it at x == 1.0); IoU of two
empty boxes is 0 (darknet's pjreddie box_iou divides 0 by 0); empty averages are 0 (darknet
prints 0/0); the warm-up threshold is a parameter (darknet hard-codes 12800).
"""
import math

import torch

__all__ = ["region_loss_darknet", "region_delta_darknet", "region_loss_composite",
           "region_loss_image_loop"]


def _stats_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


def _reduce(per_image, reduction):
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        return per_image.sum() / per_image.shape[0]
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


# ----------------------------------------------------------------------------------------------
# 1. darknet, line by line (pjreddie/darknet src/region_layer.c, src/box.c), in Python floats
# ----------------------------------------------------------------------------------------------

# box.c: overlap
def _dk_overlap(x1, w1, x2, w2):
    l1 = x1 - w1 / 2
    l2 = x2 - w2 / 2
    left = l1 if l1 > l2 else l2
    r1 = x1 + w1 / 2
    r2 = x2 + w2 / 2
    right = r1 if r1 < r2 else r2
    return right - left


# box.c: box_intersection
def _dk_box_intersection(a, b):
    w = _dk_overlap(a[0], a[2], b[0], b[2])
    h = _dk_overlap(a[1], a[3], b[1], b[3])
    if w < 0 or h < 0:
        return 0.0
    return w * h


# box.c: box_union
def _dk_box_union(a, b):
    i = _dk_box_intersection(a, b)
    return a[2] * a[3] + b[2] * b[3] - i


# box.c: box_iou. spec: 0 when the intersection or the union is 0 (pjreddie's box_iou is a plain
# I/U, NaN for two empty boxes; AlexeyAB's box.c has this guard). Same value for boxes of
# positive area.
def _dk_box_iou(a, b):
    i = _dk_box_intersection(a, b)
    u = _dk_box_union(a, b)
    if i == 0 or u == 0:
        return 0.0
    return i / u


def _darknet_pass(output, targets, anchors, num_classes, object_scale, noobject_scale, class_scale,
                  coord_scale, thresh, rescore, bias_match, seen, warmup_images,
                  scale_coord_by_size):
    """forward_region_layer's training pass. Returns the per-entry scale and target of the
    squared terms, the matched class of each anchor, the delta array and darknet's statistics."""
    batch, _, lh, lw = output.shape
    biases = [float(v) for v in torch.as_tensor(anchors).detach().reshape(-1).tolist()]
    ln = len(biases) // 2
    classes = int(num_classes)
    coords = 4
    size = coords + 1 + classes
    outputs = lh * lw * ln * size          # make_region_layer: l.outputs
    stride = lw * lh

    # forward_region_layer_gpu: logistic on entries 0, 1 (x, y) and `coords` (objectness),
    # softmax over the classes; l.output then holds these activations, tw, th stay linear.
    z = output.detach().to(torch.float64).reshape(batch, ln, size, lh, lw)
    act = z.clone()
    act[:, :, 0:2] = torch.sigmoid(z[:, :, 0:2])
    act[:, :, coords] = torch.sigmoid(z[:, :, coords])
    act[:, :, coords + 1:] = torch.softmax(z[:, :, coords + 1:], dim=2)
    l_output = act.reshape(-1).tolist()
    truth = targets.detach().to(torch.float64).tolist()
    warm = bool(seen < warmup_images)

    delta = [0.0] * (batch * outputs)
    scale_of = [0.0] * (batch * outputs)     # our record: s of each squared entry (0..4)
    target_of = [0.0] * (batch * outputs)    # our record: t of each squared entry
    class_of = [-1] * (batch * ln * lh * lw)  # our record: matched class of each anchor

    def entry_index(b, location, entry):     # region_layer.c: entry_index
        n = location // (lw * lh)
        loc = location % (lw * lh)
        return b * outputs + n * lw * lh * size + entry * lw * lh + loc

    def set_delta(index, s, t, o):
        delta[index] = s * (t - o)
        scale_of[index] = s
        target_of[index] = t

    def get_region_box(x, n, index, i, j):   # region_layer.c: get_region_box
        return ((i + x[index + 0 * stride]) / lw,
                (j + x[index + 1 * stride]) / lh,
                math.exp(x[index + 2 * stride]) * biases[2 * n] / lw,
                math.exp(x[index + 3 * stride]) * biases[2 * n + 1] / lh)

    def delta_region_box(tbox, x, n, index, i, j, scale):   # region_layer.c: delta_region_box
        pred = get_region_box(x, n, index, i, j)
        iou = _dk_box_iou(pred, tbox)
        tx = tbox[0] * lw - i
        ty = tbox[1] * lh - j
        tw = math.log(tbox[2] * lw / biases[2 * n])
        th = math.log(tbox[3] * lh / biases[2 * n + 1])
        # darknet: delta = scale * (t - x) with x the activation (s(tx), s(ty), tw, th); the
        # logistic derivative is applied later, in backward_region_layer_gpu.
        set_delta(index + 0 * stride, scale, tx, x[index + 0 * stride])
        set_delta(index + 1 * stride, scale, ty, x[index + 1 * stride])
        set_delta(index + 2 * stride, scale, tw, x[index + 2 * stride])
        set_delta(index + 3 * stride, scale, th, x[index + 3 * stride])
        return iou

    def delta_region_class(out, index, cls, scale, stats):  # region_layer.c: delta_region_class
        # the softmax branch (no tree; tag = !l.softmax = 0): every class gets a delta
        for c in range(classes):
            delta[index + stride * c] = scale * ((1.0 if c == cls else 0.0) - out[index + stride * c])
            if c == cls:
                stats["avg_cat"] += out[index + stride * c]

    st = dict(avg_iou=0.0, recall=0.0, avg_cat=0.0, avg_obj=0.0, avg_anyobj=0.0, count=0)
    for b in range(batch):
        rows = truth[b] if b < len(truth) else []
        # spec: truth row (class, x, y, w, h); darknet's is (x, y, w, h, class) (float_to_box).
        # spec: padding rows (class < 0) are skipped and the loop continues; darknet breaks at
        # the first row with x == 0 ("if(!truth.x) break;").
        boxes = [(r[1], r[2], r[3], r[4]) for r in rows if r[0] >= 0]
        labels = [int(r[0]) for r in rows if r[0] >= 0]

        # forward_region_layer: the no-object / warm-up pass, loops j, i, n
        for j in range(lh):
            for i in range(lw):
                for n in range(ln):
                    box_index = entry_index(b, n * lw * lh + j * lw + i, 0)
                    pred = get_region_box(l_output, n, box_index, i, j)
                    best_iou = 0.0
                    for tbox in boxes:
                        iou = _dk_box_iou(pred, tbox)
                        if iou > best_iou:
                            best_iou = iou
                    obj_index = entry_index(b, n * lw * lh + j * lw + i, coords)
                    st["avg_anyobj"] += l_output[obj_index]
                    set_delta(obj_index, noobject_scale, 0.0, l_output[obj_index])
                    if best_iou > thresh:
                        set_delta(obj_index, 0.0, 0.0, l_output[obj_index])
                    # spec: `seen < warmup_images` (darknet: *(net.seen) < 12800, seen already
                    # counting the current batch: train_network_datum adds it before forward)
                    if warm:
                        prior = ((i + .5) / lw, (j + .5) / lh, biases[2 * n] / lw,
                                 biases[2 * n + 1] / lh)
                        delta_region_box(prior, l_output, n, box_index, i, j, .01)

        # forward_region_layer: the truth loop, in row order (a later truth overwrites an earlier
        # one on the same cell and anchor: box, objectness and class deltas)
        for tbox, cls in zip(boxes, labels):
            best_iou = 0.0
            best_n = 0
            # darknet: i = (truth.x * l.w), truncation; spec: clamped to the grid (x == 1.0 gives
            # i = W in darknet, an entry of the next anchor's first row, or the next image)
            i = min(max(int(math.floor(tbox[0] * lw)), 0), lw - 1)
            j = min(max(int(math.floor(tbox[1] * lh)), 0), lh - 1)
            truth_shift = (0.0, 0.0, tbox[2], tbox[3])
            for n in range(ln):
                box_index = entry_index(b, n * lw * lh + j * lw + i, 0)
                pred = get_region_box(l_output, n, box_index, i, j)
                if bias_match:
                    pred = (pred[0], pred[1], biases[2 * n] / lw, biases[2 * n + 1] / lh)
                pred = (0.0, 0.0, pred[2], pred[3])
                iou = _dk_box_iou(pred, truth_shift)
                if iou > best_iou:
                    best_iou = iou
                    best_n = n

            box_index = entry_index(b, best_n * lw * lh + j * lw + i, 0)
            # pjreddie: l.coord_scale * (2 - truth.w*truth.h); AlexeyAB: l.coord_scale
            cscale = coord_scale * (2 - tbox[2] * tbox[3]) if scale_coord_by_size else coord_scale
            iou = delta_region_box(tbox, l_output, best_n, box_index, i, j, cscale)
            if iou > .5:
                st["recall"] += 1
            st["avg_iou"] += iou

            obj_index = entry_index(b, best_n * lw * lh + j * lw + i, coords)
            st["avg_obj"] += l_output[obj_index]
            set_delta(obj_index, object_scale, 1.0, l_output[obj_index])
            if rescore:
                set_delta(obj_index, object_scale, iou, l_output[obj_index])

            class_index = entry_index(b, best_n * lw * lh + j * lw + i, coords + 1)
            delta_region_class(l_output, class_index, cls, class_scale, st)
            class_of[((b * ln + best_n) * lh + j) * lw + i] = cls
            st["count"] += 1

    # forward_region_layer: *(l.cost) = pow(mag_array(l.delta, ...), 2)
    cost = math.fsum(d * d for d in delta)
    count = st["count"]
    anchors_total = lw * lh * ln * batch
    # spec: averages over nothing are 0 (darknet's printf divides by count = 0)
    stats = [st["avg_iou"] / count if count else 0.0,
             st["recall"] / count if count else 0.0,
             st["avg_obj"] / count if count else 0.0,
             st["avg_anyobj"] / anchors_total if anchors_total else 0.0,
             st["avg_cat"] / count if count else 0.0,
             float(count),
             cost]
    shape5 = (batch, ln, size, lh, lw)
    return dict(
        scale=torch.tensor(scale_of, dtype=torch.float64).reshape(shape5)[:, :, :coords + 1],
        target=torch.tensor(target_of, dtype=torch.float64).reshape(shape5)[:, :, :coords + 1],
        cls=torch.tensor(class_of, dtype=torch.long).reshape(batch, ln, lh, lw),
        delta=torch.tensor(delta, dtype=torch.float64).reshape(batch, ln * size, lh, lw),
        stats=stats, shape5=shape5)


def region_delta_darknet(output, targets, anchors, num_classes, object_scale=5.0,
                         noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6,
                         rescore=True, bias_match=True, seen=0, warmup_images=12800,
                         scale_coord_by_size=True):
    """darknet's l.delta after forward_region_layer: [B, A*(5+C), H, W] float64 (CPU), darknet's
    sign (scale * (target - activation); the logistic derivative not applied). The gradient of
    the 'sum' loss w.r.t. output is -delta * s'(z) on the tx, ty, to channels, -delta elsewhere."""
    return _darknet_pass(output, targets, anchors, num_classes, object_scale, noobject_scale,
                         class_scale, coord_scale, thresh, rescore, bias_match, seen,
                         warmup_images, scale_coord_by_size)["delta"]


def region_loss_darknet(output, targets, anchors, num_classes, object_scale=5.0,
                        noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6,
                        rescore=True, bias_match=True, seen=0, warmup_images=12800,
                        scale_coord_by_size=True, reduction="mean", return_stats=False):
    """The ground truth: targets, scales and masks from darknet's loops (float64), the loss a
    differentiable float64 expression of output, returned in output's dtype."""
    r = _darknet_pass(output, targets, anchors, num_classes, object_scale, noobject_scale,
                      class_scale, coord_scale, thresh, rescore, bias_match, seen, warmup_images,
                      scale_coord_by_size)
    dev = output.device
    s, t, cls = r["scale"].to(dev), r["target"].to(dev), r["cls"].to(dev)
    z = output.to(torch.float64).reshape(r["shape5"])
    o = torch.cat([torch.sigmoid(z[:, :, 0:2]), z[:, :, 2:4], torch.sigmoid(z[:, :, 4:5])], dim=2)
    squared = 0.5 * (s * (t - o) ** 2).sum(dim=(1, 2, 3, 4))
    logp = torch.log_softmax(z[:, :, 5:], dim=2)
    matched = cls >= 0
    ce = -logp.gather(2, cls.clamp(min=0).unsqueeze(2)).squeeze(2)
    per_image = squared + (class_scale * torch.where(matched, ce, 0.0)).sum(dim=(1, 2, 3))
    loss = _reduce(per_image, reduction).to(output.dtype)
    if not return_stats:
        return loss
    return loss, torch.tensor(r["stats"], dtype=_stats_dtype(output.dtype), device=dev)


# ----------------------------------------------------------------------------------------------
# shared tensor helpers (same operations, in the same order, as box.c)
# ----------------------------------------------------------------------------------------------

def _iou(ax, ay, aw, ah, bx, by, bw, bh):
    """box.c's box_iou on center-format boxes, broadcast; 0 where I or U is 0."""
    ow = torch.minimum(ax + aw / 2, bx + bw / 2) - torch.maximum(ax - aw / 2, bx - bw / 2)
    oh = torch.minimum(ay + ah / 2, by + bh / 2) - torch.maximum(ay - ah / 2, by - bh / 2)
    inter = torch.where((ow < 0) | (oh < 0), 0.0, ow * oh)
    union = aw * ah + bw * bh - inter
    ok = (inter != 0) & (union != 0)
    return torch.where(ok, inter / torch.where(ok, union, 1.0), 0.0)


def _heads(output, A, C):
    B, _, H, W = output.shape
    out = output.reshape(B, A, 5 + C, H, W)
    sx = torch.sigmoid(out[:, :, 0])
    sy = torch.sigmoid(out[:, :, 1])
    tw = out[:, :, 2]
    th = out[:, :, 3]
    so = torch.sigmoid(out[:, :, 4])
    logp = torch.log_softmax(out[:, :, 5:], dim=2)
    return sx, sy, tw, th, so, logp


def _decode(sx, sy, tw, th, aw, ah, H, W):
    """Decoded boxes [..., A, H, W] (detached), get_region_box."""
    gx = torch.arange(W, device=sx.device, dtype=sx.dtype)
    gy = torch.arange(H, device=sx.device, dtype=sx.dtype).unsqueeze(1)
    px = (gx + sx.detach()) / W
    py = (gy + sy.detach()) / H
    pw = torch.exp(tw.detach()) * aw.view(-1, 1, 1) / W
    ph = torch.exp(th.detach()) * ah.view(-1, 1, 1) / H
    return px, py, pw, ph


def _prior_scale(seen, warmup_images, dtype, device):
    if isinstance(seen, torch.Tensor):
        one = torch.ones((), dtype=dtype, device=device)
        return torch.where(seen.to(device) < warmup_images, 0.01 * one, 0.0 * one)
    return 0.01 if seen < warmup_images else 0.0


# ----------------------------------------------------------------------------------------------
# 2. vectorized over images and truths
# ----------------------------------------------------------------------------------------------

def region_loss_composite(output, targets, anchors, num_classes, object_scale=5.0,
                          noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6,
                          rescore=True, bias_match=True, seen=0, warmup_images=12800,
                          scale_coord_by_size=True, reduction="mean", return_stats=False):
    """Batched over images and truths, in output's dtype; no host syncs, static shapes."""
    B, _, H, W = output.shape
    dt, dev = output.dtype, output.device
    anchors = torch.as_tensor(anchors, dtype=dt, device=dev)
    A, C = anchors.shape[0], int(num_classes)
    N = A * H * W
    T = targets.shape[1]
    aw, ah = anchors[:, 0], anchors[:, 1]

    sx, sy, tw, th, so, logp = _heads(output, A, C)
    px, py, pw, ph = _decode(sx, sy, tw, th, aw, ah, H, W)          # [B, A, H, W]

    tg = targets.detach().to(dtype=dt, device=dev)
    valid = tg[..., 0] >= 0                                          # [B, T]
    bx = torch.where(valid, tg[..., 1], 0.5)                         # padding rows: harmless
    by = torch.where(valid, tg[..., 2], 0.5)
    bw = torch.where(valid, tg[..., 3], 1.0)
    bh = torch.where(valid, tg[..., 4], 1.0)
    cls = torch.where(valid, tg[..., 0], 0.0).long().clamp(0, max(C - 1, 0))

    # no-object term: best IoU of each decoded box with the image's truths
    if T > 0:
        e = (slice(None), None, None, None, slice(None))             # [B, 1, 1, 1, T]
        iou_all = _iou(px.unsqueeze(-1), py.unsqueeze(-1), pw.unsqueeze(-1), ph.unsqueeze(-1),
                       bx[e], by[e], bw[e], bh[e])
        best = torch.where(valid[e], iou_all, 0.0).amax(dim=-1)
    else:
        best = torch.zeros_like(px)

    # each truth's cell and anchor
    gi = torch.floor(bx * W).clamp(0, W - 1).long()
    gj = torch.floor(by * H).clamp(0, H - 1).long()
    cell = gj * W + gi                                               # [B, T]
    if bias_match:
        mw = (aw / W).expand(B, T, A)
        mh = (ah / H).expand(B, T, A)
    else:
        idx = cell.unsqueeze(1).expand(B, A, T)
        mw = pw.reshape(B, A, H * W).gather(2, idx).transpose(1, 2)
        mh = ph.reshape(B, A, H * W).gather(2, idx).transpose(1, 2)
    zero = torch.zeros((), dtype=dt, device=dev)
    best_n = _iou(zero, zero, mw, mh, zero, zero, bw.unsqueeze(-1), bh.unsqueeze(-1)).argmax(-1)
    pos = (best_n * H + gj) * W + gi                                 # [B, T] in [0, N)

    # per-truth targets
    ttx = bx * W - gi
    tty = by * H - gj
    ttw = torch.log(bw * W / aw[best_n])
    tth = torch.log(bh * H / ah[best_n])
    csc = coord_scale * (2 - bw * bh) if scale_coord_by_size else torch.full_like(bw, coord_scale)
    ppx, ppy = px.reshape(B, N).gather(1, pos), py.reshape(B, N).gather(1, pos)
    ppw, pph = pw.reshape(B, N).gather(1, pos), ph.reshape(B, N).gather(1, pos)
    tiou = _iou(ppx, ppy, ppw, pph, bx, by, bw, bh)
    tobj = tiou if rescore else torch.ones_like(tiou)

    # last truth wins on a shared (cell, anchor): the highest row index per anchor
    tid = torch.arange(T, device=dev).expand(B, T)
    win = torch.full((B, N + 1), -1, dtype=torch.long, device=dev)
    win = win.scatter_reduce(1, torch.where(valid, pos, N), tid, reduce="amax", include_self=True)
    win = win[:, :N]
    matched = (win >= 0).view(B, A, H, W)
    widx = torch.where(win >= 0, win, T)                             # T: a padding column

    def at_winner(v):
        v = torch.cat([v, v.new_zeros(B, 1)], dim=1)
        return v.gather(1, widx).view(B, A, H, W)

    prior = _prior_scale(seen, warmup_images, dt, dev)
    s_box = torch.where(matched, at_winner(csc), prior)
    t_x = torch.where(matched, at_winner(ttx), 0.5)
    t_y = torch.where(matched, at_winner(tty), 0.5)
    t_w = torch.where(matched, at_winner(ttw), 0.0)
    t_h = torch.where(matched, at_winner(tth), 0.0)
    noobj = torch.where(best > thresh, 0.0, torch.full_like(best, noobject_scale))
    s_obj = torch.where(matched, object_scale, noobj)
    t_obj = torch.where(matched, at_winner(tobj), 0.0)
    cls_a = at_winner(cls)                                           # [B, A, H, W]
    logp_t = logp.gather(2, cls_a.unsqueeze(2)).squeeze(2)

    sq = s_box * ((t_x - sx) ** 2 + (t_y - sy) ** 2 + (t_w - tw) ** 2 + (t_h - th) ** 2) \
        + s_obj * (t_obj - so) ** 2
    per_anchor = 0.5 * sq + class_scale * torch.where(matched, -logp_t, 0.0)
    loss = _reduce(per_anchor.sum(dim=(1, 2, 3)), reduction)
    if not return_stats:
        return loss

    with torch.no_grad():
        v = valid.to(dt)
        count = v.sum()
        denom = count.clamp(min=1)
        has = count > 0
        lpd = logp.detach()
        # each truth's own anchor: objectness and the probability of its class
        obj_t = so.detach().reshape(B, N).gather(1, pos)
        flat = ((best_n * C + cls) * H + gj) * W + gi
        cat_t = torch.exp(lpd.reshape(B, A * C * H * W).gather(1, flat))
        avg_iou = torch.where(has, (tiou * v).sum() / denom, 0.0)
        recall = torch.where(has, ((tiou > 0.5) & valid).to(dt).sum() / denom, 0.0)
        avg_obj = torch.where(has, (obj_t * v).sum() / denom, 0.0)
        avg_cat = torch.where(has, (cat_t * v).sum() / denom, 0.0)
        avg_any = so.detach().sum() / B / N if B * N > 0 else so.new_zeros(())
        # darknet_cost: sum of delta^2 over every entry, the final deltas
        so_d, sx_d, sy_d = so.detach(), sx.detach(), sy.detach()
        cost = ((s_box * (t_x - sx_d)) ** 2 + (s_box * (t_y - sy_d)) ** 2
                + (s_box * (t_w - tw.detach())) ** 2 + (s_box * (t_h - th.detach())) ** 2
                + (s_obj * (t_obj - so_d)) ** 2).sum()
        p = torch.exp(lpd)
        pt = torch.exp(logp_t.detach())
        onehot_sq = (1 - pt) ** 2 + ((p * p).sum(dim=2) - pt * pt)   # sum_c (onehot_c - p_c)^2
        cost = cost + (class_scale ** 2 * torch.where(matched, onehot_sq, 0.0)).sum()
        stats = torch.stack([avg_iou, recall, avg_obj, avg_any.to(dt), avg_cat, count, cost])
    return loss, stats.to(_stats_dtype(dt))


# ----------------------------------------------------------------------------------------------
# 3. per-image, per-truth Python loop (build_targets style)
# ----------------------------------------------------------------------------------------------

def region_loss_image_loop(output, targets, anchors, num_classes, object_scale=5.0,
                           noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6,
                           rescore=True, bias_match=True, seen=0, warmup_images=12800,
                           scale_coord_by_size=True, reduction="mean", return_stats=False):
    """A Python loop over images and their truths, targets built in place, in output's dtype."""
    B, _, H, W = output.shape
    dt, dev = output.dtype, output.device
    anchors = torch.as_tensor(anchors, dtype=dt, device=dev)
    A, C = anchors.shape[0], int(num_classes)
    aw, ah = anchors[:, 0], anchors[:, 1]
    sx, sy, tw, th, so, logp = _heads(output, A, C)
    prior = _prior_scale(seen, warmup_images, dt, dev)
    zero = torch.zeros((), dtype=dt, device=dev)

    per_image = []
    iou_sum = recall = obj_sum = cat_sum = zero
    count = 0
    cost = zero
    for b in range(B):
        with torch.no_grad():
            px, py, pw, ph = _decode(sx[b], sy[b], tw[b], th[b], aw, ah, H, W)   # [A, H, W]
            tg = targets[b].detach().to(dtype=dt, device=dev)
            rows = [t for t, c in enumerate(tg[:, 0].tolist()) if c >= 0]
            # no-object: running max of the IoU with each truth
            best = torch.zeros_like(px)
            for t in rows:
                best = torch.maximum(best, _iou(px, py, pw, ph, tg[t, 1], tg[t, 2], tg[t, 3],
                                                tg[t, 4]))
            s_box = torch.full_like(px, prior) if not isinstance(prior, torch.Tensor) \
                else prior.expand_as(px).clone()
            t_x = torch.full_like(px, 0.5)
            t_y = torch.full_like(px, 0.5)
            t_w = torch.zeros_like(px)
            t_h = torch.zeros_like(px)
            s_obj = torch.where(best > thresh, 0.0, torch.full_like(best, noobject_scale))
            t_obj = torch.zeros_like(px)
            cls_map = torch.full((A, H, W), -1, dtype=torch.long, device=dev)
            for t in rows:                       # in row order: a later truth overwrites
                c, x, y, w, h = tg[t, 0], tg[t, 1], tg[t, 2], tg[t, 3], tg[t, 4]
                i = int(torch.floor(x * W).clamp(0, W - 1))
                j = int(torch.floor(y * H).clamp(0, H - 1))
                if bias_match:
                    mw, mh = aw / W, ah / H
                else:
                    mw, mh = pw[:, j, i], ph[:, j, i]
                n = int(_iou(zero, zero, mw, mh, zero, zero, w, h).argmax())
                iou = _iou(px[n, j, i], py[n, j, i], pw[n, j, i], ph[n, j, i], x, y, w, h)
                s_box[n, j, i] = coord_scale * (2 - w * h) if scale_coord_by_size else coord_scale
                t_x[n, j, i] = x * W - i
                t_y[n, j, i] = y * H - j
                t_w[n, j, i] = torch.log(w * W / aw[n])
                t_h[n, j, i] = torch.log(h * H / ah[n])
                s_obj[n, j, i] = object_scale
                t_obj[n, j, i] = iou if rescore else 1.0
                k = int(c)
                cls_map[n, j, i] = k
                if return_stats:
                    iou_sum = iou_sum + iou
                    recall = recall + (iou > 0.5).to(dt)
                    obj_sum = obj_sum + so[b, n, j, i].detach()
                    cat_sum = cat_sum + torch.exp(logp[b, n, k, j, i].detach())
                    count += 1
        matched = cls_map >= 0
        logp_t = logp[b].gather(1, cls_map.clamp(min=0).unsqueeze(1)).squeeze(1)
        sq = s_box * ((t_x - sx[b]) ** 2 + (t_y - sy[b]) ** 2 + (t_w - tw[b]) ** 2
                      + (t_h - th[b]) ** 2) + s_obj * (t_obj - so[b]) ** 2
        per_image.append((0.5 * sq + class_scale * torch.where(matched, -logp_t, 0.0)).sum())
        if return_stats:
            with torch.no_grad():
                d = [s_box * (t_x - sx[b]), s_box * (t_y - sy[b]), s_box * (t_w - tw[b]),
                     s_box * (t_h - th[b]), s_obj * (t_obj - so[b])]
                cost = cost + sum((v * v).sum() for v in d)
                p = torch.exp(logp[b])
                onehot = torch.zeros_like(p).scatter_(1, cls_map.clamp(min=0).unsqueeze(1), 1.0)
                cost = cost + (class_scale ** 2 * ((onehot - p) ** 2).sum(1)
                               * matched.to(dt)).sum()
    per_image = torch.stack(per_image) if per_image else output.new_zeros(0)
    loss = _reduce(per_image, reduction)
    if not return_stats:
        return loss
    n_any = B * A * H * W
    avg_any = so.detach().sum() / n_any if n_any else zero
    avg = (lambda s: s / count) if count else (lambda s: zero)
    stats = torch.stack([avg(iou_sum), avg(recall), avg(obj_sum), avg_any, avg(cat_sum),
                         torch.tensor(float(count), dtype=dt, device=dev), cost])
    return loss, stats.to(_stats_dtype(dt))
