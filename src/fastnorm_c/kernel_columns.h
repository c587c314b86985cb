/*
 * kernel_columns.h - part of kernel_body.h (which includes it once per dtype): col_stats
 * and col_normalize, the kernels of statistics over a non-contiguous axis.
 */

/* ---- column statistics ------------------------------------------------------------ */

/* Merge a partial (vectors mean, m2 of `count` values per lane) into float64 lane
 * accumulators that hold `acc_count` values per lane; the first partial is copied. */
KB_INLINE void KB_NAME(kb_merge_partial)(double *acc_mean, double *acc_m2, double acc_count,
                                         KB_V mean, KB_V m2, double count, int center) {
    double lane_mean[KB_LANES], lane_m2[KB_LANES];
    if (acc_count == 0) {
        kb_to_double(m2, acc_m2);
        if (center) kb_to_double(mean, acc_mean);
    } else if (center) {
        kb_to_double(m2, lane_m2);
        kb_to_double(mean, lane_mean);
        kb_merge_lanes(acc_mean, acc_m2, acc_count, lane_mean, lane_m2, count, KB_LANES);
    } else {
        kb_to_double(m2, lane_m2);
        KB_LOOP_NOT_UNROLLED
        for (int lane = 0; lane < KB_LANES; ++lane) acc_m2[lane] += lane_m2[lane];
    }
}

/* One value per lane as a partial (center: its shifted value, m2 0; !center: its square). */
KB_INLINE void KB_NAME(kb_welford_one)(KB_V h, KB_V shift, int center, KB_V *mean, KB_V *m2) {
    *mean = kb_sub(h, shift);
    *m2 = center ? kb_set1(0) : kb_mul(h, h);
}

/* A Welford stream that takes two values per step: the pair's own mean and m2 merged into
 * the stream with Chan's formula.  One dependency chain (subtract, FMA) per two vectors
 * instead of one, so four streams keep the FMA pipes busy.  The stream holds twice its
 * mean (`mean2`) and twice its m2 (`m2x2`), which saves two multiplies per step; !center
 * keeps two sums of squares instead. */
KB_INLINE void KB_NAME(kb_welford2_first)(KB_V h0, KB_V h1, KB_V shift, int center, KB_V *mean2,
                                          KB_V *m2x2) {
    if (center) {
        KB_V a = kb_sub(h0, shift), b = kb_sub(h1, shift), d = kb_sub(a, b);
        *mean2 = kb_add(a, b);
        *m2x2 = kb_mul(d, d);
    } else {
        *mean2 = kb_mul(h1, h1);
        *m2x2 = kb_mul(h0, h0);
    }
}

/* Step k (inverse = 1/k, rest = (k-1)/k): the stream holds 2(k-1) values; with
 * pair = a + b, d = a - b and delta = pair - mean2, Chan's merge gives
 * mean2 += delta / k and m2x2 += d^2 + delta^2 (k-1)/k.  Five additions and four
 * multiplies: the adder and FMA pipes share the work (the textbook delta * (pair - new
 * mean2) would put six of nine operations on the two adders). */
KB_INLINE void KB_NAME(kb_welford2_step)(KB_V h0, KB_V h1, KB_V shift, KB_V inverse, KB_V rest,
                                         int center, KB_V *mean2, KB_V *m2x2) {
    if (center) {
        KB_V a = kb_sub(h0, shift), b = kb_sub(h1, shift);
        KB_V pair = kb_add(a, b), d = kb_sub(a, b);
        KB_V delta = kb_sub(pair, *mean2);
        *mean2 = kb_fma(delta, inverse, *mean2);
        *m2x2 = kb_fma(delta, kb_mul(delta, rest), kb_fma(d, d, *m2x2));
    } else {
        *mean2 = kb_fma(h1, h1, *mean2);
        *m2x2 = kb_fma(h0, h0, *m2x2);
    }
}

/* A stream's (twice mean, twice m2) as (mean, m2), or its two sums of squares as one. */
KB_INLINE void KB_NAME(kb_welford2_finish)(KB_V *mean2, KB_V *m2x2, int center) {
    if (center) {
        *mean2 = kb_mul(*mean2, kb_set1((KB_C)0.5));
        *m2x2 = kb_mul(*m2x2, kb_set1((KB_C)0.5));
    } else {
        *m2x2 = kb_add(*m2x2, *mean2);
    }
}

/* Float64 accumulators of one strip of KB_LANES columns. */
typedef struct {
    double mean[KB_LANES], m2[KB_LANES];
} KB_NAME(kb_col_acc);

