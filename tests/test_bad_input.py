"""Bad input raises a TypeError/ValueError naming the argument; direct raw-op calls raise too.
Empty tensors follow torch's conventions; NaN and inf propagate, never zeroed."""
import math

import pytest
import torch


def test_error_inputs(info, device):
    for e in info.error_inputs(device):
        with pytest.raises(e.error_type, match=e.match):
            info.op(*e.sample.args, **e.sample.kwargs)


def test_module_rejects_bad_hyperparameters(info):
    key = next(iter(info.hyper))
    with pytest.raises(ValueError, match=key):
        info.module(**dict(info.hyper, **{key: -1.0}))
    with pytest.raises(ValueError, match="reduction"):
        info.module(**info.hyper, reduction="avg")


def test_raw_op_checks(info, device):
    """torch.ops.lossext.* called directly (bypassing the Python checks) still refuses."""
    x, y = info.bench_input(12, device, torch.float32).args
    fwd = getattr(torch.ops.lossext, info.raw_ops[0])
    params = [float(v) for v in info.hyper.values()]
    with pytest.raises(RuntimeError, match="'target' has shape"):
        fwd(x, y[:5], None, *params, 1)
    with pytest.raises(RuntimeError, match="'input' must be float16"):
        fwd(x.long(), y.long(), None, *params, 1)
    with pytest.raises(RuntimeError, match="'target' has dtype"):
        fwd(x, y.double(), None, *params, 1)
    with pytest.raises(RuntimeError, match="'weight' has shape"):
        fwd(x, y, x[:3], *params, 1)
    with pytest.raises(RuntimeError, match="'reduction' must be"):
        fwd(x, y, None, *params, 7)
    bad = list(params)
    bad[-1] = -1.0  # last hyper-parameter must be positive for every landmark loss
    with pytest.raises(RuntimeError, match="must be"):
        fwd(x, y, None, *bad, 1)
    bwd = getattr(torch.ops.lossext, info.name + "_backward")
    with pytest.raises(RuntimeError, match="'grad_output'"):
        bwd(torch.ones(3, device=device), x, y, None, *params, 1)
    with pytest.raises(RuntimeError, match="'grad_output' has shape"):
        bwd(torch.ones(3, device=device), x, y, None, *params, 0)


def test_empty(info, device):
    x = torch.empty(0, 5, device=device, requires_grad=True)
    y = torch.empty(0, 5, device=device)
    assert math.isnan(info.op(x, y, **info.hyper, reduction="mean").item())
    s = info.op(x, y, **info.hyper, reduction="sum")
    assert s.item() == 0.0
    s.backward()
    assert x.grad.shape == (0, 5)
    assert info.op(x, y, **info.hyper, reduction="none").shape == (0, 5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_propagate(info, device, bad):
    x, y = info.bench_input(1000, device, torch.float32).args
    x = x.clone()
    x[[3, 500, 999]] = bad
    xr = x.clone().requires_grad_(True)
    loss = info.op(xr, y, **info.hyper, reduction="none")
    ref = info.ref(x.double(), y.double(), **info.hyper, reduction="none")
    hit = torch.zeros(1000, dtype=torch.bool)
    hit[[3, 500, 999]] = True
    if math.isnan(bad):
        assert loss[hit.to(device)].isnan().all()
    else:
        assert torch.equal(loss[hit.to(device)].cpu().double(), ref[hit])  # +inf
    assert loss[~hit.to(device)].isfinite().all()
    loss.sum().backward()
    if math.isnan(bad):
        assert xr.grad[hit.to(device)].isnan().all()
    assert xr.grad[~hit.to(device)].isfinite().all()
    for red in ("mean", "sum"):
        out = info.op(x, y, **info.hyper, reduction=red)
        assert math.isnan(out.item()) if math.isnan(bad) else out.item() == math.inf


def test_weight_conversions(info, device):
    x, y = info.bench_input(24, device, torch.float32).args
    x, y = x.reshape(4, 6), y.reshape(4, 6)
    mask = torch.rand(4, 1, device=device) > 0.5
    a = info.op(x, y, **info.hyper, weight=mask)
    b = info.op(x, y, **info.hyper, weight=mask.float().expand(4, 6).contiguous())
    torch.testing.assert_close(a, b)
