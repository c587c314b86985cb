"""Every bad input of the contract raises its exception, says what was wrong, writes nothing.

Each case passes an `out` array filled with a sentinel (where the call accepts out=) and
checks afterwards that it and every input array are unchanged.
"""
import re

import numpy as np
import pytest

import fastnorm
from fn_testutil import import_torch, sentinel

BAD_DTYPES = [np.int8, np.int32, np.int64, np.uint16, np.bool_, np.complex64, np.complex128,
              object]


def _dtype_name(dtype):
    return np.dtype(dtype).name


def _inputs(dtype):
    return np.ones((4, 6, 3)).astype(dtype)


DTYPE_CALLS = {
    "layer_norm": lambda x: fastnorm.layer_norm(x),
    "rms_norm": lambda x: fastnorm.rms_norm(x),
    "layer_norm axis": lambda x: fastnorm.layer_norm(x, axis=1),
    "batch_norm eval": lambda x: fastnorm.batch_norm(x, np.zeros(6, np.float32),
                                                     np.ones(6, np.float32)),
    "batch_norm train": lambda x: fastnorm.batch_norm(x, training=True),
    "group_norm": lambda x: fastnorm.group_norm(x, 2),
    "instance_norm": lambda x: fastnorm.instance_norm(x),
    "moments": lambda x: fastnorm.moments(x, axis=(0, 2)),
}


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=_dtype_name)
@pytest.mark.parametrize("call", sorted(DTYPE_CALLS))
def test_unsupported_dtype_raises_type_error_naming_it(dtype, call, isa):
    x = _inputs(dtype)
    with pytest.raises(TypeError) as info:
        DTYPE_CALLS[call](x)
    name = _dtype_name(dtype)
    assert name in str(info.value) or str(np.dtype(dtype)) in str(info.value), (
        f"message should name the dtype {name}: {info.value}")


@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.bool_], ids=_dtype_name)
def test_unsupported_dtype_writes_nothing(dtype, isa):
    x = _inputs(dtype)
    out = sentinel(x.shape, np.float32)
    with pytest.raises((TypeError, ValueError)):
        fastnorm.layer_norm(x, out=out)
    np.testing.assert_array_equal(out, sentinel(x.shape, np.float32))


# ------------------------------------------------------------ row norms: ValueError ---


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


X_SHAPE = (4, 6, 8)

# label -> (kwargs for layer_norm / rms_norm given x, whether rms_norm applies)
ROW_VALUE_ERRORS = {
    "normalized_shape not trailing": ({"normalized_shape": 6}, True),
    "normalized_shape wrong tuple": ({"normalized_shape": (6, 7)}, True),
    "normalized_shape too long": ({"normalized_shape": (1, 4, 6, 8)}, True),
    "normalized_shape zero": ({"normalized_shape": 0}, True),
    "normalized_shape float": ({"normalized_shape": 8.0}, True),
    "normalized_shape float in tuple": ({"normalized_shape": (6, 8.0)}, True),
    "normalized_shape bool": ({"normalized_shape": True}, True),
    "axis and normalized_shape": ({"normalized_shape": 8, "axis": -1}, True),
    "axis out of range": ({"axis": 3}, True),
    "axis negative out of range": ({"axis": -4}, True),
    "axis repeated": ({"axis": (1, 1)}, True),
    "axis repeated via negative": ({"axis": (2, -1)}, True),
    "eps negative": ({"eps": -1e-5}, True),
    "eps nan": ({"eps": float("nan")}, True),
    "eps inf": ({"eps": float("inf")}, True),
    "eps -inf": ({"eps": float("-inf")}, True),
    "weight wrong shape": ({"weight": np.ones(7, np.float32)}, True),
    "weight wrong ndim": ({"weight": np.ones((1, 8), np.float32)}, True),
    "weight wrong shape with axis": ({"axis": 1, "weight": np.ones(8, np.float32)}, True),
    "bias wrong shape": ({"bias": np.ones(9, np.float32)}, False),
    "out wrong shape": ({"out": sentinel((4, 6, 7), np.float32)}, True),
    "out wrong dtype": ({"out": sentinel(X_SHAPE, np.float64)}, True),
    "out read-only": ({"out": _readonly(sentinel(X_SHAPE, np.float32))}, True),
    "out transposed shape": ({"out": sentinel((8, 6, 4), np.float32)}, True),
}


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [8.0, (8.0,), (6.0, 8), True])
def test_normalized_shape_not_of_ints_is_refused_whatever_came_before(op, shape):
    # a plan cached for the int call must not serve the float that equals it (8.0 == 8)
    x = np.ones(X_SHAPE, np.float32)
    for return_stats in (False, True):
        getattr(fastnorm, op)(x, 8, return_stats=return_stats)
        getattr(fastnorm, op)(x, (6, 8), return_stats=return_stats)
        with pytest.raises(TypeError, match="normalized_shape must be an int or a tuple of ints"):
            getattr(fastnorm, op)(x, shape, return_stats=return_stats)


