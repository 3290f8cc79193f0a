"""OpInfo rows of the dense-prediction ops: joints_mse_loss, mask_rcnn_loss here; dice_loss in
opinfo_dice.py; the synthesis losses in opinfo_synthesis.py."""
import math

import torch

from ..testing.opinfo import ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import reference as R

_GRAD_KW = ("target_weight",)  # a float visibility takes a gradient


def _maps(shape, device, dtype, gen):
    """Heatmap-like values: a Gaussian-ish range [0, 1) with noise."""
    return make_tensor(shape, device, dtype, -0.1, 1.0, gen)


def _visibility(b, k, device, dtype, gen, soft=False, trailing=False):
    w = torch.rand(b, k, generator=gen, dtype=torch.float64)
    w = w * 1.5 if soft else (w > 0.3).to(torch.float64)
    w = w.to(device, dtype)
    return w.unsqueeze(-1) if trailing else w


# (B, K, spatial, weight: None | "01" | "soft" | "01x1", ohkm_topk)
_CASES = [((1, 1, (1, 1)), None, None), ((2, 3, (5, 4)), "01", None), ((4, 17, (8, 6)), "01x1", 8),
          ((1, 5, (7, 3)), "soft", 2), ((3, 4, (6,)), None, 1), ((2, 6, (3, 3)), "01", 6), ((2, 3, (2, 5)), "soft", 9),
          ((5, 2, ()), None, None), ((2, 3, (2, 2, 2)), "01", 2)]


def _samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    cases = _CASES + ([] if small else [((8, 17, (32, 24)), "01x1", 8), ((2, 3, (257, 33)), "soft", None)])
    for red in ("mean", "sum", "none"):
        for (b, k, sp), wk, topk in cases:
            x, t = _maps((b, k, *sp), device, dtype, gen), _maps((b, k, *sp), device, dtype, gen)
            kw = dict(reduction=red)
            if wk is not None:
                kw["target_weight"] = _visibility(b, k, device, dtype, gen, wk == "soft", wk == "01x1")
            if topk is not None:
                kw["ohkm_topk"] = topk
            yield SampleInput((x, t), kw, f"{red}-{b}x{k}x{sp}-w{wk}-k{topk}", grad_keys=_GRAD_KW)
        # non-contiguous heatmaps: channels_last and a transposed spatial pair, a strided slice
        x = _maps((3, 4, 5, 6), device, dtype, gen).to(memory_format=torch.channels_last)
        t = _maps((3, 4, 6, 5), device, dtype, gen).transpose(2, 3)
        yield SampleInput((x, t), dict(reduction=red, target_weight=_visibility(3, 4, device, dtype, gen), ohkm_topk=2),
                          f"{red}-noncontiguous", grad_keys=_GRAD_KW)
        x = _maps((2, 6, 4, 8), device, dtype, gen)[:, ::2, :, 1::2]
        yield SampleInput((x, _maps(x.shape, device, dtype, gen)), dict(reduction=red), f"{red}-strided",
                          grad_keys=_GRAD_KW)
        yield SampleInput((_maps((0, 17, 4, 3), device, dtype, gen), _maps((0, 17, 4, 3), device, dtype, gen)),
                          dict(reduction=red, target_weight=torch.ones(0, 17, device=device, dtype=dtype)),
                          f"{red}-empty", grad_keys=_GRAD_KW)
        yield SampleInput((_maps((0, 17, 4, 3), device, dtype, gen), _maps((0, 17, 4, 3), device, dtype, gen)),
                          dict(reduction=red, ohkm_topk=8), f"{red}-empty-ohkm", grad_keys=_GRAD_KW)


