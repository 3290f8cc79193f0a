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


# ---- pair-based losses: triplet_margin_loss, contrastive_loss ---------------------------------

_MINING = {"batch_hard": 0, "batch_all": 1, "semi_hard": 2}
_PAIR_RED = {"none": 0, "mean_all": 1, "sum": 2, "mean_nonzero": 3}


def _pair_batch(n, d, classes, device, dtype, gen, spread=1.0):
    x = make_tensor((n, d), device, dtype, -spread, spread, gen)
    return x, torch.randint(0, max(classes, 1), (n,), generator=gen).to(device)


# (N, D, classes, M or None): one row (no positive), one class (no negative), every row its own
# class (no positive), repeated labels, more anchors than a CPU tile (256), a reference set larger
# than a CPU reference tile (512), a reference set without the batch, and no rows
_PAIR_SHAPES = [(1, 3, 1, None), (4, 3, 1, None), (5, 4, 5, None), (8, 4, 3, None), (13, 5, 4, None),
                (9, 3, 3, 11), (7, 3, 4, 600), (300, 3, 7, None), (0, 4, 2, None), (0, 4, 2, 5), (6, 2, 2, 0)]
_PAIR_SMALL = [(1, 3, 1, None), (4, 3, 1, None), (8, 4, 3, None), (9, 3, 3, 11)]
_TRIPLET_KW = [dict(mining="batch_hard"), dict(mining="batch_all", margin=0.5),
               dict(mining="semi_hard", margin=0.3), dict(mining="batch_hard", distance="cosine"),
               dict(mining="batch_all", squared=True, margin=1.0), dict(mining="semi_hard", normalize=True),
               dict(mining="batch_hard", soft_margin=True), dict(mining="batch_all", distance="cosine", soft_margin=True)]
_CONTRASTIVE_KW = [dict(), dict(pos_margin=0.2, neg_margin=1.5), dict(distance="squared_euclidean", neg_margin=2.0),
                   dict(distance="cosine", pos_margin=0.1, neg_margin=0.8)]


def _pair_samples(kws, reductions, seed):
    def samples(device, dtype, small=False):
        gen = torch.Generator().manual_seed(seed)
        k = 0
        for red in reductions:
            if small and red not in ("mean", "sum", "none"):  # (the full set covers the other divisors)
                continue
            for n, d, classes, m in (_PAIR_SMALL if small else _PAIR_SHAPES):
                if n == 0 and red not in ("mean", "sum", "none"):
                    continue
                # large samples: the first kind (batch_hard; for float32, millions of batch_all
                # triplets would hold some within rounding of the hinge's corner)
                kw = dict(kws[k % len(kws)] if n * (m or n) < 1000 else kws[0], reduction=red)
                k += 1
                x, y = _pair_batch(n, d, classes, device, dtype, gen)
                grad_keys = ()
                if m is not None:
                    r, ry = _pair_batch(m, d, classes, device, dtype, gen)
                    kw.update(ref_embeddings=r, ref_labels=ry)
                    grad_keys = ("ref_embeddings",)
                yield SampleInput((x, y), kw, f"{red}-{n}x{d}-c{classes}-m{m}-" + "-".join(
                    f"{a}={b}" for a, b in kw.items() if not isinstance(b, torch.Tensor)), grad_keys=grad_keys)
            x, y = _pair_batch(6, 3, 2, device, dtype, gen)
            yield SampleInput((x.t().contiguous().t(), y), dict(kws[0], reduction=red), f"{red}-strided", grad_keys=())
    return samples


