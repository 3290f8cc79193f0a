"""The metric family's special tests: Center loss and Triplet-Center loss (the generic ones come
from lossext/metric/opinfo.py's rows)."""
import pytest
import torch

import lossext.functional as LF
import lossext.nn as LN
import lossext.reference as R

D64 = torch.float64


def _grads(fn, f, c, *args, **kw):
    f = f.clone().requires_grad_(True)
    c = c.clone().requires_grad_(True)
    loss = fn(f, *args[:1], c, *args[1:], **kw)
    gf, gc = torch.autograd.grad(loss, (f, c))
    return loss.detach(), gf, gc


def test_triplet_center_c1_no_negative_no_gradient():
    f = torch.randn(5, 3, dtype=D64)
    c = torch.randn(1, 3, dtype=D64)
    t = torch.zeros(5, dtype=torch.long)
    for dist in ("squared_euclidean", "euclidean"):
        loss, gf, gc = _grads(LF.triplet_center_loss, f, c, t, margin=5.0, distance=dist)
        assert loss.item() == 0.0
        assert (gf == 0).all() and (gc == 0).all()
        assert (LF.triplet_center_loss(f, t, c, reduction="none") == 0).all()


def test_triplet_center_batch_one_class_present():
    f = torch.randn(4, 3, dtype=D64)
    c = torch.randn(6, 3, dtype=D64)
    t = torch.full((4,), 2)
    loss, gf, gc = _grads(LF.triplet_center_loss, f, c, t, margin=5.0, negatives="batch")
    assert loss.item() == 0.0 and (gf == 0).all() and (gc == 0).all()
    # with 'all' the other centers are negatives: a margin of 5 gives a positive loss here
    assert LF.triplet_center_loss(f, t, c, margin=5.0).item() > 0


def test_triplet_center_batch_uses_only_present_classes():
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.5, 0.0]], dtype=D64)
    f = torch.tensor([[0.1, 0.0], [9.0, 0.0], [2.0, 0.0]], dtype=D64)
    t = torch.tensor([0, 2, 0])  # classes 0 and 2 present: the negative of rows 0, 2 is center 2, not 1 or 3
    per = LF.triplet_center_loss(f, t, c, margin=1.0, negatives="batch", reduction="none")
    dp = 0.5 * ((f - c[t]) ** 2).sum(1)
    dn = torch.stack([0.5 * ((f[0] - c[2]) ** 2).sum(), 0.5 * ((f[1] - c[0]) ** 2).sum(), 0.5 * ((f[2] - c[2]) ** 2).sum()])
    torch.testing.assert_close(per, torch.relu(dp + 1.0 - dn), rtol=0, atol=1e-12)
    per_all = LF.triplet_center_loss(f, t, c, margin=1.0, negatives="all", reduction="none")
    assert per_all[0] > per[0]  # center 3 (0.5 away) is a harder negative than center 2


def test_triplet_center_ties_lowest_index_wins():
    # centers 1 and 3 are identical and equally far: the gradient goes to 1 (the lowest index)
    c = torch.tensor([[0.0, 0.0], [2.0, 0.0], [9.0, 9.0], [2.0, 0.0]], dtype=D64)
    f = torch.tensor([[0.5, 0.0]], dtype=D64)
    t = torch.tensor([0])
    for dtype in (torch.float32, D64):
        for dist in ("squared_euclidean", "euclidean"):
            loss, gf, gc = _grads(LF.triplet_center_loss, f.to(dtype), c.to(dtype), t, margin=5.0, distance=dist)
            assert loss > 0
            assert gc[1].abs().sum() > 0 and (gc[3] == 0).all() and (gc[2] == 0).all()
    # a tie between distinct centers at the same distance (mirror images)
    c = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=D64)
    f = torch.tensor([[0.0, 0.0]], dtype=D64)
    _, _, gc = _grads(LF.triplet_center_loss, f, c, torch.tensor([0]), margin=5.0)
    assert gc[1].abs().sum() > 0 and (gc[2] == 0).all()


