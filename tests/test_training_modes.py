"""Every PyTorch training mode, for every op of the table and every Module (issue 8): autocast,
torch.compile without recompiles, TorchScript, torch.func (grad, vjp, jacrev, jvp, vmap),
forward-mode AD, devices (a meta argument raises), type promotion, numpy numbers, memory
format, repr. A new loss gets all of these by adding its OpInfo rows (with module_samples)."""
import inspect
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

import lossext.nn as LN
from conftest import assert_close, grad_outputs, grads_of, output_pairs
from lossext.testing import OP_DB
from lossext.testing.opinfo import outputs

CUDA = torch.cuda.is_available()
AUTOCAST = [("cpu", torch.bfloat16)] + ([("cuda", torch.float16), ("cuda", torch.bfloat16)] if CUDA else [])


def _small(info, device, dtype=torch.float64, n=3):
    out = []
    for s in info.sample_inputs(device, dtype, small=True):
        if s.args[0].numel() == 0 or s.args[0].numel() > 200:
            continue
        out.append(s)
        if len(out) == n:
            break
    return out


def _modules(info, device, dtype=torch.float32):
    return info.module_samples(device, dtype)


def test_every_module_has_module_samples():
    covered = {type(m).__name__ for info in OP_DB for m, _, _ in _modules(info, "cpu")}
    assert covered == set(LN.__all__)


# ---- 1. autocast --------------------------------------------------------------------------

def _err(a, b):
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("dev,low", AUTOCAST, ids=[f"{d}-{str(t)[6:]}" for d, t in AUTOCAST])
def test_autocast_losses_are_float32(info, dev, low):
    """Under autocast a loss is float32 (as F.cross_entropy, F.mse_loss): its first input comes
    from a lower-precision layer, the rest stay float32. Its error against the float32 result
    is within 2x that of the PyTorch composite under the same autocast."""
    for red in info.reductions(("mean", "none")):
        sample = info.bench_input(2048, dev, torch.float32)
        sample.kwargs = info.with_reduction(sample.kwargs, red)
        first, *rest = sample.float_tensors()
        leaf = first.detach().to(low).requires_grad_(True)
        s = sample.replace_float_tensors([leaf, *rest])
        base = sample.replace_float_tensors([leaf.detach().float(), *rest])
        truth = info.op(*base.args, **base.kwargs)
        composite = info.bench_ref or info.ref
        with torch.autocast(dev, dtype=low):
            ours = info.op(*s.args, **s.kwargs)
            theirs = composite(*s.args, **s.kwargs)
        for (o, tr), th in zip(output_pairs(ours, truth), outputs(theirs)):
            assert o.dtype == torch.float32, red
            floor = 8 * torch.finfo(torch.float32).eps * max(1.0, tr.abs().max().item())
            assert _err(o, tr) <= 2 * max(_err(th, tr), floor), red
        sum(o.sum() for o in outputs(ours)).backward()
        assert leaf.grad is not None and leaf.grad.dtype == low and leaf.grad.isfinite().all()


@pytest.mark.parametrize("dev,low", AUTOCAST, ids=[f"{d}-{str(t)[6:]}" for d, t in AUTOCAST])
def test_autocast_module_training_step(info, dev, low):
    """The issue's step: a float32 backbone layer under autocast feeds each Module."""
    for module, args, kwargs in _modules(info, dev):
        first, *rest = args
        layer = torch.nn.Linear(first.shape[-1], first.shape[-1]).to(dev)
        with torch.autocast(dev, dtype=low):
            out = module(layer(first), *rest, **kwargs)
            assert out.dtype == torch.float32, type(module).__name__
            out.backward()
        for p in list(layer.parameters()) + list(module.parameters()):
            assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.isfinite().all()


# ---- 2. torch.compile: one compilation for a whole training loop ---------------------------

def test_compiled_training_loop_compiles_once(info, device):
    for module, args, kwargs in _modules(info, device):
        torch._dynamo.reset()
        frames = []

        def backend(gm, example_inputs):
            frames.append(gm)
            return gm.forward

        leaves = [a.detach().clone().requires_grad_(True) if a.is_floating_point() else a for a in args]
        params = [a for a in leaves if a.is_floating_point()] + list(module.parameters())
        opt = torch.optim.SGD(params, lr=1e-3)
        compiled = torch.compile(module, fullgraph=True, backend=backend)
        for _ in range(20):
            opt.zero_grad()
            compiled(*leaves, **kwargs).backward()
            opt.step()
            if hasattr(module, "step"):
                module.step()  # a schedule (SphereFace's lambda) advances every step
        assert len(frames) == 1, f"{type(module).__name__}: {len(frames)} compilations in 20 steps"


# ---- 3. TorchScript -----------------------------------------------------------------------

def _script(obj):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(obj)