def _pair_edges(kws):
    def edges(device, dtype):
        # duplicate embeddings (zero distances: the euclidean clamp, finite gradients), exact ties
        # (the lowest index wins), and a reference set that holds no row of the batch
        gen = torch.Generator().manual_seed(5)
        base = torch.randn(3, 4, generator=gen, dtype=torch.float64)
        x = base[[0, 0, 1, 1, 2, 0]].clone()
        y = torch.tensor([0, 0, 1, 1, 2, 1])
        for kw in kws:
            for red in ("none", "mean", "sum"):
                yield SampleInput((x.to(device, dtype), y.to(device)), dict(kw, reduction=red),
                                  f"{red}-duplicates-{kw}", grad_keys=())
        r = torch.randn(5, 4, generator=gen, dtype=torch.float64)
        yield SampleInput((x.to(device, dtype), y.to(device)),
                          dict(kws[0], ref_embeddings=r.to(device, dtype), ref_labels=torch.tensor([0, 1, 1, 2, 3]).to(device)),
                          "ref-without-batch", grad_keys=("ref_embeddings",))
    return edges


def _pair_raw(sample, contrastive):
    """The raw op's leading args (x, y, r, ry, exclude_self, ...params) as the function passes them."""
    (x, y), kw = sample.args, sample.kwargs
    r, ry = kw.get("ref_embeddings"), kw.get("ref_labels")
    dist = kw.get("distance", "euclidean")
    norm = dist == "cosine" or kw.get("normalize", False)
    if norm:
        x = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
        r = None if r is None else torch.nn.functional.normalize(r, dim=1, eps=1e-12)
    self_ref = r is None
    r, ry = (x, y) if self_ref else (r, ry.long())
    red = kw.get("reduction", "mean")
    if contrastive:
        di = {"euclidean": 1, "squared_euclidean": 0, "cosine": 2}[dist]
        red_i = 3 if red == "mean" else _PAIR_RED[red]
        return (x, y.long(), r, ry, self_ref, float(kw.get("pos_margin", 0.0)), float(kw.get("neg_margin", 1.0)),
                di, red_i)
    mining = kw.get("mining", "batch_hard")
    di = 2 if dist == "cosine" else (0 if kw.get("squared", False) else 1)
    red_i = (3 if mining == "batch_all" else 1) if red == "mean" else _PAIR_RED[red]
    return (x, y.long(), r, ry, self_ref, float(kw.get("margin", 0.2)), _MINING[mining], di,
            bool(kw.get("soft_margin", False)), red_i)


def _triplet_raw_calls(sample):
    a = _pair_raw(sample, False)
    loss, hard, counts = torch.ops.lossext.triplet_margin_loss(*a)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(a[0].device, a[0].dtype)
    return [("triplet_margin_loss", a),
            ("triplet_margin_loss_backward", (go, *a[:4], hard, counts, *a[4:], True)),
            ("triplet_margin_loss_backward", (go, *a[:4], hard, counts, *a[4:], False))]


def _contrastive_raw_calls(sample):
    a = _pair_raw(sample, True)
    loss, counts = torch.ops.lossext.contrastive_loss(*a)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(a[0].device, a[0].dtype)
    return [("contrastive_loss", a), ("contrastive_loss_backward", (go, *a[:4], counts, *a[4:], True))]


def _pair_jit(op):
    def jit(sample):
        contrastive = op == "contrastive_loss"
        a = _pair_raw(sample, contrastive)
        p = ", ".join(repr(v) for v in a[5:])
        src = ("def f(x: Tensor, t: Tensor, r: Tensor, rt: Tensor) -> Tensor:\n"
               f"    return torch.ops.lossext.{op}(x, t, r, rt, {a[4]!r}, {p})[0]\n")
        return src, a[:4]
    return jit


def _pair_module_call(cls):
    def call(sample):
        kw = dict(sample.kwargs)
        r, ry = kw.pop("ref_embeddings", None), kw.pop("ref_labels", None)
        args = sample.args + ((r, ry) if r is not None else ())
        return cls(**kw), args, {}
    return call


def _pair_modules(cls, kws):
    def modules(device, dtype):
        gen = torch.Generator().manual_seed(0)
        x, y = _pair_batch(8, 4, 3, device, dtype, gen)
        return [(cls(**kw), (x, y), {}) for kw in kws]
    return modules


