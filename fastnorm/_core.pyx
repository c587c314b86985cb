"""fastnorm._core - the thin glue between NumPy arrays and the C API of fastnorm.h.

Design:
- One def per C entry point (norm, moments, affine, batch_norm_train, group_norm,
  update_running, norm_backward, batch_norm_backward, copy) plus the ISA/thread
  queries.  No math and no layout policy here:
  fastnorm/_checks.py turns user input into C-contiguous arrays of the right dtype
  before calling in.  The exceptions are the four
  one-step paths of the common calls, rows() (LayerNorm/RMSNorm), rows_backward() (their
  gradients), batch_norm() and group_norm_common() (GroupNorm/InstanceNorm), which check
  the NumPy arrays themselves (C-contiguous, or for the last two the channels-last view of
  an (N, C, ...) shape,
  _channels_last_view) and decline anything else, unwritten, to that Python path;
  batch_norm() widens float32 running statistics to the float64 that fastnorm_affine
  reads, as NumPy's astype would.
- Arrays are NumPy arrays, read through NumPy's C API (_Array): a buffer export or a
  typed memoryview costs about 130 ns an array or more, as much as the kernel of a
  768-value row, and a call takes four to eight arrays.  The general entry points are
  given the dtype code and check only an array's item size, so bfloat16 (a user dtype)
  and float16 arrays arrive as they are.
- Backstop checks before C runs: every array is C-contiguous, or a channels-last view
  that covers one contiguous block all the same, or for copy() any strides NumPy gives
  it (and writeable when C writes it), its item size and byte length exactly what the call will touch (C never
  reads or writes past an array), and its data aligned to its items (typed loads of
  misaligned data are undefined behaviour); None is NULL.
- The GIL is released around the C call.  The arguments' references keep the arrays
  alive; as in NumPy's own ufuncs, nothing else stops another thread resizing one
  (ndarray.resize refuses while references like these exist, unless refcheck=False).
- A non-OK status maps through one table to an exception class, with the status text and
  the arguments in the message.
- Outputs of 32 MB or more are allocated through _output_cache.h's NumPy memory handler,
  which reuses freed ones (fastnorm._config sets its limit from FASTNORM_OUTPUT_CACHE_MB).
"""
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastnorm._cfastnorm cimport *

cimport numpy as cnp
import sys

import numpy

cnp.import_array()

cdef object _ndarray = numpy.ndarray

cdef extern from "numpy/arrayobject.h":
    # NULL descr: the prototype's dtype.  About 2000 instructions less than calling
    # numpy.empty(x.shape, x.dtype) from here.
    object _empty_like "PyArray_NewLikeArray"(cnp.ndarray prototype, cnp.NPY_ORDER order,
                                               void *descr, int subok)
    object PyDataMem_SetHandler(object handler)

cdef extern from "_output_cache.h":
    size_t FN_CACHE_MIN_BYTES
    object fn_output_cache_handler()
    void fn_output_cache_set_limit(size_t limit)
    void fn_output_cache_state(size_t *count, size_t *held)

# ml_dtypes' bfloat16 is a user dtype: NumPy gives it a type number when it registers,
# which is looked up when a user dtype is first met (_user_dtype), not at import: importing
# ml_dtypes takes most of a second, and no array has its dtype before something imports it.
cdef int _bfloat16_num = -1

# Outputs of FN_CACHE_MIN_BYTES or more come from _output_cache.h's handler while the
# cache may hold something (fastnorm._config sets the limit).
cdef object _cache_handler = fn_output_cache_handler()
cdef size_t _cache_limit = 0
OUTPUT_CACHE_MIN_BYTES = FN_CACHE_MIN_BYTES


def set_output_cache_limit(size_t limit):
    """Keep at most `limit` bytes of freed large outputs for reuse (0: none)."""
    global _cache_limit
    _cache_limit = limit
    fn_output_cache_set_limit(limit)


def output_cache_state():
    """(blocks, bytes) the output cache holds now."""
    cdef size_t count, held
    fn_output_cache_state(&count, &held)
    return count, held


cdef inline bint _from_cache(Py_ssize_t nbytes) noexcept:
    return _cache_limit != 0 and <size_t>nbytes >= FN_CACHE_MIN_BYTES


cdef object _cached(object make, tuple args):
    """make(*args) with the output cache's handler: NumPy allocates the array through it."""
    previous = PyDataMem_SetHandler(_cache_handler)
    try:
        return make(*args)
    finally:
        PyDataMem_SetHandler(previous)


cdef object _new_like(object x, bint keep_layout=False):
    """An uninitialised array like the NumPy array x, C-ordered or (keep_layout) in x's
    memory order, as numpy.empty_like gives: an output."""
    if _from_cache(cnp.PyArray_NBYTES(<cnp.ndarray>x)):
        return _cached(numpy.empty_like, (x, None, "K" if keep_layout else "C"))
    return _empty_like(<cnp.ndarray>x, cnp.NPY_KEEPORDER if keep_layout else cnp.NPY_CORDER,
                       NULL, 0)


def empty(shape, dtype):
    """numpy.empty(shape, dtype) for an output, or for the C-order copy of a transposed
    input (_checks.contiguous): from the output cache when large."""
    cdef Py_ssize_t nbytes = numpy.dtype(dtype).itemsize
    for n in (shape if isinstance(shape, (tuple, list)) else (shape,)):
        nbytes *= n
    if _from_cache(nbytes):
        return _cached(numpy.empty, (shape, dtype))
    return numpy.empty(shape, dtype)


LAYER_NORM = FASTNORM_LAYER_NORM
RMS_NORM = FASTNORM_RMS_NORM
F32 = FASTNORM_F32
F64 = FASTNORM_F64
F16 = FASTNORM_F16
BF16 = FASTNORM_BF16

_ISA_NAMES = tuple(fastnorm_isa_name(<fastnorm_isa_t>i).decode() for i in range(FASTNORM_ISA_COUNT))
_DTYPE_NAMES = {F32: "F32", F64: "F64", F16: "F16", BF16: "BF16"}

