"""Fake kernels and autograd of the margin-softmax ops (csrc/margin).

Ops (reduction: 0 none, 1 mean, 2 sum):
  margin_cross_entropy(cos_logits, target, weight?, row_scale?, scale, m1, m2, m3, lambda_?,
                       easy_margin, label_smoothing, ignore_index, reduction) -> (loss, lse)
  margin_cross_entropy_backward(grad_output, cos_logits, target, weight?, row_scale?, lse, ...)
      -> (grad_cos_logits, grad_row_scale)   (grad_row_scale is empty without row_scale)
  margin_cross_entropy_with_grad(cos_logits, target, weight?, row_scale?, ...)
      -> (loss, lse, grad_cos_logits, grad_row_scale)   the forward, plus the backward's outputs for
      grad_output = 1 from the same pass over the logits (issue #15: one read of [N, C] instead
      of two); the functional API takes it where use_one_pass says
  fused_linear_margin_cross_entropy(input, weight, target, bias?, scale, m1, m2, m3, lambda_?,
                       easy_margin, normalize, label_smoothing, ignore_index, reduction,
                       chunk_size) -> (loss, lse)
  fused_linear_margin_cross_entropy_backward(grad_output, input, weight, target, bias?, lse, ...)
      -> (grad_input, grad_weight, grad_bias)  (grad_bias is empty without bias)
  fused_linear_margin_shard_forward(input, weight, target, scale, m1, m2, m3, lambda_,
                       easy_margin, chunk_size) -> (row_max, row_sumexp, target_logit)
  fused_linear_margin_shard_backward(grad_rows, input, weight, target, lse, scale, m1, m2, m3,
                       lambda_, easy_margin, chunk_size) -> (grad_input, grad_weight)
      one shard of the classes of the normalized fused op, for lossext.distributed: target -1
      means "on another shard"; the forward's statistics ([N] float64 each, not differentiable)
      are combined across the shards by the caller, who passes the global lse and
      grad_rows = dLoss/dloss_i (float32, float64 for float64 inputs) to the backward; its
      grad_input is this shard's part of the sum over shards. A target that is neither -1 nor
      in [0, C_shard) raises on the CPU; on CUDA its row's statistics stay (-inf, 0, 0) and its
      gradient rows are NaN (lossext.distributed checks the labels before calling).

lambda_ is a Tensor? (SphereFace's annealing changes every step; a float argument would be a
compile-time constant under torch.compile): None means 0, else a 0-dim float64 tensor on the
logits' device (lossext.margin.functional.lambda_tensor makes it from a Python number).

lse [N] (float64 for every input dtype) is saved for the backward and is not
differentiable. A class weight that requires grad gets its gradient from the PyTorch composite
(_class_weight_grad: correct, not fused).
Forward mode (torch.func.jvp, forward_ad): the tangent comes from one backward kernel pass
(dL/dcos or dL/dX, dL/dW contracted with the tangents); a class weight's tangent, and the
fused op's weight/bias tangents at reduction='none', raise NotImplementedError.
Double backward is not supported: it raises NotImplementedError.
The fused op's loss is float32 for float16/bfloat16 inputs (the input's dtype for float32 and
float64), so it is never rounded to the half dtype; its backward takes grad_output in that
dtype or in the input's. lossext.margin.functional returns it in the input's dtype outside
autocast.
Autocast: margin_cross_entropy runs in float32 (as F.cross_entropy); the fused op runs its
matmuls in the autocast dtype and returns a float32 loss (as F.linear then F.cross_entropy).
"""
import torch

from .._core import amp
from .._core import library  # noqa: F401  (loads the kernels)
from .._core.autograd import call as call_op, refuse_double_backward, register as register_autograd, scale_saved
from .._core.fake import check_same_device


def _loss_like(x, n, reduction, dtype=None):
    return x.new_empty((n,) if reduction == 0 else (), dtype=dtype)