def _pair_errors(fn, extra):
    def errors(device):
        x = torch.rand(5, 3, device=device)
        y = torch.tensor([0, 1, 0, 2, 1], device=device)
        S = lambda *a, **k: SampleInput(a, k, grad_keys=())  # noqa: E731
        return [
            ErrorInput(S(x[0], y), ValueError, rf"{fn}: embeddings must be 2-D \[N, D\], got shape \[3\]"),
            ErrorInput(S(x, y.float()), TypeError, rf"{fn}: labels must be integer class labels, got torch.float32"),
            ErrorInput(S(x, y[:3]), ValueError, rf"{fn}: labels must have shape \[5\], got \[3\]"),
            ErrorInput(S(x.long(), y), TypeError, "embeddings must be float"),
            ErrorInput(S(x, y, ref_embeddings=torch.rand(4, 2, device=device), ref_labels=y[:4]), ValueError,
                       rf"{fn}: ref_embeddings has D = 2 but embeddings have D = 3"),
            ErrorInput(S(x, y, ref_embeddings=x), ValueError, rf"{fn}: ref_embeddings and ref_labels must be given together"),
            ErrorInput(S(x, y, ref_embeddings=x, ref_labels=y[:2]), ValueError,
                       rf"{fn}: ref_labels must have shape \[5\], got \[2\]"),
            ErrorInput(S(x, y, reduction="avg"), ValueError,
                       rf"{fn}: reduction must be 'none', 'mean', 'sum', 'mean_all' or 'mean_nonzero', got 'avg'"),
        ] + [ErrorInput(S(x, y, **kw), err, rf"{fn}: {msg}") for kw, err, msg in extra]
    return errors


_TRIPLET_ERRORS = [
    (dict(margin=-0.5), ValueError, r"margin must be >= 0, got -0.5"),
    (dict(margin=math.nan), ValueError, r"margin must be finite, got nan"),
    (dict(margin="1"), TypeError, r"margin must be a real number"),
    (dict(mining="hard"), ValueError, r"mining must be 'batch_hard', 'batch_all' or 'semi_hard', got 'hard'$"),
    (dict(distance="l1"), ValueError, r"distance must be 'euclidean' or 'cosine', got 'l1'$"),
    (dict(distance="cosine", squared=True), ValueError, r"squared=True applies to distance='euclidean'"),
    (dict(soft_margin=2), TypeError, r"soft_margin must be a bool"),
]
_CONTRASTIVE_ERRORS = [
    (dict(pos_margin=-1.0), ValueError, r"pos_margin must be >= 0, got -1"),
    (dict(neg_margin=-0.1), ValueError, r"neg_margin must be >= 0, got -0.1"),
    (dict(neg_margin=math.inf), ValueError, r"neg_margin must be finite, got inf"),
    (dict(distance="manhattan"), ValueError,
     r"distance must be 'euclidean', 'squared_euclidean' or 'cosine', got 'manhattan'$"),
]


def _pair_raw_errors(op, contrastive):
    def rows(device):
        x = torch.rand(4, 3, device=device)
        y = torch.tensor([0, 1, 0, 1], device=device)
        p = (0.0, 1.0, 1, 1) if contrastive else (0.2, 0, 1, False, 1)
        lead = (x, y, x, y, True)
        out = [
            (op, (x, y, x[:, :2], y, False, *p), "'ref_embeddings' has D = 2"),
            (op, (x, y.int(), x, y, True, *p), "'labels' must be int64"),
            (op, (x, y, x, y[:3], False, *p), "'ref_labels' must have shape \\[4\\]"),
            (op, (x, y, x[:3], y[:3], True, *p), "'exclude_self' needs the batch"),
            (op, (x, y, x.double(), y, False, *p), "'ref_embeddings' has dtype"),
            (op, (x[0], y, x, y, True, *p), "'embeddings' must be 2-D"),
            (op, (*lead, *p[:-1], 7), "'reduction' must be"),
            (op, (*lead, -1.0, *p[1:]), "margin' must be finite and >= 0, got -1"),
        ]
        if contrastive:
            out.append((op, (*lead, 0.0, -2.0, 1, 1), "'neg_margin' must be finite and >= 0"))
            out.append((op, (*lead, 0.0, 1.0, 3, 1), "'distance' must be 0"))
        else:
            out.append((op, (*lead, 0.2, 3, 1, False, 1), "'mining' must be 0"))
            out.append((op, (*lead, 0.2, 0, 5, False, 1), "'distance' must be 0"))
            go = torch.ones((), device=device)
            hard = torch.zeros(4, 2, dtype=torch.long, device=device)
            counts = torch.zeros(4, dtype=torch.long, device=device)
            out.append((f"{op}_backward", (go, *lead[:4], hard[:2], counts, True, *p, True), "'hard' must be int64 of shape"))
            out.append((f"{op}_backward", (go, *lead[:4], hard, counts[:2], True, *p, True), "'counts' must be int64 of shape"))
            out.append((f"{op}_backward", (torch.ones(4, device=device), *lead[:4], hard, counts, True, *p, True),
                        "'grad_output' must be 0-dim"))
            if device == "cpu":
                out.append((f"{op}_backward", (go, *lead[:4], hard + 9, counts, True, *p, True), "'hard' has value 9"))
        return out
    return rows


