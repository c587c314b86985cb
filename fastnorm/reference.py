"""Plain NumPy references for every public function of fastnorm.

Same signatures and semantics as the fast functions, written to be read rather than to be
fast: every result is computed in float64 with two passes over the data (a shifted mean,
then the centred sum of squares) and rounded once to the output dtype.  Half-precision
inputs (float16, bfloat16) are upcast to float64 first; weight and bias are rounded to the
computation dtype (float32 for float32 and half inputs, float64 for float64) before use,
as the fast functions use them.

The tests and ``python -m fastnorm bench`` compare against these functions, and users can
use them to check fastnorm inside their own pipelines.  This module does not use the C
extension and shares no shape logic with the fast path, so it is an independent check.
"""

import functools
import numbers
import operator
import sys

import numpy as np

__all__ = [
    "layer_norm",
    "rms_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm_backward",
    "rms_norm_backward",
    "batch_norm_backward",
    "moments",
    "merge_moments",
]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_SUPPORTED = (_F32, _F64, np.dtype(np.float16))  # and ml_dtypes' bfloat16 (_is_bfloat16)


def _is_bfloat16(dtype):
    """Whether dtype is ml_dtypes' bfloat16, looked up, not imported (which takes most of a
    second): no array has that dtype before something imported ml_dtypes."""
    bfloat16 = getattr(sys.modules.get("ml_dtypes"), "bfloat16", None)
    return bfloat16 is not None and dtype == bfloat16


def _quiet(function):
    """Run without NumPy's RuntimeWarnings: NaN and inf inputs are valid and documented."""

    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)

    return quiet


# ---- argument checks (kept local so the reference stays independent) -----------------


class _ShapeTypeError(TypeError, ValueError):
    """normalized_shape that is not an int or a sequence of ints: a TypeError, as NumPy's
    and PyTorch's shape arguments raise, and a ValueError, as fastnorm's is too."""


def _array(x):
    """numpy.asarray(x), a byte-swapped float array ('>f4' here) in native order and a torch
    bfloat16 tensor (which numpy.asarray refuses) as an ml_dtypes bfloat16 array, as
    fastnorm takes them."""
    if str(getattr(x, "dtype", "")) == "torch.bfloat16":
        import ml_dtypes

        x = np.asarray(x.float()).astype(ml_dtypes.bfloat16)  # exact: bfloat16 -> float32
    x = np.asarray(x)
    if x.dtype.kind == "f" and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return x


def _input(x, name="x"):
    """x as an ndarray (_array) of a supported dtype, else TypeError naming the dtype."""
    x = _array(x)
    if x.dtype not in _SUPPORTED and not _is_bfloat16(x.dtype):
        raise TypeError(
            f"{name} has dtype {x.dtype}; fastnorm supports float32, float64, float16 and bfloat16"
        )
    return x


def _compute_dtype(dtype):
    """float64 for float64 data, float32 for float32 and the half types."""
    return _F64 if dtype == _F64 else _F32


def _eps(eps, default=None):
    if eps is None and default is not None:
        return float(default)
    if isinstance(eps, (str, bytes, bool)) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    eps = float(eps)
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    return eps


def _axes(ndim, axis):
    """axis (int or tuple of ints) as a sorted tuple of non-negative axes."""
    items = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    axes = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise ValueError(f"axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array of {ndim} dimensions")
        axes.append(int(a) % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} repeats an axis")
    if not axes:
        raise ValueError("axis must name at least one dimension")
    return tuple(sorted(axes))


def _norm_axes(x, normalized_shape, axis):
    """The normalized axes of layer_norm / rms_norm, per the contract."""
    if axis is not None and normalized_shape is not None:
        raise ValueError("give either normalized_shape or axis, not both")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if axis is not None:
        axes = _axes(x.ndim, axis)
    else:
        if normalized_shape is None:
            normalized_shape = (x.shape[-1],)
        else:
            normalized_shape = _shape(normalized_shape)
        k = len(normalized_shape)
        if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k :]) != normalized_shape:
            raise ValueError(
                f"normalized_shape {normalized_shape} must equal the trailing dimensions "
                f"of x, whose shape is {x.shape}"
            )
        axes = tuple(range(x.ndim - k, x.ndim))
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"the normalized dimensions of x (shape {x.shape}) must not be empty")
    return axes