def test_script_functional_same_as_eager(info):
    scripted = _script(info.op)
    for sample in _small(info, "cpu", torch.float32, n=6):
        assert_close(scripted(*sample.args, **sample.kwargs), info.op(*sample.args, **sample.kwargs), 0, 0,
                     repr(sample))
        _, g_script = grads_of(scripted, sample)
        _, g_eager = grads_of(info.op, sample)
        for a, b in zip(g_script, g_eager):
            assert_close(a, b, 0, 0, repr(sample))


def test_script_keeps_the_argument_checks(info):
    """The scripted function raises the eager ValueError messages for bad values."""
    scripted = _script(info.op)
    checked = 0
    for e in info.error_inputs("cpu"):
        if e.error_type is not ValueError:
            continue
        try:
            scripted(*e.sample.args, **e.sample.kwargs)
        except torch.jit.Error as err:
            assert re.search(e.match, str(err)), (e.match, str(err)[-300:])
            checked += 1
        except RuntimeError as err:
            if re.search(e.match, str(err)):  # a kernel's own check, raised inside the interpreter
                checked += 1
                continue
            # the call does not type-check in TorchScript (e.g. a str target)
            assert "Expected a value of type" in str(err) or "Arguments for call are not valid" in str(err), err
    assert checked


def test_script_every_module(info, device):
    for module, args, kwargs in _modules(info, device):
        scripted = _script(module)
        assert_close(scripted(*args, **kwargs), module(*args, **kwargs), 0, 0, type(module).__name__)


# ---- 4. torch.func and forward-mode AD ----------------------------------------------------

def _fn_of_floats(info, sample):
    def f(*ts):
        s = sample.replace_float_tensors(ts)
        return info.op(*s.args, **s.kwargs)
    return f


def test_func_grad_vjp_jacrev(info):
    for sample in _small(info, "cpu"):
        leaves = sample.float_tensors()
        f = _fn_of_floats(info, sample)
        out, expect = grads_of(info.op, sample)
        go = grad_outputs(out)  # grads_of's
        several = isinstance(out, tuple)
        _, pull = torch.func.vjp(f, *leaves)
        for a, b in zip(pull(tuple(go) if several else go[0]), expect):
            assert_close(a, b, 1e-10, 1e-12, repr(sample))
        if not several and out.dim() == 0:  # torch.func.grad takes one scalar output
            g = torch.func.grad(f, argnums=tuple(range(len(leaves))))(*leaves)
            for a, b in zip(g, expect):
                assert_close(a, b * (1.0 / go[0].item()) if go[0].item() else b, 1e-8, 1e-10, repr(sample))
        jac = torch.func.jacrev(f)(*leaves)
        for j, o in output_pairs(jac, out):
            assert j.shape == o.shape + leaves[0].shape


def test_func_jvp_is_right_or_refused(info):
    """jvp / forward_ad give the directional derivative that reverse mode gives, or raise
    NotImplementedError naming the op: never a silent zero tangent."""
    for sample in _small(info, "cpu"):
        leaves = sample.float_tensors()
        gen = torch.Generator().manual_seed(1)
        tangents = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in leaves]
        f = _fn_of_floats(info, sample)
        out = f(*leaves)
        # reverse mode: d out_i = sum_j J_ij t_j, from jacrev (per output of an op with several)
        jacs = torch.func.jacrev(f, argnums=tuple(range(len(leaves))))(*leaves)
        expect = [sum((j.reshape(o.numel(), -1) @ t.reshape(-1)).reshape(o.shape) for j, t in zip(js, tangents))
                  for o, js in zip(outputs(out), jacs if isinstance(out, tuple) else [jacs])]
        try:
            _, t_out = torch.func.jvp(f, tuple(leaves), tuple(tangents))
        except NotImplementedError as e:
            assert "lossext." in str(e) and "not implemented" in str(e), e
            continue
        assert_close(t_out, expect, 1e-8, 1e-10, repr(sample))
        with forward_ad.dual_level():
            duals = [forward_ad.make_dual(t, d) for t, d in zip(leaves, tangents)]
            t_ad = [forward_ad.unpack_dual(o).tangent for o in outputs(f(*duals))]
        assert all(t is not None for t in t_ad)
        assert_close(t_ad, expect, 1e-8, 1e-10, repr(sample))


def test_second_derivatives_are_refused_under_func(info):
    sample = _small(info, "cpu", n=1)[0]
    f = _fn_of_floats(info, sample)
    x = sample.float_tensors()
    g = lambda *ts: sum(o.sum() for o in outputs(f(*ts)))  # noqa: E731
    with pytest.raises(NotImplementedError, match="lossext"):
        torch.func.hessian(g)(*x)
    with pytest.raises(NotImplementedError, match="lossext"):
        torch.func.grad(lambda *ts: torch.func.grad(g)(*ts).sum())(*x)


