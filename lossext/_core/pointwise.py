"""Python side of the element-wise loss pattern (csrc/common/pointwise_loss.h).

A loss NAME with parameters P1..Pk has these ops (reduction: 0 none, 1 mean, 2 sum):
  NAME(input, target, weight?, P..., reduction) -> loss
  NAME_with_grad(input, target, weight?, P..., reduction) -> (loss, dloss/dinput)
  NAME_backward(grad_output, input, target, weight?, P..., reduction) -> grad_input
  NAME_target_backward(...) -> grad_target      (only where dL/dy is not -dL/dx)

`register` adds the fake kernels and autograd of all of them. Gradient choices:
- NAME (recompute): backward runs NAME_backward over the saved inputs.
- NAME_with_grad (one pass): the forward already wrote dloss/dinput, so backward is one
  multiply by grad_output. Both paths move the same bytes; one-pass runs the loss math once
  but allocates one more input-sized buffer. `register(..., one_pass=)` records which path the
  functional API takes for reduced losses whose input requires grad; the choice per op is
  measured (benchmarks/RESULTS.md) and written beside its registration in the family's ops.py.
- weight's gradient is grad_output * scale * L(x, y) from NAME(..., reduction=none).
- Forward mode (torch.func.jvp, forward_ad): the tangent is the reduction of
  dL/dx tx + dL/dy ty + L tw, element by element (NAME_with_grad at reduction=none gives dL/dx).
- Double backward is not supported: it raises NotImplementedError.
- Autocast: the "fp32" policy (lossext/_core/amp.py), as F.mse_loss.
- Fake kernels check devices as the real ones do (lossext/_core/fake.py).
"""
import functools

import torch

from . import amp
from . import library  # noqa: F401  (loads the kernels)
from .autograd import call as call_op, refuse_double_backward, register as register_autograd, scale_saved
from .fake import check_same_device


def _scale(reduction, numel):
    return 1.0 / numel if reduction == 1 and numel > 0 else 1.0


# name -> True when the functional API takes the one-pass path for reduced losses.
ONE_PASS = {}


def _dense_order(x):
    """The permutation of x's dims from outermost to innermost stride when x fills its storage
    without gaps but is not contiguous (channels_last, a transposed tensor): x.permute(order) is contiguous. None
    otherwise."""
    if x.dim() < 2 or x.is_contiguous():
        return None
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))  # stable: size-1 dims keep their place
    return order if x.permute(order).is_contiguous() else None


def one_pass_applies(input: torch.Tensor, reduction: int) -> bool:
    """Where an op registered one_pass=True takes its one-pass op (scriptable: the functions'
    TorchScript branches choose as `call` does, so scripted and eager results are identical).
    The one-pass buffer holds dloss/dinput (1/numel included for 'mean') in the input dtype,
    which underflows in float16/bfloat16 before a loss scale multiplies it: half precision
    recomputes in float32 inside the backward kernel instead."""
    return (reduction != 0 and (input.dtype == torch.float32 or input.dtype == torch.float64)
            and input.requires_grad and torch.is_grad_enabled())


def call(name, input, target, weight, params, reduction):
    """The functional entry: one-pass or recompute, as measured best for the op.
    reduction='none' returns the loss in input's memory format (channels_last in,
    channels_last out), as torch's losses do: the kernels write contiguous outputs, so a gapless
    non-contiguous input is handed to them as the contiguous permuted view."""
    if reduction == 0:
        order = _dense_order(input)
        if order is not None:
            inverse = sorted(range(len(order)), key=order.__getitem__)
            perm = lambda t: None if t is None else t.permute(order)  # noqa: E731
            return call(name, perm(input), perm(target), perm(weight), params, 0).permute(inverse)
    if ONE_PASS[name] and one_pass_applies(input, reduction):
        return call_op(name + "_with_grad", input, target, weight, *params, reduction)[0]
    return call_op(name, input, target, weight, *params, reduction)