# Status -> exception class; anything not listed (NULL_POINTER, ISA_UNAVAILABLE, unknown
# codes) is a RuntimeError: it means the Python layer passed something it should not.
_ERRORS = {
    FASTNORM_ERR_BAD_SHAPE: ValueError,
    FASTNORM_ERR_BAD_STRIDE: ValueError,
    FASTNORM_ERR_BAD_VALUE: ValueError,
    FASTNORM_ERR_BAD_DTYPE: TypeError,
    FASTNORM_ERR_NO_MEMORY: MemoryError,
}

# The most arrays one call takes (norm: x, residual, residual_out, y, weight, bias,
# mean_out, rstd_out).
cdef enum:
    MAX_ARRAYS = 8


cdef int _raise(fastnorm_status_t status, str function, str arguments) except -1:
    message = f"{function}: {fastnorm_status_string(status).decode()} ({arguments})"
    raise _ERRORS.get(status, RuntimeError)(message)


cdef Py_ssize_t _storage_size(int dtype) except -1:
    if dtype == FASTNORM_F32:
        return 4
    if dtype == FASTNORM_F64:
        return 8
    if dtype == FASTNORM_F16 or dtype == FASTNORM_BF16:
        return 2
    raise TypeError(f"unknown fastnorm dtype code {dtype}; expected one of {_DTYPE_NAMES}")


cdef inline Py_ssize_t _compute_size(int dtype) noexcept:
    return 8 if dtype == FASTNORM_F64 else 4


