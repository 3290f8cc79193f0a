"""gradcheck in float64; double backward raises clearly (not supported, see functional docs)."""
import pytest
import torch


def _small_samples(info, device):
    for s in info.sample_inputs(device, torch.float64, small=True):
        if s.args[0].numel() <= 64:
            yield s


def test_gradcheck(info, device):
    for sample in _small_samples(info, device):
        tensors = [t.detach().clone().requires_grad_(True) for t in sample.tensors()]
        has_w = "weight" in sample.kwargs

        def fn(*ts):
            kwargs = dict(sample.kwargs)
            if has_w:
                kwargs["weight"] = ts[2]
            return info.op(ts[0], ts[1], **kwargs)

        assert torch.autograd.gradcheck(fn, tuple(tensors), eps=1e-6, atol=1e-5), sample


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_raises(info, device, reduction):
    x, y = info.bench_input(16, device, torch.float64).args
    x = x.clone().requires_grad_(True)
    loss = info.op(x, y, **dict(info.hyper, reduction=reduction)).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()
