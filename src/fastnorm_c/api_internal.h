/*
 * api_internal.h - what the entry-point files (api_norm.c, api_batch_norm.c,
 * api_group_norm.c) share: the thread policy and its parallel loop, the streaming
 * threshold, dtype sizes, scalar element access and Chan's merge.  Private to the
 * library; compiled at the baseline like its includers.
 *
 * Every entry point validates every argument, then cuts the work into items, runs them on
 * OpenMP threads through the active kernel table, and merges partial statistics with
 * Chan's formula.  Two layouts cover every operation:
 *   row path     the reduced values of one statistic are contiguous (LayerNorm over the
 *                last axis, BatchNorm NCHW per (sample, channel) row, GroupNorm groups);
 *   column path  they are strided and the statistics are side by side in memory
 *                (LayerNorm over a non-trailing axis, BatchNorm channels-last).  Narrow
 *                blocks are regrouped as k rows per "super-row" so a vector is always full.
 * Work items are fixed by the problem size, never by the thread count, and partials are
 * merged in index order: results are bitwise identical for any number of threads.
 * Compiled at the baseline (no ISA flags): the entry points call kernels only through the
 * table.
 */
#ifndef FASTNORM_API_INTERNAL_H
#define FASTNORM_API_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "kernels.h"
#include "storage.h"

/* Below this many elements a call runs on one thread: waking a team costs more than it
 * saves (see docs/optimisations.md for the measurement). */
#define FN_PARALLEL_MIN_ELEMENTS 32768
/* Rows longer than this are reduced in segments, so one long row still uses every thread. */
#define FN_ROW_SEGMENT 16384

/* Outputs of at least this many bytes are written with streaming stores: those of
 * LayerNorm/RMSNorm over rows without a residual, and BatchNorm's (fn_affine) on one
 * thread.  On the AVX-512 Xeon a 24 MB output streamed at 0.7x the time of plain stores
 * and a 12 MB one (which its last-level cache kept between calls) at 1.45x, hence 16 MB at
 * first.  On the Zen 4 VM, whose 32 MB L3 other tenants share, in-process A/Bs of 8
 * against 16 MB, time per call streamed over plain: float32 LayerNorm 4096x768 (12 MB)
 * 0.65-0.84, RMSNorm 0.74-0.79, 3072x768 (9 MB) 0.57-0.65, 2048x1024 (8 MB) 0.64-0.95,
 * bfloat16 8192x768 (12 MB) 0.82-1.00, on 2 threads 4096x768 0.61-0.76; BatchNorm
 * 16x64x56x56 (12.8 MB) 0.74-0.88 on 1 thread.  Smaller outputs lost: float32 2048x768
 * (6 MB) 1.01-1.07, bfloat16 4096x768 (6 MB) 1.24, 2048x768 (3 MB) 1.38-1.53.  GroupNorm
 * too: (8, 256, 32, 32) float32 (8 MB) 0.63-0.65 on 1 thread, 0.93 on 2.  Rows take a
 * sixteenth of the last-level cache instead where that is more (fn_llc_stream_min_bytes,
 * below: the Emerald Rapids Xeon's 300 MB L3). */
#define FN_STREAM_MIN_BYTES (8u << 20)
/* The others keep 16 MB: BatchNorm on two or more threads (the 12.8 MB BatchNorm above took
 * 1.11-1.57x the time streamed on 2 threads, eval and training, either layout), rows on two
 * or more threads (fn_row_stream_min_bytes) and, not measured again, LayerNorm over
 * columns.  (The fused residual had it too, with h streamed beside y: float32 4096x768
 * 0.75-0.90x the time streamed, 2048x1024 0.69x, but 3072x768 1.55-1.60x; api_norm.c,
 * FN_RESIDUAL_H_STREAM_MIN_BYTES.) */
#define FN_STREAM_MIN_BYTES_OTHERS (16u << 20)

