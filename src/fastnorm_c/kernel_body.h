/*
 * kernel_body.h - the four kernels of kernels.h, written once and instantiated by each
 * kernel-family translation unit for each storage dtype.  No include guard: it is
 * included once per dtype, after the includer defined
 *   KB_ISA  the family prefix of its simd_<family>.h primitives (scalar, avx2, avx512)
 *   KB_DT   the storage dtype tag (f32, f64, f16, bf16)
 *   KB_CT   the compute dtype tag (c32, c64)
 * and, where the family sums the dtype's squares by a dot product instruction, KB_SQUARES
 * (its primitives <family>_squares_<tag> and <family>_squares2_<tag>: RMSNorm's statistics);
 * where it loads a pair faster in an order of its own, KB_UNORDERED2 (its
 * <family>_load2_unordered_<tag> and <family>_store2_unordered_<tag>: the statistics' sums
 * take the values in any order).
 * The primitives are named <family>_<op>_<tag>: load/load_n/load2/store/store_n/store2/
 * round/stream/stream2 take storage (n-element forms touch only n elements, 2-forms load
 * or store a pair of vectors and are told whether FN_STORE_NAN_CANONICAL holds;
 * <family>_canonical_<tag> is 1 where that makes them faster), set1/add/sub/mul/fma/param/
 * param_n/to_double work in the compute dtype; <family>_vec_<ct> is the vector type and
 * <family>_lanes_<ct> its lane count.  A pair is the next 2 * lanes elements, in order
 * unless <family>_param_block_<tag> is set: then the pair holds them in an order of the
 * family's own (AVX2 bfloat16: even elements, odd elements), which the normalize pass's
 * weight and bias follow block by block (kernels.h).
 *
 * Numerical strategy (see README "Numerics"):
 *   - Statistics run per lane on values near a center taken from the data, so offset-
 *     dominated data (1e5 + N(0, 1)) is reduced to small numbers exactly (Sterbenz).
 *     LayerNorm rows sum h - c and its square about a per-lane center c, the mean of the
 *     lane's first values, moved to the running mean every KB_RECENTER steps (Chan's
 *     formula for the values so far; kb_sums_*): 3.5 operations a vector.  Column
 *     strips run Welford on h - shift, shift a value of the data, each stream taking two
 *     rows per step, the pair merged in with Chan's formula.
 *   - KB_STREAMS independent accumulator sets hide the FMA latency; each takes at most
 *     KB_BLOCK values per lane in the compute dtype before its partials are merged into
 *     float64 lane accumulators with Chan's formula.  Lanes merge at the end in float64.
 *   - Whole vectors left over after the last full step form one more partial (a Welford
 *     stream per lane); fewer than a vector's elements use exact float64 two-pass arithmetic.
 *   - The mean is subtracted as a high/low pair of compute-dtype values.
 */

#define KB_GLUE_(a, b, c) a##_##b##_##c
#define KB_GLUE(a, b, c) KB_GLUE_(a, b, c)
#define KB_NAME(base) KB_GLUE(base, KB_DT, KB_ISA)
#define KB_T KB_GLUE(fn, storage, KB_DT)
#define KB_C KB_GLUE(fn, compute, KB_CT)
#define KB_V KB_GLUE(KB_ISA, vec, KB_CT)
#define KB_LANES KB_GLUE(KB_ISA, lanes, KB_CT)
#define kb_load KB_GLUE(KB_ISA, load, KB_DT)
#define kb_load_n KB_GLUE(KB_ISA, load_n, KB_DT)
#define kb_load2 KB_GLUE(KB_ISA, load2, KB_DT)
#define KB_PAIR_BLOCK KB_GLUE(KB_ISA, param_block, KB_DT)
#define kb_store KB_GLUE(KB_ISA, store, KB_DT)
#define kb_store_n KB_GLUE(KB_ISA, store_n, KB_DT)
#define kb_store2 KB_GLUE(KB_ISA, store2, KB_DT)
#define kb_round KB_GLUE(KB_ISA, round, KB_DT)
#define kb_stream KB_GLUE(KB_ISA, stream, KB_DT)
#define kb_stream2 KB_GLUE(KB_ISA, stream2, KB_DT)
#define kb_stream_bytes KB_GLUE(KB_ISA, stream, bytes)
#define KB_CANONICAL KB_GLUE(KB_ISA, canonical, KB_DT)
#define kb_set1 KB_GLUE(KB_ISA, set1, KB_CT)
#define kb_add KB_GLUE(KB_ISA, add, KB_CT)
#define kb_sub KB_GLUE(KB_ISA, sub, KB_CT)
#define kb_mul KB_GLUE(KB_ISA, mul, KB_CT)
#define kb_fma KB_GLUE(KB_ISA, fma, KB_CT)
#define kb_param KB_GLUE(KB_ISA, param, KB_CT)
#define kb_param_n KB_GLUE(KB_ISA, param_n, KB_CT)
#define kb_to_double KB_GLUE(KB_ISA, to_double, KB_CT)
#define kb_lane_sum KB_GLUE(KB_ISA, lane_sum, KB_CT)
#define kb_scalar_load KB_GLUE(fn, load1, KB_DT)
#define kb_scalar_store KB_GLUE(fn, store1, KB_DT)
#define kb_scalar_round KB_GLUE(fn, round1, KB_DT)
#define kb_inverse KB_GLUE(kb, inverse, KB_CT)
#define kb_rest KB_GLUE(kb, rest, KB_CT)
#define kb_squares KB_GLUE(KB_ISA, squares, KB_DT)
#define kb_squares2 KB_GLUE(KB_ISA, squares2, KB_DT)
#define kb_load2_unordered KB_GLUE(KB_ISA, load2_unordered, KB_DT)
#define kb_store2_unordered KB_GLUE(KB_ISA, store2_unordered, KB_DT)

#ifndef KB_STREAMS
#define KB_STREAMS 4 /* kb_row_stats_impl names four streams */
#define KB_BLOCK 64      /* row Welford values per lane before a float64 merge */
/* LayerNorm row statistics move their center to the running mean every KB_RECENTER steps
 * (kb_sums_recenter); with one lane also after the second step, since its first center is
 * the mean of only the row's first 2 * KB_STREAMS values (rows led by 8 values 1000 spreads
 * away: rstd 6e-7 off without it, 1.2e-7 in the vector families and in Welford's). */
#define KB_RECENTER 8
#define KB_RECENTER_AFTER(k) ((k) % KB_RECENTER == 0 || (KB_LANES == 1 && (k) == 2))
/* 1/k and (k-1)/k for the per-lane Welford step count k (all lanes of a block share k),
 * in each compute dtype, so the loops broadcast them straight from memory (converting a
 * float64 entry each step took three vector-pipe operations of the adders' share).  Both
 * are 1/k rounded to float64 first, then (k-1)/k = 1 - that, then the compute dtype.  A
 * constant initializer, never code run at load time: this file is compiled with AVX2/
 * AVX-512 flags, and a load-time constructor built with them faults on CPUs without those
 * instructions. */
#define KB_INV4(k) 1.0 / (k), 1.0 / ((k) + 1), 1.0 / ((k) + 2), 1.0 / ((k) + 3)
#define KB_REST4(k) 1.0 - 1.0 / (k), 1.0 - 1.0 / ((k) + 1), 1.0 - 1.0 / ((k) + 2), \
                    1.0 - 1.0 / ((k) + 3)
