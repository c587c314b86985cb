"""Hypothesis: random shapes, axes and layouts against the reference, and invariants.

Data are drawn from a NumPy Generator seeded by Hypothesis (fast, still shrinkable by
shape); Hypothesis picks shapes, axes, layouts, dtypes, offsets and scales.  Example counts
come from the profile (HYPOTHESIS_PROFILE=dev|ci|thorough, see conftest.py).
"""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fastnorm
from fn_testutil import (F32, F64, LAYOUTS, as_layout, assert_close, ref_batch_norm,
                         ref_row_norm_axis, row_norm)

dtypes = st.sampled_from([F32, F64])
layouts = st.sampled_from(LAYOUTS)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def shapes_and_axes(draw, max_dims=4):
    ndim = draw(st.integers(1, max_dims))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    if draw(st.booleans()):  # sometimes one long dimension, straddling vector widths
        i = draw(st.integers(0, ndim - 1))
        shape = shape[:i] + (draw(st.integers(10, 140)),) + shape[i + 1:]
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return shape, tuple(sorted(axes))


def _data(seed, shape, dtype, offset, scale):
    rng = np.random.default_rng(seed)
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def _groups_view(a, axes):
    """a reshaped to (groups, group_size) with the normalized axes last."""
    a = np.asarray(a, dtype=np.float64)
    kept = [i for i in range(a.ndim) if i not in axes]
    return np.transpose(a, kept + list(axes)).reshape(int(np.prod([a.shape[i] for i in kept],
                                                                   dtype=np.int64)), -1)


@given(sa=shapes_and_axes(), dtype=dtypes, layout=layouts, seed=seeds,
       op=st.sampled_from(["layer_norm", "rms_norm"]), affine=st.booleans(),
       offset=st.sampled_from([0.0, 1.0, -50.0, 1e3]))
def test_row_norms_random_shapes_axes_layouts(isa, tol, sa, dtype, layout, seed, op, affine,
                                              offset):
    shape, axes = sa
    x = _data(seed, shape, dtype, offset, 1.0)
    norm_shape = tuple(shape[a] for a in axes)
    w = _data(seed + 1, norm_shape, dtype, 1.0, 0.5) if affine else None
    b = _data(seed + 2, norm_shape, dtype, 0.0, 1.0) if affine and op == "layer_norm" else None
    view = as_layout(x, layout)
    y = row_norm(op, view, None, w, b, axis=axes)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(view, x)
    # The statistics are off by a few float32 steps in units of the group's spread (a
    # float32 Welford stream of up to 64 values per lane); the weight scales that error
    # in the output, where the bias may cancel most of the value ((58, 9, 9) over axis 0:
    # 1.16e-6 off at y = -0.045 = 0.76 - 0.80, w = 1.96).
    scale = max(1.0, float(np.abs(w.astype(np.float64)).max())) if affine else 1.0
    scaled = {key: t._replace(atol=t.atol * scale) for key, t in tol.items()}
    assert_close(y, ref_row_norm_axis(op, x, axes, w, b), scaled)


@given(sa=shapes_and_axes(), dtype=dtypes, layout=layouts, seed=seeds,
       training=st.booleans(), offset=st.sampled_from([0.0, 3.0, 100.0]))
def test_batch_norm_random_shapes_axes_layouts(isa, tol, sa, dtype, layout, seed, training,
                                               offset):
    shape, axes = sa
    axis = axes[0]
    if len(shape) < 2 or (training and np.prod(shape) // shape[axis] < 2):
        shape, axis = (2,) + shape, axis + 1  # a batch dimension: >= 2 values per channel
    c = shape[axis]
    x = _data(seed, shape, dtype, offset, 2.0)
    rm, rv = np.full(c, offset, dtype), np.full(c, 4.0, dtype)
    got = fastnorm.batch_norm(as_layout(x, layout), rm.copy(), rv.copy(), training=training,
                              axis=axis, return_stats=True)
    want, _, _ = ref_batch_norm(x, rm, rv, training=training, axis=axis, return_stats=True)
    # The reference's float64 mean is rounded to half a step of the data's magnitude, and
    # rstd (up to 1 / sqrt(eps) = 316) magnifies that in its output: (53, 2) at offset 100,
    # channels spread 0.005, was off by 1.8e-12 where the kernels' result was exact.
    reference_error = float(np.spacing(np.abs(x.astype(np.float64)).max())) * float(
        np.max(want[2]))
    loose = {key: t._replace(atol=t.atol + reference_error) for key, t in tol.items()}
    for g, w in zip(got, want):
        assert_close(g, w, loose, dtype=dtype if g is got[0] else None)


@given(sa=shapes_and_axes(), dtype=dtypes, seed=seeds,
       offset=st.sampled_from([0.0, 10.0, -1e3, 1e4]),
       scale=st.sampled_from([1e-2, 1.0, 1e2]))
def test_layer_norm_groups_have_zero_mean_and_unit_variance(isa, sa, dtype, seed, offset,
                                                            scale):
    shape, axes = sa
    eps = 1e-5
    x = _data(seed, shape, dtype, offset, scale)
    y = _groups_view(fastnorm.layer_norm(x, axis=axes), axes)
    xv = _groups_view(x, axes)
    var_x = xv.var(axis=1)
    # Each output is within ~1e-6 (float32) of exact, so are the mean and the variance.
    # float64 inputs carry 1e-16 of the offset, i.e. 1e-16 * offset / scale of the output.
    slack = 4e-6 if dtype == F32 else 1e-13 * max(1.0, abs(offset) / scale)
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=slack)
    np.testing.assert_allclose(y.var(axis=1), var_x / (var_x + eps), atol=slack, rtol=slack)


