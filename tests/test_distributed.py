"""lossext.distributed: class-parallel margin softmax over torch.distributed (gloo, processes on
127.0.0.1). Three spawns (W = 2, then 3, then 1; lossext/testing/distributed.py runs the checks
inside them) plus pure tests of the shard formula, the sampling and the re-sharding."""
import os

import pytest
import torch
import torch.distributed as dist

import lossext.distributed as LD
from lossext.distributed.functional import splitmix64
from lossext.testing import distributed as W

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TOL = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist"))
    results = {2: W.spawn(2, out)}
    os.makedirs(os.path.join(out, "resharded"))
    saved = [torch.load(os.path.join(out, f"ckpt_2_{r}.pt")) for r in range(2)]
    for new in (3, 1):
        for r, sd in enumerate(LD.reshard(saved, new)):
            torch.save(sd, os.path.join(out, "resharded", f"ckpt_{new}_{r}.pt"))
    results[3] = W.spawn(3, out)
    results[1] = W.spawn(1, out)
    return results


def _all(worlds):
    return [(w, r, res) for w, ranks in worlds.items() for r, res in enumerate(ranks)]


def test_workers_ran_without_errors(worlds):
    for w, r, res in _all(worlds):
        assert not res["errors"], f"world {w} rank {r}:\n" + "\n".join(res["errors"])


def test_equivalence_with_the_single_process_fused_op(worlds):
    """Loss, embedding and weight-shard gradients equal fused_linear_margin_cross_entropy on
    the full problem: CosFace, ArcFace, combined; float32 and float64; uneven shards; all
    labels in one shard; ignored rows; reductions."""
    for w, r, res in _all(worlds):
        eq = res["equivalence"]
        assert len(eq) == 2 * 2 * 3 + 3 * 2  # (dtype, labels, margin) at 'mean', plus 'sum', 'none' in float64
        for (dtype, labels, margin, red), errs in eq.items():
            for what, e in zip(("loss", "embedding grad", "weight grad"), errs):
                assert e <= TOL[dtype], (w, r, dtype, labels, margin, red, what, e)


def test_world_size_embedding_grad(worlds):
    for w, r, res in _all(worlds):
        assert res["world_size_grad"] <= 1e-14, (w, r)


def test_module_init_is_the_same_matrix_at_every_world_size(worlds):
    ref = worlds[1][0]["init_weight"]
    for w, r, res in _all(worlds):
        assert torch.equal(res["init_weight"], ref), (w, r)
        assert res["module_vs_fused"] <= 1e-5, (w, r)
        assert torch.std(ref).item() == pytest.approx(0.01, rel=0.2)


def test_checkpoint_saved_at_two_loads_at_three_and_one(worlds):
    saved = worlds[2][0]["after_step_loss"]
    for w in (3, 1):
        for r, res in enumerate(worlds[w]):
            assert res["loaded_loss"] == pytest.approx(saved, rel=1e-6), (w, r)
            assert res["loaded_step"] == 5
            assert torch.equal(res["loaded_weight"], worlds[2][0]["after_step_weight"]), (w, r)
    for w, r, res in _all(worlds):
        assert "reshard" in res["wrong_world_refused"], (w, r, res["wrong_world_refused"])
        assert res["refused_left_weight"], (w, r)  # refused before the weight was copied
        if r == 0:
            assert torch.equal(res["gathered_on_dst"], res["after_step_weight"]), (w, r)
        else:
            assert res["gathered_on_dst"] is None


def test_sampling(worlds):
    for w, r, res in _all(worlds):
        for rate, runs in res["sampling"].items():
            same_a, same_b, other = runs
            for run in runs:
                assert run["positives_kept"], (w, r, rate)
                # the fused op on the sampled classes of all ranks: loss, embedding and weight gradients
                assert run["ref"] <= 1e-10 and run["grad_x"] <= 1e-10, (w, r, rate, run)
                assert run["size"] == 0 or run["grad_w"] <= 1e-10, (w, r, rate, run)
                assert run["unsampled_grad_zero"], (w, r, rate)
                assert run["size"] == max(run["num_sample"], run["n_pos"]) or (
                    run["n_pos"] < run["num_sample"] and run["size"] == run["num_sample"]), (w, r, rate, run)
            assert same_a["index"] == same_b["index"] and same_a["loss"] == same_b["loss"], (w, r, rate)
        assert res["rate_one_equal"], (w, r)
    # another seed, another step: other draws (where negatives are drawn at all)
    runs = [run for _, _, res in _all(worlds) for rs in res["sampling"].values() for run in rs]
    assert any(a["index"] != b["index"] for _, _, res in _all(worlds) for a, _, b in res["sampling"].values())
    assert any(run["next_index"] != run["index"] for run in runs)


def test_out_of_range_label_raises_on_every_rank(worlds):
    for w in (2, 3):
        for r, res in enumerate(worlds[w]):
            msg = res["bad_label"]
            if r == w - 1:
                assert f"local_labels has values [{W.C}] at indices [2]" in msg, msg
            else:
                assert f"rank(s) [{w - 1}] passed labels outside [0, {W.C})" in msg, msg
            # check_labels=False: a NaN loss, NaN weight gradients and the bad row's embedding gradient
            # NaN (on its rank), never a silent finite value
            assert res["unchecked_bad_label"] == (True, r == w - 1, True), (w, r, res["unchecked_bad_label"])


