"""Fused residual add (issue 5): norm(x + residual) in one pass, h = x + residual rounded.

The fused call must equal the unfused `norm(x + residual)` bit for bit in every dtype
(NumPy's own x + residual in x.dtype is the correctly rounded sum, as the contract's h),
residual_out must receive that h, and residual_out / out may alias x or residual.
"""
import numpy as np
import pytest

import fastnorm
from fn_testutil import (BF16, F16, F32, F64, LAYOUTS, STRADDLE_LENGTHS, as_layout,
                         assert_same_bits, half_support_reason, random_data,
                         residual_support_reason, sentinel)

_REASON = residual_support_reason()
if _REASON:
    pytest.skip(f"residual= not implemented yet: {_REASON}", allow_module_level=True)

_HALF_REASON = half_support_reason()
DTYPES = [F32, F64] + ([] if _HALF_REASON else [F16, BF16])

pytestmark = [pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name),
              pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])]


def _call(op, x, *args, **kw):
    return getattr(fastnorm, op)(x, *args, **kw)


def _h(x, r):
    """The contract's h: x + residual rounded to x.dtype."""
    with np.errstate(all="ignore"):
        return (np.asarray(x) + np.asarray(r)).astype(x.dtype)


def _pair(rng, shape, dtype):
    return (random_data(rng, shape, dtype, offset=0.5),
            random_data(rng, shape, dtype, offset=-0.25, scale=0.7))


def test_fused_equals_unfused_every_length(dtype, op, isa, rng):
    for n in STRADDLE_LENGTHS:
        x, r = _pair(rng, (3, n), dtype)
        w = random_data(rng, n, dtype, offset=1.0)
        args = (None, w, random_data(rng, n, dtype)) if op == "layer_norm" else (None, w)
        fused = _call(op, x, *args, residual=r)
        assert_same_bits(fused, _call(op, _h(x, r), *args), err_msg=f"{op} n={n}")


def test_fused_equals_unfused_large(dtype, op, isa, rng):
    x, r = _pair(rng, (64, 4096), dtype)
    assert_same_bits(_call(op, x, residual=r), _call(op, _h(x, r)))
    x, r = _pair(rng, (1, 1 << 20), dtype)
    assert_same_bits(_call(op, x, residual=r), _call(op, _h(x, r)))


def test_residual_out_receives_h(dtype, op, isa, rng):
    x, r = _pair(rng, (5, 4, 37), dtype)
    x0, r0 = x.copy(), r.copy()
    h_out = sentinel(x.shape, dtype, value=-7.0)
    y = _call(op, x, (4, 37), residual=r, residual_out=h_out)
    assert_same_bits(h_out, _h(x0, r0))
    assert_same_bits(y, _call(op, _h(x0, r0), (4, 37)))
    assert_same_bits(x, x0)  # inputs untouched
    assert_same_bits(r, r0)


def test_return_stats_are_those_of_h(dtype, op, isa, rng):
    # (64, 1000): whole blocks of the statistics loop in every row, each of which may round
    # rstd differently if the fused loop summed other groupings of the values
    for shape in [(6, 50), (64, 1000)]:
        x, r = _pair(rng, shape, dtype)
        fused = _call(op, x, residual=r, return_stats=True)
        unfused = _call(op, _h(x, r), return_stats=True)
        for a, b in zip(fused, unfused):
            assert_same_bits(a, b, err_msg=f"{shape}")


@pytest.mark.parametrize("alias", ["residual_out=x", "residual_out=residual", "out=x",
                                   "out=residual", "out=x, residual_out=residual",
                                   "out=residual, residual_out=x"])
# (20, 40000): rows longer than a segment, taken a batch of rows at a time (api_norm.c's
# fn_norm_long_rows), several batches in every dtype.  (9, 4100) with LayerNorm's weight
# and bias: rows normalized in groups, a block of columns at a time across the group
# (api_norm.c's fn_norm_row_group), whose statistics all run before the group's first write.
# (37, 30): rows of a few vectors (rows_short), a block of 16 (AVX-512: 32) rows at a time
# read three times, the last block 5 rows.
@pytest.mark.parametrize("shape", [(37, 30), (8, 300), (20, 40000), (9, 4100)],
                         ids=["rows of a few vectors", "short rows", "long rows", "grouped rows"])
def test_aliasing(dtype, op, alias, shape, isa, rng):
    x, r = _pair(rng, shape, dtype)
    affine = ()
    if shape == (9, 4100) and op == "layer_norm":
        affine = (None, random_data(rng, shape[1], dtype, offset=1.0),
                  random_data(rng, shape[1], dtype))
    want_y, want_h = _call(op, _h(x, r), *affine), _h(x, r)
    kw = {}
    for part in alias.split(", "):
        name, target = part.split("=")
        kw[name] = x if target == "x" else r
    result = _call(op, x, *affine, residual=r, **kw)
    assert_same_bits(result, want_y, err_msg=alias)
    if "out" in kw:
        assert result is kw["out"]
        assert_same_bits(kw["out"], want_y, err_msg=alias)
    if "residual_out" in kw:
        assert_same_bits(kw["residual_out"], want_h, err_msg=alias)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(dtype, op, layout, isa, rng):
    x, r = _pair(rng, (4, 6, 33), dtype)
    want_y, want_h = _call(op, _h(x, r)), _h(x, r)
    h_out = as_layout(sentinel(x.shape, dtype), layout)
    y = _call(op, as_layout(x, layout), residual=as_layout(r, layout), residual_out=h_out)
    np.testing.assert_array_equal(y.astype(np.float64), want_y.astype(np.float64))
    np.testing.assert_array_equal(h_out.astype(np.float64), want_h.astype(np.float64))
    # In place in a non-contiguous layout: the pre-norm transformer pattern.
    xv, rv = as_layout(x, layout), as_layout(r, layout)
    _call(op, xv, residual=rv, residual_out=rv, out=xv)
    np.testing.assert_array_equal(xv.astype(np.float64), want_y.astype(np.float64))
    np.testing.assert_array_equal(rv.astype(np.float64), want_h.astype(np.float64))