def test_triplet_center_euclidean_feature_on_center_finite():
    c = torch.randn(3, 4, dtype=D64)
    f = c[[0, 1]].clone()
    t = torch.tensor([0, 1])
    loss, gf, gc = _grads(LF.triplet_center_loss, f, c, t, margin=5.0, distance="euclidean")
    assert torch.isfinite(gf).all() and torch.isfinite(gc).all() and torch.isfinite(loss)
    _, gf_r, gc_r = _grads(R.triplet_center_loss, f, c, t, margin=5.0, distance="euclidean")
    torch.testing.assert_close(gf, gf_r)
    torch.testing.assert_close(gc, gc_r)
    # and on its hardest negative
    f2 = c[[2]].clone()
    _, gf, gc = _grads(LF.triplet_center_loss, f2, c, torch.tensor([0]), margin=1.0, distance="euclidean")
    assert torch.isfinite(gf).all() and torch.isfinite(gc).all()


@pytest.mark.parametrize("dist", ["squared_euclidean", "euclidean"])
@pytest.mark.parametrize("neg", ["all", "batch"])
def test_triplet_center_gradcheck_repeated_labels(dist, neg):
    g = torch.Generator().manual_seed(7)
    f = torch.randn(9, 3, dtype=D64, generator=g, requires_grad=True)
    c = torch.randn(5, 3, dtype=D64, generator=g, requires_grad=True)
    t = torch.tensor([1, 1, 1, 3, 3, 0, 1, 3, 0])
    assert torch.autograd.gradcheck(lambda f, c: LF.triplet_center_loss(f, t, c, 2.0, dist, neg), (f, c))


def test_triplet_center_large_c_matches_reference_float32():
    # several CPU class tiles (512) and row tiles (256): the GEMM only screens, the argmin is exact
    g = torch.Generator().manual_seed(1)
    f = torch.randn(300, 16, generator=g)
    c = torch.randn(1100, 16, generator=g)
    t = torch.randint(0, 1100, (300,), generator=g)
    for dist in ("squared_euclidean", "euclidean"):
        out = LF.triplet_center_loss(f, t, c, 5.0, dist, reduction="none")
        ref = R.triplet_center_loss(f.double(), t, c.double(), 5.0, dist, reduction="none")
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_center_loss_mean_divides_by_batch_size():
    # the caffe center_loss_layer: loss = sum |x_i - c_{y_i}|^2 / M / 2, M the batch size
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], dtype=D64)
    c = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=D64)
    t = torch.tensor([0, 1, 1])
    expected = (1 + 4 + 4 + 9 + 1 + 1) / 3 / 2
    assert LF.center_loss(f, t, c).item() == pytest.approx(expected, abs=1e-14)
    assert LF.center_loss(f, t, c, reduction="sum").item() == pytest.approx(expected * 3, abs=1e-13)


def test_center_loss_all_one_class_gradients():
    f = torch.randn(6, 3, dtype=D64)
    c = torch.randn(2, 3, dtype=D64)
    t = torch.zeros(6, dtype=torch.long)
    _, gf, gc = _grads(LF.center_loss, f, c, t, reduction="sum")
    torch.testing.assert_close(gf, f - c[0])
    torch.testing.assert_close(gc[0], (c[0] - f).sum(0))
    assert (gc[1] == 0).all()


