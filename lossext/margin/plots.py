"""The margin family's figures for the docs (tools/plots.py, `make plots`; needs matplotlib,
`pip install lossext[plots]`).

- margin_target_logit: the ArcFace paper's figure (Deng et al., CVPR 2019, Fig. 5a): the target
  logit before the scale s against the angle theta between the embedding and its class centre,
  for softmax (cos theta), SphereFace (m = 4: (-1)^k cos(m theta) - 2k), CosFace (cos theta -
  0.35), ArcFace (cos(theta + 0.5)) and insightface's combined margin cos(m1 theta + m2) - m3
  with (m1, m2, m3) = (1, 0.3, 0.2); a zoom on theta + m > pi, where ArcFace's cos(theta + m)
  would turn back up and lossext (as insightface) uses cos theta - m sin m instead, or plain
  cos theta with easy_margin (the rule steps down by cos m + m sin m - 1 at theta = pi - m; the
  combined margin, m2 = 0.3, steps at pi - 0.3); and SphereFace's full range, with its lambda
  annealing.

The curves are what lossext's kernel computes: the raw op torch.ops.lossext.margin_cross_entropy
on one class (C = 1, scale = 1) returns as its log-sum-exp output exactly the row's one logit,
the target's margin logit (float64). Only the dotted "cos(theta + m) without the rule" line is
the bare formula, drawn to show what the rule replaces.
"""
import math

import torch

from .functional import lambda_tensor

SPHEREFACE_M = 4.0
COSFACE_M = 0.35
ARCFACE_M = 0.5
COMBINED = (1.0, 0.3, 0.2)  # insightface's combined-margin example (m1, m2, m3)


def target_logit(cos, m1=1.0, m2=0.0, m3=0.0, lambda_=0.0, easy_margin=False):
    """The target's logit / scale, from lossext's kernel: with one class the row's log-sum-exp
    is its only logit."""
    cos = cos.to(torch.float64)[:, None]
    target = torch.zeros(cos.shape[0], dtype=torch.long)
    _, lse = torch.ops.lossext.margin_cross_entropy(cos, target, None, None, 1.0, m1, m2, m3,
                                                    lambda_tensor(lambda_, cos), easy_margin, 0.0, -100, 0)
    return lse.numpy()


def margin_target_logit(path):
    import matplotlib.pyplot as plt

    theta = torch.linspace(0.0, math.pi, 1081, dtype=torch.float64)
    deg = torch.rad2deg(theta).numpy()
    cos = torch.cos(theta)
    m1, m2, m3 = COMBINED
    curves = [
        ("softmax  cos θ", dict(color="0.35", lw=1.6), target_logit(cos)),
        (f"SphereFace  ψ(θ), m = {SPHEREFACE_M:g}", dict(color="tab:purple", lw=1.8),
         target_logit(cos, m1=SPHEREFACE_M)),
        (f"CosFace  cos θ − {COSFACE_M:g}", dict(color="tab:green", lw=1.8), target_logit(cos, m3=COSFACE_M)),
        (f"ArcFace  cos(θ + {ARCFACE_M:g})", dict(color="tab:red", lw=2.2), target_logit(cos, m2=ARCFACE_M)),
        (f"combined  cos({m1:g}·θ + {m2:g}) − {m3:g}", dict(color="tab:blue", lw=1.8, ls="--"),
         target_logit(cos, m1, m2, m3)),
    ]
    edge = 180.0 - math.degrees(ARCFACE_M)  # theta + m > pi beyond

    fig = plt.figure(figsize=(12, 6.4), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=(1.55, 1))
    ax = fig.add_subplot(gs[:, 0])
    ax_sph = fig.add_subplot(gs[0, 1])
    ax_arc = fig.add_subplot(gs[1, 1])

    for label, style, y in curves:
        ax.plot(deg, y, label=label, **style)
    ax.axvspan(edge, 180, color="tab:red", alpha=0.08, lw=0)
    ax.text(edge + 1.5, -1.45, f"ArcFace's\nθ + m > π\n(θ > {edge:.1f}°)", color="tab:red", fontsize=8.5, va="top")
    ax.set_ylim(-1.75, 1.08)
    ax.set_title("Target logit (before the scale s) against θ", fontsize=11)
    ax.legend(loc="upper right", fontsize=9.5, framealpha=0.95)
    ax.annotate("SphereFace continues\nto −7 (top right)", xy=(66.5, -1.72), xytext=(74, -1.6), fontsize=8.5,
                color="tab:purple", arrowprops=dict(arrowstyle="->", color="tab:purple", lw=0.8))

    ax_sph.plot(deg, curves[0][2], color="0.35", lw=1.4, label="softmax")
    ax_sph.plot(deg, curves[1][2], color="tab:purple", lw=1.8, label="ψ(θ), λ = 0")
    ax_sph.plot(deg, target_logit(cos, m1=SPHEREFACE_M, lambda_=5.0), color="tab:purple", lw=1.4, ls="--",
                label="(λ cos θ + ψ) / (1 + λ), λ = 5")
    for k in range(1, int(SPHEREFACE_M)):
        ax_sph.axvline(180.0 * k / SPHEREFACE_M, color="0.75", lw=0.7, ls=":")
    ax_sph.set_title(f"SphereFace, m = {SPHEREFACE_M:g}: monotone (−1)^k cos(mθ) − 2k", fontsize=10)
    ax_sph.legend(loc="lower left", fontsize=8.5)

    zoom = deg >= 120.0
    phi_bare = torch.cos(theta + ARCFACE_M).numpy()
    ax_arc.plot(deg[zoom], curves[0][2][zoom], color="0.35", lw=1.4, label="softmax  cos θ")
    ax_arc.plot(deg[zoom], phi_bare[zoom], color="tab:red", lw=1.2, ls=":",
                label="cos(θ + m) without the rule (turns back up)")
    ax_arc.plot(deg[zoom], curves[3][2][zoom], color="tab:red", lw=2.2,
                label="lossext: cos θ − m·sin m for θ > π − m")
    ax_arc.plot(deg[zoom], target_logit(cos, m2=ARCFACE_M, easy_margin=True)[zoom], color="tab:orange",
                lw=1.6, ls="--", label="easy_margin: cos θ where cos θ ≤ 0")
    ax_arc.axvspan(edge, 180, color="tab:red", alpha=0.08, lw=0)
    ax_arc.axvline(edge, color="tab:red", lw=0.8, ls=(0, (2, 3)))
    drop = math.cos(ARCFACE_M) + ARCFACE_M * math.sin(ARCFACE_M) - 1.0
    ax_arc.annotate(f"steps down by {drop:.3f}\nat θ = π − m\n(insightface's rule)",
                    xy=(edge + 0.3, -1.06), xytext=(128, -1.08), fontsize=8, color="tab:red", va="top",
                    arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.8))
    ax_arc.set_xlim(120, 180)
    ax_arc.set_title(f"ArcFace, m = {ARCFACE_M:g}, where θ + m > π", fontsize=10)
    ax_arc.legend(loc="upper right", fontsize=8)
    ax_arc.set_ylim(-1.35, 0.05)

    for a in (ax, ax_sph, ax_arc):
        a.set_xlabel("θ (degrees)")
        a.set_ylabel("target logit / s")
        a.grid(alpha=0.3)
    for a in (ax, ax_sph):
        a.set_xlim(0, 180)
        a.set_xticks(range(0, 181, 30))
    fig.suptitle("Margin softmax: the target logit against the angle θ to its class centre "
                 "(computed by lossext's margin_cross_entropy kernel)", fontsize=11)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


PLOTS = {"margin_target_logit": margin_target_logit}
