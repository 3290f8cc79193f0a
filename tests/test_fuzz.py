"""Property-based fuzzing of every op in the OpInfo table (hypothesis; lossext/testing/fuzz.py).

Each row's `fuzz` draws a call: shapes (empty, 1, odd, rarely 2^16 + 3), layouts, dtypes,
values with extremes, labels, hyperparameters valid or not, chunk sizes. The call must either
match the float64 reference (values, NaN positions included; and gradients for float32/float64,
where the reference's are finite) or raise the error the row predicts: a TypeError, ValueError
or IndexError whose message names the argument. A crash, another exception or a silent wrong
result fails. On the CPU each call runs under a drawn CPU variant and thread count.

Profile "ci" (default) or "long": LOSSEXT_FUZZ_PROFILE=long. The run's summary line counts the
calls (tests/conftest.py; LOSSEXT_FUZZ_REPORT=path also writes them as JSON).
"""
import os
import time

import pytest
import torch
from hypothesis import assume, given, note, strategies as st  # requirements-dev.txt

import lossext
from conftest import assert_close, grad_outputs, grads_of, output_pairs, to_ref
from lossext.testing import SampleInput, forced_cpu_isa
from lossext.testing import fuzz
from lossext.testing.opinfo import outputs

PROFILE = os.environ.get("LOSSEXT_FUZZ_PROFILE", "ci")
fuzz.COUNTER.profile = PROFILE


def test_every_row_has_a_fuzz_function(info):
    assert info.fuzz is not None, (f"OpInfo {info.name!r} has no fuzz function: a new op adds one to its row "
                                   "(lossext/testing/fuzz.py; element-wise rows: lossext/testing/pointwise.py)")


def _plain(sample):
    """The sample with numpy numbers as Python numbers (the references take those)."""
    return SampleInput(tuple(fuzz.plain(a) for a in sample.args), {k: fuzz.plain(v) for k, v in sample.kwargs.items()},
                       sample.name, sample.grad_keys)


def _grads_as_laid_out(fn, sample, grad_seed=0):
    """grads_of for a sample whose tensors have layouts: each floating tensor is rebuilt as the
    same view (size, stride, offset) of a leaf holding its storage, so that the op sees the
    layout (grads_of's clones make strided and expanded views contiguous), and the gradients
    are taken wrt those views: one per logical element, as the reference's."""
    views = []
    for t in sample.float_tensors():
        storage = t.detach().as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0)
        views.append(storage.clone().requires_grad_(True).as_strided(t.size(), t.stride(), t.storage_offset()))
    s = sample.replace_float_tensors(views)
    out = fn(*s.args, **s.kwargs)
    # grads_of's grad_outputs (the same seed), and its zeros where a tensor takes no gradient
    go = grad_outputs(out, grad_seed)
    return out, list(torch.autograd.grad(outputs(out), views, go, allow_unused=True, materialize_grads=True))


def _check_valid(info, device, case, with_grad):
    s = case.sample
    ref_fn = case.ref or info.ref
    rtol, atol = case.tol or info.tol[case.dtype]
    ref_s = _plain(to_ref(s))
    if with_grad:
        actual, grads = _grads_as_laid_out(info.op, s)
        expected, rgrads = grads_of(ref_fn, ref_s)
    else:
        actual = info.op(*s.args, **s.kwargs)
        expected = ref_fn(*ref_s.args, **ref_s.kwargs)
    for a, e in output_pairs(actual, expected):
        assert a.dtype == case.dtype and a.device.type == device, (a.dtype, a.device)
        assert a.shape == e.shape, (a.shape, e.shape)
    # the reference rounded to the result's dtype: the best the op can return (an overflow is inf)
    best = [e.detach().to(case.dtype).double() for e in outputs(expected)]
    assert_close(actual, best if isinstance(expected, (tuple, list)) else best[0], rtol, atol, f"values of {s!r}")
    if with_grad and case.grads and case.dtype in (torch.float32, torch.float64):
        # torch.where's masked branch makes some reference ones NaN; at a NaN input the op's gradient
        # is NaN (tests/test_bad_input.py), where the reference's may not be (torch.sign(NaN) = 0)
        finite = [rg.isfinite() & ~x.detach().cpu().isnan() for rg, x in zip(rgrads, s.float_tensors())]
        largest = max((float(rg[f].abs().max()) for rg, f in zip(rgrads, finite) if f.any()), default=0.0)
        for i, (g, rg, f) in enumerate(zip(grads, rgrads, finite)):
            if case.grads is not True and i not in case.grads:
                continue
            # a leaf of a coarser dtype than the result's (promoted) gets its gradient rounded to it
            coarser = torch.finfo(g.dtype).eps > torch.finfo(case.dtype).eps
            grtol, gatol = info.tol[g.dtype] if coarser else (rtol, atol)
            gatol += torch.finfo(case.dtype).eps * case.grad_terms * largest
            best = rg.to(g.dtype).double()  # as for the values: an overflow in the leaf's dtype is inf
            assert_close(g.cpu()[f], best[f], grtol, gatol, f"gradient of floating tensor {i} of {s!r}")


def _describe(case):
    """The drawn call, for the failure report: every argument; tensors with their geometry and,
    when small, their values."""
    def show(v):
        if not isinstance(v, torch.Tensor):
            return repr(v)
        text = f"Tensor({v.dtype}, {v.device}, size={tuple(v.shape)}, stride={v.stride()}, offset={v.storage_offset()}"
        if v.device.type != "meta" and v.numel() <= 64:
            text += f", {v.tolist()}"
        return text + ")"
    s = case.sample
    args = [show(a) for a in s.args] + [f"{k}={show(v)}" for k, v in s.kwargs.items()]
    return f"call({', '.join(args)}) -> {'error ' + repr(case.error) if case.error else case.dtype}"


@fuzz.settings(PROFILE)
@given(data=st.data())
def test_fuzz(info, device, data):
    if info.fuzz is None:
        pytest.fail(f"OpInfo {info.name!r} has no fuzz function")
    case = info.fuzz(data.draw, device)
    assume(case is not None)  # a draw with no check on this device (a bad target the CUDA kernels cannot read back)
    s = case.sample
    note(_describe(case))
    isa = data.draw(st.sampled_from(lossext.supported_cpu_isas()), label="cpu_isa") if device == "cpu" else None
    threads = data.draw(st.sampled_from(sorted({1, torch.get_num_threads()})), label="threads")
    with_grad = case.error is None and data.draw(st.booleans(), label="with_grad")
    fuzz.COUNTER.count(info.name, case.error is None)
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with forced_cpu_isa(isa or lossext.cpu_isa()):
            if case.error is not None:
                types, regex = case.error
                with pytest.raises(types, match=regex):
                    info.op(*s.args, **s.kwargs)
            else:
                _check_valid(info, device, case, with_grad)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _time_fuzz(request):
    """Adds each fuzz test's wall time (generation, calls, references) to the counter."""
    t0 = time.perf_counter()
    yield
    callspec = getattr(request.node, "callspec", None)
    if request.node.originalname == "test_fuzz" and callspec is not None:
        fuzz.COUNTER.add_time(callspec.params["info"].name, time.perf_counter() - t0)
