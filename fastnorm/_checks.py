"""The one place for fastnorm's argument policy.

Every public function runs its arguments through these helpers before anything is
written: dtype rules, eps / momentum, normalized dimensions and axes as the (outer,
middle, inner) block of include/fastnorm/fastnorm.h, memory layout, out= and
residual_out= checks, weight / bias conversion and zero-size rules.  Errors say what was
wrong and what was expected.  The C extension is called for one thing only: copies
between memory layouts (contiguous, assign).
"""

import math
import numbers
import operator
import sys

import numpy as np

from . import _core

FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
_INF = math.inf

# fastnorm_dtype_t of fastnorm.h; fastnorm._functional checks them against _core at import.
CODE_F32, CODE_F64, CODE_F16, CODE_BF16 = 0, 1, 2, 3

# storage dtype -> (fastnorm_dtype_t code, compute dtype).
DTYPES = {
    FLOAT32: (CODE_F32, FLOAT32),
    FLOAT64: (CODE_F64, FLOAT64),
    FLOAT16: (CODE_F16, FLOAT32),
}  # and ml_dtypes' bfloat16: (CODE_BF16, FLOAT32), from bfloat16()

# np.dtype(ml_dtypes.bfloat16) once bfloat16() has found it, else None
BFLOAT16 = None

# Threads passed to _core: 0 means OpenMP's default, so OMP_NUM_THREADS and threadpoolctl
# apply; fastnorm._config.set_num_threads stores an explicit count here.
num_threads = 0


# ---- arrays and dtypes --------------------------------------------------------------


def bfloat16(load=False):
    """ml_dtypes' bfloat16 dtype, added to DTYPES when first found; None while nothing has
    imported ml_dtypes (unless load: then it is imported here).

    Importing ml_dtypes took 0.73 s of `import fastnorm`'s 1.2 s on the bench machine, and
    no array or dtype of bfloat16 exists before something imports it: so fastnorm looks
    for the module in sys.modules, and imports it only where a user names bfloat16 without
    one (dtype="bfloat16", a torch bfloat16 tensor)."""
    global BFLOAT16
    if BFLOAT16 is None:
        module = sys.modules.get("ml_dtypes")
        if module is None and load:
            try:
                import ml_dtypes as module
            except ImportError:  # pragma: no cover - ml_dtypes is a dependency
                return None
        dtype = getattr(module, "bfloat16", None)  # None, or a module still importing
        if dtype is not None:
            BFLOAT16 = np.dtype(dtype)
            DTYPES[BFLOAT16] = (CODE_BF16, FLOAT32)
    return BFLOAT16


def known_rule(dtype):
    """DTYPES' (core code, compute dtype) for dtype, else None."""
    rule = DTYPES.get(dtype)
    if rule is None and BFLOAT16 is None and bfloat16() is not None:
        rule = DTYPES.get(dtype)
    return rule


def is_bfloat16(dtype):
    """Whether dtype is ml_dtypes' bfloat16 (never compared with None: np.dtype(None) is
    float64)."""
    return bfloat16() is not None and dtype == BFLOAT16


def as_array(x):
    """x itself when it is an ndarray (no call at all), else numpy.asarray(x), and a CPU
    torch bfloat16 tensor as an ml_dtypes bfloat16 array, which numpy.asarray refuses (NumPy
    has no bfloat16): widened in torch and narrowed back by ml_dtypes, exactly, without
    importing torch."""
    if type(x) is np.ndarray:
        return x
    if str(getattr(x, "dtype", "")) == "torch.bfloat16" and bfloat16(load=True) is not None:
        return np.asarray(x.float()).astype(BFLOAT16)
    return np.asarray(x)


def dtype_rule(dtype, name="x"):
    """(core code, compute dtype) of a supported dtype, else TypeError."""
    rule = known_rule(dtype)
    if rule is None:
        raise TypeError(
            f"{name} has dtype {dtype}, which fastnorm does not support; "
            "expected float32, float64, float16 or bfloat16 (ml_dtypes)"
        )
    return rule


