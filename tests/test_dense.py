"""Special tests of the dense-prediction family (the generic ones run over OP_DB): torchvision's
maskrcnn_loss against mask_rcnn_loss (its own target projection, values and gradients), and HRNet's
JointsMSELoss / JointsOHKMMSELoss semantics (its code's structure, in the float64 reference
lossext.reference.joints_mse_loss_hrnet, and its classes' exact expressions here), the weight as
w^2, the 0.5, OHKM's ties, k >= K, k = 1 and B = 1, the gradient on the selected joints only,
the Module."""
import pytest
import torch
import torch.nn as nn

import lossext.functional as LF
import lossext.nn as LN
import lossext.reference as R

CUDA = torch.cuda.is_available()


def _maps(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)


class _HRNetJointsMSELoss(nn.Module):
    """HRNet lib/core/loss.py JointsMSELoss, its forward's expressions as written there."""

    def __init__(self, use_target_weight):
        super().__init__()
        self.criterion = nn.MSELoss(reduction="mean")
        self.use_target_weight = use_target_weight

    def forward(self, output, target, target_weight):
        batch_size, num_joints = output.size(0), output.size(1)
        heatmaps_pred = output.reshape((batch_size, num_joints, -1)).split(1, 1)
        heatmaps_gt = target.reshape((batch_size, num_joints, -1)).split(1, 1)
        loss = 0
        for idx in range(num_joints):
            heatmap_pred = heatmaps_pred[idx].squeeze()
            heatmap_gt = heatmaps_gt[idx].squeeze()
            if self.use_target_weight:
                loss += 0.5 * self.criterion(heatmap_pred.mul(target_weight[:, idx]),
                                             heatmap_gt.mul(target_weight[:, idx]))
            else:
                loss += 0.5 * self.criterion(heatmap_pred, heatmap_gt)
        return loss / num_joints


class _HRNetJointsOHKMMSELoss(nn.Module):
    """HRNet lib/core/loss.py JointsOHKMMSELoss, as written there (topk needs k <= K)."""

    def __init__(self, use_target_weight, topk=8):
        super().__init__()
        self.criterion = nn.MSELoss(reduction="none")
        self.use_target_weight = use_target_weight
        self.topk = topk

    def ohkm(self, loss):
        ohkm_loss = 0.
        for i in range(loss.size()[0]):
            sub_loss = loss[i]
            topk_val, topk_idx = torch.topk(sub_loss, k=self.topk, dim=0, sorted=False)
            tmp_loss = torch.gather(sub_loss, 0, topk_idx)
            ohkm_loss += torch.sum(tmp_loss) / self.topk
        ohkm_loss /= loss.size()[0]
        return ohkm_loss

    def forward(self, output, target, target_weight):
        batch_size, num_joints = output.size(0), output.size(1)
        heatmaps_pred = output.reshape((batch_size, num_joints, -1)).split(1, 1)
        heatmaps_gt = target.reshape((batch_size, num_joints, -1)).split(1, 1)
        loss = []
        for idx in range(num_joints):
            heatmap_pred = heatmaps_pred[idx].squeeze()
            heatmap_gt = heatmaps_gt[idx].squeeze()
            if self.use_target_weight:
                loss.append(0.5 * self.criterion(heatmap_pred.mul(target_weight[:, idx]),
                                                 heatmap_gt.mul(target_weight[:, idx])))
            else:
                loss.append(0.5 * self.criterion(heatmap_pred, heatmap_gt))
        loss = [l.mean(dim=1).unsqueeze(dim=1) for l in loss]
        loss = torch.cat(loss, dim=1)
        return self.ohkm(loss)


@pytest.mark.parametrize("use_w", [True, False])
@pytest.mark.parametrize("topk", [None, 1, 3, 8])
def test_matches_hrnets_classes(use_w, topk):
    """HRNet's own expressions (B >= 2: its squeeze; k <= K: its topk), values and gradients;
    its target_weight is [B, K, 1]."""
    x = _maps(4, 17, 16, 12, seed=1).requires_grad_(True)
    t = _maps(4, 17, 16, 12, seed=2)
    w = (_maps(4, 17, 1, seed=3) > 0.25).double()
    peer = _HRNetJointsMSELoss(use_w) if topk is None else _HRNetJointsOHKMMSELoss(use_w, topk)
    want = peer(x, t, w)
    got = LN.JointsMSELoss(use_target_weight=use_w, ohkm_topk=topk)(x, t, w if use_w else None)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    gw, = torch.autograd.grad(want, x)
    gg, = torch.autograd.grad(got, x)
    torch.testing.assert_close(gg, gw, rtol=1e-12, atol=1e-15)


def test_weight_acts_squared_and_the_half():
    """0.5 * mean((w x - w y)^2) = 0.5 w^2 MSE: a weight of 2 gives 4x, 0.5 of the plain MSE."""
    x, t = _maps(2, 3, 5, 5, seed=4), _maps(2, 3, 5, 5, seed=5)
    plain = LF.joints_mse_loss(x, t, reduction="none")
    torch.testing.assert_close(plain, 0.5 * ((x - t) ** 2).mean((2, 3)))
    two = LF.joints_mse_loss(x, t, torch.full((2, 3), 2.0, dtype=torch.float64), reduction="none")
    torch.testing.assert_close(two, 4 * plain)


def test_weight_shapes_bk_and_bk1_agree():
    x, t = _maps(3, 4, 6, 5, seed=6), _maps(3, 4, 6, 5, seed=7)
    w = _maps(3, 4, seed=8)
    assert torch.equal(LF.joints_mse_loss(x, t, w, ohkm_topk=2), LF.joints_mse_loss(x, t, w[..., None], ohkm_topk=2))


@pytest.mark.parametrize("k", [1, 2, 4, 5, 6, 100])
def test_ohkm_ties_go_to_the_lower_joint_and_k_at_least_K_takes_all(k):
    """Joints 0, 1, 2, 4 tie, joint 3 is larger: k = 1 takes 3, k = 2 takes 3 and 0, ...;
    k >= K = 5 takes all five (divided by 5). The gradient reaches only the selected joints."""
    x = torch.zeros(1, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.full((1, 5, 2, 2), 0.5, dtype=torch.float64)
    t[:, 3] = 1.0
    loss = LF.joints_mse_loss(x, t, ohkm_topk=k)
    per = torch.tensor([0.125, 0.125, 0.125, 0.5, 0.125], dtype=torch.float64)
    order = [3, 0, 1, 2, 4]
    kk = min(k, 5)
    assert loss.item() == pytest.approx(float(per[order[:kk]].sum()) / kk, rel=1e-15)
    g, = torch.autograd.grad(loss, x)
    selected = torch.zeros(5, dtype=torch.bool)
    selected[order[:kk]] = True
    assert (g[0, ~selected] == 0).all()
    assert (g[0, selected] != 0).all()


def test_batch_of_one_and_the_reference():
    """B = 1 (HRNet's squeeze drops the batch dim there and breaks): equals the per-joint
    reference, with and without OHKM."""
    x, t = _maps(1, 17, 8, 6, seed=9), _maps(1, 17, 8, 6, seed=10)
    w = (_maps(1, 17, seed=11) > 0.3).double()
    for k in (None, 8):
        torch.testing.assert_close(LF.joints_mse_loss(x, t, w, ohkm_topk=k), R.joints_mse_loss_hrnet(x, t, w, k))


def test_weights_all_zero_give_zero_and_no_gradient():
    x = _maps(2, 3, 4, 4, seed=12).requires_grad_(True)
    t = _maps(2, 3, 4, 4, seed=13)
    w = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss = LF.joints_mse_loss(x, t, w, ohkm_topk=2)
    assert loss.item() == 0.0
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert (gx == 0).all() and (gw == 0).all()


def test_target_weight_gradient():
    """d/dw of 0.5 w^2 S / P is w S / P (the visibility is differentiable)."""
    x, t = _maps(2, 3, 4, 4, seed=14), _maps(2, 3, 4, 4, seed=15)
    w = _maps(2, 3, seed=16).requires_grad_(True)
    loss = LF.joints_mse_loss(x, t, w, reduction="sum")
    gw, = torch.autograd.grad(loss, w)
    torch.testing.assert_close(gw, w.detach() * ((x - t) ** 2).mean((2, 3)))


def test_half_precision_accumulates_in_float32():
    x32, t32 = _maps(4, 17, 64, 48, seed=17, dtype=torch.float32), _maps(4, 17, 64, 48, seed=18, dtype=torch.float32)
    for dt in (torch.float16, torch.bfloat16):
        x, t = x32.to(dt), t32.to(dt)
        got = LF.joints_mse_loss(x, t, ohkm_topk=8)
        assert got.dtype == dt
        want = R.joints_mse_loss_hrnet(x.double(), t.double(), None, 8)
        assert abs(got.double() - want) <= 2 * torch.finfo(dt).eps * want


def test_module_needs_the_weight_when_it_uses_it():
    x, t = _maps(2, 3, 4, 4, seed=19), _maps(2, 3, 4, 4, seed=20)
    with pytest.raises(ValueError, match="use_target_weight=True needs target_weight"):
        LN.JointsMSELoss()(x, t)
    assert "ohkm_topk=8" in repr(LN.JointsMSELoss(ohkm_topk=8))
    with pytest.raises(TypeError, match="use_target_weight must be a bool"):
        LN.JointsMSELoss(use_target_weight="yes")


@pytest.mark.skipif(not CUDA, reason="no GPU visible")
def test_cuda_matches_cpu():
    x, t = _maps(8, 17, 64, 48, seed=21, dtype=torch.float32), _maps(8, 17, 64, 48, seed=22, dtype=torch.float32)
    w = (_maps(8, 17, seed=23) > 0.2).float()
    for k in (None, 8):
        xc = x.cuda().requires_grad_(True)
        got = LF.joints_mse_loss(xc, t.cuda(), w.cuda(), ohkm_topk=k)
        xr = x.clone().requires_grad_(True)
        want = LF.joints_mse_loss(xr, t, w, ohkm_topk=k)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.autograd.grad(got, xc)[0].cpu(), torch.autograd.grad(want, xr)[0])


