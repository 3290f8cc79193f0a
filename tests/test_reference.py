"""Every op against its float64 reference (written from the paper's formula), over the
OpInfo samples and the branch-edge inputs: values and gradients."""
import pytest
import torch

from conftest import assert_close, grads_of, output_pairs, to_ref


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_match_reference(info, device, dtype, cpu_isa):
    rtol, atol = info.tol[dtype]
    for sample in list(info.sample_inputs(device, dtype)) + list(info.edge_inputs(device, dtype)):
        actual = info.op(*sample.args, **sample.kwargs)
        expected = info.ref(*to_ref(sample).args, **to_ref(sample).kwargs)
        for a, e in output_pairs(actual, expected):
            assert a.dtype == dtype and a.device.type == device
            assert a.shape == e.shape, sample
        assert_close(actual, expected, rtol, atol, repr(sample))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_match_reference(info, device, dtype, cpu_isa):
    rtol, atol = info.tol[dtype]
    samples = list(info.sample_inputs(device, dtype))
    if dtype == torch.float64:  # at a branch point float32 rounding may pick the other side
        samples += list(info.edge_inputs(device, dtype))
    for sample in samples:
        out, grads = grads_of(info.op, sample)
        ref_out, ref_grads = grads_of(info.ref, to_ref(sample))
        assert_close(out, ref_out, rtol, atol, repr(sample))
        for i, (g, rg) in enumerate(zip(grads, ref_grads)):
            assert g.shape == rg.shape
            assert_close(g, rg, rtol, atol, f"grad of floating tensor {i}: {sample!r}")


def test_large_odd_size(info, device, cpu_isa):
    """2^20 + 3 elements: many CPU chunks and CUDA blocks plus a ragged tail."""
    sample = info.bench_input((1 << 20) + 3, device, torch.float32)
    for red in info.reductions():
        s = sample.map_tensors(lambda t: t)
        s.kwargs = info.with_reduction(s.kwargs, red)
        actual = info.op(*s.args, **s.kwargs)
        expected = info.ref(*to_ref(s).args, **to_ref(s).kwargs)
        rtol, atol = info.tol[torch.float32]
        assert_close(actual, expected, rtol, atol, red)
        _, (gi, *_rest) = grads_of(info.op, s)
        _, (rgi, *_rrest) = grads_of(info.ref, to_ref(s))
        assert_close(gi, rgi, rtol, atol, f"grad {red}")


def test_module_matches_functional(info, device):
    covered = 0
    for sample in info.sample_inputs(device, torch.float32, small=True):
        call = info.module_call(sample)
        if call is None:
            continue
        covered += 1
        module, args, kwargs = call
        torch.testing.assert_close(module(*args, **kwargs), info.op(*sample.args, **sample.kwargs),
                                   equal_nan=True)
        assert repr(module)
    assert covered