def _pair_bench(kw):
    def bench(numel, device, dtype):
        gen = torch.Generator().manual_seed(0)
        n, d = 64, 16
        x, y = _pair_batch(n, d, 8, device, dtype, gen)
        return SampleInput((x, y), dict(kw), f"{n}x{d}", grad_keys=())
    return bench


# fuzz: a drawn batch (and sometimes a reference set), mode and hyper-parameters, valid or with one bad argument

def _pair_near(a, contrastive, rel):
    """(values unstable, gradients unstable): float64 distances within rel of a decision (an
    argmax/argmin runner-up, semi-hard's d_an > d_ap, a hinge at 0), where the compute dtype's
    rounding may decide differently."""
    x, y, r, ry, self_ref = (t.detach().double().cpu() if isinstance(t, torch.Tensor) else t for t in a[:5])
    if x.shape[0] == 0 or r.shape[0] == 0:
        return False, False
    di = a[7] if contrastive else a[7]
    if di == 2:
        d = 1.0 - x @ r.T
    else:
        s = ((x[:, None] - r[None]) ** 2).sum(-1)
        d = s if di == 0 else s.clamp_min(1e-12).sqrt()
    scale = 1.0 + float(d.abs().max()) + abs(a[5])
    tol = rel * scale
    same = y[:, None] == ry[None]
    valid = torch.ones_like(same)
    if self_ref:
        valid &= ~torch.eye(x.shape[0], dtype=torch.bool)
    pos, neg = same & valid, ~same & valid
    if contrastive:
        near = ((d - a[5]).abs() < tol) & pos | ((a[6] - d).abs() < tol) & neg
        return False, bool(near.any())
    grads = values = False
    for i in range(x.shape[0]):
        dp, dn = d[i][pos[i]], d[i][neg[i]]
        if not (len(dp) and len(dn)):
            continue
        gaps = (dp[:, None] - dn[None]).reshape(-1)
        both = torch.cat([dp, dn])
        srt = both.sort().values
        if len(srt) > 1 and bool(((srt[1:] - srt[:-1]).abs() < tol).any()):
            grads = True
            if a[6] == 2 and bool((gaps.abs() < tol).any()):
                values = True
        if bool(((gaps + (0.0 if a[8] else a[5])).abs() < tol).any()):
            grads = True
    return values, grads


