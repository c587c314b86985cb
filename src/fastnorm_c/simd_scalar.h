/*
 * simd_scalar.h - kernel_body.h's vector primitives for the portable scalar family, where
 * a "vector" is a single compute-dtype value.  Included by kernels_scalar.c only.
 */
#ifndef FASTNORM_SIMD_SCALAR_H
#define FASTNORM_SIMD_SCALAR_H

#include <stddef.h>
#include <string.h>
#include "storage.h"

enum { scalar_lanes_c32 = 1, scalar_lanes_c64 = 1 };
/* no store has a faster form under FN_STORE_NAN_CANONICAL */
enum { scalar_canonical_f32 = 0, scalar_canonical_f64 = 0, scalar_canonical_f16 = 0, scalar_canonical_bf16 = 0 };
/* no row prefetches the next: this family never prefetches (kernel_row_normalize.h,
 * kb_prefetch_lines) */
enum { scalar_prefetch_row_min = 0, scalar_prefetch_row_max = 0 };
enum { scalar_ahead_row_max = 4096, scalar_ahead_row_max_amd = 4096 }; /* kernels.h, ahead_row_max */
/* weight and bias in natural order for every dtype (kernels.h, param_block) */
enum { scalar_param_block_f32 = 0, scalar_param_block_f64 = 0, scalar_param_block_f16 = 0, scalar_param_block_bf16 = 0 };
typedef float scalar_vec_c32;
typedef double scalar_vec_c64;

#define FN_SCALAR_MATH(C, ct)                                                                  \
    static inline C scalar_set1_##ct(C a) { return a; }                                        \
    static inline C scalar_add_##ct(C a, C b) { return a + b; }                                \
    static inline C scalar_sub_##ct(C a, C b) { return a - b; }                                \
    static inline C scalar_mul_##ct(C a, C b) { return a * b; }                                \
    static inline C scalar_fma_##ct(C a, C b, C c) { return a * b + c; }                       \
    static inline C scalar_param_##ct(const C *p) { return *p; }                               \
    static inline C scalar_param_n_##ct(const C *p, size_t n) { (void)n; return *p; }          \
    static inline void scalar_to_double_##ct(C a, double *out) { out[0] = (double)a; }         \
    static inline void scalar_store_##ct(C *p, C a) { *p = a; }                                \
    static inline double scalar_sum_##ct(C a) { return (double)a; }                            \
    static inline C scalar_first_##ct(C a) { return a; }                                       \
    static inline C scalar_mask_n_##ct(C a, size_t n) { return n ? a : 0; }                    \
    static inline C scalar_blend_n_##ct(C a, C b, size_t n) { return n ? a : b; }
FN_SCALAR_MATH(float, c32)
FN_SCALAR_MATH(double, c64)
#undef FN_SCALAR_MATH

/* load2/store2/stream2 only let kernel_body.h compile: its pair loops are off in this family */
#define FN_SCALAR_STORAGE(T, C, dt)                                                            \
    static inline C scalar_load_##dt(const T *p) { return fn_load1_##dt(p); }                   \
    static inline void scalar_load2_##dt(const T *p, C *a, C *b) {                              \
        *a = fn_load1_##dt(p);                                                                 \
        *b = fn_load1_##dt(p + 1);                                                             \
    }                                                                                          \
    static inline C scalar_load_n_##dt(const T *p, size_t n) { (void)n; return fn_load1_##dt(p); } \
    static inline void scalar_store_##dt(T *p, C v) { fn_store1_##dt(p, v); }                   \
    static inline void scalar_store_n_##dt(T *p, C v, size_t n) { (void)n; fn_store1_##dt(p, v); } \
    static inline void scalar_store2_##dt(T *p, C a, C b, int canonical) {                       \
        (void)canonical;                                                                       \
        fn_store1_##dt(p, a);                                                                  \
        fn_store1_##dt(p + 1, b);                                                              \
    }                                                                                          \
    static inline C scalar_round_##dt(C v) { return fn_round1_##dt(v); }                        \
    static inline void scalar_stream_##dt(T *p, C v) { fn_store1_##dt(p, v); }                 \
    static inline void scalar_stream2_##dt(T *p, C a, C b, int canonical) {                      \
        scalar_store2_##dt(p, a, b, canonical);                                                \
    }
FN_SCALAR_STORAGE(float, float, f32)
FN_SCALAR_STORAGE(double, double, f64)
FN_SCALAR_STORAGE(uint16_t, float, f16)
FN_SCALAR_STORAGE(uint16_t, float, bf16)
#undef FN_SCALAR_STORAGE

/* plain stores stand in for streaming ones: nothing to fence, and stream_bytes only lets
 * kernel_body.h compile (this family's rows never take the streaming path) */
static inline size_t scalar_stream_bytes(void *p, const void *src, size_t bytes) {
    memcpy(p, src, bytes);
    return bytes;
}

#endif /* FASTNORM_SIMD_SCALAR_H */
