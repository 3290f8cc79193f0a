"""Functional losses, flat as torch.nn.functional: every family's functions
(lossext/<family>/functional.py). Each is a fused lossext op (forward and backward) on CPU and CUDA.

Conventions, as in torch.nn.functional:
- reduction: 'none' | 'mean' | 'sum'; empty inputs: 'mean' gives NaN, 'sum' 0, 'none' an
  empty tensor. Each family's docstrings say what 'mean' divides by.
- float16/bfloat16 compute in float32 and return the input dtype.
- NaN and inf in the inputs propagate to the loss and the gradients.
- Double backward is not supported and raises NotImplementedError.
"""
from ._core.families import collect

__all__ = collect(globals(), "functional")