#define KB_BY16(f, k) f(k), f((k) + 4), f((k) + 8), f((k) + 12)
#define KB_TO64(f) 0.0, KB_BY16(f, 1), KB_BY16(f, 17), KB_BY16(f, 33), KB_BY16(f, 49)
static const float kb_inverse_c32[KB_BLOCK + 1] = {KB_TO64(KB_INV4)};
static const double kb_inverse_c64[KB_BLOCK + 1] = {KB_TO64(KB_INV4)};
static const float kb_rest_c32[KB_BLOCK + 1] = {KB_TO64(KB_REST4)};
static const double kb_rest_c64[KB_BLOCK + 1] = {KB_TO64(KB_REST4)};
_Static_assert(KB_BLOCK == 64, "the kb_inverse / kb_rest tables list k = 1..64");
#undef KB_TO64
#undef KB_BY16
#undef KB_REST4
#undef KB_INV4
#define KB_INLINE static inline __attribute__((always_inline))

/* Merge a block partial (mean, m2, count nb) into float64 lane accumulators (count na). */
KB_INLINE void kb_merge_lanes(double *acc_mean, double *acc_m2, double na,
                              const double *mean, const double *m2, double nb, int lanes) {
    double total = na + nb, weight_b = nb / total, cross = na * nb / total;
    for (int lane = 0; lane < lanes; ++lane) {
        double delta = mean[lane] - acc_mean[lane];
        acc_mean[lane] += delta * weight_b;
        acc_m2[lane] += m2[lane] + delta * delta * cross;
    }
}

/* Chan's merge of two partials (count, mean, m2) into the first. */
KB_INLINE void kb_merge(double *count, double *mean, double *m2, double count_b, double mean_b,
                        double m2_b) {
    if (count_b == 0) return;
    double total = *count + count_b, delta = mean_b - *mean;
    *mean += delta * (count_b / total);
    *m2 += m2_b + delta * delta * (*count * count_b / total);
    *count = total;
}
#endif

/* ---- row statistics ---------------------------------------------------------------- */

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
        for (int lane = 0; lane < KB_LANES; ++lane) acc_m2[lane] += lane_m2[lane];
    }
}

KB_INLINE KB_V KB_NAME(kb_load_h)(const KB_T *x, const KB_T *residual, KB_T *residual_out,
                                  size_t i, int has_residual, int has_residual_out) {
    KB_V h = kb_load(x + i);
    if (has_residual) {
        h = kb_round(kb_add(h, kb_load(residual + i)));
        if (has_residual_out) kb_store(residual_out + i, h);
    }
    return h;
}

/* The statistics' pair of h vectors at element i, in the family's own order where it has one
 * (KB_UNORDERED2), with h stored back in order: AVX-512 bfloat16 widens one 64-byte load by
 * two unpacks (a 768-value LayerNorm row's statistics in L1 255 -> 224 cycles, 4096 values
 * 1108 -> 920, kernel_cycles.c). */
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

