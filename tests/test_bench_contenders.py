"""The bench compares like with like: for the row norms (with and without the residual) and
in every BatchNorm and GroupNorm layout, fastnorm, the NumPy formula, PyTorch and ONNX Runtime
(when installed) compute the same normalization of the same logical tensor, and the copy moves
x's bytes in x's own layout."""

import numpy as np
import pytest

from fastnorm import reference
from fastnorm._bench_contenders import PAGE, Case, _Inputs, build_contenders, peer_available

PEERS = ("copy", "numpy") + (("torch",) if peer_available("torch") else ())


def _values(result):
    """A contender's result as a NumPy array (torch returns a tensor)."""
    return result.numpy() if hasattr(result, "numpy") else np.asarray(result)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_norm_contenders_agree(op, residual):
    peers = PEERS + (("onnxruntime",) if peer_available("onnxruntime") else ())
    case = Case(op, (8, 96), "float32", residual=residual)
    contenders = {c.name: c for c in build_contenders(case, [1], peers, use_out=False)}
    contenders.pop("copy")
    x, _, w = contenders["fastnorm"].call.args[:3]
    kw = contenders["fastnorm"].call.keywords
    h = x + kw["residual"] if residual else x  # float32 sum, as every contender rounds it
    if op == "layer_norm":
        b, eps = contenders["fastnorm"].call.args[3:5]
        want = reference.layer_norm(h.astype(np.float64), None, w.astype(np.float64),
                                    b.astype(np.float64), eps)
    else:
        eps = contenders["fastnorm"].call.args[3]
        want = reference.rms_norm(h.astype(np.float64), None, w.astype(np.float64), eps)
    expected = {"numpy", "fastnorm"} | ({"unfused"} if residual else set())
    assert expected <= set(contenders)
    for name, contender in contenders.items():
        got = contender.call()
        got = _values(got[0] if isinstance(got, list) else got)  # onnxruntime: a list
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=name)


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


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("channels, groups", [(64, 32), (6, 2)])  # 32 groups, else gcd(C, 32)
def test_group_norm_contenders_agree(layout, channels, groups):
    peers = PEERS + (("onnxruntime",) if peer_available("onnxruntime") else ())
    case = Case("group_norm", (2, channels, 5, 6), "float32", layout)
    contenders = {c.name: c for c in build_contenders(case, [1], peers, use_out=True)}
    copy = _values(contenders.pop("copy").call())  # no out= in group_norm: the copy allocates
    assert copy.shape == (2, channels, 5, 6) and copy is not contenders["fastnorm"].call.args[0]
    x, num_groups, w, b = contenders["fastnorm"].call.args[:4]
    assert num_groups == groups and (x.strides[1] == 4) == (layout == "channels_last")
    want = reference.group_norm(x.astype(np.float64), groups, w.astype(np.float64),
                                b.astype(np.float64))
    for name, contender in contenders.items():
        got = contender.call()
        got = _values(got[0] if isinstance(got, list) else got)  # onnxruntime: a list
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("residual", [False, True])
def test_outputs_lie_apart_from_x(residual):
    """The bench's outputs (and residual) sit a fraction of a page from x (no 4K aliasing
    decides a ratio), on x's cache-line offset, in x's layout."""
    inp = _Inputs(Case("rms_norm", (64, 768), "float32", residual=residual))
    arrays = {"out": (inp.out, PAGE // 2)}
    if residual:
        arrays.update(r=(inp.r, PAGE // 4), h_out=(inp.h_out, 3 * PAGE // 4))
    for name, (a, apart) in arrays.items():
        assert (a.ctypes.data - inp.x.ctypes.data) % PAGE == apart, name
        assert a.shape == inp.x.shape and a.strides == inp.x.strides and a.dtype == inp.x.dtype
    if residual:  # a residual of its own values, not x's or zeros
        assert 0.9 < inp.r.std() < 1.1 and not np.array_equal(inp.r, inp.x)
    nhwc = _Inputs(Case("batch_norm_eval", (2, 8, 5, 6), "float32", "channels_last"))
    assert nhwc.out.strides == nhwc.x.strides == (960, 4, 192, 32)
    assert (nhwc.out.ctypes.data - nhwc.x.ctypes.data) % PAGE == PAGE // 2


def test_copy_baseline_writes_apart_from_x():
    """The copy baseline is np.copyto(out, x) with out half a page from x."""
    copy = build_contenders(Case("rms_norm", (64, 768), "float32"), [1], ["copy"], use_out=True)
    out, x = copy[0].call.args
    assert (out.ctypes.data - x.ctypes.data) % PAGE == PAGE // 2
