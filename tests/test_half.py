"""float16 / bfloat16: computed in float32 and returned in the input dtype. The error against
the float64 reference is at most 2x that of PyTorch's own composite run in the same dtype
(or, where that composite overflows, a few units in the last place of the true value)."""
import math

import pytest
import torch

from conftest import grad_outputs, output_pairs, to_ref
from lossext.testing.opinfo import outputs


def _err(a, b):
    return (a.detach().double().cpu() - b.detach().double()).abs().max().item() if a.numel() else 0.0


def _bound(theirs_err, floor, truth, dtype):
    """2x PyTorch's error; where PyTorch's own composite overflows to inf/NaN although the true
    value fits the dtype (e.g. fp16 logits at s = 64), 4 units in the last place of the largest
    true value instead."""
    if not math.isfinite(theirs_err) and truth.to(dtype).isfinite().all():
        return 4 * floor
    return 2 * max(theirs_err, floor)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_error(info, device, dtype):
    for red in info.reductions(("none", "mean", "sum")):
        sample = info.bench_input(4099, device, dtype)
        sample.kwargs = info.with_reduction(sample.kwargs, red)
        ref = to_ref(sample)
        truth = info.ref(*ref.args, **ref.kwargs)
        ours = info.op(*sample.args, **sample.kwargs)
        theirs = info.ref(*sample.args, **sample.kwargs)
        for (o, tr), th in zip(output_pairs(ours, truth), outputs(theirs)):
            assert o.dtype == dtype
            # a floor of one unit in the last place of the result's magnitude, for exact ties
            floor = torch.finfo(dtype).eps * max(1.0, tr.abs().max().item())
            assert _err(o, tr) <= _bound(_err(th, tr), floor, tr, dtype), red

        # gradients
        xs = sample.args[0].detach().clone().requires_grad_(True)
        xr = sample.args[0].detach().clone().requires_grad_(True)
        x64 = ref.args[0].clone().requires_grad_(True)
        go = grad_outputs(truth)
        low = [g.to(device, dtype) for g in go]
        (g_ours,) = torch.autograd.grad(outputs(info.op(xs, *sample.args[1:], **sample.kwargs)), xs, low)
        (g_theirs,) = torch.autograd.grad(outputs(info.ref(xr, *sample.args[1:], **sample.kwargs)), xr, low)
        (g_truth,) = torch.autograd.grad(outputs(info.ref(x64, *ref.args[1:], **ref.kwargs)), x64, go)
        gfloor = torch.finfo(dtype).eps * max(1.0, g_truth.abs().max().item())
        assert g_ours.dtype == dtype
        assert _err(g_ours, g_truth) <= _bound(_err(g_theirs, g_truth), gfloor, g_truth, dtype), f"grad {red}"
