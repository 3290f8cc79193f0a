"""OpInfo rows of the pose-guided synthesis losses (Si et al., CVPR 2018), joined to the family's
OP_ROWS by opinfo.py: masked_l1_loss, pose_regression_loss and adversarial_loss.
gan_generator_loss and gan_discriminator_loss are adversarial_loss terms on the same op (its
row covers the op): tests/test_dense.py checks them against it.

masked_l1_loss returns two scalars (L_fg, L_bg) and has no reduction: the generic tests check
each output (lossext.testing.opinfo.outputs) and run their reduction loops once. Its mask takes
no gradient (refused when it requires grad): the samples pass it as the keyword `mask`, outside
grad_keys, so no generic test makes it a leaf. The stage Modules are in its module_samples;
its module_call reads (L_fg, L_bg) back through them (_StageL1Terms).
"""
import math

import torch
from torch import Tensor, nn

from ..testing.opinfo import ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import reference as R

_NO_GRAD_KW = ()  # no keyword tensor takes a gradient (the mask is a keyword for that reason)

_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6), torch.float16: (1e-2, 1e-3),
        torch.bfloat16: (5e-2, 1e-2)}


def _fuzz_tol(dt, n):
    """The row's tol for dtype dt, rtol grown by the rounding of sums of n terms (float32
    accumulation for the half dtypes)."""
    rtol, atol = _TOL[dt]
    eps = torch.finfo(torch.float64 if dt == torch.float64 else torch.float32).eps
    return rtol + 8 * eps * max(n, 1), atol


# ---- masked_l1_loss ----------------------------------------------------------------------------

_MASK_KINDS = ("bool", "01", "soft", "ones", "zeros", "u8")


def _mask(shape, kind, device, dtype, gen):
    """A mask of `shape`: 'bool', '01' (float 0/1), 'soft' (float weights in [0, 1)), 'ones',
    'zeros' (float), 'u8' (uint8 0/1)."""
    v = torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "ones":
        v = torch.ones(shape, dtype=torch.float64)
    elif kind == "zeros":
        v = torch.zeros(shape, dtype=torch.float64)
    elif kind != "soft":
        v = (v > 0.5).to(torch.float64)
    if kind == "bool":
        return v.to(device, torch.bool)
    return v.to(device, torch.uint8 if kind == "u8" else dtype)


def _mask_shape(b, c, sp, layout):
    """[B, C, ...] ('full'), [B, 1, ...] ('one') or [B, ...] ('flat')."""
    return {"full": (b, c, *sp), "one": (b, 1, *sp), "flat": (b, *sp)}[layout]


def _image(shape, device, dtype, gen):
    return make_tensor(shape, device, dtype, -1.0, 1.0, gen)


def _l1_sample(x, y, m, name):
    return SampleInput((x, y), dict(mask=m), name, grad_keys=_NO_GRAD_KW)


# (B, C, spatial, mask layout, mask kind)
_L1_CASES = [(1, 1, (1, 1), "full", "01"), (2, 3, (5, 4), "one", "bool"), (2, 3, (5, 4), "flat", "soft"),
             (3, 3, (7, 5), "full", "soft"), (2, 3, (4, 4), "one", "ones"), (2, 3, (4, 4), "flat", "zeros"),
             (1, 3, (9, 7), "flat", "01"), (2, 2, (6,), "one", "u8"), (2, 2, (), "flat", "bool"),
             (2, 2, (3, 2, 2), "full", "01")]
_L1_LARGE = [(2, 3, (64, 48), "one", "bool"), (1, 3, (97, 101), "flat", "soft")]  # P > 8192: several CPU chunks


def _l1_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    for b, c, sp, lay, kind in _L1_CASES + ([] if small else _L1_LARGE):
        x, y = _image((b, c, *sp), device, dtype, gen), _image((b, c, *sp), device, dtype, gen)
        yield _l1_sample(x, y, _mask(_mask_shape(b, c, sp, lay), kind, device, dtype, gen),
                         f"{b}x{c}x{sp}-mask-{lay}-{kind}")
    # non-contiguous: a channels_last image and target beside a [B, 1, H, W] mask; a transposed
    # image; an expanded (stride 0) soft mask over the channels; a strided slice of the channels
    x = _image((2, 3, 5, 6), device, dtype, gen).to(memory_format=torch.channels_last)
    y = _image((2, 3, 5, 6), device, dtype, gen).to(memory_format=torch.channels_last)
    yield _l1_sample(x, y, _mask((2, 1, 5, 6), "bool", device, dtype, gen), "channels-last")
    x = _image((2, 3, 6, 5), device, dtype, gen).transpose(2, 3)
    m = _mask((2, 1, 5, 6), "soft", device, dtype, gen).expand(2, 3, 5, 6)
    yield _l1_sample(x, _image((2, 3, 5, 6), device, dtype, gen), m, "transposed-expanded-mask")
    x = _image((2, 6, 4, 3), device, dtype, gen)[:, ::2]
    yield _l1_sample(x, _image(x.shape, device, dtype, gen), _mask((2, 4, 3), "01", device, dtype, gen), "strided")
    yield _l1_sample(_image((0, 3, 4, 4), device, dtype, gen), _image((0, 3, 4, 4), device, dtype, gen),
                     _mask((0, 1, 4, 4), "bool", device, dtype, gen), "empty")


