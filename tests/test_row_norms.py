"""layer_norm and rms_norm: shapes, lengths, normalized_shape, axis=, weight/bias, stats.

Everything here is checked against the float64 reference (fastnorm.reference) computed
from the same input values, once per kernel family (the `isa` fixture).
"""
import numpy as np
import pytest

import fastnorm._core
from fn_testutil import (F32, F64, FULL_DTYPES, HALF_DTYPES, ROW_OPS, STRADDLE_LENGTHS, assert_close,
                         compute_dtype, import_torch, random_data, ref_row_norm,
                         ref_row_norm_axis, row_norm)

pytestmark = pytest.mark.parametrize("op", ROW_OPS)


def _affine(op, rng, shape, dtype, with_weight, with_bias):
    weight = random_data(rng, shape, dtype, offset=1.0, scale=0.5) if with_weight else None
    bias = random_data(rng, shape, dtype) if (with_bias and op == "layer_norm") else None
    return weight, bias


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_every_row_length_straddling_vector_widths(op, dtype, isa, rng, tol):
    for n in STRADDLE_LENGTHS:
        x = random_data(rng, (3, n), dtype, offset=0.5)
        for with_affine in (False, True):
            w, b = _affine(op, rng, (n,), dtype, with_affine, with_affine)
            y = row_norm(op, x, n, w, b)
            assert y.shape == x.shape and y.dtype == x.dtype
            assert_close(y, ref_row_norm(op, x, n, w, b), tol,
                         err_msg=f"{op} row length {n}, affine={with_affine}")


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_one_row_of_2_to_the_20(op, dtype, isa, rng, tol):
    n = 1 << 20
    x = random_data(rng, (1, n), dtype, offset=3.0)
    w, b = _affine(op, rng, (n,), dtype, True, True)
    assert_close(row_norm(op, x, None, w, b), ref_row_norm(op, x, None, w, b), tol)


def _assert_rows_equal_each_alone(op, x, w, b, rows, tol):
    """x's rows normalized in one call: close to the reference, and each of `rows` (with its
    mean and rstd) the same bits as that row normalized alone."""
    y, *stats = row_norm(op, x, None, w, b, return_stats=True)  # (mean,) rstd
    assert_close(y, ref_row_norm(op, x, None, w, b), tol)
    for row in rows:
        alone, *stats_alone = row_norm(op, x[row:row + 1], None, w, b, return_stats=True)
        np.testing.assert_array_equal(y[row:row + 1], alone, err_msg=f"row {row}")
        for stat, stat_alone in zip(stats, stats_alone):
            np.testing.assert_array_equal(stat[row], stat_alone[0], err_msg=f"row {row}")


@pytest.mark.parametrize("dtype", [F32, F64])
def test_long_rows_in_batches_equal_each_row_alone(op, dtype, isa, rng, tol):
    # Rows longer than a segment go through both passes about 1 MB of rows at a time:
    # (11, 40000) is 2 batches in float32 and 4 in float64.  Each row's result is the
    # same, bit for bit, as that row normalized on its own.
    n = 40000
    x = random_data(rng, (11, n), dtype, offset=2.0)
    w, b = _affine(op, rng, (n,), dtype, True, True)
    _assert_rows_equal_each_alone(op, x, w, b, (0, 5, 6, 10), tol)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_rows_with_parameters_past_1mb_in_one_batch_equal_each_row_alone(op, dtype, isa, rng,
                                                                        tol):
    # A weight or bias of 1 MB or more puts up to 256 MB of rows in one batch (with the
    # parameters, at most a quarter of the last-level cache where that leaves room),
    # normalized a segment (16384 values) at a time across the batch's rows: here 3 rows
    # of 262144 values, 16 segments each, in one batch (float64 on a 32 MB L3: a batch of
    # 2 rows, then 1).  Each row's result is the same, bit for bit, as that row normalized
    # on its own (a batch of one).
    n = 1 << 18
    x = random_data(rng, (3, n), dtype, offset=2.0)
    w, b = _affine(op, rng, (n,), dtype, True, True)
    _assert_rows_equal_each_alone(op, x, w, b, range(3), tol)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_rows_past_4mb_normalized_in_spans_equal_each_row_alone(op, dtype, isa, rng, tol,
                                                               num_threads):
    # On one thread, an input of 4 MB or more whose batch holds two rows or more takes the
    # normalize pass a span of 2048 values at a time across the batch's rows, each row
    # prefetching its own values ahead in the last batch (api_norm.c, FN_LONG_SPAN): here 5
    # rows of 263000 values (a last span of 856) in one batch, 5.3 MB in float32 (float64
    # on a 32 MB L3: batches of one row, whole segments).  A row on its own (a batch of
    # one) takes whole segments: the same bits.
    num_threads(1)
    n = (1 << 18) + 856
    x = random_data(rng, (5, n), dtype, offset=2.0)
    w, b = _affine(op, rng, (n,), dtype, True, True)
    _assert_rows_equal_each_alone(op, x, w, b, (0, 3, 4), tol)