static void KB_NAME(kb_col_acc_store)(const KB_NAME(kb_col_acc) *acc, size_t width, int center,
                                      double *mean_out, double *m2_out) {
    for (size_t lane = 0; lane < width && lane < KB_LANES; ++lane) {
        mean_out[lane] = center ? acc->mean[lane] : 0.0;
        m2_out[lane] = acc->m2[lane];
    }
}

/* One strip of up to KB_LANES columns (`width` of them), one Welford stream down the rows,
 * two rows per step in blocks of up to KB_BLOCK rows, as kb_col_strips below. */
static void KB_NAME(kb_col_strip)(const KB_T *x, size_t rows, size_t row_stride,
                                  const KB_T *shift_row, int center, size_t width,
                                  double *mean_out, double *m2_out) {
    int full = width >= KB_LANES;
    KB_V shift_v = kb_set1(0);
    if (center) shift_v = full ? kb_load(shift_row) : kb_load_n(shift_row, width);
    KB_NAME(kb_col_acc) acc = {{0}, {0}};
#define KB_ROW(r) (full ? kb_load(x + (r) * row_stride) : kb_load_n(x + (r) * row_stride, width))
    size_t r0 = 0;
    while (rows - r0 >= 2) {
        size_t block = (rows - r0 < KB_BLOCK ? rows - r0 : KB_BLOCK) & ~(size_t)1;
        KB_V mean, m2;
        KB_NAME(kb_welford2_first)(KB_ROW(r0), KB_ROW(r0 + 1), shift_v, center, &mean, &m2);
        for (size_t k = 2; k <= block / 2; ++k) {
            size_t r = r0 + 2 * (k - 1);
            KB_NAME(kb_welford2_step)(KB_ROW(r), KB_ROW(r + 1), shift_v,
                                      kb_set1(kb_inverse[k]),
                                      kb_set1(kb_rest[k]), center, &mean, &m2);
        }
        KB_NAME(kb_welford2_finish)(&mean, &m2, center);
        KB_NAME(kb_merge_partial)(acc.mean, acc.m2, (double)r0, mean, m2, (double)block, center);
        r0 += block;
    }
    if (r0 < rows) { /* an odd last row: a partial of one value per lane */
        KB_V mean, m2;
        KB_NAME(kb_welford_one)(KB_ROW(r0), shift_v, center, &mean, &m2);
        KB_NAME(kb_merge_partial)(acc.mean, acc.m2, (double)r0, mean, m2, 1.0, center);
    }
#undef KB_ROW
    KB_NAME(kb_col_acc_store)(&acc, width, center, mean_out, m2_out);
}

/* With `prefetch` (an input past the cache, col_stats), each step asks for its two rows'
 * data this many bytes on: the hardware prefetcher alone kept one thread's reads at about
 * 21 GB/s here.  Zen 5, in-process A/B, float32, 1 thread, time per call, kb_col_rows:
 * `moments` (100352, 64) 0.66-0.85 (2 threads 0.64), channels-last GroupNorm (32, 64, 56,
 * 56) 0.75-0.90 (2 threads 0.79), BatchNorm training (32, 64, 56, 56) channels-last
 * 0.84-0.96 (2 threads 0.90); AVX2 there 0.73-0.92; 4 KB on 0.82-0.85, 16 KB 0.79-0.87.
 * kb_col_strips: `moments` (401408, 32) 0.57-0.60, (401408, 48) 0.78, BatchNorm training
 * channels-last (64, 3, 224, 224) 0.90-0.91 (AVX2 and AVX-512).  Inputs the
 * cache holds lost (`moments` (3136, 64) 1.20, (32768, 64), 8 MB, 1.15), hence the flag;
 * float64, twice the arithmetic per byte, took 1.11x the time with it (thirty-third
 * session), so float32 alone reads ahead. */
#define KB_COL_PREFETCH_BYTES 8192

/* `strips` (2 to 4, a constant at each call) full strips side by side, up to 4 * KB_LANES
 * adjacent columns, one pass down the rows reading the adjacent vectors of each: the
 * dependency chains overlap and the reads are sequential.  Four strips against strip by
 * strip (AVX2, Zen 3, interleaved in one process): channels-last BatchNorm statistics 0.55x
 * the time with 64 channels, 0.60x with 256.  The last two or three strips of a row in one
 * pass too (AVX-512, Zen 4, in-process A/B): float32 statistics of 6272 rows of 32 and 48
 * columns 0.73-0.81x and 0.65-0.69x the time, channels-last BatchNorm training of
 * (64, 3, 224, 224) 0.75-0.78x; bfloat16 0.92-0.99x.  Each chain takes two rows per step, as
 * the row statistics do, in blocks of up to KB_BLOCK rows; an odd last row is merged on its
 * own.  The unused strips' code folds away for a constant `strips`; with the partials
 * merged through arrays instead of one statement per strip, the four strips took 1.19x the
 * time. */