def _shape(normalized_shape):
    """An int or a sequence of ints as a tuple; a bool or a float is refused, not rounded."""
    try:
        scalar = hasattr(normalized_shape, "__index__") and np.ndim(normalized_shape) == 0
        items = (normalized_shape,) if scalar else tuple(normalized_shape)
        if any(isinstance(n, (bool, np.bool_)) for n in items):
            raise TypeError
        return tuple(operator.index(n) for n in items)
    except TypeError:
        raise _ShapeTypeError(
            f"normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}"
        ) from None


def _channel_axis(ndim, axis):
    """BatchNorm's one channel axis (an int), non-negative; a tuple or list is refused."""
    if isinstance(axis, (tuple, list)):
        raise ValueError(f"axis is the single channel axis, got {axis!r}")
    return _axes(ndim, axis)[0]


def _param(p, shape, compute, name):
    """weight / bias rounded to the computation dtype, then as float64 (or None)."""
    if p is None:
        return None
    p = np.asarray(p)
    if p.dtype.kind not in "fiu" and not _is_bfloat16(p.dtype):
        raise TypeError(f"{name} must be a floating-point array, got dtype {p.dtype}")
    if p.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {p.shape}")
    return p.astype(compute).astype(_F64)


def _broadcast(p, ndim, axes):
    """A parameter laid out along `axes` reshaped to broadcast against an ndim array."""
    shape = [1] * ndim
    for a, n in zip(axes, p.shape):
        shape[a] = n
    return p.reshape(shape)


def _check_out(out, shape, dtype, name="out"):
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(out).__name__}")
    native = out.dtype.newbyteorder("=") if out.dtype.kind == "f" else out.dtype
    if out.shape != tuple(shape) or native != dtype:  # any byte order: assigned, converted
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {dtype}, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")


def _deliver(result, out):
    """Write result into out (when given) and return what the caller gets."""
    if out is None:
        return result
    out[...] = result
    return out


def _residual_sum(x, residual, residual_out, out):
    """h = x + residual rounded to x.dtype (validating residual / residual_out)."""
    if residual is None:
        if residual_out is not None:
            raise ValueError("residual_out needs residual")
        return x
    residual = _array(residual)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"residual must have x's shape {x.shape} and dtype {x.dtype}, "
            f"got {residual.shape} and {residual.dtype}"
        )
    if residual_out is not None:
        _check_out(residual_out, x.shape, x.dtype, "residual_out")
        if out is not None and np.may_share_memory(residual_out, out):
            raise ValueError("residual_out must not be out")
    if x.dtype in (_F32, _F64):
        return x + residual
    # Half types: the exact float32 sum rounded once to the half dtype.
    return (x.astype(_F32) + residual.astype(_F32)).astype(x.dtype)


def _nonfinite_groups(values, axes):
    """True for every group (reduced over axes, kept dims) holding a NaN or an inf."""
    return ~np.all(np.isfinite(values), axis=axes, keepdims=True)


def _shifted_mean(values, axes):
    """Mean over axes computed on values shifted by the group's first element.

    Returns (shift, mean_of_shifted): a constant group gives exactly (value, 0), so its
    centred values are exactly zero and the output is exactly bias.
    """
    first = values[tuple(slice(0, 1) if a in axes else slice(None) for a in range(values.ndim))]
    shifted = values - first
    return first, shifted, shifted.mean(axis=axes, keepdims=True)


# ---- row norms -----------------------------------------------------------------------


