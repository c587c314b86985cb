"""LayerNorm over the row shapes, beside a copy, NumPy, PyTorch and ONNX Runtime.

The parameters (shape, dtype, contender, threads) come from conftest.py; the residual
form (h = x + r, then LayerNorm of h) is timed beside NumPy-then-fastnorm and PyTorch's
unfused F.layer_norm(x + r).
"""
import pytest


@pytest.mark.fastnorm_bench("layer_norm")
def test_layer_norm(run_target, target):
    run_target(target)


@pytest.mark.fastnorm_bench("layer_norm", residual=True)
def test_layer_norm_residual(run_target, target):
    run_target(target)
