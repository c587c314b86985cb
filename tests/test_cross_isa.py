"""Each SIMD kernel family against the scalar family on the same inputs.

Tolerance: the families run the same algorithm (per-lane Welford on a shifted row, blocks
merged in float64, mean subtracted as an exact pair) and differ only in lane count and so
in summation order.  Each is within the suite's tolerance table (TOLERANCES in
conftest.py: 1e-6 for float32, 1e-12 for float64, one ulp for the half types) of the exact
value, and so they must agree with each other within that same table.  The largest
absolute difference on shifted rows is also shown in the accuracy summary.
"""
import numpy as np
import pytest

import fastnorm
import fastnorm._config
from fn_testutil import (FULL_DTYPES, HALF_DTYPES, STRADDLE_LENGTHS, assert_close,
                         half_support_reason, random_data)


def _both(simd_isa, call):
    with fastnorm._config.use_isa("scalar"):
        scalar = call()
    with fastnorm._config.use_isa(simd_isa):
        simd = call()
    return ((scalar,) if not isinstance(scalar, tuple) else scalar,
            (simd,) if not isinstance(simd, tuple) else simd)


def _compare(simd_isa, call, tol, label, accuracy_log=None):
    scalar, simd = _both(simd_isa, call)
    worst = 0.0
    for i, (a, b) in enumerate(zip(scalar, simd)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(b, a, tol, err_msg=f"{label}: {simd_isa} vs scalar, output {i}")
        finite = np.isfinite(a.astype(np.float64))
        if i == 0 and a.size and finite.any():  # the normalized output, not the stats
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))[finite]
            worst = max(worst, float(diff.max()))
    if accuracy_log is not None:
        accuracy_log(f"{label} {simd_isa} vs scalar max_abs_diff", worst)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_row_norms_every_length(op, dtype, simd_isa, rng, tol):
    fn = getattr(fastnorm, op)
    for n in STRADDLE_LENGTHS:
        x = random_data(rng, (5, n), dtype, offset=2.0)
        w = random_data(rng, n, dtype, offset=1.0)
        _compare(simd_isa, lambda: fn(x, None, w, return_stats=True), tol, f"{op} n={n}")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5])
def test_row_norms_shifted_float32(op, offset, simd_isa, rng, tol, accuracy_log):
    fn = getattr(fastnorm, op)
    x = random_data(rng, (32, 4096), np.float32, offset=offset)
    _compare(simd_isa, lambda: fn(x, return_stats=True), tol, f"{op} offset={offset:g}",
             accuracy_log)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape, axis", [((4, 16, 9, 9), 1), ((3, 70, 33), 1),
                                         ((2, 5, 6, 7), (1, 3)), ((1, 1 << 20), -1)])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_row_norms_axis_and_long_rows(op, shape, axis, dtype, simd_isa, rng, tol):
    fn = getattr(fastnorm, op)
    x = random_data(rng, shape, dtype, offset=-1.0)
    _compare(simd_isa, lambda: fn(x, axis=axis, return_stats=True), tol, f"{op} axis={axis}")


@pytest.mark.parametrize("shape, axis", [((8, 16, 12, 12), 1), ((8, 12, 12, 16), -1),
                                         ((64, 3), 1), ((4, 70, 33), 1), ((4, 33, 70), -1)])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_batch_norm(shape, axis, dtype, simd_isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=100.0)
    c = shape[axis]
    w, b = random_data(rng, c, dtype, offset=1.0), random_data(rng, c, dtype)

    def train():
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        y, mean, rstd = fastnorm.batch_norm(x, rm, rv, w, b, training=True, axis=axis,
                                            return_stats=True)
        return y, mean, rstd, rm, rv

    rm = np.full(c, 100.0, dtype)
    rv = np.full(c, 0.9, dtype)
    _compare(simd_isa, train, tol, f"batch_norm train {shape} axis={axis}")
    _compare(simd_isa, lambda: fastnorm.batch_norm(x, rm, rv, w, b, axis=axis), tol,
             f"batch_norm eval {shape} axis={axis}")


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_group_norm_and_moments(dtype, simd_isa, rng, tol):
    x = random_data(rng, (4, 32, 9, 11), dtype, offset=10.0)
    _compare(simd_isa, lambda: fastnorm.group_norm(x, 8), tol, "group_norm")
    _compare(simd_isa, lambda: fastnorm.instance_norm(x), tol, "instance_norm")
    scalar, simd = _both(simd_isa, lambda: fastnorm.moments(x, axis=(0, 2, 3)))
    np.testing.assert_array_equal(scalar[0], simd[0])  # counts are exact integers
    # Partials of float32 data carry float32-lane rounding: compare relative to the spread.
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(simd[1], scalar[1], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(simd[2], scalar[2], rtol=rtol)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_half_row_norms(dtype, op, simd_isa, rng, tol):
    reason = half_support_reason()
    if reason:
        pytest.skip(f"half dtypes not implemented yet: {reason}")
    fn = getattr(fastnorm, op)
    for n in STRADDLE_LENGTHS:
        x = random_data(rng, (3, n), dtype, offset=1.0)
        w = random_data(rng, n, np.float32, offset=1.0)
        _compare(simd_isa, lambda: fn(x, None, w, return_stats=True), tol, f"{op} n={n}")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_batch_norm(dtype, simd_isa, rng, tol):
    reason = half_support_reason()
    if reason:
        pytest.skip(f"half dtypes not implemented yet: {reason}")
    x = random_data(rng, (8, 16, 9, 9), dtype, offset=3.0)
    _compare(simd_isa, lambda: fastnorm.batch_norm(x, None, None, training=True,
                                                   return_stats=True), tol, "bn half")
