"""Class-parallel margin cross-entropy: the functional form (lossext.distributed).

Each rank holds a contiguous shard of the class weights. The embeddings and labels of the whole
group are gathered, each rank runs the margin family's fused shard kernel against its own shard
(row max, sum of exp and the target logit, never the [N_tot, C_local] logits), and two
all-reduces combine them: the row max (MAX), then the rescaled sums and the target logits in one
SUM. Every rank returns the same global loss. The loss itself needs no host sync; the checks of
the batch sizes and of the label range are one each on CUDA, and both can be turned off.

Backward: every rank runs its shard's backward with the global lse; its dL/dW is exact with no
communication, and its part of dL/dX joins the others' in the gather's reduce-scatter
(design/issue14_class_parallel.md, 3.2). Every rank must call backward (it holds a collective).
"""
import torch
import torch.distributed as dist

from .._core import amp
from .._core import validation as V
from ..margin import ops as _margin_ops  # noqa: F401  (registers the shard ops' fakes and autograd)
from . import _comm

__all__ = ["class_parallel_margin_cross_entropy", "shard_range"]

EMBEDDING_GRADS = ("exact", "world_size")


def shard_range(num_classes, world_size, rank):
    """(class_start, num_local) of rank's shard: insightface's balanced contiguous split
    (PartialFC_V2.__init__): the first num_classes % world_size ranks hold one class more."""
    fn = "lossext.distributed.shard_range"
    num_classes = V.integer(fn, "num_classes", num_classes, 1)
    world_size = V.integer(fn, "world_size", world_size, 1)
    rank = V.integer(fn, "rank", rank, 0, world_size - 1)
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + (1 if rank < extra else 0)


def _check_margins(fn, scale, m1, m2, m3):
    from ..margin.functional import check_margins
    scale, m1, m2, m3 = (V.number(fn, n, v) for n, v in (("scale", scale), ("m1", m1), ("m2", m2), ("m3", m3)))
    check_margins(fn, ["m1", "m2", "m3"], scale, m1, m2, m3, 0.0)
    return scale, m1, m2, m3


def local_targets(labels_all, class_start, num_local, ignore_index):
    """The shard-local target of each gathered row: label - class_start where the label is one
    of this shard's classes, -1 elsewhere (another shard, or ignore_index)."""
    inside = (labels_all != ignore_index) & (labels_all >= class_start) & (labels_all < class_start + num_local)
    return torch.where(inside, labels_all - class_start, -1)


def bad_labels(labels, num_classes, ignore_index):
    return (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))


