"""Fake kernels and autograd of the margin-softmax ops (csrc/margin).

Ops (reduction: 0 none, 1 mean, 2 sum):
  margin_cross_entropy(cos_logits, target, weight?, row_scale?, scale, m1, m2, m3, lambda_?,
                       easy_margin, label_smoothing, ignore_index, reduction) -> (loss, lse)
  margin_cross_entropy_backward(grad_output, cos_logits, target, weight?, row_scale?, lse, ...)
      -> (grad_cos_logits, grad_row_scale)   (grad_row_scale is empty without row_scale)
  fused_linear_margin_cross_entropy(input, weight, target, bias?, scale, m1, m2, m3, lambda_?,
                       easy_margin, normalize, label_smoothing, ignore_index, reduction,
                       chunk_size) -> (loss, lse)
  fused_linear_margin_cross_entropy_backward(grad_output, input, weight, target, bias?, lse, ...)
      -> (grad_input, grad_weight, grad_bias)  (grad_bias is empty without bias)

lambda_ is a Tensor? (SphereFace's annealing changes every step; a float argument would be a
compile-time constant under torch.compile): None means 0, else a 0-dim float64 tensor on the
logits' device (lambda_arg below makes it from a Python number).

lse [N] (float64 for every input dtype) is saved for the backward and is not
differentiable. A class weight that requires grad gets its gradient from the PyTorch composite
(_class_weight_grad: correct, not fused).
Double backward is not supported: it raises NotImplementedError.
"""
import torch

from .._core import library  # noqa: F401  (loads the kernels)
from .._core.autograd import refuse_double_backward


def lambda_arg(lambda_, like):
    """The ops' lambda_ argument: None for 0, a 0-dim float64 tensor on like's device otherwise
    (a tensor is passed on as it is)."""
    if isinstance(lambda_, torch.Tensor):
        return lambda_
    if lambda_ == 0.0:
        return None
    return torch.full((), float(lambda_), dtype=torch.float64, device=like.device)


def _loss_like(x, n, reduction):
    return x.new_empty((n,)) if reduction == 0 else x.new_empty(())


@torch.library.register_fake("lossext::margin_cross_entropy")
def _(cos, target, weight, row_scale, *params):
    n = cos.shape[0]
    return _loss_like(cos, n, params[-1]), cos.new_empty((n,), dtype=torch.float64)


@torch.library.register_fake("lossext::margin_cross_entropy_backward")
def _(grad, cos, target, weight, row_scale, lse, *params):
    n = cos.shape[0]
    return (cos.new_empty(cos.shape), cos.new_empty((n if row_scale is not None else 0,)))


@torch.library.register_fake("lossext::fused_linear_margin_cross_entropy")
def _(x, w, target, bias, *params):
    n = x.shape[0]
    return _loss_like(x, n, params[-2]), x.new_empty((n,), dtype=torch.float64)


@torch.library.register_fake("lossext::fused_linear_margin_cross_entropy_backward")
def _(grad, x, w, target, bias, lse, *params):
    return (x.new_empty(x.shape), w.new_empty(w.shape),
            x.new_empty((w.shape[0] if bias is not None else 0,)))


def _class_weight_grad(grad, cos, target, weight, row_scale, params):
    """d loss / d class weight, for the rare caller whose class weights require grad (torch's
    cross_entropy refuses this). Computed by autograd through the pure-PyTorch composite
    (lossext.margin.reference), so it materializes [N, C] intermediates: not a fused path."""
    from . import reference
    scale, m1, m2, m3, lambda_, easy, ls, ii, red = params
    lambda_ = 0.0 if lambda_ is None else lambda_
    with torch.enable_grad():
        w = weight.detach().requires_grad_(True)
        loss = reference.margin_cross_entropy(
            cos.detach(), target, scale, m1, m2, m3, ls, w, ii, ("none", "mean", "sum")[red],
            easy_margin=easy, lambda_=lambda_, feature_norm=None if row_scale is None else row_scale.detach())
        (g,) = torch.autograd.grad(loss, w, grad)
    return g


# ---- margin_cross_entropy ---------------------------------------------------------------

def _setup(ctx, inputs, output):
    """Both forwards: four tensor inputs, then the parameters; output = (loss, lse)."""
    ctx.params = inputs[4:]
    ctx.mark_non_differentiable(output[1])  # lse: an auxiliary output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:4], output[1])


def _ce_backward(ctx, grad, _grad_lse):
    cos, target, weight, row_scale, lse = ctx.saved_tensors
    n_params = len(ctx.params)
    if grad is None:
        return (None,) * (4 + n_params)
    need = ctx.needs_input_grad
    g_cos = g_rs = g_w = None
    if need[0] or need[3]:
        g_cos, g_rs = torch.ops.lossext.margin_cross_entropy_backward(
            grad, cos, target, weight, row_scale, lse, *ctx.params)
    if need[2]:
        g_w = _class_weight_grad(grad, cos, target, weight, row_scale, ctx.params)
    return (g_cos if need[0] else None, None, g_w, g_rs if need[3] else None) + (None,) * n_params


torch.library.register_autograd("lossext::margin_cross_entropy", _ce_backward, setup_context=_setup)


# ---- fused_linear_margin_cross_entropy ----------------------------------------------------

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
                                setup_context=_setup)


for _name in ("margin_cross_entropy", "fused_linear_margin_cross_entropy"):
    refuse_double_backward(_name, [f"{_name}_backward"])
