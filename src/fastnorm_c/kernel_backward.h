/*
 * kernel_backward.h - the backward passes' kernels (kernels.h): row_grad_sums and
 * row_grad_apply over rows, rows_grad_sums and rows_grad_apply over BatchNorm's channels of
 * NCHW data, col_grad_sums and col_grad_apply over columns, included by kernel_body.h for
 * each storage dtype.  With
 * xhat = (x - mean) * rstd and gw = grad_y * weight over a span, LayerNorm's and BatchNorm's
 *   grad_x = rstd * ((gw - mean(gw)) - xhat * mean(gw * xhat))
 * and RMSNorm's the same without mean(gw) (mean 0): row_grad_sums takes the two sums (in
 * the compute dtype over blocks of KB_GRAD_BLOCK steps, then in float64), row_grad_apply
 * writes grad_x in that formula's order, without fused multiply-adds.  rows_grad_sums and
 * rows_grad_apply do the same over a BatchNorm channel's rows, several a call, and
 * col_grad_sums and col_grad_apply down columns; both BatchNorm applies write grad_x in
 * kb_grad_affine's form.
 */

/* Steps a lane sums in the compute dtype before the float64 total takes them: in the row
 * kernel a step is a pair of vectors, one into each of two accumulators, in rows_grad_sums
 * four into four; a span's last vectors add at most one more to each (17 values an
 * accumulator lane a block), about 2e-6 relative at worst in float32 against the float64
 * sum of the same products. */
#define KB_GRAD_BLOCK 16

/* One vector of the sums: its gw added to *a, gw * xhat to *b, and grad_y and grad_y * xhat
 * to the column sums at i when given.  w: the weight's vector, or NULL for none (gw is
 * grad_y: rows_grad_sums passes a constant NULL, so that its inlined steps take no product
 * for it).  A part-vector (count < lanes) has its missing lanes' xhat zeroed: they load x
 * as 0, and (0 - mean) * rstd may overflow where the row's own values do not, which would
 * turn their 0 * xhat into NaN. */
KB_INLINE void KB_NAME(kb_grad_step)(KB_V g, KB_V xv, const KB_V *w, KB_V m, KB_V r, KB_V *a,
                                     KB_V *b, KB_C *col_g, KB_C *col_g_xhat, size_t i,
                                     size_t count) {
    KB_V xhat = kb_mul(kb_sub(xv, m), r);
    if (count < KB_LANES) xhat = kb_mask_n(xhat, count);
    KB_V gxhat = kb_mul(g, xhat);
    if (w) {
        *a = kb_fma(g, *w, *a);
        *b = kb_fma(gxhat, *w, *b);
    } else {
        *a = kb_add(*a, g);
        *b = kb_fma(g, xhat, *b);
    }
    if (col_g) kb_store_c(col_g + i, kb_add(kb_param(col_g + i), g));
    if (col_g_xhat) kb_store_c(col_g_xhat + i, kb_add(kb_param(col_g_xhat + i), gxhat));
}