def check_labels_in_range(fn, labels, num_classes, ignore_index, rank, n_local, check):
    """Raises on every rank if any gathered label is outside [0, num_classes) and not
    ignore_index: the rank that passed it names the local indices and values; the others name
    that rank. All ranks hold the same gathered labels, so all raise together (nobody is left
    waiting in a collective). On CUDA this is one host sync. check=False skips it (on every
    device): such rows then give a NaN loss and NaN gradients (shard_loss)."""
    if not check:
        return
    bad = bad_labels(labels, num_classes, ignore_index)
    if not bool(bad.any()):
        return
    rows = bad.nonzero().flatten().tolist()
    owners = sorted({r // n_local for r in rows})
    if rank in owners:
        mine = [r - rank * n_local for r in rows if r // n_local == rank]
        vals = [int(labels[rank * n_local + i]) for i in mine]
        raise ValueError(f"{fn}: local_labels has values {vals} at indices {mine}, outside [0, {num_classes}) "
                         f"and not ignore_index ({ignore_index})")
    raise ValueError(f"{fn}: rank(s) {owners} passed labels outside [0, {num_classes}) (see the error there)")


class _ShardMarginCE(torch.autograd.Function):
    """loss(x_all, w_shard) for the rows of the whole group against this rank's classes; the
    global statistics come from two all-reduces. target_local: the shard-local target, -1 where
    it is on another shard or the row is ignored; valid: the rows that count."""

    @staticmethod
    def forward(ctx, x_all, w, target_local, valid, bad, params, reduction, out_dtype, rank, group):
        scale, m1, m2, m3, easy, chunk = params
        with torch.no_grad():
            mx, se, zy = torch.ops.lossext.fused_linear_margin_shard_forward(
                x_all, w, target_local, scale, m1, m2, m3, None, easy, chunk)
            gmax = mx.clone()
            if dist.get_world_size(group) > 1:
                dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
            # a NaN row: MAX may drop it, the SUM below keeps it (se * exp(NaN - M) = NaN)
            both = torch.stack([se * torch.exp(mx - gmax), zy])
            if dist.get_world_size(group) > 1:
                dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
            lse = gmax + both[0].log()
            per_row = torch.where(valid, lse - both[1], torch.zeros_like(lse))
            # a label in no shard (check_labels=False): NaN, never the plain lse of a row with no target
            per_row = torch.where(bad, torch.full_like(per_row, float("nan")), per_row)
            n_valid = valid.sum()
        ctx.save_for_backward(x_all, w, target_local, valid, bad, lse, n_valid)
        ctx.params, ctx.reduction, ctx.rank, ctx.group = params, reduction, rank, group
        if reduction == "mean":
            return (per_row.sum() / n_valid).to(out_dtype)
        if reduction == "sum":
            return per_row.sum().to(out_dtype)
        n = x_all.shape[0] // dist.get_world_size(group)
        return per_row.narrow(0, rank * n, n).to(out_dtype)

    @staticmethod
    def backward(ctx, g):
        x_all, w, target_local, valid, bad, lse, n_valid = ctx.saved_tensors
        scale, m1, m2, m3, easy, chunk = ctx.params
        acc = torch.float64 if x_all.dtype == torch.float64 else torch.float32
        if ctx.reduction == "none":
            g_rows = _comm.all_gather_rows(g.to(acc), ctx.group)  # every rank needs every row's G
        elif ctx.reduction == "mean":
            g_rows = (g.to(torch.float64) / n_valid).to(acc).expand(x_all.shape[0])
        else:
            g_rows = g.to(acc).expand(x_all.shape[0])
        g_rows = torch.where(valid, g_rows, torch.zeros((), dtype=acc, device=g_rows.device))
        g_rows = torch.where(bad, torch.full((), float("nan"), dtype=acc, device=g_rows.device), g_rows).contiguous()
        gx, gw = torch.ops.lossext.fused_linear_margin_shard_backward(
            g_rows, x_all, w, target_local, lse, scale, m1, m2, m3, None, easy, chunk)
        need = ctx.needs_input_grad
        return (gx if need[0] else None, gw if need[1] else None) + (None,) * 8


@torch.compiler.disable  # collectives inside an autograd.Function: eager only
def shard_loss(fn, x_local, labels_local, w, class_start, num_classes, scale, m1, m2, m3, easy_margin,
               ignore_index, reduction, group, embedding_grad, chunk_size, rank, world, labels_all=None,
               remap=None):
    """The shared body of the functional form and the Module (arguments already checked).
    remap: (labels_all -> target_local) override for sampling; labels_all: already gathered."""
    # autocast: the fused family's "matmul" policy (float32/16 run in the autocast dtype, float64
    # stays; a float32 loss); outside it the loss has the embeddings' dtype
    autocast = amp.enabled(x_local.device.type)
    x_local, w = amp.cast_inputs("matmul", x_local.device.type, x_local, w)
    if x_local.dtype != w.dtype:
        raise TypeError(f"{fn}: local_embeddings have dtype {x_local.dtype} but the weight shard has {w.dtype}")
    out_dtype = torch.float64 if x_local.dtype == torch.float64 else (torch.float32 if autocast else x_local.dtype)
    x_all = _comm.gather_rows(x_local, group, world if embedding_grad == "world_size" else 1)
    if labels_all is None:
        labels_all = _comm.all_gather_rows(labels_local, group)
    valid = labels_all != ignore_index
    target_local = local_targets(labels_all, class_start, w.shape[0], ignore_index) if remap is None else remap
    bad = bad_labels(labels_all, num_classes, ignore_index)
    params = (float(scale), float(m1), float(m2), float(m3), bool(easy_margin), int(chunk_size or 0))
    return _ShardMarginCE.apply(x_all, w, target_local, valid, bad, params, reduction, out_dtype, rank, group)


def check_inputs(fn, x, labels, d):
    V.tensor(fn, "local_embeddings", x)
    V.tensor(fn, "local_labels", labels)
    V.check_rows(fn, "local_embeddings", x, "D")
    if x.shape[1] != d:
        raise ValueError(f"{fn}: local_embeddings have D = {x.shape[1]} but the weight shard has D = {d}")
    return V.check_labels(fn, labels, x.shape[0], x, "local_embeddings")


def check_group_sizes(fn, x, class_start, n_local, group, rank, world, num_classes=None):
    """One small all_gather of (N, D, class_start, num_local) per rank: equal batch sizes and D
    on every rank, and (when num_classes is given) shards that tile [0, num_classes) in rank
    order. Raises on every rank together."""
    mine = torch.tensor([x.shape[0], x.shape[1], class_start, n_local], dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        mine = mine.to(x.device)
    allv = _comm.all_gather_rows(mine.view(1, 4), group).cpu().tolist()
    sizes = [r[0] for r in allv]
    if len(set(sizes)) != 1:
        raise ValueError(f"{fn}: every rank must pass the same number of local embeddings (PartialFC's rule; pad "
                         f"with ignore_index rows otherwise), got {sizes} on ranks 0..{world - 1}")
    dims = [r[1] for r in allv]
    if len(set(dims)) != 1:
        raise ValueError(f"{fn}: every rank must pass the same embedding dimension, got {dims}")
    if num_classes is not None:
        start = 0
        for r, (_, _, s, n) in enumerate(allv):
            if s != start:
                raise ValueError(f"{fn}: the weight shards must tile [0, num_classes) in rank order: rank {r} starts "
                                 f"at class {s}, expected {start} (shards: {[(a[2], a[3]) for a in allv]})")
            start += n
        if start != num_classes:
            raise ValueError(f"{fn}: the weight shards cover {start} classes but num_classes = {num_classes}")


def class_parallel_margin_cross_entropy(local_embeddings, local_labels, weight_shard, class_start, num_classes,
                                        scale=64.0, m1=1.0, m2=0.0, m3=0.0, easy_margin=False, ignore_index=-100,
                                        reduction="mean", process_group=None, embedding_grad="exact",
                                        chunk_size=None, check_sizes=True, check_labels=True):
    r"""The combined-margin cross-entropy over all ``num_classes`` classes, with the classes sharded
    across the ranks of ``process_group``: rank r's ``weight_shard`` holds classes
    [class_start, class_start + weight_shard.shape[0]).

    Target logit s (cos(m1 theta + m2) - m3), as :func:`lossext.functional.fused_linear_margin_cross_entropy`
    (the th/mm rule, ``easy_margin``); the margin gradient is exact.

    Every rank passes its own ``local_embeddings`` [N, D] and ``local_labels`` [N] (global class
    indices; ``ignore_index`` rows count nowhere); N must be the same on every rank. The loss
    (reduction 'mean' over the non-ignored rows of the whole group, or 'sum') is the same on
    every rank; 'none' returns this rank's N rows. Gradients: ``weight_shard`` gets exactly its
    part of the single-process gradient; ``local_embeddings`` gets dL/dx of the global loss
    (``embedding_grad='exact'``) or world_size times it (``'world_size'``, insightface's
    convention under DDP's averaging). Every rank must run backward.

    ``check_sizes`` (default True): one small all_gather per call (a host sync on CUDA) checks
    equal batch sizes and D and that the shards tile [0, num_classes) in rank order.
    ``check_labels`` (default True): the label range, checked from the gathered labels on every
    rank (a host sync on CUDA); off, a bad label's row gives a NaN loss and NaN gradients.
    With both off there is no host sync.
    """
    fn = "lossext.distributed.class_parallel_margin_cross_entropy"
    rank, world = _comm.group_info(process_group)
    V.tensor(fn, "weight_shard", weight_shard)
    V.check_rows(fn, "weight_shard", weight_shard, "D", "num_local")
    labels = check_inputs(fn, local_embeddings, local_labels, weight_shard.shape[1])
    V.check_device(fn, "weight_shard", weight_shard, "local_embeddings", local_embeddings)
    num_classes = V.integer(fn, "num_classes", num_classes, 1)
    class_start = V.integer(fn, "class_start", class_start, 0, num_classes - 1)
    if class_start + weight_shard.shape[0] > num_classes:
        raise ValueError(f"{fn}: class_start + num_local = {class_start + weight_shard.shape[0]} exceeds "
                         f"num_classes = {num_classes}")
    if weight_shard.shape[0] == 0:
        raise ValueError(f"{fn}: weight_shard has no classes (every rank needs at least one: num_classes >= "
                         "world_size)")
    scale, m1, m2, m3 = _check_margins(fn, scale, m1, m2, m3)
    easy_margin = V.flag(fn, "easy_margin", easy_margin)
    ignore_index = V.integer(fn, "ignore_index", ignore_index)
    reduction = V.reduction(fn, reduction)
    embedding_grad = check_embedding_grad(fn, embedding_grad)
    chunk_size = None if chunk_size is None else V.integer(fn, "chunk_size", chunk_size, 1)
    if V.flag(fn, "check_sizes", check_sizes):
        check_group_sizes(fn, local_embeddings, class_start, weight_shard.shape[0], process_group, rank, world,
                          num_classes)
    labels_all = _comm.all_gather_rows(labels, process_group)
    check_labels_in_range(fn, labels_all, num_classes, ignore_index, rank, labels.shape[0],
                          V.flag(fn, "check_labels", check_labels))
    return shard_loss(fn, local_embeddings, labels, weight_shard, class_start, num_classes, scale, m1, m2, m3,
                      easy_margin, ignore_index, reduction, process_group, embedding_grad, chunk_size, rank, world,
                      labels_all=labels_all)


def check_embedding_grad(fn, value):
    if not isinstance(value, str) or value not in EMBEDDING_GRADS:
        raise ValueError(f"{fn}: embedding_grad must be 'exact' or 'world_size', got {value!r}")
    return value


def splitmix64(*words):
    """A 63-bit seed mixed from Python ints (no tensors: no host sync)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (int(w) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        h = (h + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h = z ^ (z >> 31)
    return h & 0x7FFFFFFFFFFFFFFF

