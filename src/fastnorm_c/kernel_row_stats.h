/*
 * kernel_row_stats.h - part of kernel_body.h (which includes it once per dtype, with its
 * KB_* names defined): row_stats, a span's mean and m2 (or sum of squares).
 */

/* ---- row statistics ---------------------------------------------------------------- */

KB_INLINE KB_V KB_NAME(kb_load_h)(const KB_T *x, const KB_T *residual, KB_T *residual_out,
                                  size_t i, int has_residual, int has_residual_out) {
    KB_V h = kb_load(x + i);
    if (has_residual) {
        h = kb_round(kb_add(h, kb_load(residual + i)));
        if (has_residual_out) kb_store(residual_out + i, h);
    }
    return h;
}

/* kb_load_h of the `count` (< KB_LANES) elements from i, the other lanes zero. */
KB_INLINE KB_V KB_NAME(kb_load_h_n)(const KB_T *x, const KB_T *residual, KB_T *residual_out,
                                    size_t i, size_t count, int has_residual,
                                    int has_residual_out) {
    KB_V h = kb_load_n(x + i, count);
    if (has_residual) {
        h = kb_round(kb_add(h, kb_load_n(residual + i, count)));
        if (has_residual_out) kb_store_n(residual_out + i, h, count);
    }
    return h;
}

/* The statistics' pair of h vectors at element i, in the family's own order where it has one
 * (KB_UNORDERED2), with h stored back in order: AVX-512 bfloat16 widens one 64-byte load by
 * two unpacks (a 768-value LayerNorm row's statistics in L1 255 -> 224 cycles, 4096 values
 * 1108 -> 920, kernel_cycles.c), AVX2 one 32-byte load by a shift and an AND (simd_avx2.h). */
KB_INLINE void KB_NAME(kb_load_h2)(const KB_T *x, const KB_T *residual, KB_T *residual_out,
                                   size_t i, int has_residual, int has_residual_out, KB_V *a,
                                   KB_V *b) {
#ifdef KB_UNORDERED2
    kb_load2_unordered(x + i, a, b);
    if (has_residual) {
        KB_V ra, rb;
        kb_load2_unordered(residual + i, &ra, &rb);
        *a = kb_round(kb_add(*a, ra));
        *b = kb_round(kb_add(*b, rb));
        if (has_residual_out) kb_store2_unordered(residual_out + i, *a, *b);
    }
#else
    *a = KB_NAME(kb_load_h)(x, residual, residual_out, i, has_residual, has_residual_out);
    *b = KB_NAME(kb_load_h)(x, residual, residual_out, i + KB_LANES, has_residual,
                            has_residual_out);
#endif
}

/* KB_SQUARES_FMA's raw sums (kernel_body.h's kb_squares, kb_values): acc plus the
 * squares, or the values, of a pair of vectors, those at p or (a, b), widened from
 * float16, the same lanes either way.  A float16 square has at most 22 significant bits,
 * exact in float32; one addition into acc a pair, so that the four streams' chains stay
 * short. */
#ifdef KB_SQUARES_FMA
KB_INLINE KB_V KB_NAME(kb_fma_squares2)(KB_V acc, KB_V a, KB_V b) {
    return kb_add(acc, kb_fma(b, b, kb_mul(a, a)));
}
KB_INLINE KB_V KB_NAME(kb_fma_squares)(KB_V acc, const KB_T *p) {
    return KB_NAME(kb_fma_squares2)(acc, kb_load(p), kb_load(p + KB_LANES));
}
KB_INLINE KB_V KB_NAME(kb_fma_values2)(KB_V acc, KB_V a, KB_V b) {
    return kb_add(acc, kb_add(a, b));
}
KB_INLINE KB_V KB_NAME(kb_fma_values)(KB_V acc, const KB_T *p) {
    return KB_NAME(kb_fma_values2)(acc, kb_load(p), kb_load(p + KB_LANES));
}
#endif

/* Sums about a center, a LayerNorm row's statistics (kb_row_stats_impl): every stream and
 * every lane shares one center c, a value near the data (the mean of the row's first step,
 * then its running mean), and keeps sum = sum(h - c) and squares = sum((h - c)^2), so that
 * m2 = squares - sum^2 / k.  Near the data h - c is exact (Sterbenz), and the center stays
 * within the data's spread, so the subtraction in m2 cancels little.  Seven operations a
 * pair, four on the adders and three on the FMA pipes (sum's FMA by one), against Welford's
 * nine, five of them additions.  The pair's squares join the sum as one, which halves the
 * roundings of a growing sum (stats_error.c's worst m2 error, offset 1e4, 4096 values, when
 * each lane had its own center: 7.2e-8 in AVX-512 and 6.6e-8 in AVX2, against Welford's
 * 1.2e-7; one FMA chain of single squares took 15% fewer cycles but gave 1.2e-7 and 2.0e-7
 * at 768 values).  One center for all lanes lets the lanes' sums simply add up at the end
 * (kb_sums_merge); the same worst errors are then 7.5e-8 and 9.2e-8. */