static void KB_NAME(row_grad_sums)(const void *grad_y, const void *x, size_t n, double mean,
                                   double rstd, const void *weight, double *sum_gw,
                                   double *sum_gw_xhat, void *col_g, void *col_g_xhat) {
    const KB_T *g = (const KB_T *)grad_y, *xs = (const KB_T *)x;
    const KB_C *w = (const KB_C *)weight;
    KB_C *cg = (KB_C *)col_g, *cgx = (KB_C *)col_g_xhat;
    const KB_V m = kb_set1((KB_C)mean), r = kb_set1((KB_C)rstd), one = kb_set1((KB_C)1);
    KB_V wv;
    double total_a = 0, total_b = 0;
    KB_V a0 = kb_set1(0), b0 = a0, a1 = a0, b1 = a0; /* two accumulators against the latency */
    size_t i = 0, pairs = 0;
    for (; i + 2 * KB_LANES <= n; i += 2 * KB_LANES) {
        wv = w ? kb_param(w + i) : one;
        KB_NAME(kb_grad_step)(kb_load(g + i), kb_load(xs + i), &wv, m, r, &a0, &b0, cg, cgx, i,
                              KB_LANES);
        wv = w ? kb_param(w + i + KB_LANES) : one;
        KB_NAME(kb_grad_step)(kb_load(g + i + KB_LANES), kb_load(xs + i + KB_LANES), &wv, m, r,
                              &a1, &b1, cg, cgx, i + KB_LANES, KB_LANES);
        if (++pairs == KB_GRAD_BLOCK) { /* the block's float64 step */
            total_a += kb_sum(kb_add(a0, a1));
            total_b += kb_sum(kb_add(b0, b1));
            a0 = b0 = a1 = b1 = kb_set1(0);
            pairs = 0;
        }
    }
    /* the last vector and part-vector, into the last block: the missing lanes load as 0,
     * so add 0 to the sums (and the column sums are padded to whole vectors, kernels.h) */
    if (i + KB_LANES <= n) {
        wv = w ? kb_param(w + i) : one;
        KB_NAME(kb_grad_step)(kb_load(g + i), kb_load(xs + i), &wv, m, r, &a0, &b0, cg, cgx, i,
                              KB_LANES);
        i += KB_LANES;
    }
    if (i < n) {
        wv = w ? kb_param_n(w + i, n - i) : one;
        KB_NAME(kb_grad_step)(kb_load_n(g + i, n - i), kb_load_n(xs + i, n - i), &wv, m, r, &a1,
                              &b1, cg, cgx, i, n - i);
    }
    total_a += kb_sum(kb_add(a0, a1));
    total_b += kb_sum(kb_add(b0, b1));
    *sum_gw = total_a;
    *sum_gw_xhat = total_b;
}

/* rows_grad_sums's spans: four accumulators of each sum against the adders' latency (the
 * row kernel's two suffice where its column sums' loads and stores bound the loop), and no
 * weight. */
static void KB_NAME(rows_grad_sums)(const void *grad_y, const void *x, size_t rows, size_t n,
                                    size_t stride, double mean, double rstd, double *sum_g,
                                    double *sum_g_xhat) {
    const KB_T *g = (const KB_T *)grad_y, *xs = (const KB_T *)x;
    const KB_V m = kb_set1((KB_C)mean), r = kb_set1((KB_C)rstd);
    double total_a = 0, total_b = 0;
    KB_V a0 = kb_set1(0), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
    size_t steps = 0; /* additions each accumulator took since the float64 step */
#define KB_GRAD_AT(at, a, b)                                                                   \
    KB_NAME(kb_grad_step)(kb_load(g + (at)), kb_load(xs + (at)), NULL, m, r, a, b, NULL, NULL, \
                          0, KB_LANES)
#define KB_GRAD_FLUSH()                                                                        \
    do {                                                                                       \
        total_a += kb_sum(kb_add(kb_add(a0, a1), kb_add(a2, a3)));                             \
        total_b += kb_sum(kb_add(kb_add(b0, b1), kb_add(b2, b3)));                             \
        a0 = b0 = a1 = b1 = a2 = b2 = a3 = b3 = kb_set1(0);                                    \
        steps = 0;                                                                             \
    } while (0)
    for (size_t span = 0; span < rows; ++span, g += stride, xs += stride) {
        size_t i = 0;
        for (; i + 4 * KB_LANES <= n; i += 4 * KB_LANES) {
            KB_GRAD_AT(i, &a0, &b0);
            KB_GRAD_AT(i + KB_LANES, &a1, &b1);
            KB_GRAD_AT(i + 2 * KB_LANES, &a2, &b2);
            KB_GRAD_AT(i + 3 * KB_LANES, &a3, &b3);
            if (++steps == KB_GRAD_BLOCK) KB_GRAD_FLUSH();
        }
        /* the span's last vectors and part-vector, at most one more addition to each
         * accumulator (the missing lanes load as 0, so add 0), then the float64 step where
         * another span's could pass KB_GRAD_BLOCK + 1 */
        if (i + KB_LANES <= n) {
            KB_GRAD_AT(i, &a0, &b0);
            if ((i += KB_LANES) + KB_LANES <= n) {
                KB_GRAD_AT(i, &a1, &b1);
                if ((i += KB_LANES) + KB_LANES <= n) {
                    KB_GRAD_AT(i, &a2, &b2);
                    i += KB_LANES;
                }
            }
        }
        if (i < n)
            KB_NAME(kb_grad_step)(kb_load_n(g + i, n - i), kb_load_n(xs + i, n - i), NULL, m, r,
                                  &a3, &b3, NULL, NULL, 0, n - i);
        if (n % (4 * KB_LANES) && ++steps >= KB_GRAD_BLOCK && span + 1 < rows) KB_GRAD_FLUSH();
    }
    KB_GRAD_FLUSH();
#undef KB_GRAD_AT
#undef KB_GRAD_FLUSH
    *sum_g = total_a;
    *sum_g_xhat = total_b;
}

