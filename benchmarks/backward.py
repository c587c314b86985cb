"""Time fastnorm's backward functions against PyTorch's CPU backward ops.

    python benchmarks/backward.py                      # float32, 1 and 2 threads
    python benchmarks/backward.py --dtypes float32,bfloat16 --threads 1

Each case times fastnorm's layer_norm_backward / rms_norm_backward / batch_norm_backward
from the statistics its forward pass returned, PyTorch's native backward op on the same
data (aten::native_layer_norm_backward, aten::native_batch_norm_backward; RMSNorm has no
CPU backward op of its own, so its column is autograd of F.rms_norm, forward included),
and a 1-thread np.copyto of x: medians of samples taken round robin in one process,
printed with fastnorm's time over the copy's (xcopy) and PyTorch's over fastnorm's
(xtorch: above 1, fastnorm is faster).  Needs torch (the `bench` extra).
"""
import argparse
import time

import numpy as np

import fastnorm
from fastnorm._bench_contenders import compute_dtype, numpy_dtype
from fastnorm.bench import SETTLE_SECONDS  # libgomp's workers spin about 1 ms after a call

ROW_SHAPES = ((1, 768), (64, 768), (16, 100), (2048, 64), (4096, 768), (512, 4096))
# (shape, channel axis): NCHW, short channel rows, (N, C), channels-last
BATCH_NORM_SHAPES = (((32, 64, 56, 56), 1), ((8, 256, 14, 14), 1), ((8, 512, 7, 7), 1),
                     ((64, 256, 4, 4), 1), ((256, 1024), 1), ((32, 56, 56, 64), -1))


def median_times(calls, min_time=0.2, samples=7):
    """Median seconds per call of each callable, sampled round robin."""
    for call in calls:
        call()
    reps = []
    for call in calls:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < min_time / samples / len(calls) or n == 0:
            call()
            n += 1
        reps.append(n)
    times = [[] for _ in calls]
    for _ in range(samples):
        for k, call in enumerate(calls):
            t0 = time.perf_counter()
            for _ in range(reps[k]):
                call()
            times[k].append((time.perf_counter() - t0) / reps[k])
            time.sleep(SETTLE_SECONDS)  # the OpenMP workers stop spinning before the next
    return [float(np.median(t)) for t in times]


def row_case(torch, op, shape, dtype, rng):
    storage, compute = numpy_dtype(dtype), compute_dtype(dtype)
    x = rng.standard_normal(shape).astype(storage)
    g = rng.standard_normal(shape).astype(storage)
    n = shape[-1]
    w = rng.standard_normal(n).astype(compute)
    tdtype = getattr(torch, dtype)
    tx, tg = (torch.from_numpy(a.astype(np.float32)).to(tdtype) for a in (x, g))
    tw = torch.from_numpy(w.astype(np.float32)).to(tdtype)
    if op == "layer_norm":
        _, mean, rstd = fastnorm.layer_norm(x, None, w, return_stats=True)
        tb = torch.zeros_like(tw)
        _, tmean, trstd = torch.native_layer_norm(tx, (n,), tw, tb, 1e-5)

        def ours():
            fastnorm.layer_norm_backward(g, x, mean, rstd, w)

        def theirs():
            torch.ops.aten.native_layer_norm_backward(tg, tx, (n,), tmean, trstd, tw, tb,
                                                      [True, True, True])
        return x, ours, theirs
    _, rstd = fastnorm.rms_norm(x, None, w, return_stats=True)

    def ours():
        fastnorm.rms_norm_backward(g, x, rstd, w)

    def theirs():
        txr, twr = tx.detach().requires_grad_(), tw.detach().requires_grad_()
        torch.nn.functional.rms_norm(txr, (n,), twr).backward(tg)
    return x, ours, theirs


def batch_norm_case(torch, shape, axis, dtype, rng):
    storage, compute = numpy_dtype(dtype), compute_dtype(dtype)
    x = rng.standard_normal(shape).astype(storage)
    g = rng.standard_normal(shape).astype(storage)
    w = rng.standard_normal(shape[axis]).astype(compute)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, training=True, axis=axis,
                                        return_stats=True)
    tdtype = getattr(torch, dtype)
    tx, tg = (torch.from_numpy(a.astype(np.float32)).to(tdtype) for a in (x, g))
    if axis != 1:  # a channels-last tensor: the (N, C, ...) view of the same memory
        tx, tg = tx.movedim(axis, 1), tg.movedim(axis, 1)
    # PyTorch takes bfloat16/float16 inputs with float32 parameters, float64 with float64
    tw, tmean, trstd = (torch.from_numpy(a.astype(compute)) for a in (w, mean, rstd))

    def ours():
        fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)

    def theirs():
        torch.ops.aten.native_batch_norm_backward(tg, tx, tw, None, None, tmean, trstd, True,
                                                  1e-5, [True, True, True])
    return x, ours, theirs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float32", help="comma list (default float32)")
    parser.add_argument("--threads", default="1,2", help="comma list (default 1,2)")
    args = parser.parse_args(argv)
    import torch

    rng = np.random.default_rng(0)
    print(f"kernels: {fastnorm.get_config()['isa']}; medians, round robin in one process")
    print(f"{'case':44s} {'threads':>7s} {'fastnorm':>10s} {'torch':>10s} {'xcopy':>6s} {'xtorch':>6s}")
    for dtype in args.dtypes.split(","):
        cases = [(f"{op}_backward {'x'.join(map(str, s))} {dtype}",
                  lambda op=op, s=s: row_case(torch, op, s, dtype, rng))
                 for op in ("layer_norm", "rms_norm") for s in ROW_SHAPES]
        cases += [(f"batch_norm_backward {'x'.join(map(str, s))}{' axis=-1' if a != 1 else ''} "
                   f"{dtype}", lambda s=s, a=a: batch_norm_case(torch, s, a, dtype, rng))
                  for s, a in BATCH_NORM_SHAPES]
        for label, make in cases:
            x, ours, theirs = make()
            out = np.empty_like(x)
            for threads in (int(t) for t in args.threads.split(",")):
                fastnorm.set_num_threads(threads)
                torch.set_num_threads(threads)
                mine, torch_time, copy = median_times(
                    [ours, theirs, lambda: np.copyto(out, x)])
                print(f"{label:44s} {threads:7d} {mine * 1e6:8.1f}us {torch_time * 1e6:8.1f}us "
                      f"{mine / copy:6.2f} {torch_time / mine:6.2f}", flush=True)


if __name__ == "__main__":
    main()
