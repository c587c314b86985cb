"""The functional API: layer_norm, rms_norm, batch_norm, group_norm, instance_norm.

Each function checks every argument (fastnorm._checks) before anything is written, maps x
to the (outer, middle, inner) block of include/fastnorm/fastnorm.h and calls one of the
entry points of fastnorm._core (rows, norm, batch_norm, affine, batch_norm_train,
group_norm), which release the GIL.

The common call of layer_norm / rms_norm -- a C-contiguous array of a fastnorm dtype
normalized over its last axis, parameters already in the compute dtype, a residual (if
any) like x, no stats -- goes straight to _core.rows, which checks those arrays in C and
declines anything else (nothing written) to the general path here: for small inputs the
Python around the kernel was most of the cost (1x768 float32: see docs/optimisations.md).
batch_norm's common call (channel axis 1 or -1, no return_stats) goes the same way
through _core.batch_norm, running statistics updated in C, and group_norm's and
instance_norm's (arrays as they are, an int num_groups, a float eps) through
_core.group_norm_common.
"""

import math

import numpy as np

from . import _checks, _core
from ._checks import as_param, check_out, contiguous, writes_directly

if (_core.F32, _core.F64, _core.F16, _core.BF16) != (
    _checks.CODE_F32, _checks.CODE_F64, _checks.CODE_F16, _checks.CODE_BF16
):  # pragma: no cover - a build mismatch, not a user error
    raise ImportError("fastnorm._core dtype codes differ from fastnorm._checks; rebuild fastnorm")

_ndarray = np.ndarray
_empty = _core.empty  # numpy.empty, large outputs from the output cache
_DTYPES = _checks.DTYPES
_FLOAT64 = _checks.FLOAT64
_INF = math.inf
_LAYER_NORM = _core.LAYER_NORM
_RMS_NORM = _core.RMS_NORM
_core_norm = _core.norm
_core_rows = _core.rows
_core_affine = _core.affine
_core_batch_norm_train = _core.batch_norm_train
_core_batch_norm = _core.batch_norm
_core_group_norm = _core.group_norm
_core_group_norm_common = _core.group_norm_common
# rms_norm's default eps: the machine epsilon of the computation dtype.
_RMS_EPS = {dtype: float(np.finfo(dtype).eps) for dtype in (_checks.FLOAT32, _checks.FLOAT64)}

__all__ = ["layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm"]


# ---- LayerNorm / RMSNorm ------------------------------------------------------------


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, *, axis=None,
               residual=None, residual_out=None, out=None, return_stats=False):
    """LayerNorm: ``y = (h - mean) / sqrt(var + eps) * weight + bias`` with ``h = x [+ residual]``.

    Statistics over the last ``len(normalized_shape)`` dimensions (``None``: the last one)
    or over ``axis`` (an int or tuple, not necessarily trailing).  Population variance.
    ``residual`` fuses the add of a transformer block (``h`` rounded to ``x.dtype``, also
    written to ``residual_out`` when given).  ``out`` may be ``x``.  ``return_stats=True``
    returns ``(y, mean, rstd)`` with ``rstd = 1 / sqrt(var + eps)``, shaped like ``x``
    without the normalized dimensions, in float64 for float64 input and float32 otherwise.
    """
    if type(eps) is not float or not 0.0 <= eps < _INF:
        eps = _checks.check_eps(eps)
    if (axis is None or _last_axis(axis, normalized_shape)) and not return_stats:
        y = _core_rows(_LAYER_NORM, x, normalized_shape, weight, bias, eps, residual,
                       residual_out, out, _checks.num_threads)
        if y is not None:
            return y
    return _row_norm(_LAYER_NORM, x, normalized_shape, weight, bias, eps, axis, residual,
                     residual_out, out, return_stats)


