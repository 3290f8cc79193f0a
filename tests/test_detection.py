"""The detection family's special tests: the YOLOv2 region loss against darknet's region layer
(the line-by-line port, lossext/detection/region_reference.py), its edge cases and Module, and
the focal and IoU-family box losses against torchvision and F.cross_entropy (the generic ones
come from lossext/detection/opinfo.py's rows)."""
import math

import pytest
import torch
import torch.nn.functional as F

import lossext.functional as LF
import lossext.nn as LN
from lossext.detection import reference as R
from lossext.detection import region_reference as RR

try:  # the peer (requirements-dev.txt); the wheel test's venv lacks it: its parity tests skip there
    import torchvision.ops as tvo
except ImportError:
    tvo = None
needs_tv = pytest.mark.skipif(tvo is None, reason="torchvision is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")

D64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-10)

# yolov2-voc's anchors (cfg/yolo-voc.cfg), in grid cells
VOC = torch.tensor([(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053),
                    (11.2364, 10.0071)], dtype=D64)
STAT_NAMES = ("avg_iou", "recall", "avg_obj", "avg_anyobj", "avg_cat", "count", "darknet_cost")


# ---- helpers -------------------------------------------------------------------------------------

def _best_anchor(w, h, anchors, H, W):
    """bias_match's anchor: the best shape IoU of (w, h) with (a_w / W, a_h / H), lowest on ties."""
    aw, ah = anchors[:, 0] / W, anchors[:, 1] / H
    inter = torch.minimum(aw, torch.tensor(w, dtype=D64)) * torch.minimum(ah, torch.tensor(h, dtype=D64))
    iou = inter / (aw * ah + w * h - inter)
    return int(iou.argmax())


def _plant(out, C, b, row, n):
    """Set anchor n at row's cell of image b to decode exactly to row's box (IoU 1)."""
    H, W = out.shape[2:]
    _, x, y, w, h = [float(v) for v in row]
    i, j = min(int(x * W), W - 1), min(int(y * H), H - 1)
    fx = min(max(x * W - i, 1e-3), 1 - 1e-3)
    fy = min(max(y * H - j, 1e-3), 1 - 1e-3)
    k = n * (5 + C)
    out[b, k + 0, j, i] = math.log(fx / (1 - fx))
    out[b, k + 1, j, i] = math.log(fy / (1 - fy))
    out[b, k + 2, j, i] = math.log(w * W / float(VOC[n, 0]))
    out[b, k + 3, j, i] = math.log(h * H / float(VOC[n, 1]))


def _case(seed, B=None, C=None, H=None, W=None, T=None):
    """A random head (float64, logits in [-2, 2]) for the 5 VOC anchors and targets with padding
    rows in the middle (and elsewhere); image 0's first truth planted on anchors 0 and 4 (IoU 1:
    one is matched or both beat thresh)."""
    g = torch.Generator().manual_seed(seed)
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    B = ri(2, 3) if B is None else B
    C = ri(3, 20) if C is None else C
    H = ri(5, 13) if H is None else H
    W = ri(5, 13) if W is None else W
    T = ri(3, 8) if T is None else T
    out = torch.rand(B, 5 * (5 + C), H, W, generator=g, dtype=D64) * 4 - 2
    tg = torch.rand(B, T, 5, generator=g, dtype=D64)
    tg[..., 0] = torch.randint(0, C, (B, T), generator=g).double()
    tg[..., 3:] = tg[..., 3:] * 0.6 + 0.02
    pad = torch.rand(B, T, generator=g) < 0.2
    pad[:, 0] = False
    if T >= 3:
        pad[:, T // 2] = True  # a padding row in the middle of every image
    tg[..., 0] = torch.where(pad, torch.full_like(tg[..., 0], -1.0), tg[..., 0])
    if B:  # image 0's other truths out of its first truth's cell (planted anchors are its alone)
        cell = lambda r: (min(int(r[1] * W), W - 1), min(int(r[2] * H), H - 1))  # noqa: E731
        for t in range(1, T):
            while cell(tg[0, t]) == cell(tg[0, 0]):
                tg[0, t, 1] = (tg[0, t, 1] + 0.37) % 1.0
        _plant(out, C, 0, tg[0, 0], 0)
        _plant(out, C, 0, tg[0, 0], 4)
    return out, tg, C


def _run(fn, out, tg, C, reduction="sum", anchors=VOC, **kw):
    """(loss, d loss / d output, stats [7]) of an op or a reference; 'none' backpropagates a fixed
    random grad_output, 'sum' and 'mean' 1."""
    x = out.detach().clone().requires_grad_(True)
    loss, stats = fn(x, tg, anchors, C, reduction=reduction, return_stats=True, **kw)
    if isinstance(stats, tuple):
        stats = torch.stack(tuple(stats))
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=D64).to(loss)
    go = go if loss.dim() else torch.ones_like(loss)
    (grad,) = torch.autograd.grad(loss, x, go)
    return loss.detach(), grad, stats


def _close(a, b, msg="", **tol):
    torch.testing.assert_close(a.to(D64), b.to(D64), **(tol or TIGHT), msg=lambda m: f"{msg}\n{m}")


def _darknet_all(out, tg, C, reductions=("none", "sum", "mean"), **kw):
    """darknet's loop run once ('none'): {reduction: (loss, grad, stats)}, 'sum' and 'mean' its
    per-image losses' sum and mean, their gradients by autograd (grad_output as _run's)."""
    x = out.detach().clone().to(D64).requires_grad_(True)
    per, stats = RR.region_loss_darknet(x, tg, VOC, C, reduction="none", return_stats=True, **kw)
    res = {}
    for red in reductions:
        if red == "none":
            loss = per
            go = torch.randn(per.shape, generator=torch.Generator().manual_seed(1), dtype=D64)
        else:
            loss = per.sum() if red == "sum" else per.sum() / per.shape[0]
            go = torch.ones((), dtype=D64)
        (grad,) = torch.autograd.grad(loss, x, go, retain_graph=True)
        res[red] = (loss.detach(), grad, stats)
    return res


def _assert_matches_darknet(out, tg, C, reductions=("none", "sum", "mean"), **kw):
    ref = _darknet_all(out, tg, C, reductions, **kw)
    for red in reductions:
        loss, grad, stats = _run(LF.yolov2_region_loss, out, tg, C, red, **kw)
        rl, rg, rs = ref[red]
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and torch.isfinite(stats).all()
        _close(loss, rl, f"loss {red} {kw}")
        _close(grad, rg, f"grad {red} {kw}")
        for k, name in enumerate(STAT_NAMES):
            _close(stats[k], rs[k], f"stats.{name} {kw}")
    return stats


