"""Loads the compiled kernels (lossext._C) and registers, for each op family, the fake
kernels and autograd formulas that live in Python."""
import torch

from . import _C
from . import _pointwise
from . import _margin  # noqa: F401  (registers the margin-softmax ops)

# One-pass or recompute (see _pointwise), measured with the raw ops at N = 2^22 float32 on the
# 2-core CI machine, forward+backward, warm caches: Wing recompute 3.6 ms vs one-pass 5.9 ms
# (its backward is one division per element, no log, and recompute allocates one buffer fewer);
# Adaptive Wing one-pass 11.9 ms vs recompute 17.3 ms (its backward would redo a log, an exp
# and a log1p per element). Half precision always recomputes (see _pointwise.call).
_pointwise.register("wing_loss", target_grad_is_neg_input_grad=True, one_pass=False)
_pointwise.register("adaptive_wing_loss", target_grad_is_neg_input_grad=False, one_pass=True)


def build_info():
    """What the loaded binary was compiled with."""
    return {
        "version": _C.version,
        "torch": torch.__version__,
        "cuda_compiled": bool(_C.with_cuda),
        "cuda_arch_list": _C.cuda_arch_list,
        "cuda_available": torch.cuda.is_available(),
    }


def registered_ops():
    """{op name: [dispatch keys with a lossext kernel]} for every lossext op."""
    names = sorted({n.split("::", 1)[1].split(".", 1)[0]
                    for n in torch._C._dispatch_get_all_op_names() if n.startswith("lossext::")})
    out = {}
    for n in names:
        out[n] = [k for k in ("CPU", "CUDA")
                  if torch._C._dispatch_has_kernel_for_dispatch_key(f"lossext::{n}", k)]
    return out
