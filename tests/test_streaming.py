"""Outputs of 8 MiB or more are written with streaming (non-temporal) stores, two vectors
per store where the kernel family pairs them (src/fastnorm_c/api_internal.h FN_STREAM_MIN_BYTES);
rows without a residual from a sixteenth of the last-level cache where that is more
(fastnorm._core.stream_min_bytes(): 18.75 MiB on a 300 MB L3, the cache cpu0 shares as
Linux's sysfs gives it), on several threads from 16 MiB at least; the fused residual form
(float32 and float64: y from the rows' one-thread bound, h with it from 16 MiB), and
BatchNorm and GroupNorm on more than one thread from 16 MiB (FN_STREAM_MIN_BYTES_OTHERS).

Rows, and BatchNorm samples in eval mode, are normalized independently, so the rows of such
a call must equal, bit for bit, the same rows normalized in a small call (plain stores), also
when the output starts one element past an aligned address (the kernel then stores single
vectors until a pair can start aligned) or 16 bytes past it, where NumPy puts large arrays
(a row's partial first and last vectors are then streamed in 16-byte pieces).
"""
import functools
import pathlib

import numpy as np
import pytest

import fastnorm
from fn_testutil import (BF16, F16, F32, F64, assert_same_bits, at_line_offset,
                         half_support_reason, random_data, row_norm)

STREAM_MIN_BYTES = 8 << 20
# rows without a residual, on any thread count (on several, from 16 MiB at least)
ROW_STREAM_MIN_BYTES = max(fastnorm._core.stream_min_bytes(threads) for threads in (1, 2))
STREAM_MIN_BYTES_OTHERS = 16 << 20  # the residual form's h; BatchNorm on 2 threads or more
DTYPES = [F32, F64] + ([] if half_support_reason() else [F16, BF16])
N = 1000  # not a multiple of any pair of vectors: every row ends in single vectors and a tail


OFFSETS = ["aligned", "one element", "16 bytes"]


def _out(shape, dtype, offset):
    """An output array of `shape` starting at a 64-byte boundary or `offset` past one."""
    skip = {"aligned": 0, "one element": 1, "16 bytes": 16 // dtype.itemsize}[offset]
    return at_line_offset(shape, dtype, skip)


def _sysfs_llc_bytes():
    """The highest-level data or unified cache of cpu0 as sysfs describes it, or None.  As
    dispatch.c reads it: an index whose description is missing or unreadable is passed over."""
    best = None
    for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip()
                                 for name in ("level", "type", "size"))
            kb = int(size.rstrip("KM")) * (1024 if size.endswith("M") else 1)
            level = int(level)
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and kb > 0 and (best is None or level >= best[0]):
            best = level, kb * 1024
    return best and best[1]


@pytest.mark.skipif(_sysfs_llc_bytes() is None, reason="no cache description in sysfs")
def test_row_stream_bound_is_a_sixteenth_of_the_cache_the_cores_share():
    # Not glibc's sysconf, which on an AMD EPYC VM gave the package's 256 MB where the cores
    # share a 32 MB L3, and kept 12 MB outputs from streaming (1.2-1.6x the time there).
    # Rows on several threads stream from 16 MiB at least (api_internal.h,
    # fn_row_stream_min_bytes); layout copies on any.
    share = _sysfs_llc_bytes() // 16
    assert fastnorm._core.stream_min_bytes() == max(share, STREAM_MIN_BYTES)
    assert fastnorm._core.stream_min_bytes(1) == max(share, STREAM_MIN_BYTES)
    assert fastnorm._core.stream_min_bytes(2) == max(share, STREAM_MIN_BYTES_OTHERS)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("offset", OFFSETS)
