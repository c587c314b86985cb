"""fastnorm._core - the thin glue between NumPy arrays and the C API of fastnorm.h.

Design:
- One def per C entry point (norm, moments, affine, batch_norm_train, group_norm,
  update_running) plus the ISA/thread queries.  No math and no layout policy here:
  fastnorm/_checks.py turns user input into C-contiguous arrays of the right dtype
  (float16/bfloat16 as uint16 views) before calling in.  The exceptions are the two
  one-step paths of the common calls, rows() (LayerNorm/RMSNorm) and batch_norm(), which
  check the buffers of NumPy arrays themselves and decline anything else, unwritten, to
  that Python path; batch_norm() widens float32 running statistics to the float64 that
  fastnorm_affine reads, as NumPy's astype would.
- Arrays arrive through the buffer protocol (PyBUF_C_CONTIGUOUS, plus PyBUF_WRITABLE for
  outputs), not typed memoryviews: a raw Py_buffer costs a fraction of a memoryview
  object, and the glue of a small call must stay in the 100-300 ns range.
- Backstop checks before C runs: every buffer's item size and byte length must be exactly
  what the call will touch (C never reads or writes past a buffer), and its data aligned to
  its items (typed loads of misaligned data are undefined behaviour); None is NULL.
- The GIL is released around the C call; the buffers stay exported (NumPy cannot resize
  or free them) until after it returns.
- A non-OK status maps through one table to an exception class, with the status text and
  the arguments in the message.
"""
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.exc cimport PyErr_Clear
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastnorm._cfastnorm cimport *

import numpy

# rows() allocates its output with NumPy (a runtime dependency; nothing of NumPy at build time)
cdef object _ndarray = numpy.ndarray
cdef object _empty = numpy.empty

cdef extern from "Python.h":
    # PyObject_GetBuffer without Cython's error check: returns -1 with an exception set.
    int _get_buffer "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags) noexcept

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


cdef int _buffer_mismatch(Py_buffer *view, str name, Py_ssize_t count, Py_ssize_t itemsize) except -1:
    if view.itemsize != itemsize:
        raise TypeError(f"{name}: expected {itemsize}-byte items, got {view.itemsize}-byte items")
    if view.len != count * itemsize:
        raise ValueError(f"{name}: expected {count} items ({count * itemsize} bytes), "
                         f"got {view.len // view.itemsize} items ({view.len} bytes)")
    raise ValueError(f"{name}: expected data aligned to its {itemsize}-byte items, got address "
                     f"{<size_t>view.buf:#x} (a misaligned array: flags.aligned is False)")


cdef int _export_failed(Py_buffer *view, object array, str name, int flags) except -1:
    """Slow path of _acquire: redo the failed export to raise its error with `name` in it."""
    PyErr_Clear()
    try:
        PyObject_GetBuffer(array, view, flags)
    except Exception as error:
        kind = "a writable C-contiguous array" if flags & PyBUF_WRITABLE else "a C-contiguous array"
        raise type(error)(f"{name}: expected {kind}, got {type(array).__name__} ({error})") from None
    raise BufferError(f"{name}: the buffer export failed once and then succeeded")  # released by the caller


cdef inline int _acquire(Py_buffer *view, object array, str name, Py_ssize_t count,
                         Py_ssize_t itemsize, bint writable) except -1:
    """Export `array` into `view` (left NULL for None) and check its item size, length, alignment."""
    if array is None:
        return 0
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE if writable else PyBUF_C_CONTIGUOUS
    # The non-raising declaration keeps a try/except (~25 ns per call) off the fast path.
    if _get_buffer(array, view, flags) < 0:
        _export_failed(view, array, name, flags)
    # Misaligned data (NumPy allows it, e.g. from a bytes buffer at an odd offset) would make
    # the C kernels' typed loads undefined behaviour; _checks.py copies such arrays first.
    if view.itemsize != itemsize or view.len != count * itemsize or <size_t>view.buf & (itemsize - 1):
        _buffer_mismatch(view, name, count, itemsize)
    return 0


cdef inline void _init(Py_buffer *views) noexcept:
    memset(views, 0, MAX_ARRAYS * sizeof(Py_buffer))  # obj and buf NULL: "not exported"


