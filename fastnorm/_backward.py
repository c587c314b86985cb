"""Backward passes of layer_norm, rms_norm and batch_norm, for training loops on NumPy.

Policy only: the C kernels compute (fastnorm_norm_backward over an (outer, middle, inner)
block, _layout says how each layout maps to one, the common call through
_core.rows_backward in one step; fastnorm_batch_norm_backward over
(outer, channels, inner)).  Elementwise work is in the computation dtype (float32 for
float32 and half inputs, float64 for float64) in the order of the formulas below, and
every reduction is summed in the computation dtype a few values at a time, then in
float64.  grad_y and x of one dtype run in it; otherwise both are converted to the
computation dtype first.  Each function takes the statistics the forward pass returned with
``return_stats=True`` and returns the gradient of every differentiable input: ``grad_x``
in ``x``'s dtype, ``grad_weight`` (``None`` without ``weight``) and ``grad_bias`` in the
computation dtype.  With a fused residual, pass ``h = x + residual`` (``residual_out``) as
``x``: ``grad_x`` is then the gradient of ``x`` and of ``residual`` alike.

With ``xhat = (x - mean) * rstd`` and ``g = grad_y * weight``, over the normalized values:
    LayerNorm / BatchNorm   grad_x = rstd * ((g - mean(g)) - xhat * mean(g * xhat))
    RMSNorm (xhat = x*rstd) grad_x = rstd * (g - xhat * mean(g * xhat))
    grad_weight = sum(grad_y * xhat), grad_bias = sum(grad_y) over the other dimensions.
"""

import math

import numpy as np

from . import _checks, _core

__all__ = ["layer_norm_backward", "rms_norm_backward", "batch_norm_backward"]

_FLOAT64 = _checks.FLOAT64
_LAYER_NORM, _RMS_NORM = _core.LAYER_NORM, _core.RMS_NORM
# the common call (arrays as they are, the last axis normalized) in one step, declined
# (None, nothing written) to the general path below otherwise
_core_rows_backward = _core.rows_backward


def _inputs(grad_y, x):
    """(grad_y, x, x's dtype, core code, compute dtype): grad_y and x in one dtype, x's own
    when grad_y has it, else the compute dtype (which holds x's values exactly)."""
    x, (code, compute) = _checks.input_rule(_checks.as_array(x))
    grad_y, _rule = _checks.input_rule(_checks.as_array(grad_y), "grad_y")
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have x's shape {x.shape}, got {grad_y.shape}")
    dtype = x.dtype
    if grad_y.dtype != dtype:
        grad_y, x = grad_y.astype(compute), x.astype(compute, copy=False)
        code = _checks.DTYPES[compute][0]
    return grad_y, x, dtype, code, compute