@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
def test_rows_in_a_batch_equal_each_row_alone(op, dtype, isa, tuning, rng, tol):
    # Under 8 MB, rows of at most the family's ahead_row_max (AVX2 16 KB: 4096 float32
    # values; AVX-512 16 KB, or 4 KB in the AMD tuning; scalar 4 KB) take their statistics
    # one row ahead, most of them in one loop with the previous row's normalize pass
    # (row_stats_normalize); the rest run a row at a time, and longer rows that
    # with weight and bias take more than 32 KB (from 2100 values in float64, 4100 in the
    # other dtypes, and in the vector families' half dtypes, whose 16 KB limit is 8192
    # values, 8200) are normalized in groups, 1024 columns at a time across the group (9
    # rows: a group of 8 and one of 1, or on 2 threads groups of 5 and 4 where the call
    # is large enough); a row called on its own runs the two kernels apart over the whole
    # row.  The same bits either way, without parameters, with a weight, with both and
    # (LayerNorm) with a bias alone, out of place and in place.
    affines = ((False, False), (True, False), (True, True))
    if op == "layer_norm":
        affines += ((False, True),)
    # (Rows of up to AVX2's 200 values, float64 80, AVX-512's 256 take rows_short: 72 and
    # 150 its second instance in AVX2.)
    for n in (24, 37, 72, 150, 200, 768, 1024, 1025, 2100, 4096, 4100, 8200):
        x = random_data(rng, (9, n), dtype, offset=1.5)
        for with_weight, with_bias in affines:
            w, b = _affine(op, rng, (n,), dtype, with_weight, with_bias)
            y, *stats = row_norm(op, x, None, w, b, return_stats=True)  # (mean,) rstd
            assert_close(y, ref_row_norm(op, x, None, w, b), tol)
            in_place = x.copy()
            row_norm(op, in_place, None, w, b, out=in_place)
            where = f"n={n}, weight {with_weight}, bias {with_bias}"
            np.testing.assert_array_equal(in_place, y, err_msg=where + ", in place")
            for row in range(len(x)):
                alone, *stats_alone = row_norm(op, x[row:row + 1], None, w, b, return_stats=True)
                np.testing.assert_array_equal(y[row:row + 1], alone, err_msg=f"{where}, row {row}")
                for stat, stat_alone in zip(stats, stats_alone):
                    np.testing.assert_array_equal(stat[row], stat_alone[0],
                                                  err_msg=f"{where}, row {row} stats")


