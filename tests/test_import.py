"""What `import fastnorm` loads: ml_dtypes (most of a second to import) only once bfloat16
is in play, and bfloat16 still works whenever it comes (fresh interpreters: this one has
imported ml_dtypes long ago)."""
import importlib.util

import pytest

from fn_testutil import run_python

# float32 work of every kind, then whether ml_dtypes was imported on the way
FLOAT_CALLS = """
import sys
import numpy as np
import fastnorm
from fastnorm import reference
x = np.random.default_rng(0).standard_normal((4, 3, 8)).astype(np.float32)
fastnorm.layer_norm(x)
fastnorm.layer_norm(x, axis=(1, 2), weight=np.ones((3, 8)))
fastnorm.rms_norm(x.astype(np.float16))
fastnorm.batch_norm(x, training=True)
fastnorm.group_norm(x, 3)
fastnorm.LayerNorm(8)(x)
fastnorm.BatchNorm1d(3).eval()(x)
reference.layer_norm(x)
for bad in (x.astype(np.int32), x.astype(np.complex64)):
    try:
        fastnorm.layer_norm(bad)
    except TypeError:
        pass
    else:
        raise AssertionError("no TypeError for " + str(bad.dtype))
print("ml_dtypes" in sys.modules)
"""

# bfloat16 arrays made after fastnorm's import and its first calls, through the one-step
# path (_core, which must not take the general path's detour), the general one (an axis tuple), a bfloat16 weight for float32 data, the
# reference and a layer: the largest difference from the reference, in float64
BFLOAT16_LATER = """
import numpy as np
import fastnorm
from fastnorm import reference
from fastnorm import _functional
x = np.random.default_rng(1).standard_normal((4, 3, 8)).astype(np.float32)
fastnorm.layer_norm(x)
import ml_dtypes
xb = x.astype(ml_dtypes.bfloat16)
general, general_calls = _functional._row_norm, []
_functional._row_norm = lambda *a, **k: general_calls.append(1) or general(*a, **k)
fastnorm.layer_norm(xb)  # the one-step path (_core) knows bfloat16 too
assert general_calls == [], "bfloat16 missed the one-step path"
wb = np.linspace(0.5, 2, 8).astype(ml_dtypes.bfloat16)
pairs = [
    (fastnorm.layer_norm(xb), reference.layer_norm(xb)),
    (fastnorm.layer_norm(xb, axis=(1, 2)), reference.layer_norm(xb, axis=(1, 2))),
    (fastnorm.rms_norm(xb), reference.rms_norm(xb)),
    (fastnorm.layer_norm(x, weight=wb), reference.layer_norm(x, weight=wb)),
    (fastnorm.LayerNorm(8, dtype=xb.dtype)(xb), reference.layer_norm(xb)),
]
assert all(got.dtype == want.dtype for got, want in pairs), [p[0].dtype for p in pairs]
# each error over its dtype's bound: one bfloat16 step at 1 is 2**-7, and |y| < 3; the
# float32 output (bfloat16 weight) within a few float32 steps
bound = {np.dtype(np.float32): 3 * 2.0**-21, xb.dtype: 3 * 2.0**-7}
print(max(float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / bound[got.dtype]
          for got, want in pairs))
"""

# a layer asked for dtype="bfloat16" by name, before anything imported ml_dtypes
BFLOAT16_BY_NAME = """
import numpy as np
import fastnorm
layer = fastnorm.RMSNorm(8, dtype="bfloat16")
y = layer(np.ones((2, 8), layer.dtype))
print(layer.dtype, layer.weight.dtype, y.dtype, float(y.astype(np.float32).max()))
"""


def test_float_work_does_not_import_ml_dtypes():
    assert run_python(FLOAT_CALLS).split() == ["False"]


def test_bfloat16_arrays_made_after_import_are_taken():
    assert float(run_python(BFLOAT16_LATER)) <= 1  # each pair within its dtype's bound


def test_bfloat16_by_name_imports_ml_dtypes():
    assert run_python(BFLOAT16_BY_NAME).split() == ["bfloat16", "bfloat16", "bfloat16", "1.0"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_bfloat16_tensor_before_ml_dtypes():
    code = """
import torch
import fastnorm
x = torch.arange(16, dtype=torch.float32).reshape(2, 8).bfloat16()
y = fastnorm.layer_norm(x)
print(y.dtype, y.shape)
"""
    assert run_python(code).split() == ["bfloat16", "(2,", "8)"]