KB_INLINE void KB_NAME(kb_sums_step)(KB_V h0, KB_V h1, KB_V center, KB_V one, KB_V *sum,
                                     KB_V *squares) {
    KB_V d0 = kb_sub(h0, center), d1 = kb_sub(h1, center);
    *sum = kb_fma(kb_add(d0, d1), one, *sum);
    *squares = kb_add(*squares, kb_fma(d1, d1, kb_mul(d0, d0)));
}

/* Move the center to `moved`, and sum and squares with it (exactly in real numbers), so
 * that later values are summed about their running mean: count values per lane so far.
 * The move is exact near the mean, so sum keeps what the rounded center left over. */
KB_INLINE void KB_NAME(kb_sums_recenter)(KB_V *center, KB_V moved, KB_V *sum, KB_V *squares,
                                         KB_V count) {
    KB_V back = kb_sub(*center, moved); /* the center's move, negated; exact near the mean */
    KB_V rest = kb_fma(count, back, *sum);
    *squares = kb_fma(back, kb_add(*sum, rest), *squares);
    *sum = rest;
    *center = moved;
}

/* The four streams' sums (about the same center) into the first, the others zeroed. */
KB_INLINE void KB_NAME(kb_sums_gather)(KB_V *s0, KB_V *q0, KB_V *s1, KB_V *q1, KB_V *s2, KB_V *q2,
                                       KB_V *s3, KB_V *q3, KB_V zero) {
    *s0 = kb_add(kb_add(*s0, *s1), kb_add(*s2, *s3));
    *q0 = kb_add(kb_add(*q0, *q1), kb_add(*q2, *q3));
    *s1 = *s2 = *s3 = *q1 = *q2 = *q3 = zero;
}

/* The first `count` lanes of h into a partial's sums about center cv, or (!center) into its
 * sum of squares, where the other lanes are zero already. */
KB_INLINE void KB_NAME(kb_sums_add)(KB_V h, KB_V cv, size_t count, int center, KB_V *sum,
                                    KB_V *squares) {
    if (center) {
        h = kb_sub(h, cv);
        if (count < KB_LANES) h = kb_mask_n(h, count);
        *sum = kb_add(*sum, h);
    }
    *squares = kb_fma(h, h, *squares);
}

/* Sums about center c of `values` values, their lanes added in float64, merged into the
 * row's partial (count, mean less shift, m2) by Chan's formula. */
KB_INLINE void KB_NAME(kb_sums_merge)(KB_C c, KB_V sum, KB_V squares, double shift, double values,
                                      double *count, double *mean, double *m2) {
    double s = kb_sum(sum), above = s / values; /* the values' mean less c */
    kb_merge(count, mean, m2, values, ((double)c - shift) + above, kb_sum(squares) - s * above);
}

/* Another row's normalize pass, run a step at a time inside a statistics loop
 * (row_stats_normalize, below): its body's pairs from element i to end. */
typedef struct {
    const KB_T *x;
    const KB_C *weight, *bias;
    KB_T *y;
    size_t i, end;
    KB_V mean_hi, low, scale, beta;
} KB_NAME(kb_cursor);
KB_INLINE void KB_NAME(kb_cursor_run)(KB_NAME(kb_cursor) *cursor, size_t at, size_t count,
                                      int fused);
/* The cursor starts after this many statistics steps (kb_cursor_run), and the pairs it has
 * not reached by the loop's end run after it.  Its first pairs need the scale the caller has just
 * computed (a division and a square root in float64, about 50 cycles); started at once,
 * they held the statistics' first steps back.  In-process A/B against a start at step 0,
 * time per call, 1 thread, float32 / bfloat16: LayerNorm 512x768 0.91 / 0.94, 2048x384
 * 0.90 / 0.93, 512x1024 0.94 / 0.95; RMSNorm 512x768 0.97 / 0.94, 2048x384 0.87 / 0.81,
 * 64x768 0.98 / 0.88.  A lag of one step gained about half of that, three steps no more
 * than two, and no cursor at all lost (1.00-1.25x the time of two). */
#define KB_CURSOR_LAG 2

/* With `prefetch` (row_stats: an input past the cache whose rows no normalize pass
 * prefetches, api_norm.c), each statistics step asks for the lines this many bytes on in x
 * (and the residual): on one thread the hardware prefetcher alone left the loop waiting on
 * its loads (perf: half of bfloat16 LayerNorm 8192x4096's statistics samples on one load).
 * Zen 5, in-process A/B, 1 thread, time per call, AVX-512 / AVX2: LayerNorm 8192x4096
 * (rows in groups) bfloat16 0.68-0.80 / 0.78, float16 0.70, float32 0.96-0.98 / 0.82, 2
 * threads bfloat16 0.80-0.88; 16x1048576 (long rows) float32 0.90-0.91 / 0.93, RMSNorm
 * 0.93-0.99 / 0.94; bfloat16 32768x768 (rows a row ahead) 0.92-0.97.  4 KB on: 0.79 for
 * bfloat16 8192x4096, 16 KB 0.68.  Where the normalize pass prefetches the next row
 * (RMSNorm float32 32768x768) it lost 1.15, and in cache (128x4096) 1.02-1.11. */
