"""Class-parallel margin softmax over torch.distributed (insightface's PartialFC on the fused
kernel): each rank holds a contiguous shard of the class weights, the embeddings and labels of
the group are gathered, and two all-reduces combine the shards' row statistics into the exact
global loss. NCCL on GPU, gloo on CPU. See docs/distributed.md.

    import lossext.distributed as LD
    head = LD.ClassParallelMarginLoss(512, 1_000_000, m2=0.5, sample_rate=0.1)
    loss = head(local_embeddings, local_labels)   # the same global loss on every rank

Not a loss family (no kernels of its own: it uses the margin family's shard ops,
torch.ops.lossext.fused_linear_margin_shard_forward / _backward).
"""
from .checkpoint import reshard, reshard_tensors
from .functional import class_parallel_margin_cross_entropy, shard_range
from .modules import ClassParallelMarginLoss
from .sampling import sample_classes

__all__ = ["ClassParallelMarginLoss", "class_parallel_margin_cross_entropy", "shard_range", "reshard",
           "reshard_tensors", "sample_classes"]
