"""layer_norm numerics: eps, constant / NaN / inf rows, shifted-data accuracy, PyTorch."""
import numpy as np
import pytest

import fastnorm
from fn_testutil import (F32, FULL_DTYPES, assert_close, import_torch, random_data,
                         ref_layer_norm)

OFFSETS = (0.0, 1e2, 1e3, 1e4, 1e5)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("eps", [0.0, 1e-12, 0.5, 3.0])
def test_eps_is_used_as_given(dtype, eps, isa, rng, tol):
    # Rows of small variance so eps changes the result visibly.
    x = random_data(rng, (5, 31), dtype, offset=1.0, scale=0.3)
    y = fastnorm.layer_norm(x, eps=eps)
    assert_close(y, ref_layer_norm(x, eps=eps), tol)
    if eps >= 0.5:
        assert not np.allclose(y, fastnorm.layer_norm(x, eps=0.0), rtol=1e-3)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("value", [0.0, 0.1, -3.75, 1e5, 123456.7, 1e-30, -2.5e30])
@pytest.mark.parametrize("n", [1, 7, 33, 4096])
def test_constant_row_gives_exactly_bias(dtype, value, n, isa, rng):
    x = np.full((3, n), value, dtype=dtype)
    x[1] = random_data(rng, n, dtype)  # a normal row in between
    w = random_data(rng, n, dtype, offset=1.0)
    b = random_data(rng, n, dtype)
    y = fastnorm.layer_norm(x, None, w, b)
    np.testing.assert_array_equal(y[0], b)
    np.testing.assert_array_equal(y[2], b)
    y = fastnorm.layer_norm(x, None, w)
    np.testing.assert_array_equal(y[[0, 2]], np.zeros((2, n), dtype))
    _, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    assert mean[0] == np.asarray(value, dtype)
    np.testing.assert_allclose(rstd[0], 1 / np.sqrt(1e-5), rtol=1e-6)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("n", [1, 8, 33])
def test_constant_row_with_eps_zero_is_nan(dtype, n, isa, rng):
    x = random_data(rng, (3, n), dtype, offset=4.0)
    x[1] = 2.5
    y = fastnorm.layer_norm(x, None, np.ones(n, dtype), np.zeros(n, dtype), eps=0.0)
    assert np.isnan(y[1]).all()
    if n > 1:
        assert np.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n", [1, 5, 16, 67, 4096])
def test_nan_or_inf_poisons_only_its_row(dtype, bad, n, isa, rng):
    x = random_data(rng, (4, n), dtype)
    clean = fastnorm.layer_norm(x, None, np.full(n, 2.0, dtype), np.ones(n, dtype))
    x[2, n // 2] = bad
    y = fastnorm.layer_norm(x, None, np.full(n, 2.0, dtype), np.ones(n, dtype))
    assert np.isnan(y[2]).all(), f"row holding {bad} should be all NaN: {y[2][:8]}"
    np.testing.assert_array_equal(y[[0, 1, 3]], clean[[0, 1, 3]])
    _, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    assert np.isfinite(mean[[0, 1, 3]]).all() and np.isfinite(rstd[[0, 1, 3]]).all()


def test_nan_poisons_only_its_group_with_axis(isa, rng):
    # axis=1 on NCHW: the group is one (n, h, w) position across channels.
    x = random_data(rng, (2, 8, 3, 5), np.float32)
    clean = fastnorm.layer_norm(x, axis=1)
    x[1, 4, 2, 3] = np.nan
    y = fastnorm.layer_norm(x, axis=1)
    poisoned = np.zeros(x.shape, bool)
    poisoned[1, :, 2, 3] = True
    assert np.isnan(y[poisoned]).all()
    np.testing.assert_array_equal(y[~poisoned], clean[~poisoned])


@pytest.mark.parametrize("offset", OFFSETS)
def test_float32_accuracy_on_shifted_rows(offset, isa, rng, accuracy_log):
    """Issue 2: float32 within 1e-6 (max abs) of float64 on 4096-wide offset + N(0,1)."""
    x = random_data(rng, (64, 4096), np.float32, offset=offset)
    y = fastnorm.layer_norm(x)
    err = float(np.max(np.abs(y - ref_layer_norm(x))))
    accuracy_log(f"layer_norm f32 offset={offset:g} max_abs_err", err)
    assert err <= 1e-6, f"layer_norm float32 at offset {offset:g}: max abs error {err:.3e}"


@pytest.mark.parametrize("offset", OFFSETS)
def test_float32_accuracy_on_shifted_rows_with_affine(offset, isa, rng, tol):
    x = random_data(rng, (16, 4096), np.float32, offset=offset)
    w = random_data(rng, 4096, np.float32, offset=1.0)
    b = random_data(rng, 4096, np.float32)
    assert_close(fastnorm.layer_norm(x, None, w, b), ref_layer_norm(x, None, w, b), tol)


@pytest.mark.parametrize("offset", OFFSETS)
def test_float32_statistics_on_shifted_rows(offset, isa, rng):
    x = random_data(rng, (16, 4096), np.float32, offset=offset)
    _, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    _, ref_mean, ref_rstd = ref_layer_norm(x, return_stats=True)
    # Stored as float32: one rounding of the float64 value (rtol), plus float32-lane
    # summation noise of about one float32 ulp of the unit-spread deviations (atol).
    np.testing.assert_allclose(mean, ref_mean, rtol=2.0**-23, atol=2.0**-22)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=2.0**-22)


