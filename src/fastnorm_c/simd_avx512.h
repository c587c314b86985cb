/*
 * simd_avx512.h - kernel_body.h's vector primitives for the AVX-512 family
 * (AVX-512F/BW/DQ/VL + F16C, flags from setup.py's ISA table).  Included by
 * kernels_avx512.c only.  Partial loads and stores use masks, so a row's tail is never
 * read or written past its end.  float16 converts with VCVTPH2PS/VCVTPS2PH; bfloat16 is
 * a shift on load and an integer round-to-nearest-even on store (the BF16 extension is
 * not assumed).
 */
#ifndef FASTNORM_SIMD_AVX512_H
#define FASTNORM_SIMD_AVX512_H

#include <immintrin.h>
#include <stddef.h>
#include <string.h>
#include "storage.h"
#include "stream_bytes.h"

enum { avx512_lanes_c32 = 16, avx512_lanes_c64 = 8 };
/* no store2/stream2 here has a faster form under FN_STORE_NAN_CANONICAL */
enum { avx512_canonical_f32 = 0, avx512_canonical_f64 = 0, avx512_canonical_f16 = 0, avx512_canonical_bf16 = 0 };
/* weight and bias in natural order for every dtype (kernels.h, param_block) */
enum { avx512_param_block_f32 = 0, avx512_param_block_f64 = 0, avx512_param_block_f16 = 0, avx512_param_block_bf16 = 0 };
/* rows of 2 to 32 KB prefetch the next one in their normalize pass (kernels.h,
 * prefetch_row_min/max; long rows prefetch in every vector family, api_norm.c's
 * fn_norm_long_rows).  Zen 4, in-process A/Bs, time per call against no prefetch, 1 thread:
 * RMSNorm 8192x4096 float32 0.87-0.90 (2 threads 0.87-0.92), bfloat16 0.64-0.68 (0.68-0.74),
 * 1024x8192 0.93 / 0.80, 2048x4096 0.96-0.97 / 0.85-0.89; LayerNorm 4096x2048 float32 0.79-0.80
 * (2 threads 0.84); 64 KB rows lost (RMSNorm 512x16384 float32 1.22).  Rows of 2 to 8 KB
 * gained on Zen 5 (against 8 KB and up, 1 thread: LayerNorm float32 32768x768 0.55-0.58,
 * 16384x768 0.79, 8192x768 0.90-0.95, 32768x512 0.48, 16384x1024 0.67, float64 32768x768
 * 0.91, bfloat16 16384x2048 0.68; RMSNorm 32768x768 0.60-0.62; 2 threads 0.87-0.90; 4096x768
 * 1.01, 3072x768 1.01), where Zen 4 had measured 4096x768 float32 LayerNorm at 1.44-1.56x
 * the copy without them and 2.20-2.22x with (prefetcht0, not measured again there).  Rows
 * of 1 and 1.5 KB: no gain (65536x256 1.01, 65536x384 1.02, bfloat16 32768x768 0.98-1.04). */
enum { avx512_prefetch_row_min = 2048, avx512_prefetch_row_max = 32768 };
/* rows of up to 16 KB take their statistics one row ahead (kernels.h, ahead_row_max), as
 * AVX2's do.  Xeon VM (48 KB L1, 2 MB L2), in-process A/B against 4 KB, time per call,
 * each order of the builds, 1 thread: LayerNorm float32 128x4096 0.89-0.91, 256x4096
 * 0.86-0.91, 128x3072 0.92-0.93, 256x2048 0.96-0.97, bfloat16 128x8192 0.92, float64
 * 128x2048 0.90-0.94, RMSNorm 256x4096 0.93-0.94, 128x4096 level; 2 threads LayerNorm
 * 256x4096 0.86-0.90, 128x4096 1.01-1.02; 64x4096 (1 MB, in L2) 1.02-1.05.  On AMD's cores
 * (the AMD tuning) up to 4 KB, as before: Zen 4 (sixty-fifth session, 32 KB L1, 1 MB L2),
 * 4 KB against 16 KB, in-process A/B, time per call, 1 thread: LayerNorm float32 128x4096
 * 0.78 (and 16 KB over 4 KB, the other order, 1.23), 64x4096 0.83, 128x3072 0.76,
 * 128x2048 0.80, 1024x2048 0.96, 256x4096 0.84, float64 128x2048 0.84, bfloat16 128x8192
 * 0.91, RMSNorm 128x4096 0.86, 64x4096 0.89, 256x2048 0.93; 2 threads LayerNorm 128x4096
 * 0.78-0.80. */