/* Rows without a residual (api_norm.c) and the layout copies (api_layout.c) stream an output
 * of at least FN_STREAM_MIN_BYTES, or of a sixteenth of the last-level cache where that is
 * more, as a cache that large keeps the output between calls.  Emerald Rapids Xeon (300 MB
 * L3, shared with the VM's neighbours), in-process A/B, time per call, each order of the
 * builds: a 16 MB bound against 8 MB (the 12 MB outputs stored plainly), float32 LayerNorm
 * 4096x768 0.95 / 0.93 (2 threads 0.95 / 0.90), RMSNorm 0.99 / 1.00 (2 threads 0.97 / 0.95),
 * bfloat16 LayerNorm 8192x768 0.93 / 0.85; plain stores at every size against 8 MB, 8192x768
 * (24 MB) 1.08 / 1.00, 16384x768 1.35 / 1.49.  BatchNorm eval of 12.8 MB lost there with
 * plain stores (1.16 / 1.29) and keeps the fixed bound.  The 32 MB L3 of the Zen 4 VM that
 * measured 8 MB keeps it. */
static inline size_t fn_llc_stream_min_bytes(void) {
    size_t share = fastnorm_llc_bytes() / 16;
    return share > FN_STREAM_MIN_BYTES ? share : FN_STREAM_MIN_BYTES;
}

/* Rows without a residual on `threads` threads: fn_llc_stream_min_bytes on one thread, and
 * at least FN_STREAM_MIN_BYTES_OTHERS on more, as BatchNorm's: two threads share the write
 * bandwidth that streaming stores need, while plain stores of an output the last-level
 * cache can hold go as fast as the cache.  Zen 3 (32 MB L3), in-process A/B, time per call
 * on 2 threads, plain stores over streamed, each order of the builds: float32 LayerNorm
 * 512x4096 (8 MB) 0.72 / 0.65, RMSNorm 0.58 / 0.55, float64 256x4096 0.65 / 0.70 and 0.59
 * / 0.54; 4096x768 (12 MB) LayerNorm 0.96 / 0.94, RMSNorm 0.82 / 0.66, bfloat16 8192x768
 * 0.90, float64 2048x768 0.78; from 16 MB LayerNorm lost (5461x768 1.17, 8192x768 1.34;
 * RMSNorm 0.90 and 1.08).  On one thread streaming keeps its lead (512x4096 0.90-0.92x the
 * time of plain stores, 4096x768 0.56x). */
static inline size_t fn_row_stream_min_bytes(int threads) {
    size_t bound = fn_llc_stream_min_bytes();
    return threads > 1 && bound < FN_STREAM_MIN_BYTES_OTHERS ? FN_STREAM_MIN_BYTES_OTHERS : bound;
}

/* In an input of at least FN_PREFETCH_MIN_BYTES, the normalize pass of a row whose length in
 * bytes lies in the family's prefetch_row_min ... prefetch_row_max (kernels.h, measured in
 * simd_<family>.h) prefetches the next row for the statistics pass, and the statistics of
 * other rows read ahead themselves (kernels.h, row_stats's prefetch; api_norm.c, and
 * BatchNorm's channel rows).  Smaller inputs do not: 512x768 float32 (1.5 MB, which the
 * hardware prefetcher keeps up with) took 1.04-1.10x the time with it (AVX2, Zen 3, 1
 * thread, ctypes A/B). */
#define FN_PREFETCH_MIN_BYTES (4u << 20)

/* Column statistics read ahead (kernels.h, col_stats's prefetch) in an input of at least
 * this many bytes, past what the last-level cache keeps between calls.  Zen 5 (32 MB L3),
 * float32 `moments` of 64 columns in a loop, in-process A/B, time per call with the
 * read-ahead: 2 MB 1.14, 4 MB 1.09, 8 MB 1.15, 16 MB 0.98, 25.7 MB 0.66-0.85. */
#define FN_COL_PREFETCH_MIN_BYTES (16u << 20)

/* The shortest rows for rows_affine (BatchNorm's NCHW affine, GroupNorm's channels): more
 * than a vector's lanes, which its joined rows need; BatchNorm's shorter rows take the
 * column path (api_batch_norm.c). */
#define FN_AFFINE_ROW_MIN 48

/* Stream y only when it is large and not read back: in place, x's lines are owned already.
 * FN_STORE_STREAM or 0: the row kernels' store flag, and the column kernels' boolean. */
static inline int fn_stream(const void *x, const void *y, size_t bytes, size_t min_bytes) {
    return bytes >= min_bytes && x != y ? FN_STORE_STREAM : 0;
}