@pytest.mark.parametrize("op, case", [(op, case) for case, (_, rms_too) in
                                      sorted(ROW_VALUE_ERRORS.items())
                                      for op in ("layer_norm", "rms_norm")
                                      if op == "layer_norm" or rms_too])
def test_row_norm_value_errors_write_nothing(op, case, isa, rng):
    kw = ROW_VALUE_ERRORS[case][0]
    kw = {k: (v.copy() if isinstance(v, np.ndarray) and v.flags.writeable else v)
          for k, v in kw.items()}
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    x_before = x.copy()
    out = kw.pop("out", sentinel(X_SHAPE, np.float32))
    out_before = out.copy()
    with pytest.raises(ValueError) as info:
        getattr(fastnorm, op)(x, out=out, **kw)
    # the message names the argument that was wrong
    names = list(ROW_VALUE_ERRORS[case][0])
    assert any(re.search(rf"\b{name}\b", str(info.value)) for name in names), info.value
    np.testing.assert_array_equal(out, out_before, err_msg="out was written before the error")
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape, kw", [((4, 0), {}), ((4, 0, 3), {"normalized_shape": (0, 3)}),
                                       ((2, 0, 3), {"axis": 1}), ((0,), {}),
                                       ((0, 0), {})])
def test_zero_size_normalized_dims_raise(op, shape, kw, isa):
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError):
        getattr(fastnorm, op)(x, **kw)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_zero_dimensional_input_raises(op, isa):
    with pytest.raises(ValueError):
        getattr(fastnorm, op)(np.float32(3.0))


def test_out_aliasing_read_only_input_view_is_rejected(isa):
    x = np.ones((3, 8), np.float32)
    ro = x.view()
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        fastnorm.layer_norm(ro, out=ro)
    np.testing.assert_array_equal(x, 1)


# ---------------------------------------------------------- batch_norm: ValueError ---


def _bn_case(case):
    x = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    kw = {"running_mean": rm, "running_var": rv, "training": True}
    if case == "eps negative":
        kw["eps"] = -1.0
    elif case == "eps nan":
        kw["eps"] = float("nan")
    elif case == "weight wrong shape":
        kw["weight"] = np.ones(5, np.float32)
    elif case == "bias wrong shape":
        kw["bias"] = np.ones((6, 1), np.float32)
    elif case == "axis out of range":
        kw["axis"] = 3
    elif case == "axis tuple":
        kw["axis"] = (1, 2)
    elif case == "out wrong shape":
        kw["out"] = sentinel((4, 6), np.float32)
    elif case == "out wrong dtype":
        kw["out"] = sentinel(x.shape, np.float16)
    elif case == "out read-only":
        kw["out"] = _readonly(sentinel(x.shape, np.float32))
    elif case == "momentum above 1":
        kw["momentum"] = 2.0
    return x, kw


BN_CASES = ["eps negative", "eps nan", "weight wrong shape", "bias wrong shape",
            "axis out of range", "axis tuple", "out wrong shape", "out wrong dtype",
            "out read-only", "momentum above 1"]


@pytest.mark.parametrize("case", BN_CASES)
def test_batch_norm_value_errors_write_nothing(case, isa):
    x, kw = _bn_case(case)
    x_before = x.copy()
    out = kw.pop("out", sentinel(x.shape, np.float32))
    out_before = out.copy()
    with pytest.raises(ValueError, match=rf"\b{case.split()[0]}\b"):  # names the argument
        fastnorm.batch_norm(x, out=out, **kw)
    np.testing.assert_array_equal(out, out_before)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(kw["running_mean"], 0)
    np.testing.assert_array_equal(kw["running_var"], 1)


@pytest.mark.parametrize("call", ["group_norm", "instance_norm"])
@pytest.mark.parametrize("eps", [-1.0, float("nan"), float("inf")])
def test_group_norm_bad_eps(call, eps, isa):
    x = np.ones((2, 4, 3), np.float32)
    with pytest.raises(ValueError):
        if call == "group_norm":
            fastnorm.group_norm(x, 2, eps=eps)
        else:
            fastnorm.instance_norm(x, eps=eps)


def test_group_norm_needs_a_channel_axis(isa):
    with pytest.raises(ValueError):
        fastnorm.group_norm(np.ones(6, np.float32), 2)


