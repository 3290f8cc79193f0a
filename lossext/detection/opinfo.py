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
        bench_generic=False,  # the family's suite (lossext/detection/bench.py), at the 2^20
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
        bench_generic=False,
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
        bench_generic=False,
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


# ---- YOLOv2 region loss --------------------------------------------------------------------------

# yolov2-voc's anchors (cfg/yolo-voc.cfg), in grid cells
_VOC_ANCHORS = [(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071)]


def _anchors(a, device):
    return torch.tensor(_VOC_ANCHORS[:a] if a <= 5 else [(0.5 + k, 1.0 + 0.5 * k) for k in range(a)],
                        dtype=torch.float64, device=device)


def _region_targets(b, t, c, gen, device, pad=0.25, dup=True):
    """[b, t, 5] rows (class, x, y, w, h): random boxes, some padding rows (class -1) anywhere,
    and (dup) a row repeated with a slightly larger box (the same cell and, usually, anchor)."""
    rows = torch.rand(b, t, 5, generator=gen, dtype=torch.float64)
    rows[..., 0] = torch.randint(0, c, (b, t), generator=gen).double()
    rows[..., 3:] = rows[..., 3:] * 0.55 + 0.02
    if t:
        rows[..., 0] = torch.where(torch.rand(b, t, generator=gen) < pad, torch.full_like(rows[..., 0], -1.0),
                                   rows[..., 0])
        if dup and t >= 3:
            rows[:, -1] = rows[:, 0]
            rows[:, -1, 3:] += 0.01
            rows[:, -1, 0] = (rows[:, 0, 0] + 1) % c
    return rows.to(device=device, dtype=torch.float32)


def _region_output(b, a, c, h, w, device, dtype, gen, spread=2.0):
    return make_tensor((b, a * (5 + c), h, w), device, dtype, -spread, spread, gen)


# (B, A, C, H, W, T, kwargs)
_REGION_CASES = [(1, 1, 1, 1, 1, 1, {}), (2, 5, 3, 5, 5, 4, {}), (2, 5, 4, 7, 6, 6, dict(seen=12800)),
                 (3, 2, 7, 4, 9, 5, dict(rescore=False, bias_match=False)),
                 (2, 3, 5, 6, 6, 8, dict(scale_coord_by_size=False, thresh=0.3, seen=100000)),
                 (1, 5, 20, 13, 13, 0, {}),
                 (2, 4, 2, 5, 3, 3, dict(object_scale=2.0, noobject_scale=0.5, class_scale=3.0, coord_scale=0.7))]
_REGION_LARGE = [(4, 5, 20, 13, 13, 30, {}), (2, 5, 80, 19, 19, 50, dict(seen=20000))]


def _region_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    for red in ("mean", "sum", "none"):
        for b, a, c, h, w, t, kw in _REGION_CASES + ([] if small else _REGION_LARGE):
            yield SampleInput((_region_output(b, a, c, h, w, device, dtype, gen), _region_targets(b, t, c, gen, device),
                               _anchors(a, device), c), dict(kw, reduction=red), f"{red}-{b}x{a}x{c}x{h}x{w}-T{t}-{kw}")
        # non-contiguous head: a channels_last one
        out = _region_output(2, 3, 4, 5, 5, device, dtype, gen).to(memory_format=torch.channels_last)
        yield SampleInput((out, _region_targets(2, 4, 4, gen, device), _anchors(3, device), 4), dict(reduction=red),
                          f"{red}-channels-last")
        yield SampleInput((_region_output(0, 5, 3, 4, 4, device, dtype, gen), _region_targets(0, 3, 3, gen, device),
                           _anchors(5, device), 3), dict(reduction=red), f"{red}-empty")


