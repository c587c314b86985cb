"""Backward passes of layer_norm, rms_norm and batch_norm, for training loops on NumPy.

Plain NumPy (not C-accelerated yet): elementwise work in the computation dtype (float32
for float32 and half inputs, float64 for float64) and every reduction accumulated in
float64.  Each function takes the statistics the forward pass returned with
``return_stats=True`` and returns the gradient of every differentiable input: ``grad_x``
in ``x``'s dtype, ``grad_weight`` (``None`` without ``weight``) and ``grad_bias`` in the
computation dtype.  With a fused residual, pass ``h = x + residual`` (``residual_out``) as
``x``: ``grad_x`` is then the gradient of ``x`` and of ``residual`` alike.

With ``xhat = (x - mean) * rstd`` and ``g = grad_y * weight``, over the normalized values:
    LayerNorm / BatchNorm   grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat))
    RMSNorm (xhat = x*rstd) grad_x = rstd * (g - xhat * mean(g * xhat))
    grad_weight = sum(grad_y * xhat), grad_bias = sum(grad_y) over the other dimensions.
"""

import numpy as np

from . import _checks

__all__ = ["layer_norm_backward", "rms_norm_backward", "batch_norm_backward"]

_FLOAT64 = _checks.FLOAT64


def _inputs(grad_y, x):
    """(grad_y, x, x's original dtype, compute dtype) with both arrays in the compute dtype."""
    x, (_code, compute) = _checks.input_rule(_checks.as_array(x))
    grad_y = _checks.as_array(grad_y)
    grad_y, _rule = _checks.input_rule(grad_y, "grad_y")
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have x's shape {x.shape}, got {grad_y.shape}")
    return grad_y.astype(compute, copy=False), x.astype(compute, copy=False), x.dtype, compute


def _row_stat(stat, x, axis, name, compute):
    """(normalized axes, statistic broadcastable against x) for a row-norm backward.

    Without axis, the normalized dimensions are the trailing ones the statistic lacks
    (its shape is x's leading dimensions); with axis, those axes."""
    stat = _checks.as_array(stat)
    if axis is None:
        axes = tuple(range(stat.ndim, x.ndim))
        if not axes or stat.shape != x.shape[: stat.ndim]:
            raise ValueError(
                f"{name} must have x's shape without the normalized trailing dimensions "
                f"(as layer_norm/rms_norm return it), got {stat.shape} for x of shape {x.shape}"
            )
    else:
        axes = _checks.resolve_axes(x.ndim, axis)
        kept = tuple(n for a, n in enumerate(x.shape) if a not in axes)
        if stat.shape != kept:
            raise ValueError(f"{name} must have shape {kept} for axis={axis!r}, got {stat.shape}")
    return axes, np.expand_dims(stat.astype(compute, copy=False), axes)


def _weight(weight, x, axes, compute):
    """weight in the compute dtype shaped to broadcast along `axes` of x (or None)."""
    if weight is None:
        return None
    norm_shape = tuple(x.shape[a] for a in axes)
    w = _checks.as_param(weight, norm_shape, compute, "weight").reshape(norm_shape)
    shape = [1] * x.ndim
    for a, n in zip(axes, norm_shape):
        shape[a] = n
    return w.reshape(shape)


def _mean(a, axes):
    """Mean over axes, accumulated in float64, returned in a's dtype (keepdims)."""
    return np.mean(a, axis=axes, dtype=_FLOAT64, keepdims=True).astype(a.dtype, copy=False)


def _sum(a, axes, compute):
    return np.sum(a, axis=axes, dtype=_FLOAT64).astype(compute, copy=False)


def _centred_backward(g, x, mean, rstd, w, axes, kept, dtype, compute):
    """The LayerNorm / BatchNorm gradient with statistics over `axes`."""
    xhat = (x - mean) * rstd
    gw = g if w is None else g * w
    grad_x = rstd * (gw - _mean(gw, axes) - xhat * _mean(gw * xhat, axes))
    grad_weight = None if w is None else _sum(g * xhat, kept, compute)
    return grad_x.astype(dtype, copy=False), grad_weight, _sum(g, kept, compute)


def layer_norm_backward(grad_y, x, mean, rstd, weight=None, *, axis=None):
    """Gradients of layer_norm: ``(grad_x, grad_weight, grad_bias)``.

    ``mean``, ``rstd``: as ``layer_norm(..., return_stats=True)`` returned them.  The
    normalized dimensions are the trailing ones they lack, or ``axis`` (keyword-only) when
    the forward pass used ``axis=``.  ``grad_weight`` is ``None`` when ``weight`` is.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g, xc, dtype, compute = _inputs(grad_y, x)
        axes, mean = _row_stat(mean, xc, axis, "mean", compute)
        _axes, rstd = _row_stat(rstd, xc, axis, "rstd", compute)
        kept = tuple(a for a in range(xc.ndim) if a not in axes)
        w = _weight(weight, xc, axes, compute)
        return _centred_backward(g, xc, mean, rstd, w, axes, kept, dtype, compute)


def rms_norm_backward(grad_y, x, rstd, weight=None, *, axis=None):
    """Gradients of rms_norm: ``(grad_x, grad_weight)``; ``grad_weight`` is ``None``
    when ``weight`` is.  ``rstd`` and ``axis`` as for layer_norm_backward."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g, xc, dtype, compute = _inputs(grad_y, x)
        axes, rstd = _row_stat(rstd, xc, axis, "rstd", compute)
        kept = tuple(a for a in range(xc.ndim) if a not in axes)
        w = _weight(weight, xc, axes, compute)
        xhat = xc * rstd
        gw = g if w is None else g * w
        grad_x = rstd * (gw - xhat * _mean(gw * xhat, axes))
        grad_weight = None if w is None else _sum(g * xhat, kept, compute)
        return grad_x.astype(dtype, copy=False), grad_weight


def batch_norm_backward(grad_y, x, mean, rstd, weight=None, *, axis=1):
    """Training-mode gradients of batch_norm: ``(grad_x, grad_weight, grad_bias)``.

    ``mean``, ``rstd``: the batch statistics of shape ``(C,)``, as
    ``batch_norm(..., training=True, return_stats=True)`` returned them; ``axis`` is the
    channel axis.  ``grad_weight`` is ``None`` when ``weight`` is.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g, xc, dtype, compute = _inputs(grad_y, x)
        if xc.ndim < 2:
            raise ValueError(f"batch_norm_backward needs x with at least 2 dimensions, got shape {xc.shape}")
        if isinstance(axis, (tuple, list)):
            raise ValueError(f"axis is the single channel axis, got {axis!r}")
        (channel_axis,) = _checks.resolve_axes(xc.ndim, axis)
        channels = xc.shape[channel_axis]
        reduced = tuple(a for a in range(xc.ndim) if a != channel_axis)
        shape = [1] * xc.ndim
        shape[channel_axis] = channels
        stats = []
        for stat, name in ((mean, "mean"), (rstd, "rstd")):
            stat = _checks.as_array(stat)
            if stat.shape != (channels,):
                raise ValueError(f"{name} must have shape ({channels},), got {stat.shape}")
            stats.append(stat.astype(compute, copy=False).reshape(shape))
        w = _weight(weight, xc, (channel_axis,), compute)
        # Statistics and the weight / bias gradients both run over the non-channel axes.
        return _centred_backward(g, xc, stats[0], stats[1], w, reduced, reduced, dtype, compute)
