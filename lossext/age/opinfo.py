"""OpInfo rows of the age-estimation ops: mean_variance_loss (age_from_logits returns a pair,
(m, v), which the generic tests do not cover: tests/test_age.py runs its checks)."""
import math
import re

import torch

from ..testing.opinfo import REDUCTION, ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import reference as R

_NO_GRAD_KW = ()  # no tensor keyword arguments


def _ages(n, k, start, gen, device, floating=False, spread=0):
    """n ages whose bins are in [0, k) (floating: uniform in [start - 0.5, start + k - 0.5),
    half-integers excluded); spread > 0 reaches that many bins beyond both ends."""
    if floating:
        y = torch.rand(n, generator=gen, dtype=torch.float64) * (k + 2 * spread) - 0.5 - spread + start
        y = torch.where((y - y.floor() - 0.5).abs() < 1e-3, y + 0.01, y)
        return y.to(device)
    return (torch.randint(-spread, k + spread, (n,), generator=gen) + start).to(device)


def _logits(n, k, device, dtype, gen, lo=-3.0, hi=3.0):
    return make_tensor((n, k), device, dtype, lo, hi, gen)


# (N, K, start_age, floating ages, include_softmax, lambda_mean, lambda_var)
_SHAPES = [(1, 1, 0, False, True, 0.2, 0.05), (3, 5, 20, True, True, 0.2, 0.05), (7, 33, -3, False, True, 1.0, 0.5),
           (4, 101, 0, True, True, 0.2, 0.05), (5, 9, 16, True, False, 0.7, 0.0), (6, 12, 0, False, False, 0.0, 1.0)]


def _samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    shapes = _SHAPES + ([] if small else [(64, 101, 0, False, True, 0.2, 0.05), (9, 1000, 1, True, True, 0.2, 0.05)])
    for red in ("mean", "sum", "none"):
        for n, k, start, fl, soft, lm, lv in shapes:
            t = _ages(n, k, start, gen, device, fl, spread=0 if soft else 3)
            if fl:
                t = t.to(dtype)
            kw = dict(lambda_mean=lm, lambda_var=lv, start_age=start, include_softmax=soft, reduction=red)
            yield SampleInput((_logits(n, k, device, dtype, gen), t), kw, f"{red}-{n}x{k}-start{start}-float{fl}-soft{soft}",
                              grad_keys=_NO_GRAD_KW)
        # peaked rows far from bin 0 (the variance about the row's own mean), ages 0..100
        x = _logits(5, 101, device, torch.float64, gen)
        x[:, 80] += 12.0
        yield SampleInput((x.to(dtype), torch.tensor([80, 79, 81, 100, 0], device=device)), dict(reduction=red),
                          f"{red}-peaked", grad_keys=_NO_GRAD_KW)
        # non-contiguous logits: a transposed view and a column slice
        x = _logits(8, 6, device, dtype, gen)
        yield SampleInput((x.t(), _ages(6, 8, 0, gen, device)), dict(reduction=red), f"{red}-transposed",
                          grad_keys=_NO_GRAD_KW)
        x = _logits(5, 14, device, dtype, gen)
        yield SampleInput((x[:, ::2], _ages(5, 7, 10, gen, device)), dict(start_age=10, reduction=red),
                          f"{red}-strided", grad_keys=_NO_GRAD_KW)
        yield SampleInput((_logits(0, 5, device, dtype, gen), _ages(0, 5, 0, gen, device)), dict(reduction=red),
                          f"{red}-empty", grad_keys=_NO_GRAD_KW)


def _edges(device, dtype):
    # every sample in one class; one bin (K = 1: p = 1, v = 0); logits of one very peaked bin;
    # floating ages just either side of a half-integer (the softmax bin switches there)
    gen = torch.Generator().manual_seed(3)
    for red in ("none", "mean", "sum"):
        x = _logits(6, 7, device, dtype, gen)
        yield SampleInput((x, torch.full((6,), 3, device=device)), dict(reduction=red), f"{red}-one-class",
                          grad_keys=_NO_GRAD_KW)
        yield SampleInput((_logits(4, 1, device, dtype, gen), torch.zeros(4, dtype=torch.long, device=device)),
                          dict(reduction=red), f"{red}-one-bin", grad_keys=_NO_GRAD_KW)
        x = _logits(3, 6, device, torch.float64, gen)
        x[:, 2] = 30.0
        y = torch.tensor([2.4999, 2.5001, 3.4999], dtype=torch.float64, device=device)
        yield SampleInput((x.to(dtype), y.to(dtype)), dict(reduction=red), f"{red}-peaked-half", grad_keys=_NO_GRAD_KW)