def _l1_edges(device, dtype):
    # input == target (zero loss; |x - y| at 0), one foreground pixel, a soft mask of exact
    # 0 / 1 / 0.5 values, both sides empty in turn with hard masks of every dtype
    gen = torch.Generator().manual_seed(7)
    x = _image((2, 3, 4, 4), device, dtype, gen)
    y = _image((2, 3, 4, 4), device, dtype, gen)
    yield _l1_sample(x, x.clone(), _mask((2, 1, 4, 4), "bool", device, dtype, gen), "exact")
    one = torch.zeros(2, 4, 4, dtype=torch.bool, device=device)
    one[1, 2, 3] = True
    yield _l1_sample(x, y, one, "one-foreground-pixel")
    yield _l1_sample(x, y, ~one, "one-background-pixel")
    m = torch.tensor([0.0, 1.0, 0.5, 0.0], dtype=dtype, device=device).repeat(2, 1, 4, 1)
    yield _l1_sample(x, y, m, "soft-exact-values")
    for kind in ("ones", "zeros"):
        for mdt in (torch.bool, torch.uint8, dtype):
            m = _mask((2, 1, 4, 4), kind, device, dtype, gen).to(mdt)
            yield _l1_sample(x, y, m, f"all-{kind}-{mdt}")


def _l1_errors(device):
    gen = torch.Generator().manual_seed(1)
    x, y = _image((2, 3, 4, 4), device, torch.float32, gen), _image((2, 3, 4, 4), device, torch.float32, gen)
    m = _mask((2, 1, 4, 4), "01", device, torch.float32, gen)
    S = _l1_sample
    return [
        ErrorInput(S(x, y, m.clone().requires_grad_(True), ""), ValueError, "mask must not require grad"),
        ErrorInput(S(x, y, m[..., :3], ""), ValueError, r"mask must have shape \[2, 3, 4, 4\], \[B, 1, \.\.\.\] or"),
        ErrorInput(S(x, y, torch.ones(2, 2, 4, 4, device=device), ""), ValueError,
                   r"mask must have shape .*got \[2, 2, 4, 4\]"),
        ErrorInput(S(x, y, m[:1], ""), ValueError, r"mask must have shape .*got \[1, 1, 4, 4\]"),
        ErrorInput(S(x, y, m.reshape(2, 16), ""), ValueError, "mask must have shape"),
        ErrorInput(S(x, y, [1.0], ""), TypeError, "mask must be a Tensor, got list"),
        ErrorInput(S(x, y, m.to(torch.complex64), ""), TypeError, "mask must be real"),
        ErrorInput(S(x, y, m.to("meta"), ""), ValueError, "mask is on meta"),
        ErrorInput(S(x.long(), y, m, ""), TypeError, "input must be float"),
        ErrorInput(S(x, y.long(), m, ""), TypeError, "target must be float"),
        ErrorInput(S(x, y[:, :2], m, ""), ValueError, r"target shape \[2, 2, 4, 4\] does not match input shape"),
        ErrorInput(S(x, y.to("meta"), m, ""), ValueError, "target is on meta"),
        ErrorInput(S(x[0, 0, 0], y[0, 0, 0], m[0, 0, 0], ""), ValueError, r"input must be \[B, C, \.\.\.\]"),
    ]


