"""float16 and bfloat16 (issue 5): float32 accumulation, one rounding on store.

- Results are within one half-precision step (ulp) of the float64 reference computed from
  the same half-precision input and rounded once to the half dtype.
- Load and store are exact and round to nearest even: all 65536 bit patterns of each type
  go through batch_norm eval with an identity (and with exact power-of-two / shifted)
  affine map, whose float32 result is known exactly.
"""
import numpy as np
import pytest

import fastnorm
from fastnorm import reference
from fn_testutil import (BF16, F32, HALF_DTYPES, LAYOUTS, STRADDLE_LENGTHS, as_layout,
                         assert_same_bits,
                         half_support_reason, import_torch, random_data, sentinel,
                         ulp_distance_half)

_REASON = half_support_reason()
if _REASON:
    pytest.skip(f"half dtypes not implemented yet: {_REASON}", allow_module_level=True)

pytestmark = pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: d.name)

# Near zero, float32 noise of the O(1) terms of w * n + b (~1e-7) can be several half
# steps; that is the accumulator's rounding, not the store's.
NEAR_ZERO_ATOL = 1e-6


def assert_within_one_half_ulp(got, want, err_msg=""):
    """got (half) within one step of want (the float64 reference rounded to half)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want.astype(np.float64))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float64)), nan, err_msg=err_msg)
    steps = ulp_distance_half(got, want)
    close = np.abs(got.astype(np.float64) - want.astype(np.float64)) <= NEAR_ZERO_ATOL
    bad = ~nan & (steps > 1) & ~close
    assert not bad.any(), (f"{err_msg}: {bad.sum()} values more than one step off, worst "
                           f"{steps[bad].max()} steps, e.g. got {got[bad][:4]} want "
                           f"{want[bad][:4]}")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("param_dtype", ["float32", "same"])
def test_row_norms_every_length(dtype, op, param_dtype, isa, rng):
    pdtype = dtype if param_dtype == "same" else F32
    for n in STRADDLE_LENGTHS:
        x = random_data(rng, (3, n), dtype, offset=0.5)
        w = random_data(rng, n, pdtype, offset=1.0, scale=0.5)
        b = random_data(rng, n, pdtype)
        args = (w, b) if op == "layer_norm" else (w,)
        y = getattr(fastnorm, op)(x, None, *args)
        assert y.dtype == dtype and y.shape == x.shape
        want = getattr(reference, op)(x, None, *args)
        assert_within_one_half_ulp(y, want, f"{op} n={n}")
        y0 = getattr(fastnorm, op)(x)
        assert_within_one_half_ulp(y0, getattr(reference, op)(x), f"{op} n={n} no affine")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("offset", [0.0, 30.0, 1000.0])
def test_row_norms_shifted_and_long(dtype, op, offset, isa, rng):
    x = random_data(rng, (4, 4096), dtype, offset=offset)
    assert_within_one_half_ulp(getattr(fastnorm, op)(x), getattr(reference, op)(x), op)
    x = random_data(rng, (1, 1 << 20), dtype, offset=offset)
    assert_within_one_half_ulp(getattr(fastnorm, op)(x), getattr(reference, op)(x), op)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "residual"])
def test_rms_norm_of_tiny_rows_with_eps_zero(dtype, fused, isa, rng):
    # bfloat16 values near 2^-66 have squares near 2^-132, float32 denormals, which the
    # AVX512-BF16 dot product of RMSNorm's statistics flushes to zero (kernel_body.h's
    # KB_SQUARES): such rows must be summed again by FMAs, or with eps = 0 rstd is
    # infinite.  Rows of whole statistics blocks, the fused residual's too.  float16
    # cannot hold such values; its smallest ones take the same test.
    scale = 2.0**-66 if dtype == BF16 else 2.0**-20
    x = (rng.standard_normal((4, 768)) * scale).astype(dtype)
    r = (rng.standard_normal((4, 768)) * scale).astype(dtype)
    w = random_data(rng, 768, F32, offset=1.0, scale=0.5)
    h = (x.astype(np.float32) + r.astype(np.float32)).astype(dtype) if fused else x
    y = fastnorm.rms_norm(x, None, w, 0.0, residual=r) if fused else fastnorm.rms_norm(x, None, w, 0.0)
    assert_within_one_half_ulp(y, reference.rms_norm(h, None, w, 0.0), f"scale {scale}")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_norms_axis(dtype, op, isa, rng):
    x = random_data(rng, (3, 16, 5, 7), dtype, offset=-1.0)
    for axis in (1, (1, 3), -1):
        assert_within_one_half_ulp(getattr(fastnorm, op)(x, axis=axis),
                                   getattr(reference, op)(x, axis=axis), f"axis={axis}")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_return_stats_are_float32(dtype, op, isa, rng):
    x = random_data(rng, (5, 40), dtype, offset=2.0)
    got = getattr(fastnorm, op)(x, return_stats=True)
    want = getattr(reference, op)(x, return_stats=True)
    for g, w in zip(got[1:], want[1:]):
        assert g.dtype == F32 and g.shape == (5,)
        np.testing.assert_allclose(g, w, rtol=1e-6)


# scale 4 (variance 16): offsets 3.5 and 4.5 put the mean's square just under and over it;
# "tiny": values near 2^-66, whose squares the dot product flushes to zero (as in
# test_rms_norm_of_tiny_rows_with_eps_zero), with eps = 0
@pytest.mark.parametrize("offset, scale", [(0.0, 4.0), (3.5, 4.0), (4.5, 4.0), (100.0, 4.0),
                                           (0.0, "tiny")])
def test_layer_norm_statistics_on_both_sides_of_the_dot_product(dtype, offset, scale, isa,
                                                                rng):
    """The avx512 and avx2 families sum float16 LayerNorm rows about no center, and
    avx512's build with AVX512-BF16 bfloat16 rows by VDPBF16PS, where the mean's square is
    at most the variance and the squares did not flush, and sum the others again about a
    center (kernel_row_stats.h, kb_dot_kept): the statistics stay within 1e-6 of the
    float64 reference either way: in rows without a whole step (n=100, summed about a
    center), with leftover vectors after the steps (n=1000, whose leftovers merge with the
    raw sums), in whole steps and in the segments of a long row; and a residual stored over
    x is what the second sums read."""
    eps = 1e-5
    if scale == "tiny":
        scale, eps = (2.0**-66 if dtype == BF16 else 2.0**-20), 0.0
    for n in (100, 1000, 768, 4096, 1 << 16):
        x = random_data(rng, (4, n), dtype, offset=offset, scale=scale)
        _, mean, rstd = fastnorm.layer_norm(x, eps=eps, return_stats=True)
        _, want_mean, want_rstd = reference.layer_norm(x, eps=eps, return_stats=True)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-6 * scale,
                                   err_msg=f"n={n}")
        np.testing.assert_allclose(rstd, want_rstd, rtol=1e-6, err_msg=f"n={n}")
        r = random_data(rng, (4, n), dtype, scale=scale / 16)
        want = fastnorm.layer_norm((x.astype(F32) + r.astype(F32)).astype(dtype), eps=eps,
                                   return_stats=True)
        got = fastnorm.layer_norm(x, eps=eps, residual=r, residual_out=x, return_stats=True)
        for g, w in zip(got, want):
            assert_same_bits(g, w, f"n={n} fused")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_and_in_place(dtype, op, layout, isa, rng):
    x = random_data(rng, (6, 4, 33), dtype, offset=1.0)
    want = getattr(fastnorm, op)(x)
    view = as_layout(x, layout)
    got = getattr(fastnorm, op)(view)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    out = as_layout(sentinel(x.shape, dtype, value=-3.0), layout)
    assert getattr(fastnorm, op)(x, out=out) is out
    np.testing.assert_array_equal(out.astype(np.float32), want.astype(np.float32))
    assert getattr(fastnorm, op)(view, out=view) is view
    np.testing.assert_array_equal(view.astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("shape, axis", [((8, 16, 9, 9), 1), ((8, 9, 9, 16), -1), ((64, 5), 1),
                                         ((4, 70, 33), 1)])
@pytest.mark.parametrize("training", [False, True])
def test_batch_norm(dtype, shape, axis, training, isa, rng):
    x = random_data(rng, shape, dtype, offset=3.0)
    c = shape[axis]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    rm, rv = np.full(c, 3.0, np.float32), np.full(c, 1.5, np.float32)
    ref_rm, ref_rv = rm.copy(), rv.copy()
    y, mean, rstd = fastnorm.batch_norm(x, rm, rv, w, b, training=training, axis=axis,
                                        return_stats=True)
    want, want_mean, want_rstd = reference.batch_norm(x, ref_rm, ref_rv, w, b,
                                                      training=training, axis=axis,
                                                      return_stats=True)
    assert y.dtype == dtype and mean.dtype == rstd.dtype == F32
    assert_within_one_half_ulp(y, want, f"batch_norm {shape} axis={axis}")
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rstd, want_rstd, rtol=1e-6)
    np.testing.assert_allclose(rm, ref_rm, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, ref_rv, rtol=1e-6)


@pytest.mark.parametrize("shape, groups", [((4, 8, 6, 6), 4), ((2, 6, 70), 3), ((3, 4), 2)])
def test_group_and_instance_norm(dtype, shape, groups, isa, rng):
    x = random_data(rng, shape, dtype, offset=-2.0)
    c = shape[1]
    w, b = random_data(rng, c, dtype, offset=1.0), random_data(rng, c, dtype)
    assert_within_one_half_ulp(fastnorm.group_norm(x, groups, w, b),
                               reference.group_norm(x, groups, w, b), "group_norm")
    if len(shape) > 2:
        assert_within_one_half_ulp(fastnorm.instance_norm(x), reference.instance_norm(x),
                                   "instance_norm")


def test_nan_and_inf_rows(dtype, isa, rng):
    x = random_data(rng, (4, 50), dtype)
    clean = fastnorm.layer_norm(x)
    x[1, 3] = np.nan
    x[2, 7] = np.inf
    y = fastnorm.layer_norm(x)
    assert np.isnan(y[1].astype(np.float32)).all() and np.isnan(y[2].astype(np.float32)).all()
    np.testing.assert_array_equal(y[[0, 3]].view(np.uint16), clean[[0, 3]].view(np.uint16))
    x[3] = 1.5
    b = random_data(rng, 50, dtype)
    np.testing.assert_array_equal(fastnorm.layer_norm(x, None, None, b)[3].view(np.uint16),
                                  b.view(np.uint16))


def _nan_patterns(dtype):
    """Every NaN bit pattern of the half type (both signs, quiet and signaling)."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(dtype)
    return values[np.isnan(values.astype(np.float32))]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_every_nan_input_makes_its_row_nan(dtype, op, isa, rng):
    # AVX2 stores bfloat16 rows without a NaN test when weight and bias hold no NaN
    # (FN_STORE_NAN_CANONICAL): a NaN read from the input must still come out as NaN.
    nans = _nan_patterns(dtype)
    n = 64
    x = random_data(rng, (nans.size, n), dtype)
    x[np.arange(nans.size), np.arange(nans.size) % n] = nans
    w = random_data(rng, n, np.float32, offset=1.0)
    args = ((n,), w, random_data(rng, n, np.float32)) if op == "layer_norm" else ((n,), w)
    y = getattr(fastnorm, op)(x, *args)
    assert np.isnan(y.astype(np.float32)).all()


