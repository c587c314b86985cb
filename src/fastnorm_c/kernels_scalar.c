/*
 * kernels_scalar.c - the portable kernel family: plain C11 compiled at the baseline, no
 * instruction-set flags.  It is the fallback on every CPU and architecture and the oracle
 * the SIMD families are tested against.  The kernels live in kernel_body.h, instantiated
 * by kernel_family.h with one-value "vectors" (simd_scalar.h) for each storage dtype.
 */
#include "kernels.h"
#include "simd_scalar.h"

#define KB_ISA scalar
#define KB_TABLE fastnorm_kernels_scalar
#include "kernel_family.h"
