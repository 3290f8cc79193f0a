"""OpInfo rows of the detection ops: sigmoid_focal_loss (element-wise pattern's helpers),
softmax_focal_loss, box_iou_loss."""
import math
import re

import torch

from ..testing import pointwise as P
from ..testing.opinfo import REDUCTION, ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import reference as R

# ---- sigmoid focal loss (element-wise) --------------------------------------------------------

_SFL = dict(alpha=0.25, gamma=2.0)
_SFL_BIG = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}


def _sfl_edges(device, dtype):
    # saturated and zero logits against binary and soft targets, both signs
    x = torch.tensor([-60.0, -30.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 30.0, 60.0] * 3, dtype=torch.float64)
    y = torch.tensor([0.0] * 9 + [1.0] * 9 + [0.5] * 9, dtype=torch.float64)
    for red in ("none", "mean", "sum"):
        for alpha, gamma in ((0.25, 2.0), (-1.0, 2.0), (0.5, 0.5), (1.0, 0.0), (0.0, 1.0)):
            yield SampleInput((x.to(device, dtype), y.to(device, dtype)), dict(alpha=alpha, gamma=gamma, reduction=red),
                              f"{red}-edges-a{alpha}-g{gamma}")


class _AlphaRule:
    """sigmoid_focal_loss's alpha: in [0, 1] or exactly -1 (no weighting), as torchvision's."""
    name = "alpha"

    def valid(self, draw, values=None):
        from ..testing import fuzz as F
        return F.number_as(draw, draw(F.st.sampled_from([0.25, -1.0, 0.0, 1.0, 0.5, 0.75])))

    def invalid(self, draw, fn, values=None):
        from ..testing import fuzz as F
        kind = draw(F.st.sampled_from(["type", "value"]))
        if kind == "type":
            v = draw(F.st.sampled_from(["0.25", None, 1j, True, [1.0]]))
            return v, (TypeError, rf"^{re.escape(fn)}: alpha must be a real number, got {type(v).__name__}\b")
        v = draw(F.st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 1.5, -1e-9, 1.0 + 1e-9, -2.0]))
        return v, (ValueError, rf"^{re.escape(fn)}: alpha must be in \[0, 1\] or -1 \(no weighting\), got "
                               rf"{re.escape(str(v))}$")


def _sfl_rules():
    from ..testing.fuzz import Real
    return [_AlphaRule(), Real("gamma", "range", 0.0, math.inf, common=(2.0, 0.0, 1.0, 0.5), hi_open=True, draw_hi=5.0)]


_SFL_NAMES = ("inputs", "targets")

# ---- box IoU losses ------------------------------------------------------------------------------

_MODES = ("iou", "giou", "diou", "ciou")
_MODE = {m: i for i, m in enumerate(_MODES)}


def _boxes(shape, device, dtype, gen, near=None, spread=10.0):
    """Valid boxes [*shape, 4] (x1 < x2, y1 < y2), or boxes jittered around `near` (overlapping
    ones, so that every IoU term is exercised)."""
    if near is not None:
        base = near.detach().to("cpu", torch.float64)
        j = (torch.rand(base.shape, generator=gen, dtype=torch.float64) - 0.5) * 0.6 * spread / 5
        b = base + j
        lo, hi = torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])
        b = torch.cat([lo, hi + 0.05], -1)
    else:
        xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * spread
        wh = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * spread / 2 + 0.05
        b = torch.cat([xy, xy + wh], -1)
    return b.to(device=device, dtype=dtype)


def _box_pair(shape, device, dtype, gen):
    b1 = _boxes(shape, device, dtype, gen)
    near = torch.rand(shape, generator=gen) < 0.6
    b2 = torch.where(near.to(device).unsqueeze(-1), _boxes(shape, device, dtype, gen, near=b1),
                     _boxes(shape, device, dtype, gen))
    return b1, b2


