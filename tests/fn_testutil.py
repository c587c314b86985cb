"""Helpers shared by the fastnorm tests: memory layouts, float64 references, comparisons.

Kept free of fixtures so Hypothesis tests and plain tests use the same code.
"""
import os
import subprocess
import sys

import ml_dtypes
import numpy as np

import fastnorm
from fastnorm import reference

# FASTNORM_TEST_SEED fixes every random input of the suite (the rng fixture mixes in the
# test id); the default is arbitrary but fixed so runs are reproducible.
TEST_SEED = int(os.environ.get("FASTNORM_TEST_SEED", "20240607"))

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
FULL_DTYPES = (F32, F64)
HALF_DTYPES = (F16, BF16)

# Row lengths that straddle every vector width (4/8/16 lanes, 2x and 4x unrolled).
# 80 / 81 and 200 / 201: the ends of AVX2 rows_short in float64 and float32
STRADDLE_LENGTHS = tuple(range(1, 71)) + (80, 81, 127, 128, 129, 200, 201, 255, 256, 257, 768,
                                          4096)

LAYOUTS = ("contiguous", "fortran", "strided", "negative", "unaligned")


def compute_dtype(dtype):
    """float64 for float64 data, float32 for float32 and the half types (the contract)."""
    return F64 if np.dtype(dtype) == F64 else F32


def rms_default_eps(dtype):
    """rms_norm's eps=None: machine epsilon of the computation dtype."""
    return float(np.finfo(compute_dtype(dtype)).eps)


def random_data(rng, shape, dtype, offset=0.0, scale=1.0):
    """offset + scale * N(0, 1), rounded once to dtype."""
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def as_layout(x, layout):
    """A view of the same values as x in the given memory layout (x itself is not used)."""
    x = np.asarray(x)
    if layout == "contiguous":
        return np.ascontiguousarray(x)
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        # Every axis strided: each element sits in a 2x larger buffer (stride 2 per axis).
        big = np.zeros(tuple(2 * n for n in x.shape), dtype=x.dtype)
        view = big[tuple(slice(None, None, 2) for _ in x.shape)]
        view[...] = x
        return view
    if layout == "negative":
        # Every axis reversed in memory: the view has negative strides and equals x.
        flipped = np.ascontiguousarray(x[tuple(slice(None, None, -1) for _ in x.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in x.shape)]
    if layout == "unaligned":
        # Data pointer one byte past an aligned address.
        raw = np.zeros(x.nbytes + x.itemsize + 1, dtype=np.uint8)
        view = raw[1:1 + x.nbytes].view(x.dtype).reshape(x.shape)
        view[...] = x
        return view
    raise ValueError(layout)


def in_memory_order(x, order):
    """A view of x's values stored C-contiguously with its axes in `order`: a channels-last
    view of an NCHW shape is order (0, 2, 3, 1), a Fortran array the axes reversed."""
    return np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))


def to64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def ref_layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, **kw):
    """float64 reference LayerNorm of x's values (no rounding to x.dtype)."""
    return reference.layer_norm(to64(x), normalized_shape, to64(weight), to64(bias), eps, **kw)


def ref_rms_norm(x, normalized_shape=None, weight=None, eps=None, **kw):
    """float64 reference RMSNorm of x's values; eps=None is x's computation-dtype epsilon."""
    if eps is None:
        eps = rms_default_eps(np.asarray(x).dtype)
    return reference.rms_norm(to64(x), normalized_shape, to64(weight), eps, **kw)


def ref_batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, **kw):
    """float64 reference BatchNorm; running statistics are float64 copies, returned too."""
    rm, rv = to64(running_mean), to64(running_var)
    out = reference.batch_norm(to64(x), rm, rv, to64(weight), to64(bias), **kw)
    return out, rm, rv


def ref_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    return reference.group_norm(to64(x), num_groups, to64(weight), to64(bias), eps)


def as_f64(a):
    return np.asarray(a).astype(np.float64)


def assert_close(got, want, tol, dtype=None, err_msg=""):
    """|got - want| <= atol + rtol*|want| elementwise (NaNs must match); dtype picks tol."""
    got = np.asarray(got)
    t = tol[np.dtype(dtype if dtype is not None else got.dtype)]
    np.testing.assert_allclose(as_f64(got), as_f64(want), rtol=t.rtol, atol=t.atol,
                               equal_nan=True, err_msg=err_msg)


