"""Autocast (automatic mixed precision) behaviour of the lossext ops, shared by every family.

Two policies, as torch's own ops have:
- "fp32" (losses: F.mse_loss, F.cross_entropy): under autocast, float16/bfloat16 tensor
  arguments run in float32 and the loss is float32; float64 stays float64.
- "matmul" (the fused linear losses, as F.linear then F.cross_entropy): float32/16 tensor
  arguments run in the autocast dtype, so the matmuls do (the kernels keep their epilogues
  and statistics in float32/float64), and the loss is returned in float32.
Both the raw ops (an Autocast kernel) and the Python functions (`cast_inputs`, which they
call before checking dtypes) follow the policy.

Under "matmul" the fused kernels write the loss in float32 for float16/bfloat16 inputs (the
statistics, lse, are float64), so the float32 loss is not rounded to the autocast dtype;
float_outputs=1 then converts nothing (it remains for any op whose loss is in its input
dtype). The functional API converts that loss back to the input dtype outside autocast."""
import torch

_LIB = torch.library.Library("lossext", "FRAGMENT")  # noqa: TOR901  (registrations only)
_HALF = (torch.float16, torch.bfloat16)
_DEVICES = ("cpu", "cuda")
POLICY = {}  # op name -> its policy


def enabled(device_type):
    return torch.is_autocast_enabled(device_type) if device_type in _DEVICES else False


def _cast(policy, device_type, t):
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    if policy == "fp32":
        return t.float() if t.dtype in _HALF else t
    low = torch.get_autocast_dtype(device_type)
    return t if t.dtype == torch.float64 else t.to(low)  # as autocast's lower-precision ops


def cast_inputs(policy, device_type, *tensors):
    """The tensors as the op would see them under autocast on device_type (unchanged outside)."""
    if not enabled(device_type):
        return tensors
    return tuple(_cast(policy, device_type, t) for t in tensors)


def register(op_name, policy, *, float_outputs=0):
    """An Autocast kernel for torch.ops.lossext.<op_name> on CPU and CUDA. float_outputs: how
    many leading outputs are returned in float32 (the losses of the "matmul" policy)."""
    op = getattr(torch.ops.lossext, op_name).default
    POLICY[op_name] = policy
    for device_type in _DEVICES:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(_keyset, *args, device_type=device_type, keyset=keyset):
            with torch._C._ExcludeDispatchKeyGuard(keyset):
                out = op(*(_cast(policy, device_type, a) for a in args))
            if float_outputs:
                out = tuple(o.float() if i < float_outputs else o for i, o in enumerate(out))
            return out

        _LIB.impl(op_name, kernel, key, with_keyset=True)
