"""OpInfo rows of dice_loss (joined to the family's OP_ROWS by opinfo.py).

dice_loss takes no ``reduction`` (smp's DiceLoss returns the mean, or weighted mean, over the
classes kept): the generic tests run their reduction loops once for it (OpInfo.has_reduction).
Every sample passes the target as a keyword argument, so that SampleInput.float_tensors() is
the logits alone: the target is never differentiable (dice_loss refuses a floating target that
requires grad), and the generic tests make every floating tensor a leaf.
"""
import math
import re

import torch
import torch.nn.functional as TF

from ..testing.opinfo import ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import reference as R

_MODES = ("binary", "multiclass", "multilabel")
_NO_GRAD_KW = ()  # the target is a keyword argument and takes no gradient


# ---- samples -------------------------------------------------------------------------------

def _labels(shape, c, device, gen, absent=None, dtype=torch.int64):
    lab = torch.randint(0, c, shape, generator=gen)
    if absent is not None:
        lab = torch.where(lab == absent, (lab + 1) % c, lab)
    return lab.to(device=device, dtype=dtype)


def _hard(shape, device, dtype, gen):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) > 0.5).to(device=device, dtype=dtype)


def _soft(shape, device, dtype, gen):
    return make_tensor(shape, device, dtype, 0.0, 1.0, gen)


def _with_ignored(t, value, gen, frac=0.25):
    """t with about frac of its entries set to `value` (ignore_index)."""
    hit = (torch.rand(t.shape, generator=gen) < frac).to(t.device)
    return torch.where(hit, torch.full_like(t, value), t)


def _S(logits, target, name, **kw):
    return SampleInput((logits,), dict(target=target, **kw), name, grad_keys=_NO_GRAD_KW)


