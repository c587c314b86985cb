"""``python -m fastnorm bench``: fastnorm against a memory copy, NumPy, PyTorch and ONNX
Runtime, side by side in one process.

How it measures (``measure``): every contender of a case (see ``_bench_contenders``) is
timed in rounds, round robin, so that machine noise hits all of them alike; a sample is
a batch of calls lasting about SAMPLE_SECONDS, timed with ``time.perf_counter_ns``; the
figure reported is the median sample.  Before a sample the contender's thread count is
set (untimed), two untimed calls warm the caches, and after a multi-threaded contender the
runner pauses briefly so that OpenMP workers still spinning do not steal the next
contender's cores.  Ratios, not absolute times, are the figures to compare across runs.

``benchmarks/`` (pytest-benchmark) imports the shape lists below, so both use one list.
"""

import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import fastnorm

from ._bench_contenders import (
    DTYPES, GROUP_NORM_OPS, OPS, PEERS, ROW_OPS, Case, build_contenders, bytes_moved,
    onnxruntime_skip_reason, peer_available,
)

# The shape set of the performance issue.  Rows: (rows, cols).  Batch norm: (N, C, H, W),
# benchmarked in both layouts (NHWC stores the same tensor as (N, H, W, C)); channels_last,
# the (N, C, H, W) view of NHWC memory that a PyTorch channels_last tensor gives, on request.
# GroupNorm takes the same 4-D shapes, NCHW and (for nhwc) the channels_last view.
ROW_SHAPES = (
    (1, 768), (8, 768), (64, 768), (512, 768), (4096, 768), (32768, 768),
    (1, 4096), (128, 4096), (8192, 4096), (1, 65536), (16, 1048576),
)
BATCH_NORM_SHAPES = ((1, 64, 56, 56), (32, 64, 56, 56), (8, 256, 14, 14), (64, 3, 224, 224))
QUICK_ROW_SHAPES = ((1, 768), (512, 768), (32768, 768))
QUICK_BATCH_NORM_SHAPES = ((32, 64, 56, 56),)
LAYOUTS = ("nchw", "nhwc", "channels_last")

SAMPLE_SECONDS = 0.002  # one sample: enough calls to last this long (at least one call)
# Untimed calls before every sample, so that no contender's time depends on what the one
# before it left in the caches.  One was not enough on an Emerald Rapids VM (300 MB L3):
# after NumPy's BatchNorm formula on (32, 64, 56, 56) float32 (1 thread), fastnorm's call
# after one warm call took 2.4 ms, after two 1.6 ms, 1.4 ms without NumPy before it; the
# copy of the same bytes 3.7, 2.9 and 2.7-2.8 ms.  (It makes the bench take about 57 s
# instead of 43 s here.)
WARM_CALLS = 2
SETTLE_SECONDS = 0.001  # pause after a multi-threaded sample (libgomp spins about 1 ms)
SLOW_CALL_SECONDS = 0.05  # contenders slower than this (NumPy on large shapes) ...
SLOW_SAMPLES = 3  # ... are sampled this many times only, to keep the run short
MAX_ROUNDS = 200
STEADY_MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to this size are reused


# ---- measuring ---------------------------------------------------------------------------


def glibc_malloc():
    """Whether this process allocates with glibc's malloc: not where the C library is
    another, nor where a sanitizer's or another allocator's library replaced malloc
    (mallopt would still answer, to no effect)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return True
    return not any(name in maps for name in ("libasan", "libtsan", "libjemalloc", "libtcmalloc"))


def steady_allocator():
    """Make glibc's malloc keep freed blocks of up to 32 MB and hand them out again, so
    that no contender's temporaries cost fresh pages; returns what the header says of it,
    or None where malloc is not glibc's (nothing is changed there).

    Why: PyTorch's RMSNorm allocates four temporaries the size of its input, NumPy's
    formula several.  By default glibc serves a large block from the heap or from fresh
    mmapped pages (a page fault per 4 KB) depending on the process's history (its
    threshold moves, and any mallopt or MALLOC_* variable pins it at 128 KB), so PyTorch's
    RMSNorm 512x768 took 0.13 ms or 1.8 ms in one build depending on which case ran
    before it.  With the threshold pinned at 32 MB every contender runs at its best, and
    the speed-ups reported are not inflated by a peer's page faults.  Nothing is changed
    where malloc is not glibc's (glibc_malloc)."""
    if not glibc_malloc():
        return None
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        pinned = libc.mallopt(m_mmap_threshold, STEADY_MMAP_THRESHOLD) == 1
        kept = libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):
        return None
    if not (pinned and kept):
        return None
    return "glibc malloc reuses freed blocks up to 32 MB (mallopt), so temporaries cost no page faults"


