/*
 * kernels_avx512.c - the AVX-512 (F/BW/DQ/VL) kernel family.  Compiled with its own flags only
 * (setup.py's ISA table); called only after dispatch.c saw the CPU and OS support them.
 * The kernels live in kernel_body.h, instantiated by kernel_family.h; simd_avx512.h
 * supplies the vector primitives.
 * kernels_avx512bf16.c builds this file again, with AVX512-BF16, as its own KB_TABLE.
 */
#include "kernels.h"
#include "simd_avx512.h"

#define KB_ISA avx512
#ifndef KB_TABLE /* kernels_avx512bf16.c names its build's table */
#define KB_TABLE fastnorm_kernels_avx512
#endif
#include "kernel_family.h"
