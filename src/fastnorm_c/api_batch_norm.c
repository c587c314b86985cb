/*
 * api_batch_norm.c - BatchNorm's entry points: fastnorm_moments (per-channel statistics),
 * fastnorm_affine (the per-channel normalize, BatchNorm eval), fastnorm_batch_norm_train
 * (the two in one call) and fastnorm_update_running.  Channels of NCHW data are rows
 * (several samples to a kernel call when short); channels-last data and short rows take the
 * column path.
 */
#include "api_internal.h"

/* fn_moments_rows takes a channel's rows of at most FN_SPAN_ROW_BYTES up to FN_SPAN_BYTES
 * at a time (fn_moments_spans). */
#define FN_SPAN_ROW_BYTES 2048
#define FN_SPAN_BYTES 16384
/* Rows (the `inner` values of one channel in one sample) shorter than these take the
 * column path, which treats each of the channels * inner positions as a column: the
 * statistics for rows under 16 values, the affine for rows under FN_AFFINE_ROW_MIN (48,
 * api_internal.h).  Measured (ctypes A/B, 1 thread, Zen 3): statistics of 49-value rows
 * (7x7 feature maps) 0.32-0.63x the time on the row path, 16-value rows 0.33-0.71x,
 * 8-value rows even; the affine of 49-value rows 0.38-0.95x, but of 16- and 32-value rows
 * 1.1-1.9x. */
#define FN_MOMENTS_ROW_MIN 16

/* Elements per work item on the column path of moments / affine, and at least
 * FN_COLUMN_MIN_ROWS rows where that leaves four items: the statistics read each row a
 * strip (128 bytes) at a time, and a longer strided stream keeps the hardware prefetcher
 * ahead (fastnorm_moments (1568, 256) 0.81-0.85x the time, (784, 512) 0.71-0.77x).
 * 65536 elements rather than 16384, so rows of fewer than 256 columns make fewer, longer
 * chunks ((3136, 64): 4 of 784 rows, not 14 of 224), each with a part-filled Welford
 * block and a merge of its own (a C loop of `fastnorm_moments` (3136, 64) with 2 chunks
 * against 14 took 0.95x the time on 1 thread, 0.75x on 2).  Emerald Rapids Xeon,
 * in-process A/B, time per call, each order of the builds: channels-last BatchNorm
 * training (3136, 64) 0.93 / 0.93 (another pair 1.03 / 0.88), 2 threads 0.91 / 1.00 (0.91
 * / 0.84); `moments` 0.93 / 0.96, 2 threads 0.77 / 0.90; GroupNorm channels-last (1, 64,
 * 56, 56) 0.94 / 0.96, 2 threads 0.91 / 0.92; bfloat16 training 0.97 / 0.97, float16 0.97
 * / 0.94, float64 1.00 / 0.99, (100352, 64) 0.98 / 0.98, (12544, 128) 0.99 / 0.99.  32768
 * elements gained in neither order (training 0.97 / 1.03).  Rows of 256 columns or more
 * keep their chunks, which FN_COLUMN_MIN_ROWS sets. */
#define FN_COLUMN_ITEM_ELEMENTS 65536
#define FN_COLUMN_MIN_ROWS 256

/* Inputs of fewer than FN_COLUMN_FEW_ROWS (super-)rows of at least 2 * FN_COLUMN_PART
 * columns take their statistics in one chunk of rows, FN_COLUMN_PART columns a work
 * item: chunks of a few rows each merged every column in float64 twice (its pairs, its
 * odd row) and once more after.  Zen 5, in-process A/B, float32, 1 thread, time per call:
 * `moments` (49, 2048) 0.60, (98, 2048) 0.67, (196, 1000) 0.85, (196, 512) 0.88;
 * BatchNorm training channels-last (49, 2048) 0.76 (2 threads (98, 2048) 0.87);
 * GroupNorm (1, 2048, 7, 7) channels-last 0.78.  Past 256 rows it lost: (784, 512)
 * 1.08, (392, 1024) 1.03. */
#define FN_COLUMN_FEW_ROWS 256
#define FN_COLUMN_PART 256

/* Super-rows are a multiple of this many elements: a full vector in every family. */
#define FN_LANE_MULTIPLE 16
/* Rows of at least FN_SINGLE_ROW_MIN_WIDTH elements stay single rows (their last vector
 * part-used) where they would make fewer than FN_SUPER_ROWS_FEW super-rows, if that
 * vector's unused lanes are at most 1/32 of a row or the super-rows would be fewer than
 * FN_SUPER_ROWS_MIN.  A super-row of k rows has k columns a channel, each merged on its
 * own after the statistics, and k times the per-column parameters to spread: with few
 * rows that cost more than the part-used vectors.  Zen 5, in-process A/B, float32, 1
 * thread, time per call: BatchNorm training channels-last (49, 2047) 0.20 (k was 16),
 * (100, 1001) 0.32, (196, 1000) 0.71 (2 threads 0.70), (1568, 250) 0.87; eval 0.61, 0.82,
 * 0.83, 0.94.  More part-used lanes lost: eval (784, 100) 1.64, (3136, 65) 1.43; so did
 * many super-rows, whose rows start on a cache line and so can stream: eval (50176, 1000)
 * on 2 threads 1.32. */
