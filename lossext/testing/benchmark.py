"""The benchmark harness: every op in OP_DB, three providers, three modes, one method.

Used by benchmarks/run.py (RESULTS.md, results_<device>.csv) and by ``python -m lossext``.
A new op needs nothing here: its OpInfo row (op, ref, bench_input, bench_bytes) is enough.

Providers
    lossext  info.op, the fused lossext kernels.
    torch    info.ref, the pure-PyTorch reference run eagerly (the composite a user would write).
    compile  torch.compile(info.ref, dynamic=False), created once per (op, device, dtype) and
             warmed up (compiled) before anything is timed. Forward mode (no grad) and the
             grad modes are separate Dynamo graphs; each is compiled during its own warmup.

Modes (gradients are taken with respect to the input only: target and weight never require grad)
    forward   ``with torch.no_grad(): op(input, target, ...)``.
    backward  Only the backward pass. Each repetition first runs the forward with input
              requiring grad *outside* the timed region, then times
              ``torch.autograd.grad(loss, input)`` (no retain_graph: the graph and its saved
              tensors are released during the timed call, as in training). Note that an op
              whose forward already computes the gradient (lossext's one-pass path) does
              little here; compare ``full`` for the end-to-end cost.
    full      forward + backward: ``loss = op(input_requiring_grad, ...)`` and
              ``torch.autograd.grad(loss, input)`` in one timed call.

Timing
    ``warmup`` untimed calls, then repetitions until at least ``min_reps`` and ``min_time_s``
    of measured time (at most ``max_reps``); per-repetition times, reported as the median and
    the 20th-80th percentile range, in ms. Python's GC is collected then disabled while timing.
    The three providers and the copy floor of a row are timed interleaved (time_calls): the
    repetitions are split into ``rounds`` rounds that visit every case in turn, so a slow
    spell of a shared machine slows all of them alike and the ratios stay stable.
    CPU: time.perf_counter around the call (CPU ops are synchronous).
    CUDA: torch.cuda.synchronize() before the call, then CUDA events around it: the GPU is
    idle when the start event executes, so the time includes host-side launch overhead, i.e.
    what a single isolated call costs.
    Cache: by default every repetition starts cold (``cache="cold"``): before it a buffer of
    max(2 x last-level cache, 64 MiB), at most 1 GiB -- 256 MiB on CUDA, over four times an
    H200's L2 -- is overwritten, outside the timed region, so the inputs are served from DRAM
    / HBM as in the copy floor below. ``cache="warm"`` skips that.
    Noise: ``other_cpu_pct`` of a row is the share of all CPUs that other processes (from
    /proc/stat, minus this process and its children) took while the row was timed;
    ``run(retry_noisy=...)`` remeasures disturbed rows.

Memory-copy floor
    ``dst.copy_(src)`` on preallocated tensors of the benchmark dtype, moving the bytes the op
    must move in that mode: bytes = info.bench_bytes[mode] * numel * element_size, half read
    from src and half written to dst. Timed exactly like the ops (same reps, same cache
    policy). ``<provider>_over_floor`` = provider time / floor time (1.0 is the bandwidth
    limit of a copy; a fused op cannot beat it by much).

Peak memory (the extra memory a provider allocates above its inputs during one measured call,
    taken on a separate, untimed call after the warmup; includes what the call returns, e.g.
    the gradient in full/backward mode)
    CUDA: torch.cuda.reset_peak_memory_stats(); max_memory_allocated() - memory_allocated()
    before the call (caching-allocator *allocated* bytes, not reserved).
    CPU: torch has no allocator statistics on CPU, so the setup (backward mode: the forward)
    and the call run under torch.profiler.profile(profile_memory=True), and the CPU
    allocation events it records ("[memory]" events: +bytes on allocation, -bytes on free,
    one per c10 CPU allocator call) are summed in time order; the peak of that running sum
    after a marker allocation placed between setup and call, minus the sum at the marker, is
    the extra memory. (Setup is profiled too because the profiler records no event for
    freeing a block allocated before it started, e.g. saved tensors released by a backward.)
    Memory allocated outside the c10 allocator (e.g. raw malloc in a kernel) is not seen.
    ``memory_self_check`` validates the method on a known pattern of allocations and frees
    (benchmarks/run.py runs it and records the result in RESULTS.md).

Ratios
    speedup_vs_torch = torch_ms / lossext_ms, speedup_vs_compile = compile_ms / lossext_ms,
    peak_vs_torch = lossext_peak / torch_peak (<= 1 means lossext needs no more than eager).
"""
import contextlib
import datetime
import gc
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from .opinfo import OpInfo, op_db, outputs

