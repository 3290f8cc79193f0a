"""Special tests of the margin-softmax family (the generic ones run over OP_DB): the papers'
regions, numerics at the edges, the wrappers and Modules, the fused op against the unfused
one, and its memory."""
import math

import pytest
import torch
import torch.nn.functional as F

import lossext.functional as LF
import lossext.nn as LN
import lossext.reference as R

ARC = dict(m1=1.0, m2=0.5, m3=0.0)
CONFIGS = {
    "cosface": dict(m1=1.0, m2=0.0, m3=0.35),
    "arcface": ARC,
    "arcface-easy": dict(ARC, easy_margin=True),
    "sphereface": dict(m1=4.0, m2=0.0, m3=0.0),
    "sphereface-annealed": dict(m1=4.0, m2=0.0, m3=0.0, lambda_=5.0),
    "combined": dict(m1=1.0, m2=0.3, m3=0.2),
    "non-integer-m1": dict(m1=1.35, m2=0.2, m3=0.0),
}


def _cos(n, c, seed=0, lo=-0.98, hi=0.98, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def _target(n, c, seed=1):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


# ---- the references agree with torch's own cross_entropy ---------------------------------

@pytest.mark.parametrize("red", ["mean", "sum", "none"])
def test_formula_reference_equals_torch_cross_entropy(red):
    """reference.cross_entropy (written out, the ground truth) is F.cross_entropy's definition,
    label smoothing + class weights + ignore_index together included (pytorch#69339)."""
    logits = torch.randn(9, 7, dtype=torch.float64) * 5
    t = _target(9, 7)
    t[[2, 5]] = -100
    w = torch.rand(7, dtype=torch.float64) + 0.1
    for kw in [dict(), dict(weight=w), dict(label_smoothing=0.2), dict(weight=w, label_smoothing=0.2)]:
        torch.testing.assert_close(R.cross_entropy(logits, t, reduction=red, **kw),
                                   F.cross_entropy(logits, t, reduction=red, **kw))
    for name, cfg in CONFIGS.items():
        cos = _cos(9, 7)
        torch.testing.assert_close(R.margin_cross_entropy(cos, t, reduction=red, weight=w, label_smoothing=0.1, **cfg),
                                   R.margin_cross_entropy_composite(cos, t, reduction=red, weight=w,
                                                                    label_smoothing=0.1, **cfg), msg=name)


# ---- the papers' regions ------------------------------------------------------------------

def _target_logit_via_op(c_t, cfg, device):
    """The op's loss on 2 classes whose other cosine is 0: L = log(1 + exp(s (0 - f(c_t)))),
    so f(c_t) = -log(exp(L) - 1) / s."""
    n = c_t.numel()
    cos = torch.zeros(n, 2, dtype=torch.float64, device=device)
    cos[:, 0] = c_t.to(device)
    loss = LF.margin_cross_entropy(cos, torch.zeros(n, dtype=torch.long, device=device), scale=1.0,
                                   reduction="none", **cfg)
    return -torch.log(torch.expm1(loss)).cpu()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_target_logit_formula_and_monotone(name, device):
    """f(cos) equals the papers' formulas (ArcFace with insightface's rule past theta + m > pi,
    A-Softmax's psi) and is non-increasing in theta, i.e. non-decreasing in cos (except
    easy_margin, which by its definition drops at cos = 0)."""
    cfg = CONFIGS[name]
    c = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    f = _target_logit_via_op(c, cfg, device)
    torch.testing.assert_close(f, R.target_margin(c, **cfg), atol=1e-9, rtol=1e-9)
    if not cfg.get("easy_margin"):  # easy_margin jumps down at cos = 0 by definition (insightface's)
        assert (f[1:] - f[:-1] >= -1e-12).all(), name


def test_arcface_rules_by_hand():
    m = 0.5
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    c = torch.tensor([0.9, 0.1, th + 1e-9, th - 1e-9, -0.99, -0.3], dtype=torch.float64)
    want = [math.cos(math.acos(v) + m) if v > th else v - mm for v in c.tolist()]
    torch.testing.assert_close(_target_logit_via_op(c, ARC, "cpu"), torch.tensor(want, dtype=torch.float64))
    want_easy = [math.cos(math.acos(v) + m) if v > 0 else v for v in c.tolist()]
    torch.testing.assert_close(_target_logit_via_op(c, dict(ARC, easy_margin=True), "cpu"),
                               torch.tensor(want_easy, dtype=torch.float64))


def test_sphereface_psi_by_hand():
    """A-Softmax, m = 4: psi(theta) = (-1)^k cos(4 theta) - 2k on [k pi / 4, (k + 1) pi / 4]."""
    thetas = [0.1, 0.9, 1.7, 2.5, 3.0]
    c = torch.tensor([math.cos(t) for t in thetas], dtype=torch.float64)
    want = []
    for t in thetas:
        k = math.floor(4 * t / math.pi)
        want.append((-1) ** k * math.cos(4 * t) - 2 * k)
    torch.testing.assert_close(_target_logit_via_op(c, CONFIGS["sphereface"], "cpu"),
                               torch.tensor(want, dtype=torch.float64))
    lam = 5.0
    want_annealed = [(lam * math.cos(t) + w) / (1 + lam) for t, w in zip(thetas, want)]
    torch.testing.assert_close(_target_logit_via_op(c, CONFIGS["sphereface-annealed"], "cpu"),
                               torch.tensor(want_annealed, dtype=torch.float64))


# ---- numerics at the edges --------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cos_exactly_plus_minus_one_is_finite(name, device, dtype):
    """Targets at cos = +1 and -1 exactly (theta = 0 and pi), and other classes there too:
    finite loss and finite gradients (torch's acos has an infinite slope there)."""
    cos = _cos(6, 5, dtype=dtype)
    cos[:, 4] = 1.0
    cos[:, 3] = -1.0
    t = torch.tensor([4, 3, 4, 3, 0, 1])
    cos = cos.to(device).requires_grad_(True)
    loss = LF.margin_cross_entropy(cos, t.to(device), reduction="sum", **CONFIGS[name])
    (g,) = torch.autograd.grad(loss, cos)
    assert torch.isfinite(loss) and torch.isfinite(g).all(), name


def test_cosface_gradient_at_cos_one_is_exact():
    cos = _cos(3, 4)
    cos[:, 2] = 1.0
    t = torch.tensor([2, 2, 2])
    x = cos.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(LF.cosface_loss(x, t, reduction="sum"), x)
    xr = cos.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(R.margin_cross_entropy(xr, t, 64.0, 1.0, 0.0, 0.35, reduction="sum"), xr)
    torch.testing.assert_close(g, gr)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scale_64_does_not_overflow(device, dtype):
    """fp16/bf16 cosines at s = 64 (logits up to 64, exp(64) overflows fp16): finite, close to
    the float64 value; the same composite in fp16 overflows."""
    cos = _cos(64, 1000, seed=3)
    t = _target(64, 1000)
    cos[torch.arange(64), t] = 0.9  # confident rows: the composite's softmax overflows in fp16
    x = cos.to(device, dtype).requires_grad_(True)
    loss = LF.arcface_loss(x, t.to(device), reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    truth = R.margin_cross_entropy(x.detach().double().cpu(), t, **ARC, reduction="sum")
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert abs(loss.double().item() - truth.item()) <= 4 * torch.finfo(dtype).eps * abs(truth.item()) + 1e-2


def test_ignored_rows_have_zero_loss_and_gradient(device):
    cos = _cos(6, 5).to(device)
    t = torch.tensor([0, -100, 2, -100, 4, 1], device=device)
    w = torch.rand(5, dtype=torch.float64, device=device) + 0.5
    x = cos.clone().requires_grad_(True)
    loss = LF.arcface_loss(x, t, reduction="none", weight=w, label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert (loss[[1, 3]] == 0).all() and (g[[1, 3]] == 0).all()
    assert (loss[[0, 2, 4, 5]] > 0).all()
    all_ignored = torch.full((6,), -100, device=device)
    assert LF.arcface_loss(cos, all_ignored).isnan()          # mean over no rows, as torch
    assert LF.arcface_loss(cos, all_ignored, reduction="sum") == 0


def test_nan_and_inf_propagate(device):
    cos = _cos(4, 6).to(device)
    cos[1, 3] = float("nan")
    cos[2, 0] = float("inf")
    t = torch.tensor([0, 1, 2, 3], device=device)
    x = cos.clone().requires_grad_(True)
    loss = LF.arcface_loss(x, t, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert loss[1].isnan() and loss[2].isnan()  # as F.cross_entropy: an inf logit gives NaN
    assert torch.isfinite(loss[[0, 3]]).all() and torch.isfinite(g[[0, 3]]).all()
    assert g[1].isnan().any() and g[2].isnan().any()


def test_cosine_outside_the_range_takes_no_gradient_even_from_a_nan(device):
    """A target cosine past 1 does not move the angle: its gradient is 0, a select as clamp's
    backward, so a 'mean' whose class weights sum to 0 (0 / 0 upstream) leaves it 0 where the
    composite (F.cross_entropy after clamp) does; an inside cosine gets the NaN as the composite."""
    t = torch.tensor([0, 0], device=device)
    w = torch.zeros(2, dtype=torch.float64, device=device)
    cos = torch.tensor([[1e30, 0.2], [0.5, 0.1]], dtype=torch.float64, device=device)
    got, want = [], []
    for fn, out in ((LF.margin_cross_entropy, got), (R.margin_cross_entropy_composite, want)):
        x = cos.clone().requires_grad_(True)
        loss = fn(x, t, scale=1.0, m1=1.0, m2=1.0, m3=0.0, weight=w, easy_margin=True)
        assert loss.isnan()
        out.append(torch.autograd.grad(loss, x)[0])
    assert got[0][0, 0] == 0 and want[0][0, 0] == 0
    assert got[0][1].isnan().all() and want[0][1].isnan().all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
def test_cuda_bad_label_gives_nan_not_a_crash():
    """On CUDA a label outside [0, C) is never used as an index: that row's loss is NaN."""
    cos = _cos(4, 5).cuda().requires_grad_(True)
    t = torch.tensor([0, 7, 2, -3], device="cuda")
    loss = LF.arcface_loss(cos, t, reduction="none")
    assert loss[[1, 3]].isnan().all() and torch.isfinite(loss[[0, 2]]).all()
    loss.sum().backward()
    torch.cuda.synchronize()
    assert cos.grad[[1, 3]].isnan().all()
    x = torch.randn(4, 3, device="cuda")
    w = torch.randn(5, 3, device="cuda")
    assert LF.fused_linear_margin_cross_entropy(x, w, t).isnan()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
def test_cuda_bad_label_with_class_weight_grad_is_nan_not_an_assert():
    """The class-weight gradient (a PyTorch composite) masks bad labels too: NaN, and the CUDA
    context survives (an indexing composite would trip a device-side assert)."""
    cos = _cos(4, 5).cuda()
    w = torch.rand(5, dtype=torch.float64, device="cuda").requires_grad_(True)
    t = torch.tensor([0, 7, 2, 1], device="cuda")
    LF.margin_cross_entropy(cos, t, weight=w).backward()
    torch.cuda.synchronize()
    assert w.grad.isnan().all()
    assert (torch.ones(2, device="cuda") + 1).sum().item() == 4.0  # the context still works


def test_bad_label_is_an_index_error_naming_the_function():
    """As F.cross_entropy: IndexError; the message names the function the user called and
    carries no C++ source path."""
    cos = _cos(4, 5)
    for fn, call in [("arcface_loss", lambda t: LF.arcface_loss(cos, t)),
                     ("ArcFaceLoss", lambda t: LN.ArcFaceLoss(3, 5)(torch.randn(4, 3), t)),
                     ("fused_linear_cross_entropy",
                      lambda t: LF.fused_linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), t))]:
        with pytest.raises(IndexError, match=f"^{fn}: target has value 9 at index 1") as e:
            call(torch.tensor([0, 9, 1, 2]))
        assert ".cpp" not in str(e.value) and "lossext::" not in str(e.value)


# ---- wrappers ---------------------------------------------------------------------------

def test_modules_check_every_argument_at_construction():
    cases = [(lambda: LN.ArcFaceLoss(8, 10, chunk_size=0), ValueError, "^ArcFaceLoss: chunk_size"),
             (lambda: LN.ArcFaceLoss(8, 10, margin=4), ValueError, "^ArcFaceLoss: margin must be in"),
             (lambda: LN.CosFaceLoss(8, 10, margin=float("nan")), ValueError, "^CosFaceLoss: margin must be finite"),
             (lambda: LN.SphereFaceLoss(8, 10, margin=-1), ValueError, "^SphereFaceLoss: margin must be > 0"),
             (lambda: LN.CombinedMarginLoss(8, 10, ignore_index=2 ** 70), ValueError, "ignore_index must fit in int64"),
             (lambda: LN.CombinedMarginLoss(8, 10, chunk_size=2 ** 63), ValueError, "chunk_size must"),
             (lambda: LN.CombinedMarginLoss(8, 10, fused="yes"), TypeError, "fused must be a bool"),
             (lambda: LN.MarginCrossEntropyLoss(weight=torch.ones(2, 2)), ValueError, "weight must be a 1-D"),
             (lambda: LN.SphereFaceLoss(8, 10, gamma=-1.0), ValueError, "gamma must be >= 0")]
    for make, err, match in cases:
        with pytest.raises(err, match=match):
            make()


@pytest.mark.parametrize("cls,fixed", [(LN.CosFaceLoss, "m2"), (LN.ArcFaceLoss, "m3"), (LN.SphereFaceLoss, "m1"),
                                       (LN.SphereFaceLoss, "lambda_")])
def test_wrappers_refuse_the_margins_they_fix(cls, fixed):
    with pytest.raises(TypeError, match=f"^{cls.__name__}: {fixed} is fixed by"):
        cls(8, 10, **{fixed: 0.5})


def test_numpy_numbers_in_modules_and_functions():
    np = pytest.importorskip("numpy")
    m = LN.ArcFaceLoss(8, np.int64(10), scale=np.float32(30))
    assert m.num_classes == 10 and m.scale == 30.0
    cos, t = _cos(4, 5), _target(4, 5)
    torch.testing.assert_close(LF.cosface_loss(cos, t, np.float64(30.0), np.float32(0.25), ignore_index=np.int32(-1)),
                               LF.cosface_loss(cos, t, 30.0, 0.25, ignore_index=-1))


def test_sphereface_weights_only_checkpoint_loads_strictly():
    m = LN.SphereFaceLoss(8, 6)
    m.step(7)
    w = torch.randn(6, 8)
    m.load_state_dict({"weight": w})  # strict: no missing 'iteration'
    assert m.iteration == 7 and torch.equal(m.weight.detach(), w)
    m2 = LN.SphereFaceLoss(8, 6)
    m2.load_state_dict({"weight": w, "_extra_state": {"iteration": 3}})  # an older lossext checkpoint
    assert m2.iteration == 3
    with pytest.raises(RuntimeError, match="Unexpected key"):
        m2.load_state_dict({"weight": w, "bogus": torch.ones(1)})


def test_wrappers_are_the_combined_margin():
    cos, t = _cos(5, 8), _target(5, 8)
    torch.testing.assert_close(LF.cosface_loss(cos, t, 30.0, 0.4), LF.margin_cross_entropy(cos, t, 30.0, m3=0.4))
    torch.testing.assert_close(LF.arcface_loss(cos, t, 30.0, 0.3, easy_margin=True),
                               LF.margin_cross_entropy(cos, t, 30.0, m2=0.3, easy_margin=True))
    torch.testing.assert_close(LF.sphereface_loss(cos, t, 3, lambda_=2.0),
                               LF.margin_cross_entropy(cos, t, 64.0, m1=3.0, lambda_=2.0))
    norms = torch.rand(5, dtype=torch.float64) * 10
    torch.testing.assert_close(LF.sphereface_loss(cos, t, 4, feature_norm=norms),
                               R.margin_cross_entropy(cos, t, m1=4.0, feature_norm=norms))


def test_class_weight_gradient():
    """A class weight that requires grad gets the composite's gradient (torch refuses)."""
    cos, t = _cos(6, 5), _target(6, 5)
    w = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_(True)
    (g,) = torch.autograd.grad(LF.arcface_loss(cos, t, weight=w, label_smoothing=0.1), w)
    wr = w.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(R.margin_cross_entropy(cos, t, **ARC, weight=wr, label_smoothing=0.1), wr)
    torch.testing.assert_close(g, gr)


# ---- the fused op against the unfused one --------------------------------------------------

@pytest.mark.parametrize("C,chunk", [(1, None), (5, 64), (37, 8), (37, 1), (1000, 96), (1000, None)])
@pytest.mark.parametrize("name", ["cosface", "arcface", "sphereface"])
def test_fused_equals_unfused(device, C, chunk, name):
    """fused_linear_margin_cross_entropy == margin_cross_entropy(normalize(x) @ normalize(W).T):
    values and both gradients, C not a multiple of the chunk, C < chunk and C = 1."""
    g = torch.Generator().manual_seed(C)
    x0 = torch.randn(13, 24, generator=g, dtype=torch.float64).to(device)
    w0 = torch.randn(C, 24, generator=g, dtype=torch.float64).to(device)
    t = torch.randint(0, C, (13,), generator=g).to(device)
    t[3] = -100
    cfg = CONFIGS[name]
    out = []
    for fused in (True, False):
        x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        if fused:
            loss = LF.fused_linear_margin_cross_entropy(x, w, t, chunk_size=chunk, label_smoothing=0.05, **cfg)
        else:
            cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
            loss = LF.margin_cross_entropy(cos, t, label_smoothing=0.05, **cfg)
        out.append((loss, *torch.autograd.grad(loss, (x, w))))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_fused_results_do_not_depend_much_on_chunk_size():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=g)
    w = torch.randn(3001, 16, generator=g)
    t = torch.randint(0, 3001, (32,), generator=g)
    base = LF.fused_linear_margin_cross_entropy(x, w, t, m2=0.5)
    for chunk in (1, 7, 256, 5000):
        torch.testing.assert_close(LF.fused_linear_margin_cross_entropy(x, w, t, m2=0.5, chunk_size=chunk), base,
                                   rtol=1e-5, atol=1e-5)


def test_fused_linear_cross_entropy_is_plain_cross_entropy(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    w = torch.randn(11, 6, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    b = torch.randn(11, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    t = torch.randint(0, 11, (9,), generator=g).to(device)
    t[0] = -100
    for kw in [dict(), dict(label_smoothing=0.1, reduction="sum")]:
        ours = LF.fused_linear_cross_entropy(x, w, t, b, chunk_size=4, **kw)
        theirs = F.cross_entropy(F.linear(x, w, b), t, **kw)
        torch.testing.assert_close(ours, theirs)
        for a, c in zip(torch.autograd.grad(ours, (x, w, b)), torch.autograd.grad(theirs, (x, w, b))):
            torch.testing.assert_close(a, c)


def test_fused_never_stores_the_logits():
    """Peak extra memory of forward + backward stays far below one [N, C] float32 matrix
    (what the composite holds several of), besides the gradients it returns."""
    from lossext.testing.benchmark import peak_memory

    g = torch.Generator().manual_seed(0)
    N, D, C, chunk = 256, 32, 40_000, 512
    x = torch.randn(N, D, generator=g).requires_grad_(True)
    w = torch.randn(C, D, generator=g).requires_grad_(True)
    t = torch.randint(0, C, (N,), generator=g)

    def call(_):
        return torch.autograd.grad(LF.fused_linear_margin_cross_entropy(x, w, t, m2=0.5, chunk_size=chunk), (x, w))

    grads = (N + C) * D * 4
    logits = N * C * 4
    extra = peak_memory(call, "cpu") - grads
    assert extra < logits / 8, (extra, logits)
    # O(N chunk + chunk D + N D + C): chunk buffer, normalized chunk weights, normalized input,
    # dX accumulator, norms and row stats
    assert extra <= 4 * (N * chunk + chunk * D + 3 * N * D + 2 * C + 8 * N) + (1 << 20), extra


# ---- Modules ----------------------------------------------------------------------------

def test_modules_own_their_weights():
    torch.manual_seed(0)
    for mod in [LN.CosFaceLoss(16, 10), LN.ArcFaceLoss(16, 10), LN.SphereFaceLoss(16, 10),
                LN.CombinedMarginLoss(16, 10, 1.0, 0.3, 0.2, 30.0)]:
        assert [n for n, _ in mod.named_parameters()] == ["weight"]
        assert mod.weight.shape == (10, 16)
        bound = 1 / math.sqrt(16)  # nn.Linear's init
        assert mod.weight.abs().max() <= bound
        x = torch.randn(5, 16)
        t = torch.randint(0, 10, (5,))
        torch.testing.assert_close(mod.logits(x), F.normalize(x) @ F.normalize(mod.weight).t())
        loss = mod(x, t)
        loss.backward()
        assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0


def test_modules_fused_and_unfused_agree():
    torch.manual_seed(0)
    a = LN.ArcFaceLoss(16, 50, chunk_size=7)
    b = LN.ArcFaceLoss(16, 50, fused=False)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(8, 16), torch.randint(0, 50, (8,))
    torch.testing.assert_close(a(x, t), b(x, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: LN.ArcFaceLoss(16, 50, fused=False), lambda: LN.CosFaceLoss(16, 50),
                                  lambda: LN.SphereFaceLoss(16, 50), lambda: LN.SphereFaceLoss(16, 50, feature_norm=True)],
                         ids=["arcface-unfused", "cosface", "sphereface", "sphereface-feature-norm"])
def test_module_errors_name_embeddings(make):
    """The heads' bad embeddings raise an error naming `embeddings`, fused or not (found by the
    fuzzer's review: SphereFaceLoss(None, t) raised AttributeError ('NoneType' has no attribute
    'device'), and the unfused paths raised normalize's and matmul's errors naming `input`)."""
    mod, t = make(), torch.randint(0, 50, (4,))
    name = type(mod).__name__
    with pytest.raises(TypeError, match=rf"^{name}: embeddings must be a Tensor, got NoneType"):
        mod(None, t)
    with pytest.raises(ValueError, match=rf"^{name}: embeddings must be 2-D \[N, D\], got shape \[4\]"):
        mod(torch.randn(4), t)
    with pytest.raises(ValueError, match=rf"^{name}: .*D = 15"):
        mod(torch.randn(4, 15), t)


def test_fused_weight_error_says_classes_and_flags_take_numpy_bools():
    """The fused op's 2-D message for weight said [N, D] (it is [C, D]); numpy bools (a
    comparison's result) were refused as flags although numpy numbers are taken elsewhere."""
    np = pytest.importorskip("numpy")
    x, t = torch.randn(4, 8), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match=r"weight must be 2-D \[C, D\], got shape \[8\]"):
        LF.fused_linear_margin_cross_entropy(x, torch.randn(8), t)
    w = torch.randn(5, 8)
    for flag in (np.True_, np.bool_(False)):
        torch.testing.assert_close(LF.fused_linear_margin_cross_entropy(x, w, t, m2=0.5, easy_margin=flag),
                                   LF.fused_linear_margin_cross_entropy(x, w, t, m2=0.5, easy_margin=bool(flag)))
    with pytest.raises(TypeError, match="easy_margin must be a bool"):
        LF.arcface_loss(torch.rand(4, 5), t, easy_margin=np.float64(1.0))


def test_sphereface_lambda_schedule():
    """lambda = max(lambda_min, base (1 + gamma it)^-power); it counts optimizer steps (.step()),
    not forward calls: micro-batches, eval and no_grad calls leave it alone."""
    m = LN.SphereFaceLoss(8, 6)
    x, t = torch.randn(4, 8), torch.randint(0, 6, (4,))
    lams = []
    for _ in range(3):
        lams.append(m.current_lambda())
        for _micro in range(2):  # gradient accumulation: two forwards per optimizer step
            m(x, t).backward()
        m.step()
    assert lams == [1000.0, 1000.0 / 1.12, 1000.0 / 1.24]
    m.eval()
    with torch.no_grad():
        m(x, t)
    assert m.iteration == 3
    m.iteration.fill_(10 ** 6)
    assert m.current_lambda() == 5.0
    m2 = LN.SphereFaceLoss(8, 6)
    m2.load_state_dict(m.state_dict())
    assert m2.iteration == 10 ** 6
    # the loss uses the annealed target: lambda = 1000 is nearly plain softmax
    m3 = LN.SphereFaceLoss(8, 6)
    expect = LF.fused_linear_margin_cross_entropy(x, m3.weight, t, 64.0, 4.0, lambda_=1000.0)
    assert m3.iteration == 0
    torch.testing.assert_close(m3(x, t), expect)
    # the original |x| cos logits
    m4 = LN.SphereFaceLoss(8, 6, feature_norm=True)
    cos = F.normalize(x) @ F.normalize(m4.weight).t()
    torch.testing.assert_close(m4(x, t), R.margin_cross_entropy(cos, t, m1=4.0, lambda_=1000.0,
                                                                feature_norm=x.norm(dim=1)))


def test_margin_cross_entropy_module_and_bad_hyperparameters():
    cos, t = _cos(4, 6).float(), _target(4, 6)
    torch.testing.assert_close(LN.MarginCrossEntropyLoss(m2=0.5)(cos, t), LF.arcface_loss(cos, t))
    with pytest.raises(ValueError, match="^ArcFaceLoss: margin must be in"):  # the user's name, not m2
        LN.ArcFaceLoss(8, 4, margin=4.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        LN.CosFaceLoss(8, 4, label_smoothing=2.0)
    with pytest.raises(ValueError, match="embedding_dim"):
        LN.CombinedMarginLoss(0, 4)


# ---- raw-op messages, lambda_ as a tensor, D = 0 (issue 8) ---------------------------------

def test_bad_label_message_is_exact_on_every_raw_op():
    """The out-of-range label message is exactly this (the Python layer turns it into an
    IndexError), and names the op that was called, forward or backward."""
    cos = _cos(4, 5, dtype=torch.float32)
    t = torch.tensor([0, 1, 5, 2])
    p = (64.0, 1.0, 0.5, 0.0, None, False, 0.0, -100, 1)
    lse = torch.zeros(4, dtype=torch.float64)
    x, w = torch.randn(4, 3), torch.randn(5, 3)
    fp = p[:6] + (True,) + p[6:] + (0,)
    calls = {
        "margin_cross_entropy": (cos, t, None, None, *p),
        "margin_cross_entropy_backward": (torch.ones(()), cos, t, None, None, lse, *p),
        "margin_cross_entropy_with_grad": (cos, t, None, None, *p),
        "fused_linear_margin_cross_entropy": (x, w, t, None, *fp),
        "fused_linear_margin_cross_entropy_backward": (torch.ones(()), x, w, t, None, lse, *fp),
    }
    for name, args in calls.items():
        with pytest.raises(RuntimeError) as e:
            getattr(torch.ops.lossext, name)(*args)
        assert str(e.value) == (f"lossext::{name}: argument 'target' has value 5 at index 2, "
                                "outside [0, 5) and not ignore_index (-100)")


@pytest.mark.parametrize("fused", [False, True])
def test_lambda_is_a_tensor_argument(device, fused):
    """lambda_ is a 0-dim float64 tensor (None = 0) in the raw ops: the same results as the
    reference for several values, read from the tensor (also on CUDA, from device memory)."""
    g = torch.Generator().manual_seed(0)
    n, d, c = 6, 5, 9
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=g)
    cos = F.normalize(x) @ F.normalize(w).T
    for lam in [0.0, 0.5, 5.0, 1000.0]:
        lam_t = None if lam == 0.0 else torch.full((), lam, dtype=torch.float64, device=device)
        if fused:
            xd, wd = x.to(device).requires_grad_(True), w.to(device).requires_grad_(True)
            loss, _ = torch.ops.lossext.fused_linear_margin_cross_entropy(
                xd, wd, t.to(device), None, 64.0, 4.0, 0.0, 0.0, lam_t, False, True, 0.0, -100, 1, 4)
            inputs = (xd, wd)
            xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
            ref = R.fused_linear_margin_cross_entropy(xr, wr, t, 64.0, 4.0, 0.0, 0.0, lambda_=lam)
            ref_inputs = (xr, wr)
        else:
            cd = cos.to(device).requires_grad_(True)
            loss, _ = torch.ops.lossext.margin_cross_entropy(cd, t.to(device), None, None, 64.0, 4.0, 0.0, 0.0,
                                                             lam_t, False, 0.0, -100, 1)
            inputs = (cd,)
            cr = cos.clone().requires_grad_(True)
            ref = R.margin_cross_entropy(cr, t, 64.0, 4.0, 0.0, 0.0, lambda_=lam)
            ref_inputs = (cr,)
        torch.testing.assert_close(loss.cpu(), ref)
        for a, b in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, ref_inputs)):
            torch.testing.assert_close(a.cpu(), b)


def test_lambda_tensor_compiles_once():
    """A changing lambda_ tensor is a graph input, not a constant: one compilation."""
    import torch._dynamo.testing

    torch._dynamo.reset()
    cnt = torch._dynamo.testing.CompileCounter()
    cos = _cos(4, 6, dtype=torch.float32)
    t = _target(4, 6)

    @torch.compile(backend=cnt, fullgraph=True)
    def f(cos, lam):
        return torch.ops.lossext.margin_cross_entropy(cos, t, None, None, 64.0, 4.0, 0.0, 0.0, lam, False,
                                                      0.0, -100, 1)[0]
    for lam in [1000.0, 500.0, 250.0, 5.0]:
        lam_t = torch.full((), lam, dtype=torch.float64)
        torch.testing.assert_close(f(cos, lam_t), LF.margin_cross_entropy(cos, t, 64.0, 4.0, lambda_=lam))
    assert cnt.frame_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
def test_cuda_bad_lambda_gives_nan():
    """On CUDA lambda_ is read on the device (no host sync): a negative or NaN value is not
    refused but makes the loss NaN."""
    cos = _cos(4, 5).cuda()
    t = torch.tensor([0, 1, 2, 3], device="cuda")
    for bad in [-1.0, float("nan"), float("inf")]:
        lam = torch.full((), bad, dtype=torch.float64, device="cuda")
        loss, _ = torch.ops.lossext.margin_cross_entropy(cos, t, None, None, 64.0, 4.0, 0.0, 0.0, lam, False,
                                                         0.0, -100, 1)
        assert loss.isnan().item()


@pytest.mark.parametrize("normalize", [False, True])
def test_fused_with_no_features(device, normalize):
    """D = 0: the logits are the bias alone (or 0): the loss and the bias gradient as
    F.cross_entropy's (the backward returned a zero bias gradient for D = 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 0, dtype=torch.float64).to(device).requires_grad_(True)
    w = torch.randn(5, 0, dtype=torch.float64).to(device).requires_grad_(True)
    t = torch.randint(0, 5, (7,), generator=g).to(device)
    t[2] = -100
    if normalize:
        ours = LF.fused_linear_margin_cross_entropy(x, w, t, scale=10.0, m3=0.2, chunk_size=2)
        theirs = R.fused_linear_margin_cross_entropy(x.cpu(), w.cpu(), t.cpu(), 10.0, 1.0, 0.0, 0.2)
        torch.testing.assert_close(ours.cpu(), theirs)
        return
    b = torch.randn(5, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    for kw in [dict(), dict(label_smoothing=0.1, reduction="sum")]:
        ours = LF.fused_linear_cross_entropy(x, w, t, b, chunk_size=2, **kw)
        theirs = F.cross_entropy(x @ w.T + b, t, **kw)
        torch.testing.assert_close(ours, theirs)
        ga = torch.autograd.grad(ours, (x, w, b))
        gb = torch.autograd.grad(theirs, (x, w, b))
        assert ga[2].abs().sum() > 0
        for a, c in zip(ga, gb):
            torch.testing.assert_close(a, c)


@pytest.mark.parametrize("norm", [200.0, 300.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_with_large_norms(device, dtype, norm):
    """Embeddings and class weights with norms ~300 in float16: x W^T (~9e4) overflowed float16
    before the norms were divided out (NaN loss), and (norms ~200: no overflow) the backward's
    G s rx rw (p - y) (~1e-6) underflowed before the matmul with x. Now: finite, and close to
    float32 on the same values."""
    g = torch.Generator().manual_seed(0)
    N, D, C = 256, 32, 50
    t = torch.randint(0, C, (N,), generator=g)
    w = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64))
    x = F.normalize(w[t] + 0.3 * torch.randn(N, D, generator=g, dtype=torch.float64))  # cos ~ 0.95 with its class
    x = (x * norm).to(dtype)
    w = (w * torch.linspace(0.85 * norm, 1.15 * norm, C, dtype=torch.float64)[:, None]).to(dtype)
    kw = dict(scale=16.0, m2=0.5, chunk_size=16)
    xs = [x.to(device).requires_grad_(True), x.float().requires_grad_(True)]
    ws = [w.to(device).requires_grad_(True), w.float().requires_grad_(True)]
    half, full = (LF.fused_linear_margin_cross_entropy(a, b, t.to(a.device), **kw) for a, b in zip(xs, ws))
    assert half.isfinite().all()
    torch.testing.assert_close(half.float().cpu(), full, rtol=2e-2, atol=1e-3)
    (gx, gw), (fx, fw) = (torch.autograd.grad(l, (a, b)) for l, a, b in zip((half, full), xs, ws))
    for ours, ref in [(gx, fx), (gw, fw)]:
        ours = ours.float().cpu()
        assert ours.isfinite().all()
        # relative error of the whole gradient, and no entries flushed to zero where float32 has them
        assert (ours - ref).norm() <= 1e-2 * ref.norm(), ((ours - ref).norm(), ref.norm())
        assert ((ours == 0) & (ref.abs() > 1e-3 * ref.abs().max())).sum() == 0


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_fused_half_grad_weight_many_rows_of_one_class(device, reduction):
    """float16, normalize: grad_weight's B^T xn (B = dLoss/dlogits, |B| up to s = 64 per row) was
    rounded to float16 before the division by |w_j| ~ 300: with ~2048 rows that push one class
    the same way, a column is ~64 * 2048 > 65504, so grad_weight came out inf/NaN although the
    true gradient is ~440. Now: finite and close to float32 on the same values."""
    g = torch.Generator().manual_seed(0)
    N, D, C = 2048, 16, 5
    w = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64))
    w[0] = F.normalize(torch.eye(D, dtype=torch.float64)[0] + 0.05 * torch.randn(D, generator=g, dtype=torch.float64), dim=0)
    # every row close to class 0's direction but labelled class 1: B[:, 0] ~ +64, B[:, 1] ~ -64
    x = F.normalize(w[0] + 0.3 * torch.randn(N, D, generator=g, dtype=torch.float64))
    t = torch.ones(N, dtype=torch.long)
    x = (x * 300.0).to(torch.float16)
    w = (w * torch.linspace(290.0, 310.0, C, dtype=torch.float64)[:, None]).to(torch.float16)
    kw = dict(scale=64.0, m2=0.5, reduction=reduction)
    xs = [x.to(device).requires_grad_(True), x.float().requires_grad_(True)]
    ws = [w.to(device).requires_grad_(True), w.float().requires_grad_(True)]
    half, full = (LF.fused_linear_margin_cross_entropy(a, b, t.to(a.device), **kw) for a, b in zip(xs, ws))
    go = [torch.ones_like(half), torch.ones_like(full)]
    (gx, gw), (fx, fw) = (torch.autograd.grad(l, (a, b), o) for l, a, b, o in zip((half, full), xs, ws, go))
    assert fw.abs().max() > 100  # the case: large true gradients, B^T xn beyond float16's range
    for ours, ref in [(gx, fx), (gw, fw)]:
        ours = ours.float().cpu()
        assert ours.isfinite().all()
        assert (ours - ref).norm() <= 1e-2 * ref.norm(), ((ours - ref).norm(), ref.norm())


@pytest.mark.parametrize("case", ["all-ignored", "ragged-chunks", "no-rows", "one-chunk"])
def test_fused_gradients_write_every_row(device, case):
    """grad_weight and grad_bias start uninitialized (every chunk writes its rows): every row is
    written. Memory of the same size filled with NaN is freed just before, so that an unwritten
    row would likely show up as NaN."""
    g = torch.Generator().manual_seed(0)
    N, D, C, chunk = {"all-ignored": (5, 4, 11, 4), "ragged-chunks": (6, 3, 10, 4), "no-rows": (0, 4, 9, 4),
                      "one-chunk": (3, 5, 7, 64)}[case]
    t = torch.randint(0, C, (N,), generator=g)
    if case == "all-ignored":
        t[:] = -100
    for normalize in (True, False):
        x = torch.randn(N, D, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
        w = torch.randn(C, D, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
        b = None if normalize else torch.randn(C, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
        leaves = (x, w) if normalize else (x, w, b)
        for _ in range(3):
            poison = torch.full((C * D + C,), float("nan"), dtype=torch.float64, device=device)
            del poison
        ours = LF.fused_linear_margin_cross_entropy(x, w, t.to(device), scale=8.0, m3=0.1, chunk_size=chunk,
                                                    normalize=normalize, bias=b, reduction="sum")
        logits = F.normalize(x) @ F.normalize(w).T if normalize else x @ w.T + b
        ref = R.margin_cross_entropy(logits, t.to(device), 8.0, 1.0, 0.0, 0.1, reduction="sum") if normalize \
            else F.cross_entropy(8.0 * (logits - 0.1 * F.one_hot(t.clamp(min=0), C).to(device)), t.to(device),
                                 reduction="sum")
        for a, r in zip(torch.autograd.grad(ours, leaves), torch.autograd.grad(ref, leaves)):
            assert a.isfinite().all()
            torch.testing.assert_close(a, r)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_overflowing_logits_are_nan_as_cross_entropy(device, dtype):
    """scale * cos overflowing the accumulation type (float32 for half inputs): every device
    and dtype gives what F.cross_entropy gives on those logits: a row with a +inf logit (row 0:
    a non-target class, row 1: the target) has a NaN loss and gradient; other rows are finite."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    big = 1e307 if dtype == torch.float64 else 1e38
    cos = torch.tensor([[0.5, 40.0, 0.1, 0.2], [0.2, 40.0, 0.3, 0.1], [0.5, 0.1, 0.2, 0.3]], dtype=dtype)
    t = torch.tensor([0, 1, 2])
    expected = F.cross_entropy(big * cos.to(acc), t, reduction="none")
    assert expected[:2].isnan().all() and expected[2].isfinite()
    c = cos.to(device).requires_grad_(True)
    loss = LF.margin_cross_entropy(c, t.to(device), scale=big, reduction="none")
    torch.testing.assert_close(loss.cpu(), expected.to(dtype), equal_nan=True, rtol=1e-3, atol=0)
    (g,) = torch.autograd.grad(loss[2] + loss[0] + loss[1], c)
    assert g[:2].isnan().all() and not g[2].isnan().any()  # row 2: s (p - y) may overflow float16
    for red in ("mean", "sum"):
        assert LF.margin_cross_entropy(c, t.to(device), scale=big, reduction=red).isnan().item()
    # the fused op: a plain linear layer whose logits overflow
    x = torch.tensor([[1.0], [2.0], [0.5]], dtype=dtype)
    w = torch.tensor([[40.0], [0.25], [-0.5], [0.1]], dtype=dtype)
    expected = F.cross_entropy(big * (x.to(acc) @ w.to(acc).T), t, reduction="none")
    loss = LF.fused_linear_margin_cross_entropy(x.to(device), w.to(device), t.to(device), scale=big, m3=0.0,
                                                normalize=False, chunk_size=3, reduction="none")
    torch.testing.assert_close(loss.cpu(), expected.to(dtype), equal_nan=True, rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype,big", [(torch.float64, 9e18), (torch.float32, 2e8)])
def test_huge_logits_keep_the_softmax_shift(device, dtype, big):
    """The kernels shifted a logit by the row max as fma(scale, cos, -max): the product's
    rounding residual (half an ulp of the logit, ~500 at a float64 logit of 2.7e20, ~250 at a
    float32 one of 6e9) went into exp, so the row's max term was exp(+-500) instead of 1: a
    float64 loss of inf with NaN gradients, and float32 gradients of 5e-37 for scale 30.1 (found
    by the fuzzer). scale = 30.1 is no power of two, so the product rounds. Both ops, CPU and
    CUDA; the reference is F.cross_entropy on the same logits in float64."""
    scale = 30.1
    cos = torch.tensor([[big, 0.3, big * (1 - 1e-7), -big], [0.2, big, 0.3, 0.4]], dtype=dtype)
    t = torch.tensor([1, 1])
    z = (torch.tensor(scale, dtype=dtype) * cos).double().requires_grad_(True)  # the kernel's rounded logits
    ref = F.cross_entropy(z, t, reduction="none")
    (gz,) = torch.autograd.grad(ref.sum(), z)
    c = cos.to(device).requires_grad_(True)
    loss = LF.margin_cross_entropy(c, t.to(device), scale=scale, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), c)
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(g.cpu().double(), gz * float(torch.tensor(scale, dtype=dtype)), rtol=1e-5, atol=1e-5)
    # the fused op, a plain linear layer: logits scale * x w^T with x = 1
    x = torch.ones(2, 1, dtype=dtype, device=device, requires_grad=True)
    w = torch.tensor([[big], [0.3], [big * (1 - 1e-7)], [-big]], dtype=dtype, device=device, requires_grad=True)
    loss = LF.fused_linear_margin_cross_entropy(x, w, t.to(device), scale=scale, m3=0.0, normalize=False,
                                                chunk_size=3, reduction="none")
    (gw,) = torch.autograd.grad(loss.sum(), w)
    torch.testing.assert_close(loss.cpu().double(), ref.detach()[:1].expand(2), rtol=1e-6, atol=0)
    assert gw.isfinite().all()
    torch.testing.assert_close(gw.cpu().double()[:, 0], 2 * gz[0] * float(torch.tensor(scale, dtype=dtype)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", ["plain", "cosface", "arcface", "combined", "sphereface", "sphereface-annealed",
                                    "smoothing"])
def test_target_cosine_of_minus_inf(device, config):
    """A target cosine of -inf: the annealed target (lambda cos + psi) / (1 + lambda) computed
    0 * -inf = NaN for lambda = 0, so the loss and gradients were NaN where F.cross_entropy on
    the same logits gives +inf and a finite gradient (found by the fuzzer). Now: an additive or
    arc margin keeps the logit -inf (loss +inf); SphereFace's psi clamps the cosine to -1 (the
    reference's acos(clamp)), so its loss is finite, and annealed it is -inf again."""
    inf = float("inf")
    kw = {"plain": dict(m2=0.0), "smoothing": dict(m2=0.0, label_smoothing=0.1)}.get(config) or CONFIGS[config]
    cos = torch.tensor([[0.5, -inf, 0.2], [0.3, 0.1, -0.4]], dtype=torch.float64)
    t = torch.tensor([1, 0])
    c = cos.to(device).requires_grad_(True)
    loss = LF.margin_cross_entropy(c, t.to(device), scale=64.0, reduction="none", **kw)
    (g,) = torch.autograd.grad(loss.sum(), c)  # backward does not read the inf sum
    rc = cos.clone().requires_grad_(True)
    ref = R.margin_cross_entropy(rc, t, scale=64.0, reduction="none", **kw)
    (rg,) = torch.autograd.grad(ref.sum(), rc)
    finite = config == "sphereface"
    assert (loss[0].isfinite() if finite else loss[0] == inf).item(), loss
    torch.testing.assert_close(loss.cpu(), ref.detach())
    assert g.isfinite().all(), g
    torch.testing.assert_close(g.cpu(), rg)
    if config == "plain":
        torch.testing.assert_close(loss.cpu(), F.cross_entropy(64.0 * cos, t, reduction="none"))


def test_fused_plain_linear_with_threads_and_input_grad():
    """normalize=False multiplies the input itself; on the CPU the chunk matmuls run as
    parallel tasks, some on worker threads (grad mode on there). With an input that requires
    grad and more than one 512-class task, the forward raised 'aten::mm.out failed' (mm.out
    refuses an out= call whose input requires grad) on every multi-threaded CPU."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1500, 8, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1500, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 1500, (4,), generator=g)
    ours = LF.fused_linear_cross_entropy(x, w, t, bias=b)
    ref = F.cross_entropy(x @ w.T + b, t)
    torch.testing.assert_close(ours, ref)
    for a, r in zip(torch.autograd.grad(ours, (x, w, b)), torch.autograd.grad(ref, (x, w, b))):
        torch.testing.assert_close(a, r)


# ---- CUDA: long rows of few-row problems split across blocks (issue 8, item 6) -------------

_HALF = (torch.float16, torch.bfloat16)
_ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _unsplit_rows():
    """Rows enough that the CUDA row kernels keep one block per row (row_split in
    csrc/margin/margin_cuda.cu: N >= 4 blocks per SM); fewer rows of >= 4096 columns split."""
    return 4 * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def _split_tol(dtype):
    """Relative tolerance of a split row against the float64 reference or the unsplit row: the
    output rounding for half dtypes, float32 exponent rounding (z ~ 64, 2^-24 absolute) otherwise."""
    return 1e-9 if dtype == torch.float64 else max(2 * torch.finfo(dtype).eps, 2e-5)


def _close(a, b, dtype, msg):
    tol = _split_tol(dtype)
    b = b.detach().to("cpu", torch.float64)
    torch.testing.assert_close(a.detach().to("cpu", torch.float64), b, rtol=tol,
                               atol=tol * max(1.0, b.abs().max().item()), equal_nan=True,
                               msg=lambda m: f"{msg}\n{m}")


def _run_twice(fn, leaves, go):
    """fn's output and the gradients of its leaves, twice: the second run must equal the first bit for bit."""
    runs = []
    for _ in range(2):
        ls = [t.detach().clone().requires_grad_(True) for t in leaves]
        out = fn(*ls)
        runs.append((out.detach(), torch.autograd.grad(out, ls, go.to(out.device, out.dtype))))
    (o1, g1), (o2, g2) = runs
    assert torch.equal(o1, o2) and all(torch.equal(a, b) for a, b in zip(g1, g2)), "not bitwise repeatable"
    return o1, g1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
@pytest.mark.parametrize("C", [300001, 65536])  # odd rows: unaligned, element loads; 65536: 16-byte loads
@pytest.mark.parametrize("dtype", _ALL_DTYPES)
def test_cuda_split_rows_margin_ce(dtype, C):
    """N = 3 rows of C classes: each row is split across blocks (forward partials merged in split
    order; backward segments; the row_scale partial sums). Bitwise repeatable, equal to the
    float64 reference and to the same rows in a batch large enough for one block per row, to
    rounding. Row 2 is ignored; class weights, label smoothing and feature_norm are on."""
    n = 3
    g = torch.Generator().manual_seed(7)
    cos = _cos(n, C, seed=3).to(dtype)
    t = _target(n, C, seed=4)
    t[2] = -1
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    fn = (torch.rand(n, generator=g, dtype=torch.float64) * 30 + 30).to(dtype)
    go = torch.randn(n, generator=g, dtype=torch.float64)
    kw = dict(m2=0.5, label_smoothing=0.1, ignore_index=-1, reduction="none")

    def ours(c, f, y=t.cuda(), wc=w.cuda()):
        return LF.margin_cross_entropy(c, y, weight=wc, feature_norm=f, **kw)

    loss, (gc, gf) = _run_twice(ours, [cos.cuda(), fn.cuda()], go)
    c64, f64 = cos.double().requires_grad_(True), fn.double().requires_grad_(True)
    ref = R.margin_cross_entropy(c64, t, weight=w.double(), feature_norm=f64, **kw)
    rc, rf = torch.autograd.grad(ref, (c64, f64), go)
    for a, b, what in ((loss, ref, "loss"), (gc, rc, "grad cos"), (gf, rf, "grad feature_norm")):
        _close(a, b, dtype, f"{what} vs float64 reference")
    # the same rows among enough others that every row has one block
    big = _unsplit_rows() + n
    cb = torch.cat([cos, _cos(big - n, C, seed=5).to(dtype)]).cuda()
    fb = torch.cat([fn, (torch.rand(big - n, generator=g, dtype=torch.float64) * 30 + 30).to(dtype)]).cuda()
    yb = torch.cat([t, _target(big - n, C, seed=6)]).cuda()
    gob = torch.cat([go, torch.zeros(big - n, dtype=torch.float64)])
    lb, (gcb, gfb) = _run_twice(lambda c, f: ours(c, f, yb), [cb, fb], gob)
    for a, b, what in ((loss, lb[:n], "loss"), (gc, gcb[:n], "grad cos"), (gf, gfb[:n], "grad feature_norm")):
        _close(a, b, dtype, f"split {what} vs one block per row")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", _ALL_DTYPES)
def test_cuda_split_rows_fused(dtype, normalize):
    """The fused op with N = 3 rows and C = 300001 classes (two chunks, 262144 + 37857 columns,
    given as chunk_size since CUDA's automatic chunk now takes all of C here; both split across
    blocks): bitwise repeatable; against the float64 reference (float32,
    float64; and the same rows among enough others for one block per row) or within 2x the
    error of PyTorch's composite in the same dtype (float16, bfloat16: the chunk products are
    rounded to that dtype)."""
    n, C, D = 3, 300001, 16
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(C, D, generator=g, dtype=torch.float64).to(dtype)
    b = None if normalize else (torch.randn(C, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    t = _target(n, C, seed=12)
    t[1] = -1
    go = torch.randn(n, generator=g, dtype=torch.float64)
    kw = dict(scale=30.0, m2=0.5) if normalize else dict(scale=1.0, m3=0.1)
    kw.update(label_smoothing=0.1, ignore_index=-1, reduction="none", normalize=normalize, chunk_size=262144)
    leaves = [x, w] if normalize else [x, w, b]

    def run(f, y, *ls):
        return f(ls[0], ls[1], y, bias=None if normalize else ls[2], **kw)

    loss, grads = _run_twice(lambda *ls: run(LF.fused_linear_margin_cross_entropy, t.cuda(), *ls),
                             [v.cuda() for v in leaves], go)
    l64 = [v.double().requires_grad_(True) for v in leaves]
    ref = run(R.fused_linear_margin_cross_entropy, t, *l64)
    rgrads = torch.autograd.grad(ref, l64, go)
    if dtype in _HALF:
        lh = [v.cuda().requires_grad_(True) for v in leaves]
        theirs = run(R.fused_linear_margin_cross_entropy_composite, t.cuda(), *lh)
        tgrads = torch.autograd.grad(theirs, lh, go.to("cuda", theirs.dtype))
        for a, th, r in zip((loss, *grads), (theirs, *tgrads), (ref, *rgrads)):
            r = r.detach()
            err = lambda v: (v.detach().double().cpu() - r).abs().max().item()  # noqa: E731
            floor = torch.finfo(dtype).eps * max(1.0, r.abs().max().item())
            assert err(a) <= 2 * max(err(th), floor)
        return
    for a, r, what in zip((loss, *grads), (ref, *rgrads), ("loss", "grad x", "grad w", "grad bias")):
        _close(a, r, dtype, f"{what} vs float64 reference")
    big = _unsplit_rows() + n
    xb = torch.cat([x, torch.randn(big - n, D, generator=g, dtype=torch.float64).to(dtype)])
    yb = torch.cat([t, _target(big - n, C, seed=13)]).cuda()
    lb, gb = _run_twice(lambda *ls: run(LF.fused_linear_margin_cross_entropy, yb, *ls),
                        [xb.cuda()] + [v.cuda() for v in leaves[1:]],
                        torch.cat([go, torch.zeros(big - n, dtype=torch.float64)]))
    pairs = [(loss, lb[:n], "loss"), (grads[0], gb[0][:n], "grad x")] + \
        [(a, r, what) for a, r, what in zip(grads[1:], gb[1:], ("grad w", "grad bias"))]
    for a, r, what in pairs:
        _close(a, r, dtype, f"split {what} vs one block per row")


# ---- found by the fuzzer (tests/test_fuzz.py) ---------------------------------------------

@pytest.mark.parametrize("value", [None, [[0.5]]])
@pytest.mark.parametrize("lambda_", [0.0, 1.0])
def test_missing_tensor_is_a_type_error_naming_it(value, lambda_):
    """A required tensor that is None or not a Tensor: a TypeError naming it. None raised
    AttributeError from the checks ('NoneType' object has no attribute 'dtype'), and with
    lambda_ != 0 any non-Tensor did ('... has no attribute device', from lambda_tensor)."""
    t = torch.tensor([0])
    what = type(value).__name__
    calls = [("margin_cross_entropy", "cos_logits", lambda: LF.margin_cross_entropy(value, t, lambda_=lambda_)),
             ("sphereface_loss", "cos_logits", lambda: LF.sphereface_loss(value, t, lambda_=lambda_)),
             ("MarginCrossEntropyLoss", "cos_logits", lambda: LN.MarginCrossEntropyLoss(lambda_=lambda_)(value, t)),
             ("fused_linear_margin_cross_entropy", "embeddings",
              lambda: LF.fused_linear_margin_cross_entropy(value, torch.rand(2, 1), t, lambda_=lambda_)),
             ("fused_linear_margin_cross_entropy", "weight",
              lambda: LF.fused_linear_margin_cross_entropy(torch.rand(1, 1), value, t, lambda_=lambda_))]
    for fn, arg, call in calls:
        with pytest.raises(TypeError, match=f"^{fn}: {arg} must be a Tensor, got {what}$"):
            call()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
def test_reference_takes_the_label_dtypes_the_functions_take(dtype):
    """The float64 references refused (gather: index must be int64) the integer label dtypes
    the functions accept; the fuzzer draws them."""
    cos = _cos(5, 7)
    t = _target(5, 7)
    kw = dict(m2=0.5, label_smoothing=0.1, weight=torch.rand(7, dtype=torch.float64) + 0.5, reduction="none")
    torch.testing.assert_close(R.margin_cross_entropy(cos, t.to(dtype), **kw), R.margin_cross_entropy(cos, t, **kw))
    torch.testing.assert_close(LF.margin_cross_entropy(cos, t.to(dtype), **kw), R.margin_cross_entropy(cos, t, **kw))


def test_reference_with_no_rows_and_no_classes():
    """cos_logits [0, 0] is a valid call (no rows: 'mean' is NaN, 'sum' 0); the reference
    divided label_smoothing by C = 0 (ZeroDivisionError)."""
    cos, t = torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    for red, check in (("mean", torch.isnan), ("sum", lambda v: v == 0)):
        for fn in (LF.margin_cross_entropy, R.margin_cross_entropy):
            assert check(fn(cos, t, label_smoothing=0.1, reduction=red)), (fn, red)
    assert R.margin_cross_entropy(cos, t, label_smoothing=0.1, reduction="none").shape == (0,)


def test_reference_with_a_minus_inf_logit_is_torch_cross_entropy():
    """Without label smoothing the reference added 0 * (-log p_j) for every class: NaN where a
    logit is -inf (p_j = 0), although F.cross_entropy (its definition) gives the finite loss, or
    +inf for the target's."""
    inf = float("inf")
    t = torch.tensor([0])
    for z in ([[0.5, -inf, 0.3]], [[-inf, 0.16, 0.3]]):
        z = torch.tensor(z, dtype=torch.float64)
        for ls in (0.0, 0.5, 1.0):
            torch.testing.assert_close(R.cross_entropy(z, t, label_smoothing=ls),
                                       F.cross_entropy(z, t, label_smoothing=ls), equal_nan=True)


def test_reference_annealing_keeps_a_tiny_lambda():
    """The reference tested lambda_ == 0 on a float32 tensor of it: 9e-272 underflowed to 0 and
    dropped the annealed term, so a cosine of +inf gave a finite target logit where the kernel's
    (lambda cos + psi) / (1 + lambda) is +inf (found by the fuzzer)."""
    from lossext.margin.reference import target_margin
    c = torch.tensor([float("inf"), 0.3], dtype=torch.float64)
    out = target_margin(c, 1.0, 0.5, 0.0, 9e-272)
    assert out[0] == float("inf") and out[1].isfinite()
    assert target_margin(c, 1.0, 0.5, 0.0, 0.0)[0].isfinite()  # no annealing: psi clamps the angle


# ---- the one-pass forward (issue #15) ------------------------------------------------------

def _with_and_without_one_pass(monkeypatch, fn):
    """fn() through margin_cross_entropy_with_grad, then through the two-pass ops."""
    import lossext.margin.functional as MF
    one = fn()
    monkeypatch.setattr(MF, "use_one_pass", lambda cos, red: False)
    two = fn()
    monkeypatch.undo()
    return one, two


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["plain", "weights+smoothing", "feature_norm", "all"])
@pytest.mark.parametrize("red", ["mean", "sum"])
def test_one_pass_equals_two_passes(monkeypatch, dtype, case, red):
    """The one-pass CPU kernel: the loss bitwise the two-pass forward's (the same blocks and lane
    sums), the gradients of cos_logits and feature_norm within rounding of the backward kernel's,
    for grad_output 1 and not 1, rows with the target in the first, a middle and the last block,
    and an ignored row."""
    import lossext.margin.ops as MO
    N, C = 9, 5000  # three blocks of 2048 classes
    cos = _cos(N, C, seed=3, dtype=dtype)
    t = _target(N, C, seed=4)
    t[0], t[1], t[2], t[3] = 0, 2048, C - 1, -100
    w = torch.rand(C, generator=torch.Generator().manual_seed(5), dtype=dtype) + 0.5
    fn = torch.rand(N, generator=torch.Generator().manual_seed(6), dtype=dtype) * 20 + 1
    kw = dict(scale=30.0, m1=1.0, m2=0.5, m3=0.1, reduction=red)
    if case in ("weights+smoothing", "all"):
        kw.update(weight=w, label_smoothing=0.1)
    use_fn = case in ("feature_norm", "all")
    assert MO.use_one_pass(cos.requires_grad_(), 1)

    def run(g):
        c = cos.detach().requires_grad_()
        f = fn.detach().requires_grad_()
        loss = LF.margin_cross_entropy(c, t, feature_norm=f if use_fn else None, **kw)
        grads = torch.autograd.grad(loss, [c, f] if use_fn else [c], torch.tensor(g, dtype=dtype))
        return loss.detach(), grads

    for g in (1.0, 0.37):
        (l1, g1), (l2, g2) = _with_and_without_one_pass(monkeypatch, lambda: run(g))
        assert torch.equal(l1, l2)
        tol = dict(rtol=1e-5, atol=1e-9) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-16)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, **tol)
        assert torch.all(g1[0][3] == 0)