KB_INLINE void KB_NAME(kb_col_strips)(const KB_T *x, size_t rows, size_t row_stride,
                                      const KB_T *shift_row, int center, int strips, int prefetch,
                                      double *mean_out, double *m2_out) {
    KB_V s0 = kb_set1(0), s1 = s0, s2 = s0, s3 = s0;
    if (center) {
        s0 = kb_load(shift_row);
        s1 = kb_load(shift_row + KB_LANES);
        if (strips > 2) s2 = kb_load(shift_row + 2 * KB_LANES);
        if (strips > 3) s3 = kb_load(shift_row + 3 * KB_LANES);
    }
    KB_NAME(kb_col_acc) acc[4] = {{{0}, {0}}, {{0}, {0}}, {{0}, {0}}, {{0}, {0}}};
    size_t r0 = 0;
#define KB_ROW2(s) kb_load(p + (s) * KB_LANES), kb_load(p + row_stride + (s) * KB_LANES)
    while (rows - r0 >= 2) {
        size_t block = (rows - r0 < KB_BLOCK ? rows - r0 : KB_BLOCK) & ~(size_t)1;
        const KB_T *p = x + r0 * row_stride;
        KB_V zero = kb_set1(0), mean0, mean1, mean2 = zero, mean3 = zero;
        KB_V m2_0, m2_1, m2_2 = zero, m2_3 = zero;
        KB_NAME(kb_welford2_first)(KB_ROW2(0), s0, center, &mean0, &m2_0);
        KB_NAME(kb_welford2_first)(KB_ROW2(1), s1, center, &mean1, &m2_1);
        if (strips > 2) KB_NAME(kb_welford2_first)(KB_ROW2(2), s2, center, &mean2, &m2_2);
        if (strips > 3) KB_NAME(kb_welford2_first)(KB_ROW2(3), s3, center, &mean3, &m2_3);
        for (size_t k = 2; k <= block / 2; ++k) {
            const KB_V inverse = kb_set1(kb_inverse[k]);
            const KB_V rest = kb_set1(kb_rest[k]);
            p += 2 * row_stride;
            if (prefetch)
                for (int s = 0; s < strips; ++s) {
                    __builtin_prefetch((const char *)(p + s * KB_LANES) + KB_COL_PREFETCH_BYTES,
                                       0, 3);
                    __builtin_prefetch((const char *)(p + row_stride + s * KB_LANES) +
                                           KB_COL_PREFETCH_BYTES, 0, 3);
                }
            KB_NAME(kb_welford2_step)(KB_ROW2(0), s0, inverse, rest, center, &mean0, &m2_0);
            KB_NAME(kb_welford2_step)(KB_ROW2(1), s1, inverse, rest, center, &mean1, &m2_1);
            if (strips > 2)
                KB_NAME(kb_welford2_step)(KB_ROW2(2), s2, inverse, rest, center, &mean2, &m2_2);
            if (strips > 3)
                KB_NAME(kb_welford2_step)(KB_ROW2(3), s3, inverse, rest, center, &mean3, &m2_3);
        }
#define KB_STRIP_END(s, mean_v, m2_v)                                                            \
    do {                                                                                         \
        KB_NAME(kb_welford2_finish)(&mean_v, &m2_v, center);                                     \
        KB_NAME(kb_merge_partial)(acc[s].mean, acc[s].m2, (double)r0, mean_v, m2_v,              \
                                  (double)block, center);                                        \
    } while (0)
        KB_STRIP_END(0, mean0, m2_0);
        KB_STRIP_END(1, mean1, m2_1);
        if (strips > 2) KB_STRIP_END(2, mean2, m2_2);
        if (strips > 3) KB_STRIP_END(3, mean3, m2_3);
#undef KB_STRIP_END
        r0 += block;
    }
#undef KB_ROW2
    if (r0 < rows) { /* an odd last row: a partial of one value per lane */
        const KB_T *p = x + r0 * row_stride;
        const KB_V shifts[4] = {s0, s1, s2, s3};
        for (int strip = 0; strip < strips; ++strip) {
            KB_V mean, m2;
            KB_NAME(kb_welford_one)(kb_load(p + strip * KB_LANES), shifts[strip], center, &mean, &m2);
            KB_NAME(kb_merge_partial)(acc[strip].mean, acc[strip].m2, (double)r0, mean, m2, 1.0, center);
        }
    }
    for (int strip = 0; strip < strips; ++strip)
        KB_NAME(kb_col_acc_store)(&acc[strip], KB_LANES, center, mean_out + strip * KB_LANES,
                                  m2_out + strip * KB_LANES);
}

