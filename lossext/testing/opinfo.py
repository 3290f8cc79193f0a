"""The one table of lossext ops, in the style of PyTorch's OpInfo: the row type and the helpers
every family's rows share.

Each family declares its rows as OP_ROWS in lossext/<family>/opinfo.py; OP_DB (here and in
lossext.testing) is every family's rows, in the order of lossext._core.families.FAMILIES.
Generic tests (tests/test_*.py) and the benchmarks (benchmarks/run.py) iterate over OP_DB; a
new loss adds rows in its family and puts only its own special tests in tests/test_<family>.py.
Helpers of the element-wise pattern's rows: lossext/testing/pointwise.py.
"""
import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .._core.validation import REDUCTIONS


@dataclass
class SampleInput:
    """A call op(*args, **kwargs). Tensors that may take gradients are the floating tensors in
    args and in the kwargs named by grad_keys (e.g. a per-element weight; a class weight or
    other constant is left out)."""
    args: Tuple
    kwargs: Dict = field(default_factory=dict)
    name: str = ""
    grad_keys: Tuple[str, ...] = ("weight",)

    def tensors(self):
        ts = [a for a in self.args if isinstance(a, torch.Tensor)]
        return ts + [self.kwargs[k] for k in self.grad_keys if isinstance(self.kwargs.get(k), torch.Tensor)]

    def float_tensors(self):
        """The floating-point tensors, in order: the ones that can take gradients (integer
        labels and masks never do)."""
        return [t for t in self.tensors() if t.is_floating_point()]

    def replace_float_tensors(self, new):
        """A copy with float_tensors() replaced, in order, by `new`."""
        it = iter(new)
        sub = lambda t: next(it) if t.is_floating_point() else t  # noqa: E731
        args = tuple(sub(a) if isinstance(a, torch.Tensor) else a for a in self.args)
        kwargs = dict(self.kwargs)
        for k in self.grad_keys:
            if isinstance(kwargs.get(k), torch.Tensor):
                kwargs[k] = sub(kwargs[k])
        return SampleInput(args, kwargs, self.name, self.grad_keys)

    def map_tensors(self, fn):
        args = tuple(fn(a) if isinstance(a, torch.Tensor) else a for a in self.args)
        kwargs = {k: (fn(v) if isinstance(v, torch.Tensor) else v) for k, v in self.kwargs.items()}
        return SampleInput(args, kwargs, self.name, self.grad_keys)

    def __repr__(self):
        shapes = [tuple(t.shape) for t in self.tensors()]
        return f"SampleInput({self.name}, shapes={shapes}, kwargs={ {k: v for k, v in self.kwargs.items() if not isinstance(v, torch.Tensor)} })"


@dataclass
class ErrorInput:
    sample: SampleInput
    error_type: type
    match: str  # regex; must name the offending argument