def input_rule(x, name="x"):
    """(x, dtype rule) for an input array: a byte-swapped float array is converted to
    native order; any other unsupported dtype raises TypeError naming it."""
    rule = known_rule(x.dtype)
    if rule is None:
        native = x.dtype.newbyteorder("=") if x.dtype.kind == "f" else None
        if native is not None and native in DTYPES:
            return x.astype(native), DTYPES[native]
        dtype_rule(x.dtype, name)
    return x, rule


def is_direct(a):
    """Whether the kernels can read a as it is: C-contiguous and aligned (they load whole
    items, which a misaligned address does not allow)."""
    flags = a.flags
    return flags.c_contiguous and flags.aligned


def contiguous(a):
    """a when the kernels can read it directly, else a copy they can (any layout is accepted):
    a transpose by the C extension's tiles (_tiles_pay), the rest by NumPy."""
    if is_direct(a):
        return a
    if a.ndim > 1 and _tiles_pay(a.ndim - 1, a):
        # large copies from the output cache, as the outputs are: a Fortran-order 8192x4096
        # float32 layer_norm took 45-49 ms with numpy.empty's fresh pages, 26-28 ms so
        y = _core.empty(a.shape, a.dtype)
        _core.copy(a, y, num_threads)
        return y
    return np.require(a, requirements="CA")


def assign(dst, src):
    """dst[...] = src: a result into the caller's out= or residual_out= (same shape and
    dtype, apart in memory), by the C extension's tiles where they pay (_tiles_pay)."""
    if (dst.dtype == src.dtype and src.ndim > 1 and _tiles_pay(_fast_axis(src), dst)
            and not np.may_share_memory(dst, src)):
        _core.copy(src, dst, num_threads)
    else:
        dst[...] = src


def _fast_axis(a):
    """The axis along which a is contiguous in memory, if a is C-contiguous or a transpose
    of a C-contiguous array (memory_order), else None."""
    if a.flags.c_contiguous:
        return a.ndim - 1
    order = memory_order(a)
    return None if order is None else order[-1]


def _tiles_pay(axis, a):
    """Whether copying between a and an array contiguous along `axis` should go through
    _core.copy's tiles: a is a transpose contiguous along another axis, and both axes
    are a cache line long or more.  NumPy's copy moves an item at a time: 12-15 ms for a
    Fortran-order 4096x768 float32 array to C order, the tiles 1.7-2.3 ms; 8192x4096
    220-260 ms against 13-18 ms; a channels-last (32, 64, 56, 56) view 11 against 2-2.3 ms;
    with 3 channels NumPy's was faster."""
    fast = _fast_axis(a)
    if axis is None or fast is None or fast == axis or a.itemsize not in (2, 4, 8):
        return False
    return min(a.shape[fast], a.shape[axis]) * a.itemsize >= 64


def memory_order(a):
    """The axis order in which a is a C-contiguous array, when a is not C-contiguous but
    some transpose of it is (a channels-last view of an NCHW shape, a Fortran array), else
    None.  The functions compute such an input in its memory order, as that C-contiguous
    transpose, instead of copying it to C order and the result back."""
    if a.ndim < 2:
        return None
    flags = a.flags
    if flags.c_contiguous or not flags.aligned:
        return None
    # largest stride first; equal strides (size-1 axes) keep their order: the sort is stable
    order = tuple(sorted(range(a.ndim), key=a.strides.__getitem__, reverse=True))
    return order if a.transpose(order).flags.c_contiguous else None


def inverse_order(order):
    """The transpose that undoes a.transpose(order)."""
    inverse = [0] * len(order)
    for position, a in enumerate(order):
        inverse[a] = position
    return tuple(inverse)


