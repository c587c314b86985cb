/*
 * api_backward.c - the backward passes' entry points: fastnorm_norm_backward (LayerNorm and
 * RMSNorm over rows, on the row_grad_sums / row_grad_apply kernels) and
 * fastnorm_batch_norm_backward (BatchNorm over NCHW channel rows on the same kernels, or
 * over columns, col_grad_sums / col_grad_apply, for short rows and channels-last data).
 */
#include "api_internal.h"

/* A work item of the row backward is at least FN_GRAD_ITEM_ELEMENTS values, and there are
 * at most FN_GRAD_ITEMS of them: each keeps float64 column sums (grad_weight's and
 * grad_bias's) of its own, added in item order, so the results follow the shape alone. */
#define FN_GRAD_ITEM_ELEMENTS 32768
#define FN_GRAD_ITEMS 16
/* Rows a work item adds into compute-dtype column sums before it adds those to its float64
 * ones: 16 rounded values in float32 per column, then float64 sums.  BatchNorm's column
 * path takes up to 4 times as many rows where the columns are fewer than 256 (a block's
 * float64 additions and kernel call cost as much as its rows' work at 64 columns). */
#define FN_GRAD_COLUMN_BLOCK 16

/* Whether row_grad_apply streams grad_x: past the caches (api_internal.h's thresholds) and
 * in rows of at least FN_GRAD_STREAM_ROW_BYTES, unless grad_x overwrites an input, whose
 * lines are owned already.  Zen 5, in-process A/B, float32 LayerNorm backward, 1 thread,
 * time streamed over plain: 512x4096 0.83-0.87, 2048x4096 0.87, 2048x1536 0.87, BatchNorm
 * (32, 64, 56, 56) 0.87-0.89; but rows of 768 values went either way, 4096x768 0.95-1.27,
 * 8192x768 1.06, 32768x768 0.88-1.06, and 6144x512 took 1.09. */
#define FN_GRAD_STREAM_ROW_BYTES 4096
static int fn_grad_stream(const void *grad_y, const void *x, const void *grad_x, size_t bytes,
                          size_t row_bytes, size_t min_bytes) {
    if (grad_x == grad_y || row_bytes < FN_GRAD_STREAM_ROW_BYTES) return 0;
    return fn_stream(x, grad_x, bytes, min_bytes);
}

/* grad_bias[j] and grad_weight[j] (each NULL or n values) from the work items' float64
 * sums, item k's n sums of grad_y and then n of grad_y * xhat at base + k * item_bytes,
 * added in item order. */
static void fn_merge_items(const char *base, size_t items, size_t item_bytes, size_t n,
                           double *grad_weight, double *grad_bias) {
    for (size_t j = 0; j < n; ++j) {
        double g = 0, gx = 0;
        for (size_t item = 0; item < items; ++item) {
            const double *sums = (const double *)(base + item * item_bytes);
            g += sums[j];
            gx += sums[n + j];
        }
        if (grad_bias) grad_bias[j] = g;
        if (grad_weight) grad_weight[j] = gx;
    }
}

/* n rounded up to whole 16-lane vectors (kernels.h, row_grad_sums's column padding) */
static size_t fn_padded(size_t n) { return (n + 15) / 16 * 16; }

/* fastnorm_norm_backward of inner > 1: per sample, a block of `middle` rows (the normalized
 * values of each position) and `inner` columns (the positions, each with its statistics):
 * the columns' sums down the rows (col_grad_sums, FN_GRAD_COLUMN_BLOCK rows at a time,
 * then float64), then grad_x and the rows' sums (col_grad_rows).  Work items are runs of
 * samples fixed by the shape, each with its rows' float64 sums, added in item order; the
 * column scratch is each thread's own. */