#define KB_STATS_PREFETCH_BYTES 8192
KB_INLINE void KB_NAME(kb_stats_prefetch)(const KB_T *x, const KB_T *residual, size_t i,
                                          size_t bytes) {
    for (size_t line = 0; line < bytes; line += 64) {
        __builtin_prefetch((const char *)(x + i) + KB_STATS_PREFETCH_BYTES + line, 0, 3);
        if (residual)
            __builtin_prefetch((const char *)(residual + i) + KB_STATS_PREFETCH_BYTES + line, 0, 3);
    }
}

/* A LayerNorm row's first center (kb_row_stats_impl): the mean of its first step's values,
 * the pairs as that loop loads them.  row_stats_normalize takes it for the row after next
 * too (kb_step_center_of), a call early: a row's sums waited for its center, a horizontal
 * sum and a conversion at the head of its loop.  In-process A/B against the center taken
 * there, same bits, time per call, float32 LayerNorm, 1 thread: 128x384 0.89-0.91 (2
 * threads 0.91-0.95), without parameters 0.94; 64x768, 512x768, 1024x384, 256x256, 128x4096,
 * bfloat16 128x384, BatchNorm training and GroupNorm level (0.98-1.02). */
KB_INLINE KB_C KB_NAME(kb_step_center)(KB_V a0, KB_V b0, KB_V a1, KB_V b1, KB_V a2, KB_V b2,
                                       KB_V a3, KB_V b3) {
    return (KB_C)(kb_sum(kb_add(kb_add(kb_add(a0, b0), kb_add(a1, b1)),
                                kb_add(kb_add(a2, b2), kb_add(a3, b3)))) *
                  (1.0 / (2 * KB_STREAMS * KB_LANES)));
}

/* kb_step_center of the row at x (no residual), which has a whole step. */
KB_INLINE KB_C KB_NAME(kb_step_center_of)(const KB_T *x) {
    KB_V a0, b0, a1, b1, a2, b2, a3, b3;
    KB_NAME(kb_load_h2)(x, NULL, NULL, 0, 0, 0, &a0, &b0);
    KB_NAME(kb_load_h2)(x, NULL, NULL, 2 * KB_LANES, 0, 0, &a1, &b1);
    KB_NAME(kb_load_h2)(x, NULL, NULL, 4 * KB_LANES, 0, 0, &a2, &b2);
    KB_NAME(kb_load_h2)(x, NULL, NULL, 6 * KB_LANES, 0, 0, &a3, &b3);
    return KB_NAME(kb_step_center)(a0, b0, a1, b1, a2, b2, a3, b3);
}

/* fused: 0, or row_stats_normalize's flags for the cursor's pass, which then advances one
 * statistics step's worth of elements after every step from step KB_CURSOR_LAG on.
 * squares: the family's raw sums where it has them (KB_SQUARES: the values and their
 * squares about no center, which the caller must check, kb_dot_kept), else the sums about
 * a center (LayerNorm) or two FMA chains a stream (RMSNorm).  first_center: NULL, or the
 * row's kb_step_center, computed before. */
KB_INLINE void KB_NAME(kb_row_stats_impl)(const KB_T *x, const KB_T *residual, KB_T *residual_out,
                                          size_t n, double shift, int center, double *mean_shifted,
                                          double *m2_out, int has_residual, int has_residual_out,
                                          KB_NAME(kb_cursor) *cursor, int fused, int squares,
                                          int prefetch, const KB_C *first_center) {
    enum { STEP = 2 * KB_STREAMS * KB_LANES, PAIR_BLOCK = KB_BLOCK / 2 };
    prefetch = prefetch && KB_LANES > 1; /* the scalar family never prefetches */
#ifdef KB_SQUARES_FMA
    squares = squares && center; /* RMSNorm's two FMA chains a stream are faster here */
#endif
#define KB_PREFETCH_STEP()                                                                   \
    do {                                                                                     \
        if (prefetch) KB_NAME(kb_stats_prefetch)(x, residual, i, STEP * sizeof(KB_T));       \
    } while (0)
    size_t steps = n / STEP;
    double count = 0, mean = 0, m2 = 0; /* the values so far (LayerNorm: mean less shift) */
    size_t i = 0;
    /* Four named streams, not an array: indexed vector arrays end up on the stack. */
#define KB_H(s) KB_NAME(kb_load_h)(x, residual, residual_out, i + (s) * KB_LANES, has_residual, \
                                   has_residual_out)
#define KB_H2(s, a, b) KB_NAME(kb_load_h2)(x, residual, residual_out, i + (s) * KB_LANES, \
                                           has_residual, has_residual_out, &a, &b)
