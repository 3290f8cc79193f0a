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
    inputs = (*sample.args, kw.get("weight"), kw.get("feature_norm"))
    params = _ce_params(kw, sample.args[0].device)
    return _raw_calls("margin_cross_entropy", inputs, params) + [("margin_cross_entropy_with_grad", (*inputs, *params))]


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
        (f"{name}_with_grad", (cos[0], t, None, None, *p), "'cos_logits' must be 2-D"),
        (f"{name}_with_grad", (cos, t, torch.ones(3, device=device), None, *p), "'weight' must have shape"),
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
    inputs, params = (*sample.args, sample.kwargs.get("bias")), _fused_params(sample.kwargs, sample.args[0].device)
    calls = _raw_calls("fused_linear_margin_cross_entropy", inputs, params)
    if params[-2] != 0:  # the row-block op (a reduced loss): blocks of 3 rows
        calls.append(("fused_linear_margin_cross_entropy_with_grad", (*inputs, *params, 3)))
    if sample.kwargs.get("normalize", True) and sample.kwargs.get("label_smoothing", 0.0) == 0.0:
        calls += _shard_raw_calls(sample)
    return calls


def _shard_params(kw, device="cpu"):
    p = _ce_params(kw, device)
    return p[:6] + (int(kw.get("chunk_size") or 0),)


def _shard_raw_calls(sample):
    """The shard ops on the sample's embeddings and classes as one shard: every third target (and
    the ignored ones) set to -1, "on another shard"; lse the shard's own, G random."""
    x, w, t = sample.args
    t = torch.where((t < 0) | (torch.arange(t.shape[0], device=t.device) % 3 == 1), -1, t)
    params = _shard_params(sample.kwargs, x.device)
    mx, se, _ = torch.ops.lossext.fused_linear_margin_shard_forward(x, w, t, *params)
    lse = mx + se.log()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(2), dtype=acc).to(x.device)
    return [("fused_linear_margin_shard_forward", (x, w, t, *params)),
            ("fused_linear_margin_shard_backward", (g, x, w, t, lse.detach(), *params))]


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
        (f"{name}_with_grad", (x, w, t, None, *p, 0), "'rows' must be >= 1"),
        (f"{name}_with_grad", (x, w, t, None, *p[:-2], 0, 0, 2), "'reduction' must be 1 \\(mean\\) or 2"),
        (name, (x, w, t, None, *plain[:2], 0.5, *plain[3:]), "normalize=False takes only"),
        (f"{name}_backward", (torch.ones(4, device=device), x, w, t, None, torch.zeros(4, device=device, dtype=torch.float64), *p),
         "'grad_output' must be 0-dim"),
    ] + _shard_raw_errors(device)


def _shard_raw_errors(device):
    x = torch.rand(4, 3, device=device)
    w = torch.rand(5, 3, device=device)
    t = torch.tensor([0, -1, 4, 2], device=device)
    p = list(_shard_params({}, device))
    fwd, bwd = "fused_linear_margin_shard_forward", "fused_linear_margin_shard_backward"
    lse = torch.zeros(4, device=device, dtype=torch.float64)
    g = torch.ones(4, device=device)
    E = [
        (fwd, (x, w[:, :2], t, *p), "'weight' has D = 2"),
        (fwd, (x, w, t.int(), *p), "'target' must be int64"),
        (bwd, (g.double(), x, w, t, lse, *p), "'grad_rows' must have dtype Float"),
        (bwd, (g[:3], x, w, t, lse, *p), "'grad_rows' must have shape \\[4\\]"),
        (bwd, (g, x, w, t, lse.float(), *p), "'lse' must be float64"),
    ]
    if device == "cpu":
        bad = torch.tensor([0, -2, 4, 2])
        E += [(fwd, (x, w, bad, *p), "target' has value -2 at index 1, outside \\[0, 5\\) and not -1"),
              (bwd, (g, x, w, bad, lse, *p), "target' has value -2 at index 1")]
    return E


