"""OpInfo helpers of the element-wise op pattern (csrc/common/pointwise_loss.h,
lossext/_core/pointwise.py): samples, bad calls, raw calls, Module and TorchScript calls and
tolerances that fit any loss(input, target, weight=None, *params, reduction), with zero or
more float parameters (raw_errors: bad_param_index=None when there are none)."""
import torch

from .opinfo import REDUCTION, ErrorInput, SampleInput, make_tensor


def samples(lo_x, hi_x, lo_y, hi_y, hyper):
    def samples(device, dtype, small=False):
        gen = torch.Generator().manual_seed(0)
        mk = lambda shape, lo, hi: make_tensor(shape, device, dtype, lo, hi, gen)  # noqa: E731
        shapes = [(), (1,), (7,), (3, 5), (4, 68, 2), (2, 3, 9, 7)]
        if not small:
            shapes += [(1023,), (2, 17, 16, 12)]
        for red in ("mean", "sum", "none"):
            for shape in shapes:
                x, y = mk(shape, lo_x, hi_x), mk(shape, lo_y, hi_y)
                yield SampleInput((x, y), dict(hyper, reduction=red), f"{red}-{shape}")
            # per-element weight, and a broadcast one (e.g. a visibility mask [B, L, 1])
            x, y = mk((4, 68, 2), lo_x, hi_x), mk((4, 68, 2), lo_y, hi_y)
            yield SampleInput((x, y), dict(hyper, reduction=red, weight=mk((4, 68, 2), 0, 1)), f"{red}-weight")
            yield SampleInput((x, y), dict(hyper, reduction=red, weight=mk((4, 68, 1), 0, 1)), f"{red}-bcast-weight")
            # non-contiguous: a transpose and a strided slice; an expanded target
            x, y = mk((9, 13), lo_x, hi_x), mk((9, 13), lo_y, hi_y)
            yield SampleInput((x.t(), y.t()), dict(hyper, reduction=red), f"{red}-transposed")
            x, y = mk((42,), lo_x, hi_x), mk((42,), lo_y, hi_y)
            yield SampleInput((x[::3], y[1::3]), dict(hyper, reduction=red), f"{red}-strided")
            yv = mk((1, 7), lo_y, hi_y)
            yield SampleInput((mk((5, 7), lo_x, hi_x), yv.expand(5, 7)), dict(hyper, reduction=red), f"{red}-expanded")
            # empty
            yield SampleInput((mk((0, 3), lo_x, hi_x), mk((0, 3), lo_y, hi_y)), dict(hyper, reduction=red), f"{red}-empty")
    return samples



def errors(fn_name, hyper, bad_hypers, names=("input", "target")):
    """names: the function's names of its input and target (torchvision's are inputs, targets)."""
    xn, yn = names

    def errors(device):
        x = torch.rand(4, 3, device=device)
        y = torch.rand(4, 3, device=device)
        E = []
        E.append(ErrorInput(SampleInput((x, torch.rand(4, 2, device=device)), dict(hyper)), ValueError,
                            f"{yn} shape .* does not match {xn} shape"))
        E.append(ErrorInput(SampleInput((x.long(), y.long()), dict(hyper)), TypeError, f"{xn} must be float"))
        E.append(ErrorInput(SampleInput((x, y.to("meta")), dict(hyper)), ValueError, f"{yn} is on"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, reduction="avg")), ValueError, "reduction must be"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, weight=torch.rand(5, device=device))), ValueError, "weight of shape"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, weight=torch.rand(4, 3, 2, device=device))), ValueError, "weight of shape"))
        E.append(ErrorInput(SampleInput((x, y), dict(hyper, weight=[1.0])), TypeError, "weight must be"))
        E.append(ErrorInput(SampleInput((x, "y"), dict(hyper)), TypeError, f"{yn} must be a Tensor"))
        for key, value, match in bad_hypers:
            E.append(ErrorInput(SampleInput((x, y), dict(hyper, **{key: value})), ValueError, match))
        return E
    return errors


