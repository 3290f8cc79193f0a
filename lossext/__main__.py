"""python -m lossext: what was built, which kernels are registered, and how lossext compares
with eager PyTorch (and torch.compile) on this machine.

    python -m lossext [check] [--device cpu|cuda] [--numel 1048576] [--dtype float32] [--ops NAME,...]
                              [--no-compile] [--no-bench]
    python -m lossext demo [--device cpu|cuda] [--quick] [--epochs N] [--seed S] [--out DIR]
                           (training on scikit-learn's digits: lossext/demo.py)

Each row shows the shapes of the op's benchmark input (each op's OpInfo bench_input builds it
from --numel: the tensor for element-wise losses, e.g. N x C logits or N x D embeddings and
C x D class weights for the others). Rows where lossext is slower than
eager or torch.compile are listed after the table with what was measured about them: whether
the gap is within the measured spread, lossext's fixed per-call cost, the copy floor, the
other processes' share of the CPUs.

The comparison uses the benchmark harness (lossext/testing/benchmark.py) with few repetitions
and warm caches, so it finishes quickly; benchmarks/run.py is the careful measurement
(benchmarks/RESULTS.md).
"""
import argparse
import logging
import math
import sys
import time

PROG = "python -m lossext"


def _fmt_ms(v):
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def _fmt_x(v):
    return "n/a" if v is None or math.isnan(v) else f"{v:.2f}x"


