"""The one-step paths of layer_norm / rms_norm (fastnorm._core.rows) and batch_norm
(fastnorm._core.batch_norm).

The common call goes straight to C; anything else must be declined to the general path
(fastnorm._functional._row_norm / _batch_norm) with nothing written, and give the same
result or the same error as it would there.  A spy on the general path tells which path
a call took.
"""
import ml_dtypes
import numpy as np
import pytest

import fastnorm
from fastnorm import _functional
from fn_testutil import (ROW_OPS, assert_close, in_memory_order, ref_batch_norm, ref_group_norm,
                         ref_row_norm, row_norm)

N = 96


def _spy(monkeypatch, name):
    """A list that grows by one for every call of fastnorm._functional.<name>."""
    calls = []
    general = getattr(_functional, name)

    def spy(*args, **kw):
        calls.append(args)
        return general(*args, **kw)

    monkeypatch.setattr(_functional, name, spy)
    return calls


@pytest.fixture
def general_calls(monkeypatch):
    """Calls of layer_norm / rms_norm that reached the general path."""
    return _spy(monkeypatch, "_row_norm")


def _params(op, n, dtype, rng):
    compute = np.float64 if dtype == np.float64 else np.float32
    w = rng.standard_normal(n).astype(compute)
    b = rng.standard_normal(n).astype(compute) if op == "layer_norm" else None
    return w, b


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
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
def test_last_axis_alone_skips_the_general_path(op, rng, tol, general_calls):
    # axis=-1 says what normalized_shape=None does; other spellings go the general way
    x = (rng.standard_normal((5, 3, N)) + 4).astype(np.float32)
    w, b = _params(op, N, np.float32, rng)
    y = row_norm(op, x, None, w, b, axis=-1)
    assert general_calls == []
    assert_close(y, ref_row_norm(op, x, None, w, b), tol)
    np.testing.assert_array_equal(y, row_norm(op, x, None, w, b, axis=2))
    assert len(general_calls) == 1
    np.testing.assert_array_equal(y, row_norm(op, x, None, w, b, axis=np.int64(-1)))
    assert len(general_calls) == 2
    with pytest.raises(ValueError, match="not both"):
        row_norm(op, x, N, w, b, axis=-1)


@pytest.mark.parametrize("layer", [fastnorm.LayerNorm, fastnorm.RMSNorm])
def test_row_layers_take_the_one_step_path(layer, rng, general_calls):
    # a layer passes its normalized_shape, a 1-tuple, which the one-step path takes
    x = (rng.standard_normal((5, 3, N)) + 4).astype(np.float32)
    norm = layer(N)
    norm.weight[...] = rng.standard_normal(N)
    y = norm(x)
    assert general_calls == []
    op = fastnorm.layer_norm if layer is fastnorm.LayerNorm else fastnorm.rms_norm
    params = (norm.weight, norm.bias) if layer is fastnorm.LayerNorm else (norm.weight,)
    np.testing.assert_array_equal(y, op(x, None, *params, norm.eps))


@pytest.mark.parametrize("op", ROW_OPS)
def test_in_place(op, rng, tol, general_calls):
    x = rng.standard_normal((4, N)).astype(np.float32)
    want = ref_row_norm(op, x)
    y = row_norm(op, x, out=x)
    assert y is x and general_calls == []
    assert_close(x, want, tol)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("op", ROW_OPS)
def test_read_only_inputs_take_the_one_step_path(op, rng, tol, general_calls):
    x = (rng.standard_normal((4, N)) + 1).astype(np.float32)
    w, b = _params(op, N, np.float32, rng)
    y = row_norm(op, _read_only(x), weight=_read_only(w), bias=None if b is None else _read_only(b))
    assert general_calls == []
    assert_close(y, ref_row_norm(op, x, None, w, b), tol)


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