# fuzz ------------------------------------------------------------------------------------------
# lossext/testing/fuzz.py; imported at fuzz time (it imports hypothesis).

def _fuzz_rules():
    from ..testing.fuzz import Real
    return [Real("scale", "positive", 1e-2, 128.0, common=(64.0, 30.0, 1.0)),
            Real("m1", "positive", 0.3, 6.0, common=(1.0, 1.0, 4.0, 2.0)),
            Real("m2", "range", 0.0, math.pi, common=(0.0, 0.5), hi_open=True),
            Real("m3", "finite", -1.0, 1.0, common=(0.0, 0.35)),
            Real("label_smoothing", "range", 0.0, 1.0, common=(0.0, 0.1, 1.0)),
            Real("lambda_", "range", 0.0, math.inf, common=(0.0, 5.0), hi_open=True, draw_hi=10.0)]


# Extremes of the cosines and embeddings: scale * |cos| (and, for the fused op, |x|^2 D for the
# norms or |x| |w| D for normalize=False), summed over up to 65539 classes, stays finite in the
# compute dtype (float32 for half; half's own range bounds its values). Up to that the logits
# may be as large as they like: the kernels once shifted a logit by the row max as
# fma(scale, cos, -max), whose product residual (half an ulp of the logit) left exp's range
# (a float64 logit of 8e18 gave a loss of inf, a float32 one of 6e9 a gradient of 5e-37 for
# 30), and a target cosine of -inf gave NaN for lambda_ = 0 (0 * -inf) where F.cross_entropy
# gives +inf; both fixed, regression tests in tests/test_margin.py.
_COS_BIG = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}
_NORM_BIG = {torch.float16: 1e4, torch.bfloat16: 1e15, torch.float32: 1e15, torch.float64: 1e150}
_PLAIN_BIG = {torch.float16: 16.0, torch.bfloat16: 1e15, torch.float32: 1e15, torch.float64: 1e150}
_NONFINITE = (math.nan, math.inf, -math.inf)
_SHARED_FAULTS = ["target", "labels", "ignore_index", "reduction", "easy_margin"]


def _fuzz_shared(draw, F, fn, bad, n, c, device, like, like_name):
    """The arguments both ops take: the hyperparameters (at most one bad), ignore_index,
    reduction, easy_margin and the target (bad labels: IndexError on the CPU; on CUDA a valid
    call whose bad rows are NaN). Returns (values, error, target, first bad label)."""
    st = F.st
    vals, error = {}, None
    for rule in _fuzz_rules():
        if bad == rule.name:
            vals[rule.name], error = rule.invalid(draw, fn)
        else:
            vals[rule.name] = rule.valid(draw)
    ignore = F.integer(draw, fn, "ignore_index", [-100, -100, -1, 0, max(c - 1, 0), c, 7, F.INT64_MIN, F.INT64_MAX])
    target, first = F.labels(draw, n, c, device, int(ignore), bad == "labels")
    vals["ignore_index"] = ignore
    if bad == "ignore_index":
        vals["ignore_index"], error = F.integer(draw, fn, "ignore_index", bad=True)
    vals["reduction"] = F.reduction(draw)
    if bad == "reduction":
        vals["reduction"], error = F.reduction(draw, fn, bad=True)
    vals["easy_margin"] = F.flag(draw)
    if bad == "easy_margin":
        vals["easy_margin"], error = F.flag(draw, fn, "easy_margin", bad=True)
    if bad == "labels" and first is not None and device == "cpu":
        error = F.bad_label_error(fn, first)
    if bad == "target":
        how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
        if how == "type":
            target, error = F.not_a_tensor(draw, fn, "target")
        elif how == "dtype":
            dt = draw(st.sampled_from([torch.float32, torch.bool]))
            target = torch.zeros(n, dtype=dt, device=device)
            error = TypeError, rf"^{fn}: target must be integer class indices, got {dt}$"
        elif how == "shape":
            shp = F.other_shape(draw, (n,))
            target = torch.zeros(shp, dtype=torch.long, device=device)
            error = ValueError, rf"^{fn}: target must have shape \[{n}\], got {F.shape_text(shp)}$"
        else:
            target, error = F.on_meta(fn, "target", like, like_name, shp=(n,), dt=torch.long)
    return vals, error, target, first


