"""Every raw op writes every element of every output: each raw call (OpInfo.raw_calls) runs on
memory filled with two different garbage patterns, and the results must be bitwise equal.

- CPU: two child processes whose glibc malloc fills every allocation with 0xfe or 0x41 bytes
  (GLIBC_TUNABLES=glibc.malloc.perturb; torch's CPU allocator is posix_memalign), so an element
  an op leaves unwritten reads -1.7e38 in one run and 12.08 in the other (float32).
- CUDA: in this process, blocks of exactly the outputs' sizes are filled with 0xff (NaN) or
  0x41 and freed just before the call; the caching allocator hands those blocks to the op.
The sanitizer build (tools/sanitize.sh) fills every other CPU allocation with 0xff (NaN), and
its children here with the same two patterns, through ASan's malloc."""
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_PERTURB = (0x01, 0xBE)  # glibc fills each allocation with the complement: 0xfe, 0x41


def _garbage_env(perturb):
    """The child's environment: glibc's malloc, or ASan's in the sanitizer build, fills every
    allocation with the byte ~perturb."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    return dict(os.environ, GLIBC_TUNABLES=f"glibc.malloc.perturb={perturb}",
                ASAN_OPTIONS=f"{asan}:malloc_fill_byte={~perturb & 0xFF}:max_malloc_fill_size=2147483647")
CUDA_PATTERNS = (0xFF, 0x41)


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _calls(info, device):
    """[(key, raw op name, args)] for a row: small samples in float32 and float64, and a large
    odd one (many CPU chunks, several CUDA blocks per row)."""
    samples = []
    for dtype in (torch.float32, torch.float64):
        samples += list(info.sample_inputs(device, dtype, small=True))
    samples.append(info.bench_input(100_003, device, torch.float32))
    return [(f"{i}:{name}", name, args) for i, s in enumerate(samples) for name, args in info.raw_calls(s)]


def _run(info, device):
    return {key: [t.detach().cpu() for t in _outputs(getattr(torch.ops.lossext, name)(*args))]
            for key, name, args in _calls(info, device)}


def _same(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


def _compare(info, first, second, what):
    assert first.keys() == second.keys()
    for key in first:
        for i, (a, b) in enumerate(zip(first[key], second[key])):
            assert _same(a, b), f"{info.name}: {key.split(':', 1)[1]} output {i} (call {key}) depends on {what}"


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    """Every row's raw calls on the CPU, in two children with different malloc garbage."""
    out = []
    for perturb in CPU_PERTURB:
        path = tmp_path_factory.mktemp("written") / f"perturb{perturb}.pt"
        env = _garbage_env(perturb)
        r = subprocess.run([sys.executable, os.path.abspath(__file__), str(path)], env=env, cwd=HERE,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out.append(torch.load(path))
    return out


def test_every_output_element_is_written(info, device, request):
    if device == "cpu":
        first, second = request.getfixturevalue("cpu_runs")
        _compare(info, first[info.name], second[info.name], "the garbage malloc left in its memory")
        return
    runs = []
    for byte in CUDA_PATTERNS:
        results = {}
        for key, name, args in _calls(info, device):
            op = getattr(torch.ops.lossext, name)
            sizes = [t.untyped_storage().nbytes() for t in _outputs(op(*args))]
            blocks = [torch.full((max(n, 1),), byte, dtype=torch.uint8, device=device) for n in sizes]
            torch.cuda.synchronize()
            del blocks
            results[key] = [t.detach().cpu() for t in _outputs(op(*args))]
        runs.append(results)
    _compare(info, *runs, "the garbage left in the caching allocator's blocks")


def test_the_check_sees_an_unwritten_element(tmp_path):
    """The CPU priming is real: an output with one element left unwritten differs between the
    two children (so the test above can fail)."""
    code = ("import torch, sys; x = torch.arange(100_003, dtype=torch.float32); out = torch.empty_like(x); "
            "out[:500] = x[:500]; out[501:] = x[501:]; print(out[500].item())")
    seen = set()
    for perturb in CPU_PERTURB:
        env = _garbage_env(perturb)
        seen.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    assert len(seen) == 2, seen


if __name__ == "__main__":  # the child of cpu_runs: every row's raw calls, saved to argv[1]
    sys.path.insert(0, HERE)
    import lossext  # noqa: F401
    from lossext.testing import OP_DB

    torch.save({info.name: _run(info, "cpu") for info in OP_DB}, sys.argv[1])
