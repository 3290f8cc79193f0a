"""Age-estimation Modules: MeanVarianceLoss.

Every Module checks all its arguments at construction, shows them all in its repr and is
scriptable (torch.jit.script)."""
from torch import Tensor, nn

from . import functional as F

__all__ = ["MeanVarianceLoss"]


class MeanVarianceLoss(nn.Module):
    """The Mean-Variance loss on logits [N, K] over age bins and ages [N], as
    :func:`lossext.functional.mean_variance_loss` (Pan et al., CVPR 2018). The age estimate at
    test time is :func:`lossext.functional.age_from_logits`."""

    def __init__(self, lambda_mean=0.2, lambda_var=0.05, start_age=0, include_softmax=True, reduction="mean",
                 return_components=False):
        super().__init__()
        n = type(self).__name__
        (self.lambda_mean, self.lambda_var, self.start_age, self.include_softmax, self.reduction,
         self.return_components) = F.eager_numbers(n, lambda_mean, lambda_var, start_age, include_softmax, reduction,
                                                   return_components)
        F.check_settings(n, self.lambda_mean, self.lambda_var, self.start_age)
        self._fn = n

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.mean_variance_loss(logits, target, self.lambda_mean, self.lambda_var, self.start_age,
                                    self.include_softmax, self.reduction, self.return_components)

    def extra_repr(self):
        return (f"lambda_mean={self.lambda_mean!r}, lambda_var={self.lambda_var!r}, start_age={self.start_age!r}, "
                f"include_softmax={self.include_softmax!r}, reduction={self.reduction!r}, "
                f"return_components={self.return_components!r}")