def _time_per_call(call, calls):
    """Mean seconds per call over `calls` back-to-back calls."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) * 1e-9 / calls


def measure(contenders, min_rounds=5, min_time=0.2):
    """Median seconds per call of each contender, as {contender.key: (median, samples)}.

    Rounds go on until there are at least `min_rounds` of them and `min_time` seconds have
    passed (or MAX_ROUNDS).  The order of the contenders rotates from round to round so
    that none is always the one measured after, say, NumPy has flushed the caches."""
    per_call, calls = {}, {}
    for c in contenders:  # first call: lazy initialisation, page faults; then calibrate
        if c.prepare:
            c.prepare()
        c.call()
        once = _time_per_call(c.call, 1)
        if once < SAMPLE_SECONDS:  # refine over a batch: one short call is mostly noise
            once = _time_per_call(c.call, max(1, int(SAMPLE_SECONDS / max(once, 1e-9))))
        per_call[c.key] = once
        calls[c.key] = max(1, int(SAMPLE_SECONDS / max(once, 1e-9)))
    samples = {c.key: [] for c in contenders}
    start, previous_threads = time.perf_counter(), 1
    for round_index in range(MAX_ROUNDS):
        shift = round_index % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            slow = per_call[c.key] > SLOW_CALL_SECONDS
            if slow and len(samples[c.key]) >= SLOW_SAMPLES:
                continue
            if c.prepare:
                c.prepare()
            if previous_threads > 1:
                time.sleep(SETTLE_SECONDS)
            for _ in range(WARM_CALLS):
                c.call()
            samples[c.key].append(_time_per_call(c.call, calls[c.key]))
            previous_threads = c.threads
        if round_index + 1 >= min_rounds and time.perf_counter() - start >= min_time:
            break
    return {key: (statistics.median(s), len(s)) for key, s in samples.items()}


# ---- cases, table rows -------------------------------------------------------------------


def make_cases(ops, row_shapes, batch_norm_shapes, dtypes, layouts=("nchw", "nhwc"), residual=False):
    cases = []
    for op in ops:
        for dtype in dtypes:
            if op in ROW_OPS:
                cases += [Case(op, s, dtype, residual=residual) for s in row_shapes]
            else:
                op_layouts = layouts
                if op in GROUP_NORM_OPS:  # (N, C, ...) only: NHWC memory is a channels_last view
                    op_layouts = dict.fromkeys(
                        layout if layout == "nchw" else "channels_last" for layout in layouts)
                cases += [Case(op, s, dtype, layout) for s in batch_norm_shapes for layout in op_layouts]
    return cases


# Columns of the table beside fastnorm's time: (heading, contender name, how the ratio is
# formed).  "over": fastnorm time / the other (lower is better); "speedup": the other's time
# / fastnorm time (higher means fastnorm is faster).
RATIO_COLUMNS = (
    ("xcopy", "copy", "over"),
    ("xnumpy", "numpy", "speedup"),
    ("xunfused", "unfused", "speedup"),
    ("xtorch", "torch", "speedup"),
    ("xort", "onnxruntime", "speedup"),
)
SINGLE_THREADED = ("copy", "numpy")


def table_rows(case, times, threads):
    """One row per thread count: fastnorm's time, GB/s, ns/row and the ratios."""
    rows = []
    for n in threads:
        fast = times.get(f"fastnorm@{n}")
        if fast is None:
            continue
        seconds = fast[0]
        row = {
            "op": case.label, "shape": case.shape_text, "dtype": case.dtype, "threads": n,
            "fastnorm_s": seconds, "gb_per_s": bytes_moved(case) / seconds / 1e9,
            "ns_per_row": seconds * 1e9 / case.rows if case.rows else None,
        }
        for heading, name, kind in RATIO_COLUMNS:
            # copy and NumPy run on one thread; the others at fastnorm's thread count
            other = times.get(f"{name}@{1 if name in SINGLE_THREADED else n}")
            if other is None:
                row[heading] = None
            elif kind == "over":
                row[heading] = seconds / other[0]
            else:
                row[heading] = other[0] / seconds
        rows.append(row)
    return rows


