"""Special tests of the age-estimation family (the generic ones run over OP_DB): the paper's
formulas and their gradients, the bins and the float ages, the components, age_from_logits
(which the generic tests do not cover: it returns a pair), the peers' composite."""
import math

import pytest
import torch

import lossext.functional as LF
import lossext.nn as LN
import lossext.reference as R

CUDA = torch.cuda.is_available()


def _logits(n, k, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)


def _composite(x, y, lm, lv, start, soft, red):
    """The paper's loss by autograd through softmax, the moments and the cross-entropy."""
    p = torch.softmax(x, 1)
    a = start + torch.arange(x.shape[1], dtype=x.dtype)
    m = (p * a).sum(1)
    v = (p * (a - m[:, None]) ** 2).sum(1)
    yy = y.to(x.dtype)
    terms = [0.5 * (m - yy) ** 2, v]
    if soft:
        b = (torch.round(yy) - start).long()
        terms.insert(0, torch.nn.functional.cross_entropy(x, b, reduction="none"))
    else:
        terms.insert(0, torch.zeros_like(m))
    red_fn = {"none": lambda t: t, "sum": torch.sum, "mean": torch.mean}[red]
    return red_fn(terms[0]) + lm * red_fn(terms[1]) + lv * red_fn(terms[2])


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("k,start", [(1, 0), (101, 0), (11, 20), (7, -3)])
def test_kernel_gradient_is_autograd_of_the_composite(red, k, start):
    """The analytic gradients (the term through m vanishes) equal autograd of the paper's
    composite to 1e-10 in float64: repeated ages, K = 1, K = 101 (ages 0 to 100), start_age != 0."""
    n = 9
    x = _logits(n, k).requires_grad_(True)
    y = torch.tensor([start + (i * 3) % k for i in range(n)])
    y[:3] = start + k // 2  # repeated ages
    for lm, lv in [(0.2, 0.05), (1.0, 0.7)]:
        ours = LF.mean_variance_loss(x, y, lm, lv, start, reduction=red)
        ref = _composite(x, y, lm, lv, start, True, red)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        go = torch.rand(ref.shape, dtype=torch.float64)
        (g,) = torch.autograd.grad(ours, x, go)
        (gr,) = torch.autograd.grad(ref, x, go)
        torch.testing.assert_close(g, gr, rtol=0, atol=1e-10)


def test_every_sample_in_one_age_and_one_bin():
    x = _logits(6, 5)
    y = torch.full((6,), 12)
    torch.testing.assert_close(LF.mean_variance_loss(x, y, start_age=10), _composite(x, y, 0.2, 0.05, 10, True, "mean"))
    one = LF.mean_variance_loss(_logits(4, 1), torch.full((4,), 7), start_age=7, return_components=True)
    assert one.softmax == 0 and one.mean == 0 and one.variance == 0  # p = 1 at the only bin


def test_float_ages_round_half_to_even_and_get_a_gradient():
    """A floating age: the softmax term's bin is round(y) (half to even, as torch.round); the
    age's gradient is -lambda_mean (m - y) (times 1/N for 'mean'); the softmax term has none."""
    x = _logits(4, 6)
    y = torch.tensor([2.5, 3.5, 0.49, 4.7], dtype=torch.float64, requires_grad=True)
    parts = LF.mean_variance_loss(x, y, reduction="none", return_components=True)
    b = torch.tensor([2, 4, 0, 5])
    torch.testing.assert_close(parts.softmax, torch.nn.functional.cross_entropy(x, b, reduction="none"))
    loss = LF.mean_variance_loss(x, y, lambda_mean=0.3)
    (gy,) = torch.autograd.grad(loss, y)
    m, _ = LF.age_from_logits(x)
    torch.testing.assert_close(gy, -0.3 * (m - y.detach()) / 4)
    # float32 ages into float64 logits and back: the gradient comes back in the age's dtype
    y32 = y.detach().float().requires_grad_(True)
    (g32,) = torch.autograd.grad(LF.mean_variance_loss(x, y32), y32)
    assert g32.dtype == torch.float32


def test_ages_beyond_the_bins_without_the_softmax_term():
    """Only the softmax term needs a bin: without it any age is legal (a plain regression of m);
    with it the age raises a ValueError naming target and the value."""
    x = _logits(3, 5)
    y = torch.tensor([-40.0, 3.0, 1000.5], dtype=torch.float64)
    got = LF.mean_variance_loss(x, y, include_softmax=False, reduction="none")
    torch.testing.assert_close(got, _composite(x, y, 0.2, 0.05, 0, False, "none"))
    with pytest.raises(ValueError, match=r"^mean_variance_loss: target has value -40 at index 0: its bin"):
        LF.mean_variance_loss(x, y)
    with pytest.raises(ValueError, match=r"target has value nan at index 1"):
        LF.mean_variance_loss(x, torch.tensor([1.0, math.nan, 2.0]))


def test_components_are_the_reduced_terms_and_differentiable():
    x = _logits(5, 8).requires_grad_(True)
    y = torch.tensor([1, 2, 3, 4, 5])
    for red in ("mean", "sum", "none"):
        c = LF.mean_variance_loss(x, y, reduction=red, return_components=True)
        assert isinstance(c, LF.MeanVarianceComponents)
        torch.testing.assert_close(c.total, c.softmax + 0.2 * c.mean + 0.05 * c.variance)
        r = R.mean_variance_loss(x, y, reduction=red, return_components=True)
        for a, b in zip(c, r):
            torch.testing.assert_close(a, b)
        # a gradient through each term alone (the others' output gradients are None)
        for name in ("softmax", "mean", "variance"):
            (g,) = torch.autograd.grad(getattr(c, name).sum(), x, retain_graph=True)
            (gr,) = torch.autograd.grad(getattr(r, name).sum(), x, retain_graph=True)
            torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-12)
    with pytest.raises(torch.jit.Error, match="return_components=True is not supported in TorchScript"):
        torch.jit.script(LF.mean_variance_loss)(x, y, 0.2, 0.05, 0, True, "mean", True)


