"""Helpers of the fake (meta) kernels shared by every family.

A fake kernel runs for FakeTensors under torch.compile/export and also, for real tensors,
whenever one argument is on the meta device: the dispatcher then picks the Meta kernel even
though the others are real. So each fake checks what the real kernels check about devices,
and raises as torch's own ops do, before it allocates anything."""


def check_same_device(op_name, first_name, first, *named):
    """named: (name, tensor or None) pairs that must be on first's device."""
    for name, t in named:
        if t is not None and t.device != first.device:
            raise RuntimeError(
                f"lossext::{op_name}: expected all tensors to be on the same device, but found at least "
                f"two devices, {first.device} ('{first_name}') and {t.device} ('{name}')")