def _pair_fuzz(fn, contrastive):
    def fuzz(draw, device):
        from ..testing import fuzz as F
        st = F.st
        faults = ["labels", "ref", "reduction", "margin", "mode"]
        bad = F.fault(draw, faults)
        dt = F.dtype(draw)
        n = F.size(draw, sizes=(0, 1, 2, 3, 5, 7, 4, 9, 13, 6, 1, 3, 40))  # (tiles: the samples' 300 x 600)
        d = F.size(draw, sizes=(0, 1, 2, 3, 5, 8, 17, 4))
        classes = draw(st.sampled_from([1, 2, 3, 5, 50]))
        x = F.tensor(draw, (n, d), dt, device, -1.0, 1.0)
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
        y = torch.randint(0, classes, (n,), generator=gen).to(device=device, dtype=draw(st.sampled_from([torch.int64, torch.int32, torch.uint8])))
        r = ry = None
        if draw(st.booleans()):
            m = F.size(draw, sizes=(0, 1, 3, 7, 600, 5))
            r = F.tensor(draw, (m, d), dt, device, -1.0, 1.0)
            ry = torch.randint(0, classes, (m,), generator=gen).to(device)
        red = draw(st.sampled_from(["mean", "sum", "none", "mean_all", "mean_nonzero"]))
        error = None
        if contrastive:
            vals = dict(pos_margin=F.number_as(draw, draw(st.sampled_from([0.0, 0.25, 0.5]))),
                        neg_margin=F.number_as(draw, draw(st.sampled_from([1.0, 0.5, 2.0, 0.0]))),
                        distance=draw(st.sampled_from(["euclidean", "squared_euclidean", "cosine"])))
        else:
            vals = dict(margin=F.number_as(draw, draw(st.sampled_from([0.2, 0.0, 1.0, 0.5]))),
                        mining=draw(st.sampled_from(["batch_hard", "batch_all", "semi_hard"])),
                        distance=draw(st.sampled_from(["euclidean", "cosine"])), squared=False,
                        normalize=draw(st.booleans()), soft_margin=draw(st.booleans()))
            if vals["distance"] == "euclidean":
                vals["squared"] = draw(st.booleans())
        if bad == "labels":
            how = draw(st.sampled_from(["dtype", "shape"]))
            if how == "dtype":
                y = y.float()
                error = TypeError, rf"^{fn}: labels must be integer class labels, got torch.float32$"
            else:
                y = torch.zeros(n + 1, dtype=torch.long, device=device)
                error = ValueError, rf"^{fn}: labels must have shape \[{n}\], got \[{n + 1}\]$"
        elif bad == "ref":
            how = draw(st.sampled_from(["D", "labels", "alone"]))
            if how == "D":
                r, ry = torch.zeros(3, d + 1, dtype=x.dtype, device=device), torch.zeros(3, dtype=torch.long, device=device)
                error = ValueError, rf"^{fn}: ref_embeddings has D = {d + 1} but embeddings have D = {d}$"
            elif how == "labels":
                r, ry = torch.zeros(3, d, dtype=x.dtype, device=device), torch.zeros(2, dtype=torch.long, device=device)
                error = ValueError, rf"^{fn}: ref_labels must have shape \[3\], got \[2\]$"
            else:
                r, ry = torch.zeros(3, d, dtype=x.dtype, device=device), None
                error = ValueError, rf"^{fn}: ref_embeddings and ref_labels must be given together$"
        elif bad == "reduction":
            red = draw(st.sampled_from(["avg", "MEAN", ""]))
            error = ValueError, rf"^{fn}: reduction must be 'none', 'mean', 'sum', 'mean_all' or 'mean_nonzero', got '{red}'$"
        elif bad == "margin":
            name = draw(st.sampled_from(["pos_margin", "neg_margin"])) if contrastive else "margin"
            v = draw(st.sampled_from([-1.0, -0.5, math.inf, math.nan]))
            vals[name] = v
            error = ValueError, (rf"^{fn}: {name} must be >= 0, got {re_num(v)}$" if math.isfinite(v)
                                 else rf"^{fn}: {name} must be finite, got {v}$")
        elif bad == "mode":
            if contrastive:
                vals["distance"] = draw(st.sampled_from(["l1", "Euclidean", ""]))
                error = ValueError, (rf"^{fn}: distance must be 'euclidean', 'squared_euclidean' or 'cosine', "
                                     rf"got '{vals['distance']}'$")
            else:
                vals["mining"] = draw(st.sampled_from(["hard", "all", ""]))
                error = ValueError, (rf"^{fn}: mining must be 'batch_hard', 'batch_all' or 'semi_hard', "
                                     rf"got '{vals['mining']}'$")
        vals.update(reduction=red, ref_embeddings=r, ref_labels=ry)
        op, ref = (LF.contrastive_loss, R.contrastive_loss) if contrastive else (LF.triplet_margin_loss, R.triplet_margin_loss)
        params, positional = F.signature_params(op, ref, (x, y), vals)
        args, kwargs = F.arguments(draw, (x, y), params, positional)
        case = F.FuzzCase(SampleInput(args, kwargs, f"{red}-{n}x{d}-{vals}", grad_keys=()), error, dtype=dt)
        case.grad_terms = max(n, 1) * 4
        if error is None:
            eps = torch.finfo(torch.float64 if dt == torch.float64 else torch.float32).eps
            plain = SampleInput((x, y), {k: F.plain(v) for k, v in vals.items() if v is not None}, grad_keys=())
            unstable_values, unstable_grads = _pair_near(_pair_raw(plain, contrastive), contrastive, 64 * eps * max(d, 1))
            if unstable_grads or dt in (torch.float16, torch.bfloat16):
                case.grads = False
            if unstable_values:
                case.tol = (math.inf, math.inf)  # semi-hard's choice may differ: only that it runs
        return case
    return fuzz


