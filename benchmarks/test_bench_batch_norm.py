"""BatchNorm eval and training, NCHW and NHWC, beside a copy, NumPy, PyTorch (a
channels_last tensor for NHWC) and ONNX Runtime (NCHW only).

The parameters (shape, layout, dtype, contender, threads) come from conftest.py.
Training updates the running statistics in place, as a training step does.
"""
import pytest


@pytest.mark.fastnorm_bench("batch_norm_eval")
def test_batch_norm_eval(run_target, target):
    run_target(target)


@pytest.mark.fastnorm_bench("batch_norm_train")
def test_batch_norm_train(run_target, target):
    run_target(target)