def _l1_bench(numel, device, dtype):
    """A 3-channel image of numel // 3 pixels and a [1, 1, P] bool mask (both sides non-empty)."""
    gen = torch.Generator().manual_seed(0)
    p = max(1, numel // 3)
    m = _mask((1, 1, p), "bool", device, dtype, gen)
    m[..., 0] = True
    if p > 1:
        m[..., -1] = False
    x, y = _image((1, 3, p), device, dtype, gen), _image((1, 3, p), device, dtype, gen)
    return _l1_sample(x, y, m, f"1x3x{p}")


def _l1_op_mask(sample):
    """The mask as the function passes it to the raw op: [B, C or 1, ...] in the input's dtype."""
    x = sample.args[0]
    m = sample.kwargs["mask"]
    return (m.unsqueeze(1) if m.dim() == x.dim() - 1 else m).to(x.dtype)


def _l1_raw_calls(sample):
    x, y = sample.args
    m = _l1_op_mask(sample)
    s = torch.ops.lossext.masked_l1_sums(x, y, m)
    g = torch.randn(s.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(s.device, s.dtype)
    g[..., 2:] = 0  # the mask sums take no gradient
    return [("masked_l1_sums", (x, y, m)), ("masked_l1_sums_backward", (g, x, y, m))]


class _StageL1Terms(nn.Module):
    """(L_fg, L_bg) read back through the stage Modules: ForegroundStageLoss(1, 0) is L_fg and
    BackgroundStageLoss(0, 1) is L_bg where their GAN terms vanish (fake logits +inf:
    softplus(-inf) = 0 exactly), so each must equal masked_l1_loss's output."""

    def __init__(self):
        super().__init__()
        self.fg = LN.ForegroundStageLoss(1.0, 0.0)
        self.bg = LN.BackgroundStageLoss(0.0, 1.0)

    def forward(self, input: Tensor, target: Tensor, mask: Tensor):
        inf = torch.full((1,), math.inf, dtype=input.dtype, device=input.device)
        return self.fg(input, target, mask, inf), self.bg(input, target, mask, inf, inf)


def _l1_module(sample):
    return _StageL1Terms(), sample.args + (sample.kwargs["mask"],), {}


def _l1_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    x, y = _image((2, 3, 6, 5), device, dtype, gen), _image((2, 3, 6, 5), device, dtype, gen)
    m = _mask((2, 1, 6, 5), "bool", device, dtype, gen)  # not floating: the training loops leave it alone
    fake = make_tensor((2, 1, 3, 3), device, dtype, -2.0, 2.0, gen)
    fake_fg = make_tensor((2,), device, dtype, -2.0, 2.0, gen)
    return [(LN.ForegroundStageLoss(1.0, 0.5), (x, y, m, fake), {}),
            (LN.BackgroundStageLoss(alpha_b=2.0, beta_b=1.0), (x, y, m[:, 0], fake_fg, fake), {})]


def _l1_jit(sample):
    x, y = sample.args  # the bench sample: both sides non-empty
    src = ("def f(x: Tensor, y: Tensor, m: Tensor) -> Tuple[Tensor, Tensor]:\n"
           "    s = torch.ops.lossext.masked_l1_sums(x, y, m).sum([0, 1])\n"
           "    return s[0] / s[2], s[1] / s[3]\n")
    return src, (x, y, _l1_op_mask(sample))


def _l1_raw_errors(device):
    gen = torch.Generator().manual_seed(1)
    x, y = _image((2, 3, 4, 4), device, torch.float32, gen), _image((2, 3, 4, 4), device, torch.float32, gen)
    m = _mask((2, 1, 4, 4), "01", device, torch.float32, gen)
    g = torch.ones(2, 3, 4, device=device)
    return [
        ("masked_l1_sums", (x[0, 0, 0], y[0, 0, 0], m[0, 0, 0]), r"'input' must be \[B, C, \.\.\.\]"),
        ("masked_l1_sums", (x.long(), y.long(), m.long()), "'input' must be float16"),
        ("masked_l1_sums", (x, y[:, :2], m), "'target' has shape"),
        ("masked_l1_sums", (x, y.double(), m), "'target' has dtype"),
        ("masked_l1_sums", (x, y, m.bool()), "'mask' has dtype Bool"),
        ("masked_l1_sums", (x, y, m[:, 0]), r"'mask' has shape \[2, 4, 4\]"),
        ("masked_l1_sums", (x, y, torch.ones(2, 2, 4, 4, device=device)), r"'mask' has shape \[2, 2, 4, 4\]"),
        ("masked_l1_sums_backward", (g[..., :3], x, y, m), r"'grad' must have shape \[2, 3, 4\]"),
        ("masked_l1_sums_backward", (g.double(), x, y, m), "'grad' must have dtype Float"),
        ("masked_l1_sums_backward", (g, x, y[:1], m), "'target' has shape"),
        ("masked_l1_sums_backward", (g, x, y, m[:1]), "'mask' has shape"),
    ]


def _fuzz_mask(draw, shp, kind, dt, device):
    """A mask of a drawn layout: soft (weights in [0, 1)) or hard, float (sometimes another
    float dtype than the input's), bool or uint8; or all ones / all zeros."""
    from ..testing import fuzz as F
    stride, offset, storage = F.layout(draw, shp)
    v = F.values(draw, storage, 0.0, 1.0)
    if kind == "ones":
        v.fill_(1.0)
    elif kind == "zeros":
        v.fill_(0.0)
    elif kind != "soft":
        v = (v > 0.5).to(torch.float64)
    mdt = {"bool": torch.bool, "u8": torch.uint8}.get(kind, F.other_dtype(draw, dt))
    return v.to(device=device, dtype=mdt).as_strided(shp, stride, offset)


def _l1_fuzz(draw, device):
    """masked_l1_loss: images with extremes, NaN and inf in drawn layouts; masks [B, C, ...],
    [B, 1, ...] or [B, ...], soft or hard, of any real dtype, all ones or all zeros, in drawn
    layouts (stride 0 included); at most one bad argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "masked_l1_loss"
    bad = F.fault(draw, ["input", "target", "mask"])
    dt = F.dtype(draw)
    large = F.rare(draw, F.LARGE_ONE_IN)
    b = F.size(draw, sizes=(0, 1, 2, 3, 1, 2))
    c = F.size(draw, sizes=(1, 2, 3, 4, 1, 3))
    sp = F.shape(draw, 0, 3, large=large)
    shp = (b, c, *sp)
    big = {torch.float16: 100.0, torch.bfloat16: 1e15, torch.float32: 1e15, torch.float64: 1e150}[dt]
    x = F.tensor(draw, shp, dt, device, -2.0, 2.0, F.extremes(dt, big))
    y = F.tensor(draw, shp, F.other_dtype(draw, dt), device, -2.0, 2.0, F.extremes(dt, big))
    lay = draw(st.sampled_from(["full", "one", "flat"]))
    kind = draw(st.sampled_from(_MASK_KINDS))
    m = _fuzz_mask(draw, _mask_shape(b, c, sp, lay), kind, dt, device)
    error = None
    if bad == "mask":
        how = draw(st.sampled_from(["type", "shape", "complex", "device", "grad"]))
        if how == "type":
            m, error = F.not_a_tensor(draw, fn, "mask")
        elif how == "shape":
            o = draw(st.sampled_from([(b + 1, c, *sp), (b, c + 1, *sp), (b, c, *sp, 2), (b, 1, *sp, 2)]
                                     + ([(b, c, *sp[:-1], sp[-1] + 1)] if sp else [])))
            if c == 1 and o == (b, 2, *sp):
                o = (b, 3, *sp)
            m = torch.ones(o, dtype=dt, device=device)
            error = ValueError, (rf"^{fn}: mask must have shape {F.shape_text(shp)}, \[B, 1, \.\.\.\] or \[B, \.\.\.\] "
                                 rf"\(input is {F.shape_text(shp)}\), got {F.shape_text(o)}$")
        elif how == "complex":
            m = m.to(torch.complex64)
            error = TypeError, rf"^{fn}: mask must be real, got torch.complex64$"
        elif how == "device":
            m, error = F.on_meta(fn, "mask", x, "input", shp=m.shape, dt=m.dtype)
        else:
            m = m.to(dt).detach().requires_grad_(True)
            error = ValueError, rf"^{fn}: mask must not require grad"
    elif bad == "input":
        how = draw(st.sampled_from(["type", "dtype", "dims"]))
        if how == "type":
            x, error = F.not_a_tensor(draw, fn, "input")
        elif how == "dtype":
            x, error = F.not_float(draw, fn, "input", shp, device)
        else:
            x = torch.zeros(draw(st.sampled_from([(), (3,)])), dtype=dt, device=device)
            y = torch.zeros(x.shape, dtype=dt, device=device)
            m = torch.ones(x.shape, dtype=torch.bool, device=device)
            error = ValueError, rf"^{fn}: input must be \[B, C, \.\.\.\], got shape"
    elif bad == "target":
        y, error = F.bad_pair_target(draw, fn, x, "input")
    # the mask always as a keyword: a positional floating mask would be a gradient leaf
    rdt = torch.promote_types(dt, y.dtype) if error is None else dt
    case = F.FuzzCase(SampleInput((x, y), dict(mask=m), f"{shp}-mask-{lay}-{kind}", grad_keys=_NO_GRAD_KW), error,
                      dtype=rdt)
    if error is None:
        case.tol = _fuzz_tol(rdt, math.prod(shp))
        case.grad_terms = 1
    return case


# ---- pose_regression_loss ----------------------------------------------------------------------

def _poses(shape, device, dtype, gen):
    return make_tensor(shape, device, dtype, -1.0, 1.0, gen)


def _pose_sample(p, t, red, name):
    return SampleInput((p, t), dict(reduction=red), f"{red}-{name}", grad_keys=_NO_GRAD_KW)


# per-sample shapes: 18 (x, y) keypoints (the paper's), K heatmaps, one value, others
_POSE_CASES = [(1, (18, 2)), (4, (18, 2)), (3, (17, 8, 6)), (5, ()), (2, (3, 5)), (3, (1,))]
_POSE_LARGE = [(64, (18, 2)), (2, (17, 32, 24))]  # a sample of 13056 values: two CPU tasks


def _pose_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    for red in ("mean", "sum", "none"):
        for b, sp in _POSE_CASES + ([] if small else _POSE_LARGE):
            yield _pose_sample(_poses((b, *sp), device, dtype, gen), _poses((b, *sp), device, dtype, gen), red,
                               f"{b}x{sp}")
        p = _poses((4, 2, 18), device, dtype, gen).transpose(1, 2)
        yield _pose_sample(p, _poses((4, 18, 2), device, dtype, gen), red, "transposed")
        p = _poses((3, 17, 8, 12), device, dtype, gen)[..., ::2]
        yield _pose_sample(p, _poses(p.shape, device, dtype, gen).to(memory_format=torch.channels_last), red,
                           "strided-channels-last")
        yield _pose_sample(_poses((0, 18, 2), device, dtype, gen), _poses((0, 18, 2), device, dtype, gen), red,
                           "empty")


def _pose_edges(device, dtype):
    # pred == target (zero loss and gradient), samples with no values (0 each), large offsets
    gen = torch.Generator().manual_seed(4)
    for red in ("none", "mean", "sum"):
        p = _poses((3, 18, 2), device, dtype, gen)
        yield _pose_sample(p, p.clone(), red, "exact")
        yield _pose_sample(torch.zeros(3, 0, device=device, dtype=dtype), torch.zeros(3, 0, device=device, dtype=dtype),
                           red, "no-values")
        yield _pose_sample(p * 300.0, p * -200.0, red, "large")


def _pose_errors(device):
    gen = torch.Generator().manual_seed(1)
    p, t = _poses((2, 18, 2), device, torch.float32, gen), _poses((2, 18, 2), device, torch.float32, gen)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=_NO_GRAD_KW)  # noqa: E731
    return [
        ErrorInput(S(p[0, 0, 0], t[0, 0, 0]), ValueError, r"pred must be \[B, \.\.\.\], got a 0-dim tensor"),
        ErrorInput(S(p.long(), t), TypeError, "pred must be float"),
        ErrorInput(S(p, t.long()), TypeError, "target must be float"),
        ErrorInput(S(p, t[:1]), ValueError, r"target shape \[1, 18, 2\] does not match pred shape"),
        ErrorInput(S(p, t.to("meta")), ValueError, "target is on meta"),
        ErrorInput(S([1.0], t), TypeError, "pred must be a Tensor"),
        ErrorInput(S(p, t, reduction="avg"), ValueError, "reduction must be"),
    ]


def _pose_bench(numel, device, dtype):
    gen = torch.Generator().manual_seed(0)
    b = max(1, numel // 36)
    return _pose_sample(_poses((b, 18, 2), device, dtype, gen), _poses((b, 18, 2), device, dtype, gen), "mean",
                        f"{b}x18x2")


def _pose_rows(t):
    return t.reshape(t.shape[0], 1, math.prod(t.shape[1:]))


def _pose_raw_calls(sample):
    p, t = (_pose_rows(a) for a in sample.args)
    s = torch.ops.lossext.joints_mse_sums(p, t)
    g = torch.randn(s.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(s.device, s.dtype)
    return [("joints_mse_sums", (p, t)), ("joints_mse_sums_backward", (g, p, t))]


def _pose_module(sample):
    return LN.PoseTransformerLoss(**sample.kwargs), sample.args, {}


def _pose_modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    p, t = _poses((4, 18, 2), device, dtype, gen), _poses((4, 18, 2), device, dtype, gen)
    h, ht = _poses((2, 5, 6, 4), device, dtype, gen), _poses((2, 5, 6, 4), device, dtype, gen)
    return [(LN.PoseTransformerLoss(), (p, t), {}), (LN.PoseTransformerLoss(reduction="sum"), (h, ht), {})]


def _pose_jit(sample):
    p, t = sample.args  # the bench sample: 'mean'
    b, n = p.shape[0], math.prod(p.shape[1:])
    src = ("def f(p: Tensor, t: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.joints_mse_sums(p.reshape({b}, 1, {n}), t.reshape({b}, 1, {n}))"
           f".reshape({b}).mean()\n")
    return src, (p, t)


def _pose_raw_errors(device):
    p = torch.rand(2, 1, 36, device=device)
    return [
        ("joints_mse_sums", (p, p[:1]), "'target' has shape"),
        ("joints_mse_sums", (p, p.double()), "'target' has dtype"),
        ("joints_mse_sums_backward", (torch.ones(2, 2, device=device), p, p), r"'grad' must have shape \[2, 1\]"),
    ]


def _pose_fuzz(draw, device):
    """pose_regression_loss: poses of drawn shapes ([B], [B, 18, 2], heatmaps, empty) and layouts
    with extremes, NaN and inf; at most one bad argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "pose_regression_loss"
    bad = F.fault(draw, ["pred", "target", "reduction"])
    dt = F.dtype(draw)
    large = F.rare(draw, F.LARGE_ONE_IN)
    b = F.size(draw, sizes=(0, 1, 2, 3, 5, 1, 4))
    sp = draw(st.sampled_from([(18, 2), (18, 2), None]))
    sp = F.shape(draw, 0, 3, large=large) if sp is None else sp
    shp = (b, *sp)
    big = {torch.float16: 100.0, torch.bfloat16: 1e15, torch.float32: 1e15, torch.float64: 1e150}[dt]
    p = F.tensor(draw, shp, dt, device, -2.0, 2.0, F.extremes(dt, big))
    t = F.tensor(draw, shp, F.other_dtype(draw, dt), device, -2.0, 2.0, F.extremes(dt, big))
    vals = {"reduction": F.reduction(draw)}
    error = None
    if bad == "reduction":
        vals["reduction"], error = F.reduction(draw, fn, bad=True)
    elif bad == "pred":
        how = draw(st.sampled_from(["type", "dtype", "dims"]))
        if how == "type":
            p, error = F.not_a_tensor(draw, fn, "pred")
        elif how == "dtype":
            p, error = F.not_float(draw, fn, "pred", shp, device)
        else:
            p, t = torch.zeros((), dtype=dt, device=device), torch.zeros((), dtype=dt, device=device)
            error = ValueError, rf"^{fn}: pred must be \[B, \.\.\.\], got a 0-dim tensor$"
    elif bad == "target":
        t, error = F.bad_pair_target(draw, fn, p, "pred")
    params, positional = F.signature_params(LF.pose_regression_loss, R.pose_regression_loss, (p, t), vals)
    args, kwargs = F.arguments(draw, (p, t), params, positional)
    rdt = torch.promote_types(dt, t.dtype) if error is None else dt
    case = F.FuzzCase(SampleInput(args, kwargs, f"{vals['reduction']}-{shp}", grad_keys=_NO_GRAD_KW), error, dtype=rdt)
    if error is None:
        n = math.prod(sp) * (max(b, 1) if vals["reduction"] != "none" else 1)
        case.tol = _fuzz_tol(rdt, n)
        case.grad_terms = 1
    return case


# ---- adversarial_loss ---------------------------------------------------------------------------

def _logits(shape, device, dtype, gen, lo=-4.0, hi=4.0):
    return make_tensor(shape, device, dtype, lo, hi, gen)


def _adv_sample(x, real, red, name):
    return SampleInput((x,), dict(target_is_real=real, reduction=red), f"{red}-{'real' if real else 'fake'}-{name}",
                       grad_keys=_NO_GRAD_KW)


# discriminator outputs: [B] (a global D), [B, 1, 30, 30] (pix2pix's 70x70 PatchGAN at 256 px), others
_ADV_SHAPES = [(5,), (2, 1, 30, 30), (1, 1, 1), (3, 1, 7, 5)]


def _adv_samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    shapes = _ADV_SHAPES + ([] if small else [(16, 1, 30, 30)])
    for red in ("mean", "sum", "none"):
        for real in (True, False):
            for shp in shapes:
                yield _adv_sample(_logits(shp, device, dtype, gen), real, red, f"{shp}")
            x = _logits((2, 1, 6, 5), device, dtype, gen).transpose(2, 3)
            yield _adv_sample(x, real, red, "transposed")
            yield _adv_sample(_logits((0, 1, 30, 30), device, dtype, gen), real, red, "empty")


def _saturated(device, dtype, scale):
    return torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0], [1.0, -1.0, 1e-3, -1e-3, 0.25]], device=device,
                        dtype=dtype) * scale