def test_center_loss_paper_update_rule_by_hand():
    # Wen et al. Eq. 4 / caffe: delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), c_j -= alpha delta_j
    m = LN.CenterLoss(3, 2, update="paper", alpha=0.5).double()
    assert "centers" in dict(m.named_buffers()) and not list(m.parameters())
    c0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], dtype=D64)
    with torch.no_grad():
        m.centers.copy_(c0)
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 2.0], [0.0, 1.0]], dtype=D64)
    y = torch.tensor([0, 1, 1, 0])
    loss = m(x, y)
    # the loss uses the centers before the step
    assert loss.item() == pytest.approx(LF.center_loss(x, y, c0).item(), abs=1e-14)
    # class 0: n = 2, sum (c - x) = (0-1, 0-0) + (0-0, 0-1) = (-1, -1), delta = (-1/3, -1/3)
    # class 1: n = 2, sum (c - x) = (1-3, 1-2) + (1-2, 1-2) = (-3, -2), delta = (-1, -2/3)
    # class 2: n = 0, delta = 0
    expected = torch.tensor([[0.5 / 3, 0.5 / 3], [1.5, 1.0 + 1.0 / 3], [5.0, 5.0]], dtype=D64)
    torch.testing.assert_close(m.centers, expected, rtol=0, atol=1e-14)
    assert not loss.requires_grad  # features do not require grad; the buffer takes none
    m.eval()
    m(x, y)
    torch.testing.assert_close(m.centers, expected, rtol=0, atol=1e-14)  # no step in eval mode


def test_center_loss_autograd_mode_is_a_parameter():
    m = LN.CenterLoss(4, 3)
    assert [n for n, _ in m.named_parameters()] == ["centers"]
    x = torch.randn(5, 3, requires_grad=True)
    m(x, torch.tensor([0, 1, 1, 3, 0])).backward()
    assert m.centers.grad is not None and x.grad is not None
    assert m.centers.grad[2].abs().sum() == 0


def test_module_repr_and_errors():
    m = LN.TripletCenterLoss(10, 4, margin=1.0, distance="euclidean", negatives="batch")
    assert "margin=1.0" in repr(m) and "negatives='batch'" in repr(m)
    with pytest.raises(ValueError, match="TripletCenterLoss: margin must be >= 0, got -1.0"):
        LN.TripletCenterLoss(10, 4, margin=-1.0)
    with pytest.raises(ValueError, match="TripletCenterLoss: distance must be"):
        LN.TripletCenterLoss(10, 4, distance="l1")
    with pytest.raises(ValueError, match="CenterLoss: update must be"):
        LN.CenterLoss(10, 4, update="ema")
    with pytest.raises(ValueError, match="num_classes must be in"):
        LN.CenterLoss(0, 4)


def test_total_loss_as_in_the_paper_trains():
    # L = lambda L_tc + L_softmax (He et al. Eq. 4)
    torch.manual_seed(0)
    means = torch.randn(4, 8) * 3
    y = torch.randint(0, 4, (128,))
    x = means[y] + torch.randn(128, 8)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    head = torch.nn.Linear(4, 4)
    tcl = LN.TripletCenterLoss(4, 4, margin=1.0)
    opt = torch.optim.SGD([*net.parameters(), *head.parameters(), *tcl.parameters()], lr=0.05)
    losses = []
    for _ in range(60):
        feat = net(x)
        loss = 0.1 * tcl(feat, y) + torch.nn.functional.cross_entropy(head(feat), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_deterministic_center_gradient_threads():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(700, 8, generator=g)
    c = torch.randn(20, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 3, (700,), generator=g)  # many rows per center
    outs = []
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            c.grad = None
            LF.triplet_center_loss(f, t, c, 5.0).backward()
            outs.append(c.grad.clone())
        finally:
            torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])


# ---- triplet_margin_loss and contrastive_loss ------------------------------------------------------

try:  # the peer (requirements-dev.txt); the wheel test's venv lacks it: its parity tests skip there
    from pytorch_metric_learning import distances as pml_d, losses as pml_l, miners as pml_m, reducers as pml_r
except ImportError:
    pml_d = pml_l = pml_m = pml_r = None
needs_pml = pytest.mark.skipif(pml_l is None, reason="pytorch-metric-learning is not installed")


def _reducer(name):
    return getattr(pml_r, name)()


def _batch(n=24, d=6, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D64), torch.randint(0, classes, (n,), generator=g)


