"""Float64 references of the dense-prediction losses, written from the authors' code, and the
composites the peers run (the benchmarks' eager and torch.compile baselines).

joints_mse_loss: HRNet's lib/core/loss.py (leoxiaobin/deep-high-resolution-net.pytorch), its
JointsMSELoss and JointsOHKMMSELoss loops written out per joint (``joints_mse_loss_hrnet``,
with HRNet's ``.squeeze()`` replaced by a reshape so that B = 1 works and its topk by a stable
sort so that ties go to the lower joint), and the vectorized composite ``joints_mse_loss``.

dice_loss: segmentation_models_pytorch's losses/dice.py and losses/_functional.py (0.6.0:
soft_dice_score is soft_tversky_score at alpha = beta = 1/2, the intersection from the L1
norm; 0.3.4: 2 sum p t / sum (p + t)) written out in float64 (``dice_loss``); its composite
as smp runs it (``dice_loss_smp``: log_softmax().exp(), one_hot, permute; the benchmark's
baseline). masked_l1_loss, pose_regression_loss and the GAN terms: the formulas of Si et al.,
CVPR 2018, as the seed writes them."""
import math

import torch
import torch.nn.functional as F

__all__ = ["joints_mse_loss", "joints_mse_loss_hrnet", "joints_mse_loss_hrnet_loop", "mask_rcnn_loss", "dice_loss",
           "dice_loss_smp", "masked_l1_loss", "masked_l1_loss_composite", "pose_regression_loss", "adversarial_loss",
           "gan_generator_loss", "gan_discriminator_loss"]


def _weight(target_weight, B, K):
    return None if target_weight is None else target_weight.reshape(B, K).to(torch.float64)


def joints_mse_loss_hrnet(output, target, target_weight=None, ohkm_topk=None, reduction="mean"):
    """HRNet's structure: per joint, 0.5 * MSE(pred * w, gt * w), 'mean' over the batch and
    pixels; the mean over the joints, or OHKM's per-sample top-k."""
    B, K = output.shape[0], output.shape[1]
    P = math.prod(output.shape[2:])
    pred = output.reshape(B, K, P).to(torch.float64)
    gt = target.reshape(B, K, P).to(torch.float64)
    w = _weight(target_weight, B, K)
    terms = []  # [B] per joint
    for idx in range(K):
        hp, hg = pred[:, idx], gt[:, idx]
        if w is not None:
            hp, hg = hp * w[:, idx:idx + 1], hg * w[:, idx:idx + 1]
        terms.append(0.5 * F.mse_loss(hp, hg, reduction="none").mean(dim=1))
    per = torch.stack(terms, 1) if K else pred.sum(-1)  # [B, K]
    if ohkm_topk is not None:
        k = min(ohkm_topk, K)
        rows = []
        for i in range(B):
            # the largest first (NaN above every number, as torch.sort), ties to the lower joint
            v = per[i].tolist()
            order = sorted(range(K), key=lambda j: (0 if math.isnan(v[j]) else 1, -v[j] if not math.isnan(v[j]) else 0, j))[:k]
            rows.append(per[i, order].sum() / k if k else per.new_tensor(float("nan")))
        per = torch.stack(rows) if B else per.sum(1)
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()


def joints_mse_loss(output, target, target_weight=None, ohkm_topk=None, reduction="mean"):
    """The vectorized composite: (w x - w y)^2 over the heatmaps, means, OHKM by topk."""
    B, K = output.shape[0], output.shape[1]
    if target_weight is not None:
        w = target_weight.reshape(B, K, *([1] * (output.dim() - 2))).to(output.dtype)
        output, target = output * w, target * w
    per = 0.5 * ((output - target) ** 2).reshape(B, K, math.prod(output.shape[2:])).mean(-1)
    if ohkm_topk is not None:
        k = min(ohkm_topk, K)
        per = torch.sort(per, dim=1, descending=True, stable=True)[0][:, :k].sum(1) / k
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()