def _placed(x, kw):
    """(x, a copy of its values); kw["out"] == "shifted" becomes an out= that overlaps x,
    starting 8 elements before it, "C order" and "channels last" an out= of that layout."""
    x_values = np.array(x, dtype=np.asarray(x).dtype)
    out = kw.get("out")
    if isinstance(out, str) and out == "C order":
        kw["out"] = np.full(x_values.shape, np.nan, x_values.dtype)
    elif isinstance(out, str) and out == "channels last":
        kw["out"] = in_memory_order(np.full(x_values.shape, np.nan, x_values.dtype), (0, 2, 3, 1))
    elif isinstance(out, str):  # "shifted"
        storage = np.empty(x_values.size + 8, x_values.dtype)
        storage[8:] = x_values.ravel()
        x = storage[8:].reshape(x_values.shape)
        kw["out"] = storage[:-8].reshape(x_values.shape)
    return x, x_values


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("name", DECLINED)
def test_declined_calls_take_the_general_path(op, name, rng, tol, general_calls):
    x, kw = {case[0]: case[1:] for case in _declined_cases(rng)}[name]  # fresh arrays
    kw = dict(kw)
    x, x_values = _placed(x, kw)
    weight = kw.pop("weight", None)
    want = ref_row_norm(op, x_values.astype(np.float64) if x_values.dtype.kind == "f" else x_values,
                        kw.get("normalized_shape") if not isinstance(kw.get("normalized_shape"), list) else None,
                        None if weight is None else np.asarray(weight, np.float64).reshape(-1))
    y = row_norm(op, x, weight=weight, **kw)
    assert len(general_calls) == 1, name
    if "out" in kw:
        assert y is kw["out"], name
    assert_close(np.asarray(y, np.float64), want, tol, dtype=np.asarray(y).dtype, err_msg=name)


# ---- the fused residual add --------------------------------------------------------

# Where residual_out and out go: every placement the one-step path takes.
RESIDUAL_PLACES = ["no residual_out", "apart", "residual_out is x", "residual_out is residual",
                   "out is x"]


def _residual_call(op, place, x, r, w, b, forced=False):
    """(y, h) of the fused call with residual_out / out placed as `place` says, on copies
    of x and r; forced=True adds return_stats, which always takes the general path."""
    x, r = x.copy(), r.copy()
    h = {"no residual_out": None, "residual_out is x": x, "residual_out is residual": r}.get(
        place, np.full_like(x, np.nan))
    out = x if place == "out is x" else None
    kw = {"return_stats": True} if forced else {}
    y = row_norm(op, x, None, w, b, residual=r, residual_out=h, out=out, **kw)
    return (y[0] if forced else y), h


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("place", RESIDUAL_PLACES)
def test_residual_call_skips_the_general_path(op, dtype, place, rng, tol, general_calls):
    x = (rng.standard_normal((5, N)) + 3).astype(dtype)
    r = rng.standard_normal((5, N)).astype(dtype)
    w, b = _params(op, N, dtype, rng)
    y, h = _residual_call(op, place, x, r, w, b)
    assert general_calls == []
    summed = (x + r).astype(dtype)  # h rounded to x's dtype, as the unfused call sees it
    assert_close(y, ref_row_norm(op, summed, None, w, b), tol)
    if h is not None:
        np.testing.assert_array_equal(h, summed)
    # the general path, forced by return_stats, gives the very same bits
    y_general, h_general = _residual_call(op, place, x, r, w, b, forced=True)
    assert len(general_calls) == 1
    np.testing.assert_array_equal(y, y_general)
    if h is not None:
        np.testing.assert_array_equal(h, h_general)


def _declined_residual_cases(x, r):
    """(name, kwargs) of fused calls the one-step path must hand to the general path, which
    computes them (through a temporary where needed)."""
    storage = np.empty(x.size + 8, x.dtype)
    return [
        ("out is residual", {"residual": r, "out": r}),
        ("residual_out overlapping x", {"residual": r, "residual_out": "shifted"}),
        ("Fortran-ordered residual", {"residual": np.asfortranarray(r)}),
        ("strided residual_out", {"residual": r, "residual_out": np.empty((x.shape[0], 2 * N), x.dtype)[:, ::2]}),
        ("out overlapping residual_out", {"residual": r, "residual_out": storage[:-8].reshape(x.shape),
                                          "out": storage[8:].reshape(x.shape)}),
    ]


DECLINED_RESIDUAL = [name for name, _kw in _declined_residual_cases(np.empty((2, N)), None)]


