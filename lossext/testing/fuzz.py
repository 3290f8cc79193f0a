"""Property-based fuzzing of the OpInfo table with hypothesis (tests/test_fuzz.py).

Each OpInfo row has `fuzz(draw, device) -> FuzzCase`: `draw` is hypothesis's `data.draw`, and
the case is one call of the row's op together with what a correct implementation must do:
match the float64 reference (`error` None), or raise `error` = (exception type(s), regex), a
clear message that names the argument as the user named it and, where the message holds it,
its value. The rows build their cases from the strategies here: shapes (empty, 1, odd, rarely
a large odd size), layouts (permuted, channels_last, strided, expanded, storage offset), dtypes,
values with extremes, class labels, hyperparameters drawn valid or invalid, and the messages
of lossext/_core/validation.py's checks. A case has at most one fault, so the check that
fires is known whatever the order of the checks.

Row modules import this module inside their fuzz functions (hypothesis is a test
dependency). `settings(profile)`, PROFILES: "ci" (the default; about 40 s for the whole table
on two CPU cores), "smoke" and "long" (LOSSEXT_FUZZ_PROFILE=long: about 5 minutes; 10x "ci"
would take over 8). COUNTER counts the fuzzed calls and their time for the run's summary
(tests/conftest.py).
"""
import inspect
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from hypothesis import HealthCheck, settings as _settings, strategies as st

from .._core.validation import FLOAT_DTYPES, INT64_MAX, INT64_MIN
from .opinfo import SampleInput

_DRAWN_DTYPES = (torch.float32, torch.float64, torch.float32, torch.float64, torch.float16, torch.bfloat16)
LARGE_ODD = (1 << 16) + 3   # many CPU chunks and CUDA blocks and a ragged tail; drawn rarely
LARGE_ONE_IN = 48           # about one case in this many has a LARGE_ODD dimension


@dataclass
class FuzzCase:
    sample: SampleInput
    # None: a valid call (matches the reference); else (exception type or tuple, regex)
    error: Optional[Tuple] = None
    dtype: Optional[torch.dtype] = None    # the result's dtype (valid calls)
    # compare gradients too (float32/float64 valid calls): True, False, or the indices (in
    # sample.float_tensors() order) of the tensors whose gradients are compared
    grads: object = True
    ref: Optional[Callable] = None         # instead of the row's reference (same arguments)
    tol: Optional[Tuple[float, float]] = None   # instead of the row's tol[dtype]
    # K: a gradient entry is a sum of up to K terms (a class or row loop) as large as the largest
    # gradient entry: the gradients' atol grows by eps(dtype) K max|gradient| (rounding of sums)
    grad_terms: int = 0


# ---- settings profiles and the counter ---------------------------------------------------

_COMMON = dict(deadline=None, derandomize=True, database=None, print_blob=False, report_multiple_bugs=False,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                      HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])
PROFILES = {"smoke": 100, "ci": 400, "long": 2500}  # examples per op and device (smoke: the wheel test and
# CI's sanitizer run; ci: `make test`; long: `make sanitize`, `make fuzz`)


def settings(profile):
    if profile not in PROFILES:
        raise ValueError(f"LOSSEXT_FUZZ_PROFILE must be one of {sorted(PROFILES)}, got {profile!r}")
    return _settings(max_examples=PROFILES[profile], **_COMMON)


@dataclass
class Counter:
    """Fuzzed op calls (valid and invalid) and seconds, per op."""
    ops: Dict[str, Dict[str, float]] = field(default_factory=dict)
    profile: str = ""

    def count(self, op, valid):
        row = self.ops.setdefault(op, {"calls": 0, "valid": 0, "invalid": 0, "seconds": 0.0})
        row["calls"] += 1
        row["valid" if valid else "invalid"] += 1

    def add_time(self, op, seconds):
        self.ops.setdefault(op, {"calls": 0, "valid": 0, "invalid": 0, "seconds": 0.0})["seconds"] += seconds

    def total(self, key):
        return sum(r[key] for r in self.ops.values())

    def summary(self):
        return (f"fuzz: {self.total('calls')} calls over {len(self.ops)} ops in {self.total('seconds'):.1f} s "
                f"(profile {self.profile})")

    def as_dict(self):
        return {"profile": self.profile, "calls": self.total("calls"), "valid": self.total("valid"),
                "invalid": self.total("invalid"), "seconds": round(self.total("seconds"), 3), "ops": self.ops}


