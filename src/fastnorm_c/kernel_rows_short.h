/*
 * kernel_rows_short.h - rows_short: LayerNorm / RMSNorm of rows of a few vectors (at most
 * KB_SHORT_VECS), a block of rows at a time from the L1 cache, each row's sums added
 * across lanes for the block at once; and rows_short_channels, the same LayerNorm of rows
 * that are a sample's channels, for BatchNorm training of one sample and for InstanceNorm.
 * Part of kernel_body.h.
 *
 * Why: a row of 64 float32 values took 35-55 ns through row_stats, the float64 finish and
 * row_normalize, each call paying its setup, edges and dependent latency for four vectors
 * of work; here a row is a handful of vector operations and the rows' chains overlap.
 * (AVX-512 kept blocks of 2 or 4 rows in registers until the thirty-third session; on Zen
 * 5 this form took 0.42-0.73x its time, GroupNorm on 7x7 maps 0.71x: docs/optimisations.md.)
 *
 * Numerics: LayerNorm takes two passes over the row.  The first sums h - c1, c1 the row's
 * first value, lane-wise (at most KB_SHORT_VECS values a lane), for a center c2 = c1 +
 * their mean near the row's mean.  The second sums e = h - c2 (exact for values within a
 * factor of two of c2, Sterbenz) and e^2; then mean = c2 + m, m = sum(e) / n, var =
 * sum(e^2) / n - m^2 (m is tiny against the spread), and y = (e - m) * rstd * weight +
 * bias.  A center that is one value alone (c1) lost digits on rows led by an outlier: mean
 * 2.6e-6 relative.  RMSNorm sums h^2.
 */

#include <math.h>

/* The longest row rows_short takes, in elements (kernels.h rows_short_max): the family's
 * <family>_short_vecs_<compute type> vectors, and the longest channel rows_short_channels
 * takes, <family>_short_channel_vecs_<compute type> (both at most KB_SHORT_VECS); or 0
 * where its simd_<family>.h does not define FN_SHORT_ROWS_ACROSS (the scalar family),
 * whose table gets stubs. */
#ifdef FN_SHORT_ROWS_ACROSS
/* A row's statistics again from its vectors, exactly (float64, two passes, as
 * api_internal.h's fn_exact_moments), where the sums came out non-finite: finite values
 * spread past about 1.8e19 overflow their float32 squares.  A NaN or inf in the row keeps
 * them non-finite.  mean: the row's mean (0 without `center`); spread: its variance, or
 * the mean of squares.  Out of line, so that the rows' instances stay as they were. */
static __attribute__((noinline)) void KB_NAME(kb_short_exact)(
    const KB_V *h, const size_t *left, const size_t cap, size_t n, int center, double *mean,
    double *spread) {
    double values[KB_SHORT_VECS * KB_LANES], sum = 0, squares = 0, mu = 0;
    size_t count = 0;
    for (size_t k = 0; k < cap; ++k) {
        double lanes[KB_LANES];
        kb_to_double(h[k], lanes);
        for (size_t i = 0; i < left[k]; ++i) values[count++] = lanes[i];
    }
    if (center) {
        for (size_t i = 0; i < count; ++i) sum += values[i];
        mu = sum / (double)n;
    }
    for (size_t i = 0; i < count; ++i) squares += (values[i] - mu) * (values[i] - mu);
    *mean = mu;
    *spread = squares / (double)n;
}

/* A block of KB_ACROSS rows at a time, read from the L1 cache in three passes (first
 * center, sums, normalize), each row's vector sums added across their lanes, KB_LANES rows
 * at once (kb_lane_sums: lane j is row j's sum), so that the block's float64 finish,
 * divisions and square roots run side by side.  Two vectors' worth of rows a block, not one: a
 * block is a chain (each pass waits for the last one's sums), and two chains overlap
 * (0.84-0.94x the time of KB_LANES rows a block on Zen 3 AVX2, 0.85-0.97x on Zen 5
 * AVX-512).  The arithmetic of a row is the
 * same in every lane (kb_lane_sums adds every lane's values in the same tree), so a row's
 * results depend on the row alone, not on the rows beside it or the lane it took.
 * Numerics as at the top: sums about the first value, then about c2 = their mean, in
 * float32 (at most KB_SHORT_VECS additions a lane, the lanes' tree also in float32: y
 * within 3 float32 ulps of float64, the mean within 3.3e-7 relative, AVX2 and AVX-512,
 * on test_float32_short_rows_on_shifted_data's data; AVX2 rows of 129-200 values there, y
 * 3.0 ulps, the mean 3.6e-7 relative). */