def _nan(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def _table(head, rows, left=2):
    """Columns [0, left) left-aligned, the rest right-aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "  " + "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)  # noqa: E731
                                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), "  " + "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def sample_shape(info, sample):
    """The shapes an op's row shows, from its sample's tensors: the input's shape for element-wise
    losses (target and weight have it too), else the shape of each floating tensor in order
    (integer labels left out): N x C cosines, or embeddings N x D and class weights C x D."""
    fmt = lambda t: "x".join(str(d) for d in t.shape) or "scalar"  # noqa: E731
    if info.elementwise:
        return fmt(sample.args[0])
    return ", ".join(fmt(t) for t in sample.float_tensors()) or "-"


def torch_line(info, torch):
    """torch's version, CUDA compiled and available, the GPU (the header's first line)."""
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    return (f"torch {info['torch']}, CUDA compiled: {yes(info['cuda_compiled'])}"
            f" (arch list: {info['cuda_arch_list'] or '-'}), CUDA available: {yes(info['cuda_available'])}"
            + (f" ({torch.cuda.get_device_name()}, compute capability {info['gpu_capability']})"
               if info["cuda_available"] and info["cuda_compiled"] else ""))


def header_line(torch):
    """The build header in one line (``python -m lossext demo``): version, torch, CUDA, and the
    device kernels of each op, ops with the same kernels grouped."""
    import lossext
    info = lossext.build_info()
    groups = {}
    for name, keys in lossext.registered_ops().items():
        groups.setdefault(", ".join(keys) or "no kernel", []).append(name)
    kernels = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
    return f"lossext {info['version']} | {torch_line(info, torch)} | kernels {kernels}"


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"{PROG} check [options] is this self-check too; {PROG} demo trains "
                                       f"on scikit-learn's digits ({PROG} demo --help)")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="cpu or cuda (or cuda:N); default: cuda if a GPU is visible, else cpu")
    p.add_argument("--numel", type=int, default=1 << 20,
                   help="size of each op's benchmark input, in elements; each op's OpInfo row turns it "
                        "into its shapes (printed per row), e.g. N x C = about NUMEL for a loss over "
                        "class logits (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"],
                   help="floating dtype of the inputs (default: %(default)s)")
    p.add_argument("--ops", default=None, metavar="NAME[,NAME...]",
                   help="only these ops of the op table (comma-separated; default: all)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile baseline (compiling takes most of the run time)")
    p.add_argument("--no-bench", action="store_true",
                   help="only the build, the registered ops and the correctness check; no timing")
    return p


def _fail(msg):
    """One line on stderr and exit status 2 (a request this machine cannot serve)."""
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def _resolve_device(arg, torch):
    """(torch.device, None) or (None, the one-line reason it cannot be used here)."""
    if arg is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        dev = torch.device(arg)
    except (RuntimeError, ValueError):
        return None, f"--device {arg}: not a device name (expected cpu, cuda or cuda:N)"
    if dev.type not in ("cpu", "cuda"):
        return None, f"--device {arg}: lossext has kernels for cpu and cuda only"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch has no CUDA support" if torch.version.cuda is None
                   else "torch.cuda.is_available() is False")
            return None, f"--device {arg}: no CUDA GPU is visible ({why}); use --device cpu"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return None, (f"--device {arg}: there are {torch.cuda.device_count()} visible GPUs "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev, None


def fixed_cost_ms(info, device, dtype, mode, B):
    """lossext's time for one call in ``mode`` on a 1-element version of its benchmark input
    (its per-call cost: argument checks, dispatch, launch); NaN if that cannot be measured."""
    try:
        sample = info.bench_input(1, device, dtype)
        setup, call = B.make_case(B.provider_fn(info, "lossext", device, dtype), sample, mode)
        cfg = B.TimingConfig(warmup=2, min_reps=10, min_time_s=0.02, max_reps=50, cache="warm")
        return B.time_call(call, device, cfg, setup).median
    except Exception:  # noqa: BLE001  (then the reason says nothing about it)
        return math.nan


BASELINES = (("torch", "eager"), ("compile", "torch.compile"))


def slower_reasons(row, fixed_ms=math.nan, family_suite=False, noisy_pct=10.0, note=None):
    """For each baseline (eager, torch.compile) that beat lossext in this row, (label, ratio,
    reason): what the harness measured about the gap, not a guess. Known in order:
    - "within noise" when the p20-p80 ranges of lossext and the baseline overlap;
    - lossext's fixed per-call cost (``fixed_ms``, on a 1-element input) when it alone exceeds
      the baseline's whole call;
    - other processes' share of the CPUs while the row was timed, when over ``noisy_pct``;
    otherwise what is known: the times against the copy floor and the peak memory, and that no
    cause is recorded. ``note``: the op's recorded cause for this mode (OpInfo.bench_notes),
    said first when the gap is not noise."""
    out = []
    lo, hi = row.get("lossext_p20"), row.get("lossext_p80")
    for p, label in BASELINES:
        ratio = row.get(f"speedup_vs_{'torch' if p == 'torch' else 'compile'}")
        if _nan(ratio) or ratio >= 1.0:
            continue
        b_ms, b_lo, b_hi = row.get(f"{p}_ms"), row.get(f"{p}_p20"), row.get(f"{p}_p80")
        parts = []
        if not (_nan(lo) or _nan(b_hi)) and lo <= b_hi:
            parts.append(f"within noise: lossext's p20-p80 ({lo:.3f}-{hi:.3f} ms) overlaps "
                         f"{label}'s ({b_lo:.3f}-{b_hi:.3f} ms)")
        else:
            if not _nan(fixed_ms) and not _nan(b_ms) and fixed_ms >= b_ms:
                parts.append(f"per-call cost: lossext takes {fixed_ms:.3f} ms even on a 1-element input, "
                             f"more than {label}'s whole call here ({b_ms:.3f} ms); a larger --numel "
                             "amortizes it")
            noise = row.get("other_cpu_pct")
            if not _nan(noise) and noise > noisy_pct:
                parts.append(f"other processes took {noise:g}% of the CPUs while it was timed")
            if note:
                parts.insert(0, f"known cause: {note}")
            if not parts:
                known = []
                if not _nan(fixed_ms):
                    known.append(f"lossext's per-call cost is {fixed_ms:.3f} ms (1-element input)")
                lf, bf = row.get("lossext_over_floor"), row.get(f"{p}_over_floor")
                if not _nan(lf) and not _nan(bf):
                    known.append(f"lossext takes {lf:.2f}x the copy floor of the bytes it must move "
                                 f"({row['floor_ms']:.3f} ms), {label} {bf:.2f}x")
                lm, bm = row.get("lossext_peak_mib"), row.get(f"{p}_peak_mib")
                if not _nan(lm) and not _nan(bm):
                    known.append(f"peak extra memory {lm:.1f} MiB vs {label}'s {bm:.1f} MiB")
                parts.append("no cause recorded for this op; measured: " + "; ".join(known) if known
                             else "no cause recorded for this op and nothing else measured")
        if family_suite:
            parts.append("this is the generic --numel shape; the family's suite (benchmarks/run.py) "
                         "measures the issue's shapes")
        out.append((label, ratio, "; ".join(parts)))
    return out


def main(argv=None):
    """``python -m lossext [check] [options]``: the self-check; ``python -m lossext demo [options]``:
    the training demo (lossext/demo.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        from lossext import demo
        return demo.main(argv[1:])
    if argv[:1] == ["check"]:
        argv = argv[1:]
    t_start = time.perf_counter()
    p = build_parser()
    args = p.parse_args(argv)
    if args.numel < 1:
        p.error(f"--numel must be at least 1, got {args.numel}")

    # torch.utils.cpp_extension warns about a missing CUDA runtime on CPU-only machines
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    import torch

    device, why = _resolve_device(args.device, torch)
    if why:
        return _fail(why)

    import lossext
    from lossext.testing import OP_DB
    from lossext.testing import benchmark as B

    ops = list(OP_DB)
    if args.ops is not None:
        names = [n.strip() for n in args.ops.split(",") if n.strip()]
        unknown = [n for n in names if n not in {o.name for o in ops}]
        if unknown or not names:
            return _fail(f"--ops {args.ops}: unknown op(s) {', '.join(unknown) or '(none given)'}; "
                         f"the op table has {', '.join(o.name for o in ops)}")
        ops = [o for o in ops if o.name in names]
    dtype = getattr(torch, args.dtype)

    info = lossext.build_info()
    print(f"lossext {info['version']}")
    print(f"  {torch_line(info, torch)}")
    print(f"  this machine: {B._cpu_model()}, {torch.get_num_threads()} torch threads; CPU loops: "
          f"{info['cpu_isa']} (supported: {', '.join(info['cpu_isas'])}; LOSSEXT_CPU_ISA forces one)")
    print(f"  library: {info['library']} (C++: CMAKE_PREFIX_PATH={lossext.cmake_prefix_path}); "
          f"families: {', '.join(lossext.FAMILIES)}")

    print("\nRegistered ops (torch.ops.lossext.*) and their device kernels:")
    reg = lossext.registered_ops()
    w = max(len(n) for n in reg) if reg else 0
    for name, keys in reg.items():
        print(f"  {name.ljust(w)}  {', '.join(keys) or '(no kernel)'}")
    if device.type == "cuda" and not info["cuda_compiled"]:
        print("note: this build has no CUDA kernels", file=sys.stderr)
    if info.get("gpu_supported") is False:
        print(f"warning: the visible GPU (compute capability {info['gpu_capability']}) is not among the CUDA "
              f"architectures in this binary ({info['cuda_arch_list']}): its kernels cannot run there; rebuild "
              "with TORCH_CUDA_ARCH_LIST including it", file=sys.stderr)

    shapes = {op.name: sample_shape(op, op.bench_input(args.numel, device, dtype)) for op in ops}
    size = f"--numel {B.format_numel(args.numel)} {args.dtype}, {device}"
    print(f"\nCorrectness on the benchmark input ({size}; lossext vs the float64 reference, mean "
          "reduction, gradient w.r.t. input):")
    rows = []
    all_ok = True
    for op in ops:
        c = B.check_correctness(op, device, dtype, args.numel)
        all_ok &= c["ok"]
        rows.append([op.name, shapes[op.name], "ok" if c["ok"] else "MISMATCH",
                     f"{c['loss_max_abs_diff']:.2e}", f"{c['loss_ref_max_abs']:.3g}",
                     f"{c['grad_max_abs_diff']:.2e}", f"{c['grad_ref_max_abs']:.3g}",
                     f"{c['rtol']:g}"])
    print(_table(["op", "shape", "check", "loss |diff|", "|loss|", "grad max|diff|", "max|grad|", "rtol"],
                 rows, left=3))

    if not args.no_bench:
        providers = ["lossext", "torch"] + ([] if args.no_compile else ["compile"])
        config = B.TimingConfig(warmup=2, min_reps=10, min_time_s=0.1, max_reps=100, cache="warm")
        print(f"\nlossext vs eager PyTorch{'' if args.no_compile else ' and torch.compile'} on {size}, "
              f"mean reduction; median ms of >= {config.min_reps} calls, warm caches (careful numbers: "
              "benchmarks/RESULTS.md)" + ("; compiling first" if not args.no_compile else "") + " ...",
              flush=True)
        res = B.run([o.name for o in ops], device, dtype, args.numel, ("forward", "full"), providers, config)
        head = ["op", "mode", "shape", "lossext ms", "eager ms"]
        if not args.no_compile:
            head += ["compile ms"]
        head += ["vs eager"] + ([] if args.no_compile else ["vs compile"])
        head += ["peak MiB lossext", "peak MiB eager"]
        table = []
        for r in res:
            line = [r["op"], r["mode"], shapes[r["op"]], _fmt_ms(r["lossext_ms"]), _fmt_ms(r["torch_ms"])]
            if not args.no_compile:
                line += [_fmt_ms(r["compile_ms"])]
            line += [_fmt_x(r["speedup_vs_torch"])]
            if not args.no_compile:
                line += [_fmt_x(r["speedup_vs_compile"])]
            line += [f"{r['lossext_peak_mib']:.1f}", f"{r['torch_peak_mib']:.1f}"]
            table.append(line)
        print(_table(head, table, left=3))
        for r in res:
            if r.get("error"):
                print(f"  {r['op']} {r['mode']}: {r['error']}")
        print("  (forward: under no_grad; full: forward + backward w.r.t. input; speedup = "
              "baseline ms / lossext ms; peak = extra memory above the inputs)")

        by_name = {o.name: o for o in ops}
        slower = []
        for r in res:
            if not any(not _nan(r.get(k)) and r[k] < 1.0 for k in ("speedup_vs_torch", "speedup_vs_compile")):
                continue
            op = by_name[r["op"]]
            fixed = fixed_cost_ms(op, device, dtype, r["mode"], B)
            for label, ratio, reason in slower_reasons(r, fixed, family_suite=not op.bench_generic,
                                                       note=(op.bench_notes or {}).get(r["mode"])):
                slower.append(f"  {r['op']} {r['mode']} ({shapes[r['op']]}): {ratio:.2f}x vs {label}: {reason}")
        if slower:
            print("\nWhere lossext is slower than a baseline, and why (what was measured):")
            print("\n".join(slower))
        else:
            print("\nlossext is faster than every baseline in every row above.")
    print(f"\ndone in {time.perf_counter() - t_start:.1f} s")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
