"""Accuracy on offset-dominated data: max |result - float64 reference| for fastnorm (each
kernel family this CPU has) and, when installed, PyTorch and ONNX Runtime.

    python benchmarks/accuracy.py            # from a source checkout, after pip install .

Rows / channels are `offset + N(0, 1)` in float32; the reference is fastnorm.reference
(float64, two-pass) on the same float32 input.  The figures quoted in README.md and
docs/optimisations.md come from this script.  Last, the statistics of bfloat16 and float16
LayerNorm rows (return_stats) in each family, with avx512_nobf16 beside avx512 where the
CPU has AVX512-BF16: the AVX-512 and AVX2 families sum float16 rows near zero without a
center, by FMAs, and the AVX512-BF16 build bfloat16 ones, by VDPBF16PS (kernel_row_stats.h,
kb_dot_kept); the others sum about a center.
"""

import ml_dtypes
import numpy as np

import fastnorm
import fastnorm._config
from fastnorm import reference

OFFSETS = (0.0, 1e2, 1e3, 1e4, 1e5)
BN_SHAPES = ((32, 64, 56, 56), (64, 3, 224, 224))


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch


def _max_error(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


def row_errors(op, rng, torch):
    """{contender: [max error per offset]} on (64, 4096) rows."""
    families = fastnorm.get_config()["isa_available"]
    table = {f"fastnorm {isa}": [] for isa in families}
    if torch is not None:
        table["torch"] = []
    for offset in OFFSETS:
        x = (offset + rng.standard_normal((64, 4096))).astype(np.float32)
        want = getattr(reference, op)(x.astype(np.float64))
        for isa in families:
            with fastnorm._config.use_isa(isa):
                table[f"fastnorm {isa}"].append(_max_error(getattr(fastnorm, op)(x), want))
        if torch is not None:
            t = torch.from_numpy(x)
            got = (torch.nn.functional.layer_norm(t, (4096,)) if op == "layer_norm"
                   else torch.nn.functional.rms_norm(t, (4096,)))
            table["torch"].append(_max_error(got.numpy(), want))
    return table


def batch_norm_errors(rng, torch, offset=100.0):
    """[(shape, layout, contender, max error)] of BatchNorm training at `offset`."""
    rows = []
    for shape in BN_SHAPES:
        x = (offset + rng.standard_normal(shape)).astype(np.float32)
        want = reference.batch_norm(x.astype(np.float64), training=True)
        for layout in ("nchw", "nhwc"):
            view = x if layout == "nchw" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            axis = 1 if layout == "nchw" else -1
            expect = want if layout == "nchw" else want.transpose(0, 2, 3, 1)
            got = fastnorm.batch_norm(view, training=True, axis=axis)
            rows.append((shape, layout, "fastnorm", _max_error(got, expect)))
            if torch is not None:
                t = torch.from_numpy(x)
                if layout == "nhwc":
                    t = t.contiguous(memory_format=torch.channels_last)
                y = torch.nn.functional.batch_norm(t, None, None, training=True)
                if layout == "nhwc":
                    y = y.permute(0, 2, 3, 1)
                rows.append((shape, layout, "torch", _max_error(y.numpy(), expect)))
    return rows


HALF_OFFSETS = (0.0, 0.5, 1.0, 3.0)


def half_stats_errors(rng, dtype):
    """[(n, family, [(mean error / std, rstd relative error) per offset])]: the worst over
    300 rows of n values of dtype (bfloat16 or float16)."""
    config = fastnorm.get_config()
    families = list(config["isa_available"])
    if "avx512" in families and "avx512_bf16" in config["isa_extensions"]:
        families.append("avx512_nobf16")
    rows = []
    for n in (768, 4096):
        data = [(offset + rng.standard_normal((300, n))).astype(dtype)
                for offset in HALF_OFFSETS]
        for isa in families:
            errors = []
            for x in data:
                h = x.astype(np.float64)
                std = h.std(axis=1)
                rstd = 1.0 / np.sqrt(h.var(axis=1) + 1e-5)
                with fastnorm._config.use_isa(isa):
                    _, mean, got = fastnorm.layer_norm(x, return_stats=True)
                errors.append((float(np.max(np.abs(mean - h.mean(axis=1)) / std)),
                               float(np.max(np.abs(got - rstd) / rstd))))
            rows.append((n, isa, errors))
    return rows


def main():
    rng = np.random.default_rng(0)
    torch = _torch()
    fastnorm.set_num_threads(1)
    print(f"fastnorm {fastnorm.__version__}, kernel families: "
          f"{', '.join(fastnorm.get_config()['isa_available'])}")
    for op in ("layer_norm", "rms_norm"):
        print(f"\n{op}, float32 (64, 4096) rows of offset + N(0, 1): max |error| vs float64")
        print(f"{'contender':18}" + "".join(f"{'offset ' + format(o, 'g'):>14}" for o in OFFSETS))
        for name, errors in row_errors(op, rng, torch).items():
            print(f"{name:18}" + "".join(f"{e:14.2e}" for e in errors))
    print("\nbatch_norm training, float32, offset 100 + N(0, 1): max |error| vs float64")
    for shape, layout, name, error in batch_norm_errors(rng, torch):
        print(f"{'x'.join(map(str, shape)):14} {layout}  {name:10} {error:.2e}")
    for dtype in (ml_dtypes.bfloat16, np.float16):
        print(f"\nlayer_norm statistics, {np.dtype(dtype).name} rows of offset + N(0, 1), 300 "
              "rows: max |mean error| / std, max relative rstd error (float32 results: "
              "rounding 6e-8)")
        print(f"{'n':>5} {'family':14}" + "".join(f"{'offset ' + format(o, 'g'):>20}"
                                                for o in HALF_OFFSETS))
        for n, isa, errors in half_stats_errors(rng, dtype):
            print(f"{n:5} {isa:14}" + "".join(f"{m:10.1e}{r:10.1e}" for m, r in errors))


if __name__ == "__main__":
    main()
