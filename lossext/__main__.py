"""python -m lossext: what was built, which kernels are registered, and how lossext compares
with eager PyTorch (and torch.compile) on this machine.

    python -m lossext [--device cpu|cuda] [--numel 1048576] [--dtype float32] [--no-compile]

The comparison uses the benchmark harness (lossext/testing/benchmark.py) with few repetitions
and warm caches, so it finishes quickly; benchmarks/run.py is the careful measurement
(benchmarks/RESULTS.md).
"""
import argparse
import logging
import math
import sys
import time


def _fmt_ms(v):
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def _fmt_x(v):
    return "n/a" if v is None or math.isnan(v) else f"{v:.2f}x"


def _table(head, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    out = ["  " + "  ".join(str(h).ljust(w) if i < 2 else str(h).rjust(w)
                            for i, (h, w) in enumerate(zip(head, widths)))]
    out.append("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  " + "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                                    for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def main(argv=None):
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(prog="python -m lossext", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--numel", type=int, default=1 << 20)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-bench", action="store_true", help="only the build, ops and correctness")
    args = p.parse_args(argv)

    # torch.utils.cpp_extension warns about a missing CUDA runtime on CPU-only machines
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    import torch

    import lossext
    from lossext.testing import OP_DB
    from lossext.testing import benchmark as B

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    yes = lambda b: "yes" if b else "no"  # noqa: E731

    info = lossext.build_info()
    print(f"lossext {info['version']}")
    print(f"  torch {info['torch']}, CUDA compiled: {yes(info['cuda_compiled'])}"
          f" (arch list: {info['cuda_arch_list'] or '-'}), CUDA available: {yes(info['cuda_available'])}"
          + (f" ({torch.cuda.get_device_name()}, compute capability {info['gpu_capability']})"
             if info["cuda_available"] and info["cuda_compiled"] else ""))
    print(f"  this machine: {B._cpu_model()}, {torch.get_num_threads()} torch threads")
    print(f"  library: {info['library']} (C++: CMAKE_PREFIX_PATH={lossext.cmake_prefix_path}); "
          f"families: {', '.join(lossext.FAMILIES)}")

    print("\nRegistered ops (torch.ops.lossext.*) and their device kernels:")
    reg = lossext.registered_ops()
    w = max(len(n) for n in reg) if reg else 0
    for name, keys in reg.items():
        print(f"  {name.ljust(w)}  {', '.join(keys) or '(no kernel)'}")
    if device == "cuda" and not info["cuda_compiled"]:
        print("note: this build has no CUDA kernels", file=sys.stderr)
    if info.get("gpu_supported") is False:
        print(f"warning: the visible GPU (compute capability {info['gpu_capability']}) is not among the CUDA "
              f"architectures in this binary ({info['cuda_arch_list']}): its kernels cannot run there; rebuild "
              "with TORCH_CUDA_ARCH_LIST including it", file=sys.stderr)

    print(f"\nCorrectness on the benchmark input (N={B.format_numel(args.numel)} {args.dtype}, {device}; "
          "lossext vs the float64 reference, mean reduction, gradient w.r.t. input):")
    rows = []
    all_ok = True
    for op in OP_DB:
        c = B.check_correctness(op, device, dtype, args.numel)
        all_ok &= c["ok"]
        rows.append([op.name, "ok" if c["ok"] else "MISMATCH",
                     f"{c['loss_max_abs_diff']:.2e}", f"{c['loss_ref_max_abs']:.3g}",
                     f"{c['grad_max_abs_diff']:.2e}", f"{c['grad_ref_max_abs']:.3g}",
                     f"{c['rtol']:g}"])
    print(_table(["op", "check", "loss |diff|", "|loss|", "grad max|diff|", "max|grad|", "rtol"], rows))

    if not args.no_bench:
        providers = ["lossext", "torch"] + ([] if args.no_compile else ["compile"])
        config = B.TimingConfig(warmup=2, min_reps=10, min_time_s=0.1, max_reps=100, cache="warm")
        print(f"\nlossext vs eager PyTorch{'' if args.no_compile else ' and torch.compile'} on {device}, "
              f"N={B.format_numel(args.numel)} {args.dtype}, mean reduction; median ms of >= "
              f"{config.min_reps} calls, warm caches (careful numbers: benchmarks/RESULTS.md)"
              + ("; compiling first" if not args.no_compile else "") + " ...", flush=True)
        res = B.run(None, device, dtype, args.numel, ("forward", "full"), providers, config)
        head = ["op", "mode", "lossext ms", "eager ms"]
        if not args.no_compile:
            head += ["compile ms"]
        head += ["vs eager"] + ([] if args.no_compile else ["vs compile"])
        head += ["peak MiB lossext", "peak MiB eager"]
        table = []
        for r in res:
            line = [r["op"], r["mode"], _fmt_ms(r["lossext_ms"]), _fmt_ms(r["torch_ms"])]
            if not args.no_compile:
                line += [_fmt_ms(r["compile_ms"])]
            line += [_fmt_x(r["speedup_vs_torch"])]
            if not args.no_compile:
                line += [_fmt_x(r["speedup_vs_compile"])]
            line += [f"{r['lossext_peak_mib']:.1f}", f"{r['torch_peak_mib']:.1f}"]
            table.append(line)
        print(_table(head, table))
        for r in res:
            if r.get("error"):
                print(f"  {r['op']} {r['mode']}: {r['error']}")
        print("  (forward: under no_grad; full: forward + backward w.r.t. input; speedup = "
              "baseline ms / lossext ms; peak = extra memory above the inputs)")
    print(f"\ndone in {time.perf_counter() - t_start:.1f} s")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
