"""Special tests of the landmark losses (generic checks run from the OpInfo table)."""
import math

import pytest
import torch

import lossext.functional as LF
import lossext.nn as LN
import lossext.reference as R


def test_wing_paper_values():
    # Feng et al. 2018, Eq. (5): w = 10, eps = 2, C = w - w ln(1 + w/eps)
    C = 10 - 10 * math.log(6.0)
    d = torch.tensor([0.0, 1.0, -1.0, 9.5, 10.0, 15.0, -40.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 10 * math.log(1.5), 10 * math.log(1.5), 10 * math.log(1 + 9.5 / 2),
                             10 - C, 15 - C, 40 - C], dtype=torch.float64)
    got = LF.wing_loss(d, torch.zeros_like(d), reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


def test_adaptive_wing_paper_values():
    # Wang et al. 2019, Eq. (6)-(7), alpha=2.1, omega=14, eps=1, theta=0.5
    def awing(yhat, y):
        D, p = abs(y - yhat), 2.1 - y
        if D < 0.5:
            return 14 * math.log(1 + D ** p)
        A = 14 * (1 / (1 + 0.5 ** p)) * p * 0.5 ** (p - 1)
        C = 0.5 * A - 14 * math.log(1 + 0.5 ** p)
        return A * D - C
    pairs = [(0.25, 0.0), (0.9, 1.0), (0.0, 1.0), (1.3, 0.2), (0.5, 0.0), (0.3, 0.3)]
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    expected = torch.tensor([awing(a, b) for a, b in pairs], dtype=torch.float64)
    torch.testing.assert_close(LF.adaptive_wing_loss(x, y, reduction="none"), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_continuity_at_branch_points(dtype):
    eps = 1e-6 if dtype == torch.float64 else 1e-3
    w = 10.0
    d = torch.tensor([w - eps, w + eps], dtype=dtype)
    v = LF.wing_loss(d, torch.zeros_like(d), reduction="none")
    assert abs(v[0] - v[1]) < 3 * eps
    theta = 0.5
    y = torch.tensor([0.0, 0.0, 0.7, 0.7], dtype=dtype)
    x = y + torch.tensor([theta - eps, theta + eps, -theta + eps, -theta - eps], dtype=dtype)
    x.requires_grad_(True)
    v = LF.adaptive_wing_loss(x, y, reduction="none")
    assert abs(v[0] - v[1]) < 100 * eps and abs(v[2] - v[3]) < 100 * eps
    (g,) = torch.autograd.grad(v.sum(), x)
    # the Adaptive Wing slope is continuous at D = theta (A is the inner derivative there)
    assert abs(g[0] - g[1]) < 100 * eps and abs(g[2] - g[3]) < 100 * eps


@pytest.mark.parametrize("name,params", [("wing_loss", (10.0, 2.0)), ("adaptive_wing_loss", (2.1, 14.0, 1.0, 0.5))])
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_one_pass_and_recompute_agree(name, params, reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 33, generator=g, dtype=torch.float64) * 3 - 1
    y = torch.rand(4, 33, generator=g, dtype=torch.float64)
    w = torch.rand(4, 33, generator=g, dtype=torch.float64)
    ops = torch.ops.lossext
    grads = []
    for path in (name, name + "_with_grad"):
        xs = x.clone().requires_grad_(True)
        ys = y.clone().requires_grad_(True)
        ws = w.clone().requires_grad_(True)
        out = getattr(ops, path)(xs, ys, ws, *params, reduction)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        loss.backward(torch.ones_like(loss))
        grads.append((loss.detach(), xs.grad, ys.grad, ws.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the saved per-element gradient of the one-pass op is dloss/dinput
    loss, g1 = getattr(ops, name + "_with_grad")(x, y, w, *params, reduction)
    torch.testing.assert_close(g1, grads[0][1], rtol=1e-12, atol=1e-12)


def test_broadcast_weight_gradient_has_weight_shape():
    x = torch.randn(8, 68, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 68, 2, dtype=torch.float64)
    vis = torch.rand(8, 68, 1, dtype=torch.float64, requires_grad=True)
    LF.wing_loss(x, y, weight=vis).backward()
    assert vis.grad.shape == vis.shape
    expected = R.wing_loss(x.detach(), y, reduction="none").sum(-1, keepdim=True) / x.numel()
    torch.testing.assert_close(vis.grad, expected)


def test_heatmap_4d_with_modules():
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(2, 17, 64, 48, generator=g)
    pred = (heat + 0.1 * torch.randn(heat.shape, generator=g)).requires_grad_(True)
    m = LN.AdaptiveWingLoss()
    loss = m(pred, heat)
    ref = R.adaptive_wing_loss(pred.detach().double(), heat.double())
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=1e-6)
    loss.backward()
    assert pred.grad.shape == pred.shape and pred.grad.isfinite().all()
    wl = LN.WingLoss(width=5.0, curvature=0.5, reduction="sum")
    assert "width=5.0" in repr(wl)
    torch.testing.assert_close(wl(pred.detach(), heat).double(),
                               R.wing_loss(pred.detach().double(), heat.double(), 5.0, 0.5, reduction="sum"),
                               rtol=2e-5, atol=1e-3)


def test_adaptive_wing_p_zero_and_overflow_regions():
    # target == alpha gives p = 0: q^0 = 1 even at D = 0, so the loss is omega ln 2 (not NaN)
    x = torch.tensor([1.0, 1.2, 0.4], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss = LF.adaptive_wing_loss(x, y, alpha=1.0, theta=0.5, reduction="none")
    ref = R.adaptive_wing_loss(x.detach(), y.detach(), alpha=1.0, theta=0.5, reduction="none")
    torch.testing.assert_close(loss, ref)
    assert abs(loss[0].item() - 14.0 * math.log(2.0)) < 1e-12
    loss.sum().backward()
    assert x.grad.isfinite().all() and y.grad.isfinite().all()
    # large alpha and small epsilon: (theta/eps)^p overflows float32; the loss must not
    xf = torch.tensor([0.2, 0.9], dtype=torch.float32)
    yf = torch.tensor([0.0, 0.0], dtype=torch.float32)
    kw = dict(alpha=30.0, epsilon=0.01, theta=0.5, reduction="none")
    got = LF.adaptive_wing_loss(xf, yf, **kw)
    want = R.adaptive_wing_loss(xf.double(), yf.double(), **kw)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["wing_loss", "adaptive_wing_loss"])
def test_half_gradients_survive_loss_scaling(name):
    """fp16 with mean over 2^22 elements and a GradScaler-like grad_output: input gradients are
    formed in float32 (no underflow of dloss/dinput / n), weight gradients do not overflow."""
    n = 1 << 22
    g = torch.Generator().manual_seed(0)
    x64 = torch.rand(n, generator=g, dtype=torch.float64) * 1.4 - 0.2
    y64 = torch.rand(n, generator=g, dtype=torch.float64)
    w64 = torch.rand(n, generator=g, dtype=torch.float64)
    fn, ref = getattr(LF, name), getattr(R, name)
    x = x64.half().requires_grad_(True)
    w = w64.half().requires_grad_(True)
    fn(x, y64.half(), weight=w).backward(torch.tensor(1024.0, dtype=torch.float16))
    xr = x64.clone().requires_grad_(True)
    wr = w64.clone().requires_grad_(True)
    ref(xr, y64, weight=wr).backward(torch.tensor(1024.0, dtype=torch.float64))
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad)):
        assert got.isfinite().all()
        rel_l1 = (got.double() - want).abs().sum() / want.abs().sum()
        assert rel_l1 < 2e-3, rel_l1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
def test_cuda_sum_error_does_not_grow_with_n():
    """The CUDA reduction sums each thread's elements in float32 in runs of 64, flushed into
    double: n = 2^29 identical terms (2048 per thread) then err by at most the bound of a run of
    64 terms, 63 * 2^-24 (one float accumulator per thread gave about 3e-5 here)."""
    n = 1 << 29
    if torch.cuda.get_device_properties(0).total_memory < 16 * 2**30:
        pytest.skip("needs 16 GiB of GPU memory")
    x = torch.full((n,), 2.2086466, device="cuda")
    y = torch.zeros(n, device="cuda")
    one = LF.wing_loss(x[:1], y[:1], reduction="sum").double().item()  # each term as the kernel forms it
    total = LF.wing_loss(x, y, reduction="sum").double().item()
    expected = one * n
    assert abs(total - expected) <= (63 * 2.0**-24 + 2.0**-24) * expected, (total, expected)
    del x, y
    torch.cuda.empty_cache()


@pytest.mark.parametrize("name", ["wing_loss", "adaptive_wing_loss"])
@pytest.mark.parametrize("arg", ["input", "target"])
@pytest.mark.parametrize("value", [None, [1.0]])
def test_missing_tensor_is_a_type_error_naming_it(name, arg, value):
    """Found by the fuzzer (tests/test_fuzz.py): input or target None raised AttributeError
    ('NoneType' object has no attribute 'dtype') from the checks, and a list got "must be a
    Tensor or None" although None is refused."""
    fn = getattr(LF, name)
    args = {"input": torch.rand(3), "target": torch.rand(3), arg: value}
    with pytest.raises(TypeError, match=f"^{name}: {arg} must be a Tensor, got {type(value).__name__}$"):
        fn(args["input"], args["target"])
