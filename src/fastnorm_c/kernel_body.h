/*
 * kernel_body.h - the kernels of kernels.h, written once and instantiated by each
 * kernel-family translation unit for each storage dtype.  This file holds what they share
 * (the KB_* names, the Welford step tables, Chan's merges) and includes the kernels:
 * kernel_row_stats.h, kernel_row_normalize.h, kernel_columns.h, kernel_rows_short.h and
 * kernel_backward.h.  No include guard: it
 * is included once per dtype, after the includer defined
 *   KB_ISA  the family prefix of its simd_<family>.h primitives (scalar, avx2, avx512)
 *   KB_DT   the storage dtype tag (f32, f64, f16, bf16)
 *   KB_CT   the compute dtype tag (c32, c64)
 * and, where the family sums the dtype's row statistics raw, about no center, KB_SQUARES
 * (its primitives <family>_squares_<tag> / <family>_squares2_<tag> and the values' sums
 * <family>_values_<tag> / <family>_values2_<tag>; or with KB_SQUARES_FMA, for LayerNorm's
 * statistics only, the kernels' own by FMAs, kernel_row_stats.h);
 * where it loads a pair faster in an order of its own, KB_UNORDERED2 (its
 * <family>_load2_unordered_<tag> and <family>_store2_unordered_<tag>: the statistics' sums
 * take the values in any order); and where row_stats_normalize streams RMSNorm's pass in
 * its fused loop, KB_STREAM_FUSED_RMS (kernel_row_normalize.h, stream_fused).
 * The primitives are named <family>_<op>_<tag>: load/load_n/load2/store/store_n/store2/
 * round/stream/stream2 take storage (n-element forms touch only n elements, 2-forms load
 * or store a pair of vectors and are told whether FN_STORE_NAN_CANONICAL holds;
 * <family>_canonical_<tag> is 1 where that makes them faster), set1/add/sub/mul/fma/param/
 * param_n/to_double/sum (the lanes' float64 sum)/first (lane 0)/mask_n (lanes n and up
 * zeroed)/blend_n (lanes below n from the first vector, the others from the second) work
 * in the compute dtype; <family>_vec_<ct> is the vector type and <family>_lanes_<ct> its
 * lane count.  A pair is the next 2 * lanes elements, in order unless
 * <family>_param_block_<tag> is set: then the pair holds them in an order of the family's
 * own (AVX2 bfloat16: even elements, odd elements), which the normalize pass's weight and
 * bias follow block by block (kernels.h).
 *
 * Numerical strategy (see docs/internals.md, "Numerics"):
 *   - Statistics run per lane on values near a center taken from the data, so offset-
 *     dominated data (1e5 + N(0, 1)) is reduced to small numbers exactly (Sterbenz).
 *     LayerNorm rows sum h - c and its square about one center c for all lanes, the mean
 *     of the row's first step, moved to a running mean every KB_RECENTER steps (Chan's
 *     formula for the values so far; kb_sums_*): 3.5 operations a vector.  Column
 *     strips run Welford on h - shift, shift a value of the data, each stream taking two
 *     rows per step, the pair merged in with Chan's formula.
 *   - KB_STREAMS independent accumulator sets hide the FMA latency; each takes at most
 *     KB_BLOCK values per lane in the compute dtype.  Then a row's block adds its lanes up
 *     in float64 (kb_sum) and merges into the row's partial with Chan's formula; a column
 *     strip's block merges into float64 lane accumulators (Chan's formula per lane), which
 *     merge at the end.
 *   - A row's whole vectors left over after the last full step, and the fewer than a
 *     vector's elements after them (a vector with its other lanes zeroed), are summed about
 *     the same center, one more partial.
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
#define kb_sum KB_GLUE(KB_ISA, sum, KB_CT)
#define kb_first KB_GLUE(KB_ISA, first, KB_CT)
#define kb_mask_n KB_GLUE(KB_ISA, mask_n, KB_CT)
#define kb_blend_n KB_GLUE(KB_ISA, blend_n, KB_CT)
#define kb_lane_sums KB_GLUE(KB_ISA, lane_sums, KB_CT)
#define kb_store_c KB_GLUE(KB_ISA, store, KB_CT)
#define kb_rstd_x4 KB_GLUE(KB_ISA, rstd, x4)
#define kb_inverse KB_GLUE(kb, inverse, KB_CT)
#define kb_rest KB_GLUE(kb, rest, KB_CT)
#undef kb_squares /* these four differ from dtype to dtype */
#undef kb_squares2
#undef kb_values
#undef kb_values2
#ifdef KB_SQUARES_FMA
#define kb_squares KB_NAME(kb_fma_squares)
#define kb_squares2 KB_NAME(kb_fma_squares2)
#define kb_values KB_NAME(kb_fma_values)
#define kb_values2 KB_NAME(kb_fma_values2)
#else
#define kb_squares KB_GLUE(KB_ISA, squares, KB_DT)
#define kb_squares2 KB_GLUE(KB_ISA, squares2, KB_DT)
#define kb_values KB_GLUE(KB_ISA, values, KB_DT)
#define kb_values2 KB_GLUE(KB_ISA, values2, KB_DT)
#endif
#define kb_load2_unordered KB_GLUE(KB_ISA, load2_unordered, KB_DT)
#define kb_store2_unordered KB_GLUE(KB_ISA, store2_unordered, KB_DT)

#ifndef KB_STREAMS
#define KB_STREAMS 4 /* kb_row_stats_impl names four streams */
#define KB_BLOCK 64      /* values per lane before a float64 merge */
/* LayerNorm row statistics move their center to a running mean every KB_RECENTER steps
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

/* GCC unrolls a loop of a few constant iterations before its loop vectorizer runs, and the
 * kernels build without the basic-block one (setup.py), so such a loop stays scalar: the
 * column statistics' float64 merges of 16 lanes took a quarter of their time so. */
#if defined(__GNUC__) && !defined(__clang__)
#define KB_LOOP_NOT_UNROLLED _Pragma("GCC unroll 1")
#else
#define KB_LOOP_NOT_UNROLLED
#endif

/* Merge a block partial (mean, m2, count nb) into float64 lane accumulators (count na). */
KB_INLINE void kb_merge_lanes(double *acc_mean, double *acc_m2, double na,
                              const double *mean, const double *m2, double nb, int lanes) {
    double total = na + nb, weight_b = nb / total, cross = na * nb / total;
    KB_LOOP_NOT_UNROLLED
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
    if (*count == 0) { /* the general case's arithmetic without its divisions, which a row's
                        * first partial waited for (same bits: delta is mean_b, its weight
                        * 1, the cross term 0).  In-process A/B, time per call, float32
                        * LayerNorm, 1 thread: 512x768 0.99, 128x384 0.98, 64x768 1.00. */
        *mean += mean_b;
        *m2 += m2_b + mean_b * mean_b * 0.0;
        *count = count_b;
        return;
    }
    double total = *count + count_b, delta = mean_b - *mean;
    *mean += delta * (count_b / total);
    *m2 += m2_b + delta * delta * (*count * count_b / total);
    *count = total;
}
#endif

/* the kernels, in the order they build on each other */
#include "kernel_row_stats.h"
#include "kernel_row_normalize.h"
#include "kernel_columns.h"
#include "kernel_rows_short.h"
#include "kernel_backward.h"

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
#undef kb_sum
#undef kb_first
#undef kb_mask_n
#undef kb_blend_n
#undef kb_inverse
#undef kb_rest