def _edges(device, dtype):
    # OHKM ties (equal joints: the lower index goes first), k = 1, k >= K, B = 1; weights all 0;
    # output == target (zero loss); a joint whose weight is 0 beside visible ones
    gen = torch.Generator().manual_seed(3)
    for red in ("none", "mean", "sum"):
        base = _maps((1, 1, 4, 4), device, dtype, gen)
        x = base.expand(2, 5, 4, 4).contiguous()
        t = torch.zeros_like(x)
        t[:, 3] += 0.5  # joint 3 differs; the other four tie
        for k in (1, 2, 4, 5, 7):
            yield SampleInput((x, t), dict(reduction=red, ohkm_topk=k), f"{red}-ties-k{k}", grad_keys=_GRAD_KW)
        x, t = _maps((1, 3, 5, 5), device, dtype, gen), _maps((1, 3, 5, 5), device, dtype, gen)
        yield SampleInput((x, t), dict(reduction=red, ohkm_topk=8), f"{red}-B1-k8", grad_keys=_GRAD_KW)
        yield SampleInput((x, t), dict(reduction=red, target_weight=torch.zeros(1, 3, device=device, dtype=dtype)),
                          f"{red}-weights-zero", grad_keys=_GRAD_KW)
        yield SampleInput((x, x.clone()), dict(reduction=red, ohkm_topk=2), f"{red}-exact", grad_keys=_GRAD_KW)
        w = torch.tensor([[1.0, 0.0, 1.0]], device=device, dtype=dtype)
        yield SampleInput((x, t), dict(reduction=red, target_weight=w, ohkm_topk=2), f"{red}-one-invisible",
                          grad_keys=_GRAD_KW)


def _errors(device):
    x = torch.rand(2, 3, 4, 4, device=device)
    t = torch.rand(2, 3, 4, 4, device=device)
    w = torch.ones(2, 3, device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=_GRAD_KW)  # noqa: E731
    return [
        ErrorInput(S(x[0, 0, 0], t[0, 0, 0]), ValueError, r"output must be \[B, K, \.\.\.\] heatmaps"),
        ErrorInput(S(x.long(), t), TypeError, "output must be float"),
        ErrorInput(S(x, t.long()), TypeError, "target must be float"),
        ErrorInput(S(x, t[:, :2]), ValueError, r"target shape \[2, 2, 4, 4\] does not match output shape"),
        ErrorInput(S(x, t.to("meta")), ValueError, "target is on meta"),
        ErrorInput(S(x, t, target_weight=w[:, :2]), ValueError, r"target_weight must have shape \[2, 3\] or"),
        ErrorInput(S(x, t, target_weight=w[..., None, None]), ValueError, "target_weight must have shape"),
        ErrorInput(S(x, t, target_weight=w.to("meta")), ValueError, "target_weight is on meta"),
        ErrorInput(S(x, t, target_weight=[1.0]), TypeError, "target_weight must be a Tensor or None"),
        ErrorInput(S(x, t, ohkm_topk=0), ValueError, "ohkm_topk must be None or >= 1, got 0"),
        ErrorInput(S(x, t, ohkm_topk=1.5), TypeError, "ohkm_topk must be an int"),
        ErrorInput(S(x, t, reduction="avg"), ValueError, "reduction must be"),
    ]


def _bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    return SampleInput((_maps((1, 1, numel, 1), device, dtype, gen), _maps((1, 1, numel, 1), device, dtype, gen)),
                       dict(reduction="mean"), f"1x1x{numel}", grad_keys=_GRAD_KW)