cdef inline void _release(Py_buffer *views) noexcept:
    for i in range(MAX_ARRAYS):
        PyBuffer_Release(&views[i])  # a no-op for the ones never exported (obj == NULL)


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
    cdef Py_buffer v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    _init(v)
    try:
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
                                   outer, middle, inner, v[0].buf, v[1].buf, v[2].buf, v[3].buf,
                                   v[4].buf, v[5].buf, eps, v[6].buf, v[7].buf, n_threads)
    finally:
        _release(v)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_norm", f"kind={kind}, dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, middle={middle}, inner={inner}, eps={eps!r}, "
               f"residual={residual is not None}, residual_out={residual_out is not None}")


cdef inline int _format_dtype(const char *format) noexcept:
    """fastnorm dtype of a native NumPy float buffer format ("f", "d", "e"), else -1."""
    if format == NULL or format[0] == 0 or format[1] != 0:
        return -1
    if format[0] == b"f":
        return FASTNORM_F32
    if format[0] == b"d":
        return FASTNORM_F64
    if format[0] == b"e":
        return FASTNORM_F16
    return -1


cdef inline bint _export_exact(Py_buffer *view, object array, int flags) noexcept:
    """Export a NumPy array's buffer with its format, or report False (error cleared)."""
    if type(array) is not _ndarray:
        return False
    if _get_buffer(array, view, flags | PyBUF_FORMAT) < 0:
        PyErr_Clear()
        return False
    return True


cdef inline bint _apart(Py_buffer *a, Py_buffer *b) noexcept:
    """The byte ranges of two exported buffers do not overlap (b.buf NULL: b was not exported)."""
    cdef size_t a0 = <size_t>a.buf, b0 = <size_t>b.buf
    return b.buf == NULL or a0 + <size_t>a.len <= b0 or b0 + <size_t>b.len <= a0


cdef inline bint _is_param(Py_buffer *view, Py_ssize_t middle, int compute_dtype) noexcept:
    """A weight/bias this path takes: 1-D, `middle` items of the compute dtype, aligned."""
    return (view.ndim == 1 and view.shape[0] == middle and _format_dtype(view.format) == compute_dtype
            and <size_t>view.buf % <size_t>view.itemsize == 0)


cdef inline bint _param_taken(Py_buffer *view, object param, Py_ssize_t middle,
                              int compute_dtype) noexcept:
    """None, or a weight/bias the one-step paths take (exported into view)."""
    return param is None or (_export_exact(view, param, PyBUF_C_CONTIGUOUS)
                             and _is_param(view, middle, compute_dtype))


cdef inline bint _export_like(Py_buffer *view, object out, Py_buffer *x, int dtype) noexcept:
    """Export out (writable, C-contiguous) and report whether it has x's shape and dtype."""
    if not _export_exact(view, out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE):
        return False
    if view.ndim != x.ndim or _format_dtype(view.format) != dtype:
        return False
    for i in range(x.ndim):
        if view.shape[i] != x.shape[i]:
            return False
    return True