def _sig_mask(out, C):
    """1 on the tx, ty, to channels of every anchor, 0 elsewhere."""
    m = torch.zeros(5 + C, dtype=torch.bool)
    m[[0, 1, 4]] = True
    return m.repeat(out.shape[1] // (5 + C)).view(1, -1, 1, 1)


# ---- region loss vs darknet's loop ----------------------------------------------------------------

@pytest.mark.parametrize("warm", [True, False], ids=["warmup", "no-warmup"])
@pytest.mark.parametrize("rescore", [True, False], ids=["rescore", "no-rescore"])
@pytest.mark.parametrize("bias_match", [True, False], ids=["bias-match", "pred-match"])
@pytest.mark.parametrize("by_size", [True, False], ids=["coord-by-size", "coord-flat"])
def test_region_matches_darknet_loop(warm, rescore, bias_match, by_size):
    """Loss (every reduction), gradient and the 7 stats equal darknet's loop; the 'sum' gradient
    is darknet's delta times the logistic derivative; darknet_cost = sum(delta^2); the vectorized
    and per-image references agree too."""
    seed = 8 * warm + 4 * rescore + 2 * bias_match + by_size
    out, tg, C = _case(seed)
    # seen just below / at the threshold: the prior's on / off boundary
    kw = dict(rescore=rescore, bias_match=bias_match, scale_coord_by_size=by_size, seen=12799 if warm else 12800)
    stats = _assert_matches_darknet(out, tg, C, **kw)
    assert stats[5] == (tg[..., 0] >= 0).sum()

    delta = RR.region_delta_darknet(out, tg, VOC, C, **kw)
    _, grad, _ = _run(LF.yolov2_region_loss, out, tg, C, "sum", **kw)
    s = torch.sigmoid(out)
    _close(grad, torch.where(_sig_mask(out, C), -delta * s * (1 - s), -delta), "grad vs -delta")
    _close(stats[6], (delta ** 2).sum(), "darknet_cost vs sum(delta^2)")
    # the case exercises the thresh branch: some anchor's objectness delta is dropped to 0
    obj = delta.view(out.shape[0], 5, 5 + C, *out.shape[2:])[:, :, 4]
    assert (obj == 0).any()
    # prior on: every unmatched anchor's tw has a delta; off: only the matched ones
    tw = delta.view(out.shape[0], 5, 5 + C, *out.shape[2:])[:, :, 2]
    assert ((tw != 0).float().mean() > 0.9) == warm

    ol, og, os_ = _run(LF.yolov2_region_loss, out, tg, C, "none", **kw)
    for ref in (RR.region_loss_composite, RR.region_loss_image_loop):
        rl, rg, rs = _run(ref, out, tg, C, "none", **kw)
        _close(rl, ol, f"{ref.__name__} loss")
        _close(rg, og, f"{ref.__name__} grad")
        _close(rs, os_, f"{ref.__name__} stats")


def test_region_scales_and_thresh_match_darknet():
    """Non-default object, noobject, class and coord scales and a low thresh: darknet's loop."""
    out, tg, C = _case(101, B=2, C=6, H=9, W=11, T=8)
    _assert_matches_darknet(out, tg, C, object_scale=2.0, noobject_scale=0.5, class_scale=3.0, coord_scale=0.7,
                            thresh=0.3, seen=0)


def test_region_float32_matches_darknet_float64():
    """A float32 head against the float64 darknet loop on the same values, loosely."""
    out, tg, C = _case(202, B=3, C=20, H=13, W=13, T=8)
    out32, tg32 = out.float(), tg.float()
    ref = _darknet_all(out32.double(), tg32.double(), C)
    for red in ("none", "sum", "mean"):
        loss, grad, stats = _run(LF.yolov2_region_loss, out32, tg32, C, red)
        assert loss.dtype == grad.dtype == torch.float32
        rl, rg, rs = ref[red]
        _close(loss, rl, red, rtol=1e-5, atol=1e-4)
        _close(grad, rg, red, rtol=1e-4, atol=1e-5)
        _close(stats, rs, red, rtol=1e-5, atol=1e-5)


# ---- region loss edge cases ---------------------------------------------------------------------

def test_region_no_truths():
    """No truths in one image, in the whole batch, only padding, T = 0: darknet's loop; without
    truths the loss is the no-object term plus the warm-up prior, by hand, and the stats' empty
    averages are 0."""
    out, tg, C = _case(303, B=3, C=4, H=6, W=7, T=5)
    tg[1, :, 0] = -1.0  # image 1: only padding
    for seen in (0, 20000):
        _assert_matches_darknet(out, tg, C, seen=seen)
    pads = torch.full((3, 4, 5), -1.0, dtype=D64)
    pads[..., 1:] = torch.rand(3, 4, 4, dtype=D64) * 0.5 + 0.1  # padding rows with box-like values
    for empty in (pads, torch.zeros(3, 0, 5, dtype=D64)):
        for seen in (0, 20000):
            stats = _assert_matches_darknet(out, empty, C, seen=seen)
            z = out.view(3, 5, 5 + C, 6, 7)
            sx, sy, so = torch.sigmoid(z[:, :, 0]), torch.sigmoid(z[:, :, 1]), torch.sigmoid(z[:, :, 4])
            by_hand = 0.5 * (so ** 2).sum((1, 2, 3))
            if seen < 12800:
                by_hand = by_hand + 0.5 * 0.01 * ((0.5 - sx) ** 2 + (0.5 - sy) ** 2 + z[:, :, 2] ** 2
                                                  + z[:, :, 3] ** 2).sum((1, 2, 3))
            _close(LF.yolov2_region_loss(out, empty, VOC, C, seen=seen, reduction="none"), by_hand)
            assert stats[[0, 1, 2, 4, 5]].tolist() == [0.0] * 5
            _close(stats[3], so.mean())
            assert not torch.isnan(stats).any()


def test_region_borders_tiny_boxes_and_crowded_cells():
    """Boxes touching the borders, x = 1.0 / y = 1.0 (clamped to the last cell), x = y = 0,
    several truths in one cell, tiny boxes: darknet's loop, finite."""
    C, H, W = 3, 7, 7
    rows = torch.tensor([[[0, 1.0, 1.0, 0.3, 0.2],       # the bottom-right corner
                          [1, 0.0, 0.0, 0.2, 0.2],       # the top-left corner
                          [2, 0.15, 0.5, 0.3, 0.4],      # touching the left border
                          [-1, 0.0, 0.0, 0.0, 0.0],      # padding in the middle
                          [1, 0.52, 0.51, 0.05, 0.6],    # three truths in one cell, other anchors
                          [0, 0.53, 0.52, 0.6, 0.05],
                          [2, 0.55, 0.56, 0.9, 0.9],
                          [1, 0.3, 0.7, 1e-3, 1e-3]],    # a tiny box
                         [[2, 1.0, 0.0, 0.5, 0.999],     # the top-right corner, a huge box
                          [0, 0.99, 0.999, 1e-3, 2e-3],  # a tiny box in the last cell
                          [-1, 0.5, 0.5, 0.5, 0.5],
                          [1, 0.5, 0.5, 1.0, 1.0],       # the whole image
                          [0, 0.0, 1.0, 0.1, 0.1],
                          [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]]], dtype=D64)
    out = torch.rand(2, 5 * (5 + C), H, W, generator=torch.Generator().manual_seed(4), dtype=D64) * 4 - 2
    for seen in (0, 20000):
        for bias_match in (True, False):
            stats = _assert_matches_darknet(out, rows, C, seen=seen, bias_match=bias_match)
            assert stats[5] == 11
    # x = y = 1.0 goes to the last cell: its matched anchor's class gradient is there
    _, grad, _ = _run(LF.yolov2_region_loss, out, rows, C, "sum", seen=20000)
    n = _best_anchor(0.3, 0.2, VOC, H, W)
    k = n * (5 + C) + 5
    p = torch.softmax(out[0, k:k + C, H - 1, W - 1], 0)
    _close(grad[0, k:k + C, H - 1, W - 1], p - F.one_hot(torch.tensor(0), C).double())


def test_region_same_cell_and_anchor_later_truth_wins():
    """Two truths on one cell and anchor: the later one's class and box targets win, and
    stats.count counts both."""
    C, H, W = 4, 5, 5
    out = torch.rand(1, 5 * (5 + C), H, W, generator=torch.Generator().manual_seed(5), dtype=D64) * 4 - 2
    first = [1, 0.52, 0.55, 0.30, 0.40]
    later = [3, 0.58, 0.45, 0.32, 0.41]
    n = _best_anchor(0.30, 0.40, VOC, H, W)
    assert n == _best_anchor(0.32, 0.41, VOC, H, W)
    k, i, j = n * (5 + C), 2, 2
    for rows, winner in (([first, later], later), ([later, first], first)):
        tg = torch.tensor([rows + [[-1, 0, 0, 0, 0]]], dtype=D64)
        stats = _assert_matches_darknet(out, tg, C, seen=20000)
        assert stats[5] == 2
        _, grad, _ = _run(LF.yolov2_region_loss, out, tg, C, "sum", seen=20000)
        z = out[0, :, j, i]
        p = torch.softmax(z[k + 5:k + 5 + C], 0)
        _close(grad[0, k + 5:k + 5 + C, j, i], p - F.one_hot(torch.tensor(winner[0]), C).double())
        s = 2 - winner[3] * winner[4]  # coord_scale (2 - w h) of the winner
        _close(grad[0, k + 2, j, i], -s * (math.log(winner[3] * W / float(VOC[n, 0])) - z[k + 2]))
        sx = torch.sigmoid(z[k])
        _close(grad[0, k, j, i], -s * (winner[1] * W - i - sx) * sx * (1 - sx))


def test_region_huge_logits_finite():
    """Logits of +-50 everywhere (decoded boxes of e^50 anchors): loss and gradient finite and
    darknet's."""
    out, tg, C = _case(404, B=2, C=5, H=6, W=6, T=6)
    big = torch.where(out > 0, 50.0, -50.0).to(D64)
    for seen in (0, 20000):
        ref = _darknet_all(big, tg, C, seen=seen)
        for red in ("none", "sum", "mean"):
            loss, grad, stats = _run(LF.yolov2_region_loss, big, tg, C, red, seen=seen)
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and torch.isfinite(stats).all()
            rl, rg, rs = ref[red]
            _close(loss, rl, rtol=1e-10, atol=1e-8)
            _close(grad, rg, rtol=1e-10, atol=1e-8)
            _close(stats, rs, rtol=1e-10, atol=1e-8)


def test_region_empty_batch():
    """B = 0: 'mean' is NaN (0 / 0), 'sum' 0, 'none' [0]; the stats are 0, not NaN."""
    out = torch.zeros(0, 5 * 8, 4, 4, dtype=D64, requires_grad=True)
    tg = torch.zeros(0, 3, 5, dtype=D64)
    assert torch.isnan(LF.yolov2_region_loss(out, tg, VOC, 3, reduction="mean"))
    total, stats = LF.yolov2_region_loss(out, tg, VOC, 3, reduction="sum", return_stats=True)
    assert total.item() == 0.0
    assert torch.stack(tuple(stats)).tolist() == [0.0] * 7
    assert LF.yolov2_region_loss(out, tg, VOC, 3, reduction="none").shape == (0,)
    (g,) = torch.autograd.grad(total, out)
    assert g.shape == out.shape


# ---- YOLOv2RegionLoss -------------------------------------------------------------------------------

def test_region_module_seen_advances_in_train_only():
    """Each training-mode forward advances seen by the batch size; eval forwards do not; seen is
    in the state dict and loading it restores the counter."""
    out, tg, C = _case(505, B=3, C=3, H=5, W=5, T=4)
    m = LN.YOLOv2RegionLoss(VOC, C)
    assert m.seen.item() == 0
    m(out, tg)
    m(out, tg)
    assert m.seen.item() == 6
    m.eval()
    m(out, tg)
    assert m.seen.item() == 6
    sd = m.state_dict()
    assert "seen" in sd and sd["seen"].item() == 6
    m2 = LN.YOLOv2RegionLoss(VOC, C)
    m2.load_state_dict(sd)
    assert m2.seen.item() == 6


def test_region_module_warmup_switches_off():
    """The warm-up prior is on while seen (after the batch's increment) < warmup_images and off
    from seen >= warmup_images: each forward equals the functional at the matching seen."""
    out, tg, C = _case(606, B=2, C=3, H=5, W=5, T=4)
    m = LN.YOLOv2RegionLoss(VOC, C, warmup_images=5, reduction="sum")
    f = lambda seen: LF.yolov2_region_loss(out, tg, VOC, C, seen=seen, warmup_images=5, reduction="sum")  # noqa: E731
    assert not torch.allclose(f(4), f(5))  # the prior matters here
    for seen in (2, 4, 6, 8):
        x = out.clone().requires_grad_(True)
        loss = m(x, tg)
        assert m.seen.item() == seen
        _close(loss, f(seen), rtol=0, atol=1e-12)
        _close(loss, RR.region_loss_darknet(out, tg, VOC, C, seen=seen, warmup_images=5, reduction="sum"))
    m.seen.fill_(3)  # resumed at 3: the next batch takes it to 5, off
    _close(m(out, tg), f(5), rtol=0, atol=1e-12)


# ---- focal and box losses vs torchvision --------------------------------------------------------------

def _grads(fn, *tensors, seed=2):
    xs = [t.detach().clone().requires_grad_(True) for t in tensors]
    loss = fn(*xs)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=D64).to(loss)
    gs = torch.autograd.grad(loss, xs, go)
    return loss.detach(), gs