PROVIDERS = ("lossext", "torch", "compile")
MODES = ("forward", "backward", "full")
PROVIDER_LABEL = {"lossext": "lossext", "torch": "eager", "compile": "compile"}

# Performance targets (issue #2), checked per op in full mode by `targets`.
TARGETS = {
    "speedup_vs_torch": 3.0,     # lossext at least 3x faster than eager PyTorch
    "speedup_vs_compile": 1.2,   # at least 1.2x faster than torch.compile
    "lossext_over_floor": 2.0,   # at most 2x the memory-copy floor
    "peak_vs_torch": 1.0,        # peak extra memory no more than eager's
}

MiB = float(1 << 20)


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 3
    min_reps: int = 25
    min_time_s: float = 0.5
    max_reps: int = 400
    cache: str = "cold"  # "cold": flush caches before every repetition; "warm": don't
    rounds: int = 5      # interleaving rounds of time_calls (see there)


DEFAULT = TimingConfig()
QUICK = TimingConfig(warmup=2, min_reps=8, min_time_s=0.1, max_reps=100, rounds=2)


@dataclass
class Timing:
    median: float  # ms
    p20: float
    p80: float
    reps: int

    @classmethod
    def from_samples(cls, ms: Sequence[float]):
        s = sorted(ms)
        return cls(_quantile(s, 0.5), _quantile(s, 0.2), _quantile(s, 0.8), len(s))


NAN_TIMING = Timing(math.nan, math.nan, math.nan, 0)


def _quantile(sorted_values, q):
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _dev(device) -> torch.device:
    return torch.device(device)


def _sync(device):
    if _dev(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------
# Cache flushing
# ------------------------------------------------------------------------------------------

def _cpu_llc_bytes():
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "size")) as f:
                s = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
            best = max(best, int(s.rstrip("KkMmGg")) * mult)
    except (OSError, ValueError):
        pass
    return best or (64 << 20)


class CacheFlusher:
    """Overwrites a buffer larger than the last-level cache (CPU) / L2 (CUDA)."""

    def __init__(self, device):
        self.device = _dev(device)
        if self.device.type == "cuda":
            nbytes = 256 << 20
        else:
            nbytes = min(max(2 * _cpu_llc_bytes(), 64 << 20), 1 << 30)
        self.nbytes = nbytes
        self.buf = torch.empty(nbytes // 4, dtype=torch.int32, device=self.device)

    def flush(self):
        self.buf.zero_()


_FLUSHERS: Dict[str, CacheFlusher] = {}


def get_flusher(device) -> CacheFlusher:
    key = str(_dev(device))
    if key not in _FLUSHERS:
        _FLUSHERS[key] = CacheFlusher(device)
    return _FLUSHERS[key]


# ------------------------------------------------------------------------------------------
# Contention: other processes on the CPUs (the noise of a small shared machine)
# ------------------------------------------------------------------------------------------

class CpuContention:
    """Share of the machine's CPU time used by *other* processes (from /proc/stat minus this
    process's own CPU time) over an interval: the noise indicator of a CPU run."""

    def __init__(self):
        self.ok = os.path.exists("/proc/stat")
        self.reset()

    @staticmethod
    def _own_tree_ticks():
        """CPU ticks of this process and its descendants (torch.compile's workers)."""
        stats = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(d)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
            except (OSError, IndexError, ValueError):
                continue
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _) in stats.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        return sum(stats[p][1] for p in tree if p in stats)

    @classmethod
    def _sample(cls):
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
        return sum(vals) / hz, (vals[3] + vals[4]) / hz, cls._own_tree_ticks() / hz

    def reset(self):
        try:
            self.start = self._sample() if self.ok else None
        except Exception:  # noqa: BLE001  (an unusual /proc, e.g. a sandbox: no noise figure)
            self.ok, self.start = False, None

    def others(self):
        """Fraction (0-1) of all CPUs' time used by other processes since reset()."""
        if not self.ok:
            return float("nan")
        total0, idle0, own0 = self.start
        try:
            total1, idle1, own1 = self._sample()
        except Exception:  # noqa: BLE001
            return float("nan")
        total = total1 - total0
        if total <= 0:
            return float("nan")
        busy = (total - (idle1 - idle0)) - (own1 - own0)
        return min(max(busy / total, 0.0), 1.0)


