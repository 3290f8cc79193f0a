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
    return rows


def render(rows, device, cmd):
    lines = [f"Metric family, {device}, float32, full mode (forward + backward). `{cmd}`", "",
             "| case | lossext ms | eager ms | compile ms | vs eager | vs compile | peak above grads MiB (lossext / eager) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs_e = B._ratio(r.get("torch_ms"), r.get("lossext_ms"))
        vs_c = B._ratio(r.get("compile_ms"), r.get("lossext_ms"))
        lines.append(f"| `{r['op']}` {r['case']} | {B._f(r.get('lossext_ms'))} | {B._f(r.get('torch_ms'))} | "
                     f"{B._f(r.get('compile_ms'))} | {B._f(vs_e, 2)} | {B._f(vs_c, 2)} | "
                     f"{B._f(r.get('lossext_peak_above_grads_mib'))} / {B._f(r.get('torch_peak_above_grads_mib'))} |")
    return "\n".join(lines)
