/*
 * kernels.h - the private kernel interface between the entry points (api_*.c) and the
 * per-ISA translation units.
 *
 * Each kernel family (scalar, AVX2+FMA, AVX-512) fills one fastnorm_kernels_t, indexed by
 * storage dtype.  Kernels trust their arguments (the entry points validated them) and
 * return void.  Pointers of "compute dtype" are float for F32/F16/BF16 and double for F64.
 *
 * Row kernels work on one contiguous span of n elements; column kernels on a
 * (rows, cols) block whose rows are row_stride elements apart, one statistic per column.
 */
#ifndef FASTNORM_KERNELS_H
#define FASTNORM_KERNELS_H

#include <stddef.h>
#include "fastnorm/fastnorm.h"

/* Kinds of core that some sizes and hints are tuned for (dispatch.c chooses one with the
 * family): AMD's, measured on Zen 3 and Zen 4, and the default, measured on Intel Xeons. */
typedef enum { FASTNORM_TUNING_DEFAULT = 0, FASTNORM_TUNING_AMD = 1, FASTNORM_TUNING_COUNT } fastnorm_tuning_t;

/* Statistics of one span h[0:n], h = x (+ residual, rounded to the storage dtype).
 * center != 0: Welford on (h - shift); *mean_shifted = mean(h) - shift, *m2 = sum of
 *              squared deviations.
 * center == 0: *mean_shifted = 0, *m2 = sum(h^2).
 * residual may be NULL; residual_out (NULL or n elements) receives h, or row_normalize
 * stores it (api_norm.c's fn_norm_spans chooses).
 * prefetch != 0: the span lies in an input past the cache, and no other pass prefetches it;
 *              the kernel may read ahead. */
typedef void (*fastnorm_row_stats_fn)(const void *x, const void *residual, void *residual_out,
                                      size_t n, double shift, int center, int prefetch,
                                      double *mean_shifted, double *m2);

/* row_stats (center != 0, no residual) of `rows` spans of n elements, span r at x + r * stride
 * elements, as one set of values (BatchNorm's channel of NCHW data, read in place). */
typedef void (*fastnorm_rows_stats_fn)(const void *x, size_t rows, size_t n, size_t stride,
                                       double shift, double *mean_shifted, double *m2);

/* y[i] = ((h[i] - (mean + mean_lo)) * scale) * (weight ? weight[i] : 1) + (bias ? bias[i] : beta)
 * with h = x (+ residual, rounded).  residual_out (NULL, or n elements with a residual)
 * receives h, stored as y is (streamed with it where it sits like y and is neither x nor
 * residual; it may be either).  mean + mean_lo is an unevaluated pair (a shift and the
 * mean relative to it, or a mean and 0); both 0 skip the subtraction, otherwise it is
 * subtracted as a high/low pair of compute-dtype values.  weight/bias: compute dtype, in
 * the table's param_block order for the dtype (natural with FN_STORE_PARAMS_NATURAL).
 * next: NULL, or the span (n elements of x's dtype) the caller reads next, which the
 * vector families prefetch into the L2 cache meanwhile (the scalar family ignores it).
 * store: FN_STORE_* flags. */
typedef void (*fastnorm_row_normalize_fn)(const void *x, const void *residual,
                                          void *residual_out, size_t n, double mean,
                                          double mean_lo, double scale, double beta,
                                          const void *weight, const void *bias, void *y,
                                          const void *next, int store);

/* row_normalize of x (no residual, no next span; beta as there) and row_stats of x_next (no
 * residual), with the same results as those two calls, in one loop where the pair fits one: the
 * statistics load the adders, the normalize pass the load ports and FMA pipes, and the
 * next row's reads overlap the pass (api_norm.c's row-ahead order).  The pair fits for
 * LayerNorm (both passes centred) and RMSNorm (neither centred, no bias), with or without
 * their parameters, and FN_STORE_STREAM only with a weight where the table's
 * stream_fused says so; anything else runs the two kernels in turn.  first_center: NULL,
 * or for LayerNorm (centred) x_next's first center (the compute-dtype mean of its first
 * step, kernel_row_stats.h's kb_step_center) as this call's caller got it from the call
 * before, or NaN; replaced by x_after's (NaN where x_after is NULL, or the call has none to
 * give), so that the next call's statistics need not wait for their center.  The same
 * results with or without. */
