"""Float64 references of the age-estimation losses (the papers' formulas), and the composite the
peers run (Herosan163/AgeEstimation's MeanVarianceLoss plus F.cross_entropy): the benchmarks'
eager and torch.compile baseline."""
import torch

__all__ = ["mean_variance_loss", "age_from_logits", "mean_variance_loss_composite"]


def _reduce(v, reduction):
    return v if reduction == "none" else (v.sum() if reduction == "sum" else v.mean())


def _moments(logits, start_age):
    p = torch.softmax(logits, dim=1)
    a = start_age + torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    m = (p * a).sum(1)
    v = (p * (a[None, :] - m[:, None]) ** 2).sum(1)
    return p, m, v


def age_from_logits(logits, start_age=0):
    """(m, v) of Pan et al. Eq. 2 and 4."""
    _, m, v = _moments(logits, start_age)
    return m, v


def mean_variance_loss(logits, target, lambda_mean=0.2, lambda_var=0.05, start_age=0, include_softmax=True,
                       reduction="mean", return_components=False):
    """Pan et al., CVPR 2018, Eq. 2-5, written out: L_s + lambda_mean (m - y)^2 / 2 + lambda_var v,
    each term reduced over the rows."""
    from .functional import MeanVarianceComponents
    _, m, v = _moments(logits, start_age)
    y = target.to(logits.dtype) if target.is_floating_point() else target.to(torch.float64).to(logits.dtype)
    mean = 0.5 * (m - y) ** 2
    if include_softmax:
        b = (torch.round(target.double()) - start_age).long() if target.is_floating_point() else target.long() - start_age
        soft = torch.logsumexp(logits, 1) - logits.gather(1, b[:, None])[:, 0]
    else:
        soft = torch.zeros_like(m)
    parts = [_reduce(t, reduction) for t in (soft, mean, v)]
    total = parts[0] + lambda_mean * parts[1] + lambda_var * parts[2]
    return MeanVarianceComponents(total, *parts) if return_components else total


def mean_variance_loss_composite(logits, target, lambda_mean=0.2, lambda_var=0.05, start_age=0,
                                 include_softmax=True, reduction="mean", return_components=False):
    """What the peers run: softmax, the mean and variance by broadcasting over [N, K] (as
    Herosan163/AgeEstimation's mean_variance_loss.py), plus F.cross_entropy for the softmax term."""
    p = torch.softmax(logits, dim=1)
    a = torch.arange(start_age, start_age + logits.shape[1], dtype=logits.dtype, device=logits.device)
    mean = (p * a).sum(1)
    mse = (mean - target.to(logits.dtype)) ** 2
    b = (a[None, :] - mean[:, None]) ** 2
    var = (p * b).sum(1)
    terms = [_reduce(mse / 2.0, reduction), _reduce(var, reduction)]
    total = lambda_mean * terms[0] + lambda_var * terms[1]
    if include_softmax:
        bins = (torch.round(target) if target.is_floating_point() else target).long() - start_age
        total = total + torch.nn.functional.cross_entropy(logits, bins, reduction=reduction)
    return total