def _fused_loss_dtype(x):
    """The fused op's loss dtype: float32 for float16/bfloat16 inputs (never rounded to the half
    dtype), else the input's (csrc/margin/margin_ops.h fused_loss_type)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _ce_devices(op, cos, target, weight, row_scale, lambda_, *more):
    check_same_device(op, "cos_logits", cos, ("target", target), ("weight", weight), ("row_scale", row_scale),
                      ("lambda_", lambda_ if isinstance(lambda_, torch.Tensor) else None), *more)


def _fused_devices(op, x, w, target, bias, lambda_, *more):
    check_same_device(op, "input", x, ("weight", w), ("target", target), ("bias", bias),
                      ("lambda_", lambda_ if isinstance(lambda_, torch.Tensor) else None), *more)


@torch.library.register_fake("lossext::margin_cross_entropy")
def _(cos, target, weight, row_scale, *params):
    _ce_devices("margin_cross_entropy", cos, target, weight, row_scale, params[4])
    n = cos.shape[0]
    return _loss_like(cos, n, params[-1]), cos.new_empty((n,), dtype=torch.float64)


@torch.library.register_fake("lossext::margin_cross_entropy_backward")
def _(grad, cos, target, weight, row_scale, lse, *params):
    _ce_devices("margin_cross_entropy_backward", cos, target, weight, row_scale, params[4],
                ("grad_output", grad), ("lse", lse))
    n = cos.shape[0]
    return (cos.new_empty(cos.shape), cos.new_empty((n if row_scale is not None else 0,)))


@torch.library.register_fake("lossext::margin_cross_entropy_with_grad")
def _(cos, target, weight, row_scale, *params):
    _ce_devices("margin_cross_entropy_with_grad", cos, target, weight, row_scale, params[4])
    n = cos.shape[0]
    return (_loss_like(cos, n, params[-1]), cos.new_empty((n,), dtype=torch.float64), cos.new_empty(cos.shape),
            cos.new_empty((n if row_scale is not None else 0,)))


@torch.library.register_fake("lossext::fused_linear_margin_cross_entropy")
def _(x, w, target, bias, *params):
    _fused_devices("fused_linear_margin_cross_entropy", x, w, target, bias, params[4])
    n = x.shape[0]
    return _loss_like(x, n, params[-2], _fused_loss_dtype(x)), x.new_empty((n,), dtype=torch.float64)


@torch.library.register_fake("lossext::fused_linear_margin_cross_entropy_with_grad")
def _(x, w, target, bias, *params):
    _fused_devices("fused_linear_margin_cross_entropy_with_grad", x, w, target, bias, params[4])
    n = x.shape[0]
    return (_loss_like(x, n, params[-3], _fused_loss_dtype(x)), x.new_empty((n,), dtype=torch.float64),
            x.new_empty(x.shape), w.new_empty(w.shape), x.new_empty((w.shape[0] if bias is not None else 0,)))


@torch.library.register_fake("lossext::fused_linear_margin_cross_entropy_backward")
def _(grad, x, w, target, bias, lse, *params):
    _fused_devices("fused_linear_margin_cross_entropy_backward", x, w, target, bias, params[4],
                   ("grad_output", grad), ("lse", lse))
    return (x.new_empty(x.shape), w.new_empty(w.shape),
            x.new_empty((w.shape[0] if bias is not None else 0,)))


@torch.library.register_fake("lossext::fused_linear_margin_shard_forward")
def _(x, w, target, *params):
    _fused_devices("fused_linear_margin_shard_forward", x, w, target, None, params[4])
    n = x.shape[0]
    return tuple(x.new_empty((n,), dtype=torch.float64) for _ in range(3))


@torch.library.register_fake("lossext::fused_linear_margin_shard_backward")
def _(grad_rows, x, w, target, lse, *params):
    _fused_devices("fused_linear_margin_shard_backward", x, w, target, None, params[4],
                   ("grad_rows", grad_rows), ("lse", lse))
    return x.new_empty(x.shape), w.new_empty(w.shape)


def _class_weight_grad(grad, cos, target, weight, row_scale, params):
    """d loss / d class weight, for the rare caller whose class weights require grad (torch's
    cross_entropy refuses this). Computed by autograd through the pure-PyTorch composite
    (lossext.margin.reference), so it materializes [N, C] intermediates: not a fused path.
    Labels outside [0, C) that are not ignore_index are never used as an index here either
    (on CUDA an indexing composite would trip a device-side assert): they are masked, and
    the gradient is NaN, as their rows' loss is."""
    from . import reference
    scale, m1, m2, m3, lambda_, easy, ls, ii, red = params
    lambda_ = 0.0 if lambda_ is None else lambda_
    c = cos.shape[1]
    bad = (target != ii) & ((target < 0) | (target >= c))
    safe = torch.where(bad, torch.full_like(target, ii), target)
    with torch.enable_grad():
        w = weight.detach().requires_grad_(True)
        loss = reference.margin_cross_entropy(
            cos.detach(), safe, scale, m1, m2, m3, ls, w, ii, ("none", "mean", "sum")[red],
            easy_margin=easy, lambda_=lambda_, feature_norm=None if row_scale is None else row_scale.detach())
        (g,) = torch.autograd.grad(loss, w, grad)
    return torch.where(bad.any(), torch.full_like(g, float("nan")), g)


