"""Fake kernels and autograd of the age-estimation ops (csrc/age).

Ops (reduction: 0 none, 1 mean, 2 sum):
  mean_variance_loss(logits, target, lambda_mean, lambda_var, start_age, include_softmax,
                     reduction) -> (loss, softmax, mean, variance, stats)
  mean_variance_loss_backward(grad_loss?, grad_softmax?, grad_mean?, grad_variance?, logits,
                     target, stats, ...) -> (grad_logits, grad_target)
  age_from_logits(logits, start_age) -> (mean, variance, stats)
  age_from_logits_backward(grad_mean?, grad_variance?, logits, stats, start_age) -> grad_logits

target: int64 or float64 ages; grad_target [N] float64 for float64 ages, else empty. stats
[N, 3] float64 (lse, m - start_age, v per row) is saved for the backward and is not
differentiable. The one-pass op mean_variance_loss_with_grad(...same...) -> (loss, softmax,
mean, variance, stats, grad_logits) also writes grad_logits, the total's gradient for a unit
upstream gradient (1/N included for 'mean'), in the same pass over each row: its backward is
then one multiply (lossext/_core/pointwise.py has the same two paths). The functional API takes
it where `one_pass_applies` says; the choice was measured (benchmarks/RESULTS.md, age suite).
Forward-mode AD raises NotImplementedError; double backward is refused.
Autocast: both run in float32 (as F.cross_entropy).
"""
import torch

from .._core import amp
from .._core import library  # noqa: F401  (loads the kernels)
from .._core.autograd import call as call_op, refuse_double_backward, register as register_autograd, scale_saved
from .._core.fake import check_same_device


def _out(x, n, per_row):
    return x.new_empty((n,) if per_row else ())


def _mv_fake(logits, target, reduction, name):
    check_same_device(name, "logits", logits, ("target", target))
    n = logits.shape[0]
    per_row = reduction == 0
    return (_out(logits, n, per_row), _out(logits, n, per_row), _out(logits, n, per_row), _out(logits, n, per_row),
            logits.new_empty((n, 3), dtype=torch.float64))


@torch.library.register_fake("lossext::mean_variance_loss")
def _(logits, target, lambda_mean, lambda_var, start_age, include_softmax, reduction):
    return _mv_fake(logits, target, reduction, "mean_variance_loss")


@torch.library.register_fake("lossext::mean_variance_loss_with_grad")
def _(logits, target, lambda_mean, lambda_var, start_age, include_softmax, reduction):
    return _mv_fake(logits, target, reduction, "mean_variance_loss_with_grad") + (logits.new_empty(logits.shape),)


def one_pass_applies(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Where the functional API takes mean_variance_loss_with_grad (scriptable, so that scripted
    and eager calls agree): logits that require grad, in float32 or float64 (a float16/bfloat16
    one-pass buffer would underflow before a loss scale multiplies it), and a target that does
    not (dL/dy comes from the recompute op)."""
    return ((logits.dtype == torch.float32 or logits.dtype == torch.float64) and logits.requires_grad
            and not target.requires_grad and torch.is_grad_enabled())


@torch.library.register_fake("lossext::mean_variance_loss_backward")
def _(g_loss, g_soft, g_mean, g_var, logits, target, stats, *params):
    check_same_device("mean_variance_loss_backward", "logits", logits, ("target", target), ("stats", stats),
                      ("grad_loss", g_loss), ("grad_softmax", g_soft), ("grad_mean", g_mean),
                      ("grad_variance", g_var))
    n = logits.shape[0] if target.dtype == torch.float64 else 0
    return logits.new_empty(logits.shape), logits.new_empty((n,), dtype=torch.float64)


@torch.library.register_fake("lossext::age_from_logits")
def _(logits, start_age):
    n = logits.shape[0]
    return logits.new_empty((n,)), logits.new_empty((n,)), logits.new_empty((n, 3), dtype=torch.float64)


@torch.library.register_fake("lossext::age_from_logits_backward")
def _(g_mean, g_var, logits, stats, start_age):
    check_same_device("age_from_logits_backward", "logits", logits, ("stats", stats), ("grad_mean", g_mean),
                      ("grad_variance", g_var))
    return logits.new_empty(logits.shape)


def _mv_setup(ctx, inputs, output):
    ctx.params = inputs[2:]
    ctx.mark_non_differentiable(output[4])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inputs[0], inputs[1], output[4])


def _recompute(ctx, logits, target, stats, g_loss, g_soft, g_mean, g_var):
    """The inputs' gradients from mean_variance_loss_backward over the saved stats."""
    g, gt = call_op("mean_variance_loss_backward", g_loss, g_soft, g_mean, g_var, logits, target, stats, *ctx.params)
    need = ctx.needs_input_grad
    gt = gt if need[1] and target.dtype == torch.float64 else None
    return (g if need[0] else None, gt) + (None,) * len(ctx.params)


def _mv_backward(ctx, g_loss, g_soft, g_mean, g_var, _g_stats):
    logits, target, stats = ctx.saved_tensors
    if g_loss is None and g_soft is None and g_mean is None and g_var is None:
        return (None,) * (2 + len(ctx.params))
    return _recompute(ctx, logits, target, stats, g_loss, g_soft, g_mean, g_var)


def _mv_one_pass_setup(ctx, inputs, output):
    ctx.params = inputs[2:]
    ctx.mark_non_differentiable(output[4], output[5])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inputs[0], inputs[1], output[4], output[5])


def _mv_one_pass_backward(ctx, g_loss, g_soft, g_mean, g_var, _g_stats, _g_grad):
    logits, target, stats, grad = ctx.saved_tensors
    none = (None,) * (2 + len(ctx.params))
    if g_loss is None and g_soft is None and g_mean is None and g_var is None:
        return none
    if g_soft is None and g_mean is None and g_var is None and not ctx.needs_input_grad[1] \
            and not torch.is_grad_enabled():
        # only the total: its saved gradient times the upstream one (per row for 'none')
        return (scale_saved(g_loss, grad),) + none[1:]  # the buffer itself for grad_output = 1
    # the terms' gradients, dL/dy or create_graph (whose double backward must raise): recompute
    return _recompute(ctx, logits, target, stats, g_loss, g_soft, g_mean, g_var)


def _age_setup(ctx, inputs, output):
    ctx.start_age = inputs[1]
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inputs[0], output[2])


def _age_backward(ctx, g_mean, g_var, _g_stats):
    logits, stats = ctx.saved_tensors
    if g_mean is None and g_var is None:
        return None, None
    return call_op("age_from_logits_backward", g_mean, g_var, logits, stats, ctx.start_age), None


register_autograd("mean_variance_loss", setup_context=_mv_setup, backward=_mv_backward,
                  what="lossext.mean_variance_loss")
register_autograd("mean_variance_loss_with_grad", setup_context=_mv_one_pass_setup, backward=_mv_one_pass_backward,
                  what="lossext.mean_variance_loss")
register_autograd("age_from_logits", setup_context=_age_setup, backward=_age_backward, what="lossext.age_from_logits")
amp.register("mean_variance_loss", "fp32")
amp.register("mean_variance_loss_with_grad", "fp32")
amp.register("age_from_logits", "fp32")
refuse_double_backward("mean_variance_loss", ["mean_variance_loss_backward"])
refuse_double_backward("mean_variance_loss_with_grad", ["mean_variance_loss_backward"])
refuse_double_backward("age_from_logits", ["age_from_logits_backward"])
