"""Multi-process checks of lossext.distributed (tests/test_distributed.py): a world of W gloo
processes on 127.0.0.1, spawned once per world size, each writing its findings to
OUT/result_W_rank.pt for the parent's asserts.

Everything here runs inside the spawned workers; the parent only spawns and reads files.
"""
import datetime
import os
import time
import traceback

import torch

N, D, C, CHUNK = 4, 8, 37, 5  # per-rank batch, embedding size, classes (uneven at W = 2, 3), multi-chunk
MARGINS = {"cosface": (1.0, 0.0, 0.35), "arcface": (1.0, 0.5, 0.0), "combined": (1.0, 0.3, 0.2)}
SCALE = 30.0
TIMEOUT_S = 10


def data(world, dtype, seed=0, labels="spread"):
    """The group's embeddings [W N, D], the full weight [C, D] and the labels [W N] (the same on
    every rank: a fixed seed). labels: 'spread' (some ignored), 'one_shard' (all in [0, 5))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(world * N, D, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(C, D, generator=g, dtype=torch.float64).to(dtype)
    if labels == "one_shard":
        y = torch.randint(0, 5, (world * N,), generator=g)
    else:
        y = torch.randint(0, C, (world * N,), generator=g)
        y[1] = -100  # ignored rows
        if world * N > 6:
            y[6] = -100
    return x, w, y


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _equivalence(res, rank, world):
    import lossext.distributed as LD
    import lossext.functional as LF
    start, n = LD.shard_range(C, world, rank)
    rows = slice(rank * N, (rank + 1) * N)
    for dtype in (torch.float32, torch.float64):
        for labels in ("spread", "one_shard"):
            for name, (m1, m2, m3) in MARGINS.items():
                for reduction in ("mean", "sum", "none"):
                    if reduction != "mean" and (labels != "spread" or dtype != torch.float64):
                        continue
                    X, W, Y = data(world, dtype, labels=labels)
                    x = X[rows].clone().requires_grad_(True)
                    w = W[start:start + n].clone().requires_grad_(True)
                    loss = LD.class_parallel_margin_cross_entropy(
                        x, Y[rows], w, start, C, scale=SCALE, m1=m1, m2=m2, m3=m3, reduction=reduction,
                        chunk_size=CHUNK)
                    gout = torch.linspace(0.5, 1.5, N, dtype=loss.dtype) if reduction == "none" else None
                    loss.backward(gout)
                    Xr, Wr = X.clone().requires_grad_(True), W.clone().requires_grad_(True)
                    ref = LF.fused_linear_margin_cross_entropy(Xr, Wr, Y, scale=SCALE, m1=m1, m2=m2, m3=m3,
                                                               reduction=reduction)
                    if reduction == "none":
                        gfull = torch.cat([torch.linspace(0.5, 1.5, N, dtype=ref.dtype)] * world)
                        ref.backward(gfull)
                        ref_loss = ref.detach()[rows]
                    else:
                        ref.backward()
                        ref_loss = ref.detach()
                    key = (str(dtype).split(".")[-1], labels, name, reduction)
                    res.setdefault("equivalence", {})[key] = (
                        _rel(loss.detach(), ref_loss), _rel(x.grad, Xr.grad[rows]), _rel(w.grad, Wr.grad[start:start + n]))
    # embedding_grad='world_size': W times the exact gradient
    X, W, Y = data(world, torch.float64)
    grads = []
    for mode in ("exact", "world_size"):
        x = X[rows].clone().requires_grad_(True)
        LD.class_parallel_margin_cross_entropy(x, Y[rows], W[start:start + n], start, C, scale=SCALE, m2=0.5,
                                               embedding_grad=mode).backward()
        grads.append(x.grad)
    res["world_size_grad"] = _rel(grads[1], world * grads[0])


def _module(res, rank, world, out):
    import lossext.distributed as LD
    import lossext.functional as LF
    X, _, Y = data(world, torch.float32, seed=3)
    rows = slice(rank * N, (rank + 1) * N)
    head = LD.ClassParallelMarginLoss(D, C, m2=0.5, scale=SCALE, generator_seed=7, chunk_size=CHUNK)
    full = head.gather_full_weight()
    res["init_weight"] = full.clone()  # the same matrix at every world size
    loss = head(X[rows], Y[rows])
    res["module_vs_fused"] = _rel(loss.detach(), LF.fused_linear_margin_cross_entropy(X, full, Y, scale=SCALE, m2=0.5))
    # one SGD step, then a checkpoint (the parent re-shards it for the other world sizes)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    loss.backward()
    opt.step()
    # the checkpoint's loss on one batch of 12 rows at every world size (12 / W per rank)
    X12, _, Y12 = data(3, torch.float32, seed=4)
    rows12 = slice(rank * (12 // world), (rank + 1) * (12 // world))
    head.eval()
    with torch.no_grad():
        res["after_step_loss"] = float(head(X12[rows12], Y12[rows12]))  # (another batch size: allowed)
    res["after_step_weight"] = head.gather_full_weight().clone()
    res["gathered_on_dst"] = [t if t is None else t.clone() for t in (head.gather_full_weight(dst=0),)][0]
    head.step = 5  # as after five sampled steps: the checkpoint carries the counter
    torch.save(head.state_dict(), os.path.join(out, f"ckpt_{world}_{rank}.pt"))
    src = os.path.join(out, "resharded", f"ckpt_{world}_{rank}.pt")
    if os.path.exists(src):  # a checkpoint saved at another world size, re-cut for this one
        fresh = LD.ClassParallelMarginLoss(D, C, m2=0.5, scale=SCALE, generator_seed=99, chunk_size=CHUNK).eval()
        fresh.load_state_dict(torch.load(src))
        with torch.no_grad():
            res["loaded_loss"] = float(fresh(X12[rows12], Y12[rows12]))
        res["loaded_step"] = fresh.step
        res["loaded_weight"] = fresh.gather_full_weight().clone()
    before = head.weight.detach().clone()
    try:  # a checkpoint of another world size is refused, naming reshard, before anything is copied
        other = {"weight": torch.zeros(head.num_local, D),
                 "_extra_state": dict(head.get_extra_state(), world_size=world + 1)}
        head.load_state_dict(other)
        res["wrong_world_refused"] = ""
    except (ValueError, RuntimeError) as e:
        res["wrong_world_refused"] = str(e)
    res["refused_left_weight"] = bool(torch.equal(head.weight.detach(), before))


def _sampling(res, rank, world):
    import torch.distributed as dist

    import lossext.distributed as LD
    import lossext.functional as LF
    X, _, Y = data(world, torch.float64, seed=5)
    rows = slice(rank * N, (rank + 1) * N)
    # rate 0.5: num_sample >= W N at W = 1, 2 (no sync), < W N at W = 3; rate 0.1: num_sample < W N
    # (the positives may overflow it: then only they are used)
    for rate in (0.5, 0.1):
        found = []
        for seed in (11, 11, 12):
            head = LD.ClassParallelMarginLoss(D, C, m2=0.5, scale=SCALE, sample_rate=rate, generator_seed=seed,
                                              chunk_size=CHUNK).double()
            x = X[rows].clone().requires_grad_(True)
            loss = head(x, Y[rows])
            loss.backward()
            index = head.last_sample_index
            with torch.no_grad():  # a second step draws again (another step, another draw)
                head(X[rows], Y[rows])
            next_index = head.last_sample_index.tolist()
            global_index = index + head.class_start
            every = [None] * world
            dist.all_gather_object(every, global_index.tolist())
            union = torch.tensor(sorted(sum(every, [])))
            # the same loss: the fused op on the sampled classes of all ranks, labels remapped
            full = head.gather_full_weight()
            valid = Y != -100
            remapped = torch.where(valid, torch.searchsorted(union, Y.clamp_min(0)), -100)
            Xr = X.clone().requires_grad_(True)
            Wu = full[union].clone().requires_grad_(True)
            ref = LF.fused_linear_margin_cross_entropy(Xr, Wu, remapped, scale=SCALE, m2=0.5)
            ref.backward()
            mine = torch.searchsorted(union, global_index)  # this rank's sampled classes in the union
            positives = set(Y[valid & (Y >= head.class_start) & (Y < head.class_start + head.num_local)].tolist())
            zero_rows = head.weight.grad.abs().sum(1) == 0
            unsampled = torch.ones(head.num_local, dtype=torch.bool)
            unsampled[index] = False
            found.append({"loss": loss.item(), "index": index.tolist(), "ref": _rel(loss.detach(), ref.detach()),
                          "grad_x": _rel(x.grad, Xr.grad[rows]), "grad_w": _rel(head.weight.grad[index], Wu.grad[mine]),
                          "next_index": next_index,
                          "positives_kept": positives <= set(global_index.tolist()),
                          "size": len(index), "num_sample": head.num_sample, "n_pos": len(positives),
                          "unsampled_grad_zero": bool(zero_rows[unsampled].all())})
        res.setdefault("sampling", {})[rate] = found
    # sample_rate = 1: bitwise the unsampled loss (the sampling code is skipped)
    head = LD.ClassParallelMarginLoss(D, C, m2=0.5, scale=SCALE, sample_rate=1.0, generator_seed=1).double()
    a = head(X[rows], Y[rows])
    b = LD.class_parallel_margin_cross_entropy(X[rows], Y[rows], head.weight, head.class_start, C, scale=SCALE, m2=0.5)
    res["rate_one_equal"] = bool(torch.equal(a, b))


def _failures(res, rank, world):
    import torch.distributed as dist

    import lossext.distributed as LD
    X, W, Y = data(world, torch.float32)
    rows = slice(rank * N, (rank + 1) * N)
    start, n = LD.shard_range(C, world, rank)
    y = Y[rows].clone()
    if rank == world - 1:
        y[2] = C  # out of range on the last rank
    try:
        LD.class_parallel_margin_cross_entropy(X[rows], y, W[start:start + n], start, C)
        res["bad_label"] = ""
    except ValueError as e:
        res["bad_label"] = str(e)
    # unchecked: that row's loss, so the mean, is NaN (never the finite lse of a row with no target)
    x = X[rows].clone().requires_grad_(True)
    ws = W[start:start + n].clone().requires_grad_(True)
    loss = LD.class_parallel_margin_cross_entropy(x, y, ws, start, C, check_labels=False)
    loss.backward()
    res["unchecked_bad_label"] = (bool(loss.isnan()), bool(x.grad.isnan().any()), bool(ws.grad.isnan().any()))
    # unequal batch sizes: every rank raises, naming the sizes
    try:
        LD.class_parallel_margin_cross_entropy(X[rows][:N - (rank == 0)], Y[rows][:N - (rank == 0)],
                                               W[start:start + n], start, C)
        res["unequal_sizes"] = ""
    except ValueError as e:
        res["unequal_sizes"] = str(e)
    # a rank that fails before the collective: the others time out instead of hanging forever
    group = dist.new_group(timeout=datetime.timedelta(seconds=3))
    dist.barrier()
    t0 = time.monotonic()
    if rank == 0:  # alive, but never joins: the others must fail at the group's timeout
        time.sleep(6)
        res["timeout"] = ("skipped", 0.0)
    else:
        try:
            LD.class_parallel_margin_cross_entropy(X[rows], Y[rows], W[start:start + n], start, C, process_group=group)
            res["timeout"] = ("returned", time.monotonic() - t0)
        except Exception as e:  # gloo raises a RuntimeError (DistBackendError) at the timeout
            res["timeout"] = (type(e).__name__ + ": " + str(e)[:200], time.monotonic() - t0)


def worker(rank, world, out, store):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    res = {"errors": []}
    for part in (_equivalence, _module, _sampling):
        try:
            part(res, rank, world) if part is not _module else part(res, rank, world, out)
        except Exception:
            res["errors"].append(traceback.format_exc())
    if world > 1:
        try:
            _failures(res, rank, world)
        except Exception:
            res["errors"].append(traceback.format_exc())
    torch.save(res, os.path.join(out, f"result_{world}_{rank}.pt"))
    # no destroy_process_group: after the timeout check a rank's peer may be gone
    os._exit(0)


def spawn(world, out, deadline_s=150):
    """Runs worker on `world` processes; returns their result dicts. Fails (never hangs) when a
    worker does not finish by the deadline."""
    import torch.multiprocessing as mp
    store = os.path.join(out, f"store_{world}")
    ctx = mp.start_processes(worker, args=(world, out, store), nprocs=world, join=False, start_method="spawn")
    t_end = time.monotonic() + deadline_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > t_end:
                raise TimeoutError(f"world {world}: the workers did not finish in {deadline_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(os.path.join(out, f"result_{world}_{r}.pt"), weights_only=False) for r in range(world)]