def joints_mse_loss_hrnet_loop(output, target, target_weight=None, ohkm_topk=None):
    """HRNet's classes' structure in the inputs' dtype, as its training runs them (the
    benchmark's eager baseline): a Python loop over the joints of nn.MSELoss on w-multiplied
    heatmaps, and for OHKM a loop over the samples with torch.topk (k <= K) and gather."""
    B, K = output.shape[0], output.shape[1]
    pred = output.reshape(B, K, -1).split(1, 1)
    gt = target.reshape(B, K, -1).split(1, 1)
    terms = []
    for idx in range(K):
        hp, hg = pred[idx].squeeze(1), gt[idx].squeeze(1)
        if target_weight is not None:
            hp, hg = hp.mul(target_weight[:, idx]), hg.mul(target_weight[:, idx])
        terms.append(0.5 * F.mse_loss(hp, hg, reduction="none" if ohkm_topk else "mean"))
    if ohkm_topk is None:
        return sum(terms) / K
    loss = torch.cat([t.mean(dim=1).unsqueeze(1) for t in terms], 1)
    total = 0.0
    for i in range(B):
        _, idx = torch.topk(loss[i], k=ohkm_topk, dim=0, sorted=False)
        total = total + torch.gather(loss[i], 0, idx).sum() / ohkm_topk
    return total / B


def _bce_with_logits(x, t):
    """BCE with logits as t softplus(-x) + (1 - t) softplus(x), each term 0 where its factor is 0
    (the limit at an infinite logit with a hard target, where torch's formula gives NaN; the
    kernels' rule, dense_math.h); equal to F.binary_cross_entropy_with_logits elsewhere."""
    def term(w, sp):
        return w * torch.where((w == 0) & torch.isinf(sp), torch.zeros_like(sp), sp)
    return term(t, F.softplus(-x)) + term(1 - t, F.softplus(x))


def mask_rcnn_loss(mask_logits, labels, mask_targets, reduction="mean"):
    """torchvision's maskrcnn_loss after its projection: the labelled channel gathered, the BCE
    with logits, its mean; empty: mask_logits.sum() * 0 (the BCE as _bce_with_logits)."""
    R = mask_logits.shape[0]
    x = mask_logits[torch.arange(R, device=mask_logits.device), labels.long()]
    loss = _bce_with_logits(x, mask_targets)
    if reduction == "none":
        return loss
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0
    return loss.sum() if reduction == "sum" else loss.mean()


def _dice_inputs(logits, target, mode, from_logits, ignore_index):
    """smp's DiceLoss.forward up to compute_score: (p, t) as [B, C, P] float64, ignored pixels zeroed."""
    x = logits.to(torch.float64)
    B = x.shape[0]
    if from_logits:
        x = x.log_softmax(dim=1).exp() if mode == "multiclass" else F.logsigmoid(x).exp()
    if mode == "binary":  # explicit sizes (smp's -1 is ambiguous for an empty batch, where smp raises)
        P = math.prod(x.shape[1:])
        t = target.reshape(B, 1, P).to(torch.float64)
        p = x.reshape(B, 1, P)
        if ignore_index is not None:
            keep = t != ignore_index
            p, t = p * keep, t * keep
        return p, t
    C, P = x.shape[1], math.prod(x.shape[2:])
    p = x.reshape(B, C, P)
    if mode == "multiclass":
        lab = target.reshape(B, P).long()
        keep = torch.ones_like(lab, dtype=torch.bool) if ignore_index is None else lab != ignore_index
        t = F.one_hot(torch.where(keep, lab, torch.zeros_like(lab)), C).permute(0, 2, 1).to(torch.float64)
        return p * keep.unsqueeze(1), t * keep.unsqueeze(1)
    t = target.reshape(B, C, P).to(torch.float64)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p * keep, t * keep
    return p, t


def dice_loss(logits, target, mode="multiclass", classes=None, log_loss=False, from_logits=True, smooth=0.0,
              eps=1e-7, ignore_index=None, class_weights=None, formula="semimetric"):
    """smp's DiceLoss in float64, sums over dims (0, 2): 'semimetric' (smp >= 0.4: Tversky
    at 1/2, 1/2 with I = (sum p + sum t - |p - t|_1) / 2) or 'classic' (smp <= 0.3.4)."""
    p, t = _dice_inputs(logits, target, mode, from_logits, ignore_index)
    dims = (0, 2)
    if formula == "semimetric":
        ps, ts = p.sum(dims), t.sum(dims)
        inter = (ps + ts - (p - t).abs().sum(dims)) / 2
        fp, fn = ps - inter, ts - inter
        score = (inter + smooth) / (inter + 0.5 * fp + 0.5 * fn + smooth).clamp_min(eps)
    else:
        score = (2.0 * (p * t).sum(dims) + smooth) / ((p + t).sum(dims) + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    loss = loss * (t.sum(dims) > 0).to(loss.dtype)
    if classes is not None:
        loss = loss[torch.as_tensor(classes, dtype=torch.long, device=loss.device)]
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=torch.float64, device=loss.device)
        if classes is not None:
            w = w[torch.as_tensor(classes, dtype=torch.long, device=loss.device)]
        return (loss * w).sum() / w.sum()
    return loss.mean()


