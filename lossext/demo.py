"""python -m lossext demo: what lossext is for, training.

Trains a small embedding network on scikit-learn's digits (shipped inside scikit-learn, no
download): classes 0-6 for training, 80/20 split into train and held-out images. It compares
plain softmax with lossext's CosFace, ArcFace and SphereFace (and pytorch-metric-learning's
ArcFace when installed), same network, seed and epochs, on open-set verification of the unseen
digits 7-9 (every pair of their images, cosine similarity: TAR at FAR 1e-2 and 1e-3, ROC AUC)
and on closed-set accuracy of the held-out images of 0-6. Then a small keypoint task made from
the same images (the ink's centroid and its top-, bottom-, left- and right-most points) with
L2, L1, lossext's Wing and Adaptive Wing, reporting the normalized mean error.

    python -m lossext demo [--device cpu|cuda] [--quick] [--epochs N] [--seed S] [--out DIR]

Writes to DIR (default demo_out/): results.csv, results.md, embeddings_2d.png (2-D features of
softmax and ArcFace, as the CosFace and ArcFace papers draw them) and roc.png.
"""
import argparse
import csv
import importlib
import logging
import math
import os
import sys
import time

PROG = "python -m lossext demo"
KNOWN = 7                 # digits 0-6 train the network; 7-9 are the open set
NORMALIZER = "image side"  # NME: mean point-to-point error / the image side (8 pixels = 1.0)


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu or cuda (or cuda:N) (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="one short epoch per run (a smoke test)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of each embedding and keypoint run (default: 15; the 2-D runs take twice as many)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s: this network's ops are too small to split, "
                        "and on a busy machine the threads' barriers stall)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the batches (default: 0)")
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: %(default)s)")
    return p


def _importable(module):
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def _missing_deps():
    need = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
    return [pkg for mod, pkg in need.items() if not _importable(mod)]


# ---------------------------------------------------------------------------------------- data

def load_data(seed, device):
    """Digit images [N, 1, 8, 8] in [0, 1] and labels, split: train / held-out (80/20 of 0-6, a
    seeded permutation) and unseen (every image of 7-9)."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    known = torch.nonzero(y < KNOWN).squeeze(1)
    known = known[torch.randperm(len(known), generator=torch.Generator().manual_seed(seed))]
    n_train = int(0.8 * len(known))
    parts = {"train": known[:n_train], "held": known[n_train:], "unseen": torch.nonzero(y >= KNOWN).squeeze(1)}
    return {k: (x[i].to(device), y[i].to(device)) for k, i in parts.items()}


def keypoints(images):
    """[N, 5, 2] (x, y) in [0, 1] (pixel centres (i + 0.5) / 8): the intensity-weighted centroid
    of the ink and the top-, bottom-, left- and right-most ink pixels (ink: value > 1/4; at a
    tie, the mean position along the extreme row or column)."""
    import torch

    img = images[:, 0]
    n, h, w = img.shape
    ys = ((torch.arange(h, device=img.device, dtype=img.dtype) + 0.5) / h).view(1, h, 1).expand(n, h, w)
    xs = ((torch.arange(w, device=img.device, dtype=img.dtype) + 0.5) / w).view(1, 1, w).expand(n, h, w)
    ink = img > 0.25
    mass = img.sum((1, 2))
    pts = [torch.stack([(img * xs).sum((1, 2)) / mass, (img * ys).sum((1, 2)) / mass], 1)]
    big = 2.0
    for coord, other, lowest in ((ys, xs, True), (ys, xs, False), (xs, ys, True), (xs, ys, False)):
        c = torch.where(ink, coord, big if lowest else -big)
        ext = c.amin((1, 2)) if lowest else c.amax((1, 2))
        on = ink & (coord == ext.view(n, 1, 1))
        along = (other * on).sum((1, 2)) / on.sum((1, 2))
        pts.append(torch.stack([along, ext] if coord is ys else [ext, along], 1))
    return torch.stack(pts, 1)


# ------------------------------------------------------------------------------------ networks

def make_net(out_dim):
    """Two 3x3 convolutions on the 8x8 image, then a linear embedding (or regression) layer."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, out_dim))


