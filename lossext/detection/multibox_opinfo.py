"""OpInfo rows of the multibox losses (ssd_multibox_loss, refinedet_multibox_loss; issue 12).

The losses return several tensors; the generic tests take one, so each row's op, reference and
Modules return the sum of the terms (the training loss: a scalar, 'none' [B]). Each term has
its own head, so the gradients still check every term; tests/test_detection.py compares the
terms one by one. match_priors (integer matches, no gradient) has its own tests in tests/test_detection.py.
"""
import math
from typing import Tuple

import torch
from torch import Tensor

from ..testing.opinfo import ErrorInput, OpInfo, SampleInput, make_tensor
from . import functional as LF
from . import modules as LN
from . import multibox_composite as MC
from . import multibox_reference as MR

_MATCHING = {"bipartite": 0, "ssd_pytorch": 1}
_DEFAULTS = dict(overlap_thresh=0.5, neg_pos_ratio=3.0, neg_overlap=0.5, variances=(0.1, 0.2))


# ---- inputs ------------------------------------------------------------------------------------

def grid_priors(sizes=(4, 2), scales=(0.3, 0.6), ratios=(1.0, 2.0, 0.5), device="cpu"):
    """SSD-style priors [P, 4] (cx, cy, w, h): per feature map k of sizes[k]^2 cells, one box per
    aspect ratio at scale scales[k] (PriorBox without clipping)."""
    rows = []
    for f, s in zip(sizes, scales):
        for i in range(f):
            for j in range(f):
                for r in ratios:
                    rows.append(((j + 0.5) / f, (i + 0.5) / f, s * math.sqrt(r), s / math.sqrt(r)))
    return torch.tensor(rows, dtype=torch.float64, device=device)


def ssd300_priors(device="cpu"):
    """SSD300's 8732 priors (Liu et al.: feature maps 38, 19, 10, 5, 3, 1; ssd.pytorch's
    config's min/max sizes and aspect ratios)."""
    fmaps, steps = (38, 19, 10, 5, 3, 1), (8, 16, 32, 64, 100, 300)
    mins, maxs = (30, 60, 111, 162, 213, 264), (60, 111, 162, 213, 264, 315)
    ars = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    return _priors(fmaps, steps, mins, maxs, ars, 300, device)


def refinedet320_priors(device="cpu"):
    """RefineDet320's 6375 priors (the authors' VGG16_VOC2012_320.py: min sizes 32..256, steps
    8..64, aspect ratio 2 with flip, no max size)."""
    fmaps, steps, mins = (40, 20, 10, 5), (8, 16, 32, 64), (32, 64, 128, 256)
    return _priors(fmaps, steps, mins, None, ((2,),) * 4, 320, device)


def _priors(fmaps, steps, mins, maxs, ars, image, device):
    rows = []
    for k, f in enumerate(fmaps):
        for i in range(f):
            for j in range(f):
                cx, cy = (j + 0.5) * steps[k] / image, (i + 0.5) * steps[k] / image
                s = mins[k] / image
                rows.append((cx, cy, s, s))
                if maxs is not None:
                    s2 = math.sqrt(s * maxs[k] / image)
                    rows.append((cx, cy, s2, s2))
                for a in ars[k]:
                    r = math.sqrt(a)
                    rows.append((cx, cy, s * r, s / r))
                    rows.append((cx, cy, s / r, s * r))
    return torch.tensor(rows, dtype=torch.float64, device=device)


def random_targets(b, t, c, gen, device="cpu", pad=0.25, dup=True):
    """[b, t, 5] rows (x1, y1, x2, y2, label) in [0, 1], labels in [0, c - 1), padding rows
    (label -1) anywhere, and (dup) the last row a copy of the first (two truths sharing a best
    prior)."""
    xy = torch.rand(b, t, 2, generator=gen, dtype=torch.float64) * 0.8
    wh = torch.rand(b, t, 2, generator=gen, dtype=torch.float64) * 0.5 + 0.05
    lab = torch.randint(0, max(c - 1, 1), (b, t), generator=gen).double()
    rows = torch.cat([xy, (xy + wh).clamp(max=1.0), lab[..., None]], -1)
    if t:
        rows[..., 4] = torch.where(torch.rand(b, t, generator=gen) < pad, torch.full_like(lab, -1.0), lab)
        if dup and t >= 3:
            rows[:, -1, :4] = rows[:, 0, :4]
            rows[:, -1, 4] = rows[:, 0, 4].clamp(min=0)
    return rows.to(device=device, dtype=torch.float32)


def _heads(b, p, c, device, dtype, gen, spread=2.0):
    return (make_tensor((b, p, 4), device, dtype, -1.0, 1.0, gen), make_tensor((b, p, c), device, dtype, -spread,
                                                                                  spread, gen))