@pytest.mark.parametrize("op", ROW_OPS)
@pytest.mark.parametrize("name", DECLINED_RESIDUAL)
def test_declined_residual_calls_take_the_general_path(op, name, rng, tol, general_calls):
    x = (rng.standard_normal((3, N)) + 2).astype(np.float32)
    r = rng.standard_normal((3, N)).astype(np.float32)
    summed = x + r
    kw = dict(dict(_declined_residual_cases(x, r))[name])
    if isinstance(kw.get("residual_out"), str):  # "shifted": residual_out 8 values before x
        storage = np.empty(x.size + 8, np.float32)
        storage[8:] = x.ravel()
        x = storage[8:].reshape(summed.shape)
        kw["residual_out"] = storage[:-8].reshape(summed.shape)
    if name == "out overlapping residual_out":
        with pytest.raises(ValueError, match="residual_out must not be out"):
            row_norm(op, x, **kw)
        assert len(general_calls) == 1
        return
    y = row_norm(op, x, **kw)
    assert len(general_calls) == 1, name
    assert_close(y, ref_row_norm(op, summed), tol, err_msg=name)
    if kw.get("residual_out") is not None:
        np.testing.assert_array_equal(kw["residual_out"], summed)


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
    read_only = _read_only(np.zeros((2, N), np.float32))
    with pytest.raises(ValueError, match="out is read-only"):
        row_norm(op, x, out=read_only)
    assert np.all(read_only == 0), "a read-only out= was written"
    with pytest.raises(ValueError, match="residual must have x's shape"):
        row_norm(op, x, residual=x.astype(np.float64))
    with pytest.raises(ValueError, match="residual_out needs residual"):
        row_norm(op, x, residual_out=np.empty_like(x))
    with pytest.raises(ValueError, match="residual_out is read-only"):
        row_norm(op, x, residual=x, residual_out=read_only)
    assert np.all(read_only == 0), "a read-only residual_out= was written"
    assert len(general_calls) == 8


# ---- batch_norm ------------------------------------------------------------------------

C = 6


@pytest.fixture
def general_bn_calls(monkeypatch):
    """Calls of batch_norm that reached the general path."""
    return _spy(monkeypatch, "_batch_norm")


def _bn_case(rng, dtype=np.float32, axis=1, running_dtype=np.float32):
    shape = (3, C, 5, 4) if axis == 1 else (3, 5, 4, C)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    compute = np.float64 if dtype == np.float64 else np.float32
    w = rng.standard_normal(C).astype(compute)
    b = rng.standard_normal(C).astype(compute)
    rm = rng.standard_normal(C).astype(running_dtype)
    rv = (rng.random(C) + 0.5).astype(running_dtype)
    return x, w, b, rm, rv


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("running_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_out", [False, True])
def test_batch_norm_common_call_skips_the_general_path(dtype, axis, training, running_dtype,
                                                       with_out, rng, tol, general_bn_calls):
    x, w, b, rm, rv = _bn_case(rng, dtype, axis, running_dtype)
    want, want_rm, want_rv = ref_batch_norm(x, rm, rv, w, b, training=training, axis=axis)
    forced_rm, forced_rv = rm.copy(), rv.copy()
    out = np.full_like(x, np.nan) if with_out else None
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=training, axis=axis, out=out)
    assert general_bn_calls == []
    assert y.dtype == x.dtype and y.shape == x.shape
    if with_out:
        assert y is out
    assert_close(y, want, tol)
    # batch statistics of non-float64 data are float32-accurate, whatever the running dtype
    stat_dtype = np.float64 if dtype == running_dtype == np.float64 else np.float32
    assert_close(rm, want_rm, tol, dtype=stat_dtype)
    assert_close(rv, want_rv, tol, dtype=stat_dtype)
    # the general path, forced by return_stats, computes the very same values
    forced = fastnorm.batch_norm(x, forced_rm, forced_rv, w, b, training=training, axis=axis,
                                 return_stats=True)[0]
    assert len(general_bn_calls) == 1
    np.testing.assert_array_equal(y, forced)
    np.testing.assert_array_equal(rm, forced_rm)
    np.testing.assert_array_equal(rv, forced_rv)