@dataclass
class OpInfo:
    name: str
    op: Callable                       # lossext.functional.<name> (a tensor, or a tuple: several outputs)
    ref: Callable                      # lossext.reference.<name>, same signature
    module: Callable                   # lossext.nn Module class
    raw_ops: List[str]                 # torch.ops.lossext.<raw> that implement it
    hyper: Dict                        # default hyper-parameters (Module kwargs)
    sample_inputs: Callable[..., Iterable[SampleInput]]   # (device, dtype, small) -> samples
    edge_inputs: Callable[..., Iterable[SampleInput]]     # (device, dtype) -> branch edges
    error_inputs: Callable[..., Iterable[ErrorInput]]     # (device) -> bad calls
    bench_input: Callable[..., SampleInput]               # (numel, device, dtype) -> sample
    # sample -> [(raw op name, positional args)]: direct calls of every raw op (for opcheck)
    raw_calls: Callable[[SampleInput], List[Tuple[str, Tuple]]]
    # (rtol, atol) against the float64 reference, per dtype
    tol: Dict[torch.dtype, Tuple[float, float]]
    # sample -> (Module, args, kwargs): the same call through the lossext.nn Module (None: the
    # Module does not cover this sample)
    module_call: Callable[[SampleInput], Tuple[Callable, Tuple, Dict]] = None
    # sample -> (TorchScript source defining `f`, args): a function calling a raw op
    jit_source: Callable[[SampleInput], Tuple[str, Tuple]] = None
    # device -> [(raw op name, args, regex)]: direct raw-op calls that must raise RuntimeError
    raw_error_inputs: Callable[..., List[Tuple[str, Tuple, str]]] = None
    # Which checks apply beyond the generic ones: element-wise losses (output 'none' has the
    # input's shape, a bad value at one element shows at that element only, weight broadcasts).
    elementwise: bool = False
    # The eager/compile baseline of the benchmarks when it is not `ref` (e.g. the composite the
    # peers run, where `ref` spells a formula out for float64 ground truth).
    bench_ref: Optional[Callable] = None
    # False: the generic benchmark leaves the op to its family's suite (issue-sized shapes),
    # lossext/<family>/bench.py; the demo and tests still use the row.
    bench_generic: bool = True
    # Tensors the op must read and write in each benchmark mode, as multiples of numel:
    # the memory-copy floor moves the same number of bytes.
    bench_bytes: Dict[str, int] = field(default_factory=lambda: {"forward": 2, "backward": 3, "full": 3})
    # benchmark mode -> a measured cause, said where lossext is slower than a baseline
    # (python -m lossext), e.g. work the op does on purpose that the baseline does not
    bench_notes: Dict[str, str] = field(default_factory=dict)
    # (device, dtype) -> [(Module, args, kwargs)]: every lossext.nn Module that computes this op,
    # ready to call on small inputs (the generic training-mode tests: compile once, script,
    # autocast, repr); the floating args are leaves a training step updates.
    module_samples: Callable[..., List[Tuple[Callable, Tuple, Dict]]] = None
    # (draw, device) -> lossext.testing.fuzz.FuzzCase: one drawn call and what it must do (match
    # the reference or raise naming the argument), or None for a draw with nothing to check on
    # that device (a bad target the CUDA kernels do not read back); draw is hypothesis's
    # data.draw. Every row has one (tests/test_fuzz.py); element-wise rows:
    # lossext/testing/pointwise.py's fuzz.
    fuzz: Callable = None
    # 'mean' of an empty input: NaN (torch's losses) unless the peer defines another value
    # (torchvision's box losses: 0)
    empty_mean: float = float("nan")
    # (hyper-parameter, value) the Module must refuse with a ValueError naming it (default: the
    # first hyper-parameter at -1.0, where -1.0 is not a legal value)
    module_bad_hyper: Optional[Tuple[str, object]] = None
    # sample -> True where the op's gradient is by definition not the derivative of its value
    # (a term held constant, as CIoU's alpha): gradcheck skips it, the reference still checks it
    gradcheck_skip: Optional[Callable[[SampleInput], bool]] = None
    # indices into a sample's float_tensors() that take no gradient by design (the region loss's
    # targets and anchors): gradcheck holds them constant
    constant_tensors: Tuple[int, ...] = ()
    family: str = ""                   # set by op_db() from the folder the row is in

    @property
    def has_reduction(self) -> bool:
        """Whether the op takes a `reduction`. One that does not (it returns what it returns,
        e.g. a pair of means) runs each reduction loop of the generic tests once, as it is."""
        return "reduction" in inspect.signature(self.op).parameters

    def reductions(self, wanted=("mean", "sum", "none")):
        """The reductions a generic test loops over: `wanted`, or (None,) without a reduction."""
        return tuple(wanted) if self.has_reduction else (None,)

    def with_reduction(self, kwargs, reduction):
        """A copy of kwargs with `reduction` set (unchanged for None or an op without one)."""
        return dict(kwargs) if reduction is None or not self.has_reduction else dict(kwargs, reduction=reduction)


def outputs(result) -> List[torch.Tensor]:
    """An op's result as a list of tensors: [result], or the tensors of the tuple an op returns
    (several losses of one pass); the generic tests check each output."""
    return list(result) if isinstance(result, (tuple, list)) else [result]


def op_by_name(name):
    for info in op_db():
        if info.name == name:
            return info
    raise KeyError(name)



REDUCTION = REDUCTIONS  # reduction string -> the raw ops' int


def make_tensor(shape, device, dtype, low, high, gen):
    """Uniform in [low, high), drawn in float64 from `gen` (the same values on every device)."""
    t = torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low
    return t.to(device=device, dtype=dtype)


_OP_DB = None


def op_db() -> List[OpInfo]:
    """Every family's OP_ROWS (lossext/<family>/opinfo.py), in the order of FAMILIES."""
    global _OP_DB
    if _OP_DB is None:
        from .._core.families import FAMILIES, family_module
        rows = []
        for fam in FAMILIES:
            for row in getattr(family_module(fam, "opinfo", optional=True), "OP_ROWS", None) or []:
                if row.family not in ("", fam):
                    raise ValueError(f"OpInfo {row.name!r} says family {row.family!r} but is in lossext/{fam}/")
                row.family = fam
                rows.append(row)
        _OP_DB = rows
    return _OP_DB


def __getattr__(name):  # OP_DB is built on first use: the families' rows import this module
    if name == "OP_DB":
        return op_db()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
