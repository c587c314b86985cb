"""Results do not depend on the thread count; concurrent Python calls equal sequential ones.

fastnorm splits work into chunks fixed by the problem size and merges partial statistics
in index order, so 1 and 2 OpenMP threads must give bitwise identical results.  The
inputs are large enough to cross the "run on one thread" threshold.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import fastnorm
from fn_testutil import assert_same_bits, random_data, run_python


# A build without OpenMP (FASTNORM_NO_OPENMP=1) runs everything on one thread.
_MAX_THREADS = 64 if fastnorm.get_config()["openmp"] else 1


def _with_threads(set_threads, n, fn):
    set_threads(n)
    assert fastnorm.get_num_threads() == min(n, _MAX_THREADS)
    return fn()


def _thread_cases(rng):
    """name -> zero-argument call returning a tuple of arrays (inputs built once)."""
    rows = random_data(rng, (2048, 1024), np.float32, offset=10.0)
    long_row = random_data(rng, (1, 1 << 20), np.float32, offset=1e3)
    long_row64 = long_row.astype(np.float64)
    # rows longer than a segment, several batches (api_norm.c's fn_norm_long_rows: on 2 threads
    # the next batch's statistics share a loop with this batch's normalize pass): 80 KB
    # rows in batches of 13, the last batch one row; 1.2 MB rows one a batch
    long_rows = random_data(rng, (40, 20000), np.float32, offset=1e3)
    w20000 = random_data(rng, 20000, np.float32, offset=1.0)
    wide = random_data(rng, (6, 300000), np.float32, offset=10.0)
    wide_r = random_data(rng, (6, 300000), np.float32)
    w300000 = random_data(rng, 300000, np.float32, offset=1.0)
    nchw = random_data(rng, (16, 32, 32, 32), np.float32, offset=100.0)
    nhwc = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    small = random_data(rng, (16, 32, 14, 14), np.float32, offset=100.0)  # gathered rows
    small_nhwc = np.ascontiguousarray(small.transpose(0, 2, 3, 1))
    # 196 rows of 1000 channels: single rows, not super-rows of 2
    wide_nhwc = random_data(rng, (1, 14, 14, 1000), np.float32, offset=100.0)
    few_rows_nhwc = random_data(rng, (1, 7, 7, 1024), np.float32, offset=100.0)
    maps7 = random_data(rng, (32, 64, 7, 7), np.float32, offset=100.0)  # a sample a thread
    maps4 = random_data(rng, (16, 512, 4, 4), np.float32, offset=100.0)
    w = random_data(rng, 1024, np.float32, offset=1.0)
    # under 4 MB with 3 KB rows: statistics one row ahead, each thread over its own share
    short = random_data(rng, (256, 768), np.float32, offset=10.0)
    short_r = random_data(rng, (256, 768), np.float32)
    w768 = random_data(rng, 768, np.float32, offset=1.0)
    # rows of a few vectors (rows_short, a block of 16 or 32 rows a step): 4099 rows split
    # 2049 / 2050, so the second thread's blocks hold other rows in each lane
    few = random_data(rng, (4099, 30), np.float32, offset=10.0)
    few_r = random_data(rng, (4099, 30), np.float32)
    w30 = random_data(rng, 30, np.float32, offset=1.0)
    # 15 channel rows, split 7 / 8 between two threads: the second starts mid-cycle
    odd = random_data(rng, (5, 3, 50, 50), np.float32, offset=100.0)
    odd_stats = [np.array(v, np.float32) for v in ([99, 100, 101], [0.5, 1, 2], [1, 2, 3],
                                                   [0, 1, -1])]

    def rms_residual(x, r, w):
        h = np.empty_like(x)
        y, rstd = fastnorm.rms_norm(x, None, w, residual=r, residual_out=h, return_stats=True)
        return y, rstd, h

    def bn(x, axis):
        rm, rv = np.zeros(32, np.float32), np.ones(32, np.float32)
        y, mean, rstd = fastnorm.batch_norm(x, rm, rv, training=True, axis=axis,
                                            return_stats=True)
        return y, mean, rstd, rm, rv

    return {
        "layer_norm rows": lambda: fastnorm.layer_norm(rows, None, w, w, return_stats=True),
        "rms_norm rows": lambda: fastnorm.rms_norm(rows, None, w, return_stats=True),
        "layer_norm short rows": lambda: fastnorm.layer_norm(short, None, w768, w768,
                                                             return_stats=True),
        "rms_norm short rows": lambda: fastnorm.rms_norm(short, None, w768, return_stats=True),
        "rms_norm short rows, residual": lambda: rms_residual(short, short_r, w768),
        "layer_norm rows of 30": lambda: fastnorm.layer_norm(few, None, w30, w30,
                                                             return_stats=True),
        "rms_norm rows of 30, residual": lambda: rms_residual(few, few_r, w30),
        "layer_norm 1x2^20": lambda: fastnorm.layer_norm(long_row, return_stats=True),
        "layer_norm 1x2^20 f64": lambda: fastnorm.layer_norm(long_row64, return_stats=True),
        "rms_norm 1x2^20": lambda: fastnorm.rms_norm(long_row, return_stats=True),
        "layer_norm 40x20000": lambda: fastnorm.layer_norm(long_rows, None, w20000, w20000,
                                                           return_stats=True),
        "rms_norm 6x300000, residual": lambda: rms_residual(wide, wide_r, w300000),
        "layer_norm axis=1": lambda: (fastnorm.layer_norm(nchw, axis=1),),
        "batch_norm NCHW": lambda: bn(nchw, 1),
        "batch_norm NHWC": lambda: bn(nhwc, -1),
        "batch_norm NCHW 14x14": lambda: bn(small, 1),
        # 3136 rows of 32 channels: 7 chunks of 512 rows evened out to 8 of 392
        "batch_norm NHWC 14x14": lambda: bn(small_nhwc, -1),
        "batch_norm NCHW one sample": lambda: bn(nchw[:1], 1),
        "batch_norm NHWC 1000 channels": lambda: fastnorm.batch_norm(
            wide_nhwc, training=True, axis=-1, return_stats=True),
        "batch_norm eval": lambda: (fastnorm.batch_norm(nchw, np.full(32, 100, np.float32),
                                                        np.ones(32, np.float32)),),
        "batch_norm eval 5x3": lambda: (fastnorm.batch_norm(odd, *odd_stats),),
        "batch_norm NCHW 5x3": lambda: (fastnorm.batch_norm(odd, None, None, *odd_stats[2:],
                                                            training=True),),
        "group_norm": lambda: (fastnorm.group_norm(nchw, 8),),
        # channels-last views: samples of up to 2 MB go one a thread (statistics, then
        # the sample from cache); one sample of 32768 values shares its rows
        "group_norm channels-last": lambda: (fastnorm.group_norm(nhwc.transpose(0, 3, 1, 2), 8),),
        "group_norm channels-last, one sample": lambda: (
            fastnorm.group_norm(nhwc[:1].transpose(0, 3, 1, 2), 8),),
        "group_norm channels-last, one sample of 196 rows": lambda: (
            fastnorm.group_norm(wide_nhwc.transpose(0, 3, 1, 2), 8),),
        # 49 rows of 1024 channels: one thread, the sample from cache, whatever is asked
        "group_norm channels-last, one sample of 49 rows": lambda: (
            fastnorm.group_norm(few_rows_nhwc.transpose(0, 3, 1, 2), 32),),
        "group_norm 7x7, one channel a group": lambda: (fastnorm.group_norm(maps7, 64),),
        "group_norm 4x4, 16 channels a group": lambda: (fastnorm.group_norm(maps4, 32),),
        "group_norm channels-last 14x14": lambda: (
            fastnorm.group_norm(small_nhwc.transpose(0, 3, 1, 2), 8),),
        "moments all": lambda: fastnorm.moments(long_row),
        "moments channels": lambda: fastnorm.moments(nchw, axis=(0, 2, 3)),
        "moments channels-last": lambda: fastnorm.moments(nhwc, axis=(0, 1, 2)),
    }


def test_one_and_two_threads_bitwise_equal(isa, rng, num_threads):
    for name, call in _thread_cases(rng).items():
        one = _with_threads(num_threads, 1, call)
        two = _with_threads(num_threads, 2, call)
        for i, (a, b) in enumerate(zip(one, two)):
            assert_same_bits(np.asarray(a), np.asarray(b), err_msg=f"{name} output {i}")


def test_set_num_threads_round_trip(num_threads):
    num_threads(1)
    assert fastnorm.get_num_threads() == 1
    num_threads(2)
    assert fastnorm.get_num_threads() == min(2, _MAX_THREADS)
    assert fastnorm.get_config()["num_threads"] == min(2, _MAX_THREADS)



def test_group_norm_parameter_tables_give_the_same_bits_on_any_thread_count(isa, rng,
                                                                           num_threads):
    """GroupNorm of small maps spreads weight and bias into per-position tables, each
    thread filling its own for the channels of its share of the groups
    (api_group_norm.c, fn_group_table_fill): shares within one sample, shares that wrap
    from one sample into the next, and whole samples must all give 1 thread's bits, and
    the reference's values."""
    cases = {
        # 16 channels of 64 values a group, one row ahead: shares within the sample
        "rows ahead, one sample": ((1, 512, 8, 8), 32),
        # 96 groups in shares of about 19 on 5 threads: most wrap into the next sample
        "rows ahead, three samples": ((3, 256, 8, 8), 32),
        "short spans of 128 values": ((16, 256, 4, 4), 32),
        "a 4x4 span of 16 channels a row": ((16, 512, 4, 4), 32),
    }
    for name, (shape, groups) in cases.items():
        x = random_data(rng, shape, np.float32, offset=10.0)
        w = random_data(rng, shape[1], np.float32, offset=1.0)
        b = random_data(rng, shape[1], np.float32)
        call = lambda: fastnorm.group_norm(x, groups, w, b)  # noqa: E731
        one = _with_threads(num_threads, 1, call)
        expected = fastnorm.reference.group_norm(x, groups, w, b)
        np.testing.assert_allclose(one, expected, rtol=1e-5, atol=1e-5, err_msg=name)
        for threads in (2, 3, 5):
            assert_same_bits(_with_threads(num_threads, threads, call), one,
                             err_msg=f"{name}, {threads} threads")

