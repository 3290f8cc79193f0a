"""Process-group helpers and the autograd-aware gather of lossext.distributed.

_GatherRows is the all-gather of the local embeddings along dim 0. Its adjoint ("take my rows
of the gradient, summed over the ranks") is a reduce-scatter with SUM: each rank's loss copy
contributes the part of dL/dX that its class shard produced, so summing the ranks' partials
gives exactly dL/dx_q of the one global loss (design/issue14_class_parallel.md, 3.2). With
grad_scale = W it is insightface's AllGatherFunc (partial_fc_v2.py), which multiplies by the
world size to offset DDP's averaging of the backbone gradients.
"""
import torch
import torch.distributed as dist


def group_info(group):
    """(rank, world_size) of this process in group (None: the default group)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("lossext.distributed: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group first (torchrun sets up the environment)")
    return dist.get_rank(group), dist.get_world_size(group)


def _is_nccl(group):
    return dist.get_backend(group) == "nccl"


def all_gather_rows(x, group):
    """cat over the ranks (in rank order) of x [n, ...]; every rank passes the same shape."""
    _, world = group_info(group)
    if world == 1:
        return x.clone()
    x = x.contiguous()
    if _is_nccl(group):
        out = x.new_empty((world * x.shape[0],) + tuple(x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts)


def reduce_scatter_rows(g, group):
    """Rows [rank n, (rank + 1) n) of the sum over the ranks of g [world n, ...]."""
    rank, world = group_info(group)
    n = g.shape[0] // world
    if world == 1:
        return g
    g = g.contiguous()
    out = g.new_empty((n,) + tuple(g.shape[1:]))
    if _is_nccl(group):
        dist.reduce_scatter_tensor(out, g, group=group)
    else:  # gloo: the list form
        dist.reduce_scatter(out, list(g.chunk(world)), group=group)
    return out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, grad_scale):
        ctx.group, ctx.grad_scale = group, grad_scale
        return all_gather_rows(x, group)

    @staticmethod
    def backward(ctx, g):
        out = reduce_scatter_rows(g, ctx.group)
        if ctx.grad_scale != 1:
            out = out * ctx.grad_scale
        return out, None, None


def gather_rows(x, group, grad_scale=1):
    """All-gather along dim 0 whose backward reduce-scatters (SUM) the gradient, times grad_scale."""
    return _GatherRows.apply(x, group, grad_scale)