def _pml_distance(distance, squared, normalize):
    if distance == "cosine":
        return pml_d.CosineSimilarity()
    return pml_d.LpDistance(normalize_embeddings=normalize, p=2, power=2 if squared else 1)


def _both(ours, theirs, x, *extra):
    xs = [x.clone().requires_grad_(True)] + [e.clone().requires_grad_(True) for e in extra]
    xt = [x.clone().requires_grad_(True)] + [e.clone().requires_grad_(True) for e in extra]
    a, b = ours(*xs), theirs(*xt)
    ga = torch.autograd.grad(a, xs)
    gb = torch.autograd.grad(b, xt)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("distance,squared,normalize", [("euclidean", False, False), ("euclidean", True, False),
                                                        ("euclidean", False, True), ("cosine", False, False)])
@pytest.mark.parametrize("reduction,reducer", [("mean", "MeanReducer"), ("mean_nonzero", "AvgNonZeroReducer"),
                                               ("sum", "SumReducer")])
@needs_pml
def test_batch_hard_matches_pml(distance, squared, normalize, reduction, reducer):
    """pml's TripletMarginLoss on BatchHardMiner's triplets: 'mean' is its MeanReducer (Hermans et
    al.'s mean over the anchors), 'mean_nonzero' its default AvgNonZeroReducer."""
    x, y = _batch()
    dist = _pml_distance(distance, squared, normalize)
    loss = pml_l.TripletMarginLoss(margin=0.3, distance=dist, reducer=_reducer(reducer))
    miner = pml_m.BatchHardMiner(distance=dist)
    _both(lambda e: LF.triplet_margin_loss(e, y, 0.3, "batch_hard", distance, squared, normalize, reduction=reduction),
          lambda e: loss(e, y, miner(e, y)), x)


@pytest.mark.parametrize("soft", [False, True])
@needs_pml
def test_batch_all_matches_pml(soft):
    """pml's TripletMarginLoss with no miner takes every triplet and averages the positive ones
    (AvgNonZeroReducer): batch_all's 'mean' (Hermans et al.). soft: pml's smooth_loss at margin 0
    is Hermans's soft margin."""
    x, y = _batch()
    dist = _pml_distance("euclidean", False, False)
    loss = pml_l.TripletMarginLoss(margin=0.0 if soft else 0.5, distance=dist, smooth_loss=soft)
    _both(lambda e: LF.triplet_margin_loss(e, y, 0.5, "batch_all", soft_margin=soft), lambda e: loss(e, y), x)
    loss = pml_l.TripletMarginLoss(margin=0.5, distance=dist, reducer=pml_r.MeanReducer())
    _both(lambda e: LF.triplet_margin_loss(e, y, 0.5, "batch_all", reduction="mean_all"), lambda e: loss(e, y), x)


@needs_pml
def test_batch_hard_with_a_reference_set_matches_pml():
    """A cross-batch reference (no self-exclusion): pml's miner and loss with ref_emb."""
    x, y = _batch(10, 5, 3, 1)
    r, ry = _batch(40, 5, 4, 2)
    dist = _pml_distance("euclidean", False, False)
    loss = pml_l.TripletMarginLoss(margin=0.2, distance=dist, reducer=pml_r.MeanReducer())
    miner = pml_m.BatchHardMiner(distance=dist)
    _both(lambda e, f: LF.triplet_margin_loss(e, y, ref_embeddings=f, ref_labels=ry),
          lambda e, f: loss(e, y, miner(e, y, f, ry), f, ry), x, r)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("reduction,reducer", [("mean", "AvgNonZeroReducer"), ("mean_all", "MeanReducer")])
