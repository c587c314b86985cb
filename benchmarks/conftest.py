"""Parametrization shared by the pytest-benchmark files (see README.md here).

A benchmark test is marked ``@pytest.mark.fastnorm_bench(op, residual=False)`` and takes
the ``target`` argument; ``pytest_generate_tests`` below expands it over shape × dtype ×
(layout) × contender × threads (× kernel family), with the shapes of ``fastnorm.bench`` (one
list for both tools) and the same contenders as ``python -m fastnorm bench``.  All
contenders of one case run one after another in the same session and share one
pytest-benchmark group, so its table shows them side by side; at the end of the run a
summary table gives the ratios (×copy, ×numpy, ×torch, ×ort) from the medians.

Environment (defaults in brackets):
  FASTNORM_BENCH_SHAPES    all | quick | list like 512x768,32x64x56x56        [all]
  FASTNORM_BENCH_DTYPES    comma list or all                               [float32,float64]
  FASTNORM_BENCH_THREADS   comma list of thread counts                     [1,2 (1 on one core)]
  FASTNORM_BENCH_PEERS     numpy,copy,torch,onnxruntime (installed ones)   [all]
  FASTNORM_BENCH_LAYOUTS   nchw, nhwc, channels_last (see fastnorm.bench)   [nchw,nhwc]
  FASTNORM_BENCH_ISAS      kernel families for fastnorm: active | all | list [active]
  FASTNORM_BENCH_OUT       1: fastnorm writes into out= (copy is np.copyto)  [0: allocating]
"""

import dataclasses
import os

import pytest

import fastnorm
from fastnorm import bench
from fastnorm._bench_contenders import (
    DTYPES, PEERS, ROW_OPS, Case, build_contenders, onnxruntime_skip_reason, peer_available,
)
from fastnorm._config import use_isa


def _env(name, default):
    return os.environ.get(name, "").strip() or default


def _env_list(name, default, allowed=None):
    text = _env(name, default)
    values = list(allowed) if text == "all" and allowed else [v.strip() for v in text.split(",") if v.strip()]
    if allowed is not None:
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise pytest.UsageError(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return values


ROW_SHAPES, BATCH_NORM_SHAPES = bench.parse_shapes(_env("FASTNORM_BENCH_SHAPES", "all"))
BENCH_DTYPES = _env_list("FASTNORM_BENCH_DTYPES", "float32,float64", DTYPES)
THREADS = [int(t) for t in _env_list("FASTNORM_BENCH_THREADS", "1,2" if bench.usable_cores() >= 2 else "1")]
BENCH_PEERS = [p for p in _env_list("FASTNORM_BENCH_PEERS", "all", PEERS) if peer_available(p)]
LAYOUTS = _env_list("FASTNORM_BENCH_LAYOUTS", "nchw,nhwc", bench.LAYOUTS)
USE_OUT = _env("FASTNORM_BENCH_OUT", "0") not in ("0", "no", "false")
_isas = _env("FASTNORM_BENCH_ISAS", "active")
ISAS = (
    [None] if _isas == "active"
    else fastnorm.get_config()["isa_available"] if _isas == "all"
    else _env_list("FASTNORM_BENCH_ISAS", _isas, fastnorm.get_config()["isa_available"])
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fastnorm_bench(op, residual=False): a benchmark over the shapes of `op`"
    )
    bench.steady_allocator()  # the same allocator policy as `python -m fastnorm bench`


@dataclasses.dataclass(frozen=True)
class Target:
    """One contender of one case: what a single benchmark test times."""

    case: Case
    name: str  # contender name: fastnorm, copy, numpy, torch, onnxruntime, unfused
    threads: int
    isa: str = None  # fastnorm only; None = the active kernel family

    @property
    def id(self):
        isa = f"-{self.isa}" if self.isa else ""
        layout = f"-{self.case.layout}" if self.case.layout != "rows" else ""
        return f"{self.case.shape_text}{layout}-{self.case.dtype}-{self.name}{isa}-t{self.threads}"

    @property
    def group(self):
        return f"{self.case.label} {self.case.shape_text} {self.case.dtype}"


def _targets(op, residual):
    cases = bench.make_cases([op], ROW_SHAPES, BATCH_NORM_SHAPES, BENCH_DTYPES, LAYOUTS, residual)
    targets = []
    for case in cases:
        single = [name for name in ("copy", "numpy") if name in BENCH_PEERS]
        targets += [Target(case, name, 1) for name in single]
        for n in THREADS:
            targets += [Target(case, "fastnorm", n, isa) for isa in ISAS]
            if residual:
                targets.append(Target(case, "unfused", n))
            if "torch" in BENCH_PEERS:
                targets.append(Target(case, "torch", n))
            if "onnxruntime" in BENCH_PEERS and onnxruntime_skip_reason(case) is None:
                targets.append(Target(case, "onnxruntime", n))
    return targets


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("fastnorm_bench")
    if marker is None or "target" not in metafunc.fixturenames:
        return
    op, residual = marker.args[0], marker.kwargs.get("residual", False)
    if residual and op not in ROW_OPS:
        raise pytest.UsageError(f"fastnorm_bench: {op} has no residual form")
    targets = _targets(op, residual)
    metafunc.parametrize("target", targets, ids=[t.id for t in targets])


# Tests of one case follow each other, so the case's arrays are made once and kept until
# the next case starts (only one case's arrays are alive at a time).
_current = {"case": None, "contenders": {}}


def _contender(target):
    if _current["case"] != target.case:
        _current["contenders"] = {}  # drop the previous case's arrays first
        contenders = build_contenders(target.case, THREADS, BENCH_PEERS, USE_OUT)
        _current["case"], _current["contenders"] = target.case, {c.key: c for c in contenders}
    return _current["contenders"][f"{target.name}@{target.threads}"]


# Medians collected for the summary: {case: {contender key: (seconds, samples)}}.
_medians = {}


@pytest.fixture
def run_target(benchmark):
    """Time `target` with pytest-benchmark, record GB/s (and ns/row) and its median."""

    def run(target):
        contender = _contender(target)
        benchmark.group = target.group
        benchmark.extra_info.update(bytes=bench.bytes_moved(target.case), threads=target.threads,
                                    isa=target.isa or fastnorm.get_config()["isa"], out=USE_OUT)
        if contender.prepare:
            contender.prepare()
        try:
            if target.isa:
                with use_isa(target.isa):
                    benchmark(contender.call)
            else:
                benchmark(contender.call)
        finally:
            fastnorm.set_num_threads(None)
        if benchmark.stats is None:  # --benchmark-disable
            return
        median = benchmark.stats.stats.median
        benchmark.extra_info["gb_per_s"] = bench.bytes_moved(target.case) / median / 1e9
        if target.case.rows:
            benchmark.extra_info["ns_per_row"] = median * 1e9 / target.case.rows
        if target.isa is None:
            key = f"{target.name}@{target.threads}"
            _medians.setdefault(target.case, {})[key] = (median, benchmark.stats.stats.rounds)

    return run


def pytest_terminal_summary(terminalreporter):
    rows = []
    for case, times in _medians.items():
        rows += bench.table_rows(case, times, THREADS)
    if rows:
        terminalreporter.section("fastnorm ratios (medians of the runs above)")
        terminalreporter.write_line(
            "xcopy: fastnorm / copy time (lower is better); xnumpy, xunfused, xtorch, xort: "
            "their time / fastnorm time (higher = fastnorm faster)"
        )
        terminalreporter.write_line(bench.format_table(rows))