def test_peers_composite_is_the_same_loss():
    """The composite the peers run (Herosan163/AgeEstimation's MeanVarianceLoss + F.cross_entropy,
    reference.mean_variance_loss_composite, the benchmarks' baseline) equals the op."""
    x = _logits(16, 70, dtype=torch.float32)
    y = torch.randint(0, 70, (16,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(LF.mean_variance_loss(x, y), R.mean_variance_loss_composite(x, y), rtol=1e-5, atol=1e-5)


def test_float32_is_more_accurate_than_torchs_float32_composite():
    """A peaked row far from bin 0 (ages 0..100): the gradient's error against float64 is at most
    torch's own float32 composite's (the moments are summed in float64: a float32 mean cost 5x)."""
    x = _logits(6, 101)
    x[:, 80] += 12.0
    y = torch.tensor([80, 0, 100, 40, 79, 3])
    go = torch.randn(6, dtype=torch.float64)
    xd = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(R.mean_variance_loss(xd, y, reduction="none"), xd, go)
    errs = []
    for fn in (LF.mean_variance_loss, R.mean_variance_loss_composite):
        xf = x.float().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xf, y, reduction="none"), xf, go.float())
        errs.append(float((g.double() - gr).abs().max()))
    assert errs[0] <= errs[1], errs


def test_age_from_logits_reference_gradcheck_and_graph_modes():
    x = _logits(7, 12).requires_grad_(True)
    m, v = LF.age_from_logits(x, 16)
    mr, vr = R.age_from_logits(x, 16)
    torch.testing.assert_close(m, mr)
    torch.testing.assert_close(v, vr)
    assert torch.autograd.gradcheck(lambda t: LF.age_from_logits(t, 16), (x,))
    assert torch.autograd.gradcheck(lambda t: LF.age_from_logits(t, 16)[1], (x,))  # one output unused
    torch.library.opcheck(torch.ops.lossext.age_from_logits, (x.detach().float(), 16))
    compiled = torch.compile(lambda t: sum(LF.age_from_logits(t, 3)), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), sum(LF.age_from_logits(x, 3)))
    scripted = torch.jit.script(LF.age_from_logits)
    for a, b in zip(scripted(x, 3), LF.age_from_logits(x, 3)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="age_from_logits: logits has no age bins"):
        LF.age_from_logits(torch.zeros(3, 0))


def test_module_defaults_repr_and_training():
    mod = LN.MeanVarianceLoss(start_age=16)
    assert "lambda_mean=0.2, lambda_var=0.05, start_age=16" in repr(mod)
    head = torch.nn.Linear(8, 60)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 8, generator=g)
    ages = 16 + (feats[:, 0] * 10 + 30).clamp(0, 59).round().long()
    losses = []
    for _ in range(30):
        loss = mod(head(feats), ages)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses[::10]
    with pytest.raises(ValueError, match="MeanVarianceLoss: lambda_var must be in"):
        LN.MeanVarianceLoss(lambda_var=-1)


@pytest.mark.skipif(not CUDA, reason="no GPU visible")
def test_cuda_bad_bin_gives_nan_not_a_crash():
    """On CUDA an age outside the bins (softmax term on) is never used as an index: that row's
    softmax term and gradient are NaN; the other rows are the CPU's."""
    x = _logits(4, 5).cuda().requires_grad_(True)
    y = torch.tensor([0, 9, 2, 3], device="cuda")
    loss = LF.mean_variance_loss(x, y, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert loss[1].isnan() and g[1].isnan().all()
    keep = [0, 2, 3]
    ref = LF.mean_variance_loss(x.detach().cpu()[keep], y.cpu()[keep], reduction="none")
    torch.testing.assert_close(loss[keep].detach().cpu(), ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [True, False])
def test_one_pass_gradient_equals_the_recompute_op(dtype, red, soft):
    """Logits that require grad take mean_variance_loss_with_grad (the forward writes the total's
    gradient from its row buffer: no second exp in the backward); its gradient equals the
    recompute op's, mean_variance_loss_backward over the saved stats, and a float64 target that
    requires grad takes the recompute path for dL/dy."""
    x = _logits(13, 101, seed=4, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, 101, (13,), generator=torch.Generator().manual_seed(5))
    loss = LF.mean_variance_loss(x, y, 0.3, 0.1, 0, soft, red)
    assert "with_grad" in type(loss.grad_fn).__name__
    go = torch.rand(loss.shape, dtype=dtype)
    (g,) = torch.autograd.grad(loss, x, go)
    p = (0.3, 0.1, 0, soft, {"none": 0, "mean": 1, "sum": 2}[red])
    with torch.no_grad():
        stats = torch.ops.lossext.mean_variance_loss(x, y, *p)[4]
        gr = torch.ops.lossext.mean_variance_loss_backward(go, None, None, None, x, y, stats, *p)[0]
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(g, gr, rtol=tol, atol=tol)
    yf = y.double().requires_grad_(True)
    loss = LF.mean_variance_loss(x, yf, 0.3, 0.1, 0, soft, red)
    assert "with_grad" not in type(loss.grad_fn).__name__
    gx, gy = torch.autograd.grad(loss, (x, yf), go)
    torch.testing.assert_close(gx, gr, rtol=tol, atol=tol)
    assert gy.abs().sum() > 0
