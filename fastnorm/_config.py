"""Runtime configuration: kernel family (ISA) and threads.

The C extension picks the best kernel family the CPU supports when it is imported;
FASTNORM_ISA=scalar|avx2|avx512 overrides that here, at import of fastnorm (an unknown name,
or a family this build or CPU lacks, warns and keeps the best available).

Threads: until set_num_threads is called, kernels get n_threads=0, i.e. OpenMP's default
read at call time, so OMP_NUM_THREADS and threadpoolctl's limits apply.  Small inputs run
on one thread whatever the setting (the C side decides), and so does every call in a
process forked after fastnorm ran threads (a multiprocessing worker started by fork): GNU
OpenMP cannot start threads there (dispatch.c, _core.thread_limit).

Output cache: outputs fastnorm allocates of 32 MB or more are kept for reuse once freed,
up to FASTNORM_OUTPUT_CACHE_MB megabytes (default 256; 0 turns it off), read at import
(fastnorm/_output_cache.h says why).
"""

import contextlib
import numbers
import os
import sys
import warnings

from . import _checks, _core

__all__ = ["get_config", "show_config", "set_num_threads", "get_num_threads"]

ISA_NAMES = ("scalar", "avx2", "avx512")
OUTPUT_CACHE_MB = 256  # default of FASTNORM_OUTPUT_CACHE_MB
# A variant use_isa also takes: the avx512 family without its AVX512-BF16 conversions (the
# exact integer ones), which it otherwise uses where the CPU has them.  Same results; the
# tests run both, and the bench can compare them.
ISA_VARIANTS = {"avx512_nobf16": "avx512"}

# How the active kernel family was chosen: "auto" (best available), "env"
# (FASTNORM_ISA) or "api" (use_isa).
_isa_source = "auto"
# The output cache's limit in MB, as FASTNORM_OUTPUT_CACHE_MB set it at import.
_output_cache_mb = 0


