/*
 * kernel_rows_short.h - rows_short: LayerNorm / RMSNorm of rows short enough to live in
 * registers (at most KB_SHORT_VECS vectors): statistics and normalize pass from the same
 * registers, a few rows in step.  Part of kernel_body.h.
 *
 * Why: a row of 64 float32 values took 35-55 ns through row_stats, the float64 finish and
 * row_normalize, each call paying its setup, edges and dependent latency for four vectors
 * of work; here a row is a handful of vector operations and the rows' chains overlap.
 *
 * Numerics: LayerNorm takes two passes over the registers.  The first sums h - c1, c1
 * the row's first value, lane-wise (at most KB_SHORT_VECS values a lane, the lanes added
 * in float64), for a center c2 = c1 + their mean near the row's mean.  The second sums
 * e = h - c2 (exact for values within a factor of two of c2, Sterbenz) and e^2; then
 * mean = c2 + m, m = sum(e) / n, var = sum(e^2) / n - m^2 (m is tiny against the spread),
 * and y = (e - m) * rstd * weight + bias.  A center that is one value alone (c1) lost
 * digits on rows led by an outlier: mean 2.6e-6 relative.  RMSNorm sums h^2.
 */

#include <math.h>

#ifndef KB_SHORT_VECS
#define KB_SHORT_VECS 8
#endif

/* The longest row rows_short takes, in elements (kernels.h rows_short_max): 0 where the
 * family's simd_<family>.h does not define FN_SHORT_ROWS, whose table gets a stub. */
#ifdef FN_SHORT_ROWS
enum { KB_NAME(rows_short_max) = KB_SHORT_VECS * KB_LANES };

/* The sum of v[0] ... v[vecs - 1] as a tree: half the latency of a chain. */
KB_INLINE KB_V KB_NAME(kb_short_sum)(const KB_V *v, const size_t vecs) {
    KB_V s[KB_SHORT_VECS];
#pragma GCC unroll 8
    for (size_t k = 0; k < vecs; ++k) s[k] = v[k];
#pragma GCC unroll 8
    for (size_t width = KB_SHORT_VECS / 2; width >= 1; width /= 2)
#pragma GCC unroll 8
        for (size_t k = 0; k < width; ++k)
            if (k + width < vecs) s[k] = kb_add(s[k], s[k + width]);
    return s[0];
}

/* A row's statistics again from its registers, exactly (float64, two passes, as
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

/* rows_short for rows of at most `cap` vectors (1, 2, 4 or 8), `block` rows at a time in
 * step (both constants in each instance: rows_short's switch), so that the rows' vectors
 * are registers, the loops straight code, and the block's dependency chains (three float64
 * lane sums, a division and a square root a row) advance side by side.  Vector k holds
 * left[k] values: all lanes, the row's last few, or none (a row shorter than the cap); its
 * loads and stores are masked whatever left[k] is, so that the instances have no branches
 * (code size and compile time). */