typedef void (*fastnorm_row_stats_normalize_fn)(const void *x_next, size_t n, double shift,
                                                int center, double *mean_shifted, double *m2,
                                                const void *x, double mean, double mean_lo,
                                                double scale, double beta,
                                                const void *weight, const void *bias, void *y,
                                                int store, const void *x_after,
                                                double *first_center);

/* Rows r < rows of n elements each, one after another from x (and y): row r's
 * y = (x - hi[c]) * scale[c] + beta[c], c = (first + r) % channels, the channels'
 * compute-dtype constants as fn_affine_params computes them (api_internal.h), which gives
 * row_normalize's bits for the mean pair, scale and shift they come from.  One call for
 * many short rows (BatchNorm over NCHW, a GroupNorm group's channels), where a call per
 * row cost about as many instructions as its loop.  store: as for row_normalize
 * (FN_STORE_STREAM). */
typedef void (*fastnorm_rows_affine_fn)(const void *x, size_t rows, size_t n, size_t first,
                                        size_t channels, const void *hi, const void *scale,
                                        const void *beta, void *y, int store);

/* LayerNorm (center) or RMSNorm of rows r < rows of n elements each, one after another,
 * n at most the table's rows_short_max (a few vectors, a block of rows at a time): h = x (+ residual,
 * rounded to the storage dtype and stored to residual_out when not NULL), its statistics,
 * then y = (h - mean) * rstd * weight + bias (weight, bias: NULL or n compute-dtype values
 * in natural order for each row, row r's at r * param_stride: 0 for LayerNorm's one set,
 * n for GroupNorm's per-group table).  mean_out, rstd_out: NULL or `rows` compute-dtype
 * values.  Plain stores; a row is read whole before any of its outputs is written (in
 * place is fine). */
typedef void (*fastnorm_rows_short_fn)(const void *x, const void *residual, void *residual_out,
                                       size_t rows, size_t n, int center, double eps,
                                       const void *weight, const void *bias, size_t param_stride,
                                       void *y, void *mean_out, void *rstd_out);

/* BatchNorm training of one sample (NCHW, N == 1), and InstanceNorm of a sample:
 * rows_short's LayerNorm of rows r < rows, n at most rows_short_max, where row r is channel
 * r and has a weight and a bias of its own: y = (h - mean) * (rstd * weight[r]) + bias[r],
 * the product rounded once (weight, bias: NULL, meaning 1 and 0, or `rows` compute-dtype
 * values).  mean_out, var_out: NULL, or each row's mean and (biased) variance in float64;
 * where the row holds a NaN or inf both are NaN, as on BatchNorm's other paths.  A call
 * per channel of row_stats and row_normalize cost several times a 7x7 map's work. */
typedef void (*fastnorm_rows_short_channels_fn)(const void *x, size_t rows, size_t n,
                                                double eps, const void *weight,
                                                const void *bias, void *y, double *mean_out,
                                                double *var_out);

/* BatchNorm's affine per channel c < channels, in float64: centre = sqrt(var + eps),
 * scale = weight / centre and shift = bias (weight, bias: NULL, meaning 1 and 0, or float64
 * values where params_f64, float32 ones otherwise).  With a mean, a channel folds it into
 * its shift (shift -= mean * scale, centre = 0) where |mean| <= centre and mean * scale is
 * finite, or where either is NaN; otherwise centre = mean, the mean left to subtract
 * (api_batch_norm.c, fn_affine_part).  Returns 1 where a mean was given and every
 * channel folded it, else 0. */
typedef int (*fastnorm_channel_params_fn)(size_t channels, const double *mean,
                                          const double *var, const void *weight,
                                          const void *bias, int params_f64, double eps,
                                          double *scale, double *shift, double *centre);

/* The backward passes' sums over one span of n elements (kernel_backward.h): with
 * xhat = (x - mean) * rstd and gw = grad_y * weight (weight: NULL, meaning 1, or n
 * compute-dtype values in natural order), *sum_gw = sum(gw) and *sum_gw_xhat =
 * sum(gw * xhat), in float64 over compute-dtype blocks.  col_g, col_g_xhat: NULL, or
 * compute-dtype column sums to which grad_y and grad_y * xhat are added element by
 * element; they are written up to n rounded up to a multiple of 16 (the lanes past n
 * get 0, the part-vector's missing lanes masked: padding the caller allocates and never
 * reads). */