COUNTER = Counter()


# ---- choices --------------------------------------------------------------------------------

def rare(draw, one_in):
    """True in about one draw of `one_in` (a middle value: hypothesis favours the ends)."""
    return draw(st.integers(0, one_in - 1)) == one_in // 2


def fault(draw, kinds):
    """None (a valid call) about half the time, else one of `kinds`: the argument to make bad."""
    return draw(st.sampled_from(kinds)) if draw(st.booleans()) else None


def dtype(draw, dtypes=_DRAWN_DTYPES):
    """float32 and float64 (whose gradients are compared too) twice as often as each half dtype."""
    return draw(st.sampled_from(dtypes))


def other_dtype(draw, dt):
    """Usually dt, sometimes another floating dtype (the functions promote)."""
    return dt if not rare(draw, 8) else draw(st.sampled_from(FLOAT_DTYPES))


_SIZES = (0, 1, 2, 3, 5, 7, 4, 9, 13, 6, 1, 3)


def size(draw, large=False, sizes=_SIZES):
    return LARGE_ODD if large else draw(st.sampled_from(sizes))


def shape(draw, min_dims=0, max_dims=4, large=None):
    """Sizes 0, 1, odd and even small ones; with `large` (default: rarely) one LARGE_ODD
    dimension and the others at most 3."""
    nd = draw(st.integers(min_dims, max_dims))
    if large is None:
        large = nd > 0 and rare(draw, LARGE_ONE_IN)
    if not large or nd == 0:
        return tuple(size(draw) for _ in range(nd))
    at = draw(st.integers(0, nd - 1))
    return tuple(LARGE_ODD if d == at else size(draw, sizes=(1, 2, 3)) for d in range(nd))


# ---- layouts and values ---------------------------------------------------------------------

def layout(draw, shp, expand=True):
    """(stride, storage offset, storage size) of a view of `shp`: contiguous, or any of a
    permutation of the dims (a transpose) or channels_last (4-D), steps (a strided slice),
    stride 0 (expanded: only where the op reads the tensor), a storage offset."""
    nd = len(shp)
    order = list(range(nd))                         # memory order, outermost first
    how = draw(st.sampled_from(["contiguous", "permuted", "channels_last"] if nd == 4 else
                               ["contiguous", "permuted"] if nd >= 2 else ["contiguous"]))
    if how == "permuted":
        order = list(draw(st.permutations(range(nd))))
    elif how == "channels_last":
        order = [0, 2, 3, 1]
    steps = [draw(st.sampled_from([1, 2, 3])) for _ in range(nd)] if nd and rare(draw, 3) else [1] * nd
    zero = {d for d in range(nd) if draw(st.booleans())} if expand and nd and rare(draw, 4) else set()
    offset = draw(st.sampled_from([0, 0, 1, 7]))
    stride, acc = [0] * nd, 1
    for d in reversed(order):
        if d not in zero:
            stride[d] = acc * steps[d]
            acc *= max(shp[d], 1) * steps[d]
    numel = math.prod(shp)
    storage = offset + (sum((s - 1) * t for s, t in zip(shp, stride)) + 1 if numel else 0)
    return tuple(stride), offset, storage


def extremes(dt, big, nonfinite=(math.nan, math.inf, -math.inf)):
    """Values a row may inject: zeros, +-big (the row's largest magnitude that its formula
    keeps finite in the compute dtype), the smallest normal and a subnormal, and `nonfinite`."""
    tiny = torch.finfo(dt).tiny
    return [0.0, -0.0, big, -big, tiny, -tiny, tiny / 4] + list(nonfinite)