#define KB_PAIRS()                                                                           \
    do {                                                                                     \
        KB_H2(0, a0, b0);                                                                    \
        KB_H2(2, a1, b1);                                                                    \
        KB_H2(4, a2, b2);                                                                    \
        KB_H2(6, a3, b3);                                                                    \
    } while (0)
    /* blocks of PAIR_BLOCK steps: each stream lane takes KB_BLOCK values in float32 (the
     * dot product's LayerNorm sums half as many: kb_dot_kept) */
    KB_C c = 0; /* LayerNorm's center, kept from block to block */
#ifdef KB_SQUARES
    const size_t block_steps = squares && center ? PAIR_BLOCK / 2 : PAIR_BLOCK;
    double values_sum = 0; /* the dot product's LayerNorm sum of the values */
#else
    const size_t block_steps = PAIR_BLOCK;
#endif
    for (size_t step0 = 0; step0 < steps; step0 += block_steps) {
        size_t block = steps - step0 < block_steps ? steps - step0 : block_steps;
#ifdef KB_SQUARES
        /* one instruction per pair (32 bfloat16 values: no widening, two FMAs): RMSNorm
         * 512x768 bfloat16 0.80x the time, 768-value rows' statistics in L1 108 -> 50
         * cycles.  LayerNorm takes a second one for the values' sum, about no center
         * (the caller keeps these sums only where that cancels little: kb_dot_kept):
         * statistics in L1 (kernel_cycles.c, Zen 5) 768 values 134 -> 60 cycles, 4096
         * 460 -> 210; in-process A/B, time per call, 1 thread: LayerNorm bfloat16 512x768
         * 0.77-0.80, 4096x768 0.79, 128x4096 0.88-0.91, 32768x768 0.91 (memory-bound:
         * 0.98-1.02 when the VM's memory was slow), 8192x4096 1.00-1.05.  The residual's h
         * is packed back first, so its sums are the same as those of h read from memory
         * (the unfused call's).  float16 LayerNorm in the AVX-512 and AVX2 families sums
         * raw by FMAs (KB_SQUARES_FMA): in-process A/B, 1 thread, 512x768 0.80 / 0.84,
         * 128x4096 0.91 / 0.90, 32768x768 0.81 (with the streamed loop, stream_fused) /
         * 0.84; its RMSNorm lost 1.03-1.06 in cache that way and keeps its FMA chains
         * (KB_SQUARES_FMA, below). */
        if (squares) {
            KB_V s0 = kb_set1(0), s1 = s0, s2 = s0, s3 = s0, t0 = s0, t1 = s0, t2 = s0, t3 = s0;
            for (size_t k = 0; k < block; ++k, i += STEP) {
                KB_PREFETCH_STEP();
                if (has_residual) {
                    KB_V a0, b0, a1, b1, a2, b2, a3, b3;
                    a0 = KB_H(0), b0 = KB_H(1), a1 = KB_H(2), b1 = KB_H(3);
                    a2 = KB_H(4), b2 = KB_H(5), a3 = KB_H(6), b3 = KB_H(7);
                    s0 = kb_squares2(s0, a0, b0), s1 = kb_squares2(s1, a1, b1);
                    s2 = kb_squares2(s2, a2, b2), s3 = kb_squares2(s3, a3, b3);
                    if (center) {
                        t0 = kb_values2(t0, a0, b0), t1 = kb_values2(t1, a1, b1);
                        t2 = kb_values2(t2, a2, b2), t3 = kb_values2(t3, a3, b3);
                    }
                } else {
                    s0 = kb_squares(s0, x + i);
                    s1 = kb_squares(s1, x + i + 2 * KB_LANES);
                    s2 = kb_squares(s2, x + i + 4 * KB_LANES);
                    s3 = kb_squares(s3, x + i + 6 * KB_LANES);
                    if (center) {
                        t0 = kb_values(t0, x + i);
                        t1 = kb_values(t1, x + i + 2 * KB_LANES);
                        t2 = kb_values(t2, x + i + 4 * KB_LANES);
                        t3 = kb_values(t3, x + i + 6 * KB_LANES);
                    }
                }
                if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);
            }
            m2 += kb_sum(kb_add(kb_add(s0, s1), kb_add(s2, s3)));
            if (center) values_sum += kb_sum(kb_add(kb_add(t0, t1), kb_add(t2, t3)));
            continue;
        }