def _box_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    shapes = [(1,), (7,), (3, 5), (2, 3, 4)] + ([] if small else [(1023,), (64, 17)])
    for red in ("mean", "sum", "none"):
        for mode in _MODES:
            for shape in shapes:
                b1, b2 = _box_pair(shape, device, dtype, gen)
                yield SampleInput((b1, b2), dict(mode=mode, reduction=red), f"{red}-{mode}-{shape}")
            b1, b2 = _box_pair((), device, dtype, gen)  # one box: [4]
            yield SampleInput((b1, b2), dict(mode=mode, reduction=red), f"{red}-{mode}-single")
        # eps, non-contiguous (transposed storage, a strided slice), broadcast against one box
        b1, b2 = _box_pair((9,), device, dtype, gen)
        yield SampleInput((b1, b2), dict(mode="ciou", eps=1e-3, reduction=red), f"{red}-eps")
        yield SampleInput((b1.t().contiguous().t(), b2[::1]), dict(mode="giou", reduction=red), f"{red}-transposed")
        b1, b2 = _box_pair((12,), device, dtype, gen)
        yield SampleInput((b1[::3], b2[1::3]), dict(mode="diou", reduction=red), f"{red}-strided")
        b1, b2 = _box_pair((6,), device, dtype, gen)
        yield SampleInput((b1, b2[0]), dict(mode="ciou", reduction=red), f"{red}-broadcast")
        yield SampleInput((_boxes((0,), device, dtype, gen), _boxes((0,), device, dtype, gen)),
                          dict(mode="giou", reduction=red), f"{red}-empty")


def _degenerate(device, dtype):
    """Pairs of degenerate boxes: zero width, zero height, points, identical points, an
    inverted box (x2 < x1), identical boxes, touching, contained, shared edges (min/max ties)."""
    rows = [
        ([0, 0, 0, 2], [0, 0, 1, 2]),      # zero width vs a box with a shared edge
        ([0, 0, 2, 0], [0, 0, 2, 1]),      # zero height
        ([1, 1, 1, 1], [0, 0, 2, 2]),      # a point inside a box
        ([1, 1, 1, 1], [1, 1, 1, 1]),      # a point with itself
        ([0, 0, 0, 0], [3, 4, 3, 4]),      # two points apart
        ([3, 0, 1, 2], [0, 0, 2, 2]),      # inverted width
        ([0, 3, 2, 1], [0, 0, 2, 2]),      # inverted height
        ([2, 2, 0, 0], [2, 2, 0, 0]),      # an inverted box with itself
        ([0, 0, 2, 2], [0, 0, 2, 2]),      # identical
        ([0, 0, 2, 2], [2, 0, 4, 2]),      # touching
        ([0, 0, 4, 4], [1, 1, 2, 2]),      # contained
        ([0, 0, 2, 3], [0, 1, 2, 5]),      # shared x edges
        ([0, 0, 0, 0], [0, 0, 0, 0]),      # the origin with itself
        ([0, 0, 1e-6, 1e-6], [0, 0, 1e-6, 2e-6]),  # tiny
    ]
    b1 = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    b2 = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    return b1.to(device, dtype), b2.to(device, dtype)


def _box_edges(device, dtype):
    b1, b2 = _degenerate(device, dtype)
    for red in ("none", "mean", "sum"):
        for mode in _MODES:
            yield SampleInput((b1, b2), dict(mode=mode, reduction=red), f"{red}-{mode}-degenerate")
            yield SampleInput((b2, b1), dict(mode=mode, reduction=red), f"{red}-{mode}-degenerate-swapped")


def _box_errors(device):
    b = torch.rand(5, 4, device=device)
    S = lambda *a, **k: SampleInput(a, k)  # noqa: E731
    return [
        ErrorInput(S(b[:, :3], b), ValueError, r"box_iou_loss: boxes1 must have shape \[\.\.\., 4\] \(x1, y1, x2, y2\), got \[5, 3\]"),
        ErrorInput(S(b, b[:, :2]), ValueError, r"boxes2 must have shape \[\.\.\., 4\]"),
        ErrorInput(S(b, torch.rand((), device=device)), ValueError, r"boxes2 must have shape"),
        ErrorInput(S(b > 0, b), TypeError, "boxes1 must be real boxes, got torch.bool"),
        ErrorInput(S(b, b[:3].unsqueeze(0).expand(2, 3, 4)), ValueError, "do not broadcast"),
        ErrorInput(S(b, b.to("meta")), ValueError, "boxes2 is on meta"),
        ErrorInput(S(b, "b"), TypeError, "boxes2 must be a Tensor"),
        ErrorInput(S(b, b, mode="eiou"), ValueError, "mode must be 'iou', 'giou', 'diou' or 'ciou', got 'eiou'"),
        ErrorInput(S(b, b, mode=1), TypeError, "mode must be a str"),
        ErrorInput(S(b, b, eps=0.0), ValueError, "eps must be > 0"),
        ErrorInput(S(b, b, eps=math.nan), ValueError, "eps must be finite"),
        ErrorInput(S(b, b, reduction="avg"), ValueError, "reduction must be"),
    ]


