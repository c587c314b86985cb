/*
 * kernels_avx512bf16.c - the AVX-512 family built again with AVX512-BF16 (setup.py's ISA
 * table adds -mavx512bf16 to the AVX-512 flags), where simd_avx512.h converts float32 to
 * bfloat16 with VCVTNE(2)PS2BF16: one instruction for what takes ten of integer arithmetic,
 * with the same bits; and the row statistics sum bfloat16 squares (and LayerNorm's values,
 * for rows near zero) with VDPBF16PS (kernel_row_stats.h's KB_SQUARES), in another order
 * than the other build's FMAs.  dispatch.c runs it as the avx512 family when cpu_x86.c
 * sees the extension (Zen 4, Sapphire Rapids); CPUs without it (Skylake-SP, Ice Lake) run
 * kernels_avx512.c.  The other dtypes compile to the same code as there.
 */
#define KB_TABLE fastnorm_kernels_avx512bf16
#include "kernels_avx512.c"