#define FN_SINGLE_ROW_MIN_WIDTH 64
#define FN_SUPER_ROWS_FEW 256
#define FN_SUPER_ROWS_MIN 16

/* ---- column path of fastnorm_moments / fastnorm_affine ---------------------------- */

/* (outer, channels * inner) seen as super-rows of k original rows, k * channels * inner a
 * multiple of FN_LANE_MULTIPLE; the last `leftover` original rows stay narrow. */
typedef struct {
    size_t narrow_width, width, super_rows, leftover, chunk_rows, chunks;
} fn_columns;

static size_t fn_gcd(size_t a, size_t b) {
    while (b) { size_t t = a % b; a = b; b = t; }
    return a;
}

static fn_columns fn_columns_of(size_t outer, size_t channels, size_t inner) {
    fn_columns c;
    c.narrow_width = channels * inner;
    size_t k = FN_LANE_MULTIPLE / fn_gcd(c.narrow_width, FN_LANE_MULTIPLE);
    size_t waste = (FN_LANE_MULTIPLE - c.narrow_width % FN_LANE_MULTIPLE) % FN_LANE_MULTIPLE;
    if (c.narrow_width >= FN_SINGLE_ROW_MIN_WIDTH && outer / k < FN_SUPER_ROWS_FEW &&
        (waste * 32 <= c.narrow_width || outer / k < FN_SUPER_ROWS_MIN))
        k = 1;
    c.width = c.narrow_width * k;
    c.super_rows = outer / k;
    c.leftover = outer % k;
    c.chunk_rows = FN_COLUMN_ITEM_ELEMENTS / c.width;
    size_t quarter = (c.super_rows + 3) / 4;
    size_t min_rows = quarter < FN_COLUMN_MIN_ROWS ? quarter : FN_COLUMN_MIN_ROWS;
    if (c.chunk_rows < min_rows) c.chunk_rows = min_rows;
    if (c.chunk_rows < 16) c.chunk_rows = 16;
    c.chunks = (c.super_rows + c.chunk_rows - 1) / c.chunk_rows;
    /* An even number of equal chunks, from the shape alone (the statistics' bits follow the
     * chunks, and must not follow the thread count): two threads took 4 and 3 of 7 chunks
     * of (1568, 256), the last 32 rows.  Zen 5, in-process A/B, float32, time per call, 2
     * threads: `moments` (1568, 256) 0.81, channels-last BatchNorm training (8, 256, 14,
     * 14) 0.90-0.91, eval 0.96; 1 thread 1.02-1.04 (8 chunks' setup against 7). */
    if (c.chunks > 1) {
        size_t even = c.chunks + (c.chunks & 1);
        c.chunk_rows = (c.super_rows + even - 1) / even;
        c.chunks = (c.super_rows + c.chunk_rows - 1) / c.chunk_rows;
    }
    return c;
}

/* ---- fastnorm_moments --------------------------------------------------------------- */

/* Channel c of x seen as (outer, channels, inner), NCHW rows or channels-last columns
 * alike: its (mean less shift, m2) as every statistics path leaves them, recomputed exactly
 * where the sums overflowed (fn_exact_if_overflowed), mean and m2 NaN for a channel
 * holding a NaN or inf. */
static void fn_channel_finish(fastnorm_dtype_t dtype, const char *x, size_t outer,
                              size_t channels, size_t inner, size_t c, double shift, double mean,
                              double m2, double *mean_out, double *m2_out) {
    fn_exact_if_overflowed(dtype, x + c * inner * fn_storage_size(dtype), NULL, outer, inner,
                           channels * inner, 1, shift, &mean, &m2);
    mean_out[c] = mean;
    m2_out[c] = isfinite(m2) && isfinite(mean) ? m2 : NAN;
}

/* fn_moments_rows for short rows: an item is up to FN_SPAN_BYTES of a channel's rows (its
 * row in consecutive samples), read in place by one rows_stats call, so one kernel call
 * covers many rows.  A kernel call has a fixed cost (lane merge, tail) that is a large share
 * of a 196-element row's.  Copying the rows into one stack buffer first (the path before)
 * cost 42% of (8, 256, 196)'s statistics time. */
static fastnorm_status_t fn_moments_spans(const fastnorm_kernels_t *kernels,
                                          fastnorm_dtype_t dtype, size_t outer, size_t channels,
                                          size_t inner, const char *x, double *shift_out,
                                          double *mean_shifted_out, double *m2_out, int threads) {
    size_t size = fn_storage_size(dtype), rows_per_chunk = FN_SPAN_BYTES / (inner * size);
    size_t chunks = (outer + rows_per_chunk - 1) / rows_per_chunk, items = channels * chunks;
    double *part = malloc(sizeof(double) * 2 * items);
    if (!part) return FASTNORM_ERR_NO_MEMORY;
    for (size_t c = 0; c < channels; ++c) shift_out[c] = fn_element(dtype, x, c * inner);
    FN_PARALLEL_FOR(item, items, {
        size_t c = (size_t)item / chunks, first = ((size_t)item % chunks) * rows_per_chunk;
        size_t rows = outer - first < rows_per_chunk ? outer - first : rows_per_chunk;
        kernels->rows_stats[dtype](x + (first * channels + c) * inner * size, rows, inner,
                                   channels * inner, shift_out[c], &part[2 * item],
                                   &part[2 * item + 1]);
    });
    for (size_t c = 0; c < channels; ++c) {
        double count = 0, mean = 0, m2 = 0;
        for (size_t k = 0; k < chunks; ++k) {
            size_t first = k * rows_per_chunk;
            size_t rows = outer - first < rows_per_chunk ? outer - first : rows_per_chunk;
            fn_merge(&count, &mean, &m2, (double)(rows * inner), part[2 * (c * chunks + k)],
                     part[2 * (c * chunks + k) + 1]);
        }
        fn_channel_finish(dtype, x, outer, channels, inner, c, shift_out[c], mean, m2,
                          mean_shifted_out, m2_out);
    }
    free(part);
    return FASTNORM_OK;
}