# ---- margin_cross_entropy ---------------------------------------------------------------

def _setup(ctx, inputs, output):
    """Both forwards: four tensor inputs, then the parameters; output = (loss, lse)."""
    ctx.params = inputs[4:]
    ctx.mark_non_differentiable(output[1])  # lse: an auxiliary output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:4], output[1])
    ctx.save_for_forward(*inputs[:4], output[1])


def _unit_grad(like, n, reduction, dtype=None):
    """grad_output of ones: per row at reduction='none' (each row's loss depends on its row only)."""
    return like.new_ones((n,) if reduction == 0 else (), dtype=dtype)


def _dot(a, t, reduction):
    """Contract a gradient with a tangent: per row at reduction='none', else in full."""
    if t is None:
        return None
    p = a * t
    return p.reshape(p.shape[0], -1).sum(1) if reduction == 0 else p.sum()


def _add(*terms):
    terms = [t for t in terms if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


def _ce_backward(ctx, grad, _grad_lse):
    cos, target, weight, row_scale, lse = ctx.saved_tensors
    n_params = len(ctx.params)
    if grad is None:
        return (None,) * (4 + n_params)
    need = ctx.needs_input_grad
    g_cos = g_rs = g_w = None
    if need[0] or need[3]:
        g_cos, g_rs = call_op("margin_cross_entropy_backward", grad, cos, target, weight, row_scale, lse, *ctx.params)
    if need[2]:
        g_w = _class_weight_grad(grad, cos, target, weight, row_scale, ctx.params)
    return (g_cos if need[0] else None, None, g_w, g_rs if need[3] else None) + (None,) * n_params


def _ce_jvp(ctx, t_cos, _t_target, t_weight, t_rs, *_t_params):
    cos, target, weight, row_scale, lse = ctx.saved_tensors
    if t_weight is not None:
        raise NotImplementedError("lossext.margin_cross_entropy: forward-mode AD with respect to the class "
                                  "weight is not implemented")
    red = ctx.params[-1]
    g_cos, g_rs = call_op("margin_cross_entropy_backward", _unit_grad(cos, cos.shape[0], red), cos, target,
                          weight, row_scale, lse, *ctx.params)
    t = _add(_dot(g_cos, t_cos, red), _dot(g_rs, t_rs, red) if row_scale is not None else None)
    return (t if t is not None else torch.zeros_like(_unit_grad(cos, cos.shape[0], red))), None


register_autograd("margin_cross_entropy", setup_context=_setup, backward=_ce_backward, jvp=_ce_jvp)
amp.register("margin_cross_entropy", "fp32")


# ---- margin_cross_entropy_with_grad (one pass) ---------------------------------------------

def _setup_with_grad(ctx, inputs, output):
    """output = (loss, lse, dloss/dcos, dloss/drow_scale), the last three not differentiable."""
    ctx.params = inputs[4:]
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:4], output[1], output[2], output[3])
    ctx.save_for_forward(*inputs[:4], output[1])