class Softmax:
    """The baseline: a torch.nn.Linear classifier and F.cross_entropy."""

    def __init__(self, dim, classes):
        import torch
        self.module = torch.nn.Linear(dim, classes)
        self.loss = lambda e, y: torch.nn.functional.cross_entropy(self.module(e), y)
        self.logits = self.module
        self.normalized = False


class LossextHead:
    """A lossext margin head (it owns the class weights): the loss of embeddings, and cosines
    to the class weights for closed-set prediction."""

    def __init__(self, module):
        self.module = module
        self.loss = module
        self.logits = module.logits
        self.normalized = True


class PMLArcFace:
    """pytorch-metric-learning's ArcFaceLoss (its margin is in degrees), with lossext's m and s: at
    the same class weights its loss equals lossext's ArcFaceLoss. Each library keeps its own weight
    initialization (pml: normal, norm ~6 per class; lossext: nn.Linear's, norm ~0.6), so under
    Adam (steps of about lr per coordinate) pml's class centres likely turn more slowly: the two
    rows differ by that, not by the loss."""

    def __init__(self, dim, classes, margin, scale):
        from pytorch_metric_learning.losses import ArcFaceLoss
        self.module = ArcFaceLoss(classes, dim, margin=math.degrees(margin), scale=scale)
        self.loss = self.module
        self.logits = self.module.get_logits
        self.normalized = True


