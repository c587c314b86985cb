"""A/B of two builds of fastnorm's extension in one process: is a kernel change faster?

    python benchmarks/ab_builds.py OLD.so NEW.so layer_norm:float32:512x768 \
        rms_norm:bfloat16:32768x768:2 batch_norm_train:float32:8x256x14x14

OLD.so and NEW.so are `fastnorm/_core*.so` files (copy the first aside before rebuilding).
Both are loaded into this process, and every sample times a batch of calls of one, then
of the other (the order alternating), on the same input, so that load from other
processes hits both alike; a case prints the median time per call of each and NEW's over
OLD's.  It also says whether the two outputs are bit for bit the same: a change meant to
keep the arithmetic must keep the bits.

The inputs are offset + 2 N(0, 1) with offset 1 unless `--offset` says otherwise: a
change that treats rows far from zero differently (their mean larger than their spread)
needs a run with, say, `--offset 10` as well.

x lies where NumPy put it, some multiple of 16 bytes past a cache line that changes with
the process's heap (column `x%64`), unless `--line-offset BYTES` places it: loads that
straddle two lines cost some kernels 10% or more (channels-last BatchNorm training's
statistics), so a change to how a kernel meets lines needs runs at 0 and at 16.

On a shared VM a ratio within about 10% of 1 can be noise: pass the same file twice
(`--allow-same`) to see how far an A/A run strays on the machine at the time.  The two
files must differ otherwise, so that an extension that was not rebuilt (setup.py's
`build_ext` links into build/lib and copies into fastnorm/ only with --inplace) is not
taken for a change that did nothing.  `--tunings default,amd` runs OLD in the first
tuning (the sizes and hints dispatch.c picks for the kind of core) and NEW in the second:
with one file twice, what the AMD tuning does on this machine.

A case is OP:DTYPE:SHAPE[:THREADS]: OP one of layer_norm, rms_norm (statistics over the
last axis, with a weight, and a bias for layer_norm; layer_norm_bare and rms_norm_bare
without either; layer_norm_residual and rms_norm_residual with the fused residual add and
residual_out), layer_norm_channels and rms_norm_channels (SHAPE N x C x ...,
statistics over axis 1 with a weight of C values, as ConvNeXt's channels-first LayerNorm),
batch_norm_eval, batch_norm_train, moments, group_norm, group_norm_cl,
instance_norm (SHAPE N x C x ...; GroupNorm with 32 groups, or gcd(C, 32), group_norm_cl
on channels-last data, instance_norm with C groups), and the backward passes
layer_norm_backward, rms_norm_backward (over the last axis, with a weight) and
batch_norm_backward (SHAPE N x C x ...; channels-last: N*H*W x C x 1); DTYPE float32,
float64, float16 or bfloat16.
"""
import argparse
import hashlib
import importlib.machinery
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from fastnorm._bench_contenders import PAGE, compute_dtype, empty_apart, numpy_dtype

DTYPES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
ROW_OPS = ("layer_norm", "rms_norm", "layer_norm_bare", "rms_norm_bare", "layer_norm_residual",
           "rms_norm_residual")
BACKWARD_ROW_OPS = ("layer_norm_backward", "rms_norm_backward")
CHANNEL_OPS = ("layer_norm_channels", "rms_norm_channels")
OPS = ROW_OPS + BACKWARD_ROW_OPS + CHANNEL_OPS + (
    "batch_norm_eval", "batch_norm_train", "moments", "group_norm", "group_norm_cl",
    "instance_norm", "batch_norm_backward")


def load_core(path, directory):
    """The extension at `path`, loaded from a copy of its own (one module per file)."""
    copy = os.path.join(directory, os.path.basename(path))
    shutil.copyfile(path, copy)
    loader = importlib.machinery.ExtensionFileLoader("fastnorm._core", copy)
    spec = importlib.util.spec_from_file_location("fastnorm._core", copy, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def parse_case(text):
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] not in OPS or parts[1] not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"bad case {text!r}: OP:DTYPE:SHAPE[:THREADS], OP in {OPS}, DTYPE in {tuple(DTYPES)}")
    shape = tuple(int(v) for v in parts[2].split("x"))
    if parts[0] not in ROW_OPS + BACKWARD_ROW_OPS and len(shape) < 3:
        raise argparse.ArgumentTypeError(f"bad case {text!r}: {parts[0]} takes N x C x ...")
    return parts[0], parts[1], shape, int(parts[3]) if len(parts) == 4 else 1