@needs_tv
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.0, 0.5), (1.0, 0.0), (0.7, 3.0), (0.5, 1.0)])
def test_sigmoid_focal_matches_torchvision(alpha, gamma, reduction):
    """Values and gradients (logits and soft targets) of torchvision.ops.sigmoid_focal_loss."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 37, generator=g, dtype=D64) * 4
    y = torch.where(torch.rand(6, 37, generator=g) < 0.5, 0.0, 1.0).to(D64)
    y[0] = torch.rand(37, generator=g, dtype=D64)  # soft labels
    ours = _grads(lambda a, b: LF.sigmoid_focal_loss(a, b, alpha, gamma, reduction), x, y)
    theirs = _grads(lambda a, b: tvo.sigmoid_focal_loss(a, b, alpha, gamma, reduction), x, y)
    _close(ours[0], theirs[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(ours[1], theirs[1]):
        _close(a, b, rtol=1e-10, atol=1e-12)


def test_sigmoid_focal_argument_checks():
    """alpha outside [0, 1] other than -1 and a bad reduction raise ValueError (as torchvision);
    alpha = -1 disables the weighting (twice alpha = 0.5's loss)."""
    x, y = torch.randn(10, dtype=D64), (torch.rand(10) < 0.5).to(D64)
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match="alpha"):
            LF.sigmoid_focal_loss(x, y, alpha=bad)
        with pytest.raises(ValueError, match="alpha"):
            LN.SigmoidFocalLoss(alpha=bad)
        if tvo is not None:
            with pytest.raises(ValueError):
                tvo.sigmoid_focal_loss(x, y, alpha=bad)
    with pytest.raises(ValueError, match="reduction"):
        LF.sigmoid_focal_loss(x, y, reduction="avg")
    if tvo is not None:
        with pytest.raises(ValueError):
            tvo.sigmoid_focal_loss(x, y, reduction="avg")
    _close(LF.sigmoid_focal_loss(x, y, alpha=-1.0), 2 * LF.sigmoid_focal_loss(x, y, alpha=0.5))
    if tvo is not None:
        _close(LF.sigmoid_focal_loss(x, y, alpha=-1.0), tvo.sigmoid_focal_loss(x, y, alpha=-1.0))


