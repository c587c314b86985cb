"""Any memory layout gives the contiguous result; out= (strided, in place) is honoured.

Layouts: Fortran order, every axis strided, every axis reversed (negative strides), and a
data pointer one byte off alignment.  The result must be the contiguous call's, bit for
bit (API.md: "gives the same result as the contiguous case"), and the input must be left
unchanged.  Channels-last views are computed in memory order: BatchNorm eval gives the
C-order bits there too; statistics (BatchNorm training, GroupNorm) agree within rounding
(docs/api.md, "Choices where the contract is silent").
"""
import itertools

import numpy as np
import pytest

import fastnorm
from fastnorm import _checks
from fn_testutil import (FULL_DTYPES, HALF_DTYPES, LAYOUTS, ROW_OPS, as_layout, assert_close,
                         assert_same_bits, in_memory_order, random_data, ref_batch_norm,
                         ref_group_norm, ref_row_norm, ref_row_norm_axis, row_norm, sentinel)

NON_CONTIGUOUS = tuple(layout for layout in LAYOUTS if layout != "contiguous")


def _check_layout_case(call, x, layout, tol):
    """call(view) on a view in `layout` is call(contiguous x) bit for bit; the view is
    untouched."""
    want = call(np.ascontiguousarray(x))
    view = as_layout(x, layout)
    before = view.copy()
    got = call(view)
    np.testing.assert_array_equal(view, before, err_msg="input was modified")
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert_same_bits(g, w, err_msg=f"layout {layout}")


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
@pytest.mark.parametrize("shape, kw", [
    ((6, 33), {}), ((3, 4, 17), {"normalized_shape": (4, 17)}), ((2, 8, 3, 5), {"axis": 1}),
    ((2, 8, 3, 5), {"axis": (1, 3)}), ((40,), {}), ((1, 1 << 12), {}),
])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_row_norms_any_layout(op, layout, shape, kw, dtype, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=1.0)
    ns = kw.get("normalized_shape")
    _check_layout_case(lambda v: row_norm(op, v, ns, axis=kw.get("axis"), return_stats=True),
                       x, layout, tol)


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
def test_row_norm_weight_bias_any_layout(op, layout, isa, rng):
    x = random_data(rng, (5, 6, 7), np.float32)
    w = random_data(rng, (6, 7), np.float32, offset=1.0)
    b = random_data(rng, (6, 7), np.float32) if op == "layer_norm" else None
    want = row_norm(op, x, (6, 7), w, b)
    got = row_norm(op, x, (6, 7), as_layout(w, layout),
                   None if b is None else as_layout(b, layout))
    assert_same_bits(got, want)


@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
@pytest.mark.parametrize("shape, axis", [((4, 6), 1), ((4, 6, 9), 1), ((4, 5, 7, 6), -1),
                                         ((3, 6, 4, 5), 1), ((2, 3, 6, 2, 3), 2)])
@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_any_layout(layout, shape, axis, training, isa, rng, tol):
    x = random_data(rng, shape, np.float32, offset=2.0)
    c = shape[axis]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)

    def call(v):
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32) * 2
        y, mean, rstd = fastnorm.batch_norm(v, rm, rv, w, b, training=training, axis=axis,
                                            return_stats=True)
        return y, mean, rstd, rm, rv

    _check_layout_case(call, x, layout, tol)


@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
def test_group_norm_any_layout(layout, isa, rng, tol):
    x = random_data(rng, (3, 6, 5, 4), np.float64)
    _check_layout_case(lambda v: fastnorm.group_norm(v, 3), x, layout, tol)
    _check_layout_case(lambda v: fastnorm.instance_norm(v), x, layout, tol)