static fastnorm_status_t fn_norm_backward_columns(const fastnorm_kernels_t *kernels,
                                                  fastnorm_norm_kind_t kind,
                                                  fastnorm_dtype_t dtype, size_t outer,
                                                  size_t middle, size_t inner, const char *gs,
                                                  const char *xs, const char *mean,
                                                  const char *rstd, const char *weight,
                                                  char *ys, double *grad_weight,
                                                  double *grad_bias, int threads) {
    size_t size = fn_storage_size(dtype), csize = fn_compute_size(dtype);
    size_t padded = fn_padded(inner), items = outer < FN_GRAD_ITEMS ? outer : FN_GRAD_ITEMS;
    /* a thread's: the columns' float64 sums, their compute-dtype blocks, a, b and zeros
     * (RMSNorm's mean) */
    size_t thread_bytes = 2 * inner * sizeof(double) + 5 * padded * csize;
    size_t item_bytes = 2 * middle * sizeof(double); /* an item's rows' sums */
    void *scratch_block;
    char *scratch = fn_malloc_aligned((size_t)threads * thread_bytes + items * item_bytes,
                                      &scratch_block);
    if (!scratch) return FASTNORM_ERR_NO_MEMORY;
    memset(scratch, 0, (size_t)threads * thread_bytes + items * item_bytes);
    char *items_base = scratch + (size_t)threads * thread_bytes;
    int center = kind == FASTNORM_LAYER_NORM;
    FN_PARALLEL_FOR(item, items, {
        char *own = scratch + (size_t)fn_thread_index() * thread_bytes;
        double *sum_gw = (double *)own, *sum_gw_xhat = sum_gw + inner;
        char *block_g = (char *)(sum_gw_xhat + inner), *block_g_xhat = block_g + padded * csize;
        char *a = block_g_xhat + padded * csize, *b = a + padded * csize, *zeros = b + padded * csize;
        double *row_g = (double *)(items_base + (size_t)item * item_bytes), *row_g_xhat = row_g + middle;
        size_t first = outer * (size_t)item / items, last = outer * (size_t)(item + 1) / items;
        for (size_t s = first; s < last; ++s) {
            const char *g = gs + s * middle * inner * size, *xv = xs + s * middle * inner * size;
            const char *m = center ? mean + s * inner * csize : zeros, *r = rstd + s * inner * csize;
            memset(sum_gw, 0, 2 * inner * sizeof(double));
            for (size_t row = 0; row < middle; row += FN_GRAD_COLUMN_BLOCK) {
                size_t rows = middle - row < FN_GRAD_COLUMN_BLOCK ? middle - row : FN_GRAD_COLUMN_BLOCK;
                size_t offset = row * inner * size;
                kernels->col_grad_sums[dtype](g + offset, xv + offset, rows, inner, inner, m, r,
                                              weight ? weight + row * csize : NULL, block_g,
                                              block_g_xhat);
                kernels->grad_flush[dtype](block_g, sum_gw, inner);
                kernels->grad_flush[dtype](block_g_xhat, sum_gw_xhat, inner);
            }
            for (size_t j = 0; j < inner; ++j) {
                fn_put(dtype, a, j, center ? sum_gw[j] / (double)middle : 0.0);
                fn_put(dtype, b, j, sum_gw_xhat[j] / (double)middle);
            }
            kernels->col_grad_rows[dtype](g, xv, middle, inner, inner, center ? m : NULL, r, weight,
                                          a, b, ys + s * middle * inner * size, row_g,
                                          row_g_xhat);
        }
    });
    fn_merge_items(items_base, items, item_bytes, middle, grad_weight, grad_bias);
    free(scratch_block);
    return FASTNORM_OK;
}