def test_one_pass_retain_graph_and_create_graph():
    """Backwards through one graph (retain_graph) with grad_output 2, 3, then 1 (the forward's
    buffer itself) agree; modifying that buffer in place makes a later backward raise, never
    read it silently; create_graph raises, as the two-pass op."""
    cos = _cos(6, 40, dtype=torch.float32).requires_grad_()
    t = _target(6, 40)
    loss = LF.arcface_loss(cos, t)
    g2, = torch.autograd.grad(loss, cos, torch.tensor(2.0), retain_graph=True)
    g3, = torch.autograd.grad(loss, cos, torch.tensor(3.0), retain_graph=True)
    g1, = torch.autograd.grad(loss, cos)
    ref, = torch.autograd.grad(LF.arcface_loss(cos.double(), t), cos)
    torch.testing.assert_close(g1, ref.float(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(g2, 2 * g1, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(g3, 3 * g1, rtol=1e-5, atol=1e-12)
    loss = LF.arcface_loss(cos, t)
    a, = torch.autograd.grad(loss, cos, retain_graph=True)
    b, = torch.autograd.grad(loss, cos, retain_graph=True)
    assert torch.equal(a, b)
    a.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, cos)
    loss = LF.arcface_loss(cos, t)
    g, = torch.autograd.grad(loss, cos, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()


def test_one_pass_is_taken_only_where_it_applies():
    """use_one_pass: reduced float32/float64 losses on the CPU whose input requires grad."""
    import lossext.margin.ops as MO
    c = torch.zeros(2, 3)
    assert not MO.use_one_pass(c, 1)
    c.requires_grad_()
    assert MO.use_one_pass(c, 1) and MO.use_one_pass(c, 2) and not MO.use_one_pass(c, 0)
    assert not MO.use_one_pass(c.half(), 1)
    with torch.no_grad():
        assert not MO.use_one_pass(c, 1)


# ---- the row-block fused op (issue #15: three matrix products, the gradients in the forward) ----

@pytest.mark.parametrize("case", ["arcface", "smooth_ignore_sum", "bias_plain", "one_block"])
def test_fused_row_blocks_match_the_class_chunked_op(monkeypatch, case):
    """fused_linear_margin_cross_entropy_with_grad (the rows in blocks whose logits for every
    class are kept, the gradients formed in the forward) against the class-chunked forward and
    backward, in float64: loss and the input, weight and bias gradients to 1e-12, for several
    row blocks (7 rows per block, 3 class chunks) and grad_output 1 and 0.3; bitwise equal for 1
    and 2 threads; retain_graph gives the same gradient twice; create_graph raises."""
    import lossext.margin.ops as MO
    g = torch.Generator().manual_seed(5)
    N, D, C = 30, 6, 700
    x0 = torch.randn(N, D, generator=g, dtype=torch.float64)
    w0 = torch.randn(C, D, generator=g, dtype=torch.float64)
    b0 = torch.randn(C, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (N,), generator=g)
    kw = dict(m2=0.5)
    if case == "smooth_ignore_sum":
        t[[2, 17]] = -100
        kw = dict(m3=0.35, label_smoothing=0.1, reduction="sum")
    if case == "bias_plain":
        kw = dict(scale=1.0, m3=0.2, normalize=False)
    rows = N if case == "one_block" else 7
    monkeypatch.setattr(MO, "FUSED_ROW_BUDGET", rows * C)
    monkeypatch.setattr(MO, "FUSED_MIN_ROWS", 1)

    def run(go, row_blocks, threads=2):
        torch.set_num_threads(threads)
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        b = b0.clone().requires_grad_() if case == "bias_plain" else None
        with monkeypatch.context() as mp:
            if not row_blocks:
                mp.setattr(MO, "FUSED_ROW_BUDGET", 0)
            import lossext.margin.functional as MF
            assert (MF.fused_rows(x, w, 1, 0) > 0) == row_blocks
            loss = LF.fused_linear_margin_cross_entropy(x, w, t, bias=b, **kw)
        name = type(loss.grad_fn).__name__
        leaves = [x, w] + ([b] if b is not None else [])
        return (name, loss.detach()) + torch.autograd.grad(loss, leaves, torch.tensor(go, dtype=torch.float64))

    try:
        for go in (1.0, 0.3):
            one, two = run(go, True), run(go, False)
            assert "with_grad" in one[0] and "with_grad" not in two[0]
            for a, b in zip(one[1:], two[1:]):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        single = run(1.0, True, threads=1)
        for a, b in zip(run(1.0, True)[1:], single[1:]):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(2)
    x = x0.clone().requires_grad_()
    loss = LF.fused_linear_margin_cross_entropy(x, w0, t, **kw) if case != "bias_plain" else None
    if loss is not None and "with_grad" in type(loss.grad_fn).__name__:
        a, = torch.autograd.grad(loss, x, retain_graph=True)
        b, = torch.autograd.grad(loss, x)
        assert torch.equal(a, b)
        gg, = torch.autograd.grad(LF.fused_linear_margin_cross_entropy(x, w0, t, **kw), x, create_graph=True)
        with pytest.raises(NotImplementedError, match="double backward"):
            gg.sum().backward()


def test_fused_row_blocks_where_taken():
    """The row-block op is taken for a reduced float32/float64 loss on the CPU that needs a
    gradient, with the automatic chunk size, where a block of >= 128 rows (or the batch) fits
    the 16M-logit budget; not for 'none', half types, no grad, a chunk_size given, or C so
    large that fewer than 128 rows fit."""
    import lossext.margin.ops as MO
    x = torch.randn(1024, 8, requires_grad=True)
    w = torch.randn(100_000, 8)
    assert MO.fused_rows(x, w, 1, 0) == 167
    assert MO.fused_rows(x, w, 0, 0) == 0 and MO.fused_rows(x, w, 1, 512) == 0
    assert MO.fused_rows(x.detach(), w, 1, 0) == 0 and MO.fused_rows(x.detach(), w.requires_grad_(), 2, 0) == 167
    assert MO.fused_rows(x.half(), w, 1, 0) == 0
    assert MO.fused_rows(x, torch.randn(1_000_000, 8), 1, 0) == 0
    assert MO.fused_rows(x[:40], torch.randn(1_000_000, 8), 1, 0) == 0  # 16 rows fit, fewer than the 40
    assert MO.fused_rows(x[:10], torch.randn(1_000_000, 8), 1, 0) == 10  # the whole batch fits
    with torch.no_grad():
        assert MO.fused_rows(x, w, 1, 0) == 0


def test_fused_row_blocks_memory_is_the_budget(monkeypatch):
    """The row-block op's extra memory is its budget of logits (rows x C), not N x C: at N = 256,
    C = 40000 with a budget of 2^20 logits (26 rows a block), the peak above the gradients stays
    under the budget's bytes plus O(chunk D + N D + C) (the chunk's dW and normalized weight
    scratch), well below one [N, C] float32 matrix."""
    import lossext.margin.ops as MO
    from lossext.testing.benchmark import peak_memory

    budget = 1 << 20
    monkeypatch.setattr(MO, "FUSED_ROW_BUDGET", budget)
    monkeypatch.setattr(MO, "FUSED_MIN_ROWS", 1)
    g = torch.Generator().manual_seed(0)
    N, D, C = 256, 32, 40_000
    x = torch.randn(N, D, generator=g).requires_grad_(True)
    w = torch.randn(C, D, generator=g).requires_grad_(True)
    t = torch.randint(0, C, (N,), generator=g)
    assert MO.fused_rows(x, w, 1, 0) == budget // C

    def call(_):
        loss = LF.fused_linear_margin_cross_entropy(x, w, t, m2=0.5)
        assert "with_grad" in type(loss.grad_fn).__name__
        return torch.autograd.grad(loss, (x, w))

    grads = (N + C) * D * 4
    extra = peak_memory(call, "cpu") - grads
    assert extra < N * C * 4 / 3, extra
    chunk = min(C, max(256, ((4 << 20) // max(N, D)) // 256 * 256))  # default_chunk on the CPU
    assert extra <= 4 * (budget + 2 * chunk * D + 3 * N * D + 2 * C + 8 * N) + (1 << 20), extra
