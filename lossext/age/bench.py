"""The age-estimation family's benchmark suite (issue #10), against the composite the peers run.
benchmarks/run.py runs it (`make bench`; `python benchmarks/run.py --suites age [--quick]
[--device cuda]`).

Rows (each: lossext, eager and torch.compile of the composite on the same inputs, timed
interleaved, plus the copy floor and peak memory; lossext.testing.benchmark.bench_row):
- mean_variance_loss on logits [N, K] = [4096, 101] (ages 0..100) and [65536, 101], float32
  (bfloat16 on CUDA), modes forward, backward and full. Composite:
  lossext.reference.mean_variance_loss_composite (Herosan163/AgeEstimation's mean and variance
  terms by broadcasting over [N, K], plus F.cross_entropy). Copy floor bytes: forward reads N K,
  backward reads N K and writes N K, full 3 N K.

benchmarks/run.py writes the rows to benchmarks/results_age_<device>.csv and render()'s text to
the "AGE <DEVICE>" section of benchmarks/RESULTS.md.
"""
import torch

from ..testing import benchmark as B
from ..testing.benchmark import bench_row

PROVIDERS = B.PROVIDERS
# Issue #10's targets (full mode, N = 4096, K = 101, float32 on the CPU)
TARGETS = {"vs_eager": 3.0, "vs_compile": 1.5}


def run(device, quick=False, log=print):
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    es = torch.empty((), dtype=dtype).element_size()
    config = B.TimingConfig(warmup=2, min_reps=5 if quick else 25, min_time_s=0.0 if quick else 0.5, max_reps=400,
                            rounds=2 if quick else 5)
    gen = torch.Generator().manual_seed(0)
    rows = []
    K = 101
    for N in (4096, 65536):
        x = (torch.randn(N, K, generator=gen) * 2).to(device, dtype)
        y = torch.randint(0, K, (N,), generator=gen).to(device)
        for mode, k in (("forward", 1), ("backward", 2), ("full", 3)):
            rows.append(bench_row("mean_variance_loss", f"N={N} K={K}", (x, y), {}, (0,), mode, k * N * K * es,
                                  N * K * es, device, dtype, config, log=log))
    return B.stamp_rows(rows, device, config)


def render(rows, device, cmd):
    title = "Age estimation (issue #10), " + ("CUDA" if device == "cuda" else "CPU")
    lines = B.suite_header(title, rows, cmd, "") + [
             "- Method: `lossext/age/bench.py` docstring; eager/compile run "
             "`lossext.reference.mean_variance_loss_composite` (the peers' composite).", "",
             "| op | case | dtype | mode | lossext ms | eager ms | compile ms | vs eager | vs compile | floor ms | "
             "lossext / floor | peak MiB lossext / eager / compile |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = " / ".join(B._f(r.get(f"{p}_peak_mib")) for p in PROVIDERS)
        lines.append("| " + " | ".join([r["op"], r["case"], r["dtype"], r["mode"], B._f(r["lossext_ms"]),
                                        B._f(r["torch_ms"]), B._f(r["compile_ms"]), B._x(r["speedup_vs_torch"]),
                                        B._x(r["speedup_vs_compile"]), B._f(r["floor_ms"]),
                                        B._x(r["lossext_over_floor"]), peak]) + " |")
    lines += B.suite_notes_and_targets(rows, title)
    r = next((r for r in rows if r["mode"] == "full" and r["case"] == "N=4096 K=101"), None)
    if r:
        lines.append(B.speedup_target_line(f"mean_variance_loss {r['case']} ({r['dtype']})", r, TARGETS["vs_eager"],
                                           TARGETS["vs_compile"]))
    return "\n".join(lines)
