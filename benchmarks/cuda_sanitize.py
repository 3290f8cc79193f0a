"""The CUDA kernels under NVIDIA compute-sanitizer (`make gpu-check`, benchmarks/gpu_check.sh).

    python benchmarks/cuda_sanitize.py workload [--small]
        every op of the op table on CUDA: its raw ops on the OpInfo samples (float32 and float64,
        empty, non-contiguous, odd sizes), the branch-edge inputs and a large odd input, forward
        and backward; the program compute-sanitizer runs (--small: the small samples only, for
        the slow racecheck tool)
    python benchmarks/cuda_sanitize.py report LOG_DIR
        reads LOG_DIR/cs_<tool>.log (the runs of gpu_check.sh) and writes the "CUDA SANITIZER"
        section of benchmarks/RESULTS.md: per tool, the errors compute-sanitizer counted, the
        time, and the first error lines

memcheck finds out-of-bounds and misaligned device accesses; initcheck reads of device memory
no kernel wrote; racecheck shared-memory races, in the block reductions of the margin and
element-wise kernels. A tool that ran past its time box is reported as such, not as clean.
"""
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TOOLS = ("memcheck", "initcheck", "racecheck")


def workload(small):
    import torch

    import lossext  # noqa: F401
    from lossext.testing import OP_DB
    from lossext.testing.opinfo import outputs

    calls = 0
    for info in OP_DB:
        samples = []
        for dtype in (torch.float32, torch.float64):
            samples += list(info.sample_inputs("cuda", dtype, small=True))
            if not small:
                samples += list(info.edge_inputs("cuda", dtype))
        if not small:
            samples.append(info.bench_input((1 << 18) + 3, "cuda", torch.float32))
        for s in samples:
            for name, args in info.raw_calls(s):
                getattr(torch.ops.lossext, name)(*args)
                calls += 1
            leaves = [t.detach().clone().requires_grad_(True) for t in s.float_tensors()]
            r = s.replace_float_tensors(leaves)
            out = info.op(*r.args, **r.kwargs)
            outs = outputs(out)  # an op may return several losses of one pass
            if any(o.numel() for o in outs):
                sum(o.sum() for o in outs).backward()
            calls += 2
        torch.cuda.synchronize()
        print(f"{info.name}: {len(samples)} samples", flush=True)
    print(f"workload: {calls} calls", flush=True)


def _parse(path):
    text = open(path, errors="replace").read()
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    secs = re.search(r"^tool time: (\d+) s, exit (\d+)", text, re.M)
    done = "workload:" in text
    errors = [ln for ln in text.splitlines() if ln.startswith("=========") and
              re.search(r"Invalid|out of bounds|Uninitialized|race|Race|hazard|Error", ln)][:8]
    return {"errors": int(m.group(1)) if m else None, "seconds": int(secs.group(1)) if secs else None,
            "exit": int(secs.group(2)) if secs else None, "finished": done, "lines": errors}


def report(log_dir):
    import torch

    from benchmarks.run import write_section

    lines = ["## CUDA kernels under compute-sanitizer", "",
             f"Run by `make gpu-check` (benchmarks/gpu_check.sh, benchmarks/cuda_sanitize.py) on "
             f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
             f"{time.strftime('%Y-%m-%d')}. Workload: every op's raw ops on the OpInfo samples, "
             "edge inputs and a 2^18+3 input, forward and backward (racecheck: the small samples).", "",
             "| tool | result | errors | time |", "|---|---|---|---|"]
    details = []
    for tool in TOOLS:
        path = os.path.join(log_dir, f"cs_{tool}.log")
        if not os.path.exists(path):
            lines.append(f"| {tool} | not run | | |")
            continue
        r = _parse(path)
        if r["exit"] in (124, 137) or not r["finished"]:
            verdict = "ran past its time box (incomplete)" if r["exit"] in (124, 137) else f"did not finish (exit {r['exit']})"
        else:
            verdict = "clean" if r["errors"] == 0 else "**errors**"
        lines.append(f"| {tool} | {verdict} | {'' if r['errors'] is None else r['errors']} | "
                     f"{'' if r['seconds'] is None else str(r['seconds']) + ' s'} |")
        if r["lines"]:
            details += [f"- {tool}: `{ln.strip('= ').strip()}`" for ln in r["lines"]]
    if details:
        lines += ["", "First reports:", ""] + details
    body = "\n".join(lines)
    write_section(os.path.join(HERE, "RESULTS.md"), "CUDA SANITIZER", body, "make gpu-check")
    print(body)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "workload":
        workload("--small" in sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)