def assert_same_bits(a, b, err_msg=""):
    """Bitwise equality (NaN payloads included): what thread/layout invariance promises."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype, err_msg)
    ua = np.ascontiguousarray(a).view(np.uint8)
    ub = np.ascontiguousarray(b).view(np.uint8)
    if not np.array_equal(ua, ub):
        bad = np.flatnonzero(~((a == b) | (np.isnan(as_f64(a)) & np.isnan(as_f64(b)))).ravel())
        raise AssertionError(f"not bitwise equal {err_msg}: {bad.size} differing values, "
                             f"first at flat index {bad[:5]}; max |diff| "
                             f"{np.nanmax(np.abs(as_f64(a) - as_f64(b))) if a.size else 0}")


def half_ordered(a):
    """Map 16-bit float bit patterns to integers ordered like the values (+0 == -0)."""
    bits = np.ascontiguousarray(a).view(np.uint16).astype(np.int32)
    mag = bits & 0x7FFF
    return np.where(bits & 0x8000, -mag, mag)


def ulp_distance_half(a, b):
    """How many float16/bfloat16 steps apart a and b are (both finite)."""
    return np.abs(half_ordered(a) - half_ordered(b))


def at_line_offset(shape, dtype, skip):
    """An uninitialized array of `shape` starting `skip` elements past a 64-byte boundary
    (NumPy itself puts large arrays 16 bytes past one)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    buffer = np.empty(size + 64, dtype)
    start = (-buffer.ctypes.data // dtype.itemsize) % (64 // dtype.itemsize) + skip
    out = buffer[start:start + size].reshape(shape)
    assert out.ctypes.data % 64 == skip * dtype.itemsize
    return out


def sentinel(shape, dtype, value=-12345.0):
    """An array full of a value no norm produces, to prove nothing was written."""
    return np.full(shape, value, dtype=dtype)


def half_support_reason():
    """None when fastnorm accepts float16 and bfloat16, else why not (for a module skip)."""
    x = np.ones((2, 8), dtype=np.float32)
    reasons = []
    for dtype in HALF_DTYPES:
        try:
            fastnorm.layer_norm(x.astype(dtype))
        except (NotImplementedError, TypeError) as exc:
            reasons.append(f"{dtype}: {type(exc).__name__}: {exc}")
    return "; ".join(reasons) or None


def residual_support_reason():
    """None when layer_norm accepts residual=, else why not."""
    x = np.ones((2, 8), dtype=np.float32)
    try:
        fastnorm.layer_norm(x, residual=x.copy())
    except (NotImplementedError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


ROW_OPS = ("layer_norm", "rms_norm")


def row_norm(op, x, normalized_shape=None, weight=None, bias=None, **kw):
    """fastnorm.layer_norm / rms_norm with one signature (rms_norm has no bias)."""
    if op == "layer_norm":
        return fastnorm.layer_norm(x, normalized_shape, weight, bias, **kw)
    assert bias is None
    return fastnorm.rms_norm(x, normalized_shape, weight, **kw)


def ref_row_norm(op, x, normalized_shape=None, weight=None, bias=None, **kw):
    """The float64 reference of row_norm on x's values."""
    if op == "layer_norm":
        return ref_layer_norm(x, normalized_shape, weight, bias, **kw)
    assert bias is None
    return ref_rms_norm(x, normalized_shape, weight, **kw)


def ref_row_norm_axis(op, x, axis, weight=None, bias=None, **kw):
    """Reference of a row norm over `axis` (int or tuple), by moving those axes last."""
    x = np.asarray(x)
    axes = sorted({a % x.ndim for a in ((axis,) if np.isscalar(axis) else axis)})
    trailing = list(range(x.ndim - len(axes), x.ndim))
    moved = np.moveaxis(x, axes, trailing)
    shape = tuple(x.shape[a] for a in axes)
    y = ref_row_norm(op, moved, shape, weight, bias, **kw)
    return np.moveaxis(y, trailing, axes)


def import_torch():
    """torch, or a skip without it -- except where FASTNORM_REQUIRE_TORCH=1 (CI) makes a
    missing torch an error, so the PyTorch comparisons cannot silently drop out."""
    import pytest

    if os.environ.get("FASTNORM_REQUIRE_TORCH") == "1":
        import torch
        return torch
    return pytest.importorskip("torch")


def run_python(code, variable=None, value=None):
    """Standard output of `code` run by a fresh interpreter, in this environment with
    `variable` set to `value` (None: unset); the test fails, with the child's standard
    error, unless it exits 0."""
    env = dict(os.environ)
    if variable is not None:
        env.pop(variable, None)
        if value is not None:
            env[variable] = value
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