KB_INLINE KB_C KB_NAME(kb_scalar_h)(const KB_T *x, const KB_T *residual, KB_T *residual_out,
                                    size_t i) {
    KB_C h = kb_scalar_load(x + i);
    if (residual) {
        h = kb_scalar_round(h + kb_scalar_load(residual + i));
        if (residual_out) kb_scalar_store(residual_out + i, h);
    }
    return h;
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

/* Sums about a center, a LayerNorm row stream's update (kb_row_stats_impl): every stream
 * shares each lane's center c (the mean of the lane's first values, then its running mean)
 * and keeps sum = sum(h - c) and squares = sum((h - c)^2), so that m2 = squares - sum^2 / k.
 * Near the data h - c is exact (Sterbenz), and the center stays within the data's spread,
 * so the subtraction in m2 cancels little.  Seven operations a pair, four on the adders and
 * three on the FMA pipes (sum's FMA by one), against Welford's nine, five of them
 * additions.  The pair's squares join the sum as one, which halves the roundings of a
 * growing sum: stats_error.c's worst m2 error (offset 1e4, 4096 values) is then 7.2e-8 in
 * AVX-512 and 6.6e-8 in AVX2, against Welford's 1.2e-7; one FMA chain of single squares
 * took 15% fewer cycles but gave 1.2e-7 and 2.0e-7 (768 values). */
KB_INLINE void KB_NAME(kb_sums_step)(KB_V h0, KB_V h1, KB_V center, KB_V one, KB_V *sum,
                                     KB_V *squares) {
    KB_V d0 = kb_sub(h0, center), d1 = kb_sub(h1, center);
    *sum = kb_fma(kb_add(d0, d1), one, *sum);
    *squares = kb_add(*squares, kb_fma(d1, d1, kb_mul(d0, d0)));
}

/* Move the center to the running mean, and sum and squares with it (exactly in real
 * numbers), so that later values are summed about their mean: count values per lane so
 * far, inverse = 1 / count.  The move is exact near the mean, so sum keeps what the
 * rounded center left over. */
KB_INLINE void KB_NAME(kb_sums_recenter)(KB_V *center, KB_V *sum, KB_V *squares, KB_V count,
                                         KB_V inverse) {
    KB_V moved = kb_fma(*sum, inverse, *center);
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

/* A stream's sums as (mean - shift, m2); minus_inverse = -1 / count. */
KB_INLINE void KB_NAME(kb_sums_finish)(KB_V center, KB_V sum, KB_V squares, KB_V shift,
                                       KB_V minus_inverse, KB_V *mean, KB_V *m2) {
    KB_V back = kb_mul(sum, minus_inverse); /* center - mean */
    *mean = kb_sub(kb_sub(center, shift), back);
    *m2 = kb_fma(back, sum, squares);
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

/* fused: 0, or row_stats_normalize's flags for the cursor's pass, which then advances one
 * statistics step's worth of elements after every step from step KB_CURSOR_LAG on.
 * squares: !center's sums of squares by the family's dot product where it has one
 * (KB_SQUARES), else by FMAs. */
KB_INLINE void KB_NAME(kb_row_stats_impl)(const KB_T *x, const KB_T *residual, KB_T *residual_out,
                                          size_t n, double shift, int center, double *mean_shifted,
                                          double *m2_out, int has_residual, int has_residual_out,
                                          KB_NAME(kb_cursor) *cursor, int fused, int squares) {
    enum { STEP = 2 * KB_STREAMS * KB_LANES, PAIR_BLOCK = KB_BLOCK / 2 };
    size_t steps = n / STEP;
    double acc_mean[KB_LANES] = {0}, acc_m2[KB_LANES] = {0}, acc_count = 0;
    const KB_V shift_v = kb_set1((KB_C)shift);
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
    /* blocks of PAIR_BLOCK steps: each stream lane takes KB_BLOCK values in float32 */
    KB_V c = kb_set1(0); /* LayerNorm's center, kept from block to block */
    for (size_t step0 = 0; step0 < steps; step0 += PAIR_BLOCK) {
        size_t block = steps - step0 < PAIR_BLOCK ? steps - step0 : PAIR_BLOCK;
        KB_V mean0, m2_0; /* the block's partial */
#ifdef KB_SQUARES
        /* one instruction per pair (32 bfloat16 values: no widening, two FMAs): RMSNorm
         * 512x768 bfloat16 0.80x the time, 768-value rows' statistics in L1 108 -> 50
         * cycles.  The residual's h is packed back first, so its sums are the same as
         * those of h read from memory (the unfused call's). */
        if (!center && squares) {
            KB_V s0 = kb_set1(0), s1 = s0, s2 = s0, s3 = s0;
            for (size_t k = 0; k < block; ++k, i += STEP) {
                if (has_residual) {
                    s0 = kb_squares2(s0, KB_H(0), KB_H(1));
                    s1 = kb_squares2(s1, KB_H(2), KB_H(3));
                    s2 = kb_squares2(s2, KB_H(4), KB_H(5));
                    s3 = kb_squares2(s3, KB_H(6), KB_H(7));
                } else {
                    s0 = kb_squares(s0, x + i);
                    s1 = kb_squares(s1, x + i + 2 * KB_LANES);
                    s2 = kb_squares(s2, x + i + 4 * KB_LANES);
                    s3 = kb_squares(s3, x + i + 6 * KB_LANES);
                }
                if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);
            }
            s0 = kb_add(kb_add(s0, s1), kb_add(s2, s3));
            double block_count = (double)block * 2 * KB_STREAMS;
            KB_NAME(kb_merge_partial)(acc_mean, acc_m2, acc_count, s0, s0, block_count, 0);
            acc_count += block_count;
            continue;
        }
#endif
        KB_V a0, b0, a1, b1, a2, b2, a3, b3;
        KB_PAIRS();
        if (center) {
            const KB_V one = kb_set1(1), zero = kb_set1(0);
            if (step0 == 0) /* each lane's center: the mean of its first step's values */
                c = kb_mul(kb_add(kb_add(kb_add(a0, b0), kb_add(a1, b1)),
                                  kb_add(kb_add(a2, b2), kb_add(a3, b3))),
                           kb_set1((KB_C)(1.0 / (2 * KB_STREAMS))));
            KB_V s0 = zero, s1 = zero, s2 = zero, s3 = zero;
            KB_V q0 = zero, q1 = zero, q2 = zero, q3 = zero;
#define KB_SUMS_STEP()                                                                       \
    do {                                                                                     \
        KB_NAME(kb_sums_step)(a0, b0, c, one, &s0, &q0);                                     \
        KB_NAME(kb_sums_step)(a1, b1, c, one, &s1, &q1);                                     \
        KB_NAME(kb_sums_step)(a2, b2, c, one, &s2, &q2);                                     \
        KB_NAME(kb_sums_step)(a3, b3, c, one, &s3, &q3);                                     \
        if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);                           \
        i += STEP;                                                                           \
    } while (0)
            KB_SUMS_STEP();
            /* each step loads its pairs where it uses them: loaded at the end of the step
             * before, they stayed live across the loop's back edge, and AVX2's 16
             * registers spilled the sums (4096 values 1.25x Welford's cycles) */
            for (size_t k = 2; k <= block; ++k) {
                if (KB_RECENTER_AFTER(k - 1)) {
                    size_t count = 2 * KB_STREAMS * (k - 1);
                    KB_NAME(kb_sums_gather)(&s0, &q0, &s1, &q1, &s2, &q2, &s3, &q3, zero);
                    KB_NAME(kb_sums_recenter)(&c, &s0, &q0, kb_set1((KB_C)count),
                                              kb_set1((KB_C)(1.0 / (double)count)));
                }
                KB_PAIRS();
                KB_SUMS_STEP();
            }
#undef KB_SUMS_STEP
            KB_NAME(kb_sums_gather)(&s0, &q0, &s1, &q1, &s2, &q2, &s3, &q3, zero);
            KB_NAME(kb_sums_finish)(c, s0, q0, shift_v,
                                    kb_set1((KB_C)(-1.0 / (double)(2 * KB_STREAMS * block))),
                                    &mean0, &m2_0);
        } else { /* RMSNorm: sums of squares, two FMA chains a stream */
            KB_V e0 = kb_mul(a0, a0), e1 = kb_mul(a1, a1), e2 = kb_mul(a2, a2), e3 = kb_mul(a3, a3);
            KB_V o0 = kb_mul(b0, b0), o1 = kb_mul(b1, b1), o2 = kb_mul(b2, b2), o3 = kb_mul(b3, b3);
            if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);
            i += STEP;
            for (size_t k = 2; k <= block; ++k, i += STEP) {
                KB_PAIRS();
                e0 = kb_fma(a0, a0, e0), e1 = kb_fma(a1, a1, e1);
                e2 = kb_fma(a2, a2, e2), e3 = kb_fma(a3, a3, e3);
                o0 = kb_fma(b0, b0, o0), o1 = kb_fma(b1, b1, o1);
                o2 = kb_fma(b2, b2, o2), o3 = kb_fma(b3, b3, o3);
                if (fused) KB_NAME(kb_cursor_run)(cursor, i, STEP, fused);
            }
            m2_0 = kb_add(kb_add(kb_add(e0, o0), kb_add(e1, o1)),
                          kb_add(kb_add(e2, o2), kb_add(e3, o3)));
            mean0 = m2_0; /* unused */
        }
        double block_count = (double)block * 2 * KB_STREAMS;
        KB_NAME(kb_merge_partial)(acc_mean, acc_m2, acc_count, mean0, m2_0, block_count, center);
        acc_count += block_count;
    }
    /* whole vectors after the last step (fewer than 2 * KB_STREAMS): one more partial, a
     * Welford stream of `left` values per lane.  They used to join the float64 scalar tail,
     * one long dependency chain: benchmarks/kernel_cycles.c, float32, cycles per 8 values,
     * 1000-value rows 3.56 -> 2.23, 1568 2.54 -> 1.92, 784 3.04 -> 2.48. */
    size_t left = (n - i) / KB_LANES;
    if (left) {
        KB_V mean, m2;
        KB_NAME(kb_welford_one)(KB_H(0), shift_v, center, &mean, &m2);
        for (size_t v = 1; v < left; ++v) {
            KB_V h = KB_H(v);
            if (center) {
                KB_V a = kb_sub(h, shift_v), delta = kb_sub(a, mean);
                mean = kb_fma(delta, kb_set1(kb_inverse[v + 1]), mean);
                m2 = kb_fma(delta, kb_sub(a, mean), m2);
            } else {
                m2 = kb_fma(h, h, m2);
            }
        }
        KB_NAME(kb_merge_partial)(acc_mean, acc_m2, acc_count, mean, m2, (double)left, center);
        acc_count += (double)left;
        i += left * KB_LANES;
    }
#undef KB_PAIRS
#undef KB_H2
#undef KB_H
    /* merge the lanes: all hold acc_count values */
    size_t done = i;
    double mean = 0, m2 = 0, count = (double)done;
    /* sums as trees of vector additions: the running sums over 16 lanes took a quarter
     * of the AVX-512 statistics of a 768-value row (kernel_cycles.c) */
    if (center && done) {
        double spread[KB_LANES];
        mean = kb_lane_sum(acc_mean) * (1.0 / KB_LANES); /* exact: a power of two */
        for (int lane = 0; lane < KB_LANES; ++lane) {
            double delta = acc_mean[lane] - mean;
            spread[lane] = delta * delta;
        }
        m2 = kb_lane_sum(acc_m2) + kb_lane_sum(spread) * acc_count;
    } else if (done) {
        m2 = kb_lane_sum(acc_m2);
    }
    /* the tail, fewer than KB_LANES elements: exact float64 two-pass */
    if (done < n) {
        double tail[KB_LANES], tail_mean = 0, tail_m2 = 0;
        size_t tail_n = n - done;
        for (size_t t = 0; t < tail_n; ++t) {
            tail[t] = (double)KB_NAME(kb_scalar_h)(x, residual, residual_out, done + t);
            tail_mean += center ? tail[t] - shift : 0.0;
        }
        if (center) {
            tail_mean /= (double)tail_n;
            for (size_t t = 0; t < tail_n; ++t) {
                double delta = (tail[t] - shift) - tail_mean;
                tail_m2 += delta * delta;
            }
            kb_merge(&count, &mean, &m2, (double)tail_n, tail_mean, tail_m2);
        } else {
            for (size_t t = 0; t < tail_n; ++t) m2 += tail[t] * tail[t];
        }
    }
    *mean_shifted = center ? mean : 0.0;
    *m2_out = m2;
}

