"""Helpers shared by the families' pure-PyTorch references."""


def reduce(loss, reduction):
    """torch.nn's reductions of an element-wise loss."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean()