/* BatchNorm's gradient as an affine map of grad_y and x, the column path's and
 * rows_grad_apply's order: scale * grad_y - (slope * (x - mean) + offset) */
KB_INLINE KB_V KB_NAME(kb_grad_affine)(KB_V g, KB_V xv, KB_V m, KB_V scale, KB_V slope,
                                       KB_V offset) {
    return kb_sub(kb_mul(scale, g), kb_fma(slope, kb_sub(xv, m), offset));
}

/* grad_x of the `count` values at i (count < lanes: a part-vector): row_grad_apply's
 * scale * ((gw - a) - xhat * b), gw = grad_y * weight (or grad_y where weight is NULL), or
 * where `affine` (a constant) kb_grad_affine(grad_y, x, mean, scale, a, b), no weight. */
KB_INLINE KB_V KB_NAME(kb_grad_value)(const KB_T *g, const KB_T *xs, const KB_C *weight,
                                      size_t i, size_t count, int affine, KB_V m, KB_V r,
                                      KB_V scale, KB_V a, KB_V b) {
    int part = count < KB_LANES;
    KB_V gv = part ? kb_load_n(g + i, count) : kb_load(g + i);
    KB_V xv = part ? kb_load_n(xs + i, count) : kb_load(xs + i);
    if (affine) return KB_NAME(kb_grad_affine)(gv, xv, m, scale, a, b);
    KB_V xhat = kb_mul(kb_sub(xv, m), r);
    if (weight) gv = kb_mul(gv, part ? kb_param_n(weight + i, count) : kb_param(weight + i));
    return kb_mul(scale, kb_sub(kb_sub(gv, a), kb_mul(xhat, b)));
}

/* grad_x over one span by kb_grad_value, streamed where `store` says */
KB_INLINE void KB_NAME(kb_grad_apply_span)(const KB_T *g, const KB_T *xs, size_t n,
                                           const KB_C *weight, int affine, KB_V m, KB_V r,
                                           KB_V s, KB_V a, KB_V b, KB_T *gx, int store) {
    int stream = store & FN_STORE_STREAM;
    size_t i = stream ? KB_NAME(kb_stream_head)(gx, n) : 0;
    if (i == n) stream = 0, i = 0; /* nothing aligned to stream to */
#define KB_GRAD_AT(at, count)                                                                  \
    KB_NAME(kb_grad_value)(g, xs, weight, at, count, affine, m, r, s, a, b)
    if (i) KB_NAME(kb_put)(gx, KB_GRAD_AT(0, i), i, stream); /* up to the first vector boundary */
    /* plain stores ask for their lines ahead (kernel_row_normalize.h, KB_STORE_AHEAD):
     * in-process A/B, each order of the builds, float32, 1 thread, LayerNorm backward
     * 512x768 0.98 / 0.98, 4096x768 0.92 / 0.94, RMSNorm 0.96 / 0.98 */
    for (; i + KB_LANES <= n; i += KB_LANES) {
        if (!stream) KB_NAME(kb_prefetch_store)(gx + i, KB_LANES);
        KB_NAME(kb_put)(gx + i, KB_GRAD_AT(i, KB_LANES), KB_LANES, stream);
    }
    if (i < n) KB_NAME(kb_put)(gx + i, KB_GRAD_AT(i, n - i), n - i, stream);
#undef KB_GRAD_AT
}

