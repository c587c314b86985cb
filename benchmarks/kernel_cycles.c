/*
 * kernel_cycles.c - cycles per vector of 8 values of the AVX2 (or AVX-512) row kernels on one row that
 * stays in the L1 cache: the statistics pass (row_stats) and the normalize pass
 * (row_normalize, with weight and bias), for float32, float16 and bfloat16.  This is the
 * compute cost alone; `python -m fastnorm bench` adds the memory system.  From the
 * repository root:
 *
 *   S=src/fastnorm_c; gcc -O3 -std=c11 -fno-math-errno -mavx2 -mfma -mf16c \
 *     -DFASTNORM_HAVE_AVX2=1 -D_POSIX_C_SOURCE=200809L -Iinclude -I$S \
 *     benchmarks/kernel_cycles.c $S/kernels_avx2.c -o /tmp/kernel_cycles
 *   /tmp/kernel_cycles 768 3.1      # row length, CPU clock in GHz
 *   /tmp/kernel_cycles 768 3.1 rms  # RMSNorm's passes: no centring, no bias
 *
 * The AVX-512 family: -DKC_FAMILY=avx512 -DFASTNORM_HAVE_AVX512=1, kernels_avx512.c, and
 * setup.py's AVX-512 flags (-mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c).
 *
 * Best of 60 timings of 4000 calls each (the minimum filters out a shared machine's noise),
 * converted to cycles with the clock given.  The weight and bias come from malloc (16-byte
 * aligned, usually not on a cache line), where fastnorm_norm would copy them onto a line
 * for 16 rows or more: on Zen 4, 16 bytes past a line cost the normalize pass about a
 * quarter (docs/optimisations.md).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

/* the family timed: -DKC_FAMILY=avx512 with kernels_avx512.c and its flags */
#ifndef KC_FAMILY
#define KC_FAMILY avx2
#endif
#define KC_GLUE_(a, b) a##b
#define KC_GLUE(a, b) KC_GLUE_(a, b)
#define KC_KERNELS KC_GLUE(fastnorm_kernels_, KC_FAMILY)
extern const fastnorm_kernels_t KC_KERNELS;

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* value i of a row: -1 .. 1, never a tie or a special value */
static float row_value(size_t i) { return (float)((i * 7919) % 1000) / 500.0f - 1.0f; }

int main(int argc, char **argv) {
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 768;
    double ghz = argc > 2 ? atof(argv[2]) : 3.1;
    int rms = argc > 3 && strcmp(argv[3], "rms") == 0; /* RMSNorm: no centring, no bias */
    enum { CALLS = 4000, TRIES = 60 };
    const struct { const char *name; fastnorm_dtype_t dtype; } types[] = {
        {"float32", FASTNORM_F32}, {"float16", FASTNORM_F16}, {"bfloat16", FASTNORM_BF16}};
    float *weight = malloc(n * sizeof(float)), *bias = malloc(n * sizeof(float));
    char *x = aligned_alloc(64, (n * 4 + 63) / 64 * 64), *y = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
    if (!weight || !bias || !x || !y) return 1;
    for (size_t i = 0; i < n; ++i) {
        weight[i] = 1.0f + row_value(i) / 8;
        bias[i] = row_value(i) / 4;
    }
    printf("%s, row of %zu values, %.2f GHz: cycles per 8 values (per row)\n", rms ? "RMSNorm" : "LayerNorm", n, ghz);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; ++t) {
        fastnorm_dtype_t dtype = types[t].dtype;
        for (size_t i = 0; i < n; ++i) {
            float v = row_value(i);
            uint32_t bits;
            memcpy(&bits, &v, 4);
            if (dtype == FASTNORM_F32) ((float *)x)[i] = v;
            else if (dtype == FASTNORM_BF16) ((uint16_t *)x)[i] = (uint16_t)(bits >> 16);
            else ((uint16_t *)x)[i] = (uint16_t)(0x3800 + (i % 1024)); /* 0.5 .. 1 in float16 */
        }
        double best_stats = 1e9, best_normalize = 1e9, mean, m2;
        for (int try = 0; try < TRIES; ++try) {
            double start = seconds();
            for (int c = 0; c < CALLS; ++c) {
                KC_KERNELS.row_stats[dtype](x, NULL, NULL, n, rms ? 0.0 : 0.5, !rms, 0, &mean,
                                          &m2);
                __asm__ volatile("" : : "g"(&mean), "g"(&m2) : "memory");
            }
            double stats = (seconds() - start) / CALLS;
            start = seconds();
            for (int c = 0; c < CALLS; ++c) {
                KC_KERNELS.row_normalize[dtype](x, NULL, NULL, n, rms ? 0.0 : 0.1, 0.0, 1.1, 0.0,
                                                weight, rms ? NULL : bias, y, NULL, 0);
                __asm__ volatile("" : : "g"(y) : "memory");
            }
            double normalize = (seconds() - start) / CALLS;
            if (stats < best_stats) best_stats = stats;
            if (normalize < best_normalize) best_normalize = normalize;
        }
        double cycles = ghz * 1e9, vectors = (double)n / 8;
        printf("%-9s statistics %.2f (%.0f)  normalize %.2f (%.0f)\n", types[t].name,
               best_stats * cycles / vectors, best_stats * cycles,
               best_normalize * cycles / vectors, best_normalize * cycles);
    }
    free(weight);
    free(bias);
    free(x);
    free(y);
    return 0;
}
