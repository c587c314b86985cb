/*
 * api_backward.c - the backward passes' entry points: fastnorm_norm_backward (LayerNorm and
 * RMSNorm over rows) and fastnorm_batch_norm_backward (BatchNorm over NCHW channel rows),
 * both on the row_grad_sums / row_grad_apply kernels (kernel_backward.h).
 */
#include "api_internal.h"

/* A work item of the row backward is at least FN_GRAD_ITEM_ELEMENTS values, and there are
 * at most FN_GRAD_ITEMS of them: each keeps float64 column sums (grad_weight's and
 * grad_bias's) of its own, added in item order, so the results follow the shape alone. */
#define FN_GRAD_ITEM_ELEMENTS 32768
#define FN_GRAD_ITEMS 16
/* Rows a work item adds into compute-dtype column sums before it adds those to its float64
 * ones: 16 rounded values in float32 per column, then exact float64 sums of few terms. */
#define FN_GRAD_COLUMN_BLOCK 16

/* n rounded up to whole 16-lane vectors (kernels.h, row_grad_sums's column padding) */
static size_t fn_padded(size_t n) { return (n + 15) / 16 * 16; }

/* Add compute-dtype column sums to float64 ones and clear them. */
static void fn_flush_columns(fastnorm_dtype_t dtype, void *block, double *total, size_t n) {
    if (dtype == FASTNORM_F64) {
        double *b = (double *)block;
        for (size_t j = 0; j < n; ++j) total[j] += b[j];
    } else {
        float *b = (float *)block;
        for (size_t j = 0; j < n; ++j) total[j] += (double)b[j];
    }
    memset(block, 0, fn_padded(n) * fn_compute_size(dtype));
}

fastnorm_status_t fastnorm_norm_backward(fastnorm_norm_kind_t kind, fastnorm_dtype_t dtype,
                                         size_t rows, size_t n, const void *grad_y,
                                         const void *x, const void *mean, const void *rstd,
                                         const void *weight, void *grad_x, double *grad_weight,
                                         double *grad_bias, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (kind != FASTNORM_LAYER_NORM && kind != FASTNORM_RMS_NORM) return FASTNORM_ERR_BAD_VALUE;
    if (!grad_y || !x || !rstd || !grad_x || (kind == FASTNORM_LAYER_NORM && !mean))
        return FASTNORM_ERR_NULL_POINTER;
    if (grad_weight && !weight) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(rows, n, 1, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
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
                                           ys + offset);
            if (columns && ((r - first + 1) % FN_GRAD_COLUMN_BLOCK == 0 || r + 1 == last)) {
                if (grad_bias) fn_flush_columns(dtype, block_g, sum_g, n);
                if (grad_weight) fn_flush_columns(dtype, block_g_xhat, sum_g_xhat, n);
            }
        }
    });
    for (size_t j = 0; columns && j < n; ++j) {
        double g = 0, gx = 0;
        for (size_t item = 0; item < items; ++item) {
            const double *sums = (const double *)(scratch + item * item_bytes);
            g += sums[j];
            gx += sums[n + j];
        }
        if (grad_bias) grad_bias[j] = g;
        if (grad_weight) grad_weight[j] = gx;
    }
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
    size_t size = fn_storage_size(dtype), rows = outer * channels;
    /* each row's sums of grad_y and grad_y * xhat, then each channel's (samples in order) */
    double *row_sums = malloc(sizeof(double) * 2 * (rows + channels));
    if (!row_sums) return FASTNORM_ERR_NO_MEMORY;
    double *channel_g = row_sums + 2 * rows, *channel_g_xhat = channel_g + channels;
    const char *gs = (const char *)grad_y, *xs = (const char *)x;
    char *ys = (char *)grad_x;
    int threads = fn_threads(n_threads, total);
    FN_PARALLEL_FOR(r, rows, {
        size_t c = (size_t)r % channels, offset = (size_t)r * inner * size;
        kernels->row_grad_sums[dtype](gs + offset, xs + offset, inner, fn_param(dtype, mean, c, 0.0),
                                      fn_param(dtype, rstd, c, 0.0), NULL, &row_sums[2 * r],
                                      &row_sums[2 * r + 1], NULL, NULL);
    });
    for (size_t c = 0; c < channels; ++c) {
        double g = 0, gx = 0;
        for (size_t s = 0; s < outer; ++s) {
            g += row_sums[2 * (s * channels + c)];
            gx += row_sums[2 * (s * channels + c) + 1];
        }
        channel_g[c] = g;
        channel_g_xhat[c] = gx;
    }
    double count = (double)outer * (double)inner;
    FN_PARALLEL_FOR(r, rows, {
        size_t c = (size_t)r % channels, offset = (size_t)r * inner * size;
        double s = fn_param(dtype, rstd, c, 0.0);
        /* weight[c] * grad_y is gw: its factor moves to the scale, grad_y's sums stand
         * for gw's divided by it */
        kernels->row_grad_apply[dtype](gs + offset, xs + offset, inner, fn_param(dtype, mean, c, 0.0),
                                       s, NULL, s * fn_param(dtype, weight, c, 1.0),
                                       channel_g[c] / count, channel_g_xhat[c] / count,
                                       ys + offset);
    });
    for (size_t c = 0; c < channels; ++c) {
        if (grad_bias) grad_bias[c] = channel_g[c];
        if (grad_weight) grad_weight[c] = channel_g_xhat[c];
    }
    free(row_sums);
    return FASTNORM_OK;
}
