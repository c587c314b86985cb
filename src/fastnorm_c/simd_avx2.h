/*
 * simd_avx2.h - kernel_body.h's vector primitives for the AVX2 family (AVX2 + FMA + F16C,
 * flags from setup.py's ISA table).  Included by kernels_avx2.c only.  Partial loads and
 * stores of 32/64-bit elements use VMASKMOV; 16-bit elements, which AVX2 cannot mask, go
 * through a small stack buffer.  Either way a tail is never read or written past its end.
 */
#ifndef FASTNORM_SIMD_AVX2_H
#define FASTNORM_SIMD_AVX2_H

#include <immintrin.h>
#include <stddef.h>
#include <string.h>
#include "storage.h"
#include "stream_bytes.h"

enum { avx2_lanes_c32 = 8, avx2_lanes_c64 = 4 };
/* which dtypes' store2/stream2 have a faster form under FN_STORE_NAN_CANONICAL */
enum { avx2_canonical_f32 = 0, avx2_canonical_f64 = 0, avx2_canonical_f16 = 0, avx2_canonical_bf16 = 1 };
/* rows of up to 8 KB prefetch the next one in their normalize pass (kernels.h,
 * prefetch_row_min/max): Zen 3, 4096x768 float32 (12 MB) LayerNorm and RMSNorm 0.78-0.82x
 * the time (with prefetcht0), a slight loss for 16 KB rows; Zen 4 within noise either
 * way, prefetcht0 or prefetcht2 */
enum { avx2_prefetch_row_min = 0, avx2_prefetch_row_max = 8192 };
/* rows of up to 16 KB take their statistics one row ahead (kernels.h, ahead_row_max): Zen 3,
 * in-process A/B against 4 KB, time per call, 1 thread: RMSNorm float32 128x4096
 * 0.97-0.99, 256x2048 0.94-0.95, 512x1024 0.98, 256x4096 0.96, bfloat16 128x4096 0.86,
 * 256x4096 0.83; LayerNorm float32 128x4096 1.00, 256x2048 0.97-1.00, 256x4096 0.94,
 * bfloat16 128x4096 0.97, float16 0.92; 2 threads RMSNorm 128x4096 0.95, 256x2048 0.95 */
enum { avx2_ahead_row_max = 16384, avx2_ahead_row_max_amd = 16384 }; /* measured on Zen 3 */
/* rows_short (kernel_rows_short.h), rows of up to 25 vectors (200 float32 or half values;
 * float64 20, 80 values): with 16 registers, blocks of rows kept in registers (AVX-512's
 * form until 2026-12) spill (Zen 4: float32 LayerNorm 4096x64 1.17x the time of the row
 * kernels, RMSNorm 4096x32 1.37x; Zen 3, against the row kernels with rows one ahead:
 * 4096x64 1.22x, 4096x48 1.43x, RMSNorm 4096x64 1.75x), and the row kernels pay about 50
 * ns a row in calls and a float64 finish whatever its length.  In-process A/B on Zen 3
 * against the row kernels, time per call, 1 thread: LayerNorm float32 4096x16 0.32,
 * 4096x64 0.42, 4096x128 0.70, float64 4096x64 0.87; RMSNorm 4096x16 0.31, 4096x128 0.77,
 * 100000x10 0.43; 2 threads RMSNorm 32768x64 0.31; one row 1.04-1.05 (docs/optimisations.md).
 * Rows of 17-25 vectors (fifty-third session): LayerNorm float32 4096x136 0.75, 4096x160
 * 0.72, 4096x176 0.80, 4096x192 0.98-1.05, 4096x200 0.80-0.84, float16 4096x160 0.61,
 * 4096x200 0.67, bfloat16 4096x176 0.85, RMSNorm 4096x136 0.73, 4096x200 0.89, float64
 * 4096x72 0.75, 4096x80 0.84.  Past that, rows were level or lost: float32 4096x224 0.96,
 * 4096x250 0.98, 4096x256 1.06 (RMSNorm 1.15), bfloat16 4096x250 1.09, float64 RMSNorm
 * 4096x88 1.05, 4096x96 1.15.  Rows of more than 16 vectors take a second instance of the
 * code (KB_SHORT_SPLIT_VECS): one instance for 24 vectors slowed the shorter rows' (4096x64
 * 1.15-1.17, same bits).  InstanceNorm's channels (rows_short_channels) gain up to 32
 * vectors against its other paths: float32 8x256x14x14 0.63, 16x16 0.77, float64 9x9
 * 0.58, 8x16 0.82-0.86. */