def test_vmap(info):
    """vmap over a batch of two samples equals the two calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-sample fallback's performance warning
        for sample in _small(info, "cpu", n=2):
            other = sample.map_tensors(lambda t: t.flip(0) if t.dim() else t)
            leaves = [torch.stack([a, b]) for a, b in zip(sample.float_tensors(), other.float_tensors())]
            f = _fn_of_floats(info, sample)
            batched = torch.func.vmap(f)(*leaves)
            first = [b[0] for b in outputs(batched)]
            assert_close(first if isinstance(batched, tuple) else first[0], f(*sample.float_tensors()), 1e-12, 1e-12,
                         repr(sample))


# ---- 5. devices ---------------------------------------------------------------------------

def test_raw_ops_refuse_an_argument_on_another_device(info):
    """A raw op with one tensor on the meta device raises (as torch's ops do) instead of
    returning uninitialized memory from the fake kernel."""
    sample = _small(info, "cpu", torch.float32, n=1)[0]
    for name, args in info.raw_calls(sample):
        op = getattr(torch.ops.lossext, name)
        if sum(isinstance(a, torch.Tensor) for a in args) < 2:
            continue  # one tensor on meta is a meta call, not a mismatch
        for i, a in enumerate(args):
            if not isinstance(a, torch.Tensor):
                continue
            moved = tuple(b.to("meta") if j == i else b for j, b in enumerate(args))
            with pytest.raises(RuntimeError, match="device"):
                op(*moved)
    if CUDA:
        for name, args in info.raw_calls(sample):
            op = getattr(torch.ops.lossext, name)
            cuda = tuple(b.cuda() if isinstance(b, torch.Tensor) else b for b in args)
            for i, a in enumerate(cuda):
                if isinstance(a, torch.Tensor):
                    mixed = tuple(b.cpu() if j == i else b for j, b in enumerate(cuda))
                    with pytest.raises(RuntimeError, match="device"):
                        op(*mixed)


# ---- friction: numbers, promotion, memory format, repr, int64 range -----------------------

def _numpy(v):
    if isinstance(v, bool) or v is None or isinstance(v, (str, torch.Tensor, list, tuple)):
        return v  # not a number (a list: the region loss's anchors)
    return np.int64(v) if isinstance(v, int) else np.float32(v) if float(np.float32(v)) == v else np.float64(v)


def test_numpy_scalars_are_numbers(info):
    for sample in _small(info, "cpu", torch.float32, n=4):
        kw = {k: _numpy(v) for k, v in sample.kwargs.items()}
        assert_close(info.op(*sample.args, **kw), info.op(*sample.args, **sample.kwargs), 0, 0, repr(sample))
    hyper = {k: _numpy(v) for k, v in info.hyper.items()}
    assert repr(info.module(**hyper)) == repr(info.module(**info.hyper))


def test_elementwise_type_promotion(info):
    if not info.elementwise:
        pytest.skip("input/target promotion is the element-wise rule (F.mse_loss)")
    x, y = info.bench_input(64, "cpu", torch.float32).args
    out = info.op(x, y.double(), **info.hyper)
    assert out.dtype == torch.float64
    assert_close(out, info.op(x.double(), y.double(), **info.hyper), 0, 0)
    assert info.op(x.half(), y, **info.hyper).dtype == torch.float32


def test_none_keeps_the_memory_format(info):
    if not info.elementwise:
        pytest.skip("element-wise outputs have the input's layout")
    x, y = info.bench_input(2 * 3 * 4 * 5, "cpu", torch.float64).args
    x, y = x.reshape(2, 3, 4, 5), y.reshape(2, 3, 4, 5)
    xc = x.to(memory_format=torch.channels_last).requires_grad_(True)
    out = info.op(xc, y, **info.hyper, reduction="none")
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, info.op(x, y, **info.hyper, reduction="none"), 0, 0)
    out.backward(torch.ones_like(out))
    assert xc.grad.is_contiguous(memory_format=torch.channels_last)
    w = torch.rand(2, 1, 4, 5, dtype=torch.float64)
    assert_close(info.op(xc, y, **info.hyper, weight=w, reduction="none"),
                 info.op(x, y, **info.hyper, weight=w, reduction="none"), 0, 0)


def test_module_repr_shows_every_setting(info):
    for module, _, _ in _modules(info, "cpu"):
        text = repr(module)
        for name in inspect.signature(type(module).__init__).parameters:
            if name not in ("self", "kw", "kwargs", "args") and not name.startswith("_"):
                assert f"{name}=" in text, f"{type(module).__name__}: {name} missing from {text}"


def test_integers_beyond_int64_name_the_argument(info):
    for sample in _small(info, "cpu", torch.float32, n=1):
        for key in ("ignore_index", "chunk_size"):
            if key in inspect.signature(info.op).parameters:
                with pytest.raises(ValueError, match=f"{key} must fit in int64"):
                    info.op(*sample.args, **dict(sample.kwargs, **{key: 2 ** 70}))
