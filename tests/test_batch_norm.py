"""batch_norm: channel axis anywhere, eval and training, running statistics, accuracy."""
import numpy as np
import pytest

import fastnorm
from fn_testutil import (BF16, F16, F32, F64, FULL_DTYPES, TEST_SEED, assert_close,
                         assert_same_bits, at_line_offset, compute_dtype, import_torch,
                         random_data, ref_batch_norm, sentinel)

# (shape, channel axis): channels-first, channels-last and a middle axis, 2-D to 5-D.
CHANNEL_CASES = [
    ((16, 5), 1), ((16, 5), -1), ((5, 16), 0),
    ((5, 3), -1), ((3, 2, 3), -1),  # fewer samples than a super-row: only leftover rows
    ((6, 5, 7), 1), ((6, 7, 5), -1), ((5, 6, 7), 0),
    ((4, 5, 6, 7), 1), ((4, 6, 7, 5), -1), ((4, 6, 5, 7), 2),
    ((2, 5, 3, 4, 6), 1), ((2, 3, 4, 6, 5), -1), ((2, 3, 4, 5, 6), 3),
    ((3, 17, 9, 9), 1), ((3, 9, 9, 17), -1), ((2, 70, 33), 1), ((2, 33, 70), -1),
    ((1, 6, 1100), 1), ((1, 5, 9, 9), 1),  # training with one sample: each channel's row
    ((4, 6, 1100), 1),                     # normalized right after its statistics; and not
    ((2, 6, 7, 7), 1), ((1, 8, 4, 5), 1),  # rows of 16-63 values: row statistics, and the
    ((3, 7, 4, 8), 1),                     # affine by rows from 48 values, by columns below
    ((1, 7, 7, 1001), -1), ((2, 7, 7, 250), -1),  # channels last in single rows (few would
                                                  # make super-rows)
]


def _params(rng, c, dtype):
    return (random_data(rng, c, dtype, offset=1.0, scale=0.3), random_data(rng, c, dtype),
            random_data(rng, c, np.float32, offset=0.5),
            np.abs(random_data(rng, c, np.float32, offset=2.0)))


@pytest.mark.parametrize("shape, axis", CHANNEL_CASES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_eval_uses_running_statistics(shape, axis, dtype, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=0.5)
    c = shape[axis]
    w, b, rm, rv = _params(rng, c, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = fastnorm.batch_norm(x, rm, rv, w, b, axis=axis, eps=1e-3,
                                        return_stats=True)
    (want, want_mean, want_rstd), _, _ = ref_batch_norm(x, rm, rv, w, b, axis=axis, eps=1e-3,
                                                        return_stats=True)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y, want, tol)
    np.testing.assert_array_equal(rm, rm0)  # eval never writes running statistics
    np.testing.assert_array_equal(rv, rv0)
    assert mean.shape == rstd.shape == (c,)
    assert mean.dtype == rstd.dtype == compute_dtype(dtype)
    assert_close(mean, want_mean, tol)
    assert_close(rstd, want_rstd, tol)


@pytest.mark.parametrize("shape, axis", CHANNEL_CASES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_training_uses_batch_statistics(shape, axis, dtype, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=-2.0, scale=3.0)
    c = shape[axis]
    w, b, _, _ = _params(rng, c, dtype)
    y, mean, rstd = fastnorm.batch_norm(x, None, None, w, b, training=True, axis=axis,
                                        return_stats=True)
    (want, want_mean, want_rstd), _, _ = ref_batch_norm(x, None, None, w, b, training=True,
                                                        axis=axis, return_stats=True)
    assert_close(y, want, tol)
    assert mean.shape == rstd.shape == (c,)
    assert mean.dtype == rstd.dtype == compute_dtype(dtype)
    assert_close(mean, want_mean, tol)
    assert_close(rstd, want_rstd, tol)
    # Independent of the reference: population statistics over every axis but `axis`.
    x64 = np.moveaxis(x.astype(np.float64), axis, 0).reshape(c, -1)
    assert_close(mean, x64.mean(1), tol, dtype=dtype)
    assert_close(rstd, 1 / np.sqrt(x64.var(1) + 1e-5), tol, dtype=dtype)


@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 0.5, 0.01])
@pytest.mark.parametrize("stats_dtype", FULL_DTYPES)
@pytest.mark.parametrize("shape, axis", [((8, 6, 5, 5), 1), ((8, 5, 5, 6), -1), ((4, 6), 1)])
def test_training_updates_running_statistics_over_steps(momentum, stats_dtype, shape, axis,
                                                        isa, rng):
    c = shape[axis]
    rm, rv = np.zeros(c, stats_dtype), np.ones(c, stats_dtype)
    ref_rm, ref_rv = np.zeros(c), np.ones(c)
    largest = 0.0
    for step in range(4):
        x = random_data(rng, shape, np.float32, offset=step - 1.5, scale=1 + step)
        largest = max(largest, float(np.abs(x).max()))
        y = fastnorm.batch_norm(x, rm, rv, training=True, momentum=momentum, axis=axis)
        (want, _, _), ref_rm, ref_rv = ref_batch_norm(x, ref_rm, ref_rv, training=True,
                                                      momentum=momentum, axis=axis,
                                                      return_stats=True)
        assert rm.dtype == rv.dtype == stats_dtype
        # float32 data: statistics carry float32-lane precision (a few float32 ulps of the
        # largest value seen) whatever the running statistics' dtype, plus one rounding
        # when stored as float32.
        rtol, atol = 1e-6, 4 * float(np.finfo(np.float32).eps) * largest
        np.testing.assert_allclose(rm, ref_rm, rtol=rtol, atol=atol, err_msg=f"step {step}")
        np.testing.assert_allclose(rv, ref_rv, rtol=rtol, err_msg=f"step {step}")
        # Independent of the reference: PyTorch's convention with unbiased variance.
        xc = np.moveaxis(x.astype(np.float64), axis, 0).reshape(c, -1)
        n = xc.shape[1]
        if momentum == 1.0:
            np.testing.assert_allclose(rm, xc.mean(1), rtol=rtol, atol=atol)
            np.testing.assert_allclose(rv, xc.var(1) * n / (n - 1), rtol=rtol)
        assert np.isfinite(y).all()