# ------------------------------------------------------- malformed input, no crash ---

MALFORMED = {
    "None": None,
    "string": "abc",
    "ragged list": [[1.0, 2.0], [3.0]],
    "dict": {"a": 1},
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "batch_norm", "group_norm",
                                "moments"])
def test_malformed_input_raises_instead_of_crashing(what, op, isa):
    args = {"batch_norm": (None, None, None, None, True), "group_norm": (1,)}.get(op, ())
    with pytest.raises((TypeError, ValueError)):
        getattr(fastnorm, op)(MALFORMED[what], *args)


@pytest.mark.parametrize("what", ["string weight", "int weight", "out list", "complex weight"])
def test_malformed_parameters_raise(what, isa):
    x = np.ones((3, 4), np.float32)
    out = sentinel(x.shape, np.float32)
    kw = {
        "string weight": {"weight": "abcd"},
        "int weight": {"weight": np.ones(4, np.int64)},
        "complex weight": {"weight": np.ones(4, np.complex64)},
        "out list": {"out": [0.0] * 12},
    }[what]
    if what == "int weight":
        # docs/api.md: an integer weight is taken, as its values in the computation dtype
        # (random rows: a constant row would hide the weight behind a zero)
        x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
        w = np.array([3, -7, 100, 0], np.int64)
        np.testing.assert_array_equal(fastnorm.layer_norm(x, weight=w),
                                      fastnorm.layer_norm(x, weight=w.astype(np.float32)))
        assert not np.array_equal(fastnorm.layer_norm(x, weight=w), fastnorm.layer_norm(x))
        return
    with pytest.raises((TypeError, ValueError)):
        fastnorm.layer_norm(x, out=kw.pop("out", out), **kw)
    np.testing.assert_array_equal(out, sentinel(x.shape, np.float32))


def test_momentum_and_eps_of_wrong_type(isa):
    x = np.ones((4, 3), np.float32)
    with pytest.raises((TypeError, ValueError)):
        fastnorm.layer_norm(x, eps="1e-5")
    with pytest.raises((TypeError, ValueError)):
        fastnorm.batch_norm(x, training=True, momentum="0.1")


def test_running_update_entry_point_refuses_bad_arguments():
    # fastnorm_update_running validates before writing (the Python layer checks first, so
    # only a direct call through _core reaches these)
    from fastnorm import _core
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    mean, var = np.full(3, 2.0), np.full(3, 4.0)
    with pytest.raises(TypeError, match="fastnorm_update_running"):
        _core.update_running(_core.F16, rm.view(np.uint16)[:3], rv.view(np.uint16)[:3], mean, var, 10, 0.1)
    with pytest.raises(ValueError, match="fastnorm_update_running"):
        _core.update_running(_core.F32, rm, rv, mean, var, 1, 0.1)
    with pytest.raises(ValueError, match="fastnorm_update_running"):
        _core.update_running(_core.F32, rm, rv, mean, var, 10, 1.5)
    with pytest.raises(ValueError, match="running_var"):
        _core.update_running(_core.F32, rm, np.ones(2, np.float32), mean, var, 10, 0.1)
    with pytest.raises(TypeError, match="running_mean"):
        _core.update_running(_core.F32, rm.astype(np.float64), rv, mean, var, 10, 0.1)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    _core.update_running(_core.F32, rm, rv, mean, var, 10, 0.5)
    np.testing.assert_allclose(rm, 1.0)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * 4.0 * 10 / 9, rtol=1e-6)


def test_core_entry_points_refuse_arrays_they_cannot_use():
    # fastnorm._core's backstop: the Python layer never passes these, but C must not run
    # on an array it would read or write past, or misread (checked before anything runs)
    from fastnorm import _core
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.full((3, 4), -1.0, np.float32)
    mean, var = np.zeros(4), np.ones(4)
    misaligned = np.frombuffer(b"\0" + x.tobytes(), np.float32, count=12, offset=1)
    read_only = y.copy()
    read_only.flags.writeable = False
    cases = [
        (TypeError, "x: expected a NumPy array, got list", {"x": x.tolist()}),
        (ValueError, "x: expected a C-contiguous array", {"x": np.asfortranarray(x)}),
        (TypeError, "x: expected 4-byte items, got 8-byte items", {"x": x.astype(np.float64)}),
        (ValueError, r"x: expected 12 items \(48 bytes\), got 8 items", {"x": x[:2]}),
        (ValueError, "x: expected data aligned to its 4-byte items", {"x": misaligned}),
        (ValueError, "y: expected a writeable array", {"y": read_only}),
        (ValueError, "var: expected 4 items", {"var": var[:3]}),
    ]
    for error, message, changed in cases:
        args = {"x": x, "y": y, "mean": mean, "var": var, **changed}
        with pytest.raises(error, match=message):
            _core.affine(_core.F32, 3, 4, 1, args["x"], args["y"], args["mean"], args["var"],
                         None, None, 1e-5, 1)
        np.testing.assert_array_equal(y, -1.0)
    _core.affine(_core.F32, 3, 4, 1, x, y, mean, var, None, None, 0.0, 1)  # all usable
    np.testing.assert_allclose(y, x, rtol=1e-6)