enum { avx512_ahead_row_max = 16384, avx512_ahead_row_max_amd = 4096 };
/* Half-precision RMSNorm rows a row ahead past 8 MB run row_stats_normalize's streamed loop
 * (kernel_row_normalize.h, stream_fused; LayerNorm too where its statistics are raw sums,
 * KB_SQUARES).  Zen 5, in-process A/B against the row order, time per call, 1 thread:
 * float16 32768x768 0.76, 65536x384 0.70, 131072x320 0.94 (2 threads 32768x768 0.85);
 * without AVX512-BF16 float16 32768x768 0.83, bfloat16 0.77, 65536x384 0.73.  float16
 * LayerNorm about a center read 0.99-1.01 there, and float32 RMSNorm 1.21 (thirty-fifth
 * session). */
#define FN_STREAM_FUSED_RMS_HALF 1
/* Rows of up to 16 vectors take rows_short (kernel_rows_short.h), 32 (float64: 16) rows a
 * block.  In-process A/B on Zen 5 against blocks of 2 or 4 rows of up to 8 vectors kept in
 * registers, time per call, 1 thread: LayerNorm float32 4096x16 0.72, 4096x64 0.69,
 * 4096x128 0.56, float64 4096x64 0.67, float16 4096x100 0.44, bfloat16 4096x20 0.61;
 * RMSNorm 4096x16 0.62, 100000x10 0.73; 2 threads RMSNorm 32768x64 0.42; one row of 8 or 64
 * values 1.2-1.3 (about 60 ns more).  16 rows a block: 1.03-1.21x the time of 32.  Rows of
 * 9-16 vectors, against the row kernels: float32 4096x160 0.55, 4096x192 0.58, 4096x256
 * 0.73, RMSNorm 4096x256 0.94, float64 4096x96 0.67, 4096x128 0.81, bfloat16 4096x256 0.69,
 * 64x256 0.58, one row 1.25; up to 32 vectors no gain past 16 (4096x384 1.04, 4096x512
 * 0.98, float64 4096x256 1.12). */
#define FN_SHORT_ROWS_ACROSS 1
#define KB_SHORT_VECS 16
enum { avx512_short_vecs_c32 = 16, avx512_short_vecs_c64 = 16 };
enum { avx512_short_channel_vecs_c32 = 16, avx512_short_channel_vecs_c64 = 16 };
typedef __m512 avx512_vec_c32;
typedef __m512d avx512_vec_c64;

static inline __mmask16 fn_avx512_mask16(size_t n) { return (__mmask16)((1u << n) - 1u); }
static inline __mmask8 fn_avx512_mask8(size_t n) { return (__mmask8)((1u << n) - 1u); }