@needs_pml
def test_contrastive_matches_pml(distance, reduction, reducer):
    x, y = _batch()
    dist = (pml_d.CosineSimilarity() if distance == "cosine" else
            pml_d.LpDistance(normalize_embeddings=False, power=2 if distance == "squared_euclidean" else 1))
    pm, nm = (0.1, 0.7) if distance == "cosine" else (0.5, 3.0)
    if distance == "cosine":  # pml's margins are on the similarity: d = 1 - s
        theirs = pml_l.ContrastiveLoss(pos_margin=1 - pm, neg_margin=1 - nm, distance=dist, reducer=_reducer(reducer))
    else:
        theirs = pml_l.ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=dist, reducer=_reducer(reducer))
    _both(lambda e: LF.contrastive_loss(e, y, pm, nm, distance, reduction), lambda e: theirs(e, y), x)
    r, ry = _batch(15, 6, 5, 3)
    _both(lambda e, f: LF.contrastive_loss(e, y, pm, nm, distance, reduction, f, ry),
          lambda e, f: theirs(e, y, ref_emb=f, ref_labels=ry), x, r)


def test_semi_hard_by_hand():
    """FaceNet's semi-hard negative (TensorFlow Addons' rule) on a 1-D batch worked by hand. pml's
    TripletMarginMiner('semihard') is another rule (every negative with d_ap < d_an < d_ap + m),
    so it is not the peer here."""
    x = torch.tensor([[0.0], [1.0], [1.5], [3.0], [-0.5]], dtype=D64)
    y = torch.tensor([0, 0, 1, 1, 2])
    m = 1.0
    # anchor 0: positive 1 (d 1); negatives at 1.5 (2), 3 (3), 0.5 (4): nearest farther than 1 is 1.5
    # anchor 1: positive 0 (d 1); negatives 0.5 (2), 2 (3), 1.5 (4): nearest farther than 1 is 1.5 (4)
    # anchor 2: positive 3 (d 1.5); negatives 1.5 (0), 0.5 (1), 2 (4): nearest farther than 1.5 is 2
    # anchor 3: positive 2 (d 1.5); negatives 3 (0), 2 (1), 3.5 (4): nearest farther is 2
    # anchor 4: no positive
    want = [1 - 1.5 + m, 1 - 1.5 + m, 1.5 - 2 + m, 1.5 - 2 + m]
    got = LF.triplet_margin_loss(x, y, m, "semi_hard", reduction="none")
    torch.testing.assert_close(got, torch.tensor(want + [0.0], dtype=D64))
    torch.testing.assert_close(LF.triplet_margin_loss(x, y, m, "semi_hard"), torch.tensor(sum(want) / 4, dtype=D64))
    # no negative farther than the positive: the farthest negative (anchor 0: positive at 5)
    x2 = torch.tensor([[0.0], [5.0], [1.0], [2.0]], dtype=D64)
    y2 = torch.tensor([0, 0, 1, 1])
    got = LF.triplet_margin_loss(x2, y2, m, "semi_hard", reduction="none")
    assert got[0].item() == pytest.approx(5 - 2 + m)


def test_batch_hard_by_hand_and_ties_lowest_index():
    x = torch.tensor([[0.0], [2.0], [-2.0], [1.0], [-1.0]], dtype=D64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1])
    loss = LF.triplet_margin_loss(x, y, 0.5, "batch_hard", reduction="none")
    # anchor 0: positives at 2 and -2 tie (the lower index, 1, wins), negatives at 1 and -1 tie (3 wins)
    assert loss[0].item() == pytest.approx(2 - 1 + 0.5)
    (g,) = torch.autograd.grad(loss[0], x)
    # d(d_01 - d_03)/dx: x0 gets sign(x0 - x1) - sign(x0 - x3) = -1 + 1 = 0; x1: +1; x3: -1
    torch.testing.assert_close(g[:, 0], torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0], dtype=D64))


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all", "semi_hard"])
def test_triplet_no_positive_or_no_negative_is_zero(mining):
    for y in (torch.zeros(6, dtype=torch.long), torch.arange(6)):  # one class; every row its own
        x = torch.randn(6, 4, dtype=D64, requires_grad=True)
        for red in ("mean", "sum", "mean_all", "mean_nonzero"):
            loss = LF.triplet_margin_loss(x, y, mining=mining, reduction=red)
            (g,) = torch.autograd.grad(loss, x)
            assert loss.item() == 0.0 and (g == 0).all()
    x = torch.randn(1, 4, dtype=D64)
    assert LF.triplet_margin_loss(x, torch.zeros(1, dtype=torch.long), mining=mining).item() == 0.0