# ---- the summed forms --------------------------------------------------------------------------

def ssd_multibox_loss(loc: Tensor, conf: Tensor, priors: Tensor, targets: Tensor, overlap_thresh: float = 0.5,
                      neg_pos_ratio: float = 3.0, neg_overlap: float = 0.5,
                      variances: Tuple[float, float] = (0.1, 0.2), matching: str = "bipartite",
                      reduction: str = "mean") -> Tensor:
    """The sum of lossext.functional.ssd_multibox_loss(...)'s terms (the training loss): a scalar
    or, 'none', [B]."""
    ll, lc = LF.ssd_multibox_loss(loc, conf, priors, targets, overlap_thresh, neg_pos_ratio, neg_overlap, variances,
                                  matching, reduction)
    return ll + lc


def refinedet_multibox_loss(arm_loc: Tensor, arm_conf: Tensor, odm_loc: Tensor, odm_conf: Tensor, priors: Tensor,
                            targets: Tensor, overlap_thresh: float = 0.5, neg_pos_ratio: float = 3.0,
                            neg_overlap: float = 0.5, variances: Tuple[float, float] = (0.1, 0.2),
                            objectness_thresh: float = 0.01, reduction: str = "mean") -> Tensor:
    """The sum of lossext.functional.refinedet_multibox_loss(...)'s four terms: a scalar or, 'none', [B]."""
    al, ac, ol, oc = LF.refinedet_multibox_loss(arm_loc, arm_conf, odm_loc, odm_conf, priors, targets, overlap_thresh,
                                                neg_pos_ratio, neg_overlap, variances, objectness_thresh, reduction)
    return al + ac + ol + oc


def _ssd_ref(loc, conf, priors, targets, *args, **kwargs):
    return sum(MR.ssd_multibox_loss(loc, conf, priors.detach(), targets.detach(), *args, **kwargs))


def _refinedet_ref(arm_loc, arm_conf, odm_loc, odm_conf, priors, targets, *args, **kwargs):
    return sum(MR.refinedet_multibox_loss(arm_loc, arm_conf, odm_loc, odm_conf, priors.detach(), targets.detach(),
                                          *args, **kwargs))


def ssd_composite(*args, **kwargs):
    """The benchmark baseline, summed: the vectorized pure-PyTorch composite."""
    return sum(MC.ssd_multibox_loss_composite(*args, **kwargs))


def ssd_image_loop(*args, **kwargs):
    """The second baseline, summed: ssd.pytorch's structure (a Python loop over the images)."""
    return sum(MC.ssd_multibox_loss_image_loop(*args, **kwargs))


def refinedet_composite(*args, **kwargs):
    return sum(MC.refinedet_multibox_loss_composite(*args, **kwargs))


def refinedet_image_loop(*args, **kwargs):
    """RefineDet's second baseline, summed: both matches one image at a time."""
    return sum(MC.refinedet_multibox_loss_image_loop(*args, **kwargs))


class SSDMultiboxLoss(LN.SSDMultiboxLoss):
    """lossext.nn.SSDMultiboxLoss returning the sum of its losses (the generic tests' one output)."""

    def forward(self, loc: Tensor, conf: Tensor, targets: Tensor) -> Tensor:
        return ssd_multibox_loss(loc, conf, self.priors, targets, self.overlap_thresh, self.neg_pos_ratio,
                                 self.neg_overlap, self.variances, self.matching, self.reduction)


class RefineDetMultiboxLoss(LN.RefineDetMultiboxLoss):
    """lossext.nn.RefineDetMultiboxLoss returning the sum of its losses (the generic tests' one output)."""

    def forward(self, arm_loc: Tensor, arm_conf: Tensor, odm_loc: Tensor, odm_conf: Tensor, targets: Tensor) -> Tensor:
        return refinedet_multibox_loss(arm_loc, arm_conf, odm_loc, odm_conf, self.priors, targets,
                                       self.overlap_thresh, self.neg_pos_ratio, self.neg_overlap, self.variances,
                                       self.objectness_thresh, self.reduction)


# ---- samples -----------------------------------------------------------------------------------

# (B, T, C, prior grid sizes, kwargs)
_CASES = [(1, 1, 2, (2,), {}), (2, 4, 5, (4, 2), {}), (3, 6, 4, (3, 1), dict(neg_pos_ratio=1.5, neg_overlap=0.3)),
          (2, 5, 3, (4,), dict(overlap_thresh=0.3, variances=(0.2, 0.3))), (2, 0, 4, (2,), {}),
          (2, 3, 21, (3, 2), dict(neg_pos_ratio=0.0))]
