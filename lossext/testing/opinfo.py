"""The one table of lossext ops, in the style of PyTorch's OpInfo.

Generic tests (tests/test_*.py) and the benchmarks (benchmarks/) iterate over OP_DB. A new
loss adds one OpInfo row here (functional, reference, Module, raw ops, sample / edge / error
/ benchmark inputs, tolerances) and puts only its own special tests in a tests file of its own.
"""
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .. import functional as LF
from .. import nn as LN
from .. import reference as R


@dataclass
class SampleInput:
    """A call op(*args, **kwargs). Tensors that may take gradients are the floating tensors in
    args and in the kwargs named by grad_keys (e.g. a per-element weight; a class weight or
    other constant is left out)."""
    args: Tuple
    kwargs: Dict = field(default_factory=dict)
    name: str = ""
    grad_keys: Tuple[str, ...] = ("weight",)

    def tensors(self):
        ts = [a for a in self.args if isinstance(a, torch.Tensor)]
        return ts + [self.kwargs[k] for k in self.grad_keys if isinstance(self.kwargs.get(k), torch.Tensor)]

    def float_tensors(self):
        """The floating-point tensors, in order: the ones that can take gradients (integer
        labels and masks never do)."""
        return [t for t in self.tensors() if t.is_floating_point()]

    def replace_float_tensors(self, new):
        """A copy with float_tensors() replaced, in order, by `new`."""
        it = iter(new)
        sub = lambda t: next(it) if t.is_floating_point() else t  # noqa: E731
        args = tuple(sub(a) if isinstance(a, torch.Tensor) else a for a in self.args)
        kwargs = dict(self.kwargs)
        for k in self.grad_keys:
            if isinstance(kwargs.get(k), torch.Tensor):
                kwargs[k] = sub(kwargs[k])
        return SampleInput(args, kwargs, self.name, self.grad_keys)

    def map_tensors(self, fn):
        args = tuple(fn(a) if isinstance(a, torch.Tensor) else a for a in self.args)
        kwargs = {k: (fn(v) if isinstance(v, torch.Tensor) else v) for k, v in self.kwargs.items()}
        return SampleInput(args, kwargs, self.name, self.grad_keys)

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
    # sample -> (Module, args, kwargs): the same call through the lossext.nn Module (None: the
    # Module does not cover this sample)
    module_call: Callable[[SampleInput], Tuple[Callable, Tuple, Dict]] = None
    # sample -> (TorchScript source defining `f`, args): a function calling a raw op
    jit_source: Callable[[SampleInput], Tuple[str, Tuple]] = None
    # device -> [(raw op name, args, regex)]: direct raw-op calls that must raise RuntimeError
    raw_error_inputs: Callable[..., List[Tuple[str, Tuple, str]]] = None
    # Which checks apply beyond the generic ones: element-wise losses (output 'none' has the
    # input's shape, a bad value at one element shows at that element only, weight broadcasts).
    elementwise: bool = False
    # The eager/compile baseline of the benchmarks when it is not `ref` (e.g. the composite the
    # peers run, where `ref` spells a formula out for float64 ground truth).
    bench_ref: Optional[Callable] = None
    # False: benchmarks/run.py leaves the op to its own script (issue-sized shapes), e.g.
    # benchmarks/margin_softmax.py; the demo and tests still use the row.
    bench_generic: bool = True
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


# ------------------------------------------------------------------------------------------
# Margin softmax: margin_cross_entropy, fused_linear_margin_cross_entropy
# ------------------------------------------------------------------------------------------

# (m1, m2, m3, extra kwargs): plain, CosFace, ArcFace, easy ArcFace, SphereFace (annealed),
# combined, non-integer m1
_MARGINS = [
    (1.0, 0.0, 0.0, {}), (1.0, 0.0, 0.35, {}), (1.0, 0.5, 0.0, {}), (1.0, 0.5, 0.0, {"easy_margin": True}),
    (4.0, 0.0, 0.0, {"lambda_": 5.0}), (1.0, 0.3, 0.2, {}), (1.35, 0.2, 0.1, {}),
]