#endif
        KB_V a0, b0, a1, b1, a2, b2, a3, b3;
        KB_PAIRS();
        if (center) {
            const KB_V one = kb_set1(1), zero = kb_set1(0);
            if (step0 == 0) /* the center: the mean of the row's first step */
                c = first_center ? *first_center
                                 : KB_NAME(kb_step_center)(a0, b0, a1, b1, a2, b2, a3, b3);
            KB_V cv = kb_set1(c);
            KB_V s0 = zero, s1 = zero, s2 = zero, s3 = zero;
            KB_V q0 = zero, q1 = zero, q2 = zero, q3 = zero;
#define KB_SUMS_STEP()                                                                       \
    do {                                                                                     \
        KB_NAME(kb_sums_step)(a0, b0, cv, one, &s0, &q0);                                    \
        KB_NAME(kb_sums_step)(a1, b1, cv, one, &s1, &q1);                                    \
        KB_NAME(kb_sums_step)(a2, b2, cv, one, &s2, &q2);                                    \
        KB_NAME(kb_sums_step)(a3, b3, cv, one, &s3, &q3);                                    \
        if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);                           \
        i += STEP;                                                                           \
    } while (0)
            KB_SUMS_STEP();
            /* each step loads its pairs where it uses them: loaded at the end of the step
             * before, they stayed live across the loop's back edge, and AVX2's 16
             * registers spilled the sums (4096 values 1.25x Welford's cycles) */
            for (size_t k = 2; k <= block; ++k) {
                /* to lane 0's running mean, a value near the data: the lanes' float64 sum
                 * there put its latency in the chain, three times a 4096-value row (1.03-1.10x
                 * the time of LayerNorm 128x4096) */
                if (KB_RECENTER_AFTER(k - 1)) {
                    KB_NAME(kb_sums_gather)(&s0, &q0, &s1, &q1, &s2, &q2, &s3, &q3, zero);
                    KB_C moved = c + kb_first(s0) / (KB_C)(2 * KB_STREAMS * (k - 1));
                    KB_NAME(kb_sums_recenter)(&cv, kb_set1(moved), &s0, &q0,
                                              kb_set1((KB_C)(2 * KB_STREAMS * (k - 1))));
                    c = moved;
                }
                KB_PREFETCH_STEP();
                KB_PAIRS();
                KB_SUMS_STEP();
            }
#undef KB_SUMS_STEP
            KB_NAME(kb_sums_gather)(&s0, &q0, &s1, &q1, &s2, &q2, &s3, &q3, zero);
            KB_NAME(kb_sums_merge)(c, s0, q0, shift, (double)(block * STEP), &count, &mean, &m2);
        } else { /* RMSNorm: sums of squares, two FMA chains a stream */
            KB_V e0 = kb_mul(a0, a0), e1 = kb_mul(a1, a1), e2 = kb_mul(a2, a2), e3 = kb_mul(a3, a3);
            KB_V o0 = kb_mul(b0, b0), o1 = kb_mul(b1, b1), o2 = kb_mul(b2, b2), o3 = kb_mul(b3, b3);
            if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);
            i += STEP;
            for (size_t k = 2; k <= block; ++k, i += STEP) {
                KB_PREFETCH_STEP();
                KB_PAIRS();
                e0 = kb_fma(a0, a0, e0), e1 = kb_fma(a1, a1, e1);
                e2 = kb_fma(a2, a2, e2), e3 = kb_fma(a3, a3, e3);
                o0 = kb_fma(b0, b0, o0), o1 = kb_fma(b1, b1, o1);
                o2 = kb_fma(b2, b2, o2), o3 = kb_fma(b3, b3, o3);
                if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);
            }
            m2 += kb_sum(kb_add(kb_add(kb_add(e0, o0), kb_add(e1, o1)),
                                kb_add(kb_add(e2, o2), kb_add(e3, o3))));
        }
    }
#ifdef KB_SQUARES
    if (squares && center && steps) { /* the dot product's sums as the row's partial so far */
        double above = values_sum / (double)i; /* their mean */
        count = (double)i, mean = above - shift, m2 -= values_sum * above;
        c = (KB_C)above; /* the center of the rest */
    }
#endif
    /* whole vectors after the last step (fewer than 2 * KB_STREAMS) and the tail (fewer than
     * KB_LANES elements, read with the other lanes zero): one more partial, about the same
     * center (where the row has no whole step, the mean of the first of these vectors).  The
     * whole vectors used to join a float64 scalar tail, one long dependency chain
     * (kernel_cycles.c, float32, cycles per 8 values, 1000-value rows 3.56 -> 2.23, 1568
     * 2.54 -> 1.92, 784 3.04 -> 2.48); the tail was summed apart by a float64 two-pass
     * loop (in-process A/B, time per call: LayerNorm 64x100 0.86, 512x1000 0.94, RMSNorm
     * 64x100 0.75, BatchNorm training (8, 2048, 7, 7), then gathered into spans of 392
     * values that end in 8, 0.94). */
    size_t left = (n - i) / KB_LANES, tail = (n - i) % KB_LANES;
    if (left || tail) {
#define KB_TAIL()                                                                             \
    KB_NAME(kb_load_h_n)(x, residual, residual_out, i + left * KB_LANES, tail, has_residual,  \
                         has_residual_out)
        KB_V h = left ? KB_H(0) : KB_TAIL();
        if (center && !steps) c = (KB_C)(kb_sum(h) / (double)(left ? KB_LANES : tail));
        const KB_V cv = kb_set1(c);
        KB_V sum = kb_set1(0), squares = sum;
        for (size_t v = 0; v < left; ++v)
            KB_NAME(kb_sums_add)(v ? KB_H(v) : h, cv, KB_LANES, center, &sum, &squares);
        if (tail) KB_NAME(kb_sums_add)(left ? KB_TAIL() : h, cv, tail, center, &sum, &squares);
#undef KB_TAIL
        if (center)
            KB_NAME(kb_sums_merge)(c, sum, squares, shift, (double)(n - i), &count, &mean, &m2);
        else
            m2 += kb_sum(squares);
    }