cdef Py_ssize_t _count(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c) except -1:
    """a * b * c elements, refusing negative sizes and products that overflow."""
    if a < 0 or b < 0 or c < 0:
        raise ValueError(f"sizes must be >= 0, got ({a}, {b}, {c})")
    # 16 bytes is more than any item size, so count * itemsize cannot overflow either.
    cdef Py_ssize_t limit = (<Py_ssize_t>(<size_t>-1 >> 1)) // 16
    if (b and a > limit // b) or (a * b and c > limit // (a * b)):
        raise ValueError(f"sizes ({a}, {b}, {c}) are too large")
    return a * b * c


cdef struct _Array:
    # An ndarray as the glue reads it, through NumPy's C API: a buffer export
    # (PyObject_GetBuffer) costs about 130 ns an array, more than a 768-value row's kernel.
    char *data  # NULL: the argument was None
    Py_ssize_t nbytes
    Py_ssize_t itemsize
    int flags  # NPY_ARRAY_*
    int dtype  # fastnorm dtype of a native float32/float64/float16/bfloat16 array, else -1
    int ndim
    cnp.npy_intp *shape


cdef inline int _numpy_dtype(cnp.ndarray arr) noexcept:
    """fastnorm dtype of a native-order float32/float64/float16/bfloat16 array, else -1."""
    cdef int type_num = cnp.PyArray_TYPE(arr)
    if not cnp.PyArray_ISNOTSWAPPED(arr):
        return -1
    if type_num == cnp.NPY_FLOAT32:
        return FASTNORM_F32
    if type_num == cnp.NPY_FLOAT64:
        return FASTNORM_F64
    if type_num == cnp.NPY_FLOAT16:
        return FASTNORM_F16
    if cnp.PyTypeNum_ISUSERDEF(type_num):
        return _user_dtype(type_num)
    return -1


cdef int _user_dtype(int type_num) noexcept:
    """FASTNORM_BF16 if type_num is ml_dtypes' bfloat16, else -1."""
    global _bfloat16_num
    if _bfloat16_num < 0:
        bfloat16 = getattr(sys.modules.get("ml_dtypes"), "bfloat16", None)
        if bfloat16 is not None:
            _bfloat16_num = numpy.dtype(bfloat16).num
    return FASTNORM_BF16 if type_num == _bfloat16_num else -1


cdef inline void _read(_Array *a, cnp.ndarray arr) noexcept:
    a.data = cnp.PyArray_BYTES(arr)
    a.nbytes = cnp.PyArray_NBYTES(arr)
    a.itemsize = cnp.PyArray_ITEMSIZE(arr)
    a.flags = cnp.PyArray_FLAGS(arr)
    a.dtype = _numpy_dtype(arr)
    a.ndim = cnp.PyArray_NDIM(arr)
    a.shape = cnp.PyArray_DIMS(arr)


cdef inline bint _usable(_Array *a, bint writable) noexcept:
    """C-contiguous, writeable when asked, data aligned to its items (typed loads of
    misaligned data are undefined behaviour in C; NumPy allows such arrays)."""
    cdef int need = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_WRITEABLE if writable else cnp.NPY_ARRAY_C_CONTIGUOUS
    return a.flags & need == need and <size_t>a.data & <size_t>(a.itemsize - 1) == 0


cdef int _mismatch(_Array *a, str name, Py_ssize_t count, Py_ssize_t itemsize, bint writable) except -1:
    if a.flags & cnp.NPY_ARRAY_C_CONTIGUOUS == 0:
        raise ValueError(f"{name}: expected a C-contiguous array")
    if writable and a.flags & cnp.NPY_ARRAY_WRITEABLE == 0:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    if a.itemsize != itemsize:
        raise TypeError(f"{name}: expected {itemsize}-byte items, got {a.itemsize}-byte items")
    if a.nbytes != count * itemsize:
        raise ValueError(f"{name}: expected {count} items ({count * itemsize} bytes), "
                         f"got {a.nbytes // a.itemsize} items ({a.nbytes} bytes)")
    raise ValueError(f"{name}: expected data aligned to its {itemsize}-byte items, got address "
                     f"{<size_t>a.data:#x} (a misaligned array: flags.aligned is False)")


cdef inline int _acquire(_Array *a, object array, str name, Py_ssize_t count,
                         Py_ssize_t itemsize, bint writable) except -1:
    """Read `array` into `a` (left NULL for None) and check its layout, item size, length
    and alignment: C never reads or writes past an array."""
    if array is None:
        return 0
    if not isinstance(array, cnp.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(array).__name__}")
    _read(a, <cnp.ndarray>array)
    if not _usable(a, writable) or a.itemsize != itemsize or a.nbytes != count * itemsize:
        _mismatch(a, name, count, itemsize, writable)
    return 0


cdef inline bint _take(_Array *a, object array, bint writable) noexcept:
    """Read an exact ndarray that is usable and of a fastnorm dtype into `a` (the
    one-step paths), or report False."""
    if type(array) is not _ndarray:
        return False
    _read(a, <cnp.ndarray>array)
    return _usable(a, writable) and a.dtype >= 0


cdef inline bint _apart(_Array *a, _Array *b) noexcept:
    """The byte ranges of two arrays do not overlap (b.data NULL: b is None)."""
    cdef size_t a0 = <size_t>a.data, b0 = <size_t>b.data
    return b.data == NULL or a0 + <size_t>a.nbytes <= b0 or b0 + <size_t>b.nbytes <= a0


cdef inline bint _placed(_Array *y, _Array *x, _Array *others, int count) noexcept:
    """The one-step paths' output rule: y is x itself (in place) or apart from it, and
    apart from each of others[:count] (None ones included: they hold no bytes)."""
    cdef int i
    if not (y.data == x.data or _apart(y, x)):
        return False
    for i in range(count):
        if not _apart(y, &others[i]):
            return False
    return True


cdef inline bint _channels_last_view(_Array *a, object array, bint writable) noexcept:
    """`array` is an exact ndarray of a fastnorm dtype, aligned to its items (and writeable
    when asked), whose axes (0, 2, ..., ndim - 1, 1) lie in C order: the (N, C, ...) view of
    an (N, ..., C) array, such as a PyTorch channels_last tensor gives.  Size-1 axes take any
    stride, as in NumPy's contiguity flags."""
    cdef cnp.npy_intp *strides
    cdef Py_ssize_t expected, axis, i  # untyped, i made this loop one of Python ints (0.3 us)
    if type(array) is not _ndarray:
        return False
    _read(a, <cnp.ndarray>array)
    if a.dtype < 0 or a.ndim < 3 or <size_t>a.data & <size_t>(a.itemsize - 1):
        return False
    if writable and a.flags & cnp.NPY_ARRAY_WRITEABLE == 0:
        return False
    strides = cnp.PyArray_STRIDES(<cnp.ndarray>array)
    expected = a.itemsize
    for i in range(a.ndim):  # innermost first: 1, ndim - 1, ..., 2, 0
        axis = 1 if i == 0 else (a.ndim - i if i < a.ndim - 1 else 0)
        if a.shape[axis] != 1 and strides[axis] != expected:
            return False
        expected *= a.shape[axis]
    return True


cdef inline bint _is_vector(_Array *a, object array, Py_ssize_t length, int dtype,
                            bint writable) noexcept:
    """`array` is a 1-D array of `length` items of `dtype` that _take accepts."""
    return _take(a, array, writable) and a.ndim == 1 and a.shape[0] == length and a.dtype == dtype


cdef inline bint _param_taken(_Array *a, object param, Py_ssize_t middle, int compute_dtype) noexcept:
    """None (a left NULL), or a weight/bias of `middle` items of the compute dtype."""
    return param is None or _is_vector(a, param, middle, compute_dtype, False)


cdef inline bint _like(_Array *a, object array, _Array *x, bint writable,
                       bint channels_last=False) noexcept:
    """`array` has x's shape and dtype (and is writeable when asked), and is C-contiguous
    or, with channels_last, a channels-last view like x (_channels_last_view)."""
    cdef int i
    if channels_last:
        if not _channels_last_view(a, array, writable):
            return False
    elif not _take(a, array, writable):
        return False
    if a.ndim != x.ndim or a.dtype != x.dtype:
        return False
    for i in range(x.ndim):
        if a.shape[i] != x.shape[i]:
            return False
    return True


def norm(int kind, int dtype, Py_ssize_t outer, Py_ssize_t middle, Py_ssize_t inner,
         x, residual, residual_out, y, weight, bias, double eps, mean_out, rstd_out,
         int n_threads):
    """LayerNorm/RMSNorm of x seen as (outer, middle, inner), statistics over middle.

    x, residual (IN), residual_out, y (OUT): storage dtype, outer*middle*inner items.
    weight, bias (IN): compute dtype, middle items.  mean_out, rstd_out (OUT): compute
    dtype, outer*inner items.  Optional ones may be None.
    """
    cdef Py_ssize_t item = _storage_size(dtype), compute = _compute_size(dtype)
    cdef Py_ssize_t data = _count(outer, middle, inner), stats = _count(outer, 1, inner)
    cdef _Array v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    memset(v, 0, sizeof(v))
    _acquire(&v[0], x, "x", data, item, False)
    _acquire(&v[1], residual, "residual", data, item, False)
    _acquire(&v[2], residual_out, "residual_out", data, item, True)
    _acquire(&v[3], y, "y", data, item, True)
    _acquire(&v[4], weight, "weight", middle, compute, False)
    _acquire(&v[5], bias, "bias", middle, compute, False)
    _acquire(&v[6], mean_out, "mean_out", stats, compute, True)
    _acquire(&v[7], rstd_out, "rstd_out", stats, compute, True)
    with nogil:
        status = fastnorm_norm(<fastnorm_norm_kind_t>kind, <fastnorm_dtype_t>dtype,
                               outer, middle, inner, v[0].data, v[1].data, v[2].data, v[3].data,
                               v[4].data, v[5].data, eps, v[6].data, v[7].data, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_norm", f"kind={kind}, dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, middle={middle}, inner={inner}, eps={eps!r}, "
               f"residual={residual is not None}, residual_out={residual_out is not None}")


def rows(int kind, x, normalized_shape, weight, bias, eps, residual, residual_out, out,
         int n_threads):
    """The common LayerNorm/RMSNorm call in one step: statistics over x's last axis.

    Takes only what needs no conversion: NumPy arrays, x C-contiguous float32/float64/
    float16/bfloat16 and aligned, normalized_shape None, an int or a 1-tuple of an int
    equal to the last dimension, weight/bias None or 1-D of the compute dtype (float64 for
    float64 x, float32 otherwise), residual None or an array like x, residual_out None
    (or, with residual, a writeable array like x that is x, residual or apart from every
    input), out None (allocated) or a writeable array like x that is x itself or apart
    from every other argument.  eps is a checked float, or None for the compute dtype's
    machine epsilon (rms_norm's default).  Returns y, or None without writing anything
    when an argument is outside that: the caller's general path then converts, copies or
    raises with the right message.
    """
    cdef _Array v[6]  # x, weight, bias, residual, residual_out, y
    cdef fastnorm_status_t status
    cdef int dtype, compute
    cdef Py_ssize_t middle, outer
    cdef double epsilon
    memset(v, 0, sizeof(v))
    if not _take(&v[0], x, False) or v[0].ndim == 0 or v[0].nbytes == 0:
        return None
    dtype = v[0].dtype
    middle = v[0].shape[v[0].ndim - 1]
    outer = v[0].nbytes // v[0].itemsize // middle
    if normalized_shape is not None:
        if type(normalized_shape) is tuple and len(<tuple>normalized_shape) == 1:
            normalized_shape = (<tuple>normalized_shape)[0]
        if type(normalized_shape) is not int or normalized_shape != middle:
            return None
    compute = FASTNORM_F64 if dtype == FASTNORM_F64 else FASTNORM_F32
    epsilon = (2.0 ** -52 if compute == FASTNORM_F64 else 2.0 ** -23) if eps is None else eps
    if not (_param_taken(&v[1], weight, middle, compute) and _param_taken(&v[2], bias, middle, compute)):
        return None
    if residual is not None:
        if not _like(&v[3], residual, &v[0], False):
            return None
        if residual_out is not None:  # x + residual written in place, or apart from all inputs
            if not (_like(&v[4], residual_out, &v[0], True)
                    and (v[4].data == v[0].data or v[4].data == v[3].data
                         or (_apart(&v[4], &v[0]) and _apart(&v[4], &v[3])))
                    and _apart(&v[4], &v[1]) and _apart(&v[4], &v[2])):
                return None
    elif residual_out is not None:
        return None
    if out is None:
        out = _new_like(x)
    if not _like(&v[5], out, &v[0], True):
        return None
    if not _placed(&v[5], &v[0], &v[1], 4):
        return None
    with nogil:
        status = fastnorm_norm(<fastnorm_norm_kind_t>kind, <fastnorm_dtype_t>dtype, outer,
                               middle, 1, v[0].data, v[3].data, v[4].data, v[5].data, v[1].data,
                               v[2].data, epsilon, NULL, NULL, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_norm", f"kind={kind}, dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, middle={middle}, eps={epsilon!r}, residual={residual is not None}")
    return out


def moments(int dtype, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
            x, mean_out, m2_out, int n_threads):
    """Per-channel float64 mean and m2 of x seen as (outer, channels, inner).

    x (IN): storage dtype, outer*channels*inner items.  mean_out, m2_out (OUT): float64,
    channels items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), data = _count(outer, channels, inner)
    cdef _Array v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    memset(v, 0, sizeof(v))
    _acquire(&v[0], x, "x", data, item, False)
    _acquire(&v[1], mean_out, "mean_out", channels, 8, True)
    _acquire(&v[2], m2_out, "m2_out", channels, 8, True)
    with nogil:
        status = fastnorm_moments(<fastnorm_dtype_t>dtype, outer, channels, inner, v[0].data,
                                  <double *>v[1].data, <double *>v[2].data, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_moments", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, channels={channels}, inner={inner}")


def affine(int dtype, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
           x, y, mean, var, weight, bias, double eps, int n_threads):
    """y = (x - mean[c]) * weight[c] / sqrt(var[c] + eps) + bias[c], x seen as (outer,
    channels, inner).

    x (IN), y (OUT): storage dtype, outer*channels*inner items (y may be x).  mean (may be
    None), var (IN): float64, channels items.  weight, bias (IN, may be None): compute
    dtype, channels items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), compute = _compute_size(dtype)
    cdef Py_ssize_t data = _count(outer, channels, inner)
    cdef _Array v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    memset(v, 0, sizeof(v))
    _acquire(&v[0], x, "x", data, item, False)
    _acquire(&v[1], y, "y", data, item, True)
    _acquire(&v[2], mean, "mean", channels, 8, False)
    _acquire(&v[3], var, "var", channels, 8, False)
    _acquire(&v[4], weight, "weight", channels, compute, False)
    _acquire(&v[5], bias, "bias", channels, compute, False)
    with nogil:
        status = fastnorm_affine(<fastnorm_dtype_t>dtype, outer, channels, inner, v[0].data,
                                 v[1].data, <const double *>v[2].data, <const double *>v[3].data,
                                 v[4].data, v[5].data, eps, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_affine", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, channels={channels}, inner={inner}, eps={eps!r}")


def batch_norm_train(int dtype, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
                     x, y, weight, bias, double eps, mean_out, var_out, int n_threads):
    """BatchNorm training of x seen as (outer, channels, inner): batch mean and population
    variance per channel into mean_out / var_out, then y as affine() gives with them.

    x (IN), y (OUT): storage dtype, outer*channels*inner items (y may be x).  weight, bias
    (IN, may be None): compute dtype, channels items.  mean_out, var_out (OUT): float64,
    channels items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), compute = _compute_size(dtype)
    cdef Py_ssize_t data = _count(outer, channels, inner)
    cdef _Array v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    memset(v, 0, sizeof(v))
    _acquire(&v[0], x, "x", data, item, False)
    _acquire(&v[1], y, "y", data, item, True)
    _acquire(&v[2], weight, "weight", channels, compute, False)
    _acquire(&v[3], bias, "bias", channels, compute, False)
    _acquire(&v[4], mean_out, "mean_out", channels, 8, True)
    _acquire(&v[5], var_out, "var_out", channels, 8, True)
    with nogil:
        status = fastnorm_batch_norm_train(<fastnorm_dtype_t>dtype, outer, channels, inner,
                                           v[0].data, v[1].data, v[2].data, v[3].data, eps,
                                           <double *>v[4].data, <double *>v[5].data, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_batch_norm_train", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, channels={channels}, inner={inner}, eps={eps!r}")


def norm_backward(int kind, int dtype, Py_ssize_t outer, Py_ssize_t middle, Py_ssize_t inner,
                  grad_y, x, mean, rstd, weight, grad_x, grad_weight, grad_bias, int n_threads):
    """Gradients of LayerNorm/RMSNorm of (outer, middle, inner) data normalized over middle
    (fastnorm.h).

    grad_y, x (IN), grad_x (OUT): storage dtype, outer*middle*inner items.  mean (IN, None
    for RMSNorm), rstd (IN): compute dtype, outer*inner items.  weight (IN, may be None):
    compute dtype, middle items.  grad_weight, grad_bias (OUT, may be None): float64,
    middle items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), compute = _compute_size(dtype)
    cdef Py_ssize_t data = _count(outer, middle, inner), stats = _count(outer, 1, inner)
    cdef _Array v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    memset(v, 0, sizeof(v))
    _acquire(&v[0], grad_y, "grad_y", data, item, False)
    _acquire(&v[1], x, "x", data, item, False)
    _acquire(&v[2], mean, "mean", stats, compute, False)
    _acquire(&v[3], rstd, "rstd", stats, compute, False)
    _acquire(&v[4], weight, "weight", middle, compute, False)
    _acquire(&v[5], grad_x, "grad_x", data, item, True)
    _acquire(&v[6], grad_weight, "grad_weight", middle, 8, True)
    _acquire(&v[7], grad_bias, "grad_bias", middle, 8, True)
    with nogil:
        status = fastnorm_norm_backward(<fastnorm_norm_kind_t>kind, <fastnorm_dtype_t>dtype, outer,
                                        middle, inner, v[0].data, v[1].data, v[2].data,
                                        v[3].data, v[4].data, v[5].data, <double *>v[6].data,
                                        <double *>v[7].data, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_norm_backward", f"kind={kind}, "
               f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, outer={outer}, middle={middle}, "
               f"inner={inner}")