def _valid_boxes(n=48, seed=8):
    """Random valid box pairs, with identical pairs, shared edges (min/max ties), containment
    and disjoint pairs."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, n, 2, generator=g, dtype=D64) * 6
    wh = torch.rand(2, n, 2, generator=g, dtype=D64) * 4 + 0.1
    b1, b2 = torch.cat([xy[0], xy[0] + wh[0]], -1), torch.cat([xy[1], xy[1] + wh[1]], -1)
    b2[:n // 2] = b1[:n // 2] + (torch.rand(n // 2, 4, generator=g, dtype=D64) - 0.5) * 0.8  # overlapping
    b2[:n // 2, 2:] = torch.maximum(b2[:n // 2, 2:], b2[:n // 2, :2] + 0.05)
    b2[0] = b1[0]                                                        # identical
    b2[1] = torch.tensor([b1[1, 0], b1[1, 1] + 0.3, b1[1, 2], b1[1, 3] + 0.7])      # shared x edges
    b2[2] = torch.tensor([b1[2, 0] - 0.5, b1[2, 1], b1[2, 2] - 0.2, b1[2, 3]])      # shared y edges
    b2[3] = torch.tensor([b1[3, 0], b1[3, 1], b1[3, 2] + 1.0, b1[3, 3] + 1.0])      # shared corner
    b2[4] = torch.tensor([b1[4, 2], b1[4, 1], b1[4, 2] + 1.0, b1[4, 3]])            # touching
    b2[5] = (b1[5] + torch.tensor([0.1, 0.1, -0.1, -0.1], dtype=D64))               # contained
    b2[6] = b1[6] + 20.0                                                            # disjoint
    return b1, b2


_TV_BOX = {"giou": "generalized_box_iou_loss", "diou": "distance_box_iou_loss", "ciou": "complete_box_iou_loss"}


@needs_tv
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("mode", ["giou", "diou", "ciou"])
def test_box_losses_match_torchvision(mode, reduction):
    """Values and gradients (both boxes) of torchvision's generalized / distance / complete box
    IoU losses on valid boxes, ties included; 'mean' of no boxes is 0 for both."""
    b1, b2 = _valid_boxes()
    tv = getattr(tvo, _TV_BOX[mode])
    ours = _grads(lambda a, b: LF.box_iou_loss(a, b, mode, reduction=reduction), b1, b2)
    theirs = _grads(lambda a, b: tv(a, b, reduction=reduction), b1, b2)
    _close(ours[0], theirs[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(ours[1], theirs[1]):
        _close(a, b, rtol=1e-10, atol=1e-12)
    e = torch.zeros(0, 4, dtype=D64)
    want = tv(e, e, reduction=reduction)
    got = LF.box_iou_loss(e, e, mode, reduction=reduction)
    assert got.shape == want.shape and (got == 0).all() and (want == 0).all()


@needs_tv
def test_iou_mode_matches_box_iou():
    """'iou' is 1 - diag(box_iou), up to eps (torchvision's box_iou has none)."""
    b1, b2 = _valid_boxes()
    ours = LF.box_iou_loss(b1, b2, "iou")
    _close(ours, 1 - torch.diagonal(tvo.box_iou(b1, b2)), rtol=0, atol=1e-6)


# ---- degenerate boxes ------------------------------------------------------------------------------

_DEGENERATE = torch.tensor([
    ([0, 0, 0, 2], [0, 0, 1, 2]),    # zero width, a shared edge
    ([0, 0, 2, 0], [0, 0, 2, 1]),    # zero height
    ([1, 1, 1, 1], [0, 0, 2, 2]),    # a point inside a box
    ([1, 1, 1, 1], [1, 1, 1, 1]),    # identical points
    ([0, 0, 0, 0], [3, 4, 3, 4]),    # two points apart
    ([3, 0, 1, 2], [0, 0, 2, 2]),    # inverted width
    ([0, 3, 2, 1], [0, 0, 2, 2]),    # inverted height
    ([2, 2, 0, 0], [2, 2, 0, 0]),    # an inverted box with itself
    ([0, 0, 2, 2], [0, 0, 2, 2]),    # identical boxes
    ([0, 0, 0, 2], [0, 0, 0, 2]),    # a zero-width box with itself
], dtype=D64)


@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "ciou"])
def test_box_degenerate_finite(mode):
    """Zero width, zero height, points, an inverted box, identical boxes, both orders: values
    and gradients finite, losses in [0, 3]."""
    for b1, b2 in ((_DEGENERATE[:, 0], _DEGENERATE[:, 1]), (_DEGENERATE[:, 1], _DEGENERATE[:, 0])):
        loss, (g1, g2) = _grads(lambda a, b: LF.box_iou_loss(a, b, mode), b1, b2)
        assert torch.isfinite(loss).all() and torch.isfinite(g1).all() and torch.isfinite(g2).all()
        assert ((loss >= 0) & (loss <= 3)).all()
        ref = R.box_iou_loss(b1, b2, mode)
        _close(loss, ref, rtol=1e-10, atol=1e-12)


def test_giou_of_empty_box_with_itself_is_one():
    """GIoU loss of an empty box (point, zero width, zero height, inverted) with itself is 1, as
    torchvision's (for the non-inverted ones)."""
    empty = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 2], [0, 0, 3, 0], [2, 2, 0, 0]], dtype=D64)
    _close(LF.box_iou_loss(empty, empty, "giou"), torch.ones(4, dtype=D64), rtol=0, atol=1e-12)
    if tvo is not None:
        _close(tvo.generalized_box_iou_loss(empty[:3], empty[:3]), torch.ones(3, dtype=D64), rtol=0, atol=1e-12)


def test_ciou_zero_height_finite():
    """CIoU of a zero-height box: a finite gradient (atan2(w, h) = pi/2)."""
    b1 = torch.tensor([[0.0, 0.0, 2.0, 0.0], [1.0, 1.0, 3.0, 1.0]], dtype=D64)
    b2 = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0]], dtype=D64)
    loss, (g1, g2) = _grads(lambda a, b: LF.box_iou_loss(a, b, "ciou"), b1, b2)
    assert torch.isfinite(loss).all() and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    if tvo is not None:  # torchvision: the same value, a NaN gradient (d atan(w / h) / dh = 0 * inf)
        tl, (t1, _) = _grads(lambda a, b: tvo.complete_box_iou_loss(a, b), b1, b2)
        _close(loss, tl, rtol=1e-10, atol=1e-12)
        assert torch.isnan(t1).any()


def test_inverted_box_is_empty():
    """A box with x2 < x1 (or y2 < y1) is an empty box: its IoU loss equals that of the same box
    with x2 = x1 against any partner; in every mode values and gradients are the reference's
    (sides clamped at 0)."""
    g = torch.Generator().manual_seed(9)
    xy = torch.rand(20, 2, generator=g, dtype=D64) * 3
    partners = torch.cat([xy, xy + torch.rand(20, 2, generator=g, dtype=D64) * 3 + 0.1], -1)
    inv = torch.tensor([2.0, 0.5, 1.0, 2.5], dtype=D64).expand(20, 4)
    flat = torch.tensor([2.0, 0.5, 2.0, 2.5], dtype=D64).expand(20, 4)
    _close(LF.box_iou_loss(inv, partners, "iou"), LF.box_iou_loss(flat, partners, "iou"), rtol=0, atol=1e-15)
    inv_h = torch.tensor([0.5, 2.0, 2.5, 1.0], dtype=D64).expand(20, 4)
    flat_h = torch.tensor([0.5, 2.0, 2.5, 2.0], dtype=D64).expand(20, 4)
    _close(LF.box_iou_loss(inv_h, partners, "iou"), LF.box_iou_loss(flat_h, partners, "iou"), rtol=0, atol=1e-15)
    # every mode: the float64 reference's empty-box semantics (sides max(x2 - x1, 0)), gradients too
    both = torch.tensor([2.0, 2.5, 1.0, 0.5], dtype=D64).expand(20, 4)  # inverted in x and y
    for box in (inv, inv_h, both):
        for mode in ("iou", "giou", "diou", "ciou"):
            loss, (g1, g2) = _grads(lambda a, b: LF.box_iou_loss(a, b, mode), box, partners)
            assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
            rl, (r1, r2) = _grads(lambda a, b: R.box_iou_loss(a, b, mode), box, partners)
            _close(loss, rl, mode, rtol=1e-10, atol=1e-12)
            _close(g1, r1, mode, rtol=1e-10, atol=1e-12)
            _close(g2, r2, mode, rtol=1e-10, atol=1e-12)