/* KB_SQUARES's dot product flushes float32 denormal sums to zero: a row whose squares sum
 * to less than n * 2^-96 (where the flushed parts, under 2^-126 per addition, could show in
 * float32) is summed again by FMAs, as in the families without it (all-zero rows too). */
#define KB_SQUARES_FLUSHED(n, m2) ((m2) < (double)(n) * 0x1p-96)

static void KB_NAME(row_stats)(const void *x, const void *residual, void *residual_out, size_t n,
                               double shift, int center, double *mean_shifted, double *m2) {
    const KB_T *xs = (const KB_T *)x, *rs = (const KB_T *)residual;
    KB_T *hs = (KB_T *)residual_out;
    /* constant flags: one loop per variant, registers allocated for it alone */
    if (center && !rs)
        KB_NAME(kb_row_stats_impl)(xs, NULL, NULL, n, shift, 1, mean_shifted, m2, 0, 0, NULL, 0, 0);
    else if (center && !hs)
        KB_NAME(kb_row_stats_impl)(xs, rs, NULL, n, shift, 1, mean_shifted, m2, 1, 0, NULL, 0, 0);
    else if (center)
        KB_NAME(kb_row_stats_impl)(xs, rs, hs, n, shift, 1, mean_shifted, m2, 1, 1, NULL, 0, 0);
    else if (!rs)
        KB_NAME(kb_row_stats_impl)(xs, NULL, NULL, n, shift, 0, mean_shifted, m2, 0, 0, NULL, 0, 1);
    else if (!hs)
        KB_NAME(kb_row_stats_impl)(xs, rs, NULL, n, shift, 0, mean_shifted, m2, 1, 0, NULL, 0, 1);
    else
        KB_NAME(kb_row_stats_impl)(xs, rs, hs, n, shift, 0, mean_shifted, m2, 1, 1, NULL, 0, 1);
#ifdef KB_SQUARES
    /* again by FMAs, h read where the first pass stored it (x may lie under it) */
    if (!center && KB_SQUARES_FLUSHED(n, *m2)) {
        if (hs || !rs)
            KB_NAME(kb_row_stats_impl)(hs ? hs : xs, NULL, NULL, n, 0.0, 0, mean_shifted, m2, 0, 0,
                                       NULL, 0, 0);
        else
            KB_NAME(kb_row_stats_impl)(xs, rs, NULL, n, 0.0, 0, mean_shifted, m2, 1, 0, NULL, 0, 0);
    }
#endif
}

/* ---- row normalize --------------------------------------------------------------- */

/* Elements before y's first address aligned for a streaming store (all of them when y is
 * not even element-aligned, so nothing is streamed). */
KB_INLINE size_t KB_NAME(kb_stream_head)(const KB_T *y, size_t n) {
    const uintptr_t address = (uintptr_t)y, bytes = KB_LANES * sizeof(KB_T);
    size_t head = address % sizeof(KB_T) ? n : (size_t)((bytes - address % bytes) % bytes) / sizeof(KB_T);
    return head < n ? head : n;
}

/* Prefetch the cache lines of elements i ... i + count - 1 of a span, each line once as i
 * steps by count: every 64 bytes of a step of 64 or more, else from the step that starts
 * in a line's first `step` bytes.  With the low-locality hint (prefetcht2): the span is
 * read by the caller's next pass, not this one, and need not displace this pass's data
 * from L1 (api.c's long rows on 1 thread, 16x1048576, time against no prefetch: RMSNorm
 * 0.83-0.97x with prefetcht2, 0.94-0.99x with prefetcht0; LayerNorm 0.98-1.02x against
 * 1.06-1.10x).  Not in the scalar family: its one-lane loops rely on the compiler's
 * auto-vectorization, which a per-element prefetch defeats (measured 1.6x slower). */
KB_INLINE void KB_NAME(kb_prefetch_lines)(const char *span, size_t i, size_t count) {
    size_t byte = i * sizeof(KB_T), step = count * sizeof(KB_T);
    if (KB_LANES == 1) return;
    if (step >= 64)
        for (size_t offset = 0; offset < step; offset += 64)
            __builtin_prefetch(span + byte + offset, 0, 1);
    else if (byte % 64 < step)
        __builtin_prefetch(span + byte, 0, 1);
}

/* The normalize pass's constants as vectors: y = ((h - mean_hi) * scale + low) * w + b,
 * where low = -mean_lo * scale folds the low part of the mean into the FMA (one operation
 * fewer than subtracting it, and one rounding fewer); without weight and bias, `beta`
 * already holds beta + low. */
KB_INLINE void KB_NAME(kb_normalize_constants)(KB_C mean_hi, KB_C mean_lo, KB_C scale, KB_C beta,
                                               int center, int has_affine, KB_V *mean_hi_v,
                                               KB_V *low_v, KB_V *scale_v, KB_V *beta_v) {
    KB_C low = center ? (KB_C)(-(double)mean_lo * (double)scale) : 0;
    *mean_hi_v = kb_set1(mean_hi);
    *low_v = kb_set1(low);
    *scale_v = kb_set1(scale);
    *beta_v = kb_set1(has_affine ? beta : beta + low);
}

/* The normalize pass on h, the vector at element i (kb_normalize_constants); `left` <
 * KB_LANES selects a masked tail of the parameters. */
KB_INLINE KB_V KB_NAME(kb_normalize_h)(KB_V h, size_t i, size_t left, KB_V mean_hi, KB_V low,
                                       KB_V scale, KB_V beta, const KB_C *weight,
                                       const KB_C *bias, int center, int has_weight,
                                       int has_bias) {
    int full = left >= KB_LANES;
    if (center) h = kb_sub(h, mean_hi);
    KB_V add = has_bias ? (full ? kb_param(bias + i) : kb_param_n(bias + i, left)) : beta;
    if (has_weight)
        return kb_fma(center ? kb_fma(h, scale, low) : kb_mul(h, scale),
                      full ? kb_param(weight + i) : kb_param_n(weight + i, left), add);
    return kb_fma(h, scale, has_bias ? kb_add(add, low) : add);
}

/* One vector of the normalize pass at element i; `left` < KB_LANES selects a masked tail.
 * h_out: NULL, or where h goes (for residual_out). */
KB_INLINE KB_V KB_NAME(kb_row_normalize_value)(const KB_T *x, const KB_T *residual, size_t i,
                                               size_t left, KB_V mean_hi, KB_V low, KB_V scale,
                                               KB_V beta, const KB_C *weight, const KB_C *bias,
                                               int has_residual, int center, int has_weight,
                                               int has_bias, KB_V *h_out) {
    int full = left >= KB_LANES;
    KB_V h = full ? kb_load(x + i) : kb_load_n(x + i, left);
    if (has_residual)
        h = kb_round(kb_add(h, full ? kb_load(residual + i) : kb_load_n(residual + i, left)));
    if (h_out) *h_out = h;
    return KB_NAME(kb_normalize_h)(h, i, left, mean_hi, low, scale, beta, weight, bias, center,
                                   has_weight, has_bias);
}

/* The pair of vectors at element i (kb_load2's order; the parameters' pair at i is in the
 * same order). */
