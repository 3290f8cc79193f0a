"""python -m lossext as a new user meets it (issue #8, "Friction found when tried as a new user
would", last item): each benchmark row shows the op's real shapes, --device cuda without a GPU
is one line and no traceback, every option has help text, and every row where lossext is
slower than a baseline says why. The CLI runs in a subprocess on small inputs, CPU only."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from lossext.testing import OP_DB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMEL = 6000  # not a power of two, so no shape can be mistaken for the "2^k" numel label


def _run(args, env_extra=None, code=None, timeout=120):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "lossext", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _bench_rows(stdout):
    """{(op, mode): [cells]} of the timing table (cells split on runs of 2+ spaces)."""
    names = {o.name for o in OP_DB}
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 3 and cells[0] in names and cells[1] in ("forward", "full"):
            rows[(cells[0], cells[1])] = cells
    return rows


def _expected_shape(op):
    sample = op.bench_input(NUMEL, "cpu", torch.float32)
    fmt = lambda t: "x".join(str(d) for d in t.shape)  # noqa: E731
    if op.elementwise:
        return fmt(sample.args[0])
    return ", ".join(fmt(t) for t in sample.float_tensors())


def test_rows_show_the_real_shapes():
    out = _run(["--device", "cpu", "--numel", str(NUMEL), "--no-compile"])
    assert out.returncode == 0, out.stderr
    rows = _bench_rows(out.stdout)
    assert {op for op, _ in rows} == {o.name for o in OP_DB}, out.stdout
    for (name, mode), cells in rows.items():
        op = next(o for o in OP_DB if o.name == name)
        assert cells[2] == _expected_shape(op), (name, mode, cells)
    # e.g. the margin cross-entropy's N x C cosines, not the numel it was built from
    mce = next(o for o in OP_DB if o.name == "margin_cross_entropy")
    x = mce.bench_input(NUMEL, "cpu", torch.float32).args[0]
    assert rows[("margin_cross_entropy", "full")][2] == f"{x.shape[0]}x{x.shape[1]}"


def test_device_cuda_without_gpu_is_one_line():
    out = _run(["--device", "cuda", "--no-bench"], env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "--device cuda" in lines[0] and "no CUDA GPU" in lines[0], lines[0]
    assert out.stdout == ""


def test_every_option_has_help_text():
    out = _run(["--help"])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    usage = text.split("\n\n")[0]
    in_usage = set(re.findall(r"\[(--?[\w-]+)", usage))
    section = text[text.index("options:"):]
    entries, cur = [], None
    for line in section.splitlines()[1:]:
        if re.match(r"^  -", line):
            cur = [line]
            entries.append(cur)
        elif cur is not None and line.startswith("    "):
            cur.append(line)
    seen = set()
    for e in entries:
        # the invocation ("--numel NUMEL", "-h, --help", "--dtype {a,b}") ends at the first 2-space gap
        first, _, rest = e[0].strip().partition("  ")
        opts = re.findall(r"(--?[\w-]+)", first)
        seen.update(opts)
        help_text = " ".join([rest.strip()] + [c.strip() for c in e[1:]]).strip()
        assert help_text, f"option {first!r} has no help text"
    assert in_usage <= seen, (in_usage, seen)


SLOW_SCRIPT = textwrap.dedent("""
    import sys, time
    import lossext.__main__ as M
    from lossext.testing import op_by_name
    info = op_by_name("wing_loss")
    fast = info.op
    def slowed(*args, **kwargs):  # a lossext that is slower than eager on every call
        time.sleep(0.02)
        return fast(*args, **kwargs)
    info.op = slowed
    sys.exit(M.main(["--device", "cpu", "--numel", "256", "--no-compile", "--ops", "wing_loss"]))
""")


def test_slower_rows_say_why():
    out = _run([], code=SLOW_SCRIPT)
    assert out.returncode == 0, out.stderr
    rows = _bench_rows(out.stdout)
    assert set(rows) == {("wing_loss", "forward"), ("wing_loss", "full")}, out.stdout
    tail = out.stdout[out.stdout.index("Where lossext is slower"):]
    for (name, mode), cells in rows.items():
        assert float(cells[-3].rstrip("x")) < 1.0, cells  # "vs eager" column
        why = [line for line in tail.splitlines() if line.strip().startswith(f"{name} {mode} (")]
        assert len(why) == 1, tail
        reason = why[0].split("vs eager:", 1)[1].strip()
        # the measured cause: the 20 ms of fixed cost per call, more than eager's whole call
        assert "per-call cost" in reason, reason


def test_within_noise_and_unknown_reasons():
    from lossext.__main__ import slower_reasons

    row = {"lossext_ms": 1.05, "lossext_p20": 0.95, "lossext_p80": 1.2,
           "torch_ms": 1.0, "torch_p20": 0.9, "torch_p80": 1.1, "speedup_vs_torch": 1.0 / 1.05,
           "compile_ms": 0.5, "compile_p20": 0.45, "compile_p80": 0.55, "speedup_vs_compile": 0.5 / 1.05,
           "floor_ms": 0.4, "lossext_over_floor": 2.6, "torch_over_floor": 2.5, "compile_over_floor": 1.25,
           "lossext_peak_mib": 1.0, "torch_peak_mib": 2.0, "compile_peak_mib": 1.5, "other_cpu_pct": 0.0}
    got = {label: reason for label, _, reason in slower_reasons(row, fixed_ms=0.01)}
    assert set(got) == {"eager", "torch.compile"}
    assert got["eager"].startswith("within noise")
    # not within noise and no measured cause: says so, and what was measured
    assert "no cause recorded" in got["torch.compile"] and "copy floor" in got["torch.compile"]
    row["other_cpu_pct"] = 40.0
    got = {label: reason for label, _, reason in slower_reasons(row, fixed_ms=0.01)}
    assert "40% of the CPUs" in got["torch.compile"]
    assert slower_reasons(dict(row, speedup_vs_torch=2.0, speedup_vs_compile=1.5)) == []
    # a recorded cause (OpInfo.bench_notes) is said first where the gap is not noise
    got = {label: reason for label, _, reason in slower_reasons(row, fixed_ms=0.01, note="it recomputes X")}
    assert got["torch.compile"].startswith("known cause: it recomputes X")
    assert got["eager"].startswith("within noise")