def rms_norm(x, normalized_shape=None, weight=None, eps=None, *, axis=None, residual=None,
             residual_out=None, out=None, return_stats=False):
    """RMSNorm: ``y = h / sqrt(mean(h**2) + eps) * weight`` with ``h = x [+ residual]``.

    Same dimensions, residual, out and stats rules as layer_norm; ``eps=None`` is the
    machine epsilon of the computation dtype (float32 for half and float32 inputs),
    as in ``torch.nn.functional.rms_norm``.  ``return_stats=True`` returns ``(y, rstd)``.
    """
    if eps is not None and (type(eps) is not float or not 0.0 <= eps < _INF):
        eps = _checks.check_eps(eps)
    if (axis is None or _last_axis(axis, normalized_shape)) and not return_stats:
        y = _core_rows(_RMS_NORM, x, normalized_shape, weight, None, eps, residual,
                       residual_out, out, _checks.num_threads)
        if y is not None:
            return y
    result = _row_norm(_RMS_NORM, x, normalized_shape, weight, None, eps, axis, residual,
                       residual_out, out, return_stats)
    if return_stats:
        y, _mean, rstd = result
        return y, rstd
    return result


def _last_axis(axis, normalized_shape):
    """axis=-1 alone says what normalized_shape=None does: the one-step path may take it
    (2.7 us less a call on 1x768).  Anything else is _row_norm's to check."""
    return type(axis) is int and axis == -1 and normalized_shape is None


def _row_norm(kind, x, normalized_shape, weight, bias, eps, axis, residual, residual_out, out,
              return_stats):
    """Shared body of layer_norm (bias used, mean returned) and rms_norm (eps may be None)."""
    if type(x) is not _ndarray:
        x = _checks.as_array(x)
    rule = _DTYPES.get(x.dtype)
    if rule is None:
        x, rule = _checks.input_rule(x)
    code, compute = rule
    if eps is None:
        eps = _RMS_EPS[compute]

    plan = _checks.norm_plan(x.shape, normalized_shape, axis)
    norm_shape = plan[3]
    w = None if weight is None else as_param(weight, norm_shape, compute, "weight")
    b = None if bias is None else as_param(bias, norm_shape, compute, "bias")
    if out is not None:
        check_out(out, x.shape, x.dtype)
    r = None
    if residual is not None or residual_out is not None:
        r = _checks.check_residual(residual, residual_out, x, out)

    order = _checks.memory_order(x) if x.size else None
    if order is not None:
        axes = (_checks.resolve_axes(x.ndim, axis) if axis is not None
                else tuple(range(x.ndim - len(norm_shape), x.ndim)))
        positions = tuple(order.index(a) for a in axes)
        if positions == tuple(range(x.ndim - len(axes), x.ndim)):  # rows stay rows
            return _norm_in_memory_order(kind, code, compute, x, order, axes, positions, w, b,
                                         eps, r, residual_out, out, return_stats)
    return _norm_checked(kind, code, compute, x, plan, w, b, eps, r, residual_out, out,
                         return_stats)


def _norm_checked(kind, code, compute, x, plan, w, b, eps, r, residual_out, out, return_stats):
    """_row_norm after its checks: x, its plan, and the arguments as the kernels take them."""
    outer, _middle, inner, _norm_shape, stats_shape, moved = plan
    count = outer * inner  # number of statistics
    mean = _empty(count, compute) if return_stats and kind == _LAYER_NORM else None
    rstd = _empty(count, compute) if return_stats else None
    if x.size == 0:
        y = _empty(x.shape, x.dtype) if out is None else out
    elif moved is not None:
        y = _norm_moved(kind, plan, code, x, r, residual_out, out, w, b, eps, mean, rstd)
    else:
        y = _norm_block(kind, plan, code, x, r, residual_out, out, w, b, eps, mean, rstd)

    if not return_stats:
        return y
    return y, None if mean is None else mean.reshape(stats_shape), rstd.reshape(stats_shape)


