"""torch.compile(fullgraph=True) forward+backward, torch.export save/load, torch.jit.script."""
import io
import warnings

import torch

from conftest import assert_close


def _inputs(info, device, n=37):
    x, y = info.bench_input(n, device, torch.float32).args
    return x.reshape(1, n), y.reshape(1, n)


def test_compile_fullgraph_forward_backward(info, device):
    torch._dynamo.reset()
    x, y = _inputs(info, device)
    w = torch.rand(1, 1, device=device, requires_grad=True)

    def f(x, y, w):
        return info.op(x, y, **info.hyper, weight=w) * 2.0

    compiled = torch.compile(f, fullgraph=True)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    we, wc = w.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    le, lc = f(xe, y, we), compiled(xc, y, wc)
    le.backward()
    lc.backward()
    assert_close(lc, le, 1e-6, 1e-6)
    assert_close(xc.grad, xe.grad, 1e-6, 1e-6)
    assert_close(wc.grad, we.grad, 1e-6, 1e-6)


class _Wrap(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.loss = module

    def forward(self, x, y):
        return self.loss(x, y)


def test_export_save_load(info, device):
    x, y = _inputs(info, device)
    model = _Wrap(info.module(**info.hyper, reduction="none"))
    ep = torch.export.export(model, (x, y))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    assert_close(loaded.module()(x, y), model(x, y), 0, 0)
    assert any("lossext" in str(n.target) for n in loaded.graph.nodes)


def test_jit_script(info, device):
    x, y = _inputs(info, device)
    name = info.raw_ops[0]
    if name == "wing_loss":
        def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.ops.lossext.wing_loss(x, y, None, 10.0, 2.0, 1)
    else:
        def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.ops.lossext.adaptive_wing_loss(x, y, None, 2.1, 14.0, 1.0, 0.5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(f)
    assert_close(scripted(x, y), info.op(x, y, **info.hyper), 0, 0)
    assert "lossext::" in str(scripted.graph)