KB_INLINE void KB_NAME(kb_row_normalize_pair)(const KB_T *x, const KB_T *residual, size_t i,
                                              KB_V mean_hi, KB_V low, KB_V scale, KB_V beta,
                                              const KB_C *weight, const KB_C *bias,
                                              int has_residual, int center, int has_weight,
                                              int has_bias, KB_V *first, KB_V *second,
                                              KB_V *h_first, KB_V *h_second) {
    KB_V h0, h1;
    kb_load2(x + i, &h0, &h1);
    if (has_residual) {
        KB_V r0, r1;
        kb_load2(residual + i, &r0, &r1);
        h0 = kb_round(kb_add(h0, r0));
        h1 = kb_round(kb_add(h1, r1));
        *h_first = h0;
        *h_second = h1;
    }
    *first = KB_NAME(kb_normalize_h)(h0, i, KB_LANES, mean_hi, low, scale, beta, weight, bias,
                                     center, has_weight, has_bias);
    *second = KB_NAME(kb_normalize_h)(h1, i + KB_LANES, KB_LANES, mean_hi, low, scale, beta,
                                      weight, bias, center, has_weight, has_bias);
}

/* v to p: streamed (stream), stored, or its first `left` (< KB_LANES) elements stored. */
KB_INLINE void KB_NAME(kb_put)(KB_T *p, KB_V v, size_t left, int stream) {
    if (left >= KB_LANES && stream)
        kb_stream(p, v);
    else if (left >= KB_LANES)
        kb_store(p, v);
    else
        kb_store_n(p, v, left);
}

/* One vector of the pass stored to y, and h to h_out where has_h_out (streamed where
 * stream_h, which implies stream). */
KB_INLINE void KB_NAME(kb_row_normalize_vector)(const KB_T *x, const KB_T *residual, size_t i,
                                                size_t left, KB_V mean_hi, KB_V low,
                                                KB_V scale, KB_V beta, const KB_C *weight,
                                                const KB_C *bias, KB_T *y, KB_T *h_out,
                                                int has_residual, int has_h_out, int center,
                                                int has_weight, int has_bias, int stream,
                                                int stream_h) {
    KB_V h;
    KB_V out = KB_NAME(kb_row_normalize_value)(x, residual, i, left, mean_hi, low, scale, beta,
                                               weight, bias, has_residual, center, has_weight,
                                               has_bias, &h);
    KB_NAME(kb_put)(y + i, out, left, stream);
    if (has_h_out) KB_NAME(kb_put)(h_out + i, h, left, stream_h);
}

/* The first `left` (< KB_LANES) elements of v streamed to y in 16-byte pieces where y is
 * 16-byte aligned (NumPy's large arrays are, 16 bytes past a 64-byte line): a row's
 * partial first or last vector, so that a line shared with the neighbouring row gets
 * streaming stores only, never a plain store that flushes the line's write-combining
 * buffer early and reads it (LayerNorm 32768x768 float32 on NumPy arrays took 1.15x the
 * time before).  A remainder under 16 bytes is stored plainly.  The vector goes to the
 * stack whole: the 16-byte loads that follow cannot take their data from a masked store
 * and waited for it to retire (perf, bfloat16 LayerNorm 32768x768: this function 7% of
 * the samples, 2.9% after).  Out of line: it runs at most twice a row, and every kernel
 * variant would otherwise carry a copy. */
static __attribute__((noinline)) void KB_NAME(kb_stream_part)(KB_T *y, KB_V v, size_t left) {
    _Alignas(64) KB_T part[KB_LANES];
    kb_store(part, v);
    size_t bytes = left * sizeof(KB_T), streamed = (uintptr_t)y % 16 ? 0 : bytes / 16 * 16;
    kb_stream_bytes(y, part, streamed);
    if (bytes > streamed) /* a call of memcpy costs a VZEROUPPER too */
        memcpy((char *)y + streamed, (const char *)part + streamed, bytes - streamed);
}

KB_INLINE void KB_NAME(kb_row_normalize_impl)(const KB_T *x, const KB_T *residual, KB_T *h_out,
                                              size_t n, KB_C mean_hi, KB_C mean_lo, KB_C scale,
                                              KB_C beta, const KB_C *weight, const KB_C *bias,
                                              KB_T *y, const char *next, int has_residual,
                                              int has_h_out, int center, int has_weight,
                                              int has_bias, int stream, int canonical) {
    KB_V mean_hi_v, low_v, scale_v, beta_v;
    KB_NAME(kb_normalize_constants)(mean_hi, mean_lo, scale, beta, center, has_weight || has_bias,
                                    &mean_hi_v, &low_v, &scale_v, &beta_v);
    stream = stream && KB_LANES > 1; /* the scalar family's "streaming" stores are plain */
    size_t i = 0, head = stream ? KB_NAME(kb_stream_head)(y, n) : 0;
    /* nothing aligned to stream to; or pairs in a family order, which must start at the
     * row's start (where the parameters' blocks start) */
    if (head == n || (KB_PAIR_BLOCK && head)) stream = head = 0;
    /* h streams where it sits like y, from the same element on, unless it overwrites an
     * input, whose lines are in cache and owned already (api.c has the statistics pass
     * store such an h: fn_norm_spans) */
    const uintptr_t pair_bytes = 2 * KB_LANES * sizeof(KB_T);
    int stream_h = has_h_out && stream && h_out != (const void *)x &&
                   h_out != (const void *)residual &&
                   ((uintptr_t)h_out - (uintptr_t)y) % pair_bytes == 0;
    KB_V h, h1;
#define KB_VALUE(at, left)                                                                       \
    KB_NAME(kb_row_normalize_value)(x, residual, at, left, mean_hi_v, low_v, scale_v, beta_v,    \
                                    weight, bias, has_residual, center, has_weight, has_bias, &h)
#define KB_VECTOR(at, left, streamed)                                                            \
    KB_NAME(kb_row_normalize_vector)(x, residual, at, left, mean_hi_v, low_v, scale_v, beta_v,   \
                                     weight, bias, y, h_out, has_residual, has_h_out, center,    \
                                     has_weight, has_bias, streamed, (streamed) && stream_h)
    if (head) { /* unaligned start: a partial vector up to the first aligned element */
        KB_NAME(kb_stream_part)(y, KB_VALUE(0, head), head);
        if (has_h_out) KB_NAME(kb_stream_part)(h_out, h, head);
    }
    i = head;
    /* Two vectors per store in the vector families: AVX2 packs 16-bit results into one
     * 32-byte store instead of two 16-byte ones (bfloat16/float16 512x768 LayerNorm
     * 0.88-0.97x the time, 32768x768 0.89-0.96x); the scalar family keeps its one-value
     * loop, which the compiler vectorizes.  The loads of this pass come from cache (the
     * statistics pass just read them), so the load ports have room to fetch the caller's
     * next span meanwhile. */
    const int pairs = KB_LANES > 1;
    _Static_assert(KB_PAIR_BLOCK == 0 || KB_PAIR_BLOCK == 2 * KB_LANES, "a parameter block is a pair");
#define KB_PAIR(at, first, second)                                                               \
    KB_NAME(kb_row_normalize_pair)(x, residual, at, mean_hi_v, low_v, scale_v, beta_v, weight,   \
                                   bias, has_residual, center, has_weight, has_bias, &first,    \
                                   &second, &h, &h1)
#define KB_PREFETCH2(at)                                                                          \
    if (next) KB_NAME(kb_prefetch_lines)(next, at, 2 * KB_LANES);
    if (stream) {
        /* pairs start where y is aligned for a two-vector streaming store (in a family
         * order: at the row's start, and the store needs one vector's alignment) */
        if (pairs && !KB_PAIR_BLOCK && (uintptr_t)(y + i) % pair_bytes && i + KB_LANES <= n) {
            KB_VECTOR(i, KB_LANES, 1);
            i += KB_LANES;
        }
        for (; pairs && i + 2 * KB_LANES <= n; i += 2 * KB_LANES) {
            KB_PREFETCH2(i);
            KB_V first, second;
            KB_PAIR(i, first, second);
            kb_stream2(y + i, first, second, canonical);
            if (stream_h)
                kb_stream2(h_out + i, h, h1, 0);
            else if (has_h_out)
                kb_store2(h_out + i, h, h1, 0);
        }
        for (; i + KB_LANES <= n; i += KB_LANES) KB_VECTOR(i, KB_LANES, 1);
        if (i < n) {
            KB_NAME(kb_stream_part)(y + i, KB_VALUE(i, n - i), n - i);
            if (has_h_out) KB_NAME(kb_stream_part)(h_out + i, h, n - i);
        }
        return;
    }
    for (; pairs && i + 2 * KB_LANES <= n; i += 2 * KB_LANES) {
        KB_PREFETCH2(i);
        KB_V first, second;
        KB_PAIR(i, first, second);
        kb_store2(y + i, first, second, canonical);
        if (has_h_out) kb_store2(h_out + i, h, h1, 0);
    }
#undef KB_PREFETCH2
#undef KB_PAIR
    /* where the parameters are in natural order again: after the last full pair block */
    const size_t natural = KB_PAIR_BLOCK ? n / (2 * KB_LANES) * (2 * KB_LANES) : 0;
    for (; i + KB_LANES <= n; i += KB_LANES) {
        if (next) KB_NAME(kb_prefetch_lines)(next, i, KB_LANES);
        KB_VECTOR(i, KB_LANES, 0);
    }
    /* the last partial vector: out of place, a full vector ending at n (rewriting a few
     * outputs with the same values) is much cheaper than a masked store (Zen 3: VMASKMOVPS
     * to memory is microcoded).  Not where an input is overwritten already: y or h over
     * x, h over residual.  (The streaming path above ends its rows itself: a plain store
     * into a line still being streamed costs that line's write-combining flush and a
     * read, 1.25x the time of a 25 MB BatchNorm eval.)  Not into a pair block either (its
     * parameters are in the family's order). */
    int overwritten = (const void *)x == (const void *)y ||
                      (has_h_out && (h_out == (const void *)x || h_out == (const void *)residual));
    if (i < n && n >= KB_LANES && n - KB_LANES >= natural && !overwritten)
        KB_VECTOR(n - KB_LANES, KB_LANES, 0);
    else if (i < n)
        KB_VECTOR(i, n - i, 0);
#undef KB_VECTOR
#undef KB_VALUE
}

