"""Argument checks of the Python API. They raise TypeError or ValueError naming the argument
and its value, before any kernel runs (the kernels check again for direct torch.ops calls)."""
import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# reduction string -> the raw ops' int (0 none, 1 mean, 2 sum; torch's at::Reduction numbering)
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def reduction_enum(fn, reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return REDUCTIONS[reduction]


def check_float_tensor(fn, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_pair(fn, input, target):
    """input and target: floating tensors of the same shape, dtype and device."""
    check_float_tensor(fn, "input", input)
    check_float_tensor(fn, "target", target)
    if target.dtype != input.dtype:
        raise TypeError(f"{fn}: target dtype {target.dtype} does not match input dtype {input.dtype}")
    if target.shape != input.shape:
        raise ValueError(
            f"{fn}: target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)}")
    if target.device != input.device:
        raise ValueError(f"{fn}: target is on {target.device} but input is on {input.device}")


def check_number(fn, name, value, *, positive=False, greater_than=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{fn}: {name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{fn}: {name} must be > 0, got {value}")
    if greater_than is not None and not value > greater_than[1]:
        raise ValueError(f"{fn}: {name} must be > {greater_than[0]} ({greater_than[1]}), got {value}")
    return value


def prepare_weight(fn, weight, input):
    """An optional per-element weight broadcastable to input; returned expanded to input's shape
    in input's dtype (bool and integer masks are converted). Autograd sums the expanded gradient
    back to weight's own shape."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{fn}: weight must be a Tensor or None, got {type(weight).__name__}")
    if weight.device != input.device:
        raise ValueError(f"{fn}: weight is on {weight.device} but input is on {input.device}")
    if weight.is_complex():
        raise TypeError(f"{fn}: weight must be real, got {weight.dtype}")
    try:
        shape = torch.broadcast_shapes(weight.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(
            f"{fn}: weight of shape {tuple(weight.shape)} does not broadcast to input shape "
            f"{tuple(input.shape)}")
    if weight.dtype != input.dtype:
        weight = weight.to(input.dtype)
    return weight.expand(input.shape)


def check_int(fn, name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    return int(value)


def check_range(fn, name, value, lo, hi, *, hi_open=False):
    value = check_number(fn, name, value)
    if not (lo <= value and (value < hi if hi_open else value <= hi)):
        raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")
    return value


def check_rows(fn, name, x, *, cols_name="C"):
    """A 2-D floating tensor [N, cols]."""
    check_float_tensor(fn, name, x)
    if x.dim() != 2:
        raise ValueError(f"{fn}: {name} must be 2-D [N, {cols_name}], got shape {tuple(x.shape)}")


def check_labels(fn, target, n, device):
    """Integer class labels [n]; returned as int64. Range is checked by the kernels (CPU raises,
    CUDA gives NaN for the row: see the op's docstring)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a Tensor, got {type(target).__name__}")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{fn}: target must be integer class indices, got {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"{fn}: target must have shape ({n},), got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"{fn}: target is on {target.device} but the logits are on {device}")
    return target.long()


def check_vector(fn, name, v, n, like, *, what="C"):
    """An optional floating vector [n], converted to like's dtype."""
    if v is None:
        return None
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor or None, got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{fn}: {name} must be floating point, got {v.dtype}")
    if v.shape != (n,):
        raise ValueError(f"{fn}: {name} must have shape ({n},) [{what}], got {tuple(v.shape)}")
    if v.device != like.device:
        raise ValueError(f"{fn}: {name} is on {v.device} but the logits are on {like.device}")
    return v.to(like.dtype)