/* row_stats_normalize's first_center (kernels.h) for the default tuning: a LayerNorm row's
 * first center taken a call early.  On the Xeon it bought 128x384 0.89-0.91 (64x768,
 * 512x768 level); on Zen 4 (the AMD tuning: NULL, each call takes its own) the commit that
 * brought it took 1.08 / 1.07 the time for LayerNorm 512x768, 1.10 / 1.05 for 64x768 (and
 * RMSNorm, which takes no center, 1.10 / 1.07: not the hand-off).  In-process A/B, both
 * orders, sixty-fifth session, without the hand-off over with it: LayerNorm 512x768 0.93 /
 * 0.93, 64x768 1.01 / 0.97, 128x384 0.98 / 0.97, RMSNorm level. */
static inline double *fn_center_handoff(double *first_center) {
    return fastnorm_tuning() == FASTNORM_TUNING_AMD ? NULL : first_center;
}

/* `bytes` of malloc'ed memory starting on a 64-byte boundary (a cache line, the widest
 * vector); *block receives the pointer to free. */
static inline void *fn_malloc_aligned(size_t bytes, void **block) {
    *block = malloc(bytes + 63);
    return *block ? (void *)(((uintptr_t)*block + 63) & ~(uintptr_t)63) : NULL;
}

static inline size_t fn_storage_size(fastnorm_dtype_t dtype) { return dtype == FASTNORM_F32 ? 4 : dtype == FASTNORM_F64 ? 8 : 2; }
static inline size_t fn_compute_size(fastnorm_dtype_t dtype) { return dtype == FASTNORM_F64 ? 8 : 4; }

/* Streaming (non-temporal) stores are weakly ordered, and the kernels leave the fence to
 * their caller: each thread fences once it has run its share of a loop (FN_PARALLEL_FOR),
 * so the output is complete when the call returns.  Once per thread, not once per row: on
 * Zen 4 an SFENCE after every 3 KB row (the fence waits for the write-combining buffers
 * to drain, and the next row's loads wait behind it) kept LayerNorm 32768x768 at
 * 1.12-1.16x the copy's time, against 0.74x without.  Off x86 the scalar family's
 * "streaming" stores are plain ones. */
#if defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)
#include <xmmintrin.h>
#define FN_STREAM_FENCE() _mm_sfence()
#else
#define FN_STREAM_FENCE() ((void)0)
#endif

/* for (long long var = 0; var < count; ++var) { body }, over the `threads` (a variable in
 * scope) OpenMP threads with a static schedule, then FN_STREAM_FENCE in each thread.  One
 * thread runs the plain loop: entering even a one-thread parallel region costs a fraction
 * of a microsecond, a noticeable share of a small call.  So does a single work item: the
 * idle thread's spin after the region shares the core with the working one where the two
 * are hyperthreads (float64 LayerNorm backward 64x768, one work item, took 68 us on 2
 * threads against 43 us on 1). */
#ifdef _OPENMP
#define FN_PARALLEL_FOR(var, count, ...)                                                  \
    do {                                                                                  \
        long long fn_count_ = (long long)(count);                                         \
        if (threads > 1 && fn_count_ > 1) {                                               \
            _Pragma("omp parallel num_threads(threads)")                                  \
            {                                                                             \
                _Pragma("omp for schedule(static) nowait")                                \
                for (long long var = 0; var < fn_count_; ++var) { __VA_ARGS__ }           \
                FN_STREAM_FENCE();                                                        \
            }                                                                             \
        } else {                                                                          \
            for (long long var = 0; var < fn_count_; ++var) { __VA_ARGS__ }               \
            FN_STREAM_FENCE();                                                            \
        }                                                                                 \
    } while (0)
#else
#define FN_PARALLEL_FOR(var, count, ...)                                                  \
    do {                                                                                  \
        long long fn_count_ = (long long)(count);                                         \
        (void)threads;                                                                    \
        for (long long var = 0; var < fn_count_; ++var) { __VA_ARGS__ }                   \
        FN_STREAM_FENCE();                                                                \
    } while (0)
#endif

static inline int fn_threads(int n_threads, size_t elements) {
    if (elements < FN_PARALLEL_MIN_ELEMENTS) return 1;
    int threads = n_threads > 0 ? n_threads : fastnorm_default_threads();
    return threads > 1 ? fastnorm_team_threads(threads) : 1;
}

/* a * b * c, or 0 with *overflow set */
static inline size_t fn_product(size_t a, size_t b, size_t c, int *overflow) {
    if (a && b > SIZE_MAX / a) { *overflow = 1; return 0; }
    size_t ab = a * b;
    if (ab && c > SIZE_MAX / ab) { *overflow = 1; return 0; }
    return ab * c;
}