fastnorm_status_t fastnorm_norm_backward(fastnorm_norm_kind_t kind, fastnorm_dtype_t dtype,
                                         size_t outer, size_t middle, size_t inner,
                                         const void *grad_y, const void *x, const void *mean,
                                         const void *rstd, const void *weight, void *grad_x,
                                         double *grad_weight, double *grad_bias,
                                         int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (kind != FASTNORM_LAYER_NORM && kind != FASTNORM_RMS_NORM) return FASTNORM_ERR_BAD_VALUE;
    if (!grad_y || !x || !rstd || !grad_x || (kind == FASTNORM_LAYER_NORM && !mean))
        return FASTNORM_ERR_NULL_POINTER;
    if (grad_weight && !weight) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, middle, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
    if (inner > 1)
        return fn_norm_backward_columns(kernels, kind, dtype, outer, middle, inner,
                                        (const char *)grad_y, (const char *)x,
                                        (const char *)mean, (const char *)rstd,
                                        (const char *)weight, (char *)grad_x, grad_weight,
                                        grad_bias, fn_threads(n_threads, total));
    size_t rows = outer, n = middle;
    size_t size = fn_storage_size(dtype), csize = fn_compute_size(dtype);
    size_t items = total / FN_GRAD_ITEM_ELEMENTS;
    size_t most = rows < FN_GRAD_ITEMS ? rows : FN_GRAD_ITEMS;
    items = items < 1 ? 1 : items > most ? most : items;
    /* each item: its float64 sums of grad_y and grad_y * xhat, then their compute blocks */
    size_t item_bytes = 2 * n * sizeof(double) + 2 * fn_padded(n) * csize;
    int columns = grad_weight || grad_bias;
    void *scratch_block = NULL;
    char *scratch = columns ? fn_malloc_aligned(items * item_bytes, &scratch_block) : NULL;
    if (columns && !scratch) return FASTNORM_ERR_NO_MEMORY;
    if (columns) memset(scratch, 0, items * item_bytes);
    const char *gs = (const char *)grad_y, *xs = (const char *)x;
    char *ys = (char *)grad_x;
    int center = kind == FASTNORM_LAYER_NORM, threads = fn_threads(n_threads, total);
    int stream = fn_grad_stream(grad_y, x, grad_x, total * size, n * size, FN_STREAM_MIN_BYTES);
    FN_PARALLEL_FOR(item, items, {
        size_t first = rows * (size_t)item / items, last = rows * (size_t)(item + 1) / items;
        double *sum_g = (double *)(scratch + (size_t)item * item_bytes), *sum_g_xhat = sum_g + n;
        char *block_g = (char *)(sum_g_xhat + n), *block_g_xhat = block_g + fn_padded(n) * csize;
        for (size_t r = first; r < last; ++r) {
            double m = center ? fn_param(dtype, mean, r, 0.0) : 0.0;
            double s = fn_param(dtype, rstd, r, 0.0), a, b;
            size_t offset = r * n * size;
            kernels->row_grad_sums[dtype](gs + offset, xs + offset, n, m, s, weight, &a, &b,
                                          grad_bias ? block_g : NULL,
                                          grad_weight ? block_g_xhat : NULL);
            kernels->row_grad_apply[dtype](gs + offset, xs + offset, n, m, s, weight, s,
                                           center ? a / (double)n : 0.0, b / (double)n,
                                           ys + offset, stream);
            if (columns && ((r - first + 1) % FN_GRAD_COLUMN_BLOCK == 0 || r + 1 == last)) {
                if (grad_bias) kernels->grad_flush[dtype](block_g, sum_g, n);
                if (grad_weight) kernels->grad_flush[dtype](block_g_xhat, sum_g_xhat, n);
            }
        }
    });
    if (columns) fn_merge_items(scratch, items, item_bytes, n, grad_weight, grad_bias);
    free(scratch_block);
    return FASTNORM_OK;
}

/* BatchNorm's channel rows of fewer values than this take the column path, which sums a
 * block of rows down the columns, where two kernel calls per row of 16 values cost more
 * than the values: the row path against the column path, float32, 1 thread, (64, 256, 4,
 * 4) 1.28x the time, but (8, 512, 7, 7) 0.30x. */
#define FN_GRAD_ROW_MIN 32

/* A channel of NCHW data whose rows (grad_y's and x's, every sample's) take at most this
 * many bytes is one work item (fn_bn_backward_rows). */
#define FN_GRAD_CHANNEL_BYTES (256u << 10)

/* The row path of fastnorm_batch_norm_backward: its arguments, and each row's two sums. */
typedef struct {
    const fastnorm_kernels_t *kernels;
    fastnorm_dtype_t dtype;
    size_t outer, channels, inner, size;
    const char *gs, *xs;
    const void *mean, *rstd, *weight;
    char *ys;
    double *row_sums, *channel_g, *channel_g_xhat;
    int stream;
} fn_bn_grad_job;

/* Rows r, r + channels, ... (`rows` of them, channel c)'s sums of grad_y and grad_y * xhat
 * into *g and *g_xhat. */
static void fn_bn_sums(const fn_bn_grad_job *job, size_t r, size_t rows, size_t c, double *g,
                       double *g_xhat) {
    size_t offset = r * job->inner * job->size;
    job->kernels->rows_grad_sums[job->dtype](
        job->gs + offset, job->xs + offset, rows, job->inner, job->channels * job->inner,
        fn_param(job->dtype, job->mean, c, 0.0), fn_param(job->dtype, job->rstd, c, 0.0), g,
        g_xhat);
}