/* Row path of the per-channel statistics: for every channel c, the shift (its first value),
 * the mean relative to that shift and m2, each `channels` doubles.  The shifted mean and
 * shift stay apart so that a float64 caller can subtract them as an exact pair. */
fastnorm_status_t fn_moments_rows(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                                         size_t outer, size_t channels, size_t inner, const char *x,
                                         double *shift_out, double *mean_shifted_out,
                                         double *m2_out, int threads) {
    size_t size = fn_storage_size(dtype), row_bytes = inner * size;
    if (outer > 1 && row_bytes <= FN_SPAN_ROW_BYTES)
        return fn_moments_spans(kernels, dtype, outer, channels, inner, x, shift_out,
                                mean_shifted_out, m2_out, threads);
    size_t segments = (inner + FN_ROW_SEGMENT - 1) / FN_ROW_SEGMENT;
    size_t items = outer * channels * segments;
    /* rows past FN_SPAN_ROW_BYTES read ahead: float32 `moments` (32, 64, 56, 56) 0.84x the
     * time, (64, 3, 224, 224) 0.74x, BatchNorm training (32, 64, 56, 56) 0.91x (Zen 5) */
    int prefetch = outer * channels * inner * size >= FN_PREFETCH_MIN_BYTES;
    double *part = malloc(sizeof(double) * 2 * items);
    if (!part) return FASTNORM_ERR_NO_MEMORY;
    for (size_t c = 0; c < channels; ++c) shift_out[c] = fn_element(dtype, x, c * inner);
    FN_PARALLEL_FOR(item, items, {
        size_t row = (size_t)item / segments, begin = ((size_t)item % segments) * FN_ROW_SEGMENT;
        size_t length = inner - begin < FN_ROW_SEGMENT ? inner - begin : FN_ROW_SEGMENT;
        kernels->row_stats[dtype](x + (row * inner + begin) * size, NULL, NULL, length,
                                  shift_out[row % channels], 1, prefetch, &part[2 * item],
                                  &part[2 * item + 1]);
    });
    for (size_t c = 0; c < channels; ++c) {
        double count = 0, mean = 0, m2 = 0;
        for (size_t o = 0; o < outer; ++o)
            for (size_t s = 0; s < segments; ++s) {
                size_t item = (o * channels + c) * segments + s, begin = s * FN_ROW_SEGMENT;
                size_t length = inner - begin < FN_ROW_SEGMENT ? inner - begin : FN_ROW_SEGMENT;
                fn_merge(&count, &mean, &m2, (double)length, part[2 * item], part[2 * item + 1]);
            }
        fn_channel_finish(dtype, x, outer, channels, inner, c, shift_out[c], mean, m2,
                          mean_shifted_out, m2_out);
    }
    free(part);
    return FASTNORM_OK;
}