cdef inline bint _stat_taken(_Array *a, object stat, _Array *x, int compute) noexcept:
    """`stat` is a row statistic of x over its last axis: an exact ndarray of the compute
    dtype with x's shape without the last dimension."""
    cdef int i
    if not _take(a, stat, False) or a.dtype != compute or a.ndim != x.ndim - 1:
        return False
    for i in range(a.ndim):
        if a.shape[i] != x.shape[i]:
            return False
    return True


def rows_backward(int kind, grad_y, x, mean, rstd, weight, int n_threads):
    """The common layer_norm_backward / rms_norm_backward call in one step: x's last axis
    normalized.

    Takes only what needs no conversion: NumPy arrays, x C-contiguous of a fastnorm dtype
    and aligned, grad_y like it, mean (LayerNorm; None for RMSNorm) and rstd of the compute
    dtype shaped like x without its last dimension, weight None or 1-D of the compute
    dtype.  Returns (grad_x, grad_weight or None, grad_bias or None for RMSNorm), the sums
    in the compute dtype, or None without writing anything when an argument is outside
    that (the caller's general path then converts or raises).
    """
    cdef _Array v[5]  # grad_y, x, mean, rstd, weight
    cdef _Array out
    cdef fastnorm_status_t status
    cdef int compute
    cdef Py_ssize_t n, rows
    cdef double *grad_weight = NULL
    cdef double *grad_bias = NULL
    memset(v, 0, sizeof(v))
    memset(&out, 0, sizeof(out))
    if not _take(&v[1], x, False) or v[1].ndim == 0 or v[1].nbytes == 0:
        return None
    if not _like(&v[0], grad_y, &v[1], False):
        return None
    compute = FASTNORM_F64 if v[1].dtype == FASTNORM_F64 else FASTNORM_F32
    if (kind == FASTNORM_LAYER_NORM) != (mean is not None):
        return None
    if mean is not None and not _stat_taken(&v[2], mean, &v[1], compute):
        return None
    if not _stat_taken(&v[3], rstd, &v[1], compute):
        return None
    n = v[1].shape[v[1].ndim - 1]
    rows = v[1].nbytes // v[1].itemsize // n
    if not _param_taken(&v[4], weight, n, compute):
        return None
    grad_x = _new_like(x)
    _read(&out, <cnp.ndarray>grad_x)
    sums = [numpy.empty(n) if weight is not None else None,
            numpy.empty(n) if kind == FASTNORM_LAYER_NORM else None]
    if sums[0] is not None:
        grad_weight = <double *>cnp.PyArray_DATA(<cnp.ndarray>sums[0])
    if sums[1] is not None:
        grad_bias = <double *>cnp.PyArray_DATA(<cnp.ndarray>sums[1])
    with nogil:
        status = fastnorm_norm_backward(<fastnorm_norm_kind_t>kind, <fastnorm_dtype_t>v[1].dtype,
                                        rows, n, 1, v[0].data, v[1].data, v[2].data, v[3].data,
                                        v[4].data, out.data, grad_weight, grad_bias, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_norm_backward", f"kind={kind}, "
               f"dtype={_DTYPE_NAMES.get(v[1].dtype, v[1].dtype)}, rows={rows}, n={n}")
    if compute == FASTNORM_F32:
        sums = [None if s is None else s.astype(numpy.float32) for s in sums]
    return grad_x, sums[0], sums[1]