def _ce_backward_with_grad(ctx, grad, *_aux):
    """grad_output times the forward's dloss/dcos (scale_saved: for grad_output = 1 the buffer
    itself; another grad_output multiplies out of place, the bytes the two-pass backward moves
    without its exps). create_graph=True takes the backward kernel, whose double backward raises."""
    cos, target, weight, row_scale, lse, g_cos, g_rs = ctx.saved_tensors
    n_params = len(ctx.params)
    if grad is None:
        return (None,) * (4 + n_params)
    need = ctx.needs_input_grad
    gc = gr = gw = None
    if (need[0] or need[3]) and torch.is_grad_enabled():
        gc, gr = call_op("margin_cross_entropy_backward", grad, cos, target, weight, row_scale, lse, *ctx.params)
    elif need[0] or need[3]:
        gc = scale_saved(grad, g_cos) if need[0] else None
        gr = scale_saved(grad, g_rs) if need[3] else None
    if need[2]:
        gw = _class_weight_grad(grad, cos, target, weight, row_scale, ctx.params)
    return (gc if need[0] else None, None, gw, gr if need[3] else None) + (None,) * n_params


def _ce_jvp_with_grad(ctx, *tangents):
    return (_ce_jvp(ctx, *tangents)[0], None, None, None)


register_autograd("margin_cross_entropy_with_grad", setup_context=_setup_with_grad,
                  backward=_ce_backward_with_grad, jvp=_ce_jvp_with_grad)
amp.register("margin_cross_entropy_with_grad", "fp32")


def use_one_pass(cos: torch.Tensor, reduction: int) -> bool:
    """Where lossext.margin.functional takes margin_cross_entropy_with_grad (scriptable): a reduced
    float32/float64 loss on the CPU whose cosines require grad, with grad mode on. Measured in
    benchmarks/RESULTS.md (margin section); on CUDA the op runs the two kernels in turn (no
    one-pass kernel there yet), and half precision's buffer would round before grad_output
    scales it (the element-wise family's rule: lossext/_core/pointwise.py)."""
    return (reduction != 0 and not cos.is_cuda and (cos.dtype == torch.float32 or cos.dtype == torch.float64)
            and cos.requires_grad and torch.is_grad_enabled())


# ---- fused_linear_margin_cross_entropy ----------------------------------------------------

def _fused_backward(ctx, grad, _grad_lse):
    x, w, target, bias, lse = ctx.saved_tensors
    n_params = len(ctx.params)
    if grad is None:
        return (None,) * (4 + n_params)
    gx, gw, gb = call_op("fused_linear_margin_cross_entropy_backward", grad, x, w, target, bias, lse, *ctx.params)
    need = ctx.needs_input_grad
    return (gx if need[0] else None, gw if need[1] else None, None,
            gb if need[3] else None) + (None,) * n_params


def _fused_jvp(ctx, t_x, t_w, _t_target, t_bias, *_t_params):
    x, w, target, bias, lse = ctx.saved_tensors
    red = ctx.params[-2]  # chunk_size is last
    if red == 0 and (t_w is not None or t_bias is not None):
        raise NotImplementedError(
            "lossext.fused_linear_margin_cross_entropy: forward-mode AD at reduction='none' with respect to "
            "the class weights or bias is not implemented (it needs a per-row weight gradient)")
    ones = _unit_grad(x, x.shape[0], red, _fused_loss_dtype(x))  # the loss's dtype
    gx, gw, gb = call_op("fused_linear_margin_cross_entropy_backward", ones, x, w, target, bias, lse, *ctx.params)
    t = _add(_dot(gx, t_x, red), _dot(gw, t_w, red), _dot(gb, t_bias, red) if bias is not None else None)
    return (t.to(ones.dtype) if t is not None else torch.zeros_like(ones)), None


register_autograd("fused_linear_margin_cross_entropy", setup_context=_setup, backward=_fused_backward, jvp=_fused_jvp)
amp.register("fused_linear_margin_cross_entropy", "matmul", float_outputs=1)

for _name in ("margin_cross_entropy", "fused_linear_margin_cross_entropy"):
    refuse_double_backward(_name, [f"{_name}_backward"])


