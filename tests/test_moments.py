"""moments / merge_moments: Welford partials against NumPy, and Chan's merge."""
import itertools

import numpy as np
import pytest

import fastnorm
from fn_testutil import BF16, F16, F32, F64, as_layout, random_data

AXIS_CASES = [
    ((1000,), None), ((1000,), 0), ((7, 300), None), ((7, 300), 0), ((7, 300), 1),
    ((7, 300), -1), ((6, 5, 40), (0, 2)), ((6, 5, 40), (0, 1)), ((6, 5, 40), (1, 2)),
    ((4, 3, 5, 6), (0, 2, 3)), ((4, 5, 6, 3), (0, 1, 2)), ((4, 3, 5, 6), 1),
    ((2, 3, 4, 5, 6), (0, 3)), ((1, 1), None), ((5, 1), 0),
    # short rows read per channel in 16 KB spans: one span, and several with a partial
    # last one (float32: 64 rows of 256 bytes per span; float64: 32)
    ((40, 2, 200), (0, 2)), ((70, 3, 64), (0, 2)),
]


def _np_moments(x, axis):
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=axis)
    m2 = ((x64 - x64.mean(axis=axis, keepdims=True)) ** 2).sum(axis=axis)
    count = x64.size // max(mean.size, 1) if np.ndim(mean) else x64.size
    return count, mean, m2


def _scale(x, axis):
    """Largest standard deviation among the groups: the unit of the absolute tolerances."""
    x64 = np.asarray(x, dtype=np.float64)
    return float(np.max(x64.std(axis=axis))) if x64.size else 1.0


def _check_partials(got, want, rtol, scale, err_msg=""):
    count, mean, m2 = got
    want_count, want_mean, want_m2 = want
    assert np.asarray(count).dtype == np.int64, f"count dtype {np.asarray(count).dtype}"
    assert np.asarray(mean).dtype == F64 and np.asarray(m2).dtype == F64
    assert np.shape(mean) == np.shape(want_mean) == np.shape(m2)
    assert np.all(np.broadcast_to(count, np.shape(mean)) == want_count), err_msg
    np.testing.assert_allclose(mean, want_mean, rtol=rtol, atol=rtol * scale, err_msg=err_msg)
    m2_scale = float(np.max(want_count)) * scale * scale
    np.testing.assert_allclose(m2, want_m2, rtol=rtol, atol=rtol * m2_scale, err_msg=err_msg)


# Partials of float32/half data come from float32 lanes merged in float64: a few float32
# ulps relative to the data's spread.  float64 data: float64 lanes.
RTOL = {F32: 2e-6, F16: 2e-6, BF16: 2e-6, F64: 1e-12}


@pytest.mark.parametrize("shape, axis", AXIS_CASES)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_moments_match_numpy(shape, axis, dtype, isa, rng):
    x = random_data(rng, shape, dtype, offset=3.0, scale=2.0)
    got = fastnorm.moments(x, axis=axis)
    _check_partials(got, _np_moments(x, axis), RTOL[dtype], _scale(x, axis))


def _drifting(rng, shape, drift):
    """float32 (N, C, HW) data whose values move across the samples: sorted, or each
    sample's mean 100 above the one before."""
    n, c, hw = shape
    if drift == "sorted":
        x = np.sort(rng.standard_normal(n * c * hw) * 10 + 50).reshape(shape)
    else:
        x = rng.standard_normal(shape) + 100.0 * np.arange(n)[:, None, None]
    return x.astype(F32)


@pytest.mark.parametrize("shape", [(32, 8, 16), (64, 4, 17), (8, 16, 49), (8, 16, 196), (8, 8, 400)])
@pytest.mark.parametrize("drift", ["sample means 100 apart", "sorted"])
def test_short_row_moments_follow_data_drifting_across_samples(shape, drift, isa, rng):
    """A channel's short rows are summed about one center that moves with the data: where
    every sample shifts the data, a center left behind would cost float32 digits (3-5e-7
    with the center moved every 1024 values instead of every 256).  The scalar family's
    one lane sums rows of 65 values or more one at a time, merged in float64: summed
    across the rows they took 0.6-5.3e-7 over 30 seeds at (8, 16, 196) and (8, 8, 400),
    under 3e-8 apart."""
    rtol = 5e-8 if isa == "scalar" and shape[2] >= 65 else 3e-7
    x = _drifting(rng, shape, drift)
    _, _, m2 = fastnorm.moments(x, axis=(0, 2))
    _, _, want_m2 = _np_moments(x, (0, 2))
    np.testing.assert_allclose(m2, want_m2, rtol=rtol)


