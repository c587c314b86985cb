"""bench.measure: every timed sample follows WARM_CALLS untimed calls of the same contender,
so no contender is timed straight after another one's traffic (on a VM with a large L3,
one warm call after NumPy's temporaries still left a 25 MB input half cold)."""

import time

from fastnorm import bench
from fastnorm._bench_contenders import Contender


def test_every_sample_follows_warm_calls_of_its_own_contender():
    trace = []

    def slow(name):  # slower than a sample, so each sample is one timed call
        def call():
            trace.append(name)
            time.sleep(bench.SAMPLE_SECONDS * 1.5)

        return call

    contenders = [Contender("fastnorm", 1, slow("a")), Contender("copy", 1, slow("b"))]
    result = bench.measure(contenders, min_rounds=3, min_time=0.0)
    assert result["fastnorm@1"][1] == 3 and result["copy@1"][1] == 3
    # calibration: a first call and one timed call each, then the rounds
    rounds = trace[4:]
    assert bench.WARM_CALLS >= 1
    run = bench.WARM_CALLS + 1
    assert len(rounds) == 2 * 3 * run
    for start in range(0, len(rounds), run):
        block = rounds[start:start + run]
        assert block == [block[0]] * run, f"a sample mixed contenders: {rounds}"
    firsts = [rounds[start] for start in range(0, len(rounds), run)]
    assert firsts.count("a") == 3 and firsts.count("b") == 3
