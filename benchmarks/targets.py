"""Check `python -m fastnorm bench --out --json F` runs against the performance issue's targets.

    python benchmarks/targets.py run_a.json [run_b.json ...]

For each target it prints every cell's figure, one per run (a / b / c), and marks a cell
missed (`!`) in the runs where its figure is past the bound.  The exit status is 0 whether
or not targets are missed: this is a report for the notes and docs/performance.md, not a
gate (the gate is `python -m fastnorm bench --gate`, whose bounds are looser).

The bounds are the issue's, as docs/performance.md quotes them.  xcopy is fastnorm's time
over a 1-thread copy of the same bytes (`np.copyto`, hence `--out`); xtorch and xort are
the peer's time over fastnorm's, at the same thread count.
"""
import json
import sys

OUT_OF_CACHE = ("32768x768", "8192x4096", "16x1048576")
IN_CACHE = ("512x768", "128x4096")
BATCH_NORM_SHAPES = ("1x64x56x56", "32x64x56x56", "8x256x14x14", "64x3x224x224")

# (target, ops, shapes, bound on 1 thread, bound on 2 threads): xcopy at most the bound.
XCOPY_TARGETS = (
    ("LayerNorm out of cache", ("layer_norm",), OUT_OF_CACHE, 1.10, 0.75),
    ("RMSNorm out of cache", ("rms_norm",), OUT_OF_CACHE, 1.00, 0.75),
    ("in cache", ("layer_norm", "rms_norm"), IN_CACHE, 1.30, 0.80),
    ("64x768", ("layer_norm", "rms_norm"), ("64x768",), 1.6, 1.6),
    ("BatchNorm eval", ("batch_norm_eval nchw", "batch_norm_eval nhwc"), BATCH_NORM_SHAPES, 1.10, 0.75),
    ("BatchNorm training", ("batch_norm_train nchw", "batch_norm_train nhwc"), BATCH_NORM_SHAPES, 1.6, 1.1),
)
CALL_BOUND_NS = 1500.0  # a call on a 1x768 float32 array
RMS_OVER_TORCH = 3.0
TWO_THREAD_SPEEDUP = 1.8  # on the in-cache shapes


def load(paths):
    """{run index: {(op, shape, threads): row}} for the float32 rows of each file."""
    runs = []
    for path in paths:
        with open(path) as f:
            document = json.load(f)
        if not document["options"].get("out"):
            sys.exit(f"{path}: xcopy targets need a run with --out")
        runs.append({(r["op"], r["shape"], r["threads"]): r
                     for r in document["rows"] if r["dtype"] == "float32"})
    return runs


def cell(runs, key, field, bad):
    """'a / b / c' of one figure across the runs, '!' after each one `bad` rejects."""
    parts = []
    for run in runs:
        row = run.get(key)
        value = None if row is None else row[field]
        if value is None:
            parts.append("-")
        else:
            parts.append(f"{value:.3g}" + ("!" if bad(value) else ""))
    return " / ".join(parts)


def report(runs):
    lines, missed = [], []

    def add(label, key, field, bad):
        text = cell(runs, key, field, bad)
        lines.append(f"  {label:<44} {text}")
        if "!" in text:
            missed.append(f"{label}: {text}")

    for name, ops, shapes, bound1, bound2 in XCOPY_TARGETS:
        lines.append(f"{name}: xcopy at most {bound1} (1 thread), {bound2} (2 threads)")
        for op in ops:
            for shape in shapes:
                for threads, bound in ((1, bound1), (2, bound2)):
                    add(f"{op} {shape} {threads}t", (op, shape, threads), "xcopy",
                        lambda v, b=bound: v > b)

    lines.append(f"1x768 call: at most {CALL_BOUND_NS:.0f} ns")
    for op in ("layer_norm", "rms_norm"):
        for run in runs:
            row = run.get((op, "1x768", 1))
            if row is not None:
                row["call_ns"] = row["fastnorm_s"] * 1e9
        add(f"{op} 1x768 1t (ns)", (op, "1x768", 1), "call_ns", lambda v: v > CALL_BOUND_NS)

    lines.append(f"RMSNorm at least {RMS_OVER_TORCH}x PyTorch; every cell ahead of PyTorch and ONNX Runtime")
    keys = sorted({k for run in runs for k in run})
    for field, name in (("xtorch", "PyTorch"), ("xort", "ONNX Runtime")):
        for key in keys:
            floor = RMS_OVER_TORCH if field == "xtorch" and key[0] == "rms_norm" else 1.0
            text = cell(runs, key, field, lambda v, f=floor: v < f)
            if "!" in text:
                label = f"{key[0]} {key[1]} {key[2]}t {field}"
                lines.append(f"  {label:<44} {text}")
                missed.append(f"{label}: {text}")
        lowest = [min((r[field] for r in run.values() if r.get(field) is not None), default=None)
                  for run in runs]
        lines.append(f"  lowest {field} ({name}) per run: "
                     + " / ".join("-" if v is None else f"{v:.3g}" for v in lowest))

    lines.append(f"2 threads at least {TWO_THREAD_SPEEDUP}x 1 thread, in cache; a long row uses both")
    for op in ("layer_norm", "rms_norm"):
        for shape, floor in [(s, TWO_THREAD_SPEEDUP) for s in IN_CACHE] + [("1x65536", 1.0)]:
            for run in runs:
                one, two = run.get((op, shape, 1)), run.get((op, shape, 2))
                if one is not None and two is not None:
                    two["speedup"] = one["fastnorm_s"] / two["fastnorm_s"]
            add(f"{op} {shape} 2t over 1t", (op, shape, 2), "speedup",
                lambda v, f=floor: v < f)
    return lines, missed


def main(paths):
    if not paths:
        sys.exit(__doc__)
    lines, missed = report(load(paths))
    print("\n".join(lines))
    print(f"\n{len(missed)} target cells missed in at least one run" + (":" if missed else ""))
    for entry in missed:
        print(f"  {entry}")


if __name__ == "__main__":
    main(sys.argv[1:])