typedef void (*fastnorm_row_grad_sums_fn)(const void *grad_y, const void *x, size_t n,
                                          double mean, double rstd, const void *weight,
                                          double *sum_gw, double *sum_gw_xhat, void *col_g,
                                          void *col_g_xhat);

/* grad_x = scale * ((gw - a) - xhat * b) over one span of n elements, xhat and gw as for
 * row_grad_sums; scale, a and b rounded to the compute dtype.  store: FN_STORE_STREAM or 0,
 * as for row_normalize. */
typedef void (*fastnorm_row_grad_apply_fn)(const void *grad_y, const void *x, size_t n,
                                           double mean, double rstd, const void *weight,
                                           double scale, double a, double b, void *grad_x,
                                           int store);

/* BatchNorm's backward over a channel of NCHW data, `rows` spans of n elements (its row in
 * each of some samples), span r at grad_y, x (and grad_x) + r * stride elements:
 * rows_grad_sums takes row_grad_sums's two sums without a weight or column sums, over
 * all the spans as one set of values; rows_grad_apply writes grad_x = scale * grad_y -
 * (slope * (x - mean) + offset) into every span, col_grad_apply's form (scale = rstd *
 * weight, slope = scale * rstd * b, offset = scale * a in row_grad_apply's terms), the
 * parameters rounded to the compute dtype; store as for row_grad_apply. */
typedef void (*fastnorm_rows_grad_sums_fn)(const void *grad_y, const void *x, size_t rows,
                                           size_t n, size_t stride, double mean, double rstd,
                                           double *sum_g, double *sum_g_xhat);
typedef void (*fastnorm_rows_grad_apply_fn)(const void *grad_y, const void *x, size_t rows,
                                            size_t n, size_t stride, double mean, double scale,
                                            double slope, double offset, void *grad_x,
                                            int store);

/* LayerNorm / RMSNorm backward over the rows of a block of columns (kernel_backward.h):
 * grad_x[r, j] = rstd[j] * ((grad_y * weight[r] - a[j]) - xhat * b[j]), xhat = (x -
 * mean[j]) * rstd[j] (mean NULL: 0), and each row's sum(grad_y) and sum(grad_y * xhat)
 * added to row_g[r] and row_g_xhat[r] in float64.  weight: NULL or rows compute-dtype
 * values; mean, rstd, a, b: cols.  grad_x has x's row_stride. */
typedef void (*fastnorm_col_grad_rows_fn)(const void *grad_y, const void *x, size_t rows,
                                          size_t cols, size_t row_stride, const void *mean,
                                          const void *rstd, const void *weight, const void *a,
                                          const void *b, void *grad_x, double *row_g,
                                          double *row_g_xhat);

/* total[j] += block[j] for j < n, then the block (n rounded up to a multiple of 16
 * compute-dtype values) cleared: the column sums' float64 step. */
typedef void (*fastnorm_grad_flush_fn)(void *block, double *total, size_t n);

/* The backward over columns (BatchNorm of channels-last data and short channel rows,
 * LayerNorm over an axis that is not the last): for each column j < cols of `rows` rows
 * row_stride elements apart, with xhat = (x - mean[j]) * rstd[j] and gw = grad_y *
 * row_weight[r] (NULL: grad_y), block_g[j] = sum(gw) and block_g_xhat[j] = sum(gw * xhat)
 * over the rows, in the compute dtype (the caller passes a few rows at a time and adds the
 * sums up in float64).  mean, rstd: cols compute-dtype values; row_weight: NULL or rows;
 * block_g, block_g_xhat: cols rounded up to a multiple of 16 (written past cols, as
 * row_grad_sums's column sums). */
typedef void (*fastnorm_col_grad_sums_fn)(const void *grad_y, const void *x, size_t rows,
                                          size_t cols, size_t row_stride, const void *mean,
                                          const void *rstd, const void *row_weight,
                                          void *block_g, void *block_g_xhat);

/* grad_x[r, j] = scale[j] * grad_y - (slope[j] * (x - mean[j]) + offset[j]) over the
 * block: BatchNorm's scale * ((grad_y - a) - xhat * b) with slope = scale * rstd * b and
 * offset = scale * a; every parameter cols compute-dtype values.  grad_x has x's
 * row_stride.  store: FN_STORE_STREAM or 0; it streams only where every row of grad_x
 * starts on a vector boundary. */