@_quiet
def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, *, axis=None,
               residual=None, residual_out=None, out=None, return_stats=False):
    """Reference LayerNorm: (h - mean) / sqrt(var + eps) * weight + bias, h = x [+ residual]."""
    x = _input(x)
    axes = _norm_axes(x, normalized_shape, axis)
    eps = _eps(eps)
    compute = _compute_dtype(x.dtype)
    norm_shape = tuple(x.shape[a] for a in axes)
    w = _param(weight, norm_shape, compute, "weight")
    b = _param(bias, norm_shape, compute, "bias")
    if out is not None:
        _check_out(out, x.shape, x.dtype)
    h = _residual_sum(x, residual, residual_out, out)

    hf = h.astype(_F64)
    first, shifted, shifted_mean = _shifted_mean(hf, axes)
    centred = shifted - shifted_mean
    var = np.mean(centred * centred, axis=axes, keepdims=True)
    mean = first + shifted_mean
    rstd = 1.0 / np.sqrt(var + eps)
    bad = _nonfinite_groups(hf, axes)
    mean = np.where(bad, np.nan, mean)
    rstd = np.where(bad, np.nan, rstd)
    y = centred * rstd
    if w is not None:
        y = y * _broadcast(w, x.ndim, axes)
    if b is not None:
        y = y + _broadcast(b, x.ndim, axes)

    if residual_out is not None:
        residual_out[...] = h
    y = _deliver(y.astype(x.dtype), out)
    if return_stats:
        return y, np.squeeze(mean, axes).astype(compute), np.squeeze(rstd, axes).astype(compute)
    return y


@_quiet
def rms_norm(x, normalized_shape=None, weight=None, eps=None, *, axis=None, residual=None,
             residual_out=None, out=None, return_stats=False):
    """Reference RMSNorm: h / sqrt(mean(h**2) + eps) * weight, h = x [+ residual]."""
    x = _input(x)
    axes = _norm_axes(x, normalized_shape, axis)
    compute = _compute_dtype(x.dtype)
    eps = _eps(eps, default=np.finfo(compute).eps)
    norm_shape = tuple(x.shape[a] for a in axes)
    w = _param(weight, norm_shape, compute, "weight")
    if out is not None:
        _check_out(out, x.shape, x.dtype)
    h = _residual_sum(x, residual, residual_out, out)

    hf = h.astype(_F64)
    rstd = 1.0 / np.sqrt(np.mean(hf * hf, axis=axes, keepdims=True) + eps)
    # Unlike PyTorch (0 for the finite entries of a row holding inf), the whole group is NaN.
    rstd = np.where(_nonfinite_groups(hf, axes), np.nan, rstd)
    y = hf * rstd
    if w is not None:
        y = y * _broadcast(w, x.ndim, axes)

    if residual_out is not None:
        residual_out[...] = h
    y = _deliver(y.astype(x.dtype), out)
    if return_stats:
        return y, np.squeeze(rstd, axes).astype(compute)
    return y


# ---- BatchNorm -----------------------------------------------------------------------


def _running_stat(stat, channels, name, training):
    """Running statistics: float32/float64 of shape (C,); NumPy arrays that are writeable
    in training (updated in place), anything numpy.asarray takes in eval."""
    if not training:
        stat = _array(stat)  # read only: in native byte order
    native = stat.dtype.newbyteorder("=") if isinstance(stat, np.ndarray) else None
    if native not in (_F32, _F64):  # training updates a byte-swapped one in its own order
        kind = stat.dtype if isinstance(stat, np.ndarray) else type(stat).__name__
        raise ValueError(f"{name} must be a float32 or float64 NumPy array, got {kind}")
    if stat.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {stat.shape}")
    if training and not stat.flags.writeable:
        raise ValueError(f"{name} is read-only but training updates it in place")
    return stat


def _momentum(momentum):
    if isinstance(momentum, (str, bytes, bool)) or not isinstance(momentum, numbers.Real):
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    return float(momentum)


