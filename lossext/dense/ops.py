"""Fake kernels, autograd and autocast of the dense-prediction ops (csrc/dense).

Ops:
  joints_mse_sums(output, target) -> S [B, K], S_bk = sum over heatmap (b, k)'s pixels of
      (output - target)^2, float32 for float16 / bfloat16 / float32 heatmaps, float64 for float64
  joints_mse_sums_backward(grad [B, K], output, target) -> grad_output (dL/dtarget is its negative)
  joints_mse_loss_with_grad(output, target, coef [B, K]) -> (sum coef S (0-dim), S, 2 coef (x - y)):
      the one-pass forward of a reduced loss without OHKM (issue #15; coef = dLoss/dS is known
      before the heatmaps are read); its backward is scale_saved (the buffer itself for
      grad_output = 1), coef's gradient grad_output S; S and the gradient are not differentiable

  mask_bce(mask_logits [R, C, ...], labels [R] int64, mask_targets [R, ...], per_pixel) ->
      per_pixel: the BCE-with-logits of each RoI's labelled channel per pixel [R, ...] (logits'
      dtype); else its per-RoI sums [R] (accumulation dtype)
  mask_bce_backward(grad, mask_logits, labels, mask_targets, per_pixel) -> (grad_logits,
      grad_targets): zero off the labelled channels; dBCE/dy = -x

  dice_sums(logits [B, C, ...], target, multiclass, from_logits, ignore_index) -> [B, C, 4]
      per-(sample, class) sums (S_p, S_t, S_pt, S_|p-t|) over the pixels not ignored (accumulation
      dtype); target: [B, ...] int64 labels (multiclass) or the logits' shape and dtype
  dice_sums_backward(grad [B, C, 4], logits, target, multiclass, from_logits, ignore_index) ->
      grad_logits (the target is not differentiable)

  masked_l1_sums(input, target [B, C, ...], mask [B, C or 1, ...]) -> [B, C, 4] per-(sample,
      channel) sums (sum |x - y| m, sum |x - y| (1 - m), sum m, sum (1 - m)); a broadcast mask is
      counted in channel 0 only
  masked_l1_sums_backward(grad [B, C, 4], input, target, mask) -> grad_input (dL/dtarget is its
      negative; the mask is not differentiable)

The visibility weight, HRNet's 0.5 and its means, and OHKM's top-k act on the [B, K] sums in
lossext/dense/functional.py (torch ops on B K numbers: autograd, compile and export see them).
The dice and the L1 ratios act on those sums in functional.py likewise. Forward mode: the
masked L1 sums' tangents come from the backward op at unit upstream gradients; the dice sums
refuse forward mode (a tangent per class would take C backward passes). The tangent of S_bk is sum 2 (x - y)(tx - ty), from the backward op at unit
upstream gradient. Double backward is refused. Autocast: float32 (as F.mse_loss).
"""
import torch

from .._core import amp
from .._core import library  # noqa: F401  (loads the kernels)
from .._core.autograd import (call as call_op, plain_eager, refuse_double_backward, register as register_autograd,
                              scale_saved)
from .._core.fake import check_same_device


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("lossext::joints_mse_sums")
def _(output, target):
    check_same_device("joints_mse_sums", "output", output, ("target", target))
    return output.new_empty(output.shape[:2], dtype=_acc(output.dtype))


@torch.library.register_fake("lossext::joints_mse_sums_backward")
def _(grad, output, target):
    check_same_device("joints_mse_sums_backward", "output", output, ("target", target), ("grad", grad))
    return output.new_empty(output.shape)


@torch.library.register_fake("lossext::joints_mse_loss_with_grad")
def _(output, target, coef):
    check_same_device("joints_mse_loss_with_grad", "output", output, ("target", target), ("coef", coef))
    acc = _acc(output.dtype)
    return output.new_empty((), dtype=acc), output.new_empty(output.shape[:2], dtype=acc), output.new_empty(output.shape)


def _one_pass_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2], output[1], output[2])
    ctx.save_for_forward(inputs[0], inputs[1], inputs[2])


def _one_pass_backward(ctx, g_loss, _g_sums, _g_grad):
    output, target, coef, sums, grad = ctx.saved_tensors
    need = ctx.needs_input_grad
    if g_loss is None:
        return None, None, None
    gx = None
    if need[0] or need[1]:
        if torch.is_grad_enabled():  # create_graph: the backward op, whose double backward raises
            gx = call_op("joints_mse_sums_backward", (g_loss * coef).contiguous(), output, target)
        else:
            gx = scale_saved(g_loss, grad)
    return (gx if need[0] else None), (-gx if need[1] else None), (g_loss * sums if need[2] else None)