def _samples(device, dtype, small=False):
    gen = torch.Generator().manual_seed(0)
    L = lambda *shape: make_tensor(shape, device, dtype, -3.0, 3.0, gen)  # noqa: E731
    out = []
    # the three modes first (the generic tests' first few small samples)
    out.append(_S(L(2, 3, 4, 5), _labels((2, 4, 5), 3, device, gen), "multiclass-int64"))
    out.append(_S(L(2, 1, 4, 4), _hard((2, 1, 4, 4), device, dtype, gen), "binary-B1HW", mode="binary"))
    out.append(_S(L(2, 4, 2, 3), _soft((2, 4, 2, 3), device, dtype, gen), "multilabel-soft", mode="multilabel"))
    out.append(_S(L(3, 1, 5, 3), _soft((3, 5, 3), device, dtype, gen), "binary-target-BHW", mode="binary"))
    out.append(_S(L(2, 5, 4), _hard((2, 1, 5, 4), device, dtype, gen), "binary-logits-BHW", mode="binary"))
    out.append(_S(L(2, 3, 3, 3), _hard((2, 3, 3, 3), device, dtype, gen), "multilabel-hard", mode="multilabel"))
    out.append(_S(L(2, 4, 2, 3), _labels((2, 2, 3), 4, device, gen, dtype=torch.int32), "multiclass-int32-classes",
                  classes=[0, 2]))
    out.append(_S(L(2, 3, 3, 3), _labels((2, 3, 3), 3, device, gen, dtype=torch.uint8), "multiclass-uint8-log",
                  log_loss=True))
    # probabilities as given (from_logits=False)
    p = make_tensor((2, 3, 3, 3), device, dtype, 0.0, 1.0, gen)
    out.append(_S(p, _labels((2, 3, 3), 3, device, gen), "multiclass-probabilities", from_logits=False))
    p = make_tensor((2, 1, 3, 5), device, dtype, 0.0, 1.0, gen)
    out.append(_S(p, _soft((2, 1, 3, 5), device, dtype, gen), "binary-probabilities-soft", mode="binary",
                  from_logits=False))
    out.append(_S(L(2, 4, 3, 2), _labels((2, 3, 2), 4, device, gen), "multiclass-smooth", smooth=1.0))
    out.append(_S(L(2, 2, 3, 4), _soft((2, 2, 3, 4), device, dtype, gen), "multilabel-soft-smooth-log",
                  mode="multilabel", smooth=0.5, log_loss=True))
    # ignore_index: 255 labels; binary / multilabel targets equal to ignore_index
    out.append(_S(L(2, 3, 3, 3), _with_ignored(_labels((2, 3, 3), 3, device, gen), 255, gen), "multiclass-ignore255",
                  ignore_index=255))
    out.append(_S(L(2, 1, 4, 5), _with_ignored(_hard((2, 1, 4, 5), device, dtype, gen), 255.0, gen),
                  "binary-ignore255", mode="binary", ignore_index=255))
    out.append(_S(L(2, 3, 3, 3), _with_ignored(_soft((2, 3, 3, 3), device, dtype, gen), -1.0, gen),
                  "multilabel-soft-ignore-1", mode="multilabel", ignore_index=-1))
    out.append(_S(L(2, 3, 3, 3), _with_ignored(_labels((2, 3, 3), 3, device, gen), -100, gen),
                  "multiclass-ignore-100", ignore_index=-100))
    # class weights (exact in float32, as smp stores them), with a subset of classes too
    out.append(_S(L(2, 4, 2, 3), _labels((2, 2, 3), 4, device, gen), "multiclass-class-weights",
                  class_weights=[0.5, 2.0, 1.25, 1.0]))
    out.append(_S(L(2, 3, 3, 3), _hard((2, 3, 3, 3), device, dtype, gen), "multilabel-classes-weights",
                  mode="multilabel", classes=[2, 0], class_weights=[1.0, 3.0, 0.25]))
    out.append(_S(L(2, 3, 3, 3), _labels((2, 3, 3), 3, device, gen), "multiclass-negative-class",
                  classes=[-1, 0]))
    # smp <= 0.3.4's formula
    out.append(_S(L(2, 3, 3, 3), _soft((2, 3, 3, 3), device, dtype, gen), "multilabel-classic-smooth",
                  mode="multilabel", smooth=0.5, formula="classic"))
    out.append(_S(L(2, 3, 3, 3), _labels((2, 3, 3), 3, device, gen), "multiclass-classic-log",
                  formula="classic", log_loss=True))
    # a class absent from the target (contributes 0, counts in the mean)
    out.append(_S(L(2, 4, 3, 2), _labels((2, 3, 2), 4, device, gen, absent=2), "multiclass-absent-class"))
    out.append(_S(L(2, 4, 3, 2), _labels((2, 3, 2), 4, device, gen, absent=1), "multiclass-absent-class-kept",
                  classes=[1, 3]))
    # 3-D spatial, odd sizes
    out.append(_S(L(2, 3, 2, 2, 2), _labels((2, 2, 2, 2), 3, device, gen), "multiclass-3d"))
    out.append(_S(L(1, 1, 3, 2, 5), _hard((1, 1, 3, 2, 5), device, dtype, gen), "binary-3d", mode="binary"))
    out.append(_S(L(3, 5, 7, 9), _with_ignored(_labels((3, 7, 9), 5, device, gen), 255, gen),
                  "multiclass-odd-ignore-log", ignore_index=255, log_loss=True))
    # non-contiguous logits: channels_last, a strided slice, a transposed target
    out.append(_S(L(2, 3, 3, 3).to(memory_format=torch.channels_last), _labels((2, 3, 3), 3, device, gen),
                  "multiclass-channels-last"))
    x = L(2, 6, 3, 6)[:, ::2, :, 1::2]
    out.append(_S(x, _soft((2, 3, 3, 3), device, dtype, gen), "multilabel-strided", mode="multilabel"))
    out.append(_S(L(2, 1, 5, 3).transpose(2, 3), _hard((2, 1, 5, 3), device, dtype, gen).transpose(2, 3),
                  "binary-transposed", mode="binary"))
    out.append(_S(L(2, 3, 3, 6)[..., ::2], _labels((2, 3, 3), 3, device, gen).transpose(1, 2),
                  "multiclass-strided-transposed-labels"))
    # an empty batch, empty images: no class has a target pixel, so 0
    out.append(_S(L(0, 3, 4, 4), _labels((0, 4, 4), 3, device, gen), "multiclass-empty"))
    out.append(_S(L(2, 3, 0, 4), _labels((2, 0, 4), 3, device, gen), "multiclass-no-pixels", log_loss=True))
    out.append(_S(L(0, 1, 4, 4), _hard((0, 1, 4, 4), device, dtype, gen), "binary-empty", mode="binary"))
    if not small:
        # more pixels than one CPU chunk (8192) per class row, several chunks and a ragged tail
        out.append(_S(L(2, 3, 91, 91), _labels((2, 91, 91), 3, device, gen), "multiclass-multichunk"))
        out.append(_S(L(1, 1, 100, 90), _soft((1, 1, 100, 90), device, dtype, gen), "binary-multichunk-soft",
                      mode="binary"))
        out.append(_S(L(2, 21, 16, 16), _with_ignored(_labels((2, 16, 16), 21, device, gen), 255, gen),
                      "multiclass-21-classes", ignore_index=255))
    return out