def rows(int kind, x, normalized_shape, weight, bias, eps, out, int n_threads):
    """The common LayerNorm/RMSNorm call in one step: statistics over x's last axis.

    Takes only what needs no conversion: NumPy arrays, x C-contiguous float32/float64/
    float16 and aligned, normalized_shape None, an int or a 1-tuple of an int equal to the
    last dimension, weight/bias None or 1-D of the compute dtype (float64 for float64 x,
    float32 otherwise), out None (allocated) or a C-contiguous array like x that is x
    itself or shares no memory with any input.  eps is a checked float, or None for
    the compute dtype's machine epsilon (rms_norm's default).  Returns y, or None without
    writing anything when an argument is outside that: the caller's general path then
    converts, copies or raises with the right message.
    """
    cdef Py_buffer v[MAX_ARRAYS]  # x, weight, bias, y
    cdef fastnorm_status_t status
    cdef int dtype, compute
    cdef Py_ssize_t middle, outer, i
    cdef double epsilon
    _init(v)
    try:
        if not _export_exact(&v[0], x, PyBUF_C_CONTIGUOUS):
            return None
        dtype = _format_dtype(v[0].format)
        if dtype < 0 or v[0].ndim == 0 or v[0].len == 0 or <size_t>v[0].buf % <size_t>v[0].itemsize:
            return None
        middle = v[0].shape[v[0].ndim - 1]
        outer = v[0].len // v[0].itemsize // middle
        if normalized_shape is not None:
            if type(normalized_shape) is tuple and len(<tuple>normalized_shape) == 1:
                normalized_shape = (<tuple>normalized_shape)[0]
            if type(normalized_shape) is not int or normalized_shape != middle:
                return None
        compute = FASTNORM_F64 if dtype == FASTNORM_F64 else FASTNORM_F32
        epsilon = (2.0 ** -52 if compute == FASTNORM_F64 else 2.0 ** -23) if eps is None else eps
        if not (_param_taken(&v[1], weight, middle, compute) and _param_taken(&v[2], bias, middle, compute)):
            return None
        if out is None:
            out = _empty(x.shape, x.dtype)
        if not _export_like(&v[3], out, &v[0], dtype):
            return None
        if not ((v[3].buf == v[0].buf or _apart(&v[3], &v[0])) and _apart(&v[3], &v[1])
                and _apart(&v[3], &v[2])):
            return None
        with nogil:
            status = fastnorm_norm(<fastnorm_norm_kind_t>kind, <fastnorm_dtype_t>dtype, outer,
                                   middle, 1, v[0].buf, NULL, NULL, v[3].buf, v[1].buf, v[2].buf,
                                   epsilon, NULL, NULL, n_threads)
    finally:
        _release(v)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_norm", f"kind={kind}, dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, middle={middle}, eps={epsilon!r}")
    return out


