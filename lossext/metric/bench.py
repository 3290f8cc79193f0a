"""The metric family's benchmark suite (issue 10), against the composite a PyTorch user writes.
benchmarks/run.py runs it (`python benchmarks/run.py --suites metric [--quick] [--device cuda]`).

Rows (CPU float32, full mode = forward + backward with gradients to features and centers; each
with lossext, eager and torch.compile of the composite, timed interleaved by
lossext.testing.benchmark, and the peak memory above the gradients the call returns):
- triplet_center_loss N=4096, D=512, C=10,000 (issue targets: >= 1.5x eager, peak extra memory
  <= 10 % of the composite's), and C=100,000 (--quick: lossext only at 100k). Composite:
  lossext.reference.triplet_center_loss_composite (cdist, masking, min, hinge).
- center_loss N=8192, D=512, C=1000 (targets: >= 2x eager, >= 1.2x torch.compile). Composite:
  lossext.reference.center_loss_composite (gather, squared difference, sum, mean).
"""
import torch

from ..testing.benchmark import bench_row
from ..testing import benchmark as B

TARGETS = {"tc_vs_eager": 1.5, "tc_mem_frac": 0.10, "center_vs_eager": 2.0, "center_vs_compile": 1.2}


def run(device, quick=False, log=print):
    dtype = torch.float32
    es = 4
    config = B.TimingConfig(warmup=1, min_reps=2 if quick else 5, min_time_s=0.0, max_reps=20, rounds=1)
    one = B.TimingConfig(warmup=0, min_reps=1, min_time_s=0.0, max_reps=1, rounds=1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    N, D = 4096, 512
    x = torch.randn(N, D, generator=gen).to(device, dtype)
    for C in (10_000, 100_000):
        c = torch.randn(C, D, generator=gen).to(device, dtype)
        t = torch.randint(0, C, (N,), generator=gen).to(device)
        providers = ("lossext",) if (quick and C > 10_000) else B.PROVIDERS
        rows.append(bench_row("triplet_center_loss", f"N={N} D={D} C={C}", (x, t, c), dict(margin=5.0), (0, 2),
                              "full", 3 * (N + C) * D * es, (N + C) * D * es, device, dtype,
                              config if C <= 10_000 else one, providers=providers, log=log))
    N, D, C = 8192, 512, 1000
    x = torch.randn(N, D, generator=gen).to(device, dtype)
    c = torch.randn(C, D, generator=gen).to(device, dtype)
    t = torch.randint(0, C, (N,), generator=gen).to(device)
    rows.append(bench_row("center_loss", f"N={N} D={D} C={C}", (x, t, c), {}, (0, 2), "full",
                          3 * (N + C) * D * es, (N + C) * D * es, device, dtype, config, log=log))
    return B.stamp_rows(rows, device, config)


def render(rows, device, cmd):
    title = "Metric learning with centers (issue #10), " + ("CUDA" if device == "cuda" else "CPU")
    lines = B.suite_header(title, rows, cmd, " (1 rep for C = 100k)") + [
             "- Method: `lossext/metric/bench.py` docstring; float32, full mode (forward + backward, gradients to "
             "features and centers); eager/compile run the composites of `lossext/metric/reference.py`.",
             "- Peak memory on the CPU counts the allocations the profiler attributes to the call; the "
             "triplet-center kernel's per-thread distance tile (256 x 512 float32 = 0.5 MiB a worker thread, "
             "from torch's allocator on the pool's threads) may not show: its bound is 0.5 MiB x threads + "
             "O(N + C) per-row state.", "",
             "| op | case | lossext ms | eager ms | compile ms | vs eager | vs compile | floor ms | lossext / floor | "
             "peak above grads MiB lossext / eager / compile |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        above = " / ".join(B._f(r.get(f"{p}_peak_above_grads_mib")) for p in B.PROVIDERS)
        lines.append("| " + " | ".join([r["op"], r["case"], B._f(r["lossext_ms"]), B._f(r["torch_ms"]),
                                        B._f(r["compile_ms"]), B._x(r["speedup_vs_torch"]),
                                        B._x(r["speedup_vs_compile"]), B._f(r["floor_ms"]),
                                        B._x(r["lossext_over_floor"]), above]) + " |")
    lines += B.suite_notes_and_targets(rows, title)
    tc = next((r for r in rows if r["op"] == "triplet_center_loss" and r["case"].endswith("C=10000")), None)
    if tc:
        a, frac = tc["speedup_vs_torch"], tc["mem_frac_vs_torch"]
        lines.append(f"- triplet_center_loss {tc['case']}: {B._x(a)} faster than eager (target ≥"
                     f"{TARGETS['tc_vs_eager']:g}×) — {B.target_mark(a >= TARGETS['tc_vs_eager'])}; peak above grads "
                     f"{B._f(tc['lossext_peak_above_grads_mib'])} MiB = {B._f(100 * frac, 2)} % of the eager "
                     f"composite's {B._f(tc['torch_peak_above_grads_mib'])} MiB (target ≤"
                     f"{100 * TARGETS['tc_mem_frac']:g} %) — {B.target_mark(frac <= TARGETS['tc_mem_frac'])}")
    ce = next((r for r in rows if r["op"] == "center_loss"), None)
    if ce:
        lines.append(B.speedup_target_line(f"center_loss {ce['case']}", ce, TARGETS["center_vs_eager"],
                                           TARGETS["center_vs_compile"]))
    return "\n".join(lines)
