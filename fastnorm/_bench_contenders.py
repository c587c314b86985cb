"""What ``python -m fastnorm bench`` and ``benchmarks/`` time: one benchmark case and the
contenders that compute it.

A ``Case`` is an operation on one shape, dtype and layout.  ``build_contenders`` makes its
inputs once and returns zero-argument callables, all computing the same thing:

- ``fastnorm``: the public function, with the weights a layer would hold (compute dtype);
- ``copy``: a memory copy of the same bytes: ``np.copyto(out, x)`` when fastnorm writes
  into a preallocated ``out=``, ``x.copy()`` when it allocates (then both allocate their
  output, from the same allocator: see ``bench.steady_allocator``); the floor a
  one-read-one-write operation cannot beat;
- ``numpy``: the formula a user would write, in the input's dtype (bfloat16, which NumPy
  only emulates element by element, is upcast to float32 and back, as users do);
- ``torch`` / ``onnxruntime``: PyTorch's functional ops on ``torch.from_numpy`` views and a
  one-node ONNX model, when installed;
- ``group_norm`` (32 groups where they divide C, else gcd(C, 32)) has no ``out=``: its copy
  is ``x.copy(order="K")`` with or without ``--out``;
- with ``residual=True`` (the pre-norm transformer block ``h = x + r; y = norm(h)``):
  fastnorm's fused call writing ``h`` to ``residual_out`` and ``y``, against ``unfused``
  (``np.add`` then fastnorm), NumPy and PyTorch on ``x + r``, and two copies.

Threaded contenders (fastnorm, torch, onnxruntime) appear once per thread count;
``prepare`` sets the thread count and is run, untimed, before each sample.
"""

import dataclasses
import functools
import math
from typing import Callable, Optional, Tuple

import numpy as np

import fastnorm

from . import _bench_onnx

ROW_OPS = ("layer_norm", "rms_norm")
BATCH_NORM_OPS = ("batch_norm_eval", "batch_norm_train")
GROUP_NORM_OPS = ("group_norm",)
OPS = ROW_OPS + BATCH_NORM_OPS + GROUP_NORM_OPS
GROUPS = 32  # GroupNorm's usual group count
PEERS = ("numpy", "copy", "torch", "onnxruntime")
DTYPES = ("float32", "float64", "float16", "bfloat16")
EPS = 1e-5
MOMENTUM = 0.1


@dataclasses.dataclass(frozen=True)
class Case:
    """op on x of `shape` (rows: (rows, cols); batch norm and group norm: the logical
    (N, C, H, W), stored as (N, H, W, C) when layout is "nhwc", and when it is
    "channels_last", where fastnorm and NumPy get the (N, C, H, W) view of that memory, as
    NumPy sees a PyTorch channels_last tensor; group norm, which takes (N, C, ...) only, has
    "nchw" and "channels_last")."""

    op: str
    shape: Tuple[int, ...]
    dtype: str
    layout: str = "rows"  # "rows" for layer_norm / rms_norm, else a 4-D layout
    residual: bool = False

    @property
    def label(self):
        name = self.op + ("+residual" if self.residual else "")
        return name if self.layout == "rows" else f"{name} {self.layout}"

    @property
    def shape_text(self):
        return "x".join(map(str, self.shape))

    @property
    def storage_shape(self):
        if self.layout in ("nhwc", "channels_last"):
            n, c, *spatial = self.shape
            return (n, *spatial, c)
        return self.shape

    @property
    def rows(self):
        """Number of normalized groups of a row op (for ns/row)."""
        return int(np.prod(self.shape[:-1])) if self.layout == "rows" else None


@dataclasses.dataclass
class Contender:
    name: str  # "fastnorm", "copy", "numpy", "torch", "onnxruntime", "unfused"
    threads: int  # 1 for the single-threaded copy and NumPy
    call: Callable[[], object]
    prepare: Optional[Callable[[], None]] = None

    @property
    def key(self):
        return f"{self.name}@{self.threads}"


def numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def compute_dtype(name):
    return np.dtype(np.float64 if name == "float64" else np.float32)


def row_eps(case):
    """LayerNorm's 1e-5; RMSNorm's default, the compute dtype's machine epsilon."""
    return EPS if case.op == "layer_norm" else float(np.finfo(compute_dtype(case.dtype)).eps)


def num_groups(case):
    """The groups of a group_norm case: GROUPS where they divide C, else gcd(C, GROUPS)."""
    return math.gcd(case.shape[1], GROUPS)


def channel_axis(case):
    return -1 if case.layout == "nhwc" else 1