@pytest.mark.parametrize("rows", [5, 40])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_nan_weight_and_bias_payloads_stay_nan(dtype, op, rows, isa, rng):
    # float32 parameters may carry NaN payloads in their low 16 bits, which rounding to
    # bfloat16 like a number would carry into the sign (0x7fffffff -> -0.0) or round to
    # infinity (0x7f800001): a few rows keep the store's NaN test, many rows have the
    # parameters' NaNs made canonical in the copy the call makes of them.
    n = 64
    x = random_data(rng, (rows, n), dtype)
    payloads = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC08001], np.uint32).view(np.float32)
    w = random_data(rng, n, np.float32, offset=1.0)
    w[[3, 17, 30, 44]] = payloads
    nan = np.isnan(w)
    if op == "layer_norm":
        b = random_data(rng, n, np.float32)
        b[[9, 50]] = payloads[:2]
        nan |= np.isnan(b)
        y = fastnorm.layer_norm(x, (n,), w, b)
    else:
        y = fastnorm.rms_norm(x, (n,), w)
    np.testing.assert_array_equal(np.isnan(y.astype(np.float32)), np.broadcast_to(nan, y.shape))


# ------------------------------------------------- PyTorch in the same half dtype ---


def _to_torch(torch, a):
    if a.dtype == np.float16:
        return torch.from_numpy(a.copy())
    return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)