def format_dtype_ratios(rows):
    """fastnorm's time in each dtype relative to float32 on the same op, shape and threads
    (half precision moves half the bytes, so a memory-bound op should take about 0.5x)."""
    float32 = {(r["op"], r["shape"], r["threads"]): r["fastnorm_s"] for r in rows if r["dtype"] == "float32"}
    lines = []
    for r in rows:
        base = float32.get((r["op"], r["shape"], r["threads"]))
        if r["dtype"] != "float32" and base:
            lines.append(f"{r['op']:<22} {r['shape']:<12} {r['dtype']:<9} {r['threads']:>3}  "
                         f"{r['fastnorm_s'] / base:5.2f}x float32")
    return "\n".join(["fastnorm time relative to float32:"] + lines) if lines else ""


def format_seconds(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_table(rows):
    present = [h for h, _, _ in RATIO_COLUMNS if any(r[h] is not None for r in rows)]
    headings = ["op", "shape", "dtype", "thr", "fastnorm", "GB/s"] + present
    lines = []
    for r in rows:
        cells = [r["op"], r["shape"], r["dtype"], str(r["threads"]),
                 format_seconds(r["fastnorm_s"]), f"{r['gb_per_s']:.1f}"]
        cells += ["-" if r[h] is None else f"{r[h]:.2f}" for h in present]
        lines.append(cells)
    widths = [max(len(x) for x in column) for column in zip(headings, *lines)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headings), rule] + [line(cells) for cells in lines])


# ---- machine description -----------------------------------------------------------------


def cpuinfo_field(name):
    """The value of the first /proc/cpuinfo line for `name` ("model name", "vendor_id"), or
    None where there is no such file or line."""
    try:
        with open("/proc/cpuinfo") as f:
            for text in f:
                if text.startswith(name):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def describe_machine(peers):
    config = fastnorm.get_config()
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "fastnorm": config["version"]}
    for name in peers:
        if name in ("torch", "onnxruntime"):
            versions[name] = __import__(name).__version__
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(),
        "system": f"{platform.system()} {platform.release()}", "versions": versions,
        "config": {k: v for k, v in config.items()},
    }


def format_header(machine, use_out, min_rounds):
    c, v = machine["config"], machine["versions"]
    peers = ", ".join(f"{k} {v[k]}" for k in ("numpy", "torch", "onnxruntime") if k in v)
    if use_out:
        copy = "np.copyto(out, x); fastnorm writes into out= (group_norm, which has no out=: x.copy())"
    else:
        copy = "x.copy(); fastnorm allocates its output"
        if c.get("output_cache_mb"):
            copy += (" (those of 32 MB or more from its cache of freed outputs, up to "
                     f"{c['output_cache_mb']} MB)")
    load = machine.get("other_load_cores")
    busy = [] if load is None or load < 0.2 else [
        f"WARNING: other processes kept {load:.1f} cores busy during the run; "
        "multi-threaded figures especially are unreliable"]
    return "\n".join(busy + [
        f"fastnorm {c['version']} bench: kernels {c['isa']}"
        + "".join(f" + {ext}" for ext in c.get("isa_extensions", []))
        + " (available: "
        f"{', '.join(c['isa_available'])}), OpenMP {'on' if c['openmp'] else 'off'}",
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['system']}, Python {v['python']}",
        f"peers: {peers}",
        f"copy baseline: {copy}",
        f"allocator: {machine.get('allocator') or 'the C library default'}",
        f"fastnorm: median time per call (at least {min_rounds} interleaved samples); "
        "GB/s: bytes in + out per second",
        "xcopy: fastnorm time / copy time (lower is better; 1.0 = memory-copy speed); "
        "xnumpy, xunfused, xtorch, xort: their time / fastnorm time (higher = fastnorm faster)",
    ])