# ---------------------------------------------------------------------------- out= ---


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("out_layout", ("contiguous", "fortran", "strided", "negative"))
@pytest.mark.parametrize("kw", [{}, {"axis": 1}])
def test_row_norm_out(op, out_layout, kw, isa, rng, tol):
    x = random_data(rng, (4, 9, 6), np.float32)
    out = as_layout(sentinel(x.shape, x.dtype), out_layout)
    result = row_norm(op, x, out=out, **kw)
    assert result is out
    want = ref_row_norm_axis(op, x, kw["axis"]) if kw else ref_row_norm(op, x)
    assert_close(out, want, tol)


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kw", [{}, {"axis": 1}, {"axis": (0, 2)}, {"normalized_shape": (9, 6)}])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_row_norm_in_place(op, layout, kw, dtype, isa, rng):
    x = random_data(rng, (4, 9, 6), dtype, offset=-1.0)
    kw = dict(kw)
    ns = kw.pop("normalized_shape", None)
    want = row_norm(op, x, ns, **kw)
    x_view = as_layout(x, layout)
    result = row_norm(op, x_view, ns, out=x_view, **kw)
    assert result is x_view
    assert_same_bits(x_view, want)


@pytest.mark.parametrize("op", ROW_OPS)
def test_out_overlapping_input_partially(op, isa, rng, tol):
    # out is x shifted by one row: a correct implementation must not read rows it
    # already overwrote.
    buf = random_data(rng, (7, 16), np.float64)
    x = buf[1:].copy()
    want = row_norm(op, x)
    src, dst = buf[1:], buf[:-1]
    result = row_norm(op, src, out=dst)
    assert result is dst
    assert_close(dst, want, tol)


@pytest.mark.parametrize("shape, axis", [((8, 5), 1), ((4, 5, 3, 3), 1), ((4, 3, 3, 5), -1)])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_norm_out_and_in_place(shape, axis, training, layout, isa, rng, tol):
    x = random_data(rng, shape, np.float32, offset=3.0)
    c = shape[axis]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    (want, _, _), _, _ = ref_batch_norm(x, rm, rv, training=training, axis=axis,
                                        return_stats=True)
    out = as_layout(sentinel(shape, np.float32), layout)
    assert fastnorm.batch_norm(x, rm.copy(), rv.copy(), training=training, axis=axis,
                               out=out) is out
    assert_close(out, want, tol, dtype=np.float32)
    x_view = as_layout(x, layout)
    assert fastnorm.batch_norm(x_view, rm.copy(), rv.copy(), training=training, axis=axis,
                               out=x_view) is x_view
    assert_close(x_view, want, tol, dtype=np.float32)


def test_group_norm_matches_reference_for_strided_views(isa, rng, tol):
    x = random_data(rng, (2, 8, 6, 6), np.float32)
    view = x[:, ::2, 1:, ::-1]
    assert_close(fastnorm.group_norm(view, 2), ref_group_norm(view, 2), tol, dtype=np.float32)


@pytest.mark.parametrize("op", ROW_OPS)
def test_zero_stride_broadcast_input(op, isa, rng, tol):
    row = random_data(rng, (1, 33), np.float32)
    x = np.broadcast_to(row, (5, 33))          # stride 0 along rows, read-only
    got = row_norm(op, x)
    assert_close(got, row_norm(op, np.ascontiguousarray(x)), tol)
    cols = np.broadcast_to(random_data(rng, (6, 1), np.float64), (6, 20))  # constant rows
    assert_close(row_norm(op, cols), ref_row_norm(op, np.ascontiguousarray(cols)), tol)
    with pytest.raises(ValueError):
        row_norm(op, x, out=x)                 # read-only out


# ------------------------------------------------ transposes of C-contiguous arrays ---
# Computed in their memory order, without a copy to C order: rows that stay rows give the
# C-order bits; a channels-last view gives what axis=-1 gives on the channels-last array.
# Either way the result keeps x's layout.