def moments(int dtype, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
            x, mean_out, m2_out, int n_threads):
    """Per-channel float64 mean and m2 of x seen as (outer, channels, inner).

    x (IN): storage dtype, outer*channels*inner items.  mean_out, m2_out (OUT): float64,
    channels items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), data = _count(outer, channels, inner)
    cdef Py_buffer v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    _init(v)
    try:
        _acquire(&v[0], x, "x", data, item, False)
        _acquire(&v[1], mean_out, "mean_out", channels, 8, True)
        _acquire(&v[2], m2_out, "m2_out", channels, 8, True)
        with nogil:
            status = fastnorm_moments(<fastnorm_dtype_t>dtype, outer, channels, inner, v[0].buf,
                                      <double *>v[1].buf, <double *>v[2].buf, n_threads)
    finally:
        _release(v)
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
    cdef Py_buffer v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    _init(v)
    try:
        _acquire(&v[0], x, "x", data, item, False)
        _acquire(&v[1], y, "y", data, item, True)
        _acquire(&v[2], mean, "mean", channels, 8, False)
        _acquire(&v[3], var, "var", channels, 8, False)
        _acquire(&v[4], weight, "weight", channels, compute, False)
        _acquire(&v[5], bias, "bias", channels, compute, False)
        with nogil:
            status = fastnorm_affine(<fastnorm_dtype_t>dtype, outer, channels, inner, v[0].buf,
                                     v[1].buf, <const double *>v[2].buf, <const double *>v[3].buf,
                                     v[4].buf, v[5].buf, eps, n_threads)
    finally:
        _release(v)
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
    cdef Py_buffer v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    _init(v)
    try:
        _acquire(&v[0], x, "x", data, item, False)
        _acquire(&v[1], y, "y", data, item, True)
        _acquire(&v[2], weight, "weight", channels, compute, False)
        _acquire(&v[3], bias, "bias", channels, compute, False)
        _acquire(&v[4], mean_out, "mean_out", channels, 8, True)
        _acquire(&v[5], var_out, "var_out", channels, 8, True)
        with nogil:
            status = fastnorm_batch_norm_train(<fastnorm_dtype_t>dtype, outer, channels, inner,
                                               v[0].buf, v[1].buf, v[2].buf, v[3].buf, eps,
                                               <double *>v[4].buf, <double *>v[5].buf, n_threads)
    finally:
        _release(v)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_batch_norm_train", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, "
               f"outer={outer}, channels={channels}, inner={inner}, eps={eps!r}")


def update_running(int running_dtype, running_mean, running_var, mean, var, Py_ssize_t count,
                   double momentum):
    """BatchNorm's running statistics after a training step, in place (fastnorm.h's formula).

    running_mean, running_var (IN/OUT): running_dtype (F32 or F64), C-contiguous, as many
    items as mean.  mean, var (IN): float64 batch statistics over `count` values.
    """
    cdef Py_ssize_t channels = len(mean), item = _storage_size(running_dtype)
    cdef Py_buffer v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    _init(v)
    try:
        _acquire(&v[0], running_mean, "running_mean", channels, item, True)
        _acquire(&v[1], running_var, "running_var", channels, item, True)
        _acquire(&v[2], mean, "mean", channels, 8, False)
        _acquire(&v[3], var, "var", channels, 8, False)
        status = fastnorm_update_running(<fastnorm_dtype_t>running_dtype, channels, count, momentum,
                                         <const double *>v[2].buf, <const double *>v[3].buf,
                                         v[0].buf, v[1].buf)
    finally:
        _release(v)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_update_running", f"channels={channels}, count={count}, "
               f"momentum={momentum!r}")


cdef inline bint _is_running_stat(Py_buffer *view, Py_ssize_t channels) noexcept:
    """A running statistic this path takes: 1-D, `channels` float32/float64 items, aligned."""
    cdef int dtype = _format_dtype(view.format)
    return (view.ndim == 1 and view.shape[0] == channels and <size_t>view.buf % <size_t>view.itemsize == 0
            and (dtype == FASTNORM_F32 or dtype == FASTNORM_F64))


def batch_norm(x, running_mean, running_var, weight, bias, bint training, momentum, eps, axis,
               out, int n_threads):
    """The common BatchNorm call in one step: channel axis 1 or -1, no return_stats.

    Takes only what needs no conversion: NumPy arrays, x C-contiguous float32/float64/
    float16 and aligned with at least 2 dimensions; weight/bias None or 1-D of the compute
    dtype; running statistics 1-D float32/float64 (both, or for training neither; writable
    and apart for training); out None or a C-contiguous array like x that is x itself or
    shares no memory with any other argument; eps and momentum valid floats, axis the int
    1 or -1.  Returns y, or None without writing anything when an argument is outside
    that: the caller's general path then converts, copies or raises with the right message.
    """
    cdef Py_buffer v[MAX_ARRAYS]  # x, y, weight, bias, running_mean, running_var
    cdef fastnorm_status_t status = FASTNORM_OK
    cdef int dtype, compute, running = -1, flags
    cdef Py_ssize_t outer = 1, channels, inner = 1, i, channel_axis
    cdef double epsilon, rate
    cdef double *stats = NULL
    cdef const double *mean
    cdef const double *var
    if type(eps) is not float or type(momentum) is not float or type(axis) is not int:
        return None
    epsilon, rate = eps, momentum
    if not (0.0 <= epsilon and isfinite(epsilon) and 0.0 <= rate <= 1.0) or not (axis == 1 or axis == -1):
        return None
    _init(v)
    try:
        if not _export_exact(&v[0], x, PyBUF_C_CONTIGUOUS):
            return None
        dtype = _format_dtype(v[0].format)
        if dtype < 0 or v[0].ndim < 2 or v[0].len == 0 or <size_t>v[0].buf % <size_t>v[0].itemsize:
            return None
        channel_axis = 1 if axis == 1 else v[0].ndim - 1
        for i in range(channel_axis):
            outer *= v[0].shape[i]
        channels = v[0].shape[channel_axis]
        for i in range(channel_axis + 1, v[0].ndim):
            inner *= v[0].shape[i]
        if training and outer * inner < 2:
            return None
        compute = FASTNORM_F64 if dtype == FASTNORM_F64 else FASTNORM_F32
        if not (_param_taken(&v[2], weight, channels, compute) and _param_taken(&v[3], bias, channels, compute)):
            return None
        if running_mean is not None and running_var is not None:
            flags = PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE if training else PyBUF_C_CONTIGUOUS
            if not (_export_exact(&v[4], running_mean, flags) and _is_running_stat(&v[4], channels)
                    and _export_exact(&v[5], running_var, flags) and _is_running_stat(&v[5], channels)
                    and _format_dtype(v[4].format) == _format_dtype(v[5].format)
                    and (not training or _apart(&v[4], &v[5]))):
                return None
            running = _format_dtype(v[4].format)
        elif not training or running_mean is not None or running_var is not None:
            return None
        if out is None:
            out = _empty(x.shape, x.dtype)
        if not _export_like(&v[1], out, &v[0], dtype):
            return None
        if not ((v[1].buf == v[0].buf or _apart(&v[1], &v[0])) and _apart(&v[1], &v[2])
                and _apart(&v[1], &v[3]) and _apart(&v[1], &v[4]) and _apart(&v[1], &v[5])):
            return None
        stats = <double *>malloc(2 * channels * sizeof(double))
        if stats == NULL:
            raise MemoryError(f"batch_norm: no memory for the statistics of {channels} channels")
        mean, var = <const double *>v[4].buf, <const double *>v[5].buf
        if running == FASTNORM_F32:  # eval reads them as float64 (NumPy's exact conversion)
            for i in range(channels):
                stats[i] = (<float *>v[4].buf)[i]
                stats[channels + i] = (<float *>v[5].buf)[i]
            mean, var = stats, stats + channels
        with nogil:
            if training:
                status = fastnorm_batch_norm_train(<fastnorm_dtype_t>dtype, outer, channels, inner,
                                                   v[0].buf, v[1].buf, v[2].buf, v[3].buf, epsilon,
                                                   stats, stats + channels, n_threads)
                if status == FASTNORM_OK and running >= 0:
                    status = fastnorm_update_running(<fastnorm_dtype_t>running, channels,
                                                     outer * inner, rate, stats, stats + channels,
                                                     v[4].buf, v[5].buf)
            else:
                status = fastnorm_affine(<fastnorm_dtype_t>dtype, outer, channels, inner,
                                         v[0].buf, v[1].buf, mean, var, v[2].buf, v[3].buf,
                                         epsilon, n_threads)
    finally:
        free(stats)
        _release(v)
    if status != FASTNORM_OK:
        _raise(status, "batch_norm", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, outer={outer}, "
               f"channels={channels}, inner={inner}, eps={epsilon!r}, training={training}")
    return out


def group_norm(int dtype, Py_ssize_t n, Py_ssize_t channels, Py_ssize_t groups,
               Py_ssize_t spatial, x, y, weight, bias, double eps, int n_threads):
    """GroupNorm of x seen as (n, channels, spatial), statistics per (sample, group).

    x (IN), y (OUT): storage dtype, n*channels*spatial items (y may be x).  weight, bias
    (IN, may be None): compute dtype, channels items.
    """
    cdef Py_ssize_t item = _storage_size(dtype), compute = _compute_size(dtype)
    cdef Py_ssize_t data = _count(n, channels, spatial)
    cdef Py_buffer v[MAX_ARRAYS]
    cdef fastnorm_status_t status
    if groups < 0:
        raise ValueError(f"groups must be >= 0, got {groups}")
    _init(v)
    try:
        _acquire(&v[0], x, "x", data, item, False)
        _acquire(&v[1], y, "y", data, item, True)
        _acquire(&v[2], weight, "weight", channels, compute, False)
        _acquire(&v[3], bias, "bias", channels, compute, False)
        with nogil:
            status = fastnorm_group_norm(<fastnorm_dtype_t>dtype, n, channels, groups, spatial,
                                         v[0].buf, v[1].buf, v[2].buf, v[3].buf, eps, n_threads)
    finally:
        _release(v)
    if status != FASTNORM_OK:
        _raise(status, "fastnorm_group_norm", f"dtype={_DTYPE_NAMES.get(dtype, dtype)}, n={n}, "
               f"channels={channels}, groups={groups}, spatial={spatial}, eps={eps!r}")


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


def openmp_enabled():
    """Whether the extension was built with OpenMP."""
    return bool(fastnorm_openmp_enabled())


def default_threads():
    """Threads a call with n_threads <= 0 uses now (OMP_NUM_THREADS, threadpoolctl)."""
    return fastnorm_default_threads()


# Probe the CPU and pick the kernel family now, under the import lock and the GIL, so no
# two threads race the first choice.
fastnorm_get_isa()
