"""Layer classes with PyTorch's constructor arguments, state names and semantics.

LayerNorm, RMSNorm, BatchNorm1d/2d/3d, GroupNorm and InstanceNorm1d/2d/3d hold their
parameters (``weight``, ``bias``) and buffers (``running_mean``, ``running_var``,
``num_batches_tracked``) as NumPy arrays and call the functional API in ``forward``.
Everything they share -- training flag, state registry, ``state_dict`` /
``load_state_dict``, ``from_torch``, ``repr`` -- lives in one base class, ``NormLayer``.

torch is never imported: ``from_torch`` and ``load_state_dict`` duck-type tensors
(``.detach()``, ``.cpu()``, ``__array__``).
"""

import collections
import math

import numpy as np

from . import _checks
from ._functional import batch_norm, group_norm, instance_norm, layer_norm, rms_norm

__all__ = [
    "NormLayer",
    "LayerNorm",
    "RMSNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
]

# What load_state_dict(strict=False) returns, with torch's field names.
IncompatibleKeys = collections.namedtuple("IncompatibleKeys", "missing_keys unexpected_keys")

# The dtypes a layer may hold, by name (bfloat16 is ml_dtypes', imported only when needed:
# _checks.bfloat16).  BatchNorm/InstanceNorm running statistics are updated in place by
# batch_norm, which takes float32/float64 statistics only.
_ALL_DTYPES = ("float32", "float64", "float16", "bfloat16")
_STAT_DTYPES = ("float32", "float64")
_INT64 = np.dtype(np.int64)


# ---- small helpers ------------------------------------------------------------------


def _to_numpy(value):
    """A NumPy array of a NumPy array, torch tensor (parameter or not, any device) or
    anything with __array__, without importing torch."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a tensor that requires grad refuses __array__
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    return _checks.as_array(value)


def _dtype_in(dt, names):
    """Whether dt is one of fastnorm's dtypes (native order) named in names."""
    return dt.name in names and _checks.known_rule(dt) is not None


def _layer_dtype(dtype, allowed, layer):
    if isinstance(dtype, str) and dtype == "bfloat16":
        _checks.bfloat16(load=True)  # NumPy knows the name once ml_dtypes is imported
    dt = np.dtype(dtype)
    if not _dtype_in(dt, allowed):
        names = ", ".join(allowed)
        raise TypeError(f"{layer} does not support dtype {dt}; expected one of {names}")
    return dt


_positive_int = _checks.check_positive_int  # ValueError unless an int >= 1


def _normalized_shape(normalized_shape):
    """normalized_shape as a tuple of positive ints (an int is a 1-tuple), as torch stores it;
    anything but ints raises the functions' ShapeTypeError (a TypeError and a ValueError)."""
    shape = _checks.as_shape(normalized_shape)
    if not shape:
        raise ValueError("normalized_shape must name at least one dimension, got ()")
    return tuple(_positive_int(n, "each entry of normalized_shape") for n in shape)


def _check_eps(eps, allow_none=False):
    if eps is None and allow_none:
        return None
    _checks.check_eps(eps)  # ValueError unless a finite float >= 0
    return eps  # kept as given, so repr prints what the user wrote (as torch does)


def _check_momentum(momentum):
    if momentum is None:
        return None
    _checks.check_momentum(momentum)
    return momentum


# ---- the shared base ----------------------------------------------------------------


