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

Pair-based losses (issue 17); here the 'eager' column is pytorch-metric-learning itself (its loss
plus its miner, the composite its users run) and 'compile' is torch.compile of the vectorized
composite lossext.reference.triplet_margin_loss_composite (cdist, masks, masked max/min):
- triplet_margin_loss batch_hard N=4096, D=512, 256 classes (targets: >= 3x pml, >= 1.5x compile,
  peak extra memory <= 10 % of the composite's);
- triplet_margin_loss batch_all N=1024, D=512, 64 classes (target: >= 5x pml, whose triplet
  indices and masks are cubic; the [N, N, N] vectorized composite is not compiled here);
- triplet_margin_loss batch_hard with a cross-batch reference M=65,536 and N=512 (target: O(N + M)
  extra memory where the composite needs N x M).
"""
import importlib.util

import torch

from ..testing.benchmark import bench_row
from ..testing import benchmark as B

TARGETS = {"tc_vs_eager": 1.5, "tc_mem_frac": 0.10, "center_vs_eager": 2.0, "center_vs_compile": 1.2,
           "hard_vs_pml": 3.0, "hard_vs_compile": 1.5, "hard_mem_frac": 0.10, "all_vs_pml": 5.0}


def _pml_triplet(mining):
    """pytorch-metric-learning's TripletMarginLoss (MeanReducer: the op's 'mean') with its
    BatchHardMiner, or with every triplet (AvgNonZeroReducer: batch_all's 'mean')."""
    from pytorch_metric_learning import distances, losses, miners, reducers
    dist = distances.LpDistance(normalize_embeddings=False)
    if mining == "batch_all":
        loss = losses.TripletMarginLoss(margin=0.2, distance=dist)
        return lambda x, y, **kw: loss(x, y)
    loss = losses.TripletMarginLoss(margin=0.2, distance=dist, reducer=reducers.MeanReducer())
    miner = miners.BatchHardMiner(distance=dist)

    def fn(x, y, ref_embeddings=None, ref_labels=None, **kw):
        if ref_embeddings is None:
            return loss(x, y, miner(x, y))
        return loss(x, y, miner(x, y, ref_embeddings, ref_labels), ref_embeddings, ref_labels)
    return fn


def _pair_rows(device, dtype, config, quick, log):
    es = 4
    have_pml = importlib.util.find_spec("pytorch_metric_learning") is not None
    if not have_pml:
        log("  triplet_margin_loss: pytorch-metric-learning is not installed; its (eager) column is not run")
    gen = torch.Generator().manual_seed(1)
    rows = []
    one = B.TimingConfig(warmup=0, min_reps=1, min_time_s=0.0, max_reps=2 if not quick else 1, rounds=1)
    cases = [("batch_hard", 4096, 512, 256, None, config), ("batch_all", 1024, 512, 64, None, one),
             ("batch_hard", 512, 512, 512, 65536, one)]
    for mining, N, D, classes, M, cfg in cases:
        x = torch.randn(N, D, generator=gen).to(device, dtype)
        y = torch.randint(0, classes, (N,), generator=gen).to(device)
        kw = dict(margin=0.2, mining=mining)
        case = f"{mining} N={N} D={D} classes={classes}"
        refs = N
        if M:
            r = torch.randn(M, D, generator=gen).to(device, dtype)
            kw.update(ref_embeddings=r, ref_labels=torch.randint(0, classes, (M,), generator=gen).to(device))
            case += f" M={M} (reference, no grad)"
            refs += M
        providers = ("lossext", "torch") if mining == "batch_all" else B.PROVIDERS
        if quick and mining != "batch_hard":
            providers = ("lossext",)
        if not have_pml:  # the peer is the eager column (the GPU machine has none installed)
            providers = tuple(p for p in providers if p != "torch")
        rows.append(bench_row("triplet_margin_loss", case, (x, y), kw, (0,), "full", 3 * N * D * es + refs * D * es,
                              N * D * es, device, dtype, cfg, providers=providers, log=log,
                              fns={"torch": _pml_triplet(mining)} if have_pml else {}))
    return rows


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
    rows += _pair_rows(device, dtype, config, quick, log)
    return B.stamp_rows(rows, device, config)


def render(rows, device, cmd):
    title = "Metric learning (issues #10 and #17), " + ("CUDA" if device == "cuda" else "CPU")
    lines = B.suite_header(title, rows, cmd, " (1 rep for C = 100k)") + [
             "- Method: `lossext/metric/bench.py` docstring; float32, full mode (forward + backward, gradients to "
             "features and centers); eager/compile run the composites of `lossext/metric/reference.py`.",
             "- Peak memory on the CPU counts the allocations the profiler attributes to the call; the "
             "triplet-center kernel's per-thread distance tile (256 x 512 float32 = 0.5 MiB a worker thread, "
             "from torch's allocator on the pool's threads) may not show: its bound is 0.5 MiB x threads + "
             "O(N + C) per-row state.",
             "- triplet_margin_loss rows: the 'eager' column is pytorch-metric-learning itself (TripletMarginLoss "
             "with BatchHardMiner, MeanReducer; batch_all: every triplet, AvgNonZeroReducer), 'compile' is "
             "torch.compile of `triplet_margin_loss_composite` (cdist, masks, masked max/min; batch_all's "
             "[N, N, N] composite is not run). The kernel's own buffers (std::vector, not seen by the profiler) "
             "are bounded: batch_hard's forward keeps 4 values per anchor and |r_j|^2 per reference plus the "
             "256 x 512 tiles; the backward's entries are 2 per anchor (one wave); batch_all's rows are 4 x M "
             "values per task and its entries at most 2^20 per wave (16 MiB).", "",
             ] + B.suite_table(rows)
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
    hard = next((r for r in rows if r["op"] == "triplet_margin_loss" and r["case"].startswith("batch_hard N=4096")), None)
    if hard:
        frac = hard["mem_frac_vs_compile"] = B._ratio(hard["lossext_peak_above_grads_mib"],
                                                       hard["compile_peak_above_grads_mib"])
        lines.append(f"- triplet_margin_loss {hard['case']}: {B._x(hard['speedup_vs_torch'])} faster than "
                     f"pytorch-metric-learning (target ≥{TARGETS['hard_vs_pml']:g}×) — "
                     f"{B.target_mark(hard['speedup_vs_torch'] >= TARGETS['hard_vs_pml'])}; "
                     f"{B._x(hard['speedup_vs_compile'])} faster than torch.compile of the vectorized composite "
                     f"(target ≥{TARGETS['hard_vs_compile']:g}×) — "
                     f"{B.target_mark(hard['speedup_vs_compile'] >= TARGETS['hard_vs_compile'])}; peak above grads "
                     f"{B._f(hard['lossext_peak_above_grads_mib'])} MiB = {B._f(100 * frac, 2)} % of the compiled "
                     f"composite's {B._f(hard['compile_peak_above_grads_mib'])} MiB and "
                     f"{B._f(100 * hard['mem_frac_vs_torch'], 2)} % of pml's (target ≤"
                     f"{100 * TARGETS['hard_mem_frac']:g} %) — {B.target_mark(max(frac, hard['mem_frac_vs_torch']) <= TARGETS['hard_mem_frac'])}")
    ball = next((r for r in rows if r["op"] == "triplet_margin_loss" and r["case"].startswith("batch_all")), None)
    if ball:
        lines.append(f"- triplet_margin_loss {ball['case']}: {B._x(ball['speedup_vs_torch'])} faster than "
                     f"pytorch-metric-learning (target ≥{TARGETS['all_vs_pml']:g}×) — "
                     f"{B.target_mark(ball['speedup_vs_torch'] >= TARGETS['all_vs_pml'])}; peak above grads "
                     f"{B._f(ball['lossext_peak_above_grads_mib'])} MiB against pml's "
                     f"{B._f(ball['torch_peak_above_grads_mib'])} MiB")
    xbm = next((r for r in rows if r["op"] == "triplet_margin_loss" and "M=65536" in r["case"]), None)
    if xbm:
        lines.append(f"- triplet_margin_loss {xbm['case']}: peak above grads {B._f(xbm['lossext_peak_above_grads_mib'])}"
                     f" MiB (O(N + M): the [N, M] float32 distances alone would be "
                     f"{B._f(512 * 65536 * 4 / 2 ** 20)} MiB) against pml's {B._f(xbm['torch_peak_above_grads_mib'])} "
                     f"MiB and the compiled composite's {B._f(xbm['compile_peak_above_grads_mib'])} MiB — "
                     f"{B.target_mark(xbm['lossext_peak_above_grads_mib'] < 0.1 * 512 * 65536 * 4 / 2 ** 20)}")
    return "\n".join(lines)