def _region_edges(device, dtype):
    gen = torch.Generator().manual_seed(5)
    c = 3
    rows = torch.tensor([[[0, 1.0, 1.0, 0.3, 0.2],      # the bottom-right corner: x = y = 1.0
                          [1, 0.0, 0.0, 0.2, 0.2],      # the top-left corner
                          [2, 0.5, 0.5, 0.001, 0.002],  # a tiny box
                          [-1, 0.0, 0.0, 0.0, 0.0],     # padding in the middle
                          [1, 0.52, 0.51, 0.3, 0.4],    # two truths in one cell
                          [0, 0.53, 0.52, 0.31, 0.41],  # ... on the same anchor: the later wins
                          [2, 0.99, 0.01, 0.9, 0.95]],  # a huge box at the border
                         [[-1, 0, 0, 0, 0]] * 7],       # an image with only padding
                        dtype=torch.float32, device=device)
    for red in ("none", "mean", "sum"):
        out = _region_output(2, 5, c, 7, 7, device, torch.float64, gen)
        yield SampleInput((out.to(dtype), rows, _anchors(5, device), c), dict(reduction=red), f"{red}-borders")
        big = out.clone()
        big[:, ::4] *= 25.0  # huge logits (|z| up to 50)
        yield SampleInput((big.to(dtype), rows, _anchors(5, device), c), dict(reduction=red, seen=0), f"{red}-huge")


def _region_errors(device):
    out = torch.rand(2, 5 * 8, 4, 4, device=device)
    tg = torch.tensor([[[0, .5, .5, .2, .2]], [[2, .3, .7, .1, .4]]], device=device)
    anc = _anchors(5, device)
    S = lambda *a, **k: SampleInput(a, k)  # noqa: E731
    E = [
        ErrorInput(S(out[:, :39], tg, anc, 3), ValueError,
                   r"output has 39 channels, but A \* \(5 \+ num_classes\) = 5 \* \(5 \+ 3\) = 40"),
        ErrorInput(S(out[0], tg, anc, 3), ValueError, r"output must be \[B, A \* \(5 \+ C\), H, W\]"),
        ErrorInput(S(out.long(), tg, anc, 3), TypeError, "output must be float"),
        ErrorInput(S(out, tg[..., :4], anc, 3), ValueError, r"targets must have shape \[2, T, 5\]"),
        ErrorInput(S(out, tg[:1], anc, 3), ValueError, r"targets must have shape \[2, T, 5\]"),
        ErrorInput(S(out, tg.long(), anc, 3), TypeError, "targets must be floating"),
        ErrorInput(S(out, tg, torch.ones(5, 3, dtype=torch.float64, device=device), 3), ValueError,
                   r"anchors must be a floating \[A, 2\]"),
        ErrorInput(S(out, tg, anc, 0), ValueError, "num_classes must be >= 1"),
        ErrorInput(S(out, tg, anc, 3, object_scale=-1.0), ValueError, "object_scale must be in"),
        ErrorInput(S(out, tg, anc, 3, thresh=math.nan), ValueError, "thresh must be finite"),
        ErrorInput(S(out, tg, anc, 3, seen=-1), ValueError, "seen must be >= 0"),
        ErrorInput(S(out, tg, anc, 3, rescore="yes"), TypeError, "rescore must be a bool"),
        ErrorInput(S(out, tg, anc, 3, reduction="avg"), ValueError, "reduction must be"),
        ErrorInput(S(out, tg.to("meta"), anc, 3), ValueError, "targets is on meta"),
    ]
    if device == "cpu":
        bad = tg.clone()
        bad[1, 0, 0] = 3.0
        E.append(ErrorInput(S(out, bad, anc, 3), IndexError,
                            r"targets has class 3 at \[1, 0\] \(image, row\), outside \[0, 3\)"))
        bad = tg.clone()
        bad[0, 0, 3] = -0.1
        E.append(ErrorInput(S(out, bad, anc, 3), ValueError, r"targets'? has \(w, h\) = \(-0.1.*must be > 0"))
        bad = tg.clone()
        bad[0, 0, 1] = 1.5
        E.append(ErrorInput(S(out, bad, anc, 3), ValueError, r"centres must be in \[0, 1\]"))
        E.append(ErrorInput(S(out, tg, -anc, 3), ValueError, r"anchors'? has -1.3221 at \[0, 0\]: anchors must be positive"))
    return E