enum {
    KB_NAME(rows_short_max) = KB_GLUE(KB_ISA, short_vecs, KB_CT) * KB_LANES,
    KB_NAME(rows_short_channels_max) = KB_GLUE(KB_ISA, short_channel_vecs, KB_CT) * KB_LANES
};
#define KB_ACROSS (2 * KB_LANES) /* rows a block */

/* h = x (+ residual, rounded): the whole vector at element i, or (kb_across_tail) its
 * first `left` elements, the other lanes 0 */
KB_INLINE KB_V KB_NAME(kb_across_h)(const KB_T *x, const KB_T *r, size_t i, const int has_r) {
    KB_V h = kb_load(x + i);
    return has_r ? kb_round(kb_add(h, kb_load(r + i))) : h;
}
KB_INLINE KB_V KB_NAME(kb_across_tail)(const KB_T *x, const KB_T *r, size_t i, size_t left,
                                       const int has_r) {
    KB_V h = kb_load_n(x + i, left);
    return has_r ? kb_round(kb_add(h, kb_load_n(r + i, left))) : h;
}

/* One row's normalize pass: y = ((h - c) - m) * scale * w + b, or GroupNorm's
 * (h - c - m) * s + b with s = scale * w rounded once (scale_lo: scale's rounding), or a
 * BatchNorm channel's (h - c - m) * scale + b, its weight already in scale.  A missing
 * weight is ones and a missing bias -0 (kb_rows_across), which give the same bits as
 * leaving them out. */
KB_INLINE KB_V KB_NAME(kb_across_y)(KB_V h, KB_V c, KB_V m, KB_V scale, KB_V scale_lo, KB_V w,
                                    KB_V b, const int center, const int grouped,
                                    const int channel) {
    KB_V d = center ? kb_sub(kb_sub(h, c), m) : h;
    if (channel) return kb_fma(d, scale, b);
    if (grouped) return kb_fma(d, kb_fma(scale, w, kb_mul(scale_lo, w)), b);
    return kb_fma(kb_mul(d, scale), w, b);
}