fastnorm_status_t fn_moments_columns(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                                     size_t outer, size_t channels, size_t inner, const char *x,
                                     double *mean_out, double *m2_out, int threads,
                                     int prefetch) {
    fn_columns c = fn_columns_of(outer, channels, inner);
    size_t size = fn_storage_size(dtype);
    /* Few rows of many columns: every row in one chunk, work items of FN_COLUMN_PART
     * columns (the last one takes the rest), so no chunk merges */
    size_t col_parts = 1, part_width = c.width;
    if (c.super_rows && c.super_rows < FN_COLUMN_FEW_ROWS && c.width >= 2 * FN_COLUMN_PART) {
        col_parts = c.width / FN_COLUMN_PART;
        part_width = FN_COLUMN_PART;
        c.chunk_rows = c.super_rows;
        c.chunks = 1;
    }
    /* per chunk and column: shifted mean, m2; then the merged column and the leftover rows */
    size_t parts = c.chunks * c.width;
    double *scratch = malloc(sizeof(double) * (2 * parts + 2 * c.narrow_width + 2 * c.width + 1));
    if (!scratch) return FASTNORM_ERR_NO_MEMORY;
    double *part_mean = scratch, *part_m2 = scratch + parts;
    double *left_mean = scratch + 2 * parts, *left_m2 = left_mean + c.narrow_width;
    double *col_mean = left_m2 + c.narrow_width, *col_m2 = col_mean + c.width;
    FN_PARALLEL_FOR(item, c.chunks * col_parts, {
        size_t chunk = (size_t)item / col_parts, part = (size_t)item % col_parts;
        size_t first = chunk * c.chunk_rows, col = part * part_width;
        size_t rows = c.super_rows - first < c.chunk_rows ? c.super_rows - first : c.chunk_rows;
        size_t cols = part + 1 == col_parts ? c.width - col : part_width;
        size_t at = chunk * c.width + col;
        kernels->col_stats[dtype](x + (first * c.width + col) * size, rows, cols, c.width,
                                  x + col * size, 1, prefetch, part_mean + at, part_m2 + at);
    });
    if (c.leftover)
        kernels->col_stats[dtype](x + c.super_rows * c.width * size, c.leftover, c.narrow_width,
                                  c.narrow_width, x, 1, prefetch, left_mean, left_m2);
    /* each column's chunk partials merged in chunk order (Chan's formula, fn_merge's
     * arithmetic); every column of a chunk has the same count, so the weights are computed
     * once per chunk and the loop over columns vectorizes (one column at a time through
     * fn_merge was a chain of divisions: 9 us of a 40 us (3136, 64) call) */
    double count = 0;
    for (size_t j = 0; j < c.width; ++j) col_mean[j] = col_m2[j] = 0; /* no chunk: no rows */
    for (size_t chunk = 0; chunk < c.chunks; ++chunk) {
        size_t first = chunk * c.chunk_rows;
        double rows = (double)(c.super_rows - first < c.chunk_rows ? c.super_rows - first : c.chunk_rows);
        double total = count + rows, weight = rows / total, cross = count * rows / total;
        const double *mean_b = part_mean + chunk * c.width, *m2_b = part_m2 + chunk * c.width;
        for (size_t j = 0; j < c.width; ++j) {
            double delta = mean_b[j] - col_mean[j];
            col_mean[j] = chunk ? col_mean[j] + delta * weight : mean_b[j];
            col_m2[j] = chunk ? col_m2[j] + (m2_b[j] + delta * delta * cross) : m2_b[j];
        }
        count = total;
    }
    if (inner == 1 && c.width == channels && c.super_rows) {
        /* each channel one column (channels-last, single rows): the loop below without its
         * merges, whose divisions and branches cost as much as the statistics of a few
         * rows; the same bits (Zen 5, in-process A/B, float32, 1 thread: `moments` (49,
         * 2048) 0.78x the time, BatchNorm training 0.87x, GroupNorm (1, 2048, 7, 7)
         * channels-last 0.87x) */
        for (size_t j = 0; j < channels; ++j) {
            mean_out[j] = fn_element(dtype, x, j) + col_mean[j];
            m2_out[j] = col_m2[j];
        }
        for (size_t j = 0; j < channels; ++j)
            if (!isfinite(mean_out[j]) || !isfinite(m2_out[j]))
                fn_channel_finish(dtype, x, outer, channels, inner, j, 0.0, mean_out[j],
                                  m2_out[j], mean_out, m2_out);
        free(scratch);
        return FASTNORM_OK;
    }
    for (size_t channel = 0; channel < channels; ++channel) {
        double ch_count = 0, mean = 0, m2 = 0;
        for (size_t column = 0; column < c.width / inner; column += channels)
        for (size_t j = (column + channel) * inner; j < (column + channel + 1) * inner; ++j) {
            /* column j exists in x's first row only when j is narrow or a super-row exists */
            double shift = c.super_rows || j < c.narrow_width ? fn_element(dtype, x, j) : 0.0;
            double col_count = count, j_mean = col_mean[j], j_m2 = col_m2[j];
            if (j < c.narrow_width && c.leftover)
                fn_merge(&col_count, &j_mean, &j_m2, (double)c.leftover, left_mean[j], left_m2[j]);
            fn_merge(&ch_count, &mean, &m2, col_count, shift + j_mean, j_m2);
        }
        fn_channel_finish(dtype, x, outer, channels, inner, channel, 0.0, mean, m2, mean_out,
                          m2_out);
    }
    free(scratch);
    return FASTNORM_OK;
}

fastnorm_status_t fastnorm_moments(fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
                                   const void *x, double *mean_out, double *m2_out, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !mean_out || !m2_out) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, channels, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    int threads = fn_threads(n_threads, total);
    if (inner >= FN_MOMENTS_ROW_MIN) {
        double *shift = malloc(sizeof(double) * channels);
        if (!shift) return FASTNORM_ERR_NO_MEMORY;
        fastnorm_status_t status = fn_moments_rows(fastnorm_active_kernels(), dtype, outer, channels,
                                                   inner, x, shift, mean_out, m2_out, threads);
        for (size_t c = 0; status == FASTNORM_OK && c < channels; ++c) mean_out[c] += shift[c];
        free(shift);
        return status;
    }
    return fn_moments_columns(fastnorm_active_kernels(), dtype, outer, channels, inner, x,
                              mean_out, m2_out, threads,
                              total * fn_storage_size(dtype) >= FN_COL_PREFETCH_MIN_BYTES);
}

/* ---- fastnorm_affine ---------------------------------------------------------------- */

/* The parameters of a super-row's `width` columns from each channel's (items of `size`
 * bytes): column j's at position (j - lead) mod width, where column j is channel
 * (j / inner) mod channels.  Written in runs: copies of consecutive channels when inner
 * is 1 (channels-last), else a fill of each channel's `inner` columns. */
