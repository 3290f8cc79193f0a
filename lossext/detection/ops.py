"""Fake kernels, autograd and autocast of the detection ops (csrc/detection).

Ops (reduction: 0 none, 1 mean, 2 sum):
  sigmoid_focal_loss(input, target, weight?, alpha, gamma, reduction) and its _with_grad,
      _backward and _target_backward: the element-wise pattern (lossext/_core/pointwise.py)
  box_iou_loss(boxes1, boxes2, mode, eps, reduction) -> loss
  box_iou_loss_backward(grad_output, boxes1, boxes2, mode, eps, reduction) -> (grad_boxes1, grad_boxes2)
  softmax_focal_loss(logits, target, alpha?, weight?, gamma, ignore_index, reduction) -> loss
  softmax_focal_loss_backward(grad_output, logits, target, alpha?, weight?, gamma, ignore_index,
                              reduction) -> grad_logits
  yolov2_region_loss(output, targets, anchors, num_classes, scales..., thresh, rescore, bias_match,
                     prior_scale, scale_coord_by_size) -> (loss [B], grad, stats [7]) and
  yolov2_region_loss_backward(grad_output [B], grad, output) -> grad_output
box_iou_loss's mode: 0 iou, 1 giou, 2 diou, 3 ciou; 'mean' of no boxes is 0. softmax focal's
logits are [N, C, d...], target [N, d...]; alpha and weight are per-class constants (no
gradient); 'mean' divides by the rows not ignored.
Forward mode: one backward pass at reduction 'none' contracted with the tangents.
Double backward raises NotImplementedError. Autocast: float32 (as F.cross_entropy).
"""
import torch

from .._core import amp, pointwise
from .._core import library  # noqa: F401  (loads the kernels)
from .._core.autograd import call as call_op, refuse_double_backward, register as register_autograd
from .._core.fake import check_same_device

# One pass (the forward writes dloss/dinput) or recompute: see benchmarks/RESULTS.md (detection).
SIGMOID_FOCAL_ONE_PASS = True
pointwise.register("sigmoid_focal_loss", target_grad_is_neg_input_grad=False, one_pass=SIGMOID_FOCAL_ONE_PASS)


# ---- box IoU losses -------------------------------------------------------------------------

@torch.library.register_fake("lossext::box_iou_loss")
def _(boxes1, boxes2, mode, eps, reduction):
    check_same_device("box_iou_loss", "boxes1", boxes1, ("boxes2", boxes2))
    return boxes1.new_empty(boxes1.shape[:-1] if reduction == 0 else ())


@torch.library.register_fake("lossext::box_iou_loss_backward")
def _(grad, boxes1, boxes2, mode, eps, reduction):
    check_same_device("box_iou_loss_backward", "boxes1", boxes1, ("boxes2", boxes2), ("grad_output", grad))
    return (torch.empty_like(boxes1, memory_format=torch.contiguous_format),
            torch.empty_like(boxes1, memory_format=torch.contiguous_format))


def _box_setup(ctx, inputs, output):
    b1, b2, *params = inputs
    ctx.params = params
    ctx.save_for_backward(b1, b2)
    ctx.save_for_forward(b1, b2)


def _box_backward(ctx, grad):
    b1, b2 = ctx.saved_tensors
    g1, g2 = call_op("box_iou_loss_backward", grad, b1, b2, *ctx.params)
    need = ctx.needs_input_grad
    return (g1 if need[0] else None, g2 if need[1] else None) + (None,) * len(ctx.params)


def _reduce(t, reduction, count=None):
    if reduction == 0:
        return t
    if reduction == 2:
        return t.sum()
    return t.sum() / count if count is not None else t.mean()


def _box_jvp(ctx, t1, t2, *_params):
    b1, b2 = ctx.saved_tensors
    mode, eps, reduction = ctx.params
    ones = b1.new_ones(b1.shape[:-1])
    g1, g2 = call_op("box_iou_loss_backward", ones, b1, b2, mode, eps, 0)
    t = b1.new_zeros(b1.shape[:-1])
    if t1 is not None:
        t = t + (g1 * t1).sum(-1)
    if t2 is not None:
        t = t + (g2 * t2).sum(-1)
    if reduction == 1 and t.numel() == 0:
        return t.sum()  # 'mean' of no boxes is 0
    return _reduce(t, reduction)


register_autograd("box_iou_loss", setup_context=_box_setup, backward=_box_backward, jvp=_box_jvp,
                  what="lossext.box_iou_loss")
