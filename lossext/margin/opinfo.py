"""OpInfo rows of the margin-softmax ops: margin_cross_entropy, fused_linear_margin_cross_entropy."""
import functools
import math

import torch

from ..testing.opinfo import REDUCTION, ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import reference as R

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
    return make_tensor((n, c), device, dtype, -0.98, 0.98, gen)


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
            kw.update(label_smoothing=0.1, weight=make_tensor((9,), device, dtype, 0.2, 2.0, gen))
            yield SampleInput((_cosines(6, 9, device, dtype, gen), _labels(6, 9, gen, device)), kw,
                              f"{red}-smooth-weight-ignore-{j}", grad_keys=("weight", "feature_norm"))
        # SphereFace's feature-norm scaling (takes a gradient)
        kw = dict(m1=4.0, m2=0.0, m3=0.0, lambda_=2.0, reduction=red,
                  feature_norm=make_tensor((5,), device, dtype, 0.5, 8.0, gen))
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
        E.append(ErrorInput(S(cos, torch.tensor([0, 1, 5, 2])), IndexError,
                            "^margin_cross_entropy: target has value 5 at index 2"))
        E.append(ErrorInput(S(cos, torch.tensor([0, -1, 3, 2])), IndexError, "target has value -1 at index 1"))
    return E


