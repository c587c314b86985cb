"""Backward functions against finite differences of the float64 reference, torch autograd,
and the float64 reference from the same inputs (every kernel family and dtype)."""
import numpy as np
import pytest

import fastnorm
from fastnorm import reference
from fn_testutil import BF16, F32, as_f64, assert_same_bits, compute_dtype, import_torch, random_data

# float64 gradients: analytic formulas in float64 agree to ~1e-13; central differences
# with h = 1e-6 are accurate to ~1e-9 relative on these unit-scale problems.
FD_RTOL, FD_ATOL = 1e-6, 1e-7
AUTOGRAD_RTOL, AUTOGRAD_ATOL = 1e-10, 1e-12


def _finite_difference(loss, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (loss(xp) - loss(xm)) / (2 * h)
    return grad


def _ln_case(rng, shape, norm_ndim, with_weight):
    x = random_data(rng, shape, np.float64, offset=0.5)
    w = random_data(rng, shape[-norm_ndim:], np.float64, offset=1.0) if with_weight else None
    b = random_data(rng, shape[-norm_ndim:], np.float64) if with_weight else None
    g = random_data(rng, shape, np.float64)
    return x, w, b, g


@pytest.mark.parametrize("shape, norm_ndim", [((3, 5), 1), ((2, 3, 4), 2), ((4, 1), 1),
                                              ((2, 17), 1)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_layer_norm_backward_finite_differences(shape, norm_ndim, with_weight, isa, rng):
    x, w, b, g = _ln_case(rng, shape, norm_ndim, with_weight)
    ns = shape[-norm_ndim:]
    _, mean, rstd = fastnorm.layer_norm(x, ns, w, b, return_stats=True)
    grad_x, grad_w, grad_b = fastnorm.layer_norm_backward(g, x, mean, rstd, w)
    assert grad_x.shape == x.shape and grad_x.dtype == x.dtype
    num_x = _finite_difference(lambda v: np.sum(g * reference.layer_norm(v, ns, w, b)), x)
    np.testing.assert_allclose(grad_x, num_x, rtol=FD_RTOL, atol=FD_ATOL)
    if with_weight:
        num_w = _finite_difference(lambda v: np.sum(g * reference.layer_norm(x, ns, v, b)), w)
        num_b = _finite_difference(lambda v: np.sum(g * reference.layer_norm(x, ns, w, v)), b)
        np.testing.assert_allclose(grad_w, num_w, rtol=FD_RTOL, atol=FD_ATOL)
        np.testing.assert_allclose(grad_b, num_b, rtol=FD_RTOL, atol=FD_ATOL)
    else:
        assert grad_w is None
        # grad_bias is not asked for without weight; if given it must be right.
        if grad_b is not None:
            np.testing.assert_allclose(grad_b, g.reshape(-1, *ns).sum(0), rtol=1e-12)


@pytest.mark.parametrize("shape, norm_ndim", [((3, 5), 1), ((2, 3, 4), 2), ((2, 17), 1)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_backward_finite_differences(shape, norm_ndim, with_weight, isa, rng):
    x, w, _, g = _ln_case(rng, shape, norm_ndim, with_weight)
    ns = shape[-norm_ndim:]
    _, rstd = fastnorm.rms_norm(x, ns, w, return_stats=True)
    grad_x, grad_w = fastnorm.rms_norm_backward(g, x, rstd, w)
    eps = float(np.finfo(np.float64).eps)
    num_x = _finite_difference(lambda v: np.sum(g * reference.rms_norm(v, ns, w, eps)), x)
    np.testing.assert_allclose(grad_x, num_x, rtol=FD_RTOL, atol=FD_ATOL)
    if with_weight:
        num_w = _finite_difference(lambda v: np.sum(g * reference.rms_norm(x, ns, v, eps)), w)
        np.testing.assert_allclose(grad_w, num_w, rtol=FD_RTOL, atol=FD_ATOL)
    else:
        assert grad_w is None


@pytest.mark.parametrize("shape, axis", [((6, 3), 1), ((4, 3, 5), 1), ((3, 4, 2, 3), -1)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_batch_norm_backward_finite_differences(shape, axis, with_weight, isa, rng):
    x = random_data(rng, shape, np.float64, offset=1.0)
    c = shape[axis]
    w = random_data(rng, c, np.float64, offset=1.0) if with_weight else None
    b = random_data(rng, c, np.float64) if with_weight else None
    g = random_data(rng, shape, np.float64)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, b, training=True, axis=axis,
                                        return_stats=True)
    grad_x, grad_w, grad_b = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)

    def loss(v, weight=w, bias=b):
        return np.sum(g * reference.batch_norm(v, None, None, weight, bias, training=True,
                                               axis=axis))

    np.testing.assert_allclose(grad_x, _finite_difference(loss, x), rtol=FD_RTOL, atol=FD_ATOL)
    if with_weight:
        np.testing.assert_allclose(grad_w, _finite_difference(lambda v: loss(x, weight=v), w),
                                   rtol=FD_RTOL, atol=FD_ATOL)
        np.testing.assert_allclose(grad_b, _finite_difference(lambda v: loss(x, bias=v), b),
                                   rtol=FD_RTOL, atol=FD_ATOL)
    else:
        assert grad_w is None


# ------------------------------------------------------------------ torch autograd ---


def _torch_grads(torch, fn, x, params, g):
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tp = [None if p is None else torch.from_numpy(p.copy()).requires_grad_(True)
          for p in params]
    (fn(tx, *tp) * torch.from_numpy(g)).sum().backward()
    return [tx.grad.numpy()] + [None if p is None else p.grad.numpy() for p in tp]


@pytest.mark.parametrize("shape", [(8, 64), (3, 4, 33), (2, 1000)])
def test_layer_norm_backward_vs_torch(shape, isa, rng):
    torch = import_torch()
    x, w, b, g = _ln_case(rng, shape, 1, True)
    n = shape[-1]
    _, mean, rstd = fastnorm.layer_norm(x, None, w, b, return_stats=True)
    got = fastnorm.layer_norm_backward(g, x, mean, rstd, w)
    want = _torch_grads(torch, lambda t, tw, tb: torch.nn.functional.layer_norm(
        t, (n,), tw, tb, 1e-5), x, [w, b], g)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL)


@pytest.mark.parametrize("shape", [(8, 64), (3, 4, 33), (2, 1000)])
def test_rms_norm_backward_vs_torch(shape, isa, rng):
    torch = import_torch()
    x, w, _, g = _ln_case(rng, shape, 1, True)
    n = shape[-1]
    _, rstd = fastnorm.rms_norm(x, None, w, return_stats=True)
    got = fastnorm.rms_norm_backward(g, x, rstd, w)
    want = _torch_grads(torch, lambda t, tw: torch.nn.functional.rms_norm(t, (n,), tw), x,
                        [w], g)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL)


@pytest.mark.parametrize("shape, axis", [((16, 5), 1), ((4, 6, 3, 3), 1), ((4, 3, 3, 6), -1)])
def test_batch_norm_backward_vs_torch(shape, axis, isa, rng):
    torch = import_torch()
    x = random_data(rng, shape, np.float64, offset=2.0)
    c = shape[axis]
    w, b = random_data(rng, c, np.float64, offset=1.0), random_data(rng, c, np.float64)
    g = random_data(rng, shape, np.float64)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, b, training=True, axis=axis,
                                        return_stats=True)
    got = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)

    def torch_bn(t, tw, tb):
        t = t if axis == 1 else t.movedim(axis, 1)
        y = torch.nn.functional.batch_norm(t, None, None, tw, tb, training=True, eps=1e-5)
        return y if axis == 1 else y.movedim(1, axis)

    want = _torch_grads(torch, torch_bn, x, [w, b], g)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL)