/* Columns j ... j + cols - 1 (whole vectors, at most KB_COL_GROUP of them) in row order:
 * each pair of rows updates every column's Welford stream, the streams kept in arrays in
 * L1 instead of registers, so that x is read in the order it lies in memory.  Per column
 * the same operations in the same order as kb_col_strips (blocks of KB_BLOCK rows, pairs,
 * float64 merges), so the same bits.  kb_col_strips reads each row a 128-byte strip at a
 * time, down a work item's rows, then the next strip: at NumPy's placement (16 bytes past a
 * line) each strip's loads touch three lines, and the strided stream starts cold in every
 * work item.  Zen 3, AVX2, float32, in-process A/B (benchmarks/ab_builds.py), 1 thread,
 * time per call: `moments` (1568, 256) 0.80-0.85x, (392, 1024) 0.79x, (98, 2048) 0.70x,
 * (3136, 64) 0.85-0.98x, (100352, 64) 1.00x; BatchNorm training channels-last (1568, 256)
 * 0.89-0.92x (2 threads 0.91x), (3136, 64) 0.91-0.93x; float64 (1568, 256) `moments`
 * 0.75x (docs/optimisations.md).
 * From C on one call's rows at NumPy's placement (best of 30): (1568, 256) 59-67 -> 46 us.
 * Narrower rows keep the strips, whose streams stay in registers: in L2, 16 and 32 columns
 * took 1.3-1.5x the strips' time this way, 48 and 64 about the same.  So do rows of at most
 * four vectors, which one pass of the strips covers: AVX-512 float32 rows of 64 columns by
 * the strips, Zen 5, in-process A/B, 1 thread: `moments` (3136, 64) 0.77-0.79, (32768, 64)
 * 0.80-0.81, BatchNorm training channels-last (1, 64, 56, 56) 0.90-0.91; eight vectors
 * did not gain (AVX2 float32 (3136, 64) 0.98-1.02, AVX-512 (1568, 128) 0.99, float64
 * 1.21-1.26).  Half dtypes too: widening their loads bounds them, not the reads (1.02-1.04x
 * this way). */
#define KB_COL_GROUP 512
#define KB_COL_ROWS_MIN 64
KB_INLINE void KB_NAME(kb_col_rows)(const KB_T *x, size_t rows, size_t row_stride,
                                    const KB_T *shift_row, int center, int prefetch, size_t cols,
                                    double *mean_out, double *m2_out) {
    _Alignas(64) KB_C mean2[KB_COL_GROUP], m2x2[KB_COL_GROUP];
    _Alignas(64) double acc_mean[KB_COL_GROUP], acc_m2[KB_COL_GROUP];
    _Alignas(64) KB_C shifts[KB_COL_GROUP]; /* on a line: x's first row, where NumPy puts
                                             * it, splits every other load */
    const KB_V zero = kb_set1(0);
    for (size_t j = 0; center && j < cols; j += KB_LANES) {
        KB_V v = kb_load(shift_row + j);
        memcpy(shifts + j, &v, sizeof v);
    }
#define KB_SHIFT(j) (center ? kb_param(shifts + (j)) : zero)
    size_t r0 = 0;
    while (rows - r0 >= 2) {
        size_t block = (rows - r0 < KB_BLOCK ? rows - r0 : KB_BLOCK) & ~(size_t)1;
        const KB_T *p = x + r0 * row_stride;
        for (size_t j = 0; j < cols; j += KB_LANES) {
            KB_V mean, m2;
            KB_NAME(kb_welford2_first)(kb_load(p + j), kb_load(p + row_stride + j), KB_SHIFT(j),
                                       center, &mean, &m2);
            memcpy(mean2 + j, &mean, sizeof mean);
            memcpy(m2x2 + j, &m2, sizeof m2);
        }
        for (size_t k = 2; k <= block / 2; ++k) {
            const KB_V inverse = kb_set1(kb_inverse[k]), rest = kb_set1(kb_rest[k]);
            p += 2 * row_stride;
            for (size_t j = 0; j < cols; j += KB_LANES) {
                if (prefetch) {
                    __builtin_prefetch((const char *)(p + j) + KB_COL_PREFETCH_BYTES, 0, 3);
                    __builtin_prefetch((const char *)(p + row_stride + j) + KB_COL_PREFETCH_BYTES,
                                       0, 3);
                }
                KB_V mean = kb_param(mean2 + j), m2 = kb_param(m2x2 + j);
                KB_NAME(kb_welford2_step)(kb_load(p + j), kb_load(p + row_stride + j),
                                          KB_SHIFT(j), inverse, rest, center, &mean, &m2);
                memcpy(mean2 + j, &mean, sizeof mean);
                memcpy(m2x2 + j, &m2, sizeof m2);
            }
        }
        for (size_t j = 0; j < cols; j += KB_LANES) {
            KB_V mean = kb_param(mean2 + j), m2 = kb_param(m2x2 + j);
            KB_NAME(kb_welford2_finish)(&mean, &m2, center);
            KB_NAME(kb_merge_partial)(acc_mean + j, acc_m2 + j, (double)r0, mean, m2,
                                      (double)block, center);
        }
        r0 += block;
    }
    if (r0 < rows) { /* an odd last row: a partial of one value per lane */
        const KB_T *p = x + r0 * row_stride;
        for (size_t j = 0; j < cols; j += KB_LANES) {
            KB_V mean, m2;
            KB_NAME(kb_welford_one)(kb_load(p + j), KB_SHIFT(j), center, &mean, &m2);
            KB_NAME(kb_merge_partial)(acc_mean + j, acc_m2 + j, (double)r0, mean, m2, 1.0, center);
        }
    }
#undef KB_SHIFT
    for (size_t j = 0; j < cols; ++j) {
        mean_out[j] = center ? acc_mean[j] : 0.0;
        m2_out[j] = acc_m2[j];
    }
}

