"""RMSNorm over the row shapes, beside a copy, NumPy, PyTorch and ONNX Runtime
(RMSNormalization, opset 23).

The parameters (shape, dtype, contender, threads) come from conftest.py; the residual
form (h = x + r, then RMSNorm of h) is timed beside NumPy-then-fastnorm and PyTorch's
unfused F.rms_norm(x + r).
"""
import pytest


@pytest.mark.fastnorm_bench("rms_norm")
def test_rms_norm(run_target, target):
    run_target(target)


@pytest.mark.fastnorm_bench("rms_norm", residual=True)
def test_rms_norm_residual(run_target, target):
    run_target(target)