#define FN_SHORT_ROWS_ACROSS 1
#define KB_SHORT_VECS 32 /* the longest, for the arrays' bounds */
enum { avx2_short_vecs_c32 = 25, avx2_short_vecs_c64 = 20 };
enum { avx2_short_channel_vecs_c32 = 32, avx2_short_channel_vecs_c64 = 32 };
#define KB_SHORT_SPLIT_VECS 16
/* the order of weight and bias for each dtype's row normalize (kernels.h, param_block):
 * bfloat16 pairs are even and odd elements (avx2_load2_bf16) */
enum { avx2_param_block_f32 = 0, avx2_param_block_f64 = 0, avx2_param_block_f16 = 0, avx2_param_block_bf16 = 16 };
typedef __m256 avx2_vec_c32;
typedef __m256d avx2_vec_c64;

/* lane i is active when i < n: compare the lane index with n */
static inline __m256i fn_avx2_mask32(size_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline __m256i fn_avx2_mask64(size_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)n), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* ---- compute dtype float32 ---- */
static inline __m256 avx2_set1_c32(float a) { return _mm256_set1_ps(a); }
static inline __m256 avx2_add_c32(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
static inline __m256 avx2_sub_c32(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
static inline __m256 avx2_mul_c32(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
static inline __m256 avx2_fma_c32(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
static inline __m256 avx2_param_c32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 avx2_param_n_c32(const float *p, size_t n) {
    return _mm256_maskload_ps(p, fn_avx2_mask32(n));
}
static inline void avx2_to_double_c32(__m256 v, double *out) {
    _mm256_storeu_pd(out, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    _mm256_storeu_pd(out + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* ---- compute dtype float64 ---- */
static inline __m256d avx2_set1_c64(double a) { return _mm256_set1_pd(a); }
static inline __m256d avx2_add_c64(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
static inline __m256d avx2_sub_c64(__m256d a, __m256d b) { return _mm256_sub_pd(a, b); }
static inline __m256d avx2_mul_c64(__m256d a, __m256d b) { return _mm256_mul_pd(a, b); }
static inline __m256d avx2_fma_c64(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
static inline __m256d avx2_param_c64(const double *p) { return _mm256_loadu_pd(p); }
static inline __m256d avx2_param_n_c64(const double *p, size_t n) {
    return _mm256_maskload_pd(p, fn_avx2_mask64(n));
}
static inline void avx2_to_double_c64(__m256d v, double *out) { _mm256_storeu_pd(out, v); }
/* the float64 sum of a vector's lanes, as a tree (as avx512's) */
static inline double fn_avx2_sum4(__m256d v) {
    __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}
static inline double avx2_sum_c32(__m256 v) {
    return fn_avx2_sum4(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                      _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}
static inline double avx2_sum_c64(__m256d v) { return fn_avx2_sum4(v); }
/* lane 0 */
static inline float avx2_first_c32(__m256 v) { return _mm256_cvtss_f32(v); }
static inline double avx2_first_c64(__m256d v) { return _mm256_cvtsd_f64(v); }
/* lanes n and up zeroed */
static inline __m256 avx2_mask_n_c32(__m256 v, size_t n) {
    return _mm256_and_ps(v, _mm256_castsi256_ps(fn_avx2_mask32(n)));
}
static inline __m256d avx2_mask_n_c64(__m256d v, size_t n) {
    return _mm256_and_pd(v, _mm256_castsi256_pd(fn_avx2_mask64(n)));
}
/* lanes below n from a, the others from b */
static inline __m256 avx2_blend_n_c32(__m256 a, __m256 b, size_t n) {
    return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(fn_avx2_mask32(n)));
}
static inline __m256d avx2_blend_n_c64(__m256d a, __m256d b, size_t n) {
    return _mm256_blendv_pd(b, a, _mm256_castsi256_pd(fn_avx2_mask64(n)));
}

/* Lane j: the sum of v[j]'s lanes, for rows_short across lanes (kernel_rows_short.h).
 * Every lane takes the same tree, ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)), so a row's
 * sum does not depend on the lane it is in. */
static inline __m256 avx2_lane_sums_c32(const __m256 *v) {
    __m256 g0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    __m256 g1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                         _mm256_permute2f128_ps(g0, g1, 0x31));
}
static inline __m256d avx2_lane_sums_c64(const __m256d *v) {
    __m256d h01 = _mm256_hadd_pd(v[0], v[1]), h23 = _mm256_hadd_pd(v[2], v[3]);
    return _mm256_add_pd(_mm256_permute2f128_pd(h01, h23, 0x20),
                         _mm256_permute2f128_pd(h01, h23, 0x31));
}
/* rstd = 1 / sqrt(max(spread, 0) + eps) for four lanes (rows_short's finish: GCC leaves
 * the lane loop's square roots scalar), a NaN spread kept (max_pd returns its second
 * operand where one is NaN) */
static inline void avx2_rstd_x4(const double *spread, double eps, double *rstd) {
    __m256d s = _mm256_max_pd(_mm256_setzero_pd(), _mm256_loadu_pd(spread));
    __m256d root = _mm256_sqrt_pd(_mm256_add_pd(s, _mm256_set1_pd(eps)));
    _mm256_storeu_pd(rstd, _mm256_div_pd(_mm256_set1_pd(1.0), root));
}
static inline void avx2_store_c32(float *p, __m256 v) { _mm256_storeu_ps(p, v); }
static inline void avx2_store_c64(double *p, __m256d v) { _mm256_storeu_pd(p, v); }

/* The first `bytes` (under 32, even) bytes of the vector lo:hi to p, in 16-, 8-, 4- and
 * 2-byte stores: the part-vector stores of every storage dtype.  AVX2's masked stores
 * (VMASKMOVPS, VPMASKMOVD) are microcoded on AMD's Zen: on Zen 3 the one at the end of
 * each 49-value row took a quarter of BatchNorm backward (8, 512, 7, 7)'s gradient pass. */
static inline void fn_avx2_store_bytes(void *p, __m128i lo, __m128i hi, size_t bytes) {
    char *at = (char *)p;
    if (bytes & 16) {
        _mm_storeu_si128((__m128i *)at, lo);
        lo = hi, at += 16;
    }
    if (bytes & 8) {
        _mm_storel_epi64((__m128i *)at, lo);
        lo = _mm_srli_si128(lo, 8), at += 8;
    }
    if (bytes & 4) {
        int32_t word = _mm_cvtsi128_si32(lo);
        memcpy(at, &word, 4);
        lo = _mm_srli_si128(lo, 4), at += 4;
    }
    if (bytes & 2) {
        uint16_t half = (uint16_t)_mm_cvtsi128_si32(lo);
        memcpy(at, &half, 2);
    }
}

/* ---- storage float32 ---- */
static inline __m256 avx2_load_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 avx2_load_n_f32(const float *p, size_t n) {
    return _mm256_maskload_ps(p, fn_avx2_mask32(n));
}
static inline void avx2_store_f32(float *p, __m256 v) { _mm256_storeu_ps(p, v); }
static inline void avx2_store_n_f32(float *p, __m256 v, size_t n) {
    __m256i bits = _mm256_castps_si256(v);
    fn_avx2_store_bytes(p, _mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1), 4 * n);
}
static inline __m256 avx2_round_f32(__m256 v) { return v; }

/* ---- storage float64 ---- */
static inline __m256d avx2_load_f64(const double *p) { return _mm256_loadu_pd(p); }
static inline __m256d avx2_load_n_f64(const double *p, size_t n) {
    return _mm256_maskload_pd(p, fn_avx2_mask64(n));
}
static inline void avx2_store_f64(double *p, __m256d v) { _mm256_storeu_pd(p, v); }
static inline void avx2_store_n_f64(double *p, __m256d v, size_t n) {
    __m256i bits = _mm256_castpd_si256(v);
    fn_avx2_store_bytes(p, _mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1), 8 * n);
}
static inline __m256d avx2_round_f64(__m256d v) { return v; }

/* ---- 16-bit storage: whole vectors as __m128i, tails loaded as masked 32-bit pairs ---- */
/* n < 8 16-bit values: the pairs by a 32-bit masked load, an odd last one on its own (a
 * pair would reach past the row), never touching memory past p + n (stores:
 * fn_avx2_store_bytes).  Copying through a stack buffer (memcpy) cost a store-forwarding
 * stall a call. */
static inline __m128i fn_avx2_load_n_u16(const uint16_t *p, size_t n) {
    __m128i mask = _mm_cmpgt_epi32(_mm_set1_epi32((int)(n / 2)), _mm_setr_epi32(0, 1, 2, 3));
    __m128i v = _mm_maskload_epi32((const int *)p, mask);
    if (n & 1) {
        __m128i at = _mm_cmpeq_epi16(_mm_set1_epi16((short)(n - 1)),
                                     _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7));
        v = _mm_blendv_epi8(v, _mm_set1_epi16((short)p[n - 1]), at);
    }
    return v;
}
static inline void fn_avx2_store_n_u16(uint16_t *p, __m128i v, size_t n) {
    fn_avx2_store_bytes(p, v, v, 2 * n);
}

/* ---- storage float16 ---- */
#define FN_AVX2_F16_ROUNDING (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline __m256 avx2_load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline __m256 avx2_load_n_f16(const uint16_t *p, size_t n) {
    return _mm256_cvtph_ps(fn_avx2_load_n_u16(p, n));
}
static inline void avx2_store_f16(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, FN_AVX2_F16_ROUNDING));
}
static inline void avx2_store_n_f16(uint16_t *p, __m256 v, size_t n) {
    fn_avx2_store_n_u16(p, _mm256_cvtps_ph(v, FN_AVX2_F16_ROUNDING), n);
}
static inline void avx2_load2_f16(const uint16_t *p, __m256 *a, __m256 *b) {
    *a = avx2_load_f16(p);
    *b = avx2_load_f16(p + 8);
}
/* two vectors in one 32-byte store: half the store operations of 16-byte ones */
static inline void avx2_store2_f16(uint16_t *p, __m256 a, __m256 b, int canonical) {
    (void)canonical;
    _mm256_storeu_si256((__m256i *)p, _mm256_set_m128i(_mm256_cvtps_ph(b, FN_AVX2_F16_ROUNDING),
                                                       _mm256_cvtps_ph(a, FN_AVX2_F16_ROUNDING)));
}
static inline __m256 avx2_round_f16(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, FN_AVX2_F16_ROUNDING));
}
/* float16 LayerNorm's statistics as raw sums, by FMAs (kernel_row_stats.h, KB_SQUARES_FMA) */
#define FN_SQUARES_F16 1