@pytest.mark.parametrize("mean_dtype, var_dtype", [(F32, F64), (F64, F32)])
@pytest.mark.parametrize("shape, axis", [((8, 6, 5, 5), 1), ((8, 5, 5, 6), -1)])
def test_training_updates_running_statistics_of_two_dtypes(mean_dtype, var_dtype, shape, axis,
                                                           isa, rng):
    # API.md: each running statistic is a float32 or float64 array; a pair of one of each
    # is valid, and each is updated as it would be beside one of its own dtype.
    c = shape[axis]
    x = random_data(rng, shape, np.float32, offset=1.0)
    start_mean, start_var = rng.standard_normal(c), 1 + rng.random(c)
    rm, rv = start_mean.astype(mean_dtype), start_var.astype(var_dtype)
    out = np.empty_like(x)
    y = fastnorm.batch_norm(x, rm, rv, training=True, momentum=0.3, axis=axis, out=out)
    assert y is out and rm.dtype == mean_dtype and rv.dtype == var_dtype
    for dtype, got, name in [(mean_dtype, rm, "mean"), (var_dtype, rv, "var")]:
        same_m, same_v = start_mean.astype(dtype), start_var.astype(dtype)
        same_y = fastnorm.batch_norm(x, same_m, same_v, training=True, momentum=0.3, axis=axis)
        np.testing.assert_array_equal(got, same_m if name == "mean" else same_v, err_msg=name)
        np.testing.assert_array_equal(y, same_y)
    _, ref_m, ref_v = ref_batch_norm(x, start_mean, start_var, training=True, momentum=0.3,
                                     axis=axis)
    atol = 4 * float(np.finfo(np.float32).eps) * float(np.abs(x).max())
    np.testing.assert_allclose(rm, ref_m, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(rv, ref_v, rtol=1e-6)


def test_training_momentum_zero_leaves_running_statistics(isa, rng):
    x = random_data(rng, (8, 3, 4), np.float64)
    rm, rv = np.full(3, 0.25), np.full(3, 4.0)
    fastnorm.batch_norm(x, rm, rv, training=True, momentum=0.0)
    np.testing.assert_array_equal(rm, 0.25)
    np.testing.assert_array_equal(rv, 4.0)


@pytest.mark.parametrize("shape, axis", [((16, 8, 12, 12), 1), ((16, 12, 12, 8), -1),
                                         ((300, 3), -1)])
def test_eval_accuracy_with_large_running_mean(shape, axis, isa, rng, tol):
    # Folding the mean into the shift (x * scale + (bias - mean * scale)) would lose the low
    # bits of 100 + N(0, 1): fastnorm_affine folds only means within one spread of zero.
    x = random_data(rng, shape, np.float32, offset=100.0)
    reduce = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
    rm = x.astype(np.float64).mean(reduce).astype(np.float32)
    rv = x.astype(np.float64).var(reduce).astype(np.float32)
    y = fastnorm.batch_norm(x, rm, rv, axis=axis)
    (want, *_), _, _ = ref_batch_norm(x, rm, rv, axis=axis, return_stats=True)
    assert_close(y, want, tol)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_accuracy_with_the_largest_folded_mean(sign, dtype, isa, rng, tol):
    # Channels-last eval folds a channel's mean into its shift where |mean| <= sqrt(var + eps)
    # (every channel here, just inside that bound); the extra rounding is then at most
    # about one ulp of |weight|.
    c = 40
    rv = np.abs(random_data(rng, c, dtype, offset=2.0)) + 0.1
    rm = (sign * np.sqrt(rv.astype(np.float64) + 1e-5) * 0.9999).astype(dtype)
    w, b = random_data(rng, c, dtype, offset=1.0), random_data(rng, c, dtype)
    x = (random_data(rng, (257, c), dtype) * np.sqrt(rv) + rm).astype(dtype)
    y = fastnorm.batch_norm(x, rm, rv, w, b, axis=-1)
    (want, *_), _, _ = ref_batch_norm(x, rm, rv, w, b, axis=-1, return_stats=True)
    assert_close(y, want, tol)


def test_zero_size_batch_eval_is_zero_size(isa):
    for shape, axis in (((0, 4), 1), ((0, 4, 3, 3), 1), ((0, 3, 3, 4), -1)):
        x = np.zeros(shape, np.float32)
        y = fastnorm.batch_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32), axis=axis)
        assert y.shape == shape and y.dtype == F32