def _one_pass_jvp(ctx, t_output, t_target, t_coef):
    output, target, coef = ctx.saved_tensors
    t = None
    if t_output is not None or t_target is not None:
        d = call_op("joints_mse_sums_backward", coef.contiguous(), output, target)  # 2 coef (x - y)
        dt = t_output if t_target is None else (t_target.neg() if t_output is None else t_output - t_target)
        t = (d * dt).sum(dtype=coef.dtype)
    if t_coef is not None:
        tc = (call_op("joints_mse_sums", output, target) * t_coef).sum()
        t = tc if t is None else t + tc
    return (t if t is not None else coef.new_zeros(())), None, None


def _setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.save_for_forward(inputs[0], inputs[1])


def _backward(ctx, grad):
    output, target = ctx.saved_tensors
    if grad is None or not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None
    g = call_op("joints_mse_sums_backward", grad.contiguous(), output, target)
    return (g if ctx.needs_input_grad[0] else None), (-g if ctx.needs_input_grad[1] else None)


def _jvp(ctx, t_output, t_target):
    output, target = ctx.saved_tensors
    ones = torch.ones(output.shape[:2], dtype=_acc(output.dtype), device=output.device)
    d = call_op("joints_mse_sums_backward", ones, output, target)  # 2 (x - y)
    t = t_output if t_target is None else (t_target.neg() if t_output is None else t_output - t_target)
    if t is None:
        return None
    return (d * t).reshape(output.shape[0], output.shape[1], -1).sum(-1, dtype=_acc(output.dtype))


@torch.library.register_fake("lossext::mask_bce")
def _(mask_logits, labels, mask_targets, per_pixel):
    check_same_device("mask_bce", "mask_logits", mask_logits, ("labels", labels), ("mask_targets", mask_targets))
    if per_pixel:
        return mask_logits.new_empty(mask_targets.shape)
    return mask_logits.new_empty(mask_logits.shape[:1], dtype=_acc(mask_logits.dtype))


@torch.library.register_fake("lossext::mask_bce_backward")
def _(grad, mask_logits, labels, mask_targets, per_pixel):
    check_same_device("mask_bce_backward", "mask_logits", mask_logits, ("labels", labels),
                      ("mask_targets", mask_targets), ("grad", grad))
    return mask_logits.new_empty(mask_logits.shape), mask_logits.new_empty(mask_targets.shape)


def _mask_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.per_pixel = inputs[3]
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2])
    ctx.save_for_forward(inputs[0], inputs[1], inputs[2])


def _mask_backward(ctx, grad):
    logits, labels, targets = ctx.saved_tensors
    if grad is None or not (ctx.needs_input_grad[0] or ctx.needs_input_grad[2]):
        return None, None, None, None
    gl, gt = call_op("mask_bce_backward", grad.contiguous(), logits, labels, targets, ctx.per_pixel)
    return (gl if ctx.needs_input_grad[0] else None), None, (gt if ctx.needs_input_grad[2] else None), None


def _mask_jvp(ctx, t_logits, _t_labels, t_targets, _t_flag):
    logits, labels, targets = ctx.saved_tensors
    ones = torch.ones(targets.shape, dtype=logits.dtype, device=logits.device)
    gl, gt = call_op("mask_bce_backward", ones, logits, labels, targets, True)  # per-pixel derivatives
    t = None
    if t_logits is not None:
        t = (gl * t_logits).sum(1)  # only the labelled channel is non-zero
    if t_targets is not None:
        t = gt * t_targets if t is None else t + gt * t_targets
    if t is None:
        return None
    if ctx.per_pixel:
        return t
    return t.reshape(t.shape[0], -1).sum(-1, dtype=_acc(logits.dtype))


@torch.library.register_fake("lossext::dice_sums")
def _(logits, target, multiclass, from_logits, ignore_index):
    check_same_device("dice_sums", "logits", logits, ("target", target))
    return logits.new_empty((logits.shape[0], logits.shape[1], 4), dtype=_acc(logits.dtype))


@torch.library.register_fake("lossext::dice_sums_backward")
def _(grad, logits, target, multiclass, from_logits, ignore_index):
    check_same_device("dice_sums_backward", "logits", logits, ("target", target), ("grad", grad))
    return logits.new_empty(logits.shape)


def _dice_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.flags = inputs[2:]
    ctx.save_for_backward(inputs[0], inputs[1])


def _dice_backward(ctx, grad):
    logits, target = ctx.saved_tensors
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    g = call_op("dice_sums_backward", grad.contiguous(), logits, target, *ctx.flags)
    return g, None, None, None, None


@torch.library.register_fake("lossext::masked_l1_sums")
def _(input, target, mask):
    check_same_device("masked_l1_sums", "input", input, ("target", target), ("mask", mask))
    return input.new_empty((input.shape[0], input.shape[1], 4), dtype=_acc(input.dtype))