def _errors(device):
    x = torch.rand(4, 5, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=_NO_GRAD_KW)  # noqa: E731
    E = [
        ErrorInput(S(x[0], t), ValueError, "logits must be 2-D"),
        ErrorInput(S(x.long(), t), TypeError, "logits must be float"),
        ErrorInput(S(x[:, :0], t), ValueError, "logits has no age bins"),
        ErrorInput(S(x, t.bool()), TypeError, "target must be integer or floating ages, got torch.bool"),
        ErrorInput(S(x, t[:3]), ValueError, "target must have shape"),
        ErrorInput(S(x, t.to("meta")), ValueError, "target is on"),
        ErrorInput(S(x, t, lambda_mean=-0.1), ValueError, "lambda_mean must be in"),
        ErrorInput(S(x, t, lambda_var=float("nan")), ValueError, "lambda_var must be in"),
        ErrorInput(S(x, t, start_age=1.5), TypeError, "start_age must be an int"),
        ErrorInput(S(x, t, start_age=2 ** 60), ValueError, r"start_age must be in \[-2\^53, 2\^53\]"),
        ErrorInput(S(x, t, reduction="avg"), ValueError, "reduction must be"),
        ErrorInput(S(x, t, include_softmax="yes"), TypeError, "include_softmax must be a bool"),
    ]
    if device == "cpu":  # CUDA never indexes with a bad bin; the row's softmax term is NaN (test_age.py)
        # (target'?: TorchScript shows the kernel's own message, "argument 'target' has value")
        E.append(ErrorInput(S(x, torch.tensor([0, 1, 5, 2])), ValueError, r"target'? has value 5 at index 2: its bin"))
        E.append(ErrorInput(S(x, torch.tensor([0.0, 4.6, 1.0, 2.0]), start_age=0), ValueError,
                            r"target'? has value 4\.6 at index 1"))
        E.append(ErrorInput(S(x, torch.tensor([20, 21, 19, 22]), start_age=20), ValueError,
                            "target'? has value 19 at index 2"))
    return E


def _bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    k = min(numel, 101)
    n = max(1, numel // k)
    return SampleInput((_logits(n, k, device, dtype, gen), _ages(n, k, 0, gen, device)), dict(reduction="mean"),
                       f"{n}x{k}", grad_keys=_NO_GRAD_KW)


def _params(kw):
    return (float(kw.get("lambda_mean", 0.2)), float(kw.get("lambda_var", 0.05)), int(kw.get("start_age", 0)),
            bool(kw.get("include_softmax", True)), REDUCTION[kw.get("reduction", "mean")])


def _op_target(t):
    return t.to(torch.float64) if t.is_floating_point() else t.long()


def _raw_calls(sample):
    x, t = sample.args
    t = _op_target(t)
    p = _params(sample.kwargs)
    out = torch.ops.lossext.mean_variance_loss(x, t, *p)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(out[0].shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype) for _ in range(4)]
    return [("mean_variance_loss", (x, t, *p)),
            ("mean_variance_loss_with_grad", (x, t, *p)),
            ("mean_variance_loss_backward", (*grads, x, t, out[4].detach(), *p)),
            ("mean_variance_loss_backward", (grads[0], None, None, grads[3], x, t, out[4].detach(), *p)),
            ("age_from_logits", (x, p[2])),
            ("age_from_logits_backward", (grads[0].reshape(-1).expand(x.shape[0]).contiguous() if grads[0].dim() == 0
                                          else grads[0], None, x,
                                          torch.ops.lossext.age_from_logits(x, p[2])[2].detach(), p[2]))]


def _module(sample):
    return LN.MeanVarianceLoss(**sample.kwargs), sample.args, {}


def _modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    x, t = _logits(6, 11, device, dtype, gen), _ages(6, 11, 20, gen, device)
    return [(LN.MeanVarianceLoss(start_age=20), (x, t), {}),
            (LN.MeanVarianceLoss(lambda_mean=1.0, include_softmax=False, reduction="sum"), (x, t.to(dtype)), {})]


def _jit(sample):
    x, t = sample.args
    p = _params(sample.kwargs)
    src = ("def f(x: Tensor, t: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.mean_variance_loss(x, t, {', '.join(repr(v) for v in p)})[0]\n")
    return src, (x, _op_target(t))


