"""rms_norm numerics: default eps, zero / NaN / inf rows, shifted-data accuracy, PyTorch."""
import numpy as np
import pytest

import fastnorm
from fn_testutil import (F32, F64, FULL_DTYPES, assert_close, import_torch, random_data,
                         ref_rms_norm, rms_default_eps)

OFFSETS = (0.0, 1e2, 1e3, 1e4, 1e5)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_default_eps_is_machine_epsilon_of_computation_dtype(dtype, isa, rng, tol):
    eps = float(np.finfo(dtype).eps)
    # mean(x**2) close to eps, so the default eps changes the result by a large factor.
    x = random_data(rng, (4, 32), dtype, scale=np.sqrt(eps))
    y = fastnorm.rms_norm(x)
    assert_close(y, fastnorm.rms_norm(x, eps=eps), tol)
    assert_close(y, ref_rms_norm(x, eps=eps), tol)
    assert not np.allclose(y, fastnorm.rms_norm(x, eps=0.0), rtol=1e-2)


def test_float32_default_eps_differs_from_float64_default(isa, rng):
    x32 = random_data(rng, (2, 16), np.float32, scale=1e-4)
    y32 = fastnorm.rms_norm(x32)
    y64 = fastnorm.rms_norm(x32.astype(np.float64))
    np.testing.assert_allclose(y32, ref_rms_norm(x32, eps=rms_default_eps(F32)), rtol=1e-5)
    np.testing.assert_allclose(y64, ref_rms_norm(x32, eps=rms_default_eps(F64)), rtol=1e-12)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.5])
def test_eps_is_used_as_given(dtype, eps, isa, rng, tol):
    x = random_data(rng, (5, 45), dtype, scale=0.5)
    assert_close(fastnorm.rms_norm(x, eps=eps), ref_rms_norm(x, eps=eps), tol)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("n", [1, 8, 33, 4096])
def test_zero_row(dtype, n, isa, rng):
    x = random_data(rng, (3, n), dtype)
    x[1] = 0
    y = fastnorm.rms_norm(x, None, random_data(rng, n, dtype))
    np.testing.assert_array_equal(y[1], 0)
    assert np.isnan(fastnorm.rms_norm(x, eps=0.0)[1]).all(), "0/sqrt(0) must be NaN"


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n", [1, 5, 16, 67, 4096])
def test_nan_or_inf_poisons_only_its_row(dtype, bad, n, isa, rng):
    # PyTorch returns 0 for the finite entries of a row holding inf; the contract says NaN.
    x = random_data(rng, (4, n), dtype)
    w = random_data(rng, n, dtype, offset=1.0)
    clean = fastnorm.rms_norm(x, None, w)
    x[1, n - 1] = bad
    y = fastnorm.rms_norm(x, None, w)
    assert np.isnan(y[1]).all(), f"row holding {bad} should be all NaN: {y[1][:8]}"
    np.testing.assert_array_equal(y[[0, 2, 3]], clean[[0, 2, 3]])


@pytest.mark.parametrize("offset", OFFSETS)
def test_float32_accuracy_on_shifted_rows(offset, isa, rng, accuracy_log):
    """Issue 2: float32 within 1e-6 (max abs) of float64 on 4096-wide offset + N(0,1)."""
    x = random_data(rng, (64, 4096), np.float32, offset=offset)
    y = fastnorm.rms_norm(x)
    err = float(np.max(np.abs(y - ref_rms_norm(x))))
    accuracy_log(f"rms_norm f32 offset={offset:g} max_abs_err", err)
    assert err <= 1e-6, f"rms_norm float32 at offset {offset:g}: max abs error {err:.3e}"


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_return_stats_rstd(dtype, isa, rng):
    x = random_data(rng, (6, 100), dtype, offset=1.0)
    y, rstd = fastnorm.rms_norm(x, return_stats=True)
    x64 = x.astype(np.float64)
    want = 1 / np.sqrt((x64 ** 2).mean(-1) + rms_default_eps(dtype))
    rtol = 2.0 ** -22 if dtype == F32 else 1e-14
    np.testing.assert_allclose(rstd, want, rtol=rtol)
    np.testing.assert_allclose(y, x64 * rstd.astype(np.float64)[:, None],
                               rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("shape", [(8, 768), (3, 5, 64), (2, 4096), (16, 7)])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_agrees_with_torch(shape, with_weight, eps, isa, rng, tol):
    torch = import_torch()
    F = torch.nn.functional
    x = random_data(rng, shape, np.float32, offset=0.3)
    n = shape[-1]
    w = random_data(rng, n, np.float32, offset=1.0) if with_weight else None
    got = fastnorm.rms_norm(x, None, w, eps)
    want = F.rms_norm(torch.from_numpy(x), (n,), None if w is None else torch.from_numpy(w),
                      eps).numpy()
    t = tol[F32]
    np.testing.assert_allclose(got, want, rtol=2 * t.rtol, atol=2 * t.atol)