def _raw_calls(sample):
    x, t = sample.args
    s = torch.ops.lossext.joints_mse_sums(x, t)
    g = torch.randn(s.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(s.device, s.dtype)
    g[..., ::3] = 0  # rows a backward writes as zeros without reading
    return [("joints_mse_sums", (x, t)), ("joints_mse_sums_backward", (g, x, t)),
            ("joints_mse_loss_with_grad", (x, t, g))]  # coef with zero rows


def _module(sample):
    kw = dict(sample.kwargs)
    tw = kw.pop("target_weight", None)
    return LN.JointsMSELoss(use_target_weight=tw is not None, **kw), sample.args + ((tw,) if tw is not None else ()), {}


def _modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    x, t = _maps((3, 5, 6, 4), device, dtype, gen), _maps((3, 5, 6, 4), device, dtype, gen)
    w = _visibility(3, 5, device, dtype, gen, trailing=True)
    return [(LN.JointsMSELoss(), (x, t, w), {}), (LN.JointsMSELoss(use_target_weight=False, ohkm_topk=3), (x, t), {}),
            (LN.JointsMSELoss(ohkm_topk=8, reduction="sum"), (x, t, w), {})]


def _jit(sample):
    x, t = sample.args
    # the bench sample: 'mean', no weight, no OHKM: the mean of 0.5 S / P (as joints_mse_loss)
    pixels = math.prod(x.shape[2:])
    src = ("def f(x: Tensor, t: Tensor) -> Tensor:\n"
           f"    return (torch.ops.lossext.joints_mse_sums(x, t) * {0.5 / pixels!r}).mean()\n")
    return src, (x, t)


def _raw_errors(device):
    x = torch.rand(2, 3, 4, 4, device=device)
    t = torch.rand(2, 3, 4, 4, device=device)
    g = torch.ones(2, 3, device=device)
    return [
        ("joints_mse_sums", (x[0, 0, 0], t[0, 0, 0]), r"'output' must be \[B, K, \.\.\.\] heatmaps"),
        ("joints_mse_sums", (x.long(), t.long()), "'output' must be float16"),
        ("joints_mse_sums", (x, t[:, :2]), "'target' has shape"),
        ("joints_mse_sums", (x, t.double()), "'target' has dtype"),
        ("joints_mse_sums_backward", (g[:1], x, t), r"'grad' must have shape \[2, 3\]"),
        ("joints_mse_sums_backward", (g.double(), x, t), "'grad' must have dtype Float"),
        ("joints_mse_sums_backward", (g, x, t[:1]), "'target' has shape"),
        ("joints_mse_loss_with_grad", (x, t, g[:1]), r"'coef' must have shape \[2, 3\]"),
        ("joints_mse_loss_with_grad", (x, t, g.double()), "'coef' must have dtype Float"),
    ]


_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6), torch.float16: (1e-2, 1e-3),
        torch.bfloat16: (5e-2, 1e-2)}


# fuzz ------------------------------------------------------------------------------------------

