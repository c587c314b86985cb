"""Finite values too large to square in float32 still normalize (contract: only NaN or inf
makes a group NaN).

The kernels sum squares in the compute dtype, so float32, float16 and bfloat16 groups spread
past about 1.8e19 overflow there; every statistics path then takes the group's exact float64
statistics (api_internal.h, fn_exact_moments).  Each case below reaches one of those paths:
LayerNorm/RMSNorm rows one ahead (fused loop, or with a residual), in groups, one at a time,
long rows in segments, short rows several in step (rows_short), columns (axis=); BatchNorm's
short-row spans, row segments, one-sample channels and channels-last columns; GroupNorm in
one pass, two passes and channels last; moments.  Data: N(0, 1) * 3e19, whose squares pass
FLT_MAX (3.4e38), so each normalized result equals that of N(0, 1) up to rounding.
"""
import numpy as np
import pytest

import fastnorm
from fn_testutil import (BF16, F32, assert_close, random_data, ref_batch_norm, ref_group_norm,
                         ref_row_norm, ref_row_norm_axis)

SCALE = 3e19


def _large(rng, shape, dtype):
    return random_data(rng, shape, dtype, scale=SCALE)


# (shape, kwargs): the row paths of api_norm.c, by size (see fn_norm_run)
ROW_CASES = [
    ((4, 768), {}),                                        # one ahead, fused loop
    ((4, 768), {"residual": True}),                        # one ahead, statistics then pass
    ((3, 4096), {"weight": True, "bias": True}),          # rows in groups
    ((3, 2048), {"weight": True}),                         # a row at a time
    ((2, 20000), {}),                                      # long rows, in segments
    ((5, 16), {}),                                         # short rows (rows_short)
    ((64, 8), {"axis": 0}),                                # columns
    ((4, 50, 6), {"axis": 1}),                             # columns, inner > 1
]


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("shape, kw", ROW_CASES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_norms_of_values_too_large_to_square(op, shape, kw, dtype, isa, rng, tol):
    x = _large(rng, shape, dtype)
    kw = dict(kw)
    axis = kw.pop("axis", None)
    n = shape[-1] if axis is None else shape[axis]
    args = {}
    if kw.pop("residual", False):
        args["residual"] = _large(rng, shape, dtype)
    if kw.pop("weight", False):
        args["weight"] = random_data(rng, n, np.float32, offset=1.0)
    if kw.pop("bias", False) and op == "layer_norm":
        args["bias"] = random_data(rng, n, np.float32)
    if axis is None:
        y, *stats = getattr(fastnorm, op)(x, return_stats=True, **args)
        h = x if "residual" not in args else (x + args["residual"]).astype(dtype)
        want, *want_stats = ref_row_norm(op, h, weight=args.get("weight"),
                                         bias=args.get("bias"), return_stats=True)
        for got_s, want_s in zip(stats, want_stats):
            assert_close(got_s, want_s, tol, dtype=F32)
    else:
        y = getattr(fastnorm, op)(x, axis=axis, **args)
        want = ref_row_norm_axis(op, x, axis, weight=args.get("weight"), bias=args.get("bias"))
    assert np.isfinite(y.astype(np.float32)).all()
    assert_close(y, want, tol, dtype=dtype)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_large_rows_in_place_and_with_h_written(op, isa, rng, tol):
    # in place, and with residual_out = x: the exact pass reads what the normalize pass reads
    x = _large(rng, (6, 768), F32)
    r = _large(rng, (6, 768), F32)
    want = ref_row_norm(op, (x + r).astype(F32))
    xc = x.copy()
    y = getattr(fastnorm, op)(xc, residual=r, residual_out=xc)
    assert_close(y, want, tol, dtype=F32)
    np.testing.assert_array_equal(xc, (x + r).astype(F32))
    x2 = x + r
    getattr(fastnorm, op)(x2, out=x2)
    assert_close(x2, want, tol, dtype=F32)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(4, 768), (5, 16), (2, 20000), (64, 8)])
def test_a_nan_or_inf_among_large_values_still_makes_the_row_nan(op, shape, isa, rng):
    x = _large(rng, shape, F32)
    x[0, 3] = np.nan
    x[1, 5] = np.inf
    y = getattr(fastnorm, op)(x)
    assert np.isnan(y[:2]).all()
    assert np.isfinite(y[2:]).all()