@pytest.mark.parametrize("shape, axis", [((1, 4), 1), ((1, 4, 1, 1), 1), ((1, 1, 4), -1),
                                         ((0, 4), 1), ((0, 4, 5, 5), 1), ((4, 1), 0)])
def test_training_with_fewer_than_two_values_per_channel_raises(shape, axis, isa):
    x = np.ones(shape, np.float32)
    c = shape[axis]
    rm, rv = np.full(c, 0.5, np.float32), np.full(c, 2.0, np.float32)
    out = sentinel(shape, np.float32)
    with pytest.raises(ValueError):
        fastnorm.batch_norm(x, rm, rv, training=True, axis=axis, out=out)
    np.testing.assert_array_equal(rm, 0.5)
    np.testing.assert_array_equal(rv, 2.0)
    np.testing.assert_array_equal(out, sentinel(shape, np.float32))
    with pytest.raises(ValueError):
        fastnorm.batch_norm(x, training=True, axis=axis)


def _bad_running_stats(c):
    good = lambda: np.zeros(c, np.float32)  # noqa: E731
    readonly = good()
    readonly.flags.writeable = False
    shared, buffer = good(), np.ones(c + 1, np.float32)
    return {
        "same_array": (shared, shared),
        "overlapping": (buffer[:c], buffer[1:]),
        "int_mean": (np.zeros(c, np.int64), good()),
        "int_var": (good(), np.ones(c, np.int32)),
        "float16_var": (good(), np.ones(c, np.float16)),
        # both of one unsupported dtype: the one-step C path once read them as float64
        # (past their end: a crash for large C)
        "float16_both": (np.zeros(c, F16), np.ones(c, F16)),
        "bfloat16_both": (np.zeros(c, BF16), np.ones(c, BF16)),
        "complex_mean": (np.zeros(c, np.complex64), good()),
        "short_mean": (np.zeros(c - 1, np.float32), good()),
        "long_var": (good(), np.ones(c + 1, np.float32)),
        "2d_mean": (np.zeros((1, c), np.float32), good()),
        "readonly_var": (good(), readonly),
        "readonly_mean": (readonly, good()),
        "only_mean": (good(), None),
        "only_var": (None, good()),
        "list_mean": ([0.0] * c, good()),
    }