#undef KB_PREFETCH_STEP
#undef KB_PAIRS
#undef KB_H2
#undef KB_H
    *mean_shifted = center ? mean : 0.0;
    *m2_out = m2;
}

/* KB_SQUARES's raw sums.  bfloat16's dot product flushes float32 denormal sums to zero: a
 * row whose squares sum
 * to less than n * 2^-96 (where the flushed parts, under 2^-126 per addition, could show in
 * float32) is summed again by FMAs, as in the families without it (all-zero rows too).  A
 * LayerNorm row's raw sums (no center) stand only where also the mean's square is at most
 * the variance (m2 >= n * mean^2): m2 = squares - sum^2 / n then cancels at most half of
 * the squares, so m2's error is at most twice theirs, a float32 rounding per addition, at
 * most 32 additions a lane.  Mostly there is none: a bfloat16 square has 16 significant
 * bits, and 32 of them from a few binades add up exactly in float32 (a float16 square has
 * 22, which round more often: worst rstd error 6.7e-8 to 1.0e-7).  Other rows (data
 * further off zero, constant rows, NaN or infinite sums, flushed squares) are summed again
 * about a center, as in the other families.  `python benchmarks/accuracy.py`, 300 rows of
 * offset + N(0, 1), offsets 0 to 3: the worst relative rstd error 6.8e-8 to 1.1e-7 and
 * mean error 1.5e-9 to 1.3e-7 of the std, as in the other families (6.1e-8 to 1.3e-7). */
#define KB_SQUARES_FLUSHED(n, m2) ((m2) < (double)(n) * 0x1p-96)
#ifdef KB_SQUARES
KB_INLINE int KB_NAME(kb_dot_kept)(size_t n, int center, double shift, double mean_shifted,
                                   double m2) {
#ifdef KB_SQUARES_FMA
    if (!center) return 1; /* RMSNorm summed by its own chains (kb_row_stats_impl) */
#endif
    if (!center) return !KB_SQUARES_FLUSHED(n, m2);
    double mean = shift + mean_shifted, squares = m2 + (double)n * mean * mean;
    return m2 >= (double)n * mean * mean && __builtin_isfinite(squares) &&
           !KB_SQUARES_FLUSHED(n, squares);
}

/* row_stats's sums again, about a center by the general loops: where kb_dot_kept refused
 * the dot product's.  h is read where the first pass stored it (x may lie under it). */
static __attribute__((noinline)) void KB_NAME(kb_row_stats_again)(const KB_T *x,
                                                                   const KB_T *residual,
                                                                   const KB_T *h, size_t n,
                                                                   double shift, int center,
                                                                   double *mean_shifted,
                                                                   double *m2) {
#define KB_AGAIN(from, r, c)                                                                 \
    KB_NAME(kb_row_stats_impl)(from, r, NULL, n, shift, c, mean_shifted, m2, !!(r), 0, NULL, 0, \
                               0, 0, NULL)
    if (h || !residual) {
        if (center) KB_AGAIN(h ? h : x, NULL, 1);
        else KB_AGAIN(h ? h : x, NULL, 0);
    } else if (center) KB_AGAIN(x, residual, 1);
    else KB_AGAIN(x, residual, 0);
#undef KB_AGAIN
}
#endif

static void KB_NAME(row_stats)(const void *x, const void *residual, void *residual_out, size_t n,
                               double shift, int center, int prefetch, double *mean_shifted,
                               double *m2) {
    const KB_T *xs = (const KB_T *)x, *rs = (const KB_T *)residual;
    KB_T *hs = (KB_T *)residual_out;
    /* constant flags: one loop per variant, registers allocated for it alone */
#define KB_ROW_STATS(r, h, c, has_r, has_h)                                                    \
    KB_NAME(kb_row_stats_impl)(xs, r, h, n, shift, c, mean_shifted, m2, has_r, has_h, NULL, 0, \
                               1, prefetch, NULL)
    if (center && !rs) KB_ROW_STATS(NULL, NULL, 1, 0, 0);
    else if (center && !hs) KB_ROW_STATS(rs, NULL, 1, 1, 0);
    else if (center) KB_ROW_STATS(rs, hs, 1, 1, 1);
    else if (!rs) KB_ROW_STATS(NULL, NULL, 0, 0, 0);
    else if (!hs) KB_ROW_STATS(rs, NULL, 0, 1, 0);
    else KB_ROW_STATS(rs, hs, 0, 1, 1);
#undef KB_ROW_STATS
#ifdef KB_SQUARES
    if (!KB_NAME(kb_dot_kept)(n, center, shift, *mean_shifted, *m2))
        KB_NAME(kb_row_stats_again)(xs, rs, hs, n, shift, center, mean_shifted, m2);
#endif
}