def _norm_in_memory_order(kind, code, compute, x, order, axes, positions, w, b, eps, r,
                          residual_out, out, return_stats):
    """x is a transpose of a C-contiguous array (memory_order) in which the normalized
    axes come last, at `positions`: the same rows as in x's C-order copy, so the same bits,
    without that copy or one of the result back.  The result has x's layout, as NumPy's
    elementwise functions give."""
    xt = x.transpose(order)
    rt, residual_out_t, out_t = _checks.in_order(order, x, xt, r, residual_out, out)
    result = _norm_checked(kind, code, compute, xt, _checks.norm_plan(xt.shape, None, positions),
                           w, b, eps, rt, residual_out_t, out_t, return_stats)
    if not return_stats:
        return _in_layout_of_x(result, order, out)
    kept = [a for a in order if a not in axes]  # the statistics' axes, as axes of x
    back = tuple(sorted(range(len(kept)), key=kept.__getitem__))
    return (_in_layout_of_x(result[0], order, out),) + tuple(
        None if s is None else s.transpose(back) for s in result[1:])


def _in_layout_of_x(y, order, out):
    """A result computed in x's memory order (y, or out's transpose) as the caller's
    array: out when given, else y transposed back, so it has x's layout."""
    return out if out is not None else y.transpose(_checks.inverse_order(order))


def _norm_block(kind, plan, code, x, r, residual_out, out, w, b, eps, mean, rstd):
    """Normalized axes form one contiguous group: x is used as it is (after a copy only
    when it is not C-contiguous).  Returns y (out when given)."""
    x = contiguous(x)
    outer, middle, inner, _norm_shape, _stats_shape, _moved = plan
    if r is not None and inner != 1:
        # The kernels fuse the residual only for inner == 1: form h in x's dtype first
        # (NumPy and ml_dtypes round the float32 sum once, as the kernels do).
        h = np.add(x, r, out=residual_out) if residual_out is not None else x + r
        x, r, residual_out = contiguous(h), None, None
    if r is not None:
        r = contiguous(r)

    h_target = residual_out
    if residual_out is not None and residual_out is not x and residual_out is not r:
        if not writes_directly(residual_out, x, r, w, b):  # overlap or not C-contiguous
            h_target = _empty(x.shape, x.dtype)

    if out is None:
        y = _empty(x.shape, x.dtype)
    elif writes_directly(out, x, r, h_target, w, b):
        y = out
    else:
        y = _empty(x.shape, x.dtype)

    _core_norm(kind, code, outer, middle, inner, x, r, h_target, y, w, b, eps, mean, rstd,
               _checks.num_threads)

    if h_target is not residual_out:
        _checks.assign(residual_out, h_target)
    if out is not None and y is not out:
        _checks.assign(out, y)
        return out
    return y


def _norm_moved(kind, plan, code, x, r, residual_out, out, w, b, eps, mean, rstd):
    """Normalized axes that are not one contiguous group: move them to the end (one copy),
    normalize rows, and move the result back into a C-contiguous y (or out)."""
    outer, middle, _inner, _norm_shape, _stats_shape, axes = plan
    xm = _checks.move_to_end(x, axes)
    rm = None if r is None else _checks.move_to_end(r, axes)
    hm = None if residual_out is None else _empty(xm.shape, x.dtype)
    ym = _empty(xm.shape, x.dtype)
    _core_norm(kind, code, outer, middle, 1, xm, rm, hm, ym, w, b, eps, mean, rstd,
               _checks.num_threads)
    if hm is not None:
        _checks.assign(residual_out, _checks.move_back(hm, axes))
    y = _empty(x.shape, x.dtype) if out is None else out
    _checks.assign(y, _checks.move_back(ym, axes))
    return y