def _edges(device, dtype):
    gen = torch.Generator().manual_seed(7)
    out = []
    big = torch.tensor([100.0, -100.0], dtype=torch.float64)
    # logits +-100: saturated softmax / sigmoid, finite values and gradients
    x = big[torch.randint(0, 2, (2, 3, 2, 3), generator=gen)].to(device, dtype)
    lab = _labels((2, 2, 3), 3, device, gen)
    for log_loss in (False, True):
        out.append(_S(x, lab, f"multiclass-pm100-log{log_loss}", log_loss=log_loss))
    out.append(_S(x, lab, "multiclass-pm100-class-subset", classes=[1]))
    xb = big[torch.randint(0, 2, (2, 1, 3, 3), generator=gen)].to(device, dtype)
    hard, soft = _hard((2, 1, 3, 3), device, dtype, gen), _soft((2, 1, 3, 3), device, dtype, gen)
    for name, t in (("hard", hard), ("soft", soft), ("match", (xb > 0).to(dtype))):
        out.append(_S(xb, t, f"binary-pm100-{name}", mode="binary"))
        out.append(_S(xb, t, f"binary-pm100-{name}-log", mode="binary", log_loss=True))
    out.append(_S(x, _soft(x.shape, device, dtype, gen), "multilabel-pm100-soft", mode="multilabel"))
    # every pixel ignored: no class has target pixels, the loss is 0
    L = lambda *shape: make_tensor(shape, device, dtype, -3.0, 3.0, gen)  # noqa: E731
    full = lambda shape, v, dt=dtype: torch.full(shape, v, device=device, dtype=dt)  # noqa: E731
    out.append(_S(L(2, 3, 3, 3), full((2, 3, 3), 255, torch.int64), "multiclass-all-ignored", ignore_index=255))
    out.append(_S(L(2, 1, 3, 3), full((2, 1, 3, 3), -1.0), "binary-all-ignored", mode="binary", ignore_index=-1))
    out.append(_S(L(2, 2, 3, 3), full((2, 2, 3, 3), 0.0), "multilabel-ignore-0-all", mode="multilabel", ignore_index=0))
    # a single pixel
    out.append(_S(L(1, 3, 1, 1), full((1, 1, 1), 2, torch.int64), "multiclass-one-pixel"))
    out.append(_S(L(1, 1, 1, 1), full((1, 1, 1, 1), 1.0), "binary-one-pixel-log", mode="binary", log_loss=True))
    # one class: the softmax is 1 everywhere (loss 0, gradient 0)
    out.append(_S(L(2, 1, 3, 3), full((2, 3, 3), 0, torch.int64), "multiclass-one-class"))
    # probabilities equal to the one-hot target (|p - t| = 0 everywhere: its kink), loss 0
    lab = _labels((2, 3, 3), 3, device, gen)
    onehot = TF.one_hot(lab, 3).permute(0, 3, 1, 2).to(dtype)
    out.append(_S(onehot, lab, "multiclass-perfect-probabilities", from_logits=False))
    out.append(_S(onehot, lab, "multiclass-perfect-probabilities-classic", formula="classic", from_logits=False))
    # eps above the scores and denominators (both clamps active)
    x = L(2, 3, 3, 3)
    out.append(_S(x, _labels((2, 3, 3), 3, device, gen), "multiclass-large-eps-log", log_loss=True, eps=0.3))
    out.append(_S(x, _labels((2, 3, 3), 3, device, gen), "multiclass-eps-above-denominators", eps=50.0))
    return out


# ---- bad calls -----------------------------------------------------------------------------

def _errors(device):
    gen = torch.Generator().manual_seed(1)
    x = make_tensor((2, 4, 3, 3), device, torch.float32, -3, 3, gen)
    lab = _labels((2, 3, 3), 4, device, gen)
    xb = make_tensor((2, 1, 3, 3), device, torch.float32, -3, 3, gen)
    tb = _hard((2, 1, 3, 3), device, torch.float32, gen)
    tm = _hard((2, 4, 3, 3), device, torch.float32, gen)
    S = lambda logits, **k: SampleInput((logits,), k, grad_keys=_NO_GRAD_KW)  # noqa: E731
    E = [
        ErrorInput(S(x, target=lab, mode="mc"), ValueError, "mode must be 'binary', 'multiclass' or 'multilabel'"),
        ErrorInput(S(x, target=lab, mode=None), ValueError, "mode must be 'binary', 'multiclass' or 'multilabel'"),
        ErrorInput(S(x, target=lab, formula="dice"), ValueError, "formula must be 'semimetric' or 'classic'"),
        ErrorInput(S(x, target=lab, formula=None), ValueError, "formula must be 'semimetric' or 'classic'"),
        ErrorInput(S(xb, target=tb, mode="binary", classes=[0]), ValueError,
                   "classes cannot be used with mode='binary'"),
        ErrorInput(S(xb, target=tb, mode="binary", class_weights=[1.0]), ValueError,
                   "class_weights cannot be used with mode='binary'"),
        ErrorInput(S(xb, target=tb[:, :, :2], mode="binary"), ValueError,
                   r"target has shape \[2, 1, 2, 3\] but binary logits have shape"),
        ErrorInput(S(x, target=lab[:, :2]), ValueError, r"target must have shape \[2, 3, 3\]"),
        ErrorInput(S(x, target=tm[:, :3], mode="multilabel"), ValueError, "target must have the logits' shape"),
        ErrorInput(S(x, target=lab[:1]), ValueError, "target must have the batch size 2 of logits first"),
        ErrorInput(S(x, target=lab.float()), TypeError, "mode='multiclass' needs integer class labels as target"),
        ErrorInput(S(x, target=lab.bool()), TypeError, "mode='multiclass' needs integer class labels as target"),
        ErrorInput(S(x, target=tm.to(torch.complex64), mode="multilabel"), TypeError, "target must be real"),
        ErrorInput(S(x, target=tm.clone().requires_grad_(True), mode="multilabel"), ValueError,
                   "target must not require grad"),
        ErrorInput(S(x, target=lab.to("meta")), ValueError, "target is on meta"),
        ErrorInput(S(x, target=[0, 1]), TypeError, "target must be a Tensor"),
        ErrorInput(S(x.long(), target=lab), TypeError, "logits must be float"),
        ErrorInput(S([1.0], target=lab), TypeError, "logits must be a Tensor"),
        ErrorInput(S(x[:, 0, 0, 0], target=lab[:, 0, 0]), ValueError, r"logits must be \[B, C, \.\.\.\]"),
        ErrorInput(S(x[:, :0], target=lab), ValueError, "logits have no classes"),
        ErrorInput(S(x, target=lab, classes=[4]), IndexError, r"classes has value 4, outside \[0, 4\)"),
        ErrorInput(S(x, target=lab, classes=[1.5]), TypeError, "classes must be an int"),
        ErrorInput(S(x, target=lab, class_weights=[1.0, 2.0]), ValueError,
                   r"class_weights must have 4 values \(one per class\), got 2"),
        ErrorInput(S(x, target=lab, class_weights=["a"] * 4), TypeError, "class_weights must be a real number"),
        ErrorInput(S(x, target=lab, smooth=-1.0), ValueError, "smooth must be >= 0"),
        ErrorInput(S(x, target=lab, smooth=math.inf), ValueError, "smooth must be finite"),
        ErrorInput(S(x, target=lab, smooth="1"), TypeError, "smooth must be a real number"),
        ErrorInput(S(x, target=lab, eps=0.0), ValueError, "eps must be > 0"),
        ErrorInput(S(x, target=lab, ignore_index=1.5), TypeError, "ignore_index must be an int"),
        ErrorInput(S(x, target=lab, log_loss="yes"), TypeError, "log_loss must be a bool"),
        ErrorInput(S(x, target=lab, from_logits=2), TypeError, "from_logits must be a bool"),
    ]
    if device == "cpu":  # CUDA never indexes with a bad label: the loss is NaN
        bad = lab.clone()
        bad[1, 2, 0] = 4
        E.append(ErrorInput(S(x, target=bad), IndexError, r"target has value 4 at flat index 15, outside \[0, 4\)"))
        bad = lab.clone()
        bad[0, 0, 1] = -1
        E.append(ErrorInput(S(x, target=bad), IndexError, r"target has value -1 at flat index 1"))
        E.append(ErrorInput(S(x, target=bad, ignore_index=255), IndexError, r"target has value -1 at flat index 1"))
    return E