def test_unequal_batch_sizes_raise_on_every_rank(worlds):
    for w in (2, 3):
        for r, res in enumerate(worlds[w]):
            assert f"got {[W.N - 1] + [W.N] * (w - 1)} on ranks 0..{w - 1}" in res["unequal_sizes"], res["unequal_sizes"]


def test_a_rank_that_fails_early_makes_the_others_time_out(worlds):
    for w in (2, 3):
        for r, res in enumerate(worlds[w]):
            outcome, seconds = res["timeout"]
            if r == 0:
                assert outcome == "skipped"
            else:
                # the 3 s timeout of the group, not a hang (and not a peer that went away)
                assert outcome.startswith(("RuntimeError", "DistBackendError")) and 2.5 < seconds < 30, (
                    w, r, outcome, seconds)


# ---- pure tests (no process group) ----------------------------------------------------------

def test_shard_range_is_insightfaces_formula():
    for c in (1, 2, 7, 37, 100, 1001):
        for w in range(1, min(c, 9) + 1):
            start = 0
            for r in range(w):
                s, n = LD.shard_range(c, w, r)
                assert (s, n) == ((c // w) * r + min(r, c % w), c // w + (r < c % w))
                assert s == start
                start += n
            assert start == c
    with pytest.raises(ValueError, match="rank must be in"):
        LD.shard_range(10, 2, 2)


def test_sample_classes():
    g = torch.Generator()
    target = torch.tensor([3, -1, 7, 3, -1, 0])
    for seed in range(20):
        g.manual_seed(seed)
        index, remap = LD.sample_classes(target, 50, 5, g)
        assert index.shape == (5,) and torch.all(index[1:] > index[:-1])
        assert {0, 3, 7} <= set(index.tolist())
        assert torch.equal(torch.where(target >= 0, index[remap.clamp_min(0)], -1), target)
    g.manual_seed(0)
    a = LD.sample_classes(target, 50, 5, g)[0]
    g.manual_seed(0)
    assert torch.equal(a, LD.sample_classes(target, 50, 5, g)[0])
    # more gathered rows than num_sample: positives beyond num_sample are all kept (only them)
    g.manual_seed(0)
    index, remap = LD.sample_classes(target, 50, 2, g)
    assert index.tolist() == [0, 3, 7]
    assert remap.tolist() == [1, -1, 2, 1, -1, 0]
    seeds = {splitmix64(1, r, step) for r in range(4) for step in range(50)}
    assert len(seeds) == 200 and all(0 <= v < 2 ** 63 for v in seeds)


def _sds(c, w, d=3):
    full = torch.arange(c * d, dtype=torch.float32).view(c, d)
    out = []
    for r in range(w):
        s, n = LD.shard_range(c, w, r)
        out.append({"weight": full[s:s + n].clone(),
                    "_extra_state": {"format": "lossext.distributed.ClassParallelMarginLoss/1", "num_classes": c,
                                     "world_size": w, "rank": r, "class_start": s, "num_local": n,
                                     "embedding_dim": d, "generator_seed": 5, "step": 12}})
    return full, out


def test_reshard_round_trips():
    full, sds = _sds(37, 2)
    for path in ((3, 1, 2), (5, 4), (1,)):
        cur = sds[::-1]  # any order
        for w in path:
            cur = LD.reshard(cur, w)
            assert torch.equal(torch.cat([sd["weight"] for sd in cur]), full)
            assert [sd["_extra_state"]["rank"] for sd in cur] == list(range(w))
            assert all(sd["_extra_state"]["step"] == 12 for sd in cur)
    # bare insightface dicts (weight only, rank order)
    bare = [{"weight": sd["weight"]} for sd in sds]
    out = LD.reshard(bare, 3)
    assert torch.equal(torch.cat([sd["weight"] for sd in out]), full)
    assert [(sd["_extra_state"]["class_start"], sd["_extra_state"]["num_local"]) for sd in out] == [(0, 13), (13, 12),
                                                                                                   (25, 12)]
    assert out[1]["_extra_state"]["embedding_dim"] == 3 and out[1]["_extra_state"]["step"] == 0
    with pytest.raises(ValueError, match="insightface's shard formula"):
        LD.reshard(bare[::-1], 3)
    with pytest.raises(ValueError, match="pass every rank's"):
        LD.reshard(sds[:1], 3)
    parts = LD.reshard_tensors([sd["weight"] for sd in sds], 4)
    assert torch.equal(torch.cat(parts), full) and len(parts) == 4


def test_module_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        LD.ClassParallelMarginLoss(8, 10)


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                       "train_class_parallel.py")


@pytest.mark.skipif(not os.path.isfile(EXAMPLE), reason="runs from the source tree only")
def test_example_script_trains_and_reshards(tmp_path):
    """examples/train_class_parallel.py (DDP backbone, sampled sharded head) runs on 2 gloo
    processes; its loss falls and its checkpoint re-shards."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, EXAMPLE, "--spawn", "2", "--steps", "40", "--classes", "50", "--dim", "16",
                          "--batch", "16", "--sample-rate", "0.5", "--save", str(tmp_path)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    losses = [float(line.split()[-1]) for line in out.stdout.splitlines() if line.startswith("step")]
    assert len(losses) >= 3 and losses[-1] < 0.5 * losses[0], out.stdout
    assert "re-sharded for world size 3: rows per rank [17, 17, 16]" in out.stdout, out.stdout
    assert sorted(os.listdir(tmp_path)) == ["class_parallel_rank0.pt", "class_parallel_rank1.pt"]