/* ---- storage bfloat16 ---- */
/* bfloat16 bits into the high half of each 32-bit lane: one in-lane byte shuffle of the
 * eight values broadcast to both 128-bit lanes (a widening move plus a shift costs two
 * operations on the shuffle/shift pipes, which the store's narrowing also needs). */
static inline __m256 fn_avx2_bf16_widen(__m128i h) {
    const __m256i spread = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
                                            -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(h), spread));
}
/* float32 -> bfloat16 bits in the high half of each 32-bit lane (low half garbage), ties
 * to even, for a number or a NaN whose low 16 bits are zero (FN_STORE_NAN_CANONICAL: such
 * a NaN gains no carry): bits + 0x7fff, or + 0x8000 where bit 16 is set, chosen by a
 * blend on that bit shifted to the sign.  Three operations where testing the bit by AND +
 * compare took four: the LayerNorm normalize pass in L1 319 -> 302 cycles a 768-value row
 * (kernel_cycles.c), in-process A/B 1 thread, time per call: LayerNorm 32768x768 0.97-0.98,
 * 8192x4096 0.99 (1.05 on a busy minute), 512x768 0.97-1.00; RMSNorm 32768x768 0.96-0.99,
 * 512x768 0.95-0.96. */
static inline __m256i fn_avx2_bf16_round_high_canonical(__m256 v) {
    __m256i bits = _mm256_castps_si256(v);
    __m256 odd = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 15)); /* bit 16 as the sign */
    __m256 below = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff));
    __m256 above = _mm256_castsi256_ps(_mm256_set1_epi32(0x8000));
    return _mm256_add_epi32(bits, _mm256_castps_si256(_mm256_blendv_ps(below, above, odd)));
}
/* the same for any input: a NaN is quieted, whatever its low bits (rounding could carry
 * them into the exponent and sign) */
