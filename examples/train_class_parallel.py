"""Class-parallel ArcFace training with lossext.distributed: a DDP backbone, class weights sharded
over the ranks (docs/distributed.md).

    torchrun --nproc-per-node 2 examples/train_class_parallel.py             # NCCL on GPUs, else gloo
    torchrun --nproc-per-node 2 examples/train_class_parallel.py --backend gloo --classes 100000
    python examples/train_class_parallel.py --spawn 2 --steps 20             # no torchrun: spawns itself

The data is synthetic: each class has a random prototype in the input space and the samples are
noisy copies, so the loss falls as the backbone and the sharded head learn. The backbone sits in
DDP, which averages its gradients, so the head uses embedding_grad='world_size'; the head's
shards stay out of DDP, in their own parameter group. At the end every rank saves its shard
(with metadata), and rank 0 shows how to re-shard the checkpoint for another world size.
"""
import argparse
import datetime
import os
import tempfile

import torch
import torch.distributed as dist
from torch import nn

import lossext.distributed as LD


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("nccl", "gloo"), default=None)
    ap.add_argument("--classes", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64, help="per rank")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    # small: the normalized head's gradient scales with 1 / |w|, and normal(0, 0.01) rows have
    # |w| ~ 0.01 sqrt(D)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--scale", type=float, default=32.0)
    ap.add_argument("--margin", type=float, default=0.3, help="ArcFace's additive angular margin m2")
    ap.add_argument("--save", default=None, help="folder for the per-rank checkpoints (default: a temp dir)")
    ap.add_argument("--spawn", type=int, default=0, help="start this many processes without torchrun (gloo)")
    return ap.parse_args(argv)


def train(args):
    rank, world = dist.get_rank(), dist.get_world_size()
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    in_dim = 64
    # the synthetic data: the same prototypes on every rank, a different sample stream per rank
    protos = torch.randn(args.classes, in_dim, generator=torch.Generator().manual_seed(0)).to(device)
    data_gen = torch.Generator(device=device).manual_seed(1000 + rank)

    torch.manual_seed(0)  # the same backbone on every rank (DDP also broadcasts it)
    backbone = nn.Sequential(nn.Linear(in_dim, 256), nn.ReLU(), nn.Linear(256, args.dim)).to(device)
    backbone = nn.parallel.DistributedDataParallel(backbone, device_ids=[device.index] if cuda else None)
    head = LD.ClassParallelMarginLoss(args.dim, args.classes, m2=args.margin, scale=args.scale, sample_rate=args.sample_rate,
                                      embedding_grad="world_size", generator_seed=0).to(device)
    opt = torch.optim.SGD([{"params": backbone.parameters()},
                           {"params": head.parameters()}], lr=args.lr, momentum=0.9)
    if rank == 0:
        print(f"world {world}, {dist.get_backend()}; {head}")
    for step in range(args.steps):
        labels = torch.randint(0, args.classes, (args.batch,), generator=data_gen, device=device)
        x = protos[labels] + 0.3 * torch.randn(args.batch, in_dim, generator=data_gen, device=device)
        loss = head(backbone(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}")

    folder = args.save or tempfile.gettempdir()
    path = os.path.join(folder, f"class_parallel_rank{rank}.pt")
    torch.save(head.state_dict(), path)
    dist.barrier()
    if rank == 0:
        sds = [torch.load(os.path.join(folder, f"class_parallel_rank{r}.pt")) for r in range(world)]
        for new in sorted({1, world + 1}):
            if new <= args.classes:
                shards = LD.reshard(sds, new)
                print(f"re-sharded for world size {new}: rows per rank {[sd['weight'].shape[0] for sd in shards]}")
    head.eval()
    with torch.no_grad():  # evaluation: no sampling, all classes
        labels = torch.randint(0, args.classes, (args.batch,), generator=data_gen, device=device)
        x = protos[labels] + 0.3 * torch.randn(args.batch, in_dim, generator=data_gen, device=device)
        eval_loss = head(backbone(x), labels)
    if rank == 0:
        print(f"eval loss (all {args.classes} classes): {eval_loss.item():.4f}")
    return float(eval_loss)


def _spawned(rank, world, store, args):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        train(args)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    args = parse(argv)
    if args.spawn:
        import torch.multiprocessing as mp
        store = os.path.join(tempfile.mkdtemp(), "store")
        mp.start_processes(_spawned, args=(args.spawn, store, args), nprocs=args.spawn, start_method="spawn")
        return
    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)  # torchrun's environment (MASTER_ADDR, RANK, WORLD_SIZE, ...)
    try:
        train(args)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
