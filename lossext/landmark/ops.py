"""Fake kernels and autograd of the landmark ops (the element-wise pattern, lossext/_core/pointwise.py).

One-pass or recompute, measured at N = 2^22 float32 on the 2-core CI machine, forward+backward:
- Wing: one pass since issue #15, whose one-pass backward returns the forward's buffer for
  grad_output = 1 (lossext/_core/autograd.scale_saved): `benchmarks/run.py --suites generic
  --ops wing_loss --modes full`, cold caches, 2.31 ms one-pass vs 2.96 ms recompute (copy floor
  1.13-1.21 ms). Before that the one-pass backward was a multiply and recompute won (raw ops,
  warm caches: 3.6 ms vs 5.9 ms).
- Adaptive Wing: one pass (raw ops, warm caches: 11.9 ms vs recompute 17.3 ms; its backward
  would redo a log, an exp and a log1p per element).
Half precision always recomputes (see lossext/_core/pointwise.call).
"""
from .._core import pointwise

# module constants: the TorchScript branches of functional.py read them too
WING_ONE_PASS = True
ADAPTIVE_WING_ONE_PASS = True

pointwise.register("wing_loss", target_grad_is_neg_input_grad=True, one_pass=WING_ONE_PASS)
pointwise.register("adaptive_wing_loss", target_grad_is_neg_input_grad=False, one_pass=ADAPTIVE_WING_ONE_PASS)