# Eval only reads the running statistics, so read-only arrays (and a list) are fine there.
_WRITE_ONLY_PROBLEMS = {"list_mean", "readonly_var", "readonly_mean", "same_array", "overlapping"}
_BAD_STATS_CASES = ([(case, True) for case in sorted(_bad_running_stats(4))]
                    + [(case, False) for case in sorted(_bad_running_stats(4))
                       if case not in _WRITE_ONLY_PROBLEMS])


@pytest.mark.parametrize("case, training", _BAD_STATS_CASES)
def test_bad_running_statistics_raise_value_error_and_write_nothing(case, training, isa, rng):
    c = 4
    rm, rv = _bad_running_stats(c)[case]
    rm_before = None if rm is None else np.array(rm, copy=True)
    rv_before = None if rv is None else np.array(rv, copy=True)
    x = random_data(rng, (6, c, 3), np.float32)
    x_before = x.copy()
    out = sentinel(x.shape, x.dtype)
    with pytest.raises(ValueError, match="running_mean|running_var"):  # names the culprit
        fastnorm.batch_norm(x, rm, rv, training=training, out=out)
    np.testing.assert_array_equal(out, sentinel(x.shape, x.dtype))
    np.testing.assert_array_equal(x, x_before)
    for arr, before in ((rm, rm_before), (rv, rv_before)):
        if isinstance(arr, np.ndarray):
            np.testing.assert_array_equal(arr, before)


@pytest.mark.parametrize("stats_dtype", [F32, F64])
@pytest.mark.parametrize("view", ["strided", "reversed", "misaligned"])
def test_eval_accepts_running_statistics_of_any_layout(view, stats_dtype, isa, rng):
    c = 5
    x = random_data(rng, (6, c, 7), np.float32)
    rm = random_data(rng, c, stats_dtype)
    rv = np.abs(random_data(rng, c, stats_dtype, offset=2.0))
    want = fastnorm.batch_norm(x, rm, rv)

    def laid_out(a):
        if view == "strided":
            b = np.zeros(2 * c, a.dtype)
            b[::2] = a
            return b[::2]
        if view == "reversed":
            return a[::-1].copy()[::-1]
        raw = np.zeros(c * a.itemsize + 1, np.uint8)[1:]
        b = raw.view(a.dtype)
        b[...] = a
        return b

    rm_view, rv_view = laid_out(rm), laid_out(rv)
    assert not (rm_view.flags.c_contiguous and rm_view.flags.aligned)
    assert_same_bits(fastnorm.batch_norm(x, rm_view, rv_view), want)


@pytest.mark.parametrize("stats_dtype", [F32, F64])
@pytest.mark.parametrize("training", [False, True])
def test_byte_swapped_running_statistics_act_as_native_ones(training, stats_dtype, isa, rng):
    # a float32 or float64 array in the other byte order is still a float32 or float64
    # array: read in eval, updated in place (in its own byte order) in training
    c = 5
    x = random_data(rng, (6, c, 7), np.float32)
    rm = random_data(rng, c, stats_dtype)
    rv = np.abs(random_data(rng, c, stats_dtype, offset=2.0))
    swapped = np.dtype(stats_dtype).newbyteorder("S")
    rm_s, rv_s = rm.astype(swapped), rv.astype(swapped)
    want = fastnorm.batch_norm(x, rm, rv, training=training)
    assert_same_bits(fastnorm.batch_norm(x, rm_s, rv_s, training=training), want)
    assert rm_s.dtype == swapped and rv_s.dtype == swapped
    np.testing.assert_array_equal(rm_s, rm)
    np.testing.assert_array_equal(rv_s, rv)


def test_eval_accepts_read_only_running_statistics(isa, rng, tol):
    x = random_data(rng, (6, 4, 3), np.float32)
    rm, rv = np.full(4, 0.5, np.float32), np.full(4, 2.0, np.float32)
    rm.flags.writeable = rv.flags.writeable = False
    (want, _, _), _, _ = ref_batch_norm(x, rm, rv, return_stats=True)
    assert_close(fastnorm.batch_norm(x, rm, rv), want, tol, dtype=np.float32)


