"""Arrays that end where readable memory ends: no kernel may read or write past the last
element of any array, not even inside a vector whose other lanes are masked off (a row's
tail, the 16-bit dtypes' odd last value).  Each array here ends at the last byte before a
page with no access rights, so a stray read or write kills the process; the results must
equal those of the same call on ordinary arrays."""
import ctypes
import mmap

import numpy as np
import pytest

import fastnorm
from fn_testutil import FULL_DTYPES, HALF_DTYPES, assert_same_bits, random_data

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_PROT_NONE = 0


def at_page_end(a):
    """A copy of `a` (C order) whose last byte is followed by a PROT_NONE page."""
    page = mmap.PAGESIZE
    pages = -(-a.nbytes // page) + 1
    buffer = mmap.mmap(-1, pages * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    if _LIBC.mprotect(start + (pages - 1) * page, page, _PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = (pages - 1) * page - a.nbytes
    out = np.frombuffer(buffer, np.uint8, a.nbytes, offset).view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 9, 10, 15, 17, 33, 100, 130, 1001])
def test_row_norms_at_the_end_of_memory(n, dtype, isa, rng):
    x = random_data(rng, (5, n), dtype, offset=1.0)
    r = random_data(rng, (5, n), dtype)
    w = random_data(rng, n, dtype, offset=1.0)
    b = random_data(rng, n, dtype)
    calls = {
        "layer_norm": lambda x, r, w, b, **kw: fastnorm.layer_norm(x, None, w, b, **kw),
        "rms_norm": lambda x, r, w, b, **kw: fastnorm.rms_norm(x, None, w, **kw),
        "layer_norm residual": lambda x, r, w, b, **kw: fastnorm.layer_norm(
            x, None, w, b, residual=r, **kw),
    }
    for name, call in calls.items():
        want_h = np.zeros_like(x)
        kw = {"residual_out": want_h} if "residual" in name else {}
        want = call(x, r, w, b, **kw)
        edge_x, edge_r, edge_w, edge_b = (at_page_end(a) for a in (x, r, w, b))
        assert_same_bits(call(edge_x, edge_r, edge_w, edge_b), want, err_msg=name)
        out, h = at_page_end(np.zeros_like(x)), at_page_end(np.zeros_like(x))
        kw = {"residual_out": h} if "residual" in name else {}
        call(edge_x, edge_r, edge_w, edge_b, out=out, **kw)
        assert_same_bits(out, want, err_msg=name + ", out=")
        if kw:
            assert_same_bits(h, want_h, err_msg=name + ", residual_out=")

@pytest.mark.parametrize("dtype", FULL_DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 1, 7), (3, 4, 3, 3), (2, 6, 5, 5), (4, 5, 9, 11)])
def test_batch_and_group_norm_at_the_end_of_memory(shape, dtype, isa, rng):
    x = random_data(rng, shape, dtype, offset=1.0)
    c = shape[1]
    weight = random_data(rng, c, np.float32, offset=1.0)
    bias = random_data(rng, c, np.float32)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for layout, data in (("NCHW", x), ("NHWC", nhwc)):
        view = (lambda a: a) if layout == "NCHW" else (lambda a: a.transpose(0, 3, 1, 2))
        edge = at_page_end(data)
        for name, call in {
            "batch_norm training": lambda a: fastnorm.batch_norm(a, None, None, weight, bias,
                                                                 training=True),
            "batch_norm eval": lambda a: fastnorm.batch_norm(
                a, np.zeros(c, np.float32), np.ones(c, np.float32), weight, bias),
            "group_norm": lambda a: fastnorm.group_norm(a, 1, weight, bias),
            "instance_norm": lambda a: fastnorm.instance_norm(a),
        }.items():
            assert_same_bits(call(view(edge)), call(view(data)), err_msg=f"{name}, {layout}")