static void KB_NAME(col_stats)(const void *x, size_t rows, size_t cols, size_t row_stride,
                               const void *shift_row, int center, int prefetch,
                               double *mean_shifted, double *m2) {
    const KB_T *xs = (const KB_T *)x, *shift = (const KB_T *)shift_row;
    size_t j = 0;
    prefetch = prefetch && sizeof(KB_T) == 4; /* float32 (kb_col_rows, KB_COL_PREFETCH_BYTES) */
    if (KB_LANES > 1 && sizeof(KB_T) == sizeof(KB_C) && rows >= 2)
        while (cols - j >= KB_COL_ROWS_MIN && cols - j > 4 * KB_LANES) { /* wide rows in row
                                                                           * order (kb_col_rows) */
            size_t group = (cols - j) / KB_LANES * KB_LANES;
            if (group > KB_COL_GROUP) group = KB_COL_GROUP;
            /* constant flags at each call: one loop per variant */
#define KB_COL_ROWS(c, f)                                                                     \
    KB_NAME(kb_col_rows)(xs + j, rows, row_stride, (c) ? shift + j : NULL, c, f, group,        \
                         mean_shifted + j, m2 + j)
            if (center && prefetch) KB_COL_ROWS(1, 1);
            else if (center) KB_COL_ROWS(1, 0);
            else if (prefetch) KB_COL_ROWS(0, 1);
            else KB_COL_ROWS(0, 0);
#undef KB_COL_ROWS
            j += group;
        }
    /* constant flags and strip counts: one loop per variant, registers allocated for it alone */
#define KB_STRIPS(n)                                                                               \
    do {                                                                                           \
        if (center)                                                                                \
            KB_NAME(kb_col_strips)(xs + j, rows, row_stride, shift + j, 1, n, prefetch,            \
                                   mean_shifted + j, m2 + j);                                      \
        else                                                                                       \
            KB_NAME(kb_col_strips)(xs + j, rows, row_stride, NULL, 0, n, prefetch, mean_shifted + j, \
                                   m2 + j);                                                        \
        j += (n) * KB_LANES;                                                                       \
    } while (0)
    while (j + 4 * KB_LANES <= cols) KB_STRIPS(4);
    /* the last two or three full strips; a last full strip alone and the narrow one by
     * kb_col_strip, whose single chain ran in 0.84x the time of kb_col_strips's (float32,
     * 6272 rows of 16 columns) */
    switch ((cols - j) / KB_LANES) {
    case 3: KB_STRIPS(3); break;
    case 2: KB_STRIPS(2); break;
    }
#undef KB_STRIPS
    for (; j < cols; j += KB_LANES) {
        size_t width = cols - j < KB_LANES ? cols - j : KB_LANES;
        KB_NAME(kb_col_strip)(xs + j, rows, row_stride, center ? shift + j : NULL, center, width,
                              mean_shifted + j, m2 + j);
    }
}