def register(name, *, target_grad_is_neg_input_grad, one_pass):
    ONE_PASS[name] = one_pass
    # The formulas call the ops through call_op, never torch.ops directly: under torch.func
    # transforms functorch must see their autograd.Functions (the backward ops' raise when
    # differentiated, so a second derivative is refused instead of silently zero).
    fwd, fwd_grad, bwd = (functools.partial(call_op, n) for n in (name, f"{name}_with_grad", f"{name}_backward"))
    tbwd = None if target_grad_is_neg_input_grad else functools.partial(call_op, f"{name}_target_backward")

    def loss_shape(input, reduction):
        return input.new_empty(()) if reduction != 0 else torch.empty_like(input, memory_format=torch.contiguous_format)

    def devices(op, input, target, weight, grad_output=None):
        check_same_device(op, "input", input, ("target", target), ("weight", weight), ("grad_output", grad_output))

    @torch.library.register_fake(f"lossext::{name}")
    def _(input, target, weight, *rest):
        devices(name, input, target, weight)
        return loss_shape(input, rest[-1])

    @torch.library.register_fake(f"lossext::{name}_with_grad")
    def _(input, target, weight, *rest):
        devices(f"{name}_with_grad", input, target, weight)
        return loss_shape(input, rest[-1]), torch.empty_like(input, memory_format=torch.contiguous_format)

    def backward_fake(op):
        def fake(grad_output, input, target, weight, *rest):
            devices(op, input, target, weight, grad_output)
            return torch.empty_like(input, memory_format=torch.contiguous_format)
        return fake

    torch.library.register_fake(f"lossext::{name}_backward")(backward_fake(f"{name}_backward"))
    if tbwd is not None:
        torch.library.register_fake(f"lossext::{name}_target_backward")(backward_fake(f"{name}_target_backward"))

    for op in (name, f"{name}_with_grad"):
        amp.register(op, "fp32")

    def weight_grad(grad, input, target, params):
        reduction = params[-1]
        per_elem = fwd(input, target, None, *params[:-1], 0)
        if per_elem.dtype in (torch.float32, torch.float64):
            return grad * per_elem * _scale(reduction, input.numel())
        # half precision: grad * loss overflows and grad / numel underflows; multiply in float32
        scale = grad.float() * _scale(reduction, input.numel())
        return (per_elem.float() * scale).to(per_elem.dtype)

    def target_grad(grad, input, target, weight, params, grad_input):
        if tbwd is None:
            if grad_input is None:
                grad_input = bwd(grad, input, target, weight, *params)
            return -grad_input
        return tbwd(grad, input, target, weight, *params)

    def tangent(ctx, tx, ty, tw):
        """Forward mode: reduce(dL/dx tx + dL/dy ty + L tw) over the elements."""
        input, target, weight = ctx.saved_tensors
        params = ctx.params
        p, reduction = params[:-1], params[-1]
        t = None
        if tx is not None or ty is not None:
            gx = fwd_grad(input, target, weight, *p, 0)[1]  # d loss_i / d x_i, weight included
            if tx is not None:
                t = gx * tx
            if ty is not None:
                gy = -gx if tbwd is None else tbwd(torch.ones_like(gx), input, target, weight, *p, 0)
                t = gy * ty if t is None else t + gy * ty
        if tw is not None:
            lw = fwd(input, target, None, *p, 0) * tw
            t = lw if t is None else t + lw
        if t is None:
            t = torch.zeros_like(input)
        return t if reduction == 0 else (t.sum() if reduction == 2 else t.mean())

    def save(ctx, input, target, weight, params, *extra):
        ctx.save_for_backward(*extra, input, target, weight)
        ctx.save_for_forward(input, target, weight)  # jvp's ctx.saved_tensors
        ctx.params = params

    # ---- recompute path -------------------------------------------------------------
    def setup_fwd(ctx, inputs, output):
        input, target, weight, *params = inputs
        save(ctx, input, target, weight, params)

    def backward_fwd(ctx, grad):
        input, target, weight = ctx.saved_tensors
        p = ctx.params
        gi = gt = gw = None
        if ctx.needs_input_grad[0]:
            gi = bwd(grad, input, target, weight, *p)
        if ctx.needs_input_grad[1]:
            gt = target_grad(grad, input, target, weight, p, gi)
        if ctx.needs_input_grad[2]:
            gw = weight_grad(grad, input, target, p)
        return (gi, gt, gw) + (None,) * len(p)

    def jvp_fwd(ctx, tx, ty, tw, *_params):
        return tangent(ctx, tx, ty, tw)

    register_autograd(name, setup_context=setup_fwd, backward=backward_fwd, jvp=jvp_fwd, what=f"lossext.{name}")

    # ---- one-pass path --------------------------------------------------------------
    def setup_fwd_grad(ctx, inputs, output):
        input, target, weight, *params = inputs
        # dloss/dinput is an auxiliary output: not differentiable. Without materialize_grads off,
        # autograd would zero-fill an input-sized gradient for it in every backward.
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        save(ctx, input, target, weight, params, output[1])

    def backward_fwd_grad(ctx, grad, _unused):
        g, input, target, weight = ctx.saved_tensors
        p = ctx.params
        gi = gt = gw = None
        if grad is None:
            return (gi, gt, gw) + (None,) * len(p)
        if torch.is_grad_enabled():
            # create_graph=True: grad * g would drop g's own dependence on input (silently wrong
            # second derivatives), so take the recompute op, whose double backward raises.
            gi = bwd(grad, input, target, weight, *p) if ctx.needs_input_grad[0] else None
        elif ctx.needs_input_grad[0]:
            gi = scale_saved(grad, g)  # the buffer itself for grad_output = 1
        if ctx.needs_input_grad[1]:
            gt = target_grad(grad, input, target, weight, p, gi)
        if ctx.needs_input_grad[2]:
            gw = weight_grad(grad, input, target, p)
        return (gi, gt, gw) + (None,) * len(p)

    def jvp_fwd_grad(ctx, tx, ty, tw, *_params):
        return tangent(ctx, tx, ty, tw), None

    register_autograd(f"{name}_with_grad", setup_context=setup_fwd_grad, backward=backward_fwd_grad,
                      jvp=jvp_fwd_grad, what=f"lossext.{name}")

    # ---- double backward: raise clearly ---------------------------------------------
    refuse_double_backward(name, [f"{name}_backward"] + ([f"{name}_target_backward"] if tbwd is not None else []))