def _adv_edges(device, dtype):
    # logits +-100 (and +-1e4 where the dtype holds them): the loss and its gradient sigmoid(x) -
    # label stay finite; 0 logits (log 2); a 0-dim logit
    for red in ("none", "mean", "sum"):
        for real in (True, False):
            for scale in (100.0, 1e4):
                yield _adv_sample(_saturated(device, dtype, scale), real, red, f"saturated-{scale:g}")
            yield _adv_sample(torch.zeros(3, device=device, dtype=dtype), real, red, "zero")
            yield _adv_sample(torch.tensor(2.5, device=device, dtype=dtype), real, red, "0-dim")


def _adv_errors(device):
    x = torch.rand(2, 1, 4, 4, device=device)
    S = lambda *a, **k: SampleInput(a, k, grad_keys=_NO_GRAD_KW)  # noqa: E731
    return [
        ErrorInput(S(x.long(), True), TypeError, "logits must be float"),
        ErrorInput(S([1.0], True), TypeError, "logits must be a Tensor"),
        ErrorInput(S(x, "yes"), TypeError, "target_is_real must be a bool"),
        ErrorInput(S(x, 2), TypeError, "target_is_real must be a bool"),
        ErrorInput(S(x, True, reduction="avg"), ValueError, "reduction must be"),
    ]