/* Where y is not on a vector boundary (NumPy puts arrays 16 bytes past a cache line) and
 * the row is neither streamed (that loop aligns itself) nor in a family order (AVX2
 * bfloat16, whose parameter blocks start at the row's start), the caller runs kb_row_normalize_impl from y's first vector boundary over a whole number of
 * vectors, so that no store and, where the caller placed x and the parameters as y
 * (fn_row_params), no load splits across two lines; it stores the row's first and last
 * vectors, full and unaligned, after that loop, which is right in place too (their
 * overlap with the loop's outputs is rewritten with the same values).  Returns the
 * loop's first element (0: no such loop, the row as it is) and its length in *body, and
 * computes the two vectors (and their h where h_first is not NULL), flags tested at run
 * time: two vectors a row do not need a variant of their own (a copy of the whole pass per variant doubled the compile time).
 * (Computing the last vector after the loop took 1.04x the time of LayerNorm 512x768;
 * running the loop from the boundary by index inside kb_row_normalize_impl cost four
 * instructions of index arithmetic per pair.) */
KB_INLINE size_t KB_NAME(kb_row_edges)(const KB_T *x, const KB_T *residual, size_t n,
                                       KB_C mean_hi, KB_C mean_lo, KB_C scale, KB_C beta,
                                       const KB_C *weight, const KB_C *bias, int center,
                                       const KB_T *y, int stream, size_t *body, KB_V *first,
                                       KB_V *last, KB_V *h_first, KB_V *h_last) {
    if (KB_LANES == 1 || KB_PAIR_BLOCK || stream) return 0;
    size_t lead = KB_NAME(kb_stream_head)(y, n);
    if (!lead || lead + 2 * KB_LANES > n) return 0;
    KB_V mean_hi_v, low_v, scale_v, beta_v;
    KB_NAME(kb_normalize_constants)(mean_hi, mean_lo, scale, beta, center, weight || bias,
                                    &mean_hi_v, &low_v, &scale_v, &beta_v);
#define KB_EDGE(at, h)                                                                              \
    KB_NAME(kb_row_normalize_value)(x, residual, at, KB_LANES, mean_hi_v, low_v, scale_v, beta_v,   \
                                    weight, bias, residual != NULL, center, weight != NULL,         \
                                    bias != NULL, h)
    *first = KB_EDGE(0, h_first);
    *last = KB_EDGE(n - KB_LANES, h_last);
#undef KB_EDGE
    *body = (n - lead) / KB_LANES * KB_LANES;
    return lead;
}

/* The mean pair (mean_hi, mean_lo) as compute-dtype values: float64 keeps the caller's
 * pair (shift, shifted mean), exact where one double would round at large offsets;
 * float32 splits the double sum into a high/low float pair. */
KB_INLINE void KB_NAME(kb_mean_pair)(double mean, double mean_lo, KB_C *hi, KB_C *lo) {
    if (sizeof(KB_C) == sizeof(double)) {
        *hi = (KB_C)mean;
        *lo = (KB_C)mean_lo;
    } else {
        double total = mean + mean_lo;
        *hi = (KB_C)total;
        *lo = (KB_C)(total - (double)*hi);
    }
}

static void KB_NAME(row_normalize)(const void *x, const void *residual, void *residual_out,
                                   size_t n, double mean, double mean_lo, double scale,
                                   double beta, const void *weight, const void *bias, void *y,
                                   const void *next, int store) {
    const KB_T *xs = (const KB_T *)x, *rs = (const KB_T *)residual;
    KB_T *hs = (KB_T *)residual_out;
    const char *nx = (const char *)next;
    int stream = store & FN_STORE_STREAM;
    int canonical = KB_CANONICAL && (store & FN_STORE_NAN_CANONICAL); /* a variant where it pays */
    const KB_C *ws = (const KB_C *)weight, *bs = (const KB_C *)bias;
    KB_T *ys = (KB_T *)y;
    KB_C hi, lo, sc = (KB_C)scale, be = (KB_C)beta;
    KB_NAME(kb_mean_pair)(mean, mean_lo, &hi, &lo);
    int center = mean != 0.0 || mean_lo != 0.0;
    /* from y's vector boundary where kb_row_edges finds one */
    size_t body = n;
    KB_V first = kb_set1(0), last = first, h_first = first, h_last = first;
    size_t lead = KB_NAME(kb_row_edges)(xs, rs, n, hi, lo, sc, be, ws, bs, center, ys, stream,
                                        &body, &first, &last, hs ? &h_first : NULL,
                                        hs ? &h_last : NULL);
    if (lead) {
        xs += lead;
        rs = rs ? rs + lead : NULL;
        hs = hs ? hs + lead : NULL;
        ws = ws ? ws + lead : NULL;
        bs = bs ? bs + lead : NULL;
        nx = nx ? nx + lead * sizeof(KB_T) : NULL;
    }
    int flags = (canonical ? 16 : 0) | (rs ? 8 : 0) | (center ? 4 : 0) | (ws ? 2 : 0) | (bs ? 1 : 0);
    /* a switch of constant flags lets the compiler emit one tight loop per variant (and drop
     * the canonical ones where KB_CANONICAL is 0); whether a residual's h is stored is
     * tested in the loop (a variant of its own per residual variant doubled the compile
     * time) */
#define KB_CASE(f)                                                                              \
    case f:                                                                                     \
        KB_NAME(kb_row_normalize_impl)(xs, rs, hs, body, hi, lo, sc, be, ws, bs, ys + lead, nx, \
                                       (f) & 8, (f) & 8 && hs, (f) & 4, (f) & 2, (f) & 1, stream, \
                                       (f) & 16);                                               \
        break;
    switch (flags) {
        KB_CASE(0) KB_CASE(1) KB_CASE(2) KB_CASE(3) KB_CASE(4) KB_CASE(5) KB_CASE(6) KB_CASE(7)
        KB_CASE(8) KB_CASE(9) KB_CASE(10) KB_CASE(11) KB_CASE(12) KB_CASE(13) KB_CASE(14)
        KB_CASE(15) KB_CASE(16) KB_CASE(17) KB_CASE(18) KB_CASE(19) KB_CASE(20) KB_CASE(21)
        KB_CASE(22) KB_CASE(23) KB_CASE(24) KB_CASE(25) KB_CASE(26) KB_CASE(27) KB_CASE(28)
        KB_CASE(29) KB_CASE(30) KB_CASE(31)
    }
#undef KB_CASE
    if (lead) {
        kb_store(ys, first);
        kb_store(ys + n - KB_LANES, last);
        if (hs) {
            kb_store(hs - lead, h_first);
            kb_store(hs - lead + n - KB_LANES, h_last);
        }
    }
}