def test_float32_backward_matches_reference(isa, rng):
    x = random_data(rng, (6, 40), np.float32)
    w = random_data(rng, 40, np.float32, offset=1.0)
    g = random_data(rng, (6, 40), np.float32)
    _, mean, rstd = fastnorm.layer_norm(x, None, w, return_stats=True)
    got = fastnorm.layer_norm_backward(g, x, mean, rstd, w)
    want = reference.layer_norm_backward(g, x, mean, rstd, w)
    assert got[0].dtype == F32
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=1e-5, atol=1e-5)


# ------------------------------------------- the C kernels against the float64 reference ---

# Error of a gradient over the largest magnitude of its reference: the kernels compute each
# element in the compute dtype (a few roundings of terms as large as rstd * |grad_y *
# weight|) and sum in float64 over compute-dtype blocks; half outputs add their own
# rounding (float16 2^-11, bfloat16 2^-8 relative).
BACKWARD_TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13,
                np.dtype(np.float16): 2e-3, BF16: 1.6e-2}
ALL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16)


def _scaled_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def _assert_gradients(got, want, dtype, accuracy_log, label):
    """grad_x in x's dtype, the sums in the compute dtype (None where the reference has
    None), each within BACKWARD_TOL[dtype] of the reference's; the errors logged."""
    assert got[0].dtype == dtype
    for name, got_i, want_i in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        if want_i is None:
            assert got_i is None, name
            continue
        if name != "grad_x":
            assert got_i.dtype == compute_dtype(dtype), name
        error = _scaled_error(got_i, want_i)
        accuracy_log(f"{name} {dtype} {label}", error)
        assert error <= BACKWARD_TOL[dtype], (name, error)


