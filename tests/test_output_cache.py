"""The output cache (fastnorm/_output_cache.h): outputs fastnorm allocates of 32 MB or more
are kept once freed and handed out again for the next output of the same size, never while
anything still refers to them, and within the limit FASTNORM_OUTPUT_CACHE_MB sets."""
import json

import numpy as np
import pytest

import fastnorm
from fastnorm import _core, reference
from fn_testutil import run_python

MIN = _core.OUTPUT_CACHE_MIN_BYTES
ROWS, COLS = 8, MIN // 4 // 8  # float32: exactly the smallest size the cache keeps


@pytest.fixture
def cache_limit():
    """Set the limit for one test; empty the cache before and after."""
    default = fastnorm.get_config()["output_cache_mb"] << 20

    def set_limit(limit):
        _core.set_output_cache_limit(limit)

    _core.set_output_cache_limit(0)
    yield set_limit
    _core.set_output_cache_limit(0)
    _core.set_output_cache_limit(default)


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((ROWS, COLS), dtype=np.float32) * 3 + 1)


def test_a_freed_large_output_is_the_next_ones_memory(x, cache_limit):
    cache_limit(256 << 20)
    y = fastnorm.rms_norm(x)
    address = y.ctypes.data
    assert _core.output_cache_state() == (0, 0)
    del y
    assert _core.output_cache_state() == (1, MIN)
    z = fastnorm.layer_norm(x)
    assert z.ctypes.data == address and z.flags.owndata
    assert _core.output_cache_state() == (0, 0)
    np.testing.assert_allclose(z, reference.layer_norm(x), rtol=1e-5, atol=1e-5)


def test_a_block_is_not_reused_while_a_view_holds_it(x, cache_limit):
    cache_limit(256 << 20)
    y = fastnorm.rms_norm(x)
    view, want = y[1:], y[1:].copy()
    del y
    assert _core.output_cache_state() == (0, 0)
    z = fastnorm.layer_norm(x)
    assert not np.shares_memory(z, view)
    np.testing.assert_array_equal(view, want)
    del view
    assert _core.output_cache_state() == (1, MIN)
    del z