/* ---- compute dtype float32 ---- */
static inline __m512 avx512_set1_c32(float a) { return _mm512_set1_ps(a); }
static inline __m512 avx512_add_c32(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
static inline __m512 avx512_sub_c32(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
static inline __m512 avx512_mul_c32(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
static inline __m512 avx512_fma_c32(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
static inline __m512 avx512_param_c32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 avx512_param_n_c32(const float *p, size_t n) {
    return _mm512_maskz_loadu_ps(fn_avx512_mask16(n), p);
}
static inline void avx512_to_double_c32(__m512 v, double *out) {
    _mm512_storeu_pd(out, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    _mm512_storeu_pd(out + 8, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
}

/* ---- compute dtype float64 ---- */
static inline __m512d avx512_set1_c64(double a) { return _mm512_set1_pd(a); }
static inline __m512d avx512_add_c64(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
static inline __m512d avx512_sub_c64(__m512d a, __m512d b) { return _mm512_sub_pd(a, b); }
static inline __m512d avx512_mul_c64(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
static inline __m512d avx512_fma_c64(__m512d a, __m512d b, __m512d c) { return _mm512_fmadd_pd(a, b, c); }
static inline __m512d avx512_param_c64(const double *p) { return _mm512_loadu_pd(p); }
static inline __m512d avx512_param_n_c64(const double *p, size_t n) {
    return _mm512_maskz_loadu_pd(fn_avx512_mask8(n), p);
}
static inline void avx512_to_double_c64(__m512d v, double *out) { _mm512_storeu_pd(out, v); }
/* the float64 sum of a vector's lanes, as a tree of vector additions (a running sum of 16
 * is a chain of 16 dependent additions) */
static inline double avx512_sum_c32(__m512 v) {
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                                              _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
}
static inline double avx512_sum_c64(__m512d v) { return _mm512_reduce_add_pd(v); }
/* rows_short across lanes (kernel_rows_short.h): lane j of the result is the sum of v[j]'s
 * lanes, for 16 (float64: 8) vectors at once.  Each level adds lanes i and i + width of
 * every vector, halving the width (8, 4, 2, 1), so that every vector's lanes go through
 * the same tree; the levels leave vector j's sum in lane 4 (j % 4) + j / 4 (float64:
 * 2 (j % 4) + j / 4), which the last permute puts back in order. */
static inline __m512 avx512_lane_sums_c32(const __m512 *v) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; ++i) /* halves of 256 bits: v[2i]'s in a[i]'s low half */
        a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    for (int i = 0; i < 4; ++i) /* quarters: a vector's four sums in one 128-bit block */
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xdd));
    for (int i = 0; i < 2; ++i) { /* pairs within a block */
        __m512d lo = _mm512_castps_pd(b[2 * i]), hi = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi)));
    }
    __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xdd));
    return _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), sums);
}
static inline __m512d avx512_lane_sums_c64(const __m512d *v) {
    __m512d a[4], b[2];
    for (int i = 0; i < 4; ++i)
        a[i] = _mm512_add_pd(_mm512_shuffle_f64x2(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f64x2(v[2 * i], v[2 * i + 1], 0xee));
    for (int i = 0; i < 2; ++i)
        b[i] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0x88),
                             _mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0xdd));
    __m512d sums = _mm512_add_pd(_mm512_unpacklo_pd(b[0], b[1]), _mm512_unpackhi_pd(b[0], b[1]));
    return _mm512_permutexvar_pd(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), sums);
}
/* as avx2_rstd_x4 */
static inline void avx512_rstd_x4(const double *spread, double eps, double *rstd) {
    __m256d s = _mm256_max_pd(_mm256_setzero_pd(), _mm256_loadu_pd(spread));
    __m256d root = _mm256_sqrt_pd(_mm256_add_pd(s, _mm256_set1_pd(eps)));
    _mm256_storeu_pd(rstd, _mm256_div_pd(_mm256_set1_pd(1.0), root));
}
static inline void avx512_store_c32(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
static inline void avx512_store_c64(double *p, __m512d v) { _mm512_storeu_pd(p, v); }
/* lane 0 */
static inline float avx512_first_c32(__m512 v) { return _mm512_cvtss_f32(v); }
static inline double avx512_first_c64(__m512d v) { return _mm512_cvtsd_f64(v); }
/* lanes n and up zeroed */
static inline __m512 avx512_mask_n_c32(__m512 v, size_t n) {
    return _mm512_maskz_mov_ps(fn_avx512_mask16(n), v);
}
static inline __m512d avx512_mask_n_c64(__m512d v, size_t n) {
    return _mm512_maskz_mov_pd(fn_avx512_mask8(n), v);
}
/* lanes below n from a, the others from b */
static inline __m512 avx512_blend_n_c32(__m512 a, __m512 b, size_t n) {
    return _mm512_mask_blend_ps(fn_avx512_mask16(n), b, a);
}
static inline __m512d avx512_blend_n_c64(__m512d a, __m512d b, size_t n) {
    return _mm512_mask_blend_pd(fn_avx512_mask8(n), b, a);
}

/* ---- storage float32 ---- */
static inline __m512 avx512_load_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 avx512_load_n_f32(const float *p, size_t n) {
    return _mm512_maskz_loadu_ps(fn_avx512_mask16(n), p);
}
static inline void avx512_store_f32(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
static inline void avx512_store_n_f32(float *p, __m512 v, size_t n) {
    _mm512_mask_storeu_ps(p, fn_avx512_mask16(n), v);
}
static inline __m512 avx512_round_f32(__m512 v) { return v; }

/* ---- storage float64 ---- */
static inline __m512d avx512_load_f64(const double *p) { return _mm512_loadu_pd(p); }
static inline __m512d avx512_load_n_f64(const double *p, size_t n) {
    return _mm512_maskz_loadu_pd(fn_avx512_mask8(n), p);
}
static inline void avx512_store_f64(double *p, __m512d v) { _mm512_storeu_pd(p, v); }
static inline void avx512_store_n_f64(double *p, __m512d v, size_t n) {
    _mm512_mask_storeu_pd(p, fn_avx512_mask8(n), v);
}
static inline __m512d avx512_round_f64(__m512d v) { return v; }

/* ---- storage float16 ---- */
#define FN_AVX512_F16_ROUNDING (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline __m512 avx512_load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline __m512 avx512_load_n_f16(const uint16_t *p, size_t n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(fn_avx512_mask16(n), p));
}
static inline void avx512_store_f16(uint16_t *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, FN_AVX512_F16_ROUNDING));
}
static inline void avx512_store_n_f16(uint16_t *p, __m512 v, size_t n) {
    _mm256_mask_storeu_epi16(p, fn_avx512_mask16(n), _mm512_cvtps_ph(v, FN_AVX512_F16_ROUNDING));
}
static inline __m512 avx512_round_f16(__m512 v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, FN_AVX512_F16_ROUNDING));
}
/* float16 LayerNorm's statistics as raw sums, by FMAs (kernel_row_stats.h, KB_SQUARES_FMA):
 * no float16 dot product in this family. */