# ---- benchmark input, raw calls, Module, TorchScript -----------------------------------------

_BENCH_C = 4


def _bench(numel, device, dtype):
    """Multiclass int64 labels, [1, 4, P] logits with P odd (a ragged last chunk)."""
    gen = torch.Generator().manual_seed(0)
    p = max(1, numel // _BENCH_C) | 1
    x = make_tensor((1, _BENCH_C, p), device, dtype, -3.0, 3.0, gen)
    return _S(x, _labels((1, p), _BENCH_C, device, gen), f"1x{_BENCH_C}x{p}")


def _raw_inputs(sample):
    """(logits [B, C, P], target, multiclass, from_logits, ignore_index) as dice_loss passes them."""
    x, kw = sample.args[0], sample.kwargs
    t, mode = kw["target"], kw.get("mode", "multiclass")
    B = x.shape[0]
    if mode == "binary":
        P = math.prod(x.shape[1:])
        x, t = x.reshape(B, 1, P), t.reshape(B, 1, P).to(x.dtype)
    else:
        C, P = x.shape[1], math.prod(x.shape[2:])
        x = x.reshape(B, C, P)
        t = t.reshape(B, P).long() if mode == "multiclass" else t.reshape(B, C, P).to(x.dtype)
    return x, t, mode == "multiclass", bool(kw.get("from_logits", True)), kw.get("ignore_index")


def _raw_calls(sample):
    """The sample's calls, then the other kind's on the same logits (the one-hot labels as a
    multilabel target, or the hard target's first class as labels): opcheck takes only a few
    samples of a row without a reduction, and sees both kernels."""
    x, t, mc, fl, ign = _raw_inputs(sample)
    if mc:
        lab = t if ign is None else torch.where(t == ign, torch.zeros_like(t), t)
        other = (x, TF.one_hot(lab, x.shape[1]).permute(0, 2, 1).to(x.dtype), False, fl, None)
    else:
        other = (x, (t > 0.5).long().argmax(1), True, fl, None)
    s = torch.ops.lossext.dice_sums(x, t, mc, fl, ign)
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s.device, s.dtype)
    g2 = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s.device, s.dtype)
    return [("dice_sums", (x, t, mc, fl, ign)), ("dice_sums_backward", (g, x, t, mc, fl, ign)),
            ("dice_sums", other), ("dice_sums_backward", (g2, *other))]


def _module(sample):
    kw = dict(sample.kwargs)
    t = kw.pop("target")
    return LN.DiceLoss(**kw), (sample.args[0], t), {}