/* ---- column normalize ------------------------------------------------------------ */

/* One vector of row r's normalize pass at column j; `left` < KB_LANES: a masked tail.
 * mean_lo may be NULL when the caller folded the mean's low part into col_shift. */
KB_INLINE void KB_NAME(kb_col_normalize_vector)(const KB_T *xr, KB_T *yr, size_t j, size_t left,
                                                const KB_C *mean_hi, const KB_C *mean_lo,
                                                const KB_C *scale, const KB_C *col_shift,
                                                KB_V weight, KB_V bias, int center,
                                                int has_row_weight, int has_row_bias,
                                                int has_col_shift, int stream) {
    int full = left >= KB_LANES;
    KB_V h = full ? kb_load(xr + j) : kb_load_n(xr + j, left);
    if (center) {
        KB_V hi = full ? kb_param(mean_hi + j) : kb_param_n(mean_hi + j, left);
        h = kb_sub(h, hi);
        if (mean_lo) h = kb_sub(h, full ? kb_param(mean_lo + j) : kb_param_n(mean_lo + j, left));
    }
    KB_V sc = full ? kb_param(scale + j) : kb_param_n(scale + j, left);
    KB_V add = bias;
    if (has_col_shift) {
        KB_V cs = full ? kb_param(col_shift + j) : kb_param_n(col_shift + j, left);
        add = has_row_bias ? kb_add(bias, cs) : cs;
    }
    KB_V out = has_row_weight ? kb_fma(kb_mul(h, sc), weight, add) : kb_fma(h, sc, add);
    KB_NAME(kb_put)(yr + j, out, left, stream);
}

/* Rows of `vectors` (1 to KB_COL_HELD_MAX, a constant at each call) whole vectors whose
 * columns' parameters stay in registers for all the rows (or, past the register file,
 * where the compiler spills them: still one parameter stream, not one a row): the only
 * loads are x's, where the loops below load two or three parameters with each vector of x.
 * The same operations, the same bits.  Up to 16 vectors, not 4 (Zen 5, in-process A/B,
 * BatchNorm eval channels-last, 1 thread, time per call): AVX-512 float64 (100352, 64)
 * 0.83-0.85 (2 threads 0.95-1.00), (50176, 128) 0.82, float32 (25088, 256) 0.92, (1568, 256) 0.96,
 * training float64 (100352, 64) 0.92; AVX2 float32 (100352, 64) 0.77, (50176, 128) 0.75,
 * float64 (100352, 32) 0.75, in cache (3136, 64) 0.91, (1568, 128) 0.98. */
#define KB_COL_HELD_MAX 16
/* Plain stores ask for each line of y about this many bytes of rows ahead (a read prefetch, as
 * kb_prefetch_store's, kernel_row_normalize.h), so that the line is on its way before the
 * row's stores reach it (perf had put 68% of the loop's samples behind one load-and-store
 * group).  Emerald Rapids Xeon, in-process A/B, float32, 1 thread, time per call, each order
 * of the builds, four pairs: channels-last BatchNorm training (3136, 64) 0.81 / 0.92, 0.93 /
 * 0.99, 0.98 / 1.01, 0.96 / 0.97; GroupNorm channels-last (1, 64, 56, 56) 0.80 / 0.91, 0.95 /
 * 0.97; BatchNorm eval (3136, 64) 0.89 / 0.84 in the last pair, 0.96-1.02 in the others (one
 * outlier 1.23); 2 threads, (1568, 256), float64, bfloat16 and (3211264, 3) level (0.96-1.04).
 * Earlier pairs of the same hint: 512 bytes on 0.95-1.00, 2048 0.90-1.00; reading x ahead as
 * well no better.  Not in the AMD tuning (fastnorm_store_hints, kernel_row_normalize.h):
 * Zen 4, in-process A/B, both orders, without over with: channels-last BatchNorm eval (3136,
 * 64) 0.91 / 0.92 (2 threads 0.99), (392, 256) 0.97 / 1.00, training (3136, 64) 0.94 / 0.95,
 * GroupNorm channels-last (1, 64, 56, 56) 0.95 / 0.95. */
