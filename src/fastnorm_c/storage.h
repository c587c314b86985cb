/*
 * storage.h - the storage dtypes as C types, and one-element conversions between each
 * storage dtype and its compute dtype (float for f32/f16/bf16, double for f64).
 * Shared by every kernel family: scalar code and SIMD tails round the same way.
 */
#ifndef FASTNORM_STORAGE_H
#define FASTNORM_STORAGE_H

#include <stdint.h>
#include "half.h"

typedef float fn_storage_f32;
typedef double fn_storage_f64;
typedef uint16_t fn_storage_f16;
typedef uint16_t fn_storage_bf16;
typedef float fn_compute_c32;
typedef double fn_compute_c64;

static inline float fn_load1_f32(const float *p) { return *p; }
static inline void fn_store1_f32(float *p, float v) { *p = v; }
static inline float fn_round1_f32(float v) { return v; }

static inline double fn_load1_f64(const double *p) { return *p; }
static inline void fn_store1_f64(double *p, double v) { *p = v; }
static inline double fn_round1_f64(double v) { return v; }

static inline float fn_load1_f16(const uint16_t *p) { return fastnorm_f16_to_f32(*p); }
static inline void fn_store1_f16(uint16_t *p, float v) { *p = fastnorm_f32_to_f16(v); }
static inline float fn_round1_f16(float v) { return fastnorm_f16_to_f32(fastnorm_f32_to_f16(v)); }

static inline float fn_load1_bf16(const uint16_t *p) { return fastnorm_bf16_to_f32(*p); }
static inline void fn_store1_bf16(uint16_t *p, float v) { *p = fastnorm_f32_to_bf16(v); }
static inline float fn_round1_bf16(float v) { return fastnorm_bf16_to_f32(fastnorm_f32_to_bf16(v)); }

#endif /* FASTNORM_STORAGE_H */
