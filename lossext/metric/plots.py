"""The metric family's figures for the docs (tools/plots.py, `make plots`; needs matplotlib,
`pip install lossext[plots]`).

- metric_mining: which triplets each mining mode of triplet_margin_loss picks for one anchor of a
  2-D toy batch (three classes, euclidean distance, margin 0.5). batch_hard: the farthest positive
  and the nearest negative, read from the kernel's `hard` output (torch.ops.lossext.
  triplet_margin_loss); batch_all: every (positive, negative), drawn per negative as active (a
  positive loss with some positive) or not; semi_hard: per positive, the nearest negative farther
  than it (FaceNet), or the farthest negative where none is. The per-anchor losses in the titles
  are the kernel's ('none' reduction).
"""
import torch

MARGIN = 0.5


def _toy():
    g = torch.Generator().manual_seed(3)
    centers = torch.tensor([[0.0, 0.0], [1.6, 0.4], [0.5, 1.5]], dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(6)
    x = centers[y] + 0.45 * torch.randn(18, 2, generator=g, dtype=torch.float64)
    return x, y


def metric_mining(path):
    import matplotlib.pyplot as plt

    from . import functional as F

    x, y = _toy()
    a = 0
    d = ((x[a] - x) ** 2).sum(1).sqrt()
    pos = [j for j in range(len(y)) if j != a and y[j] == y[a]]
    neg = [j for j in range(len(y)) if y[j] != y[a]]
    _, hard, _ = torch.ops.lossext.triplet_margin_loss(x, y, x, y, True, MARGIN, 0, 1, False, 0)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6), layout="constrained")
    for ax, mining in zip(axes, ("batch_hard", "batch_all", "semi_hard")):
        for c in range(3):
            sel = y == c
            ax.scatter(x[sel, 0], x[sel, 1], s=36, color=colors[c], label=f"class {c}", zorder=3)
        ax.scatter([x[a, 0]], [x[a, 1]], s=180, facecolors="none", edgecolors="black", lw=2, zorder=4,
                   label="anchor")

        def link(j, style, **kw):
            ax.plot([x[a, 0], x[j, 0]], [x[a, 1], x[j, 1]], style, zorder=2, **kw)

        if mining == "batch_hard":
            p, n = int(hard[a, 0]), int(hard[a, 1])
            link(p, "-", color="tab:blue", lw=2.2, label="farthest positive")
            link(n, "--", color="tab:red", lw=2.2, label="nearest negative")
        elif mining == "batch_all":
            for p in pos:
                link(p, "-", color="tab:blue", lw=0.8, alpha=0.6)
            for n in neg:
                active = any(float(d[p] - d[n]) + MARGIN > 0 for p in pos)
                link(n, "--", color="tab:red" if active else "0.75", lw=1.2 if active else 0.8,
                     label=None)
            ax.plot([], [], "--", color="tab:red", label="negative in a positive-loss triplet")
            ax.plot([], [], "--", color="0.75", label="negative in no positive-loss triplet")
        else:
            for p in pos:
                farther = [n for n in neg if float(d[n]) > float(d[p])]
                n = (min(farther, key=lambda j: (float(d[j]), j)) if farther
                     else max(neg, key=lambda j: (float(d[j]), -j)))
                link(p, "-", color="tab:blue", lw=0.9)
                ax.plot([x[p, 0], x[n, 0]], [x[p, 1], x[n, 1]], ":", color="tab:red", lw=1.0, zorder=1)
                link(n, "--", color="tab:red", lw=1.4)
            ax.plot([], [], ":", color="tab:red", label="positive → its semi-hard negative")
        loss = F.triplet_margin_loss(x, y, MARGIN, mining, reduction="none")[a]
        ax.set_title(f"{mining}: anchor's loss {float(loss):.3f}")
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="best", framealpha=0.7)
    fig.suptitle(f"triplet_margin_loss: the triplets each mining picks for one anchor (margin {MARGIN:g})")
    fig.savefig(path, dpi=100)
    plt.close(fig)


PLOTS = {"metric_mining": metric_mining}