def _raw_errors(device):
    x = torch.rand(4, 5, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    p = list(_params({}))
    name = "mean_variance_loss"
    stats = torch.zeros(4, 3, dtype=torch.float64, device=device)
    g = torch.ones((), device=device)
    rows = [
        (name, (x[0], t, *p), "'logits' must be 2-D"),
        (name, (x[:, :0], t, *p), "'logits' has no age bins"),
        (name, (x, t.int(), *p), "'target' must be int64 or float64"),
        (name, (x, t[:2], *p), "'target' must have shape"),
        (name, (x, t, -1.0, *p[1:]), "'lambda_mean' must be finite and >= 0"),
        (name, (x, t, p[0], math.inf, *p[2:]), "'lambda_var' must be finite and >= 0"),
        (name, (x, t, *p[:2], 2 ** 60, *p[3:]), "'start_age' must be in"),
        (name, (x, t, *p[:-1], 5), "'reduction' must be"),
        (f"{name}_with_grad", (x, t[:2], *p), "'target' must have shape"),
        (f"{name}_backward", (torch.ones(4, device=device), None, None, None, x, t, stats, *p),
         "'grad_loss' must be 0-dim"),
        (f"{name}_backward", (g.double(), None, None, None, x, t, stats, *p), "'grad_loss' has dtype"),
        (f"{name}_backward", (g, None, None, None, x, t, stats[:2], *p), "'stats' must have shape"),
        (f"{name}_backward", (g, None, None, None, x, t, stats.float(), *p), "'stats' must be float64"),
        ("age_from_logits_backward", (g, None, x, stats, 0), "'grad_mean' must have shape"),
    ]
    if device == "cpu":
        rows.append((name, (x, torch.tensor([0, 1, 5, 2], device=device), *p), "'target' has value 5 at index 2"))
    return rows


# float32: ages to 100 make the mean term's gradient lambda (m - y) p (a - m) up to ~1e3 times
# the probabilities' rounding
_TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2),
        torch.bfloat16: (5e-2, 5e-2)}


# fuzz ------------------------------------------------------------------------------------------

def _bad_bins_ref(bad):
    """CUDA never indexes with a bad bin: those rows' softmax term (and total) is NaN, a reduced
    loss is NaN; the other rows are the reference's (computed with the bad rows' targets moved
    inside)."""
    def fn(logits, target, *args, **kwargs):
        start = kwargs.get("start_age", args[2] if len(args) > 2 else 0)
        b = bad.to(target.device)
        safe = torch.where(b, torch.full_like(target, start), target)
        out = R.mean_variance_loss(logits, safe, *args, **kwargs)
        return out.masked_fill(b, math.nan) if out.dim() else out + math.nan
    return fn


