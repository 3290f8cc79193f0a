"""Autograd of the lossext ops, shared by every family.

`register` gives a raw op a setup_context-style torch.autograd.Function, run by the op's
Autograd kernel and, under torch.func transforms and forward-mode AD, by `call` (the
functional API's entry: functorch must see the Function before the dispatcher reaches the
Autograd key), so that every training mode sees one formula:
- reverse mode (loss.backward(), torch.autograd.grad),
- torch.func.grad / vjp / jacrev (functorch needs setup_context, which
  torch.library.register_autograd's generated Function lacks in torch 2.10-2.14),
- forward mode (torch.func.jvp, torch.autograd.forward_ad): the family's `jvp`, or a
  NotImplementedError naming the op (never the silently zero tangent a plain custom op gives),
- vmap (the Function's generated rule over the ops' per-sample fallback),
- torch.compile / torch.export (AOTAutograd traces this kernel like register_autograd's).

`refuse_double_backward` makes each backward op's own derivative raise.
"""
import inspect

import torch
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

_LIB = torch.library.Library("lossext", "FRAGMENT")  # noqa: TOR901  (registrations only)


FUNCTIONS = {}  # op name -> its autograd.Function
_VARARGS = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])


def _transforms_or_dual_active():
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def plain_eager():
    """Plain eager autograd: not while torch.compile traces, nor under a torch.func transform or
    forward-mode AD, nor under a dispatch mode (make_fx / AOT tracing, fake tensors)."""
    return (not torch.compiler.is_compiling() and not _transforms_or_dual_active()
            and _get_current_dispatch_mode() is None)


def is_unit(grad):
    """grad_output is exactly 1 (loss.backward() of this loss alone, or of a plain sum of losses):
    read on the CPU only (no device sync) and in plain eager autograd only (not while
    torch.compile traces, nor under a torch.func transform or forward-mode AD, where the value is
    not concrete, nor under a dispatch mode: make_fx / AOT tracing, fake tensors)."""
    return (type(grad) is torch.Tensor and grad.dim() == 0 and grad.device.type == "cpu"
            and plain_eager() and grad.item() == 1.0)


def scale_saved(grad, saved):
    """The one-pass ops' input gradient: grad_output times the dloss/dinput their forward saved.
    For grad_output = 1 it is the saved buffer itself: no second input-sized pass, and every
    backward through the graph (retain_graph=True) returns the same values; modifying it in
    place before such a second backward makes that one raise (autograd checks the versions of
    saved tensors), never read it silently. grad is 0-dim for a reduced loss, else it has the
    loss's shape: a per-row loss ([N]) scales its rows."""
    if is_unit(grad):
        return saved
    if grad.dim() == 1 and saved.dim() == 2 and grad.shape[0] == saved.shape[0]:
        grad = grad.unsqueeze(1)
    return grad * saved


def _dispatch(op, args):
    """op(*args); with grad mode off in plain eager autograd entered below the Autograd key, since
    the op's Autograd kernel would only redispatch there (see call)."""
    if not torch.is_grad_enabled() and plain_eager():
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return op(*args)


def call(op_name, *args):
    """torch.ops.lossext.<op_name>(*args), through its autograd.Function where torch.func
    transforms or forward-mode AD are active. With grad mode off in plain eager autograd (a
    Function's forward or backward, inference) the call skips the op's Python Autograd kernel,
    which would only redispatch below autograd (about 9 us a call on the 2-core machine, and the
    same on a GPU machine's host): the same kernel runs, autocast and tensor subclasses still
    apply."""
    if _transforms_or_dual_active():
        return FUNCTIONS[op_name].apply(*args)
    return _dispatch(getattr(torch.ops.lossext, op_name), args)


def register(op_name, *, setup_context, backward, jvp=None, what=None):
    """Autograd for torch.ops.lossext.<op_name>.

    setup_context(ctx, inputs, output) and backward(ctx, *grads) are as for
    torch.library.register_autograd. jvp(ctx, *tangents) returns the outputs' tangents
    (tensors saved for it with ctx.save_for_forward are in ctx.saved_tensors); None: forward
    mode raises NotImplementedError naming `what` (the user-facing name; default the op's).
    """
    if op_name in FUNCTIONS:
        # torch 2.10-2.11 refuse a second Python kernel for one (op, key); later versions
        # replace the first silently. Both are a bug here, so fail the same way on every version.
        raise RuntimeError(f"lossext: autograd of {op_name} registered twice")
    op = getattr(torch.ops.lossext, op_name).default
    label = what or f"lossext.{op_name}"

    def forward(*args):
        # Runs with grad mode off (Function.apply), so the op below takes the plain path: in
        # plain eager autograd straight to the device kernel (see call).
        return _dispatch(op, args)

    # Function.apply binds the arguments to forward's signature on every call (setup_context
    # style); given here, inspect.signature returns it instead of rebuilding it each time.
    forward.__signature__ = _VARARGS

    def no_jvp(ctx, *tangents):
        raise NotImplementedError(
            f"{label}: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not "
            "implemented; use reverse mode (backward, torch.func.grad, vjp, jacrev)")

    fn = type(f"LossextAutograd_{op_name}", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
        "jvp": staticmethod(jvp or no_jvp),
        "generate_vmap_rule": True,
    })

    def kernel(keyset, *args):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return fn.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _LIB.impl(op_name, kernel, "Autograd", with_keyset=True)
    FUNCTIONS[op_name] = fn
    return fn


def refuse_double_backward(loss_name, backward_ops):
    """Registers, for each lossext backward op, an autograd formula that raises: the fused
    backward kernels have no derivative of their own, so double backward is not supported."""
    def backward(ctx, *grads):
        raise NotImplementedError(f"lossext.{loss_name}: double backward is not supported")

    def jvp(ctx, *tangents):  # forward-over-reverse (torch.func.hessian, jacfwd(jacrev))
        raise NotImplementedError(
            f"lossext.{loss_name}: second derivatives (double backward, forward-over-reverse such as "
            "torch.func.hessian) are not supported")

    def setup(ctx, inputs, output):
        pass

    for op_name in backward_ops:
        if op_name not in FUNCTIONS:  # a backward op shared by two losses (a one-pass op's) is refused once
            register(op_name, setup_context=setup, backward=backward, jvp=jvp)
