"""GroupNorm (32 groups where they divide C, else gcd(C, 32)) on the batch norm shapes, NCHW and
the channels_last view of NHWC memory (FASTNORM_BENCH_LAYOUTS nhwc runs as channels_last),
beside a copy, NumPy, PyTorch and ONNX Runtime (NCHW only).

The parameters (shape, layout, dtype, contender, threads) come from conftest.py.
"""
import pytest


@pytest.mark.fastnorm_bench("group_norm")
def test_group_norm(run_target, target):
    run_target(target)
