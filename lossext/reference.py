"""Pure-PyTorch references, written from the papers' formulas: every family's
(lossext/<family>/reference.py). Tests run them in float64 as ground truth; benchmarks run them
in the benchmark dtype as the eager (and torch.compile) baseline. Same signatures as
lossext.functional."""
from ._core.families import collect

__all__ = collect(globals(), "reference")