def wait_until_idle(max_wait_s, threshold=0.10, log=None):
    """Waits (up to max_wait_s) until other processes use < threshold of the CPUs over 2 s."""
    c = CpuContention()
    if not c.ok or max_wait_s <= 0:
        return
    t0 = time.time()
    while True:
        c.reset()
        time.sleep(2.0)
        busy = c.others()
        if busy < threshold:
            return
        if time.time() - t0 > max_wait_s:
            if log:
                log(f"warning: other processes still use {busy:.0%} of the CPUs after waiting "
                    f"{max_wait_s:.0f} s; CPU timings will be noisy")
            return
        if log:
            log(f"other processes use {busy:.0%} of the CPUs; waiting for a quieter machine ...")


# ------------------------------------------------------------------------------------------
# Timing and memory of one callable
# ------------------------------------------------------------------------------------------

def _warmup(call, device, n, setup=None):
    for _ in range(n):
        state = setup() if setup is not None else None
        out = call(state)
        del out, state
    _sync(device)


def _samples(call, device, min_reps, min_time_s, max_reps, cache, setup=None) -> List[float]:
    """Times (ms) of repeated ``call(setup())``, setup and cache flush untimed, with Python's
    garbage collector off (callers gc.collect() first: a full collection takes ~0.2 s once
    torch.compile is imported, too slow to run before every batch of repetitions)."""
    device = _dev(device)
    cuda = device.type == "cuda"
    flusher = get_flusher(device) if cache == "cold" else None
    if cuda:
        start_ev = torch.cuda.Event(enable_timing=True)
        end_ev = torch.cuda.Event(enable_timing=True)
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        spent = 0.0
        while len(times) < max_reps and (len(times) < min_reps or spent < min_time_s):
            state = setup() if setup is not None else None
            if flusher is not None:
                flusher.flush()
            if cuda:
                torch.cuda.synchronize(device)
                start_ev.record()
                out = call(state)
                end_ev.record()
                end_ev.synchronize()
                ms = start_ev.elapsed_time(end_ev)
            else:
                t0 = time.perf_counter()
                out = call(state)
                ms = (time.perf_counter() - t0) * 1e3
            del out, state  # the result is freed outside the timed region
            times.append(ms)
            spent += ms / 1e3
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def time_call(call: Callable, device, config: TimingConfig = DEFAULT,
              setup: Optional[Callable] = None) -> Timing:
    """Per-repetition times of ``call(setup())`` (setup untimed). See the module docstring."""
    _warmup(call, device, config.warmup, setup)
    gc.collect()
    return Timing.from_samples(_samples(call, device, config.min_reps, config.min_time_s,
                                        config.max_reps, config.cache, setup))


def time_calls(cases: Dict[str, tuple], device, config: TimingConfig = DEFAULT) -> Dict:
    """Times several (setup, call) cases *interleaved*: after each case's warmup, ``config.rounds``
    rounds each take 1/rounds of the repetitions of every case (in a rotating order), so a
    slow spell of the machine hits all cases alike and their ratios stay stable. Returns
    {name: Timing, or the exception the case raised}."""
    out, samples = {}, {n: [] for n in cases}
    for name, (setup, call) in cases.items():
        try:
            _warmup(call, device, config.warmup, setup)
        except Exception as e:  # noqa: BLE001
            out[name] = e
    live = [n for n in cases if n not in out]
    rounds = max(1, config.rounds)
    gc.collect()
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for name in order:
            if name in out:
                continue
            setup, call = cases[name]
            try:
                samples[name] += _samples(call, device, math.ceil(config.min_reps / rounds),
                                          config.min_time_s / rounds,
                                          math.ceil(config.max_reps / rounds), config.cache, setup)
            except Exception as e:  # noqa: BLE001
                out[name] = e
    for name in live:
        if name not in out:
            out[name] = Timing.from_samples(samples[name])
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ log lines (kineto writes them to fd 2)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_MARKER_BYTES = 1_000_003  # an allocation of this odd size marks where the measured call starts


