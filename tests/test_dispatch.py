"""Kernel-family selection: FASTNORM_ISA at import (in a subprocess), get_config, use_isa."""
import json
import subprocess
import sys

import numpy as np
import pytest

import fastnorm
import fastnorm._config
from fastnorm.bench import cpuinfo_field
from fn_testutil import run_python

PREFERENCE = ("avx512", "avx2", "scalar")  # best first, as the dispatcher picks

_CHILD = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastnorm
cfg = fastnorm.get_config()
print(json.dumps({"isa": cfg["isa"], "available": list(cfg["isa_available"]),
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def _import_with_env(value):
    return json.loads(run_python(_CHILD, "FASTNORM_ISA", value).strip().splitlines()[-1])


def _best(available):
    return next(name for name in PREFERENCE if name in available)


def test_get_config_keys_and_types():
    cfg = fastnorm.get_config()
    for key in ("version", "isa", "isa_available", "openmp", "num_threads"):
        assert key in cfg, key
    assert cfg["version"] == fastnorm.__version__
    assert cfg["isa"] in cfg["isa_available"]
    assert "scalar" in cfg["isa_available"]
    assert set(cfg["isa_available"]) <= {"scalar", "avx2", "avx512"}
    assert isinstance(cfg["openmp"], bool)
    assert isinstance(cfg["num_threads"], int) and cfg["num_threads"] >= 1


def test_show_config_prints_the_configuration(capsys):
    fastnorm.show_config()
    printed = capsys.readouterr().out
    cfg = fastnorm.get_config()
    assert cfg["isa"] in printed and str(cfg["version"]) in printed


def test_without_env_the_best_family_is_chosen():
    child = _import_with_env(None)
    assert child["isa"] == _best(child["available"])
    assert not [w for w in child["warnings"] if "FASTNORM" in w]


@pytest.mark.parametrize("name", ["scalar", "avx2", "avx512"])
def test_env_selects_family(name):
    child = _import_with_env(name)
    if name not in child["available"]:
        # Not available here: must fall back to the best one, with a warning naming it.
        assert child["isa"] == _best(child["available"])
        assert any(name in w for w in child["warnings"]), child["warnings"]
        pytest.skip(f"{name} unavailable here; fallback with warning checked")
    assert child["isa"] == name
    assert not [w for w in child["warnings"] if "FASTNORM" in w or name in w], child["warnings"]


def test_env_bogus_warns_and_falls_back_to_best():
    child = _import_with_env("bogus")
    assert child["isa"] == _best(child["available"])
    assert any("bogus" in w for w in child["warnings"]), child["warnings"]


def test_use_isa_switches_and_restores():
    before = fastnorm.get_config()
    for name in before["isa_available"]:
        with fastnorm._config.use_isa(name):
            assert fastnorm.get_config()["isa"] == name
        assert fastnorm.get_config()["isa"] == before["isa"]
        assert fastnorm.get_config()["isa_extensions"] == before["isa_extensions"]


def test_avx512_takes_its_bf16_conversions_where_the_cpu_has_them():
    supported = fastnorm._core.avx512_bf16_supported()
    if "avx512" not in fastnorm.get_config()["isa_available"]:
        assert not supported
        pytest.skip("no AVX-512 here")
    with fastnorm._config.use_isa("avx512"):
        assert fastnorm.get_config()["isa_extensions"] == (["avx512_bf16"] if supported else [])
    if not supported:
        with pytest.raises(RuntimeError, match="AVX512-BF16"):
            with fastnorm._config.use_isa("avx512_nobf16"):
                pass
        return
    with fastnorm._config.use_isa("avx512_nobf16"):
        assert fastnorm.get_config()["isa"] == "avx512"
        assert fastnorm.get_config()["isa_extensions"] == []
        with fastnorm._config.use_isa("avx512"):
            assert fastnorm.get_config()["isa_extensions"] == ["avx512_bf16"]
        assert fastnorm.get_config()["isa_extensions"] == []
    with fastnorm._config.use_isa("avx2"):
        assert fastnorm.get_config()["isa_extensions"] == []


def test_use_isa_restores_after_an_exception():
    before = fastnorm.get_config()["isa"]
    with pytest.raises(ZeroDivisionError):
        with fastnorm._config.use_isa("scalar"):
            1 / 0
    assert fastnorm.get_config()["isa"] == before


def test_use_isa_rejects_unknown_name():
    with pytest.raises(ValueError):
        with fastnorm._config.use_isa("sse9"):
            pass


def test_isa_fixture_really_switches_kernels(isa):
    family = fastnorm._config.ISA_VARIANTS.get(isa, isa)
    assert fastnorm.get_config()["isa"] == family
    assert fastnorm._core.get_isa() == family
    bf16 = isa == "avx512" and fastnorm._core.avx512_bf16_supported()
    assert fastnorm.get_config()["isa_extensions"] == (["avx512_bf16"] if bf16 else [])


def test_info_command_prints_the_configuration():
    proc = subprocess.run([sys.executable, "-m", "fastnorm", "info"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert fastnorm.get_config()["isa"] in proc.stdout


def test_kernels_run_after_env_override_in_subprocess():
    code = ("import numpy as np, fastnorm; x = np.arange(12, dtype=np.float32).reshape(3, 4);"
            "print(repr(fastnorm.layer_norm(x).tolist()))")
    printed = run_python(code, "FASTNORM_ISA", "scalar")
    got = np.array(eval(printed))  # noqa: S307 - our own child's repr of a list
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    want = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _vector_functions(library):
    """{function name: set of register kinds ('ymm', 'zmm', 'mask')} over the disassembly
    of the built extension; None when objdump is missing."""
    import re
    import shutil

    if shutil.which("objdump") is None:
        return None
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library], check=True,
                          capture_output=True, text=True).stdout
    found, name = {}, None
    header = re.compile(r"^[0-9a-f]+ <(.+)>:$")
    for line in text.splitlines():
        match = header.match(line)
        if match:
            name = match.group(1)
            continue
        kinds = {kind for kind, pattern in (("ymm", "%ymm"), ("zmm", "%zmm"), ("mask", "%k"))
                 if pattern in line}
        if kinds and name is not None:
            found.setdefault(name, set()).update(kinds)
    return found


def test_wide_instructions_only_in_their_kernel_family():
    # An installed package must import on any x86-64 CPU: code outside the AVX2/AVX-512
    # kernels (dispatch, glue, and anything run at load time) must be baseline x86-64.
    # A load-time table filler compiled in the AVX-512 file once broke import on AVX2 CPUs.
    found = _vector_functions(fastnorm._core.__file__)
    if found is None:
        pytest.skip("objdump not installed")
    # A family's functions end in its name; its header's primitives (simd_avx2.h,
    # simd_avx512.h: included by that family's file only) start with it, and GCC may
    # leave one out of line when a kernel grows past its inlining budget.  A part GCC
    # splits off a function (".cold", ".part.0", ".isra.0") belongs to that function.
    def family(name, isa):
        name = name.split(".")[0]
        return name.endswith("_" + isa) or name.startswith((isa + "_", "fn_" + isa + "_"))

    strays = {name: kinds for name, kinds in found.items()
              if not (family(name, "avx512") or (family(name, "avx2") and "zmm" not in kinds
                                                 and "mask" not in kinds))}
    assert not strays, f"wide registers outside the kernel families: {strays}"


def test_tuning_follows_the_vendor_cpuid_names():
    vendor = cpuinfo_field("vendor_id")  # what Linux read from CPUID, apart from fastnorm
    if vendor is None:
        pytest.skip("no /proc/cpuinfo vendor_id to compare with")
    expected = "amd" if vendor in ("AuthenticAMD", "HygonGenuine") else "default"
    assert fastnorm._core.get_tuning() == expected
    assert fastnorm.get_config()["tuning"] == expected


def test_set_tuning_switches_and_refuses_unknown_names():
    before = fastnorm._core.get_tuning()
    try:
        for name in ("amd", "default"):
            fastnorm._core.set_tuning(name)
            assert fastnorm._core.get_tuning() == name
            assert fastnorm.get_config()["tuning"] == name
        with pytest.raises(ValueError, match="unknown tuning"):
            fastnorm._core.set_tuning("zen4")
    finally:
        fastnorm._core.set_tuning(before)
