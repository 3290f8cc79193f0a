"""OpInfo rows of the landmark losses (the element-wise pattern's helpers: lossext/testing/pointwise.py)."""
import torch

from ..testing import pointwise as P
from ..testing.opinfo import OpInfo, SampleInput
from . import functional as LF
from . import modules as LN
from . import reference as R


def _wing_edges(device, dtype):
    w = 10.0
    # d = x - y on both sides of and exactly at the branch point |d| = w, at 0 and tiny
    d = torch.tensor([-2 * w, -w, -w + 1e-3, -1.0, -1e-6, 0.0, 1e-6, 1.0, w - 1e-3, w, w + 1e-3, 3 * w],
                     dtype=torch.float64)
    y = torch.linspace(-1, 1, d.numel(), dtype=torch.float64)
    for red in ("none", "mean", "sum"):
        yield SampleInput(((y + d).to(device, dtype), y.to(device, dtype)),
                          dict(width=w, curvature=2.0, reduction=red), f"{red}-edges")


def _awing_edges(device, dtype):
    theta = 0.5
    y = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.7, 0.5, 0.2], dtype=torch.float64)
    D = torch.tensor([0.0, theta, theta - 1e-3, theta + 1e-3, 0.0, theta, 1e-6, theta, -theta, 0.1, 2.0, -1.5],
                     dtype=torch.float64)
    for red in ("none", "mean", "sum"):
        yield SampleInput(((y + D).to(device, dtype), y.to(device, dtype)),
                          dict(alpha=2.1, omega=14.0, epsilon=1.0, theta=theta, reduction=red), f"{red}-edges")

_WING = dict(width=10.0, curvature=2.0)
_AWING = dict(alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5)

# The fuzzer's extremes (lossext/testing/fuzz.py): magnitudes whose loss (up to A |d| for
# Adaptive Wing, A < 1e4 over the drawn parameters) stays finite in the compute dtype (float32
# for half inputs). Adaptive Wing's targets are heatmaps in [0, 1].
_BIG = {torch.float16: 1e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}


def _wing_rules():  # called at fuzz time (lossext.testing.fuzz imports hypothesis)
    from ..testing.fuzz import Real
    return [Real("width", "positive", 1e-2, 1e3, common=(10.0, 1.0)),
            Real("curvature", "positive", 1e-2, 1e2, common=(2.0, 0.5))]


def _awing_rules():
    from ..testing.fuzz import Real
    return [Real("omega", "positive", 1e-1, 1e2, common=(14.0,)),
            Real("epsilon", "positive", 5e-2, 1e1, common=(1.0,)),
            Real("theta", "positive", 5e-2, 2.0, common=(0.5,)),
            Real("alpha", "greater", 1e-3, 5.0, common=(2.1, 1.0), other="theta")]


def _heatmap_specials(dtype):
    return [0.0, -0.0, 1.0, torch.finfo(dtype).tiny, float("nan")]


OP_ROWS = [
    OpInfo(
        name="wing_loss",
        op=LF.wing_loss, ref=R.wing_loss, module=LN.WingLoss,
        raw_ops=["wing_loss", "wing_loss_with_grad", "wing_loss_backward"],
        hyper=_WING,
        sample_inputs=P.samples(-25.0, 25.0, -3.0, 3.0, _WING),
        edge_inputs=_wing_edges,
        error_inputs=P.errors("wing_loss", _WING, [
            ("width", 0.0, "width must be > 0"), ("width", -1.0, "width must be > 0"),
            ("curvature", 0.0, "curvature must be > 0"), ("width", float("nan"), "width must be finite")]),
        bench_input=P.bench_input(-25.0, 25.0, -3.0, 3.0, _WING),
        raw_calls=P.raw_calls("wing_loss", ("width", "curvature"), False),
        module_call=P.module_call(LN.WingLoss),
        module_samples=P.module_samples(LN.WingLoss, -25.0, 25.0, -3.0, 3.0, _WING),
        jit_source=P.jit_source("wing_loss", ("width", "curvature")),
        raw_error_inputs=P.raw_errors("wing_loss", (10.0, 2.0), 0, False),
        fuzz=P.fuzz("wing_loss", -25.0, 25.0, -3.0, 3.0, _WING, _wing_rules, _BIG),
        elementwise=True,
        tol=P.TOL,
    ),
    OpInfo(
        name="adaptive_wing_loss",
        op=LF.adaptive_wing_loss, ref=R.adaptive_wing_loss, module=LN.AdaptiveWingLoss,
        raw_ops=["adaptive_wing_loss", "adaptive_wing_loss_with_grad", "adaptive_wing_loss_backward",
                 "adaptive_wing_loss_target_backward"],
        hyper=_AWING,
        sample_inputs=P.samples(-0.2, 1.2, 0.0, 1.0, _AWING),
        edge_inputs=_awing_edges,
        error_inputs=P.errors("adaptive_wing_loss", _AWING, [
            ("epsilon", 0.0, "epsilon must be > 0"), ("omega", -1.0, "omega must be > 0"),
            ("theta", 0.0, "theta must be > 0"), ("alpha", 0.5, "alpha must be > theta"),
            ("alpha", 0.2, "alpha must be > theta")]),
        bench_input=P.bench_input(-0.2, 1.2, 0.0, 1.0, _AWING),
        raw_calls=P.raw_calls("adaptive_wing_loss", ("alpha", "omega", "epsilon", "theta"), True),
        module_call=P.module_call(LN.AdaptiveWingLoss),
        module_samples=P.module_samples(LN.AdaptiveWingLoss, -0.2, 1.2, 0.0, 1.0, _AWING),
        jit_source=P.jit_source("adaptive_wing_loss", ("alpha", "omega", "epsilon", "theta")),
        raw_error_inputs=P.raw_errors("adaptive_wing_loss", (2.1, 14.0, 1.0, 0.5), 2, True),
        fuzz=P.fuzz("adaptive_wing_loss", -0.2, 1.2, 0.0, 1.0, _AWING, _awing_rules, _BIG, _heatmap_specials),
        elementwise=True,
        tol=P.TOL,
    ),
]