def _labels(n, c, gen, device, ignore=True):
    t = torch.randint(0, c, (n,), generator=gen)
    if ignore and n > 2:
        t[1] = -100
    return t.to(device)


def _cosines(n, c, device, dtype, gen):
    # uniform in (-0.98, 0.98): includes theta + 0.5 > pi (cos < -0.878) for ArcFace's rule
    return _make((n, c), device, dtype, -0.98, 0.98, gen)


def _margin_ce_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    shapes = [(1, 1), (3, 5), (7, 33), (4, 10)] + ([] if small else [(16, 1000), (5, 3001)])
    for red in ("mean", "sum", "none"):
        for i, (n, c) in enumerate(shapes):
            m1, m2, m3, extra = _MARGINS[i % len(_MARGINS)]
            kw = dict(scale=64.0, m1=m1, m2=m2, m3=m3, reduction=red, **extra)
            yield SampleInput((_cosines(n, c, device, dtype, gen), _labels(n, c, gen, device)), kw,
                              f"{red}-{n}x{c}-m{m1},{m2},{m3}", grad_keys=("weight", "feature_norm"))
        for j, (m1, m2, m3, extra) in enumerate(_MARGINS):
            kw = dict(scale=30.0, m1=m1, m2=m2, m3=m3, reduction=red, **extra)
            # label smoothing + class weights + ignore_index together (pytorch#69339)
            kw.update(label_smoothing=0.1, weight=_make((9,), device, dtype, 0.2, 2.0, gen))
            yield SampleInput((_cosines(6, 9, device, dtype, gen), _labels(6, 9, gen, device)), kw,
                              f"{red}-smooth-weight-ignore-{j}", grad_keys=("weight", "feature_norm"))
        # SphereFace's feature-norm scaling (takes a gradient)
        kw = dict(m1=4.0, m2=0.0, m3=0.0, lambda_=2.0, reduction=red,
                  feature_norm=_make((5,), device, dtype, 0.5, 8.0, gen))
        yield SampleInput((_cosines(5, 7, device, dtype, gen), _labels(5, 7, gen, device)), kw,
                          f"{red}-feature-norm", grad_keys=("weight", "feature_norm"))
        # non-contiguous cosines: a transposed view and a column slice
        x = _cosines(8, 6, device, dtype, gen)
        yield SampleInput((x.t(), _labels(6, 8, gen, device)), dict(m2=0.5, reduction=red),
                          f"{red}-transposed", grad_keys=("weight", "feature_norm"))
        x = _cosines(5, 12, device, dtype, gen)
        yield SampleInput((x[:, ::2], _labels(5, 6, gen, device)), dict(m3=0.35, reduction=red),
                          f"{red}-strided", grad_keys=("weight", "feature_norm"))
        yield SampleInput((_cosines(0, 5, device, dtype, gen), _labels(0, 5, gen, device)),
                          dict(m2=0.5, reduction=red), f"{red}-empty", grad_keys=("weight", "feature_norm"))