def at_line_offset(a, offset):
    """A copy of `a` whose data starts `offset` bytes past a 64-byte cache line."""
    buffer = np.empty(a.nbytes + 64, dtype=np.uint8)
    placed = np.ndarray(a.shape, a.dtype, buffer, (offset - buffer.ctypes.data) % 64)
    placed[...] = a
    return placed


def case_call(op, dtype, shape, threads, offset=1.0, line_offset=None):
    """(call(core, y) -> the outputs, x, bytes in + out): the same input for every build,
    offset + 2 N(0, 1), `line_offset` bytes past a cache line if not None."""
    code, compute = DTYPES[dtype], compute_dtype(dtype)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(numpy_dtype(dtype))
    if line_offset is not None:
        x = at_line_offset(x, line_offset)
    if op in ROW_OPS:
        n, bare = shape[-1], op.endswith("_bare")
        w = None if bare else rng.standard_normal(n).astype(compute)
        b = rng.standard_normal(n).astype(compute) if op.startswith("layer_norm") and not bare else None
        # the fused residual: h = x + r to h_out (shared by the builds), then y
        r = x[::-1].copy() if op.endswith("_residual") else None
        h_out = np.empty_like(x) if r is not None else None

        def call(core, y):
            core.norm(op.startswith("rms_norm"), code, x.size // n, n, 1, x, r, h_out, y, w, b,
                      1e-5, None, None, threads)
            return (y,)
        return call, x, (4 if r is not None else 2) * x.nbytes
    if op in BACKWARD_ROW_OPS:  # grad_y and statistics of the forward pass's scale
        n, rows = shape[-1], x.size // shape[-1]
        g = rng.standard_normal(shape).astype(x.dtype)
        w = rng.standard_normal(n).astype(compute)
        mean, rstd = np.full(rows, 1.0, compute), np.full(rows, 0.5, compute)
        sums = np.empty(n), np.empty(n)

        def call(core, y):
            layer = op == "layer_norm_backward"
            core.norm_backward(0 if layer else 1, code, rows, n, 1, g, x,
                               mean if layer else None, rstd, w, y, sums[0],
                               sums[1] if layer else None, threads)
            return (y, sums[0])
        return call, x, 3 * x.nbytes
    n, c, inner = shape[0], shape[1], x.size // (shape[0] * shape[1])
    if op in CHANNEL_OPS:
        w = rng.standard_normal(c).astype(compute)
        b = rng.standard_normal(c).astype(compute) if op == "layer_norm_channels" else None

        def call(core, y):
            core.norm(op == "rms_norm_channels", code, n, c, inner, x, None, None, y, w, b, 1e-5,
                      None, None, threads)
            return (y,)
        return call, x, 2 * x.nbytes
    if op == "batch_norm_backward":
        g = rng.standard_normal(shape).astype(x.dtype)
        w, mean, rstd = (np.full(c, v, compute) for v in (1.5, 1.0, 0.5))
        sums = np.empty(c), np.empty(c)

        def call(core, y):
            core.batch_norm_backward(code, n, c, inner, g, x, mean, rstd, w, y, sums[0], sums[1],
                                     threads)
            return (y,) + sums
        return call, x, 3 * x.nbytes
    w, b = rng.standard_normal(c).astype(compute), rng.standard_normal(c).astype(compute)
    mean, var = rng.standard_normal(c), rng.random(c) + 0.5

    def call(core, y):
        if op.startswith("group_norm") or op == "instance_norm":
            groups = c if op == "instance_norm" else math.gcd(c, 32)
            core.group_norm(code, n, c, groups, inner, x, y, w, b, 1e-5, threads,
                            op == "group_norm_cl")
            return (y,)
        if op == "batch_norm_eval":
            core.affine(code, n, c, inner, x, y, mean, var, w, b, 1e-5, threads)
            return (y,)
        got_mean, got_var = np.empty(c), np.empty(c)
        if op == "moments":
            core.moments(code, n, c, inner, x, got_mean, got_var, threads)
            return got_mean, got_var
        core.batch_norm_train(code, n, c, inner, x, y, w, b, 1e-5, got_mean, got_var, threads)
        return y, got_mean, got_var
    return call, x, (1 if op == "moments" else 2) * x.nbytes


