/*
 * cpu_x86.c - can this CPU, under this OS, run a kernel family?  CPUID says what the
 * processor implements; XGETBV(0) says which register state the OS saves on a context
 * switch.  Both are needed: a CPU with AVX-512 under an OS that does not save ZMM state
 * would corrupt registers (the same checks as xxHash's and NumPy's dispatchers).
 *
 *   avx2   = AVX2 + FMA + F16C (the flags kernels_avx2.c is built with) + OSXSAVE,
 *            XCR0 has XMM and YMM state
 *   avx512 = the above + AVX512 F/BW/DQ/VL, XCR0 also has opmask, ZMM_Hi256, Hi16_ZMM
 *   avx512 + AVX512-BF16 (CPUID.(7,1):EAX), for kernels_avx512bf16.c
 *
 * and whose cores these are (CPUID.0's vendor string), for dispatch.c's tuning.
 *
 * Compiled at the baseline.  Off x86-64 it compiles to "scalar only".
 * macOS enables AVX-512 state lazily (XCR0 shows it only after first use), so there this
 * reports avx2 at most: slower, never wrong.
 */
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static int cpuid_(unsigned leaf, unsigned subleaf, unsigned regs[4]) {
    int out[4];
    __cpuid(out, 0);
    if ((unsigned)out[0] < leaf) return 0;
    __cpuidex(out, (int)leaf, (int)subleaf);
    for (int i = 0; i < 4; ++i) regs[i] = (unsigned)out[i];
    return 1;
}
static unsigned long long xgetbv0_(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static int cpuid_(unsigned leaf, unsigned subleaf, unsigned regs[4]) {
    /* __get_cpuid_count checks the maximum leaf itself and returns 0 above it. */
    return __get_cpuid_count(leaf, subleaf, &regs[0], &regs[1], &regs[2], &regs[3]);
}
static unsigned long long xgetbv0_(void) {
    unsigned eax, edx;
    /* The opcode bytes of xgetbv: no -mxsave needed, and old assemblers accept it. */
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}
#endif

enum { EAX_, EBX_, ECX_, EDX_ };
/* CPUID.1:ECX */
#define FN_FMA (1u << 12)
#define FN_OSXSAVE (1u << 27)
#define FN_F16C (1u << 29)
/* CPUID.(7,0):EBX */
#define FN_AVX2 (1u << 5)
#define FN_AVX512F (1u << 16)
#define FN_AVX512DQ (1u << 17)
#define FN_AVX512BW (1u << 30)
#define FN_AVX512VL (1u << 31)
/* CPUID.(7,1):EAX */
#define FN_AVX512_BF16 (1u << 5)
/* XCR0 */
#define FN_XCR0_YMM 0x06ull /* XMM | YMM */
#define FN_XCR0_ZMM 0xE0ull /* opmask | ZMM_Hi256 | Hi16_ZMM */

int fastnorm_cpu_has(fastnorm_isa_t isa) {
    unsigned leaf1[4], leaf7[4];
    if (isa == FASTNORM_ISA_SCALAR) return 1;
    if (isa != FASTNORM_ISA_AVX2 && isa != FASTNORM_ISA_AVX512) return 0;
    if (!cpuid_(1, 0, leaf1) || !cpuid_(7, 0, leaf7)) return 0;
    unsigned need1 = FN_FMA | FN_OSXSAVE | FN_F16C;
    if ((leaf1[ECX_] & need1) != need1 || !(leaf7[EBX_] & FN_AVX2)) return 0;
    /* XGETBV faults unless OSXSAVE is set, which was checked just above. */
    unsigned long long xcr0 = xgetbv0_();
    if ((xcr0 & FN_XCR0_YMM) != FN_XCR0_YMM) return 0;
    if (isa == FASTNORM_ISA_AVX2) return 1;
    unsigned need7 = FN_AVX512F | FN_AVX512DQ | FN_AVX512BW | FN_AVX512VL;
    return (leaf7[EBX_] & need7) == need7 && (xcr0 & FN_XCR0_ZMM) == FN_XCR0_ZMM;
}

int fastnorm_cpu_has_avx512_bf16(void) {
    unsigned leaf7_1[4];
    return fastnorm_cpu_has(FASTNORM_ISA_AVX512) && cpuid_(7, 1, leaf7_1) &&
           (leaf7_1[EAX_] & FN_AVX512_BF16);
}

int fastnorm_cpu_amd(void) {
    unsigned leaf0[4];
    if (!cpuid_(0, 0, leaf0)) return 0;
    /* the vendor string, EBX EDX ECX: "AuthenticAMD", or Hygon's Zen cores */
    char vendor[13] = {0};
    memcpy(vendor, &leaf0[EBX_], 4);
    memcpy(vendor + 4, &leaf0[EDX_], 4);
    memcpy(vendor + 8, &leaf0[ECX_], 4);
    return strcmp(vendor, "AuthenticAMD") == 0 || strcmp(vendor, "HygonGenuine") == 0;
}

#else /* not x86-64: the scalar family only */

int fastnorm_cpu_has(fastnorm_isa_t isa) { return isa == FASTNORM_ISA_SCALAR; }
int fastnorm_cpu_has_avx512_bf16(void) { return 0; }
int fastnorm_cpu_amd(void) { return 0; }

#endif
