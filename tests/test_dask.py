"""fastnorm.dask: lazy layer_norm / rms_norm / batch_norm on chunked arrays equal the
in-memory functions (row norms over trailing dimensions bit for bit, the rest to within
rounding)."""
import dask
import dask.array as da
import numpy as np
import pytest

import fastnorm
import fastnorm.dask as fd
from fn_testutil import assert_close, random_data


@pytest.fixture(params=["threads", "synchronous"])
def scheduler(request):
    with dask.config.set(scheduler=request.param):
        yield request.param


ROW_CASES = [  # (shape, chunks, kwargs): the normalized dimensions split across chunks too
    ((64, 10, 96), (16, 5, 32), {}),
    ((64, 10, 96), (16, 5, 32), {"normalized_shape": (10, 96)}),
    ((64, 10, 96), (7, 10, 96), {"axis": 1}),
    ((8, 6, 5, 12), (3, 2, 5, 4), {"axis": (1, 3)}),
]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape, chunks, kw", ROW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_norms_equal_in_memory(op, shape, chunks, kw, dtype, rng, tol, scheduler):
    x = random_data(rng, shape, dtype, offset=5.0)
    if "axis" in kw:
        axes = (kw["axis"],) if isinstance(kw["axis"], int) else kw["axis"]
        norm_shape = tuple(shape[a] for a in axes)
    else:
        norm_shape = kw.get("normalized_shape", shape[-1:])
    weight = random_data(rng, norm_shape, np.float64 if dtype == np.float64 else np.float32,
                         offset=1.0)
    lazy = getattr(fd, op)(da.from_array(x, chunks=chunks), weight=weight, return_stats=True,
                           **kw)
    want = getattr(fastnorm, op)(x, weight=weight, return_stats=True, **kw)
    assert isinstance(lazy[0], da.Array) and len(lazy) == len(want)
    for got, expected in zip(lazy, want):
        assert got.dtype == expected.dtype
        if "axis" in kw:  # dask moves the axes to the end; in memory they may stay put
            assert_close(got.compute(), expected, tol)
        else:  # the same rows through the same kernel
            np.testing.assert_array_equal(got.compute(), expected)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_residual(op, rng, scheduler):
    x = random_data(rng, (40, 96), np.float32)
    r = random_data(rng, (40, 96), np.float32)
    got = getattr(fd, op)(da.from_array(x, chunks=(8, 32)), residual=da.from_array(r, chunks=(5, 96)))
    np.testing.assert_array_equal(got.compute(), getattr(fastnorm, op)(x, residual=r))


BN_CASES = [((8, 6, 14, 14), 1, (3, 2, 7, 14)), ((8, 14, 14, 6), -1, (3, 7, 14, 4)),
            ((50, 5), 1, (16, 5))]


@pytest.mark.parametrize("shape, axis, chunks", BN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_training_equals_in_memory(shape, axis, chunks, dtype, rng, tol, scheduler):
    x = random_data(rng, shape, dtype, offset=100.0)
    c = shape[axis]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    if dtype == np.float64:
        w, b = w.astype(np.float64), b.astype(np.float64)
    lazy_rm, lazy_rv = np.zeros(c), np.ones(c)
    rm, rv = np.zeros(c), np.ones(c)
    y, mean, rstd = fd.batch_norm(da.from_array(x, chunks=chunks), lazy_rm, lazy_rv, w, b,
                                  training=True, momentum=0.3, axis=axis, return_stats=True)
    # the running statistics are updated when batch_norm is called, before any compute
    want_y, want_mean, want_rstd = fastnorm.batch_norm(x, rm, rv, w, b, training=True,
                                                       momentum=0.3, axis=axis, return_stats=True)
    # (chunk partials merged in a tree: the same statistics to within the input's rounding)
    assert_close(lazy_rm, rm, tol, dtype=dtype)
    assert_close(lazy_rv, rv, tol, dtype=dtype)
    assert isinstance(y, da.Array) and isinstance(mean, np.ndarray)
    assert mean.dtype == want_mean.dtype and rstd.dtype == want_rstd.dtype
    assert_close(mean, want_mean, tol)
    assert_close(rstd, want_rstd, tol)
    assert_close(y.compute(), want_y, tol)


@pytest.mark.parametrize("shape, axis, chunks", BN_CASES)
def test_batch_norm_eval_equals_in_memory(shape, axis, chunks, rng, tol, scheduler):
    x = random_data(rng, shape, np.float32, offset=3.0)
    c = shape[axis]
    rm, rv = random_data(rng, c, np.float32, offset=3.0), random_data(rng, c, np.float32, offset=2.0) ** 2
    y = fd.batch_norm(da.from_array(x, chunks=chunks), rm, rv, axis=axis)
    assert_close(y.compute(), fastnorm.batch_norm(x, rm, rv, axis=axis), tol)


def test_arguments_are_checked_when_called(rng):
    dx = da.from_array(random_data(rng, (8, 6), np.float32), chunks=(4, 3))
    with pytest.raises(ValueError, match="normalized_shape"):
        fd.layer_norm(dx, (5,))
    with pytest.raises(ValueError, match="weight"):
        fd.rms_norm(dx, weight=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="eps"):
        fd.layer_norm(dx, eps=-1.0)
    with pytest.raises(ValueError, match="residual"):
        fd.layer_norm(dx, residual=np.zeros((8, 5), np.float32))
    with pytest.raises(TypeError):
        fd.layer_norm(dx, out=np.empty((8, 6), np.float32))  # the result is lazy: no out=
    with pytest.raises(ValueError, match="running_mean"):
        fd.batch_norm(dx)  # eval needs running statistics
    with pytest.raises(ValueError, match="at least 2 values"):
        fd.batch_norm(dx[:1, :].reshape(1, 6), training=True)