def _bad_rows_ref(ref, target_at, bad, ignore_index):
    """CUDA never indexes with a bad label (see margin_cross_entropy's docstring): the rows
    `bad` with one are NaN, and so is a reduced loss; the other rows are the reference's."""
    def fn(*args, **kwargs):
        args = list(args)
        args[target_at] = torch.where(bad, ignore_index, args[target_at].long())
        out = ref(*args, **kwargs)
        return out.masked_fill(bad, math.nan) if out.dim() else out + math.nan
    return fn


def _vector(draw, F, fn, name, bad, size, what, like, device, lo, hi):
    """An optional floating vector argument [size] (class weight, feature_norm, bias), or, when
    bad, a wrong one and its error."""
    st = F.st
    dt = F.other_dtype(draw, like.dtype if like.dtype.is_floating_point else torch.float32)
    v = F.tensor(draw, (size,), dt, device, lo, hi, [0.0]) if bad or draw(st.booleans()) else None
    if not bad:
        return v, None
    how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
    if how == "type":
        return F.not_a_tensor(draw, fn, name, optional=True)
    if how == "dtype":
        t = torch.ones(size, dtype=draw(st.sampled_from([torch.int64, torch.complex64])), device=device)
        return t, (TypeError, rf"^{fn}: {name} must be floating point, got {t.dtype}$")
    if how == "shape":
        shp = F.other_shape(draw, (size,))
        return torch.ones(shp, device=device), (ValueError, rf"^{fn}: {name} must have shape \[{size}\] \[{what}\], "
                                                            rf"got {F.shape_text(shp)}$")
    return F.on_meta(fn, name, like, "the logits", shp=(size,), dt=v.dtype)


def _fuzz_sizes(draw, F, small=(0, 1, 2, 3, 5, 7, 4, 9, 13, 6, 1, 3)):
    """(N, C): rarely one of them LARGE_ODD."""
    large = F.rare(draw, F.LARGE_ONE_IN)
    big_n = large and draw(F.st.booleans())
    return F.size(draw, big_n, small), F.size(draw, large and not big_n, small)


def _logit_tol(F, dt, product_dt, vals, mag, n):
    """The row's tol[dt] with the error the loss and gradients carry from their logits' rounding
    (an ulp of the largest logit z: scale * mag plus the margin): lse - z_y cancels, so a row's
    loss is off by a few eps |z| (absolute; a sum adds N rows), and the probabilities exp(z -
    lse) by a few eps |z| relative. eps: of product_dt where the op rounds the logits'
    products to it, else of the compute dtype (float32 below float64). This stays within the
    row's tol for ordinary values (|z| <= 128) and matters for the extreme ones."""
    rtol, atol = _MARGIN_TOL[dt]
    eps = torch.finfo(product_dt or (torch.float64 if dt == torch.float64 else torch.float32)).eps
    fnorm = vals.get("feature_norm")
    scale = float(F.plain(vals["scale"])) if fnorm is None else \
        float(fnorm.detach().double().cpu().nan_to_num(0, 0, 0).abs().max()) if fnorm.numel() else 0.0
    z = scale * (mag + abs(float(F.plain(vals["m3"]))) + 2 * float(F.plain(vals["m1"])) + 1.0)
    rows = max(n, 1) if vals["reduction"] == "sum" else 1
    return rtol + 4 * eps * z, atol + 8 * eps * z * rows