static void fn_spread_columns(char *restrict dst, const char *restrict per_channel, size_t channels,
                              size_t inner, size_t width, size_t lead, size_t size) {
    if (inner == 1) {
        for (size_t at = 0, from = lead % channels; at < width; from = 0) {
            size_t run = channels - from < width - at ? channels - from : width - at;
            memcpy(dst + at * size, per_channel + from * size, run * size);
            at += run;
        }
        return;
    }
    size_t ch = lead / inner % channels, skip = lead % inner;
    for (size_t at = 0; at < width; skip = 0, ch = ch + 1 == channels ? 0 : ch + 1) {
        size_t run = inner - skip < width - at ? inner - skip : width - at;
        if (size == 8) {
            double value = ((const double *)per_channel)[ch], *d = (double *)dst + at;
            for (size_t i = 0; i < run; ++i) d[i] = value;
        } else {
            float value = ((const float *)per_channel)[ch], *d = (float *)dst + at;
            for (size_t i = 0; i < run; ++i) d[i] = value;
        }
        at += run;
    }
}

/* y = (x - mean[c]) * scale[c] + shift[c] over (outer, channels, inner); the float64
 * per-channel arrays are the caller's.  stream: the stores' kind, or -1 for this call's
 * own choice by its size. */
static fastnorm_status_t fn_affine(fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
                                   size_t total, const void *x, void *y, const double *mean,
                                   const double *scale, const double *shift, int n_threads,
                                   int stream) {
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
    size_t size = fn_storage_size(dtype), csize = fn_compute_size(dtype);
    int threads = fn_threads(n_threads, total);
    if (stream < 0)
        stream = fn_stream(x, y, total * size,
                           threads > 1 ? FN_STREAM_MIN_BYTES_OTHERS : FN_STREAM_MIN_BYTES);
    const char *xs = (const char *)x;
    char *ys = (char *)y;
    if (inner >= FN_AFFINE_ROW_MIN && inner <= FN_ROW_SEGMENT) { /* a thread's rows per call */
        size_t rows = outer * channels;
        char *hi = malloc(3 * channels * csize);
        if (!hi) return FASTNORM_ERR_NO_MEMORY;
        char *sc = hi + channels * csize, *beta = sc + channels * csize;
        fn_affine_params(csize, channels, mean, NULL, scale, shift, hi, sc, beta);
        FN_PARALLEL_FOR(t, threads, {
            size_t first = rows * (size_t)t / (size_t)threads;
            size_t last = rows * (size_t)(t + 1) / (size_t)threads, offset = first * inner * size;
            kernels->rows_affine[dtype](xs + offset, last - first, inner, first, channels, hi, sc,
                                        beta, ys + offset, stream);
        });
        free(hi);
        return FASTNORM_OK;
    }
    if (inner >= FN_AFFINE_ROW_MIN) {
        size_t segments = (inner + FN_ROW_SEGMENT - 1) / FN_ROW_SEGMENT;
        size_t items = outer * channels * segments;
        FN_PARALLEL_FOR(item, items, {
            size_t row = (size_t)item / segments, begin = ((size_t)item % segments) * FN_ROW_SEGMENT;
            size_t channel = row % channels;
            size_t length = inner - begin < FN_ROW_SEGMENT ? inner - begin : FN_ROW_SEGMENT;
            size_t offset = (row * inner + begin) * size;
            kernels->row_normalize[dtype](xs + offset, NULL, NULL, length, mean ? mean[channel] : 0.0, 0.0,
                                          scale[channel], shift[channel], NULL, NULL, ys + offset,
                                          NULL, stream);
        });
        return FASTNORM_OK;
    }
    fn_columns c = fn_columns_of(outer, channels, inner);
    /* Where y is not on a cache line (NumPy puts arrays 16 bytes past one), every other
     * vector store splits across two lines, and the kernel streams only when every row
     * starts aligned, so a large channels-last output was never streamed.  Without leftover
     * rows the pass starts at y's first line boundary instead: super-row r is read from
     * element r * width + lead, with the parameters stored rotated by `lead` columns to
     * match; the first `lead` elements (the parameters' last `lead` entries) and the last
     * super-row, `lead` elements short, are calls of their own.  Measured (AVX2, Zen 3,
     * 1 thread, alternating in one process, time over np.copyto, three runs): channels-last
     * BatchNorm eval (32, 56, 56, 64) 0.97-1.05 -> 0.81-0.84, (64, 224, 224, 3) 0.93-1.03
     * -> 0.75-0.80; training 1.72-1.76 -> 1.51-1.60 and 1.60-1.82 -> 1.47-1.60. */
    size_t lead = 0;
    if (!c.leftover && c.super_rows > 1 && (uintptr_t)y % size == 0 && c.width * size % 64 == 0)
        lead = (64 - (uintptr_t)y % 64) % 64 / size;
    /* the parameters of one super-row's columns, y = (x - hi) * scale + shift', on a cache
     * line, as every vector loads them (channels-last (3136, 64) float32 took 1.1-1.2x the
     * time with them 16 bytes past one) */
    void *param_block;
    char *params = fn_malloc_aligned(3 * c.width * csize, &param_block);
    char *channel_block = malloc(3 * channels * csize);
    if (!params || !channel_block) {
        free(param_block);
        free(channel_block);
        return FASTNORM_ERR_NO_MEMORY;
    }
    char *cols[3], *per_channel[3]; /* mean_hi, scale, shift' */
    for (int k = 0; k < 3; ++k) {
        cols[k] = params + k * c.width * csize;
        per_channel[k] = channel_block + k * channels * csize;
    }
    fn_affine_params(csize, channels, mean, NULL, scale, shift, per_channel[0], per_channel[1],
                     per_channel[2]);
    for (int k = 0; k < 3; ++k)
        fn_spread_columns(cols[k], per_channel[k], channels, inner, c.width, lead, csize);
    free(channel_block);
    const char *mean_hi = cols[0], *col_scale = cols[1], *col_shift = cols[2];
    /* One item per chunk, as the statistics split them (fn_moments_columns), so that with
     * BatchNorm training each thread normalizes the rows it has just read; the first
     * `lead` elements go with the first chunk, the narrow leftover rows with the last. */
    size_t items = c.chunks ? c.chunks : 1;
    FN_PARALLEL_FOR(chunk, items, {
        size_t first = (size_t)chunk * c.chunk_rows;
        if (chunk == 0 && lead) { /* the lead elements' parameters: the rotated last ones */
            size_t at = (c.width - lead) * csize;
            kernels->col_normalize[dtype](xs, 1, lead, lead, mean ? mean_hi + at : NULL, NULL,
                                          col_scale + at, NULL, NULL, col_shift + at, ys, stream);
        }
        if (first < c.super_rows) {
            size_t rows = c.super_rows - first < c.chunk_rows ? c.super_rows - first : c.chunk_rows;
            size_t offset = (first * c.width + lead) * size;
            int last = lead && first + rows == c.super_rows; /* its last super-row is short */
            kernels->col_normalize[dtype](xs + offset, rows - last, c.width, c.width,
                                          mean ? mean_hi : NULL, NULL, col_scale, NULL, NULL,
                                          col_shift, ys + offset, stream);
            if (last) {
                offset += (rows - 1) * c.width * size;
                kernels->col_normalize[dtype](xs + offset, 1, c.width - lead, c.width,
                                              mean ? mean_hi : NULL, NULL, col_scale, NULL, NULL,
                                              col_shift, ys + offset, stream);
            }
        }
        if ((size_t)chunk + 1 == items && c.leftover) {
            size_t offset = c.super_rows * c.width * size;
            kernels->col_normalize[dtype](xs + offset, c.leftover, c.narrow_width, c.narrow_width,
                                          mean ? mean_hi : NULL, NULL, col_scale, NULL, NULL,
                                          col_shift, ys + offset, stream);
        }
    });
    free(param_block);
    return FASTNORM_OK;
}