def _region_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    a, c = 5, 20
    hw = max(1, min(13, int(math.sqrt(numel / (a * (5 + c))))))
    b = max(1, numel // (a * (5 + c) * hw * hw))
    return SampleInput((_region_output(b, a, c, hw, hw, device, dtype, gen), _region_targets(b, 30, c, gen, device),
                        _anchors(a, device), c), dict(reduction="mean"), f"{b}x{a}x{c}x{hw}x{hw}-T30")


_REGION_DEFAULTS = dict(object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6,
                        rescore=True, bias_match=True, seen=0, warmup_images=12800, scale_coord_by_size=True)


def _region_op_args(sample):
    out, tg, anc, c = sample.args
    kw = dict(_REGION_DEFAULTS, **sample.kwargs)
    prior = torch.full([], 0.01 if kw["seen"] < kw["warmup_images"] else 0.0, dtype=torch.float64, device=out.device)
    return (out, tg.double(), anc.double(), c, kw["object_scale"], kw["noobject_scale"], kw["class_scale"],
            kw["coord_scale"], kw["thresh"], kw["rescore"], kw["bias_match"], prior, kw["scale_coord_by_size"])


def _region_raw_calls(sample):
    args = _region_op_args(sample)
    _, grad, _ = torch.ops.lossext.yolov2_region_loss(*args)
    go = torch.randn(args[0].shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return [("yolov2_region_loss", args),
            ("yolov2_region_loss_backward", (go.to(grad.device, grad.dtype), grad, args[0]))]


def _region_module(sample):
    out, tg, anc, c = sample.args
    kw = dict(sample.kwargs)
    seen = kw.pop("seen", 0)
    m = LN.YOLOv2RegionLoss(anc, c, **kw).eval()  # eval: the counter stays at `seen`
    m.seen.fill_(seen)
    return m.to(out.device), (out, tg), {}


def _region_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    out, tg = _region_output(2, 5, 3, 5, 5, device, dtype, gen), _region_targets(2, 4, 3, gen, device)
    return [(LN.YOLOv2RegionLoss(_anchors(5, "cpu"), 3).to(device), (out, tg), {}),
            (LN.YOLOv2RegionLoss(_anchors(5, "cpu"), 3, rescore=False, bias_match=False, warmup_images=0,
                                 reduction="sum").to(device), (out, tg), {})]


def _region_jit(sample):
    out, tg, anc, c, *p = _region_op_args(sample)
    prior = float(p[7])
    p = p[:7] + p[8:]
    vals = ", ".join(repr(v) for v in p[:7])
    red = sample.kwargs.get("reduction", "mean")
    reduce = {"none": "loss", "sum": "loss.sum()", "mean": "loss.sum() / loss.shape[0]"}[red]
    src = ("def f(x: Tensor, t: Tensor, a: Tensor) -> Tensor:\n"
           f"    prior = torch.full([], {prior!r}, dtype=torch.float64, device=x.device)\n"
           f"    loss = torch.ops.lossext.yolov2_region_loss(x, t, a, {c}, {vals}, prior, {p[7]!r})[0]\n"
           f"    return {reduce}\n")
    return src, (out, tg.double(), anc.double())


def _region_raw_errors(device):
    out = torch.rand(2, 5 * 8, 4, 4, device=device)
    tg = torch.tensor([[[0, .5, .5, .2, .2]], [[2, .3, .7, .1, .4]]], dtype=torch.float64, device=device)
    anc = _anchors(5, device)
    prior = torch.zeros((), dtype=torch.float64, device=device)
    n = "yolov2_region_loss"
    p = (5.0, 1.0, 1.0, 1.0, 0.6, True, True)
    grad = torch.zeros_like(out)
    rows = [
        (n, (out[:, :39], tg, anc, 3, *p, prior, True), "'output' has 39 channels"),
        (n, (out[0], tg, anc, 3, *p, prior, True), r"'output' must be \[B, A \* \(5 \+ C\), H, W\]"),
        (n, (out, tg.float(), anc, 3, *p, prior, True), "'targets' must be float64"),
        (n, (out, tg, anc.float(), 3, *p, prior, True), "'anchors' must be float64"),
        (n, (out, tg, anc, 0, *p, prior, True), "'num_classes' must be >= 1"),
        (n, (out, tg, anc, 3, -1.0, *p[1:], prior, True), "'object_scale' must be finite and >= 0"),
        (n, (out, tg, anc, 3, *p[:4], math.nan, *p[5:], prior, True), "'thresh' must be finite"),
        (n, (out, tg, anc, 3, *p, prior.float(), True), "'prior_scale' must be a 0-dim float64"),
        ("yolov2_region_loss_backward", (torch.ones(3, device=device), grad, out), r"'grad_output' must have shape \[2\]"),
        ("yolov2_region_loss_backward", (torch.ones(2, device=device), grad[0], out[0]), "'grad' must be"),
        ("yolov2_region_loss_backward", (torch.ones(2, device=device), grad[:1], out), "'grad' has shape"),
    ]
    if device == "cpu":
        bad = tg.clone()
        bad[1, 0, 0] = 7.0
        rows.append((n, (out, bad, anc, 3, *p, prior, True), "'targets' has class 7"))
        rows.append((n, (out, tg, anc, 3, *p, prior - 1.0, True), "'prior_scale' must be finite and >= 0"))
    return rows


def _region_ref(output, targets, anchors, num_classes, *args, **kwargs):
    # gradients flow to output only: targets and anchors are constants
    anchors = anchors.detach() if isinstance(anchors, torch.Tensor) else anchors
    return R.yolov2_region_loss(output, targets.detach(), anchors, num_classes, *args, **kwargs)


def _region_fuzz(draw, device):
    """yolov2_region_loss: heads of drawn shapes (B, A, C, H, W, T: empty, 1, odd) with extremes,
    NaN and inf; targets with padding anywhere, borders (x = 1.0), duplicates; every setting
    drawn; at most one bad argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "yolov2_region_loss"
    bad = F.fault(draw, ["output", "channels", "targets", "class", "box", "anchors", "num_classes", "scale", "thresh",
                         "seen", "reduction"])
    dt = F.dtype(draw)
    b = F.size(draw, sizes=(0, 1, 2, 3, 1, 2))
    a = draw(st.sampled_from([1, 2, 5, 5, 3]))
    c = draw(st.sampled_from([1, 2, 3, 20, 5]))
    h, w = draw(st.sampled_from([1, 2, 5, 7, 13])), draw(st.sampled_from([1, 3, 5, 7, 13]))
    t = draw(st.sampled_from([0, 1, 3, 8, 30]))
    big = {torch.float16: 8.0, torch.bfloat16: 30.0, torch.float32: 30.0, torch.float64: 60.0}[dt]
    out = F.tensor(draw, (b, a * (5 + c), h, w), dt, device, -3.0, 3.0, [0.0, big, -big, math.nan], expand=False)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    tg = _region_targets(b, t, c, gen, "cpu", pad=draw(st.sampled_from([0.0, 0.3, 1.0])))
    if b and t and draw(st.booleans()):
        tg[0, 0, 1:3] = torch.tensor(draw(st.sampled_from([(1.0, 1.0), (0.0, 0.0), (1.0, 0.5)])), dtype=torch.float32)
    anc = _anchors(a, device)
    kw = {}
    for k in ("object_scale", "noobject_scale", "class_scale", "coord_scale"):
        if draw(st.booleans()):
            kw[k] = F.number_as(draw, draw(st.sampled_from([0.0, 0.5, 1.0, 5.0])))
    if draw(st.booleans()):
        kw["thresh"] = F.number_as(draw, draw(st.sampled_from([0.6, 0.0, 0.5, 1.0])))
    for k in ("rescore", "bias_match", "scale_coord_by_size"):
        if draw(st.booleans()):
            kw[k] = F.flag(draw)
    if draw(st.booleans()):
        kw["seen"] = F.integer(draw, fn, "seen", [0, 12799, 12800, 10 ** 6])
    kw["reduction"] = F.reduction(draw)
    error, ref = None, None
    if bad == "output":
        out, error = (F.not_a_tensor(draw, fn, "output") if draw(st.booleans())
                      else F.not_float(draw, fn, "output", out.shape, device))
    elif bad == "channels":
        out = out[:, 1:]
        error = ValueError, rf"^{fn}: output has {out.shape[1]} channels, but A \* \(5 \+ num_classes\) = "
    elif bad == "targets":
        tg, error = F.bad_targets(draw, fn, tg, b, "(class, x, y, w, h)")
    elif bad in ("class", "box") and b and t:
        k = draw(st.integers(0, t - 1))
        if bad == "class":
            tg[0, k, 0] = float(draw(st.sampled_from([c, c + 5, 0.5])))
        else:
            tg[0, k, 0] = 0.0
            tg[0, k, draw(st.sampled_from([3, 4]))] = draw(st.sampled_from([0.0, -0.2]))
        if device == "cpu":
            error = ((IndexError, rf"^{fn}: targets has class ") if bad == "class" else
                     (ValueError, rf"^{fn}: targets has \(w, h\) = "))
        else:
            return None  # CUDA does not read targets back (no host sync): test_detection.py covers it
    elif bad == "anchors":
        anc = anc[:, :1]
        error = ValueError, rf"^{fn}: anchors must be a floating \[A, 2\] tensor"
    elif bad == "num_classes":
        c, error = F.integer(draw, fn, "num_classes", bad=True, bad_values=[(0, "be >= 1"), (-3, "be >= 1")])
        if isinstance(error[1], str) and "must be >= 1" in error[1]:
            error = ValueError, rf"^{fn}: num_classes must be >= 1, got {c}$"
    elif bad == "scale":
        k = draw(st.sampled_from(["object_scale", "noobject_scale", "class_scale", "coord_scale"]))
        kw[k], error = F.Real(k, "range", 0.0, math.inf, hi_open=True).invalid(draw, fn)
    elif bad == "thresh":
        kw["thresh"], error = F.Real("thresh", "finite", 0.0, 1.0).invalid(draw, fn)
    elif bad == "seen":
        kw["seen"], error = F.integer(draw, fn, "seen", bad=True, bad_values=[(-1, "be >= 0")])
    elif bad == "reduction":
        kw["reduction"], error = F.reduction(draw, fn, bad=True)
    tg = tg.to(device) if isinstance(tg, torch.Tensor) else tg
    return F.FuzzCase(SampleInput((out, tg, anc, c), kw, f"{kw['reduction']}-{b}x{a}x{c}x{h}x{w}-T{t}-{dt}"),
                      error, dtype=dt, grads=(0,), grad_terms=5 + (c if isinstance(c, int) else 0))


_REGION_ROW = OpInfo(
    name="yolov2_region_loss",
    op=LF.yolov2_region_loss, ref=_region_ref, module=LN.YOLOv2RegionLoss,
    raw_ops=["yolov2_region_loss", "yolov2_region_loss_backward"],
    hyper=dict(anchors=_VOC_ANCHORS, num_classes=20),
    sample_inputs=_region_samples, edge_inputs=_region_edges, error_inputs=_region_errors,
    bench_input=_region_bench, raw_calls=_region_raw_calls, module_call=_region_module,
    module_samples=_region_modules, jit_source=_region_jit, raw_error_inputs=_region_raw_errors,
    fuzz=_region_fuzz,
    # the loss reads the head once and writes its gradient (the backward scales it)
    bench_bytes={"forward": 2, "backward": 2, "full": 3},
    bench_generic=False,
    module_bad_hyper=("object_scale", -1.0),
    constant_tensors=(1, 2),
    # rescore's objectness target (the IoU of the decoded box) is a constant in darknet's gradient
    gradcheck_skip=lambda s: s.kwargs.get("rescore", True),  # targets and anchors take no gradient
    tol={torch.float64: (1e-9, 1e-11), torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2),
         torch.bfloat16: (5e-2, 5e-2)},
)
OP_ROWS.insert(0, _REGION_ROW)

# the multibox losses (SSD, RefineDet): their own module
from .multibox_opinfo import ROWS as _MULTIBOX_ROWS  # noqa: E402

OP_ROWS += _MULTIBOX_ROWS
