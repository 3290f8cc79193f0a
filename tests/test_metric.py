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
