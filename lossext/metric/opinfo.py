"""OpInfo rows of the metric-learning ops: center_loss, triplet_center_loss."""
import math

import torch

from ..testing.opinfo import REDUCTION, ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import reference as R

_DIST = {"squared_euclidean": 0, "euclidean": 1}
_NEG = {"all": 0, "batch": 1}

# (N, D, C): one row, C = 1 (no negative), repeated labels, more classes than a CPU class tile
# (512), more rows than a CPU row tile (256), and no rows
_SHAPES = [(1, 1, 1), (3, 5, 1), (7, 4, 3), (8, 6, 5), (12, 3, 600), (300, 3, 7), (0, 4, 3)]
_SMALL = [(1, 1, 1), (3, 5, 1), (7, 4, 3), (8, 6, 5)]


def _labels(n, c, gen, device, one_class=False):
    t = torch.zeros(n, dtype=torch.long) if one_class else torch.randint(0, c, (n,), generator=gen)
    return t.to(device)


def _tensors(n, d, c, device, dtype, gen, spread=1.0):
    return (make_tensor((n, d), device, dtype, -spread, spread, gen), make_tensor((c, d), device, dtype, -spread, spread, gen))


def _center_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    for red in ("mean", "sum", "none"):
        for n, d, c in (_SMALL if small else _SHAPES):
            f, cen = _tensors(n, d, c, device, dtype, gen)
            yield SampleInput((f, _labels(n, c, gen, device), cen), dict(reduction=red), f"{red}-{n}x{d}x{c}", grad_keys=())
        f, cen = _tensors(6, 4, 3, device, dtype, gen)
        yield SampleInput((f, _labels(6, 3, gen, device, True), cen), dict(reduction=red), f"{red}-one-class", grad_keys=())
        f, cen = _tensors(5, 8, 4, device, dtype, gen)
        yield SampleInput((f[:, ::2], _labels(5, 4, gen, device), cen[:, 1::2]), dict(reduction=red), f"{red}-strided",
                          grad_keys=())