def _row_backward(op, g, x, w, axis=None):
    """(fastnorm's gradients, the reference's from the same inputs) of a row norm."""
    kw = {} if axis is None else {"axis": axis}
    if op == "layer_norm":
        _, mean, rstd = fastnorm.layer_norm(x, None, w, return_stats=True, **kw)
        return (fastnorm.layer_norm_backward(g, x, mean, rstd, w, **kw),
                reference.layer_norm_backward(g, x, mean, rstd, w, **kw))
    _, rstd = fastnorm.rms_norm(x, None, w, return_stats=True, **kw)
    return (fastnorm.rms_norm_backward(g, x, rstd, w, **kw),
            reference.rms_norm_backward(g, x, rstd, w, **kw))


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 1), (4, 17), (5, 33), (2, 100), (3, 1000), (2, 4100),
                                   (40, 64)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_row_backward_kernels(op, dtype, shape, with_weight, isa, rng, accuracy_log):
    """Every kernel family, dtype and a width straddling each vector size: grad_x, grad_weight
    and grad_bias within BACKWARD_TOL of the float64 reference, on offset data."""
    x = random_data(rng, shape, dtype, offset=3.0, scale=2.0)
    g = random_data(rng, shape, dtype)
    w = random_data(rng, shape[-1], dtype, offset=1.0) if with_weight else None
    got, want = _row_backward(op, g, x, w)
    assert got[0].shape == shape
    if shape[-1] == 1 and op == "rms_norm":
        # one value: xhat = x * rstd is +-1 to within eps, so the true grad_x, rstd * gw *
        # (1 - xhat^2), is tiny, and what the compute dtype adds is a few of its roundings
        # of rstd * |gw| (plus the storage dtype's rounding of the result itself)
        x64, gw = as_f64(x), as_f64(g) * (1.0 if w is None else as_f64(w))
        eps = np.finfo(np.float32).eps  # rms_norm's default eps for every dtype but float64
        compute_eps = eps
        if dtype == np.float64:
            eps = compute_eps = np.finfo(np.float64).eps
        rstd = 1 / np.sqrt(x64 * x64 + eps)
        storage_step = 0.0 if dtype in (np.float32, np.float64) else 2.0**-7
        bound = 8 * compute_eps * rstd * np.abs(gw) + storage_step * np.abs(as_f64(want[0]))
        assert np.all(np.abs(as_f64(got[0]) - as_f64(want[0])) <= bound + 1e-300)
        want = (got[0],) + tuple(want[1:])  # the scaled error below has no scale here
    _assert_gradients(got, want, dtype, accuracy_log, shape)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_backward_threads_same_bits(op, num_threads, rng):
    """Work items follow the shape, column sums merge in item order: 1 and 2 threads give
    the same bits (300 x 700 is several items)."""
    x, g = random_data(rng, (300, 700), F32, offset=1.0), random_data(rng, (300, 700), F32)
    w = random_data(rng, 700, F32, offset=1.0)
    num_threads(1)
    one, _ = _row_backward(op, g, x, w)
    num_threads(2)
    two, want = _row_backward(op, g, x, w)
    for a, b, c in zip(one, two, want):
        assert_same_bits(a, b)
        assert _scaled_error(a, c) <= BACKWARD_TOL[F32]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("axis", [1, (1, 3), (0,)])