_LARGE = [(4, 10, 21, (10, 5, 3), {}), (2, 20, 81, (8, 4, 2, 1), dict(overlap_thresh=0.45))]


def _samples(device, dtype, small, refinedet):
    gen = torch.Generator().manual_seed(0)
    for red in ("mean", "sum", "none"):
        for b, t, c, sizes, kw in _CASES + ([] if small else _LARGE):
            pri = grid_priors(sizes, device=device)
            tg = random_targets(b, t, c, gen, device)
            kw = dict(kw, reduction=red)
            name = f"{red}-B{b}-T{t}-C{c}-P{pri.shape[0]}-{kw}"
            if refinedet:
                arm = _heads(b, pri.shape[0], 2, device, dtype, gen)
                yield SampleInput((*arm, *_heads(b, pri.shape[0], c, device, dtype, gen), pri, tg), kw, name)
            else:
                for matching in ("bipartite", "ssd_pytorch") if t else ("bipartite",):
                    yield SampleInput((*_heads(b, pri.shape[0], c, device, dtype, gen), pri, tg),
                                      dict(kw, matching=matching), name + "-" + matching)
        # non-contiguous heads
        pri = grid_priors((3,), device=device)
        p = pri.shape[0]
        loc = make_tensor((2, 4, p), device, dtype, -1, 1, gen).transpose(1, 2)
        conf = make_tensor((2, 5, p), device, dtype, -2, 2, gen).transpose(1, 2)
        tg = random_targets(2, 4, 5, gen, device)
        if refinedet:
            arm_conf = make_tensor((2, 2, p), device, dtype, -2, 2, gen).transpose(1, 2)
            yield SampleInput((loc, arm_conf, loc.clone(), conf, pri, tg), dict(reduction=red), f"{red}-noncontig")
        else:
            yield SampleInput((loc, conf, pri, tg), dict(reduction=red), f"{red}-noncontig")
        # an empty batch
        pri = grid_priors((2,), device=device)
        tg = random_targets(0, 3, 4, gen, device)
        heads = _heads(0, pri.shape[0], 4, device, dtype, gen)
        if refinedet:
            yield SampleInput((*_heads(0, pri.shape[0], 2, device, dtype, gen), *heads, pri, tg), dict(reduction=red),
                              f"{red}-empty")
        else:
            yield SampleInput((*heads, pri, tg), dict(reduction=red), f"{red}-empty")


def _ssd_samples(device, dtype, small=False):
    return _samples(device, dtype, small, False)


def _refinedet_samples(device, dtype, small=False):
    return _samples(device, dtype, small, True)


def edge_targets(device="cpu"):
    """[3, 7, 5]: boxes touching the borders, a degenerate truth (zero width), two identical
    truths (a shared best prior), a tiny box, padding in the middle; an image of padding only;
    an image whose truths overlap no prior well (bipartite matches below the threshold)."""
    rows = torch.tensor([[[0.0, 0.0, 0.5, 0.5, 0],      # the top-left corner
                          [0.5, 0.5, 1.0, 1.0, 1],      # the bottom-right corner
                          [0.3, 0.3, 0.3, 0.6, 2],      # degenerate: zero width
                          [-1, -1, -1, -1, -1],         # padding in the middle
                          [0.1, 0.6, 0.45, 0.95, 1],    # two identical truths ...
                          [0.1, 0.6, 0.45, 0.95, 0],    # ... sharing every best prior
                          [0.48, 0.02, 0.5, 0.04, 2]],  # a tiny box
                         [[-1, 0, 0, 0, 0]] * 7,        # only padding
                         [[0.0, 0.0, 1.0, 1.0, 0], [0.45, 0.45, 0.55, 0.55, 1]] + [[0, 0, 0, 0, -1]] * 5],
                        dtype=torch.float32, device=device)
    return rows


