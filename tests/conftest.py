"""Shared fixtures of the fastnorm test suite.

- ``isa``: every test of kernel results runs once per kernel family ("scalar", "avx2",
  "avx512"), and once more as "avx512_nobf16" (the avx512 family without the AVX512-BF16
  conversions it uses where the CPU has them).  A family this build or this CPU lacks
  shows up as a skip whose reason names it, never as a silent pass.
- ``rng``: a NumPy Generator seeded from FASTNORM_TEST_SEED (default below) and the test's
  node id, so every test draws the same numbers whatever subset or order runs.
- ``tol``: the one dtype-keyed tolerance table (TOLERANCES below).
- ``num_threads``: restores fastnorm's thread count after a test that changes it.
- ``accuracy_log``: tests record measured errors there; they are printed in the terminal
  summary of every run (no ``-s`` needed) and also attached with ``record_property``.
- Hypothesis profiles, picked with HYPOTHESIS_PROFILE: "dev" (default), "ci" (fewer
  examples), "thorough" (many).  Deadlines are off: kernels may run on a loaded machine.
"""
import os
import sys
import zlib
from collections import namedtuple

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastnorm
import fastnorm._config

# Test modules import the small helper module that lives beside this file; make that work
# under every pytest import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fn_testutil import TEST_SEED  # noqa: E402  (FASTNORM_TEST_SEED, read in one place)

ISA_NAMES = ("scalar", "avx2", "avx512", "avx512_nobf16")

Tol = namedtuple("Tol", "rtol atol")

# Tolerance of a fastnorm result against the float64 reference rounded to the result's
# dtype, |got - want| <= atol + rtol * |want|, on data of unit scale (outputs up to ~20
# with random weight/bias).  One table for the whole suite; tests that quote a stricter
# figure from the issues (1e-6 / 2e-6 accuracy) state it where they use it.
TOLERANCES = {
    # float32: the kernels keep float32 lanes but merge blocks in float64 and subtract the
    # mean as an exact pair, so the output is off by ~1 ulp per operation of the final
    # (h - mean) * rstd * w + b chain: a few ulps, i.e. a few 1e-7 relative.  1e-6 covers
    # 4-8 ulps at unit scale and still catches any float32-accumulation error (PyTorch's
    # float32 Welford is off by 1e-3 on shifted rows).
    np.dtype(np.float32): Tol(rtol=1e-6, atol=1e-6),
    # float64: float64 lanes end to end; the error is a few 1e-16 times the number of
    # merge levels.  1e-12 leaves room for long rows (2^20) and cancellation with bias.
    np.dtype(np.float64): Tol(rtol=1e-12, atol=1e-12),
    # float16: float32 accumulation, one rounding on store, the reference rounds its float64
    # result once too: the two differ by at most one float16 ulp, which is at most 2^-10 of
    # the value.  atol covers results near 0 where w*n + b cancels: float32 noise of O(1)
    # terms (~1e-7) can span several float16 subnormal/small-value ulps.
    np.dtype(np.float16): Tol(rtol=2.0**-10, atol=1e-6),
    # bfloat16: same reasoning with an 8-bit significand: one ulp is at most 2^-7 relative.
    np.dtype(ml_dtypes.bfloat16): Tol(rtol=2.0**-7, atol=1e-6),
}

settings.register_profile("dev", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=12, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _isa_skip_reason(name):
    """Why the kernel family `name` cannot run here, or None when it can."""
    if name == "avx512_nobf16":
        if fastnorm._core.avx512_bf16_supported():
            return None
        return ("no AVX512-BF16 conversions in this build or CPU: the avx512 runs "
                "already take the integer ones")
    config = fastnorm.get_config()
    if name in config["isa_available"]:
        return None
    try:
        compiled = fastnorm._core.isa_compiled()
    except Exception:  # noqa: BLE001 - only used to word the skip reason
        compiled = None
    if compiled is not None and name not in compiled:
        return f"{name} kernels were not compiled into this build (compiled: {compiled})"
    return (f"{name} kernels unavailable: this CPU lacks {name.upper()} "
            f"(available: {config['isa_available']})")


@pytest.fixture(params=ISA_NAMES)
def isa(request):
    """Run the test with the kernel family request.param active."""
    reason = _isa_skip_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    with fastnorm._config.use_isa(request.param):
        yield request.param


@pytest.fixture(params=["default", "amd"])
def tuning(request):
    """Run the test in the tuning request.param (dispatch.c: which rows take their
    statistics a row ahead or go in groups, the center hand-off, prefetches), whatever
    this CPU's vendor."""
    before = fastnorm._core.get_tuning()
    fastnorm._core.set_tuning(request.param)
    try:
        yield request.param
    finally:
        fastnorm._core.set_tuning(before)


@pytest.fixture(params=[name for name in ISA_NAMES if name != "scalar"])
def simd_isa(request):
    """A SIMD kernel family name (not entered: cross-ISA tests switch themselves)."""
    reason = _isa_skip_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def rng(request):
    """A Generator fixed by FASTNORM_TEST_SEED and this test's id."""
    return np.random.default_rng([TEST_SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(scope="session")
def tol():
    """The dtype-keyed tolerance table: tol[np.dtype] -> Tol(rtol, atol)."""
    return TOLERANCES


@pytest.fixture
def num_threads():
    """Yield fastnorm.set_num_threads and restore the previous thread count afterwards."""
    previous = fastnorm.get_num_threads()
    yield fastnorm.set_num_threads
    fastnorm.set_num_threads(previous)


_ACCURACY_LINES = []


@pytest.fixture
def accuracy_log(request, record_property):
    """Call accuracy_log(label, value): shown in the terminal summary and the junit XML."""
    def log(label, value):
        record_property(label, value)
        _ACCURACY_LINES.append(f"{request.node.nodeid}: {label} = {value:.3e}")
    return log


def pytest_report_header(config):
    cfg = fastnorm.get_config()
    return [f"fastnorm {cfg['version']}: isa={cfg['isa']} available={cfg['isa_available']} "
            f"openmp={cfg['openmp']} threads={cfg['num_threads']}",
            f"FASTNORM_TEST_SEED={TEST_SEED} "
            f"HYPOTHESIS_PROFILE={os.environ.get('HYPOTHESIS_PROFILE', 'dev')}"]


def pytest_terminal_summary(terminalreporter):
    if _ACCURACY_LINES:
        terminalreporter.section("fastnorm measured accuracy")
        for line in _ACCURACY_LINES:
            terminalreporter.write_line(line)