def batch_norm_backward(int dtype, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
                        grad_y, x, mean, rstd, weight, grad_x, grad_weight, grad_bias,
                        int n_threads):
    """Training-mode gradients of BatchNorm of (outer, channels, inner) data (fastnorm.h).

    grad_y, x (IN), grad_x (OUT): storage dtype, outer*channels*inner items.  mean, rstd
    (IN): compute dtype, channels items.  weight (IN, may be None): compute dtype, channels
    items.  grad_weight, grad_bias (OUT, may be None): float64, channels items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), compute = _compute_size(dtype)
    cdef Py_ssize_t data = _count(outer, channels, inner)
    cdef _Array v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    memset(v, 0, sizeof(v))
    _acquire(&v[0], grad_y, "grad_y", data, item, False)
    _acquire(&v[1], x, "x", data, item, False)
    _acquire(&v[2], mean, "mean", channels, compute, False)
    _acquire(&v[3], rstd, "rstd", channels, compute, False)
    _acquire(&v[4], weight, "weight", channels, compute, False)
    _acquire(&v[5], grad_x, "grad_x", data, item, True)
    _acquire(&v[6], grad_weight, "grad_weight", channels, 8, True)
    _acquire(&v[7], grad_bias, "grad_bias", channels, 8, True)
    with nogil:
        status = fastnorm_batch_norm_backward(<fastnorm_dtype_t>dtype, outer, channels, inner,
                                              v[0].data, v[1].data, v[2].data, v[3].data,
                                              v[4].data, v[5].data, <double *>v[6].data,
                                              <double *>v[7].data, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_batch_norm_backward", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, channels={channels}, inner={inner}")


def copy(src, dst, int n_threads):
    """dst[...] = src by fastnorm_copy_strided (tiled, for transposes such as Fortran
    order) on up to n_threads threads: NumPy arrays of one shape and item size (2, 4 or
    8), any strides, dst writeable and apart from src; the bits are copied."""
    if not isinstance(src, cnp.ndarray) or not isinstance(dst, cnp.ndarray):
        raise TypeError(f"copy: expected NumPy arrays, got {type(src).__name__} and "
                        f"{type(dst).__name__}")
    cdef cnp.ndarray s = <cnp.ndarray>src, d = <cnp.ndarray>dst
    cdef size_t ndim = s.ndim, k, item = s.itemsize
    cdef size_t shape[FASTNORM_MAX_DIMS]
    cdef ptrdiff_t src_strides[FASTNORM_MAX_DIMS]
    cdef ptrdiff_t dst_strides[FASTNORM_MAX_DIMS]
    cdef fastnorm_status_t status
    if src.shape != dst.shape or s.itemsize != d.itemsize:
        raise ValueError(f"copy: src {src.shape} {src.dtype} and dst {dst.shape} {dst.dtype} "
                         "differ in shape or item size")
    if not d.flags.writeable:
        raise ValueError("copy: dst is read-only")
    if ndim < 1 or ndim > FASTNORM_MAX_DIMS:
        raise ValueError(f"copy takes 1 to {FASTNORM_MAX_DIMS} dimensions, got {ndim}")
    for k in range(ndim):
        shape[k] = s.shape[k]
        src_strides[k] = s.strides[k]
        dst_strides[k] = d.strides[k]
    cdef const void *src_data = cnp.PyArray_DATA(s)
    cdef void *dst_data = cnp.PyArray_DATA(d)
    with nogil:
        status = fastnorm_copy_strided(item, ndim, shape, src_data, src_strides, dst_data,
                                       dst_strides, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_copy_strided", f"item_size={item}, shape={src.shape}, "
               f"strides {src.strides} -> {dst.strides}")


def update_running(int running_dtype, running_mean, running_var, mean, var, Py_ssize_t count,
                   double momentum):
    """BatchNorm's running statistics after a training step, in place (fastnorm.h's formula).

    running_mean, running_var (IN/OUT): running_dtype (F32 or F64), C-contiguous, as many
    items as mean.  mean, var (IN): float64 batch statistics over `count` values.
    """
    cdef Py_ssize_t channels = len(mean), item = _storage_size(running_dtype)
    cdef _Array v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    memset(v, 0, sizeof(v))
    _acquire(&v[0], running_mean, "running_mean", channels, item, True)
    _acquire(&v[1], running_var, "running_var", channels, item, True)
    _acquire(&v[2], mean, "mean", channels, 8, False)
    _acquire(&v[3], var, "var", channels, 8, False)
    status = fastnorm_update_running(<fastnorm_dtype_t>running_dtype, channels, count, momentum,
                                     <const double *>v[2].data, <const double *>v[3].data,
                                     v[0].data, v[1].data)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_update_running", f"channels={channels}, count={count}, "
               f"momentum={momentum!r}")


def batch_norm(x, running_mean, running_var, weight, bias, bint training, momentum, eps, axis,
               out, int n_threads):
    """The common BatchNorm call in one step: channel axis 1 or -1, no return_stats.

    Takes only what needs no conversion: NumPy arrays, x float32/float64/float16/bfloat16,
    aligned, with at least 2 dimensions, and C-contiguous or (axis 1) a channels-last view
    (_channels_last_view), computed as the (N * ..., C) rows it lies in; weight/bias None or
    1-D of the compute dtype; running statistics 1-D float32/float64 (both, or for training
    neither; writable and apart for training); out None or an array in x's layout, shape
    and dtype that is x itself or shares no memory with any other argument; eps and
    momentum valid floats, axis the int 1 or -1.  Returns y (new ones in x's layout), or
    None without writing anything when an argument is outside that: the caller's general
    path then converts, copies or raises with the right message.
    """
    cdef _Array v[6]  # x, y, weight, bias, running_mean, running_var
    cdef fastnorm_status_t status = FASTNORM_OK
    cdef int dtype, compute, running = -1
    cdef Py_ssize_t outer = 1, channels, inner = 1, i, channel_axis
    cdef bint view = False  # x is a channels-last view
    cdef double epsilon, rate
    cdef double *stats = NULL
    cdef const double *mean
    cdef const double *var
    if type(eps) is not float or type(momentum) is not float or type(axis) is not int:
        return None
    epsilon, rate = eps, momentum
    if not (0.0 <= epsilon and isfinite(epsilon) and 0.0 <= rate <= 1.0) or not (axis == 1 or axis == -1):
        return None
    memset(v, 0, sizeof(v))
    if not _take(&v[0], x, False):
        view = axis == 1 and _channels_last_view(&v[0], x, False)
        if not view:
            return None
    if v[0].ndim < 2 or v[0].nbytes == 0:
        return None
    dtype = v[0].dtype
    channel_axis = 1 if axis == 1 else v[0].ndim - 1
    channels = v[0].shape[channel_axis]
    if view:  # the channels-last rows it lies in, as the general path computes it
        outer = v[0].nbytes // v[0].itemsize // channels
    else:
        for i in range(channel_axis):
            outer *= v[0].shape[i]
        for i in range(channel_axis + 1, v[0].ndim):
            inner *= v[0].shape[i]
    if training and outer * inner < 2:
        return None
    compute = FASTNORM_F64 if dtype == FASTNORM_F64 else FASTNORM_F32
    if not (_param_taken(&v[2], weight, channels, compute) and _param_taken(&v[3], bias, channels, compute)):
        return None
    if running_mean is not None and running_var is not None:
        # float32 or float64, both the same; written in place when training
        if not (_take(&v[4], running_mean, training)
                and (v[4].dtype == FASTNORM_F32 or v[4].dtype == FASTNORM_F64)
                and v[4].ndim == 1 and v[4].shape[0] == channels
                and _is_vector(&v[5], running_var, channels, v[4].dtype, training)
                and (not training or _apart(&v[4], &v[5]))):
            return None
        running = v[4].dtype
    elif not training or running_mean is not None or running_var is not None:
        return None
    if out is None:
        out = _new_like(x, view)
    if not _like(&v[1], out, &v[0], True, view):
        return None
    if not _placed(&v[1], &v[0], &v[2], 4):
        return None
    stats = <double *>malloc(2 * channels * sizeof(double))
    if stats == NULL:
        raise MemoryError(f"batch_norm: no memory for the statistics of {channels} channels")
    try:
        mean, var = <const double *>v[4].data, <const double *>v[5].data
        if running == FASTNORM_F32:  # eval reads them as float64 (NumPy's exact conversion)
            for i in range(channels):
                stats[i] = (<float *>v[4].data)[i]
                stats[channels + i] = (<float *>v[5].data)[i]
            mean, var = stats, stats + channels
        with nogil:
            if training:
                status = fastnorm_batch_norm_train(<fastnorm_dtype_t>dtype, outer, channels, inner,
                                                   v[0].data, v[1].data, v[2].data, v[3].data, epsilon,
                                                   stats, stats + channels, n_threads)
                if status == FASTNORM_OK and running >= 0:
                    status = fastnorm_update_running(<fastnorm_dtype_t>running, channels,
                                                     outer * inner, rate, stats, stats + channels,
                                                     v[4].data, v[5].data)
            else:
                status = fastnorm_affine(<fastnorm_dtype_t>dtype, outer, channels, inner,
                                         v[0].data, v[1].data, mean, var, v[2].data, v[3].data,
                                         epsilon, n_threads)
    finally:
        free(stats)
    if status != FASTNORM_OK:
        _raise(status, "batch_norm", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, outer={outer}, "
               f"channels={channels}, inner={inner}, eps={epsilon!r}, training={training}")
    return out


cdef int _run_group_norm(int dtype, Py_ssize_t n, Py_ssize_t channels, Py_ssize_t groups,
                         Py_ssize_t spatial, const char *x, char *y, const char *weight,
                         const char *bias, double eps, int n_threads,
                         bint channels_last) except -1:
    """fastnorm_group_norm (or its channels_last form) without the GIL; a non-OK status
    raised (group_norm and group_norm_common)."""
    cdef fastnorm_status_t status
    with nogil:
        if channels_last:
            status = fastnorm_group_norm_channels_last(<fastnorm_dtype_t>dtype, n, channels,
                                                       groups, spatial, x, y, weight, bias, eps,
                                                       n_threads)
        else:
            status = fastnorm_group_norm(<fastnorm_dtype_t>dtype, n, channels, groups, spatial,
                                         x, y, weight, bias, eps, n_threads)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_group_norm", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, n={n}, "
               f"channels={channels}, groups={groups}, spatial={spatial}, eps={eps!r}, "
               f"channels_last={channels_last}")
    return 0


def group_norm(int dtype, Py_ssize_t n, Py_ssize_t channels, Py_ssize_t groups,
               Py_ssize_t spatial, x, y, weight, bias, double eps, int n_threads,
               bint channels_last=False):
    """GroupNorm of x seen as (n, channels, spatial), or as (n, spatial, channels) when
    channels_last, statistics per (sample, group).

    x (IN), y (OUT): storage dtype, n*channels*spatial items (y may be x).  weight, bias
    (IN, may be None): compute dtype, channels items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), compute = _compute_size(dtype)
    cdef Py_ssize_t data = _count(n, channels, spatial)
    cdef _Array v[MAX_ARRAYS]
    if groups < 0:
        raise ValueError(f"groups must be >= 0, got {groups}")
    memset(v, 0, sizeof(v))
    _acquire(&v[0], x, "x", data, item, False)
    _acquire(&v[1], y, "y", data, item, True)
    _acquire(&v[2], weight, "weight", channels, compute, False)
    _acquire(&v[3], bias, "bias", channels, compute, False)
    _run_group_norm(dtype, n, channels, groups, spatial, v[0].data, v[1].data, v[2].data,
                    v[3].data, eps, n_threads, channels_last)