def bench_input(lo_x, hi_x, lo_y, hi_y, hyper):
    def make(numel, device, dtype):
        gen = torch.Generator().manual_seed(0)
        x = make_tensor((numel,), device, dtype, lo_x, hi_x, gen)
        y = make_tensor((numel,), device, dtype, lo_y, hi_y, gen)
        return SampleInput((x, y), dict(hyper, reduction="mean"), f"n={numel}")
    return make



def raw_calls(name, param_keys, target_backward):
    def calls(sample):
        x, y = sample.args
        kw = sample.kwargs
        red = REDUCTION[kw.get("reduction", "mean")]
        w = kw.get("weight")
        w = None if w is None else w.expand(x.shape)
        params = tuple(float(kw[k]) for k in param_keys)
        gen = torch.Generator().manual_seed(1)
        go = torch.randn(x.shape if red == 0 else (), generator=gen, dtype=torch.float64).to(x.device, x.dtype)
        out = [(name, (x, y, w, *params, red)),
               (f"{name}_with_grad", (x, y, w, *params, red)),
               (f"{name}_backward", (go, x, y, w, *params, red))]
        if target_backward:
            out.append((f"{name}_target_backward", (go, x, y, w, *params, red)))
        return out
    return calls


def module_call(module_cls):
    def call(sample):
        kwargs = dict(sample.kwargs)
        red = kwargs.pop("reduction", "mean")
        weight = kwargs.pop("weight", None)
        return module_cls(**kwargs, reduction=red), sample.args, {"weight": weight}
    return call


def module_samples(module_cls, lo_x, hi_x, lo_y, hi_y, hyper):
    def make(device, dtype):
        gen = torch.Generator().manual_seed(0)
        x = make_tensor((4, 68, 2), device, dtype, lo_x, hi_x, gen)
        y = make_tensor((4, 68, 2), device, dtype, lo_y, hi_y, gen)
        return [(module_cls(**hyper), (x, y), {})]
    return make


def jit_source(name, param_keys):
    def source(sample):
        kw = sample.kwargs
        red = REDUCTION[kw.get("reduction", "mean")]
        args = ", ".join(["x", "y", "None", *(repr(float(kw[k])) for k in param_keys), str(red)])
        src = (f"def f(x: Tensor, y: Tensor) -> Tensor:\n"
               f"    return torch.ops.lossext.{name}({args})\n")
        return src, sample.args
    return source


def raw_errors(name, params, bad_param_index, has_target_backward):
    def errors(device):
        x = torch.rand(12, device=device)
        y = torch.rand(12, device=device)
        p = [float(v) for v in params]
        bad = list(p)
        if bad_param_index is not None:  # None: a loss without parameters has no bad one
            bad[bad_param_index] = -1.0
        one = torch.ones(3, device=device)
        E = [
            (name, (x, y[:5], None, *p, 1), "'target' has shape"),
            (name, (x.long(), y.long(), None, *p, 1), "'input' must be float16"),
            (name, (x, y.double(), None, *p, 1), "'target' has dtype"),
            (name, (x, y, x[:3], *p, 1), "'weight' has shape"),
            (name, (x, y, None, *p, 7), "'reduction' must be"),
            *([(name, (x, y, None, *bad, 1), "must be")] if bad_param_index is not None else []),
            (f"{name}_with_grad", (x, y[:5], None, *p, 1), "'target' has shape"),
            (f"{name}_backward", (one, x, y, None, *p, 1), "'grad_output' must be 0-dim"),
            (f"{name}_backward", (one, x, y, None, *p, 0), "'grad_output' has shape"),
        ]
        if has_target_backward:
            E.append((f"{name}_target_backward", (one, x, y, None, *p, 0), "'grad_output' has shape"))
        return E
    return errors


TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),   # half tests use the 2x-of-PyTorch rule, see test_half.py
    torch.bfloat16: (5e-2, 5e-2),
}