@given(sa=shapes_and_axes(), dtype=dtypes, seed=seeds,
       c=st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False))
def test_rms_norm_is_scale_invariant(isa, tol, sa, dtype, seed, c):
    shape, axes = sa
    x = _data(seed, shape, dtype, 0.0, 1.0)
    scaled = (x.astype(np.float64) * c).astype(dtype)  # one rounding per element
    y = fastnorm.rms_norm(x, axis=axes, eps=0.0)
    y_scaled = fastnorm.rms_norm(scaled, axis=axes, eps=0.0)
    # eps=0 makes the scale cancel exactly in real arithmetic; what remains is the one
    # rounding of c*x plus each call's own rounding, inside the tolerance table.
    t = tol[dtype]
    np.testing.assert_allclose(y_scaled, y, rtol=2 * t.rtol, atol=2 * t.atol)


@given(seed=seeds, dtype=dtypes, n=st.integers(3, 400), cols=st.integers(1, 5),
       cuts=st.lists(st.floats(0, 1), min_size=2, max_size=2),
       offset=st.sampled_from([0.0, 1e3, -1e5]))
def test_merge_moments_is_associative(isa, seed, dtype, n, cols, cuts, offset):
    x = _data(seed, (n, cols), dtype, offset, 1.0)
    i = 1 + int(cuts[0] * (n - 3))            # 1 <= i <= n - 2
    j = i + 1 + int(cuts[1] * (n - 2 - i))    # i < j <= n - 1: three non-empty parts
    a, b, c = (fastnorm.moments(part, axis=0) for part in (x[:i], x[i:j], x[j:]))
    left = fastnorm.merge_moments(fastnorm.merge_moments(a, b), c)
    right = fastnorm.merge_moments(a, fastnorm.merge_moments(b, c))
    whole = fastnorm.moments(x, axis=0)
    spread = float(np.max(x.astype(np.float64).std(axis=0)))
    # float64 merges of the same partials: associative to float64 rounding.  The means
    # carry 1e-16 of the offset, and Chan's delta**2 term turns that into an error of
    # ~n * spread * 1e-16 * |offset| in m2.
    unit = 1e-14 * (abs(offset) + spread)
    np.testing.assert_array_equal(left[0], right[0])
    np.testing.assert_array_equal(np.broadcast_to(left[0], (cols,)), n)
    np.testing.assert_allclose(left[1], right[1], rtol=1e-13, atol=unit)
    np.testing.assert_allclose(left[2], right[2], rtol=1e-12, atol=unit * n * spread)
    # And both equal the one-shot partials to the precision of the input dtype's lanes.
    rtol = 2e-6 if dtype == F32 else 1e-12
    np.testing.assert_allclose(left[1], whole[1], rtol=rtol, atol=rtol * spread + unit)
    np.testing.assert_allclose(left[2], whole[2], rtol=rtol,
                               atol=rtol * n * spread ** 2 + unit * n * spread)


@given(sa=shapes_and_axes(), dtype=dtypes, seed=seeds, where=st.floats(0, 1),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       op=st.sampled_from(["layer_norm", "rms_norm"]))
def test_nan_or_inf_isolates_to_its_group(isa, sa, dtype, seed, where, bad, op):
    shape, axes = sa
    x = _data(seed, shape, dtype, 0.5, 1.0)
    clean = row_norm(op, x, axis=axes)
    flat = min(int(where * x.size), x.size - 1)
    x.reshape(-1)[flat] = bad
    y = row_norm(op, x, axis=axes)
    poisoned = np.zeros(x.shape, bool)
    idx = list(np.unravel_index(flat, x.shape))
    for a in axes:
        idx[a] = slice(None)
    poisoned[tuple(idx)] = True
    assert np.isnan(y[poisoned]).all()
    np.testing.assert_array_equal(y[~poisoned], clean[~poisoned])


@given(seed=seeds, dtype=dtypes, n=st.integers(2, 6), c=st.integers(1, 5),
       spatial=st.integers(1, 20), channels_last=st.booleans(), where=st.floats(0, 1))
def test_batch_norm_nan_isolates_to_its_channel(isa, seed, dtype, n, c, spatial,
                                                channels_last, where):
    shape = (n, spatial, c) if channels_last else (n, c, spatial)
    axis = -1 if channels_last else 1
    x = _data(seed, shape, dtype, 1.0, 1.0)
    clean = fastnorm.batch_norm(x, training=True, axis=axis)
    flat = min(int(where * x.size), x.size - 1)
    x.reshape(-1)[flat] = np.nan
    channel = np.unravel_index(flat, shape)[axis]
    y = fastnorm.batch_norm(x, training=True, axis=axis)
    y_c, clean_c = np.moveaxis(y, axis, 0), np.moveaxis(clean, axis, 0)
    assert np.isnan(y_c[channel]).all()
    others = [k for k in range(c) if k != channel]
    np.testing.assert_array_equal(y_c[others], clean_c[others])