def group_norm_common(x, num_groups, weight, bias, eps, int n_threads):
    """The common GroupNorm call in one step (InstanceNorm's too: num_groups = C).

    Takes only what needs no conversion: a NumPy array x of a fastnorm dtype, aligned, with
    at least 2 dimensions and at least one value, C-contiguous or a channels-last view
    (_channels_last_view); num_groups an int that divides its C channels; weight/bias None
    or 1-D of the compute dtype and length C; eps a valid float.  Returns a new y in x's
    layout, or None without writing anything: the caller's general path then converts,
    copies or raises with the right message.
    """
    cdef _Array v[3]  # x, weight, bias
    cdef Py_ssize_t n, channels, groups, spatial
    cdef int dtype, compute
    cdef bint view = False
    cdef double epsilon
    if type(num_groups) is not int or type(eps) is not float:
        return None
    epsilon = eps
    if not (0.0 <= epsilon and isfinite(epsilon)):
        return None
    memset(v, 0, sizeof(v))
    if not _take(&v[0], x, False):
        view = _channels_last_view(&v[0], x, False)
        if not view:
            return None
    if v[0].ndim < 2 or v[0].nbytes == 0:
        return None
    n, channels = v[0].shape[0], v[0].shape[1]
    if not (0 < num_groups <= channels) or channels % num_groups:
        return None
    groups = num_groups
    spatial = v[0].nbytes // v[0].itemsize // (n * channels)
    dtype = v[0].dtype
    compute = FASTNORM_F64 if dtype == FASTNORM_F64 else FASTNORM_F32
    if not (_param_taken(&v[1], weight, channels, compute) and _param_taken(&v[2], bias, channels, compute)):
        return None
    y = _new_like(x, view)
    _run_group_norm(dtype, n, channels, groups, spatial, v[0].data,
                    cnp.PyArray_BYTES(<cnp.ndarray>y), v[1].data, v[2].data, epsilon, n_threads,
                    view)
    return y