@pytest.mark.parametrize("drift", ["sample means 100 apart", "sorted"])
def test_few_long_rows_move_the_center_to_the_latest_row(drift, isa, rng):
    """Four samples of 256 values a channel, twelve draws: after each pair of rows the
    center moves to the later row's running mean.  Moved to the earlier row's, it lagged
    a row behind the data: worst m2 error over 40 seeds 3.1e-7 (AVX2) and 2.7e-7
    (AVX-512), against 1.3e-7 and 1.1e-7 now."""
    worst = 0.0
    for _ in range(12):
        x = _drifting(rng, (4, 64, 256), drift)
        _, _, m2 = fastnorm.moments(x, axis=(0, 2))
        _, _, want_m2 = _np_moments(x, (0, 2))
        worst = max(worst, float(np.max(np.abs(m2 - want_m2) / want_m2)))
    assert worst < 2e-7


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_moments_of_half_data_are_float64(dtype, isa, rng):
    x = random_data(rng, (9, 70), dtype)
    got = fastnorm.moments(x, axis=0)
    _check_partials(got, _np_moments(x, 0), RTOL[dtype], _scale(x, 0))


# Channels-last statistics read four strips of a vector's columns in one pass down the
# rows, then the last two or three full strips in one more, then a last full strip and a
# narrower one each alone; float32 and float64 rows of 64 columns or more go row by row
# instead, up to 512 columns at a time (kernel_columns.h, kb_col_rows), the rest as strips.
# Widths of 1 to 7 strips of 16 (AVX-512 float32 and half) or 8 (AVX2; AVX-512 float64)
# columns, and odd ones, past one and two groups of 512; row counts odd, and past the 64
# rows of a float32 block.
@pytest.mark.parametrize("cols", [8, 16, 24, 32, 40, 48, 56, 80, 96, 112, 120, 600, 1100])
@pytest.mark.parametrize("rows", [37, 301])
@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16])
def test_moments_over_column_strips(cols, rows, dtype, isa, rng):
    x = random_data(rng, (rows, cols), dtype, offset=3.0, scale=2.0)
    got = fastnorm.moments(x, axis=0)
    _check_partials(got, _np_moments(x, 0), RTOL[dtype], _scale(x, 0))


@pytest.mark.parametrize("offset", [1e2, 1e4])
def test_moments_of_shifted_float32_data(offset, isa, rng):
    x = random_data(rng, (64, 8, 1024), np.float32, offset=offset)
    count, mean, m2 = fastnorm.moments(x, axis=(0, 2))
    _, want_mean, want_m2 = _np_moments(x, (0, 2))
    # The variance must not lose the low bits to the offset.
    np.testing.assert_allclose(m2 / count, want_m2 / count, rtol=1e-6)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-7)


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative"])
def test_moments_any_layout(layout, isa, rng):
    x = random_data(rng, (5, 6, 7), np.float32)
    want = fastnorm.moments(x, axis=(0, 2))
    got = fastnorm.moments(as_layout(x, layout), axis=(0, 2))
    _check_partials(got, want, RTOL[F32], _scale(x, (0, 2)))


def _in_memory_order(x, order):
    """The values of x in an array whose axes lie in memory in `order` (outermost first)."""
    return np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))), ids=str)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_moments_of_any_memory_order(order, dtype, isa, rng):
    # every set of axes of every transpose of a C-contiguous array, kept axes coming back
    # in x's order (reduced in memory order where they are fastest, else in C order)
    x = _in_memory_order(random_data(rng, (3, 4, 5, 6), dtype, offset=3.0), order)
    for r in range(5):
        for axis in itertools.combinations(range(4), r):
            _check_partials(fastnorm.moments(x, axis=axis), _np_moments(x, axis), RTOL[dtype],
                            _scale(x, axis), err_msg=f"axis {axis}")


@pytest.mark.parametrize("order", [(3, 2, 1, 0), (1, 0, 2, 3), (0, 3, 1, 2)], ids=str)
def test_moments_of_other_transposes_give_the_c_order_bits(order, isa, rng):
    # the kept axis not fastest in memory (Fortran order among them): a C-order copy
    x = random_data(rng, (4, 6, 5, 7), np.float32, offset=3.0)
    got = fastnorm.moments(_in_memory_order(x, order), axis=(0, 2, 3))
    for g, w in zip(got, fastnorm.moments(x, axis=(0, 2, 3))):
        np.testing.assert_array_equal(g, w)