def _fuzz(draw, device):
    """joints_mse_loss: heatmaps with extremes, NaN, inf in drawn layouts; weights [B, K] or
    [B, K, 1], 0/1, soft or None; OHKM k in 1..K + 2 or None; at most one bad argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "joints_mse_loss"
    bad = F.fault(draw, ["output", "target", "target_weight", "ohkm_topk", "reduction"])
    dt = F.dtype(draw)
    large = F.rare(draw, F.LARGE_ONE_IN)
    b = F.size(draw, sizes=(0, 1, 2, 3, 1, 2))
    k = F.size(draw, sizes=(1, 2, 3, 5, 17, 1, 4))
    sp = F.shape(draw, 0, 3, large=large)
    shp = (b, k, *sp)
    big = {torch.float16: 100.0, torch.bfloat16: 1e15, torch.float32: 1e15, torch.float64: 1e150}[dt]
    x = F.tensor(draw, shp, dt, device, -0.5, 1.5, F.extremes(dt, big))
    t = F.tensor(draw, shp, F.other_dtype(draw, dt), device, -0.5, 1.5, F.extremes(dt, big))
    wk = draw(st.sampled_from([None, "01", "soft", "01x1"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    w = None if wk is None else _visibility(b, k, device, dt, gen, wk == "soft", wk == "01x1")
    topk = draw(st.sampled_from([None, None, 1, 2, 8, k, k + 2]))
    vals = {"target_weight": w, "ohkm_topk": topk, "reduction": F.reduction(draw)}
    error = None
    if bad == "reduction":
        vals["reduction"], error = F.reduction(draw, fn, bad=True)
    elif bad == "ohkm_topk":
        how = draw(st.sampled_from(["value", "type"]))
        if how == "value":
            vals["ohkm_topk"] = draw(st.sampled_from([0, -1, -8]))
            error = ValueError, rf"^{fn}: ohkm_topk must be None or >= 1, got {vals['ohkm_topk']}$"
        else:
            vals["ohkm_topk"], error = F.integer(draw, fn, "ohkm_topk", bad=True, optional=True)
    elif bad == "target_weight":
        how = draw(st.sampled_from(["type", "shape", "device"]))
        if how == "type":
            vals["target_weight"], error = F.not_a_tensor(draw, fn, "target_weight", optional=True)
        elif how == "shape":
            ws = draw(st.sampled_from([(b, k + 1), (b + 1, k), (b, k, 2), (b * k,), (b, k, 1, 1)]))
            vals["target_weight"] = torch.ones(ws, device=device, dtype=dt)
            error = ValueError, rf"^{fn}: target_weight must have shape \[{b}, {k}\] or \[{b}, {k}, 1\]"
        else:
            vals["target_weight"], error = F.on_meta(fn, "target_weight", x, "output", shp=(b, k), dt=dt)
    elif bad == "output":
        how = draw(st.sampled_from(["type", "dtype", "dims"]))
        if how == "type":
            x, error = F.not_a_tensor(draw, fn, "output")
        elif how == "dtype":
            x, error = F.not_float(draw, fn, "output", shp, device)
        else:
            x = torch.zeros(draw(st.sampled_from([(), (3,)])), dtype=dt, device=device)
            t = torch.zeros(x.shape, dtype=dt, device=device)
            error = ValueError, rf"^{fn}: output must be \[B, K, \.\.\.\] heatmaps, got shape"
    elif bad == "target":
        t, error = F.bad_pair_target(draw, fn, x, "output", kinds=("type", "shape", "device"))
    params, positional = F.signature_params(LF.joints_mse_loss, R.joints_mse_loss, (x, t), vals)
    args, kwargs = F.arguments(draw, (x, t), params, positional)
    case = F.FuzzCase(SampleInput(args, kwargs, f"{vals['reduction']}-{shp}", grad_keys=_GRAD_KW), error,
                      dtype=torch.promote_types(dt, t.dtype) if error is None else dt)
    if error is None:
        rtol, atol = _TOL[case.dtype]
        eps = torch.finfo(torch.float64 if case.dtype == torch.float64 else torch.float32).eps
        pixels = math.prod(sp)
        case.grad_terms = max(pixels, 1)
        case.tol = (rtol + 8 * eps * max(pixels, 1), atol)
    return case


# mask_rcnn_loss --------------------------------------------------------------------------------

_MASK_GRAD_KW = ()


def _mask_case(r, c, sp, device, dtype, gen, soft=True, lo=-4.0, hi=4.0):
    x = make_tensor((r, c, *sp), device, dtype, lo, hi, gen)
    lab = torch.randint(0, c, (r,), generator=gen).to(device)
    t = torch.rand((r, *sp), generator=gen, dtype=torch.float64)
    t = t if soft else (t > 0.5).to(torch.float64)
    return x, lab, t.to(device, dtype)


# (R, C, spatial, soft targets)
_MASK_CASES = [(1, 1, (1, 1), True), (3, 2, (5, 5), False), (7, 81, (4, 4), True), (4, 5, (28, 28), True),
               (2, 3, (6,), False), (5, 4, (3, 2, 2), True)]


def _mask_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    cases = _MASK_CASES + ([] if small else [(64, 81, (14, 14), True)])
    for red in ("mean", "sum", "none"):
        for r, c, sp, soft in cases:
            x, lab, t = _mask_case(r, c, sp, device, dtype, gen, soft)
            yield SampleInput((x, lab, t), dict(reduction=red), f"{red}-{r}x{c}x{sp}-soft{soft}",
                              grad_keys=_MASK_GRAD_KW)
        x, lab, t = _mask_case(6, 4, (5, 7), device, dtype, gen)
        yield SampleInput((x.transpose(2, 3), lab.int(), t.transpose(1, 2)), dict(reduction=red),
                          f"{red}-transposed-int32-labels", grad_keys=_MASK_GRAD_KW)
        x, lab, t = _mask_case(3, 8, (4, 4), device, dtype, gen)
        yield SampleInput((x[:, ::2], lab // 2, t), dict(reduction=red), f"{red}-strided", grad_keys=_MASK_GRAD_KW)
        x, lab, t = _mask_case(0, 81, (28, 28), device, dtype, gen)
        yield SampleInput((x, lab, t), dict(reduction=red), f"{red}-no-rois", grad_keys=_MASK_GRAD_KW)


def _mask_edges(device, dtype):
    # logits +-100 with hard and soft targets (finite values and gradients), 0, every RoI on one
    # class, masks all ones and all zeros
    gen = torch.Generator().manual_seed(5)
    for red in ("none", "mean", "sum"):
        x = torch.tensor([[[[100.0, -100.0], [0.0, 30.0]]], [[[-100.0, 100.0], [-30.0, 0.0]]]], device=device,
                         dtype=dtype)
        lab = torch.zeros(2, dtype=torch.long, device=device)
        for t in (torch.ones(2, 2, 2), torch.zeros(2, 2, 2), torch.full((2, 2, 2), 0.3)):
            yield SampleInput((x, lab, t.to(device, dtype)), dict(reduction=red), f"{red}-extreme",
                              grad_keys=_MASK_GRAD_KW)
        x, lab, t = _mask_case(5, 3, (4, 4), device, dtype, gen)
        yield SampleInput((x, torch.full_like(lab, 2), t), dict(reduction=red), f"{red}-one-class",
                          grad_keys=_MASK_GRAD_KW)


def _mask_errors(device):
    x, lab, t = _mask_case(3, 4, (5, 5), device, torch.float32, torch.Generator().manual_seed(1))
    S = lambda *a, **k: SampleInput(a, k, grad_keys=_MASK_GRAD_KW)  # noqa: E731
    E = [
        ErrorInput(S(x[0, 0], lab, t), ValueError, r"mask_targets must have shape|mask_logits must be"),
        ErrorInput(S(x.long(), lab, t), TypeError, "mask_logits must be float"),
        ErrorInput(S(x[:, :0], lab, t[:, :, :]), ValueError, "mask_logits has no class channels"),
        ErrorInput(S(x, lab, t[:2]), ValueError, r"mask_targets must have shape \[3, 5, 5\]"),
        ErrorInput(S(x, lab, t[..., :4]), ValueError, "mask_targets must have shape"),
        ErrorInput(S(x, lab.float(), t), TypeError, "labels must be an integer tensor"),
        ErrorInput(S(x, lab[:2], t), ValueError, r"labels must have shape \[3\]"),
        ErrorInput(S(x, lab.to("meta"), t), ValueError, "labels is on meta"),
        ErrorInput(S(x, [0, 1, 2], t), TypeError, "labels must be a Tensor"),
        ErrorInput(S(x, lab, t, reduction="avg"), ValueError, "reduction must be"),
    ]
    if device == "cpu":  # CUDA never indexes with a bad label: that RoI's values are NaN
        E.append(ErrorInput(S(x, torch.tensor([0, 4, 1]), t), IndexError, r"labels has value 4 at index 1, outside"))
        E.append(ErrorInput(S(x, torch.tensor([0, 1, -1]), t), IndexError, r"labels has value -1 at index 2"))
    return E


def _mask_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    r = max(1, numel // (4 * 28 * 28))
    x, lab, t = _mask_case(r, 4, (28, 28), device, dtype, gen)
    return SampleInput((x, lab, t), dict(reduction="mean"), f"{r}x4x28x28", grad_keys=_MASK_GRAD_KW)


def _mask_raw_calls(sample):
    x, lab, t = sample.args
    lab = lab.long()
    calls = []
    for per_pixel in (False, True):
        out = torch.ops.lossext.mask_bce(x, lab, t, per_pixel)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(out)
        calls += [("mask_bce", (x, lab, t, per_pixel)), ("mask_bce_backward", (g, x, lab, t, per_pixel))]
    return calls


def _mask_module(sample):
    return LN.MaskRCNNLoss(**sample.kwargs), sample.args, {}


def _mask_modules(device, dtype):
    x, lab, t = _mask_case(6, 5, (7, 7), device, dtype, torch.Generator().manual_seed(0))
    return [(LN.MaskRCNNLoss(), (x, lab, t), {}), (LN.MaskRCNNLoss(reduction="sum"), (x, lab, t), {})]


def _mask_jit(sample):
    x, lab, t = sample.args  # the bench sample: 'mean'
    src = ("def f(x: Tensor, l: Tensor, t: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.mask_bce(x, l, t, False).sum() / {t.numel()}\n")
    return src, (x, lab.long(), t)


def _mask_raw_errors(device):
    x, lab, t = _mask_case(3, 4, (5, 5), device, torch.float32, torch.Generator().manual_seed(1))
    g = torch.ones(3, device=device)
    rows = [
        ("mask_bce", (x[:, :0], lab, t, False), "'mask_logits' must be \\[R, C, \\.\\.\\.\\] with C >= 1"),
        ("mask_bce", (x, lab.int(), t, False), "'labels' must be int64"),
        ("mask_bce", (x, lab[:2], t, False), "'labels' must have shape \\[3\\]"),
        ("mask_bce", (x, lab, t.double(), False), "'mask_targets' has dtype"),
        ("mask_bce", (x, lab, t[:, :4], False), "'mask_targets' has shape"),
        ("mask_bce_backward", (g[:2], x, lab, t, False), "'grad' must have shape \\[3\\]"),
        ("mask_bce_backward", (g.double(), x, lab, t, False), "'grad' must have dtype Float"),
        ("mask_bce_backward", (g, x, lab, t, True), "'grad' must have shape \\[3, 5, 5\\]"),
    ]
    if device == "cpu":
        rows.append(("mask_bce", (x, torch.tensor([0, 4, 1]), t, False), "'labels' has value 4 at index 1"))
    return rows


_MASK_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6), torch.float16: (1e-2, 1e-3),
             torch.bfloat16: (5e-2, 1e-2)}


def _mask_bad_labels_ref(bad):
    """CUDA never indexes with a bad label: those RoIs' values are NaN (a reduced loss too)."""
    def fn(mask_logits, labels, mask_targets, *args, **kwargs):
        b = bad.to(labels.device)
        out = R.mask_rcnn_loss(mask_logits, torch.where(b, torch.zeros_like(labels), labels), mask_targets, *args,
                               **kwargs)
        if out.dim():
            return out.masked_fill(b.reshape(-1, *([1] * (out.dim() - 1))), math.nan)
        return out + math.nan
    return fn


