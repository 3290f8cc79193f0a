"""PartialFC-style negative class sampling for one rank's shard (An et al., "Partial FC: Training
10 Million Identities on a Single Machine", ICCVW 2021, arXiv:2010.05222, Method, "Approximate
Strategy"; insightface PartialFC_V2.sample): the positive classes of the gathered batch are always kept, negatives are
drawn uniformly, and the labels are remapped to the sampled set.

Without a host sync in the usual case (num_sample >= the gathered batch, so the positives always
fit): a random permutation ranks the classes (unique scores: no ties, unlike insightface's
float32 rand, where topk breaks ties by position), the positives get the lowest score, the
num_sample lowest scores are kept (topk) and sorted, and searchsorted remaps the labels. When the
gathered batch is larger than num_sample (a static condition), the number of positives decides
the shape: that case syncs once, and if the positives exceed num_sample only they are used
(insightface's rule).
"""
import torch

__all__ = ["sample_classes"]


def sample_classes(target_local, num_local, num_sample, generator):
    """Sampled class indices of the shard and the remapped targets.

    target_local: [N_tot] int64, the shard-local target of each gathered row, -1 where it is on
    another shard or ignored. Returns (index [K] int64 ascending, the shard rows to use;
    remapped [N_tot], each target's position in index, -1 kept). K = num_sample, or the number
    of positives when they exceed it.
    """
    dev = target_local.device
    pos_slot = torch.where(target_local >= 0, target_local, num_local)  # num_local: a spare slot
    if target_local.shape[0] > num_sample:
        mask = torch.zeros(num_local + 1, dtype=torch.bool, device=dev)
        mask[pos_slot] = True
        n_pos = int(mask[:num_local].sum())  # the host sync of this case
        if n_pos >= num_sample:
            index = mask[:num_local].nonzero().flatten()
            return index, _remap(index, target_local)
    score = torch.empty(num_local + 1, dtype=torch.int64, device=dev)
    score[:num_local] = torch.randperm(num_local, generator=generator, device=dev)
    score.index_fill_(0, pos_slot, -1)  # positives first (the spare slot is cut off below)
    index = torch.topk(score[:num_local], num_sample, largest=False, sorted=False).indices.sort().values
    return index, _remap(index, target_local)


def _remap(index, target_local):
    pos = torch.searchsorted(index, target_local.clamp_min(0))
    return torch.where(target_local >= 0, pos, -1)