_PAIR_TOL = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 8e-2),
}

OP_ROWS += [
    OpInfo(
        name="triplet_margin_loss", op=LF.triplet_margin_loss, ref=R.triplet_margin_loss,
        module=lambda **kw: LN.TripletMarginLoss(**kw),
        raw_ops=["triplet_margin_loss", "triplet_margin_loss_backward"], hyper=dict(margin=0.2),
        sample_inputs=_pair_samples(_TRIPLET_KW, ("mean", "sum", "none", "mean_all", "mean_nonzero"), 11),
        edge_inputs=_pair_edges([dict(mining="batch_hard"), dict(mining="batch_all"), dict(mining="semi_hard"),
                                 dict(mining="semi_hard", distance="cosine")]),
        error_inputs=_pair_errors("triplet_margin_loss", _TRIPLET_ERRORS), bench_input=_pair_bench(dict(margin=0.2)),
        raw_calls=_triplet_raw_calls, module_call=_pair_module_call(LN.TripletMarginLoss),
        jit_source=_pair_jit("triplet_margin_loss"), raw_error_inputs=_pair_raw_errors("triplet_margin_loss", False),
        tol=_PAIR_TOL, module_samples=_pair_modules(LN.TripletMarginLoss, [dict(), dict(mining="batch_all"),
                                                                           dict(mining="semi_hard", distance="cosine")]),
        fuzz=_pair_fuzz("triplet_margin_loss", False), bench_generic=False, bench_ref=R.triplet_margin_loss_composite,
    ),
    OpInfo(
        name="contrastive_loss", op=LF.contrastive_loss, ref=R.contrastive_loss,
        module=lambda **kw: LN.ContrastiveLoss(**kw),
        raw_ops=["contrastive_loss", "contrastive_loss_backward"], hyper=dict(neg_margin=1.0),
        sample_inputs=_pair_samples(_CONTRASTIVE_KW, ("mean", "sum", "none", "mean_all"), 12),
        edge_inputs=_pair_edges(_CONTRASTIVE_KW[:2]),
        error_inputs=_pair_errors("contrastive_loss", _CONTRASTIVE_ERRORS), bench_input=_pair_bench({}),
        raw_calls=_contrastive_raw_calls, module_call=_pair_module_call(LN.ContrastiveLoss),
        jit_source=_pair_jit("contrastive_loss"), raw_error_inputs=_pair_raw_errors("contrastive_loss", True),
        tol=_PAIR_TOL, module_samples=_pair_modules(LN.ContrastiveLoss, [dict(), dict(distance="cosine")]),
        fuzz=_pair_fuzz("contrastive_loss", True), bench_generic=False, bench_ref=R.contrastive_loss_composite,
    ),
]
