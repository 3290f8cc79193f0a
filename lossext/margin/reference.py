"""Float64 references of the margin-softmax losses, and the composites the peers run
(pytorch-metric-learning, insightface): the benchmarks' eager and torch.compile baselines."""
import math

import torch

__all__ = ["target_margin", "cross_entropy", "margin_cross_entropy", "fused_linear_margin_cross_entropy",
           "fused_linear_cross_entropy", "margin_cross_entropy_composite",
           "fused_linear_margin_cross_entropy_composite"]


def target_margin(cos, m1=1.0, m2=0.0, m3=0.0, lambda_=0.0, easy_margin=False):
    """The target's cosine after the margin (see functional.margin_cross_entropy)."""
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    if m1 == 1.0 and m2 == 0.0:
        psi = cos
    elif m1 == 1.0:
        # ArcFace, Deng et al. CVPR 2019 Eq. 3, with insightface's rule past theta + m2 > pi
        phi = torch.cos(theta + m2)
        if easy_margin:
            psi = torch.where(cos > 0, phi, cos)
        else:
            psi = torch.where(cos > math.cos(math.pi - m2), phi, cos - math.sin(math.pi - m2) * m2)
    else:
        # A-Softmax, Liu et al. CVPR 2017 Eq. 7: psi = (-1)^k cos(m1 theta + m2) - 2k
        phi = m1 * theta + m2
        k = torch.floor(phi / math.pi).clamp_min(0)
        psi = (1.0 - 2.0 * torch.remainder(k, 2)) * torch.cos(phi) - 2.0 * k
    if not torch.is_tensor(lambda_) and lambda_ == 0:
        return psi - m3  # no annealing: psi itself (0 * cos would be NaN for a cosine of -inf)
    annealed = (lambda_ * cos + psi) / (1.0 + lambda_)  # SphereFace Sec. 3.4
    return torch.where(torch.as_tensor(lambda_, dtype=torch.float64, device=cos.device) == 0, psi, annealed) - m3


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch.nn.functional.cross_entropy's definition for class indices, written out:
    per row (1 - eps) w_y (-log p_y) + eps / C sum_j w_j (-log p_j); 'mean' divides by the sum
    of w_y over the rows that are not ignored."""
    n, c = logits.shape
    target = target.long()  # any integer dtype, as the functions take
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    w = torch.ones(c, dtype=logits.dtype, device=logits.device) if weight is None else weight
    logp = torch.log_softmax(logits, dim=1)
    nll = -logp.gather(1, t[:, None])[:, 0] * w[t]
    smooth = -(logp * w).sum(1)
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    per_row = (1.0 - label_smoothing) * nll
    # as F.cross_entropy: the smoothing term only with smoothing (else a -inf logit's 0 * inf is
    # NaN), and none for C = 0 (no rows then: the functions refuse N > 0)
    if label_smoothing > 0 and c > 0:
        per_row = per_row + label_smoothing / c * smooth
    per_row = torch.where(valid, per_row, zero)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / torch.where(valid, w[t], zero).sum()


def margin_cross_entropy(cos_logits, target, scale=64.0, m1=1.0, m2=0.0, m3=0.0, label_smoothing=0.0,
                         weight=None, ignore_index=-100, reduction="mean", *, easy_margin=False,
                         lambda_=0.0, feature_norm=None):
    # the composite the peers use (pytorch-metric-learning, insightface): modify the target
    # logit, scale, then cross-entropy
    target = target.long()
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))[:, None]
    f = target_margin(cos_logits.gather(1, t), m1, m2, m3, lambda_, easy_margin)
    logits = cos_logits.scatter(1, t, f.to(cos_logits.dtype))  # (CUDA autocast runs acos in float32)
    s = feature_norm[:, None] if feature_norm is not None else scale
    return cross_entropy(s * logits, target, weight, ignore_index, reduction, label_smoothing)


def fused_linear_margin_cross_entropy(embeddings, weight, target, scale=64.0, m1=1.0, m2=0.0, m3=0.0,
                                      label_smoothing=0.0, ignore_index=-100, reduction="mean",
                                      chunk_size=None, *, normalize=True, bias=None, easy_margin=False,
                                      lambda_=0.0):
    # normalize, matmul, margin, cross-entropy: the [N, C] logits are materialized
    if normalize:
        cos = torch.nn.functional.normalize(embeddings, dim=1) @ torch.nn.functional.normalize(weight, dim=1).t()
    else:
        cos = embeddings @ weight.t()
        if bias is not None:
            cos = cos + bias
    return margin_cross_entropy(cos, target, scale, m1, m2, m3, label_smoothing, None, ignore_index,
                                reduction, easy_margin=easy_margin, lambda_=lambda_)


def fused_linear_cross_entropy(input, weight, target, bias=None, label_smoothing=0.0, ignore_index=-100,
                               reduction="mean", chunk_size=None):
    return fused_linear_margin_cross_entropy(input, weight, target, 1.0, 1.0, 0.0, 0.0, label_smoothing,
                                             ignore_index, reduction, normalize=False, bias=bias)


def margin_cross_entropy_composite(cos_logits, target, scale=64.0, m1=1.0, m2=0.0, m3=0.0, label_smoothing=0.0,
                                   weight=None, ignore_index=-100, reduction="mean", *, easy_margin=False,
                                   lambda_=0.0, feature_norm=None):
    """What pytorch-metric-learning and insightface run: the margin on the target logit, the
    scale, then torch.nn.functional.cross_entropy. The benchmarks' eager and torch.compile
    baseline (tests check it equals margin_cross_entropy above)."""
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))[:, None]
    f = target_margin(cos_logits.gather(1, t), m1, m2, m3, lambda_, easy_margin)
    logits = cos_logits.scatter(1, t, f.to(cos_logits.dtype))  # (CUDA autocast runs acos in float32)
    s = feature_norm[:, None] if feature_norm is not None else scale
    return torch.nn.functional.cross_entropy(s * logits, target, weight=weight, ignore_index=ignore_index,
                                             reduction=reduction, label_smoothing=label_smoothing)


def fused_linear_margin_cross_entropy_composite(embeddings, weight, target, scale=64.0, m1=1.0, m2=0.0, m3=0.0,
                                                label_smoothing=0.0, ignore_index=-100, reduction="mean",
                                                chunk_size=None, *, normalize=True, bias=None, easy_margin=False,
                                                lambda_=0.0):
    """normalize, matmul, margin, torch.nn.functional.cross_entropy: the composite that
    materializes [N, C] (the benchmarks' baseline for the fused op)."""
    if normalize:
        cos = torch.nn.functional.normalize(embeddings, dim=1) @ torch.nn.functional.normalize(weight, dim=1).t()
    else:
        cos = torch.nn.functional.linear(embeddings, weight, bias)
    return margin_cross_entropy_composite(cos, target, scale, m1, m2, m3, label_smoothing, None, ignore_index,
                                          reduction, easy_margin=easy_margin, lambda_=lambda_)