#define FN_SQUARES_F16 1

/* ---- storage bfloat16 ---- */
#define FN_AVX512_DENORMAL 0x20 /* VFPCLASSPS: denormal */
static inline __m512 fn_avx512_bf16_widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
/* float32 -> bfloat16 bits in the low half of each 32-bit lane, ties to even, NaN quieted */
static inline __m512i fn_avx512_bf16_round_bits(__m512 v) {
    __m512i bits = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_mov_epi32(rounded, nan, quiet);
}
/* 16 float32 as bfloat16: fn_avx512_bf16_round_bits, or where the TU is built with
 * AVX512-BF16 (kernels_avx512bf16.c) VCVTNEPS2BF16, which rounds ties to even and quiets
 * NaNs the same way but flushes denormal inputs to zero: a vector holding one takes the
 * exact path.  Only a result with a zero in it is looked at again (VFPCLASSPS): a flushed
 * denormal is a zero, and one test of the result costs less than a class test of every
 * input vector (the bfloat16 normalize pass of a 768-value row in L1: 237 -> 219 cycles,
 * RMSNorm's 203 -> 184, kernel_cycles.c). */
#ifdef __AVX512BF16__
static inline int fn_avx512_bf16_flushed(__m512 v, __m256i packed) {
    return _mm256_testn_epi16_mask(packed, _mm256_set1_epi16(0x7fff)) &&
           _mm512_fpclass_ps_mask(v, FN_AVX512_DENORMAL);
}
#endif
static inline __m256i fn_avx512_bf16_pack(__m512 v) {
#ifdef __AVX512BF16__
    __m256i packed = (__m256i)_mm512_cvtneps_pbh(v);
    if (!fn_avx512_bf16_flushed(v, packed)) return packed;
#endif
    return _mm512_cvtepi32_epi16(fn_avx512_bf16_round_bits(v));
}
static inline __m512 avx512_load_bf16(const uint16_t *p) {
    return fn_avx512_bf16_widen(_mm256_loadu_si256((const __m256i *)p));
}
static inline __m512 avx512_load_n_bf16(const uint16_t *p, size_t n) {
    return fn_avx512_bf16_widen(_mm256_maskz_loadu_epi16(fn_avx512_mask16(n), p));
}
static inline void avx512_store_bf16(uint16_t *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, fn_avx512_bf16_pack(v));
}
static inline void avx512_store_n_bf16(uint16_t *p, __m512 v, size_t n) {
    _mm256_mask_storeu_epi16(p, fn_avx512_mask16(n), fn_avx512_bf16_pack(v));
}
static inline __m512 avx512_round_bf16(__m512 v) {
#ifdef __AVX512BF16__
    __m256i packed = (__m256i)_mm512_cvtneps_pbh(v);
    if (!fn_avx512_bf16_flushed(v, packed)) return fn_avx512_bf16_widen(packed);
#endif
    return _mm512_castsi512_ps(_mm512_slli_epi32(fn_avx512_bf16_round_bits(v), 16));
}