def _from_torch(torch, t, dtype):
    if dtype == np.float16:
        return t.numpy()
    return t.view(torch.int16).numpy().view(dtype)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("n", [7, 64, 768])
def test_agrees_with_torch_in_the_same_dtype(dtype, op, n, isa, rng):
    torch = import_torch()
    x = random_data(rng, (16, n), dtype, offset=0.5)
    w = random_data(rng, n, dtype, offset=1.0)
    if op == "layer_norm":
        t = torch.nn.functional.layer_norm(_to_torch(torch, x), (n,), _to_torch(torch, w))
        got = fastnorm.layer_norm(x, None, w)
    else:
        t = torch.nn.functional.rms_norm(_to_torch(torch, x), (n,), _to_torch(torch, w))
        got = fastnorm.rms_norm(x, None, w)
    # Both round a float32-accumulated value once: at most one step apart.
    assert_within_one_half_ulp(got, _from_torch(torch, t, dtype), f"torch {op}")


# ----------------------------------------- all 65536 bit patterns through load/store ---

EPS = 2.0 ** -16  # 1 - EPS and EPS are exact in float32, and (1 - EPS) + EPS == 1 exactly


def _all_patterns(dtype):
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)


def _affine_all_patterns(dtype, shape, axis, scale, shift):
    """batch_norm eval of every bit pattern with mean 0, var 1 - EPS, weight scale, bias shift."""
    x = _all_patterns(dtype).reshape(shape)
    c = shape[axis]
    y = fastnorm.batch_norm(x, np.zeros(c, np.float32), np.full(c, 1 - EPS, np.float32),
                            np.full(c, scale, np.float32), np.full(c, shift, np.float32),
                            eps=EPS, axis=axis)
    return x.reshape(-1), y.reshape(-1)