def _margin_ce_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    c = min(numel, 1000)
    n = max(1, numel // c)
    return SampleInput((_cosines(n, c, device, dtype, gen), _labels(n, c, gen, device, ignore=False)),
                       dict(scale=64.0, m1=1.0, m2=0.5, m3=0.0, reduction="mean"), f"{n}x{c}",
                       grad_keys=("weight", "feature_norm"))


def _lambda(value, device):
    """The raw ops' lambda_: None for 0, else a 0-dim float64 tensor on the device."""
    return None if value == 0.0 else torch.full((), float(value), dtype=torch.float64, device=device)


def _ce_params(kw, device="cpu"):
    return (float(kw.get("scale", 64.0)), float(kw.get("m1", 1.0)), float(kw.get("m2", 0.0)),
            float(kw.get("m3", 0.0)), _lambda(float(kw.get("lambda_", 0.0)), device),
            bool(kw.get("easy_margin", False)), float(kw.get("label_smoothing", 0.0)),
            int(kw.get("ignore_index", -100)), REDUCTION[kw.get("reduction", "mean")])


def _raw_calls(name, inputs, params):
    """Both raw ops of a (loss, lse) forward: NAME(*inputs, *params) and
    NAME_backward(grad_output, *inputs, lse, *params)."""
    loss, lse = getattr(torch.ops.lossext, name)(*inputs, *params)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    go = go.to(inputs[0].device, inputs[0].dtype)
    return [(name, (*inputs, *params)), (f"{name}_backward", (go, *inputs, lse.detach(), *params))]


def _jit(name, arg_names, n_optional, params):
    """TorchScript source calling the raw op NAME(*args, None x n_optional, *params)[0] (a 0-dim
    tensor parameter, lambda_, is made in the script on the first argument's device)."""
    def src(v):
        if isinstance(v, torch.Tensor):
            return f"torch.full([], {v.item()!r}, dtype=torch.float64, device={arg_names[0]}.device)"
        return repr(v)
    p = ", ".join(src(v) for v in params)
    args = ", ".join(arg_names)
    src = (f"def f({', '.join(a + ': Tensor' for a in arg_names)}) -> Tensor:\n"
           f"    return torch.ops.lossext.{name}({args}, {', '.join(['None'] * n_optional)}, {p})[0]\n")
    return src


def _margin_ce_raw_calls(sample):
    kw = sample.kwargs
    return _raw_calls("margin_cross_entropy", (*sample.args, kw.get("weight"), kw.get("feature_norm")),
                      _ce_params(kw, sample.args[0].device))


def _margin_ce_module(sample):
    kw = dict(sample.kwargs)
    fnorm = kw.pop("feature_norm", None)
    return LN.MarginCrossEntropyLoss(**kw), sample.args, {"feature_norm": fnorm}


def _margin_ce_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    cos, t = _cosines(6, 9, device, dtype, gen), _labels(6, 9, gen, device)
    w = make_tensor((9,), device, dtype, 0.5, 2.0, gen)
    return [(LN.MarginCrossEntropyLoss(m2=0.5, label_smoothing=0.1, weight=w), (cos, t), {})]


def _fused_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    x, t = make_tensor((6, 8), device, dtype, -1, 1, gen), _labels(6, 11, gen, device)
    mods = [LN.CombinedMarginLoss(8, 11, m2=0.3, m3=0.1, chunk_size=4), LN.CosFaceLoss(8, 11),
            LN.ArcFaceLoss(8, 11, fused=False), LN.SphereFaceLoss(8, 11), LN.SphereFaceLoss(8, 11, feature_norm=True)]
    return [(m.to(device=device, dtype=dtype), (x, t), {}) for m in mods]


def _margin_ce_jit(sample):
    return _jit("margin_cross_entropy", ("x", "t"), 2, _ce_params(sample.kwargs)), sample.args


def _margin_ce_raw_errors(device):
    cos = torch.rand(4, 5, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    p = list(_ce_params({}, device))
    bad_scale = [-1.0] + p[1:]
    go = torch.ones((), device=device)
    lse = torch.zeros(4, device=device, dtype=torch.float64)
    name = "margin_cross_entropy"

    def lam(value, dtype=torch.float64):  # the parameters with lambda_ = a 0-dim tensor of value
        return p[:4] + [torch.full((), value, dtype=dtype, device=device)] + p[5:]
    rows = [(name, (cos, t, None, None, *lam(1.0, dtype=torch.float32)), "'lambda_' must be float64, got Float"),
            (name, (cos, t, None, None, *lam(1.0)[:4], torch.ones(1, dtype=torch.float64, device=device), *p[5:]),
             "'lambda_' must be a 0-dim tensor"),
            (f"{name}_backward", (go, cos, t, None, None, lse, *lam(1.0, dtype=torch.float32)),
             "'lambda_' must be float64")]
    if device == "cpu":  # CUDA reads lambda_ on the device (a bad value: NaN loss)
        rows += [(name, (cos, t, None, None, *lam(-1.0)), "'lambda_' must be finite and >= 0, got -1"),
                 (name, (cos, t, None, None, *lam(float("nan"))), "'lambda_' must be finite and >= 0")]
    return rows + [
        (name, (cos[0], t, None, None, *p), "'cos_logits' must be 2-D"),
        (name, (cos, t.int(), None, None, *p), "'target' must be int64"),
        (name, (cos, t[:2], None, None, *p), "'target' must have shape"),
        (name, (cos, t, torch.ones(3, device=device), None, *p), "'weight' must have shape"),
        (name, (cos, t, None, torch.ones(3, device=device), *p), "'row_scale' must have shape"),
        (name, (cos, t, None, None, *bad_scale), "'scale' must be positive"),
        (name, (cos, t, None, None, *p[:-1], 5), "'reduction' must be"),
        (f"{name}_backward", (torch.ones(4, device=device), cos, t, None, None, lse, *p), "'grad_output' must be 0-dim"),
        (f"{name}_backward", (go, cos, t, None, None, lse[:2], *p), "'lse' must have shape"),
        (f"{name}_backward", (go, cos, t, None, None, lse.float(), *p), "'lse' must be float64, got Float"),
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
            yield SampleInput((make_tensor((n, d), device, dtype, -1, 1, gen), make_tensor((c, d), device, dtype, -1, 1, gen),
                               _labels(n, c, gen, device)), kw, f"{red}-{n}x{d}x{c}-chunk{chunk}",
                              grad_keys=("bias",))
        kw = dict(scale=30.0, m2=0.5, label_smoothing=0.1, reduction=red, chunk_size=3)
        yield SampleInput((make_tensor((6, 5, ), device, dtype, -1, 1, gen), make_tensor((8, 5), device, dtype, -1, 1, gen),
                           _labels(6, 8, gen, device)), kw, f"{red}-smooth-ignore", grad_keys=("bias",))
        # plain linear (normalize=False) with a bias: the fused linear cross-entropy
        kw = dict(scale=1.0, m3=0.0, reduction=red, chunk_size=4, normalize=False,
                  bias=make_tensor((10,), device, dtype, -1, 1, gen))
        yield SampleInput((make_tensor((5, 6), device, dtype, -2, 2, gen), make_tensor((10, 6), device, dtype, -1, 1, gen),
                           _labels(5, 10, gen, device)), kw, f"{red}-linear-bias", grad_keys=("bias",))
        # non-contiguous embeddings and weight
        x = make_tensor((4, 7), device, dtype, -1, 1, gen)
        w = make_tensor((4, 12), device, dtype, -1, 1, gen)
        yield SampleInput((x.t(), w.t(), _labels(7, 12, gen, device)), dict(m3=0.35, reduction=red, chunk_size=5),
                          f"{red}-transposed", grad_keys=("bias",))
        yield SampleInput((make_tensor((0, 4), device, dtype, -1, 1, gen), make_tensor((6, 4), device, dtype, -1, 1, gen),
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
        ErrorInput(S(x, w.long(), t), TypeError, "weight must be float"),
        ErrorInput(S(x, w, t.float()), TypeError, "target must be integer"),
        ErrorInput(S(x, w, t[:2]), ValueError, "target must have shape"),
        ErrorInput(S(x, w, t, chunk_size=0), ValueError, "chunk_size must be > 0"),
        ErrorInput(S(x, w, t, m2=0.5, normalize=False), ValueError, "normalize=False takes only"),
        ErrorInput(S(x, w, t, bias=torch.ones(5, device=device)), ValueError, "bias needs normalize=False"),
        ErrorInput(S(x, w, t, normalize=False, bias=torch.ones(4, device=device)), ValueError, "bias must have shape"),
        ErrorInput(S(x, w, t, scale=-1.0), ValueError, "scale must be > 0"),
    ]
    if device == "cpu":
        E.append(ErrorInput(S(x, w, torch.tensor([0, 1, 5, 2])), IndexError,
                            "^fused_linear_margin_cross_entropy: target has value 5 at index 2"))
    return E


def _fused_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    n = min(64, max(1, numel // 16))
    c = min(20000, max(1, numel // n))
    d = 32
    return SampleInput((make_tensor((n, d), device, dtype, -1, 1, gen), make_tensor((c, d), device, dtype, -1, 1, gen),
                        _labels(n, c, gen, device, ignore=False)),
                       dict(scale=64.0, m1=1.0, m2=0.5, m3=0.0, reduction="mean"), f"{n}x{d}x{c}",
                       grad_keys=("bias",))


def _fused_params(kw, device="cpu"):
    # the margin CE's parameters with normalize after easy_margin, and chunk_size last
    p = _ce_params(kw, device)
    return p[:6] + (bool(kw.get("normalize", True)),) + p[6:] + (int(kw.get("chunk_size") or 0),)


def _fused_raw_calls(sample):
    return _raw_calls("fused_linear_margin_cross_entropy", (*sample.args, sample.kwargs.get("bias")),
                      _fused_params(sample.kwargs, sample.args[0].device))


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
    return _jit("fused_linear_margin_cross_entropy", ("x", "w", "t"), 1, _fused_params(sample.kwargs)), sample.args


def _fused_raw_errors(device):
    x = torch.rand(4, 3, device=device)
    w = torch.rand(5, 3, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    p = list(_fused_params({}, device))
    name = "fused_linear_margin_cross_entropy"
    plain = p[:5] + [False, False] + p[7:]
    lam32 = p[:4] + [torch.ones((), device=device)] + p[5:]
    lse = torch.zeros(4, device=device, dtype=torch.float64)
    go = torch.ones((), device=device)
    return [
        (name, (x, w, t, None, *lam32), "'lambda_' must be float64, got Float"),
        (f"{name}_backward", (go, x, w, t, None, lse, *lam32), "'lambda_' must be float64, got Float"),
        (f"{name}_backward", (go, x, w, t, None, lse.float(), *p), "'lse' must be float64, got Float"),
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

OP_ROWS = [
    OpInfo(
        name="margin_cross_entropy",
        op=LF.margin_cross_entropy, ref=R.margin_cross_entropy, module=LN.MarginCrossEntropyLoss,
        raw_ops=["margin_cross_entropy", "margin_cross_entropy_backward"],
        hyper=_MARGIN_HYPER,
        sample_inputs=_margin_ce_samples, edge_inputs=_margin_ce_edges, error_inputs=_margin_ce_errors,
        bench_input=_margin_ce_bench, raw_calls=_margin_ce_raw_calls, module_call=_margin_ce_module,
        jit_source=_margin_ce_jit, raw_error_inputs=_margin_ce_raw_errors, tol=_MARGIN_TOL,
        module_samples=_margin_ce_modules,
        bench_ref=R.margin_cross_entropy_composite, bench_generic=False,
        # forward reads N x C; backward reads it and writes the gradient
        bench_bytes={"forward": 1, "backward": 2, "full": 3},
    ),
    OpInfo(
        name="fused_linear_margin_cross_entropy",
        op=LF.fused_linear_margin_cross_entropy, ref=R.fused_linear_margin_cross_entropy,
        module=functools.partial(LN.CombinedMarginLoss, 8, 11),
        raw_ops=["fused_linear_margin_cross_entropy", "fused_linear_margin_cross_entropy_backward"],
        hyper=_MARGIN_HYPER,
        sample_inputs=_fused_samples, edge_inputs=_fused_edges, error_inputs=_fused_errors,
        bench_input=_fused_bench, raw_calls=_fused_raw_calls, module_call=_fused_module,
        jit_source=_fused_jit, raw_error_inputs=_fused_raw_errors, tol=_MARGIN_TOL,
        module_samples=_fused_modules,
        bench_notes={m: "it recomputes each chunk's N x C logits in the backward instead of storing them (4 "
                        "matmuls against the composite's 3, README, Benchmarks), so that memory does not grow "
                        "with N x C" for m in ("backward", "full")},
        bench_ref=R.fused_linear_margin_cross_entropy_composite, bench_generic=False,
    ),
]