# channels-last views of (N, C, ...) shapes, as PyTorch's channels_last tensors give:
# (N, ..., C) memory, size-1 axes (whose strides NumPy leaves free) included
@pytest.mark.parametrize("shape", [(3, C, 5, 4), (1, C, 4, 7), (2, C, 1, 5), (4, C, 9),
                                   (2, C, 3, 1, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("out_kind", ["new", "view", "in place"])
def test_batch_norm_channels_last_view_skips_the_general_path(shape, dtype, training, out_kind,
                                                              rng, tol, general_bn_calls):
    order = (0,) + tuple(range(2, len(shape))) + (1,)
    x = in_memory_order((rng.standard_normal(shape) * 2 + 3).astype(dtype), order)
    assert not x.flags.c_contiguous
    _x, w, b, rm, rv = _bn_case(rng, dtype)
    want, want_rm, want_rv = ref_batch_norm(x, rm, rv, w, b, training=training)
    forced_rm, forced_rv = rm.copy(), rv.copy()
    # the general path, forced by return_stats, on the same values before any in-place write
    forced = fastnorm.batch_norm(x, forced_rm, forced_rv, w, b, training=training,
                                 return_stats=True)[0]
    assert len(general_bn_calls) == 1
    out = {"new": None, "view": in_memory_order(np.full(shape, np.nan, dtype), order),
           "in place": x}[out_kind]
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=training, out=out)
    assert len(general_bn_calls) == 1  # no second general call
    assert y is out if out is not None else y.transpose(order).flags.c_contiguous
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, want, tol)
    np.testing.assert_array_equal(y, forced)
    np.testing.assert_array_equal(rm, forced_rm)
    np.testing.assert_array_equal(rv, forced_rv)


def test_batch_norm_read_only_inputs_take_the_one_step_path(rng, tol, general_bn_calls):
    x, w, b, rm, rv = _bn_case(rng)
    want = ref_batch_norm(x, rm, rv, w, b)[0]
    y = fastnorm.batch_norm(*(_read_only(a) for a in (x, rm, rv, w, b)))
    assert general_bn_calls == []
    assert_close(y, want, tol)


def test_batch_norm_training_without_running_stats_and_in_place(rng, tol, general_bn_calls):
    x, w, b, _rm, _rv = _bn_case(rng)
    want = ref_batch_norm(x, None, None, w, b, training=True)[0]
    y = fastnorm.batch_norm(x, None, None, w, b, training=True, out=x)
    assert y is x and general_bn_calls == []
    assert_close(x, want, tol)


@pytest.mark.parametrize("running_dtype", [np.float32, np.float64])
def test_running_update_is_the_numpy_formula(running_dtype, rng):
    # API.md's formula evaluated by NumPy with float64 batch statistics, bit for bit
    rm = rng.standard_normal(37).astype(running_dtype)
    rv = rng.random(37).astype(running_dtype)
    mean, var, n, momentum = rng.standard_normal(37), rng.random(37), 51, 0.3
    want_rm = ((1.0 - momentum) * rm + momentum * mean).astype(running_dtype)
    want_rv = ((1.0 - momentum) * rv + momentum * (var * (n / (n - 1)))).astype(running_dtype)
    strided_rm = np.zeros(74, running_dtype)[::2]  # updated through a contiguous copy
    strided_rm[...] = rm
    _functional._update_running(rm, rv, mean, var, n, momentum)
    np.testing.assert_array_equal(rm, want_rm)
    np.testing.assert_array_equal(rv, want_rv)
    _functional._update_running(strided_rm, rv.copy(), mean, var, n, momentum)
    np.testing.assert_array_equal(strided_rm, want_rm)


def _bn_declined_cases(rng):
    """(name, x, kwargs) the one-step batch_norm path must hand to the general path."""
    x, w, b, rm, rv = _bn_case(rng)
    holder = np.empty(x.size + C // 2, np.float32)  # out's first C // 2 elements: half the running mean
    holder[:C] = rm
    return [
        ("list input", x.tolist(), {}),
        ("channel axis 2", x, {"axis": 2, "running_mean": rm[:5].copy(), "running_var": rv[:5].copy(),
                               "weight": w[:5].copy(), "bias": b[:5].copy()}),
        ("numpy integer axis", x, {"axis": np.int64(1)}),
        ("float64 weight for float32 x", x, {"weight": w.astype(np.float64)}),
        ("weight as a list", x, {"weight": w.tolist()}),
        ("running stats of two dtypes", x, {"running_var": rv.astype(np.float64)}),
        ("strided running stats in training", x, {"training": True, "running_mean": np.repeat(rm, 2)[::2]}),
        ("running stats as lists in eval", x, {"running_mean": rm.tolist(), "running_var": rv.tolist()}),
        ("numpy float momentum", x, {"training": True, "momentum": np.float32(0.25)}),
        ("int eps", x, {"eps": 0}),
        ("Fortran-ordered x", np.asfortranarray(x), {}),
        ("channels-last x, channel axis -1", in_memory_order(x, (0, 2, 3, 1)),
         {"axis": -1, "running_mean": rm[:4].copy(), "running_var": rv[:4].copy(),
          "weight": w[:4].copy(), "bias": b[:4].copy()}),
        ("channels-last x, spatial axes swapped", in_memory_order(x, (0, 3, 2, 1)), {}),
        ("channels-last x, N inside", in_memory_order(x, (2, 0, 3, 1)), {}),
        ("channels-last x, C-order out", in_memory_order(x, (0, 2, 3, 1)), {"out": "C order"}),
        ("C-order x, channels-last out", x, {"out": "channels last"}),
        ("out overlapping x", x, {"out": "shifted"}),
        ("out overlapping the running mean", x, {"running_mean": holder[:C], "out": holder[C // 2:].reshape(x.shape)}),
        ("return_stats", x, {"return_stats": True}),
    ]


BN_DECLINED = [name for name, _x, _kw in _bn_declined_cases(np.random.default_rng(0))]


@pytest.mark.parametrize("name", BN_DECLINED)
def test_batch_norm_declined_calls_take_the_general_path(name, rng, tol, general_bn_calls):
    x, kw = {case[0]: case[1:] for case in _bn_declined_cases(rng)}[name]  # fresh arrays
    _x, w, b, rm, rv = _bn_case(rng)
    kw = {"running_mean": rm, "running_var": rv, "weight": w, "bias": b, **kw}
    x, x_values = _placed(x, kw)
    ref_kw = {k: v for k, v in kw.items() if k not in ("out", "return_stats")}
    ref_kw = {k: (np.asarray(v, np.float64) if k in ("running_mean", "running_var", "weight", "bias")
                  else v) for k, v in ref_kw.items()}
    want = ref_batch_norm(x_values.astype(np.float64) if x_values.dtype.kind == "f" else x_values,
                          **ref_kw)
    result = fastnorm.batch_norm(x, **kw)
    y = result[0] if kw.get("return_stats") else result
    assert len(general_bn_calls) == 1, name
    if "out" in kw:
        assert y is kw["out"], name
    assert_close(np.asarray(y, np.float64), want[0], tol, dtype=np.asarray(y).dtype, err_msg=name)
    if kw.get("training"):
        assert_close(np.asarray(kw["running_mean"], np.float64), want[1], tol, dtype=np.float32, err_msg=name)


def test_batch_norm_declined_bad_arguments_raise_the_general_errors(rng, general_bn_calls):
    x, w, b, rm, rv = _bn_case(rng)
    rm_before, rv_before = rm.copy(), rv.copy()
    with pytest.raises(ValueError, match="running_mean and running_var"):
        fastnorm.batch_norm(x, weight=w, bias=b)
    with pytest.raises(ValueError, match="weight"):
        fastnorm.batch_norm(x, rm, rv, np.ones(C + 1, np.float32))
    with pytest.raises(ValueError, match="momentum"):
        fastnorm.batch_norm(x, rm, rv, training=True, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        fastnorm.batch_norm(x, rm, rv, eps=-1.0)
    one = x[:1, :, :1, :1].copy()
    with pytest.raises(ValueError, match="at least 2 values"):
        fastnorm.batch_norm(one, rm, rv, training=True)
    read_only = rm.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastnorm.batch_norm(x, read_only, rv, training=True)
    wrong = np.zeros(x.shape, np.float64)
    with pytest.raises((TypeError, ValueError), match="out"):
        fastnorm.batch_norm(x, rm, rv, out=wrong)
    assert np.all(wrong == 0), "a refused out= was written"
    read_only = _read_only(np.zeros(x.shape, np.float32))
    with pytest.raises(ValueError, match="out is read-only"):
        fastnorm.batch_norm(x, rm, rv, training=True, out=read_only)
    assert np.all(read_only == 0), "a read-only out= was written"
    with pytest.raises(ValueError, match="float32 or float64"):
        fastnorm.batch_norm(x, rm.astype(np.float16), rv.astype(np.float16))
    np.testing.assert_array_equal(rm, rm_before)  # refused training calls update nothing
    np.testing.assert_array_equal(rv, rv_before)
    assert len(general_bn_calls) == 9


# ---- group_norm / instance_norm (fastnorm._core.group_norm_common) -------------------


@pytest.fixture
def general_gn_calls(monkeypatch):
    """Calls of group_norm / instance_norm that reached the general path."""
    return _spy(monkeypatch, "_group_norm")


def _gn_params(channels, dtype, rng):
    compute = np.float64 if dtype == np.float64 else np.float32
    return (rng.standard_normal(channels).astype(compute),
            rng.standard_normal(channels).astype(compute))


# NCHW and channels-last views (size-1 axes included), 2-D (N, C) and 3-D inputs; the
# (2, 64, 4, 4) cases take the channels-last kernel's per-group column path
@pytest.mark.parametrize("shape, groups", [((3, 6, 5, 4), 3), ((1, 8, 4, 7), 2), ((2, 6, 1, 5), 6),
                                           ((4, 6, 9), 1), ((5, 4), 2), ((2, 64, 4, 4), 32)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("params", [True, False])
def test_group_norm_common_call_skips_the_general_path(shape, groups, layout, dtype, params, rng,
                                                       tol, general_gn_calls):
    order = (0,) + tuple(range(2, len(shape))) + (1,)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    if layout == "channels_last":
        x = in_memory_order(x, order)
    w, b = _gn_params(shape[1], dtype, rng) if params else (None, None)
    y = fastnorm.group_norm(x, groups, w, b)
    assert general_gn_calls == []
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.transpose(order).flags.c_contiguous == x.transpose(order).flags.c_contiguous
    assert_close(y, ref_group_norm(x, groups, w, b), tol)
    # the general path, forced by a NumPy integer num_groups, computes the same bits
    forced = fastnorm.group_norm(x, np.int64(groups), w, b)
    assert len(general_gn_calls) == 1
    np.testing.assert_array_equal(y, forced)
    inst = fastnorm.instance_norm(x, w, b)
    assert len(general_gn_calls) == 1
    np.testing.assert_array_equal(inst, fastnorm.group_norm(x, shape[1], w, b))


def _gn_declined_cases(rng):
    """(name, x, num_groups, kwargs) the one-step group_norm path must hand to the general
    path."""
    x = (rng.standard_normal((3, 6, 5, 4)) * 2 + 3).astype(np.float32)
    w, b = _gn_params(6, np.float32, rng)
    return [
        ("list input", x.tolist(), 3, {}),
        ("numpy integer num_groups", x, np.int64(3), {}),
        ("int eps", x, 3, {"eps": 0}),
        ("float64 weight for float32 x", x, 3, {"weight": w.astype(np.float64)}),
        ("strided x", np.repeat(x, 2, axis=3)[..., ::2], 3, {}),
        ("Fortran-ordered x", np.asfortranarray(x), 3, {}),
        ("channels-last x, spatial axes swapped", in_memory_order(x, (0, 3, 2, 1)), 3, {}),
    ]


GN_DECLINED = [case[0] for case in _gn_declined_cases(np.random.default_rng(0))]


@pytest.mark.parametrize("name", GN_DECLINED)
def test_group_norm_declined_calls_take_the_general_path(name, rng, tol, general_gn_calls):
    x, groups, kw = {case[0]: case[1:] for case in _gn_declined_cases(rng)}[name]
    values = np.asarray(x)
    compute = values.dtype if values.dtype.kind == "f" else np.float32  # lists: float64
    want = ref_group_norm(values.astype(np.float64), int(groups),
                          **{k: (np.asarray(v, np.float64) if k in ("weight", "bias") else v)
                             for k, v in kw.items()})
    y = fastnorm.group_norm(x, groups, **kw)
    assert len(general_gn_calls) == 1, name
    assert_close(np.asarray(y, np.float64), want, tol, dtype=compute, err_msg=name)


def test_group_norm_declined_bad_arguments_raise_the_general_errors(rng, general_gn_calls):
    x = (rng.standard_normal((3, 6, 5, 4))).astype(np.float32)
    with pytest.raises(ValueError, match="must divide"):
        fastnorm.group_norm(x, 4)
    with pytest.raises(ValueError, match="num_groups"):
        fastnorm.group_norm(x, 0)
    with pytest.raises(ValueError, match="eps"):
        fastnorm.group_norm(x, 3, eps=-1.0)
    with pytest.raises(ValueError, match="weight"):
        fastnorm.group_norm(x, 3, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="instance_norm needs at least one channel"):
        fastnorm.instance_norm(np.zeros((2, 0, 3), np.float32))
    with pytest.raises(ValueError, match="group_norm needs x of shape"):
        fastnorm.group_norm(np.zeros(6, np.float32), 3)
    with pytest.raises(TypeError, match="int32"):
        fastnorm.group_norm(np.ones((3, 6, 2), np.int32), 3)
    # divisibility, eps and weight are checked in _group_norm; the rest before it
    assert len(general_gn_calls) == 3
    # an empty batch is no error: an empty result, from the general path
    assert fastnorm.group_norm(np.zeros((0, 6, 2), np.float32), 3).shape == (0, 6, 2)
