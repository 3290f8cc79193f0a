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
- Double backward is not supported: it raises NotImplementedError.
"""
import torch

from . import library  # noqa: F401  (loads the kernels)
from .autograd import refuse_double_backward


def _scale(reduction, numel):
    return 1.0 / numel if reduction == 1 and numel > 0 else 1.0


# name -> True when the functional API takes the one-pass path for reduced losses.
ONE_PASS = {}


def call(name, input, target, weight, params, reduction):
    """The functional entry: one-pass or recompute, as measured best for the op."""
    ns = torch.ops.lossext
    # The one-pass buffer holds dloss/dinput (1/numel included for 'mean') in the input dtype,
    # which underflows in float16/bfloat16 before a loss scale multiplies it: half precision
    # recomputes in float32 inside the backward kernel instead.
    if (ONE_PASS[name] and reduction != 0 and input.dtype in (torch.float32, torch.float64)
            and input.requires_grad and torch.is_grad_enabled()):
        return getattr(ns, name + "_with_grad")(input, target, weight, *params, reduction)[0]
    return getattr(ns, name)(input, target, weight, *params, reduction)


def register(name, *, target_grad_is_neg_input_grad, one_pass):
    ONE_PASS[name] = one_pass
    ns = torch.ops.lossext
    fwd = getattr(ns, name).default
    bwd = getattr(ns, f"{name}_backward").default
    tbwd = None if target_grad_is_neg_input_grad else getattr(ns, f"{name}_target_backward").default

    def loss_shape(input, reduction):
        return input.new_empty(()) if reduction != 0 else torch.empty_like(input, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"lossext::{name}")
    def _(input, target, weight, *rest):
        return loss_shape(input, rest[-1])

    @torch.library.register_fake(f"lossext::{name}_with_grad")
    def _(input, target, weight, *rest):
        return loss_shape(input, rest[-1]), torch.empty_like(input, memory_format=torch.contiguous_format)

    def grad_like(grad_output, input, *rest):
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    torch.library.register_fake(f"lossext::{name}_backward")(grad_like)
    if tbwd is not None:
        torch.library.register_fake(f"lossext::{name}_target_backward")(grad_like)

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

    # ---- recompute path -------------------------------------------------------------
    def setup_fwd(ctx, inputs, output):
        input, target, weight, *params = inputs
        ctx.save_for_backward(input, target, weight)
        ctx.params = params

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

    torch.library.register_autograd(f"lossext::{name}", backward_fwd, setup_context=setup_fwd)

    # ---- one-pass path --------------------------------------------------------------
    def setup_fwd_grad(ctx, inputs, output):
        input, target, weight, *params = inputs
        ctx.params = params
        # dloss/dinput is an auxiliary output: not differentiable. Without materialize_grads off,
        # autograd would zero-fill an input-sized gradient for it in every backward.
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1], input, target, weight)

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
            gi = grad * g
        if ctx.needs_input_grad[1]:
            gt = target_grad(grad, input, target, weight, p, gi)
        if ctx.needs_input_grad[2]:
            gw = weight_grad(grad, input, target, p)
        return (gi, gt, gw) + (None,) * len(p)

    torch.library.register_autograd(f"lossext::{name}_with_grad", backward_fwd_grad,
                                    setup_context=setup_fwd_grad)

    # ---- double backward: raise clearly ---------------------------------------------
    refuse_double_backward(name, [f"{name}_backward"] + ([f"{name}_target_backward"] if tbwd is not None else []))