static void KB_NAME(row_grad_apply)(const void *grad_y, const void *x, size_t n, double mean,
                                    double rstd, const void *weight, double scale, double a,
                                    double b, void *grad_x, int store) {
    KB_NAME(kb_grad_apply_span)((const KB_T *)grad_y, (const KB_T *)x, n, (const KB_C *)weight,
                                0, kb_set1((KB_C)mean), kb_set1((KB_C)rstd),
                                kb_set1((KB_C)scale), kb_set1((KB_C)a), kb_set1((KB_C)b),
                                (KB_T *)grad_x, store);
}

static void KB_NAME(rows_grad_apply)(const void *grad_y, const void *x, size_t rows, size_t n,
                                     size_t stride, double mean, double scale, double slope,
                                     double offset, void *grad_x, int store) {
    const KB_T *g = (const KB_T *)grad_y, *xs = (const KB_T *)x;
    KB_T *gx = (KB_T *)grad_x;
    const KB_V m = kb_set1((KB_C)mean), s = kb_set1((KB_C)scale), k = kb_set1((KB_C)slope);
    const KB_V o = kb_set1((KB_C)offset);
    for (size_t span = 0; span < rows; ++span, g += stride, xs += stride, gx += stride)
        KB_NAME(kb_grad_apply_span)(g, xs, n, NULL, 1, m, m /* no rstd */, s, k, o, gx, store);
}

/* total[j] += block[j] and block[j] = 0 for j < n (and the block's padding to a multiple
 * of 16): a plain loop the family's flags vectorize.  In the baseline entry points it took
 * two float64 lanes a step: the C call of LayerNorm backward 64x768 float32 took 11.3 us
 * there, 10.1 us here. */
static void KB_NAME(grad_flush)(void *block, double *total, size_t n) {
    KB_C *restrict b = (KB_C *)block;
    double *restrict t = total;
    for (size_t j = 0; j < n; ++j) t[j] += (double)b[j];
    memset(b, 0, (n + 15) / 16 * 16 * sizeof(KB_C));
}

/* ---- columns: BatchNorm of short channel rows and channels-last data ------------------ */

/* Column j's sums over `rows` rows (row_stride elements apart), down the rows a group of
 * columns at a time, the sums in registers: block_g[j] = sum(gw), block_g_xhat[j] =
 * sum(gw * xhat), xhat = (x - mean[j]) * rstd[j], gw = grad_y * row_weight[row] (grad_y
 * without a row weight).  Groups of KB_GRAD_GROUP vectors give the adders independent
 * chains; the last vectors of a row go one at a time. */