/* The statistics' pairs of 32 bfloat16 values in an order of their own (KB_UNORDERED2 in
 * kernel_body.h): a 64-byte load widened by two unpacks, where the pair in order takes two
 * widening loads and two shifts.  a holds values 0-3, 8-11, 16-19 and 24-27, b the others;
 * the store takes a pair of bfloat16 values (float32 with zero low halves) in that order
 * and puts it back in order. */
static inline void avx512_load2_unordered_bf16(const uint16_t *p, __m512 *a, __m512 *b) {
    __m512i v = _mm512_loadu_si512(p), zero = _mm512_setzero_si512();
    *a = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v));
    *b = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v));
}
static inline void avx512_store2_unordered_bf16(uint16_t *p, __m512 a, __m512 b) {
    _mm512_storeu_si512(p, _mm512_packus_epi32(_mm512_srli_epi32(_mm512_castps_si512(a), 16),
                                               _mm512_srli_epi32(_mm512_castps_si512(b), 16)));
}
#define FN_UNORDERED2_BF16 1

/* ---- streaming (non-temporal) stores: p aligned to the vector's storage bytes ---- */
static inline void avx512_stream_f32(float *p, __m512 v) { _mm512_stream_ps(p, v); }
static inline void avx512_stream_f64(double *p, __m512d v) { _mm512_stream_pd(p, v); }
static inline void avx512_stream_f16(uint16_t *p, __m512 v) {
    _mm256_stream_si256((__m256i *)p, _mm512_cvtps_ph(v, FN_AVX512_F16_ROUNDING));
}
static inline void avx512_stream_bf16(uint16_t *p, __m512 v) {
    _mm256_stream_si256((__m256i *)p, fn_avx512_bf16_pack(v));
}
/* a row's partial first or last vector streamed (stream_bytes.h) */
#define avx512_stream_bytes fn_stream_bytes

/* ---- two vectors per call (kernel_body.h's paired loops): no packing gains here ---- */
#define FN_AVX512_TWO(T, V, dt, lanes)                                                       \
    static inline void avx512_load2_##dt(const T *p, V *a, V *b) {                           \
        *a = avx512_load_##dt(p);                                                            \
        *b = avx512_load_##dt(p + lanes);                                                    \
    }                                                                                        \
    static inline void avx512_store2_##dt(T *p, V a, V b, int canonical) {                   \
        (void)canonical;                                                                     \
        avx512_store_##dt(p, a);                                                             \
        avx512_store_##dt(p + lanes, b);                                                     \
    }                                                                                        \
    static inline void avx512_stream2_##dt(T *p, V a, V b, int canonical) {                  \
        (void)canonical;                                                                     \
        avx512_stream_##dt(p, a);                                                            \
        avx512_stream_##dt(p + lanes, b);                                                    \
    }