KB_INLINE void KB_NAME(kb_rows_short_v)(const KB_T *xs, const KB_T *rs, KB_T *hs, size_t rows,
                                        size_t n, int center, double eps, const KB_C *ws,
                                        const KB_C *bs, size_t ps, KB_T *ys, KB_C *mean_o,
                                        KB_C *rstd_o, const size_t *left, const size_t cap,
                                        const size_t block, const int grouped) {
    double inv_n = 1.0 / (double)n;
    for (size_t r = 0; r + block <= rows; r += block) {
        /* only [j < block][k < cap] is used; zeroed so that GCC's -Wmaybe-uninitialized,
         * which cannot follow the constants, stays quiet (the stores fold away) */
        KB_V h[4][KB_SHORT_VECS], t[4][KB_SHORT_VECS], sq[4][KB_SHORT_VECS], c[4], m[4], scale[4];
#pragma GCC unroll 4
        for (size_t j = 0; j < 4; ++j)
#pragma GCC unroll 8
            for (size_t k = 0; k < KB_SHORT_VECS; ++k) h[j][k] = t[j][k] = sq[j][k] = kb_set1(0);
        double mean[4], spread[4];
        KB_C center2[4] = {0, 0, 0, 0}; /* LayerNorm's centers (t = h - center2) */
        KB_C rstd_lo[4]; /* rstd less its rounding to KB_C, for GroupNorm's weight */
#pragma GCC unroll 4
        for (size_t j = 0; j < block; ++j)
#pragma GCC unroll 8
            for (size_t k = 0; k < cap; ++k) {
                size_t at = (r + j) * n + k * KB_LANES;
                h[j][k] = kb_load_n(xs + at, left[k]);
                if (rs) h[j][k] = kb_round(kb_add(h[j][k], kb_load_n(rs + at, left[k])));
            }
        if (center) {
#pragma GCC unroll 4
            for (size_t j = 0; j < block; ++j) {
                KB_C first = kb_first(h[j][0]);
                c[j] = kb_set1(first);
#pragma GCC unroll 8
                for (size_t k = 0; k < cap; ++k) t[j][k] = kb_mask_n(kb_sub(h[j][k], c[j]), left[k]);
                center2[j] = (KB_C)((double)first + kb_sum(KB_NAME(kb_short_sum)(t[j], cap)) * inv_n);
                c[j] = kb_set1(center2[j]);
            }
#pragma GCC unroll 4
            for (size_t j = 0; j < block; ++j)
#pragma GCC unroll 8
                for (size_t k = 0; k < cap; ++k) {
                    t[j][k] = kb_mask_n(kb_sub(h[j][k], c[j]), left[k]);
                    sq[j][k] = kb_mul(t[j][k], t[j][k]);
                }
#pragma GCC unroll 4
            for (size_t j = 0; j < block; ++j) {
                double mean_shifted = kb_sum(KB_NAME(kb_short_sum)(t[j], cap)) * inv_n;
                spread[j] = kb_sum(KB_NAME(kb_short_sum)(sq[j], cap)) * inv_n - mean_shifted * mean_shifted;
                mean[j] = (double)center2[j] + mean_shifted;
                m[j] = kb_set1((KB_C)mean_shifted);
            }
        } else {
#pragma GCC unroll 4
            for (size_t j = 0; j < block; ++j) {
#pragma GCC unroll 8
                for (size_t k = 0; k < cap; ++k) t[j][k] = kb_mul(h[j][k], h[j][k]); /* masked lanes: 0 */
                spread[j] = kb_sum(KB_NAME(kb_short_sum)(t[j], cap)) * inv_n;
                mean[j] = 0.0;
                m[j] = kb_set1(0); /* unused: no centering */
            }
        }
#pragma GCC unroll 4
        for (size_t j = 0; j < block; ++j) {
            double rstd;
            if (!isfinite(spread[j]) || !isfinite(mean[j])) {
                KB_NAME(kb_short_exact)(h[j], left, cap, n, center, &mean[j], &spread[j]);
                m[j] = kb_set1((KB_C)(mean[j] - (double)center2[j])); /* d = t - m, as above */
            }
            if (!isfinite(spread[j]) || !isfinite(mean[j])) { /* NaN or inf in the row: all NaN */
                mean[j] = rstd = NAN;
            } else {
                rstd = 1.0 / sqrt((spread[j] < 0 ? 0 : spread[j]) + eps);
            }
            if (mean_o) mean_o[r + j] = (KB_C)mean[j];
            if (rstd_o) rstd_o[r + j] = (KB_C)rstd;
            scale[j] = kb_set1((KB_C)rstd); /* NaN makes every output NaN */
            rstd_lo[j] = (KB_C)(rstd - (double)(KB_C)rstd);
        }
#pragma GCC unroll 4
        for (size_t j = 0; j < block; ++j)
#pragma GCC unroll 8
            for (size_t k = 0; k < cap; ++k) {
                size_t at = (r + j) * n + k * KB_LANES;
                size_t p = (grouped ? (r + j) * ps : 0) + k * KB_LANES;
                size_t lk = left[k];
                if (hs) kb_store_n(hs + at, h[j][k], lk);
                KB_V d = center ? kb_sub(t[j][k], m[j]) : h[j][k], e;
                if (grouped && ws) { /* GroupNorm: rstd * weight rounded once, as its row path */
                    KB_V w = kb_param_n(ws + p, lk);
                    KB_V s = kb_fma(scale[j], w, kb_mul(kb_set1(rstd_lo[j]), w));
                    e = bs ? kb_fma(d, s, kb_param_n(bs + p, lk)) : kb_mul(d, s);
                } else { /* one rounding for the weight and bias together */
                    e = kb_mul(d, scale[j]);
                    if (ws && bs) e = kb_fma(e, kb_param_n(ws + p, lk), kb_param_n(bs + p, lk));
                    else if (ws) e = kb_mul(e, kb_param_n(ws + p, lk));
                    else if (bs) e = kb_add(e, kb_param_n(bs + p, lk));
                }
                kb_store_n(ys + at, e, lk);
            }
    }
}

