"""How much two cores slow each other down on this machine, without OpenMP.

Times float32 LayerNorm (weight, bias, out=) of a rows x 768 array on one thread in one
process alone, then in two processes started together, each on its own array.  If the pair
runs slower than one alone, a 2-thread call of twice the rows cannot reach a 2x speed-up
either: the loss is the machine's (shared cache or memory), not fastnorm's threading.

    python benchmarks/thread_pair.py [rows ...]      # default: 64 256 1024
"""
import multiprocessing
import statistics
import sys
import time

import numpy as np

import fastnorm

SECONDS = 3.0
CALLS = 200


def _median_call_us(rows, start_at, results):
    fastnorm.set_num_threads(1)
    x = np.random.default_rng(rows).standard_normal((rows, 768)).astype(np.float32)
    w, b, out = np.ones(768, np.float32), np.zeros(768, np.float32), np.empty_like(x)
    while time.time() < start_at:  # both processes begin at the same moment
        pass
    samples, end = [], time.time() + SECONDS
    while time.time() < end:
        t0 = time.perf_counter_ns()
        for _ in range(CALLS):
            fastnorm.layer_norm(x, weight=w, bias=b, out=out)
        samples.append((time.perf_counter_ns() - t0) / CALLS / 1e3)
    results.put(statistics.median(samples))


def _run(rows, processes):
    results = multiprocessing.Queue()
    start_at = time.time() + 0.5
    workers = [multiprocessing.Process(target=_median_call_us, args=(rows, start_at, results))
               for _ in range(processes)]
    for p in workers:
        p.start()
    times = [results.get() for _ in workers]
    for p in workers:
        p.join()
    return times


def main(argv):
    for rows in [int(a) for a in argv] or [64, 256, 1024]:
        alone = _run(rows, 1)[0]
        pair = _run(rows, 2)
        print(f"{rows}x768 float32 LayerNorm, 1 thread: alone {alone:.1f} us, "
              f"two processes at once {pair[0]:.1f} / {pair[1]:.1f} us "
              f"(slowest {max(pair) / alone:.2f}x alone)")


if __name__ == "__main__":
    main(sys.argv[1:])