def _cpu_peak_bytes_profiler(call, setup):
    """Runs setup() and then call(state) under the profiler; returns the peak, during call, of
    the running sum of CPU allocator events, relative to the sum when call started.

    setup runs inside the profiled region so that frees of what it allocated (e.g. saved
    tensors released by a backward) are seen: the profiler reports no event for freeing a
    block allocated before it started. A marker allocation separates the two."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            state = setup() if setup is not None else None
            marker = torch.empty(_MARKER_BYTES, dtype=torch.uint8)
            del marker
            out = call(state)
    del out, state
    cpu = torch._C._autograd.DeviceType.CPU
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == cpu]
    # stable sort keeps the recorded order of events with equal timestamps
    events = [e for _, e in sorted(enumerate(events), key=lambda ie: (ie[1].start_ns(), ie[0]))]
    cur, base, peak = 0, None, 0
    for i, e in enumerate(events):
        cur += e.nbytes()
        if base is None:
            if e.nbytes() == -_MARKER_BYTES and i > 0 and events[i - 1].nbytes() == _MARKER_BYTES:
                base = cur
        else:
            peak = max(peak, cur - base)
    if base is None:
        raise RuntimeError("peak_memory: the profiler recorded no CPU allocation events")
    return peak


def peak_memory(call: Callable, device, setup: Optional[Callable] = None) -> int:
    """Extra bytes allocated above the current state during ``call(setup())`` (one call;
    Python's garbage collector is off meanwhile, so it frees nothing older in between)."""
    device = _dev(device)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if device.type == "cuda":
            state = setup() if setup is not None else None
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            out = call(state)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
            del out, state
        else:
            peak = _cpu_peak_bytes_profiler(call, setup)
    finally:
        if gc_was_enabled:
            gc.enable()
    return int(peak)


def memory_self_check(device="cpu", k=8 << 20):
    """Validates `peak_memory` with a known pattern: setup allocates one k-byte buffer (like a
    forward's saved tensors); the call allocates three more, frees setup's, allocates two
    more and frees all but one. The true peak above the state at the call's start is 4k (a
    method that missed the free would read 5k). Returns (measured bytes, expected bytes)."""
    device = _dev(device)

    def buf():
        t = torch.empty(k, dtype=torch.uint8, device=device)
        t.fill_(1)
        return t

    def setup():
        return [buf()]

    def call(saved):
        a, b, c = buf(), buf(), buf()      # +3k
        saved.pop()                        # +2k
        d, e = buf(), buf()                # +4k: the peak
        del a, b, d, e                     # +0k (c is returned)
        return c

    return peak_memory(call, device, setup), 4 * k


# ------------------------------------------------------------------------------------------
# Cases: (op, provider, mode) -> (setup, call)
# ------------------------------------------------------------------------------------------

_COMPILED: Dict[tuple, Callable] = {}


def provider_fn(info: OpInfo, provider: str, device, dtype):
    if provider == "lossext":
        return info.op
    ref = info.bench_ref or info.ref
    if provider == "torch":
        return ref
    if provider == "compile":
        key = (info.name, str(_dev(device)), dtype)
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(ref, dynamic=False)
        return _COMPILED[key]
    raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")


def _grad(loss, xs):
    """d (sum of every element of every output) / d xs."""
    outs = outputs(loss)
    return torch.autograd.grad(outs, xs, grad_outputs=[None if o.dim() == 0 else torch.ones_like(o) for o in outs])


def make_case(fn: Callable, sample, mode: str, grad_args: Sequence[int] = (0,)):
    """(setup, call) for time_call / peak_memory. Gradients are taken w.r.t. sample.args[i]
    for i in grad_args (default: the input only)."""
    args, kwargs = sample.args, sample.kwargs
    if mode == "forward":
        def call(_):
            with torch.no_grad():
                return fn(*args, **kwargs)
        return None, call
    leaves = [args[i].detach().requires_grad_(True) for i in grad_args]
    it = iter(leaves)
    args = tuple(next(it) if i in grad_args else a for i, a in enumerate(args))
    if mode == "full":
        def call(_):
            return _grad(fn(*args, **kwargs), leaves)
        return None, call
    if mode == "backward":
        def setup():
            return fn(*args, **kwargs)

        def call(loss):
            return _grad(loss, leaves)
        return setup, call
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def floor_bytes(info: OpInfo, mode: str, numel: int, dtype) -> int:
    return int(info.bench_bytes[mode]) * numel * torch.empty((), dtype=dtype).element_size()


def _copy_case(nbytes: int, device, dtype):
    """(setup, call) of the copy floor: dst.copy_(src) moving nbytes in total (nbytes/2 read,
    nbytes/2 written), on preallocated tensors."""
    n = max(1, nbytes // 2 // torch.empty((), dtype=dtype).element_size())
    src = torch.ones(n, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    return None, lambda _: dst.copy_(src)


def copy_floor(nbytes: int, device, dtype, config: TimingConfig = DEFAULT) -> Timing:
    """Time of dst.copy_(src) moving nbytes in total (nbytes/2 read, nbytes/2 written)."""
    setup, call = _copy_case(nbytes, device, dtype)
    return time_call(call, device, config, setup)


# ------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------

def _ratio(a, b):
    try:
        if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
            return math.nan
        return a / b
    except TypeError:
        return math.nan


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device="cpu") -> Dict[str, str]:
    """The machine a row was measured on (stored in every CSV row)."""
    from .. import __version__ as lossext_version

    device = _dev(device)
    gpu = ""
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    return {
        "cpu_model": _cpu_model(),
        "nproc": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda or ""),
        "gpu": gpu,
        "python": platform.python_version(),
        "lossext_version": lossext_version,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def measure(fns: Dict[str, Callable], sample, mode: str, nbytes: int, device, dtype,
            config: TimingConfig = DEFAULT, memory: bool = True, grad_args: Sequence[int] = (0,)) -> Dict:
    """One row: each provider's fn (``{provider: fn}``, a subset of PROVIDERS) on ``sample`` in
    ``mode`` and the copy floor of ``nbytes``, timed interleaved (time_calls), then each
    provider's peak memory. Missing or failing providers give NaN and an 'error' entry.
    ``other_cpu_pct``: the share of all CPUs, in percent, that other processes took while the
    row was timed."""
    errors, cases = {}, {}
    for p, fn in fns.items():
        try:
            cases[p] = make_case(fn, sample, mode, grad_args)
        except Exception as e:  # noqa: BLE001
            errors[p] = e
    cases["floor"] = _copy_case(nbytes, device, dtype)
    contention = CpuContention()
    timings = time_calls(cases, device, config)
    noise = contention.others()
    del cases["floor"]
    row = {}
    for p in PROVIDERS:
        t, peak = NAN_TIMING, math.nan
        res = timings.get(p, errors.get(p))
        if isinstance(res, Timing):
            t = res
            if memory:
                try:
                    peak = peak_memory(cases[p][1], device, cases[p][0]) / MiB
                except Exception as e:  # noqa: BLE001
                    errors[p] = e
        elif res is not None:
            errors[p] = res
        row[f"{p}_ms"], row[f"{p}_p20"], row[f"{p}_p80"] = t.median, t.p20, t.p80
        row[f"{p}_reps"] = t.reps
        row[f"{p}_peak_mib"] = peak
    ft = timings["floor"] if isinstance(timings["floor"], Timing) else NAN_TIMING
    row["bytes"] = nbytes
    row["floor_ms"], row["floor_p20"], row["floor_p80"] = ft.median, ft.p20, ft.p80
    row["speedup_vs_torch"] = _ratio(row["torch_ms"], row["lossext_ms"])
    row["speedup_vs_compile"] = _ratio(row["compile_ms"], row["lossext_ms"])
    for p in PROVIDERS:
        row[f"{p}_over_floor"] = _ratio(row[f"{p}_ms"], ft.median)
    row["peak_vs_torch"] = _ratio(row["lossext_peak_mib"], row["torch_peak_mib"])
    row["other_cpu_pct"] = round(100 * noise, 1) if not math.isnan(noise) else math.nan
    row["error"] = "; ".join(f"{p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             for p, e in errors.items())
    return row


def bench_op(info: OpInfo, device="cpu", dtype=torch.float32, numel=1 << 22,
             modes: Iterable[str] = MODES, providers: Iterable[str] = PROVIDERS,
             config: TimingConfig = DEFAULT, memory: bool = True,
             log: Optional[Callable[[str], None]] = None) -> List[Dict]:
    """One row per mode for one op, on its benchmark input (see measure)."""
    device = _dev(device)
    providers = [p for p in PROVIDERS if p in set(providers)]
    sample = info.bench_input(numel, device, dtype)
    fns = {}
    for p in providers:
        try:
            fns[p] = provider_fn(info, p, device, dtype)
        except Exception as e:  # noqa: BLE001  (reported by measure as the provider's error)
            fns[p] = _raiser(e)
    rows = []
    for mode in modes:
        row = {"op": info.name, "device": device.type, "dtype": str(dtype).replace("torch.", ""),
               "numel": numel, "mode": mode, "cache": config.cache}
        row.update(measure(fns, sample, mode, floor_bytes(info, mode, numel, dtype), device, dtype, config,
                           memory))
        if log:
            if row["error"]:
                log(f"  {info.name} {mode} FAILED {row['error']}")
            log(f"  {info.name:<22} {mode:<8} lossext {row['lossext_ms']:8.3f} ms  eager "
                f"{row['torch_ms']:8.3f} ms  compile {row['compile_ms']:8.3f} ms  floor "
                f"{row['floor_ms']:7.3f} ms  (others' CPU {row['other_cpu_pct']}%)")
        rows.append(row)
    return rows


def _raiser(exc):
    def fn(*args, **kwargs):
        raise exc
    return fn


def run(ops: Optional[Iterable[str]] = None, device="cpu", dtype=torch.float32, numel=1 << 22,
        modes: Iterable[str] = MODES, providers: Iterable[str] = PROVIDERS,
        config: TimingConfig = DEFAULT, memory: bool = True,
        log: Optional[Callable[[str], None]] = None, retry_noisy: int = 0,
        noisy_pct: float = 10.0, wait_idle_s: float = 60.0) -> List[Dict]:
    """Benchmark rows (list of dicts) for the OP_DB ops named in ``ops`` (default: all).

    A row measured while other processes took more than ``noisy_pct`` % of the CPUs is
    measured again, up to ``retry_noisy`` times, each after waiting up to ``wait_idle_s`` for
    a quiet machine; the least disturbed measurement is kept."""
    infos = list(op_db())
    if ops is not None:
        ops = list(ops)
        unknown = sorted(set(ops) - {i.name for i in infos})
        if unknown:
            raise KeyError(f"unknown ops {unknown}; OP_DB has {[i.name for i in infos]}")
        infos = [i for i in infos if i.name in ops]
    meta = machine_info(device)
    meta["config"] = (f"warmup={config.warmup} min_reps={config.min_reps} "
                      f"min_time_s={config.min_time_s} max_reps={config.max_reps} "
                      f"rounds={config.rounds}")
    rows = []
    for info in infos:
        for row in bench_op(info, device, dtype, numel, modes, providers, config, memory, log):
            for attempt in range(retry_noisy):
                if not row["other_cpu_pct"] > noisy_pct:
                    break
                if log:
                    log(f"  {info.name} {row['mode']}: other processes took {row['other_cpu_pct']}% "
                        f"of the CPUs; measuring again ({attempt + 1}/{retry_noisy})")
                wait_until_idle(wait_idle_s, noisy_pct / 100, log)
                (again,) = bench_op(info, device, dtype, numel, [row["mode"]], providers, config,
                                    memory, log)
                if again["other_cpu_pct"] < row["other_cpu_pct"]:
                    row = again
            row.update(meta)
            rows.append(row)
    return rows


def check_correctness(info: OpInfo, device="cpu", dtype=torch.float32, numel=1 << 20) -> Dict:
    """lossext vs its float64 reference on the benchmark input: max abs differences of the
    loss and of d loss / d input, the largest reference magnitudes, and the dtype's (rtol,
    atol) from the OpInfo. ``ok`` applies the tolerance relative to the largest magnitude."""
    sample = info.bench_input(numel, device, dtype)
    x = sample.args[0].detach().requires_grad_(True)
    out = info.op(x, *sample.args[1:], **sample.kwargs)
    (g,) = _grad(out, x)
    s64 = sample.map_tensors(lambda t: t.detach().double() if t.is_floating_point() else t.detach())
    x64 = s64.args[0].requires_grad_(True)
    ref = info.ref(x64, *s64.args[1:], **s64.kwargs)
    (g64,) = _grad(ref, x64)
    rtol, atol = info.tol.get(dtype, (1e-5, 1e-5))
    res = {"op": info.name, "numel": numel, "dtype": str(dtype).replace("torch.", "")}
    ok = True
    for name, a, b in (("loss", out, ref), ("grad", g, g64)):  # an op's several outputs as one vector
        a = torch.cat([t.detach().double().reshape(-1) for t in outputs(a)])
        b = torch.cat([t.detach().reshape(-1) for t in outputs(b)])
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        scale = b.abs().max().item() if b.numel() else 0.0
        res[f"{name}_max_abs_diff"] = diff
        res[f"{name}_ref_max_abs"] = scale
        ok = ok and diff <= atol * max(scale, 1e-30) + rtol * scale
    res["rtol"], res["atol"], res["ok"] = rtol, atol, ok
    return res


# ------------------------------------------------------------------------------------------
# CSV and markdown
# ------------------------------------------------------------------------------------------

def write_csv(rows: List[Dict], path: str):
    import csv

    keys = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_csv(path: str) -> List[Dict]:
    import csv

    def conv(v):
        try:
            return int(v)
        except ValueError:
            pass
        try:
            return float(v)
        except ValueError:
            return v

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _f(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "n/a"
    return f"{v:.{digits}f}"


def _ms(row, p):
    m = row.get(f"{p}_ms")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    return f"{_f(m)} ({_f(row[f'{p}_p20'])}–{_f(row[f'{p}_p80'])})"


def format_numel(n):
    n = int(n)
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def _x(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}×"


def markdown_table(rows: List[Dict]) -> str:
    """One line per row: times (median, p20–p80), ratios, floor and peak memory."""
    head = ["op", "mode", "dtype", "numel", "lossext ms (p20–p80)", "eager ms (p20–p80)",
            "compile ms (p20–p80)", "speedup vs eager", "speedup vs compile", "floor ms",
            "lossext / floor", "peak MiB lossext / eager / compile", "others' CPU %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 9) + "|"]
    for r in rows:
        peak = " / ".join(_f(r.get(f"{p}_peak_mib"), 1) for p in PROVIDERS)
        lines.append("| " + " | ".join([
            str(r["op"]), str(r["mode"]), str(r["dtype"]), format_numel(r["numel"]),
            _ms(r, "lossext"), _ms(r, "torch"), _ms(r, "compile"),
            _x(r.get("speedup_vs_torch")), _x(r.get("speedup_vs_compile")),
            _f(r.get("floor_ms")), _x(r.get("lossext_over_floor")), peak,
            _f(r.get("other_cpu_pct"), 0)]) + " |")
    return "\n".join(lines)


def targets(rows: List[Dict], mode: str = "full") -> List[Dict]:
    """For each op's ``mode`` row: each target of TARGETS with its value and whether it is met
    (None when the number is missing)."""
    out = []
    for r in rows:
        if r["mode"] != mode:
            continue
        checks = {}
        for key, thr in TARGETS.items():
            v = r.get(key)
            if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
                checks[key] = (math.nan, thr, None)
            elif key in ("speedup_vs_torch", "speedup_vs_compile"):
                checks[key] = (v, thr, v >= thr)
            else:
                checks[key] = (v, thr, v <= thr)
        out.append({"op": r["op"], "mode": mode, "dtype": r["dtype"], "numel": r["numel"],
                    "checks": checks, "row": r})
    return out


def targets_markdown(rows: List[Dict], mode: str = "full") -> str:
    mark = {True: "met", False: "**NOT met**", None: "n/a"}
    lines = []
    for t in targets(rows, mode):
        c, r = t["checks"], t["row"]
        met = [v[2] for v in c.values()]
        verdict = ("all targets met" if all(m is True for m in met) else
                   f"{sum(m is False for m in met)} of {len(met)} NOT met" if any(m is False for m in met)
                   else "incomplete")
        v = lambda k: c[k][0]  # noqa: E731
        lines.append(
            f"- **{t['op']}** ({mode}, {t['dtype']}, N={format_numel(t['numel'])}): {verdict}\n"
            f"  - ≥{TARGETS['speedup_vs_torch']:g}× faster than eager: {_x(v('speedup_vs_torch'))} "
            f"— {mark[c['speedup_vs_torch'][2]]}\n"
            f"  - ≥{TARGETS['speedup_vs_compile']:g}× faster than torch.compile: "
            f"{_x(v('speedup_vs_compile'))} — {mark[c['speedup_vs_compile'][2]]}\n"
            f"  - ≤{TARGETS['lossext_over_floor']:g}× the copy floor: {_x(v('lossext_over_floor'))} "
            f"({_f(r.get('lossext_ms'))} vs {_f(r.get('floor_ms'))} ms) — "
            f"{mark[c['lossext_over_floor'][2]]}\n"
            f"  - peak extra memory ≤ eager's: {_f(r.get('lossext_peak_mib'), 1)} vs "
            f"{_f(r.get('torch_peak_mib'), 1)} MiB (×{_f(v('peak_vs_torch'), 2)}) — "
            f"{mark[c['peak_vs_torch'][2]]}\n"
            f"  - issue #15: ≤{FLOOR_TARGET_ISSUE15:g}× the copy floor: {_x(v('lossext_over_floor'))} — "
            f"{mark[None if math.isnan(v('lossext_over_floor')) else v('lossext_over_floor') <= FLOOR_TARGET_ISSUE15]}")
    return "\n".join(lines)


FLOOR_TARGET_ISSUE15 = 1.3  # issue #15, part 3: element-wise losses within 1.3x the copy floor (full mode)


def bench_row(op, case_name, args, kwargs, grad_args, mode, floor_bytes, grad_bytes, device, dtype, config,
              providers=PROVIDERS, log=print, fns=None):
    """measure() on one case of a family suite (lossext/<family>/bench.py), plus the peak memory
    above the gradients the call returns (grad_bytes; forward mode returns none). fns: a
    provider's function instead of the row's (e.g. a peer library as 'torch')."""
    from .opinfo import SampleInput, op_by_name
    info = op_by_name(op)  # lossext: info.op; eager / compile: info.bench_ref, the peers' composite
    fns = {p: (fns or {}).get(p) or provider_fn(info, p, device, dtype) for p in providers}
    sample = SampleInput(args, kwargs, case_name)
    row = {"op": op, "case": case_name, "mode": mode, "device": torch.device(device).type,
           "dtype": str(dtype).replace("torch.", ""), "floor_bytes": floor_bytes}
    row.update(measure(fns, sample, mode, floor_bytes, device, dtype, config, grad_args=grad_args))
    for p in PROVIDERS:
        row[f"{p}_peak_above_grads_mib"] = row[f"{p}_peak_mib"] - (grad_bytes / MiB if mode != "forward" else 0.0)
    row["lossext_over_floor"] = _ratio(row["lossext_ms"], row["floor_ms"])
    row["mem_frac_vs_torch"] = _ratio(row["lossext_peak_above_grads_mib"], row["torch_peak_above_grads_mib"])
    log(f"  {op} {case_name} {mode}: lossext {row['lossext_ms']:.1f} ms, eager {row['torch_ms']:.1f} ms, "
        f"compile {row['compile_ms']:.1f} ms, floor {row['floor_ms']:.1f} ms; peak above grads MiB "
        f"{row['lossext_peak_above_grads_mib']:.1f} / {row['torch_peak_above_grads_mib']:.1f} / "
        f"{row['compile_peak_above_grads_mib']:.1f}" + (f"  [{row['error']}]" if row["error"] else ""))
    return row


def suite_table(rows):
    """A family suite's table: one line per row (op, case, the providers' medians, the ratios,
    the copy floor and the peak memory above the gradients)."""
    lines = ["| op | case | lossext ms | eager ms | compile ms | vs eager | vs compile | floor ms | lossext / floor | "
             "peak above grads MiB lossext / eager / compile |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        above = " / ".join(_f(r.get(f"{p}_peak_above_grads_mib")) for p in PROVIDERS)
        lines.append("| " + " | ".join([r["op"], r["case"], _f(r["lossext_ms"]), _f(r["torch_ms"]), _f(r["compile_ms"]),
                                        _x(r["speedup_vs_torch"]), _x(r["speedup_vs_compile"]), _f(r["floor_ms"]),
                                        _x(r["lossext_over_floor"]), above]) + " |")
    return lines


def suite_notes_and_targets(rows, title):
    """A family suite's report lines after its table: the rows' errors as notes, then the
    "### Targets" heading."""
    errs = [f"{r['op']} {r['case']} {r['mode']}: {r['error']}" for r in rows if r.get("error")]
    lines = ["", "Notes:", ""] + [f"- {e}" for e in errs] if errs else []
    return lines + ["", f"### Targets ({title}, full mode)", ""]


def target_mark(ok):
    return "met" if ok else "**NOT met**"


def speedup_target_line(label, row, vs_eager, vs_compile):
    """'- label: A× faster than eager (target ≥x×) — met; B× faster than torch.compile ...'."""
    a, b = row["speedup_vs_torch"], row["speedup_vs_compile"]
    return (f"- {label}: {_x(a)} faster than eager (target ≥{vs_eager:g}×) — {target_mark(a >= vs_eager)}; "
            f"{_x(b)} faster than torch.compile (target ≥{vs_compile:g}×) — {target_mark(b >= vs_compile)}")


def stamp_rows(rows, device, config):
    """A family suite's rows, each with the machine (machine_info) and the timing config it ran under."""
    meta = machine_info(device)
    for r in rows:
        r.update(meta)
        r["config"] = f"warmup={config.warmup} min_reps={config.min_reps} max_reps={config.max_reps}"
    return rows


def suite_header(title, rows, cmd, cache_note=""):
    """A family suite's report head: its heading, then the machine and the run from rows[0]."""
    r0 = rows[0]
    return [f"## {title}", "",
            f"- Machine: {r0.get('gpu') or r0.get('cpu_model')}, nproc {r0.get('nproc')}, torch threads "
            f"{r0.get('torch_threads')}; torch {r0.get('torch_version')}, lossext {r0.get('lossext_version')}",
            f"- Run: {r0.get('date')}, `{cmd}`; timing {r0.get('config')}, cold cache{cache_note}"]
