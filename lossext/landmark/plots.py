"""The landmark family's figures for the docs (tools/plots.py, `make plots`; needs matplotlib,
`pip install lossext[plots]`).

- landmark_losses: the Wing paper's figure (Feng et al., CVPR 2018, Fig. 2-3): the loss and its
  gradient against the error x = input - target for L1, L2 (x^2 / 2, as in the paper), smooth L1
  (beta = 1), Wing and Adaptive Wing at their defaults (lossext.functional), on two ranges: one
  wide enough for Wing's log region and its linear region past |x| = w, one close to zero where
  Adaptive Wing's (Wang et al., ICCV 2019) regions switch at |x| = theta. Adaptive Wing is drawn
  for the targets y = 0 (background pixel) and y = 1 (a heatmap's peak); its shape depends on y.

The losses and gradients are computed by lossext itself (torch.autograd through
lossext.functional.wing_loss / adaptive_wing_loss, float64), so the plot shows what the kernels
compute; L1, L2 and smooth L1 by torch.nn.functional.
"""
import inspect

import torch
import torch.nn.functional as F

from . import functional as LF

_WING = {k: v.default for k, v in inspect.signature(LF.wing_loss).parameters.items()
         if k in ("width", "curvature")}
_AWING = {k: v.default for k, v in inspect.signature(LF.adaptive_wing_loss).parameters.items()
          if k in ("alpha", "omega", "epsilon", "theta")}


def _curves(x):
    """[(label, style, loss(x), d loss / dx)] for the error x (input = target + x)."""
    w, eps = _WING["width"], _WING["curvature"]
    losses = [
        ("L1  |x|", dict(color="0.55", ls="--"), lambda d: F.l1_loss(d, torch.zeros_like(d), reduction="none")),
        ("L2  x²/2", dict(color="0.3", ls=":"), lambda d: 0.5 * F.mse_loss(d, torch.zeros_like(d), reduction="none")),
        ("smooth L1  (β = 1)", dict(color="tab:green", ls="-."),
         lambda d: F.smooth_l1_loss(d, torch.zeros_like(d), reduction="none", beta=1.0)),
        (f"Wing  (w = {w:g}, ε = {eps:g})", dict(color="tab:blue", lw=2.2),
         lambda d: LF.wing_loss(d, torch.zeros_like(d), reduction="none")),
    ]
    for y, style in ((0.0, dict(color="tab:red", lw=2.0)), (1.0, dict(color="tab:orange", lw=2.0, ls="--"))):
        losses.append((f"Adaptive Wing, y = {y:g}", style,
                       lambda d, y=y: LF.adaptive_wing_loss(y + d, torch.full_like(d, y), reduction="none")))
    out = []
    for label, style, fn in losses:
        d = x.clone().requires_grad_(True)
        loss = fn(d)
        (g,) = torch.autograd.grad(loss.sum(), d)
        out.append((label, style, loss.detach().numpy(), g.numpy()))
    return out


def landmark_losses(path):
    import matplotlib.pyplot as plt

    w, eps = _WING["width"], _WING["curvature"]
    a = _AWING
    ranges = [
        (1.5 * w, f"Wing's log region and linear region (dotted: |x| = w = {w:g})", (0, 2.2 * w), (-6, 6)),
        (1.0, f"near zero (dotted: |x| = θ = {a['theta']:g}, Adaptive Wing turns linear)", (0, 6), (-14, 14)),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.8), layout="constrained")
    for row, (lim, title, ylim_loss, ylim_grad) in enumerate(ranges):
        # an odd number of points puts one at x = 0 (every gradient there is lossext's / torch's choice)
        x = torch.linspace(-lim, lim, 801, dtype=torch.float64)
        curves = _curves(x)
        ax_l, ax_g = axes[row]
        for label, style, loss, grad in curves:
            ax_l.plot(x.numpy(), loss, label=label, **style)
            ax_g.plot(x.numpy(), grad, label=label, **style)
        ax_l.set_ylim(*ylim_loss)
        ax_g.set_ylim(*ylim_grad)
        ax_l.set_title("loss: " + title, fontsize=10)
        ax_g.set_title("gradient d loss / dx (autograd)", fontsize=10)
        for ax in (ax_l, ax_g):
            ax.set_xlim(-lim, lim)
            ax.set_xlabel("error x = input − target")
            ax.axhline(0, color="0.8", lw=0.8, zorder=0)
            ax.axvline(0, color="0.8", lw=0.8, zorder=0)
            ax.grid(alpha=0.3)
            edge = w if row == 0 else a["theta"]
            for s in (-edge, edge):
                ax.axvline(s, color="tab:blue" if row == 0 else "tab:red", lw=0.8, ls=(0, (2, 3)), alpha=0.7)
        ax_l.set_ylabel("loss")
        ax_g.set_ylabel("gradient")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Landmark losses and their gradients against the error "
                 f"(lossext defaults; Adaptive Wing α = {a['alpha']:g}, ω = {a['omega']:g}, "
                 f"ε = {a['epsilon']:g}, θ = {a['theta']:g}; y = target)", fontsize=11)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


PLOTS = {"landmark_losses": landmark_losses}