def stream_min_bytes(threads=None):
    """Bytes of output from which copies between layouts are written with streaming stores:
    8 MiB, or a sixteenth of the last-level cache where that is more (api_internal.h,
    fn_llc_stream_min_bytes).  With `threads`: the bound of rows without a residual on that
    many threads, the same on one and at least 16 MiB on more (fn_row_stream_min_bytes).
    The tests size their arrays by it."""
    if threads is None:
        return fn_llc_stream_min_bytes()
    return fn_row_stream_min_bytes(threads)


def isa_compiled():
    """Kernel families built into this extension, e.g. ["scalar", "avx2", "avx512"]."""
    return [name for i, name in enumerate(_ISA_NAMES) if fastnorm_isa_compiled(<fastnorm_isa_t>i)]


def isa_supported():
    """Kernel families compiled in that this CPU and OS can run."""
    return [name for i, name in enumerate(_ISA_NAMES) if fastnorm_isa_supported(<fastnorm_isa_t>i)]


def best_isa():
    """The family chosen at import: the best of isa_supported()."""
    return _ISA_NAMES[fastnorm_best_isa()]


def get_isa():
    """The family the next call will run."""
    return _ISA_NAMES[fastnorm_get_isa()]


def set_isa(name):
    """Switch the kernel family for every later call (process-wide)."""
    if name not in _ISA_NAMES:
        raise ValueError(f"unknown kernel family {name!r}; expected one of {list(_ISA_NAMES)}")
    cdef int isa = _ISA_NAMES.index(name)
    cdef fastnorm_status_t status = fastnorm_set_isa(<fastnorm_isa_t>isa)
    if status == FASTNORM_ERR_ISA_UNAVAILABLE:
        raise RuntimeError(f"kernel family {name!r} is not available here: compiled in "
                           f"{isa_compiled()}, runnable on this CPU {isa_supported()}")
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_set_isa", f"name={name!r}")