# ---- mask_rcnn_loss ---------------------------------------------------------------------------

def _mask_inputs(r=6, c=5, m=14, seed=30, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(r, c, m, m, generator=g, dtype=torch.float64) * 3).to(dtype)
    lab = torch.randint(0, c, (r,), generator=g)
    return x, lab, g


def test_mask_loss_matches_torchvision_maskrcnn_loss():
    """torchvision.models.detection.roi_heads.maskrcnn_loss on proposals and gt masks, against
    lossext on the targets torchvision's own project_masks_on_boxes makes (soft: roi_align):
    values and gradients in float64."""
    rh = pytest.importorskip("torchvision.models.detection.roi_heads")
    x, _, g = _mask_inputs(r=7, c=4, m=14)
    x.requires_grad_(True)
    gt_masks = [(torch.rand(3, 40, 50, generator=g, dtype=torch.float64) > 0.5).double(),
                (torch.rand(2, 40, 50, generator=g, dtype=torch.float64) > 0.4).double()]
    gt_labels = [torch.tensor([1, 3, 2]), torch.tensor([0, 3])]
    xy = torch.rand(7, 2, generator=g, dtype=torch.float64) * 25
    boxes = torch.cat([xy, xy + 5 + torch.rand(7, 2, generator=g, dtype=torch.float64) * 20], 1)
    proposals = [boxes[:4], boxes[4:]]
    matched = [torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 0])]
    want = rh.maskrcnn_loss(x, proposals, gt_masks, gt_labels, matched)
    labels = torch.cat([gl[i] for gl, i in zip(gt_labels, matched)])
    targets = torch.cat([rh.project_masks_on_boxes(m, p, i, 14) for m, p, i in zip(gt_masks, proposals, matched)])
    assert not ((targets == 0) | (targets == 1)).all()  # soft targets
    got = LF.mask_rcnn_loss(x, labels, targets)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    gw, = torch.autograd.grad(want, x)
    gg, = torch.autograd.grad(got, x)
    torch.testing.assert_close(gg, gw, rtol=1e-12, atol=1e-15)


def test_mask_loss_no_rois_is_a_zero_attached_to_the_graph():
    rh = pytest.importorskip("torchvision.models.detection.roi_heads")
    x = torch.randn(0, 81, 28, 28, dtype=torch.float64, requires_grad=True)
    got = LF.mask_rcnn_loss(x, torch.zeros(0, dtype=torch.long), torch.zeros(0, 28, 28, dtype=torch.float64))
    want = rh.maskrcnn_loss(x, [torch.zeros(0, 4, dtype=torch.float64)], [torch.zeros(0, 28, 28)],
                            [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)])
    assert got.item() == 0.0 and want.item() == 0.0 and got.requires_grad
    g, = torch.autograd.grad(got, x)
    assert g.shape == x.shape


def test_mask_loss_other_channels_get_no_gradient():
    x, lab, g = _mask_inputs()
    x.requires_grad_(True)
    t = torch.rand(6, 14, 14, generator=g, dtype=torch.float64)
    gx, = torch.autograd.grad(LF.mask_rcnn_loss(x, lab, t), x)
    keep = torch.zeros(6, 5, dtype=torch.bool)
    keep[torch.arange(6), lab] = True
    assert (gx[~keep] == 0).all() and (gx[keep] != 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mask_loss_extreme_logits_stay_finite(dtype):
    x = torch.tensor([100.0, -100.0, 60.0, -60.0], dtype=dtype).reshape(4, 1, 1, 1).expand(4, 2, 3, 3).contiguous()
    x.requires_grad_(True)
    for t in (torch.ones(4, 3, 3, dtype=dtype), torch.zeros(4, 3, 3, dtype=dtype), torch.full((4, 3, 3), 0.5, dtype=dtype)):
        loss = LF.mask_rcnn_loss(x, torch.tensor([0, 1, 0, 1]), t)
        g, = torch.autograd.grad(loss, x)
        assert loss.isfinite() and g.isfinite().all()
        torch.testing.assert_close(loss, R.mask_rcnn_loss(x.double(), torch.tensor([0, 1, 0, 1]), t.double()).to(dtype))


def test_mask_loss_bad_label_names_it():
    x, lab, g = _mask_inputs()
    t = torch.rand(6, 14, 14, dtype=torch.float64)
    with pytest.raises(IndexError, match=r"mask_rcnn_loss: labels has value 5 at index 2, outside \[0, 5\)"):
        LF.mask_rcnn_loss(x, torch.tensor([0, 1, 5, 2, 3, 4]), t)


@pytest.mark.skipif(not CUDA, reason="no GPU visible")
def test_mask_loss_cuda_matches_cpu_and_bad_label_is_nan():
    x, lab, g = _mask_inputs(r=64, c=81, m=28, dtype=torch.float32)
    t = torch.rand(64, 28, 28, generator=g)
    xc = x.cuda().requires_grad_(True)
    got = LF.mask_rcnn_loss(xc, lab.cuda(), t.cuda())
    xr = x.clone().requires_grad_(True)
    want = LF.mask_rcnn_loss(xr, lab, t)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(got, xc)[0].cpu(), torch.autograd.grad(want, xr)[0])
    bad = lab.clone()
    bad[3] = 81
    assert LF.mask_rcnn_loss(x.cuda(), bad.cuda(), t.cuda()).isnan()


# ---- dice_loss ----------------------------------------------------------------------------
# Special tests of dice_loss / DiceLoss (the generic ones run over its OpInfo row,
# lossext/dense/opinfo_dice.py): parity with segmentation_models_pytorch's own DiceLoss in every
# mode and option, values and gradients; formula='classic' against smp <= 0.3.4's score; an
# empty class; ignore_index; bad input naming the argument; the Module; thread-count
# determinism over several CPU chunks.

_DICE_MODES = ["binary", "multiclass", "multilabel"]
# smp's DiceLoss options; class weights exact in float32 (smp stores them as float32)
_DICE_VARIANTS = {"defaults": {}, "smooth": dict(smooth=1.0), "log_loss": dict(log_loss=True),
                  "ignore_index": dict(ignore_index=255), "classes": dict(classes=[0, 2]),
                  "from_logits_false": dict(from_logits=False),
                  "class_weights": dict(class_weights=[0.5, 2.0, 1.25, 1.0])}


def _smp_losses():
    return pytest.importorskip("segmentation_models_pytorch.losses")


