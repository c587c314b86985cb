"""The bench compares like with like: in every BatchNorm layout, fastnorm, the NumPy formula
and PyTorch (when installed) compute the same normalization of the same logical tensor, and
the copy moves x's bytes in x's own layout."""

import numpy as np
import pytest

from fastnorm._bench_contenders import Case, build_contenders, peer_available

PEERS = ("copy", "numpy") + (("torch",) if peer_available("torch") else ())


def _values(result):
    """A contender's result as a NumPy array (torch returns a tensor)."""
    return result.numpy() if hasattr(result, "numpy") else np.asarray(result)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "channels_last"])
@pytest.mark.parametrize("op", ["batch_norm_eval", "batch_norm_train"])
def test_batch_norm_contenders_agree(op, layout):
    case = Case(op, (2, 8, 5, 6), "float32", layout)
    contenders = {c.name: c for c in build_contenders(case, [1], PEERS, use_out=False)}
    copy = _values(contenders.pop("copy").call())
    want = _values(contenders.pop("numpy").call())
    if layout == "channels_last":  # the (N, C, H, W) view of NHWC memory, copied as it lies
        assert want.shape == (2, 8, 5, 6) and copy.strides == (960, 4, 192, 32)
    else:
        assert copy.flags.c_contiguous
    for name, contender in contenders.items():
        got = _values(contender.call())
        if name == "torch" and layout == "nhwc":  # torch's channels_last tensor is (N, C, H, W)
            got = np.moveaxis(got, 1, -1)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=name)