def values(draw, n, lo, hi, specials=()):
    """n float64 values: uniform in [lo, hi) from a drawn seed (drawing each of up to 2^16
    values would be slow), and, in some draws, up to 4 of `specials` at drawn positions."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    v = torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    if specials and n > 0 and draw(st.booleans()):
        for _ in range(draw(st.integers(1, min(4, n)))):
            v[draw(st.integers(0, n - 1))] = draw(st.sampled_from(specials))
    return v


def tensor(draw, shp, dt, device, lo, hi, specials=(), expand=True):
    """A tensor of shape `shp` and dtype `dt` in a drawn layout (a view of a 1-D storage, so
    that its geometry survives into the gradient checks) holding drawn values (see `values`)."""
    stride, offset, storage = layout(draw, shp, expand)
    v = values(draw, storage, lo, hi, specials)
    return v.to(device=device, dtype=dt).as_strided(shp, stride, offset)


# ---- hyperparameters --------------------------------------------------------------------------

def number_as(draw, v):
    """v as a Python float, an int (when integral) or a numpy number of the same value."""
    kinds = ["float", "numpy"] + (["int"] if float(v).is_integer() and abs(v) < 2 ** 53 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        return int(v)
    return np.float64(v) if kind == "numpy" else float(v)


def plain(v):
    """A numpy number as the Python number of the same value (what the references take)."""
    return v.item() if isinstance(v, np.generic) else v


_NOT_NUMBERS = ("2.0", None, 1j, True, [1.0])


def _type_error(fn, name, what, v):
    return TypeError, rf"^{re.escape(fn)}: {re.escape(name)} must be {what}, got {type(v).__name__}\b"


def _value_error(fn, name, rule, v):
    return ValueError, rf"^{re.escape(fn)}: {re.escape(name)} must {re.escape(rule)}, got {re.escape(str(v))}$"


@dataclass(frozen=True)
class Real:
    """A float hyperparameter: how its valid values are drawn, and the check the function
    applies (lossext/_core/validation.py), hence the error a bad value must raise.

    check: "positive" (finite and > 0; valid draws log-uniform in [lo, hi]), "finite",
    "range" (in [lo, hi], or [lo, hi) with hi_open; hi may be inf; valid draws in
    [lo, draw_hi]), "greater" (finite and > `other`; valid draws other + [lo, hi]).
    common: values drawn half the time (the papers' settings, values that pick a code path)."""
    name: str
    check: str
    lo: float
    hi: float
    common: Tuple = ()
    hi_open: bool = False
    draw_hi: Optional[float] = None
    other: Optional[str] = None

    def valid(self, draw, values=None):
        """A valid value (values: the parameters drawn so far, for `greater`)."""
        base = values[self.other] if self.check == "greater" else 0.0
        if self.common and draw(st.booleans()):
            v = draw(st.sampled_from(self.common))
            if self.check != "greater" or v > base:
                return number_as(draw, v)
        if self.check == "positive":
            v = math.exp(draw(st.floats(math.log(self.lo), math.log(self.hi))))
        elif self.check == "range":
            v = draw(st.floats(self.lo, self.draw_hi if self.draw_hi is not None else self.hi,
                               exclude_max=self.hi_open and self.draw_hi is None))
        else:
            v = base + draw(st.floats(self.lo, self.hi))
        return number_as(draw, v)

    def invalid(self, draw, fn, values=None):
        """(bad value, expected error)."""
        kind = draw(st.sampled_from(["type", "nonfinite", "bound"]))
        if kind == "type":
            v = draw(st.sampled_from(_NOT_NUMBERS))
            return v, _type_error(fn, self.name, "a real number", v)
        if self.check == "range":
            lo, hi = self.lo, self.hi
            close = ")" if self.hi_open else "]"
            bad = [math.nan, lo - 1.0, -math.inf, lo - 1e-9, hi + 0.5] + ([hi] if self.hi_open else [hi + 1e-9])
            if math.isfinite(hi):
                bad.append(math.inf)
            v = draw(st.sampled_from(bad))
            return v, _value_error(fn, self.name, f"be in [{lo}, {hi}{close}", v)
        if kind == "nonfinite" or self.check == "finite":
            v = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
            return v, _value_error(fn, self.name, "be finite", v)
        if self.check == "positive":
            v = draw(st.sampled_from([0.0, -0.0, -1.0, -1e-300, -self.hi]))
            return v, _value_error(fn, self.name, "be > 0", v)
        other = float(values[self.other])
        v = draw(st.sampled_from([other, other - 0.25, other - 10.0, -1.0]))
        return v, _value_error(fn, self.name, f"be > {self.other} ({other})", v)


def reduction(draw, fn=None, bad=False):
    """A reduction, or (bad value, expected error)."""
    if not bad:
        return draw(st.sampled_from(["mean", "sum", "none"]))
    v = draw(st.sampled_from(["avg", "MEAN", "", None, 1]))
    return v, (ValueError, rf"^{re.escape(fn)}: reduction must be 'none', 'mean' or 'sum', got {re.escape(repr(v))}$")


def flag(draw, fn=None, name=None, bad=False):
    """A bool argument (bool, or 0/1), or (bad value, expected error)."""
    if not bad:
        return draw(st.sampled_from([False, True, 0, 1]))
    v = draw(st.sampled_from(["yes", 2, -1, 0.5, None]))
    return v, _type_error(fn, name, "a bool", v)


def integer(draw, fn, name, valid=(), bad=False, bad_values=(), optional=False):
    """An int argument drawn from `valid` (as int or numpy int), or, with `bad`, (bad value,
    expected error): not an int (None too unless `optional`), outside int64, or one of
    bad_values ((value, rule) pairs: the ValueError's "must <rule>")."""
    if not bad:
        v = draw(st.sampled_from(valid))
        return np.int64(v) if draw(st.booleans()) else v
    kind = draw(st.sampled_from(["type", "range"] + (["value"] if bad_values else [])))
    if kind == "type":
        v = draw(st.sampled_from([1.5, -100.0, "3", True] + ([] if optional else [None])))
        return v, _type_error(fn, name, "an int", v)
    if kind == "range":
        v = draw(st.sampled_from([INT64_MAX + 1, INT64_MIN - 1, 2 ** 70]))
        return v, _value_error(fn, name, f"fit in int64 [{INT64_MIN}, {INT64_MAX}]", v)
    v, rule = draw(st.sampled_from(bad_values))
    return v, _value_error(fn, name, rule, v)


# ---- tensor arguments ---------------------------------------------------------------------------

def not_a_tensor(draw, fn, name, optional=False):
    """(a value that is not a Tensor, expected error)."""
    v = draw(st.sampled_from(([] if optional else [None]) + [[1.0], 1.0, "x"]))
    what = "a Tensor or None" if optional else "a Tensor"
    return v, (TypeError, rf"^{re.escape(fn)}: {re.escape(name)} must be {what}, got {type(v).__name__}$")


def not_float(draw, fn, name, shp, device, message="float16, bfloat16, float32 or float64"):
    """(a tensor of an integer, bool or complex dtype, expected error)."""
    dt = draw(st.sampled_from([torch.int64, torch.int32, torch.bool, torch.complex64]))
    t = torch.zeros(shp, dtype=dt, device=device)
    return t, (TypeError, rf"^{re.escape(fn)}: {re.escape(name)} must be {re.escape(message)}, "
                          rf"got {re.escape(str(dt))}$")


def bad_targets(draw, fn, tg, batch, rows):
    """(a bad [batch, T, 5] box-targets argument, expected error): not a tensor, integer rows,
    or 4 columns; `rows` is the message's column list, e.g. "(class, x, y, w, h)"."""
    how = draw(st.sampled_from(["type", "dtype", "shape"]))
    if how == "type":
        return not_a_tensor(draw, fn, "targets")
    if how == "dtype":
        return tg.long(), (TypeError, rf"^{re.escape(fn)}: targets must be floating {re.escape(rows)} rows, "
                                      rf"got torch.int64$")
    return tg[..., :4], (ValueError, rf"^{re.escape(fn)}: targets must have shape \[{batch}, T, 5\]")


def bad_pair_target(draw, fn, like, like_name, kinds=("type", "dtype", "shape", "device")):
    """(a bad target of an input/target pair, expected error): the checks of
    lossext._core.validation.check_pair, one of `kinds`: not a tensor, not floating, another
    shape or another device than `like` (the input, named like_name)."""
    how = draw(st.sampled_from(list(kinds)))
    if how == "type":
        return not_a_tensor(draw, fn, "target")
    if how == "dtype":
        return not_float(draw, fn, "target", like.shape, like.device)
    if how == "shape":
        o = other_shape(draw, like.shape)
        return torch.zeros(o, dtype=like.dtype, device=like.device), (
            ValueError, rf"^{re.escape(fn)}: target shape {shape_text(o)} does not match {like_name} shape")
    return on_meta(fn, "target", like, like_name)


def on_meta(fn, name, like, like_name, shp=None, dt=None):
    """(a tensor on the meta device, expected error: on another device than `like`)."""
    t = torch.empty(like.shape if shp is None else shp, dtype=dt or like.dtype, device="meta")
    return t, (ValueError, rf"^{re.escape(fn)}: {re.escape(name)} is on meta but {re.escape(like_name)} is on "
                           rf"{re.escape(str(like.device))}$")


def other_shape(draw, shp):
    """A shape that is not `shp`: one more dim, one fewer, or one size changed."""
    kinds = ["more"] + (["fewer", "size"] if shp else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "more":
        return tuple(shp) + (2,)
    if kind == "fewer":
        return tuple(shp[1:])
    return _resized(draw, shp)


def _resized(draw, shp):
    d = draw(st.integers(0, len(shp) - 1))
    return tuple(s if i != d else (s + 1 if s else 2) for i, s in enumerate(shp))


def broadcastable(draw, shp):
    """A shape that broadcasts to `shp`: leading dims dropped, others kept or 1."""
    shp = tuple(shp)[draw(st.integers(0, len(shp))):]
    return tuple(s if draw(st.booleans()) else 1 for s in shp)


def unbroadcastable(draw, shp):
    """A shape that does not broadcast to `shp`: a leading dim more, or one size changed."""
    if not shp or draw(st.booleans()):
        return (draw(st.sampled_from([1, 2])),) + tuple(shp)
    return _resized(draw, shp)


def shape_text(shp):
    """A shape as the checks print it ([2, 3]), as a regex."""
    return re.escape(str(list(shp)))


def labels(draw, n, c, device, ignore_index=-100, bad=False):
    """[n] class labels in [0, c), some ignore_index; with `bad`, at least one outside [0, c)
    and not ignore_index, as large as int64 allows. In the narrowest integer dtype drawn
    among those that hold them. Returns (labels, first bad (index, value) or None)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    t = torch.randint(0, max(c, 1), (n,), generator=gen)
    if n and draw(st.booleans()):
        for _ in range(draw(st.integers(1, min(3, n)))):
            t[draw(st.integers(0, n - 1))] = ignore_index
    first = None
    if bad and n:
        outside = [v for v in (c, c + 1, -1, -c - 1, c + 1000, INT64_MIN, INT64_MAX) if v != ignore_index]
        for _ in range(draw(st.integers(1, min(3, n)))):
            t[draw(st.integers(0, n - 1))] = draw(st.sampled_from(outside))
        bad_at = ((t != ignore_index) & ((t < 0) | (t >= c))).nonzero()
        i = int(bad_at[0, 0])
        first = (i, int(t[i]))
    fits = [dt for dt in (torch.uint8, torch.int8, torch.int16, torch.int32)
            if n and torch.iinfo(dt).min <= int(t.min()) and int(t.max()) <= torch.iinfo(dt).max]
    dt = draw(st.sampled_from([torch.int64] * 3 + fits))
    return t.to(device=device, dtype=dt), first


def bad_label_error(fn, first):
    i, v = first
    return IndexError, rf"^{re.escape(fn)}: target has value {v} at index {i}, outside \[0, "


def arguments(draw, leading, params, positional):
    """(args, kwargs) of a call: the `leading` tensors, then params [(name, value, default)]
    in the function's order, the first k of them (k drawn, at most `positional`: those the
    reference takes positionally too) passed positionally, the rest as keywords, and a
    keyword whose value is its default sometimes left out."""
    k = draw(st.integers(0, positional))
    args = list(leading) + [v for _, v, _ in params[:k]]
    kwargs = {}
    for name, v, default in params[k:]:
        if _is_default(v, default) and draw(st.booleans()):
            continue
        kwargs[name] = v
    return tuple(args), kwargs


def signature_params(fn, ref, leading, values):
    """arguments()'s params and positional count for fn(*leading, **values): every parameter
    of fn after the leading tensors, in order, with its default; positional as far as the
    reference takes them positionally (before its keyword-only ones)."""
    sig = inspect.signature(fn).parameters
    names = list(sig)[len(leading):]
    kinds = [p.kind for p in inspect.signature(ref).parameters.values()]
    positional = sum(k == inspect.Parameter.POSITIONAL_OR_KEYWORD for k in kinds) - len(leading)
    return [(n, values[n], sig[n].default) for n in names], positional


def _is_default(v, default):
    """v is the parameter's default (the same value and Python type: 1 is not 1.0 or True)."""
    if v is default:
        return True
    v = plain(v)
    return isinstance(v, numbers.Number) and type(v) is type(default) and v == default
