"""ClassParallelMarginLoss: a class-parallel margin-softmax head (lossext.distributed)."""
import torch
from torch import nn

from .._core import validation as V
from . import _comm
from .checkpoint import FORMAT
from .functional import (_check_margins, check_embedding_grad, check_group_sizes, check_inputs,
                         check_labels_in_range, local_targets, shard_loss, shard_range, splitmix64)
from .sampling import sample_classes

__all__ = ["ClassParallelMarginLoss"]

_INIT_BLOCK = 4096  # classes per initialization block (seeded by (seed, block): the same matrix at any W)


class ClassParallelMarginLoss(nn.Module):
    r"""The combined-margin softmax loss (target logit s (cos(m1 theta + m2) - m3)) over
    ``num_classes`` classes sharded across the ranks of ``process_group`` (insightface's
    PartialFC, on the fused kernel: no rank stores its [N_tot, C_local] logits).

    This rank owns ``weight`` [num_local, embedding_dim], classes [class_start, class_start +
    num_local) (insightface's balanced contiguous split, :func:`shard_range`).
    ``forward(local_embeddings, local_labels)`` gathers the embeddings and labels of the group,
    and returns the same global loss (mean over the non-ignored rows of the whole group) on
    every rank. Every rank must pass the same batch size in a call (the size may change from
    call to call, on every rank together) and must run backward.

    Args:
        sample_rate: < 1 samples classes in training (PartialFC): per rank num_sample =
            int(sample_rate * num_local) classes, the batch's positives always among them,
            the negatives uniform from a generator seeded per (seed, rank, step). Unsampled
            rows get a zero gradient (weight decay and momentum still move them).
        embedding_grad: 'exact' (dL/dx of the global loss) or 'world_size' (times the world
            size, insightface's convention for a backbone under DDP, which averages).
        generator_seed: seed of the weight initialization and of the sampling (None: 0 for the
            initialization, and torch.initial_seed() for the sampling).
        check_labels: the label range, checked on every rank from the gathered labels (one
            host sync per step on CUDA); off, out-of-range labels give a NaN loss and NaN
            gradients.
        check_sizes: one small all_gather per step (one host sync on CUDA) checks that every
            rank passes the same batch size and D; off, unequal sizes fail (or hang until the
            process group's timeout) inside the gather.
    """

    def __init__(self, embedding_dim, num_classes, m1=1.0, m2=0.0, m3=0.0, scale=64.0, sample_rate=1.0,
                 process_group=None, embedding_grad="exact", generator_seed=None, easy_margin=False,
                 ignore_index=-100, chunk_size=None, check_labels=True, check_sizes=True):
        super().__init__()
        n = type(self).__name__
        self.embedding_dim = V.integer(n, "embedding_dim", embedding_dim, 1)
        self.num_classes = V.integer(n, "num_classes", num_classes, 1)
        self.scale, self.m1, self.m2, self.m3 = _check_margins(n, scale, m1, m2, m3)
        self.sample_rate = V.number(n, "sample_rate", sample_rate)
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"{n}: sample_rate must be in (0, 1], got {self.sample_rate}")
        self.embedding_grad = check_embedding_grad(n, embedding_grad)
        self.generator_seed = None if generator_seed is None else V.integer(n, "generator_seed", generator_seed, 0)
        self.easy_margin = V.flag(n, "easy_margin", easy_margin)
        self.ignore_index = V.integer(n, "ignore_index", ignore_index)
        self.chunk_size = None if chunk_size is None else V.integer(n, "chunk_size", chunk_size, 1)
        self.check_labels = V.flag(n, "check_labels", check_labels)
        self.check_sizes = V.flag(n, "check_sizes", check_sizes)
        self.process_group = process_group
        self.rank, self.world_size = _comm.group_info(process_group)
        if self.num_classes < self.world_size:
            raise ValueError(f"{n}: num_classes = {self.num_classes} is less than the world size "
                             f"{self.world_size} (every rank needs a class)")
        self.class_start, self.num_local = shard_range(self.num_classes, self.world_size, self.rank)
        self.num_sample = int(self.sample_rate * self.num_local)
        if self.sample_rate < 1.0 and self.num_sample < 1:
            raise ValueError(f"{n}: sample_rate = {self.sample_rate} samples no class of this rank's "
                             f"{self.num_local} (int(sample_rate * num_local) = 0)")
        self.step = 0
        self._sampling_seed = self.generator_seed if self.generator_seed is not None else torch.initial_seed()
        self.last_sample_index = None  # the shard rows used by the last sampled forward
        self.weight = nn.Parameter(torch.empty(self.num_local, self.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self):
        """normal(0, 0.01), as PartialFC_V2, drawn per block of classes from a generator seeded by
        (generator_seed, block): the full matrix is the same at every world size."""
        seed = self.generator_seed or 0
        with torch.no_grad():
            first, last = self.class_start, self.class_start + self.num_local
            for b in range(first // _INIT_BLOCK, (last + _INIT_BLOCK - 1) // _INIT_BLOCK):
                b0 = b * _INIT_BLOCK
                g = torch.Generator().manual_seed(splitmix64(seed, b))
                block = torch.randn(_INIT_BLOCK, self.embedding_dim, generator=g) * 0.01
                lo, hi = max(first, b0), min(last, b0 + _INIT_BLOCK)
                self.weight[lo - first:hi - first].copy_(block[lo - b0:hi - b0])

    def forward(self, local_embeddings, local_labels):
        fn = type(self).__name__
        labels = check_inputs(fn, local_embeddings, local_labels, self.embedding_dim)
        V.check_device(fn, "local_embeddings", local_embeddings, "weight", self.weight)
        n = local_embeddings.shape[0]
        if self.check_sizes:
            check_group_sizes(fn, local_embeddings, self.class_start, self.num_local, self.process_group,
                              self.rank, self.world_size, self.num_classes)
        labels_all = _comm.all_gather_rows(labels, self.process_group)
        check_labels_in_range(fn, labels_all, self.num_classes, self.ignore_index, self.rank, n, self.check_labels)
        w, remap = self.weight, None
        if self.training and self.num_sample < self.num_local:
            local = local_targets(labels_all, self.class_start, self.num_local, self.ignore_index)
            g = torch.Generator(device=self.weight.device)
            g.manual_seed(splitmix64(self._sampling_seed, self.rank, self.step))
            index, remap = sample_classes(local, self.num_local, self.num_sample, g)
            self.last_sample_index = index
            w = self.weight.index_select(0, index)
            self.step += 1
        return shard_loss(fn, local_embeddings, labels, w, self.class_start, self.num_classes, self.scale, self.m1,
                          self.m2, self.m3, self.easy_margin, self.ignore_index, "mean", self.process_group,
                          self.embedding_grad, self.chunk_size, self.rank, self.world_size, labels_all=labels_all,
                          remap=remap)

    # ---- checkpoints -------------------------------------------------------------------

    def get_extra_state(self):
        return {"format": FORMAT, "num_classes": self.num_classes, "world_size": self.world_size,
                "rank": self.rank, "class_start": self.class_start, "num_local": self.num_local,
                "embedding_dim": self.embedding_dim, "generator_seed": self.generator_seed,
                "sampling_seed": self._sampling_seed, "step": self.step}

    def _check_extra_state(self, state):
        n = type(self).__name__
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{n}.load_state_dict: not a {FORMAT} checkpoint")
        mine = self.get_extra_state()
        for key in ("num_classes", "embedding_dim", "world_size", "rank", "class_start", "num_local"):
            if key not in state:
                raise ValueError(f"{n}.load_state_dict: the checkpoint's metadata has no {key!r}")
            if state[key] != mine[key]:
                raise ValueError(f"{n}.load_state_dict: the checkpoint's {key} is {state[key]} but this module's is "
                                 f"{mine[key]}; re-cut a checkpoint saved at another world size with "
                                 "lossext.distributed.reshard(state_dicts, new_world_size)")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the metadata is checked before anything is copied (torch copies the weight first and
        # calls set_extra_state after: a refused checkpoint would already have replaced it)
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self._check_extra_state(extra)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_extra_state(self, state):
        self._check_extra_state(state)
        self.step = int(state.get("step", 0))
        if state.get("sampling_seed") is not None:  # the draws of a resumed run continue the saved run's
            self._sampling_seed = int(state["sampling_seed"])

    @torch.no_grad()
    def gather_full_weight(self, dst=None):
        """The full [num_classes, embedding_dim] weight (C x D floats, nothing more: each shard is
        sent into its rows of one buffer), on every rank (dst None: one broadcast per rank) or
        only on rank dst (point-to-point sends; the others get None). A collective: every rank
        must call it."""
        import torch.distributed as dist
        if dst is not None:
            dst = V.integer(type(self).__name__ + ".gather_full_weight", "dst", dst, 0, self.world_size - 1)
        group = self.process_group
        glob = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
        w = self.weight.detach()
        full = w.new_empty(self.num_classes, self.embedding_dim) if dst is None or dst == self.rank else None
        if full is not None:
            full[self.class_start:self.class_start + self.num_local] = w
        for r in range(self.world_size):
            start, n = shard_range(self.num_classes, self.world_size, r)
            if dst is None:
                dist.broadcast(full[start:start + n], src=glob(r), group=group)
            elif r != dst:
                if self.rank == r:
                    dist.send(w.contiguous(), dst=glob(dst), group=group)
                elif self.rank == dst:
                    dist.recv(full[start:start + n], src=glob(r), group=group)
        return full

    def extra_repr(self):
        s = (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, classes=[{self.class_start}, "
             f"{self.class_start + self.num_local}) of rank {self.rank}/{self.world_size}, m1={self.m1}, m2={self.m2}, "
             f"m3={self.m3}, scale={self.scale}")
        if self.sample_rate < 1.0:
            s += f", sample_rate={self.sample_rate} ({self.num_sample} classes per step)"
        if self.embedding_grad != "exact":
            s += f", embedding_grad={self.embedding_grad!r}"
        return s
