"""torch.compile(fullgraph=True) forward+backward, torch.export save/load, torch.jit.script."""
import io
import warnings

import torch

from conftest import assert_close, grads_of


def _compile_samples(info, device):
    yield info.bench_input(37, device, torch.float32)
    for s in info.sample_inputs(device, torch.float32, small=True):
        if len(s.float_tensors()) > 2 and s.args[0].numel() > 0:  # one with a weight, if the op has one
            yield s
            break


def test_compile_fullgraph_forward_backward(info, device):
    for sample in _compile_samples(info, device):
        torch._dynamo.reset()

        def f(*args, **kwargs):
            out = info.op(*args, **kwargs)
            return tuple(o * 2.0 for o in out) if isinstance(out, tuple) else out * 2.0

        compiled = torch.compile(f, fullgraph=True)
        le, ge = grads_of(f, sample)
        lc, gc = grads_of(compiled, sample)
        assert_close(lc, le, 1e-6, 1e-6, repr(sample))
        for a, b in zip(gc, ge):
            assert_close(a, b, 1e-6, 1e-6, repr(sample))


class _Wrap(torch.nn.Module):
    def __init__(self, module, kwargs):
        super().__init__()
        self.loss = module
        self.kwargs = kwargs

    def forward(self, *args):
        return self.loss(*args, **self.kwargs)


def test_export_save_load(info, device):
    sample = info.bench_input(37, device, torch.float32)
    sample.kwargs = info.with_reduction(sample.kwargs, "none")
    # where no Module computes the call (module_call None: e.g. a reduction no Module takes), the function
    module, args, kwargs = info.module_call(sample) or (info.op, sample.args, sample.kwargs)
    model = _Wrap(module, kwargs)
    ep = torch.export.export(model, tuple(args))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    assert_close(loaded.module()(*args), model(*args), 0, 0)
    assert any("lossext" in str(n.target) for n in loaded.graph.nodes)


def test_jit_script(info, device):
    sample = info.bench_input(37, device, torch.float32)
    source, args = info.jit_source(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = torch.jit.CompilationUnit(source).f
    assert "lossext::" in str(f.graph)
    assert_close(f(*args), info.op(*sample.args, **sample.kwargs), 0, 0)