def _apply_isa_env(environ=os.environ):
    """Honour FASTNORM_ISA: switch to the named family, or warn and keep the best."""
    global _isa_source
    raw = environ.get("FASTNORM_ISA", "")
    name = raw.strip().lower()
    if not name:
        return
    best = _core.best_isa()
    if name not in ISA_NAMES:
        warnings.warn(
            f"FASTNORM_ISA={raw!r} is not a kernel family (expected one of "
            f"{', '.join(ISA_NAMES)}); using {best!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    if name not in _core.isa_supported():
        why = "this CPU lacks it" if name in _core.isa_compiled() else "this build did not compile it"
        warnings.warn(
            f"FASTNORM_ISA={name!r} is not available ({why}); using {best!r} instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    _core.set_isa(name)
    _isa_source = "env"


def _apply_output_cache_env(environ=os.environ):
    """Honour FASTNORM_OUTPUT_CACHE_MB (a whole number of megabytes, 0 for no cache); a
    value that is not one warns and keeps the default."""
    global _output_cache_mb
    raw = environ.get("FASTNORM_OUTPUT_CACHE_MB", "").strip()
    megabytes = OUTPUT_CACHE_MB
    if raw:
        try:
            megabytes = int(raw)
            if megabytes < 0:
                raise ValueError
        except ValueError:
            warnings.warn(f"FASTNORM_OUTPUT_CACHE_MB={raw!r} is not a whole number of "
                          f"megabytes; using {OUTPUT_CACHE_MB}", RuntimeWarning, stacklevel=2)
            megabytes = OUTPUT_CACHE_MB
    _output_cache_mb = megabytes
    # the limit in bytes is a size_t: a larger number of megabytes than it holds (2**44 and
    # up) limits nothing more than its largest value does
    _core.set_output_cache_limit(min(megabytes, (1 << 44) - 1) << 20)


@contextlib.contextmanager
def use_isa(name):
    """Run the body with the kernel family `name` (or an ISA_VARIANTS name), then restore
    the previous one (private: tests and the benchmark's --isa use it).  RuntimeError if
    this machine cannot run it, ValueError for an unknown name."""
    global _isa_source
    previous, previous_source = _core.get_isa(), _isa_source
    previous_bf16 = _core.avx512_bf16_enabled()
    _core.set_isa(ISA_VARIANTS.get(name, name))
    if _core.avx512_bf16_supported():
        _core.set_avx512_bf16(name == "avx512")
    elif name in ISA_VARIANTS:
        _core.set_isa(previous)
        raise RuntimeError(f"{name!r} is the avx512 family itself here: this build or CPU "
                           "has no AVX512-BF16 conversions to leave out")
    _isa_source = "api"
    try:
        yield name
    finally:
        _core.set_isa(previous)
        if _core.avx512_bf16_supported():
            _core.set_avx512_bf16(previous_bf16)
        _isa_source = previous_source


def _isa_extensions():
    """Optional instruction-set extensions the family in use takes advantage of."""
    return ["avx512_bf16"] if _core.get_isa() == "avx512" and _core.avx512_bf16_enabled() else []


def set_num_threads(n):
    """Use `n` threads (an int >= 1) for large inputs; None goes back to OpenMP's default
    (OMP_NUM_THREADS, threadpoolctl)."""
    if n is None:
        _checks.num_threads = 0
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"set_num_threads needs an int >= 1 or None, got {n!r}")
    _checks.num_threads = int(n)


def get_num_threads():
    """Threads fastnorm uses for large inputs: the set_num_threads value, else OpenMP's
    current default, at most 1024; 1 in a build without OpenMP, and in a process forked
    after fastnorm ran threads."""
    limit = _core.thread_limit()
    if limit == 1:
        return 1
    return min(_checks.num_threads or _core.default_threads(), limit)


def get_config():
    """The runtime configuration as a dict: version, isa (kernel family in use),
    isa_available (this CPU can run), isa_compiled (in this build), isa_source,
    isa_extensions (e.g. ["avx512_bf16"]: bfloat16 converted by AVX512-BF16 instructions),
    tuning ("amd" on AMD's cores, else "default": a few sizes and hints measured per kind of
    core), openmp, num_threads, output_cache_mb (FASTNORM_OUTPUT_CACHE_MB)."""
    from . import __version__

    return {
        "version": __version__,
        "isa": _core.get_isa(),
        "isa_available": list(_core.isa_supported()),
        "isa_compiled": list(_core.isa_compiled()),
        "isa_source": _isa_source,
        "isa_extensions": _isa_extensions(),
        "tuning": _core.get_tuning(),
        "openmp": bool(_core.openmp_enabled()),
        "num_threads": get_num_threads(),
        "output_cache_mb": _output_cache_mb,
    }


def show_config(file=None):
    """Print get_config() readably (to stdout unless `file` is given)."""
    config = get_config()
    source = {"auto": "best available", "env": "FASTNORM_ISA", "api": "set by use_isa"}
    threads = "set_num_threads" if _checks.num_threads else "OpenMP default"
    if config["openmp"] and _core.thread_limit() == 1:
        threads = "forked after threads ran: GNU OpenMP cannot start them here"
    lines = [
        f"fastnorm {config['version']}",
        f"  kernel family: {config['isa']}"
        + "".join(f" + {ext}" for ext in config["isa_extensions"])
        + f" ({source.get(config['isa_source'], config['isa_source'])})",
        f"  available:     {', '.join(config['isa_available'])}",
        f"  compiled:      {', '.join(config['isa_compiled'])}",
        f"  tuning:        {config['tuning']} ({'AMD' if config['tuning'] == 'amd' else 'other'} cores)",
        f"  OpenMP:        {'yes' if config['openmp'] else 'no (single-threaded build)'}",
        f"  threads:       {config['num_threads']} ({threads if config['openmp'] else 'no OpenMP'})",
        f"  output cache:  {config['output_cache_mb']} MB (FASTNORM_OUTPUT_CACHE_MB)",
    ]
    print("\n".join(lines), file=sys.stdout if file is None else file)


_apply_isa_env()
_apply_output_cache_env()