def dice_loss_smp(logits, target, mode="multiclass", log_loss=False, from_logits=True, smooth=0.0, eps=1e-7):
    """smp 0.6.0's DiceLoss as it runs, in the input's dtype (the benchmark baseline):
    exp(log_softmax), one_hot + permute, then its Tversky score over dims (0, 2)."""
    x = logits
    B = x.shape[0]
    if from_logits:
        x = x.log_softmax(dim=1).exp() if mode == "multiclass" else F.logsigmoid(x).exp()
    C = x.shape[1]
    p = x.reshape(B, C, -1)
    if mode == "multiclass":
        t = F.one_hot(target.reshape(B, -1), C).permute(0, 2, 1)
    else:
        t = target.reshape(B, C, -1)
    t = t.type_as(p)
    dims = (0, 2)
    ps, ts = p.sum(dims), t.sum(dims)
    inter = (ps + ts - torch.linalg.vector_norm(p - t, ord=1, dim=dims)) / 2
    score = (inter + smooth) / (inter + 0.5 * (ps - inter) + 0.5 * (ts - inter) + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    loss = loss * (t.sum(dims) > 0).to(loss.dtype)
    return loss.mean()


def _mask_like(mask, input):
    m = mask.to(torch.float64)
    return m.unsqueeze(1) if m.dim() == input.dim() - 1 else m


def masked_l1_loss(input, target, mask):
    """(sum |x - y| M / sum M, sum |x - y| (1 - M) / sum (1 - M)) in float64, the sums of the
    mask as given (broadcast over the channels in the numerators only), 0 for an empty side."""
    x, y = input.to(torch.float64), target.to(torch.float64)
    m = _mask_like(mask, input)
    d = (x - y).abs()
    nf, nb = (d * m).sum(), (d * (1 - m)).sum()
    sf, sb = m.sum(), (1 - m).sum()
    # an empty side: 0 on the graph, also where a NaN or inf of the other side makes its numerator NaN (inf * 0)
    fg = nf / sf if float(sf) != 0 else (nf * 0).nan_to_num(0.0, 0.0, 0.0)
    bg = nb / sb if float(sb) != 0 else (nb * 0).nan_to_num(0.0, 0.0, 0.0)
    return fg, bg


def masked_l1_loss_composite(input, target, mask):
    """The composite as a port writes it, in the input's dtype (the benchmark baseline)."""
    m = mask.unsqueeze(1) if mask.dim() == input.dim() - 1 else mask
    m = m.to(input.dtype)
    d = (input - target).abs()
    fg = (d * m).sum() / m.sum().clamp_min(1e-12)
    bg = (d * (1 - m)).sum() / (1 - m).sum().clamp_min(1e-12)
    return fg, bg


def pose_regression_loss(pred, target, reduction="mean"):
    """sum over each sample's values of (P* - P)^2, then 'mean' / 'sum' over the batch or 'none'."""
    B = pred.shape[0]
    per = ((pred.to(torch.float64) - target.to(torch.float64)) ** 2).reshape(B, math.prod(pred.shape[1:])).sum(1)
    return per if reduction == "none" else (per.sum() if reduction == "sum" else per.mean())


def adversarial_loss(logits, target_is_real, reduction="mean"):
    """softplus(-x) (real) or softplus(x) (fake), in float64."""
    x = logits.to(torch.float64)
    v = F.softplus(-x) if target_is_real else F.softplus(x)
    return v if reduction == "none" else (v.sum() if reduction == "sum" else v.mean())


def gan_generator_loss(fake_logits, reduction="mean"):
    return adversarial_loss(fake_logits, True, reduction)


def gan_discriminator_loss(real_logits, fake_logits, reduction="mean"):
    return adversarial_loss(real_logits, True, reduction) + adversarial_loss(fake_logits, False, reduction)