def test_memory_order_finds_only_transposes_of_c_contiguous_arrays(rng):
    x = random_data(rng, (2, 3, 4, 5), np.float32)
    assert _checks.memory_order(x) is None  # C order already
    assert _checks.memory_order(in_memory_order(x, (0, 2, 3, 1))) == (0, 2, 3, 1)
    assert _checks.memory_order(np.asfortranarray(x)) == (3, 2, 1, 0)
    for layout in ("strided", "negative", "unaligned"):
        assert _checks.memory_order(as_layout(x, layout)) is None, layout
    assert _checks.memory_order(np.broadcast_to(x[:, :1], x.shape).transpose(1, 0, 2, 3)) is None
    order = (2, 0, 3, 1)
    assert _checks.inverse_order(order) == tuple(np.argsort(order))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 1, 4, 5), (2, 3, 1, 5), (2, 3, 4, 1),
                                   (1, 3, 4, 5), (2, 3, 1, 1), (1, 1, 1, 1), (2, 3, 4), (2, 3, 4, 5, 2)])
def test_channels_last_order_of_every_transpose(shape, rng):
    # group_norm's layout test, whose 4-D NHWC case reads the strides directly: an order is
    # found exactly when x is not C-contiguous and x.transpose((0, ..., 1)) is, for some
    # order of the spatial axes, and it is such an order
    from fastnorm._functional import _channels_last_order
    x = random_data(rng, shape, np.float32)
    views = [in_memory_order(x, perm) for perm in itertools.permutations(range(len(shape)))]
    # slices keep the strides of their size-1 axes, which NumPy's own arrays normalize
    if len(shape) == 4:
        views += [v[:, :, :1, :1] for v in views[:]] + [v[:, :, :1] for v in views[:]]
        n, c = shape[:2]  # (N, C, 1, 1) with NHWC strides: C-contiguous all the same
        views.append(np.lib.stride_tricks.as_strided(x, (n, c, 1, 1), (4 * c, 4, 4 * c, 4 * c)))
    for perm, view in enumerate(views):
        want = [o for o in ((0,) + p + (1,) for p in itertools.permutations(range(2, len(shape))))
                if view.transpose(o).flags.c_contiguous]
        got = _channels_last_order(view)
        if view.flags.c_contiguous or not want:
            assert got is None, (perm, got)
        else:
            assert got in want, (perm, got, want)


@pytest.mark.parametrize("shape, order", [((4, 8, 9, 9), (0, 2, 3, 1)), ((3, 16, 5), (0, 2, 1)),
                                          ((8, 3, 6, 4), (2, 0, 3, 1)),
                                          ((2, 5, 3, 1, 7), (0, 2, 3, 4, 1))])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
def test_batch_norm_channels_last_view(shape, order, training, dtype, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=2.0)
    c = shape[1]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)

    def call(v, axis):
        rm, rv = np.full(c, 0.5, np.float32), np.full(c, 2.0, np.float32)
        y, mean, rstd = fastnorm.batch_norm(v, rm, rv, w, b, training=training, axis=axis,
                                            return_stats=True)
        return y, mean, rstd, rm, rv

    view = in_memory_order(x, order)
    before = view.copy()
    got = call(view, 1)
    np.testing.assert_array_equal(view, before, err_msg="input was modified")
    assert got[0].strides == view.strides  # x's layout kept
    want = call(view.transpose(order), order.index(1))  # the channels-last array itself
    assert_same_bits(got[0].transpose(order), want[0])
    for g, w_ in zip(got[1:], want[1:]):
        assert_same_bits(g, w_)
    c_order = call(np.ascontiguousarray(x), 1)
    if not training:  # a per-element map with the same constants: the C-order bits
        assert_same_bits(got[0], c_order[0])
    elif dtype in FULL_DTYPES:  # statistics summed in another order: within rounding
        for g, w_ in zip(got, c_order):
            assert_close(g, w_, tol)


# maps of 2, 9 (column path), 49, 196 (rows) and 16400 values (segments of 16384); running
# means that fold into the shift (|mean| <= std) and ones that do not, side by side
@pytest.mark.parametrize("shape", [(5, 7, 1, 2), (6, 5, 3, 3), (3, 9, 7, 7), (2, 6, 14, 14),
                                   (1, 3, 2, 8200)])