def fuzz(fn_name, lo_x, hi_x, lo_y, hi_y, hyper, rules, big, target_specials=None, names=("input", "target"),
         reduction_first=False, default_reduction="mean"):
    """The row's fuzz function (lossext/testing/fuzz.py): a call of fn_name(input, target,
    *params, weight, reduction) with drawn shapes, layouts, dtypes (target's sometimes
    another: promoted), values in [lo, hi) with extremes up to big[dtype] in magnitude,
    NaN and inf (the target's: target_specials(dtype) where given), a per-element weight
    (float, bool or integer, broadcast), positional or keyword parameters, and at most one
    bad argument: input, target, weight, reduction or a parameter.
    rules() -> the parameters' lossext.testing.fuzz.Real rules, in the order they are drawn (a
    `greater` rule after its other; called at fuzz time: that module imports hypothesis);
    hyper: the defaults, in the function's order; names: the function's names of input and
    target; reduction_first: the function takes reduction before weight (torchvision's order,
    weight an addition), whose default is default_reduction."""
    xn, yn = names

    def fuzz(draw, device):
        from . import fuzz as F
        st = F.st
        params = rules()
        bad = F.fault(draw, [xn, yn, "weight", "reduction"] + [p.name for p in params])
        dt = F.dtype(draw)
        ydt = F.other_dtype(draw, dt)
        shp = F.shape(draw)
        x = F.tensor(draw, shp, dt, device, lo_x, hi_x, F.extremes(dt, big[dt]))
        ys = F.extremes(ydt, big[ydt]) if target_specials is None else target_specials(ydt)
        y = F.tensor(draw, shp, ydt, device, lo_y, hi_y, ys)
        rdt = torch.promote_types(dt, ydt)
        error = None
        vals, valid = {}, {}
        for p in params:
            if bad == p.name:
                vals[p.name], error = p.invalid(draw, fn_name, valid)
                valid[p.name] = hyper[p.name]
            else:
                vals[p.name] = valid[p.name] = p.valid(draw, valid)
        w = None
        if bad == "weight" or draw(st.booleans()):
            wshape = F.broadcastable(draw, shp)
            kind = draw(st.sampled_from(["float", "float", "bool", "int"]))
            w = F.tensor(draw, wshape, F.other_dtype(draw, dt), device, 0.0, 1.0, [0.0])
            if kind != "float":
                w = (w > 0.5) if kind == "bool" else (w * 3).long()
        red = F.reduction(draw)
        if bad == "reduction":
            red, error = F.reduction(draw, fn_name, bad=True)
        if bad == xn:
            x, error = (F.not_a_tensor(draw, fn_name, xn) if draw(st.booleans())
                        else F.not_float(draw, fn_name, xn, shp, device))
        if bad == yn:
            how = draw(st.sampled_from(["type", "dtype", "shape", "device"]))
            if how == "type":
                y, error = F.not_a_tensor(draw, fn_name, yn)
            elif how == "dtype":
                y, error = F.not_float(draw, fn_name, yn, shp, device)
            elif how == "shape":
                other = F.other_shape(draw, shp)
                y = torch.zeros(other, dtype=dt, device=device)
                error = ValueError, (rf"^{fn_name}: {yn} shape {F.shape_text(other)} does not match {xn} shape "
                                     rf"{F.shape_text(shp)}$")
            else:
                y, error = F.on_meta(fn_name, yn, x, xn, dt=dt)
        if bad == "weight":
            how = draw(st.sampled_from(["type", "complex", "shape", "device"]))
            if how == "type":
                w, error = F.not_a_tensor(draw, fn_name, "weight", optional=True)
            elif how == "complex":
                w = torch.zeros(w.shape, dtype=torch.complex64, device=device)
                error = TypeError, rf"^{fn_name}: weight must be real, got torch.complex64$"
            elif how == "shape":
                other = F.unbroadcastable(draw, shp)
                w = torch.ones(other, device=device)
                error = ValueError, (rf"^{fn_name}: weight of shape {F.shape_text(other)} does not broadcast to {xn} "
                                     rf"shape {F.shape_text(shp)}$")
            else:
                w, error = F.on_meta(fn_name, "weight", x, xn, shp=w.shape)
        order = [(k, vals[k], hyper[k]) for k in hyper]
        tail = [("weight", w, None), ("reduction", red, default_reduction)]
        args, kwargs = F.arguments(draw, (x, y), order + (tail[::-1] if reduction_first else tail), len(order) + 2)
        return F.FuzzCase(SampleInput(args, kwargs, f"{red}-{tuple(shp)}-{dt}"), error, dtype=rdt)
    return fuzz
