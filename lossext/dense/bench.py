"""The dense-prediction family's benchmark suite (issue #13), against the code the peers run.
benchmarks/run.py runs it (`make bench`; `python benchmarks/run.py --suites dense [--quick]
[--device cuda]`).

Rows (each: lossext, eager and torch.compile of the baseline on the same inputs, timed
interleaved, plus the copy floor and peak memory; lossext.testing.benchmark.bench_row), full
mode (forward + backward), float32:
- joints_mse_loss at B=32, K=17, 64 x 48 heatmaps with [B, K, 1] visibility, without OHKM and
  with OHKM k = 8 (targets: >= 3x eager, >= 1.3x torch.compile, within 2x of the copy floor).
  Baseline: HRNet's JointsMSELoss / JointsOHKMMSELoss structure in float32
  (lossext.reference.joints_mse_loss_hrnet_loop: a loop over the joints, and for OHKM over the
  samples with topk), eager and under torch.compile. Copy floor bytes: both heatmaps read and
  the output's gradient written (3 B K H W elements).
- mask_rcnn_loss at R=512, C=81, 28 x 28 soft targets (target: >= 3x the gather + BCE composite,
  peak memory no higher). Baseline: torchvision's maskrcnn_loss after its projection
  (lossext.reference.mask_rcnn_loss: mask_logits[arange(R), labels] and
  F.binary_cross_entropy_with_logits), eager and torch.compile. Copy floor bytes: the labelled
  channels and the targets read, the whole gradient written (R M M (2 + C) elements); forward
  mode too (the labelled channels and the targets read: 2 R M M).

- dice_loss at 16 x 21 x 256 x 256, multiclass int64 labels (target: >= 3x smp's composite,
  >= 1.3x torch.compile of it). Baseline: smp 0.6.0's DiceLoss as it runs
  (lossext.reference.dice_loss_smp: exp(log_softmax), one_hot + permute, the Tversky score),
  eager and torch.compile. Copy floor bytes: the logits and labels read, the gradient written
  (2 B C H W floats + B H W int64).
- masked_l1_loss at 16 x 3 x 256 x 256 with a [16, 1, 256, 256] mask (target: >= 3x eager,
  within 2x of the copy floor). Baseline: the composite a port writes
  (lossext.reference.masked_l1_loss_composite: |x - y| * m and * (1 - m) summed, divided by
  the mask's sums), eager and torch.compile. Copy floor bytes: input, target and mask read,
  the gradient written (3 B C H W + B H W floats).

benchmarks/run.py writes the rows to benchmarks/results_dense_<device>.csv and render()'s text
to the "DENSE <DEVICE>" section of benchmarks/RESULTS.md.
"""
import torch

from ..testing import benchmark as B
from ..testing.benchmark import bench_row
from . import reference as R

TARGETS = {"vs_eager": 3.0, "vs_compile": 1.3, "floor": 2.0, "mask_vs_eager": 3.0, "dice_vs_eager": 3.0,
           "dice_vs_compile": 1.3, "l1_vs_eager": 3.0, "l1_floor": 2.0}


def _l1_sum(input, target, mask, fn):
    fg, bg = fn(input, target, mask)  # one scalar for the timing's backward: both terms
    return fg + bg


def run(device, quick=False, log=print):
    dtype = torch.float32
    es = 4
    config = B.TimingConfig(warmup=2, min_reps=5 if quick else 20, min_time_s=0.0 if quick else 0.5, max_reps=200,
                            rounds=2 if quick else 3)
    gen = torch.Generator().manual_seed(0)
    b, k, h, w = 32, 17, 64, 48
    x = torch.rand(b, k, h, w, generator=gen).to(device, dtype)
    t = torch.rand(b, k, h, w, generator=gen).to(device, dtype)
    vis = (torch.rand(b, k, 1, generator=gen) > 0.2).to(device, dtype)
    n = x.numel()
    rows = []
    for topk in (None, 8):
        def loop(o, tg, tw, ohkm_topk=topk):
            return R.joints_mse_loss_hrnet_loop(o, tg, tw, ohkm_topk)
        fns = {"torch": loop, "compile": torch.compile(loop, dynamic=False)}
        kw = {} if topk is None else {"ohkm_topk": topk}
        case = f"B={b} K={k} {h}x{w}" + ("" if topk is None else f" OHKM k={topk}")
        rows.append(bench_row("joints_mse_loss", case, (x, t, vis), kw, (0,), "full", 3 * n * es, n * es, device,
                              dtype, config, log=log, fns=fns))
    r, c, m = 512, 81, 28
    ml = torch.randn(r, c, m, m, generator=gen).to(device, dtype)
    lab = torch.randint(0, c, (r,), generator=gen).to(device)
    mt = torch.rand(r, m, m, generator=gen).to(device, dtype)
    for mode, nbytes in (("forward", r * m * m * 2 * es), ("full", r * m * m * (2 + c) * es)):
        case = f"R={r} C={c} {m}x{m}" + (" forward only" if mode == "forward" else "")
        rows.append(bench_row("mask_rcnn_loss", case, (ml, lab, mt), {}, (0,), mode, nbytes,
                              ml.numel() * es, device, dtype, config, log=log))
    bd, cd, hd = 16, 21, 256
    dl = torch.randn(bd, cd, hd, hd, generator=gen).to(device, dtype)
    dt = torch.randint(0, cd, (bd, hd, hd), generator=gen).to(device)
    rows.append(bench_row("dice_loss", f"multiclass {bd}x{cd}x{hd}x{hd}", (dl, dt), {}, (0,), "full",
                          2 * dl.numel() * es + dt.numel() * 8, dl.numel() * es, device, dtype, config, log=log))
    bl, cl = 16, 3
    li = torch.randn(bl, cl, hd, hd, generator=gen).to(device, dtype)
    lt = torch.randn(bl, cl, hd, hd, generator=gen).to(device, dtype)
    lm = (torch.rand(bl, 1, hd, hd, generator=gen) > 0.5).to(device, dtype)
    from . import functional as LF
    comp = torch.compile(lambda a, b, m: _l1_sum(a, b, m, R.masked_l1_loss_composite), dynamic=False)
    l1_fns = {"lossext": lambda a, b, m: _l1_sum(a, b, m, LF.masked_l1_loss),
              "torch": lambda a, b, m: _l1_sum(a, b, m, R.masked_l1_loss_composite), "compile": comp}
    rows.append(bench_row("masked_l1_loss", f"{bl}x{cl}x{hd}x{hd} mask [{bl}, 1, {hd}, {hd}]", (li, lt, lm), {}, (0,),
                          "full", (3 * li.numel() + lm.numel()) * es, li.numel() * es, device, dtype, config, log=log,
                          fns=l1_fns))
    return B.stamp_rows(rows, device, config)


