# Stubs for fastnorm._core (fastnorm/_core.pyx): the thin glue over include/fastnorm/fastnorm.h.
# Arrays are C-contiguous NumPy arrays (float16/bfloat16 data as uint16 views); optional
# ones may be None.  Sizes are in elements.
from typing import Optional

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[np.generic]

LAYER_NORM: int
RMS_NORM: int
F32: int
F64: int
F16: int
BF16: int
OUTPUT_CACHE_MIN_BYTES: int

def set_output_cache_limit(limit: int) -> None: ...
def output_cache_state() -> tuple[int, int]: ...
def empty(shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> _Array: ...

def norm(
    kind: int,
    dtype: int,
    outer: int,
    middle: int,
    inner: int,
    x: _Array,
    residual: Optional[_Array],
    residual_out: Optional[_Array],
    y: _Array,
    weight: Optional[_Array],
    bias: Optional[_Array],
    eps: float,
    mean_out: Optional[_Array],
    rstd_out: Optional[_Array],
    n_threads: int,
) -> None: ...
def rows(
    kind: int,
    x: object,
    normalized_shape: object,
    weight: object,
    bias: object,
    eps: Optional[float],
    out: object,
    n_threads: int,
) -> Optional[_Array]: ...
def moments(
    dtype: int,
    outer: int,
    channels: int,
    inner: int,
    x: _Array,
    mean_out: _Array,
    m2_out: _Array,
    n_threads: int,
) -> None: ...
def affine(
    dtype: int,
    outer: int,
    channels: int,
    inner: int,
    x: _Array,
    y: _Array,
    mean: Optional[_Array],
    var: _Array,
    weight: Optional[_Array],
    bias: Optional[_Array],
    eps: float,
    n_threads: int,
) -> None: ...
def batch_norm_train(
    dtype: int,
    outer: int,
    channels: int,
    inner: int,
    x: _Array,
    y: _Array,
    weight: Optional[_Array],
    bias: Optional[_Array],
    eps: float,
    mean_out: _Array,
    var_out: _Array,
    n_threads: int,
) -> None: ...
def update_running(
    running_dtype: int,
    running_mean: _Array,
    running_var: _Array,
    mean: _Array,
    var: _Array,
    count: int,
    momentum: float,
) -> None: ...
def norm_backward(
    kind: int,
    dtype: int,
    outer: int,
    middle: int,
    inner: int,
    grad_y: _Array,
    x: _Array,
    mean: Optional[_Array],
    rstd: _Array,
    weight: Optional[_Array],
    grad_x: _Array,
    grad_weight: Optional[_Array],
    grad_bias: Optional[_Array],
    n_threads: int,
) -> None: ...
def rows_backward(
    kind: int,
    grad_y: object,
    x: object,
    mean: object,
    rstd: object,
    weight: object,
    n_threads: int,
) -> Optional[tuple[_Array, Optional[_Array], Optional[_Array]]]: ...
def batch_norm_backward(
    dtype: int,
    outer: int,
    channels: int,
    inner: int,
    grad_y: _Array,
    x: _Array,
    mean: _Array,
    rstd: _Array,
    weight: Optional[_Array],
    grad_x: _Array,
    grad_weight: Optional[_Array],
    grad_bias: Optional[_Array],
    n_threads: int,
) -> None: ...
def batch_norm(
    x: object,
    running_mean: object,
    running_var: object,
    weight: object,
    bias: object,
    training: bool,
    momentum: object,
    eps: object,
    axis: object,
    out: object,
    n_threads: int,
) -> Optional[_Array]: ...
def group_norm(
    dtype: int,
    n: int,
    channels: int,
    groups: int,
    spatial: int,
    x: _Array,
    y: _Array,
    weight: Optional[_Array],
    bias: Optional[_Array],
    eps: float,
    n_threads: int,
) -> None: ...
def group_norm_common(
    x: object,
    num_groups: object,
    weight: object,
    bias: object,
    eps: object,
    n_threads: int,
) -> Optional[_Array]: ...
def copy(src: _Array, dst: _Array, n_threads: int) -> None: ...
def stream_min_bytes() -> int: ...
def isa_compiled() -> list[str]: ...
def isa_supported() -> list[str]: ...
def best_isa() -> str: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...
def get_tuning() -> str: ...
def set_tuning(name: str) -> None: ...
def avx512_bf16_supported() -> bool: ...
def avx512_bf16_enabled() -> bool: ...
def set_avx512_bf16(enabled: bool) -> None: ...
def openmp_enabled() -> bool: ...
def default_threads() -> int: ...
def thread_limit() -> int: ...
