/*
 * kernel_family.h - the rest of a kernel family's translation unit: kernel_body.h
 * instantiated for each storage dtype, kernel_channels.h once, then the family's
 * fastnorm_kernels_t.  Included
 * once, last, by kernels_<family>.c, which first includes its simd_<family>.h and defines
 *   KB_ISA    the family prefix of the primitives (scalar, avx2, avx512)
 *   KB_TABLE  the name of the table to define (fastnorm_kernels_<family>)
 */
#define KB_CT c32
#define KB_DT f32
#include "kernel_body.h"
#undef KB_DT
#ifdef FN_STREAM_FUSED_RMS_HALF /* the family streams half RMSNorm in the fused loop */
#define KB_STREAM_FUSED_RMS 1
#endif
#define KB_DT f16
#ifdef FN_SQUARES_F16 /* the family sums float16 LayerNorm statistics raw, by FMAs */
#define KB_SQUARES 1
#define KB_SQUARES_FMA 1
#endif
#include "kernel_body.h"
#undef KB_SQUARES_FMA
#undef KB_SQUARES
#undef KB_DT
#define KB_DT bf16
#ifdef FN_SQUARES_BF16 /* the family sums bfloat16 statistics raw, by a dot product */
#define KB_SQUARES 1
#endif
#ifdef FN_UNORDERED2_BF16 /* and loads the statistics' pairs in an order of its own */
#define KB_UNORDERED2 1
#endif
#include "kernel_body.h"
#undef KB_UNORDERED2
#undef KB_SQUARES
#undef KB_STREAM_FUSED_RMS
#undef KB_DT
#undef KB_CT
#define KB_CT c64
#define KB_DT f64
#include "kernel_body.h"
#undef KB_DT
#undef KB_CT

#include "kernel_channels.h"

#define KB_STRING_(name) #name
#define KB_STRING(name) KB_STRING_(name)
/* one entry per storage dtype, in fastnorm_dtype_t's order */
#define KB_TABLE_ROW(kernel)                                                                \
    {KB_GLUE(kernel, f32, KB_ISA), KB_GLUE(kernel, f64, KB_ISA), KB_GLUE(kernel, f16, KB_ISA), \
     KB_GLUE(kernel, bf16, KB_ISA)}
const fastnorm_kernels_t KB_TABLE = {
    KB_STRING(KB_ISA), KB_TABLE_ROW(row_stats), KB_TABLE_ROW(rows_stats),
    KB_TABLE_ROW(row_normalize), KB_TABLE_ROW(row_stats_normalize), KB_TABLE_ROW(rows_affine),
    KB_TABLE_ROW(col_stats), KB_TABLE_ROW(col_normalize),
    {KB_GLUE(KB_ISA, param_block, f32), KB_GLUE(KB_ISA, param_block, f64),
     KB_GLUE(KB_ISA, param_block, f16), KB_GLUE(KB_ISA, param_block, bf16)},
    KB_GLUE(KB_ISA, prefetch_row, min), KB_GLUE(KB_ISA, prefetch_row, max),
    {KB_GLUE(KB_ISA, ahead_row, max), KB_GLUE(KB_ISA, ahead_row, max_amd)},
    KB_TABLE_ROW(rows_short), KB_TABLE_ROW(rows_short_max),
    KB_TABLE_ROW(rows_short_channels), KB_TABLE_ROW(rows_short_channels_max),
    KB_GLUE(channel, params, KB_ISA),
    KB_TABLE_ROW(stream_fused), KB_TABLE_ROW(row_grad_sums), KB_TABLE_ROW(row_grad_apply),
    KB_TABLE_ROW(rows_grad_sums), KB_TABLE_ROW(rows_grad_apply), KB_TABLE_ROW(col_grad_sums),
    KB_TABLE_ROW(col_grad_apply), KB_TABLE_ROW(grad_flush), KB_TABLE_ROW(col_grad_rows)};