/* One element of storage dtype, in the compute dtype, widened to double. */
static inline double fn_element(fastnorm_dtype_t dtype, const void *base, size_t index) {
    switch (dtype) {
    case FASTNORM_F32: return fn_load1_f32((const float *)base + index);
    case FASTNORM_F64: return fn_load1_f64((const double *)base + index);
    case FASTNORM_F16: return fn_load1_f16((const uint16_t *)base + index);
    default: return fn_load1_bf16((const uint16_t *)base + index);
    }
}

/* Element `index` of h = x + residual (residual may be NULL), rounded to the storage dtype
 * as the kernels round it, widened to double. */
static inline double fn_sum_element(fastnorm_dtype_t dtype, const void *x, const void *residual,
                                    size_t index) {
    double a = fn_element(dtype, x, index);
    if (!residual) return a;
    double b = fn_element(dtype, residual, index);
    switch (dtype) {
    case FASTNORM_F32: return fn_round1_f32((float)a + (float)b);
    case FASTNORM_F64: return a + b;
    case FASTNORM_F16: return fn_round1_f16((float)a + (float)b);
    default: return fn_round1_bf16((float)a + (float)b);
    }
}

/* The exact statistics of one group, for a group whose fast statistics came out non-finite.
 * The kernels sum squares in the compute dtype, so a float32, float16 or bfloat16 group of
 * finite values spread past about 1.8e19 overflows there (its squares pass FLT_MAX), where
 * these float64 sums do not; and a float64 group near DBL_MAX overflows the sums of its
 * first step (a constant row of 1e307), where these sums, about the group's first value,
 * do not.  A NaN or inf in the group makes both statistics NaN, so such a group stays NaN.
 * The group is `runs` runs of `len` elements of h = x (+ residual), run k starting at
 * element k * stride.  Two passes: the mean, then m2 about it (with !center, mean 0 and m2
 * the sum of squares, RMSNorm's).  Called only on that rare path. */
static inline void fn_exact_moments(fastnorm_dtype_t dtype, const void *x, const void *residual,
                                    size_t runs, size_t len, size_t stride, int center,
                                    double *mean, double *m2) {
    double sum = 0, squares = 0, mu = 0;
    if (center) {
        double first = fn_sum_element(dtype, x, residual, 0);
        int finite = 1;
        for (size_t k = 0; k < runs; ++k)
            for (size_t i = 0; i < len; ++i) {
                double h = fn_sum_element(dtype, x, residual, k * stride + i);
                finite &= isfinite(h) != 0;
                sum += h - first;
            }
        if (!finite) {
            *mean = *m2 = NAN;
            return;
        }
        mu = first + sum / ((double)runs * (double)len);
    }
    for (size_t k = 0; k < runs; ++k)
        for (size_t i = 0; i < len; ++i) {
            double d = fn_sum_element(dtype, x, residual, k * stride + i) - mu;
            squares += d * d;
        }
    *mean = mu;
    *m2 = squares;
}

/* Every statistics path's fallback: a group's (mean - shift, m2) replaced by
 * fn_exact_moments's where either is non-finite, the group as described there.  Nothing
 * happens on the normal path but the test. */
static inline void fn_exact_if_overflowed(fastnorm_dtype_t dtype, const void *x,
                                          const void *residual, size_t runs, size_t len,
                                          size_t stride, int center, double shift,
                                          double *mean_shifted, double *m2) {
    if (isfinite(*mean_shifted) && isfinite(*m2)) return;
    double mean;
    fn_exact_moments(dtype, x, residual, runs, len, stride, center, &mean, m2);
    *mean_shifted = mean - shift;
}

static inline void fn_put(fastnorm_dtype_t dtype, void *base, size_t index, double value) {
    if (!base) return;
    if (dtype == FASTNORM_F64)
        ((double *)base)[index] = value;
    else
        ((float *)base)[index] = (float)value;
}