def _concurrent_jobs(rng):
    jobs = []
    for i in range(12):
        x = random_data(rng, (256 + 16 * i, 384 + i), np.float32, offset=i)
        kind = i % 4
        if kind == 0:
            jobs.append(lambda x=x: fastnorm.layer_norm(x))
        elif kind == 1:
            jobs.append(lambda x=x: fastnorm.rms_norm(x))
        elif kind == 2:
            xb = x.reshape(x.shape[0], -1, 1)
            jobs.append(lambda xb=xb: fastnorm.batch_norm(xb, training=True, axis=0))
        else:
            jobs.append(lambda x=x: fastnorm.moments(x, axis=0)[1])
    return jobs


def test_concurrent_calls_from_a_thread_pool_equal_sequential_results(isa, rng):
    jobs = _concurrent_jobs(rng)
    sequential = [job() for job in jobs]
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=4) as pool:
            concurrent = list(pool.map(lambda job: job(), jobs))
        for i, (a, b) in enumerate(zip(sequential, concurrent)):
            assert_same_bits(a, b, err_msg=f"job {i}")


def test_threads_started_together_equal_sequential_results(isa, rng):
    jobs = _concurrent_jobs(rng)
    sequential = [job() for job in jobs]
    results = [None] * len(jobs)
    errors = []
    barrier = threading.Barrier(len(jobs))

    def run(i):
        try:
            barrier.wait()
            for _ in range(3):
                results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (a, b) in enumerate(zip(sequential, results)):
        assert_same_bits(a, b, err_msg=f"job {i}")