def _edges(device, dtype, refinedet):
    gen = torch.Generator().manual_seed(5)
    pri = grid_priors((4, 2), device=device)
    p = pri.shape[0]
    tg = edge_targets(device)
    for red in ("none", "mean", "sum"):
        loc, conf = _heads(3, p, 4, device, torch.float64, gen)
        big = conf.clone()
        big[:, ::3] *= 25.0  # huge logits: saturated softmax
        if refinedet:
            arm_loc, arm_conf = _heads(3, p, 2, device, torch.float64, gen)
            yield SampleInput(tuple(t.to(dtype) for t in (arm_loc, arm_conf, loc, conf)) + (pri, tg),
                              dict(reduction=red), f"{red}-borders")
            # every ARM objectness below the threshold: no ODM negative is eligible
            low = torch.stack([torch.full_like(arm_conf[..., 0], 10.0), torch.full_like(arm_conf[..., 0], -10.0)], -1)
            yield SampleInput(tuple(t.to(dtype) for t in (arm_loc, low, loc, big)) + (pri, tg),
                              dict(reduction=red), f"{red}-no-objectness")
        else:
            for matching in ("bipartite", "ssd_pytorch"):
                yield SampleInput((loc.to(dtype), conf.to(dtype), pri, tg), dict(reduction=red, matching=matching),
                                  f"{red}-borders-{matching}")
            yield SampleInput((loc.to(dtype), big.to(dtype), pri, tg), dict(reduction=red), f"{red}-huge")
            # every truth padding: no positives anywhere (finite, zero gradients)
            yield SampleInput((loc.to(dtype), conf.to(dtype), pri, tg[1:2].expand(3, -1, -1).contiguous()),
                              dict(reduction=red), f"{red}-no-positives")


def _ssd_edges(device, dtype):
    return _edges(device, dtype, False)


def _refinedet_edges(device, dtype):
    return _edges(device, dtype, True)


def _small_call(device, refinedet, c=4):
    gen = torch.Generator().manual_seed(2)
    pri = grid_priors((2,), device=device)
    tg = torch.tensor([[[0.1, 0.1, 0.6, 0.5, 0], [0.4, 0.3, 0.9, 0.9, 2]], [[0.2, 0.2, 0.5, 0.7, 1], [0, 0, 0, 0, -1]]],
                      device=device)
    heads = _heads(2, pri.shape[0], c, device, torch.float32, gen)
    if refinedet:
        return _heads(2, pri.shape[0], 2, device, torch.float32, gen) + heads, pri, tg
    return heads, pri, tg


def _errors(device, refinedet):
    heads, pri, tg = _small_call(device, refinedet)
    fn = "refinedet_multibox_loss" if refinedet else "ssd_multibox_loss"
    first = "arm_loc" if refinedet else "loc"
    conf_name = "odm_conf" if refinedet else "conf"
    k = 3 if refinedet else 1  # the index of the class head
    S = lambda *a, **kw: SampleInput(a, kw)  # noqa: E731

    def H(i, t):
        h = list(heads)
        h[i] = t
        return tuple(h)

    E = [
        ErrorInput(S(*H(k, heads[k][..., :1]), pri, tg), ValueError, f"{conf_name} must have at least 2 classes"),
        ErrorInput(S(*H(k, heads[k][:, :-1]), pri, tg), ValueError, rf"{conf_name} must have shape \[2, 12, C\]"),
        ErrorInput(S(*H(0, heads[0][..., :3]), pri, tg), ValueError, rf"{first} must have shape \[B, P, 4\]"),
        ErrorInput(S(*H(0, heads[0].long()), pri, tg), TypeError, f"{first} must be float"),
        ErrorInput(S(*heads, pri[:, :3], tg), ValueError, r"priors must be a floating \[P, 4\]"),
        ErrorInput(S(*heads, pri[:3], tg), ValueError, f"priors has 3 priors but {first} has 12"),
        ErrorInput(S(*heads, pri, tg[..., :4]), ValueError, r"targets must have shape \[2, T, 5\]"),
        ErrorInput(S(*heads, pri, tg[:1]), ValueError, r"targets must have shape \[2, T, 5\]"),
        ErrorInput(S(*heads, pri, tg.long()), TypeError, "targets must be floating"),
        ErrorInput(S(*heads, pri, tg, overlap_thresh=1.5), ValueError, r"overlap_thresh must be in \[0\.0?, 1\.0?\]"),
        ErrorInput(S(*heads, pri, tg, neg_pos_ratio=-1.0), ValueError, "neg_pos_ratio must be in"),
        ErrorInput(S(*heads, pri, tg, neg_overlap=math.nan), ValueError, "neg_overlap must not be NaN"),
        ErrorInput(S(*heads, pri, tg, variances=(0.0, 0.2)), ValueError, r"variances\[0\] must be > 0"),
        ErrorInput(S(*heads, pri, tg, variances=(0.1,)), TypeError, "variances must be a pair"),
        ErrorInput(S(*heads, pri, tg, reduction="avg"), ValueError, "reduction must be"),
        ErrorInput(S(*heads, pri, tg.to("meta")), ValueError, "targets is on meta"),
    ]
    if refinedet:
        E.append(ErrorInput(S(*H(1, heads[1][..., :1]), pri, tg), ValueError, r"arm_conf must have shape \[2, 12, 2\]"))
        E.append(ErrorInput(S(*heads, pri, tg, objectness_thresh=math.nan), ValueError,
                            "objectness_thresh must not be NaN"))
    else:
        E.append(ErrorInput(S(*heads, pri, tg, matching="greedy"), ValueError,
                            "matching must be 'bipartite' or 'ssd_pytorch'"))
        E.append(ErrorInput(S(*heads, pri, tg, matching=0), TypeError, "matching must be 'bipartite' or"))
    if device == "cpu":
        bad = tg.clone()
        bad[1, 0, 4] = 3.0  # C = 4: labels in [0, 3)
        E.append(ErrorInput(S(*heads, pri, bad), IndexError, r"targets has label 3 at \[1, 0\] \(image, row\), "
                            r"outside \[0, 3\)"))
        bad = tg.clone()
        bad[0, 1, 2] = 0.1  # x2 < x1
        E.append(ErrorInput(S(*heads, pri, bad), ValueError, r"targets'? has a box .* at \[0, 1\] .*negative width"))
        bad = tg.clone()
        bad[0, 0, 1] = math.nan
        E.append(ErrorInput(S(*heads, pri, bad), ValueError, r"targets'? has a box .* that is not finite"))
        bad = pri.clone()
        bad[2, 2] = -0.1
        E.append(ErrorInput(S(*heads, bad, tg), ValueError, r"priors'? has \(cx, cy, w, h\) = .* at \[2\]"))
    return E