@pytest.mark.parametrize("axis", [1, (1, 3), -1])
def test_with_axis(dtype, op, axis, isa, rng):
    x, r = _pair(rng, (2, 8, 5, 7), dtype)
    h_out = np.empty_like(x)
    got = _call(op, x, axis=axis, residual=r, residual_out=h_out)
    assert_same_bits(got, _call(op, _h(x, r), axis=axis))
    assert_same_bits(h_out, _h(x, r))


def test_nan_in_residual_poisons_only_its_row(dtype, op, isa, rng):
    x, r = _pair(rng, (4, 40), dtype)
    r[2, 5] = np.nan
    y = _call(op, x, residual=r)
    assert np.isnan(y[2].astype(np.float64)).all()
    assert_same_bits(y[[0, 1, 3]], _call(op, _h(x[[0, 1, 3]], r[[0, 1, 3]])))


def test_residual_out_keeps_every_nan_and_infinity(dtype, op, isa, rng):
    # h = x + residual rounds without a NaN test on AVX2 bfloat16 (a sum of two values of
    # the dtype has no NaN payload in its low bits): every NaN pattern of the dtype, and
    # inf + -inf, must still give a NaN in residual_out, and inf + finite an infinity.
    n = 64
    if dtype.itemsize == 2:
        bits = np.arange(1 << 16, dtype=np.uint16).view(dtype)
        nans = bits[np.isnan(bits.astype(np.float32))]
    else:
        nans = np.array([np.nan, -np.nan], dtype)
    x, r = _pair(rng, (nans.size + 2, n), dtype)
    x[np.arange(nans.size), np.arange(nans.size) % n] = nans
    x[-2, 7], r[-2, 7] = np.inf, -np.inf
    x[-1, 9] = -np.inf
    h = sentinel(x.shape, dtype)
    _call(op, x, residual=r, residual_out=h)
    want = _h(x, r)
    h64, want64 = h.astype(np.float64), want.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(h64), np.isnan(want64))
    finite = ~np.isnan(want64)
    np.testing.assert_array_equal(h64[finite], want64[finite])
    assert np.isneginf(h64[-1, 9])


# --------------------------------------------------------------------- errors ---


def _check_nothing_written(op, x, r, **kw):
    """The call raises ValueError and leaves x, residual, out and residual_out as they were."""
    kw.setdefault("out", sentinel(x.shape, x.dtype))
    before = {"x": x.copy(), "residual": r.copy(), **{k: v.copy() for k, v in kw.items()}}
    with pytest.raises(ValueError):
        _call(op, x, residual=r, **kw)
    after = {"x": x, "residual": r, **kw}
    for name, value in before.items():
        assert_same_bits(after[name], value, err_msg=f"{name} was written")


def test_residual_out_without_residual_raises(dtype, op, isa, rng):
    x = random_data(rng, (3, 16), dtype)
    x0 = x.copy()
    h_out = sentinel(x.shape, dtype)
    out = sentinel(x.shape, dtype)
    with pytest.raises(ValueError):
        _call(op, x, residual_out=h_out, out=out)
    assert_same_bits(h_out, sentinel(x.shape, dtype))
    assert_same_bits(out, sentinel(x.shape, dtype))
    assert_same_bits(x, x0)


def test_residual_out_same_as_out_raises(dtype, op, isa, rng):
    x, r = _pair(rng, (3, 16), dtype)
    shared = sentinel(x.shape, dtype)
    _check_nothing_written(op, x, r, out=shared, residual_out=shared)


@pytest.mark.parametrize("case", ["residual wrong shape", "residual wrong dtype",
                                  "residual_out wrong shape", "residual_out wrong dtype",
                                  "residual_out read-only"])
def test_bad_residual_arguments_raise(dtype, op, case, isa, rng):
    x, r = _pair(rng, (3, 16), dtype)
    other = F64 if dtype != F64 else F32
    kw = {}
    if case == "residual wrong shape":
        r = r[:, :8].copy()
    elif case == "residual wrong dtype":
        r = r.astype(other)
    elif case == "residual_out wrong shape":
        kw["residual_out"] = sentinel((3, 15), dtype)
    elif case == "residual_out wrong dtype":
        kw["residual_out"] = sentinel(x.shape, other)
    else:
        ro = sentinel(x.shape, dtype)
        ro.flags.writeable = False
        kw["residual_out"] = ro
    _check_nothing_written(op, x, r, **kw)