@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_eval_channels_last_gives_the_c_order_bits(shape, dtype, threads, isa, rng,
                                                             tol, num_threads):
    num_threads(threads)
    c = shape[1]
    x = random_data(rng, shape, dtype, offset=3.0)
    mean = np.where(np.arange(c) % 2, 3.0, 0.25) + rng.standard_normal(c) * 0.1
    var = rng.uniform(0.01, 4.0, c)  # odd channels: |mean| > std, not folded
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    want = fastnorm.batch_norm(x, mean, var, w, b)
    got = fastnorm.batch_norm(in_memory_order(x, (0, 2, 3, 1)), mean, var, w, b)
    assert got.strides != want.strides
    assert_same_bits(got, want)
    ref, _, _ = ref_batch_norm(x, mean, var, w, b)
    assert_close(want, ref.astype(dtype), tol)


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_channels_last_view_out_and_in_place(training, isa, rng):
    order = (0, 2, 3, 1)
    x = random_data(rng, (4, 6, 5, 7), np.float32, offset=3.0)
    view = in_memory_order(x, order)
    want = fastnorm.batch_norm(view.transpose(order), np.zeros(6), np.ones(6), training=training,
                               axis=-1).transpose(np.argsort(order))
    for out in (in_memory_order(sentinel(x.shape, x.dtype), order),  # written directly
                sentinel(x.shape, x.dtype), as_layout(sentinel(x.shape, x.dtype), "strided")):
        assert fastnorm.batch_norm(view, np.zeros(6), np.ones(6), training=training,
                                   out=out) is out
        assert_same_bits(out, want)
    assert fastnorm.batch_norm(view, np.zeros(6), np.ones(6), training=training,
                               out=view) is view
    assert_same_bits(view, want)


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (3, 2, 1, 0), (0, 3, 1, 2)])
@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_other_transposes_give_the_c_order_bits(order, training, isa, rng):
    # channels not last in memory: eval computes the transpose as the C-contiguous array it
    # is (the result in x's layout), training copies x to C order; the C-order bits either way
    x = random_data(rng, (4, 6, 5, 7), np.float64, offset=3.0)
    view = in_memory_order(x, order)
    got = fastnorm.batch_norm(view, np.zeros(6), np.ones(6), training=training)
    assert_same_bits(got, fastnorm.batch_norm(x, np.zeros(6), np.ones(6), training=training))
    if not training:
        assert got.strides == view.strides


@pytest.mark.parametrize("shape, order, groups, offset", [
    ((4, 8, 9, 9), (0, 2, 3, 1), 2, 2.0), ((3, 16, 5), (0, 2, 1), 4, 2.0),
    ((2, 6, 3, 1, 7), (0, 2, 3, 4, 1), 3, 2.0),
    ((2, 12, 4, 5), (0, 3, 2, 1), 12, 2.0),  # spatial axes reversed in memory; one channel a group
    ((1, 6, 11, 13), (0, 2, 3, 1), 1, 2.0), ((3, 64, 6, 6), (0, 2, 3, 1), 32, 2.0),
    ((4, 32, 3, 3), (0, 2, 3, 1), 8, 0.0),  # means near 0: folded into the shift
    # samples that share their rows among the threads (one of 51200 values; two over 2 MB
    # in float32 and float64)
    ((1, 32, 40, 40), (0, 2, 3, 1), 8, 2.0), ((2, 8, 300, 240), (0, 2, 3, 1), 4, 0.0),
    # one sample of 49 rows and 50176 values: one thread, the sample from cache
    ((1, 1024, 7, 7), (0, 2, 3, 1), 32, 2.0),
])
@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
def test_group_norm_channels_last_view(shape, order, groups, offset, dtype, isa, rng, tol):
    # computed in memory order (column statistics merged per group, then a column affine),
    # so no copy to C order and back; the result keeps x's layout
    x = random_data(rng, shape, dtype, offset=offset)
    c = shape[1]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    view = in_memory_order(x, order)
    before = view.copy()
    got = fastnorm.group_norm(view, groups, w, b)
    np.testing.assert_array_equal(view, before, err_msg="input was modified")
    assert got.strides == view.strides and got.dtype == x.dtype
    assert_close(got, ref_group_norm(x, groups, w, b), tol)
    if dtype in FULL_DTYPES:  # within rounding of the C-order call
        assert_close(got, fastnorm.group_norm(np.ascontiguousarray(x), groups, w, b), tol)
    if groups == c:
        assert_same_bits(fastnorm.instance_norm(view, w, b), got)