typedef void (*fastnorm_col_grad_apply_fn)(const void *grad_y, const void *x, size_t rows,
                                           size_t cols, size_t row_stride, const void *mean,
                                           const void *scale, const void *slope,
                                           const void *offset, void *grad_x, int store);

/* How the row normalize kernel may write y. */
enum {
    /* non-temporal stores (for outputs far larger than the caches, where they save the
     * read-for-ownership of every line), not fenced: the caller fences once after its
     * calls (api_internal.h, FN_STREAM_FENCE) */
    FN_STORE_STREAM = 1,
    /* weight and bias hold no NaN and the scalar arguments are numbers or C's NAN, so every
     * NaN the pass computes is propagated from a 16-bit input or is a default NaN: its low
     * 16 bits are zero, and rounding it to bfloat16 like a number keeps it the same quiet
     * NaN.  AVX2 then skips the bfloat16 store's NaN test. */
    FN_STORE_NAN_CANONICAL = 2,
    /* weight and bias are in natural order even where the family's pairs have an order of
     * their own (param_block): the pass then goes a vector at a time, and the caller
     * spares a call of few rows the parameters' copy (api_norm.c, fn_row_params) */
    FN_STORE_PARAMS_NATURAL = 4
};

/* Column statistics of x[r * row_stride + j], r < rows, j < cols.
 * center != 0: Welford on (x - shift_row[j]) (shift_row: storage dtype, cols values,
 *              usually the first row); mean_shifted[j], m2[j] as for rows.
 * center == 0: mean_shifted[j] = 0, m2[j] = sum over r of x^2.
 * prefetch != 0: x lies in an input too large for the cache to have kept
 *              (api_internal.h, FN_COL_PREFETCH_MIN_BYTES); the kernel may read ahead. */
typedef void (*fastnorm_col_stats_fn)(const void *x, size_t rows, size_t cols, size_t row_stride,
                                      const void *shift_row, int center, int prefetch,
                                      double *mean_shifted, double *m2);

/* y[r, j] = ((x[r, j] - mean_hi[j]) - mean_lo[j]) * scale[j] * row_weight[r]
 *           + row_bias[r] + col_shift[j]
 * y has the same row_stride as x.  mean_hi NULL: no subtraction; mean_lo NULL alone: no
 * low part (a caller may fold it into col_shift); row_weight NULL
 * means 1, row_bias and col_shift NULL mean 0.  All parameter arrays are compute dtype.
 * stream != 0: non-temporal stores, as FN_STORE_STREAM for rows. */
typedef void (*fastnorm_col_normalize_fn)(const void *x, size_t rows, size_t cols, size_t row_stride,
                                          const void *mean_hi, const void *mean_lo,
                                          const void *scale, const void *row_weight,
                                          const void *row_bias, const void *col_shift, void *y,
                                          int stream);