# ---- BatchNorm ----------------------------------------------------------------------


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, out=None, return_stats=False):
    """BatchNorm over every axis of ``x`` but the channel ``axis`` (1: NCHW, -1: NHWC).

    ``training=False`` normalizes with ``running_mean`` / ``running_var`` (required).
    ``training=True`` uses each channel's batch mean and population variance and, when
    running statistics are given, updates them in place (PyTorch's momentum convention,
    unbiased running variance).  ``return_stats=True`` returns ``(y, mean, rstd)`` of shape
    ``(C,)``: the statistics used, in the computation dtype.
    """
    if training is not True and training is not False:
        training = _checks.check_bool(training, "training")
    if not return_stats:
        y = _core_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                             axis, out, _checks.num_threads)
        if y is not None:
            return y
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                       out, return_stats)


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, axis, out,
                return_stats):
    """batch_norm's general path: any dtype, layout and argument form, and its errors."""
    x = _checks.as_array(x)
    x, (code, compute) = _checks.input_rule(x)
    (channel_axis, outer, channels, inner, eps, momentum, w, b, running_mean,
     running_var) = _batch_norm_args(x.shape, compute, running_mean, running_var, weight, bias,
                                     training, momentum, eps, axis)
    if out is not None:
        check_out(out, x.shape, x.dtype)
    args = (w, b, running_mean, running_var, training, momentum, eps)
    order = _checks.memory_order(x) if x.size else None
    if order is None or (training and order[-1] != channel_axis):
        return _batch_norm_checked(code, compute, x, (outer, channels, inner), *args, out,
                                   return_stats)
    # A transpose of a C-contiguous array, computed as the C-contiguous array it is, without
    # copies of x or of the result: a channels-last view (of an NCHW shape, say), and in
    # eval, a per-element map with the C-order bits on every path, any other (an NHWC view
    # of NCHW memory, a Fortran array; (8, 256, 14, 14) float32 took 3.9x the NCHW call's
    # time with the copies).  Training statistics summed in another memory order would
    # differ from the C-order ones by rounding, so other transposes are copied to C order.
    xt = x.transpose(order)
    (out_t,) = _checks.in_order(order, x, xt, out)
    block = _checks.channel_block(xt.shape, order.index(channel_axis))
    result = _batch_norm_checked(code, compute, xt, block, *args, out_t, return_stats)
    if return_stats:
        return (_in_layout_of_x(result[0], order, out),) + result[1:]
    return _in_layout_of_x(result, order, out)


def _batch_norm_checked(code, compute, x, block, w, b, running_mean, running_var, training,
                        momentum, eps, out, return_stats):
    """_batch_norm after its checks: x, its (outer, channels, inner) block, and the
    arguments as the kernels take them."""
    outer, channels, inner = block
    has_running = running_mean is not None
    n = outer * inner  # values per channel

    x = contiguous(x)
    if training:  # filled by the kernel with the batch statistics
        mean = _empty(channels, _FLOAT64)
        var = _empty(channels, _FLOAT64)
    else:
        # the kernels read them as aligned, contiguous float64 (views of any layout copied)
        mean = np.require(running_mean, _FLOAT64, ("C", "A"))
        var = np.require(running_var, _FLOAT64, ("C", "A"))

    if x.size == 0:  # eval of an empty batch, or no channels
        y = _empty(x.shape, x.dtype) if out is None else out
    else:  # weight / sqrt(var + eps) and bias are folded per channel in C
        y = _affine(code, outer, channels, inner, x, out, mean, var, w, b, eps, training)

    if training and has_running:  # after the kernel: a failure leaves them untouched
        _update_running(running_mean, running_var, mean, var, n, momentum)
    if return_stats:
        return y, mean.astype(compute), _rstd(var, eps).astype(compute)
    return y


