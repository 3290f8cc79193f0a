"""The docs' figures (`make plots`): PNGs under docs/img/, checked in and embedded in the pages.

    python tools/plots.py [--out docs/img] [--only NAME[,NAME...]] [--list]

NAME is a file stem (e.g. bench_cpu), a family (all its plots) or `bench` (every benchmark chart).

- Each family's optional lossext/<family>/plots.py (found from lossext.FAMILIES) defines
  PLOTS = {"file_stem": function(out_path)}: its own figures (a loss against its error, ...).
- One benchmark chart per CSV under benchmarks/ (results_<suite>_<device>.csv, written by
  benchmarks/run.py): bench_<suite>_<device>.png, lossext's speed-up against eager PyTorch and
  against torch.compile for each row (op, mode, and whichever of case / dtype / numel differ
  between the rows), on a log axis with a line at 1x. A row without a ratio (not run) says why.

Needs matplotlib (`pip install lossext[plots]`). The output is deterministic: Agg, fixed figure
sizes and dpi, no software/time metadata, so reruns give identical files for the same inputs.
"""
import argparse
import glob
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")

from lossext._core.families import FAMILIES, family_module  # noqa: E402
from lossext.testing import benchmark as B  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "docs", "img")
BENCH_DIR = os.path.join(ROOT, "benchmarks")
DPI = 110
# the bars: (CSV column, label, colour)
RATIOS = (("speedup_vs_torch", "vs eager PyTorch", "tab:blue"),
          ("speedup_vs_compile", "vs torch.compile", "tab:orange"))
# columns that name a row besides op and mode, shown where they differ between the rows
ROW_KEYS = ("case", "dtype", "numel")


def family_plots():
    """{stem: (family, function(out_path))} from every family's optional plots module."""
    out = {}
    for fam in FAMILIES:
        mod = family_module(fam, "plots", optional=True)
        for stem, fn in getattr(mod, "PLOTS", {}).items():
            if stem in out:
                raise ValueError(f"plot {stem!r} is defined by both the {out[stem][0]!r} and {fam!r} families")
            out[stem] = (fam, fn)
    return out


def bench_csvs(bench_dir=BENCH_DIR):
    """{stem: csv path}: bench_<suite>_<device> for each benchmarks/results_<suite>_<device>.csv."""
    paths = sorted(glob.glob(os.path.join(bench_dir, "results_*.csv")))
    return {"bench_" + os.path.basename(p)[len("results_"):-len(".csv")]: p for p in paths}


def all_plots(bench_dir=BENCH_DIR):
    """{stem: (group, function(out_path))}: the families' plots, then the benchmark charts."""
    plots = family_plots()
    for stem, csv_path in bench_csvs(bench_dir).items():
        if stem in plots:
            raise ValueError(f"plot {stem!r} is both a family's plot and a benchmark chart")
        plots[stem] = ("bench", lambda path, csv_path=csv_path: bench_chart(csv_path, path))
    return plots


def _missing(v):
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _row_label(row, keys):
    extra = []
    for k in keys:
        v = row.get(k)
        extra.append(B.format_numel(v) if k == "numel" else str(v))
    return f"{row['op']}  ·  {row['mode']}" + ("".join(f"\n{e}" for e in extra) if extra else "")


def _machine(rows):
    r = rows[0]
    device = str(r.get("device", "?"))
    parts = [device.upper()]
    hw = r.get("gpu") if device.startswith("cuda") else r.get("cpu_model")
    if not _missing(hw):
        parts.append(str(hw))
    if device == "cpu" and not _missing(r.get("torch_threads")):
        parts.append(f"{r['torch_threads']} threads")
    if not _missing(r.get("torch_version")):
        parts.append(f"torch {r['torch_version']}")
    if not _missing(r.get("date")):
        parts.append(f"measured {r['date']}")
    return ", ".join(parts)


def bench_chart(csv_path, path):
    """Horizontal bars: each row's speed-ups (RATIOS columns present in the CSV), log axis, 1x line."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = B.read_csv(csv_path)
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    ratios = [r for r in RATIOS if r[0] in rows[0]]
    keys = [k for k in ROW_KEYS if k in rows[0] and len({str(r[k]) for r in rows}) > 1]
    lines_per_row = 1 + len(keys)
    n = len(rows)
    height = 0.8 / max(len(ratios), 1)
    row_h = 0.32 + 0.16 * lines_per_row
    fig, ax = plt.subplots(figsize=(10, 1.5 + row_h * n), layout="constrained")
    values = [r[c] for r in rows for c, _, _ in ratios if not _missing(r[c]) and r[c] > 0]
    lo = min(values + [1.0]) / 1.6
    hi = max(values + [1.0]) * 2.2
    for j, (col, label, color) in enumerate(ratios):
        ys = [i + (j - (len(ratios) - 1) / 2) * height for i in range(n)]
        vals = [r[col] if not _missing(r[col]) and r[col] > 0 else math.nan for r in rows]
        ax.barh(ys, [0 if math.isnan(v) else v - lo for v in vals], height=height * 0.92, left=lo,
                color=color, label=label)
        for y, v in zip(ys, vals):
            if not math.isnan(v):
                ax.text(v * 1.04, y, f"{v:.2f}×", va="center", fontsize=8)
    for i, r in enumerate(rows):
        if all(_missing(r[c]) for c, _, _ in ratios):
            why = "not run" if _missing(r.get("error")) else str(r["error"])
            ax.text(lo * 1.1, i, why if len(why) <= 90 else why[:87] + "...", va="center", fontsize=8,
                    color="0.35", style="italic")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", lw=1.0, label="1× = as fast")
    ax.set_yticks(range(n), [_row_label(r, keys) for r in rows], fontsize=8.5)
    ax.set_ylim(n - 0.5, -0.7)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(axis="x", which="both", alpha=0.25)
    ax.set_xlabel("speed-up of lossext (time of the other / time of lossext; higher is better)")
    name = os.path.basename(csv_path)
    ax.set_title(f"lossext speed-up — {name}\n{_machine(rows)}", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=len(ratios) + 1,
               fontsize=8.5, frameon=False)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def select(plots, only):
    if not only:
        return plots
    names = [s for s in only.split(",") if s]
    unknown = [s for s in names if s not in plots and not any(g == s for g, _ in plots.values())]
    if unknown:
        raise SystemExit(f"plots.py: unknown --only {unknown}; stems: {sorted(plots)}")
    return {k: v for k, v in plots.items() if k in names or v[0] in names}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default docs/img)")
    p.add_argument("--only", default="", help="comma-separated stems, families or 'bench'")
    p.add_argument("--bench-dir", default=BENCH_DIR, help="where the results_*.csv are (default benchmarks/)")
    p.add_argument("--list", action="store_true", help="print the stems and exit")
    args = p.parse_args(argv)
    plots = select(all_plots(args.bench_dir), args.only)
    if args.list:
        print("\n".join(f"{stem}\t{group}" for stem, (group, _) in plots.items()))
        return 0
    os.makedirs(args.out, exist_ok=True)
    for stem, (group, fn) in plots.items():
        path = os.path.join(args.out, stem + ".png")
        fn(path)
        print(f"{os.path.relpath(path)}  ({os.path.getsize(path) // 1024} KiB, {group})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