def in_order(order, x, xt, *arrays):
    """Each array (None, or an ndarray like x) transposed by `order`, as xt is x; an array
    that is x (or an earlier one) becomes that same view, so in-place calls stay in place."""
    views = {id(x): xt}
    result = []
    for a in arrays:
        if a is not None and id(a) not in views:
            views[id(a)] = a.transpose(order)
        result.append(None if a is None else views[id(a)])
    return result


# ---- scalars ------------------------------------------------------------------------


def _real(value):
    """float(value) for a real number (not bool or str), else None."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def check_eps(eps):
    """eps as a float; ValueError unless it is a finite real number >= 0."""
    if type(eps) is float and 0.0 <= eps < _INF:
        return eps
    value = _real(eps)
    if value is None or not 0.0 <= value < _INF:
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    return value


def check_momentum(momentum):
    """momentum as a float; ValueError unless it is a real number in [0, 1]."""
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    value = _real(momentum)
    if value is None or not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    return value


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# ---- axes and the (outer, middle, inner) block -------------------------------------


def resolve_axes(ndim, axis, allow_empty=False):
    """axis (int or tuple of ints, NumPy style) as a sorted tuple of non-negative axes."""
    if type(axis) is int and -ndim <= axis < ndim:
        return (axis % ndim,)
    # plain ints and tuples first: an isinstance check against numbers.Integral takes
    # about 0.3 us (axis (0, 2, 3): 2.5 -> 0.8 us)
    if type(axis) is tuple:
        items = axis
    elif isinstance(axis, numbers.Integral) and not isinstance(axis, bool):
        items = (axis,)
    else:
        try:
            items = tuple(axis)
        except TypeError:
            raise ValueError(f"axis must be an int or a tuple of ints, got {axis!r}") from None
    axes = []
    for a in items:
        if type(a) is not int and (isinstance(a, bool) or not isinstance(a, numbers.Integral)):
            raise ValueError(f"axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array with {ndim} dimensions")
        axes.append(int(a) % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} names a dimension twice")
    if not axes and not allow_empty:
        raise ValueError("axis must name at least one dimension")
    return tuple(sorted(axes))


class ShapeTypeError(TypeError, ValueError):
    """normalized_shape that is not an int or a sequence of ints (5.0, (3.0, 5), True): a
    TypeError, as NumPy's and PyTorch's shape arguments raise, and a ValueError, as every
    other normalized_shape mistake is (NumPy's AxisError is a ValueError and IndexError)."""


def check_bool(value, name):
    """A bool (or NumPy bool) flag as a bool, else ValueError: training="no" or None would
    otherwise pass by truthiness, as the layers' train(mode) refuses too."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r}")


def as_shape(normalized_shape):
    """normalized_shape as a tuple of ints (an int or a 0-d integer array is a 1-tuple, a
    1-D integer array a sequence).  bool is refused, as PyTorch refuses it: layer_norm(x,
    True) is a slip, not a request for 1."""
    try:
        scalar = hasattr(normalized_shape, "__index__") and np.ndim(normalized_shape) == 0
        items = (normalized_shape,) if scalar else tuple(normalized_shape)
        if any(isinstance(n, (bool, np.bool_)) for n in items):
            raise TypeError
        return tuple(operator.index(n) for n in items)
    except TypeError:
        raise ShapeTypeError(
            f"normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}"
        ) from None


class NormPlan(tuple):
    """How a row norm sees x: (outer, middle, inner, norm_shape, stats_shape, moved).

    (outer, middle, inner) is the block of fastnorm_norm, statistics over middle.  moved is
    None when the normalized axes form one contiguous group (no copy: trailing axes give
    inner == 1, a group of non-trailing axes inner > 1).  Otherwise it holds the
    normalized axes, which are moved to the end (one copy) and the result moved back.
    norm_shape is the shape of weight / bias, stats_shape that of return_stats arrays.
    """

    __slots__ = ()


def _make_norm_plan(shape, normalized_shape, axis):
    ndim = len(shape)
    if axis is not None:
        if normalized_shape is not None:
            raise ValueError("give either normalized_shape or axis, not both")
        axes = resolve_axes(ndim, axis)
    else:
        if ndim == 0:
            raise ValueError("x must have at least one dimension to normalize, got a 0-d array")
        if normalized_shape is None:
            axes = (ndim - 1,)
        else:
            wanted = as_shape(normalized_shape)
            k = len(wanted)
            if k == 0 or k > ndim or shape[ndim - k :] != wanted:
                raise ValueError(
                    f"normalized_shape {normalized_shape!r} must equal the trailing dimensions "
                    f"of x, whose shape is {shape}"
                )
            axes = tuple(range(ndim - k, ndim))
    norm_shape = tuple(shape[a] for a in axes)
    middle = math.prod(norm_shape)
    if middle == 0:
        raise ValueError(f"the normalized dimensions {norm_shape} of x (shape {shape}) must not be empty")
    stats_shape = tuple(n for a, n in enumerate(shape) if a not in axes)
    first, last = axes[0], axes[-1]
    if last - first + 1 == len(axes):
        outer = math.prod(shape[:first])
        inner = math.prod(shape[last + 1 :])
        return NormPlan((outer, middle, inner, norm_shape, stats_shape, None))
    return NormPlan((math.prod(stats_shape), middle, 1, norm_shape, stats_shape, axes))


# Plans of recent (shape, normalized_shape, axis) calls: planning costs microseconds of
# Python, a lookup ~0.1 us.  Only plain ints are cached (axis, normalized_shape or its
# items), because a cache hit skips the type checks: axis=1.0 and normalized_shape=5.0
# equal and hash as 1 and 5 but must still be refused.  Errors are never cached.
_PLAN_CACHE = {}
_PLAN_CACHE_SIZE = 1024


def _plain_ints(normalized_shape):
    """None, an int, or a tuple of ints (exactly those types: what may key the cache)."""
    if normalized_shape is None or type(normalized_shape) is int:
        return True
    if type(normalized_shape) is not tuple:
        return False
    for n in normalized_shape:
        if type(n) is not int:
            return False
    return True


def norm_plan(shape, normalized_shape, axis):
    """The NormPlan of layer_norm / rms_norm for x of `shape`, per the contract."""
    if (axis is None or type(axis) is int) and _plain_ints(normalized_shape):
        key = (shape, normalized_shape, axis)
        try:
            plan = _PLAN_CACHE.get(key)
        except TypeError:  # unhashable normalized_shape, e.g. a list
            return _make_norm_plan(shape, normalized_shape, axis)
        if plan is None:
            plan = _make_norm_plan(shape, normalized_shape, axis)
            if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
                _PLAN_CACHE.clear()
            _PLAN_CACHE[key] = plan
        return plan
    return _make_norm_plan(shape, normalized_shape, axis)


def move_to_end(a, axes):
    """C-contiguous copy of a with `axes` moved to the end, in order."""
    return contiguous(np.moveaxis(a, axes, range(a.ndim - len(axes), a.ndim)))


def move_back(a, axes):
    """View of an array produced by move_to_end with its axes where they came from."""
    return np.moveaxis(a, range(a.ndim - len(axes), a.ndim), axes)


def channel_block(shape, axis):
    """(outer, channels, inner) of x with channels on `axis` (BatchNorm)."""
    a = axis
    return math.prod(shape[:a]), shape[a], math.prod(shape[a + 1 :])


# ---- parameters ---------------------------------------------------------------------


def as_param(p, shape, compute, name):
    """weight / bias / per-channel data as a C-contiguous array of the compute dtype and
    exactly `shape`.  Any float dtype (and integers) is accepted and converted."""
    if (type(p) is np.ndarray and p.dtype is compute and p.shape == shape
            and p.flags.c_contiguous and p.flags.aligned):
        return p  # the common case, no copy
    a = as_array(p)
    if a.dtype != compute:
        if a.dtype.kind not in "fiu" and not is_bfloat16(a.dtype):
            raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
        a = a.astype(compute)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return contiguous(a)


def check_running_stat(stat, channels, name, training):
    """BatchNorm running statistics as a float32/float64 array of shape (C,), else
    ValueError.  Training updates them in place, so there they must already be writeable
    NumPy arrays; eval only reads them, so anything numpy.asarray takes will do."""
    if (type(stat) is np.ndarray and (stat.dtype is FLOAT32 or stat.dtype is FLOAT64)
            and stat.shape == (channels,) and (not training or stat.flags.writeable)):
        return stat  # the common case
    if not training:
        stat = as_array(stat)
    elif not isinstance(stat, np.ndarray):
        raise ValueError(
            f"{name} must be a float32 or float64 NumPy array of shape ({channels},), updated "
            f"in place by training, got {type(stat).__name__}"
        )
    native = stat.dtype.newbyteorder("=") if stat.dtype.kind == "f" else stat.dtype
    if native != FLOAT32 and native != FLOAT64:
        raise ValueError(f"{name} must be a float32 or float64 array, got dtype {stat.dtype}")
    if native != stat.dtype and not training:  # byte-swapped: read in native order
        stat = stat.astype(native)
    if stat.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {stat.shape}")
    if training and not stat.flags.writeable:
        raise ValueError(f"{name} is read-only, but training updates it in place")
    return stat


# ---- out= and residual -----------------------------------------------------------


def byte_swapped_twin(a_dtype, dtype):
    """a_dtype is dtype in the other byte order ('>f4' for float32 on this machine): a
    byte-swapped input is computed in native order, and an out= of its own dtype (out=x in
    place) is written through a native temporary (writes_directly)."""
    return not a_dtype.isnative and a_dtype.newbyteorder("=") == dtype


def check_out(out, shape, dtype, name="out"):
    """ValueError unless out is a writeable ndarray of exactly this shape and dtype (or
    that dtype byte-swapped)."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array of shape {shape} and dtype {dtype}, "
                         f"got {type(out).__name__}")
    if out.shape != shape or (out.dtype != dtype and not byte_swapped_twin(out.dtype, dtype)):
        raise ValueError(
            f"{name} must have shape {shape} and dtype {dtype}, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")