def avx512_bf16_supported():
    """Whether the avx512 family can convert bfloat16 with AVX512-BF16 here (built and
    the CPU has it); it then does by default."""
    return bool(fastnorm_avx512_bf16_supported())


def avx512_bf16_enabled():
    """Whether the avx512 family converts bfloat16 with AVX512-BF16 (supported and not
    turned off by set_avx512_bf16)."""
    return bool(fastnorm_avx512_bf16_enabled())


def set_avx512_bf16(enabled):
    """Let the avx512 family use AVX512-BF16 where supported (the default), or not."""
    if fastnorm_set_avx512_bf16(1 if enabled else 0) != FASTNORM_OK:
        raise RuntimeError("the AVX512-BF16 conversions are not available here: "
                           "this build or this CPU lacks them")


_TUNINGS = ("default", "amd")


def get_tuning():
    """The tuning in force: "amd" (chosen where CPUID names AMD or Hygon) or "default"."""
    return _TUNINGS[fastnorm_tuning()]


def set_tuning(name):
    """Switch the tuning for every later call (process-wide): the order in which rows are
    normalized (a row ahead, in groups, a LayerNorm row's first center a call early) and
    which prefetches are issued.  Results are the same bits either way; the tests run
    both where a path depends on it."""
    if name not in _TUNINGS:
        raise ValueError(f"unknown tuning {name!r}; expected one of {list(_TUNINGS)}")
    cdef int tuning = _TUNINGS.index(name)
    fastnorm_set_tuning(<fastnorm_tuning_t>tuning)


def openmp_enabled():
    """Whether the extension was built with OpenMP."""
    return bool(fastnorm_openmp_enabled())


def default_threads():
    """Threads a call with n_threads <= 0 uses now (OMP_NUM_THREADS, threadpoolctl)."""
    return fastnorm_default_threads()


def thread_limit():
    """The most threads a call uses: 1024 (FASTNORM_MAX_TEAM); 1 without OpenMP, and 1 in a
    process forked after fastnorm ran a team of threads (GNU OpenMP cannot start threads
    there)."""
    return fastnorm_thread_limit()


# Probe the CPU and pick the kernel family now, under the import lock and the GIL, so no
# two threads race the first choice.
fastnorm_get_isa()