KB_INLINE void KB_NAME(kb_rows_across)(const KB_T *xs, const KB_T *rs, KB_T *hs, size_t rows,
                                       size_t n, double eps, const KB_C *weight,
                                       const KB_C *bias, size_t param_stride, KB_T *ys,
                                       KB_C *mean_o, KB_C *rstd_o, double *mean_d,
                                       double *var_d, const int center, const int has_r,
                                       const int grouped, const int channel) {
    static const KB_C ones[KB_SHORT_VECS * KB_LANES] = {[0 ... KB_SHORT_VECS * KB_LANES - 1] = 1};
    static const KB_C minus_zeros[KB_SHORT_VECS * KB_LANES] = {
        [0 ... KB_SHORT_VECS * KB_LANES - 1] = -0.0};
    const size_t full = n / KB_LANES, tail = n % KB_LANES, vecs = full + (tail > 0);
    const double inv_n = 1.0 / (double)n;
    for (size_t r0 = 0; r0 < rows; r0 += KB_ACROSS) {
        size_t count = rows - r0 < KB_ACROSS ? rows - r0 : KB_ACROSS;
        KB_V sums[KB_ACROSS], squares[KB_ACROSS];
        KB_C c1[KB_ACROSS] = {0}, c2[KB_ACROSS] = {0};
        /* zeroed, though only lanes the block uses are read: GCC's -Wmaybe-uninitialized */
        KB_C lane_sum[KB_ACROSS] = {0}, lane_squares[KB_ACROSS] = {0};
        const KB_T *row_x[KB_ACROSS], *row_r[KB_ACROSS];
        for (size_t j = 0; j < KB_ACROSS; ++j) /* lanes past the last row sum nothing */
            sums[j] = squares[j] = kb_set1(0);
        for (size_t j = 0; j < count; ++j) {
            row_x[j] = xs + (r0 + j) * n;
            row_r[j] = has_r ? rs + (r0 + j) * n : NULL;
        }
        if (center) { /* c2: the first value c1 plus the mean about it */
            for (size_t j = 0; j < count; ++j) {
                KB_V h0 = full ? KB_NAME(kb_across_h)(row_x[j], row_r[j], 0, has_r)
                               : KB_NAME(kb_across_tail)(row_x[j], row_r[j], 0, tail, has_r);
                c1[j] = kb_first(h0);
                KB_V c = kb_set1(c1[j]), sum = kb_mask_n(kb_sub(h0, c), full ? KB_LANES : tail);
                for (size_t k = 1; k < full; ++k)
                    sum = kb_add(sum, kb_sub(KB_NAME(kb_across_h)(row_x[j], row_r[j],
                                                                  k * KB_LANES, has_r), c));
                if (tail && full)
                    sum = kb_add(sum, kb_mask_n(kb_sub(KB_NAME(kb_across_tail)(
                                                           row_x[j], row_r[j], full * KB_LANES,
                                                           tail, has_r), c), tail));
                sums[j] = sum;
            }
            for (size_t j = 0; j < count; j += KB_LANES)
                kb_store_c(lane_sum + j, kb_lane_sums(sums + j));
            for (size_t j = 0; j < count; ++j)
                c2[j] = (KB_C)((double)c1[j] + (double)lane_sum[j] * inv_n);
        }
        for (size_t j = 0; j < count; ++j) { /* sums of t = h - c2 (LayerNorm) or of h */
            KB_V c = kb_set1(c2[j]), sum = kb_set1(0), sq = kb_set1(0);
            for (size_t k = 0; k < full; ++k) {
                KB_V h = KB_NAME(kb_across_h)(row_x[j], row_r[j], k * KB_LANES, has_r);
                KB_V t = center ? kb_sub(h, c) : h;
                sum = kb_add(sum, t);
                sq = kb_fma(t, t, sq);
            }
            if (tail) { /* h's other lanes are 0, t's are masked */
                KB_V h = KB_NAME(kb_across_tail)(row_x[j], row_r[j], full * KB_LANES, tail, has_r);
                KB_V t = center ? kb_mask_n(kb_sub(h, c), tail) : h;
                sum = kb_add(sum, t);
                sq = kb_fma(t, t, sq);
            }
            sums[j] = sum;
            squares[j] = sq;
        }
        for (size_t j = 0; j < count; j += KB_LANES) {
            if (center) kb_store_c(lane_sum + j, kb_lane_sums(sums + j));
            kb_store_c(lane_squares + j, kb_lane_sums(squares + j));
        }
        /* the float64 finish, lanes side by side */
        double mean_shifted[KB_ACROSS], spread[KB_ACROSS], mean[KB_ACROSS], rstd[KB_ACROSS];
        size_t lanes = (count + 3) / 4 * 4; /* whole kb_rstd_x4 calls; the rest unused */
        int overflowed = 0;
        for (size_t j = 0; j < lanes; ++j) {
            mean_shifted[j] = center ? (double)lane_sum[j] * inv_n : 0.0;
            spread[j] = (double)lane_squares[j] * inv_n - mean_shifted[j] * mean_shifted[j];
            mean[j] = (double)c2[j] + mean_shifted[j];
            overflowed |= !isfinite(spread[j]) | !isfinite(mean[j]);
        }
        for (size_t j = 0; overflowed && j < count; ++j) {
            if (isfinite(spread[j]) && isfinite(mean[j])) continue;
            KB_V h[KB_SHORT_VECS]; /* overflowed squares, NaN or inf: exactly, or NaN */
            size_t left[KB_SHORT_VECS];
            for (size_t k = 0; k < vecs; ++k) {
                left[k] = k < full ? KB_LANES : tail;
                h[k] = k < full ? KB_NAME(kb_across_h)(row_x[j], row_r[j], k * KB_LANES, has_r)
                                : KB_NAME(kb_across_tail)(row_x[j], row_r[j], k * KB_LANES,
                                                          tail, has_r);
            }
            KB_NAME(kb_short_exact)(h, left, vecs, n, center, &mean[j], &spread[j]);
            mean_shifted[j] = mean[j] - (double)c2[j];
            if (!isfinite(spread[j]) || !isfinite(mean[j])) spread[j] = mean[j] = NAN;
        }
        KB_C m[KB_ACROSS], scale[KB_ACROSS], scale_lo[KB_ACROSS], channel_bias[KB_ACROSS];
        for (size_t j = 0; j < lanes; j += 4) kb_rstd_x4(spread + j, eps, rstd + j);
        for (size_t j = 0; j < count; ++j) {
            m[j] = (KB_C)mean_shifted[j];
            scale[j] = (KB_C)rstd[j]; /* NaN makes every output NaN */
            scale_lo[j] = (KB_C)(rstd[j] - (double)(KB_C)rstd[j]);
        }
        for (size_t j = 0; j < count; ++j) {
            if (mean_o) mean_o[r0 + j] = (KB_C)mean[j];
            if (rstd_o) rstd_o[r0 + j] = (KB_C)rstd[j];
        }
        for (size_t j = 0; channel && j < count; ++j) { /* the weight in the scale, in float64 */
            scale[j] = (KB_C)(rstd[j] * (weight ? (double)weight[r0 + j] : 1.0));
            channel_bias[j] = bias ? bias[r0 + j] : (KB_C)0;
            if (mean_d) mean_d[r0 + j] = mean[j];
            if (var_d) var_d[r0 + j] = spread[j] < 0 ? 0.0 : spread[j]; /* NaN stays NaN */
        }
        for (size_t j = 0; j < count; ++j) { /* the normalize pass */
            KB_T *y = ys + (r0 + j) * n, *h_out = hs ? hs + (r0 + j) * n : NULL;
            const KB_C *w = weight && !channel ? weight + param_stride * (r0 + j) : ones;
            const KB_C *b = bias && !channel ? bias + param_stride * (r0 + j) : minus_zeros;
            KB_V c = kb_set1(c2[j]), mv = kb_set1(m[j]), sv = kb_set1(scale[j]);
            KB_V lo = kb_set1(scale_lo[j]);
            KB_V channel_b = kb_set1(channel ? channel_bias[j] : (KB_C)0);
            for (size_t k = 0; k < full; ++k) {
                size_t i = k * KB_LANES;
                KB_V h = KB_NAME(kb_across_h)(row_x[j], row_r[j], i, has_r);
                if (h_out) kb_store(h_out + i, h);
                /* (kernel_row_normalize.h) in-process A/B, each order of the builds,
                 * float32 LayerNorm 4096x256 0.86 / 0.96 (2 threads 0.94 / 0.94),
                 * 32768x256 0.82 / 0.84, RMSNorm 0.99 / 0.95, bfloat16 0.98 / 0.96;
                 * 64x256, 512x128 and GroupNorm (32, 64, 14, 14) level */
                KB_NAME(kb_prefetch_store)(y + i, KB_LANES);
                kb_store(y + i, KB_NAME(kb_across_y)(h, c, mv, sv, lo, kb_param(w + i),
                                                     channel ? channel_b : kb_param(b + i),
                                                     center, grouped, channel));
            }
            if (tail) {
                size_t i = full * KB_LANES;
                KB_V h = KB_NAME(kb_across_tail)(row_x[j], row_r[j], i, tail, has_r);
                if (h_out) kb_store_n(h_out + i, h, tail);
                KB_V b_tail = channel ? channel_b : kb_param_n(b + i, tail);
                kb_store_n(y + i, KB_NAME(kb_across_y)(h, c, mv, sv, lo, kb_param_n(w + i, tail),
                                                       b_tail, center, grouped, channel),
                           tail);
            }
        }
    }
}