/* weight or bias entry i in the compute dtype, or `absent` when there is none */
static inline double fn_param(fastnorm_dtype_t dtype, const void *p, size_t i, double absent) {
    if (!p) return absent;
    return dtype == FASTNORM_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* y = (x - hi[c]) * scale[c] + beta[c], each channel's affine as compute-dtype values
 * (csize bytes) for rows_affine and col_normalize, from the float64 mean pair (mean[c],
 * mean_lo[c]) (0 for a NULL array), scale and shift: the mean's high part, the scale, and
 * the shift with the mean's low part folded in (one load and one subtraction fewer per
 * vector); hi is +0 where the mean is 0, so that x - hi is x exactly.  Rounded as the row
 * kernels round (kernel_row_normalize.h, kb_mean_pair and kb_normalize_constants): the
 * pair's sum split into a float high and low part, low times the scale rounded to float,
 * then the float sum.  So a channel gives row_normalize's bits on the row and the column
 * path alike, a channels-last view the same as its C-order copy. */
static inline void fn_affine_params(size_t csize, size_t channels, const double *mean,
                                    const double *mean_lo, const double *scale,
                                    const double *shift, void *hi_out, void *scale_out,
                                    void *beta_out) {
    for (size_t c = 0; c < channels; ++c) {
        double m = mean ? mean[c] : 0.0, m_lo = mean_lo ? mean_lo[c] : 0.0;
        int center = m != 0.0 || m_lo != 0.0;
        if (csize == 8) {
            ((double *)hi_out)[c] = center ? m : 0.0;
            ((double *)scale_out)[c] = scale[c];
            ((double *)beta_out)[c] = shift[c] + (center ? -m_lo * scale[c] : 0.0);
            continue;
        }
        double total = m + m_lo;
        float hi = (float)total, lo = (float)(total - (double)hi), sc = (float)scale[c];
        ((float *)hi_out)[c] = center ? hi : 0.0f;
        ((float *)scale_out)[c] = sc;
        ((float *)beta_out)[c] = (float)shift[c] + (center ? (float)(-(double)lo * (double)sc) : 0.0f);
    }
}

/* Chan et al.: merge partial (count_b, mean_b, m2_b) into (count, mean, m2). */
static inline void fn_merge(double *count, double *mean, double *m2, double count_b, double mean_b, double m2_b) {
    if (count_b == 0) return;
    if (*count == 0) { *count = count_b; *mean = mean_b; *m2 = m2_b; return; }
    double total = *count + count_b, delta = mean_b - *mean;
    *mean += delta * (count_b / total);
    *m2 += m2_b + delta * delta * (*count * count_b / total);
    *count = total;
}

/* mean and rstd of one group from its shifted partials; any NaN/inf in the group (seen as
 * non-finite partials) makes both NaN, so the whole group's output is NaN. */
static inline void fn_finish(fastnorm_norm_kind_t kind, double shift, double mean_shifted, double m2,
                      double count, double eps, double *mean, double *rstd) {
    if (!isfinite(mean_shifted) || !isfinite(m2)) {
        *mean = NAN;
        *rstd = NAN;
        return;
    }
    double spread = m2 / count; /* variance, or mean of squares for RMS */
    if (spread < 0) spread = 0;
    *mean = kind == FASTNORM_LAYER_NORM ? shift + mean_shifted : 0.0;
    *rstd = 1.0 / sqrt(spread + eps);
}

/* api_batch_norm.c: fastnorm_moments' column path (channels-last data), the statistics
 * read ahead or not (prefetch), and fastnorm_affine, its stores streamed or not (stream;
 * -1: as its own size says), for callers that run them over parts of a larger call
 * (GroupNorm's samples) and decide both for the whole call. */
fastnorm_status_t fn_moments_columns(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                                     size_t outer, size_t channels, size_t inner, const char *x,
                                     double *mean_out, double *m2_out, int threads, int prefetch);
fastnorm_status_t fn_affine_part(fastnorm_dtype_t dtype, size_t outer, size_t channels,
                                 size_t inner, const void *x, void *y, const double *mean,
                                 const double *var, const void *weight, const void *bias,
                                 double eps, int n_threads, int stream);

/* api_batch_norm.c: the per-channel statistics of short rows, which GroupNorm reuses for
 * its (sample, group) spans. */
fastnorm_status_t fn_moments_rows(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                                  size_t outer, size_t channels, size_t inner, const char *x,
                                  double *shift_out, double *mean_shifted_out,
                                  double *m2_out, int threads);

/* The calling thread's index in its OpenMP team (0 outside one): per-thread scratch. */
static inline int fn_thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

#endif /* FASTNORM_API_INTERNAL_H */