/* The gradient of rows r, r + channels, ... (`rows` of them, channel c), in the column
 * path's form (fn_bn_backward_columns).  gw = weight[c] * grad_y: its factor moves to the
 * scale, and grad_y's sums stand for gw's divided by it. */
static void fn_bn_apply(const fn_bn_grad_job *job, size_t r, size_t rows, size_t c) {
    size_t offset = r * job->inner * job->size;
    double count = (double)job->outer * (double)job->inner;
    double rstd = fn_param(job->dtype, job->rstd, c, 0.0);
    double s = rstd * fn_param(job->dtype, job->weight, c, 1.0);
    job->kernels->rows_grad_apply[job->dtype](
        job->gs + offset, job->xs + offset, rows, job->inner, job->channels * job->inner,
        fn_param(job->dtype, job->mean, c, 0.0), s, s * rstd * (job->channel_g_xhat[c] / count),
        s * (job->channel_g[c] / count), job->ys + offset, job->stream);
}

/* Channels whose rows (every sample's) take at most FN_GRAD_CHANNEL_BYTES go a channel a
 * work item, its sums and then its gradient, both over all its rows in one kernel call, the
 * second reading them from L1 or L2.  Longer channels take each row's sums in sample order,
 * then each channel's from its rows' (samples in order), then each row's gradient: work
 * items of a row keep both threads busy where the channels are few. */
static void fn_bn_backward_rows(const fn_bn_grad_job *job, int threads) {
    size_t outer = job->outer, channels = job->channels, rows = outer * channels;
    if (2 * outer * job->inner * job->size <= FN_GRAD_CHANNEL_BYTES) {
        FN_PARALLEL_FOR(c, channels, {
            fn_bn_sums(job, (size_t)c, outer, (size_t)c, &job->channel_g[c],
                       &job->channel_g_xhat[c]);
            fn_bn_apply(job, (size_t)c, outer, (size_t)c);
        });
        return;
    }
    FN_PARALLEL_FOR(r, rows, {
        fn_bn_sums(job, (size_t)r, 1, (size_t)r % channels, &job->row_sums[2 * r],
                   &job->row_sums[2 * r + 1]);
    });
    for (size_t c = 0; c < channels; ++c) {
        double g = 0, gx = 0;
        for (size_t s = 0; s < outer; ++s) {
            g += job->row_sums[2 * (s * channels + c)];
            gx += job->row_sums[2 * (s * channels + c) + 1];
        }
        job->channel_g[c] = g;
        job->channel_g_xhat[c] = gx;
    }
    FN_PARALLEL_FOR(r, rows, { fn_bn_apply(job, (size_t)r, 1, (size_t)r % channels); });
}

/* A block's compute-dtype column sums added into its work item's float64 channel sums,
 * each channel's inner columns in order.  An item keeps channel sums, not column sums:
 * float64 sums of every column, cleared, added into and merged (columns, then items) cost
 * 12% of (64, 256, 4, 4)'s time in inner = 16. */
static void fn_flush_channels(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                              void *block, size_t channels, size_t inner, double *total) {
    if (inner == 1) { /* a column a channel: the kernel's vector loop */
        kernels->grad_flush[dtype](block, total, channels);
        return;
    }
    for (size_t c = 0, j = 0; c < channels; ++c) {
        double sum = 0;
        if (fn_compute_size(dtype) == sizeof(double))
            for (size_t i = 0; i < inner; ++i, ++j) sum += ((const double *)block)[j];
        else
            for (size_t i = 0; i < inner; ++i, ++j) sum += ((const float *)block)[j];
        total[c] += sum;
    }
}

/* The same over (outer, channels * inner) columns: each column's parameters spread from
 * its channel's, the column sums of a block of rows at a time (FN_GRAD_COLUMN_BLOCK, more
 * where the columns are few) added up per channel in float64 per work item (items fixed
 * by the shape, merged in order). */