/* The column path loads a mean, a scale and a shift per vector; folding the mean into the
 * shift, y = x * scale + (shift - mean * scale), saves one load and one subtraction
 * (channels-last (3136, 64) float32 0.78-0.83x the time, (200704, 3) 0.71x; ctypes A/B,
 * 1 thread).  It rounds x * scale where the unfolded form rounds (x - mean) * scale, which
 * adds at most about |mean * scale| ulps-worth of error: so a channel folds only if
 * |mean| <= sqrt(var + eps), where |mean * scale| <= |weight|, the output's own unit, or if
 * its mean or scale is NaN (NaN either way).  Offset data (a mean of 100, a spread of 1)
 * keeps the exact subtraction.  The decision is per channel, so a channel's results never
 * depend on another's statistics: a folded channel's mean becomes 0, which subtracts
 * exactly.  The kernels skip the subtraction when every channel folded.  The family's
 * channel_params computes all of it (kernels.h). */

fastnorm_status_t fastnorm_affine(fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
                                  const void *x, void *y, const double *mean, const double *var,
                                  const void *weight, const void *bias, double eps, int n_threads) {
    return fn_affine_part(dtype, outer, channels, inner, x, y, mean, var, weight, bias, eps,
                          n_threads, -1);
}

fastnorm_status_t fn_affine_part(fastnorm_dtype_t dtype, size_t outer, size_t channels,
                                 size_t inner, const void *x, void *y, const double *mean,
                                 const double *var, const void *weight, const void *bias,
                                 double eps, int n_threads, int stream) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !y || !var) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, channels, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    if (!(eps >= 0) || !isfinite(eps)) return FASTNORM_ERR_BAD_VALUE;
    /* fold weight / sqrt(var + eps) and bias per channel in float64, and the mean where
     * it may be (above), on every path, so that the layouts agree; IEEE arithmetic
     * decides a negative variance (NaN) or eps == 0 with a zero variance (inf) */
    double *folded = malloc(sizeof(double) * 3 * channels);
    if (!folded) return FASTNORM_ERR_NO_MEMORY;
    double *scale = folded, *shift = folded + channels, *centre = folded + 2 * channels;
    int all_folded = fastnorm_active_kernels()->channel_params(
        channels, mean, var, weight, bias, dtype == FASTNORM_F64, eps, scale, shift, centre);
    if (mean) mean = all_folded ? NULL : centre;
    fastnorm_status_t status = fn_affine(dtype, outer, channels, inner, total, x, y, mean, scale,
                                         shift, n_threads, stream);
    free(folded);
    return status;
}

