"""fastnorm: LayerNorm, RMSNorm, BatchNorm and GroupNorm on NumPy arrays, with SIMD C
kernels (scalar, AVX2, AVX-512, chosen at run time) behind a NumPy-style API.

Every function accepts any NumPy-compatible input and layout; ``fastnorm.reference`` holds
plain float64 NumPy implementations of every function to check results against.
"""

__version__ = "0.1.0"

from ._backward import batch_norm_backward, layer_norm_backward, rms_norm_backward
from ._config import get_config, get_num_threads, set_num_threads, show_config
from ._functional import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from ._moments import merge_moments, moments
from . import reference  # fastnorm.reference.<function>: the float64 NumPy oracles

from ._layers import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
)

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
    "get_config",
    "show_config",
    "set_num_threads",
    "get_num_threads",
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