def _margin_ce_fuzz(draw, device):
    """margin_cross_entropy: cosines in [-1, 1] with +-1, extremes, NaN, inf; every argument
    drawn, at most one bad."""
    from ..testing import fuzz as F
    st = F.st
    fn = "margin_cross_entropy"
    bad = F.fault(draw, ["cos_logits", "weight", "feature_norm"] + _SHARED_FAULTS + [r.name for r in _fuzz_rules()])
    dt = F.dtype(draw)
    n, c = _fuzz_sizes(draw, F)
    if c == 0 and n > 0 and bad != "cos_logits":
        c = 1
    cos = F.tensor(draw, (n, c), dt, device, -1.0, 1.0, [1.0, -1.0] + F.extremes(dt, _COS_BIG[dt], _NONFINITE))
    vals, error, target, first = _fuzz_shared(draw, F, fn, bad, n, c, device, cos, "cos_logits")
    vals["weight"], e = _vector(draw, F, fn, "weight", bad == "weight", c, "C", cos, device, 0.2, 2.0)
    error = error or e
    vals["feature_norm"], e = _vector(draw, F, fn, "feature_norm", bad == "feature_norm", n, "N", cos, device,
                                      0.5, 64.0)
    error = error or e
    if bad == "cos_logits":
        how = draw(st.sampled_from(["type", "dtype", "dims", "classes"]))
        if how == "type":
            cos, error = F.not_a_tensor(draw, fn, "cos_logits")
        elif how == "dtype":
            cos, error = F.not_float(draw, fn, "cos_logits", (n, c), device)
        elif how == "dims":
            shp = draw(st.sampled_from([(c,), (n, c, 1), ()]))
            cos = torch.zeros(shp, dtype=dt, device=device)
            error = ValueError, rf"^{fn}: cos_logits must be 2-D \[N, C\], got shape {F.shape_text(shp)}$"
        else:
            n = max(n, 1)
            cos, target = torch.zeros(n, 0, dtype=dt, device=device), torch.zeros(n, dtype=torch.long, device=device)
            vals["weight"] = vals["feature_norm"] = None
            error = ValueError, rf"^{fn}: cos_logits has no classes \(shape \[{n}, 0\]\)$"
    tol = None
    if error is None:
        mag = float(cos.detach().double().cpu().nan_to_num(0, 0, 0).abs().max()) if cos.numel() else 0.0
        tol = _logit_tol(F, dt, None, vals, mag, n)
    case = _fuzz_case(F, draw, LF.margin_cross_entropy, R.margin_cross_entropy, (cos, target), vals, error, device,
                      first, 1, n, c, dt, ("weight", "feature_norm"), tol)
    if error is None and _target_cos_at_one(cos, target, vals):
        # a target cosine of exactly +-1: the op's d psi / d cos divides by max(sin theta, 1e-4)
        # (margin_cross_entropy's docstring), the reference's acos has no derivative there; the
        # op's gradient carries the rounding of dL/dlogit times that ~1e4 slope
        case.grads = False
    elif error is None and case.grads is True and c > 1 and cos.stride(1) == 0:
        # cosines expanded over the classes: feature_norm's gradient, sum_j dlogit_j cos_j, cancels
        # exactly (to 0) and keeps the rounding of its terms; compare the others
        case.grads = tuple(i for i, t in enumerate(case.sample.float_tensors()) if t is not vals["feature_norm"])
    return case