def bytes_moved(case):
    """Bytes one call must read and write at least: x in and y out (and r in, h out with the
    residual), i.e. what the copy baseline moves.  GB/s figures use this count."""
    itemsize = numpy_dtype(case.dtype).itemsize
    arrays = 4 if case.residual else 2
    return arrays * itemsize * int(np.prod(case.shape))


PAGE = 4096


def empty_apart(like, page_offset):
    """An uninitialised array with `like`'s shape, dtype and memory layout, placed so that
    its address is `page_offset` bytes past `like`'s modulo a 4 KB page (so it keeps
    `like`'s offset into a cache line when page_offset is a multiple of 64).

    Why: a load whose address matches a pending store's in the low 12 bits waits for that
    store (4K aliasing), so where malloc happens to put an output 16 bytes past the input
    modulo 4 KB, every read of x follows a write just before it in those bits.  Seen here:
    np.copyto of 64x768 float32 took 70 us instead of 5.5 us whenever the PyTorch or ONNX
    Runtime imports had left the heap in that state, which made fastnorm look 8x faster
    than a copy.  Apart by a fraction of a page, no contender pays for where malloc put
    the arrays."""
    nbytes = like.size * like.itemsize
    buffer = np.empty(nbytes + PAGE, dtype=np.uint8)
    offset = (like.ctypes.data + page_offset - buffer.ctypes.data) % PAGE
    return np.ndarray(like.shape, like.dtype, buffer, offset, like.strides)