static inline __m256i fn_avx2_bf16_round_high(__m256 v) {
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    __m256i quiet = _mm256_or_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x400000));
    return _mm256_blendv_epi8(fn_avx2_bf16_round_high_canonical(v), quiet, nan);
}
/* the high 16 bits of eight 32-bit lanes -> eight packed 16-bit values */
static inline __m128i fn_avx2_narrow_high_u16(__m256i lanes) {
    const __m256i gather = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
                                            2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i packed = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(lanes, gather), 0x08);
    return _mm256_castsi256_si128(packed);
}
static inline __m256 avx2_load_bf16(const uint16_t *p) {
    return fn_avx2_bf16_widen(_mm_loadu_si128((const __m128i *)p));
}
static inline __m256 avx2_load_n_bf16(const uint16_t *p, size_t n) {
    return fn_avx2_bf16_widen(fn_avx2_load_n_u16(p, n));
}
static inline void avx2_store_bf16(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, fn_avx2_narrow_high_u16(fn_avx2_bf16_round_high(v)));
}
static inline void avx2_store_n_bf16(uint16_t *p, __m256 v, size_t n) {
    fn_avx2_store_n_u16(p, fn_avx2_narrow_high_u16(fn_avx2_bf16_round_high(v)), n);
}
/* A pair of bfloat16 vectors as the normalize pass takes them: the 16 values at p as their
 * even-indexed elements (a) and their odd ones (b), from one 32-byte load by a shift and
 * an AND, and stored back by a shift and a 16-bit blend.  Against widening and narrowing
 * each half in place (byte shuffles and a cross-lane permute): 0.75-0.83x the time of the
 * normalize loop in L1 (benchmarks/kernel_cycles.c and a standalone copy of the loop, Zen
 * 3).  Weight and bias come in the same order (avx2_param_block_bf16). */
