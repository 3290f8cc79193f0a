import os

import pytest
import torch

import lossext  # noqa: F401
from lossext.testing import OP_DB, forced_cpu_isa
from lossext.testing.opinfo import outputs

# GPU cases are generated everywhere and skipped where no GPU is visible.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no GPU visible"))]


# Every CPU variant this machine can run (baseline x86-64, AVX2, AVX-512; lossext.set_cpu_isa).
CPU_ISAS = lossext.supported_cpu_isas()
# LOSSEXT_TEST_CPU_ISAS=best: only the best variant (the wheel test, tests/wheel_test.sh: the
# variants are the same code in the wheel and the in-place build, and `make test` runs them all).
VARIANTS = CPU_ISAS[-1:] if os.environ.get("LOSSEXT_TEST_CPU_ISAS") == "best" else CPU_ISAS


def pytest_generate_tests(metafunc):
    if "info" in metafunc.fixturenames:
        metafunc.parametrize("info", OP_DB, ids=[o.name for o in OP_DB])
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)
    if "cpu_isa" in metafunc.fixturenames:
        metafunc.parametrize("cpu_isa", VARIANTS, indirect=True)


@pytest.fixture
def cpu_isa(request):
    """A test taking `cpu_isa` runs once per CPU variant of this machine, with that variant
    forced (on CUDA, where it changes nothing, only under the best one)."""
    isa = request.param
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda" and isa != CPU_ISAS[-1]:
        pytest.skip("a CPU variant; the CUDA case runs once, under the best")
    with forced_cpu_isa(isa):
        yield isa


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def to_ref(sample):
    """The sample in float64 on the CPU, detached: the reference's input."""
    return sample.map_tensors(lambda t: t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype))


def assert_close(actual, expected, rtol, atol, msg=""):
    if isinstance(actual, (tuple, list)) or isinstance(expected, (tuple, list)):  # several outputs: each
        for i, (a, e) in enumerate(output_pairs(actual, expected)):
            assert_close(a, e, rtol, atol, f"{msg} (output {i})")
        return
    torch.testing.assert_close(actual.detach().to("cpu", torch.float64), expected.detach().to(torch.float64),
                               rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{msg}\n{m}")


def output_pairs(actual, expected):
    """[(actual output, expected output)] of two results with the same number of outputs."""
    a, e = outputs(actual), outputs(expected)
    assert len(a) == len(e), f"{len(a)} outputs, expected {len(e)}"
    return list(zip(a, e))


def grad_outputs(out, grad_seed=0):
    """A fixed random grad_output for each output of out (in order, from one generator)."""
    gen = torch.Generator().manual_seed(grad_seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outputs(out)]


def grads_of(fn, sample, grad_seed=0):
    """fn(sample) and the gradients wrt every floating tensor of the sample (zeros where unused),
    backpropagating a fixed random grad_output (one per output of an op with several)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in sample.float_tensors()]
    s = sample.replace_float_tensors(leaves)
    out = fn(*s.args, **s.kwargs)
    if all(o.numel() == 0 for o in outputs(out)):
        return out, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(outputs(out), leaves, grad_outputs(out, grad_seed), allow_unused=True)
    return out, [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)]


def pytest_terminal_summary(terminalreporter):
    """The fuzzer's calls and time (tests/test_fuzz.py; lossext.testing.fuzz.COUNTER), and with
    LOSSEXT_FUZZ_REPORT=path the counts as JSON there."""
    import json
    import os
    import sys

    fuzz = sys.modules.get("lossext.testing.fuzz")  # not imported: nothing was fuzzed
    if fuzz is None or not fuzz.COUNTER.ops:
        return
    terminalreporter.write_line(fuzz.COUNTER.summary())
    path = os.environ.get("LOSSEXT_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(fuzz.COUNTER.as_dict(), f, indent=1)


def pytest_runtest_logreport(report):
    """With LOSSEXT_FAILURE_LOG=path, each failing test's id and traceback are appended there as it
    fails (under pytest-xdist too: the controller gets every worker's reports), so that a run
    stopped at a time limit (benchmarks/gpu_check.sh) still says what failed."""
    import os

    path = os.environ.get("LOSSEXT_FAILURE_LOG")
    if path and report.failed:
        with open(path, "a") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n\n")
