"""Fake kernels and autograd of the landmark ops (the element-wise pattern, lossext/_core/pointwise.py).

One-pass or recompute, measured with the raw ops at N = 2^22 float32 on the 2-core CI machine,
forward+backward, warm caches: Wing recompute 3.6 ms vs one-pass 5.9 ms (its backward is one
division per element, no log, and recompute allocates one buffer fewer); Adaptive Wing one-pass
11.9 ms vs recompute 17.3 ms (its backward would redo a log, an exp and a log1p per element).
Half precision always recomputes (see lossext/_core/pointwise.call).
"""
from .._core import pointwise

# module constants: the TorchScript branches of functional.py read them too
WING_ONE_PASS = False
ADAPTIVE_WING_ONE_PASS = True

pointwise.register("wing_loss", target_grad_is_neg_input_grad=True, one_pass=WING_ONE_PASS)
pointwise.register("adaptive_wing_loss", target_grad_is_neg_input_grad=False, one_pass=ADAPTIVE_WING_ONE_PASS)