def _box_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    b1, b2 = _box_pair((numel,), device, dtype, gen)
    return SampleInput((b1, b2), dict(mode="giou", reduction="mean"), f"{numel} boxes")


def _box_params(kw):
    return _MODE[kw.get("mode", "giou")], float(kw.get("eps", 1e-7)), REDUCTION[kw.get("reduction", "none")]


def _box_raw_calls(sample):
    b1, b2 = torch.broadcast_tensors(*sample.args)
    p = _box_params(sample.kwargs)
    loss = torch.ops.lossext.box_iou_loss(b1, b2, *p)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(b1.device, b1.dtype)
    return [("box_iou_loss", (b1, b2, *p)), ("box_iou_loss_backward", (go, b1, b2, *p))]


def _box_module(sample):
    return LN.BoxIoULoss(**sample.kwargs), sample.args, {}


def _box_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    b1, b2 = _box_pair((6,), device, dtype, gen)
    return [(LN.BoxIoULoss(), (b1, b2), {}), (LN.BoxIoULoss("ciou"), (b1, b2), {}),
            (LN.BoxIoULoss("diou", eps=1e-6, reduction="sum"), (b1, b2), {}), (LN.BoxIoULoss("iou"), (b1, b2), {})]


def _box_jit(sample):
    p = ", ".join(repr(v) for v in _box_params(sample.kwargs))
    src = ("def f(a: Tensor, b: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.box_iou_loss(a, b, {p})\n")
    return src, sample.args


def _box_raw_errors(device):
    b = torch.rand(5, 4, device=device)
    n = "box_iou_loss"
    g = torch.ones((), device=device)
    return [
        (n, (b[:, :3], b, 1, 1e-7, 0), r"'boxes1' must have shape \[\.\.\., 4\]"),
        (n, (b.long(), b, 1, 1e-7, 0), "'boxes1' must be float16"),
        (n, (b, b.double(), 1, 1e-7, 0), "'boxes2' has dtype"),
        (n, (b, b[:3], 1, 1e-7, 0), "'boxes2' has shape"),
        (n, (b, b, 4, 1e-7, 0), "'mode' must be 0"),
        (n, (b, b, 1, 0.0, 0), "'eps' must be positive"),
        (n, (b, b, 1, 1e-7, 5), "'reduction' must be"),
        (f"{n}_backward", (torch.ones(5, device=device), b, b, 1, 1e-7, 1), "'grad_output' must be 0-dim"),
        (f"{n}_backward", (torch.ones(4, device=device), b, b, 1, 1e-7, 0), "'grad_output' has shape"),
        (f"{n}_backward", (g.double(), b, b, 1, 1e-7, 1), "'grad_output' has dtype"),
    ]