def test_concurrent_in_place_calls_on_disjoint_slices(isa, rng):
    x = random_data(rng, (64, 4096), np.float32)
    want = fastnorm.layer_norm(x)
    work = x.copy()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: fastnorm.layer_norm(work[i::4], out=work[i::4]), range(4)))
    assert_same_bits(work, want)


def test_omp_num_threads_is_honoured_at_import():
    code = "import fastnorm; print(fastnorm.get_num_threads(), fastnorm.get_config()['openmp'])"
    threads, openmp = run_python(code, "OMP_NUM_THREADS", "1").split()
    assert int(threads) == 1, f"OMP_NUM_THREADS=1 but get_num_threads() == {threads}"


_FORK_CODE = """
import os, signal, sys
import numpy as np, fastnorm
fastnorm.set_num_threads(2)
x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
bn = x.reshape(8, 64, 1024)
def calls():
    return (fastnorm.layer_norm(x), fastnorm.rms_norm(x),
            fastnorm.batch_norm(bn, None, None, training=True), fastnorm.group_norm(bn, 8))
if {parent_threads}:
    want = calls()
fastnorm.set_num_threads({parent_threads} or 1)
limit = fastnorm._core.thread_limit()
want = calls()
fastnorm.set_num_threads(2)
pid = os.fork()
if pid == 0:
    signal.alarm(60)  # a child stuck in OpenMP dies instead of hanging the test
    same = all(np.array_equal(g, w) for g, w in zip(calls(), want))
    print(fastnorm.get_num_threads(), fastnorm._core.thread_limit() == limit, same, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), fastnorm.get_num_threads())
"""


