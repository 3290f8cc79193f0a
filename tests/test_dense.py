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