#define KB_GRAD_GROUP 4
static void KB_NAME(col_grad_sums)(const void *grad_y, const void *x, size_t rows, size_t cols,
                                   size_t row_stride, const void *mean, const void *rstd,
                                   const void *row_weight, void *block_g, void *block_g_xhat) {
    const KB_T *g = (const KB_T *)grad_y, *xs = (const KB_T *)x;
    const KB_C *ms = (const KB_C *)mean, *rs = (const KB_C *)rstd, *rw = (const KB_C *)row_weight;
    KB_C *bg = (KB_C *)block_g, *bgx = (KB_C *)block_g_xhat;
    size_t j = 0;
    for (; j + KB_GRAD_GROUP * KB_LANES <= cols; j += KB_GRAD_GROUP * KB_LANES) {
        KB_V m[KB_GRAD_GROUP], r[KB_GRAD_GROUP], sum_g[KB_GRAD_GROUP], sum_gx[KB_GRAD_GROUP];
        for (int k = 0; k < KB_GRAD_GROUP; ++k) {
            m[k] = kb_param(ms + j + k * KB_LANES);
            r[k] = kb_param(rs + j + k * KB_LANES);
            sum_g[k] = sum_gx[k] = kb_set1(0);
        }
        for (size_t row = 0; row < rows; ++row) {
            const KB_V w = kb_set1(rw ? rw[row] : (KB_C)1);
            for (int k = 0; k < KB_GRAD_GROUP; ++k) {
                size_t at = row * row_stride + j + k * KB_LANES;
                KB_V gv = rw ? kb_mul(kb_load(g + at), w) : kb_load(g + at);
                sum_g[k] = kb_add(sum_g[k], gv);
                sum_gx[k] = kb_fma(gv, kb_mul(kb_sub(kb_load(xs + at), m[k]), r[k]), sum_gx[k]);
            }
        }
        for (int k = 0; k < KB_GRAD_GROUP; ++k) {
            kb_store_c(bg + j + k * KB_LANES, sum_g[k]);
            kb_store_c(bgx + j + k * KB_LANES, sum_gx[k]);
        }
    }
    for (; j < cols; j += KB_LANES) {
        size_t count = cols - j < KB_LANES ? cols - j : KB_LANES;
        KB_V m = kb_param_n(ms + j, count), r = kb_param_n(rs + j, count);
        KB_V sum_g = kb_set1(0), sum_gx = sum_g;
        for (size_t row = 0; row < rows; ++row) {
            size_t at = row * row_stride + j;
            KB_V gv = count == KB_LANES ? kb_load(g + at) : kb_load_n(g + at, count);
            KB_V xv = count == KB_LANES ? kb_load(xs + at) : kb_load_n(xs + at, count);
            if (rw) gv = kb_mul(gv, kb_set1(rw[row]));
            sum_g = kb_add(sum_g, gv);
            sum_gx = kb_fma(gv, kb_mul(kb_sub(xv, m), r), sum_gx);
        }
        kb_store_c(bg + j, sum_g);
        kb_store_c(bgx + j, sum_gx);
    }
}
#undef KB_GRAD_GROUP

/* grad_x[row, j] = scale[j] * grad_y - (slope[j] * (x - mean[j]) + offset[j]), row by row
 * (the parameters reloaded from L1 or L2 each row: down the columns, each store 4 KB from
 * the last stalled the next rows' loads, (256, 1024) float32 taking 2x the time).  Four
 * parameters, not five: scale * xhat * b is slope * (x - mean) with slope = scale * rstd *
 * b, and scale * a is the offset.  Whole vectors are streamed where `store` says and every
 * row of grad_x starts on a vector boundary. */
static void KB_NAME(col_grad_apply)(const void *grad_y, const void *x, size_t rows, size_t cols,
                                    size_t row_stride, const void *mean, const void *scale,
                                    const void *slope, const void *offset, void *grad_x,
                                    int store) {
    const KB_C *ms = (const KB_C *)mean, *ss = (const KB_C *)scale;
    const KB_C *ks = (const KB_C *)slope, *os = (const KB_C *)offset;
    int stream = (store & FN_STORE_STREAM) && KB_NAME(kb_stream_head)((KB_T *)grad_x, cols) == 0 &&
                 row_stride % KB_LANES == 0;
    for (size_t row = 0; row < rows; ++row) {
        const KB_T *g = (const KB_T *)grad_y + row * row_stride, *xs = (const KB_T *)x + row * row_stride;
        KB_T *gx = (KB_T *)grad_x + row * row_stride;
        size_t j = 0;
        for (; j + KB_LANES <= cols; j += KB_LANES)
            KB_NAME(kb_put)(gx + j,
                            KB_NAME(kb_grad_affine)(kb_load(g + j), kb_load(xs + j),
                                                    kb_param(ms + j), kb_param(ss + j),
                                                    kb_param(ks + j), kb_param(os + j)),
                            KB_LANES, stream);
        if (j < cols) {
            size_t count = cols - j;
            kb_store_n(gx + j,
                       KB_NAME(kb_grad_affine)(kb_load_n(g + j, count), kb_load_n(xs + j, count),
                                               kb_param_n(ms + j, count),
                                               kb_param_n(ss + j, count),
                                               kb_param_n(ks + j, count),
                                               kb_param_n(os + j, count)),
                       count);
        }
    }
}

