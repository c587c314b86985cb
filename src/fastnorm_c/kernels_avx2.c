/*
 * kernels_avx2.c - the AVX2+FMA+F16C kernel family.  Compiled with its own flags only
 * (setup.py's ISA table); called only after dispatch.c saw the CPU and OS support them.
 * The kernels live in kernel_body.h, instantiated by kernel_family.h; simd_avx2.h supplies
 * the vector primitives.
 */
#include "kernels.h"
#include "simd_avx2.h"

#define KB_ISA avx2
#define KB_TABLE fastnorm_kernels_avx2
#include "kernel_family.h"