def test_eval_with_negative_running_var_gives_nan_silently(isa, rng):
    # eval is a per-element affine map: IEEE arithmetic decides, without warnings (the
    # suite turns warnings into errors), as in PyTorch
    x = random_data(rng, (5, 3, 4), np.float32)
    rv = np.array([1.0, -1.0, 2.0], np.float32)
    y = fastnorm.batch_norm(x, np.zeros(3, np.float32), rv)
    assert np.isnan(y[:, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all()


def test_eval_without_running_statistics_raises(isa):
    with pytest.raises(ValueError):
        fastnorm.batch_norm(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError):
        fastnorm.batch_norm(np.ones((4, 3), np.float32), np.zeros(3, np.float32))


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_momentum_raises(momentum, isa):
    x = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError):
        fastnorm.batch_norm(x, rm, rv, training=True, momentum=momentum)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_one_dimensional_input_raises(isa):
    with pytest.raises(ValueError):
        fastnorm.batch_norm(np.ones(8, np.float32), np.zeros(8, np.float32),
                            np.ones(8, np.float32))


# -------------------------------------------------------- offset-100 accuracy (issue 2) ---

# (8, 256, 14, 14): gathered rows; one sample of 7x7 maps: rows_short_channels (NCHW)
BIG_SHAPES = [(32, 64, 56, 56), (64, 3, 224, 224), (8, 256, 14, 14), (1, 512, 7, 7)]


@pytest.fixture(scope="module", params=BIG_SHAPES, ids=lambda s: "x".join(map(str, s)))
def big_case(request):
    """x = 100 + N(0, 1) in float32 (NCHW) and its float64 reference, built once per shape."""
    rng = np.random.default_rng([TEST_SEED, request.param[1]])
    x = rng.standard_normal(request.param, dtype=np.float32)
    x += np.float32(100.0)
    c = x.shape[1]
    rm, rv = np.zeros(c), np.ones(c)
    (y64, mean, rstd), rm, rv = ref_batch_norm(x, rm, rv, training=True, return_stats=True)
    return x, y64, mean, rstd, rm, rv


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_training_accuracy_offset_100(big_case, layout, isa, accuracy_log):
    x, y64, ref_mean, ref_rstd, ref_rm, ref_rv = big_case
    c = x.shape[1]
    rm, rv = np.zeros(c, np.float64), np.ones(c, np.float64)
    if layout == "NCHW":
        y, mean, rstd = fastnorm.batch_norm(x, rm, rv, training=True, axis=1,
                                            return_stats=True)
        err = float(np.max(np.abs(y - y64)))
    else:
        x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        y, mean, rstd = fastnorm.batch_norm(x_last, rm, rv, training=True, axis=-1,
                                            return_stats=True)
        err = max(float(np.max(np.abs(y[i] - y64[i].transpose(1, 2, 0))))
                  for i in range(x.shape[0]))
    accuracy_log(f"batch_norm train f32 {layout} {x.shape} offset=100 max_abs_err", err)
    assert err <= 2e-6, f"batch_norm {layout} {x.shape}: max abs error {err:.3e}"
    np.testing.assert_allclose(mean, ref_mean, rtol=2.0 ** -23)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-6)
    np.testing.assert_allclose(rm, ref_rm, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rv, ref_rv, rtol=1e-6)


# ------------------------------------------------ one sample of small maps (NCHW) ---

# Channel rows of up to the family's rows_short_max values: rows_short_channels, each
# thread's share of the channels in one call.  700 and 5500 channels (past 32768 values,
# where a second thread joins) split mid-block between two threads.  BatchNorm takes
# rows_short_channels up to rows_short_max (AVX2 200 float32 values, float64 80; AVX-512 256
# and 128) and InstanceNorm up to rows_short_channels_max (AVX2 256, float64 128): 169
# values (AVX2 float32: the kernel's second instance), 121 (AVX2 float64 InstanceNorm only)
# and 256 (AVX-512 and AVX2 float32 InstanceNorm).
ONE_SAMPLE_SHAPES = [(1, 700, 7, 7), (1, 5500, 2, 3), (1, 40, 13, 13), (1, 24, 11, 11),
                     (1, 33, 16, 16), (1, 9, 8, 8), (1, 5, 1, 2)]


