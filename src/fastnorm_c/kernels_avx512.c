/*
 * kernels_avx512.c - the AVX-512 (F/BW/DQ/VL) kernel family.  Compiled with its own flags only
 * (setup.py's ISA table); called only after dispatch.c saw the CPU and OS support them.
 * The kernels live in kernel_body.h; simd_avx512.h supplies the vector primitives.
 * kernels_avx512bf16.c builds this file again, with AVX512-BF16, as FN_AVX512_TABLE.
 */
#ifndef FN_AVX512_TABLE
#define FN_AVX512_TABLE fastnorm_kernels_avx512
#endif
#include "kernels.h"
#include "simd_avx512.h"

#define KB_ISA avx512
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
    {kernel##_f32_avx512, kernel##_f64_avx512, kernel##_f16_avx512, kernel##_bf16_avx512}
const fastnorm_kernels_t FN_AVX512_TABLE = {
    "avx512", FN_TABLE_ROW(row_stats), FN_TABLE_ROW(row_normalize),
    FN_TABLE_ROW(rows_affine), FN_TABLE_ROW(col_stats), FN_TABLE_ROW(col_normalize),
    {avx512_param_block_f32, avx512_param_block_f64, avx512_param_block_f16, avx512_param_block_bf16}};