static inline void avx2_load2_bf16(const uint16_t *p, __m256 *a, __m256 *b) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    *a = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *b = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
}
static inline __m256i fn_avx2_bf16_pack2(__m256 a, __m256 b, int canonical) {
    __m256i ra = canonical ? fn_avx2_bf16_round_high_canonical(a) : fn_avx2_bf16_round_high(a);
    __m256i rb = canonical ? fn_avx2_bf16_round_high_canonical(b) : fn_avx2_bf16_round_high(b);
    return _mm256_blend_epi16(_mm256_srli_epi32(ra, 16), rb, 0xaa);
}
static inline void avx2_store2_bf16(uint16_t *p, __m256 a, __m256 b, int canonical) {
    _mm256_storeu_si256((__m256i *)p, fn_avx2_bf16_pack2(a, b, canonical));
}
/* The statistics' pairs (KB_UNORDERED2 in kernel_body.h) in the normalize pass's order:
 * one 32-byte load, a shift and an AND, where the pair in order takes two byte shuffles on
 * the pipes the adders share.  Zen 3, 768-value rows in L1 (kernel_cycles.c): LayerNorm's
 * statistics 269 -> 231 cycles, RMSNorm's 158 -> 142; in-process A/B, 1 thread, time per
 * call: LayerNorm 512x768 0.92-0.93, 32768x768 0.95-0.96, 8192x4096 0.97-0.98; RMSNorm
 * 512x768 1.00, 32768x768 1.01-1.02 (an A/A run: 1.00-1.03).  Two 16-byte loads joined by
 * an insert, to avoid the line splits, lost it all (LayerNorm 768: 281 cycles).  The store
 * takes a pair of bfloat16 values (float32 with zero low halves) in that order. */