/* Rows of at most `cap` vectors: blocks of rows as wide as the registers allow, then the
 * rest one by one. */
KB_INLINE void KB_NAME(kb_rows_short_blocks)(const KB_T *xs, const KB_T *rs, KB_T *hs,
                                             size_t rows, size_t n, int center, double eps,
                                             const KB_C *ws, const KB_C *bs, size_t ps,
                                             KB_T *ys, KB_C *mean_o, KB_C *rstd_o,
                                             const size_t *left, const size_t cap,
                                             const int grouped) {
    const size_t block = cap <= 2 ? 4 : 2;
    size_t done = rows / block * block;
    KB_NAME(kb_rows_short_v)(xs, rs, hs, done, n, center, eps, ws, bs, ps, ys, mean_o, rstd_o,
                             left, cap, block, grouped);
    if (done == rows || block == 1) return;
    size_t at = done * n, pat = done * ps;
    KB_NAME(kb_rows_short_v)(xs + at, rs ? rs + at : NULL, hs ? hs + at : NULL, rows - done, n,
                             center, eps, ws ? ws + pat : NULL, bs ? bs + pat : NULL, ps, ys + at,
                             mean_o ? mean_o + done : NULL, rstd_o ? rstd_o + done : NULL, left,
                             cap, 1, grouped);
}

/* One instance per cap of 1, 2, 4 and 8 vectors (a row of 3 takes the 4-vector one, its
 * fourth vector empty): instances for every count took 60% longer to compile. */
static void KB_NAME(rows_short)(const void *x, const void *residual, void *residual_out,
                                size_t rows, size_t n, int center, double eps,
                                const void *weight, const void *bias, size_t param_stride,
                                void *y, void *mean_out, void *rstd_out) {
    size_t left[KB_SHORT_VECS], vecs = (n + KB_LANES - 1) / KB_LANES;
    for (size_t k = 0; k < KB_SHORT_VECS; ++k)
        left[k] = n <= k * KB_LANES ? 0 : n - k * KB_LANES < KB_LANES ? n - k * KB_LANES : KB_LANES;
#define KB_SHORT_CALL(cap, grouped)                                                         \
    KB_NAME(kb_rows_short_blocks)((const KB_T *)x, (const KB_T *)residual,                  \
                                  (KB_T *)residual_out, rows, n, center, eps,              \
                                  (const KB_C *)weight, (const KB_C *)bias, param_stride,  \
                                  (KB_T *)y, (KB_C *)mean_out, (KB_C *)rstd_out, left, cap, \
                                  grouped)
    _Static_assert(KB_SHORT_VECS == 8, "rows_short's instances cap rows at 1, 2, 4, 8 vectors");
    if (vecs > 8) return; /* rows_short_max: never asked */
    /* GroupNorm's per-row parameters (param_stride != 0) get instances of their own, so
     * that LayerNorm's loop carries neither their branch nor their addressing */
    if (vecs == 1)
        param_stride ? KB_SHORT_CALL(1, 1) : KB_SHORT_CALL(1, 0);
    else if (vecs == 2)
        param_stride ? KB_SHORT_CALL(2, 1) : KB_SHORT_CALL(2, 0);
    else if (vecs <= 4)
        param_stride ? KB_SHORT_CALL(4, 1) : KB_SHORT_CALL(4, 0);
    else
        param_stride ? KB_SHORT_CALL(8, 1) : KB_SHORT_CALL(8, 0);
#undef KB_SHORT_CALL
}
#else
enum { KB_NAME(rows_short_max) = 0 };
static void KB_NAME(rows_short)(const void *x, const void *residual, void *residual_out,
                                size_t rows, size_t n, int center, double eps,
                                const void *weight, const void *bias, size_t param_stride,
                                void *y, void *mean_out, void *rstd_out) {
    (void)x, (void)residual, (void)residual_out, (void)rows, (void)n, (void)center, (void)eps;
    (void)weight, (void)bias, (void)param_stride, (void)y, (void)mean_out, (void)rstd_out;
    /* never asked */
}
#endif