class OtherLoad:
    """How many cores other processes kept busy since creation (Linux: /proc/stat's busy
    time minus this process's CPU time).  A shared machine makes multi-threaded figures
    meaningless while someone else computes; the header and the gate say so."""

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:8]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK"), time.process_time(), time.perf_counter()

    def cores(self):
        """Average number of cores used by others, or None where unknown."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self._start, end
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


# ---- command line ------------------------------------------------------------------------


def _split(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_shapes(text):
    """'quick', 'all' (the default) or a list like '512x768,32x64x56x56': 2-D shapes are
    rows for layer_norm / rms_norm, 4-D shapes (N, C, H, W) for batch norm."""
    if text in (None, "all"):
        return ROW_SHAPES, BATCH_NORM_SHAPES
    if text == "quick":
        return QUICK_ROW_SHAPES, QUICK_BATCH_NORM_SHAPES
    rows, batch_norm = [], []
    for part in _split(text):
        try:
            shape = tuple(int(n) for n in part.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: {part!r} is not a shape like 512x768 or 32x64x56x56") from None
        if len(shape) == 2:
            rows.append(shape)
        elif len(shape) == 4:
            batch_norm.append(shape)
        else:
            raise ValueError(f"--shapes: {part!r} has {len(shape)} dimensions; expected "
                             "2 (rows x cols) or 4 (N x C x H x W for batch norm)")
        if min(shape) < 1:
            raise ValueError(f"--shapes: {part!r} has an empty dimension")
    return tuple(rows), tuple(batch_norm)


def _choices(option, text, allowed):
    values = list(allowed) if text == "all" else _split(text)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return values


def add_arguments(parser):
    """The options of `python -m fastnorm bench` (used by fastnorm.__main__)."""
    two = "1,2" if usable_cores() >= 2 else "1"
    parser.add_argument("--ops", default="all", help=f"comma list of {', '.join(OPS)} (default: all)")
    parser.add_argument("--shapes", default=None,
                        help="'all' (default: the issue's shape set), 'quick', or a list like "
                             "512x768,32x64x56x56 (4-D shapes are N x C x H x W for batch norm)")
    parser.add_argument("--dtypes", default="float32",
                        help=f"comma list of {', '.join(DTYPES)} or 'all' (default: float32)")
    parser.add_argument("--layouts", default="nchw,nhwc",
                        help="4-D layouts: nchw, nhwc, channels_last (default: nchw,nhwc; "
                             "group_norm runs nhwc as channels_last)")
    parser.add_argument("--threads", default=two, help=f"comma list of thread counts (default: {two})")
    parser.add_argument("--peers", default="all",
                        help=f"comma list of {', '.join(PEERS)} (default: all that are installed)")
    parser.add_argument("--residual", action="store_true",
                        help="layer_norm / rms_norm with the fused residual add (h = x + r)")
    parser.add_argument("--out", action="store_true",
                        help="fastnorm writes into a preallocated out= (copy: np.copyto); "
                             "default: it allocates (copy: x.copy())")
    parser.add_argument("--repeat", type=int, default=5, help="minimum samples per contender (default: 5)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="minimum seconds per case (default: 0.2)")
    parser.add_argument("--quick", action="store_true",
                        help="few shapes and samples, about 20-25 s (--shapes quick --repeat 3 --min-time 0.05)")
    parser.add_argument("--isa", default=None, help="kernel family to run (default: the best available; "
                        "avx512_nobf16: avx512 without its AVX512-BF16 conversions)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--gate", action="store_true",
                        help="the CI regression gate: a fixed set of ratios with bounds; "
                             "exit status 1 if one is out of bounds (other options ignored)")


def _progress(text):
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K" + text)
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run(args):
    """Run the benchmark the options describe; returns the process exit status."""
    if args.gate:
        from ._bench_gate import run_gate

        return run_gate()
    if args.isa:
        from ._config import ISA_VARIANTS, use_isa

        available = fastnorm.get_config()["isa_available"]
        if fastnorm._core.avx512_bf16_supported():
            available = available + list(ISA_VARIANTS)
        if args.isa not in available:
            raise ValueError(f"--isa: {args.isa!r} is not available here; choose from {', '.join(available)}")
        with use_isa(args.isa):
            return _run(args)
    return _run(args)


def _run(args):
    if args.quick:
        args.shapes = args.shapes or "quick"
        args.repeat, args.min_time = min(args.repeat, 3), min(args.min_time, 0.05)
    ops = _choices("--ops", args.ops, OPS)
    dtypes = _choices("--dtypes", args.dtypes, DTYPES)
    layouts = _choices("--layouts", args.layouts, LAYOUTS)
    peers = _choices("--peers", args.peers, PEERS)
    try:
        threads = [int(t) for t in _split(args.threads)]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise ValueError(f"--threads: expected thread counts >= 1, got {args.threads!r}")
    row_shapes, batch_norm_shapes = parse_shapes(args.shapes)
    if args.residual:
        ops = [op for op in ops if op in ROW_OPS]
    for name in [p for p in peers if not peer_available(p)]:
        print(f"note: {name} is not installed; its column is left out", file=sys.stderr)
        peers.remove(name)
    if max(threads) > usable_cores():
        print(f"note: {max(threads)} threads on {usable_cores()} usable cores", file=sys.stderr)
    cases = make_cases(ops, row_shapes, batch_norm_shapes, dtypes, layouts, args.residual)
    if not cases:
        raise ValueError("nothing to run: no shape matches the chosen ops")

    machine = describe_machine(peers)
    machine["allocator"] = steady_allocator()
    if "onnxruntime" in peers:
        skipped = sorted({onnxruntime_skip_reason(c) for c in cases} - {None})
        for reason in skipped:
            print(f"note: onnxruntime left out where {reason}", file=sys.stderr)
    results, rows, start, other_load = [], [], time.perf_counter(), OtherLoad()
    for index, case in enumerate(cases, 1):
        _progress(f"[{index}/{len(cases)}] {case.label} {case.shape_text} {case.dtype} "
                  f"({time.perf_counter() - start:.0f} s)")
        contenders = build_contenders(case, threads, peers, args.out)
        times = measure(contenders, args.repeat, args.min_time)
        del contenders  # free this case's arrays before the next one is made
        results.append({"op": case.op, "shape": list(case.shape), "dtype": case.dtype,
                        "layout": case.layout, "residual": case.residual,
                        "bytes": bytes_moved(case),
                        "seconds": {k: t for k, (t, _) in times.items()},
                        "samples": {k: n for k, (_, n) in times.items()}})
        rows += table_rows(case, times, threads)
    _progress(f"done: {len(cases)} cases in {time.perf_counter() - start:.0f} s")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    fastnorm.set_num_threads(None)
    machine["other_load_cores"] = other_load.cores()

    print(format_header(machine, args.out, args.repeat))
    print()
    print(format_table(rows))
    dtype_ratios = format_dtype_ratios(rows)
    if dtype_ratios:
        print()
        print(dtype_ratios)
    if args.json:
        options = {k: v for k, v in vars(args).items() if k not in ("handler", "command")}
        document = {"fastnorm_bench": 1, "machine": machine, "options": options,
                    "cases": results, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(document, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0