# ---- softmax focal loss -------------------------------------------------------------------------------

def _logits(*shape, seed=10):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64) * 3


def test_softmax_focal_gamma0_is_cross_entropy():
    """gamma = 0 is F.cross_entropy: values and gradients, 'mean', 'sum', 'none', also
    [N, C, H, W] with ignored positions."""
    g = torch.Generator().manual_seed(11)
    cases = [(_logits(9, 7), torch.randint(0, 7, (9,), generator=g)),
             (_logits(3, 5, 4, 6), torch.randint(0, 5, (3, 4, 6), generator=g))]
    cases[1][1][0, :2] = -100
    for x, t in cases:
        for red in ("mean", "sum", "none"):
            ours = _grads(lambda a: LF.softmax_focal_loss(a, t, gamma=0.0, reduction=red), x)
            theirs = _grads(lambda a: F.cross_entropy(a, t, reduction=red), x)
            _close(ours[0], theirs[0], rtol=1e-12, atol=1e-12)
            _close(ours[1][0], theirs[1][0], rtol=1e-12, atol=1e-12)


def test_softmax_focal_alpha_float_is_filled_tensor():
    """A float alpha equals the per-class tensor filled with it (values and gradients), and
    scales the alpha-free loss."""
    x, t = _logits(8, 6), torch.tensor([0, 5, 2, 2, 1, -100, 3, 4])
    for red in ("mean", "sum", "none"):
        a = _grads(lambda z: LF.softmax_focal_loss(z, t, gamma=2.0, alpha=0.3, reduction=red), x)
        b = _grads(lambda z: LF.softmax_focal_loss(z, t, gamma=2.0, alpha=torch.full((6,), 0.3, dtype=D64),
                                                   reduction=red), x)
        _close(a[0], b[0], rtol=1e-14, atol=0)
        _close(a[1][0], b[1][0], rtol=1e-14, atol=0)
        _close(a[0], 0.3 * LF.softmax_focal_loss(x, t, gamma=2.0, reduction=red), rtol=1e-13, atol=0)


def test_softmax_focal_ignored_rows():
    """Ignored rows give 0 loss and a zero gradient; 'mean' is the sum over the count of rows
    not ignored."""
    x = _logits(10, 4)
    t = torch.tensor([0, 3, 7, 1, 7, 2, 2, 7, 0, 1])
    keep = t != 7
    per, (g,) = _grads(lambda z: LF.softmax_focal_loss(z, t, gamma=1.5, ignore_index=7, reduction="none"), x)
    assert (per[~keep] == 0).all() and (per[keep] > 0).all()
    assert (g[~keep] == 0).all() and (g[keep] != 0).all()
    _close(per, R.softmax_focal_loss(x, t, gamma=1.5, ignore_index=7, reduction="none"), rtol=1e-12, atol=1e-14)
    mean = LF.softmax_focal_loss(x, t, gamma=1.5, ignore_index=7)
    total = LF.softmax_focal_loss(x, t, gamma=1.5, ignore_index=7, reduction="sum")
    _close(mean, total / keep.sum(), rtol=1e-14, atol=0)
    _close(total, per.sum(), rtol=1e-14, atol=0)


def test_softmax_focal_weight_with_ignore_index():
    """With a weight of size C, ignored labels (-100, or C: outside the weight) are never used as
    an index; at gamma = 0 the weighted 'sum' and 'none' are F.cross_entropy's."""
    x = _logits(7, 5)
    w = torch.tensor([0.5, 2.0, 1.0, 0.1, 3.0], dtype=D64)
    for ig in (-100, 5, 1000):
        t = torch.tensor([0, ig, 4, 3, ig, 1, 2])
        for red in ("sum", "none"):
            ours = _grads(lambda z: LF.softmax_focal_loss(z, t, gamma=0.0, weight=w, ignore_index=ig, reduction=red), x)
            theirs = _grads(lambda z: F.cross_entropy(z, t, weight=w, ignore_index=ig, reduction=red), x)
            _close(ours[0], theirs[0], rtol=1e-12, atol=1e-14)
            _close(ours[1][0], theirs[1][0], rtol=1e-12, atol=1e-14)
        m = LF.softmax_focal_loss(x, t, gamma=2.0, weight=w, alpha=0.25, ignore_index=ig)
        assert torch.isfinite(m)
        m2 = LN.SoftmaxFocalLoss(gamma=2.0, alpha=0.25, weight=w, ignore_index=ig)(x, t)
        _close(m, m2, rtol=0, atol=0)


def test_softmax_focal_all_ignored():
    """Every row ignored: 'mean' is NaN and the gradient 0 (as F.cross_entropy), 'sum' 0."""
    x, t = _logits(4, 3), torch.full((4,), -100)
    for gamma in (0.0, 2.0):
        loss, (g,) = _grads(lambda z: LF.softmax_focal_loss(z, t, gamma=gamma), x)
        assert torch.isnan(loss) and (g == 0).all()
        ce, (gce,) = _grads(lambda z: F.cross_entropy(z, t), x)
        assert torch.isnan(ce) and (gce == 0).all()
        s, (gs,) = _grads(lambda z: LF.softmax_focal_loss(z, t, gamma=gamma, reduction="sum"), x)
        assert s.item() == 0.0 and (gs == 0).all()


# ---- sigmoid focal loss ------------------------------------------------------------------------------

_SATURATED = (torch.tensor([-100.0, -40.0, 40.0, 100.0] * 2, dtype=D64),
              torch.tensor([0.0] * 4 + [1.0] * 4, dtype=D64))


def test_sigmoid_focal_saturated_logits_finite():
    """Logits of +-40, +-100 with gamma 0.5: a finite gradient, the float64 reference's (whose
    powers stay positive there)."""
    x, y = _SATURATED
    for gamma in (0.5, 0.25, 2.0):
        loss, (gx, gy) = _grads(lambda a, b: LF.sigmoid_focal_loss(a, b, 0.25, gamma, "sum"), x, y)
        assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
        rl, (rx, ry) = _grads(lambda a, b: R.sigmoid_focal_loss(a, b, 0.25, gamma, "sum"), x, y)
        _close(loss, rl, rtol=1e-12, atol=0)
        _close(gx, rx, rtol=1e-8, atol=0)
        _close(gy, ry, rtol=1e-8, atol=1e-12)


@needs_tv
def test_sigmoid_focal_saturated_where_torchvision_is_nan():
    """Where torchvision's gradient at saturated logits is NaN (0 * inf), ours is finite; where
    it is finite they agree."""
    x, y = _SATURATED
    _, (gx, _) = _grads(lambda a, b: LF.sigmoid_focal_loss(a, b, 0.25, 0.5, "none"), x, y)
    _, (tx, _) = _grads(lambda a, b: tvo.sigmoid_focal_loss(a, b, 0.25, 0.5, "none"), x, y)
    assert torch.isfinite(gx).all()
    ok = torch.isfinite(tx)
    _close(gx[ok], tx[ok], rtol=1e-10, atol=1e-12)