def _check_rows_of_a_large_input(op, x, w, b, tol):
    """x's rows normalized: near the float64 reference, the same bits in place, and the same
    bits as five of its rows (the first two, one in the middle, the last two) alone."""
    rows, n = x.shape
    y = row_norm(op, x, None, w, b)
    assert_close(y, ref_row_norm(op, x, None, w, b), tol, err_msg=f"n={n}")
    in_place = x.copy()
    row_norm(op, in_place, None, w, b, out=in_place)
    np.testing.assert_array_equal(in_place, y, err_msg=f"n={n}, in place")
    for row in (0, 1, rows // 2, rows - 2, rows - 1):
        np.testing.assert_array_equal(y[row:row + 1], row_norm(op, x[row:row + 1], None, w, b),
                                      err_msg=f"n={n}, row {row}")


@pytest.mark.parametrize("dtype", (F32,) + tuple(HALF_DTYPES))
def test_rows_of_a_large_input_equal_each_row_alone(op, dtype, isa, rng, tol):
    # From 4 MB of input (FN_PREFETCH_MIN_BYTES) a row's normalize pass may prefetch the
    # next row: the families' prefetch_row_min ... prefetch_row_max (AVX2 up to 8 KB,
    # AVX-512 8 to 32 KB; 1000, 2100 and 4100 values cover both in float32 and half
    # precision), with a weight alone so that no row goes into a group.  The same bits as
    # each row alone, out of place and in place.
    for n in (1000, 2100, 4100):
        rows = (4 << 20) // (n * dtype.itemsize) + 2
        x = random_data(rng, (rows, n), dtype, offset=1.5)
        w, _ = _affine(op, rng, (n,), dtype, True, False)
        _check_rows_of_a_large_input(op, x, w, None, tol)


def test_streamed_rows_with_parameters_equal_each_row_alone(op, isa, tuning, rng, tol,
                                                             num_threads):
    # Rows that with weight and bias take more than 32 KB (4100 float32 values), their
    # output past the streaming bound: the row order in the default tuning, groups of
    # rows with statistics that do not read ahead in the AMD tuning (api_norm.c,
    # FN_GROUP_MIN_BYTES).  The same bits as each row alone either way.
    num_threads(1)
    n = 4100
    rows = fastnorm._core.stream_min_bytes(1) // (n * 4) + 3
    x = random_data(rng, (rows, n), F32, offset=1.5)
    w, b = _affine(op, rng, (n,), F32, True, op == "layer_norm")
    _check_rows_of_a_large_input(op, x, w, b, tol)


@pytest.mark.parametrize("dtype", (F32,) + tuple(HALF_DTYPES))
def test_short_rows_of_an_input_past_8mb_equal_each_row_alone(op, dtype, isa, rng, tol):
    # From 8 MB of input (FN_AHEAD_MAX_READ_BYTES), LayerNorm rows too short for the next-row
    # prefetch (AVX-512: under 2 KB; 300 values in float32 and half precision, 700 in half)
    # still take their statistics one row ahead, in the kernels' own loops, with and without
    # a residual; in AVX-512's half dtypes (LayerNorm where its statistics are raw sums:
    # float16, and bfloat16 with AVX512-BF16) without a residual in row_stats_normalize's
    # streamed loop.  RMSNorm takes that loop there too, with its weight, and otherwise, as
    # in the other families, keeps the row order.  The same bits as each row alone, in place
    # too, and the fused residual's h as the unfused sum.
    for n in (300, 700):
        rows = (8 << 20) // (n * dtype.itemsize) + 3
        x = random_data(rng, (rows, n), dtype, offset=1.5)
        r = random_data(rng, (rows, n), dtype)
        w, b = _affine(op, rng, (n,), dtype, True, True)
        _check_rows_of_a_large_input(op, x, w, b, tol)
        h = np.empty_like(x)
        fused = row_norm(op, x, None, w, b, residual=r, residual_out=h)
        np.testing.assert_array_equal(h, (x + r).astype(dtype), err_msg=f"n={n}, h")
        np.testing.assert_array_equal(fused, row_norm(op, h, None, w, b), err_msg=f"n={n}, fused")


@pytest.mark.parametrize("dtype", [F32, F64])
def test_weight_and_bias_at_any_address_give_the_same_bits(op, dtype, isa, rng, tol):
    # From 16 rows up, weight and bias not on a 64-byte line are read from an aligned copy
    # (FN_ALIGN_PARAMS_MIN_ROWS); fewer rows read the caller's arrays.  Either way the result
    # is the same, bit for bit, wherever the parameters sit.  Rows of 264 values take the
    # row kernels in every family (200 would be rows_short's in AVX2 and AVX-512, which read
    # the parameters in place).
    n = 264
    x = random_data(rng, (40, n), dtype, offset=1.5)
    w0, b0 = _affine(op, rng, (n,), dtype, True, True)
    expected = row_norm(op, x, None, w0, b0)
    assert_close(expected, ref_row_norm(op, x, None, w0, b0), tol)
    for shift in range(8):  # elements past the start of a fresh (16-byte aligned) buffer
        w_buffer, b_buffer = np.empty(n + 8, dtype), np.empty(n + 8, dtype)
        w, b = w_buffer[shift:shift + n], b_buffer[shift:shift + n]
        w[...] = w0
        b[...] = b0
        b = b if op == "layer_norm" else None
        for rows in (40, 3):
            np.testing.assert_array_equal(row_norm(op, x[:rows], None, w, b), expected[:rows],
                                          err_msg=f"weight {shift} elements in, {rows} rows")


@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
def test_rows_at_any_address_give_the_same_bits(op, dtype, isa, rng, tol):
    # The normalize pass starts its loop where y reaches a vector boundary and writes the
    # row's first and last vectors after it; the parameters are copied to y's place in a
    # cache line (fn_param_phase).  x and y anywhere, apart or in place: the same bits.
    # (24 to 200: rows_short in AVX2 float32, 264 the row kernels in every family.)
    for n in (24, 37, 192, 200, 264):
        x0 = random_data(rng, (20, n), dtype, offset=1.5)
        w, b = _affine(op, rng, (n,), dtype, True, True)
        expected = row_norm(op, x0, None, w, b)
        assert_close(expected, ref_row_norm(op, x0, None, w, b), tol)
        for x_shift, y_shift in [(s, s) for s in range(8)] + [(1, 3), (0, 5), (6, 2)]:
            x_buffer, y_buffer = np.empty(x0.size + 8, dtype), np.empty(x0.size + 8, dtype)
            x = x_buffer[x_shift:x_shift + x0.size].reshape(x0.shape)
            y = y_buffer[y_shift:y_shift + x0.size].reshape(x0.shape)
            x[...] = x0
            where = f"n={n}, x {x_shift} and y {y_shift} elements in"
            np.testing.assert_array_equal(row_norm(op, x, None, w, b, out=y), expected,
                                          err_msg=where)
            np.testing.assert_array_equal(row_norm(op, x, None, w, b, out=x), expected,
                                          err_msg=where + ", in place")


@pytest.mark.parametrize("shape, normalized_shape", [
    ((37,), None), ((37,), 37), ((37,), (37,)),
    ((5, 33), None), ((5, 33), (5, 33)),
    ((2, 3, 17), None), ((2, 3, 17), (3, 17)),
    ((2, 3, 4, 9), 9), ((2, 3, 4, 9), (4, 9)), ((2, 3, 4, 9), (3, 4, 9)),
    ((2, 2, 3, 4, 5), None), ((2, 2, 3, 4, 5), (4, 5)), ((2, 2, 3, 4, 5), (2, 2, 3, 4, 5)),
    ((3, 1, 1), (1, 1)), ((4, 1), None),
])
@pytest.mark.parametrize("with_affine", [False, True])
def test_ndim_1_to_5_and_normalized_shape(op, shape, normalized_shape, with_affine, isa, rng,
                                          tol):
    x = random_data(rng, shape, np.float32)
    if normalized_shape is None:
        norm_dims = shape[-1:]
    elif isinstance(normalized_shape, int):
        norm_dims = (normalized_shape,)
    else:
        norm_dims = normalized_shape
    w, b = _affine(op, rng, norm_dims, np.float32, with_affine, with_affine)
    y = row_norm(op, x, normalized_shape, w, b)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y, ref_row_norm(op, x, normalized_shape, w, b), tol)