#define KB_COL_STORE_AHEAD 1024
KB_INLINE void KB_NAME(kb_col_normalize_held)(const KB_T *x, size_t rows, size_t row_stride,
                                              const KB_C *mean_hi, const KB_C *scale,
                                              const KB_C *col_shift, KB_T *y, int center,
                                              int vectors, int stream) {
    KB_V hi[KB_COL_HELD_MAX], sc[KB_COL_HELD_MAX], cs[KB_COL_HELD_MAX];
    for (int v = 0; v < vectors; ++v) {
        hi[v] = center ? kb_param(mean_hi + v * KB_LANES) : kb_set1(0);
        sc[v] = kb_param(scale + v * KB_LANES);
        cs[v] = kb_param(col_shift + v * KB_LANES);
    }
    /* the same columns a whole number of rows on (past the last row: harmless hints) */
    size_t row_bytes = row_stride * sizeof(KB_T);
    size_t ahead_rows = row_bytes ? KB_COL_STORE_AHEAD / row_bytes : 0;
    size_t ahead = (ahead_rows ? ahead_rows : 1) * row_bytes;
    const int vector_bytes = (int)(KB_LANES * sizeof(KB_T));
    const int per_line = vector_bytes < 64 ? 64 / vector_bytes : 1; /* vectors a cache line */
    for (size_t r = 0; r < rows; ++r) {
        const KB_T *xr = x + r * row_stride;
        KB_T *yr = y + r * row_stride;
        if (!stream && fastnorm_store_hints)
            for (int v = 0; v < vectors; v += per_line)
                __builtin_prefetch((const char *)(yr + v * KB_LANES) + ahead, 0, 3);
        for (int v = 0; v < vectors; ++v) {
            KB_V h = kb_load(xr + v * KB_LANES);
            if (center) h = kb_sub(h, hi[v]);
            KB_NAME(kb_put)(yr + v * KB_LANES, kb_fma(h, sc[v], cs[v]), KB_LANES, stream);
        }
    }
}

/* Four rows of the per-column form y = (x - mean) * scale + shift, each vector's
 * parameters loaded once for the four: a vector of y otherwise costs two or three parameter
 * loads beside its one load of x, and the loads bound the loop for rows past
 * kb_col_normalize_held's.  The same operations, the same bits.  Measured
 * (AVX2, Zen 3, benchmarks/ab_builds.py, 1 thread, three runs): BatchNorm eval
 * channels-last (3136, 64) float32 0.61-0.86x the time, (1568, 256) 0.87-0.92x,
 * (802816, 3) 0.72x; training and float64 within the noise (0.97-1.05x). */
KB_INLINE void KB_NAME(kb_col_normalize_four)(const KB_T *x, size_t cols, size_t row_stride,
                                              const KB_C *mean_hi, const KB_C *mean_lo,
                                              const KB_C *scale, const KB_C *col_shift, KB_T *y,
                                              int center, int stream) {
    for (size_t j = 0; j < cols; j += KB_LANES) {
        KB_V hi = center ? kb_param(mean_hi + j) : kb_set1(0);
        KB_V lo = center && mean_lo ? kb_param(mean_lo + j) : kb_set1(0);
        KB_V sc = kb_param(scale + j), cs = kb_param(col_shift + j);
        KB_V h0 = kb_load(x + j), h1 = kb_load(x + row_stride + j);
        KB_V h2 = kb_load(x + 2 * row_stride + j), h3 = kb_load(x + 3 * row_stride + j);
        if (center) {
            h0 = kb_sub(h0, hi); h1 = kb_sub(h1, hi); h2 = kb_sub(h2, hi); h3 = kb_sub(h3, hi);
            if (mean_lo) {
                h0 = kb_sub(h0, lo); h1 = kb_sub(h1, lo); h2 = kb_sub(h2, lo); h3 = kb_sub(h3, lo);
            }
        }
        if (!stream) /* (kernel_row_normalize.h, KB_STORE_AHEAD; kb_col_normalize_impl) */
            for (int row = 0; row < 4; ++row)
                KB_NAME(kb_prefetch_store)(y + row * row_stride + j, KB_LANES);
        KB_NAME(kb_put)(y + j, kb_fma(h0, sc, cs), KB_LANES, stream);
        KB_NAME(kb_put)(y + row_stride + j, kb_fma(h1, sc, cs), KB_LANES, stream);
        KB_NAME(kb_put)(y + 2 * row_stride + j, kb_fma(h2, sc, cs), KB_LANES, stream);
        KB_NAME(kb_put)(y + 3 * row_stride + j, kb_fma(h3, sc, cs), KB_LANES, stream);
    }
}

