"""Mergeable statistics: moments (Welford partials from the C kernels) and merge_moments
(Chan et al.'s parallel merge), the pieces that let batch statistics be computed across
chunks, threads or machines.  Partials are always (int64 count, float64 mean, float64 m2),
whatever the input dtype, so merging many of them loses nothing."""

import math

import numpy as np

from . import _checks, _core

__all__ = ["moments", "merge_moments"]


def moments(x, axis=None):
    """``(count, mean, m2)`` of ``x`` over ``axis`` (as in NumPy reductions; ``None``: all).

    ``m2`` is the sum of squared deviations from the mean, so ``var = m2 / count``.
    ``count`` is an int64 array (or scalar) shaped like ``mean``.  A NaN or inf among a
    statistic's values makes its ``mean`` and ``m2`` NaN.  An empty reduction gives
    ``count == 0`` with ``mean == m2 == 0``, the neutral element of merge_moments.
    """
    x = _checks.as_array(x)
    x, (code, _compute) = _checks.input_rule(x)
    shape = x.shape
    if axis is None:
        axes = tuple(range(x.ndim))
    else:
        axes = _checks.resolve_axes(x.ndim, axis, allow_empty=True)
    kept = [a for a in range(x.ndim) if a not in axes]
    kept_shape = tuple(shape[a] for a in kept)
    count = math.prod(shape[a] for a in axes)
    channels = math.prod(kept_shape)

    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    # the kept axes in the order the statistics come out (x's memory order, below)
    kept_out = kept
    if count and channels:
        order = _checks.memory_order(x) if kept else None
        if order is not None and set(order[len(order) - len(kept):]) == set(kept):
            # the kept axes fastest in memory (a channels-last view): reduced as the
            # C-contiguous array it is, not copied to C order (245 us -> 18 us for
            # (1, 64, 56, 56) float32), within rounding of the C-order bits as batch_norm
            # training's statistics of such views; other layouts keep the C-order bits
            x = x.transpose(order)
            kept_out = [a for a in order if a in kept]
            kept = [p for p, a in enumerate(order) if a in kept]
            shape = x.shape
        # _core reduces over the outer and inner parts of an (outer, channels, inner)
        # block: the kept axes must be one contiguous group, else they are moved first.
        if not kept:
            outer, inner = 1, count
        elif kept[-1] - kept[0] + 1 == len(kept):
            outer, inner = math.prod(shape[: kept[0]]), math.prod(shape[kept[-1] + 1 :])
        else:
            x = np.moveaxis(x, kept, range(len(kept)))
            outer, inner = 1, count
        x = _checks.contiguous(x)
        _core.moments(code, outer, channels, inner, x, mean, m2,
                      _checks.num_threads)

    counts = np.empty(kept_shape, np.int64)  # filled in place: np.full takes 0.6 us more
    counts.fill(count)
    mean = _in_logical_order(mean, kept_out, kept_shape)
    m2 = _in_logical_order(m2, kept_out, kept_shape)
    if not kept_shape:
        return counts[()], mean[()], m2[()]
    return counts, mean, m2


def _in_logical_order(stats, kept_out, kept_shape):
    """Statistics that came out over the kept axes kept_out (x's axis numbers, in memory
    order), shaped kept_shape, their order in x (a C-contiguous array)."""
    if kept_out == sorted(kept_out):
        return stats.reshape(kept_shape)
    out_shape = tuple(kept_shape[sorted(kept_out).index(a)] for a in kept_out)
    ascending = sorted(range(len(kept_out)), key=kept_out.__getitem__)
    return np.ascontiguousarray(stats.reshape(out_shape).transpose(ascending))


def _partial(p, name):
    try:
        count, mean, m2 = p
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (count, mean, m2) tuple as moments returns") from None
    count = np.asarray(count)
    if count.dtype.kind not in "iu" and not (count.dtype.kind == "f" and np.all(count == np.floor(count))):
        raise ValueError(f"{name}: count must hold integers, got dtype {count.dtype}")
    return count.astype(np.int64), np.asarray(mean, np.float64), np.asarray(m2, np.float64)


def merge_moments(a, b):
    """Merge two ``(count, mean, m2)`` partials into those of the union (Chan et al.).

    Arrays broadcast against each other; an empty side (count 0) contributes nothing.
    """
    count_a, mean_a, m2_a = _partial(a, "a")
    count_b, mean_b, m2_b = _partial(b, "b")
    count = count_a + count_b
    na = count_a.astype(np.float64)
    nb = count_b.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = np.where(count > 0, na + nb, 1.0)
        delta = mean_b - mean_a
        mean = mean_a + delta * (nb / total)
        m2 = m2_a + m2_b + delta * delta * (na * nb / total)
    # An empty side's mean is arbitrary (possibly NaN): take the other side as it is.
    mean = np.where(count_b == 0, mean_a, np.where(count_a == 0, mean_b, mean))
    m2 = np.where(count_b == 0, m2_a, np.where(count_a == 0, m2_b, m2))
    shape = np.broadcast_shapes(count.shape, mean.shape, m2.shape)
    count, mean, m2 = (np.broadcast_to(v, shape).copy() for v in (count, mean, m2))
    return count[()], mean[()], m2[()]  # scalars when shape == ()
