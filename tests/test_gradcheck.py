"""gradcheck in float64; double backward raises clearly (not supported, see functional docs)."""
import pytest
import torch

from lossext.testing.opinfo import outputs


def _small_samples(info, device):
    for s in info.sample_inputs(device, torch.float64, small=True):
        if s.args[0].numel() == 0 and s.kwargs.get("reduction") == "mean":
            continue  # NaN by convention (test_bad_input.test_empty): finite differences are NaN
        if info.gradcheck_skip is not None and info.gradcheck_skip(s):
            continue  # its gradient holds a term constant on purpose (the reference checks it)
        if s.args[0].numel() <= 64:
            yield s


def test_gradcheck(info, device, cpu_isa):
    """gradcheck wrt every floating tensor of each small sample (input, target, weight, ...)."""
    for sample in _small_samples(info, device):
        tensors = sample.float_tensors()
        var = [i for i in range(len(tensors)) if i not in info.constant_tensors]
        leaves = tuple(tensors[i].detach().clone().requires_grad_(True) for i in var)

        def fn(*ts):
            full = list(tensors)
            for i, t in zip(var, ts):
                full[i] = t
            s = sample.replace_float_tensors(full)
            return info.op(*s.args, **s.kwargs)

        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5), sample


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_raises(info, device, reduction):
    if not info.has_reduction and reduction != "mean":
        pytest.skip("the op has no reduction argument: its one call is the 'mean' case")
    sample = info.bench_input(16, device, torch.float64)
    x = sample.args[0].clone().requires_grad_(True)
    loss = sum(o.sum() for o in outputs(info.op(x, *sample.args[1:], **info.with_reduction(sample.kwargs, reduction))))
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()
