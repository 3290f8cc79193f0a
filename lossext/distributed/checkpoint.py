"""Re-sharding class-parallel checkpoints across world sizes (lossext.distributed).

A ClassParallelMarginLoss state dict is {'weight': [num_local, D], '_extra_state': {...}} with
the shard's metadata (format, num_classes, world_size, rank, class_start, num_local,
embedding_dim, generator_seed, step). The shards are insightface's contiguous balanced ranges
(shard_range), so concatenating them in rank order gives the full [C, D] matrix, which is then
cut again for the new world size. Bare insightface PartialFC_V2 dicts ({'weight'} only, one per
rank, in rank order) are accepted too: their row counts are checked against the formula.
"""
import copy

import torch

from .functional import shard_range

__all__ = ["reshard", "reshard_tensors"]

FORMAT = "lossext.distributed.ClassParallelMarginLoss/1"
_FN = "lossext.distributed.reshard"


def _meta(sd):
    return sd.get("_extra_state") if isinstance(sd, dict) else None


def _ordered(state_dicts):
    if not isinstance(state_dicts, (list, tuple)) or not state_dicts:
        raise ValueError(f"{_FN}: state_dicts must be a non-empty list of per-rank state dicts")
    for i, sd in enumerate(state_dicts):
        if not isinstance(sd, dict) or "weight" not in sd:
            raise ValueError(f"{_FN}: state_dicts[{i}] has no 'weight' entry")
    metas = [_meta(sd) for sd in state_dicts]
    if all(m is None for m in metas):  # insightface: one dict per rank, in rank order
        world = len(state_dicts)
        num_classes = sum(sd["weight"].shape[0] for sd in state_dicts)
        for r, sd in enumerate(state_dicts):
            _, n = shard_range(num_classes, world, r)
            if sd["weight"].shape[0] != n:
                raise ValueError(f"{_FN}: state_dicts[{r}] has {sd['weight'].shape[0]} rows, but rank {r} of "
                                 f"{world} holds {n} of {num_classes} classes (insightface's shard formula); "
                                 "pass the dicts in rank order")
        return list(state_dicts), None, num_classes
    if any(m is None for m in metas):
        raise ValueError(f"{_FN}: some state dicts have lossext metadata ('_extra_state') and some do not")
    world = metas[0]["world_size"]
    num_classes = metas[0]["num_classes"]
    if len(state_dicts) != world:
        raise ValueError(f"{_FN}: the checkpoint was saved at world size {world} but {len(state_dicts)} state dicts "
                         "were given (pass every rank's)")
    by_rank = {}
    for m, sd in zip(metas, state_dicts):
        if m.get("format") != FORMAT:
            raise ValueError(f"{_FN}: unknown checkpoint format {m.get('format')!r}")
        if m["world_size"] != world or m["num_classes"] != num_classes:
            raise ValueError(f"{_FN}: the state dicts come from different runs (world_size/num_classes differ)")
        by_rank[m["rank"]] = sd
    if sorted(by_rank) != list(range(world)):
        raise ValueError(f"{_FN}: ranks {sorted(by_rank)} given, expected each of 0..{world - 1} once")
    ordered = [by_rank[r] for r in range(world)]
    for r, sd in enumerate(ordered):
        start, n = shard_range(num_classes, world, r)
        m = _meta(sd)
        if (m["class_start"], m["num_local"], sd["weight"].shape[0]) != (start, n, n):
            raise ValueError(f"{_FN}: rank {r}'s shard is classes [{m['class_start']}, "
                             f"{m['class_start'] + m['num_local']}) with {sd['weight'].shape[0]} rows; "
                             f"expected [{start}, {start + n})")
    return ordered, metas[0], num_classes


def _split(full, num_classes, new_world_size):
    out = []
    for r in range(new_world_size):
        start, n = shard_range(num_classes, new_world_size, r)
        out.append(full.narrow(0, start, n).clone())
    return out


def reshard(state_dicts, new_world_size):
    """The state dicts of a checkpoint saved at one world size (one per rank, any order; or bare
    insightface PartialFC_V2 dicts in rank order), re-cut for new_world_size ranks. Returns a
    list of CPU state dicts, entry r for rank r (load it with ClassParallelMarginLoss.load_state_dict;
    bare insightface dicts get the metadata too, at step 0). The seed and step are copied; the classes sampled afterwards differ from those a run at the old world
    size would draw (each rank draws from its own generator)."""
    if isinstance(new_world_size, bool) or not isinstance(new_world_size, int) or new_world_size < 1:
        raise ValueError(f"{_FN}: new_world_size must be an int >= 1, got {new_world_size!r}")
    ordered, meta, num_classes = _ordered(state_dicts)
    if new_world_size > num_classes:
        raise ValueError(f"{_FN}: new_world_size = {new_world_size} exceeds num_classes = {num_classes} (every rank "
                         "needs a class)")
    full = torch.cat([sd["weight"].detach().cpu() for sd in ordered])  # (shards may sit on different devices)
    if meta is None:  # insightface's dicts: the metadata a ClassParallelMarginLoss needs to load them
        meta = {"format": FORMAT, "num_classes": num_classes, "embedding_dim": full.shape[1],
                "generator_seed": None, "sampling_seed": None, "step": 0}
    out = []
    for r, w in enumerate(_split(full, num_classes, new_world_size)):
        start, n = shard_range(num_classes, new_world_size, r)
        m = copy.deepcopy(meta)
        m.update(world_size=new_world_size, rank=r, class_start=start, num_local=n)
        out.append({"weight": w, "_extra_state": m})
    return out


def reshard_tensors(tensors, new_world_size):
    """Per-class tensors [num_local_r, ...] of every rank (in rank order: the shards of one
    [C, ...] tensor, e.g. an optimizer's momentum_buffer, exp_avg, exp_avg_sq for the weight),
    re-cut for new_world_size ranks. For an optimizer state dict, apply it to each per-parameter
    tensor of the shard weight and copy the scalars (step) as they are."""
    fn = "lossext.distributed.reshard_tensors"
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError(f"{fn}: tensors must be a non-empty list of per-rank tensors")
    num_classes = sum(t.shape[0] for t in tensors)
    for r, t in enumerate(tensors):
        if t.shape[0] != shard_range(num_classes, len(tensors), r)[1]:
            raise ValueError(f"{fn}: tensors[{r}] has {t.shape[0]} rows; not the shards of {num_classes} classes "
                             f"over {len(tensors)} ranks in rank order")
    if isinstance(new_world_size, bool) or not isinstance(new_world_size, int) or not 1 <= new_world_size <= num_classes:
        raise ValueError(f"{fn}: new_world_size must be an int in [1, {num_classes}], got {new_world_size!r}")
    return _split(torch.cat([t.detach().cpu() for t in tensors]), num_classes, new_world_size)