def test_group_norm_channels_last_view_shifted_and_nan(isa, rng, tol):
    # sums about each column's values keep float32 data far from 0 exact; a NaN poisons
    # only its (sample, group)
    x = random_data(rng, (3, 8, 6, 5), np.float32, offset=1e4)
    view = in_memory_order(x, (0, 2, 3, 1))
    assert_close(fastnorm.group_norm(view, 4), ref_group_norm(x, 4), tol)
    clean = fastnorm.group_norm(view, 4)
    view[1, 5, 2, 3] = np.nan  # sample 1, group 2 (channels 4 and 5)
    y = fastnorm.group_norm(view, 4)
    poisoned = np.zeros(x.shape, bool)
    poisoned[1, 4:6] = True
    assert np.isnan(y[poisoned]).all()
    np.testing.assert_array_equal(y[~poisoned], clean[~poisoned])


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("shape, order, kw, norm_shape", [
    ((5, 7, 33), (1, 0, 2), {}, (33,)), ((4, 3, 6, 16), (2, 0, 1, 3), {}, (16,)),
    ((4, 3, 6, 16), (1, 0, 2, 3), {"normalized_shape": (6, 16)}, (6, 16)),
    ((6, 4, 20), (1, 0, 2), {"axis": -1}, (20,)),
    ((3, 4, 5, 16), (1, 0, 2, 3), {"axis": (2, 3)}, (5, 16)),
])
@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
def test_row_norm_rows_in_another_order(op, shape, order, kw, norm_shape, dtype, isa, rng):
    x = random_data(rng, shape, dtype, offset=1.0)
    kw = dict(kw)
    ns = kw.pop("normalized_shape", None)
    w = random_data(rng, norm_shape, np.float64 if dtype == np.float64 else np.float32, 1.0)
    b = random_data(rng, norm_shape, w.dtype) if op == "layer_norm" else None
    view = in_memory_order(x, order)
    got = row_norm(op, view, ns, w, b, return_stats=True, **kw)
    want = row_norm(op, x, ns, w, b, return_stats=True, **kw)
    assert got[0].strides == view.strides  # x's layout kept
    for g, w_ in zip(got, want):
        if w_ is not None:
            assert_same_bits(g, w_)


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("dtype", (np.float32, np.float16))
def test_row_norm_rows_in_another_order_with_residual_and_out(op, dtype, isa, rng):
    order = (1, 0, 2)
    x, res = (random_data(rng, (5, 7, 40), dtype, offset=1.0) for _ in range(2))
    want_h = (x.astype(np.float32) + res.astype(np.float32)).astype(dtype)
    want = row_norm(op, x, residual=res)
    view, res_view = in_memory_order(x, order), in_memory_order(res, order)
    out, h = (in_memory_order(sentinel(x.shape, dtype), order) for _ in range(2))
    assert row_norm(op, view, residual=res_view, residual_out=h, out=out) is out
    assert_same_bits(out, want)
    assert_same_bits(h, want_h)
    # in place, as in a pre-norm transformer block: h into the residual, y into x
    assert row_norm(op, view, residual=res_view, residual_out=res_view, out=view) is view
    assert_same_bits(view, want)
    assert_same_bits(res_view, want_h)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_byte_swapped_input_gives_the_native_result(dtype, isa, rng):
    # computed in native order; the result is native, as NumPy's ufuncs give (docs/api.md)
    x = random_data(rng, (4, 6, 9), dtype, offset=3.0)
    swapped = x.astype(np.dtype(dtype).newbyteorder())
    assert not swapped.dtype.isnative
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
    calls = {
        "layer_norm": lambda f, a: f.layer_norm(a),
        "rms_norm": lambda f, a: f.rms_norm(a),
        "batch_norm": lambda f, a: f.batch_norm(a, rm, rv, training=True),
        "group_norm": lambda f, a: f.group_norm(a, 3),
    }
    for name, call in calls.items():
        for module in (fastnorm, fastnorm.reference):
            got = call(module, swapped)
            assert got.dtype == np.dtype(dtype), (name, module.__name__, got.dtype)
            assert_same_bits(got, call(module, x), err_msg=f"{module.__name__}.{name}")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "batch_norm"])
