"""The one-step path of layer_norm / rms_norm (fastnorm._core.rows).

The common call goes straight to C; anything else must be declined to the general path
(fastnorm._functional._row_norm) with nothing written, and give the same result or the
same error as it would there.  A spy on _row_norm tells which path a call took.
"""
import ml_dtypes
import numpy as np
import pytest

import fastnorm
from fastnorm import _functional
from fn_testutil import ROW_OPS, assert_close, ref_row_norm, row_norm

N = 96


@pytest.fixture
def general_calls(monkeypatch):
    """A list that grows by one for every call that reached the general path."""
    calls = []
    general = _functional._row_norm

    def spy(*args, **kw):
        calls.append(args)
        return general(*args, **kw)

    monkeypatch.setattr(_functional, "_row_norm", spy)
    return calls


def _params(op, n, dtype, rng):
    compute = np.float64 if dtype == np.float64 else np.float32
    w = rng.standard_normal(n).astype(compute)
    b = rng.standard_normal(n).astype(compute) if op == "layer_norm" else None
    return w, b


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("normalized_shape", [None, N, (N,)])
@pytest.mark.parametrize("with_out", [False, True])
def test_common_call_skips_the_general_path(op, dtype, normalized_shape, with_out, rng, tol,
                                            general_calls):
    x = (rng.standard_normal((5, 3, N)) + 4).astype(dtype)
    w, b = _params(op, N, dtype, rng)
    out = np.full_like(x, np.nan) if with_out else None
    y = row_norm(op, x, normalized_shape, w, b, out=out)
    assert general_calls == []
    assert y.dtype == x.dtype and y.shape == x.shape
    if with_out:
        assert y is out
    assert_close(y, ref_row_norm(op, x, None, w, b), tol)
    # the general path, forced by return_stats, computes the very same values
    forced = row_norm(op, x, normalized_shape, w, b, return_stats=True)[0]
    assert len(general_calls) == 1
    np.testing.assert_array_equal(y, forced)


@pytest.mark.parametrize("op", ROW_OPS)
def test_in_place(op, rng, tol, general_calls):
    x = rng.standard_normal((4, N)).astype(np.float32)
    want = ref_row_norm(op, x)
    y = row_norm(op, x, out=x)
    assert y is x and general_calls == []
    assert_close(x, want, tol)


@pytest.mark.parametrize("op", ROW_OPS)
def test_rms_default_eps_is_the_compute_machine_epsilon(op, rng, general_calls):
    # all-zero rows: y = 0 * rsqrt(0 + eps) = 0, so probe eps through a tiny constant row
    for dtype, eps in [(np.float32, np.finfo(np.float32).eps), (np.float64, np.finfo(np.float64).eps)]:
        x = np.full((2, N), 1e-6, dtype)
        y = fastnorm.rms_norm(x)
        want = 1e-6 / np.sqrt(1e-12 + eps)
        assert general_calls == []
        np.testing.assert_allclose(y, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def _declined_cases(rng):
    """(name, x, kwargs) the one-step path must hand to the general path."""
    x = (rng.standard_normal((3, N)) + 2).astype(np.float32)
    w = rng.standard_normal(N).astype(np.float32)
    misaligned = np.frombuffer(b"\0" + x.tobytes(), np.float32, count=x.size, offset=1).reshape(x.shape)
    big_endian = x.astype(">f4")
    holder = np.empty(x.size + N // 2, np.float32)  # out's first row holds half the weight
    holder[:N] = w
    return [
        ("list input", x.tolist(), {}),
        ("bfloat16", x.astype(ml_dtypes.bfloat16), {}),
        ("float16 weight for float16 x", x.astype(np.float16), {"weight": w.astype(np.float16)}),
        ("weight as a list", x, {"weight": w.tolist()}),
        ("float64 weight for float32 x", x, {"weight": w.astype(np.float64)}),
        ("non-native byte order", big_endian, {}),
        ("misaligned x", misaligned, {}),
        ("Fortran-ordered x", np.asfortranarray(x), {}),
        ("numpy integer normalized_shape", x, {"normalized_shape": np.int64(N)}),
        ("list normalized_shape", x, {"normalized_shape": [N]}),
        ("out overlapping x", x, {"out": "shifted"}),
        ("out overlapping the weight", x, {"weight": holder[:N], "out": holder[N // 2:].reshape(x.shape)}),
        ("strided out", x, {"out": np.empty((3, 2 * N), np.float32)[:, ::2]}),
    ]


DECLINED = [name for name, _x, _kw in _declined_cases(np.random.default_rng(0))]


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("name", DECLINED)
def test_declined_calls_take_the_general_path(op, name, rng, tol, general_calls):
    x, kw = {case[0]: case[1:] for case in _declined_cases(rng)}[name]  # fresh arrays
    kw = dict(kw)
    x_values = np.array(x, dtype=np.asarray(x).dtype)  # a copy of the input's values
    if isinstance(kw.get("out"), str):
        storage = np.empty(x_values.size + 8, x_values.dtype)
        storage[8:] = x_values.ravel()
        x = storage[8:].reshape(x_values.shape)
        kw["out"] = storage[:-8].reshape(x_values.shape)  # 8 elements before x, same shape
    weight = kw.pop("weight", None)
    want = ref_row_norm(op, x_values.astype(np.float64) if x_values.dtype.kind == "f" else x_values,
                        kw.get("normalized_shape") if not isinstance(kw.get("normalized_shape"), list) else None,
                        None if weight is None else np.asarray(weight, np.float64).reshape(-1))
    y = row_norm(op, x, weight=weight, **kw)
    assert len(general_calls) == 1, name
    if "out" in kw:
        assert y is kw["out"], name
    assert_close(np.asarray(y, np.float64), want, tol, dtype=np.asarray(y).dtype, err_msg=name)


@pytest.mark.parametrize("op", ROW_OPS)
def test_declined_bad_arguments_raise_the_general_errors(op, rng, general_calls):
    x = rng.standard_normal((2, N)).astype(np.float32)
    with pytest.raises(ValueError, match="normalized_shape"):
        row_norm(op, x, (N + 1,))
    with pytest.raises(ValueError, match="weight"):
        row_norm(op, x, weight=np.ones(N + 1, np.float32))
    with pytest.raises(ValueError, match="weight"):
        row_norm(op, x, weight=np.ones((1, N), np.float32))
    wrong = np.zeros((2, N), np.float64)
    with pytest.raises((TypeError, ValueError), match="out"):
        row_norm(op, x, out=wrong)
    assert np.all(wrong == 0), "a refused out= was written"
    assert len(general_calls) == 4