def _margin_ce_edges(device, dtype):
    # ArcFace's switch point cos = cos(pi - m2) on both sides, cos = +-1 at non-target classes,
    # SphereFace's k boundaries (theta = k pi / m), all rows' targets strictly inside (-1, 1).
    m2 = 0.5
    th = math.cos(math.pi - m2)
    tvals = [th - 1e-6, th + 1e-6, -0.999, 0.999, 0.0, math.cos(math.pi / 4) + 1e-7,
             math.cos(math.pi / 2) - 1e-7, math.cos(3 * math.pi / 4) + 1e-7]
    n, c = len(tvals), 6
    gen = torch.Generator().manual_seed(3)
    cos = torch.rand(n, c, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    cos[:, 4] = 1.0
    cos[:, 5] = -1.0
    target = torch.tensor([i % 4 for i in range(n)])
    cos[torch.arange(n), target] = torch.tensor(tvals, dtype=torch.float64)
    for red in ("none", "mean", "sum"):
        for m1, mm2, m3, extra in [(1.0, m2, 0.0, {}), (1.0, m2, 0.0, {"easy_margin": True}), (4.0, 0.0, 0.0, {})]:
            yield SampleInput((cos.to(device, dtype), target.to(device)),
                              dict(scale=64.0, m1=m1, m2=mm2, m3=m3, reduction=red, **extra),
                              f"{red}-edges-m{m1},{mm2}", grad_keys=("weight", "feature_norm"))


def _margin_ce_errors(device):
    cos = torch.rand(4, 5, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=("weight", "feature_norm"))  # noqa: E731
    E = [
        ErrorInput(S(cos[0], t), ValueError, "cos_logits must be 2-D"),
        ErrorInput(S(cos.long(), t), TypeError, "cos_logits must be float"),
        ErrorInput(S(cos, t.float()), TypeError, "target must be integer"),
        ErrorInput(S(cos, t[:3]), ValueError, "target must have shape"),
        ErrorInput(S(cos, t.to("meta")), ValueError, "target is on"),
        ErrorInput(S(cos, t, weight=torch.ones(4, device=device)), ValueError, "weight must have shape"),
        ErrorInput(S(cos, t, scale=0.0), ValueError, "scale must be > 0"),
        ErrorInput(S(cos, t, m1=-1.0), ValueError, "m1 must be > 0"),
        ErrorInput(S(cos, t, m2=4.0), ValueError, "m2 must be in"),
        ErrorInput(S(cos, t, label_smoothing=1.5), ValueError, "label_smoothing must be in"),
        ErrorInput(S(cos, t, reduction="avg"), ValueError, "reduction must be"),
        ErrorInput(S(cos, t, ignore_index=1.5), TypeError, "ignore_index must be an int"),
        ErrorInput(S(cos, t, feature_norm=torch.ones(3, device=device)), ValueError, "feature_norm must have shape"),
    ]
    if device == "cpu":  # CUDA never indexes with a bad label; the row's loss is NaN (see test_margin.py)
        E.append(ErrorInput(S(cos, torch.tensor([0, 1, 5, 2])), RuntimeError, "'target' has value 5 at index 2"))
        E.append(ErrorInput(S(cos, torch.tensor([0, -1, 3, 2])), RuntimeError, "'target' has value -1 at index 1"))
    return E


def _margin_ce_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    c = min(numel, 1000)
    n = max(1, numel // c)
    return SampleInput((_cosines(n, c, device, dtype, gen), _labels(n, c, gen, device, ignore=False)),
                       dict(scale=64.0, m1=1.0, m2=0.5, m3=0.0, reduction="mean"), f"{n}x{c}",
                       grad_keys=("weight", "feature_norm"))


def _ce_params(kw):
    return (float(kw.get("scale", 64.0)), float(kw.get("m1", 1.0)), float(kw.get("m2", 0.0)),
            float(kw.get("m3", 0.0)), float(kw.get("lambda_", 0.0)), bool(kw.get("easy_margin", False)),
            float(kw.get("label_smoothing", 0.0)), int(kw.get("ignore_index", -100)),
            _REDUCTION[kw.get("reduction", "mean")])


def _margin_ce_raw_calls(sample):
    cos, t = sample.args
    kw = sample.kwargs
    p = _ce_params(kw)
    w, rs = kw.get("weight"), kw.get("feature_norm")
    loss, lse = torch.ops.lossext.margin_cross_entropy(cos, t, w, rs, *p)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(cos.device, cos.dtype)
    return [("margin_cross_entropy", (cos, t, w, rs, *p)),
            ("margin_cross_entropy_backward", (go, cos, t, w, rs, lse.detach(), *p))]


def _margin_ce_module(sample):
    kw = dict(sample.kwargs)
    fnorm = kw.pop("feature_norm", None)
    return LN.MarginCrossEntropyLoss(**kw), sample.args, {"feature_norm": fnorm}


def _margin_ce_jit(sample):
    p = ", ".join(repr(v) for v in _ce_params(sample.kwargs))
    src = ("def f(x: Tensor, t: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.margin_cross_entropy(x, t, None, None, {p})[0]\n")
    return src, sample.args


def _margin_ce_raw_errors(device):
    cos = torch.rand(4, 5, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    p = list(_ce_params({}))
    bad_scale = [-1.0] + p[1:]
    go = torch.ones((), device=device)
    lse = torch.zeros(4, device=device, dtype=torch.float64)
    name = "margin_cross_entropy"
    return [
        (name, (cos[0], t, None, None, *p), "'cos_logits' must be 2-D"),
        (name, (cos, t.int(), None, None, *p), "'target' must be int64"),
        (name, (cos, t[:2], None, None, *p), "'target' must have shape"),
        (name, (cos, t, torch.ones(3, device=device), None, *p), "'weight' must have shape"),
        (name, (cos, t, None, torch.ones(3, device=device), *p), "'row_scale' must have shape"),
        (name, (cos, t, None, None, *bad_scale), "'scale' must be positive"),
        (name, (cos, t, None, None, *p[:-1], 5), "'reduction' must be"),
        (f"{name}_backward", (torch.ones(4, device=device), cos, t, None, None, lse, *p), "'grad_output' must be 0-dim"),
        (f"{name}_backward", (go, cos, t, None, None, lse[:2], *p), "'lse' must be"),
    ]


# fused linear -------------------------------------------------------------------------------

def _fused_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    # (N, D, C, chunk_size): C not a multiple of the chunk, C < chunk, C = 1, one class per chunk
    shapes = [(5, 4, 11, 4), (3, 6, 7, 64), (4, 3, 1, None), (6, 5, 9, 1), (7, 8, 33, None)]
    if not small:
        shapes += [(33, 16, 1000, 128), (9, 32, 4099, None)]
    for red in ("mean", "sum", "none"):
        for i, (n, d, c, chunk) in enumerate(shapes):
            m1, m2, m3, extra = _MARGINS[i % len(_MARGINS)]
            kw = dict(scale=64.0, m1=m1, m2=m2, m3=m3, reduction=red, chunk_size=chunk, **extra)
            yield SampleInput((_make((n, d), device, dtype, -1, 1, gen), _make((c, d), device, dtype, -1, 1, gen),
                               _labels(n, c, gen, device)), kw, f"{red}-{n}x{d}x{c}-chunk{chunk}",
                              grad_keys=("bias",))
        kw = dict(scale=30.0, m2=0.5, label_smoothing=0.1, reduction=red, chunk_size=3)
        yield SampleInput((_make((6, 5, ), device, dtype, -1, 1, gen), _make((8, 5), device, dtype, -1, 1, gen),
                           _labels(6, 8, gen, device)), kw, f"{red}-smooth-ignore", grad_keys=("bias",))
        # plain linear (normalize=False) with a bias: the fused linear cross-entropy
        kw = dict(scale=1.0, m3=0.0, reduction=red, chunk_size=4, normalize=False,
                  bias=_make((10,), device, dtype, -1, 1, gen))
        yield SampleInput((_make((5, 6), device, dtype, -2, 2, gen), _make((10, 6), device, dtype, -1, 1, gen),
                           _labels(5, 10, gen, device)), kw, f"{red}-linear-bias", grad_keys=("bias",))
        # non-contiguous embeddings and weight
        x = _make((4, 7), device, dtype, -1, 1, gen)
        w = _make((4, 12), device, dtype, -1, 1, gen)
        yield SampleInput((x.t(), w.t(), _labels(7, 12, gen, device)), dict(m3=0.35, reduction=red, chunk_size=5),
                          f"{red}-transposed", grad_keys=("bias",))
        yield SampleInput((_make((0, 4), device, dtype, -1, 1, gen), _make((6, 4), device, dtype, -1, 1, gen),
                           _labels(0, 6, gen, device)), dict(m2=0.5, reduction=red), f"{red}-empty",
                          grad_keys=("bias",))


def _fused_edges(device, dtype):
    # an embedding equal to its target class's weight (cos = 1 exactly) and to its negation
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4])
    x[0] = -2.0 * w[5]   # cos = -1 with a non-target class
    x[1] = 3.0 * w[4]    # cos = +1 with a non-target class
    for red in ("none", "mean", "sum"):
        yield SampleInput((x.to(device, dtype), w.to(device, dtype), t.to(device)),
                          dict(scale=64.0, m2=0.5, reduction=red, chunk_size=4), f"{red}-edges", grad_keys=("bias",))


def _fused_errors(device):
    x = torch.rand(4, 3, device=device)
    w = torch.rand(5, 3, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=("bias",))  # noqa: E731
    E = [
        ErrorInput(S(x, torch.rand(5, 2, device=device), t), ValueError, "weight has D = 2"),
        ErrorInput(S(x[0], w, t), ValueError, "embeddings must be 2-D"),
        ErrorInput(S(x, w.double(), t), TypeError, "weight dtype"),
        ErrorInput(S(x, w, t.float()), TypeError, "target must be integer"),
        ErrorInput(S(x, w, t[:2]), ValueError, "target must have shape"),
        ErrorInput(S(x, w, t, chunk_size=0), ValueError, "chunk_size must be > 0"),
        ErrorInput(S(x, w, t, m2=0.5, normalize=False), ValueError, "normalize=False takes only"),
        ErrorInput(S(x, w, t, bias=torch.ones(5, device=device)), ValueError, "bias needs normalize=False"),
        ErrorInput(S(x, w, t, normalize=False, bias=torch.ones(4, device=device)), ValueError, "bias must have shape"),
        ErrorInput(S(x, w, t, scale=-1.0), ValueError, "scale must be > 0"),
    ]
    if device == "cpu":
        E.append(ErrorInput(S(x, w, torch.tensor([0, 1, 5, 2])), RuntimeError, "'target' has value 5 at index 2"))
    return E


def _fused_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    n = min(64, max(1, numel // 16))
    c = min(20000, max(1, numel // n))
    d = 32
    return SampleInput((_make((n, d), device, dtype, -1, 1, gen), _make((c, d), device, dtype, -1, 1, gen),
                        _labels(n, c, gen, device, ignore=False)),
                       dict(scale=64.0, m1=1.0, m2=0.5, m3=0.0, reduction="mean"), f"{n}x{d}x{c}",
                       grad_keys=("bias",))


def _fused_params(kw):
    # the margin CE's parameters with normalize after easy_margin, and chunk_size last
    p = _ce_params(kw)
    return p[:6] + (bool(kw.get("normalize", True)),) + p[6:] + (int(kw.get("chunk_size") or 0),)


def _fused_raw_calls(sample):
    x, w, t = sample.args
    kw = sample.kwargs
    p = _fused_params(kw)
    b = kw.get("bias")
    loss, lse = torch.ops.lossext.fused_linear_margin_cross_entropy(x, w, t, b, *p)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(x.device, x.dtype)
    return [("fused_linear_margin_cross_entropy", (x, w, t, b, *p)),
            ("fused_linear_margin_cross_entropy_backward", (go, x, w, t, b, lse.detach(), *p))]


def _fused_module(sample):
    x, w, t = sample.args
    kw = dict(sample.kwargs)
    if not kw.pop("normalize", True) or kw.pop("bias", None) is not None:
        return None  # the Modules are normalized heads
    for key, default in (("scale", 64.0), ("m1", 1.0), ("m2", 0.0), ("m3", 0.0)):  # functional defaults
        kw.setdefault(key, default)
    mod = LN.CombinedMarginLoss(w.shape[1], w.shape[0], **kw).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        mod.weight.copy_(w)
    return mod, (x, t), {}


def _fused_jit(sample):
    p = ", ".join(repr(v) for v in _fused_params(sample.kwargs))
    src = ("def f(x: Tensor, w: Tensor, t: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.fused_linear_margin_cross_entropy(x, w, t, None, {p})[0]\n")
    return src, sample.args


def _fused_raw_errors(device):
    x = torch.rand(4, 3, device=device)
    w = torch.rand(5, 3, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    p = list(_fused_params({}))
    name = "fused_linear_margin_cross_entropy"
    plain = p[:5] + [False, False] + p[7:]
    return [
        (name, (x, w[:, :2], t, None, *p), "'weight' has D = 2"),
        (name, (x, w.double(), t, None, *p), "'weight' has dtype"),
        (name, (x, w, t.int(), None, *p), "'target' must be int64"),
        (name, (x, w, t, torch.ones(5, device=device), *p), "'bias' needs normalize=False"),
        (name, (x, w, t, None, *p[:-1], -1), "'chunk_size' must be >= 0"),
        (name, (x, w, t, None, *plain[:2], 0.5, *plain[3:]), "normalize=False takes only"),
        (f"{name}_backward", (torch.ones(4, device=device), x, w, t, None, torch.zeros(4, device=device, dtype=torch.float64), *p),
         "'grad_output' must be 0-dim"),
    ]


# float32: logits reach s = 64, so one rounding of a logit is 4e-6 and gradients (s (p - y))
# carry about s times the probabilities' error; test_margin.py also holds the float32 error to
# at most 2x that of PyTorch's own float32 composite.
_MARGIN_TOL = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (1e-4, 2e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

_MARGIN_HYPER = dict(scale=64.0, m1=1.0, m2=0.5, m3=0.0)

OP_DB += [
    OpInfo(
        name="margin_cross_entropy", family="margin",
        op=LF.margin_cross_entropy, ref=R.margin_cross_entropy, module=LN.MarginCrossEntropyLoss,
        raw_ops=["margin_cross_entropy", "margin_cross_entropy_backward"],
        hyper=_MARGIN_HYPER,
        sample_inputs=_margin_ce_samples, edge_inputs=_margin_ce_edges, error_inputs=_margin_ce_errors,
        bench_input=_margin_ce_bench, raw_calls=_margin_ce_raw_calls, module_call=_margin_ce_module,
        jit_source=_margin_ce_jit, raw_error_inputs=_margin_ce_raw_errors, tol=_MARGIN_TOL,
        bench_ref=R.margin_cross_entropy_composite, bench_generic=False,
        # forward reads N x C; backward reads it and writes the gradient
        bench_bytes={"forward": 1, "backward": 2, "full": 3},
    ),
    OpInfo(
        name="fused_linear_margin_cross_entropy", family="margin",
        op=LF.fused_linear_margin_cross_entropy, ref=R.fused_linear_margin_cross_entropy,
        module=functools.partial(LN.CombinedMarginLoss, 8, 11),
        raw_ops=["fused_linear_margin_cross_entropy", "fused_linear_margin_cross_entropy_backward"],
        hyper=_MARGIN_HYPER,
        sample_inputs=_fused_samples, edge_inputs=_fused_edges, error_inputs=_fused_errors,
        bench_input=_fused_bench, raw_calls=_fused_raw_calls, module_call=_fused_module,
        jit_source=_fused_jit, raw_error_inputs=_fused_raw_errors, tol=_MARGIN_TOL,
        bench_ref=R.fused_linear_margin_cross_entropy_composite, bench_generic=False,
    ),
]