def _adv_bench(numel, device, dtype):
    """PatchGAN logits [B, 1, 30, 30], B from numel (at least one map)."""
    gen = torch.Generator().manual_seed(0)
    b = max(1, round(numel / 900))
    return _adv_sample(_logits((b, 1, 30, 30), device, dtype, gen), True, "mean", f"{b}x1x30x30")


def _bce_rows(x, real):
    """The mask loss op's arguments for x against a constant label (adversarial_loss's call)."""
    r = x.shape[0] if x.dim() else 1
    xr = x.reshape(r, 1, math.prod(x.shape[1:]))
    lab = torch.zeros(r, dtype=torch.int64, device=x.device)
    return xr, lab, torch.full((r, xr.shape[2]), 1.0 if real else 0.0, dtype=x.dtype, device=x.device)


def _adv_raw_calls(sample):
    xr, lab, t = _bce_rows(sample.args[0], sample.kwargs["target_is_real"])
    calls = []
    for per_pixel in (False, True):
        out = torch.ops.lossext.mask_bce(xr, lab, t, per_pixel)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(out)
        calls += [("mask_bce", (xr, lab, t, per_pixel)), ("mask_bce_backward", (g, xr, lab, t, per_pixel))]
    return calls


def _adv_via_discriminator(x, real):
    """adversarial_loss(x, real, 'mean') through ForegroundStageLoss.discriminator_loss, the
    other side's logits saturated at its label (+inf real, -inf fake: a term of exactly 0)."""
    other = torch.full((1,), math.inf if not real else -math.inf, dtype=x.dtype, device=x.device)
    m = LN.ForegroundStageLoss(1.0, 1.0).discriminator_loss
    return m, ((x, other) if real else (other, x)), {}


