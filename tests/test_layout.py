"""Any memory layout gives the contiguous result; out= (strided, in place) is honoured.

Layouts: Fortran order, every axis strided, every axis reversed (negative strides), and a
data pointer one byte off alignment.  The result must match the contiguous call (within the
tolerance table: a layout may take another kernel path, e.g. a Fortran 2-D array seen as
a normalization over axis 0) and the input must be left unchanged.
"""
import numpy as np
import pytest

import fastnorm
from fn_testutil import (FULL_DTYPES, LAYOUTS, ROW_OPS, as_layout, assert_close, random_data,
                         ref_batch_norm, ref_group_norm, ref_row_norm, ref_row_norm_axis,
                         row_norm, sentinel)

NON_CONTIGUOUS = tuple(layout for layout in LAYOUTS if layout != "contiguous")


def _check_layout_case(call, x, layout, tol):
    """call(view) on a view in `layout` equals call(contiguous x); the view is untouched."""
    want = call(np.ascontiguousarray(x))
    view = as_layout(x, layout)
    before = view.copy()
    got = call(view)
    np.testing.assert_array_equal(view, before, err_msg="input was modified")
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert_close(g, w, tol, err_msg=f"layout {layout}")


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
def test_row_norm_weight_bias_any_layout(op, layout, isa, rng, tol):
    x = random_data(rng, (5, 6, 7), np.float32)
    w = random_data(rng, (6, 7), np.float32, offset=1.0)
    b = random_data(rng, (6, 7), np.float32) if op == "layer_norm" else None
    want = row_norm(op, x, (6, 7), w, b)
    got = row_norm(op, x, (6, 7), as_layout(w, layout),
                   None if b is None else as_layout(b, layout))
    assert_close(got, want, tol)


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
def test_row_norm_in_place(op, layout, kw, dtype, isa, rng, tol):
    x = random_data(rng, (4, 9, 6), dtype, offset=-1.0)
    kw = dict(kw)
    ns = kw.pop("normalized_shape", None)
    want = row_norm(op, x, ns, **kw)
    x_view = as_layout(x, layout)
    result = row_norm(op, x_view, ns, out=x_view, **kw)
    assert result is x_view
    assert_close(x_view, want, tol, err_msg=f"in place, layout {layout}")


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