typedef struct {
    const char *name;
    fastnorm_row_stats_fn row_stats[FASTNORM_DTYPE_COUNT];
    fastnorm_rows_stats_fn rows_stats[FASTNORM_DTYPE_COUNT];
    fastnorm_row_normalize_fn row_normalize[FASTNORM_DTYPE_COUNT];
    fastnorm_row_stats_normalize_fn row_stats_normalize[FASTNORM_DTYPE_COUNT];
    fastnorm_rows_affine_fn rows_affine[FASTNORM_DTYPE_COUNT];
    fastnorm_col_stats_fn col_stats[FASTNORM_DTYPE_COUNT];
    fastnorm_col_normalize_fn col_normalize[FASTNORM_DTYPE_COUNT];
    /* The order row_normalize takes weight and bias in.  0: natural.  16 (compute dtype
     * float32 only; the one block api_norm.c's fn_copy_params knows): each full block of 16
     * values from the span's start holds the block's 8 even-indexed values, then its 8
     * odd ones; the last n % 16 values keep their place.  A family whose vectors split
     * into even and odd elements for free sets it (AVX2 bfloat16), and the caller
     * reorders a copy once per call, or for a few rows passes FN_STORE_PARAMS_NATURAL. */
    unsigned char param_block[FASTNORM_DTYPE_COUNT];
    /* The row lengths in bytes, prefetch_row_min ... prefetch_row_max, whose normalize pass
     * in a large input pays for prefetching the next row (api_norm.c, FN_PREFETCH_MIN_BYTES;
     * measured per family in simd_<family>.h); a max of 0: never. */
    unsigned prefetch_row_min, prefetch_row_max;
    /* Rows of at most ahead_row_max[tuning] bytes (fastnorm_tuning()) take their
     * statistics one row ahead in small inputs (api_norm.c, FN_AHEAD_MAX_READ_BYTES;
     * measured per family and kind of core in simd_<family>.h). */
    unsigned ahead_row_max[FASTNORM_TUNING_COUNT];
    /* Rows of at most rows_short_max elements (0: none) take rows_short, and a sample's
     * channels of at most rows_short_channels_max rows_short_channels. */
    fastnorm_rows_short_fn rows_short[FASTNORM_DTYPE_COUNT];
    unsigned rows_short_max[FASTNORM_DTYPE_COUNT];
    fastnorm_rows_short_channels_fn rows_short_channels[FASTNORM_DTYPE_COUNT];
    unsigned rows_short_channels_max[FASTNORM_DTYPE_COUNT];
    fastnorm_channel_params_fn channel_params; /* one for every dtype */
    /* Bit 1 << kind (fastnorm_norm_kind_t) set where row_stats_normalize fuses that kind's
     * pass with streaming stores too (FN_STORE_STREAM; otherwise it runs the two kernels):
     * api_norm.c then takes it for rows a row ahead in large inputs. */
    unsigned char stream_fused[FASTNORM_DTYPE_COUNT];
    fastnorm_row_grad_sums_fn row_grad_sums[FASTNORM_DTYPE_COUNT];
    fastnorm_row_grad_apply_fn row_grad_apply[FASTNORM_DTYPE_COUNT];
    fastnorm_rows_grad_sums_fn rows_grad_sums[FASTNORM_DTYPE_COUNT];
    fastnorm_rows_grad_apply_fn rows_grad_apply[FASTNORM_DTYPE_COUNT];
    fastnorm_col_grad_sums_fn col_grad_sums[FASTNORM_DTYPE_COUNT];
    fastnorm_col_grad_apply_fn col_grad_apply[FASTNORM_DTYPE_COUNT];
    fastnorm_grad_flush_fn grad_flush[FASTNORM_DTYPE_COUNT];
    fastnorm_col_grad_rows_fn col_grad_rows[FASTNORM_DTYPE_COUNT];
} fastnorm_kernels_t;

extern const fastnorm_kernels_t fastnorm_kernels_scalar;
#ifdef FASTNORM_HAVE_AVX2
extern const fastnorm_kernels_t fastnorm_kernels_avx2;
#endif
#ifdef FASTNORM_HAVE_AVX512
extern const fastnorm_kernels_t fastnorm_kernels_avx512;
#endif
#ifdef FASTNORM_HAVE_AVX512BF16
extern const fastnorm_kernels_t fastnorm_kernels_avx512bf16;
#endif

/* The table chosen by dispatch.c (best supported family, or fastnorm_set_isa's). */
const fastnorm_kernels_t *fastnorm_active_kernels(void);
/* dispatch.c: the last-level cache's size in bytes, 0 where the C library does not say. */
size_t fastnorm_llc_bytes(void);
/* dispatch.c: the threads a call starts its team with, given the `threads` it asks for,
 * at most fastnorm_thread_limit() (1 in a child forked after a team ran). */
int fastnorm_team_threads(int threads);

/* cpu_x86.c: whether the CPU and OS support the family (CPUID + XGETBV). */
int fastnorm_cpu_has(fastnorm_isa_t isa);
/* cpu_x86.c: the AVX-512 family's requirements plus AVX512-BF16. */
int fastnorm_cpu_has_avx512_bf16(void);
/* cpu_x86.c: whether CPUID names AMD (or Hygon) as the cores' maker. */
int fastnorm_cpu_amd(void);

/* dispatch.c: the tuning in force, chosen with the kernel family from the kind of core
 * (fastnorm_tuning_t), or set by fastnorm_set_tuning. */
fastnorm_tuning_t fastnorm_tuning(void);
fastnorm_status_t fastnorm_set_tuning(fastnorm_tuning_t tuning);
/* dispatch.c: nonzero where plain stores ask for their lines ahead (kernel_row_normalize.h,
 * kb_prefetch_store): the default tuning's, not AMD's.  Read by the kernels at each hint. */
extern int fastnorm_store_hints;

#endif /* FASTNORM_KERNELS_H */