KB_INLINE void KB_NAME(kb_col_normalize_impl)(const KB_T *x, size_t rows, size_t cols,
                                              size_t row_stride, const KB_C *mean_hi,
                                              const KB_C *mean_lo, const KB_C *scale,
                                              const KB_C *row_weight, const KB_C *row_bias,
                                              const KB_C *col_shift, KB_T *y, int center,
                                              int has_row_weight, int has_row_bias,
                                              int has_col_shift, int stream) {
    /* stream only when every row starts aligned (the stride keeps the alignment) */
    stream = stream && KB_NAME(kb_stream_head)(y, cols) == 0 &&
             (row_stride * sizeof(KB_T)) % (KB_LANES * sizeof(KB_T)) == 0;
    if (!mean_lo && !has_row_weight && !has_row_bias && has_col_shift && cols % KB_LANES == 0) {
        switch (cols / KB_LANES) {
#define KB_HELD(v)                                                                             \
    case v:                                                                                    \
        KB_NAME(kb_col_normalize_held)(x, rows, row_stride, mean_hi, scale, col_shift, y, center, \
                                       v, stream);                                             \
        return;
            KB_HELD(1) KB_HELD(2) KB_HELD(3) KB_HELD(4) KB_HELD(5) KB_HELD(6) KB_HELD(7) KB_HELD(8)
            KB_HELD(9) KB_HELD(10) KB_HELD(11) KB_HELD(12) KB_HELD(13) KB_HELD(14) KB_HELD(15)
            KB_HELD(16)
#undef KB_HELD
        }
    }
    size_t r = 0;
    if (!has_row_weight && !has_row_bias && has_col_shift && cols % KB_LANES == 0)
        for (; r + 4 <= rows; r += 4)
            KB_NAME(kb_col_normalize_four)(x + r * row_stride, cols, row_stride, mean_hi, mean_lo,
                                           scale, col_shift, y + r * row_stride, center, stream);
    for (; r < rows; ++r) {
        const KB_T *xr = x + r * row_stride;
        KB_T *yr = y + r * row_stride;
        const KB_V weight = kb_set1(has_row_weight ? row_weight[r] : (KB_C)1);
        const KB_V bias = kb_set1(has_row_bias ? row_bias[r] : (KB_C)0);
        size_t j = 0;
        /* plain stores ask for their lines ahead, here and in kb_col_normalize_four
         * (kernel_row_normalize.h, KB_STORE_AHEAD): in-process A/B, each order of the
         * builds, float32, 1 thread, channels-last BatchNorm eval (784, 512) 0.95 / 0.98,
         * training 0.95 / 0.96, LayerNorm over channels (8, 768, 14, 14) 0.83 / 0.88 */
        for (; j + KB_LANES <= cols; j += KB_LANES) {
            if (!stream) KB_NAME(kb_prefetch_store)(yr + j, KB_LANES);
            KB_NAME(kb_col_normalize_vector)(xr, yr, j, KB_LANES, mean_hi, mean_lo, scale,
                                             col_shift, weight, bias, center, has_row_weight,
                                             has_row_bias, has_col_shift, stream);
        }
        if (j < cols)
            KB_NAME(kb_col_normalize_vector)(xr, yr, j, cols - j, mean_hi, mean_lo, scale,
                                             col_shift, weight, bias, center, has_row_weight,
                                             has_row_bias, has_col_shift, 0);
    }
}

static void KB_NAME(col_normalize)(const void *x, size_t rows, size_t cols, size_t row_stride,
                                   const void *mean_hi, const void *mean_lo, const void *scale,
                                   const void *row_weight, const void *row_bias,
                                   const void *col_shift, void *y, int stream) {
    const KB_T *xs = (const KB_T *)x;
    const KB_C *hi = (const KB_C *)mean_hi, *lo = (const KB_C *)mean_lo, *sc = (const KB_C *)scale;
    const KB_C *rw = (const KB_C *)row_weight, *rb = (const KB_C *)row_bias;
    const KB_C *cs = (const KB_C *)col_shift;
    KB_T *ys = (KB_T *)y;
    int flags = (hi ? 8 : 0) | (rw ? 4 : 0) | (rb ? 2 : 0) | (cs ? 1 : 0);
#define KB_CASE(f)                                                                            \
    case f:                                                                                   \
        KB_NAME(kb_col_normalize_impl)(xs, rows, cols, row_stride, hi, lo, sc, rw, rb, cs, ys, \
                                       (f) & 8, (f) & 4, (f) & 2, (f) & 1, stream);           \
        break;
    switch (flags) {
        KB_CASE(0) KB_CASE(1) KB_CASE(2) KB_CASE(3) KB_CASE(4) KB_CASE(5) KB_CASE(6) KB_CASE(7)
        KB_CASE(8) KB_CASE(9) KB_CASE(10) KB_CASE(11) KB_CASE(12) KB_CASE(13) KB_CASE(14)
        KB_CASE(15)
    }
#undef KB_CASE
}