amp.register("box_iou_loss", "fp32")
refuse_double_backward("box_iou_loss", ["box_iou_loss_backward"])


# ---- softmax focal loss ---------------------------------------------------------------------

@torch.library.register_fake("lossext::softmax_focal_loss")
def _(logits, target, alpha, weight, gamma, ignore_index, reduction):
    check_same_device("softmax_focal_loss", "logits", logits, ("target", target), ("alpha", alpha),
                      ("weight", weight))
    return logits.new_empty(target.shape if reduction == 0 else ())


@torch.library.register_fake("lossext::softmax_focal_loss_backward")
def _(grad, logits, target, alpha, weight, gamma, ignore_index, reduction):
    check_same_device("softmax_focal_loss_backward", "logits", logits, ("target", target), ("alpha", alpha),
                      ("weight", weight), ("grad_output", grad))
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _focal_setup(ctx, inputs, output):
    logits, target, alpha, weight, *params = inputs
    ctx.params = params
    ctx.save_for_backward(logits, target, alpha, weight)
    ctx.save_for_forward(logits, target, alpha, weight)


def _focal_backward(ctx, grad):
    logits, target, alpha, weight = ctx.saved_tensors
    g = call_op("softmax_focal_loss_backward", grad, logits, target, alpha, weight, *ctx.params)
    return (g if ctx.needs_input_grad[0] else None,) + (None,) * (3 + len(ctx.params))


def _focal_jvp(ctx, tl, *_rest):
    logits, target, alpha, weight = ctx.saved_tensors
    gamma, ignore_index, reduction = ctx.params
    if tl is None:
        return logits.new_zeros(target.shape if reduction == 0 else ())
    ones = logits.new_ones(target.shape)
    g = call_op("softmax_focal_loss_backward", ones, logits, target, alpha, weight, gamma, ignore_index, 0)
    t = (g * tl).sum(1)
    return _reduce(t, reduction, (target != ignore_index).sum())


register_autograd("softmax_focal_loss", setup_context=_focal_setup, backward=_focal_backward, jvp=_focal_jvp,
                  what="lossext.softmax_focal_loss")
amp.register("softmax_focal_loss", "fp32")
refuse_double_backward("softmax_focal_loss", ["softmax_focal_loss_backward"])


# ---- YOLOv2 region loss ---------------------------------------------------------------------
# yolov2_region_loss(output, targets, anchors, num_classes, object_scale, noobject_scale, class_scale,
#                    coord_scale, thresh, rescore, bias_match, prior_scale, scale_coord_by_size)
#     -> (loss [B], grad (output's shape), stats [7])
# The forward writes d(sum of the losses)/d output (darknet's forward writes its deltas); the
# backward, yolov2_region_loss_backward(grad_output [B], grad, output), scales it per image (output
# only ties the result to the head, so that its refused derivative makes double backward raise).

@torch.library.register_fake("lossext::yolov2_region_loss")
def _(output, targets, anchors, *params):
    check_same_device("yolov2_region_loss", "output", output, ("targets", targets), ("anchors", anchors),
                      ("prior_scale", params[-2]))
    stats_dtype = torch.float64 if output.dtype == torch.float64 else torch.float32
    return (output.new_empty((output.shape[0],)), torch.empty_like(output, memory_format=torch.contiguous_format),
            output.new_empty((7,), dtype=stats_dtype))


@torch.library.register_fake("lossext::yolov2_region_loss_backward")
def _(grad_output, grad, output):
    check_same_device("yolov2_region_loss_backward", "grad", grad, ("grad_output", grad_output), ("output", output))
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _region_setup(ctx, inputs, output):
    ctx.n_params = len(inputs) - 1
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1], inputs[0])
    ctx.save_for_forward(output[1], inputs[0])


def _region_backward(ctx, g_loss, _g_grad, _g_stats):
    grad, output = ctx.saved_tensors
    if g_loss is None or not ctx.needs_input_grad[0]:
        return (None,) * (1 + ctx.n_params)
    return (call_op("yolov2_region_loss_backward", g_loss, grad, output),) + (None,) * ctx.n_params


def _region_jvp(ctx, t_out, *_rest):
    grad, _output = ctx.saved_tensors
    t = (grad * t_out).flatten(1).sum(1) if t_out is not None else grad.new_zeros(grad.shape[:1])
    return t, None, None


