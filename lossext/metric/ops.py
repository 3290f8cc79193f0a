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

Pair-based ops (csrc/metric/pair_ops.h; schemas in metric_schema.cpp):
  triplet_margin_loss(embeddings, labels, ref_embeddings, ref_labels, exclude_self, margin, mining,
                      distance, soft_margin, reduction) -> (loss, hard [N, 2] int64, counts [4] int64)
  triplet_margin_loss_backward(grad_output, embeddings, labels, ref_embeddings, ref_labels, hard, counts,
                               exclude_self, margin, mining, distance, soft_margin, reduction, ref_grad)
                               -> (grad_embeddings, grad_ref_embeddings)
  contrastive_loss(embeddings, labels, ref_embeddings, ref_labels, exclude_self, pos_margin, neg_margin,
                   distance, reduction) -> (loss, counts)
  contrastive_loss_backward(grad_output, ..., counts, exclude_self, pos_margin, neg_margin, distance,
                            reduction, ref_grad) -> (grad_embeddings, grad_ref_embeddings)
reduction: 0 none (per-anchor sums), 1 mean over the valid terms, 2 sum, 3 mean over the terms
with a positive loss. ref_grad False: grad_ref_embeddings is [0, D]. The functions pass the batch
as its own reference (the same tensor twice, exclude_self True): autograd adds the two gradients.
Forward mode: one backward pass contracted with the tangents; at reduction 'none' only for a
tangent of the embeddings alone when the reference is another tensor (otherwise
NotImplementedError: it needs per-anchor reference gradients). Autocast: float32.
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

# ---- pair-based losses -----------------------------------------------------------------------------

def _pair_loss_like(x, reduction):
    return x.new_empty((x.shape[0],) if reduction == 0 else ())


@torch.library.register_fake("lossext::triplet_margin_loss")
def _(x, y, r, ry, exclude_self, margin, mining, distance, soft, reduction):
    check_same_device("triplet_margin_loss", "embeddings", x, ("labels", y), ("ref_embeddings", r), ("ref_labels", ry))
    return (_pair_loss_like(x, reduction), x.new_empty((x.shape[0], 2), dtype=torch.int64),
            x.new_empty((4,), dtype=torch.int64))


@torch.library.register_fake("lossext::contrastive_loss")
def _(x, y, r, ry, exclude_self, pos_margin, neg_margin, distance, reduction):
    check_same_device("contrastive_loss", "embeddings", x, ("labels", y), ("ref_embeddings", r), ("ref_labels", ry))
    return _pair_loss_like(x, reduction), x.new_empty((4,), dtype=torch.int64)


def _pair_grads_like(x, r, ref_grad):
    return x.new_empty(x.shape), r.new_empty((r.shape[0] if ref_grad else 0, r.shape[1]))


@torch.library.register_fake("lossext::triplet_margin_loss_backward")
def _(grad, x, y, r, ry, hard, counts, exclude_self, margin, mining, distance, soft, reduction, ref_grad):
    check_same_device("triplet_margin_loss_backward", "embeddings", x, ("labels", y), ("ref_embeddings", r),
                      ("ref_labels", ry), ("hard", hard), ("counts", counts), ("grad_output", grad))
    return _pair_grads_like(x, r, ref_grad)


@torch.library.register_fake("lossext::contrastive_loss_backward")
def _(grad, x, y, r, ry, counts, exclude_self, pos_margin, neg_margin, distance, reduction, ref_grad):
    check_same_device("contrastive_loss_backward", "embeddings", x, ("labels", y), ("ref_embeddings", r),
                      ("ref_labels", ry), ("counts", counts), ("grad_output", grad))
    return _pair_grads_like(x, r, ref_grad)


def _pair_setup(saved_outputs):
    def setup(ctx, inputs, output):
        ctx.flags = inputs[4:]
        saved = [output[k] for k in saved_outputs]
        for t in saved:
            ctx.mark_non_differentiable(t)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs[:4], *saved)
        ctx.save_for_forward(*inputs[:4], *saved)
    return setup


def _pair_backward_fn(backward_op, n_inputs):
    def backward(ctx, grad, *_rest):
        x, y, r, ry, *saved = ctx.saved_tensors
        if grad is None:
            return (None,) * n_inputs
        need = ctx.needs_input_grad
        ge, gr = call_op(backward_op, grad, x, y, r, ry, *saved, *ctx.flags, bool(need[2]))
        return ((ge if need[0] else None), None, (gr if need[2] else None)) + (None,) * (n_inputs - 3)

    def jvp(ctx, t_x, _t_y, t_r, *_t_params):
        x, y, r, ry, *saved = ctx.saved_tensors
        red = ctx.flags[-1]
        ref_grad = t_r is not None
        if red == 0 and ref_grad:
            raise NotImplementedError(f"lossext.{backward_op[:-9]}: forward-mode AD at reduction='none' with respect "
                                      "to the reference embeddings (or the batch as its own reference) is not "
                                      "implemented (it needs per-anchor reference gradients)")
        ge, gr = call_op(backward_op, _unit(x, red), x, y, r, ry, *saved, *ctx.flags, ref_grad)
        out = _jvp_total(backward_op[:-9], x, t_x, None, red, ge, None)
        if ref_grad:
            out = out + _dot(gr, t_r, red)
        return (out,) + (None,) * len(saved)
    return backward, jvp


_tb, _tj = _pair_backward_fn("triplet_margin_loss_backward", 10)
register_autograd("triplet_margin_loss", setup_context=_pair_setup([1, 2]), backward=_tb, jvp=_tj)
amp.register("triplet_margin_loss", "fp32")
_cb, _cj = _pair_backward_fn("contrastive_loss_backward", 9)
register_autograd("contrastive_loss", setup_context=_pair_setup([1]), backward=_cb, jvp=_cj)
amp.register("contrastive_loss", "fp32")

refuse_double_backward("triplet_margin_loss", ["triplet_margin_loss_backward"])
refuse_double_backward("contrastive_loss", ["contrastive_loss_backward"])
refuse_double_backward("center_loss", ["center_loss_backward"])
refuse_double_backward("triplet_center_loss", ["triplet_center_loss_backward"])