@pytest.mark.parametrize("shape", ONE_SAMPLE_SHAPES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("params", [True, False])
def test_one_sample_of_small_maps(shape, dtype, params, isa, rng, tol, num_threads):
    x = random_data(rng, shape, dtype, offset=-2.0, scale=3.0)
    c = shape[1]
    w, b, _, _ = _params(rng, c, dtype) if params else (None, None, None, None)
    rm, rv = np.zeros(c), np.ones(c)
    (want, want_mean, want_rstd), want_rm, want_rv = ref_batch_norm(
        x, rm.copy(), rv.copy(), w, b, training=True, return_stats=True)
    results = []
    for threads in (1, 2):
        num_threads(threads)
        rm, rv = np.zeros(c), np.ones(c)
        results.append(fastnorm.batch_norm(x, rm, rv, w, b, training=True,
                                           return_stats=True) + (rm, rv))
    y, mean, rstd, rm, rv = results[0]
    assert_close(y, want, tol)
    assert_close(mean, want_mean, tol, dtype=dtype)
    assert_close(rstd, want_rstd, tol, dtype=dtype)
    stats_tol = 1e-12 if dtype == F64 else 1e-6
    np.testing.assert_allclose(rm, want_rm, rtol=stats_tol, atol=stats_tol)
    np.testing.assert_allclose(rv, want_rv, rtol=stats_tol)
    for i, (one, two) in enumerate(zip(results[0], results[1])):
        assert_same_bits(one, two, err_msg=f"output {i}, 1 against 2 threads")
    in_place = x.copy()
    fastnorm.batch_norm(in_place, None, None, w, b, training=True, out=in_place)
    assert_same_bits(in_place, y)


# One sample of longer maps: each channel's statistics in one loop with the previous
# channel's normalize pass (row_stats_normalize), each thread's share of the channels in
# turn; 6400-value float32 and float64 channels (past FN_BN_AHEAD_MAX_BYTES) take the two
# kernels in turn.  Channel 1 holds an inf (its statistics are taken again exactly, and
# are NaN), channel 2 is zeros (a mean pair of zeros, which the fused loop leaves to the
# two kernels), the others offset data.  In both tunings: the default one hands each
# channel's first center to the loop a call early (api_internal.h, fn_center_handoff).
@pytest.mark.parametrize("shape", [(1, 7, 1100), (1, 5, 30, 37), (1, 4, 80, 80)], ids=str)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_one_sample_channels_equal_each_channel_alone(shape, dtype, isa, tuning, rng,
                                                      num_threads):
    x = random_data(rng, shape, dtype, offset=100.0, scale=3.0)
    flat = x.reshape(shape[0], shape[1], -1)
    flat[0, 1, 17] = np.inf
    flat[0, 2] = 0.0
    w, b, _, _ = _params(rng, shape[1], dtype)
    alone = [fastnorm.batch_norm(np.ascontiguousarray(x[:, c:c + 1]), None, None, w[c:c + 1],
                                 b[c:c + 1], training=True, return_stats=True)
             for c in range(shape[1])]
    want = [np.concatenate([one[i] for one in alone], axis=1 if i == 0 else 0) for i in range(3)]
    for threads in (1, 2):
        num_threads(threads)
        got = fastnorm.batch_norm(x, None, None, w, b, training=True, return_stats=True)
        for i, name in enumerate(["output", "mean", "rstd"]):
            assert_same_bits(got[i], want[i], err_msg=f"{name}, {threads} thread(s)")
    assert np.isnan(want[2][1]) and want[1][2] == 0
    in_place = x.copy()
    fastnorm.batch_norm(in_place, None, None, w, b, training=True, out=in_place)
    assert_same_bits(in_place, want[0])


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_one_sample_of_small_maps_with_nan_and_inf(dtype, isa, rng, tol):
    x = random_data(rng, (1, 6, 7, 7), dtype)
    x[0, 1, 2, 3], x[0, 2, 0, 0] = np.inf, np.nan
    x[0, 3, 1, 1], x[0, 3, 4, 4] = np.inf, -np.inf
    y, mean, rstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    assert np.isnan(y[:, 1:4].astype(np.float32)).all()
    assert np.isnan(rstd[1:4]).all()
    # NaN for a channel holding any NaN or inf, as fastnorm.reference gives (not inf)
    assert np.isnan(mean[1:4]).all()
    good = [0, 4, 5]
    (want, want_mean, _), _, _ = ref_batch_norm(x[:, good], None, None, training=True,
                                                return_stats=True)
    assert_close(y[:, good], want, tol)
    assert_close(mean[good], want_mean, tol, dtype=dtype)
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    _, mean_last, _ = fastnorm.batch_norm(x_last, training=True, axis=-1, return_stats=True)
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(mean_last))
    np.testing.assert_array_equal(np.isinf(mean), np.isinf(mean_last))


