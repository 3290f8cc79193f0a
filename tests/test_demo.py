"""python -m lossext demo (issue #9, "Main job"): the quick run trains every method, prints both
tables, writes the CSV, the Markdown and the two pictures, and every number is finite (no
accuracy thresholds). `python -m lossext check` is still the self-check. CPU only, in a
subprocess, as tests/test_main.py runs the CLI."""
import csv
import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPS = ("sklearn", "matplotlib", "tqdm")
HAVE_PML = importlib.util.find_spec("pytorch_metric_learning") is not None
MARGIN_ROWS = ["softmax", "CosFace (lossext)", "ArcFace (lossext)", "SphereFace (lossext)"]
LANDMARK_ROWS = ["L2 (MSE)", "L1", "Wing (lossext)", "Adaptive Wing (lossext)"]


def _run(args, timeout=180):
    return subprocess.run([sys.executable, "-m", "lossext", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))


def _rows(stdout):
    """{first cell: other cells} of the printed tables (cells split on runs of 2+ spaces)."""
    out = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 3:
            out[cells[0]] = cells[1:]
    return out


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    missing = [m for m in DEPS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the demo needs {', '.join(missing)} (pip install lossext[demo])")
    out = tmp_path_factory.mktemp("demo_out")
    return _run(["demo", "--quick", "--out", str(out)]), out


def test_quick_demo_prints_a_row_per_method(quick):
    res, _ = quick
    assert res.returncode == 0, res.stdout + res.stderr
    header = res.stdout.splitlines()[0]
    assert header.startswith("lossext ") and "torch " in header and "CUDA compiled" in header, header
    rows = _rows(res.stdout)
    expected = MARGIN_ROWS + (["ArcFace (PML)"] if HAVE_PML else []) + LANDMARK_ROWS
    for name in expected:
        assert name in rows, (name, res.stdout)
        assert all(math.isfinite(float(c)) for c in rows[name]), (name, rows[name])
    assert ("ArcFace (PML)" in rows) == HAVE_PML
    if not HAVE_PML:
        assert "pytorch-metric-learning is not installed" in res.stdout


def test_quick_demo_writes_finite_results(quick):
    res, out = quick
    assert res.returncode == 0, res.stderr
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == (MARGIN_ROWS + (["ArcFace (PML)"] if HAVE_PML else [])
                                            + LANDMARK_ROWS)
    for r in table:
        numbers = {k: v for k, v in r.items() if k not in ("task", "method") and v != ""}
        assert numbers, r
        assert all(math.isfinite(float(v)) for v in numbers.values()), r
    for r in table:
        keys = ("tar_far_1e-2", "tar_far_1e-3", "auc", "accuracy") if r["task"] == "verification" else (
            "nme_heldout", "nme_unseen")
        assert all(r[k] != "" for k in keys + ("s_per_epoch", "steps_per_s")), r
    md = (out / "results.md").read_text()
    assert "TAR@FAR=1e-3" in md and "Wing (lossext)" in md
    for png in ("embeddings_2d.png", "roc.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png
        assert len(data) > 10_000, (png, len(data))


def test_check_subcommand_is_the_self_check():
    res = _run(["check", "--no-bench", "--device", "cpu"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Registered ops" in res.stdout and "Correctness" in res.stdout, res.stdout