def test_row_backward_other_axes(op, axis, isa, rng):
    """Normalized axes that are not the trailing ones (moved last for the kernels)."""
    x = random_data(rng, (3, 6, 4, 5), F32, offset=2.0)
    g = random_data(rng, (3, 6, 4, 5), F32)
    norm_shape = tuple(x.shape[a] for a in ((axis,) if isinstance(axis, int) else axis))
    w = random_data(rng, norm_shape, F32, offset=1.0)
    got, want = _row_backward(op, g, x, w, axis=axis)
    assert got[0].flags.c_contiguous
    for got_i, want_i in zip(got, want):
        assert got_i.shape == want_i.shape
        assert _scaled_error(got_i, want_i) <= BACKWARD_TOL[F32]


def test_row_backward_mixed_dtypes_and_layouts(rng):
    """grad_y of another dtype than x (both taken in the compute dtype), and views."""
    x = random_data(rng, (8, 50), np.float16, offset=1.0)
    g = random_data(rng, (8, 50), np.float64)
    _, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    got = fastnorm.layer_norm_backward(g, x, mean, rstd)
    want = reference.layer_norm_backward(g.astype(F32), x, mean, rstd)
    assert got[0].dtype == np.float16
    assert _scaled_error(got[0], want[0]) <= BACKWARD_TOL[np.dtype(np.float16)]
    xt = random_data(rng, (50, 8), F32).T  # a Fortran-order view
    gt = random_data(rng, (50, 8), F32)[::-1].T
    _, mean, rstd = fastnorm.layer_norm(xt, return_stats=True)
    got = fastnorm.layer_norm_backward(gt, xt, mean, rstd)
    want = reference.layer_norm_backward(gt, xt, mean, rstd)
    assert got[1] is None and want[1] is None
    for got_i, want_i in (got[0], want[0]), (got[2], want[2]):
        assert _scaled_error(got_i, want_i) <= BACKWARD_TOL[F32]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_backward_nan_stays_in_its_row(op, isa, rng):
    """A NaN in one row makes that row's grad_x NaN; the other rows are the ones computed
    without it (rows are independent), as the NumPy formulas give."""
    x, g = random_data(rng, (6, 40), F32, offset=1.0), random_data(rng, (6, 40), F32)
    clean, _ = _row_backward(op, g, x, None)
    x[2, 7] = np.nan
    got, _ = _row_backward(op, g, x, None)
    assert np.isnan(got[0][2]).all()
    rows = [0, 1, 3, 4, 5]
    assert_same_bits(got[0][rows], clean[0][rows])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape, axis", [
    ((2, 3, 16), 1), ((3, 5, 7, 7), 1), ((2, 4, 100), 1), ((1, 3, 1000), 1),  # channel rows
    ((4, 3, 2), 1), ((16, 5), 1), ((40, 37), 1), ((3, 6, 3, 3), 1),  # columns: short rows
    ((128, 64, 4, 4), 1),  # columns: four work items, each with channel sums of 16 columns
    ((2, 5, 5, 24), -1), ((3, 4, 19), -1), ((50, 3, 2), 0),  # columns: channels last
    ((8, 100, 25, 25), 1),  # channel rows, a channel a call (rows_grad_sums / _apply)
    ((64, 3, 100), 1),  # 64 spans a call: the float64 step falls inside a channel's spans
    ((2, 3, 40000), 1)])  # channels past 256 KB: a row a call