def test_small_outputs_and_other_sizes_do_not_use_it(x, cache_limit):
    cache_limit(256 << 20)
    small = fastnorm.layer_norm(x[:, : COLS // 2])
    del small
    assert _core.output_cache_state() == (0, 0)
    y = fastnorm.layer_norm(x)
    del y
    bigger = fastnorm.layer_norm(np.concatenate([x, x[:1]]))  # one row more: another size
    assert _core.output_cache_state() == (1, MIN)
    del bigger
    assert _core.output_cache_state() == (2, MIN + MIN // ROWS * (ROWS + 1))


def test_at_most_the_limit_and_four_blocks_oldest_released_first(x, cache_limit):
    cache_limit(2 * MIN)
    first, second, third = (fastnorm.rms_norm(x) for _ in range(3))
    addresses = [y.ctypes.data for y in (first, second, third)]
    del first, second, third  # freed in this order
    assert _core.output_cache_state() == (2, 2 * MIN)
    # the newest block first; the first one freed was released
    y = fastnorm.rms_norm(x)
    assert y.ctypes.data == addresses[2]
    z = fastnorm.rms_norm(x)
    assert z.ctypes.data == addresses[1]
    assert _core.output_cache_state() == (0, 0)
    del y, z
    cache_limit(8 * MIN)
    outputs = [fastnorm.rms_norm(x) for _ in range(6)]
    del outputs[:]
    assert _core.output_cache_state() == (4, 4 * MIN)
    cache_limit(MIN)  # lowering the limit releases what is over it
    assert _core.output_cache_state() == (1, MIN)


def test_no_limit_no_cache(x, cache_limit):
    cache_limit(256 << 20)
    y = fastnorm.rms_norm(x)
    del y
    assert _core.output_cache_state() == (1, MIN)
    cache_limit(0)
    assert _core.output_cache_state() == (0, 0)
    y = fastnorm.rms_norm(x)
    del y
    assert _core.output_cache_state() == (0, 0)


def test_every_allocating_path_uses_it(x, cache_limit):
    """The one-step rows() and batch_norm() calls and the general Python path."""
    cache_limit(256 << 20)
    x4 = x.reshape(ROWS, 16, COLS // 16, 1)
    calls = [
        lambda: fastnorm.layer_norm(x, weight=np.ones(COLS, np.float32)),
        lambda: fastnorm.layer_norm(x, return_stats=True)[0],  # general path
        lambda: fastnorm.rms_norm(x, axis=1),  # general path
        lambda: fastnorm.batch_norm(x4, None, None, training=True),
        lambda: fastnorm.group_norm(x4, 4),
    ]
    for call in calls:
        y = call()
        address = y.ctypes.data
        del y
        assert _core.output_cache_state() == (1, MIN)
        y = call()
        assert y.ctypes.data == address
        del y


def test_an_output_from_the_cache_is_an_ordinary_array(x, cache_limit):
    cache_limit(256 << 20)
    y = fastnorm.rms_norm(x)
    del y
    y = fastnorm.rms_norm(x)  # from the cache
    want = y[:1].copy()
    y.resize((ROWS + 1, COLS), refcheck=False)  # reallocated by NumPy's own handler
    np.testing.assert_array_equal(y[:1], want)
    y[ROWS:] = 0
    del y
    assert _core.output_cache_state() == (1, MIN // ROWS * (ROWS + 1))


_CHILD = """
import json, warnings
import numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastnorm
from fastnorm import _core
y = fastnorm.rms_norm(np.ones((8, _core.OUTPUT_CACHE_MIN_BYTES // 32), np.float32))
del y
print(json.dumps({"mb": fastnorm.get_config()["output_cache_mb"],
                  "held": _core.output_cache_state()[1],
                  "warnings": [str(w.message) for w in caught]}))
"""


@pytest.mark.parametrize("value, mb, warns", [
    (None, 256, False), ("0", 0, False), ("64", 64, False), ("-1", 256, True), ("lots", 256, True),
    (str(2 ** 44), 2 ** 44, False), ("1" + "0" * 30, 10 ** 30, False),  # past a size_t of bytes
])
def test_fastnorm_output_cache_mb(value, mb, warns):
    got = json.loads(run_python(_CHILD, "FASTNORM_OUTPUT_CACHE_MB", value).strip().splitlines()[-1])
    assert got["mb"] == mb
    assert got["held"] == (MIN if mb else 0)
    assert any("FASTNORM_OUTPUT_CACHE_MB" in w for w in got["warnings"]) == warns


def test_empty_takes_what_numpy_empty_takes(cache_limit):
    cache_limit(256 << 20)
    for shape in (np.int64(MIN // 4), (np.int64(8), MIN // 32), [8, MIN // 32]):
        y = _core.empty(shape, np.float32)
        assert y.nbytes == MIN and y.dtype == np.float32
        del y
        assert _core.output_cache_state() == (1, MIN)
    assert _core.empty((2, 3), "float64").shape == (2, 3)
    with pytest.raises(ValueError):
        _core.empty((-1, 4), np.float32)
    assert _core.output_cache_state() == (1, MIN)


def test_the_c_order_copy_of_a_large_transposed_input_comes_from_the_cache(x, cache_limit):
    # layer_norm copies a Fortran-order input to C order first (_checks.contiguous): that
    # temporary is taken from the cache and goes back to it when the call returns
    cache_limit(256 << 20)
    xf = np.asfortranarray(x.reshape(ROWS * 64, COLS // 64))  # both axes long: tiles
    out = np.empty(xf.shape, np.float32)
    fastnorm.layer_norm(xf, out=out)
    assert _core.output_cache_state() == (1, MIN)
    fastnorm.layer_norm(xf, out=out)  # the next call's copy takes that block and returns it
    assert _core.output_cache_state() == (1, MIN)
    np.testing.assert_allclose(out, reference.layer_norm(np.ascontiguousarray(xf)), rtol=1e-5,
                               atol=1e-5)