def test_streamed_rows_equal_rows_of_a_small_call(dtype, op, offset, isa, rng):
    rows = ROW_STREAM_MIN_BYTES // (N * dtype.itemsize) + 3
    x = random_data(rng, (rows, N), dtype, offset=3.0)
    w = random_data(rng, N, dtype, offset=1.0)
    args = ((N,), w, random_data(rng, N, dtype)) if op == "layer_norm" else ((N,), w)
    out = _out(x.shape, dtype, offset)
    assert out.nbytes >= ROW_STREAM_MIN_BYTES
    y = row_norm(op, x, *args, out=out)
    assert y is out
    for pick in (slice(0, 3), slice(rows // 2, rows // 2 + 2), slice(rows - 3, rows)):
        assert_same_bits(y[pick], row_norm(op, x[pick], *args), err_msg=f"rows {pick}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("n", [131, 1001, 1002])
def test_streamed_rows_of_any_length_equal_rows_of_a_small_call(dtype, op, n, isa, rng):
    # Rows whose length is no multiple of 16 bytes start anywhere in a line.  Where they
    # start on 4 bytes the kernels stream their partial first and last vectors in 4-byte
    # pieces too; rows that start elsewhere (float16 rows of 1001 values), or that AVX2
    # bfloat16 cannot stream from their start, take plain stores (api_norm.c,
    # fn_rows_stream_whole).  The same bits as rows of a small call.
    rows = ROW_STREAM_MIN_BYTES // (n * dtype.itemsize) + 3
    x = random_data(rng, (rows, n), dtype, offset=3.0)
    w = random_data(rng, n, dtype, offset=1.0)
    args = ((n,), w, random_data(rng, n, dtype)) if op == "layer_norm" else ((n,), w)
    y = row_norm(op, x, *args, out=_out(x.shape, dtype, "aligned"))
    for pick in (slice(0, 3), slice(rows // 2, rows // 2 + 5), slice(rows - 3, rows)):
        assert_same_bits(y[pick], row_norm(op, x[pick], *args), err_msg=f"rows {pick}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("offset", OFFSETS[:2])
def test_streamed_long_rows_alone_equal_their_rows_in_a_batch(dtype, op, offset, isa, rng):
    # Rows each past the stream bound.  One or two rows in a call take weight and bias as
    # the caller gave them, where AVX2 bfloat16 reads a reordered copy from three rows on
    # (api_norm.c, FN_NATURAL_PARAMS_MAX_ROWS): its pass then streams a vector at a time.
    n = ROW_STREAM_MIN_BYTES // dtype.itemsize + N
    x = random_data(rng, (3, n), dtype, offset=3.0)
    w = random_data(rng, n, F32, offset=1.0)
    args = ((n,), w, random_data(rng, n, F32)) if op == "layer_norm" else ((n,), w)
    batch = row_norm(op, x, *args)
    for rows in (1, 2):
        out = _out((rows, n), dtype, offset)
        assert_same_bits(row_norm(op, x[:rows], *args, out=out), batch[:rows],
                         err_msg=f"{rows} rows")


# h = x + residual goes to residual_out.  float32/float64: streamed with y by the normalize
# pass where it sits like y, stored plainly by that pass where it does not, and by the
# statistics pass where it overwrites residual; bfloat16/float16: by the statistics pass
# in every placement (api_norm.c, fn_norm_spans)
H_PLACES = [("16 bytes", "like out"), ("one element", "like out"),
            ("16 bytes", "one element further"), ("16 bytes", "over residual")]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_rows_streamed_on_one_thread_equal_plain_stores_on_two(op, isa, rng, num_threads):
    # Between the two bounds rows stream on one thread and store plainly on two
    # (api_internal.h, fn_row_stream_min_bytes): the same bits either way.
    low, high = (fastnorm._core.stream_min_bytes(threads) for threads in (1, 2))
    if low >= high:
        pytest.skip("rows stream from the same size on one thread and on two here")
    rows = (low + high) // 2 // (N * 4)
    x = random_data(rng, (rows, N), F32, offset=3.0)
    args = ((N,), random_data(rng, N, F32, offset=1.0))
    if op == "layer_norm":
        args += (random_data(rng, N, F32),)
    results = []
    for threads in (1, 2):
        num_threads(threads)
        results.append(row_norm(op, x, *args, out=_out(x.shape, F32, "aligned")))
    assert_same_bits(results[1], results[0])



@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_group_norm_streamed_on_one_thread_equals_plain_stores_on_two(channels_last, isa, rng,
                                                                      num_threads):
    # 12 MiB: streamed on one thread, stored plainly on two (api_group_norm.c,
    # fn_group_job_of); the same bits either way.  (6, 128, 64, 64) float32, groups of 4
    # channels: the fused groups in NCHW; channels-last, 2 MiB samples, each normalized
    # from cache right after its statistics (FN_GROUP_CL_FUSED_MAX_BYTES).
    shape = (6, 64, 64, 128) if channels_last else (6, 128, 64, 64)
    x = random_data(rng, shape, F32, offset=3.0)
    if channels_last:
        x = x.transpose(0, 3, 1, 2)
    w, b = random_data(rng, 128, F32, offset=1.0), random_data(rng, 128, F32)
    assert STREAM_MIN_BYTES < x.nbytes < STREAM_MIN_BYTES_OTHERS
    results = []
    for threads in (1, 2):
        num_threads(threads)
        results.append(fastnorm.group_norm(x, 32, w, b))
    assert_same_bits(results[1], results[0])
    np.testing.assert_allclose(results[0], fastnorm.reference.group_norm(x, 32, w, b),
                               rtol=1e-5, atol=1e-5)


def _fused_stream_min_bytes(dtype):
    """Where the fused residual streams y and h: from 16 MiB in the half dtypes; float32 and
    float64 stream y from the last-level cache's bound (api_norm.c), h with it from 16 MiB."""
    if dtype.itemsize == 2:
        return STREAM_MIN_BYTES_OTHERS
    return max(fastnorm._core.stream_min_bytes(), STREAM_MIN_BYTES_OTHERS)


@functools.lru_cache(maxsize=None)
def _fused_inputs(dtype):
    """x, residual and the contract's h = x + residual for a streamed call, read-only and
    made once per dtype (making them took most of each case's time)."""
    rng = np.random.default_rng(5)
    rows = _fused_stream_min_bytes(dtype) // (N * dtype.itemsize) + 3
    x = random_data(rng, (rows, N), dtype, offset=0.5)
    r = random_data(rng, (rows, N), dtype, offset=-0.25, scale=0.7)
    with np.errstate(all="ignore"):
        h = (x + r).astype(dtype)
    for a in (x, r, h):
        a.flags.writeable = False
    return x, r, h


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("offset, h_place", H_PLACES, ids=[", h ".join(p) for p in H_PLACES])
def test_streamed_fused_residual_equals_rows_of_a_small_call(dtype, op, offset, h_place, isa,
                                                            rng):
    x, r, h = _fused_inputs(dtype)
    rows = x.shape[0]
    w = random_data(rng, N, dtype, offset=1.0)
    args = ((N,), w, random_data(rng, N, dtype)) if op == "layer_norm" else ((N,), w)
    out = _out(x.shape, dtype, offset)
    if h_place == "over residual":
        residual = h_out = r.copy()
    else:
        skip = out.ctypes.data % 64 // dtype.itemsize + (h_place == "one element further")
        residual, h_out = r, at_line_offset(x.shape, dtype, skip)
    y = row_norm(op, x, *args, residual=residual, residual_out=h_out, out=out)
    assert y is out and out.nbytes >= _fused_stream_min_bytes(dtype)
    assert_same_bits(h_out, h)
    for pick in (slice(0, 3), slice(rows // 2, rows // 2 + 2), slice(rows - 3, rows)):
        assert_same_bits(y[pick], row_norm(op, h[pick], *args), err_msg=f"rows {pick}")


@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_fused_residual_under_16mb_streams_y_alone(dtype, op, isa, rng):
    # float32 and float64 stream y from the rows' one-thread bound, and h with it only
    # from 16 MiB (api_norm.c, FN_RESIDUAL_H_STREAM_MIN_BYTES): between the two the
    # statistics pass stores h plainly.  h is x + residual, and y the same bits as a small
    # call's, as on every other path.
    low = fastnorm._core.stream_min_bytes()
    if low >= STREAM_MIN_BYTES_OTHERS:
        pytest.skip("the fused residual streams h from the rows' bound here")
    n = 768
    rows = (low + STREAM_MIN_BYTES_OTHERS) // 2 // (n * dtype.itemsize)
    x = random_data(rng, (rows, n), dtype, offset=0.5)
    r = random_data(rng, (rows, n), dtype, offset=-0.25, scale=0.7)
    args = ((n,), random_data(rng, n, dtype, offset=1.0))
    if op == "layer_norm":
        args += (random_data(rng, n, dtype),)
    h_out = _out(x.shape, dtype, "aligned")
    y = row_norm(op, x, *args, residual=r, residual_out=h_out, out=_out(x.shape, dtype, "aligned"))
    assert_same_bits(h_out, x + r)
    for pick in (slice(0, 3), slice(rows // 2, rows // 2 + 2), slice(rows - 3, rows)):
        assert_same_bits(y[pick], row_norm(op, x[pick] + r[pick], *args), err_msg=f"rows {pick}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("layout", ["channels-first", "channels-last"])
def test_streamed_batch_norm_eval_equals_samples_of_a_small_call(dtype, layout, offset, isa,
                                                                rng):
    # channels-last: each sample is a (N, 12) block of columns, fastnorm_affine's column
    # path, which streams only when every row starts aligned and stores plainly otherwise
    channels, inner = (4, N) if layout == "channels-first" else (12, N)
    samples = STREAM_MIN_BYTES_OTHERS // (channels * inner * dtype.itemsize) + 2
    shape = (samples, channels, inner) if layout == "channels-first" else (samples, inner, channels)
    axis = 1 if layout == "channels-first" else -1
    x = random_data(rng, shape, dtype, offset=2.0)
    stats = dict(running_mean=random_data(rng, channels, np.float32),
                 running_var=random_data(rng, channels, np.float32, offset=2.0, scale=0.1),
                 weight=random_data(rng, channels, np.float32, offset=1.0),
                 bias=random_data(rng, channels, np.float32))
    out = _out(x.shape, dtype, offset)
    assert out.nbytes >= STREAM_MIN_BYTES_OTHERS
    y = fastnorm.batch_norm(x, training=False, axis=axis, out=out, **stats)
    for pick in (slice(0, 1), slice(samples - 2, samples)):
        assert_same_bits(y[pick], fastnorm.batch_norm(x[pick], training=False, axis=axis, **stats),
                         err_msg=f"samples {pick}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("sample_bytes", [256 << 10, 3 << 20], ids=["small samples",
                                                                    "samples past 2 MB"])
def test_streamed_group_norm_equals_samples_of_a_small_call(dtype, channels_last, sample_bytes,
                                                            offset, isa, rng):
    # group_norm has no out=, so the big call goes through the binding with an output at a
    # chosen offset.  Channels-last samples of up to 2 MB are normalized from cache by the
    # column kernel, which streams from the output's first line boundary on, with its
    # parameters rotated to match (api_group_norm.c, fn_group_cl_normalize); larger ones
    # by BatchNorm's affine a sample at a time, streaming as the whole call would
    # (fn_affine_part), where a call of two samples does not.  Past 16 MiB, so that it
    # streams on any thread count (api_group_norm.c, fn_group_job_of)
    channels, groups = 64, 8
    spatial = sample_bytes // (channels * dtype.itemsize)
    samples = STREAM_MIN_BYTES_OTHERS // (channels * spatial * dtype.itemsize) + 2
    shape = (samples, spatial, channels) if channels_last else (samples, channels, spatial)
    x = random_data(rng, shape, dtype, offset=3.0)
    compute = np.float64 if dtype == F64 else np.float32
    w = random_data(rng, channels, compute, offset=1.0)
    b = random_data(rng, channels, compute)
    out = _out(x.shape, dtype, offset)
    assert out.nbytes >= STREAM_MIN_BYTES_OTHERS
    code = fastnorm._checks.dtype_rule(np.dtype(dtype))[0]
    fastnorm._core.group_norm(code, samples, channels, groups, spatial, x, out, w, b, 1e-5,
                              fastnorm._checks.num_threads, channels_last)
    as_nc = (lambda a: a.transpose(0, 2, 1)) if channels_last else (lambda a: a)
    for pick in (slice(0, 2), slice(samples - 2, samples)):
        small = fastnorm.group_norm(as_nc(x[pick]), groups, w, b)
        assert_same_bits(as_nc(out[pick]), small, err_msg=f"samples {pick}")