def margin_methods(dim, total_steps, with_pml):
    """(name, factory of the head) per method. The literature's defaults: CosFace s=64, m=0.35
    (Wang et al. 2018), ArcFace s=64, m=0.5 (Deng et al. 2019), SphereFace m=4 (Liu et al.
    2017). CosFace's bound on s for C classes (Wang et al., Sec. 3.4), s >= (C-1)/C ln((C-1)P/(1-P)),
    is about 3.4 for C=7 at P=0.9, far below 64: the scale needs no change for 7 classes."""
    import lossext.nn as LN

    def sphereface():
        # SphereFace's schedule lambda = max(5, 1000 (1 + 0.12 it)^-1) reaches its floor after
        # about 1660 iterations, more than this whole run has (240 steps by default); with gamma
        # 0.12 the margin would hardly act. gamma is scaled so that lambda reaches 5 halfway
        # through training (the original reaches it early in its 28k-iteration solver).
        base, floor = 1000.0, 5.0
        return LossextHead(LN.SphereFaceLoss(dim, KNOWN, gamma=(base / floor - 1) / max(1, total_steps // 2),
                                             base=base, lambda_min=floor))

    out = [("softmax", lambda: Softmax(dim, KNOWN)),
           ("CosFace (lossext)", lambda: LossextHead(LN.CosFaceLoss(dim, KNOWN))),
           ("ArcFace (lossext)", lambda: LossextHead(LN.ArcFaceLoss(dim, KNOWN))),
           ("SphereFace (lossext)", sphereface)]
    if with_pml:
        arc = LN.ArcFaceLoss(dim, KNOWN)  # pml gets lossext's m and s
        out.append(("ArcFace (PML)", lambda: PMLArcFace(dim, KNOWN, arc.m2, arc.scale)))
    return out


# ------------------------------------------------------------------------------------ training

def train(name, net, loss_fn, params, x, y, epochs, batch, seed, after_step=None):
    """Adam with a cosine learning-rate schedule; returns (s/epoch, steps/s) of training only
    (a tqdm bar per run on stderr)."""
    import torch
    from tqdm import tqdm

    steps_per_epoch = math.ceil(len(x) / batch)
    opt = torch.optim.Adam(params, lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    spent = 0.0
    with tqdm(total=epochs * steps_per_epoch, desc=f"{name:<22}", unit="step", leave=True,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for _ in range(epochs):
            t0 = time.perf_counter()
            total = torch.zeros((), device=x.device)
            for idx in torch.randperm(len(x), generator=gen).to(x.device).split(batch):
                loss = loss_fn(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step()
                total += loss.detach()
                bar.update()
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            spent += time.perf_counter() - t0
            bar.set_postfix(loss=f"{float(total) / steps_per_epoch:.3f}")
    return spent / epochs, epochs * steps_per_epoch / spent


def embed(net, x):
    import torch
    net.eval()
    with torch.no_grad():
        return net(x)


def verification(emb, labels):
    """Every pair of the unseen images: cosine similarity, same digit = genuine. TAR at FAR f:
    the genuine share above the impostor scores' (1 - f) quantile. Returns the metrics and the
    ROC curve (FAR, TAR)."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score, roc_curve

    e = torch.nn.functional.normalize(emb.double(), dim=1)
    i, j = torch.triu_indices(len(e), len(e), 1, device=e.device)
    scores = (e[i] * e[j]).sum(1).cpu().numpy()
    same = (labels[i] == labels[j]).cpu().numpy()
    gen, imp = scores[same], scores[~same]
    tar = {f: float((gen > np.quantile(imp, 1.0 - f)).mean()) for f in (1e-2, 1e-3)}
    far, tpr, _ = roc_curve(same, scores)
    return dict(tar2=tar[1e-2], tar3=tar[1e-3], auc=float(roc_auc_score(same, scores)), pairs=len(scores),
                genuine=int(same.sum())), (far, tpr)


def run_margin(name, factory, dim, data, epochs, batch, seed):
    """Trains the network with one head; returns (the head, the network, timings)."""
    import torch

    torch.manual_seed(seed)  # the same network weights for every method
    net = make_net(dim).to(data["train"][0].device)
    head = factory()
    head.module.to(data["train"][0].device)
    step = getattr(head.module, "step", None)  # SphereFace's schedule: once per optimizer step
    x, y = data["train"]
    timing = train(name, net, head.loss, [*net.parameters(), *head.module.parameters()], x, y, epochs, batch,
                   seed, after_step=step)
    return head, net, timing


def embedding_runs(data, dim, epochs, batch, seed, with_pml):
    import torch

    rows, rocs = [], {}
    steps = epochs * math.ceil(len(data["train"][0]) / batch)
    for name, factory in margin_methods(dim, steps, with_pml):
        head, net, (s_epoch, steps_s) = run_margin(name, factory, dim, data, epochs, batch, seed)
        xh, yh = data["held"]
        with torch.no_grad():
            acc = float((head.logits(embed(net, xh)).argmax(1) == yh).double().mean())
        m, rocs[name] = verification(embed(net, data["unseen"][0]), data["unseen"][1])
        rows.append(dict(method=name, **m, accuracy=acc, s_epoch=s_epoch, steps_s=steps_s))
    return rows, rocs


def landmark_runs(data, epochs, batch, seed):
    """The keypoint task: 5 points regressed from the image by the same network (10 outputs),
    trained on the train images of 0-6, NME on the held-out images of 0-6 and on the unseen 7-9."""
    import torch
    import torch.nn.functional as F

    import lossext.nn as LN

    # Wing's defaults (w=10, epsilon=2) are in pixels: on coordinates in [0, 1] every error is far
    # inside |d| < w, where Wing is ~ 5|d|, i.e. L1. The loss sees the coordinates in pixels of the
    # digit drawn at 64x64 (8x its 8x8), a scale of face crops for which those defaults were set.
    wing, px = LN.WingLoss(), 64.0
    # Adaptive Wing (defaults alpha=2.1, omega=14, epsilon=1, theta=0.5) was designed for heatmaps
    # with targets in [0, 1]; coordinates normalized to [0, 1] are targets in [0, 1] too, so it
    # applies unchanged (alpha - y stays in [1.1, 2.1], theta = 0.5 is half the image side).
    awing = LN.AdaptiveWingLoss()
    losses = [("L2 (MSE)", F.mse_loss), ("L1", F.l1_loss),
              ("Wing (lossext)", lambda p, t: wing(p * px, t * px)),
              ("Adaptive Wing (lossext)", awing)]
    x, _ = data["train"]
    target = keypoints(x)
    rows = []
    for name, fn in losses:
        torch.manual_seed(seed)
        net = make_net(target[0].numel()).to(x.device)
        s_epoch, steps_s = train(name, net, lambda out, t: fn(out.view_as(t), t), list(net.parameters()), x,
                                 target, epochs, batch, seed)
        nme = {}
        for part in ("held", "unseen"):
            xp = data[part][0]
            t = keypoints(xp)
            # the image side is 1.0 in these coordinates: the mean point-to-point distance is the NME
            nme[part] = float(torch.linalg.vector_norm(embed(net, xp).view_as(t) - t, dim=-1).mean())
        rows.append(dict(method=name, nme_held=nme["held"], nme_unseen=nme["unseen"], s_epoch=s_epoch,
                         steps_s=steps_s))
    return rows


# ------------------------------------------------------------------------------------- outputs

VERIF_COLS = [("method", "method", None), ("tar2", "TAR@FAR=1e-2", "{:.3f}"), ("tar3", "TAR@FAR=1e-3", "{:.3f}"),
              ("auc", "AUC", "{:.4f}"), ("accuracy", "accuracy (0-6)", "{:.3f}"), ("s_epoch", "s/epoch", "{:.3f}"),
              ("steps_s", "steps/s", "{:.0f}")]
LM_COLS = [("method", "loss", None), ("nme_held", "NME held-out 0-6 (%)", "{:.2f}"),
           ("nme_unseen", "NME unseen 7-9 (%)", "{:.2f}"), ("s_epoch", "s/epoch", "{:.3f}"),
           ("steps_s", "steps/s", "{:.0f}")]


def _cells(rows, cols):
    pct = lambda k, v: 100 * v if k.startswith("nme") else v  # noqa: E731
    return [[r[k] if fmt is None else fmt.format(pct(k, r[k])) for k, _, fmt in cols] for r in rows]


def write_tables(out, verif, lm):
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        keys = ["task", "method", "tar_far_1e-2", "tar_far_1e-3", "auc", "accuracy", "nme_heldout", "nme_unseen",
                "s_per_epoch", "steps_per_s"]
        w = csv.writer(f)
        w.writerow(keys)
        for r in verif:
            w.writerow(["verification", r["method"], r["tar2"], r["tar3"], r["auc"], r["accuracy"], "", "",
                        r["s_epoch"], r["steps_s"]])
        for r in lm:
            w.writerow(["landmarks", r["method"], "", "", "", "", r["nme_held"], r["nme_unseen"], r["s_epoch"],
                        r["steps_s"]])
    md = lambda cols, rows: "\n".join(  # noqa: E731
        ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
        + ["| " + " | ".join(c) + " |" for c in _cells(rows, cols)])
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("# python -m lossext demo\n\n## Open-set verification (digits 7-9) and closed-set accuracy (0-6)\n\n"
                + md(VERIF_COLS, verif) + "\n\n## Keypoints (NME: mean point-to-point error / image side)\n\n"
                + md(LM_COLS, lm) + "\n")


def plot_embeddings(path, panels):
    """panels: (title, features [N, 2], labels [N], normalized, class weights [C, 2] or None)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5))
    colors = plt.get_cmap("tab10")
    for ax, (title, f, lab, normalized, w) in zip(axes, panels):
        f, lab = f.double().cpu().numpy(), lab.cpu().numpy()
        if normalized:
            f = f / np.linalg.norm(f, axis=1, keepdims=True)
            t = np.linspace(0, 2 * np.pi, 200)
            ax.plot(np.cos(t), np.sin(t), color="0.8", lw=1, zorder=0)
        for c in range(KNOWN):
            ax.scatter(f[lab == c, 0], f[lab == c, 1], s=9, alpha=0.7, color=colors(c), label=str(c))
        if w is not None:
            w = w.detach().double().cpu().numpy()
            w = w / np.linalg.norm(w, axis=1, keepdims=True) * (1.15 if normalized else np.abs(f).max())
            for c in range(KNOWN):
                ax.plot([0, w[c, 0]], [0, w[c, 1]], color=colors(c), lw=1.5)
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.legend(title="digit", fontsize=7, markerscale=1.5, loc="best")
    fig.suptitle("2-D features of the held-out digits 0-6 (lines: class-weight directions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(path, rocs):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, (far, tar) in rocs.items():
        keep = far > 0
        ax.plot(far[keep], tar[keep], label=name)
    for f in (1e-3, 1e-2):
        ax.axvline(f, color="0.7", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false-accept rate (impostor pairs of unseen digits 7-9)")
    ax.set_ylabel("true-accept rate")
    ax.set_title("Open-set verification, cosine similarity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main

def main(argv=None):
    t_start = time.perf_counter()
    p = build_parser()
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    missing = _missing_deps()
    if missing:
        print(f"{PROG}: error: the demo needs {', '.join(missing)}: pip install lossext[demo]", file=sys.stderr)
        return 2
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import matplotlib
    matplotlib.use("Agg")
    import torch

    from .__main__ import _resolve_device, _table, header_line

    device, why = _resolve_device(args.device, torch)
    if why:
        print(f"{PROG}: error: {why}", file=sys.stderr)
        return 2
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    print(header_line(torch))
    with_pml = _importable("pytorch_metric_learning")
    if not with_pml:
        print("pytorch-metric-learning is not installed: its ArcFace row is left out (pip install "
              "pytorch-metric-learning)")

    # Sized so that the whole demo runs in under 2 minutes on 2 busy CPU cores (about 3100 steps
    # of training, ~55 s at the 55-60 steps/s measured there; the rest is imports and evaluation).
    epochs = 1 if args.quick else (args.epochs or 15)
    epochs_2d, epochs_lm = (1, 1) if args.quick else (2 * epochs, epochs)
    batch, dim = 64, 32
    os.makedirs(args.out, exist_ok=True)
    data = load_data(args.seed, device)
    n = {k: len(v[0]) for k, v in data.items()}
    print(f"digits (scikit-learn, 8x8): train {n['train']} and held-out {n['held']} images of 0-6, "
          f"{n['unseen']} unseen images of 7-9 ({n['unseen'] * (n['unseen'] - 1) // 2} pairs); {device}, "
          f"{torch.get_num_threads()} torch thread(s), seed {args.seed}, {epochs} epoch(s) of batch {batch}, "
          f"{dim}-D embedding")

    verif, rocs = embedding_runs(data, dim, epochs, batch, args.seed, with_pml)

    panels = []
    for name, factory in [m for m in margin_methods(2, 0, False) if m[0] in ("softmax", "ArcFace (lossext)")]:
        head, net, _ = run_margin(f"{name}, 2-D", factory, 2, data, epochs_2d, batch, args.seed)
        w = getattr(head.module, "weight")
        panels.append((f"{name}: {'normalized' if head.normalized else 'raw'} features", embed(net, data["held"][0]),
                       data["held"][1], head.normalized, w))
    plot_embeddings(os.path.join(args.out, "embeddings_2d.png"), panels)
    plot_roc(os.path.join(args.out, "roc.png"), rocs)

    lm = landmark_runs(data, epochs_lm, batch, args.seed)
    write_tables(args.out, verif, lm)

    pairs = verif[0]
    print(f"\nOpen-set verification on the unseen digits 7-9 ({pairs['pairs']} pairs, {pairs['genuine']} genuine; "
          f"cosine similarity) and closed-set accuracy on the {n['held']} held-out images of 0-6:")
    print(_table([h for _, h, _ in VERIF_COLS], _cells(verif, VERIF_COLS), left=1))
    print(f"\nKeypoints (ink centroid and top/bottom/left/right-most ink pixel), {epochs_lm} epoch(s); "
          f"NME = mean point-to-point error / {NORMALIZER} (8 pixels), in %:")
    print(_table([h for _, h, _ in LM_COLS], _cells(lm, LM_COLS), left=1))
    files = [os.path.join(args.out, f) for f in ("results.csv", "results.md", "embeddings_2d.png", "roc.png")]
    print(f"\n(s/epoch and steps/s: training only.) Wrote {', '.join(files)}")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