class NormLayer:
    """Base of every fastnorm layer: a small, NumPy-only subset of ``torch.nn.Module``.

    Subclasses list their state in ``_parameter_names`` and ``_buffer_names`` (torch's
    order: parameters, then buffers); an attribute set to ``None`` is registered but
    absent, as in torch (``affine=False``, ``track_running_stats=False``), and is left out
    of ``state_dict``.  ``_state_shape(name)`` gives each entry's expected shape.
    """

    _parameter_names = ()
    _buffer_names = ()
    # Constructor arguments read from a torch module by from_torch (attribute names).
    _torch_arguments = ()

    def __init__(self, dtype, allowed_dtypes=_ALL_DTYPES):
        self.training = True
        self.dtype = _layer_dtype(dtype, allowed_dtypes, type(self).__name__)

    # -- calling ----------------------------------------------------------------------

    def __call__(self, x, **kwargs):
        # without keywords, no dict to unpack: 0.1 us of a 0.8 us LayerNorm call on 1x768
        return self.forward(x, **kwargs) if kwargs else self.forward(x)

    def forward(self, x):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    # -- mode -------------------------------------------------------------------------

    def train(self, mode=True):
        """Set training mode (``mode=False``: evaluation mode); returns the layer."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be a bool, got {mode!r}")
        self.training = mode
        return self

    def eval(self):
        """Evaluation mode, i.e. ``train(False)``; returns the layer."""
        return self.train(False)

    # -- state ------------------------------------------------------------------------

    def named_parameters(self):
        """(name, array) for each parameter present (not None), torch's order."""
        return ((n, getattr(self, n)) for n in self._parameter_names if getattr(self, n) is not None)

    def parameters(self):
        return (a for _, a in self.named_parameters())

    def named_buffers(self):
        return ((n, getattr(self, n)) for n in self._buffer_names if getattr(self, n) is not None)

    def buffers(self):
        return (a for _, a in self.named_buffers())

    def _state_shape(self, name):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _state_dtype(self, name):
        return _INT64 if name == "num_batches_tracked" else self.dtype

    def state_dict(self, *, prefix=""):
        """Parameters and buffers under torch's keys (``prefix`` prepended), as copies:
        changing the returned arrays does not change the layer."""
        state = {}
        for name, value in (*self.named_parameters(), *self.named_buffers()):
            state[prefix + name] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True, *, prefix=""):
        """Copy parameters and buffers in from ``state_dict`` (NumPy arrays, torch tensors
        or anything with ``__array__``), cast to the layer's dtype.

        Only keys starting with ``prefix`` are considered (with it removed), so one layer
        can be loaded from a whole model's state dict, e.g. ``prefix="encoder.norm."``.
        Errors raise ``RuntimeError`` like torch's, listing every problem, and nothing is
        written: with ``strict=True`` missing and unexpected keys, always wrong shapes and
        non-numeric values.  Returns ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, collections.abc.Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        own = [n for n, _ in (*self.named_parameters(), *self.named_buffers())]
        given = {k[len(prefix):]: v for k, v in state_dict.items()
                 if isinstance(k, str) and k.startswith(prefix)}
        missing = [prefix + n for n in own if n not in given]
        unexpected = [prefix + k for k in given if k not in own]

        errors = []
        if strict:
            if missing:
                errors.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
            if unexpected:
                errors.append("Unexpected key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in unexpected))
        values = {}
        for name in own:
            if name in given:
                value, problem = self._loadable(name, given[name])
                if problem:
                    errors.append(f"{prefix}{name}: {problem}")
                else:
                    values[name] = value
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors))

        for name, value in values.items():  # everything checked: now write
            current = getattr(self, name)
            if (isinstance(current, np.ndarray) and current.shape == value.shape
                    and current.dtype == self._state_dtype(name) and current.flags.writeable):
                np.copyto(current, value, casting="unsafe")  # in place, as torch's copy_
            else:
                setattr(self, name, value.astype(self._state_dtype(name), copy=True))
        return IncompatibleKeys(missing, unexpected)

    def _loadable(self, name, value):
        """(array, None) when value can be loaded as `name`, else (None, what is wrong)."""
        if value is None:
            return None, "got None, expected an array"
        try:
            array = _to_numpy(value)
        except Exception as error:  # noqa: BLE001 - any conversion failure is reported
            return None, f"cannot be converted to a NumPy array ({error})"
        want_shape = self._state_shape(name)
        if array.shape != want_shape:
            return None, (f"size mismatch: copying an array of shape {array.shape} from the "
                          f"state dict, the shape in this layer is {want_shape}")
        kinds = "iu" if name == "num_batches_tracked" else "biuf"
        if array.dtype.kind not in kinds and not _checks.is_bfloat16(array.dtype):
            expected = "an integer" if kinds == "iu" else "a numeric"
            return None, f"has dtype {array.dtype}, expected {expected} array"
        if name == "num_batches_tracked" and _checks.is_bfloat16(array.dtype):
            return None, f"has dtype {array.dtype}, expected an integer array"
        return array, None

    # -- torch interop ----------------------------------------------------------------

    @classmethod
    def from_torch(cls, module, *, dtype=None, **options):
        """Build this layer from a torch module (or anything with the same attributes):
        the constructor arguments, parameters, buffers and training flag are copied.

        ``dtype=None`` keeps the module's float32/float64 (or, where this layer allows it,
        float16/bfloat16) dtype and falls back to float32 otherwise.  ``options`` are
        further constructor arguments, e.g. ``channels_last=True`` for BatchNorm.
        """
        _check_torch_class(cls, module)
        kwargs = {}
        for attribute in cls._torch_arguments:
            if not hasattr(module, attribute):
                raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{cls.__name__}-like "
                                f"module with attribute {attribute!r}; "
                                f"{type(module).__name__} has none")
            kwargs[attribute] = getattr(module, attribute)
        kwargs.update(cls._torch_extra_arguments(module))
        state = {}
        for name in (*cls._parameter_names, *cls._buffer_names):
            tensor = getattr(module, name, None)
            if tensor is not None:
                state[name] = _to_numpy(tensor)
        if dtype is None:
            dtype = _checks.FLOAT32
            floats = [a.dtype for a in state.values() if _dtype_in(a.dtype, _ALL_DTYPES)]
            if floats and _dtype_in(floats[0], cls._allowed_dtypes()):
                dtype = floats[0]
        layer = cls(**kwargs, dtype=dtype, **options)
        layer.load_state_dict(state)
        return layer.train(bool(getattr(module, "training", True)))

    @classmethod
    def _torch_extra_arguments(cls, module):
        """Constructor arguments that need more than copying one attribute."""
        return {}

    @classmethod
    def _allowed_dtypes(cls):
        return _ALL_DTYPES

    # -- repr -------------------------------------------------------------------------

    def extra_repr(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __repr__(self):
        extra = self.extra_repr()
        if self.dtype != _checks.FLOAT32:  # torch keeps dtype out of repr; ours defaults to float32
            extra += f", dtype={self.dtype}"
        return f"{type(self).__name__}({extra})"


def _check_torch_class(cls, module):
    """TypeError when module is visibly another kind of torch norm layer (by class names
    in its MRO, so subclasses and look-alikes still pass)."""
    names = {klass.__name__ for klass in type(module).__mro__}
    ours = names & set(__all__)
    if ours and cls.__name__ not in ours:
        raise TypeError(f"{cls.__name__}.from_torch got a {type(module).__name__}; "
                        f"use fastnorm.{sorted(ours)[0]}.from_torch for it")


# ---- LayerNorm and RMSNorm ----------------------------------------------------------


class _RowNorm(NormLayer):
    """What LayerNorm and RMSNorm share: normalized_shape (passed as it is: the one-step
    path takes a 1-tuple equal to the last dimension, 0.2 us sooner than a check here)."""

    def _state_shape(self, name):
        return self.normalized_shape

    @classmethod
    def _torch_extra_arguments(cls, module):
        return {"normalized_shape": tuple(module.normalized_shape)}


class LayerNorm(_RowNorm):
    """``torch.nn.LayerNorm`` on NumPy arrays: normalizes the trailing ``normalized_shape``
    dimensions, then ``* weight + bias``.  ``layer(x, residual=r)`` fuses a residual add."""

    _parameter_names = ("weight", "bias")
    _torch_arguments = ("eps", "elementwise_affine")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        affine = self.elementwise_affine
        self.weight = np.ones(self.normalized_shape, self.dtype) if affine else None
        self.bias = np.zeros(self.normalized_shape, self.dtype) if affine and bias else None

    @classmethod
    def _torch_extra_arguments(cls, module):
        return {**super()._torch_extra_arguments(module),
                "bias": getattr(module, "bias", None) is not None or not module.elementwise_affine}

    def reset_parameters(self):
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    def forward(self, x, *, residual=None, residual_out=None, out=None, return_stats=False):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                          residual=residual, residual_out=residual_out, out=out,
                          return_stats=return_stats)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class RMSNorm(_RowNorm):
    """``torch.nn.RMSNorm`` on NumPy arrays: ``x / sqrt(mean(x**2) + eps) * weight`` over
    the trailing ``normalized_shape`` dimensions; ``eps=None`` is the machine epsilon of
    the computation dtype."""

    _parameter_names = ("weight",)
    _torch_arguments = ("eps", "elementwise_affine")

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = _check_eps(eps, allow_none=True)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(self.normalized_shape, self.dtype) if self.elementwise_affine else None

    def reset_parameters(self):
        if self.weight is not None:
            self.weight[...] = 1

    def forward(self, x, *, residual=None, residual_out=None, out=None, return_stats=False):
        return rms_norm(x, self.normalized_shape, self.weight, self.eps,
                        residual=residual, residual_out=residual_out, out=out,
                        return_stats=return_stats)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


# ---- per-channel layers: BatchNorm, InstanceNorm, GroupNorm -------------------------


class _ChannelNorm(NormLayer):
    """What BatchNorm and InstanceNorm share (torch's _NormBase): num_features, per-channel
    weight/bias, optional running statistics."""

    _parameter_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    _torch_arguments = ("num_features", "eps", "momentum", "affine", "track_running_stats")

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, dtype, bias):
        super().__init__(dtype, _STAT_DTYPES)
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = _check_eps(eps)
        self.momentum = _check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        c, dt = self.num_features, self.dtype
        self.weight = np.ones(c, dt) if self.affine else None
        self.bias = np.zeros(c, dt) if self.affine and bias else None
        if self.track_running_stats:
            self.running_mean = np.zeros(c, dt)
            self.running_var = np.ones(c, dt)
            self.num_batches_tracked = np.zeros((), _INT64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    @classmethod
    def _allowed_dtypes(cls):
        return _STAT_DTYPES

    @classmethod
    def _torch_extra_arguments(cls, module):
        return {"bias": getattr(module, "bias", None) is not None or not module.affine}

    def _state_shape(self, name):
        return () if name == "num_batches_tracked" else (self.num_features,)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    def _has_per_channel_state(self):
        return self.affine or self.track_running_stats

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class _BatchNorm(_ChannelNorm):
    """torch's _BatchNorm: batch statistics in training (updating the running ones),
    running statistics in evaluation when they are tracked."""

    _ranks = ()  # accepted x.ndim values, per subclass
    _rank_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, channels_last=False, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias)
        self.channels_last = bool(channels_last)

    def forward(self, x, *, out=None, return_stats=False):
        x = _checks.as_array(x)
        if x.ndim not in self._ranks:
            layout = "(N, ..., C)" if self.channels_last else "(N, C, ...)"
            raise ValueError(f"{type(self).__name__} expects {self._rank_text} input {layout}, "
                             f"got {x.ndim}D input of shape {x.shape}")
        axis = -1 if self.channels_last else 1
        if self._has_per_channel_state() and x.shape[axis] != self.num_features:
            raise ValueError(f"{type(self).__name__} has {self.num_features} channels, got "
                             f"{x.shape[axis]} on axis {axis} of x (shape {x.shape})")

        running_mean, running_var = self.running_mean, self.running_var
        if not self.training and running_mean is None and x.size == 0:
            # eval of an empty batch gives an empty result (API.md, and torch), also without
            # running statistics; the statistics of no values are NaN
            running_mean = running_var = np.full(x.shape[axis], np.nan)
        update = self.training and self.track_running_stats
        use_batch_stats = self.training or running_mean is None
        momentum = 0.0
        if update:
            tracked = int(self.num_batches_tracked) + 1  # torch counts this batch first
            momentum = 1.0 / tracked if self.momentum is None else self.momentum
        running = update or not use_batch_stats
        result = batch_norm(x, running_mean if running else None,
                            running_var if running else None, self.weight, self.bias,
                            training=use_batch_stats, momentum=momentum, eps=self.eps,
                            axis=axis, out=out, return_stats=return_stats)
        if update:  # only after success, so a refused batch is not counted
            self.num_batches_tracked[...] = tracked
        return result

    def extra_repr(self):
        extra = super().extra_repr()
        return extra + ", channels_last=True" if self.channels_last else extra


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d``: input ``(N, C)`` or ``(N, C, L)`` (``(N, L, C)`` with
    ``channels_last=True``)."""
    _ranks = (2, 3)
    _rank_text = "2D or 3D"


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d``: input ``(N, C, H, W)`` (``(N, H, W, C)`` with
    ``channels_last=True``)."""
    _ranks = (4,)
    _rank_text = "4D"


class BatchNorm3d(_BatchNorm):
    """``torch.nn.BatchNorm3d``: input ``(N, C, D, H, W)`` (``(N, D, H, W, C)`` with
    ``channels_last=True``)."""
    _ranks = (5,)
    _rank_text = "5D"


class _InstanceNorm(_ChannelNorm):
    """torch's _InstanceNorm: statistics per (sample, channel) over the spatial axes.

    With ``track_running_stats=True`` training also updates running statistics with the
    per-instance ones averaged over the batch, and evaluation uses them; ``momentum=None``
    then means 0 (no update), as in torch.  Unbatched input (no N axis) is accepted.
    """

    _spatial_dims = 0  # per subclass

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, dtype=np.float32, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias)

    def forward(self, x):
        x = _checks.as_array(x)
        unbatched = self._spatial_dims + 1
        if x.ndim not in (unbatched, unbatched + 1):
            raise ValueError(f"{type(self).__name__} expects {unbatched}D (unbatched) or "
                             f"{unbatched + 1}D input (N, C, ...), got {x.ndim}D input of "
                             f"shape {x.shape}")
        channel_axis = x.ndim - unbatched
        if self._has_per_channel_state() and x.shape[channel_axis] != self.num_features:
            raise ValueError(f"{type(self).__name__} has {self.num_features} channels, got "
                             f"{x.shape[channel_axis]} on axis {channel_axis} of x "
                             f"(shape {x.shape})")
        if x.ndim == unbatched:
            return self._forward_batched(x[np.newaxis])[0]
        return self._forward_batched(x)

    def _forward_batched(self, x):
        if (self.training or not self.track_running_stats) and math.prod(x.shape[2:]) == 1:
            # A single value per instance normalizes to 0 whatever it is; torch refuses it.
            raise ValueError(f"{type(self).__name__} needs more than 1 spatial element per "
                             f"instance to use input statistics, got x of shape {x.shape}")
        if not self.track_running_stats:
            return instance_norm(x, self.weight, self.bias, self.eps)
        if not self.training:
            return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                              training=False, eps=self.eps)
        # Training with running statistics, torch's way: a batch_norm over N*C "channels"
        # (one per instance) with the running statistics repeated N times, averaged after.
        n, c = x.shape[:2]
        if n == 0:
            raise ValueError(f"{type(self).__name__} training needs a non-empty batch, "
                             f"got x of shape {x.shape}")
        tile = (lambda a: None if a is None else np.tile(a, n))
        running_mean, running_var = tile(self.running_mean), tile(self.running_var)
        y = batch_norm(x.reshape(1, n * c, math.prod(x.shape[2:])), running_mean, running_var, tile(self.weight),
                       tile(self.bias), training=True,
                       momentum=0.0 if self.momentum is None else self.momentum, eps=self.eps)
        self.running_mean[...] = running_mean.reshape(n, c).mean(axis=0)
        self.running_var[...] = running_var.reshape(n, c).mean(axis=0)
        return y.reshape(x.shape)


class InstanceNorm1d(_InstanceNorm):
    """``torch.nn.InstanceNorm1d``: input ``(N, C, L)`` or ``(C, L)``."""
    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    """``torch.nn.InstanceNorm2d``: input ``(N, C, H, W)`` or ``(C, H, W)``."""
    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    """``torch.nn.InstanceNorm3d``: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``."""
    _spatial_dims = 3


class GroupNorm(NormLayer):
    """``torch.nn.GroupNorm``: statistics per (sample, group of ``num_channels //
    num_groups`` channels) of ``(N, C, ...)`` input, then per-channel weight and bias.
    Batch statistics in training and evaluation alike."""

    _parameter_names = ("weight", "bias")
    _torch_arguments = ("num_groups", "num_channels", "eps", "affine")

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32, *,
                 bias=True):
        super().__init__(dtype)
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.num_channels = _positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.eps = _check_eps(eps)
        self.affine = bool(affine)
        self.weight = np.ones(self.num_channels, self.dtype) if self.affine else None
        self.bias = np.zeros(self.num_channels, self.dtype) if self.affine and bias else None

    @classmethod
    def _torch_extra_arguments(cls, module):
        return {"bias": getattr(module, "bias", None) is not None or not module.affine}

    def _state_shape(self, name):
        return (self.num_channels,)

    def reset_parameters(self):
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    def forward(self, x):
        x = _checks.as_array(x)
        if self.affine and x.ndim >= 2 and x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm has {self.num_channels} channels, got {x.shape[1]} "
                             f"on axis 1 of x (shape {x.shape})")
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}")