/* ---- fastnorm_batch_norm_train ------------------------------------------------------ */

/* With one sample, a channel longer than rows_short_max values (below) and of at most
 * this many bytes is normalized right after its statistics, while it is still in the L2
 * cache.  Measured (ctypes A/B, 1 thread, Zen 3): (1, 64, 3136) float32 0.75-0.86x the
 * time of statistics then normalize sweeps.  With several samples a channel's rows lie a
 * sample apart, and the per-channel order lost more to the strided reads than it saved:
 * (16, 64, 1024) 1.22-1.37x, (8, 256, 196) 0.96-1.04x; those take the two sweeps. */
#define FN_BN_FUSED_MAX_BYTES (256u << 10)
/* ... and a channel of at most this many bytes takes its statistics a channel ahead, in one
 * loop with the previous channel's normalize pass (fn_bn_train_channels), so that the
 * statistics' arithmetic overlaps the pass's loads and stores while both rows fit L1.
 * Emerald Rapids Xeon (48 KB L1), in-process A/B against statistics then normalize per
 * channel, time per call, 1 thread, each order of the builds: float32 (1, 64, 56, 56)
 * (12.5 KB channels) 0.93 / 0.87, (1, 256, 28, 28) 0.89 / 0.82, float16 (1, 64, 56, 56)
 * 0.96 / 0.96, bfloat16 0.99 / 0.98, 2 threads float32 0.96 / 1.01; but float64 (1, 64,
 * 56, 56), 25 KB channels, lost (1.06 / 1.07), while its (1, 256, 28, 28) stayed level
 * (1.03 / 1.01). */
#define FN_BN_AHEAD_MAX_BYTES (16u << 10)

typedef struct {
    const fastnorm_kernels_t *kernels;
    fastnorm_dtype_t dtype;
    size_t inner;
    const char *x;
    char *y;
    const void *weight, *bias;
    double eps, *mean_out, *var_out;
    int ahead; /* the statistics a channel ahead (FN_BN_AHEAD_MAX_BYTES) */
} fn_bn_job;

/* Channel c's mean and variance (stored) from its row statistics about `shift`, and the
 * scale and beta of its normalize pass. */
static void fn_bn_channel_finish(const fn_bn_job *job, size_t c, double shift,
                                 double *mean_shifted, double *m2, double *scale, double *beta) {
    size_t offset = c * job->inner * fn_storage_size(job->dtype);
    fn_exact_if_overflowed(job->dtype, job->x + offset, NULL, 1, job->inner, 0, 1, shift,
                           mean_shifted, m2);
    double mean = shift + *mean_shifted;
    double var = isfinite(*m2) && isfinite(mean) ? *m2 / (double)job->inner : NAN;
    job->mean_out[c] = mean;
    job->var_out[c] = var;
    *scale = fn_param(job->dtype, job->weight, c, 1.0) / sqrt(var + job->eps);
    *beta = fn_param(job->dtype, job->bias, c, 0.0);
}

/* Channel c's statistics about its first value. */
static double fn_bn_channel_stats(const fn_bn_job *job, size_t c, double *mean_shifted,
                                  double *m2) {
    size_t inner = job->inner;
    double shift = fn_element(job->dtype, job->x, c * inner);
    job->kernels->row_stats[job->dtype](job->x + c * inner * fn_storage_size(job->dtype), NULL,
                                        NULL, inner, shift, 1, 0, mean_shifted, m2);
    return shift;
}

/* Channels first ... end - 1, each a row of `inner` values: each channel's statistics, then
 * its normalize pass; with job->ahead, channel c + 1's statistics in one loop with channel
 * c's normalize pass (row_stats_normalize, the same results as the two kernels).  The mean
 * is the pair (shift, mean_shifted): exact for float64.  In place too: channel c's outputs
 * overlap no other channel's inputs. */
static void fn_bn_train_channels(const fn_bn_job *job, size_t first, size_t end) {
    size_t inner = job->inner, bytes = inner * fn_storage_size(job->dtype);
    double mean_shifted = 0, m2 = 0, first_center = NAN; /* channel c + 1's (kernels.h) */
    double shift = first < end ? fn_bn_channel_stats(job, first, &mean_shifted, &m2) : 0;
    for (size_t c = first; c < end; ++c) {
        double scale, beta;
        fn_bn_channel_finish(job, c, shift, &mean_shifted, &m2, &scale, &beta);
        const char *x = job->x + c * bytes;
        if (job->ahead && c + 1 < end) {
            double next_shift = fn_element(job->dtype, job->x, (c + 1) * inner);
            double next_mean_shifted, next_m2;
            job->kernels->row_stats_normalize[job->dtype](
                x + bytes, inner, next_shift, 1, &next_mean_shifted, &next_m2, x, shift,
                mean_shifted, scale, beta, NULL, NULL, job->y + c * bytes, 0,
                c + 2 < end ? x + 2 * bytes : NULL, fn_center_handoff(&first_center));
            shift = next_shift, mean_shifted = next_mean_shifted, m2 = next_m2;
            continue;
        }
        job->kernels->row_normalize[job->dtype](x, NULL, NULL, inner, shift, mean_shifted, scale,
                                                beta, NULL, NULL, job->y + c * bytes, NULL, 0);
        if (c + 1 < end) shift = fn_bn_channel_stats(job, c + 1, &mean_shifted, &m2);
    }
}