def _adv_module(sample):
    """No Module takes a label or a reduction: 'mean' reads back through the discriminator
    loss of ForegroundStageLoss; the other reductions are not covered (None)."""
    kw = sample.kwargs
    if kw.get("reduction", "mean") != "mean":
        return None
    return _adv_via_discriminator(sample.args[0], kw["target_is_real"])


def _adv_jit(sample):
    x = sample.args[0]  # the bench sample: real label, 'mean'
    xr, lab, t = _bce_rows(x, True)
    src = ("def f(x: Tensor, l: Tensor, t: Tensor) -> Tensor:\n"
           f"    return torch.ops.lossext.mask_bce(x, l, t, False).sum() / {x.numel()}\n")
    return src, (xr, lab, t)


def _adv_raw_errors(device):
    xr, lab, t = _bce_rows(torch.rand(3, 1, 4, 4, device=device), True)
    return [
        ("mask_bce", (xr, lab.int(), t, False), "'labels' must be int64"),
        ("mask_bce", (xr, lab, t.double(), False), "'mask_targets' has dtype"),
        ("mask_bce_backward", (torch.ones(2, device=device), xr, lab, t, False), r"'grad' must have shape \[3\]"),
    ]


def _adv_fuzz(draw, device):
    """adversarial_loss: logits of any shape (0-dim, empty, rarely 2^16 + 3) and layout with
    extremes (+-1e30 in float32), NaN and inf; either label as a bool or 0 / 1; at most one bad
    argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "adversarial_loss"
    bad = F.fault(draw, ["logits", "target_is_real", "reduction"])
    dt = F.dtype(draw)
    shp = F.shape(draw, 0, 3)
    big = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}[dt]
    x = F.tensor(draw, shp, dt, device, -8.0, 8.0, F.extremes(dt, big))
    vals = {"target_is_real": F.flag(draw), "reduction": F.reduction(draw)}
    error = None
    if bad == "reduction":
        vals["reduction"], error = F.reduction(draw, fn, bad=True)
    elif bad == "target_is_real":
        vals["target_is_real"], error = F.flag(draw, fn, "target_is_real", bad=True)
    elif bad == "logits":
        how = draw(st.sampled_from(["type", "dtype"]))
        if how == "type":
            x, error = F.not_a_tensor(draw, fn, "logits")
        else:
            x, error = F.not_float(draw, fn, "logits", shp, device)
    params, positional = F.signature_params(LF.adversarial_loss, R.adversarial_loss, (x,), vals)
    args, kwargs = F.arguments(draw, (x,), params, positional)
    case = F.FuzzCase(SampleInput(args, kwargs, f"{vals['reduction']}-{shp}", grad_keys=_NO_GRAD_KW), error, dtype=dt)
    if error is None:
        mag = float(x.detach().double().cpu().nan_to_num(0, 0, 0).abs().max()) if x.numel() else 0.0
        rtol, atol = _fuzz_tol(dt, math.prod(shp) if vals["reduction"] != "none" else 1)
        eps = torch.finfo(torch.float64 if dt == torch.float64 else torch.float32).eps
        case.tol = (rtol, atol + 4 * eps * mag)
        case.grad_terms = 1
    return case


ROWS = [
    OpInfo(
        name="masked_l1_loss",
        op=LF.masked_l1_loss, ref=R.masked_l1_loss, module=LN.ForegroundStageLoss,
        raw_ops=["masked_l1_sums", "masked_l1_sums_backward"],
        hyper=dict(alpha_f=1.0, beta_f=0.5),
        sample_inputs=_l1_samples, edge_inputs=_l1_edges, error_inputs=_l1_errors, bench_input=_l1_bench,
        raw_calls=_l1_raw_calls, module_call=_l1_module, jit_source=_l1_jit, raw_error_inputs=_l1_raw_errors,
        tol=_TOL, module_samples=_l1_modules, fuzz=_l1_fuzz, bench_ref=R.masked_l1_loss_composite,
        bench_generic=False, module_bad_hyper=("alpha_f", -1.0),
        empty_mean=0.0,  # an empty batch has both sides empty: (0, 0), never NaN
        # forward reads the image and the target (and the mask, a third of their size in the
        # bench's [1, 1, P] bool); backward reads them and writes the gradient
        bench_bytes={"forward": 2, "backward": 3, "full": 3},
    ),
    OpInfo(
        name="pose_regression_loss",
        op=LF.pose_regression_loss, ref=R.pose_regression_loss, module=LN.PoseTransformerLoss,
        raw_ops=["joints_mse_sums", "joints_mse_sums_backward"],
        hyper={},
        sample_inputs=_pose_samples, edge_inputs=_pose_edges, error_inputs=_pose_errors, bench_input=_pose_bench,
        raw_calls=_pose_raw_calls, module_call=_pose_module, jit_source=_pose_jit, raw_error_inputs=_pose_raw_errors,
        tol=_TOL, module_samples=_pose_modules, fuzz=_pose_fuzz, bench_ref=R.pose_regression_loss,
        bench_generic=False,
        bench_bytes={"forward": 2, "backward": 3, "full": 3},
    ),
    OpInfo(
        name="adversarial_loss",
        op=LF.adversarial_loss, ref=R.adversarial_loss, module=LN.ForegroundStageLoss,
        raw_ops=["mask_bce", "mask_bce_backward"],
        hyper=dict(alpha_f=1.0, beta_f=0.5),
        sample_inputs=_adv_samples, edge_inputs=_adv_edges, error_inputs=_adv_errors, bench_input=_adv_bench,
        raw_calls=_adv_raw_calls, module_call=_adv_module, jit_source=_adv_jit, raw_error_inputs=_adv_raw_errors,
        tol=_TOL, module_samples=lambda device, dtype: [],  # the stage Modules: masked_l1_loss's row
        fuzz=_adv_fuzz, bench_ref=R.adversarial_loss, bench_generic=False, module_bad_hyper=("beta_f", math.nan),
        # forward reads the logits (and a label map as large, the op's targets); backward
        # writes the gradient
        bench_bytes={"forward": 2, "backward": 3, "full": 3},
    ),
]