@_quiet
def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, out=None, return_stats=False):
    """Reference BatchNorm over every axis but the channel `axis`."""
    x = _input(x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm needs x with at least 2 dimensions, got shape {x.shape}")
    channel_axis = _channel_axis(x.ndim, axis)
    reduced = tuple(a for a in range(x.ndim) if a != channel_axis)
    channels = x.shape[channel_axis]
    eps = _eps(eps)
    momentum = _momentum(momentum)
    if not isinstance(training, (bool, np.bool_)):
        raise ValueError(f"training must be a bool, got {training!r}")
    compute = _compute_dtype(x.dtype)
    w = _param(weight, (channels,), compute, "weight")
    b = _param(bias, (channels,), compute, "bias")
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    has_running = running_mean is not None
    if not training and not has_running:
        raise ValueError("batch_norm in eval mode (training=False) needs running_mean and running_var")
    if has_running:
        running_mean = _running_stat(running_mean, channels, "running_mean", training)
        running_var = _running_stat(running_var, channels, "running_var", training)
        if training and np.may_share_memory(running_mean, running_var):
            raise ValueError("running_mean and running_var must be separate arrays")
    if out is not None:
        _check_out(out, x.shape, x.dtype)
    n = x.size // channels if channels else 0
    if training and n < 2:
        raise ValueError(
            f"batch_norm training needs at least 2 values per channel, got {n} (x shape {x.shape})"
        )

    xf = x.astype(_F64)
    if training:
        first, shifted, shifted_mean = _shifted_mean(xf, reduced)
        centred = shifted - shifted_mean
        var = np.mean(centred * centred, axis=reduced)
        mean = (first + shifted_mean).reshape(channels)
        bad = _nonfinite_groups(xf, reduced).reshape(channels)
        mean = np.where(bad, np.nan, mean)
        var = np.where(bad, np.nan, var)
        if has_running:
            running_mean[...] = (1 - momentum) * running_mean.astype(_F64) + momentum * mean
            running_var[...] = (1 - momentum) * running_var.astype(_F64) + momentum * var * n / (n - 1)
    else:
        mean = running_mean.astype(_F64)
        var = running_var.astype(_F64)
    rstd = 1.0 / np.sqrt(var + eps)

    scale = rstd if w is None else rstd * w
    y = (xf - _broadcast(mean, x.ndim, (channel_axis,))) * _broadcast(scale, x.ndim, (channel_axis,))
    if b is not None:
        y = y + _broadcast(b, x.ndim, (channel_axis,))
    y = _deliver(y.astype(x.dtype), out)
    if return_stats:
        return y, mean.astype(compute), rstd.astype(compute)
    return y


# ---- GroupNorm / InstanceNorm ------------------------------------------------------


@_quiet
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Reference GroupNorm of x (N, C, ...): statistics per (sample, group of C // G channels)."""
    x = _input(x)
    if x.ndim < 2:
        raise ValueError(f"group_norm needs x of shape (N, C, ...), got shape {x.shape}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    n, channels = x.shape[:2]
    if channels % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide the number of channels ({channels})")
    eps = _eps(eps)
    compute = _compute_dtype(x.dtype)
    w = _param(weight, (channels,), compute, "weight")
    b = _param(bias, (channels,), compute, "bias")
    group_size = (channels // num_groups) * int(np.prod(x.shape[2:]))
    if group_size == 0:
        raise ValueError(f"the groups of x (shape {x.shape}) must not be empty")
    if x.size == 0:
        return np.empty(x.shape, x.dtype)

    grouped = x.astype(_F64).reshape(n, num_groups, group_size)
    y = layer_norm(grouped, eps=eps).astype(_F64)  # float64 in, so nothing is rounded here
    y = y.reshape(x.shape)
    if w is not None:
        y = y * _broadcast(w, x.ndim, (1,))
    if b is not None:
        y = y + _broadcast(b, x.ndim, (1,))
    return y.astype(x.dtype)


@_quiet
def instance_norm(x, weight=None, bias=None, eps=1e-5):
    """Reference InstanceNorm: group_norm with one group per channel."""
    x = _input(x)
    if x.ndim < 2:
        raise ValueError(f"instance_norm needs x of shape (N, C, ...), got shape {x.shape}")
    return group_norm(x, max(x.shape[1], 1), weight, bias, eps)


# ---- backward ------------------------------------------------------------------------


def _grad_input(grad_y, x):
    grad_y = _input(grad_y, "grad_y")
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have x's shape {x.shape}, got {grad_y.shape}")
    return grad_y


def _stat_axes(x, stat, axis, name):
    """Normalized axes for a row-norm backward: those missing from the statistic."""
    stat = np.asarray(stat)
    if axis is None:
        k = x.ndim - stat.ndim
        axes = tuple(range(stat.ndim, x.ndim))
        if k < 1 or stat.shape != x.shape[: stat.ndim]:
            raise ValueError(
                f"{name} must have x's shape without the normalized trailing dimensions, "
                f"got {stat.shape} for x of shape {x.shape}"
            )
    else:
        axes = _axes(x.ndim, axis)
        kept = tuple(x.shape[a] for a in range(x.ndim) if a not in axes)
        if stat.shape != kept:
            raise ValueError(f"{name} must have shape {kept}, got {stat.shape}")
    return axes, np.expand_dims(stat.astype(_F64), axes)


@_quiet
def layer_norm_backward(grad_y, x, mean, rstd, weight=None, *, axis=None):
    """Gradients of layer_norm: (grad_x, grad_weight, grad_bias).

    mean and rstd are the statistics layer_norm returned (return_stats=True); the
    normalized dimensions are the trailing ones they lack, or `axis` when given.
    grad_x has x's dtype; grad_weight (None without weight) and grad_bias the computation
    dtype.
    """
    x = _input(x)
    grad_y = _grad_input(grad_y, x)
    axes, mean = _stat_axes(x, mean, axis, "mean")
    _, rstd = _stat_axes(x, rstd, axis, "rstd")
    compute = _compute_dtype(x.dtype)
    kept = tuple(a for a in range(x.ndim) if a not in axes)
    w = _param(weight, tuple(x.shape[a] for a in axes), compute, "weight")

    g = grad_y.astype(_F64)
    xhat = (x.astype(_F64) - mean) * rstd
    gw = g if w is None else g * _broadcast(w, x.ndim, axes)
    grad_x = rstd * (gw - gw.mean(axis=axes, keepdims=True)
                     - xhat * (gw * xhat).mean(axis=axes, keepdims=True))
    grad_weight = None if w is None else (g * xhat).sum(axis=kept).astype(compute)
    grad_bias = g.sum(axis=kept).astype(compute)
    return grad_x.astype(x.dtype), grad_weight, grad_bias


@_quiet
def rms_norm_backward(grad_y, x, rstd, weight=None, *, axis=None):
    """Gradients of rms_norm: (grad_x, grad_weight); grad_weight is None without weight."""
    x = _input(x)
    grad_y = _grad_input(grad_y, x)
    axes, rstd = _stat_axes(x, rstd, axis, "rstd")
    compute = _compute_dtype(x.dtype)
    kept = tuple(a for a in range(x.ndim) if a not in axes)
    w = _param(weight, tuple(x.shape[a] for a in axes), compute, "weight")

    g = grad_y.astype(_F64)
    xhat = x.astype(_F64) * rstd
    gw = g if w is None else g * _broadcast(w, x.ndim, axes)
    grad_x = rstd * (gw - xhat * (gw * xhat).mean(axis=axes, keepdims=True))
    grad_weight = None if w is None else (g * xhat).sum(axis=kept).astype(compute)
    return grad_x.astype(x.dtype), grad_weight


@_quiet
def batch_norm_backward(grad_y, x, mean, rstd, weight=None, *, axis=1):
    """Training-mode gradients of batch_norm: (grad_x, grad_weight, grad_bias).

    mean and rstd are the batch statistics, shape (C,), as batch_norm(..., training=True,
    return_stats=True) returns them.
    """
    x = _input(x)
    grad_y = _grad_input(grad_y, x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm_backward needs x with at least 2 dimensions, got {x.shape}")
    channel_axis = _channel_axis(x.ndim, axis)
    channels = x.shape[channel_axis]
    reduced = tuple(a for a in range(x.ndim) if a != channel_axis)
    compute = _compute_dtype(x.dtype)
    stats = []
    for stat, name in ((mean, "mean"), (rstd, "rstd")):
        stat = np.asarray(stat)
        if stat.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {stat.shape}")
        stats.append(_broadcast(stat.astype(_F64), x.ndim, (channel_axis,)))
    mean, rstd = stats
    w = _param(weight, (channels,), compute, "weight")

    g = grad_y.astype(_F64)
    xhat = (x.astype(_F64) - mean) * rstd
    gw = g if w is None else g * _broadcast(w, x.ndim, (channel_axis,))
    grad_x = rstd * (gw - gw.mean(axis=reduced, keepdims=True)
                     - xhat * (gw * xhat).mean(axis=reduced, keepdims=True))
    grad_weight = None if w is None else (g * xhat).sum(axis=reduced).astype(compute)
    grad_bias = g.sum(axis=reduced).astype(compute)
    return grad_x.astype(x.dtype), grad_weight, grad_bias


# ---- mergeable moments ---------------------------------------------------------------


@_quiet
def moments(x, axis=None):
    """(count, mean, m2) over `axis` (None: every axis), in int64 / float64 / float64.

    m2 is the sum of squared deviations from the mean.  An empty reduction gives count 0,
    mean 0 and m2 0, the neutral element of merge_moments.  A NaN or inf among the values
    makes mean and m2 NaN.
    """
    x = _input(x)
    axes = tuple(range(x.ndim)) if axis is None else (_axes(x.ndim, axis) if axis != () else ())
    kept_shape = tuple(x.shape[a] for a in range(x.ndim) if a not in axes)
    count = int(np.prod([x.shape[a] for a in axes]))
    xf = x.astype(_F64)
    if count == 0:
        mean = np.zeros(kept_shape)
        m2 = np.zeros(kept_shape)
    else:
        first, shifted, shifted_mean = _shifted_mean(xf, axes)
        centred = shifted - shifted_mean
        bad = _nonfinite_groups(xf, axes)
        mean = np.where(bad, np.nan, first + shifted_mean).reshape(kept_shape)
        m2 = np.where(bad, np.nan, np.sum(centred * centred, axis=axes, keepdims=True)).reshape(kept_shape)
    counts = np.full(kept_shape, count, dtype=np.int64)
    if not kept_shape:
        return counts[()], mean[()], m2[()]
    return counts, mean, m2


@_quiet
def merge_moments(a, b):
    """Chan et al.'s merge of two (count, mean, m2) partials into those of the union."""
    count_a, mean_a, m2_a = (np.asarray(v) for v in a)
    count_b, mean_b, m2_b = (np.asarray(v) for v in b)
    for count in (count_a, count_b):  # 2.5 values, or NaN, is no count
        if count.dtype.kind not in "iu" and not np.all(count == np.floor(count)):
            raise ValueError(f"a count must hold integers, got {count}")
    count_a = count_a.astype(np.int64)
    count_b = count_b.astype(np.int64)
    mean_a, m2_a, mean_b, m2_b = (v.astype(_F64) for v in (mean_a, m2_a, mean_b, m2_b))
    count = count_a + count_b
    na = count_a.astype(_F64)
    nb = count_b.astype(_F64)
    total = np.where(count > 0, na + nb, 1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / total)
    m2 = m2_a + m2_b + delta * delta * (na * nb / total)
    # An empty side contributes nothing (its mean is arbitrary, and may be NaN).
    mean = np.where(count_b == 0, mean_a, np.where(count_a == 0, mean_b, mean))
    m2 = np.where(count_b == 0, m2_a, np.where(count_a == 0, m2_b, m2))
    return count[()], mean[()], m2[()]