# ---- fused_linear_margin_cross_entropy_with_grad (row blocks, issue #15) ------------------

def _setup_fused_with_grad(ctx, inputs, output):
    """output = (loss, lse, dloss/dinput, dloss/dweight, dloss/dbias) for grad_output = 1; the
    last four are not differentiable. The params drop `rows` for the backward op and the jvp."""
    ctx.params = inputs[4:-1]
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:4], output[1], *output[2:])
    ctx.save_for_forward(*inputs[:4], output[1])


def _fused_backward_with_grad(ctx, grad, *_aux):
    """grad_output times the forward's gradients (scale_saved: for grad_output = 1 the buffers
    themselves). create_graph=True takes the class-chunked backward op, whose double backward
    raises."""
    x, w, target, bias, lse, gx, gw, gb = ctx.saved_tensors
    n_params = len(ctx.params)
    if grad is None:
        return (None,) * (5 + n_params)
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():
        gx, gw, gb = call_op("fused_linear_margin_cross_entropy_backward", grad, x, w, target, bias, lse, *ctx.params)
    else:
        gx = scale_saved(grad, gx) if need[0] else None
        gw = scale_saved(grad, gw) if need[1] else None
        gb = scale_saved(grad, gb) if need[3] else None
    return (gx if need[0] else None, gw if need[1] else None, None,
            gb if need[3] else None) + (None,) * (n_params + 1)


def _fused_jvp_with_grad(ctx, *tangents):
    return (_fused_jvp(ctx, *tangents[:-1])[0], None, None, None, None)


register_autograd("fused_linear_margin_cross_entropy_with_grad", setup_context=_setup_fused_with_grad,
                  backward=_fused_backward_with_grad, jvp=_fused_jvp_with_grad)
amp.register("fused_linear_margin_cross_entropy_with_grad", "matmul", float_outputs=1)

FUSED_ROW_BUDGET = 16 << 20  # logits (elements) a row block keeps: 64 MiB of float32
FUSED_MIN_ROWS = 128


def fused_rows(x: torch.Tensor, w: torch.Tensor, reduction: int, chunk: int) -> int:
    """The row-block size where lossext.margin.functional takes
    fused_linear_margin_cross_entropy_with_grad, else 0 (scriptable): a reduced float32/float64
    loss on the CPU whose input or weight requires grad, with grad mode on and the automatic
    chunk size (chunk_size=None: a chunk_size given bounds the memory, and the class-chunked op
    keeps to it), where a block of at least FUSED_MIN_ROWS rows (or the whole batch) keeps its
    logits within FUSED_ROW_BUDGET.
    Measured in benchmarks/RESULTS.md (margin section; the three bare GEMMs' floor). CUDA keeps
    the class-chunked op until a GPU run measures this one there."""
    n, c = x.shape[0], w.shape[0]
    if (reduction == 0 or chunk != 0 or x.is_cuda or not (x.dtype == torch.float32 or x.dtype == torch.float64)
            or not (x.requires_grad or w.requires_grad) or not torch.is_grad_enabled() or n == 0 or c == 0):
        return 0
    budget, min_rows = 16 << 20, 128  # TorchScript reads no module globals: the values below
    if not torch.jit.is_scripting():
        budget, min_rows = FUSED_ROW_BUDGET, FUSED_MIN_ROWS
    rows = min(n, budget // c)
    return rows if rows >= min(n, min_rows) else 0


# ---- the shard ops (lossext.distributed differentiates through them itself) ---------------

def _shard_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)  # per-shard statistics, combined by the caller


def _shard_backward(ctx, *grads):
    raise NotImplementedError("lossext.fused_linear_margin_shard_forward: its outputs are per-shard statistics "
                              "and not differentiable; lossext.distributed differentiates the combined loss")


register_autograd("fused_linear_margin_shard_forward", setup_context=_shard_setup, backward=_shard_backward)
amp.register("fused_linear_margin_shard_forward", "matmul")
refuse_double_backward("fused_linear_margin_shard", ["fused_linear_margin_shard_backward"])