@torch.library.register_fake("lossext::masked_l1_sums_backward")
def _(grad, input, target, mask):
    check_same_device("masked_l1_sums_backward", "input", input, ("target", target), ("mask", mask), ("grad", grad))
    return input.new_empty(input.shape)


def _l1_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs)
    ctx.save_for_forward(*inputs)


def _l1_backward(ctx, grad):
    x, y, mask = ctx.saved_tensors
    if grad is None or not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None
    g = call_op("masked_l1_sums_backward", grad.contiguous(), x, y, mask)
    return (g if ctx.needs_input_grad[0] else None), (-g if ctx.needs_input_grad[1] else None), None


def _l1_jvp(ctx, t_x, t_y, _t_mask):
    x, y, mask = ctx.saved_tensors
    t = t_x if t_y is None else (t_y.neg() if t_x is None else t_x - t_y)
    if t is None:
        return None
    B, C = x.shape[0], x.shape[1]
    acc = _acc(x.dtype)
    parts = []
    for q in range(2):  # d/dx of the foreground and background numerators
        unit = torch.zeros((B, C, 4), dtype=acc, device=x.device)
        unit[:, :, q] = 1
        d = call_op("masked_l1_sums_backward", unit, x, y, mask)
        parts.append((d * t).reshape(B, C, -1).sum(-1, dtype=acc))
    zero = torch.zeros((B, C), dtype=acc, device=x.device)
    return torch.stack([parts[0], parts[1], zero, zero], dim=-1)


register_autograd("dice_sums", setup_context=_dice_setup, backward=_dice_backward, what="lossext.dice_loss")
amp.register("dice_sums", "fp32")
refuse_double_backward("dice_loss", ["dice_sums_backward"])
register_autograd("masked_l1_sums", setup_context=_l1_setup, backward=_l1_backward, jvp=_l1_jvp,
                  what="lossext.masked_l1_loss")
amp.register("masked_l1_sums", "fp32")
refuse_double_backward("masked_l1_loss", ["masked_l1_sums_backward"])
register_autograd("mask_bce", setup_context=_mask_setup, backward=_mask_backward, jvp=_mask_jvp,
                  what="lossext.mask_rcnn_loss")
amp.register("mask_bce", "fp32")
refuse_double_backward("mask_rcnn_loss", ["mask_bce_backward"])
register_autograd("joints_mse_sums", setup_context=_setup, backward=_backward, jvp=_jvp,
                  what="lossext.joints_mse_loss")
amp.register("joints_mse_sums", "fp32")
register_autograd("joints_mse_loss_with_grad", setup_context=_one_pass_setup, backward=_one_pass_backward,
                  jvp=_one_pass_jvp, what="lossext.joints_mse_loss")
amp.register("joints_mse_loss_with_grad", "fp32")
refuse_double_backward("joints_mse_loss", ["joints_mse_sums_backward"])


def joints_one_pass(output: torch.Tensor, red: int, ohkm: bool, pixels: int) -> bool:
    """Where joints_mse_loss takes joints_mse_loss_with_grad (scriptable): a reduced loss without
    OHKM (whose selection needs the sums first) on float32/float64 heatmaps that require grad,
    with grad mode on, non-empty rows and heatmaps ('mean' of none is NaN by the composite's
    rule); half precision's buffer would round before grad_output scales it, as the
    element-wise rule (lossext/_core/pointwise.py)."""
    return (red != 0 and not ohkm and pixels > 0 and output.shape[0] * output.shape[1] > 0
            and (output.dtype == torch.float32 or output.dtype == torch.float64)
            and output.requires_grad and torch.is_grad_enabled())


def _ohkm_sums_grad(g, idx, K: int, k: int, c: float, ww, red: int):
    """dLoss/dS [B, K] for grad_output g (0-dim), by the composite's own chain of backward ops
    (mean: g / B; the per-sample / k; the selection's scatter; * w^2; * c), so that it is bitwise
    what autograd computes through the composite, for every g."""
    B = idx.shape[0]
    v = g / B if red == 1 else g
    v = v.expand(B) / k
    d = torch.zeros((B, K), dtype=v.dtype, device=v.device).scatter_(1, idx, v.unsqueeze(1).expand(B, k))
    if ww is not None:
        d = d * ww
    return d * c


