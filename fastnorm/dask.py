"""fastnorm on dask arrays: layer_norm, rms_norm and batch_norm (optional: ``dask[array]``).

Same arguments as the functional API except ``out=`` and ``residual_out=``: the result is
a lazy dask array.  Arguments are checked when the function is called, as in memory.

- layer_norm / rms_norm run the in-memory function on each block, with the normalized
  dimensions rechunked into one chunk and moved last (``dask.array.apply_gufunc``); rows
  are independent, so over trailing dimensions the result equals the in-memory one bit
  for bit (``axis=`` elsewhere: to within rounding, as the kernels differ).
- batch_norm eval runs the in-memory eval on each block (the channel axis in one chunk).
- batch_norm training computes ``fastnorm.moments`` of every block and merges them with
  ``fastnorm.merge_moments`` pairwise in a tree, through the active scheduler (a
  ``distributed`` cluster when one is active), when it is called; it then updates the
  running statistics in place and returns the lazy output, each block normalized with the
  batch statistics.  Results equal the in-memory call to within rounding.
"""

try:
    import dask
    import dask.array as da
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastnorm.dask needs dask: python -m pip install 'dask[array]'"
    ) from error

import numpy as np

from . import _checks, _functional
from ._moments import merge_moments, moments

__all__ = ["layer_norm", "rms_norm", "batch_norm"]


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, *, axis=None,
               residual=None, return_stats=False):
    """fastnorm.layer_norm of a dask array, lazily, block by block."""
    return _row_norm(_functional.layer_norm, 2, x, normalized_shape, (weight, bias), eps, axis,
                     residual, return_stats)


def rms_norm(x, normalized_shape=None, weight=None, eps=None, *, axis=None, residual=None,
             return_stats=False):
    """fastnorm.rms_norm of a dask array, lazily, block by block."""
    return _row_norm(_functional.rms_norm, 1, x, normalized_shape, (weight,), eps, axis,
                     residual, return_stats)


def _row_norm(function, n_stats, x, normalized_shape, params, eps, axis, residual,
              return_stats):
    """The in-memory row norm `function` (which returns n_stats statistics with
    return_stats) applied with the normalized axes as the core dimensions of a gufunc."""
    x = da.asarray(x)
    _x, (_code, compute) = _checks.input_rule(np.empty(0, x.dtype))
    plan = _checks.norm_plan(x.shape, normalized_shape, axis)
    norm_shape = plan[3]
    if axis is None:
        axes = tuple(range(x.ndim - len(norm_shape), x.ndim))
    else:
        axes = _checks.resolve_axes(x.ndim, axis)
    params = tuple(None if p is None else _checks.as_param(p, norm_shape, compute, name)
                   for p, name in zip(params, ("weight", "bias")))
    if eps is not None:
        eps = _checks.check_eps(eps)
    inputs = [x]
    if residual is not None:
        residual = da.asarray(residual)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(
                f"residual must have x's shape {x.shape} and dtype {x.dtype}, "
                f"got shape {residual.shape} and dtype {residual.dtype}"
            )
        inputs.append(residual)

    def block(xb, rb=None):
        return function(xb, norm_shape, *params, eps, residual=rb, return_stats=return_stats)

    core = "(" + ",".join(f"n{i}" for i in range(len(axes))) + ")"
    outputs = [core] + ["()"] * (n_stats if return_stats else 0)
    signature = ",".join([core] * len(inputs)) + "->" + ",".join(outputs)
    dtypes = [x.dtype] + [compute] * (len(outputs) - 1)
    result = da.apply_gufunc(
        block, signature, *inputs, axes=[axes] * (len(inputs) + 1) + [()] * (len(outputs) - 1),
        output_dtypes=dtypes if len(dtypes) > 1 else dtypes[0], allow_rechunk=True)
    return tuple(result) if return_stats else result


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, return_stats=False):
    """fastnorm.batch_norm of a dask array.  Training reduces the batch statistics when
    called (updating running_mean / running_var in place); the output stays lazy.
    ``return_stats=True`` returns ``(y, mean, rstd)`` with NumPy statistics."""
    x = da.asarray(x)
    training = _checks.check_bool(training, "training")
    _x, (_code, compute) = _checks.input_rule(np.empty(0, x.dtype))
    (channel_axis, outer, channels, inner, eps, momentum, w, b, running_mean,
     running_var) = _functional._batch_norm_args(x.shape, compute, running_mean, running_var,
                                                 weight, bias, training, momentum, eps, axis)
    x = x.rechunk({channel_axis: -1})
    if training:
        reduced = tuple(a for a in range(x.ndim) if a != channel_axis)
        partials = [dask.delayed(moments)(block, axis=reduced)
                    for block in x.to_delayed().ravel()]
        count, mean, m2 = dask.compute(_merge_tree(partials))[0]
        var = m2 / count
        if running_mean is not None:
            _functional._update_running(running_mean, running_var, mean, var, outer * inner,
                                        momentum)
    else:
        mean = np.require(running_mean, np.float64, ("C", "A"))
        var = np.require(running_var, np.float64, ("C", "A"))

    def block(xb):
        return _functional.batch_norm(xb, mean, var, w, b, training=False, eps=eps,
                                      axis=channel_axis)

    y = x.map_blocks(block, dtype=x.dtype)
    if return_stats:
        return y, mean.astype(compute), _functional._rstd(var, eps).astype(compute)
    return y


def _merge_tree(partials):
    """merge_moments over a list of delayed partials, pairwise in a tree (depth log2 n)."""
    while len(partials) > 1:
        partials = [dask.delayed(merge_moments)(partials[i], partials[i + 1])
                    if i + 1 < len(partials) else partials[i]
                    for i in range(0, len(partials), 2)]
    return partials[0]