/* An instance for each of LayerNorm / RMSNorm, with or without a residual, LayerNorm's
 * parameters or GroupNorm's (each row's own weight, rounded into rstd) */
KB_INLINE void KB_NAME(kb_rows_short_impl)(const void *x, const void *residual,
                                          void *residual_out, size_t rows, size_t n, int center,
                                          double eps, const void *weight, const void *bias,
                                          size_t param_stride, void *y, void *mean_out,
                                          void *rstd_out) {
    int grouped = param_stride && weight;
#define KB_ACROSS_CALL(c, r, g)                                                              \
    KB_NAME(kb_rows_across)((const KB_T *)x, (const KB_T *)residual, (KB_T *)residual_out,   \
                            rows, n, eps, (const KB_C *)weight, (const KB_C *)bias,          \
                            param_stride, (KB_T *)y, (KB_C *)mean_out, (KB_C *)rstd_out,     \
                            NULL, NULL, c, r, g, 0)
    if (grouped) /* GroupNorm: no residual */
        center ? KB_ACROSS_CALL(1, 0, 1) : KB_ACROSS_CALL(0, 0, 1);
    else if (center)
        residual ? KB_ACROSS_CALL(1, 1, 0) : KB_ACROSS_CALL(1, 0, 0);
    else
        residual ? KB_ACROSS_CALL(0, 1, 0) : KB_ACROSS_CALL(0, 0, 0);
#undef KB_ACROSS_CALL
}