def _batch_norm_args(shape, compute, running_mean, running_var, weight, bias, training,
                     momentum, eps, axis):
    """batch_norm's checks for x of `shape` (also fastnorm.dask's): (channel_axis, outer,
    channels, inner, eps, momentum, weight, bias, running_mean, running_var), the
    parameters as arrays of the compute dtype."""
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"batch_norm needs x with at least 2 dimensions (N, C, ...), got shape {shape}")
    if type(axis) is int and -ndim <= axis < ndim:
        channel_axis = axis % ndim
    elif isinstance(axis, (tuple, list)):
        raise ValueError(f"axis is the single channel axis of batch_norm, got {axis!r}")
    else:
        (channel_axis,) = _checks.resolve_axes(ndim, axis)
    outer, channels, inner = _checks.channel_block(shape, channel_axis)
    eps = _checks.check_eps(eps)
    momentum = _checks.check_momentum(momentum)
    w = None if weight is None else as_param(weight, (channels,), compute, "weight")
    b = None if bias is None else as_param(bias, (channels,), compute, "bias")
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError("batch_norm with training=False needs running_mean and running_var")
    if running_mean is not None:
        running_mean = _checks.check_running_stat(running_mean, channels, "running_mean", training)
        running_var = _checks.check_running_stat(running_var, channels, "running_var", training)
        if training and (running_mean is running_var or _checks.overlaps(running_mean, running_var)):
            raise ValueError("running_mean and running_var must be separate arrays "
                             "(training updates both in place)")
    if training and outer * inner < 2:
        raise ValueError(
            f"batch_norm training needs at least 2 values per channel, got {outer * inner} "
            f"(x has shape {shape}, channel axis {channel_axis})"
        )
    return channel_axis, outer, channels, inner, eps, momentum, w, b, running_mean, running_var


def _update_running(running_mean, running_var, mean, var, n, momentum):
    """PyTorch's running-statistics update, in place (fastnorm_update_running): momentum-
    weighted, the variance unbiased (n values per channel).  Strided or misaligned running
    statistics (byte-swapped ones too) are updated through contiguous native copies, written
    back.  A float32 and a float64 statistic (either way round) are each updated by a call
    in their own dtype, the other slot of that call a scratch copy, since the C update takes
    one dtype for both."""
    targets = [s if s.flags.c_contiguous and s.flags.aligned and s.dtype.isnative
               else s.astype(s.dtype.newbyteorder("="))
               for s in (running_mean, running_var)]
    rm, rv = targets
    if rm.dtype == rv.dtype:
        calls = [(rm, rv)]
    else:
        calls = [(rm, rv.astype(rm.dtype)), (rm.astype(rv.dtype), rv)]
    for call_mean, call_var in calls:
        code = _core.F32 if call_mean.dtype == np.float32 else _core.F64
        _core.update_running(code, call_mean, call_var, mean, var, n, momentum)
    for target, stat in zip(targets, (running_mean, running_var)):
        if target is not stat:
            stat[...] = target


def _rstd(var, eps):
    """1 / sqrt(var + eps) in float64, as the kernel folds it.  Plain IEEE arithmetic
    decides, silently, as in PyTorch: eps == 0 with a zero variance divides by zero, and a
    negative running variance (eval) gives NaN."""
    result = np.add(var, eps, dtype=_FLOAT64)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.sqrt(result, out=result)
        return np.divide(1.0, result, out=result)


def _affine(code, outer, channels, inner, x, out, mean, var, w, b, eps, training):
    """y = (x - mean[c]) * w[c] / sqrt(var[c] + eps) + b[c] into out (directly when it can)
    or a new array.  x is C-contiguous; mean and var are float64, w and b compute dtype.
    training: mean and var are outputs, filled with x's batch statistics first (one C
    call, which normalizes each channel right after its statistics when it fits the cache)."""
    if out is not None and writes_directly(out, x):
        y = out
    else:
        y = _empty(x.shape, x.dtype)
    if training:
        _core_batch_norm_train(code, outer, channels, inner, x,
                               y, w, b, eps, mean, var, _checks.num_threads)
    else:
        _core_affine(code, outer, channels, inner, x, y,
                     mean, var, w, b, eps, _checks.num_threads)
    if out is not None and y is not out:
        _checks.assign(out, y)
        return out
    return y


