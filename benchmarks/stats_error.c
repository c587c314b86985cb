/*
 * stats_error.c - the error of the row statistics pass itself: max relative error of m2
 * (the sum of squared deviations) and max absolute error of the mean, against long
 * double two-pass sums, over 300 rows of `offset + N(0, 1)` rounded to float32, for the
 * scalar, AVX2 and (when built with FASTNORM_HAVE_AVX512) AVX-512 families.
 * (benchmarks/accuracy.py measures the error of the final outputs, which float32 rounding
 * dominates.)  From the repository root:
 *
 *   S=src/fastnorm_c; F="-O3 -std=c11 -fno-math-errno -DFASTNORM_HAVE_AVX2=1 -Iinclude -I$S"
 *   gcc $F -mavx2 -mfma -mf16c -c $S/kernels_avx2.c -o /tmp/k_avx2.o
 *   gcc $F -c $S/kernels_scalar.c -o /tmp/k_scalar.o
 *   gcc $F benchmarks/stats_error.c /tmp/k_avx2.o /tmp/k_scalar.o -lm -o /tmp/stats_error
 *   /tmp/stats_error
 *
 * With the AVX-512 family as well:
 *
 *   F="$F -DFASTNORM_HAVE_AVX512=1"
 *   gcc $F -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c \
 *       -c $S/kernels_avx512.c -o /tmp/k_avx512.o
 *   gcc $F benchmarks/stats_error.c /tmp/k_*.o -lm -o /tmp/stats_error
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"

extern const fastnorm_kernels_t fastnorm_kernels_scalar;
extern const fastnorm_kernels_t fastnorm_kernels_avx2;
#ifdef FASTNORM_HAVE_AVX512
extern const fastnorm_kernels_t fastnorm_kernels_avx512;
#endif

/* a standard normal value from a 64-bit LCG (Box-Muller) */
static double gaussian(unsigned long long *state) {
    double u[2];
    for (int k = 0; k < 2; ++k) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        u[k] = ((double)(*state >> 11) + 0.5) / 9007199254740992.0;
    }
    return sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

int main(void) {
    const size_t lengths[] = {100, 768, 1000, 4096};
    const double offsets[] = {0, 1e2, 1e4, 1e5};
    const fastnorm_kernels_t *families[] = {&fastnorm_kernels_scalar, &fastnorm_kernels_avx2,
#ifdef FASTNORM_HAVE_AVX512
                                            &fastnorm_kernels_avx512
#endif
    };
    const int family_count = sizeof families / sizeof families[0];
    enum { ROWS = 300 };
    printf("family  n      offset   max rel error m2   max abs error mean\n");
    for (int f = 0; f < family_count; ++f)
        for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) {
                size_t n = lengths[a];
                unsigned long long state = 12345 + 7 * a + b;
                float *x = malloc(n * sizeof *x);
                double worst_m2 = 0, worst_mean = 0;
                if (!x) return 1;
                for (int row = 0; row < ROWS; ++row) {
                    for (size_t i = 0; i < n; ++i) x[i] = (float)(offsets[b] + gaussian(&state));
                    double shift = x[0], mean_shifted, m2;
                    families[f]->row_stats[FASTNORM_F32](x, NULL, NULL, n, shift, 1, 0, &mean_shifted, &m2);
                    long double mean = 0, sum = 0;
                    for (size_t i = 0; i < n; ++i) mean += x[i];
                    mean /= n;
                    for (size_t i = 0; i < n; ++i) sum += (x[i] - mean) * (x[i] - mean);
                    double m2_error = fabs((double)(m2 / sum - 1));
                    double mean_error = fabs((double)((shift + mean_shifted) - mean));
                    if (m2_error > worst_m2) worst_m2 = m2_error;
                    if (mean_error > worst_mean) worst_mean = mean_error;
                }
                printf("%-7s %-6zu %-8g %-18.2e %.2e\n", families[f]->name, n, offsets[b],
                       worst_m2, worst_mean);
                free(x);
            }
    return 0;
}