# (shape, axis): BatchNorm's statistics paths (api_batch_norm.c)
BN_CASES = [
    ((8, 3, 5, 5), 1),       # short rows, read as spans
    ((2, 3, 90, 90), 1),     # rows in segments
    ((1, 3, 40, 40), 1),     # one sample: each channel normalized after its statistics
    ((1, 5, 7, 7), 1),       # one sample of small maps: rows_short_channels
    ((8, 5, 5, 3), -1),      # channels last: columns
    ((6, 3, 2, 2), 1),       # rows under 16 values: columns
]


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("shape, axis", BN_CASES)
def test_batch_norm_training_of_values_too_large_to_square(shape, axis, dtype, isa, rng, tol):
    x = _large(rng, shape, dtype)
    c = shape[axis]
    rm, rv = np.zeros(c), np.ones(c)
    y, mean, rstd = fastnorm.batch_norm(x, rm, rv, training=True, axis=axis, return_stats=True)
    (want, want_mean, want_rstd), _, rv_want = ref_batch_norm(
        x, np.zeros(c), np.ones(c), training=True, axis=axis, return_stats=True)
    assert np.isfinite(y.astype(np.float32)).all()
    assert_close(y, want, tol, dtype=dtype)
    assert_close(mean, want_mean, tol, dtype=F32)
    assert_close(rstd, want_rstd, tol, dtype=F32)
    np.testing.assert_allclose(rv, rv_want, rtol=1e-5)
    reduced = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    count, _mean, m2 = fastnorm.moments(x, axis=reduced)
    np.testing.assert_allclose(m2 / count, 1 / want_rstd.astype(np.float64) ** 2, rtol=1e-5)


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("shape, groups, channels_last",
                         [((2, 6, 8, 8), 3, False),        # one pass per group
                          ((1, 4, 200, 200), 2, False),    # two passes (groups past 256 KB)
                          ((2, 6, 8, 8), 3, True),         # channels last
                          ((3, 8, 3, 3), 4, False)])       # small groups (rows_short)
def test_group_norm_of_values_too_large_to_square(shape, groups, channels_last, dtype, isa, rng,
                                                  tol):
    x = _large(rng, shape, dtype)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    c = shape[1]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    y = fastnorm.group_norm(x, groups, w, b)
    assert np.isfinite(y.astype(np.float32)).all()
    assert_close(y, ref_group_norm(x, groups, w, b), tol, dtype=dtype)
    assert_close(fastnorm.instance_norm(x), ref_group_norm(x, c), tol, dtype=dtype)


def test_float64_values_too_large_to_square_in_float64_give_nan(isa, rng):
    # the documented limit (docs/api.md): float64 sums of squares overflow past ~1e154, and
    # such groups give NaN, as a NaN or inf would, not 0 from an infinite variance
    x = random_data(rng, (8, 3, 5, 5), np.float64, scale=1e200)
    assert np.isnan(fastnorm.batch_norm(x, training=True)).all()
    assert np.isnan(fastnorm.batch_norm(x[:1], training=True)).all()
    assert np.isnan(fastnorm.layer_norm(x.reshape(8, -1))).all()
    assert np.isnan(fastnorm.rms_norm(x.reshape(8, -1))).all()


NEAR_MAX = 4.5e307  # four of these overflow a float64 sum (DBL_MAX is 1.8e308)


def _constant(shape):
    return np.full(shape, NEAR_MAX)


@pytest.mark.parametrize("shape, kw", ROW_CASES)
def test_float64_constant_rows_near_the_largest_double_give_the_bias(shape, kw, isa):
    # API.md: a constant group gives (x - mean) = 0, so exactly `bias`; the statistics of
    # such a group overflow a sum of its raw values, and the exact fallback sums them about
    # the group's first value (fn_exact_moments)
    x = _constant(shape)
    axis = kw.get("axis", -1)
    n = shape[axis]
    b = np.linspace(-1.0, 1.0, n)
    b_shape = [1] * len(shape)
    b_shape[axis] = n
    args = {"residual": np.zeros(shape)} if kw.get("residual") else {}
    if "axis" in kw:
        y, mean, rstd = fastnorm.layer_norm(x, axis=axis, bias=b, return_stats=True, **args)
    else:
        y, mean, rstd = fastnorm.layer_norm(x, shape[-1], bias=b, return_stats=True, **args)
    np.testing.assert_array_equal(y, np.broadcast_to(b.reshape(b_shape), shape))
    assert (mean == NEAR_MAX).all() and (rstd == 1 / np.sqrt(1e-5)).all()


@pytest.mark.parametrize("shape, axis", BN_CASES)
def test_float64_constant_channels_near_the_largest_double_give_the_bias(shape, axis, isa):
    x = _constant(shape)
    c = shape[axis]
    b = np.linspace(-1.0, 1.0, c)
    b_shape = [1] * len(shape)
    b_shape[axis] = c
    y, mean, _ = fastnorm.batch_norm(x, bias=b, training=True, axis=axis, return_stats=True)
    np.testing.assert_array_equal(y, np.broadcast_to(b.reshape(b_shape), shape))
    np.testing.assert_array_equal(mean, np.full(c, NEAR_MAX))
    reduced = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    count, m_mean, m2 = fastnorm.moments(x, axis=reduced)
    assert (m_mean == NEAR_MAX).all() and (m2 == 0).all()


@pytest.mark.parametrize("shape, groups, channels_last",
                         [((2, 6, 8, 8), 3, False), ((1, 4, 200, 200), 2, False),
                          ((2, 6, 8, 8), 3, True), ((3, 8, 3, 3), 4, False)])
def test_float64_constant_groups_near_the_largest_double_give_the_bias(shape, groups,
                                                                       channels_last, isa):
    x = _constant(shape)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    b = np.linspace(-1.0, 1.0, shape[1])
    want = np.broadcast_to(b.reshape(1, -1, 1, 1), shape)
    np.testing.assert_array_equal(fastnorm.group_norm(x, groups, bias=b), want)
    np.testing.assert_array_equal(fastnorm.instance_norm(x, bias=b), want)