SHAPES = [((1, 1, 1 << 16), 1), ((1 << 12, 16), 1), ((1 << 8, 1 << 8), 0)]


@pytest.mark.parametrize("shape, axis", SHAPES)
def test_every_bit_pattern_loads_and_stores_exactly(dtype, shape, axis, isa):
    x, y = _affine_all_patterns(dtype, shape, axis, 1.0, 0.0)
    xb, yb = x.view(np.uint16), y.view(np.uint16)
    nan = np.isnan(x.astype(np.float32))
    assert np.isnan(y[nan].astype(np.float32)).all(), "NaN must stay NaN"
    zero = (xb & 0x7FFF) == 0
    assert ((yb[zero] & 0x7FFF) == 0).all(), "zero must stay zero (either sign)"
    keep = ~nan & ~zero
    bad = np.flatnonzero(xb[keep] != yb[keep])
    assert bad.size == 0, (f"{bad.size} patterns changed, e.g. x bits "
                           f"{[hex(v) for v in xb[keep][bad[:5]]]} -> "
                           f"{[hex(v) for v in yb[keep][bad[:5]]]}")


@pytest.mark.parametrize("shape, axis", SHAPES)
@pytest.mark.parametrize("scale, shift", [(0.5, 0.0), (0.25, 0.0), (2.0, 0.0),
                                          (1.0, 2.0 ** -11 + 2.0 ** -12), (1.0, 1.0 / 3.0),
                                          (-1.0, 0.0)])
def test_every_bit_pattern_rounds_to_nearest_even(dtype, shape, axis, scale, shift, isa):
    # x * scale (exact in float32: a power of two) + shift rounds once in float32 (also in
    # an FMA, since x * scale is exact), then once to the half type: NumPy / ml_dtypes
    # perform that same float32 -> half conversion with round-to-nearest-even.  Halving
    # odd subnormals and adding 1.5 * 2^-11 produce exact ties.
    x, y = _affine_all_patterns(dtype, shape, axis, scale, shift)
    with np.errstate(all="ignore"):  # overflow to inf in the cast is the expected result
        want = (x.astype(np.float32) * np.float32(scale) + np.float32(shift)).astype(dtype)
    nan = np.isnan(want.astype(np.float32))
    assert np.isnan(y[nan].astype(np.float32)).all()
    yb, wb = y.view(np.uint16)[~nan], want.view(np.uint16)[~nan]
    zero = ((yb & 0x7FFF) == 0) & ((wb & 0x7FFF) == 0)  # sign of an exact zero may differ
    bad = np.flatnonzero((yb != wb) & ~zero)
    assert bad.size == 0, (f"{bad.size} patterns rounded differently, e.g. x="
                           f"{x[~nan][bad[:5]]} got {y[~nan][bad[:5]]} want "
                           f"{want[~nan][bad[:5]]}")


def test_torch_half_tensors_are_taken_as_arrays(dtype, isa, rng):
    # numpy.asarray refuses a bfloat16 tensor (NumPy has no bfloat16); fastnorm takes its
    # exact values as an ml_dtypes array, for x and for the other arrays alike (float16
    # tensors go through numpy.asarray as they are)
    torch = import_torch()
    x = random_data(rng, (4, 40), dtype, offset=2.0)
    r = random_data(rng, (4, 40), dtype)
    w = random_data(rng, 40, dtype, offset=1.0)
    want = fastnorm.layer_norm(x, weight=w, residual=r)
    got = fastnorm.layer_norm(_to_torch(torch, x), weight=_to_torch(torch, w),
                              residual=_to_torch(torch, r))
    assert got.dtype == dtype
    assert_same_bits(got, want)
    xb = random_data(rng, (6, 3, 5), dtype, offset=1.0)
    assert_same_bits(fastnorm.batch_norm(_to_torch(torch, xb), training=True),
                     fastnorm.batch_norm(xb, training=True))
