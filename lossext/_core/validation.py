"""Argument checks of the Python API, shared by every family. They raise TypeError, ValueError
or IndexError naming the argument as the user named it and its value, before any kernel runs
(the kernels check again for direct torch.ops.lossext.* calls).

Two kinds:
- eager-only normalizers (`number`, `integer`, `flag`, `reduction`, `promote`): the Python types
  a user may pass (Python and numpy numbers, any numbers.Real/Integral), type promotion and
  autocast. A function calls them under `if not torch.jit.is_scripting():`.
- scriptable checks (everything else): the same rules on typed values, so a function stays
  scriptable with torch.jit.script and keeps its checks there. No keyword-only arguments and
  no f-string conversions here: TorchScript supports neither.
"""
import math
import numbers
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import amp

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# reduction string -> the raw ops' int (0 none, 1 mean, 2 sum; torch's at::Reduction numbering)
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1


# ---- eager-only normalizers ---------------------------------------------------------------

def number(fn, name, value):
    """A real number (Python, numpy or any numbers.Real, not bool) as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__} ({value!r})")
    return float(value)


def integer(fn, name, value, lo=INT64_MIN, hi=INT64_MAX):
    """An integer (Python, numpy or any numbers.Integral, not bool) in [lo, hi] (default: int64)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if not lo <= value <= hi:
        what = "fit in int64" if (lo, hi) == (INT64_MIN, INT64_MAX) else "be in"
        raise ValueError(f"{fn}: {name} must {what} [{lo}, {hi}], got {value}")
    return value


def flag(fn, name, value):
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):
        value = bool(value)  # numpy's bool is no numbers.Integral (np.True_, a comparison's result)
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__} ({value!r})")
    return bool(value)


def reduction(fn, value):
    if not isinstance(value, str) or value not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {value!r}")
    return value


def tensor(fn, name, t, optional=False):
    if t is None and optional:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor{' or None' if optional else ''}, got {type(t).__name__}")
    return t


def promote(fn, policy, names, *tensors):
    """The floating tensors as the op takes them: under autocast on their device, cast by the
    op's autocast policy (lossext/_core/amp.py); outside it, promoted to one dtype by torch's
    type promotion (as F.mse_loss does for input and target). Each must be a Tensor (a
    TypeError naming it; None included: the scriptable checks would fail on it without a
    name); tensors that are not floating are left to the scriptable checks, which name them."""
    for name, t in zip(names, tensors):
        tensor(fn, name, t)
    floats = [t for t in tensors if t.is_floating_point()]
    if not floats:
        return tensors
    first = floats[0]
    tensors = amp.cast_inputs(policy, first.device.type, *tensors)
    dtype = None
    for t in tensors:
        if t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t for t in tensors)


# ---- scriptable checks --------------------------------------------------------------------

def reduction_enum(fn: str, reduction: str) -> int:
    if reduction == "none":
        return 0
    if reduction == "mean":
        return 1
    if reduction == "sum":
        return 2
    raise ValueError(fn + ": reduction must be 'none', 'mean' or 'sum', got '" + reduction + "'")


