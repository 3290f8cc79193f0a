"""Age estimation: the Mean-Variance loss (Pan, Han, Shan, Chen, CVPR 2018) and the age estimate
it trains (the mean and variance of the softmax over age bins).

Row-wise ops: csrc/age (math in age_math.h, op bodies in age_ops.h; the pattern of a softmax
over bins with a regression on its moments). C++ API: include/lossext/age.h. Benchmarks:
lossext/age/bench.py.
"""

# The family's rows of the README loss table (tools/sync_families.py renders them; the raw ops
# come from the OpInfo rows of the functions named).
README_ROWS = [
    dict(loss="Mean-Variance (age estimation)", paper="Pan et al., CVPR 2018, Eq. 2-5",
         functional=["mean_variance_loss"], modules=["MeanVarianceLoss"],
         note="also `age_from_logits` (the estimate m and variance v)"),
]