register_autograd("yolov2_region_loss", setup_context=_region_setup, backward=_region_backward, jvp=_region_jvp,
                  what="lossext.yolov2_region_loss")
amp.register("yolov2_region_loss", "fp32")
refuse_double_backward("yolov2_region_loss", ["yolov2_region_loss_backward"])


# ---- prior matching and the multibox losses (SSD, RefineDet) ----------------------------------
# match_priors(priors f64 [P, 4], targets f64 [B, T, 5], overlap_thresh, matching) -> (overlaps f64
#     [B, P], matches int64 [B, P]): no gradient (integer matches, overlaps of constant boxes).
# multibox_loss(loc, conf, priors, targets, arm_loc?, arm_conf?, overlap_thresh, neg_pos_ratio,
#     neg_overlap, variance_center, variance_size, matching, objectness_thresh, binary)
#     -> (loss_loc [B], loss_conf [B], num_pos int64 [B], grad_loc, grad_conf): per-image sums and
#     the gradients of their sums; multibox_loss_backward(g_loss_loc [B], g_loss_conf [B], grad_loc,
#     grad_conf, loc, conf) scales them per image. Gradients flow to loc and conf only (arm_loc and
#     arm_conf, RefineDet's ODM inputs, are constants there).

@torch.library.register_fake("lossext::match_priors")
def _(priors, targets, overlap_thresh, matching):
    check_same_device("match_priors", "priors", priors, ("targets", targets))
    shape = (targets.shape[0], priors.shape[0])
    return priors.new_empty(shape, dtype=torch.float64), priors.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("lossext::multibox_loss")
def _(loc, conf, priors, targets, arm_loc, arm_conf, *params):
    check_same_device("multibox_loss", "loc", loc, ("conf", conf), ("priors", priors), ("targets", targets),
                      ("arm_loc", arm_loc), ("arm_conf", arm_conf))
    b = loc.shape[0]
    return (loc.new_empty((b,)), loc.new_empty((b,)), loc.new_empty((b,), dtype=torch.int64),
            torch.empty_like(loc, memory_format=torch.contiguous_format),
            torch.empty_like(conf, memory_format=torch.contiguous_format))


@torch.library.register_fake("lossext::multibox_loss_backward")
def _(g_loc, g_conf, grad_loc, grad_conf, loc, conf):
    check_same_device("multibox_loss_backward", "grad_loc", grad_loc, ("grad_conf", grad_conf),
                      ("grad_loss_loc", g_loc), ("grad_loss_conf", g_conf), ("loc", loc), ("conf", conf))
    return (torch.empty_like(grad_loc, memory_format=torch.contiguous_format),
            torch.empty_like(grad_conf, memory_format=torch.contiguous_format))


def _multibox_setup(ctx, inputs, output):
    ctx.n_inputs = len(inputs)
    ctx.mark_non_differentiable(output[2], output[3], output[4])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[3], output[4], inputs[0], inputs[1])
    ctx.save_for_forward(output[3], output[4], inputs[0], inputs[1])


def _multibox_backward(ctx, g_loc, g_conf, *_rest):
    grad_loc, grad_conf, loc, conf = ctx.saved_tensors
    need = ctx.needs_input_grad
    none = (None,) * (ctx.n_inputs - 2)
    if (g_loc is None and g_conf is None) or not (need[0] or need[1]):
        return (None, None) + none
    b = loc.shape[0]
    g_loc = g_loc if g_loc is not None else loc.new_zeros((b,))
    g_conf = g_conf if g_conf is not None else loc.new_zeros((b,))
    gl, gc = call_op("multibox_loss_backward", g_loc, g_conf, grad_loc, grad_conf, loc, conf)
    return (gl if need[0] else None, gc if need[1] else None) + none


def _multibox_jvp(ctx, t_loc, t_conf, *_rest):
    grad_loc, grad_conf, _loc, _conf = ctx.saved_tensors
    b = grad_loc.shape[0]
    tl = (grad_loc * t_loc).flatten(1).sum(1) if t_loc is not None else grad_loc.new_zeros((b,))
    tc = (grad_conf * t_conf).flatten(1).sum(1) if t_conf is not None else grad_loc.new_zeros((b,))
    return tl, tc, None, None, None


register_autograd("multibox_loss", setup_context=_multibox_setup, backward=_multibox_backward, jvp=_multibox_jvp,
                  what="lossext.multibox_loss")
amp.register("multibox_loss", "fp32")
refuse_double_backward("multibox_loss", ["multibox_loss_backward"])