def run_case(cores, case, samples, offset=1.0, line_offset=None, sample_bytes=2e7):
    """Median seconds per call of each core, whether their outputs are the same bits, and
    x's offset from a cache line."""
    op, dtype, shape, threads = case
    call, x, traffic = case_call(op, dtype, shape, threads, offset, line_offset)
    # each build writes its own, both half a page from x (empty_apart: no 4K aliasing
    # that one build's output would pay and the other's not)
    outputs = [empty_apart(x, PAGE // 2) for _ in cores]
    results = [None, None]
    reps = max(1, int(sample_bytes // traffic))  # a sample: about sample_bytes of traffic
    times = [[], []]
    for s in range(samples + 2):  # two rounds of warm-up
        for k in ((0, 1) if s % 2 else (1, 0)):
            t0 = time.perf_counter()
            for _ in range(reps):
                results[k] = call(cores[k], outputs[k])
            if s >= 2:
                times[k].append((time.perf_counter() - t0) / reps)
    a, b = (float(np.median(t)) for t in times)
    same = all(np.array_equal(p.view(np.uint8), q.view(np.uint8)) for p, q in zip(*results))
    return a, b, same, x.ctypes.data % 64


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the baseline build's _core .so")
    parser.add_argument("new", help="the changed build's _core .so")
    parser.add_argument("cases", nargs="+", type=parse_case, help="OP:DTYPE:SHAPE[:THREADS]")
    parser.add_argument("--samples", type=int, default=21, help="samples per build (default 21)")
    parser.add_argument("--isa", help="kernel family for both builds (default: the best), or "
                        "avx512_nobf16")
    parser.add_argument("--offset", type=float, default=1.0,
                        help="the inputs' mean (default 1; their spread is 2): a larger one "
                        "tries the rows whose mean dominates their spread")
    parser.add_argument("--line-offset", type=int, choices=range(0, 64, 16), metavar="BYTES",
                        help="place x this many bytes past a cache line: 0, 16, 32 or 48 "
                        "(default: where NumPy puts it)")
    parser.add_argument("--allow-same", action="store_true",
                        help="accept identical files: an A/A run, the noise floor")
    parser.add_argument("--tunings", metavar="OLD,NEW",
                        help="each build's tuning, default or amd (default: the CPU's): with "
                        "one file twice, the A/B of its two tunings")
    args = parser.parse_args(argv)
    tunings = args.tunings.split(",") if args.tunings else None
    if tunings is not None and (len(tunings) != 2 or tunings[0] == tunings[1]):
        parser.error("--tunings: two different tunings, OLD,NEW (e.g. default,amd)")
    if digest(args.old) == digest(args.new) and not args.allow_same and tunings is None:
        parser.error("the two builds are the same file contents (was the new one copied out of "
                     "build/lib, or built --inplace?); pass --allow-same for an A/A run")
    with tempfile.TemporaryDirectory() as directory:
        cores = []
        for path, name in ((args.old, "old"), (args.new, "new")):
            os.makedirs(os.path.join(directory, name))
            cores.append(load_core(path, os.path.join(directory, name)))
        if args.isa:
            for core in cores:  # avx512_nobf16: avx512 without its AVX512-BF16 conversions
                core.set_isa("avx512" if args.isa == "avx512_nobf16" else args.isa)
                if args.isa == "avx512_nobf16":
                    core.set_avx512_bf16(False)
        for core, tuning in zip(cores, tunings or ()):
            core.set_tuning(tuning)
        kernels = args.isa or cores[0].get_isa()
        # (builds before the sixty-fifth session have no tunings)
        tuning = " -> ".join(tunings) if tunings else getattr(cores[0], "get_tuning", lambda: "-")()
        print(f"kernels: {kernels}, tuning {tuning}; medians of {args.samples} samples per build")
        print(f"{'case':40s} {'old':>10s} {'new':>10s}  new/old  same bits  x%64")
        for case in args.cases:
            a, b, same, line = run_case(cores, case, args.samples, args.offset, args.line_offset)
            op, dtype, shape, threads = case
            name = f"{op} {dtype} {'x'.join(map(str, shape))} t{threads}"
            print(f"{name:40s} {a * 1e6:8.1f}us {b * 1e6:8.1f}us  {b / a:7.3f}  "
                  f"{'yes' if same else 'no':>9s}  {line:4d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