def render(rows, device, cmd):
    title = "Dense prediction (issue #13), " + ("CUDA" if device == "cuda" else "CPU")
    lines = B.suite_header(title, rows, cmd, "") + [
        "- Method: `lossext/dense/bench.py` docstring; float32, full mode (forward + backward).",
        "- Baseline: HRNet's JointsMSELoss / JointsOHKMMSELoss structure "
        "(`lossext.reference.joints_mse_loss_hrnet_loop`), eager and torch.compile; the mask loss, torchvision's "
        "gather + BCE (`lossext.reference.mask_rcnn_loss`); dice, smp 0.6.0's DiceLoss as it runs "
        "(`lossext.reference.dice_loss_smp`); masked L1, the composite (`lossext.reference.masked_l1_loss_composite`).",
        ""]
    lines += B.suite_table(rows)
    lines += B.suite_notes_and_targets(rows, title)
    for r in rows:
        if r["op"] == "mask_rcnn_loss" and r["mode"] == "forward":
            lines.append(f"- {r['op']} {r['case']}: {B._x(r['speedup_vs_torch'])} faster than the gather + "
                         f"BCE composite, {B._x(r['speedup_vs_compile'])} torch.compile's (no target; the fused "
                         "forward reads the labelled channels in place)")
            continue
        if r["op"] == "mask_rcnn_loss":
            mem = r["mem_frac_vs_torch"]
            ok = r["speedup_vs_torch"] >= TARGETS["mask_vs_eager"] and mem <= 1.0
            lines.append(f"- {r['op']} {r['case']}: {B._x(r['speedup_vs_torch'])} faster than the gather + BCE "
                         f"composite (target ≥{TARGETS['mask_vs_eager']:g}×), peak memory {B._x(mem)} its "
                         f"(target ≤1×) — {B.target_mark(ok)}; {B._x(r['speedup_vs_compile'])} torch.compile's speed. Both "
                         "return a fresh dense [R, C, M, M] gradient: allocating and first touching it (page faults) "
                         "dominates either side, where the copy floor writes into warm memory")
            continue
        if r["op"] == "dice_loss":
            lines.append(B.speedup_target_line(f"{r['op']} {r['case']}", r, TARGETS["dice_vs_eager"],
                                               TARGETS["dice_vs_compile"]))
            continue
        if r["op"] == "masked_l1_loss":
            f = r["lossext_over_floor"]
            ok = r["speedup_vs_torch"] >= TARGETS["l1_vs_eager"] and f <= TARGETS["l1_floor"]
            lines.append(f"- {r['op']} {r['case']}: {B._x(r['speedup_vs_torch'])} faster than eager (target "
                         f"≥{TARGETS['l1_vs_eager']:g}×), {B._x(f)} the copy floor (target ≤{TARGETS['l1_floor']:g}×) — "
                         f"{B.target_mark(ok)}; {B._x(r['speedup_vs_compile'])} torch.compile's speed")
            continue
        lines.append(B.speedup_target_line(f"{r['op']} {r['case']}", r, TARGETS["vs_eager"], TARGETS["vs_compile"]))
        f = r["lossext_over_floor"]
        lines.append(f"- {r['op']} {r['case']}: {B._x(f)} the copy floor (target ≤{TARGETS['floor']:g}×) — "
                     f"{B.target_mark(f <= TARGETS['floor'])}")
    return "\n".join(lines)