static fastnorm_status_t fn_bn_backward_columns(const fastnorm_kernels_t *kernels,
                                                fastnorm_dtype_t dtype, size_t outer,
                                                size_t channels, size_t inner, const char *gs,
                                                const char *xs, const void *mean,
                                                const void *rstd, const void *weight, char *ys,
                                                double *channel_g, double *channel_g_xhat,
                                                int stream, int threads) {
    size_t size = fn_storage_size(dtype), csize = fn_compute_size(dtype);
    size_t cols = channels * inner, padded = fn_padded(cols), total = outer * cols;
    /* Streamed, the gradient pass starts at grad_x's first cache line, as fn_affine's
     * channels-last pass does (api_batch_norm.c): rows of cols elements from element lead,
     * their parameters rotated by lead, the first lead elements and the last row's rest
     * calls of their own.  NumPy's arrays start 16 bytes past a line, where no row would
     * start on a vector boundary and nothing would stream. */
    size_t lead = 0;
    if (stream && outer > 1 && (uintptr_t)ys % size == 0 && cols * size % 64 == 0)
        lead = (64 - (uintptr_t)ys % 64) % 64 / size;
    /* items of at least FN_GRAD_COLUMN_BLOCK rows: each has float64 sums of every channel */
    size_t items = total / FN_GRAD_ITEM_ELEMENTS, most = outer / FN_GRAD_COLUMN_BLOCK;
    most = most < FN_GRAD_ITEMS ? most : FN_GRAD_ITEMS;
    items = items > most ? most : items;
    items = items < 1 ? 1 : items;
    /* six parameter rows (the sums' mean and rstd; the gradient's mean, scale, slope and
     * offset, rotated by lead), then each item's float64 sums and compute-dtype block sums */
    size_t params_bytes = 6 * padded * csize;
    size_t item_bytes = 2 * channels * sizeof(double) + 2 * padded * csize;
    void *scratch_block;
    char *scratch = fn_malloc_aligned(params_bytes + items * item_bytes, &scratch_block);
    if (!scratch) return FASTNORM_ERR_NO_MEMORY;
    memset(scratch, 0, params_bytes);
    char *col_mean = scratch, *col_rstd = col_mean + padded * csize;
    char *col_scale = col_rstd + padded * csize, *col_slope = col_scale + padded * csize;
    char *col_offset = col_slope + padded * csize, *apply_mean = col_offset + padded * csize;
    char *items_base = apply_mean + padded * csize;
    size_t block_rows = FN_GRAD_COLUMN_BLOCK * 256 / (cols < 64 ? 64 : cols < 256 ? cols : 256);
    for (size_t c = 0, j = 0; c < channels; ++c) {
        double m = fn_param(dtype, mean, c, 0.0), r = fn_param(dtype, rstd, c, 0.0);
        for (size_t i = 0; i < inner; ++i, ++j) {
            fn_put(dtype, col_mean, j, m);
            fn_put(dtype, col_rstd, j, r);
        }
    }
    FN_PARALLEL_FOR(item, items, {
        size_t first = outer * (size_t)item / items, last = outer * (size_t)(item + 1) / items;
        double *sum_g = (double *)(items_base + (size_t)item * item_bytes), *sum_g_xhat = sum_g + channels;
        char *block_g = (char *)(sum_g_xhat + channels), *block_g_xhat = block_g + padded * csize;
        /* zeroed by the thread that adds into them: cleared on one thread before the loop,
         * every item's sums took 4-5% of (64, 256, 4, 4)'s perf samples */
        memset(sum_g, 0, 2 * channels * sizeof(double));
        for (size_t r = first; r < last; r += block_rows) {
            size_t rows = last - r < block_rows ? last - r : block_rows;
            size_t offset = r * cols * size;
            kernels->col_grad_sums[dtype](gs + offset, xs + offset, rows, cols, cols, col_mean,
                                          col_rstd, NULL, block_g, block_g_xhat);
            fn_flush_channels(kernels, dtype, block_g, channels, inner, sum_g);
            fn_flush_channels(kernels, dtype, block_g_xhat, channels, inner, sum_g_xhat);
        }
    });
    fn_merge_items(items_base, items, item_bytes, channels, channel_g_xhat, channel_g);
    double count = (double)outer * (double)inner;
    for (size_t c = 0, j = 0; c < channels; ++c) {
        double g = channel_g[c], gx = channel_g_xhat[c];
        double r = fn_param(dtype, rstd, c, 0.0), s = r * fn_param(dtype, weight, c, 1.0);
        double m = fn_param(dtype, mean, c, 0.0), slope = s * r * (gx / count);
        double offset = s * (g / count);
        size_t at = (j + cols - lead) % cols; /* rotated */
        for (size_t i = 0; i < inner; ++i, ++j, at = at + 1 == cols ? 0 : at + 1) {
            fn_put(dtype, apply_mean, at, m);
            fn_put(dtype, col_scale, at, s);
            fn_put(dtype, col_slope, at, slope);
            fn_put(dtype, col_offset, at, offset);
        }
    }
    size_t rows_from_lead = lead ? outer - 1 : outer;
    size_t blocks = (rows_from_lead + block_rows - 1) / block_rows;
    /* the gradient of `rows` rows of `width` elements from element `at`, their parameters
     * from rotated column `from` */
#define FN_APPLY(at, rows, width, from, store)                                                 \
    kernels->col_grad_apply[dtype](gs + (at) * size, xs + (at) * size, rows, width, width,     \
                                   apply_mean + (from) * csize, col_scale + (from) * csize,    \
                                   col_slope + (from) * csize, col_offset + (from) * csize,    \
                                   ys + (at) * size, store)
    FN_PARALLEL_FOR(k, blocks, {
        size_t r = (size_t)k * block_rows;
        size_t rows = rows_from_lead - r < block_rows ? rows_from_lead - r : block_rows;
        if (k == 0 && lead) FN_APPLY(0, 1, lead, cols - lead, 0); /* row 0's first columns */
        FN_APPLY(lead + r * cols, rows, cols, 0, stream);
        if ((size_t)k + 1 == blocks && lead) /* the last row's other columns */
            FN_APPLY(lead + (outer - 1) * cols, 1, cols - lead, 0, stream);
    });
#undef FN_APPLY
    free(scratch_block);
    return FASTNORM_OK;
}