@pytest.mark.parametrize("with_weight", [False, True])
def test_batch_norm_backward_kernels(dtype, shape, axis, with_weight, isa, rng, accuracy_log):
    """Channel rows of 32 values or more take the channel kernels (a channel a call up to
    256 KB, a row a call past it), shorter rows and channels-last data the column ones: all
    within BACKWARD_TOL of the float64 reference."""
    x = random_data(rng, shape, dtype, offset=3.0, scale=2.0)
    g = random_data(rng, shape, dtype)
    w = random_data(rng, shape[axis], dtype, offset=1.0) if with_weight else None
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, training=True, axis=axis,
                                        return_stats=True)
    got = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)
    want = reference.batch_norm_backward(g, x, mean, rstd, w, axis=axis)
    _assert_gradients(got, want, dtype, accuracy_log, shape)


@pytest.mark.parametrize("shape, axis", [((8, 16, 30, 30), 1), ((2000, 40), 1),
                                         ((4, 30, 30, 16), -1), ((8, 100, 25, 25), 1),
                                         ((2, 6, 180, 180), 1)])
def test_batch_norm_backward_threads_same_bits(shape, axis, num_threads, rng):
    """Rows and columns (several work items here): 1 and 2 threads give the same bits.
    (8, 100, 25, 25) goes a channel a work item, (2, 6, 180, 180) (channels of 518 KB) a
    row a work item."""
    x, g = random_data(rng, shape, F32, offset=1.0), random_data(rng, shape, F32)
    w = random_data(rng, shape[axis], F32, offset=1.0)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, training=True, axis=axis,
                                        return_stats=True)
    num_threads(1)
    one = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)
    num_threads(2)
    two = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)
    want = reference.batch_norm_backward(g, x, mean, rstd, w, axis=axis)
    for a, b, c in zip(one, two, want):
        assert_same_bits(a, b)
        assert _scaled_error(a, c) <= BACKWARD_TOL[F32]


@pytest.mark.parametrize("shape", [(8, 5, 14, 14), (32, 4, 7, 7), (3, 4, 129)])
def test_batch_norm_backward_channel_equals_its_own_call(shape, isa, rng):
    """A channel of NCHW data read in place, its rows a sample apart, gives the bits of the
    same channel alone in a contiguous array: the channel's spans are summed in the same
    order whatever the stride between them."""
    x = random_data(rng, shape, F32, offset=2.0, scale=3.0)
    g = random_data(rng, shape, F32)
    w = random_data(rng, shape[1], F32, offset=1.0)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, training=True, return_stats=True)
    grad_x, grad_w, grad_b = fastnorm.batch_norm_backward(g, x, mean, rstd, w)
    for c in range(shape[1]):
        alone = fastnorm.batch_norm_backward(
            np.ascontiguousarray(g[:, c:c + 1]), np.ascontiguousarray(x[:, c:c + 1]),
            mean[c:c + 1], rstd[c:c + 1], w[c:c + 1])
        assert_same_bits(grad_x[:, c:c + 1], alone[0])
        assert_same_bits(grad_w[c:c + 1], alone[1])
        assert_same_bits(grad_b[c:c + 1], alone[2])


@pytest.mark.parametrize("op, n", [("layer_norm", 4100), ("rms_norm", 4100), ("layer_norm", 4101),
                                   ("batch_norm", None)])
def test_backward_streamed_output(op, n, isa, num_threads, rng):
    """Outputs past 8 MB in rows of 4 KB or more are streamed on one thread (16 MB on two),
    from the first vector boundary of each row (NumPy's arrays start 16 bytes past a cache
    line; rows of 4101 values start at every 4 bytes of a line, their edges streamed in
    4-byte pieces): still the reference's."""
    num_threads(1)
    shape = (2, 64, 130, 130) if op == "batch_norm" else (520, n)
    x = random_data(rng, shape, F32, offset=2.0)
    g = random_data(rng, shape, F32)
    if op == "batch_norm":
        w = random_data(rng, shape[1], F32, offset=1.0)
        _, mean, rstd = fastnorm.batch_norm(x, None, None, w, training=True, return_stats=True)
        got = fastnorm.batch_norm_backward(g, x, mean, rstd, w)
        want = reference.batch_norm_backward(g, x, mean, rstd, w)
    else:
        got, want = _row_backward(op, g, x, random_data(rng, shape[-1], F32, offset=1.0))
    assert got[0].nbytes >= 8 << 20
    for got_i, want_i in zip(got, want):
        assert _scaled_error(got_i, want_i) <= BACKWARD_TOL[F32]


