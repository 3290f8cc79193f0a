"""Fake kernels and autograd of the metric-learning ops (csrc/metric).

Ops (reduction: 0 none, 1 mean (divides by N), 2 sum):
  center_loss(features, target, centers, reduction) -> loss
  center_loss_backward(grad_output, features, target, centers, reduction) -> (grad_features, grad_centers)
  triplet_center_loss(features, target, centers, margin, distance, negatives, reduction) -> (loss, negative)
  triplet_center_loss_backward(grad_output, features, target, centers, negative, margin, distance,
                               negatives, reduction) -> (grad_features, grad_centers)
distance: 0 squared_euclidean, 1 euclidean; negatives: 0 all, 1 batch. negative [N] int64 is each
row's hardest negative class (-1: none), saved for the backward, not differentiable.
Forward mode: one backward pass contracted with the tangents; a centers tangent at
reduction='none' raises NotImplementedError (it needs per-row center gradients).
Double backward raises NotImplementedError. Autocast: both run in float32 (as F.mse_loss).
"""
import torch

from .._core import amp
from .._core import library  # noqa: F401  (loads the kernels)
from .._core.autograd import call as call_op, refuse_double_backward, register as register_autograd
from .._core.fake import check_same_device


def _loss_like(f, reduction):
    return f.new_empty((f.shape[0],) if reduction == 0 else ())


@torch.library.register_fake("lossext::center_loss")
def _(f, target, c, reduction):
    check_same_device("center_loss", "features", f, ("target", target), ("centers", c))
    return _loss_like(f, reduction)


@torch.library.register_fake("lossext::center_loss_backward")
def _(grad, f, target, c, reduction):
    check_same_device("center_loss_backward", "features", f, ("target", target), ("centers", c), ("grad_output", grad))
    return f.new_empty(f.shape), c.new_empty(c.shape)


@torch.library.register_fake("lossext::triplet_center_loss")
def _(f, target, c, margin, distance, negatives, reduction):
    check_same_device("triplet_center_loss", "features", f, ("target", target), ("centers", c))
    return _loss_like(f, reduction), f.new_empty((f.shape[0],), dtype=torch.int64)


@torch.library.register_fake("lossext::triplet_center_loss_backward")
def _(grad, f, target, c, neg, margin, distance, negatives, reduction):
    check_same_device("triplet_center_loss_backward", "features", f, ("target", target), ("centers", c),
                      ("grad_output", grad), ("negative", neg))
    return f.new_empty(f.shape), c.new_empty(c.shape)


def _dot(a, t, reduction):
    if t is None:
        return None
    p = a * t
    return p.reshape(p.shape[0], -1).sum(1) if reduction == 0 else p.sum()


def _jvp_total(name, f, t_f, t_c, reduction, gf, gc):
    if reduction == 0 and t_c is not None:
        raise NotImplementedError(f"lossext.{name}: forward-mode AD at reduction='none' with respect to the centers "
                                  "is not implemented (it needs a per-row center gradient)")
    terms = [t for t in (_dot(gf, t_f, reduction), _dot(gc, t_c, reduction)) if t is not None]
    if not terms:
        return torch.zeros_like(_unit(f, reduction))
    return sum(terms[1:], terms[0])


def _unit(f, reduction):
    return f.new_ones((f.shape[0],) if reduction == 0 else ())


# ---- center_loss --------------------------------------------------------------------------------

def _center_setup(ctx, inputs, output):
    ctx.reduction = inputs[3]
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:3])
    ctx.save_for_forward(*inputs[:3])


def _center_backward(ctx, grad):
    f, target, c = ctx.saved_tensors
    if grad is None:
        return None, None, None, None
    gf, gc = call_op("center_loss_backward", grad, f, target, c, ctx.reduction)
    need = ctx.needs_input_grad
    return (gf if need[0] else None), None, (gc if need[2] else None), None


def _center_jvp(ctx, t_f, _t_target, t_c, _t_red):
    f, target, c = ctx.saved_tensors
    gf, gc = call_op("center_loss_backward", _unit(f, ctx.reduction), f, target, c, ctx.reduction)
    return _jvp_total("center_loss", f, t_f, t_c, ctx.reduction, gf, gc)


register_autograd("center_loss", setup_context=_center_setup, backward=_center_backward, jvp=_center_jvp)
amp.register("center_loss", "fp32")


# ---- triplet_center_loss ------------------------------------------------------------------------

def _tc_setup(ctx, inputs, output):
    ctx.params = inputs[3:]
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:3], output[1])
    ctx.save_for_forward(*inputs[:3], output[1])


def _tc_backward(ctx, grad, _grad_neg):
    f, target, c, neg = ctx.saved_tensors
    if grad is None:
        return (None,) * 7
    gf, gc = call_op("triplet_center_loss_backward", grad, f, target, c, neg, *ctx.params)
    need = ctx.needs_input_grad
    return ((gf if need[0] else None), None, (gc if need[2] else None)) + (None,) * 4


def _tc_jvp(ctx, t_f, _t_target, t_c, *_t_params):
    f, target, c, neg = ctx.saved_tensors
    red = ctx.params[-1]
    gf, gc = call_op("triplet_center_loss_backward", _unit(f, red), f, target, c, neg, *ctx.params)
    return _jvp_total("triplet_center_loss", f, t_f, t_c, red, gf, gc), None


register_autograd("triplet_center_loss", setup_context=_tc_setup, backward=_tc_backward, jvp=_tc_jvp)
amp.register("triplet_center_loss", "fp32")

refuse_double_backward("center_loss", ["center_loss_backward"])
refuse_double_backward("triplet_center_loss", ["triplet_center_loss_backward"])