def _mask_fuzz(draw, device):
    """mask_rcnn_loss: logits with extremes, NaN, inf in drawn layouts; soft or hard targets;
    labels of any integer dtype, bad ones sometimes; at most one bad argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "mask_rcnn_loss"
    bad = F.fault(draw, ["mask_logits", "labels", "label_values", "mask_targets", "reduction"])
    dt = F.dtype(draw)
    large = F.rare(draw, F.LARGE_ONE_IN)
    r = F.size(draw, sizes=(0, 1, 2, 3, 5, 7, 1, 4))
    c = F.size(draw, sizes=(1, 2, 3, 5, 81, 1, 4))
    sp = F.shape(draw, 0, 3, large=large)
    big = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}[dt]
    x = F.tensor(draw, (r, c, *sp), dt, device, -6.0, 6.0, F.extremes(dt, big))
    soft = draw(st.booleans())
    tv = F.values(draw, max(r * math.prod(sp), 0), 0.0, 1.0)
    t = (tv if soft else (tv > 0.5).double()).reshape(r, *sp).to(device, F.other_dtype(draw, dt))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    lab = torch.randint(0, c, (r,), generator=gen)
    first = None
    if bad == "label_values" and r:
        i = draw(st.integers(0, r - 1))
        lab[i] = draw(st.sampled_from([c, c + 1, -1, -c - 1, 2 ** 62, -(2 ** 63)]))
        first = (i, int(lab[i]))
    lab = lab.to(device=device, dtype=draw(st.sampled_from([torch.int64, torch.int64, torch.int32]))
                 if first is None or abs(first[1]) < 2 ** 31 else torch.int64)
    reduction = F.reduction(draw)
    error = None
    if bad == "reduction":
        reduction, error = F.reduction(draw, fn, bad=True)
    elif bad == "label_values" and first is not None and device == "cpu":
        error = IndexError, rf"^{fn}: labels has value {first[1]} at index {first[0]}, outside \[0, {c}\)"
    elif bad == "labels":
        how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
        if how == "type":
            lab, error = F.not_a_tensor(draw, fn, "labels")
        elif how == "dtype":
            lab = lab.to(draw(st.sampled_from([torch.float32, torch.bool])))
            error = TypeError, rf"^{fn}: labels must be an integer tensor, got {lab.dtype}$"
        elif how == "shape":
            lab = torch.zeros(F.other_shape(draw, (r,)), dtype=torch.long, device=device)
            error = ValueError, rf"^{fn}: labels must have shape \[{r}\], got"
        else:
            lab, error = F.on_meta(fn, "labels", x, "mask_logits", shp=(r,), dt=torch.long)
    elif bad == "mask_targets":
        how = draw(st.sampled_from(["type", "shape", "device"]))
        if how == "type":
            t, error = F.not_a_tensor(draw, fn, "mask_targets")
        elif how == "shape":
            o = F.other_shape(draw, (r, *sp))
            t = torch.zeros(o, dtype=dt, device=device)
            error = ValueError, rf"^{fn}: mask_targets must have shape"
        else:
            t, error = F.on_meta(fn, "mask_targets", x, "mask_logits", shp=(r, *sp), dt=t.dtype)
    elif bad == "mask_logits":
        how = draw(st.sampled_from(["type", "dtype", "dims"]))
        if how == "type":
            x, error = F.not_a_tensor(draw, fn, "mask_logits")
        elif how == "dtype":
            x, error = F.not_float(draw, fn, "mask_logits", (r, c, *sp), device)
        else:
            x = torch.zeros(draw(st.sampled_from([(), (3,)])), dtype=dt, device=device)
            error = ValueError, rf"^{fn}: mask_logits must be \[R, C, \.\.\.\], got shape"
    vals = {"reduction": reduction}
    params, positional = F.signature_params(LF.mask_rcnn_loss, R.mask_rcnn_loss, (x, lab, t), vals)
    args, kwargs = F.arguments(draw, (x, lab, t), params, positional)
    rdt = torch.promote_types(dt, t.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else dt
    case = F.FuzzCase(SampleInput(args, kwargs, f"{reduction}-{(r, c, *sp)}", grad_keys=_MASK_GRAD_KW), error,
                      dtype=rdt)
    if error is None:
        rtol, atol = _MASK_TOL[rdt]
        eps = torch.finfo(torch.float64 if rdt == torch.float64 else torch.float32).eps
        mag = float(x.detach().double().cpu().nan_to_num(0, 0, 0).abs().max()) if x.numel() else 0.0
        n = max(math.prod(sp), 1) * (max(r, 1) if reduction == "sum" else 1)
        case.tol = (rtol + 8 * eps * n, atol + 4 * eps * mag * n)
        case.grad_terms = 1
        if x.numel() and bool(x.detach().isinf().any()):
            # dL/dt = -x is infinite there, where the reference's limit rule masks the term
            case.grads = (0,)
        if first is not None:  # bad labels on CUDA
            case.ref = _mask_bad_labels_ref(((lab < 0) | (lab >= c)).to(device))
            case.grads = False
    return case


OP_ROWS = [
    OpInfo(
        name="joints_mse_loss",
        op=LF.joints_mse_loss, ref=R.joints_mse_loss_hrnet, module=LN.JointsMSELoss,
        raw_ops=["joints_mse_sums", "joints_mse_sums_backward", "joints_mse_loss_with_grad"],
        hyper=dict(use_target_weight=True, ohkm_topk=8),
        sample_inputs=_samples, edge_inputs=_edges, error_inputs=_errors, bench_input=_bench,
        raw_calls=_raw_calls, module_call=_module, jit_source=_jit, raw_error_inputs=_raw_errors, tol=_TOL,
        module_samples=_modules, fuzz=_fuzz, bench_ref=R.joints_mse_loss, bench_generic=False,
        module_bad_hyper=("ohkm_topk", 0),
        # forward reads both heatmaps; backward reads them and writes the gradient
        bench_bytes={"forward": 2, "backward": 3, "full": 3},
    ),
    OpInfo(
        name="mask_rcnn_loss",
        op=LF.mask_rcnn_loss, ref=R.mask_rcnn_loss, module=LN.MaskRCNNLoss,
        raw_ops=["mask_bce", "mask_bce_backward"],
        hyper={},
        sample_inputs=_mask_samples, edge_inputs=_mask_edges, error_inputs=_mask_errors, bench_input=_mask_bench,
        raw_calls=_mask_raw_calls, module_call=_mask_module, jit_source=_mask_jit, raw_error_inputs=_mask_raw_errors,
        tol=_MASK_TOL, module_samples=_mask_modules, fuzz=_mask_fuzz, bench_ref=R.mask_rcnn_loss, bench_generic=False,
        empty_mean=0.0,  # torchvision: mask_logits.sum() * 0
        # forward reads the labelled channel and the targets; backward writes every channel
        bench_bytes={"forward": 2, "backward": 3, "full": 3},
    ),
]

from .opinfo_dice import ROWS as _DICE_ROWS  # noqa: E402
from .opinfo_synthesis import ROWS as _SYNTHESIS_ROWS  # noqa: E402

OP_ROWS += _DICE_ROWS + _SYNTHESIS_ROWS