def test_channels_last_moments_read_x_where_it_is(rng, monkeypatch):
    # (N, C, H, W) stored as NHWC goes to the kernel as that memory, not as a C-order copy
    x = _in_memory_order(random_data(rng, (2, 8, 5, 6), F32), (0, 2, 3, 1))
    read = []
    kernel = fastnorm._core.moments
    monkeypatch.setattr(fastnorm._core, "moments",
                        lambda *a: read.append(np.shares_memory(a[4], x)) or kernel(*a))
    got = fastnorm.moments(x, axis=(0, 2, 3))
    assert read == [True]
    _check_partials(got, _np_moments(x, (0, 2, 3)), RTOL[F32], _scale(x, (0, 2, 3)))


@pytest.mark.parametrize("shape, axis, split_axis", [
    ((1000,), None, 0), ((10, 64), 0, 0), ((6, 5, 40), (0, 2), 2), ((6, 5, 40), (0, 2), 0),
    ((4, 3, 5, 6), (0, 2, 3), 3),
])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_merging_two_halves_gives_the_whole(shape, axis, split_axis, dtype, isa, rng):
    x = random_data(rng, shape, dtype, offset=-5.0, scale=3.0)
    k = shape[split_axis] // 3 + 1
    first, second = np.split(x, [k], axis=split_axis)
    merged = fastnorm.merge_moments(fastnorm.moments(first, axis=axis),
                                    fastnorm.moments(second, axis=axis))
    whole = fastnorm.moments(x, axis=axis)
    _check_partials(merged, whole, RTOL[dtype], _scale(x, axis))
    _check_partials(merged, _np_moments(x, axis), RTOL[dtype], _scale(x, axis))


def test_merge_of_float64_partials_is_exact_math(rng):
    # merge_moments on hand-made float64 partials versus the closed form.
    a = (np.int64(3), np.float64(1.0), np.float64(2.0))
    b = (np.int64(5), np.float64(3.0), np.float64(4.0))
    count, mean, m2 = fastnorm.merge_moments(a, b)
    assert int(count) == 8 and np.asarray(count).dtype == np.int64
    np.testing.assert_allclose(mean, (3 * 1.0 + 5 * 3.0) / 8, rtol=1e-15)
    np.testing.assert_allclose(m2, 2.0 + 4.0 + (3.0 - 1.0) ** 2 * 3 * 5 / 8, rtol=1e-15)


def test_merge_many_partials_in_a_tree(isa, rng):
    x = random_data(rng, (64, 33), np.float32, offset=1e3)
    parts = [fastnorm.moments(chunk, axis=0) for chunk in np.array_split(x, 16, axis=0)]
    while len(parts) > 1:
        parts = [fastnorm.merge_moments(parts[i], parts[i + 1]) if i + 1 < len(parts)
                 else parts[i] for i in range(0, len(parts), 2)]
    _check_partials(parts[0], _np_moments(x, 0), RTOL[F32], _scale(x, 0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis, at", [((8, 4, 16), (0, 2), (3, 2, 5)),   # rows
                                             ((64, 4), 0, (5, 2)),               # columns
                                             ((2,), None, (1,))])                # [1, inf]
def test_moments_nan_or_inf_makes_mean_and_m2_nan_in_its_channel_only(bad, dtype, shape, axis,
                                                                      at, isa, rng):
    # docs/api.md: a NaN or inf among the reduced values makes that mean and m2 NaN (an inf
    # once gave mean inf), as fastnorm.reference.moments gives
    x = random_data(rng, shape, dtype)
    x[at] = bad
    _, mean, m2 = fastnorm.moments(x, axis=axis)
    _, ref_mean, ref_m2 = fastnorm.reference.moments(x, axis=axis)
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(ref_mean))
    np.testing.assert_array_equal(np.isnan(m2), np.isnan(ref_m2))
    if mean.ndim:
        bad_channel = at[-1] if axis == 0 else at[1]
        assert np.isnan(mean[bad_channel]) and np.isnan(m2[bad_channel])
        others = np.arange(mean.size) != bad_channel
        assert np.isfinite(mean[others]).all() and np.isfinite(m2[others]).all()
    else:
        assert np.isnan(mean) and np.isnan(m2)


def test_moments_of_a_list(isa):
    count, mean, m2 = fastnorm.moments([1.0, 2.0, 3.0, 4.0])
    assert int(count) == 4
    np.testing.assert_allclose(mean, 2.5)
    np.testing.assert_allclose(m2, 5.0)


def test_moments_rejects_integer_data(isa):
    with pytest.raises(TypeError, match="int"):
        fastnorm.moments(np.arange(10))
