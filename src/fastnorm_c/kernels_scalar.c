/*
 * kernels_scalar.c - the portable kernel family: plain C11 compiled at the baseline, no
 * instruction-set flags.  It is the fallback on every CPU and architecture and the oracle
 * the SIMD families are tested against.  The kernels live in kernel_body.h; this file
 * instantiates them with one-value "vectors" (simd_scalar.h) for each storage dtype.
 */
#include "kernels.h"
#include "simd_scalar.h"

#define KB_ISA scalar
#define KB_CT c32
#define KB_DT f32
#include "kernel_body.h"
#undef KB_DT
#define KB_DT f16
#include "kernel_body.h"
#undef KB_DT
#define KB_DT bf16
#include "kernel_body.h"
#undef KB_DT
#undef KB_CT
#define KB_CT c64
#define KB_DT f64
#include "kernel_body.h"
#undef KB_DT
#undef KB_CT

#define FN_TABLE_ROW(kernel) \
    {kernel##_f32_scalar, kernel##_f64_scalar, kernel##_f16_scalar, kernel##_bf16_scalar}
const fastnorm_kernels_t fastnorm_kernels_scalar = {
    "scalar", FN_TABLE_ROW(row_stats), FN_TABLE_ROW(row_normalize),
    FN_TABLE_ROW(rows_affine), FN_TABLE_ROW(col_stats), FN_TABLE_ROW(col_normalize),
    {scalar_param_block_f32, scalar_param_block_f64, scalar_param_block_f16, scalar_param_block_bf16}};