def _modules(device, dtype):
    gen = torch.Generator().manual_seed(0)
    x = make_tensor((2, 3, 6, 5), device, dtype, -3, 3, gen)
    lab = _labels((2, 6, 5), 3, device, gen)
    xb = make_tensor((2, 1, 5, 6), device, dtype, -3, 3, gen)
    tb = (torch.rand(2, 1, 5, 6, generator=gen) > 0.5).to(device, torch.uint8)  # integer: never a leaf
    xm = make_tensor((2, 3, 4, 5), device, dtype, -3, 3, gen)
    tm = torch.randint(-1, 2, (2, 3, 4, 5), generator=gen).to(device)  # 0/1 and ignored -1
    return [(LN.DiceLoss(), (x, lab), {}),
            (LN.DiceLoss("binary", log_loss=True, smooth=1.0), (xb, tb), {}),
            (LN.DiceLoss("multilabel", classes=[0, 2], ignore_index=-1, class_weights=[1.0, 2.0, 0.5],
                         formula="classic"), (xm, tm), {})]


def _jit(sample):
    """The bench sample (multiclass, defaults, 'mean'): dice_loss's arithmetic on the raw sums."""
    x, t, mc, fl, ign = _raw_inputs(sample)
    src = ("def f(x: Tensor, t: Tensor) -> Tensor:\n"
           "    S = torch.ops.lossext.dice_sums(x, t, True, True, None).sum(0)\n"
           "    Sp, St, Sabs = S[:, 0], S[:, 1], S[:, 3]\n"
           "    inter = (Sp + St - Sabs) * 0.5\n"
           "    score = (inter + 0.0) / ((Sp + St) * 0.5 + 0.0).clamp_min(1e-07)\n"
           "    loss = (1.0 - score) * (St > 0).to(score.dtype)\n"
           "    return loss.mean().to(x.dtype)\n")
    return src, (x, t)


def _raw_errors(device):
    gen = torch.Generator().manual_seed(1)
    x = make_tensor((2, 3, 4), device, torch.float32, -3, 3, gen)
    lab = _labels((2, 4), 3, device, gen)
    y = _soft((2, 3, 4), device, torch.float32, gen)
    g = torch.ones(2, 3, 4, device=device)
    rows = [
        ("dice_sums", (x.long(), lab, True, True, None), "'logits' must be float16, bfloat16, float32 or float64"),
        ("dice_sums", (x[0, 0], lab, True, True, None), r"'logits' must be \[B, C, \.\.\.\]"),
        ("dice_sums", (x, lab.int(), True, True, None), "'target' must be int64 class labels"),
        ("dice_sums", (x, lab[:, :2], True, True, None), r"'target' has shape \[2, 2\] but logits has shape"),
        ("dice_sums", (x, y.double(), False, True, None), "'target' has dtype Double but logits has dtype Float"),
        ("dice_sums", (x, y[:, :2], False, True, None), r"'target' has shape \[2, 2, 4\]"),
        ("dice_sums_backward", (g.double(), x, lab, True, True, None), "'grad' must have dtype Float"),
        ("dice_sums_backward", (g[..., :3], x, lab, True, True, None), r"'grad' must have shape \[2, 3, 4\]"),
        ("dice_sums_backward", (g, x, lab[:1], True, True, None), "'target' has shape"),
    ]
    if device == "cpu":
        bad = lab.clone()
        bad[1, 2] = 3
        rows.append(("dice_sums", (x, bad, True, True, None),
                     r"'target' has value 3 at flat index 6, outside \[0, 3\)"))
        rows.append(("dice_sums_backward", (g, x, bad, True, False, None), "'target' has value 3 at flat index 6"))
    return rows


_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6), torch.float16: (1e-2, 1e-3),
        torch.bfloat16: (5e-2, 1e-2)}


# ---- fuzz ------------------------------------------------------------------------------------

def _nan_ref(logits, target, *args, **kwargs):
    """CUDA never indexes with a bad label: every class's S_p of that sample is NaN, so the loss."""
    return R.dice_loss(logits, torch.zeros_like(target), *args, **kwargs) + math.nan


def _condition(x, t, mode, from_logits, ignore_index, smooth, eps, log_loss, formula):
    """max over the classes with target pixels of (sum of the magnitudes the score's sums add) /
    (its denominator), divided by the score for log_loss: the loss's error in units of the
    sums' relative rounding (float64, from the reference's probabilities)."""
    with torch.no_grad():
        p, tt = R._dice_inputs(x.detach().cpu(), t.detach().cpu(), mode, from_logits, ignore_index)
        dims = (0, 2)
        sp, st, spt, sab = p.sum(dims), tt.sum(dims), (p * tt).sum(dims), (p - tt).abs().sum(dims)
        if formula == "semimetric":
            num, den = (sp + st - sab) / 2 + smooth, (sp + st) / 2 + smooth
        else:
            num, den = 2 * spt + smooth, sp + st + smooth
        den = den.clamp_min(eps)
        cond = (sp + st + sab + 2 * spt + smooth) / den
        if log_loss:
            cond = cond / (num / den).clamp_min(eps)
        cond = torch.where(st > 0, cond, torch.zeros_like(cond)).nan_to_num(0.0, 0.0, 0.0)
    return float(cond.max()) if cond.numel() else 0.0