static void KB_NAME(rows_affine)(const void *x, size_t rows, size_t n, size_t first,
                                 size_t channels, const double *mean, const double *scale,
                                 const double *shift, void *y, int store) {
    int stream = store & FN_STORE_STREAM;
    for (size_t r = 0, c = first % channels; r < rows; ++r, c = c + 1 == channels ? 0 : c + 1) {
        const KB_T *xr = (const KB_T *)x + r * n;
        KB_T *yr = (KB_T *)y + r * n;
        KB_C hi, lo, sc = (KB_C)scale[c], be = (KB_C)shift[c];
        double m = mean ? mean[c] : 0.0;
        KB_NAME(kb_mean_pair)(m, 0.0, &hi, &lo);
        size_t body = n;
        KB_V head = kb_set1(0), tail = head;
        size_t lead = KB_NAME(kb_row_edges)(xr, NULL, n, hi, lo, sc, be, NULL, NULL, m != 0.0, yr,
                                            stream, &body, &head, &tail, NULL, NULL);
        /* row_normalize's variants without residual, weight and bias */
        if (m != 0.0)
            KB_NAME(kb_row_normalize_impl)(xr + lead, NULL, NULL, body, hi, lo, sc, be, NULL, NULL,
                                           yr + lead, NULL, 0, 0, 1, 0, 0, stream, 0);
        else
            KB_NAME(kb_row_normalize_impl)(xr + lead, NULL, NULL, body, hi, lo, sc, be, NULL, NULL,
                                           yr + lead, NULL, 0, 0, 0, 0, 0, stream, 0);
        if (lead) {
            kb_store(yr, head);
            kb_store(yr + n - KB_LANES, tail);
        }
    }
}

/* ---- row normalize with the next row's statistics -------------------------------- */

/* `count` elements of the cursor's pass after the statistics step at element `at`, from
 * step KB_CURSOR_LAG on */
KB_INLINE void KB_NAME(kb_cursor_run)(KB_NAME(kb_cursor) *cursor, size_t at, size_t count,
                                      int fused) {
    if (KB_LANES == 1) return; /* the scalar family: the pass runs whole after the statistics */
    if (at < KB_CURSOR_LAG * count) return;
    const KB_V mean_hi = cursor->mean_hi, low = cursor->low, scale = cursor->scale;
    const KB_V beta = cursor->beta;
    size_t i = cursor->i, stop = cursor->end - i < count ? cursor->end : i + count;
    for (; i + 2 * KB_LANES <= stop; i += 2 * KB_LANES) {
        KB_V first, second, unused;
        KB_NAME(kb_row_normalize_pair)(cursor->x, NULL, i, mean_hi, low, scale, beta,
                                       cursor->weight, cursor->bias, 0, fused & 16, fused & 2,
                                       fused & 4, &first, &second, &unused, &unused);
        kb_store2(cursor->y + i, first, second, fused & 8);
    }
    cursor->i = i;
}

/* row_normalize of x (no residual, no next, not streamed) and row_stats of x_next (no
 * residual), n elements each, with the same results, in one loop where they fit one
 * (kernels.h). */
static void KB_NAME(row_stats_normalize)(const void *x_next, size_t n, double shift, int center,
                                         double *mean_shifted, double *m2, const void *x,
                                         double mean, double mean_lo, double scale,
                                         const void *weight, const void *bias, void *y,
                                         int store) {
    const KB_T *xs = (const KB_T *)x, *next = (const KB_T *)x_next;
    const KB_C *ws = (const KB_C *)weight, *bs = (const KB_C *)bias;
    KB_T *ys = (KB_T *)y;
    KB_C hi, lo, sc = (KB_C)scale, be = 0;
    KB_NAME(kb_mean_pair)(mean, mean_lo, &hi, &lo);
    int normalize_center = mean != 0.0 || mean_lo != 0.0;
    int canonical = KB_CANONICAL && (store & FN_STORE_NAN_CANONICAL);
    /* LayerNorm with a weight (both passes centred) or RMSNorm with one (neither, no
     * bias): anything else, and streaming stores, as the two kernels one after the other
     * (each variant is a copy of both loops: these three are the transformer's) */
    int fits = !(store & FN_STORE_STREAM) && normalize_center == !!center && ws &&
               (center || !bs);
    if (!fits) {
        KB_NAME(row_normalize)(x, NULL, NULL, n, mean, mean_lo, scale, 0.0, weight, bias, y, NULL,
                               store);
        KB_NAME(row_stats)(x_next, NULL, NULL, n, shift, center, mean_shifted, m2);
        return;
    }
    size_t body = n;
    KB_V first = kb_set1(0), last = first;
    size_t lead = KB_NAME(kb_row_edges)(xs, NULL, n, hi, lo, sc, be, ws, bs, center, ys, 0, &body,
                                        &first, &last, NULL, NULL);
    KB_NAME(kb_cursor) cursor = {xs + lead, ws ? ws + lead : NULL, bs ? bs + lead : NULL,
                                 ys + lead, 0, body / (2 * KB_LANES) * (2 * KB_LANES),
                                 kb_set1(0), kb_set1(0), kb_set1(0), kb_set1(0)};
    KB_NAME(kb_normalize_constants)(hi, lo, sc, be, center, ws || bs, &cursor.mean_hi,
                                    &cursor.low, &cursor.scale, &cursor.beta);
    int flags = 1 | (ws ? 2 : 0) | (bs ? 4 : 0) | (canonical ? 8 : 0) | (center ? 16 : 0);
    /* the statistics with the pass's first pairs, then the rest of the pass as
     * row_normalize runs it (same arithmetic per element, so the same results) */
#define KB_CASE(f)                                                                                \
    case f:                                                                                       \
        KB_NAME(kb_row_stats_impl)(next, NULL, NULL, n, shift, (f) & 16, mean_shifted, m2, 0, 0,  \
                                   &cursor, f, 1);                                                \
        KB_NAME(kb_row_normalize_impl)(cursor.x + cursor.i, NULL, NULL, body - cursor.i, hi, lo,  \
                                       sc, be, cursor.weight ? cursor.weight + cursor.i : NULL,   \
                                       cursor.bias ? cursor.bias + cursor.i : NULL,               \
                                       cursor.y + cursor.i, NULL, 0, 0, (f) & 16, (f) & 2,        \
                                       (f) & 4, 0, (f) & 8);                                      \
        break;
    switch (KB_CANONICAL ? flags : flags & ~8) {
        KB_CASE(3) KB_CASE(19) KB_CASE(23) KB_CASE(11) KB_CASE(27) KB_CASE(31)
    }
#undef KB_CASE
#ifdef KB_SQUARES
    if (!center && KB_SQUARES_FLUSHED(n, *m2)) /* as in row_stats */
        KB_NAME(kb_row_stats_impl)(next, NULL, NULL, n, 0.0, 0, mean_shifted, m2, 0, 0, NULL, 0, 0);
#endif
    if (lead) {
        kb_store(ys, first);
        kb_store(ys + n - KB_LANES, last);
    }
}