def _box_fuzz(draw, device):
    """box_iou_loss: batch shapes (empty, odd, rarely 2^16 + 3 boxes) and layouts, valid boxes,
    degenerate ones and extremes (NaN and inf), each mode, eps, broadcasting; at most one bad
    argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "box_iou_loss"
    bad = F.fault(draw, ["boxes1", "boxes2", "mode", "eps", "reduction"])
    dt = F.dtype(draw)
    shp = F.shape(draw, max_dims=3)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    n = math.prod(shp)
    b1, b2 = _box_pair((n,), "cpu", torch.float64, gen)
    if n and draw(st.booleans()):  # degenerate pairs and extremes at drawn positions
        d1, d2 = _degenerate("cpu", torch.float64)
        for _ in range(draw(st.integers(1, min(4, n)))):
            i, k = draw(st.integers(0, n - 1)), draw(st.integers(0, d1.shape[0] - 1))
            b1[i], b2[i] = d1[k], d2[k]
        if draw(st.booleans()):
            b1[draw(st.integers(0, n - 1)), draw(st.integers(0, 3))] = draw(st.sampled_from([math.nan, math.inf, 1e4]))
    b1 = b1.reshape(*shp, 4).to(device, dt)
    b2 = b2.reshape(*shp, 4).to(device, F.other_dtype(draw, dt))
    if shp and draw(st.booleans()):  # a non-contiguous copy
        b1 = b1.transpose(0, -1).contiguous().transpose(0, -1) if draw(st.booleans()) else b1
    if n and shp and F.rare(draw, 4):  # broadcast: one box against the batch
        b2 = b2.reshape(-1, 4)[0]
    rdt = torch.promote_types(b1.dtype, b2.dtype)
    mode = draw(st.sampled_from(_MODES))
    eps = F.number_as(draw, draw(st.sampled_from([1e-7, 1e-7, 1e-9, 1e-3])))
    red = F.reduction(draw)
    error = None
    if bad == "mode":
        mode = draw(st.sampled_from(["IoU", "eiou", "", 1, None]))
        error = ((TypeError, rf"^{fn}: mode must be a str") if not isinstance(mode, str) else
                 (ValueError, rf"^{fn}: mode must be 'iou', 'giou', 'diou' or 'ciou', got '{mode}'$"))
    elif bad == "eps":
        eps = draw(st.sampled_from([0.0, -1e-7, math.nan, math.inf, "1e-7"]))
        if isinstance(eps, str):
            error = TypeError, rf"^{fn}: eps must be a real number"
        elif math.isfinite(eps):
            error = ValueError, rf"^{fn}: eps must be > 0, got {re.escape(str(eps))}$"
        else:
            error = ValueError, rf"^{fn}: eps must be finite, got {eps}$"
    elif bad == "reduction":
        red, error = F.reduction(draw, fn, bad=True)
    elif bad in ("boxes1", "boxes2"):
        how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
        t = b1 if bad == "boxes1" else b2
        if how == "type":
            t, error = F.not_a_tensor(draw, fn, bad)
        elif how == "dtype":
            t = torch.zeros(t.shape, dtype=draw(st.sampled_from([torch.bool, torch.complex64])), device=device)
            error = TypeError, rf"^{fn}: {bad} must be real boxes, got {t.dtype}$"
        elif how == "shape":
            last = draw(st.sampled_from([1, 2, 3, 5, 8]))
            t = torch.zeros(tuple(shp) + (last,), dtype=dt, device=device)
            error = ValueError, rf"^{fn}: {bad} must have shape \[\.\.\., 4\] \(x1, y1, x2, y2\), got {F.shape_text(t.shape)}$"
        else:
            if bad == "boxes1":
                t = torch.empty(b1.shape, dtype=dt, device="meta")
                error = ValueError, rf"^{fn}: boxes2 is on {re.escape(str(b2.device))} but boxes1 is on meta$"
            else:
                t, error = F.on_meta(fn, "boxes2", b1, "boxes1", shp=b2.shape)
        if bad == "boxes1":
            b1 = t
        else:
            b2 = t
    params = [("mode", mode, "giou"), ("eps", eps, 1e-7), ("reduction", red, "none")]
    args, kwargs = F.arguments(draw, (b1, b2), params, 3)
    return F.FuzzCase(SampleInput(args, kwargs, f"{red}-{mode}-{tuple(shp)}-{dt}"), error, dtype=rdt)


# ---- softmax focal loss ----------------------------------------------------------------------------

def _focal_target(n, c, gen, device, ignore=0.0, extra=()):
    t = torch.randint(0, c, (n, *extra), generator=gen)
    if ignore and t.numel() > 1:  # some rows ignored, never the first (no all-ignored 'mean')
        drop = torch.rand(t.shape, generator=gen) < ignore
        drop.view(-1)[0] = False
        t = torch.where(drop, torch.full_like(t, -100), t)
    return t.to(device)


# (N, C, kwargs)
_FOCAL_CASES = [(1, 1, {}), (3, 5, {}), (7, 33, dict(gamma=0.0)), (5, 9, dict(gamma=0.5, alpha=0.25)),
                (6, 4, dict(alpha="tensor", weight="tensor")), (8, 12, dict(gamma=3.0, weight="tensor"))]
_FOCAL_LARGE = [(64, 81, dict(alpha=0.25)), (9, 1000, {})]


def _focal_kwargs(kw, c, gen, device, dtype):
    out = {}
    for k, v in kw.items():
        out[k] = make_tensor((c,), device, dtype, 0.1, 1.0, gen) if v == "tensor" else v
    return out


def _focal_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    mk = lambda shape: make_tensor(shape, device, dtype, -4.0, 4.0, gen)  # noqa: E731
    for red in ("mean", "sum", "none"):
        for n, c, kw in _FOCAL_CASES + ([] if small else _FOCAL_LARGE):
            yield SampleInput((mk((n, c)), _focal_target(n, c, gen, device, 0.2)),
                              dict(_focal_kwargs(kw, c, gen, device, dtype), reduction=red), f"{red}-{n}x{c}-{kw}",
                              grad_keys=())
        # dense prediction [N, C, H, W], a transposed and a strided view
        yield SampleInput((mk((2, 5, 3, 4)), _focal_target(2, 5, gen, device, 0.1, (3, 4))), dict(reduction=red),
                          f"{red}-2d", grad_keys=())
        yield SampleInput((mk((6, 8)).t(), _focal_target(8, 6, gen, device)), dict(reduction=red), f"{red}-transposed",
                          grad_keys=())
        yield SampleInput((mk((5, 14))[:, ::2], _focal_target(5, 7, gen, device)), dict(ignore_index=3, reduction=red),
                          f"{red}-strided", grad_keys=())
        yield SampleInput((mk((0, 5)), _focal_target(0, 5, gen, device)), dict(reduction=red), f"{red}-empty",
                          grad_keys=())


def _focal_edges(device, dtype):
    gen = torch.Generator().manual_seed(3)
    for red in ("none", "mean", "sum"):
        # a very peaked row (p_t -> 1 and -> 0), all rows ignored but one, one class
        x = make_tensor((4, 6), device, torch.float64, -1.0, 1.0, gen)
        x[:, 2] += torch.tensor([40.0, -40.0, 15.0, 0.0], device=device)
        t = torch.tensor([2, 2, 2, -100], device=device)
        for g in (0.0, 0.5, 2.0):
            yield SampleInput((x.to(dtype), t), dict(gamma=g, reduction=red), f"{red}-peaked-g{g}", grad_keys=())
        yield SampleInput((make_tensor((3, 1), device, dtype, -1, 1, gen), torch.zeros(3, dtype=torch.long, device=device)),
                          dict(reduction=red), f"{red}-one-class", grad_keys=())


def _focal_errors(device):
    x = torch.rand(4, 5, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=())  # noqa: E731
    E = [
        ErrorInput(S(x[0], t), ValueError, r"logits must be \[N, C, \.\.\.\]"),
        ErrorInput(S(x.long(), t), TypeError, "logits must be float"),
        ErrorInput(S(x[:, :0], t), ValueError, "logits has no classes"),
        ErrorInput(S(x, t.float()), TypeError, "target must be integer class indices"),
        ErrorInput(S(x, t[:3]), ValueError, r"target must have shape \[4\]"),
        ErrorInput(S(x, t.to("meta")), ValueError, "target is on"),
        ErrorInput(S(x, t, gamma=-1.0), ValueError, "gamma must be in"),
        ErrorInput(S(x, t, alpha=-0.5), ValueError, "alpha must be in"),
        ErrorInput(S(x, t, alpha=torch.ones(4, device=device)), ValueError, r"alpha must have shape \[5\]"),
        ErrorInput(S(x, t, weight=torch.ones(5, 1, device=device)), ValueError, r"weight must have shape \[5\]"),
        ErrorInput(S(x, t, weight=torch.ones(5, dtype=torch.long, device=device)), TypeError, "weight must be floating"),
        ErrorInput(S(x, t, ignore_index=1.5), TypeError, "ignore_index must be an int"),
        ErrorInput(S(x, t, reduction="avg"), ValueError, "reduction must be"),
    ]
    if device == "cpu":
        E.append(ErrorInput(S(x, torch.tensor([0, 1, 5, 2])), IndexError,
                            r"^softmax_focal_loss: target has value 5 at index 2, outside \[0, 5\)"))
        E.append(ErrorInput(S(x, torch.tensor([0, -1, 3, 2])), IndexError, "target has value -1 at index 1"))
    return E


def _focal_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    c = min(numel, 81)  # COCO's 80 classes and background
    n = max(1, numel // c)
    x = make_tensor((n, c), device, dtype, -4.0, 4.0, gen)
    return SampleInput((x, _focal_target(n, c, gen, device, 0.05)), dict(reduction="mean"), f"{n}x{c}", grad_keys=())


def _focal_op_args(sample):
    x, t = sample.args
    kw = sample.kwargs
    c = x.shape[1]
    alpha = kw.get("alpha")
    if alpha is not None and not isinstance(alpha, torch.Tensor):
        alpha = torch.full((c,), float(alpha), dtype=x.dtype, device=x.device)
    w = kw.get("weight")
    return (x, t.long(), alpha, w, float(kw.get("gamma", 2.0)), int(kw.get("ignore_index", -100)),
            REDUCTION[kw.get("reduction", "mean")])


def _focal_raw_calls(sample):
    args = _focal_op_args(sample)
    loss = torch.ops.lossext.softmax_focal_loss(*args)
    x = args[0]
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(x.device, x.dtype)
    return [("softmax_focal_loss", args), ("softmax_focal_loss_backward", (go, *args))]


def _focal_module(sample):
    return LN.SoftmaxFocalLoss(**sample.kwargs), sample.args, {}


def _focal_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    x, t = make_tensor((6, 5), device, dtype, -2, 2, gen), _focal_target(6, 5, gen, device, 0.2)
    a = make_tensor((5,), device, dtype, 0.1, 1.0, gen)
    return [(LN.SoftmaxFocalLoss(), (x, t), {}), (LN.SoftmaxFocalLoss(alpha=0.25, gamma=1.0, reduction="sum"), (x, t), {}),
            (LN.SoftmaxFocalLoss(alpha=a, weight=a.flip(0), ignore_index=3), (x, t.masked_fill(t == -100, 3)), {})]


def _focal_jit(sample):
    x, t, alpha, w, *p = _focal_op_args(sample)
    src = ("def f(x: Tensor, t: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.softmax_focal_loss(x, t, None, None, {', '.join(repr(v) for v in p)})\n")
    return src, (x, t)


def _focal_raw_errors(device):
    x = torch.rand(4, 5, device=device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    n = "softmax_focal_loss"
    p = (2.0, -100, 1)
    v = torch.ones(5, device=device)
    rows = [
        (n, (x[0], t, None, None, *p), r"'logits' must be \[N, C, \.\.\.\]"),
        (n, (x[:, :0], t, None, None, *p), "'logits' has no classes"),
        (n, (x, t.int(), None, None, *p), "'target' must be int64"),
        (n, (x, t[:2], None, None, *p), "'target' has shape"),
        (n, (x, t, v[:3], None, *p), r"'alpha' must have shape \[5\]"),
        (n, (x, t, None, v.double(), *p), "'weight' has dtype"),
        (n, (x, t, None, None, -1.0, -100, 1), "'gamma' must be finite and >= 0"),
        (n, (x, t, None, None, 2.0, -100, 4), "'reduction' must be"),
        (f"{n}_backward", (torch.ones(4, device=device), x, t, None, None, *p), "'grad_output' must be 0-dim"),
        (f"{n}_backward", (torch.ones(3, device=device), x, t, None, None, 2.0, -100, 0), "'grad_output' has shape"),
    ]
    if device == "cpu":
        rows.append((n, (x, torch.tensor([0, 1, 5, 2]), None, None, *p), "'target' has value 5 at index 2"))
    return rows


def _nan_bad_rows_ref(bad):
    """CUDA never indexes with a bad label: those rows' loss is NaN, a reduced loss NaN."""
    def fn(logits, target, *args, **kwargs):
        b = bad.to(target.device)
        out = R.softmax_focal_loss(logits, torch.where(b, torch.zeros_like(target), target), *args, **kwargs)
        return out.masked_fill(b, math.nan) if out.dim() else out + math.nan
    return fn