def _dice_inputs(mode, dtype=torch.float64, seed=0, soft=False, ignore=None, probabilities=False, shape=(2, 4, 5, 6)):
    """(logits or probabilities, target) for a mode: multiclass labels; binary / multilabel hard
    0/1 targets (soft: in [0, 1]); `ignore` written into about a fifth of the targets."""
    g = torch.Generator().manual_seed(seed)
    b, c, *sp = shape
    c = 1 if mode == "binary" else c
    x = torch.randn(b, c, *sp, generator=g, dtype=torch.float64) * 2
    if probabilities:
        x = x.softmax(1) if mode == "multiclass" else x.sigmoid()
    if mode == "multiclass":
        t = torch.randint(0, c, (b, *sp), generator=g)
    else:
        t = torch.rand(b, c, *sp, generator=g, dtype=torch.float64)
        t = (t if soft else (t > 0.5).double()).to(dtype)
    if ignore is not None:
        hit = torch.rand(t.shape, generator=g) < 0.2
        t = torch.where(hit, torch.full_like(t, ignore), t)
    return x.to(dtype), t


def _value_and_grad(fn, x, t):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, t)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def _dice_tol(dtype):
    return dict(rtol=1e-10, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant", list(_DICE_VARIANTS))
@pytest.mark.parametrize("mode", _DICE_MODES)
def test_dice_matches_smp(mode, variant, dtype):
    """lossext.nn.DiceLoss and smp's DiceLoss, built with the same arguments, agree on values and
    gradients (float64: 1e-10; float32: each in float32)."""
    smp = _smp_losses()
    kw = dict(_DICE_VARIANTS[variant])
    if mode == "binary" and ("classes" in kw or "class_weights" in kw):
        pytest.skip("smp refuses classes and class_weights with mode='binary' (so does lossext)")
    if mode != "multiclass" and "class_weights" in kw:
        kw["class_weights"] = kw["class_weights"][:3]
    seed = 10 * _DICE_MODES.index(mode) + list(_DICE_VARIANTS).index(variant)
    x, t = _dice_inputs(mode, dtype, seed=seed, ignore=kw.get("ignore_index"),
                        probabilities=not kw.get("from_logits", True),
                        shape=(2, 3, 5, 6) if mode == "multilabel" else (2, 4, 5, 6))
    theirs = smp.DiceLoss(mode, **kw)
    ours = LN.DiceLoss(mode, **kw)
    lv, lg = _value_and_grad(ours, x, t)
    sv, sg = _value_and_grad(theirs, x, t)
    assert lv.dtype == dtype and lg.dtype == dtype
    torch.testing.assert_close(lv, sv, **_dice_tol(dtype))
    torch.testing.assert_close(lg, sg, **_dice_tol(dtype))
    # the functional, positionally as documented
    args = [kw.get(k, d) for k, d in (("classes", None), ("log_loss", False), ("from_logits", True), ("smooth", 0.0),
                                      ("eps", 1e-7), ("ignore_index", None), ("class_weights", None))]
    torch.testing.assert_close(LF.dice_loss(x, t, mode, *args), lv, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("kw", [{}, dict(smooth=1.0, log_loss=True), dict(ignore_index=-1)], ids=["plain", "smooth-log",
                                                                                                    "ignore"])
def test_dice_soft_targets_match_smp(mode, kw, dtype):
    """Soft targets (where smp >= 0.4's intersection is sum min(p, t), not sum p t)."""
    smp = _smp_losses()
    x, t = _dice_inputs(mode, dtype, seed=3, soft=True, ignore=kw.get("ignore_index"), shape=(3, 3, 7, 5))
    lv, lg = _value_and_grad(LN.DiceLoss(mode, **kw), x, t)
    sv, sg = _value_and_grad(smp.DiceLoss(mode, **kw), x, t)
    torch.testing.assert_close(lv, sv, **_dice_tol(dtype))
    torch.testing.assert_close(lg, sg, **_dice_tol(dtype))


def test_dice_3d_and_binary_without_channel_match_smp():
    """A volume [B, C, D, H, W]; binary logits [B, H, W] with a [B, 1, H, W] target."""
    smp = _smp_losses()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 5, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4, 5, 3), generator=g)
    for fn_ours, fn_smp, xx, tt in ((LN.DiceLoss("multiclass"), smp.DiceLoss("multiclass"), x, t),
                                    (LN.DiceLoss("binary"), smp.DiceLoss("binary"), x[:, 0, 0],
                                     (t[:, 0] == 1).double().unsqueeze(1))):
        lv, lg = _value_and_grad(fn_ours, xx, tt)
        sv, sg = _value_and_grad(fn_smp, xx, tt)
        torch.testing.assert_close(lv, sv, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(lg, sg, rtol=1e-10, atol=1e-13)


def _smp034_soft_dice_score(output, target, smooth=0.0, eps=1e-7, dims=None):
    """segmentation_models_pytorch 0.3.4 (losses/_functional.py), as written there."""
    assert output.size() == target.size()
    if dims is not None:
        intersection = torch.sum(output * target, dim=dims)
        cardinality = torch.sum(output + target, dim=dims)
    else:
        intersection = torch.sum(output * target)
        cardinality = torch.sum(output + target)
    dice_score = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    return dice_score


@pytest.mark.parametrize("mode", _DICE_MODES)
@pytest.mark.parametrize("kw", [dict(smooth=0.5), dict(log_loss=True, smooth=2.0), dict(ignore_index=255)],
                         ids=["smooth", "log-smooth", "ignore"])
def test_dice_classic_formula_is_smp_034(mode, kw):
    """formula='classic' is smp <= 0.3.4's score (2 S_pt + s) / max(S_p + S_t + s, eps): smp's
    own DiceLoss with 0.3.4's soft_dice_score. Soft targets where the target may be soft."""
    smp = _smp_losses()

    class DiceLoss034(smp.DiceLoss):
        def compute_score(self, output, target, smooth=0.0, eps=1e-7, dims=None):
            return _smp034_soft_dice_score(output, target, smooth, eps, dims)

    x, t = _dice_inputs(mode, soft=mode != "multiclass", seed=11, ignore=kw.get("ignore_index"))
    lv, lg = _value_and_grad(LN.DiceLoss(mode, formula="classic", **kw), x, t)
    sv, sg = _value_and_grad(DiceLoss034(mode, **kw), x, t)
    torch.testing.assert_close(lv, sv, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(lg, sg, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(LF.dice_loss(x, t, mode, formula="classic", **kw),
                               R.dice_loss(x, t, mode, formula="classic", **kw), rtol=1e-12, atol=1e-14)


def test_dice_formulas_agree_on_hard_targets_without_smooth_and_differ_otherwise():
    x, t = _dice_inputs("multilabel", shape=(2, 3, 6, 6))
    semi, classic = (LF.dice_loss(x, t, "multilabel", formula=f) for f in ("semimetric", "classic"))
    torch.testing.assert_close(semi, classic, rtol=1e-12, atol=1e-14)  # sum min(p, t) = sum p t for t in {0, 1}
    for soft, smooth in ((True, 0.0), (False, 1.0)):
        x, t = _dice_inputs("multilabel", soft=soft, shape=(2, 3, 6, 6))
        semi, classic = (LF.dice_loss(x, t, "multilabel", smooth=smooth, formula=f) for f in ("semimetric", "classic"))
        assert abs(semi.item() - classic.item()) > 1e-4, (soft, smooth)


def test_dice_empty_class_contributes_zero_but_counts_in_the_mean():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (2, 5, 5), generator=g)
    t[t == 2] = 3  # no pixel of class 2 anywhere in the batch
    per = torch.stack([LF.dice_loss(x, t, classes=[c]) for c in range(4)])
    assert per[2].item() == 0.0 and (per[[0, 1, 3]] > 0).all()
    total = LF.dice_loss(x, t)
    torch.testing.assert_close(total, per.sum() / 4, rtol=1e-14, atol=0)  # divided by C = 4, not by 3
    (gx,) = torch.autograd.grad(LF.dice_loss(x, t, classes=[2]), x)
    assert (gx == 0).all()  # a constant 0: no gradient, even through the softmax
    # the same in the other modes: a channel without positives
    for mode in ("binary", "multilabel"):
        xm, tm = _dice_inputs(mode, shape=(2, 3, 4, 4))
        tm[:, 0] = 0
        if mode == "binary":
            assert LF.dice_loss(xm, tm, mode).item() == 0.0
        else:
            per = torch.stack([LF.dice_loss(xm, tm, mode, classes=[c]) for c in range(3)])
            assert per[0].item() == 0.0
            torch.testing.assert_close(LF.dice_loss(xm, tm, mode), per.mean(), rtol=1e-14, atol=0)
    # weighted: the empty class's weight still counts in the denominator (smp >= 0.5)
    w = [1.0, 2.0, 4.0, 0.5]
    per = torch.stack([LF.dice_loss(x, t, classes=[c]) for c in range(4)])
    want = (per * torch.tensor(w, dtype=torch.float64)).sum() / sum(w)
    torch.testing.assert_close(LF.dice_loss(x, t, class_weights=w), want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("mode", _DICE_MODES)
def test_dice_ignored_pixels_change_nothing(mode):
    """Ignored pixels: the loss is that of the kept pixels alone, does not depend on the logits
    there, and their gradient is 0 (every channel of an ignored multiclass pixel)."""
    ignore = 255 if mode != "multilabel" else -1
    x, t = _dice_inputs(mode, seed=4, ignore=ignore, shape=(1, 3, 6, 7))
    x.requires_grad_(True)
    loss = LF.dice_loss(x, t, mode, ignore_index=ignore)
    (gx,) = torch.autograd.grad(loss, x)
    hit = (t == ignore) if mode != "multiclass" else (t == ignore).unsqueeze(1).expand_as(x)
    assert hit.any() and (~hit).any()
    assert (gx[hit] == 0).all() and (gx[~hit] != 0).any()
    # other logits at the ignored pixels: the same loss
    y = torch.where(hit, torch.full_like(x, 50.0), x.detach())
    torch.testing.assert_close(LF.dice_loss(y, t, mode, ignore_index=ignore), loss.detach(), rtol=1e-14, atol=0)
    # the kept pixels alone (one sample: the sums run over the pixels)
    if mode == "multiclass":
        keep = (t != ignore).reshape(-1)
        xk = x.detach().reshape(1, 3, -1)[:, :, keep]
        tk = t.reshape(1, -1)[:, keep]
    else:
        keep = (t != ignore).reshape(-1)  # binary: one channel; multilabel: per channel, so compare per class
        if mode == "multilabel":
            for c in range(3):
                kc = (t[:, c] != ignore).reshape(-1)
                want = LF.dice_loss(x.detach()[:, c].reshape(1, 1, -1)[:, :, kc], t[:, c].reshape(1, 1, -1)[:, :, kc],
                                    "multilabel")
                got = LF.dice_loss(x.detach(), t, mode, classes=[c], ignore_index=ignore)
                torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
            return
        xk = x.detach().reshape(1, 1, -1)[:, :, keep]
        tk = t.reshape(1, 1, -1)[:, :, keep]
    torch.testing.assert_close(LF.dice_loss(xk, tk, mode), loss.detach(), rtol=1e-13, atol=1e-15)


def test_dice_ignore_index_is_needed_for_out_of_range_labels():
    x, t = _dice_inputs("multiclass", ignore=255)
    LF.dice_loss(x, t, ignore_index=255)
    with pytest.raises(IndexError, match=r"dice_loss: target has value 255 at flat index \d+, outside \[0, 4\)"):
        LF.dice_loss(x, t)
    # an ignore_index inside [0, C) leaves that class out of every sum
    x, t = _dice_inputs("multiclass", seed=8)
    assert LF.dice_loss(x, t, classes=[1], ignore_index=1).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", _DICE_MODES)
def test_dice_saturated_logits_stay_finite(mode, dtype):
    g = torch.Generator().manual_seed(6)
    x, t = _dice_inputs(mode, dtype, seed=6)
    x = (torch.where(torch.rand(x.shape, generator=g) < 0.5, -100.0, 100.0)).to(dtype).requires_grad_(True)
    for kw in ({}, dict(log_loss=True), dict(formula="classic", smooth=1.0)):
        loss = LF.dice_loss(x, t, mode, **kw)
        (gx,) = torch.autograd.grad(loss, x)
        assert loss.isfinite() and gx.isfinite().all(), kw
        torch.testing.assert_close(loss.double(), R.dice_loss(x.detach().double(), t, mode, **kw), rtol=1e-5, atol=1e-6)


_DICE_BAD = [
    (dict(mode="mc"), ValueError, r"^dice_loss: mode must be 'binary', 'multiclass' or 'multilabel', got 'mc'$"),
    (dict(mode="binary", classes=[0]), ValueError, r"^dice_loss: classes cannot be used with mode='binary'$"),
    (dict(mode="binary", class_weights=[1.0]), ValueError, r"class_weights cannot be used with mode='binary'$"),
    (dict(formula="dice"), ValueError, r"^dice_loss: formula must be 'semimetric' or 'classic', got 'dice'$"),
    (dict(formula=None), ValueError, r"^dice_loss: formula must be 'semimetric' or 'classic', got None$"),
    (dict(smooth=-1.0), ValueError, r"^dice_loss: smooth must be >= 0, got -1.0$"),
    (dict(eps=0.0), ValueError, r"^dice_loss: eps must be > 0, got 0.0$"),
    (dict(classes=[4]), IndexError, r"^dice_loss: classes has value 4, outside \[0, 4\)$"),
    (dict(class_weights=[1.0, 2.0]), ValueError, r"^dice_loss: class_weights must have 4 values \(one per class\)"),
    (dict(ignore_index=2.5), TypeError, r"^dice_loss: ignore_index must be an int, got float"),
]


@pytest.mark.parametrize("kw,err,match", _DICE_BAD, ids=[str(k) for k, _, _ in _DICE_BAD])
def test_dice_bad_arguments_name_themselves(kw, err, match):
    x, t = _dice_inputs("multiclass")
    if kw.get("mode") == "binary":
        x, t = _dice_inputs("binary")
    with pytest.raises(err, match=match):
        LF.dice_loss(x, t, **kw)


def test_dice_bad_targets_name_the_target():
    x, t = _dice_inputs("multiclass")  # [2, 4, 5, 6], labels [2, 5, 6]
    with pytest.raises(ValueError, match=r"^dice_loss: target must have shape \[2, 5, 6\] \(logits are"):
        LF.dice_loss(x, t[:, :4])
    with pytest.raises(ValueError, match=r"^dice_loss: target must have the batch size 2 of logits first"):
        LF.dice_loss(x, t[:1])
    with pytest.raises(TypeError, match=r"^dice_loss: mode='multiclass' needs integer class labels as target, got "
                                        r"torch.float64$"):
        LF.dice_loss(x, t.double())
    bad = t.clone()
    bad[1, 2, 3] = 4
    with pytest.raises(IndexError, match=r"^dice_loss: target has value 4 at flat index 45, outside \[0, 4\) "
                                         r"\(logits has 4 classes\)$"):
        LF.dice_loss(x, bad)
    bad[1, 2, 3] = -1
    with pytest.raises(IndexError, match=r"^dice_loss: target has value -1 at flat index 45, outside \[0, 4\)"):
        LF.dice_loss(x, bad, ignore_index=255)
    xm, tm = _dice_inputs("multilabel")
    with pytest.raises(ValueError, match=r"^dice_loss: target must have the logits' shape \[2, 4, 5, 6\] in "
                                         r"mode='multilabel', got \[2, 3, 5, 6\]$"):
        LF.dice_loss(xm, tm[:, :3], "multilabel")
    with pytest.raises(ValueError, match=r"^dice_loss: target must not require grad"):
        LF.dice_loss(xm, tm.clone().requires_grad_(True), "multilabel")
    xb, tb = _dice_inputs("binary")
    with pytest.raises(ValueError, match=r"^dice_loss: target has shape \[2, 1, 5, 5\] but binary logits"):
        LF.dice_loss(xb, tb[..., :5], "binary")
    # smp's binary mode reshapes each sample to one channel whatever its shape: so does dice_loss
    B = xm.shape[0]
    torch.testing.assert_close(LF.dice_loss(xm, tm, "binary"),
                               LF.dice_loss(xm.reshape(B, 1, -1), tm.reshape(B, 1, -1), "binary"), rtol=0, atol=0)


def test_dice_module_checks_its_arguments():
    with pytest.raises(ValueError, match=r"^DiceLoss: mode must be 'binary', 'multiclass' or 'multilabel', got 'x'$"):
        LN.DiceLoss("x")
    with pytest.raises(ValueError, match=r"^DiceLoss: classes cannot be used with mode='binary'$"):
        LN.DiceLoss("binary", classes=[0])
    with pytest.raises(ValueError, match=r"^DiceLoss: class_weights cannot be used with mode='binary'$"):
        LN.DiceLoss("binary", class_weights=[1.0])
    with pytest.raises(ValueError, match=r"^DiceLoss: formula must be 'semimetric' or 'classic', got 'dice'$"):
        LN.DiceLoss(formula="dice")
    with pytest.raises(ValueError, match=r"^DiceLoss: smooth must be finite and >= 0, got -1.0$"):
        LN.DiceLoss(smooth=-1.0)
    with pytest.raises(ValueError, match=r"^DiceLoss: eps must be positive and finite, got 0.0$"):
        LN.DiceLoss(eps=0.0)
    with pytest.raises(TypeError, match=r"^DiceLoss: log_loss must be a bool"):
        LN.DiceLoss(log_loss="yes")
    with pytest.raises(TypeError, match=r"^DiceLoss: ignore_index must be an int"):
        LN.DiceLoss(ignore_index=1.5)


def test_dice_module_repr_and_functional():
    m = LN.DiceLoss("multilabel", classes=torch.tensor([0, 2]), log_loss=True, smooth=1, ignore_index=-1, eps=1e-6,
                    class_weights=[1, 2, 3], formula="classic")
    assert repr(m) == ("DiceLoss(mode='multilabel', classes=[0, 2], log_loss=True, from_logits=True, smooth=1.0, "
                       "ignore_index=-1, eps=1e-06, class_weights=[1.0, 2.0, 3.0], formula='classic')")
    assert repr(LN.DiceLoss()) == ("DiceLoss(mode='multiclass', classes=None, log_loss=False, from_logits=True, "
                                   "smooth=0.0, ignore_index=None, eps=1e-07, class_weights=None, "
                                   "formula='semimetric')")
    x, t = _dice_inputs("multilabel", ignore=-1, soft=True)
    x = x[:, :3]
    t = t[:, :3]
    want = LF.dice_loss(x, t, "multilabel", [0, 2], True, True, 1.0, 1e-6, -1, [1.0, 2.0, 3.0], "classic")
    assert torch.equal(m(x, t), want)
    assert torch.equal(LN.DiceLoss()(*_dice_inputs("multiclass")), LF.dice_loss(*_dice_inputs("multiclass")))


@pytest.mark.parametrize("mode", _DICE_MODES)
def test_dice_threads_bitwise(mode):
    """More than one CPU chunk (8192 pixels) per class row: values and gradients are bitwise the
    same with 1 and 2 threads (the chunks' sums are added in a fixed order)."""
    x, t = _dice_inputs(mode, torch.float32, seed=9, soft=mode != "multiclass",
                        ignore=255 if mode == "multiclass" else None,
                        shape=(2, 3, 97, 101))  # P = 9797: two chunks, the second ragged
    kw = dict(ignore_index=255) if mode == "multiclass" else {}
    results = []
    for n in (1, 2, 1, 2):
        torch.set_num_threads(n)
        results.append(_value_and_grad(lambda a, b: LF.dice_loss(a, b, mode, **kw), x, t))
    for v, g in results[1:]:
        assert torch.equal(v, results[0][0]) and torch.equal(g, results[0][1])
    torch.testing.assert_close(results[0][0].double(), R.dice_loss(x.double(), t, mode, **kw), rtol=1e-5, atol=1e-6)


def test_dice_empty_batch_is_zero():
    """No pixel (an empty batch, or empty images) means no class with target pixels: 0, with an
    empty (zero) gradient (smp cannot reshape an empty batch)."""
    for shape in ((0, 3, 4, 4), (2, 3, 0, 4)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        t = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
        loss = LF.dice_loss(x, t)
        assert loss.item() == 0.0
        (gx,) = torch.autograd.grad(loss, x)
        assert gx.shape == x.shape


@pytest.mark.skipif(not CUDA, reason="no GPU visible")
@pytest.mark.parametrize("mode", _DICE_MODES)
def test_dice_cuda_matches_cpu_and_bad_label_is_nan(mode):
    x, t = _dice_inputs(mode, torch.float32, seed=10, soft=mode != "multiclass", shape=(2, 5, 64, 129))
    v, g = _value_and_grad(lambda a, b: LF.dice_loss(a, b, mode), x, t)
    vc, gc = _value_and_grad(lambda a, b: LF.dice_loss(a, b, mode), x.cuda(), t.cuda())
    torch.testing.assert_close(vc.cpu(), v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gc.cpu(), g, rtol=1e-4, atol=1e-7)
    if mode == "multiclass":
        bad = t.clone()
        bad[1, 3, 7] = 5
        assert LF.dice_loss(x.cuda(), bad.cuda()).isnan()


# ---- pose-guided synthesis losses ----------------------------------------------------------------
# masked_l1_loss (Si et al., CVPR 2018, stages II and III) against its formula written out here,
# for every mask layout and kind; empty sides; the mask's checks. pose_regression_loss against the
# per-sample squared L2; adversarial_loss against F.binary_cross_entropy_with_logits, saturated
# logits; the generator and discriminator terms; the stage Modules against their docstrings'
# formulas composed by hand, TorchScript, repr and bad weights; determinism over threads.

def _synth(*shape, seed=0, dtype=torch.float64, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def _synth_mask(shape, kind, seed=1):
    """'bool', '01' (float 0/1), 'soft' (float weights), 'u8' (uint8 0/1)."""
    v = _synth(*shape, seed=seed, lo=0.0, hi=1.0)
    if kind == "soft":
        return v
    hard = v > 0.5
    return {"bool": hard, "01": hard.double(), "u8": hard.to(torch.uint8)}[kind]


def _masked_l1_formula(x, y, mask):
    """sum |x - y| M / sum M and sum |x - y| (1 - M) / sum (1 - M) by loops over the elements: a
    mask [B, 1, ...] or [B, ...] applies to every channel in the numerators, and its pixels count
    once (not once per channel) in the denominators; an empty side is 0."""
    B, C = x.shape[0], x.shape[1]
    d = (x.double() - y.double()).abs().reshape(B, C, -1).tolist()
    m = mask.double()
    if m.dim() == x.dim() - 1:
        m = m.unsqueeze(1)
    cm = m.shape[1]
    m = m.reshape(B, cm, -1).tolist()
    nf = nb = sf = sb = 0.0
    for b in range(B):
        for c in range(C):
            for p, v in enumerate(d[b][c]):
                w = m[b][c if cm == C else 0][p]
                nf += v * w
                nb += v * (1.0 - w)
        for c in range(cm):
            for w in m[b][c]:
                sf += w
                sb += 1.0 - w
    return (nf / sf if sf else 0.0), (nb / sb if sb else 0.0), sf, sb


_LAYOUTS = {"full": lambda b, c, sp: (b, c, *sp), "one": lambda b, c, sp: (b, 1, *sp), "flat": lambda b, c, sp: (b, *sp)}


@pytest.mark.parametrize("layout", ["full", "one", "flat"])
@pytest.mark.parametrize("kind", ["bool", "01", "soft", "u8"])
def test_masked_l1_matches_the_formula(layout, kind):
    x, y = _synth(2, 3, 5, 7, seed=2).requires_grad_(True), _synth(2, 3, 5, 7, seed=3).requires_grad_(True)
    mask = _synth_mask(_LAYOUTS[layout](2, 3, (5, 7)), kind)
    fg, bg = LF.masked_l1_loss(x, y, mask)
    want_fg, want_bg, sf, sb = _masked_l1_formula(x.detach(), y.detach(), mask)
    assert fg.dtype == bg.dtype == torch.float64 and fg.dim() == bg.dim() == 0
    torch.testing.assert_close(fg, torch.tensor(want_fg, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bg, torch.tensor(want_bg, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    # d/dx: sign(x - y) M / sum M (foreground) and sign(x - y) (1 - M) / sum (1 - M); d/dy its negative
    a, b = 0.7, -1.3
    gx, gy = torch.autograd.grad(a * fg + b * bg, (x, y))
    m = mask.double().unsqueeze(1) if layout == "flat" else mask.double()
    want = torch.sign(x - y).detach() * (a * m / sf + b * (1 - m) / sb)
    torch.testing.assert_close(gx, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gy, -want, rtol=1e-12, atol=1e-14)


def test_masked_l1_broadcast_mask_counts_each_pixel_once():
    """A constant soft mask w: with [B, C, ...] both terms are mean |x - y|; broadcast from
    [B, 1, ...] or [B, ...] over C channels the pixels count once, so both are C mean |x - y|."""
    x, y = _synth(2, 3, 4, 6, seed=4), _synth(2, 3, 4, 6, seed=5)
    mean = (x - y).abs().mean()
    for mask, scale in ((torch.full((2, 3, 4, 6), 0.25, dtype=torch.float64), 1.0),
                        (torch.full((2, 1, 4, 6), 0.25, dtype=torch.float64), 3.0),
                        (torch.full((2, 4, 6), 0.25, dtype=torch.float64), 3.0)):
        for got in LF.masked_l1_loss(x, y, mask):
            torch.testing.assert_close(got, scale * mean, rtol=1e-12, atol=0)
    # a hard [B, 1, H, W] mask and the same mask repeated over the channels: equal numerators,
    # denominators C times larger
    m = _synth_mask((2, 1, 4, 6), "01", seed=6)
    one = LF.masked_l1_loss(x, y, m)
    rep = LF.masked_l1_loss(x, y, m.expand(2, 3, 4, 6))
    for a, b in zip(one, rep):
        torch.testing.assert_close(a, 3 * b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["full", "one", "flat"])
def test_masked_l1_empty_side_is_zero_with_zero_gradient(dtype, layout):
    x = _synth(2, 3, 4, 5, seed=7, dtype=dtype).requires_grad_(True)
    y = _synth(2, 3, 4, 5, seed=8, dtype=dtype)
    shape = _LAYOUTS[layout](2, 3, (4, 5))
    for mdt in (torch.bool, torch.uint8, dtype):
        for value, empty in ((1, 1), (0, 0)):  # all ones: no background (1); all zeros: no foreground (0)
            mask = torch.full(shape, value).to(mdt)
            out = LF.masked_l1_loss(x, y, mask)
            assert all(o.isfinite() for o in out)
            assert out[empty].item() == 0.0 and out[1 - empty].item() > 0
            full = (x - y).abs().detach().sum() / (x[:, :1].numel() if layout != "full" else x.numel())
            torch.testing.assert_close(out[1 - empty], full.to(dtype))
            g_empty, = torch.autograd.grad(out[empty], x, retain_graph=True)
            assert (g_empty == 0).all()
            g, = torch.autograd.grad(out[0] + out[1], x)
            assert g.isfinite().all() and (g != 0).all()
    # an empty batch: both sides empty
    e = torch.zeros(0, 3, 4, 5, dtype=dtype, requires_grad=True)
    fg, bg = LF.masked_l1_loss(e, torch.zeros(0, 3, 4, 5, dtype=dtype), torch.zeros(shape[:0] + (0,) + shape[1:]))
    assert fg.item() == 0.0 and bg.item() == 0.0
    assert torch.autograd.grad(fg + bg, e)[0].shape == e.shape


def test_masked_l1_refuses_a_mask_that_requires_grad():
    x, y = _synth(2, 3, 4, 4, seed=9), _synth(2, 3, 4, 4, seed=10)
    mask = _synth_mask((2, 1, 4, 4), "soft").requires_grad_(True)
    with pytest.raises(ValueError, match=r"^masked_l1_loss: mask must not require grad"):
        LF.masked_l1_loss(x, y, mask)
    fg, bg = LF.masked_l1_loss(x, y, mask.detach())  # detached: fine
    assert fg.isfinite() and bg.isfinite()


@pytest.mark.parametrize("shape", [(2, 3, 4, 3), (2, 2, 4, 4), (1, 1, 4, 4), (2, 16), (2, 3, 4, 4, 1), (3, 4, 4), (4,)])
def test_masked_l1_wrong_mask_shape_names_mask(shape):
    x, y = _synth(2, 3, 4, 4, seed=11), _synth(2, 3, 4, 4, seed=12)
    with pytest.raises(ValueError, match=r"^masked_l1_loss: mask must have shape \[2, 3, 4, 4\], \[B, 1, \.\.\.\] or "
                                         r"\[B, \.\.\.\] \(input is \[2, 3, 4, 4\]\), got " + str(list(shape)).replace("[", r"\[")
                                         .replace("]", r"\]")):
        LF.masked_l1_loss(x, y, torch.ones(shape))
    with pytest.raises(TypeError, match="^masked_l1_loss: mask must be a Tensor"):
        LF.masked_l1_loss(x, y, [[1.0]])


def test_masked_l1_module_terms_and_reference():
    """The float64 reference equals the formula; float32 input with a float64 mask: float32 out."""
    x, y = _synth(3, 2, 6, 5, seed=13), _synth(3, 2, 6, 5, seed=14)
    m = _synth_mask((3, 6, 5), "soft", seed=15)
    want = _masked_l1_formula(x, y, m)[:2]
    for got in (R.masked_l1_loss(x, y, m), LF.masked_l1_loss(x, y, m)):
        torch.testing.assert_close(torch.stack(list(got)), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    fg, bg = LF.masked_l1_loss(x.float(), y.float(), m)
    assert fg.dtype == bg.dtype == torch.float32
    torch.testing.assert_close(torch.stack([fg, bg]).double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6,
                               atol=0)


def test_masked_l1_bitwise_equal_over_threads():
    """P = 12288 pixels (more than one 8192-pixel chunk): 1 and 2 threads, forward and backward."""
    x = _synth(2, 3, 128, 96, seed=16, dtype=torch.float32)
    y = _synth(2, 3, 128, 96, seed=17, dtype=torch.float32)
    runs = []
    for mask in (_synth_mask((2, 1, 128, 96), "bool", seed=18), _synth_mask((2, 3, 128, 96), "soft", seed=19).float()):
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            xr = x.clone().requires_grad_(True)
            fg, bg = LF.masked_l1_loss(xr, y, mask)
            g, = torch.autograd.grad(0.3 * fg + 0.7 * bg, xr)
            runs.append((threads, fg.detach(), bg.detach(), g))
        base = runs[-3]
        for threads, fg, bg, g in runs[-2:]:
            assert torch.equal(fg, base[1]) and torch.equal(bg, base[2]) and torch.equal(g, base[3]), threads


# pose regression

@pytest.mark.parametrize("shape", [(4, 18, 2), (3, 17, 8, 6), (5,), (1, 18, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pose_regression_is_the_per_sample_squared_l2(shape, reduction):
    p, t = _synth(*shape, seed=20).requires_grad_(True), _synth(*shape, seed=21).requires_grad_(True)
    got = LF.pose_regression_loss(p, t, reduction)
    per = ((p - t) ** 2).reshape(shape[0], -1).sum(1)
    want = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    assert got.shape == want.shape == ((shape[0],) if reduction == "none" else ())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    go = torch.rand(got.shape, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(got, (p, t), go), torch.autograd.grad(want, (p, t), go),
                               rtol=1e-12, atol=1e-14)
    assert LN.PoseTransformerLoss(reduction=reduction)(p, t).equal(got)


def test_pose_regression_empty_batch_and_module():
    e = torch.zeros(0, 18, 2, requires_grad=True)
    assert LF.pose_regression_loss(e, e.detach(), "mean").isnan()  # torch's mean of nothing
    assert LF.pose_regression_loss(e, e.detach(), "sum").item() == 0.0
    assert LF.pose_regression_loss(e, e.detach(), "none").shape == (0,)
    m = LN.PoseTransformerLoss()
    assert repr(m) == "PoseTransformerLoss(reduction='mean')"
    p, t = _synth(3, 18, 2, seed=22, dtype=torch.float32), _synth(3, 18, 2, seed=23, dtype=torch.float32)
    assert torch.jit.script(m)(p, t).equal(m(p, t))
    with pytest.raises(ValueError, match="PoseTransformerLoss: reduction"):
        LN.PoseTransformerLoss(reduction="avg")


# adversarial terms

def _bce(x, real, reduction):
    return nn.functional.binary_cross_entropy_with_logits(x, torch.full_like(x, 1.0 if real else 0.0),
                                                          reduction=reduction)


@pytest.mark.parametrize("shape", [(6,), (2, 1, 30, 30)])
@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_adversarial_loss_is_bce_with_logits(shape, real, reduction):
    x = _synth(*shape, seed=24, lo=-6.0, hi=6.0).requires_grad_(True)
    got = LF.adversarial_loss(x, real, reduction)
    want = _bce(x, real, reduction)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    go = torch.rand(got.shape, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(got, x, go)[0], torch.autograd.grad(want, x, go)[0],
                               rtol=1e-12, atol=1e-14)
    gen = LF.gan_generator_loss(x, reduction)
    assert gen.equal(LF.adversarial_loss(x, True, reduction))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [100.0, 1e4])
def test_adversarial_loss_saturated_logits_stay_finite(dtype, scale):
    x = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=dtype) * scale
    for real in (True, False):
        xr = x.clone().requires_grad_(True)
        per = LF.adversarial_loss(xr, real, "none")
        assert per.isfinite().all()
        label = 1.0 if real else 0.0
        # softplus(-x) or softplus(x): about |x| where the logit is wrong, e^-|x| where it is right
        wrong = (x < 0) if real else (x > 0)
        torch.testing.assert_close(per[wrong], x[wrong].abs(), rtol=1e-6, atol=0)
        torch.testing.assert_close(per, _softplus(-x if real else x).to(dtype), rtol=1e-6, atol=0)
        g, = torch.autograd.grad(per.sum(), xr)  # sigmoid(x) - label
        assert g.isfinite().all()
        torch.testing.assert_close(g, torch.sigmoid(x) - label, rtol=1e-6, atol=1e-30)
        mean = LF.adversarial_loss(x, real)
        assert mean.isfinite() and torch.allclose(mean.double(), per.double().mean())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gan_discriminator_loss_is_real_term_plus_fake_term(reduction):
    real = _synth(3, 1, 8, 8, seed=25, lo=-5.0, hi=5.0).requires_grad_(True)
    fake = _synth(5, 1, 6, 6, seed=26, lo=-5.0, hi=5.0).requires_grad_(True)  # another size: each reduces alone
    got = LF.gan_discriminator_loss(real, fake, reduction)
    want = _bce(real, True, reduction) + _bce(fake, False, reduction)  # no 0.5 (pix2pix halves it)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert got.equal(LF.adversarial_loss(real, True, reduction) + LF.adversarial_loss(fake, False, reduction))
    torch.testing.assert_close(torch.autograd.grad(got, (real, fake)), torch.autograd.grad(want, (real, fake)),
                               rtol=1e-12, atol=1e-14)


def test_gan_discriminator_loss_none_needs_one_shape():
    real, fake = _synth(3, 1, 4, 4, seed=27), _synth(3, 1, 4, 4, seed=28)
    got = LF.gan_discriminator_loss(real, fake, "none")
    assert got.shape == real.shape
    torch.testing.assert_close(got, _bce(real, True, "none") + _bce(fake, False, "none"), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"^gan_discriminator_loss: reduction='none' needs real_logits and "
                                         r"fake_logits of one shape, got \[3, 1, 4, 4\] and \[2, 1, 4, 4\]$"):
        LF.gan_discriminator_loss(real, fake[:2], "none")
    assert LF.gan_discriminator_loss(real, fake[:2]).isfinite()  # 'mean': each side its own mean


# the stage Modules

def _softplus(x):
    return nn.functional.softplus(x.double())


def _stage_inputs(dtype=torch.float64):
    gen, tgt = _synth(2, 3, 8, 6, seed=29, dtype=dtype), _synth(2, 3, 8, 6, seed=30, dtype=dtype)
    mask = _synth_mask((2, 1, 8, 6), "bool", seed=31)
    logits = [_synth(*s, seed=32 + i, lo=-3.0, hi=3.0, dtype=dtype) for i, s in enumerate([(2, 1, 4, 4), (2,),
                                                                                             (2, 1, 4, 4), (2,)])]
    return gen, tgt, mask, logits


def test_foreground_stage_loss_is_its_formula():
    """L2 = alpha_f L_fg + beta_f L_bg - log D(F^) and L2_D = -log D(F) - log(1 - D(F^)), every
    -log D a softplus of the logits."""
    gen, tgt, mask, (fake, _, real, _) = _stage_inputs()
    gen.requires_grad_(True)
    fg, bg, _, _ = _masked_l1_formula(gen.detach(), tgt, mask)
    m = LN.ForegroundStageLoss(alpha_f=2.0, beta_f=0.25)
    got = m(gen, tgt, mask, fake)
    torch.testing.assert_close(got, 2.0 * fg + 0.25 * bg + _softplus(-fake).mean(), rtol=1e-12, atol=1e-14)
    assert torch.autograd.grad(got, gen)[0].isfinite().all()
    d = m.discriminator_loss(real, fake)
    torch.testing.assert_close(d, _softplus(-real).mean() + _softplus(fake).mean(), rtol=1e-12, atol=1e-14)


def test_background_stage_loss_is_its_formula():
    """L3 = alpha_b L_fg + beta_b L_bg - log D_fg(I^ M) - log D(I^), and L3_D the two
    discriminators' real and fake terms."""
    gen, tgt, mask, (fake_fg, fake, real_fg, real) = _stage_inputs()
    fg, bg, _, _ = _masked_l1_formula(gen, tgt, mask)
    m = LN.BackgroundStageLoss(alpha_b=0.5, beta_b=3.0)
    got = m(gen, tgt, mask, fake_fg, fake)
    want = 0.5 * fg + 3.0 * bg + _softplus(-fake_fg).mean() + _softplus(-fake).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    d = m.discriminator_loss(real_fg, fake_fg, real, fake)
    want_d = _softplus(-real_fg).mean() + _softplus(fake_fg).mean() + _softplus(-real).mean() + _softplus(fake).mean()
    torch.testing.assert_close(d, want_d, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script's deprecation
def test_stage_losses_script_and_repr():
    gen, tgt, mask, (f1, f2, r1, r2) = _stage_inputs(torch.float32)
    fgm = LN.ForegroundStageLoss(1.0, 0.5)
    bgm = LN.BackgroundStageLoss(2, 0)
    sf, sb = torch.jit.script(fgm), torch.jit.script(bgm)
    assert sf(gen, tgt, mask, f1).equal(fgm(gen, tgt, mask, f1))
    assert sf.discriminator_loss(r1, f1).equal(fgm.discriminator_loss(r1, f1))
    assert sb(gen, tgt, mask, f1, f2).equal(bgm(gen, tgt, mask, f1, f2))
    assert sb.discriminator_loss(r1, f1, r2, f2).equal(bgm.discriminator_loss(r1, f1, r2, f2))
    assert repr(fgm) == "ForegroundStageLoss(alpha_f=1.0, beta_f=0.5)"
    assert repr(bgm) == "BackgroundStageLoss(alpha_b=2.0, beta_b=0.0)"


@pytest.mark.parametrize("cls,names", [(LN.ForegroundStageLoss, ("alpha_f", "beta_f")),
                                       (LN.BackgroundStageLoss, ("alpha_b", "beta_b"))])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1.0", None])
def test_stage_losses_refuse_bad_weights_naming_them(cls, names, bad):
    for i, name in enumerate(names):
        args = [1.0, 1.0]
        args[i] = bad
        kind = TypeError if isinstance(bad, str) or bad is None else ValueError
        with pytest.raises(kind, match=rf"^{cls.__name__}: {name} must be"):
            cls(*args)


@pytest.mark.skipif(not CUDA, reason="no GPU visible")
def test_synthesis_losses_cuda_match_cpu():
    x, y = _synth(4, 3, 128, 96, seed=36, dtype=torch.float32), _synth(4, 3, 128, 96, seed=37, dtype=torch.float32)
    for mask in (_synth_mask((4, 1, 128, 96), "bool", seed=38), _synth_mask((4, 3, 128, 96), "soft", seed=39).float(),
                 torch.ones(4, 128, 96), torch.zeros(4, 1, 128, 96)):
        xc, xr = x.cuda().requires_grad_(True), x.clone().requires_grad_(True)
        got, want = LF.masked_l1_loss(xc, y.cuda(), mask.cuda()), LF.masked_l1_loss(xr, y, mask)
        for a, b in zip(got, want):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-7)
        ga, = torch.autograd.grad(got[0] + 2 * got[1], xc)
        gb, = torch.autograd.grad(want[0] + 2 * want[1], xr)
        torch.testing.assert_close(ga.cpu(), gb, rtol=1e-5, atol=1e-9)
    p, t = _synth(64, 18, 2, seed=40, dtype=torch.float32), _synth(64, 18, 2, seed=41, dtype=torch.float32)
    torch.testing.assert_close(LF.pose_regression_loss(p.cuda(), t.cuda(), "none").cpu(),
                               LF.pose_regression_loss(p, t, "none"))
    z = _synth(8, 1, 30, 30, seed=42, lo=-100.0, hi=100.0, dtype=torch.float32)
    for real in (True, False):
        torch.testing.assert_close(LF.adversarial_loss(z.cuda(), real, "none").cpu(), LF.adversarial_loss(z, real, "none"))


# ---- joints_mse_loss's one-pass forward (issue #15) -----------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_joints_one_pass_equals_the_sums_path(monkeypatch, dtype, reduction, weighted):
    """joints_mse_loss_with_grad (taken for reduced losses without OHKM whose heatmaps require
    grad) against the sums path: the loss, the output's, target's and target_weight's gradients,
    for grad_output 1 and 0.3; a zero weight's heatmap gets a zero gradient even where it is NaN."""
    import lossext.dense.ops as DO
    g = torch.Generator().manual_seed(7)
    x0 = torch.rand(3, 5, 6, 7, generator=g, dtype=torch.float64).to(dtype)
    t0 = torch.rand(3, 5, 6, 7, generator=g, dtype=torch.float64).to(dtype)
    w0 = (torch.rand(3, 5, 1, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    w0[1, 2] = 0
    x0[1, 2, 0, 0] = float("nan")

    def run(go):
        x, t = x0.clone().requires_grad_(), t0.clone().requires_grad_()
        w = w0.clone().requires_grad_() if weighted else None
        loss = LF.joints_mse_loss(x, t, w, reduction=reduction)
        leaves = [x, t] + ([w] if weighted else [])
        return (loss.detach(),) + torch.autograd.grad(loss, leaves, torch.tensor(go, dtype=dtype))

    xg = x0.clone().requires_grad_()
    assert DO.joints_one_pass(xg, 1, False, 42) and not DO.joints_one_pass(xg, 0, False, 42)
    assert not DO.joints_one_pass(xg, 1, True, 42) and not DO.joints_one_pass(xg.half(), 1, False, 42)
    assert not DO.joints_one_pass(x0, 1, False, 42)
    for go in (1.0, 0.3):
        if not weighted:  # the NaN pixel's row counts: the loss and its gradient are NaN there
            x0[1, 2, 0, 0] = 0.25
        one = run(go)
        monkeypatch.setattr(DO, "joints_one_pass", lambda *a: False)
        two = run(go)
        monkeypatch.undo()
        tol = dict(rtol=1e-5, atol=1e-9) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-18)
        for a, b in zip(one, two):
            torch.testing.assert_close(a, b, equal_nan=True, **tol)
        if weighted:
            assert torch.all(one[1][1, 2] == 0)


def test_joints_one_pass_retain_graph_and_create_graph():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    t = torch.rand(2, 3, 4, 4)
    loss = LF.joints_mse_loss(x, t)
    a, = torch.autograd.grad(loss, x, retain_graph=True)
    b, = torch.autograd.grad(loss, x, torch.tensor(2.0), retain_graph=True)
    torch.testing.assert_close(b, 2 * a)
    c, = torch.autograd.grad(loss, x)
    assert torch.equal(a, c)
    g, = torch.autograd.grad(LF.joints_mse_loss(x, t), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_ohkm_one_node_path_is_bitwise_the_composite(monkeypatch, dtype, reduction, weighted):
    """OHKM in eager training takes one autograd node (lossext/dense/ops.py _OhkmNode); its
    loss and its gradients (output and target) are bitwise the composite's, for grad_output 1
    and 0.3 (the composite's dLoss/dS chain, rebuilt in the backward); ties pick the lower joint
    as the sort does; a NaN map is selected first and makes the loss NaN, as the composite's."""
    import lossext.dense.ops as DO
    g = torch.Generator().manual_seed(11)
    x0 = torch.rand(4, 7, 5, 6, generator=g, dtype=torch.float64).to(dtype)
    t0 = torch.rand(4, 7, 5, 6, generator=g, dtype=torch.float64).to(dtype)
    t0[0, 3] = x0[0, 3]  # an exact zero-error joint
    x0[2, 1] = x0[2, 4]  # equal errors: a tie
    t0[2, 1] = t0[2, 4]
    w0 = (torch.rand(4, 7, 1, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None

    def run(go):
        x, t = x0.clone().requires_grad_(), t0.clone().requires_grad_()
        loss = LF.joints_mse_loss(x, t, w0, ohkm_topk=3, reduction=reduction)
        name = type(loss.grad_fn).__name__
        return (name, loss.detach()) + torch.autograd.grad(loss, [x, t], torch.tensor(go, dtype=dtype))

    for go in (1.0, 0.3):
        one = run(go)
        monkeypatch.setattr(DO, "ohkm_one_node", lambda *a: False)
        two = run(go)
        monkeypatch.undo()
        assert one[0] == "_OhkmNodeBackward" and two[0] != one[0]
        for a, b in zip(one[1:], two[1:]):
            assert torch.equal(a, b)
        assert torch.equal(one[3], -one[2])
    # a NaN map is selected (the sort puts NaN first) and makes the loss NaN, as the composite's
    x0[1, 5, 0, 0] = float("nan")
    assert run(1.0)[1].isnan()
    # retain_graph: the same gradient twice; create_graph: the double backward raises
    x = x0.clone().requires_grad_()
    loss = LF.joints_mse_loss(x, t0, w0, ohkm_topk=3, reduction=reduction)
    a, = torch.autograd.grad(loss, x, retain_graph=True)
    b, = torch.autograd.grad(loss, x)
    assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
    gg, = torch.autograd.grad(LF.joints_mse_loss(x, t0, w0, ohkm_topk=3, reduction=reduction), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gg.sum().backward()
    # where the one-node path is not taken: 'none', half maps, no grad, a target_weight that requires grad
    xg = x0.clone().requires_grad_()
    assert DO.ohkm_one_node(xg, None, 1, 30, 3) and not DO.ohkm_one_node(xg, None, 0, 30, 3)
    assert not DO.ohkm_one_node(xg.half(), None, 1, 30, 3) and not DO.ohkm_one_node(x0, None, 1, 30, 3)
    assert not DO.ohkm_one_node(xg, torch.ones(4, 7, requires_grad=True), 1, 30, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["broadcast", "full", "empty_fg"])
def test_masked_l1_one_node_path_is_bitwise_the_composite(monkeypatch, dtype, layout):
    """masked_l1_loss in eager training takes one autograd node (lossext/dense/ops.py
    _MaskedL1Node); its two losses and its gradients (input and target) are bitwise the
    composite's for several pairs of grad_outputs (one of them None: an unused side), with an
    empty foreground too; where it is not taken (no grad, torch.func)."""
    import lossext.dense.ops as DO
    g = torch.Generator().manual_seed(21)
    x0 = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64).to(dtype)
    y0 = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64).to(dtype)
    y0[0, 1] = x0[0, 1]  # exact zeros of x - y: the sign's 0
    shape = (3, 1, 5, 6) if layout == "broadcast" else (3, 4, 5, 6)
    m0 = (torch.rand(shape, generator=g) > 0.4).to(dtype)
    if layout == "empty_fg":
        m0.zero_()

    def run(gf, gb):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        fg, bg = LF.masked_l1_loss(x, y, m0)
        name = type(fg.grad_fn).__name__
        outs = [o for o, go in ((fg, gf), (bg, gb)) if go is not None]
        gos = [torch.tensor(go, dtype=dtype) for go in (gf, gb) if go is not None]
        return (name, fg.detach(), bg.detach()) + torch.autograd.grad(outs, [x, y], gos)

    for gf, gb in ((1.0, 1.0), (0.3, 1.7), (None, 2.0), (0.5, None)):
        one = run(gf, gb)
        monkeypatch.setattr(DO, "masked_l1_one_node", lambda *a: False)
        two = run(gf, gb)
        monkeypatch.undo()
        assert one[0] == "_MaskedL1NodeBackward" and two[0] != one[0]
        for a, b in zip(one[1:], two[1:]):
            assert torch.equal(a, b), (gf, gb)
        assert torch.equal(one[4], -one[3])
    x = x0.clone().requires_grad_()
    assert DO.masked_l1_one_node(x, y0) and not DO.masked_l1_one_node(x0, y0)
    with torch.no_grad():
        assert not DO.masked_l1_one_node(x, y0)
    fx = torch.func.grad(lambda a: sum(LF.masked_l1_loss(a, y0, m0)))(x0)  # the registered ops' path
    assert torch.equal(fx, run(1.0, 1.0)[3])
    gg, = torch.autograd.grad(sum(LF.masked_l1_loss(x, y0, m0)), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gg.sum().backward()