#ifdef KB_SHORT_SPLIT_VECS
/* Rows of more than KB_SHORT_SPLIT_VECS vectors: the same code, as a function of its own,
 * so that the shorter rows' instances stay where they were (performance-log.md, 24 vectors
 * in one instance: 4096x64 1.15x the time) */
static __attribute__((noinline)) void KB_NAME(kb_rows_short_long)(
    const void *x, const void *residual, void *residual_out, size_t rows, size_t n, int center,
    double eps, const void *weight, const void *bias, size_t param_stride, void *y,
    void *mean_out, void *rstd_out) {
    KB_NAME(kb_rows_short_impl)(x, residual, residual_out, rows, n, center, eps, weight, bias,
                                param_stride, y, mean_out, rstd_out);
}
#endif

static void KB_NAME(rows_short)(const void *x, const void *residual, void *residual_out,
                                size_t rows, size_t n, int center, double eps,
                                const void *weight, const void *bias, size_t param_stride,
                                void *y, void *mean_out, void *rstd_out) {
    if (n > KB_NAME(rows_short_max)) return; /* never asked */
#ifdef KB_SHORT_SPLIT_VECS
    if (n > KB_SHORT_SPLIT_VECS * KB_LANES) {
        KB_NAME(kb_rows_short_long)(x, residual, residual_out, rows, n, center, eps, weight,
                                    bias, param_stride, y, mean_out, rstd_out);
        return;
    }
#endif
    KB_NAME(kb_rows_short_impl)(x, residual, residual_out, rows, n, center, eps, weight, bias,
                                param_stride, y, mean_out, rstd_out);
}

/* A sample's channels (BatchNorm training of one sample, InstanceNorm): row r is channel r,
 * normalized with its own statistics and its own weight[r] and bias[r] (kernels.h,
 * rows_short_channels); channels of more than KB_SHORT_SPLIT_VECS vectors, as rows_short's
 * rows, in an instance of their own (1x512x7x7 1.11x the time with one instance). */
#define KB_CHANNELS_CALL                                                                     \
    KB_NAME(kb_rows_across)((const KB_T *)x, NULL, NULL, rows, n, eps, (const KB_C *)weight, \
                            (const KB_C *)bias, 0, (KB_T *)y, NULL, NULL, mean_out, var_out, \
                            1, 0, 0, 1)
#ifdef KB_SHORT_SPLIT_VECS
static __attribute__((noinline)) void KB_NAME(kb_rows_short_channels_long)(
    const void *x, size_t rows, size_t n, double eps, const void *weight, const void *bias,
    void *y, double *mean_out, double *var_out) {
    KB_CHANNELS_CALL;
}
#endif

static void KB_NAME(rows_short_channels)(const void *x, size_t rows, size_t n, double eps,
                                         const void *weight, const void *bias, void *y,
                                         double *mean_out, double *var_out) {
    if (n > KB_NAME(rows_short_channels_max)) return; /* never asked */
#ifdef KB_SHORT_SPLIT_VECS
    if (n > KB_SHORT_SPLIT_VECS * KB_LANES) {
        KB_NAME(kb_rows_short_channels_long)(x, rows, n, eps, weight, bias, y, mean_out,
                                             var_out);
        return;
    }
#endif
    KB_CHANNELS_CALL;
}
#undef KB_CHANNELS_CALL
#undef KB_ACROSS
#else
enum { KB_NAME(rows_short_max) = 0, KB_NAME(rows_short_channels_max) = 0 };
static void KB_NAME(rows_short)(const void *x, const void *residual, void *residual_out,
                                size_t rows, size_t n, int center, double eps,
                                const void *weight, const void *bias, size_t param_stride,
                                void *y, void *mean_out, void *rstd_out) {
    (void)x, (void)residual, (void)residual_out, (void)rows, (void)n, (void)center, (void)eps;
    (void)weight, (void)bias, (void)param_stride, (void)y, (void)mean_out, (void)rstd_out;
    /* never asked */
}
static void KB_NAME(rows_short_channels)(const void *x, size_t rows, size_t n, double eps,
                                         const void *weight, const void *bias, void *y,
                                         double *mean_out, double *var_out) {
    (void)x, (void)rows, (void)n, (void)eps, (void)weight, (void)bias, (void)y;
    (void)mean_out, (void)var_out; /* never asked */
}
#endif
