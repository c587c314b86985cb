/*
 * row_floor.c - how close can any LayerNorm, RMSNorm or BatchNorm eval of rows held in L2
 * come to `memcpy` on this core?  The plainest AVX-512 form: per row, sums about the row's
 * first value in four accumulator pairs (one vector load, a subtract, an add and an FMA a
 * vector), then y = (x - mean) * rstd * w + b with vector stores (BatchNorm eval: y = x *
 * scale + shift, a row a channel of NCHW, one load, one FMA and one store a vector);
 * none of fastnorm's accuracy work (centers moved along the row, float64 merges,
 * overflow checks), no Python, every array on a cache line unless told.  Against it,
 * `memcpy` of the same bytes (glibc's, `rep movsb` at these sizes, which writes lines
 * without reading them first).  Where this loop misses a bound, a kernel that stores y
 * with vector stores has little room left: docs/performance.md ("Why the remaining
 * targets are missed on this Xeon").
 * From the repository root:
 *
 *   gcc -O3 -mavx512f -mfma benchmarks/row_floor.c -o /tmp/row_floor -lm
 *   /tmp/row_floor 64 768        # rows, row length (a multiple of 64), x and y on a line
 *   /tmp/row_floor 64 768 16     # x and y 16 bytes past a line, as NumPy often puts them
 *   /tmp/row_floor 64 768 0 rms  # RMSNorm: sums of squares, y = x * rstd * w
 *   /tmp/row_floor 64 3136 16 affine  # BatchNorm eval of NCHW (1, 64, 56, 56)
 *
 * Prints medians of 41 batches of 100 calls each, the two loops taken in turn, and their
 * ratio: the same figure the bench calls xcopy, without the Python call around it.
 */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

enum kind { LAYER_NORM, RMS_NORM, AFFINE };

static void norm_rows(const float *x, float *y, const float *w, const float *b, size_t rows,
                      size_t n, enum kind kind) {
    const int rms = kind == RMS_NORM;
    for (size_t r = 0; r < rows; ++r) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        if (kind == AFFINE) { /* a channel's scale and shift (n >= 64 of each) */
            __m512 scale = _mm512_set1_ps(w[r % 16]), shift = _mm512_set1_ps(b[r % 16]);
            for (size_t i = 0; i < n; i += 16)
                _mm512_storeu_ps(yr + i, _mm512_fmadd_ps(_mm512_loadu_ps(xr + i), scale, shift));
            continue;
        }
        __m512 c = _mm512_set1_ps(rms ? 0.0f : xr[0]), z = _mm512_setzero_ps();
        __m512 s0 = z, s1 = z, s2 = z, s3 = z, q0 = z, q1 = z, q2 = z, q3 = z;
        for (size_t i = 0; i < n; i += 64) {
            __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(xr + i), c);
            __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(xr + i + 16), c);
            __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(xr + i + 32), c);
            __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(xr + i + 48), c);
            if (!rms) {
                s0 = _mm512_add_ps(s0, d0), s1 = _mm512_add_ps(s1, d1);
                s2 = _mm512_add_ps(s2, d2), s3 = _mm512_add_ps(s3, d3);
            }
            q0 = _mm512_fmadd_ps(d0, d0, q0), q1 = _mm512_fmadd_ps(d1, d1, q1);
            q2 = _mm512_fmadd_ps(d2, d2, q2), q3 = _mm512_fmadd_ps(d3, d3, q3);
        }
        __m512 sums = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
        __m512 squares = _mm512_add_ps(_mm512_add_ps(q0, q1), _mm512_add_ps(q2, q3));
        double s = _mm512_reduce_add_ps(sums), q = _mm512_reduce_add_ps(squares);
        double above = s / (double)n, spread = q / (double)n - above * above;
        __m512 mean = _mm512_set1_ps(rms ? 0.0f : (float)(xr[0] + above));
        __m512 rstd = _mm512_set1_ps((float)(1.0 / sqrt(spread + 1e-5)));
        for (size_t i = 0; i < n; i += 16) {
            __m512 h = _mm512_loadu_ps(xr + i), w_i = _mm512_loadu_ps(w + i);
            __m512 v = rms ? _mm512_mul_ps(_mm512_mul_ps(h, rstd), w_i)
                           : _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(h, mean), rstd), w_i,
                                             _mm512_loadu_ps(b + i));
            _mm512_storeu_ps(yr + i, v);
        }
    }
}

static int by_value(const void *a, const void *b) {
    double d = *(const double *)a - *(const double *)b;
    return (d > 0) - (d < 0);
}

int main(int argc, char **argv) {
    size_t rows = argc > 1 ? (size_t)atol(argv[1]) : 64, n = argc > 2 ? (size_t)atol(argv[2]) : 768;
    size_t offset = argc > 3 ? (size_t)atol(argv[3]) : 0; /* bytes past a line */
    const char *name = argc > 4 ? argv[4] : "ln";
    enum kind kind = strcmp(name, "rms") == 0 ? RMS_NORM
                     : strcmp(name, "affine") == 0 ? AFFINE
                                                  : LAYER_NORM;
    if (n == 0 || n % 64 || offset % 4 || offset >= 64 ||
        (kind == LAYER_NORM && strcmp(name, "ln") != 0)) {
        fprintf(stderr, "usage: row_floor ROWS N [OFFSET [ln|rms|affine]]: N a multiple of 64, "
                        "OFFSET 0-60 bytes, a multiple of 4\n");
        return 2;
    }
    size_t bytes = rows * n * sizeof(float);
    /* y half a page from x modulo 4 KB, as the bench places its outputs (no 4K aliasing) */
    char *xa = aligned_alloc(4096, bytes + 8192), *ya = aligned_alloc(4096, bytes + 8192);
    float *w = aligned_alloc(64, n * sizeof(float)), *b = aligned_alloc(64, n * sizeof(float));
    if (!xa || !ya || !w || !b) return 1;
    float *x = (float *)(xa + offset), *y = (float *)(ya + 2048 + offset);
    srand(1);
    for (size_t i = 0; i < rows * n; ++i) x[i] = 1.0f + (float)rand() / (float)RAND_MAX;
    for (size_t i = 0; i < n; ++i) w[i] = 1.0f, b[i] = 0.0f;
    enum { BATCHES = 41, CALLS = 100 };
    double norm_t[BATCHES], copy_t[BATCHES];
    for (int k = 0; k < BATCHES; ++k) {
        double t0 = seconds();
        for (int c = 0; c < CALLS; ++c) {
            norm_rows(x, y, w, b, rows, n, kind);
            __asm__ volatile("" ::: "memory"); /* y is never read: keep every call's stores */
        }
        double t1 = seconds();
        for (int c = 0; c < CALLS; ++c) {
            memcpy(y, x, bytes);
            __asm__ volatile("" ::: "memory"); /* every copy happens */
        }
        double t2 = seconds();
        norm_t[k] = (t1 - t0) / CALLS, copy_t[k] = (t2 - t1) / CALLS;
    }
    qsort(norm_t, BATCHES, sizeof(double), by_value);
    qsort(copy_t, BATCHES, sizeof(double), by_value);
    double tn = norm_t[BATCHES / 2], tc = copy_t[BATCHES / 2];
    const char *names[] = {"LayerNorm", "RMSNorm", "BatchNorm eval"};
    printf("%s %zux%zu, x and y %zu bytes past a line: %.2f us, memcpy %.2f us, %.2fx\n",
           names[kind], rows, n, offset, tn * 1e6, tc * 1e6, tn / tc);
    return 0;
}