def _tc_kwargs(i, red):
    dist = ("squared_euclidean", "euclidean")[i % 2]
    neg = ("all", "batch")[(i // 2) % 2]
    margin = (5.0, 0.5, 1.0, 0.0)[i % 4]
    return dict(margin=margin, distance=dist, negatives=neg, reduction=red)


def _tc_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(1)
    for red in ("mean", "sum", "none"):
        for i, (n, d, c) in enumerate(_SMALL if small else _SHAPES):
            for j in range(2):
                kw = _tc_kwargs(i + 2 * j, red)
                # spread 2: hinges on both sides of 0 at margin 0.5-5 and D <= 6
                f, cen = _tensors(n, d, c, device, dtype, gen, 2.0)
                yield SampleInput((f, _labels(n, c, gen, device), cen), kw,
                                  f"{red}-{n}x{d}x{c}-{kw['distance']}-{kw['negatives']}-m{kw['margin']}", grad_keys=())
        f, cen = _tensors(6, 4, 3, device, dtype, gen, 2.0)
        yield SampleInput((f, _labels(6, 3, gen, device, True), cen), dict(margin=1.0, negatives="batch", reduction=red),
                          f"{red}-one-class-batch", grad_keys=())
        f, cen = _tensors(5, 8, 4, device, dtype, gen, 2.0)
        yield SampleInput((f[:, ::2], _labels(5, 4, gen, device), cen[:, 1::2]),
                          dict(margin=1.0, distance="euclidean", reduction=red), f"{red}-strided", grad_keys=())


def _tc_edges(device, dtype):
    # a feature exactly on its own center and exactly on a negative center (euclidean clamps
    # s = 0 and its slope is 0 there: finite gradients), and on the hinge's far side
    gen = torch.Generator().manual_seed(3)
    cen = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    f = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    f[0] = cen[0]
    f[1] = cen[2]
    f[3] = cen[3] + 0.01
    for red in ("none", "mean", "sum"):
        for dist in ("euclidean", "squared_euclidean"):
            yield SampleInput((f.to(device, dtype), t.to(device), cen.to(device, dtype)),
                              dict(margin=1.0, distance=dist, reduction=red), f"{red}-{dist}-on-centers", grad_keys=())


def _center_edges(device, dtype):
    cen = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    f = cen[[0, 1, 1]].clone()
    for red in ("none", "mean", "sum"):
        yield SampleInput((f.to(device, dtype), torch.tensor([0, 1, 2], device=device), cen.to(device, dtype)),
                          dict(reduction=red), f"{red}-on-centers", grad_keys=())


def _common_errors(device, fn_name):
    f = torch.rand(4, 3, device=device)
    c = torch.rand(5, 3, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=())  # noqa: E731
    E = [
        ErrorInput(S(f, t, torch.rand(5, 2, device=device)), ValueError, "centers has D = 2 but features have D = 3"),
        ErrorInput(S(f, t, torch.rand(0, 3, device=device)), ValueError, r"centers has no classes \(shape \[0, 3\]\)"),
        ErrorInput(S(f[0], t, c), ValueError, "features must be 2-D"),
        ErrorInput(S(f, t.float(), c), TypeError, "target must be integer"),
        ErrorInput(S(f, t[:3], c), ValueError, "target must have shape"),
        ErrorInput(S(f, t, c.long()), TypeError, "centers must be float"),
        ErrorInput(S(f, t, c, reduction="avg"), ValueError, "reduction must be"),
    ]
    if device == "cpu":
        E.append(ErrorInput(S(f, torch.tensor([0, 1, 5, 2]), c), IndexError,
                            rf"^{fn_name}: target has value 5 at index 2, outside \[0, 5\)"))
        E.append(ErrorInput(S(f, torch.tensor([0, -1, 3, 2]), c), IndexError, "target has value -1 at index 1"))
    return E


def _center_errors(device):
    return _common_errors(device, "center_loss")


def _tc_errors(device):
    f = torch.rand(4, 3, device=device)
    c = torch.rand(5, 3, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=())  # noqa: E731
    return _common_errors(device, "triplet_center_loss") + [
        ErrorInput(S(f, t, c, margin=-1.0), ValueError, "triplet_center_loss: margin must be >= 0, got -1"),
        ErrorInput(S(f, t, c, margin=math.inf), ValueError, "margin must be finite, got inf"),
        ErrorInput(S(f, t, c, distance="cosine"), ValueError,
                   "triplet_center_loss: distance must be 'squared_euclidean' or 'euclidean', got 'cosine'$"),
        ErrorInput(S(f, t, c, negatives="hard"), ValueError,
                   "triplet_center_loss: negatives must be 'all' or 'batch', got 'hard'$"),
        ErrorInput(S(f, t, c, margin="5"), TypeError, "margin must be a real number"),
    ]


def _center_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    d = 512
    n = max(1, numel // d)
    f, c = _tensors(n, d, 100, device, dtype, gen)
    return SampleInput((f, _labels(n, 100, gen, device), c), dict(reduction="mean"), f"{n}x{d}x100", grad_keys=())


def _tc_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    d, c = 64, 1000
    n = max(1, numel // (d * 16))
    f, cen = _tensors(n, d, c, device, dtype, gen)
    return SampleInput((f, _labels(n, c, gen, device), cen), dict(margin=5.0), f"{n}x{d}x{c}", grad_keys=())


def _center_raw_calls(sample):
    f, t, c = sample.args
    red = REDUCTION[sample.kwargs.get("reduction", "mean")]
    loss = torch.ops.lossext.center_loss(f, t, c, red)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(f.device, f.dtype)
    return [("center_loss", (f, t, c, red)), ("center_loss_backward", (go, f, t, c, red))]


def _tc_params(kw):
    return (float(kw.get("margin", 5.0)), _DIST[kw.get("distance", "squared_euclidean")],
            _NEG[kw.get("negatives", "all")], REDUCTION[kw.get("reduction", "mean")])


def _tc_raw_calls(sample):
    f, t, c = sample.args
    p = _tc_params(sample.kwargs)
    loss, neg = torch.ops.lossext.triplet_center_loss(f, t, c, *p)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(f.device, f.dtype)
    return [("triplet_center_loss", (f, t, c, *p)), ("triplet_center_loss_backward", (go, f, t, c, neg, *p))]


def _with_centers(mod, c):
    mod = mod.to(device=c.device, dtype=c.dtype)
    with torch.no_grad():
        mod.centers.copy_(c)
    return mod


def _center_module(sample):
    f, t, c = sample.args
    return _with_centers(LN.CenterLoss(c.shape[0], c.shape[1], **sample.kwargs), c), (f, t), {}


def _tc_module(sample):
    f, t, c = sample.args
    return _with_centers(LN.TripletCenterLoss(c.shape[0], c.shape[1], **sample.kwargs), c), (f, t), {}


def _center_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    f, t = make_tensor((6, 4), device, dtype, -1, 1, gen), _labels(6, 3, gen, device)
    return [(LN.CenterLoss(3, 4).to(device=device, dtype=dtype), (f, t), {})]


def _tc_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    f, t = make_tensor((6, 4), device, dtype, -1, 1, gen), _labels(6, 3, gen, device)
    return [(LN.TripletCenterLoss(3, 4, margin=1.0).to(device=device, dtype=dtype), (f, t), {}),
            (LN.TripletCenterLoss(3, 4, distance="euclidean", negatives="batch").to(device=device, dtype=dtype),
             (f, t), {})]


def _center_jit(sample):
    red = REDUCTION[sample.kwargs.get("reduction", "mean")]
    src = ("def f(x: Tensor, t: Tensor, c: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.center_loss(x, t, c, {red})\n")
    return src, sample.args


def _tc_jit(sample):
    p = ", ".join(repr(v) for v in _tc_params(sample.kwargs))
    src = ("def f(x: Tensor, t: Tensor, c: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.triplet_center_loss(x, t, c, {p})[0]\n")
    return src, sample.args


def _raw_errors(device, tc):
    f = torch.rand(4, 3, device=device)
    c = torch.rand(5, 3, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    name = "triplet_center_loss" if tc else "center_loss"
    p = (5.0, 0, 0, 1) if tc else (1,)
    rows = [
        (name, (f, t, c[:, :2], *p), "'centers' has D = 2"),
        (name, (f, t, c[:0], *p), "'centers' has no classes"),
        (name, (f, t.int(), c, *p), "'target' must be int64"),
        (name, (f, t, c.double(), *p), "'centers' has dtype"),
        (name, (f[0], t, c, *p), "'features' must be 2-D"),
        (name, (f, t, c, *p[:-1], 7), "'reduction' must be"),
    ]
    go = torch.ones((), device=device)
    if tc:
        neg = torch.zeros(4, dtype=torch.long, device=device)
        rows += [(name, (f, t, c, -1.0, 0, 0, 1), "'margin' must be finite and >= 0, got -1"),
                 (name, (f, t, c, 5.0, 2, 0, 1), "'distance' must be 0"),
                 (name, (f, t, c, 5.0, 0, 3, 1), "'negatives' must be 0"),
                 (f"{name}_backward", (go, f, t, c, neg[:2], *p), "'negative' must be int64 of shape"),
                 (f"{name}_backward", (torch.ones(4, device=device), f, t, c, neg, *p), "'grad_output' must be 0-dim")]
        if device == "cpu":
            rows.append((f"{name}_backward", (go, f, t, c, neg + 7, *p), "'negative' has value 7 at index 0"))
    else:
        rows.append((f"{name}_backward", (torch.ones(4, device=device), f, t, c, *p), "'grad_output' must be 0-dim"))
    return rows


# fuzz ------------------------------------------------------------------------------------------

def _fuzz_common(draw, F, fn, faults):
    """(bad, dtype, N, D, C, features, target, centers, error, first bad label)."""
    st = F.st
    bad = F.fault(draw, faults)
    dt = F.dtype(draw)
    n = F.size(draw, sizes=(0, 1, 2, 3, 5, 7, 4, 9, 13, 6, 1, 3, 300))
    d = F.size(draw, sizes=(0, 1, 2, 3, 5, 8, 17, 4))
    c = F.size(draw, sizes=(1, 2, 3, 5, 7, 4, 9, 1, 600))
    f = F.tensor(draw, (n, d), dt, device_of(draw), -2.0, 2.0, [0.0])
    cen = F.tensor(draw, (c, d), F.other_dtype(draw, dt), f.device, -2.0, 2.0, [0.0])
    target, first = F.labels(draw, n, c, f.device, ignore_index=-100, bad=bad == "labels")
    if bad != "labels" and n and (target == -100).any():
        target = torch.where(target == -100, torch.zeros_like(target), target)  # no ignore_index here
    error = None
    if bad == "labels" and first is not None and f.device.type == "cpu":
        # labels() may also have put -100 (not ignored here): the first label outside [0, C)
        tt = target.long().cpu()
        i = int(((tt < 0) | (tt >= c)).nonzero()[0, 0])
        first = (i, int(tt[i]))
        error = F.bad_label_error(fn, first)
    elif bad == "labels":
        bad = None
        target = torch.where((target.long() < 0) | (target.long() >= c), 0, target.long())
    if bad == "centers":
        how = draw(st.sampled_from(["D", "classes", "dims", "type"]))
        if how == "D":
            cen = torch.zeros(c, d + 1, dtype=f.dtype, device=f.device)
            error = ValueError, rf"^{fn}: centers has D = {d + 1} but features have D = {d}$"
        elif how == "classes":
            cen = torch.zeros(0, d, dtype=f.dtype, device=f.device)
            error = ValueError, rf"^{fn}: centers has no classes \(shape \[0, {d}\]\)$"
        elif how == "dims":
            cen = torch.zeros(d, dtype=f.dtype, device=f.device)
            error = ValueError, rf"^{fn}: centers must be 2-D \[C, D\], got shape {F.shape_text((d,))}$"
        else:
            cen, error = F.not_a_tensor(draw, fn, "centers")
    if bad == "reduction":
        red, error = F.reduction(draw, fn, bad=True)
    else:
        red = F.reduction(draw)
    return bad, dt, n, d, c, f, target, cen, error, red


def device_of(draw):
    return _FUZZ_DEVICE[0]


_FUZZ_DEVICE = ["cpu"]


def _center_fuzz(draw, device):
    from ..testing import fuzz as F
    _FUZZ_DEVICE[0] = device
    fn = "center_loss"
    bad, dt, n, d, c, f, target, cen, error, red = _fuzz_common(draw, F, fn, ["labels", "centers", "reduction"])
    vals = {"reduction": red}
    params, positional = F.signature_params(LF.center_loss, R.center_loss, (f, target, cen), vals)
    args, kwargs = F.arguments(draw, (f, target, cen), params, positional)
    rdt = torch.promote_types(dt, cen.dtype) if isinstance(cen, torch.Tensor) else dt
    case = F.FuzzCase(SampleInput(args, kwargs, f"{red}-{n}x{d}x{c}", grad_keys=()), error, dtype=rdt)
    case.grad_terms = max(n, 1)
    return case


def _tc_fuzz(draw, device):
    from ..testing import fuzz as F
    st = F.st
    _FUZZ_DEVICE[0] = device
    fn = "triplet_center_loss"
    bad, dt, n, d, c, f, target, cen, error, red = _fuzz_common(
        draw, F, fn, ["labels", "centers", "reduction", "margin", "distance", "negatives"])
    margin = F.number_as(draw, draw(st.sampled_from([5.0, 1.0, 0.5, 0.0, 2.0])))
    distance = draw(st.sampled_from(["squared_euclidean", "euclidean"]))
    negatives = draw(st.sampled_from(["all", "batch"]))
    if bad == "margin":
        margin = draw(st.sampled_from([-1.0, -0.5, math.inf, math.nan]))
        error = ValueError, (rf"^{fn}: margin must be >= 0, got {re_num(margin)}" if math.isfinite(margin)
                             else rf"^{fn}: margin must be finite, got {margin}$")
    if bad == "distance":
        distance = draw(st.sampled_from(["cosine", "Euclidean", ""]))
        error = ValueError, rf"^{fn}: distance must be 'squared_euclidean' or 'euclidean', got '{distance}'$"
    if bad == "negatives":
        negatives = draw(st.sampled_from(["hard", "ALL", ""]))
        error = ValueError, rf"^{fn}: negatives must be 'all' or 'batch', got '{negatives}'$"
    vals = dict(margin=margin, distance=distance, negatives=negatives, reduction=red)
    params, positional = F.signature_params(LF.triplet_center_loss, R.triplet_center_loss, (f, target, cen), vals)
    args, kwargs = F.arguments(draw, (f, target, cen), params, positional)
    rdt = torch.promote_types(dt, cen.dtype) if isinstance(cen, torch.Tensor) else dt
    case = F.FuzzCase(SampleInput(args, kwargs, f"{red}-{n}x{d}x{c}", grad_keys=()), error, dtype=rdt)
    case.grad_terms = max(n, 1)
    if error is None:
        # the argmin and the hinge's side decide where the gradient goes: where the float64
        # runner-up or the hinge is within the compute dtype's rounding, compare values only
        eps = torch.finfo(torch.float64 if rdt == torch.float64 else torch.float32).eps
        if _near_tie(f, target, cen, float(F.plain(margin)), distance, negatives, 64 * eps * max(d, 1)):
            case.grads = False
    return case


def re_num(v):
    return str(v).replace(".", r"\.").replace("-", r"\-")


def _near_tie(f, target, cen, margin, distance, negatives, rel):
    f, t, c = f.detach().double().cpu(), target.long().cpu(), cen.detach().double().cpu()
    if not (f.shape[0] and c.shape[0] > 1):
        return False
    s = ((f[:, None, :] - c[None]) ** 2).sum(-1)
    d = 0.5 * s if distance == "squared_euclidean" else s.clamp_min(1e-12).sqrt()
    scale = 1.0 + float(d.abs().max())
    allowed = torch.arange(c.shape[0])[None, :] != t[:, None]
    if negatives == "batch":
        present = torch.zeros(c.shape[0], dtype=torch.bool)
        present[t] = True
        allowed &= present[None, :]
    dm = d.masked_fill(~allowed, math.inf)
    two = dm.topk(min(2, dm.shape[1]), dim=1, largest=False).values
    has = allowed.any(1)
    if two.shape[1] > 1:
        gap = (two[:, 1] - two[:, 0]).abs()
        if bool(((gap < rel * scale) & (allowed.sum(1) > 1)).any()):
            return True
    v = d.gather(1, t[:, None])[:, 0] + margin - two[:, 0]
    return bool(((v.abs() < rel * scale) & has).any())


_TOL = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

OP_ROWS = [
    OpInfo(
        name="center_loss", op=LF.center_loss, ref=R.center_loss, module=lambda **kw: LN.CenterLoss(3, 4, **kw),
        raw_ops=["center_loss", "center_loss_backward"], hyper={},
        sample_inputs=_center_samples, edge_inputs=_center_edges, error_inputs=_center_errors,
        bench_input=_center_bench, raw_calls=_center_raw_calls, module_call=_center_module,
        jit_source=_center_jit, raw_error_inputs=lambda device: _raw_errors(device, False), tol=_TOL,
        module_samples=_center_modules, fuzz=_center_fuzz, bench_ref=R.center_loss_composite, bench_generic=False,
    ),
    OpInfo(
        name="triplet_center_loss", op=LF.triplet_center_loss, ref=R.triplet_center_loss,
        module=lambda **kw: LN.TripletCenterLoss(3, 4, **kw),
        raw_ops=["triplet_center_loss", "triplet_center_loss_backward"], hyper=dict(margin=5.0),
        sample_inputs=_tc_samples, edge_inputs=_tc_edges, error_inputs=_tc_errors,
        bench_input=_tc_bench, raw_calls=_tc_raw_calls, module_call=_tc_module,
        jit_source=_tc_jit, raw_error_inputs=lambda device: _raw_errors(device, True), tol=_TOL,
        module_samples=_tc_modules, fuzz=_tc_fuzz, bench_ref=R.triplet_center_loss_composite, bench_generic=False,
    ),
]
