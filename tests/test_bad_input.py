"""Bad input raises a TypeError/ValueError naming the argument; direct raw-op calls raise too.
Empty tensors follow torch's conventions; NaN and inf propagate, never zeroed."""
import inspect
import math
import re

import pytest
import torch

from conftest import grads_of
from lossext.testing.opinfo import outputs


def test_error_inputs(info, device):
    for e in info.error_inputs(device):
        with pytest.raises(e.error_type, match=e.match):
            info.op(*e.sample.args, **e.sample.kwargs)


def test_module_rejects_bad_hyperparameters(info):
    bad = [info.module_bad_hyper] if info.module_bad_hyper else [(k, -1.0) for k in list(info.hyper)[:1]]
    for key, value in bad:  # a loss may have no hyper-parameters
        with pytest.raises(ValueError, match=key):
            info.module(**dict(info.hyper, **{key: value}))
    if "reduction" in inspect.signature(info.module).parameters:  # a Module may have none
        with pytest.raises(ValueError, match="reduction"):
            info.module(**info.hyper, reduction="avg")


def test_raw_op_checks(info, device):
    """torch.ops.lossext.* called directly (bypassing the Python checks) still refuses, with a
    message that is exactly "lossext::<the op called>: argument '<name>' ...": no C++ function,
    source path or line in front (the Python layer parses that prefix)."""
    for name, args, match in info.raw_error_inputs(device):
        with pytest.raises(RuntimeError, match=match) as e:
            getattr(torch.ops.lossext, name)(*args)
        msg = str(e.value)
        assert msg.startswith(f"lossext::{name}: argument '"), msg
        assert not re.search(r"\.(cpp|cu|cuh|h):\d+|csrc/", msg), msg


def test_empty(info, device):
    """Empty inputs: 'mean' is NaN (or the row's empty_mean, a peer's value), 'sum' is 0, 'none'
    is empty (an op without a reduction: each output as 'mean'); backward gives empty grads."""
    samples = [s for s in info.sample_inputs(device, torch.float32) if s.args[0].numel() == 0]
    assert samples, "OpInfo has no empty sample"
    for s in samples:
        out, grads = grads_of(info.op, s)
        red = s.kwargs.get("reduction", "mean")
        for o in outputs(out):
            if red == "mean":
                assert o.isnan().all() if math.isnan(info.empty_mean) else (o == info.empty_mean).all()
            elif red == "sum":
                assert (o == 0).all()
            else:
                assert o.numel() == 0
        assert all(g.numel() == t.numel() for g, t in zip(grads, s.float_tensors()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_propagate(info, device, bad):
    if not info.elementwise:
        pytest.skip("element-wise check; the op's own tests cover NaN/inf")
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
        assert torch.equal(loss[hit.to(device)].cpu().double(), ref.cpu()[hit])  # +inf
    assert loss[~hit.to(device)].isfinite().all()
    loss.sum().backward()
    if math.isnan(bad):
        assert xr.grad[hit.to(device)].isnan().all()
    assert xr.grad[~hit.to(device)].isfinite().all()
    for red in ("mean", "sum"):
        out = info.op(x, y, **info.hyper, reduction=red)
        assert math.isnan(out.item()) if math.isnan(bad) else out.item() == math.inf


def test_weight_conversions(info, device):
    if not info.elementwise:
        pytest.skip("per-element weight only")
    x, y = info.bench_input(24, device, torch.float32).args
    x, y = x.reshape(4, 6), y.reshape(4, 6)
    mask = torch.rand(4, 1, device=device) > 0.5
    a = info.op(x, y, **info.hyper, weight=mask)
    b = info.op(x, y, **info.hyper, weight=mask.float().expand(4, 6).contiguous())
    torch.testing.assert_close(a, b)