class _Inputs:
    """The arrays of one case, made once and shared by every contender: the inputs where
    NumPy puts them, the outputs (and the residual) a fraction of a page apart from x
    (empty_apart)."""

    def __init__(self, case, seed=0):
        rng = np.random.default_rng(seed)
        self.case = case
        self.dtype = numpy_dtype(case.dtype)
        self.compute = compute_dtype(case.dtype)
        size = case.storage_shape

        def normal(shape, dtype):
            return rng.standard_normal(shape, dtype=np.float32).astype(dtype)

        self.x = normal(size, self.dtype)
        if case.layout == "channels_last":
            self.x = np.moveaxis(self.x, -1, 1)  # (N, C, H, W), NHWC memory
        self.r = None
        if case.residual:  # rows only: x's layout is plain
            self.r = empty_apart(self.x, PAGE // 4)
            self.r[...] = normal(size, self.dtype)
        channels = case.shape[-1] if case.layout == "rows" else case.shape[1]
        self.w = 1.0 + 0.1 * normal(channels, self.compute)
        self.b = 0.1 * normal(channels, self.compute)
        self.running_mean = 0.1 * normal(channels, self.compute)
        self.running_var = 1.0 + np.abs(normal(channels, self.compute))
        self.out = empty_apart(self.x, PAGE // 2)  # x's layout
        self.h_out = empty_apart(self.x, 3 * PAGE // 4) if case.residual else None


# ---- fastnorm ----------------------------------------------------------------------------


def _fastnorm_call(inp, use_out):
    case, out = inp.case, ({"out": inp.out} if use_out else {})
    if case.op in ROW_OPS:
        fn = getattr(fastnorm, case.op)
        params = (inp.w, inp.b) if case.op == "layer_norm" else (inp.w,)
        if case.residual:
            out = dict(out, residual=inp.r, residual_out=inp.h_out)
        return functools.partial(fn, inp.x, None, *params, row_eps(case), **out)
    if case.op == "group_norm":
        return functools.partial(fastnorm.group_norm, inp.x, num_groups(case), inp.w, inp.b, EPS)
    training = case.op == "batch_norm_train"
    return functools.partial(
        fastnorm.batch_norm, inp.x, inp.running_mean, inp.running_var, inp.w, inp.b,
        training, MOMENTUM, EPS, axis=channel_axis(case), **out,
    )


def _unfused_call(inp, use_out):
    """NumPy's add then fastnorm: what the fused residual form replaces."""
    case = inp.case
    fn = getattr(fastnorm, case.op)
    params = (inp.w, inp.b) if case.op == "layer_norm" else (inp.w,)
    eps = row_eps(case)
    if use_out:

        def unfused():
            np.add(inp.x, inp.r, out=inp.h_out)
            return fn(inp.h_out, None, *params, eps, out=inp.out)

    else:

        def unfused():
            return fn(inp.x + inp.r, None, *params, eps)

    return unfused


# ---- memory copy -------------------------------------------------------------------------


def _copy_call(inp, use_out):
    if not inp.case.residual:
        # order="K": the same bytes in the same layout, also for a channels_last view
        return functools.partial(np.copyto, inp.out, inp.x) if use_out else functools.partial(
            inp.x.copy, order="K")
    # Two arrays in (x, r) and two out (h, y): two copies.
    if use_out:

        def copy_two():
            np.copyto(inp.h_out, inp.x)
            np.copyto(inp.out, inp.r)

    else:

        def copy_two():
            return inp.x.copy(), inp.r.copy()

    return copy_two


# ---- the NumPy formulas a user would write -----------------------------------------------


def _numpy_call(inp):
    case = inp.case
    upcast = case.dtype == "bfloat16"  # NumPy has no native bfloat16 arithmetic
    work = np.dtype(np.float32) if upcast else inp.dtype
    x = inp.x.astype(work) if upcast else inp.x
    r = None if inp.r is None else (inp.r.astype(work) if upcast else inp.r)
    w, b = inp.w.astype(work), inp.b.astype(work)
    if case.op in ROW_OPS:
        formula = _numpy_layer_norm if case.op == "layer_norm" else _numpy_rms_norm
        eps = row_eps(case)

        def numpy_row_norm():
            h = x if r is None else x + r
            y = formula(h, w, b, eps)
            return y.astype(inp.dtype) if upcast else y

        return numpy_row_norm
    if case.op == "group_norm":
        return _numpy_group_norm(inp, x, w, b, upcast)
    if case.layout != "nhwc":  # per-channel parameters broadcast over (N, C, H, W)
        reduce_axes, per_channel = (0, 2, 3), (slice(None), None, None)
    else:
        reduce_axes, per_channel = (0, 1, 2), (slice(None),)
    rm, rv = inp.running_mean.astype(work), inp.running_var.astype(work)
    wc, bc = w[per_channel], b[per_channel]
    if case.op == "batch_norm_eval":

        def numpy_batch_norm_eval():
            y = (x - rm[per_channel]) / np.sqrt(rv[per_channel] + EPS) * wc + bc
            return y.astype(inp.dtype) if upcast else y

        return numpy_batch_norm_eval
    n = x.size // x.shape[channel_axis(case)]

    def numpy_batch_norm_train():
        mean = x.mean(reduce_axes, keepdims=True)
        var = x.var(reduce_axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + EPS) * wc + bc
        rm[...] = (1 - MOMENTUM) * rm + MOMENTUM * mean.ravel()
        rv[...] = (1 - MOMENTUM) * rv + MOMENTUM * var.ravel() * (n / (n - 1))
        return y.astype(inp.dtype) if upcast else y

    return numpy_batch_norm_train


def _numpy_group_norm(inp, x, w, b, upcast):
    n, groups, per_channel = x.shape[0], num_groups(inp.case), (slice(None), None, None)

    def numpy_group_norm():
        g = x.reshape(n, groups, -1)
        g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + EPS)
        y = g.reshape(x.shape) * w[per_channel] + b[per_channel]
        return y.astype(inp.dtype) if upcast else y

    return numpy_group_norm


def _numpy_layer_norm(x, w, b, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def _numpy_rms_norm(x, w, b, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


# ---- PyTorch -----------------------------------------------------------------------------


def _torch_tensor(torch, array):
    if array.dtype.name == "bfloat16":  # torch.from_numpy does not know ml_dtypes
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _torch_call(inp):
    import torch
    import torch.nn.functional as F

    case = inp.case

    def tensor(a, dtype=inp.dtype):  # parameters in the input's dtype, as a model holds them
        return _torch_tensor(torch, np.ascontiguousarray(a.astype(dtype, copy=False)))

    x, w, b = tensor(inp.x), tensor(inp.w), tensor(inp.b)
    if case.op in ROW_OPS:
        eps, cols = row_eps(case), (case.shape[-1],)
        if case.residual:
            r = tensor(inp.r)
            if case.op == "layer_norm":
                return lambda: F.layer_norm(x + r, cols, w, b, eps)
            return lambda: F.rms_norm(x + r, cols, w, eps)
        if case.op == "layer_norm":
            return functools.partial(F.layer_norm, x, cols, w, b, eps)
        return functools.partial(F.rms_norm, x, cols, w, eps)
    if case.layout == "nhwc":  # a channels_last tensor: same (N, C, H, W) view, NHWC memory
        x = x.permute(0, 3, 1, 2)
    elif case.layout == "channels_last":  # from_numpy of the view keeps its strides
        x = _torch_tensor(torch, inp.x)
    if case.op == "group_norm":
        return functools.partial(F.group_norm, x, num_groups(case), w, b, EPS)
    rm, rv = tensor(inp.running_mean), tensor(inp.running_var)
    training = case.op == "batch_norm_train"
    return functools.partial(F.batch_norm, x, rm, rv, w, b, training, MOMENTUM, EPS)


def _torch_threads(n):
    import torch

    return functools.partial(torch.set_num_threads, n)


# ---- ONNX Runtime ------------------------------------------------------------------------


def onnxruntime_skip_reason(case):
    """Why ONNX Runtime has no contender for this case, or None."""
    if case.residual:
        return "no residual form in the standard ONNX operators"
    if case.layout in ("nhwc", "channels_last"):
        return "ONNX BatchNormalization and GroupNormalization are channels-first only"
    if case.dtype == "bfloat16":
        return "onnxruntime's Python API takes no ml_dtypes bfloat16 arrays"
    return None


def _onnx_model(inp):
    case, d = inp.case, inp.case.dtype
    param = inp.dtype  # ONNX wants the parameters in the input's dtype
    if case.op == "layer_norm":
        params = [("w", inp.w.astype(param), d), ("b", inp.b.astype(param), d)]
        return "LayerNormalization", params, {"axis": -1, "epsilon": row_eps(case)}, ("y",)
    if case.op == "rms_norm":
        params = [("w", inp.w.astype(param), d)]
        return "RMSNormalization", params, {"axis": -1, "epsilon": row_eps(case)}, ("y",)
    if case.op == "group_norm":  # opset 21: a scale and bias per channel
        params = [("scale", inp.w.astype(param), d), ("bias", inp.b.astype(param), d)]
        return "GroupNormalization", params, {"num_groups": num_groups(case), "epsilon": EPS}, ("y",)
    stats = [(name, a.astype(param), d) for name, a in
             (("scale", inp.w), ("B", inp.b), ("mean", inp.running_mean), ("var", inp.running_var))]
    training = int(case.op == "batch_norm_train")
    attributes = {"epsilon": EPS, "momentum": 1.0 - MOMENTUM, "training_mode": training}
    outputs = ("y", "running_mean_out", "running_var_out") if training else ("y",)
    return "BatchNormalization", stats, attributes, outputs


def _onnxruntime_call(inp, threads, use_out):
    """A session with `threads` intra-op threads.  With use_out, run_with_iobinding writes
    y into a preallocated array (as fastnorm's out=); otherwise session.run allocates it
    (as fastnorm does without out=).  Spinning is off: idle ORT workers otherwise spin for
    tens of milliseconds after each run and steal the cores from whichever contender is
    timed next (it was also faster here with spinning off)."""
    import onnxruntime as ort

    op_type, params, attributes, outputs = _onnx_model(inp)
    model = _bench_onnx.model_bytes(op_type, inp.x.shape, inp.case.dtype, params, attributes, outputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    if not use_out:
        return functools.partial(session.run, ["y"], {"x": inp.x})
    y = empty_apart(inp.x, PAGE // 2)
    binding = session.io_binding()
    binding.bind_cpu_input("x", inp.x)
    binding.bind_output("y", "cpu", 0, inp.dtype, y.shape, y.ctypes.data)
    run = functools.partial(session.run_with_iobinding, binding)
    run._keep_alive = (y, inp.x)  # the binding holds raw pointers to these arrays
    return run


# ---- assembling a case -------------------------------------------------------------------


def peer_available(name):
    """Whether a peer library can be imported (numpy and copy always can)."""
    if name in ("numpy", "copy"):
        return True
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def build_contenders(case, threads, peers, use_out):
    """The contenders of `case`: fastnorm and each threaded peer once per thread count in
    `threads`; copy and numpy once (they are single-threaded).  `peers` must be importable
    (see peer_available); ONNX Runtime is left out where onnxruntime_skip_reason says so."""
    inp = _Inputs(case)
    use_out = use_out and case.op not in GROUP_NORM_OPS  # no out= in group_norm
    set_fastnorm_threads = lambda n: functools.partial(fastnorm.set_num_threads, n)  # noqa: E731
    contenders = []
    if "copy" in peers:
        contenders.append(Contender("copy", 1, _copy_call(inp, use_out)))
    if "numpy" in peers:
        contenders.append(Contender("numpy", 1, _numpy_call(inp)))
    for n in threads:
        contenders.append(Contender("fastnorm", n, _fastnorm_call(inp, use_out), set_fastnorm_threads(n)))
        if case.residual:
            contenders.append(Contender("unfused", n, _unfused_call(inp, use_out), set_fastnorm_threads(n)))
        if "torch" in peers:
            contenders.append(Contender("torch", n, _torch_call(inp), _torch_threads(n)))
        if "onnxruntime" in peers and onnxruntime_skip_reason(case) is None:
            contenders.append(Contender("onnxruntime", n, _onnxruntime_call(inp, n, use_out)))
    return contenders
