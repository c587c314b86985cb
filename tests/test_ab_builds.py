"""benchmarks/ab_builds.py, the A/B of two builds of the extension in one process: it
refuses two identical files unless asked for an A/A run, parses its cases, and reports
whether the two builds' outputs are the same bits."""
import argparse
import importlib.util
import os

import numpy as np
import pytest

import fastnorm._core as core

_AB_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "ab_builds.py")
_spec = importlib.util.spec_from_file_location("ab_builds", _AB_PATH)
ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ab)

CASES = ["layer_norm:float32:64x768", "rms_norm:bfloat16:8x100:2", "batch_norm_eval:float16:2x3x7x7",
         "batch_norm_train:float32:4x8x49", "moments:float64:3x5x17"]


class _OneBitOff:
    """A build whose first output differs from `core`'s by one bit."""
    OUTPUT = {"norm": 8, "affine": 5, "batch_norm_train": 5, "moments": 5}  # its argument

    def __getattr__(self, name):
        def call(*args):
            getattr(core, name)(*args)
            args[self.OUTPUT[name]].reshape(-1).view(np.uint8)[0] ^= 1
        return call


def test_identical_builds_are_refused(capsys):
    with pytest.raises(SystemExit) as raised:
        ab.main([core.__file__, core.__file__, CASES[0]])
    assert raised.value.code == 2
    assert "same file contents" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["layer_norm:float32", "norm:float32:4x4", "rms_norm:int8:4x4",
                                  "batch_norm_train:float32:4x4", "moments:float32:4x4x4:x"])
def test_bad_cases_are_refused(text):
    with pytest.raises((argparse.ArgumentTypeError, ValueError)):
        ab.parse_case(text)


def test_a_case_is_op_dtype_shape_and_threads():
    assert ab.parse_case("rms_norm:bfloat16:8x100:2") == ("rms_norm", "bfloat16", (8, 100), 2)
    assert ab.parse_case("moments:float64:3x5x17") == ("moments", "float64", (3, 5, 17), 1)


@pytest.mark.parametrize("case", CASES)
def test_outputs_are_compared_bit_for_bit(case):
    parsed = ab.parse_case(case)
    old, new, same, _ = ab.run_case([core, core], parsed, samples=1, sample_bytes=1)
    assert same and old > 0 and new > 0
    _, _, same, _ = ab.run_case([core, _OneBitOff()], parsed, samples=1, sample_bytes=1)
    assert not same


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer run: a second instrumented copy of the extension "
                           "would register its globals twice")
def test_a_a_run_loads_two_copies_and_gets_the_same_bits(capsys):
    assert ab.main([core.__file__, core.__file__, "--allow-same", "--samples", "1", CASES[0],
                    CASES[3]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("kernels: ")
    rows = [line for line in lines if line.startswith(("layer_norm", "batch_norm_train"))]
    assert len(rows) == 2 and all(line.split()[-2] == "yes" for line in rows), lines


@pytest.mark.parametrize("offset", [1.0, 10.0])
def test_offset_sets_the_inputs_mean(offset):
    _, x, _ = ab.case_call("layer_norm", "float32", (64, 768), 1, offset)
    assert abs(float(x.mean()) - offset) < 0.05  # 49152 values of spread 2: the mean's sd is 0.009
    assert 1.9 < float(x.std()) < 2.1


@pytest.mark.parametrize("line_offset", [0, 16, 32, 48])
def test_line_offset_places_x_and_keeps_its_values(line_offset):
    _, x, _ = ab.case_call("moments", "float32", (4, 8, 49), 1, line_offset=line_offset)
    _, where_numpy_put_it, _ = ab.case_call("moments", "float32", (4, 8, 49), 1)
    assert x.ctypes.data % 64 == line_offset
    assert np.array_equal(x, where_numpy_put_it)
    *_, reported = ab.run_case([core, core], ab.parse_case("moments:float32:4x8x49"), samples=1,
                               line_offset=line_offset, sample_bytes=1)
    assert reported == line_offset