def _ssd_errors(device):
    return _errors(device, False)


def _refinedet_errors(device):
    return _errors(device, True)


def _bench(numel, device, dtype, refinedet):
    gen = torch.Generator().manual_seed(0)
    c = 21
    f = max(1, min(10, int(math.sqrt(numel / (3 * (c + 4 + (6 if refinedet else 0)))))))
    pri = grid_priors((f,), scales=(0.4,), device=device)
    p = pri.shape[0]
    b = max(1, numel // (p * (c + 4 + (6 if refinedet else 0))))
    tg = random_targets(b, 10, c, gen, device)
    heads = _heads(b, p, c, device, dtype, gen)
    if refinedet:
        heads = _heads(b, p, 2, device, dtype, gen) + heads
    return SampleInput((*heads, pri, tg), dict(reduction="mean"), f"B{b}-P{p}-C{c}-T10")


def _ssd_bench(numel, device, dtype):
    return _bench(numel, device, dtype, False)


def _refinedet_bench(numel, device, dtype):
    return _bench(numel, device, dtype, True)


def _op_args(loc, conf, priors, targets, kw, arm_loc=None, arm_conf=None, binary=False):
    k = dict(_DEFAULTS, matching="bipartite", objectness_thresh=0.01)
    k.update(kw)
    return (loc, conf, priors.double(), targets.double(), arm_loc, arm_conf, k["overlap_thresh"], k["neg_pos_ratio"],
            k["neg_overlap"], float(k["variances"][0]), float(k["variances"][1]), _MATCHING[k["matching"]],
            k["objectness_thresh"] if arm_conf is not None else 0.0, binary)


def _raw_calls_of(calls):
    out = []
    gen = torch.Generator().manual_seed(1)
    for args in calls:
        ll, _, _, gl, gc = torch.ops.lossext.multibox_loss(*args)
        go = [torch.randn(ll.shape, generator=gen, dtype=torch.float64).to(ll.device, ll.dtype) for _ in range(2)]
        out += [("multibox_loss", args), ("multibox_loss_backward", (go[0], go[1], gl, gc, args[0], args[1]))]
    out.append(("match_priors", (args[2], args[3], args[6], args[11])))
    return out


def _ssd_raw_calls(sample):
    loc, conf, pri, tg = sample.args
    kw = {k: v for k, v in sample.kwargs.items() if k != "reduction"}
    return _raw_calls_of([_op_args(loc, conf, pri, tg, kw)])


def _refinedet_raw_calls(sample):
    al, ac, ol, oc, pri, tg = sample.args
    kw = {k: v for k, v in sample.kwargs.items() if k != "reduction"}
    return _raw_calls_of([_op_args(al, ac, pri, tg, kw, binary=True), _op_args(ol, oc, pri, tg, kw, al, ac)])


def _module_kwargs(sample, refinedet):
    names = ("overlap_thresh", "neg_pos_ratio", "neg_overlap", "variances", "reduction") + (
        ("objectness_thresh",) if refinedet else ("matching",))
    return {k: v for k, v in sample.kwargs.items() if k in names}


def _ssd_module(sample):
    loc, conf, pri, tg = sample.args
    return SSDMultiboxLoss(pri, **_module_kwargs(sample, False)).to(loc.device), (loc, conf, tg), {}


def _refinedet_module(sample):
    *heads, pri, tg = sample.args
    return RefineDetMultiboxLoss(pri, **_module_kwargs(sample, True)).to(heads[0].device), (*heads, tg), {}


def _ssd_modules(device, dtype):
    (loc, conf), pri, tg = _small_call(device, False)
    loc, conf = loc.to(dtype), conf.to(dtype)
    return [(SSDMultiboxLoss(pri).to(device), (loc, conf, tg), {}),
            (SSDMultiboxLoss(pri, matching="ssd_pytorch", neg_pos_ratio=2.0, reduction="sum").to(device),
             (loc, conf, tg), {})]


def _refinedet_modules(device, dtype):
    heads, pri, tg = _small_call(device, True)
    heads = tuple(h.to(dtype) for h in heads)
    return [(RefineDetMultiboxLoss(pri).to(device), (*heads, tg), {}),
            (RefineDetMultiboxLoss(pri, objectness_thresh=0.3, reduction="sum").to(device), (*heads, tg), {})]


_REDUCE = {"none": "ll + lc",
           "sum": "ll.sum() + lc.sum()",
           "mean": "(ll.sum() + lc.sum()) / n.sum().clamp(min=1).to(ll.dtype)"}


def _ssd_jit(sample):
    loc, conf, pri, tg = sample.args
    kw = {k: v for k, v in sample.kwargs.items() if k != "reduction"}
    a = _op_args(loc, conf, pri, tg, kw)
    vals = ", ".join(repr(v) for v in a[6:])
    src = ("def f(loc: Tensor, conf: Tensor, p: Tensor, t: Tensor) -> Tensor:\n"
           f"    ll, lc, n, gl, gc = torch.ops.lossext.multibox_loss(loc, conf, p, t, None, None, {vals})\n"
           f"    return {_REDUCE[sample.kwargs.get('reduction', 'mean')]}\n")
    return src, (loc, conf, pri.double(), tg.double())


def _refinedet_jit(sample):
    al, ac, ol, oc, pri, tg = sample.args
    kw = {k: v for k, v in sample.kwargs.items() if k != "reduction"}
    arm = ", ".join(repr(v) for v in _op_args(al, ac, pri, tg, kw, binary=True)[6:])
    odm = ", ".join(repr(v) for v in _op_args(ol, oc, pri, tg, kw, al, ac)[6:])
    red = _REDUCE[sample.kwargs.get("reduction", "mean")]
    src = ("def f(al: Tensor, ac: Tensor, ol: Tensor, oc: Tensor, p: Tensor, t: Tensor) -> Tensor:\n"
           f"    ll, lc, n, gl, gc = torch.ops.lossext.multibox_loss(al, ac, p, t, None, None, {arm})\n"
           f"    a = {red}\n"
           f"    ll, lc, n, gl, gc = torch.ops.lossext.multibox_loss(ol, oc, p, t, al.detach(), ac.detach(), {odm})\n"
           f"    return a + ({red})\n")
    return src, (al, ac, ol, oc, pri.double(), tg.double())


def _raw_errors(device):
    (loc, conf), pri, tg = _small_call(device, False)
    p, t = pri.double(), tg.double()
    n = "multibox_loss"
    k = (0.5, 3.0, 0.5, 0.1, 0.2, 0, 0.0, False)
    gl, gc = torch.zeros_like(loc), torch.zeros_like(conf)
    rows = [
        (n, (loc, conf, p.float(), t, None, None, *k), "'priors' must be float64 \\[P, 4\\]"),
        (n, (loc, conf, p, t.float(), None, None, *k), "'targets' must be float64 \\[B, T, 5\\]"),
        (n, (loc[:, :3], conf, p, t, None, None, *k), r"'loc' must have shape \[2, 12, 4\]"),
        (n, (loc, conf[..., :1], p, t, None, None, *k), "'conf' must have at least 2 classes"),
        (n, (loc, conf, p, t, None, None, 1.5, *k[1:]), "'overlap_thresh' must be in"),
        (n, (loc, conf, p, t, None, None, *k[:3], 0.0, *k[4:]), "'variance_center' must be positive"),
        (n, (loc, conf, p, t, None, None, *k[:5], 2, *k[6:]), "'matching' must be 0"),
        (n, (loc, conf, p, t, None, None, *k[:7], True), r"'conf' must have 2 classes \(binary\)"),
        (n, (loc, conf, p, t, loc[..., :2], None, *k), r"'arm_loc' must have shape \[2, 12, 4\]"),
        ("match_priors", (p[:, :3], t, 0.5, 0), "'priors' must be float64"),
        ("match_priors", (p, t, 0.5, 3), "'matching' must be 0"),
        ("multibox_loss_backward", (torch.ones(3, device=device), torch.ones(2, device=device), gl, gc, loc, conf),
         r"'grad_loss_loc' must have shape \[2\]"),
        ("multibox_loss_backward", (torch.ones(2, device=device), torch.ones(2, device=device), gl[:1], gc, loc, conf),
         r"'grad_loc' must have shape"),
    ]
    if device == "cpu":
        bad = t.clone()
        bad[1, 0, 4] = 7.0
        rows.append((n, (loc, conf, p, bad, None, None, *k), "'targets' has label 7"))
    return rows


def _fuzz(draw, device, refinedet):
    """Drawn batches (B 0-3), priors (1-3 maps), truths (T 0-8, padding anywhere, borders,
    degenerate, duplicates), classes, hyper-parameters and extreme logits (NaN included); at
    most one bad argument."""
    from ..testing import fuzz as F
    st = F.st
    fn = "refinedet_multibox_loss" if refinedet else "ssd_multibox_loss"
    bad = F.fault(draw, ["head", "shape", "priors", "targets", "label", "box", "thresh", "ratio", "variances",
                         "reduction"])
    dt = F.dtype(draw)
    b = F.size(draw, sizes=(0, 1, 2, 3, 1, 2))
    t = draw(st.sampled_from([0, 1, 3, 8]))
    c = draw(st.sampled_from([2, 3, 5, 21]))
    sizes = draw(st.sampled_from([(1,), (2,), (3, 1), (4, 2)]))
    pri = grid_priors(sizes, device=device)
    p = pri.shape[0]
    big = {torch.float16: 8.0, torch.bfloat16: 30.0, torch.float32: 30.0, torch.float64: 60.0}[dt]
    specials = [0.0, big, -big] + ([math.nan] if draw(st.booleans()) else [])
    loc = F.tensor(draw, (b, p, 4), dt, device, -1.0, 1.0, [0.0, 3.0, -3.0], expand=False)
    conf = F.tensor(draw, (b, p, c), dt, device, -3.0, 3.0, specials, expand=False)
    heads = [loc, conf]
    if refinedet:
        heads = [F.tensor(draw, (b, p, 4), dt, device, -1.0, 1.0, [0.0, 2.0], expand=False),
                 F.tensor(draw, (b, p, 2), dt, device, -5.0, 5.0, [0.0, 20.0, -20.0], expand=False)] + heads
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    tg = random_targets(b, t, c, gen, "cpu", pad=draw(st.sampled_from([0.0, 0.3, 1.0])))
    if b and t and draw(st.booleans()):
        tg[0, 0, :4] = torch.tensor(draw(st.sampled_from([(0.0, 0.0, 1.0, 1.0), (0.3, 0.3, 0.3, 0.5),
                                                          (0.9, 0.9, 1.0, 1.0)])), dtype=torch.float32)
    kw = {}
    if draw(st.booleans()):
        kw["overlap_thresh"] = F.number_as(draw, draw(st.sampled_from([0.0, 0.35, 0.5, 1.0])))
    if draw(st.booleans()):
        kw["neg_pos_ratio"] = F.number_as(draw, draw(st.sampled_from([0.0, 1.0, 3.0, 7.5])))
    if draw(st.booleans()):
        kw["neg_overlap"] = F.number_as(draw, draw(st.sampled_from([0.0, 0.3, 0.5, 1.1])))
    if draw(st.booleans()):
        kw["variances"] = draw(st.sampled_from([(0.1, 0.2), [0.2, 0.1], (1.0, 1.0)]))
    if refinedet and draw(st.booleans()):
        kw["objectness_thresh"] = F.number_as(draw, draw(st.sampled_from([0.0, 0.01, 0.5, 1.0])))
    if not refinedet and t and draw(st.booleans()):
        kw["matching"] = draw(st.sampled_from(["bipartite", "ssd_pytorch"]))
    kw["reduction"] = F.reduction(draw)
    first = "arm_loc" if refinedet else "loc"
    error = None
    if bad == "head":
        i = draw(st.integers(0, len(heads) - 1))
        name = (["arm_loc", "arm_conf", "odm_loc", "odm_conf"] if refinedet else ["loc", "conf"])[i]
        heads[i], error = (F.not_a_tensor(draw, fn, name) if draw(st.booleans())
                           else F.not_float(draw, fn, name, heads[i].shape, device))
        if i > 0 and isinstance(heads[i], torch.Tensor):
            error = TypeError, rf"^{fn}: {name} must be float16, bfloat16, float32 or float64, got "
    elif bad == "shape":
        heads[0] = heads[0][..., :3]
        error = ValueError, rf"^{fn}: {first} must have shape \[B, P, 4\]"
    elif bad == "priors":
        pri = pri[:, :2]
        error = ValueError, rf"^{fn}: priors must be a floating \[P, 4\] tensor"
    elif bad == "targets":
        tg, error = F.bad_targets(draw, fn, tg, b, "(x1, y1, x2, y2, label)")
    elif bad in ("label", "box") and b and t:
        k = draw(st.integers(0, t - 1))
        if bad == "label":
            tg[0, k, 4] = float(draw(st.sampled_from([c - 1, c + 3, 0.5])))
            error = IndexError, rf"^{fn}: targets has label "
        else:
            tg[0, k, 4] = 0.0
            tg[0, k, 2] = tg[0, k, 0] - 0.1
            error = ValueError, rf"^{fn}: targets has a box "
        if device != "cpu":
            return None  # CUDA does not read targets back (no host sync): tests/test_detection.py covers it
    elif bad == "thresh":
        kw["overlap_thresh"], error = F.Real("overlap_thresh", "range", 0.0, 1.0).invalid(draw, fn)
    elif bad == "ratio":
        kw["neg_pos_ratio"], error = F.Real("neg_pos_ratio", "range", 0.0, math.inf, hi_open=True).invalid(draw, fn)
    elif bad == "variances":
        v = draw(st.sampled_from([(0.0, 0.2), (0.1, -1.0), (0.1, math.inf)]))
        kw["variances"] = v
        i = 0 if v[0] <= 0 else 1
        error = ValueError, rf"^{fn}: variances\[{i}\] must be "
    elif bad == "reduction":
        kw["reduction"], error = F.reduction(draw, fn, bad=True)
    tg = tg.to(device) if isinstance(tg, torch.Tensor) else tg
    op_name = f"{kw['reduction']}-B{b}-P{p}-C{c}-T{t}-{dt}"
    return F.FuzzCase(SampleInput((*heads, pri, tg), kw, op_name), error, dtype=dt,
                      grads=tuple(range(len(heads))), grad_terms=c)


def _ssd_fuzz(draw, device):
    return _fuzz(draw, device, False)


def _refinedet_fuzz(draw, device):
    return _fuzz(draw, device, True)


_TOL = {torch.float64: (1e-9, 1e-11), torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2),
        torch.bfloat16: (5e-2, 5e-2)}