@pytest.mark.parametrize("with_weight, with_bias", [(True, False), (False, True)])
def test_weight_or_bias_alone(op, with_weight, with_bias, isa, rng, tol):
    x = random_data(rng, (6, 50), np.float64)
    w, b = _affine(op, rng, (50,), np.float64, with_weight, with_bias)
    assert_close(row_norm(op, x, None, w, b), ref_row_norm(op, x, None, w, b), tol)


def test_weight_of_another_float_dtype_is_used_in_the_computation_dtype(op, isa, rng, tol):
    x = random_data(rng, (4, 24), np.float32)
    w64 = random_data(rng, (24,), np.float64, offset=1.0)
    b16 = random_data(rng, (24,), np.float16) if op == "layer_norm" else None
    y = row_norm(op, x, None, w64, b16)
    assert y.dtype == F32
    # float32 computation: weight is rounded to float32 first (the contract).
    w32 = w64.astype(np.float32)
    b32 = None if b16 is None else b16.astype(np.float32)
    assert_close(y, ref_row_norm(op, x, None, w32, b32), tol)


@pytest.mark.parametrize("shape, axis", [
    ((4, 8, 5, 7), 1),            # channels-first LayerNorm of ConvNeXt
    ((4, 8, 5, 7), -3),
    ((4, 8, 5, 7), (1,)),
    ((4, 8, 5, 7), (1, 2)),       # adjacent, not trailing
    ((4, 8, 5, 7), (1, 3)),       # not adjacent
    ((4, 8, 5, 7), (0, 2)),
    ((4, 8, 5, 7), (2, 3)),       # the trailing case written with axis=
    ((4, 8, 5, 7), -1),
    ((4, 8, 5, 7), (0, 1, 2, 3)),
    ((9, 70), 0),
    ((301, 130), 0),              # column statistics row by row: blocks, an odd last row
    ((3, 65, 2), 1),              # inner of 2, middle straddling a vector width
    ((2, 3, 17, 4, 5), (1, 3)),
    ((2, 3, 17, 4, 5), 2),
])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_axis(op, shape, axis, dtype, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=-0.7)
    axes = sorted({a % x.ndim for a in ((axis,) if np.isscalar(axis) else axis)})
    w, b = _affine(op, rng, tuple(shape[a] for a in axes), dtype, True, True)
    for weight, bias in ((None, None), (w, b)):
        y = row_norm(op, x, None, weight, bias, axis=axis)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert_close(y, ref_row_norm_axis(op, x, axis, weight, bias), tol,
                     err_msg=f"{op} axis={axis} affine={weight is not None}")


