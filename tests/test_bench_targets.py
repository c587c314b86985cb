"""benchmarks/targets.py, the report of the performance issue's targets over bench runs: a
figure past its bound is marked in the run where it is, one within it is not, and runs
without --out (no np.copyto baseline) are refused."""
import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "targets.py")
_spec = importlib.util.spec_from_file_location("bench_targets", _PATH)
targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(targets)


def _row(op, shape, threads, seconds, xcopy, xtorch=2.0, xort=2.0):
    return {"op": op, "shape": shape, "dtype": "float32", "threads": threads,
            "fastnorm_s": seconds, "xcopy": xcopy, "xtorch": xtorch, "xort": xort}


def _write(tmp_path, name, rows, out=True):
    path = tmp_path / name
    path.write_text(json.dumps({"options": {"out": out}, "rows": rows}))
    return str(path)


def test_cells_past_their_bounds_are_marked_in_their_run(tmp_path):
    run_a = [_row("layer_norm", "512x768", 1, 100e-6, 1.25),
             _row("layer_norm", "512x768", 2, 40e-6, 0.5),
             _row("layer_norm", "1x768", 1, 600e-9, 1.5),
             _row("rms_norm", "64x768", 1, 7e-6, 1.4, xtorch=2.5)]
    run_b = [_row("layer_norm", "512x768", 1, 100e-6, 1.35),  # past 1.30
             _row("layer_norm", "512x768", 2, 90e-6, 0.9),  # past 0.80, and no 1.8x speed-up
             _row("layer_norm", "1x768", 1, 1600e-9, 1.5),  # past 1.5 us
             _row("rms_norm", "64x768", 1, 7e-6, 1.4, xtorch=3.5, xort=0.9)]  # ONNX Runtime ahead
    lines, missed = targets.report(targets.load([_write(tmp_path, "a.json", run_a),
                                                 _write(tmp_path, "b.json", run_b)]))
    text = "\n".join(lines)
    assert "layer_norm 512x768 1t" in text and "1.25 / 1.35!" in text
    assert "0.5 / 0.9!" in text
    assert "600 / 1.6e+03!" in text
    assert any(m.startswith("rms_norm 64x768 1t xtorch: 2.5! / 3.5") for m in missed)
    assert any(m.startswith("rms_norm 64x768 1t xort: 2 / 0.9!") for m in missed)
    assert any(m.startswith("layer_norm 512x768 2t over 1t: 2.5 / 1.11!") for m in missed)
    assert len(missed) == 6


def test_figures_within_bounds_are_not_missed(tmp_path):
    rows = [_row("rms_norm", "32768x768", 1, 5e-3, 0.99, xtorch=3.1),
            _row("rms_norm", "32768x768", 2, 3e-3, 0.74, xtorch=3.1)]
    lines, missed = targets.report(targets.load([_write(tmp_path, "a.json", rows)]))
    assert missed == []
    assert "0.99\n" in "\n".join(lines) + "\n"


def test_a_run_without_out_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--out"):
        targets.load([_write(tmp_path, "a.json", [], out=False)])