# ---- bad input --------------------------------------------------------------------------------------

def _region_args():
    out = torch.rand(2, 2 * 8, 4, 4)
    tg = torch.tensor([[[0, .5, .5, .2, .2]], [[2, .3, .7, .1, .4]]])
    return out, tg, VOC[:2]


def _bad_class():
    out, tg, anc = _region_args()
    tg[1, 0, 0] = 3.0
    return lambda: LF.yolov2_region_loss(out, tg, anc, 3)


def _bad_wh(col, v):
    out, tg, anc = _region_args()
    tg[1, 0, col] = v
    return lambda: LF.yolov2_region_loss(out, tg, anc, 3)


@pytest.mark.parametrize("call,exc,match", [
    (_bad_class(), IndexError, r"^yolov2_region_loss: targets has class 3 at \[1, 0\]"),
    (lambda: LF.yolov2_region_loss(_region_args()[0][:, :15], *_region_args()[1:], 3), ValueError,
     r"^yolov2_region_loss: output has 15 channels, but A \* \(5 \+ num_classes\) = 2 \* \(5 \+ 3\) = 16"),
    (lambda: LN.YOLOv2RegionLoss(VOC[:2], 4)(*_region_args()[:2]), ValueError, r"^YOLOv2RegionLoss: output has 16"),
    (lambda: LF.box_iou_loss(torch.rand(3, 5), torch.rand(3, 4)), ValueError, r"^box_iou_loss: boxes1 must have shape"),
    (lambda: LF.box_iou_loss(torch.rand(3, 4), torch.rand(3, 2)), ValueError, r"^box_iou_loss: boxes2 must have shape"),
    (lambda: LN.BoxIoULoss("ciou")(torch.rand(4), torch.rand(4, 3)), ValueError, r"boxes2 must have shape"),
    (_bad_wh(3, -0.1), ValueError, r"^yolov2_region_loss: targets has \(w, h\) = \(-0.1, 0.4\) at \[1, 0\]"),
    (_bad_wh(4, -0.2), ValueError, r"^yolov2_region_loss: targets has \(w, h\) = \(0.1, -0.2\) at \[1, 0\]"),
    (lambda: LF.yolov2_region_loss(*_region_args()[:2], VOC[:2].reshape(-1), 3), ValueError,
     r"^yolov2_region_loss: anchors must be a floating \[A, 2\]"),
    (lambda: LF.yolov2_region_loss(*_region_args()[:2], torch.ones(2, 3, dtype=D64), 3), ValueError,
     r"^yolov2_region_loss: anchors must be a floating \[A, 2\]"),
    (lambda: LN.YOLOv2RegionLoss(torch.ones(2, 3, dtype=D64), 3), ValueError, r"^YOLOv2RegionLoss: anchors must be"),
], ids=["class", "channels", "module-channels", "boxes1", "boxes2", "module-boxes2", "neg-width", "neg-height",
        "anchors-1d", "anchors-3-cols", "module-anchors"])
def test_bad_input_names_the_argument(call, exc, match):
    """The issue's bad inputs raise the right error, naming the argument."""
    with pytest.raises(exc, match=match):
        call()


# ---- CUDA ---------------------------------------------------------------------------------------------

def _cpu_cuda(fn, *tensors, **tol):
    """fn's value and gradients on the CPU and on CUDA (float64: TIGHT; float32 takes a
    tolerance, since the CPU's exp / log are math.h's Cephes-style ones and CUDA's its libm)."""
    a = _grads(fn, *tensors)
    b = _grads(fn, *[t.cuda() for t in tensors])
    _close(b[0].cpu(), a[0], **tol)
    for x, y in zip(b[1], a[1]):
        _close(x.cpu(), y, **tol)


@needs_cuda
def test_cuda_matches_cpu():
    """Each op on CUDA equals the CPU in float64 (values, gradients, the region loss's stats)."""
    for seed in (1, 2, 3):
        out, tg, C = _case(700 + seed)
        # the planted anchors 0 and 4 tie at IoU 1 (to the last bit or two): with bias_match=False
        # the pick would then follow a 1-ulp difference of the devices' exp; anchor 4 made worse
        H, W = out.shape[2:]
        i, j = min(int(float(tg[0, 0, 1]) * W), W - 1), min(int(float(tg[0, 0, 2]) * H), H - 1)
        out[0, 4 * (5 + C) + 2, j, i] += 0.05
        for kw in (dict(seen=0), dict(seen=20000, rescore=False, bias_match=False, scale_coord_by_size=False)):
            for red in ("none", "sum", "mean"):
                a = _run(LF.yolov2_region_loss, out, tg, C, red, **kw)
                b = _run(LF.yolov2_region_loss, out.cuda(), tg.cuda(), C, red, anchors=VOC.cuda(), **kw)
                for x, y in zip(b, a):
                    _close(x.cpu(), y)
    x = _logits(13, 29)
    y = (torch.rand(13, 29, dtype=D64) < 0.3).to(D64)
    _cpu_cuda(lambda a, b: LF.sigmoid_focal_loss(a, b, 0.25, 2.0, "none"), x, y)
    _cpu_cuda(lambda a, b: LF.sigmoid_focal_loss(a, b, -1.0, 0.5, "mean"), x, y)
    t = torch.randint(0, 29, (13,))
    t[3] = -100
    w = torch.rand(29, dtype=D64) + 0.1
    for red in ("none", "mean", "sum"):
        _cpu_cuda(lambda z: LF.softmax_focal_loss(z, t.to(z.device), 2.0, 0.25, w.to(z.device), reduction=red), x)
    b1, b2 = _valid_boxes()
    for mode in ("iou", "giou", "diou", "ciou"):
        _cpu_cuda(lambda a, b: LF.box_iou_loss(a, b, mode), torch.cat([b1, _DEGENERATE[:, 0]]),
                  torch.cat([b2, _DEGENERATE[:, 1]]))


@needs_cuda
def test_cuda_bad_class_gives_nan_not_a_crash():
    """On CUDA a class outside [0, C) in the targets (never read back) makes the region loss NaN,
    with no crash and no out-of-bounds access; the same for the softmax focal loss's target."""
    out, tg, C = _case(800, B=2, C=3, H=5, W=5, T=4)
    tg[1, 0, 0] = 7.0
    loss = LF.yolov2_region_loss(out.cuda(), tg.cuda(), VOC.cuda(), C, reduction="none")
    torch.cuda.synchronize()
    assert torch.isnan(loss[1]) and torch.isfinite(loss[0])
    total = LF.yolov2_region_loss(out.cuda(), tg.cuda(), VOC.cuda(), C)
    torch.cuda.synchronize()
    assert torch.isnan(total)
    # the bad truth followed by a good one with the same box (the same cell and anchor): the later
    # truth takes the anchor, the image's loss is NaN all the same
    tg2 = tg.clone()
    tg2[1, 1] = tg2[1, 0]
    tg2[1, 1, 0] = 0.0
    loss = LF.yolov2_region_loss(out.cuda(), tg2.cuda(), VOC.cuda(), C, reduction="none")
    torch.cuda.synchronize()
    assert torch.isnan(loss[1]) and torch.isfinite(loss[0])
    z = _logits(4, 3).cuda()
    f = LF.softmax_focal_loss(z, torch.tensor([0, 5, 1, 2], device="cuda"))
    torch.cuda.synchronize()
    assert torch.isnan(f)
    assert (torch.ones(2, device="cuda") + 1).sum().item() == 4.0  # the context still works


# ---- prior matching and the multibox losses (SSD, RefineDet; issue 12) -------------------------