def test_axis_agrees_with_the_reference_axis_argument(op, isa, rng, tol):
    x = random_data(rng, (3, 6, 4, 5), np.float32)
    assert_close(row_norm(op, x, axis=(1, 3)), ref_row_norm(op, x, axis=(1, 3)), tol)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("shape, normalized_shape, axis", [
    ((7, 40), None, None), ((3, 4, 40), (4, 40), None), ((3, 8, 5, 6), None, 1),
    ((3, 8, 5, 6), None, (1, 3)), ((40,), None, None),
])
def test_return_stats(op, dtype, shape, normalized_shape, axis, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=2.0, scale=1.5)
    kw = {} if axis is None else {"axis": axis}
    result = row_norm(op, x, normalized_shape, return_stats=True, **kw)
    assert isinstance(result, tuple)
    want = ref_row_norm(op, x, normalized_shape, return_stats=True, **kw)
    assert len(result) == len(want) == (3 if op == "layer_norm" else 2)
    y, *stats = result
    assert_close(y, want[0], tol)
    if axis is None:
        n_norm = 1 if normalized_shape is None else len(normalized_shape)
        stat_shape = shape[:len(shape) - n_norm]
    else:
        axes = {a % len(shape) for a in ((axis,) if np.isscalar(axis) else axis)}
        stat_shape = tuple(n for i, n in enumerate(shape) if i not in axes)
    for got, ref in zip(stats, want[1:]):
        assert np.shape(got) == stat_shape
        assert np.asarray(got).dtype == compute_dtype(dtype)
        assert_close(got, ref, tol)
    # The statistics are the ones y was computed with.
    if op == "layer_norm":
        mean, rstd = stats
        x64 = np.asarray(x, dtype=np.float64)
        if axis is None:
            assert_close(mean, x64.reshape(stat_shape + (-1,)).mean(-1), tol, dtype=dtype)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_zero_size_batch_gives_zero_size_result(op, dtype, isa):
    x = np.zeros((0, 8), dtype=dtype)
    y = row_norm(op, x)
    assert y.shape == (0, 8) and y.dtype == x.dtype
    y, *stats = row_norm(op, x, return_stats=True)
    assert y.shape == (0, 8)
    for s in stats:
        assert np.shape(s) == (0,) and np.asarray(s).dtype == compute_dtype(dtype)
    assert row_norm(op, np.zeros((3, 0, 8), dtype=dtype), 8).shape == (3, 0, 8)


def test_list_and_array_like_inputs(op, isa, rng, tol):
    x = random_data(rng, (3, 9), np.float64)
    assert_close(row_norm(op, x.tolist()), ref_row_norm(op, x), tol)

    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return x.astype(np.float32)

    y = row_norm(op, ArrayLike())
    assert y.dtype == F32
    assert_close(y, ref_row_norm(op, x.astype(np.float32)), tol)


def test_torch_tensor_input(op, isa, rng, tol):
    torch = import_torch()
    x = random_data(rng, (5, 33), np.float32)
    y = row_norm(op, torch.from_numpy(x.copy()))
    assert isinstance(y, np.ndarray) and y.dtype == F32
    assert_close(y, ref_row_norm(op, x), tol)


def test_float64_stays_float64(op, isa, rng):
    x = random_data(rng, (4, 16), np.float64)
    assert row_norm(op, x).dtype == F64