def test_batch_norm_backward_channels_last_streamed_equals_plain(isa, num_threads, rng):
    """A channels-last grad_x of 8.7 MB streams on one thread (8 MB bound), from its first
    cache line with the column parameters rotated to match (api_backward.c), and is stored
    plainly on two (16 MB bound): the same bits either way, and the reference's values."""
    shape = (2, 130, 130, 64)
    x = random_data(rng, shape, F32, offset=2.0)
    g = random_data(rng, shape, F32)
    w = random_data(rng, shape[-1], F32, offset=1.0)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, training=True, axis=-1,
                                        return_stats=True)
    num_threads(1)
    streamed = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=-1)
    num_threads(2)
    plain = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=-1)
    want = reference.batch_norm_backward(g, x, mean, rstd, w, axis=-1)
    assert streamed[0].nbytes >= 8 << 20
    for a, b, c in zip(streamed, plain, want):
        assert_same_bits(a, b)
        assert _scaled_error(a, c) <= BACKWARD_TOL[F32]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_backward_one_step_path_matches_general(op, rng):
    """The one-step call (arrays as they are) and the general path (statistics converted
    from float64, a strided grad_y copied) give the same bits."""
    x = random_data(rng, (12, 130), F32, offset=1.0)
    g = random_data(rng, (12, 260), F32)[:, ::2]
    w = random_data(rng, 130, F32, offset=1.0)
    if op == "layer_norm":
        _, mean, rstd = fastnorm.layer_norm(x, None, w, return_stats=True)
        direct = fastnorm.layer_norm_backward(np.ascontiguousarray(g), x, mean, rstd, w)
        general = fastnorm.layer_norm_backward(g, x, mean.astype(np.float64),
                                               rstd.astype(np.float64), w)
    else:
        _, rstd = fastnorm.rms_norm(x, None, w, return_stats=True)
        direct = fastnorm.rms_norm_backward(np.ascontiguousarray(g), x, rstd, w)
        general = fastnorm.rms_norm_backward(g, x, rstd.astype(np.float64), w)
    assert len(direct) == len(general) == (3 if op == "layer_norm" else 2)
    for a, b in zip(direct, general):
        assert_same_bits(a, b)


def test_row_backward_one_step_path_declines_bad_statistics(rng):
    """A statistic of the wrong shape or a missing mean goes to the general path, which
    raises ValueError naming it; nothing is computed."""
    x, g = random_data(rng, (4, 8), F32), random_data(rng, (4, 8), F32)
    _, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    with pytest.raises(ValueError, match="rstd"):
        fastnorm.layer_norm_backward(g, x, mean, rstd[:3])
    with pytest.raises(ValueError, match="weight"):
        fastnorm.rms_norm_backward(g, x, rstd, np.ones(7, F32))
    with pytest.raises(ValueError, match="grad_y"):
        fastnorm.layer_norm_backward(g[:, :7], x, mean, rstd)