def _row_stat(stat, x, axis, name, compute):
    """(normalized axes, statistic in the compute dtype with x's other dimensions' shape)
    for a row-norm backward.

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
    return axes, stat.astype(compute, copy=False)


def _layout(g, x, axes):
    """How the kernels see a row norm over `axes`: (grad_y, x as C-contiguous arrays, their
    (outer, middle, inner) block normalized over middle, the order the kept axes have there,
    and the function that gives grad_x computed that way x's shape and layout).

    - Trailing axes: the arrays themselves (copied only if not C-contiguous); inner 1.
    - x and grad_y both a transpose of a C-contiguous array in which the normalized axes
      come last, in order (axis=1 of the (N, C, H, W) view of NHWC memory, say): those
      C-contiguous views, inner 1, grad_x given x's layout, as the forward's result has it.
    - One run of adjacent axes (axis=1 of C-order NCHW data): the arrays in C order, the
      axes after the run the inner positions, each with its own statistics.
    - Otherwise copies with the axes moved last, and grad_x copied back to C order."""
    ndim, k = x.ndim, len(axes)
    kept = [a for a in range(ndim) if a not in axes]
    middle = math.prod(x.shape[a] for a in axes)
    if axes == tuple(range(ndim - k, ndim)):
        return (_checks.contiguous(g), _checks.contiguous(x), (x.size // middle, middle, 1),
                kept, lambda y: y)
    order = _checks.memory_order(x)
    if order is not None and order[len(kept):] == axes and _checks.memory_order(g) == order:
        back = _checks.inverse_order(order)
        return (g.transpose(order), x.transpose(order), (x.size // middle, middle, 1),
                list(order[: len(kept)]), lambda y: y.transpose(back))
    if axes == tuple(range(axes[0], axes[0] + k)):
        outer = math.prod(x.shape[: axes[0]])
        return (_checks.contiguous(g), _checks.contiguous(x),
                (outer, middle, x.size // (outer * middle)), kept, lambda y: y)
    return (_checks.move_to_end(g, axes), _checks.move_to_end(x, axes),
            (x.size // middle, middle, 1), kept,
            lambda y: _checks.contiguous(_checks.move_back(y, axes)))


def _rows_backward(kind, g, x, dtype, code, compute, mean, rstd, weight, axes):
    """(grad_x, grad_weight or None, grad_bias) of a row norm over `axes` by the kernels."""
    norm_shape = tuple(x.shape[a] for a in axes)
    n = math.prod(norm_shape)
    w = None if weight is None else _checks.as_param(weight, norm_shape, compute, "weight").reshape(n)
    if x.size == 0:  # sums over no rows are 0
        grad_weight = None if w is None else np.zeros(norm_shape, compute)
        grad_bias = np.zeros(norm_shape, compute) if kind == _LAYER_NORM else None
        return np.empty(x.shape, dtype), grad_weight, grad_bias
    gm, xm, (outer, middle, inner), kept_order, restore = _layout(g, x, axes)
    kept = [a for a in range(x.ndim) if a not in axes]
    # the statistics' axes in the order of the positions the kernels see
    stat_order = [kept.index(a) for a in kept_order]
    stats = [None if s is None else _checks.contiguous(s.transpose(stat_order)).reshape(-1)
             for s in (mean, rstd)]
    grad_x = np.empty(xm.shape, xm.dtype)
    grad_weight = None if w is None else np.empty(n, _FLOAT64)
    grad_bias = np.empty(n, _FLOAT64) if kind == _LAYER_NORM else None
    _core.norm_backward(kind, code, outer, middle, inner, _checks.contiguous(gm),
                        _checks.contiguous(xm), stats[0], stats[1], w, grad_x, grad_weight,
                        grad_bias, _checks.num_threads)
    sums = [None if s is None else s.astype(compute, copy=False).reshape(norm_shape)
            for s in (grad_weight, grad_bias)]
    return restore(grad_x).astype(dtype, copy=False), sums[0], sums[1]


def layer_norm_backward(grad_y, x, mean, rstd, weight=None, *, axis=None):
    """Gradients of layer_norm: ``(grad_x, grad_weight, grad_bias)``.

    ``mean``, ``rstd``: as ``layer_norm(..., return_stats=True)`` returned them.  The
    normalized dimensions are the trailing ones they lack, or ``axis`` (keyword-only) when
    the forward pass used ``axis=``.  ``grad_weight`` is ``None`` when ``weight`` is.
    """
    if axis is None:
        result = _core_rows_backward(_LAYER_NORM, grad_y, x, mean, rstd, weight,
                                     _checks.num_threads)
        if result is not None:
            return result
    g, x, dtype, code, compute = _inputs(grad_y, x)
    axes, mean = _row_stat(mean, x, axis, "mean", compute)
    _axes, rstd = _row_stat(rstd, x, axis, "rstd", compute)
    return _rows_backward(_LAYER_NORM, g, x, dtype, code, compute, mean, rstd, weight, axes)


def rms_norm_backward(grad_y, x, rstd, weight=None, *, axis=None):
    """Gradients of rms_norm: ``(grad_x, grad_weight)``; ``grad_weight`` is ``None``
    when ``weight`` is.  ``rstd`` and ``axis`` as for layer_norm_backward."""
    if axis is None:
        result = _core_rows_backward(_RMS_NORM, grad_y, x, None, rstd, weight,
                                     _checks.num_threads)
        if result is not None:
            return result[:2]
    g, x, dtype, code, compute = _inputs(grad_y, x)
    axes, rstd = _row_stat(rstd, x, axis, "rstd", compute)
    grad_x, grad_weight, _ = _rows_backward(_RMS_NORM, g, x, dtype, code, compute, None, rstd,
                                            weight, axes)
    return grad_x, grad_weight


def batch_norm_backward(grad_y, x, mean, rstd, weight=None, *, axis=1):
    """Training-mode gradients of batch_norm: ``(grad_x, grad_weight, grad_bias)``.

    ``mean``, ``rstd``: the batch statistics of shape ``(C,)``, as
    ``batch_norm(..., training=True, return_stats=True)`` returned them; ``axis`` is the
    channel axis.  ``grad_weight`` is ``None`` when ``weight`` is.
    """
    g, x, dtype, code, compute = _inputs(grad_y, x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm_backward needs x with at least 2 dimensions, got shape {x.shape}")
    if isinstance(axis, (tuple, list)):
        raise ValueError(f"axis is the single channel axis, got {axis!r}")
    (channel_axis,) = _checks.resolve_axes(x.ndim, axis)
    channels = x.shape[channel_axis]
    # a channels-last view (of an NCHW shape, say), grad_y laid out alike: computed as the
    # channels-last arrays they are, without copies, grad_x given the same layout
    order = _checks.memory_order(x) if x.size else None
    if order is None or order[-1] != channel_axis or _checks.memory_order(g) != order:
        order = None
    else:
        x, g, channel_axis = x.transpose(order), g.transpose(order), x.ndim - 1
    outer, _channels, inner = _checks.channel_block(x.shape, channel_axis)
    stats = []
    for stat, name in ((mean, "mean"), (rstd, "rstd")):
        stat = _checks.as_array(stat)
        if stat.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {stat.shape}")
        stats.append(_checks.contiguous(stat.astype(compute, copy=False)))
    w = None if weight is None else _checks.as_param(weight, (channels,), compute, "weight")
    if x.size == 0:  # sums over no values are 0
        grad_weight = None if w is None else np.zeros(channels, compute)
        return np.empty(x.shape, dtype), grad_weight, np.zeros(channels, compute)
    grad_x = np.empty(x.shape, x.dtype)
    grad_weight = None if w is None else np.empty(channels, _FLOAT64)
    grad_bias = np.empty(channels, _FLOAT64)
    _core.batch_norm_backward(code, outer, channels, inner, _checks.contiguous(g),
                              _checks.contiguous(x), stats[0], stats[1], w, grad_x, grad_weight,
                              grad_bias, _checks.num_threads)
    if order is not None:
        grad_x = grad_x.transpose(_checks.inverse_order(order))
    return (grad_x.astype(dtype, copy=False),
            None if grad_weight is None else grad_weight.astype(compute, copy=False),
            grad_bias.astype(compute, copy=False))