@pytest.mark.parametrize("n", [768, 1000, 5000])
@pytest.mark.parametrize("lead", [1, 8, 16, 64, 128, 200])
def test_float32_statistics_when_the_first_values_stand_apart(n, lead, isa, rng):
    """The row statistics sum deviations from a center taken from the first values and
    moved to the running mean as they go.  Rows whose first `lead` values sit 1000 spreads
    above the rest (1e4 + N(0, 1)), filling the first step of a lane in each family, must
    still give float64's mean and rstd: within 2 ** -21 (Welford's worst here was 3.6e-7,
    one lane's sums without their early recenter 6e-7)."""
    x = random_data(rng, (8, n), np.float32, offset=1e4)
    x[:, :lead] += np.float32(1000)
    _, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    _, ref_mean, ref_rstd = ref_layer_norm(x, return_stats=True)
    np.testing.assert_allclose(mean, ref_mean, rtol=2.0**-23, atol=2.0**-22)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=2.0**-21)


@pytest.mark.parametrize("n", [1, 2, 16, 49, 64, 100, 128, 129, 200, 201, 256, 257])
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("lead", [0, 1, 8])
def test_float32_short_rows_on_shifted_data(n, offset, lead, isa, rng):
    """Rows of up to 200 values (AVX2) or 256 (AVX-512) are normalized a block at a time
    (rows_short), their mean and variance in two passes over the row.  Offset data, also with the first `lead`
    values 1000 spreads above the rest, give y within 8 float32 ulps of float64 (of
    max(|y|, 1); the scalar family's long-row path reaches 5.5 here, rows_short 2.1), mean
    and rstd within 2 ** -21, which a center taken from the first value alone broke (mean
    off by 2.6e-6)."""
    x = random_data(rng, (300, n), np.float32, offset=offset)
    x[:, :lead] += np.float32(1000)
    y, mean, rstd = fastnorm.layer_norm(x, return_stats=True)
    want, ref_mean, ref_rstd = ref_layer_norm(x, return_stats=True)
    ulp = np.spacing(np.maximum(np.abs(want), 1).astype(np.float32)).astype(np.float64)
    assert float(np.max(np.abs(y - want) / ulp)) <= 8
    np.testing.assert_allclose(mean, ref_mean, rtol=2.0**-21, atol=2.0**-22)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=2.0**-21)


@pytest.mark.parametrize("shape", [(8, 768), (3, 5, 64), (2, 4096), (16, 7)])
@pytest.mark.parametrize("with_affine", [False, True])
def test_agrees_with_torch(shape, with_affine, isa, rng, tol):
    torch = import_torch()
    F = torch.nn.functional
    x = random_data(rng, shape, np.float32, offset=0.3)
    n = shape[-1]
    w = random_data(rng, n, np.float32, offset=1.0) if with_affine else None
    b = random_data(rng, n, np.float32) if with_affine else None
    got = fastnorm.layer_norm(x, None, w, b, 1e-5)
    want = F.layer_norm(torch.from_numpy(x), (n,),
                        None if w is None else torch.from_numpy(w),
                        None if b is None else torch.from_numpy(b), 1e-5).numpy()
    # Each is within tol of the exact value, so within 2 * tol of each other.
    t = tol[F32]
    np.testing.assert_allclose(got, want, rtol=2 * t.rtol, atol=2 * t.atol)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", [2, 80, 4096])  # 80: AVX2 rows_short's longest float64 rows
def test_float64_accuracy_on_shifted_rows(offset, n, isa, rng, tol, accuracy_log):
    """float64 data keep float64 accuracy on shifted rows, as float32 data keep float32's.

    The float32 path is within ~8 float32 ulps of exact at offset 1e5; the bound here is the
    table's float64 tolerance (1e-12, thousands of float64 ulps).
    """
    x = random_data(rng, (64, n), np.float64, offset=offset)
    err = float(np.max(np.abs(fastnorm.layer_norm(x) - ref_layer_norm(x))))
    accuracy_log(f"layer_norm f64 n={n} offset={offset:g} max_abs_err", err)
    assert err <= tol[np.dtype(np.float64)].atol, (
        f"layer_norm float64 n={n} offset {offset:g}: max abs error {err:.3e}")