fastnorm_status_t fastnorm_batch_norm_train(fastnorm_dtype_t dtype, size_t outer, size_t channels,
                                            size_t inner, const void *x, void *y,
                                            const void *weight, const void *bias, double eps,
                                            double *mean_out, double *var_out, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !y || !mean_out || !var_out) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, channels, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    if (!(eps >= 0) || !isfinite(eps)) return FASTNORM_ERR_BAD_VALUE;
    int threads = fn_threads(n_threads, total);
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
    if (outer == 1 && inner <= kernels->rows_short_max[dtype]) {
        /* small maps: each thread's share of the channels in one rows_short_channels call
         * (a channel's results depend on the channel alone, not on the thread count).
         * Against a row_stats and a row_normalize call a channel (below), in-process A/B,
         * Zen 5, time per call, 1 thread: float32 (1, 512, 7, 7) 0.32, (1, 256, 14, 14)
         * 0.49, (1, 64, 16, 16) 0.69, (1, 64, 4, 4) 0.40 (against the column path);
         * float64 (1, 512, 7, 7) 0.49, bfloat16 0.31; 2 threads (1, 1024, 7, 7) 0.42;
         * AVX2 float32 (1, 512, 7, 7) 0.31, float64 0.46, (1, 256, 14, 14) 0.78.  Up to
         * rows_short_max, not the kernel's longer rows_short_channels_max: against the
         * fused channels below, AVX2 (1, 256, 16, 16) took 1.06x the time, float64 (1,
         * 256, 8, 16) 1.10x. */
        size_t row = inner * fn_storage_size(dtype), csize = fn_compute_size(dtype);
        FN_PARALLEL_FOR(t, threads, {
            size_t first = channels * (size_t)t / (size_t)threads;
            size_t rows = channels * (size_t)(t + 1) / (size_t)threads - first;
            kernels->rows_short_channels[dtype](
                (const char *)x + first * row, rows, inner, eps,
                weight ? (const char *)weight + first * csize : NULL,
                bias ? (const char *)bias + first * csize : NULL, (char *)y + first * row,
                mean_out + first, var_out + first);
        });
        return FASTNORM_OK;
    }
    if (outer == 1 && inner >= FN_MOMENTS_ROW_MIN &&
        inner * fn_storage_size(dtype) <= FN_BN_FUSED_MAX_BYTES) {
        fn_bn_job job = {kernels, dtype, inner, (const char *)x, (char *)y,
                         weight, bias, eps, mean_out, var_out,
                         inner * fn_storage_size(dtype) <= FN_BN_AHEAD_MAX_BYTES};
        /* one contiguous share of the channels per thread, as the static schedule gives */
        FN_PARALLEL_FOR(t, threads, {
            fn_bn_train_channels(&job, channels * (size_t)t / (size_t)threads,
                                 channels * (size_t)(t + 1) / (size_t)threads);
        });
        return FASTNORM_OK;
    }
    /* a statistics sweep, then a normalize sweep */
    fastnorm_status_t status = fastnorm_moments(dtype, outer, channels, inner, x, mean_out,
                                                var_out, n_threads);
    if (status != FASTNORM_OK) return status;
    for (size_t c = 0; c < channels; ++c) var_out[c] /= (double)(outer * inner);
    return fastnorm_affine(dtype, outer, channels, inner, x, y, mean_out, var_out, weight, bias,
                           eps, n_threads);
}

fastnorm_status_t fastnorm_update_running(fastnorm_dtype_t running_dtype, size_t channels,
                                          size_t count, double momentum, const double *mean,
                                          const double *var, void *running_mean,
                                          void *running_var) {
    if (running_dtype != FASTNORM_F32 && running_dtype != FASTNORM_F64) return FASTNORM_ERR_BAD_DTYPE;
    if (channels && (!mean || !var || !running_mean || !running_var)) return FASTNORM_ERR_NULL_POINTER;
    if (count < 2 || !(momentum >= 0.0 && momentum <= 1.0)) return FASTNORM_ERR_BAD_VALUE;
    const double keep = 1.0 - momentum, unbias = (double)count / (double)(count - 1);
    if (running_dtype == FASTNORM_F32) {
        float *rm = (float *)running_mean, *rv = (float *)running_var, keep32 = (float)keep;
        for (size_t c = 0; c < channels; ++c) {
            rm[c] = (float)((double)(keep32 * rm[c]) + momentum * mean[c]);
            rv[c] = (float)((double)(keep32 * rv[c]) + momentum * (var[c] * unbias));
        }
    } else {
        double *rm = (double *)running_mean, *rv = (double *)running_var;
        for (size_t c = 0; c < channels; ++c) {
            rm[c] = keep * rm[c] + momentum * mean[c];
            rv[c] = keep * rv[c] + momentum * (var[c] * unbias);
        }
    }
    return FASTNORM_OK;
}