@pytest.mark.parametrize("shape", [(1, 7, 7, 1001), (1, 14, 14, 768), (2, 4, 4, 200)])
def test_channels_last_statistics_of_channels_far_apart(shape, isa, rng):
    # each column is centred on a value of its own: channels at +-1e4 with a spread of 1
    # keep float32 precision only about their own values (Sterbenz)
    x = random_data(rng, shape, np.float32)
    x += np.where(np.arange(shape[-1]) % 2, 1e4, -1e4).astype(np.float32)
    _, mean, rstd = fastnorm.batch_norm(x, training=True, axis=-1, return_stats=True)
    x64 = x.astype(np.float64).reshape(-1, shape[-1])
    np.testing.assert_allclose(mean, x64.mean(0), rtol=2.0 ** -23)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x64.var(0) + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("channels", [1001, 1024])
def test_channels_last_single_rows_with_nan_and_inf(channels, isa, rng, tol):
    # each channel one column: the statistics' finish skips the merges (fn_moments_columns)
    x = random_data(rng, (1, 7, 7, channels), np.float32)
    x[0, 1, 2, 1], x[0, 0, 0, 2] = np.inf, np.nan
    x[0, 3, 1, 3], x[0, 4, 4, 3] = np.inf, -np.inf
    y, mean, rstd = fastnorm.batch_norm(x, training=True, axis=-1, return_stats=True)
    assert np.isnan(y[..., 1:4]).all() and np.isnan(rstd[1:4]).all()
    assert np.isnan(mean[1:4]).all()
    good = np.r_[0, 4:channels]
    (want, want_mean, want_rstd), _, _ = ref_batch_norm(x[..., good], None, None, training=True,
                                                        axis=-1, return_stats=True)
    assert_close(y[..., good], want, tol)
    assert_close(mean[good], want_mean, tol)
    assert_close(rstd[good], want_rstd, tol)


# ------------------------------------------------------------------------ PyTorch ---


@pytest.mark.parametrize("shape, axis", [((16, 6), 1), ((8, 6, 10), 1), ((4, 6, 7, 7), 1),
                                         ((4, 7, 7, 6), -1), ((2, 6, 3, 4, 5), 1)])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_agrees_with_torch_training_then_eval(shape, axis, momentum, isa, rng, tol):
    torch = import_torch()
    F = torch.nn.functional
    c = shape[axis]
    w = random_data(rng, c, np.float32, offset=1.0)
    b = random_data(rng, c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    trm, trv = torch.zeros(c), torch.ones(c)
    t = tol[F32]

    def torch_bn(x, training):
        tx = torch.from_numpy(x)
        if axis != 1:
            tx = tx.movedim(axis, 1)
        ty = F.batch_norm(tx, trm, trv, torch.from_numpy(w), torch.from_numpy(b),
                          training=training, momentum=momentum, eps=1e-5)
        return (ty if axis == 1 else ty.movedim(1, axis)).numpy()

    for step in range(3):
        x = random_data(rng, shape, np.float32, offset=step, scale=2.0)
        got = fastnorm.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum,
                                  axis=axis)
        np.testing.assert_allclose(got, torch_bn(x, True), rtol=2 * t.rtol, atol=2 * t.atol)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=2 * t.rtol, atol=2 * t.atol)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=2 * t.rtol, atol=2 * t.atol)
    x = random_data(rng, shape, np.float32, offset=1.0)
    got = fastnorm.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
    np.testing.assert_allclose(got, torch_bn(x, False), rtol=2 * t.rtol, atol=2 * t.atol)


