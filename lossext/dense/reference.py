"""Float64 references of the dense-prediction losses, written from the authors' code, and the
composites the peers run (the benchmarks' eager and torch.compile baselines).

joints_mse_loss: HRNet's lib/core/loss.py (leoxiaobin/deep-high-resolution-net.pytorch), its
JointsMSELoss and JointsOHKMMSELoss loops written out per joint (``joints_mse_loss_hrnet``,
with HRNet's ``.squeeze()`` replaced by a reshape so that B = 1 works and its topk by a stable
sort so that ties go to the lower joint), and the vectorized composite ``joints_mse_loss``."""
import math

import torch
import torch.nn.functional as F

__all__ = ["joints_mse_loss", "joints_mse_loss_hrnet", "joints_mse_loss_hrnet_loop", "mask_rcnn_loss"]


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