FN_AVX512_TWO(float, __m512, f32, 16)
FN_AVX512_TWO(double, __m512d, f64, 8)
FN_AVX512_TWO(uint16_t, __m512, f16, 16)
#ifdef __AVX512BF16__
/* a bfloat16 pair is one VCVTNE2PS2BF16 and one 64-byte store (fn_avx512_bf16_pack) */
static inline int fn_avx512_bf16_pack2(__m512 a, __m512 b, __m512i *packed) {
    *packed = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* b's values go to the upper half */
    return !_mm512_testn_epi16_mask(*packed, _mm512_set1_epi16(0x7fff)) ||
           !(_mm512_fpclass_ps_mask(a, FN_AVX512_DENORMAL) | _mm512_fpclass_ps_mask(b, FN_AVX512_DENORMAL));
}
/* The row statistics' sums of squares by VDPBF16PS (kernel_body.h, KB_SQUARES): acc plus
 * the squares of 32 bfloat16 values, those at p or the pair (a, b) of float32 vectors
 * holding bfloat16 values, added in adjacent pairs into acc's 16 lanes, the same lanes
 * either way.  Each product is exact in float32; the instruction flushes denormal sums to
 * zero, which kernel_row_stats.h's row_stats checks for (kb_dot_kept). */
#define FN_SQUARES_BF16 1
static inline __m512 avx512_squares_bf16(__m512 acc, const uint16_t *p) {
    __m512bh v = (__m512bh)_mm512_loadu_si512(p);
    return _mm512_dpbf16_ps(acc, v, v);
}
static inline __m512 avx512_squares2_bf16(__m512 acc, __m512 a, __m512 b) {
    __m512bh v = _mm512_cvtne2ps_pbh(b, a); /* exact: a and b hold bfloat16 values */
    return _mm512_dpbf16_ps(acc, v, v);
}
/* LayerNorm's sums of the values themselves, the same way: each value times one (exact),
 * into the lanes kb_squares uses. */
#define FN_BF16_ONES ((__m512bh)_mm512_set1_epi16(0x3f80))
static inline __m512 avx512_values_bf16(__m512 acc, const uint16_t *p) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(p), FN_BF16_ONES);
}
static inline __m512 avx512_values2_bf16(__m512 acc, __m512 a, __m512 b) {
    return _mm512_dpbf16_ps(acc, _mm512_cvtne2ps_pbh(b, a), FN_BF16_ONES);
}
static inline void avx512_load2_bf16(const uint16_t *p, __m512 *a, __m512 *b) {
    *a = avx512_load_bf16(p);
    *b = avx512_load_bf16(p + 16);
}
static inline void avx512_store2_bf16(uint16_t *p, __m512 a, __m512 b, int canonical) {
    __m512i packed;
    (void)canonical;
    if (fn_avx512_bf16_pack2(a, b, &packed)) {
        _mm512_storeu_si512(p, packed);
    } else {
        avx512_store_bf16(p, a);
        avx512_store_bf16(p + 16, b);
    }
}
static inline void avx512_stream2_bf16(uint16_t *p, __m512 a, __m512 b, int canonical) {
    __m512i packed;
    (void)canonical;
    if (fn_avx512_bf16_pack2(a, b, &packed)) {
        _mm512_stream_si512((__m512i *)p, packed);
    } else {
        avx512_stream_bf16(p, a);
        avx512_stream_bf16(p + 16, b);
    }
}
#else
FN_AVX512_TWO(uint16_t, __m512, bf16, 16)
#endif
#undef FN_AVX512_TWO

#endif /* FASTNORM_SIMD_AVX512_H */
