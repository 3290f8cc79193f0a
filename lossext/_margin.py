"""Python side of the margin-softmax ops (csrc/margin): fake kernels and autograd.

Ops (reduction: 0 none, 1 mean, 2 sum):
  margin_cross_entropy(cos_logits, target, weight?, row_scale?, scale, m1, m2, m3, lambda_,
                       easy_margin, label_smoothing, ignore_index, reduction) -> (loss, lse)
  margin_cross_entropy_backward(grad_output, cos_logits, target, weight?, row_scale?, lse, ...)
      -> (grad_cos_logits, grad_row_scale)   (grad_row_scale is empty without row_scale)
  fused_linear_margin_cross_entropy(input, weight, target, bias?, scale, m1, m2, m3, lambda_,
                       easy_margin, normalize, label_smoothing, ignore_index, reduction,
                       chunk_size) -> (loss, lse)
  fused_linear_margin_cross_entropy_backward(grad_output, input, weight, target, bias?, lse, ...)
      -> (grad_input, grad_weight, grad_bias)  (grad_bias is empty without bias)

lse [N] (float32, or float64 for float64 inputs) is saved for the backward and is not
differentiable. Class weights take no gradient (as in torch.nn.functional.cross_entropy).
Double backward is not supported: it raises NotImplementedError.
"""
import torch

from . import _C  # noqa: F401  (loads the kernels)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _loss_like(x, n, reduction):
    return x.new_empty((n,)) if reduction == 0 else x.new_empty(())


@torch.library.register_fake("lossext::margin_cross_entropy")
def _(cos, target, weight, row_scale, *params):
    n = cos.shape[0]
    return _loss_like(cos, n, params[-1]), cos.new_empty((n,), dtype=_acc(cos.dtype))


@torch.library.register_fake("lossext::margin_cross_entropy_backward")
def _(grad, cos, target, weight, row_scale, lse, *params):
    n = cos.shape[0]
    return (cos.new_empty(cos.shape), cos.new_empty((n if row_scale is not None else 0,)))


@torch.library.register_fake("lossext::fused_linear_margin_cross_entropy")
def _(x, w, target, bias, *params):
    n = x.shape[0]
    return _loss_like(x, n, params[-2]), x.new_empty((n,), dtype=_acc(x.dtype))


@torch.library.register_fake("lossext::fused_linear_margin_cross_entropy_backward")
def _(grad, x, w, target, bias, lse, *params):
    return (x.new_empty(x.shape), w.new_empty(w.shape),
            x.new_empty((w.shape[0] if bias is not None else 0,)))


def _no_weight_grad(ctx, index, name):
    if ctx.needs_input_grad[index]:
        raise NotImplementedError(
            f"lossext.{name}: the class weight takes no gradient (as in torch.nn.functional."
            "cross_entropy); pass weight.detach()")


# ---- margin_cross_entropy ---------------------------------------------------------------

def _ce_setup(ctx, inputs, output):
    cos, target, weight, row_scale, *params = inputs
    ctx.params = params
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(cos, target, weight, row_scale, output[1])


def _ce_backward(ctx, grad, _grad_lse):
    cos, target, weight, row_scale, lse = ctx.saved_tensors
    n_params = len(ctx.params)
    if grad is None:
        return (None,) * (4 + n_params)
    _no_weight_grad(ctx, 2, "margin_cross_entropy")
    g_cos, g_rs = torch.ops.lossext.margin_cross_entropy_backward(
        grad, cos, target, weight, row_scale, lse, *ctx.params)
    return (g_cos if ctx.needs_input_grad[0] else None, None, None,
            g_rs if ctx.needs_input_grad[3] else None) + (None,) * n_params


torch.library.register_autograd("lossext::margin_cross_entropy", _ce_backward, setup_context=_ce_setup)


# ---- fused_linear_margin_cross_entropy ----------------------------------------------------

def _fused_setup(ctx, inputs, output):
    x, w, target, bias, *params = inputs
    ctx.params = params
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, w, target, bias, output[1])


def _fused_backward(ctx, grad, _grad_lse):
    x, w, target, bias, lse = ctx.saved_tensors
    n_params = len(ctx.params)
    if grad is None:
        return (None,) * (4 + n_params)
    gx, gw, gb = torch.ops.lossext.fused_linear_margin_cross_entropy_backward(
        grad, x, w, target, bias, lse, *ctx.params)
    need = ctx.needs_input_grad
    return (gx if need[0] else None, gw if need[1] else None, None,
            gb if need[3] else None) + (None,) * n_params


torch.library.register_autograd("lossext::fused_linear_margin_cross_entropy", _fused_backward,
                                setup_context=_fused_setup)


def _no_double_backward(name):
    def backward(ctx, *grads):
        raise NotImplementedError(f"lossext.{name}: double backward is not supported")
    return backward


def _no_setup(ctx, inputs, output):
    pass


for _name in ("margin_cross_entropy", "fused_linear_margin_cross_entropy"):
    torch.library.register_autograd(f"lossext::{_name}_backward", _no_double_backward(_name),
                                    setup_context=_no_setup)