def test_row_backward_constant_rows_of_huge_values(isa, rng):
    """Constant rows of 17 values at 1e37: xhat is 0, but the last part-vector's missing
    lanes (x read as 0) give (0 - mean) * rstd = -1e37 * 316 = -inf, and their 0 * inf
    would be a NaN in the sums unless the kernel drops those lanes."""
    x = np.full((3, 17), 1e37, F32)
    g = random_data(rng, (3, 17), F32)
    w = random_data(rng, 17, F32, offset=1.0)
    _, mean, rstd = fastnorm.layer_norm(x, None, w, return_stats=True)
    assert 1e37 * float(rstd[0]) > float(np.finfo(F32).max)
    got = fastnorm.layer_norm_backward(g, x, mean, rstd, w)
    want = reference.layer_norm_backward(g, x, mean, rstd, w)
    for got_i, want_i in zip(got, want):
        assert np.isfinite(got_i).all()
        assert _scaled_error(got_i, want_i) <= BACKWARD_TOL[F32]


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (2, 40, 3, 7)])
def test_batch_norm_backward_channels_last_view(shape, isa, rng):
    """The (N, C, H, W) view of NHWC memory (a PyTorch channels_last tensor's layout) with
    grad_y alike: computed in place as channels-last data, grad_x in the same layout, the
    values those of the C-order copies (within rounding: the sums run in another order)."""
    n, c, h, w_ = shape
    x = np.moveaxis(random_data(rng, (n, h, w_, c), F32, offset=2.0), -1, 1)
    g = np.moveaxis(random_data(rng, (n, h, w_, c), F32), -1, 1)
    weight = random_data(rng, c, F32, offset=1.0)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, weight, training=True, return_stats=True)
    got = fastnorm.batch_norm_backward(g, x, mean, rstd, weight)
    assert got[0].strides == x.strides
    want = fastnorm.batch_norm_backward(np.ascontiguousarray(g), np.ascontiguousarray(x), mean,
                                        rstd, weight)
    for got_i, want_i in zip(got, want):
        assert _scaled_error(got_i, want_i) <= BACKWARD_TOL[F32]
    for got_i, want_i in zip(got, reference.batch_norm_backward(g, x, mean, rstd, weight)):
        assert _scaled_error(got_i, want_i) <= BACKWARD_TOL[F32]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("case", ["channels_last_axis1", "fortran_axis0"])
def test_row_backward_in_memory_order(op, case, isa, rng):
    """Normalized axes last in memory (axis=1 of the (N, C, H, W) view of NHWC memory, as a
    ConvNeXt block on a channels_last tensor has it; axis=0 of a Fortran array), grad_y laid
    out alike: computed where they lie, grad_x in x's layout, the reference's values."""
    if case == "channels_last_axis1":
        x = np.moveaxis(random_data(rng, (2, 5, 3, 40), F32, offset=2.0), -1, 1)
        g = np.moveaxis(random_data(rng, (2, 5, 3, 40), F32), -1, 1)
        axis = 1
    else:
        x = np.asfortranarray(random_data(rng, (37, 6), F32, offset=2.0))
        g = np.asfortranarray(random_data(rng, (37, 6), F32))
        axis = 0
    w = random_data(rng, x.shape[axis], F32, offset=1.0)
    got, want = _row_backward(op, g, x, w, axis=axis)
    assert got[0].strides == x.strides
    for got_i, want_i in zip(got, want):
        assert got_i.shape == want_i.shape
        assert _scaled_error(got_i, want_i) <= BACKWARD_TOL[F32]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("with_weight", [False, True])
def test_row_backward_axis1_of_nchw(op, dtype, with_weight, isa, rng, accuracy_log):
    """axis=1 of C-order NCHW data (ConvNeXt's channels-first LayerNorm): each position a
    column of the kernels, 40 channels (several blocks of rows), 7x5 positions (a part-vector
    in every family), against the float64 reference."""
    x = random_data(rng, (3, 40, 7, 5), dtype, offset=3.0, scale=2.0)
    g = random_data(rng, (3, 40, 7, 5), dtype)
    w = random_data(rng, 40, dtype, offset=1.0) if with_weight else None
    got, want = _row_backward(op, g, x, w, axis=1)
    assert got[0].flags.c_contiguous
    _assert_gradients(got, want, dtype, accuracy_log, "axis=1")


def test_row_backward_axis1_threads_same_bits(num_threads, rng):
    """The column path's work items are runs of samples fixed by the shape: 1 and 2
    threads give the same bits."""
    x, g = random_data(rng, (20, 64, 30, 30), F32, offset=1.0), random_data(rng, (20, 64, 30, 30), F32)
    w = random_data(rng, 64, F32, offset=1.0)
    num_threads(1)
    one, _ = _row_backward("layer_norm", g, x, w, axis=1)
    num_threads(2)
    two, _ = _row_backward("layer_norm", g, x, w, axis=1)
    for a, b in zip(one, two):
        assert_same_bits(a, b)