def test_anchors_without_triplets_count_in_no_divisor():
    x, _ = _batch(6, 3)
    y = torch.tensor([0, 0, 1, 1, 2, 3])  # anchors 4 and 5 have no positive
    per = LF.triplet_margin_loss(x, y, 1.0, "batch_hard", reduction="none")
    assert per[4] == 0 and per[5] == 0
    torch.testing.assert_close(LF.triplet_margin_loss(x, y, 1.0, "batch_hard"), per[:4].mean())


def test_duplicate_embeddings_have_finite_gradients():
    x = torch.randn(3, 5, dtype=D64)[[0, 0, 1, 1, 2, 2]].clone().requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1, 0, 2])
    for mining in ("batch_hard", "batch_all", "semi_hard"):
        (g,) = torch.autograd.grad(LF.triplet_margin_loss(x, y, mining=mining), x)
        assert g.isfinite().all()
    (g,) = torch.autograd.grad(LF.contrastive_loss(x, y), x)
    assert g.isfinite().all()


def test_reference_without_grad_and_as_a_leaf():
    x, y = _batch(8, 4, 3)
    r, ry = _batch(20, 4, 3, 4)
    xg = x.clone().requires_grad_(True)
    loss = LF.triplet_margin_loss(xg, y, ref_embeddings=r, ref_labels=ry)
    (g,) = torch.autograd.grad(loss, xg)
    rg = r.clone().requires_grad_(True)
    loss2 = LF.triplet_margin_loss(xg, y, ref_embeddings=rg, ref_labels=ry)
    g1, g2 = torch.autograd.grad(loss2, (xg, rg))
    torch.testing.assert_close(g1, g)
    assert g2.abs().sum() > 0


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all", "semi_hard"])
def test_triplet_float32_large_reference_matches(mining):
    """More anchors than a tile (256) and references than a tile (512), float32."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 16, generator=g)
    y = torch.randint(0, 40, (300,), generator=g)
    r = torch.randn(700, 16, generator=g)
    ry = torch.randint(0, 40, (700,), generator=g)
    kw = dict(mining=mining, margin=0.1, ref_embeddings=r, ref_labels=ry)
    ours = LF.triplet_margin_loss(x, y, **kw)
    want = R.triplet_margin_loss(x.double(), y, **dict(kw, ref_embeddings=r.double()))
    torch.testing.assert_close(ours.double(), want, rtol=1e-4, atol=1e-5)


def test_batch_hard_screening_in_the_subnormal_range():
    """The GEMM screen's bound has an absolute part: with squared distances near 1e-41 (float32
    subnormals) the nearest negative is still the exact one, whatever the reference order."""
    x = torch.tensor([[6.5080724787371745e-21, 9.158058258253388e-21]])
    r = torch.tensor([[2.9982863726926827e-21, 4.117831912878982e-21],
                      [3.218567235534325e-21, 5.858692884824e-21],
                      [7.500025611385561e-21, 4.606007010882e-21]])
    y, ry = torch.tensor([0]), torch.tensor([0, 1, 1])
    s = ((x - r) ** 2).sum(1)  # the kernel's exact float32 sums (two terms)
    assert s[1] != s[2]
    want = 1 + int(s[2] < s[1])  # the nearer of the two negatives
    for order in ([0, 1, 2], [0, 2, 1]):
        hard = torch.ops.lossext.triplet_margin_loss(x, y, r[order], ry, False, 0.2, 0, 0, False, 0)[1]
        assert order[int(hard[0, 1])] == want, order