def test_float64_input_with_float32_running_statistics(isa, rng, tol):
    x = random_data(rng, (8, 3, 5), np.float64)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, mean, rstd = fastnorm.batch_norm(x, rm, rv, training=True, return_stats=True)
    assert y.dtype == F64 and mean.dtype == F64 and rstd.dtype == F64
    assert rm.dtype == np.float32
    (want, _, _), ref_rm, ref_rv = ref_batch_norm(x, np.zeros(3), np.ones(3), training=True,
                                                  return_stats=True)
    assert_close(y, want, tol)
    np.testing.assert_allclose(rm, ref_rm, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(rv, ref_rv, rtol=1e-6)


@pytest.mark.parametrize("shape, axis", [((8, 4, 5), 1), ((8, 5, 4), -1)])
def test_eval_is_plain_ieee_affine_for_nan_and_inf(shape, axis, isa, rng):
    x = random_data(rng, shape, np.float32)
    c = shape[axis]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    w = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    clean = fastnorm.batch_norm(x, rm, rv, w, axis=axis)
    xm = np.moveaxis(x, axis, 1)  # a view: writes land in x
    xm[0, 0, 0], xm[1, 1, 1], xm[2, 2, 2] = np.nan, np.inf, -np.inf
    y = fastnorm.batch_norm(x, rm, rv, w, axis=axis)
    ym, cm = np.moveaxis(y, axis, 1), np.moveaxis(clean, axis, 1)
    assert np.isnan(ym[0, 0, 0])
    assert ym[1, 1, 1] == -np.inf  # inf * (negative scale)
    assert ym[2, 2, 2] == -np.inf  # -inf * (positive scale)
    touched = np.zeros(ym.shape, bool)
    touched[0, 0, 0] = touched[1, 1, 1] = touched[2, 2, 2] = True
    np.testing.assert_array_equal(ym[~touched], cm[~touched])  # other elements unaffected


@pytest.mark.parametrize("shared", ["weight", "running_mean"])
def test_eval_out_sharing_memory_with_a_parameter(shared, isa, rng, tol):
    # out's first elements are the parameter's memory: fastnorm_affine folds every channel's
    # parameters before it writes, so out is written directly and must still be right
    x = random_data(rng, (4, 8, 5), np.float64, offset=0.5)
    w, b, rm, rv = (a.astype(np.float64) for a in _params(rng, 8, np.float64))
    want = ref_batch_norm(x, rm, rv, w, b)[0]
    holder = np.empty(x.size, np.float64)
    holder[:8] = w if shared == "weight" else rm
    param = holder[:8]
    out = holder.reshape(x.shape)
    args = (param, rv, w, b) if shared == "running_mean" else (rm, rv, param, b)
    y = fastnorm.batch_norm(x, *args, out=out)
    assert y is out
    assert_close(y, want, tol)


# Channels-last (rows, channels) arrays for the column affine, which starts its pass at
# the output's first cache-line boundary when there are no leftover rows: 65 rows of 256
# channels leave a last work chunk of one super-row (the shortened one), 1600 rows of 3
# channels make super-rows of 48 columns; 1601 rows of 3 leave a leftover row (no shift).
@pytest.mark.parametrize("shape", [(65, 256), (1600, 3), (1601, 3)], ids=str)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=lambda d: d.name)
def test_channels_last_output_at_every_line_offset(shape, training, dtype, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=2.0)
    w, b, rm, rv = _params(rng, shape[-1], np.float32)
    stats = {} if training else dict(running_mean=rm, running_var=rv)
    want = fastnorm.batch_norm(x, weight=w, bias=b, training=training, axis=-1,
                               out=at_line_offset(shape, dtype, 0), **stats)
    reference, _, _ = ref_batch_norm(x, weight=w, bias=b, training=training, axis=-1, **stats)
    assert_close(want, reference, tol, dtype)
    for skip in range(1, 64 // dtype.itemsize):
        out = at_line_offset(shape, dtype, skip)
        got = fastnorm.batch_norm(x, weight=w, bias=b, training=training, axis=-1, out=out,
                                  **stats)
        assert got is out
        assert_same_bits(got, want, err_msg=f"out {skip} elements past a line")
    in_place = at_line_offset(shape, dtype, 4)
    in_place[...] = x
    fastnorm.batch_norm(in_place, weight=w, bias=b, training=training, axis=-1, out=in_place,
                        **stats)
    assert_same_bits(in_place, want, err_msg="in place, 4 elements past a line")