/* ---- column statistics ------------------------------------------------------------ */

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
 * two rows per step in blocks of up to KB_BLOCK rows, as kb_col_strips4 below. */
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

/* Four full strips side by side (4 * KB_LANES adjacent columns), one pass down the rows
 * reading 4 adjacent vectors of each: four dependency chains overlap and the reads are
 * sequential (against strip by strip, AVX2, Zen 3, interleaved in one process: channels-
 * last BatchNorm statistics 0.55x the time with 64 channels, 0.60x with 256, 0.80x with
 * 3).  Each chain takes two rows per step, as the row statistics do, in blocks of up to
 * KB_BLOCK rows; an odd last row is merged on its own. */
KB_INLINE void KB_NAME(kb_col_strips4)(const KB_T *x, size_t rows, size_t row_stride,
                                       const KB_T *shift_row, int center, double *mean_out,
                                       double *m2_out) {
    KB_V s0 = kb_set1(0), s1 = s0, s2 = s0, s3 = s0;
    if (center) {
        s0 = kb_load(shift_row);
        s1 = kb_load(shift_row + KB_LANES);
        s2 = kb_load(shift_row + 2 * KB_LANES);
        s3 = kb_load(shift_row + 3 * KB_LANES);
    }
    KB_NAME(kb_col_acc) acc[4] = {{{0}, {0}}, {{0}, {0}}, {{0}, {0}}, {{0}, {0}}};
    size_t r0 = 0;
#define KB_ROW2(s) kb_load(p + (s) * KB_LANES), kb_load(p + row_stride + (s) * KB_LANES)
    while (rows - r0 >= 2) {
        size_t block = (rows - r0 < KB_BLOCK ? rows - r0 : KB_BLOCK) & ~(size_t)1;
        const KB_T *p = x + r0 * row_stride;
        KB_V mean0, mean1, mean2, mean3, m2_0, m2_1, m2_2, m2_3;
        KB_NAME(kb_welford2_first)(KB_ROW2(0), s0, center, &mean0, &m2_0);
        KB_NAME(kb_welford2_first)(KB_ROW2(1), s1, center, &mean1, &m2_1);
        KB_NAME(kb_welford2_first)(KB_ROW2(2), s2, center, &mean2, &m2_2);
        KB_NAME(kb_welford2_first)(KB_ROW2(3), s3, center, &mean3, &m2_3);
        for (size_t k = 2; k <= block / 2; ++k) {
            const KB_V inverse = kb_set1(kb_inverse[k]);
            const KB_V rest = kb_set1(kb_rest[k]);
            p += 2 * row_stride;
            KB_NAME(kb_welford2_step)(KB_ROW2(0), s0, inverse, rest, center, &mean0, &m2_0);
            KB_NAME(kb_welford2_step)(KB_ROW2(1), s1, inverse, rest, center, &mean1, &m2_1);
            KB_NAME(kb_welford2_step)(KB_ROW2(2), s2, inverse, rest, center, &mean2, &m2_2);
            KB_NAME(kb_welford2_step)(KB_ROW2(3), s3, inverse, rest, center, &mean3, &m2_3);
        }
        KB_NAME(kb_welford2_finish)(&mean0, &m2_0, center);
        KB_NAME(kb_welford2_finish)(&mean1, &m2_1, center);
        KB_NAME(kb_welford2_finish)(&mean2, &m2_2, center);
        KB_NAME(kb_welford2_finish)(&mean3, &m2_3, center);
        KB_NAME(kb_merge_partial)(acc[0].mean, acc[0].m2, (double)r0, mean0, m2_0, (double)block, center);
        KB_NAME(kb_merge_partial)(acc[1].mean, acc[1].m2, (double)r0, mean1, m2_1, (double)block, center);
        KB_NAME(kb_merge_partial)(acc[2].mean, acc[2].m2, (double)r0, mean2, m2_2, (double)block, center);
        KB_NAME(kb_merge_partial)(acc[3].mean, acc[3].m2, (double)r0, mean3, m2_3, (double)block, center);
        r0 += block;
    }
#undef KB_ROW2
    if (r0 < rows) { /* an odd last row: a partial of one value per lane */
        const KB_T *p = x + r0 * row_stride;
        const KB_V shifts[4] = {s0, s1, s2, s3};
        for (int strip = 0; strip < 4; ++strip) {
            KB_V mean, m2;
            KB_NAME(kb_welford_one)(kb_load(p + strip * KB_LANES), shifts[strip], center, &mean, &m2);
            KB_NAME(kb_merge_partial)(acc[strip].mean, acc[strip].m2, (double)r0, mean, m2, 1.0, center);
        }
    }
    for (int strip = 0; strip < 4; ++strip)
        KB_NAME(kb_col_acc_store)(&acc[strip], KB_LANES, center, mean_out + strip * KB_LANES,
                                  m2_out + strip * KB_LANES);
}

static void KB_NAME(col_stats)(const void *x, size_t rows, size_t cols, size_t row_stride,
                               const void *shift_row, int center, double *mean_shifted,
                               double *m2) {
    const KB_T *xs = (const KB_T *)x, *shift = (const KB_T *)shift_row;
    size_t j = 0;
    /* constant flags: one loop per variant, registers allocated for it alone */
    for (; j + 4 * KB_LANES <= cols; j += 4 * KB_LANES) {
        if (center)
            KB_NAME(kb_col_strips4)(xs + j, rows, row_stride, shift + j, 1, mean_shifted + j, m2 + j);
        else
            KB_NAME(kb_col_strips4)(xs + j, rows, row_stride, NULL, 0, mean_shifted + j, m2 + j);
    }
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
    for (size_t r = 0; r < rows; ++r) {
        const KB_T *xr = x + r * row_stride;
        KB_T *yr = y + r * row_stride;
        const KB_V weight = kb_set1(has_row_weight ? row_weight[r] : (KB_C)1);
        const KB_V bias = kb_set1(has_row_bias ? row_bias[r] : (KB_C)0);
        size_t j = 0;
        for (; j + KB_LANES <= cols; j += KB_LANES)
            KB_NAME(kb_col_normalize_vector)(xr, yr, j, KB_LANES, mean_hi, mean_lo, scale,
                                             col_shift, weight, bias, center, has_row_weight,
                                             has_row_bias, has_col_shift, stream);
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

#undef KB_NAME
#undef KB_T
#undef KB_C
#undef KB_V
#undef KB_LANES
#undef kb_load
#undef kb_load_n
#undef kb_load2
#undef KB_PAIR_BLOCK
#undef kb_store
#undef kb_store_n
#undef kb_store2
#undef kb_round
#undef kb_stream
#undef kb_stream2
#undef kb_stream_bytes
#undef KB_CANONICAL
#undef kb_set1
#undef kb_add
#undef kb_sub
#undef kb_mul
#undef kb_fma
#undef kb_param
#undef kb_param_n
#undef kb_to_double
#undef kb_lane_sum
#undef kb_scalar_load
#undef kb_scalar_store
#undef kb_scalar_round
#undef kb_inverse
#undef kb_rest