def test_a_child_forked_after_threads_ran_runs_on_one_thread():
    # GNU OpenMP cannot start threads in a child forked after the parent ran a team: the
    # child hung in its first parallel region.  It now runs each call on one thread (the
    # same bits), and says so in get_num_threads().
    child, parent = run_python(_FORK_CODE.format(parent_threads=2)).splitlines()
    threads, _, same = child.split()
    assert parent.split() == ["0", str(min(2, _MAX_THREADS))]
    assert int(threads) == 1 and same == "True"


def test_a_child_forked_before_any_threads_ran_keeps_its_threads():
    child, parent = run_python(_FORK_CODE.format(parent_threads=0)).splitlines()
    assert child.split() == [str(min(2, _MAX_THREADS)), "True", "True"]
    assert parent.split() == ["0", str(min(2, _MAX_THREADS))]


def test_a_fork_pool_after_threads_ran_gives_the_parent_results():
    # multiprocessing's "fork" context, as a data pipeline's workers use it
    code = """
import multiprocessing, numpy as np, fastnorm
fastnorm.set_num_threads(2)
x = np.random.default_rng(1).standard_normal((4, 256, 1024)).astype(np.float32)
want = [fastnorm.layer_norm(a) for a in x]
def work(i):
    return fastnorm.layer_norm(x[i])
with multiprocessing.get_context("fork").Pool(2) as pool:
    got = pool.map_async(work, range(4)).get(timeout=60)
print(all(np.array_equal(g, w) for g, w in zip(got, want)))
"""
    assert run_python(code).split() == ["True"]


def test_a_huge_thread_count_is_capped_not_a_crash():
    # set_num_threads(100000) and OMP_NUM_THREADS=100000 made GNU OpenMP segfault; a call
    # now starts at most 1024 threads, with the same bits
    code = """
import numpy as np, fastnorm
x = np.random.default_rng(2).standard_normal((512, 1024)).astype(np.float32)
fastnorm.set_num_threads(1)
want = fastnorm.layer_norm(x), fastnorm.batch_norm(x.reshape(8, 64, 1024), training=True)
fastnorm.set_num_threads({n})
got = fastnorm.layer_norm(x), fastnorm.batch_norm(x.reshape(8, 64, 1024), training=True)
fastnorm.set_num_threads(None)
print(fastnorm.get_num_threads(), all(np.array_equal(g, w) for g, w in zip(got, want)))
"""
    cap = 1024 if fastnorm.get_config()["openmp"] else 1
    assert run_python(code.format(n=100000), "OMP_NUM_THREADS", "100000").split() == [
        str(cap), "True"]
    assert run_python(code.format(n=2**31 - 1)).split()[1] == "True"
