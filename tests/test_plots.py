"""tools/plots.py (`make plots`): every figure is produced, is a valid PNG, and docs/img/ holds a
current copy of each (same names and pixel sizes; the pixels themselves may differ)."""
import os
import struct
import sys

import pytest

from lossext._core.families import FAMILIES, family_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "plots.py")
DOCS_IMG = os.path.join(REPO, "docs", "img")

pytestmark = [
    pytest.mark.skipif(not os.path.exists(TOOL), reason="tools/plots.py is not in this copy (wheel test)"),
]
pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install lossext[plots])")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """(width, height) from the IHDR chunk; asserts the PNG signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, f"{path}: not a PNG"
    assert head[12:16] == b"IHDR", f"{path}: no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


def _tool():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import plots
    finally:
        sys.path.pop(0)
    return plots


def _expected_stems():
    return set(_tool().all_plots())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    # in this process (torch and lossext are imported already): what `make plots` runs, into tmp
    out = tmp_path_factory.mktemp("img")
    assert _tool().main(["--out", str(out)]) == 0
    return out


def test_every_plot_is_a_png(rendered):
    produced = {f[:-4] for f in os.listdir(rendered) if f.endswith(".png")}
    assert produced == _expected_stems()
    for stem in produced:
        path = os.path.join(rendered, stem + ".png")
        w, h = _png_size(path)
        assert w >= 400 and h >= 200, (stem, w, h)
        size = os.path.getsize(path)
        assert 10_000 < size < 250_000, (stem, size)


def test_family_plots_and_bench_charts_are_produced(rendered):
    produced = {f[:-4] for f in os.listdir(rendered)}
    for fam in FAMILIES:
        mod = family_module(fam, "plots", optional=True)
        for stem, fn in getattr(mod, "PLOTS", {}).items():
            assert callable(fn), (fam, stem)
            assert stem in produced, f"{fam}'s plot {stem} was not produced"
    for csv in os.listdir(os.path.join(REPO, "benchmarks")):
        if csv.startswith("results_") and csv.endswith(".csv"):
            stem = "bench_" + csv[len("results_"):-len(".csv")]
            assert stem in produced, f"no chart for benchmarks/{csv}"


def test_docs_img_is_up_to_date(rendered):
    """docs/img/ holds each figure (rerun `make plots` and check the PNGs in when this fails)."""
    missing, resized = [], []
    for f in sorted(os.listdir(rendered)):
        checked_in = os.path.join(DOCS_IMG, f)
        if not os.path.exists(checked_in):
            missing.append(f)
        elif _png_size(checked_in) != _png_size(os.path.join(rendered, f)):
            resized.append(f)
    assert not missing and not resized, (
        f"docs/img/ is out of date (run `make plots`): missing {missing}, other pixel size {resized}")


def test_only_selects_by_stem_and_group():
    tool = _tool()
    plots = tool.all_plots()
    one = sorted(plots)[0]
    chosen = tool.select(plots, one + ",bench")
    assert set(chosen) == {one} | {s for s, (group, _) in plots.items() if group == "bench"}
    assert set(tool.select(plots, "")) == set(plots)
    with pytest.raises(SystemExit, match="unknown"):
        tool.select(plots, "no_such_plot")
