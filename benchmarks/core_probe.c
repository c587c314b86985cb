/*
 * core_probe.c - does this core run at full width right now?  Every 0.3 s it prints the
 * clock, measured by a chain of dependent integer multiplies (three cycles each whoever
 * else uses the core), and, per cycle of that clock, how many scalar float64 additions
 * and how many 256-bit load-and-FMA pairs (a sum of squares over 16 KB in L1, eight
 * accumulators) it completed.  A core of its own gives about 2 of each on Zen 3 (1.8-2.0
 * at 3.3 GHz on the AVX-512 Xeon VM); where something outside the VM (a hypervisor's
 * other guest on the sibling hyperthread, say) shares the core, the vector figure drops
 * towards 1 at the same clock.  fastnorm's in-cache kernels are compute-bound and slow
 * down with it, a memory copy less, so xcopy swings.  A sample whose clock reads low
 * was interrupted while it timed the chain; its per-cycle figures read high with it.
 * From the repository root:
 *
 *   gcc -O2 -mavx2 -mfma benchmarks/core_probe.c -o /tmp/core_probe
 *   /tmp/core_probe 60      # seconds to run
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A chain of dependent 64-bit multiplies, three cycles each on every x86-64 core since
 * Core 2 and Zen (Agner Fog's tables).  Not additions: this probe's first form, a chain of
 * add-immediates, ran about four a cycle on the AVX-512 Xeon VM and read 13 GHz.
 * The multiplier (1) is hidden from the compiler, which would otherwise drop the
 * multiplies; the empty asm keeps each multiply a step of the one chain. */
#define CHAIN_MUL(x, m)                      \
    do {                                     \
        x *= m;                              \
        __asm__ volatile("" : "+r"(x));      \
    } while (0)
#define MUL_LATENCY 3.0

static double clock_hz(void) {
    const long steps = 2000000;
    long x = 3, m = 1;
    __asm__ volatile("" : "+r"(m));
    double start = seconds();
    for (long i = 0; i < steps; ++i) {
        CHAIN_MUL(x, m);
        CHAIN_MUL(x, m);
        CHAIN_MUL(x, m);
        CHAIN_MUL(x, m);
    }
    double elapsed = seconds() - start;
    volatile long sink = x;
    (void)sink;
    return MUL_LATENCY * 4.0 * (double)steps / elapsed;
}

/* eight independent chains of float64 additions: the two FP adders' throughput */
static double scalar_adds_per_second(void) {
    const long steps = 5000000;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, d = 1e-9;
    double start = seconds();
    for (long i = 0; i < steps; ++i) {
        a0 += d, a1 += d, a2 += d, a3 += d, a4 += d, a5 += d, a6 += d, a7 += d;
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                         "+x"(a6), "+x"(a7));
    }
    double elapsed = seconds() - start;
    volatile double sink = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    (void)sink;
    return 8.0 * (double)steps / elapsed;
}

static __attribute__((noinline)) float sum_squares(const float *x, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0;
    for (size_t i = 0; i < n; i += 64) {
#define SQUARE(k, acc)                                    \
    do {                                                  \
        __m256 v = _mm256_load_ps(x + i + 8 * (k));       \
        acc = _mm256_fmadd_ps(v, v, acc);                 \
    } while (0)
        SQUARE(0, a0);
        SQUARE(1, a1);
        SQUARE(2, a2);
        SQUARE(3, a3);
        SQUARE(4, a4);
        SQUARE(5, a5);
        SQUARE(6, a6);
        SQUARE(7, a7);
#undef SQUARE
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    return _mm256_cvtss_f32(s);
}

/* the best of five batches: the first calls of a batch can find the vector unit cold */
static double vector_pairs_per_second(const float *x, size_t n) {
    const int calls = 400;
    volatile float sink;
    double best = 0;
    for (int batch = 0; batch < 5; ++batch) {
        double start = seconds();
        for (int c = 0; c < calls; ++c) sink = sum_squares(x, n);
        double rate = (double)calls * (double)(n / 8) / (seconds() - start);
        if (rate > best) best = rate;
    }
    (void)sink;
    return best;
}

int main(int argc, char **argv) {
    double run = argc > 1 ? atof(argv[1]) : 30;
    const size_t n = 4096; /* 16 KB: stays in L1 */
    float *x = aligned_alloc(64, n * sizeof(float));
    if (!x) return 1;
    for (size_t i = 0; i < n; ++i) x[i] = (float)(i % 7);
    printf("time   clock     per cycle: scalar adds  256-bit load+FMA\n");
    for (double start = seconds(); seconds() - start < run;) {
        double hz = clock_hz();
        double adds = scalar_adds_per_second() / hz, pairs = vector_pairs_per_second(x, n) / hz;
        printf("%5.1f s %.2f GHz  %.2f  %.2f\n", seconds() - start, hz * 1e-9, adds, pairs);
        fflush(stdout);
        struct timespec pause = {0, 300000000};
        nanosleep(&pause, NULL);
    }
    free(x);
    return 0;
}
