"""The one table of lossext ops, in the style of PyTorch's OpInfo.

Generic tests (tests/test_*.py) and the benchmarks (benchmarks/) iterate over OP_DB. A new
loss adds one OpInfo row here (functional, reference, Module, raw ops, sample / edge / error
/ benchmark inputs, tolerances) and puts only its own special tests in a tests file of its own.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .. import functional as LF
from .. import nn as LN
from .. import reference as R


@dataclass
class SampleInput:
    """A call op(*args, **kwargs). Tensors that may take gradients are in args and in
    kwargs['weight']."""
    args: Tuple
    kwargs: Dict = field(default_factory=dict)
    name: str = ""

    def tensors(self):
        ts = [a for a in self.args if isinstance(a, torch.Tensor)]
        w = self.kwargs.get("weight")
        return ts + ([w] if isinstance(w, torch.Tensor) else [])

    def float_tensors(self):
        """The floating-point tensors, in order: the ones that can take gradients (integer
        labels and masks never do)."""
        return [t for t in self.tensors() if t.is_floating_point()]

    def replace_float_tensors(self, new):
        """A copy with float_tensors() replaced, in order, by `new`."""
        it = iter(new)
        return self.map_tensors(lambda t: next(it) if t.is_floating_point() else t)

    def map_tensors(self, fn):
        args = tuple(fn(a) if isinstance(a, torch.Tensor) else a for a in self.args)
        kwargs = {k: (fn(v) if isinstance(v, torch.Tensor) else v) for k, v in self.kwargs.items()}
        return SampleInput(args, kwargs, self.name)

    def __repr__(self):
        shapes = [tuple(t.shape) for t in self.tensors()]
        return f"SampleInput({self.name}, shapes={shapes}, kwargs={ {k: v for k, v in self.kwargs.items() if not isinstance(v, torch.Tensor)} })"


@dataclass
class ErrorInput:
    sample: SampleInput
    error_type: type
    match: str  # regex; must name the offending argument


@dataclass
class OpInfo:
    name: str
    op: Callable                       # lossext.functional.<name>
    ref: Callable                      # lossext.reference.<name>, same signature
    module: Callable                   # lossext.nn Module class
    raw_ops: List[str]                 # torch.ops.lossext.<raw> that implement it
    hyper: Dict                        # default hyper-parameters (Module kwargs)
    sample_inputs: Callable[..., Iterable[SampleInput]]   # (device, dtype, small) -> samples
    edge_inputs: Callable[..., Iterable[SampleInput]]     # (device, dtype) -> branch edges
    error_inputs: Callable[..., Iterable[ErrorInput]]     # (device) -> bad calls
    bench_input: Callable[..., SampleInput]               # (numel, device, dtype) -> sample
    # sample -> [(raw op name, positional args)]: direct calls of every raw op (for opcheck)
    raw_calls: Callable[[SampleInput], List[Tuple[str, Tuple]]]
    # (rtol, atol) against the float64 reference, per dtype
    tol: Dict[torch.dtype, Tuple[float, float]]
    # sample -> (Module, args, kwargs): the same call through the lossext.nn Module
    module_call: Callable[[SampleInput], Tuple[Callable, Tuple, Dict]] = None
    # sample -> (TorchScript source defining `f`, args): a function calling a raw op
    jit_source: Callable[[SampleInput], Tuple[str, Tuple]] = None
    # device -> [(raw op name, args, regex)]: direct raw-op calls that must raise RuntimeError
    raw_error_inputs: Callable[..., List[Tuple[str, Tuple, str]]] = None
    # Which checks apply beyond the generic ones: element-wise losses (output 'none' has the
    # input's shape, a bad value at one element shows at that element only, weight broadcasts).
    elementwise: bool = False
    # Tensors the op must read and write in each benchmark mode, as multiples of numel:
    # the memory-copy floor moves the same number of bytes.
    bench_bytes: Dict[str, int] = field(default_factory=lambda: {"forward": 2, "backward": 3, "full": 3})
    family: str = ""


def op_by_name(name):
    for info in OP_DB:
        if info.name == name:
            return info
    raise KeyError(name)


def _make(shape, device, dtype, low, high, gen):
    t = torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low
    return t.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------
# Landmark regression: Wing, Adaptive Wing
# ------------------------------------------------------------------------------------------

def _pointwise_samples(lo_x, hi_x, lo_y, hi_y, hyper):
    def samples(device, dtype, small=False):
        gen = torch.Generator().manual_seed(0)
        mk = lambda shape, lo, hi: _make(shape, device, dtype, lo, hi, gen)  # noqa: E731
        shapes = [(), (1,), (7,), (3, 5), (4, 68, 2), (2, 3, 9, 7)]
        if not small:
            shapes += [(1023,), (2, 17, 16, 12)]
        for red in ("mean", "sum", "none"):
            for shape in shapes:
                x, y = mk(shape, lo_x, hi_x), mk(shape, lo_y, hi_y)
                yield SampleInput((x, y), dict(hyper, reduction=red), f"{red}-{shape}")
            # per-element weight, and a broadcast one (landmark visibility [B, L, 1])
            x, y = mk((4, 68, 2), lo_x, hi_x), mk((4, 68, 2), lo_y, hi_y)
            yield SampleInput((x, y), dict(hyper, reduction=red, weight=mk((4, 68, 2), 0, 1)), f"{red}-weight")
            yield SampleInput((x, y), dict(hyper, reduction=red, weight=mk((4, 68, 1), 0, 1)), f"{red}-bcast-weight")
            # non-contiguous: a transpose and a strided slice; an expanded target
            x, y = mk((9, 13), lo_x, hi_x), mk((9, 13), lo_y, hi_y)
            yield SampleInput((x.t(), y.t()), dict(hyper, reduction=red), f"{red}-transposed")
            x, y = mk((42,), lo_x, hi_x), mk((42,), lo_y, hi_y)
            yield SampleInput((x[::3], y[1::3]), dict(hyper, reduction=red), f"{red}-strided")
            yv = mk((1, 7), lo_y, hi_y)
            yield SampleInput((mk((5, 7), lo_x, hi_x), yv.expand(5, 7)), dict(hyper, reduction=red), f"{red}-expanded")
            # empty
            yield SampleInput((mk((0, 3), lo_x, hi_x), mk((0, 3), lo_y, hi_y)), dict(hyper, reduction=red), f"{red}-empty")
    return samples


def _wing_edges(device, dtype):
    w = 10.0
    # d = x - y on both sides of and exactly at the branch point |d| = w, at 0 and tiny
    d = torch.tensor([-2 * w, -w, -w + 1e-3, -1.0, -1e-6, 0.0, 1e-6, 1.0, w - 1e-3, w, w + 1e-3, 3 * w],
                     dtype=torch.float64)
    y = torch.linspace(-1, 1, d.numel(), dtype=torch.float64)
    for red in ("none", "mean", "sum"):
        yield SampleInput(((y + d).to(device, dtype), y.to(device, dtype)),
                          dict(width=w, curvature=2.0, reduction=red), f"{red}-edges")


def _awing_edges(device, dtype):
    theta = 0.5
    y = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.7, 0.5, 0.2], dtype=torch.float64)
    D = torch.tensor([0.0, theta, theta - 1e-3, theta + 1e-3, 0.0, theta, 1e-6, theta, -theta, 0.1, 2.0, -1.5],
                     dtype=torch.float64)
    for red in ("none", "mean", "sum"):
        yield SampleInput(((y + D).to(device, dtype), y.to(device, dtype)),
                          dict(alpha=2.1, omega=14.0, epsilon=1.0, theta=theta, reduction=red), f"{red}-edges")


def _pointwise_errors(fn_name, hyper, bad_hypers):
    def errors(device):
        x = torch.rand(4, 3, device=device)
        y = torch.rand(4, 3, device=device)
        E = []
        E.append(ErrorInput(SampleInput((x, torch.rand(4, 2, device=device)), dict(hyper)), ValueError, "target shape"))
        E.append(ErrorInput(SampleInput((x.long(), y.long()), dict(hyper)), TypeError, "input must be float"))
        E.append(ErrorInput(SampleInput((x, y.double()), dict(hyper)), TypeError, "target dtype"))
        E.append(ErrorInput(SampleInput((x, y.to("meta")), dict(hyper)), ValueError, "target is on"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, reduction="avg")), ValueError, "reduction must be"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, weight=torch.rand(5, device=device))), ValueError, "weight of shape"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, weight=torch.rand(4, 3, 2, device=device))), ValueError, "weight of shape"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, weight=[1.0])), TypeError, "weight must be"))
        E.append(ErrorInput(SampleInput((x, "y"), dict(hyper)), TypeError, "target must be a Tensor"))
        for key, value, match in bad_hypers:
            E.append(ErrorInput(SampleInput((x, y), dict(hyper, **{key: value})), ValueError, match))
        return E
    return errors


def _bench(lo_x, hi_x, lo_y, hi_y, hyper):
    def make(numel, device, dtype):
        gen = torch.Generator().manual_seed(0)
        x = _make((numel,), device, dtype, lo_x, hi_x, gen)
        y = _make((numel,), device, dtype, lo_y, hi_y, gen)
        return SampleInput((x, y), dict(hyper, reduction="mean"), f"n={numel}")
    return make


_REDUCTION = {"none": 0, "mean": 1, "sum": 2}


def _pointwise_raw_calls(name, param_keys, target_backward):
    def calls(sample):
        x, y = sample.args
        kw = sample.kwargs
        red = _REDUCTION[kw.get("reduction", "mean")]
        w = kw.get("weight")
        w = None if w is None else w.expand(x.shape)
        params = tuple(float(kw[k]) for k in param_keys)
        gen = torch.Generator().manual_seed(1)
        go = torch.randn(x.shape if red == 0 else (), generator=gen, dtype=torch.float64).to(x.device, x.dtype)
        out = [(name, (x, y, w, *params, red)),
               (f"{name}_with_grad", (x, y, w, *params, red)),
               (f"{name}_backward", (go, x, y, w, *params, red))]
        if target_backward:
            out.append((f"{name}_target_backward", (go, x, y, w, *params, red)))
        return out
    return calls


def _pointwise_module(module_cls):
    def call(sample):
        kwargs = dict(sample.kwargs)
        red = kwargs.pop("reduction", "mean")
        weight = kwargs.pop("weight", None)
        return module_cls(**kwargs, reduction=red), sample.args, {"weight": weight}
    return call


def _pointwise_jit(name, param_keys):
    def source(sample):
        kw = sample.kwargs
        params = ", ".join(repr(float(kw[k])) for k in param_keys)
        red = _REDUCTION[kw.get("reduction", "mean")]
        src = (f"def f(x: Tensor, y: Tensor) -> Tensor:\n"
               f"    return torch.ops.lossext.{name}(x, y, None, {params}, {red})\n")
        return src, sample.args
    return source


def _pointwise_raw_errors(name, params, bad_param_index, has_target_backward):
    def errors(device):
        x = torch.rand(12, device=device)
        y = torch.rand(12, device=device)
        p = [float(v) for v in params]
        bad = list(p)
        bad[bad_param_index] = -1.0
        one = torch.ones(3, device=device)
        E = [
            (name, (x, y[:5], None, *p, 1), "'target' has shape"),
            (name, (x.long(), y.long(), None, *p, 1), "'input' must be float16"),
            (name, (x, y.double(), None, *p, 1), "'target' has dtype"),
            (name, (x, y, x[:3], *p, 1), "'weight' has shape"),
            (name, (x, y, None, *p, 7), "'reduction' must be"),
            (name, (x, y, None, *bad, 1), "must be"),
            (f"{name}_with_grad", (x, y[:5], None, *p, 1), "'target' has shape"),
            (f"{name}_backward", (one, x, y, None, *p, 1), "'grad_output' must be 0-dim"),
            (f"{name}_backward", (one, x, y, None, *p, 0), "'grad_output' has shape"),
        ]
        if has_target_backward:
            E.append((f"{name}_target_backward", (one, x, y, None, *p, 0), "'grad_output' has shape"))
        return E
    return errors


_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),   # half tests use the 2x-of-PyTorch rule, see test_half.py
    torch.bfloat16: (5e-2, 5e-2),
}

_WING = dict(width=10.0, curvature=2.0)
_AWING = dict(alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5)

OP_DB: List[OpInfo] = [
    OpInfo(
        name="wing_loss", family="landmark",
        op=LF.wing_loss, ref=R.wing_loss, module=LN.WingLoss,
        raw_ops=["wing_loss", "wing_loss_with_grad", "wing_loss_backward"],
        hyper=_WING,
        sample_inputs=_pointwise_samples(-25.0, 25.0, -3.0, 3.0, _WING),
        edge_inputs=_wing_edges,
        error_inputs=_pointwise_errors("wing_loss", _WING, [
            ("width", 0.0, "width must be > 0"), ("width", -1.0, "width must be > 0"),
            ("curvature", 0.0, "curvature must be > 0"), ("width", float("nan"), "width must be finite")]),
        bench_input=_bench(-25.0, 25.0, -3.0, 3.0, _WING),
        raw_calls=_pointwise_raw_calls("wing_loss", ("width", "curvature"), False),
        module_call=_pointwise_module(LN.WingLoss),
        jit_source=_pointwise_jit("wing_loss", ("width", "curvature")),
        raw_error_inputs=_pointwise_raw_errors("wing_loss", (10.0, 2.0), 0, False),
        elementwise=True,
        tol=_TOL,
    ),
    OpInfo(
        name="adaptive_wing_loss", family="landmark",
        op=LF.adaptive_wing_loss, ref=R.adaptive_wing_loss, module=LN.AdaptiveWingLoss,
        raw_ops=["adaptive_wing_loss", "adaptive_wing_loss_with_grad", "adaptive_wing_loss_backward",
                 "adaptive_wing_loss_target_backward"],
        hyper=_AWING,
        sample_inputs=_pointwise_samples(-0.2, 1.2, 0.0, 1.0, _AWING),
        edge_inputs=_awing_edges,
        error_inputs=_pointwise_errors("adaptive_wing_loss", _AWING, [
            ("epsilon", 0.0, "epsilon must be > 0"), ("omega", -1.0, "omega must be > 0"),
            ("theta", 0.0, "theta must be > 0"), ("alpha", 0.5, "alpha must be > theta"),
            ("alpha", 0.2, "alpha must be > theta")]),
        bench_input=_bench(-0.2, 1.2, 0.0, 1.0, _AWING),
        raw_calls=_pointwise_raw_calls("adaptive_wing_loss", ("alpha", "omega", "epsilon", "theta"), True),
        module_call=_pointwise_module(LN.AdaptiveWingLoss),
        jit_source=_pointwise_jit("adaptive_wing_loss", ("alpha", "omega", "epsilon", "theta")),
        raw_error_inputs=_pointwise_raw_errors("adaptive_wing_loss", (2.1, 14.0, 1.0, 0.5), 2, True),
        elementwise=True,
        tol=_TOL,
    ),
]