@pytest.mark.parametrize("training", ["no", None, 1, 0.0, np.array([True, False])])
@pytest.mark.parametrize("module", [fastnorm, fastnorm.reference])
def test_batch_norm_training_must_be_a_bool(module, training, rng):
    # by truthiness, training="no" would have run in training mode and updated the stats
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = sentinel(x.shape, np.float32)
    with pytest.raises(ValueError, match="training must be a bool"):
        module.batch_norm(x, rm, rv, training=training, out=out)
    np.testing.assert_array_equal(out, sentinel(x.shape, np.float32))
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    y = module.batch_norm(x, rm, rv, training=np.bool_(True))  # NumPy's bool is a bool
    assert y.shape == x.shape and not np.array_equal(rm, 0.0)


# ---- fastnorm.reference takes and refuses the same arguments ---------------------------
# API.md: the references have the same signatures and semantics as the fast functions.

BOTH = pytest.mark.parametrize("module", [fastnorm, fastnorm.reference],
                               ids=["fastnorm", "reference"])


@BOTH
def test_byte_swapped_out_and_residual_are_taken(module, rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    r = rng.standard_normal((4, 6)).astype(np.float32)
    want = module.layer_norm(x, residual=r)
    swapped = x.astype(">f4")
    assert module.layer_norm(swapped, residual=r.astype(">f4"), out=swapped) is swapped
    np.testing.assert_array_equal(swapped, want)
    stats = np.zeros(6, ">f4"), np.ones(6, ">f4")
    out = np.empty((4, 6), ">f4")
    assert module.batch_norm(x, *stats, out=out) is out
    np.testing.assert_array_equal(out, module.batch_norm(x, np.zeros(6), np.ones(6)))


@BOTH
def test_torch_bfloat16_tensors_are_taken(module):
    torch = import_torch()
    from ml_dtypes import bfloat16

    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(torch.bfloat16)
    x = np.arange(12, dtype=np.float32).reshape(3, 4).astype(bfloat16)
    y = module.layer_norm(t)
    assert y.dtype == bfloat16
    np.testing.assert_array_equal(y, module.layer_norm(x))
    np.testing.assert_array_equal(module.moments(t, axis=1)[1], module.moments(x, axis=1)[1])


@BOTH
@pytest.mark.parametrize("shape", [True, 4.0, (4.0,)])
def test_normalized_shape_of_bools_or_floats_is_a_shape_type_error(module, shape):
    with pytest.raises(TypeError, match="normalized_shape") as raised:
        module.layer_norm(np.ones((3, 4), np.float32) if shape is not True
                          else np.ones((3, 1), np.float32), shape)
    assert isinstance(raised.value, ValueError)


@BOTH
@pytest.mark.parametrize("shape", [np.array([4]), [np.array(3), 4], np.int64(4)])
def test_normalized_shape_of_integer_arrays_is_taken(module, shape, rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    k = np.size(shape)
    np.testing.assert_array_equal(module.layer_norm(x, shape),
                                  module.layer_norm(x, tuple(x.shape[-k:])))


@BOTH
@pytest.mark.parametrize("count", [2.5, float("nan")])
def test_merge_moments_refuses_a_count_that_is_not_whole(module, count):
    with pytest.raises(ValueError, match="count"):
        module.merge_moments((count, 0.0, 0.0), (3, 1.0, 1.0))


@BOTH
def test_batch_norm_training_refuses_one_array_as_both_running_statistics(module, rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    stat = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="separate"):
        module.batch_norm(x, stat, stat, training=True)
    np.testing.assert_array_equal(stat, 0.0)


@BOTH
@pytest.mark.parametrize("call", ["batch_norm", "batch_norm_backward"])
def test_batch_norm_channel_axis_is_one_int(module, call, rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    args = (x, None, None) if call == "batch_norm" else (x, x, np.zeros(4, np.float32),
                                                         np.ones(4, np.float32))
    kw = {"training": True} if call == "batch_norm" else {}
    with pytest.raises(ValueError, match="single channel axis"):
        getattr(module, call)(*args, axis=(1,), **kw)