# ---- GroupNorm / InstanceNorm ------------------------------------------------------


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """GroupNorm of ``x`` of shape ``(N, C, ...)``: statistics per (sample, group of
    ``C // num_groups`` channels), then ``weight`` / ``bias`` of shape ``(C,)`` per channel."""
    y = _core_group_norm_common(x, num_groups, weight, bias, eps, _checks.num_threads)
    if y is not None:
        return y
    x = _checks.as_array(x)
    x, (code, compute) = _checks.input_rule(x)
    if x.ndim < 2:
        raise ValueError(f"group_norm needs x of shape (N, C, ...), got shape {x.shape}")
    num_groups = _checks.check_positive_int(num_groups, "num_groups")
    return _group_norm(x, code, compute, num_groups, weight, bias, eps)


def instance_norm(x, weight=None, bias=None, eps=1e-5):
    """InstanceNorm: group_norm with one group per channel of ``x`` (N, C, ...)."""
    if type(x) is _ndarray and x.ndim >= 2:
        y = _core_group_norm_common(x, x.shape[1], weight, bias, eps, _checks.num_threads)
        if y is not None:
            return y
    x = _checks.as_array(x)
    x, (code, compute) = _checks.input_rule(x)
    if x.ndim < 2:
        raise ValueError(f"instance_norm needs x of shape (N, C, ...), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"instance_norm needs at least one channel, x has shape {x.shape}")
    return _group_norm(x, code, compute, x.shape[1], weight, bias, eps)


def _group_norm(x, code, compute, num_groups, weight, bias, eps):
    n, channels = x.shape[:2]
    if channels % num_groups:
        raise ValueError(
            f"num_groups ({num_groups}) must divide the number of channels ({channels}) of x"
        )
    eps = _checks.check_eps(eps)
    w = None if weight is None else as_param(weight, (channels,), compute, "weight")
    b = None if bias is None else as_param(bias, (channels,), compute, "bias")
    spatial = math.prod(x.shape[2:])
    per_group = channels // num_groups
    if per_group * spatial == 0:
        raise ValueError(f"the groups of x (shape {x.shape}, {num_groups} groups) must not be empty")
    if n == 0:
        return _empty(x.shape, x.dtype)

    order = _channels_last_order(x)
    if order is not None:  # computed in memory order; the result keeps x's layout
        xt = x.transpose(order)
        y = _empty(xt.shape, x.dtype)
        _core_group_norm(code, n, channels, num_groups, spatial, xt, y, w, b, eps,
                         _checks.num_threads, True)
        return y.transpose((0, 3, 1, 2) if order is _NHWC else _checks.inverse_order(order))
    x = contiguous(x)
    y = _empty(x.shape, x.dtype)
    _core_group_norm(code, n, channels, num_groups, spatial, x, y,
                     w, b, eps, _checks.num_threads)
    return y


_NHWC = (0, 2, 3, 1)


def _channels_last_order(x):
    """For x (N, C, ...) stored sample by sample with the channel axis fastest (a
    channels-last view, as torch's channels_last gives), the transpose (0, spatial axes in
    memory order, 1) that is C-contiguous; else None."""
    if x.ndim == 4:  # the common case first: the strides of NHWC memory, read directly
        c, h, w = x.shape[1:]
        sn, sc, sh, sw = x.strides
        if (sc == x.itemsize and sw == c * sc and sh == w * sw and sn == h * sh and c > 1
                and h * w > 1 and x.flags.aligned):
            return _NHWC
    order = _checks.memory_order(x) if x.ndim > 2 else None
    if order is None or (order[0] == 0 and order[-1] == 1):
        return order
    order = (0,) + tuple(a for a in order if a > 1) + (1,)
    return order if x.transpose(order).flags.c_contiguous else None