/* rows_stats's sums take at most KB_ROWS_ADDS additions in a lane before they merge in
 * float64, and move their center to lane 0's running mean (of the later spans) after every
 * two steps' worth of values, a merge or not (the scalar family merges after every pair of long spans).  A
 * short span adds single vectors, not the row loop's pairs: at KB_BLOCK / 2 additions the
 * worst variance error of 1e4 + N(0, 1) in (64, 4, 17) was 2.4e-7, at KB_BLOCK / 4 under
 * 1.2e-7 as on the row loop.  Moving every eight steps (the row loop's KB_RECENTER) left
 * data drifting across the samples (sorted, or sample means 100 apart) at 3-5e-7; every
 * two steps 1.0-1.5e-7, as the gathered rows gave, for 5-10% more statistics time. */
#define KB_ROWS_ADDS (KB_BLOCK / 4)
#define KB_ROWS_RECENTER_VALUES ((size_t)2 * 2 * KB_STREAMS * KB_LANES) /* two steps */

/* One span's sums about cv into two sets: each four vectors' first pair into set 0, the
 * second into set 1, the (at most three) whole vectors after them into sets 0, 1, 0 and the
 * tail (n % KB_LANES elements, the other lanes zero) into the next. */
KB_INLINE void KB_NAME(kb_span_sums)(const KB_T *row, size_t n, KB_V cv, KB_V one, KB_V *s0,
                                     KB_V *q0, KB_V *s1, KB_V *q1) {
    size_t i = 0;
    for (; i + 4 * KB_LANES <= n; i += 4 * KB_LANES) {
        KB_V a0, b0, a1, b1;
        KB_NAME(kb_load_h2)(row, NULL, NULL, i, 0, 0, &a0, &b0);
        KB_NAME(kb_load_h2)(row, NULL, NULL, i + 2 * KB_LANES, 0, 0, &a1, &b1);
        KB_NAME(kb_sums_step)(a0, b0, cv, one, s0, q0);
        KB_NAME(kb_sums_step)(a1, b1, cv, one, s1, q1);
    }
    size_t left = (n - i) / KB_LANES, tail = n % KB_LANES;
    if (left > 0) KB_NAME(kb_sums_add)(kb_load(row + i), cv, KB_LANES, 1, s0, q0);
    if (left > 1) KB_NAME(kb_sums_add)(kb_load(row + i + KB_LANES), cv, KB_LANES, 1, s1, q1);
    if (left > 2) KB_NAME(kb_sums_add)(kb_load(row + i + 2 * KB_LANES), cv, KB_LANES, 1, s0, q0);
    if (tail) {
        KB_V h = kb_load_n(row + i + left * KB_LANES, tail);
        if (left & 1) KB_NAME(kb_sums_add)(h, cv, tail, 1, s1, q1);
        else KB_NAME(kb_sums_add)(h, cv, tail, 1, s0, q0);
    }
}

/* rows_stats's first center: the mean of the first span's first (up to) four vectors,
 * added as a tree, as the row kernel takes its first step's.  The whole span's mean, one
 * vector after another, put a chain of additions before every sum of the call. */
KB_INLINE KB_C KB_NAME(kb_span_head_mean)(const KB_T *span, size_t n) {
    size_t head = n / KB_LANES < 4 ? n / KB_LANES : 4;
    KB_V sum = head ? kb_load(span) : kb_load_n(span, n);
    if (head > 1) sum = kb_add(sum, kb_load(span + KB_LANES));
    if (head > 2) {
        KB_V more = kb_load(span + 2 * KB_LANES);
        if (head > 3) more = kb_add(more, kb_load(span + 3 * KB_LANES));
        sum = kb_add(sum, more);
    }
    return (KB_C)(kb_sum(sum) * (1.0 / (double)(head ? head * KB_LANES : n)));
}

/* row_stats (centred, no residual) of `rows` spans of n elements, span r at x + r * stride
 * elements, as one set of values: a channel of NCHW data, its row in every sample, read in
 * place.  The sums run about one center across the spans, first the mean of the first
 * span's head (kb_span_head_mean), a short span costing its loads and no lane merge.  Even
 * spans go to sets 0 and 1, odd ones to sets 2 and 3 (kb_span_sums), which halves each
 * set's chain of additions; every span adds the same count to a set's lane, so the counts
 * kb_sums_recenter needs are known. */