/* LayerNorm over the rows of a block of columns (a normalized axis that is not the last:
 * `axis=1` of NCHW data, each position a column): with xhat = (x - mean[j]) * rstd[j] and
 * gw = grad_y * weight[row],
 *   grad_x[row, j] = rstd[j] * ((gw - a[j]) - xhat * b[j])
 * in row_grad_apply's order, and each row's sum(grad_y) and sum(grad_y * xhat) added to
 * row_g[row] and row_g_xhat[row] (float64, over compute-dtype blocks as row_grad_sums
 * takes them).  weight: NULL or `rows` compute-dtype values; the other parameters cols
 * compute-dtype values, a NULL mean meaning 0 (RMSNorm). */
static void KB_NAME(col_grad_rows)(const void *grad_y, const void *x, size_t rows, size_t cols,
                                   size_t row_stride, const void *mean, const void *rstd,
                                   const void *weight, const void *a, const void *b,
                                   void *grad_x, double *row_g, double *row_g_xhat) {
    const KB_C *ms = (const KB_C *)mean, *rs = (const KB_C *)rstd, *ws = (const KB_C *)weight;
    const KB_C *as = (const KB_C *)a, *bs = (const KB_C *)b;
    for (size_t row = 0; row < rows; ++row) {
        const KB_T *g = (const KB_T *)grad_y + row * row_stride, *xs = (const KB_T *)x + row * row_stride;
        KB_T *gx = (KB_T *)grad_x + row * row_stride;
        const KB_V w = kb_set1(ws ? ws[row] : (KB_C)1);
        KB_V sum_g = kb_set1(0), sum_gx = sum_g;
        double total_g = 0, total_gx = 0;
        for (size_t j = 0, step = 0; j < cols; j += KB_LANES) {
            size_t count = cols - j < KB_LANES ? cols - j : KB_LANES;
            KB_V gv = count == KB_LANES ? kb_load(g + j) : kb_load_n(g + j, count);
            KB_V xv = count == KB_LANES ? kb_load(xs + j) : kb_load_n(xs + j, count);
            KB_V m = ms ? kb_param_n(ms + j, count) : kb_set1(0), r = kb_param_n(rs + j, count);
            KB_V xhat = kb_mul(kb_sub(xv, m), r);
            KB_V value = kb_mul(r, kb_sub(kb_sub(kb_mul(gv, w), kb_param_n(as + j, count)),
                                          kb_mul(xhat, kb_param_n(bs + j, count))));
            if (count == KB_LANES)
                kb_store(gx + j, value);
            else
                kb_store_n(gx + j, value, count);
            sum_g = kb_add(sum_g, gv);
            sum_gx = kb_fma(gv, xhat, sum_gx); /* gv is 0 in the lanes past cols */
            if (++step == 2 * KB_GRAD_BLOCK || j + KB_LANES >= cols) {
                total_g += kb_sum(sum_g);
                total_gx += kb_sum(sum_gx);
                sum_g = sum_gx = kb_set1(0);
                step = 0;
            }
        }
        row_g[row] += total_g;
        row_g_xhat[row] += total_gx;
    }
}

#undef KB_GRAD_BLOCK