from lossext.detection import multibox_composite as MC  # noqa: E402
from lossext.detection import multibox_opinfo as MB  # noqa: E402
from lossext.detection import multibox_reference as MR  # noqa: E402


def _box(x1, y1, x2, y2):
    """A prior (cx, cy, w, h) from corners."""
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def _mb_case(b=2, t=5, c=5, sizes=(4, 2), seed=0, dtype=D64):
    gen = torch.Generator().manual_seed(seed)
    pri = MB.grid_priors(sizes)
    tg = MB.random_targets(b, t, c, gen)
    loc, conf = MB._heads(b, pri.shape[0], c, "cpu", dtype, gen)
    return loc, conf, pri, tg


@pytest.mark.parametrize("matching", ["bipartite", "ssd_pytorch"])
@pytest.mark.parametrize("seed", range(4))
def test_match_priors_matches_references(matching, seed):
    """The kernel, the float64 per-image reference (the authors' rules) and the vectorized
    composite agree exactly, padding rows, duplicates and borders included."""
    _, _, pri, tg = _mb_case(b=3, t=7, seed=seed)
    tg[1, 2] = MB.edge_targets()[0, 0]
    m, o = LF.match_priors(pri, tg, 0.5, matching)
    rm, ro = MR.match_priors(pri, tg, 0.5, matching)
    cm, co = MC.match_priors_composite(pri.double(), tg.double(), 0.5, matching)
    assert m.dtype == torch.int64 and o.dtype == D64 and m.shape == (3, pri.shape[0])
    assert torch.equal(m, rm) and torch.equal(m, cm.long())
    torch.testing.assert_close(o, ro, **TIGHT)
    torch.testing.assert_close(o, co.double(), **TIGHT)


def test_match_priors_bipartite_rules():
    """Caffe's MatchBBox (bbox_util.cpp 624-760): the bipartite step gives each truth its own
    prior even when two truths share the best one; then per prediction with IoU >= thresh."""
    pri = torch.tensor([_box(0, 0, 0.5, 1.0), _box(0, 0, 1.0, 1.0), _box(0.1, 0, 1.0, 1.0), _box(0.6, 0.6, 0.7, 0.7)],
                       dtype=D64)
    # truth 0 = prior 1 exactly; truth 1 is closest to prior 1 too (IoU 0.9) but prior 1 is taken
    tg = torch.tensor([[[0, 0, 1.0, 1.0, 0], [0.1, 0, 1.0, 1.0, 1]]], dtype=D64)
    m, o = LF.match_priors(pri, tg, 0.5)
    # prior 0 has IoU exactly 0.5 with truth 0: matched (the threshold is >=, bbox_util.cpp 739)
    assert m.tolist() == [[0, 0, 1, -1]]
    assert o[0, :3].tolist() == [0.5, 1.0, 1.0]
    m, _ = LF.match_priors(pri, tg, 0.5 + 1e-9)
    assert m.tolist() == [[-1, 0, 1, -1]]
    # ssd.pytorch: each truth forced onto its best prior, a later truth takes a shared one
    tg2 = torch.tensor([[[0.1, 0, 1.0, 1.0, 0], [0, 0, 1.0, 1.0, 1]]], dtype=D64)
    m, _ = LF.match_priors(pri, tg2, 0.95, "ssd_pytorch")
    assert m.tolist() == [[-1, 1, 0, -1]]


def test_match_priors_no_overlap_and_degenerate_truths_match_nothing():
    pri = torch.tensor([_box(0, 0, 0.2, 0.2), _box(0.2, 0.2, 0.4, 0.4)], dtype=D64)
    # a truth overlapping no prior (ssd.pytorch would force it onto prior 0) and a zero-width one
    tg = torch.tensor([[[0.7, 0.7, 0.9, 0.9, 0], [0.1, 0.0, 0.1, 0.2, 1], [0.2, 0.2, 0.4, 0.4, -1]]], dtype=D64)
    for matching in ("bipartite", "ssd_pytorch"):
        m, o = LF.match_priors(pri, tg, 0.5, matching)
        assert m.tolist() == [[-1, -1]] and o.abs().sum() == 0
    # touching boxes have IoU 0 (Caffe's JaccardOverlap needs a positive intersection)
    tg = torch.tensor([[[0.4, 0.4, 0.6, 0.6, 0]]], dtype=D64)
    assert LF.match_priors(pri, tg)[0].tolist() == [[-1, -1]]


def test_match_priors_empty_and_t0():
    pri = MB.grid_priors((2,))
    for tg in (torch.zeros(2, 0, 5), torch.full((2, 3, 5), -1.0), torch.zeros(0, 4, 5)):
        m, o = LF.match_priors(pri, tg)
        assert m.shape == (tg.shape[0], pri.shape[0]) and (m == -1).all() and (o == 0).all()


def test_match_priors_opcheck_compile_export():
    _, _, pri, tg = _mb_case()
    args = (pri.double(), tg.double(), 0.5, 0)
    torch.library.opcheck(torch.ops.lossext.match_priors.default, args)
    eager = LF.match_priors(pri, tg)
    compiled = torch.compile(LF.match_priors, fullgraph=True)(pri, tg)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))

    class M(torch.nn.Module):
        def forward(self, p, t):
            return LF.match_priors(p, t)

    ep = torch.export.export(M(), (pri, tg))
    assert all(torch.equal(a, b) for a, b in zip(eager, ep.module()(pri, tg)))
    scripted = torch.jit.script(LF.match_priors)
    assert all(torch.equal(a, b) for a, b in zip(eager, scripted(pri, tg)))


@pytest.mark.parametrize("seed", range(3))
def test_multibox_composite_and_image_loop_match_reference(seed):
    """The benchmark baselines compute the same losses as the float64 reference."""
    loc, conf, pri, tg = _mb_case(b=3, t=6, c=4, seed=seed)
    ref = MR.ssd_multibox_loss(loc, conf, pri, tg, reduction="none")
    for fn in (MC.ssd_multibox_loss_composite, MC.ssd_multibox_loss_image_loop, LF.ssd_multibox_loss):
        for a, b in zip(fn(loc, conf, pri, tg, reduction="none"), ref):
            torch.testing.assert_close(a, b, **TIGHT)
    arm = MB._heads(3, pri.shape[0], 2, "cpu", D64, torch.Generator().manual_seed(seed + 9))
    ref = MR.refinedet_multibox_loss(*arm, loc, conf, pri, tg, reduction="none")
    for fn in (MC.refinedet_multibox_loss_composite, LF.refinedet_multibox_loss):
        for a, b in zip(fn(*arm, loc, conf, pri, tg, reduction="none"), ref):
            torch.testing.assert_close(a, b, **TIGHT)


def test_multibox_hard_negative_count_and_neg_overlap():
    """Per image at most floor(ratio * positives) negatives, only among priors below neg_overlap
    (strict, bbox_util.cpp's IsEligibleMining); neg_overlap changes the result (ssd.pytorch
    ignores it)."""
    loc, conf, pri, tg = _mb_case(b=2, t=4, c=4, seed=3)
    npos = (LF.match_priors(pri, tg)[0] >= 0).sum(1)
    ll, lc, n, gl, gc = torch.ops.lossext.multibox_loss(loc, conf, pri.double(), tg.double(), None, None, 0.5, 1.5,
                                                        0.5, 0.1, 0.2, 0, 0.0, False)
    assert torch.equal(n, npos)
    touched = (gc != 0).any(-1).sum(1)  # positives and mined negatives carry a gradient
    assert torch.equal(touched, npos + (npos.double() * 1.5).floor().long())
    a = LF.ssd_multibox_loss(loc, conf, pri, tg, neg_overlap=0.5)[1]
    b = LF.ssd_multibox_loss(loc, conf, pri, tg, neg_overlap=0.05)[1]
    assert a != b