def _fuzz(draw, device):
    """dice_loss: every mode and logits layout, logits (or probabilities) with extremes, NaN,
    inf; multiclass labels of any integer dtype (bad ones sometimes), hard, soft or integer
    targets otherwise, ignore_index among them; classes, class_weights, smooth, eps, both
    formulas; at most one bad argument. The target is always a keyword (never a leaf)."""
    from ..testing import fuzz as F
    st = F.st
    fn = "dice_loss"
    bad = F.fault(draw, ["logits", "target", "label_values", "mode", "classes", "class_weights", "smooth", "eps",
                         "ignore_index", "formula", "log_loss", "from_logits"])
    dt = F.dtype(draw)
    mode = draw(st.sampled_from(_MODES))
    if bad == "label_values":
        mode = "multiclass"
    large = F.rare(draw, F.LARGE_ONE_IN)
    b = F.size(draw, sizes=(0, 1, 2, 3, 1, 2))
    c = 1 if mode == "binary" else F.size(draw, sizes=(1, 2, 3, 5, 21, 2, 4))
    sp = F.shape(draw, 0, 3, large=large)
    if large:
        c, b = min(c, 3), min(b, 2)
    lshape = (b, c, *sp)
    tshape = (b, *sp) if mode == "multiclass" else lshape
    if mode == "binary":  # logits [B, 1, ...], target [B, 1, ...] or [B, ...]; logits [B, ...], target [B, 1, ...]
        how = draw(st.sampled_from(["B1-B1", "B1-B", "B-B1"]))
        lshape = (b, *sp) if how == "B-B1" else lshape
        tshape = (b, *sp) if how == "B1-B" else (b, 1, *sp)
    pixels = b * math.prod(sp)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))

    # hyper-parameters (valid)
    from_logits = F.flag(draw)
    log_loss = F.flag(draw)
    formula = draw(st.sampled_from(["semimetric", "classic"]))
    smooth = F.number_as(draw, draw(st.sampled_from([0.0, 0.0, 1.0, 1e-5, 0.5, 100.0])))
    eps_real = F.Real("eps", "positive", 1e-12, 1e-2, common=(1e-7, 1e-7))
    eps = eps_real.valid(draw)
    if mode == "multiclass":
        ign_choices = [None, None, 255, -100, -1, 0, c - 1, 2 ** 62]
    else:
        ign_choices = [None, None, -1, 0, 1, 255]
    ignore_index = draw(st.sampled_from(ign_choices))
    if ignore_index is not None:
        ignore_index = F.integer(draw, fn, "ignore_index", [ignore_index])
    classes = None
    if mode != "binary" and draw(st.booleans()):
        k = draw(st.integers(1, min(c, 4)))
        classes = [draw(st.integers(-c, c - 1)) for _ in range(k)]
        if draw(st.booleans()):
            classes = [F.integer(draw, fn, "classes", [v]) for v in classes]
        elif F.rare(draw, 4):
            classes = torch.tensor(classes)
    class_weights = None
    if mode != "binary" and draw(st.booleans()):
        class_weights = [float(v) for v in F.values(draw, c, 0.1, 3.0)]
        if F.rare(draw, 4):
            class_weights = torch.tensor(class_weights)

    # logits, or probabilities as given
    big = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}[dt]
    if from_logits:
        x = F.tensor(draw, lshape, dt, device, -6.0, 6.0, F.extremes(dt, big))
    else:
        x = F.tensor(draw, lshape, dt, device, 0.0, 1.0, [0.0, 1.0, 0.5, math.nan, math.inf])

    # target
    first = None
    n = math.prod(tshape)
    if mode == "multiclass":
        lab = torch.randint(0, max(c, 1), (n,), generator=gen)
        if ignore_index is not None and n and draw(st.booleans()):
            hit = torch.rand(n, generator=gen) < draw(st.sampled_from([0.2, 0.5, 1.0]))
            lab = torch.where(hit, torch.full_like(lab, int(ignore_index)), lab)
        if bad == "label_values" and n:
            outside = [v for v in (c, c + 1, -1, -c - 1, c + 1000, F.INT64_MIN, F.INT64_MAX)
                       if ignore_index is None or v != int(ignore_index)]
            for _ in range(draw(st.integers(1, min(3, n)))):
                lab[draw(st.integers(0, n - 1))] = draw(st.sampled_from(outside))
            bad_at = (lab < 0) | (lab >= c)
            if ignore_index is not None:
                bad_at &= lab != int(ignore_index)
            i = int(bad_at.nonzero()[0, 0])
            first = (i, int(lab[i]))
        fits = [d for d in (torch.uint8, torch.int8, torch.int16, torch.int32)
                if n and torch.iinfo(d).min <= int(lab.min()) and int(lab.max()) <= torch.iinfo(d).max]
        tdt = draw(st.sampled_from([torch.int64] * 3 + fits))
        t = lab.reshape(tshape).to(device=device, dtype=tdt)
        if len(tshape) >= 2 and draw(st.booleans()):  # a transposed view (the logical order is the same)
            t = t.transpose(0, -1).contiguous().transpose(0, -1)
    else:
        hard = draw(st.booleans())
        kinds = [dt, dt, F.other_dtype(draw, dt)] + ([torch.int64, torch.uint8, torch.bool] if hard else [])
        tdt = draw(st.sampled_from(kinds))
        stride, offset, storage = F.layout(draw, tshape)
        v = F.values(draw, storage, 0.0, 1.0)
        if hard:
            v = (v > 0.5).double()
        elif tdt.is_floating_point:  # values both sides read alike: exact in the logits' dtype and the target's
            coarse = dt if torch.finfo(dt).eps > torch.finfo(tdt).eps else tdt
            v = v.to(coarse).double()
        ign_ok = ignore_index is not None and (tdt.is_floating_point or (tdt == torch.int64) or
                                               (tdt == torch.uint8 and 0 <= int(ignore_index) <= 255))
        if ign_ok and tdt != torch.bool and storage and draw(st.booleans()):
            hit = torch.rand(storage, generator=gen) < draw(st.sampled_from([0.2, 1.0]))
            v = torch.where(hit, torch.full_like(v, float(int(ignore_index))), v)
        t = v.to(device=device, dtype=tdt).as_strided(tshape, stride, offset)

    vals = {"target": t, "mode": mode, "classes": classes, "log_loss": log_loss, "from_logits": from_logits,
            "smooth": smooth, "eps": eps, "ignore_index": ignore_index, "class_weights": class_weights,
            "formula": formula}
    error = None
    if bad == "mode":
        vals["mode"] = draw(st.sampled_from(["mc", "Binary", "", None, 0]))
        error = ValueError, (rf"^{fn}: mode must be 'binary', 'multiclass' or 'multilabel', "
                             rf"got {re.escape(repr(vals['mode']))}$")
    elif bad == "formula":
        vals["formula"] = draw(st.sampled_from(["dice", "", "SEMIMETRIC", None, 1]))
        error = ValueError, (rf"^{fn}: formula must be 'semimetric' or 'classic', "
                             rf"got {re.escape(repr(vals['formula']))}$")
    elif bad in ("log_loss", "from_logits"):
        vals[bad], error = F.flag(draw, fn, bad, bad=True)
    elif bad == "smooth":
        how = draw(st.sampled_from(["type", "nonfinite", "negative"]))
        if how == "type":
            vals["smooth"] = draw(st.sampled_from(["2.0", None, 1j, True, [1.0]]))
            error = TypeError, rf"^{fn}: smooth must be a real number, got {type(vals['smooth']).__name__}\b"
        elif how == "nonfinite":
            vals["smooth"] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
            error = ValueError, rf"^{fn}: smooth must be finite, got {vals['smooth']}$"
        else:
            vals["smooth"] = draw(st.sampled_from([-1.0, -1e-300, -100.0]))
            error = ValueError, rf"^{fn}: smooth must be >= 0, got {re.escape(str(vals['smooth']))}$"
    elif bad == "eps":
        vals["eps"], error = eps_real.invalid(draw, fn)
    elif bad == "ignore_index":
        vals["ignore_index"], error = F.integer(draw, fn, "ignore_index", bad=True, optional=True)
    elif bad == "classes":
        if mode == "binary":
            vals["classes"] = [0]
            error = ValueError, rf"^{fn}: classes cannot be used with mode='binary'$"
        elif draw(st.booleans()):
            v = draw(st.sampled_from([c, c + 3, -c - 1, 2 ** 40]))
            vals["classes"] = [0, v] if draw(st.booleans()) else [v]
            error = IndexError, rf"^{fn}: classes has value {v}, outside \[0, {c}\)$"
        else:
            v = draw(st.sampled_from([1.5, "0", None, True]))
            vals["classes"] = [v]
            error = TypeError, rf"^{fn}: classes must be an int, got {type(v).__name__}\b"
    elif bad == "class_weights":
        if mode == "binary":
            vals["class_weights"] = [1.0]
            error = ValueError, rf"^{fn}: class_weights cannot be used with mode='binary'$"
        elif draw(st.booleans()):
            k = draw(st.sampled_from([0, c - 1, c + 1, 2 * c + 1]))
            k = k if k != c else c + 1
            vals["class_weights"] = [1.0] * k
            error = ValueError, rf"^{fn}: class_weights must have {c} values \(one per class\), got {k}$"
        else:
            v = draw(st.sampled_from(["1.0", None, True]))
            vals["class_weights"] = [v] * c
            error = TypeError, rf"^{fn}: class_weights must be a real number, got {type(v).__name__}\b"
    elif bad == "label_values" and first is not None and device == "cpu":
        error = IndexError, rf"^{fn}: target has value {first[1]} at flat index {first[0]}, outside \[0, {c}\)"
    elif bad == "logits":
        how = draw(st.sampled_from(["type", "dtype", "dims"] + ([] if mode == "binary" else ["no-classes"])))
        if how == "type":
            x, error = F.not_a_tensor(draw, fn, "logits")
        elif how == "dtype":
            x, error = F.not_float(draw, fn, "logits", lshape, device)
        elif how == "dims":
            x = torch.zeros(() if mode == "binary" else draw(st.sampled_from([(), (3,)])), dtype=dt, device=device)
            error = ValueError, rf"^{fn}: logits must be \[B, C, \.\.\.\], got shape"
        else:
            x = torch.zeros((b, 0, *sp), dtype=dt, device=device)
            if mode == "multilabel":
                vals["target"] = torch.zeros((b, 0, *sp), dtype=dt, device=device)
            vals["classes"], vals["class_weights"] = None, None
            error = ValueError, rf"^{fn}: logits have no classes \(shape"
    elif bad == "target":
        hows = ["type", "device", "shape", "batch"] + (["dtype"] if mode == "multiclass"
                                                        else ["requires_grad", "complex"])
        how = draw(st.sampled_from(hows))
        if how == "type":
            vals["target"], error = F.not_a_tensor(draw, fn, "target")
        elif how == "device":
            vals["target"], error = F.on_meta(fn, "target", x, "logits", shp=tshape, dt=t.dtype)
        elif how == "batch":
            vals["target"] = torch.zeros((b + 1, *tshape[1:]), dtype=t.dtype, device=device)
            error = ValueError, rf"^{fn}: target must have the batch size {b} of logits first, got shape"
        elif how == "dtype":
            vals["target"] = t.to(draw(st.sampled_from([torch.float32, torch.float64, torch.bool])))
            error = TypeError, (rf"^{fn}: mode='multiclass' needs integer class labels as target, "
                                rf"got {re.escape(str(vals['target'].dtype))}$")
        elif how == "requires_grad":
            vals["target"] = torch.zeros(tshape, dtype=dt, device=device, requires_grad=True)
            error = ValueError, rf"^{fn}: target must not require grad"
        elif how == "complex":
            vals["target"] = torch.zeros(tshape, dtype=torch.complex64, device=device)
            error = TypeError, rf"^{fn}: target must be real, got torch.complex64$"
        elif mode == "binary":
            if pixels:
                vals["target"] = torch.zeros((b, 1, *sp, 2), dtype=t.dtype, device=device)
                error = ValueError, rf"^{fn}: target has shape .* but binary logits have shape"
        else:
            o = (b, *tshape[1:], 2) if draw(st.booleans()) or len(tshape) < 2 else \
                (b, *[s + 1 if i == 0 else s for i, s in enumerate(tshape[1:])])
            vals["target"] = torch.zeros(o, dtype=t.dtype, device=device)
            error = ValueError, (rf"^{fn}: target must have shape" if mode == "multiclass"
                                 else rf"^{fn}: target must have the logits' shape")

    # keywords only (the target must never be positional: it would be a leaf); defaults sometimes left out
    defaults = dict(mode="multiclass", classes=None, log_loss=False, from_logits=True, smooth=0.0, eps=1e-7,
                    ignore_index=None, class_weights=None, formula="semimetric")
    kwargs = {"target": vals["target"]}
    for k, d in defaults.items():
        if F._is_default(vals[k], d) and draw(st.booleans()):
            continue
        kwargs[k] = vals[k]
    case = F.FuzzCase(SampleInput((x,), kwargs, f"{mode}-{tuple(lshape)}-{formula}", grad_keys=_NO_GRAD_KW), error,
                      dtype=dt)
    if error is None:
        rtol, atol = _TOL[dt]
        acc = torch.float64 if dt == torch.float64 else torch.float32
        eps_acc = torch.finfo(acc).eps
        nonfinite = x.numel() > 0 and not bool(x.detach().isfinite().all())
        if first is not None:  # bad labels on CUDA: NaN
            case.ref = _nan_ref
            case.grads = False
            return case
        cond = _condition(x.double(), t if mode == "multiclass" else t.double(), mode, bool(from_logits),
                          None if ignore_index is None else int(ignore_index), float(smooth), float(eps),
                          bool(log_loss), formula)
        case.tol = (rtol, atol + 16 * eps_acc * cond)
        case.grad_terms = int(16 * max(c, 1) * max(cond, 1.0))
        if nonfinite:
            case.grads = False
    return case


ROWS = [
    OpInfo(
        name="dice_loss",
        op=LF.dice_loss, ref=R.dice_loss, module=LN.DiceLoss,
        raw_ops=["dice_sums", "dice_sums_backward"],
        hyper=dict(mode="multiclass", classes=None, log_loss=False, from_logits=True, smooth=0.0, ignore_index=None,
                   eps=1e-7, class_weights=None, formula="semimetric"),
        sample_inputs=_samples, edge_inputs=_edges, error_inputs=_errors, bench_input=_bench,
        raw_calls=_raw_calls, module_call=_module, jit_source=_jit, raw_error_inputs=_raw_errors, tol=_TOL,
        module_samples=_modules, fuzz=_fuzz, bench_ref=R.dice_loss_smp, bench_generic=False,
        module_bad_hyper=("smooth", -1.0),
        # every class of an empty batch (or with no target pixel) contributes 0 (smp's rule; smp
        # itself cannot reshape an empty batch)
        empty_mean=0.0,
        # forward reads the logits (and B P int64 labels: half a float32 per element at C = 4,
        # left out of these whole multiples); backward reads them again and writes the gradient
        bench_bytes={"forward": 1, "backward": 2, "full": 2},
    ),
]
