"""The CPU variants (baseline x86-64, AVX2+FMA, AVX-512; csrc/common/cpu_isa.h): each can be
forced (LOSSEXT_CPU_ISA, lossext.set_cpu_isa), python -m lossext reports the one that runs, and
all give bitwise-equal values and gradients. The generic reference, gradcheck and determinism
tests run under each variant of this machine too (the `cpu_isa` fixture, conftest.py)."""
import os
import subprocess
import sys

import pytest
import torch

import lossext
from lossext.testing import forced_cpu_isa
from lossext.testing.opinfo import outputs
from conftest import CPU_ISAS, VARIANTS, grads_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ("baseline", "avx2", "avx512")


def _python(code, **env):
    e = {k: v for k, v in os.environ.items() if k != "LOSSEXT_CPU_ISA"}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=e, capture_output=True, text=True, timeout=120)


def _bitwise_equal(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}\n{m}")


def _samples(info):
    for dtype in (torch.float64, torch.float32):
        yield from info.sample_inputs("cpu", dtype)
        yield from info.edge_inputs("cpu", dtype)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # many CPU chunks, a ragged tail
        yield info.bench_input((1 << 18) + 5, "cpu", dtype)


@pytest.mark.skipif(len(VARIANTS) < 2, reason="this CPU runs only the baseline variant, or LOSSEXT_TEST_CPU_ISAS=best")
def test_variants_agree_bitwise(info):
    for sample in _samples(info):
        results = {}
        for isa in VARIANTS:
            with forced_cpu_isa(isa):
                out, grads = grads_of(info.op, sample)
            results[isa] = [o.detach() for o in outputs(out)] + list(grads)
        best = results[CPU_ISAS[-1]]
        n = len(outputs(out))
        for isa in CPU_ISAS[:-1]:
            for i, (a, b) in enumerate(zip(results[isa], best)):
                _bitwise_equal(a, b, f"{isa} vs {CPU_ISAS[-1]}, {f'value {i}' if i < n else f'grad {i - n}'}: {sample!r}")


def test_set_cpu_isa_and_report():
    assert lossext.supported_cpu_isas() == CPU_ISAS and CPU_ISAS[0] == "baseline"
    assert set(CPU_ISAS) <= set(ALL)
    assert lossext.cpu_isa() == CPU_ISAS[-1]  # the best, by default
    for isa in CPU_ISAS:
        with forced_cpu_isa(isa):
            assert lossext.cpu_isa() == isa
            assert lossext.build_info()["cpu_isa"] == isa
    assert lossext.cpu_isa() == CPU_ISAS[-1]
    prev = lossext.set_cpu_isa("baseline")
    try:
        assert prev == CPU_ISAS[-1] and lossext.set_cpu_isa("auto") == "baseline"
    finally:
        lossext.set_cpu_isa("auto")
    assert lossext.cpu_isa() == CPU_ISAS[-1]


def test_set_cpu_isa_rejects():
    with pytest.raises(ValueError, match=r"isa must be one of .*got 'sse'"):
        lossext.set_cpu_isa("sse")
    with pytest.raises(TypeError, match="isa must be a str"):
        lossext.set_cpu_isa(1)
    for isa in ALL[len(CPU_ISAS):]:
        with pytest.raises(ValueError, match=f"isa='{isa}' cannot run on this CPU"):
            lossext.set_cpu_isa(isa)
    assert lossext.cpu_isa() == CPU_ISAS[-1]


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_environment_forces_a_variant(isa):
    code = ("import lossext, torch; from lossext.testing import OP_DB\n"
            "s = OP_DB[0].bench_input(100, 'cpu', torch.float32); OP_DB[0].op(*s.args, **s.kwargs)\n"
            "print(lossext.cpu_isa())")
    out = _python(code, LOSSEXT_CPU_ISA=isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [isa]
    main = subprocess.run([sys.executable, "-m", "lossext", "--no-bench"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, LOSSEXT_CPU_ISA=isa), timeout=120)
    assert main.returncode == 0, main.stderr
    assert f"CPU loops: {isa} (supported: {', '.join(CPU_ISAS)}" in main.stdout, main.stdout


@pytest.mark.parametrize("value", ["avx1024", "AVX2", "baseline,avx2"] + list(ALL[len(CPU_ISAS):]))
def test_environment_refuses_what_cannot_run(value):
    """An unknown name, or a variant above this CPU's: `import lossext` raises, naming the
    variable and its value (never a silent fallback, never an illegal instruction)."""
    out = _python("import lossext", LOSSEXT_CPU_ISA=value)
    assert out.returncode != 0
    assert "RuntimeError" in out.stderr and f"LOSSEXT_CPU_ISA={value}" in out.stderr, out.stderr


def test_environment_auto_and_empty_are_the_best():
    for value in ("auto", ""):
        out = _python("import lossext; print(lossext.cpu_isa())", LOSSEXT_CPU_ISA=value)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [CPU_ISAS[-1]]