def overlaps(a, b):
    """Whether two distinct arrays may share memory.  Two arrays that own their data
    (base None) cannot, which skips NumPy's bounds check in the common case."""
    if a.base is None and b.base is None:
        return False
    return np.may_share_memory(a, b)


def writes_directly(out, x, *others):
    """True when the kernel may write straight into out: C-contiguous, and either x
    itself (in place, which every entry point supports) or disjoint from x, and disjoint
    from others.  Otherwise the result goes to a temporary copied into out afterwards."""
    flags = out.flags
    if not (flags.c_contiguous and flags.aligned and out.dtype.isnative):
        return False
    if out is not x and overlaps(out, x):
        return False
    for other in others:
        if other is not None and (other is out or overlaps(out, other)):
            return False
    return True


def check_residual(residual, residual_out, x, out):
    """residual as an array like x; residual_out checked (it may alias x or residual)."""
    if residual is None:
        if residual_out is not None:
            raise ValueError("residual_out needs residual (it receives x + residual)")
        return None
    r = as_array(residual)
    if byte_swapped_twin(r.dtype, x.dtype):
        r = r.astype(x.dtype)
    if r.shape != x.shape or r.dtype != x.dtype:
        raise ValueError(
            f"residual must have x's shape {x.shape} and dtype {x.dtype}, "
            f"got shape {r.shape} and dtype {r.dtype}"
        )
    if residual_out is not None:
        check_out(residual_out, x.shape, x.dtype, "residual_out")
        if out is not None and (residual_out is out or overlaps(residual_out, out)):
            raise ValueError("residual_out must not be out (nor overlap it)")
    return r
