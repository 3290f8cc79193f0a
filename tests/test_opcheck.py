"""torch.library.opcheck with all its default checks, on every raw op of every OpInfo row."""
import pytest
import torch

from lossext.testing.opinfo import SampleInput

RAW_SAMPLES = 4  # per raw op: opcheck compiles (aot_dispatch_dynamic), so keep it small


def _samples(info, device):
    chosen = {}
    for s in info.sample_inputs(device, torch.float64, small=True):
        empty = s.args[0].numel() == 0
        if empty and s.kwargs.get("reduction") == "mean":
            continue  # NaN by convention; opcheck compares without equal_nan (tested in test_bad_input)
        key = (s.kwargs.get("reduction"), "weight" in s.kwargs, s.args[0].is_contiguous(), empty)
        chosen.setdefault(key, s)
    return list(chosen.values())


def test_opcheck(info, device):
    seen = {}
    for sample in _samples(info, device):
        for name, args in info.raw_calls(sample):
            if seen.get(name, 0) >= RAW_SAMPLES:
                continue
            seen[name] = seen.get(name, 0) + 1
            op = getattr(torch.ops.lossext, name).default
            grad_ok = not name.endswith("backward")
            args = tuple(a.detach().clone().requires_grad_(grad_ok and a.is_floating_point())
                         if isinstance(a, torch.Tensor) else a for a in args)
            torch.library.opcheck(op, args)
    assert set(seen) == set(info.raw_ops)