def _fuzz(draw, device):
    """mean_variance_loss: logits with extremes, NaN, inf; integer or floating ages inside,
    beyond the bins (legal without the softmax term) and bad; every argument drawn, at most one
    bad."""
    from ..testing import fuzz as F
    st = F.st
    fn = "mean_variance_loss"
    bad = F.fault(draw, ["logits", "target", "ages", "lambda_mean", "lambda_var", "start_age", "include_softmax",
                         "reduction"])
    dt = F.dtype(draw)
    large = F.rare(draw, F.LARGE_ONE_IN)
    big_n = large and draw(st.booleans())
    n = F.size(draw, big_n)
    k = F.size(draw, large and not big_n, sizes=(1, 2, 3, 5, 7, 101, 13, 6, 1, 3))
    big = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}[dt]
    x = F.tensor(draw, (n, k), dt, device, -6.0, 6.0, F.extremes(dt, big))
    rules = [F.Real("lambda_mean", "range", 0.0, math.inf, common=(0.2, 0.0, 1.0), hi_open=True, draw_hi=10.0),
             F.Real("lambda_var", "range", 0.0, math.inf, common=(0.05, 0.0, 1.0), hi_open=True, draw_hi=10.0)]
    vals, error = {}, None
    for rule in rules:
        if bad == rule.name:
            vals[rule.name], error = rule.invalid(draw, fn)
        else:
            vals[rule.name] = rule.valid(draw)
    start = draw(st.sampled_from([0, 0, 16, -5, 1000]))
    vals["start_age"] = F.integer(draw, fn, "start_age", [start])
    if bad == "start_age":
        vals["start_age"], error = F.integer(draw, fn, "start_age", bad=True,
                                             bad_values=[(2 ** 60, "be in [-2^53, 2^53]"),
                                                         (-(2 ** 53) - 1, "be in [-2^53, 2^53]")])
    soft = F.flag(draw)
    vals["include_softmax"] = soft
    if bad == "include_softmax":
        vals["include_softmax"], error = F.flag(draw, fn, "include_softmax", bad=True)
    vals["reduction"] = F.reduction(draw)
    if bad == "reduction":
        vals["reduction"], error = F.reduction(draw, fn, bad=True)
    vals["return_components"] = False  # changes the return type: tests/test_age.py
    floating = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    outside = bad == "ages" or (not soft and draw(st.booleans()))
    y = _ages(n, k, start, gen, "cpu", floating, spread=3 if outside else 0)
    if bad == "ages" and n:  # at least one age outside the bins
        i = draw(st.integers(0, n - 1))
        y[i] = draw(st.sampled_from([start - 1, start + k, start + k + 1000] + ([] if not floating else [math.nan])))
    tdt = draw(st.sampled_from([torch.float32, torch.float64, dt])) if floating else \
        draw(st.sampled_from([torch.int64, torch.int64, torch.int32]))
    target = y.to(device=device, dtype=tdt)
    yb = y.to(tdt).double()
    bins = (torch.round(yb) if floating else yb) - start
    bad_rows = ~((bins >= 0) & (bins < k))
    first = None
    if soft and bad_rows.any() and bad not in ("ages", "include_softmax"):
        soft = vals["include_softmax"] = False  # ages beyond the bins: legal only without the softmax term
    if soft and bad_rows.any() and bad == "ages":
        i = int(bad_rows.nonzero()[0, 0])
        first = (i, target[i].item())
        if device == "cpu":  # C++ prints a float in its own way: any value, the index exactly
            shown = re.escape(str(first[1])) if not floating else r"\S+"
            error = ValueError, rf"^{fn}: target has value {shown} at index {i}: its bin"
    if bad == "target":
        how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
        if how == "type":
            target, error = F.not_a_tensor(draw, fn, "target")
        elif how == "dtype":
            target = torch.zeros(n, dtype=draw(st.sampled_from([torch.bool, torch.complex64])), device=device)
            error = TypeError, rf"^{fn}: target must be integer or floating ages, got {target.dtype}$"
        elif how == "shape":
            shp = F.other_shape(draw, (n,))
            target = torch.zeros(shp, dtype=torch.long, device=device)
            error = ValueError, rf"^{fn}: target must have shape \[{n}\], got {F.shape_text(shp)}$"
        else:
            target, error = F.on_meta(fn, "target", x, "logits", shp=(n,), dt=torch.long)
    if bad == "logits":
        how = draw(st.sampled_from(["type", "dtype", "dims", "bins"]))
        if how == "type":
            x, error = F.not_a_tensor(draw, fn, "logits")
        elif how == "dtype":
            x, error = F.not_float(draw, fn, "logits", (n, k), device)
        elif how == "dims":
            shp = draw(st.sampled_from([(k,), (n, k, 1), ()]))
            x = torch.zeros(shp, dtype=dt, device=device)
            error = ValueError, rf"^{fn}: logits must be 2-D \[N, K\], got shape {F.shape_text(shp)}$"
        else:
            x = torch.zeros(n, 0, dtype=dt, device=device)
            error = ValueError, rf"^{fn}: logits has no age bins \(shape \[{n}, 0\]\)$"
    params, positional = F.signature_params(LF.mean_variance_loss, R.mean_variance_loss, (x, target), vals)
    args, kwargs = F.arguments(draw, (x, target), params, positional)
    case = F.FuzzCase(SampleInput(args, kwargs, f"{vals['reduction']}-{n}x{k}", grad_keys=_NO_GRAD_KW), error,
                      dtype=dt)
    case.grad_terms = k
    if error is None:
        mag = float(x.detach().double().cpu().nan_to_num(0, 0, 0).abs().max()) if x.numel() else 0.0
        rtol, atol = _TOL[dt]
        eps = torch.finfo(torch.float64 if dt == torch.float64 else torch.float32).eps
        # the logits' rounding (an ulp of the largest, through lse - z_b), and the ages': the mean
        # term's (m - y)^2 / 2 and its gradients scale with the ages' size (start + K)
        age = abs(start) + k + 1.0
        lam = float(F.plain(vals["lambda_mean"])) + float(F.plain(vals["lambda_var"])) + 1.0
        rows = max(n, 1) if vals["reduction"] == "sum" else 1
        case.tol = (rtol + 4 * eps * mag, atol + (8 * eps * mag + 16 * eps * lam * age * age) * rows)
        if first is not None:  # bad bins on CUDA
            case.ref = _bad_bins_ref(bad_rows.to(device))
            case.grads = False
    return case


OP_ROWS = [
    OpInfo(
        name="mean_variance_loss",
        op=LF.mean_variance_loss, ref=R.mean_variance_loss, module=LN.MeanVarianceLoss,
        raw_ops=["mean_variance_loss", "mean_variance_loss_with_grad", "mean_variance_loss_backward", "age_from_logits",
                 "age_from_logits_backward"],
        hyper=dict(lambda_mean=0.2, lambda_var=0.05, start_age=0),
        sample_inputs=_samples, edge_inputs=_edges, error_inputs=_errors, bench_input=_bench,
        raw_calls=_raw_calls, module_call=_module, jit_source=_jit, raw_error_inputs=_raw_errors, tol=_TOL,
        module_samples=_modules, fuzz=_fuzz, bench_ref=R.mean_variance_loss_composite, bench_generic=False,
        # forward reads N x K; backward reads it and writes the gradient
        bench_bytes={"forward": 1, "backward": 2, "full": 3},
    ),
]