static inline void avx2_load2_unordered_bf16(const uint16_t *p, __m256 *a, __m256 *b) {
    avx2_load2_bf16(p, a, b);
}
static inline void avx2_store2_unordered_bf16(uint16_t *p, __m256 a, __m256 b) {
    __m256i even = _mm256_srli_epi32(_mm256_castps_si256(a), 16);
    _mm256_storeu_si256((__m256i *)p, _mm256_blend_epi16(even, _mm256_castps_si256(b), 0xaa));
}
#define FN_UNORDERED2_BF16 1
/* v is the sum of two bfloat16 values (kernel_body.h's kb_round), so any NaN in it is a
 * quieted input or the default NaN: low 16 bits zero, no NaN test needed */
static inline __m256 avx2_round_bf16(__m256 v) {
    return _mm256_castsi256_ps(_mm256_and_si256(fn_avx2_bf16_round_high_canonical(v),
                                                _mm256_set1_epi32((int)0xffff0000u)));
}

/* ---- streaming (non-temporal) stores: p aligned to the vector's storage bytes ---- */
static inline void avx2_stream_f32(float *p, __m256 v) { _mm256_stream_ps(p, v); }
static inline void avx2_stream_f64(double *p, __m256d v) { _mm256_stream_pd(p, v); }
static inline void avx2_stream_f16(uint16_t *p, __m256 v) {
    _mm_stream_si128((__m128i *)p, _mm256_cvtps_ph(v, FN_AVX2_F16_ROUNDING));
}
static inline void avx2_stream_bf16(uint16_t *p, __m256 v) {
    _mm_stream_si128((__m128i *)p, fn_avx2_narrow_high_u16(fn_avx2_bf16_round_high(v)));
}
/* two vectors, p aligned to both vectors' storage bytes;
 * float32/float64 store them one after the other */
#define FN_AVX2_TWO(T, V, dt, lanes)                                                         \
    static inline void avx2_load2_##dt(const T *p, V *a, V *b) {                             \
        *a = avx2_load_##dt(p);                                                              \
        *b = avx2_load_##dt(p + lanes);                                                      \
    }                                                                                        \
    static inline void avx2_store2_##dt(T *p, V a, V b, int canonical) {                     \
        (void)canonical;                                                                     \
        avx2_store_##dt(p, a);                                                               \
        avx2_store_##dt(p + lanes, b);                                                       \
    }                                                                                        \
    static inline void avx2_stream2_##dt(T *p, V a, V b, int canonical) {                    \
        (void)canonical;                                                                     \
        avx2_stream_##dt(p, a);                                                              \
        avx2_stream_##dt(p + lanes, b);                                                      \
    }
FN_AVX2_TWO(float, __m256, f32, 8)
FN_AVX2_TWO(double, __m256d, f64, 4)
#undef FN_AVX2_TWO
static inline void avx2_stream2_f16(uint16_t *p, __m256 a, __m256 b, int canonical) {
    (void)canonical;
    _mm256_stream_si256((__m256i *)p, _mm256_set_m128i(_mm256_cvtps_ph(b, FN_AVX2_F16_ROUNDING),
                                                       _mm256_cvtps_ph(a, FN_AVX2_F16_ROUNDING)));
}
/* two 16-byte halves: the pair loop runs from a row's start, which NumPy puts 16 bytes
 * past a 32-byte boundary */
static inline void avx2_stream2_bf16(uint16_t *p, __m256 a, __m256 b, int canonical) {
    __m256i packed = fn_avx2_bf16_pack2(a, b, canonical);
    _mm_stream_si128((__m128i *)p, _mm256_castsi256_si128(packed));
    _mm_stream_si128((__m128i *)(p + 8), _mm256_extracti128_si256(packed, 1));
}
/* a row's partial first or last vector streamed (stream_bytes.h) */
#define avx2_stream_bytes fn_stream_bytes

#endif /* FASTNORM_SIMD_AVX2_H */
