"""Bitwise-equal results for 1 and 2 threads and for repeated runs."""
import torch

from lossext.testing.opinfo import outputs


def _run(info, sample, red):
    """[each output, the gradient wrt the input]."""
    x = sample.args[0].detach().clone().requires_grad_(True)
    outs = outputs(info.op(x, *sample.args[1:], **info.with_reduction(sample.kwargs, red)))
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return [o.detach().clone() for o in outs] + [x.grad.clone()]


def test_thread_count_and_repeat(info, device, cpu_isa):
    sample = info.bench_input((1 << 20) + 3, device, torch.float32)
    for red in info.reductions():
        torch.set_num_threads(1)
        a = _run(info, sample, red)
        torch.set_num_threads(2)
        b = _run(info, sample, red)
        c = _run(info, sample, red)
        for u, v, w in zip(a, b, c):
            assert torch.equal(u, v), f"{red}: 1 vs 2 threads"
            assert torch.equal(v, w), f"{red}: repeat"


def test_threads_python(info, device):
    """The ops called from 4 Python threads at once give the same results."""
    import threading

    samples = [info.bench_input(100_003 + i, device, torch.float32) for i in range(4)]
    expected = [_run(info, s, "mean") for s in samples]
    results = [None] * 4

    def work(i):
        results[i] = [_run(info, samples[i], "mean") for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exp, res in zip(expected, results):
        for r in res:
            assert len(r) == len(exp) and all(torch.equal(u, v) for u, v in zip(r, exp))