def test_multibox_no_positives_finite_zero_grad():
    loc, conf, pri, _ = _mb_case(b=2)
    for tg in (torch.zeros(2, 0, 5), torch.full((2, 4, 5), -1.0)):
        loc_, conf_ = loc.clone().requires_grad_(), conf.clone().requires_grad_()
        ll, lc = LF.ssd_multibox_loss(loc_, conf_, pri, tg)
        assert ll.item() == 0.0 and lc.item() == 0.0
        (ll + lc).backward()
        assert (loc_.grad == 0).all() and (conf_.grad == 0).all()
        heads = [h.clone().requires_grad_() for h in MB._heads(2, pri.shape[0], 2, "cpu", D64,
                                                               torch.Generator().manual_seed(1))]
        out = LF.refinedet_multibox_loss(*heads, loc_, conf_, pri, tg)
        assert all(o.item() == 0.0 for o in out)


def test_multibox_degenerate_truth_is_finite():
    loc, conf, pri, tg = _mb_case(b=1, t=3)
    tg[0, 0, 2] = tg[0, 0, 0]  # zero width: never matched (Caffe's EncodeBBox would abort)
    tg[0, 1, 3] = tg[0, 1, 1]
    loc.requires_grad_()
    ll, lc = LF.ssd_multibox_loss(loc, conf, pri, tg)
    (ll + lc).backward()
    assert torch.isfinite(ll) and torch.isfinite(lc) and torch.isfinite(loc.grad).all()
    assert (LF.match_priors(pri, tg)[0] != 0).all() and (LF.match_priors(pri, tg)[0] != 1).all()


def test_refinedet_objectness_filters_negatives_only():
    """RefineDet's negative anchor filtering (bbox_util.cpp 1104, MineHardExamples): a prior is
    an ODM negative only if softmax(arm_conf)[1] >= objectness_thresh; positives always count
    (luuuyi/RefineDet.PyTorch drops positives with p <= theta instead)."""
    loc, conf, pri, tg = _mb_case(b=2, t=4, c=4, seed=1)
    arm_loc = torch.zeros_like(loc)  # the refined anchors are the priors
    low = torch.stack([torch.full(loc.shape[:2], 10.0, dtype=D64), torch.full(loc.shape[:2], -10.0, dtype=D64)], -1)
    al, ac, ol, oc = LF.refinedet_multibox_loss(arm_loc, low, loc, conf, pri, tg, reduction="none")
    # every objectness is ~4e-9 < 0.01: the ODM's confidence loss is over its positives alone
    m = LF.match_priors(pri, tg)[0]
    lab = torch.where(m >= 0, tg[..., 4].double().gather(1, m.clamp(min=0)) + 1, torch.zeros_like(m, dtype=D64))
    ce = torch.logsumexp(conf, -1) - conf.gather(-1, lab.long()[..., None])[..., 0]
    torch.testing.assert_close(oc, (ce * (m >= 0)).sum(1), **TIGHT)
    # with zero ARM offsets and no filter the ODM is the SSD loss
    ssd = LF.ssd_multibox_loss(loc, conf, pri, tg, reduction="none")
    _, _, ol, oc = LF.refinedet_multibox_loss(arm_loc, low, loc, conf, pri, tg, objectness_thresh=0.0,
                                              reduction="none")
    torch.testing.assert_close(ol, ssd[0], **TIGHT)
    torch.testing.assert_close(oc, ssd[1], **TIGHT)


def test_refinedet_arm_gradcheck_and_odm_detached():
    """gradcheck of the ARM terms in the ARM heads; the ODM terms give the ARM heads no gradient
    (the authors' propagate_down [T, T, F, F, F, F])."""
    loc, conf, pri, tg = _mb_case(b=2, t=3, c=3, sizes=(2,), seed=4)
    arm = [h.requires_grad_() for h in MB._heads(2, pri.shape[0], 2, "cpu", D64, torch.Generator().manual_seed(3))]
    assert torch.autograd.gradcheck(lambda a, b: torch.stack(LF.refinedet_multibox_loss(a, b, loc, conf, pri, tg)[:2]),
                                    tuple(arm), eps=1e-6, atol=1e-5)
    _, _, ol, oc = LF.refinedet_multibox_loss(*arm, loc.requires_grad_(), conf, pri, tg)
    assert torch.autograd.grad(ol + oc, arm, allow_unused=True) == (None, None)


def test_multibox_modules_forward_is_the_function():
    loc, conf, pri, tg = _mb_case()
    m = LN.SSDMultiboxLoss(pri, matching="ssd_pytorch", reduction="sum")
    assert all(torch.equal(a, b) for a, b in zip(m(loc, conf, tg), LF.ssd_multibox_loss(
        loc, conf, pri, tg, matching="ssd_pytorch", reduction="sum")))
    arm = MB._heads(2, pri.shape[0], 2, "cpu", D64, torch.Generator().manual_seed(3))
    m = LN.RefineDetMultiboxLoss(pri, objectness_thresh=0.2)
    assert all(torch.equal(a, b) for a, b in zip(m(*arm, loc, conf, tg), LF.refinedet_multibox_loss(
        *arm, loc, conf, pri, tg, objectness_thresh=0.2)))
    assert all(torch.equal(a, b) for a, b in zip(torch.jit.script(m)(*arm, loc, conf, tg), m(*arm, loc, conf, tg)))


def test_multibox_threads_bitwise():
    loc, conf, pri, tg = _mb_case(b=8, t=6, c=21, sizes=(6, 3), dtype=torch.float32)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.lossext.multibox_loss(loc, conf, pri.double(), tg.double(), None, None, 0.5, 3.0, 0.5, 0.1,
                                              0.2, 0, 0.0, False)
    finally:
        torch.set_num_threads(n)
    many = torch.ops.lossext.multibox_loss(loc, conf, pri.double(), tg.double(), None, None, 0.5, 3.0, 0.5, 0.1, 0.2,
                                           0, 0.0, False)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


@needs_cuda
def test_multibox_cuda_matches_cpu():
    for seed in range(3):
        loc, conf, pri, tg = _mb_case(b=3, t=6, c=5, seed=seed)
        for matching in ("bipartite", "ssd_pytorch"):
            a = LF.match_priors(pri, tg, 0.5, matching)
            b = LF.match_priors(pri.cuda(), tg.cuda(), 0.5, matching)
            assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
            _cpu_cuda(lambda x, y: torch.stack(LF.ssd_multibox_loss(x, y, pri.to(x.device), tg.to(x.device),
                                                                    matching=matching, reduction="none")), loc, conf)
        arm = MB._heads(3, pri.shape[0], 2, "cpu", D64, torch.Generator().manual_seed(seed))
        _cpu_cuda(lambda a, b, x, y: torch.stack(LF.refinedet_multibox_loss(a, b, x, y, pri.to(x.device),
                                                                            tg.to(x.device), reduction="none")),
                  *arm, loc, conf)
    # SSD300's size: many blocks per image
    gen = torch.Generator().manual_seed(0)
    pri = MB.ssd300_priors()
    tg = MB.random_targets(4, 10, 21, gen)
    loc, conf = MB._heads(4, pri.shape[0], 21, "cpu", torch.float32, gen)
    _cpu_cuda(lambda x, y: torch.stack(LF.ssd_multibox_loss(x, y, pri.to(x.device), tg.to(x.device))), loc, conf,
              rtol=1e-5, atol=1e-6)