static void KB_NAME(rows_stats)(const void *x, size_t rows, size_t n, size_t stride,
                                double shift, double *mean_shifted, double *m2_out) {
    const KB_T *xs = (const KB_T *)x;
    const KB_V one = kb_set1(1), zero = kb_set1(0);
    const size_t quads = n / (4 * KB_LANES), left = n / KB_LANES - 4 * quads, tail = n % KB_LANES;
    /* values a lane of set 0 / set 1 takes from a span, the tail's lanes one more in set
     * tail_set, and additions a lane takes from a span in the busier set */
    const size_t per0 = 2 * quads + (left > 0) + (left > 2), per1 = 2 * quads + (left > 1);
    const int tail_set = (int)(left & 1);
    const size_t adds = quads + (left + 1 + (tail > 0)) / 2;
    double count = 0, mean = 0, m2 = 0;
    if (KB_LANES == 1 && adds > KB_ROWS_ADDS) {
        /* the scalar family's one lane takes more additions from a span than the sums may
         * (from 65 values on): each span by the row kernel, whose blocks merge in float64,
         * then Chan's merge.  Summed across the spans, float32 sorted data took 1.1e-6 of
         * m2 and sample means 100 apart 8.6e-7 at (4, 64, 256), against under 2e-8 now.
         * The vector families' spans, at most FN_SPAN_ROW_BYTES, take at most twice the
         * budget (near that size; AVX2's half-precision rows from about 500 values):
         * drifting float16 data there took up to 2e-6 of m2, far below a float16 rounding
         * (4.9e-4), and the row kernel cost them 1.07-1.18x the time. */
        for (size_t r = 0; r < rows; ++r) {
            double span_mean, span_m2;
            KB_NAME(row_stats)(xs + r * stride, NULL, NULL, n, shift, 1, 0, &span_mean, &span_m2);
            kb_merge(&count, &mean, &m2, (double)n, span_mean, span_m2);
        }
        *mean_shifted = mean;
        *m2_out = m2;
        return;
    }
    KB_C c = KB_NAME(kb_span_head_mean)(xs, n);
    KB_V cv = kb_set1(c);
    KB_V s0 = zero, q0 = zero, s1 = zero, q1 = zero, s2 = zero, q2 = zero, s3 = zero, q3 = zero;
    size_t pairs = 0, values = 0; /* span pairs in the sums; values since the center moved */
    for (size_t r = 0; r < rows; r += 2) {
        KB_NAME(kb_span_sums)(xs + r * stride, n, cv, one, &s0, &q0, &s1, &q1);
        if (r + 1 == rows) break;
        KB_NAME(kb_span_sums)(xs + (r + 1) * stride, n, cv, one, &s2, &q2, &s3, &q3);
        pairs += 1, values += 2 * n;
        if (values >= KB_ROWS_RECENTER_VALUES && r + 2 < rows) {
            KB_V count0 = kb_set1((KB_C)(pairs * per0)), count1 = kb_set1((KB_C)(pairs * per1));
            if (tail) {
                KB_V more = kb_mask_n(kb_set1((KB_C)pairs), tail);
                if (tail_set) count1 = kb_add(count1, more);
                else count0 = kb_add(count0, more);
            }
            /* to lane 0's running mean in set 2, the odd (later) spans: per0 values a span,
             * one more where the tail is there.  Set 0's, the even spans', lagged a span
             * behind data drifting across the samples: four samples of 256 values 100
             * apart took up to 3.1e-7 of m2 over 40 seeds (AVX2; 1.3e-7 now).  (The next
             * span's head, kb_span_head_mean, free of the sums' chains, was slower.) */
            double lane_values = (double)(pairs * (per0 + (tail && !tail_set)));
            KB_C moved = c + kb_first(s2) * (KB_C)(1.0 / lane_values); /* 1 / n off the chain */
            KB_V to = kb_set1(moved), from;
            from = cv, KB_NAME(kb_sums_recenter)(&from, to, &s0, &q0, count0);
            from = cv, KB_NAME(kb_sums_recenter)(&from, to, &s1, &q1, count1);
            from = cv, KB_NAME(kb_sums_recenter)(&from, to, &s2, &q2, count0);
            KB_NAME(kb_sums_recenter)(&cv, to, &s3, &q3, count1);
            c = moved;
            values = 0;
        }
        if (r + 2 == rows || (pairs + 1) * adds > KB_ROWS_ADDS) {
            KB_NAME(kb_sums_gather)(&s0, &q0, &s1, &q1, &s2, &q2, &s3, &q3, zero);
            KB_NAME(kb_sums_merge)(c, s0, q0, shift, (double)(2 * pairs * n), &count, &mean, &m2);
            s0 = q0 = zero;
            pairs = 0;
        }
    }
    if (rows & 1) { /* the last span, alone in sets 0 and 1, after any pairs since the merge */
        KB_NAME(kb_sums_gather)(&s0, &q0, &s1, &q1, &s2, &q2, &s3, &q3, zero);
        KB_NAME(kb_sums_merge)(c, s0, q0, shift, (double)((2 * pairs + 1) * n), &count, &mean,
                               &m2);
    }
    *mean_shifted = mean;
    *m2_out = m2;
}