ROWS = [
    OpInfo(
        name="ssd_multibox_loss",
        op=ssd_multibox_loss, ref=_ssd_ref, module=SSDMultiboxLoss, bench_ref=ssd_composite,
        raw_ops=["multibox_loss", "multibox_loss_backward", "match_priors"],
        hyper=dict(priors=grid_priors((2,))),
        sample_inputs=_ssd_samples, edge_inputs=_ssd_edges, error_inputs=_ssd_errors,
        bench_input=_ssd_bench, raw_calls=_ssd_raw_calls, module_call=_ssd_module,
        module_samples=_ssd_modules, jit_source=_ssd_jit, raw_error_inputs=_raw_errors,
        fuzz=_ssd_fuzz,
        bench_bytes={"forward": 2, "backward": 2, "full": 3},
        bench_generic=False,  # the family's suite (lossext/detection/bench.py), at SSD300's size
        empty_mean=0.0,  # Caffe's VALID normalization: over max(positives, 1)
        module_bad_hyper=("overlap_thresh", -1.0),
        constant_tensors=(2, 3),  # priors and targets take no gradient
        tol=_TOL,
    ),
    OpInfo(
        name="refinedet_multibox_loss",
        op=refinedet_multibox_loss, ref=_refinedet_ref, module=RefineDetMultiboxLoss, bench_ref=refinedet_composite,
        raw_ops=["multibox_loss", "multibox_loss_backward", "match_priors"],
        hyper=dict(priors=grid_priors((2,))),
        sample_inputs=_refinedet_samples, edge_inputs=_refinedet_edges, error_inputs=_refinedet_errors,
        bench_input=_refinedet_bench, raw_calls=_refinedet_raw_calls, module_call=_refinedet_module,
        module_samples=_refinedet_modules, jit_source=_refinedet_jit, raw_error_inputs=_raw_errors,
        fuzz=_refinedet_fuzz,
        bench_bytes={"forward": 2, "backward": 2, "full": 3},
        bench_generic=False,
        empty_mean=0.0,
        module_bad_hyper=("overlap_thresh", -1.0),
        # the ARM heads move the ODM's anchors, held constant in its gradient (the authors'
        # propagate_down false): gradcheck differentiates the ODM heads; the reference checks all
        # four heads and tests/test_detection.py gradchecks the ARM terms in the ARM heads
        constant_tensors=(0, 1, 4, 5),
        tol=_TOL,
    ),
]