def _fuzz_case(F, draw, op, ref, leading, vals, error, device, first, target_at, n, c, dt, grad_keys, tol=None):
    """The FuzzCase of op(*leading, **vals), arguments passed positionally or by keyword; a
    valid call with bad labels on CUDA compares with _bad_rows_ref."""
    params, positional = F.signature_params(op, ref, leading, vals)
    args, kwargs = F.arguments(draw, leading, params, positional)
    name = f"{vals['reduction']}-{[tuple(getattr(t, 'shape', ())) for t in leading]}"
    case = F.FuzzCase(SampleInput(args, kwargs, name, grad_keys=grad_keys), error, dtype=dt, tol=tol)
    # dX sums over the classes, dW and the class weight's gradient over the rows
    case.grad_terms = max(n, c)
    if error is None and first is not None:  # bad labels on CUDA
        t = leading[target_at].cpu().long()
        ignore = int(vals["ignore_index"])
        case.ref = _bad_rows_ref(ref, target_at, (t != ignore) & ((t < 0) | (t >= c)), ignore)
        case.grads = False
    return case


def _target_cos_at_one(cos, target, vals):
    """Whether a row's cosine at its target is exactly +-1."""
    cos, t = cos.detach().double().cpu(), target.detach().long().cpu()
    rows = (t != int(vals["ignore_index"])) & (t >= 0) & (t < cos.shape[1])
    return bool((cos[rows.nonzero()[:, 0], t[rows]].abs() == 1).any())


def _target_cos_near_one(x, w, target, vals, dt):
    """Whether a row's cosine with its target class is within 16 eps(dt) of +-1 (in float64)."""
    x, w, t = x.detach().double().cpu(), w.detach().double().cpu(), target.detach().long().cpu()
    if not (x.numel() and w.numel()):
        return False
    rows = (t != int(vals["ignore_index"])) & (t >= 0) & (t < w.shape[0])
    cos = (torch.nn.functional.normalize(x[rows], dim=1) * torch.nn.functional.normalize(w[t[rows]], dim=1)).sum(1)
    return bool((cos.abs() > 1 - 16 * torch.finfo(dt).eps).any())