fastnorm_status_t fastnorm_batch_norm_backward(fastnorm_dtype_t dtype, size_t outer,
                                               size_t channels, size_t inner,
                                               const void *grad_y, const void *x,
                                               const void *mean, const void *rstd,
                                               const void *weight, void *grad_x,
                                               double *grad_weight, double *grad_bias,
                                               int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!grad_y || !x || !mean || !rstd || !grad_x) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, channels, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
    int rows_path = inner >= FN_GRAD_ROW_MIN;
    /* rows: each row's two sums; both paths: each channel's */
    double *sums = malloc(sizeof(double) * 2 * ((rows_path ? outer * channels : 0) + channels));
    if (!sums) return FASTNORM_ERR_NO_MEMORY;
    double *channel_g = sums + (rows_path ? 2 * outer * channels : 0);
    double *channel_g_xhat = channel_g + channels;
    int threads = fn_threads(n_threads, total);
    fastnorm_status_t status = FASTNORM_OK;
    if (rows_path) {
        size_t size = fn_storage_size(dtype);
        fn_bn_grad_job job = {kernels, dtype, outer, channels, inner, size, (const char *)grad_y,
                              (const char *)x, mean, rstd, weight, (char *)grad_x, sums,
                              channel_g, channel_g_xhat,
                              fn_grad_stream(grad_y, x, grad_x, total * size, inner * size,
                                             threads > 1 ? FN_STREAM_MIN_BYTES_OTHERS
                                                         : FN_STREAM_MIN_BYTES)};
        fn_bn_backward_rows(&job, threads);
    } else
        status = fn_bn_backward_columns(
            kernels, dtype, outer, channels, inner, (const char *)grad_y, (const char *)x, mean,
            rstd, weight, (char *)grad_x, channel_g, channel_g_xhat,
            grad_x == grad_y ? 0
                             : fn_stream(x, grad_x, total * fn_storage_size(dtype),
                                         threads > 1 ? FN_STREAM_MIN_BYTES_OTHERS
                                                     : FN_STREAM_MIN_BYTES),
            threads);
    for (size_t c = 0; status == FASTNORM_OK && c < channels; ++c) {
        if (grad_bias) grad_bias[c] = channel_g[c];
        if (grad_weight) grad_weight[c] = channel_g_xhat[c];
    }
    free(sums);
    return status;
}