class _OhkmNode(torch.autograd.Function):
    """joints_mse_loss with OHKM in plain eager training (issue #15): one autograd node in place
    of the sums' Function and the selection's six nodes, whose overhead was a large part of the
    call. The forward takes the sums and selects each sample's k hardest joints exactly as the
    composite does (a stable descending sort; the same ops, so the same loss bits) and saves the
    selection; the backward rebuilds dLoss/dS by the composite's own chain of backward ops for
    the grad_output it gets (_ohkm_sums_grad) and runs joints_mse_sums_backward on it (the
    selected joints' maps read, zeros written elsewhere): bitwise the composite's gradient, with
    the same bytes moved, for every grad_output. The gradient is not formed in the forward: the
    selection leaves nothing to save a pass on, and a weighted loss (grad_output != 1) would pay
    for it twice. create_graph goes through call_op, whose double backward raises."""

    @staticmethod
    def forward(ctx, output, target, w, pixels: int, k: int, red: int):
        sums = call_op("joints_mse_sums", output, target)
        c = 0.5 / pixels
        per = sums * c
        ww = None if w is None else w * w
        if ww is not None:
            per = per * ww
        top, idx = torch.sort(per, dim=1, descending=True, stable=True)
        loss = top.narrow(1, 0, k).sum(1) / k
        loss = loss.mean() if red == 1 else loss.sum()
        ctx.save_for_backward(output, target, idx.narrow(1, 0, k), ww)
        ctx.chain = (per.shape[1], k, c, red)
        return loss.to(output.dtype)

    @staticmethod
    def backward(ctx, g_loss):
        output, target, idx, ww = ctx.saved_tensors
        need = ctx.needs_input_grad
        K, k, c, red = ctx.chain
        d = _ohkm_sums_grad(g_loss, idx, K, k, c, ww, red)
        gx = call_op("joints_mse_sums_backward", d.contiguous(), output, target)
        return (gx if need[0] else None), (-gx if need[1] else None), None, None, None, None


def ohkm_loss(output, target, w, pixels: int, k: int, red: int):
    return _OhkmNode.apply(output, target, w, pixels, k, red)


def _one_node_eager() -> bool:
    """Where a one-node path may stand in for the registered ops' graph: plain eager autograd and
    no torch-function mode (those see the ops themselves)."""
    return plain_eager() and not torch._C._is_torch_function_mode_enabled()


def ohkm_one_node(output, target_weight, red: int, pixels: int, k: int) -> bool:
    """Where joints_mse_loss with OHKM takes _OhkmNode: plain eager training only (not while
    torch.compile or export traces, nor under torch.func transforms, forward-mode AD, a dispatch
    mode or a torch-function mode: the registered ops' path serves those), a reduced loss,
    float32/float64 heatmaps that require grad, non-empty rows and maps, k >= 1, and a
    target_weight that does not require grad (its gradient comes from the composite's graph)."""
    return (joints_one_pass(output, red, False, pixels) and k >= 1
            and (target_weight is None or not target_weight.requires_grad)
            and _one_node_eager())


class _MaskedL1Node(torch.autograd.Function):
    """masked_l1_loss in plain eager training (issue #13: its host side had become most of a
    small call, and on CUDA each of the composite's dozen scalar ops is a launch): one autograd
    node in place of the sums' Function and the ratios' nodes. The forward takes the sums and
    forms the two ratios with the ops of functional._ratio, on a [2] vector (the same divisions,
    so the same loss bits; nz and the safe denominator are kept for the backward); the backward
    rebuilds dLoss/dsums by the composite's chain (the ratios' where, then the division by the
    safe denominator, the select and the sum broadcast over [B, C]) and runs
    masked_l1_sums_backward on it: bitwise the composite's gradients, the same bytes moved, for
    every pair of grad_outputs. create_graph goes through call_op, whose double backward raises."""

    @staticmethod
    def forward(ctx, input, target, mask):
        S = call_op("masked_l1_sums", input, target, mask).sum([0, 1])  # [4]
        num, den = S.narrow(0, 0, 2), S.narrow(0, 2, 2)
        nz = den != 0
        safe = torch.where(nz, den, 1.0)
        v = torch.where(nz, num / safe, 0.0).to(input.dtype)
        ctx.save_for_backward(input, target, mask, nz, safe)
        return v[0].clone(), v[1].clone()  # two outputs, neither a view of the other

    @staticmethod
    def backward(ctx, g_fg, g_bg):
        input, target, mask, nz, safe = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = torch.stack((g_fg, g_bg)).to(safe.dtype)
        g = torch.where(nz, g, 0.0) / safe
        d = torch.cat((g, torch.zeros_like(g))).expand(input.shape[0], input.shape[1], 4).contiguous()
        gx = call_op("masked_l1_sums_backward", d, input, target, mask)
        return (gx if need[0] else None), (-gx if need[1] else None), None


def masked_l1_loss(input, target, mask):
    return _MaskedL1Node.apply(input, target, mask)


def masked_l1_one_node(input, target) -> bool:
    """Where masked_l1_loss takes _MaskedL1Node: grad mode on, input or target requiring grad,
    plain eager autograd (not while torch.compile or export traces, nor under torch.func
    transforms, forward-mode AD, a dispatch mode or a torch-function mode: the registered ops'
    path serves those)."""
    return torch.is_grad_enabled() and (input.requires_grad or target.requires_grad) and _one_node_eager()