def test_byte_swapped_out_and_in_place(op, isa, rng):
    # out= of the input's own byte-swapped dtype, out=x in place, and (row norms) the
    # residual and residual_out byte-swapped too: the same values as the native call
    x = random_data(rng, (4, 6, 9), np.float32, offset=3.0)
    r = random_data(rng, (4, 6, 9), np.float32)
    swap = np.dtype(np.float32).newbyteorder()
    kw = {"training": True} if op == "batch_norm" else {}
    want = getattr(fastnorm, op)(x, **kw)
    xs = x.astype(swap)
    y = getattr(fastnorm, op)(xs, out=xs, **kw)
    assert y is xs and xs.dtype == swap
    assert_same_bits(xs.astype(np.float32), want)
    if op != "batch_norm":
        h = np.empty_like(xs)
        y = getattr(fastnorm, op)(x.astype(swap), residual=r.astype(swap), residual_out=h)
        assert_same_bits(y, getattr(fastnorm, op)(x, residual=r))
        assert_same_bits(h.astype(np.float32), (x + r).astype(np.float32))


# ---- the tiled copy between layouts (_core.copy) -----------------------------------


def _copy_cases(rng, dtype, scale):
    """Views of every kind the copy must take: each transpose of a 3-D array whose sizes
    are no multiple of a tile, sliced and reversed transposes, a broadcast axis, size-1
    axes, and the 4-D layouts users pass (Fortran order, channels-last).  scale > 1 makes
    most of them large enough for two threads (FN_PARALLEL_MIN_ELEMENTS, 32768 items),
    which share out the planes, or cut a lone plane or an odd number of them in two."""
    base = random_data(rng, (5, 19 * scale, 37), dtype)
    for order in itertools.permutations(range(3)):
        yield f"transpose {order}", in_memory_order(base, order)
    big = np.asfortranarray(random_data(rng, (40 * scale, 70 * scale), dtype))
    yield "fortran sliced", big[3:37 * scale:2, 1:]
    yield "fortran reversed", big[::-1, ::-3]
    # rows of 4 KB: in Fortran order its columns' lines share cache sets (walk_dst)
    yield "4 KB rows", random_data(rng, (4096 // np.dtype(dtype).itemsize, 37 * scale), dtype)
    yield "broadcast rows", np.broadcast_to(base[0, 0], (33 * scale, 37))
    yield "size-1 axes", np.asfortranarray(random_data(rng, (1, 30 * scale, 1, 20 * scale), dtype))
    yield "fortran 4-D", np.asfortranarray(random_data(rng, (3, 4, 17 * scale, 18), dtype))
    yield "channels-last", in_memory_order(random_data(rng, (2, 20 * scale, 5, 18), dtype),
                                           (0, 2, 3, 1))


@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_threads, scale", [(1, 1), (2, 10)])
def test_copy_between_layouts_gives_numpys_copy(dtype, n_threads, scale, rng):
    for name, view in _copy_cases(rng, dtype, scale):
        want = np.ascontiguousarray(view)
        into_c = np.empty(view.shape, view.dtype)
        fastnorm._core.copy(view, into_c, n_threads)
        assert_same_bits(into_c, want, err_msg=f"{name} into C order")
        for order in [tuple(reversed(range(view.ndim))), (1, 0) + tuple(range(2, view.ndim))]:
            back = in_memory_order(np.zeros(view.shape, view.dtype), order)
            fastnorm._core.copy(view, back, n_threads)  # and into other transposes
            assert_same_bits(np.ascontiguousarray(back), want, err_msg=f"{name} into {order}")


def _placed(shape, dtype, order, offset_items):
    """A zeroed array of `shape` in `order` ("C" or "F"), starting `offset_items` items into
    its buffer, so that it sits elsewhere than NumPy puts it relative to a cache line."""
    size = int(np.prod(shape))
    flat = np.zeros(size + 32, dtype)[offset_items:offset_items + size]
    return flat.reshape(shape) if order == "C" else flat.reshape(shape[::-1]).T


@pytest.mark.parametrize("dtype", FULL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("direction", ["fortran into C", "C into fortran"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_copy_of_a_large_transpose_at_every_place_on_a_line(dtype, direction, n_threads, rng):
    # From _core.stream_min_bytes(), with rows of dst a whole number of lines, the tiles
    # stream from dst's first cache line on, the items before it and the partial tiles at
    # the edges apart: every offset of dst on a line, sizes that are no multiple of a tile.
    itemsize = np.dtype(dtype).itemsize
    line_items = 4160 // itemsize  # 65 lines: dst's rows each a whole number of them
    long = fastnorm._core.stream_min_bytes() // (line_items * itemsize) + 3
    shape = (long, line_items) if direction == "fortran into C" else (line_items, long)
    x = random_data(rng, shape, dtype)
    src = np.asfortranarray(x) if direction == "fortran into C" else x
    for offset in range(0, 64 // itemsize, 3):
        dst = _placed(x.shape, dtype, "C" if direction == "fortran into C" else "F", offset)
        fastnorm._core.copy(src, dst, n_threads)
        assert_same_bits(dst, x, err_msg=f"dst {offset} items into its buffer")


def test_copy_into_and_from_misaligned_items(rng):
    # float32 items 2 bytes off their alignment: the blocks' unaligned loads and stores
    buf = np.zeros(40 * 70 * 4 * 2 + 8, np.uint8)
    x = random_data(rng, (40, 70), np.float32)
    src = np.frombuffer(buf.data, np.float32, x.size, offset=2).reshape(70, 40).T
    src[...] = x
    dst = np.frombuffer(buf.data, np.float32, x.size, offset=2 + x.nbytes + 4).reshape(40, 70)
    fastnorm._core.copy(src, dst, 1)
    assert_same_bits(dst, x)


def test_copy_refuses_what_it_cannot_copy():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="fastnorm_copy_strided: unsupported dtype"):
        fastnorm._core.copy(x.astype(np.int8).T, np.zeros((3, 4), np.int8), 1)
    with pytest.raises(ValueError, match="differ in shape or item size"):
        fastnorm._core.copy(x, np.zeros((3, 4), np.float32), 1)
    with pytest.raises(ValueError, match="differ in shape or item size"):
        fastnorm._core.copy(x, np.zeros((4, 3), np.float64), 1)
    with pytest.raises(ValueError, match="read-only"):
        fastnorm._core.copy(x, np.broadcast_to(np.float32(1), (4, 3)), 1)
    with pytest.raises(ValueError, match="bad stride"):
        fastnorm._core.copy(
            x, np.lib.stride_tricks.as_strided(np.zeros(3, np.float32), (4, 3), (0, 4)), 1)
    with pytest.raises(ValueError, match="1 to 64 dimensions"):
        fastnorm._core.copy(np.zeros((), np.float32), np.zeros((), np.float32), 1)
    with pytest.raises(TypeError, match="expected NumPy arrays"):
        fastnorm._core.copy([1.0, 2.0], np.zeros(2), 1)


@pytest.fixture
def tiled_copies(monkeypatch):
    """The shapes of the copies that went through _core.copy."""
    copies = []
    copy = fastnorm._core.copy
    monkeypatch.setattr(fastnorm._core, "copy",
                        lambda s, d, n: copies.append(s.shape) or copy(s, d, n))
    return copies


def _fortran(x):
    return np.asfortranarray(x)


def _channels_last(x):
    return in_memory_order(x, (0, 2, 3, 1))


# (call, input shape, layout) where the input is copied to C order; batch_norm, group_norm
# and moments take channels-last views as they are (test_batch_norm_channels_last_...)
_TILED_CASES = {
    "layer_norm fortran": (lambda v: fastnorm.layer_norm(v, return_stats=True), (40, 48), _fortran),
    "rms_norm fortran": (lambda v: fastnorm.rms_norm(v, return_stats=True), (40, 48), _fortran),
    "batch_norm fortran": (lambda v: fastnorm.batch_norm(v, None, None, training=True,
                                                         return_stats=True), (40, 48), _fortran),
    "moments fortran": (lambda v: fastnorm.moments(v, axis=0), (40, 48), _fortran),
    "group_norm fortran": (lambda v: fastnorm.group_norm(v, 4), (16, 8, 5, 20), _fortran),
    "layer_norm channels-last": (lambda v: fastnorm.layer_norm(v), (3, 16, 5, 20), _channels_last),
    "rms_norm channels-last": (lambda v: fastnorm.rms_norm(v, axis=(1, 2, 3)), (3, 16, 5, 20),
                               _channels_last),
    "layer_norm_backward fortran": (
        lambda v: fastnorm.layer_norm_backward(v, v, np.zeros(40, v.dtype), np.ones(40, v.dtype)),
        (40, 48), _fortran),
}


@pytest.mark.parametrize("case", list(_TILED_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_inputs_are_copied_in_tiles_with_the_c_order_bits(case, dtype, isa, rng,
                                                                      tiled_copies):
    call, shape, layout = _TILED_CASES[case]
    x = random_data(rng, shape, dtype)
    want = call(x)
    assert tiled_copies == []
    view = layout(x)
    got = call(view)
    assert tiled_copies and set(tiled_copies) == {view.shape}
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert (g is None) == (w is None)
        if w is not None:
            assert_same_bits(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "batch_norm"])
def test_transposed_out_is_written_in_tiles(op, isa, rng, tiled_copies):
    # a Fortran-order x into a Fortran-order out (and in place): copied in and out in tiles
    x = random_data(rng, (40, 48), np.float32)
    call = {"layer_norm": lambda v, **k: fastnorm.layer_norm(v, **k),
            "rms_norm": lambda v, **k: fastnorm.rms_norm(v, **k),
            "batch_norm": lambda v, **k: fastnorm.batch_norm(v, None, None, training=True, **k)}[op]
    want = call(x)
    out = np.asfortranarray(np.zeros_like(x))
    assert call(np.asfortranarray(x), out=out) is out
    assert tiled_copies == [x.shape, x.shape]
    assert_same_bits(out, want)
    same = np.asfortranarray(x)
    assert call(same, out=same) is same
    assert_same_bits(same, want)


def test_short_axes_stay_with_numpys_copy(rng, tiled_copies):
    # 3 channels: the tiles would be shorter than a cache line, and NumPy's copy was faster
    x = random_data(rng, (2, 3, 8, 40), np.float32)
    got = fastnorm.rms_norm(in_memory_order(x, (0, 2, 3, 1)), axis=(1, 2, 3))
    assert tiled_copies == []
    assert_same_bits(got, fastnorm.rms_norm(x, axis=(1, 2, 3)))