def _fused_fuzz(draw, device):
    """fused_linear_margin_cross_entropy: embeddings and class weights in [-1, 1] with extremes,
    NaN, inf; D from 0; normalize or a plain linear layer with a bias; chunk sizes from 1 to
    beyond C; every argument drawn, at most one bad."""
    from ..testing import fuzz as F
    st = F.st
    fn = "fused_linear_margin_cross_entropy"
    bad = F.fault(draw, ["embeddings", "weight", "bias", "normalize", "chunk_size"] + _SHARED_FAULTS +
                  [r.name for r in _fuzz_rules()])
    dt = F.dtype(draw)
    wdt = F.other_dtype(draw, dt)
    rdt = torch.promote_types(dt, wdt)
    n, c = _fuzz_sizes(draw, F)
    if c == 0 and n > 0 and bad != "weight":
        c = 1
    d = F.size(draw, sizes=(0, 1, 2, 3, 5, 8, 17, 4))
    normalize = True if bad in ("m1", "m2") else F.flag(draw)  # a plain layer fixes m1 and m2
    big = _NORM_BIG if normalize else _PLAIN_BIG
    x = F.tensor(draw, (n, d), dt, device, -1.0, 1.0, F.extremes(dt, big[dt], _NONFINITE))
    w = F.tensor(draw, (c, d), wdt, device, -1.0, 1.0, F.extremes(wdt, big[wdt], _NONFINITE))
    vals, error, target, first = _fuzz_shared(draw, F, fn, bad, n, c, device, x, "embeddings")
    vals["normalize"] = normalize
    if not normalize:  # a plain linear layer takes only the additive margin
        vals["m1"], vals["m2"] = F.number_as(draw, 1.0), F.number_as(draw, 0.0)
    # chunks of 1 to beyond C (at least 64 for a LARGE_ODD C: 65539 chunks of one class take seconds)
    small = [1, 2, 3, 5, max(c - 1, 1)] if c < 4099 else [64, c - 1]
    vals["chunk_size"] = None if draw(st.booleans()) else F.integer(
        draw, fn, "chunk_size", small + [max(c, 1), c + 1, 64, 4099, 2 ** 31 + 1, 2 ** 62])
    vals["bias"] = None
    if not normalize or bad == "bias":
        vals["bias"], e = _vector(draw, F, fn, "bias", bad == "bias" and not normalize, c, "C", x, device, -1.0, 1.0)
        error = error or e
    if bad == "bias" and normalize:
        vals["bias"] = F.tensor(draw, (c,), rdt, device, -1.0, 1.0)
        error = ValueError, rf"^{fn}: bias needs normalize=False$"
    if bad == "normalize":
        if draw(st.booleans()):
            vals["normalize"], error = F.flag(draw, fn, "normalize", bad=True)
        else:
            vals["normalize"], vals["bias"] = False, None
            vals["m1"], vals["m2"] = draw(st.sampled_from([(4.0, 0.0), (1.0, 0.5), (1.35, 0.2)]))
            error = ValueError, (rf"^{fn}: normalize=False takes only the additive margin m3; got "
                                 rf"m1={vals['m1']}, m2={vals['m2']}$")
    if bad == "chunk_size":
        vals["chunk_size"], error = F.integer(draw, fn, "chunk_size", bad=True, optional=True,
                                              bad_values=[(0, "be > 0"), (-1, "be > 0"), (F.INT64_MIN, "be > 0")])
    if bad == "embeddings":
        how = draw(st.sampled_from(["type", "dtype", "dims"]))
        if how == "type":
            x, error = F.not_a_tensor(draw, fn, "embeddings")
        elif how == "dtype":
            x, error = F.not_float(draw, fn, "embeddings", (n, d), device)
        else:
            shp = draw(st.sampled_from([(d,), (n, d, 1)]))
            x = torch.zeros(shp, dtype=dt, device=device)
            error = ValueError, rf"^{fn}: embeddings must be 2-D \[N, D\], got shape {F.shape_text(shp)}$"
    if bad == "weight":
        how = draw(st.sampled_from(["type", "dtype", "dims", "D", "classes", "device"]))
        if how == "type":
            w, error = F.not_a_tensor(draw, fn, "weight")
        elif how == "dtype":
            w, error = F.not_float(draw, fn, "weight", (c, d), device)
        elif how == "dims":
            shp = draw(st.sampled_from([(d,), (c, d, 1)]))
            w = torch.zeros(shp, dtype=rdt, device=device)
            error = ValueError, rf"^{fn}: weight must be 2-D \[C, D\], got shape {F.shape_text(shp)}$"
        elif how == "D":
            w = torch.zeros(c, d + 1, dtype=rdt, device=device)
            error = ValueError, rf"^{fn}: weight has D = {d + 1} but embeddings have D = {d}$"
        elif how == "classes":
            n = max(n, 1)
            x, target = torch.zeros(n, d, dtype=dt, device=device), torch.zeros(n, dtype=torch.long, device=device)
            w, vals["bias"] = torch.zeros(0, d, dtype=wdt, device=device), None
            error = ValueError, rf"^{fn}: weight has no classes \(shape \[0, {d}\]\)$"
        else:
            w, error = F.on_meta(fn, "weight", x, "embeddings", shp=(c, d), dt=rdt)
    tol, near = None, False
    if error is None:
        if normalize or not (n and c and d):
            mag = 1.0
        else:
            finite = lambda t: t.detach().double().cpu().nan_to_num(0, 0, 0).abs()  # noqa: E731
            mag = float((finite(x) @ finite(w).T).max())
            mag += 0.0 if vals["bias"] is None else float(finite(vals["bias"]).max())
        # the chunk products (cosines, or x w^T) are rounded to float16/bfloat16 for those dtypes
        product_dt = rdt if rdt in (torch.float16, torch.bfloat16) else None
        tol = _logit_tol(F, rdt, product_dt, vals, mag, n)
        near = bool(normalize) and d >= 1 and _target_cos_near_one(x, w, target, vals, product_dt or rdt)
        if near:
            # a target cosine within rounding (eps) of +-1 (every cosine of a 1-D row is +-1): theta
            # = acos(cos) is off by about sqrt(2 eps) (acos' slope is infinite there), so is the
            # margin's psi(theta) times
            # about m1 + 1, and the logit times the scale
            eps = torch.finfo(torch.float64 if rdt == torch.float64 else product_dt or torch.float32).eps
            rows = max(n, 1) if vals["reduction"] == "sum" else 1
            slope = float(F.plain(vals["scale"])) * (float(F.plain(vals["m1"])) + 1)
            tol = tol[0], tol[1] + slope * (4 * eps) ** 0.5 * rows
    case = _fuzz_case(F, draw, LF.fused_linear_margin_cross_entropy, R.fused_linear_margin_cross_entropy,
                      (x, w, target), vals, error, device, first, 2, n, c, rdt, ("bias",), tol)
    if near:
        case.grads = False  # d psi / d cos ~ 1 / sin(theta), of a theta that is mostly rounding
    elif d == 1 and error is None and normalize:
        # every cosine is +-1, where the op's d psi / d cos divides by max(sin theta, 1e-4) (see
        # margin_cross_entropy) and the reference's acos has no derivative: the true gradient is 0
        # (a normalized 1-D row cannot turn) and the op's is the rounding of that ~1e4 slope
        case.grads = False
    elif error is None and c > 1 and w.stride(0) == 0:
        # an expanded weight (identical classes): dX = sum_j dlogit_j w_j cancels exactly (to 0)
        # and keeps the rounding of its terms; compare the other gradients
        case.grads = (1, 2)
    return case


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
        raw_ops=["margin_cross_entropy", "margin_cross_entropy_backward", "margin_cross_entropy_with_grad"],
        hyper=_MARGIN_HYPER,
        sample_inputs=_margin_ce_samples, edge_inputs=_margin_ce_edges, error_inputs=_margin_ce_errors,
        bench_input=_margin_ce_bench, raw_calls=_margin_ce_raw_calls, module_call=_margin_ce_module,
        jit_source=_margin_ce_jit, raw_error_inputs=_margin_ce_raw_errors, tol=_MARGIN_TOL,
        module_samples=_margin_ce_modules, fuzz=_margin_ce_fuzz,
        bench_ref=R.margin_cross_entropy_composite, bench_generic=False,
        # forward reads N x C; backward reads it and writes the gradient
        bench_bytes={"forward": 1, "backward": 2, "full": 3},
    ),
    OpInfo(
        name="fused_linear_margin_cross_entropy",
        op=LF.fused_linear_margin_cross_entropy, ref=R.fused_linear_margin_cross_entropy,
        module=functools.partial(LN.CombinedMarginLoss, 8, 11),
        raw_ops=["fused_linear_margin_cross_entropy", "fused_linear_margin_cross_entropy_backward",
                 "fused_linear_margin_cross_entropy_with_grad",
                 "fused_linear_margin_shard_forward", "fused_linear_margin_shard_backward"],
        hyper=_MARGIN_HYPER,
        sample_inputs=_fused_samples, edge_inputs=_fused_edges, error_inputs=_fused_errors,
        bench_input=_fused_bench, raw_calls=_fused_raw_calls, module_call=_fused_module,
        jit_source=_fused_jit, raw_error_inputs=_fused_raw_errors, tol=_MARGIN_TOL,
        module_samples=_fused_modules, fuzz=_fused_fuzz,
        bench_notes={m: "it never stores the N x C logits: where a block of >= 128 rows fits 16M logits it takes "
                        "row blocks (3 matmuls, the gradients in the forward), else it recomputes each class "
                        "chunk's logits in the backward (4 matmuls against the composite's 3; docs/margin.md)"
                     for m in ("backward", "full")},
        bench_ref=R.fused_linear_margin_cross_entropy_composite, bench_generic=False,
    ),
]