def _focal_fuzz(draw, device):
    """softmax_focal_loss: [N, C] or [N, C, d] logits with extremes, NaN and inf; labels with
    ignore_index and bad ones; gamma, alpha (None, float, tensor), weight; at most one bad
    argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "softmax_focal_loss"
    bad = F.fault(draw, ["logits", "target", "labels", "gamma", "alpha", "weight", "ignore_index", "reduction"])
    dt = F.dtype(draw)
    large = F.rare(draw, F.LARGE_ONE_IN)
    n = F.size(draw, large)
    c = F.size(draw, sizes=(1, 2, 3, 5, 7, 81, 13, 6))
    extra = draw(st.sampled_from([(), (), (), (3,), (2, 1)]))
    big = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}[dt]
    x = F.tensor(draw, (n, c, *extra), dt, device, -6.0, 6.0, F.extremes(dt, big))
    rows = n * math.prod(extra)
    ignore = draw(st.sampled_from([-100, -100, 0, 255]))
    t, first = F.labels(draw, rows, c, "cpu", ignore_index=ignore, bad=bad == "labels")
    t = t.reshape(n, *extra).to(device)
    error, ref = None, None
    if bad == "labels" and first is not None:
        if device == "cpu":
            error = IndexError, (rf"^{fn}: target has value {first[1]} at index {first[0]}, outside \[0, {c}\) "
                                 rf"and not ignore_index \({ignore}\)$")
        else:
            badm = ((t.long() != ignore) & ((t.long() < 0) | (t.long() >= c))).cpu()
            ref = _nan_bad_rows_ref(badm)
    gamma = F.number_as(draw, draw(st.sampled_from([2.0, 0.0, 0.5, 1.0, 3.7])))
    if bad == "gamma":
        gamma, error = F.Real("gamma", "range", 0.0, math.inf, hi_open=True).invalid(draw, fn)
    kind = draw(st.sampled_from(["none", "float", "tensor"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    alpha = None if kind == "none" else (F.number_as(draw, 0.25) if kind == "float" else
                                         make_tensor((c,), device, F.other_dtype(draw, dt), 0.0, 1.0, gen))
    if bad == "alpha":
        how = draw(st.sampled_from(["value", "shape"]))
        if how == "value":
            alpha, error = F.Real("alpha", "range", 0.0, math.inf, hi_open=True).invalid(draw, fn)
            if alpha is None:
                error = None  # None is a legal alpha
        else:
            alpha = torch.ones(c + 1, device=device)
            error = ValueError, rf"^{fn}: alpha must have shape \[{c}\] \(one per class\), got \[{c + 1}\]$"
    weight = make_tensor((c,), device, dt, 0.0, 2.0, gen) if draw(st.booleans()) else None
    if bad == "weight":
        how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
        if how == "type":
            weight, error = F.not_a_tensor(draw, fn, "weight", optional=True)
        elif how == "dtype":
            weight = torch.ones(c, dtype=torch.long, device=device)
            error = TypeError, rf"^{fn}: weight must be floating point, got torch.int64$"
        elif how == "shape":
            weight = torch.ones(c, 2, device=device)
            error = ValueError, rf"^{fn}: weight must have shape \[{c}\] \(one per class\), got \[{c}, 2\]$"
        else:
            weight, error = F.on_meta(fn, "weight", x, "logits", shp=(c,), dt=torch.float32)
    ii = F.integer(draw, fn, "ignore_index", [ignore])
    if bad == "ignore_index":
        ii, error = F.integer(draw, fn, "ignore_index", bad=True)
    red = F.reduction(draw)
    if bad == "reduction":
        red, error = F.reduction(draw, fn, bad=True)
    if bad == "logits":
        if draw(st.booleans()):
            x, error = F.not_a_tensor(draw, fn, "logits")
        else:
            x, error = F.not_float(draw, fn, "logits", (n, c), device)
    if bad == "target":
        how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
        if how == "type":
            t, error = F.not_a_tensor(draw, fn, "target")
        elif how == "dtype":
            t = torch.zeros(t.shape, dtype=draw(st.sampled_from([torch.float32, torch.bool])), device=device)
            error = TypeError, rf"^{fn}: target must be integer class indices, got {t.dtype}$"
        elif how == "shape":
            shp = F.other_shape(draw, tuple(t.shape))
            t = torch.zeros(shp, dtype=torch.long, device=device)
            want = [n] + list(extra)
            error = ValueError, (rf"^{fn}: target must have shape {F.shape_text(want)} \(logits' shape without dim "
                                 rf"1\), got {F.shape_text(shp)}$")
        else:
            t, error = F.on_meta(fn, "target", x, "logits", dt=torch.long, shp=t.shape)
    params = [("gamma", gamma, 2.0), ("alpha", alpha, None), ("weight", weight, None), ("ignore_index", ii, -100),
              ("reduction", red, "mean")]
    args, kwargs = F.arguments(draw, (x, t), params, 5)
    # alpha and weight take no gradient (the logits' alone is compared)
    return F.FuzzCase(SampleInput(args, kwargs, f"{red}-{n}x{c}{extra}-{dt}", grad_keys=()), error, dtype=dt, ref=ref,
                      grads=(0,), grad_terms=c)


OP_ROWS = [
    OpInfo(
        name="sigmoid_focal_loss",
        op=LF.sigmoid_focal_loss, ref=R.sigmoid_focal_loss, module=LN.SigmoidFocalLoss,
        raw_ops=["sigmoid_focal_loss", "sigmoid_focal_loss_with_grad", "sigmoid_focal_loss_backward",
                 "sigmoid_focal_loss_target_backward"],
        hyper=_SFL,
        sample_inputs=P.samples(-6.0, 6.0, 0.0, 1.0, _SFL),
        edge_inputs=_sfl_edges,
        error_inputs=P.errors("sigmoid_focal_loss", _SFL, [
            ("alpha", 1.5, r"alpha must be in \[0, 1\] or -1"), ("alpha", -0.5, r"alpha must be in \[0, 1\] or -1"),
            ("gamma", -1.0, "gamma must be in"), ("gamma", math.inf, "gamma must be in")],
            names=_SFL_NAMES),
        bench_input=P.bench_input(-6.0, 6.0, 0.0, 1.0, _SFL),
        raw_calls=P.raw_calls("sigmoid_focal_loss", ("alpha", "gamma"), True),
        module_call=P.module_call(LN.SigmoidFocalLoss),
        module_samples=P.module_samples(LN.SigmoidFocalLoss, -6.0, 6.0, 0.0, 1.0, dict(_SFL, reduction="mean")),
        jit_source=P.jit_source("sigmoid_focal_loss", ("alpha", "gamma")),
        raw_error_inputs=P.raw_errors("sigmoid_focal_loss", (0.25, 2.0), 1, True),
        fuzz=P.fuzz("sigmoid_focal_loss", -6.0, 6.0, 0.0, 1.0, _SFL, _sfl_rules, _SFL_BIG,
                    lambda dt: [0.0, 1.0, 0.5, float("nan")], names=_SFL_NAMES, reduction_first=True,
                    default_reduction="none"),
        elementwise=True,
        module_bad_hyper=("gamma", -1.0),
        tol=P.TOL,
    ),
    OpInfo(
        name="softmax_focal_loss",
        op=LF.softmax_focal_loss, ref=R.softmax_focal_loss, module=LN.SoftmaxFocalLoss,
        raw_ops=["softmax_focal_loss", "softmax_focal_loss_backward"],
        hyper=dict(gamma=2.0),
        sample_inputs=_focal_samples, edge_inputs=_focal_edges, error_inputs=_focal_errors,
        bench_input=_focal_bench, raw_calls=_focal_raw_calls, module_call=_focal_module,
        module_samples=_focal_modules, jit_source=_focal_jit, raw_error_inputs=_focal_raw_errors,
        fuzz=_focal_fuzz,
        bench_bytes={"forward": 1, "backward": 2, "full": 2},
        tol={torch.float64: (1e-9, 1e-11), torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2),
             torch.bfloat16: (5e-2, 5e-2)},
    ),
    OpInfo(
        name="box_iou_loss",
        op=LF.box_iou_loss, ref=R.box_iou_loss, module=LN.BoxIoULoss,
        raw_ops=["box_iou_loss", "box_iou_loss_backward"],
        hyper=dict(mode="giou", eps=1e-7),
        sample_inputs=_box_samples, edge_inputs=_box_edges, error_inputs=_box_errors,
        bench_input=_box_bench, raw_calls=_box_raw_calls, module_call=_box_module,
        module_samples=_box_modules, jit_source=_box_jit, raw_error_inputs=_box_raw_errors,
        fuzz=_box_fuzz,
        # numel = boxes: 8 coordinates read (forward); 8 read and 8 gradients written (backward, full)
        bench_bytes={"forward": 8, "backward": 16, "full": 16},
        empty_mean=0.0,
        module_bad_hyper=("eps", -1.0),
        # CIoU's alpha is a constant in its gradient (torchvision's): finite differences see it move
        gradcheck_skip=lambda s: s.kwargs.get("mode") == "ciou",
        tol={torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2),
             torch.bfloat16: (5e-2, 5e-2)},
    ),
]


# ---- benchmark baselines: the peers' composites where installed -------------------------------

def _torchvision_ops():
    try:
        import torchvision.ops as tvo
    except ImportError:  # not a dependency: the benchmark then times the float64-style reference
        return None
    return tvo


def _tv_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0, reduction="none", weight=None):
    tvo = _torchvision_ops()
    if tvo is None or weight is not None:
        return R.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction, weight)
    return tvo.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)


def _tv_box(boxes1, boxes2, mode="giou", eps=1e-7, reduction="none"):
    tvo = _torchvision_ops()
    fns = None if tvo is None else {"giou": tvo.generalized_box_iou_loss, "diou": tvo.distance_box_iou_loss,
                                    "ciou": tvo.complete_box_iou_loss}
    if fns is None or mode not in fns:
        return R.box_iou_loss(boxes1, boxes2, mode, eps, reduction)
    return fns[mode](boxes1, boxes2, reduction, eps)


for _row in OP_ROWS:
    _row.bench_ref = {"sigmoid_focal_loss": _tv_sigmoid_focal, "box_iou_loss": _tv_box}.get(_row.name)
