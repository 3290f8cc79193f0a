"""The build facts: CUDA kernels are compiled and registered whenever nvcc is present."""
import os
import shutil

import torch

import lossext
from lossext import _C
from lossext.testing import OP_DB


def test_every_raw_op_has_cpu_and_reported_cuda_kernels():
    ops = lossext.registered_ops()
    for info in OP_DB:
        for name in info.raw_ops:
            assert "CPU" in ops[name], name
            assert ("CUDA" in ops[name]) == bool(_C.with_cuda), name
    assert set(ops) == {n for info in OP_DB for n in info.raw_ops}, "an op is missing from OP_DB"


def test_cuda_compiled_when_nvcc_present():
    """CI must not silently build CPU-only where nvcc and a CUDA torch exist."""
    nvcc = shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")
    wanted = os.environ.get("LOSSEXT_CUDA", "1") != "0"
    if nvcc and torch.version.cuda and wanted:
        assert _C.with_cuda == 1
        assert _C.cuda_arch_list
    info = lossext.build_info()
    assert info["cuda_compiled"] == bool(_C.with_cuda)
    assert info["version"] == lossext.__version__