def check_finite(fn: str, name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(fn + ": " + name + " must be finite, got " + str(value))
    return value


def check_positive(fn: str, name: str, value: float) -> float:
    check_finite(fn, name, value)
    if not value > 0.0:
        raise ValueError(fn + ": " + name + " must be > 0, got " + str(value))
    return value


def check_greater(fn: str, name: str, value: float, other_name: str, other: float) -> float:
    check_finite(fn, name, value)
    if not value > other:
        raise ValueError(fn + ": " + name + " must be > " + other_name + " (" + str(other) + "), got " + str(value))
    return value


def check_range(fn: str, name: str, value: float, lo: float, hi: float, hi_open: bool) -> float:
    if math.isnan(value) or value < lo or value > hi or (hi_open and value == hi):
        close = ")" if hi_open else "]"
        raise ValueError(fn + ": " + name + " must be in [" + str(lo) + ", " + str(hi) + close + ", got " + str(value))
    return value


def check_float_tensor(fn: str, name: str, t: Tensor):
    if t.dtype not in [torch.float16, torch.bfloat16, torch.float32, torch.float64]:
        raise TypeError(fn + ": " + name + " must be float16, bfloat16, float32 or float64, got " + str(t.dtype))


def check_device(fn: str, name: str, t: Tensor, other_name: str, other: Tensor):
    if t.device != other.device:
        raise ValueError(fn + ": " + name + " is on " + str(t.device) + " but " + other_name + " is on "
                         + str(other.device))


def check_pair(fn: str, input: Tensor, target: Tensor, input_name: str = "input", target_name: str = "target"):
    """input and target: floating tensors of the same shape, dtype and device (named as the
    function names them, e.g. torchvision's inputs and targets)."""
    check_float_tensor(fn, input_name, input)
    check_float_tensor(fn, target_name, target)
    if target.dtype != input.dtype:
        raise TypeError(fn + ": " + target_name + " dtype " + str(target.dtype) + " does not match " + input_name
                        + " dtype " + str(input.dtype))
    if target.shape != input.shape:
        raise ValueError(fn + ": " + target_name + " shape " + str(list(target.shape)) + " does not match "
                         + input_name + " shape " + str(list(input.shape)))
    check_device(fn, target_name, target, input_name, input)


def _broadcasts_to(shape: List[int], to: List[int]) -> bool:
    if len(shape) > len(to):
        return False
    off = len(to) - len(shape)
    for i in range(len(shape)):
        if shape[i] != 1 and shape[i] != to[off + i]:
            return False
    return True


def prepare_weight(fn: str, weight: Optional[Tensor], input: Tensor, input_name: str = "input") -> Optional[Tensor]:
    """An optional per-element weight broadcastable to input; returned expanded to input's shape
    in input's dtype (bool and integer masks are converted). Autograd sums the expanded gradient
    back to weight's own shape."""
    if weight is None:
        return None
    check_device(fn, "weight", weight, input_name, input)
    if weight.is_complex():
        raise TypeError(fn + ": weight must be real, got " + str(weight.dtype))
    if not _broadcasts_to(weight.shape, input.shape):
        raise ValueError(fn + ": weight of shape " + str(list(weight.shape)) + " does not broadcast to " + input_name
                         + " shape " + str(list(input.shape)))
    if weight.dtype != input.dtype:
        weight = weight.to(input.dtype)
    return weight.expand(input.shape)


def check_rows(fn: str, name: str, x: Tensor, cols_name: str, rows_name: str = "N"):
    """A 2-D floating tensor [rows, cols]."""
    check_float_tensor(fn, name, x)
    if x.dim() != 2:
        raise ValueError(fn + ": " + name + " must be 2-D [" + rows_name + ", " + cols_name + "], got shape "
                         + str(list(x.shape)))


def check_labels(fn: str, target: Tensor, n: int, like: Tensor, like_name: str) -> Tensor:
    """Integer class labels [n]; returned as int64. Their range is checked by the kernels
    (`raise_from_kernel` turns the CPU kernel's error into IndexError)."""
    if target.dtype not in [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]:
        raise TypeError(fn + ": target must be integer class indices, got " + str(target.dtype))
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(fn + ": target must have shape [" + str(n) + "], got " + str(list(target.shape)))
    check_device(fn, "target", target, like_name, like)
    return target.long()


def check_vector(fn: str, name: str, v: Optional[Tensor], n: int, like: Tensor, what: str) -> Optional[Tensor]:
    """An optional floating vector [n], converted to like's dtype."""
    if v is None:
        return None
    if not v.is_floating_point():
        raise TypeError(fn + ": " + name + " must be floating point, got " + str(v.dtype))
    if v.dim() != 1 or v.shape[0] != n:
        raise ValueError(fn + ": " + name + " must have shape [" + str(n) + "] [" + what + "], got "
                         + str(list(v.shape)))
    check_device(fn, name, v, "the logits", like)
    return v.to(like.dtype)


# ---- kernel errors as Python errors -------------------------------------------------------

def raise_from_kernel(fn, err, names=None, value_errors=()):
    """Re-raises a RuntimeError of a lossext kernel ("lossext::<op>: argument '<arg>' ...") as
    the error of the function the user called, naming the argument as the user named it
    (names: the op's argument name -> the user's). An out-of-range label is an IndexError, as
    in F.cross_entropy; a message containing one of `value_errors` (phrases of the family's
    kernel checks) is a ValueError. Other errors are re-raised unchanged."""
    msg = str(err)
    start = msg.find("lossext::")
    if start < 0:
        raise err
    head, _, rest = msg[start:].partition(": ")
    if rest.startswith("argument '"):
        arg, _, tail = rest[len("argument '"):].partition("'")
        rest = (names or {}).get(arg, arg) + tail
    kind = IndexError if " outside [0, " in rest and "target" in rest else RuntimeError
    if any(v in rest for v in value_errors):
        kind = ValueError
    raise kind(f"{fn}: {rest}") from None
