"""Random calls of every function with random, often malformed, arguments (run by
test_no_crash.py in a child process, so that a crash fails that test with its seed).

    python tests/fuzz_calls.py SEED CALLS ISA

Each call must return or raise ValueError / TypeError (API.md: "No input, however
malformed, may crash the process").  Prints one line per other exception, then a line
"done" with how many calls of each op returned.  Inputs are small (at most 300000
values), of every supported and some unsupported dtypes, in C order, Fortran order,
reversed, strided, read-only, channels-last and misaligned layouts, with NaN/inf and
huge or tiny values; the arguments are right most of the time and wrong some of it.
"""
import random
import sys
import warnings

import ml_dtypes
import numpy as np

import fastnorm
import fastnorm._config

FLOATS = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)
DTYPES = FLOATS * 3 + (np.int32, np.bool_, np.complex64, object, ">f4", ">f8")
SIZES = (0, 1, 2, 3, 5, 7, 16, 33, 64, 200)


def random_shape(r):
    while True:
        shape = tuple(r.choice(SIZES) for _ in range(r.choice((0, 1, 2, 2, 3, 4, 4, 5))))
        if int(np.prod(shape)) <= 300000:
            return shape


def random_array(r, shape, dtype=None):
    dtype = dtype or r.choice(DTYPES)
    values = np.asarray(np.random.default_rng(r.randrange(1 << 30)).standard_normal(shape))
    values = np.asarray(values * r.choice((1, 1e3, 1e20, 1e-30)) + r.choice((0, 5, -1e4)))
    if values.size and r.random() < 0.1:
        values.flat[r.randrange(values.size)] = r.choice((np.nan, np.inf, -np.inf))
    a = values.astype(dtype)
    k = r.random()
    if a.ndim >= 1 and k < 0.15:
        return a[..., ::-1]
    if a.ndim >= 2 and k < 0.3:
        return np.asfortranarray(a)
    if a.ndim >= 1 and k < 0.4 and a.shape[-1] > 1:
        return a[..., ::2]
    if k < 0.45:
        a.setflags(write=False)
        return a
    if a.ndim == 4 and k < 0.6:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if k < 0.65 and a.dtype != object:  # one byte off alignment
        b = np.empty(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
        b[...] = a
        return b
    return a


def random_param(r, shape):
    k = r.random()
    if k < 0.3:
        return None
    if k < 0.9:
        return random_array(r, shape, r.choice((np.float32, np.float64, np.float16)))
    if k < 0.95:
        return random_array(r, random_shape(r))
    return r.choice(("a", 3, 2.5, object(), [1.0] * (shape[0] if shape else 1)))


def random_out(r, x):
    k = r.random()
    if k < 0.5 or x.dtype == object:
        return None
    if k < 0.65:
        return x
    if k < 0.9:
        return np.empty_like(x)
    return random_array(r, r.choice((x.shape, random_shape(r))))


def call(r, op, shape, x):
    channels = shape[1] if len(shape) > 1 else 3
    row = shape[-1:]
    if op in ("layer_norm", "rms_norm"):
        kw = dict(weight=random_param(r, row), out=random_out(r, x),
                  eps=r.choice((1e-5,) * 6 + (0.0, -1.0, float("nan"), 1e300)),
                  return_stats=r.random() < 0.3)
        axis = r.choice((None,) * 5 + (0, 1, -1, (0, -1), 7))
        if axis is None:
            kw["normalized_shape"] = r.choice((None,) * 3 + (row, shape[-2:], 5, (0,), -1))
        else:
            kw["axis"] = axis
        if r.random() < 0.3:
            kw["residual"] = x if r.random() < 0.3 else random_array(r, shape)
            if r.random() < 0.5:
                kw["residual_out"] = r.choice((x, kw["residual"], random_out(r, x)))
        if op == "layer_norm":
            return fastnorm.layer_norm(x, bias=random_param(r, row), **kw)
        return fastnorm.rms_norm(x, **kw)
    if op == "batch_norm":
        mean = random_param(r, (channels,))
        var = None if mean is None else np.abs(random_array(r, (channels,), np.float32))
        return fastnorm.batch_norm(
            x, mean, var, random_param(r, (channels,)), random_param(r, (channels,)),
            training=r.random() < 0.5, momentum=r.choice((0.1,) * 5 + (0.0, 1.0, 2.0, None)),
            eps=r.choice((1e-5,) * 5 + (0.0, -1.0)), axis=r.choice((1, 1, 1, -1, -1, 0, 5)),
            out=random_out(r, x), return_stats=r.random() < 0.3)
    if op == "group_norm":
        return fastnorm.group_norm(x, r.choice((1, 2, channels, 0, -1, 3.0)),
                                   random_param(r, (channels,)), random_param(r, (channels,)),
                                   eps=r.choice((1e-5, 0.0)))
    if op == "instance_norm":
        return fastnorm.instance_norm(x, random_param(r, (channels,)),
                                      random_param(r, (channels,)))
    if op == "moments":
        return fastnorm.moments(x, axis=r.choice((None, 0, -1, (0, 1), 9)))
    if op == "merge_moments":
        return fastnorm.merge_moments(fastnorm.moments(x),
                                      fastnorm.moments(random_array(r, shape)))
    grad = random_array(r, shape)
    if op == "layer_norm_backward":
        stats = shape[:-1]
        return fastnorm.layer_norm_backward(grad, x, random_array(r, stats),
                                            random_array(r, stats), random_param(r, row))
    if op == "rms_norm_backward":
        return fastnorm.rms_norm_backward(grad, x, random_array(r, shape[:-1]),
                                          random_param(r, row))
    return fastnorm.batch_norm_backward(grad, x, random_array(r, (channels,)),
                                        random_array(r, (channels,)),
                                        random_param(r, (channels,)), axis=r.choice((1, -1)))


OPS = ("layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm", "moments",
       "merge_moments", "layer_norm_backward", "rms_norm_backward", "batch_norm_backward")


def main(seed, calls, isa):
    warnings.simplefilter("ignore")
    returned = dict.fromkeys(OPS, 0)
    with fastnorm._config.use_isa(isa):
        for i in range(calls):
            r = random.Random(seed * 1000003 + i)
            shape = random_shape(r)
            x = random_array(r, shape)
            op = r.choice(OPS)
            try:
                call(r, op, shape, x)
                returned[op] += 1
            except (ValueError, TypeError):
                pass
            except Exception as e:  # noqa: BLE001 - reported, the test fails on it
                print(f"call {i}: {op} {shape} {x.dtype} raised {type(e).__name__}: {e}")
    print("done", " ".join(f"{op}={n}" for op, n in returned.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
